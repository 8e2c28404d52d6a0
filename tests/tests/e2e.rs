//! End to end (issue 6): the whole product in namespaces (`tests::lab`): aioquic devices →
//! attestgate's relay → the IPsec tunnel to strongSwan and the LAN behind it, the internet
//! pair and the public address towards an IdP that records who connects; compliance from the
//! Jamf Pro stand-in, flipped live by its webhook. Root only; each test brings up its own lab
//! (unique namespace names, all removed on drop).
//!
//! attestgate is not a binary of this package: `cargo build -p attestgate` first (`cargo test
//! --workspace` and `tests/run.sh` do).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};
use tests::lab::{in_pool, Host, Lab, LabBins, COMPLIANT, NONCOMPLIANT, PAIR, PUBLIC};

fn bins() -> LabBins {
    LabBins::in_dir(
        Path::new(env!("CARGO_BIN_EXE_lab-server"))
            .parent()
            .unwrap(),
    )
}

fn lab(test: &str) -> Option<Lab> {
    if !tests::require_root(test) {
        return None;
    }
    let missing = std::process::Command::new("python3")
        .args(["-c", "import aioquic"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true);
    assert!(
        !missing,
        "aioquic is missing: python3 -m pip install aioquic==1.7.2"
    );
    let started = Instant::now();
    let lab = Lab::start(bins());
    eprintln!("{test}: lab up in {:.1} s", started.elapsed().as_secs_f64());
    Some(lab)
}

/// The source address the target behind `authority` saw for one CONNECT of `cert`.
fn source_seen(lab: &Lab, cert: &tests::pki::LabCert, host: Host, authority: &str) -> String {
    let r = lab.connect(cert, authority, "hello\\n");
    assert_eq!(
        r["status"],
        200,
        "CONNECT {authority}: {r}\n{}",
        tests::lab::tail(&lab.daemon_log(), 30)
    );
    let text = r["received_text"].as_str().unwrap();
    assert!(text.ends_with("hello\n"), "no echo: {r}");
    lab.tcp_source(host, text)
        .unwrap_or_else(|| panic!("{host:?} did not record {text:?}: {:?}", lab.seen(host)))
}

#[test]
fn idp_sees_the_pair_for_a_compliant_device_and_the_public_address_otherwise() {
    let Some(lab) = lab("idp_sees_the_pair") else {
        return;
    };
    let good = lab.device_cert(COMPLIANT);
    let bad = lab.device_cert(NONCOMPLIANT);
    let src = source_seen(&lab, &good, Host::Idp, "idp.lab:443");
    assert!(PAIR.contains(&src.as_str()), "compliant → idp from {src}");
    let src = source_seen(&lab, &bad, Host::Idp, "idp.lab:443");
    assert_eq!(src, PUBLIC, "noncompliant → idp");

    // a deny policy (`no-file-sharing`): 502 with Proxy-Status connection_refused (README)
    let r = lab.connect(&good, "files.example.net:443", "x");
    assert_eq!(r["status"], 502, "{r}");
    let ps = r["proxy_status"].as_str().unwrap_or("");
    assert!(ps.contains("error=connection_refused"), "{r}");
    // the corp policy's fallback is deny too: the noncompliant device never reaches the LAN
    let r = lab.connect(&bad, "app.corp.lab:80", "x");
    assert_eq!(r["status"], 502, "{r}");
    assert!(lab.seen(Host::Lan).iter().all(|e| e["kind"] != "tcp"));

    // a device whose certificate another CA issued: the TLS handshake is refused
    let other = tests::pki::LabPki::new("some other CA", &tests::pki::P256);
    let stranger = other.issue_client(COMPLIANT);
    // (TLS 1.3: the client finishes its handshake before the relay checks its certificate,
    // so the refusal is the connection closed with the unknown_ca alert, 0x100 + 48,
    // RFC 9001 §4.8, and no request is ever answered)
    let r = lab.connect(&stranger, "idp.lab:443", "x");
    assert!(r["status"].is_null(), "{r}");
    let refused = r["connect_error"].is_string() || r["terminated"]["error_code"] == 0x130;
    assert!(refused, "{r}");
}

#[test]
fn a_webhook_flip_cuts_the_running_stream_and_flipping_back_trusts_again() {
    let Some(mut lab) = lab("a_webhook_flip") else {
        return;
    };
    let cert = lab.device_cert(COMPLIANT);
    let held = lab.hold(&cert, "idp.lab:443", 30);
    let corp = lab.hold(&cert, "app.corp.lab:80", 30);
    for h in [&held, &corp] {
        let first = h.next(Duration::from_secs(20)).expect("no stream");
        assert_eq!(first["event"], "flowing", "{first}");
    }
    let flows = lab.json(&["flows"]);
    let egresses: Vec<&str> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["egress"].as_str())
        .collect();
    assert!(
        egresses.contains(&"idp-pair") && egresses.contains(&"corp"),
        "{flows}"
    );

    let (sent, status) = lab.set_compliant(1, false);
    assert_eq!(status, 202);
    for (name, h) in [("idp", &held), ("corp", &corp)] {
        let end = h
            .next(Duration::from_secs(10))
            .expect("the stream was not cut");
        assert_eq!(end["reset"], 0x10c, "{name} not reset: {end}");
        let cut = end["reset_at_ms"].as_f64().unwrap() - sent;
        eprintln!("webhook → {name} stream reset: {cut:.1} ms");
        assert!(cut < 1000.0, "{name} cut {cut:.1} ms after the webhook");
    }
    drop(held);
    drop(corp);
    // the LAN is refused now (corp-apps falls back to deny)
    let r = lab.connect(&cert, "app.corp.lab:80", "x");
    assert_eq!(r["status"], 502, "{r}");
    // the next CONNECT takes the public egress
    let src = source_seen(&lab, &cert, Host::Idp, "idp.lab:443");
    assert_eq!(src, PUBLIC);

    // back in the group: trusted again, nothing done on the device
    let (_, status) = lab.set_compliant(1, true);
    assert_eq!(status, 202);
    lab.wait_for("compliant again", Duration::from_secs(10), |l| {
        l.json(&["device", "show", COMPLIANT])["verdict"]["compliant"] == true
    });
    let src = source_seen(&lab, &cert, Host::Idp, "idp.lab:443");
    assert!(PAIR.contains(&src.as_str()), "after the flip back: {src}");
    let src = source_seen(&lab, &cert, Host::Lan, "app.corp.lab:80");
    assert!(in_pool(&src), "after the flip back the LAN saw {src}");
}

#[test]
fn compliant_device_reaches_the_lan_from_a_pool_address_through_the_tunnel() {
    let Some(lab) = lab("compliant_device_reaches_the_lan") else {
        return;
    };
    let cert = lab.device_cert(COMPLIANT);
    let (in_before, _) = lab.peer_esp_packets();
    let src = source_seen(&lab, &cert, Host::Lan, "app.corp.lab:80");
    assert!(in_pool(&src), "the LAN saw {src}, not a NAT pool address");
    let (in_after, out_after) = lab.peer_esp_packets();
    assert!(
        in_after > in_before && out_after > 0,
        "strongSwan counted no ESP: {}",
        lab.peer_sas()
    );
    // the same device gets the same address again (per-device pool)
    let again = source_seen(&lab, &cert, Host::Lan, "app.corp.lab:443");
    assert_eq!(again, src, "per-device address changed");
    // another device gets another address of the pool (the firewall log names the device)
    let other = lab.device_cert(tests::lab::COMPLIANT_TOO);
    let theirs = source_seen(&lab, &other, Host::Lan, "app.corp.lab:80");
    assert!(in_pool(&theirs) && theirs != src, "{theirs} vs {src}");
    eprintln!("per-device pool addresses: {COMPLIANT} {src}, C02STAND0003 {theirs}");
    // a name only the enterprise resolver knows: asked through the tunnel from the pool
    let src = source_seen(&lab, &cert, Host::Lan, "wiki.corp.lab:80");
    assert!(in_pool(&src));
    let dns: Vec<_> = lab
        .seen(Host::Lan)
        .into_iter()
        .filter(|e| e["kind"] == "dns")
        .collect();
    assert!(
        dns.iter()
            .any(|e| e["name"] == "wiki.corp.lab" && in_pool(e["source"].as_str().unwrap_or(""))),
        "the resolver saw no query from the pool: {dns:?}"
    );
}

/// A compliant device's CONNECT to the LAN app server works and leaves from the pool.
fn lan_works(lab: &Lab, cert: &tests::pki::LabCert) -> String {
    let src = source_seen(lab, cert, Host::Lan, "app.corp.lab:80");
    assert!(in_pool(&src), "the LAN saw {src}");
    src
}

#[test]
fn strongswan_restarted_mid_session_the_tunnel_comes_back_by_itself() {
    let Some(mut lab) = lab("strongswan_restarted") else {
        return;
    };
    let cert = lab.device_cert(COMPLIANT);
    lan_works(&lab, &cert);
    let before = lab.tunnel();
    let restarted = Instant::now();
    lab.restart_peer();
    lab.wait_for("the tunnel re-established", Duration::from_secs(40), |l| {
        let t = l.tunnel();
        t["state"] == "established"
            && t["ike_spi_i"] != before["ike_spi_i"]
            && t["children"].as_array().is_some_and(|c| !c.is_empty())
            && l.peer_sas().contains("state=INSTALLED")
    });
    eprintln!(
        "strongSwan restarted → tunnel back in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    // new flows work, through the new SA
    let (in_before, _) = lab.peer_esp_packets();
    lan_works(&lab, &cert);
    assert!(lab.peer_esp_packets().0 > in_before, "{}", lab.peer_sas());
}

#[test]
fn config_apply_adding_a_second_tunnel_drops_no_running_flow() {
    let Some(lab) = lab("config_apply_adding_a_second_tunnel") else {
        return;
    };
    let cert = lab.device_cert(COMPLIANT);
    let corp = lab.hold(&cert, "app.corp.lab:80", 40);
    let idp = lab.hold(&cert, "idp.lab:443", 40);
    for h in [&corp, &idp] {
        let v = h.next(Duration::from_secs(20)).expect("no stream");
        assert_eq!(v["event"], "flowing", "{v}");
    }
    let bytes = |lab: &Lab| -> u64 {
        lab.json(&["flows"])["flows"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["bytes_to_device"].as_u64()).sum())
            .unwrap_or(0)
    };
    let text = std::fs::read_to_string(&lab.config).unwrap();
    let d = lab.dir.path().display();
    let second = format!(
        "{text}\n[egress.corp2]\ntype = \"tunnel\"\nlocal_address = \"203.0.113.10\"\n\
         remote_address = \"203.0.113.21\"\nlocal_id = \"gw.attestgate.lab\"\n\
         remote_id = \"vpn2.corp.lab\"\npsk_file = \"{d}/corp.psk\"\n\
         local_ts = [\"198.18.101.0/24\"]\nremote_ts = [\"198.19.1.0/24\"]\n\
         nat_pool = \"198.18.101.0/26\"\n"
    );
    let path = lab.path("attestgate-2.toml");
    std::fs::write(&path, second).unwrap();
    let before = bytes(&lab);
    let out = lab.cli(&["config", "apply", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnels = lab.json(&["tunnels"]);
    let names: Vec<&str> = tunnels["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"corp2") && names.contains(&"corp"),
        "{tunnels}"
    );
    // both streams keep flowing through the apply and after it
    std::thread::sleep(Duration::from_secs(3));
    for (name, h) in [("corp", &corp), ("idp", &idp)] {
        assert!(
            h.next(Duration::from_millis(10)).is_none(),
            "the {name} stream ended"
        );
    }
    let flows = lab.json(&["flows"]);
    assert_eq!(flows["flows"].as_array().map(Vec::len), Some(2), "{flows}");
    assert!(bytes(&lab) > before, "the streams stalled: {flows}");
    assert_eq!(lab.tunnel()["state"], "established");
}

#[test]
fn attestgate_stopped_leaves_no_address_rule_or_route_of_its_own() {
    let Some(mut lab) = lab("attestgate_stopped_leaves_nothing") else {
        return;
    };
    // while it runs, the pool is routed into the tunnel by rules and routes of its own
    let running = lab.leftovers();
    assert!(
        running
            .iter()
            .any(|l| l.starts_with("rule:") && l.contains("198.18.100.0/26")),
        "no policy rule for the pool while running: {running:?}"
    );
    let status = lab.stop_daemon();
    assert!(status.success(), "{status:?}\n{}", lab.daemon_log());
    let left = lab.leftovers();
    assert!(left.is_empty(), "left behind after SIGTERM: {left:?}");

    // killed (nothing removed), then started again: the restart clears the leftovers first
    lab.start_daemon();
    lab.kill_daemon();
    assert!(
        !lab.leftovers().is_empty(),
        "SIGKILL left nothing to clean up"
    );
    lab.start_daemon();
    let status = lab.stop_daemon();
    assert!(status.success());
    let left = lab.leftovers();
    assert!(
        left.is_empty(),
        "left behind after kill, restart, stop: {left:?}"
    );
}
