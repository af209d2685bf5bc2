import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

# the development tools (tools/: bench, emulators, accuracy experiment) are not installed: they are
# imported from this checkout
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ----------------------------------------------------------------------------- test tiers
# Every test is in one tier (README, "Test tiers").  CI runs all but opt-in;
# ``pytest tests -m optin`` runs opt-in alone, ``-m unit`` the tier that needs no TVM build, ...
TIERS = {
    "unit": "no build: pure Python, NumPy, torch and Relax rewrites (a TVM build fails the test)",
    "host": "builds with TVM and runs on this CPU (small inputs)",
    "emulated": "runs on an emulator: the aarch64 board (qemu-user), Bochs's VNNI CPU, or the "
                "microcontroller emulators (qemu-riscv32, Unicorn)",
    "optin": "heavy: 224x224 models, real tuning, the full benchmark; runs only when -m names it",
}
# the tier of a test file's tests when a test names none
FILE_TIERS = {
    **dict.fromkeys(["test_fixedpoint.py", "test_formats.py", "test_layers.py",
                     "test_pass_structure.py", "test_passes.py", "test_fold_constant_adds.py",
                     "test_models.py", "test_accuracy_table.py", "test_f8net_import.py",
                     "test_qat.py", "test_offset_activations.py", "test_clip_after_requantize.py"],
                    "unit"),
    **dict.fromkeys(["test_vnni_emulated.py", "test_arm.py", "test_arm_tuning.py", "test_mcu.py"],
                    "emulated"),
    "test_full_size.py": "optin",
}


def pytest_configure(config):
    for name, what in TIERS.items():
        config.addinivalue_line("markers", f"{name}: tier: {what}")
    config.addinivalue_line("markers", "slow: long-running (real-data accuracy, big builds)")
    config.addinivalue_line("markers", "tuning: MetaSchedule tuning with a tiny trial budget")
    config.addinivalue_line("markers", "arm_emulated: runs on the emulated aarch64 board "
                            "(qemu-user-static, cross compilers; tools.emulated_board)")


def tier_of(item) -> str:
    own = [t for t in TIERS if item.get_closest_marker(t) is not None]
    if item.get_closest_marker("arm_emulated") is not None:
        own.append("emulated")
    if len(set(own)) > 1:
        raise pytest.UsageError(f"{item.nodeid} is in tiers {sorted(set(own))}; give it one")
    return own[0] if own else FILE_TIERS.get(item.path.name, "host")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its tier; leave opt-in tests out unless ``-m`` asks for them."""
    wants_optin = "optin" in (config.getoption("markexpr") or "")
    keep, dropped = [], []
    for item in items:
        tier = tier_of(item)
        item.add_marker(tier)
        (dropped if tier == "optin" and not wants_optin else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(autouse=True)
def _unit_tests_do_not_build(request, monkeypatch):
    """A unit-tier test that reaches TVM's code generation fails: the tier says what it costs."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    import tvm

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} is in the unit tier but builds with TVM; "
                             "mark it host (or emulated)")

    monkeypatch.setattr(tvm, "compile", refuse)
    monkeypatch.setattr(tvm.driver, "build", refuse)
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


class SmallNet(torch.nn.Module):
    """conv-bn-relu, depthwise conv + ReLU6, residual add, maxpool, global pool, linear."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.nn.functional.relu6(self.dw(y))
        y = self.grouped(z) + y
        y = self.pool(torch.relu(y))
        y = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        return self.fc(torch.flatten(y, 1))


def module_asm(cm):
    """The assembly of a compiled model's kernels."""
    return cm.executable.mod.imports[0].inspect_source("asm")


def kernel_source(lib, kind="asm"):
    """The generated code (``"asm"`` or LLVM's ``"ll"``) of a ``tvm.compile`` result's kernels:
    its first imported module, or the module itself when it has none."""
    return (lib.mod.imports[0] if lib.mod.imports else lib.mod).inspect_source(kind)


def asm_functions(asm):
    """Assembly text per function (split at global labels)."""
    out, name = {}, None
    for line in asm.splitlines():
        if line and not line[0].isspace() and line.endswith(":") and not line.startswith("."):
            name = line[:-1]
        elif name:
            out[name] = out.get(name, "") + line + "\n"
    return out


def relax_main(shape, dtype, body, name="t"):
    """A Relax module whose ``main(name: dtype[shape])`` is one dataflow block: ``body(bb, x)``
    emits its bindings and returns the one output."""
    from f8tvm.core._tvm import TensorType, relax

    bb = relax.BlockBuilder()
    x = relax.Var(name, TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([body(bb, x)]))
        bb.emit_func_output(out)
    return bb.get()


def lower_program(mod, target="x86", strict=True):
    """The pipeline's ``fuse``, ``schedule`` and ``lower`` on an integer program (packed or
    not): ``(lowered module, audit report)``; ``strict``: a wide multiply fails (AuditError)."""
    from f8tvm import pipeline
    from f8tvm.targets import get_target

    b = pipeline.Build(get_target(target), ir={"pack": mod},
                       requantize="shift" if strict else "multiplier")
    pipeline.run(b, start="fuse", until="lower")
    return b.ir["lower"], b.report


def lower_unscheduled(mod, target="x86"):
    """Fuse and lower a Relax module with TVM's default (unscheduled) kernels."""
    from f8tvm.core import _tvm
    from f8tvm.targets import get_target

    t = get_target(target).tvm()
    return _tvm.finish_lowering(_tvm.fuse_relax(mod, t), t)


def run_relax(mod, *args):
    """Compile a Relax module for the x86 preset and run its ``main``: the outputs as NumPy."""
    from f8tvm.core import _tvm
    from f8tvm.core._tvm import relax, tvm
    from f8tvm.targets import get_target

    ex = _tvm.compile_relax(mod, get_target("x86").tvm())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]


def make_small_net():
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
        net.bn1.bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture(scope="module")
def board():
    """The emulated aarch64 board (``tools.emulated_board``), serving one module's tests."""
    from tools.emulated_board import EmulatedBoard

    with EmulatedBoard() as b:
        yield b


@pytest.fixture
def small_net():
    return make_small_net()


class Tracker:
    """A TVM RPC tracker on localhost (see the ``rpc_tracker`` fixture)."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        # own process groups: TVM's tracker and servers run in worker subprocesses, which a
        # plain terminate() would leave running
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
             str(self.port), "--port-end", str(self.port + 1)],
            env=dict(os.environ, TVM_NUM_THREADS="1"), start_new_session=True)]

    def add_local_server(self, key: str) -> None:
        """Start an RPC server on this machine registered under ``key``."""
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", self.address, "--key",
             key, "--host", "127.0.0.1"], env=dict(os.environ, TVM_NUM_THREADS="1"),
            start_new_session=True))

    def wait(self, key: str, boards: int, timeout: float = 120) -> None:
        """Until ``boards`` servers are free under ``key``."""
        from tvm import rpc

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                queue = rpc.connect_tracker("127.0.0.1", self.port).summary()["queue_info"]
                if queue.get(key, {}).get("free", 0) >= boards:
                    return
            except Exception:  # tracker still starting
                pass
            time.sleep(1)
        pytest.fail(f"{boards} RPC server(s) did not register with the tracker under {key!r}")

    def close(self) -> None:
        for p in self.procs[::-1]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:  # already gone
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker on localhost; servers started with ``add_local_server`` stop with it."""
    t = Tracker()
    try:
        yield t
    finally:
        t.close()
