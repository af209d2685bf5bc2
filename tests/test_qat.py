"""F8Net QAT (f8tvm.qat): the method's pieces, and the compiled module == the QAT model."""

import numpy as np
import pytest
import torch
from torch import nn

import f8tvm
from f8tvm import qat
from f8tvm.core.errors import F8TVMError
from f8tvm.reference import quantize_input, run_reference
from tools.accuracy import TinyResNet


class MobileBlockNet(nn.Module):
    """ReLU6 modules, a depthwise conv, a linear-bottleneck residual (signed stream), a global
    average pool module: the EfficientNet-Lite constructs, small."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU6()
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.expand2 = nn.Conv2d(8, 8, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(8)
        self.project2 = nn.Conv2d(8, 8, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act0(self.bn0(self.stem(x)))
        y = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        x = self.bn3(self.project(y))  # linear bottleneck: no activation
        x = x + self.bn5(self.project2(self.bn4(self.expand2(x))))  # a signed residual stream
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


CASES = {
    # F8Net's conventional setting: raw pixels p/256 at FL 8, per-layer weights, F8Net ranges
    "resnet": (lambda: TinyResNet(4), (4, 1, 16, 16), qat.QATConfig(input_fl=8), False),
    # the Lite setting: signed input, per-channel weights, wide ranges, ReLU6
    "mobile": (MobileBlockNet, (4, 3, 16, 16),
               qat.QATConfig(per_channel=True, strict=False), True),
}


def _data(shape, signed, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    if signed:
        x = x * 2 - 1
    else:
        x = torch.floor(x * 256) / 256  # raw pixels
    return x


@pytest.fixture(scope="module", params=list(CASES))
def trained(request):
    torch.manual_seed(0)
    build, shape, cfg, signed = CASES[request.param]
    model = _randomize_bn(build())
    calib = [_data(shape, signed, s).numpy() for s in range(2)]
    q = qat.prepare(model, torch.zeros(shape), cfg, calib=calib)
    batches = [(_data(shape, signed, 10 + s), torch.randint(0, 5, (shape[0],)))
               for s in range(3)]
    losses = qat.train(q, batches, "conventional", steps=3, lr=0.01)
    return request.param, model, q, shape, signed, losses


def test_fake_quant_ties_to_even_and_masked_gradient():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0], requires_grad=True)
    y = qat.fake_quant(x, torch.tensor(0.0), True)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, -127.0]
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 1, 1, 0, 0]
    u = torch.tensor([-1.0, 0.75, 300.0], requires_grad=True)
    out = qat.fake_quant(u, torch.tensor(2.0), False)
    assert out.tolist() == [0.0, 0.75, 255 / 4]
    out.sum().backward()
    assert u.grad.tolist() == [0, 1, 0]  # the unsigned quantizer is also the ReLU


def test_std_rule():
    assert float(qat.std_fl(torch.tensor(1.0), True, 0, 7)) == 5  # floor(log2(40))
    assert float(qat.std_fl(torch.tensor(1.0), False, 0, 8)) == 6  # floor(log2(70))
    assert float(qat.std_fl(torch.tensor(1e-6), False, 0, 8)) == 8


def test_prepare_swaps_modules_and_shares_clipping_on_residual_streams():
    model = _randomize_bn(TinyResNet(4))
    q = qat.prepare(model, torch.zeros(1, 1, 16, 16))
    layers = {n: m for n, m in q.named_modules() if isinstance(m, qat.QLayer)}
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert all(m.bn is not None for n, m in layers.items() if n != "fc")
    assert isinstance(q.bn1, nn.Identity) and isinstance(q.avgpool, qat.QAvgPool)
    # the stem's output stream runs through block 0 (identity shortcut) into block 1's conv1
    # and its projection shortcut: one clipping level for all three consumers
    s = layers["layers.0.conv1"].in_stream
    assert layers["layers.1.conv1"].in_stream == s
    assert layers["layers.1.downsample.0"].in_stream == s
    assert q.f8_streams.kinds[s] == "alpha"
    assert q.f8_streams.masters[s] == "layers.0.conv1"
    assert layers["conv1"].signed is False and layers["layers.0.conv2"].signed is False
    # the original model is untouched
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.bn1, nn.BatchNorm2d)


def test_double_forward_and_fl_ema():
    model = _randomize_bn(TinyResNet(4))
    q = qat.prepare(model, torch.zeros(1, 1, 16, 16))
    layer = q.layers[0].conv1
    before = layer.bn.running_mean.clone()
    assert float(layer.input_fraclen) == 6.0
    q.train()
    x = _data((4, 1, 16, 16), False)
    q(x)
    assert not torch.equal(layer.bn.running_mean, before)  # BN statistics updated
    fl_b = float(layer.input_fraclen - 0.9 * 6.0) / 0.1
    assert abs(fl_b - round(fl_b)) < 1e-5 and 0 <= round(fl_b) <= 8  # EMA of an integer FL


def test_alpha_learns_through_pact_gradient(trained):
    _, _, q, *_ = trained
    grads = [p.grad for p in q.f8_streams.alphas]
    assert all(g is not None for g in grads) and any(float(g) != 0 for g in grads)


@pytest.mark.host
def test_compiled_module_reproduces_qat_model_exactly(trained):
    name, _, q, shape, signed, losses = trained
    assert np.all(np.isfinite(losses))
    cm = f8tvm.compile(qat.source(q, torch.zeros(shape)), target="host")
    assert cm.plan.input_signed == signed
    for seed in (100, 101):
        x = _data(shape, signed, seed).numpy()
        fq = qat.evaluate(q, [x])  # float64, eval mode
        qi = quantize_input(x, cm.plan)
        acc, fl = cm.run_int(qi.astype("int8" if signed else "uint8"))
        assert np.array_equal(acc.astype(np.float64), fq * 2.0**fl), name
        assert np.array_equal(run_reference(cm.graph, cm.plan, qi), acc)
        assert np.array_equal(cm.run(x), (fq * cm.plan.eta[cm.graph.output]).astype(np.float32))


def test_to_float_is_the_trained_float_network(trained):
    _, model, q, shape, signed, _ = trained
    f = qat.to_float(q)
    assert type(f) is type(model)
    assert set(f.state_dict()) == set(model.state_dict())
    x = _data(shape, signed, 7)
    with torch.no_grad():
        out = f(x)
    fq = torch.from_numpy(qat.evaluate(q, [x.numpy()]))
    for name, m in q.named_modules():  # the trained parameters and BN statistics, moved back
        if isinstance(m, qat.QLayer):
            assert torch.equal(f.get_submodule(name).weight, m.inner.weight)
            if m.bn is not None:
                assert torch.equal(f.get_submodule(m.bn_path).running_var, m.bn.running_var)
    # same network: the fake-quant model tracks its float twin (a random net, 8-bit: loosely)
    assert np.corrcoef(out.numpy().ravel(), fq.numpy().ravel())[0, 1] > 0.7


def test_functional_clip_is_rejected():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = nn.functional.relu6(self.conv(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    with pytest.raises(F8TVMError, match="functional"):
        qat.prepare(Functional().eval(), torch.zeros(1, 3, 8, 8))
