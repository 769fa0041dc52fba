//! Notices changes to the host's interfaces, addresses and routes through rtnetlink: the
//! kernel's multicast groups for links, for IPv4 and IPv6 addresses, and for IPv4 and
//! IPv6 routes (a `local` route added with `ip route add local`, an IPv6 anycast address). What changed is
//! not parsed; any message (or a lost one: a full socket buffer) means "read the
//! interfaces and addresses again", so nothing is missed however a change arrives.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

/// The rtnetlink groups of link, address and route changes.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// A running watch; dropping it stops watching.
pub struct HostWatch {
    task: JoinHandle<()>,
}

impl Drop for HostWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching (on the current tokio runtime) and sends `()` on `changes` after
/// every interface or address change. Changes made from now on are seen: read the
/// interfaces and addresses after this returns, not before.
pub fn watch_host(changes: mpsc::UnboundedSender<()>) -> io::Result<HostWatch> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, GROUPS))?;
    socket.set_non_blocking(true)?;
    // SAFETY: the descriptor belongs to the socket the `AsyncFd` owns: it stays open and
    // the same until the `AsyncFd` is dropped.
    let socket = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut ready) = socket.readable().await else {
                return;
            };
            let mut changed = false;
            loop {
                match socket.get_ref().recv(&mut &mut buf[..], 0) {
                    Ok(_) => changed = true,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    // Messages were dropped: read everything again.
                    Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading rtnetlink changes");
                        changed = true;
                        break;
                    }
                }
            }
            ready.clear_ready();
            // The receiver is gone only when the agent is stopping.
            if changed && changes.send(()).is_err() {
                return;
            }
        }
    });
    Ok(HostWatch { task })
}
