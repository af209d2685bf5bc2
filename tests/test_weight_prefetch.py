"""The conv kernels' weight prefetch (``schedules.cpu.prefetch_weights``) on the x86 VNNI
targets: each step of an output tile prefetches part of the next tile's weights, every one of
their cache lines exactly once over the tile (read off the emitted TIR by a small evaluator of its
own, over every iteration of the loops), the last tile none, never outside the weights; the
kernel stays bit-exact, and its inner loop keeps the accumulators in registers (the trap the
stack buffers avoid: with heap ones LLVM stored them at every prefetch); whole programs built
plainly and from tuning records prefetch and equal the NumPy integer reference."""

import re

import numpy as np
import pytest
import torch
from conftest import kernel_source
from kernel_ref import block, conv, unblock

from f8tvm.core import _tvm
from f8tvm.core._tvm import te, tvm
from f8tvm.passes.pack_channel_blocks import pack_conv_weight
from f8tvm.passes.packed_kernels import conv2d_nchwc
from f8tvm.schedules import cpu, default_schedule, find_dot
from f8tvm.targets import TARGETS, get_target
from f8tvm.targets.cpu import read_cpuinfo

# (target, C_in, C_out, H, W, window, stride, (oc, ow) register tile)
CASES = [
    ("x86-avx512", 128, 256, 8, 8, 3, 1, (4, 4)),  # 16 accumulators: 1 KiB, past TVM's stack rule
    ("x86-avx512", 64, 128, 7, 7, 3, 1, (2, 7)),   # ResNet-18's 7x7 form: one step a row
    ("x86-avx512", 32, 64, 16, 16, 1, 1, (1, 8)),  # more steps (32) than positions (8)
    ("x86-avxvnni", 32, 48, 6, 6, 3, 2, (2, 3)),
]


SHIFT = 3


def _kernel(target, cin, cout, h, w, k, stride, tiles, seed=0, epilogue=True):
    dot = find_dot(TARGETS[target].dot)
    lanes, depth = dot.block
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (1, cin, h, w)).astype("uint8")
    wt = rng.integers(-128, 128, (cout, cin, k, k)).astype("int8")
    packed = pack_conv_weight(wt, lanes, lanes, depth)
    data = te.placeholder(block(x, lanes).shape, "uint8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    pad = (k // 2,) * 4
    acc = conv2d_nchwc(data, kernel, (stride, stride), pad, (1, 1), 0)
    if epilogue:  # a model's conv: its sums go through an epilogue (here a shift)
        out = te.compute(acc.shape, lambda *i: acc(*i) >> SHIFT, name="out")
    else:
        out = acc
    func = default_schedule(te.create_prim_func([data, kernel, out]), dot, tiles=tiles)
    return func, (x, wt, packed, pad, lanes, [int(v) for v in out.shape])


# --- a small evaluator of TIR index expressions, independent of TVM's own

_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
        "FloorDiv": lambda a, b: a // b, "FloorMod": lambda a, b: a % b,
        "EQ": lambda a, b: a == b, "LE": lambda a, b: a <= b, "LT": lambda a, b: a < b,
        "And": lambda a, b: a and b, "Min": min, "Max": max}


def _eval(e, env):
    kind = _tvm.node_kind(e)
    if kind == "IntImm":
        return int(e.value)
    if kind == "Var":
        return env[e.name]
    if kind == "Cast":
        return _eval(e.value, env)
    return _OPS[kind](_eval(e.a, env), _eval(e.b, env))


def _prefetch_site(func):
    """(loops from the outermost down, the If, the prefetch loop, the load's indices) of the
    one prefetch in ``func``."""
    found = []

    def walk(node, loops):
        kind = _tvm.node_kind(node)
        if kind == "For":
            walk(node.body, loops + [node])
        elif kind == "SeqStmt":
            for s in node.seq:
                walk(s, loops)
        elif kind in ("SBlockRealize",):
            walk(node.block, loops)
        elif kind in ("SBlock",):
            walk(node.body, loops)
        elif kind == "IfThenElse":
            calls = []
            _tvm.post_order_visit(node.then_case, lambda n: calls.append(n) if
                                  _tvm.node_kind(n) == "Call" and "prefetch" in str(n) else None)
            if calls:
                found.append((loops, node))

    walk(func.body, [])
    assert len(found) == 1, f"{len(found)} prefetch sites"
    loops, site = found[0]
    pf = site.then_case
    assert _tvm.node_kind(pf) == "For" and str(pf.kind) in ("ForKind.UNROLLED", "3", "unroll")
    loads = []
    _tvm.post_order_visit(pf.body, lambda n: loads.append(n) if _tvm.load_source(n) is not None
                          else None)
    (load,) = loads
    return loops, site, pf, load


@pytest.mark.parametrize("target,cin,cout,h,w,k,stride,tiles", CASES)
def test_every_weight_line_of_the_next_tile_is_prefetched_once(target, cin, cout, h, w, k,
                                                                stride, tiles):
    func, (x, wt, packed, pad, lanes, oshape) = _kernel(target, cin, cout, h, w, k, stride, tiles)
    loops, site, pf, load = _prefetch_site(func)
    assert _tvm.load_source(load).name == "kernel"  # it prefetches the weights
    assert cpu.WEIGHT_PREFETCH not in str(func)  # the annotation is taken off
    # the outer loops: the parallel (output tile, row), the pixel tiles, the reduction's loops
    assert str(loops[0].kind) in ("ForKind.PARALLEL", "1", "parallel")
    names = [lp.loop_var.name for lp in loops]
    extents = [int(lp.extent) for lp in loops]
    t_o, t_w = tiles
    o_blocks, oh, ow = oshape[1], oshape[2], oshape[3]
    tiles_o = o_blocks // t_o
    assert extents[0] == tiles_o * oh and extents[1] == ow // t_w
    positions = int(np.prod(extents[2:]))  # input blocks x window x quads
    assert positions == packed.shape[1] * k * k * packed.shape[4]
    got = {}  # output tile -> Counter of (weight index) prefetched
    for it in np.ndindex(*extents):
        env = dict(zip(names, (int(v) for v in it)))
        if not _eval(site.condition, env):
            continue
        tile = env[names[0]] // oh
        for p in range(int(pf.extent)):
            env[pf.loop_var.name] = p
            idx = tuple(_eval(i, env) for i in load.indices)
            assert all(0 <= i < s for i, s in zip(idx, packed.shape)), idx  # inside the weights
            got.setdefault(tile, []).append(idx)
    assert tiles_o - 1 not in got  # the last tile prefetches nothing
    for tile in range(tiles_o - 1):
        want = sorted((o, c, ky, kx, q, 0, 0) for o in range((tile + 1) * t_o, (tile + 2) * t_o)
                      for c in range(packed.shape[1]) for ky in range(k) for kx in range(k)
                      for q in range(packed.shape[4]))
        assert sorted(got.get(tile, [])) == want, tile  # each line of the next tile, once


def _stored_sums(asm) -> list:
    """The vector stores of a dot product's accumulator as it is (no instruction wrote the
    register since the dot): accumulators kept in memory.  The epilogue's stores write shifted
    values."""
    fresh, found = set(), []
    for line in asm.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        op, args = parts[0], [a.strip() for a in re.split(r",\s*(?![^()]*\))", parts[1])]
        if op == "vpdpbusd":
            fresh.add(args[-1])
        elif op.startswith("vmov") and args[0] in fresh and "(" in args[-1]:
            found.append(line)
        elif args[-1].startswith("%"):
            fresh.discard(args[-1])
    return found


def test_heap_accumulators_are_stored_at_every_prefetch():
    # why the presets keep kernel buffers on the stack: the 1 KiB accumulator tile of CASES[0]
    # through TVM's workspace calls (its rule: under 1 KiB on the stack) is stored to memory
    # after every dot product of the prefetching loop (3x slower); on the stack it is not
    trap = "\tvpdpbusd\t%zmm21, %zmm20, %zmm19\n\tvmovdqu64\t%zmm19, (%rax)\n"
    ok = "\tvpdpbusd\t%zmm21, %zmm20, %zmm19\n\tvpsrad\t$3, %zmm19, %zmm19\n" \
         "\tvmovdqa64\t%zmm19, 64(%rcx,%r14,4)\n"
    assert _stored_sums(trap) and not _stored_sums(ok)
    func, _ = _kernel(*CASES[0])
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    for stack, stored in ((0, True), (get_target("x86-avx512").stack_buffer_bytes, False)):
        lib = tvm.compile(mod, target=get_target("x86-avx512").tvm(),
                          tir_pipeline=_tvm.tir_pipeline(stack))
        assert bool(_stored_sums(kernel_source(lib).split("main_compute_:")[1])) == stored


def _has(flags) -> bool:
    info = read_cpuinfo()
    return info is not None and set(flags) <= info.flags


@pytest.mark.parametrize("target,cin,cout,h,w,k,stride,tiles", CASES)
def test_prefetching_kernel_is_exact_with_accumulators_in_registers(target, cin, cout, h, w, k,
                                                                    stride, tiles):
    preset = get_target(target)
    func, (x, wt, packed, pad, lanes, oshape) = _kernel(target, cin, cout, h, w, k, stride,
                                                        tiles, seed=1)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    lib = tvm.compile(mod, target=preset.tvm(),
                      tir_pipeline=_tvm.tir_pipeline(preset.stack_buffer_bytes))
    asm = kernel_source(lib).split("main_compute_:")[1]
    assert "\tprefetcht0\t" in asm
    assert "\tvpdpbusd\t" in asm
    assert not _stored_sums(asm)
    if not _has(preset.cpu_flags):
        pytest.skip(f"this CPU lacks {target}'s flags: the kernel built and checked, not run")
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros(oshape, "int32"), dev)
    lib["main"](tvm.runtime.tensor(block(x, lanes), dev), tvm.runtime.tensor(packed, dev), y)
    assert np.array_equal(unblock(y.numpy()), conv(x, wt, stride, pad) >> SHIFT)


def test_no_prefetch_where_the_sums_are_the_output():
    # a conv without an epilogue accumulates in its output buffer, which LLVM cannot tell from
    # the weights: the prefetch is left out (and its annotation taken off)
    func, _ = _kernel(*CASES[0], epilogue=False)
    text = str(func)
    assert "llvm.prefetch" not in text and cpu.WEIGHT_PREFETCH not in text
    assert "llvm.prefetch" in str(_kernel(*CASES[0])[0])


def test_no_prefetch_on_targets_without_it():
    # AVX2's vpmaddwd kernels (measured no faster) and x86-amx's VNNI convs (TVM's workspace
    # buffers there) are scheduled as before
    for target in ("x86", "x86-amx"):
        assert not find_dot(TARGETS[target].dot).prefetch_weights
    assert all(find_dot(TARGETS[t].dot).prefetch_weights for t in ("x86-avx512", "x86-avxvnni"))
    assert all(get_target(t).stack_buffer_bytes >= 1536 for t in ("x86-avx512", "x86-avxvnni"))


class _WideNet(torch.nn.Module):
    """Convs of 64 and 128 channels: several output tiles each (a prefetch in every one)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(128, 128, 1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y))
        y = torch.relu(self.c3(y)) + y
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.tuning
def test_models_prefetch_bit_exact_plain_and_from_tuning_records(tmp_path):
    # whole programs: the default build and one from tuning records (whose candidates were
    # timed without the prefetch: the annotation must not upset MetaSchedule, and the build
    # from the records must prefetch) both equal the NumPy integer reference
    from conftest import module_asm

    import f8tvm
    from f8tvm import api
    from f8tvm.reference import quantize_input, run_reference
    from f8tvm.schedules import dot_intrin
    from f8tvm.schedules.tuning import extract_tasks, tune

    preset = get_target("x86-avx512")
    if not _has(preset.cpu_flags):
        pytest.skip("this CPU lacks AVX-512 VNNI: tuning measures on it")
    torch.manual_seed(0)
    net = _WideNet().eval()
    x = torch.randn(1, 3, 16, 16)
    calib = [np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype("float32")]
    fused, _ = api.fuse(net, x, "x86-avx512", calib)
    tasks = [t for t in extract_tasks(fused) if t.kind == "conv"]
    db = str(tmp_path / "db")
    tune(tasks, preset.tvm(), dot_intrin(preset.dot), db, trials=2)
    rng = np.random.default_rng(3)
    for tuning_db in (None, db):
        cm = f8tvm.compile(net, x, target="x86-avx512", calib=calib, tuning_db=tuning_db)
        if tuning_db:
            assert cm.extra_meta["tuning"]["tuned"] == len(tasks)
        assert cm.audit.wide_multiplies == 0
        assert module_asm(cm).count("\tprefetcht0\t") >= 2
        for _ in range(2):
            q = quantize_input(rng.standard_normal((1, 3, 16, 16)).astype("float32"), cm.plan)
            assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))
