"""The status page (/status) in headless Chromium, driven over the
DevTools protocol: it renders, the numbers it shows match /status.json,
the console stays free of errors, every request the page makes goes to
the admin origin, and its Content-Security-Policy stops an injected
inline script. A screenshot is saved as a test artefact
(build/test-artifacts/status-page.png, or $WSGUARD_ARTIFACTS/); the copy in
docs/status-page.png comes from this test.

Skipped (with the reason) only when Chromium is not installed or its
DevTools endpoint never comes up, which has nothing to do with wsguard.
"""

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from admintools import start_admin
from conftest import REPO
from helpers import connect, http_exchange, run, upgrade_head

CHROMIUM = os.environ.get("WSGUARD_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("WSGUARD_ARTIFACTS", REPO / "build" / "test-artifacts"))


class Chromium:
    """A headless Chromium with a DevTools port, in its own process group."""

    def __init__(self):
        if not os.access(CHROMIUM, os.X_OK):
            pytest.skip("Chromium not installed at %s" % CHROMIUM)
        self.dir = tempfile.mkdtemp(prefix="wsguard-status-")
        self.log = open(os.path.join(self.dir, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--no-default-browser-check",
             "--disable-default-apps", "--hide-scrollbars", "--mute-audio",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--user-data-dir=%s" % os.path.join(self.dir, "profile"),
             "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def page_ws_url(self, timeout=30.0):
        port_file = Path(self.dir) / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip("Chromium exited (%s): %s" % (self.proc.returncode, self.log_tail()))
            try:
                port = int(port_file.read_text().split()[0])
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port,
                                            timeout=2) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.1)
        pytest.skip("Chromium's DevTools endpoint did not come up: %s" % self.log_tail())

    def log_tail(self, n=2000):
        try:
            return open(os.path.join(self.dir, "chromium.log"), errors="replace").read()[-n:]
        except OSError:
            return ""

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class CDP:
    """A minimal DevTools protocol client: commands by id, events kept."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events = []
        self.waiting = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg:
                fut = self.waiting.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            else:
                self.events.append(msg)

    async def send(self, method, **params):
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        await self.ws.send(json.dumps({"id": self.next_id, "method": method,
                                       "params": params}))
        msg = await asyncio.wait_for(fut, 20)
        if "error" in msg:
            raise AssertionError("%s: %r" % (method, msg["error"]))
        return msg.get("result", {})

    async def eval(self, expr):
        r = await self.send("Runtime.evaluate", expression=expr, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError("%s: %r" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    def named(self, method):
        return [e["params"] for e in self.events if e.get("method") == method]

    async def close(self):
        self.reader.cancel()
        await self.ws.close()


@pytest.fixture
def chromium():
    c = Chromium()
    yield c
    c.close()


def csp_reports(events):
    """The Content-Security-Policy violations among DevTools events."""
    texts = [e["params"]["entry"]["text"] for e in events
             if e.get("method") == "Log.entryAdded"]
    texts += [json.dumps(e["params"]) for e in events
              if e.get("method") == "Runtime.consoleAPICalled"]
    return [t for t in texts if "Content Security Policy" in t]


def lookup(obj, path):
    for k in path.split("."):
        obj = obj[int(k)] if isinstance(obj, list) else obj[k]
    return obj


def test_status_page_in_chromium(chromium, wsguard_factory, backend):
    wsg, adm = start_admin(wsguard_factory, backend.url, ORIGIN_ALLOW="https://app.example")
    origin = "http://127.0.0.1:%d" % adm.port
    # Some traffic to show: two refusals, one finished session, one live.
    for _ in range(2):
        assert http_exchange(wsg, upgrade_head(wsg, headers={"Origin": "https://evil.example"}))[0] == 403

    async def finished():
        async with connect(wsg, origin="https://app.example") as ws:
            await ws.send("x")
            await ws.recv()
    run(finished())
    adm.wait_metric("wsguard_closes_total", {"code": "1000", "by": "client"}, 1)
    page_url = chromium.page_ws_url()
    out = {}

    async def scenario():
        live = await connect(wsg, origin="https://app.example")
        await live.send("y")
        await live.recv()
        async with websockets.connect(page_url, max_size=None) as ws:
            cdp = CDP(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.send(domain + ".enable")
            await cdp.send("Emulation.setDeviceMetricsOverride", width=1100, height=600,
                           deviceScaleFactor=1, mobile=False)
            await cdp.send("Page.navigate", url=origin + "/status")
            deadline = time.monotonic() + 20
            while not await cdp.eval("document.body && document.body.dataset.loaded || ''"):
                assert time.monotonic() < deadline, "the page never rendered /status.json"
                await asyncio.sleep(0.1)
            # A second refresh has run: the rates are filled in.
            first = await cdp.eval("document.body.dataset.loaded")
            while await cdp.eval("document.body.dataset.loaded") == first:
                assert time.monotonic() < deadline + 5
                await asyncio.sleep(0.1)
            out["cells"] = await cdp.eval(
                "Array.from(document.querySelectorAll('[data-k]'))"
                ".map(e => [e.dataset.k, e.textContent])")
            out["json"] = await asyncio.to_thread(adm.status)
            out["text"] = await cdp.eval("document.body.innerText")
            out["ids"] = await cdp.eval(
                "Object.fromEntries(['version','state','generation','hs_rate','msg_rate',"
                "'err','uptime','reload'].map(i => [i, document.getElementById(i).textContent]))")
            shot = await cdp.send("Page.captureScreenshot", format="png")
            out["png"] = base64.b64decode(shot["data"])
            out["events_before_probe"] = list(cdp.events)
            # The policy at work: an inline script added to the page does
            # not run (and is reported).
            out["injected"] = await cdp.eval(
                "(() => { const s = document.createElement('script');"
                " s.textContent = 'window.__pwned = 1'; document.body.appendChild(s);"
                " return window.__pwned === undefined ? 'blocked' : 'ran'; })()")
            # The violation report is an event of its own, sent after the
            # script was refused: await it (bounded), do not sleep.
            n = len(out["events_before_probe"])
            deadline = time.monotonic() + 20
            while not csp_reports(cdp.events[n:]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            out["events"] = list(cdp.events)
            await cdp.close()
        await live.close()
    run(scenario(), timeout=90)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.write_bytes(out["png"])
    print("status page screenshot: %s" % shot)
    assert out["png"][:8] == b"\x89PNG\r\n\x1a\n" and len(out["png"]) > 5000

    j = out["json"]
    cells = dict(out["cells"])
    assert len(cells) >= 12, cells
    for key, text in cells.items():
        assert text == str(lookup(j, key)), (key, text, lookup(j, key))
    # What there was to show is shown.
    assert cells["connections.active"] == "1"
    assert cells["connections.sessions"] == "2"
    assert cells["rejections.origin"] == "2"
    assert cells["closes.1000.client"] == "1"
    assert cells["routes.0.active"] == "1"
    assert cells["top_clients.0.connections"] == "1"
    assert cells["backends.0.state"] == "up"
    ids = out["ids"]
    assert ids["version"] == j["version"] and ids["state"] == "ready"
    assert ids["generation"] == "1" and ids["err"] == ""
    assert ids["hs_rate"] not in ("", "-") and ids["msg_rate"] not in ("", "-"), ids
    assert "127.0.0.1" in out["text"] and backend.url in out["text"]

    ev = out["events_before_probe"]
    requests = [e["params"]["request"]["url"] for e in ev
                if e.get("method") == "Network.requestWillBeSent"]
    assert origin + "/status" in requests and origin + "/status.json" in requests, requests
    off = [u for u in requests if not u.startswith(origin + "/")]
    assert off == [], "requests leaving the admin origin: %r" % off
    errors = [e["params"] for e in ev if e.get("method") in ("Runtime.exceptionThrown",)]
    errors += [e["params"] for e in ev if e.get("method") == "Runtime.consoleAPICalled"
               and e["params"].get("type") in ("error", "warning", "assert")]
    errors += [e["params"]["entry"] for e in ev if e.get("method") == "Log.entryAdded"
               and e["params"]["entry"].get("level") in ("error", "warning")]
    failed = [e["params"] for e in ev if e.get("method") == "Network.loadingFailed"]
    assert errors == [] and failed == [], (errors, failed)

    assert out["injected"] == "blocked"
    later = out["events"][len(ev):]
    assert csp_reports(later), later
