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

Shifts (``>>``, ``<<``) are counted as well.  The report goes into the build's ``.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from f8tvm import _tvm
from f8tvm._tvm import expr_dtype, node_kind, tvm
from f8tvm.errors import AuditError


@dataclass
class AuditReport:
    macs_8bit: int = 0
    mac_sites: int = 0
    shifts: int = 0
    wide_multiplies: int = 0
    violations: list = field(default_factory=list)
    functions: int = 0

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


def _operand_bits(expr) -> int | None:
    """Bits of the value an operand really carries (through casts), None if not an integer."""
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
    return tvm.runtime.DataType(dt).bits


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


def call_counts(mod) -> dict:
    """How many times the Relax functions of ``mod`` reference each PrimFunc."""
    from f8tvm._tvm import relax

    counts: dict = {}

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar):
            counts[e.name_hint] = counts.get(e.name_hint, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def audit_module(mod) -> AuditReport:
    """Audit every PrimFunc of ``mod`` (TIR after legalization/fusion)."""
    report = AuditReport()
    calls = call_counts(mod)
    for fname, func in _tvm.primfuncs(mod):
        report.functions += 1
        ncalls = calls.get(fname, 1)  # kernels of equal shape are shared by several layers
        blocks = []

        def collect(e):
            if node_kind(e) == "SBlock":
                blocks.append(e)

        _tvm.post_order_visit(func.body, collect)
        for block in blocks:
            if block.name_hint == "root":
                continue
            iters = _block_iterations(block) * ncalls
            muls, shifts, dots = [], [], []

            def visit(e):
                if node_kind(e) == "Mul":
                    muls.append(e)
                elif _is_shift(e):
                    shifts.append(e)
                elif node_kind(e) == "Call" and _tvm.llvm_intrinsic_name(e):
                    dots.append(e)

            # nested blocks are audited on their own (tensorized kernels nest them)
            _tvm.post_order_visit(block.body, visit, skip=lambda e: node_kind(e) == "SBlock")
            report.shifts += len(shifts) * iters
            for d in dots:
                name = _tvm.llvm_intrinsic_name(d)
                operands = list(d.args)[-2:]
                bits = [_operand_bits(x) for x in operands]
                if name in _tvm._DOT_INTRINSICS and all(b is not None and b <= 8 for b in bits):
                    report.macs_8bit += iters * _lanes(operands[-1])
                    report.mac_sites += 1
                elif any(k in name for k in ("mul", "madd", "dp", "dot")):
                    report.wide_multiplies += 1
                    report.violations.append(dict(
                        function=fname, block=block.name_hint, dtype=expr_dtype(d),
                        operand_bits=[b if b is not None else expr_dtype(x)
                                      for b, x in zip(bits, operands)],
                        expr=f"{name}: {str(d)[:160]}"))
            for m in muls:
                if not (_has_data(m.a) or _has_data(m.b)):
                    continue  # address arithmetic
                bits = (_operand_bits(m.a), _operand_bits(m.b))
                if all(b is not None and b <= 8 for b in bits):
                    report.macs_8bit += iters
                    report.mac_sites += 1
                else:
                    report.wide_multiplies += 1
                    report.violations.append(dict(
                        function=fname, block=block.name_hint, dtype=expr_dtype(m),
                        operand_bits=[b if b is not None else expr_dtype(x)
                                      for b, x in zip(bits, (m.a, m.b))],
                        expr=str(m)[:200]))
    return report


def check_module(mod) -> AuditReport:
    """:func:`audit_module`, raising :class:`AuditError` with the report on any wide multiply."""
    report = audit_module(mod)
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
