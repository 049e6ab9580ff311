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
. "$ROOT/bench/lib.sh"
bench_tools || exit 1

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/wsab.XXXXXX")
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
make_cert || exit 1
start_echo

RATIOS=()
unit=$([ "$MODE" = hs ] && echo "handshakes" || echo "messages")
echo "ab: $MODE, $unit per proxy CPU-second, $ROUNDS x ${SECS} s per order"
for order in old-first new-first; do
    if [ $order = old-first ]; then
        start_wsguard "$OLD" "$PORT_A"; PA=$SPID; start_wsguard "$NEW" "$PORT_B"; PB=$SPID
        port_old=$PORT_A; port_new=$PORT_B
    else
        start_wsguard "$NEW" "$PORT_A"; PB=$SPID; start_wsguard "$OLD" "$PORT_B"; PA=$SPID
        port_old=$PORT_B; port_new=$PORT_A
    fi
    for r in $(seq "$ROUNDS"); do
        load "$port_old" "$PA" "$TMP/old" & l1=$!
        load "$port_new" "$PB" "$TMP/new" & l2=$!
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
printf '%s\n' "${RATIOS[@]}" | median_of "ab: median new/old"
