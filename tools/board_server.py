"""A TVM RPC server for an ARM board, started in this very process.

``python -m tvm.exec.rpc_server`` starts its server in a fresh interpreter (``subprocess`` of
``sys.executable``).  Under user-mode emulation without binfmt_misc that exec fails ("Exec format
error"), so this script runs the same server code in the current interpreter; each RPC session
is still a forked child, and fork works under emulation.  On a real board either server works.

It also registers ``f8tvm.board.info`` so that a client can tell an emulated board from a real
one (emulated timings mean nothing).  Needs only the TVM runtime wheel (and tornado/psutil/
cloudpickle when a tracker is used).

Usage (on the board): ``python board_server.py [--host H] [--port P] [--port-end E]
[--tracker HOST:PORT --key KEY]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import tvm_ffi
from tvm.rpc import server

READY = "F8TVM_RPC_READY"  # the line a launcher waits for
EMULATOR_ENV = "F8TVM_BOARD_EMULATOR"  # set by the launcher of an emulated board


def board_info() -> str:
    """JSON: machine, Python version, and the emulator when the board is emulated."""
    return json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                       "emulator": os.environ.get(EMULATOR_ENV) or None})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=9199)
    p.add_argument("--tracker", help="HOST:PORT of an RPC tracker to register with")
    p.add_argument("--key", default="", help="device key announced to the tracker")
    a = p.parse_args(argv)

    # Registered before the server forks its session processes, so every session sees it.
    tvm_ffi.register_global_func("f8tvm.board.info", board_info, override=True)
    tracker = None
    if a.tracker:
        host, port = a.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    port = server._popen_start_rpc_server(a.host, a.port, a.port_end, tracker_addr=tracker,
                                          key=a.key)
    print(f"{READY} {a.host}:{port}", flush=True)
    server.PopenRPCServerState.current.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
