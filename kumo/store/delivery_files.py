"""The delivery-log files under ``<data-dir>/logs/``: their layout, their format, their I/O.

Two kinds of file live there, and nothing else reads or writes them by hand:

- **Segments**, ``<seq>.jsonl`` (:func:`segment_name`): one record per line, each line
  ending in ``\\n``. A segment is named by the seq of the first event whose records it
  holds, zero-padded, so that name order is log order. A segment that has grown past
  the writer's ``segment_bytes`` is closed; the next record starts a new one.
- **The checkpoint**, ``checkpoint.json`` (:class:`Checkpoint`):
  ``{"seq": S, "segment": NAME, "offset": N}`` says that the records of every event up
  to seq ``S`` are written, and that they end at byte ``N`` of segment ``NAME``. It is
  replaced atomically (a temporary file renamed over it), so a reader sees the old
  checkpoint or the new one, never half of one.

:class:`DeliveryFiles` is the one writer: it appends a round of lines with one write and
one ``fdatasync``, then records the checkpoint; on start it cuts the files back to the
checkpoint. :func:`read_checkpoint`, :func:`segment_sizes`, :func:`read_lines` and
:func:`read_records` read them back, for ``kumo replay --verify``, the scenario runner
and the tests; they never write. Every call here blocks: from Trio, run it in a worker
thread (or inline under a virtual clock, as :mod:`kumo.runtime.blocking` explains).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import attrs
import orjson

CHECKPOINT: Final = "checkpoint.json"
"""The checkpoint's file name, inside the logs directory."""
SEGMENT_SUFFIX: Final = ".jsonl"

STALE_SUFFIX: Final = ".stale"
"""Added to a segment that recovery moves aside (see :meth:`DeliveryFiles.recover`)."""

_CHECKPOINT_TEMPORARY: Final = "checkpoint.tmp"


def segment_name(first_seq: int) -> str:
    """The name of the segment whose first records are those of event ``first_seq``."""
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: not JSON, a field missing or of the wrong kind."""


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{attribute.name} must be a non-negative integer, not {value!r}")


def _file_name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\0" in value:
        raise CheckpointError(f"{attribute.name} must be a file name, not {value!r}")


@attrs.frozen
class Checkpoint:
    """Records are written for every event up to ``seq``; they end at byte ``offset`` of
    ``segment`` (a file name in the same directory). Valid by construction: building
    one from bad values raises :class:`CheckpointError`."""

    seq: int = attrs.field(validator=_non_negative_int)
    segment: str = attrs.field(validator=_file_name)
    offset: int = attrs.field(validator=_non_negative_int)

    def to_json(self) -> bytes:
        return orjson.dumps({"seq": self.seq, "segment": self.segment, "offset": self.offset})

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint file's bytes; raises :class:`CheckpointError` saying why not."""
        try:
            fields = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise CheckpointError("not a JSON object")
        missing = [name for name in ("seq", "segment", "offset") if name not in fields]
        if missing:
            raise CheckpointError(f"missing {', '.join(missing)}")
        return cls(fields["seq"], fields["segment"], fields["offset"])


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory``, or ``None`` if there is none (nothing written yet).

    Raises :class:`CheckpointError` if it cannot be parsed, ``OSError`` if it cannot be
    read.
    """
    try:
        data = (directory / CHECKPOINT).read_bytes()
    except FileNotFoundError:
        return None
    return Checkpoint.from_json(data)


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint in ``directory`` atomically: a reader, or a restart after
    a crash, finds the old checkpoint or the new one whole. Not fsynced: a power failure
    may bring back an older checkpoint, which only makes recovery write more again."""
    temporary = directory / _CHECKPOINT_TEMPORARY
    temporary.write_bytes(checkpoint.to_json())
    os.replace(temporary, directory / CHECKPOINT)


def segment_sizes(directory: Path) -> dict[str, int]:
    """Each segment's name and current size in bytes, in log order; ``{}`` if
    ``directory`` does not exist."""
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return {}
    return {name: (directory / name).stat().st_size for name in names}


class SegmentLine(NamedTuple):
    """One line of a segment, as :func:`read_lines` yields it (a tuple: one per line)."""

    segment: str
    number: int
    """1 for the first line read from this segment."""
    data: bytes
    """The line, without its ``\\n``."""
    terminated: bool
    """False for a last line with no ``\\n`` yet: being written, or cut by a crash."""
    last_segment: bool
    """Whether the line is in the last segment (where a writer may be at work)."""


def read_lines(directory: Path, start: Mapping[str, int] | None = None) -> Iterator[SegmentLine]:
    """Every line of every segment in ``directory``, in log order, read as a stream.

    The segments are listed once, when iteration begins. ``start`` maps segment names
    to byte offsets to begin at (what was there before); others are read from the
    start. Blank lines are yielded too, so that line numbers stay true.
    """
    start = start or {}
    names = list(segment_sizes(directory))
    for index, name in enumerate(names):
        last = index == len(names) - 1
        with (directory / name).open("rb") as file:
            file.seek(start.get(name, 0))
            for number, line in enumerate(file, start=1):
                if line.endswith(b"\n"):
                    yield SegmentLine(name, number, line[:-1], True, last)
                else:
                    yield SegmentLine(name, number, line, False, last)


def read_records(directory: Path, start: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """Every complete record in ``directory``, decoded, in log order (see :func:`read_lines`
    for ``start``).

    An unterminated line (a record being written) is left for the next read, and blank
    lines are skipped. Raises ``ValueError`` on a line that is not JSON.
    """
    records: list[dict[str, Any]] = []
    for line in read_lines(directory, start):
        if line.terminated and line.data.strip():
            records.append(orjson.loads(line.data))
    return records


class DeliveryFiles:
    """The writer's side of the files in ``directory``: one writer per directory.

    Call :meth:`recover` first, then :meth:`append` once per round, then :meth:`close`.
    Blocking, and not thread-safe: call it from one thread at a time.
    """

    def __init__(self, directory: Path, *, segment_bytes: int) -> None:
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segment = ""
        """The segment being written ("" before the first)."""
        self.offset = 0
        """Bytes in :attr:`segment`, all of them written and synced."""
        self._fd: int | None = None

    def recover(self) -> int:
        """Cut the files back to the checkpoint; return its seq (0 if there is none).

        Afterwards the files hold exactly the records of the events up to that seq:
        the checkpointed segment is cut to the checkpointed offset (a round written
        after it, whole or in part, is gone), and the segments after it, begun by a
        round that a crash stopped before its checkpoint, are moved aside (renamed
        ``<name>.stale``: no reader takes them for records, and nothing is deleted).
        Without a checkpoint nothing counts as written, and every segment is moved
        aside. Creates the directory if needed. Raises :class:`CheckpointError` on an unreadable
        checkpoint, touching nothing.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = read_checkpoint(self.directory)
        kept = checkpoint.segment if checkpoint is not None else ""
        stale = [name for name in segment_sizes(self.directory) if name > kept]
        for name in stale:
            os.replace(self.directory / name, self.directory / f"{name}{STALE_SUFFIX}")
        if stale:
            self._sync_directory()
        if checkpoint is None:
            return 0
        self.segment, self.offset = checkpoint.segment, checkpoint.offset
        self._fd = os.open(self.directory / self.segment, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, self.offset)
        os.lseek(self._fd, self.offset, os.SEEK_SET)
        return checkpoint.seq

    def append(self, lines: Sequence[bytes], first_seq: int, last_seq: int) -> int:
        """Write a round: the records (``\\n``-terminated lines) of events ``first_seq`` to
        ``last_seq``; return the bytes written.

        The lines go out in one write and one ``fdatasync`` (a new segment is begun first,
        named after ``first_seq``, if there is none or the current one is full), then the
        checkpoint moves to ``last_seq``. A round without lines moves the checkpoint only,
        once there is a segment. On return the records survive a power failure; a crash
        before it leaves at most this round's lines past the checkpoint, which
        :meth:`recover` cuts off.
        """
        written = 0
        if lines:
            if self._fd is None or self.offset >= self.segment_bytes:
                self._begin_segment(first_seq)
            assert self._fd is not None
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
            self.offset += len(data)
            written = len(data)
        if self._fd is not None:
            write_checkpoint(self.directory, Checkpoint(last_seq, self.segment, self.offset))
        return written

    def _begin_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.segment = segment_name(first_seq)
        # O_TRUNC: a segment of that name can only hold records past the checkpoint.
        self._fd = os.open(
            self.directory / self.segment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
        )
        self.offset = 0
        self._sync_directory()

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        """Close the current segment, if any. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
