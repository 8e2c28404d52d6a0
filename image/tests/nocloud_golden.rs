//! Golden files for the NoCloud parser: each directory under tests/nocloud is a seed; its
//! `expected` file is what the parser (and, for a configuration, `config check`'s validation
//! with lenient file checks) makes of it. `UPDATE_GOLDEN=1 cargo test -p image --test
//! nocloud_golden` rewrites them; review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use image::firstboot::nocloud::read_seed;

#[test]
fn nocloud_seeds() {
    common::golden("nocloud", 15, |case| {
        common::render(read_seed(&case.join("seed"))).0
    });
}
