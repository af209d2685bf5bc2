"""Deployment runtime: load an f8tvm ``.so`` + ``.json`` and run it.

Needs only NumPy and TVM's runtime (``tvm.runtime``), not torch and not f8tvm's compiler, so it
runs on a board with the TVM runtime wheel.  The compiled program is integer-only; this wrapper is
the float boundary: it quantizes the float input (ties to even, clamped) and dequantizes the int32
output with the metadata's fractional lengths and scale (on this machine with the library's two
boundary kernels where the build has them, ``f8tvm.schedules.boundary``; else in NumPy).

``load(path, remote="host:port")`` runs the module on a board over TVM RPC instead: the ``.so``
is uploaded to the board's RPC server and executed there; quantization stays on this side.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import time

import numpy as np

from f8tvm.core.errors import InputError, UnsupportedCPUError
from f8tvm.core.fixedpoint import FLOAT32_EXPONENT, qrange
from f8tvm.targets.cpu import enable_amx, read_cpuinfo

__all__ = ["Module", "RemoteBoard", "check_cpu", "check_library", "connect", "enable_amx",
           "library_record", "load", "missing_cpu_flags"]


def metadata_path(so_path: str) -> str:
    """The ``.json`` that sits beside a module's ``.so``."""
    return os.path.splitext(so_path)[0] + ".json"


# ELF e_machine -> architecture, and what Python's platform.machine() calls them
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_HOST_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "arm", "armv8l": "arm"}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_record(so_path: str, name: str | None = None) -> dict:
    """The ``.json``'s ``library`` entry for a ``.so``: file name, size, SHA-256 and the build
    id its linker wrote (:func:`build_id`), which :func:`load` checks before loading."""
    return {"file": name or os.path.basename(so_path), "size": os.path.getsize(so_path),
            "sha256": _sha256(so_path), "build_id": build_id(so_path)}


def _elf_header(data: bytes):
    """``(num, wide, shoff, shentsize, shnum)`` of an ELF image's header: ``num(at, n)`` reads an
    integer in the file's byte order, ``wide`` is ELF64.  ``data`` must start with the ELF
    magic and hold the 52/64-byte header."""
    order = "little" if data[5] == 1 else "big"

    def num(at, n):
        return int.from_bytes(data[at:at + n], order)

    wide = data[4] == 2
    shoff, shentsize, shnum = ((num(0x28, 8), num(0x3A, 2), num(0x3C, 2)) if wide
                               else (num(0x20, 4), num(0x2E, 2), num(0x30, 2)))
    return num, wide, shoff, shentsize, shnum


def elf_sections(data: bytes):
    """``(num, [(sh_type, offset, size, link, entsize), ...])`` of an ELF image (32 or 64 bit;
    a truncated image lists the headers before its end, so indices stay section numbers);
    ``num(at, n)`` reads an integer in the file's byte order."""
    num, wide, shoff, shentsize, shnum = _elf_header(data)
    out = []
    for i in range(shnum):
        sh = shoff + i * shentsize
        if sh + shentsize > len(data):
            break
        if wide:
            out.append((num(sh + 4, 4), num(sh + 0x18, 8), num(sh + 0x20, 8), num(sh + 0x28, 4),
                        num(sh + 0x38, 8)))
        else:
            out.append((num(sh + 4, 4), num(sh + 0x10, 4), num(sh + 0x14, 4), num(sh + 0x18, 4),
                        num(sh + 0x24, 4)))
    return num, out


def build_id(path: str) -> str | None:
    """The GNU build id of an ELF file (hex), or None.  f8tvm's export sets it to a digest of
    the module's metadata, so a ``.so`` says which build it is without its ``.json``."""
    with open(path, "rb") as f:
        elf = f.read()
    if len(elf) < 64 or elf[:4] != b"\x7fELF":
        return None
    num, sections = elf_sections(elf)
    for kind, off, size, _, _ in sections:
        if kind != 7:  # SHT_NOTE
            continue
        at, end = off, min(off + size, len(elf))
        while at + 12 <= end:
            namesz, descsz, kind = num(at, 4), num(at + 4, 4), num(at + 8, 4)
            name_at = at + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if kind == 3 and elf[name_at:name_at + namesz] == b"GNU\0":  # NT_GNU_BUILD_ID
                return elf[desc_at:desc_at + descsz].hex()
            at = desc_at + (descsz + 3) // 4 * 4
    return None


def check_library(path: str, meta: dict, meta_path: str, local: bool = True) -> None:
    """Refuse, by name, a ``.so`` that is not the one its ``.json`` describes (another build's,
    or truncated), one that is no shared library, and (``local``) one built for another
    architecture: each would otherwise crash the process or give wrong results."""
    size = os.path.getsize(path)
    rec = meta.get("library")
    if rec is not None:
        sha = _sha256(path) if size == rec.get("size") else None
        if sha != rec.get("sha256"):
            got = f"{size} bytes" + (f", sha256 {sha[:12]}..." if sha else "")
            own = build_id(path)
            if own and rec.get("build_id") and own != rec["build_id"]:
                got += f", build {own[:12]}... where the .json names {rec['build_id'][:12]}..."
            raise InputError(
                f"{path} is not the library {meta_path} describes ({got}; it expects "
                f"{rec.get('size')} bytes, sha256 {str(rec.get('sha256'))[:12]}...): the two "
                "files come from different builds or the .so is damaged; copy a .so with its "
                "own .json, or rebuild")
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 52 or head[:4] != b"\x7fELF":
        raise InputError(f"{path} is not a shared library ({size} bytes, no ELF header): "
                         "truncated, or another kind of file")
    field, _, shoff, shentsize, shnum = _elf_header(head)
    # the section header table (at the end of the file a linker writes) must be inside it
    if shoff + shentsize * shnum > size:
        raise InputError(f"{path} is a truncated shared library ({size} bytes; its section "
                         f"headers end at byte {shoff + shentsize * shnum})")
    if local:
        code = field(18, 2)
        arch = _ELF_MACHINES.get(code, f"ELF machine {code}")
        host = platform.machine().lower()
        host = _HOST_MACHINES.get(host, host)
        if arch != host:
            raise UnsupportedCPUError(
                f"{path} is an {arch} library and this machine is {host}: run it on such a "
                "board (python -m f8tvm.run --rpc HOST:PORT) or rebuild with --target host")


class Module:
    """A loaded f8tvm module: ``run`` (float in/out), ``run_int`` (the integer program)."""

    def __init__(self, lib, meta: dict, device=None, board=None):
        # lazy: importing TVM takes seconds; the CLI's checks and the CPU check run without it
        import tvm
        import tvm_ffi  # lazy: as above (TVM's runtime: zero-copy views of NumPy arrays)
        from tvm.runtime.vm import VirtualMachine  # lazy: as above

        self.meta = meta
        self.board = board  # RemoteBoard when the module runs over RPC, else None
        if board is None and needs_amx(meta):
            enable_amx()  # before its first tile instruction
        self.device = device if device is not None else tvm.cpu()
        self._tvm = tvm
        self._vm = VirtualMachine(lib, self.device)
        inp = meta["input"]
        self.input_shape = tuple(inp["shape"])
        self.input_dtype = inp["dtype"]
        self.input_fl = int(inp["fl"])
        self.input_range = qrange(self.input_dtype == "int8")
        out = meta["output"]
        self.output_fl = np.asarray(out["fl"], np.int64)
        self.output_scale = float(out["eta"])
        # real = acc * eta * 2**-fl, as one factor (2**-fl is a power of two: the product is
        # the same as scaling by eta first), per channel where the output's fl is
        fl = self.output_fl.reshape((1, -1) + (1,) * (len(out["shape"]) - 2)) \
            if self.output_fl.size > 1 else self.output_fl.ravel()[0]
        self._to_real = self.output_scale * np.exp2(-fl.astype(np.float64))
        # on this machine: the program's input tensor, made once and written in place, and the
        # library's float boundary kernel where the build has one (``run`` then quantizes with
        # it: one pass instead of NumPy's six).  So one Module runs one call at a time, as
        # TVM's VM does.
        self._q_in = self._quantize_kernel = self._dequantize_kernel = None
        self._view = tvm_ffi.from_dlpack
        self._main = None  # the VM's entry, looked up once (run's fast path)
        self._exponent = self._exponent_arg = None  # the kernel's flag (below)
        if board is None and self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
            self._q_in = tvm.runtime.empty(self.input_shape, self.input_dtype, self.device)
            self._main = self._vm["main"]
            lib_mod = lib.mod if hasattr(lib, "mod") else lib  # an in-process Executable
            # the kernel's third argument receives the input's largest exponent field: all ones
            # where a value is infinite or NaN.  A build before that flag (its .json without
            # ``finite_flag``) has a two-argument kernel: the NumPy path instead.
            if inp.get("kernel") and inp.get("finite_flag"):
                self._quantize_kernel = self._kernel(lib_mod, inp["kernel"])
                self._exponent = np.zeros(1, np.int32)
                self._exponent_arg = tvm_ffi.from_dlpack(self._exponent)
            # the output's kernel (a build before it: NumPy's dequantize) writes ``_y_arg``,
            # which ``run`` copies out (``_y``, a view); its factor per channel is
            # ``_to_real``'s.  Both tensors TVM's: the kernel's vector stores assume its
            # alignment, which a NumPy array need not have.
            if out.get("kernel"):
                self._dequantize_kernel = self._kernel(lib_mod, out["kernel"])
                self._y_arg = tvm.runtime.empty(tuple(out["shape"]), "float32", self.device)
                self._y = np.from_dlpack(self._y_arg)
                # one factor, or one per channel (``_to_real`` holds one value or C)
                scale = np.broadcast_to(np.ravel(self._to_real), (out["shape"][1],))
                self._scale_arg = tvm.runtime.tensor(scale.astype(np.float64), self.device)

    @staticmethod
    def _kernel(lib_mod, name):
        """The library's float boundary kernel ``name``, or None where the library lacks it (a
        program rebuilt without it: kernels rerouted to an emulator, tools.emulated_x86)."""
        try:
            return lib_mod.get_function(name, query_imports=True)
        except AttributeError:
            return None

    def close(self) -> None:
        """Release the module; on a board, also end the RPC session (a TVM RPC server serves one
        session at a time, so the next client waits until this one has closed)."""
        self._vm = self._main = None
        if self.board is not None:
            self.device = None  # a remote device holds the session too
            self.board.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ integer program
    def run_int(self, q):
        """Run the integer program on an 8-bit input; returns ``(int32 output, output FL)``."""
        q = np.asarray(q)
        self._check(q, self.input_dtype, integer=True)
        lo, hi = self.input_range
        if q.size and (q.min() < lo or q.max() > hi):
            raise InputError(f"input values must lie in [{lo}, {hi}] for {self.input_dtype}, "
                             f"got [{q.min()}, {q.max()}]")
        return self._run_program(q)

    def _run_program(self, q):
        """:meth:`run_int` on an input already checked (``quantize``'s result)."""
        q = np.ascontiguousarray(q.astype(self.input_dtype, copy=False))
        if self._q_in is not None:
            self._q_in.copyfrom(q)
            return self._call(self._q_in)
        return self._call(self._tvm.runtime.tensor(q, self.device))

    def _call(self, arg):
        """The program on ``arg`` (a tensor on the device); ``(int32 output, output FL)``."""
        if self.board is None:
            out = (self._main or self._vm["main"])(arg)
        else:
            # A VM call returning a tuple cannot cross RPC; the stateful API can.
            self._vm.set_input("main", arg)
            self._vm.invoke_stateful("main")
            out = self._vm.get_outputs("main")
        out = self._single(out)
        fl = self.output_fl if self.output_fl.size > 1 else int(self.output_fl.ravel()[0])
        return out.numpy(), fl

    # ------------------------------------------------------------------ float boundary
    def quantize(self, x, allow_nonfinite: bool = False):
        """Float input -> the program's 8-bit input (round half to even, clamp).

        NaN or infinity in ``x`` is refused (a :class:`f8tvm.core.errors.InputError` with the
        count): the program would turn it into confident logits.  ``allow_nonfinite=True``
        clamps infinities to the 8-bit range and reads NaN as 0 instead."""
        x = np.asarray(x)
        self._check(x, "float32", integer=False)
        lo, hi = self.input_range
        scale = np.float32(2.0**self.input_fl)
        # in float32, exactly: scaling by a power of two is exact (an overflow to inf clamps as
        # the large value would; a value pushed below float32's normal range rounds to 0 either
        # way), and rint rounds half to even
        with np.errstate(over="ignore", invalid="ignore"):
            q = np.multiply(x, scale, dtype=np.float32)
        # NaN and infinity survive the scaling and show in its min or max (two passes; the
        # element-wise test only where one is not finite: a large finite value can overflow)
        if q.size and not (np.isfinite(q.min()) and np.isfinite(q.max())):
            bad = ~np.isfinite(x)
            if bad.any():
                if not allow_nonfinite:
                    n_nan = int(np.isnan(x).sum())
                    raise InputError(f"input holds {n_nan} NaN and {int(bad.sum()) - n_nan} "
                                     f"infinite value(s) of {x.size}; pass allow_nonfinite=True "
                                     "to clamp infinities and read NaN as 0")
                x = np.nan_to_num(x, nan=0.0, posinf=np.inf, neginf=-np.inf)
                with np.errstate(over="ignore"):
                    q = np.multiply(x, scale, dtype=np.float32)
        np.rint(q, out=q)
        np.clip(q, lo, hi, out=q)
        return q.astype(self.input_dtype)

    @staticmethod
    def _single(out):
        """The program's one output tensor (the VM returns it alone or in a tuple)."""
        return out if hasattr(out, "numpy") else out[0]

    def dequantize(self, acc):
        """The program's int32 output -> float32 (``acc * eta * 2**-fl``, in float64)."""
        return np.multiply(acc, self._to_real, dtype=np.float64).astype(np.float32)

    def run(self, x, allow_nonfinite: bool = False):
        """Float input (same convention as the PyTorch model) -> float output
        (``allow_nonfinite``: see :meth:`quantize`)."""
        if self._quantize_kernel is not None and self._quantize_on_device(x):
            # after a run of the program every Python step is slow (the program leaves the
            # caches cold), so this path takes as few as it can: the library's kernel
            # dequantizes, one NumPy copy hands the result out
            out = self._single(self._main(self._q_in))
            if self._dequantize_kernel is None:
                return self.dequantize(np.from_dlpack(out))
            self._dequantize_kernel(out, self._scale_arg, self._y_arg)
            return self._y.copy()
        acc, _ = self._run_program(self.quantize(x, allow_nonfinite))
        return self.dequantize(acc)

    def _quantize_on_device(self, x) -> bool:
        """:meth:`quantize` by the library's kernel, into the program's input tensor.  False
        (the input tensor's content then undefined) unless ``x`` is a finite float32 array:
        :meth:`quantize` then raises, or clamps with ``allow_nonfinite``, as documented."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            return False
        self._check(x, "float32", integer=False)
        self._quantize_kernel(self._view(np.ascontiguousarray(x), require_alignment=0),
                              self._q_in, self._exponent_arg)
        return self._exponent[0] != FLOAT32_EXPONENT

    def benchmark(self, number=10, repeat=5, warmup=2):
        """Latency of the integer program (ms): dict with median, mean, p10, p90, min, and
        ``samples_ms`` (one mean of ``number`` runs per repeat).

        On a remote board the board times itself (TVM's time evaluator), so the network is not
        measured; ``emulated`` says whether those are an emulator's timings (meaningless).
        """
        rng = np.random.default_rng(0)
        lo, hi = self.input_range
        q = rng.integers(lo, hi + 1, self.input_shape).astype(self.input_dtype)
        arg = self._tvm.runtime.tensor(q, self.device)
        if self.board is not None:
            self._vm.set_input("main", arg)
            timer = self._vm.time_evaluator("invoke_stateful", self.device, number=number,
                                            repeat=repeat)
            t = np.asarray(timer("main").results) * 1e3
            return self._stats(t, number * repeat) | {"emulated": self.board.emulated}
        f = self._vm["main"]
        for _ in range(warmup):
            f(arg)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                f(arg)
            times.append((time.perf_counter() - t0) / number * 1e3)
        return self._stats(np.asarray(times), number * repeat)

    @staticmethod
    def _stats(t, runs):
        return dict(median_ms=float(np.median(t)), mean_ms=float(t.mean()),
                    p10_ms=float(np.percentile(t, 10)), p90_ms=float(np.percentile(t, 90)),
                    min_ms=float(t.min()), runs=int(runs), samples_ms=[float(v) for v in t])

    def _check(self, x, dtype, integer):
        if tuple(x.shape) != self.input_shape:
            raise InputError(f"input shape {tuple(x.shape)} does not match the compiled model's "
                             f"{self.input_shape}")
        if integer:
            if not np.issubdtype(x.dtype, np.integer):
                raise InputError(f"run_int expects an integer array ({self.input_dtype}), "
                                 f"got {x.dtype}")
        elif x.dtype != np.float32:
            raise InputError(f"run expects a float32 array, got {x.dtype}")


class RemoteBoard:
    """A TVM RPC session with a board (``tvm.rpc.connect``) and what the board says about itself.

    Parameters
    ----------
    address : str
        ``host:port`` of the board's RPC server (``python -m tvm.exec.rpc_server`` or f8tvm's
        ``board_server.py``).
    session_timeout : float
        Seconds after which the board ends the session (0 = never), so that a stuck board
        becomes an error instead of a hang.
    """

    def __init__(self, address: str, session_timeout: float = 0, key: str | None = None):
        from tvm import rpc  # lazy: TVM only when a board is used

        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--rpc/remote must be HOST:PORT, got {address!r}")
        self.address = address if key is None else f"{key}@{address}"
        try:
            if key is None:
                self.session = rpc.connect(host, int(port), session_timeout=session_timeout)
            else:
                self.session = rpc.connect_tracker(host, int(port)).request(
                    key, session_timeout=session_timeout)
        except (OSError, RuntimeError) as err:  # TVM's errors are RuntimeErrors
            what = "RPC server" if key is None else f"RPC tracker (board key {key!r})"
            raise ConnectionError(f"cannot connect to the {what} at {address}: {err}") from None
        self.info = self._info()

    def _info(self) -> dict:
        try:
            return json.loads(self.session.get_function("f8tvm.board.info")())
        except (AttributeError, RuntimeError):  # a stock TVM RPC server has no such function
            return {}

    def close(self) -> None:
        """End the session: the board serves its next client (TVM has no explicit close; the
        session ends when the last reference to it is gone)."""
        self.session = None
        gc.collect()

    @property
    def emulated(self) -> str | None:
        """The emulator's name when the board is emulated (its timings mean nothing)."""
        return self.info.get("emulator")

    def describe(self) -> str:
        machine = self.info.get("machine", "unknown machine")
        if self.emulated:
            return (f"{self.address} ({machine}, EMULATED by {self.emulated}: timings are not "
                    "those of a real board)")
        return f"{self.address} ({machine})"

    def load(self, path: str, meta: dict) -> Module:
        """Upload ``path`` to the board and load it there."""
        name = os.path.basename(path)
        self.session.upload(path, name)
        return Module(self.session.load_module(name), meta, self.session.cpu(), board=self)


def connect(address: str, session_timeout: float = 0, key: str | None = None) -> RemoteBoard:
    """Open an RPC session with the board at ``host:port`` (see :class:`RemoteBoard`); with
    ``key``, ``address`` is an RPC tracker and the session is with a free board registered
    there under ``key`` (a board registered with a tracker accepts no direct connection)."""
    return RemoteBoard(address, session_timeout, key)


def missing_cpu_flags(need, cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU features of ``need`` (a target's ``cpu_flags``) that this CPU lacks; empty where
    ``cpuinfo`` cannot be read (not Linux) or on another architecture (loading an aarch64
    ``.so`` on x86 fails on its own)."""
    cpu = read_cpuinfo(cpuinfo)
    if cpu is None or not cpu.flags:
        return []  # not Linux, or no x86 "flags" line: another architecture
    need, have = list(need or []), cpu.flags
    return [f for f in need if f not in have]


def needs_amx(meta: dict) -> bool:
    """Whether a module's target uses AMX tiles (its ``cpu_flags`` name ``amx_tile``)."""
    return "amx_tile" in (meta.get("target", {}).get("cpu_flags") or [])


def check_cpu(meta: dict, path: str = "the module", cpuinfo: str = "/proc/cpuinfo") -> None:
    """Raise :class:`f8tvm.core.errors.UnsupportedCPUError` if this CPU lacks a feature the module's
    target needs (its metadata's ``target.cpu_flags``, :func:`missing_cpu_flags`): a clear error
    instead of an illegal instruction."""
    missing = missing_cpu_flags(meta.get("target", {}).get("cpu_flags"), cpuinfo)
    if missing:
        name = meta["target"].get("name", "?")
        raise UnsupportedCPUError(
            f"{path} was built for target {name!r}, which needs CPU features this CPU lacks: "
            f"{', '.join(missing)} (it would stop on an illegal instruction); rebuild it with "
            "--target host")


def load(path: str, device=None, remote: str | RemoteBoard | None = None) -> Module:
    """Load ``path`` (.so) and the ``.json`` metadata beside it.

    Parameters
    ----------
    path : str
        The ``.so`` written by ``f8tvm.build`` / ``CompiledModel.export``.
    device : tvm.runtime.Device, optional
        Local device (default: CPU).  Ignored with ``remote``.
    remote : str or RemoteBoard, optional
        ``host:port`` of a board's TVM RPC server (or an open :func:`connect` session): the
        module is uploaded and runs on the board.
    """
    meta_path = metadata_path(path)
    for p in (path, meta_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such file: {p}")
    with open(meta_path) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise InputError(f"{meta_path} is not valid JSON ({err.msg} at line {err.lineno}): "
                             "truncated, or not written by f8tvm") from None
    if not isinstance(meta, dict) or meta.get("format") != "f8tvm":
        raise InputError(f"{meta_path} is not f8tvm metadata")
    check_library(path, meta, meta_path, local=remote is None)
    if remote is not None:
        board = remote if isinstance(remote, RemoteBoard) else RemoteBoard(remote)
        return board.load(path, meta)
    check_cpu(meta, path)
    import tvm  # lazy: TVM only once the files are checked

    return Module(tvm.runtime.load_module(path), meta, device)
