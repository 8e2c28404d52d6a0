//! Running the external tools the build is made of, and reporting each stage.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs `cmd` to completion; a failure carries the tail of its standard error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let tool = describe(cmd);
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: tool.clone(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            format!("not installed ({e}); see image/ci-deps.sh")
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Tool {
            tool,
            reason: format!("{}\n{}", out.status, tail.join("\n")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nice -n 10 PROGRAM`: the build machines are shared.
pub fn nice(program: &str) -> Command {
    let mut c = Command::new("nice");
    c.args(["-n", "10", program]);
    c
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for a in cmd.get_args().take(4) {
        parts.push(a.to_string_lossy().into_owned());
    }
    parts.join(" ")
}

/// One line per stage: name, time, and the size of what it made.
#[derive(Debug, Default)]
pub struct Stages {
    pub done: Vec<(String, Duration, Option<u64>, String)>,
}

impl Stages {
    pub fn start(&self, name: &str) -> Instant {
        eprintln!("image: [{name}] ...");
        Instant::now()
    }
    pub fn finish(&mut self, name: &str, started: Instant, size: Option<u64>, note: &str) {
        let took = started.elapsed();
        let size_s = size.map(|s| format!(", {}", mib(s))).unwrap_or_default();
        let note_s = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        eprintln!(
            "image: [{name}] done in {:.1} s{size_s}{note_s}",
            took.as_secs_f64()
        );
        self.done.push((name.into(), took, size, note.into()));
    }
    pub fn total(&self) -> Duration {
        self.done.iter().map(|s| s.1).sum()
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes a file or tree takes on disk (allocated blocks: sparse files count what they hold).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += allocated(&e.path());
            }
        }
    }
    total
}

/// Apparent size of a regular file.
pub fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random RFC 9562 version-4 UUID from the kernel.
pub fn uuid() -> Result<String> {
    let p = Path::new("/proc/sys/kernel/random/uuid");
    Ok(std::fs::read_to_string(p)
        .map_err(io(p))?
        .trim()
        .to_string())
}
