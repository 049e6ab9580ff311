"""Relaying: messages of every size and kind reach the backend and come
back byte-exact, through real TLS, with the headers the contract promises."""

import asyncio
import hashlib
import os
import random
import socket
import threading
import time

import pytest
import websockets

from conftest import wait_until
from helpers import connect, run
from limitstools import _unmask, server_frame
from regresstools import raw_connect, tcp_queues

MiB = 1 << 20
SIZES = [0, 1, 125, 126, 65535, 65536, MiB, 16 * MiB]


def text_of_bytes(n, rng):
    """A str whose UTF-8 encoding is exactly n bytes, with multi-byte chars."""
    head = ""
    while n - len(head.encode()) >= 4 and len(head) < 64:
        head += rng.choice(["\u00e9", "\u20ac", "\U0001F600", "a"])
    rest = n - len(head.encode())
    s = head + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ")
                       for _ in range(min(rest, 4096)))
    if rest > 4096:
        block = s[-4096:]
        s += block * ((rest - 4096) // 4096) + block[: (rest - 4096) % 4096]
    assert len(s.encode()) == n
    return s


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("size", SIZES)
def test_echo_sizes(backend, wsguard_factory, kind, size):
    wsg = wsguard_factory(backend.url, LIMITS_MAX_PAYLOAD="32m")
    rng = random.Random(size)
    msg = text_of_bytes(size, rng) if kind == "text" else os.urandom(size)

    async def go():
        async with connect(wsg) as ws:
            await ws.send(msg)
            echo = await asyncio.wait_for(ws.recv(), 30)
            assert type(echo) is type(msg)
            assert len(echo) == len(msg)
            assert echo == msg
    run(go(), 60)
    data = msg.encode() if kind == "text" else msg
    rec = backend.wait_record(lambda r: r["event"] == "message")
    assert rec["type"] == kind
    assert rec["len"] == size
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_fragmented_message(backend, wsguard, kind):
    if kind == "text":
        # a multi-byte character split across fragments is still one valid message
        parts = ["Hello, ", "fragmented ", "w\u00f6rld \u20ac", "!" * 1000]
        whole = "".join(parts)
    else:
        parts = [os.urandom(n) for n in (1, 125, 126, 70000, 0, 5)]
        whole = b"".join(parts)

    async def go():
        async with connect(wsguard) as ws:
            await ws.send(parts)                     # one message, 4-6 frames
            echo = await asyncio.wait_for(ws.recv(), 10)
            assert echo == whole
            await ws.send(whole)                     # and a plain one after it
            assert await asyncio.wait_for(ws.recv(), 10) == whole
    run(go(), 30)
    msgs = backend.messages()
    assert [m["len"] for m in msgs] == [len(whole.encode() if kind == "text" else whole)] * 2


def test_ping_interleaved_with_fragments(backend, wsguard):
    async def go():
        async with connect(wsguard) as ws:
            pongs = []

            async def fragments():
                yield b"first-"
                waiter = await ws.ping(b"mid-message")
                # the pong must come back while the message is still open
                await asyncio.wait_for(waiter, 5)
                pongs.append(True)
                yield b"second-"
                yield b"third"

            await asyncio.wait_for(ws.send(fragments()), 10)
            assert pongs == [True]
            assert await asyncio.wait_for(ws.recv(), 10) == b"first-second-third"
            # and a ping outside a message
            await asyncio.wait_for(await ws.ping(b"after"), 5)
    run(go(), 30)
    assert [m["len"] for m in backend.messages()] == [len(b"first-second-third")]


def test_subprotocol_selected_by_backend(backend_factory, wsguard_factory):
    b = backend_factory("--subprotocols", "chat")
    wsg = wsguard_factory(b.url)

    async def go():
        async with connect(wsg, subprotocols=["x", "chat"]) as ws:
            assert ws.subprotocol == "chat"
            assert ws.response_headers.get("Sec-WebSocket-Protocol") == "chat"
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
        async with connect(wsg) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in ws.response_headers
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    run(go(), 30)
    opens = b.opens()
    assert len(opens) == 2
    offered = [p.strip() for p in opens[0]["headers"]["Sec-WebSocket-Protocol"].split(",")]
    assert offered == ["x", "chat"]
    assert opens[0]["subprotocol"] == "chat"
    assert "Sec-WebSocket-Protocol" not in opens[1]["headers"]
    assert opens[1]["subprotocol"] is None


def test_subprotocol_none_acceptable(backend_factory, wsguard_factory):
    """The backend speaks none of what the client offers: no subprotocol."""
    b = backend_factory("--subprotocols", "chat")
    wsg = wsguard_factory(b.url)

    async def go():
        async with connect(wsg, subprotocols=["x", "y"]) as ws:
            assert ws.subprotocol is None
    # websockets' client accepts an answer without a subprotocol
    run(go(), 30)
    assert b.opens()[0]["subprotocol"] is None


def test_many_concurrent_clients(backend, wsguard_factory):
    clients, per_client, max_len = 200, 20, 64 * 1024
    wsg = wsguard_factory(backend.url, LIMITS_MAX_PAYLOAD="1m")
    prng = random.Random(7)
    # random text to cut messages from: ASCII and 2- and 3-byte characters
    pool = "".join(chr(prng.choice((prng.randint(0x20, 0x7e), prng.randint(0xa0, 0x7ff),
                                    prng.randint(0x800, 0xd7ff))))
                   for _ in range(max_len))

    async def client(i):
        rng = random.Random(1000 + i)
        msgs = []
        for _ in range(per_client):
            n = rng.randint(0, max_len)
            if rng.random() < 0.5:
                msgs.append(rng.randbytes(n))
            else:
                start = rng.randint(0, max_len - n // 3)
                msgs.append(pool[start:start + n // 3])
        async with connect(wsg, open_timeout=30) as ws:
            async def sender():
                for m in msgs:
                    await ws.send(m)

            send_task = asyncio.create_task(sender())
            for k, m in enumerate(msgs):
                echo = await asyncio.wait_for(ws.recv(), 60)
                assert type(echo) is type(m), "client %d msg %d: type" % (i, k)
                assert echo == m, "client %d msg %d: %d bytes corrupted/reordered" % (
                    i, k, len(m))
            await send_task
        return len(msgs)

    async def go():
        results = await asyncio.gather(*(client(i) for i in range(clients)))
        assert sum(results) == clients * per_client
    run(go(), 240)
    assert len(backend.opens()) == clients
    assert len(backend.messages()) == clients * per_client


def test_forwarded_headers(backend, wsguard):
    path = "/chat/room?x=1&y=two%20words"
    sent = {"Origin": "https://app.example.com",
            "Cookie": "session=abc123; theme=dark",
            "X-Forwarded-For": "6.6.6.6"}

    async def go():
        async with connect(wsguard, path, extra_headers=sent) as ws:
            client_key = ws.request_headers["Sec-WebSocket-Key"]
            client_host = ws.request_headers["Host"]
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
            return client_key, client_host
    client_key, client_host = run(go(), 30)
    opens = backend.opens()
    assert len(opens) == 1
    o = opens[0]
    h = o["headers"]
    assert o["path"] == path
    assert h["Host"] == client_host
    assert h["Origin"] == sent["Origin"]
    assert h["Cookie"] == sent["Cookie"]
    # a client's own X-Forwarded-For is not believed (no trusted proxies)
    assert h["X-Forwarded-For"] == "127.0.0.1"
    assert h["X-Forwarded-Proto"] == "https"
    assert "Sec-WebSocket-Extensions" not in h
    assert h["Sec-WebSocket-Key"] and h["Sec-WebSocket-Key"] != client_key
    assert h["Sec-WebSocket-Version"] == "13"


@pytest.mark.parametrize("deflate", ["on", "off"])
def test_compression_offer(backend, wsguard_factory, deflate):
    """permessage-deflate is agreed with the client (deflate = on, the
    default) or declined (off); either way the backend is offered no
    extension and receives the plain message (test_deflate.py has the
    rest)."""
    wsg = wsguard_factory(backend.url, LIMITS_DEFLATE=deflate)

    async def go():
        async with connect(wsg, compression="deflate") as ws:
            assert "permessage-deflate" in ws.request_headers.get(
                "Sec-WebSocket-Extensions", "")
            if deflate == "off":
                assert ws.extensions == []
                assert "Sec-WebSocket-Extensions" not in ws.response_headers
            else:
                assert [e.name for e in ws.extensions] == [
                    "permessage-deflate"]
            msg = "compressible " * 1000
            await ws.send(msg)
            assert await asyncio.wait_for(ws.recv(), 5) == msg
    run(go(), 30)
    o = backend.opens()[0]
    assert "Sec-WebSocket-Extensions" not in o["headers"]
    assert backend.messages()[0]["len"] == len("compressible " * 1000)


def test_plain_ws_when_tls_disabled(backend, wsguard_factory):
    """[tls] enabled = no: plain ws:// (behind another terminator)."""
    wsg = wsguard_factory(backend.url, TLS_ENABLED="no")
    assert wsg.url.startswith("ws://")

    async def go():
        async with connect(wsg, "/plain") as ws:
            await ws.send("no tls")
            assert await asyncio.wait_for(ws.recv(), 5) == "no tls"
            await ws.send(b"\x00\xff")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xff"
    run(go(), 30)
    o = backend.opens()[0]
    assert o["path"] == "/plain"
    assert o["headers"]["X-Forwarded-Proto"] == "http"
    assert o["headers"]["X-Forwarded-For"] == "127.0.0.1"


def test_backend_messages_and_close_reach_client(backend, wsguard):
    """Echoes in both types, then a close started by the client comes back
    as the backend's close with the same code, and the session is logged."""
    async def go():
        async with connect(wsguard) as ws:
            for m in ("a", b"b", "\u00e9\u20ac\U0001F600", b"\x00" * 300):
                await ws.send(m)
                assert await asyncio.wait_for(ws.recv(), 5) == m
            await ws.close(1000, "done")
            return ws.close_code, ws.close_reason
    assert run(go(), 30) == (1000, "done")
    rec = wsguard.wait_access(lambda r: r.get("event") == "session")
    assert rec["close_code"] == 1000


# --------------------------------------------------------------------------
# The backend leg after the close handshake. wsguard is the backend's
# client, and RFC 6455 §7.1.1 has the server close the TCP connection
# first: wsguard gives the backend a tenth of close_timeout to close, so
# that the backend, not wsguard, holds the TIME_WAIT state (wsguard opens
# every backend connection to the same address: a minute of TIME_WAIT per
# session on its side would use up its ephemeral ports). A backend that
# waits for the client's FIN instead gets it after that tenth.

TCP_TIME_WAIT = 0x06
CLOSE_TIMEOUT = "20s"   # so wsguard gives the backend 2 s to close first
HOLD = 0.5              # the backend's pause between its close reply and its FIN


def _read_close(sock, timeout=10.0):
    """Read wsguard's frames to the backend until its (masked) close frame;
    return that frame's payload, unmasked."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            assert buf[1] & 0x80 and n < 126, buf[:16]
            if len(buf) >= 6 + n:
                if buf[0] & 0x0F == 0x8:
                    return _unmask(buf[6:6 + n], buf[2:6])
                buf = buf[6 + n:]
                continue
        d = sock.recv(4096)
        if not d:
            raise EOFError("wsguard closed before its close frame")
        buf += d


def _close_script(rec, done, hold):
    """Answer wsguard's close frame, then see whether wsguard's FIN comes
    within hold seconds; then close (hold > 0), or wait for wsguard to."""
    def script(sock):
        try:
            rec["wsguard_port"] = sock.getpeername()[1]
            payload = _read_close(sock)
            sock.sendall(server_frame(0x8, payload))
            t0 = time.monotonic()
            sock.settimeout(hold if hold > 0 else 30.0)
            try:
                rec["early"] = sock.recv(1)      # b"": wsguard's FIN
            except socket.timeout:
                rec["early"] = None
            rec["waited"] = time.monotonic() - t0
            if rec["early"] is None:
                sock.shutdown(socket.SHUT_WR)    # the backend closes first
                sock.settimeout(20.0)
                rec["after"] = sock.recv(1)
            sock.close()
        except Exception as e:      # noqa: BLE001 - reported by the test
            rec["error"] = e
        finally:
            done.set()
    return script


def _close_through(script_backend, wsguard_factory, hold, close_timeout):
    """A session whose client closes it; returns what the backend's
    script saw, once it is done, and the backend and wsguard."""
    rec, done = {}, threading.Event()
    be = script_backend(_close_script(rec, done, hold))
    wsg = wsguard_factory(be.url, SERVER_CLOSE_TIMEOUT=close_timeout,
                          SERVER_IDLE_TIMEOUT="0")
    ws = raw_connect(wsg)
    try:
        ws.send_close(1000, b"bye")
        res = ws.expect_close(timeout=10)
        assert res.code == 1000 and res.tcp_closed, res
    finally:
        ws.close()
    assert done.wait(40), rec
    assert "error" not in rec, rec
    return rec, be, wsg


def test_backend_closes_first_and_keeps_time_wait(script_backend, wsguard_factory):
    rec, be, wsg = _close_through(script_backend, wsguard_factory, HOLD, CLOSE_TIMEOUT)
    assert rec["early"] is None, \
        "wsguard closed the backend connection %.2f s after the close handshake, " \
        "before the backend did" % rec["waited"]
    assert rec["after"] == b"", "wsguard did not close after the backend's FIN: %r" % rec
    # wsguard's end is gone; the backend's end holds TIME_WAIT
    assert wait_until(lambda: tcp_queues(rec["wsguard_port"], be.port) is None, 10), \
        tcp_queues(rec["wsguard_port"], be.port)
    st = tcp_queues(be.port, rec["wsguard_port"])
    assert st is not None and st[2] == TCP_TIME_WAIT, st
    assert wait_until(lambda: any(r.get("event") == "session" for r in wsg.access_log()), 10)


def test_backend_waiting_for_our_fin_gets_it_after_a_tenth_of_close_timeout(
        script_backend, wsguard_factory):
    rec, _, wsg = _close_through(script_backend, wsguard_factory, 0, CLOSE_TIMEOUT)
    assert rec["early"] == b"", "wsguard never closed the backend connection: %r" % rec
    # 2 s after the close handshake (the backend's reply was sent just
    # before wsguard read it), not at once and not at close_timeout (20 s)
    assert 1.0 < rec["waited"] < 15.0, \
        "wsguard's FIN came %.2f s after the backend's close reply" % rec["waited"]
    session = wait_until(lambda: [r for r in wsg.access_log() if r.get("event") == "session"], 10)
    assert session, wsg.access_log()
