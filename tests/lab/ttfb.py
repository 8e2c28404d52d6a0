#!/usr/bin/env python3
"""Time from CONNECT to the first byte, for the lab benchmark (tests/tests/lab_bench.rs).

  ttfb.py relay --port 443 --ca CA --cert C --key K --authority HOST:PORT -n 1000
      one HTTP/3 connection to the relay (relay/tests/h3_client.py's aioquic client), then -n
      CONNECTs one after the other: each is timed from sending its HEADERS to the first DATA
      byte (the lab server's `seen …` line), then ended.
  ttfb.py direct --source ADDR --target HOST:PORT -n 1000
      the same without the relay: a TCP connect bound to ADDR, timed to the first byte.

Prints {"n", "p50_ms", "p99_ms", "max_ms", "errors"}.
"""

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../relay/tests"))


def summary(samples, errors):
    samples.sort()
    pick = lambda q: round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 3)
    return {
        "n": len(samples),
        "p50_ms": pick(0.50) if samples else None,
        "p99_ms": pick(0.99) if samples else None,
        "max_ms": round(samples[-1] * 1000, 3) if samples else None,
        "errors": errors,
    }


async def relay(args):
    import h3_client
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration

    conf = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                             server_name=args.server_name, max_datagram_frame_size=65536)
    conf.verify_mode = ssl.CERT_REQUIRED
    conf.load_verify_locations(args.ca)
    conf.load_cert_chain(args.cert, args.key)
    samples, errors = [], 0
    a = argparse.Namespace(host=args.host, port=args.port)
    async with h3_client.open_client(a, conf) as client:
        for _ in range(args.n):
            started = time.perf_counter()
            stream_id, state = client.open_connect(args.authority)
            try:
                headers = await asyncio.wait_for(state.response, 10)
                if h3_client.status_of(headers) != 200:
                    errors += 1
                    continue
                while state.received == 0 and not state.ended.done():
                    await asyncio.sleep(0)
                    if state.received == 0:
                        await asyncio.sleep(0.0002)
                if state.received == 0:
                    errors += 1
                    continue
                samples.append(time.perf_counter() - started)
                client.send(stream_id, b"", end=True)
                await asyncio.wait_for(state.ended, 10)
            except asyncio.TimeoutError:
                errors += 1
            client.streams.pop(stream_id, None)
    return summary(samples, errors)


def direct(args):
    host, port = args.target.rsplit(":", 1)
    samples, errors = [], 0
    for _ in range(args.n):
        started = time.perf_counter()
        try:
            s = socket.socket()
            s.bind((args.source, 0))
            s.settimeout(10)
            s.connect((host, int(port)))
            if not s.recv(1):
                errors += 1
            else:
                samples.append(time.perf_counter() - started)
            s.close()
        except OSError:
            errors += 1
    return summary(samples, errors)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["relay", "direct"])
    p.add_argument("--host", default="198.51.100.1")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--server-name", default="relay.attestgate.lab")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--authority")
    p.add_argument("--source")
    p.add_argument("--target")
    p.add_argument("-n", type=int, default=1000)
    args = p.parse_args()
    out = asyncio.run(relay(args)) if args.mode == "relay" else direct(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
