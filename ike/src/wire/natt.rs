//! UDP encapsulation on port 4500 (RFC 3948 §2; RFC 7296 §2.23): IKE behind the 4-octet
//! non-ESP marker, ESP as is, and the one-octet NAT-keepalive.

/// The non-ESP marker: four zero octets where ESP would have its SPI (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The NAT-keepalive payload (RFC 3948 §2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];

/// What a UDP datagram received on port 4500 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udp4500<'a> {
    /// An IKE message, marker removed.
    Ike(&'a [u8]),
    /// An ESP packet, from its SPI on.
    Esp(&'a [u8]),
    /// A NAT-keepalive, to be dropped (RFC 3948 §2.3).
    Keepalive,
    /// Neither; dropped.
    Malformed(&'static str),
}

/// Classifies a UDP-4500 payload (RFC 3948 §2.2): a zero first word is the non-ESP marker,
/// a single 0xFF is a keepalive, anything else that can hold an ESP header is ESP (its SPI
/// is never zero, RFC 4303 §2.1).
pub fn classify_udp4500(datagram: &[u8]) -> Udp4500<'_> {
    match datagram {
        [0xff] => Udp4500::Keepalive,
        [0, 0, 0, 0, ike @ ..] => {
            if ike.len() >= super::HEADER_LEN {
                Udp4500::Ike(ike)
            } else {
                Udp4500::Malformed("non-ESP marker followed by less than an IKE header")
            }
        }
        _ if datagram.len() >= 8 => Udp4500::Esp(datagram),
        _ => Udp4500::Malformed("too short for ESP and not a keepalive"),
    }
}

/// Prefixes an IKE message with the non-ESP marker for sending on port 4500.
pub fn with_non_esp_marker(ike: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NON_ESP_MARKER.len() + ike.len());
    out.extend_from_slice(&NON_ESP_MARKER);
    out.extend_from_slice(ike);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind() {
        let ike = [0x11u8; 28];
        let framed = with_non_esp_marker(&ike);
        assert_eq!(&framed[..4], &[0, 0, 0, 0]);
        assert_eq!(classify_udp4500(&framed), Udp4500::Ike(&ike[..]));
        assert_eq!(classify_udp4500(&NAT_KEEPALIVE), Udp4500::Keepalive);
        let esp = [0, 0, 1, 0, 0, 0, 0, 1, 0xaa, 0xbb];
        assert_eq!(classify_udp4500(&esp), Udp4500::Esp(&esp[..]));
        for bad in [
            &[][..],
            &[0xfe],
            &[0xff, 0xff],
            &[0, 0, 0, 0, 1],
            &[1, 2, 3, 4, 5, 6, 7],
        ] {
            assert!(
                matches!(classify_udp4500(bad), Udp4500::Malformed(_)),
                "{bad:?}"
            );
        }
    }
}
