#!/usr/bin/env bash
# Demo: start a real program, checkpoint it with cryo (which stops it), restore it, and watch
# it carry on from where it was, with the same PID and an unbroken count.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (cryo needs ptrace and clone3 set_tid)" >&2
    exit 1
fi
integration/setup.sh
cargo build --release --quiet
CRYO=$PWD/target/release/cryo
work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
gcc -O2 -o "$work/counter" integration/progs/counter.c
out=$work/count.txt

echo "1. Starting a counter that appends 0, 1, 2, ... to $out every 100 ms"
# Own session, stdio on /dev/null, no other inherited fds.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
setsid "$work/counter" "$out" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1.2
echo "   pid $pid, last lines: $(tail -n 3 "$out" | tr '\n' ' ')"

echo "2. cryo dump -t $pid -D $work/img   (the process is saved and stopped)"
"$CRYO" dump -t "$pid" -D "$work/img" -v4 -o dump.log --display-stats
{ wait "$pid"; } 2>/dev/null || true   # reap it: its PID must be free for the restore
last=$(tail -n 1 "$out")
echo "   process gone: $( [ -e /proc/$pid ] && echo no || echo yes ); last number written: $last"
echo "   images: $(ls "$work/img" | tr '\n' ' ')"
sleep 1
echo "   one second later the file still ends at: $(tail -n 1 "$out")"

echo "3. cryo restore -D $work/img -d"
"$CRYO" restore -D "$work/img" -d -v4 -o restore.log --display-stats
sleep 1
echo "   pid $pid is back: $(ps -o pid=,stat=,comm= -p "$pid")"
echo "   it continued from $last: $(sed -n "$((last + 2)),$((last + 7))p" "$out" | tr '\n' ' ')..."

kill -9 "$pid"
python3 - "$out" <<'PY'
import sys
nums = [int(l) for l in open(sys.argv[1])]
ok = nums == list(range(len(nums)))
print(f"4. checked {len(nums)} numbers: " + ("no gap, no repeat, no restart" if ok else "SEQUENCE BROKEN"))
sys.exit(0 if ok else 1)
PY
echo "   (images and logs are in $work; look inside with: $CRYO show $work/img/core-$pid.img)"
