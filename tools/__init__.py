"""Development tools of f8tvm, not part of the installed package: the side-by-side benchmark
(``python -m tools.bench``), the emulated aarch64 board (``python -m tools.emulated_board``) and
x86 VNNI CPU (``python -m tools.emulated_x86``), and the accuracy experiment (``python -m
tools.accuracy``).  Run them from a checkout of the project, with f8tvm installed."""
