#!/usr/bin/env bash
# bench/run.sh - side-by-side benchmark of wsguard against nginx and HAProxy
# (and the echo backend directly, the limit). See docs/performance.md.
#
#   bench/run.sh                    full run: 3 repetitions of every scenario
#   REPS=1 QUICK=1 bench/run.sh     fast check (short runs, 2,000 idle sessions)
#   CALLGRIND=1 bench/run.sh        instructions per relayed 64 B message
#                                   (valgrind --tool=callgrind) and syscalls
#                                   per message (strace -c) for each proxy
#   CALLGRIND=hs bench/run.sh       instructions per handshake (the hs
#                                   scenario's cycle, full and resumed) for
#                                   each proxy, split by library
#
# Knobs (environment): REPS, QUICK, DURATION, WARMUP, TARGETS, SCENARIOS,
# PROXY_CPU, LG_CPU, IDLE_N, SCALE_N, SCALE_HOLD, CG_MESSAGES, CG_TARGETS,
# CG_HS_KINDS, CG_HS_CONC, CG_HS_T1, CG_HS_T2 (CALLGRIND=hs),
# KEEP_TMP=1, BENCH_TMP (parent of the scratch directory; /tmp), BENCH_RES
# (results directory; default bench/results).
# Results: bench/results/latest.tsv (medians, spreads, ratios),
# bench/results/latest.md (the table), bench/results/raw.log (every run),
# bench/results/throughput.png (gnuplot, bench/plot.gp).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
RES=${BENCH_RES:-$BENCH/results}
WSBENCH=$BENCH/build/wsbench
WSECHO=$BENCH/build/wsecho
WSGUARD=${WSGUARD_BIN:-$ROOT/build/wsguard}

REPS=${REPS:-3}
QUICK=${QUICK:-0}
CALLGRIND=${CALLGRIND:-0}
PROXY_CPU=${PROXY_CPU:-0}          # the proxy's core
LG_CPU=${LG_CPU:-1}                # load generator + backend
TARGETS=${TARGETS:-"direct wsguard nginx haproxy"}
SCENARIOS=${SCENARIOS:-"msg64 msg4k msg256k idle hs scale"}
if [ "$QUICK" = 1 ]; then
    DURATION=${DURATION:-3}; WARMUP=${WARMUP:-1}
    IDLE_N=${IDLE_N:-2000}; SCALE_N=${SCALE_N:-3000}; SCALE_HOLD=${SCALE_HOLD:-5}
    IDLE_HOLD=${IDLE_HOLD:-2}
else
    DURATION=${DURATION:-6}; WARMUP=${WARMUP:-1.5}
    IDLE_N=${IDLE_N:-9000}; SCALE_N=${SCALE_N:-9900}; SCALE_HOLD=${SCALE_HOLD:-35}
    IDLE_HOLD=${IDLE_HOLD:-4}
fi
CG_MESSAGES=${CG_MESSAGES:-40000}
CG_TARGETS=${CG_TARGETS:-"wsguard nginx haproxy"}
CG_HS_KINDS=${CG_HS_KINDS:-"full resumed"}
CG_HS_CONC=${CG_HS_CONC:-4}        # handshake slots under callgrind
CG_HS_T1=${CG_HS_T1:-4}            # seconds of handshakes, short run
CG_HS_T2=${CG_HS_T2:-24}           # and long run

# ---------------------------------------------------------------------------
# Security settings, in one place. The load generator always sends an Origin
# header and an HS256 JWT (query ?access_token=) to every target; wsguard is
# configured to check them. Keys that wsguard does not implement yet only
# make it warn ("not supported yet"); the harness records which are active
# (results: security=...). Set BENCH_ORIGIN_CHECK=0 / BENCH_JWT=0 to switch
# a check off.
BENCH_ORIGIN=${BENCH_ORIGIN:-https://bench.example}
BENCH_ORIGIN_CHECK=${BENCH_ORIGIN_CHECK:-1}
BENCH_JWT=${BENCH_JWT:-1}
BENCH_JWT_SECRET=${BENCH_JWT_SECRET:-wsbench-hs256-secret-0123456789abcdef}
BENCH_TOKEN_IN=${BENCH_TOKEN_IN:-query}      # query | header
WSGUARD_SECURITY_ENV=()
[ "$BENCH_ORIGIN_CHECK" = 1 ] && WSGUARD_SECURITY_ENV+=(
    WSGUARD_ORIGIN_ALLOW="$BENCH_ORIGIN" WSGUARD_ORIGIN_ALLOW_MISSING=no)
[ "$BENCH_JWT" = 1 ] && WSGUARD_SECURITY_ENV+=(
    WSGUARD_JWT_ENABLED=yes WSGUARD_JWT_ALGORITHMS=HS256
    WSGUARD_JWT_SECRET="$BENCH_JWT_SECRET")
LG_AUTH=(--origin "$BENCH_ORIGIN" --token-in "$BENCH_TOKEN_IN")
[ "$BENCH_JWT" = 1 ] && LG_AUTH+=(--jwt-secret "$BENCH_JWT_SECRET")
# Limits high enough not to trip (256 KiB messages, 9,900 sessions).
WSGUARD_LIMIT_ENV=(WSGUARD_LIMITS_MAX_PAYLOAD=1m
    WSGUARD_SERVER_MAX_CONNECTIONS=100000 WSGUARD_SERVER_IDLE_TIMEOUT=5m
    WSGUARD_ADMIN_LISTEN=)          # off: 9090 may be taken by another run
# ---------------------------------------------------------------------------

ECHO_PORT=${ECHO_PORT:-9001}; GUARD_PORT=${GUARD_PORT:-9443}
NGINX_PORT=${NGINX_PORT:-9444}; HAPROXY_PORT=${HAPROXY_PORT:-9445}

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/wsbench.XXXXXX")
PIDS=()                    # every process this script started
ECHO_PID=

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
    done
    sleep 0.3
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PIDS=()
    [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() {   # stop_pid PID [SIGNAL]
    local p=$1 i
    kill -"${2:-TERM}" "$p" 2>/dev/null
    for i in $(seq 100); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    forget_pid "$p"
}

wait_port() {   # wait_port PORT [TRIES]
    local i
    for i in $(seq "${2:-100}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "port $1 did not open"; return 1
}

# --- preparation -----------------------------------------------------------
prepare() {
    [ -x "$WSBENCH" ] && [ -x "$WSECHO" ] || make -s -C "$BENCH" || exit 1
    [ -x "$WSGUARD" ] || { log "no $WSGUARD: run make first"; exit 1; }
    # Measure a snapshot: build/ may be rebuilt by someone else mid-run.
    cp "$WSGUARD" "$TMP/wsguard.bin" || exit 1
    WSGUARD_SHA=$(sha256sum "$TMP/wsguard.bin" | cut -c1-12)
    WSGUARD=$TMP/wsguard.bin
    mkdir -p "$RES" "$TMP/nginx/logs" "$TMP/nginx/tmp"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 30 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || exit 1
    cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/combined.pem"
    local t
    for t in nginx haproxy nginx-cg; do
        sed -e "s|@TMP@|$TMP|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" \
            -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
            "$BENCH/conf/$t.conf.tmpl" > "$TMP/$t.conf"
    done
    # which of wsguard's security settings are active in this build
    local out
    out=$(env "${WSGUARD_SECURITY_ENV[@]}" "${WSGUARD_LIMIT_ENV[@]}" \
        WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
        WSGUARD_SERVER_LISTEN=127.0.0.1:$GUARD_PORT \
        "$WSGUARD" -t -c "$ROOT/conf/wsguard.ini" 2>&1)
    SECURITY="utf8=on"
    if [ "$BENCH_ORIGIN_CHECK" = 1 ]; then
        grep -q 'origin.*not supported' <<<"$out" && SECURITY+=",origin=unsupported" \
            || SECURITY+=",origin=on"
    else SECURITY+=",origin=off"; fi
    if [ "$BENCH_JWT" = 1 ]; then
        grep -q 'jwt.*not supported' <<<"$out" && SECURITY+=",jwt=unsupported" \
            || SECURITY+=",jwt=on"
    else SECURITY+=",jwt=off"; fi
    log "wsguard security settings: $SECURITY"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
    local p
    for p in $ECHO_PORT $GUARD_PORT $NGINX_PORT $HAPROXY_PORT; do
        if port_busy "$p"; then
            log "port $p is in use (another benchmark?); set ECHO_PORT/GUARD_PORT/NGINX_PORT/HAPROXY_PORT"
            exit 1
        fi
    done
}

start_echo() {
    taskset -c "$LG_CPU" "$WSECHO" -q -l 127.0.0.1:$ECHO_PORT &
    ECHO_PID=$!; PIDS+=("$ECHO_PID")
    wait_port $ECHO_PORT || exit 1
}

# The backend must live through the whole run; if something killed it,
# say so (the run's figures are marked) and start a new one.
ensure_echo() {
    if ! kill -0 "$ECHO_PID" 2>/dev/null; then
        log "echo backend (pid $ECHO_PID) is gone: restarting it"
        wait "$ECHO_PID" 2>/dev/null; forget_pid "$ECHO_PID"
        ECHO_RESTARTS=$((ECHO_RESTARTS + 1))
        start_echo
    fi
}
ECHO_RESTARTS=0

# start_target NAME [callgrind]: sets TPORT TLSOPT MPID (pid to measure) SPID
# (pid to stop)
start_target() {
    local name=$1 cg=${2:-}
    local vg=()
    [ -n "$cg" ] && vg=(valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$name.$cg.out")
    case $name in
    direct)
        TPORT=$ECHO_PORT; TLSOPT=--no-tls; MPID=$ECHO_PID; SPID=; return 0 ;;
    wsguard)
        env "${WSGUARD_SECURITY_ENV[@]}" "${WSGUARD_LIMIT_ENV[@]}" \
            WSGUARD_SERVER_LISTEN=127.0.0.1:$GUARD_PORT WSGUARD_SERVER_WORKERS=1 \
            WSGUARD_BACKEND_URL=ws://127.0.0.1:$ECHO_PORT \
            WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
            WSGUARD_TLS_MIN_VERSION=TLSv1.3 WSGUARD_SERVER_DRAIN_TIMEOUT=0 \
            WSGUARD_LOG_LEVEL=error WSGUARD_LOG_ACCESS_LOG=off \
            taskset -c "$PROXY_CPU" "${vg[@]}" "$WSGUARD" -c "$ROOT/conf/wsguard.ini" \
            2>>"$TMP/wsguard.err" &
        SPID=$!; TPORT=$GUARD_PORT ;;
    nginx)
        local conf=$TMP/nginx.conf
        [ -n "$cg" ] && conf=$TMP/nginx-cg.conf
        taskset -c "$PROXY_CPU" "${vg[@]}" nginx -p "$TMP/nginx/" -e "$TMP/nginx/logs/error.log" \
            -c "$conf" 2>>"$TMP/nginx.err" &
        SPID=$!; TPORT=$NGINX_PORT ;;
    haproxy)
        taskset -c "$PROXY_CPU" "${vg[@]}" haproxy -db -f "$TMP/haproxy.conf" \
            2>>"$TMP/haproxy.err" >&2 &
        SPID=$!; TPORT=$HAPROXY_PORT ;;
    esac
    PIDS+=("$SPID")
    TLSOPT=--tls
    wait_port "$TPORT" $([ -n "$cg" ] && echo 600 || echo 100) || return 1
    MPID=$SPID
    if [ "$name" = nginx ] && [ -z "$cg" ]; then   # measure the worker
        local i w=
        for i in $(seq 50); do
            w=$(pgrep -P "$SPID" | head -1); [ -n "$w" ] && break; sleep 0.1
        done
        MPID=${w:-$SPID}
    fi
}

stop_target() {
    [ -n "${SPID:-}" ] || return 0
    if [ "$1" = nginx ]; then stop_pid "$SPID" QUIT; else stop_pid "$SPID" TERM; fi
    SPID=
}

# run_lg LABEL ARGS...: runs the load generator pinned to LG_CPU, appends
# "scenario target rep key=value..." to raw.log.
# side_sample: the measured proxy's read/write syscalls so far (/proc/PID/io)
# and the echo backend's CPU ticks (utime+stime), for the whole run of the
# load generator (warm-up and set-up included), so as rates per second.
side_sample() {
    local io; io=$(awk '/^syscr:/ {r=$2} /^syscw:/ {w=$2} END {print r+0, w+0}'         "/proc/${MPID:-0}/io" 2>/dev/null || echo "0 0")
    local et; et=$(awk '{print $14 + $15}' "/proc/${ECHO_PID:-0}/stat" 2>/dev/null || echo 0)
    local eio; eio=$(awk '/^syscr:/ {r=$2} /^syscw:/ {w=$2} END {print r+0, w+0}' \
        "/proc/${ECHO_PID:-0}/io" 2>/dev/null || echo "0 0")
    echo "$io $et $(date +%s.%N) $eio"
}

run_lg() {
    local label=$1; shift
    local out s0 s1 extra
    s0=$(side_sample)
    out=$(taskset -c "$LG_CPU" "$WSBENCH" "$@" 2>>"$TMP/wsbench.err")
    s1=$(side_sample)
    [ -n "$out" ] || out="errors=1 last_error=no_output"
    # per second of the whole run: proxy reads and writes, echo CPU share
    extra=$(awk -v a="$s0" -v b="$s1" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = y[4] - x[4]; if (t <= 0) t = 1
        printf "proxy_reads_s=%.0f proxy_writes_s=%.0f echo_cpu_util=%.3f echo_reads_s=%.0f echo_writes_s=%.0f",
            (y[1] - x[1]) / t, (y[2] - x[2]) / t, (y[3] - x[3]) / hz / t,
            (y[5] - x[5]) / t, (y[6] - x[6]) / t }')
    out="$out $extra"
    echo "$label $out" >> "$RAW"
    log "  $label: $(tr ' ' '\n' <<<"$out" | grep -E '^(msg_s|mb_s|p99_us|msg_per_cpu_s|hs_s|hs_per_cpu_s|sessions|rss_per_session_kb|errors|proxy_cpu_util)=' | tr '\n' ' ')"
}

scenario() {   # scenario NAME TARGET REP
    local sc=$1 tg=$2 rep=$3
    local lbl="scenario=$sc target=$tg rep=$rep"
    local common=(-t 127.0.0.1:$TPORT $TLSOPT --pid "$MPID" "${LG_AUTH[@]}")
    case $sc in
    msg64)   run_lg "$lbl" -m throughput -c 100 -d 16 -s 64 -T "$DURATION" -w "$WARMUP" "${common[@]}" ;;
    msg4k)   run_lg "$lbl" -m throughput -c 50 -d 8 -s 4k -T "$DURATION" -w "$WARMUP" "${common[@]}" ;;
    msg256k) run_lg "$lbl" -m throughput -c 4 -d 4 -s 256k -T "$DURATION" -w "$WARMUP" "${common[@]}" ;;
    idle)    run_lg "$lbl" -m idle -c "$IDLE_N" --hold "$IDLE_HOLD" "${common[@]}" ;;
    hs)      run_lg "$lbl" -m handshake -c 32 --resume -T "$DURATION" -w "$WARMUP" "${common[@]}" ;;
    scale)
        local src i
        src=$(for i in $(seq 2 17); do printf '127.0.0.%d,' "$i"; done)
        # kernel memory (slab + TCP buffer pages) before and while held
        local k0 k1 out i
        k0=$(kmem_kb)
        : > "$TMP/scale.err"
        taskset -c "$LG_CPU" "$WSBENCH" -m idle -c "$SCALE_N" --hold "$SCALE_HOLD" \
            -B "${src%,}" --parallel 128 "${common[@]}" > "$TMP/scale.out" \
            2> "$TMP/scale.err" &
        local lp=$!
        PIDS+=("$lp")
        for i in $(seq 1200); do
            grep -q 'sessions open' "$TMP/scale.err" && break
            kill -0 "$lp" 2>/dev/null || break
            sleep 0.1
        done
        sleep 1
        k1=$(kmem_kb)
        wait "$lp"; forget_pid "$lp"
        out=$(cat "$TMP/scale.out")
        [ -n "$out" ] || out="errors=1 last_error=no_output"
        local n; n=$(tr ' ' '\n' <<<"$out" | sed -n 's/^sessions=//p')
        echo "$lbl $out kmem0_kb=$k0 kmem1_kb=$k1 kmem_per_session_kb=$(awk -v a="$k0" -v b="$k1" -v n="${n:-0}" 'BEGIN{printf "%.2f", (n > 0) ? (b-a)/n : 0}')" >> "$RAW"
        log "  $lbl: $(tail -1 "$RAW" | tr ' ' '\n' | grep -E '^(sessions|rss_per_session_kb|hold_cpu_util|kmem_per_session_kb|errors)=' | tr '\n' ' ')" ;;
    esac
}

kmem_kb() {   # kernel slab + TCP socket buffer memory, KiB
    local slab pages
    slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
    pages=$(awk '/^TCP:/ {for (i=1;i<NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat)
    echo $((slab + ${pages:-0} * 4))
}

versions() {
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc=$(nproc)"
        echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
        echo "kernel=$(uname -r)"
        echo "wsguard=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src || echo +dirty) binary_sha256=$WSGUARD_SHA"
        echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///')"
        echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
        echo "openssl=$(openssl version | awk '{print $2}')"
        echo "security=$SECURITY"
        echo "reps=$REPS quick=$QUICK duration=$DURATION warmup=$WARMUP idle_n=$IDLE_N scale_n=$SCALE_N"
    } > "$RES/machine.txt"
}

main_run() {
    RAW=$TMP/raw.log        # copied to results/ at the end
    : > "$RAW"
    versions
    start_echo
    local rep sc tg
    for rep in $(seq "$REPS"); do
        for sc in $SCENARIOS; do
            [ "$sc" = scale ] && continue
            for tg in $TARGETS; do
                log "rep $rep/$REPS $sc $tg"
                ensure_echo
                start_target "$tg" || { echo "scenario=$sc target=$tg rep=$rep errors=1 last_error=start" >> "$RAW"; stop_target "$tg"; continue; }
                sleep 0.2
                scenario "$sc" "$tg" "$rep"
                stop_target "$tg"
            done
        done
    done
    if [[ " $SCENARIOS " == *" scale "* ]]; then
        log "scale: wsguard, $SCALE_N idle sessions, hold ${SCALE_HOLD}s"
        ensure_echo
        start_target wsguard && { sleep 0.2; scenario scale wsguard 1; }
        stop_target wsguard
    fi
    kill -0 "$ECHO_PID" 2>/dev/null || ECHO_RESTARTS=$((ECHO_RESTARTS + 1))
    stop_pid "$ECHO_PID"
    echo "echo_restarts=$ECHO_RESTARTS" >> "$RES/machine.txt"
    cp "$RAW" "$RES/raw.log"
    python3 "$BENCH/aggregate.py" "$RES" || exit 1
    if command -v gnuplot >/dev/null; then
        (cd "$RES" && gnuplot "$BENCH/plot.gp") || log "gnuplot failed"
    fi
    cat "$RES/latest.md"
}

# --- callgrind: instructions per relayed 64 B message ----------------------
cg_total() {   # total Ir of a callgrind output file
    awk '/^summary:/ {print $2} /^totals:/ {t=$2} END {if (t) print t}' "$1" | head -1
}

callgrind_run() {
    command -v valgrind >/dev/null || { log "valgrind missing"; exit 1; }
    local out=$RES/callgrind.tsv
    local m1=2000 m2=$((2000 + CG_MESSAGES)) tg
    printf 'target\tmessages\tinstructions\tinstr_per_msg\tsyscalls_per_msg\n' > "$out"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) wsguard=$(cd "$ROOT" && git rev-parse --short HEAD) binary_sha256=$WSGUARD_SHA" \
        > "$RES/callgrind-version.txt"
    RAW=$TMP/cg-raw.log
    start_echo
    for tg in $CG_TARGETS; do
        local ir1= ir2= n
        for n in $m1 $m2; do
            log "callgrind $tg: $n messages"
            start_target "$tg" "$n" || { stop_target "$tg"; continue; }
            sleep 1
            taskset -c "$LG_CPU" "$WSBENCH" -m throughput -c 16 -d 16 -s 64 -n "$n" \
                -t 127.0.0.1:$TPORT --tls "${LG_AUTH[@]}" >> "$RAW" 2>>"$TMP/wsbench.err"
            if [ "$tg" = nginx ]; then stop_pid "$SPID" QUIT; else stop_pid "$SPID" TERM; fi
            SPID=
            local f=$TMP/cg.$tg.$n.out
            [ -f "$f" ] || f=$(ls "$TMP"/cg.$tg.$n.out* 2>/dev/null | head -1)
            local ir; ir=$(cg_total "$f")
            [ "$n" = $m1 ] && ir1=$ir || ir2=$ir
            if [ "$n" = $m2 ]; then   # per-symbol cost of the extra messages
                python3 "$BENCH/cgdiff.py" "$TMP/cg.$tg.$m1.out" "$f" "$CG_MESSAGES" 25 \
                    > "$RES/callgrind-$tg.txt" 2>&1
            fi
        done
        # syscalls per message (strace -c over the same fixed count, native)
        local sc=
        if command -v strace >/dev/null; then
            start_target "$tg" && {
                sleep 0.3
                local sp pid=$SPID
                [ "$tg" = nginx ] && pid=$MPID
                strace -f -c -p "$pid" -o "$TMP/strace.$tg" 2>/dev/null & sp=$!
                sleep 1
                taskset -c "$LG_CPU" "$WSBENCH" -m throughput -c 16 -d 16 -s 64 \
                    -n "$CG_MESSAGES" -t 127.0.0.1:$TPORT --tls "${LG_AUTH[@]}" \
                    >> "$RAW" 2>>"$TMP/wsbench.err"
                kill -INT "$sp"; wait "$sp" 2>/dev/null
                local calls; calls=$(awk '/ total$/ {print $4}' "$TMP/strace.$tg")
                [ -n "$calls" ] && sc=$(awk -v c="$calls" -v m="$CG_MESSAGES" 'BEGIN{printf "%.2f", c/m}')
                cp "$TMP/strace.$tg" "$RES/strace-$tg.txt"
            }
            stop_target "$tg"
        fi
        local per=
        [ -n "$ir1" ] && [ -n "$ir2" ] &&
            per=$(awk -v a="$ir1" -v b="$ir2" -v m="$CG_MESSAGES" 'BEGIN{printf "%.0f", (b-a)/m}')
        printf '%s\t%s\t%s\t%s\t%s\n' "$tg" "$CG_MESSAGES" "$((ir2 - ir1))" "$per" "$sc" >> "$out"
        log "callgrind $tg: $per instructions/message, $sc syscalls/message"
    done
    stop_pid "$ECHO_PID"
    column -t "$out"
    [ -s "$RES/raw.log" ] && python3 "$BENCH/aggregate.py" "$RES"
}

# --- callgrind: instructions per handshake ----------------------------------
# The hs scenario's cycle (connect, TLS 1.3 full or resumed, upgrade with
# Origin and JWT through to the 101 and the backend, close handshake), run
# by wsbench -m handshake for CG_HS_T1 and CG_HS_T2 seconds against the
# proxy under callgrind. wsbench counts the cycles it completed while
# measuring (hs=); with -w 0 the proxy has served exactly that many plus
# the CG_HS_CONC cycles in flight when the time was up (wsbench lets them
# finish), in both runs, so the difference of the two profiles divided by
# the difference of the two counts is the cost of one cycle. "resumed":
# every cycle but each slot's first resumes a TLS 1.3 ticket (--resume, as
# the hs scenario); the extra cycles of the long run are all resumed
# (checked: resumed= grows by as much as hs=). "full": no tickets.
cg_hs_field() {   # cg_hs_field KEY LINE
    tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -1
}

cg_hs_lg() {   # cg_hs_lg SECONDS [--resume]: wsbench's handshake loop on TPORT
    local t=$1; shift
    taskset -c "$LG_CPU" "$WSBENCH" -m handshake -c "$CG_HS_CONC" "$@" -T "$t" -w 0 \
        -t 127.0.0.1:$TPORT --tls "${LG_AUTH[@]}" 2>>"$TMP/wsbench.err"
}

callgrind_hs_run() {
    command -v valgrind >/dev/null || { log "valgrind missing"; exit 1; }
    local out=$RES/callgrind-hs.tsv groups=$RES/callgrind-hs-groups.tsv
    printf 'target\tkind\thandshakes\tresumed\tinstructions\tinstr_per_hs\tsyscalls_per_hs\n' > "$out"
    printf 'label\ttotal\ttls\tlibc\tlibev\town\tother\n' > "$groups"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) wsguard=$(cd "$ROOT" && git rev-parse --short HEAD) binary_sha256=$WSGUARD_SHA conc=$CG_HS_CONC t1=$CG_HS_T1 t2=$CG_HS_T2 security=$SECURITY" \
        > "$RES/callgrind-hs-version.txt"
    RAW=$TMP/cg-raw.log
    start_echo
    local tg kind
    for tg in $CG_TARGETS; do
        for kind in $CG_HS_KINDS; do
            local ropt=() ir1= ir2= hs1= hs2= rs1= rs2= k f F1=
            [ "$kind" = resumed ] && ropt=(--resume)
            for k in 1 2; do
                local t=$CG_HS_T1; [ $k = 2 ] && t=$CG_HS_T2
                log "callgrind $tg $kind handshakes: ${t}s"
                ensure_echo
                start_target "$tg" "hs-$kind-$k" || { stop_target "$tg"; continue 2; }
                sleep 1
                local line
                line=$(cg_hs_lg "$t" "${ropt[@]}")
                echo "cg-hs target=$tg kind=$kind run=$k $line" >> "$RAW"
                stop_target "$tg"
                f=$TMP/cg.$tg.hs-$kind-$k.out
                [ -f "$f" ] || f=$(ls "$TMP"/cg.$tg.hs-$kind-$k.out* 2>/dev/null | head -1)
                local e; e=$(cg_hs_field errors "$line")
                [ "${e:-1}" = 0 ] || log "callgrind $tg $kind: wsbench errors=${e:-?} ($(cg_hs_field last_error "$line"))"
                if [ $k = 1 ]; then
                    ir1=$(cg_total "$f"); hs1=$(cg_hs_field hs "$line"); rs1=$(cg_hs_field resumed "$line")
                    F1=$f
                else
                    ir2=$(cg_total "$f"); hs2=$(cg_hs_field hs "$line"); rs2=$(cg_hs_field resumed "$line")
                fi
            done
            local n=$((hs2 - hs1)) per=
            if [ "$n" -gt 0 ] && [ -n "$ir1" ] && [ -n "$ir2" ]; then
                per=$(awk -v a="$ir1" -v b="$ir2" -v n="$n" 'BEGIN{printf "%.0f", (b-a)/n}')
                local own=$tg; [ "$tg" = wsguard ] && own=wsguard.bin
                python3 "$BENCH/cgdiff.py" "$F1" "$f" "$n" 30 --unit handshake \
                    --own "$own" --tsv "$groups" --label "$tg/$kind" \
                    > "$RES/callgrind-hs-$tg-$kind.txt" 2>&1
            fi
            # syscalls per handshake: strace -c on the native proxy over a
            # run of CG_HS_T1 seconds (all hs + CG_HS_CONC cycles it served)
            local sc=
            if command -v strace >/dev/null && start_target "$tg"; then
                sleep 0.3
                local sp pid=$SPID
                [ "$tg" = nginx ] && pid=$MPID
                strace -f -c -p "$pid" -o "$TMP/strace.hs.$tg.$kind" 2>/dev/null & sp=$!
                sleep 1
                local sline
                sline=$(cg_hs_lg "$CG_HS_T1" "${ropt[@]}")
                echo "strace-hs target=$tg kind=$kind $sline" >> "$RAW"
                sleep 0.5
                kill -INT "$sp"; wait "$sp" 2>/dev/null
                local calls h
                calls=$(awk '/ total$/ {print $4}' "$TMP/strace.hs.$tg.$kind")
                h=$(cg_hs_field hs "$sline")
                [ -n "$calls" ] && [ "${h:-0}" -gt 0 ] &&
                    sc=$(awk -v c="$calls" -v h="$h" -v k="$CG_HS_CONC" 'BEGIN{printf "%.1f", c/(h+k)}')
                cp "$TMP/strace.hs.$tg.$kind" "$RES/strace-hs-$tg-$kind.txt"
                stop_target "$tg"
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tg" "$kind" "$n" "$((rs2 - rs1))" \
                "$((ir2 - ir1))" "$per" "$sc" >> "$out"
            log "callgrind $tg $kind: $per instructions/handshake ($n handshakes, $((rs2 - rs1)) resumed), $sc syscalls/handshake"
        done
    done
    stop_pid "$ECHO_PID"
    column -t "$out"
    column -t "$groups"
}

check_ports
prepare
case $CALLGRIND in
1) callgrind_run ;;
hs) callgrind_hs_run ;;
*) main_run ;;
esac
