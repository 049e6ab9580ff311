"""Logging never blocks a worker, and log files can be rotated.

- The access log on a pipe that nobody reads (a stuck container log
  driver): 1,000 sessions open, exchange a message and close; every one
  completes, the lines that did not fit are dropped and counted in
  wsguard_log_dropped_total, and wsguard still stops cleanly.
- SIGUSR1 opens the access-log file again: after a rename, the lines
  before the signal are in the old file, those after in a new one.
- A log directory that does not exist stops the start with the reason.
"""

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from admintools import ADMIN_RE, Admin
from conftest import (LISTEN_RE, REPO, Wsguard, clean_env, override_env,
                      wait_until, wsguard_bin, write_ini)
from helpers import connect, run


def start_on_pipe(tmp_path, certs, client_ssl, backend_url, **overrides):
    """wsguard with its standard output on a pipe whose reading end the
    test holds open but never reads. Returns (Wsguard, Admin, read_fd)."""
    ini = write_ini(tmp_path / "wsguard.ini", certs, backend_url)
    err_path = tmp_path / "wsguard.err.log"
    env = clean_env(override_env(overrides))
    rfd, wfd = os.pipe()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([wsguard_bin(), "-c", str(ini)], stdout=wfd,
                                stderr=err, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(REPO))
    os.close(wfd)
    w = Wsguard(proc, ini, tmp_path / "unused.out", err_path, False, None)

    def ready():
        t = w.stderr_text()
        return (LISTEN_RE.search(t) and ADMIN_RE.search(t)) or \
            proc.poll() is not None

    wait_until(ready, 10)
    text = w.stderr_text()
    m, a = LISTEN_RE.search(text), ADMIN_RE.search(text)
    assert m and a, "wsguard did not start: " + text[-3000:]
    w._set_listen(m.group(1), int(m.group(2)))
    return w, Admin(a.group(1), int(a.group(2))), rfd


def test_access_log_on_a_pipe_nobody_reads(tmp_path, certs, client_ssl,
                                           backend):
    # One worker: its log buffer (256 KiB) and the pipe (64 KiB) hold
    # about 320 KiB; 1,000 access-log lines with a 500-byte path are
    # twice that.
    w, adm, rfd = start_on_pipe(tmp_path, certs, client_ssl, backend.url,
                                TLS_ENABLED="no", WORKERS="1",
                                ADMIN_LISTEN="127.0.0.1:0",
                                LOG_LEVEL="info")
    try:
        total, conc = 1000, 40
        done = []

        async def one(i):
            async with connect(w, "/%04d/%s" % (i, "p" * 500)) as ws:
                msg = "m%d" % i
                await ws.send(msg)
                assert await ws.recv() == msg
            done.append(i)

        async def main():
            sem = asyncio.Semaphore(conc)

            async def bounded(i):
                async with sem:
                    await one(i)
            await asyncio.gather(*(bounded(i) for i in range(total)))

        run(main(), timeout=240)
        # Every session completed: none stalled behind the full pipe.
        assert len(done) == total
        # The pipe holds 64 KiB and the log's buffers some more: with
        # 1,000 access-log lines, some were dropped, and counted.
        dropped = wait_until(
            lambda: adm.value("wsguard_log_dropped_total") or None, 10)
        assert dropped and dropped > 0, adm.metrics()
        # The admin thread and the workers still answer.
        assert adm.get("/healthz")[0] == 200
        assert adm.value("wsguard_connections_total",
                         result="session") == total
        # A stop still completes (the writer is waited for a bounded
        # time, not forever).
        t0 = time.monotonic()
        w.stop(timeout=40)
        assert time.monotonic() - t0 < 30
    finally:
        if w.alive():
            w.kill()
        os.close(rfd)


@pytest.fixture
def file_log(tmp_path, wsguard_factory, backend):
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    w = wsguard_factory(backend.url, LOG_ACCESS_LOG=str(path))
    return w, path


def lines(path):
    try:
        return [l for l in Path(path).read_text().splitlines() if l]
    except FileNotFoundError:
        return []


def session(w, text):
    async def go():
        async with connect(w, "/" + text) as ws:
            await ws.send(text)
            assert await ws.recv() == text
    run(go())


def test_sigusr1_reopens_the_access_log(file_log):
    w, path = file_log
    session(w, "before")
    assert wait_until(lambda: any('"/before"' in l for l in lines(path)), 10)
    rotated = path.with_name("access.log.1")
    os.rename(path, rotated)
    # Still written to the renamed file until the signal.
    session(w, "renamed")
    assert wait_until(lambda: any('"/renamed"' in l for l in lines(rotated)),
                      10)
    w.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: "access log opened again" in w.stderr_text(),
                      10), w.stderr_text()[-2000:]
    session(w, "after")
    assert wait_until(lambda: any('"/after"' in l for l in lines(path)), 10)
    assert not any('"/after"' in l for l in lines(rotated))
    assert not any('"/before"' in l for l in lines(path))
    # Nothing leaks: SIGUSR1 again and again keeps one descriptor for it.
    fds = len(os.listdir("/proc/%d/fd" % w.pid))
    for n in range(2, 7):
        w.proc.send_signal(signal.SIGUSR1)   # one at a time: they merge
        assert wait_until(
            lambda: w.stderr_text().count("access log opened again") >= n,
            10)
    assert len(os.listdir("/proc/%d/fd" % w.pid)) == fds
    w.stop()


def test_missing_log_directory_is_a_clear_error(tmp_path, certs, backend):
    ini = write_ini(tmp_path / "w.ini", certs, backend.url)
    env = clean_env(override_env(
        {"LOG_ACCESS_LOG": str(tmp_path / "nope" / "access.log")}))
    r = subprocess.run([wsguard_bin(), "-c", str(ini)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "cannot open access log %s: No such file or directory" % (
        tmp_path / "nope" / "access.log") in r.stderr, r.stderr
