//! The daemon's `corp` tunnel as a responder (`initiate = false`, `cookie_threshold = 0`):
//! it waits (dropping and counting IKE_SA_INIT from other addresses), strongSwan initiates
//! (through a COOKIE exchange), ping crosses; strongSwan is killed and started again and its new
//! IKE SA replaces the old one in the daemon; `tunnel rekey|down|up` work; strongSwan killed
//! for good, the daemon's liveness checks fail and it waits again.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::Duration;
use tests::daemon::{corp_lab, corp_peer, lab_config, Cli, Daemon};
use tests::interop::ping_across;
use tests::strongswan::Charon;

const BIN: &str = env!("CARGO_BIN_EXE_attestgate");

fn established(t: &serde_json::Value) -> bool {
    t["state"] == "established" && t["children"].as_array().is_some_and(|c| c.len() == 1)
}

#[test]
fn strongswan_initiates_to_a_responder_daemon_and_comes_back_after_a_restart() {
    if !tests::require_root("strongswan_initiates_to_a_responder_daemon") {
        return;
    }
    let (a, b) = corp_lab();
    let dir = tempfile::tempdir().unwrap();
    let (config, psk) = lab_config(dir.path(), |text| {
        assert_eq!(text.matches("dpd_interval = \"10s\"").count(), 1);
        text.replace(
            "dpd_interval = \"10s\"",
            "dpd_interval = \"2s\"\ninitiate = false\ncookie_threshold = 0",
        )
    });
    let cli = Cli {
        bin: BIN,
        config: &config,
    };
    let peer = corp_peer(psk);
    let _daemon = Daemon::start(BIN, &a, &config);

    // no SA yet: the responder waits
    let waiting = cli.wait_until("waiting", Duration::from_secs(20), |t| {
        t["state"] == "waiting" && t["tun"].is_string()
    });
    assert_eq!(waiting["role"], "responder");
    let human = String::from_utf8_lossy(&cli.run(&["tunnels"]).stdout).to_string();
    assert!(
        human.contains("corp  WAITING  203.0.113.10 → 203.0.113.20  responder"),
        "{human}"
    );
    // IKE_SA_INIT requests from another address are dropped and counted
    b.addr("lo", "203.0.113.21/32");
    for spi in ["0x1122334455667788", "0x2122334455667788"] {
        let send = format!(
            "import socket, struct\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('203.0.113.21', 0))\n\
             h = struct.pack('!QQBBBBII', {spi}, 0, 0, 0x20, 34, 0x08, 0, 28)\n\
             s.sendto(h, ('203.0.113.10', 500))\n"
        );
        b.ok(&["/usr/bin/python3", "-c", &send]);
    }
    let counted = cli.wait_until("foreign counted", Duration::from_secs(10), |t| {
        t["foreign_inits"] == 2
    });
    assert_eq!(counted["state"], "waiting");
    let human = String::from_utf8_lossy(&cli.run(&["tunnels"]).stdout).to_string();
    assert!(
        human.contains("2 IKE_SA_INIT from other addresses dropped"),
        "{human}"
    );
    let tun = waiting["tun"].as_str().unwrap().to_string();
    a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);

    // strongSwan initiates; with cookie_threshold = 0 the daemon asks for a cookie first
    let sw = Charon::start(&b, &peer);
    sw.initiate();
    let first = cli.wait_until("established", Duration::from_secs(20), established);
    assert_eq!(first["role"], "responder");
    assert_eq!(first["ike_proposal"], "aes256gcm16-prfsha256-ecp256");
    let log = sw.log();
    assert!(
        log.contains("IKE_SA_INIT response 0 [ N(COOKIE) ]")
            && log.contains("IKE_SA_INIT request 0 [ N(COOKIE) SA"),
        "no COOKIE exchange in strongSwan's log:\n{log}"
    );
    let out = first["children"][0]["spi_out"].as_str().unwrap();
    assert!(sw.list_sas().contains(&format!("spi-in={out}")));
    ping_across(&a, 3);

    // strongSwan is killed (no Delete) and started again; it initiates anew and the daemon's
    // old SA is replaced by the new one without waiting for its liveness checks to fail
    drop(sw);
    let sw = Charon::start(&b, &peer);
    sw.initiate();
    let second = cli.wait_until("re-established", Duration::from_secs(20), |t| {
        established(t) && t["ike_spi_i"] != first["ike_spi_i"]
    });
    let out = second["children"][0]["spi_out"].as_str().unwrap();
    assert!(sw.list_sas().contains(&format!("spi-in={out}")));
    ping_across(&a, 3);
    assert!(
        second["last_event"]
            .as_str()
            .is_some_and(|e| e.contains("replaced")),
        "{second}"
    );
    assert_eq!(second["foreign_inits"], 2);

    // the operator's controls work as for an initiator: rekey, down (deleted on both ends,
    // nothing accepted), up (waiting again, strongSwan can come back)
    assert!(cli.run(&["tunnel", "rekey", "corp"]).status.success());
    cli.wait_until("rekeyed", Duration::from_secs(10), |t| {
        t["rekeys"] == 1 && established(t)
    });
    assert!(cli.run(&["tunnel", "down", "corp"]).status.success());
    cli.wait_until("down", Duration::from_secs(10), |t| {
        t["state"] == "down" && t["children"].as_array().is_some_and(|c| c.is_empty())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sw.list_sas().contains("state=ESTABLISHED") {
        assert!(std::time::Instant::now() < deadline, "{}", sw.list_sas());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cli.run(&["tunnel", "up", "corp"]).status.success());
    cli.wait_until("waiting after up", Duration::from_secs(10), |t| {
        t["state"] == "waiting"
    });
    sw.initiate();
    cli.wait_until("back up", Duration::from_secs(20), established);
    ping_across(&a, 3);

    // strongSwan gone for good: liveness checks fail and the daemon waits again
    drop(sw);
    let gone = cli.wait_until("waiting again", Duration::from_secs(40), |t| {
        t["state"] == "waiting" && t["children"].as_array().is_some_and(|c| c.is_empty())
    });
    assert!(
        gone["last_event"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{gone}"
    );
}
