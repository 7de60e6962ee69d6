"""Real servers for integration tests, started on 127.0.0.1 and stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log and log.exists() else ""
                raise RuntimeError(f"{url} did not come up in {timeout}s\n{tail}") from None
            time.sleep(0.2)


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def moto_server(tmp: Path) -> Iterator[str]:
    """An S3-compatible HTTP server (moto) on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    log = tmp / "moto.log"
    proc = start([exe, "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/", log=log)
        yield url
    finally:
        stop(proc)


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A real redis-server (Debian package) on 127.0.0.1 without persistence; yields host:port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
    port = free_port()
    proc = start([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                 tmp / "redis.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError((tmp / "redis.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@contextmanager
def mlflow_server(tmp: Path) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, artifacts proxied over HTTP) on 127.0.0.1."""
    port = free_port()
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    log = tmp / "mlflow-server.log"
    url = f"http://127.0.0.1:{port}"
    with http_service([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                       "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                       "--artifacts-destination", (tmp / "mlflow-artifacts").as_uri()],
                      log, url + "/health", env={**os.environ, "MLFLOW_TRACKING_URI": ""}):
        yield url


@contextmanager
def http_service(cmd: list[str], log: Path, health_url: str, env: dict[str, str],
                 timeout: float = 180) -> Iterator[None]:
    """Run ``cmd`` until the block ends, once ``health_url`` answers."""
    proc = start(cmd, log, env)
    try:
        wait_http(health_url, timeout=timeout, log=log)
        yield
    finally:
        stop(proc)


POSTGRES_CONTROL: dict[str, Callable[[str], None]] = {}  # URL -> stop/start of that test cluster


@contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL 15 on 127.0.0.1 in a temp cluster; yields a SQLAlchemy URL of database ``loopml``.

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user (Debian's binaries
    in /usr/lib/postgresql/15/bin); its folder lives under /tmp where that user can write."""
    import glob
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (15 is used in CI)")
    bin_dir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="loopml-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
                    "-t", "120", "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True, timeout=180)
    def control(action: str) -> None:  # "stop" (fast: connections are cut, as in an outage) or "start"
        mode = ["-m", "fast"] if action == "stop" else ["-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
                                                             "-c fsync=off", "-l", str(folder / "server.log")]
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), *mode, "-w", "-t", "120", action],
                       check=True, capture_output=True, timeout=180)

    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/loopml"
    POSTGRES_CONTROL[url] = control
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "loopml"], check=True, capture_output=True, timeout=60)
        yield url
    finally:
        POSTGRES_CONTROL.pop(url, None)
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def prefect_server(tmp: Path) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1 with its own home and SQLite database; yields
    its API URL. Tests that only need an API share one (the ``prefect_api`` fixture): each run
    that would start a temporary server of its own costs ~16 s on this machine."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    with http_service([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                      tmp / "prefect-server.log", url + "/health", env):
        yield url



class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of a server, that a test can cut (the listener closes and
    every open connection is reset: a network outage as clients see it) and restore on the same port."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port, self.port = target_port, free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._open -= {source, sink}
