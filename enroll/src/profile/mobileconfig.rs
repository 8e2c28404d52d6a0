//! The `.mobileconfig`: an XML property list holding a top-level `Configuration` payload with
//! an ACME payload and a relay payload (Apple "Configuration Profile Reference";
//! `apple/device-management` `mdm/profiles/TopLevel.yaml`, `CommonPayloadKeys.yaml`,
//! `com.apple.security.acme.yaml`, `com.apple.relay.managed.yaml`).

use super::{ProfileError, ProfileSpec};
use plist::{Dictionary, Value};

fn string_array<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.clone()))
            .collect(),
    )
}

/// The keys every payload carries (CommonPayloadKeys).
fn payload(kind: &str, identifier: String, uuid: &str, display_name: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), Value::String(kind.into()));
    d.insert("PayloadVersion".into(), Value::Integer(1.into()));
    d.insert("PayloadIdentifier".into(), Value::String(identifier));
    d.insert("PayloadUUID".into(), Value::String(uuid.into()));
    d.insert(
        "PayloadDisplayName".into(),
        Value::String(display_name.into()),
    );
    d
}

fn acme_payload(spec: &ProfileSpec) -> Dictionary {
    let a = &spec.acme;
    let mut d = payload(
        "com.apple.security.acme",
        format!("{}.acme", spec.identifier),
        &spec.uuids.acme,
        "Device certificate (ACME, attested)",
    );
    d.insert(
        "DirectoryURL".into(),
        Value::String(a.directory_url.clone()),
    );
    d.insert(
        "ClientIdentifier".into(),
        Value::String(a.client_identifier.clone()),
    );
    // Hardware-bound keys: ECSECPrimeRandom, 256 or 384; Attest needs HardwareBound.
    d.insert("KeyType".into(), Value::String("ECSECPrimeRandom".into()));
    d.insert("KeySize".into(), Value::Integer(a.key_size.bits().into()));
    d.insert("HardwareBound".into(), Value::Boolean(true));
    d.insert("Attest".into(), Value::Boolean(true));
    // Subject: an array of RDNs, each an array of [attribute, value] pairs.
    let subject = a
        .subject
        .iter()
        .map(|(k, v)| {
            Value::Array(vec![Value::Array(vec![
                Value::String(k.clone()),
                Value::String(v.clone()),
            ])])
        })
        .collect();
    d.insert("Subject".into(), Value::Array(subject));
    d.insert("UsageFlags".into(), Value::Integer(a.usage_flags.into()));
    d.insert(
        "ExtendedKeyUsage".into(),
        string_array(&a.extended_key_usage),
    );
    // macOS only (ignored elsewhere): the private key stays non-extractable in the keychain.
    d.insert("KeyIsExtractable".into(), Value::Boolean(false));
    d
}

fn relay_payload(spec: &ProfileSpec) -> Dictionary {
    let r = &spec.relay;
    let mut d = payload(
        "com.apple.relay.managed",
        format!("{}.relay", spec.identifier),
        &spec.uuids.relay_payload,
        "attestgate relay",
    );
    let mut relay = Dictionary::new();
    if let Some(u) = &r.http3_url {
        relay.insert("HTTP3RelayURL".into(), Value::String(u.clone()));
    }
    if let Some(u) = &r.http2_url {
        relay.insert("HTTP2RelayURL".into(), Value::String(u.clone()));
    }
    // the identity the device authenticates to the relay with: the ACME payload's
    relay.insert(
        "PayloadCertificateUUID".into(),
        Value::String(spec.uuids.acme.clone()),
    );
    if !r.headers.is_empty() {
        let mut h = Dictionary::new();
        for (name, value) in &r.headers {
            h.insert(name.clone(), Value::String(value.clone()));
        }
        relay.insert("AdditionalHTTPHeaderFields".into(), Value::Dictionary(h));
    }
    if !r.raw_public_keys.is_empty() {
        let keys = r
            .raw_public_keys
            .iter()
            .map(|k| Value::Data(k.clone()))
            .collect();
        relay.insert("RawPublicKeys".into(), Value::Array(keys));
    }
    d.insert(
        "Relays".into(),
        Value::Array(vec![Value::Dictionary(relay)]),
    );
    d.insert(
        "MatchDomains".into(),
        string_array(&r.domains.match_domains),
    );
    if !r.domains.excluded_domains.is_empty() {
        d.insert(
            "ExcludedDomains".into(),
            string_array(&r.domains.excluded_domains),
        );
    }
    if !r.domains.excluded_fqdns.is_empty() {
        d.insert(
            "ExcludedFQDNs".into(),
            string_array(&r.domains.excluded_fqdns),
        );
    }
    d.insert(
        "RelayUUID".into(),
        Value::String(spec.uuids.relay_uuid.clone()),
    );
    d
}

/// The whole profile as a property-list value.
pub fn mobileconfig(spec: &ProfileSpec) -> Value {
    let mut top = payload(
        "Configuration",
        spec.identifier.clone(),
        &spec.uuids.profile,
        &spec.display_name,
    );
    top.insert(
        "PayloadOrganization".into(),
        Value::String(spec.organization.clone()),
    );
    top.insert(
        "PayloadDescription".into(),
        Value::String(format!(
            "Gets this device an attested certificate from {} and sends the traffic of the \
             managed apps through its relay.",
            spec.appliance
        )),
    );
    // macOS: install for the system (the device keychain), not for one user
    top.insert("PayloadScope".into(), Value::String("System".into()));
    top.insert(
        "PayloadContent".into(),
        Value::Array(vec![
            Value::Dictionary(acme_payload(spec)),
            Value::Dictionary(relay_payload(spec)),
        ]),
    );
    Value::Dictionary(top)
}

/// The profile as XML property-list bytes (UTF-8, with the plist DOCTYPE).
pub fn mobileconfig_xml(spec: &ProfileSpec) -> Result<Vec<u8>, ProfileError> {
    let mut out = Vec::new();
    mobileconfig(spec)
        .to_writer_xml(&mut out)
        .map_err(|e| ProfileError::Plist(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}
