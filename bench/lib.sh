# bench/lib.sh - shared by bench/ab.sh and bench/together.sh (sourced).
# Needs ROOT, TMP, MODE, SECS, PROXY_CPU, LG_CPU, ECHO_PORT and a PIDS
# array; the settings are those of bench/run.sh (TLS 1.3, Origin check and
# HS256 JWT on, one worker).
SECRET=wsbench-hs256-secret-0123456789abcdef
ORIGIN=https://bench.example
WSBENCH=$ROOT/bench/build/wsbench; WSECHO=$ROOT/bench/build/wsecho

bench_tools() {
    [ -x "$WSBENCH" ] && [ -x "$WSECHO" ] || make -s -C "$ROOT/bench" >/dev/null
}

# make_cert: an ECDSA P-256 certificate for localhost in TMP (cert.pem,
# key.pem, combined.pem for HAProxy)
make_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || return 1
    cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/combined.pem"
}

wait_port() {
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: port $1 did not open" >&2; exit 1
}

start_echo() {
    taskset -c "$LG_CPU" "$WSECHO" -q -l 127.0.0.1:"$ECHO_PORT" &
    PIDS+=("$!")
    wait_port "$ECHO_PORT"
}

# start_wsguard BINARY PORT: one worker on PROXY_CPU; sets SPID
start_wsguard() {
    env WSGUARD_ORIGIN_ALLOW=$ORIGIN WSGUARD_ORIGIN_ALLOW_MISSING=no \
        WSGUARD_JWT_ENABLED=yes WSGUARD_JWT_ALGORITHMS=HS256 WSGUARD_JWT_SECRET=$SECRET \
        WSGUARD_LIMITS_MAX_PAYLOAD=1m WSGUARD_SERVER_MAX_CONNECTIONS=100000 \
        WSGUARD_SERVER_IDLE_TIMEOUT=5m WSGUARD_ADMIN_LISTEN= \
        WSGUARD_SERVER_LISTEN=127.0.0.1:"$2" WSGUARD_SERVER_WORKERS=1 \
        WSGUARD_BACKEND_URL=ws://127.0.0.1:"$ECHO_PORT" \
        WSGUARD_TLS_CERT="$TMP/cert.pem" WSGUARD_TLS_KEY="$TMP/key.pem" \
        WSGUARD_TLS_MIN_VERSION=TLSv1.3 WSGUARD_SERVER_DRAIN_TIMEOUT=0 \
        WSGUARD_LOG_LEVEL=error WSGUARD_LOG_ACCESS_LOG=off \
        taskset -c "$PROXY_CPU" "$1" -c "$ROOT/conf/wsguard.ini" 2>>"$TMP/wsguard.err" &
    SPID=$!; PIDS+=("$SPID")
    wait_port "$2"
}

# load PORT PID OUT: one wsbench run on LG_CPU against the proxy on PORT
# (PID: the process whose CPU time counts); OUT gets the figure per proxy
# CPU-second on its first line, and "ERR" on another if wsbench saw errors.
load() {
    local args key
    if [ "$MODE" = hs ]; then
        args=(-m handshake -c 32 --resume); key=hs_per_cpu_s
    else
        args=(-m throughput -c 50 -d 16 -s 64); key=msg_per_cpu_s
    fi
    taskset -c "$LG_CPU" "$WSBENCH" "${args[@]}" -T "$SECS" -w 1 \
        -t 127.0.0.1:"$1" --tls --pid "$2" --origin "$ORIGIN" --token-in query \
        --jwt-secret "$SECRET" > "$3.raw"
    tr ' ' '\n' < "$3.raw" | sed -n "s/^$key=//p" > "$3"
    grep -q ' errors=0 ' "$3.raw" || echo "ERR" >> "$3"
}

# median_of LABEL: the median, min and max of the ratios on stdin
median_of() {
    sort -n | awk -v label="$1" '{v[NR]=$1} END {
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
        printf "%s %.3f (min %.3f, max %.3f, %d rounds)\n", label, m, v[1], v[NR], NR }'
}
