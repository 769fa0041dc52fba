//! The host's own addresses in [`LOCAL_ADDRESSES`]: a destination there is this host, so
//! the cgroup hooks decide it against the listening segment, as for loopback; and the
//! broadcast addresses of its networks, destinations of the `broadcast` class. Host
//! state, kept current by the agent; the kernel never learns addresses by itself.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, MapData};
use enforcer_common::maps::{ADDRESS_BROADCAST, ADDRESS_LOCAL, LOCAL_ADDRESSES, local_address_key};

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

/// Makes the map hold exactly `addresses` (an address that is both a local and a
/// broadcast address counts as local): new and changed entries are written before stale
/// ones go, so an address that stays is never missing. Returns how many entries it holds.
pub(super) fn sync(maps: &mut impl MapSet, addresses: &Addresses) -> Result<usize, LoaderError> {
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
}
