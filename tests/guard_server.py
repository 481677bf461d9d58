"""Starting and stopping a real `neuroprint serve` process for the guard tests (uvicorn on 127.0.0.1)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(guard_dir: Path, *args: str, startup_s: float = 90.0) -> Iterator[str]:
    """Run `neuroprint serve --guard guard_dir ARGS` on a free port until the block ends; yields its base URL.

    The server's output goes to a log file next to the guard, shown if it fails to start."""
    port = free_port()
    executable = Path(sys.executable).parent / "neuroprint"
    log_path = guard_dir.parent / f"serve-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(executable), "serve", "--guard", str(guard_dir), "--port", str(port), *args],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"neuroprint serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"neuroprint serve did not become ready in {startup_s} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
