//! Crypto suites for IKE and ESP (being written).
