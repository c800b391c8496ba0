"""Tests for kumo.model.smtp_reply: reading replies as KumoMTA does, and classifying them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.model.smtp_reply import (
    MAX_LINE_LENGTH,
    MAX_REPLY_LENGTH,
    Disposition,
    EnhancedCode,
    ReplyError,
    ReplyReader,
    Response,
    TooManyRecipients,
    classify_reply,
    flatten_content,
    too_many_recipients,
)


def read_all(data: bytes) -> list[Response | str]:
    """Every reply in ``data``, then the error text if reading stopped on one."""
    reader = ReplyReader()
    reader.feed(data)
    found: list[Response | str] = []
    while True:
        try:
            reply = reader.next_reply()
        except ReplyError as error:
            found.append(str(error))
            return found
        if reply is None:
            return found
        found.append(reply)


def read_one(data: bytes) -> Response | str:
    [found] = read_all(data)
    return found


# -- reading: KumoMTA's own parser tests, then kumo's choices ------------------------------


@pytest.mark.parametrize(
    ("line", "code", "content"),
    [(b"220 woot", 220, "woot"), (b"220-woot\r\n220 x", 220, "woot\nx")],
)
def test_response_lines(line: bytes, code: int, content: str) -> None:
    assert read_one(line + b"\r\n") == Response(code, None, content)


@pytest.mark.parametrize("line", [b"220_woot", b"not really", b"22", b"abc def", b"2x0 ok"])
def test_malformed_lines(line: bytes) -> None:
    assert read_one(line + b"\r\n") == "Malformed Response: " + line.decode()


def test_multi_line_reply_joins_lines_with_newlines() -> None:
    assert read_one(b"220-woot\r\n220-more\r\n220 done\r\n") == Response(
        220, None, "woot\nmore\ndone"
    )


@pytest.mark.parametrize(
    ("lines", "bad"),
    [
        (b"220-woot\r\n221-more\r\n220 done\r\n", "221-more"),
        (b"220-woot\r\n220-more\r\n221 done\r\n", "221 done"),
    ],
)
def test_a_line_with_another_code_is_malformed(lines: bytes, bad: str) -> None:
    assert read_one(lines) == f"Malformed Response: {bad}"


@pytest.mark.parametrize(
    ("lines", "content"),
    [
        (b"220-4.1.0 woot\r\n220-more\r\n220 done\r\n", "woot\nmore\ndone"),
        (b"220-4.1.0 woot\r\n220-4.1.0 more\r\n220 done\r\n", "woot\nmore\ndone"),
        (b"220-4.1.0 woot\r\n220-4.1.0 more\r\n220 5.5.5 done\r\n", "woot\nmore\n5.5.5 done"),
    ],
)
def test_enhanced_code_of_the_first_line_is_taken_off_every_line(
    lines: bytes, content: str
) -> None:
    assert read_one(lines) == Response(220, EnhancedCode(4, 1, 0), content)


@pytest.mark.parametrize(
    ("text", "enhanced", "content"),
    [
        ("2.0.0 OK ids=8a54", EnhancedCode(2, 0, 0), "OK ids=8a54"),
        ("5.7.1 relaying denied", EnhancedCode(5, 7, 1), "relaying denied"),
        ("4.65535.0 x", EnhancedCode(4, 65535, 0), "x"),
        ("002.0.00 leading zeros", EnhancedCode(2, 0, 0), "leading zeros"),
        ("2.0.0 ", EnhancedCode(2, 0, 0), ""),
        ("2.0.0", None, "2.0.0"),  # the text after the code is required
        ("3.0.0 class 3", None, "3.0.0 class 3"),
        ("4.65536.0 too big", None, "4.65536.0 too big"),
        ("4.4 short", None, "4.4 short"),
        ("4.4.x letters", None, "4.4.x letters"),
        ("disconnecting 421-disconnect-me", None, "disconnecting 421-disconnect-me"),
    ],
)
def test_enhanced_code_parsing(text: str, enhanced: EnhancedCode | None, content: str) -> None:
    assert read_one(f"250 {text}\r\n".encode()) == Response(250, enhanced, content)


def test_a_bare_code_is_a_final_line_with_empty_text() -> None:
    # RFC 5321 allows it; KumoMTA would call it malformed (kumo's documented choice).
    assert read_one(b"250\r\n") == Response(250, None, "")
    assert read_one(b"250-\r\n250\r\n") == Response(250, None, "\n")


def test_lines_end_at_crlf_only() -> None:
    assert read_all(b"250 a\n250 b\r") == []
    assert read_one(b"250 a\nb\rc\r\n") == Response(250, None, "a\nb\rc")


def test_not_utf8() -> None:
    assert read_one(b"250 \xff\r\n") == "response is not UTF8"


def test_line_length_limit() -> None:
    longest = b"250 " + b"x" * (MAX_LINE_LENGTH - 4)
    assert read_one(longest + b"\r\n") == Response(250, None, "x" * (MAX_LINE_LENGTH - 4))
    assert read_one(longest + b"x\r\n") == "Response line is too long"
    # Known too long before its end arrives: the reader does not wait for it.
    assert read_one(longest + b"xx") == "Response line is too long"
    assert read_all(longest + b"\r") == []


def test_reply_length_limit() -> None:
    line = b"250-" + b"x" * 1000 + b"\r\n"
    count = MAX_REPLY_LENGTH // len(line)
    assert read_all(line * count) == []
    assert read_one(line * (count + 1)) == "Response line is too long"


def test_multi_line_mismatch_shows_the_line_as_rust_prints_it() -> None:
    assert read_one(b"250-a\r\n050 b\r\n") == "Malformed Response: 50 b"


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
@example(b"250-a\r\n250 b\r\n", [3, 7, 8])
@example(b"250 " + b"x" * 5000 + b"\r\n", [4097, 4100])
def test_reading_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    """Garbage in gives replies or ReplyError, the same however the bytes are split."""
    whole = read_all(data)
    reader = ReplyReader()
    found: list[Response | str] = []
    positions = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    stopped = False
    for start, end in itertools.pairwise(positions):
        reader.feed(data[start:end])
        while not stopped:
            try:
                reply = reader.next_reply()
            except ReplyError as error:
                found.append(str(error))
                stopped = True
                break
            if reply is None:
                break
            found.append(reply)
        if stopped:
            break
        assert reader.buffered <= MAX_REPLY_LENGTH
    assert found == whole


# -- the response record -------------------------------------------------------------------


def test_response_json_flattens_content_and_keeps_the_command_crlf() -> None:
    response = Response(250, EnhancedCode(2, 0, 0), "OK\nids=1\r\nx\ry", ".\r\n")
    assert response.to_json() == {
        "code": 250,
        "enhanced_code": {"class": 2, "subject": 0, "detail": 0},
        "content": "OK ids=1 x y",
        "command": ".\r\n",
    }
    assert Response(421, None, "bye").to_json() == {
        "code": 421,
        "enhanced_code": None,
        "content": "bye",
        "command": None,
    }


def test_single_line() -> None:
    assert Response(550, EnhancedCode(5, 1, 1), "no\nsuch user").to_single_line() == (
        "550 5.1.1 no such user"
    )
    assert Response(421, None, "bye").to_single_line() == "421 bye"


def test_flatten_content() -> None:
    assert flatten_content("a\r\nb\nc\rd\r\r\ne") == "a b c d  e"


def test_invalid_records_cannot_exist() -> None:
    with pytest.raises(ValueError, match="class_"):
        EnhancedCode(3, 0, 0)
    with pytest.raises(ValueError, match="code"):
        Response(1000, None, "")


# -- classification (reference 3.4) --------------------------------------------------------


MAIL = "MAIL FROM:<a@example.com>\r\n"
RCPT = "RCPT TO:<b@example.com>\r\n"


@pytest.mark.parametrize(
    ("response", "disposition"),
    [
        (Response(250, EnhancedCode(2, 0, 0), "OK ids=1", ".\r\n"), Disposition.DELIVERY),
        (Response(251, None, "will forward", ".\r\n"), Disposition.DELIVERY),
        (Response(354, None, "go on", "DATA\r\n"), Disposition.TRANSIENT_FAILURE),
        (
            Response(421, None, "disconnecting 421-disconnect-me", MAIL),
            Disposition.TRANSIENT_FAILURE,
        ),
        (
            Response(451, None, "disconnecting disconnect-in-data-no-421", ".\r\n"),
            Disposition.TRANSIENT_FAILURE,
        ),
        (Response(400, None, "tempfail requested", RCPT), Disposition.TRANSIENT_FAILURE),
        (Response(500, None, "permfail requested", RCPT), Disposition.BOUNCE),
        (Response(503, EnhancedCode(5, 5, 1), "bad sequence", MAIL), Disposition.TRANSIENT_FAILURE),
        (Response(550, EnhancedCode(5, 1, 1), "no such user", RCPT), Disposition.BOUNCE),
        (Response(554, None, "rejected", ".\r\n"), Disposition.BOUNCE),
        (Response(452, None, "too many recipients", RCPT), Disposition.TRANSIENT_FAILURE),
        (Response(552, None, "too many recipients", RCPT), Disposition.TRANSIENT_FAILURE),
        (Response(552, EnhancedCode(5, 3, 4), "too big", RCPT), Disposition.BOUNCE),
        (Response(552, None, "too big", ".\r\n"), Disposition.BOUNCE),
        (Response(550, EnhancedCode(4, 5, 3), "too many", RCPT), Disposition.TRANSIENT_FAILURE),
        (Response(550, EnhancedCode(4, 5, 3), "too many", MAIL), Disposition.BOUNCE),
        (Response(199, None, "odd", MAIL), Disposition.BOUNCE),
        (Response(600, None, "odd", MAIL), Disposition.BOUNCE),
    ],
)
def test_classification_table(response: Response, disposition: Disposition) -> None:
    assert classify_reply(response) is disposition


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        (Response(452, None, "x", RCPT), TooManyRecipients.MAYBE),
        (Response(552, None, "x", RCPT), TooManyRecipients.MAYBE),
        (Response(451, EnhancedCode(4, 5, 3), "x", RCPT), TooManyRecipients.YES),
        (Response(452, EnhancedCode(4, 5, 3), "x", RCPT), TooManyRecipients.YES),
        (Response(452, EnhancedCode(4, 2, 2), "x", RCPT), TooManyRecipients.NO),
        (Response(452, None, "x", MAIL), TooManyRecipients.NO),
        (Response(452, None, "x", None), TooManyRecipients.NO),
    ],
)
def test_too_many_recipients(response: Response, answer: TooManyRecipients) -> None:
    assert too_many_recipients(response) is answer


commands = st.sampled_from([None, MAIL, RCPT, "DATA\r\n", ".\r\n", "RSET\r\n"])
enhanced_codes = st.none() | st.builds(
    EnhancedCode, st.sampled_from([2, 4, 5]), st.integers(0, 9), st.integers(0, 9)
)


@given(st.integers(0, 999), enhanced_codes, commands)
def test_classification_property(
    code: int, enhanced: EnhancedCode | None, command: str | None
) -> None:
    """The table of reference 3.4, read row by row from the code's class."""
    response = Response(code, enhanced, "text", command)
    is_rcpt = command == RCPT
    if is_rcpt and enhanced == EnhancedCode(4, 5, 3):
        expected = Disposition.TRANSIENT_FAILURE  # "too many recipients", whatever the code
    elif is_rcpt and enhanced is None and code in (452, 552):
        expected = Disposition.TRANSIENT_FAILURE  # RFC 5321's "too many recipients"
    elif code == 503:
        expected = Disposition.TRANSIENT_FAILURE  # out of sync, not the message's fault
    elif code // 100 == 2:
        expected = Disposition.DELIVERY
    elif code // 100 in (3, 4):
        expected = Disposition.TRANSIENT_FAILURE
    else:
        expected = Disposition.BOUNCE
    assert classify_reply(response) is expected
