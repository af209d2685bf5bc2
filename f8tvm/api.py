"""The compiler's library entry: PyTorch module -> integer-only TVM module.

:func:`compile` runs :data:`f8tvm.pipeline.PHASES` (import, fold, integer, pack, fuse,
schedule, lower, codegen) on a *plan source*, what decides the fixed-point formats (see
:class:`f8tvm.core.plan.PlanSource`): calibration of a PyTorch model (the default), a plan you
give, a QAT model (``f8tvm.qat.source(q)``) or an F8Net checkpoint
(``f8tvm.frontend.f8net.load_checkpoint(...)``).  Deciders only decide; this is the one place
that compiles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from f8tvm.core import __version__, _tvm, bounds
from f8tvm.core._tvm import TVM_VERSION, cc
from f8tvm.core.errors import InputError
from f8tvm.core.graph import Graph
from f8tvm.core.plan import DEFAULT_SCHEME, FixedPointPlan, PlanSource, compact
from f8tvm.passes.requantize_multiplier import MULTIPLIER
from f8tvm.schedules import boundary
from f8tvm.targets import get_target

from . import pipeline
from .calibrate import Calibration
from .pipeline import REQUANTIZE_MODES
from .runtime import Module, check_cpu, library_record, metadata_path

__all__ = ["REQUANTIZE_MODES", "CompiledModel", "GivenPlan", "compile", "fuse", "import_model"]


MIN_FREE_BYTES = 64 * 2**20  # a zoo module is 2-15 MB; the linker's temporaries come on top


def check_output_dir(out_dir: str, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Raise :class:`InputError` unless ``out_dir`` is a folder that exists or can be made and
    can be written, with ``need_bytes`` free on its disk, without creating it (so a bad one
    fails before a build, leaving nothing)."""
    path = os.path.abspath(out_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"cannot be made: {probe} is a file"
        raise InputError(f"output folder {out_dir} {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out_dir}: {probe} is not writable")
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise InputError(f"output folder {out_dir}: only {free / 2**20:.0f} MiB free on its "
                         f"disk; a module needs about {need_bytes / 2**20:.0f} MiB")


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
    # the float boundary's kernel in the library (f8tvm.schedules.boundary), or None
    input_kernel: str | None = None
    output_kernel: str | None = None  # the output's (dequantize) kernel, or None
    _module: object = None
    _overflow: dict | None = None  # the .json's overflow entry, made once (a walk of the graph)

    def metadata(self) -> dict:
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
                       fl=int(self.plan.input_fl), signed=bool(self.plan.input_signed),
                       **({"kernel": self.input_kernel, "finite_flag": True}
                          if self.input_kernel else {})),
            output=dict(shape=list(self.graph[self.graph.output].shape), dtype="int32",
                        fl=compact(fl_out), eta=float(eta_out),
                        **({"kernel": self.output_kernel} if self.output_kernel else {})),
            plan=self.plan.to_json(self.graph),
            overflow=self._overflow_report(),
            audit=self.audit.to_json(),
            **self.extra_meta,
        )

    def _overflow_report(self) -> dict:
        if self._overflow is None:
            self._overflow = bounds.overflow_report(self.graph, self.plan)
        return self._overflow

    def export(self, path: str) -> tuple[str, str]:
        """Write ``path`` (.so) and the ``.json`` beside it, atomically (both or neither); the
        ``.json`` records the ``.so``'s size and SHA-256 (``library``), checked on load."""
        path = os.path.abspath(path)
        if not path.endswith(".so"):
            raise InputError(f"export path must end in .so, got {path}")
        out_dir = os.path.dirname(path)
        check_output_dir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        meta_path = metadata_path(path)
        tmp = tempfile.mkdtemp(prefix=".f8tvm-", dir=out_dir)
        try:
            tmp_so = os.path.join(tmp, "model.so")
            kwargs = {}
            if self.target.cross_compiler:
                kwargs["fcompile"] = cc.cross_compiler(self.target.cross_compiler)
            tmp_json = os.path.join(tmp, "model.json")
            meta = self.metadata()
            # the .so carries its build's id (a digest of the metadata: repeatable builds stay
            # byte-for-byte repeatable), which the .json names beside the .so's SHA-256
            ident = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:40]
            kwargs["options"] = [f"-Wl,--build-id=0x{ident}"]
            try:
                self.executable.export_library(tmp_so, **kwargs)
                meta = dict(meta, library=library_record(tmp_so, os.path.basename(path)))
                with open(tmp_json, "w") as f:
                    json.dump(meta, f, indent=1)
            except (OSError, RuntimeError) as err:  # the linker reports a full disk as either
                if "No space left" not in str(err) and getattr(err, "errno", 0) != 28:
                    raise
                free = shutil.disk_usage(out_dir).free
                raise InputError(f"writing {path}: no space left on the device of {out_dir} "
                                 f"({free / 2**20:.0f} MiB free); nothing was written") from None
            # the .so first: a reader between the two renames sees a new .so beside the old
            # .json, which load() refuses (the .json names the .so's SHA-256)
            os.replace(tmp_so, path)
            os.replace(tmp_json, meta_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path, meta_path

    # in-process execution (same semantics as f8tvm.runtime.Module)
    def _runtime(self):
        if self._module is None:
            meta = self.metadata()
            check_cpu(meta, "this build")
            self._module = Module(self.executable, meta)
        return self._module

    def run_int(self, q):
        return self._runtime().run_int(q)

    def run(self, x, allow_nonfinite: bool = False):
        return self._runtime().run(x, allow_nonfinite)


@dataclass
class GivenPlan:
    """A plan source for a plan already made: a :class:`FixedPointPlan`, or a callable
    ``graph -> FixedPointPlan`` for plans keyed by the names of the imported graph."""

    model: object
    example_input: object
    plan: object

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        return self.plan(graph) if callable(self.plan) else self.plan

    def metadata(self) -> dict:
        return {}


def plan_source(model, example_input=None, calib=None, scheme=DEFAULT_SCHEME,
                plan=None) -> PlanSource:
    """The plan source of :func:`compile`'s arguments: ``model`` itself if it is one, else
    ``plan`` if given, else calibration on ``calib``."""
    if isinstance(model, PlanSource):
        given = [k for k, v in (("example_input", example_input), ("calib", calib),
                                ("plan", plan)) if v is not None]
        if given or scheme != DEFAULT_SCHEME:
            raise InputError(f"{type(model).__name__} decides the fixed-point formats itself; "
                             f"do not pass {', '.join(given) or 'scheme'}")
        return model
    if example_input is None:
        raise InputError("compile(model, example_input, ...) needs the example input")
    if plan is not None:
        return GivenPlan(model, example_input, plan)
    return Calibration(model, example_input, calib, scheme)


def import_model(model, example_input):
    """The phases ``import`` and ``fold``: a named, BN-folded float Relax module and the
    source table of its bindings."""
    b = pipeline.run(pipeline.Build(None, model, example_input), until="fold")
    return b.ir["fold"], b.sources


def fuse(model, example_input=None, target="host", calib=None, scheme=DEFAULT_SCHEME,
         plan=None):
    """The fused (legalized, not yet scheduled) kernels of a model, and the target preset:
    what tuning works on (the pipeline through ``fuse``)."""
    source = plan_source(model, example_input, calib, scheme, plan)
    preset = get_target(target)
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for)
    return pipeline.run(b, until="fuse").ir["fuse"], preset


def compile(model, example_input=None, target="host", calib=None,  # noqa: A001
            scheme=DEFAULT_SCHEME, progress=None, debug_dump=None, plan=None, tuning_db=None,
            requantize="shift", name="model"):
    """Compile a PyTorch CNN into an F8Net integer-only module.

    Parameters
    ----------
    model : torch.nn.Module or PlanSource
        The float model (calibrated here, or under ``plan``), or a plan source that carries its
        own model and decisions: ``f8tvm.qat.source(q)``, an F8Net checkpoint.
    example_input : torch.Tensor
        Float32, the shape the compiled module will take (batch included); not with a plan
        source.
    target : str
        A preset name from :data:`f8tvm.targets.TARGETS`, or ``host``.
    calib : iterable of arrays/tensors, optional
        Calibration batches (N x C x H x W, any N). Defaults to ``example_input`` alone.
    scheme : str
        Fixed-point scheme, a key of :data:`f8tvm.core.plan.SCHEMES`.
    progress : callable(phase: str, done: int, total: int | None), optional
    debug_dump : str, optional
        Directory to write the IR after each phase (``1_import.py`` ... ``8_codegen.s``).
    plan : FixedPointPlan or callable(graph) -> FixedPointPlan, optional
        Skip calibration and use this plan; a callable receives the layer graph, for plans
        keyed by its node names.
    tuning_db : str, optional
        A tuning database directory (``f8tvm.tune --db``): kernels with a record use it, the
        others our default schedules; the metadata's ``tuning`` entry says which.
    requantize : {"shift", "multiplier"}
        ``"shift"`` (default): F8Net's rounding right shift, the 8-bit-only program whose audit
        fails the build on any wide multiply.  ``"multiplier"``: a comparison build that
        requantizes through an int32 fixed-point multiplier (int64 product, gemmlowp/TFLite
        style; ``relay_passes/requantize_multiplier.py``), bit-exact with the shift build but
        **not** 8-bit only: its audit records the wide requantize multiplies instead of failing,
        and the metadata's ``requantize`` entry says so.  Microcontroller targets take
        ``"shift"`` only (their comparison requantizes are variants of the C build).
    name : str
        The model's name, for the headers of a microcontroller build's C sources.

    Returns a :class:`CompiledModel`; on a microcontroller target (``targets/mcu.py``) an
    :class:`f8tvm.mcu.model.McuModel`, whose ``export(folder)`` writes C sources and whose
    ``run_int`` runs on the target's emulator.
    """
    if requantize not in REQUANTIZE_MODES:
        raise InputError(f"requantize must be one of {', '.join(REQUANTIZE_MODES)}, "
                         f"got {requantize!r}")
    preset = get_target(target)
    if preset.mcu is not None and requantize != "shift":
        raise InputError(f"requantize={requantize!r}: on microcontroller targets the comparison "
                         "requantizes are variants of the same C build (kernels.c: "
                         "F8_REQUANTIZE=1 int64 multiplier, 2 int32 multiply)")
    preset.check_toolchain()  # fail before the minutes of work, not at export
    source = plan_source(model, example_input, calib, scheme, plan)
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for,
                       requantize=requantize, tuning_db=tuning_db,
                       progress=progress or (lambda *a: None), name=name)
    pipeline.run(b, dump=debug_dump)
    extra = {}
    if requantize == "multiplier":
        extra["requantize"] = dict(
            mode="multiplier", multiplier=MULTIPLIER, rewritten=b.requantize_info["rewritten"],
            int8_only=False,
            note="comparison build: requantizes with int32 x int32 -> int64 fixed-point "
                 "multiplies (bit-exact with the shift build); NOT an 8-bit-only program, see "
                 "audit.wide_multiplies")
    if preset.mcu is not None:  # C sources, not a .so (f8tvm.mcu)
        # lazy: f8tvm.mcu.model derives from CompiledModel, defined here
        from .mcu.model import McuModel

        return McuModel(b.graph, b.plan, b.executable, preset, b.report, b.ir["integer"],
                        extra_meta=dict(**source.metadata()))
    input_kernel, output_kernel = (name if _tvm.has_function(b.ir["lower"], name) else None
                                   for name in boundary.KERNELS)
    return CompiledModel(b.graph, b.plan, b.executable, preset, b.report, b.ir["integer"],
                         extra_meta=dict(tuning=b.tuning, **extra, **source.metadata()),
                         input_kernel=input_kernel, output_kernel=output_kernel)
