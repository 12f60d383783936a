"""Local servers for chapter 08's online path: Redis (the online feature store) and any 127.0.0.1 server process.

:class:`LocalServer` starts a command as a subprocess in its own session
(process group) on a free port of 127.0.0.1 (:func:`free_port`), waits until
it answers (bounded), and :meth:`LocalServer.stop` ends it **with its
children** (SIGTERM to the group, SIGKILL after a grace period) on every
path: as a context manager, on errors, and at interpreter exit.
:class:`RedisServer` runs Debian's ``redis-server`` that way, bound to
127.0.0.1, its data in a temporary folder (an RDB file, so a restart of the
same server finds the snapshot again).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["free_port", "LocalServer", "RedisServer", "redis_status"]

_LIVE: weakref.WeakSet = weakref.WeakSet()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class LocalServer:
    """A server subprocess on 127.0.0.1, started in its own process group and stopped with its children.

    Args:
        command: the argv; it must bind ``port`` on 127.0.0.1.
        port: the port it listens on (:func:`free_port`).
        ready: called until it returns True (default: the port accepts connections).
        start_timeout_s: how long :meth:`start` waits for ``ready``.
        log: file for the server's stdout/stderr (default: a temporary file).
        env: extra environment variables.

    Raises:
        RuntimeError (from :meth:`start`): the process exited or did not become ready in time;
            the message carries the end of its log.
    """

    def __init__(self, command: Sequence[str], port: int, *, ready: Callable[[], bool] | None = None,
                 start_timeout_s: float = 30.0, log: str | Path | None = None, env: dict | None = None):
        self.command, self.port = list(command), int(port)
        self._ready = ready or (lambda: _port_open(self.port))
        self.start_timeout_s = start_timeout_s
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="ecrec-server-", suffix=".log")[1])
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> LocalServer:
        """Start the process and wait until it is ready (bounded by ``start_timeout_s``)."""
        if self.running:
            return self
        env = {**os.environ, **(self.env or {})}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)
        _LIVE.add(self)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(Exception):
                if self._ready():
                    return self
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{Path(self.command[0]).name} on 127.0.0.1:{self.port} did not start within "
                           f"{self.start_timeout_s:.0f} s; the end of its log ({self.log}):\n{tail}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; reap the process. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group: uvicorn's workers, redis' forks
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, even after the leader exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        _LIVE.discard(self)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:  # a kernel or test run that ends without stop(): no orphan left
    for server in list(_LIVE):
        server.stop(grace_s=2.0)


def redis_status() -> tuple[bool, str]:
    """Whether ``redis-server`` and the ``redis`` client are installed: ``(ok, message)``."""
    if shutil.which("redis-server") is None:
        return False, "redis-server not found (Debian/Ubuntu: apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return False, "the redis client is not installed (pip install redis)"
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10)
    return True, out.stdout.strip()


class RedisServer(LocalServer):
    """Debian's ``redis-server`` on a free port of 127.0.0.1, its data in a temporary folder.

    No persistence except an explicit ``SAVE`` (:func:`ecrec.feature_store.write_to_redis`
    does one): a :meth:`stop` then :meth:`start` on the same port reloads that
    snapshot, which is how the tests stop Redis mid-run and bring it back.
    ``maxmemory`` bounds it; the folder is removed by :meth:`close`.

    Raises:
        RuntimeError: ``redis-server`` is not installed, or did not start (see :class:`LocalServer`).
    """

    def __init__(self, port: int | None = None, *, maxmemory_mb: int = 512, start_timeout_s: float = 20.0):
        ok, message = redis_status()
        if not ok:
            raise RuntimeError(message)
        self.dir = Path(tempfile.mkdtemp(prefix="ecrec-redis-"))
        port = port or free_port()
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.dir),
                   "--dbfilename", "snapshot.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no",
                   "--protected-mode", "yes", "--maxmemory", f"{maxmemory_mb}mb", "--loglevel", "warning"]
        super().__init__(command, port, ready=self._ping, start_timeout_s=start_timeout_s, log=self.dir / "redis.log")

    def _ping(self) -> bool:
        c = self.client(timeout_s=0.5)
        try:
            return bool(c.ping())
        finally:
            c.close()

    def client(self, timeout_s: float = 2.0):
        """A ``redis.Redis`` client of this server (the caller closes it)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s,
                           socket_connect_timeout=timeout_s)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()
