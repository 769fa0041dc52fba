//! The sockets that exist now: listening TCP sockets and bound UDP sockets of this network
//! namespace, with the cgroup each was created in, through the kernel's `sock_diag`
//! netlink interface (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY` dumps). The kernel adds
//! the socket's cgroup id to every answer (`INET_DIAG_CGROUP_ID`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST: u16 = 0x1 | 0x300;
/// `INET_DIAG_CGROUP_ID`: the attribute carrying the socket's cgroup id.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `TCP_LISTEN`, as a state bit.
const LISTENING: u32 = 1 << 10;
/// `TCP_CLOSE`, the state of a bound, unconnected UDP socket, as a state bit.
const UNCONNECTED: u32 = 1 << 7;
/// Length of `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// Length of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// One socket that receives new flows: a listening TCP socket or a bound UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address it is bound to (unspecified for every address).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// The socket's cookie, as `bpf_get_socket_cookie` gives it.
    pub cookie: u64,
    /// The id of the cgroup the socket was created in.
    pub cgroup_id: u64,
}

/// Every listening TCP socket and every bound, unconnected UDP socket of this network
/// namespace, IPv4 and IPv6.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut found = Vec::new();
    for (family, proto, states) in [
        (libc::AF_INET, libc::IPPROTO_TCP, LISTENING),
        (libc::AF_INET6, libc::IPPROTO_TCP, LISTENING),
        (libc::AF_INET, libc::IPPROTO_UDP, UNCONNECTED),
        (libc::AF_INET6, libc::IPPROTO_UDP, UNCONNECTED),
    ] {
        dump(&socket, family as u8, proto as u8, states, &mut found)?;
    }
    Ok(found)
}

/// The request: a `nlmsghdr` and an `inet_diag_req_v2` for every socket of `family`,
/// `proto` in `states`.
fn request(family: u8, proto: u8, states: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(HEADER_LEN + 56);
    message.extend_from_slice(&((HEADER_LEN + 56) as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&DUMP_REQUEST.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(&[family, proto, 0, 0]);
    message.extend_from_slice(&states.to_ne_bytes());
    message.extend_from_slice(&[0; 48]); // inet_diag_sockid: every socket
    message
}

fn dump(
    socket: &Socket,
    family: u8,
    proto: u8,
    states: u32,
    found: &mut Vec<Listener>,
) -> io::Result<()> {
    socket.send(&request(family, proto, states), 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = socket.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at + HEADER_LEN <= len {
            let message_len = u32::from_ne_bytes(word(&buf, at)) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if message_len < HEADER_LEN || at + message_len > len {
                return Err(io::Error::other("sock_diag: a truncated message"));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(word(&buf, at + HEADER_LEN));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(listener) = parse(&buf[at + HEADER_LEN..at + message_len], proto) {
                        found.push(listener);
                    }
                }
                _ => {}
            }
            at += message_len.next_multiple_of(4);
        }
    }
}

fn word(buf: &[u8], at: usize) -> [u8; 4] {
    [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
}

/// One `inet_diag_msg` and its attributes.
fn parse(message: &[u8], proto: u8) -> Option<Listener> {
    if message.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = message[0];
    // inet_diag_sockid at 4: sport (be16), dport, src[16], dst[16], if, cookie[2].
    let port = u16::from_be_bytes([message[4], message[5]]);
    let src: [u8; 16] = message[8..24].try_into().ok()?;
    let addr = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(src))
    };
    let cookie_low = u32::from_ne_bytes(word(message, 44));
    let cookie_high = u32::from_ne_bytes(word(message, 48));
    let cookie = u64::from(cookie_high) << 32 | u64::from(cookie_low);
    let mut cgroup_id = None;
    let mut at = DIAG_MSG_LEN;
    while at + 4 <= message.len() {
        let attr_len = usize::from(u16::from_ne_bytes([message[at], message[at + 1]]));
        let kind = u16::from_ne_bytes([message[at + 2], message[at + 3]]);
        if attr_len < 4 || at + attr_len > message.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && attr_len >= 12 {
            cgroup_id = Some(u64::from_ne_bytes(
                message[at + 4..at + 12].try_into().ok()?,
            ));
        }
        at += attr_len.next_multiple_of(4);
    }
    Some(Listener {
        addr,
        port,
        proto,
        cookie,
        cgroup_id: cgroup_id?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_with_its_cgroup() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let found = listeners().unwrap();
        let ours = found
            .iter()
            .find(|l| l.proto == 6 && l.port == port)
            .unwrap_or_else(|| panic!("port {port} not in {found:?}"));
        assert_eq!(ours.addr, IpAddr::from([127, 0, 0, 1]));
        assert_ne!(ours.cgroup_id, 0);
        assert_ne!(ours.cookie, 0);
    }
}
