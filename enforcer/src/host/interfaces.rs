//! Network interfaces by name and by index, and the addresses they hold.

use std::{
    collections::BTreeSet,
    ffi::{CStr, CString},
    io,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::SockaddrStorage;

use super::routes::{self, LocalKind, LocalRoute, local_routes};

/// The index of interface `name`, or `None` when the host has none by that name.
pub fn index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of interface `index`, or `None` when the host has none with that index
/// (any more).
pub fn name(index: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buffer` holds IF_NAMESIZE bytes, as `if_indextoname` requires.
    let found = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether interface `index` is a veth (its rtnetlink link kind is `veth`).
pub fn is_veth(index: u32) -> io::Result<bool> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = index;
    routes::send(
        &socket,
        NLM_F_REQUEST,
        1,
        RouteNetlinkMessage::GetLink(link),
    )?;
    let mut buffer = vec![0u8; 64 * 1024];
    let received = socket.recv(&mut &mut buffer[..], 0)?;
    match routes::decode(&buffer[..received])?.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Ok(link.attributes.iter().any(|attribute| {
                matches!(attribute, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth))))
            }))
        }
        NetlinkPayload::Error(error) => Err(error.to_io()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "rtnetlink answered a link request with something else",
        )),
    }
}

/// Every interface of this network namespace, by name, with its index.
pub fn all() -> io::Result<Vec<(String, u32)>> {
    Ok(nix::net::if_::if_nameindex()
        .map_err(io::Error::from)?
        .iter()
        .map(|interface| {
            (
                interface.name().to_string_lossy().into_owned(),
                interface.index(),
            )
        })
        .collect())
}

/// `ARPHRD_ETHER`: the link type of Ethernet-framed interfaces (physical NICs, veth,
/// bridges, bonds, VLANs, VXLAN, GRE-over-Ethernet taps).
pub const LINK_TYPE_ETHERNET: u16 = 1;

/// The link type (`ARPHRD_*`) of every interface of this network namespace that has a
/// link-layer address, by name: [`LINK_TYPE_ETHERNET`] for Ethernet framing. L3 tunnels
/// (IPIP, SIT, GRE, ip6tnl) have other types; WireGuard and TUN devices have no
/// link-layer address and are not listed. An interface created after the call is not
/// listed either: list the interfaces first, then their types.
pub fn link_types() -> io::Result<Vec<(String, u16)>> {
    Ok(nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter_map(|interface| {
            let link = interface.address.as_ref()?.as_link_addr()?.hatype();
            Some((interface.interface_name, link))
        })
        .collect())
}

/// The destinations this network namespace's kernel delivers to this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Every address of every interface (loopback included), and every single address a
    /// `local` or `anycast` route names, in any table (IPv6 anycast addresses among them).
    pub local: BTreeSet<IpAddr>,
    /// The broadcast address of every IPv4 network an interface is on, and those the
    /// `broadcast` routes name.
    pub broadcast: BTreeSet<IpAddr>,
    /// The wider `local` routes (AnyIP prefixes), loopback's `127.0.0.0/8` left out:
    /// every address in them is this host's.
    pub prefixes: BTreeSet<IpNet>,
}

impl Addresses {
    /// Adds what a `local`, `anycast` or `broadcast` route makes this host's.
    fn add_route(&mut self, route: LocalRoute) {
        let loopback = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8));
        let destination = route.destination;
        match route.kind {
            LocalKind::Broadcast => {
                self.broadcast.insert(destination.addr());
            }
            LocalKind::Host if destination.prefix_len() == destination.max_prefix_len() => {
                self.local.insert(destination.addr());
            }
            LocalKind::Host if loopback.contains(&destination) => {}
            LocalKind::Host => {
                self.prefixes.insert(destination);
            }
        }
    }
}

/// Every address of every interface of this network namespace, their networks'
/// broadcast addresses, and what the routing tables' `local`, `anycast` and `broadcast`
/// routes add to them: the kernel delivers a packet to this host when such a route says
/// so, whether or not an interface holds the address.
pub fn addresses() -> io::Result<Addresses> {
    let mut found = Addresses::default();
    for route in local_routes()? {
        found.add_route(route);
    }
    let v4 = |address: Option<&SockaddrStorage>| {
        address.and_then(|a| a.as_sockaddr_in()).map(|a| a.ip())
    };
    for interface in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if let Some(v6) = interface.address.as_ref().and_then(|a| a.as_sockaddr_in6()) {
            found.local.insert(IpAddr::V6(v6.ip()));
        }
        if let Some(address) = v4(interface.address.as_ref()) {
            found.local.insert(IpAddr::V4(address));
            // The network's broadcast address, whether or not one was configured (the
            // kernel routes it as broadcast either way); none for /31 and /32.
            if let Some(mask) = v4(interface.netmask.as_ref())
                && mask.to_bits().count_ones() < 31
            {
                let directed = address.to_bits() | !mask.to_bits();
                found
                    .broadcast
                    .insert(IpAddr::V4(Ipv4Addr::from_bits(directed)));
            }
        }
        if let Some(configured) = v4(interface.broadcast.as_ref())
            && !configured.is_unspecified()
        {
            found.broadcast.insert(IpAddr::V4(configured));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round_trips_and_unknown_names_are_none() {
        let lo = index("lo").expect("every host has a loopback interface");
        assert_eq!(name(lo).as_deref(), Some("lo"));
        assert_eq!(index("no-such-if0"), None);
        assert_eq!(index("bad\0name"), None);
        assert_eq!(name(0), None);
    }

    #[test]
    fn loopback_is_listed_with_its_index() {
        let lo = index("lo").unwrap();
        assert!(all().unwrap().contains(&("lo".to_owned(), lo)));
    }

    #[test]
    fn the_loopback_address_is_one_of_the_hosts_and_its_network_broadcasts() {
        let found = addresses().unwrap();
        assert!(
            found.local.contains(&IpAddr::from([127, 0, 0, 1])),
            "{found:?}"
        );
        assert!(
            found
                .broadcast
                .contains(&IpAddr::from([127, 255, 255, 255])),
            "{found:?}"
        );
    }

    #[test]
    fn local_routes_become_addresses_prefixes_and_broadcasts() {
        let route = |destination: &str, kind| LocalRoute {
            destination: destination.parse().unwrap(),
            kind,
        };
        let mut found = Addresses::default();
        found.add_route(route("198.19.253.0/24", LocalKind::Host));
        found.add_route(route("2001:db8:1::/128", LocalKind::Host));
        found.add_route(route("127.0.0.0/8", LocalKind::Host));
        found.add_route(route("198.19.0.255/32", LocalKind::Broadcast));
        assert_eq!(
            found.prefixes,
            BTreeSet::from(["198.19.253.0/24".parse().unwrap()])
        );
        assert_eq!(
            found.local,
            BTreeSet::from(["2001:db8:1::".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(
            found.broadcast,
            BTreeSet::from(["198.19.0.255".parse::<IpAddr>().unwrap()])
        );
    }
}
