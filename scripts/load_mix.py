"""The mixed load of the crash loop and the soak (``scripts/crashloop.py``,
``scripts/soak.py``) against one ``kumo serve`` on 127.0.0.1.

Threads inject over HTTP, send over SMTP, and issue, list and cancel bounce rules and
suspensions, while the server delivers to two Postfix ``smtp-sink`` on loopback: one
accepts (``ok.test``), one answers every RCPT with a 4xx (``defer.test``, retried every
second and expired after a few seconds). A :class:`Ledger` keeps every recipient the
server acknowledged (an inject answered 200, a DATA answered 250): each message has a
recipient of its own, so that the delivery log can be checked against the ledger
recipient by recipient (:func:`check_records`).
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import attrs
import httpx

ROOT: Final = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mail_peers import SMTP_SINK, tool  # noqa: E402

from kumo.store.delivery_files import read_records  # noqa: E402
from kumo.store.layout import LOGS  # noqa: E402

OK_DOMAIN: Final = "ok.test"
DEFER_DOMAIN: Final = "defer.test"
INJECT: Final = "/api/inject/v1"
BOUNCE: Final = "/api/admin/bounce/v1"
SUSPEND: Final = "/api/admin/suspend/v1"
SENDER: Final = "load@mix.invalid"
TIMEOUT: Final = 15.0
CRITERIA: Final[tuple[dict[str, str], ...]] = (
    {"domain": DEFER_DOMAIN},
    {"domain": DEFER_DOMAIN},
    {"domain": OK_DOMAIN},
    {},
)
"""What the rules match: mostly the refused destination, sometimes everything."""
TERMINAL: Final = ("Delivery", "Bounce", "AdminBounce", "Expiration")
"""The record types that end a message's life."""


def mix_config(ok_port: int, defer_port: int) -> str:
    """``kumo serve``'s configuration for the mix: ``ok.test`` to the accepting sink,
    ``defer.test`` to the refusing one, retried every second, expired after 6 s."""
    return (
        '[smtp_listener]\nhostname = "kumo.mix.invalid"\n'
        '[egress]\nprohibited_hosts = []\nenable_tls = "Disabled"\n'
        'ehlo_domain = "kumo.mix.invalid"\n'
        f'[domains."{OK_DOMAIN}"]\nmx_list = ["127.0.0.1:{ok_port}"]\n'
        f'[domains."{DEFER_DOMAIN}"]\nmx_list = ["127.0.0.1:{defer_port}"]\n'
        'retry_interval = "1s"\nmax_age = "6s"\n'
    )


class Ledger:
    """What the server acknowledged, and how long its admin requests took (thread-safe)."""

    def __init__(self, prefix: str) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._prefix = prefix
        self.acknowledged: set[str] = set()
        self.latencies: dict[str, list[tuple[float, float]]] = defaultdict(list)
        """Operation -> (monotonic end, seconds) of each admin request answered."""
        self.errors: list[str] = []
        """Answers no client should get (a 5xx, an unexpected refusal)."""

    def recipients(self, domain: str, count: int) -> list[str]:
        with self._lock:
            return [f"{self._prefix}{next(self._numbers)}@{domain}" for _ in range(count)]

    def acknowledge(self, recipients: Iterable[str]) -> None:
        with self._lock:
            self.acknowledged.update(recipients)

    def took(self, operation: str, seconds: float) -> None:
        with self._lock:
            self.latencies[operation].append((time.monotonic(), seconds))

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def percentiles(self, operation: str, since: float = 0.0) -> tuple[float, float, int]:
        """(p50, p99) in ms and the count of ``operation``'s requests answered after
        ``since`` (monotonic); NaN without any."""
        with self._lock:
            samples = [s for end, s in self.latencies[operation] if end >= since]
        if len(samples) < 2:
            return (samples[0] * 1000 if samples else float("nan")), float("nan"), len(samples)
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        return cuts[49] * 1000, cuts[98] * 1000, len(samples)


@attrs.define
class Load:
    """The load's threads; :meth:`stop` ends them (a refused connection ends a thread
    quietly once stopping: the crash loop kills the server under them)."""

    url: str
    smtp_port: int
    ledger: Ledger
    seed: int
    pause: float = 0.0
    """Seconds each sending thread waits between requests (0: as fast as it can)."""
    _stopping: threading.Event = attrs.field(factory=threading.Event)
    _threads: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> None:
        for index, work in enumerate((self._inject, self._inject, self._smtp, self._admin)):
            rng = random.Random(self.seed * 10 + index)
            thread = threading.Thread(target=self._run, args=(work, rng), daemon=True)
            thread.start()
            self._threads.append(thread)

    def halt(self) -> None:
        """Stop sending (what is in flight goes on); :meth:`stop` then waits."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(TIMEOUT * 2)

    def _run(self, work: Callable[[httpx.Client, random.Random], None], rng: random.Random) -> None:
        # A client per thread, kept: a new one per request costs more than the request.
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as client:
            while not self._stopping.is_set():
                self._once(work, client, rng)

    def _once(
        self,
        work: Callable[[httpx.Client, random.Random], None],
        client: httpx.Client,
        rng: random.Random,
    ) -> None:
        try:
            work(client, rng)
        except (httpx.TransportError, OSError, smtplib.SMTPException) as error:
            if not self._stopping.is_set():  # else: the server was killed under it
                self.ledger.error(f"{work.__name__}: {error!r}")
                self._stopping.wait(0.2)
            return
        if self.pause:
            self._stopping.wait(self.pause)

    def _inject(self, client: httpx.Client, rng: random.Random) -> None:
        domain = OK_DOMAIN if rng.random() < 0.7 else DEFER_DOMAIN
        recipients = self.ledger.recipients(domain, rng.randrange(1, 20))
        body = {
            "envelope_sender": SENDER,
            "recipients": [{"email": r} for r in recipients],
            "content": "Subject: load\r\n\r\n" + _body(rng),
        }
        reply = client.post(INJECT, json=body)
        if reply.status_code == 200:
            self.ledger.acknowledge(recipients)
        else:
            self.ledger.error(f"inject {reply.status_code}: {reply.text[:200]}")

    def _smtp(self, client: httpx.Client, rng: random.Random) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=TIMEOUT) as session:
            session.ehlo("load.mix.invalid")
            for _ in range(rng.randrange(1, 6)):
                domain = OK_DOMAIN if rng.random() < 0.7 else DEFER_DOMAIN
                [recipient] = self.ledger.recipients(domain, 1)
                text = "Subject: smtp load\r\n\r\n" + _body(rng)
                refused = session.sendmail(SENDER, [recipient], text)
                if not refused:  # else sendmail raised, or refused names it
                    self.ledger.acknowledge([recipient])

    def _admin(self, client: httpx.Client, rng: random.Random) -> None:
        roll = rng.random()
        started = time.monotonic()
        if roll < 0.6:
            path = rng.choice((BOUNCE, SUSPEND))
            reply = client.get(path)
            operation = "GET"
        elif roll < 0.85:
            path = BOUNCE if roll < 0.78 else SUSPEND
            body: dict[str, Any] = {
                "reason": "load mix",
                "duration": rng.choice(("1s", "2s", "500ms")),
                **rng.choice(CRITERIA),
            }
            reply = client.post(path, json=body)
            operation = "POST"
        else:
            path = rng.choice((BOUNCE, SUSPEND))
            listed = client.get(path)
            rules = listed.json() if listed.status_code == 200 else []
            if not rules:
                return
            started = time.monotonic()
            reply = client.request("DELETE", path, json={"id": rng.choice(rules)["id"]})
            operation = "DELETE"
            if reply.status_code == 404:  # it expired meanwhile
                self.ledger.took(operation, time.monotonic() - started)
                return
        self.ledger.took(operation, time.monotonic() - started)
        if reply.status_code != 200:
            self.ledger.error(f"{operation} {path} {reply.status_code}: {reply.text[:200]}")
        time.sleep(rng.uniform(0.01, 0.05))


def _body(rng: random.Random) -> str:
    """A few lines of 76 characters (SMTP's limit is 998)."""
    return "".join("z" * 76 + "\r\n" for _ in range(rng.randrange(1, 30)))


def run_main(
    name: str,
    data_dir: Path | None,
    json_out: Path | None,
    run: Callable[[Path], dict[str, Any]],
    *,
    unprinted: tuple[str, ...] = (),
) -> None:
    """What the crash loop and the soak do around their run: check that smtp-sink is
    here, run in ``data_dir`` (a temporary one, removed after, when None), print the
    summary (but its ``unprinted`` keys), write it whole to ``json_out``, and exit 1
    when it lists problems."""
    try:
        tool(SMTP_SINK)
    except RuntimeError as error:
        sys.exit(f"{name}: {error} (Debian: apt-get install postfix)")
    work = Path(tempfile.mkdtemp(prefix=f"kumo-{name}-"))
    try:
        summary = run(data_dir or work / "data")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in summary.items() if k not in unprinted}, indent=2))
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["problems"]:
        sys.exit(1)


def verify(data_dir: Path) -> str | None:
    """Run ``kumo replay --verify`` on ``data_dir`` (the server stopped); None when it
    passes, else what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "kumo.cli.kumo", "replay", "--verify", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode == 0:
        return None
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@attrs.frozen
class RecordCheck:
    """The delivery log against the ledger."""

    acknowledged: int
    received: int
    types: dict[str, int]
    missing: list[str]
    """Acknowledged recipients without a ``Reception`` record."""
    received_twice: list[str]
    ended_twice: list[str]
    """Recipients with more than one record that ends a message (a delivery repeated
    because the server died between the destination's 250 and its ``Delivered``)."""
    most_endings: int

    def problems(self, kills: int) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} acknowledged but never received: {self.missing[:5]}")
        if self.received_twice:
            found.append(f"{len(self.received_twice)} received twice: {self.received_twice[:5]}")
        if self.most_endings > 1 + kills:
            found.append(f"a message ended {self.most_endings} times with {kills} kills")
        return found


def check_records(data_dir: Path, acknowledged: set[str]) -> RecordCheck:
    """Every acknowledged recipient was received once; how often each message ended."""
    records = read_records(data_dir / LOGS)
    types = Counter(str(record["type"]) for record in records)
    receptions = Counter(
        str(record["recipient"]) for record in records if record["type"] == "Reception"
    )
    endings = Counter(str(record["recipient"]) for record in records if record["type"] in TERMINAL)
    return RecordCheck(
        acknowledged=len(acknowledged),
        received=len(receptions),
        types=dict(sorted(types.items())),
        missing=sorted(acknowledged - receptions.keys()),
        received_twice=sorted(r for r, n in receptions.items() if n > 1),
        ended_twice=sorted(r for r, n in endings.items() if n > 1),
        most_endings=max(endings.values(), default=0),
    )
