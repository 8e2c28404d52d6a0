//! Mapping SA proposals (RFC 7296 §3.3) onto the suites this crate implements
//! ([`IkeProposal`], [`EspProposal`]) and back, following the acceptance rules of §3.3.6.

use super::sa::{AttributeValue, Proposal, ProtocolId, Transform, TransformType, ATTR_KEY_LENGTH};
use crate::proposal::{DhGroup, Encryption, Esn, EspProposal, IkeProposal, Integrity, Prf};

/// Why a proposal cannot be accepted (RFC 7296 §3.3.6); the responder moves on to the next one
/// and answers NO_PROPOSAL_CHOSEN if none is left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unacceptable {
    #[error("proposal is for protocol {got}, expected {expected}")]
    WrongProtocol {
        expected: ProtocolId,
        got: ProtocolId,
    },
    #[error("an SPI of {0} octets is not valid for this protocol (RFC 7296 §3.3.1)")]
    SpiSize(usize),
    #[error("ESP SPI {0} is reserved (RFC 4303 §2.1)")]
    ReservedSpi(u32),
    #[error("transform type {0} is not understood in a {1} proposal (RFC 7296 §3.3.6)")]
    UnexpectedTransformType(TransformType, &'static str),
    #[error("no supported {0} transform among those offered")]
    NoSupported(TransformType),
    #[error("combined-mode and classic ciphers in one proposal (RFC 7296 §3.3)")]
    MixedAead,
    #[error("an integrity algorithm offered with a combined-mode cipher (RFC 7296 §3.3)")]
    IntegrityWithAead,
}

fn all_encryption() -> [Encryption; 5] {
    [
        Encryption::AesCbc128,
        Encryption::AesCbc256,
        Encryption::AesGcm16_128,
        Encryption::AesGcm16_256,
        Encryption::ChaCha20Poly1305,
    ]
}

fn all_prf() -> [Prf; 3] {
    [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512]
}

fn all_integrity() -> [Integrity; 3] {
    [
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
    ]
}

fn all_dh() -> [DhGroup; 4] {
    [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ]
}

/// The group whose IANA number is `id`, if supported.
pub(crate) fn dh_group(id: u16) -> Option<DhGroup> {
    all_dh().into_iter().find(|g| g.transform_id() == id)
}

impl Transform {
    /// §3.3.6: a transform with an attribute we do not understand is unacceptable. We
    /// understand one TV Key Length, and only on encryption transforms.
    fn attributes_understood(&self) -> bool {
        match self.attributes.as_slice() {
            [] => true,
            [a] => {
                self.kind == TransformType::ENCR
                    && a.kind == ATTR_KEY_LENGTH
                    && matches!(a.value, AttributeValue::Short(_))
            }
            _ => false,
        }
    }

    fn plain_id(&self) -> Option<u16> {
        self.attributes.is_empty().then_some(self.id)
    }

    pub fn encryption(&self) -> Option<Encryption> {
        if self.kind != TransformType::ENCR || !self.attributes_understood() {
            return None;
        }
        let key = self.key_length();
        all_encryption()
            .into_iter()
            .find(|e| e.transform_id() == self.id && e.key_bits() == key)
    }

    pub fn prf(&self) -> Option<Prf> {
        let id = self
            .plain_id()
            .filter(|_| self.kind == TransformType::PRF)?;
        all_prf().into_iter().find(|p| p.transform_id() == id)
    }

    pub fn integrity(&self) -> Option<Integrity> {
        let id = self
            .plain_id()
            .filter(|_| self.kind == TransformType::INTEG)?;
        all_integrity().into_iter().find(|i| i.transform_id() == id)
    }

    pub fn dh(&self) -> Option<DhGroup> {
        let id = self.plain_id().filter(|_| self.kind == TransformType::DH)?;
        dh_group(id)
    }

    pub fn esn(&self) -> Option<Esn> {
        match self
            .plain_id()
            .filter(|_| self.kind == TransformType::ESN)?
        {
            0 => Some(Esn::No),
            1 => Some(Esn::Yes),
            _ => None,
        }
    }

    /// Transform ID 0 (NONE) without attributes.
    fn is_none(&self) -> bool {
        self.plain_id() == Some(0)
    }
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The supported transforms of one proposal, sorted by type.

#[derive(Default)]
struct Supported {
    encryption: Vec<Encryption>,
    prf: Vec<Prf>,
    integrity: Vec<Integrity>,
    /// An INTEG transform other than NONE was offered (supported or not).
    integrity_offered: bool,
    dh: Vec<DhGroup>,
    dh_offered: bool,
    dh_none: bool,
    esn: Vec<Esn>,
}

impl Proposal {
    /// An IKE proposal: ENCR (with Key Length where the cipher has one), PRF, INTEG for
    /// classic ciphers, D-H (§3.3.3). `spi` is empty in IKE_SA_INIT, 8 octets when rekeying.
    pub fn from_ike(number: u8, spi: &[u8], p: &IkeProposal) -> Proposal {
        let mut transforms = Vec::new();
        for e in &p.encryption {
            transforms.push(Transform::new(
                TransformType::ENCR,
                e.transform_id(),
                e.key_bits(),
            ));
        }
        for f in &p.prf {
            transforms.push(Transform::new(TransformType::PRF, f.transform_id(), None));
        }
        for i in &p.integrity {
            transforms.push(Transform::new(TransformType::INTEG, i.transform_id(), None));
        }
        for g in &p.dh {
            transforms.push(Transform::new(TransformType::DH, g.transform_id(), None));
        }
        Proposal {
            number,
            protocol: ProtocolId::IKE,
            spi: spi.to_vec(),
            transforms,
        }
    }

    /// An ESP proposal with our inbound SPI: ENCR, INTEG for classic ciphers, D-H for PFS,
    /// ESN (§3.3.3).
    pub fn from_esp(number: u8, spi: u32, p: &EspProposal) -> Proposal {
        let mut transforms = Vec::new();
        for e in &p.encryption {
            transforms.push(Transform::new(
                TransformType::ENCR,
                e.transform_id(),
                e.key_bits(),
            ));
        }
        for i in &p.integrity {
            transforms.push(Transform::new(TransformType::INTEG, i.transform_id(), None));
        }
        for g in &p.dh {
            transforms.push(Transform::new(TransformType::DH, g.transform_id(), None));
        }
        for e in &p.esn {
            let id = match e {
                Esn::No => 0,
                Esn::Yes => 1,
            };
            transforms.push(Transform::new(TransformType::ESN, id, None));
        }
        Proposal {
            number,
            protocol: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }

    /// The 4-octet SPI of an ESP or AH proposal.
    pub fn child_spi(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.spi.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    fn supported(&self, protocol: &'static str) -> Result<Supported, Unacceptable> {
        let mut s = Supported::default();
        for t in &self.transforms {
            match t.kind {
                TransformType::ENCR => {
                    if let Some(e) = t.encryption() {
                        push_unique(&mut s.encryption, e);
                    }
                }
                TransformType::PRF if protocol == "IKE" => {
                    if let Some(p) = t.prf() {
                        push_unique(&mut s.prf, p);
                    }
                }
                TransformType::INTEG => {
                    if !t.is_none() {
                        s.integrity_offered = true;
                    }
                    if let Some(i) = t.integrity() {
                        push_unique(&mut s.integrity, i);
                    }
                }
                TransformType::DH => {
                    if t.is_none() {
                        s.dh_none = true;
                    } else {
                        s.dh_offered = true;
                    }
                    if let Some(g) = t.dh() {
                        push_unique(&mut s.dh, g);
                    }
                }
                TransformType::ESN if protocol == "ESP" => {
                    if let Some(e) = t.esn() {
                        push_unique(&mut s.esn, e);
                    }
                }
                other => return Err(Unacceptable::UnexpectedTransformType(other, protocol)),
            }
        }
        if s.encryption.is_empty() {
            return Err(Unacceptable::NoSupported(TransformType::ENCR));
        }
        let aead = s.encryption.iter().filter(|e| e.is_aead()).count();
        if aead == s.encryption.len() {
            // §3.3: with a combined-mode cipher, no integrity algorithm or only NONE.
            if s.integrity_offered {
                return Err(Unacceptable::IntegrityWithAead);
            }
        } else if aead != 0 {
            return Err(Unacceptable::MixedAead);
        } else if s.integrity.is_empty() {
            return Err(Unacceptable::NoSupported(TransformType::INTEG));
        }
        Ok(s)
    }

    /// The IKE SA proposal with the transforms we support (RFC 7296 §3.3.3: ENCR, PRF, INTEG
    /// unless the cipher is combined-mode, and D-H are mandatory; unknown transform IDs are
    /// skipped, an unknown transform type makes the proposal unacceptable, §3.3.6).
    pub fn to_ike(&self) -> Result<IkeProposal, Unacceptable> {
        if self.protocol != ProtocolId::IKE {
            return Err(Unacceptable::WrongProtocol {
                expected: ProtocolId::IKE,
                got: self.protocol,
            });
        }
        if !(self.spi.is_empty() || self.spi.len() == 8) {
            return Err(Unacceptable::SpiSize(self.spi.len()));
        }
        let s = self.supported("IKE")?;
        if s.prf.is_empty() {
            return Err(Unacceptable::NoSupported(TransformType::PRF));
        }
        if s.dh.is_empty() {
            return Err(Unacceptable::NoSupported(TransformType::DH));
        }
        Ok(IkeProposal {
            encryption: s.encryption,
            integrity: s.integrity,
            prf: s.prf,
            dh: s.dh,
        })
    }

    /// The ESP proposal with the transforms we support (§3.3.3: ENCR and ESN mandatory, INTEG
    /// unless combined-mode, D-H optional). A D-H list of only NONE means no PFS; NONE next to
    /// real groups is dropped, so accepting it means PFS.
    pub fn to_esp(&self) -> Result<EspProposal, Unacceptable> {
        if self.protocol != ProtocolId::ESP {
            return Err(Unacceptable::WrongProtocol {
                expected: ProtocolId::ESP,
                got: self.protocol,
            });
        }
        match self.child_spi() {
            None => return Err(Unacceptable::SpiSize(self.spi.len())),
            Some(spi) if spi < 256 => return Err(Unacceptable::ReservedSpi(spi)),
            Some(_) => {}
        }
        let s = self.supported("ESP")?;
        if s.dh_offered && s.dh.is_empty() && !s.dh_none {
            return Err(Unacceptable::NoSupported(TransformType::DH));
        }
        if s.esn.is_empty() {
            return Err(Unacceptable::NoSupported(TransformType::ESN));
        }
        Ok(EspProposal {
            encryption: s.encryption,
            integrity: s.integrity,
            dh: s.dh,
            esn: s.esn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{SaPayload, TransformAttribute};

    fn ike(text: &str) -> IkeProposal {
        IkeProposal::parse(text).unwrap()
    }

    fn esp(text: &str) -> EspProposal {
        EspProposal::parse(text).unwrap()
    }

    #[test]
    fn round_trips_ike_and_esp_proposals() {
        for text in [
            "aes256gcm16-prfsha256-ecp256",
            "aes128-aes256-sha256-sha384-prfsha256-modp2048-x25519",
            "chacha20poly1305-prfsha512-ecp384",
        ] {
            let p = Proposal::from_ike(1, &[1, 2, 3, 4, 5, 6, 7, 8], &ike(text));
            let sa = SaPayload {
                proposals: vec![p.clone(), Proposal { number: 2, ..p }],
            };
            let mut out = Vec::new();
            sa.emit(&mut out).unwrap();
            let parsed = SaPayload::parse(&out).unwrap();
            assert_eq!(parsed, sa);
            assert_eq!(parsed.proposals[0].to_ike().unwrap(), ike(text), "{text}");
        }
        for text in [
            "aes256gcm16",
            "aes128-sha256-esn",
            "aes256gcm16-ecp256-esn-noesn",
        ] {
            let p = Proposal::from_esp(1, 0xc001_d00d, &esp(text));
            let mut out = Vec::new();
            SaPayload {
                proposals: vec![p.clone()],
            }
            .emit(&mut out)
            .unwrap();
            let parsed = SaPayload::parse(&out).unwrap();
            assert_eq!(parsed.proposals[0], p);
            assert_eq!(parsed.proposals[0].child_spi(), Some(0xc001_d00d));
            assert_eq!(parsed.proposals[0].to_esp().unwrap(), esp(text), "{text}");
        }
    }

    #[test]
    fn unknown_transforms_are_kept_and_skipped() {
        let mut p = Proposal::from_ike(1, &[], &ike("aes256gcm16-prfsha256-ecp256"));
        // 3DES (3), AES-GCM-16 with a 192-bit key, PRF-HMAC-SHA1 (2), MODP-1024 (2), and an
        // encryption transform with an unknown TLV attribute: all unsupported, all kept.
        p.transforms
            .insert(0, Transform::new(TransformType::ENCR, 3, None));
        p.transforms
            .push(Transform::new(TransformType::ENCR, 20, Some(192)));
        p.transforms
            .push(Transform::new(TransformType::PRF, 2, None));
        p.transforms
            .push(Transform::new(TransformType::DH, 2, None));
        let mut odd = Transform::new(TransformType::ENCR, 12, Some(128));
        odd.attributes.push(TransformAttribute {
            kind: 99,
            value: AttributeValue::Long(vec![1, 2, 3]),
        });
        p.transforms.push(odd);
        let mut out = Vec::new();
        SaPayload {
            proposals: vec![p.clone()],
        }
        .emit(&mut out)
        .unwrap();
        let parsed = SaPayload::parse(&out).unwrap();
        assert_eq!(parsed.proposals[0], p);
        assert_eq!(
            parsed.proposals[0].to_ike().unwrap(),
            ike("aes256gcm16-prfsha256-ecp256")
        );
    }

    #[test]
    fn unacceptable_proposals_say_why() {
        let only_3des = Proposal {
            number: 1,
            protocol: ProtocolId::IKE,
            spi: vec![],
            transforms: vec![
                Transform::new(TransformType::ENCR, 3, None),
                Transform::new(TransformType::PRF, 5, None),
                Transform::new(TransformType::INTEG, 12, None),
                Transform::new(TransformType::DH, 19, None),
            ],
        };
        assert_eq!(
            only_3des.to_ike(),
            Err(Unacceptable::NoSupported(TransformType::ENCR))
        );
        let mut addke = Proposal::from_ike(1, &[], &ike("aes256gcm16-prfsha256-ecp256"));
        addke
            .transforms
            .push(Transform::new(TransformType(6), 0, None));
        assert_eq!(
            addke.to_ike(),
            Err(Unacceptable::UnexpectedTransformType(
                TransformType(6),
                "IKE"
            ))
        );
        let mut gcm_integ = Proposal::from_ike(1, &[], &ike("aes256gcm16-prfsha256-ecp256"));
        gcm_integ
            .transforms
            .push(Transform::new(TransformType::INTEG, 12, None));
        assert_eq!(gcm_integ.to_ike(), Err(Unacceptable::IntegrityWithAead));
        let mut gcm_none = Proposal::from_ike(1, &[], &ike("aes256gcm16-prfsha256-ecp256"));
        gcm_none
            .transforms
            .push(Transform::new(TransformType::INTEG, 0, None));
        assert!(gcm_none.to_ike().is_ok());
        let mut mixed = Proposal::from_ike(1, &[], &ike("aes256-sha256-ecp256"));
        mixed
            .transforms
            .push(Transform::new(TransformType::ENCR, 20, Some(128)));
        assert_eq!(mixed.to_ike(), Err(Unacceptable::MixedAead));
        let esp_p = Proposal::from_esp(1, 0x1000, &esp("aes256gcm16"));
        assert!(matches!(
            esp_p.to_ike(),
            Err(Unacceptable::WrongProtocol { .. })
        ));
        let reserved = Proposal::from_esp(1, 255, &esp("aes256gcm16"));
        assert_eq!(reserved.to_esp(), Err(Unacceptable::ReservedSpi(255)));
        let mut no_esn = Proposal::from_esp(1, 0x1000, &esp("aes256gcm16"));
        no_esn.transforms.retain(|t| t.kind != TransformType::ESN);
        assert_eq!(
            no_esn.to_esp(),
            Err(Unacceptable::NoSupported(TransformType::ESN))
        );
        let mut pfs_unknown = Proposal::from_esp(1, 0x1000, &esp("aes256gcm16"));
        pfs_unknown
            .transforms
            .push(Transform::new(TransformType::DH, 2, None));
        assert_eq!(
            pfs_unknown.to_esp(),
            Err(Unacceptable::NoSupported(TransformType::DH))
        );
        let mut pfs_optional = pfs_unknown.clone();
        pfs_optional
            .transforms
            .push(Transform::new(TransformType::DH, 0, None));
        assert_eq!(pfs_optional.to_esp().unwrap().dh, vec![]);
        let mut prf_in_esp = Proposal::from_esp(1, 0x1000, &esp("aes256gcm16"));
        prf_in_esp
            .transforms
            .push(Transform::new(TransformType::PRF, 5, None));
        assert!(matches!(
            prf_in_esp.to_esp(),
            Err(Unacceptable::UnexpectedTransformType(
                TransformType::PRF,
                "ESP"
            ))
        ));
    }
}
