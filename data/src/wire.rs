//! Little-endian fields and socket addresses in the binary formats that
//! carry servers' addresses: cluster datagrams ([`crate::frame`]) and the
//! LB's registry file (`lb::registry`). One reader, one address encoding:
//!
//! ```text
//! address: [family u8: 4 or 6][ip: 4 or 16 bytes][port u16]
//! ```
//!
//! IPv6 flow info and scope ids are not encoded; [`addr_encodable`] says
//! whether an address survives the trip. Each format keeps its own error
//! type: the [`Reader`] builds its errors through [`ReadErrors`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::BufMut;

/// How a format names the two ways reading can fail.
pub trait ReadErrors {
    type Error;
    /// Fewer bytes remain than the field needs.
    fn truncated(&self) -> Self::Error;
    /// An address whose family byte is neither 4 nor 6.
    fn bad_address_family(&self, family: u8) -> Self::Error;
}

/// Reads a buffer front to back; every read checks the bytes remaining, so
/// no input panics or reads past the end.
pub struct Reader<'a, E> {
    buf: &'a [u8],
    errors: E,
}

impl<'a, E: ReadErrors> Reader<'a, E> {
    pub fn new(buf: &'a [u8], errors: E) -> Self {
        Reader { buf, errors }
    }

    /// The format's errors, for checks of its own.
    pub fn errors(&self) -> &E {
        &self.errors
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Everything left, consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn bytes(&mut self, len: usize) -> Result<&'a [u8], E::Error> {
        if len > self.buf.len() {
            return Err(self.errors.truncated());
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], E::Error> {
        let mut raw = [0u8; N];
        raw.copy_from_slice(self.bytes(N)?);
        Ok(raw)
    }

    pub fn u8(&mut self) -> Result<u8, E::Error> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, E::Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, E::Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, E::Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn addr(&mut self) -> Result<SocketAddr, E::Error> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, self.u16()?)))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, self.u16()?, 0, 0)))
            }
            other => Err(self.errors.bad_address_family(other)),
        }
    }
}

/// Whether [`put_addr`] writes `addr` whole: not an IPv6 address with a
/// flow info or scope id, which the encoding has no room for.
pub fn addr_encodable(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.flowinfo() == 0 && v6.scope_id() == 0,
    }
}

/// Bytes [`put_addr`] writes for `addr`.
pub fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Writes `addr` (check [`addr_encodable`] first: flow info and scope id
/// are dropped).
pub fn put_addr(out: &mut impl BufMut, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.put_u8(4);
            out.put_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.put_u8(6);
            out.put_slice(&v6.ip().octets());
        }
    }
    out.put_u16_le(addr.port());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Error {
        Truncated,
        Family(u8),
    }

    struct Errors;

    impl ReadErrors for Errors {
        type Error = Error;
        fn truncated(&self) -> Error {
            Error::Truncated
        }
        fn bad_address_family(&self, family: u8) -> Error {
            Error::Family(family)
        }
    }

    #[test]
    fn addresses_round_trip_and_bad_input_is_an_error() {
        let addrs: [SocketAddr; 2] = [
            "127.0.0.1:11211".parse().unwrap(),
            "[::1]:7000".parse().unwrap(),
        ];
        let mut out = Vec::new();
        for addr in &addrs {
            assert!(addr_encodable(addr));
            put_addr(&mut out, addr);
        }
        assert_eq!(out.len(), addrs.iter().map(addr_len).sum::<usize>());
        let mut r = Reader::new(&out, Errors);
        assert_eq!(r.addr(), Ok(addrs[0]));
        assert_eq!(r.addr(), Ok(addrs[1]));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.u8(), Err(Error::Truncated));

        let cut = &out[..addr_len(&addrs[0]) - 1];
        assert_eq!(Reader::new(cut, Errors).addr(), Err(Error::Truncated));
        assert_eq!(
            Reader::new(&[5, 0, 0], Errors).addr(),
            Err(Error::Family(5))
        );
        let scoped: SocketAddr = "[fe80::1%2]:7000".parse().unwrap();
        assert!(!addr_encodable(&scoped));
    }
}
