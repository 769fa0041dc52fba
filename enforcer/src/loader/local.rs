//! The host's own addresses in [`LOCAL_ADDRESSES`]: a destination there is this host, so
//! the cgroup hooks decide it against the listening segment, as for loopback. Host state,
//! kept current by the agent; the kernel never learns addresses by itself.

use std::{collections::BTreeSet, net::IpAddr};

use aya::maps::{HashMap, MapData};
use enforcer_common::maps::{LOCAL_ADDRESSES, local_address_key};

use super::{LoaderError, MapSet, map_error};

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

/// Makes the map hold exactly `addresses`: new ones are added before stale ones go, so
/// an address that stays is never missing. Returns how many entries it holds.
pub(super) fn sync(
    maps: &mut impl MapSet,
    addresses: &BTreeSet<IpAddr>,
) -> Result<usize, LoaderError> {
    let mut map: HashMap<&mut MapData, [u8; 16], u8> =
        HashMap::try_from(maps.map_mut(LOCAL_ADDRESSES)?).map_err(map_error(LOCAL_ADDRESSES))?;
    let wanted: BTreeSet<[u8; 16]> = addresses.iter().copied().map(key).collect();
    let present: BTreeSet<[u8; 16]> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_error(LOCAL_ADDRESSES))?;
    for added in wanted.difference(&present) {
        map.insert(added, &1, 0)
            .map_err(map_error(LOCAL_ADDRESSES))?;
    }
    for stale in present.difference(&wanted) {
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
