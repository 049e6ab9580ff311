"""admintools - helpers for the admin listener's tests.

    from admintools import (start_admin, Admin, parse_exposition,
                            ExpositionError, source_labels)

start_admin(wsguard_factory, backend_url, **overrides) starts wsguard with
[admin] listen = 127.0.0.1:0 (unless ADMIN_LISTEN is given) and returns
(wsg, Admin). Admin talks plain HTTP/1.1 to the admin port:
    .get(path, method="GET", headers=None) -> (status, headers, body bytes)
    .metrics()      the strictly parsed exposition (an Exposition)
    .status()       /status.json as a dict
    .wait_metric(name, labels, pred_or_value, timeout=5)

parse_exposition(text) checks the Prometheus text format 0.0.4 strictly
and raises ExpositionError at the first problem (see its docstring).
"""

import json
import math
import re
import socket
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ADMIN_RE = re.compile(r"admin listening on (\S+):(\d+)")


# --------------------------------------------------------------------------
# the admin listener as a client sees it

class Admin:
    def __init__(self, host, port):
        self.host = host.strip("[]")
        self.port = port
        self.origin = "http://%s:%d" % (host, port)

    def connect(self, timeout=5.0):
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def raw(self, data, timeout=5.0):
        """Send bytes on a fresh connection, read to EOF; the raw answer."""
        with self.connect(timeout) as s:
            s.sendall(data)
            return read_all(s, timeout)

    def get(self, path, method="GET", headers=None, timeout=5.0):
        lines = ["%s %s HTTP/1.1" % (method, path),
                 "Host: %s:%d" % (self.host, self.port)]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        raw = self.raw(("\r\n".join(lines) + "\r\n\r\n").encode(), timeout)
        return split_response(raw)

    def metrics(self):
        st, hdrs, body = self.get("/metrics")
        assert st == 200, (st, body)
        assert hdrs["content-type"] == "text/plain; version=0.0.4; charset=utf-8", hdrs
        return parse_exposition(body.decode("utf-8"))

    def status(self):
        st, hdrs, body = self.get("/status.json")
        assert st == 200, (st, body)
        assert hdrs["content-type"] == "application/json", hdrs
        return json.loads(body)

    def value(self, name, **labels):
        return self.metrics().value(name, **labels)

    def wait_metric(self, name, labels, want, timeout=5.0):
        """Poll /metrics until name{labels} satisfies want (a value, or a
        predicate of the value); returns the last value read."""
        pred = want if callable(want) else (lambda v: v == want)
        deadline = time.monotonic() + timeout
        while True:
            v = self.metrics().value(name, **labels)
            if pred(v) or time.monotonic() > deadline:
                return v
            time.sleep(0.05)


def read_all(sock, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no EOF within %.1fs; got %r" % (timeout, buf[:200]))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return buf
        if not chunk:
            return buf
        buf += chunk


def split_response(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no complete response head: %r" % raw[:300]
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) [^\r\n]*", lines[0])
    assert m, lines[0]
    hdrs = {}
    for line in lines[1:]:
        n, _, v = line.partition(":")
        assert n and n == n.strip() and _, line
        assert n.lower() not in hdrs, "duplicate header %s" % n
        hdrs[n.lower()] = v.strip()
    return int(m.group(1)), hdrs, body


def start_admin(wsguard_factory, backend_url, timeout=10.0, **overrides):
    overrides.setdefault("ADMIN_LISTEN", "127.0.0.1:0")
    wsg = wsguard_factory(backend_url, **overrides)
    deadline = time.monotonic() + timeout
    while True:
        m = ADMIN_RE.search(wsg.stderr_text())
        if m:
            return wsg, Admin(m.group(1), int(m.group(2)))
        assert wsg.alive(), wsg.stderr_text()[-3000:]
        assert time.monotonic() < deadline, (
            "no 'admin listening on' in the log: " + wsg.stderr_text()[-3000:])
        time.sleep(0.02)


# --------------------------------------------------------------------------
# the labels wsguard's sources define (so a new kind cannot go unexported)

def source_labels():
    """{"reason": [...], "limit": [...], "code": [...], "by": [...],
    "direction": [...]} read from src/refuse.c and src/stats.c."""
    refuse = (REPO / "src/refuse.c").read_text()
    stats = (REPO / "src/stats.c").read_text()

    def table(text, name):
        m = re.search(r"%s\[[A-Z_]+\]\s*=\s*\{(.*?)\};" % re.escape(name), text, re.S)
        assert m, name
        return re.findall(r'\]\s*=\s*"([a-z_]+)"', m.group(1))

    reasons = re.findall(r'\[REF_[A-Z_]+\]\s*=\s*\{\s*\d+,\s*"([a-z_]+)"', refuse)
    m = re.search(r"close_codes\[[^]]*\]\s*=\s*\{(.*?)\};", stats, re.S)
    codes = re.findall(r"\d{4}", m.group(1)) + ["other"]
    return {"reason": reasons, "limit": table(stats, "enforce_label"),
            "code": codes, "by": table(stats, "closed_by_label"),
            "direction": table(stats, "direction_label")}


# --------------------------------------------------------------------------
# a strict parser of the text exposition format 0.0.4

class ExpositionError(AssertionError):
    pass


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:Inf|NaN|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []        # (sample name, labels dict, value)


class Exposition:
    def __init__(self):
        self.families = {}       # name -> Family, in order
        self.series = {}         # (sample name, frozenset(labels)) -> value

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        if key not in self.series:
            raise KeyError("no series %s%r" % (name, labels))
        return self.series[key]

    def samples(self, name):
        """[(labels, value)] of every series named name."""
        return [(dict(k[1]), v) for k, v in self.series.items() if k[0] == name]

    def sample_names(self):
        return {k[0] for k in self.series}


def _unescape_label(s, where):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in '\\"n':
                raise ExpositionError("%s: bad escape in label value %r" % (where, s))
            out.append({"\\": "\\", '"': '"', "n": "\n"}[s[i + 1]])
            i += 2
        elif c == "\n" or c == '"':
            raise ExpositionError("%s: unescaped %r in label value" % (where, c))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_labels(text, where):
    """text is what is inside {...}; returns a dict."""
    labels, i = {}, 0
    while i < len(text):
        m = LABEL_NAME.match(text, i)
        if not m:
            raise ExpositionError("%s: bad label name at %r" % (where, text[i:]))
        name = m.group(0)
        if name.startswith("__"):
            raise ExpositionError("%s: reserved label name %s" % (where, name))
        i = m.end()
        if text[i:i + 2] != '="':
            raise ExpositionError("%s: expected =\" after %s" % (where, name))
        i += 2
        j = i
        while j < len(text) and text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        if j >= len(text):
            raise ExpositionError("%s: unterminated label value" % where)
        if name in labels:
            raise ExpositionError("%s: label %s twice" % (where, name))
        labels[name] = _unescape_label(text[i:j], where)
        i = j + 1
        if i < len(text):
            if text[i] != ",":
                raise ExpositionError("%s: expected , at %r" % (where, text[i:]))
            i += 1
            if i == len(text):
                raise ExpositionError("%s: trailing comma" % where)
    return labels


def _family_of(sample, fam):
    """Does sample name belong to family fam (by its TYPE)?"""
    if fam.type == "histogram":
        return sample in (fam.name + "_bucket", fam.name + "_sum", fam.name + "_count")
    if fam.type == "summary":
        return sample in (fam.name, fam.name + "_sum", fam.name + "_count")
    return sample == fam.name


def parse_exposition(text):
    """Parse text strictly:
    - it ends with a newline; no empty lines, no comments other than HELP
      and TYPE, no timestamps;
    - every family has exactly one "# HELP" then one "# TYPE", both before
      its samples; a family's samples are contiguous; a family name is
      declared once;
    - metric and label names match the grammar, label values are escaped
      (\\\\, \\", \\n only), no label twice, values are floats;
    - counters end in _total and are not negative;
    - no series (name and label set) twice;
    - histograms: per label set, buckets in increasing le order, counts
      cumulative (never decreasing), the last le="+Inf" and equal to
      _count, and a _sum.
    Returns an Exposition."""
    if not text.endswith("\n"):
        raise ExpositionError("the exposition does not end with a newline")
    exp = Exposition()
    fam = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d" % n
        if line == "":
            raise ExpositionError("%s: empty line" % where)
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (\S+) (.*)", line)
            if not m:
                raise ExpositionError("%s: a comment other than HELP/TYPE: %r" % (where, line))
            kind, name, rest = m.groups()
            if not METRIC_NAME.fullmatch(name):
                raise ExpositionError("%s: bad metric name %r" % (where, name))
            if kind == "HELP":
                if name in exp.families:
                    raise ExpositionError("%s: family %s declared twice" % (where, name))
                if re.search(r"\\[^\\n]|\\$", rest):
                    raise ExpositionError("%s: bad escape in HELP %r" % (where, rest))
                if not rest.strip():
                    raise ExpositionError("%s: empty HELP for %s" % (where, name))
                fam = Family(name)
                fam.help = rest
                exp.families[name] = fam
            else:
                if fam is None or fam.name != name or fam.type is not None or fam.samples:
                    raise ExpositionError("%s: TYPE %s not right after its HELP" % (where, name))
                if rest not in TYPES:
                    raise ExpositionError("%s: unknown type %r" % (where, rest))
                fam.type = rest
                if rest == "counter" and not name.endswith("_total"):
                    raise ExpositionError("%s: counter %s does not end in _total" % (where, name))
            continue
        m = re.fullmatch(r"([^{ ]+)(?:\{(.*)\})? ([^ ]+)", line)
        if not m:
            raise ExpositionError("%s: not a sample line (or has a timestamp): %r" % (where, line))
        name, ltext, value = m.groups()
        if not METRIC_NAME.fullmatch(name):
            raise ExpositionError("%s: bad metric name %r" % (where, name))
        if fam is None or fam.type is None:
            raise ExpositionError("%s: sample %s before its HELP and TYPE" % (where, name))
        if not _family_of(name, fam):
            owner = [f for f in exp.families.values() if _family_of(name, f)]
            if owner:
                raise ExpositionError("%s: sample %s of family %s is not with the "
                                      "rest of it" % (where, name, owner[0].name))
            raise ExpositionError("%s: sample %s has no HELP/TYPE (current "
                                  "family %s)" % (where, name, fam.name))
        labels = _parse_labels(ltext, where) if ltext is not None else {}
        if ltext == "":
            raise ExpositionError("%s: empty braces" % where)
        if not FLOAT.fullmatch(value):
            raise ExpositionError("%s: bad value %r" % (where, value))
        v = float(value.replace("Inf", "inf"))
        if fam.type == "counter" and not v >= 0:
            raise ExpositionError("%s: negative counter" % where)
        key = (name, frozenset(labels.items()))
        if key in exp.series:
            raise ExpositionError("%s: duplicate series %s%r" % (where, name, labels))
        exp.series[key] = v
        fam.samples.append((name, labels, v))
    for f in exp.families.values():
        if f.type is None:
            raise ExpositionError("family %s has HELP but no TYPE" % f.name)
        if f.type == "histogram":
            _check_histogram(f)
    return exp


def _check_histogram(f):
    groups = {}
    for name, labels, v in f.samples:
        rest = frozenset((k, x) for k, x in labels.items() if k != "le")
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            if "le" not in labels:
                raise ExpositionError("%s: bucket without le" % f.name)
            if not FLOAT.fullmatch(labels["le"]):
                raise ExpositionError("%s: bad le %r" % (f.name, labels["le"]))
            g["buckets"].append((float(labels["le"].replace("Inf", "inf")), v))
        else:
            if "le" in labels:
                raise ExpositionError("%s: le on %s" % (f.name, name))
            g["sum" if name.endswith("_sum") else "count"] = v
    for rest, g in groups.items():
        b = g["buckets"]
        if not b or g["sum"] is None or g["count"] is None:
            raise ExpositionError("%s%r: needs buckets, _sum and _count" % (f.name, dict(rest)))
        les = [le for le, _ in b]
        if les != sorted(les) or len(set(les)) != len(les):
            raise ExpositionError("%s: le not increasing: %r" % (f.name, les))
        if not math.isinf(les[-1]):
            raise ExpositionError("%s: the last bucket is not +Inf" % f.name)
        counts = [c for _, c in b]
        if any(b2 < b1 for b1, b2 in zip(counts, counts[1:])):
            raise ExpositionError("%s: buckets not cumulative: %r" % (f.name, counts))
        if counts[-1] != g["count"]:
            raise ExpositionError("%s: +Inf bucket %r != _count %r" % (f.name, counts[-1], g["count"]))
