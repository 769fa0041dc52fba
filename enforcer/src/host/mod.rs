//! Facts about the host the agent runs on, read from the kernel each time they are
//! needed: where cgroup v2 and bpffs are mounted ([`mounts`]), cgroup ids and paths
//! ([`cgroups`]), network interfaces ([`interfaces`]), the sockets that receive flows
//! ([`sockets`]) and the host's name ([`hostname`]).
//! Nothing here knows about policies, the kernel programs or the audit trail.

pub mod cgroups;
pub mod interfaces;
pub mod mounts;
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
