"""Instructions and modelled cache misses per inference of an ARM module, counted on the
emulated aarch64 board, side by side with ONNX Runtime's aarch64 build.

    python -m tools.arm_count setup
    python -m tools.arm_count count out/resnet18-arm-dotprod.so --runs 3 --cpu max --kernels
    python -m tools.arm_count table --models resnet18 --output arm-counts.json

Emulated wall-clock times say nothing about a real board; the number of instructions an
inference executes does.  ``setup`` prepares, beside the emulated board (``tools.emulated_board``)
and without touching the host's packages:

1. Debian's *dynamic* ``qemu-user`` build and the two libraries it links (the ``-static`` build
   the board runs on cannot load plugins), unpacked with ``dpkg -x``;
2. ``include/qemu/qemu-plugin.h`` from Debian's own source package of the same QEMU release
   (``apt-get source``, private apt state, the host's Debian sources as ``deb-src``);
3. our counting plugin (``tools/qemu_plugins/count.c``), compiled with the host's ``gcc``.

``count`` runs ``tools/count_inference.py`` on the board under that emulator with the plugin: it
adds up the instructions of every executed block, runs the cache models of :data:`CACHE_MODELS`
on every data access and block fetch, and writes its running totals when the guest makes a
marker syscall, so start-up, model load and a warm-up inference fall outside the count.  With
``kernels`` the totals are kept per kernel of the ``.so`` (the board passes its load address),
each beside its 8-bit MACs from the build's audit (the ``.json``) and the instructions per 16
MACs (16: one ``sdot``'s work; ``smull`` + ``smlal`` + ``sadalp`` are 3 per 16).
One thread (``TVM_NUM_THREADS=1``, ORT's one intra-op thread): the counter is shared by all
threads.

ONNX Runtime (``.onnx`` models) runs from its aarch64 wheel, installed beside the counter
(``ort-site/``), in a copy of the board's sysroot made of symlinks plus a ``/proc/cpuinfo`` that
matches ``-cpu`` (ORT's CPU detection reads it; under qemu-user it would read the x86 host's).
``table`` quantizes each model with ORT the way the bench does (``quant_pre_process``,
``quantize_static``, QDQ, int8 per-channel weights; uint8 and int8 activations: u8s8 and s8s8),
checks on the host that the graph ORT ran on the board is fused (no float conv fed by a
``DequantizeLinear``), and counts f8tvm's ``arm`` build on a Cortex-A72 (no dot product) and its
``arm-dotprod`` build on QEMU's ``max`` CPU (with ``sdot``), each beside ORT on the same CPU.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from f8tvm.core.errors import ToolchainError

from .emulated_board import (
    EmulatedBoard,
    _run,
    _say,
    board_dir,
    board_wheel_options,
    private_apt,
)

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SOURCE = os.path.join(HERE, "qemu_plugins", "count.c")
BOARD_SCRIPT = os.path.join(HERE, "count_inference.py")
HOST_DEBS = ("qemu-user", "libcapstone4", "liburing2")
ORT_WHEELS = ("onnxruntime==1.32.0", "flatbuffers", "packaging", "protobuf")
# /proc/cpuinfo of each -cpu setting (Features as Linux prints them for such a core)
CPUINFO = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "max": ("0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                     "asimdrdm lrcpc dcpop asimddp"),
}
# (f8tvm target, -cpu): the arm build on a core without dot product, arm-dotprod with it
PAIRS = (("arm", "cortex-a72"), ("arm-dotprod", "max"))
# Cache models the plugin runs side by side (64-byte lines, LRU, L2 unified), with the
# constants of the crude cycle estimate (cycle_estimate); geometries from the cores' manuals
# (the sizes boards commonly ship), the rest are assumptions, stated as such in the README
CACHE_MODELS = {
    # in-order dual issue: about one instruction per cycle in NEON code
    "a55": dict(geometry=(32, 4, 32, 4, 128, 4), ipc=1.0, l2_latency=12, memory_latency=120,
                label="Cortex-A55-class: L1I/L1D 32 KiB 4-way, L2 128 KiB 4-way"),
    # out of order, 4-wide: about two per cycle in NEON code (two 128-bit pipes)
    "a76": dict(geometry=(64, 4, 64, 4, 512, 8), ipc=2.0, l2_latency=11, memory_latency=150,
                label="Cortex-A76-class: L1I/L1D 64 KiB 4-way, L2 512 KiB 8-way"),
}
CYCLE_FORMULA = ("instructions / ipc + (L1I misses + L1D misses) * l2_latency "
                 "+ L2 misses * memory_latency")
SETUP_VERSION = "1"  # bump when what setup builds changes


@dataclass
class CounterPaths:
    root: str

    @property
    def qemu(self):
        return os.path.join(self.root, "root", "usr", "bin", "qemu-aarch64")

    @property
    def libs(self):
        return os.path.join(self.root, "root", "usr", "lib", "x86_64-linux-gnu")

    @property
    def plugin(self):
        """The plugin built from this checkout's source (rebuilt when the source changes)."""
        with open(PLUGIN_SOURCE, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        return os.path.join(self.root, f"libcount-{digest}.so")

    @property
    def done(self):
        return os.path.join(self.root, f".done-v{SETUP_VERSION}")

    @property
    def ort_site(self):
        return os.path.join(self.root, "ort-site")

    def ort_root(self, cpu):
        return os.path.join(self.root, f"sysroot-{cpu}")


def counter_paths() -> CounterPaths:
    return CounterPaths(os.path.join(board_dir(), "counter"))


def _source_lists(dst: str) -> None:
    """The host's Debian package sources, each also as ``deb-src``, into folder ``dst``."""
    os.makedirs(dst, exist_ok=True)
    found = 0
    for path in glob.glob("/etc/apt/sources.list.d/*.sources"):
        with open(path) as f:
            text = f.read()
        if "debian" not in text:
            continue
        text = "\n".join("Types: deb deb-src" if line.strip() == "Types: deb" else line
                         for line in text.splitlines())
        with open(os.path.join(dst, os.path.basename(path)), "w") as f:
            f.write(text + "\n")
        found += 1
    lines = []
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("deb ") and "debian" in line:
                        lines += [line.strip(), "deb-src " + line.strip()[4:]]
    if lines:
        with open(os.path.join(dst, "host.list"), "w") as f:
            f.write("\n".join(lines) + "\n")
        found += 1
    if not found:
        raise ToolchainError("no Debian package sources in /etc/apt: the counter's emulator "
                             "and QEMU's plugin header come from Debian's archive")


def _apt(paths: CounterPaths) -> list[str]:
    """apt-get in a private state (the board's helper) over the host's Debian sources, each
    also as ``deb-src``; host architecture."""
    parts = os.path.join(paths.root, "apt", "sources")
    _source_lists(parts)
    return ["apt-get", *private_apt(os.path.join(paths.root, "apt")),
            "-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", "APT::Sandbox::User=root"]


def setup(paths: CounterPaths | None = None) -> CounterPaths:
    """Download and build the counting emulator (cached; see the module doc)."""
    paths = paths or counter_paths()
    if os.path.exists(paths.done):
        return _build_plugin(paths)
    for tool in ("apt-get", "dpkg", "tar", "gcc"):
        if shutil.which(tool) is None:
            raise ToolchainError(f"the instruction counter's setup needs {tool}")
    os.makedirs(paths.root, exist_ok=True)
    apt = _apt(paths)
    _say("counter: package lists (private apt state, deb and deb-src) ...")
    _run([*apt, "update"])
    debs = os.path.join(paths.root, "debs")
    os.makedirs(debs, exist_ok=True)
    _say(f"counter: {', '.join(HOST_DEBS)} ...")
    _run([*apt, "download", *HOST_DEBS], cwd=debs)
    for deb in glob.glob(os.path.join(debs, "*.deb")):
        _run(["dpkg", "-x", deb, os.path.join(paths.root, "root")])
    version = _run([paths.qemu, "--version"],
                   env=dict(os.environ, LD_LIBRARY_PATH=paths.libs)).stdout.split("\n")[0]
    _say(f"counter: {version}; QEMU's plugin header from Debian's source package ...")
    src = os.path.join(paths.root, "src")
    os.makedirs(src, exist_ok=True)
    _run([*apt, "source", "--download-only", "qemu"], cwd=src)
    tarball = sorted(glob.glob(os.path.join(src, "qemu_*.orig.tar.*")))
    if not tarball:
        raise ToolchainError(f"apt-get source qemu left no .orig tarball in {src}")
    _run(["tar", "xf", tarball[-1], "-C", src, "--wildcards", "*/include/qemu/qemu-plugin.h"])
    _say(f"counter: ONNX Runtime's aarch64 wheel ({ORT_WHEELS[0]}) ...")
    _run([sys.executable, "-m", "pip", "install", "-q", "--target", paths.ort_site,
          *board_wheel_options(), *ORT_WHEELS])
    open(paths.done, "w").close()
    _say(f"counter ready in {paths.root}")
    return _build_plugin(paths)


def _build_plugin(paths: CounterPaths) -> CounterPaths:
    """Compile our plugin against the source package's header (once per plugin source)."""
    if os.path.exists(paths.plugin):
        return paths
    headers = glob.glob(os.path.join(paths.root, "src", "*", "include", "qemu", "qemu-plugin.h"))
    if not headers:
        raise ToolchainError(f"QEMU's plugin header is missing under {paths.root}/src: remove "
                             f"{paths.done} and run setup again")
    tmp = paths.plugin + ".tmp"
    _run(["gcc", "-O2", "-shared", "-fPIC", "-I", os.path.dirname(headers[0]), "-o", tmp,
          PLUGIN_SOURCE])
    os.replace(tmp, paths.plugin)
    return paths


def count(module: str, runs: int = 3, cpu: str = "max", board: EmulatedBoard | None = None,
          paths: CounterPaths | None = None, optimized: str | None = None,
          caches: bool = True, kernels: bool = False) -> dict:
    """One inference of ``module`` (an aarch64 ``.so`` beside its ``.json``, or an ``.onnx``
    model for ONNX Runtime, which writes the graph it ran to ``optimized``), counted:
    ``{'per_inference', 'one', 'many', 'runs', 'cpu', 'caches', 'kernels'}``.

    ``one`` and ``many`` are the instructions of the counted segments of 1 and ``runs``
    inferences (each with the loop's and the markers' own), ``per_inference = (many - one) /
    (runs - 1)``.  ``caches`` (with ``caches=True``): per model of :data:`CACHE_MODELS`, the
    L1I, L1D and L2 misses of one inference, the same way, and :func:`cycle_estimate`.
    ``kernels`` (an f8tvm ``.so`` with ``kernels=True``): the same counts per kernel of the
    module (``runtime`` is everything outside it: the VM, allocations, Python)."""
    if runs < 2:
        raise ValueError("runs must be >= 2 (one inference is the difference of two segments)")
    board = board or EmulatedBoard()
    if not board.is_set_up:
        board.setup()
    paths = setup(paths)
    stream = module.startswith("stream:")  # the cache models' self-check (count_inference)
    module = module if stream else os.path.abspath(module)
    onnx = module.endswith(".onnx")
    if kernels and (onnx or stream):
        raise ValueError(f"kernels=True splits an f8tvm .so by kernel, not {module}")
    root = _ort_root(paths, board, cpu) if onnx else board.paths.sysroot
    with tempfile.TemporaryDirectory(prefix="f8tvm-count-") as tmp:
        out = os.path.join(tmp, "marks.txt")
        plugin = [paths.plugin, f"out={out}"]
        if caches:
            plugin += [f"cache={name}:{':'.join(map(str, m['geometry']))}"
                       for name, m in CACHE_MODELS.items()]
        args = [BOARD_SCRIPT, module, str(runs)]
        if optimized:
            args += ["--optimized", os.path.abspath(optimized)]
        names = None  # the kernel split's bucket names
        if kernels:
            symbols, regions = os.path.join(tmp, "symbols.txt"), os.path.join(tmp, "regions.txt")
            names = kernel_regions(module, symbols)
            plugin.append(f"regions={regions}")
            args += ["--regions", symbols, regions]
        cmd = [paths.qemu, "-U", "LD_LIBRARY_PATH", "-L", root, "-cpu", cpu,
               "-plugin", ",".join(plugin), board.paths.python, *args]
        env = dict(board.env(), LD_LIBRARY_PATH=paths.libs)
        if onnx:
            env["PYTHONPATH"] = os.pathsep.join([paths.ort_site, board.paths.site])
        r = subprocess.run(cmd, env=env, cwd=board.paths.app, capture_output=True, text=True,
                           timeout=3 * 3600, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"counting {module} failed ({r.returncode}):\n"
                               f"{(r.stdout + r.stderr)[-3000:]}")
        with open(out) as f:
            marks = _parse_marks(f.read())
    res = _per_inference(marks, runs, cpu, names, caches)
    if kernels:
        _add_macs(res["kernels"], module)
    return res


def _add_macs(kernels: list[dict], module: str) -> None:
    """Each kernel's 8-bit MACs per inference (``macs``, 0 for one without products) from
    the audit in the module's ``.json``, and its instructions per 16 MACs (``per_16_macs``,
    None without MACs).  A module whose ``.json`` predates per-kernel MACs gets neither."""
    meta = os.path.splitext(module)[0] + ".json"
    try:
        with open(meta) as f:
            macs = json.load(f)["audit"]["kernel_macs"]
    except (OSError, KeyError, ValueError):
        return
    for k in kernels:
        k["macs"] = int(macs.get(k["kernel"], 0))
        k["per_16_macs"] = 16 * k["instructions"] / k["macs"] if k["macs"] else None


def _per_16(k: dict) -> str:
    """A kernel's MACs and instructions per 16 MACs, as printed beside its count."""
    if k.get("per_16_macs") is None:
        return f"{'':>11}{'':>8}"
    return f"{k['macs'] / 1e6:>7.1f} MMAC{k['per_16_macs']:>6.2f}/16"


def _parse_marks(text: str) -> dict:
    """The plugin's lines ``tag bucket instructions [misses ...]`` as ``{tag: {bucket: [...]}}``."""
    marks: dict = {}
    for line in text.splitlines():
        if line.startswith("error:"):
            raise RuntimeError(f"the counting plugin: {line}")
        if line.strip():
            tag, bucket, *vals = (int(v) for v in line.split())
            marks.setdefault(tag, {})[bucket] = vals
    return marks


def _per_inference(marks: dict, runs: int, cpu: str, names, caches: bool) -> dict:
    """Counts of one inference from the markers' totals (see :func:`count`)."""
    if not all(t in marks for t in (1, 2, 3)):
        raise RuntimeError(f"the board made markers {sorted(marks)}, not 1, 2 and 3")
    width = len(next(iter(marks[3].values())))
    zero = [0] * width

    def seg(a, b, bucket):
        return [y - x for x, y in zip(marks[a].get(bucket, zero), marks[b].get(bucket, zero))]

    def per(bucket):
        one, many = seg(1, 2, bucket), seg(2, 3, bucket)
        return [(m - o) / (runs - 1) for o, m in zip(one, many)], one[0], many[0]

    total = [0.0] * width
    one_total = many_total = 0
    by_name: dict = {}  # several buckets may carry one name
    for b in sorted(marks[3]):
        vals, one, many = per(b)
        total = [t + v for t, v in zip(total, vals)]
        one_total, many_total = one_total + one, many_total + many
        if names is not None:
            got = by_name.get(names[b], [0.0] * width)
            by_name[names[b]] = [g + v for g, v in zip(got, vals)]
    res = dict(per_inference=total[0], one=one_total, many=many_total, runs=runs, cpu=cpu)
    if caches:
        res["caches"] = _cache_counts(total[1:], total[0])
    if names is not None:
        res["kernels"] = sorted(
            (dict(kernel=name, instructions=vals[0],
                  caches=_cache_counts(vals[1:]) if caches else {})
             for name, vals in by_name.items()), key=lambda r: -r["instructions"])
    return res


def _cache_counts(vals, instructions=None) -> dict:
    """``{model: {'l1i', 'l1d', 'l2'[, 'cycles']}}`` from the plugin's miss columns."""
    out = {}
    for i, name in enumerate(CACHE_MODELS):
        c = dict(zip(("l1i", "l1d", "l2"), vals[3 * i:3 * i + 3]))
        if instructions is not None:
            c["cycles"] = cycle_estimate(name, instructions, c)
        out[name] = c
    return out


def cycle_estimate(model: str, instructions: float, misses: dict) -> float:
    """The crude cycle estimate, :data:`CYCLE_FORMULA` with the model's assumed constants
    (:data:`CACHE_MODELS`): every miss stalls for its full latency and nothing else does, so
    read it as an order of magnitude, not a timing."""
    m = CACHE_MODELS[model]
    return (instructions / m["ipc"] + (misses["l1i"] + misses["l1d"]) * m["l2_latency"]
            + misses["l2"] * m["memory_latency"])


def kernel_regions(so: str, out: str) -> list[str]:
    """Write the ``.so``'s code as ``start end bucket`` lines (hex offsets; one per function
    symbol, up to the next one: TVM's parallel bodies have no symbol of their own and follow
    their kernel's) and return the bucket names: index 0 ``runtime`` (outside the module), then
    one per kernel (``__tvm_ffi_X`` and ``X_compute_`` are kernel ``X``) and ``module (other)``."""
    funcs = sorted(function_symbols(so))
    names = ["runtime"]
    index: dict = {}
    with open(out, "w") as f:
        for i, (start, size, name) in enumerate(funcs):
            end = funcs[i + 1][0] if i + 1 < len(funcs) else start + size
            kernel = _kernel_name(name)
            if kernel not in index:
                index[kernel] = len(names)
                names.append(kernel)
            f.write(f"{start:x} {end:x} {index[kernel]}\n")
    return names


def _kernel_name(symbol: str) -> str:
    if symbol.startswith("__tvm_ffi_") and not symbol.startswith("__tvm_ffi__"):
        return symbol[len("__tvm_ffi_"):]
    if symbol.endswith("_compute_"):
        return symbol[:-len("_compute_")]
    return "module (other)"


def function_symbols(path: str) -> list[tuple[int, int, str]]:
    """``(address, size, name)`` of every defined function symbol of an ELF64 file."""
    from f8tvm.runtime import elf_sections  # lazy: keeps the tool's import light

    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError(f"{path} is not an ELF64 file")
    num, sections = elf_sections(elf)
    for kind, off, size, link, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        str_off = sections[link][1]
        syms = []
        for at in range(off, off + size, entsize or 24):
            name_at, info, shndx = num(at, 4), elf[at + 4], num(at + 6, 2)
            value, sym_size = num(at + 8, 8), num(at + 16, 8)
            if info & 0xF == 2 and shndx != 0 and value:  # STT_FUNC, defined
                end = elf.index(b"\0", str_off + name_at)
                syms.append((value, sym_size, elf[str_off + name_at:end].decode()))
        return syms
    raise ValueError(f"{path} has no symbol table (stripped?): kernels cannot be told apart")


def _ort_root(paths: CounterPaths, board: EmulatedBoard, cpu: str) -> str:
    """The board's sysroot as symlinks, plus a /proc/cpuinfo for ``cpu`` (module doc)."""
    if cpu not in CPUINFO:
        raise ValueError(f"no /proc/cpuinfo for -cpu {cpu}; known: {', '.join(CPUINFO)}")
    root = paths.ort_root(cpu)
    os.makedirs(os.path.join(root, "proc"), exist_ok=True)
    for entry in os.listdir(board.paths.sysroot):
        link = os.path.join(root, entry)
        if not os.path.lexists(link):
            os.symlink(os.path.join(board.paths.sysroot, entry), link)
    part, features = CPUINFO[cpu]
    with open(os.path.join(root, "proc", "cpuinfo"), "w") as f:
        f.write(f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\n"
                f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                f"CPU part\t: {part}\nCPU revision\t: 1\n\n")
    return root


# ----------------------------------------------------------------------------- the table
def table(models, input_size=224, runs=3, out_dir=None, progress=print) -> list[dict]:
    """Rows of the side-by-side count (module doc): per model, each f8tvm build and ORT's u8s8
    and s8s8 on the same CPU."""
    import numpy as np  # lazy: the tool's other commands need neither numpy nor torch
    import torch  # lazy: as above

    import f8tvm  # lazy: as above
    from f8tvm.models import get_model  # lazy: as above

    from . import bench_peers  # lazy: its peers ([bench] extra) load only here

    board = EmulatedBoard()
    rows = []
    with tempfile.TemporaryDirectory(prefix="f8tvm-counts-") as tmp:
        out_dir = out_dir or tmp
        for name in models:
            torch.manual_seed(0)
            model, spec = get_model(name, randomize_bn=True)
            model.eval()
            shape = (1, 3, input_size, input_size)
            calib = [np.random.default_rng(i).standard_normal(shape).astype("float32")
                     for i in range(4)]
            example = torch.from_numpy(calib[0])
            progress(f"{name}: f8tvm builds ...")
            x86 = f8tvm.compile(model, example, target="x86", calib=calib)
            builds = {}
            for target, _ in PAIRS:
                cm = f8tvm.compile(model, example, target=target, plan=x86.plan)
                builds[target] = cm.export(os.path.join(out_dir, f"{name}-{target}.so"))[0]
            progress(f"{name}: ONNX Runtime quantization (u8s8, s8s8) ...")
            fp32 = os.path.join(out_dir, f"{name}.onnx")
            bench_peers.export_onnx(model, calib[0], fp32)
            onnx_models = {}
            for kind, acts in (("u8s8", "uint8"), ("s8s8", "int8")):
                onnx_models[kind] = bench_peers.quantize_onnx(
                    fp32, os.path.join(out_dir, f"{name}-{kind}.onnx"), calib, "qdq",
                    activations=acts)
            for target, cpu in PAIRS:
                progress(f"{name}: counting on -cpu {cpu} ...")
                res = count(builds[target], runs, cpu, board, kernels=True)
                rows.append(dict(model=name, cpu=cpu, system=f"f8tvm {target}",
                                 instructions=res["per_inference"], caches=res["caches"],
                                 kernels=res["kernels"],
                                 check="int8 only (the build's audit)"))
                for kind, path in onnx_models.items():
                    optimized = os.path.join(out_dir, f"{name}-{kind}-{cpu}.opt.onnx")
                    res = count(path, runs, cpu, board, optimized=optimized)
                    fast = bench_peers.check_ort_graph(optimized)
                    rows.append(dict(model=name, cpu=cpu, system=f"ORT int8 {kind}",
                                     instructions=res["per_inference"], caches=res["caches"],
                                     check=("ok: " if fast.ok else "FAILED: ") + fast.detail))
    return with_ratios(rows)


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's instructions over the fewest any ONNX Runtime row of its model and CPU
    executes (``vs_best_ort``), and the same for each cache model's L2 misses and estimated
    cycles (``vs_best_ort_l2``, ``vs_best_ort_cycles``: ``{model: ratio}``)."""
    for row in rows:
        peers = [r for r in rows if r["model"] == row["model"] and r["cpu"] == row["cpu"]
                 and r["system"].startswith("ORT")]
        row["vs_best_ort"] = row["instructions"] / min(r["instructions"] for r in peers)
        if "caches" in row:
            for key, field in (("vs_best_ort_l2", "l2"), ("vs_best_ort_cycles", "cycles")):
                row[key] = {m: row["caches"][m][field] / max(1.0, min(
                    r["caches"][m][field] for r in peers)) for m in row["caches"]}
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Bars per model and CPU: instructions per inference, and each cache model's L2 misses
    (the bench extra's matplotlib)."""
    import matplotlib  # lazy: the bench extra, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    groups = list(dict.fromkeys((r["model"], r["cpu"]) for r in rows))
    systems = ["f8tvm", "ORT int8 u8s8", "ORT int8 s8s8"]
    panels = [("M instructions / inference", lambda r: r["instructions"] / 1e6)]
    panels += [(f"M L2 misses ({m}-class)", lambda r, m=m: r["caches"][m]["l2"] / 1e6)
               for m in CACHE_MODELS if all("caches" in r for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (label, value) in zip(axes[:, 0], panels):
        for k, system in enumerate(systems):
            vals = [next(value(r) for r in rows if (r["model"], r["cpu"]) == g
                         and r["system"].startswith(system)) for g in groups]
            ax.bar([i + (k - 1) * 0.27 for i in range(len(groups))], vals, 0.27, label=system)
        ax.set_xticks(range(len(groups)), [f"{m}\n-cpu {c}" for m, c in groups], fontsize=8)
        ax.set_ylabel(label, fontsize=8)
    axes[0, 0].set_title("One inference on the emulated aarch64 board (f8tvm: arm on "
                         "cortex-a72, arm-dotprod on max)", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(rows: list[dict]) -> None:
    models = list(CACHE_MODELS) if all("caches" in r for r in rows) else []
    head = "".join(f"{'L1D/L2 miss ' + m:>22}{'Mcycles ' + m:>14}" for m in models)
    print(f"\n{'model':<20}{'-cpu':<12}{'system':<20}{'M instr':>9}{'vs ORT':>8}{head}  check")
    for r in rows:
        cells = "".join(f"{r['caches'][m]['l1d'] / 1e6:>15.2f}M/{r['caches'][m]['l2'] / 1e6:.2f}M"
                        f"{r['caches'][m]['cycles'] / 1e6:>14.1f}" for m in models)
        print(f"{r['model']:<20}{r['cpu']:<12}{r['system']:<20}{r['instructions'] / 1e6:>9.1f}"
              f"{r['vs_best_ort']:>7.2f}x{cells}  {r['check']}")
    for m in models:
        c = CACHE_MODELS[m]
        print(f"{m}: {c['label']}; cycles = instructions / {c['ipc']} + L1 misses x "
              f"{c['l2_latency']} + L2 misses x {c['memory_latency']}")
    for r in rows:
        if r.get("kernels"):
            print(f"\n{r['model']} {r['system']}: the kernels with the most instructions "
                  "(M instructions, 8-bit MACs, instructions per 16 MACs)")
            for k in r["kernels"][:5]:
                print(f"  {k['instructions'] / 1e6:8.2f} M {_per_16(k)}  {k['kernel'][:80]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm_count", description=__doc__.split(
        "\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="download and build the counting emulator")
    c = sub.add_parser("count", help="instructions per inference of an aarch64 module")
    c.add_argument("module")
    c.add_argument("--runs", type=int, default=3)
    c.add_argument("--cpu", default="max", help="QEMU -cpu (max: with dotprod; cortex-a72: "
                   "without)")
    c.add_argument("--kernels", action="store_true", help="split the counts by kernel (an "
                   "f8tvm .so)")
    t = sub.add_parser("table", help="f8tvm beside ONNX Runtime, per model (needs the bench "
                       "extra)")
    t.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_lite0")
    t.add_argument("--input-size", type=int, default=224)
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--output", default="arm-counts.json")
    a = ap.parse_args(argv)
    if a.cmd == "setup":
        setup()
        return 0
    if a.cmd == "table":
        rows = table(a.models.split(","), a.input_size, a.runs)
        print_table(rows)
        with open(a.output, "w") as f:
            json.dump(dict(input_size=a.input_size, runs=a.runs, cache_models=CACHE_MODELS,
                           cycle_formula=CYCLE_FORMULA, rows=rows), f, indent=1)
        plot(rows, os.path.splitext(a.output)[0] + ".png")
        print(f"wrote {a.output} and its .png")
        return 0
    res = count(a.module, a.runs, a.cpu, kernels=a.kernels)
    print(f"{os.path.basename(a.module)} (-cpu {a.cpu}): {res['per_inference'] / 1e6:.2f} M "
          f"instructions per inference ({a.runs} runs)")
    for m, c in res["caches"].items():
        print(f"  {CACHE_MODELS[m]['label']}: L1I {c['l1i'] / 1e3:.1f} K, L1D "
              f"{c['l1d'] / 1e3:.1f} K, L2 {c['l2'] / 1e3:.1f} K misses; ~{c['cycles'] / 1e6:.1f} "
              f"M cycles")
    for k in res.get("kernels", []):
        c = k["caches"]
        print(f"  {k['instructions'] / 1e6:9.3f} M {_per_16(k)}  " + "  ".join(
            f"{m} L1D {c[m]['l1d'] / 1e3:7.1f} K L2 {c[m]['l2'] / 1e3:7.1f} K" for m in c)
            + f"  {k['kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
