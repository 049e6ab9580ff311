"""Cluster mode ([cluster], docs/scaling.md) against a real redis-server.

Every test starts its own redis-server (/usr/bin/redis-server, no
persistence, a free loopback port) and uses its own key prefix, so tests
never see each other's keys. Replicas are real wsguard processes (one
worker each) sharing that Redis; clients are real TLS WebSocket clients
from 127.0.0.1 (or, behind the trusted proxy 127.0.0.1, from the address
an X-Forwarded-For names).

Nothing here sleeps to synchronise: tests wait for a metric value, a log
line, a Redis key's state or a WebSocket close, each with a generous
deadline (a loaded 2-core CI machine must not make them flaky). The few
timing assertions (a revoked session closed within 1 s, a killed
replica's share free within lease + 1 s, a revoked token accepted again
not before its ttl) only bound what a slow machine can only make later,
or leave a wide margin; one test observes a rate (reconnections over 6 s).

Three of them found wsguard bugs, now fixed: a connection counted as up
before Redis had answered anything (test_unresponsive_redis_closed_not_ready),
no back-off after a refused password (test_wrong_password_backs_off), and a
refused slot left in Redis for the whole lease
(test_refused_while_releasing_leaves_no_phantom).
"""

import json
import os
import socket
import threading
import time

import pytest

import rawws
from clustertools import (Blackhole, CloseWatch, RedisServer, Resp, churn, echoes,
                          hash_counts, ip_keys, metric, revoke, start_replica, ws_open)
from conftest import wait_until
from helpers import raw_connect, read_head, upgrade_head
from sectools import SECRET, claims, hs_token

LOOPBACK = "127.0.0.1"
FLEET_REASON = "per-IP connection limit (fleet-wide)"
JWT = {"JWT_ENABLED": "yes", "JWT_ALGORITHMS": "HS256", "JWT_SECRET": SECRET}


# --------------------------------------------------------------------------
# fixtures and small helpers

@pytest.fixture
def redis(tmp_path):
    r = RedisServer(tmp_path / "redis")
    r.start()
    yield r
    r.kill()


@pytest.fixture
def prefix():
    return "wsgt%s:" % os.urandom(4).hex()


def try_open(wsg, headers=None, path="/", timeout=10.0):
    """(status, RawWS or None) of one upgrade."""
    try:
        return 101, ws_open(wsg, headers=headers, path=path, timeout=timeout)
    except rawws.HandshakeError as e:
        return e.status, None


def open_ok(wsg, headers=None, path="/"):
    st, ws = try_open(wsg, headers=headers, path=path)
    assert st == 101, "upgrade refused with %r; stderr tail:\n%s" % (
        st, wsg.stderr_text()[-2000:])
    return ws


def close_all(sessions):
    for ws in sessions:
        ws.close()
    del sessions[:]


def field_of(admin):
    """This replica's field in an address's hash (one worker: worker 0)."""
    return "%s:0" % admin.status()["cluster"]["replica"]


def wait_counts(redis, prefix, want, ip=LOOPBACK, timeout=10.0):
    """Poll the address's hash until it is want ({field: count}); assert."""
    got = wait_until(lambda: hash_counts(redis, prefix, ip) == want and want, timeout,
                     interval=0.05)
    assert got, "hash %sip:%s is %r, want %r" % (prefix, ip, hash_counts(redis, prefix, ip),
                                                 want)


def wait_key_gone(redis, prefix, ip=LOOPBACK, timeout=10.0):
    key = "%sip:%s" % (prefix, ip)
    gone = wait_until(lambda: redis.call("EXISTS", key) == 0, timeout, interval=0.05)
    assert gone, "%s still there: %r" % (key, redis.call("HGETALL", key))


def wait_up(admin, value, timeout=15.0):
    v = admin.wait_metric("wsguard_cluster_up", {}, value, timeout=timeout)
    assert v == value, "wsguard_cluster_up stayed %r (want %r)" % (v, value)


def wait_metric(admin, name, pred, timeout=5.0, **labels):
    """Poll until metric name{labels} satisfies pred (a value or a
    predicate); assert, return the value."""
    ok = pred if callable(pred) else (lambda v: v == pred)
    got = wait_until(lambda: ok(metric(admin, name, **labels)), timeout, interval=0.05)
    v = metric(admin, name, **labels)
    assert got, "%s%r is %r" % (name, labels, v)
    return v


def wait_log(wsg, text, timeout=5.0):
    ok = wait_until(lambda: text in wsg.stderr_text(), timeout)
    assert ok, "no %r in the log: %s" % (text, wsg.stderr_text()[-2000:])


def rejects(wsg, status=None):
    return [r for r in wsg.access_log() if r.get("event") == "reject"
            and (status is None or r.get("status") == status)]


def wait_reject(wsg, status, reason, n=1, timeout=5.0):
    """The n-th reject record with this status; its reason is checked."""
    ok = wait_until(lambda: len(rejects(wsg, status)) >= n, timeout)
    assert ok, "no %d-th %d reject in the access log: %r" % (n, status, wsg.access_log())
    rec = rejects(wsg, status)[n - 1]
    assert rec.get("reason") == reason, rec
    return rec


def token_path(sub, jti=None):
    extra = {"jti": jti} if jti is not None else {}
    return "/?access_token=" + hs_token(claims(sub=sub, ttl=600, **extra))


# ==========================================================================
# 1. the fleet-wide per-IP limit

def test_fleet_wide_limit_across_two_replicas(backend, wsguard_factory, redis, prefix):
    """max_connections_per_ip = 4 on two replicas sharing one Redis: of 6
    upgrades from 127.0.0.1 alternating between them, exactly 4 are
    admitted and 2 refused with 429 "(fleet-wide)"; the Redis hash sums
    to 4, one field per replica; a slot given back on one replica can be
    taken on the other; when everything is closed the key is gone."""
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          LIMITS_MAX_CONNECTIONS_PER_IP="4")
    b, ba = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          LIMITS_MAX_CONNECTIONS_PER_IP="4")
    fa, fb = field_of(aa), field_of(ba)
    assert fa != fb
    st = aa.status()["cluster"]
    assert st["enabled"] is True and st["up"] is True, st
    assert st["workers_connected"] == 1 and st["on_error"] == "closed", st
    assert metric(aa, "wsguard_cluster_enabled") == 1

    held, statuses = [], []
    try:
        for i in range(6):
            s, ws = try_open((a, b)[i % 2])
            statuses.append(s)
            if ws is not None:
                held.append(ws)
        assert statuses == [101, 101, 101, 101, 429, 429], statuses
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 2, fb: 2}
        for w in (a, b):
            wait_reject(w, 429, FLEET_REASON)
        backend.wait_record(lambda r: r.get("event") == "open" and r.get("conn") == 4)
        assert len(backend.opens()) == 4
        for ws in held:
            assert echoes(ws)
        # The round trips were observed.
        assert metric(aa, "wsguard_cluster_roundtrip_seconds_count") >= 2

        # A slot given back on A is free for B, then the fleet is full again.
        held.pop(0).close()             # one of A's
        wait_counts(redis, prefix, {fa: 1, fb: 2})
        held.append(open_ok(b))
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 1, fb: 3}
        s, _ = try_open(a)
        assert s == 429
        s, _ = try_open(b)
        assert s == 429
        wait_reject(a, 429, FLEET_REASON, n=2)
        wait_reject(b, 429, FLEET_REASON, n=2)
    finally:
        close_all(held)
    wait_key_gone(redis, prefix)
    assert metric(aa, "wsguard_cluster_errors_total") == 0
    assert metric(ba, "wsguard_cluster_errors_total") == 0


# ==========================================================================
# 2. a replica killed while holding slots

def test_killed_replica_share_expires_within_lease(backend, wsguard_factory, redis, prefix):
    """A replica holding 2 of the 4 slots is SIGKILLed: its share is free
    again within lease (3 s) + 1 s, the survivor takes exactly those 2
    slots, and the dead replica's field is gone from the hash."""
    lease = 3.0
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          LIMITS_MAX_CONNECTIONS_PER_IP="4", CLUSTER_LEASE="3s")
    b, ba = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          LIMITS_MAX_CONNECTIONS_PER_IP="4", CLUSTER_LEASE="3s")
    fa, fb = field_of(aa), field_of(ba)
    held_a, held_b = [], []
    try:
        held_a += [open_ok(a), open_ok(a)]
        held_b += [open_ok(b), open_ok(b)]
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 2, fb: 2}

        a.kill()
        t_kill = time.monotonic()
        s, ws = try_open(b)
        if time.monotonic() - t_kill < lease - 1.0:
            # Not expired yet: the dead replica's share still counts.
            assert s == 429 and ws is None, s
        elif ws is not None:
            held_b.append(ws)

        admitted_at = None
        while time.monotonic() < t_kill + lease + 10.0:
            start = time.monotonic()
            s, ws = try_open(b)
            if s == 101:
                held_b.append(ws)
                admitted_at = start
                break
            assert s == 429, s
        assert admitted_at is not None, "A's share never expired: %r" % (
            hash_counts(redis, prefix, LOOPBACK),)
        elapsed = admitted_at - t_kill
        assert elapsed <= lease + 1.0, "freed %.2fs after the kill (lease %.0fs)" % (
            elapsed, lease)
        while len(held_b) < 4:
            held_b.append(open_ok(b))
        s, _ = try_open(b)
        assert s == 429
        assert hash_counts(redis, prefix, LOOPBACK) == {fb: 4}
    finally:
        close_all(held_a)
        close_all(held_b)
    wait_key_gone(redis, prefix)


# ==========================================================================
# 3. Redis stopped and restarted

def test_redis_down_on_error_open_then_recount(backend, wsguard_factory, redis, prefix):
    """on_error = open: with Redis stopped each replica admits up to its
    local limit (the fleet goes over the shared limit), /readyz stays 200;
    once Redis is back (same port, empty) both reconnect, write the counts
    they hold (including the admissions made meanwhile) and the limit is
    enforced fleet-wide again as sessions end."""
    kw = dict(LIMITS_MAX_CONNECTIONS_PER_IP="3", CLUSTER_ON_ERROR="open")
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    b, ba = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    fa, fb = field_of(aa), field_of(ba)
    held_a, held_b = [], []
    try:
        held_a.append(open_ok(a))
        held_b.append(open_ok(b))
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 1, fb: 1}

        redis.stop()
        wait_up(aa, 0)
        wait_up(ba, 0)
        for adm in (aa, ba):
            st, _, body = adm.get("/readyz")
            assert st == 200, (st, body)
            assert adm.status()["cluster"]["up"] is False
        # Local limits only: A goes to 3, B to 2; fleet total 5 > 3.
        held_a += [open_ok(a), open_ok(a)]
        held_b.append(open_ok(b))
        s, _ = try_open(a)
        assert s == 429
        rec = wait_reject(a, 429, "per-IP connection limit")
        assert rec["client_ip"] == LOOPBACK
        for ws in held_a + held_b:
            assert echoes(ws)
        wait_metric(aa, "wsguard_cluster_errors_total", lambda v: v > 0)
        wait_metric(ba, "wsguard_cluster_errors_total", lambda v: v > 0)

        redis.start()
        wait_up(aa, 1)
        wait_up(ba, 1)
        # The held connections re-appear, the ones admitted meanwhile too.
        wait_counts(redis, prefix, {fa: 3, fb: 2})
        # B is under its local limit (2 < 3) but the fleet is over.
        s, _ = try_open(b)
        assert s == 429
        wait_reject(b, 429, FLEET_REASON)

        held_a.pop().close()
        held_a.pop().close()
        wait_counts(redis, prefix, {fa: 1, fb: 2})
        s, _ = try_open(b)
        assert s == 429
        wait_reject(b, 429, FLEET_REASON, n=2)

        held_a.pop().close()
        wait_counts(redis, prefix, {fb: 2})
        held_b.append(open_ok(b))
        assert hash_counts(redis, prefix, LOOPBACK) == {fb: 3}
        for ws in held_b:
            assert echoes(ws)
    finally:
        close_all(held_a)
        close_all(held_b)
    wait_key_gone(redis, prefix)


def test_redis_down_on_error_closed_then_back(backend, wsguard_factory, redis, prefix):
    """on_error = closed: with Redis stopped new upgrades get 503 (reason
    cluster), /readyz is 503 "Redis is unreachable (on_error = closed)",
    open sessions go on; Redis restarted on the same port: wsguard
    reconnects, is ready again, the held session is counted again and new
    upgrades are counted."""
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          LIMITS_MAX_CONNECTIONS_PER_IP="4")
    fa = field_of(aa)
    st, _, body = aa.get("/readyz")
    assert st == 200, (st, body)
    held = [open_ok(a)]
    try:
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 1}
        redis.stop()
        wait_up(aa, 0)
        st, _, body = aa.get("/readyz")
        assert st == 503, (st, body)
        assert b"Redis is unreachable (on_error = closed)" in body, body
        assert metric(aa, "wsguard_ready") == 0
        assert aa.status()["cluster"]["up"] is False

        s, _ = try_open(a)
        assert s == 503
        rec = wait_reject(a, 503, "shared limits unavailable")
        assert rec["client_ip"] == LOOPBACK
        wait_metric(aa, "wsguard_rejections_total", lambda v: v >= 1, reason="cluster")
        assert echoes(held[0])
        wait_log(a, "redis 127.0.0.1:%d" % redis.port)

        redis.start()
        wait_up(aa, 1)
        ok = wait_until(lambda: aa.get("/readyz")[0] == 200, 10)
        assert ok, aa.get("/readyz")
        assert metric(aa, "wsguard_ready") == 1
        wait_counts(redis, prefix, {fa: 1})
        held.append(open_ok(a))
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 2}
        assert echoes(held[0]) and echoes(held[1])
    finally:
        close_all(held)
    wait_key_gone(redis, prefix)


# ==========================================================================
# 4. churn: every count back to zero

def test_churn_counts_back_to_zero(backend, wsguard_factory, redis, prefix):
    """1,000 connections over both replicas, with early closes of every
    kind (TCP only, TLS only, part of the head, the head then RST, upgraded
    then RST, a clean close, a message then a clean close), in two rounds:
    600 with fewer clients at once than the fleet limit (most upgrades
    succeed), then 400 from 24 clients at once racing for the last two of
    the ten slots while eight sessions are held (the limit is reached).
    How many upgrades lose the race in the second round depends on timing;
    neither round's assertions do. Afterwards no <prefix>ip:* key is left
    (within 10 s, far less than the 30 s lease, so an expiry cannot hide a
    leak), no connection is active, and each replica's held count starts
    from zero again (one new connection is written as count 1)."""
    kw = dict(LIMITS_MAX_CONNECTIONS_PER_IP="10", CLUSTER_LEASE="30s",
              SERVER_HANDSHAKE_TIMEOUT="5s")
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    b, ba = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    fa, fb = field_of(aa), field_of(ba)

    t0 = time.monotonic()
    below, peak = churn([a, b], 600, concurrency=6, seed=20240601)
    print("churn below the limit: %.1fs %r, peak %d sessions" % (
        time.monotonic() - t0, dict(below), peak))
    assert sum(below.values()) == 600
    # About 340 of the 600 reach the upgrade; only a slot still held after
    # its client has finished (released a moment later) can refuse one.
    assert below["upgraded"] + below["message"] + below["upgraded-rst"] > 100, below
    assert peak <= 6

    left = wait_until(lambda: not ip_keys(redis, prefix), 10.0, interval=0.1)
    assert left, "keys left after the first round: %r" % {
        k: redis.call("HGETALL", k) for k in ip_keys(redis, prefix)}
    held = [open_ok(w) for w in (a, b) for _ in range(4)]
    try:
        t0 = time.monotonic()
        at, peak = churn([a, b], 400, concurrency=24, seed=20240602)
        print("churn at the limit: %.1fs %r, peak %d sessions" % (
            time.monotonic() - t0, dict(at), peak))
    finally:
        close_all(held)
    assert sum(at.values()) == 400
    assert at["refused-429"] > 0, at       # the limit was reached
    # What the clients held at once (a lower bound of what wsguard held)
    # next to the eight sessions held throughout.
    assert peak <= 2, "%d sessions next to 8 held, over a fleet limit of 10" % peak

    out = below + at
    assert out["bad-echo"] == 0, out
    assert not [k for k in out if k.startswith("refused-") and k != "refused-429"], out

    left = wait_until(lambda: not ip_keys(redis, prefix), 10.0, interval=0.1)
    assert left, "keys left after the churn: %r" % {
        k: redis.call("HGETALL", k) for k in ip_keys(redis, prefix)}
    for adm in (aa, ba):
        n = adm.wait_metric("wsguard_connections_active", {}, 0, timeout=10)
        assert n == 0
        assert metric(adm, "wsguard_cluster_errors_total") == 0
    held = [open_ok(a), open_ok(b)]
    try:
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 1, fb: 1}
    finally:
        close_all(held)
    wait_key_gone(redis, prefix)


# ==========================================================================
# 5. revocation

def wait_subscribed(redis, prefix, n, timeout=10.0):
    """Until n clients are subscribed to <prefix>revoke (worker 0 of each
    replica; cluster_up only says that the command connections are up)."""
    def count():
        r = redis.call("PUBSUB", "NUMSUB", prefix + "revoke")
        return int(r[1])
    ok = wait_until(lambda: count() == n, timeout, interval=0.05)
    assert ok, "%d subscribers to %srevoke, want %d" % (count(), prefix, n)


def jwt_replicas(wsguard_factory, backend, redis, prefix, n=2, subscribers=None, **kw):
    out = []
    for _ in range(n):
        out.append(start_replica(wsguard_factory, backend.url, redis.url, prefix,
                                 CLUSTER_ON_ERROR="open", **dict(JWT, **kw)))
    wait_subscribed(redis, prefix, n if subscribers is None else subscribers)
    return out


def assert_revoked_closes(watches, t0, limit=1.0):
    for name, w in watches.items():
        code, reason, at = w.wait()
        assert (code, reason) == (1008, "revoked"), (name, code, reason)
        assert at - t0 < limit, "%s closed %.2fs after the revocation" % (name, at - t0)


def poll_until_admitted(wsg, path, t0, ttl, headers=None, slack=6.0):
    """Upgrade until admitted (401 meanwhile); returns the RawWS. Asserts
    it was not admitted before ttl had passed since t0."""
    while True:
        start = time.monotonic()
        s, ws = try_open(wsg, path=path, headers=headers)
        if s == 101:
            assert time.monotonic() - t0 >= ttl - 0.25, (
                "admitted %.2fs after a revocation of ttl %.1fs" % (time.monotonic() - t0, ttl))
            return ws
        assert s == 401, s
        assert start - t0 < ttl + slack, "still refused %.1fs after a ttl of %.1fs" % (
            start - t0, ttl)


def test_revoke_sub_across_replicas(backend, wsguard_factory, redis, prefix):
    """POST /revoke {"sub"} on replica A closes the subject's sessions on
    A and B with 1008 "revoked" within 1 s, leaves the others echoing,
    and refuses the subject's new upgrades on both with 401 "token
    revoked" until the ttl (3 s) passes."""
    (a, aa), (b, ba) = jwt_replicas(wsguard_factory, backend, redis, prefix)
    alice_a = ws_open(a, path=token_path("alice", "a1"))
    alice_b = ws_open(b, path=token_path("alice", "a2"))
    bob_a = ws_open(a, path=token_path("bob", "b1"))
    carol_b = ws_open(b, path=token_path("carol", "c1"))
    try:
        watches = {"alice@A": CloseWatch(alice_a), "alice@B": CloseWatch(alice_b)}
        t0 = time.monotonic()
        st, ans = revoke(aa, {"sub": "alice", "ttl": "3s"})
        assert st == 202, (st, ans)
        assert ans == {"closed": 1, "published": True}, ans
        assert_revoked_closes(watches, t0)
        for ws in (bob_a, carol_b):
            assert echoes(ws, "still here")

        # Stored for replicas that come later, with its expiry.
        assert redis.call("ZSCORE", prefix + "revoked", "sub:alice") is not None
        for w, adm in ((a, aa), (b, ba)):
            wait_metric(adm, "wsguard_enforcements_total", 1, limit="revoked")
            w.wait_access(lambda r: r.get("event") == "session" and r.get("sub") == "alice"
                          and r.get("reason") == "revoked")
            s, _ = try_open(w, path=token_path("alice", "a3"))
            assert s == 401
            wait_reject(w, 401, "token revoked")
            wait_metric(adm, "wsguard_rejections_total", 1, reason="revoked")
            assert metric(adm, "wsguard_revocations_in_force") >= 1
        wait_log(b, "revoked sub alice (from the cluster channel)")
        wait_log(a, "from the admin listener: 1 sessions closed here")

        # Accepted again once the ttl is over, on both replicas.
        again = [poll_until_admitted(w, token_path("alice", "a4"), t0, 3.0) for w in (a, b)]
        for ws in again + [bob_a, carol_b]:
            assert echoes(ws)
        close_all(again)
    finally:
        close_all([alice_a, alice_b, bob_a, carol_b])


def test_revoke_jti_across_replicas(backend, wsguard_factory, redis, prefix):
    """{"jti"} closes the sessions opened with that token on both replicas
    (the same token used twice), not the subject's other tokens; the token
    is refused, another token of the same subject is admitted."""
    (a, aa), (b, ba) = jwt_replicas(wsguard_factory, backend, redis, prefix)
    stolen = token_path("dave", "tok-stolen")
    s1, s2 = ws_open(a, path=stolen), ws_open(b, path=stolen)
    other_a = ws_open(a, path=token_path("dave", "tok-other"))
    other_b = ws_open(b, path=token_path("dave", "tok-other2"))
    try:
        watches = {"jti@A": CloseWatch(s1), "jti@B": CloseWatch(s2)}
        t0 = time.monotonic()
        st, ans = revoke(ba, {"jti": "tok-stolen", "ttl": "60s"})
        assert st == 202 and ans == {"closed": 1, "published": True}, (st, ans)
        assert_revoked_closes(watches, t0)
        for ws in (other_a, other_b):
            assert echoes(ws)
        for w in (a, b):
            s, _ = try_open(w, path=stolen)
            assert s == 401
            wait_reject(w, 401, "token revoked")
            fresh = open_ok(w, path=token_path("dave", "tok-new"))
            assert echoes(fresh)
            fresh.close()
        score = redis.call("ZSCORE", prefix + "revoked", "jti:tok-stolen")
        assert score is not None
    finally:
        close_all([s1, s2, other_a, other_b])


def test_revoke_client_ip_across_replicas(backend, wsguard_factory, redis, prefix):
    """{"client_ip"} (given as ::ffff:203.0.113.5, the same address)
    closes that client's sessions on both replicas, not another client's;
    its new upgrades get 401 "address revoked" until the ttl passes."""
    (a, aa), (b, ba) = jwt_replicas(wsguard_factory, backend, redis, prefix,
                                    SERVER_TRUSTED_PROXIES="127.0.0.1/32", JWT_ENABLED="no")
    bad = [("X-Forwarded-For", "203.0.113.5")]
    good = [("X-Forwarded-For", "203.0.113.6")]
    b5a, b5b = ws_open(a, headers=bad), ws_open(b, headers=bad)
    g6a, g6b = ws_open(a, headers=good), ws_open(b, headers=good)
    try:
        watches = {"5@A": CloseWatch(b5a), "5@B": CloseWatch(b5b)}
        t0 = time.monotonic()
        st, ans = revoke(aa, {"client_ip": "::ffff:203.0.113.5", "ttl": "2s"})
        assert st == 202 and ans == {"closed": 1, "published": True}, (st, ans)
        assert_revoked_closes(watches, t0)
        for ws in (g6a, g6b):
            assert echoes(ws)
        assert redis.call("ZSCORE", prefix + "revoked", "client_ip:203.0.113.5") is not None
        for w in (a, b):
            s, _ = try_open(w, headers=bad)
            assert s == 401
            rec = wait_reject(w, 401, "address revoked")
            assert rec["client_ip"] == "203.0.113.5", rec
            other = open_ok(w, headers=good)
            other.close()
        again = [poll_until_admitted(w, "/", t0, 2.0, headers=bad) for w in (a, b)]
        close_all(again)
    finally:
        close_all([b5a, b5b, g6a, g6b])


def test_revoke_published_with_redis_cli(backend, wsguard_factory, redis, prefix):
    """An application PUBLISHes the JSON to <prefix>revoke with redis-cli:
    both replicas (their worker 0 is subscribed) close the matching
    sessions, store it in <prefix>revoked and refuse new upgrades. A
    message that does not parse is logged and ignored."""
    (a, aa), (b, ba) = jwt_replicas(wsguard_factory, backend, redis, prefix)
    erin_a = ws_open(a, path=token_path("erin"))
    erin_b = ws_open(b, path=token_path("erin"))
    frank = ws_open(b, path=token_path("frank"))
    try:
        # Garbage first: ignored, logged, nothing closed.
        n = redis.cli("PUBLISH", prefix + "revoke", '{"sub":"erin","bogus":1}')
        assert n == "2", n      # two subscribers: worker 0 of each replica
        for w in (a, b):
            wait_log(w, "revocation on %srevoke ignored" % prefix)
        assert echoes(erin_a) and echoes(erin_b)
        assert redis.call("EXISTS", prefix + "revoked") == 0

        watches = {"erin@A": CloseWatch(erin_a), "erin@B": CloseWatch(erin_b)}
        t0 = time.monotonic()
        n = redis.cli("PUBLISH", prefix + "revoke", '{"sub":"erin","ttl":"1h"}')
        assert n == "2", n
        assert_revoked_closes(watches, t0)
        assert echoes(frank)
        ok = wait_until(lambda: redis.call("ZSCORE", prefix + "revoked", "sub:erin"), 5)
        assert ok, "the replicas did not store the revocation"
        assert float(ok) > 0
        for w in (a, b):
            s, _ = try_open(w, path=token_path("erin"))
            assert s == 401
            wait_reject(w, 401, "token revoked")
            wait_log(w, "revoked sub erin (from the cluster channel)")
    finally:
        close_all([erin_a, erin_b, frank])


def test_revoke_loaded_by_replica_started_later(backend, wsguard_factory, redis, prefix):
    """Revocations made before a replica starts (one through POST /revoke,
    one published with redis-cli) are in <prefix>revoked; a replica
    started afterwards loads them when its connection comes up and
    refuses them, while admitting everyone else."""
    (a, aa), = jwt_replicas(wsguard_factory, backend, redis, prefix, n=1)
    st, ans = revoke(aa, {"sub": "mallory", "ttl": "10m"})
    assert st == 202 and ans == {"closed": 0, "published": True}, (st, ans)
    assert redis.cli("PUBLISH", prefix + "revoke", '{"jti":"leaked-1","ttl":"10m"}') == "1"
    ok = wait_until(lambda: redis.call("ZCARD", prefix + "revoked") == 2, 5)
    assert ok, redis.call("ZRANGE", prefix + "revoked", 0, -1)

    (b, ba), = jwt_replicas(wsguard_factory, backend, redis, prefix, n=1, subscribers=2)
    wait_log(b, "cluster: 2 revocations in force loaded", timeout=10)
    assert metric(ba, "wsguard_revocations_in_force") == 2
    s, _ = try_open(b, path=token_path("mallory", "m1"))
    assert s == 401
    s, _ = try_open(b, path=token_path("trent", "leaked-1"))
    assert s == 401
    wait_reject(b, 401, "token revoked", n=1)
    wait_reject(b, 401, "token revoked", n=2)
    ws = open_ok(b, path=token_path("trent", "fine-1"))
    assert echoes(ws)
    ws.close()


BAD_BODIES = [
    b"",
    b"not json",
    b"[]",
    b'"sub"',
    b"{}",
    b'{"ttl": "3s"}',
    b'{"sub": ""}',
    b'{"sub": 42}',
    b'{"sub": "a", "jti": "b"}',
    b'{"sub": "a", "client_ip": "192.0.2.1"}',
    b'{"sub": "a", "extra": 1}',
    b'{"client_ip": "not-an-address"}',
    b'{"client_ip": "192.0.2.300"}',
    b'{"sub": "a", "ttl": "0s"}',
    b'{"sub": "a", "ttl": "721h"}',
    b'{"sub": "a", "ttl": "soon"}',
    b'{"sub": "a", "ttl": 5}',
    b'{"sub": "' + b"x" * 256 + b'"}',
    b'{"sub": "a"',
]


def test_revoke_bad_bodies(backend, wsguard_factory, redis, prefix):
    """Every malformed body is 400 with a reason; none closes, stores or
    publishes anything."""
    (a, aa), = jwt_replicas(wsguard_factory, backend, redis, prefix, n=1)
    ws = ws_open(a, path=token_path("a"))
    sub = Resp("127.0.0.1", redis.port)
    try:
        sub.call("SUBSCRIBE", prefix + "revoke")
        for body in BAD_BODIES:
            st, ans = revoke(aa, body)
            assert st == 400, (body, st, ans)
            assert ans, (body, ans)
        assert echoes(ws)
        assert redis.call("EXISTS", prefix + "revoked") == 0
        assert metric(aa, "wsguard_revocations_in_force") == 0
        # Nothing was published: the only message on the channel is the
        # one a valid revocation (of nobody here) sends now.
        st, ans = revoke(aa, {"sub": "nobody"})
        assert st == 202 and ans == {"closed": 0, "published": True}, (st, ans)
        msg = sub.reply()
        assert msg[0] == "message" and msg[1] == prefix + "revoke", msg
        assert json.loads(msg[2])["sub"] == "nobody", msg
        assert echoes(ws)
    finally:
        sub.close()
        ws.close()


def test_revoke_without_cluster_is_local(backend, wsguard_factory):
    """Without [cluster], POST /revoke acts on this process only:
    published false, the session closed, new upgrades refused until the
    ttl passes."""
    from admintools import start_admin
    a, aa = start_admin(wsguard_factory, backend.url, **JWT)
    assert metric(aa, "wsguard_cluster_enabled") == 0
    ivan = ws_open(a, path=token_path("ivan"))
    judy = ws_open(a, path=token_path("judy"))
    try:
        w = CloseWatch(ivan)
        t0 = time.monotonic()
        st, ans = revoke(aa, {"sub": "ivan", "ttl": "2s"})
        assert st == 202 and ans == {"closed": 1, "published": False}, (st, ans)
        assert_revoked_closes({"ivan": w}, t0)
        assert echoes(judy)
        s, _ = try_open(a, path=token_path("ivan"))
        assert s == 401
        wait_reject(a, 401, "token revoked")
        again = poll_until_admitted(a, token_path("ivan"), t0, 2.0)
        again.close()
        st, ans = revoke(aa, b'{"sub": 1}')
        assert st == 400
    finally:
        close_all([ivan, judy])


# ==========================================================================
# 6. a Redis that accepts connections and never answers

def timed_upgrade(wsg, timeout=15.0):
    t = time.monotonic()
    s, ws = try_open(wsg, timeout=timeout)
    return s, ws, time.monotonic() - t


def test_unresponsive_redis_on_error_open(backend, wsguard_factory):
    """Redis accepts but never answers: with on_error = open each upgrade
    waits at most about [cluster] timeout for its command, then is
    admitted under the local limit (the 5th from one address is 429, not
    "fleet-wide"); open sessions keep echoing; errors are counted."""
    bh = Blackhole()
    held = []
    try:
        a, aa = start_replica(wsguard_factory, backend.url, "redis://127.0.0.1:%d" % bh.port,
                              "bh:", wait_up=False, CLUSTER_ON_ERROR="open",
                              CLUSTER_TIMEOUT="1s", LIMITS_MAX_CONNECTIONS_PER_IP="4")
        ok = wait_until(lambda: bh.accepted >= 1, 10)
        assert ok, "wsguard never connected to the fake Redis"
        s, ws, took = timed_upgrade(a)
        assert s == 101 and took < 5.0, (s, took)
        held.append(ws)
        assert echoes(held[0])
        # More upgrades, each right after wsguard has (re)connected to the
        # fake Redis, until one of them was sent to it and timed out there
        # (or 6 tries): every one is admitted anyway, in about timeout.
        for _ in range(6):
            if bh.received("EVALSHA") > 0:
                break
            n = bh.accepted
            wait_until(lambda: bh.accepted > n, 10)
            s, ws, took = timed_upgrade(a)
            assert s == 101 and took < 5.0, (s, took)
            assert echoes(ws)
            ws.close()
            assert echoes(held[0])
        print("upgrades sent to the fake Redis: %d" % bh.received("EVALSHA"))
        # The local limit still applies (the closed ones are gone first).
        n = aa.wait_metric("wsguard_connections_active", {}, 1, timeout=10)
        assert n == 1
        while len(held) < 4:
            s, ws, took = timed_upgrade(a)
            assert s == 101 and took < 5.0, (s, took)
            held.append(ws)
        s, _, took = timed_upgrade(a)
        assert s == 429, s
        wait_reject(a, 429, "per-IP connection limit")
        for ws in held:
            assert echoes(ws)
        wait_metric(aa, "wsguard_cluster_errors_total", lambda v: v > 0)
        st, _, _ = aa.get("/readyz")
        assert st == 200
    finally:
        close_all(held)
        bh.stop()


def test_unresponsive_redis_on_error_closed(backend, wsguard_factory, redis, prefix):
    """Redis replaced by one that accepts and never answers (same port):
    with on_error = closed new upgrades get 503 within about [cluster]
    timeout, the session opened before keeps echoing, errors rise."""
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix,
                          CLUSTER_TIMEOUT="1s", LIMITS_MAX_CONNECTIONS_PER_IP="4")
    held = [open_ok(a)]
    bh = None
    try:
        errors0 = metric(aa, "wsguard_cluster_errors_total")
        redis.stop()
        bh = Blackhole(port=redis.port)
        ok = wait_until(lambda: bh.accepted >= 1, 15)
        assert ok, "no reconnect to the fake Redis"
        n503 = 0
        for _ in range(6):
            if bh.received("EVALSHA") > 0 and n503 >= 2:
                break
            s, ws, took = timed_upgrade(a)
            assert s == 503 and took < 5.0, (s, took)
            n503 += 1
            assert echoes(held[0])
            n = bh.accepted
            wait_until(lambda: bh.accepted > n, 10)
        print("upgrades sent to the fake Redis: %d" % bh.received("EVALSHA"))
        wait_metric(aa, "wsguard_rejections_total", lambda v: v >= n503, reason="cluster")
        wait_metric(aa, "wsguard_cluster_errors_total", lambda v: v > errors0)
        assert echoes(held[0])
        assert len(backend.opens()) == 1
    finally:
        close_all(held)
        if bh is not None:
            bh.stop()


def test_unresponsive_redis_closed_not_ready(backend, wsguard_factory):
    """docs/scaling.md: a Redis that does not answer in time is treated as
    down, and with on_error = closed /readyz is 503 while it is down. Once
    a command has timed out against a Redis that never answers, /readyz
    and wsguard_cluster_up must keep saying "down" (sampled for 3 s)."""
    bh = Blackhole()
    try:
        a, aa = start_replica(wsguard_factory, backend.url, "redis://127.0.0.1:%d" % bh.port,
                              "bh:", wait_up=False, CLUSTER_TIMEOUT="500ms",
                              LIMITS_MAX_CONNECTIONS_PER_IP="4")
        ok = wait_until(lambda: metric(aa, "wsguard_cluster_errors_total") > 0, 10)
        assert ok, a.stderr_text()[-2000:]
        s, _ = try_open(a)
        assert s == 503
        samples = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            st, _, _ = aa.get("/readyz")
            samples.append((st, metric(aa, "wsguard_cluster_up")))
            time.sleep(0.1)
        ready = [x for x in samples if x != (503, 0)]
        assert not ready, "%d of %d samples said ready/up: %r" % (
            len(ready), len(samples), samples)
    finally:
        bh.stop()


# ==========================================================================
# rediss:// and AUTH

def test_rediss_with_ca_file(backend, wsguard_factory, certs, tmp_path, prefix):
    """rediss:// to a TLS-only redis-server (certificate for localhost):
    with ca_file the replica connects and counts; without it (system CAs,
    which do not trust the test certificate) it stays down, logs the TLS
    failure and refuses with 503 (on_error = closed)."""
    r = RedisServer(tmp_path / "tls-redis", tls=(certs.cert, certs.key))
    r.start()
    try:
        assert r.url.startswith("rediss://localhost:")
        a, aa = start_replica(wsguard_factory, backend.url, r.url, prefix,
                              LIMITS_MAX_CONNECTIONS_PER_IP="2", CLUSTER_CA_FILE=certs.cert)
        fa = field_of(aa)
        s1, s2 = open_ok(a), open_ok(a)
        assert hash_counts(r, prefix, LOOPBACK) == {fa: 2}
        s, _ = try_open(a)
        assert s == 429
        assert echoes(s1)
        s1.close()
        s2.close()
        wait_key_gone(r, prefix)

        b, ba = start_replica(wsguard_factory, backend.url, r.url, prefix, wait_up=False,
                              LIMITS_MAX_CONNECTIONS_PER_IP="2")
        ok = wait_until(lambda: "TLS" in "\n".join(
            x for x in b.stderr_text().splitlines() if "redis" in x), 10)
        assert ok, b.stderr_text()[-2000:]
        assert metric(ba, "wsguard_cluster_up") == 0
        s, _ = try_open(b)
        assert s == 503
        assert ip_keys(r, prefix) == []
    finally:
        r.kill()


def test_auth_password_file(backend, wsguard_factory, tmp_path, prefix):
    """requirepass: the right password from password_file (and a db
    number in the URL) connects and counts in that db; a wrong one keeps
    the cluster down (WRONGPASS logged, 503 with on_error = closed). No
    password appears in the logs."""
    right, wrong = "s3cret-right-%s" % os.urandom(4).hex(), "s3cret-wrong-x"
    r = RedisServer(tmp_path / "auth-redis", password=right)
    r.start()
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text(right + "\n")
    bad.write_text(wrong + "\n")
    try:
        url = "redis://127.0.0.1:%d/2" % r.port
        a, aa = start_replica(wsguard_factory, backend.url, url, prefix,
                              LIMITS_MAX_CONNECTIONS_PER_IP="2", CLUSTER_PASSWORD_FILE=str(good))
        ws = open_ok(a)
        with r.client() as c:
            c.call("SELECT", 2)
            h = c.call("HGETALL", "%sip:%s" % (prefix, LOOPBACK))
            assert h and h[0] == field_of(aa) and h[1].startswith("1:"), h
        assert r.call("EXISTS", "%sip:%s" % (prefix, LOOPBACK)) == 0   # not in db 0
        ws.close()

        b, ba = start_replica(wsguard_factory, backend.url, url, prefix, wait_up=False,
                              LIMITS_MAX_CONNECTIONS_PER_IP="2", CLUSTER_PASSWORD_FILE=str(bad))
        ok = wait_until(lambda: "WRONGPASS" in b.stderr_text(), 10)
        assert ok, b.stderr_text()[-2000:]
        s, _ = try_open(b)
        assert s == 503
        ok = wait_until(lambda: ba.get("/readyz")[0] == 503, 5)
        assert ok
        for w in (a, b):
            text = w.stderr_text() + w.stdout_text()
            assert right not in text and wrong not in text
    finally:
        r.kill()


def test_wrong_password_backs_off(backend, wsguard_factory, tmp_path, prefix):
    """docs/scaling.md: a connection that fails is made again with back-off,
    100 ms doubling to 5 s. Refused at AUTH (WRONGPASS), each of worker 0's
    two connections should try at most ~7 times in 6 s (0, 0.1, 0.3, 0.7,
    1.5, 3.1, 6.3 s); we allow 30 in all."""
    r = RedisServer(tmp_path / "auth-redis", password="the-right-one-123")
    r.start()
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password\n")
    try:
        b, ba = start_replica(wsguard_factory, backend.url, r.url, prefix, wait_up=False,
                              CLUSTER_PASSWORD_FILE=str(bad))
        ok = wait_until(lambda: "WRONGPASS" in b.stderr_text(), 10)
        assert ok, b.stderr_text()[-2000:]
        n0 = b.stderr_text().count("WRONGPASS")
        # A rate, so a window of observation: nothing is synchronised on it.
        time.sleep(6.0)
        n = b.stderr_text().count("WRONGPASS") - n0
        assert n <= 30, "%d refused connections in 6 s" % n
    finally:
        r.kill()


# ==========================================================================
# a slot refused while another is given back

def test_refused_while_releasing_leaves_no_phantom(backend, wsguard_factory, redis, prefix):
    """Replica A holds S1, replica B holds S2 (limit 2, lease 30 s). Redis
    is made to pause (DEBUG SLEEP): meanwhile an upgrade X comes to A (its
    acquisition is sent, counting S1 and X) and S1 ends (its release is
    sent after, writing A's count as 1: X is still pending). Redis wakes:
    X is refused (429), A's field is set to 1. A now holds nothing, so its
    field must go (within 5 s, far less than the lease) and B must be able
    to take the second slot."""
    kw = dict(LIMITS_MAX_CONNECTIONS_PER_IP="2", CLUSTER_LEASE="30s", CLUSTER_TIMEOUT="10s")
    a, aa = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    b, ba = start_replica(wsguard_factory, backend.url, redis.url, prefix, **kw)
    fa, fb = field_of(aa), field_of(ba)
    s1, s2 = open_ok(a), open_ok(b)
    x = None
    held = [s2]
    try:
        assert hash_counts(redis, prefix, LOOPBACK) == {fa: 1, fb: 1}
        waits0 = a.stderr_text().count("REQ_READ -> WAIT")
        x = raw_connect(a, timeout=15)       # TLS done before Redis pauses

        def pause():    # its reply comes after 5 s: a longer timeout
            with redis.client(timeout=30) as c:
                c.call("DEBUG", "SLEEP", "5")
        sleeper = threading.Thread(target=pause, daemon=True)
        sleeper.start()

        def asleep():
            try:
                with Resp("127.0.0.1", redis.port, timeout=0.2) as c:
                    c.call("PING")
                return False
            except (socket.timeout, TimeoutError):
                return True
        assert wait_until(asleep, 5), "redis did not pause"

        x.sendall(upgrade_head(a))
        ok = wait_until(lambda: a.stderr_text().count("REQ_READ -> WAIT") > waits0, 5)
        assert ok, "X never waited for Redis"
        s1.send_close(1000)
        s1.expect_close(timeout=5)
        s1.close()
        a.wait_access(lambda r: r.get("event") == "session", timeout=5)
        if not sleeper.is_alive():
            pytest.skip("too slow a machine: Redis woke before S1 had ended")
        sleeper.join(15)
        assert not sleeper.is_alive()

        status, _, raw = read_head(x, timeout=15)
        assert status == 429, raw[:200]
        wait_reject(a, 429, FLEET_REASON)
        assert aa.wait_metric("wsguard_connections_active", {}, 0, timeout=5) == 0

        # A holds nothing now: its field must go, B must get the 2nd slot.
        ok = wait_until(lambda: fa not in hash_counts(redis, prefix, LOOPBACK), 5)
        assert ok, "phantom slot: %r (A holds no connection)" % (
            hash_counts(redis, prefix, LOOPBACK),)
        held.append(open_ok(b))
    finally:
        if x is not None:
            x.close()
        s1.close()
        close_all(held)
