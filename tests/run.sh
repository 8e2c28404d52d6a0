#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every crate's tests (units, proptests,
# the daemon through its CLI, the config examples and invalid configs), then the lab demo as a
# smoke test of the README's main-job command, then the appliance image booted and updated
# under qemu (image/test.sh).
#
#   sudo tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests use from Debian; installed when missing (root only).
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v nft >/dev/null || need+=(nftables)
command -v node >/dev/null || need+=(nodejs)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/lib/ipsec/charon ] || need+=(strongswan-charon)
command -v swanctl >/dev/null || need+=(strongswan-swanctl)
[ -e /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so ] || need+=(libcharon-extra-plugins)
[ -e /usr/lib/ipsec/plugins/libstrongswan-curve25519.so ] || need+=(libstrongswan-extra-plugins)
# the image crate's unit tests run the converters and read GRUB's boot code
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.fat >/dev/null || need+=(dosfstools)
command -v zstd >/dev/null || need+=(zstd)
[ -d /usr/lib/grub/i386-pc ] || need+=(grub-pc-bin)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "tests/run.sh: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

if ! python3 -c "import aioquic" 2>/dev/null; then
  python3 -m pip install -q aioquic==1.7.2
fi
# the raw HTTP/2 client of the relay's malformed-input tests
if ! python3 -c "import h2" 2>/dev/null; then
  python3 -m pip install -q h2==4.3.0
fi
# an independent ACME client (certbot's library) for the device-attest-01 server's test
if ! python3 -c "import acme, josepy" 2>/dev/null; then
  python3 -m pip install -q acme==5.9.0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
if [ "$(id -u)" = 0 ]; then
  echo "== lab demo (the README's main-job command)"
  bash tests/demo.sh >/tmp/attestgate-demo.log 2>&1 || { cat /tmp/attestgate-demo.log; echo "lab demo FAILED"; exit 1; }
  grep -q "seen:     source 203.0.113.3[01]" /tmp/attestgate-demo.log
  grep -q "reset 0x10c [0-9]* ms after it" /tmp/attestgate-demo.log
  grep -q "every expectation held" /tmp/attestgate-demo.log
  echo "lab demo ok"
  echo "== appliance image: build, boot under qemu, update, fall back (image/test.sh)"
  bash image/test.sh
else
  echo "== lab demo and image test skipped (need root)"
fi
