//! The kernel's lookups, run in userspace over a [`MapImage`]: LPM tries emulated by
//! longest-prefix search, then the very decision helpers the kernel programs call
//! (`enforcer_common::decision`). `explain` answers with this, and the property tests
//! hold it against the reference evaluator.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use enforcer_common::{
    decision::{Decision, NO_RULE, best_rule, decide, lookup_bit, rule_lookups},
    maps::{
        FAILSAFE_KEY_FIXED_BITS, FailsafeKey, ListenKey, RULE_KEY_FIXED_BITS, RuleKey, RuleValue,
        SEGMENT_BROADCAST, SEGMENT_HOST, SEGMENT_MULTICAST, SEGMENT_WORLD,
    },
};

use super::image::MapImage;

/// Zeroes every bit of `bytes` past the first `bits`.
fn mask(bytes: &mut [u8], bits: u32) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= bits {
            *byte = 0;
        } else if start + 8 > bits {
            *byte &= 0xffu8 << (8 - (bits - start));
        }
    }
}

/// An LPM trie emulated by a hash map per prefix length.
#[derive(Debug)]
struct Lpm<V> {
    entries: HashMap<(u32, Vec<u8>), V>,
    lengths: Vec<u32>,
}

impl<V: Copy> Lpm<V> {
    fn new(entries: impl Iterator<Item = (u32, Vec<u8>, V)>) -> Self {
        let mut map = HashMap::new();
        let mut lengths = Vec::new();
        for (prefix_len, mut key, value) in entries {
            mask(&mut key, prefix_len);
            map.insert((prefix_len, key), value);
            lengths.push(prefix_len);
        }
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        Self {
            entries: map,
            lengths,
        }
    }

    /// The value of the longest prefix of `key` present, and that prefix's length.
    fn lookup(&self, key: &[u8]) -> Option<(u32, V)> {
        self.lengths.iter().find_map(|len| {
            let mut masked = key.to_vec();
            mask(&mut masked, *len);
            self.entries.get(&(*len, masked)).map(|v| (*len, *v))
        })
    }
}

fn rule_key_bytes(key: &RuleKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&key.src);
    bytes.extend_from_slice(&key.dst);
    bytes.push(key.proto);
    bytes.extend_from_slice(&key.port);
    bytes.push(key._pad);
    bytes
}

fn failsafe_key_bytes<const N: usize>(key: &FailsafeKey<N>) -> Vec<u8> {
    let mut bytes = vec![key.proto, key._pad];
    bytes.extend_from_slice(&key.port);
    bytes.extend_from_slice(&key.addr);
    bytes
}

/// A [`MapImage`] prepared for lookups.
#[derive(Debug)]
pub struct ImageIndex<'a> {
    image: &'a MapImage,
    cidrs_v4: Lpm<u32>,
    cidrs_v6: Lpm<u32>,
    rules: Lpm<RuleValue>,
    failsafes_v4: Lpm<u32>,
    failsafes_v6: Lpm<u32>,
    cgroups: HashMap<&'a str, u32>,
    listen: HashMap<ListenKey, u32>,
}

/// How an address was classified: the segment id, and the matching prefix if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrClass {
    /// The segment id ([`SEGMENT_WORLD`] when no prefix matched).
    pub segment: u32,
    /// The matching prefix length, `None` for world.
    pub prefix_len: Option<u32>,
}

/// IPv4-mapped IPv6 addresses are decided as IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(addr, |v4: Ipv4Addr| IpAddr::V4(v4)),
        IpAddr::V4(_) => addr,
    }
}

/// Whether a destination address is this host whatever the policy says, as the kernel
/// decides it: loopback or the unspecified address, in either family or IPv4-mapped.
/// (The kernel also knows the addresses of the host's interfaces, which are host state
/// and not in a policy.) Such a destination is the segment serving the port, else `host`.
pub fn is_this_host(addr: IpAddr) -> bool {
    let addr = canonical(addr);
    addr.is_loopback() || addr.is_unspecified()
}

/// The class of an address that reaches many hosts, as the kernel decides it:
/// `255.255.255.255` is `broadcast`, `224.0.0.0/4` and `ff00::/8` are `multicast`. (The
/// kernel also knows the broadcast addresses of the host's own networks, which are host
/// state and not in a policy.)
pub fn group_class(addr: IpAddr) -> Option<u32> {
    match canonical(addr) {
        IpAddr::V4(v4) if v4.is_broadcast() => Some(SEGMENT_BROADCAST),
        addr if addr.is_multicast() => Some(SEGMENT_MULTICAST),
        _ => None,
    }
}

impl<'a> ImageIndex<'a> {
    /// Indexes every map of `image`.
    pub fn new(image: &'a MapImage) -> Self {
        Self {
            image,
            cidrs_v4: Lpm::new(
                image
                    .cidrs_v4
                    .iter()
                    .map(|e| (e.prefix_len, e.key.to_vec(), e.value)),
            ),
            cidrs_v6: Lpm::new(
                image
                    .cidrs_v6
                    .iter()
                    .map(|e| (e.prefix_len, e.key.to_vec(), e.value)),
            ),
            rules: Lpm::new(
                image
                    .rules
                    .iter()
                    .map(|e| (e.prefix_len, rule_key_bytes(&e.key), e.value)),
            ),
            failsafes_v4: Lpm::new(
                image
                    .failsafes_v4
                    .iter()
                    .map(|e| (e.prefix_len, failsafe_key_bytes(&e.key), e.value)),
            ),
            failsafes_v6: Lpm::new(
                image
                    .failsafes_v6
                    .iter()
                    .map(|e| (e.prefix_len, failsafe_key_bytes(&e.key), e.value)),
            ),
            cgroups: image
                .cgroups
                .iter()
                .map(|(path, id)| (path.as_str(), *id))
                .collect(),
            listen: image.listen_ports.iter().copied().collect(),
        }
    }

    /// The segment of a remote address as a flow's destination: its class for a
    /// broadcast or multicast address ([`group_class`]), else as [`Self::classify_addr`].
    pub fn classify_destination(&self, addr: IpAddr) -> AddrClass {
        match group_class(addr) {
            Some(segment) => AddrClass {
                segment,
                prefix_len: None,
            },
            None => self.classify_addr(addr),
        }
    }

    /// The image this index reads.
    pub fn image(&self) -> &'a MapImage {
        self.image
    }

    /// The segment of a remote address as a flow's source: the longest matching prefix,
    /// else `world`. Broadcast and multicast are destination classes, never a source's:
    /// XDP classifies every source address by prefix alone.
    pub fn classify_addr(&self, addr: IpAddr) -> AddrClass {
        let found = match canonical(addr) {
            IpAddr::V4(v4) => self.cidrs_v4.lookup(&v4.octets()),
            IpAddr::V6(v6) => self.cidrs_v6.lookup(&v6.octets()),
        };
        match found {
            Some((prefix_len, segment)) => AddrClass {
                segment,
                prefix_len: Some(prefix_len),
            },
            None => AddrClass {
                segment: SEGMENT_WORLD,
                prefix_len: None,
            },
        }
    }

    /// The segment of a local cgroup path: its nearest listed ancestor (itself included),
    /// else `host`; also the listed path that matched.
    pub fn classify_cgroup<'p>(&self, path: &'p str) -> (u32, Option<&'p str>) {
        let mut current = path.trim_matches('/');
        loop {
            if let Some(id) = self.cgroups.get(current) {
                return (*id, Some(current));
            }
            match current.rsplit_once('/') {
                Some((parent, _)) => current = parent,
                None => return (SEGMENT_HOST, None),
            }
        }
    }

    /// The segment serving local port `port`/`proto`, if declared.
    pub fn listener(&self, proto: u8, port: u16) -> Option<u32> {
        self.listen.get(&ListenKey::new(port, proto)).copied()
    }

    /// The failsafe (1-based number) granting `addr` access to `port`/`proto`, if any.
    pub fn failsafe(&self, addr: IpAddr, proto: u8, port: u16) -> Option<u32> {
        let found = match canonical(addr) {
            IpAddr::V4(v4) => self
                .failsafes_v4
                .lookup(&failsafe_key_bytes(&FailsafeKey::new(
                    proto,
                    port,
                    v4.octets(),
                ))),
            IpAddr::V6(v6) => self
                .failsafes_v6
                .lookup(&failsafe_key_bytes(&FailsafeKey::new(
                    proto,
                    port,
                    v6.octets(),
                ))),
        };
        found
            .filter(|(len, _)| *len >= FAILSAFE_KEY_FIXED_BITS)
            .map(|(_, number)| number)
    }

    /// The rule decision for a flow between two segment ids, as the kernel makes it.
    pub fn decide(&self, src: u32, dst: u32, proto: u8, port: u16) -> Decision {
        let wanted = self.image.config.rule_lookups;
        let found = rule_lookups(src, dst).map(|(s, d)| {
            if wanted & lookup_bit(s, d) == 0 {
                return NO_RULE;
            }
            self.rules
                .lookup(&rule_key_bytes(&RuleKey::new(s, d, proto, port)))
                .filter(|(len, _)| *len >= RULE_KEY_FIXED_BITS)
                .map_or(NO_RULE, |(_, value)| value)
        });
        let flags = |id: u32| {
            self.image
                .segment_infos
                .get(id as usize)
                .map_or(0, |i| i.flags)
        };
        decide(best_rule(found), flags(src), flags(dst))
    }
}
