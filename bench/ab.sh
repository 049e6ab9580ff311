#!/usr/bin/env bash
# bench/ab.sh - two wsguard binaries measured at the same time, for a
# change whose effect is smaller than this machine's drift between runs.
#
#   bench/ab.sh OLD NEW                 handshakes (the hs scenario's cycle)
#   MODE=msg64 bench/ab.sh OLD NEW      64 B messages
#
# Both binaries run side by side on PROXY_CPU (one worker each, the
# settings of bench/run.sh: TLS 1.3, Origin check and HS256 JWT on), each
# driven by its own wsbench on LG_CPU against the same echo backend, for
# ROUNDS rounds of SECS seconds; then the binaries swap ports and it
# starts again. Each wsbench reports its proxy's work per second of that
# proxy's own CPU time. The two share the core, its caches and whatever
# the host does meanwhile, so their ratio holds where the absolute figures
# of separate runs swing by 20 %. It prints every round and the median of
# NEW / OLD. See docs/performance.md ("Measuring a small change").
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
MODE=${MODE:-hs}; SECS=${SECS:-8}; ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}; LG_CPU=${LG_CPU:-1}
ECHO_PORT=${ECHO_PORT:-9001}; PORT_A=${PORT_A:-9443}; PORT_B=${PORT_B:-9446}
SECRET=wsbench-hs256-secret-0123456789abcdef
ORIGIN=https://bench.example
WSBENCH=$ROOT/bench/build/wsbench; WSECHO=$ROOT/bench/build/wsecho
[ -x "$WSBENCH" ] && [ -x "$WSECHO" ] || make -s -C "$ROOT/bench" >/dev/null || exit 1

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/wsab.XXXXXX")
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || exit 1

wait_port() {
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ab: port $1 did not open" >&2; exit 1
}

start() {   # start BINARY PORT: sets SPID
    env WSGUARD_ORIGIN_ALLOW=$ORIGIN WSGUARD_ORIGIN_ALLOW_MISSING=no \
        WSGUARD_JWT_ENABLED=yes WSGUARD_JWT_ALGORITHMS=HS256 WSGUARD_JWT_SECRET=$SECRET \
        WSGUARD_LIMITS_MAX_PAYLOAD=1m WSGUARD_SERVER_MAX_CONNECTIONS=100000 \
        WSGUARD_SERVER_IDLE_TIMEOUT=5m WSGUARD_ADMIN_LISTEN= \
        WSGUARD_SERVER_LISTEN=127.0.0.1:$2 WSGUARD_SERVER_WORKERS=1 \
        WSGUARD_BACKEND_URL=ws://127.0.0.1:$ECHO_PORT \
        WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
        WSGUARD_TLS_MIN_VERSION=TLSv1.3 WSGUARD_SERVER_DRAIN_TIMEOUT=0 \
        WSGUARD_LOG_LEVEL=error WSGUARD_LOG_ACCESS_LOG=off \
        taskset -c "$PROXY_CPU" "$1" -c "$ROOT/conf/wsguard.ini" 2>>"$TMP/wsguard.err" &
    SPID=$!; PIDS+=("$SPID")
    wait_port "$2"
}

load() {    # load PORT PID: one wsbench run, prints its figure per proxy CPU-s
    local args key
    if [ "$MODE" = hs ]; then
        args=(-m handshake -c 32 --resume); key=hs_per_cpu_s
    else
        args=(-m throughput -c 50 -d 16 -s 64); key=msg_per_cpu_s
    fi
    taskset -c "$LG_CPU" "$WSBENCH" "${args[@]}" -T "$SECS" -w 1 \
        -t 127.0.0.1:"$1" --tls --pid "$2" --origin "$ORIGIN" --token-in query \
        --jwt-secret "$SECRET" | tr ' ' '\n' | sed -n "s/^$key=//p; s/^errors=\([1-9]\)/ERR\1/p"
}

taskset -c "$LG_CPU" "$WSECHO" -q -l 127.0.0.1:$ECHO_PORT &
PIDS+=("$!")
wait_port "$ECHO_PORT"
RATIOS=()
unit=$([ "$MODE" = hs ] && echo "handshakes" || echo "messages")
echo "ab: $MODE, $unit per proxy CPU-second, $ROUNDS x ${SECS} s per order"
for order in old-first new-first; do
    if [ $order = old-first ]; then start "$OLD" "$PORT_A"; PA=$SPID; start "$NEW" "$PORT_B"; PB=$SPID
    else start "$NEW" "$PORT_A"; PB=$SPID; start "$OLD" "$PORT_B"; PA=$SPID; fi
    port_old=$([ $order = old-first ] && echo "$PORT_A" || echo "$PORT_B")
    port_new=$([ $order = old-first ] && echo "$PORT_B" || echo "$PORT_A")
    for r in $(seq "$ROUNDS"); do
        load "$port_old" "$PA" > "$TMP/old" & l1=$!
        load "$port_new" "$PB" > "$TMP/new" & l2=$!
        wait "$l1" "$l2"
        o=$(head -1 "$TMP/old"); n=$(head -1 "$TMP/new")
        if grep -q ERR "$TMP/old" "$TMP/new" || [ -z "$o" ] || [ -z "$n" ]; then
            echo "ab: errors in round $r ($order): old '$o' new '$n'" >&2; exit 1
        fi
        ratio=$(awk -v o="$o" -v n="$n" 'BEGIN {printf "%.4f", n / o}')
        RATIOS+=("$ratio")
        echo "$order round $r: old $o, new $n, new/old $ratio"
    done
    kill "$PA" "$PB"; wait "$PA" "$PB" 2>/dev/null
done
printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{v[NR]=$1} END {
    m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
    printf "ab: median new/old %.3f (min %.3f, max %.3f, %d rounds)\n", m, v[1], v[NR], NR }'
