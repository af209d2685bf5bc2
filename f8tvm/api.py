"""The compiler's library entry: PyTorch module -> integer-only TVM module.

Pipeline (phases; ``debug_dump`` writes the IR after each):

1. import      torch.export -> Relax, bindings named after PyTorch modules
2. fold        FoldBatchNorm, FoldConstant, CanonicalizeBindings, DeadCodeElimination
3. calibrate   float layer graph on calibration batches -> FixedPointPlan (F8Net rules)
4. integer     QuantizeToInteger(plan): int8 conv/dense, int32 acc, shift requantize;
               ClipAfterRequantize (activation clips applied on the 8-bit side, exactly);
               OffsetUnsignedActivations on targets whose dot product wants int8 data
5. pack        PackChannelBlocks: the blocked layout of the target's dot-product instruction
               (requantize="multiplier": then RequantizeWithMultiplier, a comparison build
               with int32 fixed-point multiplies, not 8-bit only); FoldConstantAdds
6. lower       legalize + fuse (the CPU backend's pipeline), a schedule per kernel
               (schedules/), then AuditMultiplies on the scheduled TIR
7. codegen     LLVM for the target preset; export .so + .json
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from f8tvm.core.errors import InputError
from f8tvm.core.graph import Graph, extract_graph
from f8tvm.core.plan import DEFAULT_SCHEME, FixedPointPlan, compact

from . import __version__

REQUANTIZE_MODES = ("shift", "multiplier")  # see compile(requantize=...)


def import_model(model, example_input):
    """Phases 1-2: a named, BN-folded float Relax module and the source table."""
    from f8tvm.core._tvm import relax, tvm
    from f8tvm.passes.fold_batchnorm import FoldBatchNorm

    from .frontend.torch_import import import_torch

    mod, sources = import_torch(model, example_input)
    mod = tvm.transform.Sequential([
        FoldBatchNorm,
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ])(mod)
    return mod, sources


@dataclass
class CompiledModel:
    """Result of :func:`compile`: runs in-process and exports ``.so`` + ``.json``."""

    graph: Graph
    plan: FixedPointPlan
    executable: object
    target: object  # TargetPreset
    audit: object  # AuditReport
    int_mod: object  # integer Relax module (before lowering)
    extra_meta: dict = field(default_factory=dict)
    _module: object = None

    def metadata(self) -> dict:
        from f8tvm.core._tvm import TVM_VERSION

        inp = self.graph[self.graph.input]
        fl_out, eta_out = self.plan.output_format(self.graph)
        return dict(
            format="f8tvm",
            f8tvm_version=__version__,
            tvm_version=TVM_VERSION,
            target=dict(name=self.target.name, tvm=self.target.tvm_target,
                        cpu_flags=list(self.target.cpu_flags)),
            input=dict(name="q_in", shape=list(inp.shape),
                       dtype="int8" if self.plan.input_signed else "uint8",
                       fl=int(self.plan.input_fl), signed=bool(self.plan.input_signed)),
            output=dict(shape=list(self.graph[self.graph.output].shape), dtype="int32",
                        fl=compact(fl_out), eta=float(eta_out)),
            plan=self.plan.to_json(self.graph),
            audit=self.audit.to_json(),
            **self.extra_meta,
        )

    def export(self, path: str) -> tuple[str, str]:
        """Write ``path`` (.so) and the ``.json`` beside it, atomically (both or neither)."""
        path = os.path.abspath(path)
        if not path.endswith(".so"):
            raise InputError(f"export path must end in .so, got {path}")
        out_dir = os.path.dirname(path)
        os.makedirs(out_dir, exist_ok=True)
        from .runtime import metadata_path

        meta_path = metadata_path(path)
        tmp = tempfile.mkdtemp(prefix=".f8tvm-", dir=out_dir)
        try:
            tmp_so = os.path.join(tmp, "model.so")
            kwargs = {}
            if self.target.cross_compiler:
                from f8tvm.core._tvm import cc

                kwargs["fcompile"] = cc.cross_compiler(self.target.cross_compiler)
            self.executable.export_library(tmp_so, **kwargs)
            tmp_json = os.path.join(tmp, "model.json")
            with open(tmp_json, "w") as f:
                json.dump(self.metadata(), f, indent=1)
            os.replace(tmp_so, path)
            os.replace(tmp_json, meta_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path, meta_path

    # in-process execution (same semantics as f8tvm.runtime.Module)
    def _runtime(self):
        if self._module is None:
            from .runtime import Module, check_cpu

            meta = self.metadata()
            check_cpu(meta, "this build")
            self._module = Module(self.executable, meta)
        return self._module

    def run_int(self, q):
        return self._runtime().run_int(q)

    def run(self, x):
        return self._runtime().run(x)


def _batches(calib, example_input):
    import torch

    if calib is None:
        calib = [example_input]
    for b in calib:
        if isinstance(b, (tuple, list)):
            b = b[0]
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        yield np.asarray(b, np.float32)


def integer(float_mod, graph, plan, target_preset):
    """Phase 4: the integer program of ``graph`` under ``plan``, ready to pack for the target."""
    from f8tvm.passes.clip_after_requantize import ClipAfterRequantize
    from f8tvm.passes.offset_activations import offset_for_target
    from f8tvm.passes.quantize_to_integer import QuantizeToInteger

    int_mod = ClipAfterRequantize(QuantizeToInteger(graph, plan)(float_mod))
    return offset_for_target(int_mod, target_preset)  # ARM: int8 activations for sdot (exact)


def pack(int_mod, target_preset, requantize="shift", info=None):
    """Phase 5: blocked channel layout for the target's dot-product instruction (if any);
    ``requantize="multiplier"``: the comparison build's fixed-point multiplier requantize
    (``info``, a dict, receives its count under ``rewritten``); last, the constant adds folded
    (bias + rounding offset: one add per output vector)."""
    from f8tvm.passes.fold_constant_adds import FoldConstantAdds
    from f8tvm.passes.pack_channel_blocks import PackChannelBlocks
    from f8tvm.schedules import find_dot

    dot = find_dot(target_preset.dot_instruction)
    packed = int_mod
    if dot is not None:
        packed = PackChannelBlocks(dot.lanes, dot.depth, dot.intrin_signed is None,
                                   dot.pair_taps, dot.wide_intrin is not None,
                                   dot.wide_data)(int_mod)
    if requantize == "multiplier":
        from f8tvm.passes.requantize_multiplier import RequantizeWithMultiplier

        packed = RequantizeWithMultiplier(info)(packed)
    return FoldConstantAdds()(packed)


def lower(int_mod, target_preset, progress=None, tuning_db=None, info=None, strict=True):
    """Phase 6: legalize + fuse for the target, schedule every kernel (tuned records from
    ``tuning_db`` where it has them, our default schedules elsewhere), audit the TIR.
    Returns (lowered mod, report); ``info`` (a dict) receives what was tuned.  ``strict``: a wide
    multiply fails the build (:class:`AuditError`); without it the report only records it (the
    ``requantize="multiplier"`` comparison build, which is not 8-bit only by design)."""
    from f8tvm.core._tvm import lower_relax
    from f8tvm.passes.audit_multiplies import audit_module, check_module
    from f8tvm.schedules import find_dot
    from f8tvm.schedules.tuning import apply_database

    dot = find_dot(target_preset.dot_instruction)
    target = target_preset.tvm()

    def schedule(fused):
        fused, tuned = apply_database(fused, target, dot, tuning_db, progress)
        if info is not None:
            info.update(tuned)
        return fused

    lowered = lower_relax(int_mod, target, schedule=schedule)
    return lowered, (check_module if strict else audit_module)(lowered)


def fuse(model, example_input, target="host", calib=None, scheme=DEFAULT_SCHEME, plan=None):
    """The fused (legalized, not yet scheduled) kernels of a model: what tuning works on."""
    from f8tvm.core._tvm import fuse_relax
    from f8tvm.targets import get_target

    preset = get_target(target)
    float_mod, sources = import_model(model, example_input)
    graph = extract_graph(float_mod, sources)
    if plan is None:
        from .calibrate import collect_stats, plan_fixed_point

        stats = collect_stats(graph, list(_batches(calib, example_input)))
        plan = plan_fixed_point(graph, stats, scheme)
    elif callable(plan):
        plan = plan(graph)
    int_mod = integer(float_mod, graph, plan, preset)
    return fuse_relax(pack(int_mod, preset), preset.tvm()), preset


def compile(model, example_input, target="host", calib=None, scheme=DEFAULT_SCHEME,  # noqa: A001
            progress=None, debug_dump=None, plan=None, tuning_db=None, requantize="shift"):
    """Compile a PyTorch CNN into an F8Net integer-only module.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor
        Float32, the shape the compiled module will take (batch included).
    target : str
        A preset name from :data:`f8tvm.targets.TARGETS`, or ``host``.
    calib : iterable of arrays/tensors, optional
        Calibration batches (N x C x H x W, any N). Defaults to ``example_input`` alone.
    scheme : str
        Fixed-point scheme, a key of :data:`f8tvm.core.plan.SCHEMES`.
    progress : callable(phase: str, done: int, total: int | None), optional
    debug_dump : str, optional
        Directory to write the IR after each phase.
    plan : FixedPointPlan or callable(graph) -> FixedPointPlan, optional
        Skip calibration and use this plan (F8Net checkpoints, QAT); a callable receives the
        layer graph, for plans keyed by its node names.
    tuning_db : str, optional
        A tuning database directory (``f8tvm.tune --db``): kernels with a record use it, the
        others our default schedules; the metadata's ``tuning`` entry says which.
    requantize : {"shift", "multiplier"}
        ``"shift"`` (default): F8Net's rounding right shift, the 8-bit-only program whose audit
        fails the build on any wide multiply.  ``"multiplier"``: a comparison build that
        requantizes through an int32 fixed-point multiplier (int64 product, gemmlowp/TFLite
        style; ``relay_passes/requantize_multiplier.py``), bit-exact with the shift build but
        **not** 8-bit only: its audit records the wide requantize multiplies instead of failing,
        and the metadata's ``requantize`` entry says so.
    """
    from f8tvm.core._tvm import compile_relax_lowered
    from f8tvm.targets import get_target

    from .calibrate import collect_stats, plan_fixed_point

    if requantize not in REQUANTIZE_MODES:
        raise InputError(f"requantize must be one of {', '.join(REQUANTIZE_MODES)}, "
                         f"got {requantize!r}")
    preset = get_target(target)
    preset.check_toolchain()  # fail before the minutes of work, not at export
    note = progress or (lambda *a: None)

    def dump(name, mod):
        if debug_dump:
            os.makedirs(debug_dump, exist_ok=True)
            with open(os.path.join(debug_dump, f"{name}.py"), "w") as f:
                f.write(mod.script(show_meta=False))

    note("import", 0, None)
    float_mod, sources = import_model(model, example_input)
    dump("1_float", float_mod)
    graph = extract_graph(float_mod, sources)
    if plan is None:
        batches = list(_batches(calib, example_input))
        done = [0]

        def tick():
            done[0] += 1
            note("calibrate", done[0], len(batches))

        stats = collect_stats(graph, batches, tick)
        plan = plan_fixed_point(graph, stats, scheme)
    elif callable(plan):
        plan = plan(graph)
    note("integer", 0, None)
    int_mod = integer(float_mod, graph, plan, preset)
    dump("2_integer", int_mod)
    rq = {}
    packed = pack(int_mod, preset, requantize, rq)
    extra = {}
    if requantize == "multiplier":
        from f8tvm.passes.requantize_multiplier import MULTIPLIER

        extra["requantize"] = dict(
            mode="multiplier", multiplier=MULTIPLIER, rewritten=rq["rewritten"],
            int8_only=False,
            note="comparison build: requantizes with int32 x int32 -> int64 fixed-point "
                 "multiplies (bit-exact with the shift build); NOT an 8-bit-only program, see "
                 "audit.wide_multiplies")
    dump("3_packed", packed)
    note("lower", 0, None)
    tuning = {}
    lowered, report = lower(packed, preset, lambda i, n: note("schedule", i, n), tuning_db,
                            tuning, strict=requantize == "shift")
    dump("4_lowered", lowered)
    note("codegen", 0, None)
    ex = compile_relax_lowered(lowered, preset.tvm())
    return CompiledModel(graph, plan, ex, preset, report, int_mod,
                         extra_meta=dict(tuning=tuning, **extra))
