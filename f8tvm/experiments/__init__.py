"""Reproducible experiments (``python -m f8tvm.experiments.<name>``)."""
