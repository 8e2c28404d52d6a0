//! Synthetic attestation chains with a test root in Apple's place.

use super::testing::*;
use super::*;

#[test]
fn placeholder() {}
