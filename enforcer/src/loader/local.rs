//! The host's own addresses in [`LOCAL_ADDRESSES`] and the wider `local` routes in
//! [`LOCAL_PREFIXES`]: a destination there is this host, so the cgroup hooks decide it
//! against the listening segment, as for loopback; and the broadcast addresses of its
//! networks, destinations of the `broadcast` class. Host state, kept current by the
//! agent; the kernel never learns addresses by itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{
    HashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::maps::{
    ADDRESS_BROADCAST, ADDRESS_LOCAL, LOCAL_ADDRESSES, LOCAL_PREFIXES, local_address_key,
};
use ipnet::IpNet;

use super::{LoaderError, MapSet, map_error};
use crate::host::interfaces::Addresses;

/// The map key of `address` (IPv4 as its IPv4-mapped form).
fn key(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            local_address_key(&bytes, true)
        }
        IpAddr::V6(v6) => local_address_key(&v6.octets(), false),
    }
}

/// The [`LOCAL_PREFIXES`] key of `prefix`: its address's map key and its length in that
/// key (an IPv4 prefix lives in the last 32 of the 128 bits).
fn prefix_key(prefix: IpNet) -> (u32, [u8; 16]) {
    let offset = match prefix {
        IpNet::V4(_) => 96,
        IpNet::V6(_) => 0,
    };
    (
        offset + u32::from(prefix.prefix_len()),
        key(prefix.network()),
    )
}

/// Makes the kernel's tables hold exactly `addresses`; returns how many addresses and
/// prefixes they hold.
pub(super) fn sync(maps: &mut impl MapSet, addresses: &Addresses) -> Result<usize, LoaderError> {
    Ok(sync_addresses(maps, addresses)? + sync_prefixes(maps, &addresses.prefixes)?)
}

/// Makes [`LOCAL_PREFIXES`] hold exactly `prefixes`, new ones written before stale ones
/// go.
fn sync_prefixes(maps: &mut impl MapSet, prefixes: &BTreeSet<IpNet>) -> Result<usize, LoaderError> {
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
        LpmTrie::try_from(maps.map_mut(LOCAL_PREFIXES)?).map_err(map_error(LOCAL_PREFIXES))?;
    let wanted: BTreeSet<(u32, [u8; 16])> = prefixes.iter().copied().map(prefix_key).collect();
    let present: BTreeSet<(u32, [u8; 16])> = trie
        .keys()
        .map(|key| key.map(|key| (key.prefix_len(), key.data())))
        .collect::<Result<_, _>>()
        .map_err(map_error(LOCAL_PREFIXES))?;
    for (len, data) in wanted.difference(&present) {
        trie.insert(&Key::new(*len, *data), &ADDRESS_LOCAL, 0)
            .map_err(map_error(LOCAL_PREFIXES))?;
    }
    for (len, data) in present.difference(&wanted) {
        trie.remove(&Key::new(*len, *data))
            .map_err(map_error(LOCAL_PREFIXES))?;
    }
    Ok(wanted.len())
}

/// Makes [`LOCAL_ADDRESSES`] hold exactly `addresses` (an address that is both a local
/// and a broadcast address counts as local): new and changed entries are written before
/// stale ones go, so an address that stays is never missing.
fn sync_addresses(maps: &mut impl MapSet, addresses: &Addresses) -> Result<usize, LoaderError> {
    let mut map: HashMap<&mut MapData, [u8; 16], u8> =
        HashMap::try_from(maps.map_mut(LOCAL_ADDRESSES)?).map_err(map_error(LOCAL_ADDRESSES))?;
    let mut wanted: BTreeMap<[u8; 16], u8> = addresses
        .broadcast
        .iter()
        .map(|address| (key(*address), ADDRESS_BROADCAST))
        .collect();
    wanted.extend(
        addresses
            .local
            .iter()
            .map(|address| (key(*address), ADDRESS_LOCAL)),
    );
    let present: BTreeMap<[u8; 16], u8> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(LOCAL_ADDRESSES))?;
    for (address, kind) in &wanted {
        if present.get(address) != Some(kind) {
            map.insert(address, kind, 0)
                .map_err(map_error(LOCAL_ADDRESSES))?;
        }
    }
    for stale in present.keys().filter(|key| !wanted.contains_key(*key)) {
        map.remove(stale).map_err(map_error(LOCAL_ADDRESSES))?;
    }
    Ok(wanted.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_keyed_as_its_mapped_form() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.18.0.1".parse().unwrap();
        assert_eq!(key(v4), key(mapped));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            key(v6),
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn an_ipv4_prefix_is_keyed_in_the_last_32_bits_of_its_mapped_form() {
        let v4: IpNet = "198.19.253.0/24".parse().unwrap();
        let (len, data) = prefix_key(v4);
        assert_eq!(len, 120);
        assert_eq!(data, key("198.19.253.0".parse().unwrap()));
        let v6: IpNet = "2001:db8:5::/64".parse().unwrap();
        assert_eq!(prefix_key(v6).0, 64);
    }
}
