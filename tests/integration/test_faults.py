"""Fault injection at the system-call boundary (issue 13, item 2).

wsguard runs unchanged, with tests/faults/faultshim.c preloaded
(LD_PRELOAD, built with cc into the test's tmp dir). The test switches
faults on and off while wsguard runs, through a shared control file
(tests/faults/faultctl.py): ENOMEM from malloc & co. on the worker
threads, EMFILE from accept4, ECONNRESET/EPIPE from read/write, short
reads and writes, EAGAIN storms. TLS is on (OpenSSL reads and writes
through the same read(2)/write(2)), the backend is the recording echo
backend.

Every test then checks:
  (a) each session ended with a documented outcome: an HTTP status before
      the 101 (docs/reference.md, e.g. 503 "out of memory"), a documented
      close code or a cut connection after it, matched with its
      access-log record (every session has its own path);
  (b) with the fault off, new sessions work (echo byte-exact);
  (c) /proc/PID/fd returns to its idle count (waited for with a deadline);
  (d) for short reads/writes and EAGAIN storms: every byte of messages of
      1 B to 256 KiB arrives, in order, unchanged, both ways (the echo and
      the backend's record of what it received);
and wsguard exits 0 at SIGTERM (under `make asan`, with LeakSanitizer's
check at exit). Under ASan the executable's own malloc comes before the
shim's, so the ENOMEM tests are skipped there (the I/O faults still work).
The normal build checks memory with the shim's count of live heap blocks.
"""

import asyncio
import collections
import errno
import functools
import hashlib
import os
import random
import re
import resource
import ssl
import sys
import time

import pytest
import websockets.exceptions as wse

from conftest import REPO, wait_until, wsguard_bin
from helpers import connect, run

sys.path.insert(0, str(REPO / "tests" / "faults"))
import faultctl as F  # noqa: E402


def _is_asan(binary):
    try:
        with open(binary, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


ASAN = _is_asan(wsguard_bin())
ASAN_SKIP = ("ASan's malloc is the executable's own and comes before the "
             "preloaded shim's, so malloc faults cannot be injected under "
             "ASan (the I/O fault tests still run)")

# Outcomes of a session as the client sees it.
OK = "ok"            # every echo matched, our close answered
HTTP = "http"        # refused with an HTTP status (code)
CLOSED = "closed"    # after the 101: a close frame (code, reason) or a cut (1006)
NOHTTP = "nohttp"    # the connection ended before any HTTP answer
TIMEOUT = "timeout"  # nothing happened in time: never documented
CORRUPT = "corrupt"  # an echo differed: never documented


class Outcome:
    def __init__(self, kind, code=None, reason="", detail="", echoed=0):
        self.kind, self.code, self.reason = kind, code, reason
        self.detail, self.echoed = detail, echoed

    def __repr__(self):
        s = "%s %s" % (self.kind, self.code if self.code is not None else "")
        if self.reason:
            s += " %r" % self.reason
        if self.detail:
            s += " (%s)" % self.detail
        return s.strip()


# ----------------------------------------------------------------------
# messages: sequence numbers, sizes 1 B .. 256 KiB, text and binary

SIZES = [1, 2, 3, 7, 16, 100, 125, 126, 127, 128, 1000, 4093, 4096, 16383,
         16384, 16385, 65535, 65536, 65537, 100000, 200003, 262144]
MB_CHARS = ["\u00e9", "\u20ac", "\U0001d11e"]   # 2, 3 and 4 UTF-8 bytes


def make_message(rng, sid, seq, size, text):
    """A message of exactly size bytes (UTF-8 bytes for text) that starts
    with its session and sequence number as far as it fits."""
    head = ("<%d:%d:%d>" % (sid, seq, size)).encode()
    if not text:
        body = head[:size] + rng.randbytes(max(0, size - len(head)))
        return body[:size]
    parts = [head[:size].decode()]
    n = len(parts[0])
    while n < size:
        left = size - n
        c = rng.choice(MB_CHARS)
        if len(c.encode()) > left or rng.random() < 0.5:
            c = chr(rng.randrange(0x21, 0x7f))
        parts.append(c)
        n += len(c.encode())
    s = "".join(parts)
    assert len(s.encode()) == size
    return s


def payload_bytes(m):
    return m.encode() if isinstance(m, str) else m


# ----------------------------------------------------------------------
# the rig: a backend, wsguard with the shim, the control file

class Rig:
    def __init__(self, wsg, backend, fc, binary):
        self.wsg, self.be, self.fc, self.binary = wsg, backend, fc, binary
        self.pid = wsg.pid
        self.idle = None
        self.outcomes = {}          # path -> Outcome
        self.seq = 0

    # -- descriptors ----------------------------------------------------
    def fds(self):
        out = {}
        d = "/proc/%d/fd" % self.pid
        for n in os.listdir(d):
            try:
                out[int(n)] = os.readlink(os.path.join(d, n))
            except OSError:
                pass
        return out

    def wait_idle(self, timeout=20.0, what=""):
        """(c): wait until the descriptor count is back at idle."""
        got = wait_until(lambda: len(self.fds()) == self.idle, timeout,
                         interval=0.005)
        if not got:
            fds = self.fds()
            raise AssertionError(
                "%s: wsguard holds %d descriptors %.0f s after the sessions "
                "ended, idle is %d: %s\nstderr tail:\n%s"
                % (what or "fds", len(fds), timeout, self.idle,
                   sorted(fds.items()), self.wsg.stderr_text()[-2000:]))

    # -- sessions -------------------------------------------------------
    def path(self, tag):
        self.seq += 1
        return "/%s/%d" % (tag, self.seq)

    async def session(self, path, msgs=None, window=4, open_timeout=10,
                      timeout=30, gate=None, **kw):
        """One client session: the messages (default: two small ones)
        with up to `window` in flight, every echo compared with what was
        sent, then a normal close. Returns an Outcome (recorded by path)."""
        if msgs is None:
            msgs = [b"\x00ping-%d" % self.seq, "pong \u00e9 %d" % self.seq]
        o = await self._session(path, msgs, window, open_timeout, timeout,
                                gate, **kw)
        self.outcomes[path] = o
        return o

    async def _session(self, path, msgs, window, open_timeout, timeout,
                       gate=None, **kw):
        try:
            ws = await connect(self.wsg, path, open_timeout=open_timeout,
                               close_timeout=10, ping_interval=None, **kw)
        except wse.InvalidStatusCode as e:
            return Outcome(HTTP, e.status_code)
        except asyncio.TimeoutError:
            return Outcome(TIMEOUT, detail="no 101 in %ss" % open_timeout)
        except (wse.InvalidMessage, wse.InvalidHandshake, ssl.SSLError,
                OSError, EOFError) as e:
            return Outcome(NOHTTP, detail=type(e).__name__)
        echoed = 0
        sem = asyncio.Semaphore(window)
        if gate is not None:
            opened, go = gate
            opened()
            await go.wait()

        async def sender():
            for m in msgs:
                await sem.acquire()
                await ws.send(m)

        try:
            send_task = asyncio.ensure_future(sender())
            try:
                for i, m in enumerate(msgs):
                    got = await asyncio.wait_for(ws.recv(), timeout)
                    sem.release()
                    if got != m:
                        ws.transport.abort()
                        return Outcome(CORRUPT, detail=_diff(m, got, i))
                    echoed += 1
                await send_task
            finally:
                if not send_task.done():
                    send_task.cancel()
                    try:
                        await send_task
                    except (asyncio.CancelledError, wse.ConnectionClosed):
                        pass
            await asyncio.wait_for(ws.close(), timeout)
            return Outcome(OK, ws.close_code, ws.close_reason or "",
                           echoed=echoed)
        except wse.ConnectionClosed as e:
            rc = e.rcvd
            return Outcome(CLOSED, rc.code if rc else 1006,
                           rc.reason if rc else "", echoed=echoed)
        except asyncio.TimeoutError:
            ws.transport.abort()
            return Outcome(TIMEOUT, detail="echo %d of %d did not come in %ss"
                           % (echoed + 1, len(msgs), timeout), echoed=echoed)

    def run_sessions(self, paths, msgs_of=None, window=4, timeout=60):
        async def all_of():
            return await asyncio.gather(*[
                self.session(p, msgs_of(p) if msgs_of else None, window)
                for p in paths])
        return run(all_of(), timeout=timeout)

    # -- the end of a test ----------------------------------------------
    def check_serving(self, n=3):
        """(b): with every fault off, sessions work; echo byte-exact."""
        rng = random.Random(7)
        paths = [self.path("after") for _ in range(n)]
        msgs = {p: [make_message(rng, 9000 + i, j, s, j % 2 == 1)
                    for j, s in enumerate([1, 125, 126, 65536, 70000])]
                for i, p in enumerate(paths)}
        res = self.run_sessions(paths, lambda p: msgs[p])
        bad = [(p, o) for p, o in zip(paths, res) if o.kind != OK]
        assert not bad, "wsguard does not serve after the fault: %r" % bad

    def finish(self):
        """Fault off; (c) descriptors back at idle; (b) still serving;
        (c) again; SIGTERM, exit 0 (the leak check under ASan). Returns
        the whole access log (flushed at exit)."""
        self.fc.disarm_all()
        self.wait_idle(what="after the fault")
        self.check_serving()
        self.wait_idle(what="after the sessions with the fault off")
        self.wsg.stop()
        return self.wsg.access_log()

    def records_by_path(self, log):
        by = collections.defaultdict(list)
        for r in log:
            by[r.get("path")].append(r)
        return by

    def sym(self, addr):
        try:
            return F.symbolize(self.pid, [addr], self.binary)[0]
        except OSError:
            return "0x%x" % addr


def _diff(want, got, i):
    w, g = payload_bytes(want), payload_bytes(got)
    if type(want) is not type(got):
        return "message %d: %s sent, %s echoed" % (
            i, type(want).__name__, type(got).__name__)
    if len(w) != len(g):
        return "message %d: %d bytes sent, %d echoed (head %r / %r)" % (
            i, len(w), len(g), w[:24], g[:24])
    at = next(k for k in range(len(w)) if w[k] != g[k])
    return "message %d (%d bytes): first difference at byte %d" % (
        i, len(w), at)


STARTED_RE = re.compile(r"wsguard \S+ started: \d+ worker")


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory):
    return F.build_shim(tmp_path_factory.mktemp("faultshim"))


@pytest.fixture
def rig(tmp_path, shim_so, wsguard_factory, backend_factory):
    """rig(**overrides): an echo backend and wsguard with the shim loaded
    (TLS on, log level info), warmed up with one session, idle
    descriptor count measured."""
    made = []

    def make(warm=True, **overrides):
        overrides.setdefault("LOG_LEVEL", "info")
        be = backend_factory()
        fc = F.FaultCtl(tmp_path / ("faults-%d.ctl" % len(made)))
        wsg = wsguard_factory(be.url, _env=fc.env(shim_so), **overrides)
        fc.wait_attached(wsg.pid)
        # "listening on" comes before the workers' loops exist.
        assert wait_until(lambda: STARTED_RE.search(wsg.stderr_text()), 10), \
            wsg.stderr_text()[-2000:]
        r = Rig(wsg, be, fc, wsguard_bin())
        # Idle: the count right after start; a first session must bring it
        # back there (nothing is opened lazily and kept).
        r.idle = len(r.fds())
        if warm:
            o = run(r.session(r.path("warm")))
            assert o.kind == OK, "warm-up session failed: %r" % o
            r.wait_idle(what="after the warm-up session")
        made.append(r)
        return r

    return make


def backend_closes_by_path(be):
    """path -> the close code the backend recorded for it."""
    conn_path = {r["conn"]: r["path"] for r in be.records()
                 if r.get("event") == "open"}
    return {conn_path.get(r["conn"]): r.get("code")
            for r in be.records() if r.get("event") == "close"}


# ----------------------------------------------------------------------
# the documented outcomes (docs/reference.md)

# Log reasons of a connection that ends before any HTTP answer.
NOHTTP_REASONS = {"tls handshake failed", "client closed before request",
                  "client closed during request", "client gone before 101",
                  "out of memory"}


def judge(o, recs, allowed_closes, allowed_status, nohttp_reasons):
    """None when the client's outcome o and the access-log records of its
    path (recs) are a documented pair, else why not."""
    if o.kind in (TIMEOUT, CORRUPT):
        return "never documented"
    if o.kind == NOHTTP:
        if not recs:
            # Refused before the path was read: its record has no path,
            # counted separately by the caller.
            return None
        r = recs[0]
        if r.get("event") == "reject" and "status" not in r and \
                r.get("reason") in nohttp_reasons:
            return None
        return "connection ended without an answer, record %r" % r
    if len(recs) != 1:
        return "%d access-log records for it: %r" % (len(recs), recs)
    r = recs[0]
    if o.kind == HTTP:
        if r.get("event") == "reject" and r.get("status") == o.code and \
                (o.code, r.get("reason")) in allowed_status:
            return None
        return "HTTP %s, record %r" % (o.code, r)
    # After the 101.
    if r.get("event") != "session":
        return "no session record: %r" % r
    pair = (r.get("close_code"), r.get("reason"))
    if pair not in allowed_closes:
        return "access log close %r not documented for this fault" % (pair,)
    if o.kind == OK:
        return None
    if o.code == 1006 or o.code == r.get("close_code"):
        return None
    return "client got close %s, the log says %r" % (o.code, pair)


# ======================================================================
# ENOMEM

OOM_STATUS = {(503, "out of memory")}
OOM_CLOSES = {(1000, None), (1011, "out of memory"),
              # OpenSSL failing to allocate inside SSL_read/SSL_write on the
              # client leg is an error of that transport: the client's TCP
              # connection is closed, the backend gets 1001 ("A side that
              # vanishes", docs/architecture.md).
              (1006, "client connection lost")}


def count_allocations(r):
    """Worker-thread allocations of one plain session (and the ordinal
    at which it connected to the backend)."""
    r.fc.reset_counts(F.MALLOC)
    r.fc.arm(F.MALLOC, where=F.WORKERS, budget=0)
    o = run(r.session(r.path("count")))
    r.wait_idle(what="counting session")
    r.fc.disarm(F.MALLOC)
    assert o.kind == OK, o
    return r.fc.seen(F.MALLOC), r.fc.connect_mark


def sweep_ks(first, out, limit):
    """k = first, first + 1, ... until three sessions in a row made fewer
    calls than k (their fault was not injected: the last element of each
    result tuple is the injected count), or limit. The number of calls a
    session makes varies a little (how the kernel splits what arrives,
    reads that find nothing), so the sweep follows the sessions rather
    than a count made beforehand."""
    k = first
    while k <= limit:
        if len(out) >= 3 and not any(x[-1] for x in out[-3:]):
            return
        yield k
        k += 1


def oom_sweep(r, ks, tag, live_check=True):
    """Fail the k-th worker allocation of a fresh session, for each k in
    ks (an iterable, or a first k: then until the sessions make fewer
    allocations), one session at a time. Returns [(k, path, outcome,
    caller, size, live delta, injected)]."""
    out = []
    if isinstance(ks, int):
        ks = sweep_ks(ks, out, F.TRACE_N)
    for k in ks:
        p = r.path("%s%d" % (tag, k))
        r.fc.reset_counts(F.MALLOC)
        live0 = r.fc.live
        r.fc.arm(F.MALLOC, where=F.WORKERS, skip=k - 1, budget=1)
        o = run(r.session(p, open_timeout=10, timeout=10))
        inj = r.fc.injected(F.MALLOC)
        r.fc.disarm(F.MALLOC)
        r.wait_idle(what="after session %s (allocation %d failed)" % (p, k))
        delta = 0
        if live_check:
            # Freed after the descriptors are closed: give it a moment.
            wait_until(lambda: r.fc.live == live0, 0.5, interval=0.002)
            delta = r.fc.live - live0
        caller, size = r.fc.last(F.MALLOC)
        out.append((k, p, o, caller if inj else None, size, delta, inj))
    return out


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_each_allocation_of_a_session(rig):
    """ENOMEM at every allocation a session makes on the worker thread, in
    turn (the k-th one from the accept on, one session per k): conn and
    handshake state, OpenSSL's handshake, the request, the checks, the
    backend request, the 101s, the session's records. Each session must
    end as documented (503 "out of memory", or the connection closed
    before any answer with a reject record, or 1011 / a cut after the
    101, or nothing visible), no allocation may leak (the shim's count of
    live heap blocks returns to its value before the session: a session
    that left blocks behind is run again, and must not leave more), and
    wsguard must go on serving."""
    r = rig()
    n, _ = count_allocations(r)
    assert 100 < n < F.TRACE_N, "allocations per session: %d" % n
    t0 = time.monotonic()
    res = oom_sweep(r, 1, "oom")
    elapsed = time.monotonic() - t0
    injected = sum(1 for x in res if x[6])
    assert injected >= n * 0.9, "only %d of %d allocations were failed" % (
        injected, n)

    # Memory: a block left behind may be a bounded cache filled by a
    # failure (OpenSSL keeps the text buffer of an error in its thread's
    # ring of 16 error slots, for reuse); a leak leaves a block every time.
    # So a session that left blocks is run again, up to three times, and
    # a leak is one whose every run left some.
    again = [k for k, *_, delta, inj in res if delta != 0]
    assert len(again) <= 40, "%d sessions left heap blocks: %r" % (
        len(again), [(x[0], x[5]) for x in res if x[5]])
    leaks = []
    for k in again:
        runs = []
        for attempt in range(3):
            runs += oom_sweep(r, [k], "oom-again")
            if runs[-1][5] == 0:
                break
        else:
            leaks.append("allocation %d: heap blocks left %s, failed calls "
                         "%s" % (k, [x[5] for x in runs], [
                             "%d bytes from %s" % (x[4], r.sym(x[3]) if x[3]
                                                   else "?") for x in runs]))
    assert not leaks, "memory leaked after ENOMEM:\n" + "\n".join(leaks)
    syms = {x[0]: (r.sym(x[3]) if x[3] else "-") for x in res
            if x[2].kind not in (OK, NOHTTP)}

    log = r.finish()
    by = r.records_by_path(log)
    problems = []
    kinds = collections.Counter()
    for k, p, o, caller, size, delta, inj in res:
        kinds[o.kind if o.kind != HTTP else "http %d" % o.code] += 1
        recs = by.get(p, [])
        why = judge(o, recs, OOM_CLOSES, OOM_STATUS, NOHTTP_REASONS)
        if why:
            problems.append("allocation %d (%d bytes, %s): %r: %s" % (
                k, size, syms.get(k, "-"), o, why))
    # Sessions refused before their request: reject records without a
    # path, one per such session at most (a failed calloc of the
    # connection itself leaves none).
    nopath = by.get(None, [])
    nohttp = sum(1 for x in res if x[2].kind == NOHTTP)
    assert len(nopath) <= nohttp, (
        "%d path-less records for %d sessions without an answer"
        % (len(nopath), nohttp))
    odd = [x for x in nopath if x.get("event") != "reject" or "status" in x
           or x.get("reason") not in NOHTTP_REASONS]
    assert not odd, "undocumented records: %r" % odd[:5]
    assert not problems, "%d of %d sessions ended undocumented:\n%s" % (
        len(problems), len(res), "\n".join(problems[:40]))
    print("ENOMEM sweep: %d allocations in %.1f s, outcomes %s"
          % (n, elapsed, dict(kinds)))


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_in_upgrade_accept_is_503(rig):
    """Every allocation after the backend connect (backend request, the
    backend's 101 and its Sec-WebSocket-Accept check, the client's 101)
    failed in turn: a refusal must be 503 "out of memory"."""
    r = rig()
    n, connect_at = count_allocations(r)
    # From a little before the backend connect (the count varies a bit).
    res = oom_sweep(r, max(1, connect_at - 20), "acc", live_check=False)
    log = r.finish()
    by = r.records_by_path(log)
    wrong = []
    for k, p, o, caller, size, delta, inj in res:
        if o.kind == HTTP:
            rec = (by.get(p) or [{}])[0]
            if (o.code, rec.get("reason")) not in OOM_STATUS:
                wrong.append("allocation %d of %d (%d bytes): HTTP %d %r" % (
                    k, n, size, o.code, rec.get("reason")))
    assert not wrong, "ENOMEM answered with another status:\n" + "\n".join(wrong)


@functools.lru_cache(maxsize=None)
def buf_size():
    """sizeof(struct buf) (src/buf.h), the size of a relay buffer's
    allocation, from the compiler."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "s.c"), os.path.join(d, "s")
        with open(src, "w") as f:
            f.write('#include <stdio.h>\n#include "buf.h"\n'
                    'int main(void) { printf("%zu", sizeof(struct buf)); }\n')
        subprocess.run(["cc", "-I", str(REPO / "src"), "-o", exe, src],
                       check=True, capture_output=True)
        return int(subprocess.run([exe], check=True, capture_output=True,
                                  text=True).stdout)


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_relay_buffer_closes_1011(rig):
    """No memory for a relay buffer: the session ends with 1011 "out of
    memory" to the client and to the backend, and wsguard serves the next
    session normally. A fresh process (no warm-up) has an empty buffer
    pool, so its first session's buffers come from malloc; the first
    worker allocation of exactly that size fails (OpenSSL's record
    buffers are larger)."""
    r = rig(warm=False)
    size = buf_size()
    # The first one fails; reading the peers' close replies then gets one.
    r.fc.arm(F.MALLOC, where=F.WORKERS, arg=size, arg2=size, budget=1)
    p = r.path("buf")
    o = run(r.session(p, [b"x" * 1000, b"y"]))
    inj = r.fc.injected(F.MALLOC)
    r.fc.disarm_all()
    assert inj >= 1, "no relay buffer allocation was failed (size %d?)" % size
    assert o.kind == CLOSED and o.code == 1011 and \
        o.reason == "out of memory", o
    code = wait_until(lambda: backend_closes_by_path(r.be).get(p), 10)
    assert code == 1011, "the backend's close code: %r" % code
    log = r.finish()
    rec = [x for x in log if x.get("path") == p]
    assert len(rec) == 1 and rec[0]["close_code"] == 1011 and \
        rec[0]["reason"] == "out of memory" and \
        rec[0]["closed_by"] == "wsguard", rec


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_inflater_closes_1011(rig):
    """No memory for zlib's inflate state (permessage-deflate, allocated
    at the first compressed message: 7,160 bytes + the 16-byte count
    header of pmd.c's allocator): the session ends with 1011 "out of
    memory" to both sides, and the next compressed session works."""
    r = rig()
    r.fc.arm(F.MALLOC, where=F.WORKERS, arg=7176, arg2=7176, budget=1)
    p = r.path("zlib")
    o = run(r.session(p, [b"x" * 1000], compression="deflate"))
    inj = r.fc.injected(F.MALLOC)
    r.fc.disarm_all()
    assert inj == 1, "no inflate state allocation was failed"
    assert o.kind == CLOSED and o.code == 1011 and \
        o.reason == "out of memory", o
    code = wait_until(lambda: backend_closes_by_path(r.be).get(p), 10)
    assert code == 1011, "the backend's close code: %r" % code
    p2 = r.path("zlib-after")
    o2 = run(r.session(p2, [b"y" * 1000, "z" * 3000], compression="deflate"))
    assert o2.kind == OK, o2
    r.finish()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_relay_buffer_no_busy_loop(rig):
    """Relay buffers cannot be allocated for as long as the session lasts
    (it ends with 1011 and waits, up to close_timeout = 2 s, for the
    peers' close replies, which it cannot read): the worker must wait for
    memory, not spin on the readable socket."""
    r = rig(warm=False, SERVER_CLOSE_TIMEOUT="2s")
    size = buf_size()
    r.fc.arm(F.MALLOC, where=F.WORKERS, arg=size, arg2=size)
    cpu0, t0 = cpu_seconds(r.pid), time.monotonic()
    o = run(r.session(r.path("spin"), [b"x" * 1000, b"y"]))
    cpu, wall = cpu_seconds(r.pid) - cpu0, time.monotonic() - t0
    tries = r.fc.injected(F.MALLOC)
    r.fc.disarm_all()
    assert o.kind == CLOSED and o.code == 1011, o
    r.finish()
    assert tries < 1000 and cpu < 0.5 * wall, (
        "%d failed allocations of a relay buffer, %.2f s of CPU in %.2f s"
        % (tries, cpu, wall))


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_enomem_at_random_under_load(rig):
    """Allocations of the worker thread fail at random (0.5 %, then 3 %)
    while 8 sessions that were open before move messages of 1 B to 64 KiB
    and 8 new ones connect: every session ends as documented, wsguard
    serves normally afterwards, its descriptors return to idle and its
    live heap blocks to their level before the storm (after the same clean
    wave)."""
    r = rig()
    rng = random.Random(5)

    def messages(i):
        return [make_message(rng, i, j, size, j % 2 == 1)
                for j, size in enumerate((1, 126, 4096, 65536, 20000, 7,
                                          300, 16385, 2, 50000) * 2)]

    def storm(tag, ppm):
        """8 sessions open, then the fault (ppm), then they send while 8
        more connect."""
        old = [r.path(tag + "o") for _ in range(8)]
        new = [r.path(tag + "n") for _ in range(8)]

        async def scenario():
            opened = []
            go = asyncio.Event()
            gate = (lambda: opened.append(1), go)
            tasks = [asyncio.ensure_future(
                r.session(p, messages(i), gate=gate))
                for i, p in enumerate(old)]
            # Wait until every old session is open (or has failed).
            await poll(lambda: len(opened) + sum(t.done() for t in tasks)
                       >= len(old), 30)
            if ppm:
                r.fc.reset_counts(F.MALLOC)
                r.fc.arm(F.MALLOC, where=F.WORKERS, ppm=ppm)
            go.set()
            tasks += [asyncio.ensure_future(r.session(p, messages(i)))
                      for i, p in enumerate(new)]
            out = await asyncio.gather(*tasks)
            r.fc.disarm(F.MALLOC)
            return list(zip(old + new, out))
        return run(scenario(), timeout=90)

    assert all(o.kind == OK for p, o in storm("clean", 0)), "clean run failed"
    r.wait_idle()
    live0 = r.fc.live
    res, inj = [], 0
    for ppm in (5000, 30000):
        res += storm("rnd%d" % ppm, ppm)
        inj += r.fc.injected(F.MALLOC)
        r.wait_idle(what="after the ENOMEM storm (%d ppm)" % ppm)
    assert all(o.kind == OK for p, o in storm("clean", 0)), "clean run failed"
    r.wait_idle()
    # A few blocks may be one-time caches filled by a first failure of
    # their kind (see the sweep); a leak per failure would be many more.
    grown = wait_until(lambda: r.fc.live - live0 <= 8, 5) or r.fc.live - live0
    assert grown is True, "%d heap blocks more after %d ENOMEM" % (grown, inj)
    log = r.finish()
    by = r.records_by_path(log)
    problems = []
    kinds = collections.Counter()
    for p, o in res:
        kinds[repr(o)] += 1
        recs = by.get(p, [])
        why = judge(o, recs, OOM_CLOSES, OOM_STATUS, NOHTTP_REASONS)
        if why:
            problems.append("%s: %r: %s" % (p, o, why))
    assert inj >= 10, "only %d allocations failed" % inj
    assert not problems, "\n".join(problems)
    assert sum(1 for p, o in res if o.kind == CLOSED or
               (o.kind == OK and o.echoed)) >= 4, kinds
    print("ENOMEM at random: %d failed; %s" % (inj, dict(kinds)))


# ======================================================================
# ECONNRESET / EPIPE

SIDES = {"client": F.CLIENT, "backend": F.BACKEND}
# What an error on one side's transport may end in.
ERR_STATUS = {
    "client": set(),
    "backend": {(502, "backend closed during upgrade"),
                (502, "backend write failed")},
}
ERR_CLOSES = {
    # The client leg failed: its connection is closed, the backend gets
    # 1001; the access log records 1006 "client connection lost" (or the
    # client's own 1000 when its close had come first).
    "client": {(1006, "client connection lost"), (1000, None)},
    # The backend leg failed: the client gets 1014 "backend connection
    # lost" (1000 when its own close had come first).
    "backend": {(1014, "backend connection lost"), (1000, None)},
}


@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("side", ["client", "backend"])
def test_connection_error_at_each_call(rig, op, side):
    """ECONNRESET on the k-th read (or EPIPE on the k-th write) of a
    session on one leg, for every k the session makes: the TLS handshake,
    the request, the backend's upgrade, the 101, the relay, the close
    handshake. Each session ends as documented: before the 101 a 502 or a
    closed connection with its reject record, after it 1014 to the client
    (backend leg) or a cut client leg and 1001 to the backend (client
    leg); nothing hangs, the descriptors are all closed."""
    r = rig()
    kind = F.READ_ERR if op == "read" else F.WRITE_ERR
    where = SIDES[side]
    r.fc.arm(kind, where=where, budget=0)
    o = run(r.session(r.path("count")))
    r.wait_idle()
    r.fc.disarm(kind)
    n = r.fc.seen(kind)
    assert o.kind == OK and 2 <= n < 100, (o, n)
    res = []
    for k in sweep_ks(1, res, 200):
        p = r.path("%s-%s%d" % (side, op, k))
        r.fc.reset_counts(kind)
        r.fc.arm(kind, where=where, skip=k - 1, budget=1)
        o = run(r.session(p, open_timeout=10, timeout=10))
        inj = r.fc.injected(kind)
        r.fc.disarm(kind)
        r.wait_idle(what="after %s (%s %d failed)" % (p, op, k))
        res.append((k, p, o, r.sym(r.fc.last(kind)[0]) if inj else "-",
                    inj))
    assert sum(x[-1] for x in res) >= min(n, 4), res
    be_closes = backend_closes_by_path(r.be)
    log = r.finish()
    by = r.records_by_path(log)
    problems = []
    for k, p, o, where_sym, inj in res:
        recs = by.get(p, [])
        why = judge(o, recs, ERR_CLOSES[side], ERR_STATUS[side],
                    NOHTTP_REASONS - {"out of memory"})
        if why is None and side == "client" and recs and \
                recs[0].get("close_code") == 1006:
            # The backend must have been told with 1001.
            code = be_closes.get(p)
            if code != 1001:
                why = "the backend got %r, not 1001" % code
        if why is None and o.kind == CLOSED and side == "backend" and \
                (o.code, o.reason) not in ((1014, "backend connection lost"),
                                           (1000, "backend connection lost")):
            why = "the client got %r" % o
        if why:
            problems.append("%s %d (%s): %r: %s" % (op, k, where_sym, o, why))
    nopath = [x for x in by.get(None, []) if x.get("reason") not in NOHTTP_REASONS]
    assert not nopath, nopath
    assert not problems, "\n".join(problems)
    print("%s %s errors: %s" % (side, op, collections.Counter(
        repr(x[2]) for x in res)))


# ======================================================================
# short reads and writes, EAGAIN storms: not a byte lost

def data_messages(sid, seed):
    rng = random.Random(seed)
    sizes = SIZES[:]
    rng.shuffle(sizes)
    return [make_message(rng, sid, j, s, rng.random() < 0.4)
            for j, s in enumerate(sizes)]


def run_data(r, tag, n, seed, window=4, timeout=120):
    """n concurrent sessions, each with every size of SIZES once (shuffled,
    text and binary), up to window messages in flight. Returns
    {path: (messages, outcome)}."""
    paths = [r.path(tag) for _ in range(n)]
    msgs = {p: data_messages(i, seed * 100 + i) for i, p in enumerate(paths)}
    res = r.run_sessions(paths, lambda p: msgs[p], window=window,
                         timeout=timeout)
    return {p: (msgs[p], o) for p, o in zip(paths, res)}


def check_data(r, data):
    """(d): every echo was byte-exact (checked by the client as it came),
    and the backend received exactly what was sent, in order."""
    bad = {p: o for p, (m, o) in data.items()
           if o.kind != OK or o.echoed != len(m)}
    assert not bad, "sessions lost, reordered or corrupted data: %r" % bad

    def complete():
        got = collections.defaultdict(list)
        conn_path = {x["conn"]: x["path"] for x in r.be.records()
                     if x.get("event") == "open"}
        for x in r.be.records():
            if x.get("event") == "message":
                got[conn_path.get(x["conn"])].append((x["len"], x["sha256"]))
        return got if all(len(got[p]) >= len(m) for p, (m, o) in data.items()) else None

    got = wait_until(complete, 10)
    assert got, "the backend did not record every message"
    for p, (m, o) in data.items():
        want = [(len(payload_bytes(x)), hashlib.sha256(payload_bytes(x)).hexdigest())
                for x in m]
        assert got[p] == want, "%s: the backend received other bytes" % p


def check_data_log(log, datas):
    """Each data session's record: closed by the client with 1000, every
    message counted both ways."""
    by = collections.defaultdict(list)
    for x in log:
        by[x.get("path")].append(x)
    for data in datas:
        for p, (m, o) in data.items():
            recs = by.get(p, [])
            assert len(recs) == 1, (p, recs)
            x = recs[0]
            assert (x.get("event"), x.get("close_code"), x.get("closed_by"),
                    x.get("msgs_in"), x.get("msgs_out")) == \
                ("session", 1000, "client", len(m), len(m)), x


def test_short_reads_and_writes_lose_nothing(rig):
    """Every read and write on both legs moves fewer bytes than asked
    (first any length below the request, then at most 61 bytes per
    call), while sessions move messages of 1 B to 256 KiB both ways:
    every byte arrives, in order, unchanged."""
    r = rig()
    datas = []
    for i, most in enumerate((0, 61)):
        for k in (F.READ_SHORT, F.WRITE_SHORT):
            r.fc.reset_counts(k)
            r.fc.arm(k, where=F.BOTH, arg=most)
        data = run_data(r, "short%d-" % most, 3, seed=i + 1)
        datas.append(data)
        r.fc.disarm_all()
        assert r.fc.injected(F.WRITE_SHORT) > 1000 and \
            r.fc.injected(F.READ_SHORT) > 1000, r.fc.counts()
        check_data(r, data)
        print("short reads/writes (at most %s bytes): %r" % (
            most or "any", r.fc.counts()))
        r.wait_idle(what="after short %d" % most)
    check_data_log(r.finish(), datas)


def test_eagain_storms_lose_nothing(rig):
    """Reads and writes on both legs answer EAGAIN in bursts (16, then 64
    calls in a row on that descriptor) although the socket is ready (TLS handshake, request, backend
    upgrade and relay alike), first alone, then together with short reads
    and writes: every session completes, every byte arrives, in order,
    unchanged."""
    r = rig()
    datas = []
    for i, (ppm, burst, short) in enumerate(((500000, 16, False),
                                             (200000, 64, True))):
        for k in (F.READ_EAGAIN, F.WRITE_EAGAIN):
            r.fc.reset_counts(k)
            r.fc.arm(k, where=F.BOTH, ppm=ppm, arg=burst)
        if short:
            r.fc.arm(F.READ_SHORT, where=F.BOTH, ppm=500000)
            r.fc.arm(F.WRITE_SHORT, where=F.BOTH, ppm=500000)
        data = run_data(r, "eagain%d-" % i, 3, seed=10 + i)
        datas.append(data)
        r.fc.disarm_all()
        assert r.fc.injected(F.READ_EAGAIN) > 200 and \
            r.fc.injected(F.WRITE_EAGAIN) > 200, r.fc.counts()
        check_data(r, data)
        print("EAGAIN storm %d: %r" % (i, r.fc.counts()))
        r.wait_idle(what="after EAGAIN storm %d" % i)
    check_data_log(r.finish(), datas)


# ======================================================================
# EMFILE

PAUSE_RE = re.compile(r"accept: [^;]*; pausing new connections")


async def poll(pred, timeout, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        await asyncio.sleep(interval)


@pytest.mark.skipif(ASAN, reason=ASAN_SKIP)
def test_quiet_sessions_give_back_tls_record_buffers(rig):
    """A relaying session keeps its TLS record buffers while traffic
    flows and gives them back once quiet for RELAY_QUIET_MS (1 s): with
    N open sessions that each moved a 20 KiB message, the live heap
    blocks (the shim's count) drop by at least N while the sessions stay
    open and silent."""
    r = rig()
    n = 12

    async def scenario():
        socks = [await connect(r.wsg, r.path("quiet"), ping_interval=None)
                 for _ in range(n)]
        try:
            for i, ws in enumerate(socks):
                m = bytes([i]) * 20000
                await ws.send(m)
                assert await asyncio.wait_for(ws.recv(), 10) == m
            busy = r.fc.live
            # No traffic from here: each session's buffers must go.
            dropped = await poll(lambda: busy - r.fc.live >= n, 15)
            return busy, r.fc.live, dropped
        finally:
            for ws in socks:
                await ws.close()

    busy, quiet, dropped = run(scenario(), timeout=60)
    assert dropped, ("live heap blocks %d with %d busy sessions, %d after "
                     "they went quiet: the record buffers were not given "
                     "back" % (busy, n, quiet))
    r.finish()


@pytest.mark.parametrize("err", ["EMFILE", "ENFILE", "ENOMEM"])
def test_emfile_on_accept_pauses_then_serves(rig, err):
    """accept4 fails with EMFILE (shim; ENFILE and ENOMEM likewise) while
    clients connect: wsguard
    logs it and pauses accepting for 100 ms at a time instead of spinning
    (the number of accept4 calls is bounded by the pause), accepts
    nothing meanwhile, and once descriptors are available again every
    waiting client is served normally."""
    workers = 2
    r = rig(SERVER_WORKERS=str(workers))
    accepts0 = r.fc.accepts
    paths = [r.path("emfile") for _ in range(6)]

    async def scenario():
        r.fc.reset_counts(F.ACCEPT)
        r.fc.arm(F.ACCEPT, budget=F.UNLIMITED, err=getattr(errno, err))
        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(r.session(p, open_timeout=40))
                 for p in paths]
        seen = await poll(lambda: r.fc.injected(F.ACCEPT) >= 8 and
                          len(PAUSE_RE.findall(r.wsg.stderr_text())) >= 2,
                          timeout=20)
        elapsed = time.monotonic() - t0
        inj = r.fc.injected(F.ACCEPT)
        accepted = r.fc.accepts - accepts0
        r.fc.disarm(F.ACCEPT)
        outcomes = await asyncio.gather(*tasks)
        return seen, elapsed, inj, accepted, outcomes

    seen, elapsed, inj, accepted, outcomes = run(scenario(), timeout=60)
    assert seen, "no EMFILE pause logged: %s" % r.wsg.stderr_text()[-2000:]
    assert accepted == 0, "%d connections accepted during EMFILE" % accepted
    # One accept4 per listener per pause (100 ms), per worker, plus the
    # first of each: a spinning loop would make thousands.
    bound = workers * (elapsed / 0.1 + 2)
    assert inj <= bound, "%d accept4 calls in %.2f s: spinning (bound %d)" % (
        inj, elapsed, bound)
    bad = [(p, o) for p, o in zip(paths, outcomes) if o.kind != OK]
    assert not bad, bad
    log = r.finish()
    by = r.records_by_path(log)
    for p in paths:
        assert [x.get("close_code") for x in by.get(p, [])] == [1000], by.get(p)


def test_emfile_for_real_from_rlimit(rig):
    """The kernel's own EMFILE, by lowering wsguard's RLIMIT_NOFILE while
    it runs (prlimit): with no descriptor left accept4 fails and wsguard
    pauses, then serves the waiting client once the limit is raised; with
    one descriptor left the client is accepted but the backend socket
    cannot be made: 502, reason "backend socket failed"."""
    r = rig()
    soft, hard = resource.prlimit(r.pid, resource.RLIMIT_NOFILE)
    used = set(r.fds())
    free = min(set(range(max(used) + 3)) - used)
    assert free + 1 not in used
    try:
        # 1. No descriptor at all.
        resource.prlimit(r.pid, resource.RLIMIT_NOFILE, (free, hard))
        p1 = r.path("rlimit-accept")

        async def first():
            t = asyncio.ensure_future(r.session(p1, open_timeout=40))
            seen = await poll(
                lambda: len(PAUSE_RE.findall(r.wsg.stderr_text())) >= 3, 20)
            resource.prlimit(r.pid, resource.RLIMIT_NOFILE, (soft, hard))
            return seen, await t

        seen, o1 = run(first(), timeout=60)
        assert seen, "no EMFILE pause logged: %s" % r.wsg.stderr_text()[-2000:]
        assert o1.kind == OK, o1
        r.wait_idle()
        # 2. One descriptor: the client's.
        resource.prlimit(r.pid, resource.RLIMIT_NOFILE, (free + 1, hard))
        p2 = r.path("rlimit-socket")
        o2 = run(r.session(p2))
    finally:
        resource.prlimit(r.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert o2.kind == HTTP and o2.code == 502, o2
    log = r.finish()
    by = r.records_by_path(log)
    assert [x.get("close_code") for x in by[p1]] == [1000], by[p1]
    assert [(x.get("status"), x.get("reason")) for x in by[p2]] == \
        [(502, "backend socket failed")], by[p2]
