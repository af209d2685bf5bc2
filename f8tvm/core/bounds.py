"""int32 bounds: the build-time proof that the integer program cannot wrap, and the plan changes
that make it so.

Every int32 value of the integer program gets a static bound from the plan and the integer
weights, by interval arithmetic per channel over the program's ops (the formats rule of
:mod:`f8tvm.core.formats` says how each op moves a tensor's scale; this module says how it moves
its range):

==================  =========================================================================
op                  range of the int32 result (``[lo, hi]`` per channel)
==================  =========================================================================
input               the 8-bit range of the input format
conv2d, dense       ``b + sum(max(w * qlo, w * qhi))`` .. ``b + sum(min(...))`` over each output
                    channel's weights, where ``[qlo, qhi]`` (with 0, the padding) is the
                    requantized input's range; inside the kernel every partial sum, with the
                    bias, the consumer's rounding offset folded into it, and the +-128 data
                    offset some targets apply, stays within
                    ``|b| + offset + (255 + 128) * sum|w|``
requantize          the shifted value ``T << L`` or ``T + 2**(r-1)`` before the clip to 8 bits
relu, clip, pools   clamp / the same range / ``H*W`` times the (pre-shifted) range
add                 the sum of the aligned operands; each aligned operand is checked too
reshape             the ranges carried like the formats
==================  =========================================================================

Where a bound passes ``2**31 - 1`` the program must not be emitted as it is:

* exact rewrites first, which change no result and no plan: a requantize whose left shift could
  wrap clips its input first, where the 8-bit result saturates anyway
  (:func:`needs_saturation`); a global average pool whose inputs are nonnegative and read only
  by layers clips each input where every reader saturates anyway (``pool_clip``);
* else :func:`fit_int32` changes the plan: an add's FL is lowered (its operands are rounded
  right before the add, instead of the narrow-range one being shifted left), or a global
  average pool's input is rounded right by ``pool_shift`` bits before the sum; both per channel
  and only as far as needed;
* a layer whose own accumulator cannot fit fails the build, naming the layer and the bound.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import INT32_MAX, qrange

KERNEL_DATA_OFFSET = 128  # u8 <-> s8 data offset a target's dot product may apply
MAX_LOWER = 31  # an add's FL or a pool's pre-shift moves at most this far


class OverflowBoundError(F8TVMError):
    """An int32 value of the integer program has no bound below 2**31 that the planner can
    reach by changing the plan."""


@dataclass(frozen=True)
class Bound:
    """The largest magnitude an int32 tensor (or one of its intermediates) can reach."""

    tensor: str
    op: str
    source: str
    bound: float  # max |value| over channels and intermediates
    what: str = ""  # which intermediate is the largest

    @property
    def headroom_bits(self) -> int:
        """Bits left below 2**31: ``floor(log2((2**31 - 1) / bound))`` (negative: overflow)."""
        if self.bound <= 0:
            return 31
        return math.floor(math.log2(INT32_MAX / self.bound))

    @property
    def fits(self) -> bool:
        return self.bound <= INT32_MAX

    def to_json(self) -> dict:
        return dict(tensor=self.tensor, source=self.source, op=self.op, what=self.what,
                    bound=int(self.bound), headroom_bits=self.headroom_bits)


def _shift_range(lo, hi, shift):
    """The range of ``T >> shift`` (ties to even; ``shift < 0``: a left shift), outward."""
    s = np.exp2(-np.asarray(shift, np.float64))
    return np.floor(lo * s), np.ceil(hi * s)


def _rounding(right):
    """The most a ties-to-even right shift by ``right`` adds before shifting: its rounding
    offset ``2**(r-1) - 1`` and the parity bit, bounded by ``2**(r-1) + 1``; 0 where r <= 0."""
    right = np.asarray(right, np.float64)
    return np.where(right > 0, np.exp2(np.maximum(right - 1, 0)) + 1, 0.0)


def saturating_bound(signed, left):
    """Where ``T << left`` could pass int32 before a requantize's clip to 8 bits, the program
    first clips ``T`` to ``[-c, c]``, ``c = (max8 >> left) + 1`` (:func:`needs_saturation`):
    every ``T`` beyond still shifts past the 8-bit range, so the result is unchanged."""
    return (np.floor(qrange(signed)[1] / np.exp2(left)) + 1).astype(np.int64)


def needs_saturation(lo, hi, shift):
    """Per channel: does the requantize's left shift of ``[lo, hi]`` need the pre-clip?"""
    left = np.maximum(-np.asarray(shift, np.float64), 0)
    return (left > 0) & (np.maximum(np.abs(lo), np.abs(hi)) * np.exp2(left) > INT32_MAX)


def _rq_intermediate(lo, hi, shift, signed=None):
    """The largest magnitude the requantize's shift holds before its clip (``signed``: the clip
    to 8 bits follows, so a left shift that could wrap is saturated first)."""
    shift = np.asarray(shift, np.float64)
    m = np.maximum(np.abs(lo), np.abs(hi))
    left = m * np.exp2(np.maximum(-shift, 0))
    if signed is not None:
        sat = needs_saturation(lo, hi, shift)
        c = saturating_bound(signed, np.maximum(-shift, 0))
        left = np.where(sat, c * np.exp2(np.maximum(-shift, 0)), left)
    # the parity bit's 1 is counted even where nothing is shifted right
    return np.maximum(left, m + np.maximum(_rounding(shift), 1))


def _layer_box(lo, hi, in_shift, signed):
    """The requantized 8-bit input's range per input channel, with 0 (padding) in it."""
    q8lo, q8hi = qrange(signed)
    qlo, qhi = _shift_range(lo, hi, in_shift)
    qlo = np.clip(qlo, q8lo, q8hi)
    qhi = np.clip(qhi, q8lo, q8hi)
    return np.minimum(qlo, 0), np.maximum(qhi, 0)


def _layer_range(node, lp, qlo, qhi):
    """The accumulator's range per output channel and the kernel's partial-sum bound."""
    w = lp.w_int.astype(np.float64)
    b = lp.b_int.astype(np.float64)
    if node.op == "conv2d":
        o, cg = w.shape[:2]
        g = node.attrs["groups"]
        chan = (np.arange(o)[:, None] // (o // g)) * cg + np.arange(cg)[None, :]  # (o, cg)
        lo_w = qlo[chan][:, :, None, None]
        hi_w = qhi[chan][:, :, None, None]
        axes = (1, 2, 3)
    else:
        lo_w, hi_w = qlo[None, :], qhi[None, :]
        axes = (1,)
    a, c = w * lo_w, w * hi_w
    hi = b + np.maximum(a, c).sum(axis=axes)
    lo = b + np.minimum(a, c).sum(axis=axes)
    kernel = np.abs(b) + (qrange(lp.in_signed)[1] + KERNEL_DATA_OFFSET) * np.abs(w).sum(axis=axes)
    return lo, hi, kernel


def _reshape_range(node, graph, lo, hi):
    """The ranges carried through a reshape as the formats rule carries fls; where no channel
    map exists, one range for the whole tensor."""
    index = formats.reshape_channels(graph[node.inputs[0]].shape, node.shape)
    if index is not None:
        return lo[index], hi[index]
    c = node.shape[1] if len(node.shape) > 1 else 1
    return np.full(c, lo.min()), np.full(c, hi.max())


class _Walk:
    """One pass over the graph: ranges per tensor, bounds per int32 tensor, and (``fit``) the
    plan changes that keep every bound below 2**31."""

    def __init__(self, graph, plan, fit):
        self.graph, self.plan, self.fit = graph, plan, fit
        self.fl = {k: np.asarray(v, np.int64) for k, v in plan.fl.items()}
        self.clip_hi = {k: np.asarray(v, np.int64) for k, v in plan.clip_hi.items()}
        self.pool_shift = {k: np.asarray(v, np.int64) for k, v in plan.pool_shift.items()}
        self.ranges: dict = {}
        self.bounds: list[Bound] = []
        self.changes: list[dict] = []
        self.pool_clip: dict = {}  # pool -> per-channel clip of its inputs (saturating sum)
        self.consumers = graph.consumers()
        self.kernels: dict = {}  # layer -> (index in bounds, partial-sum bound per channel)

    def _bound(self, n, values: dict):
        what, worst = max(((k, float(np.max(v)) if np.size(v) else 0.0)
                           for k, v in values.items()), key=lambda kv: kv[1])
        b = Bound(n.name, n.op, n.source or n.name, worst, what)
        self.bounds.append(b)
        return b

    def run(self):
        g, plan = self.graph, self.plan
        for n in g.nodes:
            if n.op == "input":
                lo, hi = qrange(plan.input_signed)
                c = n.shape[1]
                self.ranges[n.name] = (np.full(c, float(lo)), np.full(c, float(hi)))
            elif n.is_layer:
                self._layer(n)
            elif n.op == "add":
                self._add(n)
            elif n.op == "global_avg_pool":
                self._pool(n)
            else:
                self._keep_scale(n)
        self._fold_offsets()
        return self

    def _layer(self, n):
        lp = self.plan.layers[n.name]
        src = n.inputs[0]
        lo, hi = self.ranges[src]
        shift = self.fl[src] - lp.in_fl
        qlo, qhi = _layer_box(lo, hi, shift, lp.in_signed)
        alo, ahi, kernel = _layer_range(n, lp, qlo, qhi)
        self.ranges[n.name] = (alo, ahi)
        values = {"accumulator": np.maximum(np.abs(alo), np.abs(ahi)),
                  "kernel partial sums": kernel}
        if not (src == self.graph.input and lp.in_fl == self.plan.input_fl):
            values["input requantize"] = _rq_intermediate(lo, hi, shift, lp.in_signed)
        self._bound(n, values)
        self.kernels[n.name] = (len(self.bounds) - 1, kernel)

    def _fold_offsets(self):
        """A reader's rounding offset is folded into the producing layer's bias (the last
        rewrite before fusion), so the kernel's partial sums carry it too."""
        for name, (at, kernel) in self.kernels.items():
            off = self._reader_offset(self.graph[name], self.fl[name])
            for c in self.consumers.get(name, []):
                node = self.graph[c]
                r = (self.fl[name] - self.fl[c] if node.op == "add" else
                     self.pool_shift.get(c, 0) if node.op == "global_avg_pool" else 0)
                off = np.maximum(off, _rounding(r))
            b = self.bounds[at]
            worst = float(np.max(kernel + off))
            if worst > b.bound:
                self.bounds[at] = b = dataclasses.replace(b, bound=worst,
                                                          what="kernel partial sums")
            if self.fit and not b.fits:
                hint = ("its input's FL is far above its source's, and the source is a wide "
                        "accumulator" if b.what == "input requantize" else
                        "its integer weights and bias are too large for int32")
                raise OverflowBoundError(
                    f"layer {b.source}: the {b.what} can reach {b.bound:.4g}, beyond int32 "
                    f"(2**31 - 1); {hint}")

    def _keep_scale(self, n):
        src = n.inputs[0]
        lo, hi = self.ranges[src]
        if not np.array_equal(self.fl[src], self.plan.fl[src]):  # the rule, on the new fl
            f = formats.propagate(n, self.graph, self.fl, self.plan.eta)
            self.fl[n.name] = f.fl
            if f.clip_hi is not None:
                self.clip_hi[n.name] = f.clip_hi
        if n.op == "relu":
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
        elif n.op == "clip":
            c = self.clip_hi[n.name].astype(np.float64)
            lo, hi = np.clip(lo, 0, c), np.clip(hi, 0, c)
        elif n.op == "reshape":
            lo, hi = _reshape_range(n, self.graph, lo, hi)
        self.ranges[n.name] = (lo, hi)

    def _add_at(self, n, f):
        terms, values = [], {}
        for i in n.inputs:
            lo, hi = self.ranges[i]
            s = f - self.fl[i]  # > 0: left shift; < 0: rounded right shift
            tlo, thi = _shift_range(lo, hi, -s)
            terms.append((tlo, thi))
            values[f"operand {i}"] = np.maximum(
                np.maximum(np.abs(tlo), np.abs(thi)), _rq_intermediate(lo, hi, -s))
        lo = sum(t[0] for t in terms)
        hi = sum(t[1] for t in terms)
        values["sum"] = np.maximum(np.abs(lo), np.abs(hi))
        return lo, hi, values

    def _reader_offset(self, n, fl):
        """Per channel, the largest rounding offset (plus its parity bit) that a layer reading
        ``n`` (directly or through scale-keeping ops) adds to it when requantizing."""
        off, todo = np.zeros(np.shape(fl), np.float64), [n.name]
        while todo:
            for c in self.consumers.get(todo.pop(), []):
                node = self.graph[c]
                if node.is_layer:
                    off = np.maximum(off, _rounding(fl - self.plan.layers[c].in_fl))
                elif node.op in ("relu", "clip", "max_pool2d", "reshape"):
                    todo.append(c)
        return off

    def _worst(self, n, values, fl):
        """Per channel, the largest intermediate, with the readers' rounding offset."""
        return np.max(np.stack(list(values.values())), axis=0) + self._reader_offset(n, fl)

    @staticmethod
    def _fewest_steps(evaluate, res):
        """Per channel, the fewest one-bit steps after which every intermediate fits int32:
        ``evaluate(steps)`` -> ``(lo, hi, values, worst)``, ``res`` its result at no step; a
        channel steps while its ``worst`` does not fit.  Returns the steps and their result."""
        steps = np.zeros(np.shape(res[3]), np.int64)
        for _ in range(MAX_LOWER):
            over = res[3] > INT32_MAX
            if not over.any():
                break
            steps = steps + over
            res = evaluate(steps)
        return steps, res

    def _add(self, n):
        a, b = n.inputs
        old_max = np.maximum(self.plan.fl[a], self.plan.fl[b])
        f0 = np.maximum(self.fl[a], self.fl[b]) - (old_max - self.plan.fl[n.name])

        def evaluate(lowered):
            f = f0 - lowered
            lo, hi, values = self._add_at(n, f)
            return lo, hi, values, self._worst(n, values, f)

        lowered, (lo, hi, values, worst) = 0, evaluate(0)
        if self.fit and np.any(worst > INT32_MAX):
            lowered, (lo, hi, values, worst) = self._fewest_steps(evaluate,
                                                                  (lo, hi, values, worst))
            self.changes.append(dict(tensor=n.name, source=n.source or n.name, change="add_fl",
                                     lowered_by=[int(v) for v in lowered]))
        self.fl[n.name] = f0 - lowered
        self.ranges[n.name] = (lo, hi)
        self._bound(n, values)

    def _saturation_clip(self, n, fl_pool):
        """Per channel, the input value above which every reader of the pool's sum saturates,
        when every reader is a layer (through reshapes that keep the channels): then clipping
        each nonnegative input there changes no result, and bounds the sum.  None otherwise."""
        g, todo, clip = self.graph, [n.name], None
        while todo:
            t = todo.pop()
            if t == g.output:
                return None
            for c in self.consumers.get(t, []):
                node = g[c]
                if node.op == "reshape" and len(node.shape) >= 2 and node.shape[1] == n.shape[1]:
                    todo.append(c)
                elif node.is_layer:
                    lp = self.plan.layers[node.name]
                    shift = (fl_pool - lp.in_fl).astype(np.float64)
                    top = qrange(lp.in_signed)[1] + 1
                    c_ = np.where(shift >= 0, top * np.exp2(shift),
                                  np.ceil(top * np.exp2(np.minimum(shift, 0))))
                    clip = c_ if clip is None else np.minimum(clip, c_)
                else:
                    return None
        return clip

    def _pool_at(self, n, p, clip=None):
        src = n.inputs[0]
        lo, hi = self.ranges[src]
        if clip is not None:
            lo, hi = np.minimum(lo, clip), np.minimum(hi, clip)
        hw = float(np.prod(self.graph[src].shape[2:]))
        slo, shi = _shift_range(lo, hi, p)
        values = {"input pre-shift": np.where(p > 0, _rq_intermediate(lo, hi, p), 0.0),
                  "sum" if clip is None else "sum of clipped inputs":
                      hw * np.maximum(np.abs(slo), np.abs(shi))}
        return hw * slo, hw * shi, values

    def _pool(self, n):
        src = n.inputs[0]
        p0 = self.pool_shift.get(n.name, np.zeros_like(self.plan.fl[src]))
        k = self.plan.fl[n.name] - self.plan.fl[src] + p0  # the pool's own log2 read scale

        def evaluate(shifted, clip=None):
            p = p0 + shifted
            lo, hi, values = self._pool_at(n, p, clip)
            return lo, hi, values, self._worst(n, values, self.fl[src] - p + k)

        shifted, (lo, hi, values, worst) = 0, evaluate(0)
        if np.any(worst > INT32_MAX) and np.all(self.ranges[src][0] >= 0):
            # first choice, exact: saturate the inputs where the readers saturate anyway
            clip = self._saturation_clip(n, self.fl[src] - p0 + k)
            if clip is not None and np.all(clip <= INT32_MAX):
                lo, hi, values, worst = evaluate(0, clip)
                self.pool_clip[n.name] = clip.astype(np.int64)
        if self.fit and np.any(worst > INT32_MAX):
            self.pool_clip.pop(n.name, None)
            shifted, (lo, hi, values, worst) = self._fewest_steps(evaluate, evaluate(0))
            self.changes.append(dict(tensor=n.name, source=n.source or n.name,
                                     change="pool_shift", shifted_by=[int(v) for v in shifted]))
        p = p0 + shifted
        if p.any():
            self.pool_shift[n.name] = p
        self.fl[n.name] = self.fl[src] - p + k
        self.ranges[n.name] = (lo, hi)
        self._bound(n, values)


def analyse(graph, plan):
    """The bounds walk over ``plan``'s program: ``.ranges`` (tensor -> per-channel (lo, hi)),
    ``.bounds`` (:class:`Bound` per int32 tensor) and ``.pool_clip`` (pool -> the saturating
    clip of its inputs the program applies, see module doc)."""
    return _Walk(graph, plan, fit=False).run()


def int32_bounds(graph, plan) -> list[Bound]:
    """The bound of every int32 tensor of ``plan``'s integer program, in graph order."""
    return analyse(graph, plan).bounds


def _first_overflow(bounds: list[Bound]) -> list[Bound]:
    """``bounds``, or :class:`OverflowBoundError` naming the first one past ``2**31 - 1``."""
    for b in bounds:
        if not b.fits:
            raise OverflowBoundError(f"{b.op} {b.source}: the {b.what} can reach {b.bound:.4g}, "
                                     f"beyond int32 (2**31 - 1)")
    return bounds


def check_int32(graph, plan) -> list[Bound]:
    """:func:`int32_bounds`, raising :class:`OverflowBoundError` naming the first tensor whose
    bound passes ``2**31 - 1``."""
    return _first_overflow(int32_bounds(graph, plan))


def fit_int32(graph, plan):
    """``plan``, changed where needed so that no int32 value of its program can wrap (module
    doc); the same plan object when nothing needs to change.  The changes are listed in the
    plan's ``info['overflow_changes']``."""
    walk = _Walk(graph, plan, fit=True).run()
    if not walk.changes:  # the walk was the unchanged plan's own analysis
        _first_overflow(walk.bounds)
        return plan
    info = dict(plan.info)
    info["overflow_changes"] = walk.changes
    fitted = dataclasses.replace(plan, fl=walk.fl, clip_hi=walk.clip_hi,
                                 pool_shift=walk.pool_shift, info=info)
    check_int32(graph, fitted)  # the changed plan, analysed afresh as its consumers read it
    return fitted


def overflow_report(graph, plan) -> dict:
    """The ``overflow`` entry of a module's ``.json``: every int32 tensor's bound and headroom
    bits, the least headroom, the plan changes made for it and the saturating clips."""
    walk = analyse(graph, plan)
    rows = [b.to_json() for b in walk.bounds]
    least = min(walk.bounds, key=lambda b: b.headroom_bits, default=None)
    return dict(
        rule="every int32 value's static bound (interval arithmetic over the integer weights "
             "and the 8-bit ranges) is at most 2**31 - 1",
        proved=all(b.fits for b in walk.bounds),
        least_headroom=None if least is None else dict(tensor=least.tensor, source=least.source,
                                                       what=least.what,
                                                       headroom_bits=least.headroom_bits),
        changes=list(plan.info.get("overflow_changes", [])),
        saturating_pool_clips=sorted(walk.pool_clip),
        tensors=rows)
