"""kcli's tables: columns padded by terminal width, as KumoMTA's kcli (tabout) pads them."""

from __future__ import annotations

from kumo.cli.tables import Align, display_width, format_count, format_table


def test_format_table_pads_by_display_width() -> None:
    table = format_table([("NAME", Align.LEFT), ("N", Align.RIGHT)], [["日本", "1"], ["ab", "22"]])

    assert table == "NAME  N\n日本  1\nab   22"
    assert display_width("日本") == 4
    assert display_width("e\u0301") == 1


def test_emoji_are_two_cells_wide() -> None:
    # The markers of kcli queue-summary's status column.
    assert display_width("🛑") == 2
    assert display_width("🗑\ufe0f") == 2  # a variation selector makes it an emoji
    assert display_width("🗑") == 1
    assert display_width("🗑\ufe0e") == 1
    assert display_width("🗑️ bounce: r") == 12
    assert display_width("🛑suspend: testing") == 18
    assert display_width("\ufe0f") == 0


def test_the_last_column_is_padded_and_the_header_stays_without_rows() -> None:
    columns = [("A", Align.LEFT), ("", Align.LEFT)]
    assert format_table(columns, []) == "A "
    assert format_table(columns, [["x", "status"], ["y", ""]]) == ("A       \nx status\ny       ")


def test_counts_have_thousands_separators() -> None:
    assert [format_count(n) for n in (0, 999, 1000, 1234567)] == ["0", "999", "1,000", "1,234,567"]
