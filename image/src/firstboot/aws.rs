//! AWS EC2: the instance metadata service, IMDSv2 only ("Use the Instance Metadata Service to
//! access instance metadata", EC2 User Guide). A session token comes from
//! `PUT /latest/api/token` (header `X-aws-ec2-metadata-token-ttl-seconds`); every read sends it
//! as `X-aws-ec2-metadata-token`. A refused token is an error: attestgate never falls back to
//! IMDSv1's unauthenticated GETs.
//!
//! Read: `meta-data/instance-id`, `meta-data/local-hostname`, `meta-data/public-keys/` (lines
//! `N=name`) with each `meta-data/public-keys/N/openssh-key`, and `user-data` (404: none).

use super::http::{Client, HttpError, Response};
use super::seed::{
    check_hostname, parse_user_data, MetaData, Seed, SeedError, UserData, MAX_USER_DATA,
};

/// The IMDS address (IPv4; `[fd00:ec2::254]` on IPv6-only Nitro subnets is not used).
pub const BASE: &str = "http://169.254.169.254";
/// Token lifetime asked for: first boot needs seconds; IMDS allows up to 21600.
const TOKEN_TTL: &str = "300";
/// Largest metadata value other than user-data.
const MAX_META: usize = 64 << 10;
/// Most keys read.
const MAX_KEYS: usize = 100;

/// Reads this instance's seed from IMDS at `client`'s base URL.
pub fn read_seed(client: &Client) -> Result<Seed, SeedError> {
    let token = token(client)?;
    let imds = Imds { client, token };
    let text = |path: &str, body: Vec<u8>| -> Result<String, SeedError> {
        String::from_utf8(body)
            .map(|s| s.trim().to_string())
            .map_err(|_| service(client, path, "not UTF-8 text".into()))
    };
    let id_path = "/latest/meta-data/instance-id";
    let instance_id = match imds.get(id_path, MAX_META)? {
        Some(body) => text(id_path, body)?,
        None => return Err(service(client, id_path, "not found (HTTP 404)".into())),
    };
    if instance_id.is_empty() {
        return Err(service(client, id_path, "empty".into()));
    }
    let host_path = "/latest/meta-data/local-hostname";
    let local_hostname = match imds.get(host_path, MAX_META)? {
        Some(body) => {
            let host = text(host_path, body)?;
            check_hostname(&host).map_err(|reason| service(client, host_path, reason))?;
            Some(host)
        }
        None => None,
    };
    let mut public_keys = Vec::new();
    let list_path = "/latest/meta-data/public-keys/";
    if let Some(body) = imds.get(list_path, MAX_META)? {
        for (n, line) in text(list_path, body)?.lines().enumerate().take(MAX_KEYS) {
            // `0=my-key-pair`: the index is what the per-key paths use.
            let index = line
                .split_once('=')
                .map(|(i, _)| i.trim())
                .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    service(
                        client,
                        list_path,
                        format!("line {}: expected `N=name`, found {line:?}", n + 1),
                    )
                })?;
            let key_path = format!("/latest/meta-data/public-keys/{index}/openssh-key");
            if let Some(body) = imds.get(&key_path, MAX_META)? {
                let key = text(&key_path, body)?;
                public_keys.extend(key.lines().map(str::to_string));
            }
        }
    }
    let user_data = match imds.get("/latest/user-data", MAX_USER_DATA)? {
        Some(body) => parse_user_data(&body)?,
        None => UserData::Absent,
    };
    Ok(Seed {
        meta: MetaData {
            instance_id: Some(instance_id),
            local_hostname,
            public_keys,
        },
        user_data,
        files: Vec::new(),
        notes: Vec::new(),
    })
}

fn token(client: &Client) -> Result<String, SeedError> {
    let path = "/latest/api/token";
    let resp = client
        .send_retrying(
            "PUT",
            path,
            &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)],
            None,
        )
        .map_err(|e| http_error(client, path, e))?;
    match resp.status {
        200 => {}
        401 | 403 => {
            return Err(service(
                client,
                path,
                format!(
                    "IMDSv2 session token refused (HTTP {}): is the metadata service disabled \
                     for this instance (HttpEndpoint)? attestgate does not fall back to IMDSv1",
                    resp.status
                ),
            ))
        }
        s => {
            return Err(service(
                client,
                path,
                format!("IMDSv2 session token: HTTP {s}"),
            ))
        }
    }
    let token = String::from_utf8(resp.body)
        .unwrap_or_default()
        .trim()
        .to_string();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return Err(service(
            client,
            path,
            "IMDSv2 session token is empty or malformed".into(),
        ));
    }
    Ok(token)
}

struct Imds<'a> {
    client: &'a Client,
    token: String,
}

impl Imds<'_> {
    /// The body at `path`, `None` on 404.
    fn get(&self, path: &str, max: usize) -> Result<Option<Vec<u8>>, SeedError> {
        let mut client = self.client.clone();
        client.max_body = max;
        let resp: Response = client
            .send_retrying(
                "GET",
                path,
                &[("X-aws-ec2-metadata-token", &self.token)],
                None,
            )
            .map_err(|e| http_error(&client, path, e))?;
        match resp.status {
            200 => Ok(Some(resp.body)),
            404 => Ok(None),
            401 => Err(service(
                &client,
                path,
                "HTTP 401: the IMDSv2 session token was not accepted".into(),
            )),
            s => Err(service(&client, path, format!("HTTP {s}"))),
        }
    }
}

fn service(client: &Client, path: &str, reason: String) -> SeedError {
    SeedError::Service {
        service: format!("AWS IMDS {}", client.url(path)),
        reason,
    }
}

fn http_error(client: &Client, path: &str, e: HttpError) -> SeedError {
    service(client, path, e.to_string())
}
