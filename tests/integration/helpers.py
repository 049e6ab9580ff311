"""Helpers for wsguard's integration tests (see conftest.py for fixtures).

    from helpers import connect, run, raw_connect, upgrade_head, http_exchange
"""

import asyncio
import base64
import os
import socket
import ssl
import time

import websockets


def connect(wsg, path="/", **kw):
    """A websockets client connection to wsguard (`async with` / `await`).

    TLS trusts the test certificate and checks the name "localhost";
    no message size limit and no compression unless overridden."""
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    if wsg.tls:
        kw.setdefault("ssl", wsg.client_ssl)
        kw.setdefault("server_hostname", "localhost")
    return websockets.connect(wsg.url + path, **kw)


def run(coro, timeout=60):
    """Run a coroutine to completion with an overall deadline."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def raw_connect(wsg, timeout=5.0, tls=None):
    """A connected TCP socket to wsguard, TLS-wrapped (server name
    "localhost") when wsguard runs with TLS, or when tls=True."""
    sock = socket.create_connection((wsg.host, wsg.port), timeout=timeout)
    if tls is None:
        tls = wsg.tls
    if tls:
        ctx = wsg.client_ssl
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.settimeout(timeout)
    return sock


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_head(wsg=None, path="/", key=None, headers=None, method="GET",
                 version="HTTP/1.1", ws_version="13", host=None, omit=()):
    """Bytes of a WebSocket upgrade request head. headers: extra (name,
    value) pairs or a dict; omit: names of standard headers to leave out."""
    if key is None:
        key = new_key()
    if host is None:
        host = "localhost:%d" % wsg.port if wsg is not None else "localhost"
    std = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", ws_version)]
    omit_l = {o.lower() for o in omit}
    lines = ["%s %s %s" % (method, path, version)]
    lines += ["%s: %s" % (n, v) for n, v in std if n.lower() not in omit_l]
    if headers:
        items = headers.items() if isinstance(headers, dict) else headers
        lines += ["%s: %s" % (n, v) for n, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(sock, timeout=5.0, limit=65536):
    """Read until the end of a response head (or EOF). Returns
    (status or None, {lower-name: value}, raw bytes read)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response head in %.1fs: %r" % (timeout, buf))
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        if not chunk:
            break
        buf += chunk
    head = buf.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    status = None
    parts = lines[0].split(b" ", 2) if lines and lines[0] else []
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        status = int(parts[1])
    hdrs = {}
    for line in lines[1:]:
        if b":" in line:
            n, v = line.split(b":", 1)
            hdrs[n.strip().decode("latin-1").lower()] = v.strip().decode("latin-1")
    return status, hdrs, buf


def http_exchange(wsg, head, timeout=5.0):
    """Send a request head over a fresh connection, read the response head.
    Returns (status, headers, raw)."""
    with raw_connect(wsg, timeout=timeout) as sock:
        sock.sendall(head)
        return read_head(sock, timeout=timeout)


def wait_eof(sock, timeout):
    """Read and discard until EOF; True if EOF (or reset) came in time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True
