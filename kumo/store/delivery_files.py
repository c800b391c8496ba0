"""The delivery-log files under ``<data-dir>/logs/``: their layout, their format, their I/O.

Two kinds of file live there, and nothing else reads or writes them by hand:

- **Segments**, ``<seq>.jsonl`` (:func:`segment_name`): one record per line, each line
  ending in ``\\n``. A segment is named by the seq of the first event whose records it
  holds, zero-padded, so that name order is log order. A segment that has grown past
  the writer's ``segment_bytes`` is closed; the next record starts a new one.
- **The checkpoint**, ``checkpoint.json`` (:class:`Checkpoint`):
  ``{"seq": S, "segment": NAME, "offset": N, "last_line": D}`` says that the records of
  every event up to seq ``S`` are written, and that they end at byte ``N`` of segment
  ``NAME``, with the line whose digest is ``D`` (:func:`line_digest`; absent before a
  segment's first line). It is replaced atomically (a temporary file renamed over it),
  so a reader sees the old checkpoint or the new one, never half of one. A segment is
  checkpointed as it is begun, so a segment with no checkpoint is never one being
  written.

:class:`DeliveryFiles` is the one writer: it appends a round of lines with one write and
one ``fdatasync``, then records the checkpoint; on start it cuts the files back to the
checkpoint, unless they do not end a record there (:class:`TailDamagedError`: the
writer repairs them from the event log, with :meth:`DeliveryFiles.cut` and
:meth:`DeliveryFiles.resume`). :func:`read_checkpoint`, :func:`segment_sizes`,
:func:`read_lines` and :func:`read_records` read them back, for ``kumo replay
--verify``, the scenario runner and the tests; they never write. Every call here
blocks: from Trio, run it in a worker thread (or inline under a virtual clock, as
:mod:`kumo.runtime.blocking` explains).
"""

from __future__ import annotations

import hashlib
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


def segment_first_seq(name: str) -> int | None:
    """The seq a segment's name says its records begin at; ``None`` for a name that
    :func:`segment_name` did not make."""
    digits = name.removesuffix(SEGMENT_SUFFIX)
    if name.endswith(SEGMENT_SUFFIX) and len(digits) == 20 and digits.isdigit():
        return int(digits)
    return None


def line_digest(line: bytes) -> str:
    """The checkpoint's digest of a line (its ``\n`` included): 16 hex digits."""
    return hashlib.blake2b(line, digest_size=8).hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: not JSON, a field missing or of the wrong kind."""


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"{attribute.name} must be a non-negative integer, not {value!r}")


def _file_name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\0" in value:
        raise CheckpointError(f"{attribute.name} must be a file name, not {value!r}")


def _digest(instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and not (
        isinstance(value, str) and len(value) == 16 and set(value) <= set("0123456789abcdef")
    ):
        raise CheckpointError(f"{attribute.name} must be 16 hex digits, not {value!r}")


@attrs.frozen
class Checkpoint:
    """Records are written for every event up to ``seq``; they end at byte ``offset`` of
    ``segment`` (a file name in the same directory). Valid by construction: building
    one from bad values raises :class:`CheckpointError`."""

    seq: int = attrs.field(validator=_non_negative_int)
    segment: str = attrs.field(validator=_file_name)
    offset: int = attrs.field(validator=_non_negative_int)
    last_line: str | None = attrs.field(default=None, validator=_digest, eq=False)
    """The :func:`line_digest` of the line that ends at ``offset`` (``None``: none yet,
    or a checkpoint written before there were digests). Not part of equality: it
    checks the position, it is not one."""

    def to_json(self) -> bytes:
        fields: dict[str, object] = {
            "seq": self.seq,
            "segment": self.segment,
            "offset": self.offset,
        }
        if self.last_line is not None:
            fields["last_line"] = self.last_line
        return orjson.dumps(fields)

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
        return cls(fields["seq"], fields["segment"], fields["offset"], fields.get("last_line"))


class TailDamagedError(Exception):
    """The checkpointed segment does not end a record where the checkpoint says (a line
    before it was damaged, removed or repeated, or the segment is gone): cutting it
    there would cut into a record. ``problem`` says what was found."""

    def __init__(self, checkpoint: Checkpoint, problem: str) -> None:
        super().__init__(f"{checkpoint.segment} {problem}")
        self.checkpoint = checkpoint
        self.problem = problem


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


def tail_problem(directory: Path, checkpoint: Checkpoint) -> str | None:
    """What is wrong with the checkpointed segment at the checkpoint, in words that
    follow its name, or ``None`` if a record ends exactly there (the one whose digest
    the checkpoint holds, when it holds one)."""
    path = directory / checkpoint.segment
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    offset = checkpoint.offset
    if size < offset:
        return f"holds {size:,} bytes, fewer than the checkpointed {offset:,}"
    if offset == 0:
        return None
    lines = whole_lines_before(path, offset, 1)
    if not lines or lines[0][0] != offset:
        return f"has no end of a record at the checkpointed byte {offset:,}"
    if checkpoint.last_line is not None and line_digest(lines[0][1]) != checkpoint.last_line:
        return f"ends another record than the checkpointed one at byte {offset:,}"
    return None


def whole_lines_before(path: Path, limit: int, count: int) -> list[tuple[int, bytes]]:
    """The last ``count`` whole lines of the file at ``path`` that end at or before byte
    ``limit``, latest first, each as (the offset just past its ``\n``, the line with
    its ``\n``). Reads backwards from ``limit``, a block at a time."""
    with path.open("rb") as file:
        end = min(limit, file.seek(0, os.SEEK_END))
        newlines: list[int] = []  # where each "\n" is, latest first
        blocks: list[bytes] = []
        position = end
        while position > 0 and len(newlines) <= count:
            start = max(0, position - _BLOCK)
            file.seek(start)
            block = file.read(position - start)
            blocks.append(block)
            index = len(block)
            while len(newlines) <= count:
                index = block.rfind(b"\n", 0, index)
                if index < 0:
                    break
                newlines.append(start + index)
            position = start
    data = b"".join(reversed(blocks))
    lines: list[tuple[int, bytes]] = []
    for number, newline in enumerate(newlines[:count]):
        if number + 1 < len(newlines):
            begin = newlines[number + 1] + 1
        elif position == 0:
            begin = 0
        else:
            break
        lines.append((newline + 1, data[begin - position : newline + 1 - position]))
    return lines


_BLOCK: Final = 64 * 1024


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
        self.last_line: str | None = None
        """The :func:`line_digest` of the line that ends at :attr:`offset`."""
        self._fd: int | None = None

    def recover(self) -> int:
        """Cut the files back to the checkpoint; return its seq (0 if there is none).

        Afterwards the files hold exactly the records of the events up to that seq:
        the checkpointed segment is cut to the checkpointed offset (a round written
        after it, whole or in part, is gone), and the segments after it, begun by a
        round that a crash stopped before its checkpoint, are moved aside (renamed
        ``<name>.stale``: no reader takes them for records, and nothing is deleted).
        Without a checkpoint nothing counts as written, and every segment is moved
        aside. Creates the directory if needed.

        Touches nothing and raises :class:`CheckpointError` on an unreadable
        checkpoint, and :class:`TailDamagedError` when the checkpointed segment does not
        end a record at the checkpoint (:func:`tail_problem`): cutting there would cut
        into a record, or pad the segment with zeros.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = read_checkpoint(self.directory)
        if checkpoint is not None:
            problem = tail_problem(self.directory, checkpoint)
            if problem is not None:
                raise TailDamagedError(checkpoint, problem)
        kept = checkpoint.segment if checkpoint is not None else ""
        self._set_aside_after(kept)
        if checkpoint is None:
            return 0
        self.resume(checkpoint.segment, checkpoint.offset, checkpoint.last_line)
        return checkpoint.seq

    def _set_aside_after(self, kept: str) -> None:
        """Move aside (``<name>.stale``) every segment after ``kept`` ("": all)."""
        stale = [name for name in segment_sizes(self.directory) if name > kept]
        for name in stale:
            os.replace(self.directory / name, self.directory / f"{name}{STALE_SUFFIX}")
        if stale:
            self._sync_directory()

    def resume(self, segment: str, offset: int, last_line: str | None) -> None:
        """Go on writing ``segment`` at byte ``offset`` (created if missing; cut there if
        longer), whose line ending there has digest ``last_line``. For :meth:`recover`,
        and for a repair that has just cut a segment (:meth:`cut`)."""
        self.close()
        self.segment, self.offset, self.last_line = segment, offset, last_line
        self._fd = os.open(self.directory / self.segment, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, self.offset)
        os.lseek(self._fd, self.offset, os.SEEK_SET)

    def cut(self, segment: str, at: int) -> tuple[str, int] | None:
        """Cut ``segment`` back to its first ``at`` bytes, and move every segment after
        it aside; return the name of the file that now holds the bytes cut off
        (``<segment>.<at>.stale``) and how many there were, or ``None`` if there were
        none. The bytes are synced to the ``.stale`` file before the segment is cut:
        nothing is lost whenever a crash comes. ``at`` must end a line (or be 0)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._set_aside_after(segment)
        path = self.directory / segment
        try:
            with path.open("rb") as file:
                file.seek(at)
                tail = file.read()
        except FileNotFoundError:
            return None
        if not tail:
            return None
        stale = f"{segment}.{at}{STALE_SUFFIX}"
        descriptor = os.open(self.directory / stale, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(tail)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._sync_directory()
        os.truncate(path, at)
        return stale, len(tail)

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
            self.last_line = line_digest(lines[-1])
            written = len(data)
        if self._fd is not None:
            write_checkpoint(
                self.directory,
                Checkpoint(last_seq, self.segment, self.offset, self.last_line),
            )
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
        self.last_line = None
        self._sync_directory()
        # Checkpointed empty before its first line: a segment is never without a
        # checkpoint, so that one found without (deleted, unreadable) is damage, which
        # the next start rebuilds from the segments rather than writing them anew.
        write_checkpoint(self.directory, Checkpoint(first_seq - 1, self.segment, 0))

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
