"""The one reader of Prometheus text pages: samples, names as written, and the
``scheduled_count`` gauges that kcli and the scenario runner read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kumo.model.prometheus_text import Sample, parse_samples, parse_scheduled_counts


def quoted(value: str) -> str:
    """A label value as the exposition format writes it (escapes ``\\``, ``"``, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def test_samples_keep_the_names_they_were_written_under() -> None:
    page = "\n".join(
        [
            "# HELP total_messages_received Messages received since the log began.",
            "# TYPE total_messages_received counter",
            "total_messages_received 10",
            "# TYPE scheduled_count gauge",
            'scheduled_count{queue="a.com"} 3',
            "# TYPE kumo_engine_log_commits untyped",
            "kumo_engine_log_commits 7 1700000000000",
            "",
        ]
    )
    assert parse_samples(page) == [
        Sample("total_messages_received", {}, 10.0),
        Sample("scheduled_count", {"queue": "a.com"}, 3.0),
        Sample("kumo_engine_log_commits", {}, 7.0),
    ]


def test_a_line_that_does_not_parse_costs_only_itself() -> None:
    page = 'a 1\nb{broken 2\nc{x="y"} 3\nd\n'
    assert parse_samples(page) == [Sample("a", {}, 1.0), Sample("c", {"x": "y"}, 3.0)]


@given(st.text())
def test_any_text_gives_samples_and_never_raises(text: str) -> None:
    for sample in parse_samples(text):
        assert isinstance(sample.value, float)


queues = st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 10**9), max_size=8)


@given(queues)
def test_scheduled_counts_read_back_what_a_page_says(counts: dict[str, int]) -> None:
    page = "# TYPE scheduled_count gauge\n" + "".join(
        f'scheduled_count{{queue="{quoted(queue)}"}} {count}\n' for queue, count in counts.items()
    )
    assert parse_scheduled_counts(page) == counts


def test_scheduled_counts_from_metrics() -> None:
    text = "\n".join(
        [
            "# HELP scheduled_count Messages waiting.",
            "# TYPE scheduled_count gauge",
            'scheduled_count{queue="camp:acme@example.com"} 3',
            'scheduled_count{queue="q\\"uo\\\\te"} 2 1700000000',
            'scheduled_count{node="n",queue="example.com!relay"} 1.0',
            'scheduled_count_other{queue="x"} 9',
            "total_messages_received 6",
        ]
    )
    assert parse_scheduled_counts(text) == {
        "camp:acme@example.com": 3,
        'q"uo\\te': 2,
        "example.com!relay": 1,
    }


@given(st.text())
def test_metrics_parser_takes_any_text(text: str) -> None:
    assert all(isinstance(v, int) for v in parse_scheduled_counts(text).values())


def test_metrics_parser_ignores_non_finite_values() -> None:
    text = 'scheduled_count{queue="a"} NaN\nscheduled_count{queue="b"} +Inf\n'
    assert parse_scheduled_counts(text) == {}


def test_parse_scheduled_counts_unescapes_labels_and_skips_noise() -> None:
    text = "\n".join(
        [
            'scheduled_count{queue="back\\\\slash"} 1',
            'scheduled_count{queue="quo\\"te"} 2',
            'scheduled_count{queue="new\\nline"} 3',
            'scheduled_count{queue="odd\\xescape"} 4',
            'scheduled_count { node="n1" , queue="spaced" , } 5.0 1700000000000',
            'scheduled_count{queue="sci"} 1e3',
            'scheduled_count{queue="nan"} NaN',
            'scheduled_count{queue="inf"} +Inf',
            'scheduled_count{node="n1"} 9',
            'scheduled_count{queue="unterminated} 9',
            'scheduled_count{queue="novalue"}',
            'scheduled_count{queue="word"} many',
            'scheduled_count_other{queue="x"} 9',
            '  # comment scheduled_count{queue="c"} 1',
            'scheduled_count{queue="dup"} 1',
            'scheduled_count{queue="dup"} 2',
        ]
    )

    assert parse_scheduled_counts(text) == {
        "back\\slash": 1,
        'quo"te': 2,
        "new\nline": 3,
        "odd\\xescape": 4,
        "spaced": 5,
        "sci": 1000,
        "dup": 3,
    }
