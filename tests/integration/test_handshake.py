"""The upgrade: what a refused client sees, that no backend is contacted
for a refusal, that every refusal is access-logged, and the command line."""

import asyncio
import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import rawws
from conftest import clean_env, wsguard_bin, write_ini
from helpers import (connect, http_exchange, new_key, raw_connect, read_head,
                     run, upgrade_head, wait_eof)
from limitstools import cpu_seconds


def head_post(wsg):
    return upgrade_head(wsg, method="POST")


def head_plain_get(wsg):
    return ("GET / HTTP/1.1\r\nHost: localhost:%d\r\nAccept: text/html\r\n\r\n"
            % wsg.port).encode()


def head_version8(wsg):
    return upgrade_head(wsg, ws_version="8")


def head_missing_key(wsg):
    return upgrade_head(wsg, omit=["Sec-WebSocket-Key"])


def head_bad_key(wsg):
    return upgrade_head(wsg, key="not-a-16-byte-base64-key")


def head_short_key(wsg):
    # valid base64, but of 8 bytes instead of 16
    return upgrade_head(wsg, key=base64.b64encode(os.urandom(8)).decode())


def head_http10(wsg):
    return upgrade_head(wsg, version="HTTP/1.0")


def head_too_big(wsg):
    return upgrade_head(wsg, headers=[("X-Padding-%d" % i, "p" * 100) for i in range(20)])


def head_garbage(wsg):
    return b"\x00\x01\x02 this is not HTTP at all \xff\xfe\r\n\r\n"


REFUSALS = [
    # id, head builder, overrides, status, header that must be in the answer
    ("post", head_post, {}, 405, ("allow", "GET")),
    ("not-upgrade", head_plain_get, {}, 426, ("sec-websocket-version", "13")),
    ("version-8", head_version8, {}, 426, ("sec-websocket-version", "13")),
    ("missing-key", head_missing_key, {}, 400, None),
    ("bad-key", head_bad_key, {}, 400, None),
    ("short-key", head_short_key, {}, 400, None),
    ("http-1.0", head_http10, {}, 400, None),
    ("head-too-big", head_too_big, {"SERVER_MAX_HEADER_BYTES": "1k"}, 431, None),
    ("garbage-after-tls", head_garbage, {}, 400, None),
]


def assert_one_reject(wsg, status):
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    rejects = [r for r in wsg.access_log() if r.get("event") == "reject"]
    assert len(rejects) == 1, rejects
    assert rec["status"] == status, rec
    assert isinstance(rec.get("reason"), str) and rec["reason"], rec
    return rec


def assert_still_serving(wsg):
    async def go():
        async with connect(wsg) as ws:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    run(go(), 20)


@pytest.mark.parametrize("name,build,overrides,status,header",
                         REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusal(backend, wsguard_factory, name, build, overrides, status, header):
    wsg = wsguard_factory(backend.url, **overrides)
    got, hdrs, raw = http_exchange(wsg, build(wsg))
    assert got == status, raw[:500]
    if header is not None:
        assert hdrs.get(header[0], "").replace(" ", "") == header[1], raw[:500]
    # nothing internal leaks: no file paths in the answer
    assert b"/src/" not in raw and b".c:" not in raw
    assert_one_reject(wsg, status)
    assert backend.opens() == []


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_backend_down_502(backend, wsguard_factory):
    port = closed_port()
    wsg = wsguard_factory("ws://127.0.0.1:%d" % port)
    status, _, raw = http_exchange(wsg, upgrade_head(wsg), timeout=15)
    assert status == 502, raw[:300]
    assert_one_reject(wsg, 502)
    # The request, tried as soon as connect() returns, finds the refusal:
    # the log names it, not a failed write.
    assert ("backend ws://127.0.0.1:%d: backend unreachable: Connection "
            "refused" % port) in wsg.stderr_text(), wsg.stderr_text()[-2000:]


def test_backend_request_without_waiting(backend, wsguard_factory, tmp_path):
    """To a backend on the same host the connection is up when connect()
    returns (the backend's SYN-ACK is taken in as the call ends), so the
    upgrade request goes at once: no wait for writability, no
    getsockopt(SO_ERROR). Seen by strace attached to wsguard."""
    wsg = wsguard_factory(backend.url, SERVER_WORKERS="1")
    trace = tmp_path / "strace.out"
    st = subprocess.Popen(["strace", "-f", "-p", str(wsg.proc.pid), "-e",
                           "trace=connect,getsockopt,write", "-o", str(trace)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    try:
        # strace says when it holds every thread; only then is a session
        # sure to be seen.
        line = st.stderr.readline()
        assert "attached" in line, line

        async def session():
            async with connect(wsg) as ws:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 10) == "hello"
        run(session(), 30)
        backend.wait_record(lambda r: r["event"] == "open")
    finally:
        st.send_signal(signal.SIGINT)
        try:
            st.wait(timeout=30)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait(timeout=10)
    text = trace.read_text()
    m = re.search(r"connect\((\d+), \{sa_family=AF_INET, sin_port=htons\(%d\)"
                  % backend.port, text)
    assert m, text[-3000:]
    fd = m.group(1)
    # The first call on the backend's socket after connect() is the
    # request. Only if the connection was not up yet (the kernel usually
    # has it up, but does not promise it) may the wait and SO_ERROR follow.
    after = [ln for ln in text[m.end():].splitlines()
             if re.search(r"\b(write|getsockopt)\(%s," % fd, ln)]
    assert after and re.search(r"write\(%s, \"GET " % fd, after[0]), \
        text[-3000:]
    if "EAGAIN" not in after[0]:
        assert not any("SO_ERROR" in ln for ln in after), after


def test_client_data_while_backend_answers_slowly(wsguard_factory):
    """A client that sends a frame before its 101 while the backend takes
    its time: wsguard does not listen to the client until the relay
    starts (no busy loop on its readable socket), and the frame reaches
    the backend once the 101 is through. The request goes out in the same
    callback that read it, so the watchers must be set for the backend
    states too, not only for the connect."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    wsg = wsguard_factory("ws://127.0.0.1:%d" % port, SERVER_WORKERS="1")
    cli = raw_connect(wsg, timeout=10)
    try:
        cli.sendall(upgrade_head(wsg))
        lsock.settimeout(10)
        be, _ = lsock.accept()
        be.settimeout(10)
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = be.recv(4096)
            assert chunk, req
            req += chunk
        # wsguard now waits for the backend's 101; the client's frame makes
        # its socket readable meanwhile.
        frame = rawws.build_frame(0x1, b"early")
        cli.sendall(frame)
        pid = wsg.proc.pid
        t0, c0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(1.5)     # the interval measured, not a synchronisation
        used = cpu_seconds(pid) - c0
        assert used < 0.3, "wsguard used %.2f s of CPU in %.2f s waiting " \
            "for the backend" % (used, time.monotonic() - t0)
        key = re.search(rb"(?i)sec-websocket-key: *(\S+)", req).group(1)
        be.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                    "\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s"
                    "\r\n\r\n" % rawws.accept_key(key.decode())).encode())
        status, _, raw = read_head(cli, timeout=10)
        assert status == 101, raw[:300]
        got = b""
        while len(got) < 2 + 4 + 5:
            chunk = be.recv(4096)
            assert chunk, got
            got += chunk
        assert got[0] == 0x81 and got[1] == 0x80 | 5, got
        assert rawws.mask_bytes(got[6:11], got[2:6]) == b"early", got
        be.close()
    finally:
        cli.close()
        lsock.close()


def test_frame_behind_request_in_one_segment(backend, wsguard):
    """The request and a first frame in two TLS records of one TCP
    segment (TCP_CORK): OpenSSL reads both ahead with the head, so the
    frame waits inside it, where the socket never announces it. It must
    still be relayed once the session starts, without the client sending
    anything more."""
    cli = raw_connect(wsguard, timeout=10)
    try:
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        cli.sendall(upgrade_head(wsguard))
        cli.sendall(rawws.build_frame(0x1, b"early"))
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        status, _, raw = read_head(cli, timeout=10)
        assert status == 101, raw[:300]
        rest = raw.split(b"\r\n\r\n", 1)[1]
        while len(rest) < 7:
            chunk = cli.recv(4096)
            assert chunk, rest
            rest += chunk
        assert rest[:7] == b"\x81\x05early", rest
    finally:
        cli.close()


def test_backend_refuses_upgrade(backend_factory, wsguard_factory):
    b = backend_factory("--reject", "403")
    wsg = wsguard_factory(b.url)
    status, _, raw = http_exchange(wsg, upgrade_head(wsg), timeout=15)
    assert status in (403, 502), raw[:300]
    # the backend saw the request and refused it; no session was opened
    b.wait_record(lambda r: r["event"] == "reject")
    assert b.opens() == []
    assert_one_reject(wsg, status)


def test_garbage_instead_of_tls(backend, wsguard):
    sock = socket.create_connection((wsguard.host, wsguard.port), timeout=5)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(512))
        assert wait_eof(sock, 10), "wsguard kept a non-TLS connection open"
    finally:
        sock.close()
    assert backend.opens() == []
    assert_still_serving(wsguard)


def test_head_one_byte_per_write(backend, wsguard):
    key = new_key()
    head = upgrade_head(wsguard, path="/slow?x=1", key=key)
    sock = raw_connect(wsguard, timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(head)):
            sock.sendall(head[i:i + 1])          # one TLS record per byte
        status, hdrs, raw = read_head(sock, timeout=10)
        assert status == 101, raw[:300]
        expected = base64.b64encode(hashlib.sha1(
            key.encode() + rawws.WS_GUID).digest()).decode()
        assert hdrs.get("sec-websocket-accept") == expected
        leftover = raw.split(b"\r\n\r\n", 1)[1]
        ws = rawws.RawWS(sock, leftover, raw)
        ws.send_text("byte by byte")
        msg = ws.recv_message(timeout=5)
        assert msg.opcode == rawws.OP_TEXT and msg.payload == b"byte by byte"
        ws.send_close(1000)
        code, _, _ = ws.expect_close(timeout=5)
        assert code == 1000
    finally:
        sock.close()
    assert backend.opens()[0]["path"] == "/slow?x=1"


def test_slowloris_handshake_timeout(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_HANDSHAKE_TIMEOUT="2s")
    head = upgrade_head(wsg)
    # Before the connection: handshake_timeout runs from the accept, so a
    # slow TLS handshake cannot make the cut look early.
    t0 = time.monotonic()
    sock = raw_connect(wsg, timeout=10)
    try:
        sock.sendall(head[: len(head) // 2])
        assert wait_eof(sock, 15), "half a request head kept open past handshake_timeout"
        elapsed = time.monotonic() - t0
        assert elapsed >= 1.8, "closed after %.2fs, before the 2s timeout" % elapsed
    finally:
        sock.close()
    assert backend.opens() == []
    assert_still_serving(wsg)


def test_slowloris_before_tls(backend, wsguard_factory):
    """A TCP connection that never starts TLS is dropped too."""
    wsg = wsguard_factory(backend.url, SERVER_HANDSHAKE_TIMEOUT="1s")
    sock = socket.create_connection((wsg.host, wsg.port), timeout=5)
    try:
        assert wait_eof(sock, 15), "silent TCP connection kept open past handshake_timeout"
    finally:
        sock.close()


# -- command line -----------------------------------------------------------

def run_cli(args, timeout=20):
    return subprocess.run([wsguard_bin()] + args, capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)


FULL_CONFIG = """\
; like conf/wsguard.ini
[server]
listen = 127.0.0.1:0
workers = 2
max_connections = 1000
handshake_timeout = 10s
max_header_bytes = 8k
idle_timeout = 5m
ping_interval = 30s
pong_timeout = 10s
close_timeout = 5s
drain_timeout = 30s

[tls]
enabled = yes
cert = {cert}
key = {key}
min_version = TLSv1.2

[backend]
url = ws://127.0.0.1:8080
connect_timeout = 5s
forwarded_headers = yes

[origin]
allow = https://app.example.com
allow_pattern = ^https://[a-z0-9-]+\\.example\\.com$
allow_missing = no

[limits]
max_payload = 1m
max_connections_per_ip = 0
control_frames_per_second = 20

[log]
level = info
format = json
access_log = stdout

[admin]
listen = 127.0.0.1:0
"""


def test_check_valid_config(tmp_path, certs):
    ini = tmp_path / "good.ini"
    ini.write_text(FULL_CONFIG.format(cert=certs.cert, key=certs.key))
    r = run_cli(["-t", "-c", str(ini)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_minimal_config(tmp_path, certs):
    ini = write_ini(tmp_path / "min.ini", certs, "ws://127.0.0.1:8080")
    r = run_cli(["-t", "-c", ini])
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_bad_key_reports_file_and_line(tmp_path, certs):
    text = FULL_CONFIG.format(cert=certs.cert, key=certs.key)
    lines = text.splitlines()
    at = lines.index("[limits]") + 1
    lines.insert(at, "no_such_key = 1")
    ini = tmp_path / "bad.ini"
    ini.write_text("\n".join(lines) + "\n")
    r = run_cli(["-t", "-c", str(ini)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "%s:%d:" % (ini, at + 1) in r.stdout + r.stderr, r.stdout + r.stderr


def test_check_bad_value_and_missing_cert(tmp_path, certs):
    ini = write_ini(tmp_path / "bad2.ini", certs, "ws://127.0.0.1:8080")
    text = open(ini).read().replace("workers = 1", "workers = many")
    text = text.replace(certs.cert, str(tmp_path / "missing.crt"))
    open(ini, "w").write(text)
    r = run_cli(["-t", "-c", ini])
    assert r.returncode == 1, r.stdout + r.stderr
    line = text.splitlines().index("workers = many") + 1
    assert "%s:%d:" % (ini, line) in r.stdout + r.stderr, r.stdout + r.stderr


def test_version():
    r = run_cli(["-V"])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "wsguard" in out.lower()
    import re
    assert re.search(r"\d+\.\d+", out), out


def test_usage():
    r = run_cli(["-h"])
    out = r.stdout + r.stderr
    assert "-c" in out and "-t" in out, out
