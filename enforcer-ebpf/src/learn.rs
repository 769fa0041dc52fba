//! Listener learning at `bind()`: which task's cgroup serves a local address and port,
//! and forgetting it when that socket is released. The ancestry is stored, not a
//! segment, so every later generation classifies the binding with its own cgroup table.
//! The key is the bound address as well as the port: a process that binds another
//! service's port on a more specific address (`127.0.0.2`) owns only the traffic the
//! kernel delivers to it there, not the port.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_sk_storage_get, bpf_skc_to_mptcp_sock,
    },
    programs::{SockAddrContext, SockContext},
};
use enforcer_common::maps::{
    BoundKey, CGROUP_LEVELS, LearntListener, PROTO_UDP, local_address_key,
};

use crate::maps::{self, BOUND_SOCKETS, EXPLICIT_BINDS, LEARNT_LISTENERS, MPTCP_BINDINGS};

/// Where `ctx`'s socket was just bound, as a [`LEARNT_LISTENERS`] key: an IPv4 socket
/// when `V4` (`post_bind4`), else an IPv6 one (`post_bind6`); `None` without a port.
///
/// Verifier notes: a `post_bind4` program may read only `src_ip4` of the addresses and a
/// `post_bind6` program only `src_ip6`, even on a path that never runs, hence the family
/// as a constant parameter rather than a branch on `family`. Fields are read with 4-byte
/// loads; `src_port` is in host byte order, the addresses in network byte order.
#[inline(always)]
pub fn bound<const V4: bool>(ctx: &SockContext) -> Option<BoundKey> {
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (port, proto) = unsafe { ((*ctx.sock).src_port, (*ctx.sock).protocol) };
    let (port, proto) = (port as u16, proto as u8);
    if port == 0 {
        return None;
    }
    let mut addr = [0u8; 16];
    if V4 {
        // SAFETY: as above.
        addr[..4].copy_from_slice(&unsafe { (*ctx.sock).src_ip4 }.to_ne_bytes());
    } else {
        // SAFETY: as above.
        let words = unsafe { (*ctx.sock).src_ip6 };
        let mut i = 0;
        while i < 4 {
            let bytes = words[i].to_ne_bytes();
            addr[i * 4] = bytes[0];
            addr[i * 4 + 1] = bytes[1];
            addr[i * 4 + 2] = bytes[2];
            addr[i * 4 + 3] = bytes[3];
            i += 1;
        }
    }
    Some(BoundKey::new(local_address_key(&addr, V4), port, proto))
}

/// Whether `ctx`'s socket lives in the agent's network namespace (or the namespace is not
/// known). A binding in another namespace (a container, `unshare -n`) receives none of
/// this host's flows: it is neither learnt nor weighed against the host's bindings.
#[inline(always)]
pub fn in_host_netns(ctx: &SockContext) -> bool {
    let expected = maps::host_settings().netns_cookie;
    // SAFETY: the helper reads the socket the context points to, valid for the run.
    expected == 0 || unsafe { bpf_get_netns_cookie(ctx.sock.cast()) } == expected
}

/// The learnt binding `ctx`'s socket (IPv4 when `V4`) now shares: another socket, not yet
/// released, bound to exactly the same address, port and protocol (an `SO_REUSEPORT`
/// group, or UDP `SO_REUSEADDR`); the kernel spreads the flows to that address over both.
#[inline(always)]
pub fn sharer<const V4: bool>(ctx: &SockContext) -> Option<*const LearntListener> {
    let key = bound::<V4>(ctx)?;
    let learnt = LEARNT_LISTENERS.get_ptr(&key)?;
    // SAFETY: the helper reads the socket the context points to, valid for the run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    // SAFETY: the pointer comes from a successful map lookup.
    let holder = unsafe { (*learnt).cookie };
    (holder != cookie && BOUND_SOCKETS.get_ptr(&holder).is_some()).then_some(learnt)
}

/// Notes that the socket of a `bind()` asked for port `requested` (host byte order) of its
/// own, for [`listener`]. Called from the `bind4/6` hooks, before the kernel binds.
#[inline(always)]
pub fn bind_requested(cookie: u64, requested: u16) {
    if requested != 0 {
        // A full LRU forgets the oldest: such a binding in the ephemeral range is then not
        // learnt, as if it had asked for port 0.
        //
        // Verifier note: the value is a local, not `&1`: a promoted constant went into a
        // `.rodata` section, which the loader would have to load as a map of its own.
        let asked: u8 = 1;
        let _ = EXPLICIT_BINDS.insert(&cookie, &asked, 0);
    }
}

/// Records the address and port `ctx`'s socket (IPv4 when `V4`) was just bound to, with
/// the calling task's cgroup ancestry, and remembers the binding under the socket's
/// cookie for its release. Callers learn only bindings in the agent's network namespace
/// ([`in_host_netns`]). A UDP port in the host's ephemeral range is learnt only when
/// the `bind()` asked for it: a client's `bind(0)` lands there too, and its replies must
/// not be decided as new inbound flows.
#[inline(always)]
pub fn listener<const V4: bool>(ctx: &SockContext) {
    let Some(key) = bound::<V4>(ctx) else {
        return;
    };
    // SAFETY: the helper reads the socket the context points to, valid for the run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let asked = EXPLICIT_BINDS.get_ptr(&cookie).is_some();
    if asked {
        let _ = EXPLICIT_BINDS.remove(&cookie);
    }
    let settings = maps::host_settings();
    if key.proto == PROTO_UDP
        && settings.ephemeral_low <= key.port
        && key.port <= settings.ephemeral_high
        && !asked
    {
        return;
    }
    let mut learnt = LearntListener {
        ancestors: [0; CGROUP_LEVELS],
        cookie,
    };
    let mut level = 0;
    while level < CGROUP_LEVELS {
        // SAFETY: a helper without memory arguments; allowed in cgroup sock hooks.
        learnt.ancestors[level] = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        level += 1;
    }
    // A full LRU evicts its least recently used binding; a failed insert leaves the port
    // classified as `host`, as if it had not been learnt.
    if LEARNT_LISTENERS.insert(&key, &learnt, 0).is_ok() {
        let _ = BOUND_SOCKETS.insert(&cookie, &key, 0);
    }
}

/// Forgets the binding `ctx`'s socket made, if it is still the one learnt for its
/// address and port (a later binding of the same address and port stays); for an MPTCP
/// socket, the binding its first subflow made ([`mptcp_bind`]).
///
/// Verifier note: a `sock_release` program may not read the socket's port or addresses,
/// so the binding is found through the socket's cookie ([`BOUND_SOCKETS`]).
#[inline(always)]
pub fn released(ctx: &SockContext) {
    // SAFETY: the helper reads the socket the context points to, valid for the run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    forget(cookie);
    // SAFETY: the release program's context is its socket, which the helper takes as
    // such; no value, no flags: a lookup.
    let subflow =
        unsafe { bpf_sk_storage_get(mptcp_bindings(), ctx.sock.cast(), ptr::null_mut(), 0) }
            .cast::<u64>();
    if !subflow.is_null() {
        // SAFETY: the socket's storage, checked for null.
        forget(unsafe { *subflow });
    }
}

/// Forgets the binding the socket with cookie `cookie` made, if it is still the one
/// learnt for its address and port.
#[inline(always)]
fn forget(cookie: u64) {
    let Some(key) = BOUND_SOCKETS.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup; copied before the delete.
    let key = unsafe { *key };
    let _ = BOUND_SOCKETS.remove(&cookie);
    if let Some(learnt) = LEARNT_LISTENERS.get_ptr(&key)
        // SAFETY: as above.
        && unsafe { (*learnt).cookie } == cookie
    {
        let _ = LEARNT_LISTENERS.remove(&key);
    }
}

/// [`MPTCP_BINDINGS`] as the storage helpers take it (the address of the `#[btf_map]`
/// static is the map; see `connecting::map`).
#[inline(always)]
fn mptcp_bindings() -> *mut c_void {
    (&raw const MPTCP_BINDINGS).cast_mut().cast()
}

/// Called from the `bind4/6` hooks with the cookie of `ctx`'s socket: when that socket is
/// the first subflow of an MPTCP socket (an MPTCP socket binds through it, and the
/// binding is learnt from it at `post_bind`), notes the cookie in the MPTCP socket's own
/// storage, so that the MPTCP socket's release, the only one the release hook sees,
/// forgets the binding ([`released`]).
///
/// Verifier note: `bpf_skc_to_mptcp_sock` gives a BTF pointer to the MPTCP socket (or
/// null), which the storage helper takes as a socket: its first member is a `struct
/// sock`. No field of it is read.
#[inline(always)]
pub fn mptcp_bind(ctx: &SockAddrContext, cookie: u64) {
    // SAFETY: the context pointer is valid for the whole run; `sk` is its socket.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: the helper only casts a socket the verifier checked.
    let mptcp = unsafe { bpf_skc_to_mptcp_sock(sk.cast()) };
    if mptcp.is_null() {
        return;
    }
    // SAFETY: `mptcp` is the connection's socket, checked for null; with the create flag
    // and no value, the storage starts zeroed.
    let subflow = unsafe {
        bpf_sk_storage_get(
            mptcp_bindings(),
            mptcp.cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<u64>();
    if !subflow.is_null() {
        // SAFETY: the socket's storage, checked for null.
        unsafe { *subflow = cookie };
    }
}
