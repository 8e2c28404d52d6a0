//! `image`: builds attestgate's bootable VM image and boots it under qemu (issue 7).

use clap::{Parser, Subcommand};
use image::{build, smoke, updatetest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Builds and smoke-tests the attestgate appliance image.
#[derive(Debug, Parser)]
#[command(name = "image")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the image: rootfs (mmdebstrap, cached), UKI + systemd-boot, GPT disk, raw, qcow2,
    /// VHD (Azure), OVA (VMware), GCP tar.gz and a SHA-256 manifest.
    Build {
        /// Output directory (the cache and work tree go under it).
        #[arg(long, default_value_os_t = default_out())]
        out: PathBuf,
        /// A release attestgate binary to ship (default: `cargo build --release -p attestgate`).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// An attestgate-firstboot binary (default: built with cargo).
        #[arg(long)]
        firstboot: Option<PathBuf>,
        /// The Ed25519 key (PKCS#8) update bundles are signed with and images trust; made
        /// when absent (default: one per build machine, under target/image-keys).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// The image's version (default: workspace version + git commit + UTC time).
        #[arg(long)]
        version: Option<String>,
        /// Build only the update bundle (attestgate-update.tar), no disk images.
        #[arg(long)]
        update_only: bool,
    },
    /// Boot an image under qemu (TCG, OVMF or SeaBIOS) with a NoCloud seed and wait for the daemon's
    /// health line on the serial console.
    Smoke {
        /// The image (qcow2, .raw, .vhd or .vmdk); default: the last build's qcow2.
        image: Option<PathBuf>,
        /// Work directory (overlay, seed, serial log).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Give up after this many seconds without the health report.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// user-data file for the seed instead of the built-in smoke configuration.
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Boot without a seed (use with --expect unconfigured).
        #[arg(long, conflicts_with = "user_data")]
        no_seed: bool,
        /// What the boot must show: healthy (default), refused (with --user-data holding an
        /// invalid configuration), unconfigured (with --no-seed).
        #[arg(long, value_enum, default_value = "healthy")]
        expect: smoke::Expect,
        /// Virtual CPUs (2 under TCG stalled the guest's RCU on these machines).
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// uefi: OVMF and systemd-boot; bios: qemu's SeaBIOS and the image's GRUB.
        #[arg(long, value_enum, default_value = "uefi")]
        firmware: smoke::Firmware,
    },
    /// Boot an image under qemu and update it over SSH with `attestgate update apply`: to a
    /// good bundle (healthy on the other slot), then to a broken one with one try (the
    /// appliance falls back to the good version by itself).
    UpdateTest {
        /// The image (qcow2); default: the last build's.
        #[arg(long)]
        image: Option<PathBuf>,
        /// A good update bundle (another version than the image's).
        #[arg(long)]
        good: PathBuf,
        /// A broken update bundle (its attestgate does not run), same signing key.
        #[arg(long)]
        broken: PathBuf,
        /// Work directory (overlay, seed, SSH key, serial log).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Give up on a boot after this many seconds.
        #[arg(long, default_value_t = 300)]
        boot_timeout: u64,
        /// uefi: OVMF and systemd-boot; bios: SeaBIOS and GRUB.
        #[arg(long, value_enum, default_value = "uefi")]
        firmware: smoke::Firmware,
    },
}

fn default_out() -> PathBuf {
    build::workspace_root().join("target/image")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Build {
            out,
            binary,
            firstboot,
            signing_key,
            version,
            update_only,
        } => match build::build(&build::Options {
            out,
            binary,
            firstboot,
            signing_key: signing_key.unwrap_or_else(build::default_signing_key),
            version,
            update_only,
        }) {
            Ok(report) => {
                build::print_report(&report);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("image build: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::UpdateTest {
            image,
            good,
            broken,
            work,
            boot_timeout,
            firmware,
        } => {
            let out = default_out();
            let opts = updatetest::Options {
                image: image.unwrap_or_else(|| out.join("attestgate.qcow2")),
                good,
                broken,
                work: work.unwrap_or_else(|| out.join("update-test")),
                boot_timeout: Duration::from_secs(boot_timeout),
                firmware,
            };
            let started = Instant::now();
            match updatetest::run(&opts) {
                Ok(r) => {
                    updatetest::print_report(&r, started.elapsed());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("image update-test: FAIL: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Smoke {
            image,
            work,
            timeout,
            user_data,
            no_seed,
            expect,
            smp,
            firmware,
        } => {
            let out = default_out();
            let user_data = match user_data.map(std::fs::read_to_string).transpose() {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("image smoke: user-data: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = smoke::Options {
                image: image.unwrap_or_else(|| out.join("attestgate.qcow2")),
                work: work.unwrap_or_else(|| out.join("smoke")),
                timeout: Duration::from_secs(timeout),
                user_data,
                no_seed,
                smp,
                firmware,
            };
            let started = Instant::now();
            match smoke::smoke(&opts) {
                Ok(o) => {
                    smoke::print_report(&o, expect, started.elapsed());
                    if o.passed(expect) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("image smoke: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
