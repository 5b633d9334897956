//! Network addresses as plain data. The core never opens a socket, so it does not use
//! `std::net`; the runtime converts to and from socket addresses, the simulator invents them.

use std::fmt;

/// An IP address and port. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so that
/// one fixed-size type covers both families.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    /// The address in IPv6 form (IPv4 mapped).
    pub ip: [u8; 16],
    /// The port.
    pub port: u16,
}

impl Addr {
    /// An IPv4 address and port.
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        let [a, b, c, d] = octets;
        Self {
            ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
            port,
        }
    }

    /// The IPv4 octets, if this is an IPv4(-mapped) address.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let ip = &self.ip;
        (ip[..10].iter().all(|&b| b == 0) && ip[10] == 0xff && ip[11] == 0xff)
            .then(|| [ip[12], ip[13], ip[14], ip[15]])
    }

    /// True for `0.0.0.0` and `::`: an address nobody can send to, so never one to advertise.
    pub fn is_unspecified(&self) -> bool {
        match self.as_v4() {
            Some(v4) => v4 == [0, 0, 0, 0],
            None => self.ip == [0; 16],
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some([a, b, c, d]) = self.as_v4() {
            return write!(f, "{a}.{b}.{c}.{d}:{}", self.port);
        }
        f.write_str("[")?;
        for (i, pair) in self.ip.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:x}", u16::from_be_bytes([pair[0], pair[1]]))?;
        }
        write!(f, "]:{}", self.port)
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_and_displays() {
        let a = Addr::v4([127, 0, 0, 1], 8301);
        assert_eq!(a.as_v4(), Some([127, 0, 0, 1]));
        assert_eq!(a.to_string(), "127.0.0.1:8301");
        assert!(!a.is_unspecified());
        assert!(Addr::v4([0, 0, 0, 0], 1).is_unspecified());
    }

    #[test]
    fn v6_displays_in_brackets() {
        let mut ip = [0u8; 16];
        ip[15] = 1;
        let a = Addr { ip, port: 80 };
        assert_eq!(a.as_v4(), None);
        assert_eq!(a.to_string(), "[0:0:0:0:0:0:0:1]:80");
    }
}
