//! attestgate: the appliance daemon and its CLI.

mod policy;

fn main() {}
