"""Helpers for test_regressions.py.

ScriptBackend   an in-process ws:// backend whose every connection runs a
                test's script once upgraded: script(sock). The 101 answer can
                be held back until the test releases it (.release), so the
                session reaches the relay exactly when the test wants.
                .url .requests (Event: a request head arrived) .stop()
raw_connect     rawws.connect with a chosen SO_RCVBUF (set before connect,
                so the window stays small) for ws:// or wss://.
tcp_queues      (tx_queue, rx_queue, state) of a TCP socket from
                /proc/net/tcp, by its local and remote port (127.0.0.1).
is_listening    whether something listens on 127.0.0.1:port.
split_frames    strict parse of a server-to-client byte stream into frames.
"""

import base64
import os
import socket
import struct
import threading
import time

import rawws
from limitstools import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG,  # noqa: F401
                         server_frame)

TCP_LISTEN = 0x0A


class ScriptBackend:
    def __init__(self, script, hold=False):
        self.script = script
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.requests = threading.Event()
        self.stopping = False
        self.socks = []
        self.errors = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.url = "ws://127.0.0.1:%d" % self.port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(s)
            threading.Thread(target=self._one, args=(s,), daemon=True).start()

    def _one(self, s):
        try:
            s.settimeout(30)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            key = None
            for line in buf.decode("latin-1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "sec-websocket-key":
                    key = v.strip()
            self.requests.set()
            if not self.release.wait(30) or self.stopping:
                return
            s.sendall(("HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: %s\r\n\r\n"
                       % rawws.accept_key(key)).encode())
            self.script(s)
        except OSError as e:
            if not self.stopping:
                self.errors.append(e)

    def stop(self):
        self.stopping = True
        self.release.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


def hold_open(sock, limit=30.0):
    """Keep a backend connection open, reading (and dropping) what comes,
    until EOF or limit seconds."""
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def raw_connect(wsg, rcvbuf=None, timeout=5.0, path="/"):
    """A rawws.RawWS to wsg through a socket whose SO_RCVBUF was set before
    connecting (TLS when wsg runs TLS)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    raw.connect((wsg.host, wsg.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = raw
    if wsg.client_ssl is not None:
        sock = wsg.client_ssl.wrap_socket(raw, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost:%d\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  % (path, wsg.port, key)).encode())
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        d = sock.recv(1)        # byte by byte: nothing past the head is taken
        if not d:
            raise rawws.HandshakeError("closed during the upgrade", head=bytes(buf))
        buf += d
    head = bytes(buf)
    if b" 101 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise rawws.HandshakeError("upgrade refused", head=head)
    assert rawws.accept_key(key).encode() in head, head
    return rawws.RawWS(sock, b"", head)


def _proc_tcp():
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            p = line.split()
            lport = int(p[1].rsplit(":", 1)[1], 16)
            rport = int(p[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in p[4].split(":"))
            rows.append((lport, rport, int(p[3], 16), tx, rx))
    return rows


def tcp_queues(local_port, remote_port):
    """(tx_queue, rx_queue, state) of the socket local_port -> remote_port,
    None when there is none."""
    for lport, rport, st, tx, rx in _proc_tcp():
        if lport == local_port and rport == remote_port:
            return tx, rx, st
    return None


def is_listening(port):
    return any(lport == port and st == TCP_LISTEN
               for lport, _, st, _, _ in _proc_tcp())


def split_frames(data, strict_ops=(OP_BINARY, OP_PING, OP_CLOSE)):
    """Parse a server-to-client stream: [(fin, rsv, opcode, payload)].
    Raises AssertionError at the first malformed frame (masked, reserved
    bits or opcode outside strict_ops); an incomplete tail is returned as
    the second value."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        j = i + 2
        if n == 126:
            if j + 2 > len(data):
                break
            n = struct.unpack_from("!H", data, j)[0]
            j += 2
        elif n == 127:
            if j + 8 > len(data):
                break
            n = struct.unpack_from("!Q", data, j)[0]
            j += 8
        op = b0 & 0x0F
        assert not (b1 & 0x80), "masked server frame at offset %d: %r" % (i, data[i:i + 16])
        assert not (b0 & 0x70), "RSV bits at offset %d: %r" % (i, data[i:i + 16])
        assert op in strict_ops, "opcode %#x at offset %d: %r" % (op, i, data[i:i + 16])
        if j + n > len(data):
            break
        frames.append((bool(b0 & 0x80), (b0 >> 4) & 7, op, bytes(data[j:j + n])))
        i = j + n
    return frames, bytes(data[i:])
