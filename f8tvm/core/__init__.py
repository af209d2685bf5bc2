"""f8tvm's core, imported by every layer above it: the plan (frozen per-layer decisions), the
per-op fixed-point format rule, F8Net's fixed-point arithmetic, the layer graph, errors, and the
seam to TVM's Python API.  ``errors`` and ``fixedpoint`` need only NumPy: the deployment runtime
uses them on a board without TVM's compiler."""

__version__ = "0.1.0"  # the package's version (setup.py reads it here)
