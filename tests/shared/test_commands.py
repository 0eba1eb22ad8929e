"""Every command of every service fails on one line an operator can act on, and never spins.

Each test runs the installed console scripts (``users``, ``orders``, ``notify``) as child processes
with a clean environment: bad settings are exit status 2 and one line naming the variable; an
unreachable dependency is exit status 1 and one line; SIGTERM and SIGINT always stop a worker.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from devtools.stack.servers import free_port
from devtools.testing import prepare_service_database
from orders.app import DATABASE as ORDERS_DATABASE
from tests.shared.commands import (
    COMMAND_TIMEOUT,
    SERVICES,
    Finished,
    clean_environment,
    console_script,
    leaf_commands,
    run_command,
)

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js.client import JetStreamContext

    from devtools.stack.servers import NatsServer, PostgresServer

ARGUMENTS: dict[tuple[str, ...], list[str]] = {
    ("revision",): ["-m", "probe"],
    ("events", "replay"): ["1"],
    ("events", "discard"): ["1"],
    ("create-admin",): ["--email", "admin@example.com", "--password", "long enough pw"],
}
"""What each command needs besides settings; a new command with required arguments is added here."""

NEEDS_NATS: tuple[tuple[str, ...], ...] = (
    ("worker",),
    ("events", "dead-letters"),
    ("events", "replay"),
    ("events", "discard"),
)

UNREACHABLE_DATABASE = "postgresql+asyncpg://nobody:secret@127.0.0.1:{port}/relay"
NOTIFY_NEEDS = {"NOTIFY_UNSUBSCRIBE_SECRET": "unsubscribe-secret-for-the-tests", "NOTIFY_EMAIL_URL": "file:mail"}
"""What notify's worker needs besides the database and NATS (ignored by the other services)."""

Kind = Callable[[str, "Path"], tuple[dict[str, str], str]]
"""A way to get the settings wrong: (variables, the start of the line that must name it)."""


def _missing(prefix: str, _tmp: Path) -> tuple[dict[str, str], str]:
    return {}, f"{prefix}_DATABASE_URL is not set"


def _wrong_type(prefix: str, _tmp: Path) -> tuple[dict[str, str], str]:
    variables = {f"{prefix}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()), f"{prefix}_HTTP_PORT": "abc"}
    return variables, f"{prefix}_HTTP_PORT: expected int, got 'abc'"


def _unreadable_file(prefix: str, tmp: Path) -> tuple[dict[str, str], str]:
    return {f"{prefix}_DATABASE_URL_FILE": str(tmp / "no-such-secret")}, f"{prefix}_DATABASE_URL_FILE: cannot read"


KINDS: tuple[Kind, ...] = (_missing, _wrong_type, _unreadable_file)


def _command_line(words: tuple[str, ...]) -> list[str]:
    return [*words, *ARGUMENTS.get(words, [])]


def _run_all(jobs: list[tuple[str, list[str], dict[str, str]]], cwd: Path) -> list[Finished]:
    # Children run side by side: each spends seconds importing, and there are dozens of them.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda job: run_command(job[0], job[1], job[2], cwd), jobs))


def _one_line_problems(finished: Finished, service: str, expected: str, code: int) -> list[str]:
    problems = []
    if finished.code != code:
        problems.append(f"exit status {finished.code}, not {code}")
    lines = finished.error_lines
    if len(lines) != 1 or not lines[0].startswith(f"{service}: {expected}"):
        problems.append(f"stderr is not one line starting {service}: {expected!r}")
    if finished.stdout.strip():
        problems.append("printed on stdout")
    return [f"{problem}; stderr={finished.stderr[-600:]!r}" for problem in problems]


def test_every_command_of_every_service_names_the_bad_setting_on_one_line(tmp_path: Path) -> None:
    jobs, expectations = [], []
    for service_number, (service, group) in enumerate(SERVICES.items()):
        for command_number, words in enumerate(leaf_commands(group)):
            # Every command of every service gets one kind, and every kind reaches every service.
            kind = KINDS[(service_number + command_number) % len(KINDS)]
            variables, expected = kind(service.upper(), tmp_path)
            jobs.append((service, _command_line(words), clean_environment(variables)))
            expectations.append((service, words, kind.__name__, expected))
    assert len(jobs) >= 3 * 8, "every service has at least api, worker, migrate, revision and four events commands"

    failures = []
    for (service, words, kind_name, expected), finished in zip(expectations, _run_all(jobs, tmp_path), strict=True):
        failures += [
            f"{service} {' '.join(words)} ({kind_name}): {problem}"
            for problem in _one_line_problems(finished, service, expected, code=2)
        ]
    assert not failures, "\n".join(failures)
    assert not list(tmp_path.rglob("*.py")), "no command got far enough to write a migration"


def test_commands_that_need_nats_refuse_at_once_when_it_is_not_set(tmp_path: Path) -> None:
    jobs, expectations = [], []
    for number, service in enumerate(SERVICES):
        # The worker of every service, and each events command that needs NATS in one service or another.
        for words in (("worker",), NEEDS_NATS[1 + number % (len(NEEDS_NATS) - 1)]):
            variables = {f"{service.upper()}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port())}
            jobs.append((service, _command_line(words), clean_environment(variables)))
            expectations.append((service, words))
    failures = []
    for (service, words), finished in zip(expectations, _run_all(jobs, tmp_path), strict=True):
        expected = f"{service.upper()}_NATS_URL is not set"
        failures += [f"{service} {' '.join(words)}: {p}" for p in _one_line_problems(finished, service, expected, 2)]
    assert not failures, "\n".join(failures)


def test_a_configured_nats_that_is_down_makes_commands_give_up_on_one_line(tmp_path: Path) -> None:
    dead = free_port()
    jobs = [
        ("orders", ["worker"]),
        ("users", ["events", "dead-letters"]),
        ("notify", ["events", "replay", "1"]),
        ("orders", ["api"]),
    ]
    runs = [
        (
            service,
            args,
            clean_environment(
                {
                    f"{service.upper()}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()),
                    f"{service.upper()}_NATS_URL": f"nats://127.0.0.1:{dead}",
                    f"{service.upper()}_NATS_CONNECT_TIMEOUT_SECONDS": "2",
                    f"{service.upper()}_WORKER_HEALTH_PORT": "0",
                    "ORDERS_JWKS_URL": "http://127.0.0.1:1/.well-known/jwks.json",
                    **NOTIFY_NEEDS,
                }
            ),
        )
        for service, args in jobs
    ]
    for (service, args, _env), finished in zip(runs, _run_all(runs, tmp_path), strict=True):
        assert finished.code == 1, (service, args, finished.stderr[-600:])
        assert "Traceback" not in finished.stderr, finished.stderr
        expected = f"{service}: could not connect to NATS at nats://127.0.0.1:{dead} within 2s"
        # The worker logs its attempts first (JSON lines); the last line is the verdict.
        assert finished.error_lines[-1].startswith(expected), (service, args, finished.stderr[-600:])
        if args[0] != "worker":  # a command for a person: nothing but the verdict
            assert len(finished.error_lines) == 1, finished.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    runs = [
        (
            "users",
            ["migrate"],
            clean_environment({"USERS_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port())}),
        ),
        (
            "notify",
            ["events", "status"],
            clean_environment({"NOTIFY_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()), **NOTIFY_NEEDS}),
        ),
    ]
    for (service, args, _env), finished in zip(runs, _run_all(runs, tmp_path), strict=True):
        problems = _one_line_problems(finished, service, "cannot reach the database: ", code=1)
        assert not problems, (service, args, problems)


def _start_worker_waiting_for_a_dead_nats(
    service: str, tmp_path: Path
) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    prefix = service.upper()
    environment = clean_environment(
        {
            f"{prefix}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()),
            f"{prefix}_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            f"{prefix}_NATS_CONNECT_TIMEOUT_SECONDS": "600",  # only the signal can end this wait
            f"{prefix}_WORKER_HEALTH_PORT": "0",
        }
    )
    process = subprocess.Popen(
        [console_script(service), "worker"],
        env=environment,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while "connecting to nats" not in lines.get(timeout=COMMAND_TIMEOUT):
        pass
    return process, seen, reader


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_waiting_for_nats_stops_on_a_signal(signum: signal.Signals, tmp_path: Path) -> None:
    process, seen, reader = _start_worker_waiting_for_a_dead_nats("orders", tmp_path)
    try:
        process.send_signal(signum)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=30)
        assert process.stderr is not None
        process.stderr.close()
    stderr = "".join(seen)
    assert code == 0, stderr[-800:]
    assert "Traceback" not in stderr
    assert "stopped before NATS answered" in stderr


SPINNER = """
import asyncio
from shared.worker import install_stop_signals

async def main() -> None:
    stop = asyncio.Event()
    install_stop_signals(asyncio.get_running_loop(), stop, grace_seconds=1, name="spinner")
    print("spinning", flush=True)
    while True:  # never yields to the event loop, as nats-py did on an empty server list
        pass

asyncio.run(main())
"""


def test_the_stop_watchdog_ends_a_process_whose_event_loop_never_yields() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SPINNER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "spinning"
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "spinner: did not stop within 1s of the signal; exiting" in err


@pytest.fixture(scope="module")
def orders_database_url(postgres_server: PostgresServer) -> str:
    return prepare_service_database(postgres_server, ORDERS_DATABASE)


async def test_events_commands_report_undecodable_and_unknown_dead_letters_on_one_line(
    orders_database_url: str, nats_server: NatsServer, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    ack = await jetstream.publish(
        "dlq.USERS.orders-users-replica",
        b"\xffnot an event",
        headers={
            "Relay-Consumer": "orders-users-replica",
            "Relay-Original-Stream": "USERS",
            "Relay-Original-Subject": "users.user.registered",
            "Relay-Original-Sequence": "7",
            "Relay-Attempts": "1",
            "Relay-Error": "undecodable: not JSON",
        },
    )
    environment = clean_environment(
        {"ORDERS_DATABASE_URL": orders_database_url, "ORDERS_NATS_URL": nats_server.url, "ORDERS_LOG_JSON": "false"}
    )

    async def orders(*args: str) -> Finished:
        return await asyncio.to_thread(run_command, "orders", list(args), environment, tmp_path)

    replayed = await orders("events", "replay", str(ack.seq))
    expected = f"dead letter {ack.seq} not replayed: dead letter {ack.seq} cannot be decoded"
    assert not _one_line_problems(replayed, "orders", expected, code=1), replayed

    unknown = await orders("events", "replay", str(ack.seq + 1000))
    assert not _one_line_problems(unknown, "orders", f"no dead letter {ack.seq + 1000}", code=1), unknown

    every = await orders("events", "replay", "--all")
    assert every.code == 1, every
    assert every.stdout.strip().startswith(f"{ack.seq}: not replayed: dead letter {ack.seq} cannot be decoded")
    assert every.error_lines == ["orders: 1 of 1 dead letter(s) not replayed"], every

    listed = await orders("events", "dead-letters")
    assert listed.code == 0, listed
    assert listed.stdout.strip().endswith("1 dead letter(s)"), "a letter that was not replayed stays"


def test_api_refuses_keys_it_cannot_use_on_one_line(tmp_path: Path) -> None:
    # Checked before granian starts: otherwise each granian worker would die with a traceback.
    database = {
        f"{service.upper()}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()) for service in SERVICES
    }
    runs = [
        ("users", ["api"], clean_environment({**database, "USERS_JWT_PRIVATE_KEY": "not a key"})),
        ("orders", ["api"], clean_environment({**database, "ORDERS_JWT_PUBLIC_KEYS": "not a key"})),
        ("notify", ["api"], clean_environment({**database, **NOTIFY_NEEDS})),
    ]
    expected = {
        "users": "USERS_JWT_PRIVATE_KEY: not an unencrypted Ed25519 private key",
        "orders": "ORDERS_JWT_PUBLIC_KEYS: holds no PEM public key",
        "notify": "NOTIFY_JWT_PUBLIC_KEYS or NOTIFY_JWKS_URL must be set",
    }
    for (service, _args, _env), finished in zip(runs, _run_all(runs, tmp_path), strict=True):
        problems = _one_line_problems(finished, service, expected[service], code=2)
        assert not problems, (service, problems)


SERVING_ONLY_IN_THE_WORKER = (
    "litestar",
    "sqlalchemy",
    "advanced_alchemy",
    "cryptography",
    "opentelemetry",
    "nats",
    "structlog",
    "rich",
    "granian",
)
"""Packages the app needs and granian's main process does not: they cost memory in every API pod.

(``granian`` is here to prove the probe sees what is imported: it must be the only one held.)"""

MAIN_PROCESS_PROBE = """
import sys
import granian

class Probe:
    def __init__(self, **options):
        self.options = options
    def serve(self):
        # Here granian's main process would start serving: say what it holds, and where it listens.
        held = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[2].split(",")))
        print(",".join(held), self.options["address"], self.options["port"], self.options["workers"])

granian.Granian = Probe
from importlib import import_module
import_module(sys.argv[1] + ".cli").main(["api"])
"""


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_api_checks_the_app_in_a_child_and_granians_main_process_holds_none_of_it(service: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    prefix = service.upper()
    port = free_port()
    variables = {
        f"{prefix}_DATABASE_URL": UNREACHABLE_DATABASE.format(port=free_port()),  # building the app connects nowhere
        f"{prefix}_JWT_PUBLIC_KEYS": public_pem.decode(),
        f"{prefix}_JWT_PRIVATE_KEY": private_pem.decode(),
        f"{prefix}_HTTP_PORT": str(port),
        f"{prefix}_HTTP_WORKERS": "3",
        **NOTIFY_NEEDS,
    }
    done = subprocess.run(
        [sys.executable, "-c", MAIN_PROCESS_PROBE, service, ",".join(SERVING_ONLY_IN_THE_WORKER)],
        env=clean_environment(variables),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The settings the child read reach granian; the app's packages stayed in the child.
    assert done.stdout.split() == ["granian", "127.0.0.1", str(port), "3"], (done.stdout, done.stderr[-2000:])
