//! The PROXY protocol version 2 header (HAProxy's "PROXY protocol"
//! specification, section 2.2): what an egress source that sends through
//! a forwarder (`[[egress.source]] proxy`) writes first on each
//! connection, so that the forwarder connects to the MX from the source's
//! address and relays the SMTP conversation.
//!
//! Owns: [`v2_header`], a pure function, unit-tested against the
//! specification's layout. Must not: do I/O.

use std::net::SocketAddr;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a PROXY header cannot join {0} (source) to {1} (destination): one is IPv4, the other IPv6"
)]
pub struct MixedFamilies(pub SocketAddr, pub SocketAddr);

/// The header for a TCP connection from `src` to `dst` (version 2,
/// command PROXY, TCP over IPv4 or IPv6, no TLVs).
pub fn v2_header(src: SocketAddr, dst: SocketAddr) -> Result<Vec<u8>, MixedFamilies> {
    let mut h = SIGNATURE.to_vec();
    // Version 2, command PROXY.
    h.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            // AF_INET, STREAM; 12 bytes of addresses and ports.
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            // AF_INET6, STREAM; 36 bytes.
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => return Err(MixedFamilies(src, dst)),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_28_bytes_in_the_specified_order() {
        let h = v2_header(
            "192.0.2.10:0".parse().unwrap(),
            "198.51.100.7:25".parse().unwrap(),
        )
        .unwrap();
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12]);
        want.extend_from_slice(&[192, 0, 2, 10, 198, 51, 100, 7]);
        want.extend_from_slice(&[0, 0, 0, 25]);
        assert_eq!(h, want);
    }

    #[test]
    fn ipv6_header_is_52_bytes_and_families_do_not_mix() {
        let h = v2_header(
            "[2001:db8::1]:0".parse().unwrap(),
            "[2001:db8::25]:2525".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h[16 + 15], 1);
        assert_eq!(h[32 + 15], 0x25);
        assert_eq!(&h[48..], &[0, 0, 0x09, 0xDD], "ports 0 and 2525");
        let mixed = v2_header("192.0.2.1:0".parse().unwrap(), "[::1]:25".parse().unwrap());
        assert!(mixed.is_err());
    }
}
