"""The drain has a hard bound: SIGTERM -> exit within drain_timeout plus
a short grace (2 s), whatever the peers do, so a Kubernetes
terminationGracePeriodSeconds or a Docker stop timeout can be set from
one number. close_timeout is set far above that in these tests, so a
wsguard that waited for it would visibly miss the bound.

A client that answers wsguard's close frame at once but leaves the TCP
connection for the server to close (as RFC 6455 7.1.1 asks of clients,
and as browsers do) gets its connection closed at once; one that never
answers is dropped when the grace ends."""

import subprocess
import time

import rawws
from helpers import raw_connect

GRACE = 2.0


def open_sessions(wsg, n):
    out = []
    for _ in range(n):
        ws = rawws.connect("localhost", wsg.port, wsg.client_ssl, timeout=10)
        ws.send_frame(rawws.OP_TEXT, b"hello")
        assert ws.recv_message(timeout=10).payload == b"hello"
        out.append(ws)
    return out


def test_polite_clients_closed_at_once(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_DRAIN_TIMEOUT="1s",
                          SERVER_CLOSE_TIMEOUT="5m",
                          SERVER_IDLE_TIMEOUT="0")
    clients = open_sessions(wsg, 5)
    wsg.terminate()
    for ws in clients:
        # 1001 arrives after drain_timeout; the echo goes back, and the
        # server closes TCP without waiting for close_timeout
        res = ws.expect_close(timeout=20)
        assert res.code == 1001, res
        assert res.tcp_closed, "wsguard kept the TCP connection open"
    # the clients never close their end: wsguard must not wait for them
    # (close_timeout is 5 minutes) and exits as soon as they are closed
    assert wsg.proc.wait(timeout=20) == 0
    wsg.expect_exit = "any"
    for ws in clients:
        ws.close()


def test_silent_clients_bounded_by_grace(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_DRAIN_TIMEOUT="1s",
                          SERVER_CLOSE_TIMEOUT="5m",
                          SERVER_IDLE_TIMEOUT="0", SERVER_PING_INTERVAL="0")
    # clients that never answer and never close (they do not even read)
    clients = open_sessions(wsg, 5)
    t0 = time.monotonic()
    wsg.terminate()
    rc = wsg.proc.wait(timeout=60)
    elapsed = time.monotonic() - t0
    assert rc == 0, wsg.stderr_text()[-2000:]
    wsg.expect_exit = "any"
    # far below close_timeout (5 min): bounded by drain_timeout + grace
    assert elapsed < 30, elapsed
    assert "drain grace over" in wsg.stderr_text()
    recs = [r for r in wsg.access_log() if r.get("event") == "session"]
    assert len(recs) == 5, recs
    for ws in clients:
        ws.close()


def test_handshakes_in_progress_refused_while_draining(backend,
                                                       wsguard_factory):
    """A client still in its handshake when the drain starts gets 503."""
    # One worker, whose own "draining" line says it has taken the drain
    # (the process's line comes from the signal handler's thread first;
    # a request finished before the worker saw the drain is served).
    wsg = wsguard_factory(backend.url, SERVER_DRAIN_TIMEOUT="2s",
                          SERVER_IDLE_TIMEOUT="0", SERVER_WORKERS="1")
    live = open_sessions(wsg, 1)
    with raw_connect(wsg, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")       # head not finished yet
        wsg.terminate()
        # once the worker has logged its drain, finish the head
        deadline = time.monotonic() + 10
        while "worker 0: draining" not in wsg.stderr_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        from helpers import upgrade_head, read_head
        rest = upgrade_head(wsg).split(b"\r\n", 1)[1]
        s.sendall(rest)
        status, _, _ = read_head(s, timeout=10)
        assert status == 503
    res = live[0].expect_close(timeout=20)
    assert res.code == 1001
    assert wsg.proc.wait(timeout=30) == 0
    wsg.expect_exit = "any"
