"""RFC 6455 conformance through wsguard, modelled on the Autobahn TestSuite
fuzzingclient sections 1-7, 9 and 10.

Every test opens a raw client (rawws, over real TLS) to a wsguard that
relays to a recording echo backend (echo_backend.py), sends exactly the
frames of one Autobahn-style case and asserts what comes back: the echo,
the pong, or the close code wsguard fails the connection with, and - for
failures - that wsguard then closes the TCP connection and that the backend
never saw the invalid message.

Names: test_1_* framing, test_2_* ping/pong, test_3_* reserved bits,
test_4_* opcodes, test_5_* fragmentation, test_6_* UTF-8, test_7_* close,
test_9_* / test_10_* big fragmented messages and masking. See
docs/conformance.md for the map.
"""

import codecs
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

import rawws
from rawws import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT

ECHO_T = 10.0        # one echo round trip (up to 1 MiB)
CLOSE_T = 6.0        # close frame + TCP close (wsguard close_timeout = 2s)
QUIET_T = 0.5        # "nothing comes back" checks
BACKEND_T = 5.0      # backend records its close

PROTOCOL = 1002
INVALID_DATA = 1007


# -- fixtures and helpers ---------------------------------------------------

class Env:
    def __init__(self, backend, proxy, ssl_ctx):
        self.backend = backend
        self.proxy = proxy
        self.ssl = ssl_ctx

    def connect(self, path="/rfc6455"):
        return rawws.connect(self.proxy.host, self.proxy.port, self.ssl,
                             path=path, server_hostname="localhost",
                             timeout=5.0)

    # backend records ---------------------------------------------------

    def records(self):
        return list(self.backend.records())

    def messages(self):
        """(type, len) of every message the backend received, in order."""
        return [(r.get("type"), r.get("len")) for r in self.records()
                if r.get("event") == "message"]

    def wait_backend_close(self, timeout=BACKEND_T):
        """The backend's close records once every opened connection has
        one (bounded poll of its record file)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            opened = {r.get("conn") for r in recs if r.get("event") == "open"}
            closes = [r for r in recs if r.get("event") == "close"]
            if opened and {r.get("conn") for r in closes} >= opened:
                return closes
            if time.monotonic() >= deadline:
                return closes
            time.sleep(0.02)


@pytest.fixture
def env(backend_factory, wsguard_factory, client_ssl):
    be = backend_factory()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="2s",
                         LIMITS_MAX_PAYLOAD="16m")
    return Env(be, px, client_ssl)


@pytest.fixture
def ws(env):
    c = env.connect()
    yield c
    c.close()


def echo(ws, opcode, payload, timeout=ECHO_T):
    """Assert the next data message is (opcode, payload)."""
    msg = ws.recv_message(timeout)
    assert msg.opcode == opcode, "echo opcode %#x, expected %#x" % (msg.opcode, opcode)
    assert len(msg.payload) == len(payload), \
        "echo length %d, expected %d" % (len(msg.payload), len(payload))
    assert msg.payload == payload, "echo payload differs"


def expect_pong(ws, payload, timeout=5.0):
    msg = ws.recv_message(timeout, return_control=True)
    assert (msg.opcode, msg.payload) == (OP_PONG, payload)


def assert_quiet(ws, timeout=QUIET_T):
    """Nothing at all arrives within timeout (no frame, no EOF)."""
    with pytest.raises(rawws.Timeout):
        f = ws.recv_frame(timeout)
        pytest.fail("unexpected frame %r" % (f,))


def assert_failed(env, ws, code, allow_backend_drop=False,
                  backend_messages=None):
    """wsguard fails the connection with code: a close frame with that code,
    no data frame before it, the TCP connection closed by wsguard, the
    backend told with a close frame (or, with allow_backend_drop, its TCP
    dropped: 1006) and the backend got exactly backend_messages (default:
    none) - never the invalid one."""
    res = ws.expect_close(CLOSE_T)
    data = [f for f in ws.skipped if f.opcode not in (OP_PING, OP_PONG)]
    assert not data, "frames before the close: %r" % (data,)
    assert res.code == code, "close code %r (%r), expected %d" % (res.code, res.reason, code)
    assert res.tcp_closed, "wsguard did not close the TCP connection after the close handshake"
    closes = env.wait_backend_close()
    assert closes, "the backend connection was not closed"
    ok = {code, 1006} if allow_backend_drop else {code}
    assert closes[-1].get("code") in ok, \
        "backend saw close %r, expected %s" % (closes[-1].get("code"), sorted(ok))
    assert env.messages() == (backend_messages or []), \
        "backend received %r" % (env.messages(),)


def close_echoed(ws, code, reason=""):
    """We sent a close: the backend's echo (same code/reason) comes back
    through wsguard, then wsguard closes the TCP connection."""
    res = ws.expect_close(CLOSE_T)
    data = [f for f in ws.skipped if f.opcode not in (OP_PING, OP_PONG)]
    assert not data, "frames before the close echo: %r" % (data,)
    assert (res.code, res.reason) == (code, reason)
    assert res.tcp_closed, "wsguard did not close the TCP connection"


def text_payload(n):
    """n bytes of ASCII text."""
    base = b"The quick brown fox jumps over the lazy dog 0123456789. "
    return (base * (n // len(base) + 1))[:n]


def bin_payload(n):
    return os.urandom(n)


LENGTHS = [0, 125, 126, 127, 128, 65535, 65536, 1 << 20]
SMALL = [0, 125, 126, 127, 128]


# -- 1.x framing ------------------------------------------------------------

@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_1_echo(ws, opcode, n):
    data = text_payload(n) if opcode == OP_TEXT else bin_payload(n)
    ws.send_frame(opcode, data)
    echo(ws, opcode, data)


@pytest.mark.parametrize("n", SMALL)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_1_echo_chunks_of_1(ws, opcode, n):
    data = text_payload(n) if opcode == OP_TEXT else bin_payload(n)
    ws.send_chunked(rawws.build_frame(opcode, data), 1)
    echo(ws, opcode, data)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_1_echo_chunks_of_997(ws, opcode, n):
    data = text_payload(n) if opcode == OP_TEXT else bin_payload(n)
    ws.send_chunked(rawws.build_frame(opcode, data), 997)
    echo(ws, opcode, data)


def test_1_header_split_every_byte(ws):
    # the 64-bit length form with its header cut into 1-byte writes, then
    # the payload in one write
    data = bin_payload(70000)
    frame = rawws.build_frame(OP_BINARY, data)
    ws.send_chunked(frame[:14], 1)
    ws.send_raw(frame[14:])
    echo(ws, OP_BINARY, data)


def test_1_many_messages_one_write(ws):
    msgs = [text_payload(i * 37) for i in range(20)]
    ws.send_raw(b"".join(rawws.build_frame(OP_TEXT, m) for m in msgs))
    for m in msgs:
        echo(ws, OP_TEXT, m)


# -- 2.x ping / pong --------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"", b"Hello, world!", b"*" * 125, bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF]),
], ids=["empty", "text", "125", "binary"])
def test_2_ping_pong(ws, payload):
    ws.send_frame(OP_PING, payload)
    expect_pong(ws, payload)


def test_2_ping_125_chunks_of_1(ws):
    payload = bytes(range(125))
    ws.send_chunked(rawws.build_frame(OP_PING, payload), 1)
    expect_pong(ws, payload)


def test_2_ping_126_fails(env, ws):
    ws.send_frame(OP_PING, b"*" * 126)
    assert_failed(env, ws, PROTOCOL)


def test_2_unsolicited_pong_ignored(ws):
    ws.send_frame(OP_PONG, b"unsolicited pong payload")
    ws.send_frame(OP_PING, b"ping after pong")
    # the first frame back is the pong for our ping: the pong went nowhere
    f = ws.recv_frame(5.0)
    assert (f.opcode, f.payload) == (OP_PONG, b"ping after pong")
    assert_quiet(ws)


def test_2_unsolicited_empty_pong_ignored(ws):
    ws.send_frame(OP_PONG, b"")
    ws.send_frame(OP_TEXT, b"after pong")
    f = ws.recv_frame(5.0)
    assert (f.opcode, f.payload) == (OP_TEXT, b"after pong")


def test_2_ten_pings_ten_pongs_in_order(ws):
    payloads = [("payload-%d" % i).encode() for i in range(10)]
    for p in payloads:
        ws.send_frame(OP_PING, p)
    for p in payloads:
        expect_pong(ws, p)
    assert_quiet(ws)


def test_2_ten_pings_one_write_chunks_of_1(ws):
    payloads = [("payload-%d" % i).encode() for i in range(10)]
    ws.send_chunked(b"".join(rawws.build_frame(OP_PING, p) for p in payloads), 1)
    for p in payloads:
        expect_pong(ws, p)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["ping", "pong"])
def test_2_fragmented_control_fails(env, ws, opcode):
    ws.send_frame(opcode, b"frag", fin=False)
    assert_failed(env, ws, PROTOCOL)


# -- 3.x reserved bits ------------------------------------------------------

RSV_CASES = [(OP_TEXT, b"Hello, world!"), (OP_BINARY, bytes(range(16))),
             (OP_PING, b"ping"), (OP_PONG, b"pong"), (OP_CLOSE, struct.pack("!H", 1000))]


@pytest.mark.parametrize("rsv", range(1, 8), ids=lambda r: "rsv%d" % r)
@pytest.mark.parametrize("opcode,payload", RSV_CASES,
                         ids=["text", "binary", "ping", "pong", "close"])
def test_3_rsv_fails(env, ws, opcode, payload, rsv):
    ws.send_frame(opcode, payload, rsv=rsv)
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("rsv", [4, 2, 1])
def test_3_rsv_after_valid_echo(env, ws, rsv):
    ws.send_frame(OP_TEXT, b"Hello, world!")
    echo(ws, OP_TEXT, b"Hello, world!")
    ws.send_frame(OP_TEXT, b"Hello, world!!", rsv=rsv)
    ws.send_frame(OP_PING, b"not answered")
    assert_failed(env, ws, PROTOCOL, backend_messages=[("text", 13)])


@pytest.mark.parametrize("chunk", [None, 1], ids=["one-write", "chunks_of_1"])
def test_3_rsv_in_one_write_with_valid(env, ws, chunk):
    # valid text, RSV frame and ping back to back (Autobahn 3.3 / 3.4): the
    # connection fails with 1002, no pong; the first echo may or may not
    # make it (Autobahn: NON-STRICT; a proxy cannot wait for the backend's
    # echo) but nothing else may come
    raw = (rawws.build_frame(OP_TEXT, b"Hello, world!")
           + rawws.build_frame(OP_TEXT, b"Hello, world!!", rsv=2)
           + rawws.build_frame(OP_PING, b"not answered"))
    if chunk:
        ws.send_chunked(raw, chunk)
    else:
        ws.send_raw(raw)
    res = ws.expect_close(CLOSE_T)
    assert res.code == PROTOCOL
    assert res.tcp_closed
    data = [(f.opcode, f.payload) for f in ws.skipped]
    assert data in ([], [(OP_TEXT, b"Hello, world!")]), data
    env.wait_backend_close()
    assert ("text", 14) not in env.messages()


def test_3_rsv_on_continuation(env, ws):
    ws.send_frame(OP_TEXT, b"frag1", fin=False)
    ws.send_frame(OP_CONT, b"frag2", rsv=4)
    assert_failed(env, ws, PROTOCOL)


def test_3_rsv_chunks_of_1(env, ws):
    ws.send_chunked(rawws.build_frame(OP_BINARY, b"\x00\x01\x02", rsv=4), 1)
    assert_failed(env, ws, PROTOCOL)


# -- 4.x opcodes ------------------------------------------------------------

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF],
                         ids=lambda o: "op%X" % o)
@pytest.mark.parametrize("payload", [b"", b"reserved opcode payload"], ids=["empty", "payload"])
def test_4_reserved_opcode_fails(env, ws, opcode, payload):
    ws.send_frame(opcode, payload)
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("opcode", [5, 0xD], ids=["op5", "opD"])
def test_4_reserved_opcode_after_valid_echo(env, ws, opcode):
    ws.send_frame(OP_TEXT, b"Hello, world!")
    echo(ws, OP_TEXT, b"Hello, world!")
    ws.send_frame(opcode, b"reserved")
    ws.send_frame(OP_PING, b"not answered")
    assert_failed(env, ws, PROTOCOL, backend_messages=[("text", 13)])


# -- 5.x fragmentation ------------------------------------------------------

def fragments(data, n):
    """Split data into n parts (the last ones may be empty)."""
    size = max(1, -(-len(data) // n)) if data else 0
    return [data[i * size:(i + 1) * size] for i in range(n)]


def send_fragmented(ws, opcode, parts, ping_after=()):
    """Send parts as one message; a ping "ping-<i>" after part i for each i
    in ping_after."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        ws.send_frame(opcode if i == 0 else OP_CONT, part, fin=last)
        if i in ping_after:
            ws.send_frame(OP_PING, ("ping-%d" % i).encode())


@pytest.mark.parametrize("nfrag", [2, 3, 5, 16, 100])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_5_fragmented_echo(ws, opcode, nfrag):
    data = text_payload(1000) if opcode == OP_TEXT else bin_payload(1000)
    send_fragmented(ws, opcode, fragments(data, nfrag))
    echo(ws, opcode, data)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_5_fragmented_chunks_of_1(ws, opcode):
    data = text_payload(40) if opcode == OP_TEXT else bin_payload(40)
    parts = fragments(data, 4)
    raw = b"".join(rawws.build_frame(opcode if i == 0 else OP_CONT, p, fin=i == 3)
                   for i, p in enumerate(parts))
    ws.send_chunked(raw, 1)
    echo(ws, opcode, data)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_5_ping_between_fragments(ws, opcode):
    data = b"fragment1fragment2"
    send_fragmented(ws, opcode, [data[:9], data[9:]], ping_after=(0,))
    expect_pong(ws, b"ping-0")
    echo(ws, opcode, data)


def test_5_pings_between_many_fragments_in_order(ws):
    data = text_payload(500)
    parts = fragments(data, 5)
    send_fragmented(ws, OP_TEXT, parts, ping_after=(0, 1, 2, 3))
    for i in range(4):
        expect_pong(ws, ("ping-%d" % i).encode())
    echo(ws, OP_TEXT, data)


def test_5_ping_between_fragments_one_write_chunks_of_1(ws):
    raw = (rawws.build_frame(OP_TEXT, b"fragment1", fin=False)
           + rawws.build_frame(OP_PING, b"ping")
           + rawws.build_frame(OP_CONT, b"fragment2", fin=True))
    ws.send_chunked(raw, 1)
    expect_pong(ws, b"ping")
    echo(ws, OP_TEXT, b"fragment1fragment2")


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_5_one_byte_fragments_of_64(ws, opcode):
    data = text_payload(64) if opcode == OP_TEXT else bin_payload(64)
    send_fragmented(ws, opcode, [data[i:i + 1] for i in range(64)])
    echo(ws, opcode, data)


def test_5_empty_fragments(ws):
    # Autobahn 6.1.2 / 6.1.3: empty fragments make an empty or short message
    send_fragmented(ws, OP_TEXT, [b"", b"", b""])
    echo(ws, OP_TEXT, b"")
    send_fragmented(ws, OP_TEXT, [b"", b"middle", b""])
    echo(ws, OP_TEXT, b"middle")


@pytest.mark.parametrize("fin", [True, False], ids=["fin", "nofin"])
def test_5_continuation_without_start_fails(env, ws, fin):
    ws.send_frame(OP_CONT, b"non-continuation payload", fin=fin)
    ws.send_frame(OP_TEXT, b"Hello, world!")
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("chunked", [False, True], ids=["frames", "chunks_of_1"])
def test_5_continuation_without_start_then_fragments_fails(env, ws, chunked):
    # Autobahn 5.11-5.14: fragments of a message that was never started
    raw = (rawws.build_frame(OP_CONT, b"fragment1", fin=False)
           + rawws.build_frame(OP_TEXT, b"fragment2", fin=True)
           + rawws.build_frame(OP_CONT, b"fragment3", fin=True))
    if chunked:
        ws.send_chunked(raw, 1)
    else:
        ws.send_raw(raw)
    assert_failed(env, ws, PROTOCOL)


def test_5_continuation_after_finished_message_fails(env, ws):
    # Autobahn 5.15: the message is echoed, the stray continuation fails
    ws.send_frame(OP_TEXT, b"fragment1", fin=False)
    ws.send_frame(OP_CONT, b"fragment2", fin=True)
    echo(ws, OP_TEXT, b"fragment1fragment2")
    ws.send_frame(OP_CONT, b"fragment3", fin=False)
    ws.send_frame(OP_TEXT, b"fragment4", fin=True)
    assert_failed(env, ws, PROTOCOL, backend_messages=[("text", 18)])


@pytest.mark.parametrize("new_opcode,new_fin", [
    (OP_TEXT, True), (OP_TEXT, False), (OP_BINARY, True), (OP_BINARY, False)],
    ids=["text-fin", "text-nofin", "binary-fin", "binary-nofin"])
def test_5_new_message_inside_fragmented_fails(env, ws, new_opcode, new_fin):
    ws.send_frame(OP_TEXT, b"fragment1", fin=False)
    ws.send_frame(new_opcode, b"fragment2", fin=new_fin)
    ws.send_frame(OP_CONT, b"fragment3", fin=True)
    # fragment1 may already be on its way to the backend: it gets a close
    # frame (a whole frame was forwarded) - never a message
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE], ids=["ping", "pong", "close"])
def test_5_fragmented_control_fails(env, ws, opcode):
    payload = struct.pack("!H", 1000) if opcode == OP_CLOSE else b"fragment1"
    ws.send_frame(opcode, payload, fin=False)
    ws.send_frame(OP_CONT, b"fragment2", fin=True)
    assert_failed(env, ws, PROTOCOL)


def test_5_fragmented_control_inside_message_fails(env, ws):
    ws.send_frame(OP_TEXT, b"fragment1", fin=False)
    ws.send_frame(OP_PING, b"ping1", fin=False)
    ws.send_frame(OP_CONT, b"ping2", fin=True)
    assert_failed(env, ws, PROTOCOL)


# -- 6.x UTF-8 --------------------------------------------------------------

VALID_UTF8 = {
    "kosme": bytes.fromhex("cebae1bdb9cf83cebcceb5"),   # Autobahn's κόσμε
    "U+0000": b"\x00",
    "U+007F": "\u007f".encode(),
    "U+0080": "\u0080".encode(),
    "U+07FF": "\u07ff".encode(),
    "U+0800": "\u0800".encode(),
    "U+D7FF": "\ud7ff".encode(),
    "U+E000": "\ue000".encode(),
    "U+FFFD": "\ufffd".encode(),
    "U+FFFE-nonchar": "\ufffe".encode(),
    "U+FDD0-nonchar": "\ufdd0".encode(),
    "U+1FFFF-nonchar": "\U0001ffff".encode(),
    "U+10FFFE-nonchar": "\U0010fffe".encode(),
    "U+FFFF": "\uffff".encode(),
    "U+10000": "\U00010000".encode(),
    "U+10FFFF": "\U0010ffff".encode(),
    "mixed": ("Hello-µ@ßöäüàá-UTF-8!! \U0001f600 " "κόσμε \u0800\uffff\U0010ffff").encode(),
}

INVALID_UTF8 = {
    "kosme-surrogate": bytes.fromhex("cebae1bdb9cf83cebcceb5eda080656469746564"),
    "overlong-2-C0AF": b"\xc0\xaf",
    "overlong-2-C1BF": b"\xc1\xbf",
    "overlong-3-E080AF": b"\xe0\x80\xaf",
    "overlong-3-E09FBF": b"\xe0\x9f\xbf",
    "overlong-4-F08080AF": b"\xf0\x80\x80\xaf",
    "overlong-4-F08FBFBF": b"\xf0\x8f\xbf\xbf",
    "overlong-NUL-C080": b"\xc0\x80",
    "surrogate-EDA080": b"\xed\xa0\x80",
    "surrogate-EDBFBF": b"\xed\xbf\xbf",
    "surrogate-pair": b"\xed\xa0\x80\xed\xb0\x80",
    "above-10FFFF-F4908080": b"\xf4\x90\x80\x80",
    "F5": b"\xf5\x80\x80\x80",
    "5-byte-F888808080": b"\xf8\x88\x80\x80\x80",
    "FE": b"\xfe",
    "FF": b"\xff",
    "lone-continuation-80": b"\x80",
    "lone-continuation-BF": b"\xbf",
    "continuations-after-ascii": b"abc\x80\x80def",
    "missing-continuation": b"\xce\x41",
    "truncated-2": b"hello \xce",
    "truncated-3": b"hello \xe0\xa0",
    "truncated-4": b"hello \xf0\x90\x80",
    "F7BFBFBF-U+1FFFFF": b"\xf7\xbf\xbf\xbf",
    "FBBFBFBFBF": b"\xfb\xbf\xbf\xbf\xbf",
    "FDBFBFBFBFBF": b"\xfd\xbf\xbf\xbf\xbf\xbf",
    "lonely-starts-C0-DF": bytes(x for c in range(0xC0, 0xE0) for x in (c, 0x20)),
    "lonely-starts-E0-EF": bytes(x for c in range(0xE0, 0xF0) for x in (c, 0x20)),
    "lonely-starts-F0-F7": bytes(x for c in range(0xF0, 0xF8) for x in (c, 0x20)),
    "all-continuations": bytes(range(0x80, 0xC0)),
    "last-byte-missing-concat": b"\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf\xf7\xbf\xbf",
    "FEFEFFFF": b"\xfe\xfe\xff\xff",
    "overlong-max-C1BF-E09FBF": b"\xe0\x9f\xbf",
    "overlong-max-F08FBFBF": b"\xf0\x8f\xbf\xbf",
    "surrogate-EDAFBF": b"\xed\xaf\xbf",
    "surrogate-EDB080": b"\xed\xb0\x80",
    "surrogate-pair-EDAFBFEDBFBF": b"\xed\xaf\xbf\xed\xbf\xbf",
}

# the vectors agree with a strict decoder (an RFC 3629 oracle)
for _k, _v in VALID_UTF8.items():
    _v.decode("utf-8")
for _k, _v in INVALID_UTF8.items():
    try:
        _v.decode("utf-8")
        raise AssertionError("vector %s is valid UTF-8" % _k)
    except UnicodeDecodeError:
        pass


@pytest.mark.parametrize("name", list(VALID_UTF8))
def test_6_valid_utf8_echo(ws, name):
    data = VALID_UTF8[name]
    ws.send_frame(OP_TEXT, data)
    echo(ws, OP_TEXT, data)


@pytest.mark.parametrize("name", list(VALID_UTF8))
def test_6_valid_utf8_fragmented_at_every_byte(ws, name):
    # one message per split position (2 fragments), each echoed whole
    data = VALID_UTF8[name]
    for cut in range(1, len(data)):
        send_fragmented(ws, OP_TEXT, [data[:cut], data[cut:]])
        echo(ws, OP_TEXT, data)


@pytest.mark.parametrize("name", ["kosme", "U+10FFFF", "mixed"])
def test_6_valid_utf8_one_byte_fragments(ws, name):
    data = VALID_UTF8[name]
    send_fragmented(ws, OP_TEXT, [data[i:i + 1] for i in range(len(data))])
    echo(ws, OP_TEXT, data)


@pytest.mark.parametrize("name", ["kosme", "mixed"])
def test_6_valid_utf8_chunks_of_1(ws, name):
    data = VALID_UTF8[name]
    ws.send_chunked(rawws.build_frame(OP_TEXT, data), 1)
    echo(ws, OP_TEXT, data)


@pytest.mark.parametrize("name", list(INVALID_UTF8))
def test_6_invalid_utf8_fails(env, ws, name):
    ws.send_frame(OP_TEXT, INVALID_UTF8[name])
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)


@pytest.mark.parametrize("name", ["kosme-surrogate", "overlong-3-E080AF", "above-10FFFF-F4908080",
                                  "truncated-4"])
def test_6_invalid_utf8_chunks_of_1(env, ws, name):
    ws.send_chunked(rawws.build_frame(OP_TEXT, INVALID_UTF8[name]), 1)
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)


@pytest.mark.parametrize("name", ["kosme-surrogate", "surrogate-EDA080", "above-10FFFF-F4908080",
                                  "overlong-4-F08080AF"])
def test_6_invalid_utf8_fragmented_every_byte(env, ws, name):
    # the message split into 1-byte fragments: fails, whichever fragment
    # makes it invalid
    data = INVALID_UTF8[name]
    send_fragmented(ws, OP_TEXT, [data[i:i + 1] for i in range(len(data))])
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)


KOSME = bytes.fromhex("cebae1bdb9cf83cebcceb5")


@pytest.mark.parametrize("n", range(1, len(KOSME) + 1))
def test_6_kosme_prefixes(env, ws, n):
    # Autobahn 6.6.x: every prefix of κόσμε as one message; a prefix that
    # ends inside a character is invalid
    data = KOSME[:n]
    ws.send_frame(OP_TEXT, data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)
    else:
        echo(ws, OP_TEXT, data)


def test_6_invalid_utf8_in_second_fragment(env, ws):
    ws.send_frame(OP_TEXT, b"Hello-\xce\xba", fin=False)
    ws.send_frame(OP_CONT, b"\xed\xa0\x80-world", fin=True)
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)


def test_6_truncated_at_end_of_fragmented_message(env, ws):
    # every fragment is a valid prefix; the message ends inside a code point
    ws.send_frame(OP_TEXT, b"Hello-", fin=False)
    ws.send_frame(OP_CONT, b"\xf0\x90", fin=False)
    ws.send_frame(OP_CONT, b"\x80", fin=True)
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True)


def test_6_invalid_after_valid_echo(env, ws):
    good = VALID_UTF8["kosme"]
    ws.send_frame(OP_TEXT, good)
    echo(ws, OP_TEXT, good)
    ws.send_frame(OP_TEXT, b"\xce\xba\xc0\xaf")
    assert_failed(env, ws, INVALID_DATA, allow_backend_drop=True,
                  backend_messages=[("text", len(good))])


@pytest.mark.parametrize("announced", [1000, 1 << 20], ids=["1000", "1MiB"])
def test_6_fail_fast_on_invalid_utf8(env, ws, announced):
    # Autobahn 6.4.x: a text frame announces more payload than is sent; the
    # part sent is already invalid. wsguard must fail at once (1007) and not
    # wait for the rest, which never comes.
    part = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited"
    ws.send_frame(OP_TEXT, part, length_override=announced)
    # The rest is never sent: waiting for it, wsguard would stay silent
    # until idle_timeout (5 minutes), so any close frame here is the
    # fail-fast one; the wait is generous for a busy machine.
    f = ws.recv_frame(ECHO_T)
    assert f.opcode == OP_CLOSE, "expected a close frame, got %r" % (f,)
    assert rawws.RawWS.parse_close(f.payload)[0] == INVALID_DATA
    # we are still inside our own frame, so our close reply would be payload:
    # wsguard closes the TCP connection without waiting for it
    assert ws.is_closed(CLOSE_T), "wsguard did not close the TCP connection"
    env.wait_backend_close()
    assert env.messages() == []


@pytest.mark.parametrize("first,second", [
    (b"Hello-", b"world-\xed\xa0\x80"),
    (KOSME + b"\xf4", b"\x90\x80\x80"),           # Autobahn 6.4.2: F4 | 90 ..
    (KOSME, b"\xf4\x90\x80\x80"),                 # Autobahn 6.4.1
], ids=["surrogate", "F4-split", "F4908080"])
def test_6_fail_fast_in_second_fragment(env, ws, first, second):
    # the first fragment is valid (and may be relayed), the second announces
    # more than is sent and is invalid early: 1007 at once
    ws.send_frame(OP_TEXT, first, fin=False)
    ws.send_frame(OP_CONT, second, fin=True, length_override=500)
    f = ws.recv_frame(1.5)
    assert f.opcode == OP_CLOSE, "expected a close frame, got %r" % (f,)
    assert rawws.RawWS.parse_close(f.payload)[0] == INVALID_DATA
    assert ws.is_closed(CLOSE_T), "wsguard did not close the TCP connection"
    env.wait_backend_close()
    assert env.messages() == []


# -- 7.x close --------------------------------------------------------------

def test_7_echo_then_close(ws):
    ws.send_frame(OP_TEXT, b"Hello World!")
    echo(ws, OP_TEXT, b"Hello World!")
    ws.send_close(1000)
    close_echoed(ws, 1000)


def test_7_close_empty(env, ws):
    ws.send_close(None)
    close_echoed(ws, None)
    closes = env.wait_backend_close()
    assert closes and closes[-1].get("code") == 1005   # backend saw "no status"


def test_7_close_1000_with_reason(ws):
    ws.send_close(1000, "Hello World!")
    close_echoed(ws, 1000, "Hello World!")


def test_7_close_reason_utf8(ws):
    ws.send_close(1000, "κόσμε \U0010ffff")
    close_echoed(ws, 1000, "κόσμε \U0010ffff")


def test_7_close_125_bytes(ws):
    reason = "*" * 123
    ws.send_close(1000, reason)
    close_echoed(ws, 1000, reason)


def test_7_close_chunks_of_1(ws):
    ws.send_chunked(rawws.build_frame(OP_CLOSE, rawws.close_payload(1000, "chunked")), 1)
    close_echoed(ws, 1000, "chunked")


def test_7_close_1_byte_fails(env, ws):
    ws.send_frame(OP_CLOSE, b"\x03")
    assert_failed(env, ws, PROTOCOL)


def test_7_close_126_bytes_fails(env, ws):
    ws.send_frame(OP_CLOSE, rawws.close_payload(1000, "*" * 124))
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  3000, 3999, 4000, 4999])
def test_7_valid_close_code_echoed(ws, code):
    ws.send_close(code, "code %d" % code)
    close_echoed(ws, code, "code %d" % code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                                  5000, 65535])
def test_7_invalid_close_code_fails(env, ws, code):
    ws.send_close(code)
    assert_failed(env, ws, PROTOCOL)


@pytest.mark.parametrize("reason", [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
                                    b"\xc0\xaf", b"\xff", b"abc\xce"],
                         ids=["kosme-surrogate", "overlong", "FF", "truncated"])
def test_7_close_reason_invalid_utf8_fails(env, ws, reason):
    ws.send_frame(OP_CLOSE, struct.pack("!H", 1000) + reason)
    assert_failed(env, ws, INVALID_DATA)


def test_7_close_twice(ws):
    # One write: see test_7_frames_after_close_not_answered.
    close = rawws.build_frame(OP_CLOSE, rawws.close_payload(1000))
    ws.send_raw(close + close)
    ws.close_sent = True
    close_echoed(ws, 1000)


@pytest.mark.parametrize("after", ["text", "ping", "binary-fragment"])
def test_7_frames_after_close_not_answered(env, ws, after):
    # The close and what follows it go in one write: once wsguard has
    # completed the close handshake it may shut the connection, and a
    # later write of ours would then fail (a race, not a finding).
    raw = rawws.build_frame(OP_CLOSE, rawws.close_payload(1000))
    if after == "text":
        raw += rawws.build_frame(OP_TEXT, b"Hello World!")
    elif after == "ping":
        raw += rawws.build_frame(OP_PING, b"Hello World!")
    else:
        raw += rawws.build_frame(OP_BINARY, b"Hello", fin=False)
        raw += rawws.build_frame(OP_CONT, b"World!")
    ws.send_raw(raw)
    ws.close_sent = True
    res = ws.expect_close(CLOSE_T)
    assert res.code == 1000
    assert ws.skipped == [], "answered after the close: %r" % (ws.skipped,)
    assert res.tcp_closed
    env.wait_backend_close()
    assert env.messages() == []


def test_7_close_inside_fragmented_message(env, ws):
    # Autobahn 7.1.5: fragment, close, the rest: only the close comes back
    # One write, for the reason given in the test above.
    ws.send_raw(rawws.build_frame(OP_TEXT, b"fragment1", fin=False) +
                rawws.build_frame(OP_CLOSE, rawws.close_payload(1000)) +
                rawws.build_frame(OP_CONT, b"fragment2", fin=True))
    ws.close_sent = True
    res = ws.expect_close(CLOSE_T)
    assert res.code == 1000
    assert ws.skipped == []
    assert res.tcp_closed
    env.wait_backend_close()
    assert env.messages() == []


def big_then_close(env, ws, opcode, data, chunk=None, reason=""):
    raw = rawws.build_frame(opcode, data) + rawws.build_frame(
        OP_CLOSE, rawws.close_payload(1000, reason))
    if chunk:
        ws.send_chunked(raw, chunk)
    else:
        ws.send_raw(raw)
    ws.close_sent = True
    # wsguard relays the whole message, then the close, in order: the
    # backend saw the message intact before the close
    kind = "text" if opcode == OP_TEXT else "binary"
    env.backend.wait_record(lambda r: r.get("event") == "message", timeout=ECHO_T)
    msgs = [r for r in env.records() if r.get("event") == "message"]
    assert [(r["type"], r["len"], r["sha256"]) for r in msgs] == [
        (kind, len(data), hashlib.sha256(data).hexdigest())]
    res = ws.expect_close(CLOSE_T)
    assert (res.code, res.reason) == (1000, reason)
    assert res.tcp_closed
    # Whether the echo comes back is the backend's choice (Autobahn 7.1.6 is
    # informational): python3-websockets answers the close first and then
    # cannot send the echo. Whatever arrives before the close must be the
    # message, whole - never a part of it.
    got = [(f.fin, f.opcode, f.payload) for f in ws.skipped]
    assert got in ([], [(True, opcode, data)]), \
        "frames before the close: %r" % ([(f.fin, f.opcode, len(f.payload)) for f in ws.skipped],)


def test_7_big_message_then_close(env, ws):
    # Autobahn 7.1.6: 256 KiB then a close in one write
    big_then_close(env, ws, OP_BINARY, bin_payload(256 * 1024))


def test_7_big_text_then_close_chunks_of_997(env, ws):
    big_then_close(env, ws, OP_TEXT, text_payload(256 * 1024), chunk=997, reason="done")


def test_7_big_message_echoed_then_close(env, ws):
    # the same message, close sent once its echo is back: echo, then close
    data = bin_payload(256 * 1024)
    ws.send_frame(OP_BINARY, data)
    echo(ws, OP_BINARY, data)
    ws.send_close(1000)
    close_echoed(ws, 1000)
    assert env.messages() == [("binary", 256 * 1024)]


# -- prompt TCP close after failing ---------------------------------------
#
# RFC 6455 §7.1.7: after _Fail the WebSocket Connection_ the endpoint MUST
# NOT go on processing data from the peer, "including a responding Close
# frame", and closes the connection (§7.1.1: the server closes TCP first).
# When the client has already sent its (invalid) close frame, or is still
# inside a frame it will never finish, no close reply can ever come: wsguard
# must close the TCP connection once its close frame is out, not after
# close_timeout (5s by default; an Autobahn client gives up after 1s and
# records the connection as not cleanly dropped by the server). These
# tests give wsguard a close_timeout of a minute, so that "at once" and
# "after close_timeout" stay far apart whatever the machine's load.

PROMPT_T = 15.0     # far below close_timeout = 60s


@pytest.fixture
def prompt_ws(backend_factory, wsguard_factory, client_ssl):
    be = backend_factory()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="60s",
                         LIMITS_MAX_PAYLOAD="16m")
    c = Env(be, px, client_ssl).connect()
    yield c
    c.close()


def assert_failed_promptly(ws, code):
    f = ws.recv_frame(CLOSE_T)
    assert f.opcode == OP_CLOSE, "expected a close frame, got %r" % (f,)
    assert rawws.RawWS.parse_close(f.payload)[0] == code
    t0 = time.monotonic()
    closed = ws.is_closed(PROMPT_T + 5)
    took = time.monotonic() - t0
    assert closed, "wsguard did not close the TCP connection"
    assert took < PROMPT_T, (
        "wsguard closed the TCP connection %.2fs after its close frame: it "
        "waited for a close reply that cannot come" % took)


@pytest.mark.parametrize("payload", [b"\x03", struct.pack("!H", 1005),
                                     struct.pack("!H", 999), struct.pack("!H", 1000) + b"\xff"],
                         ids=["1-byte", "1005", "999", "bad-utf8-reason"])
def test_7_invalid_close_then_prompt_tcp_close(prompt_ws, payload):
    # the client's close was its last frame (RFC 6455 §5.5.1)
    prompt_ws.send_frame(OP_CLOSE, payload)
    code = INVALID_DATA if payload.endswith(b"\xff") else PROTOCOL
    assert_failed_promptly(prompt_ws, code)


def test_6_fail_fast_then_prompt_tcp_close(prompt_ws):
    # the client is inside a frame it never finishes: no close can follow
    prompt_ws.send_frame(OP_TEXT, b"abc\xed\xa0\x80", length_override=5000)
    assert_failed_promptly(prompt_ws, INVALID_DATA)


def test_10_unmasked_close_then_prompt_tcp_close(prompt_ws):
    prompt_ws.send_frame(OP_CLOSE, struct.pack("!H", 1000), mask=False)
    assert_failed_promptly(prompt_ws, PROTOCOL)


# -- what exactly reaches the backend -------------------------------------
#
# python3-websockets validates too, so the echo backend alone cannot show
# whether wsguard relayed an invalid message (the backend would reject it
# itself). RawBackend is a non-validating backend: it completes the upgrade
# and records every frame it receives until the connection ends.

class RawBackend:
    def __init__(self):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.url = "ws://127.0.0.1:%d" % self.port
        self.frames = []
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.lsock.settimeout(20)
            conn, _ = self.lsock.accept()
            conn.settimeout(20)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            key = None
            for line in head.decode("latin-1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "sec-websocket-key":
                    key = v.strip()
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                          % rawws.accept_key(key)).encode())
            ws = rawws.RawWS(conn, rest)
            while True:
                try:
                    f = ws.recv_frame(20)
                except rawws.WSError:
                    break
                self.frames.append(f)
                if f.opcode == OP_CLOSE:
                    try:
                        ws.send_frame(OP_CLOSE, f.payload, mask=False)
                    except OSError:
                        pass
                    ws.is_closed(3)
                    break
            conn.close()
        except Exception as e:          # reported by the test
            self.error = e
        finally:
            self.done.set()
            self.lsock.close()

    def wait(self, timeout=BACKEND_T):
        assert self.done.wait(timeout), "the backend connection did not end"
        assert self.error is None, self.error
        return self.frames


def assert_no_invalid_text_relayed(frames):
    """Every text byte the backend got is a valid UTF-8 prefix, and no
    message it got complete is invalid."""
    dec = None
    for f in frames:
        if f.opcode == OP_TEXT:
            dec = codecs.getincrementaldecoder("utf-8")()
        elif f.opcode != OP_CONT or dec is None:
            continue
        try:
            dec.decode(f.payload, final=f.fin)
        except UnicodeDecodeError as e:
            pytest.fail("wsguard relayed invalid UTF-8 to the backend: %s (frames %r)"
                        % (e, frames))
        if f.fin:
            dec = None


INVALID_RELAY_CASES = {
    "single-frame-surrogate": [(OP_TEXT, b"Hello-\xed\xa0\x80", True)],
    "single-frame-truncated": [(OP_TEXT, b"Hello-\xf0\x90\x80", True)],
    "truncated-final-fragment": [(OP_TEXT, b"Hello-", False), (OP_CONT, b"\xf0\x90", False),
                                 (OP_CONT, b"\x80", True)],
    "truncated-empty-final": [(OP_TEXT, b"Hello-\xce", False), (OP_CONT, b"", True)],
    "second-fragment-invalid": [(OP_TEXT, b"Hello-", False), (OP_CONT, b"\xc0\xaf", True)],
}


@pytest.mark.parametrize("name", list(INVALID_RELAY_CASES))
def test_6_invalid_utf8_never_reaches_backend(wsguard_factory, client_ssl, name):
    be = RawBackend()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="2s", LIMITS_MAX_PAYLOAD="16m")
    ws = rawws.connect(px.host, px.port, client_ssl, server_hostname="localhost")
    try:
        for opcode, payload, fin in INVALID_RELAY_CASES[name]:
            ws.send_frame(opcode, payload, fin=fin)
        res = ws.expect_close(CLOSE_T)
        assert res.code == INVALID_DATA
        frames = be.wait()
        assert_no_invalid_text_relayed(frames)
        # told with a close 1007, or (a frame was cut) not told at all
        closes = [f for f in frames if f.opcode == OP_CLOSE]
        if closes:
            assert rawws.RawWS.parse_close(closes[0].payload)[0] == INVALID_DATA
    finally:
        ws.close()


def test_3_bad_frames_never_reach_backend(wsguard_factory, client_ssl):
    be = RawBackend()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="2s", LIMITS_MAX_PAYLOAD="16m")
    ws = rawws.connect(px.host, px.port, client_ssl, server_hostname="localhost")
    try:
        ws.send_frame(OP_BINARY, b"good")
        ws.send_frame(OP_BINARY, b"bad", rsv=4)
        res = ws.expect_close(CLOSE_T)
        assert res.code == PROTOCOL
        frames = be.wait()
        got = [(f.opcode, f.rsv, f.payload) for f in frames]
        # "good" was relayed before the bad header was seen; the bad frame
        # never; then wsguard's close 1002
        assert got[:1] == [(OP_BINARY, 0, b"good")], got
        assert len(got) == 2 and got[1][0] == OP_CLOSE, got
        assert rawws.RawWS.parse_close(got[1][2])[0] == PROTOCOL
    finally:
        ws.close()


# -- 9.x / 10.x -------------------------------------------------------------

@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_10_64k_in_1300_byte_fragments(ws, opcode):
    # Autobahn 10.1.1 (autoFragmentSize = 1300)
    data = text_payload(65536) if opcode == OP_TEXT else bin_payload(65536)
    parts = [data[i:i + 1300] for i in range(0, len(data), 1300)]
    send_fragmented(ws, opcode, parts)
    echo(ws, opcode, data)


def test_9_many_messages_in_a_row(ws):
    msgs = [bin_payload(4096) for _ in range(100)]
    for m in msgs:
        ws.send_frame(OP_BINARY, m)
    for m in msgs:
        echo(ws, OP_BINARY, m)


@pytest.mark.parametrize("opcode,payload", [(OP_TEXT, b"Hello, world!"),
                                            (OP_BINARY, b"\x00\x01"),
                                            (OP_PING, b"ping"),
                                            (OP_CLOSE, struct.pack("!H", 1000))],
                         ids=["text", "binary", "ping", "close"])
def test_10_unmasked_client_frame_fails(env, ws, opcode, payload):
    ws.send_frame(opcode, payload, mask=False)
    assert_failed(env, ws, PROTOCOL)


def test_10_zero_masking_key_is_fine(ws):
    ws.send_frame(OP_TEXT, b"zero key", masking_key=b"\x00\x00\x00\x00")
    echo(ws, OP_TEXT, b"zero key")


def test_10_non_minimal_length_fails(env, ws):
    # RFC 6455 5.2: the minimal number of bytes MUST be used for the length
    frame = bytes([0x81, 0x80 | 126]) + struct.pack("!H", 5) + b"\x00\x00\x00\x00" + b"hello"
    ws.send_raw(frame)
    assert_failed(env, ws, PROTOCOL)


def test_10_64bit_length_top_bit_fails(env, ws):
    frame = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + b"\x00\x00\x00\x00"
    ws.send_raw(frame)
    res = ws.expect_close(CLOSE_T)
    # a length with the top bit set is a protocol error (and far above any
    # max_payload): 1002 or 1009 are both defensible, the connection must fail
    assert res.code in (PROTOCOL, 1009)
    assert res.tcp_closed


def test_10_message_over_max_payload_fails(backend_factory, wsguard_factory, client_ssl):
    be = backend_factory()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="2s", LIMITS_MAX_PAYLOAD="64k")
    env = Env(be, px, client_ssl)
    ws = env.connect()
    try:
        ok = bin_payload(65536)
        ws.send_frame(OP_BINARY, ok)
        echo(ws, OP_BINARY, ok)
        # announced too big: refused on the header, before any payload
        ws.send_frame(OP_BINARY, b"", length_override=65537)
        f = ws.recv_frame(1.5)
        assert f.opcode == OP_CLOSE
        assert rawws.RawWS.parse_close(f.payload)[0] == 1009
        assert ws.is_closed(CLOSE_T)
        env.wait_backend_close()
        assert env.messages() == [("binary", 65536)]
    finally:
        ws.close()


def test_10_fragmented_message_over_max_payload_fails(backend_factory, wsguard_factory,
                                                      client_ssl):
    be = backend_factory()
    px = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT="2s", LIMITS_MAX_PAYLOAD="64k")
    env = Env(be, px, client_ssl)
    ws = env.connect()
    try:
        ws.send_frame(OP_BINARY, bin_payload(40000), fin=False)
        ws.send_frame(OP_CONT, bin_payload(30000), fin=True)
        assert_failed(env, ws, 1009, allow_backend_drop=True)
    finally:
        ws.close()
