"""Fast kernels: blocked layout pass, tensorized schedules, tuning database, RPC measurement."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import asm_functions, module_asm

import f8tvm
from f8tvm import api
from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings
from f8tvm.core.errors import UnsupportedCPUError
from f8tvm.core.graph import extract_graph
from f8tvm.passes.pack_channel_blocks import PackChannelBlocks
from f8tvm.passes.quantize_to_integer import QuantizeToInteger
from f8tvm.reference import quantize_input, run_reference
from f8tvm.schedules import find_dot
from f8tvm.targets import TARGETS, DotSpec, get_target

SIZE = 16


def _has_vnni():
    try:
        return "avx512_vnni" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.fixture(scope="module")
def net():
    from conftest import make_small_net

    torch.manual_seed(0)
    return make_small_net()


@pytest.fixture(scope="module")
def calib():
    return [np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype("float32")]


def _inputs(plan, n=3):
    rng = np.random.default_rng(7)
    return [quantize_input(rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32"), plan)
            for _ in range(n)]


@pytest.mark.parametrize("unsigned_only", [False, True])
def test_blocked_program_is_bit_exact(net, calib, unsigned_only):
    # unsigned_only: the offset path VNNI needs (int8 input + 128, bias - 128 * sum(w))
    x = torch.randn(1, 3, SIZE, SIZE)
    mod, sources = api.import_model(net, x)
    graph = extract_graph(mod, sources)
    from f8tvm.calibrate import calibrate

    plan = calibrate(graph, calib)
    assert plan.input_signed  # randn input: the offset path is exercised
    packed = PackChannelBlocks(DotSpec("vpmaddwd", 8, 2), "uint8" if unsigned_only else "any")(
        QuantizeToInteger(graph, plan)(mod))
    ops = [b.value.op.name for b in bindings(packed["main"])
           if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]
    assert "relax.nn.conv2d" in ops  # only the grouped conv stays on the generic path
    assert ops.count("relax.nn.conv2d") == 1
    # layout transforms only at the boundaries: network input, around the grouped conv
    assert ops.count("relax.layout_transform") <= 3
    ex = _tvm.compile_relax(packed, get_target("x86").tvm())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for q in _inputs(plan):
        got = vm["main"](tvm.runtime.tensor(q.astype("int8")))[0].numpy()
        assert np.array_equal(got, run_reference(graph, plan, q))


@pytest.fixture(scope="module")
def x86_build(net, calib):
    return f8tvm.compile(net, torch.randn(1, 3, SIZE, SIZE), target="x86", calib=calib)


def test_x86_kernels_use_vpmaddwd_and_stay_exact(x86_build):
    cm = x86_build
    funcs = asm_functions(module_asm(cm))
    blocked = {n: a for n, a in funcs.items() if "nchwc" in n and n.endswith("_compute_")}
    assert any("conv2d_nchwc" in n for n in blocked)  # the parallel bodies of the kernels
    assert any("depthwise_nchwc" in n for n in blocked)
    for name, asm in blocked.items():
        # convs and depthwise convs (window columns in pairs) multiply with vpmaddwd
        assert "vpmaddwd" in asm, name
        # ... 8-bit values in 16-bit lanes: never a 32-bit multiply, nor a lone 16-bit one
        assert "vpmulld" not in asm and "vpmullw" not in asm, name
    # conv inputs are widened to int16 once: activation pairs broadcast from memory (LLVM may
    # keep a tiny map, the classifier's, in registers instead)
    assert any(re.search(r"vpbroadcastd\t-?\w*\(%", asm)
               for name, asm in blocked.items() if "conv2d_nchwc" in name)
    assert cm.audit.wide_multiplies == 0 and cm.audit.macs_8bit > 0
    assert cm.extra_meta["tuning"]["database"] is None
    for q in _inputs(cm.plan):
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))


def test_vnni_kernels_contain_vpdpbusd(net, calib):
    # code generation needs no VNNI CPU; running it does (next test)
    cm = f8tvm.compile(net, torch.randn(1, 3, SIZE, SIZE), target="x86-avx512", calib=calib)
    asm = module_asm(cm)
    assert asm.count("vpdpbusd") > 0
    assert cm.audit.wide_multiplies == 0 and cm.audit.macs_8bit > 0
    if not _has_vnni():
        # refused with the missing features named, not an illegal instruction (the emulated
        # VNNI CPU of test_vnni_emulated runs this build)
        with pytest.raises(UnsupportedCPUError, match="avx512_vnni"):
            cm.run_int(_inputs(cm.plan)[0])
        return
    for q in _inputs(cm.plan):
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))


@pytest.mark.parametrize("flags,missing", [
    ("fpu avx2 fma bmi2 avx_vnni", None),
    ("fpu avx2 fma bmi2", "avx_vnni"),
    ("fpu sse2", "avx2, fma, bmi2, avx_vnni"),
])
def test_loading_checks_the_cpu_features(tmp_path, flags, missing):
    from f8tvm.runtime import check_cpu, missing_cpu_flags

    meta = {"target": {"name": "x86-avxvnni",
                       "cpu_flags": list(get_target("x86-avxvnni").cpu_flags)}}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert missing_cpu_flags(meta["target"]["cpu_flags"], str(cpuinfo)) == (
        missing.split(", ") if missing else [])
    if missing is None:
        check_cpu(meta, "m.so", str(cpuinfo))
    else:
        with pytest.raises(UnsupportedCPUError, match=f"m.so .*'x86-avxvnni'.*: {missing} "):
            check_cpu(meta, "m.so", str(cpuinfo))
    # another architecture (no x86 flags line), or no cpuinfo, or an old .json: no check
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    check_cpu(meta, "m.so", str(tmp_path / "arm"))
    check_cpu(meta, "m.so", str(tmp_path / "absent"))
    check_cpu({"target": {"name": "x86"}}, "m.so", str(cpuinfo))


class _ResidualNet(torch.nn.Module):
    """conv-bn-relu, conv-bn, + input, relu: the second conv's kernel reads the residual."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + y)


def _top_level_nests(func):
    """Names of the blocks in each loop nest directly under the root block."""
    nests, body = [], func.body.block.body
    for stmt in body.seq if _tvm.node_kind(body) == "SeqStmt" else [body]:
        names = []
        _tvm.post_order_visit(stmt, lambda n: names.append(n.name_hint)
                              if _tvm.node_kind(n) == "SBlock" else None)
        nests.append(names)
    return nests


def test_residual_epilogue_runs_at_the_register_tile(calib):
    # the residual's alignment shift reads only a function input: it must be inlined into the
    # epilogue, not left as a loop nest of its own that keeps the epilogue (and the int32 conv
    # result) out of the register tile
    from f8tvm.schedules import default_schedule, find_dot, kernel_kind

    torch.manual_seed(1)
    net = _ResidualNet().eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    fused, preset = api.fuse(net, x, "x86", calib)
    dot = find_dot(preset.dot)
    residual = 0
    for _, f in fused.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc) or kernel_kind(f) != "conv":
            continue
        shapes = [tuple(int(d) for d in p.shape) for p in f.params]  # 0.27: params are buffers
        if shapes[-1] not in shapes[1:-1]:  # no input of the output's shape: no residual
            continue
        residual += 1
        nests = _top_level_nests(default_schedule(f, dot))
        assert len(nests) == 2, nests  # the padded copy, then the conv with its epilogue
        assert nests[0] == ["pad_nchwc"]
        # the accumulator's init and update, and one epilogue block (ReLU of the residual, its
        # shift, the add, the next requantize, all inlined)
        assert nests[1][:2] == ["conv_nchwc_init", "conv_nchwc_update_o"], nests
        assert len(nests[1]) == 3, nests
    assert residual == 1
    cm = f8tvm.compile(net, x, target="x86", calib=calib)
    for q in _inputs(cm.plan):
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))


def test_kernels_take_each_constant_once(net, calib):
    # a requantize shifts twice by the same per-channel constant (the parity bit and the
    # result): blocked once, it is one kernel argument, so the epilogue keeps it in one register
    # instead of two (spilled) copies
    fused, _ = api.fuse(net, torch.randn(1, 3, SIZE, SIZE), "x86", calib)
    kernels = 0
    for b in bindings(fused["main"]):
        if not (isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"):
            continue
        consts = [_tvm.const_value(a) for a in b.value.args[1].fields if _tvm.is_const(a)]
        if len(consts) < 2:
            continue
        kernels += 1
        for i, a in enumerate(consts):
            for c in consts[:i]:
                assert not (a.shape == c.shape and np.array_equal(a, c)), b.var.name_hint
    assert kernels >= 3  # the convs with their requantize epilogues


def test_elementwise_kernel_is_one_pass():
    # a stand-alone requantize (ResNet's residual sums feed one): every op inlined, one loop nest
    # and no intermediate tensor; the max pool reads its padded input inline too
    from f8tvm.core._tvm import te, tir
    from f8tvm.schedules import default_schedule

    shape = (1, 2, 5, 6, 8)
    acc = te.placeholder(shape, "int32", name="acc")
    shift = te.placeholder((1, 2, 1, 1, 8), "int32", name="shift")
    t = te.compute(shape, lambda n, c, y, x, b: acc[n, c, y, x, b] + 3, name="t_add")
    r = te.compute(shape, lambda n, c, y, x, b: t[n, c, y, x, b] >> shift[0, c, 0, 0, b],
                   name="t_shift")
    q = te.compute(shape, lambda n, c, y, x, b: tir.max(tir.min(r[n, c, y, x, b], 255), 0)
                   .astype("uint8"), name="t_cast")
    func = te.create_prim_func([acc, shift, q])
    scheduled = default_schedule(func, None)
    nests = _top_level_nests(scheduled)
    assert nests == [["t_cast"]], nests
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target=get_target("x86").tvm())
    rng = np.random.default_rng(0)
    a = rng.integers(-2**20, 2**20, shape).astype("int32")
    s = rng.integers(0, 12, (1, 2, 1, 1, 8)).astype("int32")
    out = tvm.runtime.tensor(np.zeros(shape, "uint8"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(s), out)
    want = np.clip((a.astype(np.int64) + 3) >> s, 0, 255)
    assert np.array_equal(out.numpy(), want)


@pytest.fixture(scope="module")
def tuned_db(net, calib, tmp_path_factory):
    from f8tvm.schedules import dot_intrin
    from f8tvm.schedules.tuning import extract_tasks, tune

    db = str(tmp_path_factory.mktemp("tuning") / "db")
    fused, preset = api.fuse(net, torch.randn(1, 3, SIZE, SIZE), "x86", calib)
    tasks = extract_tasks(fused)
    assert {t.kind for t in tasks} == {"conv", "depthwise"}
    tune(tasks, preset.tvm(), dot_intrin(preset.dot), db, trials=2)
    return db, tasks, preset


@pytest.mark.tuning
def test_tuning_records_are_applied_and_exact(net, calib, tuned_db):
    from f8tvm.schedules.tuning import anchor_index, open_database

    db, tasks, preset = tuned_db
    cm = f8tvm.compile(net, torch.randn(1, 3, SIZE, SIZE), target="x86", calib=calib,
                       tuning_db=db)
    info = cm.extra_meta["tuning"]
    assert info["tuned"] == info["tunable"] == len(tasks) and info["exact"] == len(tasks)
    assert cm.audit.wide_multiplies == 0
    for q in _inputs(cm.plan):
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))
    # the records hold the split decisions the build replays
    index = anchor_index(open_database(db))
    assert len(index) == len(tasks) and all(dec for _, dec in index.values())


@pytest.mark.tuning
def test_tuning_records_transfer_to_other_calibrations(net, tuned_db):
    # other calibration data: other shift constants inside the fused kernels, same convs
    db, tasks, _ = tuned_db
    other = [np.random.default_rng(9).uniform(-3, 3, (2, 3, SIZE, SIZE)).astype("float32")]
    cm = f8tvm.compile(net, torch.randn(1, 3, SIZE, SIZE), target="x86", calib=other,
                       tuning_db=db)
    info = cm.extra_meta["tuning"]
    assert info["tuned"] == info["tunable"] == len(tasks)
    for q in _inputs(cm.plan):
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))


@pytest.mark.tuning
def test_tuning_measures_on_boards_behind_an_rpc_tracker(net, calib, tmp_path, rpc_tracker):
    """Two RPC servers on localhost registered to one tracker measure the candidates."""
    from f8tvm.schedules import dot_intrin
    from f8tvm.schedules.tuning import anchor_index, extract_tasks, make_runner, open_database, tune

    for _ in range(2):
        rpc_tracker.add_local_server("f8tvm-test")
    rpc_tracker.wait("f8tvm-test", 2)
    fused, preset = api.fuse(net, torch.randn(1, 3, SIZE, SIZE), "x86", calib)
    task = [t for t in extract_tasks(fused) if t.kind == "conv"][:1]
    db = str(tmp_path / "db")
    tune(task, preset.tvm(), dot_intrin(preset.dot), db, trials=2,
         runner=make_runner(rpc_tracker.address, "f8tvm-test"))
    assert len(anchor_index(open_database(db))) == 1  # measured (valid latency) over RPC


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse2 avx2 fma bmi2 avx512f avx512bw avx512dq avx512vl avx512_vnni avx_vnni amx_tile "
     "amx_int8", "x86-amx"),
    ("fpu sse2 avx2 fma bmi2 avx512f avx512bw avx512dq avx512vl avx512_vnni amx_tile",
     "x86-avx512"),  # AMX without its int8 part
    ("fpu sse2 avx2 avx512f avx512_vnni avx_vnni", "x86-avx512"),
    ("fpu sse2 avx2 avx_vnni", "x86-avxvnni"),
    ("fpu sse2 avx2 avx512f", "x86"),
    ("fpu sse2 avx2", "x86"),
])
def test_host_target_follows_the_cpu_flags(monkeypatch, flags, expected):
    import builtins
    import io

    from f8tvm import targets

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(
        f"processor\t: 0\nflags\t\t: {flags}\n") if path == "/proc/cpuinfo" else real_open(
        path, *a, **k))
    assert targets.host_target_name() == expected
    assert get_target("host").name == expected


@pytest.mark.unit
def test_each_preset_names_its_dot_spec_once_and_the_intrinsics_serve_it():
    """A target's dot instruction, block and forms are its preset's ``dot`` (the layout pass
    and the schedules both read it); the schedules' intrinsics are checked against it."""
    for preset in TARGETS.values():
        dot = find_dot(preset.dot)
        assert (dot is None) == (preset.dot is None), preset.name
        if dot is not None:
            assert dot.spec is preset.dot
            assert (dot.lanes, dot.depth) == (preset.dot.lanes, preset.dot.depth)
    with pytest.raises(ValueError, match="depthwise taps in groups of 2"):
        find_dot(DotSpec("vpdpbusd", 16, 4, pair_taps=True))  # VNNI takes quads
    with pytest.raises(ValueError, match="depthwise taps in groups of 4"):
        find_dot(DotSpec("smull", 8, 4, pair_taps=True, tap_group=4))  # smull takes pairs
    with pytest.raises(ValueError, match="a 8x4 block"):
        find_dot(DotSpec("sdot", 16, 4))
    with pytest.raises(ValueError, match="no tensor intrinsic for 'tdpbf16ps'"):
        find_dot(DotSpec("tdpbf16ps", 16, 64))
    with pytest.raises(ValueError, match="a 16x4 block"):
        find_dot(DotSpec("tdpbusd", 16, 64))
    with pytest.raises(ValueError, match="activations 'int4'"):
        replace(TARGETS["x86"], activations="int4")


@pytest.mark.unit
def test_short_reductions_take_a_smaller_register_tile():
    """AVX-512's tile of 24 accumulators spills in its epilogue; a conv whose reduction is at
    most 1024 bytes deep (the 1x1 convs of the depthwise nets) takes at most 12, or 2 output
    blocks x 7 pixels where both divide; at most 48 bytes deep (their thin expands, the RGB
    stems) 4, 16 bytes deep 8; a deeper one (ResNet-18's 3x3 convs past its first stage) all
    24; the classifier (one pixel) at most 8 output blocks.  The other targets have no such
    limits."""
    from f8tvm.schedules.cpu import default_conv_tiles

    vnni = find_dot(get_target("x86-avx512").dot)
    assert vnni.short_tiles == ((16, 8), (48, 4), (1024, 12)) and vnni.dense_blocks == 8
    assert vnni.short_wide == (48, 2, 7)
    wide = default_conv_tiles(9, 56, vnni)
    assert wide[0] * wide[1] == 24  # e.g. MobileNet-V2's 24->144 expand conv on 56x56
    for depth, most in ((16, 8), (17, 4), (32, 4), (48, 4), (49, 14), (1024, 14)):
        t_o, t_w = default_conv_tiles(6, 56, vnni, depth=depth)
        assert t_o * t_w == most and 56 % t_w == 0 and 6 % t_o == 0, (depth, t_o, t_w)
    assert default_conv_tiles(4, 56, vnni, depth=576) == (2, 7)  # ResNet-18's first stage
    assert default_conv_tiles(10, 7, vnni, depth=960) == (2, 7)  # was (1, 7)
    # no other tile beyond 12 (7x2 and 1x14 were slower): odd output blocks, as EfficientNet-
    # Lite0's 112 and 80 channels have, cannot take 2x7
    for occ, ow in ((7, 14), (5, 14), (7, 7), (3, 56)):
        t_o, t_w = default_conv_tiles(occ, ow, vnni, depth=672)
        assert t_o * t_w <= 12, (occ, ow, t_o, t_w)
    assert default_conv_tiles(9, 56, vnni, depth=32) == (1, 4)  # the 24->144 expand (24 -> 32)
    assert default_conv_tiles(9, 56, vnni, depth=1025) == wide
    assert default_conv_tiles(8, 28, vnni, depth=128 * 9) == default_conv_tiles(8, 28, vnni)
    # the classifier (1280 -> 1000: 63 output blocks on one pixel): 7 blocks a tile, not 21
    assert default_conv_tiles(63, 1, vnni, depth=1280) == (7, 1)
    assert default_conv_tiles(63, 1, vnni, depth=512) == (7, 1)
    avx2 = find_dot(get_target("x86").dot)
    assert avx2.short_tiles == () and avx2.dense_blocks == 0
    assert default_conv_tiles(8, 56, avx2, depth=32) == default_conv_tiles(8, 56, avx2)
    assert default_conv_tiles(63, 1, avx2, depth=1280) == default_conv_tiles(63, 1, avx2)


def _pad_vectors(func):
    """(bytes, channel block) of every vector loop of a padding copy in a scheduled kernel."""
    from f8tvm.passes.packed_kernels import PAD_BLOCK

    out = []

    def visit(n):
        if _tvm.node_kind(n) != "For" or int(n.kind) != int(tvm.tirx.ForKind.VECTORIZED):
            return
        stores = []
        _tvm.post_order_visit(n.body, lambda m: stores.append(m)
                              if _tvm.node_kind(m) == "SBlock"
                              and m.name_hint.startswith(PAD_BLOCK) else None)
        if stores:
            buf = stores[0].body.buffer
            size = tvm.runtime.DataType(str(buf.dtype)).bits // 8
            # a byte stream's padded rows (``conv2d_stream``: one column of a row's bytes) are
            # rows of one-byte pixels
            block = 1 if int(buf.shape[-2]) == 1 else int(buf.shape[-1])
            out.append((int(n.extent) * size, block * size))

    _tvm.post_order_visit(func.body, visit)
    return out


@pytest.mark.parametrize("target", ["x86", "x86-avx512", "arm-dotprod"])
def test_padding_copies_a_row_in_wide_vectors(calib, target):
    # the interior of a padded row is one copy over its columns and channels together, in
    # vectors of up to 256 bytes, not one channel block (8 or 16 bytes) at a time
    from f8tvm.schedules import default_schedule, find_dot, kernel_kind

    torch.manual_seed(1)
    fused, preset = api.fuse(_ResidualNet().eval(), torch.randn(1, 3, SIZE, SIZE), target, calib)
    dot = find_dot(preset.dot)
    padded = 0
    for _, f in fused.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc) or kernel_kind(f) == "other":
            continue
        vectors = _pad_vectors(default_schedule(f, dot))
        if not vectors:
            continue
        padded += 1
        widest, block = max(vectors)
        assert widest > block and widest <= 256, vectors
        assert all(b % blk == 0 for b, blk in vectors), vectors
    assert padded >= 2  # the stem's and conv1's 3x3 windows
