"""What a GET or HEAD of a file is answered: status, headers and bytes."""

import pytest

from provisioner.web.file_reply import IMMUTABLE, file_reply

SIZE = 1000
TAG = "ab" * 32


def reply(**kw):
    args = dict(method="GET", size=SIZE, mtime=1_700_000_000.5, tag=TAG, immutable=True)
    return file_reply(**(args | kw))


@pytest.mark.parametrize("range_header, start, stop", [
    ("bytes=0-0", 0, 1),
    ("bytes=0-99", 0, 100),
    ("bytes=900-", 900, SIZE),
    ("bytes=-100", 900, SIZE),
    ("bytes=-5000", 0, SIZE),  # a suffix longer than the file is the whole file, as a 206
    ("bytes=500-99999", 500, SIZE),  # clamped to the end
    ("bytes=999-999", 999, SIZE),
])
def test_single_ranges(range_header, start, stop):
    r = reply(range_header=range_header)
    headers = dict(r.headers)
    assert (r.status, r.start, r.length) == (206, start, stop - start)
    assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert headers["Content-Length"] == str(stop - start)
    assert r.reason == "Partial Content"


@pytest.mark.parametrize("range_header", [
    None, "", "bytes=0-9,20-29", "lines=0-9", "bytes=9-0", "bytes=abc", "bytes=", "bytes=--5",
])
def test_no_usable_single_range_is_the_whole_file(range_header):
    # Multi-range is allowed to be answered whole (RFC 9110 14.2); a header
    # that does not parse is ignored, as werkzeug and nginx do.
    r = reply(range_header=range_header)
    headers = dict(r.headers)
    assert (r.status, r.start, r.length) == (200, 0, SIZE)
    assert "Content-Range" not in headers and headers["Content-Length"] == str(SIZE)


@pytest.mark.parametrize("range_header", [f"bytes={SIZE}-", "bytes=5000-6000"])
def test_unsatisfiable_ranges(range_header):
    r = reply(range_header=range_header)
    headers = dict(r.headers)
    assert (r.status, r.length) == (416, 0)
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert headers["Content-Length"] == "0"  # a keep-alive client must not wait for a body
    # A cache keys on the URL, not the range: a 416 must never stand in for the file.
    assert headers["Cache-Control"] == "no-store" and "ETag" not in headers


def test_entity_headers():
    headers = dict(reply().headers)
    assert headers["ETag"] == f'"{TAG}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Cache-Control"] == IMMUTABLE
    assert headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert headers["Content-Type"] == "application/octet-stream"
    assert dict(reply(immutable=False).headers)["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("if_none_match, status", [
    (f'"{TAG}"', 304), ("*", 304), (f'"other", "{TAG}"', 304), (f'W/"{TAG}"', 304),
    ('"other"', 200), ("", 200), (None, 200),
])
def test_if_none_match(if_none_match, status):
    # If-None-Match uses the weak comparison (RFC 9110 13.1.2).
    r = reply(if_none_match=if_none_match)
    assert r.status == status
    if status == 304:
        assert r.length == 0 and "Content-Length" not in dict(r.headers)


@pytest.mark.parametrize("if_range, status", [
    (f'"{TAG}"', 206),
    ('"other"', 200),
    (f'W/"{TAG}"', 200),  # If-Range needs the strong comparison
    ("Tue, 14 Nov 2023 22:13:20 GMT", 200),  # a date never matches a strong tag here
])
def test_if_range(if_range, status):
    r = reply(range_header="bytes=0-9", if_range=if_range)
    assert r.status == status
    assert r.length == (10 if status == 206 else SIZE)


def test_head_gets_the_headers_of_the_get_and_no_body():
    for rng in (None, "bytes=-10"):
        get, head = reply(range_header=rng), reply(method="HEAD", range_header=rng)
        assert head.headers == get.headers and head.status == get.status
        assert head.length == 0


def test_an_empty_file():
    r = reply(size=0)
    assert (r.status, r.length, dict(r.headers)["Content-Length"]) == (200, 0, "0")
    # Nothing in an empty file can be a range: the (empty) whole answers.
    assert (reply(size=0, range_header="bytes=0-").status, reply(size=0, range_header="bytes=-5").status) == (200, 200)
