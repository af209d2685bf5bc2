"""The bench's peers and the checks that prove each ran its integer fast path
(``tools/bench_peers.py``), the instruction profile (``tools/isa_profile.py``), the peak
microbenchmarks (``tools/peak.py``) and the machine description every output carries.

Small models only: what is checked is what the checks conclude, never a time.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

from f8tvm.targets.cpu import INT8_FLAGS, read_cpuinfo
from tools import bench, bench_peers, isa_profile, peak

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime/onnx not installed "
                               "(pip install -e '.[bench]')")


def _shared_bias_net():
    """Three conv+BN+ReLU blocks whose BatchNorms are at their defaults: their folded biases are
    all equal (zero), so the legacy ONNX exporter stores one and feeds the others through
    ``Identity`` nodes -- as it does for ResNet-18 with seeded weights, the bench's old setup."""
    torch.manual_seed(0)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(3, 8), *block(8, 8), *block(8, 8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def ort_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("ort")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 16, 16)).astype("float32")
    calib = [rng.standard_normal((4, 3, 16, 16)).astype("float32")]
    return _shared_bias_net(), x, calib, d


def _checked(path):
    optimized = os.path.splitext(path)[0] + ".optimized.onnx"
    bench_peers._ort_session(path, 1, optimized)  # writes the graph ORT runs
    return bench_peers.check_ort_graph(optimized)


@needs_ort
def test_ort_check_fails_without_preprocessing(ort_case):
    """The bench's old ORT setup (legacy export, no quant_pre_process): ORT cannot fuse the QDQ
    pairs behind the Identity nodes and runs float convolutions; the check says so."""
    net, x, calib, d = ort_case
    fp32 = str(d / "legacy.onnx")
    with bench_peers.quiet():
        bench_peers.export_onnx(net, x, fp32, dynamo=False)
        q = bench_peers.quantize_onnx(fp32, str(d / "legacy.qdq.onnx"), calib, "qdq",
                                      preprocess=False)
    fp = _checked(q)
    assert fp.ok is False
    assert "float Conv" in fp.detail and "DequantizeLinear" in fp.detail
    assert fp.label() == "FAILED"


@needs_ort
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-export", "dynamo-export"])
@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_ort_check_passes_with_preprocessing(ort_case, dynamo, fmt):
    """Set up as ORT's documentation says (quant_pre_process, then quantize_static), in both
    formats and with either exporter: every conv and the classifier run as integer ops."""
    if dynamo and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the dynamo exporter needs onnxscript")
    net, x, calib, d = ort_case
    fp32 = str(d / f"m-{dynamo}.onnx")
    with bench_peers.quiet():
        bench_peers.export_onnx(net, x, fp32, dynamo=dynamo)
        q = bench_peers.quantize_onnx(fp32, str(d / f"m-{dynamo}.{fmt}.onnx"), calib, fmt)
    fp = _checked(q)
    assert fp.ok is True, fp.detail
    assert "3 QLinearConv" in fp.detail and "QGemm" in fp.detail


def test_ort_check_sees_through_layout_ops(tmp_path):
    """A float Conv fed by a DequantizeLinear through a Transpose still fails; a Conv fed by a
    float input passes only if integer ops ran."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def graph(dequantize_first):
        nodes = []
        src = "x"
        if dequantize_first:
            nodes += [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                      helper.make_node("Transpose", ["xd"], ["xt"], perm=[0, 1, 3, 2])]
            src = "xt"
        nodes.append(helper.make_node("Conv", [src, "w"], ["y"]))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [1, 1, 4, 4])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, None)])
        path = tmp_path / f"g{dequantize_first}.onnx"
        onnx.save(helper.make_model(g), str(path))
        return str(path)

    bad = bench_peers.check_ort_graph(graph(True))
    assert bad.ok is False and "1 float Conv(s) fed by DequantizeLinear" in bad.detail
    plain = bench_peers.check_ort_graph(graph(False))
    assert plain.ok is False and "no integer op" in plain.detail


# ----------------------------------------------------------------------------- PyTorch
def _exec(kind, impl, mds, shape="mb1_ic64oc64_ih56oh56kh3sh1dh0ph1_iw56ow56kw3sw1dw0pw1"):
    """One line of oneDNN's verbose log (v1): an executed primitive."""
    return ",".join(["onednn_verbose", "v1", "primitive", "exec", "cpu", kind, impl,
                     "forward_training", mds, "", "alg:convolution_direct", shape, "0.2"])


_U8S8 = "src:u8::blocked:acdb::f0 wei:s8:a:blocked:AcdB16b32a4b::f0 dst:u8::blocked:acdb::f0"
_LOG = "\n".join([
    "onednn_verbose,v1,info,oneDNN v3.9.0",
    _exec("reorder", "jit:uni", "src:f32::blocked:abcd::f0 dst:u8::blocked:acdb::f0"),
    _exec("convolution", "brg_conv_fwd:avx10_1_512_amx", _U8S8),
    _exec("convolution", "brgconv_1x1:avx512_core_vnni", _U8S8.replace("32a4b", "64a4b")),
])


def test_torch_check_reads_operators_and_kernels():
    from collections import Counter

    int8_ops = Counter({"quantized::conv2d": 2, "quantized::linear": 1, "aten::quantize": 1})
    fp = bench_peers.check_torch(int8_ops, _LOG, convs=2)
    assert fp.ok is True and fp.isa == "AMX+AVX-512 VNNI", fp
    assert "2 quantized::conv2d" in fp.detail and "u8xs8 on AMX" in fp.detail
    # int8 convs oneDNN did not run (FX hands depthwise convs to FBGEMM): still int8
    fp = bench_peers.check_torch(Counter({"quantized::conv2d": 3}), _LOG, convs=3)
    assert fp.ok is True and "FBGEMM" in fp.isa
    # a float convolution in an int8 row fails (eager or Inductor's), and so does a reference
    # kernel or a conv that ran as neither
    floats = Counter({"onednn::qconv_pointwise": 2, "mkldnn::_convolution_pointwise": 1})
    fp = bench_peers.check_torch(floats, _LOG, convs=3)
    assert fp.ok is False and "1 float convolution" in fp.detail
    eager = Counter({"quantized::conv2d": 2, "aten::convolution": 1, "aten::conv2d": 1})
    assert bench_peers.check_torch(eager, _LOG, convs=3).ok is False
    ref = _LOG.replace("brgconv_1x1:avx512_core_vnni", "ref:any")
    fp = bench_peers.check_torch(int8_ops, ref, convs=2)
    assert fp.ok is False and "reference" in fp.detail
    fp = bench_peers.check_torch(int8_ops, _LOG, convs=5)
    assert fp.ok is False and "only 2 of 5" in fp.detail
    # a float row is described, never failed
    fp32 = _LOG.replace("u8", "f32").replace("s8", "f32")
    fp = bench_peers.check_torch(Counter({"aten::convolution": 2}), fp32, convs=2, int8=False)
    assert fp.ok is None and fp.isa == "AMX+AVX-512 VNNI"


@pytest.mark.parametrize("impl, isa", [
    ("brg_conv_fwd:avx10_1_512_amx", "AMX"), ("brg_conv_fwd:avx512_core_amx", "AMX"),
    ("jit_int8:avx512_core_vnni", "AVX-512 VNNI"), ("brgconv:avx2_vnni", "AVX-VNNI"),
    ("jit_int8:avx2", "AVX2"), ("jit:avx512_core", "AVX-512"), ("ref:any", "ref:any"),
])
def test_onednn_isa_names(impl, isa):
    assert bench_peers.onednn_isa(impl) == isa


def test_torch_check_of_pytorch_int8_and_float_models():
    """PyTorch's own int8 model (FX, x86 engine), as the bench builds it, passes: every conv an
    int8 operator, the kernels named; the float model, checked as if it were int8, fails."""
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no x86 quantized engine")
    net = _shared_bias_net()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, 16, 16)).astype("float32"))
    calib = [rng.standard_normal((4, 3, 16, 16)).astype("float32")]
    with bench_peers.quiet():
        q = bench_peers._fx(net, x, calib)
    with torch.no_grad():
        fp = bench_peers.check_torch(*bench_peers.torch_trace(lambda: q(x)), convs=3)
        assert fp.ok is True, fp.detail
        assert "3 quantized::conv2d" in fp.detail and fp.isa
        fp = bench_peers.check_torch(*bench_peers.torch_trace(lambda: net(x)), convs=3)
    assert fp.ok is False and "3 float convolution" in fp.detail


# ----------------------------------------------------------------------------- ISA profile
@pytest.mark.parametrize("asm, cls", [
    ("  1000:\ttdpbusd %tmm6,%tmm4,%tmm0", isa_profile.AMX),
    ("  1000:\tvpdpbusds %zmm0,%zmm4,%zmm8\n  1006:\tvpbroadcastd (%r10),%zmm4",
     isa_profile.AVX512_VNNI),
    ("  1000:\t{vex} vpdpbusd %ymm14,%ymm15,%ymm0", isa_profile.AVX_VNNI),
    ("  1000:\tvpdpbusd %ymm14,%ymm15,%ymm0", isa_profile.VNNI_YMM),
    ("  1000:\tvpmaddubsw %ymm1,%ymm2,%ymm3\n  1004:\tvpmaddwd %ymm3,%ymm13,%ymm3",
     isa_profile.MADDUBSW),
    ("  1000:\tvpmaddwd %ymm0,%ymm3,%ymm8", isa_profile.MADDWD),
    ("  1000:\tvfmadd231ps (%rax),%zmm1,%zmm2", isa_profile.FLOAT),
    ("  1000:\tmov %rax,%rbx", isa_profile.OTHER),
])
def test_isa_classes(asm, cls):
    assert isa_profile.classify(asm) == cls


def test_isa_profile_of_a_running_kernel():
    """Sampling this process while a NumPy float matmul runs finds float code, or says it
    cannot sample (no perf on this machine)."""
    a = np.ones((256, 256), np.float32)
    result = isa_profile.profile(lambda: a @ a, seconds=0.5)
    if result is None:
        pytest.skip("perf cannot sample here")
    assert result["samples"] > 0 and abs(sum(result["mix"].values()) - 1) < 1e-9


# ----------------------------------------------------------------------------- peak, machine
def test_peak_microbenchmarks_follow_the_cpu_flags():
    cpu = read_cpuinfo()
    if cpu is None or not cpu.flags:
        pytest.skip("not an x86 Linux machine")
    for instruction, flag in peak.NEEDS.items():
        rate = peak.peak_macs(instruction, 1, cpu.flags)
        if flag in cpu.flags:
            assert rate is not None and rate > 0, instruction
        else:
            assert rate is None
        # a CPU without the flag is never asked to run it
        assert peak.peak_macs(instruction, 1, frozenset()) is None
    assert peak.peak_macs("sdot", 1, cpu.flags) is None  # no microbenchmark


def test_machine_info_names_the_cpu_and_its_int8_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU\nflags\t\t: fpu avx2 avx512f "
                    "avx512_vnni amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: Example "
                    "CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_int8\n")
    cpu = read_cpuinfo(str(info))
    m = bench.machine_info(cpu)
    assert m["cpu"] == "Example CPU" and m["cores"] == 2 and m["cls"] == "x86-amx-2vcpu"
    assert m["flags"] == {"avx2": True, "avx512_vnni": True, "avx_vnni": False,
                          "amx_int8": True}
    assert "Example CPU, 2 cores: avx2 avx512_vnni amx_int8" == m["describe"]
    info.write_text("processor\t: 0\nmodel name\t: Old\nflags\t\t: fpu avx2\n")
    assert bench.machine_info(read_cpuinfo(str(info)))["cls"] == "x86-avx2-1vcpu"
    assert set(m["flags"]) == set(INT8_FLAGS)
