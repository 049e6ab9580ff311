#!/usr/bin/env bash
# bench/deflate.sh - permessage-deflate (RFC 7692) against nginx and HAProxy
# (issue 15's benchmark). See docs/performance.md, "permessage-deflate
# against nginx and HAProxy".
#
#   bench/deflate.sh                 every configuration, REPS repetitions
#   REPS=1 DURATION=3 bench/deflate.sh   a quick look
#   make bench-deflate               builds wsguard and the tools, runs this
#
# 4 KiB JSON-like text messages (wsbench --json: 256 different messages,
# records with the same keys and varied numbers), echoed, 50 sessions x 8
# in flight, over TLS 1.3 with the certificate, security settings (Origin
# check, HS256 JWT) and CPU pinning of bench/run.sh: the proxy on
# PROXY_CPU, the load generator and the echo backend on LG_CPU.
# Configurations (CONFIGS):
#   wsguard-plain    wsguard, [limits] deflate = off; the client does not
#                    offer the extension; plain wsecho (the baseline)
#   wsguard-deflate  wsguard, deflate = on (its defaults: windows 2^12,
#                    level 1, context takeover); the client offers
#                    permessage-deflate; plain wsecho behind (wsguard
#                    terminates the extension: the backend compresses
#                    nothing)
#   nginx-deflate    nginx passing the offer through to wsecho --deflate
#   haproxy-deflate  HAProxy, the same
#   nginx-plain, haproxy-plain   the same proxies, no offer, plain wsecho
# wsecho --deflate answers as Python's websockets does by default
# (windows 2^12 both ways, context takeover, memLevel 5) and compresses at
# level 1: the same zlib settings as wsguard's defaults. The client compresses at zlib's
# default level (6, as Chromium) with the window the server agreed.
#
# Per message (wsbench): proxy CPU (utime+stime of the proxy process, or
# nginx's worker), backend CPU, WebSocket frame bytes client<->proxy each
# way, the TCP payload of the client's sockets (TLS records), the bytes
# the backend read and wrote (its plain TCP leg: /proc/PID/io), msg/s.
#
# Knobs (environment): REPS (3), CONFIGS, DURATION (6), WARMUP (1.5),
# CONNS (50), DEPTH (8), SIZE (4k), PROXY_CPU (0), LG_CPU (1), ECHO_PORT
# (9101), GUARD_PORT (9543), NGINX_PORT (9544), HAPROXY_PORT (9545),
# WSGUARD_BIN, WSBENCH_BIN, WSECHO_BIN (default build/wsguard,
# bench/build/ws*), BENCH_RES (results directory; bench/results),
# KEEP_TMP=1. SUMMARY_ONLY=1 makes the tables again from deflate.raw.log.
# Results: $BENCH_RES/deflate.md (the table), deflate.tsv (medians),
# deflate.raw.log (one line per run).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
RES=${BENCH_RES:-$BENCH/results}
WSBENCH=${WSBENCH_BIN:-$BENCH/build/wsbench}
WSECHO=${WSECHO_BIN:-$BENCH/build/wsecho}
WSGUARD=${WSGUARD_BIN:-$ROOT/build/wsguard}

REPS=${REPS:-3}
CONFIGS=${CONFIGS:-"wsguard-plain wsguard-deflate nginx-deflate haproxy-deflate nginx-plain haproxy-plain"}
DURATION=${DURATION:-6}; WARMUP=${WARMUP:-1.5}
CONNS=${CONNS:-50}; DEPTH=${DEPTH:-8}; SIZE=${SIZE:-4k}
PROXY_CPU=${PROXY_CPU:-0}; LG_CPU=${LG_CPU:-1}
ECHO_PORT=${ECHO_PORT:-9101}; GUARD_PORT=${GUARD_PORT:-9543}
NGINX_PORT=${NGINX_PORT:-9544}; HAPROXY_PORT=${HAPROXY_PORT:-9545}

# Security settings as bench/run.sh (Origin check, HS256 JWT in the query).
BENCH_ORIGIN=https://bench.example
BENCH_JWT_SECRET=wsbench-hs256-secret-0123456789abcdef
WSGUARD_ENV=(WSGUARD_ORIGIN_ALLOW="$BENCH_ORIGIN" WSGUARD_ORIGIN_ALLOW_MISSING=no
    WSGUARD_JWT_ENABLED=yes WSGUARD_JWT_ALGORITHMS=HS256
    WSGUARD_JWT_SECRET="$BENCH_JWT_SECRET"
    WSGUARD_LIMITS_MAX_PAYLOAD=1m WSGUARD_SERVER_MAX_CONNECTIONS=100000
    WSGUARD_SERVER_IDLE_TIMEOUT=5m WSGUARD_ADMIN_LISTEN=)
LG_AUTH=(--origin "$BENCH_ORIGIN" --token-in query --jwt-secret "$BENCH_JWT_SECRET")

TMP=$(mktemp -d "${BENCH_TMP:-/tmp}/wsdeflate.XXXXXX")
PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
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
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    forget_pid "$p"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local i
    for i in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done
    log "port $1 did not open"; return 1
}

prepare() {
    [ -x "$WSBENCH" ] && [ -x "$WSECHO" ] || make -s -C "$BENCH" || exit 1
    [ -x "$WSGUARD" ] || { log "no $WSGUARD: run make first"; exit 1; }
    local p
    for p in $ECHO_PORT $GUARD_PORT $NGINX_PORT $HAPROXY_PORT; do
        port_busy "$p" && { log "port $p is in use; set ECHO_PORT/GUARD_PORT/NGINX_PORT/HAPROXY_PORT"; exit 1; }
    done
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
    for t in nginx haproxy; do
        sed -e "s|@TMP@|$TMP|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" \
            -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
            "$BENCH/conf/$t.conf.tmpl" > "$TMP/$t.conf"
    done
}

start_echo() {   # start_echo [--deflate]
    taskset -c "$LG_CPU" "$WSECHO" -q -l 127.0.0.1:$ECHO_PORT "$@" &
    ECHO_PID=$!; PIDS+=("$ECHO_PID")
    wait_port $ECHO_PORT || return 1
}

# start_proxy NAME DEFLATE(on|off): sets TPORT MPID (measured) SPID (stopped)
start_proxy() {
    case $1 in
    wsguard)
        env "${WSGUARD_ENV[@]}" WSGUARD_LIMITS_DEFLATE="$2" \
            WSGUARD_SERVER_LISTEN=127.0.0.1:$GUARD_PORT WSGUARD_SERVER_WORKERS=1 \
            WSGUARD_BACKEND_URL=ws://127.0.0.1:$ECHO_PORT \
            WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
            WSGUARD_TLS_MIN_VERSION=TLSv1.3 WSGUARD_SERVER_DRAIN_TIMEOUT=0 \
            WSGUARD_LOG_LEVEL=error WSGUARD_LOG_ACCESS_LOG=off \
            taskset -c "$PROXY_CPU" "$WSGUARD" -c "$ROOT/conf/wsguard.ini" \
            2>>"$TMP/wsguard.err" &
        SPID=$!; TPORT=$GUARD_PORT ;;
    nginx)
        taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx/" -e "$TMP/nginx/logs/error.log" \
            -c "$TMP/nginx.conf" 2>>"$TMP/nginx.err" &
        SPID=$!; TPORT=$NGINX_PORT ;;
    haproxy)
        taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy.conf" 2>>"$TMP/haproxy.err" >&2 &
        SPID=$!; TPORT=$HAPROXY_PORT ;;
    esac
    PIDS+=("$SPID")
    wait_port "$TPORT" || return 1
    MPID=$SPID
    if [ "$1" = nginx ]; then   # measure the worker
        local i w=
        for i in $(seq 50); do
            w=$(pgrep -P "$SPID" | head -1); [ -n "$w" ] && break; sleep 0.1
        done
        MPID=${w:-$SPID}
    fi
}

stop_proxy() {
    [ -n "${SPID:-}" ] || return 0
    if [ "$1" = nginx ]; then stop_pid "$SPID" QUIT; else stop_pid "$SPID" TERM; fi
    SPID=
}

run_config() {   # run_config CONFIG REP
    local cfg=$1 rep=$2 proxy=${1%-*} kind=${1#*-}
    local echo_opt=() lg_opt=() gd=off
    if [ "$kind" = deflate ]; then
        lg_opt=(--deflate)
        if [ "$proxy" = wsguard ]; then gd=on; else echo_opt=(--deflate); fi
    fi
    local lbl="config=$cfg rep=$rep"
    start_echo "${echo_opt[@]}" || { echo "$lbl errors=1 last_error=echo_start" >> "$RAW"; return; }
    if ! start_proxy "$proxy" "$gd"; then
        echo "$lbl errors=1 last_error=start" >> "$RAW"
        stop_proxy "$proxy"; stop_pid "$ECHO_PID"; return
    fi
    sleep 0.3
    local l0 out
    l0=$(cut -d' ' -f1 /proc/loadavg)
    out=$(taskset -c "$LG_CPU" "$WSBENCH" -m throughput -c "$CONNS" -d "$DEPTH" \
        -s "$SIZE" --json "${lg_opt[@]}" -T "$DURATION" -w "$WARMUP" \
        -t 127.0.0.1:$TPORT --tls --pid "$MPID" --backend-pid "$ECHO_PID" \
        "${LG_AUTH[@]}" 2>>"$TMP/wsbench.err")
    [ -n "$out" ] || out="errors=1 last_error=no_output"
    echo "$lbl load0=$l0 load1=$(cut -d' ' -f1 /proc/loadavg) $out" >> "$RAW"
    log "  $lbl: $(tr ' ' '\n' <<<"$out" | grep -E '^(msg_s|proxy_cpu_us_per_msg|backend_cpu_us_per_msg|wire_c2s_per_msg|wire_s2c_per_msg|pmd_conns|errors)=' | tr '\n' ' ')"
    stop_proxy "$proxy"
    stop_pid "$ECHO_PID"
}

summary() {
    python3 - "$RES" "$CONNS" <<'EOF'
import statistics, sys
res, conns = sys.argv[1], int(sys.argv[2])
runs = {}
order = []
for line in open(res + "/deflate.raw.log"):
    kv = dict(t.split("=", 1) for t in line.split() if "=" in t)
    c = kv["config"]
    if c not in runs:
        runs[c] = []
        order.append(c)
    runs[c].append(kv)

def med(rs, k):
    v = [float(r[k]) for r in rs if k in r]
    return statistics.median(v) if v else float("nan")

cols = ["msg_s", "proxy_cpu_us_per_msg", "backend_cpu_us_per_msg", "total_us",
        "wire_c2s_per_msg", "wire_s2c_per_msg", "tcp_c2s_per_msg",
        "tcp_s2c_per_msg", "backend_rx_per_msg", "backend_tx_per_msg",
        "lg_cpu_us_per_msg", "proxy_cpu_util", "lg_cpu_util"]
with open(res + "/deflate.tsv", "w") as t:
    t.write("config\treps\terrors\tpmd_conns\t" + "\t".join(cols) + "\tspread_proxy_us\n")
    md = ["| configuration | msg/s | proxy CPU us/msg | backend CPU us/msg "
          "| proxy + backend us/msg | client->proxy B/msg (TLS) "
          "| proxy->client B/msg (TLS) | proxy<->backend B/msg (each way) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in order:
        rs = runs[c]
        for r in rs:
            if "proxy_cpu_us_per_msg" in r:
                r["total_us"] = str(float(r["proxy_cpu_us_per_msg"]) +
                                    float(r.get("backend_cpu_us_per_msg", "nan")))
        errs = sum(int(r.get("errors", "1")) for r in rs)
        pmd = ",".join(sorted(set(r.get("pmd_conns", "?") for r in rs)))
        m = {k: med(rs, k) for k in cols}
        pv = [float(r["proxy_cpu_us_per_msg"]) for r in rs if "proxy_cpu_us_per_msg" in r]
        spread = (max(pv) - min(pv)) if pv else float("nan")
        t.write("%s\t%d\t%d\t%s\t%s\t%.2f\n" % (c, len(rs), errs, pmd,
                "\t".join("%.2f" % m[k] for k in cols), spread))
        md.append("| %s%s | %.0f | %.1f | %.1f | %.1f | %.0f (%.0f) | %.0f (%.0f) | %.0f / %.0f |" % (
            c, "" if errs == 0 else " (errors: %d)" % errs, m["msg_s"],
            m["proxy_cpu_us_per_msg"], m["backend_cpu_us_per_msg"], m["total_us"],
            m["wire_c2s_per_msg"], m["tcp_c2s_per_msg"], m["wire_s2c_per_msg"],
            m["tcp_s2c_per_msg"], m["backend_rx_per_msg"], m["backend_tx_per_msg"]))
with open(res + "/deflate.md", "w") as f:
    f.write("\n".join(md) + "\n")
print("\n".join(md))
EOF
}

if [ "${SUMMARY_ONLY:-0}" = 1 ]; then summary; exit; fi
prepare
RAW=$TMP/raw.log
: > "$RAW"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ) nproc=$(nproc) kernel=$(uname -r)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "wsguard=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src || echo +dirty) binary_sha256=$WSGUARD_SHA"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///') haproxy=$(haproxy -v | head -1 | awk '{print $3}') openssl=$(openssl version | awk '{print $2}') zlib=$(sed -n 's/^#define ZLIB_VERSION "\(.*\)"/\1/p' /usr/include/zlib.h)"
    echo "reps=$REPS duration=$DURATION warmup=$WARMUP conns=$CONNS depth=$DEPTH size=$SIZE"
    echo "uptime_start=$(uptime)"
} > "$TMP/machine.txt"
for rep in $(seq "$REPS"); do
    for cfg in $CONFIGS; do
        log "rep $rep/$REPS $cfg"
        run_config "$cfg" "$rep"
    done
done
echo "uptime_end=$(uptime)" >> "$TMP/machine.txt"
cp "$RAW" "$RES/deflate.raw.log"
cp "$TMP/machine.txt" "$RES/deflate.machine.txt"
summary
