"""AuditMultiplies: prove on the emitted TIR that every data multiplication is 8-bit x 8-bit.

Why: "8-bit only multiplication" is the product's claim, so the compiler checks it on the code it
is about to generate, not on the graph it started from.  The analysis visits every block of every
PrimFunc (after legalization, fusion and scheduling) and classifies each ``a * b``:

* index arithmetic (no tensor data in either operand): ignored;
* both operands are 8-bit tensor data (int8/uint8 loads, possibly cast to int32): an 8-bit MAC,
  counted with the block's iteration count;
* anything else that touches tensor data (an int32 or float operand): a *wide multiply*, reported
  with the function, the block and the expression;
* a tensorized dot-product instruction (``vpdpbusd``, ``vpmaddwd``, ``sdot`` ...): its
  multiplicand operands must be 8-bit values (possibly widened); it counts one MAC per lane of
  the multiplicand.  Other multiplying LLVM intrinsics are reported as wide.
* an AMX tile dot product (``tdpbusd``, ``schedules.intrin_amx``): its operands are tile
  registers, so the audit reads the ``tileloadd`` calls that fill them in the same block: every
  one must load an 8-bit buffer.  Each call counts an accumulator tile (the rows of the int32
  region the block writes, x 16 lanes) times the depth K (the weight tile's bytes / 16) MACs.
  A register tile over several output blocks loads one weight tile per block.  A bf16 tile dot,
  or one whose operands the block does not load, is a wide multiply.

An operand is 8-bit by its type (an int8/uint8 load, possibly cast wider) or by its value: a load
of a kernel parameter that every call of the kernel binds to an integer constant whose values
all fit 8 bits (weights stored widened to int16 for AVX2, ``PackChannelBlocks``), or a load of a
buffer of the kernel whose every store writes an 8-bit value (an input copied widened to int16,
its padding an 8-bit constant).  The constants are read from the Relax functions' ``call_tir``
sites, so a widened weight holding a 9-bit value is reported as a wide multiply; so is a
widened copy that is written anything wider than 8 bits.  A vector operand that only moves
lanes (broadcast, reinterpret to lanes of the loaded element's width) carries the bits of the
load it moves.

Shifts (``>>``, ``<<``) are counted as well.  The report goes into the build's ``.json``.

The float boundary's output kernel (``schedules.boundary``: ``acc * eta * 2**-fl`` in float64)
sits in the library beside the program but is not part of it.  A kernel named in ``boundary``
that no Relax function calls has its float multiplies counted apart, in ``boundary_multiplies``
(per kernel in ``boundary_kernels``), not as wide multiplies; called by the program, it is audited
as any other kernel.  Its integer multiplies are audited as anywhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import expr_dtype, node_kind, relax, tvm
from f8tvm.core.errors import AuditError


@dataclass
class AuditReport:
    macs_8bit: int = 0
    mac_sites: int = 0
    shifts: int = 0
    wide_multiplies: int = 0
    violations: list = field(default_factory=list)
    functions: int = 0
    # kernel (PrimFunc) name -> its 8-bit MACs over all its calls, for the kernels that have
    # any (per-kernel instruction counts are read against these: ``tools/arm_count``)
    kernel_macs: dict = field(default_factory=dict)
    # the float boundary's kernels outside the program (``boundary`` of audit_module): their
    # float multiplies per run, in all and per kernel
    boundary_multiplies: int = 0
    boundary_kernels: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.wide_multiplies == 0

    def to_json(self) -> dict:
        return asdict(self)


_LOADS = ("BufferLoad", "TensorLoad")  # a read of tensor data (0.27 calls it TensorLoad)
_SHIFTS = ("LShift", "RShift", "ShiftLeft", "ShiftRight")


def _has_data(expr) -> bool:
    found = []

    def visit(e):
        if node_kind(e) in _LOADS:
            found.append(e)

    _tvm.post_order_visit(expr, visit)
    return bool(found)


def _call_name(e) -> str:
    return getattr(getattr(e, "op", None), "name", "") if node_kind(e) == "Call" else ""


def _moved_load(expr):
    """The load whose elements ``expr`` only moves into other lanes (broadcasts, reinterprets),
    if every lane of ``expr`` is one element of it; else None."""
    bits = tvm.runtime.DataType(expr_dtype(expr)).bits
    while True:
        kind = node_kind(expr)
        if kind == "Broadcast":
            expr = expr.value
        elif _call_name(expr).endswith(".reinterpret"):
            expr = expr.args[0]
        else:
            break
    if node_kind(expr) in _LOADS and tvm.runtime.DataType(expr_dtype(expr)).bits == bits:
        return expr
    return None


def _operand_bits(expr, narrow=lambda buf: False) -> int | None:
    """Bits of the value an operand really carries (through casts), None if not an integer.
    ``narrow(buffer)``: the buffer holds 8-bit values whatever its type (8-bit constants, a
    widened copy of 8-bit data)."""
    while node_kind(expr) == "Cast":
        inner = expr.value
        if not expr_dtype(inner).startswith(("int", "uint")):
            return None
        expr = inner
    dt = expr_dtype(expr)
    if not dt.startswith(("int", "uint")):
        return None
    if node_kind(expr) == "IntImm":
        v = int(expr.value)
        return 8 if -128 <= v <= 255 else 32
    if _call_name(expr).endswith(".if_then_else"):
        bits = [_operand_bits(x, narrow) for x in list(expr.args)[1:]]
        return None if None in bits else max(bits)
    load = expr if node_kind(expr) in _LOADS else _moved_load(expr)
    if load is not None and narrow(load.source):
        return 8
    return tvm.runtime.DataType(dt).bits


def _fits_8bit(value) -> bool:
    if not np.issubdtype(value.dtype, np.integer) or value.size == 0:
        return False
    lo, hi = int(value.min()), int(value.max())
    return (-128 <= lo and hi <= 127) or (0 <= lo and hi <= 255)


def narrow_constant_params(mod) -> dict:
    """``{PrimFunc name: {param index, ...}}``: the parameters that every call of the kernel in
    ``mod``'s Relax functions (``call_tir``, or the direct call it lowers to) binds to an integer
    constant with 8-bit values."""
    sites: dict = {}

    def visit(e):
        if node_kind(e) != "Call":
            return
        if getattr(e.op, "name", "") == "relax.call_tir":  # before VM lowering
            name, args = e.args[0].name_hint, e.args[1]
            args = list(args.fields) if node_kind(args) == "Tuple" else [args]
        elif isinstance(e.op, tvm.ir.GlobalVar):  # lowered: the kernel called with its outputs
            name, args = e.op.name_hint, list(e.args)
        else:
            return
        sites.setdefault(name, []).append(
            [_tvm.is_const(a) and _fits_8bit(_tvm.const_value(a)) for a in args])

    _visit_relax(mod, visit)
    return {name: {i for i in range(len(calls[0])) if all(c[i] for c in calls)}
            for name, calls in sites.items()}


def _narrow_test(func, params: set, blocks):
    """``narrow(buffer)`` for :func:`_operand_bits`: the buffer is one of ``func``'s params in
    ``params`` (indices), or a buffer only ever written 8-bit values, directly or through the
    match buffers of tensorized blocks."""
    alias = [(mb.buffer, _tvm.region_tensor(mb.source)) for b in blocks for mb in b.match_buffers]

    def root(buf):
        for _ in range(len(alias) + 1):
            nxt = next((src for b, src in alias if b.same_as(buf)), None)
            if nxt is None:
                return buf
            buf = nxt
        return buf

    params = [func.params[i] for i in params]

    def is_param(buf):
        return any(root(buf).same_as(p) for p in params)

    stores: list = []  # (root buffer, stored values)

    def visit(e):
        if node_kind(e) in ("BufferStore", "TensorStore"):
            buf = root(e.buffer)
            entry = next((s for s in stores if s[0].same_as(buf)), None)
            if entry is None:
                stores.append(entry := (buf, []))
            entry[1].append(e.value)

    _tvm.post_order_visit(func.body, visit)
    written_narrow = [buf for buf, values in stores
                      if all((b := _operand_bits(v, is_param)) is not None and b <= 8
                             for v in values)]

    def test(buf):
        buf = root(buf)
        return is_param(buf) or any(buf.same_as(w) for w in written_narrow)

    return test


def _lanes(expr) -> int:
    return tvm.runtime.DataType(expr_dtype(expr)).lanes


def _block_iterations(block) -> int:
    n = 1
    for iv in block.iter_vars:
        ext = iv.dom.extent
        n *= int(ext.value) if node_kind(ext) == "IntImm" else 1
    return n


def _is_shift(e) -> bool:
    if node_kind(e) in _SHIFTS:
        return True
    return node_kind(e) == "Call" and getattr(e.op, "name", "").endswith(
        ("shift_right", "shift_left"))


def _sites(stmt, times=1, out=None) -> list:
    """``(node, times)`` for every multiply, shift and LLVM intrinsic call in ``stmt``, where
    ``times`` is the product of the extents of the loops around it inside ``stmt`` (a tensorized
    block's body may loop); nested blocks are left out (they are audited on their own)."""
    out = [] if out is None else out
    while node_kind(stmt) == "For":
        ext = stmt.extent
        times *= int(ext.value) if node_kind(ext) == "IntImm" else 1
        stmt = stmt.body

    def skip(e):
        kind = node_kind(e)
        if kind in ("SBlock", "SBlockRealize"):
            return True
        if kind == "For":
            _sites(e, times, out)
            return True
        return False

    def visit(e):
        if (node_kind(e) == "Mul" or _is_shift(e)
                or (node_kind(e) == "Call" and _tvm.llvm_intrinsic_name(e))):
            out.append((e, times))

    _tvm.post_order_visit(stmt, visit, skip=skip)
    return out


def _visit_relax(mod, visit) -> None:
    """``visit`` every expression of ``mod``'s Relax functions."""
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)


def call_counts(mod) -> dict:
    """How many times the Relax functions of ``mod`` reference each PrimFunc."""
    counts: dict = {}

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar):
            counts[e.name_hint] = counts.get(e.name_hint, 0) + 1

    _visit_relax(mod, visit)
    return counts


def audit_module(mod, boundary=()) -> AuditReport:
    """Audit every PrimFunc of ``mod`` (TIR after legalization/fusion).  ``boundary``: names of
    the float boundary's kernels (see the module's docstring)."""
    report = AuditReport()
    calls = call_counts(mod)
    narrow_params = narrow_constant_params(mod)
    for fname, func in _tvm.primfuncs(mod):
        report.functions += 1
        ncalls = calls.get(fname, 1)  # kernels of equal shape are shared by several layers
        blocks = []

        def collect(e):
            if node_kind(e) == "SBlock":
                blocks.append(e)

        _tvm.post_order_visit(func.body, collect)
        narrow = _narrow_test(func, narrow_params.get(fname, set()), blocks)
        outside = fname in boundary and fname not in calls  # the program never runs it
        before = report.macs_8bit
        for block in blocks:
            if block.name_hint == "root":
                continue
            block_iters = _block_iterations(block) * ncalls
            sites = _sites(block.body)
            for e, times in sites:
                iters = block_iters * times
                if _is_shift(e):
                    report.shifts += iters
                elif node_kind(e) == "Mul" and outside and expr_dtype(e).startswith("float"):
                    report.boundary_multiplies += iters
                    report.boundary_kernels[fname] = report.boundary_kernels.get(fname, 0) + iters
                elif node_kind(e) == "Mul":
                    _audit_mul(report, fname, block, e, iters, narrow)
                elif _tvm.llvm_intrinsic_name(e) in _tvm.TILE_DOT_8BIT + _tvm.TILE_DOT_WIDE:
                    _audit_tile_dot(report, fname, block, e, iters, sites)
                else:
                    _audit_call(report, fname, block, e, iters, narrow)
        if report.macs_8bit > before:
            report.kernel_macs[fname] = report.macs_8bit - before
    return report


def _audit_call(report, fname, block, d, iters, narrow) -> None:
    """A multiplying LLVM intrinsic: a dot instruction on 8-bit operands counts its lanes as
    MACs; any other multiplying intrinsic is a wide multiply."""
    name = _tvm.llvm_intrinsic_name(d)
    operands = list(d.args)[-2:]
    bits = [_operand_bits(x, narrow) for x in operands]
    if name in _tvm._DOT_INTRINSICS and all(b is not None and b <= 8 for b in bits):
        report.macs_8bit += iters * _lanes(operands[-1])
        report.mac_sites += 1
    elif any(k in name for k in ("mul", "madd", "dp", "dot")):
        _violation(report, fname, block, d, bits, operands, f"{name}: {str(d)[:160]}")


def _tile_loads(sites) -> list:
    """The element types of the buffers the ``tileloadd`` calls among ``sites`` read (their
    pointer operand is a ``tvm_access_ptr(type_annotation(dtype), ...)``; None for another
    pointer)."""
    out = []
    for e, _ in sites:
        if node_kind(e) != "Call" or _tvm.llvm_intrinsic_name(e) != _tvm.TILE_LOAD:
            continue
        ptr = list(e.args)[-2]
        out.append(expr_dtype(ptr.args[0]) if _call_name(ptr) == "tirx.tvm_access_ptr"
                   else None)
    return out


def _region_size(region) -> int:
    n = 1
    for r in region.region:
        n *= int(r.extent)
    return n


def _audit_tile_dot(report, fname, block, d, iters, sites) -> None:
    """An AMX tile dot (``tdpbusd``: u8 tile x s8 tile into int32): 8-bit if every tile the
    block loads is read from an 8-bit buffer; MACs per call: the accumulator's rows (the int32
    region the block writes) x 16 lanes x K, K the weight tile's bytes (the block's int8 read
    region, over its output blocks: one weight tile each) / 16."""
    name = _tvm.llvm_intrinsic_name(d)
    loads = _tile_loads(sites)

    def regions(dtype, of):
        return [r for r in of if str(_tvm.region_tensor(r).dtype) == dtype]

    acc, weights = regions("int32", block.writes), regions("int8", block.reads)
    ok = (name in _tvm.TILE_DOT_8BIT and len(loads) >= 2 and len(acc) == 1
          and len(weights) == 1 and all(dt in ("int8", "uint8") for dt in loads))
    if not ok:
        bits = [8 if dt in ("int8", "uint8") else dt for dt in loads] or [None]
        _violation(report, fname, block, d, bits, [d] * len(bits), f"{name}: {str(d)[:160]}")
        return
    rows = int(acc[0].region[-2].extent)
    # K/4 rows of 16 lanes x 4 bytes per weight tile; the weights' axis 0 is the output block
    depth = _region_size(weights[0]) // 16 // int(weights[0].region[0].extent)
    report.macs_8bit += iters * rows * 16 * depth
    report.mac_sites += 1


def _audit_mul(report, fname, block, m, iters, narrow) -> None:
    """``a * b`` on tensor data: 8-bit operands count ``iters`` MACs, anything wider is a wide
    multiply; index arithmetic is ignored."""
    if not (_has_data(m.a) or _has_data(m.b)):
        return  # address arithmetic
    bits = (_operand_bits(m.a, narrow), _operand_bits(m.b, narrow))
    if all(b is not None and b <= 8 for b in bits):
        report.macs_8bit += iters
        report.mac_sites += 1
    else:
        _violation(report, fname, block, m, bits, (m.a, m.b), str(m)[:200])


def _violation(report, fname, block, e, bits, operands, text) -> None:
    report.wide_multiplies += 1
    report.violations.append(dict(
        function=fname, block=block.name_hint, dtype=expr_dtype(e),
        operand_bits=[b if b is not None else expr_dtype(x) for b, x in zip(bits, operands)],
        expr=text))


def check_module(mod, boundary=()) -> AuditReport:
    """:func:`audit_module`, raising :class:`AuditError` with the report on any wide multiply."""
    report = audit_module(mod, boundary)
    if not report.ok:
        lines = [f"  - {v['function']} / block '{v['block']}': {v['expr']} "
                 f"(operands: {v['operand_bits']})" for v in report.violations[:10]]
        raise AuditError(
            f"8-bit-only multiplication violated: {report.wide_multiplies} wide multiply(ies)\n"
            + "\n".join(lines), report)
    return report


def AuditMultiplies():  # noqa: N802  (pass names are PascalCase, as in TVM)
    """Module pass form: fails the build on a wide multiply, leaves the module unchanged."""

    @tvm.transform.module_pass(opt_level=0, name="AuditMultiplies")
    def _pass(mod, ctx):
        check_module(mod)
        return mod

    return _pass
