"""Measure how a running ``kumo serve`` copes with hostile or careless clients.

``python scripts/fault_probe.py URL PID connections | body-limit | inject | auth``

URL is the server's base URL and PID its process id (descriptors and memory are read
from /proc). The figures of docs/reliability.md come from these probes:

- ``connections``: 200 clients each send one request (``Connection: close``,
  HTTP/1.0, or kept alive and left idle) and keep their socket; how many descriptors
  the server still holds half a second later (and, for the idle ones, after hypercorn's
  5 s keep-alive timeout).
- ``body-limit``: a 100 MB body, declared by ``Content-Length`` and then chunked:
  when the 413 arrives, and how much had been sent by then.
- ``inject``: one injection of 500 recipients with a 500 KB object body, with a GET
  and a POST of the admin API every 10 ms meanwhile: the injection's time, the admin
  requests' latencies, and the server's RSS.
- ``auth`` (a server that trusts no loopback address and has the user ``alice`` with
  the password ``wonderland``): a wrong password against an unknown user, then 8
  clients guessing for 10 s from 127.0.0.1 while alice works from 127.0.0.2.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

BOUNCE = "/api/admin/bounce/v1"
INJECT = "/api/inject/v1"


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connections(url: str, pid: int) -> None:
    requests = {
        "Connection: close": b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        "HTTP/1.0": b"GET /api/check-liveness/v1 HTTP/1.0\r\n\r\n",
        "kept alive, idle": b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for name, request in requests.items():
        before = descriptors(pid)
        clients = []
        for _ in range(200):
            client = socket.create_connection(host_port(url))
            client.sendall(request)
            client.settimeout(10)
            assert client.recv(65536).startswith(b"HTTP/1.")
            clients.append(client)
        time.sleep(0.5)
        line = f"{name}: 200 clients, the server holds {descriptors(pid) - before} more fds"
        if name == "kept alive, idle":
            time.sleep(6)
            line += f", {descriptors(pid) - before} after 6 s"
        print(line, flush=True)
        for client in clients:
            client.close()
        time.sleep(0.5)  # for the server to see them go before the next count


def body_limit(url: str, pid: int) -> None:
    del pid
    size = 100_000_000
    for chunked in (False, True):
        client = socket.create_connection(host_port(url))
        length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n\r\n"
        sent = 0
        done = threading.Event()

        def send(
            client: socket.socket = client, chunked: bool = chunked, done: threading.Event = done
        ) -> None:
            nonlocal sent
            piece = b"x" * 65536
            try:
                while sent < size and not done.is_set():
                    client.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    sent += len(piece)
                if chunked and not done.is_set():
                    client.sendall(b"0\r\n\r\n")
            except OSError:
                pass

        started = time.perf_counter()
        client.sendall(head % (BOUNCE.encode(), length))
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        client.settimeout(120)
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := client.recv(65536)):
            reply += chunk
        took = time.perf_counter() - started
        done.set()
        status = reply.split(b"\r\n", 1)[0].decode()
        closes = b"connection: close" in reply.lower()
        kind = "chunked" if chunked else "Content-Length"
        print(
            f"100 MB ({kind}): {status!r} after {took:.2f} s, {sent / 2**20:.1f} MiB sent; "
            f"Connection: close {closes}",
            flush=True,
        )
        client.close()


def inject(url: str, pid: int) -> None:
    text = ("lorem ipsum " * 41_667)[:500_000]
    body = {
        "envelope_sender": "s@x.example",
        "recipients": [{"email": f"r{i}@d{i % 7}.example"} for i in range(500)],
        "content": {"subject": "s", "from": {"email": "a@b.example"}, "text_body": text},
    }
    latencies: dict[str, list[float]] = {"GET": [], "POST": []}
    peak = [rss_mib(pid)]
    stop = threading.Event()

    def admin() -> None:
        rule = {"reason": "probe", "campaign": "nothing-here", "duration": "1s"}
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get(url + BOUNCE)
                latencies["GET"].append(time.perf_counter() - started)
                started = time.perf_counter()
                client.post(url + BOUNCE, json=rule)
                latencies["POST"].append(time.perf_counter() - started)
                time.sleep(0.01)

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mib(pid))
            time.sleep(0.02)

    threads = [threading.Thread(target=admin), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    started = time.perf_counter()
    reply = httpx.post(url + INJECT, json=body, timeout=120)
    took = time.perf_counter() - started
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    parts = [f"inject 500 x 500 KB: {reply.status_code} in {took:.2f} s"]
    for method, values in latencies.items():
        median, most = statistics.median(values) * 1000, max(values) * 1000
        parts.append(f"{method} p50 {median:.1f} ms max {most:.0f} ms")
    parts.append(f"RSS {peak[0]} -> peak {max(peak)} MiB")
    print("; ".join(parts), flush=True)


def _client(address: str, timeout: float = 30) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(transport=transport, timeout=timeout)


def _timed(client: httpx.Client, url: str, user: str, password: str) -> tuple[float, int]:
    """Seconds and status of one GET of the rules with Basic credentials."""
    started = time.perf_counter()
    status = client.get(url + BOUNCE, auth=(user, password)).status_code
    return time.perf_counter() - started, status


def auth(url: str, pid: int) -> None:
    del pid
    with _client("127.0.0.3") as client:
        wrong, unknown = [], []
        for n in range(5):  # interleaved, 10 attempts: within one peer's allowance
            wrong.append(_timed(client, url, "alice", f"no{n}"))
            unknown.append(_timed(client, url, f"u{n}", "no"))
    for name, timings in (("wrong password", wrong), ("unknown user", unknown)):
        median = statistics.median(seconds for seconds, _ in timings) * 1000
        statuses = sorted({status for _, status in timings})
        print(f"{name}: median {median:.1f} ms, statuses {statuses}", flush=True)
    with _client("127.0.0.2") as client:
        client.get(url + BOUNCE, auth=("alice", "wonderland"))
        alone = [_timed(client, url, "alice", "wonderland")[0] for _ in range(20)]
    print(f"alice alone: median {statistics.median(alone) * 1000:.1f} ms", flush=True)
    stop = threading.Event()
    replies: Counter[int] = Counter()
    alice: list[tuple[float, int]] = []

    def guess(index: int) -> None:
        with _client("127.0.0.1") as client:
            attempt = 0
            while not stop.is_set():
                user = "alice" if index % 2 else f"user{index}"
                password = f"guess{index}-{attempt}"
                replies[client.get(url + BOUNCE, auth=(user, password)).status_code] += 1
                attempt += 1

    def work() -> None:
        with _client("127.0.0.2") as client:
            while not stop.is_set():
                alice.append(_timed(client, url, "alice", "wonderland"))
                time.sleep(0.05)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=work))
    for thread in threads:
        thread.start()
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join()
    seconds = sorted(value for value, _ in alice)
    statuses = sorted({status for _, status in alice})
    print(
        f"10 s of 8 guessing clients: replies {dict(replies)}; alice {len(alice)} requests, "
        f"statuses {statuses}, median {statistics.median(seconds) * 1000:.1f} ms, "
        f"max {seconds[-1] * 1000:.0f} ms",
        flush=True,
    )


PROBES: dict[str, Callable[[str, int], None]] = {
    "connections": connections,
    "body-limit": body_limit,
    "inject": inject,
    "auth": auth,
}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[3] not in PROBES:
        sys.exit(f"usage: fault_probe.py URL PID {{{','.join(PROBES)}}}")
    PROBES[sys.argv[3]](sys.argv[1].rstrip("/"), int(sys.argv[2]))
