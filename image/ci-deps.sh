#!/bin/sh
# Host packages `cargo run -p image -- build` and `-- smoke` need (Debian bookworm).
# qemu-system-x86 must match the installed qemu-utils: on hosts with qemu-utils from
# bookworm-backports (10.x), install qemu-system-x86 and its companions from backports too.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends \
    mmdebstrap dosfstools mtools fdisk ovmf systemd-boot-efi grub-pc-bin qemu-utils zstd binutils \
    e2fsprogs openssl tar gzip python3
if ! command -v qemu-system-x86_64 >/dev/null; then
    utils=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
    case "$utils" in
    *bpo12*)
        list=$(mktemp)
        printf 'deb http://deb.debian.org/debian bookworm-backports main\ndeb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' >"$list"
        apt-get update -qq -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
        apt-get install -y -qq --no-install-recommends -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
            qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
            qemu-system-data/bookworm-backports seabios/bookworm-backports
        rm -f "$list"
        ;;
    *) apt-get install -y -qq --no-install-recommends qemu-system-x86 ;;
    esac
fi
