//! `attestgate update`: the appliance image's A/B updates (the work is in `image::update`,
//! shared with the image builder that writes the bundles).

use crate::cli::{exit, UpdateCommand};
use image::update::{self, apply, bundle, slots};
use std::path::PathBuf;

pub fn run(cmd: &UpdateCommand, json: bool) -> u8 {
    let disk = match slots::probe() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("attestgate update: {e}");
            return exit::FAILURE;
        }
    };
    let esp = match update::esp() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("attestgate update: {e}");
            return exit::FAILURE;
        }
    };
    match cmd {
        UpdateCommand::MarkGood => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            match update::mark_good(&cmdline, &esp, disk.current) {
                Ok(msg) => {
                    println!("{msg}");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("attestgate update mark-good: {e}");
                    exit::FAILURE
                }
            }
        }
        UpdateCommand::Status => match update::status(
            disk,
            &esp,
            &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        ) {
            Ok(s) if json => {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                exit::OK
            }
            Ok(s) => {
                print!("{}", update::render(&s));
                exit::OK
            }
            Err(e) => {
                eprintln!("attestgate update status: {e}");
                exit::FAILURE
            }
        },
        UpdateCommand::Apply {
            bundle: file,
            tries,
            reboot,
        } => {
            let opts = apply::Options {
                bundle: file.clone(),
                tries: *tries,
                keys_dir: PathBuf::from(bundle::KEYS_DIR),
                esp,
            };
            eprintln!(
                "attestgate update: running slot {} ({}), version {}",
                disk.current,
                disk.slot(disk.current).device.display(),
                update::running_version()
            );
            match apply::apply(&opts, &disk, &mut |line| {
                eprintln!("attestgate update: {line}")
            }) {
                Ok(done) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&done).unwrap_or_default()
                        );
                    } else {
                        println!(
                            "slot {} now holds version {} ({} MiB, {:.1} s); next boot: {}",
                            done.slot,
                            done.version,
                            done.root_bytes >> 20,
                            done.took.as_secs_f64(),
                            done.entry
                        );
                    }
                    if *reboot {
                        eprintln!("attestgate update: rebooting");
                        let ok = std::process::Command::new("systemctl")
                            .arg("reboot")
                            .status()
                            .is_ok_and(|s| s.success());
                        if !ok {
                            eprintln!("attestgate update: systemctl reboot failed; reboot by hand");
                            return exit::FAILURE;
                        }
                    } else {
                        eprintln!("attestgate update: reboot to run it (systemctl reboot)");
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("attestgate update: REFUSED: {e}");
                    eprintln!("attestgate update: the running version stays the next boot");
                    exit::FAILURE
                }
            }
        }
    }
}
