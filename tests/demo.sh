#!/usr/bin/env bash
# attestgate's main job on its embedded lab default, end to end, in about a minute.
#
# Today (before the relay, the IPsec tunnel and the namespace lab exist) this runs the daemon on
# config/examples/lab.toml with lab certificates and a lab device list, and tours what it does:
# strict config check, status, the device table, live what-if decisions for a compliant, a
# noncompliant, a high-risk and an unknown device, a compliance flip picked up live, an invalid
# config refused while the old one keeps running, and a clean stop. Everything it makes lives in
# /run/attestgate-lab and is removed at the end, also on failure or Ctrl-C.
#
#   sudo tests/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
lab=/run/attestgate-lab
config=$root/config/examples/lab.toml

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it writes $lab)"; exit 1; }
command -v openssl >/dev/null || { echo "demo: needs openssl (apt-get install openssl)"; exit 1; }

bold "building attestgate"
cargo build -q -p attestgate
bin=$root/target/debug/attestgate
ag() { "$bin" -c "$config" "$@"; }

if [ -S "$lab/control.sock" ] && ag status >/dev/null 2>&1; then
  echo "demo: an attestgate lab daemon is already running on $lab/control.sock; stop it first"; exit 1
fi

daemon=
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  rm -rf "$lab"
}
trap cleanup EXIT INT TERM

bold "lab files: a device CA, the relay certificate, the tunnel PSK, the MDM's device list"
rm -rf "$lab"
tests/lab/files.sh "$lab"
ls -l "$lab"

bold "the lab configuration is valid (strict: every referenced file exists and secrets are 0600)"
run "$bin" config check --strict "$config"

bold "starting the daemon (logs go to $lab/daemon.log)"
"$bin" -c "$config" run >"$lab/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do ag status >/dev/null 2>&1 && break; sleep 0.1; done
run "$bin" -c "$config" status
run "$bin" -c "$config" devices

bold "what-if: a compliant Mac signing in to the IdP → the dedicated address pair"
run "$bin" -c "$config" whatif --device C02LAB0001 --target login.idp.lab:443
bold "what-if: the same Mac reaching an internal app → the IPsec tunnel, from its NAT-pool address"
run "$bin" -c "$config" whatif --device C02LAB0001 --target app.corp.lab:443
bold "what-if: an iPhone out of compliance → public egress; the IdP will not trust it"
run "$bin" -c "$config" whatif --device DMPLAB0002 --target login.idp.lab:443
bold "what-if: a compliant Mac with an active threat → public egress"
run "$bin" -c "$config" whatif --device C02LAB0003 --target login.idp.lab:443
bold "what-if: a device no MDM knows, to an internal app → denied (fail closed)"
run "$bin" -c "$config" whatif --device UNKNOWN0042 --target app.corp.lab:443

bold "compliance flips: the MDM drops C02LAB0001 from \"Compliant Macs\""
sed -i 's/groups = \["Compliant Macs", "Engineering"\]/groups = ["Engineering"]/' "$lab/devices.toml"
run "$bin" -c "$config" sync
run "$bin" -c "$config" whatif --device C02LAB0001 --target login.idp.lab:443

bold "an invalid configuration is refused with line:column; the running one stays"
broken=$lab/broken.toml
sed -e 's/egress = "idp-pair"/egress = "idp-pear"/' -e 's/nat_mode = "per-device"/nat_mod = "per-device"/' "$config" >"$broken"
set +e
"$bin" -c "$config" config apply "$broken"
echo "(exit code $?: 3 means invalid configuration)"
set -e
run "$bin" -c "$config" status

bold "stopping (SIGTERM): the daemon removes its socket"
kill -TERM "$daemon"; wait "$daemon"; daemon=
[ ! -e "$lab/control.sock" ] && echo "control socket removed"
bold "events recorded"
cat "$lab/events.jsonl"
bold "done: the lab files are removed on exit"
