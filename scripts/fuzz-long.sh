#!/usr/bin/env bash
# fuzz-long.sh [TARGET...] - the long fuzzing runs of docs/testing.md:
# every libFuzzer target (default: all of tests/fuzz/fuzz_*.c) for
# FUZZ_TIME seconds (default 600) from its checked-in corpus, then the
# inputs that add coverage merged back into tests/fuzz/corpus/<target>
# (libFuzzer -merge=1, so the checked-in corpus only grows by what is
# new). Prints and writes build/fuzz/long.tsv: target, seconds, runs,
# runs/s, edges (cov), features (ft), corpus files before and after the
# merge, crashes. A crash stops nothing: its input is left in
# build/fuzz/crashes-<target>/ and reported; make it a regression file
# (tests/fuzz/regress/<target>/) with its fix.
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZ_TIME=${FUZZ_TIME:-600}
JOBS=${JOBS:-1}
BUILD=${BUILD:-build}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
make --no-print-directory BUILD="$BUILD" \
    $(printf "$BUILD/fuzz/%s " "${targets[@]}") >/dev/null || exit 1
tsv=$BUILD/fuzz/long.tsv

one() {
    local t=$1 dir=$BUILD/fuzz/long-$1 log=$BUILD/fuzz/long-$1.log
    local dict=() before after line crashes
    rm -rf "$dir" "$BUILD/fuzz/crashes-$t"
    mkdir -p "$dir" "$BUILD/fuzz/crashes-$t" "tests/fuzz/corpus/$t"
    [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
    before=$(ls "tests/fuzz/corpus/$t" | wc -l)
    "$BUILD/fuzz/$t" "${dict[@]}" -max_total_time="$FUZZ_TIME" \
        -print_final_stats=1 -close_fd_mask=3 \
        -artifact_prefix="$BUILD/fuzz/crashes-$t/" -fork=0 \
        "$dir" "tests/fuzz/corpus/$t" >"$log" 2>&1
    crashes=$(ls "$BUILD/fuzz/crashes-$t" | wc -l)
    line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$log" | tail -n1)
    local runs cov ft secs rate
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
    cov=$(echo "$line" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$line" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    secs=${secs:-$FUZZ_TIME}
    rate=$(( ${runs:-0} / (secs > 0 ? secs : 1) ))
    # Keep what adds coverage (a minimal set of the new inputs).
    "$BUILD/fuzz/$t" -merge=1 "tests/fuzz/corpus/$t" "$dir" \
        >"$BUILD/fuzz/long-$t.merge.log" 2>&1
    after=$(ls "tests/fuzz/corpus/$t" | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "${runs:-0}" \
        "$rate" "${cov:-?}" "${ft:-?}" "$before" "$after" "$crashes" \
        >"$BUILD/fuzz/long-$t.row"
    echo "== $t: $(cat "$BUILD/fuzz/long-$t.row")"
}

export -f one
export BUILD FUZZ_TIME
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'one {}'
printf 'target\tseconds\truns\truns/s\tedges\tfeatures\tcorpus before\tcorpus after\tcrashes\n' >"$tsv"
for t in "${targets[@]}"; do cat "$BUILD/fuzz/long-$t.row" >>"$tsv"; done
column -t -s $'\t' "$tsv"
! awk -F'\t' 'NR > 1 && $9 > 0 { bad = 1 } END { exit !bad }' "$tsv"
