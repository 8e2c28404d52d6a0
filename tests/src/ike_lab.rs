//! One attestgate tunnel against one strongSwan in two namespaces: addresses, the PSK peer
//! configuration, `ike-peer` with a TUN device routed to the far selector, pings across, and
//! event counting. Shared by the IKE interop tests.

use crate::ike_peer::Peer;
use crate::netns::{veth, Netns};
use crate::strongswan::{Auth, PeerConfig};
use serde_json::Value;

/// attestgate (`ours`, in `a`, 203.0.113.10, selector 198.18.100.0/24) and strongSwan (`b`,
/// 203.0.113.20, selector 198.19.0.0/24).
#[derive(Debug)]
pub struct TunnelLab {
    pub a: Netns,
    pub b: Netns,
    pub ours: PeerConfig,
}

impl TunnelLab {
    pub fn new(ike: &str, esp: &str) -> TunnelLab {
        let a = Netns::new("ag");
        let b = Netns::new("sw");
        veth(&a, "203.0.113.10/24", &b, "203.0.113.20/24");
        a.addr("lo", "198.18.100.1/24");
        b.addr("lo", "198.19.0.1/24");
        let ours = PeerConfig {
            local_addr: "203.0.113.10".into(),
            remote_addr: "203.0.113.20".into(),
            local_id: "gw.attestgate.lab".into(),
            remote_id: "vpn.corp.lab".into(),
            auth: Auth::Psk("lifecycle-psk-3e7d91c4".into()),
            ike_proposal: ike.into(),
            esp_proposal: esp.into(),
            local_ts: "198.18.100.0/24".into(),
            remote_ts: "198.19.0.0/24".into(),
            child_rekey: "1h".into(),
            ike_rekey: "4h".into(),
        };
        TunnelLab { a, b, ours }
    }

    /// Starts `ike-peer` as initiator with a TUN device carrying 198.19.0.0/24.
    pub fn start_initiator(&self, extra: &[&str]) -> Peer {
        let tun = crate::netns::unique("t");
        let mut args = vec!["--tun", tun.as_str()];
        args.extend_from_slice(extra);
        let peer = Peer::start_with(&self.a, "initiator", &self.ours, &args);
        self.a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
        self.a.ip(&[
            "route",
            "add",
            "198.19.0.0/24",
            "dev",
            &tun,
            "src",
            "198.18.100.1",
        ]);
        peer
    }

    /// Pings strongSwan's side through the tunnel: (sent, received).
    pub fn ping(&self, count: u32, interval: &str) -> (u32, u32) {
        let out = self.a.run(&[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            "-I",
            "198.18.100.1",
            "198.19.0.1",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let received = text
            .split(',')
            .find_map(|part| part.trim().strip_suffix(" received"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        (count, received)
    }
}

/// How many events of `kind` (`ike-peer`'s `event` field).
pub fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

/// The last event of `kind`.
pub fn last<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().rev().find(|e| e["event"] == kind)
}
