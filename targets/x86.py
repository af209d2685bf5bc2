"""x86-64 presets: an AVX2 baseline (``vpmaddwd`` on 8-bit values widened to 16 bits) and
AVX-512 with VNNI (``vpdpbusd``, u8 x s8)."""

from .base import TargetPreset

PRESETS = [
    TargetPreset(
        name="x86",
        tvm_target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2},
        cross_compiler=None,
        layout="NCHW8c",
        dot_instruction="vpmaddwd",
        description="x86-64 with AVX2 (Haswell and newer)",
    ),
    TargetPreset(
        name="x86-avx512",
        tvm_target={"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2},
        cross_compiler=None,
        layout="NCHW16c",
        dot_instruction="vpdpbusd",
        description="x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4/5)",
    ),
]
