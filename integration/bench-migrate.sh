#!/usr/bin/env bash
# Live-migration benchmarks (issue #11), cryo and, in the same run, CRIU where it can do the job.
#
# Usage: integration/bench-migrate.sh [--rounds N] [--lazy-mib M] [--mig-mib M] [--tcp-mib M]
#                                    [--only lazy,migrate,stopcopy,tcp]
#   CRYO=path   cryo binary (default: <repo>/target/release/cryo)
#   CRYO_B=path optional second cryo binary (a change to compare, `cryob` in the results): in
#               the stop-and-copy runs, alternately with cryo and CRIU
#   CRIU=path   optional CRIU binary (e.g. /opt/criu42/criu); runs alternately with cryo
#   BENCH_TMP   parent directory for images (default /var/tmp)
#   BENCH_KEEP  set: keep the images and logs (the path is printed at the end)
#
# 1. lazy: memhog holding M MiB (default 2048) of random anonymous memory, dumped once per
#    tool; then per round a full restore (`restore -d`: the tree runs when it returns) and a
#    lazy one (`lazy-pages` daemon, then `restore --lazy-pages -d`: the tree runs when it
#    returns, its memory arriving after). Reported: time to first instruction (the restore's
#    wall time) of each, and for lazy the time until every page is in (the daemon exits);
#    check: memhog's checksum equals the one before the dump.
# 2. migrate: migratee (integration/progs) with M MiB (default 256) rewritten page by page
#    (one page every 300 us, ~13 MiB/s) in a PID namespace of its own; `cryo migrate` to a
#    `cryo receive` on 127.0.0.1. Reported: downtime (final freeze to running on the
#    destination) with the destination restoring in full and lazily (`receive --lazy-pages`),
#    the rounds, and the time of a stop-and-copy migration of the same process
#    (dump to a page server + restore, no pre-copy) by cryo and by CRIU (CRIU cannot pre-dump
#    on a kernel without soft-dirty, such as this VM's: `criu check --feature mem_dirty_track`);
#    the dump alone (its memory stage: every page to the page server) is reported too.
#    `--only stopcopy`: the stop-and-copy runs only.
#    check: the process verifies every page after the move.
# 3. tcp: a TCP echo server (echosrv) holding M MiB (default 256) of written memory, one page
#    rewritten per turn (~1000 pages/s), in a network namespace S of its own (veth to host A)
#    and a PID namespace, with 10 live client connections from A streaming through it;
#    `cryo migrate --tcp-established` from A to `cryo receive --external veth[eth0]:OUT@BR`
#    in B (B's bridge holds the server's gateway; A's other route to the server goes through
#    B), as integration/tests/migrate.rs's a_tcp_server_moves_with_its_live_clients_connections.
#    Reported: downtime with the destination restoring in full and lazily; and a stop-and-copy of the same server (dump --tcp-established to a
#    page server in B, restore in B) by cryo and by CRIU. Checks: the moved server's every
#    page is right, every client byte came back once, in order, without an error.
# The last line of stdout is a JSON summary.
set -euo pipefail

# `lazy-pages -d` and `restore -d` leave orphans: PID 1 here reaps them only every few seconds,
# so a finished lazy-pages daemon stayed in /proc as a zombie for up to ~2 s and the "all
# pages in" time measured PID 1's reaping, not the daemon (cryo 64 MiB: 1.3-2.1 s, while its
# log said every page was in ~0.2 s after the restore; CRIU's daemon, a child of this shell,
# was reaped at once).
# Make this shell a subreaper, so it reaps them (and the daemon's exit is seen) at once.
if [ -z "${_CRYO_BENCH_SUBREAPER:-}" ] && command -v python3 >/dev/null; then
    export _CRYO_BENCH_SUBREAPER=1
    exec python3 -c 'import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # python ignores these; do not pass that on
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execv("/bin/bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
LAZY_MIB=2048
MIG_MIB=256
TCP_MIB=256
ONLY=lazy,migrate,tcp
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --lazy-mib) LAZY_MIB=$2; shift 2 ;;
        --mig-mib) MIG_MIB=$2; shift 2 ;;
        --tcp-mib) TCP_MIB=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "usage: bench-migrate.sh [--rounds N] [--lazy-mib M] [--mig-mib M] [--tcp-mib M] [--only lazy,migrate,tcp]" >&2; exit 2 ;;
    esac
done
CRYO=${CRYO:-$REPO_ROOT/target/release/cryo}
[ -x "$CRYO" ] || { echo "no cryo at $CRYO (cargo build --release)" >&2; exit 2; }
WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/cryo-bench-mig.XXXXXX")
BIN=$WORK/bin
mkdir -p "$BIN"
gcc -O2 -o "$BIN/memhog" "$REPO_ROOT/integration/progs/memhog.c"
gcc -O2 -pthread -o "$BIN/migratee" "$REPO_ROOT/integration/progs/migratee.c"
gcc -O2 -o "$BIN/echosrv" "$REPO_ROOT/integration/progs/echosrv.c"
gcc -O2 -o "$BIN/echocli" "$REPO_ROOT/integration/progs/echocli.c"
want() { [[ ",$ONLY," == *",$1,"* ]]; }
NETNS=()
TOOLS=(cryo)
[ -z "${CRIU:-}" ] || TOOLS+=(criu)
SC_TOOLS=("${TOOLS[@]}")
[ -z "${CRYO_B:-}" ] || SC_TOOLS+=(cryob)
PIDS=()
cleanup() {
    for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -9 "$p" 2>/dev/null || true; done
    for n in ${NETNS[@]+"${NETNS[@]}"}; do ip netns del "$n" 2>/dev/null || true; done
    if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {if (NR == 0) exit; if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
declare -A RES
add() { RES[$1]="${RES[$1]:-} $2"; }
med() { echo "${RES[$1]:-}" | median; }
bin() { case $1 in cryo) echo "$CRYO" ;; cryob) echo "$CRYO_B" ;; *) echo "$CRIU" ;; esac; }
wait_line() { # FILE PATTERN SECONDS
    local i
    for ((i = 0; i < $3 * 20; i++)); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}
gone() { local i; for ((i = 0; i < 600; i++)); do [ -d "/proc/$1" ] || return 0; sleep 0.05; done; return 1; }
sum_of() { # PID OUT: asks memhog for its checksum, prints it
    local n
    n=$(grep -c '^sum' "$2" || true)
    kill -USR1 "$1"
    local i
    for ((i = 0; i < 1200; i++)); do
        [ "$(grep -c '^sum' "$2" || true)" -gt "$n" ] && break
        sleep 0.05
    done
    grep '^sum' "$2" | tail -1
}
declare -A CHECK

echo "cryo migration benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, kernel $(uname -r)"
echo "  cryo: $CRYO; criu: ${CRIU:-not run}; rounds: $ROUNDS"

# --- 1. lazy restore
want lazy && echo "lazy restore: memhog $LAZY_MIB MiB"
want lazy && for t in "${TOOLS[@]}"; do
    d=$WORK/lazy-$t
    mkdir -p "$d/img"
    setsid "$BIN/memhog" "$LAZY_MIB" "$d/out" </dev/null >/dev/null 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_line "$d/out" '^ready' 120
    want=$(sum_of "$pid" "$d/out")
    "$(bin "$t")" dump -t "$pid" -D "$d/img" -o dump.log -v2 || { echo "$t dump failed" >&2; tail "$d/img/dump.log" >&2; exit 1; }
    gone "$pid"
    CHECK[lazy_$t]=PASS
    for ((r = 0; r < ROUNDS; r++)); do
        t0=$(now_us)
        "$(bin "$t")" restore -D "$d/img" -d -o restore.log -v2 || { echo "$t restore failed" >&2; exit 1; }
        add "${t}_full" $(($(now_us) - t0))
        [ "$(sum_of "$pid" "$d/out")" = "$want" ] || CHECK[lazy_$t]=FAIL
        kill -9 "$pid"; gone "$pid"
        rm -f "$d/img/lazy-pages.socket"
        if [ "$t" = cryo ]; then
            "$CRYO" lazy-pages -D "$d/img" -d -o lazy.log -v2 --pidfile lazy.pid
            lp=$(cat "$d/img/lazy.pid")
        else
            "$CRIU" lazy-pages -D "$d/img" -o lazy.log -v2 &
            lp=$!
            wait_line "$d/img/lazy.log" 'lazy-pages.socket\|Waiting for incoming' 10 || sleep 0.5
        fi
        PIDS+=("$lp")
        t0=$(now_us)
        "$(bin "$t")" restore -D "$d/img" -d --lazy-pages -o restore-lazy.log -v2 || { echo "$t lazy restore failed" >&2; tail "$d/img/restore-lazy.log" >&2; exit 1; }
        t1=$(now_us)
        add "${t}_lazy_first" $((t1 - t0))
        gone "$lp" || { echo "$t: the lazy-pages daemon did not finish" >&2; exit 1; }
        add "${t}_lazy_all" $(($(now_us) - t0))
        [ "$(sum_of "$pid" "$d/out")" = "$want" ] || CHECK[lazy_$t]=FAIL
        kill -9 "$pid"; gone "$pid"
    done
done

# --- 2. migrate
{ want migrate || want stopcopy; } && echo "migrate: migratee $MIG_MIB MiB, one page rewritten every 300 us"
start_migratee() { # DIR: prints the tree's root
    setsid unshare --pid --fork setsid "$BIN/migratee" "$MIG_MIB" "$1/out" 300 </dev/null >/dev/null 2>&1 &
    local l=$!
    PIDS+=("$l")
    wait_line "$1/out" '^ready' 60
    cat "/proc/$l/task/$l/children" | awk '{print $1}'
}
verify() { # PID OUT
    kill -USR1 "$1"
    wait_line "$2" '^verify' 120
    grep -q '^verify ok' "$2"
}
PORT=$((27300 + $$ % 1000))
want migrate && CHECK[migrate]=PASS
{ want migrate || want stopcopy; } && for ((r = 0; r < ROUNDS; r++)); do
    d=$WORK/mig-$r
    mkdir -p "$d/src" "$d/dst"
    # Twice: the destination restoring every page before the tree runs (full), and lazily
    # (`receive --lazy-pages`: a lazy-pages daemon brings the pages from the received images
    # while the tree runs).
    modes=(full lazy)
    want migrate || modes=()
    for mode in ${modes[@]+"${modes[@]}"}; do
        m=$d/$mode
        mkdir -p "$m/src" "$m/dst"
        root=$(start_migratee "$m")
        lz=()
        [ "$mode" = full ] || lz=(--lazy-pages)
        "$CRYO" receive --port $PORT --address 127.0.0.1 -D "$m/dst" -W "$m" -o receive.log -v3 ${lz[@]+"${lz[@]}"} >"$m/rx.out" 2>&1 &
        rx=$!
        wait_line "$m/receive.log" 'listening' 10 || sleep 0.5
        "$CRYO" migrate -t "$root" --to 127.0.0.1:$PORT -W "$m/src" -o migrate.log -v3 --json >"$m/mig.json" || { echo "migrate ($mode) failed" >&2; cat "$m/rx.out" >&2; exit 1; }
        wait "$rx"
        # Where the downtime goes: the final step's stages, from the freeze.
        echo "  round $r ($mode restore): $(grep -o 'stages=.*' "$m/src/migrate.log" | tail -1)"
        j=$(tail -1 "$m/mig.json")
        down=$(echo "$j" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["downtime_ms"]*1000))')
        nr=$(echo "$j" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["rounds"]))')
        fin=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["final_pages"])')
        moved=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["restored_pid"])')
        add "cryo_downtime_$mode" "$down"
        add cryo_rounds "$nr"
        add cryo_final "$fin"
        PIDS+=("$moved")
        # (lazy: the check reads every page, so it also waits for those not in yet)
        verify "$moved" "$m/out" || CHECK[migrate]=FAIL
        kill -9 "$moved"
        if [ "$mode" = lazy ]; then
            wait_line "$m/lazy-pages.log" 'every page is in' 60 || CHECK[migrate]=FAIL
        fi
    done
    # Stop-and-copy of the same process, per tool: dump to a page server, then restore.
    for t in "${SC_TOOLS[@]}"; do
        e=$d/sc-$t
        mkdir -p "$e/img" "$e/pages"
        : >"$e/out"
        root=$(start_migratee "$e")
        ps=$((PORT + 1))
        "$(bin "$t")" page-server -D "$e/pages" --address 127.0.0.1 --port $ps -o ps.log -v2 &
        psp=$!
        wait_line "$e/pages/ps.log" '.' 1 2>/dev/null || true
        t0=$(now_us)
        "$(bin "$t")" dump -t "$root" -D "$e/img" --page-server --address 127.0.0.1 --port $ps -o dump.log -v2 || { echo "$t stop-and-copy dump failed" >&2; tail "$e/img/dump.log" >&2; kill -9 $psp; continue; }
        add "${t}_sc_dump" $(($(now_us) - t0))
        wait "$psp" || true
        cp "$e/img"/*.img "$e/pages/"
        if "$(bin "$t")" restore -D "$e/pages" -d -o restore.log -v2 --pidfile rpid; then
            add "${t}_stopcopy" $(($(now_us) - t0))
            kill -9 "$(cat "$e/pages/rpid")" 2>/dev/null || true
        else
            echo "$t: stop-and-copy restore failed: $(grep -i error "$e/pages/restore.log" | tail -2)" >&2
        fi
    done
done

# --- 3. a TCP server with live clients
X=$((100 + $$ % 100))
A=cryo-bm-a-$$
B=cryo-bm-b-$$
tcp_net() { # sets up A, B (veth 10.X.0.1 <-> 10.X.0.2) and B's bridge; S per round
    local n
    for n in $A $B; do
        ip netns del "$n" 2>/dev/null || true
        ip netns add "$n"
        NETNS+=("$n")
        ip -n "$n" link set lo up
    done
    ip link add "cb${X}a" netns $A type veth peer name "cb${X}b" netns $B
    ip -n $A addr add 10.$X.0.1/24 dev "cb${X}a"
    ip -n $B addr add 10.$X.0.2/24 dev "cb${X}b"
    ip -n $A link set "cb${X}a" up
    ip -n $B link set "cb${X}b" up
    ip -n $B link add cbbr type bridge
    ip -n $B addr add 10.239.0.1/24 dev cbbr
    ip -n $B link set cbbr up
    ip netns exec $B sysctl -qw net.ipv4.ip_forward=1
}
# start_server DIR: S with its veth to A, the server in it (PID namespace of its own), the
# clients in A streaming; sets SRV (the server's root pid), CLI (the clients' pid) and OUT (the
# name of its veth's peer to make in B's bridge). Names are new each time: a namespace and
# its devices go some time after their last process.
NSRV=0
start_server() {
    local d=$1 s=cryo-bm-s-$$-$NSRV i
    local va=cs$X-$NSRV
    OUT=co$X-$NSRV
    NSRV=$((NSRV + 1))
    ip netns add $s
    NETNS+=("$s")
    ip -n $s link set lo up
    ip link add "$va" netns $A type veth peer name eth0 netns $s
    ip -n $s addr add 10.239.0.2/24 dev eth0
    ip -n $s link set eth0 up
    ip -n $s route add default via 10.239.0.1
    ip -n $A addr add 10.239.0.1/32 dev "$va"
    ip -n $A link set "$va" up
    ip -n $A route replace 10.239.0.0/24 dev "$va" src 10.$X.0.1
    ip -n $A route replace 10.239.0.0/24 via 10.$X.0.2 src 10.$X.0.1 metric 100
    : >"$d/srv.out"
    setsid nsenter --net=/run/netns/$s unshare --pid --fork setsid "$BIN/echosrv" 10.239.0.2 7300 "$d/srv.out" 2048 1000 65536 "$TCP_MIB" </dev/null >/dev/null 2>&1 &
    local l=$!
    PIDS+=("$l")
    wait_line "$d/srv.out" '^ready' 120 >&2
    SRV=
    for ((i = 0; i < 100; i++)); do
        SRV=$(awk '{print $1}' "/proc/$l/task/$l/children" 2>/dev/null)
        [ -n "$SRV" ] && break
        sleep 0.05
    done
    ip netns del $s # only the server holds S now
    setsid nsenter --net=/run/netns/$A "$BIN/echocli" 10.239.0.2 7300 10 "$d/cli.out" 1048576 2048 16384 2000 </dev/null >"$d/cli.log" 2>&1 &
    CLI=$!
    PIDS+=("$CLI")
    wait_line "$d/cli.out" '^ready' 20 >&2
    sleep 1
}
# tcp_check DIR MOVED CLIENTS: the server's pages and the clients' bytes
tcp_check() {
    local ok=0
    kill -USR1 "$2"
    wait_line "$1/srv.out" '^verify' 120 && grep -q '^verify ok' "$1/srv.out" || { echo "  server check: $(grep '^verify' "$1/srv.out")" >&2; ok=1; }
    sleep 1
    kill -USR1 "$3"
    wait_line "$1/cli.out" '^done' 90 && grep -q '^done .*errors=0' "$1/cli.out" && ! grep -q '^error' "$1/cli.out" || { echo "  clients: $(grep -E '^(done|error)' "$1/cli.out" | head -3)" >&2; ok=1; }
    kill -9 "$2" "$3" 2>/dev/null || true
    gone "$2" || true
    return $ok
}
if want tcp; then
    echo "tcp: echo server holding $TCP_MIB MiB (one page rewritten per turn), 10 live connections"
    tcp_net
    CHECK[tcp]=PASS
    TP=$((28300 + $$ % 1000))
    for ((r = 0; r < ROUNDS; r++)); do
      # The destination restoring every page before the tree runs (full), and lazily.
      for mode in full lazy; do
        m=$WORK/tcp-$r/mig-$mode
        mkdir -p "$m"
        start_server "$m"
        root=$SRV cli=$CLI
        lz=()
        [ "$mode" = full ] || lz=(--lazy-pages)
        nsenter --net=/run/netns/$B "$CRYO" receive --port $TP --address 10.$X.0.2 -D "$m/dst" -W "$m" -o receive.log -v3 --external "veth[eth0]:$OUT@cbbr" ${lz[@]+"${lz[@]}"} >"$m/rx.out" 2>&1 &
        rx=$!
        wait_line "$m/receive.log" 'listening' 10 || sleep 0.5
        if nsenter --net=/run/netns/$A "$CRYO" migrate -t "$root" --to 10.$X.0.2:$TP -W "$m" -o migrate.log -v3 --tcp-established --json >"$m/mig.json"; then
            wait "$rx" || true
            echo "  round $r ($mode restore): $(grep -o 'stages=.*' "$m/migrate.log" | tail -1)"
            j=$(tail -1 "$m/mig.json")
            add cryo_tcp_downtime_$mode "$(echo "$j" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["downtime_ms"]*1000))')"
            add cryo_tcp_rounds "$(echo "$j" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["rounds"]))')"
            add cryo_tcp_final "$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["final_pages"])')"
            moved=$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["restored_pid"])')
            PIDS+=("$moved")
            gone "$root" || true
            tcp_check "$m" "$moved" "$cli" || { echo "  ($mode)" >&2; CHECK[tcp]=FAIL; }
        else
            echo "cryo migrate (tcp, $mode) failed: $(tail -3 "$m/migrate.log")" >&2
            CHECK[tcp]=FAIL
            kill -9 "$rx" "$root" "$cli" 2>/dev/null || true
        fi
      done
        # Stop-and-copy: dump to a page server in B, restore in B.
        for t in "${TOOLS[@]}"; do
            e=$WORK/tcp-$r/sc-$t
            mkdir -p "$e/img" "$e/pages"
            start_server "$e"
            root=$SRV cli=$CLI
            nsenter --net=/run/netns/$B "$(bin "$t")" page-server -D "$e/pages" --address 10.$X.0.2 --port $((TP + 1)) -o ps.log -v2 &
            psp=$!
            wait_line "$e/pages/ps.log" '.' 1 2>/dev/null || true
            t0=$(now_us)
            if ! nsenter --net=/run/netns/$A "$(bin "$t")" dump -t "$root" -D "$e/img" --tcp-established --page-server --address 10.$X.0.2 --port $((TP + 1)) -o dump.log -v2; then
                echo "$t tcp stop-and-copy dump failed: $(grep -i error "$e/img/dump.log" | tail -2)" >&2
                kill -9 "$psp" "$root" "$cli" 2>/dev/null || true
                continue
            fi
            wait "$psp" || true
            cp "$e/img"/*.img "$e/pages/"
            if nsenter --net=/run/netns/$B "$(bin "$t")" restore -D "$e/pages" -d --tcp-established --external "veth[eth0]:$OUT@cbbr" -o restore.log -v2 --pidfile rpid; then
                add "${t}_tcp_stopcopy" $(($(now_us) - t0))
                moved=$(cat "$e/pages/rpid")
                PIDS+=("$moved")
                tcp_check "$e" "$moved" "$cli" || { echo "  ($t stop-and-copy)" >&2; CHECK[tcp_$t]=FAIL; }
            else
                echo "$t: tcp stop-and-copy restore failed: $(grep -i error "$e/pages/restore.log" | tail -2)" >&2
                kill -9 "$cli" 2>/dev/null || true
            fi
        done
    done
fi

echo
printf '%-44s %-14s %s\n' "" cryo criu
want lazy && printf '%-44s %-14s %s\n' "lazy $LAZY_MIB MiB: full restore (first instr.)" "$(ms "$(med cryo_full)") ms" "${CRIU:+$(ms "$(med criu_full)") ms}"
want lazy && printf '%-44s %-14s %s\n' "lazy $LAZY_MIB MiB: lazy restore, first instr." "$(ms "$(med cryo_lazy_first)") ms" "${CRIU:+$(ms "$(med criu_lazy_first)") ms}"
want lazy && printf '%-44s %-14s %s\n' "lazy $LAZY_MIB MiB: lazy restore, all pages in" "$(ms "$(med cryo_lazy_all)") ms" "${CRIU:+$(ms "$(med criu_lazy_all)") ms}"
want migrate && printf '%-44s %-14s %s\n' "migrate $MIG_MIB MiB: downtime (pre-copy)" "$(ms "$(med cryo_downtime_full)") ms" "${CRIU:+cannot (no soft-dirty: no pre-dump)}"
want migrate && printf '%-44s %-14s %s\n' "migrate $MIG_MIB MiB: downtime (pre-copy, lazy dest.)" "$(ms "$(med cryo_downtime_lazy)") ms" "${CRIU:+cannot (no soft-dirty: no pre-dump)}"
{ want migrate || want stopcopy; } && printf '%-44s %-14s %s\n' "migrate $MIG_MIB MiB: stop-and-copy downtime" "$(ms "$(med cryo_stopcopy)") ms" "${CRIU:+$( [ -n "$(med criu_stopcopy)" ] && echo "$(ms "$(med criu_stopcopy)") ms" || echo failed)}"
{ want migrate || want stopcopy; } && printf '%-44s %-14s %s\n' "migrate $MIG_MIB MiB: stop-and-copy, dump alone" "$(ms "$(med cryo_sc_dump)") ms" "${CRIU:+$( [ -n "$(med criu_sc_dump)" ] && echo "$(ms "$(med criu_sc_dump)") ms" || echo failed)}"
[ -n "${CRYO_B:-}" ] && { want migrate || want stopcopy; } && echo "cryob (CRYO_B): stop-and-copy $(ms "$(med cryob_stopcopy)") ms, dump alone $(ms "$(med cryob_sc_dump)") ms"
want tcp && printf '%-44s %-14s %s\n' "tcp server $TCP_MIB MiB: downtime (pre-copy)" "$(ms "$(med cryo_tcp_downtime_full)") ms" "${CRIU:+cannot (no soft-dirty: no pre-dump)}"
want tcp && printf '%-44s %-14s %s\n' "tcp server $TCP_MIB MiB: downtime (pre-copy, lazy dest.)" "$(ms "$(med cryo_tcp_downtime_lazy)") ms" "${CRIU:+cannot (no soft-dirty: no pre-dump)}"
want tcp && printf '%-44s %-14s %s\n' "tcp server $TCP_MIB MiB: stop-and-copy" "$(ms "$(med cryo_tcp_stopcopy)") ms" "${CRIU:+$( [ -n "$(med criu_tcp_stopcopy)" ] && echo "$(ms "$(med criu_tcp_stopcopy)") ms" || echo failed)}"
want tcp && echo "tcp rounds (median): $(med cryo_tcp_rounds), final pages (median): $(med cryo_tcp_final)"
want migrate && echo "migrate rounds (median): $(med cryo_rounds), final pages (median): $(med cryo_final)"
echo "checks: lazy checksum cryo ${CHECK[lazy_cryo]:-not run}${CRIU:+ criu ${CHECK[lazy_criu]:-not run}}; migrated process verified every page: ${CHECK[migrate]:-not run}; tcp server pages and clients' bytes: ${CHECK[tcp]:-not run}"
J="{\"lazy_mib\":$LAZY_MIB,\"mig_mib\":$MIG_MIB,\"tcp_mib\":$TCP_MIB,\"rounds\":$ROUNDS"
for k in cryo_full cryo_lazy_first cryo_lazy_all cryo_downtime_full cryo_downtime_lazy cryo_stopcopy cryo_sc_dump cryob_stopcopy cryob_sc_dump criu_sc_dump criu_full criu_lazy_first criu_lazy_all criu_stopcopy cryo_tcp_downtime_full cryo_tcp_downtime_lazy cryo_tcp_stopcopy criu_tcp_stopcopy; do
    m=$(med $k || true)
    [ -z "$m" ] || J="$J,\"${k}_ms\":$(ms "$m")"
done
echo "$J}"
status=0
for c in "${CHECK[@]}"; do [ "$c" = PASS ] || status=1; done
exit $status
