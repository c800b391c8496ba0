"""Archive segments: what is written reads back, filtered as the live store filters,
and damage is named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from kumo.store.archive import (
    CHUNK_ROWS,
    SUFFIX,
    ArchiveCorruptError,
    ArchiveSegment,
    archive_segments,
    bloom_of,
    might_mention,
    write_segment,
)
from kumo.store.log_view import ChainedRow
from kumo.store.sqlite_log import GENESIS, chain_link


def rows(count: int, start: int = 1, chain: bytes = GENESIS) -> list[ChainedRow]:
    """Chained rows: arrivals of one message each, and every tenth a rule's issue."""
    out: list[ChainedRow] = []
    for seq in range(start, start + count):
        if seq % 10 == 0:
            kind, body = "BounceIssued", b'{"rule_id":"r-%d"}' % seq
        else:
            kind, body = "MessageReceived", b'{"message_id":"%032x"}' % seq
        chain = chain_link(chain, seq, 100 + seq, kind, body)
        out.append((seq, 100 + seq, kind, body, chain))
    return out


@given(st.sets(st.binary(min_size=1, max_size=40), max_size=300))
def test_a_bloom_filter_never_misses_an_id_it_holds(ids: set[bytes]) -> None:
    bloom = bloom_of(ids)
    assert all(might_mention(bloom, message_id) for message_id in ids)


def test_a_bloom_filter_rarely_claims_an_id_it_does_not_hold() -> None:
    bloom = bloom_of({b"%032x" % n for n in range(1000)})
    false = sum(might_mention(bloom, b"other-%d" % n) for n in range(10_000))
    assert false < 300  # about 1% expected


def test_a_segment_reads_back_what_was_written_with_its_chain(tmp_path: Path) -> None:
    written = rows(10_000)
    path = write_segment(tmp_path, [written[:3000], written[3000:]], GENESIS)
    assert path is not None
    assert path.name == f"{1:020d}-{10_000:020d}.archive.sqlite3"
    [segment] = archive_segments(tmp_path)
    assert (segment.first_seq, segment.last_seq) == (1, 10_000)
    assert (segment.chain_before, segment.chain_after) == (GENESIS, written[-1][4])
    assert segment.last_time == 10_100
    assert [row for chunk in segment.chunks() for row in chunk] == written
    assert [row for chunk in segment.chunks(after=9_990) for row in chunk] == written[9_990:]
    # Nothing under a temporary name is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_segment_written_a_piece_at_a_time_reads_back_the_same(tmp_path: Path) -> None:
    written = rows(5 * CHUNK_ROWS)  # five whole chunks
    temporary = tmp_path / f"writing{SUFFIX}.tmp"
    sizes: list[int] = []

    def progress(_: int) -> None:
        sizes.append(temporary.stat().st_size)

    batches = [written[start : start + CHUNK_ROWS] for start in range(0, len(written), CHUNK_ROWS)]
    # A piece of one byte: every chunk is written out (and synced) as soon as it is made.
    path = write_segment(tmp_path, batches, GENESIS, progress=progress, piece=1)
    assert path is not None
    [segment] = archive_segments(tmp_path)
    assert [row for chunk in segment.chunks() for row in chunk] == written
    # The file grew while it was written, not only at the end.
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == len(batches)


def test_chunks_filter_as_the_live_store_does(tmp_path: Path) -> None:
    written = rows(9_000)
    write_segment(tmp_path, [written], GENESIS)
    [segment] = archive_segments(tmp_path)

    def seqs(**filters: object) -> list[int]:
        return [row[0] for chunk in segment.chunks(**filters) for row in chunk]  # type: ignore[arg-type]

    assert seqs(until=150) == list(range(1, 51))
    assert seqs(skip=("MessageReceived",)) == list(range(10, 9_001, 10))
    needle = b"%032x" % 8_765
    assert seqs(skip=("MessageReceived",), unless_containing=needle) == sorted(
        [*range(10, 9_001, 10), 8_765]
    )


def test_a_segment_of_nothing_is_not_written(tmp_path: Path) -> None:
    assert write_segment(tmp_path, [], GENESIS) is None
    assert list(tmp_path.iterdir()) == []


def test_damage_names_the_segment(tmp_path: Path) -> None:
    path = write_segment(tmp_path, [rows(5000)], GENESIS)
    assert path is not None
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT rows FROM chunks ORDER BY first_seq LIMIT 1").fetchone()
        db.execute("UPDATE chunks SET rows = ? WHERE first_seq = 1", (data[:-10],))
    db.close()
    [segment] = archive_segments(tmp_path)
    with pytest.raises(ArchiveCorruptError, match=path.name):
        list(segment.chunks())
    path.write_bytes(b"not a database at all, but long enough to look like one" * 100)
    with pytest.raises(ArchiveCorruptError, match=path.name):
        ArchiveSegment.open(path)


def test_an_edited_row_recompressed_still_reads_but_breaks_the_chain(tmp_path: Path) -> None:
    written = rows(100)
    path = write_segment(tmp_path, [written], GENESIS)
    assert path is not None
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT rows FROM chunks").fetchone()
        plain = zstandard.ZstdDecompressor().decompress(data)
        edited = plain.replace(b"%032x" % 42, b"%032x" % 43)
        db.execute("UPDATE chunks SET rows = ?", (zstandard.ZstdCompressor().compress(edited),))
    db.close()
    [segment] = archive_segments(tmp_path)
    read = [row for chunk in segment.chunks() for row in chunk]
    seq, time, kind, body, chain = read[41]
    assert chain_link(read[40][4], seq, time, kind, body) != chain
