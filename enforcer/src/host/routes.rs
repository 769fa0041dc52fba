//! The routes that make destinations this host's: every `local` and `anycast` route (the
//! interface addresses, AnyIP prefixes, IPv6 anycast addresses) and every `broadcast`
//! route, in any routing table (the kernel's `local` table holds most, but a `local`
//! route in `main` delivers here too), read with rtnetlink dumps filtered by route type.

use std::{io, net::IpAddr};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What a `local`, `anycast` or `broadcast` route makes of its destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// Delivered to this host (`local` and `anycast` routes).
    Host,
    /// Accepted as broadcast (`broadcast` routes).
    Broadcast,
}

/// One route that this host accepts traffic for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRoute {
    /// The destinations it covers.
    pub destination: IpNet,
    /// What it makes of them.
    pub kind: LocalKind,
}

/// Every `local`, `anycast` and `broadcast` route of every table, IPv4 and IPv6. Other
/// kinds (the IPv6 `multicast ff00::/8` route) are left out: a multicast destination is
/// its own class whatever the tables say.
pub fn local_routes() -> io::Result<Vec<LocalRoute>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    // With strict checking the kernel dumps only the routes of the type the request
    // names, from every table: a host with a full routing table sends only these.
    socket.set_netlink_get_strict_chk(true)?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut routes = Vec::new();
    let mut sequence = 0;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for kind in [RouteType::Local, RouteType::Anycast, RouteType::Broadcast] {
            sequence += 1;
            request(&socket, sequence, family, kind)?;
            receive(&socket, sequence, &mut routes)?;
        }
    }
    Ok(routes)
}

/// Sends the dump request for `family`'s routes of type `kind`, in every table.
fn request(
    socket: &Socket,
    sequence: u32,
    family: AddressFamily,
    kind: RouteType,
) -> io::Result<()> {
    let header = RouteHeader {
        address_family: family,
        kind,
        ..RouteHeader::default()
    };
    let mut route = RouteMessage::default();
    route.header = header;
    send(
        socket,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        RouteNetlinkMessage::GetRoute(route),
    )
}

/// Sends `request` on `socket` with header `flags` and `sequence`.
pub(super) fn send(
    socket: &Socket,
    flags: u16,
    sequence: u32,
    request: RouteNetlinkMessage,
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(request));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(())
}

/// The rtnetlink message at the start of `bytes`.
pub(super) fn decode(bytes: &[u8]) -> io::Result<NetlinkMessage<RouteNetlinkMessage>> {
    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))
}

/// Reads the answers to request `sequence` until the dump is done, adding the routes
/// that make destinations this host's to `routes`.
fn receive(socket: &Socket, sequence: u32, routes: &mut Vec<LocalRoute>) -> io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let received = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < received {
            let message = decode(&buffer[offset..received])?;
            let length = message.header.length as usize;
            if length == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "rtnetlink sent a message of length 0",
                ));
            }
            offset += length;
            if message.header.sequence_number != sequence {
                continue;
            }
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                    routes.extend(local_route(&route));
                }
                _ => {}
            }
        }
    }
}

/// The route `route` as a [`LocalRoute`], when it makes destinations this host's.
fn local_route(route: &RouteMessage) -> Option<LocalRoute> {
    let kind = match route.header.kind {
        RouteType::Local | RouteType::Anycast => LocalKind::Host,
        RouteType::Broadcast => LocalKind::Broadcast,
        _ => return None,
    };
    let address = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })?;
    let destination = IpNet::new(address, route.header.destination_prefix_length).ok()?;
    Some(LocalRoute {
        destination: destination.trunc(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_prefix_and_address_are_local_routes() {
        let routes = local_routes().expect("the local routes can be dumped");
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        let v6: IpNet = "::1/128".parse().unwrap();
        for wanted in [loopback, v6] {
            assert!(
                routes
                    .iter()
                    .any(|route| route.destination == wanted && route.kind == LocalKind::Host),
                "{wanted} missing from {routes:?}"
            );
        }
        assert!(
            routes
                .iter()
                .all(|route| !route.destination.addr().is_multicast())
        );
    }
}
