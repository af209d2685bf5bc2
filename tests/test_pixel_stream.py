"""The image read as a byte stream (``conv2d_stream``, the VNNI targets' ``pixel_stream``): a
conv on fewer input channels than the dot's depth takes a window row's ``KW * C`` bytes four
at a time instead of padding the image to four channels.  Checked: the weight packing against
an independent NumPy reading of the stream, the scheduled kernel bit-exact with an int64
conv (natively where the CPU has the instruction, else on the emulated VNNI CPU), the audit's
MAC count, and which convs of a program take the form."""

import numpy as np
import pytest
from kernel_ref import conv, unblock

from f8tvm.core import _tvm
from f8tvm.core._tvm import te, tvm
from f8tvm.passes.audit_multiplies import audit_module
from f8tvm.passes.pack_channel_blocks import pack_conv_weight_stream
from f8tvm.passes.packed_kernels import PAD_BLOCK, PAD_STREAM, conv2d_stream
from f8tvm.runtime import missing_cpu_flags
from f8tvm.schedules import default_schedule, find_dot
from f8tvm.targets import get_target
from tools import emulated_x86 as emu

DEPTH = 4
CASES = [  # (C, O, H, W, KH, KW, stride, pad)
    (3, 64, 16, 18, 7, 7, 2, (3, 3, 3, 3)),  # ResNet-18's stem, small
    (3, 24, 9, 11, 3, 3, 2, (1, 1, 1, 1)),  # MobileNet-V2's stem: 9 bytes, 3 steps
    (1, 16, 8, 9, 5, 5, 1, (2, 2, 2, 2)),  # one channel: 5 bytes a row, 2 steps
    (2, 8, 7, 10, 3, 4, 1, (1, 0, 2, 3)),  # uneven padding, an even window
]


def stream_reference(x, packed, kw, stride, pad):
    """The stream conv as its docstring defines it, in NumPy: the padded image as rows of
    bytes, each output pixel's window row ``G * depth`` bytes from byte ``x * stride * C``
    (those past ``KW * C`` belong to the next pixel: their weights must be zero)."""
    n, c, h, w = x.shape
    top, left, bottom, right = pad
    ob_, _, kh, groups, _, lanes, depth = packed.shape
    oh = (h + top + bottom - kh) // stride + 1
    ow = (w + left + right - kw) // stride + 1
    width = max((w + left + right) * c, (ow - 1) * stride * c + groups * depth)
    rows = np.zeros((n, h + top + bottom, width), np.int64)
    rows[:, top:top + h, left * c:(left + w) * c] = x.transpose(0, 2, 3, 1).reshape(n, h, w * c)
    wt = packed[:, 0, :, :, 0].astype(np.int64)  # (O/lanes, KH, G, lanes, depth)
    wt = wt.transpose(0, 3, 1, 2, 4).reshape(ob_ * lanes, kh, groups * depth)
    out = np.zeros((n, ob_ * lanes, oh, ow), np.int64)
    for y in range(oh):
        for xo in range(ow):
            win = rows[:, y * stride:y * stride + kh,
                       xo * stride * c:xo * stride * c + groups * depth]
            out[:, :, y, xo] = np.einsum("nkb,okb->no", win, wt)
    return out


@pytest.mark.parametrize("c,o,h,w,kh,kw,stride,pad", CASES)
def test_stream_weights_compute_the_conv(c, o, h, w, kh, kw, stride, pad):
    rng = np.random.default_rng(c * 100 + kw)
    x = rng.integers(0, 256, (1, c, h, w))
    wt = rng.integers(-128, 128, (o, c, kh, kw)).astype(np.int8)
    packed = pack_conv_weight_stream(wt, 16, DEPTH)
    groups = -(-kw * c // DEPTH)
    assert packed.shape == (-(-o // 16), 1, kh, groups, 1, 16, DEPTH)
    got = stream_reference(x, packed, kw, stride, pad)
    assert np.array_equal(got[:, :o], conv(x, wt, stride, pad))
    assert not got[:, o:].any()  # padded output channels: zero weights


def _run(func, preset, args, tmp_path):
    """Run the scheduled kernel natively where the CPU has the target's flags, else on the
    emulated VNNI CPU (skipped where neither is available)."""
    if not missing_cpu_flags(preset.cpu_flags):
        lib = tvm.compile(tvm.IRModule({"main": func}), target=preset.tvm())
        dev = tvm.cpu()
        arrays = [tvm.runtime.tensor(a, dev) for a in args]
        lib["main"](*arrays)
        return arrays[-1].numpy()
    if emu.available() is not None:
        pytest.skip(f"no {preset.isa} here and no emulated VNNI CPU: {emu.available()}")
    exe = emu.compile_and_link(func, preset.tvm(), str(tmp_path / "k"))
    got = [a.copy() for a in args]
    emu.run_kernel(exe, got)
    return got[-1]


@pytest.mark.parametrize("target", ["x86-avx512", "x86-avxvnni"])
@pytest.mark.parametrize("c,o,h,w,kh,kw,stride,pad", CASES)
def test_stream_kernel_is_exact(target, c, o, h, w, kh, kw, stride, pad, tmp_path):
    preset = get_target(target)
    dot = find_dot(preset.dot)
    rng = np.random.default_rng(c + o + kw)
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8)
    x[0, :, 0, :] = 255  # the largest products a lane takes
    wt = rng.integers(-128, 128, (o, c, kh, kw)).astype(np.int8)
    wt[0] = -128
    packed = pack_conv_weight_stream(wt, dot.lanes, DEPTH)
    data = te.placeholder((1, 1, h, 1, w * c), "uint8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    out = conv2d_stream(data, kernel, c, kw, (stride, stride), pad, pad_value=0)
    plain = te.create_prim_func([data, kernel, out])
    assert [PAD_STREAM in b.annotations for b in _blocks(plain)
            if b.name_hint == PAD_BLOCK] == [True]
    func = default_schedule(plain, dot).with_attr("global_symbol", "main")
    # the schedule split the padded rows at the image's borders (a plain copy inside)
    pads = [b for b in _blocks(func) if b.name_hint.startswith(PAD_BLOCK)]
    assert len(pads) > 3
    # and the copy reads the image's row as bytes: no byte's index divided by C (LLVM would
    # then move the row one byte at a time)
    reads = []
    for b in pads:
        _tvm.post_order_visit(b.body, lambda n: reads.append(n) if getattr(
            _tvm.load_source(n), "name", None) == "data" else None)
    kinds = []
    for r in reads:
        for i in r.indices:
            _tvm.post_order_visit(i, lambda n: kinds.append(_tvm.node_kind(n)))
    assert reads and not {"FloorDiv", "FloorMod"} & set(kinds), kinds
    args = [x.transpose(0, 2, 3, 1).reshape(1, 1, h, 1, w * c), packed,
            np.zeros([int(v) for v in out.shape], np.int32)]
    got = _run(func, preset, args, tmp_path)
    assert np.array_equal(unblock(got)[:, :o], conv(x, wt, stride, pad))
    oh, ow = int(out.shape[2]), int(out.shape[3])
    groups = -(-kw * c // DEPTH)
    macs = audit_module(tvm.IRModule({"main": func})).macs_8bit
    assert macs == int(out.shape[1]) * dot.lanes * oh * ow * kh * groups * DEPTH


def _blocks(func):
    found = []
    _tvm.post_order_visit(
        func.body, lambda n: found.append(n) if _tvm.node_kind(n) == "SBlock" else None)
    return found


@pytest.mark.parametrize("target,stream,dilation", [
    ("x86-avx512", True, 1), ("x86-avxvnni", True, 1), ("x86", False, 1),
    ("x86-amx", False, 1), ("arm-dotprod", False, 1),
    ("x86-avx512", False, 2),  # a dilated window's pixels are not adjacent bytes
])
def test_which_convs_read_the_image_as_a_stream(target, stream, dilation):
    import torch

    from f8tvm import api, pipeline

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=2, padding=2 * dilation, dilation=dilation),
        torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 1)).eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, 12, 12)).astype("float32"))
    source = api.plan_source(net, x, [rng.standard_normal((2, 3, 12, 12)).astype("float32")])
    b = pipeline.Build(get_target(target), source.model, source.example_input, source.plan_for)
    pipeline.run(b, until="pack")
    mod = b.ir["pack"]
    text = mod["main"].script()
    assert ("R.permute_dims" in text) == stream
    # the stream conv reads the transposed image through a view of its rows (no copy)
    assert ("R.memory.view" in text) == stream
    assert ("R.layout_transform(q_in" in text) == (not stream)
    streams = [blk for gv, f in mod.functions.items() if _tvm.node_kind(f) == "PrimFunc"
               for blk in _blocks(f) if PAD_STREAM in blk.annotations]
    assert len(streams) == (1 if stream else 0)


def test_the_image_transpose_runs_over_rows_with_its_channels_unrolled():
    """The (N, C, H, W) -> (N, 1, H, W, C) copy the stream reads: parallel over rows, a serial
    loop over the row's pixels (LLVM vectorizes it as interleaved stores) and the channels
    unrolled inside, not one parallel loop over every element (59 us against 2.6 at 224x224,
    ResNet-18 on Zen 5)."""
    x = te.placeholder((1, 3, 20, 24), "int8", name="x")
    y = te.compute((1, 1, 20, 24, 3), lambda n, z, h, w, c: (
        x[n, c, h, w].astype("int16") + 128).astype("uint8"), name="y")
    func = default_schedule(te.create_prim_func([x, y]), find_dot(get_target("x86-avx512").dot))
    loops = []
    _tvm.post_order_visit(func.body, lambda n: loops.append((int(n.extent), int(n.kind)))
                          if _tvm.node_kind(n) == "For" else None)
    kind = tvm.tirx.ForKind
    assert sorted(loops) == [(3, int(kind.UNROLLED)), (20, int(kind.PARALLEL)),
                             (24, int(kind.SERIAL))], loops
