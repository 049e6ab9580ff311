"""rawws - a small synchronous raw WebSocket client for conformance tests.

It speaks RFC 6455 at the byte level over a real socket (optionally TLS) so
tests can send exactly the frames they want, legal or not: any opcode, RSV
bits, unmasked frames, a length field that lies, frames split over many
writes. It never validates what it is asked to send.

    ws = rawws.connect("localhost", port, ssl_ctx)        # ssl_ctx=None: ws://
    ws.send_frame(rawws.OP_TEXT, b"hello")
    msg = ws.recv_message(timeout=5)                       # Message(opcode, payload)
    code, reason, tcp_closed = ws.expect_close(timeout=5)

Every wait is bounded by a deadline; nothing sleeps to synchronise. Reads
raise Timeout when the deadline passes and Closed on EOF (or a reset).
"""

import base64
import collections
import hashlib
import os
import socket
import ssl
import struct
import time

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Frame = collections.namedtuple("Frame", "fin rsv opcode payload")
Message = collections.namedtuple("Message", "opcode payload")
CloseResult = collections.namedtuple("CloseResult", "code reason tcp_closed")


class WSError(Exception):
    """Base class of every rawws error."""


class HandshakeError(WSError):
    def __init__(self, msg, status=None, head=b""):
        super().__init__(msg)
        self.status = status
        self.head = head


class Timeout(WSError):
    """The deadline passed before the expected bytes arrived."""


class Closed(WSError):
    """The peer closed the TCP connection (EOF or reset)."""


class ProtocolError(WSError):
    """The peer sent something RFC 6455 forbids a server to send."""


class CloseReceived(WSError):
    """A close frame arrived where a data message was expected."""

    def __init__(self, code, reason, payload):
        super().__init__("close frame received: code=%r reason=%r" % (code, reason))
        self.code = code
        self.reason = reason
        self.payload = payload


_EOF_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
               ssl.SSLEOFError, ssl.SSLZeroReturnError)


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (str)."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def mask_bytes(payload, key):
    """XOR payload with the 4-byte key (RFC 6455 §5.3)."""
    if not payload:
        return b""
    n = len(payload)
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")


def build_frame(opcode, payload=b"", fin=True, rsv=0, mask=True,
                masking_key=None, length_override=None):
    """Return the bytes of one frame.

    rsv is a 3-bit value (4 = RSV1, 2 = RSV2, 1 = RSV3). length_override
    puts another length in the header than len(payload) (the payload bytes
    are still the ones given), to announce more than is ever sent.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    payload = bytes(payload)
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4) if masking_key is None else bytes(masking_key)
        return head + key + mask_bytes(payload, key)
    return head + payload


def close_payload(code=None, reason=b""):
    """Payload of a close frame: b"" when code is None."""
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


class RawWS:
    """One client connection after a successful upgrade."""

    def __init__(self, sock, leftover=b"", response_head=b""):
        self.sock = sock
        self._buf = bytearray(leftover)
        self.response_head = response_head
        self.eof = False
        self.close_sent = False
        self.close_received = None      # CloseResult-ish (code, reason) once seen
        self.controls = []              # ping/pong frames met by recv_message
        self.skipped = []               # frames expect_close skipped over
        self.last_frame_masked = False
        self._frag_opcode = None
        self._frag_parts = []

    # -- sending ----------------------------------------------------------

    def send_raw(self, data, timeout=10.0):
        """Send bytes as they are (one sendall)."""
        self.sock.settimeout(timeout)
        self.sock.sendall(bytes(data))

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True,
                   masking_key=None, length_override=None, timeout=10.0):
        data = build_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask,
                           masking_key=masking_key,
                           length_override=length_override)
        self.send_raw(data, timeout=timeout)
        if opcode == OP_CLOSE:
            self.close_sent = True
        return data

    def send_chunked(self, data, chunk_sizes, timeout=30.0):
        """Send data in several sequential writes (each its own TLS record).

        chunk_sizes is an int (every chunk that size) or a list of sizes
        used in turn, the last one repeating until data is exhausted.
        """
        if isinstance(chunk_sizes, int):
            chunk_sizes = [chunk_sizes]
        sizes = list(chunk_sizes)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError("chunk sizes must be positive")
        data = bytes(data)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        pos = i = 0
        while pos < len(data):
            size = sizes[min(i, len(sizes) - 1)]
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.sock.sendall(data[pos:pos + size])
            pos += size
            i += 1

    def send_text(self, text, **kw):
        return self.send_frame(OP_TEXT, text.encode("utf-8") if isinstance(text, str) else text, **kw)

    def send_binary(self, data, **kw):
        return self.send_frame(OP_BINARY, data, **kw)

    def send_close(self, code=None, reason=b"", **kw):
        return self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    # -- receiving --------------------------------------------------------

    def _fill(self, deadline):
        """Read more bytes into the buffer; raise Timeout or Closed."""
        if self.eof:
            raise Closed("connection already closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout("timed out") from None
        except _EOF_ERRORS as e:
            self.eof = True
            raise Closed("connection closed by peer (%s)" % type(e).__name__) from None
        except ssl.SSLError as e:
            self.eof = True
            raise Closed("TLS error: %s" % e) from None
        if not data:
            self.eof = True
            raise Closed("connection closed by peer (EOF)")
        self._buf += data

    def _need(self, n, deadline):
        while len(self._buf) < n:
            self._fill(deadline)

    def recv_frame(self, timeout=5.0):
        """Receive one frame: Frame(fin, rsv, opcode, payload).

        Raises Timeout or Closed (a frame cut by EOF raises Closed too).
        """
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self._buf[0], self._buf[1]
        n = b1 & 0x7F
        masked = bool(b1 & 0x80)
        hl = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack_from("!H", self._buf, 2)[0]
            hl = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack_from("!Q", self._buf, 2)[0]
            hl = 10
        if masked:
            hl += 4
        self._need(hl + n, deadline)
        payload = bytes(self._buf[hl:hl + n])
        if masked:
            payload = mask_bytes(payload, bytes(self._buf[hl - 4:hl]))
        del self._buf[:hl + n]
        self.last_frame_masked = masked
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload)

    @staticmethod
    def parse_close(payload):
        """(code, reason) of a close payload; code None when empty."""
        if len(payload) == 0:
            return None, ""
        if len(payload) == 1:
            raise ProtocolError("close payload of 1 byte")
        code = struct.unpack("!H", payload[:2])[0]
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("close reason is not UTF-8: %r" % payload[2:]) from None
        return code, reason

    def recv_message(self, timeout=5.0, return_control=False):
        """Receive one data message: Message(opcode, payload), fragments joined.

        Ping and pong frames met on the way are appended to self.controls as
        Frame objects, or, with return_control=True, returned at once as a
        Message(OP_PING/OP_PONG, payload) (a fragmented message in progress
        is kept and continued by the next call). A close frame raises
        CloseReceived (and is remembered for expect_close).
        """
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.rsv:
                raise ProtocolError("server frame with RSV bits %d" % f.rsv)
            if f.opcode in (OP_PING, OP_PONG):
                if not f.fin:
                    raise ProtocolError("fragmented control frame from server")
                if return_control:
                    return Message(f.opcode, f.payload)
                self.controls.append(f)
                continue
            if f.opcode == OP_CLOSE:
                code, reason = self.parse_close(f.payload)
                self.close_received = (code, reason, f.payload)
                raise CloseReceived(code, reason, f.payload)
            if f.opcode in (OP_TEXT, OP_BINARY):
                if self._frag_opcode is not None:
                    raise ProtocolError("new data frame inside a fragmented message")
                if f.fin:
                    return Message(f.opcode, f.payload)
                self._frag_opcode = f.opcode
                self._frag_parts = [f.payload]
                continue
            if f.opcode == OP_CONT:
                if self._frag_opcode is None:
                    raise ProtocolError("continuation frame without a message")
                self._frag_parts.append(f.payload)
                if f.fin:
                    msg = Message(self._frag_opcode, b"".join(self._frag_parts))
                    self._frag_opcode = None
                    self._frag_parts = []
                    return msg
                continue
            raise ProtocolError("server frame with reserved opcode %#x" % f.opcode)

    def expect_close(self, timeout=5.0, echo=True):
        """Wait for the peer's close frame: CloseResult(code, reason, tcp_closed).

        Frames before the close are kept in self.skipped. Then, unless we
        already sent a close (or echo=False), a close frame echoing the
        received payload is sent, and we wait (within what is left of the
        same timeout) for the server to close the TCP connection:
        tcp_closed is True when it did. code is None for an empty close.
        Raises Timeout if no close frame arrives, Closed if the TCP
        connection ends without one.
        """
        deadline = time.monotonic() + timeout
        if self.close_received is not None:
            code, reason, payload = self.close_received
        else:
            while True:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
                if f.opcode == OP_CLOSE:
                    code, reason = self.parse_close(f.payload)
                    payload = f.payload
                    self.close_received = (code, reason, payload)
                    break
                self.skipped.append(f)
        if echo and not self.close_sent:
            try:
                self.send_frame(OP_CLOSE, payload,
                                timeout=max(0.05, deadline - time.monotonic()))
            except (OSError, ssl.SSLError):
                pass
        closed = self.is_closed(max(0.0, deadline - time.monotonic()))
        return CloseResult(code, reason, closed)

    def is_closed(self, timeout=2.0):
        """True if the peer closes the TCP connection within timeout.

        Bytes that arrive meanwhile stay buffered (recv_frame still sees
        them).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.eof:
                return True
            try:
                self._fill(deadline)
            except Closed:
                return True
            except Timeout:
                return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(host, port, ssl_ctx=None, path="/", headers=None, timeout=5.0,
            server_hostname="localhost"):
    """Open a TCP (and TLS when ssl_ctx is given) connection and upgrade it.

    headers: extra request headers (dict or list of pairs). Raises
    HandshakeError unless the answer is a 101 with the right
    Sec-WebSocket-Accept.
    """
    deadline = time.monotonic() + timeout
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_ctx is not None:
            raw.settimeout(max(0.05, deadline - time.monotonic()))
            sock = ssl_ctx.wrap_socket(raw, server_hostname=server_hostname)
        else:
            sock = raw
    except BaseException:
        raw.close()
        raise
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        hostport = "%s:%d" % (server_hostname if ssl_ctx is not None else host, port)
        lines = ["GET %s HTTP/1.1" % path,
                 "Host: %s" % hostport,
                 "Upgrade: websocket",
                 "Connection: Upgrade",
                 "Sec-WebSocket-Key: %s" % key,
                 "Sec-WebSocket-Version: 13"]
        if headers:
            items = headers.items() if hasattr(headers, "items") else headers
            lines += ["%s: %s" % (k, v) for k, v in items]
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HandshakeError("timed out waiting for the upgrade answer", head=bytes(buf))
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise HandshakeError("timed out waiting for the upgrade answer", head=bytes(buf)) from None
            except _EOF_ERRORS:
                data = b""
            if not data:
                raise HandshakeError("connection closed during the upgrade", head=bytes(buf))
            buf += data
        end = buf.index(b"\r\n\r\n") + 4
        head, leftover = bytes(buf[:end]), bytes(buf[end:])
        text = head.decode("latin-1")
        status_line, _, rest = text.partition("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        hdrs = {}
        for line in rest.split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs.setdefault(k.strip().lower(), v.strip())
        if status != 101:
            raise HandshakeError("upgrade refused: %s" % status_line, status=status, head=head)
        if hdrs.get("sec-websocket-accept") != accept_key(key):
            raise HandshakeError("bad Sec-WebSocket-Accept: %r" % hdrs.get("sec-websocket-accept"),
                                 status=status, head=head)
        if "websocket" not in hdrs.get("upgrade", "").lower():
            raise HandshakeError("101 without Upgrade: websocket", status=status, head=head)
    except BaseException:
        sock.close()
        raise
    ws = RawWS(sock, leftover, head)
    ws.response_headers = hdrs
    return ws
