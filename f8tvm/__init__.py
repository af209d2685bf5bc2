"""f8tvm: PyTorch CNNs to F8Net fixed-point, 8-bit-multiply-only programs built with Apache TVM.

``import f8tvm`` is light: the TVM compiler and torch are imported only when a function needs
them, so :mod:`f8tvm.runtime` works on a board that has just the TVM runtime and NumPy.
"""

import importlib as _importlib
import os as _os

from .core import __version__  # noqa: F401
from .core.errors import F8TVMError  # noqa: F401  (what every f8tvm error is; no dependencies)


def _uniform_cores(cpus, sysfs: str = "/sys/devices/system/cpu") -> bool:
    """True unless Linux says some of ``cpus`` are faster than others (big.LITTLE, P and E
    cores): their highest clock (what TVM sorts cores by) or their capacity differ."""
    seen = {"cpufreq/cpuinfo_max_freq": set(), "cpu_capacity": set()}
    for cpu in cpus:
        for name, values in seen.items():
            try:
                with open(f"{sysfs}/cpu{cpu}/{name}") as f:
                    values.add(f.read().strip())
            except OSError:  # not exposed (a VM, not Linux): no difference known
                pass
    return all(len(values) <= 1 for values in seen.values())


def _default_threads() -> None:
    # TVM's runtime sizes its thread pool once, from TVM_NUM_THREADS, else half the logical CPUs
    # (it assumes SMT); on a 2-vCPU machine that is one thread.  Use every CPU we may run on,
    # unless the user chose.
    try:
        cpus = sorted(_os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(_os.cpu_count() or 1))
    _os.environ.setdefault("TVM_NUM_THREADS", str(len(cpus)))
    # TVM pins each worker thread to a core of its own (the fastest cores first) but leaves the
    # calling thread free; with as many threads as CPUs the caller then shares a worker's core
    # in some runs while another CPU idles, and the run takes twice as long (MobileNet-V2, 2
    # threads on 2 vCPUs: p90 1.28-1.63 ms pinned, 0.60-0.83 unpinned).  Where all cores are
    # alike the pinning chooses nothing, so leave placement to the OS there; on big.LITTLE
    # CPUs it keeps the work on the big cores, so it stays.  A user's own setting stands.
    if "TVM_BIND_THREADS" not in _os.environ and _uniform_cores(cpus):
        _os.environ["TVM_BIND_THREADS"] = "0"


_default_threads()


def compile(model, example_input=None, target="host", calib=None, **kwargs):  # noqa: A001
    """Compile a ``torch.nn.Module`` (or a plan source: ``qat.source(q)``, an F8Net checkpoint)
    into an integer-only module.  See :func:`f8tvm.api.compile`."""
    from .api import compile as _compile  # lazy: import f8tvm stays free of torch and TVM

    return _compile(model, example_input, target=target, calib=calib, **kwargs)


def __getattr__(name):
    # Lazy submodules keep ``import f8tvm`` free of torch and the TVM compiler.
    if name in ("runtime", "api", "models", "data", "reference", "calibrate", "core", "qat",
                "pipeline"):
        return _importlib.import_module(f"f8tvm.{name}")
    raise AttributeError(name)
