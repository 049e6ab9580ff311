"""Security policy at the upgrade: an attack corpus against the Origin
allowlist (403), JWT verification (401), per-IP limits (429), trusted
proxies (X-Forwarded-For) and the PROXY protocol.

Every refusal is checked three ways: the status the client sees, a reject
line with that status in the access log, and no open event at the backend
(wsguard contacts no backend for a refused client). Every JWT case also
checks that no token text reaches the access log or the error log (the
tests run wsguard at log level debug).
"""

import asyncio
import json
import subprocess
import time

import pytest
import websockets

import rawws
from conftest import clean_env, wsguard_bin, write_ini
from helpers import (connect, http_exchange, read_head, run, upgrade_head,
                     wait_eof)
from sectools import (OTHER_SECRET, SECRET, Keys, assert_no_secret_in_logs,
                      assert_refused, attempt, b64u, claims, es256_der_signer,
                      expect_open,
                      es256_raw_signer, hmac_signer, hs_token, pem_public,
                      proxied_connect, proxy_v1, proxy_v2, raw_token)

import jwt  # PyJWT

APP = "https://app.example.com"
BEARER_ERR = 'Bearer error="invalid_token"'


def wait_opens(backend, n, timeout=5.0):
    """Wait until the backend has recorded n opens; assert it has exactly n
    (a short grace period lets a wrongly admitted extra one show up)."""
    backend.wait_record(lambda r: r.get("event") == "open" and r.get("conn") == n,
                        timeout=timeout)
    time.sleep(0.2)
    opens = backend.opens()
    assert len(opens) == n, opens
    return {o["conn"]: o for o in opens}


# ==========================================================================
# Origin

ORIGIN_CASES = [
    # id, overrides, Origin header (None: not sent), expected status
    ("exact", {}, APP, 101),
    ("case-variant", {}, "HTTPS://APP.EXAMPLE.COM", 101),
    ("mixed-case", {}, "hTTpS://App.Example.Com", 101),
    ("default-port-443", {}, "https://app.example.com:443", 101),
    ("other-port-8443", {}, "https://app.example.com:8443", 403),
    ("port-leading-zero", {}, "https://app.example.com:0443", 403),
    ("http-scheme", {}, "http://app.example.com", 403),
    ("wss-scheme", {}, "wss://app.example.com", 403),
    ("suffix-trick", {}, "https://app.example.com.evil.net", 403),
    ("trailing-dot", {}, "https://app.example.com.", 403),
    ("prefix-trick", {}, "https://evilapp.example.com", 403),
    ("prefix-subdomain", {}, "https://evil.app.example.com", 403),
    ("prefix-scheme-glue", {}, "https://evil.net/https://app.example.com", 403),
    ("userinfo-before", {}, "https://user@app.example.com", 403),
    ("userinfo-trick", {}, "https://app.example.com@evil.net", 403),
    ("path", {}, "https://app.example.com/", 403),
    ("path-long", {}, "https://app.example.com/x", 403),
    ("query", {}, "https://app.example.com?x", 403),
    ("fragment", {}, "https://app.example.com#x", 403),
    ("percent-encoded", {}, "https://app%2eexample.com", 403),
    ("null", {}, "null", 403),
    ("null-upper", {}, "NULL", 403),
    ("empty", {}, "", 403),
    ("no-scheme", {}, "app.example.com", 403),
    ("missing", {}, None, 403),
    ("missing-allowed", {"ORIGIN_ALLOW_MISSING": "yes"}, None, 101),
    ("missing-allowed-still-checks", {"ORIGIN_ALLOW_MISSING": "yes"},
     "https://evil.com", 403),
    ("pattern-ok", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://a.example.com", 101),
    ("pattern-caseless", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://A-1.EXAMPLE.com", 101),
    ("pattern-two-labels", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://a.b.example.com", 403),
    ("pattern-evil", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://evil.com", 403),
    ("pattern-suffix", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://a.example.com.evil.net", 403),
    ("pattern-default-port", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://a.example.com:443", 101),
    ("pattern-other-port", {"ORIGIN_ALLOW_PATTERN": r"^https://[a-z0-9-]+\.example\.com$"},
     "https://a.example.com:444", 403),
    ("unanchored-exact", {"ORIGIN_ALLOW_PATTERN": r"https://app\.example\.com"},
     APP, 101),
    ("unanchored-suffix", {"ORIGIN_ALLOW_PATTERN": r"https://app\.example\.com"},
     "https://app.example.com.evil.net", 403),
    ("unanchored-prefix", {"ORIGIN_ALLOW_PATTERN": r"https://app\.example\.com"},
     "https://xhttps://app.example.com", 403),
    ("unanchored-subdomain", {"ORIGIN_ALLOW_PATTERN": r"https://app\.example\.com"},
     "https://evil.app.example.com", 403),
]


@pytest.mark.parametrize("name,overrides,origin,status", ORIGIN_CASES,
                         ids=[c[0] for c in ORIGIN_CASES])
def test_origin(backend, wsguard_factory, name, overrides, origin, status):
    ov = {"ORIGIN_ALLOW": APP}
    if "ORIGIN_ALLOW_PATTERN" in overrides:
        ov = {}
    ov.update(overrides)
    wsg = wsguard_factory(backend.url, **ov)
    headers = [] if origin is None else [("Origin", origin)]
    got, hdrs, raw = attempt(wsg, headers=headers)
    assert got == status, (origin, raw[:400])
    if status == 101:
        op = expect_open(backend)
        if origin is not None:
            assert op["headers"].get("Origin") == origin, op
    else:
        rec = assert_refused(wsg, backend, status, n_rejects=1)
        if origin:
            assert rec.get("origin") == origin, rec


def test_origin_bad_pattern_fails_check(tmp_path, certs):
    ini = write_ini(tmp_path / "badpat.ini", certs, "ws://127.0.0.1:8080",
                    extra="\n[origin]\nallow = https://app.example.com\n"
                          "allow_pattern = ^https://(unclosed\\.example\\.com$\n")
    lines = open(ini).read().splitlines()
    line = [i for i, l in enumerate(lines, 1) if l.startswith("allow_pattern")][0]
    r = subprocess.run([wsguard_bin(), "-t", "-c", ini], capture_output=True,
                       text=True, timeout=30, env=clean_env())
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "%s:%d:" % (ini, line) in out, out


def test_origin_bad_pattern_refuses_start(tmp_path, certs, backend):
    """The same pattern from the environment: wsguard does not start."""
    ini = write_ini(tmp_path / "p.ini", certs, backend.url)
    env = clean_env({"WSGUARD_ORIGIN_ALLOW_PATTERN": "^https://(x"})
    r = subprocess.run([wsguard_bin(), "-t", "-c", ini], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == 1, r.stdout + r.stderr


def test_origin_check_before_jwt(backend, wsguard_factory):
    """A foreign Origin is refused with 403 even with a valid token."""
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW=APP, JWT_ENABLED="yes",
                          JWT_ALGORITHMS="HS256", JWT_SECRET=SECRET)
    tok = hs_token()
    got, _, raw = attempt(wsg, headers=[("Origin", "https://evil.com"),
                                        ("Authorization", "Bearer " + tok)])
    assert got == 403, raw[:300]
    assert_refused(wsg, backend, 403, n_rejects=1)
    assert_no_secret_in_logs(wsg, tok)


# ==========================================================================
# JWT

JWT_BASE = {"JWT_ENABLED": "yes", "JWT_ALGORITHMS": "HS256", "JWT_SECRET": SECRET}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(tmp_path_factory.mktemp("jwtkeys"))


def assert_token_gone(op, token):
    """The backend's view of the request holds no token text."""
    blob = json.dumps({"path": op["path"], "headers": dict(op["headers"])})
    for piece in (token, token.split(".")[2]):
        assert piece not in blob, op


def test_jwt_source_query(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, path="/chat?room=1&access_token=%s&x=2" % tok)
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    assert op["path"] == "/chat?room=1&x=2", op
    assert op["headers"].get("X-User-Id") == "alice", op
    rec = wsg.wait_access(lambda r: r.get("event") == "session")
    assert rec.get("sub") == "alice", rec
    assert rec.get("path") == "/chat?room=1&x=2", rec
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_source_query_only_param(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, path="/chat?access_token=%s" % tok)
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    assert "access_token" not in op["path"], op
    assert op["path"].rstrip("?") == "/chat", op
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_source_authorization(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, path="/a", headers=[("Authorization", "Bearer " + tok)])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    assert "Authorization" not in op["headers"], op
    assert op["headers"].get("X-User-Id") == "alice", op
    rec = wsg.wait_access(lambda r: r.get("event") == "session")
    assert rec.get("sub") == "alice", rec
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_source_cookie(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, headers=[("Cookie", "a=1; access_token=%s; b=2" % tok)])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    cookie = op["headers"].get("Cookie", "")
    assert "a=1" in cookie and "b=2" in cookie and "access_token" not in cookie, op
    assert op["headers"].get("X-User-Id") == "alice", op
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_source_protocol_backend_selects_none(backend, wsguard_factory):
    """The token as a Sec-WebSocket-Protocol entry; the backend chooses no
    subprotocol, so wsguard answers with the token entry (browsers fail a
    handshake that answers none of what they offered)."""
    wsg = wsguard_factory(backend.url, JWT_SOURCES="protocol:access_token.", **JWT_BASE)
    tok = hs_token()
    entry = "access_token." + tok
    got, hdrs, raw = attempt(wsg, headers=[("Sec-WebSocket-Protocol", "chat, " + entry)])
    assert got == 101, raw[:300]
    assert hdrs.get("sec-websocket-protocol") == entry, raw[:600]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    assert op["headers"].get("Sec-WebSocket-Protocol") == "chat", op
    assert op["headers"].get("X-User-Id") == "alice", op
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_source_protocol_backend_selects_chat(backend_factory, wsguard_factory):
    b = backend_factory("--subprotocols", "chat")
    wsg = wsguard_factory(b.url, JWT_SOURCES="protocol:access_token.", **JWT_BASE)
    tok = hs_token()

    async def go():
        async with connect(wsg, subprotocols=["chat", "access_token." + tok]) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    run(go(), 20)
    op = expect_open(b)
    assert_token_gone(op, tok)
    assert op["headers"].get("Sec-WebSocket-Protocol") == "chat", op
    assert op.get("subprotocol") == "chat", op
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_protocol_only_entry(backend, wsguard_factory):
    """The token is the only offered entry: the backend sees no protocol
    header at all, the client gets its entry back."""
    wsg = wsguard_factory(backend.url, JWT_SOURCES="protocol:access_token.", **JWT_BASE)
    tok = hs_token()
    entry = "access_token." + tok
    got, hdrs, raw = attempt(wsg, headers=[("Sec-WebSocket-Protocol", entry)])
    assert got == 101, raw[:300]
    assert hdrs.get("sec-websocket-protocol") == entry, raw[:600]
    op = expect_open(backend)
    assert_token_gone(op, tok)
    assert not op["headers"].get("Sec-WebSocket-Protocol"), op
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_client_user_id_replaced(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, headers=[("X-User-Id", "mallory"),
                                        ("Authorization", "Bearer " + tok),
                                        ("x-user-id", "root")])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert op["headers"].get("X-User-Id") == "alice", op
    assert "mallory" not in json.dumps(dict(op["headers"])), op
    assert "root" not in json.dumps(dict(op["headers"])), op


def test_jwt_client_user_id_removed_without_sub(backend, wsguard_factory):
    """A token without sub: the client's own X-User-Id still goes."""
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    c = claims()
    del c["sub"]
    tok = hs_token(c)
    got, _, raw = attempt(wsg, headers=[("X-User-Id", "mallory"),
                                        ("Authorization", "Bearer " + tok)])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert "mallory" not in json.dumps(dict(op["headers"])), op


def test_jwt_forward_claims_custom(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, JWT_FORWARD_CLAIMS="sub:X-User-Id tenant:X-Tenant",
                          **JWT_BASE)
    tok = hs_token(claims(tenant="acme"))
    got, _, raw = attempt(wsg, headers=[("Authorization", "Bearer " + tok),
                                        ("X-Tenant", "evil")])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert op["headers"].get("X-User-Id") == "alice", op
    assert op["headers"].get("X-Tenant") == "acme", op


def test_jwt_forward_token_yes(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, JWT_FORWARD_TOKEN="yes", **JWT_BASE)
    tok = hs_token()
    got, _, raw = attempt(wsg, path="/q?access_token=%s" % tok)
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert tok in op["path"], op
    got, _, raw = attempt(wsg, headers=[("Authorization", "Bearer " + tok)])
    assert got == 101, raw[:300]
    op2 = expect_open(backend, 2)
    assert op2["headers"].get("Authorization") == "Bearer " + tok, op2
    # ...but still never in wsguard's own log
    wsg.wait_access(lambda r: r.get("event") == "session")
    assert_no_secret_in_logs(wsg, tok)
    assert "forward_token" in wsg.stderr_text()      # the start-up warning


def _now():
    return int(time.time())


def tok_alg_none(k):
    return raw_token({"alg": "none", "typ": "JWT"}, claims())


def tok_alg_none_upper(k):
    return raw_token({"alg": "NONE", "typ": "JWT"}, claims())


def tok_alg_none_with_sig(k):
    return raw_token({"alg": "none"}, claims(), hmac_signer(SECRET))


def tok_hs512(k):
    return hs_token(alg="HS512")


def tok_hs256_alg_header_lies(k):
    """Header says HS512 (not allowed) though HS256-signed."""
    return raw_token({"alg": "HS512", "typ": "JWT"}, claims(), hmac_signer(SECRET))


def tok_confusion(k):
    """HS256 keyed with the RSA public key's PEM text."""
    return raw_token({"alg": "HS256", "typ": "JWT"}, claims(),
                     hmac_signer(pem_public(k.rsa)))


def tok_expired(k):
    return hs_token(claims(exp=_now() - 120, iat=_now() - 600))


def tok_nbf_future(k):
    return hs_token(claims(nbf=_now() + 3600))


def tok_iat_future(k):
    return hs_token(claims(iat=_now() + 3600))


def tok_no_exp(k):
    return hs_token(claims(ttl=None))


def tok_exp_string(k):
    return hs_token(claims(exp=str(_now() + 300)))


def tok_wrong_iss(k):
    return hs_token(claims(iss="https://evil.example"))


def tok_no_iss(k):
    return hs_token(claims())


def tok_right_iss(k):
    return hs_token(claims(iss="https://issuer.example"))


def tok_wrong_aud(k):
    return hs_token(claims(aud="other"))


def tok_aud_array(k):
    return hs_token(claims(aud=["other", "wsguard"]))


def tok_aud_array_miss(k):
    return hs_token(claims(aud=["other", "another"]))


def tok_bad_sig(k):
    return hs_token(secret=OTHER_SECRET)


def tok_tampered(k):
    h, p, s = hs_token().split(".")
    return "%s.%s.%s" % (h, b64u(json.dumps(claims(sub="admin"))), s)


def tok_truncated(k):
    return hs_token()[:-6]


def tok_two_segments(k):
    return ".".join(hs_token().split(".")[:2])


def tok_four_segments(k):
    return hs_token() + ".AAAA"


def tok_bad_b64(k):
    h, p, s = hs_token().split(".")
    return "%s.%s*.%s" % (h, p[:-1], s)


def tok_header_not_json(k):
    t = hs_token().split(".")
    return raw_token(b64u("{not json"), t[1], hmac_signer(SECRET))


def tok_crit(k):
    return hs_token(headers={"crit": ["exp"], "exp": 1})


def tok_bad_typ(k):
    return hs_token(headers={"typ": "JWE"})


def tok_huge(k):
    return hs_token(claims(pad="x" * 16384))


def tok_es256_der(k):
    return raw_token({"alg": "ES256", "typ": "JWT"}, claims(), es256_der_signer(k.ec))


def tok_es256_raw(k):
    return raw_token({"alg": "ES256", "typ": "JWT"}, claims(), es256_raw_signer(k.ec))


def tok_es256_lib(k):
    return jwt.encode(claims(), k.ec, algorithm="ES256")


def tok_rs256(k):
    return jwt.encode(claims(), k.rsa, algorithm="RS256")


def tok_ps256(k):
    return jwt.encode(claims(), k.rsa, algorithm="PS256")


def tok_rs256_other_key(k):
    return jwt.encode(claims(), k.rsa2, algorithm="RS256")


def tok_eddsa(k):
    return jwt.encode(claims(), k.ed, algorithm="EdDSA")


def tok_embedded_jwk(k):
    """Signed by the attacker's key, which rides along in the header."""
    pub = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.rsa2.public_key()))
    return jwt.encode(claims(), k.rsa2, algorithm="RS256", headers={"jwk": pub})


def tok_jku(k):
    return jwt.encode(claims(), k.rsa2, algorithm="RS256",
                      headers={"jku": "https://evil.example/jwks.json"})


def tok_kid1(k):
    return jwt.encode(claims(), k.rsa, algorithm="RS256", headers={"kid": "k1"})


def tok_kid2(k):
    return jwt.encode(claims(), k.rsa2, algorithm="RS256", headers={"kid": "k2"})


def tok_kid_unknown(k):
    return jwt.encode(claims(), k.rsa, algorithm="RS256", headers={"kid": "k3"})


def tok_kid_swapped(k):
    """Signed with k2's key but naming k1."""
    return jwt.encode(claims(), k.rsa2, algorithm="RS256", headers={"kid": "k1"})


def tok_kid_traversal(k):
    return jwt.encode(claims(), k.rsa, algorithm="RS256",
                      headers={"kid": "../../../../dev/null"})


def tok_sub_long(k):
    return hs_token(claims(sub="u" * 300))


def ov_public(attr, algs):
    return lambda k: {"JWT_ENABLED": "yes", "JWT_ALGORITHMS": algs,
                      "JWT_PUBLIC_KEY_FILE": getattr(k, attr)}


def ov_hs(**extra):
    def f(k):
        d = dict(JWT_BASE)
        d.update(extra)
        return d
    return f


def ov_jwks(k):
    return {"JWT_ENABLED": "yes", "JWT_ALGORITHMS": "RS256", "JWT_JWKS_FILE": k.jwks()}


JWT_CASES = [
    # id, overrides(keys), token(keys), where ("query" | "header"), status
    ("hs256-valid", ov_hs(), lambda k: hs_token(), "header", 101),
    ("alg-none", ov_hs(), tok_alg_none, "query", 401),
    ("alg-NONE", ov_hs(), tok_alg_none_upper, "header", 401),
    ("alg-none-with-sig", ov_hs(), tok_alg_none_with_sig, "header", 401),
    ("alg-not-allowed-hs512", ov_hs(), tok_hs512, "query", 401),
    ("alg-header-lies", ov_hs(), tok_hs256_alg_header_lies, "header", 401),
    ("alg-confusion-rs-pem-as-hmac", ov_public("rsa_pub", "RS256 HS256"), tok_confusion,
     "header", 401),
    ("alg-confusion-control-rs256", ov_public("rsa_pub", "RS256 HS256"), tok_rs256,
     "header", 101),
    ("expired", ov_hs(), tok_expired, "query", 401),
    ("nbf-future", ov_hs(), tok_nbf_future, "query", 401),
    ("iat-future", ov_hs(), tok_iat_future, "header", 401),
    ("no-exp-required", ov_hs(), tok_no_exp, "header", 401),
    ("exp-not-number", ov_hs(), tok_exp_string, "header", 401),
    ("wrong-iss", ov_hs(JWT_ISSUER="https://issuer.example"), tok_wrong_iss, "query", 401),
    ("missing-iss", ov_hs(JWT_ISSUER="https://issuer.example"), tok_no_iss, "header", 401),
    ("right-iss", ov_hs(JWT_ISSUER="https://issuer.example"), tok_right_iss, "header", 101),
    ("wrong-aud", ov_hs(JWT_AUDIENCE="wsguard"), tok_wrong_aud, "query", 401),
    ("missing-aud", ov_hs(JWT_AUDIENCE="wsguard"), lambda k: hs_token(), "header", 401),
    ("aud-array-match", ov_hs(JWT_AUDIENCE="wsguard"), tok_aud_array, "header", 101),
    ("aud-array-miss", ov_hs(JWT_AUDIENCE="wsguard"), tok_aud_array_miss, "header", 401),
    ("bad-signature", ov_hs(), tok_bad_sig, "query", 401),
    ("tampered-payload", ov_hs(), tok_tampered, "header", 401),
    ("truncated", ov_hs(), tok_truncated, "query", 401),
    ("two-segments", ov_hs(), tok_two_segments, "header", 401),
    ("four-segments", ov_hs(), tok_four_segments, "header", 401),
    ("bad-base64url", ov_hs(), tok_bad_b64, "header", 401),
    ("header-not-json", ov_hs(), tok_header_not_json, "header", 401),
    ("crit-header", ov_hs(), tok_crit, "header", 401),
    ("typ-jwe", ov_hs(), tok_bad_typ, "header", 401),
    ("16KiB-token", ov_hs(SERVER_MAX_HEADER_BYTES="64k"), tok_huge, "header", 401),
    ("16KiB-token-query", ov_hs(SERVER_MAX_HEADER_BYTES="64k"), tok_huge, "query", 401),
    ("es256-der-signature", ov_public("ec_pub", "ES256"), tok_es256_der, "header", 401),
    ("es256-raw-valid", ov_public("ec_pub", "ES256"), tok_es256_raw, "header", 101),
    ("es256-pyjwt-valid", ov_public("ec_pub", "ES256"), tok_es256_lib, "query", 101),
    ("rs256-valid", ov_public("rsa_pub", "RS256"), tok_rs256, "header", 101),
    ("ps256-valid", ov_public("rsa_pub", "PS256"), tok_ps256, "header", 101),
    ("rs256-as-ps256-not-allowed", ov_public("rsa_pub", "PS256"), tok_rs256, "header", 401),
    ("rs256-other-key", ov_public("rsa_pub", "RS256"), tok_rs256_other_key, "header", 401),
    ("eddsa-valid", ov_public("ed_pub", "EdDSA"), tok_eddsa, "header", 101),
    ("embedded-jwk-ignored", ov_public("rsa_pub", "RS256"), tok_embedded_jwk, "header", 401),
    ("jku-ignored", ov_public("rsa_pub", "RS256"), tok_jku, "header", 401),
    ("jwks-kid-k1", ov_jwks, tok_kid1, "header", 101),
    ("jwks-kid-k2", ov_jwks, tok_kid2, "header", 101),
    ("jwks-kid-unknown", ov_jwks, tok_kid_unknown, "header", 401),
    ("jwks-kid-swapped", ov_jwks, tok_kid_swapped, "header", 401),
    ("jwks-kid-traversal", ov_jwks, tok_kid_traversal, "header", 401),
    ("hs256-with-rsa-only-server", ov_public("rsa_pub", "RS256"), lambda k: hs_token(),
     "header", 401),
]


@pytest.mark.parametrize("name,ovf,tokf,where,status", JWT_CASES,
                         ids=[c[0] for c in JWT_CASES])
def test_jwt(backend, wsguard_factory, keys, name, ovf, tokf, where, status):
    wsg = wsguard_factory(backend.url, **ovf(keys))
    tok = tokf(keys)
    if where == "query":
        got, hdrs, raw = attempt(wsg, path="/t?x=1&access_token=" + tok)
    else:
        got, hdrs, raw = attempt(wsg, path="/t?x=1",
                                 headers=[("Authorization", "Bearer " + tok)])
    assert got == status, (name, raw[:400], wsg.stderr_text()[-800:])
    if status == 101:
        op = expect_open(backend)
        assert_token_gone(op, tok)
        assert op["path"] == "/t?x=1", op
        assert op["headers"].get("X-User-Id") == "alice", op
        rec = wsg.wait_access(lambda r: r.get("event") == "session")
        assert rec.get("sub") == "alice", rec
    else:
        assert hdrs.get("www-authenticate") == BEARER_ERR, raw[:400]
        rec = assert_refused(wsg, backend, 401, n_rejects=1)
        assert tok not in json.dumps(rec), rec
        assert rec.get("path") in ("/t?x=1", "/t"), rec
    assert_no_secret_in_logs(wsg, tok)


def test_jwt_missing_token(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    got, hdrs, raw = attempt(wsg, path="/?token=not-our-param")
    assert got == 401, raw[:300]
    assert hdrs.get("www-authenticate") == BEARER_ERR, raw[:400]
    assert_refused(wsg, backend, 401, n_rejects=1)


@pytest.mark.parametrize("authz", ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "bearer"])
def test_jwt_authorization_not_a_token(backend, wsguard_factory, authz):
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    got, hdrs, raw = attempt(wsg, headers=[("Authorization", authz)])
    assert got == 401, raw[:300]
    assert hdrs.get("www-authenticate") == BEARER_ERR, raw[:400]
    assert_refused(wsg, backend, 401, n_rejects=1)


def test_jwt_two_tokens_ambiguous(backend, wsguard_factory):
    """Two tokens in one source (a smuggling attempt): refused."""
    wsg = wsguard_factory(backend.url, **JWT_BASE)
    good = hs_token()
    bad = hs_token(claims(sub="admin"), secret=OTHER_SECRET)
    got, hdrs, raw = attempt(wsg, path="/?access_token=%s&access_token=%s" % (bad, good))
    assert got == 401, raw[:300]
    assert_refused(wsg, backend, 401, n_rejects=1)
    assert_no_secret_in_logs(wsg, good, bad)


def test_jwt_short_secret_refused(tmp_path, certs):
    ini = write_ini(tmp_path / "short.ini", certs, "ws://127.0.0.1:8080",
                    extra="\n[jwt]\nenabled = yes\nalgorithms = HS256\n"
                          "secret = only-sixteen-byte\n")
    r = subprocess.run([wsguard_bin(), "-t", "-c", ini], capture_output=True,
                       text=True, timeout=30, env=clean_env())
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "only-sixteen-byte" not in out, out        # the secret is not echoed


def test_jwt_close_on_expiry(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, JWT_LEEWAY="0", **JWT_BASE)
    tok = hs_token(claims(ttl=3))

    async def go():
        async with connect(wsg, extra_headers={"Authorization": "Bearer " + tok}) as ws:
            await ws.send("before expiry")
            assert await asyncio.wait_for(ws.recv(), 5) == "before expiry"
            t0 = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.exceptions.ConnectionClosed:
                pass
            return ws.close_code, time.monotonic() - t0
    code, waited = run(go(), 30)
    assert code == 1008, code
    assert waited < 10
    bc = backend.wait_record(lambda r: r.get("event") == "close", timeout=10)
    assert bc.get("code") == 1008, bc
    rec = wsg.wait_access(lambda r: r.get("event") == "session", timeout=10)
    assert rec.get("close_code") == 1008, rec
    assert rec.get("sub") == "alice", rec
    assert_no_secret_in_logs(wsg, tok)


# ==========================================================================
# Per-IP limits, trusted proxies, PROXY protocol

def ws_open(wsg, headers=None, path="/"):
    return rawws.connect("localhost", wsg.port, wsg.client_ssl, path=path,
                         headers=headers, timeout=5)


def ws_close(ws):
    ws.send_close(1000)
    res = ws.expect_close(timeout=5)
    ws.close()
    return res


def test_per_ip_limit(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, LIMITS_MAX_CONNECTIONS_PER_IP="2")
    a = ws_open(wsg)
    b = ws_open(wsg)
    try:
        got, _, raw = attempt(wsg)
        assert got == 429, raw[:300]
        rec = wsg.wait_access(lambda r: r.get("event") == "reject")
        assert rec["status"] == 429, rec
        wait_opens(backend, 2)
        # a still works
        a.send_text("ping")
        assert a.recv_message(timeout=5).payload == b"ping"
        res = ws_close(a)
        assert res.code == 1000, res
        wsg.wait_access(lambda r: r.get("event") == "session")
        c = ws_open(wsg)
        c.send_text("again")
        assert c.recv_message(timeout=5).payload == b"again"
        wait_opens(backend, 3)
        ws_close(c)
    finally:
        b.close()
    rejects = [r for r in wsg.access_log() if r.get("event") == "reject"]
    assert len(rejects) == 1 and rejects[0]["status"] == 429, rejects


def test_per_ip_limit_counts_before_origin(backend, wsguard_factory):
    """The per-IP check comes before Origin: over the limit it is 429,
    even from a foreign origin."""
    wsg = wsguard_factory(backend.url, LIMITS_MAX_CONNECTIONS_PER_IP="1",
                          ORIGIN_ALLOW=APP)
    a = ws_open(wsg, headers=[("Origin", APP)])
    try:
        got, _, raw = attempt(wsg, headers=[("Origin", "https://evil.com")])
        assert got == 429, raw[:300]
    finally:
        a.close()


def test_xff_trusted_proxy_counts_per_client(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, LIMITS_MAX_CONNECTIONS_PER_IP="1",
                          SERVER_TRUSTED_PROXIES="127.0.0.1/32")
    a = ws_open(wsg, headers=[("X-Forwarded-For", "203.0.113.7")])
    b = ws_open(wsg, headers=[("X-Forwarded-For", "198.51.100.1, 198.51.100.9")])
    try:
        ops = wait_opens(backend, 2)
        assert ops[1]["headers"].get("X-Real-IP") == "203.0.113.7", ops[1]
        assert ops[1]["headers"].get("X-Forwarded-For") == "203.0.113.7, 127.0.0.1", ops[1]
        # rightmost untrusted address is the client
        assert ops[2]["headers"].get("X-Real-IP") == "198.51.100.9", ops[2]
        assert ops[2]["headers"].get("X-Forwarded-For") == \
            "198.51.100.1, 198.51.100.9, 127.0.0.1", ops[2]
        # a third from 203.0.113.7, also behind a trusted hop: over its limit
        got, _, raw = attempt(wsg, headers=[("X-Forwarded-For", "203.0.113.7, 127.0.0.1")])
        assert got == 429, raw[:300]
        rec = wsg.wait_access(lambda r: r.get("event") == "reject")
        assert rec["status"] == 429 and rec.get("client_ip") == "203.0.113.7", rec
        # the proxy's own (XFF-less) connection counts as 127.0.0.1
        c = ws_open(wsg)
        ws_close(c)
        wait_opens(backend, 3)
    finally:
        a.close()
        b.close()


def test_xff_untrusted_peer_ignored(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, LIMITS_MAX_CONNECTIONS_PER_IP="1",
                          SERVER_TRUSTED_PROXIES="10.0.0.0/8")
    a = ws_open(wsg, headers=[("X-Forwarded-For", "203.0.113.7")])
    try:
        op = expect_open(backend)
        assert op["headers"].get("X-Real-IP") == "127.0.0.1", op
        assert "203.0.113.7" not in op["headers"].get("X-Forwarded-For", ""), op
        got, _, raw = attempt(wsg, headers=[("X-Forwarded-For", "198.51.100.9")])
        assert got == 429, raw[:300]
        rec = wsg.wait_access(lambda r: r.get("event") == "reject")
        assert rec["status"] == 429 and rec.get("client_ip") == "127.0.0.1", rec
        wait_opens(backend, 1)
    finally:
        a.close()


def test_xff_without_trusted_proxies_ignored(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url)
    got, _, raw = attempt(wsg, headers=[("X-Forwarded-For", "203.0.113.7"),
                                        ("X-Real-IP", "203.0.113.8")])
    assert got == 101, raw[:300]
    op = expect_open(backend)
    assert op["headers"].get("X-Real-IP") == "127.0.0.1", op
    assert "203.0.113" not in json.dumps(dict(op["headers"])), op


def proxied_upgrade(wsg, preamble, headers=None):
    sock = proxied_connect(wsg, preamble)
    sock.sendall(upgrade_head(wsg, headers=headers))
    status, hdrs, raw = read_head(sock)
    return sock, status, raw


@pytest.mark.parametrize("version,src", [("v1", "203.0.113.50"), ("v2", "198.51.100.77"),
                                         ("v1", "2001:db8::5"), ("v2", "2001:db8::7")])
def test_proxy_protocol_trusted(backend, wsguard_factory, version, src):
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on",
                          SERVER_TRUSTED_PROXIES="127.0.0.1/32")
    pre = proxy_v1(src) if version == "v1" else proxy_v2(src)
    sock, status, raw = proxied_upgrade(wsg, pre)
    try:
        assert status == 101, raw[:300]
        op = expect_open(backend)
        assert op["headers"].get("X-Real-IP") == src, op
    finally:
        sock.close()
    rec = wsg.wait_access(lambda r: r.get("event") == "session")
    assert rec.get("client_ip") == src, rec


def test_proxy_protocol_per_ip_counts_source(backend, wsguard_factory):
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on",
                          SERVER_TRUSTED_PROXIES="127.0.0.1/32",
                          LIMITS_MAX_CONNECTIONS_PER_IP="1")
    s1, st1, r1 = proxied_upgrade(wsg, proxy_v1("203.0.113.1"))
    s2, st2, r2 = proxied_upgrade(wsg, proxy_v2("203.0.113.2"))
    s3, st3, r3 = proxied_upgrade(wsg, proxy_v1("203.0.113.1"))
    try:
        assert (st1, st2, st3) == (101, 101, 429), (r1[:200], r2[:200], r3[:200])
        rec = wsg.wait_access(lambda r: r.get("event") == "reject")
        assert rec["status"] == 429 and rec.get("client_ip") == "203.0.113.1", rec
        wait_opens(backend, 2)
    finally:
        for s in (s1, s2, s3):
            s.close()


def test_proxy_protocol_untrusted_peer(backend, wsguard_factory):
    """A PROXY header from a peer not in trusted_proxies is consumed but
    its address is not believed."""
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on",
                          SERVER_TRUSTED_PROXIES="10.0.0.0/8")
    sock, status, raw = proxied_upgrade(wsg, proxy_v1("203.0.113.50"))
    try:
        assert status == 101, raw[:300]
        op = expect_open(backend)
        assert op["headers"].get("X-Real-IP") == "127.0.0.1", op
    finally:
        sock.close()


def test_proxy_protocol_trusted_xff_not_used(backend, wsguard_factory):
    """With a PROXY header naming the client, a client-sent XFF cannot
    override it."""
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on",
                          SERVER_TRUSTED_PROXIES="127.0.0.1/32")
    sock, status, raw = proxied_upgrade(wsg, proxy_v2("203.0.113.50"),
                                        headers=[("X-Forwarded-For", "192.0.2.66")])
    try:
        assert status == 101, raw[:300]
        op = expect_open(backend)
        assert op["headers"].get("X-Real-IP") == "203.0.113.50", op
    finally:
        sock.close()


@pytest.mark.parametrize("preamble", [b"", b"GARBAGE\r\n", b"PROXY TCP4 1.2.3\r\n",
                                      b"PROXY UNKNOWN-FAMILY 1.2.3.4 5.6.7.8 1 2\r\n"],
                         ids=["none", "garbage", "short-v1", "bad-family"])
def test_proxy_protocol_required(backend, wsguard_factory, preamble):
    """proxy_protocol = on: a connection that does not start with a valid
    PROXY header never gets a 101 (here: TLS straight away, or junk)."""
    wsg = wsguard_factory(backend.url, SERVER_PROXY_PROTOCOL="on",
                          SERVER_TRUSTED_PROXIES="127.0.0.1/32")
    import socket as _s
    import ssl as _ssl
    sock = _s.create_connection((wsg.host, wsg.port), timeout=5)
    got101 = False
    try:
        if preamble:
            sock.sendall(preamble)
        try:
            tls = wsg.client_ssl.wrap_socket(sock, server_hostname="localhost")
            tls.settimeout(5)
            tls.sendall(upgrade_head(wsg))
            status, _, raw = read_head(tls)
            got101 = status == 101
        except (OSError, _ssl.SSLError, TimeoutError):
            pass
    finally:
        sock.close()
    assert not got101
    time.sleep(0.2)
    assert backend.opens() == []
    assert wsg.alive()
    # and a proper one still works
    s2, status, raw = proxied_upgrade(wsg, proxy_v1("203.0.113.9"))
    s2.close()
    assert status == 101, raw[:300]
