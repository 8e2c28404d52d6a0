//! One attestgate tunnel against one strongSwan in two namespaces: addresses, the PSK peer
//! configuration, `ike-peer` with a TUN device routed to the far selector, pings across, and
//! event counting. Shared by the IKE interop tests.

use crate::ike_peer::Peer;
use crate::netns::Netns;
use crate::strongswan::PeerConfig;
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
    /// The interop lab of [`crate::interop::lab`] (PSK).
    pub fn new(ike: &str, esp: &str) -> TunnelLab {
        let (a, b, ours) = crate::interop::lab(ike, esp);
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
