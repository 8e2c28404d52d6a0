#!/usr/bin/env python3
"""An independent HTTP/3 MASQUE client for the relay tests, built on aioquic.

It plays the Apple relay client: HTTP/3 with a client certificate, classic CONNECT
(`:method CONNECT`, `:authority host:port`, no `:scheme` / `:path`, RFC 9114 section 4.4),
then raw bytes in DATA frames. It prints one JSON object on stdout that the Rust tests check.

Modes:
  connect     one CONNECT; send --send bytes (deterministic, --seed), end the stream, read
              until the relay ends its side. --wait-end-first reads until the relay ends its
              side *before* sending (the target closes first).
  concurrent  --streams CONNECTs at once on one connection, each echoing --send bytes.
  udp         connect-udp (RFC 9298) to --path; --datagrams datagrams and one capsule out,
              echoes counted, then the stream is closed.
  hold        one CONNECT that keeps sending (16 KiB every 5 ms) and reading until the relay
              resets or ends it, or the connection closes; prints {"event": "flowing"} once
              echoes arrive, then the final object with the reset code and its time (ms since
              the epoch).

  bulk        one CONNECT streaming --send bytes (generated chunk by chunk, never held whole) to
              an echo target while reading the echo, at most --window bytes unechoed; prints
              both SHA-256 digests and the rate.
  raw         one request with exactly the header fields of --headers-json (a JSON list of
              [name, value] pairs, sent unchecked, in order), the answer or reset reported;
              then, when --then-authority is given, a well-formed CONNECT on the same
              connection with 10 bytes echoed (the connection survived).
  stray       QUIC DATAGRAM frames for streams that carry no connect-udp flow (a request
              stream never opened, the client's control stream), then like raw's follow-up.

--header name:value (repeatable) adds a header to every request. concurrent spreads
--streams over --connections connections.
H3_CLIENT_PROFILE=FILE writes a cProfile of the run to FILE.

Needs aioquic: python3 -m pip install aioquic
"""

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DatagramReceived, DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

CHUNK = 64 * 1024


class StreamState:
    def __init__(self, loop):
        self.headers = None
        self.response = loop.create_future()
        self.ended = loop.create_future()
        self.received = 0
        self.digest = hashlib.sha256()
        self.data = bytearray()
        self.reset = None
        self.reset_at_ms = None
        self.datagrams = []
        self.wake = None


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # enable_webtransport makes aioquic announce SETTINGS_H3_DATAGRAM (RFC 9297 §2.1.1).
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.streams = {}
        self.terminated = None
        self.extra_headers = []
        # bulk: datagrams read per wake-up (see datagram_received); 1 keeps aioquic's own path.
        self.drain = 1

    def datagram_received(self, data, addr):
        """aioquic handles one datagram per event-loop turn and answers each one at once
        (ACK-only packets, a timer re-armed, an epoll wait): in bulk mode the datagrams
        already queued on the socket are read in the same turn, then answered together."""
        if self.drain <= 1:
            super().datagram_received(data, addr)
            return
        now = self._loop.time()
        self._quic.receive_datagram(data, addr, now=now)
        sock = getattr(self._transport, "_sock", None)
        for _ in range(self.drain - 1 if sock is not None else 0):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            self._quic.receive_datagram(data, addr, now=now)
        self._process_events()
        self.transmit()

    def _settle(self, future, value):
        if not future.done():
            future.set_result(value)

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.terminated = {
                "error_code": event.error_code,
                "frame_type": event.frame_type,
                "reason": event.reason_phrase,
                "at_ms": time.time() * 1000,
            }
            for state in self.streams.values():
                self._settle(state.response, None)
                self._settle(state.ended, False)
            return
        if isinstance(event, StreamReset):
            state = self.streams.get(event.stream_id)
            if state is not None:
                state.reset = event.error_code
                state.reset_at_ms = time.time() * 1000
                self._settle(state.response, None)
                self._settle(state.ended, False)
        for h3_event in self.h3.handle_event(event):
            state = self.streams.get(h3_event.stream_id)
            if state is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                if state.headers is None:
                    state.headers = [(k.decode(), v.decode()) for k, v in h3_event.headers]
                    self._settle(state.response, state.headers)
                if h3_event.stream_ended:
                    self._settle(state.ended, True)
            elif isinstance(h3_event, DatagramReceived):
                state.datagrams.append(h3_event.data)
            elif isinstance(h3_event, DataReceived):
                state.received += len(h3_event.data)
                if state.wake is not None:
                    state.wake.set()
                state.digest.update(h3_event.data)
                if len(state.data) < 1 << 20:
                    state.data.extend(h3_event.data)
                if h3_event.stream_ended:
                    self._settle(state.ended, True)

    def open_connect(self, authority, extra=None):
        stream_id = self._quic.get_next_available_stream_id()
        state = StreamState(asyncio.get_running_loop())
        self.streams[stream_id] = state
        if self.terminated is not None:
            self._settle(state.response, None)
            self._settle(state.ended, False)
            return stream_id, state
        extra = extra or {}
        headers = [(b":method", extra.get("method", "CONNECT").encode())]
        for name in ("scheme", "protocol"):
            if extra.get(name):
                headers.append((f":{name}".encode(), extra[name].encode()))
        headers.append((b":authority", authority.encode()))
        if extra.get("path"):
            headers.append((b":path", extra["path"].encode()))
        if extra.get("protocol") == "connect-udp":
            headers.append((b"capsule-protocol", b"?1"))
        headers.extend(self.extra_headers)
        self.h3.send_headers(stream_id, headers, end_stream=False)
        self.transmit()
        return stream_id, state

    async def wait_sent(self, stream_id, timeout):
        """Waits until everything sent on the stream, FIN included, was acknowledged, so that
        closing the connection afterwards loses nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.terminated is None:
            stream = self._quic._streams.get(stream_id)
            if stream is None or stream.sender.is_finished:
                return True
            await asyncio.sleep(0.01)
        return False

    def send(self, stream_id, data, end):
        for offset in range(0, max(len(data), 1), CHUNK):
            chunk = data[offset : offset + CHUNK]
            last = offset + CHUNK >= len(data)
            self.h3.send_data(stream_id, chunk, end_stream=end and last)
        self.transmit()


def status_of(headers):
    if headers is None:
        return None
    for name, value in headers:
        if name == ":status":
            return int(value)
    return None


def header(headers, wanted):
    for name, value in headers or []:
        if name == wanted:
            return value
    return None


async def one_connect(client, authority, payload, wait_end_first, timeout, extra=None):
    stream_id, state = client.open_connect(authority, extra)
    result = {"stream_id": stream_id}
    headers = await asyncio.wait_for(state.response, timeout)
    result["status"] = status_of(headers)
    result["proxy_status"] = header(headers, "proxy-status")
    result["reset"] = state.reset
    if result["status"] != 200:
        result["ended"] = await asyncio.wait_for(state.ended, timeout)
        return result
    if wait_end_first:
        result["ended_before_send"] = await asyncio.wait_for(state.ended, timeout)
        result["received_before_send"] = state.received
    client.send(stream_id, payload, end=True)
    result["sent"] = len(payload)
    result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
    result["ended"] = await asyncio.wait_for(state.ended, timeout)
    result["received"] = state.received
    result["received_sha256"] = state.digest.hexdigest()
    result["received_text"] = bytes(state.data[:4096]).decode("latin-1")
    result["reset"] = state.reset
    result["send_acknowledged"] = await client.wait_sent(stream_id, timeout)
    return result


def varint(value):
    """A QUIC variable-length integer (RFC 9000 section 16)."""
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def capsule(capsule_type, value):
    """A capsule (RFC 9297 section 3.2)."""
    return varint(capsule_type) + varint(len(value)) + value


async def udp_session(client, args):
    """connect-udp (RFC 9298): datagrams out as QUIC DATAGRAM frames with context ID 0, one
    more as a DATAGRAM capsule on the stream after an unknown capsule; count the echoes."""
    extra = {"protocol": "connect-udp", "scheme": "https", "path": args.path}
    stream_id, state = client.open_connect(args.authority, extra)
    result = {"stream_id": stream_id}
    headers = await asyncio.wait_for(state.response, args.timeout)
    result["status"] = status_of(headers)
    result["proxy_status"] = header(headers, "proxy-status")
    result["capsule_protocol"] = header(headers, "capsule-protocol")
    if result["status"] != 200:
        result["ended"] = await asyncio.wait_for(state.ended, args.timeout)
        return result
    payloads = [f"datagram {i} ".encode() * (i + 1) for i in range(args.datagrams)]
    loop = asyncio.get_running_loop()
    for payload in payloads:
        client.h3.send_datagram(stream_id, b"\x00" + payload)
        client.transmit()
        await asyncio.sleep(0.005)
    # A datagram with an unknown context ID: dropped by the relay (RFC 9298 section 4).
    client.h3.send_datagram(stream_id, b"\x07ignored")
    # An unknown capsule type, then a DATAGRAM capsule (RFC 9297 section 3.2, 3.5).
    via_capsule = b"sent as a capsule"
    client.send(stream_id, capsule(0x2B1D, b"unknown") + capsule(0, b"\x00" + via_capsule), end=False)
    expected = set(payloads) | {via_capsule}
    deadline = loop.time() + args.timeout
    while loop.time() < deadline:
        echoed = {d[1:] for d in state.datagrams if d[:1] == b"\x00"}
        if expected <= echoed:
            break
        await asyncio.sleep(0.01)
    echoed = [d[1:] for d in state.datagrams if d[:1] == b"\x00"]
    result["sent"] = len(payloads) + 1
    result["echoed"] = len(set(echoed) & expected)
    result["capsule_echoed"] = via_capsule in echoed
    result["unexpected"] = len([d for d in state.datagrams if d[:1] != b"\x00"])
    # Closing the stream ends the UDP association (RFC 9298 section 3).
    client.send(stream_id, b"", end=True)
    result["ended"] = await asyncio.wait_for(state.ended, args.timeout)
    result["send_acknowledged"] = await client.wait_sent(stream_id, args.timeout)
    return result


async def hold(client, args):
    """One CONNECT kept busy until the relay resets or ends it (revocation tests)."""
    stream_id, state = client.open_connect(args.authority)
    result = {"event": "closed", "stream_id": stream_id}
    headers = await asyncio.wait_for(state.response, args.timeout)
    result["status"] = status_of(headers)
    if result["status"] != 200:
        result["reset"] = state.reset
        return result
    chunk = random.Random(args.seed).randbytes(16 * 1024)
    sent = 0
    flowing = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while not state.ended.done() and client.terminated is None and loop.time() < deadline:
        stream = client._quic._streams.get(stream_id)
        # Keep about 128 KiB in flight: a steady transfer, not a flood.
        if stream is not None and sent - state.received < 128 * 1024:
            client.send(stream_id, chunk, end=False)
            sent += len(chunk)
        if not flowing and state.received >= 64 * 1024:
            flowing = True
            print(json.dumps({"event": "flowing", "received": state.received}), flush=True)
        await asyncio.sleep(0.005)
    # A reset flow may be followed by the connection's close (revoke_certificate): give it
    # time to arrive (aioquic reports it after its draining period, 3 PTOs, RFC 9000 10.2).
    linger = loop.time() + 3.0
    while client.terminated is None and loop.time() < linger:
        await asyncio.sleep(0.01)
    result["sent"] = sent
    result["received"] = state.received
    result["reset"] = state.reset
    result["reset_at_ms"] = state.reset_at_ms
    result["ended"] = state.ended.done() and state.ended.result() is True
    return result


async def follow_up(client, args, result):
    """A well-formed CONNECT after the malformed input: the connection is still served."""
    if not args.then_authority or client.terminated is not None:
        return
    payload = b"0123456789"
    after = await one_connect(client, args.then_authority, payload, False, args.timeout)
    result["then_status"] = after.get("status")
    result["then_received"] = after.get("received")


def field_value(value):
    """A field value from --headers-json: a string, or {"repeat": s, "times": n} for long
    ones (a command line argument is limited to 128 KiB)."""
    if isinstance(value, dict):
        return value["repeat"] * value["times"]
    return value


async def raw_request(client, args):
    """One request with exactly the given header fields (aioquic does not check what it
    sends), then the follow-up."""
    headers = [(n.encode(), field_value(v).encode()) for n, v in json.loads(args.headers_json)]
    stream_id = client._quic.get_next_available_stream_id()
    state = StreamState(asyncio.get_running_loop())
    client.streams[stream_id] = state
    client.h3.send_headers(stream_id, headers, end_stream=False)
    client.transmit()
    result = {"stream_id": stream_id}
    try:
        response = await asyncio.wait_for(state.response, args.timeout)
    except asyncio.TimeoutError:
        response = None
        result["no_answer"] = True
    result["status"] = status_of(response)
    result["proxy_status"] = header(response, "proxy-status")
    # A reset may follow the answer (h3 answers 431, then resets): give it a moment.
    await asyncio.sleep(0.2)
    result["reset"] = state.reset
    await follow_up(client, args, result)
    result["terminated"] = client.terminated
    return result


async def stray_datagrams(client, args):
    """HTTP Datagrams (RFC 9297 section 2.1) that belong to no connect-udp flow: for a stream
    never opened, for an open classic CONNECT stream, and one too short to name a stream.
    The relay drops them; the CONNECT stream still echoes afterwards."""
    stream_id, state = client.open_connect(args.then_authority)
    headers = await asyncio.wait_for(state.response, args.timeout)
    result = {"then_status": status_of(headers)}
    for target in (stream_id + 400, stream_id):
        for i in range(args.datagrams):
            client._quic.send_datagram_frame(varint(target // 4) + b"\x00" + b"stray %d" % i)
    client._quic.send_datagram_frame(b"")
    client.transmit()
    await asyncio.sleep(0.3)
    result["sent"] = 2 * args.datagrams + 1
    client.send(stream_id, b"0123456789", end=True)
    result["ended"] = await asyncio.wait_for(state.ended, args.timeout)
    result["then_received"] = state.received
    result["terminated"] = client.terminated
    return result


def chunk_of(seed, index, size):
    """Deterministic pseudo-random bytes, cheap to make: SHAKE-128 of seed and index."""
    return hashlib.shake_128(b"%d:%d" % (seed, index)).digest(size)


async def bulk(client, args):
    """Streams --send bytes through an echo target and checks the echo, chunk by chunk."""
    stream_id, state = client.open_connect(args.authority)
    result = {"stream_id": stream_id}
    headers = await asyncio.wait_for(state.response, args.timeout)
    result["status"] = status_of(headers)
    if result["status"] != 200:
        return result
    client.drain = args.drain
    # aioquic allocates a few objects per packet, none of them cyclic garbage: collecting
    # every 700 allocations is wasted time at a thousand packets a second.
    gc.set_threshold(100_000, 50, 50)
    # No pacing on loopback: aioquic's pacer spreads the congestion window over a smoothed
    # RTT that mostly measures this process's own backlog, and each pause costs a timer
    # wake-up (measured: 4.8 -> 5.9 MB/s each way). The congestion window still bounds
    # what is in flight (RFC 9002 section 7.7 makes pacing a SHOULD, not a MUST).
    pacer = getattr(getattr(client._quic, "_loss", None), "_pacer", None)
    if pacer is not None:
        pacer.next_send_time = lambda now: None
    state.wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    index = 0
    digest = hashlib.sha256()
    block = 1 << 20
    while sent < args.send and client.terminated is None and state.reset is None:
        if sent - state.received >= args.window:
            # Woken by the echo (or by the end of the stream or the connection).
            state.wake.clear()
            try:
                await asyncio.wait_for(state.wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            continue
        size = min(block, args.send - sent)
        data = chunk_of(args.seed, index, size)
        digest.update(data)
        client.send(stream_id, data, end=sent + size >= args.send)
        sent += size
        index += 1
        # Let aioquic's transmit and receive run.
        await asyncio.sleep(0)
    if sent == 0:
        client.send(stream_id, b"", end=True)
    result["sent"] = sent
    result["sent_sha256"] = digest.hexdigest()
    result["ended"] = await asyncio.wait_for(state.ended, args.timeout)
    elapsed = loop.time() - started
    result["received"] = state.received
    result["received_sha256"] = state.digest.hexdigest()
    result["reset"] = state.reset
    result["seconds"] = round(elapsed, 3)
    result["mb_per_s_each_way"] = round(sent / 1e6 / elapsed, 1) if elapsed > 0 else None
    return result


def open_client(args, configuration):
    """A connection to the relay (an async context manager)."""
    return connect(
        args.host,
        args.port,
        configuration=configuration,
        create_protocol=Client,
        wait_connected=True,
    )


async def concurrent(args, configuration):
    """--streams CONNECTs spread over --connections connections, all at once."""
    per_connection = [args.streams // args.connections] * args.connections
    for i in range(args.streams % args.connections):
        per_connection[i] += 1

    async def one_connection(first, count):
        async with open_client(args, configuration) as client:
            tasks = []
            for i in range(first, first + count):
                payload = random.Random(args.seed + i).randbytes(args.send)
                tasks.append(one_connect(client, args.authority, payload, False, args.timeout))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, client.terminated

    firsts = [sum(per_connection[:i]) for i in range(args.connections)]
    done = await asyncio.gather(
        *[one_connection(f, c) for f, c in zip(firsts, per_connection)], return_exceptions=True
    )
    results = []
    output = {"connections_failed": 0, "terminated": []}
    for item in done:
        if isinstance(item, BaseException):
            output["connections_failed"] += 1
            continue
        results.extend(item[0])
        if item[1] is not None:
            output["terminated"].append(item[1])
    return results, output


def summarize(results, args, output):
    ok = 0
    statuses = {}
    for r in results:
        if isinstance(r, BaseException):
            statuses["exception"] = statuses.get("exception", 0) + 1
            continue
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
        if (
            r.get("status") == 200
            and r.get("ended") is True
            and r.get("received") == args.send
            and r.get("received_sha256") == r.get("sent_sha256")
        ):
            ok += 1
    output["streams"] = args.streams
    output["ok"] = ok
    output["statuses"] = statuses


async def run(args):
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=args.server_name,
        max_datagram_frame_size=65536,
        # The largest UDP payload quinn accepts by default (1472) less headroom: fewer,
        # fuller packets for the bulk transfers (Python pays per packet).
        max_datagram_size=1452,
    )
    if args.mode == "bulk":
        # Receive windows (connection and stream) above the --window bytes in flight, so
        # that flow control never holds the echo back (aioquic's default is 1 MiB).
        configuration.max_data = 4 * args.window
        configuration.max_stream_data = 4 * args.window
    configuration.verify_mode = ssl.CERT_REQUIRED
    configuration.load_verify_locations(args.ca)
    if args.cert:
        configuration.load_cert_chain(args.cert, args.key)

    output = {"connected": False}
    if args.mode == "concurrent" and args.connections > 1:
        started = time.time()
        try:
            results, extra = await concurrent(args, configuration)
        except (ConnectionError, asyncio.TimeoutError) as error:
            output["connect_error"] = str(error) or "timeout"
            return output
        output["connected"] = True
        output.update(extra)
        summarize(results, args, output)
        output["seconds"] = round(time.time() - started, 3)
        return output
    try:
        async with open_client(args, configuration) as client:
            output["connected"] = True
            # A larger receive buffer than the default 208 KiB: Python reads slowly, and a
            # lost CONNECTION_CLOSE is only noticed at the idle timeout (aioquic does not
            # recognise stateless resets).
            sock = client._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            for header in args.header or []:
                name, _, value = header.partition(":")
                client.extra_headers.append((name.encode(), value.encode()))
            try:
                if args.mode == "hold":
                    output.update(await hold(client, args))
                elif args.mode == "bulk":
                    output.update(await bulk(client, args))
                elif args.mode == "raw":
                    output.update(await raw_request(client, args))
                elif args.mode == "stray":
                    output.update(await stray_datagrams(client, args))
                elif args.mode == "udp":
                    output.update(await udp_session(client, args))
                elif args.mode == "connect":
                    if args.payload is not None:
                        payload = args.payload.encode().decode("unicode_escape").encode("latin-1")
                    else:
                        payload = random.Random(args.seed).randbytes(args.send)
                    extra = {
                        "method": args.method,
                        "scheme": args.scheme,
                        "path": args.path,
                        "protocol": args.protocol,
                    }
                    output.update(
                        await one_connect(
                            client,
                            args.authority,
                            payload,
                            args.wait_end_first,
                            args.timeout,
                            extra,
                        )
                    )
                else:
                    tasks = []
                    for i in range(args.streams):
                        payload = random.Random(args.seed + i).randbytes(args.send)
                        tasks.append(
                            one_connect(client, args.authority, payload, False, args.timeout)
                        )
                    results = await asyncio.gather(*tasks, return_exceptions=True)
                    summarize(results, args, output)
                    output["distinct_stream_ids"] = len(
                        {r["stream_id"] for r in results if isinstance(r, dict)}
                    )
            except asyncio.TimeoutError:
                output["timeout"] = True
            output["terminated"] = client.terminated
    except ConnectionError as error:
        output["connect_error"] = str(error)
    except asyncio.TimeoutError:
        output["connect_error"] = "timeout"
    return output


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "mode", choices=["connect", "concurrent", "udp", "hold", "bulk", "raw", "stray"]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--ca", required=True, help="CA that issued the relay's certificate")
    parser.add_argument("--cert", help="client certificate (PEM)")
    parser.add_argument("--key", help="client key (PEM)")
    parser.add_argument("--authority", required=True)
    parser.add_argument("--send", type=int, default=0)
    parser.add_argument(
        "--payload", help="connect: send this text (backslash escapes allowed) instead of --send"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--wait-end-first", action="store_true")
    parser.add_argument("--datagrams", type=int, default=10)
    parser.add_argument("--method", default="CONNECT")
    parser.add_argument("--scheme", help="send :scheme (not part of a classic CONNECT)")
    parser.add_argument("--path", help="send :path (not part of a classic CONNECT)")
    parser.add_argument("--protocol", help="send :protocol (extended CONNECT, RFC 9220)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--header", action="append", help="name:value added to requests")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--window", type=int, default=8 << 20, help="bulk: most bytes unechoed")
    parser.add_argument(
        "--drain", type=int, default=64, help="bulk: most datagrams handled per wake-up"
    )
    parser.add_argument("--headers-json", help="raw: the request's fields, [[name, value], ...]")
    parser.add_argument("--then-authority", help="raw, stray: a good CONNECT afterwards")
    args = parser.parse_args()
    profile = os.environ.get("H3_CLIENT_PROFILE")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        output = profiler.runcall(asyncio.run, asyncio.wait_for(run(args), args.timeout * 2))
        profiler.dump_stats(profile)
    else:
        output = asyncio.run(asyncio.wait_for(run(args), args.timeout * 2))
    json.dump(output, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
