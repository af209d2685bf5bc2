"""Frontends: how models get into f8tvm (PyTorch modules; F8Net checkpoints later)."""
