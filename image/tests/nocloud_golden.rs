//! Golden files for the NoCloud parser: each directory under tests/nocloud is a seed; its
//! `expected` file is what the parser (and, for a configuration, `config check`'s validation
//! with lenient file checks) makes of it. `UPDATE_GOLDEN=1 cargo test -p image --test
//! nocloud_golden` rewrites them; review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use image::firstboot::install::instance_id;
use image::firstboot::nocloud::read_seed;
use image::firstboot::seed::UserData;
use std::fmt::Write;
use std::path::Path;

fn render(seed_dir: &Path) -> String {
    let mut out = String::new();
    let seed = match read_seed(seed_dir) {
        Ok(s) => s,
        Err(e) => return format!("refused: {e}\n"),
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    writeln!(out, "instance-id: {}", show(&seed.meta.instance_id)).unwrap();
    writeln!(out, "local-hostname: {}", show(&seed.meta.local_hostname)).unwrap();
    writeln!(out, "applied as: {}", instance_id(&seed)).unwrap();
    for f in &seed.files {
        writeln!(out, "file: {} ({} bytes)", f.name, f.contents.len()).unwrap();
    }
    match &seed.user_data {
        UserData::Absent => {
            writeln!(out, "user-data: none (appliance stays unconfigured)").unwrap()
        }
        UserData::Config(text) => {
            writeln!(out, "user-data: configuration, {} bytes", text.len()).unwrap();
            assert!(!text.contains('\r') && !text.starts_with('\u{feff}'));
            let origin = Path::new("/etc/attestgate/attestgate.toml.new");
            match config::load_str(
                text,
                origin,
                Path::new("/etc/attestgate"),
                config::FileChecks::Lenient,
            ) {
                Ok(l) => writeln!(out, "check: ok ({} warnings)", l.warnings.0.len()).unwrap(),
                Err(e) => writeln!(out, "check: refused\n{e}").unwrap(),
            }
        }
    }
    out
}

#[test]
fn nocloud_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nocloud");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "golden seeds missing");
    let mut mismatches = Vec::new();
    for case in cases {
        let seed = case.join("seed");
        let got = render(&seed);
        let expected_path = case.join("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
