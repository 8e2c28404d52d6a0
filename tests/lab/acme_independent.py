#!/usr/bin/env python3
"""An independent ACME client for attestgate's device-attest-01 server: certbot's `acme`
library (its JWS, nonce handling and account flow), driving RFC 8555 + device-attest-01.

    acme_independent.py DIRECTORY_URL CA_FILE SERIAL DEVICE_KEY_PEM

The host of DIRECTORY_URL is resolved to 127.0.0.1 (the test's admin listener). Prints
`token <TOKEN>` and reads the base64url attObj for it on one stdin line (the test makes the
synthetic attestation), then finalizes with a CSR of DEVICE_KEY_PEM (the attested key) and
prints `certificate` followed by the PEM chain. Any refusal: the problem document, exit 1.
"""
import socket
import sys
import time
from urllib.parse import urlparse

import josepy as jose
from acme import client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

directory_url, ca_file, serial, device_key_file = sys.argv[1:5]
host = urlparse(directory_url).hostname
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(name, *args, **kwargs):
    return _getaddrinfo("127.0.0.1" if name == host else name, *args, **kwargs)


socket.getaddrinfo = getaddrinfo


class Answer(jose.JSONObjectWithFields):
    """draft-ietf-acme-device-attest §5: the challenge response."""
    att_obj: str = jose.field("attObj")


class Finalize(jose.JSONObjectWithFields):
    csr: str = jose.field("csr")


class Order(jose.JSONObjectWithFields):
    identifiers: list = jose.field("identifiers")


def b64url(data):
    return jose.encode_b64jose(data)


account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP384R1()))
net = client.ClientNetwork(account_key, alg=jose.ES384, verify_ssl=ca_file,
                           user_agent="acme-independent")
directory = client.ClientV2.get_directory(directory_url, net)
acme = client.ClientV2(directory, net)
try:
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    order = acme._post(directory["newOrder"], Order(identifiers=[
        {"type": "permanent-identifier", "value": serial}]))
    order_url = order.headers["Location"]
    body = order.json()
    authz = acme._post_as_get(body["authorizations"][0]).json()
    challenge = [c for c in authz["challenges"] if c["type"] == "device-attest-01"][0]
    print("token", challenge["token"], flush=True)
    att_obj = sys.stdin.readline().strip()
    answer = acme._post(challenge["url"], Answer(att_obj=att_obj)).json()
    assert answer["status"] == "valid", answer
    device_key = serialization.load_pem_private_key(open(device_key_file, "rb").read(), None)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
           .sign(device_key, hashes.SHA256()))
    acme._post(body["finalize"], Finalize(csr=b64url(csr.public_bytes(serialization.Encoding.DER))))
    for _ in range(50):
        body = acme._post_as_get(order_url).json()
        if body["status"] in ("valid", "invalid"):
            break
        time.sleep(0.2)
    assert body["status"] == "valid", body
    # §7.4.2: the default format is application/pem-certificate-chain
    chain = acme._post_as_get(body["certificate"]).text
    print("certificate")
    print(chain, flush=True)
except errors.Error as e:
    print("refused", e, flush=True)
    sys.exit(1)
