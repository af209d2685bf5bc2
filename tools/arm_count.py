"""Instructions per inference of an ARM module, counted on the emulated aarch64 board, side by
side with ONNX Runtime's aarch64 build.

    python -m tools.arm_count setup
    python -m tools.arm_count count out/resnet18-arm-dotprod.so --runs 3 --cpu max
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
adds up the instructions of every executed block and writes the running total when the guest
makes a marker syscall, so start-up, model load and a warm-up inference fall outside the count.
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
        return os.path.join(self.root, "libcount.so")

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
        return paths
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
    header = glob.glob(os.path.join(src, "*", "include", "qemu", "qemu-plugin.h"))[0]
    _run(["gcc", "-O2", "-shared", "-fPIC", "-I", os.path.dirname(header), "-o", paths.plugin,
          PLUGIN_SOURCE])
    _say(f"counter: ONNX Runtime's aarch64 wheel ({ORT_WHEELS[0]}) ...")
    _run([sys.executable, "-m", "pip", "install", "-q", "--target", paths.ort_site,
          *board_wheel_options(), *ORT_WHEELS])
    open(paths.done, "w").close()
    _say(f"counter ready in {paths.root}")
    return paths


def count(module: str, runs: int = 3, cpu: str = "max", board: EmulatedBoard | None = None,
          paths: CounterPaths | None = None, optimized: str | None = None) -> dict:
    """Instructions of one inference of ``module`` (an aarch64 ``.so`` beside its ``.json``, or
    an ``.onnx`` model for ONNX Runtime, which writes the graph it ran to ``optimized``):
    ``{'per_inference', 'one', 'many', 'runs', 'cpu'}``: ``one`` and ``many`` are the counted
    segments of 1 and ``runs`` inferences (each with the loop's and the markers' own
    instructions), ``per_inference = (many - one) / (runs - 1)``."""
    if runs < 2:
        raise ValueError("runs must be >= 2 (one inference is the difference of two segments)")
    board = board or EmulatedBoard()
    if not board.is_set_up:
        board.setup()
    paths = setup(paths)
    module = os.path.abspath(module)
    onnx = module.endswith(".onnx")
    root = _ort_root(paths, board, cpu) if onnx else board.paths.sysroot
    with tempfile.TemporaryDirectory(prefix="f8tvm-count-") as tmp:
        out = os.path.join(tmp, "marks.txt")
        cmd = [paths.qemu, "-U", "LD_LIBRARY_PATH", "-L", root, "-cpu", cpu,
               "-plugin", f"{paths.plugin},out={out}", board.paths.python,
               BOARD_SCRIPT, module, str(runs)]
        if optimized:
            cmd.append(os.path.abspath(optimized))
        env = dict(board.env(), LD_LIBRARY_PATH=paths.libs)
        if onnx:
            env["PYTHONPATH"] = os.pathsep.join([paths.ort_site, board.paths.site])
        r = subprocess.run(cmd, env=env, cwd=board.paths.app, capture_output=True, text=True,
                           timeout=3600, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"counting {module} failed ({r.returncode}):\n"
                               f"{(r.stdout + r.stderr)[-3000:]}")
        with open(out) as f:
            marks = dict(tuple(int(v) for v in line.split()) for line in f if line.strip())
    one, many = marks[2] - marks[1], marks[3] - marks[2]
    return dict(per_inference=(many - one) / (runs - 1), one=one, many=many, runs=runs, cpu=cpu)


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
                res = count(builds[target], runs, cpu, board)
                rows.append(dict(model=name, cpu=cpu, system=f"f8tvm {target}",
                                 instructions=res["per_inference"], check="int8 only "
                                 "(the build's audit)"))
                for kind, path in onnx_models.items():
                    optimized = os.path.join(out_dir, f"{name}-{kind}-{cpu}.opt.onnx")
                    res = count(path, runs, cpu, board, optimized=optimized)
                    fast = bench_peers.check_ort_graph(optimized)
                    rows.append(dict(model=name, cpu=cpu, system=f"ORT int8 {kind}",
                                     instructions=res["per_inference"],
                                     check=("ok: " if fast.ok else "FAILED: ") + fast.detail))
    return with_ratios(rows)


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's instructions over the fewest any ONNX Runtime row of its model and CPU
    executes (``vs_best_ort``)."""
    for row in rows:
        best = min(r["instructions"] for r in rows if r["model"] == row["model"]
                   and r["cpu"] == row["cpu"] and r["system"].startswith("ORT"))
        row["vs_best_ort"] = row["instructions"] / best
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Bars of instructions per inference, per model and CPU (the bench extra's matplotlib)."""
    import matplotlib  # lazy: the bench extra, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    groups = list(dict.fromkeys((r["model"], r["cpu"]) for r in rows))
    systems = ["f8tvm", "ORT int8 u8s8", "ORT int8 s8s8"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, system in enumerate(systems):
        vals = [next(r["instructions"] / 1e6 for r in rows if (r["model"], r["cpu"]) == g
                     and r["system"].startswith(system)) for g in groups]
        ax.bar([i + (k - 1) * 0.27 for i in range(len(groups))], vals, 0.27, label=system)
    ax.set_xticks(range(len(groups)), [f"{m}\n-cpu {c}" for m, c in groups], fontsize=8)
    ax.set_ylabel("M instructions / inference")
    ax.set_title("One inference on the emulated aarch64 board (f8tvm: arm on cortex-a72, "
                 "arm-dotprod on max)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<20}{'-cpu':<12}{'system':<22}{'M instructions':>16}"
          f"{'vs best ORT':>13}  check")
    for r in rows:
        print(f"{r['model']:<20}{r['cpu']:<12}{r['system']:<22}"
              f"{r['instructions'] / 1e6:>16.1f}{r['vs_best_ort']:>12.2f}x  {r['check']}")


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
            json.dump(dict(input_size=a.input_size, runs=a.runs, rows=rows), f, indent=1)
        plot(rows, os.path.splitext(a.output)[0] + ".png")
        print(f"wrote {a.output} and its .png")
        return 0
    res = count(a.module, a.runs, a.cpu)
    print(f"{os.path.basename(a.module)} (-cpu {a.cpu}): {res['per_inference'] / 1e6:.2f} M "
          f"instructions per inference ({a.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
