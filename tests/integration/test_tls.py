"""TLS for fleets: certificates chosen by SNI ([tls] extra_certs), client
certificates (client_ca, client_verify = off | optional | required), the
verified identity forwarded to the backend (forward_client_cert), load-time
validation with FILE:LINE, and SIGHUP reloading certificates and CA
without touching live sessions.

Every certificate is made here with python3-cryptography: a server CA and
a client CA, server certificates for exact and wildcard names, client
certificates good, foreign, expired and without clientAuth.
"""
import asyncio
import datetime
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import clean_env, wait_until, wsguard_bin
from helpers import read_head, run, upgrade_head

HEADER = "X-Client-Cert"
DAY = datetime.timedelta(days=1)


# --------------------------------------------------------------------------
# certificates

def name(cn, o=None):
    attrs = []
    if o is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class Cert:
    """A certificate, its key and the PEM files written for it."""

    def __init__(self, cert, key):
        self.cert = cert
        self.key = key
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.sha256 = hashlib.sha256(self.der).hexdigest()

    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self):
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, path, chain=()):
        """One file: the certificate, its chain, then the key."""
        data = self.pem() + b"".join(c.pem() for c in chain) + self.key_pem()
        Path(path).write_bytes(data)
        return str(path)


def issue(subject, issuer=None, sans=(), ca=False, eku=None,
          not_before=None, not_after=None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.utcnow()
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.cert.subject if issuer else subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before or now - DAY)
         .not_valid_after(not_after or now + 30 * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                        critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)),
                            critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    signer = issuer.key if issuer else key
    return Cert(b.sign(signer, hashes.SHA256()), key)


def dns(*names):
    return [x509.DNSName(n) for n in names]


class PKI:
    """Everything the tests use, written to one directory."""

    def __init__(self, d):
        d = Path(d)
        self.dir = d
        self.srv_ca = issue(name("wsguard test server CA"), ca=True)
        self.cli_ca = issue(name("wsguard test client CA"), ca=True)
        self.other_ca = issue(name("someone else's CA"), ca=True)
        self.srv_ca_file = str(d / "server-ca.pem")
        Path(self.srv_ca_file).write_bytes(self.srv_ca.pem())
        self.cli_ca_file = str(d / "client-ca.pem")
        Path(self.cli_ca_file).write_bytes(self.cli_ca.pem())

        srv_eku = [ExtendedKeyUsageOID.SERVER_AUTH]
        self.default = issue(name("localhost"), self.srv_ca,
                             dns("localhost") + [x509.IPAddress(
                                 __import__("ipaddress").ip_address(
                                     "127.0.0.1"))], eku=srv_eku)
        self.default_file = self.default.write(d / "default.pem")
        self.a = issue(name("a.example"), self.srv_ca, dns("a.example"),
                       eku=srv_eku)
        self.a_file = self.a.write(d / "a.pem", chain=[self.srv_ca])
        self.wild = issue(name("b wildcard"), self.srv_ca, dns("*.b.example"),
                          eku=srv_eku)
        self.wild_file = self.wild.write(d / "wild-b.pem")
        self.multi = issue(name("cd"), self.srv_ca,
                           dns("c.example", "d.example"), eku=srv_eku)
        self.multi_file = self.multi.write(d / "cd.pem")

        cli_eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
        import ipaddress
        self.alice = issue(
            name("alice", o="Example"), self.cli_ca,
            [x509.UniformResourceIdentifier("spiffe://example.org/alice"),
             x509.DNSName("alice.example.org"),
             x509.RFC822Name("alice@example.org"),
             x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
             x509.IPAddress(ipaddress.ip_address("2001:db8::7"))],
            eku=cli_eku)
        self.alice_file = self.alice.write(d / "alice.pem")
        # A subject that needs escaping and quoting, a SAN with a control
        # character (left out), no EKU at all (fine for any purpose).
        self.bob = issue(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Zo\u00eb"),
                       x509.NameAttribute(NameOID.COMMON_NAME,
                                          'bob "the, builder"')]),
            self.cli_ca,
            [x509.DNSName("bad\x01name.example"),
             x509.UniformResourceIdentifier("urn:x;y=z")])
        self.bob_file = self.bob.write(d / "bob.pem")
        self.mallory = issue(name("mallory"), self.other_ca,
                             dns("mallory.example"), eku=cli_eku)
        self.mallory_file = self.mallory.write(d / "mallory.pem")
        now = datetime.datetime.utcnow()
        self.expired = issue(name("old"), self.cli_ca, eku=cli_eku,
                             not_before=now - 10 * DAY,
                             not_after=now - DAY)
        self.expired_file = self.expired.write(d / "expired.pem")
        self.server_only = issue(name("svc"), self.cli_ca, eku=srv_eku)
        self.server_only_file = self.server_only.write(d / "server-only.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


def client_ctx(pki, cert_file=None, verify=True, tls12=False):
    if verify:
        ctx = ssl.create_default_context(cafile=pki.srv_ca_file)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def start(wsguard_factory, backend, pki, **over):
    over.setdefault("TLS_CERT", pki.default_file)
    over.setdefault("TLS_KEY", pki.default_file)
    return wsguard_factory(backend.url, **over)


def served_cert(wsg, pki, server_name):
    """The DER certificate wsguard presents for server_name (None: no
    SNI)."""
    ctx = client_ctx(pki, verify=False)
    with socket.create_connection((wsg.host, wsg.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            return s.getpeercert(binary_form=True)


def upgrade(wsg, ctx, server_name="localhost", headers=None):
    """Handshake, send an upgrade, read the answer: the status, or the
    exception that ended it (a TLS alert, a reset)."""
    try:
        with socket.create_connection((wsg.host, wsg.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as s:
                s.sendall(upgrade_head(wsg, headers=headers))
                status, _, _ = read_head(s)
                return status
    except (ssl.SSLError, OSError) as e:
        return e


def opens_with(backend, n, timeout=5):
    got = wait_until(lambda: len(backend.opens()) >= n, timeout)
    assert got, "backend saw %d opens, wanted %d" % (len(backend.opens()), n)
    return backend.opens()


def header_values(rec, name_):
    """Every value of a header the backend received, any spelling of the
    name ('-' or '_', any case)."""
    want = name_.lower().replace("_", "-")
    return [v for n, v in rec["raw_headers"]
            if n.lower().replace("_", "-") == want]


def rejects(wsg, reason):
    return [r for r in wsg.access_log()
            if r.get("event") == "reject" and r.get("reason") == reason]


# --------------------------------------------------------------------------
# SNI

SNI_CASES = [
    ("a.example", "a"),                 # exact
    ("A.Example", "a"),                 # case does not matter
    ("x.b.example", "wild"),            # wildcard: one label
    ("yy-1.b.example", "wild"),
    ("c.example", "multi"),             # either SAN of a file
    ("d.example", "multi"),
    ("b.example", "default"),           # the wildcard needs a label
    ("y.x.b.example", "default"),       # ... exactly one
    ("zzz.example", "default"),         # unknown name
    ("localhost", "default"),
    (None, "default"),                  # no SNI at all
]


def test_sni_picks_the_certificate(wsguard_factory, backend, pki):
    wsg = start(wsguard_factory, backend, pki,
                TLS_EXTRA_CERTS="%s %s %s" % (pki.a_file, pki.wild_file,
                                              pki.multi_file))
    for server_name, which in SNI_CASES:
        want = getattr(pki, which).der
        got = served_cert(wsg, pki, server_name)
        assert got == want, "%s: got the wrong certificate (wanted %s)" % (
            server_name, which)


def test_sni_session_with_hostname_check(wsguard_factory, backend, pki):
    """A client that checks the name gets a certificate for it and a
    working session (the chain in a.pem is served too)."""
    wsg = start(wsguard_factory, backend, pki,
                TLS_EXTRA_CERTS="%s %s" % (pki.a_file, pki.wild_file))

    async def go(host):
        ctx = client_ctx(pki)
        sock = socket.create_connection((wsg.host, wsg.port), timeout=5)
        async with websockets.connect(
                "wss://%s:%d/" % (host, wsg.port), ssl=ctx, sock=sock,
                server_hostname=host, compression=None) as ws:
            await ws.send("hello " + host)
            assert await ws.recv() == "hello " + host

    for host in ("a.example", "q.b.example", "localhost"):
        run(go(host))
    # A name the default certificate does not cover fails the client's
    # own check, as it should.
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((wsg.host, wsg.port), timeout=5) as raw:
            client_ctx(pki).wrap_socket(raw, server_hostname="zzz.example")


# --------------------------------------------------------------------------
# validation (wsguard -t, start)

def check(tmp_path, pki, tls_lines):
    ini = tmp_path / "t.ini"
    ini.write_text("[server]\nlisten = 127.0.0.1:0\n[tls]\ncert = %s\n"
                   "key = %s\n%s[backend]\nurl = ws://127.0.0.1:9\n"
                   % (pki.default_file, pki.default_file, tls_lines))
    r = subprocess.run([wsguard_bin(), "-t", "-c", str(ini)],
                       capture_output=True, text=True, timeout=30,
                       env=clean_env(), stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr, str(ini)


def test_check_accepts_a_full_tls_set(tmp_path, pki):
    rc, out, ini = check(tmp_path, pki,
                         "extra_certs = %s %s\nextra_certs = %s\n"
                         "client_ca = %s\nclient_verify = required\n"
                         "forward_client_cert = %s\n"
                         % (pki.a_file, pki.wild_file, pki.multi_file,
                            pki.cli_ca_file, HEADER))
    assert rc == 0, out
    assert "not supported yet" not in out, out


def test_check_reports_tls_problems_with_lines(tmp_path, pki):
    mismatch = tmp_path / "mismatch.pem"
    mismatch.write_bytes(pki.a.pem() + pki.wild.key_pem())
    twice = tmp_path / "a-again.pem"
    pki.a.write(twice)
    nocert = tmp_path / "ca.pem"
    nocert.write_text("not a certificate\n")
    rc, out, ini = check(
        tmp_path, pki,
        "extra_certs = %s\n"                      # line 6
        "extra_certs = %s %s /nonexistent/x.pem\n"  # line 7
        "client_ca = %s\n"                        # line 8
        "client_verify = optional\n"              # line 9
        "forward_client_cert = X-Forwarded-Cert\n"  # line 10
        % (mismatch, pki.a_file, twice, nocert))
    assert rc == 1, out
    # List keys are blamed on the last line that set them.
    assert ('%s:7: [tls] extra_certs: "%s": private key does not match '
            'the certificate' % (ini, mismatch)) in out, out
    assert ('%s:7: [tls] extra_certs: name "a.example" is served by both '
            '"%s" and "%s"' % (ini, pki.a_file, twice)) in out, out
    assert ('%s:7: [tls] extra_certs: cannot open "/nonexistent/x.pem": '
            'No such file or directory' % ini) in out, out
    assert ('%s:8: [tls] client_ca: "%s": ' % (ini, nocert)) in out, out
    assert ('%s:10: [tls] forward_client_cert: "X-Forwarded-Cert" is a '
            'header wsguard sets or checks itself' % ini) in out, out


@pytest.mark.parametrize("lines,want", [
    ("client_verify = required\n",
     ":6: [tls] client_verify: requires [tls] client_ca"),
    ("forward_client_cert = X-Client-Cert\n",
     ":6: [tls] forward_client_cert: requires [tls] client_verify = "
     "optional or required"),
    ("forward_client_cert = X_Client_Cert\n",
     ":6: [tls] forward_client_cert: invalid header name"),
    ("extra_certs = /tmp\n",
     ':6: [tls] extra_certs: "/tmp": not a regular file'),
])
def test_check_refuses(tmp_path, pki, lines, want):
    rc, out, ini = check(tmp_path, pki, lines)
    assert rc == 1, out
    assert ini + want in out, out


def test_start_refuses_a_name_of_the_default_certificate(tmp_path, pki):
    other = issue(name("localhost"), pki.srv_ca, dns("localhost"))
    f = other.write(tmp_path / "localhost-too.pem")
    rc, out, ini = check(tmp_path, pki, "extra_certs = %s\n" % f)
    assert rc == 1, out
    assert ('%s:6: [tls] extra_certs: "%s": name "localhost" is also '
            'served by [tls] cert "%s"' % (ini, f, pki.default_file)) in out


# --------------------------------------------------------------------------
# client certificates

MISSING = "tls handshake failed: client certificate missing"
NOT_TRUSTED = "tls handshake failed: client certificate not trusted"
EXPIRED = "tls handshake failed: client certificate expired"
NOT_CLIENT = ("tls handshake failed: client certificate not for client "
              "authentication")


def mtls(wsguard_factory, backend, pki, verify, forward=True, **over):
    over["TLS_CLIENT_CA"] = pki.cli_ca_file
    over["TLS_CLIENT_VERIFY"] = verify
    if forward:
        over["TLS_FORWARD_CLIENT_CERT"] = HEADER
    return start(wsguard_factory, backend, pki, **over)


def alice_identity(pki):
    return ("Hash=%s;Subject=\"CN=alice,O=Example\";"
            "URI=spiffe://example.org/alice;DNS=alice.example.org;"
            "Email=alice@example.org;IP=10.0.0.7;IP=2001:db8::7"
            % pki.alice.sha256)


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
def test_required_refuses_without_a_good_certificate(wsguard_factory,
                                                     backend, pki, tls12):
    from admintools import start_admin
    wsg, adm = start_admin(
        wsguard_factory, backend.url, TLS_CERT=pki.default_file,
        TLS_KEY=pki.default_file, TLS_CLIENT_CA=pki.cli_ca_file,
        TLS_CLIENT_VERIFY="required", TLS_FORWARD_CLIENT_CERT=HEADER)
    cases = [
        (None, MISSING),
        (pki.mallory_file, NOT_TRUSTED),
        (pki.expired_file, EXPIRED),
        (pki.server_only_file, NOT_CLIENT),
    ]
    for cert_file, reason in cases:
        r = upgrade(wsg, client_ctx(pki, cert_file, tls12=tls12))
        assert r != 101, (cert_file, r)
        # Refused at the handshake: one reject line with the reason,
        # no HTTP answer, nothing at the backend.
        wsg.wait_access(lambda rec, why=reason: len(rejects(wsg, why)) >= 1)
        assert not isinstance(r, int), (cert_file, r)
    assert backend.opens() == []
    recs = [r for r in wsg.access_log() if r.get("event") == "reject"]
    assert len(recs) == len(cases), recs
    assert all(r.get("status", 0) == 0 for r in recs), recs
    # Counted as TLS refusals.
    assert adm.wait_metric("wsguard_rejections_total", {"reason": "tls"},
                           len(cases)) == len(cases)

    # The good one gets through, and the backend learns who it is.
    r = upgrade(wsg, client_ctx(pki, pki.alice_file, tls12=tls12))
    assert r == 101, r
    rec = opens_with(backend, 1)[0]
    assert header_values(rec, HEADER) == [alice_identity(pki)], rec


def test_optional(wsguard_factory, backend, pki):
    wsg = mtls(wsguard_factory, backend, pki, "optional")
    forged = [(HEADER, "Hash=00;Subject=\"CN=admin\""),
              (HEADER.lower(), "forged-2")]
    # No certificate: a session without identity, and the client's own
    # copies of the header removed.
    assert upgrade(wsg, client_ctx(pki), headers=forged) == 101
    rec = opens_with(backend, 1)[0]
    assert header_values(rec, HEADER) == [], rec
    # A good certificate: the header, once, wsguard's.
    assert upgrade(wsg, client_ctx(pki, pki.alice_file),
                   headers=forged) == 101
    rec = opens_with(backend, 2)[1]
    assert header_values(rec, HEADER) == [alice_identity(pki)], rec
    # A certificate that does not verify is refused even here.
    r = upgrade(wsg, client_ctx(pki, pki.mallory_file))
    assert r != 101
    wsg.wait_access(lambda rec: rejects(wsg, NOT_TRUSTED))
    assert len(backend.opens()) == 2


def test_off_asks_for_no_certificate(wsguard_factory, backend, pki):
    wsg = start(wsguard_factory, backend, pki,
                TLS_CLIENT_CA=pki.cli_ca_file, TLS_CLIENT_VERIFY="off")
    # A client with or without a certificate (even a foreign one) is let
    # in: nothing is asked for or checked.
    for f in (None, pki.mallory_file, pki.alice_file):
        assert upgrade(wsg, client_ctx(pki, f)) == 101, f
    opens_with(backend, 3)


def test_forwarded_identity_format(wsguard_factory, backend, pki):
    """Quoting and escaping: the subject in RFC 2253 form (\\XX for bytes
    over 0x7f) as a quoted string; a SAN with a control character left
    out; a value with ';' or '=' quoted."""
    wsg = mtls(wsguard_factory, backend, pki, "required")
    assert upgrade(wsg, client_ctx(pki, pki.bob_file)) == 101
    rec = opens_with(backend, 1)[0]
    want = ('Hash=%s;Subject="CN=bob \\\\\\"the\\\\, builder\\\\\\",'
            'O=Zo\\\\C3\\\\AB";URI="urn:x;y=z"' % pki.bob.sha256)
    assert header_values(rec, HEADER) == [want], rec
    for n, v in rec["raw_headers"]:
        assert all(0x20 <= ord(ch) < 0x7f for ch in v), (n, v)


@pytest.mark.parametrize("underscores", ["no", "yes"])
def test_client_copies_never_reach_the_backend(wsguard_factory, backend, pki,
                                               underscores):
    """Whatever spelling the client uses, the backend sees wsguard's
    header only (with allow_underscore_headers = yes the '_' spelling
    would otherwise be forwarded)."""
    wsg = mtls(wsguard_factory, backend, pki, "optional",
               SERVER_ALLOW_UNDERSCORE_HEADERS=underscores)
    forged = [("X-CLIENT-CERT", "a"), ("x_client_cert", "b"),
              ("X_Client-Cert", "c"), ("X-Client_Cert", "d"),
              ("X-Other", "kept")]
    for n, f in enumerate((pki.alice_file, None)):
        assert upgrade(wsg, client_ctx(pki, f), headers=forged) == 101
        rec = opens_with(backend, n + 1)[n]
        got = header_values(rec, HEADER)
        assert got == ([alice_identity(pki)] if f else []), rec
        assert header_values(rec, "X-Other") == ["kept"], rec


def test_identity_with_jwt_claims(wsguard_factory, backend, pki):
    """The certificate header and the claim headers go together."""
    import jwt as pyjwt
    import time
    secret = "wsguard-test-secret-0123456789-abcdefghij"
    wsg = mtls(wsguard_factory, backend, pki, "required",
               JWT_ENABLED="yes", JWT_SECRET=secret, JWT_ALGORITHMS="HS256")
    tok = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 300},
                       secret, algorithm="HS256")
    assert upgrade(wsg, client_ctx(pki, pki.alice_file),
                   headers=[("Authorization", "Bearer " + tok)]) == 101
    rec = opens_with(backend, 1)[0]
    assert header_values(rec, HEADER) == [alice_identity(pki)], rec
    assert header_values(rec, "X-User-Id") == ["alice"], rec


# --------------------------------------------------------------------------
# reload

def reloads(wsg):
    return wsg.stderr_text().count("configuration reloaded")


def sighup(wsg, want_ok=True):
    before = reloads(wsg)
    failed = wsg.stderr_text().count("reload failed")
    os.kill(wsg.pid, signal.SIGHUP)
    if want_ok:
        assert wait_until(lambda: reloads(wsg) > before, 10), \
            wsg.stderr_text()[-3000:]
    else:
        assert wait_until(
            lambda: wsg.stderr_text().count("reload failed") > failed, 10), \
            wsg.stderr_text()[-3000:]


def test_sighup_reloads_certificates_and_ca(wsguard_factory, backend, pki,
                                            tmp_path):
    a_file = tmp_path / "a.pem"
    pki.a.write(a_file)
    ca_file = tmp_path / "client-ca.pem"
    ca_file.write_bytes(pki.cli_ca.pem())
    default_file = tmp_path / "default.pem"
    pki.default.write(default_file)
    wsg = start(wsguard_factory, backend, pki, TLS_CERT=str(default_file),
                TLS_KEY=str(default_file), TLS_EXTRA_CERTS=str(a_file),
                TLS_CLIENT_CA=str(ca_file), TLS_CLIENT_VERIFY="required",
                TLS_FORWARD_CLIENT_CERT=HEADER)
    assert served_cert(wsg, pki, "a.example") == pki.a.der

    async def session():
        ctx = client_ctx(pki, pki.alice_file)
        sock = socket.create_connection((wsg.host, wsg.port), timeout=5)
        async with websockets.connect(
                "wss://a.example:%d/" % wsg.port, ssl=ctx, sock=sock,
                server_hostname="a.example", compression=None) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            # New certificates, a new client CA, a new default.
            new_a = issue(name("a.example"), pki.srv_ca, dns("a.example"))
            new_a.write(a_file)
            new_default = issue(name("localhost"), pki.srv_ca,
                                dns("localhost"))
            new_default.write(default_file)
            new_ca = issue(name("new client CA"), ca=True)
            ca_file.write_bytes(new_ca.pem())
            carol = issue(name("carol"), new_ca, eku=[
                ExtendedKeyUsageOID.CLIENT_AUTH])
            carol_file = carol.write(tmp_path / "carol.pem")
            await asyncio.get_running_loop().run_in_executor(
                None, sighup, wsg)
            # The live session, accepted under the old certificates and
            # CA, goes on.
            for i in range(3):
                await ws.send("after %d" % i)
                assert await ws.recv() == "after %d" % i
            return new_a, new_default, carol, carol_file

    new_a, new_default, carol, carol_file = run(session())
    # New connections get the new certificates...
    assert served_cert(wsg, pki, "a.example") == new_a.der
    assert served_cert(wsg, pki, None) == new_default.der
    # ... and are verified against the new CA: alice (old CA) is refused,
    # carol (new CA) gets in with her identity.
    r = upgrade(wsg, client_ctx(pki, pki.alice_file), "a.example")
    assert r != 101
    wsg.wait_access(lambda rec: rejects(wsg, NOT_TRUSTED))
    n = len(backend.opens())
    assert upgrade(wsg, client_ctx(pki, carol_file), "a.example") == 101
    rec = opens_with(backend, n + 1)[n]
    assert header_values(rec, HEADER)[0].startswith(
        "Hash=%s;Subject=\"CN=carol\"" % carol.sha256), rec
    # The first session ended normally, with its messages.
    sess = wsg.wait_access(lambda r: r.get("event") == "session")
    assert sess["msgs_in"] == 4, sess


def test_sighup_with_a_broken_file_keeps_the_old_certificates(
        wsguard_factory, backend, pki, tmp_path):
    a_file = tmp_path / "a.pem"
    pki.a.write(a_file)
    wsg = start(wsguard_factory, backend, pki, TLS_EXTRA_CERTS=str(a_file))
    assert served_cert(wsg, pki, "a.example") == pki.a.der
    # A certificate with the key of another one.
    a_file.write_bytes(issue(name("a.example"), pki.srv_ca,
                             dns("a.example")).pem() + pki.wild.key_pem())
    sighup(wsg, want_ok=False)
    msgs = [json.loads(line).get("msg", "")
            for line in wsg.stderr_text().splitlines() if line.startswith("{")]
    want = ('env WSGUARD_TLS_EXTRA_CERTS: [tls] extra_certs: "%s": private '
            'key does not match the certificate' % a_file)
    assert any(m.startswith(want) for m in msgs), msgs
    assert served_cert(wsg, pki, "a.example") == pki.a.der
    assert upgrade(wsg, client_ctx(pki), "a.example") == 101


def test_resumed_session_keeps_its_identity_until_a_reload(
        wsguard_factory, backend, pki):
    """A TLS session resumed from a ticket carries the certificate of its
    first handshake (the header is still sent); after SIGHUP the old
    tickets no longer resume, so the client is verified again."""
    wsg = mtls(wsguard_factory, backend, pki, "required")
    ctx = client_ctx(pki, pki.alice_file)

    def once(session=None):
        with socket.create_connection((wsg.host, wsg.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost",
                                 session=session) as s:
                s.sendall(upgrade_head(wsg))
                status, _, _ = read_head(s)
                return status, s.session, s.session_reused

    status, sess, reused = once()
    assert status == 101 and not reused
    status, _, reused = once(sess)
    assert status == 101 and reused
    recs = opens_with(backend, 2)
    for rec in recs:
        assert header_values(rec, HEADER) == [alice_identity(pki)], rec
    sighup(wsg)
    status, _, reused = once(sess)
    assert status == 101 and not reused


# --------------------------------------------------------------------------
# the TLS 1.3 session ticket leaves with the 101

def data_segments_in(sock):
    """Segments with data that sock has received (struct tcp_info's
    tcpi_data_segs_in, Linux 4.6 and later)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 152)[0]


def test_session_ticket_leaves_with_the_101(wsguard_factory, backend, pki):
    """wsguard writes the ticket as the TLS 1.3 handshake completes, with
    MSG_MORE: the kernel keeps it until the 101 and sends both in one
    segment. The client receives two segments with data (the server's
    flight, then ticket and 101), not three. The kernel sends held bytes on
    their own after about 200 ms (on loopback), so a try whose 101 took
    longer (a loaded machine) is not judged."""
    wsg = start(wsguard_factory, backend, pki)
    ctx = client_ctx(pki)
    judged = []
    for _ in range(10):
        with socket.create_connection((wsg.host, wsg.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.version() == "TLSv1.3"
                t0 = time.monotonic()
                s.sendall(upgrade_head(wsg))
                status, _, _ = read_head(s)
                took = time.monotonic() - t0
                assert status == 101
                assert s.session is not None and s.session.has_ticket
                if took < 0.15:
                    judged.append(data_segments_in(s))
        if len(judged) >= 3:
            break
    # ten 101s all later than 150 ms: the 101 itself is held back
    assert judged, "no 101 came within 150 ms of the handshake in 10 tries"
    assert judged == [2] * len(judged), judged
