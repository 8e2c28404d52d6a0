//! attestgate's configuration: one TOML file describing the whole appliance.
//!
//! [`load`] reads a file into a typed, validated [`Config`], or returns every problem found as
//! [`Diagnostics`] (file:line:column, key path, what was expected, a suggestion), never only the
//! first one. Unknown keys are errors. The examples in `config/examples/` document every key.
//!
//! Layout: `tree` (TOML with spans, typed readers) · `parse` (sections into the model) ·
//! `validate` (cross-references, files) · `diagnostics` · `units` (durations, ports, hosts).

pub mod diagnostics;
pub mod model;
mod parse;
mod tree;
pub mod units;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostics::{did_you_mean, Diagnostic, Diagnostics, Severity};
pub use model::*;
pub use tree::Spanned;
pub use validate::FileChecks;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// A configuration that passed validation, with the warnings it produced.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Diagnostics,
    /// A short hash of the text, to tell versions apart in status output.
    pub digest: String,
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path, files: FileChecks) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, path, &base, files)
}

/// Validates `text` as if it were the file `origin`, resolving relative paths from `base`.
pub fn load_str(
    text: &str,
    origin: &Path,
    base: &Path,
    files: FileChecks,
) -> Result<Loaded, ConfigError> {
    let mut sink = diagnostics::Sink::new(origin, text);
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            let _ = sink.error(&span, "", format!("TOML syntax: {message}"));
            return Err(ConfigError::Invalid(sink.into_diagnostics()));
        }
    };
    let root = tree::from_item(doc.as_item(), &(0..0));
    let base = if base.is_absolute() {
        base.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(base))
            .unwrap_or_else(|_| base.to_path_buf())
    };
    let mut reader = parse::Reader {
        sink: &mut sink,
        base,
    };
    let config = reader.document(&root, origin);
    let config = config.map(|mut c| {
        validate::check(&mut c, &mut sink, files, &root);
        c
    });
    let diagnostics = sink.into_diagnostics();
    match config {
        Some(config) if !diagnostics.has_errors() => Ok(Loaded {
            config,
            warnings: diagnostics,
            digest: digest(text),
        }),
        _ => {
            let mut d = diagnostics;
            if !d.has_errors() {
                // A section refused without a finding would be a bug; never accept it silently.
                d.0.push(Diagnostic {
                    severity: Severity::Error,
                    file: origin.to_path_buf(),
                    line: 1,
                    column: 1,
                    path: String::new(),
                    message: "configuration refused".into(),
                    expected: None,
                    help: None,
                });
            }
            Err(ConfigError::Invalid(d))
        }
    }
}

/// FNV-1a over the text, as 12 hex digits: enough to tell versions apart, not a security hash.
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}
