//! Whole IKE messages: typed payloads, the parser and the builder (RFC 7296 §3).

use super::payload::emit_payload;
use super::{
    AuthPayload, CertPayload, DeletePayload, EncryptedFragment, EncryptedPayload, Header,
    HeaderRepr, IdPayload, KePayload, NoncePayload, NotifyPayload, PayloadIter, PayloadType,
    RawPayload, SaPayload, TsPayload, WireError, HEADER_LEN,
};

/// One typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(SaPayload),
    Ke(KePayload),
    IdInitiator(IdPayload),
    IdResponder(IdPayload),
    Cert(CertPayload),
    CertReq(CertPayload),
    Auth(AuthPayload),
    Nonce(NoncePayload),
    Notify(NotifyPayload),
    Delete(DeletePayload),
    /// Vendor ID (§3.12): opaque.
    VendorId(Vec<u8>),
    TsInitiator(TsPayload),
    TsResponder(TsPayload),
    /// SK (§3.14); must be the last payload.
    Encrypted(EncryptedPayload),
    /// SKF (RFC 7383 §2.5); must be the last payload.
    EncryptedFragment(EncryptedFragment),
    /// Configuration (§3.15), not interpreted yet.
    Config(Vec<u8>),
    /// EAP (§3.16), not interpreted.
    Eap(Vec<u8>),
}

impl Payload {
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdInitiator(_) => PayloadType::IDI,
            Payload::IdResponder(_) => PayloadType::IDR,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsInitiator(_) => PayloadType::TSI,
            Payload::TsResponder(_) => PayloadType::TSR,
            Payload::Encrypted(_) => PayloadType::SK,
            Payload::EncryptedFragment(_) => PayloadType::SKF,
            Payload::Config(_) => PayloadType::CP,
            Payload::Eap(_) => PayloadType::EAP,
        }
    }

    /// Parses a payload the chain walker found.
    pub fn parse(raw: &RawPayload<'_>) -> Result<Payload, WireError> {
        let body = raw.body;
        Ok(match raw.kind {
            PayloadType::SA => Payload::Sa(SaPayload::parse(body)?),
            PayloadType::KE => Payload::Ke(KePayload::parse(body)?),
            PayloadType::IDI => Payload::IdInitiator(IdPayload::parse(body)?),
            PayloadType::IDR => Payload::IdResponder(IdPayload::parse(body)?),
            PayloadType::CERT => Payload::Cert(CertPayload::parse(body)?),
            PayloadType::CERTREQ => Payload::CertReq(CertPayload::parse(body)?),
            PayloadType::AUTH => Payload::Auth(AuthPayload::parse(body)?),
            PayloadType::NONCE => Payload::Nonce(NoncePayload::parse(body)?),
            PayloadType::NOTIFY => Payload::Notify(NotifyPayload::parse(body)?),
            PayloadType::DELETE => Payload::Delete(DeletePayload::parse(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsInitiator(TsPayload::parse(body)?),
            PayloadType::TSR => Payload::TsResponder(TsPayload::parse(body)?),
            PayloadType::SK => Payload::Encrypted(EncryptedPayload {
                first_inner: raw.next,
                body: body.to_vec(),
            }),
            PayloadType::SKF => {
                Payload::EncryptedFragment(EncryptedFragment::parse(raw.next, body)?)
            }
            PayloadType::CP => Payload::Config(body.to_vec()),
            PayloadType::EAP => Payload::Eap(body.to_vec()),
            other => {
                return Err(WireError::Invalid {
                    what: "payload",
                    why: if other == PayloadType::NONE {
                        "type 0 names no payload"
                    } else {
                        "unknown payload type"
                    },
                })
            }
        })
    }

    /// Appends this payload's body (without the generic header).
    pub fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Payload::Sa(p) => p.emit(out),
            Payload::Ke(p) => p.emit(out),
            Payload::IdInitiator(p) | Payload::IdResponder(p) => p.emit(out),
            Payload::Cert(p) | Payload::CertReq(p) => p.emit(out),
            Payload::Auth(p) => p.emit(out),
            Payload::Nonce(p) => p.emit(out),
            Payload::Notify(p) => p.emit(out),
            Payload::Delete(p) => p.emit(out),
            Payload::TsInitiator(p) | Payload::TsResponder(p) => p.emit(out),
            Payload::Encrypted(p) => {
                out.extend_from_slice(&p.body);
                Ok(())
            }
            Payload::EncryptedFragment(p) => p.emit(out),
            Payload::VendorId(data) | Payload::Config(data) | Payload::Eap(data) => {
                out.extend_from_slice(data);
                Ok(())
            }
        }
    }
}

/// Parses a payload chain starting with type `first`: the payloads after an IKE header, or
/// the decrypted inner payloads of an SK payload (after [`super::SkFraming::strip_padding`]).
/// Returns the payloads and the unknown non-critical types that were skipped.
pub fn parse_payloads(
    first: PayloadType,
    data: &[u8],
) -> Result<(Vec<Payload>, Vec<PayloadType>), WireError> {
    let mut iter = PayloadIter::new(first, data);
    let mut payloads = Vec::new();
    for raw in iter.by_ref() {
        payloads.push(Payload::parse(&raw?)?);
    }
    Ok((payloads, iter.skipped().to_vec()))
}

/// Appends a payload chain with its Next Payload links and lengths (§3.2) and returns the
/// type of the first payload, for the IKE header or the SK payload.
pub fn emit_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> Result<PayloadType, WireError> {
    let mut body = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let following = payloads.get(i + 1).map(Payload::payload_type);
        let next = match p {
            // §3.14: SK is last, and its Next Payload names the first inner payload.
            Payload::Encrypted(_) | Payload::EncryptedFragment(_) if following.is_some() => {
                return Err(WireError::Invalid {
                    what: "Encrypted payload",
                    why: "it must be the last payload of the message (RFC 7296 §3.14)",
                })
            }
            Payload::Encrypted(sk) => sk.first_inner,
            Payload::EncryptedFragment(skf) => skf.first_inner,
            _ => following.unwrap_or(PayloadType::NONE),
        };
        body.clear();
        p.emit_body(&mut body)?;
        emit_payload(out, next, &body)?;
    }
    Ok(payloads
        .first()
        .map_or(PayloadType::NONE, Payload::payload_type))
}

/// A parsed unencrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: HeaderRepr,
    pub payloads: Vec<Payload>,
    /// Unknown non-critical payload types that were skipped (§2.5), for logging.
    pub skipped: Vec<PayloadType>,
}

impl Message {
    /// Parses a whole datagram (without the non-ESP marker).
    pub fn parse(datagram: &[u8]) -> Result<Message, WireError> {
        let header = Header::new_checked(datagram)?;
        let repr = HeaderRepr::parse(&header)?;
        let (payloads, skipped) = parse_payloads(repr.next_payload, header.payloads())?;
        Ok(Message {
            header: repr,
            payloads,
            skipped,
        })
    }
}

/// Emits a message: the header with Next Payload and Length filled in, then the payloads.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    header: HeaderRepr,
    payloads: Vec<Payload>,
}

impl MessageBuilder {
    /// `header`'s `next_payload` and `length` are ignored and computed.
    pub fn new(header: HeaderRepr) -> MessageBuilder {
        MessageBuilder {
            header,
            payloads: Vec::new(),
        }
    }

    #[must_use]
    pub fn payload(mut self, payload: Payload) -> MessageBuilder {
        self.payloads.push(payload);
        self
    }

    #[must_use]
    pub fn payloads(mut self, payloads: impl IntoIterator<Item = Payload>) -> MessageBuilder {
        self.payloads.extend(payloads);
        self
    }

    pub fn build(&self) -> Result<Vec<u8>, WireError> {
        let mut chain = Vec::new();
        let first = emit_payloads(&self.payloads, &mut chain)?;
        let total = HEADER_LEN + chain.len();
        let mut header = self.header;
        header.next_payload = first;
        header.length = u32::try_from(total).map_err(|_| WireError::TooLong {
            what: "IKE message",
            length: total,
            max: u32::MAX as usize,
        })?;
        let mut out = Vec::with_capacity(total);
        header.emit(&mut out);
        out.extend_from_slice(&chain);
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::{
        AddressRange, AuthMethod, CertEncoding, ExchangeType, Flags, NotifyType, Proposal,
        ProtocolId, TrafficSelector,
    };
    use crate::{EspProposal, Identity, IkeProposal};

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn sa_init_header() -> HeaderRepr {
        HeaderRepr {
            initiator_spi: 0x0102_0304_0506_0708,
            responder_spi: 0,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags {
                initiator: true,
                ..Flags::default()
            },
            message_id: 0,
            length: 0,
        }
    }

    fn sa_init_payloads() -> Vec<Payload> {
        let ike = IkeProposal::parse("aes256gcm16-prfsha256-ecp256").unwrap();
        vec![
            Payload::Sa(SaPayload {
                proposals: vec![Proposal::from_ike(1, &[], &ike)],
            }),
            Payload::Ke(KePayload {
                group: 19,
                data: (0..64).collect(),
            }),
            Payload::Nonce(NoncePayload {
                data: (0x80..0xa0).collect(),
            }),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                vec![0x11; 20],
            )),
            Payload::Notify(NotifyPayload::new(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                vec![0x22; 20],
            )),
            Payload::Notify(NotifyPayload::new(
                NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )),
            Payload::Notify(NotifyPayload::new(
                NotifyType::SIGNATURE_HASH_ALGORITHMS,
                vec![0, 2, 0, 3, 0, 4],
            )),
        ]
    }

    /// An IKE_SA_INIT request written octet by octet from RFC 7296 §3.1-§3.10 (and RFC 7383
    /// §2.3, RFC 7427 §4 for the last two notifies).
    fn sa_init_bytes() -> Vec<u8> {
        let mut b = hex(
            "0102030405060708 0000000000000000 \
             21 20 22 08 00000000 000000fe", // SA next, v2.0, IKE_SA_INIT, I, msgid 0, len 254
        );
        b.extend(hex("22 00 0028 \
             00 00 0024 01 01 00 03 \
             03 00 000c 01 00 0014 800e 0100 \
             03 00 0008 02 00 0005 \
             00 00 0008 04 00 0013")); // SA → KE: proposal 1, IKE, ENCR_AES_GCM_16/256, PRF_HMAC_SHA2_256, group 19
        b.extend(hex("28 00 0048 0013 0000")); // KE → Nonce: group 19, 64 octets
        b.extend(0..64u8);
        b.extend(hex("29 00 0024")); // Nonce → N, 32 octets
        b.extend(0x80..0xa0u8);
        b.extend(hex("29 00 001c 00 00 4004")); // N(NAT_DETECTION_SOURCE_IP) → N
        b.extend([0x11; 20]);
        b.extend(hex("29 00 001c 00 00 4005")); // N(NAT_DETECTION_DESTINATION_IP) → N
        b.extend([0x22; 20]);
        b.extend(hex("29 00 0008 00 00 402e")); // N(IKEV2_FRAGMENTATION_SUPPORTED) → N
        b.extend(hex("00 00 000e 00 00 402f 0002 0003 0004")); // N(SIGNATURE_HASH_ALGORITHMS)
        b
    }

    fn auth_payloads() -> Vec<Payload> {
        let esp = EspProposal::parse("aes256gcm16-esn").unwrap();
        let any4 = TrafficSelector::new(AddressRange::V4 {
            start: [0, 0, 0, 0].into(),
            end: [255, 255, 255, 255].into(),
        });
        let ts = TsPayload::new(vec![
            TrafficSelector {
                protocol: 17,
                start_port: 53,
                end_port: 53,
                ..any4
            },
            TrafficSelector::new(
                AddressRange::from_prefix("2001:db8::".parse().unwrap(), 48).unwrap(),
            ),
        ]);
        vec![
            Payload::IdInitiator(
                IdPayload::from_identity(&Identity::parse("CN=client, O=Example").unwrap())
                    .unwrap(),
            ),
            Payload::Cert(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0x30, 0x03, 0x02, 0x01, 0x05],
            }),
            Payload::CertReq(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0xab; 20],
            }),
            Payload::IdResponder(
                IdPayload::from_identity(&Identity::parse("vpn.example.com").unwrap()).unwrap(),
            ),
            Payload::Auth(AuthPayload {
                method: AuthMethod::DIGITAL_SIGNATURE,
                data: vec![0x5a; 40],
            }),
            Payload::Notify(NotifyPayload::new(NotifyType::INITIAL_CONTACT, vec![])),
            Payload::Config(vec![1, 0, 0, 0, 0, 1, 0, 0]),
            Payload::Sa(SaPayload {
                proposals: vec![Proposal::from_esp(1, 0xc0ff_ee01, &esp)],
            }),
            Payload::TsInitiator(ts.clone()),
            Payload::TsResponder(TsPayload::new(vec![any4])),
            Payload::Delete(DeletePayload::Child {
                protocol: ProtocolId::ESP,
                spis: vec![0x1234_5678],
            }),
            Payload::Delete(DeletePayload::Ike),
            Payload::VendorId(b"attestgate".to_vec()),
            Payload::Eap(vec![1, 2, 0, 5, 1]),
            Payload::Encrypted(EncryptedPayload {
                first_inner: PayloadType::IDI,
                body: vec![0xee; 8 + 16 + 16],
            }),
        ]
    }

    /// Valid messages covering every payload type, for the truncation and fuzz tests.
    pub(crate) fn sample_messages() -> Vec<Vec<u8>> {
        let auth_header = HeaderRepr {
            exchange_type: ExchangeType::IKE_AUTH,
            message_id: 1,
            responder_spi: 0x1111_2222_3333_4444,
            ..sa_init_header()
        };
        let fragment = EncryptedFragment {
            first_inner: PayloadType::IDI,
            number: 1,
            total: 2,
            body: vec![0xdd; 8 + 4 + 16],
        };
        vec![
            sa_init_bytes(),
            MessageBuilder::new(auth_header)
                .payloads(auth_payloads())
                .build()
                .unwrap(),
            MessageBuilder::new(auth_header)
                .payload(Payload::EncryptedFragment(fragment))
                .build()
                .unwrap(),
        ]
    }

    #[test]
    fn hand_built_ike_sa_init_matches_the_builder_and_parser() {
        let expected = sa_init_bytes();
        assert_eq!(expected.len(), 254);
        let built = MessageBuilder::new(sa_init_header())
            .payloads(sa_init_payloads())
            .build()
            .unwrap();
        assert_eq!(built, expected);

        let parsed = Message::parse(&expected).unwrap();
        assert_eq!(parsed.header.initiator_spi, 0x0102_0304_0506_0708);
        assert_eq!(parsed.header.responder_spi, 0);
        assert_eq!(parsed.header.next_payload, PayloadType::SA);
        assert_eq!(parsed.header.exchange_type, ExchangeType::IKE_SA_INIT);
        assert!(parsed.header.flags.initiator && !parsed.header.flags.response);
        assert_eq!(parsed.header.length, 254);
        assert_eq!(parsed.payloads, sa_init_payloads());
        assert!(parsed.skipped.is_empty());
        match &parsed.payloads[0] {
            Payload::Sa(sa) => assert_eq!(
                sa.proposals[0].to_ike().unwrap().to_string(),
                "aes256gcm16-prfsha256-ecp256"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_payload_round_trips() {
        let header = HeaderRepr {
            exchange_type: ExchangeType::IKE_AUTH,
            ..sa_init_header()
        };
        let payloads = auth_payloads();
        let bytes = MessageBuilder::new(header)
            .payloads(payloads.clone())
            .build()
            .unwrap();
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed.payloads, payloads);
        // Each payload alone, too.
        for p in payloads.into_iter().chain(sa_init_payloads()) {
            let bytes = MessageBuilder::new(header)
                .payload(p.clone())
                .build()
                .unwrap();
            assert_eq!(Message::parse(&bytes).unwrap().payloads, vec![p]);
        }
        // An empty message (an INFORMATIONAL liveness check carries an empty SK, but the
        // framing allows no payload at all).
        let empty = MessageBuilder::new(header).build().unwrap();
        assert_eq!(empty.len(), HEADER_LEN);
        assert!(Message::parse(&empty).unwrap().payloads.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in sample_messages() {
            assert!(Message::parse(&message).is_ok());
            for cut in 0..message.len() {
                assert!(Message::parse(&message[..cut]).is_err(), "cut {cut}");
                // With the header length rewritten to match, the payload chain must catch it.
                if cut >= HEADER_LEN {
                    let mut lying = message[..cut].to_vec();
                    lying[24..28].copy_from_slice(&(cut as u32).to_be_bytes());
                    assert!(Message::parse(&lying).is_err(), "fixed-up cut {cut}");
                }
            }
        }
    }

    #[test]
    fn lengths_that_lie() {
        let good = sa_init_bytes();
        // Header length larger and smaller than the datagram.
        let mut long = good.clone();
        long[27] = 0xff;
        assert!(matches!(
            Message::parse(&long),
            Err(WireError::LengthMismatch {
                header: 255,
                actual: 254
            })
        ));
        let mut short = good.clone();
        short[27] = 0xfd;
        assert!(matches!(
            Message::parse(&short),
            Err(WireError::LengthMismatch { .. })
        ));
        // The last payload claims one octet more than the buffer has.
        let mut past = good.clone();
        let last = good.len() - 14;
        past[last + 3] = 15;
        assert!(matches!(
            Message::parse(&past),
            Err(WireError::Truncated { .. })
        ));
        // The first payload's length is below 4.
        for bad in 0..4 {
            let mut tiny = good.clone();
            tiny[30] = 0;
            tiny[31] = bad;
            assert!(matches!(
                Message::parse(&tiny),
                Err(WireError::LengthTooSmall { .. })
            ));
        }
        // A payload length one short desynchronises the chain: still an error, no panic.
        let mut desync = good.clone();
        desync[31] -= 1;
        assert!(Message::parse(&desync).is_err());
    }

    fn with_unknown_payload(flags: u8) -> Vec<u8> {
        let good = sa_init_bytes();
        let mut b = good[..HEADER_LEN].to_vec();
        b[16] = 200; // first payload: unknown type 200
        b.extend_from_slice(&[33, flags, 0, 8, 0xde, 0xad, 0xbe, 0xef]); // → SA
        b.extend_from_slice(&good[HEADER_LEN..]);
        let len = b.len() as u32;
        b[24..28].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn critical_bit_behaviour() {
        let skipped = Message::parse(&with_unknown_payload(0x00)).unwrap();
        assert_eq!(skipped.payloads, sa_init_payloads());
        assert_eq!(skipped.skipped, vec![PayloadType(200)]);
        let err = Message::parse(&with_unknown_payload(0x80)).unwrap_err();
        assert_eq!(err, WireError::UnsupportedCriticalPayload(200));
        assert_eq!(
            err.notify_type(),
            Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        );
        assert_eq!(err.notify_data(), vec![200]);
    }

    #[test]
    fn encrypted_payload_must_be_last_when_building() {
        let mut payloads = auth_payloads();
        payloads.rotate_right(1); // SK first
        assert!(MessageBuilder::new(sa_init_header())
            .payloads(payloads)
            .build()
            .is_err());
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let big = Payload::VendorId(vec![0; 70_000]);
        assert!(matches!(
            MessageBuilder::new(sa_init_header()).payload(big).build(),
            Err(WireError::TooLong { .. })
        ));
    }
}
