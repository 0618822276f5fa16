#!/usr/bin/env bash
# Benchmark `runc checkpoint` + `runc restore -d` of the busybox bundle with cryo as runc's
# criu (and optionally CRIU under the same runc, in the same run, alternating).
#
# Usage: integration/bench-runc.sh [--rounds N] [--kind pipe|shm|binds] [--concurrent N]
#   CRYO=path   cryo binary (default: <repo>/target/release/cryo; built if missing)
#   CRIU=path   optional CRIU binary; when set, each round checkpoints and restores the same
#               container once with CRIU and once with cryo, and the table shows
#               criu_time / cryo_time (>1: cryo is faster)
#   BENCH_TMP   parent directory for bundles and images (default /var/tmp; not tmpfs)
#
# --concurrent N: N containers (issue #13 item 5); each round checkpoints them one after
#               another, restores them one after another, then checkpoints all N at once (N
#               runc processes, N cryo or CRIU processes) and restores all N at once. The
#               table shows the totals, and concurrent / (sequential / cores): the target is
#               at most 1.5 (no global lock, no shared temp path).
#
# One discarded warm-up round, then N (default 10) measured ones; medians are reported.
# Every restore is checked: `runc state` must say running. The last line of stdout is a JSON
# summary. Needs root, runc (integration/setup.sh installs it) and busybox-static.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=10
KIND=pipe
CONC=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --kind) KIND=$2; shift 2 ;;
        --concurrent) CONC=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-runc.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench-runc.sh: --rounds takes a positive integer" >&2; exit 2; }
[[ $CONC =~ ^[0-9]+$ ]] || { echo "bench-runc.sh: --concurrent takes a number of containers" >&2; exit 2; }
command -v runc >/dev/null || { echo "bench-runc.sh: runc not found (run integration/setup.sh)" >&2; exit 1; }

CRYO=${CRYO:-$REPO_ROOT/target/release/cryo}
(cd "$REPO_ROOT" && cargo build --release --quiet -p cryo -p integration --bin mkbundle)
MKBUNDLE=$REPO_ROOT/target/release/mkbundle
TMP=$(mktemp -d "${BENCH_TMP:-/var/tmp}/cryo-bench-runc.XXXXXX")
ID=cryo-bench-$$
cleanup() {
    runc delete -f "$ID" >/dev/null 2>&1 || true
    for k in $(seq 1 "$CONC"); do runc delete -f "$ID-$k" >/dev/null 2>&1 || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/host"
"$MKBUNDLE" "$KIND" "$TMP/bundle" "$TMP/host" >/dev/null
now() { date +%s%N; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

if [ "$CONC" -gt 0 ]; then
    # N containers of the same bundle (runc keeps each one's state apart by its ID).
    for k in $(seq 1 "$CONC"); do
        runc run -d --bundle "$TMP/bundle" "$ID-$k" </dev/null >/dev/null 2>&1
    done
    sleep 0.3
    TOOLS=(cryo)
    declare -A BIN=([cryo]=$CRYO)
    if [ -n "${CRIU:-}" ]; then TOOLS=(criu cryo); BIN[criu]=$CRIU; fi
    declare -A SEQ PAR
    one_ck() { # tool k img
        runc --criu "${BIN[$1]}" checkpoint --image-path "$3" "$ID-$2" 2>"$3.err" || {
            echo "bench-runc.sh: $1 checkpoint of $ID-$2 failed: $(cat "$3.err")" >&2
            grep -h Error "$3/dump.log" >&2 || true
            return 1
        }
    }
    one_rs() { # tool k img
        runc --criu "${BIN[$1]}" restore -d --image-path "$3" --bundle "$TMP/bundle" "$ID-$2" \
            </dev/null >/dev/null 2>"$3.err" || {
            echo "bench-runc.sh: $1 restore of $ID-$2 failed: $(cat "$3.err")" >&2
            grep -h Error "$3/restore.log" >&2 || true
            return 1
        }
        runc state "$ID-$2" | grep -q '"status": "running"' || {
            echo "bench-runc.sh: $1: $ID-$2 is not running after its restore" >&2
            return 1
        }
    }
    all() { # tool what(ck|rs) par(0|1) i
        local t=$1 pids=() k
        for k in $(seq 1 "$CONC"); do
            if [ "$3" = 1 ]; then
                "one_$2" "$t" "$k" "$TMP/img-$t-$4-p-$k" & pids+=($!)
            else
                "one_$2" "$t" "$k" "$TMP/img-$t-$4-s-$k" || exit 1
            fi
        done
        for k in "${pids[@]}"; do wait "$k" || exit 1; done
    }
    for i in $(seq 0 "$ROUNDS"); do
        for t in "${TOOLS[@]}"; do
            a=$(now); all "$t" ck 0 "$i"; all "$t" rs 0 "$i"; b=$(now)
            all "$t" ck 1 "$i"; all "$t" rs 1 "$i"; c=$(now)
            rm -rf "$TMP"/img-"$t"-"$i"-*
            if [ "$i" -gt 0 ]; then
                SEQ[$t]+=" $(((b - a) / 1000))"
                PAR[$t]+=" $(((c - b) / 1000))"
            fi
        done
    done
    CORES=$(nproc)
    printf '%-40s %12s %12s %18s\n' "$CONC containers ($KIND), $CORES cores" sequential concurrent "conc/(seq/cores)"
    json="{\"rounds\": $ROUNDS, \"kind\": \"$KIND\", \"containers\": $CONC, \"cores\": $CORES"
    for t in "${TOOLS[@]}"; do
        s_=$(echo "${SEQ[$t]}" | median)
        p_=$(echo "${PAR[$t]}" | median)
        r_=$(awk -v p="$p_" -v s="$s_" -v n="$CORES" 'BEGIN {printf "%.2f", p / (s / n)}')
        printf '%-40s %9.1f ms %9.1f ms %18s\n' "$t: checkpoint + restore of all" \
            "$(awk -v v="$s_" 'BEGIN {print v / 1000}')" "$(awk -v v="$p_" 'BEGIN {print v / 1000}')" "$r_"
        json+=", \"${t}_sequential_us\": $s_, \"${t}_concurrent_us\": $p_"
    done
    echo "$json}"
    exit 0
fi

runc run -d --bundle "$TMP/bundle" "$ID" </dev/null >/dev/null 2>&1
sleep 0.3

TOOLS=(cryo)
declare -A BIN=([cryo]=$CRYO)
if [ -n "${CRIU:-}" ]; then
    TOOLS=(criu cryo)
    BIN[criu]=$CRIU
fi
declare -A CK RS
for t in "${TOOLS[@]}"; do CK[$t]=""; RS[$t]=""; done

round() { # tool index -> appends ms to CK/RS unless warm-up
    local t=$1 i=$2 img="$TMP/img-$1-$2" a b c
    a=$(now)
    if ! runc --criu "${BIN[$t]}" checkpoint --image-path "$img" "$ID" 2>"$TMP/err"; then
        echo "bench-runc.sh: $t checkpoint failed: $(cat "$TMP/err")" >&2
        grep -h Error "$img/dump.log" >&2 || true
        exit 1
    fi
    b=$(now)
    if ! runc --criu "${BIN[$t]}" restore -d --image-path "$img" --bundle "$TMP/bundle" "$ID" \
        </dev/null >/dev/null 2>"$TMP/err"; then
        echo "bench-runc.sh: $t restore failed: $(cat "$TMP/err")" >&2
        grep -h Error "$img/restore.log" >&2 || true
        exit 1
    fi
    c=$(now)
    runc state "$ID" | grep -q '"status": "running"' || {
        echo "bench-runc.sh: $t: the restored container is not running" >&2
        exit 1
    }
    rm -rf "$img"
    if [ "$i" -gt 0 ]; then
        CK[$t]+=" $(((b - a) / 1000))"
        RS[$t]+=" $(((c - b) / 1000))"
    fi
}

for i in $(seq 0 "$ROUNDS"); do
    for t in "${TOOLS[@]}"; do round "$t" "$i"; done
done

printf '%-28s %12s %12s %10s\n' "runc + busybox ($KIND)" cryo criu criu/cryo
json="{\"rounds\": $ROUNDS, \"kind\": \"$KIND\""
for what in checkpoint restore; do
    if [ $what = checkpoint ]; then c=$(echo "${CK[cryo]}" | median); else c=$(echo "${RS[cryo]}" | median); fi
    r="-"; ratio="-"
    if [ -n "${CRIU:-}" ]; then
        if [ $what = checkpoint ]; then r=$(echo "${CK[criu]}" | median); else r=$(echo "${RS[criu]}" | median); fi
        ratio=$(awk -v a="$r" -v b="$c" 'BEGIN {printf "%.2fx", a / b}')
        json+=", \"${what}_criu_us\": $r"
    fi
    printf '%-28s %10.1f ms %12s %10s\n' "runc $what" "$(awk -v v="$c" 'BEGIN {print v / 1000}')" \
        "$( [ "$r" = - ] && echo - || awk -v v="$r" 'BEGIN {printf "%.1f ms", v / 1000}')" "$ratio"
    json+=", \"${what}_cryo_us\": $c"
done
echo "$json}"
