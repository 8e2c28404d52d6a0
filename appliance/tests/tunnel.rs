//! The daemon runs the `corp` tunnel of the lab configuration against a real strongSwan peer
//! in a namespace, shows it in `attestgate tunnels`, carries ping through it, and obeys
//! `attestgate tunnel rekey|down|up corp`.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::daemon::{corp_lab, corp_peer, lab_config, Cli, Daemon};
use tests::netns::Netns;
use tests::strongswan::{Auth, Charon};

const BIN: &str = env!("CARGO_BIN_EXE_attestgate");

fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    Cli { bin: BIN, config }.run(args)
}

fn tunnels(config: &Path) -> Value {
    Cli { bin: BIN, config }.tunnel()
}

fn wait_until(config: &Path, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    Cli { bin: BIN, config }.wait_until(what, within, ok)
}

#[test]
fn daemon_tunnel_to_strongswan_with_rekey_down_and_up() {
    if !tests::require_root("daemon_tunnel_to_strongswan_with_rekey_down_and_up") {
        return;
    }
    let (a, b) = corp_lab();

    let dir = tempfile::tempdir().unwrap();
    let (config, psk) = lab_config(dir.path(), |text| text);

    // the enterprise side, as the lab configuration expects it
    let peer = corp_peer(psk);
    let sw = Charon::start(&b, &peer);
    // a route of ours (routing protocol 245) that a crashed daemon could have left behind
    a.ip(&["route", "add", "192.0.2.0/24", "dev", "lo", "proto", "245"]);

    let _daemon = Daemon::start(BIN, &a, &config);
    let up = wait_until(&config, "established", Duration::from_secs(30), |t| {
        t["state"] == "established" && t["children"].as_array().is_some_and(|c| c.len() == 1)
    });
    assert_eq!(up["name"], "corp");
    assert_eq!(up["ike_proposal"], "aes256gcm16-prfsha256-ecp256");
    assert_eq!(up["children"][0]["proposal"], "aes256gcm16-noesn");
    let sas = sw.list_sas();
    let first_out = up["children"][0]["spi_out"].as_str().unwrap().to_string();
    assert!(sas.contains(&format!("spi-in={first_out}")), "{sas}");
    let human = String::from_utf8_lossy(&cli(&config, &["tunnels"]).stdout).to_string();
    assert!(
        human.contains("corp  ESTABLISHED  203.0.113.10 → 203.0.113.20"),
        "{human}"
    );
    // time to rekey: the IKE SA at 80–90 % of ike_lifetime (4 h), the child at 80–90 % of 1 h
    assert!(human.contains("next IKE rekey in 3h"), "{human}");
    assert!(up["ike_rekey_at"].as_i64().is_some(), "{up}");
    let child_rekey = up["children"][0]["rekey_at"].as_i64().unwrap()
        - up["children"][0]["established_at"].as_i64().unwrap();
    assert!((2870..=3250).contains(&child_rekey), "{up}");
    let status: Value =
        serde_json::from_slice(&cli(&config, &["--json", "status"]).stdout).unwrap();
    let corp = status["result"]["config"]["egresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "corp")
        .unwrap()
        .clone();
    assert_eq!(corp["state"], "established");

    // traffic through the daemon's tunnel
    let tun = up["tun"].as_str().unwrap();
    a.ip(&["link", "set", tun, "mtu", "1400", "up"]);
    // the daemon routed the peer's selector into the device, in the tunnel's table, with its
    // routing protocol and the tunnel MTU; the ping leaves from a NAT pool address
    let routes = |a: &Netns| {
        String::from_utf8_lossy(
            &a.ip(&["route", "show", "table", "all", "proto", "245"])
                .stdout,
        )
        .to_string()
    };
    let ours = routes(&a);
    assert!(
        ours.contains(&format!("198.19.0.0/24 dev {tun}")),
        "no route of ours: {ours}"
    );
    assert!(!ours.contains("192.0.2.0/24"), "leftover kept: {ours}");
    assert!(ours.contains("mtu 1400 advmss 1360"), "{ours}");
    let main =
        String::from_utf8_lossy(&a.ip(&["route", "show", "table", "main"]).stdout).to_string();
    assert!(!main.contains("198.19.0.0/24"), "selector in main: {main}");
    let ping = a.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.1",
        "198.19.0.1",
    ]);
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains(" 3 received"),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // rekey from the CLI: a new child SA replaces the old one
    assert!(cli(&config, &["tunnel", "rekey", "corp"]).status.success());
    let rekeyed = wait_until(&config, "rekeyed", Duration::from_secs(10), |t| {
        t["rekeys"] == 1
            && t["children"]
                .as_array()
                .is_some_and(|c| c.len() == 1 && c[0]["spi_out"] != first_out.as_str())
    });
    let new_out = rekeyed["children"][0]["spi_out"].as_str().unwrap();
    // the CLI rekeys the IKE SA too (RFC 7296 §1.3.2)
    let rekeyed = wait_until(&config, "IKE rekeyed", Duration::from_secs(10), |t| {
        t["ike_rekeys"] == 1 && t["ike_spi_i"] != up["ike_spi_i"]
    });
    assert!(
        sw.list_sas()
            .contains(rekeyed["ike_spi_i"].as_str().unwrap()),
        "{}",
        sw.list_sas()
    );
    let sas = sw.list_sas();
    assert!(sas.contains(&format!("spi-in={new_out}")), "{sas}");

    // down: the SA is deleted on both ends and stays down
    assert!(cli(&config, &["tunnel", "down", "corp"]).status.success());
    wait_until(&config, "down", Duration::from_secs(10), |t| {
        t["state"] == "down" && t["children"].as_array().is_some_and(|c| c.is_empty())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sw.list_sas().contains("state=ESTABLISHED") {
        assert!(
            Instant::now() < deadline,
            "strongSwan still has the SA: {}",
            sw.list_sas()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tunnels(&config)["state"], "down");
    // with the child SA gone, so is its route; the pool stays routed to `unreachable`
    let left = routes(&a);
    assert!(
        !left.contains(&format!("dev {tun}")),
        "routes left after down: {left}"
    );
    assert!(left.contains("unreachable default"), "{left}");

    // up again
    assert!(cli(&config, &["tunnel", "up", "corp"]).status.success());
    wait_until(&config, "re-established", Duration::from_secs(20), |t| {
        t["state"] == "established" && !t["children"].as_array().is_none_or(|c| c.is_empty())
    });
    assert!(
        routes(&a).contains(&format!("198.19.0.0/24 dev {tun}")),
        "route not back after up: {}",
        routes(&a)
    );
    let unknown = cli(&config, &["tunnel", "rekey", "nope"]);
    assert_eq!(unknown.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no tunnel named `nope`"));
}

/// The daemon's `corp` tunnel with certificate authentication (`certificate`, `private_key`,
/// `peer_ca`) against strongSwan with `auth = pubkey`: a lab CA and ECDSA certificates made at
/// start-up; the tunnel comes up, strongSwan saw an RFC 7427 signature, ping crosses it.
#[test]
fn daemon_tunnel_to_strongswan_with_certificates() {
    use tests::interop::{lab_with, ping_through};
    use tests::pki::{LabPki, P256};
    if !tests::require_root("daemon_tunnel_to_strongswan_with_certificates") {
        return;
    }
    let pki = LabPki::new("attestgate lab tunnel CA", &P256);
    let gw = pki.issue("gw.attestgate.lab");
    let auth = Auth::Cert {
        ours: gw.clone(),
        theirs: pki.issue("vpn.corp.lab"),
        ca: pki.ca.clone(),
        strongswan_signs: None,
    };
    let (a, b, ours) = lab_with("aes256gcm16-prfsha256-ecp256", "aes256gcm16", auth);

    let dir = tempfile::tempdir().unwrap();
    let (config, _psk) = lab_config(dir.path(), |text| {
        let psk_line = format!("psk_file = \"{}/corp.psk\"", dir.path().display());
        assert!(text.contains(&psk_line), "{text}");
        let cert_lines = format!(
            "certificate = \"{}\"\nprivate_key = \"{}\"\npeer_ca = [\"{}\"]",
            gw.cert.display(),
            gw.key.display(),
            pki.ca.display()
        );
        text.replace(&psk_line, &cert_lines)
    });
    let check = cli(&config, &["config", "check", "--strict"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let sw = Charon::start(&b, &ours.mirrored());
    let _daemon = Daemon::start(BIN, &a, &config);
    let up = wait_until(&config, "established", Duration::from_secs(30), |t| {
        t["state"] == "established" && t["children"].as_array().is_some_and(|c| c.len() == 1)
    });
    let log = sw.log();
    assert!(
        log.contains("authentication of 'gw.attestgate.lab' with ECDSA_WITH_SHA256_DER successful"),
        "{log}"
    );
    // the daemon routes the peer's selector into the device itself (routing protocol 245)
    let tun = up["tun"].as_str().unwrap();
    let routes = String::from_utf8_lossy(
        &a.ip(&["route", "show", "table", "all", "proto", "245"])
            .stdout,
    )
    .to_string();
    assert!(
        routes.contains(&format!("198.19.0.0/24 dev {tun}")),
        "{routes}"
    );
    assert!(ping_through(&a, 3), "{}", sw.list_sas());
}
