"""Retention: deleting the archive segments past ``[log] archive_retention``, and
keeping the base state that the rest of the log goes on from.

After a retention pass the log begins at a *cut*: events ``1..N`` are gone, ``N+1`` on
are kept. Two things are needed to go on from there, and both are kept in
``archive/<N>.base.snapshot`` (the *base*; :class:`kumo.store.archive.HistoryCut`):

- the hash chain's value at ``N`` (and event ``N``'s commit time): the first kept event
  links to it, so ``kumo replay --verify`` checks the chain from there on (the first
  kept segment's ``chain_before`` says the same, and the two must agree);
- the folded state at ``N`` (every rule with its counters, the queued messages, the
  totals), in the snapshot format (:mod:`kumo.model.snapshot`): the invariant checks
  and the audits start from it, so conservation and counters still check.

**Why a base of its own, at exactly N**, rather than one of ``snapshots/``: those are
the two newest, and the archive pass only archives what precedes the older of them,
so no snapshot stands at or before a segment boundary of the archive for long; and a
state before ``N`` would need the deleted events to reach ``N``. So the pass makes the
base itself, by folding the segments it is about to delete into the previous base (or
into an empty state, the first time): each event is folded once for this in its life,
when it is deleted, and the cost of a pass follows what it deletes.

A pass (:func:`apply_retention`), in an order that a kill at any point leaves readable:

1. decide which oldest segments go (:func:`kumo.model.retention.past_retention`);
2. fold them into the previous base, checking their hash chain and their sequence as
   it goes: a damaged or edited segment is never made into a base (the pass stops,
   having deleted nothing);
3. write the new base (a temporary file, fsynced, renamed, the directory fsynced).
   The rename is the commit point: from then on every reader takes the cut at the
   newest base and ignores the segments it covers (:func:`kumo.store.archive.open_archive`);
4. delete those segments, then the older bases, then fsync the directory.

A kill before 3 leaves everything as it was (and perhaps a temporary, which the next
pass removes); a kill after it leaves covered segments and older bases that no reader
takes, and that the next pass deletes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs

from kumo.model.retention import SegmentAge, past_retention
from kumo.model.snapshot import encode_snapshot
from kumo.model.state import State
from kumo.store.archive import (
    BASE_SUFFIX,
    SUFFIX,
    ArchiveSegment,
    base_name,
    base_paths,
    history_cut,
    open_archive,
    segment_last_seq,
)
from kumo.store.durable_files import fsync_directory, replace_durably
from kumo.store.event_log import LogCorruptError
from kumo.store.layout import ARCHIVE, SNAPSHOTS
from kumo.store.log_view import Row
from kumo.store.replay import fold_rows
from kumo.store.snapshots import snapshot_paths
from kumo.store.sqlite_log import chain_link

_TEMPORARY: Final = ".tmp"


@attrs.frozen
class RetentionPass:
    """What one retention pass did."""

    cut: int
    """The last seq deleted, ever: the log begins after it (0: it begins at seq 1)."""
    segments: int
    """Segments this pass decided to delete."""
    events: int
    """Events in them."""
    removed: int
    """Files this pass removed: those segments, and what a killed pass left (covered
    segments, older bases, a temporary)."""
    seconds: float


def newest_snapshot_seq(data_dir: Path) -> int:
    """The seq of the newest snapshot under ``snapshots/`` (0: none)."""
    paths = snapshot_paths(data_dir / SNAPSHOTS)
    return int(paths[0].name.split(".")[0]) if paths else 0


def apply_retention(
    data_dir: Path,
    *,
    now: int,
    retention: int | None,
    progress: Callable[[int, int], None] | None = None,
    before_removing: Callable[[], None] | None = None,
) -> RetentionPass:
    """Delete the archive segments of ``data_dir`` past ``retention`` ns at ``now`` (see
    the module docstring); with ``retention`` None, only finish what a killed pass left.

    Durable: on return the new base and the deletions survive a power failure.
    Raises :class:`LogCorruptError` (deleting nothing) if a segment to delete does not
    follow the cut, skips or repeats a seq, or breaks the hash chain, and
    :class:`~kumo.store.archive.ArchiveCorruptError` if the cut's base or a segment
    cannot be read. ``progress(done, total)`` counts the events folded;
    ``before_removing`` is called between writing the base and removing anything
    (the tests kill the pass there).
    """
    started = time.perf_counter()
    directory = data_dir / ARCHIVE
    archive = open_archive(directory)
    doomed = past_retention(
        [SegmentAge(s.first_seq, s.last_seq, s.last_time) for s in archive.segments],
        now=now,
        retention=retention,
        newest_snapshot=newest_snapshot_seq(data_dir),
    )
    events = 0
    if doomed:
        segments = archive.segments[: len(doomed)]
        events = segments[-1].last_seq - segments[0].first_seq + 1
        state = archive.cut.base() if archive.cut is not None else State()
        chain = _fold_checked(segments, state, archive.chain_before, progress, events)
        _write_base(directory, state, chain)
    if before_removing is not None:
        before_removing()
    removed = remove_covered(directory)
    cut = history_cut(directory)
    return RetentionPass(
        cut=cut.seq if cut is not None else 0,
        segments=len(doomed),
        events=events,
        removed=removed,
        seconds=time.perf_counter() - started,
    )


def _fold_checked(
    segments: list[ArchiveSegment],
    state: State,
    chain: bytes,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> bytes:
    """Fold ``segments`` into ``state`` (which stands just before the first of them, at
    chain value ``chain``), checking every row's seq and chain link; return the chain
    value after the last row."""
    first = state.last_seq + 1

    def rows() -> Iterator[list[Row]]:
        nonlocal chain
        expected = first
        for segment in segments:
            if segment.chain_before != chain or segment.first_seq != expected:
                raise LogCorruptError(
                    segment.first_seq,
                    f"archive segment {segment.path.name} does not follow the events before "
                    "it: nothing deleted (run `kumo replay --verify`)",
                )
            for chunk in segment.chunks():
                for seq, committed_at, kind, body, stored in chunk:
                    link = chain_link(chain, seq, committed_at, kind, body)
                    if seq != expected or link != stored:
                        raise LogCorruptError(
                            seq,
                            f"archive segment {segment.path.name} is damaged or edited there: "
                            "nothing deleted (run `kumo replay --verify`)",
                        )
                    chain = stored
                    expected += 1
                yield [row[:4] for row in chunk]
                if progress is not None:
                    progress(expected - first, total)
            if segment.chain_after != chain:
                raise LogCorruptError(
                    segment.last_seq,
                    f"archive segment {segment.path.name} ends at another chain value than "
                    "its events: nothing deleted (run `kumo replay --verify`)",
                )

    fold_rows(rows(), state)
    return chain


def _write_base(directory: Path, state: State, chain: bytes) -> Path:
    """Write the base at ``state.last_seq``, atomically and durably (the commit point)."""
    path = directory / base_name(state.last_seq)
    temporary = path.with_name(path.name + _TEMPORARY)
    temporary.write_bytes(encode_snapshot(state, chain))
    replace_durably(temporary, path)
    return path


def remove_covered(directory: Path) -> int:
    """Remove what the newest base covers (the segments up to its seq, the older bases)
    and any temporary base; return how many files went. Durable on return."""
    bases = base_paths(directory)
    cut = int(bases[0].name.removesuffix(BASE_SUFFIX)) if bases else 0
    doomed: list[Path] = [
        path
        for path in (directory.iterdir() if directory.is_dir() else ())
        if path.name.endswith(BASE_SUFFIX + _TEMPORARY)
        or (
            path.name.endswith(SUFFIX)
            and (last := segment_last_seq(path.name)) is not None
            and last <= cut
        )
    ]
    doomed += bases[1:]
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        fsync_directory(directory)
    return len(doomed)
