#!/bin/sh
# container.sh ROOTFS HOSTDIR CMD [ARG...]: a small container launcher for the tests, so they
# do not depend on a runtime. Runs CMD as PID 1 of new pid, mount, uts, ipc and net
# namespaces, in its own session, after pivot_root into ROOTFS, with:
#   /proc private (the new PID namespace), /sys (sysfs of the new netns, read-only),
#   /dev a tmpfs with null/zero, a new devpts instance and /dev/console bound from its pty 0,
#   /dev/mqueue,
#   /tmp a tmpfs, /etc bound read-only onto itself, HOSTDIR bound at /data,
#   hostname cryo-box, loopback up; stdio /dev/null (the container's).
# With CONTAINER_NETNS=keep it stays in the network namespace it was started in (e.g. under
# `ip netns exec NAME`) instead of getting a new one.
# With CONTAINER_DATA_SLAVE=1, /data is a slave of HOSTDIR's mount (which must then be a
# shared mount of the caller's namespace: mounts made there appear in /data); every other
# mount stays private.
# With CONTAINER_USERNS=1 it is rootless-style: every namespace is owned by a new user
# namespace (`--user --map-root-user`: uid and gid 0 mapped to the caller's, setgroups
# denied), and /dev/null and /dev/zero are binds of the host's (no mknod there).
# With CONTAINER_USERNS=made the same, in the user namespace the caller already runs it in
# (progs/usermapped.c, whose maps root inside to another uid outside): no new one.
set -e
net=--net
if [ "${CONTAINER_NETNS:-}" = keep ]; then net=; fi
user=
if [ "${CONTAINER_USERNS:-}" = 1 ]; then user="--user --map-root-user"; fi
if [ "${CONTAINER_USERNS:-}" = made ]; then user=; fi
prop=private
if [ "${CONTAINER_DATA_SLAVE:-}" = 1 ]; then prop=slave; fi
export NET="$net" USERNS="${CONTAINER_USERNS:-}" DATA_SLAVE="${CONTAINER_DATA_SLAVE:-}"
rootfs=$1
hostdir=$2
shift 2
exec unshare $user --pid --fork --mount --uts --ipc $net --propagation $prop /bin/sh -c '
set -e
r=$1; h=$2; shift 2
mount --bind "$r" "$r"
mount --bind "$h" "$r/data"
mount -t tmpfs -o size=4m,mode=1777 tmpfs "$r/tmp"
mount -t tmpfs -o size=1m,mode=755 tmpfs "$r/dev"
if [ -n "$USERNS" ]; then
  touch "$r/dev/null" "$r/dev/zero"
  mount --bind /dev/null "$r/dev/null"
  mount --bind /dev/zero "$r/dev/zero"
else
  mknod -m 666 "$r/dev/null" c 1 3
  mknod -m 666 "$r/dev/zero" c 1 5
fi
mkdir "$r/dev/pts" "$r/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
# A console like runc'"'"'s: pty 0 of the new devpts bound at /dev/console (its master stays
# open in the container, as fd 3).
exec 3<>"$r/dev/pts/ptmx"
touch "$r/dev/console"
mount --bind "$r/dev/pts/0" "$r/dev/console"
mount -t mqueue mqueue "$r/dev/mqueue"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
mount --bind "$r/etc" "$r/etc"
mount -o remount,bind,ro "$r/etc"
if [ -n "$DATA_SLAVE" ]; then
  # everything private again but /data, the slave of the host directory
  for m in $(awk "{print \$5}" /proc/self/mountinfo); do
    case "$m" in
      "$r/data") ;;
      "$r"|"$r"/*) mount --make-private "$m" ;;
    esac
  done
fi
hostname cryo-box
if [ -n "$NET" ]; then ip link set lo up; fi
cd "$r"
proc="mount -t proc -o nosuid,nodev,noexec proc /proc"
if [ -n "$USERNS" ]; then
  # A user namespace may mount proc only while another proc is fully visible: before the
  # host root goes.
  mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
  proc=true
fi
pivot_root . .
exec /bin/busybox sh -c "umount -l . && $proc && cd / && exec setsid \"\$@\" </dev/null >/dev/null 2>&1" sh "$@"
' sh "$rootfs" "$hostdir" "$@"
