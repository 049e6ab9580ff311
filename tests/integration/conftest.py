"""Fixtures for wsguard's integration tests: real processes, real TLS.

Run:  WSGUARD_BIN=build/wsguard /usr/bin/python3 -m pytest -q tests/integration
(WSGUARD_BIN defaults to build/wsguard; `make test` sets it.)

Fixtures
--------
certs              (session) temp dir with a self-signed ECDSA P-256
                   certificate for localhost / 127.0.0.1 / ::1;
                   attributes .dir, .cert, .key (paths as str).
client_ssl         (session) ssl.SSLContext trusting certs.cert, hostname
                   checking on (clients use server_hostname="localhost").
backend_factory    (function) backend_factory(*args) starts
                   tests/integration/echo_backend.py on 127.0.0.1:0 with the
                   extra args (e.g. "--no-read", "--subprotocols", "chat",
                   "--reject", "403"), always recording, and returns a Backend:
                   .port .url ("ws://127.0.0.1:PORT") .record_path .proc
                   .records()  parsed JSON lines so far
                   .opens()    the "open" events ("headers" is a dict whose
                               lookups ignore case)
                   .messages() .closes()
                   .wait_record(pred, timeout=5) first record matching pred
                   .kill()     SIGKILL the backend
                   All backends are killed at teardown.
backend            backend_factory() (recording, echoing).
wsguard_factory    (function) wsguard_factory(backend_url, **overrides)
                   writes a minimal ini in tmp_path
                       [server] listen = 127.0.0.1:0, workers = 1
                       [tls] cert/key = certs  [backend] url = backend_url
                       [log] level = debug     [admin] listen = (off)
                   and starts $WSGUARD_BIN -c that.ini; every override
                   becomes an environment variable: SERVER_IDLE_TIMEOUT="1s"
                   -> WSGUARD_SERVER_IDLE_TIMEOUT=1s. Waits (10 s) for
                   stderr to log "listening on HOST:PORT". Returns a Wsguard:
                   .port .host .url ("wss://localhost:PORT", ws:// when
                   TLS_ENABLED="no") .proc .ini_path .client_ssl .tls
                   (_env={...}: extra environment variables, as they are;
                   _ini="...": INI text appended to the file, e.g. route
                   sections, which no environment variable can express)
                   .access_log()  parsed JSON lines of stdout so far
                   .wait_access(pred, timeout=5)  first matching record
                   .stderr_text() the error log so far
                   .rss_kb()      VmRSS of the process
                   .terminate()   SIGTERM, once (never a second: that
                                  means "exit now" to wsguard)
                   .stop(timeout=40)  terminate(), wait for the exit,
                                  assert exit status 0
                   Teardown stops it and fails the test if wsguard did not
                   exit 0 (a crash or a sanitizer report).
wsguard            wsguard_factory(backend.url).

Helpers (tests/integration/helpers.py; `from helpers import ...`)
------------------------------------------------------------------
connect(wsg, path="/", **kw)  websockets client connection (use with
                   `async with` or `await`), TLS trusting certs,
                   max_size=None, compression=None unless overridden.
run(coro, timeout=60)         asyncio.run with an overall deadline.
raw_connect(wsg, timeout=5)   a connected socket (TLS-wrapped unless the
                   proxy runs without TLS).
upgrade_head(wsg, path="/", key=None, headers=None, ...)  bytes of a
                   valid WebSocket upgrade request head.
http_exchange(wsg, head, timeout=5)  send head, read the response head:
                   (status, headers dict (lower-case names), raw head).
Tests use asyncio via run(...) inside plain test functions.
"""

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
ECHO_BACKEND = HERE / "echo_backend.py"
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
TEST_TIMEOUT = int(os.environ.get("WSGUARD_TEST_TIMEOUT", "180"))

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def wsguard_bin():
    b = os.environ.get("WSGUARD_BIN", "build/wsguard")
    p = Path(b)
    if not p.is_absolute() and not p.exists():
        p = REPO / b
    return str(p)


def clean_env(extra=None):
    """The environment for a child: ours without any WSGUARD_* variable
    (WSGUARD_BIN would read as a configuration override), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGUARD_")}
    if extra:
        env.update(extra)
    return env


class CIDict(dict):
    """A dict whose lookups ignore the case of (string) keys."""

    def _find(self, key):
        if dict.__contains__(self, key):
            return key
        if isinstance(key, str):
            low = key.lower()
            for k in self.keys():
                if isinstance(k, str) and k.lower() == low:
                    return k
        raise KeyError(key)

    def __getitem__(self, key):
        return dict.__getitem__(self, self._find(key))

    def __contains__(self, key):
        try:
            self._find(key)
            return True
        except KeyError:
            return False

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def read_json_lines(path, strict=True):
    """Complete lines of a JSON-lines file; a partial last line is left out."""
    try:
        data = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    lines = data.split("\n")
    for line in lines[:-1]:          # the last piece has no newline yet
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if strict:
                raise AssertionError("%s: not a JSON line: %r" % (path, line))
    return out


def wait_until(fn, timeout, interval=0.02):
    """Poll fn() until it returns something truthy or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def make_cert(directory):
    directory = Path(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec",
         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return str(cert), str(key)


# --------------------------------------------------------------------------
# per-test deadline (no pytest-timeout plugin in Debian's python3-pytest)

class DeadlineExceeded(Exception):
    pass


@pytest.fixture(autouse=True)
def _test_deadline():
    def on_alarm(signum, frame):
        raise DeadlineExceeded("test took longer than %d s" % TEST_TIMEOUT)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------
# certificates

class Certs:
    def __init__(self, directory):
        self.dir = str(directory)
        self.cert, self.key = make_cert(directory)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def client_ssl(certs):
    ctx = ssl.create_default_context(cafile=certs.cert)
    ctx.check_hostname = True
    return ctx


# --------------------------------------------------------------------------
# echo backend

class Backend:
    def __init__(self, proc, host, port, record_path, args):
        self.proc = proc
        self.host = host
        self.port = port
        self.url = "ws://%s:%d" % (host, port)
        self.record_path = str(record_path)
        self.args = args

    def records(self):
        recs = read_json_lines(self.record_path)
        for r in recs:
            if isinstance(r.get("headers"), dict):
                r["headers"] = CIDict(r["headers"])
        return recs

    def opens(self):
        return [r for r in self.records() if r.get("event") == "open"]

    def messages(self):
        return [r for r in self.records() if r.get("event") == "message"]

    def closes(self):
        return [r for r in self.records() if r.get("event") == "close"]

    def wait_record(self, pred, timeout=5.0):
        def find():
            for r in self.records():
                if pred(r):
                    return r
            return None
        r = wait_until(find, timeout)
        assert r is not None, "no matching backend record within %.1fs; records: %r" % (
            timeout, self.records())
        return r

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __repr__(self):
        return "<Backend %s %s>" % (self.url, " ".join(self.args))


def start_backend(tmp_dir, index, args, timeout=10.0):
    record = Path(tmp_dir) / ("backend-%d.jsonl" % index)
    errlog = Path(tmp_dir) / ("backend-%d.err" % index)
    cmd = [PYTHON, str(ECHO_BACKEND), "--host", "127.0.0.1", "--port", "0",
           "--record", str(record)] + [str(a) for a in args]
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=clean_env())
    # Await the "listening on" line (printed and flushed once it listens).
    import select
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            pytest.fail("echo backend did not start in %.0fs: %s" % (
                timeout, errlog.read_text(errors="replace")))
        r, _, _ = select.select([proc.stdout], [], [], left)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait(timeout=5)
                pytest.fail("echo backend exited (%s): %s" % (
                    proc.returncode, errlog.read_text(errors="replace")))
            buf += chunk
    m = LISTEN_RE.search(buf.decode(errors="replace"))
    assert m, "unexpected backend output: %r" % buf
    return Backend(proc, m.group(1), int(m.group(2)), record, list(args))


@pytest.fixture
def backend_factory(tmp_path):
    started = []

    def factory(*args):
        b = start_backend(tmp_path, len(started), args)
        started.append(b)
        return b

    yield factory
    for b in started:
        if b.proc.poll() is None:
            b.proc.terminate()
            try:
                b.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait(timeout=5)
        if b.proc.stdout:
            b.proc.stdout.close()


@pytest.fixture
def backend(backend_factory):
    return backend_factory()


def _stopping(make):
    """A factory of make(...) whose products are all stopped afterwards
    (a generator for a yield fixture)."""
    made = []

    def factory(*args, **kw):
        b = make(*args, **kw)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.stop()


@pytest.fixture
def raw_backend_factory():
    """RawBackend (limitstools.py): a raw recording/echo backend."""
    from limitstools import RawBackend
    yield from _stopping(RawBackend)


@pytest.fixture
def script_backend():
    """ScriptBackend (regresstools.py): answers the upgrade with 101, then
    runs script(sock) on the backend connection."""
    from regresstools import ScriptBackend
    yield from _stopping(ScriptBackend)


# --------------------------------------------------------------------------
# wsguard

def write_ini(path, certs, backend_url, extra=""):
    Path(path).write_text(
        "[server]\n"
        "listen = 127.0.0.1:0\n"
        "workers = 1\n"
        "\n"
        "[tls]\n"
        "cert = %s\n"
        "key = %s\n"
        "\n"
        "[backend]\n"
        "url = %s\n"
        "\n"
        "[log]\n"
        "level = debug\n"
        "\n"
        "[admin]\n"
        "listen =\n" % (certs.cert, certs.key, backend_url) + extra)
    return str(path)


def override_env(overrides):
    env = {}
    for k, v in overrides.items():
        if isinstance(v, bool):
            v = "yes" if v else "no"
        env["WSGUARD_" + k.upper()] = str(v)
    return env


class Wsguard:
    def __init__(self, proc, ini_path, out_path, err_path, tls, client_ssl):
        self.proc = proc
        self.pid = proc.pid
        self.ini_path = str(ini_path)
        self.out_path = str(out_path)
        self.err_path = str(err_path)
        self.tls = tls
        self.client_ssl = client_ssl if tls else None
        self.host = None
        self.port = None
        self.url = None
        self.listens = []
        self.expect_exit = None      # set by stop()/kill(): teardown checks
        self.terminated = False      # SIGTERM sent (by terminate())

    def _set_listen(self, host, port):
        self.host = host
        self.port = port
        self.url = "%s://localhost:%d" % ("wss" if self.tls else "ws", port)

    def access_log(self):
        return read_json_lines(self.out_path)

    def wait_access(self, pred, timeout=5.0):
        def find():
            for r in self.access_log():
                if pred(r):
                    return r
            return None
        r = wait_until(find, timeout)
        assert r is not None, (
            "no matching access-log record within %.1fs; access log: %r; "
            "stderr tail: %s" % (timeout, self.access_log(), self.stderr_text()[-3000:]))
        return r

    def stderr_text(self):
        try:
            return Path(self.err_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        try:
            return Path(self.out_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for pid %d" % self.proc.pid)

    def alive(self):
        return self.proc.poll() is None

    def terminate(self):
        """Send SIGTERM, once: a second one tells wsguard to exit at once
        with status 1, so a test that started a drain must wait for the
        exit, never signal again (stop() and teardown know this)."""
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.terminated = True

    def stop(self, timeout=40.0):
        """SIGTERM (unless already sent), wait for the exit, assert status
        0. Returns the status."""
        self.expect_exit = 0
        self.terminate()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError("wsguard did not exit within %.0fs of SIGTERM; stderr tail:\n%s"
                                 % (timeout, self.stderr_text()[-3000:]))
        assert rc == 0, "wsguard exited with status %r after SIGTERM; stderr tail:\n%s" % (
            rc, self.stderr_text()[-3000:])
        return rc

    def kill(self):
        self.expect_exit = "any"
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def __repr__(self):
        return "<Wsguard pid %d %s>" % (self.proc.pid, self.url)


def start_wsguard(tmp_dir, index, certs, client_ssl, backend_url, overrides,
                  timeout=10.0, env_extra=None, ini_extra=""):
    tmp_dir = Path(tmp_dir)
    ini = write_ini(tmp_dir / ("wsguard-%d.ini" % index), certs, backend_url,
                    extra=ini_extra)
    out_path = tmp_dir / ("wsguard-%d.access.log" % index)
    err_path = tmp_dir / ("wsguard-%d.err.log" % index)
    env = clean_env(override_env(overrides))
    if env_extra:
        env.update(env_extra)
    tls_val = str(overrides.get("TLS_ENABLED", overrides.get("tls_enabled", "yes")))
    tls = tls_val.strip().lower() not in ("no", "off", "false", "0")
    binary = wsguard_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail("wsguard binary not found: %s (build it with `make`)" % binary)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([binary, "-c", ini], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))
    w = Wsguard(proc, ini, out_path, err_path, tls, client_ssl)

    def listening():
        found = LISTEN_RE.findall(w.stderr_text())
        return found or proc.poll() is not None

    wait_until(listening, timeout)
    found = LISTEN_RE.findall(w.stderr_text())
    if not found:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
            why = "did not log 'listening on' within %.0fs" % timeout
        else:
            why = "exited with status %r" % proc.returncode
        pytest.fail("wsguard %s; stderr:\n%s" % (why, w.stderr_text()[-5000:]))
    w.listens = [(h, int(p)) for h, p in found]
    w._set_listen(*w.listens[0])
    return w


@pytest.fixture
def wsguard_factory(tmp_path, certs, client_ssl):
    started = []

    def factory(backend_url, _env=None, _ini="", **overrides):
        w = start_wsguard(tmp_path, len(started), certs, client_ssl,
                          backend_url, overrides, env_extra=_env,
                          ini_extra=_ini)
        started.append(w)
        return w

    yield factory
    problems = []
    for w in started:
        if w.proc.poll() is None:
            w.terminate()
            try:
                w.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=5)
                problems.append("%r did not exit within 40s of SIGTERM" % w)
                continue
        rc = w.proc.returncode
        if w.expect_exit != "any" and rc != 0:
            problems.append("%r exited with status %r; stderr tail:\n%s"
                            % (w, rc, w.stderr_text()[-3000:]))
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def wsguard(wsguard_factory, backend):
    return wsguard_factory(backend.url)
