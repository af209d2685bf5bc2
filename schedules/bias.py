"""The bias in the accumulator: a fused kernel's constant add right after its conv (bias +
rounding offset, :class:`f8tvm.passes.fold_constant_adds.FoldConstantAdds`) moves into the
reduction's init, so the accumulators start at the bias instead of zero and the epilogue has
one vector add fewer per accumulator (an init is one instruction either way: a zeroing idiom
or a register copy).  The sum is the same int32 sum, in another order: nothing that a kernel
computes changes.

This runs on the fused kernels before any schedule (phase ``fuse``), so that tuning measures
the same kernels the build schedules.  It leaves alone the convs whose schedule factors the
reduction (``rfactor`` needs an init of zero: ``arm``'s split accumulators) and those on AMX
tiles (their accumulators start as a zeroed tile).
"""

from __future__ import annotations

from f8tvm.core import _tvm
from f8tvm.core._tvm import load_source, node_kind, tir

from . import cpu, kernel_sblock


def _bias_operand(add, acc):
    """``(acc_load, bias, indices)`` when the block ``add`` computes ``acc[i] + bias[j]`` (either
    order), ``bias`` an int32 buffer indexed by some of the store's iterators (the others at 0:
    ``indices`` gives, per index of ``bias``, the store's index position or None) or a constant
    (``indices`` None); else None."""
    store = add.body
    if node_kind(store) != "BufferStore" or node_kind(store.value) != "Add":
        return None
    idx = list(store.indices)
    for a, b in ((store.value.a, store.value.b), (store.value.b, store.value.a)):
        src = load_source(a)
        if not (src is not None and src.same_as(acc)
                and all(x.same_as(y) for x, y in zip(a.indices, idx))
                and len(a.indices) == len(idx)):
            continue
        if node_kind(b) == "IntImm":
            return a, b, None
        bias = load_source(b)
        if bias is None or str(bias.dtype) != "int32":
            return None
        picks = []
        for x in b.indices:
            if node_kind(x) == "IntImm" and int(x.value) == 0:
                picks.append(None)
                continue
            pos = [k for k, y in enumerate(idx) if x.same_as(y)]
            if not pos:
                return None
            picks.append(pos[0])
        return a, bias, picks
    return None


def fold_bias(func, dot):
    """``func`` (a fused PrimFunc) with its kernel's bias add in the reduction's init, or
    ``func`` itself where that does not apply (module doc)."""
    if dot is None or not dot.bias_init:
        return func
    sch = _tvm.schedule_of(func)
    kind, kblock = kernel_sblock(sch)
    if kblock is None:
        return func
    kernel = sch.get(kblock)
    if kernel.init is None or node_kind(kernel.init) != "BufferStore":
        return func
    if kind == "conv" and (cpu.amx_conv(kernel, dot) or cpu.split_form(kernel, dot)
                           or cpu.lanes_form(kernel, dot)):
        return func
    consumers = sch.get_consumers(kblock)
    if len(consumers) != 1:
        return func
    add = sch.get(consumers[0])
    acc = kernel.init.buffer
    operand = _bias_operand(add, acc)
    if operand is None:
        return func
    acc_load, bias, picks = operand
    if picks is not None and not any(p.same_as(bias) for p in func.params):
        return func  # computed inside the kernel, perhaps after the reduction: not an init
    init_idx = list(kernel.init.indices)
    if picks is None:
        value = bias
    else:
        zero = tir.const(0, _tvm.expr_dtype(init_idx[0]))
        value = tir.BufferLoad(bias, [zero if p is None else init_idx[p] for p in picks])
    kname, aname = kernel.name_hint, add.name_hint
    store = add.body

    def rewrite(block):
        if block.name_hint == kname:
            # the reads stay the update's (what the dot intrinsic's description matches)
            return _tvm.block_with(block, init=tir.BufferStore(acc, value, init_idx))
        if block.name_hint == aname:
            reads = [r for r in block.reads if _tvm.region_tensor(r).same_as(acc)]
            body = tir.BufferStore(store.buffer, acc_load, store.indices)
            return _tvm.block_with(block, body=body, reads=reads)
        return block

    return _tvm.map_blocks(func, rewrite)


def fold_biases(mod, dot):
    """A copy of ``mod`` with every fused kernel through :func:`fold_bias`."""
    out = mod.clone()
    for name, func in _tvm.primfuncs(mod):
        new = fold_bias(func, dot)
        if not new.same_as(func):
            out[name] = new
    return out
