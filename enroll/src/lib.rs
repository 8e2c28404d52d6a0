//! Device enrollment (issue 8): the appliance issues the attested device certificates itself
//! (an RFC 8555 ACME server with the `device-attest-01` challenge and Apple Managed Device
//! Attestation), writes the configuration profiles an admin uploads to the MDM, and keeps the
//! identity provider's trusted location in step with the trusted egress addresses.
//!
//! Each module owns one part; the appliance wires them to its admin listener and CLI.
pub mod acme;
pub mod attest;
pub mod ca;
pub mod idp;
pub mod profile;
