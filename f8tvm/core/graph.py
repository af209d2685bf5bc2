"""The layer graph: a framework-neutral view of the float Relax program that f8tvm quantizes.

Extracted once from the named, BN-folded float Relax module.  Calibration, planning, the NumPy
integer reference and the fake-quant model all walk this graph; the Relax rewrite walks the Relax
bindings of the same names.  Keeping it plain (NumPy arrays, dicts) is what lets the reference be
independent of TVM and torch.

Ops (NCHW):
``input``, ``conv2d`` (weight OIHW, bias, strides, padding, dilation, groups), ``dense``
(weight [out, in], bias), ``add``, ``relu``, ``clip`` (lo=0, hi), ``max_pool2d``,
``global_avg_pool`` (mean over H, W, keepdims), ``reshape``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax
from f8tvm.core.bindings import bindings, use_counts
from f8tvm.core.errors import UnsupportedOpError


@dataclass
class Node:
    name: str
    op: str
    inputs: list
    shape: tuple
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    source: str = ""  # user-facing origin ('layer1.0.conv1 (Conv2d)')
    bindings: tuple = ()  # the Relax binding names this node covers, in order

    @property
    def is_layer(self) -> bool:
        return self.op in ("conv2d", "dense")


@dataclass
class Graph:
    nodes: list
    input: str
    output: str

    def __post_init__(self):
        self.by_name = {n.name: n for n in self.nodes}

    def __getitem__(self, name) -> Node:
        return self.by_name[name]

    def consumers(self) -> dict:
        out = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return out

    def layers(self) -> list:
        return [n for n in self.nodes if n.is_layer]


def _ints(arr) -> list:
    return [int(v) for v in arr]


def extract_graph(mod, sources: dict | None = None) -> Graph:
    """Build the layer graph of a named float Relax module (after FoldBatchNorm + FoldConstant).

    Raises :class:`UnsupportedOpError` naming the op and the PyTorch module it came from when the
    program uses an operator f8tvm cannot quantize.
    """
    sources = sources or {}
    func = mod["main"]
    (param,) = func.params
    uses = use_counts(func)
    nodes: list = [Node(_tvm.var_name(param), "input", [], _tvm.tensor_shape(param))]
    name_of: dict = {param: nodes[0].name}  # Relax var -> graph node name
    alias: dict = {}  # var bound to another var

    def where(vname):
        src = sources.get(vname)
        return src.describe() if src is not None else f"binding '{vname}'"

    def unsupported(what, vname):
        return UnsupportedOpError(f"f8tvm cannot quantize {what} (from {where(vname)})")

    def ref(e):
        e = alias.get(e, e)
        if e not in name_of:
            raise unsupported(f"an operand of kind {type(e).__name__}", "?")
        return name_of[e]

    pending_layer: dict = {}  # conv/matmul var -> Node awaiting a bias add
    pads: dict = {}  # pad var -> (input var, [top, left, bottom, right]) awaiting its conv

    for b in bindings(func):
        v, vname = b.value, _tvm.var_name(b.var)
        if isinstance(v, relax.Var):
            alias[b.var] = alias.get(v, v)
            continue
        if isinstance(v, relax.Tuple):
            continue  # only the output tuple remains after canonicalization
        if not isinstance(v, relax.Call):
            raise unsupported(f"a {type(v).__name__} binding", vname)
        op = v.op.name
        shape = _tvm.tensor_shape(b.var) if isinstance(b.var.ty, relax.TensorType) else ()
        src = sources.get(vname)
        label = f"{src.module} ({src.module_type})" if src and src.module else vname
        if op == "relax.nn.pad":
            pw = _ints(v.attrs.pad_width)
            if (str(v.attrs.pad_mode) != "constant" or float(v.attrs.pad_value) != 0.0
                    or any(pw[:4]) or uses.get(b.var, 0) != 1 or len(pw) != 8):
                raise unsupported("a pad other than zero padding of H and W before a conv", vname)
            pads[b.var] = (v.args[0], [pw[4], pw[6], pw[5], pw[7]])
            continue
        if op == "relax.nn.conv2d":
            data = v.args[0]
            extra = [0, 0, 0, 0]
            if data in pads:  # explicit zero padding (TF 'SAME') folds into the conv's own
                data, extra = pads.pop(data)
            if not _tvm.is_const(v.args[1]):
                raise unsupported("conv2d with a non-constant weight", vname)
            a = v.attrs
            if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
                raise unsupported(f"conv2d in layout {a.data_layout}/{a.kernel_layout}", vname)
            padding = [p + e for p, e in zip(_ints(a.padding), extra)]
            node = Node(vname, "conv2d", [ref(data)], shape, dict(
                strides=_ints(a.strides), padding=padding, dilation=_ints(a.dilation),
                groups=int(a.groups)), weight=_tvm.const_value(v.args[1]).astype(np.float32),
                source=label, bindings=(vname,))
        elif op == "relax.matmul":
            w = v.args[1]
            if not _tvm.is_const(w) or len(_tvm.tensor_shape(v.args[0])) != 2:
                raise unsupported("matmul other than (batch, features) x constant", vname)
            node = Node(vname, "dense", [ref(v.args[0])], shape,
                        weight=np.ascontiguousarray(_tvm.const_value(w).T.astype(np.float32)),
                        source=label, bindings=(vname,))
        elif op == "relax.add":
            lhs, rhs = v.args
            if _tvm.is_const(lhs):
                lhs, rhs = rhs, lhs
            if _tvm.is_const(rhs):
                layer = pending_layer.get(alias.get(lhs, lhs))
                bias = _tvm.const_value(rhs).astype(np.float32)
                if layer is None or layer.bias is not None or bias.size != layer.shape[1]:
                    raise unsupported("an add of a constant that is not a layer bias", vname)
                layer.bias = bias.reshape(-1)
                layer.bindings = layer.bindings + (vname,)
                if src is not None and layer.name not in sources:
                    layer.source = label  # a conv/matmul helper binding: the add has the name
                name_of[b.var] = layer.name
                pending_layer.pop(alias.get(lhs, lhs))
                continue
            node = Node(vname, "add", [ref(lhs), ref(rhs)], shape, source=label, bindings=(vname,))
        elif op == "relax.nn.relu":
            node = Node(vname, "relu", [ref(v.args[0])], shape, source=label, bindings=(vname,))
        elif op == "relax.clip":
            lo, hi = float(v.args[1].value), float(v.args[2].value)
            if lo != 0.0:
                raise unsupported(
                    f"clip({lo}, {hi}) (only ReLU-like clips with a lower bound of 0)",
                                  vname)
            node = Node(vname, "clip", [ref(v.args[0])], shape, dict(lo=0.0, hi=hi),
                        source=label, bindings=(vname,))
        elif op == "relax.nn.max_pool2d":
            a = v.attrs
            if bool(a.ceil_mode):
                raise unsupported("max_pool2d with ceil_mode=True", vname)
            node = Node(vname, "max_pool2d", [ref(v.args[0])], shape, dict(
                pool_size=_ints(a.pool_size), strides=_ints(a.strides), padding=_ints(a.padding),
                dilation=_ints(a.dilation)), source=label, bindings=(vname,))
        elif op == "relax.mean":
            axes = sorted(int(x) % 4 for x in v.attrs.axis)
            in_shape = _tvm.tensor_shape(v.args[0])
            if len(in_shape) == 4 and axes == [2, 3] and not bool(v.attrs.keepdims):
                raise unsupported("a global average pool without keepdim (write x.mean((2, 3), "
                                  "keepdim=True).flatten(1), or nn.AdaptiveAvgPool2d(1))", vname)
            if len(in_shape) != 4 or axes != [2, 3]:
                raise unsupported(f"mean over axes {axes} (only global average pooling)", vname)
            node = Node(vname, "global_avg_pool", [ref(v.args[0])], shape, source=label,
                        bindings=(vname,))
        elif op in ("relax.reshape", "relax.flatten"):
            node = Node(vname, "reshape", [ref(v.args[0])], shape, dict(shape=list(shape)),
                        source=label, bindings=(vname,))
        else:
            raise unsupported(f"the operator {op}", vname)
        if node.op in ("conv2d", "dense") and uses.get(b.var, 0) == 1:
            pending_layer[b.var] = node
        nodes.append(node)
        name_of[b.var] = node.name

    if pads:
        raise unsupported("a pad that does not feed a conv2d", _tvm.var_name(next(iter(pads))))
    out = func.body.body
    out = alias.get(out, out)
    if isinstance(out, relax.Var):  # the return tuple var
        for b in bindings(func):
            if b.var.same_as(out) and isinstance(b.value, relax.Tuple):
                out = b.value
    if isinstance(out, relax.Tuple):
        if len(out.fields) != 1:
            raise UnsupportedOpError("f8tvm supports models with exactly one output tensor")
        out = out.fields[0]
    for n in nodes:  # a conv without bias gets a zero bias: one code path downstream
        if n.is_layer and n.bias is None:
            n.bias = np.zeros(n.weight.shape[0], np.float32)
    return Graph(nodes, nodes[0].name, ref(out))
