"""A live scenario's destination: Postfix's ``smtp-sink`` (Debian package ``postfix``).

Against a live server, a ``destination`` step (re)starts ``smtp-sink`` at the address the
server delivers that domain to (``kumo scenario run --sink DOMAIN=IP:PORT``; the
server's ``[domains."DOMAIN"] mx_list`` names the same address), answering each message
as the step says, at the message's final dot, as the in-process destinations do:

- ``accept``: ``smtp-sink`` as it is (``250 2.0.0 Ok``);
- a ``4xx`` reply: ``-r . -b "<reply>"`` (a soft refusal of the dot, with that text);
- a ``5xx`` reply: ``-f . -B "<reply>"`` (a hard one).

A change stops the running sink and starts the new one on the same address, so a
destination that "recovers" is a restart without the flag.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Final

import trio

from kumo.scenario.format import Destination

__all__ = ["SMTP_SINK", "SmtpSink", "SmtpSinkError", "sink_command"]

SMTP_SINK: Final = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
)
"""Where ``smtp-sink`` is installed, if it is."""
BACKLOG: Final = "64"
START_TIMEOUT: Final = 10.0
"""Seconds a started sink has to accept a connection."""
_POLL: Final = 0.01


class SmtpSinkError(OSError):
    """``smtp-sink`` is missing, or did not start."""


def sink_command(binary: str, host: str, port: int, step: Destination) -> list[str]:
    """The command line of a sink at ``host:port`` answering as ``step`` says."""
    command = [binary]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root
    if not step.accepts:
        soft = step.code < 500
        command += ["-r" if soft else "-f", ".", "-b" if soft else "-B", step.answer]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [*command, address, BACKLOG]


class SmtpSink:
    """The ``smtp-sink`` of one destination at ``host:port``, run in ``nursery``."""

    def __init__(self, host: str, port: int, nursery: trio.Nursery) -> None:
        self.host = host
        self.port = port
        self._nursery = nursery
        self._process: trio.Process | None = None

    async def answer(self, step: Destination) -> None:
        """Stop the sink, if one runs, and start one answering as ``step`` says; return
        once it accepts connections. Raises :class:`SmtpSinkError` if it cannot run."""
        if SMTP_SINK is None:
            raise SmtpSinkError(
                "Postfix's smtp-sink is not installed (Debian: apt-get install postfix)"
            )
        await self.stop()
        command = sink_command(SMTP_SINK, self.host, self.port, step)
        process: trio.Process = await self._nursery.start(
            functools.partial(
                trio.run_process,
                command,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self._process = process
        await self._wait_until_accepting(process)

    async def _wait_until_accepting(self, process: trio.Process) -> None:
        # smtp-sink has no readiness signal: it is ready once it accepts.
        with trio.move_on_after(START_TIMEOUT):
            while process.returncode is None:
                try:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                except OSError:
                    await trio.sleep(_POLL)
                    continue
                await stream.aclose()
                return
        await self.stop()
        raise SmtpSinkError(
            f"smtp-sink did not start on {self.host}:{self.port} (exit status {process.returncode})"
        )

    async def stop(self) -> None:
        """Stop the sink, if one runs, and wait for it to exit."""
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                process.terminate()
            await process.wait()
