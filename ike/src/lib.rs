//! IKEv2 (RFC 7296) and ESP (RFC 4303) for attestgate's `tunnel` egress.
//!
//! This crate is written by hand because no maintained Rust crate implements an IKEv2 responder
//! and initiator with ESP that interoperates with strongSwan and the cloud VPN gateways.
//!
//! What exists today:
//! - [`proposal`]: the strongSwan-style proposal syntax (`aes256gcm16-prfsha256-ecp256`) parsed
//!   into IANA transform identifiers (RFC 7296 §3.3.2), with the suites attestgate supports and
//!   clear refusals for weak or unknown ones. The configuration uses it to validate tunnels.
//! - [`identity`]: IKE identities (RFC 7296 §3.5) in strongSwan's notation.
//!
//! The protocol state machine, ESP data path and tokio driver are not written yet (issue 3):
//! nothing in this crate negotiates or carries traffic.

pub mod identity;
pub mod proposal;

pub use identity::{Identity, IdentityError};
pub use proposal::{EspProposal, IkeProposal, ProposalError};
