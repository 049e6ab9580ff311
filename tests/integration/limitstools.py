"""Helpers for test_limits.py.

RawBackend  an in-process, frame-level ws:// backend that records every
            frame wsguard sends it (data, ping, pong, close), so tests can
            see what did or did not cross the proxy (the echo backend does
            not observe pings or pongs). Modes:
              "echo"   echo data frames (same opcode and FIN), answer pings
                       with pongs, answer a close with a close;
              "flood"  once upgraded, send binary frames as fast as the
                       connection takes them, until a close frame arrives.
            .url  .events()  .frames(opcode=None)  .closes()
            .wait(pred, timeout)  .stop()

start_wsguard_limited(...)  start wsguard like conftest does, but with a
            resource limit (RLIMIT_NOFILE) applied in the child.

cpu_seconds(pid)  user + system CPU time of a process, from /proc.
"""

import base64
import hashlib
import os
import resource
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from conftest import (LISTEN_RE, REPO, Wsguard, clean_env, override_env,
                      wait_until, write_ini, wsguard_bin)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def _unmask(payload, key):
    if not payload:
        return b""
    n = len(payload)
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")


def server_frame(opcode, payload=b"", fin=True):
    """An unmasked (server-to-client) frame."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


class _Conn:
    def __init__(self, backend, sock, num):
        self.backend = backend
        self.sock = sock
        self.num = num
        self.buf = bytearray()
        self.wlock = threading.Lock()
        self.closing = threading.Event()
        self.sent_close = False

    def send(self, data):
        with self.wlock:
            if self.sent_close:
                return
            self.sock.sendall(data)

    def send_close(self, payload):
        with self.wlock:
            if self.sent_close:
                return
            self.sent_close = True
            self.sock.sendall(server_frame(OP_CLOSE, payload))

    def _need(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(262144)
            if not data:
                raise EOFError
            self.buf += data

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        end = self.buf.index(b"\r\n\r\n") + 4
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end]
        key = None
        for line in head.split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                if k.strip().lower() == "sec-websocket-key":
                    key = v.strip()
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.sock.sendall(("HTTP/1.1 101 Switching Protocols\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        return head

    def read_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            self._need(4)
            n = struct.unpack_from("!H", self.buf, 2)[0]
            hl = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack_from("!Q", self.buf, 2)[0]
            hl = 10
        masked = bool(b1 & 0x80)
        if masked:
            hl += 4
        self._need(hl + n)
        payload = bytes(self.buf[hl:hl + n])
        if masked:
            payload = _unmask(payload, bytes(self.buf[hl - 4:hl]))
        del self.buf[:hl + n]
        self.last_rsv = (b0 >> 4) & 7
        return bool(b0 & 0x80), b0 & 0x0F, masked, payload

    def run(self):
        b = self.backend
        try:
            head = self.read_head()
        except (EOFError, OSError):
            return
        b._record(event="open", conn=self.num, head=head)
        if b.mode == "flood":
            threading.Thread(target=self.flood, daemon=True).start()
        try:
            while True:
                fin, op, masked, payload = self.read_frame()
                rec = dict(event="frame", conn=self.num, opcode=op, fin=fin,
                           rsv=self.last_rsv,
                           masked=masked, len=len(payload),
                           sha256=hashlib.sha256(payload).hexdigest())
                if op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    rec.update(code=code, reason=payload[2:].decode("utf-8", "replace"))
                b._record(**rec)
                if op == OP_CLOSE:
                    self.closing.set()
                    b._record(event="close", conn=self.num, code=rec["code"],
                              reason=rec["reason"])
                    self.send_close(payload[:2])
                    break
                if b.mode == "echo":
                    if op in (OP_TEXT, OP_BINARY, OP_CONT):
                        self.send(server_frame(op, payload, fin))
                    elif op == OP_PING:
                        self.send(server_frame(OP_PONG, payload))
            # wait for wsguard to close the TCP connection
            self.sock.settimeout(10)
            while self.sock.recv(65536):
                pass
            b._record(event="eof", conn=self.num)
        except (EOFError, OSError):
            b._record(event="eof", conn=self.num)
        finally:
            self.closing.set()
            try:
                self.sock.close()
            except OSError:
                pass

    def flood(self):
        chunk = server_frame(OP_BINARY, os.urandom(self.backend.flood_size))
        try:
            while not self.closing.is_set() and not self.backend.stopping:
                with self.wlock:
                    if self.sent_close:
                        break
                    self.sock.sendall(chunk)
                self.backend.flood_sent += len(chunk)
        except OSError:
            pass


class RawBackend:
    def __init__(self, mode="echo", flood_size=65536):
        self.mode = mode
        self.flood_size = flood_size
        self.flood_sent = 0
        self.stopping = False
        self._lock = threading.Lock()
        self._events = []
        self._conns = []
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.url = "ws://127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _record(self, **ev):
        ev["t"] = time.monotonic()
        with self._lock:
            self._events.append(ev)

    def _accept(self):
        n = 0
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            n += 1
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _Conn(self, s, n)
            self._conns.append(c)
            threading.Thread(target=c.run, daemon=True).start()

    def events(self):
        with self._lock:
            return list(self._events)

    def frames(self, opcode=None):
        return [e for e in self.events() if e["event"] == "frame"
                and (opcode is None or e["opcode"] == opcode)]

    def data_frames(self):
        return [e for e in self.frames() if e["opcode"] in (OP_CONT, OP_TEXT, OP_BINARY)]

    def closes(self):
        return [e for e in self.events() if e["event"] == "close"]

    def wait(self, pred, timeout=5.0):
        def find():
            for e in self.events():
                if pred(e):
                    return e
            return None
        e = wait_until(find, timeout)
        assert e is not None, "no matching raw-backend event within %.1fs: %r" % (
            timeout, [{k: v for k, v in x.items() if k != "head"} for x in self.events()][-40:])
        return e

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in self._conns:
            c.closing.set()
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def cpu_seconds(pid):
    """utime + stime of a process in seconds (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is the state (field 3); utime is field 14, stime field 15
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_wsguard_limited(tmp_path, certs, client_ssl, backend_url, nofile,
                          timeout=10.0, **overrides):
    """Start wsguard as conftest.start_wsguard does, with RLIMIT_NOFILE set
    to nofile in the child. The caller must stop it (.stop() or .kill())."""
    tmp = Path(tmp_path)
    ini = write_ini(tmp / "wsguard-limited.ini", certs, backend_url)
    out_path = tmp / "wsguard-limited.access.log"
    err_path = tmp / "wsguard-limited.err.log"
    env = clean_env(override_env(overrides))

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([wsguard_bin(), "-c", ini], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                preexec_fn=limit)
    w = Wsguard(proc, ini, out_path, err_path, True, client_ssl)
    wait_until(lambda: LISTEN_RE.findall(w.stderr_text()) or proc.poll() is not None,
               timeout)
    found = LISTEN_RE.findall(w.stderr_text())
    if not found:
        w.kill()
        raise AssertionError("wsguard (RLIMIT_NOFILE=%d) did not start: %s"
                             % (nofile, w.stderr_text()[-3000:]))
    w.listens = [(h, int(p)) for h, p in found]
    w._set_listen(*w.listens[0])
    return w
