#!/usr/bin/env bash
# fuzz-seeds.sh OUT: real image sets for the fuzzer (cryo-fuzz), one directory per program
# under OUT, each written by `cryo dump --leave-running` of a test program that holds a
# different mix of kernel objects (plain process; pipes and a tree with shared memory and a
# zombie; event fds; unix sockets with queued data; file locks; SysV and POSIX IPC in an IPC
# namespace; UTS/net/time namespaces; threads; memfd; ghost file). Raw page data
# (pages-*.img) is dropped: nothing the fuzzer runs reads it. A program that fails to start
# or dump is reported and left out. Needs root and target/release/cryo.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: fuzz-seeds.sh OUT}
cryo=${CRYO:-$PWD/target/release/cryo}
work=$(mktemp -d /tmp/cryo-fuzz-seeds.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
progs="$work/progs"
mkdir -p "$progs"
for p in evloop shm locks ipcns; do
    gcc -O2 -Wall -pthread -o "$progs/$p" "integration/progs/$p.c" || exit 1
done

# seed NAME DUMP-OPTIONS -- COMMAND...: starts COMMAND in its own session, waits for it to
# settle, dumps its tree into OUT/NAME (leaving it running), then kills the tree.
seed() {
    local name=$1; shift
    local opts=()
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    local d="$work/$name"
    mkdir -p "$d"
    (cd "$d" && exec setsid "$@" </dev/null >"$d/out" 2>&1) &
    local pid=$!
    disown "$pid"
    sleep "${SETTLE:-0.7}"
    rm -rf "${out:?}/$name"
    if "$cryo" dump -t "$pid" -D "$out/$name" --leave-running "${opts[@]}" -o "$d/dump.log" -v4; then
        rm -f "$out/$name"/pages-*.img "$out/$name"/*.log
        echo "fuzz-seeds: $name: $(ls "$out/$name" | wc -l) images"
    else
        echo "fuzz-seeds: $name: dump failed, left out ($(grep -m1 Error "$out/$name/dump.log" 2>/dev/null))" >&2
        rm -rf "${out:?}/$name"
    fi
    pkill -KILL -s "$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
        sleep 0.05
    done
}

seed sleep -- sleep 1000
seed pipeline -- sh -c 'seq 1 100000000 | cat | sleep 1000'
seed evloop -- "$progs/evloop" "$work"
seed shm-tree -- "$progs/shm" "$work/shm.out"
seed locks --file-locks -- "$progs/locks" "$work"
seed ipcns -- unshare -i "$progs/ipcns"
seed ipcns-mq -- unshare -i "$progs/ipcns" mq
seed namespaces -- unshare -u -n -T sh -c 'hostname fuzz; exec sleep 1000'
seed unix-sockets -- python3 "$PWD/integration/scripts/unix_sockets.py" "$work"
seed memfd -- python3 "$PWD/integration/scripts/memfd.py"
seed ghost -- sh -c 'exec 3<>/tmp/cryo-fuzz-ghost.$$; echo gone >&3; rm /tmp/cryo-fuzz-ghost.$$; exec sleep 1000'
rm -rf "${out:?}/criu-4.2-sleep"
cp -r integration/fixtures/criu-4.2-sleep "$out/criu-4.2-sleep"
rm -f "$out/criu-4.2-sleep/README.md"
ls "$out" | wc -l
