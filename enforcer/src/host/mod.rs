//! Facts about the host the agent runs on, read from the kernel each time they are
//! needed: where cgroup v2 and bpffs are mounted ([`mounts`]), cgroup ids and paths
//! ([`cgroups`]), network interfaces ([`interfaces`]) and the `local` routing table
//! ([`routes`]), the sockets that receive flows
//! ([`sockets`]), the host's name ([`hostname`]) and its network namespace
//! ([`netns_cookie`]).
//! Nothing here knows about policies, the kernel programs or the audit trail.

pub mod cgroups;
pub mod interfaces;
pub mod mounts;
pub mod routes;
pub mod sockets;

pub use mounts::{
    DEFAULT_BPFFS, HostError, Mount, cgroup2_mount, ensure_bpffs, is_bpffs, on_bpffs,
    parse_mountinfo,
};

/// The host's name (`localhost` when the kernel will not say).
pub fn hostname() -> String {
    let mut name = [0 as libc::c_char; 256];
    // SAFETY: `name` is writable for its whole length, which is passed.
    if unsafe { libc::gethostname(name.as_mut_ptr(), name.len() - 1) } != 0 {
        return "localhost".to_owned();
    }
    // SAFETY: gethostname wrote a NUL-terminated name (the last byte stays 0).
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, kernel 5.14),
/// the value the kernel programs' `bpf_get_netns_cookie` returns for sockets there.
pub fn netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and `cookie`/`len` describe a writable u64.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
