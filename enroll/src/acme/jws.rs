//! JSON Web Signatures as ACME uses them (RFC 8555 §6.2): the flattened JSON serialization
//! (RFC 7515 §7.2.2) with a protected header only, ECDSA ES256 / ES384 (RFC 7518 §3.4), the
//! key as a `jwk` (RFC 7517, EC keys RFC 7518 §6.2) or as an account URL in `kid`.

use super::problem::Problem;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

/// base64url without padding (RFC 8555 §6.1, RFC 7515 §2).
pub fn b64u(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; padding or other alphabets are refused (RFC 8555 §6.1:
/// "trailing '=' characters MUST be stripped", and a server MUST reject encodings with them).
pub fn b64u_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The signature algorithms accepted (RFC 8555 §6.2 requires ES256; ES384 for P-384 keys).
pub const ALGORITHMS: [&str; 2] = ["ES256", "ES384"];

/// An account key: an EC public key on P-256 or P-384.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcJwk {
    /// `P-256` or `P-384`.
    pub crv: String,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

impl EcJwk {
    /// Reads an RFC 7518 §6.2.1 EC public key; anything else is `badPublicKey` (§6.7).
    pub fn from_json(v: &Value) -> Result<EcJwk, Problem> {
        let obj = v
            .as_object()
            .ok_or_else(|| Problem::malformed("jwk is not a JSON object"))?;
        let field = |name: &str| obj.get(name).and_then(Value::as_str);
        if field("kty") != Some("EC") {
            return Err(Problem::bad_public_key(
                "only EC account keys (kty \"EC\", P-256 or P-384) are accepted",
            ));
        }
        if obj.contains_key("d") {
            return Err(Problem::bad_public_key("the jwk contains a private key"));
        }
        let crv = field("crv").unwrap_or_default();
        let len = match crv {
            "P-256" => 32,
            "P-384" => 48,
            other => {
                return Err(Problem::bad_public_key(format!(
                    "curve {other:?} is not accepted (P-256 or P-384)"
                )))
            }
        };
        let coord = |name: &str| {
            field(name)
                .and_then(b64u_decode)
                .filter(|b| b.len() == len)
                .ok_or_else(|| {
                    Problem::bad_public_key(format!(
                        "jwk {name} is not {len} bytes of base64url (RFC 7518 §6.2.1.2)"
                    ))
                })
        };
        Ok(EcJwk {
            crv: crv.to_string(),
            x: coord("x")?,
            y: coord("y")?,
        })
    }

    /// The canonical JSON (RFC 7638 §3.2: required members only, lexicographic order, no
    /// whitespace); its SHA-256 is the thumbprint.
    pub fn canonical_json(&self) -> String {
        format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            self.crv,
            b64u(&self.x),
            b64u(&self.y)
        )
    }

    /// The RFC 7638 thumbprint (SHA-256), base64url.
    pub fn thumbprint(&self) -> String {
        b64u(ring::digest::digest(&ring::digest::SHA256, self.canonical_json().as_bytes()).as_ref())
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        if self.crv == "P-384" {
            "ES384"
        } else {
            "ES256"
        }
    }

    /// Checks `signature` (R ‖ S, RFC 7518 §3.4) over `message`.
    pub fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> Result<(), Problem> {
        if alg != self.alg() {
            return Err(Problem::bad_signature_algorithm(format!(
                "alg {alg} does not match the {} key (use {})",
                self.crv,
                self.alg()
            )));
        }
        let algorithm: &dyn ring::signature::VerificationAlgorithm = if self.crv == "P-384" {
            &ring::signature::ECDSA_P384_SHA384_FIXED
        } else {
            &ring::signature::ECDSA_P256_SHA256_FIXED
        };
        // SEC 1 §2.3.3 uncompressed point: 04 ‖ X ‖ Y
        let mut point = Vec::with_capacity(1 + self.x.len() + self.y.len());
        point.push(4);
        point.extend_from_slice(&self.x);
        point.extend_from_slice(&self.y);
        ring::signature::UnparsedPublicKey::new(algorithm, &point)
            .verify(message, signature)
            .map_err(|_| Problem::malformed("JWS signature verification failed"))
    }
}

/// Which key signed the request (RFC 8555 §6.2: exactly one of `jwk` and `kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Jwk(EcJwk),
    Kid(String),
}

/// A parsed, not yet verified, request.
#[derive(Debug, Clone)]
pub struct Jws {
    pub alg: String,
    pub nonce: String,
    pub url: String,
    pub key: KeyRef,
    /// The decoded payload; empty for POST-as-GET (RFC 8555 §6.3).
    pub payload: Vec<u8>,
    /// `protected` and `payload` as sent: what the signature covers (RFC 7515 §5.2).
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flattened {
    protected: String,
    payload: String,
    signature: String,
}

impl Jws {
    /// Parses the request body. Refuses the general serialization, unprotected headers,
    /// `crit`, algorithms other than ES256/ES384 and headers missing a field ACME requires.
    pub fn parse(body: &[u8]) -> Result<Jws, Problem> {
        let flat: Flattened = serde_json::from_slice(body).map_err(|e| {
            Problem::malformed(format!(
                "the body is not a flattened JWS with only protected, payload and signature \
                 (RFC 8555 §6.2): {e}"
            ))
        })?;
        let header_bytes = b64u_decode(&flat.protected)
            .ok_or_else(|| Problem::malformed("protected header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|_| Problem::malformed("protected header is not a JSON object"))?;
        let text = |name: &str| header.get(name).and_then(Value::as_str);
        let alg = text("alg")
            .ok_or_else(|| Problem::malformed("protected header has no alg"))?
            .to_string();
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(Problem::bad_signature_algorithm(format!(
                "alg {alg:?} is not accepted"
            )));
        }
        if header.contains_key("crit") {
            return Err(Problem::malformed(
                "protected header has crit; no extension is understood",
            ));
        }
        let nonce = text("nonce")
            .ok_or_else(|| Problem::bad_nonce("protected header has no nonce (RFC 8555 §6.5)"))?
            .to_string();
        let url = text("url")
            .ok_or_else(|| Problem::unauthorized("protected header has no url (RFC 8555 §6.4)"))?
            .to_string();
        let key = match (header.get("jwk"), header.get("kid")) {
            (Some(jwk), None) => KeyRef::Jwk(EcJwk::from_json(jwk)?),
            (None, Some(Value::String(kid))) => KeyRef::Kid(kid.clone()),
            (None, Some(_)) => return Err(Problem::malformed("kid is not a string")),
            _ => {
                return Err(Problem::malformed(
                    "the protected header must hold exactly one of jwk and kid (RFC 8555 §6.2)",
                ))
            }
        };
        let payload = b64u_decode(&flat.payload)
            .ok_or_else(|| Problem::malformed("payload is not base64url"))?;
        let signature = b64u_decode(&flat.signature)
            .ok_or_else(|| Problem::malformed("signature is not base64url"))?;
        let mut signing_input = flat.protected.into_bytes();
        signing_input.push(b'.');
        signing_input.extend_from_slice(flat.payload.as_bytes());
        Ok(Jws {
            alg,
            nonce,
            url,
            key,
            payload,
            signing_input,
            signature,
        })
    }

    /// Checks the signature with `key`.
    pub fn verify(&self, key: &EcJwk) -> Result<(), Problem> {
        key.verify(&self.alg, &self.signing_input, &self.signature)
    }

    /// True for POST-as-GET (RFC 8555 §6.3: the payload is the empty string).
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload as a JSON object.
    pub fn json_payload(&self) -> Result<Map<String, Value>, Problem> {
        match serde_json::from_slice::<Value>(&self.payload) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Problem::malformed("the payload is not a JSON object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_input_is_canonical() {
        let k = EcJwk {
            crv: "P-256".into(),
            x: vec![1; 32],
            y: vec![2; 32],
        };
        let json = k.canonical_json();
        assert!(json.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#));
        assert!(!json.contains(' '));
        assert_eq!(k.thumbprint().len(), 43);
    }

    #[test]
    fn padding_and_standard_alphabet_are_refused() {
        assert_eq!(b64u_decode("AQ"), Some(vec![1]));
        assert_eq!(b64u_decode("AQ=="), None);
        assert_eq!(b64u_decode("+/"), None);
    }

    #[test]
    fn rsa_and_private_keys_are_bad_public_keys() {
        let rsa = serde_json::json!({"kty":"RSA","n":"AQ","e":"AQAB"});
        assert_eq!(
            EcJwk::from_json(&rsa).unwrap_err().kind,
            super::super::problem::ProblemType::BadPublicKey
        );
        let with_d = serde_json::json!({"kty":"EC","crv":"P-256","x":b64u(&[1;32]),"y":b64u(&[1;32]),"d":"AQ"});
        assert!(EcJwk::from_json(&with_d).is_err());
        let short =
            serde_json::json!({"kty":"EC","crv":"P-256","x":b64u(&[1;31]),"y":b64u(&[1;32])});
        assert!(EcJwk::from_json(&short).is_err());
    }
}
