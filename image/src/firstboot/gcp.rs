//! GCP: the Compute Engine metadata server ("About VM metadata" and "Query VM metadata",
//! Compute Engine docs). Every request carries `Metadata-Flavor: Google` and every answer must
//! carry it back, or it did not come from the metadata server. The server is reached at
//! 169.254.169.254 so no DNS is needed, with `Host: metadata.google.internal`.
//!
//! Read: `instance/id`, `instance/hostname`, the configuration from the instance attribute
//! `attestgate-config` or else `user-data` (when both are set, `attestgate-config` wins and
//! the console says `user-data` was ignored: the dedicated name is the deliberate one), and
//! SSH keys from `instance/attributes/ssh-keys` and `project/attributes/ssh-keys` — the
//! project's skipped when `instance/attributes/block-project-ssh-keys` is `true` ("Manage SSH
//! keys in metadata").
//!
//! Keys are lines `USER:KEY`. Only keys for the users `root` and `admin` are taken: project
//! metadata often holds the keys of everyone who ever ran `gcloud compute ssh`, and the
//! appliance has one administrator login. Keys with a `google-ssh {"expireOn": …}` comment are
//! skipped too: they are meant to lapse, and a key written once at first boot would not.

use super::http::{Client, Response};
use super::seed::{
    check_hostname, parse_user_data, MetaData, Seed, SeedError, UserData, MAX_USER_DATA,
};

pub const BASE: &str = "http://169.254.169.254/computeMetadata/v1";
pub const HOST: &str = "metadata.google.internal";
/// Users whose keys are installed.
pub const KEY_USERS: &[&str] = &["root", "admin"];
const MAX_META: usize = 256 << 10;

/// The metadata server's client: [`BASE`] with `Host:` [`HOST`].
pub fn client() -> Result<Client, SeedError> {
    let mut c = Client::new(BASE).map_err(|e| SeedError::Service {
        service: "GCP metadata".into(),
        reason: e.to_string(),
    })?;
    c.host_header = HOST.into();
    Ok(c)
}

/// Reads this instance's seed from the metadata server at `client`.
pub fn read_seed(client: &Client) -> Result<Seed, SeedError> {
    let md = Metadata { client };
    let mut notes = Vec::new();
    let id_path = "/instance/id";
    let instance_id = match md.text(id_path, MAX_META)? {
        Some(id) if !id.is_empty() => id,
        _ => return Err(md.error(id_path, "no instance id".into())),
    };
    let host_path = "/instance/hostname";
    let local_hostname = match md.text(host_path, MAX_META)? {
        Some(host) if !host.is_empty() => {
            check_hostname(&host).map_err(|reason| md.error(host_path, reason))?;
            Some(host)
        }
        _ => None,
    };
    let ours = md.get("/instance/attributes/attestgate-config", MAX_USER_DATA)?;
    let generic = md.get("/instance/attributes/user-data", MAX_USER_DATA)?;
    let user_data = match (ours, generic) {
        (Some(body), other) => {
            if other.is_some() {
                notes.push(
                    "metadata attribute user-data ignored: attestgate-config is set and wins"
                        .to_string(),
                );
            }
            parse_user_data(&body)?
        }
        (None, Some(body)) => parse_user_data(&body)?,
        (None, None) => UserData::Absent,
    };
    let mut public_keys = Vec::new();
    let mut sources = vec!["/instance/attributes/ssh-keys"];
    let block = md.text("/instance/attributes/block-project-ssh-keys", MAX_META)?;
    if block.is_some_and(|b| b.eq_ignore_ascii_case("true")) {
        notes.push("project SSH keys not read: block-project-ssh-keys is true".to_string());
    } else {
        sources.push("/project/attributes/ssh-keys");
    }
    for path in sources {
        if let Some(text) = md.text(path, MAX_META)? {
            ssh_keys(path, &text, &mut public_keys, &mut notes);
        }
    }
    Ok(Seed {
        meta: MetaData {
            instance_id: Some(instance_id),
            local_hostname,
            public_keys,
        },
        user_data,
        files: Vec::new(),
        notes,
    })
}

/// `USER:KEY` lines: the keys of [`KEY_USERS`] into `keys`, what was skipped into `notes`.
pub fn ssh_keys(source: &str, text: &str, keys: &mut Vec<String>, notes: &mut Vec<String>) {
    let mut others = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((user, key)) = line.split_once(':') else {
            notes.push(format!(
                "{source} line {}: no `user:` before the key, skipped",
                n + 1
            ));
            continue;
        };
        if !KEY_USERS.contains(&user.trim()) {
            others += 1;
        } else if key.contains(" google-ssh ") {
            notes.push(format!(
                "{source} line {}: an expiring google-ssh key, skipped",
                n + 1
            ));
        } else {
            keys.push(key.trim().to_string());
        }
    }
    if others > 0 {
        notes.push(format!(
            "{source}: {others} keys of users other than {} skipped",
            KEY_USERS.join("/")
        ));
    }
}

struct Metadata<'a> {
    client: &'a Client,
}

impl Metadata<'_> {
    /// The value at `path`, `None` on 404.
    fn get(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>, SeedError> {
        let mut client = self.client.clone();
        client.max_body = max;
        let resp: Response = client
            .send_retrying("GET", path, &[("Metadata-Flavor", "Google")], None)
            .map_err(|e| self.error(path, e.to_string()))?;
        match resp.header("Metadata-Flavor") {
            Some("Google") => {}
            other => {
                return Err(self.error(
                    path,
                    format!(
                        "the answer (HTTP {}) has {} instead of `Metadata-Flavor: Google`: \
                         not the GCP metadata server",
                        resp.status,
                        other.map_or("no Metadata-Flavor".to_string(), |v| format!(
                            "Metadata-Flavor: {v}"
                        ))
                    ),
                ))
            }
        }
        match resp.status {
            200 => Ok(Some(resp.body)),
            404 => Ok(None),
            s => Err(self.error(path, format!("HTTP {s}"))),
        }
    }

    fn text(&self, path: &str, max: usize) -> Result<Option<String>, SeedError> {
        match self.get(path, max)? {
            None => Ok(None),
            Some(body) => String::from_utf8(body)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| self.error(path, "not UTF-8 text".into())),
        }
    }

    fn error(&self, path: &str, reason: String) -> SeedError {
        SeedError::Service {
            service: format!("GCP metadata {}", self.client.url(path)),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn key_lines() {
        let (mut keys, mut notes) = (Vec::new(), Vec::new());
        ssh_keys(
            "ssh-keys",
            "root:ssh-ed25519 AAAA r\nalice:ssh-rsa BBBB a\nbob:ssh-rsa CCCC\nno-user-key\n\
             admin:ssh-rsa DDDD google-ssh {\"userName\":\"x\",\"expireOn\":\"2030-01-01T00:00:00+0000\"}\n\
             admin:ssh-ed25519 EEEE\n",
            &mut keys,
            &mut notes,
        );
        assert_eq!(keys, ["ssh-ed25519 AAAA r", "ssh-ed25519 EEEE"]);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[2].contains("2 keys of users other than root/admin"));
    }
}
