"""Database: one schema and one role per service, migrations inside that schema.

Each service declares its models on a base whose metadata carries the service's schema, runs its
own Alembic history with the version table in that schema, and connects as a role that owns
only that schema. Migrations run as their own step (``<service> migrate``), never in every replica.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.resources
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, cast

import asyncpg
import asyncpg.exceptions
import sqlalchemy.exc
from advanced_alchemy.base import create_registry
from sqlalchemy import MetaData, pool, text
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import registry as orm_registry
from sqlalchemy.util import greenlet_spawn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from alembic.config import Config as AlembicConfig
    from litestar.types import Message, Scope
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.sql import ClauseElement
    from sqlalchemy.sql.compiler import SQLCompiler
    from sqlalchemy.sql.elements import TextClause

__all__ = (
    "NAMING_CONVENTION",
    "POOL_RECYCLE_SECONDS",
    "TRANSIENT_SQLSTATES",
    "DriverStatement",
    "begun_driver_connection",
    "contains_pattern",
    "database_failure_reason",
    "driver_connection",
    "is_database_unavailable",
    "unit_of_work",
    "VERSION_TABLE",
    "ReadPool",
    "RequestSessions",
    "ServiceDatabase",
    "service_engine",
    "migration_engine",
    "provision_service_role",
    "run_migrations_env",
    "schema_registry",
    "transient_sqlstate",
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
VERSION_TABLE = "alembic_version"
"""Alembic's default name, kept inside each service's schema."""


def contains_pattern(term: str) -> str:
    """A LIKE/ILIKE pattern matching ``term`` anywhere, with its wildcards taken literally.

    Use it with a backslash as the escape character: a search for ``50%`` must not match everything.
    """
    escaped = term.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@asynccontextmanager
async def unit_of_work(session: AsyncSession) -> AsyncIterator[None]:
    """Commit the work inside, unless an outer owner already holds the transaction.

    A service method used both by a route and by an event handler wraps its work in this: called
    from a route it commits its own transaction; called from a consumer, whose transaction also
    holds the inbox row, it joins that transaction and the consumer commits both together.
    """
    if session.in_transaction():
        yield
        return
    async with session.begin():
        yield


_UNAVAILABLE_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, a missing unix socket; also asyncio's timeouts
    asyncpg.exceptions.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.InterfaceError,  # the client's side: the connection is closed or broken
    # A connection the server is terminating while a statement starts on it (Postgres restarted,
    # pg_terminate_backend): "cannot switch to state 11; another operation (2) is in progress".
    asyncpg.exceptions.InternalClientError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
)


def is_database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) means the database cannot be reached right now.

    Such a failure is the server's state, not the request's fault: answer 503 with
    ``Retry-After``. advanced-alchemy wraps driver errors in its own, so the whole chain of
    causes is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _UNAVAILABLE_DRIVER_ERRORS):
            return True
        current = current.__cause__ or current.__context__
    return False


@asynccontextmanager
async def driver_connection(session: AsyncSession) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection for prebuilt SQL on a hot read path: the caller's, or one from the pool.

    A statement sent here skips SQLAlchemy's statement, parameter and result machinery: asyncpg
    prepares it once per connection (its statement cache) and only binds and runs it afterwards.

    Outside a transaction the connection comes straight from the session's engine pool and goes
    back to it: nothing is begun (a read is one round trip, not BEGIN, SELECT and ROLLBACK) and the
    session is not touched at all, so none of its transaction bookkeeping runs (a third of a cached
    read's CPU went there). Inside the caller's transaction the statements run on its connection
    and see what it wrote.

    Only for reads: a statement that writes or locks rows belongs in the session, inside
    ``unit_of_work`` (here it could run outside any transaction). Pending ORM changes are not
    flushed first. A connection found dead (Postgres restarted) is invalidated, so the pool
    replaces it instead of handing it to the next request.

    A session made by ``RequestSessions`` with a ``ReadPool`` (the API's) reads outside a
    transaction on that pool instead of the engine's: asyncpg's own pool, with no greenlet switch
    and no SQLAlchemy bookkeeping around the checkout (30 µs of a cached read's CPU).
    """
    engine = session.bind
    if session.in_transaction() or not isinstance(engine, AsyncEngine):  # (a session bound to a connection)
        async with _session_driver_connection(session) as connection:
            yield connection
        return
    reads = cast("ReadPool | None", session.info.get(ReadPool.SESSION_KEY))
    if reads is not None and reads.is_open:
        async with reads.connection() as connection:
            yield connection
        return
    # A checkout makes a new connection when the pool has none idle: that awaits inside greenlet_spawn.
    pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        yield cast("asyncpg.Connection", pooled.driver_connection)
    except BaseException as error:
        if is_database_unavailable(error):
            pooled.invalidate(error if isinstance(error, Exception) else None)
        raise
    finally:
        # Back to the pool; its reset (a rollback) sends nothing: no transaction was begun on it.
        await greenlet_spawn(pooled.close)


@asynccontextmanager
async def _session_driver_connection(session: AsyncSession) -> AsyncIterator[asyncpg.Connection]:
    """The session's own asyncpg connection; a transaction SQLAlchemy began for it is closed after."""
    began = not session.in_transaction()
    connection = await session.connection()
    try:
        raw = await connection.get_raw_connection()
        yield cast("asyncpg.Connection", raw.driver_connection)
    except BaseException as error:
        if is_database_unavailable(error):
            await connection.invalidate()
        raise
    finally:
        if began:
            await session.rollback()  # closes SQLAlchemy's transaction; nothing began in Postgres


_ASYNCPG_DIALECT: Final = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialects are untyped


class DriverStatement:
    """A SQLAlchemy statement compiled once for asyncpg, to send on ``begun_driver_connection``.

    A write path whose statement may be its transaction's first sends it through the session
    (which sends BEGIN) and otherwise straight to the driver: one definition serves both, so the
    two can never say different things.
    """

    def __init__(self, statement: ClauseElement) -> None:
        compiled = cast("SQLCompiler", statement.compile(dialect=_ASYNCPG_DIALECT))
        self.sql = str(compiled)
        self._names = tuple(compiled.positiontup or ())
        # values the statement carries itself (literals); any other must be given, or KeyError
        self._bound = {name: value for name, value in compiled.params.items() if value is not None}

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for ``values`` given by parameter name, as the driver takes them."""
        bound = self._bound | dict(values)
        return [bound[name] for name in self._names]


_BEGUN_DRIVER_CONNECTION: Final = "shared.db.begun_driver_connection"
"""``session.info`` key: (the session's transaction, its asyncpg connection)."""


async def begun_driver_connection(session: AsyncSession) -> asyncpg.Connection | None:
    """The asyncpg connection under the session's transaction, once that transaction has begun in Postgres.

    For prebuilt SQL on a hot write path: a statement sent here belongs to the session's
    transaction (it commits or rolls back with it) and skips SQLAlchemy's statement, parameter and
    result machinery (about 40 µs of CPU per statement). Pending ORM changes are flushed first, as
    the session's own ``execute`` would, so the statement sees them and runs after them.

    None until the transaction has begun in Postgres: SQLAlchemy's asyncpg dialect sends ``BEGIN``
    with the transaction's first statement, and a statement sent here before it would run on its
    own, outside any transaction (a row lock it took would be released at once). The caller then
    sends its statement through the session instead, which begins the transaction.
    """
    transaction = session.sync_session.get_transaction()
    if transaction is None:
        return None
    cached = session.info.get(_BEGUN_DRIVER_CONNECTION)
    if cached is None or cached[0] is not transaction:
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        cached = (transaction, cast("asyncpg.Connection", raw.driver_connection))
        session.info[_BEGUN_DRIVER_CONNECTION] = cached
    driver: asyncpg.Connection = cached[1]
    if not driver.is_in_transaction():
        return None
    if session.new or session.dirty or session.deleted:
        await session.flush()
    return driver


TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
"""deadlock_detected and serialization_failure: Postgres rolled the transaction back; it may run again."""


def transient_sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of ``error`` (or of what caused it) if it is one of :data:`TRANSIENT_SQLSTATES`, else None.

    Such a transaction changed nothing, so running it again is safe (a service's retry of its own
    transaction, a consumer's retry of one handler).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if state in TRANSIENT_SQLSTATES:
            return str(state)
        current = current.__cause__ or current.__context__
    return None


def database_failure_reason(error: BaseException) -> str:
    """One line saying what the driver reported, without SQL, parameters or SQLAlchemy's links."""
    root: BaseException = error
    while isinstance(root, sqlalchemy.exc.StatementError) and root.orig is not None:
        root = root.orig
    cause = root.__cause__ if type(root).__module__.startswith("sqlalchemy") and root.__cause__ else root
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


def schema_registry(schema: str) -> orm_registry:
    """A model registry whose tables all live in ``schema``, with advanced-alchemy's column types.

    A service's declarative base sets ``registry = schema_registry("<service>")``.
    """
    type_annotation_map = create_registry().type_annotation_map
    return orm_registry(
        metadata=MetaData(schema=schema, naming_convention=NAMING_CONVENTION),
        type_annotation_map=type_annotation_map,
    )


POOL_RECYCLE_SECONDS: Final = 1800
"""How pooled connections stay healthy without a round trip per checkout (no ``pool_pre_ping``).

``pool_pre_ping`` would send a ``SELECT 1`` before every request's first statement: one more round
trip on every read. Instead a connection older than 30 minutes is replaced (``pool_recycle``, below
the idle timeouts of proxies and servers), and one that died anyway (Postgres restarted) fails its
first statement: that request answers 503 with ``Retry-After`` (``is_database_unavailable``), a
worker's message is retried, and SQLAlchemy, seeing a disconnect, invalidates every connection of
the pool that is older than the failure, so one request per process pays for a restart, not one
per pooled connection.
"""


def service_engine(database_url: str, *, pool_size: int, null_pool: bool = False) -> AsyncEngine:
    """The engine of a service's API or worker process: one pool, every connection it opens kept.

    ``pool_size`` is the most connections the process holds (no overflow: an overflow connection
    is closed on return and made again, a new TCP and SCRAM handshake every few requests under load).
    ``null_pool`` opens a connection per checkout instead (tests that run an app on another loop).
    """
    # hide_parameters: SQLAlchemy otherwise writes bound values (password hashes, emails) into
    # every database error's message, and so into logs.
    if null_pool:
        return create_async_engine(database_url, poolclass=pool.NullPool, hide_parameters=True)
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=POOL_RECYCLE_SECONDS,
        hide_parameters=True,
    )


class ReadPool:
    """asyncpg's own pool for ``driver_connection``'s reads outside a transaction, beside the engine's.

    A checkout from SQLAlchemy's pool runs in two greenlet switches with its bookkeeping around
    them: about 20 µs of CPU where asyncpg's pool takes 10, and a cached read is 200. The two pools
    share nothing: the API's engine gets ``database_pool_size`` less this pool's ``size``
    (``database_read_pool_size``), so the process holds no more connections than before.

    Connections are made on demand (none at start-up: the API starts while Postgres is down, and
    readiness says so), closed after ``IDLE_SECONDS`` unused (before the idle timeouts of proxies
    and servers) and replaced after asyncpg's 50,000 queries. Nothing is reset when one goes back:
    its reads leave no session state (no SET, LISTEN or advisory lock), and asyncpg rolls back a
    transaction left open.
    A connection found dead (Postgres restarted) expires every connection made before it, so one
    read per process fails with 503 after a restart, as with the engine's pool, not one per
    pooled connection.
    """

    SESSION_KEY: Final = "shared.db.read_pool"
    """``session.info`` key under which ``RequestSessions`` hands its sessions the pool."""
    IDLE_SECONDS: Final = 300.0
    ACQUIRE_TIMEOUT_SECONDS: Final = 30.0
    """The engine's ``pool_timeout``: how long a read waits for a connection (made or freed)."""

    def __init__(self, engine: AsyncEngine, *, size: int, application_name: str = "") -> None:
        # asyncpg.connect's arguments as the engine's dialect makes them from its URL (host, port,
        # user, password, database, query options such as ssl), less the dialect's own.
        _, connect = engine.dialect.create_connect_args(engine.url)
        for own in ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn"):
            connect.pop(own, None)
        if application_name:
            connect["server_settings"] = {**connect.get("server_settings", {}), "application_name": application_name}
        self._connect = dict(connect)
        self._size = size
        self._pool: asyncpg.Pool | None = None

    @property
    def is_open(self) -> bool:
        """Whether ``open`` ran and ``close`` has not."""
        return self._pool is not None

    async def open(self) -> None:
        """Make the pool (no connection yet)."""
        self._pool = await asyncpg.create_pool(
            min_size=0,
            max_size=self._size,
            max_inactive_connection_lifetime=self.IDLE_SECONDS,
            reset=_leave_as_is,
            **self._connect,
        )

    async def close(self) -> None:
        """Close every connection (reads in progress finish first)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the duration of the block."""
        if self._pool is None:
            raise RuntimeError("the read pool is not open")
        pool = self._pool
        # A TimeoutError (an OSError) when none came free in time: 503, as the engine's pool_timeout.
        async with pool.acquire(timeout=self.ACQUIRE_TIMEOUT_SECONDS) as connection:
            try:
                yield cast("asyncpg.Connection", connection)
            except BaseException as error:
                if is_database_unavailable(error):
                    await pool.expire_connections()
                raise


async def _leave_as_is(_connection: asyncpg.Connection) -> None:
    """A read pool's reset: nothing (asyncpg's default sends four statements at every release)."""


class RequestSessions:
    """One ``AsyncSession`` per HTTP request, closed before the answer's first byte goes out.

    The API's ``db_session`` dependency (``provide``), its ``db_engine`` (``provide_engine``) and its
    ``before_send`` hook (``close``).
    Sessions never commit on their own: a service commits inside ``unit_of_work`` before it
    answers, so a failed commit is an error the client sees, not a 201 for data never saved; and
    they do not expire what they committed, so an answer is built without a second read.

    In place of advanced-alchemy's Litestar plugin, which does the same but brings Litestar's CLI,
    rich and Alembic into every API process (about 12 MB of its memory) for commands the API
    never runs, and closes every session, used or not.

    With ``reads``, the sessions' ``driver_connection`` reads outside a transaction go to that pool.
    """

    SCOPE_KEY: Final = "relay.db_session"

    def __init__(self, engine: AsyncEngine, reads: ReadPool | None = None) -> None:
        self.engine = engine
        info = {} if reads is None else {ReadPool.SESSION_KEY: reads}
        self.factory = async_sessionmaker(engine, expire_on_commit=False, info=info)

    def provide(self, scope: Scope) -> AsyncSession:
        """The request's session (made on first use, the same one for every dependency after)."""
        state = scope["state"]
        session = cast("AsyncSession | None", state.get(self.SCOPE_KEY))
        if session is None:
            session = state[self.SCOPE_KEY] = self.factory()
        return session

    def provide_engine(self) -> AsyncEngine:
        """The process's engine (``db_engine``), for what outlives a request (notify's live feed)."""
        return self.engine

    async def close(self, message: Message, scope: Scope) -> None:
        """Give the request's connection back as its answer starts (``before_send``)."""
        if message["type"] != "http.response.start":
            return
        session = cast("AsyncSession | None", scope["state"].pop(self.SCOPE_KEY, None))
        # A session outside a transaction holds no connection; its identity map is garbage with it.
        if session is not None and (session.in_transaction() or session.identity_map):
            await session.close()


class ServiceDatabase:
    """A service's schema, migrations and the checks that need both.

    Args:
        metadata: The service's model metadata (its ``schema`` names the service's schema).
        migrations: The package path of the service's Alembic scripts, like ``users:migrations``.
    """

    def __init__(self, metadata: MetaData, migrations: str) -> None:
        if not metadata.schema:
            raise ValueError("service metadata must name its schema")
        self.metadata = metadata
        self.schema: str = metadata.schema
        self.migrations = migrations

    def alembic_config(self, database_url: str) -> AlembicConfig:
        """An Alembic configuration built in code: no ``alembic.ini`` to ship or keep in sync."""
        from alembic.config import Config as AlembicConfig

        config = AlembicConfig()
        config.set_main_option("script_location", self.migrations)
        config.set_main_option("path_separator", "os")
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
        config.attributes["metadata"] = self.metadata
        return config

    def head(self) -> str | None:
        """The newest revision of the service's migration scripts."""
        revisions = self._revision_links()
        heads = set(revisions) - set(revisions.values())
        if len(heads) > 1:
            raise RuntimeError(f"{self.migrations} has {len(heads)} heads: {sorted(heads)}")
        return heads.pop() if heads else None

    def revisions(self) -> frozenset[str]:
        """Every revision this code knows. A schema at a revision outside it is newer than this code."""
        return frozenset(self._revision_links())

    def _revision_links(self) -> dict[str, str | None]:
        """Each script's ``revision`` and its ``down_revision``, read from the source, not imported.

        The API reads these for its readiness check: parsing the literals keeps Alembic (and the
        scripts' imports) out of its memory. Alembic's own reading agrees (tests/*/test_operations).
        """
        links: dict[str, str | None] = {}
        versions = importlib.resources.files(self.migrations.replace(":", ".")) / "versions"
        for script in versions.iterdir():
            if not script.name.endswith(".py") or script.name.startswith("_"):
                continue
            values: dict[str, object] = {}
            for node in ast.parse(script.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.AnnAssign | ast.Assign):
                    targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                    names = [target.id for target in targets if isinstance(target, ast.Name)]
                    if node.value is not None and {"revision", "down_revision"} & set(names):
                        values[names[0]] = ast.literal_eval(node.value)
            revision, down = values.get("revision"), values.get("down_revision")
            if not isinstance(revision, str) or not (down is None or isinstance(down, str)):
                raise RuntimeError(f"{script.name}: expected literal revision and single down_revision")
            links[revision] = down
        return links

    def upgrade(self, database_url: str, revision: str = "head") -> None:
        """Run migrations up to ``revision``. Synchronous: from async code, call it in a thread."""
        from alembic import command

        command.upgrade(self.alembic_config(database_url), revision)

    def revision(self, database_url: str, message: str) -> None:
        """Autogenerate a new migration script from the difference between models and database."""
        from alembic import command

        command.revision(self.alembic_config(database_url), message=message, autogenerate=True)

    def version_query(self) -> TextClause:
        """The query that says the schema's revision (it fails before the first migration)."""
        return text(f'SELECT version_num FROM "{self.schema}".{VERSION_TABLE}')

    async def current_revision(self, engine: AsyncEngine) -> str | None:
        """The revision the database is at, or None before the first migration."""
        async with engine.connect() as connection:
            return await connection.run_sync(self._current_revision_sync)

    def _current_revision_sync(self, connection: Connection) -> str | None:
        from alembic.runtime.migration import MigrationContext

        context = MigrationContext.configure(connection, opts={"version_table_schema": self.schema})
        return context.get_current_revision()

    async def differences(self, database_url: str) -> list[Any]:
        """What autogenerate would write for the models against this database (empty when in step)."""
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        def compare(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection, opts=self._context_options())
            return list(compare_metadata(context, self.metadata))

        engine = migration_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(compare)
        finally:
            await engine.dispose()

    def _context_options(self) -> dict[str, Any]:
        schema = self.schema

        def include_name(name: str | None, type_: str, _parent: Any) -> bool:
            return name == schema if type_ == "schema" else True

        return {
            "target_metadata": self.metadata,
            "version_table_schema": schema,
            "include_schemas": True,
            "include_name": include_name,
            "compare_type": True,
            "compare_server_default": True,
        }

    def run_env(self, connection: Connection) -> None:
        """What a service's ``migrations/env.py`` does with its connection."""
        from alembic import context

        # Checked first: a service role owns its schema but may not create schemas, and Postgres
        # checks that privilege even for CREATE SCHEMA IF NOT EXISTS on an existing schema.
        exists = connection.scalar(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": self.schema})
        if not exists:
            connection.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        context.configure(connection=connection, **self._context_options())
        with context.begin_transaction():
            context.run_migrations()


def migration_engine(database_url: str) -> AsyncEngine:
    """An engine for Alembic whose default schema is none of the services' schemas.

    A service role's default schema is its own (its search_path, or ``"$user"``). Alembic reflects
    the default schema's tables as schema None and would then find every model table missing.
    """
    return create_async_engine(
        database_url, poolclass=pool.NullPool, connect_args={"server_settings": {"search_path": "pg_catalog"}}
    )


def run_migrations_env(database: ServiceDatabase) -> None:
    """The body of every service's ``migrations/env.py`` (online mode only)."""
    from alembic import context

    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not configured")

    async def migrate() -> None:
        engine = migration_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(database.run_env)
        finally:
            await engine.dispose()

    asyncio.run(migrate())


async def provision_service_role(admin_url: str, *, service: str, password: str) -> str:
    """Create (or update) the service's role and its schema, owned by that role alone.

    Args:
        admin_url: A superuser connection to the database.
        service: The service name: it names both the role and the schema.
        password: The role's password.

    Returns:
        The SQLAlchemy URL the service connects with, as its own role.
    """
    if not service.isidentifier() or not service.islower():
        raise ValueError(f"service names are lower-case identifiers, not {service!r}")
    engine = create_async_engine(admin_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    quoted_password = password.replace("'", "''")
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": service})
            verb = "ALTER" if exists else "CREATE"
            await connection.execute(text(f"{verb} ROLE \"{service}\" LOGIN PASSWORD '{quoted_password}'"))
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{service}" AUTHORIZATION "{service}"'))
            await connection.execute(text(f'ALTER SCHEMA "{service}" OWNER TO "{service}"'))
            await connection.execute(text(f'ALTER ROLE "{service}" SET search_path = "{service}"'))
            await connection.execute(text(f'REVOKE ALL ON SCHEMA public FROM "{service}"'))
            database = make_url(admin_url).database
            await connection.execute(text(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC'))
    finally:
        await engine.dispose()
    url = make_url(admin_url).set(username=service, password=password)
    return url.render_as_string(hide_password=False)
