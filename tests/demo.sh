#!/usr/bin/env bash
# attestgate's main job, end to end in network namespaces, in well under two minutes (plus the
# build): the lab of tests/src/lab.rs comes up (a device, the appliance running attestgate on
# config/examples/lab.toml, a wan bridge, strongSwan with a LAN behind it, an IdP, the Jamf Pro
# stand-in), a compliant and a noncompliant Mac (aioquic HTTP/3 clients) go through the relay,
# the LAN app server and the IdP report which source address they saw, compliance flips live
# through the Jamf webhook (a running stream is cut, the next CONNECT leaves public), flips back,
# and everything is torn down. Each step prints what was expected, what was seen, ok or FAILED;
# the exit status is non-zero when an expectation failed. Nothing is left behind, also on
# failure or Ctrl-C (the lab's guards remove namespaces, processes and files).
#
#   sudo tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it makes network namespaces)"; exit 1; }
for tool in openssl ip iperf3 swanctl python3; do
  command -v "$tool" >/dev/null || { echo "demo: needs $tool (tests/run.sh installs what is missing)"; exit 1; }
done
[ -e /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so ] ||
  { echo "demo: needs strongSwan's kernel-libipsec (apt-get install libcharon-extra-plugins)"; exit 1; }
python3 -c "import aioquic" 2>/dev/null ||
  { echo "demo: needs aioquic (python3 -m pip install aioquic==1.7.2)"; exit 1; }

printf '\033[1m== building attestgate and the lab\033[0m\n'
cargo build -q -p attestgate -p tests --bins

# The lab removes everything itself, also when a step panics; a Ctrl-C or kill skips that, so
# what it made (recorded here) is removed on the way out too: only our own namespaces.
record=$(mktemp)
export ATTESTGATE_LAB_RECORD=$record
cleanup() {
  while read -r kind name; do
    case $kind in
      netns)
        for pid in $(ip netns pids "$name" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$name" 2>/dev/null || true ;;
      dir) case $name in /tmp/attestgate-lab*) rm -rf "$name" ;; esac ;;
    esac
  done <"$record"
  rm -f "$record"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
target/debug/attestgate-lab --bins "$PWD/target/debug"
