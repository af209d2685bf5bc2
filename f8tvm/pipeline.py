"""The compiler as a list of phases: :data:`PHASES`, run in order by :func:`run`.

=========  =========================================================================  ==========
phase      what it does                                                               IR after
=========  =========================================================================  ==========
import     ``torch.export`` -> Relax, every binding named after its PyTorch module    Relax
fold       FoldBatchNorm, FoldConstant, CanonicalizeBindings, DeadCodeElimination;    Relax
           the layer graph is read off the result
integer    the plan (from the build's plan source: calibration, QAT, an F8Net        Relax
           checkpoint), fitted so that no int32 value can wrap (f8tvm.core.bounds),
           and QuantizeToInteger + ClipAfterRequantize, and on targets
           whose dot product wants int8 data OffsetUnsignedActivations
pack       PackChannelBlocks (the blocked layout of the target's dot instruction),    Relax
           [RequantizeWithMultiplier: the comparison build], FoldConstantAdds,
           [ParityByTest: targets with a vector bit test], [BiasRows: arm-dotprod]
fuse       the CPU backend's legalization and fusion: unscheduled fused kernels       Relax+TIR
           (what tuning works on), each conv's bias add in its accumulators' init
schedule   a schedule per kernel: a tuning database's record, else ours; beside the    Relax+TIR
           program, the float input's quantize kernel (``run`` calls it, ``main`` not)
lower      the VM lowering, then AuditMultiplies on the kernels (a wide multiply      Relax+TIR
           fails the build)
codegen    LLVM for the target preset: a VM executable                               assembly
=========  =========================================================================  ==========

On a microcontroller target (``targets/mcu.py``) the last three differ: ``schedule`` gives every
kernel scalar loops that allocate nothing (:mod:`f8tvm.schedules.mcu`), ``lower`` audits them
without the VM lowering, and ``codegen`` writes C (:mod:`f8tvm.mcu.emit`; dumped as
``8_codegen.c``).

A :class:`Build` carries the inputs and what each phase made; ``run(build, start=, until=)``
runs a slice of the list, so :func:`f8tvm.compile` runs it all, tuning stops after ``fuse``,
the emulated x86 CPU reroutes the kernels after ``schedule``, and ``--debug-dump DIR`` writes
the IR after every phase that ran (``1_import.py`` ... ``8_codegen.s``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from f8tvm.core import __version__, _tvm
from f8tvm.core.bounds import fit_int32
from f8tvm.core.errors import InputError
from f8tvm.core.graph import extract_graph
from f8tvm.core.plan import FixedPointPlan
from f8tvm.frontend.torch_import import fold as fold_float
from f8tvm.frontend.torch_import import import_torch
from f8tvm.mcu import emit
from f8tvm.passes.audit_multiplies import audit_module, check_module
from f8tvm.passes.bias_rows import BiasRows
from f8tvm.passes.clip_after_requantize import ClipAfterRequantize
from f8tvm.passes.fold_constant_adds import FoldConstantAdds
from f8tvm.passes.offset_activations import offset_for_target
from f8tvm.passes.pack_channel_blocks import PackChannelBlocks
from f8tvm.passes.parity_by_test import ParityByTest
from f8tvm.passes.quantize_to_integer import QuantizeToInteger
from f8tvm.passes.requantize_multiplier import RequantizeWithMultiplier
from f8tvm.schedules import bias, boundary, find_dot
from f8tvm.schedules import mcu as mcu_schedules
from f8tvm.schedules.tuning import apply_database
from f8tvm.targets import TargetPreset

REQUANTIZE_MODES = ("shift", "multiplier")  # see f8tvm.compile(requantize=...)


# ----------------------------------------------------------------------------- the phases
def import_model(model, example_input):
    """Phase ``import``: the float Relax module, bindings named after PyTorch modules, and its
    source table."""
    return import_torch(model, example_input)


def fold(float_mod, sources: dict | None = None):
    """Phase ``fold``: BatchNorm folded into the convs' weights, constants folded, dead code
    removed (``sources``: the import's table, for errors that name the PyTorch module)."""
    return fold_float(float_mod, sources)


def integer(float_mod, graph, plan: FixedPointPlan, target: TargetPreset):
    """Phase ``integer``: the integer program of ``graph`` under ``plan`` for ``target``."""
    int_mod = ClipAfterRequantize(QuantizeToInteger(graph, plan)(float_mod))
    return offset_for_target(int_mod, target)  # ARM: int8 activations for sdot (exact)


def pack(int_mod, target: TargetPreset, requantize: str = "shift", info: dict | None = None):
    """Phase ``pack``: blocked channel layout for the target's dot-product instruction (if
    any); ``requantize="multiplier"``: the comparison build's fixed-point multiplier requantize
    (``info``, a dict, receives its count under ``rewritten``); then the constant adds folded
    (bias + rounding offset: one add per output vector); then, on targets with a vector bit
    test, the rounding's parity bit read by it; last, where the target's ``DotSpec.bias_rows``
    says so, each conv's bias repeated along its output row."""
    packed = int_mod
    if target.dot is not None:
        packed = PackChannelBlocks(target.dot, target.activations)(int_mod)
    if requantize == "multiplier":
        packed = RequantizeWithMultiplier(info)(packed)
    packed = FoldConstantAdds()(packed)
    if target.parity_test:
        packed = ParityByTest()(packed)
    if target.dot is not None and target.dot.bias_rows:
        packed = BiasRows()(packed)
    return packed


def fuse(packed, target: TargetPreset):
    """Phase ``fuse``: legalized and fused, kernels not yet scheduled; a conv's bias add moved
    into its accumulators' init (:mod:`f8tvm.schedules.bias`)."""
    return bias.fold_biases(_tvm.fuse_relax(packed, target.tvm()), find_dot(target.dot))


def schedule(fused, target: TargetPreset, tuning_db: str | None = None,
             progress: Callable | None = None, info: dict | None = None):
    """Phase ``schedule``: every kernel scheduled (a record of ``tuning_db`` where it has one,
    our default schedules elsewhere); ``info`` (a dict) receives what was tuned.  On a
    microcontroller: scalar kernels without intermediates (:mod:`f8tvm.schedules.mcu`)."""
    if target.mcu is not None:
        return mcu_schedules.schedule_module(fused)
    tvm_target = target.tvm()
    with tvm_target:
        scheduled, tuned = apply_database(fused, tvm_target, find_dot(target.dot),
                                          tuning_db, progress)
    if info is not None:
        info.update(tuned)
    return scheduled


def lower(scheduled, target: TargetPreset, strict: bool = True):
    """Phase ``lower``: the VM lowering, then the audit of every kernel.  Returns (lowered,
    report).  ``strict``: a wide multiply fails the build (:class:`AuditError`); without it the
    report only records it (the ``requantize="multiplier"`` comparison build)."""
    # a microcontroller's program stays kernels called in order (f8tvm.mcu writes the calls)
    lowered = scheduled if target.mcu else _tvm.finish_lowering(scheduled, target.tvm())
    # the float boundary's kernels: the audit counts the output kernel's float multiplies
    # apart, and only while the program does not call it
    return lowered, (check_module if strict else audit_module)(lowered, boundary.KERNELS)


def codegen(lowered, target: TargetPreset, input_fl: int = 0, name: str = "model"):
    """Phase ``codegen``: LLVM for the target; a VM executable.  On a microcontroller: the C
    program (:class:`f8tvm.mcu.emit.CProgram`; ``input_fl`` and ``name`` go into its header)."""
    if target.mcu is not None:
        return emit.emit_c(lowered, target, name, input_fl, __version__)
    return _tvm.compile_relax_lowered(lowered, target.tvm(), target.stack_buffer_bytes)


# ----------------------------------------------------------------------------- a build
@dataclass
class Build:
    """One compilation: its inputs, and what each phase made (``ir[phase]``)."""

    target: TargetPreset | None = None  # needed from the phase integer on
    model: object = None  # torch.nn.Module
    example_input: object = None  # torch.Tensor
    # graph -> FixedPointPlan (a plan source's plan_for; see f8tvm.api)
    plan_source: Callable | None = None
    requantize: str = "shift"
    tuning_db: str | None = None
    progress: Callable = field(default=lambda *a: None)  # (phase, done, total)
    ir: dict = field(default_factory=dict)
    sources: dict | None = None
    graph: object = None
    plan: FixedPointPlan | None = None
    report: object = None  # AuditReport
    executable: object = None
    tuning: dict = field(default_factory=dict)  # what the tuning database tuned
    requantize_info: dict = field(default_factory=dict)
    name: str = "model"  # the model's name (a microcontroller build's C header names it)


def _import(b: Build):
    b.ir["import"], b.sources = import_model(b.model, b.example_input)


def _fold(b: Build):
    b.ir["fold"] = fold(b.ir["import"], b.sources)
    b.graph = extract_graph(b.ir["fold"], b.sources)


def _integer(b: Build):
    if b.plan is None:
        b.plan = b.plan_source(b.graph, b.progress)
    b.plan = fit_int32(b.graph, b.plan)  # no int32 value can wrap (or a named error)
    b.ir["integer"] = integer(b.ir["fold"], b.graph, b.plan, b.target)


def _pack(b: Build):
    if b.requantize not in REQUANTIZE_MODES:
        raise InputError(f"requantize must be one of {', '.join(REQUANTIZE_MODES)}, "
                         f"got {b.requantize!r}")
    b.ir["pack"] = pack(b.ir["integer"], b.target, b.requantize, b.requantize_info)


def _fuse(b: Build):
    b.ir["fuse"] = fuse(b.ir["pack"], b.target)


def _schedule(b: Build):
    scheduled = schedule(b.ir["fuse"], b.target, b.tuning_db,
                         lambda i, n: b.progress("schedule", i, n), b.tuning)
    if b.graph is not None and b.plan is not None and b.target.mcu is None:
        # a build from a model, not from its IR (a microcontroller's input is already 8-bit)
        scheduled = with_boundary_kernels(scheduled, b.graph[b.graph.input].shape,
                                          b.graph[b.graph.output].shape, b.plan)
    b.ir["schedule"] = scheduled


def with_boundary_kernels(scheduled, input_shape, output_shape, plan: FixedPointPlan):
    """``scheduled`` with the float boundary's kernels beside the program
    (:mod:`f8tvm.schedules.boundary`: the runtime quantizes a float input and dequantizes the
    output with them; ``main`` calls neither)."""
    kernels = ((boundary.QUANTIZE_INPUT,
                boundary.quantize_input(input_shape, int(plan.input_fl),
                                        bool(plan.input_signed))),
               (boundary.DEQUANTIZE_OUTPUT, boundary.dequantize_output(output_shape)))
    for name, func in kernels:
        if func is not None:
            scheduled = _tvm.with_function(scheduled, name, func)
    return scheduled


def _lower(b: Build):
    b.ir["lower"], b.report = lower(b.ir["schedule"], b.target, strict=b.requantize == "shift")


def _codegen(b: Build):
    fl = int(b.plan.input_fl) if b.plan is not None else 0
    b.executable = codegen(b.ir["lower"], b.target, fl, b.name)


@dataclass(frozen=True)
class Phase:
    name: str
    step: Callable[[Build], None]


PHASES = [Phase("import", _import), Phase("fold", _fold), Phase("integer", _integer),
          Phase("pack", _pack), Phase("fuse", _fuse), Phase("schedule", _schedule),
          Phase("lower", _lower), Phase("codegen", _codegen)]
PHASE_NAMES = [p.name for p in PHASES]


def run(build: Build, *, start: str | None = None, until: str | None = None,
        dump: str | None = None) -> Build:
    """Run the phases from ``start`` (default: the first) through ``until`` (default: the
    last) on ``build``; ``dump``: a folder to write the IR after each phase into."""
    for name in (start, until):
        if name is not None and name not in PHASE_NAMES:
            raise ValueError(f"no phase {name!r}; phases: {', '.join(PHASE_NAMES)}")
    first = PHASE_NAMES.index(start) if start else 0
    last = PHASE_NAMES.index(until) if until else len(PHASES) - 1
    for i in range(first, last + 1):
        phase = PHASES[i]
        build.progress(phase.name, 0, None)
        phase.step(build)
        if dump:
            _dump(build, i, phase.name, dump)
    return build


def _dump(build: Build, index: int, name: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    if name == "codegen" and build.target.mcu is not None:
        text = build.executable.files["kernels.c"] + build.executable.files["model.c"]
        path = os.path.join(folder, f"{index + 1}_{name}.c")
    elif name == "codegen":
        text = build.executable.mod.imports[0].inspect_source("asm")
        path = os.path.join(folder, f"{index + 1}_{name}.s")
    else:
        text = build.ir[name].script(show_meta=False)
        path = os.path.join(folder, f"{index + 1}_{name}.py")
    with open(path, "w") as f:
        f.write(text)
