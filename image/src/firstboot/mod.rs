//! First boot on the appliance: platform parsers that turn a platform's user data into an
//! attestgate configuration, and the installer that validates and installs it.
//!
//! Only NoCloud (a `cidata` seed volume: the on-prem and CI path) exists so far; AWS IMDSv2,
//! GCP metadata and Azure custom data are later steps of issue 7.

pub mod install;
pub mod nocloud;
