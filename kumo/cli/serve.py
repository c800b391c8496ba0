"""``kumo serve`` (and ``kumod``): the engine, the HTTP API and the SMTP listener in one
Trio process.

One ``trio.run``: the engine opens (replaying its log), the SMTP listener and hypercorn
serve inside the engine's lifetime, and a signal watcher runs around them all, from
before the engine opens until its store is closed. On SIGINT or SIGTERM the servers stop
accepting (every SMTP session gets its ``421``), requests in flight may finish (up to
:data:`GRACEFUL_TIMEOUT`), and then the engine shuts down gracefully: its work under way
finishes, its log commits and closes. A second signal stops both waits (the store is
still closed cleanly, the exit status still 0), a third exits at once with status 3
(:mod:`kumo.cli.shutdown`); each stage says on stderr what it waits for. A data
directory another kumo process holds, a log that cannot be opened, or a listening
address it cannot bind, is one line on stderr and exit status 1 (the engine, if it had
opened, shut down cleanly first); so is an event log whose database pages are damaged
(checked at every start), in a line that names the damage and says what to do.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import click
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from kumo.cli.common import HELP
from kumo.cli.shutdown import Shutdown
from kumo.config import Config, ConfigError, LineEndings, load_config, parse_listen
from kumo.http.app import create_app
from kumo.model.inspection import QueueConfig
from kumo.model.queue_name import QueueName
from kumo.model.settings import EngineSettings
from kumo.model.smtp_server import SmtpServerSettings
from kumo.runtime.delivery import DestinationSettings, MailSettings
from kumo.runtime.delivery_repair import RepairError
from kumo.runtime.engine import DataDirectoryLockedError, Engine, open_engine
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    Connector,
    client_tls_context,
    connect_tcp,
)
from kumo.runtime.smtp_listener import ListenerSettings, SmtpListener, server_tls_context
from kumo.store.archive import ArchiveCorruptError
from kumo.store.event_log import LogCorruptError, StoreDamagedError

SWITCH_INTERVAL: Final = 0.0005
"""Seconds a thread may hold the GIL while another wants it (Python's default: 0.005)."""
GC_THRESHOLDS: Final = (100_000, 50, 100)
"""The cyclic collector's thresholds while ``kumo serve`` starts (Python's default: 700,
10, 10): the replay builds a million long-lived objects, and a young collection every
few hundred of them would walk them again and again."""
GC_SERVING_THRESHOLDS: Final = (20_000, 50, 100)
"""The thresholds once it serves (:func:`serving_started`). A young collection walks
every object allocated since the last one that is still alive, and a sweep's are: with
100,000, each took 50-120 ms under a 1,000,000 sweep, two or three a sweep, each one
stalling every request in flight; with 20,000, 29 of at most 27 ms, about the same time
in all (docs/benchmarks.md)."""
GC_YOUNG_PERIOD: Final = 0.25
"""Seconds between two young collections that :func:`collect_young` runs, whatever the
thresholds say. A sweep frees the messages that the start froze, and each object freed
counts against the young threshold as one allocated counts for it: the young collection
then waits, and its generation grows to 80,000 objects (45-56 ms a collection, each one
stalling every request in flight). Every quarter of a second, during a 1,000,000 sweep:
78 collections of at most 15 ms, 142 ms in all (docs/benchmarks.md)."""
GRACEFUL_TIMEOUT: Final = 1.0
"""Seconds that requests in flight get to finish after a stop signal. Idle keep-alive
connections hold hypercorn for this long too, so it is kept short."""
_SHUTDOWN_DEADLINE: Final = EngineSettings().shutdown_deadline
"""Seconds the engine waits for its work under way when it closes (it runs with the
default settings)."""


_SQLITE_CORRUPT: Final = 11


class ListenError(Exception):
    """The server could not listen on its address (in use, not permitted, not local)."""


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _is_corrupt(error: BaseException) -> bool:
    """Whether SQLite found the database damaged (``SQLITE_CORRUPT``, any variant)."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_CORRUPT


def _describe_os_error(error: OSError) -> str:
    """``address already in use`` for ``[Errno 98] Address already in use``."""
    why = error.strerror or str(error)
    return why[:1].lower() + why[1:]


def _hypercorn_config(config: Config) -> HypercornConfig:
    host, port = parse_listen(config.listen)
    hyper = HypercornConfig()
    hyper.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hyper.graceful_timeout = GRACEFUL_TIMEOUT
    hyper.accesslog = None
    hyper.loglevel = "WARNING"
    return hyper


async def _serve_until_stopped(
    app: QuartTrio,
    hyper: HypercornConfig,
    shutdown: Shutdown,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def stop_requested() -> None:
        await shutdown.requested.wait()
        shutdown.report(
            "kumo: no longer accepting connections; "
            f"waiting up to {GRACEFUL_TIMEOUT:g} s for requests in flight"
        )

    await hypercorn_serve(app, hyper, shutdown_trigger=stop_requested, task_status=task_status)


def _work_under_way(engine: Engine) -> str:
    """What the engine's shutdown waits for, in a few words."""
    stats = engine.statistics()
    last = stats.log.last_seq
    pending = []
    if stats.broadcaster.position < last:
        pending.append(f"events routed to seq {stats.broadcaster.position:,} of {last:,}")
    if stats.log.background_messages_waiting:
        pending.append(f"{stats.log.background_messages_waiting:,} bounces to commit")
    if stats.delivery_log.position < last:
        pending.append(f"delivery log at seq {stats.delivery_log.position:,} of {last:,}")
    return "; ".join(pending) or "queue actors finishing"


def queue_configs(config: Config) -> Callable[[str], QueueConfig]:
    """Each scheduled queue's settings under ``config``, as inspect-sched-q reports
    them: those of the queue's destination domain."""

    def of(queue: str) -> QueueConfig:
        settings = config.queue_settings(QueueName.parse(queue).domain)
        return QueueConfig(settings.retry_policy, settings.mx_list)

    return of


def mail_settings(
    config: Config, *, resolver: MxResolver | None = None, connector: Connector = connect_tcp
) -> MailSettings | None:
    """How ``kumo serve`` delivers under ``config``: each destination's settings (made
    once per domain, the TLS contexts once for all), and the MX resolver of ``[dns]``;
    None with ``deliver = false``.

    ``resolver`` and ``connector`` replace DNS and TCP (an in-process scenario's
    simulated destinations); everything else is as ``config`` says.
    """
    if not config.deliver:
        return None
    verifying = client_tls_context(verify=True)
    insecure = client_tls_context(verify=False)
    made: dict[str, DestinationSettings] = {}

    def destination(domain: str) -> DestinationSettings:
        settings = made.get(domain)
        if settings is None:
            queue, egress = config.queue_settings(domain), config.egress_settings(domain)
            settings = made[domain] = DestinationSettings(
                retry=queue.retry_policy,
                mx_list=queue.mx_list,
                connection=ConnectionSettings(
                    egress.client_settings,
                    smtp_port=egress.smtp_port,
                    verifying_tls=verifying,
                    insecure_tls=insecure,
                    connector=connector,
                ),
                connection_limit=egress.connection_limit,
                max_ready=egress.max_ready,
                prohibited_hosts=egress.prohibited_hosts,
                fleet_limits=egress.fleet_limits,
                max_message_rate=egress.max_message_rate,
            )
        return settings

    return MailSettings(destination, resolver or MxResolver(config.dns.servers))


def smtp_listener_settings(config: Config) -> ListenerSettings | None:
    """What the SMTP listener runs with under ``config``; None when
    ``smtp_listener.listen`` is ``"off"``. Reads the TLS certificate and key, if any.

    Raises :class:`ConfigError` for what the listener cannot run with: a key file that
    cannot be loaded, a host name that cannot go into a reply, or an
    ``invalid_line_endings`` other than ``"Deny"`` (the only one the session implements).
    """
    smtp = config.smtp_listener
    if smtp.listen is None:
        return None
    if smtp.invalid_line_endings is not LineEndings.DENY:
        raise ConfigError(
            f'smtp_listener.invalid_line_endings = "{smtp.invalid_line_endings.value}" is not '
            'supported yet: only "Deny"'
        )
    host, port = parse_listen(smtp.listen)
    tls = None
    if smtp.tls_certificate is not None and smtp.tls_private_key is not None:
        try:
            tls = server_tls_context(smtp.tls_certificate, smtp.tls_private_key)
        except OSError as exc:  # ssl.SSLError is one
            raise ConfigError(
                f"smtp_listener.tls_certificate: cannot load {smtp.tls_certificate} with "
                f"{smtp.tls_private_key}: {exc}"
            ) from None
    try:
        session = SmtpServerSettings(
            hostname=smtp.hostname,
            relay_hosts=smtp.relay_hosts.networks,
            max_message_size=smtp.max_message_size,
            max_recipients_per_message=smtp.max_recipients_per_message,
            max_messages_per_connection=smtp.max_messages_per_connection,
            starttls=tls is not None,
            line_length_limit=smtp.line_length_hard_limit,
            max_errors=smtp.max_errors,
        )
    except ValueError as exc:
        raise ConfigError(f"smtp_listener: {exc}") from None
    return ListenerSettings(
        host=host,
        port=port,
        session=session,
        max_connections=smtp.max_connections,
        client_timeout=smtp.client_timeout,
        data_processing_timeout=smtp.data_processing_timeout,
        tls=tls,
    )


@asynccontextmanager
async def _smtp_listening(
    config: Config,
    engine: Engine,
    stop: trio.Event,
    on_listening: Callable[[str], None] | None,
) -> AsyncIterator[SmtpListener | None]:
    """Run the SMTP listener of ``config`` (none when it is off) for the duration of the
    block, yield it (None when it is off), and call ``on_listening`` with the
    ``HOST:PORT`` it is bound to. Once ``stop`` is set, or the block ends, the listener
    shuts down gracefully (every session gets its ``421``); leaving waits for that.
    Raises :class:`ListenError` if it cannot bind.
    """
    settings = smtp_listener_settings(config)
    if settings is None:
        yield None
        return
    listener = SmtpListener(engine, settings, turn=engine.admin_gate.mail_turn)
    watching = trio.CancelScope()

    async def shut_down_on_stop() -> None:
        with watching:
            await stop.wait()
        listener.shut_down()

    async with trio.open_nursery() as nursery:
        try:
            address: str = await nursery.start(listener.run)
        except* OSError as group:
            [error, *_] = _leaves(group)
            assert isinstance(error, OSError)
            why = _describe_os_error(error)
            raise ListenError(
                f"cannot listen for SMTP on {config.smtp_listener.listen}: {why}"
            ) from error
        nursery.start_soon(shut_down_on_stop)
        if on_listening is not None:
            on_listening(address)
        try:
            yield listener
        finally:
            watching.cancel()


async def run_server(
    config: Config,
    *,
    stop: trio.Event | None = None,
    on_smtp_listening: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` until SIGINT/SIGTERM (or ``stop`` is set); report the base URL.

    The SMTP listener (unless ``smtp_listener.listen`` is ``"off"``) is bound first;
    ``on_smtp_listening`` gets its ``HOST:PORT``. Stops through the stages of
    :mod:`kumo.cli.shutdown`, each reported on stderr. Returns after both servers stopped
    and the engine shut down cleanly (a third signal ends the process instead). Raises
    ``DataDirectoryLockedError`` if another process has the data directory,
    :class:`ConfigError` if the SMTP listener cannot run with ``config`` (see
    :func:`smtp_listener_settings`), and :class:`ListenError` if an address cannot be
    bound (in an exception group), once the engine has shut down cleanly too.
    """
    shutdown = Shutdown(requested=stop)
    async with trio.open_nursery() as watching:
        await watching.start(shutdown.watch_signals)
        await _serve(config, shutdown, on_smtp_listening, task_status=task_status)
        watching.cancel_scope.cancel()


async def _serve(
    config: Config,
    shutdown: Shutdown,
    on_smtp_listening: Callable[[str], None] | None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with (
        open_engine(
            config.data_dir,
            node_id=config.node_id,
            settings=config.engine_settings(),
            mail=mail_settings(config),
            fleet=config.fleet,
        ) as engine,
        _smtp_listening(config, engine, shutdown.requested, on_smtp_listening) as listener,
    ):
        shutdown.when_hurried(engine.cut_shutdown_short)
        app = create_app(
            engine,
            access=config.access_policy(),
            body_limit=config.body_limit,
            queue_configs=queue_configs(config),
            smtp_listener=listener,
            admin_gate=engine.admin_gate,
        )
        async with trio.open_nursery() as nursery:
            try:
                urls: list[str] = await nursery.start(
                    _serve_until_stopped, app, _hypercorn_config(config), shutdown
                )
            except* OSError as group:
                # An OSError before hypercorn reports its URLs is binding or listening.
                [error, *_] = _leaves(group)
                assert isinstance(error, OSError)
                why = _describe_os_error(error)
                raise ListenError(f"cannot listen on {config.listen}: {why}") from error
            # Registered once serving, so that the URL is reported even if a second
            # signal came during the replay; the server then stops at once.
            shutdown.when_hurried(nursery.cancel_scope.cancel)
            task_status.started(urls[0])
        if shutdown.hurried:
            shutdown.report("kumo: closing the engine without waiting for work under way")
        else:
            shutdown.report(
                f"kumo: closing the engine: waiting up to {_SHUTDOWN_DEADLINE:g} s for "
                f"work under way ({_work_under_way(engine)})"
            )
    if engine.shutdown_cut_short:
        shutdown.report(
            "kumo: the engine closed before its work under way was done; the next start finishes it"
        )


def resolve_config(
    *,
    listen: str | None,
    data_dir: Path | None,
    config_path: Path | None,
    smtp_listen: str | None = None,
    deliver: bool | None = None,
) -> Config:
    """The configuration to serve: options given on the command line win over the
    config file, which wins over the defaults. Raises ConfigError."""
    config = load_config(config_path) if config_path is not None else Config()
    if deliver is not None:
        config = attrs.evolve(config, deliver=deliver)
    if listen is not None:
        config = attrs.evolve(config, listen=listen)
    if data_dir is not None:
        config = attrs.evolve(config, data_dir=data_dir)
    if smtp_listen is not None:
        config = with_smtp_listen(config, smtp_listen)
    return config


def with_smtp_listen(config: Config, smtp_listen: str) -> Config:
    """``config`` with ``--smtp-listen``: ``HOST:PORT``, or ``off`` for no SMTP listener.
    Raises ConfigError."""
    if smtp_listen == "off":
        return attrs.evolve(config, smtp_listener=attrs.evolve(config.smtp_listener, listen=None))
    try:
        parse_listen(smtp_listen)
    except ConfigError as exc:
        raise ConfigError(f'--smtp-listen: {exc} (or "off")') from None
    return attrs.evolve(
        config, smtp_listener=attrs.evolve(config.smtp_listener, listen=smtp_listen)
    )


def tune_for_serving() -> None:
    """The process settings ``kumo serve`` runs with (benchmarks apply them too)."""
    # The engine's worker threads (SQLite commits, delivery-log encoding) hold the GIL in
    # stretches; at the default 5 ms switch interval an admin request under a sweep
    # waits that long each time the loop needs the GIL back.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Queued messages are many and long-lived, garbage is short-lived and acyclic: the
    # default threshold (700) runs a young collection every few hundred allocations.
    gc.set_threshold(*GC_THRESHOLDS)


def serving_started() -> None:
    """What ``kumo serve`` does to the collector once the engine is open: what the
    replay built lives as long as the server, so keep it out of every later collection
    (``gc.freeze()``), and collect the young more often from now on."""
    gc.freeze()
    gc.set_threshold(*GC_SERVING_THRESHOLDS)


async def collect_young(period: float = GC_YOUNG_PERIOD) -> None:
    """Run a young collection every ``period`` seconds, for as long as the server serves
    (:data:`GC_YOUNG_PERIOD` says why)."""
    while True:
        await trio.sleep(period)
        gc.collect(0)


@click.command(context_settings=HELP)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Address to serve on; port 0 picks a free port.  [default: 127.0.0.1:8000]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Event log, spool and delivery logs (DIR/logs/*.jsonl).  [default: ./kumo-data]",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML file: trusted_hosts, users, tokens, body_limit, node_id (see kumo.config).",
)
@click.option(
    "--smtp-listen",
    metavar="HOST:PORT|off",
    default=None,
    help="Address of the SMTP listener; port 0 picks a free port; off: none.  "
    "[default: 127.0.0.1:2025]",
)
@click.option(
    "--deliver/--no-deliver",
    default=None,
    help="Deliver due messages over SMTP, or hold them all until bounced.  "
    "[default: the config's deliver, true]",
)
def serve(
    listen: str | None,
    data_dir: Path | None,
    config_path: Path | None,
    smtp_listen: str | None,
    deliver: bool | None,
) -> None:
    """Run the engine, the KumoMTA-compatible HTTP API, the SMTP listener and the
    delivery of due mail until SIGINT or SIGTERM."""
    try:
        config = resolve_config(
            listen=listen,
            data_dir=data_dir,
            config_path=config_path,
            smtp_listen=smtp_listen,
            deliver=deliver,
        )
        smtp_listener_settings(config)  # refuse what the listener cannot run with, now
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            smtp: list[str] = []

            async def serve_then_stop(task_status: trio.TaskStatus[str]) -> None:
                await run_server(config, on_smtp_listening=smtp.append, task_status=task_status)
                nursery.cancel_scope.cancel()  # served: the collections end too

            url = await nursery.start(serve_then_stop)
            serving_started()
            nursery.start_soon(collect_young)
            # Both lines once both listen, the HTTP one first as it always was: a reader
            # waiting for it (the tests, scripts) finds SMTP up already.
            print(f"kumo listening on {url}", flush=True)
            for address in smtp:
                print(f"kumo smtp listening on {address}", flush=True)

    tune_for_serving()
    # The engine's lines (a snapshot skipped or taken), as this module's own read.
    logging.basicConfig(level=logging.INFO, format="kumo: %(message)s", stream=sys.stderr)
    refusal = None
    try:
        trio.run(main)
    except* (
        DataDirectoryLockedError,
        ListenError,
        LogCorruptError,
        ArchiveCorruptError,
        StoreDamagedError,
        RepairError,
    ) as group:
        refusal = "; ".join(str(error) for error in _leaves(group))
    except* sqlite3.Error as group:
        errors = list(_leaves(group))
        why = "; ".join(str(error) for error in errors)
        if any(_is_corrupt(error) for error in errors):
            # Damage the start's check did not see: it came while serving.
            refusal = (
                f"the event log in {config.data_dir} is damaged: {why}; run `kumo replay "
                f"--verify --data-dir {config.data_dir}` for the whole report, and restore "
                "the data directory from a backup"
            )
        else:
            # Opening the log failed (a full disk, a file that is not a database): the
            # engine never ran, nothing was written.
            refusal = f"cannot open the event log in {config.data_dir}: {why}"
    except* OSError as group:
        # A data directory that cannot be made or used (under a file, no permission,
        # a full or read-only file system): one line, not a traceback.
        refusal = "; ".join(
            f"cannot use the data directory {config.data_dir}: {_describe_os_error(error)}"
            + (f" ({error.filename})" if error.filename else "")
            for error in _leaves(group)
            if isinstance(error, OSError)
        )
    if refusal is not None:
        print(f"kumo: {refusal}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("kumo stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve()
