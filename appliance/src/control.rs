//! The control socket: a Unix stream socket, root (or the daemon's own user) only, carrying
//! one JSON request line and one JSON response line per connection.
//!
//! ```text
//! → {"command":"status"}
//! ← {"ok":true,"result":{…}}
//! ← {"ok":false,"error":{"code":"invalid-config","message":"…","details":["…"]}}
//! ```

use crate::policy::Protocol;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest request or response line accepted.
pub const MAX_LINE: usize = 4 << 20;
/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status {},
    /// Validate a file (or the daemon's own when `path` is absent) and swap it in atomically.
    Apply {
        path: Option<PathBuf>,
    },
    WhatIf {
        device: String,
        target: String,
        protocol: Protocol,
    },
    Devices {},
    Tunnels {},
    Flows {},
    /// Re-read every compliance source now and re-decide the open flows.
    Sync {},
    /// `up`, `down` or `rekey`.
    Tunnel {
        name: String,
        action: String,
    },
    /// `devices` with filters.
    DeviceList {
        #[serde(default)]
        filter: crate::compliance::report::DeviceFilter,
    },
    /// Every fact about one device and its verdict.
    DeviceShow {
        serial: String,
    },
    /// The built-in device CA's certificates.
    CaList {},
    /// Revoke a device's certificates (`device`) or one certificate (`certificate`, hex).
    CaRevoke {
        #[serde(default)]
        device: Option<String>,
        #[serde(default)]
        certificate: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Block, set a risk, unblock, clear.
    DeviceOverride {
        serial: String,
        action: crate::compliance::OverrideAction,
        #[serde(default)]
        level: Option<config::RiskLevel>,
        #[serde(default)]
        reason: Option<String>,
        /// Unix seconds.
        #[serde(default)]
        until: Option<i64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `invalid-config`, `bad-request`, `not-found`, `internal`.
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Vec<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(code: &str, message: impl Into<String>, details: Vec<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: code.into(),
                message: message.into(),
                details,
            }),
        }
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the attestgate daemon is not running (no control socket at {}); start it with `attestgate run` or `systemctl start attestgate`", .0.display())]
    NotRunning(PathBuf),
    #[error("permission denied on {}: the control socket is for root", .0.display())]
    Permission(PathBuf),
    #[error("control socket {}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    #[error("the daemon did not answer within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("the daemon sent an answer this CLI does not understand: {0}")]
    Protocol(String),
}

/// Sends one request and waits for the answer.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(socket.to_path_buf()),
        _ => ClientError::Io(socket.to_path_buf(), e),
    };
    let work = async {
        let stream = UnixStream::connect(socket).await.map_err(io)?;
        let (read, mut write) = stream.into_split();
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(io)?;
        write.shutdown().await.map_err(io)?;
        let mut answer = String::new();
        let mut reader = BufReader::new(read).take(MAX_LINE as u64);
        reader.read_line(&mut answer).await.map_err(io)?;
        serde_json::from_str::<Response>(&answer)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", answer.trim())))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| ClientError::Timeout)?
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::WhatIf {
            device: "C02".into(),
            target: "a:443".into(),
            protocol: Protocol::Tcp,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"command":"what-if","device":"C02","target":"a:443","protocol":"tcp"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"command":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }
}
