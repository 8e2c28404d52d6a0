//! Egresses: the `tunnel` egress's IKE/ESP tunnels run by the daemon (`tunnel.rs`), their
//! policy routing (`routes.rs`), NAT pool addresses (`pool.rs`), and the relay's way out
//! through every egress (`direct.rs`, [`ApplianceEgress`]).

pub mod direct;
pub mod pool;
pub mod routes;
pub mod tunnel;

pub use direct::ApplianceEgress;
