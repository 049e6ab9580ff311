"""clustertools - helpers for test_cluster.py (cluster mode through Redis).

    from clustertools import (RedisServer, Resp, RedisError, Blackhole,
                              start_replica, revoke, hash_counts, ip_keys,
                              CloseWatch, churn)

RedisServer(tmp_dir, port=None, tls=None, password=None)
    A real redis-server (/usr/bin/redis-server) on 127.0.0.1:PORT, no
    persistence (--save '' --appendonly no). The port is chosen free and
    below the ephemeral range, so that a client retrying against a stopped
    server cannot connect to itself, and so that a restart can take the
    same port again. .start() waits until PING answers (PONG, or NOAUTH
    when a password is required); .stop() (SIGTERM, wait), .kill()
    (SIGKILL), .restart() (same port, empty). .call(*args) one command on
    a fresh connection; .client() a Resp kept open; .url ("redis://..." or
    "rediss://localhost:PORT"); .cli(*args) runs the real redis-cli.
    tls: a (cert, key) pair; the server then listens with TLS only
    (--port 0 --tls-port PORT --tls-auth-clients no).

Resp(host, port, ssl_ctx=None, password=None)   a minimal RESP2 client.

Blackhole()  a TCP server on 127.0.0.1 that accepts and reads but never
    answers (a Redis that is stuck). .port, .accepted (count),
    .received(substring) -> how many connections have sent it,
    .wait_received(substring, n, timeout), .stop().

start_replica(wsguard_factory, backend_url, redis_url, prefix, **kw)
    wsguard in cluster mode with the admin listener on: (Wsguard, Admin).
    Defaults: lease 3s, timeout 2s (a loaded CI machine must not turn a
    slow answer into an error unless the test wants it), on_error closed
    (so that any failure to count shows up as a 503, never as a silent
    over-admission). wait_up=True waits for wsguard_cluster_up == 1.

revoke(admin, body, timeout=5) POST /revoke: (status, parsed JSON or
    raw bytes).

hash_counts(redis, prefix, ip) {field: count} of <prefix>ip:<ip>, expired
    fields included; ip_keys(redis, prefix) the <prefix>ip:* keys.

CloseWatch(ws)  a thread reading one rawws session until its close frame;
    .wait(timeout) -> (code, reason, monotonic time of arrival).

churn(wsgs, n, concurrency, seed)  n connections spread over the replicas
    (asyncio), each ending in one of several ways (see CHURN_KINDS);
    returns (Counter of outcomes, peak of sessions held at once as the
    clients saw them).
"""

import asyncio
import base64
import collections
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import rawws
from admintools import start_admin
from conftest import wait_until

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


# --------------------------------------------------------------------------
# a minimal RESP2 client

class RedisError(Exception):
    """An error reply (-ERR ...)."""


class Resp:
    def __init__(self, host, port, ssl_ctx=None, server_hostname="localhost",
                 password=None, timeout=5.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_ctx is not None:
            sock = ssl_ctx.wrap_socket(sock, server_hostname=server_hostname)
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = bytearray()
        if password is not None:
            self.call("AUTH", password)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def call(self, *args):
        self.send(*args)
        return self.reply()

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n + 2]
        return data

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError("bad RESP line %r" % line)


# --------------------------------------------------------------------------
# redis-server

def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    # Nobody may be listening on the port either (bind succeeds with
    # SO_REUSEADDR semantics only when nothing listens, but be explicit).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_low_port():
    """A free loopback port below the ephemeral range (see the module
    docstring)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    hi = max(10000, low - 1)
    rnd = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        p = rnd.randrange(max(1024, hi - 12000), hi)
        if _port_free(p):
            return p
    raise RuntimeError("no free port below %d" % low)


class RedisServer:
    def __init__(self, tmp_dir, port=None, tls=None, password=None, ca=None):
        self.dir = Path(tmp_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_low_port()
        self.tls = tls               # (cert, key) or None
        self.ca = ca or (tls[0] if tls else None)
        self.password = password
        self.proc = None
        self.starts = 0
        self.log_path = self.dir / ("redis-%d.log" % self.port)

    @property
    def url(self):
        if self.tls:
            return "rediss://localhost:%d" % self.port
        return "redis://127.0.0.1:%d" % self.port

    def command_line(self):
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1 -::1", "--save", "",
               "--appendonly", "no", "--dir", str(self.dir),
               "--logfile", str(self.log_path), "--daemonize", "no",
               "--protected-mode", "no", "--databases", "4",
               "--enable-debug-command", "local"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", self.tls[0], "--tls-key-file", self.tls[1],
                    "--tls-ca-cert-file", self.ca, "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        return cmd

    def ssl_ctx(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = True
        return ctx

    def client(self, timeout=5.0, auth=True):
        return Resp("127.0.0.1", self.port, ssl_ctx=self.ssl_ctx(),
                    password=self.password if auth else None, timeout=timeout)

    def call(self, *args):
        with self.client() as c:
            return c.call(*args)

    def _pings(self):
        try:
            with self.client(timeout=1.0, auth=False) as c:
                return c.call("PING") == "PONG"
        except RedisError as e:
            return str(e).startswith("NOAUTH")
        except (OSError, ssl.SSLError, ConnectionError):
            return False

    def start(self, timeout=15.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.dir / ("redis-%d.out" % self.port), "ab") as out:
            self.proc = subprocess.Popen(self.command_line(), stdout=out,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         cwd=str(self.dir))
        self.starts += 1
        ok = wait_until(lambda: self.proc.poll() is not None or self._pings(), timeout,
                        interval=0.05)
        if self.proc.poll() is not None or not ok:
            self.kill()
            raise AssertionError("redis-server did not answer PING on port %d within %.0fs:\n%s"
                                 % (self.port, timeout, self.log_text()[-3000:]))
        return self

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _end(self, sig):
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def stop(self):
        self._end(signal.SIGTERM)

    def kill(self):
        self._end(signal.SIGKILL)

    def restart(self, timeout=15.0):
        self.stop()
        return self.start(timeout)

    def cli(self, *args, check=True):
        """Run the real redis-cli against this server; its stdout."""
        cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", self.ca, "--sni", "localhost"]
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password
        r = subprocess.run(cmd + [str(a) for a in args], capture_output=True,
                           timeout=20, env=env)
        if check:
            assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        return r.stdout.decode(errors="replace").strip()


def hash_counts(redis, prefix, ip):
    """{field: count} of the address's hash (every field, expired or not)."""
    h = redis.call("HGETALL", "%sip:%s" % (prefix, ip)) or []
    out = {}
    for i in range(0, len(h), 2):
        c, _, e = h[i + 1].partition(":")
        assert c.isdigit() and e.isdigit(), h
        out[h[i]] = int(c)
    return out


def ip_keys(redis, prefix):
    return sorted(redis.call("KEYS", "%sip:*" % prefix) or [])


# --------------------------------------------------------------------------
# a Redis that never answers

class Blackhole:
    """Accepts TCP connections on 127.0.0.1:port (a free one by default),
    reads whatever comes, never writes."""

    def __init__(self, port=0):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []             # [socket, bytearray of what it sent]
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ, None)
        while not self.stopping:
            for key, _ in sel.select(timeout=0.1):
                if key.data is None:
                    try:
                        s, _ = self.lsock.accept()
                    except OSError:
                        continue
                    s.setblocking(False)
                    entry = [s, bytearray()]
                    with self.lock:
                        self.conns.append(entry)
                        self.accepted += 1
                    sel.register(s, selectors.EVENT_READ, entry)
                else:
                    s, data = key.data
                    try:
                        chunk = s.recv(65536)
                    except OSError:
                        chunk = b""
                    if chunk:
                        with self.lock:
                            data += chunk
                    else:
                        sel.unregister(s)
        sel.close()

    def received(self, needle):
        """How many connections have sent needle (bytes or str)."""
        if isinstance(needle, str):
            needle = needle.encode()
        with self.lock:
            return sum(1 for _, d in self.conns if needle in d)

    def wait_received(self, needle, n=1, timeout=10.0):
        return wait_until(lambda: self.received(needle) >= n, timeout)

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.lsock.close()
        with self.lock:
            for s, _ in self.conns:
                try:
                    s.close()
                except OSError:
                    pass


# --------------------------------------------------------------------------
# wsguard in cluster mode

def start_replica(wsguard_factory, backend_url, redis_url, prefix,
                  wait_up=True, up_timeout=15.0, **overrides):
    kw = {"CLUSTER_REDIS": redis_url, "CLUSTER_KEY_PREFIX": prefix,
          "CLUSTER_LEASE": "3s", "CLUSTER_TIMEOUT": "2s",
          "CLUSTER_ON_ERROR": "closed", "ADMIN_LISTEN": "127.0.0.1:0"}
    kw.update(overrides)
    kw = {k: v for k, v in kw.items() if v is not None}
    wsg, admin = start_admin(wsguard_factory, backend_url, **kw)
    if wait_up:
        up = admin.wait_metric("wsguard_cluster_up", {}, 1, timeout=up_timeout)
        assert up == 1, "cluster not up within %.0fs: %s" % (
            up_timeout, wsg.stderr_text()[-3000:])
    return wsg, admin


def revoke(admin, body, timeout=5.0):
    """POST /revoke with body (a dict is sent as JSON, str/bytes as is):
    (status, JSON answer or raw body)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    head = ("POST /revoke HTTP/1.1\r\nHost: %s:%d\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % (admin.host, admin.port, len(body)))
    from admintools import split_response
    st, hdrs, rbody = split_response(admin.raw(head.encode() + body, timeout))
    try:
        return st, json.loads(rbody)
    except ValueError:
        return st, rbody


def metric(admin, name, **labels):
    try:
        return admin.metrics().value(name, **labels)
    except KeyError:
        return 0


# --------------------------------------------------------------------------
# watching sessions close

class CloseWatch:
    """Read a rawws session in a thread until its close frame arrives."""

    def __init__(self, ws, timeout=10.0):
        self.ws = ws
        self.result = None
        self.at = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(timeout,), daemon=True)
        self.thread.start()

    def _run(self, timeout):
        try:
            res = self.ws.expect_close(timeout=timeout)
            self.at = time.monotonic()
            self.result = res
        except Exception as e:      # reported by wait()
            self.at = time.monotonic()
            self.error = e

    def wait(self, timeout=15.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "no close within %.1fs" % timeout
        if self.error is not None:
            raise AssertionError("no close frame: %r" % (self.error,))
        return self.result.code, self.result.reason, self.at


def ws_open(wsg, headers=None, path="/", timeout=10.0):
    return rawws.connect("localhost", wsg.port, wsg.client_ssl, path=path,
                         headers=headers, timeout=timeout)


def echoes(ws, text="ping", timeout=5.0):
    ws.send_text(text)
    m = ws.recv_message(timeout=timeout)
    return m.payload == text.encode()


# --------------------------------------------------------------------------
# churn

CHURN_KINDS = (
    "tcp",          # TCP connect, close at once
    "tls",          # TLS handshake, close before any request
    "half-head",    # part of the request head, then close
    "head-abort",   # the full upgrade request, close (RST) without reading
    "upgraded-rst", # upgraded, then an abrupt close (RST, no close frame)
    "upgraded",     # upgraded, then a clean close handshake
    "message",      # upgraded, one message echoed, then a clean close
)


def _frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


async def _read_head(reader, timeout):
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    line = data.split(b"\r\n", 1)[0].split(b" ")
    return int(line[1])


async def _read_frame(reader, timeout):
    async def go():
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        return b0 & 0x0F, await reader.readexactly(n)
    return await asyncio.wait_for(go(), timeout)


def _abort(writer):
    """Close with an RST where possible (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class Live:
    """Sessions the clients hold at once: from the 101's arrival to the
    first byte of their close (a subset of the time wsguard holds each
    slot, so its peak can only under-estimate the true peak)."""

    def __init__(self):
        self.now = 0
        self.peak = 0

    def hold(self):
        self.now += 1
        self.peak = max(self.peak, self.now)
        live = self

        class Held:
            done = False

            def drop(self):
                if not self.done:
                    self.done = True
                    live.now -= 1
        return Held()


async def _one(wsg, kind, ssl_ctx, timeout, live):
    key = base64.b64encode(os.urandom(16)).decode()
    head = ("GET /churn HTTP/1.1\r\nHost: localhost:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n" % (wsg.port, key)).encode()
    if kind == "tcp":
        _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", wsg.port), timeout)
        _abort(w) if random.random() < 0.5 else w.close()
        return kind
    r, w = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", wsg.port, ssl=ssl_ctx, server_hostname="localhost"), timeout)
    try:
        if kind == "tls":
            return kind
        if kind == "half-head":
            w.write(head[:random.randrange(1, len(head) - 4)])
            await w.drain()
            return kind
        w.write(head)
        await w.drain()
        if kind == "head-abort":
            _abort(w)
            return kind
        status = await _read_head(r, timeout)
        if status != 101:
            return "refused-%d" % status
        held = live.hold()
        try:
            if kind == "upgraded-rst":
                held.drop()
                _abort(w)
                return kind
            if kind == "message":
                w.write(_frame(0x1, b"churn"))
                await w.drain()
                op, payload = await _read_frame(r, timeout)
                if (op, payload) != (0x1, b"churn"):
                    return "bad-echo"
            held.drop()
            w.write(_frame(0x8, struct.pack("!H", 1000)))
            await w.drain()
            while True:
                op, _ = await _read_frame(r, timeout)
                if op == 0x8:
                    break
            return kind
        finally:
            held.drop()
    finally:
        if not w.transport.is_closing():
            w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 2)
        except (asyncio.TimeoutError, OSError, ssl.SSLError, ConnectionError):
            pass


def churn(wsgs, n, concurrency, seed=1, timeout=20.0):
    """n connections spread over the replicas wsgs, concurrency at a time;
    a Counter of outcomes (a kind, "refused-<status>", or an error name)."""
    rnd = random.Random(seed)
    plan = [(wsgs[i % len(wsgs)], rnd.choice(CHURN_KINDS)) for i in range(n)]
    ctx = wsgs[0].client_ssl

    live = Live()

    async def main():
        sem = asyncio.Semaphore(concurrency)
        out = collections.Counter()

        async def task(wsg, kind):
            async with sem:
                try:
                    out[await _one(wsg, kind, ctx, timeout, live)] += 1
                except (asyncio.TimeoutError, asyncio.IncompleteReadError,
                        ConnectionError, OSError, ssl.SSLError) as e:
                    out["%s-%s" % (kind, type(e).__name__)] += 1
        await asyncio.gather(*(task(w, k) for w, k in plan))
        return out

    out = asyncio.run(main())
    return out, live.peak
