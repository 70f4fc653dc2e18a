"""Loopback ports for the servers that tests, benches and the demo start.

A server that can choose its own port does: nats-server listens on port -1 (any
free one) and names the port it took in its ports file, so no other process can
take the port between our choosing it and the server binding it. ``free_port`` is
for the servers that must be told a port up front (a NATS cluster's routes name
each other's ports; the injector's --listen): the kernel picks a free one, which is
free again when the server binds it unless something else is started meanwhile.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_client_port(ports_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The client port a nats-server (started with ``ports_file_dir: ports_dir``)
    listens on: it writes ``nats-server_<pid>.ports`` once it is listening."""
    path = ports_dir / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urls = json.loads(path.read_text())["nats"]
            return int(urls[0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            if proc.poll() is not None:
                message = f"nats-server exited ({proc.returncode}) before listening"
                raise RuntimeError(message) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server wrote no ports file in {ports_dir}") from None
            time.sleep(0.01)
