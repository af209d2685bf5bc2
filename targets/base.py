"""The preset record shared by all target families."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetPreset:
    name: str
    tvm_target: dict  # TVM 0.27 JSON-dict target
    cross_compiler: str | None  # executable name, None = host compiler
    layout: str  # packed activation layout the fast kernels use
    dot_instruction: str | None  # e.g. 'vpdpbusd', 'sdot'
    description: str = ""
    compiler_package: str | None = None  # Debian package that provides cross_compiler

    def tvm(self):
        from f8tvm import _tvm

        return _tvm.make_target(self.tvm_target)
