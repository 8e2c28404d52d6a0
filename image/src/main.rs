//! Builds attestgate's bootable VM image (issue 7). Not written yet: this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("image: the VM image builder is not implemented yet (see issue 7)");
    std::process::ExitCode::from(2)
}
