//! Malformed input from independent clients, on both listeners: requests with bad
//! pseudo-header fields, CONNECT without :authority, header sections over the limit (aioquic
//! on HTTP/3, the `h2` library on HTTP/2, both sending their fields unchecked), and HTTP
//! Datagrams for streams without a connect-udp flow. Each is answered (400, 431) or reset,
//! never a panic, and counted; the connection keeps serving: a well-formed CONNECT on it
//! afterwards echoes. (Unknown capsule types are skipped: `h3_connect.rs` and
//! `h2_connect.rs` send one before a DATAGRAM capsule that is then echoed.)
//!
//! Needs python3 with aioquic and h2 (`python3 -m pip install aioquic==1.7.2 h2==4.3.0`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/lab.rs"]
mod lab;

use serde_json::{json, Value};

use lab::*;

/// How the relay (or its HTTP layer) answers a malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `400` with `Proxy-Status: …; error=http_request_error` from the relay.
    BadRequest,
    /// `501` from the relay (counted in `unsupported_requests`).
    NotImplemented,
    /// `431` from the HTTP layer (RFC 6585 §5), then the stream refused.
    TooLarge,
    /// Not seen as malformed: decided and dialled like a good request (here: 502
    /// dns_error, as its host does not resolve).
    Served,
    /// The HTTP layer closed the whole connection with this error code: HTTP/2 GOAWAY
    /// PROTOCOL_ERROR (0x1) for a pseudo-header field h2 does not know or an uppercase name
    /// (h2 treats these as connection errors, RFC 9113 §5.4.1), ENHANCE_YOUR_CALM (0xb) for
    /// a header block over its buffer.
    ConnectionClosed(u64),
    /// A stream reset: H3_MESSAGE_ERROR (0x10e, RFC 9114 §4.1.2) or HTTP/2 PROTOCOL_ERROR
    /// (0x1, RFC 9113 §8.1.1).
    Reset,
}

struct Case {
    name: &'static str,
    fields: Value,
    h3: Outcome,
    h2: Outcome,
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    // The clients expand {"repeat", "times"} (command lines are limited to 128 KiB).
    let big = json!({"repeat": "a", "times": 20_000});
    // (aioquic's QPACK encoder refuses values much longer than this.)
    let huge = json!({"repeat": "b", "times": 60_000});
    vec![
        Case {
            name: "CONNECT without :authority",
            fields: json!([[":method", "CONNECT"]]),
            h3: Reset,
            h2: BadRequest,
        },
        Case {
            name: "no :method",
            fields: json!([[":authority", "host.test:443"]]),
            h3: Reset,
            h2: Reset,
        },
        Case {
            name: "unknown pseudo-header",
            fields: json!([
                [":method", "CONNECT"],
                [":authority", "host.test:443"],
                [":color", "red"]
            ]),
            h3: Reset,
            h2: ConnectionClosed(0x1),
        },
        Case {
            // h3 0.0.8 does not check the order (RFC 9114 §4.3) and hands the request on as
            // if well-formed; the relay cannot see the order. It is served like any other
            // (host.test does not resolve: 502).
            name: "pseudo-header after a regular field",
            fields: json!([
                [":method", "CONNECT"],
                ["x-early", "1"],
                [":authority", "host.test:443"]
            ]),
            h3: Served,
            h2: Reset,
        },
        Case {
            // h3 0.0.8 keeps the last of repeated pseudo-header fields (RFC 9114 §4.3 makes
            // the request malformed): the relay sees a GET and answers 501.
            name: "repeated :method",
            fields: json!([
                [":method", "CONNECT"],
                [":method", "GET"],
                [":authority", "host.test:443"]
            ]),
            h3: NotImplemented,
            h2: Reset,
        },
        Case {
            name: "uppercase field name",
            fields: json!([
                [":method", "CONNECT"],
                [":authority", "host.test:443"],
                ["X-Upper", "1"]
            ]),
            h3: Reset,
            h2: ConnectionClosed(0x1),
        },
        Case {
            name: "empty :authority",
            fields: json!([[":method", "CONNECT"], [":authority", ""]]),
            h3: Reset,
            h2: Reset,
        },
        Case {
            name: "authority without a port",
            fields: json!([[":method", "CONNECT"], [":authority", "host.test"]]),
            h3: BadRequest,
            h2: BadRequest,
        },
        Case {
            name: "a 20 kB field (limit 16 KiB)",
            fields: json!([
                [":method", "CONNECT"],
                [":authority", "host.test:443"],
                ["x-big", big]
            ]),
            h3: TooLarge,
            h2: TooLarge,
        },
        Case {
            name: "a 60 kB field",
            fields: json!([
                [":method", "CONNECT"],
                [":authority", "host.test:443"],
                ["x-huge", huge]
            ]),
            h3: TooLarge,
            h2: TooLarge,
        },
    ]
}

fn outcome_of(out: &Value, reset_code: u64) -> Option<Outcome> {
    let status = out["status"].as_u64();
    let reset = out["reset"].as_u64().or(out["rst_code"].as_u64());
    match (status, reset) {
        (Some(400), _) => {
            let value = out["proxy_status"].as_str().unwrap_or_default();
            // The raw HTTP/2 client does not report fields; the HTTP/3 one does.
            (out["proxy_status"].is_null() || value.contains("error=http_request_error"))
                .then_some(Outcome::BadRequest)
        }
        (Some(431), _) => Some(Outcome::TooLarge),
        (Some(501), _) => Some(Outcome::NotImplemented),
        (Some(502), _) => out["proxy_status"]
            .as_str()
            .is_some_and(|v| v.contains("error=dns_error"))
            .then_some(Outcome::Served),
        (None, Some(code)) if code == reset_code => Some(Outcome::Reset),
        (None, None) => out["goaway"].as_u64().map(Outcome::ConnectionClosed),
        _ => None,
    }
}

/// Sends every case to `client`'s listener, each on a new connection followed by a good
/// CONNECT, and checks each outcome and that the connection survived where it should.
async fn send_cases(lab: &Lab, client: Client, cases: &[Case]) {
    let (address, _received) = target(TargetKind::Echo).await;
    let then = authority(address);
    let mut mismatches = Vec::new();
    for case in cases {
        let fields = case.fields.to_string();
        let (expected, reset_code, args) = match client {
            Client::RawH2 => (case.h2, 0x1, vec![]),
            _ => (case.h3, 0x10e, vec!["raw", "--authority", "unused:1"]),
        };
        let mut args = args;
        args.extend(["--headers-json", &fields, "--then-authority", &then]);
        let out = lab.run(client, Some("good"), &args).await;
        if outcome_of(&out, reset_code) != Some(expected) {
            mismatches.push(format!(
                "{client:?}, {}: expected {expected:?}: {out}",
                case.name
            ));
            continue;
        }
        if !matches!(expected, Outcome::ConnectionClosed(_)) {
            // The connection survived and still serves.
            let survived = out["goaway"].is_null()
                && out["terminated"].is_null()
                && out["then_status"] == 200
                && out["then_received"] == 10;
            if !survived {
                mismatches.push(format!("{client:?}, {}: connection lost: {out}", case.name));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_on_http3() {
    let lab = lab().await;
    let cases = cases();
    send_cases(&lab, Client::Aioquic, &cases).await;
    let lenient = [Outcome::Served, Outcome::NotImplemented];
    let n = cases.iter().filter(|c| !lenient.contains(&c.h3)).count() as u64;
    let stats = lab.stats_until(|s| s.malformed_requests >= n).await;
    assert_eq!(stats.malformed_requests, n, "{stats:?}");
    assert_eq!(stats.unsupported_requests, 1, "{stats:?}");
    assert_eq!(
        stats.flows_opened,
        cases.len() as u64,
        "only the follow-ups were relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_on_http2() {
    let lab = lab().await;
    let cases = cases();
    send_cases(&lab, Client::RawH2, &cases).await;
    // What the relay answered is in malformed_requests; what h2 refused itself, in
    // http2_streams_refused (seen when the follow-up arrived), or http2_protocol_errors.
    let count = |f: fn(&Outcome) -> bool| cases.iter().filter(|c| f(&c.h2)).count() as u64;
    let answered = count(|o| *o == Outcome::BadRequest);
    let closed = count(|o| matches!(o, Outcome::ConnectionClosed(_)));
    let refused = cases.len() as u64 - answered - closed;
    let stats = lab
        .stats_until(|s| {
            s.http2_streams_refused >= refused
                && s.http2_protocol_errors >= closed
                && s.flows_active == 0
        })
        .await;
    assert_eq!(stats.malformed_requests, answered, "{stats:?}");
    assert_eq!(stats.http2_streams_refused, refused, "{stats:?}");
    assert_eq!(stats.http2_protocol_errors, closed, "{stats:?}");
    assert_eq!(stats.flows_opened, cases.len() as u64 - closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_for_streams_without_a_udp_flow_are_dropped() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let out = lab
        .client(
            Some("good"),
            &[
                "stray",
                "--authority",
                "unused:1",
                "--then-authority",
                &authority(address),
                "--datagrams",
                "5",
            ],
        )
        .await;
    assert_eq!(out["then_status"], 200, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    assert_eq!(out["then_received"], 10, "{out}");
    assert_eq!(out["terminated"], Value::Null, "{out}");
    // 5 for a stream never opened, 5 for the classic CONNECT stream, 1 empty.
    let stats = lab.stats_until(|s| s.datagrams_dropped >= 11).await;
    assert_eq!(stats.datagrams_dropped, 11, "{stats:?}");
    assert_eq!(stats.flows_opened, 1);
}
