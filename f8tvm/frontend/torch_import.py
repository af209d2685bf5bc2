"""PyTorch -> Relax import: ``torch.export`` then TVM's ``from_exported_program``.

Two things are added on top of TVM's importer:

* every Relax binding is named after the PyTorch module (or functional call) it came from, and a
  :class:`Source` table keeps the module path, the ATen op and the line of the user's code, so that
  plans, reports and errors speak the user's language (``layer1.0.conv1``, not ``lv17``);
* unsupported operators are reported by name and place before TVM gets to see them.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, rebuild, with_main
from f8tvm.core.errors import InputError, UnsupportedOpError
from f8tvm.core.graph import extract_graph
from f8tvm.passes.fold_batchnorm import fold_batchnorm


@dataclass(frozen=True)
class Source:
    """Where a Relax binding came from in the user's PyTorch model."""

    module: str  # dotted module path, '' for the top-level module
    module_type: str  # e.g. 'Conv2d'
    aten: str  # ATen op, e.g. 'aten.convolution.default'
    location: str  # 'file.py:12 in forward: <code>' of the user's model

    def describe(self) -> str:
        where = f"module '{self.module}' ({self.module_type})" if self.module else "the top level"
        text = f"{self.aten} in {where}"
        return f"{text}, {self.location}" if self.location else text


def _source_of(node) -> Source:
    stack = node.meta.get("nn_module_stack") or {}
    module, module_type = "", ""
    if stack:
        path, cls = list(stack.values())[-1]
        module = path
        module_type = (cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls)))
        module_type = module_type.rsplit(".", 1)[-1]
    trace = node.meta.get("stack_trace") or ""
    location = ""
    # The last 'File ... line N' frame outside torch is the user's line.
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace)
    user = [f for f in frames if "/torch/" not in f[0]]
    if user:
        f, line, fn, code = user[-1]
        location = f"{f.rsplit('/', 1)[-1]}:{line} in {fn}: {code.strip()}"
    return Source(module, module_type, str(node.target), location)


def export_program(model, example_input):
    """``torch.export`` the model in eval mode, core-ATen decomposed."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise InputError("example_input must be a torch.Tensor, got "
                         f"{type(example_input).__name__}")
    if example_input.dtype != torch.float32:
        raise InputError(f"example_input must be float32, got {example_input.dtype}")
    modes = [(m, m.training) for m in model.modules()]  # the caller's, given back after
    model.eval()
    try:
        with torch.no_grad():
            try:
                ep = torch.export.export(model, (example_input,))
            except Exception as err:  # torch's message is the useful part
                raise UnsupportedOpError(f"torch.export could not trace the model: {err}") \
                    from err
            with warnings.catch_warnings():
                # torch 2.13's run_decompositions deep-copies its own tree specs through an API
                # it deprecated, warning once per module call; nothing the user could change
                warnings.filterwarnings("ignore", category=FutureWarning,
                                        message=r".*isinstance\(treespec, LeafSpec\)")
                return ep.run_decompositions()
    finally:
        for m, training in modes:
            m.training = training


class _NamingImporter:
    """Wraps TVM's importer to remember which FX node produced which Relax variable."""

    def __new__(cls):
        class Importer(ExportedProgramImporter):
            def _translate_fx_graph(self, gm, nodes, inputs_vars, custom_ops=None):
                out = super()._translate_fx_graph(gm, nodes, inputs_vars, custom_ops)
                self.node_of = {v: n for n, v in self.env.items() if isinstance(v, relax.Var)}
                return out

        return Importer()


def _check_padding_modes(model, ep) -> None:
    """A conv padded other than with zeros (``padding_mode='reflect'``, ...) that the model
    uses is refused by name (its padding would otherwise fail later as ``relax.arange``)."""
    odd = {name: m.padding_mode for name, m in model.named_modules()
           if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros"}
    if not odd:  # the common case: no walk over the graph's stack traces
        return
    used = {_source_of(n).module for n in ep.graph.nodes if n.op == "call_function"}
    bad = [f"'{name}' (padding_mode={mode!r})" for name, mode in odd.items() if name in used]
    if bad:
        raise UnsupportedOpError(f"Conv2d {', '.join(bad)}: f8tvm pads with zeros only "
                                 "(padding_mode='zeros')")


def _check_supported(ep, importer) -> None:
    missing = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target.__name__ not in importer.convert_map:
            missing.append(node)
    if missing:
        lines = [f"  - {_source_of(n).describe()}" for n in missing]
        raise UnsupportedOpError(
            "the model uses operators that TVM's PyTorch importer does not support:\n"
            + "\n".join(lines)
        )


def _unique(name: str, taken: set) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "t"
    if base[0].isdigit():
        base = "t" + base
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


def import_torch(model, example_input):
    """Import a PyTorch module into a named float Relax module.

    Returns
    -------
    mod : tvm.IRModule
        ``main(x) -> (y,)`` in float32, parameters bound as constants, bindings named after their
        PyTorch modules.
    sources : dict[str, Source]
        Binding name -> where it came from.
    """
    ep = export_program(model, example_input)
    importer = _NamingImporter()
    _check_padding_modes(model, ep)
    _check_supported(ep, importer)
    mod = importer.from_exported_program(ep, False, False, False, None)
    func = mod["main"]

    taken: set = set()
    sources: dict = {}
    # Helper bindings (a bias reshape, a weight transpose) take the name of the op they serve,
    # which is the next binding that an FX node produced.
    owner, pending = {}, []
    for b in bindings(func):
        pending.append(b.var)
        node = importer.node_of.get(b.var)
        if node is not None:
            for v in pending:
                owner[v] = node
            pending = []

    def name(binding):
        node = importer.node_of.get(binding.var)
        if node is None:
            node = owner.get(binding.var)
            if node is None:
                return _unique("out", taken)
            return _unique(f"{_base_name(node)}_pre", taken)
        label = _unique(_base_name(node), taken)
        sources[label] = _source_of(node)
        return label

    x = relax.Var("x", _tvm.TensorType(tuple(example_input.shape), "float32"))
    func = rebuild(func, params=[x], name=name)
    return tvm.IRModule({"main": func}), sources


def fold(float_mod, sources: dict | None = None):
    """BatchNorm folded into the convs' weights (keeping every binding's name), constants
    folded, dead code removed: the float module the layer graph is read from.  ``sources``
    (the import's table) puts the PyTorch module and source line into an error."""
    try:  # the BN fold in Python, not as the pass: its error keeps the binding's name
        float_mod = with_main(float_mod, fold_batchnorm(float_mod["main"]))
    except UnsupportedOpError as err:
        name = getattr(err, "binding", None)
        src = (sources or {}).get(name) or (sources or {}).get((name or "").removesuffix("_pre"))
        if src is None:
            raise
        where = f"module '{src.module}' ({src.module_type})" if src.module else "the top level"
        where = f"{where}, {src.location}" if src.location else where
        raise UnsupportedOpError(f"{where}: {err}") from None
    return _tvm.tvm.transform.Sequential([
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ])(float_mod)


def float_graph(model, example_input):
    """A model's folded float Relax module, its source table and its layer graph: what a plan
    source decides formats over."""
    mod, sources = import_torch(model, example_input)
    mod = fold(mod, sources)
    return mod, sources, extract_graph(mod, sources)


_MODULE_OPS = {
    "Conv2d": "convolution",
    "Linear": ("addmm", "linear", "mm"),
    "BatchNorm2d": ("getitem", "batch_norm"),
    "ReLU": "relu",
    "ReLU6": ("hardtanh", "clamp"),
    "MaxPool2d": ("getitem", "max_pool2d"),
    "AdaptiveAvgPool2d": ("mean", "adaptive_avg_pool2d"),
    "AvgPool2d": "avg_pool2d",
    "Flatten": ("view", "reshape", "flatten"),
}


def _base_name(node) -> str:
    src = _source_of(node)
    if src.module and _is_module_op(src, node):
        return src.module
    return f"{src.module}.{node.name}" if src.module else node.name


def _is_module_op(src: Source, node) -> bool:
    """True when the node is the module's own result (named after the module itself)."""
    ops = _MODULE_OPS.get(src.module_type)
    if ops is None:
        return False
    ops = (ops,) if isinstance(ops, str) else ops
    return any(node.name.startswith(o) for o in ops)
