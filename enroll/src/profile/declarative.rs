//! The declarative device management form (`apple/device-management`
//! `declarative/declarations`): a `com.apple.configuration.network.relay` configuration whose
//! relay names a `com.apple.asset.credential.acme` asset (`CredentialAssetReference`), and the
//! asset's data, the `com.apple.credential.acme` JSON document (`assets/credentials/acme.yaml`)
//! that the asset's `Reference.DataURL` serves.
//!
//! Every declaration carries `Type`, `Identifier`, `ServerToken`, `Payload`
//! (`declarationbase.yaml`). Identifiers are stable; the server token is a digest of the
//! payload, so it changes exactly when the declaration does.

use super::{ProfileError, ProfileSpec};
use serde_json::{json, Map, Value};

/// The three documents of the declarative form.
#[derive(Debug, Clone)]
pub struct Declarative {
    /// `com.apple.configuration.network.relay`.
    pub relay: Value,
    /// `com.apple.asset.credential.acme`.
    pub asset: Value,
    /// The asset's data: a `com.apple.credential.acme` document, served at the asset's DataURL.
    pub credential: Vec<u8>,
}

impl Declarative {
    /// File names and contents, as `attestgate profile --format declarative` writes them.
    pub fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, ProfileError> {
        let pretty = |v: &Value| {
            serde_json::to_vec_pretty(v)
                .map(|mut b| {
                    b.push(b'\n');
                    b
                })
                .map_err(|e| ProfileError::Plist(e.to_string()))
        };
        Ok(vec![
            ("relay.declaration.json", pretty(&self.relay)?),
            ("acme.asset.json", pretty(&self.asset)?),
            ("acme-credential.json", self.credential.clone()),
        ])
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn declaration(kind: &str, identifier: String, payload: Value) -> Result<Value, ProfileError> {
    // serde_json's map is sorted, so the same payload always serializes the same way
    let canonical = serde_json::to_vec(&payload).map_err(|e| ProfileError::Plist(e.to_string()))?;
    let token = sha256_hex(&canonical);
    Ok(json!({
        "Type": kind,
        "Identifier": identifier,
        "ServerToken": &token[..32],
        "Payload": payload,
    }))
}

/// The declarative form. `asset_url` is where the admin serves the credential document (the
/// MDM itself, so that its serial-number variable is filled in per device): it must be https.
pub fn declarative(spec: &ProfileSpec, asset_url: &str) -> Result<Declarative, ProfileError> {
    let ok = asset_url
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !ok {
        return Err(ProfileError::Option(format!(
            "--asset-url `{asset_url}`: the ACME credential asset's DataURL must start with https:// (assets/credential.acme.yaml)"
        )));
    }
    if !spec.relay.raw_public_keys.is_empty() {
        return Err(ProfileError::Option(
            "--pin: the declarative relay takes public keys only as data assets (PublicKeyData); \
             pin with the mobileconfig form"
                .into(),
        ));
    }
    let a = &spec.acme;
    let subject: Vec<Value> = a.subject.iter().map(|(k, v)| json!([[k, v]])).collect();
    let credential = json!({
        "DirectoryURL": a.directory_url,
        "ClientIdentifier": a.client_identifier,
        "KeyType": "ECSECPrimeRandom",
        "KeySize": a.key_size.bits(),
        "HardwareBound": true,
        "Attest": true,
        "Subject": subject,
        "UsageFlags": a.usage_flags,
        "ExtendedKeyUsage": a.extended_key_usage,
    });
    let mut credential =
        serde_json::to_vec_pretty(&credential).map_err(|e| ProfileError::Plist(e.to_string()))?;
    credential.push(b'\n');

    let asset_id = format!("{}.acme-credential", spec.identifier);
    let asset = declaration(
        "com.apple.asset.credential.acme",
        asset_id.clone(),
        json!({
            "Reference": {
                "DataURL": asset_url,
                "ContentType": "application/json",
                "Size": credential.len(),
                "Hash-SHA-256": sha256_hex(&credential),
            },
            // the MDM serves the document with its device authentication (and per-device
            // variable substitution)
            "Authentication": { "Type": "MDM" },
        }),
    )?;

    let r = &spec.relay;
    let mut relay = Map::new();
    if let Some(u) = &r.http3_url {
        relay.insert("HTTP3RelayURL".into(), json!(u));
    }
    if let Some(u) = &r.http2_url {
        relay.insert("HTTP2RelayURL".into(), json!(u));
    }
    relay.insert("CredentialAssetReference".into(), json!(asset_id));
    if !r.headers.is_empty() {
        let headers: Map<String, Value> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        relay.insert("AdditionalHTTPHeaderFields".into(), Value::Object(headers));
    }
    let mut payload = Map::new();
    payload.insert("VisibleName".into(), json!(spec.display_name));
    payload.insert("Relays".into(), json!([Value::Object(relay)]));
    payload.insert("MatchDomains".into(), json!(r.domains.match_domains));
    if !r.domains.excluded_domains.is_empty() {
        payload.insert("ExcludedDomains".into(), json!(r.domains.excluded_domains));
    }
    if !r.domains.excluded_fqdns.is_empty() {
        payload.insert("ExcludedFQDNs".into(), json!(r.domains.excluded_fqdns));
    }
    payload.insert("RelayUUID".into(), json!(spec.uuids.relay_uuid));
    let relay = declaration(
        "com.apple.configuration.network.relay",
        format!("{}.relay", spec.identifier),
        Value::Object(payload),
    )?;
    Ok(Declarative {
        relay,
        asset,
        credential,
    })
}
