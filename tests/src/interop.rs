//! Shared pieces of the strongSwan interop tests: the two-namespace lab, the check that
//! strongSwan installed what attestgate negotiated, and traffic through attestgate's TUN device.

use crate::ike_peer::Peer;
use crate::netns::{veth, Netns};
use crate::strongswan::{Auth, Charon, PeerConfig};
use serde_json::Value;
use std::time::Duration;

/// attestgate (`ag`, 203.0.113.10, 198.18.100.0/24) and strongSwan (`sw`, 203.0.113.20,
/// 198.19.0.0/24) on one link; `ours` is attestgate's side of the tunnel.
pub fn lab_with(ike: &str, esp: &str, auth: Auth) -> (Netns, Netns, PeerConfig) {
    let a = Netns::new("ag");
    let b = Netns::new("sw");
    veth(&a, "203.0.113.10/24", &b, "203.0.113.20/24");
    // strongSwan installs its routes with a source address inside its local selector
    a.addr("lo", "198.18.100.1/24");
    b.addr("lo", "198.19.0.1/24");
    let ours = PeerConfig {
        local_addr: "203.0.113.10".into(),
        remote_addr: "203.0.113.20".into(),
        local_id: "gw.attestgate.lab".into(),
        remote_id: "vpn.corp.lab".into(),
        auth,
        ike_proposal: ike.into(),
        esp_proposal: esp.into(),
        local_ts: "198.18.100.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    };
    (a, b, ours)
}

/// The PSK lab.
pub fn lab(ike: &str, esp: &str) -> (Netns, Netns, PeerConfig) {
    lab_with(ike, esp, Auth::Psk("interop-psk-6f1c2a9e".into()))
}

/// strongSwan shows the IKE SA established and the child SA installed with our SPIs.
pub fn check_strongswan(sw: &Charon, child: &Value) {
    let sas = sw.list_sas();
    assert!(sas.contains("state=ESTABLISHED"), "{sas}\n{}", sw.log());
    assert!(sas.contains("state=INSTALLED"), "{sas}\n{}", sw.log());
    // strongSwan's inbound SPI is our outbound one and vice versa
    let out = child["spi_out"].as_str().unwrap();
    let inn = child["spi_in"].as_str().unwrap();
    assert!(
        sas.contains(&format!("spi-in={out}")),
        "spi-in={out} missing in {sas}"
    );
    assert!(
        sas.contains(&format!("spi-out={inn}")),
        "spi-out={inn} missing in {sas}"
    );
}

/// Brings attestgate's TUN device `tun` up and routes strongSwan's subnet into it.
pub fn route_into_tun(a: &Netns, tun: &str) {
    a.ip(&["link", "set", tun, "mtu", "1400", "up"]);
    a.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "dev",
        tun,
        "src",
        "198.18.100.1",
    ]);
}

/// Pings strongSwan's side through the tunnel `count` times; true when every reply came.
pub fn ping_through(a: &Netns, count: u32) -> bool {
    let n = count.to_string();
    let out = a.run(&[
        "ping",
        "-c",
        &n,
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.1",
        "198.19.0.1",
    ]);
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {count} received"))
}

/// ESP from attestgate's TUN device to strongSwan and back: attestgate (`ike-peer` as `role`)
/// and strongSwan bring the tunnel up, then ping and an iperf3 stream cross it, with the SPIs
/// strongSwan counts packets on. Returns the strongSwan peer for further checks.
pub fn esp_traffic(a: &Netns, b: &Netns, ours: &PeerConfig, role: &str) -> Charon {
    let tun = crate::netns::unique("t");
    let (peer, sw) = if role == "initiator" {
        let sw = Charon::start(b, &ours.mirrored());
        (Peer::start_with(a, role, ours, &["--tun", &tun]), Some(sw))
    } else {
        (Peer::start_with(a, role, ours, &["--tun", &tun]), None)
    };
    route_into_tun(a, &tun);
    let sw = match sw {
        Some(sw) => sw,
        None => {
            let sw = Charon::start(b, &ours.mirrored());
            let out = sw.initiate();
            assert!(
                out.contains("initiate completed successfully"),
                "{out}\n{}",
                sw.log()
            );
            sw
        }
    };
    let child = peer.wait_for("child_established", Duration::from_secs(20));
    check_strongswan(&sw, &child);
    assert!(ping_through(a, 3), "ping failed\n{}", sw.list_sas());
    let bps = crate::strongswan::iperf3(b, "198.19.0.1", a, "198.18.100.1", 3);
    eprintln!(
        "attestgate ({role}) ↔ strongSwan {} / {}: {:.3} Gbit/s (single TCP stream)",
        ours.ike_proposal,
        ours.esp_proposal,
        bps / 1e9
    );
    assert!(bps > 1e6, "the tunnel carried almost nothing: {bps} bit/s");
    let sas = sw.list_sas();
    assert!(
        !sas.contains("packets-in=0 "),
        "strongSwan counted no ESP: {sas}"
    );
    sw
}

/// Pings strongSwan's side from attestgate's `count` times; asserts every reply came back.
pub fn ping_across(a: &Netns, count: u32) {
    assert!(
        ping_through(a, count),
        "not every ping came back through the tunnel"
    );
}
