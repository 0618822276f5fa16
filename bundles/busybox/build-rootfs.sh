#!/usr/bin/env bash
# Builds a minimal root file system from busybox-static into DEST (default ./rootfs):
# /bin/busybox plus a symlink per applet, the usual top-level directories, and a passwd.
# Used by the container tests (integration/) and the OCI bundles of bundles/.
set -euo pipefail
dest=${1:-rootfs}
bb=/bin/busybox
if ! [ -x "$bb" ] || ! "$bb" --list >/dev/null 2>&1; then
    echo "build-rootfs: $bb missing; install busybox-static (apt-get install busybox-static)" >&2
    exit 1
fi
mkdir -p "$dest"/{bin,dev,etc,proc,sys,tmp,root,data,run}
chmod 1777 "$dest/tmp"
cp "$bb" "$dest/bin/busybox"
for applet in $("$bb" --list); do
    [ -e "$dest/bin/$applet" ] || ln -s busybox "$dest/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$dest/etc/passwd"
echo "root:x:0:" >"$dest/etc/group"
echo "cryo-box" >"$dest/etc/hostname"
