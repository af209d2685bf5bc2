"""x86-64 presets: an AVX2 baseline (``vpmaddwd`` on 8-bit values widened to 16 bits),
AVX-512 with VNNI (``vpdpbusd``, u8 x s8) and AVX2 with AVX-VNNI (the same ``vpdpbusd`` on ymm
registers)."""

from .base import TargetPreset

PRESETS = [
    TargetPreset(
        name="x86",
        tvm_target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2},
        cross_compiler=None,
        dot_instruction="vpmaddwd",
        isa="AVX2",
        description="x86-64 with AVX2 (Haswell and newer)",
        cpu_flags=("avx2", "fma", "bmi2"),
    ),
    TargetPreset(
        name="x86-avx512",
        tvm_target={"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2},
        cross_compiler=None,
        dot_instruction="vpdpbusd",
        isa="AVX-512 VNNI",
        description="x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4/5)",
        cpu_flags=("avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                   "avx512_vnni"),
    ),
    TargetPreset(
        name="x86-avxvnni",
        tvm_target={"kind": "llvm", "mcpu": "alderlake", "num-cores": 2},
        cross_compiler=None,
        dot_instruction="vpdpbusd.ymm",
        isa="AVX-VNNI",
        description="x86-64 with AVX2 and AVX-VNNI, no AVX-512 (Alder Lake and later client "
                    "cores)",
        cpu_flags=("avx2", "fma", "bmi2", "avx_vnni"),
    ),
]
