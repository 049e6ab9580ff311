#!/usr/bin/env bash
# container-test.sh - build the wsguard container image with podman and
# test it for real, as a sidecar beside an echo app (`make container-test`).
#
# Needs root on Debian 12 (it installs podman, runc and mmdebstrap when
# they are missing). No image registry is needed: the debian:bookworm-slim
# base is made locally from Debian's packages with mmdebstrap, imported once
# and then reused from podman's image store (WSGUARD_CT_REBASE=1 remakes it).
#
# Steps, each counted as passed or failed:
#   1. build docker/Dockerfile (and docker/echo-app/Dockerfile);
#   2. the runtime image holds no compiler and no -dev package, a
#      missing certificate is a clear error, not a silent crash loop, and
#      a configuration file mounted at /etc/wsguard/wsguard.ini is used;
#   3. start the echo app container and the wsguard container beside it
#      (host network), wsguard configured by environment variables alone
#      plus a mounted certificate and JWT secret file;
#   4. a real wss client (python3-websockets on the host) gets its echo;
#      a foreign Origin gets 403, a missing token 401;
#   5. wsguard runs as UID 10001, not root, on a read-only root filesystem;
#   6. the image's HEALTHCHECK (skipped until wsguard has --healthcheck);
#   7. `podman stop` (SIGTERM): the client gets close 1001 and the container
#      exits 0 within the stop timeout (10 s);
#   8. the image size is below 100 MB.
# The last line is "N passed, N failed"; the exit status is 0 only when
# nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-/usr/bin/python3}
IMAGE=${WSGUARD_IMAGE:-localhost/wsguard:latest}
ECHO_IMAGE=${WSGUARD_ECHO_IMAGE:-localhost/wsguard-echo-app:latest}
BASE=docker.io/library/debian:bookworm-slim
STOP_TIMEOUT=10                 # docker's and podman's default
SIZE_LIMIT_MB=100
ORIGIN=https://app.example.com

# What this machine needs for podman (see docs/docker.md): runc instead of
# crun (hybrid cgroups), cgroupfs, ulimits within the hard limits, and the
# host network (no CNI bridge is set up here).
PODMAN=(podman --runtime /usr/sbin/runc --cgroup-manager=cgroupfs
        --events-backend=file)
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

passed=0
failed=0
t_start=$(date +%s)

say() { echo "== $*"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }
finish() {
    echo "== container test took $(( $(date +%s) - t_start )) s"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
abort() { bad "$*"; finish; }

# --- 0. packages -------------------------------------------------------------
need="podman runc mmdebstrap python3 python3-websockets openssl"
missing=
for p in $need; do
    case "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" in
    *" installed") ;;
    *) missing="$missing $p" ;;
    esac
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "container-test: missing packages:$missing (run as root)" >&2
        exit 1
    fi
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && \
        apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        abort "apt-get install$missing"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "container-test: run as root (podman with runc and cgroupfs)" >&2
    exit 1
fi

tmp=$(mktemp -d /tmp/wsguard-ct.XXXXXX)
suffix=$$
W=wsguard-ct-$suffix
E=wsguard-ct-echo-$suffix
client_pid=
cleanup() {
    [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null
    "${PODMAN[@]}" rm -f -t 0 "$W" "$E" >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. images ---------------------------------------------------------------
if [ "${WSGUARD_CT_REBASE:-0}" = 1 ] || ! "${PODMAN[@]}" image exists "$BASE"; then
    say "making $BASE from Debian's packages (mmdebstrap, once)"
    t=$(date +%s)
    # Like Docker's official slim image: no manuals, docs or locales.
    mmdebstrap --quiet --variant=apt \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        bookworm "$tmp/base.tar" || abort "mmdebstrap"
    "${PODMAN[@]}" import --quiet "$tmp/base.tar" "$BASE" >/dev/null ||
        abort "podman import"
    rm -f "$tmp/base.tar"
    say "base image made in $(( $(date +%s) - t )) s"
fi

build() {   # build DOCKERFILE TAG
    "${PODMAN[@]}" build --quiet --format docker --pull=never --network host \
        "${ULIMITS[@]}" -f "$1" -t "$2" . >"$tmp/build.log" 2>&1
}
say "building $IMAGE (docker/Dockerfile)"
t=$(date +%s)
if build docker/Dockerfile "$IMAGE"; then
    ok "image $IMAGE built in $(( $(date +%s) - t )) s"
else
    tail -n 30 "$tmp/build.log"
    abort "podman build -f docker/Dockerfile"
fi
say "building $ECHO_IMAGE (docker/echo-app/Dockerfile)"
build docker/echo-app/Dockerfile "$ECHO_IMAGE" ||
    { tail -n 30 "$tmp/build.log"; abort "podman build -f docker/echo-app/Dockerfile"; }

run() {     # run ARGS...: a container the way this machine needs it
    "${PODMAN[@]}" run --network host "${ULIMITS[@]}" --log-driver k8s-file "$@"
}

# --- 2. what is in the image; a missing certificate --------------------------
pkgs=$(run --rm --read-only --no-healthcheck --entrypoint /usr/bin/dpkg-query "$IMAGE" \
    -W -f='${Package}\n' 2>&1)
dev=$(echo "$pkgs" | grep -E -- '-dev$|^gcc(-[0-9]+)?$|^cpp|^make$|^binutils|^libc-dev-bin$' |
    tr '\n' ' ')
if [ -z "$dev" ] && echo "$pkgs" | grep -qx libssl3; then
    ok "runtime image: Debian runtime libraries, no compiler or -dev package"
else
    bad "runtime image has build packages: ${dev:-(or no libssl3)}"
fi

out=$(run --rm --read-only --no-healthcheck "$IMAGE" 2>&1); rc=$?
if [ "$rc" -eq 1 ] && echo "$out" | grep -q 'cannot open "/etc/wsguard/tls/tls.crt"'; then
    ok "no certificate mounted: exit 1 with: $(echo "$out" | grep tls.crt)"
else
    bad "no certificate mounted: status $rc, output: $out"
fi

# --- 3. the sidecar: echo app + wsguard configured by environment -----------
mkdir -p "$tmp/tls" "$tmp/jwt"
scripts/dev-cert.sh "$tmp/tls" >/dev/null || abort "dev-cert.sh"
mv "$tmp/tls/dev.crt" "$tmp/tls/tls.crt"
mv "$tmp/tls/dev.key" "$tmp/tls/tls.key"
openssl rand -hex 32 >"$tmp/jwt/secret"
# Readable by the image's UID only (as a Kubernetes Secret with fsGroup).
chown -R 10001:10001 "$tmp/tls" "$tmp/jwt"
chmod 700 "$tmp/tls" "$tmp/jwt"
chmod 600 "$tmp/tls/tls.key" "$tmp/jwt/secret"

read -r BPORT WPORT APORT < <("$PYTHON" - <<'PY'
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
PY
)

wait_log() {    # wait_log CONTAINER PATTERN: until the line appears (30 s)
    local i
    for i in $(seq 150); do
        "${PODMAN[@]}" logs "$1" 2>&1 | grep -q -- "$2" && return 0
        [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] ||
            return 1
        sleep 0.2
    done
    return 1
}

# A configuration file mounted over the built-in one is what wsguard reads.
mkdir -p "$tmp/conf"
cat >"$tmp/conf/wsguard.ini" <<EOF
[server]
listen = 127.0.0.1:$WPORT
drain_timeout = 5s
[tls]
cert = /etc/wsguard/tls/tls.crt
key = /etc/wsguard/tls/tls.key
[backend]
url = ws://127.0.0.1:$BPORT
EOF
chmod 755 "$tmp/conf"; chmod 644 "$tmp/conf/wsguard.ini"
out=$(run --rm --read-only --no-healthcheck -v "$tmp/tls:/etc/wsguard/tls:ro" \
    -v "$tmp/conf/wsguard.ini:/etc/wsguard/wsguard.ini:ro" "$IMAGE" -t 2>&1); rc=$?
if [ "$rc" -eq 0 ] && echo "$out" | grep -q "^/etc/wsguard/wsguard.ini: configuration OK"; then
    ok "a configuration file mounted at /etc/wsguard/wsguard.ini is used (wsguard -t)"
else
    bad "mounted configuration file: status $rc, output: $out"
fi

say "starting the echo app ($E) on ws://127.0.0.1:$BPORT"
run -d --name "$E" --read-only "$ECHO_IMAGE" --host 127.0.0.1 --port "$BPORT" \
    >/dev/null || abort "podman run $ECHO_IMAGE"
wait_log "$E" "listening on" ||
    { "${PODMAN[@]}" logs "$E"; abort "the echo app did not start"; }

say "starting wsguard ($W) on wss://127.0.0.1:$WPORT, configured by environment"
run -d --name "$W" --read-only \
    -v "$tmp/tls:/etc/wsguard/tls:ro" \
    -v "$tmp/jwt:/etc/wsguard/jwt:ro" \
    -e WSGUARD_SERVER_LISTEN="127.0.0.1:$WPORT" \
    -e WSGUARD_BACKEND_URL="ws://127.0.0.1:$BPORT" \
    -e WSGUARD_ORIGIN_ALLOW="$ORIGIN" \
    -e WSGUARD_JWT_ENABLED=yes \
    -e WSGUARD_JWT_ALGORITHMS=HS256 \
    -e WSGUARD_JWT_SECRET_FILE=/etc/wsguard/jwt/secret \
    -e WSGUARD_ADMIN_LISTEN="127.0.0.1:$APORT" \
    "$IMAGE" >/dev/null 2>"$tmp/podman.err" ||
    { cat "$tmp/podman.err"; abort "podman run $IMAGE"; }
if wait_log "$W" "listening on"; then
    ok "wsguard container started, configured by environment variables only"
else
    "${PODMAN[@]}" logs "$W"
    abort "wsguard did not start"
fi

# --- 4. a real client: echo, 403, 401; then a session held for the stop ------
# The client mints an HS256 token with the same secret (standard library
# only), checks the three answers, then keeps one session open: it prints
# "holding" and, when that session ends, "closed CODE".
cp "$tmp/jwt/secret" "$tmp/client-secret"
"$PYTHON" - "$WPORT" "$tmp/tls/tls.crt" "$tmp/client-secret" "$ORIGIN" \
    >"$tmp/client.out" 2>&1 <<'PY' &
import asyncio, base64, hashlib, hmac, json, ssl, sys, time
import websockets

port, cafile, secret_file, origin = sys.argv[1:5]
secret = open(secret_file, "rb").read().rstrip(b"\n")
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def token(sub="container-test"):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 600}).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"

ctx = ssl.create_default_context(cafile=cafile)
url = f"wss://localhost:{port}/"

async def status_of(uri, origin):
    try:
        async with websockets.connect(uri, ssl=ctx, origin=origin):
            return 101
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code

async def main():
    good = f"{url}?access_token={token()}"
    async with websockets.connect(good, ssl=ctx, origin=origin) as ws:
        await ws.send("hello through the container")
        print("echo", await asyncio.wait_for(ws.recv(), 10), flush=True)
    print("foreign-origin", await status_of(good, "https://evil.example"), flush=True)
    print("no-token", await status_of(url, origin), flush=True)
    ws = await websockets.connect(good, ssl=ctx, origin=origin,
                                  ping_interval=None, close_timeout=20)
    await ws.send("still here")
    await ws.recv()
    print("holding", flush=True)
    try:
        await asyncio.wait_for(ws.wait_closed(), 60)
    except asyncio.TimeoutError:
        pass
    print("closed", ws.close_code, ws.close_reason, flush=True)

asyncio.run(main())
PY
client_pid=$!

wait_client() {     # wait_client WORD: the client printed it, or ended (60 s)
    local i
    for i in $(seq 300); do
        grep -q "^$1" "$tmp/client.out" && return 0
        kill -0 "$client_pid" 2>/dev/null || break
        sleep 0.2
    done
    grep -q "^$1" "$tmp/client.out"
}
if wait_client holding; then :; else
    cat "$tmp/client.out"
fi
grep -q "^echo hello through the container$" "$tmp/client.out" &&
    ok "wss client through the container: echo received" ||
    bad "no echo through the container: $(cat "$tmp/client.out")"
grep -q "^foreign-origin 403$" "$tmp/client.out" &&
    ok "foreign Origin refused with 403 (CSWSH)" ||
    bad "foreign Origin: $(grep foreign-origin "$tmp/client.out")"
grep -q "^no-token 401$" "$tmp/client.out" &&
    ok "no token refused with 401" ||
    bad "no token: $(grep no-token "$tmp/client.out")"

# --- 5. non-root, read-only root filesystem ----------------------------------
pid=$("${PODMAN[@]}" inspect -f '{{.State.Pid}}' "$W")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null)
[ "$uids" = "10001 10001 10001 10001" ] &&
    ok "wsguard runs as UID 10001 (real, effective, saved, fs), not root" ||
    bad "wsguard's UIDs: '$uids'"
rootopts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")
ro=$("${PODMAN[@]}" inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$W")
werr=$("${PODMAN[@]}" exec --user 0 "$W" /usr/bin/touch /usr/wsguard-probe 2>&1)
if [ "$ro" = true ] && [[ ",$rootopts," == *",ro,"* ]] &&
   [[ "$werr" == *"Read-only file system"* ]]; then
    ok "root filesystem is read-only (mount options $rootopts; even root cannot write)"
else
    bad "read-only root: ReadonlyRootfs=$ro, mount options '$rootopts', write: '$werr'"
fi

# --- 6. HEALTHCHECK ----------------------------------------------------------
hc=$("${PODMAN[@]}" image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE" 2>&1)
if [ "$hc" = '["CMD","/usr/bin/wsguard","--healthcheck"]' ]; then
    ok "image HEALTHCHECK is $hc (exec form, no curl/wget)"
else
    bad "image HEALTHCHECK is '$hc'"
fi
if run --rm --read-only --no-healthcheck "$IMAGE" -h 2>&1 | grep -q -- --healthcheck; then
    "${PODMAN[@]}" healthcheck run "$W" >"$tmp/hc.out" 2>&1; rc=$?
    [ "$rc" -eq 0 ] && ok "HEALTHCHECK exits 0 (healthy)" ||
        bad "HEALTHCHECK exited $rc: $(cat "$tmp/hc.out")"
else
    echo "SKIP healthcheck: wsguard has no --healthcheck yet"
fi

# --- 7. podman stop: drain, close 1001, exit 0 in time -----------------------
if grep -q "^holding" "$tmp/client.out"; then
    say "podman stop -t $STOP_TIMEOUT (SIGTERM; the image drains for 8 s)"
    t0=$(date +%s%N)
    "${PODMAN[@]}" stop -t "$STOP_TIMEOUT" "$W" >/dev/null 2>>"$tmp/podman.err"
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$W")
    wait "$client_pid"; client_pid=
    if [ "$code" = 0 ] && [ "$ms" -lt $((STOP_TIMEOUT * 1000)) ]; then
        ok "container exited 0 after SIGTERM in $ms ms (stop timeout ${STOP_TIMEOUT} s)"
    else
        bad "container exit status $code after $ms ms (stop timeout ${STOP_TIMEOUT} s)"
        "${PODMAN[@]}" logs "$W" 2>&1 | tail -n 5
    fi
    grep -q "^closed 1001" "$tmp/client.out" &&
        ok "the live client got close 1001 ($(grep ^closed "$tmp/client.out"))" ||
        bad "the live client's end: $(grep ^closed "$tmp/client.out" || cat "$tmp/client.out")"
else
    bad "no session held open, stop not tested"
fi
"${PODMAN[@]}" stop -t 5 "$E" >/dev/null 2>&1

# --- 8. image size -----------------------------------------------------------
bytes=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")
mb=$(( (bytes + 500000) / 1000000 ))
base_mb=$(( ($("${PODMAN[@]}" image inspect -f '{{.Size}}' "$BASE") + 500000) / 1000000 ))
if [ "$mb" -lt "$SIZE_LIMIT_MB" ]; then
    ok "image size $mb MB (base $base_mb MB; limit $SIZE_LIMIT_MB MB)"
else
    bad "image size $mb MB (base $base_mb MB) is not below $SIZE_LIMIT_MB MB"
fi

finish
