#!/usr/bin/env python3
"""A raw HTTP/2 client for the relay's malformed-input tests, on the `h2` library (PyPI) with
its own checks of outgoing header fields turned off, so it sends what Node's http2 refuses to:
unknown or repeated pseudo-header fields, CONNECT without :authority, uppercase names,
header sections larger than the relay's SETTINGS_MAX_HEADER_LIST_SIZE.

One request with exactly the fields of --headers-json (a JSON list of [name, value] pairs);
its answer (:status), RST_STREAM code or GOAWAY is reported. Then, with --then-authority, a
well-formed CONNECT on the same connection sends 10 bytes to an echo target and reads them
back: the connection survived. Prints one JSON object.

Needs h2: python3 -m pip install h2==4.3.0
"""

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


class Session:
    def __init__(self, args):
        context = ssl.create_default_context(cafile=args.ca)
        context.set_alpn_protocols(["h2"])
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
        raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
        self.sock = context.wrap_socket(raw, server_hostname=args.server_name)
        self.sock.settimeout(0.2)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()
        self.streams = {}
        self.goaway = None

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def state(self, stream_id):
        return self.streams.setdefault(
            stream_id, {"status": None, "rst": None, "ended": False, "data": b""}
        )

    def pump(self, until, timeout):
        deadline = time.time() + timeout
        while not until() and time.time() < deadline and self.goaway is None:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ssl.SSLError, OSError):
                break
            if not data:
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == ":status":
                            self.state(event.stream_id)["status"] = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    self.state(event.stream_id)["data"] += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    self.state(event.stream_id)["ended"] = True
                elif isinstance(event, h2.events.StreamReset):
                    self.state(event.stream_id)["rst"] = int(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = int(event.error_code)
            self.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--headers-json", required=True)
    parser.add_argument("--then-authority")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    session = Session(args)
    # {"repeat": s, "times": n} stands for a long value (arguments are limited to 128 KiB).
    headers = [
        (name, value["repeat"] * value["times"] if isinstance(value, dict) else value)
        for name, value in json.loads(args.headers_json)
    ]
    stream_id = session.conn.get_next_available_stream_id()
    session.conn.send_headers(stream_id, headers, end_stream=False)
    session.flush()
    state = session.state(stream_id)
    session.pump(lambda: state["rst"] is not None or state["ended"], args.timeout)
    output = {"status": state["status"], "rst_code": state["rst"], "ended": state["ended"]}
    if args.then_authority and session.goaway is None:
        then_id = session.conn.get_next_available_stream_id()
        session.conn.send_headers(
            then_id, [(":method", "CONNECT"), (":authority", args.then_authority)]
        )
        session.flush()
        then = session.state(then_id)
        session.pump(lambda: then["status"] is not None or then["rst"] is not None, args.timeout)
        output["then_status"] = then["status"]
        if then["status"] == 200:
            session.conn.send_data(then_id, b"0123456789", end_stream=True)
            session.flush()
            session.pump(lambda: then["ended"] or then["rst"] is not None, args.timeout)
            output["then_received"] = len(then["data"])
    output["goaway"] = session.goaway
    json.dump(output, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
