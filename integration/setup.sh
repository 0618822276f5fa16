#!/usr/bin/env bash
# Installs what building and testing cryo needs on a fresh Debian 12 machine (run as root).
# Idempotent and quick when everything is already there.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -x /usr/bin/python3 ] || need+=(python3)
[ -x /usr/bin/crit ] || need+=(criu)   # Debian's criu package ships crit, CRIU's image decoder
command -v setsid >/dev/null || need+=(util-linux)
command -v tmux >/dev/null || need+=(tmux)    # the --shell-job test drives two tmux panes
command -v ip >/dev/null || need+=(iproute2)  # the namespace test sets a loopback up
command -v nft >/dev/null || need+=(nftables) # the network lock and a namespace's firewall (tests/network.rs)
command -v ping >/dev/null || need+=(iputils-ping) # tests/network.rs pings restored namespaces
command -v iptables >/dev/null || need+=(iptables) # --network-lock iptables (tests/network.rs)
command -v runc >/dev/null || need+=(runc)    # the runc tests (bundles/) drive runc 1.1.5
command -v containerd >/dev/null || need+=(containerd)  # the containerd test: a private daemon, ctr, the runc shim
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)  # container tests: the rootfs (bundles/busybox)
command -v tar >/dev/null || need+=(tar)   # tmpfs contents are saved with tar, as CRIU does
[ -x /usr/bin/time ] || need+=(time)   # bench.sh: peak RSS of cryo and CRIU (GNU time)
# The podman tests (integration/tests/podman.rs): podman 4.3 with runc (no crun: without
# recommends apt keeps the runc installed above), conmon, and zstd to list --export archives.
command -v podman >/dev/null || need+=(podman)
command -v conmon >/dev/null || need+=(conmon)
command -v zstd >/dev/null || need+=(zstd)   # also tests/inspect.rs: zstd archives (tar --zstd)
# The LXC test (integration/tests/lxc.rs): lxc-checkpoint runs `criu` from PATH; the busybox
# template is in lxc-templates.
command -v lxc-checkpoint >/dev/null || need+=(lxc)
[ -e /usr/share/lxc/templates/lxc-busybox ] || need+=(lxc-templates)
# The inet tests (integration/tests/inet.rs): nsenter to start a program in a test
# namespace, nginx as a real TCP service.
command -v nsenter >/dev/null || need+=(util-linux)
command -v nginx >/dev/null || need+=(nginx-light)
# The unprivileged test (integration/tests/unprivileged.rs): setcap gives a copy of cryo its
# file capabilities; setpriv (util-linux) runs it as another user.
[ -x /usr/sbin/setcap ] || [ -x /sbin/setcap ] || need+=(libcap2-bin)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
# rust-toolchain.toml pins the toolchain; make rustup find it without a download.
"$(dirname "$0")/toolchain.sh"
