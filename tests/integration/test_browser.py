"""A real browser against wsguard: headless Chromium opens a WebSocket from
a page on an allowed and on a foreign origin (cross-site WebSocket
hijacking), and carries a JWT the browser way, as a subprotocol entry.

The page is served by a small HTTP server in a thread on 127.0.0.1; the
two origins are http://127.0.0.1:PORT and http://localhost:PORT (same
server, different host: different origins). The page opens
wss://localhost:WSGPORT/, sends "hello" and reports what happened by
fetching /result?... from its own server; the test waits (bounded) for
that report, then kills Chromium. The test certificate is trusted by its
SPKI hash (--ignore-certificate-errors-spki-list), nothing broader.

Skipped (with the reason) only when Chromium is not installed or never
loads the page at all, which has nothing to do with wsguard.
"""

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sectools import SECRET, hs_token

CHROMIUM = os.environ.get("WSGUARD_CHROMIUM", "/usr/bin/chromium")
REPORT_TIMEOUT = 30.0

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsguard browser test</title></head>
<body><script>
const RUN = %(run)s;
const URL_ = %(url)s;
const PROTOS = %(protos)s;
function report(ev) {
  ev.run = RUN;
  ev.origin = location.origin;
  fetch("/result?" + new URLSearchParams({j: JSON.stringify(ev)}),
        {mode: "no-cors", cache: "no-store"}).catch(() => {});
}
report({event: "loaded"});
let ws;
try {
  ws = PROTOS.length ? new WebSocket(URL_, PROTOS) : new WebSocket(URL_);
} catch (e) {
  report({event: "exception", error: String(e)});
}
if (ws) {
  ws.onopen = () => { report({event: "open", protocol: ws.protocol}); ws.send("hello"); };
  ws.onmessage = (m) => { report({event: "message", data: String(m.data)}); ws.close(1000); };
  ws.onerror = () => report({event: "error"});
  ws.onclose = (c) => report({event: "close", code: c.code, clean: c.wasClean});
}
</script></body></html>
"""


# permessage-deflate: Chromium always offers it; the page sends large
# text messages (JSON-like, and non-ASCII), checks every echo and reports
# the agreed extension.
DEFLATE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsguard deflate test</title></head>
<body><script>
const RUN = %(run)s;
const URL_ = %(url)s;
function report(ev) {
  ev.run = RUN;
  fetch("/result?" + new URLSearchParams({j: JSON.stringify(ev)}),
        {mode: "no-cors", cache: "no-store"}).catch(() => {});
}
report({event: "loaded"});
function json(n) {
  let a = [], len = 0;
  for (let i = 0; len < n; i++) {
    const e = JSON.stringify({id: i, user: "user" + (i %% 97), ok: i %% 3 == 0,
                              tags: ["alpha", "beta", "\\u00e9t\\u00e9", "\\u65e5\\u672c"]});
    a.push(e);
    len += e.length + 1;
  }
  return "[" + a.join(",") + "]";
}
const msgs = [json(100000), json(400000), "\\ud83d\\ude00 caf\\u00e9 " + json(2000), json(10)];
let ws, i = 0, good = 0;
try { ws = new WebSocket(URL_); } catch (e) { report({event: "exception", error: String(e)}); }
if (ws) {
  ws.onopen = () => { report({event: "open", extensions: ws.extensions}); ws.send(msgs[0]); };
  ws.onmessage = (m) => {
    if (m.data === msgs[i]) good++;
    i++;
    if (i < msgs.length) { ws.send(msgs[i]); return; }
    report({event: "message", data: "echoed " + good + "/" + msgs.length,
            extensions: ws.extensions,
            sent: msgs.reduce((n, s) => n + new TextEncoder().encode(s).length, 0)});
    ws.close(1000);
  };
  ws.onerror = () => report({event: "error"});
  ws.onclose = (c) => report({event: "close", code: c.code, clean: c.wasClean});
}
</script></body></html>
"""


class PageServer:
    """Serves /page (the test page) and records /result reports."""

    def __init__(self):
        self.pages = {}
        self.reports = []
        self.cond = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                if u.path == "/result":
                    q = urllib.parse.parse_qs(u.query)
                    try:
                        ev = json.loads(q.get("j", ["{}"])[0])
                    except ValueError:
                        ev = {"event": "bad-report", "raw": u.query}
                    with outer.cond:
                        outer.reports.append(ev)
                        outer.cond.notify_all()
                    body, ctype = b"ok", "text/plain"
                elif u.path in outer.pages:
                    body, ctype = outer.pages[u.path].encode(), "text/html; charset=utf-8"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.reports:
                    if pred(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pages():
    s = PageServer()
    yield s
    s.close()


def spki_hash(cert_path):
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Browser:
    def __init__(self, certs):
        if not os.access(CHROMIUM, os.X_OK):
            pytest.skip("Chromium not installed at %s" % CHROMIUM)
        self.spki = spki_hash(certs.cert)
        self.dir = tempfile.mkdtemp(prefix="wsguard-chromium-")
        self.procs = []

    def open(self, url):
        log = open(os.path.join(self.dir, "chromium-%d.log" % len(self.procs)), "wb")
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-default-browser-check",
               "--user-data-dir=%s" % os.path.join(self.dir, "profile-%d" % len(self.procs)),
               "--ignore-certificate-errors-spki-list=%s" % self.spki,
               "--host-resolver-rules=MAP localhost 127.0.0.1",
               url]
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        p._log = log
        self.procs.append(p)
        return p

    def log_tail(self, n=3000):
        out = []
        for i in range(len(self.procs)):
            try:
                out.append(open(os.path.join(self.dir, "chromium-%d.log" % i),
                                errors="replace").read()[-n:])
            except OSError:
                pass
        return "\n".join(out)

    def kill(self, p):
        """SIGTERM the browser's process group (its helpers share it),
        wait for the group to be gone, SIGKILL what is left."""
        def group_alive():
            try:
                os.killpg(p.pid, 0)
                return True
            except (ProcessLookupError, PermissionError):
                return False
        if group_alive():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.wait(timeout=5)
        p._log.close()

    def close(self):
        for p in self.procs:
            self.kill(p)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def browser(certs):
    b = Browser(certs)
    yield b
    b.close()


def run_page(browser, pages, page_origin, wsg, protos=(), path="/browser",
             page=PAGE):
    """Load the test page from page_origin; return the outcome (the
    "message" report if the echo came back, else the "close" or
    "exception" report) and all reports of the run."""
    run_id = "%d-%d" % (os.getpid(), time.monotonic_ns())
    pages.pages["/page-" + run_id] = page % {
        "run": json.dumps(run_id),
        "url": json.dumps("wss://localhost:%d%s" % (wsg.port, path)),
        "protos": json.dumps(list(protos)),
    }
    proc = browser.open("%s/page-%s" % (page_origin, run_id))
    try:
        loaded = pages.wait(lambda r: r.get("run") == run_id and r.get("event") == "loaded",
                            REPORT_TIMEOUT)
        if loaded is None:
            if proc.poll() is not None:
                pytest.skip("Chromium exited (%s) without loading the page: %s"
                            % (proc.returncode, browser.log_tail(800)))
            pytest.skip("Chromium did not load the test page within %.0fs: %s"
                        % (REPORT_TIMEOUT, browser.log_tail(800)))
        # The page's reports are separate fetches: they may arrive in
        # any order. The run ends with "close" (or "exception"); a
        # "message" report may still be on its way then.
        term = pages.wait(lambda r: r.get("run") == run_id and r.get("event") in
                          ("close", "exception"), REPORT_TIMEOUT)
        if term is not None:
            with pages.cond:
                opened = any(r.get("run") == run_id and r.get("event") == "open"
                             for r in pages.reports)
            if opened:
                # Sent before the close report, but on its own fetch: a
                # busy machine can deliver it well after the close.
                got = pages.wait(lambda r: r.get("run") == run_id
                                 and r.get("event") == "message", REPORT_TIMEOUT)
                if got is not None:
                    term = got
    finally:
        browser.kill(proc)
    with pages.cond:
        mine = [r for r in pages.reports if r.get("run") == run_id]
    assert term is not None, ("no result from the page within %.0fs; reports: %r; "
                              "chromium log: %s" % (REPORT_TIMEOUT, mine, browser.log_tail()))
    return term, mine


def test_browser_allowed_origin(browser, pages, backend, wsguard_factory):
    allowed = "http://127.0.0.1:%d" % pages.port
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW=allowed)
    term, reports = run_page(browser, pages, allowed, wsg)
    assert term["event"] == "message" and term["data"] == "hello", reports
    op = backend.wait_record(lambda r: r.get("event") == "open")
    assert op["headers"].get("Origin") == allowed, op
    rec = wsg.wait_access(lambda r: r.get("event") == "session", timeout=10)
    assert rec.get("origin") == allowed, rec


def test_browser_foreign_origin_refused(browser, pages, backend, wsguard_factory):
    allowed = "http://127.0.0.1:%d" % pages.port
    foreign = "http://localhost:%d" % pages.port
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW=allowed)
    term, reports = run_page(browser, pages, foreign, wsg)
    assert term["event"] in ("close", "exception"), reports
    assert not any(r.get("event") in ("open", "message") for r in reports), reports
    if term["event"] == "close":
        assert term.get("code") == 1006, reports
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["status"] == 403, rec
    assert rec.get("origin") == foreign, rec
    time.sleep(0.2)
    assert backend.opens() == [], backend.opens()


def test_browser_jwt_as_subprotocol(browser, pages, backend, wsguard_factory):
    """The browser-friendly token source: a Sec-WebSocket-Protocol entry.
    The backend selects no subprotocol; wsguard must answer with the token
    entry or the browser fails the handshake."""
    allowed = "http://127.0.0.1:%d" % pages.port
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW=allowed, JWT_ENABLED="yes",
                          JWT_ALGORITHMS="HS256", JWT_SECRET=SECRET,
                          JWT_SOURCES="protocol:access_token.")
    tok = hs_token()
    term, reports = run_page(browser, pages, allowed, wsg, protos=["access_token." + tok])
    assert term["event"] == "message" and term["data"] == "hello", reports
    op = backend.wait_record(lambda r: r.get("event") == "open")
    assert tok not in json.dumps(dict(op["headers"])) and tok not in op["path"], op
    assert op["headers"].get("X-User-Id") == "alice", op
    text = wsg.stdout_text() + wsg.stderr_text()
    assert tok not in text and tok.split(".")[2] not in text


def test_browser_jwt_missing_refused(browser, pages, backend, wsguard_factory):
    allowed = "http://127.0.0.1:%d" % pages.port
    wsg = wsguard_factory(backend.url, ORIGIN_ALLOW=allowed, JWT_ENABLED="yes",
                          JWT_ALGORITHMS="HS256", JWT_SECRET=SECRET,
                          JWT_SOURCES="protocol:access_token.")
    term, reports = run_page(browser, pages, allowed, wsg)
    assert term["event"] in ("close", "exception"), reports
    assert not any(r.get("event") in ("open", "message") for r in reports), reports
    rec = wsg.wait_access(lambda r: r.get("event") == "reject")
    assert rec["status"] == 401, rec
    time.sleep(0.2)
    assert backend.opens() == [], backend.opens()


def test_browser_permessage_deflate(browser, pages, backend, wsguard_factory):
    """Chromium offers permessage-deflate; wsguard agrees, large text
    messages (JSON-like, non-ASCII) echo intact both ways, the backend
    gets them plain and is offered no extension, and the metrics show the
    compression."""
    from admintools import start_admin
    allowed = "http://127.0.0.1:%d" % pages.port
    wsg, admin = start_admin(wsguard_factory, backend.url, ORIGIN_ALLOW=allowed)
    term, reports = run_page(browser, pages, allowed, wsg, page=DEFLATE_PAGE)
    assert term["event"] == "message" and term["data"] == "echoed 4/4", reports
    assert term["extensions"].startswith("permessage-deflate"), term
    op = backend.wait_record(lambda r: r.get("event") == "open")
    assert "Sec-WebSocket-Extensions" not in op["headers"], op
    assert len(backend.messages()) == 4
    rec = wsg.wait_access(lambda r: r.get("event") == "session", timeout=10)
    assert rec.get("deflate", "").startswith("server_bits=12"), rec
    sent = term["sent"]
    vin = admin.value("wsguard_deflate_bytes_total", direction="in",
                      form="uncompressed")
    cin = admin.value("wsguard_deflate_bytes_total", direction="in",
                      form="compressed")
    cout = admin.value("wsguard_deflate_bytes_total", direction="out",
                       form="compressed")
    assert vin == sent, (vin, sent)
    assert 0 < cin < sent / 3 and 0 < cout < sent / 3, (cin, cout, sent)
