//! Proposals in strongSwan's syntax, e.g. `aes256gcm16-prfsha256-ecp256` for IKE or
//! `aes128-sha256-modp2048-esn` for ESP, parsed into IANA transform identifiers
//! (RFC 7296 §3.3.2; the numbers are IANA's "IKEv2 Transform Type" registries).
//!
//! A proposal lists one or more algorithms per transform type, each token naming one. The rules
//! follow strongSwan so that an operator can paste the peer's proposal string:
//! - combined-mode (AEAD) ciphers and classic ciphers cannot share a proposal (RFC 7296 §3.3);
//! - in an AEAD IKE proposal a bare `sha256` names the PRF (strongSwan does the same), and an
//!   AEAD IKE proposal must name a PRF;
//! - a classic IKE proposal without a PRF takes the PRFs matching its integrity algorithms;
//! - IKE proposals need a Diffie-Hellman group; in ESP proposals a group means PFS on rekey
//!   (RFC 7296 §1.3.1);
//! - `esn` / `noesn` only in ESP proposals; without either, ESP offers no-ESN.
//!
//! Only suites attestgate implements are accepted; weak ones (DES, 3DES, MD5, SHA-1, MODP-1024,
//! short GCM ICVs) are refused by name with what to write instead.

use std::fmt;

/// Encryption algorithms (transform type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encryption {
    /// ENCR_AES_CBC (12) with a 128-bit key.
    AesCbc128,
    /// ENCR_AES_CBC (12) with a 256-bit key.
    AesCbc256,
    /// ENCR_AES_GCM_16 (20) with a 128-bit key (RFC 4106, RFC 5282).
    AesGcm16_128,
    /// ENCR_AES_GCM_16 (20) with a 256-bit key.
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (28), RFC 7634.
    ChaCha20Poly1305,
}

impl Encryption {
    /// IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Encryption::AesCbc128 | Encryption::AesCbc256 => 12,
            Encryption::AesGcm16_128 | Encryption::AesGcm16_256 => 20,
            Encryption::ChaCha20Poly1305 => 28,
        }
    }
    /// Key length in bits, sent as the Key Length attribute where the cipher has one.
    pub fn key_bits(self) -> Option<u16> {
        match self {
            Encryption::AesCbc128 | Encryption::AesGcm16_128 => Some(128),
            Encryption::AesCbc256 | Encryption::AesGcm16_256 => Some(256),
            Encryption::ChaCha20Poly1305 => None,
        }
    }
    /// True for combined-mode ciphers that need no integrity transform.
    pub fn is_aead(self) -> bool {
        !matches!(self, Encryption::AesCbc128 | Encryption::AesCbc256)
    }
    fn token(self) -> &'static str {
        match self {
            Encryption::AesCbc128 => "aes128",
            Encryption::AesCbc256 => "aes256",
            Encryption::AesGcm16_128 => "aes128gcm16",
            Encryption::AesGcm16_256 => "aes256gcm16",
            Encryption::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }
}

/// Pseudo-random functions (transform type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256 (5).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7).
    HmacSha512,
}

impl Prf {
    /// IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }
    fn token(self) -> &'static str {
        match self {
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }
}

/// Integrity algorithms (transform type 3), RFC 4868 truncations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Integrity {
    /// AUTH_HMAC_SHA2_256_128 (12).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (13).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (14).
    HmacSha512_256,
}

impl Integrity {
    /// IANA transform ID.
    pub fn transform_id(self) -> u16 {
        match self {
            Integrity::HmacSha256_128 => 12,
            Integrity::HmacSha384_192 => 13,
            Integrity::HmacSha512_256 => 14,
        }
    }
    fn token(self) -> &'static str {
        match self {
            Integrity::HmacSha256_128 => "sha256",
            Integrity::HmacSha384_192 => "sha384",
            Integrity::HmacSha512_256 => "sha512",
        }
    }
    fn matching_prf(self) -> Prf {
        match self {
            Integrity::HmacSha256_128 => Prf::HmacSha256,
            Integrity::HmacSha384_192 => Prf::HmacSha384,
            Integrity::HmacSha512_256 => Prf::HmacSha512,
        }
    }
}

/// Diffie-Hellman / key exchange groups (transform type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DhGroup {
    /// 2048-bit MODP group 14 (RFC 3526).
    Modp2048,
    /// 256-bit random ECP group 19 (RFC 5903).
    Ecp256,
    /// 384-bit random ECP group 20 (RFC 5903).
    Ecp384,
    /// Curve25519 group 31 (RFC 8031).
    Curve25519,
}

impl DhGroup {
    /// IANA group number.
    pub fn transform_id(self) -> u16 {
        match self {
            DhGroup::Modp2048 => 14,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }
    fn token(self) -> &'static str {
        match self {
            DhGroup::Modp2048 => "modp2048",
            DhGroup::Ecp256 => "ecp256",
            DhGroup::Ecp384 => "ecp384",
            DhGroup::Curve25519 => "x25519",
        }
    }
}

/// Extended sequence numbers (transform type 5), RFC 4303 §2.2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Esn {
    /// No ESN (0).
    No,
    /// ESN (1).
    Yes,
}

#[derive(Clone, Copy)]
enum Token {
    Encr(Encryption),
    Integ(Integrity),
    Prf(Prf),
    Dh(DhGroup),
    Esn(Esn),
}

const KNOWN: &[(&str, Token)] = &[
    ("aes128", Token::Encr(Encryption::AesCbc128)),
    ("aes256", Token::Encr(Encryption::AesCbc256)),
    ("aes128gcm16", Token::Encr(Encryption::AesGcm16_128)),
    ("aes128gcm128", Token::Encr(Encryption::AesGcm16_128)),
    ("aes256gcm16", Token::Encr(Encryption::AesGcm16_256)),
    ("aes256gcm128", Token::Encr(Encryption::AesGcm16_256)),
    (
        "chacha20poly1305",
        Token::Encr(Encryption::ChaCha20Poly1305),
    ),
    ("sha256", Token::Integ(Integrity::HmacSha256_128)),
    ("sha2_256", Token::Integ(Integrity::HmacSha256_128)),
    ("sha384", Token::Integ(Integrity::HmacSha384_192)),
    ("sha2_384", Token::Integ(Integrity::HmacSha384_192)),
    ("sha512", Token::Integ(Integrity::HmacSha512_256)),
    ("sha2_512", Token::Integ(Integrity::HmacSha512_256)),
    ("prfsha256", Token::Prf(Prf::HmacSha256)),
    ("prfsha384", Token::Prf(Prf::HmacSha384)),
    ("prfsha512", Token::Prf(Prf::HmacSha512)),
    ("modp2048", Token::Dh(DhGroup::Modp2048)),
    ("ecp256", Token::Dh(DhGroup::Ecp256)),
    ("ecp384", Token::Dh(DhGroup::Ecp384)),
    ("x25519", Token::Dh(DhGroup::Curve25519)),
    ("curve25519", Token::Dh(DhGroup::Curve25519)),
    ("esn", Token::Esn(Esn::Yes)),
    ("noesn", Token::Esn(Esn::No)),
];

/// Known to strongSwan but refused here, with the reason and what to use instead.
const REFUSED: &[(&str, &str)] = &[
    (
        "3des",
        "3DES is obsolete (RFC 8247 §2.1); use aes256gcm16 or aes256",
    ),
    ("des", "DES is broken; use aes256gcm16 or aes256"),
    ("aes192", "AES-192 is not implemented; use aes256"),
    (
        "aes128gcm8",
        "8-octet GCM ICVs are too short (RFC 8247); use aes128gcm16",
    ),
    (
        "aes128gcm12",
        "12-octet GCM ICVs are not implemented; use aes128gcm16",
    ),
    (
        "aes256gcm8",
        "8-octet GCM ICVs are too short (RFC 8247); use aes256gcm16",
    ),
    (
        "aes256gcm12",
        "12-octet GCM ICVs are not implemented; use aes256gcm16",
    ),
    ("md5", "HMAC-MD5 is obsolete (RFC 8247); use sha256"),
    (
        "sha1",
        "HMAC-SHA1 is not accepted here (RFC 8247 demotes it); use sha256",
    ),
    (
        "prfsha1",
        "PRF-HMAC-SHA1 is not accepted here; use prfsha256",
    ),
    ("prfmd5", "PRF-HMAC-MD5 is obsolete; use prfsha256"),
    ("modp768", "MODP-768 is broken; use ecp256 or modp2048"),
    (
        "modp1024",
        "MODP-1024 is too weak (RFC 8247 §2.4); use ecp256 or modp2048",
    ),
    ("modp1536", "MODP-1536 is too weak; use ecp256 or modp2048"),
    (
        "modp3072",
        "MODP-3072 is not implemented; use ecp384 or modp2048",
    ),
    (
        "modp4096",
        "MODP-4096 is not implemented; use ecp384 or modp2048",
    ),
    ("ecp521", "ECP-521 is not implemented; use ecp384"),
    ("x448", "Curve448 is not implemented; use x25519"),
    ("curve448", "Curve448 is not implemented; use x25519"),
];

/// Why a proposal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("proposal is empty")]
    Empty,
    #[error("unknown algorithm `{token}`{}", did_you_mean(.suggestion))]
    Unknown {
        token: String,
        suggestion: Option<&'static str>,
    },
    #[error("`{token}` is not supported: {why}")]
    Refused { token: String, why: &'static str },
    #[error("no encryption algorithm (add e.g. aes256gcm16)")]
    NoEncryption,
    #[error("AEAD and non-AEAD ciphers cannot share one proposal (RFC 7296 §3.3); split them into two proposals")]
    MixedAead,
    #[error("`{0}` needs an integrity algorithm (add e.g. sha256)")]
    NoIntegrity(&'static str),
    #[error("an AEAD cipher takes no integrity algorithm in an ESP proposal; remove `{0}`")]
    IntegrityWithAead(&'static str),
    #[error("an AEAD IKE proposal needs a PRF (add e.g. prfsha256)")]
    NoPrf,
    #[error("an IKE proposal needs a Diffie-Hellman group (add e.g. ecp256)")]
    NoDh,
    #[error("`{0}` has no meaning in an {1} proposal")]
    Misplaced(&'static str, &'static str),
}

fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// An IKE SA proposal: every list is non-empty, ciphers are all AEAD or all classic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeProposal {
    pub encryption: Vec<Encryption>,
    /// Empty for AEAD proposals.
    pub integrity: Vec<Integrity>,
    pub prf: Vec<Prf>,
    pub dh: Vec<DhGroup>,
}

/// An ESP (child SA) proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspProposal {
    pub encryption: Vec<Encryption>,
    /// Empty for AEAD proposals.
    pub integrity: Vec<Integrity>,
    /// Groups for PFS on rekey; empty means no PFS.
    pub dh: Vec<DhGroup>,
    pub esn: Vec<Esn>,
}

#[derive(Default)]
struct Lists {
    encryption: Vec<Encryption>,
    integrity: Vec<Integrity>,
    prf: Vec<Prf>,
    dh: Vec<DhGroup>,
    esn: Vec<Esn>,
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn tokenize(text: &str) -> Result<Lists, ProposalError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ProposalError::Empty);
    }
    let mut lists = Lists::default();
    for raw in text.split('-') {
        let token = raw.trim().to_ascii_lowercase();
        if let Some((_, tok)) = KNOWN.iter().find(|(name, _)| *name == token) {
            match *tok {
                Token::Encr(e) => push_unique(&mut lists.encryption, e),
                Token::Integ(i) => push_unique(&mut lists.integrity, i),
                Token::Prf(p) => push_unique(&mut lists.prf, p),
                Token::Dh(d) => push_unique(&mut lists.dh, d),
                Token::Esn(e) => push_unique(&mut lists.esn, e),
            }
        } else if let Some((_, why)) = REFUSED.iter().find(|(name, _)| *name == token) {
            return Err(ProposalError::Refused { token, why });
        } else {
            let suggestion = KNOWN
                .iter()
                .map(|(name, _)| (*name, strsim::damerau_levenshtein(name, &token)))
                .filter(|(_, d)| *d <= 3)
                .min_by_key(|(_, d)| *d)
                .map(|(name, _)| name);
            return Err(ProposalError::Unknown { token, suggestion });
        }
    }
    if lists.encryption.is_empty() {
        return Err(ProposalError::NoEncryption);
    }
    let aead = lists.encryption.iter().filter(|e| e.is_aead()).count();
    if aead != 0 && aead != lists.encryption.len() {
        return Err(ProposalError::MixedAead);
    }
    Ok(lists)
}

impl IkeProposal {
    /// Parses one IKE proposal.
    pub fn parse(text: &str) -> Result<Self, ProposalError> {
        let mut l = tokenize(text)?;
        if let Some(esn) = l.esn.first() {
            let token = if *esn == Esn::Yes { "esn" } else { "noesn" };
            return Err(ProposalError::Misplaced(token, "IKE"));
        }
        let aead = l.encryption.iter().all(|e| e.is_aead());
        if aead {
            // strongSwan reads integrity names in AEAD IKE proposals as PRFs.
            for integ in std::mem::take(&mut l.integrity) {
                push_unique(&mut l.prf, integ.matching_prf());
            }
            if l.prf.is_empty() {
                return Err(ProposalError::NoPrf);
            }
        } else {
            if l.integrity.is_empty() {
                return Err(ProposalError::NoIntegrity(l.encryption[0].token()));
            }
            if l.prf.is_empty() {
                l.prf = l.integrity.iter().map(|i| i.matching_prf()).collect();
            }
        }
        if l.dh.is_empty() {
            return Err(ProposalError::NoDh);
        }
        Ok(IkeProposal {
            encryption: l.encryption,
            integrity: l.integrity,
            prf: l.prf,
            dh: l.dh,
        })
    }
}

impl EspProposal {
    /// Parses one ESP proposal.
    pub fn parse(text: &str) -> Result<Self, ProposalError> {
        let mut l = tokenize(text)?;
        if let Some(prf) = l.prf.first() {
            return Err(ProposalError::Misplaced(prf.token(), "ESP"));
        }
        let aead = l.encryption.iter().all(|e| e.is_aead());
        if aead {
            if let Some(integ) = l.integrity.first() {
                return Err(ProposalError::IntegrityWithAead(integ.token()));
            }
        } else if l.integrity.is_empty() {
            return Err(ProposalError::NoIntegrity(l.encryption[0].token()));
        }
        if l.esn.is_empty() {
            l.esn.push(Esn::No);
        }
        Ok(EspProposal {
            encryption: l.encryption,
            integrity: l.integrity,
            dh: l.dh,
            esn: l.esn,
        })
    }
}

fn join(f: &mut fmt::Formatter<'_>, tokens: impl Iterator<Item = &'static str>) -> fmt::Result {
    let mut first = true;
    for t in tokens {
        if !first {
            f.write_str("-")?;
        }
        first = false;
        f.write_str(t)?;
    }
    Ok(())
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens = self
            .encryption
            .iter()
            .map(|e| e.token())
            .chain(self.integrity.iter().map(|i| i.token()))
            .chain(self.prf.iter().map(|p| p.token()))
            .chain(self.dh.iter().map(|d| d.token()));
        join(f, tokens)
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens = self
            .encryption
            .iter()
            .map(|e| e.token())
            .chain(self.integrity.iter().map(|i| i.token()))
            .chain(self.dh.iter().map(|d| d.token()))
            .chain(self.esn.iter().map(|e| match e {
                Esn::No => "noesn",
                Esn::Yes => "esn",
            }));
        join(f, tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_and_strongswan_suites_parse() {
        for (text, canonical) in [
            (
                "aes256gcm16-prfsha256-ecp256",
                "aes256gcm16-prfsha256-ecp256",
            ),
            (
                "aes256gcm16-prfsha384-ecp384",
                "aes256gcm16-prfsha384-ecp384",
            ),
            (
                "chacha20poly1305-prfsha256-x25519",
                "chacha20poly1305-prfsha256-x25519",
            ),
            ("aes128-sha256-modp2048", "aes128-sha256-prfsha256-modp2048"),
            ("AES256-SHA384-ECP384", "aes256-sha384-prfsha384-ecp384"),
            ("aes256gcm16-sha384-ecp384", "aes256gcm16-prfsha384-ecp384"),
            (
                "aes128gcm16-aes256gcm16-prfsha256-ecp256-modp2048",
                "aes128gcm16-aes256gcm16-prfsha256-ecp256-modp2048",
            ),
        ] {
            let p = IkeProposal::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.to_string(), canonical);
        }
        for (text, canonical) in [
            ("aes256gcm16", "aes256gcm16-noesn"),
            ("chacha20poly1305", "chacha20poly1305-noesn"),
            ("aes128gcm16-modp2048", "aes128gcm16-modp2048-noesn"),
            ("aes128-sha256-esn", "aes128-sha256-esn"),
            ("aes256-sha512-esn-noesn", "aes256-sha512-esn-noesn"),
        ] {
            let p = EspProposal::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.to_string(), canonical);
        }
    }

    #[test]
    fn transform_ids_are_ianas() {
        let p =
            IkeProposal::parse("aes256gcm16-prfsha384-ecp384").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.encryption[0].transform_id(), 20);
        assert_eq!(p.encryption[0].key_bits(), Some(256));
        assert_eq!(p.prf[0].transform_id(), 6);
        assert_eq!(p.dh[0].transform_id(), 20);
        assert_eq!(DhGroup::Curve25519.transform_id(), 31);
        assert_eq!(DhGroup::Modp2048.transform_id(), 14);
        assert_eq!(Integrity::HmacSha256_128.transform_id(), 12);
        assert_eq!(Encryption::ChaCha20Poly1305.transform_id(), 28);
    }

    #[test]
    fn refusals_say_what_to_do() {
        assert_eq!(IkeProposal::parse(""), Err(ProposalError::Empty));
        assert!(matches!(
            IkeProposal::parse("aes256gcm16-prfsha256-ecp265"),
            Err(ProposalError::Unknown {
                suggestion: Some("ecp256"),
                ..
            })
        ));
        assert!(matches!(
            IkeProposal::parse("3des-sha1-modp1024"),
            Err(ProposalError::Refused { .. })
        ));
        assert_eq!(
            IkeProposal::parse("aes256gcm16-ecp256"),
            Err(ProposalError::NoPrf)
        );
        assert_eq!(
            IkeProposal::parse("aes256-ecp256"),
            Err(ProposalError::NoIntegrity("aes256"))
        );
        assert_eq!(
            IkeProposal::parse("aes256gcm16-prfsha256"),
            Err(ProposalError::NoDh)
        );
        assert_eq!(
            IkeProposal::parse("aes256-aes256gcm16-sha256-ecp256"),
            Err(ProposalError::MixedAead)
        );
        assert_eq!(
            IkeProposal::parse("aes256gcm16-prfsha256-ecp256-esn"),
            Err(ProposalError::Misplaced("esn", "IKE"))
        );
        assert_eq!(
            EspProposal::parse("aes256gcm16-sha256"),
            Err(ProposalError::IntegrityWithAead("sha256"))
        );
        assert_eq!(
            EspProposal::parse("aes256gcm16-prfsha256"),
            Err(ProposalError::Misplaced("prfsha256", "ESP"))
        );
        assert_eq!(
            EspProposal::parse("sha256"),
            Err(ProposalError::NoEncryption)
        );
    }
}
