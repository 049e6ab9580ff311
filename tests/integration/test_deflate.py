"""permessage-deflate (RFC 7692) terminated at wsguard (issue 15).

The client leg negotiates the extension with wsguard; the backend leg
never does (it gets plain frames with RSV1 clear). Autobahn TestSuite
sections 12 and 13 (every parameter combination, fragmented compressed
messages, context takeover on and off) are written here as pytest cases,
since the suite itself is not installable on this system; the decompression
bomb, the ratio limit, invalid deflate data and RSV1 misuse are refused with
the documented close codes.

Real processes, real TLS: wsguard, the echo backend (python websockets
without compression: it fails any frame with RSV1 set) or the raw
recording backend of limitstools.py.
"""

import asyncio
import os
import random
import zlib

import pytest
import websockets
from websockets.extensions.permessage_deflate import \
    ClientPerMessageDeflateFactory

import rawws
from admintools import start_admin
from helpers import connect, run
from limitstools import OP_BINARY, OP_CONT, OP_TEXT

KiB = 1024
MiB = 1 << 20


def raw_client(wsg, headers=None):
    if headers is None:
        headers = {"Sec-WebSocket-Extensions": "permessage-deflate"}
    return rawws.connect(wsg.host, wsg.port, wsg.client_ssl, headers=headers)


def session_log(wsg, timeout=10):
    return wsg.wait_access(lambda r: r.get("event") == "session",
                           timeout=timeout)


def deflate_raw(data, wbits=15, level=6):
    """What a client sends for data (RFC 7692 §7.2.1): a raw DEFLATE
    stream, sync-flushed, without the final 00 00 ff ff."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def recv_pmd(ws, dec, timeout=10):
    """One data message from wsguard over a raw client, inflated with the
    decompressobj dec (kept across messages: context takeover) when RSV1
    is set on its first frame. Control frames are skipped."""
    frames = []
    while True:
        f = ws.recv_frame(timeout=timeout)
        if f.opcode & 0x8:
            continue
        frames.append(f)
        if f.fin:
            break
    data = b"".join(f.payload for f in frames)
    if frames[0].rsv == 4:
        data = dec.decompress(data + b"\x00\x00\xff\xff")
    return frames[0].opcode, data


def inflate_raw(data, wbits=15):
    d = zlib.decompressobj(-wbits)
    return d.decompress(data + b"\x00\x00\xff\xff")


def start(wsguard_factory, url, **overrides):
    """wsguard with its admin listener: (wsg, Admin)."""
    return start_admin(wsguard_factory, url, **overrides)


def sizes():
    return [0, 1, 2, 125, 126, 1000, 4 * KiB, 16 * KiB - 1, 16 * KiB + 1,
            65535, 65536, 200 * KiB, MiB]


def payload(n, kind, rnd):
    if kind == "text":
        words = ["alpha", "beta", "gamma", "delta", "\u00e9t\u00e9",
                 "\u65e5\u672c", "\U0001f600", "{\"k\": 1}"]
        out = []
        total = 0
        while total < n:
            w = rnd.choice(words)
            out.append(w)
            total += len(w.encode())
        s = " ".join(out).encode()[:n].decode("utf-8", "ignore")
        return s
    # half incompressible, half compressible (but nowhere near the ratio
    # limit)
    half = n // 2
    return rnd.randbytes(half) + bytes(rnd.choice(b"0123456789abcdef")
                                       for _ in range(n - half))


# --------------------------------------------------------------------------
# negotiation

FACTORIES = []
for snct in (False, True):
    for cnct in (False, True):
        for cmwb in (None, True, 9, 12, 15):
            FACTORIES.append(dict(server_no_context_takeover=snct,
                                  client_no_context_takeover=cnct,
                                  client_max_window_bits=cmwb))
for smwb in (9, 10, 11, 12, 13, 14, 15):
    FACTORIES.append(dict(server_max_window_bits=smwb,
                          client_max_window_bits=smwb))


def fid(f):
    return ",".join("%s=%s" % (k.replace("_max_window_bits", "_bits")
                               .replace("_no_context_takeover", "_nct"), v)
                    for k, v in f.items())


@pytest.fixture
def deflate_pair(backend, wsguard_factory):
    wsg, admin = start(wsguard_factory, backend.url, LIMITS_MAX_PAYLOAD="2m")
    wsg.admin_client = admin
    return backend, wsg


@pytest.mark.parametrize("params", FACTORIES, ids=[fid(f) for f in FACTORIES])
def test_parameter_combinations_echo(deflate_pair, params):
    """Autobahn 12.x/13.x: every parameter combination, messages of many
    sizes both ways, text and binary, echoed intact; the backend gets plain
    messages of the same sizes and no extension."""
    backend, wsg = deflate_pair
    rnd = random.Random(repr(params))
    msgs = []
    for n in sizes():
        msgs.append(payload(n, "text", rnd))
        msgs.append(payload(n, "binary", rnd))

    async def go():
        ext = ClientPerMessageDeflateFactory(**params)
        async with connect(wsg, compression=None, extensions=[ext],
                           ping_interval=None) as ws:
            agreed = ws.response_headers.get("Sec-WebSocket-Extensions")
            assert agreed and agreed.startswith("permessage-deflate"), agreed
            for m in msgs:
                await ws.send(m)
                assert await asyncio.wait_for(ws.recv(), 20) == m
            return agreed
    agreed = run(go(), 120)
    got = [(m["type"], m["len"]) for m in backend.wait_record(
        lambda r: r.get("event") == "message" and
        len(backend.messages()) >= len(msgs)) and backend.messages()]
    want = [("text" if isinstance(m, str) else "binary",
             len(m.encode()) if isinstance(m, str) else len(m)) for m in msgs]
    assert got == want
    opens = backend.opens()
    assert "sec-websocket-extensions" not in opens[0]["headers"], opens[0]
    if params.get("server_no_context_takeover"):
        assert "server_no_context_takeover" in agreed
    if params.get("client_no_context_takeover"):
        assert "client_no_context_takeover" in agreed
    log = session_log(wsg)
    assert "server_bits=" in log.get("deflate", ""), log


def test_default_client_and_metrics(deflate_pair):
    """websockets' default offer (compression="deflate"); compressible
    text both ways, and the metrics show the saving."""
    backend, wsg = deflate_pair
    text = ('{"user": "alice", "items": [1, 2, 3], "ok": true} ' * 200)

    async def go():
        async with connect(wsg, compression="deflate",
                           ping_interval=None) as ws:
            assert "permessage-deflate" in \
                ws.response_headers["Sec-WebSocket-Extensions"]
            for _ in range(20):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 10) == text
    run(go(), 60)
    n = len(text) * 20
    assert wsg.admin_client.value("wsguard_deflate_bytes_total", direction="in",
                  form="uncompressed") == n
    assert wsg.admin_client.value("wsguard_deflate_bytes_total", direction="out",
                  form="uncompressed") == n
    cin = wsg.admin_client.value("wsguard_deflate_bytes_total", direction="in",
                 form="compressed")
    cout = wsg.admin_client.value("wsguard_deflate_bytes_total", direction="out",
                  form="compressed")
    assert 0 < cin < n / 5 and 0 < cout < n / 5, (cin, cout)
    assert wsg.admin_client.value("wsguard_deflate_sessions_total") == 1


def test_deflate_off_no_extension(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, LIMITS_DEFLATE="off")

    async def go():
        async with connect(wsg, compression="deflate",
                           ping_interval=None) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response_headers
            await ws.send("x" * 5000)
            assert await asyncio.wait_for(ws.recv(), 10) == "x" * 5000
    run(go(), 30)
    assert "deflate" not in session_log(wsg)


@pytest.mark.parametrize("offer", [
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; foo",
    "permessage-deflate; client_no_context_takeover=1",
    "permessage-deflate;; x=\"",
    "permessage-deflate, ,;",
    "x-webkit-deflate-frame",
])
def test_unusable_offer_upgrades_without_extension(backend, wsguard_factory,
                                                   offer):
    """An offer that is malformed or not acceptable: 101 without the
    extension; the session works uncompressed; RSV1 is then a protocol
    error."""
    wsg = wsguard_factory(backend.url)
    with raw_client(wsg, {"Sec-WebSocket-Extensions": offer}) as ws:
        assert b"sec-websocket-extensions" not in ws.response_head.lower()
        ws.send_text("plain")
        assert ws.recv_message(timeout=5).payload == b"plain"
        ws.send_frame(OP_TEXT, deflate_raw(b"hello"), rsv=4)
        code, _, _ = ws.expect_close(timeout=5)
    assert code == 1002


def test_backend_leg_plain(raw_backend_factory, wsguard_factory):
    """The backend is offered no extension and gets plain, unfragmented
    frames with RSV1 clear for a single-frame compressed message; the
    answer to the client is compressed (RSV1 on its first frame)."""
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url)
    data = b"hello hello hello hello hello " * 100
    with raw_client(wsg) as ws:
        assert b"permessage-deflate" in ws.response_head
        ws.send_frame(OP_BINARY, deflate_raw(data), rsv=4)
        f = ws.recv_frame(timeout=5)
        assert f.rsv == 4 and f.opcode == OP_BINARY and f.fin, f
        assert inflate_raw(f.payload, 12) == data
    ev = rb.wait(lambda e: e["event"] == "frame", timeout=5)
    assert "sec-websocket-extensions" not in ev.get("head", "").lower()
    opens = [e for e in rb.events() if e["event"] == "open"]
    assert "sec-websocket-extensions" not in opens[0]["head"].lower()
    frames = rb.data_frames()
    assert [(f["opcode"], f["fin"], f["rsv"], f["len"]) for f in frames] == [
        (OP_BINARY, True, 0, len(data))]


def test_small_backend_messages_uncompressed(raw_backend_factory,
                                             wsguard_factory):
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url, LIMITS_DEFLATE_MIN_SIZE="100")
    with raw_client(wsg) as ws:
        ws.send_frame(OP_TEXT, deflate_raw(b"x" * 99), rsv=4)
        f = ws.recv_frame(timeout=5)
        assert f.rsv == 0 and f.payload == b"x" * 99
        ws.send_frame(OP_TEXT, deflate_raw(b"y" * 100), rsv=4)
        f = ws.recv_frame(timeout=5)
        assert f.rsv == 4 and inflate_raw(f.payload, 12) == b"y" * 100


# --------------------------------------------------------------------------
# fragmented compressed messages, takeover

@pytest.mark.parametrize("takeover", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 1000, 20000])
def test_fragmented_compressed_message(raw_backend_factory, wsguard_factory,
                                       takeover, chunk):
    """Autobahn 13.x: a compressed message sent in many frames (RSV1 on the
    first only), with pings between them; several messages in a row with
    or without context takeover. The backend receives the inflated
    bytes, RSV1 clear."""
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url)
    offer = "permessage-deflate; client_max_window_bits" + (
        "" if takeover else "; client_no_context_takeover")
    rnd = random.Random(chunk)
    msgs = [bytes(rnd.choice(b"abcdefgh ") for _ in range(n))
            for n in (50, 30000, 70000)]
    comp = zlib.compressobj(6, zlib.DEFLATED, -12)
    dec = zlib.decompressobj(-15)
    with raw_client(wsg, {"Sec-WebSocket-Extensions": offer}) as ws:
        head = ws.response_head.decode()
        assert ("client_no_context_takeover" in head) != takeover
        for m in msgs:
            if not takeover:
                comp = zlib.compressobj(6, zlib.DEFLATED, -12)
            z = comp.compress(m) + comp.flush(zlib.Z_SYNC_FLUSH)
            z = z[:-4]
            parts = [z[i:i + chunk] for i in range(0, len(z), chunk)] or [b""]
            parts = parts[:200] + [b"".join(parts[200:])] \
                if len(parts) > 201 else parts
            for i, p in enumerate(parts):
                ws.send_frame(OP_TEXT if i == 0 else OP_CONT, p,
                              fin=i == len(parts) - 1, rsv=4 if i == 0 else 0)
                if i == 1:
                    ws.send_frame(rawws.OP_PING, b"mid")
            op, got = recv_pmd(ws, dec)
            assert op == OP_TEXT
            assert got == m
    frames = [f for f in rb.data_frames()]
    assert all(f["rsv"] == 0 for f in frames)
    total = sum(f["len"] for f in frames)
    assert total == sum(len(m) for m in msgs)


def test_backend_fragmented_streamed_compressed(raw_backend_factory,
                                                wsguard_factory):
    """A fragmented backend message is compressed as it streams: RSV1 on
    the first frame only, and the client inflates the whole message."""
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url)
    with raw_client(wsg) as ws:
        # the raw backend echoes frame by frame, fragmentation kept
        data = [b"%05d " % i * 300 for i in range(10)]
        for i, d in enumerate(data):
            ws.send_frame(OP_BINARY if i == 0 else OP_CONT, d,
                          fin=i == len(data) - 1)
        frames = []
        while True:
            f = ws.recv_frame(timeout=10)
            frames.append(f)
            if f.fin:
                break
        assert frames[0].rsv == 4 and all(f.rsv == 0 for f in frames[1:])
        z = b"".join(f.payload for f in frames)
        assert inflate_raw(z, 12) == b"".join(data)


# --------------------------------------------------------------------------
# the guard

def bomb(n):
    """n bytes of zeros, deflated as a client would (about n/1000 bytes)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = bytearray()
    chunk = b"\x00" * MiB
    for _ in range(n // MiB):
        out += c.compress(chunk)
    out += c.flush(zlib.Z_SYNC_FLUSH)
    return bytes(out[:-4])


@pytest.mark.parametrize("fragments", [1, 500])
def test_bomb_closed_1009_before_limit(raw_backend_factory, wsguard_factory,
                                       fragments):
    """About 1 GiB of zeros compressed to ~1 MB, in one message or in many
    fragments: close 1009 before more than max_payload is inflated; the
    backend gets at most max_payload bytes; wsguard's RSS stays small."""
    rb = raw_backend_factory()
    wsg, wsg.admin_client = start(wsguard_factory, rb.url,
                                  LIMITS_MAX_PAYLOAD="1m",
                                  LIMITS_MAX_INFLATE_RATIO="0")
    z = bomb(1024 * MiB)
    rss0 = wsg.rss_kb()
    with raw_client(wsg) as ws:
        step = -(-len(z) // fragments)
        parts = [z[i:i + step] for i in range(0, len(z), step)]
        try:
            for i, p in enumerate(parts):
                ws.send_frame(OP_BINARY if i == 0 else OP_CONT, p,
                              fin=i == len(parts) - 1, rsv=4 if i == 0 else 0)
        except (OSError, rawws.WSError):
            pass                # closed under our feet: fine
        code, reason, _ = ws.expect_close(timeout=10)
    assert code == 1009, (code, reason)
    log = session_log(wsg)
    assert log["close_code"] == 1009 and "inflated" in log["reason"], log
    assert sum(f["len"] for f in rb.data_frames()) <= MiB
    assert wsg.rss_kb() - rss0 < 16 * KiB, (rss0, wsg.rss_kb())
    assert wsg.admin_client.value("wsguard_enforcements_total", limit="inflate_size") == 1


def test_ratio_limit_1009(raw_backend_factory, wsguard_factory):
    rb = raw_backend_factory()
    wsg, wsg.admin_client = start(wsguard_factory, rb.url,
                                  LIMITS_MAX_PAYLOAD="16m",
                                  LIMITS_MAX_INFLATE_RATIO="50")
    with raw_client(wsg) as ws:
        ok = os.urandom(100 * KiB)
        ws.send_frame(OP_BINARY, deflate_raw(ok), rsv=4)
        assert recv_pmd(ws, zlib.decompressobj(-15))[1] == ok
        ws.send_frame(OP_BINARY, deflate_raw(b"\x00" * (4 * MiB)), rsv=4)
        code, reason, _ = ws.expect_close(timeout=10)
    assert code == 1009 and "ratio" in reason, (code, reason)
    assert wsg.admin_client.value("wsguard_enforcements_total", limit="inflate_ratio") == 1
    assert sum(f["len"] for f in rb.data_frames()) < len(ok) + 256 * KiB


@pytest.mark.parametrize("case", ["garbage", "truncated", "bad_utf8",
                                  "bfinal_then_more"])
def test_invalid_deflate_1007(raw_backend_factory, wsguard_factory, case):
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url)
    with raw_client(wsg) as ws:
        if case == "garbage":
            ws.send_frame(OP_BINARY, b"\xff\xff\xff\xff\xff", rsv=4)
        elif case == "truncated":
            z = zlib.compressobj(6, zlib.DEFLATED, -15)
            d = z.compress(os.urandom(3000)) + z.flush(zlib.Z_FULL_FLUSH)
            ws.send_frame(OP_BINARY, d[:len(d) // 2], rsv=4)
        elif case == "bad_utf8":
            ws.send_frame(OP_TEXT, deflate_raw(b"ok \xc3\x28 no"), rsv=4)
        else:
            z = zlib.compressobj(6, zlib.DEFLATED, -15)
            d = z.compress(b"abc") + z.flush(zlib.Z_FINISH)
            ws.send_frame(OP_BINARY, d + b"\x00\x01\x02", rsv=4)
        code, reason, _ = ws.expect_close(timeout=5)
    assert code == 1007, (code, reason)
    log = session_log(wsg)
    assert log["close_code"] == 1007 and log["reason"], log
    assert rb.data_frames() == []


@pytest.mark.parametrize("case", ["ping", "close", "continuation",
                                  "rsv2", "rsv3"])
def test_rsv_misuse_1002(raw_backend_factory, wsguard_factory, case):
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url)
    with raw_client(wsg) as ws:
        if case == "ping":
            ws.send_frame(rawws.OP_PING, b"", rsv=4)
        elif case == "close":
            ws.send_frame(rawws.OP_CLOSE, b"\x03\xe8", rsv=4)
        elif case == "continuation":
            z = deflate_raw(b"abcdef" * 100)
            ws.send_frame(OP_TEXT, z[:10], fin=False, rsv=4)
            ws.send_frame(OP_CONT, z[10:], fin=True, rsv=4)
        else:
            ws.send_frame(OP_TEXT, b"abc", rsv=2 if case == "rsv2" else 1)
        code, _, _ = ws.expect_close(timeout=5)
    assert code == 1002


def test_memory_released_and_bounded(backend, wsguard_factory):
    """Many compressed sessions with context takeover, idle after a
    message: RSS per session stays within the documented bound."""
    if os.environ.get("ASAN_OPTIONS"):
        pytest.skip("RSS under ASan measures its redzones and quarantine")
    wsg = wsguard_factory(backend.url, SERVER_WORKERS="1")
    n = 100
    text = "abc" * 3000

    async def go():
        conns = []
        try:
            for _ in range(n):
                ws = await connect(wsg, compression="deflate",
                                   ping_interval=None)
                conns.append(ws)
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 10) == text
            rss = wsg.rss_kb()
        finally:
            for ws in conns:
                await ws.close()
        return rss
    rss0 = wsg.rss_kb()
    rss = run(go(), 120)
    per = (rss - rss0) * 1024 / n
    # the inflater (2^15 window: websockets offers no client limit value)
    # and the deflater (2^12) with context takeover: ~80 KB, plus TLS
    assert per < 200 * KiB, per


def test_route_overrides(backend, wsguard_factory):
    """[limits] keys per route: deflate off on one route, another window
    on a second; the global policy elsewhere."""
    routes = ("\n[route /off]\nurl = %s\ndeflate = off\n"
              "\n[route /w9]\nurl = %s\ndeflate_window_bits = 9\n"
              "\n[route /other]\nurl = %s\n"
              % (backend.url, backend.url, backend.url))
    wsg = wsguard_factory(backend.url, _ini=routes)
    offer = {"Sec-WebSocket-Extensions":
             "permessage-deflate; client_max_window_bits"}
    got = {}
    for path in ("/off", "/w9", "/other"):
        with rawws.connect(wsg.host, wsg.port, wsg.client_ssl, path=path,
                           headers=offer) as ws:
            got[path] = ws.response_head.decode("latin-1").lower()
    assert "sec-websocket-extensions" not in got["/off"]
    assert "server_max_window_bits=9" in got["/w9"]
    assert "client_max_window_bits=9" in got["/w9"]
    assert "server_max_window_bits=12" in got["/other"]


def test_backpressure_compressed_message(backend_factory, wsguard_factory):
    """A backend that never reads: a compressed message of 24 MiB
    (random bytes: as long on the wire) is inflated only as far as the
    backend takes it; the client's writes block and wsguard's RSS stays
    flat (its 16 KiB buffers and the kernel's hold the rest)."""
    be = backend_factory("--no-read")
    wsg = wsguard_factory(be.url, LIMITS_MAX_PAYLOAD="0",
                          LIMITS_MAX_INFLATE_RATIO="0",
                          SERVER_WRITE_TIMEOUT="0", SERVER_DRAIN_TIMEOUT="1s")
    z = deflate_raw(os.urandom(24 * MiB), level=1)
    with raw_client(wsg) as ws:
        be.wait_record(lambda r: r.get("event") == "open")
        rss0 = wsg.rss_kb()
        ws.sock.settimeout(2)
        sent = 0
        frame = rawws.build_frame(OP_BINARY, z, rsv=4)
        try:
            while sent < len(frame):
                sent += ws.sock.send(frame[sent:sent + 65536])
        except (OSError, TimeoutError):
            pass                # the client's writes block: backpressure
        assert sent < len(frame), "everything was taken: no backpressure"
        rss = wsg.rss_kb()
        assert rss - rss0 < 8 * KiB, (rss0, rss)
        assert wsg.alive()


def test_byte_rate_counts_inflated_bytes(raw_backend_factory, wsguard_factory):
    """bytes_per_second charges what a compressed message inflates to, not
    its size on the wire: 1 MiB of zeros (about 1 KB compressed) against
    64 KiB per second closes with 1008 while it inflates."""
    rb = raw_backend_factory()
    wsg = wsguard_factory(rb.url, LIMITS_BYTES_PER_SECOND="64k",
                          LIMITS_MAX_INFLATE_RATIO="0")
    with raw_client(wsg) as ws:
        z = deflate_raw(b"\x00" * MiB)
        assert len(z) < 2 * KiB
        ws.send_frame(OP_BINARY, z, rsv=4)
        code, reason, _ = ws.expect_close(timeout=10)
    assert code == 1008 and "byte rate" in reason, (code, reason)
    assert sum(f["len"] for f in rb.data_frames()) < 256 * KiB
