#!/usr/bin/env bash
# Makes the files the lab configuration (config/examples/lab.toml) refers to, in DIR
# (default /run/attestgate-lab): a lab device CA, the relay's certificate and key, a PSK for
# the corp tunnel, and the device list of the `file` compliance source.
#
#   tests/lab/files.sh [DIR]
set -euo pipefail
dir=${1:-/run/attestgate-lab}
umask 077
mkdir -p "$dir" "$dir/state"
cd "$dir"

ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The lab CA that issues device certificates (the relay trusts it).
ec device-ca.key
openssl req -x509 -new -key device-ca.key -sha256 -days 2 -subj "/CN=attestgate lab device CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out device-ca.crt 2>/dev/null

# The relay's server certificate, signed by a lab server CA.
ec relay-ca.key
openssl req -x509 -new -key relay-ca.key -sha256 -days 2 -subj "/CN=attestgate lab relay CA" \
  -addext "basicConstraints=critical,CA:TRUE" -out relay-ca.crt 2>/dev/null
ec relay.key
openssl req -new -key relay.key -subj "/CN=relay.attestgate.lab" -out relay.csr 2>/dev/null
printf 'subjectAltName=DNS:relay.attestgate.lab,IP:198.51.100.1\nextendedKeyUsage=serverAuth\n' > relay.ext
openssl x509 -req -in relay.csr -CA relay-ca.crt -CAkey relay-ca.key -CAcreateserial -days 2 \
  -sha256 -extfile relay.ext -out relay.crt 2>/dev/null
rm -f relay.csr relay.ext relay-ca.srl

# The corp tunnel's pre-shared key (the strongSwan peer gets the same one).
openssl rand -base64 32 > corp.psk

# What the lab's MDM "knows": read by the `file` compliance source.
umask 022
cat > devices.toml <<'DEVICES'
# The lab's devices, as an MDM would report them. Edit and `attestgate config apply` (or wait
# for the refresh interval) to change compliance.

[[device]]
serial = "C02LAB0001"          # a compliant Mac
platform = "macos"
managed = true
groups = ["Compliant Macs", "Engineering"]
risk = "secure"

[[device]]
serial = "DMPLAB0002"          # a managed iPhone that fell out of compliance
platform = "ios"
managed = true
groups = ["All iPhones"]
risk = "low"

[[device]]
serial = "C02LAB0003"          # a compliant Mac with an active threat
platform = "macos"
managed = true
groups = ["Compliant Macs"]
risk = "high"
DEVICES
chmod 644 device-ca.crt relay-ca.crt relay.crt devices.toml
chmod 600 ./*.key corp.psk
