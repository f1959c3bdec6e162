"""The strict recogniser of blob requests the event loop answers itself:
what real clients send is recognised; anything unusual is left to waitress."""

import pytest

from provisioner.web.simple_request import SimpleRequest, parse_simple_request

HEX = "0123456789abcdef" * 4
PATH = f"/artifacts/sha256/{HEX}"


def raw(*lines: str, first: str = f"GET {PATH} HTTP/1.1") -> bytes:
    return ("\r\n".join((first, *lines)) + "\r\n\r\n").encode("latin-1")


# Modelled on what these clients send (curl and http.client are also checked
# for real in tests/integration/test_blob_fast_path.py).
CURL = raw("Host: 10.0.2.2:8080", "User-Agent: curl/7.88.1", "Accept: */*", "Range: bytes=-4096")
PY_HTTP_CLIENT = raw("Host: 127.0.0.1:8080", "Accept-Encoding: identity", "Range: bytes=1073737728-")
IPXE = raw("Host: 10.0.2.2", "User-Agent: iPXE/1.21.1+ (g4bd064de)", "Connection: keep-alive",
           "Range: bytes=0-4095")
WGET = raw("User-Agent: Wget/1.21.3", "Accept: */*", "Accept-Encoding: identity", "Host: 10.0.2.2:8080",
           "Connection: Keep-Alive")
CACHE = raw("Host: appliance", "If-None-Match: \"" + HEX + "\"", "If-Range: \"" + HEX + "\"",
            "Range: bytes=0-", "Connection: close", "Via: 1.1 squid")


@pytest.mark.parametrize("data, expected", [
    (CURL, SimpleRequest("GET", PATH, range="bytes=-4096")),
    (PY_HTTP_CLIENT, SimpleRequest("GET", PATH, range="bytes=1073737728-")),
    (IPXE, SimpleRequest("GET", PATH, range="bytes=0-4095")),
    (WGET, SimpleRequest("GET", PATH)),
    (CACHE, SimpleRequest("GET", PATH, range="bytes=0-", if_range=f'"{HEX}"', if_none_match=f'"{HEX}"', close=True)),
    (raw("Host: x", first=f"HEAD {PATH} HTTP/1.1"), SimpleRequest("HEAD", PATH)),
    (raw(first=f"GET {PATH} HTTP/1.1"), SimpleRequest("GET", PATH)),  # no headers at all
    (raw("host:x", "RANGE:   bytes=0-1  "), SimpleRequest("GET", PATH, range="bytes=0-1")),  # OWS, any case
    (raw("X-Empty:", "X-Tab:\tv\tw"), SimpleRequest("GET", PATH)),
])
def test_what_clients_send_is_recognised(data, expected):
    assert parse_simple_request(data) == expected


@pytest.mark.parametrize("data", [
    pytest.param(raw("Host: x", first=f"POST {PATH} HTTP/1.1"), id="POST"),
    pytest.param(raw("Host: x", first=f"get {PATH} HTTP/1.1"), id="lowercase method"),
    pytest.param(raw("Host: x", first=f"GET {PATH} HTTP/1.0"), id="HTTP/1.0 (keep-alive rules differ)"),
    pytest.param(raw("Host: x", first=f"GET {PATH}"), id="HTTP/0.9"),
    pytest.param(raw("Host: x", first=f"GET {PATH}?x=1 HTTP/1.1"), id="query"),
    pytest.param(raw("Host: x", first=f"GET {PATH.upper()} HTTP/1.1"), id="uppercase"),
    pytest.param(raw("Host: x", first=f"GET {PATH[:-1]} HTTP/1.1"), id="63 hex digits"),
    pytest.param(raw("Host: x", first=f"GET {PATH}0 HTTP/1.1"), id="65 hex digits"),
    pytest.param(raw("Host: x", first=f"GET /artifacts/sha256/../{HEX} HTTP/1.1"), id="dot-dot"),
    pytest.param(raw("Host: x", first=f"GET /artifacts/sha256/%30{HEX[1:]} HTTP/1.1"), id="percent-encoded"),
    pytest.param(raw("Host: x", first=f"GET http://x{PATH} HTTP/1.1"), id="absolute form"),
    pytest.param(raw("Host: x", first=f"GET  {PATH} HTTP/1.1"), id="two spaces"),
    pytest.param(raw("Host: x", "Content-Length: 0"), id="Content-Length"),
    pytest.param(raw("Host: x", "Transfer-Encoding: chunked"), id="Transfer-Encoding"),
    pytest.param(raw("Host: x", "Expect: 100-continue"), id="Expect"),
    pytest.param(raw("Host: x", "Upgrade: h2c"), id="Upgrade"),
    pytest.param(raw("Host: x", "Range: bytes=0-1", "range: bytes=2-3"), id="duplicate header"),
    pytest.param(raw("Host: x", "Connection: Upgrade"), id="other Connection"),
    pytest.param(raw("Host: x", " folded"), id="obs-fold"),
    pytest.param(raw("Host : x"), id="space before colon"),
    pytest.param(raw("Host"), id="no colon"),
    pytest.param(raw("Ho(st: x"), id="bad name"),
    pytest.param(raw("Host: x\x00y"), id="NUL"),
    pytest.param(raw("Host: x\ny: z"), id="bare LF"),
    pytest.param(raw("Host: x\ry: z"), id="bare CR"),
    pytest.param(raw("Host: caf\xe9"), id="obs-text"),
    pytest.param(raw("Host: x")[:-2], id="incomplete"),
    pytest.param(raw("Host: x") + raw("Host: x"), id="pipelined"),
    pytest.param(raw("Host: x") + b"trailing", id="trailing bytes"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\r\n\r\n", id="blank"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="TLS hello"),
])
def test_anything_unusual_is_left_to_waitress(data):
    assert parse_simple_request(data) is None
