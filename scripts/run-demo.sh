#!/usr/bin/env bash
# run-demo.sh - start the demo echo backend (ws://127.0.0.1:8080) in the
# background and wsguard (wss://0.0.0.0:8443, conf/wsguard.ini) in the
# foreground; Ctrl-C stops both. Called by `make run` after the build and
# the development certificate.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-/usr/bin/python3}
BIN=${WSGUARD_BIN:-build/wsguard}
CONF=${WSGUARD_CONF:-conf/wsguard.ini}
BACKEND_PORT=8080
PROXY_PORT=8443

die() { echo "run-demo: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN not found: run 'make' first"
[ -f "$CONF" ] || die "$CONF not found"
[ -f conf/certs/dev.crt ] || die "conf/certs/dev.crt not found: run 'make cert'"

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
for p in $BACKEND_PORT $PROXY_PORT; do
    port_free "$p" || die "port $p is busy (another wsguard or demo running?); stop it first"
done

logdir=$(mktemp -d)
backend_pid=
cleanup() {
    if [ -n "$backend_pid" ] && kill -0 "$backend_pid" 2>/dev/null; then
        kill "$backend_pid" 2>/dev/null || true
        wait "$backend_pid" 2>/dev/null || true
    fi
    rm -rf "$logdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PYTHON" tests/integration/echo_backend.py --host 127.0.0.1 \
    --port $BACKEND_PORT >"$logdir/backend.out" 2>&1 &
backend_pid=$!

# Wait (at most 10 s) for the backend to say it listens.
for _ in $(seq 100); do
    grep -q "listening on" "$logdir/backend.out" && break
    kill -0 "$backend_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "listening on" "$logdir/backend.out"; then
    cat "$logdir/backend.out" >&2
    die "the echo backend did not start"
fi

cat <<MSG
== echo backend: ws://127.0.0.1:$BACKEND_PORT (tests/integration/echo_backend.py)
== wsguard: wss://localhost:$PROXY_PORT -> ws://127.0.0.1:$BACKEND_PORT ($CONF)
== connect from another terminal (type a line, see it echoed; Ctrl-D ends):

   SSL_CERT_FILE=conf/certs/dev.crt $PYTHON -m websockets wss://localhost:$PROXY_PORT/

== Ctrl-C stops wsguard and the backend.
MSG

# wsguard runs as a child we forward Ctrl-C / SIGTERM to (as SIGTERM: it
# drains and exits 0); its exit status is the script's.
"$BIN" -c "$CONF" &
wsguard_pid=$!
trap 'kill -TERM "$wsguard_pid" 2>/dev/null || true' INT TERM
rc=0
while :; do
    wait "$wsguard_pid" && rc=0 || rc=$?
    kill -0 "$wsguard_pid" 2>/dev/null || break
done
exit $rc
