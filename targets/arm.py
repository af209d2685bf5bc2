"""ARM presets: aarch64 with NEON, aarch64 with the Armv8.2 dot product, and 32-bit armv7.

ARM's 8-bit dot products multiply s8 x s8 (``sdot``) or u8 x u8 (``udot``), never the u8 x s8
that F8Net's unsigned activations times signed weights would need, so every ARM preset asks for
int8 activations (``activations``); the compiler offsets unsigned ones by -128 exactly.
``num-cores`` is required by MetaSchedule; 4 matches the common boards (Raspberry Pi 4/5, RK3588
little cluster).
"""

from .base import DotSpec, TargetPreset

AARCH64_CXX = "aarch64-linux-gnu-g++"
ARMV7_CXX = "arm-linux-gnueabihf-g++"

PRESETS = [
    TargetPreset(
        name="arm",
        # mcpu: LLVM's Cortex-A72 scheduling model (its generic one keeps fewer accumulators in
        # registers: mobilenet_v2 106.7 -> 93.2 M instructions an inference); mattr: still
        # Armv8.0-A + NEON only, without the optional crypto and CRC extensions
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                    "mattr": ["+neon", "-aes", "-sha2", "-crc"], "num-cores": 4},
        cross_compiler=AARCH64_CXX,
        compiler_package="g++-aarch64-linux-gnu",
        # 8-bit widening multiply (smull .8b: s8 x s8 -> s16) + pairwise adds into int32
        dot=DotSpec("smull", 8, 4, pair_taps=True, column_pairs=True, weight_min=-127,
                    block_pairs=True),
        isa="NEON",
        activations="int8",
        parity_test=True,
        stack_buffer_bytes=8 * 1024,  # as arm-dotprod's
        description="aarch64 (Armv8-A) with NEON: Cortex-A53/A72 (Raspberry Pi 3/4)",
    ),
    TargetPreset(
        name="arm-dotprod",
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                    "mattr": ["+neon", "+dotprod"], "num-cores": 4},
        cross_compiler=AARCH64_CXX,
        compiler_package="g++-aarch64-linux-gnu",
        # depthwise convs take window columns four at a time, one channel's taps per sdot
        # lane; every kernel is exact for any int8 weight
        dot=DotSpec("sdot", 8, 4, pair_taps=True, tap_group=4, tap_parity=True,
                    tap_rewrite_wide=16, column_pairs=True, bias_rows=True),
        isa="NEON dotprod",
        activations="int8",
        parity_test=True,
        # the depthwise tasks' padded planes up to 8 KiB on the stack: efficientnet_lite0
        # 45.81 -> 45.58 M instructions (the workspace calls 0.53 -> 0.34 M); at 16 or 32 KiB
        # the 28-px planes' kernels lose more to register allocation than the calls cost
        stack_buffer_bytes=8 * 1024,
        description="aarch64 Armv8.2-A+ with the dot product: Cortex-A55/A76 (Raspberry Pi 5)",
    ),
    TargetPreset(
        name="armv7",
        tvm_target={"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf",
                    "mattr": ["+neon", "+vfp4"], "mfloat-abi": "hard", "num-cores": 4},
        cross_compiler=ARMV7_CXX,
        compiler_package="g++-arm-linux-gnueabihf",
        # TVM 0.27's NEON int8 intrinsic is aarch64-only (it aborts LLVM on armv7), so armv7
        # kernels stay generic NCHW loops whose products are 8-bit (LLVM may use vmull.s8):
        # no dot instruction, no channel-blocked layout.
        dot=None,
        isa="NEON (generic loops)",
        activations="int8",
        description="32-bit Armv7-A, NEON, hard-float: Cortex-A7/A9/A15 (Raspberry Pi 2)",
    ),
]
