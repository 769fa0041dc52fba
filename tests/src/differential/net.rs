//! Addresses and prefixes as plain integers, with their own containment test: nothing
//! here comes from the policy crate or from `ipnet`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: 32 bits.
    V4,
    /// IPv6: 128 bits.
    V6,
}

impl Family {
    /// The number of bits of an address.
    pub const fn width(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// Every bit of an address of the family set.
    const fn all_ones(self) -> u128 {
        match self {
            Self::V4 => u32::MAX as u128,
            Self::V6 => u128::MAX,
        }
    }
}

/// An address: its family and its bits (IPv4 in the low 32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    /// The family.
    pub family: Family,
    /// The bits, most significant first as on the wire.
    pub bits: u128,
}

/// The upper 96 bits of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), shifted down.
const MAPPED_TAG: u128 = 0xffff;

impl Addr {
    /// An IPv4 address.
    pub const fn v4(bits: u32) -> Self {
        Self {
            family: Family::V4,
            bits: bits as u128,
        }
    }

    /// An IPv6 address.
    pub const fn v6(bits: u128) -> Self {
        Self {
            family: Family::V6,
            bits,
        }
    }

    /// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address.
    pub const fn mapped(v4: u32) -> Self {
        Self::v6((MAPPED_TAG << 32) | v4 as u128)
    }

    /// The deprecated IPv4-compatible IPv6 form (`::a.b.c.d`) of an IPv4 address: an
    /// ordinary IPv6 address to every rule of the policy.
    pub const fn compatible(v4: u32) -> Self {
        Self::v6(v4 as u128)
    }

    /// Whether this is an IPv4-mapped IPv6 address.
    pub const fn is_mapped(self) -> bool {
        matches!(self.family, Family::V6) && self.bits >> 32 == MAPPED_TAG
    }

    /// The address a policy classifies: "an IPv4-mapped IPv6 address is treated as the
    /// IPv4 address" (policies/README.md, Semantics 1); every other address as it is.
    pub const fn as_classified(self) -> Self {
        if self.is_mapped() {
            Self::v4(self.bits as u32)
        } else {
            self
        }
    }

    /// The address `delta` further on, wrapping within the family.
    pub fn offset(self, delta: i64) -> Self {
        let bits = if delta >= 0 {
            self.bits.wrapping_add(delta as u128)
        } else {
            self.bits.wrapping_sub(u128::from(delta.unsigned_abs()))
        };
        Self {
            family: self.family,
            bits: bits & self.family.all_ones(),
        }
    }

    /// An address of the standard library's type, as it is (an IPv4-mapped IPv6 address
    /// stays IPv6).
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4.to_bits()),
            IpAddr::V6(v6) => Self::v6(v6.to_bits()),
        }
    }

    /// The address as the standard library's type.
    pub fn to_ip(self) -> IpAddr {
        match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.bits as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.bits)),
        }
    }

    /// The address's bytes in network order (4 or 16).
    pub fn octets(self) -> Vec<u8> {
        match self.family {
            Family::V4 => (self.bits as u32).to_be_bytes().to_vec(),
            Family::V6 => self.bits.to_be_bytes().to_vec(),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_ip())
    }
}

/// How a prefix is written in a policy file: every form the syntax accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `ADDR/LEN`.
    Cidr,
    /// A bare address: a single host (only for a full-length prefix).
    Bare,
    /// `::ffff:a.b.c.d/LEN`, the IPv4-mapped form written with a dotted quad.
    MappedDotted,
    /// `::a.b.c.d/LEN`, the IPv4-compatible form written with a dotted quad.
    CompatibleDotted,
}

/// A prefix: a network address (host bits zero) and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    /// The network address.
    pub addr: Addr,
    /// The prefix length, 0 to the family's width.
    pub len: u8,
    /// How it is written.
    pub form: Form,
}

/// The bits a prefix of `len` keeps in an address of `family`.
fn mask(family: Family, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        (u128::MAX << (family.width() - len)) & family.all_ones()
    }
}

impl Net {
    /// The prefix of `len` bits around `addr` (host bits cleared), written as a CIDR.
    pub fn new(addr: Addr, len: u8) -> Self {
        let len = len.min(addr.family.width());
        Self {
            addr: Addr {
                family: addr.family,
                bits: addr.bits & mask(addr.family, len),
            },
            len,
            form: Form::Cidr,
        }
    }

    /// Whether `addr` is in the prefix: same family, same leading `len` bits.
    pub fn contains(&self, addr: Addr) -> bool {
        addr.family == self.addr.family
            && (addr.bits ^ self.addr.bits) & mask(self.addr.family, self.len) == 0
    }

    /// The first address of the prefix.
    pub fn first(&self) -> Addr {
        self.addr
    }

    /// The last address of the prefix.
    pub fn last(&self) -> Addr {
        let family = self.addr.family;
        Addr {
            family,
            bits: self.addr.bits | (!mask(family, self.len) & family.all_ones()),
        }
    }

    /// An address of the prefix chosen by `host_bits` (masked to the host part).
    pub fn at(&self, host_bits: u128) -> Addr {
        let family = self.addr.family;
        Addr {
            family,
            bits: self.addr.bits | (host_bits & !mask(family, self.len) & family.all_ones()),
        }
    }

    /// A key that tells prefixes apart whatever their written form.
    pub fn key(&self) -> (Family, u128, u8) {
        (self.addr.family, self.addr.bits, self.len)
    }

    /// The prefix as written in a policy file: in its form where the form fits (a dotted
    /// form needs a prefix of at least 96 bits of that kind, a bare address a full-length
    /// prefix), else as `ADDR/LEN`.
    pub fn render(&self) -> String {
        let v4_part = Ipv4Addr::from(self.addr.bits as u32);
        let dotted = self.addr.family == Family::V6 && self.len >= 96;
        match self.form {
            Form::Bare if self.len == self.addr.family.width() => self.addr.to_string(),
            Form::MappedDotted if dotted && self.addr.is_mapped() => {
                format!("::ffff:{v4_part}/{}", self.len)
            }
            Form::CompatibleDotted if dotted && self.addr.bits >> 32 == 0 => {
                format!("::{v4_part}/{}", self.len)
            }
            _ => format!("{}/{}", self.addr, self.len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_exactly_their_range() {
        let net = Net::new(Addr::v4(0xc612_0180), 25);
        assert!(net.contains(Addr::v4(0xc612_0180)));
        assert!(net.contains(Addr::v4(0xc612_01ff)));
        assert!(!net.contains(Addr::v4(0xc612_017f)));
        assert!(!net.contains(Addr::mapped(0xc612_0180)));
        assert_eq!(net.last(), Addr::v4(0xc612_01ff));
        let all = Net::new(Addr::v6(12345), 0);
        assert_eq!(all.addr.bits, 0);
        assert!(all.contains(Addr::v6(u128::MAX)));
        assert!(!all.contains(Addr::v4(0)));
        let host = Net::new(Addr::v6(u128::MAX), 128);
        assert!(host.contains(Addr::v6(u128::MAX)));
        assert!(!host.contains(Addr::v6(u128::MAX - 1)));
    }

    #[test]
    fn dotted_forms_parse_back_to_the_same_bits() {
        let mapped = Net {
            form: Form::MappedDotted,
            ..Net::new(Addr::mapped(0xc612_0100), 120)
        };
        assert_eq!(mapped.render(), "::ffff:198.18.1.0/120");
        let compatible = Net {
            form: Form::CompatibleDotted,
            ..Net::new(Addr::compatible(0xc612_0100), 120)
        };
        let text = compatible.render();
        assert_eq!(text, "::198.18.1.0/120");
        let parsed: Ipv6Addr = text.split('/').next().unwrap().parse().unwrap();
        assert_eq!(u128::from(parsed), 0xc612_0100);
    }
}
