"""The x86 (AVX2 ``vpmaddwd``) conv kernel, ``conv2d_nchwc`` with our default schedule, alone:
bit-exact against an int64 NumPy conv for 8-bit and widened (int16) activations and weights,
multiplies with ``vpmaddwd`` only, broadcasts widened activation pairs straight from memory, and
the audit counts its MACs; the epilogue's clamp-and-cast narrows 4 pixels at a time where it can
(AVX-512 and AMX tiles: 4 or 2), checked on every x86 target."""

import re

import numpy as np
import pytest
from conftest import kernel_source
from kernel_ref import block, conv, unblock

from f8tvm.core._tvm import te, tvm
from f8tvm.passes.audit_multiplies import audit_module
from f8tvm.passes.pack_channel_blocks import pack_conv_weight
from f8tvm.passes.packed_kernels import conv2d_nchwc
from f8tvm.schedules import default_schedule, find_dot
from f8tvm.targets import TARGETS, get_target
from f8tvm.targets.cpu import read_cpuinfo

LANES, DEPTH = 8, 2


CASES = [  # (C_in, C_out, H, W, K, stride, pad, activations, weights, widened activations)
    (16, 24, 7, 7, 1, 1, (0, 0, 0, 0), "uint8", "int8", True),
    (16, 16, 9, 9, 3, 2, (1, 1, 1, 1), "int8", "int8", True),
    (16, 8, 6, 6, 1, 1, (0, 0, 0, 0), "uint8", "int16", True),  # both operands from memory
    (8, 16, 10, 10, 3, 1, (1, 1, 1, 1), "int8", "int16", True),
    (8, 16, 10, 10, 3, 1, (1, 1, 1, 1), "uint8", "int8", False),  # 8-bit pairs, widened in
]                                                                  # registers


@pytest.mark.parametrize("cin,cout,h,w,k,stride,pad,a_dtype,w_dtype,wide_data", CASES)
def test_conv_kernel_is_exact_and_uses_vpmaddwd(cin, cout, h, w, k, stride, pad, a_dtype,
                                                w_dtype, wide_data):
    rng = np.random.default_rng(cin + cout + h + k)
    lo, hi = (0, 255) if a_dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, cin, h, w)).astype(a_dtype)
    x[0, :, 0, :] = hi  # extremes: the largest products and pair sums a lane can take
    wt = rng.integers(-128, 128, (cout, cin, k, k)).astype("int8")
    wt[0] = -128
    packed = pack_conv_weight(wt, LANES, LANES, DEPTH).astype(w_dtype)

    data = te.placeholder(block(x).shape, a_dtype, name="data")
    kernel = te.placeholder(packed.shape, w_dtype, name="kernel")
    out = conv2d_nchwc(data, kernel, (stride, stride), pad, (1, 1), 0, wide_data)
    mod = tvm.IRModule({"main": default_schedule(
        te.create_prim_func([data, kernel, out]), find_dot(TARGETS["x86"].dot)
    ).with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=get_target("x86").tvm())
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], "int32"), dev)
    lib["main"](tvm.runtime.tensor(block(x), dev), tvm.runtime.tensor(packed, dev), y)
    assert np.array_equal(unblock(y.numpy()), conv(x, wt, stride, pad))

    asm = kernel_source(lib)
    body = asm.split("main_compute_:")[1]  # the kernel's parallel bodies
    assert "vpmaddwd" in body
    for wide in ("vpmulld", "vpmullw", "imul"):  # no other vector/scalar multiply of data
        assert f"\t{wide}\t" not in body, wide
    # a widened activation pair is one 32-bit word broadcast from memory
    assert bool(re.search(r"vpbroadcastd\t-?\w*\(%", body)) == wide_data

    report = audit_module(mod)  # the kernel's own 8-bit parameters (no constants bound)
    if w_dtype == "int16":  # widened weights are 8-bit by value only: a constant the audit
        assert report.wide_multiplies > 0  # cannot see here counts as wide
    else:
        oh, ow = y.shape[2:4]
        assert report.wide_multiplies == 0
        assert report.macs_8bit == cout * cin * oh * ow * k * k


# (target, tile width, the narrowing's pixels: None where it narrows vector by vector)
NARROW_TILES = [("x86", 8, 4), ("x86", 7, None),
                ("x86-avx512", 8, 4), ("x86-avx512", 6, 2), ("x86-avx512", 7, None),
                ("x86-amx", 8, 4), ("x86-amx", 6, 2), ("x86-amx", 7, None)]


def _cpu_has(flags) -> bool:
    info = read_cpuinfo()
    return info is not None and set(flags) <= info.flags


@pytest.mark.parametrize("dtype,lo,hi", [("uint8", 0, 255), ("int8", -128, 127),
                                         ("int8", -127, 127)])
@pytest.mark.parametrize("target,width,narrow", NARROW_TILES)
def test_narrowing_epilogue_is_exact(dtype, lo, hi, target, width, narrow):
    # conv -> shift -> clamp -> cast: with a tile 4 (AVX-512: or 2) pixels wide the int32
    # result is narrowed that many pixels at a time (packs + vpermd), each group computed right
    # before its narrowing; width 7 keeps the vector-by-vector path.  x86-amx: the conv on AMX
    # tiles (uint8 input of 16 channels), its epilogue from the stored tile
    from f8tvm.core._tvm import tir

    preset = TARGETS[target]
    dot = find_dot(preset.dot)
    lanes, depth = dot.lanes, dot.depth
    cin, cout = 16, 2 * lanes
    rng = np.random.default_rng(width)
    x = rng.integers(0, 256, (1, cin, 3, width)).astype("uint8")
    wt = rng.integers(-128, 128, (cout, cin, 1, 1)).astype("int8")
    wt[:3] = 127  # channels driven past the top of the range, and past the bottom:
    wt[3:6] = -128
    cb = 16 if target != "x86" else lanes  # the AVX-512 layout: 16-channel input blocks
    packed = pack_conv_weight(wt, cb, lanes, depth)
    data = te.placeholder(block(x, cb).shape, "uint8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    acc = conv2d_nchwc(data, kernel, (1, 1), (0, 0, 0, 0), (1, 1), 0, target == "x86")
    shifted = te.compute(acc.shape, lambda *i: acc(*i) >> 7, name="shifted")
    clamped = te.compute(acc.shape, lambda *i: tir.max(tir.min(shifted(*i), hi), lo),
                         name="clamped")
    out = te.compute(acc.shape, lambda *i: clamped(*i).astype(dtype), name="out")
    # the register tile one output block by the row (the default tile of so short a reduction
    # may be narrower); x86-amx: its own tiles
    tiles = None if dot.amx else (1, width)
    func = default_schedule(te.create_prim_func([data, kernel, out]), dot, tiles=tiles)
    permute = "llvm.x86.avx2.permd" if lanes == 8 else "llvm.x86.avx512.permvar.si.512"
    assert (permute in func.script()) == (narrow is not None)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=get_target(target).tvm())
    body = kernel_source(lib)
    if narrow is not None:
        assert "vpermd" in body and ("vpackuswb" if dtype == "uint8" else "vpacksswb") in body
        assert "vpmovusdb" not in body and "vpmovsdb" not in body
    assert ("\ttdpbusd\t" in body) == (target == "x86-amx")
    assert audit_module(mod).wide_multiplies == 0
    if not _cpu_has(preset.cpu_flags):
        return  # code checked; the emulated VNNI CPU (test_vnni_emulated) runs whole models
    if "amx_tile" in preset.cpu_flags:
        from f8tvm.targets.cpu import enable_amx
        enable_amx()
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], dtype), dev)
    lib["main"](tvm.runtime.tensor(block(x, cb), dev), tvm.runtime.tensor(packed, dev), y)
    want = np.clip(conv(x, wt, 1, (0, 0, 0, 0)) >> 7, lo, hi)
    assert want.min() == lo and want.max() == hi  # both clamp edges are exercised
    assert np.array_equal(unblock(y.numpy()), want)
