#!/usr/bin/env bash
# The appliance image end to end (issue 7), as CI runs it (root; no KVM needed):
# build the image and two update bundles (a newer good version, and a broken one whose
# attestgate does not run), then boot the image under qemu (TCG, OVMF, its own systemd-boot)
# and update it over SSH: good → healthy on the other slot; broken → falls back by itself.
#
# The image ships the debug attestgate here: a release build would add 6–10 minutes to CI on
# two cores. `cargo run -p image -- build` without --binary builds and ships the release one.
#
#   sudo image/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in mmdebstrap mkfs.fat mcopy sfdisk qemu-img qemu-system-x86_64 objcopy zstd ssh grub-mkimage; do
  if ! command -v "$tool" >/dev/null; then
    echo "image/test.sh: $tool missing; installing the image's host packages (image/ci-deps.sh)"
    bash image/ci-deps.sh
    break
  fi
done
cargo build -q -p attestgate -p image --bins
bins="--binary target/debug/attestgate --firstboot target/debug/attestgate-firstboot"
base="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)+ci.$(date -u +%Y%m%dT%H%M%SZ)"
echo "== image build"
cargo run -q -p image -- build $bins --version "$base"
echo "== update bundles (good: a newer version; broken: attestgate replaced by /bin/false)"
cargo run -q -p image -- build $bins --update-only --out target/image-next --version "$base.next"
cargo run -q -p image -- build --binary /bin/false --firstboot target/debug/attestgate-firstboot \
  --update-only --out target/image-broken --version "$base.broken"
echo "== boot, update, fall back (qemu TCG)"
cargo run -q -p image -- update-test \
  --good target/image-next/attestgate-update.tar --broken target/image-broken/attestgate-update.tar
