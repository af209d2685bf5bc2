"""x86-64 presets: an AVX2 baseline (``vpmaddwd`` on 8-bit values widened to 16 bits),
AVX-512 with VNNI (``vpdpbusd``, u8 x s8), AMX-INT8 (``tdpbusd`` tiles, u8 x s8, beside AVX-512
VNNI) and AVX2 with AVX-VNNI (the same ``vpdpbusd`` on ymm registers)."""

from .base import DotSpec, TargetPreset

# what both AVX-512 presets need of the CPU, and their depthwise form: a channel's 4 window
# columns per vpdpbusd lane (tap quads), the padded plane rewritten once as its column quads
_AVX512_FLAGS = ("avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                 "avx512_vnni")
_TAP_QUADS = dict(pair_taps=True, tap_group=4, tap_rewrite=True)
# kernel scratch buffers (a conv's accumulator tile: up to 1.5 KiB) on the stack: the weight
# prefetch needs them there (``schedules.DotIntrin.prefetch_weights``); the same 8 KiB as ARM's
_STACK = 8 * 1024

PRESETS = [
    TargetPreset(
        name="x86",
        tvm_target={"kind": "llvm", "mcpu": "haswell", "num-cores": 2},
        cross_compiler=None,
        # 16-bit multiplies of 8-bit values: both activation types; depthwise convs take two
        # window columns per dot, 1x1 weights and conv inputs are stored widened
        dot=DotSpec("vpmaddwd", 8, 2, pair_taps=True, wide_weights=True, wide_data=True),
        isa="AVX2",
        activations="any",
        description="x86-64 with AVX2 (Haswell and newer)",
        cpu_flags=("avx2", "fma", "bmi2"),
    ),
    TargetPreset(
        name="x86-avx512",
        tvm_target={"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2},
        cross_compiler=None,
        dot=DotSpec("vpdpbusd", 16, 4, pixel_stream=True, **_TAP_QUADS),
        isa="AVX-512 VNNI",
        description="x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4/5)",
        cpu_flags=_AVX512_FLAGS,
        stack_buffer_bytes=_STACK,
    ),
    TargetPreset(
        name="x86-amx",
        # without AVX-512 VBMI: LLVM 22 lowers our byte transposes (the depthwise tap quads)
        # to 11 unpacks and inserts where VBMI is on, to vpermd + vpshufb where it is off
        # (measured 1.5x faster: a 56x56x144 depthwise conv 182 -> 117 us)
        tvm_target={"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-avx512vbmi"],
                    "num-cores": 2},
        cross_compiler=None,
        # AVX-512 VNNI's layout: convs (the classifier too) run on AMX tiles, depthwise convs
        # on vpdpbusd
        dot=DotSpec("tdpbusd", 16, 4, **_TAP_QUADS),
        isa="AMX-INT8",
        description="x86-64 with AMX-INT8 and AVX-512 VNNI (Sapphire Rapids and newer Xeons)",
        # AVX-VNNI too: LLVM picks its shorter VEX forms for 256-bit dot products where the CPU
        # model has them (every AMX CPU does)
        cpu_flags=(*_AVX512_FLAGS, "avx_vnni", "amx_tile", "amx_int8"),
    ),
    TargetPreset(
        name="x86-avxvnni",
        tvm_target={"kind": "llvm", "mcpu": "alderlake", "num-cores": 2},
        cross_compiler=None,
        # depthwise convs in AVX2's tap pairs (vpmaddwd on 8-bit pairs)
        dot=DotSpec("vpdpbusd.ymm", 8, 4, pair_taps=True, pixel_stream=True),
        isa="AVX-VNNI",
        description="x86-64 with AVX2 and AVX-VNNI, no AVX-512 (Alder Lake and later client "
                    "cores)",
        cpu_flags=("avx2", "fma", "bmi2", "avx_vnni"),
        stack_buffer_bytes=_STACK,
    ),
]
