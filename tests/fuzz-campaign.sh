#!/usr/bin/env bash
# A long property-based fuzzing campaign over the three fuzz targets:
#
#   fuzz_schedule  the cron parser and fire-time search
#   fuzz_convert   protobuf -> domain conversion and validation of requests
#   fuzz_state     State::apply over arbitrary command sequences (with
#                  clients' writes, ACL changes and audit records)
#   fuzz_acl       the ACL scope matcher and the authorization check
#
# The suite runs them with a few hundred cases each (seconds); this script
# runs them in rounds, each round with fresh random seeds and many more
# cases, until the time is up, and prints what it ran and what it found.
#
# Settings (environment):
#   FUZZ_SECONDS          campaign length (default 600); a round that has
#                         started is finished
#   FUZZ_CASES_SCHEDULE   cases per property per round (default 20000)
#   FUZZ_CASES_CONVERT    (default 5000)
#   FUZZ_CASES_STATE      (default 300; each case is a sequence of up to 60 commands)
#   FUZZ_CASES_ACL        (default 20000)
#   FUZZ_OUT              where failing rounds' logs go (default target/fuzz-campaign)
#
# A failure is a finding: its log is kept under FUZZ_OUT, and proptest saves
# the failing case's seed in tests/<target>.proptest-regressions, which every
# later run (the suite's too) replays first. The exit status is 1 if anything
# was found.
#
# Debug build on purpose: overflow checks are on, so an arithmetic overflow
# is a panic the fuzzer sees instead of a silent wrap.
set -euo pipefail

cd "$(dirname "$0")/.."

duration=${FUZZ_SECONDS:-600}
out=${FUZZ_OUT:-target/fuzz-campaign}
targets=(fuzz_schedule fuzz_convert fuzz_state fuzz_acl)
declare -A per_round=(
    [fuzz_schedule]=${FUZZ_CASES_SCHEDULE:-20000}
    [fuzz_convert]=${FUZZ_CASES_CONVERT:-5000}
    [fuzz_state]=${FUZZ_CASES_STATE:-300}
    [fuzz_acl]=${FUZZ_CASES_ACL:-20000}
)
declare -A properties cases seconds failures

mkdir -p "$out"
echo "building the fuzz targets..."
cargo test --workspace --no-run --test fuzz_schedule --test fuzz_convert --test fuzz_state 2>&1 | tail -n 1

for target in "${targets[@]}"; do
    properties[$target]=$(cargo test -q --workspace --test "$target" -- --list 2>/dev/null | grep -c ': test$')
    cases[$target]=0
    seconds[$target]=0
    failures[$target]=0
done

start=$(date +%s)
round=0
while (($(date +%s) - start < duration)); do
    round=$((round + 1))
    for target in "${targets[@]}"; do
        n=${per_round[$target]}
        log="$out/$target-round-$round.log"
        t0=$(date +%s%N)
        if PROPTEST_CASES=$n cargo test -q --workspace --test "$target" >"$log" 2>&1; then
            rm -f "$log"
            status=ok
        else
            failures[$target]=$((failures[$target] + 1))
            status="FOUND SOMETHING (log: $log)"
        fi
        t1=$(date +%s%N)
        elapsed_ms=$(((t1 - t0) / 1000000))
        seconds[$target]=$((seconds[$target] + elapsed_ms))
        cases[$target]=$((cases[$target] + n * properties[$target]))
        printf 'round %d  %-14s %7d cases x %d properties  %6.1f s  %s\n' \
            "$round" "$target" "$n" "${properties[$target]}" "$(awk "BEGIN { print $elapsed_ms / 1000 }")" "$status"
    done
done

echo
echo "campaign: $round rounds in $(($(date +%s) - start)) s (FUZZ_SECONDS=$duration)"
printf '%-14s %12s %10s %10s %9s\n' target cases seconds "cases/s" findings
total_cases=0
total_failures=0
for target in "${targets[@]}"; do
    s=$(awk "BEGIN { print ${seconds[$target]} / 1000 }")
    rate=$(awk "BEGIN { print ${cases[$target]} / ($s + 0.001) }")
    printf '%-14s %12d %10.0f %10.0f %9d\n' "$target" "${cases[$target]}" "$s" "$rate" "${failures[$target]}"
    total_cases=$((total_cases + cases[$target]))
    total_failures=$((total_failures + failures[$target]))
done
printf '%-14s %12d %10s %10s %9d\n' total "$total_cases" "" "" "$total_failures"
if ((total_failures > 0)); then
    echo "findings: see $out and tests/*.proptest-regressions"
    exit 1
fi
