"""sectools - helpers for wsguard's security tests.

JWTs (PyJWT where it will sign what we want, hand-made where an attack
needs a token PyJWT refuses to make), keys written as PEM / JWKS files,
PROXY protocol v1/v2 header builders, and assertions that a refusal left
no trace at the backend and no token text in wsguard's logs.

    from sectools import (b64u, hs_token, raw_token, Keys, proxy_v1, proxy_v2,
                          attempt, expect_open, raw_values,
                          assert_refused, assert_no_secret_in_logs)
"""

import base64
import hashlib
import hmac
import json
import socket
import ssl
import struct
import time
from pathlib import Path

import jwt  # PyJWT (Debian python3-jwt 2.6)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature)

from helpers import http_exchange, read_head, upgrade_head

# A 40-byte HS256 secret (wsguard insists on >= 32 bytes).
SECRET = "wsguard-test-secret-0123456789-abcdefghij"
OTHER_SECRET = "some-other-secret-0123456789-abcdefghijkl"


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub="alice", ttl=300, **extra):
    """A claim set valid now: sub, iat, exp = now + ttl (ttl None: no exp)."""
    now = int(time.time())
    c = {"sub": sub, "iat": now}
    if ttl is not None:
        c["exp"] = now + ttl
    c.update(extra)
    return c


def hs_token(payload=None, secret=SECRET, alg="HS256", headers=None):
    return jwt.encode(claims() if payload is None else payload, secret,
                      algorithm=alg, headers=headers)


def raw_token(header, payload, sign=None):
    """header.payload.signature from dicts (or ready-made segment strings);
    sign(signing_input_bytes) -> signature bytes; None: empty signature."""
    h = header if isinstance(header, str) else b64u(json.dumps(header, separators=(",", ":")))
    p = payload if isinstance(payload, str) else b64u(json.dumps(payload, separators=(",", ":")))
    si = ("%s.%s" % (h, p)).encode()
    sig = b"" if sign is None else sign(si)
    return "%s.%s.%s" % (h, p, b64u(sig))


def hmac_signer(key, digest=hashlib.sha256):
    if isinstance(key, str):
        key = key.encode()
    return lambda si: hmac.new(key, si, digest).digest()


class Keys:
    """Freshly generated asymmetric keys, public halves written to dir."""

    def __init__(self, directory):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa_pub = self._write("rsa.pub.pem", self.rsa)
        self.ec_pub = self._write("ec.pub.pem", self.ec)
        self.ed_pub = self._write("ed.pub.pem", self.ed)

    def _write(self, name, key):
        p = self.dir / name
        p.write_bytes(pem_public(key))
        return str(p)

    def jwks(self, name="jwks.json"):
        """A JWKS with two RSA keys, kid "k1" (self.rsa) and "k2" (self.rsa2)."""
        keys = []
        for kid, k in (("k1", self.rsa), ("k2", self.rsa2)):
            j = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
            j.update({"kid": kid, "use": "sig", "alg": "RS256"})
            keys.append(j)
        p = self.dir / name
        p.write_text(json.dumps({"keys": keys}))
        return str(p)


def pem_public(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def es256_der_signer(ec_key):
    """An ES256 signer that (wrongly, per RFC 7518 §3.4) emits the DER
    encoding instead of raw r||s."""
    return lambda si: ec_key.sign(si, ec.ECDSA(hashes.SHA256()))


def es256_raw_signer(ec_key):
    def sign(si):
        r, s = decode_dss_signature(ec_key.sign(si, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return sign


# --------------------------------------------------------------------------
# PROXY protocol

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(src, dst=None, sport=40000, dport=443):
    fam = "TCP6" if ":" in src else "TCP4"
    if dst is None:
        dst = "::1" if fam == "TCP6" else "127.0.0.1"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def proxy_v2(src, dst="127.0.0.1", sport=40000, dport=443, tlvs=b""):
    if ":" in src:
        fam = 0x21
        addr = (socket.inet_pton(socket.AF_INET6, src)
                + socket.inet_pton(socket.AF_INET6, dst if ":" in dst else "::1")
                + struct.pack("!HH", sport, dport))
    else:
        fam = 0x11
        addr = (socket.inet_aton(src) + socket.inet_aton(dst)
                + struct.pack("!HH", sport, dport))
    body = addr + tlvs
    return PROXY_V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def proxied_connect(wsg, preamble, timeout=5.0):
    """TCP connect, send preamble (PROXY header) in clear, then TLS."""
    sock = socket.create_connection((wsg.host, wsg.port), timeout=timeout)
    sock.sendall(preamble)
    if wsg.tls:
        sock = wsg.client_ssl.wrap_socket(sock, server_hostname="localhost")
    sock.settimeout(timeout)
    return sock


def upgrade_status(sock, head, timeout=5.0):
    sock.sendall(head)
    return read_head(sock, timeout=timeout)


# --------------------------------------------------------------------------
# upgrades and what the backend saw

def attempt(wsg, path="/", headers=None, timeout=5.0):
    """One upgrade over a fresh connection: (status, headers, raw head)."""
    return http_exchange(wsg, upgrade_head(wsg, path=path, headers=headers),
                         timeout=timeout)


def expect_open(backend, n=1, timeout=5.0):
    """Wait for the n-th backend open event and return it."""
    backend.wait_record(lambda r: r.get("event") == "open"
                        and r.get("conn") == n, timeout=timeout)
    return [r for r in backend.opens() if r.get("conn") == n][0]


def raw_values(op, name):
    """Every value of header name (any case) the backend received, one per
    header line, in order."""
    return [v for n, v in op["raw_headers"] if n.lower() == name.lower()]


# --------------------------------------------------------------------------
# assertions

def assert_refused(wsg, backend, status, n_rejects=None, timeout=5.0):
    """The access log holds a reject line with this status and the
    backend recorded no open event. Returns the reject record."""
    rec = wsg.wait_access(lambda r: r.get("event") == "reject"
                          and r.get("status") == status, timeout=timeout)
    assert isinstance(rec.get("reason"), str) and rec["reason"], rec
    if n_rejects is not None:
        rejects = [r for r in wsg.access_log() if r.get("event") == "reject"]
        assert len(rejects) == n_rejects, rejects
    assert backend.opens() == [], backend.opens()
    return rec


def token_pieces(token):
    """The parts of a token that must never be logged: the whole token and
    its signature segment (when long enough to be unambiguous)."""
    out = [token]
    parts = token.split(".")
    if len(parts) == 3 and len(parts[2]) >= 16:
        out.append(parts[2])
    return out


def assert_no_secret_in_logs(wsg, *secrets):
    text = wsg.stdout_text() + "\n" + wsg.stderr_text()
    for s in secrets:
        if not s:
            continue
        for piece in token_pieces(s):
            assert piece not in text, "token text %r... found in wsguard's logs" % piece[:24]
