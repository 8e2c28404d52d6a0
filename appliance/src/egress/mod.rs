//! Egresses. Today: the `tunnel` egress's IKE/ESP tunnels run by the daemon (`tunnel.rs`).
//! NAT pools, policy routing (rtnetlink), the internet and public egresses are issue 6.

pub mod routes;
pub mod tunnel;
