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
//! - [`cert`]: certificate authentication: RFC 7427 signatures (ECDSA P-256/P-384, RSA), the
//!   peer's chain and identity checked against the configured CAs.
//! - [`crypto`]: the suites (AEAD, CBC+HMAC, PRF and prf+, Diffie-Hellman, key derivation),
//!   checked against published vectors.
//! - [`wire`]: checked views and builders for IKE messages and payloads.
//! - [`esp`]: ESP packet framing and the anti-replay window.
//! - [`cookie`]: which IKE_SA_INIT requests a responder under load answers with a COOKIE
//!   (RFC 7296 §2.6) instead of creating state.
//! - [`datapath`] and [`tunnel`]: the tokio data path of a tunnel — TUN device with offloads,
//!   batched UDP 4500 (GSO/GRO) and raw ESP, one task per direction.
//! - [`sa`]: the IKE SA state machine (sans-IO): IKE_SA_INIT, IKE_AUTH with PSK or certificates,
//!   child SAs, NAT detection, fragmentation, retransmission, rekeys and their collisions,
//!   lifetimes, liveness; see its module doc.

pub mod cert;
pub mod cookie;
pub mod crypto;
pub mod datapath;
pub mod driver;
pub mod esp;
pub mod identity;
pub mod proposal;
pub mod sa;
pub mod tunnel;
pub mod wire;

pub use identity::{Identity, IdentityError};
pub use proposal::{EspProposal, IkeProposal, ProposalError};
