//! Jamf Pro end to end through a real daemon: a `jamf-pro` source pointing at the Jamf Pro
//! stand-in (`tests::standins::jamf`, its CA given to the daemon through `SSL_CERT_FILE`), an
//! aioquic device in the compliant smart group holding a CONNECT through the relay. The stand-in
//! drops the device from the group and its webhook `SmartGroupComputerMembershipChange` arrives
//! on the admin listener: the daemon re-reads that device from the API and the relay resets the
//! flow within a second; `device show` names jamf as the source. Back in the group + webhook →
//! trusted again. A webhook with bad credentials → 401 and nothing is re-read.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

mod common;

use common::{
    device, device_certificate, echo_server, free_port, free_udp_port, good, now_ms, request,
    require_aioquic, Lab,
};
use std::time::Duration;
use tests::standins::jamf::{JamfData, JamfStandin};

const ID: &str = "attestgate-client";
const SECRET: &str = "s3cret-for-the-lab";
const SERIAL: &str = "C02STAND0001";

#[test]
fn a_smart_group_change_announced_by_webhook_resets_the_open_flow_and_restores_it() {
    require_aioquic();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // computers 1 and 2; computer 1 (C02STAND0001) is in smart group 1 "Compliant Macs"
    let jamf = rt.block_on(JamfStandin::start(
        ID,
        SECRET,
        JamfData::sample(2, 0),
        Duration::from_secs(600),
    ));
    let relay_port = free_udp_port();
    let admin = free_port();
    let lab = Lab::new();
    // only the webhook re-reads during the test
    let ca = lab.jamf_config(relay_port, admin, &jamf, ID, SECRET, "10m");
    device_certificate(&lab.dir, SERIAL);
    let echo = echo_server();
    let daemon = lab.start_with_env(&[("SSL_CERT_FILE", &ca)]);
    lab.wait_for(
        "the relay and the admin listener",
        Duration::from_secs(20),
        || {
            let s = lab.json(&["status"]);
            let relay = s["relay"]["state"].as_str().unwrap_or("").to_string();
            assert!(!relay.starts_with("error"), "{relay}");
            relay.starts_with("listening")
                && s["compliance"]["admin"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("listening")
        },
    );
    let show = lab.json(&["device", "show", SERIAL]);
    assert_eq!(show["verdict"]["compliant"], true, "{show}");
    assert_eq!(show["facts"][0]["source"], "jamf", "{show}");
    assert_eq!(show["facts"][0]["type"], "jamf-pro", "{show}");
    let reads_before = jamf.common().log.len();

    // an open flow through the relay leaves trusted
    let dev = device(&lab.dir, relay_port, echo);
    let flowing = dev.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(flowing["event"], "flowing", "{flowing}");
    assert_eq!(lab.json(&["flows"])["flows"][0]["egress"], "pair");

    // Jamf drops the device from the smart group
    jamf.with_data(|d| d.computer_groups.get_mut(&1).unwrap().members.remove(&1));
    let removed = jamf
        .webhook("SmartGroupComputerMembershipChange", 1, &[], &[1])
        .unwrap()
        .to_string();
    // with bad credentials: refused, nothing re-read, nothing changes
    let (code, _) = request(
        &lab,
        admin,
        "POST",
        "/webhooks/jamf",
        Some("jamf:nope"),
        &removed,
    );
    assert_eq!(code, 401);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        jamf.common().log.len(),
        reads_before,
        "a refused webhook made the daemon read Jamf"
    );
    assert_eq!(lab.json(&["flows"])["flows"][0]["egress"], "pair");
    assert_eq!(
        lab.json(&["device", "show", SERIAL])["verdict"]["compliant"],
        true
    );

    let sent = now_ms();
    let (code, v) = request(&lab, admin, "POST", "/webhooks/jamf", good(), &removed);
    assert_eq!(code, 202, "{v}");
    let end = dev.lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(end["reset"], 0x10c, "the flow was not reset: {end}");
    let latency = end["reset_at_ms"].as_f64().unwrap() - sent;
    eprintln!("webhook → stream reset: {latency:.1} ms");
    assert!(latency < 1000.0, "reset {latency:.1} ms after the webhook");
    drop(dev);
    let show = lab.json(&["device", "show", SERIAL]);
    assert_eq!(show["verdict"]["compliant"], false, "{show}");
    assert_eq!(show["facts"][0]["source"], "jamf", "{show}");
    assert_eq!(show["facts"][0]["managed"], true, "{show}");
    assert_eq!(show["facts"][0]["groups"], serde_json::json!([]), "{show}");
    // it was a targeted re-read of that device, not of the whole source (the event follows
    // the re-decision of the flows)
    lab.wait_for(
        "the targeted re-read's event",
        Duration::from_secs(5),
        || {
            lab.events_of("compliance.synced")
                .iter()
                .any(|e| e["trigger"] == "webhook" && e["targeted"] == true)
        },
    );
    assert!(
        !lab.events_of("compliance.synced")
            .iter()
            .any(|e| e["trigger"] == "webhook" && e["targeted"] != true),
        "a full re-read of the source"
    );
    let changed = lab.events_of("compliance.changed");
    assert!(
        changed
            .iter()
            .any(|e| e["serial"] == SERIAL && e["reason"] == "webhook re-read of source jamf"),
        "{changed:?}"
    );

    // the next CONNECT leaves untrusted
    let dev = device(&lab.dir, relay_port, echo);
    assert_eq!(
        dev.lines.recv_timeout(Duration::from_secs(20)).unwrap()["event"],
        "flowing"
    );
    assert_eq!(lab.json(&["flows"])["flows"][0]["egress"], "public");
    drop(dev);

    // a webhook claiming it is back changes nothing while Jamf says otherwise
    let added = jamf
        .webhook("SmartGroupComputerMembershipChange", 1, &[1], &[])
        .unwrap()
        .to_string();
    let n = lab.events_of("compliance.synced").len();
    let (code, _) = request(&lab, admin, "POST", "/webhooks/jamf", good(), &added);
    assert_eq!(code, 202);
    lab.wait_for("the re-read", Duration::from_secs(10), || {
        lab.events_of("compliance.synced").len() > n
    });
    assert_eq!(
        lab.json(&["device", "show", SERIAL])["verdict"]["compliant"],
        false,
        "a webhook's body changed device state"
    );

    // Jamf puts it back in the group: trusted again, nothing done on the device
    jamf.with_data(|d| d.computer_groups.get_mut(&1).unwrap().members.insert(1));
    let (code, _) = request(&lab, admin, "POST", "/webhooks/jamf", good(), &added);
    assert_eq!(code, 202);
    lab.wait_for("compliant again", Duration::from_secs(10), || {
        lab.json(&["device", "show", SERIAL])["verdict"]["compliant"] == true
    });
    let dev = device(&lab.dir, relay_port, echo);
    assert_eq!(
        dev.lines.recv_timeout(Duration::from_secs(20)).unwrap()["event"],
        "flowing"
    );
    assert_eq!(lab.json(&["flows"])["flows"][0]["egress"], "pair");
    drop(dev);

    // Jamf forgets the device altogether; its check-in webhook names it by serial: the
    // re-read finds nothing, so the device is unknown to jamf (fail closed)
    let checkin = jamf
        .webhook("ComputerCheckIn", 1, &[], &[])
        .unwrap()
        .to_string();
    jamf.with_data(|d| {
        d.computers.remove(&1);
        d.computer_groups.get_mut(&1).unwrap().members.remove(&1);
    });
    let (code, _) = request(&lab, admin, "POST", "/webhooks/jamf", good(), &checkin);
    assert_eq!(code, 202);
    lab.wait_for("the device forgotten", Duration::from_secs(10), || {
        lab.json(&["device", "show", SERIAL])["facts"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let show = lab.json(&["device", "show", SERIAL]);
    assert_eq!(show["verdict"]["compliant"], false, "{show}");
    lab.stop(daemon);
}
