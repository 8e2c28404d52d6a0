//! The admin HTTPS listener through a real daemon and a real HTTPS client (curl): bad
//! credentials → 401 and nothing changes; malformed bodies → 400; a risk report for an unknown
//! device → 404 and nothing changes; a webhook only makes the daemon re-read its source (its
//! body never changes state); a risk report changes the verdict and resets the device's open
//! flow (an aioquic device through the relay), measured.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

mod common;

use common::{
    device, device_certificate, echo_server, free_port, free_udp_port, good, now_ms, request,
    require_aioquic, Lab, DEVICE_OK,
};
use serde_json::Value;
use std::time::Duration;

const DEVICE_OUT: &str = "[[device]]\nserial = \"C02LAB0001\"\nmanaged = true\ngroups = [\"Engineering\"]\nrisk = \"secure\"\n";

/// An authenticated risk report.
fn report(lab: &Lab, port: u16, body: &str) -> (u16, Value) {
    request(lab, port, "POST", "/risk", good(), body)
}

fn wait_admin(lab: &Lab) {
    lab.wait_for("the admin listener", Duration::from_secs(20), || {
        lab.json(&["status"])["compliance"]["admin"]
            .as_str()
            .unwrap_or("")
            .starts_with("listening")
    });
}

#[test]
fn webhooks_and_the_risk_feed_authenticate_validate_and_never_act_on_their_own_word() {
    let admin = free_port();
    let lab = Lab::with_admin(free_udp_port(), admin);
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    let d = lab.start();
    wait_admin(&lab);
    let compliant = || lab.json(&["device", "show", "C02LAB0001"])["verdict"]["compliant"] == true;
    assert!(compliant());
    let risk_high = r#"{"serial":"C02LAB0001","level":"high","reasons":["malware"]}"#;

    // bad or missing credentials: 401, nothing changes, an event
    let (code, _) = request(&lab, admin, "POST", "/risk", Some("jamf:wrong"), risk_high);
    assert_eq!(code, 401);
    let (code, _) = request(
        &lab,
        admin,
        "POST",
        "/risk",
        Some("other:s3cret-pw"),
        risk_high,
    );
    assert_eq!(code, 401);
    let (code, _) = request(&lab, admin, "POST", "/risk", None, risk_high);
    assert_eq!(code, 401);
    assert!(compliant());
    assert!(lab.json(&["device", "show", "C02LAB0001"])["facts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["source"] != "risk-feed"));
    assert_eq!(lab.events_of("webhook.refused").len(), 3);

    // malformed: 400
    for body in [
        "not json",
        r#"{"serial":"C02LAB0001","level":"severe"}"#,
        r#"{"serial":"C02LAB0001"}"#,
        r#"{"serial":"C02LAB0001","level":"high","colour":"red"}"#,
        r#"{"serial":"","level":"high"}"#,
        r#"{"serial":"C02LAB0001","level":"high","expires":"yesterday"}"#,
        r#"{"serial":"C02LAB0001","level":"high","expires":1000}"#,
    ] {
        let (code, v) = report(&lab, admin, body);
        assert_eq!(code, 400, "{body}: {v}");
    }
    // an unknown device: 404, nothing changes
    let (code, v) = report(&lab, admin, r#"{"serial":"NOBODY1","level":"high"}"#);
    assert_eq!(code, 404, "{v}");
    assert!(lab.json(&["device", "show", "NOBODY1"])["facts"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(compliant());
    let (code, _) = request(&lab, admin, "GET", "/risk", good(), "");
    assert_eq!(code, 405);
    let (code, _) = request(&lab, admin, "POST", "/elsewhere", good(), "{}");
    assert_eq!(code, 404);
    // no jamf-pro source configured
    let (code, _) = request(&lab, admin, "POST", "/webhooks/jamf", good(), "{}");
    assert_eq!(code, 404);

    // the MDM drops the device from the compliant group; nothing re-reads it yet (refresh 5m)
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OUT).unwrap();
    let hint = r#"{"webhook":{"webhookEvent":"SmartGroupComputerMembershipChange"},"event":{"groupAddedDevices":[],"groupRemovedDevices":[{"serialNumber":"C02LAB0001"}]}}"#;
    let (code, _) = request(
        &lab,
        admin,
        "POST",
        "/webhooks/source/mdm",
        Some("jamf:nope"),
        hint,
    );
    assert_eq!(code, 401);
    std::thread::sleep(Duration::from_millis(300));
    assert!(compliant(), "a refused webhook re-read the source");
    let (code, _) = request(
        &lab,
        admin,
        "POST",
        "/webhooks/source/mdm",
        good(),
        "garbage",
    );
    assert_eq!(code, 400);
    let (code, _) = request(&lab, admin, "POST", "/webhooks/source/nosuch", good(), hint);
    assert_eq!(code, 404);
    // an authenticated webhook: 202, the source is re-read, the device is out
    let (code, v) = request(&lab, admin, "POST", "/webhooks/source/mdm", good(), hint);
    assert_eq!(code, 202, "{v}");
    lab.wait_for("the webhook's re-read", Duration::from_secs(10), || {
        !compliant()
    });
    let received = lab.events_of("webhook.received");
    assert_eq!(
        received[0]["webhook_event"],
        "SmartGroupComputerMembershipChange"
    );
    // the event follows the re-decision of the flows: it may land just after the verdict
    lab.wait_for(
        "the webhook's compliance.synced",
        Duration::from_secs(5),
        || {
            lab.events_of("compliance.synced")
                .iter()
                .any(|e| e["trigger"] == "webhook")
        },
    );
    // a webhook claiming the device is back changes nothing while the source says otherwise
    let back = r#"{"webhook":{"webhookEvent":"SmartGroupComputerMembershipChange"},"event":{"groupAddedDevices":[{"serialNumber":"C02LAB0001"}]}}"#;
    let synced = lab.events_of("compliance.synced").len();
    let (code, _) = request(&lab, admin, "POST", "/webhooks/source/mdm", good(), back);
    assert_eq!(code, 202);
    lab.wait_for("the second re-read", Duration::from_secs(10), || {
        lab.events_of("compliance.synced").len() > synced
    });
    assert!(!compliant(), "a webhook's body changed device state");
    // a webhook naming a device nobody knows: accepted as a hint, the device stays unknown
    let unknown =
        r#"{"webhook":{"webhookEvent":"ComputerAdded"},"event":{"serialNumber":"NOBODY2"}}"#;
    let synced = lab.events_of("compliance.synced").len();
    let (code, _) = request(&lab, admin, "POST", "/webhooks/source/mdm", good(), unknown);
    assert_eq!(code, 202);
    lab.wait_for("the third re-read", Duration::from_secs(10), || {
        lab.events_of("compliance.synced").len() > synced
    });
    let show = lab.json(&["device", "show", "NOBODY2"]);
    assert!(show["facts"].as_array().unwrap().is_empty(), "{show}");
    assert_eq!(show["verdict"]["compliant"], false);
    lab.stop(d);
}

#[test]
fn a_risk_report_changes_the_verdict_and_resets_the_open_flow_at_once() {
    require_aioquic();
    let relay_port = free_udp_port();
    let admin = free_port();
    let lab = Lab::with_admin(relay_port, admin);
    device_certificate(&lab.dir, "C02LAB0001");
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    let echo = echo_server();
    let d = lab.start();
    wait_admin(&lab);
    lab.wait_for("the relay", Duration::from_secs(20), || {
        let state = lab.json(&["status"])["relay"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(!state.starts_with("error"), "{state}");
        state.starts_with("listening")
    });

    let mut latencies = Vec::new();
    for flip in 0..5 {
        let dev = device(&lab.dir, relay_port, echo);
        let flowing = dev.lines.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(flowing["event"], "flowing", "{flowing}");
        let flows = lab.json(&["flows"]);
        assert_eq!(flows["flows"][0]["egress"], "pair", "flip {flip}: {flows}");

        let sent = now_ms();
        let (code, v) = report(
            &lab,
            admin,
            r#"{"serial":"c02lab0001","level":"high","reasons":["malware found"],"expires":"2099-01-01T00:00:00Z"}"#,
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["changed"], true, "{v}");
        let end = dev.lines.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(end["reset"], 0x10c, "the flow was not reset: {end}");
        let latency = end["reset_at_ms"].as_f64().unwrap() - sent;
        latencies.push(latency);
        let show = lab.json(&["device", "show", "C02LAB0001"]);
        assert_eq!(show["verdict"]["compliant"], false, "{show}");
        assert!(show["verdict"]["why"]
            .as_str()
            .unwrap()
            .contains("malware found"));
        drop(dev);

        // the device's next CONNECT leaves untrusted
        if flip == 0 {
            let dev = device(&lab.dir, relay_port, echo);
            assert_eq!(
                dev.lines.recv_timeout(Duration::from_secs(20)).unwrap()["event"],
                "flowing"
            );
            assert_eq!(lab.json(&["flows"])["flows"][0]["egress"], "public");
        }

        // the threat is gone: trusted again with nothing done on the device
        let (code, v) = report(&lab, admin, r#"{"serial":"C02LAB0001","level":"secure"}"#);
        assert_eq!(code, 200, "{v}");
    }
    let changed = lab.events_of("compliance.changed");
    assert!(changed.iter().any(|e| e["reason"] == "risk feed"
        && e["after"]["risk"] == "high"
        && e["before"]["risk"] == "secure"));
    assert!(lab
        .events_of("enforcement.revoked")
        .iter()
        .any(|e| e["trigger"] == "compliance.changed"));
    // the daemon's own share: from the change to every affected flow signalled
    let mut enforce_us: Vec<u64> = lab
        .events_of("enforcement.revoked")
        .iter()
        .filter_map(|e| e["enforce_us"].as_u64())
        .collect();
    enforce_us.sort();
    eprintln!(
        "daemon: change → flows re-decided and reset signalled: median {} µs, max {} µs",
        enforce_us[enforce_us.len() / 2],
        enforce_us[enforce_us.len() - 1]
    );
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "risk report → stream reset over {} flips: median {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        latencies.iter().all(|l| *l < 1000.0),
        "resets took {latencies:?} ms"
    );
    lab.stop(d);
}
