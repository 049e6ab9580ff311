#!/usr/bin/env bash
# bench/cluster.sh - what cluster mode ([cluster] redis = ...) costs.
# See docs/performance.md, "Cluster mode", and docs/scaling.md, "Costs".
#
#   bench/cluster.sh                 both measurements, REPS repetitions
#   PARTS=hs REPS=5 bench/cluster.sh the handshake part alone
#   make bench-cluster               builds wsguard and the tools, runs this
#
# 1. hs: handshakes per second through one wsguard (one worker) without
#    and with [cluster], same settings otherwise: [limits]
#    max_connections_per_ip = 1000000 in both, so that with [cluster]
#    every upgrade waits for one Redis script (and every close sends one);
#    the origin check and the HS256 JWT on as in bench/run.sh. For each
#    TLS mode (resumed, full) and concurrency (CONC), the two variants run
#    back to back, in alternating order from one repetition to the next.
#    With [cluster], the run also reads wsguard_cluster_roundtrip_seconds
#    from the admin listener's /metrics and Redis's own CPU time.
# 2. fanout: revocation fan-out. Two replicas with [cluster] on the same
#    Redis, FANOUT_N idle wss sessions spread evenly over them
#    (bench/build/wsrevoke), then POST /revoke {"client_ip":"127.0.0.1"} to
#    replica A's admin listener; per session, the time from that POST to its
#    close frame (1008), taken from the kernel's receive time stamp. Cases:
#    admin/off (no per-IP limit), admin/on (limit set: every close also
#    writes a count to Redis), redis/on (the same revocation PUBLISHed on
#    the channel directly, as an application may: both replicas hear it at
#    once).
#
# Pinning as bench/run.sh: wsguard (both replicas) on PROXY_CPU, the load
# generator and the echo backend on LG_CPU, Redis on REDIS_CPU (LG_CPU).
#
# Knobs (environment): REPS (3), PARTS ("hs fanout"), DURATION (5),
# WARMUP (1), CONC ("32 1"), TLS_MODES ("resume full"), FANOUT_N (5000),
# FANOUT_CASES ("admin/off admin/on redis/on": how the revocation is
# published / whether the per-IP limit is set), PROXY_CPU, LG_CPU,
# REDIS_CPU, REDIS_SERVER, QUIET_MAX (0.10), QUIET_TIMEOUT (60 s),
# WSGUARD_BIN (default build/wsguard) and WSGUARD_REV (its revision, for
# the report), KEEP_TMP=1. SUMMARY_ONLY=1 makes the tables again from
# bench/results/cluster.raw.log.
# Results: bench/results/cluster.md (the tables), cluster.tsv (every figure
# per repetition and the medians), cluster.raw.log (one line per run),
# cluster.closes.tsv (the distribution of the per-session close times, all
# repetitions pooled: percentiles 0..100 per case and replica).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
RES=$BENCH/results
WSBENCH=$BENCH/build/wsbench
WSECHO=$BENCH/build/wsecho
WSREVOKE=$BENCH/build/wsrevoke
WSGUARD=${WSGUARD_BIN:-$ROOT/build/wsguard}
REDIS_SERVER=${REDIS_SERVER:-/usr/bin/redis-server}

REPS=${REPS:-3}
PARTS=${PARTS:-"hs fanout"}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONC=${CONC:-"32 1"}
TLS_MODES=${TLS_MODES:-"resume full"}
FANOUT_N=${FANOUT_N:-5000}
FANOUT_CASES=${FANOUT_CASES:-"admin/off admin/on redis/on"}
PROXY_CPU=${PROXY_CPU:-0}
LG_CPU=${LG_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$LG_CPU}
PER_IP=1000000

# The security settings of bench/run.sh.
BENCH_ORIGIN=https://bench.example
BENCH_JWT_SECRET=wsbench-hs256-secret-0123456789abcdef
LG_AUTH=(--origin "$BENCH_ORIGIN" --token-in query --jwt-secret "$BENCH_JWT_SECRET")
WSGUARD_ENV=(WSGUARD_ORIGIN_ALLOW="$BENCH_ORIGIN" WSGUARD_ORIGIN_ALLOW_MISSING=no
    WSGUARD_JWT_ENABLED=yes WSGUARD_JWT_ALGORITHMS=HS256
    WSGUARD_JWT_SECRET="$BENCH_JWT_SECRET"
    WSGUARD_LIMITS_MAX_PAYLOAD=1m WSGUARD_SERVER_MAX_CONNECTIONS=100000
    WSGUARD_SERVER_IDLE_TIMEOUT=5m WSGUARD_SERVER_WORKERS=1
    WSGUARD_TLS_MIN_VERSION=TLSv1.3 WSGUARD_SERVER_DRAIN_TIMEOUT=0
    WSGUARD_LOG_LEVEL=warn WSGUARD_LOG_ACCESS_LOG=off)

TMP=$(mktemp -d /tmp/wsbench-cluster.XXXXXX)
PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    PIDS=()
    [ "${KEEP_TMP:-0}" = 1 ] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() {   # stop_pid PID
    local p=$1 i
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    forget_pid "$p"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Free loopback ports below the ephemeral range (32768-), so that the
# handshake runs' outgoing connections never hold one.
USED_PORTS=" "
free_port() {   # free_port VAR: sets VAR (not in a $(...): USED_PORTS must stick)
    local p i
    for i in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_busy "$p" && continue
        ss -Htan "sport = :$p" 2>/dev/null | grep -q . && continue
        USED_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    log "no free port"; exit 1
}

wait_port() {
    local i
    for i in $(seq "${2:-100}"); do port_busy "$1" && return 0; sleep 0.1; done
    log "port $1 did not open"; return 1
}

# The machine is shared: before each measurement wait (at most
# QUIET_TIMEOUT s) until the CPUs were less than QUIET_MAX busy over one
# second (our own idle processes included), and record during each run how
# much CPU other processes took (foreign_cores).
QUIET_MAX=${QUIET_MAX:-0.10}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-60}
stat_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
quiet_wait() {
    local t0=$SECONDS b0 i0 b1 i1 busy said=0
    while :; do
        read -r b0 i0 < <(stat_jiffies); sleep 1; read -r b1 i1 < <(stat_jiffies)
        busy=$(awk -v a="$b0" -v b="$b1" -v c="$i0" -v d="$i1" \
            'BEGIN {t = (b - a) + (d - c); printf "%.2f", (t > 0 ? (b - a) / t : 0)}')
        awk -v x="$busy" -v m="$QUIET_MAX" 'BEGIN {exit !(x <= m)}' && return 0
        if [ $((SECONDS - t0)) -ge "$QUIET_TIMEOUT" ]; then
            log "  machine still busy ($busy of all CPUs): measuring anyway"
            QUIET_SKIPPED=$((QUIET_SKIPPED + 1)); return 0
        fi
        [ "$said" = 1 ] || log "  machine busy ($busy of all CPUs): waiting for a quieter moment"
        said=1; sleep 2
    done
}
QUIET_SKIPPED=0
# CPU seconds of this shell's waited-for children (`times`, run in this
# shell: in a $(...) it would see the subshell's), plus the given processes.
ours_cpu_to() {   # ours_cpu_to FILE PID...
    local f=$1 p; shift
    times > "$f"
    for p in "$@"; do cpu_s "$p" >> "$f"; done
}
ours_cpu_sum() {
    awk 'NR == 1 {next}
         NR == 2 {for (i = 1; i <= 2; i++) {split($i, a, /[ms]/); x += a[1] * 60 + a[2]}; next}
         {x += $1} END {printf "%.3f", x}' "$1"
}
# foreign_begin PIDS... / foreign_end PIDS...: other processes' CPU during
# the measurement, in cores (FOREIGN)
foreign_begin() {
    read -r FB_B FB_I < <(stat_jiffies); ours_cpu_to "$TMP/ours.0" "$@"; FB_T=$(date +%s.%N)
}
foreign_end() {
    local b i t
    read -r b i < <(stat_jiffies); ours_cpu_to "$TMP/ours.1" "$@"; t=$(date +%s.%N)
    FOREIGN=$(awk -v b0="$FB_B" -v b1="$b" -v o0="$(ours_cpu_sum "$TMP/ours.0")" \
        -v o1="$(ours_cpu_sum "$TMP/ours.1")" -v t0="$FB_T" -v t1="$t" \
        -v hz="$(getconf CLK_TCK)" \
        'BEGIN {f = ((b1 - b0) / hz - (o1 - o0)) / (t1 - t0); printf "%.2f", (f < 0 ? 0 : f)}')
}

cpu_s() {   # utime+stime of a process, seconds
    awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print ($12 + $13) / hz}' \
        "/proc/$1/stat" 2>/dev/null || echo 0
}

prepare() {
    [ -x "$WSBENCH" ] && [ -x "$WSECHO" ] && [ -x "$WSREVOKE" ] ||
        make -s -C "$BENCH" || exit 1
    [ -x "$WSGUARD" ] || { log "no $WSGUARD: run make first"; exit 1; }
    [ -x "$REDIS_SERVER" ] || { log "no $REDIS_SERVER"; exit 1; }
    cp "$WSGUARD" "$TMP/wsguard.bin" || exit 1   # build/ may be rebuilt meanwhile
    WSGUARD_SHA=$(sha256sum "$TMP/wsguard.bin" | cut -c1-12)
    WSGUARD=$TMP/wsguard.bin
    mkdir -p "$RES"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 30 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || exit 1
    # 5,000 sessions: 5,000 descriptors in wsrevoke, 2 per session in
    # wsguard, 1 per session in wsecho.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null
    local need=$((FANOUT_N + 100))
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
        log "ulimit -n is $(ulimit -n), $need needed"; exit 1
    fi
    free_port ECHO_PORT; free_port REDIS_PORT
    free_port G1_PORT; free_port A1_PORT
    free_port G2_PORT; free_port A2_PORT
}

start_echo() {
    taskset -c "$LG_CPU" "$WSECHO" -q -l "127.0.0.1:$ECHO_PORT" &
    ECHO_PID=$!; PIDS+=("$ECHO_PID")
    wait_port "$ECHO_PORT" || exit 1
}

start_redis() {
    taskset -c "$REDIS_CPU" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --daemonize no --loglevel warning \
        > "$TMP/redis.log" 2>&1 &
    REDIS_PID=$!; PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT" || { cat "$TMP/redis.log" >&2; exit 1; }
}

# start_guard LISTEN ADMIN CLUSTER(0|1) LIMIT(0|1) PREFIX -> GPID
start_guard() {
    local extra=()
    [ "$3" = 1 ] && extra+=(WSGUARD_CLUSTER_REDIS="redis://127.0.0.1:$REDIS_PORT"
                            WSGUARD_CLUSTER_KEY_PREFIX="$5")
    [ "$4" = 1 ] && extra+=(WSGUARD_LIMITS_MAX_CONNECTIONS_PER_IP=$PER_IP)
    env "${WSGUARD_ENV[@]}" "${extra[@]}" \
        WSGUARD_SERVER_LISTEN="127.0.0.1:$1" WSGUARD_ADMIN_LISTEN="127.0.0.1:$2" \
        WSGUARD_BACKEND_URL="ws://127.0.0.1:$ECHO_PORT" \
        WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
        taskset -c "$PROXY_CPU" "$WSGUARD" -c "$ROOT/conf/wsguard.ini" \
        2>>"$TMP/wsguard.err" &
    GPID=$!; PIDS+=("$GPID")
    # Probe the admin listener only: a bare TCP probe of the TLS listener
    # would count as a refused handshake.
    wait_port "$2" || return 1
    local i
    for i in $(seq 50); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/readyz")" = 200 ] && break
        sleep 0.1
    done
    if [ "$3" = 1 ]; then   # Redis connected (scripts loaded) before measuring
        for i in $(seq 50); do
            curl -s "http://127.0.0.1:$2/metrics" | grep -q '^wsguard_cluster_up 1' && return 0
            sleep 0.1
        done
        log "wsguard did not connect to Redis"; return 1
    fi
}

# The cluster metrics of one admin listener as key=value.
cluster_metrics() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '
        /^wsguard_cluster_roundtrip_seconds_bucket/ {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            printf "rtt_le_%s=%s ", le, $2 }
        /^wsguard_cluster_roundtrip_seconds_sum/ { printf "rtt_sum=%s ", $2 }
        /^wsguard_cluster_roundtrip_seconds_count/ { printf "rtt_count=%s ", $2 }
        /^wsguard_cluster_errors_total/ { printf "cluster_errors=%s ", $2 }
        /^wsguard_handshake_duration_seconds_sum/ { printf "hsdur_sum=%s ", $2 }
        /^wsguard_handshake_duration_seconds_count/ { printf "hsdur_count=%s ", $2 }
        /^wsguard_rejections_total/ { r += $2 }
        END { printf "rejections=%d", r }'
}

# --- 1: handshakes per second without and with [cluster] -------------------
hs_run() {   # hs_run VARIANT TLSMODE CONC REP
    local variant=$1 tls=$2 conc=$3 rep=$4 cl=0 args=() out r0 r1 m=
    [ "$variant" = cluster ] && cl=1
    [ "$tls" = resume ] && args+=(--resume)
    start_guard "$G1_PORT" "$A1_PORT" "$cl" 1 "wsb$RANDOM$RANDOM:" ||
        { echo "part=hs variant=$variant tlsmode=$tls conc=$conc rep=$rep errors=1 last_error=start" >> "$RAW"; stop_pid "$GPID"; return; }
    sleep 0.2
    r0=$(cpu_s "$REDIS_PID")
    foreign_begin "$GPID" "$ECHO_PID" "$REDIS_PID"
    out=$(taskset -c "$LG_CPU" "$WSBENCH" -m handshake -c "$conc" "${args[@]}" \
        -T "$DURATION" -w "$WARMUP" -t "127.0.0.1:$G1_PORT" --tls --pid "$GPID" \
        "${LG_AUTH[@]}" 2>>"$TMP/wsbench.err")
    foreign_end "$GPID" "$ECHO_PID" "$REDIS_PID"
    local fc=$FOREIGN
    r1=$(cpu_s "$REDIS_PID")
    [ -n "$out" ] || out="errors=1 last_error=no_output"
    m=$(cluster_metrics "$A1_PORT")
    stop_pid "$GPID"
    echo "part=hs variant=$variant tlsmode=$tls conc=$conc rep=$rep $out redis_cpu_s=$(awk -v a="$r0" -v b="$r1" 'BEGIN{printf "%.3f", b-a}') foreign_cores=$fc $m" >> "$RAW"
    log "  hs $variant tls=$tls c=$conc: $(tr ' ' '\n' <<<"$out $m foreign_cores=$fc" | grep -E '^(hs_s|hs_per_cpu_s|errors|rtt_count|cluster_errors|rejections|foreign_cores)=' | tr '\n' ' ')"
}

hs_part() {
    local rep tls conc order v
    for rep in $(seq "$REPS"); do
        for tls in $TLS_MODES; do
            for conc in $CONC; do
                # alternate which variant goes first
                if [ $((rep % 2)) = 1 ]; then order="plain cluster"; else order="cluster plain"; fi
                quiet_wait
                for v in $order; do
                    log "rep $rep/$REPS hs $v tls=$tls c=$conc"
                    hs_run "$v" "$tls" "$conc" "$rep"
                done
            done
        done
    done
}

# --- 2: revocation fan-out over two replicas -------------------------------
fanout_run() {   # fanout_run VIA(admin|redis) LIMIT(off|on) REP
    local via=$1 lim=$2 rep=$3 l=0 pfx="wsb$RANDOM$RANDOM:" p1 p2 out pub
    [ "$lim" = on ] && l=1
    if [ "$via" = redis ]; then pub=(--publish-redis); else pub=(-a "127.0.0.1:$A1_PORT"); fi
    start_guard "$G1_PORT" "$A1_PORT" 1 "$l" "$pfx" || { stop_pid "$GPID"; return; }
    p1=$GPID
    start_guard "$G2_PORT" "$A2_PORT" 1 "$l" "$pfx" || { stop_pid "$p1"; stop_pid "$GPID"; return; }
    p2=$GPID
    sleep 0.3
    quiet_wait
    foreign_begin "$p1" "$p2" "$ECHO_PID" "$REDIS_PID"
    out=$(taskset -c "$LG_CPU" "$WSREVOKE" -c "$FANOUT_N" --parallel 64 --settle 1 \
        -t "127.0.0.1:$G1_PORT,127.0.0.1:$G2_PORT" "${pub[@]}" \
        --body '{"client_ip":"127.0.0.1","ttl":"10s"}' \
        --observe "127.0.0.1:$REDIS_PORT" --channel "${pfx}revoke" \
        --out "$TMP/closes.$via.$lim.$rep.tsv" "${LG_AUTH[@]}" 2>>"$TMP/wsrevoke.err")
    [ -n "$out" ] || out="errors=1 last_error=no_output"
    foreign_end "$p1" "$p2" "$ECHO_PID" "$REDIS_PID"
    out="$out foreign_cores=$FOREIGN"
    local m1 m2
    m1=$(cluster_metrics "$A1_PORT"); m2=$(cluster_metrics "$A2_PORT")
    stop_pid "$p1"; stop_pid "$p2"
    echo "part=fanout case=$via/$lim limit=$lim rep=$rep $out a_${m1// / a_} b_${m2// / b_}" >> "$RAW"
    log "  fanout $via/$lim: $(tr ' ' '\n' <<<"$out" | grep -E '^(code1008|missing|p50_ms|p99_ms|max_ms|t0_max_ms|redis_ms|t1_first_ms|lag_max_ms|foreign_cores)=' | tr '\n' ' ')"
}

fanout_part() {
    local rep c
    for rep in $(seq "$REPS"); do
        for c in $FANOUT_CASES; do
            log "rep $rep/$REPS fanout ${c%/*}, per-IP limit ${c#*/}, $FANOUT_N sessions"
            fanout_run "${c%/*}" "${c#*/}" "$rep"
        done
    done
    # The close times of every session of every repetition, as a
    # distribution: percentiles 0..100 per case, for replica A, B and both
    # (the per-session files stay in the temporary directory with KEEP_TMP=1).
    python3 - "$TMP" "$RES/cluster.closes.tsv" $FANOUT_CASES <<'PY'
import glob, sys
tmp, out, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out, "w") as o:
    o.write("case\treplica\tpercentile\tkernel_ms\tuser_ms\tsessions\n")
    for c in cases:
        via, lim = c.split("/")
        rows = []
        for fn in glob.glob(f"{tmp}/closes.{via}.{lim}.*.tsv"):
            for line in open(fn).read().splitlines()[1:]:
                i, t, k, u, code = line.split("\t")
                if float(k) >= 0:
                    rows.append(("A" if t == "0" else "B", float(k), float(u)))
        for rep in ("A", "B", "all"):
            ks = sorted(r[1] for r in rows if rep == "all" or r[0] == rep)
            us = sorted(r[2] for r in rows if rep == "all" or r[0] == rep)
            if not ks:
                continue
            for q in range(101):
                j = min(len(ks) - 1, max(0, -(-q * len(ks) // 100) - 1))
                o.write(f"{c}\t{rep}\t{q}\t{ks[j]:.2f}\t{us[j]:.2f}\t{len(ks)}\n")
PY
}

# --- summary ---------------------------------------------------------------
summary() {
    python3 - "$RES" <<'EOF'
import sys, statistics as st
res = sys.argv[1]
runs = []
meta = {}
for line in open(f"{res}/cluster.raw.log"):
    line = line.strip()
    if line.startswith("#"):
        k, _, v = line[1:].strip().partition("=")
        meta[k] = v
        continue
    d = {}
    for kv in line.split():
        k, _, v = kv.partition("=")
        d[k] = v
    runs.append(d)

def f(d, k):
    try:
        return float(d.get(k, "nan"))
    except ValueError:
        return float("nan")

def med(v):
    v = [x for x in v if x == x]
    return st.median(v) if v else float("nan")

def spread(v):
    v = [x for x in v if x == x]
    if not v: return float("nan")
    m = st.median(v)
    return (max(v) - min(v)) / 2 / m * 100 if m else float("nan")

def fmt(x, d=0):
    if x != x: return "-"
    return f"{x:,.{d}f}"

tsv = ["part\tcase\tmetric\tn\tmedian\tmin\tmax\tspread_pct\tvalues"]
def put(part, case, metric, vals):
    v = [x for x in vals if x == x]
    if not v: return
    tsv.append(f"{part}\t{case}\t{metric}\t{len(v)}\t{med(v):.4g}\t{min(v):.4g}\t{max(v):.4g}\t{spread(v):.1f}\t" + ",".join(f"{x:.4g}" for x in v))

md = []
md.append("# Cluster mode: measured costs\n")
md.append(f"`bench/cluster.sh`, {meta.get('date','?')}, wsguard `{meta.get('wsguard','?')}` "
          f"(binary sha256 {meta.get('binary_sha256','?')}), Redis {meta.get('redis','?')}, "
          f"{meta.get('nproc','?')} CPUs ({meta.get('cpu','?')}), load average at start {meta.get('load','?')}; "
          f"REPS={meta.get('reps','?')}, DURATION={meta.get('duration','?')} s, WARMUP={meta.get('warmup','?')} s; "
          f"wsguard on CPU {meta.get('proxy_cpu','?')}, load generator and echo backend on CPU {meta.get('lg_cpu','?')}, "
          f"Redis on CPU {meta.get('redis_cpu','?')}. Medians over the repetitions, ± half the min-max spread. "
          f"\"Other load\" is the CPU that processes other than this benchmark's took during a run (the machine is shared); "
          f"runs waited for a quiet second first, except {meta.get('quiet_skipped','?')} that gave up waiting.\n")

hs = [r for r in runs if r.get("part") == "hs"]
errs = sum(int(f(r, "errors") or 0) for r in hs if f(r, "errors") == f(r, "errors"))
if hs:
    md.append("## Handshakes per second, without and with `[cluster]`\n")
    md.append("Both with `[limits] max_connections_per_ip = 1000000`; with `[cluster]` every upgrade waits for one "
              "Redis script and every close sends one. Ratio = with / without, per repetition (the two runs back to back), then the median.\n")
    md.append("| TLS | clients | handshakes/s without | with | ratio (min..max) | per wsguard CPU-s without | with | ratio | Δ wall µs per handshake | wsguard's upgrade time, mean µs without | with | Redis CPU µs per handshake | Redis round trip, mean µs | ≤ 0.5 ms | ≤ 1 ms | ≤ 2.5 ms | other load, cores |")
    md.append("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cases = []
    for r in hs:
        c = (r["tlsmode"], r["conc"])
        if c not in cases: cases.append(c)
    for tls, conc in cases:
        case = f"tls={tls} conc={conc}"
        reps = sorted({r["rep"] for r in hs if r["tlsmode"] == tls and r["conc"] == conc}, key=int)
        P = {r["rep"]: r for r in hs if r["tlsmode"] == tls and r["conc"] == conc and r["variant"] == "plain"}
        C = {r["rep"]: r for r in hs if r["tlsmode"] == tls and r["conc"] == conc and r["variant"] == "cluster"}
        hp = [f(P[x], "hs_s") for x in reps if x in P]
        hc = [f(C[x], "hs_s") for x in reps if x in C]
        cp = [f(P[x], "hs_per_cpu_s") for x in reps if x in P]
        cc = [f(C[x], "hs_per_cpu_s") for x in reps if x in C]
        ratio = [f(C[x], "hs_s") / f(P[x], "hs_s") for x in reps if x in P and x in C and f(P[x], "hs_s") > 0]
        cratio = [f(C[x], "hs_per_cpu_s") / f(P[x], "hs_per_cpu_s") for x in reps if x in P and x in C and f(P[x], "hs_per_cpu_s") > 0]
        dwall = [1e6 / f(C[x], "hs_s") - 1e6 / f(P[x], "hs_s") for x in reps if x in P and x in C and f(P[x], "hs_s") > 0 and f(C[x], "hs_s") > 0]
        # Redis CPU over the whole wsbench run / upgrades served in it (two
        # scripts per upgrade: the acquisition and the release)
        rcpu = [f(C[x], "redis_cpu_s") * 1e6 / (f(C[x], "rtt_count") / 2) for x in reps if x in C and f(C[x], "rtt_count") > 0]
        rtt = [f(C[x], "rtt_sum") / f(C[x], "rtt_count") * 1e6 for x in reps if x in C and f(C[x], "rtt_count") > 0]
        def frac(le):
            return [f(C[x], f"rtt_le_{le}") / f(C[x], "rtt_count") * 100 for x in reps if x in C and f(C[x], "rtt_count") > 0]
        put("hs", case, "hs_s_plain", hp); put("hs", case, "hs_s_cluster", hc)
        put("hs", case, "ratio_wall", ratio)
        put("hs", case, "hs_per_cpu_s_plain", cp); put("hs", case, "hs_per_cpu_s_cluster", cc)
        put("hs", case, "ratio_cpu", cratio)
        put("hs", case, "delta_wall_us_per_hs", dwall)
        put("hs", case, "redis_cpu_us_per_hs", rcpu)
        put("hs", case, "rtt_mean_us", rtt)
        hdp = [f(P[x], "hsdur_sum") / f(P[x], "hsdur_count") * 1e6 for x in reps if x in P and f(P[x], "hsdur_count") > 0]
        hdc = [f(C[x], "hsdur_sum") / f(C[x], "hsdur_count") * 1e6 for x in reps if x in C and f(C[x], "hsdur_count") > 0]
        put("hs", case, "upgrade_mean_us_plain", hdp); put("hs", case, "upgrade_mean_us_cluster", hdc)
        fgn = [f(r, "foreign_cores") for r in hs if r["tlsmode"] == tls and r["conc"] == conc]
        put("hs", case, "foreign_cores", fgn)
        for le in ("0.0005", "0.001", "0.0025", "0.005"):
            put("hs", case, f"rtt_le_{le}_pct", frac(le))
        rng = f"{med(ratio):.2f}× ({min(ratio):.2f}..{max(ratio):.2f})" if ratio else "-"
        md.append(f"| {tls} | {conc} | {fmt(med(hp))} ±{fmt(spread(hp))}% | {fmt(med(hc))} ±{fmt(spread(hc))}% | {rng} | "
                  f"{fmt(med(cp))} | {fmt(med(cc))} | {med(cratio):.2f}× | {fmt(med(dwall))} | {fmt(med(hdp))} | {fmt(med(hdc))} | {fmt(med(rcpu))} | {fmt(med(rtt))} | "
                  f"{fmt(med(frac('0.0005')))}% | {fmt(med(frac('0.001')))}% | {fmt(med(frac('0.0025')))}% | "
                  f"{fmt(med(fgn), 2)} (max {fmt(max(fgn) if fgn else float('nan'), 2)}) |")
    ce = sum(f(r, "cluster_errors") for r in hs if f(r, "cluster_errors") == f(r, "cluster_errors"))
    rj = sum(f(r, "rejections") for r in hs if f(r, "rejections") == f(r, "rejections"))
    md.append("")
    md.append(f"Errors over all handshake runs: {errs} (wsbench), Redis errors {ce:.0f}, refused upgrades {rj:.0f}. "
              "Δ wall µs per handshake = 1/(with) − 1/(without): with 1 client it is the latency the cluster path adds to one "
              "upgrade cycle; with 32 it is the throughput cost. wsguard's upgrade time is its "
              "`wsguard_handshake_duration_seconds` (accept to relay start: TLS, request, checks, Redis, backend) sum / count. Round trips are wsguard's own histogram "
              "(`wsguard_cluster_roundtrip_seconds`, acquisitions and releases, from queueing the command to handling the reply "
              "in the worker's loop).\n")

fo = [r for r in runs if r.get("part") == "fanout"]
if fo:
    n = fo[0].get("sessions", "?")
    md.append(f"## Revocation fan-out: {n} sessions over 2 replicas\n")
    md.append("The revocation `{\"client_ip\":\"127.0.0.1\"}` names every session. `admin`: POST /revoke to replica A's "
              "admin listener; `redis`: PUBLISH on the channel (as an application may). Times from that write to each "
              "session's close frame, from the kernel's receive stamp (the client's own lag is not in them; its maximum is "
              "shown). A = the replica that got the POST, B = the other one. Milliseconds.\n")
    md.append("| published with / per-IP limit | closed with 1008 | median | p99 | max | A: last close | Redis delivered it | B: first close | B: last close | client lag, max | other load, cores |")
    md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cases = []
    for r in fo:
        if r["case"] not in cases: cases.append(r["case"])
    for c in cases:
        R = [r for r in fo if r["case"] == c]
        def g(k): return [f(r, k) for r in R]
        for k in ("p50_ms", "p99_ms", "max_ms", "first_ms", "t0_max_ms", "redis_ms", "t1_first_ms", "t1_max_ms",
                  "user_p50_ms", "user_max_ms", "lag_max_ms", "loop_max_ms", "setup_s", "foreign_cores"):
            put("fanout", c, k, g(k))
        closed = f"{min(g('code1008')):.0f}/{min(g('open_at_publish')):.0f}" if R else "-"
        md.append(f"| {c} | {closed} | {fmt(med(g('p50_ms')))} ±{fmt(spread(g('p50_ms')))}% | {fmt(med(g('p99_ms')))} | "
                  f"{fmt(med(g('max_ms')))} ±{fmt(spread(g('max_ms')))}% | {fmt(med(g('t0_max_ms')))} | {fmt(med(g('redis_ms')))} | "
                  f"{fmt(med(g('t1_first_ms')))} | {fmt(med(g('t1_max_ms')))} | {fmt(med(g('lag_max_ms')))} | "
                  f"{fmt(med(g('foreign_cores')), 2)} (max {fmt(max(g('foreign_cores')), 2)}) |")
    md.append("")
    md.append("Max per repetition: " + "; ".join(
        f"{c}: " + ", ".join(fmt(f(r, 'max_ms')) for r in fo if r['case'] == c) for c in cases) + ".\n")
open(f"{res}/cluster.tsv", "w").write("\n".join(tsv) + "\n")
open(f"{res}/cluster.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
}

RAW=$RES/cluster.raw.log
if [ "${SUMMARY_ONLY:-0}" = 1 ]; then summary; exit; fi
# The revision the binary was built from: build/wsguard is taken to be the
# work tree's; for another binary say which with WSGUARD_REV.
if [ -n "${WSGUARD_BIN:-}" ]; then
    WSGUARD_REV=${WSGUARD_REV:-"unknown (WSGUARD_BIN=$WSGUARD_BIN)"}
else
    WSGUARD_REV=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src || echo +dirty)
fi
prepare
{
    echo "# date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# wsguard=$WSGUARD_REV"
    echo "# binary_sha256=$WSGUARD_SHA"
    echo "# redis=$("$REDIS_SERVER" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
    echo "# nproc=$(nproc)"
    echo "# cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "# load=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# reps=$REPS"; echo "# duration=$DURATION"; echo "# warmup=$WARMUP"
    echo "# proxy_cpu=$PROXY_CPU"; echo "# lg_cpu=$LG_CPU"; echo "# redis_cpu=$REDIS_CPU"
} > "$RAW"
log "ports: echo $ECHO_PORT, redis $REDIS_PORT, wsguard $G1_PORT/$G2_PORT, admin $A1_PORT/$A2_PORT"
start_echo
start_redis
[[ " $PARTS " == *" hs "* ]] && hs_part
[[ " $PARTS " == *" fanout "* ]] && fanout_part
stop_pid "$REDIS_PID"
stop_pid "$ECHO_PID"
echo "# quiet_skipped=$QUIET_SKIPPED" >> "$RAW"
summary
