#!/usr/bin/env bash
# How many mutants of aegis-policy the simulator alone catches.
#
# cargo-mutants mutates aegis-policy/src (in a copy of the tree) and, for each mutant, runs only
# aegis-sim's tests/judge.rs: the shipped scenarios and AEGIS_SIM_JUDGE_SEEDS fuzz seeds, each
# run checked by the reference model, the invariants and the scenario's [expect]. No test of
# aegis-policy's own runs, so a caught mutant is one the simulator caught.
#
# Usage (from the repository root; needs `cargo install cargo-mutants`):
#   aegis-sim/mutants.sh                      # every file of aegis-policy/src but config.rs
#   aegis-sim/mutants.sh aegis-policy/src/breaker.rs aegis-policy/src/balancer.rs
#   AEGIS_SIM_JUDGE_SEEDS=2000 MUTANTS_JOBS=2 aegis-sim/mutants.sh ...   # more seeds, two builds at once
# Results: mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json).
#
# Builds use opt-level 1 without debug info: each mutant rebuilds aegis-policy and aegis-sim
# in seconds and 500 seeds run in about 4 s. The first build (every dependency) takes a few
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export AEGIS_SIM_JUDGE_SEEDS="${AEGIS_SIM_JUDGE_SEEDS:-500}"
export CARGO_PROFILE_DEV_OPT_LEVEL=1
export CARGO_PROFILE_DEV_DEBUG=0
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(auth balancer breaker health jwks path pipeline ratelimit retry router time)
    files=("${files[@]/#/aegis-policy/src/}")
    files=("${files[@]/%/.rs}")
fi
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done
# The baseline: the unmutated tree must pass. (cargo-mutants' own baseline would run the
# judge test in the mutated package, aegis-policy, which has none; so it is skipped below.)
cargo test -p aegis-sim --test judge
# MUTANTS_ARGS: more cargo-mutants options, e.g. "--iterate" (test again only the mutants
# that a previous run in this tree did not catch).
# shellcheck disable=SC2086
exec cargo mutants --workspace "${args[@]}" ${MUTANTS_ARGS:-} \
    --test-package aegis-sim --cargo-test-arg=--test=judge \
    --baseline skip --timeout 300 --build-timeout 600 --jobs "${MUTANTS_JOBS:-1}"
