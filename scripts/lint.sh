#!/usr/bin/env bash
# lint.sh - static analysis of src/ (make lint): clang-tidy with the
# checked-in .clang-tidy, cppcheck with the checked-in suppression list
# (tests/lint/cppcheck.supp), and clang's static analyser (scan-build) over
# a build of its own. Every finding fails. Prints one line per tool and,
# last, "N passed, N failed" (one test per tool).
set -uo pipefail
cd "$(dirname "$0")/.."

CFLAGS_LINT="-std=c11 -D_GNU_SOURCE $(pkg-config --cflags openssl inih jansson libpcre2-8 hiredis)"
JOBS=${JOBS:-$(nproc)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
pass=0 fail=0

result() {   # name status log
    if [ "$2" -eq 0 ]; then
        echo "== lint: $1: clean"
        pass=$((pass + 1))
    else
        cat "$3"
        echo "== lint: $1: FAILED"
        fail=$((fail + 1))
    fi
}

# clang-tidy: one process per file, in parallel; any warning is an error
# (WarningsAsErrors in .clang-tidy).
ls src/*.c | xargs -P "$JOBS" -I{} sh -c \
    "clang-tidy-14 --quiet {} -- $CFLAGS_LINT >>'$out/tidy.log' 2>/dev/null || echo {} >>'$out/tidy.failed'"
rc=0
[ -s "$out/tidy.failed" ] && rc=1
grep -q "error:\|warning:" "$out/tidy.log" 2>/dev/null && rc=1
result "clang-tidy ($(ls src/*.c | wc -l) files)" "$rc" "$out/tidy.log"

# cppcheck: warning, performance and portability classes.
cppcheck --quiet --enable=warning,performance,portability --std=c11 \
    -D_GNU_SOURCE --inline-suppr --error-exitcode=1 \
    --suppressions-list=tests/lint/cppcheck.supp -I src src/*.c \
    >"$out/cppcheck.log" 2>&1
result cppcheck $? "$out/cppcheck.log"

# scan-build: the whole program built once under the analyser.
scan-build-14 -o "$out/sb" --status-bugs \
    make --no-print-directory -B BUILD="$out/build" -j"$JOBS" \
    "$out/build/wsguard" >"$out/sb.log" 2>&1
result scan-build $? "$out/sb.log"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
