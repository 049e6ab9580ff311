"""Identity smuggling: the request the backend receives is the request that
was checked, in canonical form.

Each class of hole gets requests that pass every upgrade check in a naive
proxy and still deliver something unverified; each test asserts on what
the recording backend actually received (or that it received nothing),
on the status and the access-log reason, and that no token text is in
wsguard's logs.

  1. a second, unverified token beside the verified one (other spellings
     of the name, other sources), and every other Cookie and protocol
     header kept;
  2. route bypasses by spelling the path differently (normalised and
     routed as such, or refused with 400);
  3. fixed-size tables that stop enforcing (forward_claims over 8 pairs,
     a long X-Forwarded-For, a long echoed protocol token, a long sub);
  4. header names that frameworks read as equal ('_' for '-'), and
     Connection listings of headers wsguard checked;
  5. out-of-range NumericDates;
  6. refusals without an answer still have their reason in the log.
"""

import json
import socket
import subprocess

import pytest

from conftest import clean_env, wsguard_bin, write_ini
from helpers import raw_connect, read_head, upgrade_head, wait_eof
from sectools import (OTHER_SECRET, SECRET, assert_no_secret_in_logs,
                      assert_refused, attempt, claims, expect_open,
                      hmac_signer, hs_token, raw_token, raw_values)

JWT_BASE = {"JWT_ENABLED": "yes", "JWT_ALGORITHMS": "HS256",
            "JWT_SECRET": SECRET}


def good():
    return hs_token(claims(sub="alice"))


def forged():
    """A token wsguard must never let through: signed with another key,
    claiming to be admin."""
    return hs_token(claims(sub="admin"), secret=OTHER_SECRET)


def refused_as(wsg, backend, status, reason, *tokens):
    rec = assert_refused(wsg, backend, status, n_rejects=1)
    assert rec["reason"] == reason, rec
    assert_no_secret_in_logs(wsg, *tokens)
    return rec


# ==========================================================================
# 1. A second, unverified token

SECOND_TOKEN = [
    # id, sources (None: default), path, headers; {G} is a valid token,
    # {F} a forged one
    ("query-encoded-underscore", None, "/?access_token={G}&access%5Ftoken={F}", []),
    ("query-encoded-lower", None, "/?access_token={G}&access%5ftoken={F}", []),
    ("query-upper-case", None, "/?access_token={G}&ACCESS_TOKEN={F}", []),
    ("query-dot", None, "/?access_token={G}&access.token={F}", []),
    ("query-plus", None, "/?access_token={G}&access+token={F}", []),
    ("query-semicolon", None, "/?access_token={G};access_token={F}", []),
    ("query-then-bearer", None, "/?access_token={G}",
     [("Authorization", "Bearer {F}")]),
    ("query-then-basic", None, "/?access_token={G}",
     [("Authorization", "Basic YWRtaW46YWRtaW4=")]),
    ("query-then-cookie", None, "/?access_token={G}",
     [("Cookie", "access_token={F}")]),
    ("query-then-cookie-blank", None, "/?access_token={G}",
     [("Cookie", "a=1; access_token ={F}")]),
    ("query-then-cookie-upper", None, "/?access_token={G}",
     [("Cookie", "ACCESS_TOKEN={F}")]),
    ("bearer-then-cookie", None, "/",
     [("Authorization", "Bearer {G}"), ("Cookie", "access_token={F}")]),
    ("cookie-then-bearer", None, "/",
     [("Cookie", "access_token={G}"), ("Authorization", "Bearer {F}")]),
    ("cookie-then-query", None, "/?access%5Ftoken={F}",
     [("Cookie", "access_token={G}")]),
    ("bearer-twice", None, "/",
     [("Authorization", "Bearer {G}"), ("authorization", "Bearer {F}")]),
    ("header-underscore", "query:access_token header:X-Token",
     "/?access_token={G}", [("X_Token", "{F}")]),
    ("protocol-then-query", "protocol:access_token. query:access_token",
     "/?access_token={F}", [("Sec-WebSocket-Protocol", "access_token.{G}")]),
    ("query-then-protocol", "query:access_token protocol:access_token.",
     "/?access_token={G}",
     [("Sec-WebSocket-Protocol", "chat, access_token.{F}")]),
]


@pytest.mark.parametrize("name,sources,path,headers", SECOND_TOKEN,
                         ids=[c[0] for c in SECOND_TOKEN])
def test_second_token_refused(backend, wsguard_factory, name, sources, path,
                              headers):
    """Whichever source the verified token came from, a token-shaped value
    in any configured source beside it is refused: 401 "two tokens"."""
    over = dict(JWT_BASE)
    if sources:
        over["JWT_SOURCES"] = sources
    wsg = wsguard_factory(backend.url, **over)
    g, f = good(), forged()

    def fill(text):
        return text.replace("{G}", g).replace("{F}", f)
    status, _, raw = attempt(wsg, path=fill(path),
                             headers=[(n, fill(v)) for n, v in headers])
    assert status == 401, raw[:300]
    refused_as(wsg, backend, 401, "two tokens", g, f)


def test_reasons_are_distinct(backend, wsguard_factory):
    """"two tokens" and "token too large" are different reasons."""
    wsg = wsguard_factory(backend.url, JWT_MAX_TOKEN_BYTES="64", **JWT_BASE)
    status, _, _ = attempt(wsg, path="/?access_token=" + "a.b." + "c" * 100)
    assert status == 401
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["reason"] == "token too large", rec
    status, _, _ = attempt(wsg, path="/?access_token=a&access_token=b")
    assert status == 401
    recs = wsg.wait_access(lambda r: r.get("reason") == "two tokens")
    assert recs["status"] == 401
    assert backend.opens() == []


def test_forward_token_yes_forwards_only_the_verified_one(backend,
                                                          wsguard_factory):
    wsg = wsguard_factory(backend.url, JWT_FORWARD_TOKEN="yes", **JWT_BASE)
    g, f = good(), forged()
    status, _, raw = attempt(wsg, path="/?access_token=" + g,
                             headers=[("Cookie", "access_token=" + f)])
    assert status == 401, raw[:300]
    status, _, raw = attempt(wsg, path="/",
                             headers=[("Authorization", "Bearer " + g)])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert raw_values(op, "Authorization") == ["Bearer " + g], op
    assert f not in json.dumps(op), op


def test_other_cookie_headers_kept(backend, wsguard_factory):
    """The token's cookie is cut from its own Cookie header only; every
    other Cookie header, and every other cookie, reaches the backend."""
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    g = good()
    status, _, raw = attempt(wsg, headers=[
        ("Cookie", "a=1"), ("Cookie", "x=2; access_token=%s; b=3" % g),
        ("Cookie", "c=4")])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert raw_values(op, "Cookie") == ["a=1", "x=2; b=3", "c=4"], op
    assert g not in json.dumps(op), op
    assert op["headers"].get("X-User-Id") == "alice", op


def test_cookie_only_token_header_dropped(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    g = good()
    status, _, raw = attempt(wsg, headers=[
        ("Cookie", "a=1"), ("Cookie", " access_token = \"%s\" " % g)])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert raw_values(op, "Cookie") == ["a=1"], op


def test_other_protocol_headers_kept(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, JWT_SOURCES="protocol:access_token.",
                          **JWT_BASE)
    g = good()
    status, hdrs, raw = attempt(wsg, headers=[
        ("Sec-WebSocket-Protocol", "chat"),
        ("Sec-WebSocket-Protocol", "access_token.%s, v2.chat" % g)])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert raw_values(op, "Sec-WebSocket-Protocol") == ["chat", "v2.chat"], op
    assert g not in json.dumps(op), op


JWT_ROUTES = """
[jwt]
algorithms = HS256
secret = %s

[route /secure/]
enabled = yes

[route /chat/]
enabled = yes
sources = query:t

[route /]
""" % SECRET


def test_access_log_never_holds_a_token_parameter(backend, wsguard_factory):
    """Any configured token parameter, of any route, used or not, is left
    out of the logged path, whatever the route and the outcome."""
    wsg = wsguard_factory(backend.url, _ini=JWT_ROUTES,
                          ORIGIN_ALLOW="https://app.example.com",
                          ORIGIN_ALLOW_MISSING="yes")
    g = good()
    secret1, secret2 = "S3CRET1" + "x" * 20, "S3CRET2" + "y" * 20
    # a public route: no JWT, but the parameter still never reaches the log
    assert attempt(wsg, path="/pub?access_token=%s&x=1&t=%s"
                   % (secret1, secret2))[0] == 101
    rec = wsg.wait_access(lambda r: r.get("route") == "/")
    # a route whose own source is t: access_token (another route's) too
    assert attempt(wsg, path="/chat/?access_token=%s&t=%s&y=2"
                   % (secret1, g))[0] == 101
    # refused before the token is looked at
    assert attempt(wsg, path="/secure/?z=3&access_token=" + secret2,
                   headers=[("Origin", "https://evil.example")])[0] == 403
    wsg.wait_access(lambda r: r.get("status") == 403)
    wsg.wait_access(lambda r: r.get("route") == "/chat/")
    paths = sorted(r.get("path") for r in wsg.access_log())
    assert paths == ["/chat/?y=2", "/pub?x=1", "/secure/?z=3"], paths
    assert rec["path"] == "/pub?x=1", rec
    assert_no_secret_in_logs(wsg, secret1, secret2, g)


# ==========================================================================
# 2. Path confusion

ADMIN_ROUTES = """
[jwt]
algorithms = HS256
secret = %s

[route /admin/]
enabled = yes

[route /]
""" % SECRET

BYPASSES = ["/admin/", "/x/../admin/", "/%61dmin/", "//admin/",
            "/public/%2e%2e/admin/", "/public/%2E%2E/admin/", "/./admin/",
            "/admin//", "/public/../admin/x", "///admin/./",
            "/admin;x/", "/admin;jsessionid=1/x", "/adm%69n;a=b/"]


@pytest.mark.parametrize("path", BYPASSES)
def test_path_spellings_reach_the_route(backend, wsguard_factory, path):
    """Every spelling of /admin/ is routed as /admin/: no token, 401."""
    wsg = wsguard_factory(backend.url, _ini=ADMIN_ROUTES)
    status, _, raw = attempt(wsg, path=path)
    assert status == 401, raw[:300]
    rec = refused_as(wsg, backend, 401, "token missing")
    assert rec["route"] == "/admin/", rec


@pytest.mark.parametrize("path,want", [
    ("/x/../admin/", "/admin/"), ("/%61dmin/", "/admin/"),
    ("//admin/", "/admin/"), ("/public/%2e%2e/admin/a/./b", "/admin/a/b"),
    ("/admin/%7euser/%3a", "/admin/~user/%3A"),
    ("/admin;v=1/x", "/admin;v=1/x"),
])
def test_backend_receives_the_normalised_path(backend, wsguard_factory, path,
                                              want):
    wsg = wsguard_factory(backend.url, _ini=ADMIN_ROUTES)
    status, _, raw = attempt(wsg, path=path,
                             headers=[("Authorization", "Bearer " + good())])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert op["path"] == want, op
    rec = wsg.wait_access(lambda r: r.get("event") == "session")
    assert rec["path"] == want and rec["route"] == "/admin/", rec


def test_query_kept_byte_exact(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, _ini=ADMIN_ROUTES)
    g = good()
    status, _, raw = attempt(
        wsg, path="/admin/./x?b=%2F&a=1&&c;d=%zz&access_token=" + g + "&e=%41")
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert op["path"] == "/admin/x?b=%2F&a=1&&c;d=%zz&e=%41", op


REFUSED_PATHS = [
    ("/%2Fadmin/", "encoded slash, backslash or NUL"),
    ("/admin%2f", "encoded slash, backslash or NUL"),
    ("/a%5Cadmin/", "encoded slash, backslash or NUL"),
    ("/admin/%00", "encoded slash, backslash or NUL"),
    ("/../admin/", "path climbs above the root"),
    ("/a/../../admin/", "path climbs above the root"),
    ("/%2e%2e/admin/", "path climbs above the root"),
    ("/admin/%zz", "invalid percent escape"),
    ("/admin/%4", "invalid percent escape"),
    ("/public/..;/admin/", "dot segment with parameters"),
    ("/public/.;x/admin/", "dot segment with parameters"),
    ("/public/%252e%252e/admin/", "double-encoded path character"),
    ("/a\\..\\admin/", "invalid character in path"),
    ("/adm|n/", "invalid character in path"),
]


@pytest.mark.parametrize("path,reason", REFUSED_PATHS,
                         ids=[p for p, _ in REFUSED_PATHS])
def test_unsafe_paths_refused(backend, wsguard_factory, path, reason):
    wsg = wsguard_factory(backend.url, _ini=ADMIN_ROUTES)
    status, _, raw = attempt(wsg, path=path)
    assert status == 400, raw[:300]
    refused_as(wsg, backend, 400, reason)


def test_route_prefix_must_be_normal(tmp_path, certs, backend):
    """A route prefix that no normalised path can match is a configuration
    error with its line, not a route that silently never applies."""
    ini = write_ini(tmp_path / "bad.ini", certs, backend.url,
                    extra="\n[route /%61dmin/]\n\n[route /a/../b]\n"
                          "\n[route /x;y/]\n")
    lines = open(ini).read().split("\n")
    l1 = lines.index("[route /%61dmin/]") + 1
    l2 = lines.index("[route /a/../b]") + 1
    l3 = lines.index("[route /x;y/]") + 1
    r = subprocess.run([wsguard_bin(), "-t", "-c", ini], capture_output=True,
                       text=True, env=clean_env(), timeout=30)
    assert r.returncode == 1, r
    assert ('bad.ini:%d: route prefix "/%%61dmin/" is not in normal form'
            % l1) in r.stderr, r.stderr
    assert 'write "/admin/"' in r.stderr, r.stderr
    assert ('bad.ini:%d: route prefix "/a/../b"' % l2) in r.stderr, r.stderr
    assert ('bad.ini:%d: route prefix "/x;y/" must not contain' % l3) \
        in r.stderr, r.stderr


# ==========================================================================
# 3. Fixed-size tables

def test_many_claim_headers_all_enforced(backend, wsguard_factory):
    """forward_claims with 12 pairs: the client's copy of every one of
    them is removed, the 9th and later included."""
    pairs = " ".join("c%d:X-C%d" % (i, i) for i in range(12))
    wsg = wsguard_factory(backend.url, JWT_FORWARD_CLAIMS=pairs, **JWT_BASE)
    tok = hs_token(claims(**{"c%d" % i: "v%d" % i for i in range(12)}))
    forged_hdrs = [("X-C%d" % i, "forged") for i in range(12)]
    status, _, raw = attempt(wsg, headers=forged_hdrs + [
        ("Authorization", "Bearer " + tok), ("x-c11", "forged2")])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    for i in range(12):
        assert raw_values(op, "X-C%d" % i) == ["v%d" % i], op
    assert "forged" not in json.dumps(op), op


def test_long_xff_still_names_the_client(backend, wsguard_factory):
    """A client padding X-Forwarded-For must not make wsguard fall back to
    the trusted proxy's address (per-IP counting, X-Real-IP)."""
    wsg = wsguard_factory(backend.url, SERVER_TRUSTED_PROXIES="127.0.0.1",
                          LIMITS_MAX_CONNECTIONS_PER_IP="1")
    pad = ", ".join("10.0.%d.%d" % (i // 256, i % 256) for i in range(300))
    xff = [("X-Forwarded-For", pad), ("X-Forwarded-For", "203.0.113.7")]
    with raw_connect(wsg) as s1:
        s1.sendall(upgrade_head(wsg, headers=xff))
        assert read_head(s1)[0] == 101
        op = expect_open(backend)
        assert op["headers"].get("X-Real-IP") == "203.0.113.7", op
        # the slot is the client's: a second connection from it is over
        status, _, _ = attempt(wsg, headers=xff)
        assert status == 429
        # another client behind the same proxy is not
        status, _, _ = attempt(wsg, headers=[("X-Forwarded-For", pad + ", 203.0.113.8")])
        assert status == 101


def test_long_protocol_token_echoed(backend, wsguard_factory):
    """A protocol token longer than 1 KiB is answered with its entry, not
    502 for a fixed-size response buffer."""
    wsg = wsguard_factory(backend.url, JWT_SOURCES="protocol:access_token.",
                          **JWT_BASE)
    tok = hs_token(claims(pad="p" * 3000))
    entry = "access_token." + tok
    status, hdrs, raw = attempt(wsg, headers=[("Sec-WebSocket-Protocol", entry)])
    assert status == 101, raw[:300]
    assert hdrs.get("sec-websocket-protocol") == entry


def test_long_sub_logged_whole(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    sub = "u" * 600
    status, _, raw = attempt(wsg, headers=[
        ("Authorization", "Bearer " + hs_token(claims(sub=sub)))])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert op["headers"].get("X-User-Id") == sub
    wsg.stop()
    rec = [r for r in wsg.access_log() if r.get("event") == "session"][0]
    assert rec["sub"] == sub, rec


# ==========================================================================
# 4. Header names frameworks treat as equal; Connection listings

SPOOF = [("X_User_Id", "admin"), ("X_Forwarded_For", "6.6.6.6"),
         ("X_Real_IP", "6.6.6.6"), ("X_Forwarded_Proto", "ftp"),
         ("Sec_WebSocket_Protocol", "evil"), ("X_Custom", "1")]


def test_underscore_headers_dropped(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    status, _, raw = attempt(wsg, headers=SPOOF + [
        ("Authorization", "Bearer " + good())])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    names = [n for n, _ in op["raw_headers"]]
    assert not [n for n in names if "_" in n], op
    assert raw_values(op, "X-User-Id") == ["alice"], op
    assert raw_values(op, "X-Real-IP") == ["127.0.0.1"], op
    assert raw_values(op, "X-Forwarded-For") == ["127.0.0.1"], op
    assert "6.6.6.6" not in json.dumps(op) and "evil" not in json.dumps(op)


def test_underscore_headers_allowed_but_not_ours(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_ALLOW_UNDERSCORE_HEADERS="yes",
                          **JWT_BASE)
    assert "allow_underscore_headers = yes" in wsg.stderr_text()
    status, _, raw = attempt(wsg, headers=SPOOF + [
        ("Authorization", "Bearer " + good())])
    assert status == 101, raw[:300]
    op = expect_open(backend)
    names = [n for n, _ in op["raw_headers"]]
    assert [n for n in names if "_" in n] == ["X_Custom"], op
    assert raw_values(op, "X-User-Id") == ["alice"], op
    assert "6.6.6.6" not in json.dumps(op) and "evil" not in json.dumps(op)


def test_connection_cannot_remove_checked_headers(backend, wsguard_factory):
    """Listing Origin, Host or Sec-WebSocket-Protocol in Connection does
    not remove them after they were checked; other listed names go."""
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW="https://app.example.com")
    head = upgrade_head(wsg, omit=("Connection",), headers=[
        ("Connection", "Upgrade, Origin, Host, Sec-WebSocket-Protocol, X-Hop"),
        ("Origin", "https://app.example.com"),
        ("Sec-WebSocket-Protocol", "chat"), ("X-Hop", "1")])
    with raw_connect(wsg) as s:
        s.sendall(head)
        status, _, raw = read_head(s)
    assert status == 101, raw[:300]
    op = expect_open(backend)
    assert raw_values(op, "Origin") == ["https://app.example.com"], op
    assert raw_values(op, "Sec-WebSocket-Protocol") == ["chat"], op
    assert len(raw_values(op, "Host")) == 1, op
    assert raw_values(op, "X-Hop") == [], op


# ==========================================================================
# 5. NumericDates out of range

@pytest.mark.parametrize("payload", [
    {"sub": "alice", "exp": 2 ** 63 - 1},
    {"sub": "alice", "exp": 9223372036854775790},
    {"sub": "alice", "exp": 1e300},
    {"sub": "alice", "exp": 4102444800, "nbf": -1e300},
    {"sub": "alice", "exp": 4102444800, "iat": 2 ** 62},
    {"sub": "alice", "exp": -1},
], ids=["exp-2^63", "exp-near-2^63", "exp-1e300", "nbf-neg", "iat-2^62",
        "exp-negative"])
def test_out_of_range_dates_refused(backend, wsguard_factory, payload):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = raw_token({"alg": "HS256", "typ": "JWT"}, payload,
                    hmac_signer(SECRET))
    status, _, raw = attempt(wsg, headers=[("Authorization", "Bearer " + tok)])
    assert status == 401, raw[:300]
    refused_as(wsg, backend, 401, "malformed time claim", tok)
    assert wsg.alive()


# ==========================================================================
# 6. Refusals without an answer are logged with their kind's reason

def test_tls_failure_logged(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url)
    with socket.create_connection((wsg.host, wsg.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_eof(s, 5)
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["reason"] == "tls handshake failed", rec


def test_bad_proxy_header_logged(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on")
    with socket.create_connection((wsg.host, wsg.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 nonsense\r\n")
        wait_eof(s, 5)
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["reason"] == "bad PROXY protocol header", rec


def test_handshake_timeout_logged(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_HANDSHAKE_TIMEOUT="300ms")
    with raw_connect(wsg) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        assert wait_eof(s, 10)
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["reason"] == "handshake timeout", rec
