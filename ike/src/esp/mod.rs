//! ESP framing and anti-replay (being written).
