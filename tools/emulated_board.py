"""An emulated aarch64 board: a TVM-runtime-only Python under qemu-user, serving TVM RPC.

``python -m tools.emulated_board setup|start|stop|status`` (or :class:`EmulatedBoard` in Python).

What ``setup`` builds, in a cache folder (``$F8TVM_BOARD_DIR``, default
``~/.cache/f8tvm/aarch64-board``), without touching the host's packages:

1. ``sysroot/``: Debian's arm64 ``python3.11`` and ``libstdc++6`` with their dependencies,
   downloaded by ``apt-get`` with a private state folder (the host's package sources, arm64 as the
   only architecture, an empty dpkg status) and unpacked with ``dpkg -x``: no
   ``dpkg --add-architecture``, no chroot, no root file changes.
2. ``site/``: the aarch64 wheels of the TVM runtime (``apache-tvm``, the pinned ``apache-tvm-ffi``,
   numpy and what RPC needs), installed for the board's platform by the host's pip.  The TVM
   compiler library is deleted, so the board has what a deployment board has: the runtime.
3. ``app/f8tvm/``: the project's deployment runtime files (no torch, no TVM compiler), refreshed
   at every ``start``.

``start`` runs ``qemu-aarch64-static -L sysroot sysroot/usr/bin/python3.11 board_server.py``, an
RPC server in the emulated interpreter's own process (the stock server re-executes Python, which
fails without binfmt_misc), and records it in ``server.json``; ``stop`` ends that process.  The
only host requirement is the emulator itself (Debian package ``qemu-user-static``).

Every step is idempotent and resumable: downloads are cached, a step's marker is written only once
it has finished.  Emulated timings say nothing about a real board; the server says it is emulated
(``f8tvm.board.info``) and f8tvm's clients print so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from f8tvm.core.errors import ToolchainError

from .board_server import EMULATOR_ENV, READY

BOARD_DIR_ENV = "F8TVM_BOARD_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "f8tvm", "aarch64-board")
QEMU = "qemu-aarch64-static"
QEMU_PACKAGE = "qemu-user-static"
BOARD_PYTHON = "3.11"  # Debian 12's python3; the wheels below are its cp311 builds
DEBIAN_PACKAGES = (f"python{BOARD_PYTHON}", "libstdc++6")
# The board's Python packages: the TVM runtime pair pinned like the host's (see setup.py), numpy,
# what TVM's RPC server imports (tornado/psutil/cloudpickle for trackers and popen pools) and
# pillow for `python -m f8tvm.run --input IMAGE` on the board.
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "ml_dtypes",
          "typing_extensions", "psutil", "cloudpickle", "tornado", "pillow")
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64")
# f8tvm's deployment runtime: what a board needs besides the TVM runtime wheel and numpy (the
# README's deployment section lists the same files; none of them imports torch or TVM's
# compiler), as (folder in the project, files, where they go under the board's app folder)
RUNTIME_FILES = (
    ("f8tvm", ("__init__.py", "runtime.py", "run.py", "data.py"), "f8tvm"),
    ("f8tvm/core", ("__init__.py", "errors.py", "fixedpoint.py"), "f8tvm/core"),
    # the target presets (pure Python): the runtime reads the CPU's flags with f8tvm.targets.cpu
    ("targets", ("__init__.py", "base.py", "cpu.py", "x86.py", "arm.py", "mcu.py"),
     "f8tvm/targets"),
)
# this emulated board's RPC server (a tool of ours, beside the runtime on the board)
SERVER = "board_server.py"
# bump when what setup builds changes, so old caches are rebuilt
LAYOUT_VERSION = "7"


def board_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(BOARD_DIR_ENV) or DEFAULT_DIR))


def find_qemu() -> str:
    """Path of the aarch64 user-mode emulator; a clear error naming its package if missing."""
    path = shutil.which(QEMU)
    if path is None:
        raise ToolchainError(f"{QEMU} is not installed; the emulated board needs it. Install it "
                             f"with (root): apt-get install {QEMU_PACKAGE}")
    return path


def _say(msg: str) -> None:
    print(f"[board] {msg}", flush=True)


def _run(cmd, **kw):
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n"
                           f"{(r.stdout + r.stderr)[-3000:]}")
    return r


@dataclass
class BoardPaths:
    root: str

    @property
    def sysroot(self):
        return os.path.join(self.root, "sysroot")

    @property
    def site(self):
        return os.path.join(self.root, "site")

    @property
    def app(self):
        return os.path.join(self.root, "app")

    @property
    def apt(self):
        return os.path.join(self.root, "apt")

    @property
    def wheels(self):
        return os.path.join(self.root, "wheels")

    @property
    def python(self):
        return os.path.join(self.sysroot, "usr", "bin", f"python{BOARD_PYTHON}")

    @property
    def server_file(self):
        return os.path.join(self.root, "server.json")

    @property
    def log_file(self):
        return os.path.join(self.root, "server.log")

    def marker(self, step):
        return os.path.join(self.root, f".done-{step}-v{LAYOUT_VERSION}")


# ---------------------------------------------------------------------------------- setup steps
def private_apt(apt_dir: str) -> list[str]:
    """apt-get options for a private state in ``apt_dir`` (made here): its own package lists,
    cache and an empty dpkg status (so every dependency is downloaded), no locks; the host's
    package database is never read or written."""
    state, cache = os.path.join(apt_dir, "state"), os.path.join(apt_dir, "cache")
    os.makedirs(os.path.join(state, "lists", "partial"), exist_ok=True)
    os.makedirs(os.path.join(cache, "archives", "partial"), exist_ok=True)
    open(os.path.join(state, "status"), "a").close()
    return ["-o", f"Dir::State={state}", "-o", f"Dir::State::status={state}/status",
            "-o", f"Dir::Cache={cache}", "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=", "-o", "Debug::NoLocking=true",
            "-o", "Acquire::Languages=none"]


def board_wheel_options() -> list[str]:
    """pip options that select the board's wheels: aarch64, CPython 3.11, binary, no deps."""
    plat = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
    return [*plat, "--only-binary=:all:", "--python-version", BOARD_PYTHON,
            "--implementation", "cp", "--abi", f"cp{BOARD_PYTHON.replace('.', '')}",
            "--no-deps", "--disable-pip-version-check"]


def _apt_options(paths: BoardPaths) -> list[str]:
    """apt-get options for a private arm64 state: the host's sources and keys, nothing else."""
    return [*private_apt(paths.apt),
            "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
            "-o", "APT::Get::Download-Only=true", "-o", "APT::Install-Recommends=false"]


def _setup_debs(paths: BoardPaths) -> None:
    if os.path.exists(paths.marker("debs")):
        return
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ToolchainError("the emulated board's sysroot is built with apt-get and dpkg "
                             "(a Debian or Ubuntu host)")
    archives = os.path.join(paths.apt, "cache", "archives")
    opts = _apt_options(paths)
    _say("arm64 package lists (apt-get update, private state) ...")
    _run(["apt-get", *opts, "update"])
    _say(f"downloading arm64 packages: {' '.join(DEBIAN_PACKAGES)} and dependencies ...")
    _run(["apt-get", *opts, "-y", "install", *DEBIAN_PACKAGES])
    debs = sorted(glob.glob(os.path.join(archives, "*.deb")))
    if not debs:
        raise RuntimeError(f"apt-get downloaded no packages into {archives}")
    os.makedirs(paths.sysroot, exist_ok=True)
    _say(f"unpacking {len(debs)} packages into {paths.sysroot} ...")
    for deb in debs:
        _run(["dpkg", "-x", deb, paths.sysroot])
    if not os.path.exists(paths.python):
        raise RuntimeError(f"no {paths.python} after unpacking the packages")
    open(paths.marker("debs"), "w").close()


def _setup_wheels(paths: BoardPaths) -> None:
    if os.path.exists(paths.marker("wheels")):
        return
    common = board_wheel_options()
    pip = [sys.executable, "-m", "pip"]
    _say(f"downloading aarch64 wheels: {' '.join(WHEELS)} ...")
    _run([*pip, "download", "-d", paths.wheels, *common, *WHEELS])
    _say(f"installing them into {paths.site} ...")
    shutil.rmtree(paths.site, ignore_errors=True)
    _run([*pip, "install", "--target", paths.site, "--no-index", "--find-links", paths.wheels,
          *common, *WHEELS])
    # A deployment board has TVM's runtime only: drop the 250 MB compiler library (the runtime
    # then loads libtvm_runtime.so, with TVM_USE_RUNTIME_LIB=1).
    for lib in glob.glob(os.path.join(paths.site, "tvm", "lib", "libtvm_compiler*.so")):
        os.remove(lib)
    open(paths.marker("wheels"), "w").close()


def _install_runtime_files(paths: BoardPaths) -> None:
    """Copy f8tvm's deployment runtime (no torch, no compiler) to the board."""
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder, names, dst in RUNTIME_FILES:
        os.makedirs(os.path.join(paths.app, dst), exist_ok=True)
        for name in names:
            shutil.copy2(os.path.join(project, folder, name), os.path.join(paths.app, dst, name))
    shutil.copy2(os.path.join(project, "tools", SERVER), os.path.join(paths.app, SERVER))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- the board
class EmulatedBoard:
    """An emulated aarch64 board serving TVM RPC on ``host:port``.

    Parameters
    ----------
    root : str, optional
        Cache folder (default: ``$F8TVM_BOARD_DIR`` or ``~/.cache/f8tvm/aarch64-board``).
    host : str
        Address the RPC server listens on (loopback by default).
    port : int, optional
        First port to try; a free one is picked when omitted.
    tracker : str, optional
        ``host:port`` of a TVM RPC tracker the server registers with (under ``key``), so that
        ``f8tvm.tune --rpc-tracker`` can measure on it.
    key : str
        The device key announced to the tracker.

    Examples
    --------
    >>> with EmulatedBoard() as board:                     # setup (cached), start, stop
    ...     m = f8tvm.runtime.load("resnet18-arm.so", remote=board.address)
    """

    def __init__(self, root: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 tracker: str | None = None, key: str = "emulated-aarch64"):
        self.paths = BoardPaths(os.path.abspath(root) if root else board_dir())
        self.host = host
        self.port = port
        self.tracker, self.key = tracker, key
        self._proc = None
        self._owned = False  # started by this object (so __exit__ stops it)

    # ------------------------------------------------------------------ set up
    @property
    def is_set_up(self) -> bool:
        return all(os.path.exists(self.paths.marker(s)) for s in ("debs", "wheels"))

    def setup(self) -> None:
        """Build the sysroot and install the wheels (cached; resumes after an interruption)."""
        find_qemu()
        os.makedirs(self.paths.root, exist_ok=True)
        if self.is_set_up:
            _say(f"already set up in {self.paths.root}")
        else:
            t0 = time.time()
            _setup_debs(self.paths)
            _setup_wheels(self.paths)
            _say(f"set up in {time.time() - t0:.0f} s: {self.paths.root}")
        _install_runtime_files(self.paths)

    # ------------------------------------------------------------------ run
    def env(self) -> dict:
        """Environment of a process on the board."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "LD_", "VIRTUAL_ENV", "TVM_"))}
        env.update(PYTHONPATH=os.pathsep.join([self.paths.app, self.paths.site]),
                   PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
                   TVM_USE_RUNTIME_LIB="1",  # the compiler library is not on the board
                   # One worker thread: emulated parallelism buys nothing on a shared host, and
                   # thread pools in processes forked under qemu-user are a deadlock risk.
                   TVM_NUM_THREADS="1",
                   **{EMULATOR_ENV: QEMU})
        return env

    def command(self, *args: str) -> list[str]:
        """Command line running the board's Python with ``args``."""
        return [find_qemu(), "-L", self.paths.sysroot, self.paths.python, *args]

    def run_python(self, *args: str, timeout: float = 600, cwd: str | None = None):
        """Run the board's Python (``python args...``) to completion; a CompletedProcess.  It
        runs in ``cwd``, by default the board's app folder: in a checkout of this project the
        current folder's ``f8tvm/`` would shadow the runtime files deployed to the board."""
        return subprocess.run(self.command(*args), check=False, env=self.env(),
                              cwd=cwd or self.paths.app,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, timeout: float = 300) -> tuple[str, int]:
        """Start the RPC server (``setup`` first if needed); returns ``(host, port)``."""
        if not self.is_set_up:
            self.setup()
        else:
            _install_runtime_files(self.paths)
        running = self.status()
        if running and running.get("tracker") != self.tracker:
            raise RuntimeError(
                f"an emulated board already runs on {running['host']}:{running['port']} "
                f"registered with tracker {running.get('tracker')!r}, not {self.tracker!r}; "
                "stop it first (python -m tools.emulated_board stop)")
        if running:
            self.host, self.port = running["host"], running["port"]
            _say(f"already running: {self.host}:{self.port} (pid {running['pid']})")
            return self.host, self.port
        port = self.port or _free_port(self.host)
        server = os.path.join(self.paths.app, SERVER)
        # Output goes to a file, not a pipe: the server outlives `start` run from the CLI.
        with open(self.paths.log_file, "w") as log:
            # own session: stop() signals the whole group (the server and its forked sessions)
            self._proc = subprocess.Popen(
                self.command(server, "--host", self.host, "--port", str(port),
                             "--port-end", str(port + 50),
                             *(["--tracker", self.tracker, "--key", self.key]
                               if self.tracker else [])),
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

        deadline, line = time.time() + timeout, ""
        while time.time() < deadline and self._proc.poll() is None and not line:
            time.sleep(0.5)
            with open(self.paths.log_file) as f:
                line = next((x for x in f if x.startswith(READY)), "")
        if not line:
            self.stop()
            with open(self.paths.log_file) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"the emulated board's RPC server did not start:\n{tail}")
        self._owned = True
        self.port = int(line.split()[1].rsplit(":", 1)[1])
        with open(self.paths.server_file, "w") as f:
            json.dump({"pid": self._proc.pid, "host": self.host, "port": self.port,
                       "emulator": QEMU, "started": time.time(), "tracker": self.tracker,
                       "key": self.key if self.tracker else None}, f)
        _say(f"RPC server on {self.host}:{self.port} (pid {self._proc.pid}); emulated: "
             f"timings are not those of a real board")
        return self.host, self.port

    def status(self) -> dict | None:
        """The running server recorded in ``server.json`` (None if none is alive)."""
        try:
            with open(self.paths.server_file) as f:
                info = json.load(f)
            # the recorded pid must still be our server, not a process that reused the number
            with open(f"/proc/{int(info['pid'])}/cmdline", "rb") as f:
                if b"board_server.py" not in f.read():
                    return None
        except (OSError, ValueError, KeyError):
            return None
        return info

    def stop(self) -> None:
        """Stop the server this board started (by its recorded pid and process group)."""
        info = self.status()
        pid = self._proc.pid if self._proc is not None else info and info["pid"]
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)  # the server leads its own process group
            except OSError:
                pass
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(pid, signal.SIGKILL)
                    self._proc.wait()
            _say(f"stopped the RPC server (pid {pid})")
        self._proc = None
        if os.path.exists(self.paths.server_file):
            os.remove(self.paths.server_file)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        if self._owned:  # leave a server started elsewhere (the CLI) running
            self.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.emulated_board",
                                description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["setup", "start", "stop", "status"])
    p.add_argument("--dir", help=f"cache folder (default: ${BOARD_DIR_ENV} or {DEFAULT_DIR})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--tracker", metavar="HOST:PORT",
                   help="register the RPC server with this TVM RPC tracker (for f8tvm.tune)")
    p.add_argument("--key", default="emulated-aarch64", help="device key at the tracker")
    a = p.parse_args(argv)
    if a.tracker and (":" not in a.tracker or not a.tracker.rsplit(":", 1)[1].isdigit()):
        p.error(f"--tracker must be HOST:PORT, got {a.tracker!r}")
    board = EmulatedBoard(a.dir, a.host, a.port, a.tracker, a.key)
    try:
        if a.command == "setup":
            board.setup()
        elif a.command == "start":
            host, port = board.start()
            board._proc = None  # keep it running after this command exits
            print(f"{host}:{port}")
        elif a.command == "stop":
            if board.status() is None:
                _say("no server running")
            board.stop()
        else:
            info = board.status()
            print(f"folder:  {board.paths.root}")
            print(f"set up:  {'yes' if board.is_set_up else 'no'}")
            print("server:  " + (f"{info['host']}:{info['port']} (pid {info['pid']}, emulated "
                                 f"by {info['emulator']})" if info else "not running"))
            if info and info.get("tracker"):
                print(f"tracker: {info['tracker']} (key {info['key']})")
    except (ToolchainError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
