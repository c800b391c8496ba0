"""`kcli`: the command-line client for the administrative bounce API.

Compatible with KumoMTA's `kcli` for `bounce`, `bounce-list`, `bounce-cancel`,
`suspend`, `suspend-list`, `suspend-cancel`, `suspend-ready-q`, `suspend-ready-q-list`,
`suspend-ready-q-cancel`, `inspect-message`, `inspect-sched-q` and `queue-summary`
(same options, same output, same error texts; `queue-summary`'s tables are
:mod:`kumo.cli.queue_summary`'s), plus
`inject`, which KumoMTA's kcli does not have in this form (send test messages through
`/api/inject/v1`).

Every command talks to one HTTP endpoint through a `Target`; tests hand the group a
`Target` carrying an `httpx.MockTransport` as click's context object.
"""

from __future__ import annotations

import email.policy
import email.utils
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from email.message import EmailMessage
from http import HTTPStatus
from typing import IO, Any, Protocol, TypeVar

import attrs
import click
import httpx
import trio
from rich.console import Console

from kumo.cli.audit import ProgressBar
from kumo.cli.common import HELP, with_version
from kumo.cli.queue_summary import (
    ADMIN_LISTS,
    READY_STATUS,
    SCHEDULED_STATUS,
    QueueStateMark,
    format_queue_summary,
    ordered,
    ready_queues,
    ready_states,
    scheduled_queues,
)
from kumo.cli.tables import Align, format_count, format_table
from kumo.http.bodies import parse_uuid
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    INSPECT_MESSAGE_PATH,
    INSPECT_QUEUE_PATH,
    METRICS_PATH,
    READY_Q_STATES_PATH,
    REBIND_PATH,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from kumo.model.mx_resolution import Destination, Resolution, ResolutionFailure
from kumo.model.prometheus_text import parse_samples
from kumo.runtime.mx import MxResolver

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
ENDPOINT_ENV_VAR = "KUMO_KCLI_ENDPOINT"
TOKEN_ENV_VAR = "KUMO_KCLI_TOKEN"

# KumoMTA's kcli gives up on a request after 60 s; so do we.
REQUEST_TIMEOUT = httpx.Timeout(60.0)

# At most this many recipients go into one inject request, so that `--count` in the
# millions sends many modest bodies rather than one huge one.
INJECT_BATCH_SIZE = 1000

BOUNCE_ASYNC_NOTE = (
    "NOTE: the bounce is running async. Use the bounce-list command to review ongoing status!"
)
DRY_RUN_NOTE = "DRY RUN: nothing was issued. What the request would match now:"
REBIND_DRY_RUN_NOTE = "DRY RUN: nothing was rebound. What the rebind would move now:"
WAIT_INTERRUPTED = (
    "stopped waiting; rule {id} stays in force (kcli bounce-cancel --id {id} lifts it)"
)
DEFAULT_WAIT_INTERVAL = 1.0
"""Seconds between two polls of `bounce --wait`."""

# Reason phrases as KumoMTA's kcli prints them (the Rust `http` crate's canonical
# reasons). Servers such as hypercorn send none, so the client must know them itself;
# Python's `HTTPStatus` agrees except for these codes (and renames some across releases).
_REASON_PHRASE_OVERRIDES: Mapping[int, str] = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    418: "I'm a teapot",
    422: "Unprocessable Entity",
}


def reason_phrase(status_code: int) -> str:
    """The canonical reason phrase for `status_code`, or "" for an unknown code."""
    if status_code in _REASON_PHRASE_OVERRIDES:
        return _REASON_PHRASE_OVERRIDES[status_code]
    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return ""


class KcliError(click.ClickException):
    """A failure reported to the user as one plain line on stderr, exit status 1.

    Unlike click's own errors there is no `Error: ` prefix: the texts (such as
    `request status 404: Not Found. Response body: ...`) are part of the contract.
    """

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), err=True, file=file)


class Resolver(Protocol):
    """Resolves a destination as the mail path does (:class:`kumo.runtime.mx.MxResolver`)."""

    async def resolve(self, domain: str, *, mx_list: Sequence[str] = ()) -> Resolution: ...


@attrs.frozen
class Target:
    """Where requests go: the endpoint URL, the Bearer token to send if any, and, in
    tests, a substitute transport.

    Basic credentials travel in the endpoint's userinfo (`http://user:pass@host`),
    which httpx turns into an `Authorization: Basic` header.
    """

    endpoint: str = DEFAULT_ENDPOINT
    transport: httpx.BaseTransport | None = None
    token: str | None = attrs.field(default=None, repr=False)
    resolver: Resolver | None = None
    """What `queue-summary --domain` resolves MX with (default: the system's DNS)."""
    pause: Callable[[float], None] = attrs.field(default=time.sleep, repr=False)
    """How `bounce --wait` waits between two polls (tests pass one that returns)."""
    console: Console | None = attrs.field(default=None, repr=False)
    """Where `bounce --wait` draws its progress bar (default: stderr)."""

    def open_client(self) -> httpx.Client:
        """A new client for this endpoint; the caller closes it (use it in `with`)."""
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(
            base_url=self.endpoint,
            headers=headers,
            transport=self.transport,
            timeout=REQUEST_TIMEOUT,
            follow_redirects=True,
        )


def without_credentials(url: httpx.URL) -> str:
    """`url` as text without its user name and password, fit for a message."""
    return str(url.copy_with(userinfo=b""))


def without_credentials_text(text: str) -> str:
    """An endpoint as typed, unparsable perhaps, cut before anything that may be a
    user name or password: everything up to the last `@`, after any `scheme://`."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    if "@" not in rest:
        return text
    return scheme + separator + rest.rpartition("@")[2]


def _describe(client: httpx.Client) -> str:
    return without_credentials(client.base_url).rstrip("/")


def send(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    body: object = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request (``params`` as its query string) and return its 2xx response.

    Raises `KcliError` for a non-2xx reply (with KumoMTA's wording) and for a
    transport failure (one line, no traceback).
    """
    try:
        if body is None:
            response = client.request(method, path, params=params)
        else:
            response = client.request(method, path, json=body, params=params)
    except httpx.TimeoutException as exc:
        raise KcliError(f"request to {_describe(client)} timed out: {exc}") from exc
    except httpx.ConnectError as exc:
        raise KcliError(f"cannot connect to {_describe(client)}: {exc}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise KcliError(f"request to {_describe(client)} failed: {exc}") from exc
    if not response.is_success:
        raise KcliError(
            f"request status {response.status_code}: {reason_phrase(response.status_code)}."
            f" Response body: {response.text}"
        )
    return response


def decode_json(response: httpx.Response) -> Any:
    """The JSON document in a successful response's body."""
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise KcliError(f"parsing response as json: {response.text}") from exc


def echo_json(value: object) -> None:
    """``value`` as serde_json's pretty printer writes it: 2-space indent, non-ASCII as
    is, in UTF-8 whatever the locale (bytes go to the binary stream, so a latin-1 or
    ASCII stdout cannot fail to encode them)."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False).encode())


# --- bounce-list -----------------------------------------------------------------------

_CRITERIA_PARTS = ("campaign", "tenant", "domain", "routing_domain")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def describe_criteria(entry: Mapping[str, Any]) -> str:
    """The CRITERIA cell of a bounce-list row."""
    queue_names = entry.get("queue_names")
    if isinstance(queue_names, list) and queue_names:
        return ", ".join(f"queue={name}" for name in queue_names)
    criteria = [f"{part}={entry[part]}" for part in _CRITERIA_PARTS if entry.get(part) is not None]
    return ", ".join(criteria) if criteria else "everything"


def format_bounce_list(entries: Sequence[Mapping[str, Any]]) -> str:
    """The `bounce-list` table for the entries of a GET reply."""
    columns = [
        ("ID", Align.LEFT),
        ("REASON", Align.LEFT),
        ("REMAIN", Align.LEFT),
        ("BOUNCED", Align.RIGHT),
        ("CRITERIA", Align.LEFT),
    ]
    rows = []
    for entry in entries:
        total_bounced = entry.get("total_bounced", 0)
        rows.append(
            [
                str(entry.get("id", "")),
                # A line break in a reason would tear the table apart.
                _LINE_BREAK.sub(" ", str(entry.get("reason", ""))),
                str(entry.get("duration", "")),
                format_count(total_bounced)
                if isinstance(total_bounced, int)
                else str(total_bounced),
                describe_criteria(entry),
            ]
        )
    return format_table(columns, rows)


# --- dry runs --------------------------------------------------------------------------


def format_dry_run(reply: Mapping[str, Any]) -> str:
    """A dry-run reply for a human: a QUEUE / MESSAGES table, the total, and the live
    rule the request would replace."""
    queues = reply.get("queues")
    rows = [
        [str(item.get("queue", "")), format_count(_count(item.get("messages")))]
        for item in (queues if isinstance(queues, list) else [])
        if isinstance(item, dict)
    ]
    table = format_table([("QUEUE", Align.LEFT), ("MESSAGES", Align.RIGHT)], rows)
    total = _count(reply.get("total_messages"))
    replaces = reply.get("replaces")
    lines = [
        table,
        f"total: {format_count(total)} message(s) in {len(rows):,} queue(s)",
        f"would replace: {replaces}" if isinstance(replaces, str) else "would replace: none",
    ]
    return "\n".join(lines)


def format_rebind_dry_run(reply: Mapping[str, Any]) -> str:
    """A rebind's dry-run reply for a human: a QUEUE / MESSAGES / MOVES TO table (a
    queue whose name would not change is ``(unchanged)``, with ``always_flush: due now``
    when the flush would make its waiting messages due) and the totals."""
    queues = reply.get("queues")
    rows = []
    for item in queues if isinstance(queues, list) else []:
        if not isinstance(item, dict):
            continue
        to = item.get("to")
        if isinstance(to, str):
            where = to
        elif item.get("flushed") is True:
            where = "(unchanged; always_flush: due now)"
        else:
            where = "(unchanged)"
        rows.append([str(item.get("queue", "")), format_count(_count(item.get("messages"))), where])
    table = format_table(
        [("QUEUE", Align.LEFT), ("MESSAGES", Align.RIGHT), ("MOVES TO", Align.LEFT)], rows
    )
    total = _count(reply.get("total_messages"))
    moving = _count(reply.get("total_moving"))
    return "\n".join(
        [
            table,
            f"total: {format_count(total)} message(s) in {len(rows):,} queue(s), "
            f"{format_count(moving)} moving",
        ]
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _echo_dry_run(
    reply: object,
    note: str = DRY_RUN_NOTE,
    formatter: Callable[[Mapping[str, Any]], str] = format_dry_run,
) -> None:
    if not isinstance(reply, dict) or reply.get("dry_run") is not True:
        raise KcliError(
            f"the server did not answer the dry run (not kumo?), it replied: {json.dumps(reply)}"
        )
    click.echo(note, err=True)
    click.echo(formatter(reply).encode())


# --- bounce --wait ---------------------------------------------------------------------


@attrs.frozen
class SweepProgress:
    """One poll of a rule's progress: what it bounced so far, and what it still owes."""

    bounced: Mapping[str, int]
    total_bounced: int
    pending: int


def sweep_progress(entries: object, rule_id: str) -> SweepProgress | None:
    """The progress of ``rule_id`` in a GET reply; None if the rule is not listed."""
    if not isinstance(entries, list):
        raise KcliError(f"unexpected reply from server: {json.dumps(entries)}")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == rule_id:
            pending = entry.get("pending")
            if not isinstance(pending, int) or isinstance(pending, bool):
                raise KcliError(
                    "the server does not say what the rule still owes (no `pending`: not "
                    "kumo?), so --wait cannot tell when its sweep is done"
                )
            bounced = entry.get("bounced")
            counts = {
                str(queue): _count(count)
                for queue, count in (bounced.items() if isinstance(bounced, dict) else ())
            }
            return SweepProgress(counts, _count(entry.get("total_bounced")), pending)
    return None


def format_bounced(progress: SweepProgress) -> str:
    """The final per-queue counts: a QUEUE / BOUNCED table and the total."""
    rows = [
        [queue, format_count(count)]
        for queue, count in sorted(progress.bounced.items(), key=lambda item: item[0])
    ]
    table = format_table([("QUEUE", Align.LEFT), ("BOUNCED", Align.RIGHT)], rows)
    return f"{table}\ntotal bounced: {format_count(progress.total_bounced)}"


def follow_sweep(
    client: httpx.Client, target: Target, rule_id: str, *, interval: float
) -> SweepProgress:
    """Poll GET until ``rule_id`` owes nothing (``pending`` 0); return its last progress.

    Shows a progress bar on stderr when stderr is a terminal, else one plain line each
    time the counts change. KcliError if the rule stops being listed first (it ended,
    or was issued already expired) or the server does not report ``pending``.
    """
    console = target.console or Console(stderr=True)
    terminal = console.is_terminal
    last: SweepProgress | None = None
    with ProgressBar(after=0.0, console=console) as bar:
        while True:
            seen = sweep_progress(decode_json(send(client, "GET", BOUNCE_PATH)), rule_id)
            if seen is None:
                if last is None:
                    raise KcliError(
                        f"rule {rule_id} is not listed: it was issued already expired, or "
                        "ended before its sweep could be followed (kumo audit --rule "
                        f"{rule_id} tells what it did)"
                    )
                click.echo(format_bounced(last).encode())
                raise KcliError(
                    f"rule {rule_id} ended (expired, cancelled or replaced) before its "
                    f"sweep was done; {format_count(last.pending)} message(s) were still owed"
                )
            if terminal:
                bar("bouncing", seen.total_bounced, seen.total_bounced + seen.pending)
            elif seen != last:
                click.echo(
                    f"bounced {format_count(seen.total_bounced)}, "
                    f"pending {format_count(seen.pending)}",
                    err=True,
                )
            last = seen
            if seen.pending == 0:
                return seen
            target.pause(interval)


# --- queue-summary ---------------------------------------------------------------------

_RESOLUTIONS_AT_ONCE = 16
"""MX lookups `queue-summary --domain` has under way at a time."""


async def _sites(resolver: Resolver, domain: str, names: Sequence[str]) -> tuple[str, set[str]]:
    """The site name of ``domain`` (a KcliError if it cannot be resolved), and those
    of ``names`` whose site is the same (a name that cannot be resolved has none)."""
    resolution = await resolver.resolve(domain)
    if isinstance(resolution, ResolutionFailure):
        raise KcliError(resolution.error)
    site = resolution.site_name
    same: set[str] = set()
    limiter = trio.CapacityLimiter(_RESOLUTIONS_AT_ONCE)

    async def check(name: str) -> None:
        async with limiter:
            resolved = await resolver.resolve(name)
        if isinstance(resolved, Destination) and resolved.site_name == site:
            same.add(name)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(check, name)
    return site, same


def _admin_list(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """The objects of the JSON array GET ``path`` answers."""
    entries = decode_json(send(client, "GET", path))
    if not isinstance(entries, list):
        raise KcliError(f"unexpected reply from server: {json.dumps(entries)}")
    return [entry for entry in entries if isinstance(entry, dict)]


def _ready_states(client: httpx.Client) -> dict[str, list[QueueStateMark]]:
    """The states of every ready queue (GET ready-q-states, no queue named)."""
    document = decode_json(send(client, "GET", READY_Q_STATES_PATH))
    try:
        return ready_states(document)
    except ValueError:
        raise KcliError(f"unexpected reply from server: {json.dumps(document)}") from None


# --- inject ----------------------------------------------------------------------------


_MESSAGE_ID_DOMAIN = re.compile(r"[A-Za-z0-9.-]+")


def compose_message(sender: str, recipients: Sequence[str], subject: str) -> str:
    """A small RFC 5322 test message, CRLF line endings, with a fresh Message-ID."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=True)
    # Passing a domain keeps make_msgid from resolving this host's FQDN (slow, or hangs).
    domain = sender.rpartition("@")[2]
    if not _MESSAGE_ID_DOMAIN.fullmatch(domain):
        domain = "localhost"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message.set_content("This is a test message injected by kcli.\n")
    return message.as_string()


def batch_recipients(
    recipients: Sequence[Mapping[str, Any]], count: int, batch_size: int = INJECT_BATCH_SIZE
) -> Iterator[list[Mapping[str, Any]]]:
    """Each recipient `count` times, in lists of at most `batch_size`, built lazily."""
    batch: list[Mapping[str, Any]] = []
    for _ in range(count):
        for recipient in recipients:
            batch.append(recipient)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


# --- commands --------------------------------------------------------------------------


def validate_endpoint(ctx: click.Context, param: click.Parameter, value: str) -> str:
    shown = without_credentials_text(value)
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        # httpx quotes the piece it could not parse, which may be part of a password.
        why = f": {exc}" if shown == value else ""
        raise click.BadParameter(f"{shown!r} is not a valid URL{why}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{shown!r} is not an http:// or https:// URL")
    return value


def validate_token(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Never quote the value: it is a secret.
    if value is None:
        return None
    if not value:
        raise click.BadParameter("must not be empty")
    if not all("!" <= char <= "~" for char in value):
        raise click.BadParameter("must be printable ASCII, without spaces or line breaks")
    return value


def validate_header_value(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise click.BadParameter("must not contain line breaks")
    return value


@click.group(context_settings=HELP)
@click.option(
    "--endpoint",
    envvar=ENDPOINT_ENV_VAR,
    default=DEFAULT_ENDPOINT,
    show_default=True,
    callback=validate_endpoint,
    help=(
        f"URL of the kumo (or KumoMTA) HTTP API; also read from ${ENDPOINT_ENV_VAR}."
        " For HTTP Basic: http://USER:PASSWORD@HOST:PORT."
    ),
)
@click.option(
    "--token",
    envvar=TOKEN_ENV_VAR,
    default=None,
    metavar="TOKEN",
    callback=validate_token,
    help=f"Send 'Authorization: Bearer TOKEN'; also read from ${TOKEN_ENV_VAR}.",
)
@click.pass_context
def cli(ctx: click.Context, endpoint: str, token: str | None) -> None:
    """Administer a kumo (or KumoMTA) server over its HTTP API.

    The server answers its trusted hosts; from anywhere else, send credentials:

    \b
      HTTP Basic    USER:PASSWORD@ in the endpoint URL (percent-encode
                    '@', ':' and '/' in them, e.g. '@' as %40):
                    --endpoint http://alice:secret@kumo.example:8000
      Bearer token  --token TOKEN, sent as 'Authorization: Bearer TOKEN'

    Prefer $KUMO_KCLI_ENDPOINT and $KUMO_KCLI_TOKEN to the options: other users
    of the machine can read a command line in the process list.
    """
    if token is not None and httpx.URL(endpoint).userinfo:
        raise click.UsageError(
            "--token cannot be combined with USER:PASSWORD@ in the endpoint:"
            " send Basic or Bearer credentials, not both"
        )
    ctx.obj = attrs.evolve(ctx.ensure_object(Target), endpoint=endpoint, token=token)


F = TypeVar("F", bound=Callable[..., Any])


def selection_options(*, everything: str, queues: bool = True) -> Callable[[F], F]:
    """The options that select queues, shared by ``bounce``, ``suspend`` and ``rebind``
    (which takes no ``--queue``: KumoMTA's rebind has no queue names)."""

    def decorate(command: F) -> F:
        for option in reversed(
            (
                click.option(
                    "--domain", help="The domain name to match. If omitted, any domain matches."
                ),
                click.option("--routing-domain", help="The routing domain to match."),
                click.option("--campaign", help="The campaign name to match."),
                click.option("--tenant", help="The tenant name to match."),
                *(
                    [
                        click.option(
                            "--queue",
                            "queues",
                            multiple=True,
                            help="An exact scheduled queue name to match (repeatable); "
                            "excludes the four parts.",
                        )
                    ]
                    if queues
                    else []
                ),
                click.option("--everything", is_flag=True, help=everything),
            )
        ):
            command = option(command)
        return command

    return decorate


@cli.command()
@selection_options(everything="Purge all queues.")
@click.option(
    "--reason", required=True, help="The reason to log in the delivery logs and the listing."
)
@click.option(
    "--duration",
    help="How long matching messages keep bouncing, as a duration string (default 5m).",
)
@click.option("--suppress-logging", is_flag=True, help="Do not generate AdminBounce logs.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Issue nothing: show what the rule would match now, per queue (kumo only).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the rule's sweep until it is done, then print what it bounced per queue "
    "(kumo only). Ctrl-C stops waiting, not the rule.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=DEFAULT_WAIT_INTERVAL,
    show_default=True,
    help="Seconds between two polls of --wait.",
)
@click.pass_obj
def bounce(
    target: Target,
    domain: str | None,
    routing_domain: str | None,
    campaign: str | None,
    tenant: str | None,
    queues: tuple[str, ...],
    everything: bool,
    reason: str,
    duration: str | None,
    suppress_logging: bool,
    dry_run: bool,
    wait: bool,
    interval: float,
) -> None:
    """Administratively bounce messages in matching queues.

    Each bounced message is logged and removed from the spool: there is no going back.
    The rule applies at once to queued messages (asynchronously) and stays in effect for
    its duration, bouncing matching messages that arrive or return to a queue.
    """
    if dry_run and wait:
        raise click.UsageError("--dry-run issues nothing, so there is nothing to --wait for")
    body = selection(
        domain=domain,
        routing_domain=routing_domain,
        campaign=campaign,
        tenant=tenant,
        queues=queues,
        everything=everything,
        missing="No domain, routing_domain, campaign, tenant or queue was specified. "
        "Use --everything if you intend to purge all queues",
    )
    body["reason"] = reason
    if duration is not None:
        body["duration"] = duration
    body["suppress_logging"] = suppress_logging
    if dry_run:
        body["dry_run"] = True

    with target.open_client() as client:
        reply = decode_json(send(client, "POST", BOUNCE_PATH, body=body))
        if dry_run:
            _echo_dry_run(reply)
            return
        if not isinstance(reply, dict) or not isinstance(reply.get("id"), str):
            raise KcliError(f"unexpected reply from server: {json.dumps(reply)}")
        rule_id = reply["id"]
        if not wait:
            click.echo(BOUNCE_ASYNC_NOTE, err=True)
            click.echo(rule_id)
            return
        click.echo(rule_id)
        try:
            done = follow_sweep(client, target, rule_id, interval=interval)
        except KeyboardInterrupt:
            click.echo(WAIT_INTERRUPTED.format(id=rule_id), err=True)
            raise SystemExit(130) from None
    click.echo(format_bounced(done).encode())


@cli.command()
@selection_options(everything="Suspend all queues.")
@click.option("--reason", required=True, help="The reason to log in the delivery logs.")
@click.option("--duration", help="How long to suspend, as a duration string (default 5m).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Issue nothing: show what the suspension would match now, per queue (kumo only).",
)
@click.pass_obj
def suspend(
    target: Target,
    domain: str | None,
    routing_domain: str | None,
    campaign: str | None,
    tenant: str | None,
    queues: tuple[str, ...],
    everything: bool,
    reason: str,
    duration: str | None,
    dry_run: bool,
) -> None:
    """Suspend delivery from matching scheduled queues: their due messages wait (one
    TransientFailure record each, no attempt counted) until it expires or is cancelled."""
    body = selection(
        domain=domain,
        routing_domain=routing_domain,
        campaign=campaign,
        tenant=tenant,
        queues=queues,
        everything=everything,
        missing="No domain, campaign or tenant was specified. "
        "Use --everything if you intend to suspend all queues",
    )
    body["reason"] = reason
    if duration is not None:
        body["duration"] = duration
    if dry_run:
        body["dry_run"] = True
    with target.open_client() as client:
        reply = decode_json(send(client, "POST", SUSPEND_PATH, body=body))
    if dry_run:
        _echo_dry_run(reply)
        return
    echo_json(reply)


REBIND_ASYNC_NOTE = "NOTE: Rebind always runs asynchronously"


@cli.command()
@selection_options(everything="Rebind all queues.", queues=False)
@click.option("--reason", required=True, help="The reason to log in the delivery logs.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A metadata key and value to merge into each message (repeatable): campaign, "
    "tenant, routing_domain or queue.",
)
@click.option("--data", help="A JSON object of metadata to merge (--set entries win).")
@click.option(
    "--always-flush",
    is_flag=True,
    help="Make messages whose queue does not change due now (otherwise their due time "
    "stays as it was).",
)
@click.option("--suppress-logging", is_flag=True, help="Do not generate AdminRebind logs.")
@click.option(
    "--trigger-rebind-event",
    is_flag=True,
    help="KumoMTA runs its Lua rebind_message event instead of merging the data; kumo "
    "has no Lua and merges the data either way.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Rebind nothing: show what would move now, per queue, and where (kumo only).",
)
@click.pass_obj
def rebind(
    target: Target,
    domain: str | None,
    routing_domain: str | None,
    campaign: str | None,
    tenant: str | None,
    everything: bool,
    reason: str,
    settings: tuple[str, ...],
    data: str | None,
    always_flush: bool,
    suppress_logging: bool,
    trigger_rebind_event: bool,
    dry_run: bool,
) -> None:
    """Rebind the scheduled messages of matching queues: merge metadata into each and
    move it to the queue that metadata names (an AdminRebind record each). Messages in
    a ready queue are moved too; those in a connection are not."""
    body = selection(
        domain=domain,
        routing_domain=routing_domain,
        campaign=campaign,
        tenant=tenant,
        queues=(),
        everything=everything,
        missing="No domain, routing_domain, campaign or tenant was specified. "
        "Use --everything if you intend to rebind all queues",
    )
    merged: dict[str, object] = {}
    if data is not None:
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--data")
        merged.update(parsed)
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"{setting!r} is not KEY=VALUE", param_hint="--set")
        merged[key] = value
    body.update(
        reason=reason,
        data=merged,
        always_flush=always_flush,
        suppress_logging=suppress_logging,
        trigger_rebind_event=trigger_rebind_event,
    )
    if dry_run:
        body["dry_run"] = True
    with target.open_client() as client:
        reply = decode_json(send(client, "POST", REBIND_PATH, body=body))
    if dry_run:
        _echo_dry_run(reply, REBIND_DRY_RUN_NOTE, format_rebind_dry_run)
        return
    click.echo(REBIND_ASYNC_NOTE, err=True)
    echo_json(reply)


@cli.command("suspend-list")
@click.pass_obj
def suspend_list(target: Target) -> None:
    """List the suspensions in effect (JSON)."""
    _echo_listing(target, SUSPEND_PATH)


@cli.command("suspend-cancel")
@click.option("--id", "suspend_id", required=True, help="The id of the suspension to lift.")
@click.pass_obj
def suspend_cancel(target: Target, suspend_id: str) -> None:
    """Lift a suspension: its queues' messages are due at once."""
    _lift(target, SUSPEND_PATH, suspend_id)


@cli.command("suspend-ready-q")
@click.option("--name", required=True, help="The exact name of the ready queue to suspend.")
@click.option("--reason", required=True, help="The reason to log in the delivery logs.")
@click.option("--duration", help="How long to suspend, as a duration string (default 5m).")
@click.pass_obj
def suspend_ready_q(target: Target, name: str, reason: str, duration: str | None) -> None:
    """Suspend a ready queue: its connections finish the transaction under way and
    close, and its messages wait in their scheduled queues (one TransientFailure record
    each, no attempt counted) until it expires or is cancelled."""
    body: dict[str, object] = {"name": name, "reason": reason}
    if duration is not None:
        body["duration"] = duration
    with target.open_client() as client:
        reply = decode_json(send(client, "POST", SUSPEND_READY_Q_PATH, body=body))
    echo_json(reply)


@cli.command("suspend-ready-q-list")
@click.pass_obj
def suspend_ready_q_list(target: Target) -> None:
    """List the ready-queue suspensions in effect (JSON)."""
    _echo_listing(target, SUSPEND_READY_Q_PATH)


@cli.command("suspend-ready-q-cancel")
@click.option("--id", "suspend_id", required=True, help="The id of the suspension to lift.")
@click.pass_obj
def suspend_ready_q_cancel(target: Target, suspend_id: str) -> None:
    """Lift a ready-queue suspension: the messages it held are due at once."""
    _lift(target, SUSPEND_READY_Q_PATH, suspend_id)


def _echo_listing(target: Target, path: str) -> None:
    """GET ``path`` and print the JSON array, as KumoMTA's kcli does."""
    with target.open_client() as client:
        echo_json(decode_json(send(client, "GET", path)))


def _lift(target: Target, path: str, suspend_id: str) -> None:
    """DELETE suspension ``suspend_id`` at ``path``; print the reply (``OK`` if empty)."""
    with target.open_client() as client:
        response = send(client, "DELETE", path, body={"id": suspend_id})
    click.echo(response.text or "OK")


def selection(
    *,
    domain: str | None,
    routing_domain: str | None,
    campaign: str | None,
    tenant: str | None,
    queues: tuple[str, ...],
    everything: bool,
    missing: str,
) -> dict[str, object]:
    """The criteria of a bounce or suspend request from the command line's selection;
    UsageError for a selection that contradicts itself, or none (``missing``)."""
    parts = {
        "domain": domain,
        "routing_domain": routing_domain,
        "campaign": campaign,
        "tenant": tenant,
    }
    given_parts = [
        f"--{name.replace('_', '-')}" for name, value in parts.items() if value is not None
    ]
    if everything and (given_parts or queues):
        selectors = [*given_parts, *(["--queue"] if queues else [])]
        raise click.UsageError(
            f"--everything cannot be combined with {', '.join(selectors)}: it matches every queue"
        )
    if queues and given_parts:
        raise click.UsageError(
            f"--queue cannot be combined with {', '.join(given_parts)}: a rule with queue"
            " names ignores the domain, routing domain, campaign and tenant"
        )
    if not (given_parts or queues or everything):
        raise click.UsageError(missing)
    body: dict[str, object] = {name: value for name, value in parts.items() if value is not None}
    if queues:
        body["queue_names"] = list(queues)
    return body


@cli.command("bounce-list")
@click.option("--json", "as_json", is_flag=True, help="Print the underlying JSON data.")
@click.pass_obj
def bounce_list(target: Target, as_json: bool) -> None:
    """List the administrative bounce rules currently in effect."""
    with target.open_client() as client:
        entries = decode_json(send(client, "GET", BOUNCE_PATH))
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KcliError(f"unexpected reply from server: {json.dumps(entries)}")
    if as_json:
        echo_json(entries)
    else:
        click.echo(format_bounce_list(entries))


@cli.command("bounce-cancel")
@click.option("--id", "bounce_id", required=True, help="The id of the bounce rule to cancel.")
@click.pass_obj
def bounce_cancel(target: Target, bounce_id: str) -> None:
    """Cancel a bounce rule: it stops matching; what it bounced stays bounced."""
    with target.open_client() as client:
        response = send(client, "DELETE", BOUNCE_PATH, body={"id": bounce_id})
    click.echo(response.text)


@cli.command()
@click.option("--from", "sender", required=True, help="The envelope sender address.")
@click.option(
    "--to", "recipients", required=True, multiple=True, help="A recipient address (repeatable)."
)
@click.option("--campaign", help="Campaign metadata for every recipient.")
@click.option("--tenant", help="Tenant metadata for every recipient.")
@click.option("--routing-domain", help="Routing domain metadata for every recipient.")
@click.option(
    "--subject",
    default="kcli test message",
    show_default=True,
    callback=validate_header_value,
    help="The Subject header of the messages.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Messages to inject per recipient.",
)
@click.pass_context
def inject(
    ctx: click.Context,
    sender: str,
    recipients: tuple[str, ...],
    campaign: str | None,
    tenant: str | None,
    routing_domain: str | None,
    subject: str,
    count: int,
) -> None:
    """Inject test messages through the HTTP injection API."""
    target = ctx.ensure_object(Target)
    metadata = {
        name: value
        for name, value in (
            ("campaign", campaign),
            ("tenant", tenant),
            ("routing_domain", routing_domain),
        )
        if value is not None
    }
    entries = [{"email": recipient, "metadata": metadata} for recipient in recipients]

    injected = 0
    failed = False
    with target.open_client() as client:
        for batch in batch_recipients(entries, count):
            body = {
                "envelope_sender": sender,
                "recipients": batch,
                "content": compose_message(sender, recipients, subject),
            }
            try:
                reply = decode_json(send(client, "POST", INJECT_PATH, body=body))
            except KcliError as exc:
                exc.show()
                failed = True
                break  # a refused request (401, 413, unreachable) would be refused again
            if not isinstance(reply, dict):
                click.echo(f"unexpected reply from server: {json.dumps(reply)}", err=True)
                failed = True
                break
            injected += int(reply.get("success_count") or 0)
            fail_count = int(reply.get("fail_count") or 0)
            if fail_count:
                failed = True
                click.echo(f"failed {fail_count} message(s)", err=True)
                for error in reply.get("errors") or []:
                    click.echo(f"  {error}", err=True)
    click.echo(f"injected {injected} message(s)")
    if failed:
        ctx.exit(1)


def validate_spool_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A spool id in any UUID spelling, as kcli sends it: 32 lowercase hex digits."""
    try:
        return parse_uuid(value).replace("-", "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command("inspect-message")
@click.option("--want-body", is_flag=True, help="Include the message's content as `data`.")
@click.argument("message_id", metavar="ID", callback=validate_spool_id)
@click.pass_obj
def inspect_message(target: Target, want_body: bool, message_id: str) -> None:
    """Show a message in the spool: its envelope and metadata (and content)."""
    params = {"id": message_id}
    if want_body:
        params["want_body"] = "true"
    with target.open_client() as client:
        reply = decode_json(send(client, "GET", INSPECT_MESSAGE_PATH, params=params))
    if not isinstance(reply, dict):
        raise KcliError(f"unexpected reply from server: {json.dumps(reply)}")
    echo_json(reply)


@cli.command("inspect-sched-q")
@click.option(
    "--want-body",
    is_flag=True,
    help="Include each message's content. This can be expensive, with large or no limits.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many messages to include in the sample (the queue's first, oldest first).",
)
@click.option(
    "--no-limit",
    is_flag=True,
    help="Include every message of the queue. This can be expensive with --want-body.",
)
@click.argument("queue_name", metavar="QUEUE_NAME")
@click.pass_context
def inspect_sched_q(
    ctx: click.Context, want_body: bool, limit: int, no_limit: bool, queue_name: str
) -> None:
    """Show a scheduled queue: its counts, its settings and a sample of its messages."""
    if no_limit and ctx.get_parameter_source("limit") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--no-limit cannot be combined with --limit")
    params = {"queue_name": queue_name}
    if want_body:
        params["want_body"] = "true"
    if not no_limit:
        params["limit"] = str(limit)
    target = ctx.ensure_object(Target)
    with target.open_client() as client:
        reply = decode_json(send(client, "GET", INSPECT_QUEUE_PATH, params=params))
    if not isinstance(reply, dict):
        raise KcliError(f"unexpected reply from server: {json.dumps(reply)}")
    echo_json(reply)


@cli.command("queue-summary")
@click.option("--limit", type=click.IntRange(min=0), help="Limit results to LIMIT results.")
@click.option(
    "--by-volume", is_flag=True, help="Instead of ordering by name, order by volume, descending."
)
@click.option("--domain", help="Filter queues to those associated with a DNS domain.")
@click.pass_obj
def queue_summary(target: Target, limit: int | None, by_volume: bool, domain: str | None) -> None:
    """Prints a summary of the state of the queues, for a human to read.

    Two tables: the ready queues (SITE, SOURCE, PROTO; D delivered, T transiently
    failed, C connections open, Q messages ready; D and T count since the server
    started), then the scheduled queues (SCHEDULED QUEUE, COUNT of messages waiting),
    each with the status the admin lists give it (a bounce rule or a suspension that
    matches it; a suspension of the ready queue, and the states it is in, such as
    connection_limited).
    Not meant for machines: read /metrics or /metrics.json instead.
    """
    with target.open_client() as client:
        # In the order KumoMTA's kcli asks.
        lists = {path: _admin_list(client, path) for path in ADMIN_LISTS}
        states = _ready_states(client)
        samples = parse_samples(send(client, "GET", METRICS_PATH).text)
    scheduled_listed = [(source, lists[source.path]) for source in SCHEDULED_STATUS]
    ready_listed = [(source, lists[source.path]) for source in READY_STATUS]
    ready = ordered(ready_queues(samples), by_volume=by_volume)
    scheduled = ordered(scheduled_queues(samples), by_volume=by_volume)
    if domain is not None:
        resolver = target.resolver or MxResolver()
        names = [queue.name for queue in scheduled]
        site, same_site = trio.run(_sites, resolver, domain, names)
        ready = [queue for queue in ready if queue.site == site]
        scheduled = [q for q in scheduled if q.name == domain or q.name in same_site]
    if limit is not None:
        ready, scheduled = ready[:limit], scheduled[:limit]
    summary = format_queue_summary(
        ready,
        scheduled,
        ready_listed=ready_listed,
        scheduled_listed=scheduled_listed,
        ready_states=states,
    )
    # Bytes, so that the markers print in UTF-8 whatever the locale.
    click.echo(summary.encode(), nl=False)


def main() -> None:
    """The `kcli` console script."""
    with_version(cli).main(prog_name="kcli")


if __name__ == "__main__":
    main()
