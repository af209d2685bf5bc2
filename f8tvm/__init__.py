"""f8tvm: PyTorch CNNs to F8Net fixed-point, 8-bit-multiply-only programs built with Apache TVM.

``import f8tvm`` is light: the TVM compiler and torch are imported only when a function needs
them, so :mod:`f8tvm.runtime` works on a board that has just the TVM runtime and NumPy.
"""

__version__ = "0.1.0"


def compile(model, example_input, target="host", calib=None, **kwargs):  # noqa: A001
    """Compile a ``torch.nn.Module`` into an integer-only module. See :func:`f8tvm.api.compile`."""
    from .api import compile as _compile

    return _compile(model, example_input, target=target, calib=calib, **kwargs)


def __getattr__(name):
    # Lazy submodules keep ``import f8tvm`` free of torch and the TVM compiler.
    if name in ("runtime", "api", "models", "data", "plan", "reference", "calibrate"):
        import importlib

        return importlib.import_module(f"f8tvm.{name}")
    raise AttributeError(name)
