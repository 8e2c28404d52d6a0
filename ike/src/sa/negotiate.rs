//! Choosing among proposals (RFC 7296 §2.7, §3.3), narrowing traffic selectors (§2.9), NAT
//! detection hashes (§2.23) and the shared-key AUTH value (§2.15).

use crate::crypto::prf::{prf, prf_parts};
use crate::proposal::{DhGroup, EspProposal, IkeProposal};
use crate::wire::{AddressRange, Proposal, TrafficSelector};
use std::net::{IpAddr, SocketAddr};

fn first_common<T: Copy + PartialEq>(theirs: &[T], ours: &[T]) -> Option<T> {
    theirs.iter().copied().find(|t| ours.contains(t))
}

/// The IKE proposal a responder picks: the first of the peer's proposals for which one of
/// ours has a common algorithm of every type; within it the peer's preferred algorithms.
/// Returns the peer's proposal number and the single-transform proposal, with every D-H group
/// both sides accept (the KE payload decides which one is used).
pub(crate) fn choose_ike(
    peer: &[Proposal],
    ours: &[IkeProposal],
) -> Option<(u8, IkeProposal, Vec<DhGroup>)> {
    for p in peer {
        let Ok(theirs) = p.to_ike() else { continue };
        for q in ours {
            let (Some(e), Some(prf), Some(_)) = (
                first_common(&theirs.encryption, &q.encryption),
                first_common(&theirs.prf, &q.prf),
                first_common(&theirs.dh, &q.dh),
            ) else {
                continue;
            };
            let integrity = match (theirs.integrity.is_empty(), q.integrity.is_empty()) {
                (true, true) => vec![],
                (false, false) => match first_common(&theirs.integrity, &q.integrity) {
                    Some(i) => vec![i],
                    None => continue,
                },
                _ => continue,
            };
            let groups: Vec<DhGroup> = theirs
                .dh
                .iter()
                .copied()
                .filter(|g| q.dh.contains(g))
                .collect();
            let chosen = IkeProposal {
                encryption: vec![e],
                integrity,
                prf: vec![prf],
                dh: vec![groups[0]],
            };
            return Some((p.number, chosen, groups));
        }
    }
    None
}

/// True when `chosen` (one transform of each type) is something we offered in one proposal.
pub(crate) fn ike_acceptable(chosen: &IkeProposal, ours: &[IkeProposal]) -> bool {
    let single = chosen.encryption.len() == 1
        && chosen.prf.len() == 1
        && chosen.dh.len() == 1
        && chosen.integrity.len() <= 1;
    single
        && ours.iter().any(|q| {
            q.encryption.contains(&chosen.encryption[0])
                && q.prf.contains(&chosen.prf[0])
                && q.dh.contains(&chosen.dh[0])
                && chosen.integrity.iter().all(|i| q.integrity.contains(i))
                && chosen.integrity.is_empty() == q.integrity.is_empty()
        })
}

/// The ESP proposal a responder picks, with the peer's SPI. `pfs_group` is the D-H group of
/// the exchange if it carries a KE payload (CREATE_CHILD_SA); in IKE_AUTH there is none and a
/// proposal's groups are ignored (§1.2: the first child SA's keys come from the IKE SA).
pub(crate) fn choose_esp(
    peer: &[Proposal],
    ours: &[EspProposal],
    pfs_group: Option<DhGroup>,
) -> Option<(u8, u32, EspProposal)> {
    for p in peer {
        let (Ok(theirs), Some(spi)) = (p.to_esp(), p.child_spi()) else {
            continue;
        };
        for q in ours {
            let Some(e) = first_common(&theirs.encryption, &q.encryption) else {
                continue;
            };
            let integrity = match (theirs.integrity.is_empty(), q.integrity.is_empty()) {
                (true, true) => vec![],
                (false, false) => match first_common(&theirs.integrity, &q.integrity) {
                    Some(i) => vec![i],
                    None => continue,
                },
                _ => continue,
            };
            let Some(esn) = first_common(&theirs.esn, &q.esn) else {
                continue;
            };
            let dh = match pfs_group {
                Some(g) if theirs.dh.contains(&g) && q.dh.contains(&g) => vec![g],
                Some(_) => continue,
                None => vec![],
            };
            return Some((
                p.number,
                spi,
                EspProposal {
                    encryption: vec![e],
                    integrity,
                    dh,
                    esn: vec![esn],
                },
            ));
        }
    }
    None
}

/// True when the responder's single-transform ESP choice is something we offered.
pub(crate) fn esp_acceptable(chosen: &EspProposal, ours: &[EspProposal]) -> bool {
    chosen.encryption.len() == 1
        && chosen.esn.len() == 1
        && ours.iter().any(|q| {
            q.encryption.contains(&chosen.encryption[0])
                && chosen.integrity.iter().all(|i| q.integrity.contains(i))
                && chosen.integrity.is_empty() == q.integrity.is_empty()
                && q.esn.contains(&chosen.esn[0])
        })
}

fn range_intersect(a: &AddressRange, b: &AddressRange) -> Option<AddressRange> {
    match (a, b) {
        (AddressRange::V4 { start: s1, end: e1 }, AddressRange::V4 { start: s2, end: e2 }) => {
            let (start, end) = ((*s1).max(*s2), (*e1).min(*e2));
            (start <= end).then_some(AddressRange::V4 { start, end })
        }
        (AddressRange::V6 { start: s1, end: e1 }, AddressRange::V6 { start: s2, end: e2 }) => {
            let (start, end) = ((*s1).max(*s2), (*e1).min(*e2));
            (start <= end).then_some(AddressRange::V6 { start, end })
        }
        _ => None,
    }
}

fn selector_intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let protocol = match (a.protocol, b.protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    if a.opaque_ports() || b.opaque_ports() {
        return None;
    }
    let (start_port, end_port) = (a.start_port.max(b.start_port), a.end_port.min(b.end_port));
    if start_port > end_port {
        return None;
    }
    Some(TrafficSelector {
        protocol,
        start_port,
        end_port,
        addresses: range_intersect(&a.addresses, &b.addresses)?,
    })
}

/// Narrows what the peer proposed to what we allow (§2.9): every non-empty intersection of one
/// of theirs with one of ours. Empty: TS_UNACCEPTABLE.
pub(crate) fn narrow(
    proposed: &[TrafficSelector],
    allowed: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(ts) = selector_intersect(p, a) {
                if !out.contains(&ts) {
                    out.push(ts);
                }
            }
        }
    }
    out
}

/// True when every selector of `narrowed` lies inside one of `offered` (an initiator checks the
/// responder only narrowed, §2.9).
pub(crate) fn within(narrowed: &[TrafficSelector], offered: &[TrafficSelector]) -> bool {
    !narrowed.is_empty()
        && narrowed.iter().all(|n| {
            offered
                .iter()
                .any(|o| selector_intersect(n, o).as_ref() == Some(n))
        })
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | Port) (§2.23).
pub(crate) fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut data = Vec::with_capacity(34);
    data.extend_from_slice(&spi_i.to_be_bytes());
    data.extend_from_slice(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => data.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => data.extend_from_slice(&a.octets()),
    }
    data.extend_from_slice(&addr.port().to_be_bytes());
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &data)
        .as_ref()
        .to_vec()
}

/// The AUTH value of shared-key authentication (§2.15):
/// prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>), where SignedOctets =
/// RealMessage | Nonce of the other side | prf(SK_p, RestOfIDPayload).
pub(crate) fn psk_auth(
    alg: crate::proposal::Prf,
    psk: &[u8],
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_octets: &[u8],
) -> zeroize::Zeroizing<Vec<u8>> {
    let maced_id = prf(alg, sk_p, id_octets);
    let key = prf(alg, psk, b"Key Pad for IKEv2");
    prf_parts(alg, &key, &[real_message, peer_nonce, &maced_id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ts(a: &str, b: &str) -> TrafficSelector {
        TrafficSelector::new(AddressRange::V4 {
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
        })
    }

    #[test]
    fn narrowing_intersects_and_checks_subsets() {
        let ours = [ts("198.19.0.0", "198.19.0.255")];
        let theirs = [
            ts("198.19.0.0", "198.19.255.255"),
            ts("203.0.113.0", "203.0.113.255"),
        ];
        let n = narrow(&theirs, &ours);
        assert_eq!(n, vec![ts("198.19.0.0", "198.19.0.255")]);
        assert!(within(&n, &theirs));
        assert!(!within(&[ts("198.20.0.0", "198.20.0.1")], &theirs));
        assert!(narrow(&[ts("203.0.113.0", "203.0.113.255")], &ours).is_empty());
        let tcp = TrafficSelector {
            protocol: 6,
            start_port: 443,
            end_port: 443,
            ..ours[0]
        };
        let udp = TrafficSelector {
            protocol: 17,
            ..ours[0]
        };
        assert_eq!(narrow(&[tcp], &ours), vec![tcp]);
        assert!(narrow(&[tcp], &[udp]).is_empty());
    }

    #[test]
    fn responder_picks_the_first_acceptable_proposal() {
        let ours = vec![IkeProposal::parse("aes256gcm16-prfsha256-ecp256-modp2048").unwrap()];
        let peer = vec![
            Proposal::from_ike(
                1,
                &[],
                &IkeProposal::parse("chacha20poly1305-prfsha256-x25519").unwrap(),
            ),
            Proposal::from_ike(
                2,
                &[],
                &IkeProposal::parse("aes128gcm16-aes256gcm16-prfsha384-prfsha256-modp2048-ecp256")
                    .unwrap(),
            ),
        ];
        let (n, chosen, groups) = choose_ike(&peer, &ours).unwrap();
        assert_eq!(n, 2);
        assert_eq!(chosen.to_string(), "aes256gcm16-prfsha256-modp2048");
        assert_eq!(groups.len(), 2);
        assert!(ike_acceptable(&chosen, &ours));
        assert!(choose_ike(&peer[..1], &ours).is_none());
        let esp_ours = vec![EspProposal::parse("aes256gcm16").unwrap()];
        let esp_peer = vec![Proposal::from_esp(
            1,
            0xc0ff_ee01,
            &EspProposal::parse("chacha20poly1305-aes256gcm16-esn-noesn").unwrap(),
        )];
        let (_, spi, chosen) = choose_esp(&esp_peer, &esp_ours, None).unwrap();
        assert_eq!(spi, 0xc0ff_ee01);
        assert_eq!(chosen.to_string(), "aes256gcm16-noesn");
        assert!(esp_acceptable(&chosen, &esp_ours));
    }

    #[test]
    fn nat_hash_is_sha1_of_spis_address_and_port() {
        let h = nat_hash(1, 2, SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 500)));
        assert_eq!(h.len(), 20);
        assert_ne!(
            h,
            nat_hash(
                1,
                2,
                SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 4500))
            )
        );
    }
}
