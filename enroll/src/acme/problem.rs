//! ACME errors as RFC 7807 problem documents (RFC 8555 §6.7), `application/problem+json`.

use serde_json::{json, Value};

/// The ACME error types this server sends (RFC 8555 §6.7, draft-ietf-acme-device-attest
/// §7 for `badAttestationStatement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    AccountDoesNotExist,
    BadAttestationStatement,
    BadCsr,
    BadNonce,
    BadPublicKey,
    BadSignatureAlgorithm,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    ServerInternal,
    Unauthorized,
    UnsupportedIdentifier,
    /// Not an ACME type: a URL that names nothing (`about:blank`-like, sent as malformed
    /// with status 404 as Boulder and step-ca do).
    NotFound,
    AlreadyRevoked,
}

impl ProblemType {
    /// The `type` URN.
    pub fn urn(self) -> &'static str {
        match self {
            ProblemType::AccountDoesNotExist => "urn:ietf:params:acme:error:accountDoesNotExist",
            ProblemType::BadAttestationStatement => {
                "urn:ietf:params:acme:error:badAttestationStatement"
            }
            ProblemType::BadCsr => "urn:ietf:params:acme:error:badCSR",
            ProblemType::BadNonce => "urn:ietf:params:acme:error:badNonce",
            ProblemType::BadPublicKey => "urn:ietf:params:acme:error:badPublicKey",
            ProblemType::BadSignatureAlgorithm => {
                "urn:ietf:params:acme:error:badSignatureAlgorithm"
            }
            ProblemType::Malformed | ProblemType::NotFound => {
                "urn:ietf:params:acme:error:malformed"
            }
            ProblemType::OrderNotReady => "urn:ietf:params:acme:error:orderNotReady",
            ProblemType::RateLimited => "urn:ietf:params:acme:error:rateLimited",
            ProblemType::RejectedIdentifier => "urn:ietf:params:acme:error:rejectedIdentifier",
            ProblemType::ServerInternal => "urn:ietf:params:acme:error:serverInternal",
            ProblemType::Unauthorized => "urn:ietf:params:acme:error:unauthorized",
            ProblemType::UnsupportedIdentifier => {
                "urn:ietf:params:acme:error:unsupportedIdentifier"
            }
            ProblemType::AlreadyRevoked => "urn:ietf:params:acme:error:alreadyRevoked",
        }
    }

    /// The short name (the URN's last part), for events.
    pub fn name(self) -> &'static str {
        match self {
            ProblemType::NotFound => "notFound",
            t => t.urn().rsplit(':').next().unwrap_or("malformed"),
        }
    }

    /// The HTTP status (RFC 8555 §6.7 examples and common practice: client errors 400,
    /// authorization 403, not found 404, rate limits 429, server faults 500).
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProblemType::Unauthorized | ProblemType::OrderNotReady => S::FORBIDDEN,
            ProblemType::NotFound => S::NOT_FOUND,
            ProblemType::RateLimited => S::TOO_MANY_REQUESTS,
            ProblemType::ServerInternal => S::INTERNAL_SERVER_ERROR,
            _ => S::BAD_REQUEST,
        }
    }
}

/// One problem: its type and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
}

macro_rules! constructors {
    ($($name:ident => $kind:ident),* $(,)?) => {
        impl Problem {
            $(pub fn $name(detail: impl Into<String>) -> Problem {
                Problem { kind: ProblemType::$kind, detail: detail.into() }
            })*
        }
    };
}

constructors! {
    account_does_not_exist => AccountDoesNotExist,
    bad_attestation => BadAttestationStatement,
    bad_csr => BadCsr,
    bad_nonce => BadNonce,
    bad_public_key => BadPublicKey,
    bad_signature_algorithm => BadSignatureAlgorithm,
    malformed => Malformed,
    order_not_ready => OrderNotReady,
    rate_limited => RateLimited,
    rejected_identifier => RejectedIdentifier,
    server_internal => ServerInternal,
    unauthorized => Unauthorized,
    unsupported_identifier => UnsupportedIdentifier,
    not_found => NotFound,
    already_revoked => AlreadyRevoked,
}

impl Problem {
    /// The problem document (RFC 7807 §3.1: type, detail, status).
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "type": self.kind.urn(),
            "detail": self.detail,
            "status": self.kind.status().as_u16(),
        });
        if self.kind == ProblemType::BadSignatureAlgorithm {
            // RFC 8555 §6.2: list the algorithms accepted.
            doc["algorithms"] = json!(super::jws::ALGORITHMS);
        }
        doc
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}
