#!/usr/bin/env bash
# The long fuzzing run: at least 10 million inputs through cryo's image decoders, manifest
# check and restore planning (cryo-fuzz; see fuzz/src/lib.rs), built with overflow checks
# (profile "fuzz"). Makes seeds from real dumps first (fuzz-seeds.sh), replays the saved
# regressions, then runs. Prints throughput and every finding (saved under OUT, each a
# directory to replay with `target/fuzz/cryo-fuzz replay DIR`); exits 1 if there is any.
#   integration/fuzz.sh [INPUTS [JOBS [SEED]]]      (as root; default 10000000 2 1)
set -euo pipefail
cd "$(dirname "$0")/.."
inputs=${1:-10000000}
jobs=${2:-2}
seed=${3:-1}
out=${FUZZ_OUT:-target/fuzz-findings}
cargo build --release --quiet
cargo build --profile fuzz -p cryo-fuzz --quiet
seeds=target/fuzz-seeds
integration/fuzz-seeds.sh "$seeds"
target/fuzz/cryo-fuzz replay integration/fixtures/fuzz-regressions/*/
rm -rf "$out"
exec target/fuzz/cryo-fuzz run --seeds "$seeds" --inputs "$inputs" --jobs "$jobs" --seed "$seed" --out "$out"
