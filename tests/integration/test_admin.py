"""The admin listener ([admin] listen): /metrics checked against known
traffic and by a strict parser of the text format, /healthz and /readyz
(503 from SIGTERM on), /status.json, the HTTP rules (404, 405, 431, 403
for peers outside [admin] allow, slow clients cut, a bounded number of
connections), the Grafana dashboard's queries, and `wsguard --healthcheck`.
The status page in a real browser is test_status_page.py.
"""

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import websockets

from admintools import (ADMIN_RE, Admin, ExpositionError, parse_exposition,
                        source_labels, start_admin)
from conftest import REPO, clean_env, wsguard_bin, wait_until
from helpers import connect, http_exchange, run, upgrade_head

EVIL = "https://evil.example"
STARTED_RE = re.compile(r"wsguard \S+ started: \d+ worker")
GOOD = "https://app.example"


def refuse_origin(wsg, n):
    for _ in range(n):
        st, _, _ = http_exchange(wsg, upgrade_head(wsg, headers={"Origin": EVIL}))
        assert st == 403


# --------------------------------------------------------------------------
# /metrics

def test_metrics_strict_format_and_every_label(wsguard_factory, backend):
    """After some traffic of every common kind, the exposition passes the
    strict parser, and every label of wsguard's own tables is there (also
    at 0): all refusal kinds, enforcement limits, close codes x sides."""
    wsg, adm = start_admin(wsguard_factory, backend.url, ORIGIN_ALLOW=GOOD)
    refuse_origin(wsg, 1)

    async def session():
        async with connect(wsg, origin=GOOD) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
    run(session())
    adm.wait_metric("wsguard_closes_total", {"code": "1000", "by": "client"}, 1)

    exp = adm.metrics()
    want = source_labels()
    assert len(want["reason"]) >= 18 and "origin" in want["reason"], want
    for r in want["reason"]:
        exp.value("wsguard_rejections_total", reason=r)
    assert len(exp.samples("wsguard_rejections_total")) == len(want["reason"])
    for lim in want["limit"]:
        exp.value("wsguard_enforcements_total", limit=lim)
    assert len(exp.samples("wsguard_enforcements_total")) == len(want["limit"])
    for code in want["code"]:
        for by in want["by"]:
            exp.value("wsguard_closes_total", code=code, by=by)
    assert len(exp.samples("wsguard_closes_total")) == len(want["code"]) * len(want["by"])
    for d in want["direction"]:
        exp.value("wsguard_messages_total", direction=d)
        exp.value("wsguard_bytes_total", direction=d)
    for res in ("success", "failure"):
        exp.value("wsguard_config_reloads_total", result=res)
    for res in ("session", "rejected"):
        exp.value("wsguard_connections_total", result=res)
    info = exp.samples("wsguard_build_info")
    assert len(info) == 1 and info[0][1] == 1, info
    labels = info[0][0]
    assert set(labels) == {"version", "openssl"}, labels
    assert re.fullmatch(r"\d+\.\d+\.\d+", labels["version"]), labels
    assert re.fullmatch(r"3\.\d+\.\d+.*", labels["openssl"]), labels
    for name, typ in [("wsguard_connections_active", "gauge"),
                      ("wsguard_connections_total", "counter"),
                      ("wsguard_rejections_total", "counter"),
                      ("wsguard_closes_total", "counter"),
                      ("wsguard_enforcements_total", "counter"),
                      ("wsguard_messages_total", "counter"),
                      ("wsguard_bytes_total", "counter"),
                      ("wsguard_handshake_duration_seconds", "histogram"),
                      ("wsguard_backend_connect_duration_seconds", "histogram"),
                      ("wsguard_config_reloads_total", "counter"),
                      ("wsguard_build_info", "gauge"),
                      ("wsguard_log_dropped_total", "counter"),
                      ("wsguard_route_connections_active", "gauge"),
                      ("wsguard_route_sessions_total", "counter"),
                      ("wsguard_cluster_enabled", "gauge"),
                      ("wsguard_cluster_up", "gauge"),
                      ("wsguard_cluster_errors_total", "counter"),
                      ("wsguard_cluster_roundtrip_seconds", "histogram"),
                      ("wsguard_revocations_in_force", "gauge")]:
        assert exp.families[name].type == typ, name
    # Without [cluster]: present, and saying so.
    assert exp.value("wsguard_cluster_enabled") == 0
    assert exp.value("wsguard_cluster_up") == 0
    assert exp.value("wsguard_cluster_errors_total") == 0


def test_parser_rejects_bad_expositions():
    """The strict parser itself: each of these must fail."""
    good = ("# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"} 1\n"
            "# HELP h y\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
            "h_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n")
    parse_exposition(good)
    bad = [
        good[:-1],                                             # no final newline
        good.replace("# HELP a_total x\n", ""),                # no HELP
        good.replace("# TYPE a_total counter\n", ""),          # no TYPE
        good.replace('l="v"', 'l="a"b"'),                      # unescaped quote
        good.replace('l="v"', 'l="a\\x"'),                     # bad escape
        good.replace("a_total{l=\"v\"} 1\n", "a_total{l=\"v\"} 1\na_total{l=\"v\"} 2\n"),
        good.replace("h_bucket{le=\"+Inf\"} 2", "h_bucket{le=\"+Inf\"} 0"),
        good.replace("h_count 2", "h_count 3"),
        good.replace("h_bucket{le=\"+Inf\"} 2\n", ""),
        good.replace("a_total{l=\"v\"} 1", "a_total{l=\"v\"} one"),
        good.replace("a_total{l=\"v\"} 1", "a_total{l=\"v\"} 1 1700000000"),
        good + "a_total{l=\"w\"} 1\n",                         # family split
        good.replace("# TYPE a_total counter", "# TYPE a_total counter\n"),
        good.replace("a_total", "a"),                          # counter w/o _total
    ]
    for b in bad:
        with pytest.raises(ExpositionError):
            parse_exposition(b)


def test_origin_refusals_counted_exactly(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url, ORIGIN_ALLOW=GOOD)
    assert adm.value("wsguard_rejections_total", reason="origin") == 0
    refuse_origin(wsg, 3)
    assert adm.wait_metric("wsguard_rejections_total", {"reason": "origin"}, 3) == 3
    time.sleep(0.3)
    exp = adm.metrics()
    assert exp.value("wsguard_rejections_total", reason="origin") == 3
    assert exp.value("wsguard_connections_total", result="rejected") == 3
    assert exp.value("wsguard_connections_total", result="session") == 0
    assert exp.value("wsguard_connections_accepted_total") == 3
    assert sum(v for _, v in exp.samples("wsguard_rejections_total")) == 3
    # The backend was never contacted.
    assert exp.value("wsguard_backend_connect_duration_seconds_count") == 0
    assert backend.opens() == []


def test_counters_move_during_a_live_session(wsguard_factory, backend):
    """Messages and bytes are counted as they pass, not at close; the
    session is visible per route while it lives; at the end the close is
    counted by code and side and the handshake histogram has one entry
    per session."""
    wsg, adm = start_admin(wsguard_factory, backend.url)
    seen = {}

    async def session():
        async with connect(wsg) as ws:
            for i in range(5):
                await ws.send("m%d" % i)
                assert await ws.recv() == "m%d" % i
            exp = await asyncio.to_thread(adm.metrics)
            seen["in"] = exp.value("wsguard_messages_total", direction="in")
            seen["out"] = exp.value("wsguard_messages_total", direction="out")
            seen["bin"] = exp.value("wsguard_bytes_total", direction="in")
            seen["bout"] = exp.value("wsguard_bytes_total", direction="out")
            seen["active"] = exp.value("wsguard_connections_active")
            seen["route"] = exp.value("wsguard_route_connections_active", route="/")
            seen["closes"] = sum(v for _, v in exp.samples("wsguard_closes_total"))
            st = await asyncio.to_thread(adm.status)
            seen["status_route"] = st["routes"]
            seen["top"] = st["top_clients"]
            seen["backends"] = st["backends"]
            await ws.send(b"\x00" * 1000)
            assert len(await ws.recv()) == 1000
            exp = await asyncio.to_thread(adm.metrics)
            seen["bin2"] = exp.value("wsguard_bytes_total", direction="in")
            await ws.close(1000)
    run(session())

    assert seen["in"] == 5 and seen["out"] == 5, seen
    # 5 masked client frames of 2 bytes: 2 + 4 + 2 each.
    assert seen["bin"] == 5 * 8, seen
    assert seen["bout"] == 5 * 4, seen
    assert seen["bin2"] >= seen["bin"] + 1000, seen
    assert seen["active"] == 1 and seen["route"] == 1, seen
    assert seen["closes"] == 0, seen
    assert seen["status_route"] == [{"route": "/", "active": 1, "sessions": 1}], seen
    assert seen["top"] == [{"address": "127.0.0.1", "connections": 1}], seen
    assert len(seen["backends"]) == 1, seen
    b = seen["backends"][0]
    assert (b["url"], b["state"], b["connects_ok"], b["connects_failed"]) == (
        backend.url, "up", 1, 0), b

    adm.wait_metric("wsguard_closes_total", {"code": "1000", "by": "client"}, 1)
    adm.wait_metric("wsguard_connections_active", {}, 0)
    exp = adm.metrics()
    assert exp.value("wsguard_closes_total", code="1000", by="client") == 1
    assert sum(v for _, v in exp.samples("wsguard_closes_total")) == 1
    sessions = exp.value("wsguard_connections_total", result="session")
    assert sessions == 1
    assert exp.value("wsguard_handshake_duration_seconds_count") == sessions
    assert exp.value("wsguard_handshake_duration_seconds_bucket", le="+Inf") == sessions
    assert 0 < exp.value("wsguard_handshake_duration_seconds_sum") < 5
    assert exp.value("wsguard_backend_connect_duration_seconds_count") == 1
    assert exp.value("wsguard_route_sessions_total", route="/") == 1
    assert exp.value("wsguard_route_connections_active", route="/") == 0
    assert exp.value("wsguard_messages_total", direction="in") == 6
    assert exp.value("wsguard_backend_up", route="/", backend=backend.url) == 1
    assert exp.value("wsguard_backend_connects_total", route="/",
                     backend=backend.url, result="success") == 1
    st = adm.status()
    assert st["closes"] == {"1000": {"client": 1, "backend": 0, "wsguard": 0}}, st
    assert st["top_clients"] == [], st


def test_enforcement_and_wsguard_close_counted(wsguard_factory, backend):
    """A message over max_payload: the session ends with 1009 from
    wsguard, counted under max_payload and closes{code=1009,by=wsguard}."""
    wsg, adm = start_admin(wsguard_factory, backend.url, LIMITS_MAX_PAYLOAD="1k")

    async def session():
        async with connect(wsg) as ws:
            await ws.send("x" * 2000)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as ei:
                await ws.recv()
            return ei.value.rcvd.code if ei.value.rcvd else None
    assert run(session()) == 1009
    adm.wait_metric("wsguard_enforcements_total", {"limit": "max_payload"}, 1)
    exp = adm.metrics()
    assert exp.value("wsguard_enforcements_total", limit="max_payload") == 1
    adm.wait_metric("wsguard_closes_total", {"code": "1009", "by": "wsguard"}, 1)


def test_routes_listed_before_traffic_and_counted(wsguard_factory, backend):
    routes = ("\n[route /chat]\nurl = %s\n\n[route /api/]\nurl = %s\n"
              % (backend.url, backend.url))
    wsg, adm = start_admin(wsguard_factory, backend.url, _ini=routes)
    exp = adm.metrics()
    got = {lab["route"]: v for lab, v in exp.samples("wsguard_route_sessions_total")}
    assert got == {"/chat": 0, "/api/": 0}, got

    async def session():
        async with connect(wsg, path="/chat/room") as ws:
            await ws.send("x")
            await ws.recv()
    run(session())
    adm.wait_metric("wsguard_route_sessions_total", {"route": "/chat"}, 1)
    st = adm.status()
    assert {r["route"]: r["sessions"] for r in st["routes"]} == {"/chat": 1, "/api/": 0}
    # With routes, the global policy's backend list serves nothing: only
    # the routes' backends are shown.
    assert sorted(b["route"] for b in st["backends"]) == ["/api/", "/chat"], st
    http_exchange(wsg, upgrade_head(wsg, path="/elsewhere"))
    adm.wait_metric("wsguard_rejections_total", {"reason": "no_route"}, 1)


def test_backend_down_shown(wsguard_factory, backend):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "ws://127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    wsg, adm = start_admin(wsguard_factory, dead)
    st = adm.status()
    assert st["backends"][0]["state"] == "unknown", st
    assert adm.value("wsguard_backend_up", route="/", backend=dead) == -1
    status, _, _ = http_exchange(wsg, upgrade_head(wsg))
    assert status == 502
    adm.wait_metric("wsguard_rejections_total", {"reason": "backend"}, 1)
    st = adm.status()
    b = st["backends"][0]
    assert (b["url"], b["state"], b["connects_failed"]) == (dead, "down", 1), b
    assert b["last_error"] == "Connection refused", b
    exp = adm.metrics()
    assert exp.value("wsguard_backend_up", route="/", backend=dead) == 0
    assert exp.value("wsguard_backend_connects_total", route="/", backend=dead,
                     result="failure") == 1


def test_reload_results_and_generation(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url)
    st = adm.status()
    assert st["config"]["generation"] == 1 and st["config"]["last_reload"] == "none", st
    ini = Path(wsg.ini_path)
    good = ini.read_text()

    os.kill(wsg.pid, signal.SIGHUP)
    # logged after the count and the generation are updated
    assert wait_until(lambda: "configuration reloaded" in wsg.stderr_text(), 10)
    exp = adm.metrics()
    assert exp.value("wsguard_config_reloads_total", result="success") == 1
    assert exp.value("wsguard_config_generation") == 2
    assert exp.value("wsguard_config_last_reload_successful") == 1
    st = adm.status()
    assert st["config"]["generation"] == 2 and st["config"]["last_reload"] == "success", st

    ini.write_text(good + "\n[server]\nidle_timeout = soon\n")
    os.kill(wsg.pid, signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in wsg.stderr_text(), 10)
    # The failure is logged before it is counted and recorded (the log
    # line can be read first): await the record, the last of the three.
    assert wait_until(lambda: adm.status()["config"]["last_reload"] == "failure", 10), \
        adm.status()["config"]
    exp = adm.metrics()
    assert exp.value("wsguard_config_reloads_total", result="failure") == 1
    assert exp.value("wsguard_config_generation") == 2
    assert exp.value("wsguard_config_last_reload_successful") == 0
    st = adm.status()
    c = st["config"]
    assert c["last_reload"] == "failure" and "1 configuration error" in c["last_reload_error"], c
    assert c["generation"] == 2 and c["reloads_failure"] == 1 and c["reloads_success"] == 1
    ini.write_text(good)


def test_status_json_shape(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url)
    st = adm.status()
    for k in ("version", "openssl", "now", "started", "uptime_seconds", "ready",
              "draining", "workers", "config", "connections", "messages", "bytes",
              "handshakes", "routes", "rejections", "enforcements", "closes",
              "top_clients", "backends", "log_dropped"):
        assert k in st, k
    assert st["ready"] is True and st["draining"] is False
    assert st["config"]["file"] == wsg.ini_path
    assert set(st["rejections"]) == set(source_labels()["reason"])
    assert set(st["enforcements"]) == set(source_labels()["limit"])
    assert abs(st["now"] - time.time()) < 5


# --------------------------------------------------------------------------
# health and readiness

def test_readyz_flips_at_sigterm_while_sessions_drain(wsguard_factory, backend):
    """A live session keeps the drain going; from SIGTERM on /readyz is
    503 (and /healthz still 200) while the process serves that session.
    The drain is given a minute and ends when the test closes the session
    (the process then exits 0), so that nothing here races the drain's
    end; the 1001 at drain_timeout is test_drain.py's."""
    wsg, adm = start_admin(wsguard_factory, backend.url, SERVER_DRAIN_TIMEOUT="60s")
    assert adm.get("/readyz")[:1] == (200,)
    assert adm.value("wsguard_ready") == 1 and adm.value("wsguard_draining") == 0
    assert adm.get("/healthz")[0] == 200
    out = {}

    async def scenario():
        async with connect(wsg) as ws:
            await ws.send("a")
            await ws.recv()
            t0 = time.monotonic()
            wsg.terminate()
            while True:
                st, _, body = await asyncio.to_thread(adm.get, "/readyz")
                if st == 503:
                    break
                assert time.monotonic() - t0 < 15, "readyz still %d 15 s after SIGTERM" % st
                await asyncio.sleep(0.01)
            out["readyz_body"] = body
            out["alive"] = wsg.alive()
            out["healthz"] = (await asyncio.to_thread(adm.get, "/healthz"))[0]
            exp = await asyncio.to_thread(adm.metrics)
            out["draining"] = exp.value("wsguard_draining")
            out["ready"] = exp.value("wsguard_ready")
            out["status"] = await asyncio.to_thread(adm.status)
            # The session still works during the drain: the 503 came
            # while it was being served, not at the drain's end.
            await ws.send("b")
            out["echo"] = await ws.recv()
            out["alive_after"] = wsg.alive()
            await ws.close()
            out["close"] = ws.close_code
    run(scenario(), timeout=60)
    assert out["alive"] and out["healthz"] == 200, out
    assert out["readyz_body"] == b"draining\n", out
    assert out["draining"] == 1 and out["ready"] == 0, out
    assert out["status"]["ready"] is False and out["status"]["draining"] is True
    assert out["status"]["not_ready_reason"] == "draining"
    assert out["echo"] == "b" and out["alive_after"], out
    assert out["close"] == 1000, out
    # The last session gone, the drain is over: the exit comes well before
    # drain_timeout (a minute).
    wsg.stop(timeout=30)


def test_head_requests(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url)
    for path in ("/healthz", "/readyz", "/metrics", "/status", "/status.json"):
        st, hdrs, body = adm.get(path, method="HEAD")
        assert st == 200 and body == b"", (path, st, body)
        gst, ghdrs, gbody = adm.get(path)
        assert gst == 200 and ghdrs["content-type"] == hdrs["content-type"]
        if path in ("/healthz", "/readyz", "/status"):
            assert int(hdrs["content-length"]) == len(gbody), path
        assert int(ghdrs["content-length"]) == len(gbody), path


# --------------------------------------------------------------------------
# HTTP rules

def test_not_found_method_and_bad_requests(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url)
    for path in ("/", "/metrics/", "/METRICS", "/status.html", "/favicon.ico",
                 "/healthz/x", "/../metrics"):
        st, hdrs, body = adm.get(path)
        assert st == 404, (path, st)
        assert hdrs["connection"] == "close"
    assert adm.get("/metrics?x=1")[0] == 200
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "get", "head", "TRACE"):
        st, hdrs, _ = adm.get("/metrics", method=method)
        assert st == 405, (method, st)
        assert hdrs["allow"] == "GET, HEAD"
    st, _, _ = split(adm.raw(b"GARBAGE\r\n\r\n"))
    assert st == 400
    st, _, _ = split(adm.raw(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"))
    assert st == 400
    # A head over 8 KiB: 431, whether it stops there or not.
    big = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    st, _, _ = split(adm.raw(big))
    assert st == 431
    many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
    st, _, _ = split(adm.raw(many))
    assert st == 431
    # Just under the limit is fine.
    pad = 8192 - len(b"GET /healthz HTTP/1.1\r\nX-Pad: \r\n\r\n")
    st, _, _ = split(adm.raw(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"))
    assert st == 200
    assert wsg.alive()


def split(raw):
    from admintools import split_response
    return split_response(raw)


def test_allow_list_refuses_other_peers(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url, ADMIN_ALLOW="10.0.0.0/8")
    for path in ("/healthz", "/metrics", "/status", "/status.json", "/nope"):
        st, _, body = adm.get(path)
        assert st == 403, (path, st)
        assert b"allow" in body
    r = healthcheck(wsg, adm.port)
    assert r.returncode == 1 and "403" in r.stderr, r


def test_allow_list_empty_refuses_everyone(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url, ADMIN_ALLOW="")
    assert adm.get("/healthz")[0] == 403
    assert "[admin] allow is empty" in wsg.stderr_text()


def test_allow_list_ipv6_loopback(wsguard_factory, backend):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1")
    wsg, adm = start_admin(wsguard_factory, backend.url, ADMIN_LISTEN="[::1]:0")
    assert adm.get("/healthz")[0] == 200
    assert "not a loopback" not in wsg.stderr_text()


def test_slow_client_is_cut(wsguard_factory, backend):
    """A client that never finishes its head is closed, without an
    answer, 5 s after it connected although it goes on sending a header
    line every half second (trickling does not extend the deadline: were
    it pushed back by each line, the cut would never come); meanwhile
    others are served."""
    wsg, adm = start_admin(wsguard_factory, backend.url)
    t0 = time.monotonic()       # before the connection: the 5 s run from its accept
    s = adm.connect(timeout=15)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    data, elapsed = None, None
    while time.monotonic() - t0 < 30:
        s.settimeout(0.5)
        try:
            data = s.recv(100)
        except socket.timeout:
            pass
        except ConnectionResetError:
            data = b""
        if data is not None:
            elapsed = time.monotonic() - t0
            break
        try:
            s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass                # cut meanwhile: the next recv says how
        assert adm.get("/healthz")[0] == 200
    s.close()
    assert elapsed is not None, "a trickling client still connected after 30 s"
    assert data == b"", data
    assert elapsed >= 4.5, elapsed


def test_connection_limit(wsguard_factory, backend):
    """16 connections are served at once; the 17th gets 503 at once; once
    they are gone, service resumes."""
    wsg, adm = start_admin(wsguard_factory, backend.url)
    idle = [adm.connect() for _ in range(16)]
    try:
        # The kernel queues the connections in order and wsguard accepts
        # them in that order: the 16 are taken before this one.
        st, hdrs, _ = split(adm.raw(b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert st == 503, st
        assert hdrs.get("retry-after") == "1"
        # The busy ones can still be served.
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        from admintools import read_all
        st, _, body = split(read_all(idle[0], 5))
        assert (st, body) == (200, b"ok\n")
    finally:
        for s in idle:
            s.close()
    assert wait_until(lambda: adm.get("/healthz")[0] == 200, 15)
    assert wait_until(lambda: "admin: 16 connections already" in wsg.stderr_text(), 10)


def test_status_page_headers_and_csp(wsguard_factory, backend):
    """The page is self-contained: no URL to anywhere, one inline style
    and one inline script, each allowed by its hash and nothing else."""
    wsg, adm = start_admin(wsguard_factory, backend.url)
    st, hdrs, body = adm.get("/status")
    assert st == 200 and hdrs["content-type"] == "text/html; charset=utf-8"
    html = body.decode()
    csp = dict((d.strip().split(" ", 1) + [""])[:2]
               for d in hdrs["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert csp["img-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["base-uri"] == "'none'" and csp["form-action"] == "'none'"
    assert "unsafe" not in hdrs["content-security-policy"]
    assert hdrs["x-frame-options"] == "DENY"
    assert hdrs["referrer-policy"] == "no-referrer"
    assert hdrs["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    assert html.count("<script") == 1 and html.count("<style") == 1

    def h(s):
        return "'sha256-%s'" % base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
    assert csp["script-src"] == h(scripts[0])
    assert csp["style-src"] == h(styles[0])
    assert not re.search(r"(src|href)=\"(?!/)", html), "a reference off the origin"
    assert "http:" not in html and "https:" not in html and "//" not in html.replace(
        "<!doctype", "")
    assert "innerHTML" not in html and "eval(" not in html
    assert len(body) < 16384


# --------------------------------------------------------------------------
# start-up

def test_admin_port_taken_fails_the_start(tmp_path, certs, backend):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = run_wsguard([], {"WSGUARD_ADMIN_LISTEN": "127.0.0.1:%d" % port,
                             "WSGUARD_SERVER_LISTEN": "127.0.0.1:0",
                             "WSGUARD_TLS_CERT": certs.cert, "WSGUARD_TLS_KEY": certs.key,
                             "WSGUARD_BACKEND_URL": backend.url}, tmp_path, timeout=10)
    finally:
        taken.close()
    assert r.returncode == 1, r
    assert "[admin] listen 127.0.0.1:%d: Address already in use" % port in r.stderr


def test_non_loopback_warns_and_check_mode_too(wsguard_factory, backend, tmp_path, certs):
    wsg, adm = start_admin(wsguard_factory, backend.url, ADMIN_LISTEN="0.0.0.0:0")
    assert "[admin] listen = 0.0.0.0:0 is not a loopback address" in wsg.stderr_text()
    # A wildcard listener is reachable on loopback, and loopback is allowed.
    assert Admin("127.0.0.1", adm.port).get("/healthz")[0] == 200
    r = run_wsguard(["-t", "-c", wsg.ini_path], {"WSGUARD_ADMIN_LISTEN": "0.0.0.0:9090"},
                    tmp_path)
    assert r.returncode == 0, r
    assert "is not a loopback address" in r.stderr
    assert "not supported yet" not in r.stdout + r.stderr
    # --healthcheck probes a wildcard listener on loopback.
    r = healthcheck(wsg, adm.port, host="0.0.0.0")
    assert r.returncode == 0, r


def test_admin_off_by_default_in_tests(wsguard_factory, backend):
    wsg = wsguard_factory(backend.url)
    # "started" is logged after the admin listener would have been set up
    assert wait_until(lambda: STARTED_RE.search(wsg.stderr_text()), 10), \
        wsg.stderr_text()[-2000:]
    assert not ADMIN_RE.search(wsg.stderr_text())


# --------------------------------------------------------------------------
# wsguard --healthcheck

def run_wsguard(args, env, cwd, timeout=30):
    return subprocess.run([os.path.abspath(wsguard_bin())] + args, env=clean_env(env),
                          cwd=str(cwd), capture_output=True, text=True, timeout=timeout)


def healthcheck(wsg, port, host="127.0.0.1", extra=None):
    env = {"WSGUARD_ADMIN_LISTEN": "%s:%d" % (host, port)}
    env.update(extra or {})
    return run_wsguard(["-c", wsg.ini_path, "--healthcheck"], env, REPO)


def test_healthcheck_ok_against_a_running_wsguard(wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url)
    r = healthcheck(wsg, adm.port)
    assert r.returncode == 0, r
    assert r.stdout == "" and r.stderr == ""
    # The option may come first, and works without -c (environment alone,
    # no certificate readable: it does not need one).
    r = run_wsguard(["--healthcheck"], {"WSGUARD_ADMIN_LISTEN": "127.0.0.1:%d" % adm.port,
                                        "WSGUARD_TLS_CERT": "/nonexistent"}, "/")
    assert r.returncode == 0, r
    # It does not count as a client of the proxy.
    assert adm.value("wsguard_connections_accepted_total") == 0


def test_healthcheck_as_a_non_root_user(wsguard_factory, backend, certs):
    """As the container runs it: an unprivileged user, configuration from
    the environment, a key file it cannot read (it needs none)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    wsg, adm = start_admin(wsguard_factory, backend.url)
    binary = os.path.abspath(wsguard_bin())
    env = clean_env({"WSGUARD_ADMIN_LISTEN": "127.0.0.1:%d" % adm.port,
                     "WSGUARD_TLS_CERT": certs.cert, "WSGUARD_TLS_KEY": certs.key})
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary,
           "--healthcheck"]
    r = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=30)
    if "Permission denied" in r.stderr and "setpriv" in r.stderr:
        pytest.skip("the binary is not reachable by nobody: %s" % r.stderr)
    assert r.returncode == 0, r
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "id", "-u"], capture_output=True, text=True)
    assert r.stdout.strip() == "65534"


def test_healthcheck_fails_when_nothing_listens(wsguard_factory, backend):
    wsg = wsguard_factory(backend.url)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = healthcheck(wsg, port)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Connection refused" in lines[0], r.stderr


def test_healthcheck_fails_with_admin_off(wsguard_factory, backend):
    wsg = wsguard_factory(backend.url)
    r = run_wsguard(["-c", wsg.ini_path, "--healthcheck"], {}, REPO)
    assert r.returncode == 1
    assert r.stderr.strip() == "wsguard --healthcheck: [admin] listen is off: nothing to probe"


def test_healthcheck_fails_on_a_bad_configuration(tmp_path):
    r = run_wsguard(["--healthcheck"], {"WSGUARD_SERVER_IDLE_TIMEOUT": "soon"}, tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "WSGUARD_SERVER_IDLE_TIMEOUT" in lines[0], r.stderr


def test_healthcheck_times_out_quickly(wsguard_factory, backend):
    """A listener that accepts (the kernel does) but never answers: exit 1
    after about 2 s, timed from the probe's connection to its end (when
    the connection closes), so that how long the probe takes to start
    (longer under ASan on a busy machine) does not count."""
    wsg = wsguard_factory(backend.url)
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    mute.settimeout(30)
    seen = {}

    def watch():
        try:
            c, _ = mute.accept()
        except OSError:
            return
        seen["connected"] = time.monotonic()
        c.settimeout(30)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        seen["closed"] = time.monotonic()
        c.close()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        r = healthcheck(wsg, mute.getsockname()[1])
        t.join(30)
    finally:
        mute.close()
    assert r.returncode == 1
    assert "no answer within 2 s" in r.stderr, r.stderr
    held = seen["closed"] - seen["connected"]
    assert 1.5 < held < 5.0, held


def test_healthcheck_during_drain_is_still_healthy(wsguard_factory, backend):
    """The session holds the drain (a minute) until the test closes it,
    so the probe cannot race the drain's end, however slowly it starts."""
    wsg, adm = start_admin(wsguard_factory, backend.url, SERVER_DRAIN_TIMEOUT="60s")

    async def scenario():
        async with connect(wsg) as ws:
            wsg.terminate()
            assert wait_until(lambda: adm.get("/readyz")[0] == 503, 15)
            r = await asyncio.to_thread(healthcheck, wsg, adm.port)
            await ws.send("still draining")
            assert await ws.recv() == "still draining"
            return r
    r = run(scenario(), timeout=60)
    assert r.returncode == 0, r
    wsg.stop(timeout=30)


def test_usage_mentions_healthcheck():
    r = run_wsguard(["-h"], {}, REPO)
    assert r.returncode == 0 and "--healthcheck" in r.stdout


# --------------------------------------------------------------------------
# the Grafana dashboard

def dashboard_exprs():
    d = json.loads((REPO / "docs/grafana-dashboard.json").read_text())
    exprs = []

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get("expr"), str):
                exprs.append(o["expr"])
            if isinstance(o.get("query"), str) and "wsguard_" in o["query"]:
                exprs.append(o["query"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(d)
    return d, exprs


def test_grafana_dashboard_queries_real_metrics(wsguard_factory, backend):
    d, exprs = dashboard_exprs()
    assert d.get("title") and d.get("panels") and d.get("uid")
    assert len(exprs) >= 10, exprs
    wsg, adm = start_admin(wsguard_factory, backend.url)
    names = adm.metrics().sample_names()
    used = set()
    for e in exprs:
        for n in re.findall(r"\b(wsguard_[a-z_]+)", e):
            used.add(n)
    missing = sorted(n for n in used if n not in names)
    assert missing == [], "dashboard queries metrics /metrics does not have: %r" % missing
    # Every contract metric is on the dashboard.
    for fam in ("wsguard_connections_active", "wsguard_connections_total",
                "wsguard_rejections_total", "wsguard_closes_total",
                "wsguard_messages_total", "wsguard_bytes_total",
                "wsguard_handshake_duration_seconds_bucket",
                "wsguard_config_reloads_total", "wsguard_build_info",
                "wsguard_enforcements_total", "wsguard_log_dropped_total",
                "wsguard_backend_connect_duration_seconds_bucket"):
        assert fam in used, fam
    # Each panel's datasource is the dashboard's variable, not a fixed one.
    for p in d["panels"]:
        if p.get("type") == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p.get("title")


def test_operations_md_documents_every_metric(wsguard_factory, backend):
    """docs/operations.md's metrics table and a real /metrics answer name
    the same families."""
    doc = (REPO / "docs/operations.md").read_text()
    documented = set(re.findall(r"^\| `(wsguard_[a-z_]+)` \|", doc, re.M))
    wsg, adm = start_admin(wsguard_factory, backend.url)
    exposed = set(adm.metrics().families)
    assert documented == exposed, (sorted(documented - exposed), sorted(exposed - documented))
