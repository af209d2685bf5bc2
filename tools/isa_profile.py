"""Which int8 dot-product instructions a running system executes: sample this process with
``perf record`` (the ``cpu-clock`` software event, so it works in VMs without hardware counters)
while the system runs, then disassemble the machine code at the sampled addresses.

Used by the bench to say which instruction set a peer whose library reports nothing (ONNX
Runtime's MLAS) used: AMX tiles, AVX-512 VNNI, AVX-VNNI, ``vpmaddubsw`` or float FMAs.  Only
code that lives in a file on disk can be disassembled; just-in-time code (oneDNN's, TVM's) shows
as ``jit``.  Needs Linux's ``perf`` and binutils' ``objdump``; without them :func:`profile`
returns None and the bench says the instruction set was not observed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter

# instruction classes, most specific first; a sample is classed by the instructions at and just
# after its address (a hot loop's dot instruction is within a few instructions of any sample)
AMX = "AMX"
AVX512_VNNI = "AVX-512 VNNI"
AVX_VNNI = "AVX-VNNI"
VNNI_YMM = "AVX-512 VNNI (ymm)"
MADDUBSW = "vpmaddubsw (u8 x s8, 16-bit sums)"
MADDWD = "vpmaddwd (16-bit)"
FLOAT = "float FMA"
JIT = "jit"  # code not in any file (oneDNN's or TVM's generated code): not disassembled
OTHER = "other"
DOT_CLASSES = (AMX, AVX512_VNNI, AVX_VNNI, VNNI_YMM, MADDUBSW, MADDWD, FLOAT)

_WINDOW = 40  # bytes disassembled from each sampled address


def classify(asm: str) -> str:
    """The class of a stretch of AT&T-syntax disassembly (objdump's)."""
    text = asm.lower()
    if re.search(r"\btdpb[su]{2}d\b", text):
        return AMX
    for line in text.splitlines():
        if re.search(r"\bvpdpbusds?\b", line):
            if "%zmm" in line:
                return AVX512_VNNI
            return AVX_VNNI if "{vex}" in line else VNNI_YMM
    if "vpmaddubsw" in text:
        return MADDUBSW
    if "vpmaddwd" in text:
        return MADDWD
    if re.search(r"\bvfn?m(add|sub)\w*p[sd]\b", text):
        return FLOAT
    return OTHER


def available() -> bool:
    return shutil.which("perf") is not None and shutil.which("objdump") is not None


def _hot_addresses(data: str) -> tuple[Counter, int]:
    """``{(dso, address or symbol): samples}`` of a perf.data file and the total sample count."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--sort", "dso,sym", "--no-demangle",
         "--percent-limit", "0", "-n", "-v"], capture_output=True, text=True).stdout
    hot, total = Counter(), 0
    # e.g. "  3.83%  412  /path/lib.so  0x193c9a2  B [.] 0x000000000193c9a2"
    row = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(\S+)\s+(0x[0-9a-f]+)\s+\S+\s+\[(.)\]\s+(.*)$")
    for line in out.splitlines():
        m = row.match(line)
        if not m:
            continue
        n, dso, addr, kind, sym = int(m[1]), m[2], m[3], m[4], m[5].strip()
        total += n
        if kind == "k":
            hot[("[kernel]", "")] += n
        elif not os.path.isfile(dso):
            hot[(JIT, "")] += n  # [anon], [unknown], /tmp/perf-N.map, deleted files
        else:
            # a library without symbols: each sampled address; with symbols: the function (the
            # whole function is then classed by its dot instructions)
            hot[(dso, addr if sym.startswith("0x") else sym)] += n
    return hot, total


def _classify_dso(dso: str, places: Counter) -> Counter:
    """``{class: samples}`` of the sampled places (addresses or function names) in one file.
    Nearby addresses are disassembled in one objdump run (each run reads the whole file)."""
    out = Counter()
    addrs = sorted(int(w, 16) for w in places if w.startswith("0x"))
    clusters = []
    for a in addrs:
        if clusters and a - clusters[-1][-1] <= 4096:
            clusters[-1].append(a)
        else:
            clusters.append([a])
    for cl in clusters:
        asm = _objdump(dso, f"--start-address={cl[0]:#x}", f"--stop-address={cl[-1] + _WINDOW:#x}")
        lines = []  # (address, text) of each instruction
        for line in asm.splitlines():
            m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", line)
            if m:
                lines.append((int(m[1], 16), m[2]))
        for a in cl:
            window = "\n".join(t for at, t in lines if a <= at < a + _WINDOW)
            out[classify(window)] += places[f"{a:#x}"]
    for where, n in places.items():
        if not where.startswith("0x"):  # a function of a library with symbols: all of it
            out[classify(_objdump(dso, f"--disassemble={where}"))] += n
    return out


def _objdump(dso: str, *args: str) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", *args, dso],
                          capture_output=True, text=True).stdout


def profile(run, seconds: float = 1.5) -> dict | None:
    """Call ``run()`` repeatedly for ``seconds`` under ``perf record`` of this process; returns
    ``{"samples": n, "mix": {class: fraction of samples}}`` (None if perf cannot sample here)."""
    if not available():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000",
                                 "-p", str(os.getpid()), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches to every thread of the process
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run()
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(timeout=30)
        except subprocess.TimeoutExpired:
            perf.kill()
            return None
        if perf.returncode not in (0, -signal.SIGINT) or not os.path.exists(data):
            return None
        hot, total = _hot_addresses(data)
        if not total:
            return None
        mix, by_dso = Counter(), {}
        for (dso, where), n in hot.items():
            if dso in (JIT, "[kernel]"):
                mix[JIT if dso == JIT else OTHER] += n
            else:
                by_dso.setdefault(dso, Counter())[where] += n
        for dso, places in by_dso.items():
            mix.update(_classify_dso(dso, places))
    return dict(samples=total, mix={k: v / total for k, v in mix.most_common()})


def dominant(result: dict | None) -> str | None:
    """The int8 (or float) dot class with the most samples, or None."""
    if not result:
        return None
    dots = {k: v for k, v in result["mix"].items() if k in DOT_CLASSES}
    return max(dots, key=dots.get) if dots else None
