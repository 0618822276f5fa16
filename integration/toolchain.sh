#!/usr/bin/env bash
# Makes the toolchain pinned in rust-toolchain.toml available to rustup without a download.
# The machines have one toolchain, installed as "stable"; rustup looks for the pinned channel
# by its own name (toolchains/1.95.0-HOST), and would otherwise fail ("not installed"). When
# the installed stable is that very version, it is given the pinned name (a symlink, as
# `rustup toolchain link` refuses channel names). Idempotent; touches nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
home=${RUSTUP_HOME:-$HOME/.rustup}
host="$(uname -m)-unknown-linux-gnu"
dir="$home/toolchains"
if [ -e "$dir/$want-$host" ]; then
    exit 0
fi
stable="$dir/stable-$host"
if [ ! -x "$stable/bin/rustc" ]; then
    echo "toolchain.sh: rust $want is not installed and there is no stable toolchain in $dir" >&2
    exit 1
fi
have=$("$stable/bin/rustc" --version | awk '{print $2}')
if [ "$have" != "$want" ]; then
    echo "toolchain.sh: rust-toolchain.toml pins $want but the installed stable is $have;" \
        "install $want (rustup toolchain install $want) or update rust-toolchain.toml" >&2
    exit 1
fi
for c in cargo-clippy rustfmt; do
    if [ ! -x "$stable/bin/$c" ]; then
        echo "toolchain.sh: the stable toolchain lacks $c (rustup component add clippy rustfmt)" >&2
        exit 1
    fi
done
ln -s "stable-$host" "$dir/$want-$host"
echo "toolchain.sh: rust $want is the installed stable toolchain ($dir/$want-$host)"
