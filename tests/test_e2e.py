"""Whole models: compiled module vs NumPy reference and fake-quant model; export and runtime."""

import json
import os

import numpy as np
import pytest
import torch
from macs import blocked_macs

import f8tvm
from f8tvm import runtime
from f8tvm.fakequant import FakeQuantModel
from f8tvm.models import get_model
from f8tvm.reference import quantize_input, run_reference

SIZE = 32


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def built(request, tmp_path_factory):
    torch.manual_seed(0)
    model, _ = get_model(request.param, randomize_bn=True)
    calib = [torch.randn(2, 3, SIZE, SIZE) for _ in range(2)]
    cm = f8tvm.compile(model, torch.zeros(1, 3, SIZE, SIZE), target="x86", calib=calib)
    out = tmp_path_factory.mktemp(request.param)
    so, meta = cm.export(str(out / f"{request.param}.so"))
    return request.param, model, cm, so, meta


def _inputs(cm, n=2):
    rng = np.random.default_rng(7)
    return [rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32") for _ in range(n)]


def test_bit_exact_with_numpy_reference(built):
    _, _, cm, so, _ = built
    m = runtime.load(so)
    for x in _inputs(cm):
        q = m.quantize(x)
        acc, fl = m.run_int(q)
        assert acc.dtype == np.int32
        assert np.array_equal(acc, run_reference(cm.graph, cm.plan, q.astype(np.int64)))
        assert fl == int(cm.plan.fl[cm.graph.output][0])


def test_runtime_quantize_matches_the_reference_on_ties_and_extremes(built):
    # the runtime quantizes in float32 (half the time of float64): still exactly F8Net's rounding
    _, _, cm, so, _ = built
    m = runtime.load(so)
    x = _inputs(cm, 1)[0] * 4
    step = np.float32(2.0**-m.input_fl)
    special = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, 128.5, -127.5, 255.5, 1e6],
                       np.float32) * step
    x.flat[:special.size] = special
    x.flat[special.size:special.size + 4] = [3.4e38, -3.4e38, 1e-42, -0.0]
    want = quantize_input(x, cm.plan)
    got = m.quantize(x)
    assert got.dtype == np.dtype("int8" if cm.plan.input_signed else "uint8")
    assert np.array_equal(got.astype(np.int64), want)


def test_fake_quant_model_agrees_exactly(built):
    _, _, cm, _, _ = built
    for x in _inputs(cm):
        acc, fl = cm.run_int(quantize_input(x, cm.plan).astype(
            "int8" if cm.plan.input_signed else "uint8"))
        stored = FakeQuantModel(cm.graph, cm.plan)(x, return_stored=True).numpy()
        assert np.array_equal(stored * 2.0**fl, acc.astype(np.float64))


def test_accuracy_against_float_model(built):
    _, model, cm, so, _ = built
    m = runtime.load(so)
    x = _inputs(cm, 1)[0]
    y = m.run(x)
    want = model(torch.from_numpy(x)).detach().numpy()
    assert np.corrcoef(y.ravel(), want.ravel())[0, 1] > 0.98


def test_metadata_and_audit(built):
    name, _, cm, so, meta_path = built
    meta = json.load(open(meta_path))
    assert meta["input"]["shape"] == [1, 3, SIZE, SIZE]
    assert meta["input"]["dtype"] in ("int8", "uint8")
    assert meta["audit"]["wide_multiplies"] == 0 and meta["audit"]["macs_8bit"] > 0
    layers = meta["plan"]["layers"]
    assert len(layers) == len(cm.graph.layers())
    assert all("in_shift" in r and "w_fl" in r for r in layers)
    assert meta["tvm_version"].startswith("0.27") and meta["f8tvm_version"]
    # the kernels execute the model's MACs plus those of channels padded to the dot block
    assert meta["audit"]["macs_8bit"] == blocked_macs(cm)
    # kernel by kernel: every kernel with products, named as in the module, adding up
    per_kernel = meta["audit"]["kernel_macs"]
    assert sum(per_kernel.values()) == meta["audit"]["macs_8bit"]
    assert all(v > 0 for v in per_kernel.values())
    assert any("conv2d" in k for k in per_kernel)


def test_runtime_rejects_bad_input(built):
    _, _, _, so, _ = built
    m = runtime.load(so)
    with pytest.raises(ValueError, match="shape"):
        m.run(np.zeros((1, 3, SIZE + 1, SIZE), np.float32))
    with pytest.raises(ValueError, match="float32"):
        m.run(np.zeros((1, 3, SIZE, SIZE), np.float64))
    with pytest.raises(ValueError, match="integer"):
        m.run_int(np.zeros((1, 3, SIZE, SIZE), np.float32))
    with pytest.raises(FileNotFoundError, match="missing.so"):
        runtime.load(os.path.join(os.path.dirname(so), "missing.so"))


def test_export_is_atomic(built, tmp_path, monkeypatch):
    _, _, cm, _, _ = built

    def boom(*a, **k):
        raise RuntimeError("link failed")

    monkeypatch.setattr(cm.executable, "export_library", boom, raising=False)
    with pytest.raises(RuntimeError):
        cm.export(str(tmp_path / "m.so"))
    assert os.listdir(tmp_path) == []


THREADS_PROBE = """
import glob, json, sys
import numpy as np
import f8tvm
from f8tvm import runtime
m = runtime.load(sys.argv[1])
m.run(np.zeros(m.input_shape, np.float32))  # the first parallel kernel makes TVM's pool
allowed = {}
for task in glob.glob("/proc/self/task/*/status"):
    line = [x for x in open(task).read().splitlines() if x.startswith("Cpus_allowed_list")][0]
    allowed[task.split("/")[4]] = line.split()[-1]
print(json.dumps(dict(allowed=allowed, bind=__import__("os").environ.get("TVM_BIND_THREADS"))))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs: a thread pool of one has no worker to pin")
def test_threads_are_left_to_the_os_unless_the_user_pins_them(built):
    """TVM pins its workers, each to a core, and not the calling thread, which then shares a
    worker's core in some runs; f8tvm makes ``TVM_BIND_THREADS=0`` the default, and a user's
    own setting stands."""
    import subprocess
    import sys

    _, _, _, so, _ = built
    if not f8tvm._uniform_cores(sorted(os.sched_getaffinity(0))):
        pytest.skip("big.LITTLE cores: TVM's pinning (big cores first) is kept by default here")
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    env["TVM_NUM_THREADS"] = "2"
    everything = None
    for bind, pinned in ((None, False), ("1", True)):
        run_env = dict(env, **({"TVM_BIND_THREADS": bind} if bind else {}))
        out = subprocess.run([sys.executable, "-c", THREADS_PROBE, so], env=run_env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["bind"] == (bind or "0")
        allowed = set(report["allowed"].values())
        everything = everything or report["allowed"][min(report["allowed"], key=int)]
        # a pinned worker is allowed fewer CPUs than the process's main thread
        assert (allowed != {everything}) == pinned, report


@pytest.mark.unit
def test_cores_are_uniform_unless_linux_says_otherwise(tmp_path):
    def sysfs(**files):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for cpu, (freq, capacity) in files.items():
            d = root / cpu
            if freq is not None:
                (d / "cpufreq").mkdir(parents=True)
                (d / "cpufreq" / "cpuinfo_max_freq").write_text(f"{freq}\n")
            if capacity is not None:
                d.mkdir(parents=True, exist_ok=True)
                (d / "cpu_capacity").write_text(f"{capacity}\n")
        return str(root)

    same = sysfs(cpu0=(3000000, 1024), cpu1=(3000000, 1024))
    assert f8tvm._uniform_cores([0, 1], same)
    assert f8tvm._uniform_cores([0, 1], sysfs())  # nothing exposed (a VM)
    assert f8tvm._uniform_cores([0, 1], sysfs(cpu0=(None, 1024), cpu1=(None, 1024)))
    big_little = sysfs(cpu0=(1800000, 446), cpu1=(1800000, 446), cpu2=(2400000, 1024))
    assert not f8tvm._uniform_cores([0, 1, 2], big_little)
    assert f8tvm._uniform_cores([0, 1], big_little)  # only the little ones are ours
    assert not f8tvm._uniform_cores([0, 1], sysfs(cpu0=(None, 512), cpu1=(None, 1024)))
