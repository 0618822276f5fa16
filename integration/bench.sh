#!/usr/bin/env bash
# Benchmark cryo (and optionally CRIU) dump/restore.
#
# Usage: integration/bench.sh [--only SCENARIOS] [--rounds N] [--mib M] [--procs P[,P...]]
#                             [--threads T[,T...]] [--json FILE]
#   CRYO=path   cryo binary (default: <repo>/target/release/cryo; run `cargo build --release` first)
#   CRIU=path   optional CRIU binary; when set, CRIU runs alternately with cryo on the same
#               workloads and the table shows criu_time / cryo_time (>1: cryo is faster)
#   BENCH_TMP   parent directory for images (default /var/tmp; must not be tmpfs)
#
# Scenarios, each preceded by one discarded warm-up round, reporting the median:
#   1. fixed cost: `sleep 1000` (setsid, stdio /dev/null): dump and restore wall time (N=5)
#   2. memory: memhog holding M MiB (default 2048) of random anonymous memory: dump and restore
#      wall time and GB/s (10^9 B/s), memory checksum before dump == after restore (N=3),
#      and each tool's peak RSS while dumping and restoring (GNU time's %M, /usr/bin/time),
#      and cryo's CPU time (user + system) with the GB it moves per CPU-second (what a loaded
#      machine distorts least; CRIU's is not comparable: its parasite and restored tasks do
#      its work and are not counted)
#   2b. tmem, zmem: memhog holding 1024 MiB of compressible text (words and numbers): dump and
#      restore wall time and GB/s, image size, checksum; tmem with the plain format, zmem with
#      cryo's `--compress` (CRIU, when set, dumps plain in both: it has no compression) (N=3)
#   2c. zeromem, filemem, shmem: memhog holding 1024 MiB of other kinds of memory, every page
#      present: anonymous pages written with zeros; a private mapping of a (sparse) file
#      written whole with random data (copy-on-write pages); shared anonymous memory (shmem)
#      with random data: dump and restore wall time and GB/s, image size, checksum (N=3)
#   3. tree: fanout, a tree of P (default 100) processes by fork fan-out, all idle in sigsuspend():
#      dump and restore wall time; check: all P PIDs back, every child with the root as parent (N=3)
#   4. threads: manythreads, one process with T (default 1000) threads (64 KiB stacks) idle in
#      pause(): dump and restore wall time; check: /proc/PID/task has T+1 entries (N=3)
#   --procs and --threads take comma lists (--procs 10,100,1000): the scenario runs once per
#   size, and its rows and JSON keys carry the size (tree100_dump_ms); with one size the keys
#   are tree_* and threads_* as before.
#   5. net: `sleep 1000` in a network namespace of its own with a veth (peer in a "host"
#      namespace the script makes), IPv4 and IPv6 addresses, 5 routes, an nftables table and a
#      changed sysctl; each tool runs in the host namespace (nsenter), locks with nftables, and
#      restores the peer there (--external veth[v0]:NAME); check: the restored namespace has
#      the address and the 5 routes (N=5)
#   6. tcp: echosrv, a TCP echo server in a network namespace made by the bench, with C (default
#      50) connections from echocli in another namespace (joined by a veth pair) streaming
#      through it; one of them plays ping-pong. Dump with --tcp-established (the namespace is
#      external: --external net[INO]:srvnet, restored with --inherit-fd) while bytes are in
#      flight, restore: dump and restore wall time, and the longest a ping request was stalled
#      (the clients' maxrtt, across dump + restore); check: every byte came back once, in
#      order, no error (N=5)
# --only takes a comma list of fixed,mem,tmem,zmem,zeromem,filemem,shmem,tree,threads,net,tcp
# (default: all of them).
# --json FILE also writes the JSON summary (the last line of stdout) to FILE.
# --rounds N sets N for every scenario. Dumps go to the page cache (no sync), restores read it back
# from the page cache. The last line of stdout is a JSON summary. Exits non-zero if any check
# (checksum, tree, threads) fails or any dump/restore fails (the command, its output and its log
# are printed).
# Needs root, gcc and (for fast reaping of restored processes) python3.
set -euo pipefail

# Restored processes are reparented to the nearest subreaper. Make this shell one, so it reaps
# them at once (PID 1 here reaps orphans only every few seconds).
if [ -z "${_CRYO_BENCH_SUBREAPER:-}" ] && command -v python3 >/dev/null; then
    export _CRYO_BENCH_SUBREAPER=1
    exec python3 -c 'import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # python ignores these; do not pass that on
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
os.execv("/bin/bash", ["bash"] + sys.argv[1:])' "$0" "$@"
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS_FIXED=5
ROUNDS_MEM=3
ROUNDS_TREE=3
ROUNDS_THREADS=3
ROUNDS_NET=5
MIB=2048
PROCS_LIST=100
THREADS_LIST=1000
ONLY=fixed,mem,tmem,zmem,zeromem,filemem,shmem,tree,threads,net,tcp
ZMIB=1024
JSON_OUT=""
ROUNDS_TCP=5
NCONN=50
USAGE="usage: bench.sh [--only fixed,mem,tmem,zmem,zeromem,filemem,shmem,tree,threads,net,tcp] [--rounds N] [--mib M] [--procs P] [--threads T] [--conns C]"
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || [[ $1 == -h || $1 == --help ]] || { echo "bench.sh: $1 needs a value ($USAGE)" >&2; exit 2; }
    case $1 in
        --only) ONLY=$2; shift 2 ;;
        --rounds) ROUNDS_FIXED=$2; ROUNDS_MEM=$2; ROUNDS_TREE=$2; ROUNDS_THREADS=$2; ROUNDS_NET=$2; ROUNDS_TCP=$2; shift 2 ;;
        --conns) NCONN=$2; shift 2 ;;
        --mib) MIB=$2; shift 2 ;;
        --procs) PROCS_LIST=$2; shift 2 ;;
        --threads) THREADS_LIST=$2; shift 2 ;;
        --json) JSON_OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 ($USAGE)" >&2; exit 2 ;;
    esac
done
for v in "$ROUNDS_FIXED" "$MIB" ${PROCS_LIST//,/ } ${THREADS_LIST//,/ }; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --rounds, --mib, --procs and --threads take positive integers" >&2; exit 2; }
done
# SCEN: selected scenarios in run order; KIND: scenario -> kind (the prefix of its result keys)
declare -A KIND=([fixed]=sleep [mem]=mem [tmem]=tmem [zmem]=zmem [zeromem]=zeromem [filemem]=filemem [shmem]=shmem [tree]=tree [threads]=threads [net]=net [tcp]=tcp) WANT=()
for sc in ${ONLY//,/ }; do
    [ -n "${KIND[$sc]:-}" ] || { echo "bench.sh: unknown scenario '$sc' in --only (fixed,mem,tmem,zmem,zeromem,filemem,shmem,tree,threads,net,tcp)" >&2; exit 2; }
    WANT[$sc]=1
done
SCEN=()
for sc in fixed mem tmem zmem zeromem filemem shmem tree threads net tcp; do [ -z "${WANT[$sc]:-}" ] || SCEN+=("$sc"); done
[ ${#SCEN[@]} -gt 0 ] || { echo "bench.sh: --only selects no scenario" >&2; exit 2; }
wants() { [ -n "${WANT[$1]:-}" ]; }

CRYO=${CRYO:-$REPO_ROOT/target/release/cryo}
[ -x "$CRYO" ] || { echo "bench.sh: $CRYO not found; run cargo build --release or set CRYO" >&2; exit 2; }
TOOLS=(cryo)
declare -A BIN=([cryo]=$CRYO)
if [ -n "${CRIU:-}" ]; then
    [ -x "$CRIU" ] || { echo "bench.sh: CRIU=$CRIU is not executable" >&2; exit 2; }
    TOOLS+=(criu)
    BIN[criu]=$CRIU
fi

WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/cryo-bench.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK")
KEEP_WORK=0
CUR_PID=""   # the workload's PIDs (or its restored copy's) currently alive, killed on exit
HOSTNS=""   # the net scenario's "host" network namespace (ip netns), deleted on exit
NETA="cryo-bench-a-$$" NETB="cryo-bench-b-$$"
cleanup() {
    if [ -n "$CUR_PID" ]; then kill -9 $CUR_PID 2>/dev/null || true; fi
    if [ -n "$HOSTNS" ]; then ip netns del "$HOSTNS" 2>/dev/null || true; fi
    ip netns del "$NETA" 2>/dev/null || true
    ip netns del "$NETB" 2>/dev/null || true
    if [ "$KEEP_WORK" = 1 ]; then echo "bench.sh: kept $WORK for inspection" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
if [ "$FSTYPE" = tmpfs ]; then echo "bench.sh: $WORK is on tmpfs; set BENCH_TMP to a disk directory" >&2; exit 2; fi
avail_mib=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
if wants mem && [ $((MIB * 3)) -gt "$avail_mib" ]; then
    echo "bench.sh: warning: ${MIB} MiB workload + images + restore need ~$((MIB * 3)) MiB, only ${avail_mib} MiB available" >&2
fi
{ ! wants mem && ! wants tmem && ! wants zmem && ! wants zeromem && ! wants filemem && ! wants shmem; } || gcc -O2 -o "$WORK/memhog" "$REPO_ROOT/integration/progs/memhog.c"
! wants tree || gcc -O2 -o "$WORK/fanout" "$REPO_ROOT/integration/progs/fanout.c"
! wants threads || gcc -O2 -pthread -o "$WORK/manythreads" "$REPO_ROOT/integration/progs/manythreads.c"
if wants net; then
    for t in ip nft nsenter unshare; do
        command -v $t >/dev/null || { echo "bench.sh: the net scenario needs $t (integration/setup.sh)" >&2; exit 2; }
    done
    HOSTNS=cryo-bench-$$
    ip netns add "$HOSTNS"
    ip -n "$HOSTNS" link set lo up
fi
if wants tcp; then
    for t in ip nft nsenter; do
        command -v $t >/dev/null || { echo "bench.sh: the tcp scenario needs $t (integration/setup.sh)" >&2; exit 2; }
    done
    gcc -O2 -o "$WORK/echosrv" "$REPO_ROOT/integration/progs/echosrv.c"
    gcc -O2 -o "$WORK/echocli" "$REPO_ROOT/integration/progs/echocli.c"
    # Two namespaces standing for two hosts, joined by a veth pair.
    ip netns add "$NETA"; ip netns add "$NETB"
    ip link add "cbv$$" type veth peer name "cbw$$"
    ip link set "cbv$$" netns "$NETA"; ip link set "cbw$$" netns "$NETB"
    ip -n "$NETA" addr add 10.97.0.1/24 dev "cbv$$"; ip -n "$NETB" addr add 10.97.0.2/24 dev "cbw$$"
    for ns in "$NETA" "$NETB"; do ip -n "$ns" link set lo up; done
    ip -n "$NETA" link set "cbv$$" up; ip -n "$NETB" link set "cbw$$" up
    NETA_INO=$(stat -L -c %i "/run/netns/$NETA")
fi

now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }

# Starts "$@" in a new session with stdio on /dev/null and every other fd closed; sets PID.
start_workload() {
    (
        for fd in $(ls "/proc/$BASHPID/fd"); do
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        exec setsid "$@" </dev/null >/dev/null 2>&1
    ) &
    PID=$!
    CUR_PID=$PID
    disown "$PID"   # no "Killed" job notices; this shell (a subreaper) still reaps it
}

# wait_lines FILE N PID: until FILE has N lines (memhog output), at most 120 s.
wait_lines() {
    local deadline=$((SECONDS + 120))
    while [ "$(wc -l <"$1")" -lt "$2" ]; do
        if [ $SECONDS -ge $deadline ]; then
            {
                echo "bench.sh: timeout waiting for $1 to reach $2 lines; it holds:"; cat "$1"
                echo "process $3:"; grep -E '^(State|PPid|SigQ|SigPnd|ShdPnd|SigBlk|SigIgn|SigCgt)' "/proc/$3/status" 2>&1 || true
                echo "wchan: $(cat "/proc/$3/wchan" 2>&1)"; ls -l "/proc/$3/fd" 2>&1 || true
            } >&2
            KEEP_WORK=1
            exit 1
        fi
        sleep 0.01
    done
}

# Until PID sleeps in its wait (rt_sigsuspend, 130). memhog blocks SIGUSR1 outside the wait, so
# no request is lost; waiting here also means every tool dumps it idle, the same way.
wait_in_pause() {
    local deadline=$((SECONDS + 60))
    until [ "$(cut -d' ' -f1 "/proc/$1/syscall" 2>/dev/null)" = 130 ]; do
        [ $SECONDS -lt $deadline ] || { echo "bench.sh: process $1 not waiting in sigsuspend() after 60 s: $(cat "/proc/$1/syscall" 2>&1)" >&2; exit 1; }
        sleep 0.001
    done
}

# all_idle PID...: every thread of every PID sleeps in pause() (34) or rt_sigsuspend() (130).
all_idle() {
    local p
    for p in "$@"; do
        awk 'FNR == 1 && $1 != 34 && $1 != 130 {bad = 1} END {exit bad}' /proc/"$p"/task/*/syscall 2>/dev/null || return 1
    done
}

# wait_all_idle PID...: until all_idle PID..., at most 60 s.
wait_all_idle() {
    local deadline=$((SECONDS + 60))
    until all_idle "$@"; do
        [ $SECONDS -lt $deadline ] || { echo "bench.sh: not every thread of $# processes (first $1) idle in pause()/sigsuspend() after 60 s" >&2; exit 1; }
        sleep 0.005
    done
}

# tree_check ROOT CHILD...: prints how many of the CHILD PIDs are missing or not children of ROOT.
tree_check() {
    local root=$1 c pp bad=0; shift
    [ -e "/proc/$root" ] || bad=1
    for c in "$@"; do
        pp=$(sed 's/.*) //' "/proc/$c/stat" 2>/dev/null | cut -d' ' -f2) || true
        [ "$pp" = "$root" ] || bad=$((bad + 1))
    done
    echo "$bad"
}

# Until PID is dead (zombie or gone); "gone" also requires it to be reaped.
wait_dead() {
    local deadline=$((SECONDS + 30)) st
    while [ -e "/proc/$1" ]; do
        st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
        if [ "$2" = dead ] && [ "$st" = Z ]; then return 0; fi
        [ $SECONDS -lt $deadline ] || { echo "bench.sh: process $1 still present (state $st) after 30 s" >&2; exit 1; }
        sleep 0.005
    done
}

# fail TOOL WHAT DIR CMD...: print the failed command, its output and log, and exit.
fail() {
    local tool=$1 what=$2 dir=$3 log=$4; shift 4
    {
        echo
        echo "FAILED: $tool $what"
        echo "command: $*"
        echo "--- stdout"; cat "$dir/$what.out" 2>/dev/null || true
        echo "--- stderr"; cat "$dir/$what.err" 2>/dev/null || true
        echo "--- last 40 lines of $log"; tail -n 40 "$log" 2>/dev/null || true
    } >&2
    KEEP_WORK=1
    exit 1
}

# results: RES[tool,metric] = space-separated list of values in us (measured rounds only)
declare -A RES
declare -A CHECK
add() { RES[$1,$2]="${RES[$1,$2]:-} $3"; }

# one_round TOOL KIND(sleep|mem|tree|threads) MEASURED(0|1)
one_round() {
    local tool=$1 kind=$2 measured=$3 bin=${BIN[$1]}
    local dir="$WORK/$tool-$kind"
    rm -rf "$dir"
    mkdir -p "$dir/img"
    local extra=()
    if [ "$tool" = cryo ]; then extra=(--json); fi
    if [ "$tool" = cryo ] && [ "$kind" = zmem ]; then extra+=(--compress); fi
    local sum1="" sum2="" pids
    local in_host=() net_extra=()
    if [ "$kind" = sleep ]; then
        start_workload sleep 1000
        while [ "$(cat "/proc/$PID/comm" 2>/dev/null)" != sleep ]; do sleep 0.001; done
    elif [ "$kind" = net ]; then
        start_workload unshare -n sleep 1000
        while [ "$(cat "/proc/$PID/comm" 2>/dev/null)" != sleep ]; do sleep 0.001; done
        local peer=vb$RANDOM n="nsenter --net=/proc/$PID/ns/net" i
        ip link add v0 netns "$PID" type veth peer name "$peer" netns "$HOSTNS"
        ip -n "$HOSTNS" link set "$peer" up   # routes saved without linkdown (CRIU needs it)
        $n ip link set lo up
        $n ip link set v0 up
        $n ip addr add 10.212.0.2/24 dev v0
        $n ip addr add fd21:2::2/64 dev v0 nodad
        for i in 1 2 3 4 5; do $n ip route add "10.21$i.0.0/16" via 10.212.0.1; done
        $n sysctl -qw net.ipv4.conf.v0.rp_filter=2
        $n nft add table inet app
        $n nft add chain inet app input '{ type filter hook input priority 0; }'
        $n nft add rule inet app input tcp dport 7777 drop
        in_host=(nsenter "--net=/run/netns/$HOSTNS")
        net_extra=(--network-lock nftables)
    elif [ "$kind" = tree ]; then
        : >"$dir/fanout.out"
        start_workload "$WORK/fanout" "$NPROCS" "$dir/fanout.out"
        wait_lines "$dir/fanout.out" 1 "$PID"
        read -r -a pids <"/proc/$PID/task/$PID/children" || true
        pids=("$PID" ${pids[@]+"${pids[@]}"})
        CUR_PID="${pids[*]}"
        [ ${#pids[@]} = "$NPROCS" ] || { echo "bench.sh: fanout $PID has $((${#pids[@]} - 1)) children, not $((NPROCS - 1))" >&2; exit 1; }
        wait_all_idle "${pids[@]}"   # dump it idle, the same way for every tool
    elif [ "$kind" = threads ]; then
        : >"$dir/manythreads.out"
        start_workload "$WORK/manythreads" "$NTHREADS" "$dir/manythreads.out"
        wait_lines "$dir/manythreads.out" 1 "$PID"
        wait_all_idle "$PID"
    elif [ "$kind" = tcp ]; then
        : >"$dir/srv.out"; : >"$dir/cli.out"
        start_workload nsenter --net="/run/netns/$NETA" "$WORK/echosrv" 10.97.0.1 7400 "$dir/srv.out" 2048 1000 65536
        local srv=$PID
        wait_lines "$dir/srv.out" 1 "$srv"
        start_workload nsenter --net="/run/netns/$NETB" "$WORK/echocli" 10.97.0.1 7400 "$NCONN" "$dir/cli.out" 1048576 2048 16384 2000
        CLI=$PID
        CUR_PID="$srv $CLI"
        wait_lines "$dir/cli.out" 5 "$CLI"   # ready, then progress lines: data flows
        PID=$srv
        extra+=(--tcp-established)
    else
        : >"$dir/memhog.out"
        local margs=("$ZMIB")
        case $kind in
            mem) margs=("$MIB") ;;
            tmem|zmem) margs+=(text) ;;
            zeromem) margs+=(zero) ;;
            filemem) margs+=(file) ;;   # maps $dir/memhog.out.map, kept until the round ends
            shmem) margs+=(shared) ;;
        esac
        start_workload "$WORK/memhog" "${margs[0]}" "$dir/memhog.out" ${margs[1]:+"${margs[1]}"}
        wait_lines "$dir/memhog.out" 1 "$PID"
        wait_in_pause "$PID"
        kill -USR1 "$PID"
        wait_lines "$dir/memhog.out" 2 "$PID"
        sum1=$(sed -n 2p "$dir/memhog.out")
        wait_in_pause "$PID"   # dump it idle, the same way for every tool
    fi
    local pid=$PID t0 t1 cmd p
    [ "$kind" = tree ] || pids=("$pid")

    local dx=() rx=()
    if [ "$kind" = tcp ]; then dx=(--external "net[$NETA_INO]:srvnet"); rx=(--inherit-fd "fd[9]:srvnet"); fi
    # The memory scenarios also measure each tool's peak RSS and CPU time (GNU time: %M in
    # KiB, user and system seconds): CPU time is what a loaded machine does not distort.
    local rss_dump=() rss_restore=()
    if [[ $kind == *mem ]] && [ -x /usr/bin/time ]; then
        rss_dump=(/usr/bin/time -f "%M %U %S" -o "$dir/dump.rss")
        rss_restore=(/usr/bin/time -f "%M %U %S" -o "$dir/restore.rss")
    fi
    cmd=(${rss_dump[@]+"${rss_dump[@]}"} ${in_host[@]+"${in_host[@]}"} "$bin" dump -t "$pid" -D "$dir/img" -o dump.log "${extra[@]}" ${net_extra[@]+"${net_extra[@]}"} ${dx[@]+"${dx[@]}"})
    t0=$(now_us)
    "${cmd[@]}" >"$dir/dump.out" 2>"$dir/dump.err" || fail "$tool" dump "$dir" "$dir/img/dump.log" "${cmd[@]}"
    t1=$(now_us)
    local dump_us=$((t1 - t0))
    for p in "${pids[@]}"; do wait_dead "$p" gone; done   # the whole tree, before restore
    local img_bytes
    img_bytes=$(du -sb "$dir/img" | cut -f1)

    [ "$kind" != net ] || net_extra+=(--external "veth[v0]:vr$RANDOM")
    cmd=(${rss_restore[@]+"${rss_restore[@]}"} ${in_host[@]+"${in_host[@]}"} "$bin" restore -D "$dir/img" -d -o restore.log "${extra[@]}" ${net_extra[@]+"${net_extra[@]}"} ${rx[@]+"${rx[@]}"})
    t0=$(now_us)
    if [ "$kind" = tcp ]; then
        "${cmd[@]}" >"$dir/restore.out" 2>"$dir/restore.err" 9<"/run/netns/$NETA" || fail "$tool" restore "$dir" "$dir/img/restore.log" "${cmd[@]}"
    else
        "${cmd[@]}" >"$dir/restore.out" 2>"$dir/restore.err" || fail "$tool" restore "$dir" "$dir/img/restore.log" "${cmd[@]}"
    fi
    t1=$(now_us)
    local restore_us=$((t1 - t0))
    [ -e "/proc/$pid" ] || fail "$tool" restore "$dir" "$dir/img/restore.log" "${cmd[@]}" "(restored PID $pid is not running)"

    local ok=PASS
    if [[ $kind == *mem ]]; then
        wait_in_pause "$pid"
        kill -USR1 "$pid"
        wait_lines "$dir/memhog.out" 3 "$pid"
        sum2=$(sed -n 3p "$dir/memhog.out")
        if [ "$sum1" != "$sum2" ]; then
            ok=FAIL
            echo "checksum FAIL ($tool, round measured=$measured): before '$sum1' after '$sum2'" >&2
        fi
    elif [ "$kind" = tree ]; then
        local bad bad2
        bad=$(tree_check "${pids[@]}")
        if [ "$bad" != 0 ]; then
            ok=FAIL
            sleep 1
            bad2=$(tree_check "${pids[@]}")
            {
                echo "tree check FAIL ($tool, round measured=$measured): right after restore $bad of $NPROCS processes missing or with the wrong parent, 1 s later $bad2"
                for p in "${pids[@]}"; do
                    echo "  $p: $(cat "/proc/$p/stat" 2>&1)"
                done | head -n 12
            } >&2
        fi
    elif [ "$kind" = net ]; then
        local routes addrs
        routes=$(nsenter "--net=/proc/$pid/ns/net" ip route 2>&1 || true)
        addrs=$(nsenter "--net=/proc/$pid/ns/net" ip -o addr 2>&1 || true)
        if [ "$(grep -c "via 10.212.0.1" <<<"$routes")" != 5 ] || ! grep -q 10.212.0.2/24 <<<"$addrs"; then
            ok=FAIL
            echo "net check FAIL ($tool, round measured=$measured): routes: $routes; addresses: $addrs" >&2
        fi
    elif [ "$kind" = tcp ]; then
        # The clients go on, then stop sending and wait for every echo.
        local n0
        n0=$(wc -l <"$dir/cli.out")
        wait_lines "$dir/cli.out" $((n0 + 5)) "$CLI"
        kill -USR1 "$CLI"
        local deadline=$((SECONDS + 90))
        until grep -q '^done ' "$dir/cli.out"; do
            [ $SECONDS -lt $deadline ] || break
            sleep 0.05
        done
        local done_line
        done_line=$(grep '^done ' "$dir/cli.out" || true)
        if ! [[ $done_line =~ errors=0 ]] || grep -q '^error' "$dir/cli.out" \
            || [ "$(sed 's/.* sent=\([0-9]*\).*/\1/' <<<"$done_line")" != "$(sed 's/.* echoed=\([0-9]*\).*/\1/' <<<"$done_line")" ]; then
            ok=FAIL
            { echo "tcp check FAIL ($tool, round measured=$measured): ${done_line:-no summary}"; grep '^error' "$dir/cli.out" | head -5; } >&2
        fi
        STALL=$(sed -n 's/.*maxrtt_us=\([0-9]*\).*/\1/p' <<<"$done_line")
        pids=("$pid" "$CLI")
    elif [ "$kind" = threads ]; then
        local ntask ntask2
        ntask=$(ls "/proc/$pid/task" | wc -l)
        if [ "$ntask" != $((NTHREADS + 1)) ]; then
            ok=FAIL
            sleep 1
            ntask2=$(ls "/proc/$pid/task" | wc -l)
            echo "threads check FAIL ($tool, round measured=$measured): /proc/$pid/task has $ntask entries right after restore, $ntask2 1 s later, expected $((NTHREADS + 1))" >&2
        fi
    fi
    if [ "$kind" != sleep ]; then
        [ "$ok" = PASS ] || CHECK[$tool,$RKEY]=FAIL
        [ "${CHECK[$tool,$RKEY]:-}" = FAIL ] || CHECK[$tool,$RKEY]=PASS
    fi
    kill -9 "${pids[@]}" 2>/dev/null || true
    for p in "${pids[@]}"; do wait_dead "$p" gone; done
    CUR_PID=""

    local frozen=""
    if [ "$tool" = cryo ]; then
        frozen=$(sed -n 's/.*"frozen_us":\([0-9]*\).*/\1/p' "$dir/dump.out")
    fi
    printf '  %-5s %-7s %-7s dump %9.1f ms  restore %9.1f ms  images %7.1f MiB%s%s\n' \
        "$tool" "$kind" "$([ "$measured" = 1 ] && echo round || echo warm-up)" \
        "$(echo "$dump_us" | awk '{print $1/1000}')" "$(echo "$restore_us" | awk '{print $1/1000}')" \
        "$(echo "$img_bytes" | awk '{print $1/1048576}')" \
        "${frozen:+  (frozen $(echo "$frozen" | awk '{print $1/1000}') ms)}" \
        "$(case $kind in *mem) echo "  checksum $ok${rss_dump[0]:+, peak RSS dump $(($(rss_kib "$dir/dump.rss") / 1024)) MiB restore $(($(rss_kib "$dir/restore.rss") / 1024)) MiB, CPU dump $(cpu_ms "$dir/dump.rss") ms restore $(cpu_ms "$dir/restore.rss") ms}" ;; tree|threads|net) echo "  check $ok" ;; tcp) echo "  stall $(ms "${STALL:-0}") ms, check $ok" ;; esac)"
    if [ "$measured" = 1 ]; then
        add "$tool" "${RKEY}_dump" "$dump_us"
        add "$tool" "${RKEY}_restore" "$restore_us"
        [ -z "$frozen" ] || add "$tool" "${RKEY}_frozen" "$frozen"
        [ "$kind" != tcp ] || add "$tool" "${RKEY}_stall" "${STALL:-0}"
        add "$tool" "${RKEY}_img" "$img_bytes"
        if [ -n "${rss_dump[0]:-}" ]; then
            add "$tool" "${RKEY}_dump_rss" "$(rss_kib "$dir/dump.rss")"
            add "$tool" "${RKEY}_restore_rss" "$(rss_kib "$dir/restore.rss")"
            add "$tool" "${RKEY}_dump_cpu" "$(cpu_ms "$dir/dump.rss")"
            add "$tool" "${RKEY}_restore_cpu" "$(cpu_ms "$dir/restore.rss")"
        fi
    fi
    rm -rf "$dir"
}

# run_scenario KIND ROUNDS: warm-up + ROUNDS rounds; tools alternate, order flips every round.
run_scenario() {
    local kind=$1 rounds=$2 r t order
    for ((r = 0; r <= rounds; r++)); do
        order=("${TOOLS[@]}")
        if ((r % 2 == 1)) && [ ${#TOOLS[@]} -eq 2 ]; then order=("${TOOLS[1]}" "${TOOLS[0]}"); fi
        for t in "${order[@]}"; do one_round "$t" "$kind" "$((r > 0 ? 1 : 0))"; done
    done
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {if (NR == 0) exit; if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
minmax() { tr ' ' '\n' | grep . | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.1f-%.1f", lo/1000, hi/1000}'; }
med() { echo "${RES[$1,$2]:-}" | median; }          # us
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
# Peak RSS (KiB) and CPU time (ms, user + system) from a GNU time file ("%M %U %S").
rss_kib() { tail -1 "$1" | awk '{print $1}'; }
cpu_ms() { tail -1 "$1" | awk '{printf "%d", ($2 + $3) * 1000}'; }
gbps() { awk -v u="$1" -v m="${2:-$MIB}" 'BEGIN {printf "%.2f", m*1048576/(u*1000)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

# RUNS: one entry per measured scenario and size, "scenario:size:key" (key: the prefix of its
# result rows and JSON keys).
RUNS=()
for sc in "${SCEN[@]}"; do
    case $sc in
        tree) list=$PROCS_LIST ;;
        threads) list=$THREADS_LIST ;;
        *) list=0 ;;
    esac
    for n in ${list//,/ }; do
        key=${KIND[$sc]}
        [[ $list != *,* ]] || key=$key$n
        RUNS+=("$sc:$n:$key")
    done
done
# set_run ENTRY: sets sc, kind, RKEY and the size (NPROCS or NTHREADS) of a run.
set_run() {
    IFS=: read -r sc n RKEY <<<"$1"
    kind=${KIND[$sc]}
    case $sc in tree) NPROCS=$n ;; threads) NTHREADS=$n ;; esac
}
title() {
    case $1 in
        fixed) echo "fixed cost: sleep 1000" ;;
        mem) echo "memory: memhog $MIB MiB" ;;
        tmem) echo "compressible memory: memhog $ZMIB MiB of text, plain images" ;;
        zmem) echo "compressible memory: memhog $ZMIB MiB of text, cryo dump --compress" ;;
        zeromem) echo "zero memory: memhog $ZMIB MiB of anonymous pages written with zeros" ;;
        filemem) echo "file-backed private memory: memhog $ZMIB MiB of a private file mapping, written" ;;
        shmem) echo "shared memory: memhog $ZMIB MiB of shared anonymous memory" ;;
        tree) echo "process tree: fanout, $NPROCS processes" ;;
        threads) echo "threads: manythreads, $NTHREADS threads" ;;
        net) echo "network namespace: veth, 2 addresses, 5 routes, nftables, nftables lock" ;;
        tcp) echo "TCP: echo server with $NCONN connections (--tcp-established)" ;;
    esac
}
label() {
    case $1 in
        sleep) echo "sleep 1000" ;;
        mem) echo "memhog $MIB MiB" ;;
        tmem) echo "text $ZMIB MiB" ;;
        zmem) echo "text $ZMIB MiB zstd" ;;
        zeromem) echo "zero $ZMIB MiB" ;;
        filemem) echo "file-private $ZMIB MiB" ;;
        shmem) echo "shared $ZMIB MiB" ;;
        tree) echo "tree $NPROCS procs" ;;
        threads) echo "$NTHREADS threads" ;;
        net) echo "netns veth" ;;
        tcp) echo "tcp $NCONN conns" ;;
    esac
}
check_desc() {
    case $1 in
        mem) echo "memhog checksum before dump == after restore" ;;
        tmem|zmem|zeromem|filemem|shmem) echo "$(label "$1"): memhog checksum before dump == after restore" ;;
        tree) echo "tree: all $NPROCS PIDs back with the root as parent" ;;
        threads) echo "threads: /proc/PID/task has $((NTHREADS + 1)) entries" ;;
        net) echo "net: the restored namespace has its address and 5 routes" ;;
        tcp) echo "tcp: every byte of $NCONN connections echoed once, in order, no error" ;;
    esac
}

declare -A ROUNDS=([fixed]=$ROUNDS_FIXED [mem]=$ROUNDS_MEM [tmem]=$ROUNDS_MEM [zmem]=$ROUNDS_MEM [zeromem]=$ROUNDS_MEM [filemem]=$ROUNDS_MEM [shmem]=$ROUNDS_MEM [tree]=$ROUNDS_TREE [threads]=$ROUNDS_THREADS [net]=$ROUNDS_NET [tcp]=$ROUNDS_TCP)

echo "cryo benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, kernel $(uname -r)"
echo "  cryo: $CRYO ($("$CRYO" --version 2>&1 | head -1))"
[ -z "${CRIU:-}" ] || echo "  criu: $CRIU ($("$CRIU" --version 2>&1 | head -1))"
echo "  images: $WORK ($FSTYPE); dumps go to the page cache (no sync), restores read from it"
rounds_desc=""
for sc in "${SCEN[@]}"; do rounds_desc="$rounds_desc, $sc ${ROUNDS[$sc]}"; done
echo "  rounds: 1 warm-up + N (${rounds_desc#, })${CRIU:+; cryo and criu alternate, order flips each round}"
echo
for run in "${RUNS[@]}"; do
    set_run "$run"
    title "$sc"
    run_scenario "$kind" "${ROUNDS[$sc]}"
done

echo
printf 'Medians (range min-max in ms).'
! wants mem || printf ' GB/s = %s MiB / wall time, 10^9 B/s.' "$MIB"
{ ! wants tmem && ! wants zmem && ! wants zeromem && ! wants filemem && ! wants shmem; } || printf ' text, zero, file-private and shared rows: GB/s = %s MiB / wall time.' "$ZMIB"
echo
printf '%-24s %-36s' "scenario" "cryo"
[ -z "${CRIU:-}" ] || printf ' %-36s %s' "criu" "criu/cryo"
echo
JSON="{\"scenarios\":\"$(IFS=,; echo "${SCEN[*]}")\",\"mib\":$MIB,\"procs\":\"$PROCS_LIST\",\"threads\":\"$THREADS_LIST\""
JSON="$JSON,\"rounds_fixed\":$ROUNDS_FIXED,\"rounds_mem\":$ROUNDS_MEM,\"rounds_tree\":$ROUNDS_TREE,\"rounds_threads\":$ROUNDS_THREADS,\"rounds_net\":$ROUNDS_NET"
JSON="$JSON,\"fs\":\"$FSTYPE\",\"synced\":false"
declare -A TJSON
for run in "${RUNS[@]}"; do
    set_run "$run"
    ops="dump restore"
    [ "$kind" != tcp ] || ops="dump restore stall"
    for op in $ops; do
        row=${RKEY}_$op
        printf '%-24s' "$(label "$kind") $op"
        for t in "${TOOLS[@]}"; do
            m=$(med "$t" "$row")
            cell="$(ms "$m") ms"
            TJSON[$t]="${TJSON[$t]:-}\"${row}_ms\":$(ms "$m"),"
            if [[ $kind == *mem ]]; then
                mib=$MIB
                [ "$kind" = mem ] || mib=$ZMIB
                cell="$cell, $(gbps "$m" "$mib") GB/s"
                TJSON[$t]="${TJSON[$t]}\"${row}_gbps\":$(gbps "$m" "$mib"),"
            fi
            cell="$cell ($(echo "${RES[$t,$row]}" | minmax))"
            printf ' %-36s' "$cell"
        done
        if [ -n "${CRIU:-}" ]; then
            r=$(ratio "$(med criu "$row")" "$(med cryo "$row")")
            printf ' %sx' "$r"
            TJSON[ratio]="${TJSON[ratio]:-}\"$row\":$r,"
        fi
        echo
    done
done
frozen_desc=""
for run in "${RUNS[@]}"; do
    set_run "$run"
    m=$(med cryo "${RKEY}_frozen")
    [ -n "$m" ] || continue
    TJSON[cryo]="${TJSON[cryo]}\"${RKEY}_frozen_ms\":$(ms "$m"),"
    frozen_desc="$frozen_desc, $(label "$kind") $(ms "$m") ms"
done
echo "cryo frozen time during dump (from --json frozen_us): ${frozen_desc#, }"
for run in "${RUNS[@]}"; do
    set_run "$run"
    [ "$kind" != mem ] && [[ $kind == *mem ]] || continue
    img_desc=""
    for t in "${TOOLS[@]}"; do
        m=$(med "$t" "${RKEY}_img")
        [ -n "$m" ] || continue
        m=$(awk -v b="$m" 'BEGIN {printf "%.1f", b / 1048576}')
        img_desc="$img_desc, $t $m MiB"
        TJSON[$t]="${TJSON[$t]}\"${RKEY}_images_mib\":$m,"
    done
    echo "images, $(label "$kind") (du, medians): ${img_desc#, }"
done
for run in "${RUNS[@]}"; do
    set_run "$run"
    [[ $kind == *mem ]] || continue
    rss_desc=""
    for op in dump restore; do
        for t in "${TOOLS[@]}"; do
            m=$(med "$t" "${RKEY}_${op}_rss")
            [ -n "$m" ] || continue
            m=$(awk -v k="$m" 'BEGIN {printf "%d", k / 1024}')
            rss_desc="$rss_desc, $op $t $m MiB"
            TJSON[$t]="${TJSON[$t]}\"${RKEY}_${op}_peak_rss_mib\":$m,"
        done
    done
    [ -z "$rss_desc" ] || echo "peak RSS, $(label "$kind") (GNU time, medians): ${rss_desc#, }"
    cpu_desc=""
    mib=$MIB
    [ "$kind" = mem ] || mib=$ZMIB
    for op in dump restore; do
        for t in "${TOOLS[@]}"; do
            # cryo only: CRIU's work runs in its parasite and in the restored tasks, which
            # GNU time does not count as CRIU's.
            [ "$t" = cryo ] || continue
            m=$(med "$t" "${RKEY}_${op}_cpu")
            [ -n "$m" ] || continue
            g=$(awk -v c="$m" -v m="$mib" 'BEGIN {printf "%.2f", (c > 0 ? m * 1048576 / (c * 1e6) : 0)}')
            cpu_desc="$cpu_desc, $op $t $m ms ($g GB per CPU-second)"
            TJSON[$t]="${TJSON[$t]}\"${RKEY}_${op}_cpu_ms\":$m,"
        done
    done
    [ -z "$cpu_desc" ] || echo "CPU time (user + system), $(label "$kind") (GNU time, medians): ${cpu_desc#, }"
done
status=0
declare -A CHECK_KEY=([mem]=checksum [tmem]=tmem_checksum [zmem]=zmem_checksum [zeromem]=zeromem_checksum [filemem]=filemem_checksum [shmem]=shmem_checksum [tree]=tree_check [threads]=threads_check [net]=net_check [tcp]=tcp_check)
for run in "${RUNS[@]}"; do
    set_run "$run"
    [ "$kind" != sleep ] || continue
    printf '%s (all %s rounds):' "$(check_desc "$kind")" "$((${ROUNDS[$sc]} + 1))"
    for t in "${TOOLS[@]}"; do
        c=${CHECK[$t,$RKEY]:-FAIL}
        printf ' %s %s' "$t" "$c"
        [ "$c" = PASS ] || status=1
        ck=${CHECK_KEY[$kind]}
        [ "$RKEY" = "$kind" ] || ck=${RKEY}_${ck#*_}
        TJSON[$t]="${TJSON[$t]}\"$ck\":\"$c\","
    done
    echo
done
for t in "${TOOLS[@]}"; do JSON="$JSON,\"$t\":{${TJSON[$t]%,}}"; done
[ -z "${TJSON[ratio]:-}" ] || JSON="$JSON,\"ratio_criu_over_cryo\":{${TJSON[ratio]%,}}"
echo "$JSON}"
[ -z "${JSON_OUT:-}" ] || echo "$JSON}" >"$JSON_OUT"
exit $status
