#!/usr/bin/env bash
# run-demo.sh - the demo behind `make run`: the echo backend
# (tests/integration/echo_backend.py, ws://127.0.0.1:BACKEND_PORT) and wsguard
# in front of it (wss://0.0.0.0:DEMO_PORT, conf/wsguard.ini plus the demo's
# overrides below), until Ctrl-C or SIGTERM, which stop both and exit 0.
#
#   make run [DEMO_PORT=8443] [BACKEND_PORT=8080] [ADMIN_PORT=9090]
#
# The admin listener (status page, metrics) is on 127.0.0.1:ADMIN_PORT;
# ADMIN_PORT=0 picks a free port, ADMIN_PORT=off turns it off.
#
# The demo turns on the two checks wsguard is for, by environment overrides
# (the file is not changed):
#   - Origin allowlist: only pages from DEMO_ORIGIN (https://app.example.com)
#     may open sockets; a foreign Origin gets 403. Requests without Origin
#     (command-line clients) are let through (allow_missing = yes).
#   - JWT: a valid HS256 token is required, else 401. The secret is random,
#     made for this run only, and kept in a private temporary file.
# Once wsguard listens, the script prints "== ready: ..." and three commands
# to paste into another terminal: the echo client with a minted token, one
# refused for a foreign Origin (403) and one refused for a missing token (401).
#
# Signals: wsguard and the backend run in sessions of their own (setsid), so
# the terminal's Ctrl-C reaches only this script, which sends wsguard exactly
# one SIGTERM (it drains for DEMO_DRAIN_TIMEOUT, then exits 0) and then stops
# the backend. A second Ctrl-C during the drain is passed on as well, and
# wsguard then exits at once (status 1), as it does for any second signal.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-/usr/bin/python3}
BIN=${WSGUARD_BIN:-build/wsguard}
CONF=${WSGUARD_CONF:-conf/wsguard.ini}
CERT=conf/certs/dev.crt
BACKEND_PORT=${BACKEND_PORT:-8080}
DEMO_PORT=${DEMO_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-9090}
DEMO_ORIGIN=${DEMO_ORIGIN:-https://app.example.com}
DEMO_DRAIN_TIMEOUT=${DEMO_DRAIN_TIMEOUT:-2s}

die() { echo "run-demo: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN not found: run 'make' first"
[ -f "$CONF" ] || die "$CONF not found"
[ -f "$CERT" ] || die "$CERT not found: run 'make cert'"
for p in "$BACKEND_PORT" "$DEMO_PORT"; do
    case "$p" in
    ''|*[!0-9]*) die "bad port '$p' (DEMO_PORT and BACKEND_PORT are numbers)" ;;
    esac
done
case "$ADMIN_PORT" in
off) ;;
''|*[!0-9]*) die "bad port '$ADMIN_PORT' (ADMIN_PORT is a number or off)" ;;
esac
[ "$BACKEND_PORT" != "$DEMO_PORT" ] || die "DEMO_PORT and BACKEND_PORT must differ"

# Is a TCP port free to listen on (on any address)?
port_free() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
port_free "$BACKEND_PORT" || die "port $BACKEND_PORT is busy (another demo or app running?); stop it or use BACKEND_PORT=..."
port_free "$DEMO_PORT" || die "port $DEMO_PORT is busy (another wsguard or demo running?); stop it or use DEMO_PORT=..."

tmp=$(mktemp -d)
backend_pid=
wsguard_pid=
stopping=0
cleanup() {
    trap - INT TERM HUP
    if [ -n "$wsguard_pid" ] && kill -0 "$wsguard_pid" 2>/dev/null; then
        kill -TERM "$wsguard_pid" 2>/dev/null || true
        wait "$wsguard_pid" 2>/dev/null || true
    fi
    if [ -n "$backend_pid" ] && kill -0 "$backend_pid" 2>/dev/null; then
        kill -TERM "$backend_pid" 2>/dev/null || true
        wait "$backend_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
# Until wsguard runs, a signal just ends the demo (cleanup stops the backend).
trap 'exit 0' INT TERM HUP

# Wait (at most 10 s) until FILE holds "listening on" or process PID is gone.
wait_listening() {
    local i
    for i in $(seq 100); do
        grep -qs "listening on" "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    grep -qs "listening on" "$1"
}

setsid "$PYTHON" tests/integration/echo_backend.py --host 127.0.0.1 \
    --port "$BACKEND_PORT" >"$tmp/backend.out" 2>&1 </dev/null &
backend_pid=$!
if ! wait_listening "$tmp/backend.out" "$backend_pid"; then
    cat "$tmp/backend.out" >&2
    die "the echo backend did not start"
fi

# A random HS256 secret for this run, and a token signed with it (1 hour).
umask 077
openssl rand -hex 32 >"$tmp/jwt.secret"
TOKEN=$("$PYTHON" - "$tmp/jwt.secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
secret = open(sys.argv[1], "rb").read().rstrip(b"\n")
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b64(json.dumps({"sub": "demo-user", "exp": int(time.time()) + 3600}).encode())
sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
print(f"{h}.{p}.{b64(sig)}")
PY
)

export WSGUARD_SERVER_LISTEN="0.0.0.0:$DEMO_PORT"
export WSGUARD_SERVER_DRAIN_TIMEOUT="$DEMO_DRAIN_TIMEOUT"
export WSGUARD_BACKEND_URL="ws://127.0.0.1:$BACKEND_PORT"
export WSGUARD_ORIGIN_ALLOW="$DEMO_ORIGIN"
export WSGUARD_ORIGIN_ALLOW_MISSING=yes
export WSGUARD_JWT_ENABLED=yes
export WSGUARD_JWT_ALGORITHMS=HS256
export WSGUARD_JWT_SECRET_FILE="$tmp/jwt.secret"
if [ "$ADMIN_PORT" = off ]; then
    export WSGUARD_ADMIN_LISTEN=
else
    export WSGUARD_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
fi

# wsguard's error log goes to the terminal and to a file the script reads to
# know when it listens; its access log (stdout) goes to the terminal.
# (tee ignores the terminal's signals so that it outlives wsguard's drain.)
setsid "$BIN" -c "$CONF" \
    2> >(trap '' INT TERM HUP; exec tee "$tmp/wsguard.err" >&2) </dev/null &
wsguard_pid=$!

# From now on one stop signal becomes one SIGTERM for wsguard.
on_signal() {
    stopping=$((stopping + 1))
    if [ "$stopping" -eq 1 ]; then
        echo "== stopping: wsguard drains (at most $DEMO_DRAIN_TIMEOUT), then the backend stops" >&2
    fi
    kill -TERM "$wsguard_pid" 2>/dev/null || true
}
trap on_signal INT TERM HUP

if ! wait_listening "$tmp/wsguard.err" "$wsguard_pid"; then
    wait "$wsguard_pid" 2>/dev/null || true
    die "wsguard did not start (see its messages above)"
fi

url="wss://localhost:$DEMO_PORT/"
admin_msg=
admin=$(grep -o 'admin listening on [0-9.]*:[0-9]*' "$tmp/wsguard.err" | head -n 1 |
        sed 's/admin listening on //')
if [ -n "$admin" ]; then
    admin_msg="
   # the live status page (open in a browser) and the metrics
   http://$admin/status
   curl -s http://$admin/metrics | grep wsguard_connections
"
fi
https="https://localhost:$DEMO_PORT/"
upgrade="--http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='"
cat <<MSG

== echo backend: ws://127.0.0.1:$BACKEND_PORT (tests/integration/echo_backend.py)
== wsguard: $url -> ws://127.0.0.1:$BACKEND_PORT ($CONF + demo overrides:
   Origin allowlist $DEMO_ORIGIN, JWT HS256 with a secret made for this run)
== ready: $url
== paste into another terminal:

   # echo through wsguard with a valid token (type a line, see it echoed; Ctrl-D ends)
   SSL_CERT_FILE=$CERT $PYTHON -m websockets '$url?access_token=$TOKEN'

   # refused: a page from a foreign Origin (cross-site WebSocket hijacking): 403 Forbidden
   curl -s --cacert $CERT $upgrade -H 'Origin: https://evil.example' '$https?access_token=$TOKEN'

   # refused: no token: 401 Unauthorized
   curl -s --cacert $CERT $upgrade '$https'
$admin_msg
== Ctrl-C stops wsguard and the backend.

MSG

# Wait for wsguard; `wait` returns early (status > 128) when a trapped
# signal arrives, so wait again until the process is really gone, then
# take its exit status (bash keeps it), which is the demo's.
while kill -0 "$wsguard_pid" 2>/dev/null; do
    wait "$wsguard_pid" || true
done
wait "$wsguard_pid" && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && [ "$stopping" -eq 0 ]; then
    echo "run-demo: wsguard exited on its own" >&2
fi
[ "$stopping" -gt 0 ] && [ "$rc" -eq 0 ] && echo "== demo stopped" >&2
exit "$rc"
