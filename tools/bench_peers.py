"""The bench's peers, each set up the way its own documentation says, and the check that proves
each ran its integer fast path.

* **ONNX Runtime** (``ort-int8-qdq``, ``ort-int8-qop``, ``ort-fp32``): export with
  ``torch.onnx.export`` (torch's default exporter), ``quant_pre_process`` (symbolic shape
  inference and graph clean-up: without it ``quantize_static`` leaves ``Identity`` nodes between
  weights and their ``DequantizeLinear``, so ORT cannot fuse the QDQ pairs and runs float
  convolutions), then ``quantize_static`` with uint8 activations and int8 per-channel weights in
  both formats, QDQ and QOperator.  Check: the graph ORT actually runs (the session's
  ``optimized_model_filepath``) holds no float ``Conv``/``Gemm``/``MatMul`` fed by a
  ``DequantizeLinear``.  Its instruction set is observed by sampling (:mod:`tools.isa_profile`).
* **PyTorch** (``torch-int8-pt2e``, ``torch-int8-fx``, ``torch-fp32``): PT2E as torchao
  documents it for x86 (``torch.export`` -> ``X86InductorQuantizer`` -> ``prepare_pt2e`` ->
  calibration -> ``convert_pt2e`` -> ``torch.compile`` with Inductor's freezing), FX graph mode
  with the ``x86`` qconfig and engine, and eager FP32.  Check: oneDNN, which runs the
  convolutions, reports every primitive it executes (its verbose mode, for one inference): all
  convolutions int8, and the implementation names the instruction set (AMX, AVX-512 VNNI, ...).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from . import isa_profile

ORT_INT8 = ("ort-int8-qdq", "ort-int8-qop")
TORCH_INT8 = ("torch-int8-pt2e", "torch-int8-fx")
PEERS = (*ORT_INT8, "ort-fp32", *TORCH_INT8, "torch-fp32")
# shorthands accepted by --systems
ALIASES = {"ort-int8": ORT_INT8, "torch-int8": TORCH_INT8}

# ops that compute in float (any domain: ORT's NCHWc "Conv" too)
_FLOAT_COMPUTE = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
# ops that only move data: a DequantizeLinear behind them still feeds the op after them
_LAYOUT_ONLY = {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                "ReorderInput", "ReorderOutput"}
_INT8_COMPUTE = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}


@dataclass(frozen=True)
class FastPath:
    """What a system's check found.  ``ok``: True = proven to run its integer kernels, False =
    proven not to (the row is flagged), None = not checked (a float row, or no way to look)."""

    ok: bool | None
    isa: str | None  # the instruction set its kernels used, e.g. "AMX", "AVX-512 VNNI"
    detail: str
    method: str

    def label(self) -> str:
        """The table's short form: ``ok AMX``, ``FAILED``, ``- float FMA``."""
        head = {True: "ok", False: "FAILED", None: "-"}[self.ok]
        return f"{head} {self.isa}" if self.isa else head

    def as_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- quiet building
@contextlib.contextmanager
def quiet():
    """Build a peer without its screens of deprecation warnings, exporter progress and
    per-tensor log lines; what it printed is shown only if it fails."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            _restore(saved)
            log.seek(0)
            tail = log.read()[-3000:]
            if tail.strip():
                print(tail, file=sys.stderr)
            raise
        finally:
            root.setLevel(level)
            _restore(saved)


def _restore(saved):
    if saved[0] is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)
    saved[:] = [None, None]


# ----------------------------------------------------------------------------- ONNX Runtime
def check_ort_graph(path: str) -> FastPath:
    """The fast-path check of an ONNX Runtime session from the graph it runs (``path``: the
    file its ``SessionOptions.optimized_model_filepath`` wrote): fails on any float
    ``Conv``/``Gemm``/``MatMul`` fed (through layout-only ops) by a ``DequantizeLinear``."""
    import onnx  # lazy: a peer ([bench] extra), imported only when it runs

    graph = onnx.load(path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def from_dequantize(name, depth=0):
        node = producer.get(name)
        if node is None or depth > 8:
            return False
        if node.op_type == "DequantizeLinear":
            return True
        return node.op_type in _LAYOUT_ONLY and any(from_dequantize(i, depth + 1)
                                                    for i in node.input[:1])

    float_fed = [n for n in graph.node if n.op_type in _FLOAT_COMPUTE
                 and any(from_dequantize(i) for i in n.input)]
    float_ops = Counter(n.op_type for n in graph.node if n.op_type in _FLOAT_COMPUTE)
    int8_ops = Counter(n.op_type for n in graph.node if n.op_type in _INT8_COMPUTE)
    runs = ", ".join(f"{v} {k}" for k, v in (int8_ops + float_ops).most_common()) or "no conv"
    if float_fed:
        names = ", ".join(n.name or n.op_type for n in float_fed[:3])
        return FastPath(False, None, f"{len(float_fed)} float {float_fed[0].op_type}(s) fed by "
                        f"DequantizeLinear ({names}{', ...' if len(float_fed) > 3 else ''}): "
                        f"ORT did not fuse the QDQ pairs; runs {runs}", "optimized graph")
    if not int8_ops:
        return FastPath(False, None, f"no integer op in the optimized graph; runs {runs}",
                        "optimized graph")
    return FastPath(True, None, f"runs {runs}", "optimized graph")


def _ort_session(path, threads, optimized=None):
    import onnxruntime as ort  # lazy: a peer ([bench] extra), imported only when it runs

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def export_onnx(model, x, path, dynamo=True):
    torch.onnx.export(model, (torch.from_numpy(x),), path, input_names=["x"],
                      output_names=["y"], dynamo=dynamo, external_data=False)


def quantize_onnx(fp32, out, calib, fmt, preprocess=True, activations="uint8"):
    """ORT's static quantization of ``fp32`` into ``out`` (``fmt``: "qdq" or "qop"): uint8
    activations (``activations="int8"``: ORT's s8s8, what its ARM kernels prefer), int8
    per-channel weights, calibrated on ``calib`` (NumPy batches, fed one image at a time);
    ``preprocess=False`` skips ``quant_pre_process`` (the bench's old setup, kept for the test
    that shows the check catches it)."""
    # lazy: a peer ([bench] extra), imported only when it runs
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b[i:i + 1]} for b in calib for i in range(len(b))])

        def get_next(self):
            return next(self.it, None)

    src = fp32
    if preprocess:
        src = os.path.splitext(out)[0] + ".pre.onnx"
        quant_pre_process(fp32, src)
    quantize_static(src, out, Reader(),
                    quant_format={"qdq": QuantFormat.QDQ, "qop": QuantFormat.QOperator}[fmt],
                    per_channel=True,
                    activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[
                        activations],
                    weight_type=QuantType.QInt8)
    return out


def onnx_systems(model, x, calib, tmp, wanted, make_system, profile=True):
    """``make_system(name, run, set_threads, compile_s, note, fast_path)`` for each of
    ``wanted`` (ORT's names)."""
    import onnxruntime as ort  # lazy: a peer ([bench] extra), imported only when it runs

    fp32 = os.path.join(tmp, "model.onnx")
    t0 = time.perf_counter()
    export_onnx(model, x, fp32)
    export_s = time.perf_counter() - t0
    paths = {"ort-fp32": (fp32, export_s)}
    for name in ORT_INT8:
        if name in wanted:
            t0 = time.perf_counter()
            path = quantize_onnx(fp32, os.path.join(tmp, f"{name}.onnx"), calib,
                                 name.rsplit("-", 1)[1])
            paths[name] = (path, export_s + time.perf_counter() - t0)
    out = []
    for name in [n for n in PEERS if n in wanted and n in paths]:
        path, dt = paths[name]
        holder = {}

        def set_threads(n, path=path, holder=holder):
            holder["s"] = _ort_session(path, n)

        def run(xx, holder=holder):
            return holder["s"].run(None, {"x": xx})[0]

        optimized = os.path.splitext(path)[0] + ".optimized.onnx"
        _ort_session(path, 1, optimized)  # writes the graph ORT runs
        fmt = {"ort-int8-qdq": "QDQ", "ort-int8-qop": "QOperator"}.get(name, "float")
        check = (check_ort_graph(optimized) if name != "ort-fp32" else
                 FastPath(None, None, "float model", "optimized graph"))
        set_threads(1)
        out.append(make_system(name, run, set_threads, dt,
                               f"onnxruntime {ort.__version__}, {fmt}", check))
    if profile:
        for sy in out:
            observe_isa(sy, x)
    return out


def observe_isa(system, x):
    """Add the sampled instruction mix to a system's check (its library names no kernel)."""
    result = isa_profile.profile(lambda: system.run(x))
    fp = system.fast_path
    if result is None:
        system.fast_path = FastPath(fp.ok, fp.isa, fp.detail + "; instruction set not observed "
                                    "(needs perf and objdump)", fp.method)
        return
    isa = isa_profile.dominant(result)
    top = ", ".join(f"{k} {v:.0%}" for k, v in result["mix"].items() if v >= 0.01)
    ok = fp.ok
    if ok and isa == isa_profile.FLOAT:  # an int8 row whose hot loops are float FMAs
        ok = False
    system.fast_path = FastPath(ok, isa, f"{fp.detail}; sampled: {top}",
                                fp.method + " + perf samples")
    system.info["instruction_mix"] = result["mix"]


# ----------------------------------------------------------------------------- PyTorch
def torch_trace(fn) -> tuple[Counter, str]:
    """One call of ``fn()`` seen two ways: the operators PyTorch dispatched (its profiler:
    ``{op name: calls}``) and what oneDNN printed in its verbose mode (it writes to stdout from C,
    so the file descriptor is captured)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), \
                    torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        text = log.read()
    return Counter({e.key: e.count for e in p.key_averages()}), text


def onednn_isa(impl: str) -> str:
    """The instruction set of a oneDNN implementation name, e.g. ``brg_conv_fwd:avx10_1_512_amx``
    -> AMX (for int8 primitives: AVX-512 cores from Cascade Lake on have VNNI)."""
    isa = impl.split(":", 1)[-1]
    if "amx" in isa:
        return "AMX"
    if "avx2_vnni" in isa:
        return "AVX-VNNI"
    if any(k in isa for k in ("avx512_core_vnni", "avx512_core_bf16", "avx512_core_fp16",
                              "avx10")):
        return "AVX-512 VNNI"
    if "avx512" in isa:
        return "AVX-512"
    if "avx2" in isa:
        return "AVX2"
    return impl  # "ref:any", "gemm:jit", ...: a reference or generic implementation


def onednn_convs(log: str) -> Counter:
    """``{(isa, "src x wei" dtypes): count}`` of the convolutions oneDNN's verbose log says it
    executed; reference implementations keep their name (``ref:any``) as the isa."""
    out = Counter()
    for line in log.splitlines():
        p = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in p or len(p) < 9:
            continue
        at = p.index("exec")
        if p[at + 2] != "convolution":
            continue
        # memory descriptors, e.g. "src:u8::blocked:acdb::f0 wei:s8:a:blocked:AcdB16b32a4b::f0"
        mds = " ".join(p[at + 4:]).split()
        src = next((t.split(":")[1] for t in mds if t.startswith("src:")), "?")
        wei = next((t.split(":")[1] for t in mds if t.startswith("wei:")), "?")
        out[(onednn_isa(p[at + 3]), f"{src}x{wei}")] += 1
    return out


# PyTorch's int8 convolution operators (FX: quantized::, PT2E after Inductor: onednn::) and its
# float ones (eager: aten::convolution, once per conv; Inductor with freezing: mkldnn::)
_INT8_CONV = ("quantized::conv", "onednn::qconv")
_FLOAT_CONV = ("aten::convolution", "mkldnn::_convolution")


def check_torch(ops: Counter, log: str, convs: int, int8: bool = True) -> FastPath:
    """The fast-path check of a PyTorch row from one inference (:func:`torch_trace`): every one
    of the model's ``convs`` convolutions must run as an int8 operator and none as a float one;
    oneDNN's log names the instruction set of those it ran (AMX, AVX-512 VNNI, ...; ``FBGEMM``
    for int8 convs it did not run), and a reference kernel there fails the check."""
    n_int8 = sum(n for k, n in ops.items() if k.startswith(_INT8_CONV))
    n_float = sum(n for k, n in ops.items()
                  if k == _FLOAT_CONV[0] or k.startswith(_FLOAT_CONV[1]))
    dnn = onednn_convs(log)
    dnn_int8 = sum(n for (_, d), n in dnn.items() if d.startswith(("u8", "s8")))
    isas = Counter()
    for (isa, d), n in dnn.items():
        if d.startswith(("u8", "s8")) == int8:
            isas[isa] += n
    if int8 and n_int8 > dnn_int8:
        isas["FBGEMM"] += n_int8 - dnn_int8  # quantized convs oneDNN did not run
    isa = "+".join(i for i, _ in isas.most_common()) or None
    names = ", ".join(f"{n} {k}" for k, n in ops.most_common()
                      if k.startswith(_INT8_CONV) or k == _FLOAT_CONV[0]
                      or k.startswith(_FLOAT_CONV[1]))
    in_dnn = ", ".join(f"{n} {d} on {i}" for (i, d), n in dnn.most_common())
    detail = (f"model: {convs} convs; ran {names or 'no conv operator'}"
              + (f"; oneDNN: {in_dnn}" if in_dnn else ""))
    method = "PyTorch profiler + oneDNN verbose"
    if not int8:
        return FastPath(None, isa, detail, method)
    refs = [i for i in isas if i.startswith("ref")]  # oneDNN's reference C loops
    ok = not n_float and not refs and n_int8 >= convs
    if not ok:
        detail += (f"; {n_float} float convolution(s)" if n_float else "") + (
            "; reference (ref) kernels" if refs else "") + (
            f"; only {n_int8} of {convs} convs int8" if n_int8 < convs else "")
    return FastPath(ok, isa, detail, method)


def _count_convs(model) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def torch_systems(model, x, calib, wanted, make_system):
    """``make_system(...)`` for each of ``wanted`` (PyTorch's names) that builds; returns
    ``(systems, {name: why it could not be built})``."""
    xt = torch.from_numpy(x)
    convs = _count_convs(model)
    out, failed = [], {}

    def add(name, fn, dt, note, int8):
        def run(xx):
            with torch.no_grad():
                return fn(torch.from_numpy(xx)).numpy()

        run(x)
        check = check_torch(*torch_trace(lambda: run(x)), convs, int8)
        out.append(make_system(name, run, _torch_threads, dt, note, check))

    int8 = {"torch-int8-pt2e": (_pt2e, "PT2E: X86InductorQuantizer, torch.compile (Inductor, "
                                       "freezing)"),
            "torch-int8-fx": (_fx, "FX graph mode, x86 qconfig and engine")}
    for name, (make, note) in int8.items():
        if name not in wanted:
            continue
        try:  # FX cannot trace every model; a peer that cannot build one is skipped, saying why
            t0 = time.perf_counter()
            q = make(model, xt, calib)
            add(name, q, time.perf_counter() - t0, note, True)
        except Exception as e:  # noqa: BLE001
            failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
    if "torch-fp32" in wanted:
        add("torch-fp32", model, 0.0, f"torch {torch.__version__} eager", False)
    return out, failed


def _torch_threads(n):
    torch.set_num_threads(n)


def _fx(model, xt, calib):
    torch.backends.quantized.engine = "x86"
    with torch.no_grad():
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              (xt,))
        for b in calib:
            prepared(torch.from_numpy(b))
        return convert_fx(prepared)


def _pt2e(model, xt, calib):
    # lazy: a peer ([bench] extra)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        exported = torch.export.export(copy.deepcopy(model).eval(), (xt,)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for b in calib:  # exported for batch 1: calibrate image by image
            for i in range(len(b)):
                prepared(torch.from_numpy(b[i:i + 1]))
        converted = convert_pt2e(prepared)
        # set for the process, as torchao's guide does: a recompile (a new thread count
        # changes a guard) must freeze the weights too, or it runs the unfrozen graph
        torch._inductor.config.freezing = True
        compiled = torch.compile(converted)
        compiled(xt)  # compiles here
    return compiled
