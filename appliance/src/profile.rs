//! `attestgate profile`: writes the MDM profile from the configuration file (offline; the
//! daemon is not asked). The profile itself is built by `enroll::profile`.

use crate::cli::{exit, KeySizeArg, MdmArg, ProfileArgs, ProfileFormat};
use config::{ConfigError, FileChecks};
use enroll::profile::{self as p, ProfileError};
use std::io::{IsTerminal, Write};
use std::path::Path;

pub fn run(config_path: &Path, args: &ProfileArgs) -> u8 {
    match write(config_path, args) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("attestgate: {message}");
            code
        }
    }
}

fn code_of(e: &ProfileError) -> u8 {
    match e {
        ProfileError::NoPublicName { .. } => exit::INVALID_CONFIG,
        ProfileError::Option(_) => exit::USAGE,
        _ => exit::FAILURE,
    }
}

fn write(config_path: &Path, args: &ProfileArgs) -> Result<u8, (u8, String)> {
    let fail = |e: ProfileError| (code_of(&e), e.to_string());
    let declarative = args.format == ProfileFormat::Declarative;
    if declarative && (args.sign_cert.is_some() || args.pin) {
        return Err((
            exit::USAGE,
            "--sign-cert and --pin apply to the mobileconfig form only".into(),
        ));
    }
    if declarative && (args.out.is_none() || args.asset_url.is_none()) {
        return Err((
            exit::USAGE,
            "--format declarative writes three files: give --out DIR and --asset-url URL (where the MDM serves acme-credential.json)".into(),
        ));
    }
    if !declarative && args.asset_url.is_some() {
        return Err((
            exit::USAGE,
            "--asset-url applies to --format declarative only".into(),
        ));
    }
    let loaded = match config::load(config_path, FileChecks::Skip) {
        Ok(l) => l,
        Err(ConfigError::Invalid(d)) => return Err((exit::INVALID_CONFIG, d.to_string())),
        Err(e) => return Err((exit::INVALID_CONFIG, e.to_string())),
    };
    let opts = p::Options {
        mdm: match args.mdm {
            MdmArg::Jamf => p::Mdm::Jamf,
            MdmArg::Intune => p::Mdm::Intune,
        },
        key_size: match args.key_size {
            KeySizeArg::P256 => p::KeySize::P256,
            KeySizeArg::P384 => p::KeySize::P384,
        },
        organization: args.organization.clone(),
        pin: args.pin,
    };
    let spec = p::ProfileSpec::from_config(&loaded.config, &opts).map_err(fail)?;
    for note in &spec.notes {
        eprintln!("attestgate: note: {note}");
    }
    // the relay's header secret, when configured, is in the output: keep the file private
    let private = !spec.relay.headers.is_empty();
    let d = &spec.relay.domains;
    let summary = format!(
        "relay UUID {}, {} match domain{}, {} excluded",
        spec.uuids.relay_uuid,
        d.match_domains.len(),
        if d.match_domains.len() == 1 { "" } else { "s" },
        d.excluded_domains.len() + d.excluded_fqdns.len()
    );

    if declarative {
        let (Some(dir), Some(url)) = (&args.out, &args.asset_url) else {
            return Err((exit::USAGE, "give --out DIR and --asset-url URL".into()));
        };
        let files = p::declarative(&spec, url)
            .and_then(|d| d.files())
            .map_err(fail)?;
        p::write_dir_atomically(dir, &files, private).map_err(fail)?;
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        println!("{}: wrote {} ({summary})", dir.display(), names.join(", "));
        return Ok(exit::OK);
    }

    let mut bytes = p::mobileconfig_xml(&spec).map_err(fail)?;
    let signed = match (&args.sign_cert, &args.sign_key) {
        (Some(cert), Some(key)) => {
            bytes = p::sign(&bytes, cert, key).map_err(fail)?;
            true
        }
        _ => false,
    };
    match &args.out {
        Some(path) => {
            p::write_file_atomically(path, &bytes, private).map_err(fail)?;
            println!(
                "{}: {} profile written ({summary})",
                path.display(),
                if signed { "signed" } else { "unsigned" }
            );
        }
        None => {
            let mut out = std::io::stdout();
            if signed && out.is_terminal() {
                return Err((
                    exit::USAGE,
                    "a signed profile is binary (DER): write it with --out FILE".into(),
                ));
            }
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| (exit::FAILURE, format!("standard output: {e}")))?;
        }
    }
    Ok(exit::OK)
}
