//! The persisted device store through a real daemon and its CLI: no sync yet → unknown; a
//! malformed source keeps the previous state and raises an alert; a restart neither forgets
//! (snapshot) nor trusts stale data (max_age passing → not compliant); overrides persist,
//! expire, and show as their own source.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

mod common;

use common::{free_port, Lab, DEVICE_OK};
use std::time::{Duration, Instant};

const MALFORMED: &str = "[[device]]\nserial = \"C02LAB0001\"\nmanaged = \"very\"\n";

#[test]
fn the_store_survives_restarts_keeps_state_on_bad_data_and_fails_closed_when_stale() {
    let lab = Lab::new();
    lab.write_config(
        free_port(),
        "max_age = \"8s\"\nrefresh_interval = \"1s\"",
        "",
    );
    // nothing synced yet and the source is malformed: unknown, not compliant, an alert
    std::fs::write(lab.dir.join("devices.toml"), MALFORMED).unwrap();
    let d = lab.start();
    let show = lab.json(&["device", "show", "c02lab0001"]);
    assert_eq!(show["verdict"]["compliant"], false, "{show}");
    assert!(
        show["verdict"]["why"].as_str().unwrap().contains("unknown"),
        "{show}"
    );
    let status = lab.json(&["status"]);
    assert_eq!(
        status["compliance"]["sources"][0]["state"], "error",
        "{status}"
    );
    assert!(status["compliance"]["store"]
        .as_str()
        .unwrap()
        .ends_with("state/devices.redb"));
    let alerts = lab.events_of("compliance.sync_failed");
    assert!(
        !alerts.is_empty() && alerts[0]["alert"] == true,
        "{alerts:?}"
    );

    // a good file: known and compliant, one compliance.changed event
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    lab.json(&["sync"]);
    let synced_at = Instant::now();
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert_eq!(show["verdict"]["compliant"], true, "{show}");
    let changed = lab.events_of("compliance.changed");
    let first = changed
        .iter()
        .find(|e| e["serial"] == "C02LAB0001")
        .unwrap();
    assert_eq!(first["before"]["known"], false);
    assert_eq!(first["after"]["known"], true);
    assert_eq!(first["reason"], "sync of source mdm");

    // malformed again: the previous state stays, with an alert
    std::fs::write(lab.dir.join("devices.toml"), MALFORMED).unwrap();
    let before_alerts = lab.events_of("compliance.sync_failed").len();
    lab.json(&["sync"]);
    assert!(lab.events_of("compliance.sync_failed").len() > before_alerts);
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert_eq!(show["verdict"]["compliant"], true, "{show}");
    assert_eq!(
        lab.json(&["status"])["compliance"]["sources"][0]["devices"],
        1
    );

    // restart: the snapshot is younger than max_age, so the device is still known, with
    // every fact its source gave
    lab.stop(d);
    let d = lab.start();
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert!(
        synced_at.elapsed() < Duration::from_secs(8),
        "the machine is too slow for this test's max_age"
    );
    assert_eq!(show["verdict"]["compliant"], true, "{show}");
    let fact = &show["facts"][0];
    assert_eq!(fact["source"], "mdm");
    assert_eq!(fact["type"], "file");
    assert_eq!(fact["platform"], "macos");
    assert_eq!(fact["udids"][0], "UDID-0001");
    let text = String::from_utf8(lab.cli(&["device", "show", "C02LAB0001"]).stdout).unwrap();
    assert!(
        text.contains("COMPLIANT") && text.contains("UDID-0001"),
        "{text}"
    );

    // max_age passes with the source still broken: not compliant, and the policy engine
    // gives the untrusted egress (fail closed)
    lab.wait_for("the snapshot to go stale", Duration::from_secs(15), || {
        lab.json(&["device", "show", "C02LAB0001"])["verdict"]["compliant"] == false
    });
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert!(
        show["verdict"]["why"]
            .as_str()
            .unwrap()
            .contains("maximum age"),
        "{show}"
    );
    assert_eq!(show["facts"][0]["stale"], true);
    let w = lab.json(&[
        "whatif",
        "--device",
        "C02LAB0001",
        "--target",
        "127.0.0.1:9",
    ]);
    assert_eq!(w["decision"]["verdict"]["egress"], "public", "{w}");
    let list = lab.json(&["devices", "--noncompliant"]);
    assert_eq!(list["devices"][0]["serial"], "C02LAB0001", "{list}");
    lab.stop(d);
}

#[test]
fn overrides_persist_expire_and_show_as_their_own_source() {
    let lab = Lab::new();
    lab.write_config(free_port(), "", "");
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    let d = lab.start();
    assert_eq!(
        lab.json(&["device", "show", "C02LAB0001"])["verdict"]["compliant"],
        true
    );
    assert!(lab.json(&["devices", "--noncompliant"])["devices"]
        .as_array()
        .unwrap()
        .is_empty());

    // a block with an expiry
    let r = lab.json(&[
        "device",
        "block",
        "c02lab0001",
        "--for",
        "3s",
        "--reason",
        "lost in a taxi",
    ]);
    let blocked_at = Instant::now();
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["verdict"]["compliant"], false);
    assert!(
        r["verdict"]["why"]
            .as_str()
            .unwrap()
            .contains("lost in a taxi"),
        "{r}"
    );
    let list = lab.json(&["devices", "--source", "override"]);
    assert_eq!(list["devices"][0]["serial"], "C02LAB0001", "{list}");
    assert_eq!(list["devices"][0]["blocked"], true);
    let w = lab.json(&[
        "whatif",
        "--device",
        "C02LAB0001",
        "--target",
        "127.0.0.1:9",
    ]);
    assert_eq!(w["decision"]["verdict"]["egress"], "public", "{w}");

    // a risk override without expiry; over the policy's max_risk
    lab.json(&[
        "device",
        "risk",
        "C02LAB0001",
        "high",
        "--reason",
        "pentest",
    ]);
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert_eq!(show["overrides"].as_array().unwrap().len(), 2, "{show}");
    assert_eq!(
        lab.json(&["devices", "--risk", "high"])["devices"][0]["serial"],
        "C02LAB0001"
    );
    assert!(lab.json(&["devices", "--group", "Nope"])["devices"]
        .as_array()
        .unwrap()
        .is_empty());

    // both survive a restart
    lab.stop(d);
    let d = lab.start();
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert_eq!(show["overrides"].as_array().unwrap().len(), 2, "{show}");

    // the block lapses (an event); the risk override still holds the device out
    lab.wait_for("the block to lapse", Duration::from_secs(10), || {
        lab.events_of("compliance.changed")
            .iter()
            .any(|e| e["reason"] == "override expired")
    });
    assert!(blocked_at.elapsed() >= Duration::from_secs(3));
    let show = lab.json(&["device", "show", "C02LAB0001"]);
    assert_eq!(show["overrides"].as_array().unwrap().len(), 1, "{show}");
    assert!(
        show["verdict"]["why"]
            .as_str()
            .unwrap()
            .contains("risk high over"),
        "{show}"
    );

    // clear: compliant again
    let r = lab.json(&["device", "clear", "C02LAB0001"]);
    assert_eq!(r["verdict"]["compliant"], true, "{r}");
    assert!(lab.json(&["device", "show", "C02LAB0001"])["overrides"]
        .as_array()
        .unwrap()
        .is_empty());
    let overrides = lab.events_of("compliance.override");
    let actions: Vec<&str> = overrides
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["block", "risk", "clear"]);

    // refused: an expiry in the past, a bad serial; a device nobody knows can be blocked
    let out = lab.cli(&[
        "device",
        "block",
        "C02LAB0001",
        "--until",
        "2001-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the future"));
    assert_eq!(lab.cli(&["device", "block", "a b"]).status.code(), Some(5));
    let out = lab.cli(&["device", "block", "NOBODY1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no inventory source knows"));
    lab.stop(d);
}
