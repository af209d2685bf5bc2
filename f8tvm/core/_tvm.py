"""The one seam between f8tvm and TVM's Python API.

TVM renames modules between releases (0.27 moved ``tvm.tir`` to ``tvm.tirx``, schedules and
MetaSchedule to ``tvm.s_tir``, ``tvm.contrib.cc`` to ``tvm.support.cc``, and struct-info to
``relax.TensorType``).  Every spelling that depends on the release lives here, so the next rename
costs one file.  Importing this module imports the TVM *compiler*; the deployment runtime
(:mod:`f8tvm.runtime`) does not import it.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, s_tir, te, topi  # noqa: F401  (re-exported)
from tvm import tirx as tir  # 0.27: tvm.tir -> tvm.tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.support import cc  # noqa: F401  (re-exported; 0.27: tvm.contrib.cc -> tvm.support.cc)
from tvm.target.codegen import llvm_lookup_intrinsic_id

from f8tvm.core import errors

TVM_VERSION = tvm.__version__

# Our passes run inside TVM's pass infrastructure, across its FFI: an f8tvm error raised there
# would come back as a plain RuntimeError.  Registered by name, it comes back as itself.
for _cls in vars(errors).values():
    if isinstance(_cls, type) and issubclass(_cls, errors.F8TVMError):
        tvm_ffi.register_error(_cls.__name__, _cls)

TensorType = relax.TensorType  # 0.27: relax.TensorStructInfo -> relax.TensorType
BlockBuilder = relax.BlockBuilder
Target = tvm.target.Target
IRModule = tvm.IRModule


def var_name(var) -> str:
    """Name of a Relax variable (``name_hint`` in older releases)."""
    return var.name if hasattr(var, "name") else var.name_hint


def const_value(expr):
    """NumPy value of a Relax constant (0.27: ``GenericConst.value``; older: ``.data``)."""
    value = expr.value if hasattr(expr, "value") else expr.data
    return value.numpy()


def is_const(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst)


def tensor_shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def tensor_dtype(expr) -> str:
    return str(expr.ty.dtype)


def make_target(spec: dict) -> Target:
    """Build a TVM target from its JSON-dict spelling (0.27 style)."""
    return tvm.target.Target(spec)


def fuse_relax(mod: IRModule, target: Target) -> IRModule:
    """The CPU backend's legalization and fusion: Relax calling fused, unscheduled kernels."""
    with target:
        return tvm.transform.Sequential(cpu.library_dispatch_passes(target)
                                        + cpu.legalize_passes(target))(mod)


def finish_lowering(fused: IRModule, target: Target) -> IRModule:
    """The CPU backend's Relax pipeline after fusion (the kernels scheduled by then), stopping
    before code generation so the compiler can audit the TIR.  With :func:`fuse_relax` before
    it, this is what ``tvm.compile`` on CPU does with the fusing pipeline (plain ``tvm.compile``
    does not fuse ops)."""
    with target:
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(target)
                                        + cpu.finalize_passes(target))(fused)


def compile_relax(mod: IRModule, target: Target):
    """Compile a Relax module with the fusing CPU pipeline; returns a VM executable."""
    return tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))


def primfuncs(mod: IRModule):
    """(name, PrimFunc) pairs of a module."""
    return [(gv.name_hint, f) for gv, f in mod.functions_items() if isinstance(f, tir.PrimFunc)]


def with_function(mod: IRModule, name: str, func) -> IRModule:
    """A copy of ``mod`` with ``func`` added as ``name`` (``mod`` itself is left as it was)."""
    out = mod.clone()
    out[name] = func
    return out


def has_function(mod: IRModule, name: str) -> bool:
    return any(gv.name_hint == name for gv in mod.get_global_vars())


def node_kind(node) -> str:
    """Class name of an IR node ('Mul', 'BufferLoad', 'SBlock', ...): stable across the renames
    of the modules that define them."""
    return type(node).__name__


def expr_dtype(expr) -> str:
    """dtype of a TIR expression (0.27: ``.ty``; older: ``.dtype``)."""
    return str(expr.ty) if hasattr(expr, "ty") else str(expr.dtype)


def post_order_visit(node, fn, skip=None) -> None:
    """Call ``fn`` on every sub-node of a TIR statement/expression.  ``skip(n)`` true: do not
    descend into ``n`` (nor call ``fn`` on it).

    0.27 dropped ``tir.stmt_functor``; tvm-ffi's reflection-based structural walk replaces it.
    """
    if skip is None:
        tvm_ffi.structural_walk(node, fn)
        return

    def visit(n):
        if n is not node and skip(n):
            return tvm_ffi.WalkResult.SKIP
        fn(n)
        return None

    tvm_ffi.structural_walk(node, visit, order="pre")


def llvm_intrinsic_name(call) -> str | None:
    """The LLVM intrinsic a TIR ``call_llvm_(pure_)intrin`` calls, else None."""
    op = getattr(call, "op", None)
    if getattr(op, "name", "") not in ("tirx.call_llvm_pure_intrin", "tirx.call_llvm_intrin"):
        return None
    ident = int(call.args[0].value)
    return _llvm_names().get(ident, f"llvm intrinsic #{ident}")


_DOT_INTRINSICS = ("llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.vpdpbusd.256",
                   "llvm.x86.avx2.pmadd.wd", "llvm.aarch64.neon.sdot", "llvm.aarch64.neon.udot",
                   "llvm.aarch64.neon.smull")  # smull: 8-bit lanes -> 16-bit products
# AMX tile dot products (register-numbered: operands are tile registers, loaded by TILE_LOAD):
# the 8-bit ones, and bf16's (a wide multiply wherever it appears)
TILE_DOT_8BIT = ("llvm.x86.tdpbusd", "llvm.x86.tdpbssd", "llvm.x86.tdpbsud", "llvm.x86.tdpbuud")
TILE_DOT_WIDE = ("llvm.x86.tdpbf16ps", "llvm.x86.tdpfp16ps")
TILE_LOAD = "llvm.x86.tileloadd64"


def _llvm_names(cache={}) -> dict:  # noqa: B006  (memo)
    if not cache:
        for name in _DOT_INTRINSICS + TILE_DOT_8BIT + TILE_DOT_WIDE + (
                TILE_LOAD, "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx2.pmadd.ub.sw"):
            cache[int(llvm_lookup_intrinsic_id(name))] = name
    return cache


# A kernel's small scratch buffers (a depthwise task's padded plane) can live on the stack instead
# of coming from TVMBackendAllocWorkspace, a pair of calls of ~300 instructions once per
# parallel task: TVM does that by itself only under 1 KiB.  A target asks for it with a byte
# limit per buffer (``TargetPreset.stack_buffer_bytes``); a function's stack buffers stay within
# STACK_FUNCTION_BYTES, far inside a worker thread's stack (1 MiB on Android, 8 MiB with glibc).
STACK_FUNCTION_BYTES = 64 * 1024
_NO_WORKSPACE = "disable_lower_builtin"  # LowerTVMBuiltin leaves such an allocation an alloca


def stack_buffers(func, limit: int):
    """``func`` (a lowered PrimFunc) with its constant-size global buffers of at most ``limit``
    bytes annotated to stay on the stack, smallest first while their sum stays within
    STACK_FUNCTION_BYTES."""
    found = []

    def note(alloc):
        found.append(alloc)
        return alloc

    tvm_ffi.structural_map(func.body, (tir.AllocBuffer, note))
    sizes = []  # (bytes, buffer)
    for alloc in found:
        buf = alloc.buffer
        if buf.scope() != "global" or not all(node_kind(d) == "IntImm" for d in buf.shape):
            continue
        n = tvm.DataType(buf.dtype).bits // 8 * tvm.DataType(buf.dtype).lanes
        for d in buf.shape:
            n *= int(d)
        if n <= limit:
            sizes.append((n, buf))
    chosen, total = [], 0
    for n, buf in sorted(sizes, key=lambda nb: nb[0]):
        if total + n > STACK_FUNCTION_BYTES:
            break
        chosen.append(buf)
        total += n
    if not chosen:
        return func

    def mark(alloc):
        if not any(alloc.buffer.same_as(b) for b in chosen):
            return alloc
        notes = dict(alloc.annotations)
        notes[_NO_WORKSPACE] = tir.IntImm("bool", 1)
        return tir.AllocBuffer(alloc.buffer, notes)

    return func.with_body(tvm_ffi.structural_map(func.body, (tir.AllocBuffer, mark)))


def tir_pipeline(stack_buffer_bytes: int = 0) -> str:
    """The name of the TIR pipeline for ``tvm.compile``: TVM's default, followed by
    :func:`stack_buffers` at ``stack_buffer_bytes`` unless that is 0 (registered on first use;
    TVM takes a custom pipeline by name)."""
    if not stack_buffer_bytes:
        return "default"
    limit = stack_buffer_bytes
    name = f"f8tvm_stack_{limit}"
    if name in tir.compilation_pipeline.PIPELINE_MAP:
        return name

    @tvm.transform.module_pass(opt_level=0, name="StackBuffers")
    def on_stack(mod, ctx):
        out = mod
        for gv, func in mod.functions.items():
            if isinstance(func, tir.PrimFunc):
                out = with_function(out, gv.name_hint, stack_buffers(func, limit))
        return out

    def factory(**kwargs):
        lower, host, device = tir.compilation_pipeline.get_tir_pipeline("default", **kwargs)
        return tvm.transform.Sequential([lower, on_stack]), host, device

    tir.compilation_pipeline.register_tir_pipeline(name, factory)
    return name


def compile_relax_lowered(lowered: IRModule, target: Target, stack_buffer_bytes: int = 0):
    """Code generation of a module that already went through the Relax pipeline;
    ``stack_buffer_bytes``: scratch buffers up to that size on the stack (:func:`stack_buffers`).
    """
    return tvm.compile(lowered, target=target, relax_pipeline=None,
                       tir_pipeline=tir_pipeline(stack_buffer_bytes))


def region_tensor(region):
    """The buffer a TIR block region refers to (0.27: ``.source``; older: ``.buffer``)."""
    return region.source if hasattr(region, "source") else region.buffer


def map_blocks(func, fn):
    """``func`` with every block ``b`` of its body replaced by ``fn(b)`` (innermost first; ``fn``
    returns ``b`` itself to keep it)."""
    return func.with_body(tvm_ffi.structural_map(func.body, (s_tir.SBlock, fn)))


def substitute(expr, mapping: dict):
    """``expr`` with every TIR variable named in ``mapping`` (keyed by the variable itself)
    replaced by its value."""
    def sub(v):
        for var, value in mapping.items():
            if v.same_as(var):
                return value
        return v

    return tvm_ffi.structural_map(expr, (tir.Var, sub))


def block_realizes(stmt) -> list:
    """Every block realization (block plus its iteration bindings) under ``stmt``."""
    found = []
    post_order_visit(stmt, lambda n: found.append(n) if isinstance(n, s_tir.SBlockRealize)
                     else None)
    return found


def annotated_loops(func, key: str) -> list:
    """The loops of ``func`` that carry the annotation ``key``."""
    found = []
    post_order_visit(func.body, lambda n: found.append(n) if isinstance(n, tir.For)
                     and key in n.annotations else None)
    return found


def with_loop_body(func, loop, make_body, drop_annotation: str):
    """``func`` with the body of ``loop`` (one of its ``For`` nodes) replaced by
    ``make_body(loop)``, and the annotation ``drop_annotation`` taken off that loop."""
    def fix(n):
        if not n.loop_var.same_as(loop.loop_var):
            return n
        notes = {k: v for k, v in n.annotations.items() if k != drop_annotation}
        return tir.For(n.loop_var, n.min, n.extent, n.kind, make_body(n), n.thread_binding,
                       notes)

    return func.with_body(tvm_ffi.structural_map(func.body, (tir.For, fix)))


def prefetch(buffer, indices, locality: int = 3):
    """A statement that asks the CPU to bring ``buffer[indices]``'s cache line closer (LLVM's
    ``llvm.prefetch``, a read; ``locality`` 3: into every level).  A hint: never faults,
    changes no value."""
    i32 = lambda v: tir.const(v, "int32")  # noqa: E731
    address = tir.address_of(tir.BufferLoad(buffer, list(indices)))
    return tir.Evaluate(tir.call_llvm_intrin("void", "llvm.prefetch.p0", address, i32(0),
                                             i32(locality), i32(1)))


def unrolled_loop(name: str, extent: int, make_body):
    """``for v in unroll(extent): make_body(v)`` (int64 loop variable ``name``)."""
    v = tir.Var(name, "int64")
    return tir.For(v, tir.const(0, "int64"), tir.const(extent, "int64"), tir.ForKind.UNROLLED,
                   make_body(v))


def block_with(block, **fields):
    """A copy of the TIR block ``block`` with ``fields`` (``reads``, ``body``, ``init``, ...)
    replaced."""
    args = {name: getattr(block, name) for name in (
        "iter_vars", "reads", "writes", "name_hint", "body", "init", "alloc_buffers",
        "match_buffers", "annotations")}
    args.update(fields)
    return s_tir.SBlock(**args)


def load_source(expr):
    """The buffer a TIR load reads, or None when ``expr`` is not a load (0.27: a ``TensorLoad``
    with ``.source``; older: a ``BufferLoad`` with ``.buffer``)."""
    if node_kind(expr) not in ("BufferLoad", "TensorLoad"):
        return None
    return expr.source if hasattr(expr, "source") else expr.buffer


def schedule_of(prim_func):
    """A TIR schedule over one PrimFunc (0.27: ``tvm.s_tir.Schedule``)."""
    return s_tir.Schedule(prim_func)


def map_exprs(func, node_type, fn):
    """``func`` with every expression node of ``node_type`` (e.g. ``tir.Mul``) ``e`` replaced
    by ``fn(e)`` (innermost first)."""
    return func.with_body(tvm_ffi.structural_map(func.body, (node_type, fn)))


def loop_extent(sch, loop) -> int | None:
    """The constant extent of a schedule's loop, else None."""
    ext = sch.get(loop).extent
    return int(ext.value) if node_kind(ext) == "IntImm" else None


def same_expr(a, b) -> bool:
    """Structural equality of two TIR expressions."""
    return bool(tvm_ffi.structural_equal(a, b))


def compacted_allocations(func) -> list:
    """``(buffer name, elements)`` of every buffer ``func``'s blocks allocate, each shrunk to
    the region its users touch (what the lowering will allocate)."""
    mod = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation()])(IRModule({"main": func}))
    out = []

    def visit(n):
        if node_kind(n) == "SBlock":
            for buf in n.alloc_buffers:
                size = 1
                for d in buf.shape:
                    size *= int(d)
                out.append((buf.name, size))

    post_order_visit(mod["main"].body, visit)
    return out


def plain_c_function(func, symbol: str):
    """``func`` as a plain C-ABI function ``void symbol(T0 *p0, ...)``: each buffer parameter
    becomes a typed pointer (no packed API, no runtime), indices narrowed to int32."""
    params = list(func.params)
    ptrs = [tir.Var(p.name, tvm.ir.PointerType(tvm.ir.PrimType(str(p.ty.dtype))))
            for p in params]
    body = tir.SeqStmt([tir.DeclBuffer(p, data=q) for p, q in zip(params, ptrs, strict=True)]
                       + [func.body])
    out = tir.PrimFunc(ptrs, body, attrs=func.attrs)
    out = out.with_attr("global_symbol", symbol).with_attr("calling_conv", 1)
    return tir.transform.ForceNarrowIndexToInt32()(IRModule({symbol: out}))[symbol]


def c_source(funcs: dict) -> str:
    """C source of the plain C-ABI functions ``funcs`` (symbol -> PrimFunc from
    :func:`plain_c_function`), from TVM's C code generator."""
    lib = tir.build(IRModule(funcs), target=Target({"kind": "c"}))
    return lib.inspect_source()
