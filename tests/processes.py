"""Process helpers shared by the tests that start, kill and wait for processes: a rendezvous port held from
the moment it is picked, a free TCP port, an "exited" check that tolerates the races of reading ``/proc``,
and polling with a deadline."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def rendezvous_env() -> Iterator[dict[str, str]]:
    """Environment for ranks started by the test (``mp.spawn``): the TCP store they meet in is served by
    this process on a port the OS picked at bind time and held until the block ends, and every rank joins
    it as a client (``TORCHELASTIC_USE_AGENT_STORE``, as under torchrun). Unlike ``free_port`` there is no
    moment at which another program on the machine can take the port first."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        yield {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True",
        }
    finally:
        del store


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process may still take it before it is
    used: prefer ``rendezvous_env`` for ranks, ``torchrun --standalone`` for trainers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exited(pid: int) -> bool:
    """``pid`` has exited: gone, or a zombie waiting to be reaped (by a parent that may itself be dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read (ESRCH)
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def wait_exited(pids: Iterable[int], timeout: float) -> list[int]:
    """Poll until every pid has exited or ``timeout`` seconds pass; returns those still running."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if not exited(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def kill_and_wait(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    """SIGKILL ``proc`` (if still running) and reap it; its return code (``-9`` when the kill landed)."""
    if proc.poll() is None:
        proc.kill()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
