"""No int32 value of a compiled program can wrap: the static bounds (f8tvm/core/bounds.py) hold
every value the NumPy reference computes, the planner changes a plan whose bound passes
2**31 - 1 (or fails naming the layer), and the compiled program is bit-exact with the reference
on the changed plan."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import relax_main, run_relax

import f8tvm
from f8tvm.api import import_model
from f8tvm.calibrate import collect_stats, plan_fixed_point
from f8tvm.core import bounds
from f8tvm.core.fixedpoint import INT32_MAX, qrange, rq_reference
from f8tvm.core.graph import extract_graph
from f8tvm.fakequant import FakeQuantModel
from f8tvm.passes.quantize_to_integer import emit_requantize
from f8tvm.reference import quantize_input, run_reference
from tools import fuzz


class TwoRanges(nn.Module):
    """The issue's repro: two residual branches whose ranges differ ~1000x, then a global
    average pool over 32x32 pixels (the add aligns the wide branch to the narrow one's FL)."""

    def __init__(self, gap=True, small=0.1):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.big = nn.Conv2d(8, 8, 3, padding=1)
        self.small = nn.Conv2d(8, 8, 3, padding=1)
        self.gap = gap
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 if gap else 8 * 8 * 8, 10)
        with torch.no_grad():
            self.big.weight.mul_(100)
            self.big.bias.mul_(100)
            self.small.weight.mul_(small)
            self.small.bias.mul_(small)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.big(y) + self.small(y))
        return self.fc(torch.flatten(self.pool(y) if self.gap else y, 1))


def _planned(model, size, batch=8, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(batch, 3, size, size)
    graph = extract_graph(*import_model(model.eval(), x[:1]))
    return graph, plan_fixed_point(graph, collect_stats(graph, [x.numpy()]), "mse"), x


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _check_ranges(graph, plan, inputs):
    """Every tensor the reference computes lies in its static range."""
    ranges = bounds.analyse(graph, plan).ranges
    for q in inputs:
        env = run_reference(graph, plan, q, return_all=True)
        for name, (lo, hi) in ranges.items():
            v = env[name]
            shape = (1, -1) + (1,) * (v.ndim - 2)
            assert np.all(v >= lo.reshape(shape)) and np.all(v <= hi.reshape(shape)), name


@pytest.mark.unit
def test_repro_plan_would_wrap_and_the_fitted_plan_does_not():
    torch.manual_seed(0)
    model = TwoRanges()
    graph, plan, x = _planned(model, 32)
    q = quantize_input(x.numpy(), plan)
    # as calibrated, the pool's sum wraps on the calibration data itself
    assert not bounds.int32_bounds(graph, plan)[-2].fits
    with pytest.raises(OverflowError, match="pool"):
        run_reference(graph, plan, q)
    fitted = bounds.fit_int32(graph, plan)
    assert [c["change"] for c in fitted.info["overflow_changes"]] == ["pool_shift"]
    assert all(b.fits for b in bounds.check_int32(graph, fitted))
    out = run_reference(graph, fitted, q)
    with torch.no_grad():
        ref = model(x).numpy()
    real = out * np.exp2(-fitted.fl[graph.output].astype(np.float64)) * fitted.eta[graph.output]
    assert _cosine(real, ref) > 0.999
    assert np.array_equal(real.argmax(1), ref.argmax(1))
    # the fake-quant model (float) computes the same program exactly
    fake = FakeQuantModel(graph, fitted)(torch.from_numpy(x.numpy()), return_stored=True)
    assert np.array_equal(fake.numpy() * np.exp2(fitted.fl[graph.output]), out)
    # a plan that fits comes back as it was
    assert bounds.fit_int32(graph, fitted) is fitted


@pytest.mark.unit
def test_an_add_that_could_wrap_rounds_its_operands_instead():
    torch.manual_seed(1)
    model = TwoRanges(gap=False, small=1e-4)  # a 1e6 gap: aligning up would pass 2**31
    graph, plan, x = _planned(model, 8)
    assert not all(b.fits for b in bounds.int32_bounds(graph, plan))
    fitted = bounds.fit_int32(graph, plan)
    changes = fitted.info["overflow_changes"]
    assert [c["change"] for c in changes] == ["add_fl"] and min(changes[0]["lowered_by"]) > 0
    add = changes[0]["tensor"]
    a, b = graph[add].inputs
    assert np.all(fitted.fl[add] < np.maximum(plan.fl[a], plan.fl[b]))
    q = quantize_input(x.numpy(), fitted)
    out = run_reference(graph, fitted, q)
    with torch.no_grad():
        ref = model(x).numpy()
    real = out * np.exp2(-fitted.fl[graph.output].astype(np.float64)) * fitted.eta[graph.output]
    assert _cosine(real, ref) > 0.999
    fake = FakeQuantModel(graph, fitted)(torch.from_numpy(x.numpy()), return_stored=True)
    assert np.array_equal(fake.numpy() * np.exp2(fitted.fl[graph.output]), out)


@pytest.mark.unit
@pytest.mark.parametrize("seed", [2008, 2049, 2110, 2171, 2246, 3, 5])
def test_static_ranges_hold_every_value(seed):
    """Random graphs (some with a lowered add or a pre-shifted pool): on random and extreme
    inputs, every value the reference computes is inside its range."""
    spec = fuzz.random_spec(seed)
    model = fuzz.FuzzNet(spec)
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((4, *spec["input"])).astype("float32")
    graph = extract_graph(*import_model(model, torch.from_numpy(c[:1])))
    plan = bounds.fit_int32(graph, plan_fixed_point(graph, collect_stats(graph, [c]), "mse"))
    lo, hi = qrange(plan.input_signed)
    shape = (1, *spec["input"])
    _check_ranges(graph, plan, [quantize_input(c[:1], plan), rng.integers(lo, hi + 1, shape),
                                np.full(shape, lo), np.full(shape, hi)])


@pytest.mark.unit
def test_a_layer_that_cannot_fit_is_named():
    graph, plan, _ = _planned(TwoRanges(), 8)
    lp = plan.layers["small_pre"]
    huge = dataclasses.replace(lp, b_int=np.full_like(lp.b_int, INT32_MAX - 5))
    bad = dataclasses.replace(plan, layers={**plan.layers, lp.name: huge})
    with pytest.raises(bounds.OverflowBoundError, match=r"layer small \(Conv2d\): the kernel "
                                                        r"partial sums can reach \d\.\d+e\+09"):
        bounds.fit_int32(graph, bad)


@pytest.mark.unit
def test_zoo_resnet18_at_224_saturates_its_pool_instead_of_changing_the_plan():
    """ResNet-18's last stream summed over 7x7 pixels can pass 2**31 in the worst case; its
    readers (the classifier's requantize) saturate first, so the sum's inputs are clipped where
    that happens (exact) and the plan stays as calibrated."""
    model, _ = f8tvm.models.get_model("resnet18", randomize_bn=True)
    x = torch.randn(2, 3, 224, 224)
    graph = extract_graph(*import_model(model.eval(), x[:1]))
    plan = plan_fixed_point(graph, collect_stats(graph, [x.numpy()]), "mse")
    walk = bounds.analyse(graph, plan)
    assert list(walk.pool_clip) == ["avgpool"]
    assert bounds.fit_int32(graph, plan) is plan
    pool = next(b for b in walk.bounds if b.tensor == "avgpool")
    assert pool.fits and pool.what == "sum of clipped inputs"


@pytest.mark.host
def test_saturating_left_shift_is_exact():
    """A requantize whose left shift could pass int32 clips first where the 8-bit result
    saturates anyway: bit-exact with the int64 formula on values up to the int32 limits."""
    vals = np.array([[-(2**31) + 1, -(2**30), -70000, -129, -5, -4, -1, 0, 1, 3, 4, 5, 64,
                      2**20, 2**30, INT32_MAX]], "int32")
    for shift, signed in ((-5, True), (-5, False), (-1, True), (-12, False)):
        lo, hi = np.array([vals.min()], float), np.array([vals.max()], float)
        sat = bounds.needs_saturation(lo, hi, np.array([shift]))
        assert sat.all()
        mod = relax_main(vals.shape, "int32",
                         lambda bb, x, s=shift, g=signed, t=sat: emit_requantize(bb, x, s, g, "r",
                                                                                  t))
        got = run_relax(mod, vals)[0]
        want = rq_reference(vals.astype(np.int64), shift, signed)
        assert np.array_equal(got.astype(np.int64), want), (shift, signed)


@pytest.mark.host
def test_repro_compiles_to_a_correct_program(tmp_path):
    torch.manual_seed(0)
    model = TwoRanges()
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    cm = f8tvm.compile(model, x[:1], target="x86", calib=[x])
    with torch.no_grad():
        ref = model(x).numpy()
    outs, top = [], 0
    for i in range(8):
        q = quantize_input(x[i:i + 1].numpy(), cm.plan)
        got, _ = cm.run_int(q.astype("uint8" if not cm.plan.input_signed else "int8"))
        want = run_reference(cm.graph, cm.plan, q)
        assert np.array_equal(np.asarray(got, np.int64), want)
        outs.append(cm.run(x[i:i + 1].numpy()))
    out = np.concatenate(outs)
    top = int(np.sum(out.argmax(1) == ref.argmax(1)))
    assert _cosine(out, ref) > 0.999 and top == 8
    so, js = cm.export(str(tmp_path / "repro.so"))
    with open(js) as f:
        meta = json.load(f)
    ov = meta["overflow"]
    assert ov["proved"] and ov["least_headroom"]["headroom_bits"] >= 0
    assert [c["tensor"] for c in ov["changes"]] == ["pool"]
    assert {r["tensor"] for r in ov["tensors"]} >= {"add", "pool", "fc_pre"}
    assert all(r["headroom_bits"] >= 0 for r in ov["tensors"])
    assert meta["plan"]["pool_shift"]["pool"] == ov["changes"][0]["shifted_by"][0]
