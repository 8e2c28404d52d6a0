//! First boot on the appliance: platform parsers that turn a platform's user data into an
//! attestgate configuration, and the installer that validates and installs it.
//!
//! Every platform yields the same [`seed::Seed`]: NoCloud (a `cidata` seed volume: the
//! on-prem and CI path), AWS IMDSv2, GCP metadata and Azure's provisioning media with the
//! WireServer "ready" report. [`platform`] says which one this machine is on.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod http;
pub mod install;
pub mod nocloud;
pub mod platform;
pub mod seed;
pub mod ssh_keys;
