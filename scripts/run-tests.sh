#!/usr/bin/env bash
# run-tests.sh BUILD - run every test of wsguard against the programs in
# BUILD (built by `make test` / `make asan`):
#   1. the cmocka unit programs BUILD/tests/test_*
#   2. the fuzz replay programs BUILD/regress/fuzz_X over the checked-in
#      corpus tests/fuzz/corpus/fuzz_X and saved crashes tests/fuzz/regress/fuzz_X
#   3. the integration tests (pytest, tests/integration) against BUILD/wsguard
#   4. the 60-second soak (tests/soak/run.py) against BUILD/wsguard
# Prints a summary per part and, as its very last line, "N passed, N failed";
# exits non-zero if anything failed.
set -uo pipefail

BUILD=${1:?usage: run-tests.sh BUILD_DIR}
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
[ -d "$BUILD" ] || { echo "run-tests: no such directory: $BUILD" >&2; exit 2; }
BUILD_ABS=$(cd "$BUILD" && pwd)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

total_pass=0
total_fail=0
summary=()

# --- 1. unit tests (cmocka) -------------------------------------------------
u_pass=0 u_fail=0 u_progs=0
for prog in "$BUILD"/tests/test_*; do
    [ -f "$prog" ] && [ -x "$prog" ] || continue
    case "$prog" in *.d|*.o) continue ;; esac
    u_progs=$((u_progs + 1))
    name=$(basename "$prog")
    echo "== unit: $name"
    "$prog" >"$out/unit.log" 2>&1
    rc=$?
    cat "$out/unit.log"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test.*/\1/p' "$out/unit.log" | tail -n1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test.*/\1/p' "$out/unit.log" | tail -n1)
    p=${p:-0} f=${f:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        # crashed, aborted by a sanitizer, or failed without saying so
        echo "== unit: $name exited with status $rc"
        f=1
    fi
    u_pass=$((u_pass + p)) u_fail=$((u_fail + f))
done
summary+=("unit tests ($u_progs programs): $u_pass passed, $u_fail failed")

# --- 2. fuzz regression replays -------------------------------------------
r_pass=0 r_fail=0
for prog in "$BUILD"/regress/fuzz_*; do
    [ -f "$prog" ] && [ -x "$prog" ] || continue
    case "$prog" in *.d|*.o) continue ;; esac
    name=$(basename "$prog")
    echo "== fuzz replay: $name"
    if "$prog" "tests/fuzz/corpus/$name" "tests/fuzz/regress/$name"; then
        r_pass=$((r_pass + 1))
    else
        echo "== fuzz replay: $name FAILED (status $?)"
        r_fail=$((r_fail + 1))
    fi
done
summary+=("fuzz replays: $r_pass passed, $r_fail failed")

# --- 3. integration tests (pytest) ------------------------------------------
echo "== integration: pytest tests/integration (WSGUARD_BIN=$BUILD_ABS/wsguard)"
WSGUARD_BIN="$BUILD_ABS/wsguard" "$PYTHON" -m pytest -q tests/integration \
    2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
# The closing line, e.g. "2 failed, 40 passed, 1 error in 12.3s".
last=$(grep -E '^=*[ ]*[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)(,| in )' \
    "$out/pytest.log" | tail -n1)
count() { echo "$last" | grep -oE "[0-9]+ $1" | head -n1 | grep -oE '^[0-9]+' || echo 0; }
i_pass=$(count passed)
i_fail=$(( $(count failed) + $(count 'errors?') ))
case "$rc" in
0|1|5) ;;
*)  [ "$i_fail" -eq 0 ] && i_fail=1
    echo "== integration: pytest exited with status $rc" ;;
esac
if [ "$rc" -eq 1 ] && [ "$i_fail" -eq 0 ]; then
    i_fail=1
fi
[ "$rc" -eq 5 ] && echo "== integration: no tests collected"
summary+=("integration tests: $i_pass passed, $i_fail failed")

# --- 4. soak (tests/soak/run.py, 60 s; SOAK_TIME=N to change, 0 to skip) -----
# 2,000 sessions with faults through BUILD/wsguard; counted as one test.
s_pass=0 s_fail=0
SOAK_TIME=${SOAK_TIME:-60}
if [ "$SOAK_TIME" != 0 ]; then
    echo "== soak: tests/soak/run.py --duration $SOAK_TIME (wsguard $BUILD_ABS/wsguard)"
    if ! make --no-print-directory -C bench build/wsecho build/wssoak \
            >"$out/soak-build.log" 2>&1; then
        cat "$out/soak-build.log"
        echo "== soak: building bench/build/wssoak failed"
        s_fail=1
    elif "$PYTHON" tests/soak/run.py --duration "$SOAK_TIME" \
            --wsguard "$BUILD_ABS/wsguard"; then
        s_pass=1
    else
        s_fail=1
    fi
    summary+=("soak (${SOAK_TIME} s): $s_pass passed, $s_fail failed")
else
    summary+=("soak: skipped (SOAK_TIME=0)")
fi

total_pass=$((u_pass + r_pass + i_pass + s_pass))
total_fail=$((u_fail + r_fail + i_fail + s_fail))

echo
echo "== summary"
for s in "${summary[@]}"; do
    echo "   $s"
done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
