"""Sessions: timeouts, peers that vanish, backpressure, size limits, the
session access-log line and a clean SIGTERM."""

import asyncio
import os
import signal
import socket
import struct
import time

import pytest
import websockets

import rawws
from conftest import wsguard_bin
from helpers import connect, run

MiB = 1 << 20


def sanitized_binary():
    with open(wsguard_bin(), "rb") as f:
        return b"__asan_init" in f.read()


def test_idle_timeout_closes_1001(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_IDLE_TIMEOUT="1s")

    async def go():
        async with connect(wsg) as ws:
            # Before the send: the last activity (the echo) comes after it,
            # so a slow client cannot make the close look early.
            t0 = time.monotonic()
            await ws.send("one")
            assert await asyncio.wait_for(ws.recv(), 5) == "one"
            await asyncio.wait_for(ws.wait_closed(), 15)
            return ws.close_code, time.monotonic() - t0
    code, waited = run(go(), 30)
    assert code == 1001
    assert waited >= 0.9, "closed after %.2fs of a 1s idle timeout" % waited
    # wsguard sends a close frame to the backend too
    rec = backend.wait_record(lambda r: r["event"] == "close", timeout=10)
    assert rec["code"] != 1006, rec
    log = wsg.wait_access(lambda r: r.get("event") == "session")
    assert log["close_code"] == 1001, log


def test_backend_killed_closes_1014(backend, wsguard):
    async def go():
        async with connect(wsguard) as ws:
            await ws.send(b"before")
            assert await asyncio.wait_for(ws.recv(), 5) == b"before"
            backend.kill()
            await asyncio.wait_for(ws.wait_closed(), 10)
            return ws.close_code
    assert run(go(), 30) == 1014
    log = wsguard.wait_access(lambda r: r.get("event") == "session")
    assert log["close_code"] == 1014, log


def test_client_vanishes_backend_sees_close(backend, wsguard):
    ws = rawws.connect(wsguard.host, wsguard.port, wsguard.client_ssl, path="/gone")
    try:
        ws.send_text("hello")
        msg = ws.recv_message(timeout=5)
        assert msg.payload == b"hello"
        backend.wait_record(lambda r: r["event"] == "open")
        assert backend.closes() == []
        # vanish: reset the TCP connection, no close frame, no close_notify
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        ws.close()
    rec = backend.wait_record(lambda r: r["event"] == "close", timeout=10)
    assert rec["conn"] == backend.opens()[0]["conn"]
    wsguard.wait_access(lambda r: r.get("event") == "session", timeout=10)


def test_backpressure_bounds_memory(backend_factory, wsguard_factory):
    b = backend_factory("--no-read")
    env = {}
    if sanitized_binary():
        # ASan keeps freed memory in quarantine (256 MiB): not a leak, but
        # RSS; keep it small so the bound below measures wsguard's buffers.
        env["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "")
                               + ":quarantine_size_mb=1").lstrip(":")
    # drain_timeout 1s: the stalled session must not hold up the teardown
    wsg = wsguard_factory(b.url, _env=env, SERVER_DRAIN_TIMEOUT="1s")
    total, chunk_size = 64 * MiB, 64 * 1024
    chunk = os.urandom(chunk_size)

    async def go():
        ws = await connect(wsg)
        try:
            await ws.send(b"first")        # session fully set up end to end
            b.wait_record(lambda r: r["event"] == "open")
            start = wsg.rss_kb()
            peak = start
            sent = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while sent < total and loop.time() < deadline:
                try:
                    await asyncio.wait_for(ws.send(chunk), 3)
                except asyncio.TimeoutError:
                    break                  # blocked: backpressure reached us
                except websockets.exceptions.ConnectionClosed:
                    break                  # cut off as a stalled writer: fine too
                sent += chunk_size
                peak = max(peak, wsg.rss_kb())
            peak = max(peak, wsg.rss_kb())
            assert wsg.alive()
            return start, peak, sent
        finally:
            ws.transport.abort()

    start, peak, sent = run(go(), 120)
    assert peak < start + 8 * 1024, (
        "wsguard RSS grew from %d kB to %d kB while the client pushed %d MiB "
        "to a backend that does not read" % (start, peak, sent // MiB))


def test_max_payload(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, LIMITS_MAX_PAYLOAD="64k")
    limit = 64 * 1024

    async def go():
        async with connect(wsg) as ws:
            ok = os.urandom(limit)
            await ws.send(ok)
            assert await asyncio.wait_for(ws.recv(), 10) == ok
            await ws.send(os.urandom(limit + 1))
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code
    assert run(go(), 30) == 1009
    sizes = [m["len"] for m in backend.messages()]
    assert sizes == [limit], sizes
    rec = backend.wait_record(lambda r: r["event"] == "close", timeout=10)
    assert rec["code"] != 1006, "backend got no close frame: %r" % rec
    log = wsg.wait_access(lambda r: r.get("event") == "session")
    assert log["close_code"] == 1009, log


def test_max_payload_fragmented(backend, wsguard_factory):
    """The limit is on the whole message, whatever its fragments."""
    wsg = wsguard_factory(backend.url, LIMITS_MAX_PAYLOAD="64k")

    async def go():
        async with connect(wsg) as ws:
            await ws.send([os.urandom(16 * 1024) for _ in range(5)])   # 80 KiB
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code
    assert run(go(), 30) == 1009
    assert backend.messages() == []


def test_session_access_log(backend, wsguard):
    sizes = [10, 1000, 70000]

    async def go():
        async with connect(wsguard, "/logged?q=1") as ws:
            for n in sizes:
                m = os.urandom(n)
                await ws.send(m)
                assert await asyncio.wait_for(ws.recv(), 5) == m
            await ws.close(1000, "bye")
    run(go(), 30)
    rec = wsguard.wait_access(lambda r: r.get("event") == "session")
    for field in ("ts", "client_ip", "path", "bytes_in", "bytes_out", "msgs_in",
                  "msgs_out", "close_code", "duration_ms"):
        assert field in rec, (field, rec)
    assert rec["client_ip"] == "127.0.0.1"
    assert rec["path"].startswith("/logged")
    assert rec["close_code"] == 1000
    assert rec["msgs_in"] == len(sizes)
    assert rec["msgs_out"] == len(sizes)
    assert rec["bytes_in"] >= sum(sizes)
    assert rec["bytes_out"] >= sum(sizes)
    assert rec["bytes_in"] < sum(sizes) + 1024
    assert isinstance(rec["duration_ms"], int) and rec["duration_ms"] >= 0
    sessions = [r for r in wsguard.access_log() if r.get("event") == "session"]
    assert len(sessions) == 1


def test_client_close_relayed_to_backend(backend, wsguard):
    async def go():
        async with connect(wsguard) as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), 5)
            await ws.close(4001, "custom")
            return ws.close_code
    assert run(go(), 30) == 4001
    rec = backend.wait_record(lambda r: r["event"] == "close", timeout=10)
    assert (rec["code"], rec["reason"]) == (4001, "custom")


def test_sigterm_idle_exits_0(wsguard):
    wsguard.stop(timeout=15)


def test_sigterm_drains_live_session(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_DRAIN_TIMEOUT="1s")

    async def go():
        async with connect(wsg) as ws:
            await ws.send("live")
            assert await asyncio.wait_for(ws.recv(), 5) == "live"
            wsg.terminate()
            await asyncio.wait_for(ws.wait_closed(), 10)
            return ws.close_code
    assert run(go(), 30) == 1001
    wsg.stop(timeout=15)


def test_sighup_reload_keeps_sessions(backend, wsguard_factory):
    """SIGHUP reloads the configuration without dropping live sessions; a
    bad new configuration is logged and the old one stays."""
    wsg = wsguard_factory(backend.url)
    limit = 64 * 1024

    async def oversize_closes_1009():
        async with connect(wsg) as ws:
            await ws.send(os.urandom(limit + 1))
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.exceptions.ConnectionClosed:
                pass
            return ws.close_code == 1009

    async def go():
        async with connect(wsg, "/live") as live:
            await live.send("before")
            assert await asyncio.wait_for(live.recv(), 5) == "before"
            assert not await oversize_closes_1009()      # default 1m

            with open(wsg.ini_path, "a") as f:
                f.write("\n[limits]\nmax_payload = 64k\n")
            wsg.proc.send_signal(signal.SIGHUP)
            # await the new limit taking effect for new sessions
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not await oversize_closes_1009():
                assert loop.time() < deadline, "reload did not take effect in 10s"
                await asyncio.sleep(0.1)

            await live.send("after reload")
            assert await asyncio.wait_for(live.recv(), 5) == "after reload"

            good = open(wsg.ini_path).read()
            err_before = len(wsg.stderr_text())
            with open(wsg.ini_path, "w") as f:
                f.write(good + "\n[server]\nno_such_key = 1\n")
            wsg.proc.send_signal(signal.SIGHUP)
            while wsg.ini_path not in wsg.stderr_text()[err_before:]:
                assert loop.time() < deadline + 10, (
                    "bad configuration not reported: %s" % wsg.stderr_text()[err_before:])
                await asyncio.sleep(0.05)
            assert wsg.alive()
            await live.send("after bad reload")
            assert await asyncio.wait_for(live.recv(), 5) == "after bad reload"
            # the previous (good) configuration is still in force
            assert await oversize_closes_1009()
            async with connect(wsg) as ws:
                await ws.send("new session")
                assert await asyncio.wait_for(ws.recv(), 5) == "new session"
    run(go(), 60)
    wsg.stop()
