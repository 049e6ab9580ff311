"""Deployment: `make install`/`uninstall`, the man pages (rendering, the key
reference against the option table, the options against `wsguard -h`), the
systemd unit (verify, exposure, its system call filter against the calls
wsguard really makes), the Dockerfile, compose and Kubernetes manifests
(structure only: no cluster and no Docker daemon here; the image itself is
tested by scripts/container-test.sh), the CHANGELOG, and the `make run`
demo (custom ports, the 403/401/echo it prints, a clean stop on Ctrl-C and
SIGTERM).

Tests whose tool is missing (groff, man, systemd-analyze, strace, curl,
python3-yaml; all installed by scripts/install-deps.sh) are skipped."""
import asyncio
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import websockets
import websockets.exceptions

from conftest import REPO, clean_env, wsguard_bin

yaml = pytest.importorskip("yaml")

MAN8 = REPO / "man" / "wsguard.8"
MAN5 = REPO / "man" / "wsguard.ini.5"
UNIT = REPO / "conf" / "wsguard.service"
TABLE = REPO / "src" / "config_table.h"


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (scripts/install-deps.sh)")


def make(*args, env=None, timeout=300):
    return subprocess.run(["make", "--no-print-directory", "-s"] + list(args),
                          cwd=REPO, env=clean_env(env), capture_output=True,
                          text=True, timeout=timeout)


def build_dir():
    """BUILD= for make: the directory of the wsguard under test, so that
    `make install` installs that binary and never rebuilds another one."""
    return os.path.relpath(os.path.dirname(os.path.abspath(wsguard_bin())),
                           REPO)


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.is_file() or p.is_symlink())


def parse_duration(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(s).strip())
    assert m, s
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# --------------------------------------------------------------------------
# make install / uninstall

EXPECTED_TREE = [
    "usr/local/bin/wsguard",
    "usr/local/etc/wsguard/wsguard.ini.sample",
    "usr/local/lib/systemd/system/wsguard.service",
    "usr/local/lib/sysusers.d/wsguard.conf",
    "usr/local/share/man/man5/wsguard.ini.5",
    "usr/local/share/man/man8/wsguard.8",
]


def test_install_tree_and_uninstall(tmp_path):
    dest = tmp_path / "dest"
    r = make("install", f"DESTDIR={dest}", f"BUILD={build_dir()}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert files_under(dest) == EXPECTED_TREE

    binary = dest / "usr/local/bin/wsguard"
    assert os.access(binary, os.X_OK)
    assert (binary.stat().st_mode & 0o777) == 0o755
    v = subprocess.run([str(binary), "-V"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("wsguard "), v
    for f in EXPECTED_TREE[1:]:
        assert ((dest / f).stat().st_mode & 0o777) == 0o644, f
    assert (dest / "usr/local/etc/wsguard/wsguard.ini.sample").read_bytes() \
        == (REPO / "conf/wsguard.ini").read_bytes()
    assert (dest / "usr/local/lib/sysusers.d/wsguard.conf").read_text() \
        .startswith("u wsguard ")
    unit = (dest / "usr/local/lib/systemd/system/wsguard.service").read_text()
    # DESTDIR is not part of any installed path.
    assert str(dest) not in unit
    assert ("ExecStart=/usr/local/bin/wsguard -c "
            "/usr/local/etc/wsguard/wsguard.ini") in unit

    # A configuration of the user's own is never touched by uninstall.
    own = dest / "usr/local/etc/wsguard/wsguard.ini"
    own.write_text("[server]\n")
    r = make("uninstall", f"DESTDIR={dest}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert files_under(dest) == ["usr/local/etc/wsguard/wsguard.ini"]
    own.unlink()
    r = make("uninstall", f"DESTDIR={dest}")     # twice is fine
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (dest / "usr/local/etc/wsguard").exists()


def test_install_prefix_and_sysconfdir_rewrite_paths(tmp_path):
    dest = tmp_path / "dest"
    r = make("install", f"DESTDIR={dest}", "PREFIX=/usr", "sysconfdir=/etc",
             f"BUILD={build_dir()}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert files_under(dest) == [
        "etc/wsguard/wsguard.ini.sample",
        "usr/bin/wsguard",
        "usr/lib/systemd/system/wsguard.service",
        "usr/lib/sysusers.d/wsguard.conf",
        "usr/share/man/man5/wsguard.ini.5",
        "usr/share/man/man8/wsguard.8",
    ]
    unit = (dest / "usr/lib/systemd/system/wsguard.service").read_text()
    assert "ExecStart=/usr/bin/wsguard -c /etc/wsguard/wsguard.ini" in unit
    assert "/usr/local" not in unit
    man8 = (dest / "usr/share/man/man8/wsguard.8").read_text()
    assert "/etc/wsguard/wsguard.ini.sample" in man8
    assert "/usr/local" not in man8
    r = make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr", "sysconfdir=/etc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert files_under(dest) == []


# --------------------------------------------------------------------------
# man pages

@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page):
    need("groff")
    for cmd in (["groff", "-t", "-ww", "-man", "-Tutf8", str(page)],
                ["groff", "-ww", "-z", "-man", "-Tutf8", str(page)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (cmd, r.stderr)
    need("man")
    r = subprocess.run(["man", "--warnings=w", "-l", str(page)],
                       capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="80", MANPAGER="cat",
                                PAGER="cat", LC_ALL="C.UTF-8"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "NAME" in r.stdout and "SEE ALSO" in r.stdout
    # Tables went through tbl: no raw table markup in the output.
    assert "tab(|)" not in r.stdout and ".TS" not in r.stdout


def table_rows():
    """(section, key, default, unsupported) of every row of
    config_options[] in src/config_table.h."""
    text = TABLE.read_text()
    body = text[text.index("config_options[] = {"):]
    body = body[:body.index("\n};")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    row = re.compile(
        r'\{\s*"(?P<section>[^"]+)",\s*"(?P<key>[^"]+)",\s*OPT_\w+,\s*'
        r'[CP]\(\w+\),\s*[^,]+,\s*[^,]+,\s*'
        r'(?P<def>NULL|"(?:[^"\\]|\\.)*"),\s*(?P<flags>[^,]+),')
    rows = []
    for m in row.finditer(body):
        d = None if m.group("def") == "NULL" else m.group("def")[1:-1]
        rows.append((m.group("section"), m.group("key"), d,
                     "UN" in m.group("flags") or
                     "OPT_UNSUPPORTED" in m.group("flags")))
    # Every row was understood: as many rows as opening braces.
    assert len(rows) == len(re.findall(r'\{\s*"', body)) > 50
    return rows


def roff_text(s):
    """Roff source of a value to plain text (fonts, escapes)."""
    s = re.sub(r"\\f[BIRP]", "", s)
    return (s.replace("\\-", "-").replace("\\e", "\\")
            .replace("\\(dq", '"').replace("\\&", ""))


def man_keys():
    """{(section, key): entry text} from the KEYS section of wsguard.ini.5:
    entries are '.TP' then '.B key' under '.SS "[section]"'."""
    lines = MAN5.read_text().splitlines()
    keys, section, cur = {}, None, None
    for i, line in enumerate(lines):
        if line.startswith(".SH"):
            section = None
            cur = None
        m = re.match(r'\.SS "\[(\w+)\]"$', line)
        if m:
            section, cur = m.group(1), None
            continue
        if section and line == ".TP" and i + 1 < len(lines):
            m = re.match(r"\.B (\w+)$", lines[i + 1])
            assert m, f"wsguard.ini.5:{i + 2}: a key entry must be '.B key'"
            cur = (section, m.group(1))
            assert cur not in keys, f"{cur} documented twice"
            keys[cur] = ""
            continue
        if cur and not line.startswith(".B " + cur[1]):
            keys[cur] += line + "\n"
    return keys


def test_man_key_reference_matches_option_table():
    rows = table_rows()
    keys = man_keys()
    table = {(s, k) for s, k, _, _ in rows}
    assert sorted(table - set(keys)) == [], \
        "keys of src/config_table.h missing from man/wsguard.ini.5"
    assert sorted(set(keys) - table) == [], \
        "keys in man/wsguard.ini.5 that src/config_table.h does not have"
    for section, key, default, unsupported in rows:
        entry = keys[(section, key)]
        m = re.search(r"^Default: (?:\\fB(.*?)\\fR|(empty))\.$", entry, re.M)
        assert m, f"[{section}] {key}: no 'Default:' line"
        shown = None if m.group(2) else roff_text(m.group(1))
        assert shown == default, \
            f"[{section}] {key}: man page default {shown!r}, table {default!r}"
        says = "not supported yet" in entry
        assert says == unsupported, \
            f"[{section}] {key}: 'not supported yet' does not match the table"


def test_man_options_match_usage():
    r = subprocess.run([wsguard_bin(), "-h"], capture_output=True, text=True)
    assert r.returncode == 0
    usage = r.stdout.splitlines()[0]
    opts = re.findall(r"\[(-[-\w]+)", usage)
    assert "-c" in opts and "-t" in opts, usage
    page = roff_text(MAN8.read_text())
    options = page[page.index(".SH OPTIONS"):page.index(".SH CONFIGURATION")]
    for o in opts:
        assert re.search(r"^\.B[IR]? " + re.escape(o) + r"\b", options,
                         re.M), f"wsguard.8 OPTIONS does not describe {o}"


# --------------------------------------------------------------------------
# systemd unit

def unit_directives(text):
    d = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            d.setdefault(k, []).append(v)
    return d


def test_unit_hardening_directives():
    d = unit_directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    for k, v in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                 "ProtectHome": "yes", "PrivateTmp": "yes",
                 "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
                 "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
                 "KillSignal": "SIGTERM", "User": "wsguard"}.items():
        assert one.get(k) == v, (k, one.get(k))
    assert set(one["RestrictAddressFamilies"].split()) == \
        {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in d["SystemCallFilter"]
    assert re.fullmatch(r"/bin/kill -HUP \$MAINPID", one["ExecReload"])
    # The stop timeout leaves room for the default drain_timeout.
    drain = next(r[2] for r in table_rows()
                 if r[:2] == ("server", "drain_timeout"))
    assert parse_duration(one["TimeoutStopSec"]) > parse_duration(drain) + 5


@pytest.fixture
def unit_tree(tmp_path):
    """wsguard installed with PREFIX=tmp: the unit then names a binary and
    man pages that exist, so `systemd-analyze verify` can check it all."""
    prefix = tmp_path / "usr"
    r = make("install", f"PREFIX={prefix}", f"BUILD={build_dir()}")
    assert r.returncode == 0, r.stdout + r.stderr
    return prefix


def test_unit_verify_is_clean(unit_tree):
    need("systemd-analyze")
    need("man")
    unit = unit_tree / "lib/systemd/system/wsguard.service"
    r = subprocess.run(["systemd-analyze", "verify", str(unit)],
                       capture_output=True, text=True,
                       env=dict(os.environ,
                                MANPATH=str(unit_tree / "share/man")))
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", \
        r.stdout + r.stderr


def test_unit_security_exposure_below_2(unit_tree):
    need("systemd-analyze")
    unit = unit_tree / "lib/systemd/system/wsguard.service"
    r = subprocess.run(["systemd-analyze", "security", "--offline=true",
                        "--no-pager", str(unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for wsguard\.service: "
                  r"(\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) < 2.0, r.stdout


def expand_syscall_set(name, seen=None):
    seen = set() if seen is None else seen
    out = set()
    r = subprocess.run(["systemd-analyze", "syscall-filter", name],
                       capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines()[1:]:
        w = line.strip().split(" ")[0]
        if not w or w.startswith("#"):
            continue
        if w.startswith("@"):
            if w not in seen:
                seen.add(w)
                out |= expand_syscall_set(w, seen)
        else:
            out.add(w)
    return out


def test_unit_syscall_filter_allows_what_wsguard_calls(tmp_path, certs,
                                                       backend):
    """wsguard under strace through start, a session with a PCRE2 Origin
    pattern and an HS256 token, a refusal, SIGHUP and SIGTERM: every system
    call it makes must pass the unit's SystemCallFilter (no systemd runs
    here to enforce it for real)."""
    need("systemd-analyze")
    need("strace")
    allowed, denied = set(), set()
    for v in unit_directives(UNIT.read_text())["SystemCallFilter"]:
        deny = v.startswith("~")
        for name in v.lstrip("~").split():
            s = expand_syscall_set(name) if name.startswith("@") else {name}
            (denied if deny else allowed).update(s)

    secret = "s" * 32
    ini = tmp_path / "w.ini"
    ini.write_text(f"""[server]
listen = 127.0.0.1:0
workers = 2
[tls]
cert = {certs.cert}
key = {certs.key}
[backend]
url = ws://localhost:{backend.port}
[origin]
allow_pattern = https://([a-z]+\\.)*example\\.com
[jwt]
enabled = yes
algorithms = HS256
secret = {secret}
[admin]
listen = 127.0.0.1:0
""")
    trace = tmp_path / "strace.out"
    env = clean_env()
    if env.get("ASAN_OPTIONS"):
        # LeakSanitizer cannot run under ptrace (strace): it would abort
        # the exit. The leak check is the rest of `make asan`'s business.
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace),
                             os.path.abspath(wsguard_bin()), "-c", str(ini)],
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wsg = None
    try:
        lines = line_queue(proc.stderr)
        line = wait_line(lines, "listening on", 20)
        # Signals go to wsguard itself, not to strace (which would detach).
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        wsg = int(children.read_text().split()[0])
        port = int(re.search(r"listening on \S+:(\d+)", line).group(1))
        aline = wait_line(lines, "admin listening on", 20)
        aport = int(re.search(r"admin listening on \S+:(\d+)", aline).group(1))
        ctx = ssl.create_default_context(cafile=certs.cert)
        token = hs256_token(secret.encode(), "syscalls")

        async def session():
            url = f"wss://localhost:{port}/?access_token={token}"
            async with websockets.connect(url, ssl=ctx,
                                          origin="https://a.example.com") as ws:
                await ws.send("x" * 1000)
                assert await ws.recv() == "x" * 1000
            with pytest.raises(websockets.exceptions.InvalidStatusCode):
                async with websockets.connect(url, ssl=ctx,
                                              origin="https://evil.com"):
                    pass
        asyncio.run(asyncio.wait_for(session(), 30))
        # The admin thread's calls too: a scrape and a revocation.
        for req in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /revoke HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 16\r\n\r\n{\"sub\":\"nobody\"}"):
            with socket.create_connection(("127.0.0.1", aport), 10) as s:
                s.sendall(req)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            assert got.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")), got[:200]
        os.kill(wsg, signal.SIGHUP)
        wait_line(lines, "configuration reloaded", 20)
        os.kill(wsg, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            if wsg is not None:
                os.kill(wsg, signal.SIGKILL)
            proc.kill()
            proc.wait()
    used = set(re.findall(r"^\d+\s+(\w+)\(", trace.read_text(), re.M))
    assert "epoll_wait" in used and "accept4" in used, sorted(used)
    assert sorted(used - allowed) == [], "not in the unit's allow list"
    assert sorted(used & denied) == [], "denied by the unit's filter"


# --------------------------------------------------------------------------
# Dockerfile, compose, Kubernetes (structure)

def dockerfile():
    text = (REPO / "docker/Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_structure():
    lines = dockerfile()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms == ["debian:bookworm-slim", "debian:bookworm-slim"], froms
    runtime = lines[[i for i, line in enumerate(lines)
                     if line.startswith("FROM ")][1]:]
    run = " ".join(line for line in runtime if line.startswith("RUN "))
    assert "-dev" not in run and "gcc" not in run and "make" not in run
    for lib in ("libssl3", "libev4", "libpcre2-8-0", "libinih1",
                "libjansson4", "libhiredis0.14"):
        assert lib in run
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), user
    assert "EXPOSE 8443 9090" in runtime
    assert "STOPSIGNAL SIGTERM" in runtime
    hc = [line for line in runtime if line.startswith("HEALTHCHECK")]
    assert hc and hc[0].endswith(
        'CMD ["/usr/bin/wsguard", "--healthcheck"]'), hc
    entry = [line for line in runtime if line.startswith("ENTRYPOINT")]
    assert entry == ['ENTRYPOINT ["/usr/bin/wsguard"]']


def test_image_configuration_is_valid_and_drains_in_time(tmp_path, certs):
    """docker/wsguard.ini (the image's /etc/wsguard/wsguard.ini) passes -t
    with a mounted certificate, and its drain fits docker stop's 10 s."""
    ini = (REPO / "docker/wsguard.ini").read_text()
    drain = re.search(r"^drain_timeout = (\S+)", ini, re.M).group(1)
    assert parse_duration(drain) <= 8
    assert not re.search(r"^\s*(secret|key_file)\s*=", ini, re.M)
    r = subprocess.run([os.path.abspath(wsguard_bin()), "-t", "-c",
                        str(REPO / "docker/wsguard.ini")],
                       env=clean_env({"WSGUARD_TLS_CERT": certs.cert,
                                      "WSGUARD_TLS_KEY": certs.key}),
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in
             (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!Makefile", "!src/", "!docker/"} <= set(lines)


def test_compose_file():
    c = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    app, wsg = c["services"]["app"], c["services"]["wsguard"]
    assert "ports" not in app, "the app must not be published"
    assert wsg["ports"] and "8443:8443" in wsg["ports"]
    admin = [p for p in wsg["ports"] if p.endswith(":9090")]
    assert admin == ["127.0.0.1:9090:9090"], "admin port on loopback only"
    env = wsg["environment"]
    assert env["WSGUARD_BACKEND_URL"] == "ws://app:8080"
    assert env["WSGUARD_ORIGIN_ALLOW"]
    assert env["WSGUARD_JWT_ENABLED"] == "yes"
    assert wsg["read_only"] is True and wsg["cap_drop"] == ["ALL"]
    assert not str(wsg["user"]).startswith("0")
    drain = re.search(r"^drain_timeout = (\S+)",
                      (REPO / "docker/wsguard.ini").read_text(), re.M)
    assert parse_duration(wsg["stop_grace_period"]) > \
        parse_duration(drain.group(1))
    for s in (app, wsg):
        assert s["build"]["context"] == ".."
        assert (REPO / s["build"]["dockerfile"]).exists()


def k8s_docs():
    docs = []
    for f in sorted((REPO / "docker/kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_kubernetes_manifests():
    docs = k8s_docs()
    kinds = {d["kind"]: d for d in docs if d["kind"] != "Secret"}
    dep, svc = kinds["Deployment"], kinds["Service"]
    pod = dep["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"app", "wsguard"}
    wsg, app = containers["wsguard"], containers["app"]
    env = {e["name"]: e.get("value") for e in wsg["env"]}

    # The Service exposes wsguard's wss port and nothing else.
    assert svc["spec"]["selector"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p for p in wsg["ports"]}
    assert [p["targetPort"] for p in svc["spec"]["ports"]] in \
        (["wss"], [ports["wss"]["containerPort"]])
    assert "ports" not in app
    assert env["WSGUARD_BACKEND_URL"].startswith("ws://127.0.0.1:")

    # Probes on the admin port.
    assert ports["admin"]["containerPort"] == 9090
    live, ready = wsg["livenessProbe"]["httpGet"], wsg["readinessProbe"]["httpGet"]
    assert (live["path"], live["port"]) in {("/healthz", "admin"),
                                           ("/healthz", 9090)}
    assert (ready["path"], ready["port"]) in {("/readyz", "admin"),
                                             ("/readyz", 9090)}

    # preStop + drain fit in the grace period; the app outlives the drain.
    def prestop_sleep(c):
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[0].endswith("sleep"), cmd
        return int(cmd[1])
    grace = pod["terminationGracePeriodSeconds"]
    drain = parse_duration(env["WSGUARD_SERVER_DRAIN_TIMEOUT"])
    assert prestop_sleep(wsg) + drain < grace
    assert prestop_sleep(app) >= prestop_sleep(wsg) + drain
    assert prestop_sleep(app) < grace

    # Certificate and JWKS from Secrets, read-only.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in wsg["volumeMounts"]}
    tls = mounts["/etc/wsguard/tls"]
    assert tls["readOnly"] and "secret" in vols[tls["name"]]
    jwks_path = env["WSGUARD_JWT_JWKS_FILE"]
    jm = mounts[os.path.dirname(jwks_path)]
    assert jm["readOnly"] and "secret" in vols[jm["name"]]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets[vols[tls["name"]]["secret"]["secretName"]]["type"] == \
        "kubernetes.io/tls"
    assert os.path.basename(jwks_path) in \
        secrets[vols[jm["name"]]["secret"]["secretName"]]["stringData"]

    # Hardening: pod and every container.
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in (wsg, app):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert wsg["securityContext"]["runAsUser"] == 10001   # the image's UID

    kust = yaml.safe_load((REPO / "docker/kubernetes/kustomization.yaml")
                          .read_text())
    assert sorted(kust["resources"]) == ["deployment.yaml", "service.yaml"]


def test_changelog_keep_a_changelog():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text and "semver.org" in text
    heads = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert heads[0] == "Unreleased" and len(heads) >= 2, heads
    for h in re.findall(r"^### (.+)$", text, re.M):
        assert h in {"Added", "Changed", "Deprecated", "Removed", "Fixed",
                     "Security"}, h


# --------------------------------------------------------------------------
# the demo (make run)

def hs256_token(secret, sub, ttl=600):
    import base64
    import hashlib
    import hmac
    import json
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def line_queue(stream):
    """Lines of a text stream as they come, in a queue; None at EOF."""
    q = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def wait_line(q, needle, timeout, seen=None):
    """The first line containing needle (an event, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {needle!r} in {timeout} s: " \
            f"{''.join(seen or [])}"
        try:
            line = q.get(timeout=left)
        except queue.Empty:
            continue
        assert line is not None, f"EOF before {needle!r}: {''.join(seen or [])}"
        if seen is not None:
            seen.append(line)
        if needle in line:
            return line


def rest_of(q, proc, timeout):
    """Wait for the process to exit; return its status and remaining output."""
    rc = proc.wait(timeout=timeout)
    out = []
    while True:
        line = q.get(timeout=10)
        if line is None:
            return rc, "".join(out)
        out.append(line)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("0.0.0.0", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def port_open(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def dev_cert():
    r = subprocess.run(["scripts/dev-cert.sh", "conf/certs"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return str(REPO / "conf/certs/dev.crt")


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """scripts/run-demo.sh (or `make run`) in a session of its own, as a
    terminal would run it, with its output read line by line."""

    def __init__(self, cmd, env):
        # As from a terminal: SIGINT at its default. A suite started in the
        # background of a non-interactive shell inherits SIGINT ignored,
        # and bash cannot trap a signal ignored at its start.
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                                     start_new_session=True,
                                     preexec_fn=default_sigint,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = line_queue(self.proc.stdout)
        self.seen = []

    def wait(self, needle, timeout=60):
        return wait_line(self.lines, needle, timeout, self.seen)

    def output(self):
        """Everything printed so far (for a failure message)."""
        while True:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return "".join(self.seen)

    def commands(self):
        """The three commands printed after the ready line."""
        self.wait("== Ctrl-C stops")
        cmds, comment = {}, None
        for line in self.seen:
            s = line.strip()
            if s.startswith("#"):
                comment = s
            elif comment and s:
                cmds[comment] = s
                comment = None
        return cmds

    def finish(self, timeout=60):
        rc, rest = rest_of(self.lines, self.proc, timeout)
        return rc, "".join(self.seen) + rest

    def kill(self):
        """After a failure: SIGTERM lets the script stop wsguard and the
        backend (they run in sessions of their own); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def demo_env(demo_port, backend_port):
    return clean_env({"WSGUARD_BIN": os.path.abspath(wsguard_bin()),
                      "DEMO_PORT": str(demo_port),
                      "BACKEND_PORT": str(backend_port),
                      # a free port: 9090 may be taken by another run
                      "ADMIN_PORT": "0"})


def check_demo_commands(demo, demo_port, cafile, hold=False):
    """Run what the demo printed: the two refusals as they are (curl), the
    echo client's URL with websockets. With hold, return an open session."""
    cmds = demo.commands()
    echo = next(c for k, c in cmds.items() if "echo" in k)
    forbidden = next(c for k, c in cmds.items() if "403" in k)
    unauth = next(c for k, c in cmds.items() if "401" in k)
    assert f"wss://localhost:{demo_port}/?access_token=" in echo
    assert "-m websockets" in echo and "SSL_CERT_FILE=" in echo
    url = re.search(r"'(wss://[^']+)'", echo).group(1)

    if shutil.which("curl"):
        for cmd, want in ((forbidden, "403 Forbidden"),
                          (unauth, "401 Unauthorized")):
            r = subprocess.run(["bash", "-c", cmd], cwd=REPO,
                               capture_output=True, text=True, timeout=30)
            assert want in r.stdout, (cmd, r.stdout, r.stderr)
    ctx = ssl.create_default_context(cafile=cafile)

    async def refused(u, **kw):
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            async with websockets.connect(u, ssl=ctx, **kw):
                pass
        return e.value.status_code

    async def go():
        assert await refused(url, origin="https://evil.example") == 403
        assert await refused(url.split("?")[0]) == 401
        ws = await websockets.connect(url, ssl=ctx, ping_interval=None)
        await ws.send("hello demo")
        assert await asyncio.wait_for(ws.recv(), 10) == "hello demo"
        if hold:
            return ws
        await ws.close()
    return go


def test_demo_ctrl_c_stops_cleanly(dev_cert):
    """Ctrl-C: SIGINT to the whole foreground process group. The demo
    drains (a live client gets 1001), stops the backend and exits 0,
    without "signal ... again"."""
    demo_port, backend_port = free_ports(2)
    demo = Demo(["scripts/run-demo.sh"], demo_env(demo_port, backend_port))
    try:
        demo.wait(f"== ready: wss://localhost:{demo_port}/")
        go = check_demo_commands(demo, demo_port, dev_cert, hold=True)

        async def stop_while_connected():
            ws = await go()
            os.killpg(demo.proc.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(ws.wait_closed(), 30)
            except asyncio.TimeoutError:
                raise AssertionError("no close within 30 s of Ctrl-C; the "
                                     "demo said:\n" + demo.output())
            return ws.close_code
        assert asyncio.run(stop_while_connected()) == 1001
        rc, out = demo.finish()
    finally:
        demo.kill()
    assert rc == 0, out
    assert "again" not in out, out
    assert "== demo stopped" in out
    assert not port_open(demo_port) and not port_open(backend_port)


def test_demo_sigterm_to_the_script_stops_cleanly(dev_cert):
    demo_port, backend_port = free_ports(2)
    demo = Demo(["scripts/run-demo.sh"], demo_env(demo_port, backend_port))
    try:
        demo.wait(f"== ready: wss://localhost:{demo_port}/")
        demo.proc.send_signal(signal.SIGTERM)
        rc, out = demo.finish()
    finally:
        demo.kill()
    assert rc == 0, out
    assert "again" not in out and "== demo stopped" in out, out
    assert not port_open(demo_port) and not port_open(backend_port)


def test_make_run_takes_the_ports(dev_cert):
    """`make run DEMO_PORT=... BACKEND_PORT=...` reaches the script (deps,
    build and cert are taken as done: -o), and Ctrl-C ends it without an
    error from the script. GNU make itself then re-raises the SIGINT it
    got, silently, as it does for every interrupted recipe."""
    need("make")
    demo_port, backend_port = free_ports(2)
    env = demo_env(demo_port, backend_port)
    del env["DEMO_PORT"], env["BACKEND_PORT"]
    demo = Demo(["make", "--no-print-directory", "-o", "deps", "-o", "all",
                 "-o", "cert", "run", f"DEMO_PORT={demo_port}",
                 f"BACKEND_PORT={backend_port}"], env)
    try:
        demo.wait(f"== echo backend: ws://127.0.0.1:{backend_port} ")
        demo.wait(f"== ready: wss://localhost:{demo_port}/")
        asyncio.run(check_demo_commands(demo, demo_port, dev_cert)())
        os.killpg(demo.proc.pid, signal.SIGINT)
        rc, out = demo.finish()
    finally:
        demo.kill()
    assert rc in (0, -signal.SIGINT), out
    assert "Error" not in out and "again" not in out, out
    assert "== demo stopped" in out


def test_demo_refuses_a_busy_port(dev_cert):
    demo_port, backend_port = free_ports(2)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", backend_port))
        s.listen()
        r = subprocess.run(["scripts/run-demo.sh"], cwd=REPO,
                           env=demo_env(demo_port, backend_port),
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"port {backend_port} is busy" in r.stderr
    assert "BACKEND_PORT=" in r.stderr


# --------------------------------------------------------------------------
# docs/docker.md: the two ways it shows to mint a test token must work

def docker_md_mint_snippets():
    text = (REPO / "docs/docker.md").read_text()
    part = text[text.index("### Minting a test token"):]
    part = part[:part.index("Then:")]
    blocks, cur = [], []
    for line in part.splitlines():
        if line.startswith("    "):
            cur.append(line[4:])
        elif line.strip() == "" and cur:
            cur.append("")
        elif cur:
            blocks.append("\n".join(cur).strip() + "\n")
            cur = []
    if cur:
        blocks.append("\n".join(cur).strip() + "\n")
    assert len(blocks) == 2, blocks
    return blocks


@pytest.mark.parametrize("which", [0, 1], ids=["python", "openssl"])
def test_docker_md_token_minting_works(tmp_path, backend, wsguard_factory,
                                       which):
    from helpers import connect, run
    secret = tmp_path / "jwt.secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    snippet = docker_md_mint_snippets()[which].replace(
        "conf/certs/jwt.secret", str(secret)).replace("python3 -", "/usr/bin/python3 -")
    r = subprocess.run(["bash", "-c", snippet + 'printf "%s" "$TOKEN"'],
                       capture_output=True, text=True, timeout=30)
    token = r.stdout
    assert r.returncode == 0 and token.count(".") == 2, r.stdout + r.stderr
    wsg = wsguard_factory(backend.url, JWT_ENABLED="yes",
                          JWT_ALGORITHMS="HS256",
                          JWT_SECRET_FILE=str(secret))

    async def go():
        async with connect(wsg, f"/?access_token={token}") as ws:
            await ws.send("minted")
            assert await ws.recv() == "minted"
    run(go())
    opens = backend.opens()
    assert opens[-1]["headers"]["X-User-Id"] == "alice"
