"""The x86 depthwise kernel that takes window columns in pairs (``depthwise_pairs_nchwc``):
bit-exact against an int64 NumPy depthwise conv, multiplies with ``vpmaddwd`` only, and the audit
counts its MACs (phantom column of an odd kernel width included)."""

import numpy as np
import pytest
from conftest import kernel_source
from kernel_ref import block, conv, unblock

from f8tvm.core._tvm import post_order_visit, te, tvm
from f8tvm.passes.audit_multiplies import audit_module
from f8tvm.passes.pack_channel_blocks import pack_depthwise_pairs
from f8tvm.passes.packed_kernels import depthwise_pairs_nchwc
from f8tvm.schedules import default_schedule, find_dot
from f8tvm.targets import TARGETS, get_target

LANES = 8


def _build(shape, kernel_shape, kw, stride, pad, dtype, wide):
    data = te.placeholder(shape, dtype, name="data")
    kernel = te.placeholder(kernel_shape, "int16" if wide else "int8", name="kernel")
    out = depthwise_pairs_nchwc(data, kernel, kw, (stride, stride), pad, (1, 1), 0, wide)
    func = te.create_prim_func([data, kernel, out])
    sched = default_schedule(func, find_dot(TARGETS["x86"].dot))
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main")})
    return mod, tvm.compile(mod, target=get_target("x86").tvm()), [int(v) for v in out.shape]


CASES = [  # (C, H, W, KH, KW, stride, (top, left, bottom, right), activation dtype)
    (16, 9, 11, 3, 3, 1, (1, 1, 1, 1), "uint8"),
    (8, 12, 12, 3, 3, 2, (1, 1, 1, 1), "uint8"),
    (16, 10, 10, 5, 5, 1, (2, 2, 2, 2), "uint8"),
    (8, 13, 13, 5, 5, 2, (2, 2, 2, 2), "int8"),
    (8, 7, 9, 3, 4, 1, (1, 2, 1, 1), "int8"),  # even width: no phantom column
    (8, 8, 8, 3, 3, 1, (0, 0, 0, 0), "uint8"),  # unpadded: only the phantom column is padded
    (16, 11, 11, 3, 3, 3, (1, 1, 1, 1), "uint8"),  # odd stride > 1: pairs at every column
]


@pytest.mark.parametrize("wide", [False, True], ids=["pairs", "widened-pairs"])
@pytest.mark.parametrize("c,h,w,kh,kw,stride,pad,dtype", CASES)
def test_pair_kernel_is_exact_and_uses_vpmaddwd(c, h, w, kh, kw, stride, pad, dtype, wide):
    """``wide``: the input rewritten once as widened column pairs, int16 weights."""
    rng = np.random.default_rng(c + h + kw + stride)
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (1, c, h, w)).astype(dtype)
    x.flat[:c] = hi  # extremes: the largest products a lane can take
    wt = rng.integers(-128, 128, (c, 1, kh, kw)).astype("int8")
    wt[0] = -128
    packed = pack_depthwise_pairs(wt, LANES).astype("int16" if wide else "int8")
    mod, lib, out_shape = _build(block(x).shape, packed.shape, kw, stride, pad, dtype, wide)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, "int32"), dev)
    lib["main"](tvm.runtime.tensor(block(x), dev), tvm.runtime.tensor(packed, dev), out)
    assert np.array_equal(unblock(out.numpy()), conv(x, wt, stride, pad, depthwise=True))

    asm = kernel_source(lib)
    body = asm.split("main_compute_:")
    assert len(body) == 2  # the kernel's parallel body
    assert "vpmaddwd" in body[1]
    for op in ("vpmulld", "vpmullw", "imul"):  # no other vector/scalar multiply of data
        assert f"\t{op}\t" not in body[1], op

    shuffles = {}  # block -> does it shuffle lanes?

    def visit(node):
        if type(node).__name__ == "SBlock":
            shuffles[node.name_hint] = "Shuffle" in str(node.body)

    post_order_visit(mod["main"].body, visit)
    # the dot reads its tap pairs as they are (widened pairs) or shuffles them per use
    assert shuffles["depthwise_nchwc_update_o"] == (not wide)
    assert shuffles.get("pairs_nchwc_o", False) == wide  # the pairs are made once

    report = audit_module(mod)
    oh, ow = out_shape[2:4]
    if wide:  # the pairs are 8-bit by their stores; int16 weights only by a bound constant,
        # and this module binds none
        assert [v["operand_bits"] for v in report.violations] == [[8, 16]]
    else:
        assert report.wide_multiplies == 0
        assert report.macs_8bit == c * oh * ow * kh * 2 * ((kw + 1) // 2)


def test_pair_weights_layout():
    w = np.arange(-60, -60 + 16 * 3 * 5).astype("int8").reshape(16, 1, 3, 5)
    p = pack_depthwise_pairs(w, LANES)
    assert p.shape == (2, 3, 3, LANES, 2)
    for c in range(16):
        for ky in range(3):
            for kx in range(6):
                want = w[c, 0, ky, kx] if kx < 5 else 0  # column 5: the phantom, weight 0
                assert p[c // LANES, ky, kx // 2, c % LANES, kx % 2] == want


def _has_vnni():
    try:
        return "avx512_vnni" in open("/proc/cpuinfo").read()
    except OSError:
        return False


QUAD_CASES = [  # (C, H, W, KH, KW, stride, (top, left, bottom, right))
    (16, 9, 11, 3, 3, 1, (1, 1, 1, 1)),
    (32, 12, 12, 3, 3, 2, (1, 1, 1, 1)),
    (16, 10, 10, 5, 5, 1, (2, 2, 2, 2)),  # two quads a row, three phantom columns
    (16, 13, 13, 5, 5, 2, (2, 2, 2, 2)),
    (16, 7, 9, 3, 4, 1, (1, 2, 1, 1)),  # a whole quad: no phantom column
    (16, 8, 8, 3, 3, 1, (0, 0, 0, 0)),  # unpadded: only the phantom column is padded
    (16, 11, 11, 3, 3, 3, (1, 1, 1, 1)),  # odd stride > 1: quads at every column
]


@pytest.mark.parametrize("target", ["x86-avx512", "x86-amx"])
@pytest.mark.parametrize("c,h,w,kh,kw,stride,pad", QUAD_CASES)
def test_avx512_tap_quads_are_exact_and_use_vpdpbusd(c, h, w, kh, kw, stride, pad, target):
    """AVX-512: the padded plane rewritten once as column quads (vpermd + vpshufb each), one
    ``vpdpbusd`` lane per channel and 4 window columns.  Code generation needs no VNNI CPU;
    running does (the emulated VNNI CPU of test_vnni_emulated runs whole models)."""
    rng = np.random.default_rng(c + h + kw + stride)
    x = rng.integers(0, 256, (1, c, h, w)).astype("uint8")
    x.flat[:c] = 255  # the largest products a lane can take
    wt = rng.integers(-128, 128, (c, 1, kh, kw)).astype("int8")
    wt[0] = -128
    packed = pack_depthwise_pairs(wt, 16, 4)
    data = te.placeholder(block(x, 16).shape, "uint8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    out = depthwise_pairs_nchwc(data, kernel, kw, (stride, stride), pad, (1, 1), 0, True)
    sched = default_schedule(te.create_prim_func([data, kernel, out]),
                             find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=get_target(target).tvm())
    asm = kernel_source(lib)
    body = asm.split("main_compute_:")[1]
    assert "\tvpdpbusd\t" in body and "\tvpshufb\t" in body and "\tvpermd\t" in body
    for op in ("vpmulld", "vpmullw", "vpmaddwd", "vpunpcklbw", "imul"):
        assert f"\t{op}\t" not in body, op
    oh, ow = (int(v) for v in out.shape[2:4])
    report = audit_module(mod)
    assert report.wide_multiplies == 0
    assert report.macs_8bit == c * oh * ow * kh * 4 * ((kw + 3) // 4)  # phantoms counted
    if not _has_vnni():
        return
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], "int32"), dev)
    lib["main"](tvm.runtime.tensor(block(x, 16), dev), tvm.runtime.tensor(packed, dev), y)
    assert np.array_equal(unblock(y.numpy()), conv(x, wt, stride, pad, depthwise=True))


# (target, C, H, W, KH, KW, stride, pad, band): the column groups made a band of output rows
# at a time (1, 2, 3 rows, the whole plane), strides 1 and 2, a 5-row window
BAND_CASES = [
    ("x86", 8, 12, 11, 3, 3, 1, (1, 1, 1, 1), 1),
    ("x86", 8, 12, 12, 3, 3, 2, (1, 1, 1, 1), 2),
    ("x86", 8, 12, 10, 5, 5, 1, (2, 2, 2, 2), 3),
    ("x86-avx512", 16, 12, 11, 3, 3, 1, (1, 1, 1, 1), 2),
    ("x86-avx512", 32, 12, 12, 3, 3, 2, (1, 1, 1, 1), 3),
    ("x86-avx512", 16, 12, 12, 5, 5, 2, (2, 2, 2, 2), 1),
    ("x86-avx512", 16, 12, 11, 3, 3, 1, (1, 1, 1, 1), 12),
]


@pytest.mark.parametrize("target,c,h,w,kh,kw,stride,pad,band", BAND_CASES)
def test_rewritten_groups_in_bands_are_exact(target, c, h, w, kh, kw, stride, pad, band):
    """The rewritten column groups (AVX2's widened pairs, AVX-512's quads), a band of ``band``
    output rows at a time: each band's groups are made right before its rows (a buffer of one
    band), the bands' halo rows rewritten twice."""
    quads = target != "x86"
    lanes = 16 if quads else LANES
    rng = np.random.default_rng(c + h + kw + stride + band)
    x = rng.integers(0, 256, (1, c, h, w)).astype("uint8")
    x.flat[:c] = 255
    wt = rng.integers(-128, 128, (c, 1, kh, kw)).astype("int8")
    wt[0] = -128
    packed = pack_depthwise_pairs(wt, lanes, 4 if quads else 2)
    if not quads:
        packed = packed.astype("int16")
    data = te.placeholder(block(x, lanes).shape, "uint8", name="data")
    kernel = te.placeholder(packed.shape, str(packed.dtype), name="kernel")
    out = depthwise_pairs_nchwc(data, kernel, kw, (stride, stride), pad, (1, 1), 0, True, band)
    oh = int(out.shape[2])
    func = te.create_prim_func([data, kernel, out])
    sched = default_schedule(func, find_dot(TARGETS[target].dot))
    bands = []

    def visit(node):
        if type(node).__name__ == "SBlock" and node.name_hint == "root":
            bands.extend(int(d) for b in node.alloc_buffers if b.name == "pairs_nchwc"
                         for d in b.shape[2:4])

    post_order_visit(sched.body, visit)
    assert bands == [oh // band, (band - 1) * stride + kh]  # the groups' buffer: by band
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=get_target(target).tvm())
    if quads and not _has_vnni():
        return
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], "int32"), dev)
    lib["main"](tvm.runtime.tensor(block(x, lanes), dev), tvm.runtime.tensor(packed, dev), y)
    assert np.array_equal(unblock(y.numpy()), conv(x, wt, stride, pad, depthwise=True))
