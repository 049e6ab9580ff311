#!/usr/bin/python3
"""pmd_memory.py - wsguard's RSS per session with and without
permessage-deflate (issue 15), idle after one message each way.

    /usr/bin/python3 bench/pmd_memory.py [N [M]]  (N sessions, default 500;
                                                   M messages, 3000)

Starts the echo backend and wsguard (build/wsguard, or $WSGUARD_BIN; one
worker) the way the integration tests do, then for each mode opens N TLS
sessions, sends one 8 KiB JSON-like text message on each and waits for its
echo (so both zlib streams were used), and reads VmRSS from
/proc/PID/status: before, with the N sessions open and idle, and after
they closed. Modes:
  plain       no extension offered
  takeover    websockets' default offer (client_max_window_bits, context
              takeover both ways): wsguard answers 12/12, the streams stay
  no-takeover server_ and client_no_context_takeover: the streams are
              freed after every message
  15/15       takeover with deflate_window_bits = 15 (zlib's defaults)
Prints one line per mode: KiB per session over the plain session.

Then, for plain and takeover: M (default 3000) 4 KiB JSON-like text
messages, each different, echoed over one session; wsguard's CPU time
(utime + stime from /proc/PID/stat) per message and the client's bytes
on the wire per message (bytes_in of the access log: frames as received).
"""

import asyncio
import os
import ssl
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import websockets  # noqa: E402
from websockets.extensions.permessage_deflate import \
    ClientPerMessageDeflateFactory  # noqa: E402

from conftest import Certs, start_backend, start_wsguard  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
M = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
MSG = ('{"id": 1, "user": "alice", "tags": ["a", "b"], "ok": true} ' * 140)


async def hold(wsg, ctx, extensions):
    conns = []
    for _ in range(N):
        ws = await websockets.connect(
            wsg.url + "/", ssl=ctx, server_hostname="localhost",
            compression=None, extensions=extensions, max_size=None,
            ping_interval=None)
        conns.append(ws)
        await ws.send(MSG)
        assert await ws.recv() == MSG
    rss = wsg.rss_kb()
    for ws in conns:
        await ws.close()
    return rss


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def json_msg(i, rnd):
    out, n = [], 0
    while n < 4096:
        e = ('{"id": %d, "user": "user%d", "score": %d, "ok": %s, '
             '"tags": ["alpha", "beta"]}' % (i, rnd.randrange(1000),
                                           rnd.randrange(10 ** 6),
                                           "true" if rnd.random() < .5
                                           else "false"))
        out.append(e)
        n += len(e) + 1
        i += 1
    return ("[" + ",".join(out) + "]")[:4096]


async def stream(wsg, ctx, extensions, msgs):
    async with websockets.connect(
            wsg.url + "/", ssl=ctx, server_hostname="localhost",
            compression=None, extensions=extensions, max_size=None,
            ping_interval=None) as ws:
        t0 = cpu_seconds(wsg.proc.pid)
        for m in msgs:
            await ws.send(m)
            assert await ws.recv() == m
        return cpu_seconds(wsg.proc.pid) - t0


def main():
    tmp = Path(tempfile.mkdtemp(prefix="pmd-mem-"))
    certs = Certs(tmp)
    ctx = ssl.create_default_context(cafile=certs.cert)
    backend = start_backend(tmp, 0, [])
    modes = [
        ("plain", {}, None),
        ("takeover", {}, [ClientPerMessageDeflateFactory()]),
        ("no-takeover", {}, [ClientPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True)]),
        ("15/15", {"LIMITS_DEFLATE_WINDOW_BITS": "15"},
         [ClientPerMessageDeflateFactory()]),
    ]
    base = None
    try:
        for i, (name, over, ext) in enumerate(modes):
            over = dict(over, SERVER_WORKERS="1", LOG_ACCESS_LOG="off")
            wsg = start_wsguard(tmp, i, certs, ctx, backend.url, over)
            try:
                rss0 = wsg.rss_kb()
                rss = asyncio.run(hold(wsg, ctx, ext))
                per = (rss - rss0) / N
            finally:
                wsg.kill()
            if base is None:
                base = per
            print("%-12s %6.1f KiB/session idle (%+.1f over plain), "
                  "%d sessions" % (name, per, per - base, N), flush=True)
        import json
        import random
        rnd = random.Random(1)
        msgs = [json_msg(i * 100, rnd) for i in range(M)]
        for i, (name, over, ext) in enumerate(modes[:2]):
            over = dict(over, SERVER_WORKERS="1")
            wsg = start_wsguard(tmp, 10 + i, certs, ctx, backend.url, over)
            try:
                cpu = asyncio.run(stream(wsg, ctx, ext, msgs))
            finally:
                wsg.stop()
            rec = [json.loads(line) for line in
                   open(wsg.out_path) if '"session"' in line][-1]
            print("%-12s %5.1f us CPU/message in wsguard, %6.0f bytes/message "
                  "from the client on the wire (%d messages of 4096 B)"
                  % (name, cpu / M * 1e6, rec["bytes_in"] / M, M), flush=True)
    finally:
        backend.kill()


if __name__ == "__main__":
    main()
