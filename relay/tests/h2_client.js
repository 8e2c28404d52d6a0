#!/usr/bin/env node
// An independent HTTP/2 MASQUE client for the relay tests, on Node.js's built-in `http2`
// module (nghttp2 inside), playing Apple's relay client on the HTTP/2 fallback: TLS with a
// client certificate and ALPN h2, classic CONNECT (`:method CONNECT`, `:authority` only,
// RFC 9113 section 8.5), extended CONNECT for connect-udp (RFC 8441, RFC 9298) with DATAGRAM
// capsules on the stream (RFC 9297 section 3.5). Prints JSON on stdout that the Rust tests
// check: one object, or for `hold` one object per line (events).
//
// Modes:
//   connect  one CONNECT; send --send random bytes, end the stream, read until the relay
//            ends its side. --wait-end-first reads until the relay ends its side *before*
//            sending (the target closes first).
//   udp      connect-udp to --path: --datagrams DATAGRAM capsules, an unknown capsule and a
//            datagram with context ID 7 out; echoes counted; then the stream is ended.
//   hold     one CONNECT that keeps sending (16 KiB every 5 ms) and reading until the relay
//            resets or ends it; prints {"event":"flowing"} once echoes arrive, then
//            {"event":"closed", ...} with the time (ms since the epoch) and the RST code.
//
// Options: --port P --ca FILE [--cert FILE --key FILE] --authority A [--path P] [--send N]
//          [--header name:value]... [--method M] [--timeout S]

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http2 = require('http2');

function parseArgs(argv) {
  const args = { mode: argv[0], headers: [], send: 0, datagrams: 10, timeout: 30, method: 'CONNECT' };
  for (let i = 1; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '').replace(/-/g, '_');
    if (name === 'wait_end_first') {
      args.wait_end_first = true;
    } else if (name === 'header') {
      args.headers.push(argv[++i]);
    } else {
      args[name] = argv[++i];
    }
  }
  for (const key of ['send', 'datagrams', 'timeout', 'port']) {
    args[key] = Number(args[key]);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const output = { connected: false };
let printed = false;

function emit(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

function finish(extra) {
  if (printed) return;
  printed = true;
  Object.assign(output, extra || {});
  emit(output);
  process.exit(0);
}

setTimeout(() => finish({ timeout: true }), args.timeout * 1000).unref();

// --- QUIC variable-length integers (RFC 9000 section 16) and capsules (RFC 9297 3.2) ---

function varint(value) {
  if (value < 0x40) return Buffer.from([value]);
  if (value < 0x4000) return Buffer.from([0x40 | (value >> 8), value & 0xff]);
  const b = Buffer.alloc(4);
  b.writeUInt32BE((0x80000000 | value) >>> 0);
  return b;
}

function readVarint(buf, offset) {
  if (offset >= buf.length) return null;
  const len = 1 << (buf[offset] >> 6);
  if (offset + len > buf.length) return null;
  let value = buf[offset] & 0x3f;
  for (let i = 1; i < len; i++) value = value * 256 + buf[offset + i];
  return { value, len };
}

function capsule(type, value) {
  return Buffer.concat([varint(type), varint(value.length), value]);
}

// --- the session ---

function connectSession() {
  const options = {
    ca: fs.readFileSync(args.ca),
    servername: 'localhost',
    ALPNProtocols: ['h2'],
  };
  if (args.cert) {
    options.cert = fs.readFileSync(args.cert);
    options.key = fs.readFileSync(args.key);
  }
  const session = http2.connect(`https://127.0.0.1:${args.port}`, options);
  const settings = new Promise((resolve) => session.once('remoteSettings', resolve));
  const sessionClosed = new Promise((resolve) => session.once('close', resolve));
  session.on('connect', () => {
    output.connected = true;
  });
  session.on('goaway', (errorCode) => {
    output.goaway = errorCode;
  });
  session.on('error', (error) => {
    output.error = error.code || String(error);
    output.message = error.message;
    // A held flow reports its own end (the stream closes with the session).
    if (args.mode !== 'hold') finish();
  });
  session.on('close', () => {
    // A refused or closed session ends every request without a response.
    setTimeout(() => finish({ session_closed: true }), 200);
  });
  return { session, settings, sessionClosed };
}

function requestHeaders(base) {
  const headers = Object.assign({}, base);
  for (const header of args.headers) {
    const at = header.indexOf(':');
    headers[header.slice(0, at)] = header.slice(at + 1);
  }
  return headers;
}

function onResponse(req, result) {
  return new Promise((resolve) => {
    req.on('response', (headers) => {
      result.status = headers[':status'];
      result.proxy_status = headers['proxy-status'] || null;
      result.capsule_protocol = headers['capsule-protocol'] || null;
      resolve(headers);
    });
    req.on('close', () => resolve(null));
  });
}

function track(req, result) {
  const digest = crypto.createHash('sha256');
  result.received = 0;
  const ended = new Promise((resolve) => req.on('end', () => resolve(true)));
  const closed = new Promise((resolve) =>
    req.on('close', () => {
      result.rst_code = req.rstCode;
      resolve();
    }),
  );
  req.on('data', (chunk) => {
    result.received += chunk.length;
    digest.update(chunk);
  });
  req.on('error', (error) => {
    result.stream_error = error.code || String(error);
  });
  return { ended, closed, digest };
}

function writeAll(req, payload) {
  return new Promise((resolve) => {
    let offset = 0;
    const step = 16 * 1024;
    const pump = () => {
      while (offset < payload.length) {
        const chunk = payload.subarray(offset, offset + step);
        offset += chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end(resolve);
    };
    pump();
  });
}

async function connectMode(session) {
  const result = {};
  const headers = { ':method': args.method, ':authority': args.authority };
  if (args.method !== 'CONNECT') {
    headers[':scheme'] = 'https';
    headers[':path'] = args.path || '/';
  }
  const req = session.request(requestHeaders(headers), { endStream: false });
  const tracked = track(req, result);
  const response = await onResponse(req, result);
  if (response === null || result.status !== 200) {
    await tracked.closed;
    result.ended = result.rst_code === 0 || result.rst_code === undefined;
    return result;
  }
  if (args.wait_end_first) {
    await tracked.ended;
    result.ended_before_send = true;
    result.received_before_send = result.received;
  }
  const payload = crypto.randomBytes(args.send);
  result.sent = payload.length;
  result.sent_sha256 = crypto.createHash('sha256').update(payload).digest('hex');
  await writeAll(req, payload);
  if (!args.wait_end_first) {
    result.ended = await Promise.race([tracked.ended, tracked.closed.then(() => false)]);
  } else {
    result.ended = true;
  }
  await tracked.closed;
  result.received_sha256 = tracked.digest.digest('hex');
  return result;
}

async function udpMode(session, settings) {
  const remote = await settings;
  const result = { enable_connect_protocol: !!remote.enableConnectProtocol };
  const req = session.request(
    requestHeaders({
      ':method': 'CONNECT',
      ':protocol': 'connect-udp',
      ':scheme': 'https',
      ':authority': args.authority,
      ':path': args.path,
      'capsule-protocol': '?1',
    }),
    { endStream: false },
  );
  const closed = new Promise((resolve) =>
    req.on('close', () => {
      result.rst_code = req.rstCode;
      resolve();
    }),
  );
  const response = await onResponse(req, result);
  if (response === null || result.status !== 200) {
    await closed;
    return result;
  }
  // Decode the DATAGRAM capsules coming back (RFC 9297 section 3.5).
  let buffer = Buffer.alloc(0);
  const echoed = new Set();
  result.unexpected = 0;
  result.other_capsules = 0;
  req.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      const type = readVarint(buffer, 0);
      if (!type) break;
      const length = readVarint(buffer, type.len);
      if (!length) break;
      const start = type.len + length.len;
      if (buffer.length < start + length.value) break;
      const value = buffer.subarray(start, start + length.value);
      buffer = buffer.subarray(start + length.value);
      if (type.value !== 0) {
        result.other_capsules += 1;
      } else if (value[0] === 0) {
        echoed.add(value.subarray(1).toString());
      } else {
        result.unexpected += 1;
      }
    }
  });
  const ended = new Promise((resolve) => req.on('end', () => resolve(true)));
  const payloads = [];
  for (let i = 0; i < args.datagrams; i++) {
    payloads.push(`datagram ${i} `.repeat(i + 1));
  }
  // An unknown capsule type first: the relay skips it (RFC 9297 section 3.2).
  req.write(capsule(0x2b1d, Buffer.from('unknown capsule value')));
  // A datagram with an unknown context ID: dropped (RFC 9298 section 4).
  req.write(capsule(0, Buffer.concat([Buffer.from([7]), Buffer.from('ignored')])));
  for (const payload of payloads) {
    req.write(capsule(0, Buffer.concat([Buffer.from([0]), Buffer.from(payload)])));
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const deadline = Date.now() + args.timeout * 500;
  while (Date.now() < deadline && !payloads.every((p) => echoed.has(p))) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  result.sent = payloads.length;
  result.echoed = payloads.filter((p) => echoed.has(p)).length;
  // Ending the stream ends the UDP association (RFC 9298 section 3).
  req.end();
  result.ended = await Promise.race([ended, closed.then(() => false)]);
  await closed;
  return result;
}

async function holdMode(session, sessionClosed) {
  const result = { event: 'closed', received: 0, sent: 0 };
  const req = session.request(
    requestHeaders({ ':method': 'CONNECT', ':authority': args.authority }),
    { endStream: false },
  );
  const closed = new Promise((resolve) =>
    req.on('close', () => {
      result.at_ms = Date.now();
      result.rst_code = req.rstCode;
      resolve();
    }),
  );
  req.on('error', (error) => {
    result.stream_error = error.code || String(error);
  });
  const response = await onResponse(req, result);
  if (response === null || result.status !== 200) {
    await closed;
    return result;
  }
  let flowing = false;
  req.on('data', (chunk) => {
    result.received += chunk.length;
    if (!flowing && result.received >= 64 * 1024) {
      flowing = true;
      emit({ event: 'flowing', received: result.received, at_ms: Date.now() });
    }
  });
  req.on('end', () => {
    result.ended = true;
  });
  const chunk = crypto.randomBytes(16 * 1024);
  const timer = setInterval(() => {
    if (!req.destroyed && !req.writableEnded && req.writableLength < 256 * 1024) {
      req.write(chunk);
      result.sent += chunk.length;
    }
  }, 5);
  await closed;
  clearInterval(timer);
  // A reset flow may be followed by GOAWAY and the session's close (revoke_certificate):
  // give them a moment to arrive.
  await Promise.race([sessionClosed, new Promise((resolve) => setTimeout(resolve, 1000))]);
  return result;
}

async function main() {
  const { session, settings, sessionClosed } = connectSession();
  let result;
  if (args.mode === 'connect') {
    result = await connectMode(session);
  } else if (args.mode === 'udp') {
    result = await udpMode(session, settings);
  } else if (args.mode === 'hold') {
    result = await holdMode(session, sessionClosed);
  } else {
    throw new Error(`unknown mode ${args.mode}`);
  }
  finish(result);
}

main().catch((error) => finish({ exception: String(error && error.stack) }));
