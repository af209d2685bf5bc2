"""Run compiled x86 kernels on an emulated x86-64 CPU with AVX-512 VNNI and AVX-VNNI (Bochs's
CPU, through ``bochscpu-python``), so the ``x86-avx512`` and ``x86-avxvnni`` builds are executed,
not only disassembled, on a machine without VNNI.  QEMU's user mode cannot do this: its TCG has
neither AVX-512 nor AVX-VNNI.

How: a kernel's object file (what ``tvm.compile`` emits for one PrimFunc) is linked statically
with a few lines of freestanding C -- the TVM runtime hooks a kernel calls (parallel launch run
as one task, a bump allocator for workspaces, an error hook that records the failure) and an
entry that calls the kernel's packed function and stops on ``hlt`` -- and its loadable segments
are copied into an identity-mapped long-mode address space.  The DLTensors and their data are
written next to it, the CPU runs (no per-instruction Python callback unless instructions are
counted), and the output tensors are read back.  :func:`emulated_executable` routes every kernel
call of a whole program there.  Outputs and instruction counts only: timings under emulation
mean nothing.

``python -m tools.emulated_x86 --model resnet18 --targets x86-avx512,x86-avxvnni,x86`` builds a
model for each target, runs it whole on the emulated CPU, checks it bit for bit against the NumPy
reference and (``--count``) reports the instructions its kernels execute, side by side.
Needs ``pip install bochscpu-python==0.3.1`` (in f8tvm's ``[test]`` extra), ``gcc`` and ``ld``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import tvm
import tvm_ffi

from f8tvm import api, pipeline
from f8tvm.core import _tvm
from f8tvm.core.bindings import is_call, rebuild, substitute
from f8tvm.core.errors import F8TVMError
from f8tvm.models import MODELS, get_model
from f8tvm.reference import quantize_input, run_reference
from f8tvm.runtime import Module
from f8tvm.schedules import kernel_kind
from f8tvm.targets import TARGETS

PAGE = 4096
IMAGE = 0x0040_0000  # where the linked kernel is placed
HEAP = 0x1000_0000  # tensors, DLTensors, the argument array
STACK_PAGES = 64
ARENA = 16 << 20  # workspace bytes (pad buffers and the like)

_STUBS = r"""
typedef unsigned long u64;
typedef struct { void *sync; int num_task; } penv_t;
typedef int (*lambda_t)(int, penv_t *, void *);
extern int __tvm_ffi_main(void *, const void *, int, void *);
/* a kernel without parallel loops or workspaces has none of these */
extern void *__TVMBackendParallelLaunch __attribute__((weak));
extern void *__TVMBackendAllocWorkspace __attribute__((weak));
extern void *__TVMBackendFreeWorkspace __attribute__((weak));
static char arena[%(arena)d] __attribute__((aligned(64)));
static u64 used;
volatile int f8_rc = -999, f8_error;

static int launch(lambda_t f, void *cdata, int num_task) {
    penv_t env = {0, 1};
    (void)num_task;
    return f(0, &env, cdata);
}
static void *alloc(int dev, int dev_id, u64 nbytes, int code, int bits) {
    u64 at = (used + 63) & ~63UL;
    if (at + nbytes > sizeof(arena)) return 0;
    used = at + nbytes;
    return arena + at;
}
static int release(int dev, int dev_id, void *p) { return 0; }
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int n) {
    f8_error = 1;
}
void *memset(void *d, int c, u64 n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, u64 n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}
void f8_entry(const void *args, int n, void *result) {
    if (&__TVMBackendParallelLaunch) __TVMBackendParallelLaunch = (void *)launch;
    if (&__TVMBackendAllocWorkspace) __TVMBackendAllocWorkspace = (void *)alloc;
    if (&__TVMBackendFreeWorkspace) __TVMBackendFreeWorkspace = (void *)release;
    f8_rc = __tvm_ffi_main(0, args, n, result);
    for (;;) __asm__ volatile("hlt");
}
"""

_DL_INT, _DL_UINT = 0, 1
_FFI_DLTENSOR_PTR = 7  # TVMFFITypeIndex kTVMFFIDLTensorPtr


class EmulatorUnavailable(F8TVMError):
    """The emulator package or the native toolchain is missing."""


class EmulatorGap(RuntimeError):
    """The kernel holds a valid instruction this emulator rejects (see :func:`_gap`)."""


def available() -> str | None:
    """None when kernels can run here, else the reason they cannot."""
    try:
        # lazy: optional ([test] extra); available() says what is missing
        import bochscpu  # noqa: F401
    except ImportError as e:
        return f"bochscpu-python is not installed ({e}; pip install bochscpu-python==0.3.1)"
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def _image(exe: str):
    """``(segments, symbols)`` of a linked kernel, read once per executable (it is run once per
    kernel call): PT_LOAD segments of the 64-bit little-endian ELF as ``(vaddr, memsz, bytes)``
    and ``nm``'s symbol addresses.  Keyed by the file's identity, so a relinked path is reread."""
    st = os.stat(exe)
    return _read_image(exe, st.st_mtime_ns, st.st_size, st.st_ino)


@functools.cache
def _read_image(exe: str, *identity):
    with open(exe, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise RuntimeError(f"{exe}: not a 64-bit ELF")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segs = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            segs.append((vaddr, memsz, data[off:off + filesz]))
    out = subprocess.run(["nm", exe], check=True, capture_output=True, text=True).stdout
    syms = {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines())
            if len(p) == 3}
    return segs, syms


def link_kernel(obj_path: str, workdir: str) -> str:
    """Link a kernel object (``Module.write_to_file(..., "o")`` of one compiled PrimFunc) with the
    runtime stubs into a static executable at :data:`IMAGE`; returns its path."""
    stubs = os.path.join(workdir, "stubs.c")
    with open(stubs, "w") as f:
        f.write(_STUBS % {"arena": ARENA})
    obj = os.path.join(workdir, "stubs.o")
    exe = os.path.join(workdir, "kernel.elf")
    # no loop-to-memset rewrite: memset itself is defined here
    subprocess.run(["gcc", "-O2", "-c", "-ffreestanding", "-fno-builtin", "-fno-pie",
                    "-fno-tree-loop-distribute-patterns",
                    "-fno-stack-protector", "-mno-red-zone", "-o", obj, stubs], check=True)
    done = subprocess.run(["ld", "-static", "-nostdlib", "-no-pie", f"-Ttext-segment={IMAGE:#x}",
                           "-e", "f8_entry", "-o", exe, obj_path, obj],
                          capture_output=True, text=True)
    if done.returncode:  # e.g. a runtime hook the stubs do not define
        raise RuntimeError(f"linking {obj_path} for the emulator failed:\n{done.stderr}")
    return exe


def _near(exe: str, rip: int) -> list[str]:
    """The instruction before ``rip`` and the one at it, disassembled (a fault's reported
    ``rip`` may be the faulting instruction's or the next one's)."""
    start = max((a for a in _image(exe)[1].values() if a <= rip), default=IMAGE)
    out = subprocess.run(["objdump", "-d", f"--start-address={start:#x}",
                          f"--stop-address={rip + 16:#x}", exe],
                         capture_output=True, text=True).stdout
    insns = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].strip().endswith(":"):
            insns[int(parts[0].strip()[:-1], 16)] = parts[2].strip()
    before = [a for a in sorted(insns) if a < rip][-1:]
    return [f"{a:#x}: {insns[a]}" for a in before + [a for a in insns if a == rip]]


def _gap(exe: str, rip: int) -> str | None:
    """The faulting instruction if it is one Bochs's decoder wrongly rejects (#UD): a gather or
    scatter whose vector index is one of the EVEX-only registers 16-31 (LLVM emits them in
    layout transforms); None for anything else, a real fault."""
    for insn in _near(exe, rip):
        if re.search(r"gather|scatter", insn) and \
                re.search(r"\(.*%[xyz]mm(1[6-9]|2\d|3[01])", insn):
            return insn
    return None


# Bochs's CPU model (bochscpu's default, 29 "tigerlake", has AVX-512 VNNI but rejects the VEX
# vpdpbusd of AVX-VNNI); 28 is "corei7_icelake_u", which runs both
_CPU_MODEL = 28


@functools.cache  # once per process, before the first CPU
def _set_cpu_model() -> None:
    """Select :data:`_CPU_MODEL` before the first CPU is made: bochscpu keeps its parameters
    in a table its C ABI hands to Bochs (``sim_get_param_enum``), set through Bochs's own
    ``bx_param_enum_c::set``."""
    # lazy: optional ([test] extra); available() says what is missing
    import bochscpu._bochscpu as native

    lib = ctypes.CDLL(native.__file__)
    lib.sim_get_param_enum.restype = ctypes.c_void_p
    lib.sim_get_param_enum.argtypes = [ctypes.c_char_p]
    set_enum = lib._ZN15bx_param_enum_c3setEl
    set_enum.argtypes, set_enum.restype = [ctypes.c_void_p, ctypes.c_long], None
    set_enum(lib.sim_get_param_enum(b"cpu.model"), _CPU_MODEL)


class _Space:
    """An identity-mapped (virtual == physical) long-mode address space in the emulator."""

    def __init__(self):
        # lazy: optional ([test] extra); available() says what is missing
        import bochscpu.memory as mem

        self.mem = mem
        self.pages: dict[int, int] = {}  # gpa -> host page
        self.table = mem.PageMapLevel4Table()

    def map(self, start: int, size: int) -> None:
        first, last = start // PAGE, (start + size + PAGE - 1) // PAGE
        for page in range(first, last):
            gpa = page * PAGE
            if gpa not in self.pages:
                hva = self.mem.allocate_host_page()
                self.mem.page_insert(gpa, hva)
                self.pages[gpa] = hva
                self.table.insert(gpa, gpa, 1)  # read-write (and executable)

    def commit(self, pml4: int) -> None:
        self.pml4 = pml4
        for hva, gpa in self.table.commit(pml4):
            self.mem.page_insert(gpa, hva)
            self.pages.setdefault(gpa, hva)

    def write(self, addr: int, data: bytes) -> None:
        if data and not self.mem.virt_write(self.pml4, addr, bytearray(data)):
            raise EmulatorUnavailable(f"write of {len(data)} bytes at {addr:#x} failed")

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.mem.virt_read(self.pml4, addr, size))

    def release(self) -> None:
        for gpa, hva in self.pages.items():
            self.mem.page_remove(gpa)
            self.mem.release_host_page(hva)
        self.pages.clear()


def _dltensor(data_addr, shape_addr, arr):
    kind = {"i": _DL_INT, "u": _DL_UINT}[arr.dtype.kind]
    # data, device (kDLCPU, 0), ndim, dtype (code, bits, lanes), shape, strides, byte_offset
    return struct.pack("<QiiiBBHQQQ", data_addr, 1, 0, arr.ndim, kind, arr.dtype.itemsize * 8, 1,
                       shape_addr, 0, 0)


def run_kernel(exe: str, arrays: list[np.ndarray], count: bool = False) -> int | None:
    """Run the linked kernel ``exe`` on ``arrays`` (its parameters in order, C-contiguous
    integer arrays); the outputs are written back into their arrays.  ``count``: return the
    number of instructions the kernel executed (a Python callback per instruction: slow)."""
    import bochscpu  # lazy: optional ([test] extra); available() says what is missing
    import bochscpu.cpu  # lazy: optional ([test] extra); available() says what is missing

    segments, syms = _image(exe)
    space = _Space()
    try:
        for vaddr, memsz, _ in segments:
            space.map(vaddr, memsz)
        # tensors (64-byte aligned), then shapes, DLTensors and the argument array
        layout, at = [], HEAP
        for a in arrays:
            layout.append(at)
            at = (at + a.nbytes + 63) // 64 * 64
        shapes = at
        at += 8 * sum(a.ndim for a in arrays) + 64
        tensors = (at + 63) // 64 * 64
        args = tensors + 64 * len(arrays)
        result = args + 16 * len(arrays)
        stack = (result + 16 + PAGE) // PAGE * PAGE
        end = stack + STACK_PAGES * PAGE
        space.map(HEAP, end - HEAP)
        pml4 = (end + PAGE) // PAGE * PAGE
        space.commit(pml4)

        for vaddr, _, data in segments:
            space.write(vaddr, data)
        shape_at = shapes
        for i, a in enumerate(arrays):
            space.write(layout[i], np.ascontiguousarray(a).tobytes())
            space.write(shape_at, struct.pack(f"<{a.ndim}q", *a.shape))
            space.write(tensors + 64 * i, _dltensor(layout[i], shape_at, a))
            space.write(args + 16 * i, struct.pack("<iiQ", _FFI_DLTENSOR_PTR, 0,
                                                   tensors + 64 * i))
            shape_at += 8 * a.ndim

        state = bochscpu.State()
        bochscpu.cpu.set_long_mode(state)
        state.cr3 = pml4
        cr4 = bochscpu.cpu.ControlRegister()
        cr4.PAE = cr4.OSFXSR = cr4.OSXMMEXCPT = cr4.OSXSAVE = True
        state.cr4 = int(cr4)
        state.xcr0 = 0xE7  # x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
        state.rsp = end - 64 - 8  # as after a call: the ABI aligns rsp + 8 to 16
        state.rip = syms["f8_entry"]
        state.rdi, state.rsi, state.rdx = args, len(arrays), result
        code, data = bochscpu.Segment(), bochscpu.Segment()
        for seg, sel, attr in ((code, 0x33, 0x22FB), (data, 0x2B, 0xCF3)):
            seg.present, seg.selector, seg.base, seg.limit, seg.attr = \
                True, sel, 0, 0xFFFF_FFFF, attr
        state.cs = code
        state.ds = state.ss = state.es = state.fs = state.gs = data

        _set_cpu_model()
        sess = bochscpu.Session()
        faults = []

        def missing(gpa):
            raise EmulatorUnavailable(f"kernel touched unmapped memory at {gpa:#x}")

        def exception(s, cpu_id, vector, error_code):
            faults.append((int(vector), int(error_code), s.cpu.state.rip))
            s.stop()

        sess.missing_page_handler = missing
        sess.cpu.state = state
        hook = bochscpu.Hook()
        hook.exception = exception
        executed = [0]
        if count:
            def after(s, cpu_id, insn):
                executed[0] += 1

            hook.after_execution = after
        sess.run([hook])

        rc, = struct.unpack("<i", space.read(syms["f8_rc"], 4))
        err, = struct.unpack("<i", space.read(syms["f8_error"], 4))
        if faults and faults[0][0] == 6 and (insn := _gap(exe, faults[0][2])):
            raise EmulatorGap(f"the emulator rejects the valid {insn!r} ({faults[0][2]:#x})")
        # the entry ends in hlt, a #GP (13) at user privilege: the normal way out
        if not faults or faults[0][0] != 13 or rc == -999:
            vector, code, rip = faults[0] if faults else (None, None, 0)
            raise RuntimeError(f"the kernel did not return: exception {vector} (error code "
                               f"{code}) near {_near(exe, rip) if faults else '?'}")
        if rc != 0 or err:
            raise RuntimeError(f"the kernel returned {rc} (argument check failed: "
                               "shape, dtype or alignment of the tensors)")
        for i, a in enumerate(arrays):
            a[...] = np.frombuffer(space.read(layout[i], a.nbytes), a.dtype).reshape(a.shape)
        return executed[0] if count else None
    finally:
        space.release()


def compile_and_link(func, target, workdir: str | None = None,
                     stack_buffer_bytes: int = 0) -> str:
    """Compile one scheduled PrimFunc for ``target`` (scratch buffers up to
    ``stack_buffer_bytes`` on the stack, as the preset's builds) and link it for
    :func:`run_kernel`."""
    workdir = workdir or tempfile.mkdtemp(prefix="f8tvm-emu-")
    os.makedirs(workdir, exist_ok=True)
    lib = _tvm.compile_relax_lowered(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target,
        stack_buffer_bytes)
    obj = os.path.join(workdir, "kernel.o")
    lib.mod.write_to_file(obj)
    return link_kernel(obj, workdir)


_serial = [0]  # each executable registers its kernels under names of its own


def emulated_executable(int_mod, preset, workdir: str, count: bool = False):
    """The VM executable of an integer program (``CompiledModel.int_mod``) for an x86 ``preset``
    in which every kernel -- scheduled exactly as a build schedules it -- runs on the emulated
    CPU: each ``call_tir`` becomes a call of a Python function that runs that kernel's linked
    object in the emulator.  A kernel that hits an :class:`EmulatorGap` runs natively instead
    (the same scheduled TIR compiled for this CPU).  Returns ``(executable, report)``:
    ``report[kernel]`` says ``where`` it ran (``"emulated"`` or ``"native"``), its ``calls`` and,
    with ``count``, the ``instructions`` it executed (emulated calls only)."""
    target = preset.tvm()
    os.makedirs(workdir, exist_ok=True)
    report: dict[str, dict] = {}
    _serial[0] += 1
    prefix = f"f8tvm.emulated.{_serial[0]}."

    def kernel_runner(name, func, kind):
        exe = compile_and_link(func, target, tempfile.mkdtemp(dir=workdir),
                               preset.stack_buffer_bytes)
        native = []

        def run(*tensors):
            arrays = [t.numpy() for t in tensors]
            entry = report.setdefault(name, dict(kind=kind, where="emulated", calls=0,
                                                 instructions=0))
            entry["calls"] += 1
            if entry["where"] == "emulated":
                try:
                    entry["instructions"] += run_kernel(exe, arrays, count) or 0
                except EmulatorGap:
                    entry["where"] = "native"
            if entry["where"] == "native":
                if not native:
                    native.append(tvm.compile(tvm.IRModule({"main": func.with_attr(
                        "global_symbol", "main")}), target="llvm"))
                ts = [tvm.runtime.tensor(a) for a in arrays]
                native[0]["main"](*ts)
                arrays = [t.numpy() for t in ts]
            for t, a in zip(tensors, arrays):
                t.copyfrom(a)

        return run

    # the pipeline through scheduling, exactly as a build runs it; then every kernel call is
    # routed to the emulated CPU, and the rest of the pipeline lowers that
    b = pipeline.run(pipeline.Build(preset, ir={"integer": int_mod}), start="pack",
                     until="schedule")
    kinds = {name: kernel_kind(func) for name, func in _tvm.primfuncs(b.ir["fuse"])}
    scheduled = b.ir["schedule"]
    for name, func in _tvm.primfuncs(scheduled):
        tvm_ffi.register_global_func(prefix + name, kernel_runner(name, func, kinds[name]),
                                     override=True)

    def handler(b, env, bb):
        if not is_call(b.value, "relax.call_tir"):
            return None
        call = b.value
        out = call.ty_args[0]  # the output type (0.27: sinfo_args -> ty_args)
        out = list(out.fields) if isinstance(out, _tvm.relax.TupleType) else out
        return bb.emit(_tvm.relax.call_dps_packed(
            prefix + call.args[0].name_hint, substitute(call.args[1], env), out),
            _tvm.var_name(b.var))

    main = rebuild(scheduled["main"], handler).with_attr("global_symbol", "main")
    lowered = _tvm.finish_lowering(tvm.IRModule({"main": main}), target)
    return pipeline.codegen(lowered, preset), report


# ----------------------------------------------------------------------------- command line
def _row(target, cm, report, exact, seconds):
    by_kind: dict[str, int] = {}
    for entry in report.values():
        by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + entry["instructions"]
    return dict(target=target, dot_instruction=cm.target.dot_instruction, bit_exact=exact,
                macs_8bit=int(cm.audit.macs_8bit), instructions=sum(by_kind.values()),
                instructions_by_kind=by_kind, emulated_seconds=round(seconds, 1),
                native_kernels=sorted(n for n, e in report.items() if e["where"] == "native"))


def _table(rows, counted):
    head = f"{'target':<13} {'dot':<13} {'bit-exact':<9} {'8-bit MACs':>14}"
    if counted:
        head += (f" {'instructions':>13} {'conv':>12} {'depthwise':>12} {'other':>11}"
                 f" {'vs first':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['target']:<13} {r['dot_instruction']:<13} {str(r['bit_exact']):<9} "
                f"{r['macs_8bit']:>14,}")
        if counted:
            k = r["instructions_by_kind"]
            line += (f" {r['instructions']:>13,} {k.get('conv', 0):>12,} "
                     f"{k.get('depthwise', 0):>12,} {k.get('other', 0):>11,} "
                     f"{r['instructions'] / rows[0]['instructions']:>7.2f}x")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.emulated_x86",
        description="Build a model for x86 targets and run each build whole on an emulated "
                    "AVX-512 VNNI / AVX-VNNI CPU: bit-exactness against the NumPy reference and "
                    "(--count) the instructions its kernels execute. Timings under emulation "
                    "mean nothing; instruction counts are exact.")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--targets", default="x86-avx512,x86-avxvnni,x86",
                   help="comma-separated x86 presets (default: %(default)s)")
    p.add_argument("--input-size", type=int, help="H = W of the input (default: the model's)")
    p.add_argument("--count", action="store_true",
                   help="count executed instructions (a Python callback per instruction, "
                        "about 2 million a second)")
    p.add_argument("--output", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS or not t.startswith("x86")]
    if bad or not targets:
        x86 = ", ".join(t for t in TARGETS if t.startswith("x86"))
        print(f"error: not x86 targets: {', '.join(bad) or '(none)'}; choose from {x86}",
              file=sys.stderr)
        return 2
    reason = available()
    if reason:
        print(f"error: no emulated CPU: {reason}", file=sys.stderr)
        return 2

    model, spec = get_model(args.model, seed=0)
    size = args.input_size or spec.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size)).astype("float32")
    calib = [rng.standard_normal((4, 3, size, size)).astype("float32")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="f8tvm-emu-") as tmp:
        for target in targets:
            print(f"== {args.model} {size}x{size} for {target}: building ...", flush=True)
            cm = api.compile(model, torch.from_numpy(x), target=target, calib=calib)
            ex, report = emulated_executable(cm.int_mod, cm.target,
                                             os.path.join(tmp, target), args.count)
            print(f"   running on the emulated CPU{' (counting)' if args.count else ''} ...",
                  flush=True)
            q = quantize_input(x, cm.plan)
            t0 = time.perf_counter()
            out = Module(ex, cm.metadata()).run_int(q)[0]
            seconds = time.perf_counter() - t0
            exact = bool(np.array_equal(out, run_reference(cm.graph, cm.plan, q)))
            rows.append(_row(target, cm, report, exact, seconds))
    print()
    print(_table(rows, args.count))
    for r in rows:
        if r["native_kernels"]:
            print(f"({r['target']}: {len(r['native_kernels'])} kernel(s) ran natively, an "
                  f"emulator gap: {', '.join(r['native_kernels'])})")
    if args.output:
        doc = dict(model=args.model, input_size=size, counted=args.count, rows=rows,
                   note="whole programs run on Bochs's CPU (Ice Lake model); outputs compared "
                        "with f8tvm's NumPy integer reference; instruction counts are the "
                        "kernels' (the VM's own work is not emulated)")
        tmp_out = args.output + ".tmp"
        with open(tmp_out, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp_out, args.output)
        print(f"wrote {args.output}")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
