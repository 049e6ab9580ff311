#!/usr/bin/env bash
# bench/together.sh - wsguard, nginx and HAProxy measured at the same time.
#
#   bench/together.sh                   handshakes (the hs scenario's cycle)
#   MODE=msg64 bench/together.sh        64 B messages
#
# The three proxies run side by side on PROXY_CPU (one worker each, the
# configurations of bench/run.sh), each driven by its own wsbench on
# LG_CPU against one echo backend, for ROUNDS (5) rounds of SECS (8)
# seconds. Each wsbench reports its proxy's handshakes (or messages) per
# second of that proxy's own CPU time. All three share the core, its
# caches and the host's drift during the same seconds, so their ratios
# hold where separate runs swing by 20 % (docs/performance.md, "Measuring
# a small change"). Only the per-CPU figures compare: how much of the core
# each proxy gets depends on the scheduler. Prints every round and the
# median of wsguard / the better peer of that round.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSGUARD=${WSGUARD_BIN:-$ROOT/build/wsguard}
MODE=${MODE:-hs}; SECS=${SECS:-8}; ROUNDS=${ROUNDS:-5}
PROXY_CPU=${PROXY_CPU:-0}; LG_CPU=${LG_CPU:-1}
ECHO_PORT=${ECHO_PORT:-9001}; GUARD_PORT=${GUARD_PORT:-9443}
NGINX_PORT=${NGINX_PORT:-9444}; HAPROXY_PORT=${HAPROXY_PORT:-9445}
. "$ROOT/bench/lib.sh"
bench_tools || exit 1
[ -x "$WSGUARD" ] || { echo "together: no $WSGUARD (make)" >&2; exit 1; }

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/wstogether.XXXXXX")
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
make_cert || exit 1
for t in nginx haproxy; do
    sed -e "s|@TMP@|$TMP|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        "$ROOT/bench/conf/$t.conf.tmpl" > "$TMP/$t.conf"
done

start_echo
start_wsguard "$WSGUARD" "$GUARD_PORT"; GP=$SPID
taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/logs/error.log" \
    -c "$TMP/nginx.conf" 2>>"$TMP/nginx.err" &
NM=$!; PIDS+=("$NM")
taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.conf" 2>>"$TMP/haproxy.err" >&2 &
HP=$!; PIDS+=("$HP")
wait_port "$GUARD_PORT"; wait_port "$NGINX_PORT"; wait_port "$HAPROXY_PORT"
NP=
for i in $(seq 50); do NP=$(pgrep -P "$NM" | head -1); [ -n "$NP" ] && break; sleep 0.1; done
[ -n "$NP" ] || { echo "together: no nginx worker" >&2; exit 1; }

RATIOS=()
echo "together: $MODE, per proxy CPU-second, $ROUNDS x ${SECS} s"
for r in $(seq "$ROUNDS"); do
    load "$GUARD_PORT" "$GP" "$TMP/g" & a=$!
    load "$NGINX_PORT" "$NP" "$TMP/n" & b=$!
    load "$HAPROXY_PORT" "$HP" "$TMP/h" & c=$!
    wait "$a" "$b" "$c"
    if grep -q ERR "$TMP/g" "$TMP/n" "$TMP/h"; then
        echo "together: errors in round $r" >&2; cat "$TMP"/*.raw >&2; exit 1
    fi
    g=$(head -1 "$TMP/g"); n=$(head -1 "$TMP/n"); h=$(head -1 "$TMP/h")
    ratio=$(awk -v g="$g" -v n="$n" -v h="$h" 'BEGIN {printf "%.4f", g / (n > h ? n : h)}')
    RATIOS+=("$ratio")
    echo "round $r: wsguard $g, nginx $n, haproxy $h, wsguard/best $ratio"
done
printf '%s\n' "${RATIOS[@]}" | median_of "together: median wsguard/best peer"
