//! IKE wire formats (being written).
