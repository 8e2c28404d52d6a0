//! What the strongSwan interop tests share: the two-namespace lab, the check of strongSwan's
//! view of a tunnel, and traffic through attestgate's TUN device.

use crate::netns::{veth, Netns};
use crate::strongswan::{Auth, Charon, PeerConfig};
use serde_json::Value;

/// attestgate's namespace and strongSwan's, linked by a veth (203.0.113.10 ↔ .20), with
/// 198.18.100.0/24 behind attestgate and 198.19.0.0/24 behind strongSwan; the tunnel as
/// attestgate sees it.
pub fn lab(ike: &str, esp: &str) -> (Netns, Netns, PeerConfig) {
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
        auth: Auth::Psk("interop-psk-6f1c2a9e".into()),
        ike_proposal: ike.into(),
        esp_proposal: esp.into(),
        local_ts: "198.18.100.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    };
    (a, b, ours)
}

/// strongSwan shows the IKE SA established and the child SA installed, with the SPIs of
/// `child` (an `ike-peer` `child_established` event) crossed.
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

/// Brings attestgate's TUN device `tun` up in `a` and routes strongSwan's side into it.
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

/// Pings strongSwan's side from attestgate's `count` times; asserts every reply came back.
pub fn ping_across(a: &Netns, count: u32) {
    let out = a.run(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.1",
        "198.19.0.1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!(" {count} received")), "{text}");
}
