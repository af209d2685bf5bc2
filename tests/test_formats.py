"""The one per-op fixed-point format rule (``f8tvm/core/formats.py``): what each op does to
``(fl, eta)``, and that calibration, QAT and F8Net checkpoint import all decide every non-layer
op's format through it, and only through it.  No build: pure Python and NumPy (and torch for
the models).
"""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from conftest import make_small_net
from f8net_checkpoints import make_checkpoint

from f8tvm import qat
from f8tvm.api import import_model
from f8tvm.calibrate import collect_stats, plan_fixed_point
from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError
from f8tvm.core.graph import Graph, Node, extract_graph
from f8tvm.frontend import f8net


def _graph(op, in_shape, out_shape, attrs=None, two_inputs=False):
    nodes = [Node("x", "input", [], in_shape)]
    if two_inputs:
        nodes.append(Node("y", "input", [], in_shape))
    nodes.append(Node("n", op, ["x", "y"] if two_inputs else ["x"], out_shape, attrs or {}))
    return Graph(nodes, "x", "n")


# op, input shape, output shape, attrs, input fl (per channel) [and the second input's],
# input eta, expected fl, expected eta (None: the input's), expected clip_hi
RULE_TABLE = [
    ("relu", (1, 3, 4, 4), (1, 3, 4, 4), {}, [[2, 3, 4]], 0.5, [2, 3, 4], None, None),
    ("max_pool2d", (1, 2, 4, 4), (1, 2, 2, 2), {}, [[5, 1]], 1.25, [5, 1], None, None),
    # ReLU6 at fl (2, 3), eta 0.75: round(6 * 2**fl / 0.75) = 32, 64
    ("clip", (1, 2, 4, 4), (1, 2, 4, 4), {"lo": 0.0, "hi": 6.0}, [[2, 3]], 0.75, [2, 3], None,
     [32, 64]),
    # operands aligned to the finer format of each channel
    ("add", (1, 3, 4, 4), (1, 3, 4, 4), {}, [[2, 7, 4], [5, 3, 4]], 1.0, [5, 7, 4], None, None),
    # 7 x 7 pixels: k = round(log2 49) = 6, eta * 2**6 / 49
    ("global_avg_pool", (1, 2, 7, 7), (1, 2, 1, 1), {}, [[3, 4]], 0.5, [9, 10], 0.5 * 64 / 49,
     None),
    # channel count unchanged (a flatten of a pooled map)
    ("reshape", (1, 3, 1, 1), (1, 3), {"shape": (1, 3)}, [[1, 2, 3]], 1.0, [1, 2, 3], None,
     None),
    # NCHW -> (N, C*H*W): each channel's fl repeated over its pixels
    ("reshape", (1, 2, 2, 1), (1, 4), {"shape": (1, 4)}, [[1, 5]], 1.0, [1, 1, 5, 5], None,
     None),
    # a uniform format broadcast to any new channel count
    ("reshape", (1, 2, 3, 1), (1, 3, 2), {"shape": (1, 3, 2)}, [[4, 4]], 1.0, [4, 4, 4], None,
     None),
]


@pytest.mark.parametrize("op, in_shape, out_shape, attrs, fls, eta, want_fl, want_eta, clip",
                         RULE_TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(RULE_TABLE)])
def test_rule_table(op, in_shape, out_shape, attrs, fls, eta, want_fl, want_eta, clip):
    g = _graph(op, in_shape, out_shape, attrs, two_inputs=len(fls) == 2)
    fl = {name: np.asarray(f, np.int64) for name, f in zip(["x", "y"], fls)}
    etas = {"x": eta, "y": eta}
    f = formats.propagate(g["n"], g, fl, etas)
    assert f.fl.tolist() == want_fl
    assert f.eta == (eta if want_eta is None else want_eta)
    assert (f.clip_hi is None) if clip is None else f.clip_hi.tolist() == clip


def test_rule_options_and_refusals():
    g = _graph("global_avg_pool", (1, 2, 7, 7), (1, 2, 1, 1))
    fl, eta = {"x": np.array([3, 4])}, {"x": 0.5}
    # F8Net's official model: its own k, the 2**k / (H*W) left out of eta
    f = formats.propagate(g["n"], g, fl, eta, pool_k=5, pool_factor_in_eta=False)
    assert f.fl.tolist() == [8, 9] and f.eta == 0.5
    g = _graph("reshape", (1, 2, 3, 1), (1, 3, 2), {"shape": (1, 3, 2)})
    with pytest.raises(F8TVMError, match="cannot carry per-channel formats"):
        formats.propagate(g["n"], g, {"x": np.array([1, 2])}, {"x": 1.0})
    g = _graph("softmax", (1, 2), (1, 2))
    with pytest.raises(F8TVMError, match="op softmax .* no fixed-point format rule"):
        formats.propagate(g["n"], g, {"x": np.array([1, 2])}, {"x": 1.0})


def test_ranges_and_streams():
    assert formats.act_fl_range(True) == (0, 7) and formats.act_fl_range(False) == (0, 8)
    assert formats.weight_fl_range() == (0, 7)
    assert formats.act_fl_range(True, strict=False) == (-8, 20)
    assert formats.weight_fl_range(strict=False) == (-8, 24)
    # a residual add joins both operands' streams; a layer starts a new one
    nodes = [Node("x", "input", [], (1, 2, 4, 4)),
             Node("c1", "conv2d", ["x"], (1, 2, 4, 4)), Node("r", "relu", ["c1"], (1, 2, 4, 4)),
             Node("c2", "conv2d", ["r"], (1, 2, 4, 4)), Node("a", "add", ["c2", "r"], (1, 2, 4, 4)),
             Node("p", "global_avg_pool", ["a"], (1, 2, 1, 1))]
    index = formats.stream_index(Graph(nodes, "x", "p"))
    assert index["c1"] == index["r"] == index["c2"] == index["a"]
    assert len({index["x"], index["a"], index["p"]}) == 3


# ----------------------------------------------------------------------------- every source
def _calibrated():
    net = make_small_net()
    x = torch.zeros(1, 3, 16, 16)
    graph = extract_graph(*import_model(net, x))
    stats = collect_stats(graph, [torch.randn(4, 3, 16, 16).numpy()])
    return graph, lambda: plan_fixed_point(graph, stats, "mse"), {}


class _QATNet(torch.nn.Module):
    """Every op kind as modules (QAT swaps modules): ReLU, max-pool, ReLU6, a residual add, a
    global average pool and a flatten."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                                nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.pw(self.dw(x)) + x
        return self.fc(torch.flatten(self.pool(x), 1))


def _qat():
    net = _QATNet().eval()
    shape = (2, 3, 16, 16)
    q = qat.prepare(net, torch.zeros(shape), qat.QATConfig(per_channel=True, strict=False),
                    calib=[torch.randn(shape).numpy()])
    graph = extract_graph(*import_model(qat.to_float(q), torch.zeros(shape)))
    build = qat.plan_for(q)
    return graph, lambda: build(graph), {}


def _f8net():
    sd = make_checkpoint("resnet18", seed=0, width=0.125, num_classes=10, input_size=32)
    with warnings.catch_warnings():  # at 32x32 the official 7x7 pool sees one pixel: expected
        warnings.simplefilter("ignore", UserWarning)
        ck = f8net.load_checkpoint(sd, "resnet18", input_size=32)
    graph = extract_graph(*import_model(ck.model, ck.example_input))
    # the official model shifts its average pool by its own k and folds the rest into the
    # classifier's weights
    return graph, lambda: ck.plan_for(graph), dict(pool_k=ck.info["pool_shift"],
                                                    pool_factor_in_eta=False)


SOURCES = {"calibrate": _calibrated, "qat": _qat, "f8net-checkpoint": _f8net}
# the op kinds each source's test model has (F8Net's architectures have no clip)
OPS = {"calibrate": {"relu", "clip", "add", "max_pool2d", "global_avg_pool", "reshape"},
       "qat": {"relu", "clip", "add", "max_pool2d", "global_avg_pool", "reshape"},
       "f8net-checkpoint": {"relu", "add", "max_pool2d", "global_avg_pool", "reshape"}}


@pytest.fixture(scope="module", params=list(SOURCES))
def planned(request):
    """A source's graph and plan, with every call of the rule made while planning recorded."""
    torch.manual_seed(0)
    graph, make_plan, opts = SOURCES[request.param]()
    calls = []
    real = formats.propagate

    def spy(node, *args, **kw):
        calls.append(node.name)
        return real(node, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(formats, "propagate", spy)
        plan = make_plan()
    return request.param, graph, plan, opts, calls


def test_every_source_decides_non_layer_formats_by_the_rule(planned):
    source, graph, plan, opts, calls = planned
    ops = set()
    for n in graph.nodes:
        if n.op == "input" or n.is_layer:
            continue
        ops.add(n.op)
        assert n.name in calls, f"{source}: {n.op} {n.name} was decided outside the rule"
        f = formats.propagate(n, graph, plan.fl, plan.eta, **opts)
        assert np.array_equal(plan.fl[n.name], f.fl), (source, n.name)
        assert plan.eta[n.name] == f.eta, (source, n.name)
        if f.clip_hi is not None:
            assert np.array_equal(plan.clip_hi[n.name], f.clip_hi), (source, n.name)
    assert ops == OPS[source]


def test_every_source_hands_over_a_frozen_plan(planned):
    """The plan is the one hand-off: no consumer can change a decision in it."""
    source, graph, plan, _, _ = planned
    out = graph.output
    layer = next(iter(plan.layers.values()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.input_fl = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.in_fl = 3
    with pytest.raises(TypeError):
        plan.fl[out] = np.zeros(1)
    with pytest.raises(TypeError):
        plan.info["note"] = source
    for arr in (plan.fl[out], layer.w_int, layer.b_int, layer.w_fl,
                *plan.clip_hi.values()):
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0
    changed = dataclasses.replace(plan, scheme="edited")  # a changed plan is a new plan
    assert changed.scheme == "edited" and plan.scheme != "edited"


def test_nonnegative_follows_relu_clip_and_what_keeps_the_sign():
    nodes = [Node("x", "input", [], (1, 2, 4, 4)), Node("c", "conv2d", ["x"], (1, 2, 4, 4)),
             Node("r", "relu", ["c"], (1, 2, 4, 4)), Node("m", "max_pool2d", ["r"], (1, 2, 2, 2)),
             Node("c2", "conv2d", ["m"], (1, 2, 2, 2)), Node("k", "clip", ["c2"], (1, 2, 2, 2)),
             Node("a", "add", ["m", "k"], (1, 2, 2, 2)),
             Node("b", "add", ["a", "c2"], (1, 2, 2, 2)),
             Node("p", "global_avg_pool", ["a"], (1, 2, 1, 1))]
    sign = formats.nonnegative(Graph(nodes, "x", "p"))
    assert [n.name for n in nodes if sign[n.name]] == ["r", "m", "k", "a", "p"]
