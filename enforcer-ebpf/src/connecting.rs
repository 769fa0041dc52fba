//! TCP connections whose `connect()` the calling task cannot speak for.
//!
//! The connect hooks decide with the segment of the calling task. That is the segment of
//! the socket's owner only when the owner connects: the kernel connects sockets itself
//! (the MPTCP path manager opens a subflow of a segment's connection from a kernel
//! worker, to an address or port the peer announced or from one of the host's `subflow`
//! endpoints; the socket is the segment's, the worker is in the root cgroup), and a
//! socket can be connected by a task of another cgroup than the one it was made in (one
//! handed over with `SCM_RIGHTS`). So every SYN is held at `skb_egress`, where the
//! socket's own cgroup is known: a SYN whose `connect()` a task of the socket's cgroup
//! decided, or a task of the socket's segment under the active generation (the same
//! decision), passes as decided; any other is decided there against the socket's segment
//! and recorded. [`CONNECT_DECISIONS`] (socket storage, freed with the socket) carries
//! the connect hook's decision to the egress hook.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, BPF_TCP_SYN_SENT, bpf_sock},
    helpers::{
        bpf_get_current_cgroup_id, bpf_sk_fullsock, bpf_sk_storage_get, bpf_skc_to_mptcp_sock,
    },
    programs::{SkBuffContext, SockAddrContext},
};
use enforcer_common::maps::{ConnectDecision, PROTO_TCP};

use crate::maps::CONNECT_DECISIONS;

/// [`CONNECT_DECISIONS`] as the storage helpers take it.
///
/// Verifier note: the address of the `#[btf_map]` static is the map (the loader
/// relocates it to the map's descriptor), which is what aya's own `SkStorage` methods
/// pass; they take a `SockAddrContext` only, so the egress hook calls the helper itself.
#[inline(always)]
fn map() -> *mut c_void {
    (&raw const CONNECT_DECISIONS).cast_mut().cast()
}

/// Whether the socket `sk` is a subflow of a Multipath TCP connection (the socket a
/// `connect()` on an `IPPROTO_MPTCP` socket reaches the hooks with is its first subflow,
/// a TCP socket).
///
/// Verifier note: `sk` must be a pointer the verifier knows as a socket (the `sk` of a
/// sock_addr context, or what `bpf_sk_fullsock` returned). `bpf_skc_to_mptcp_sock`
/// returns a BTF pointer to the connection's `mptcp_sock`, or null for any other socket;
/// only the null test is made, no field is read (that would need CO-RE relocations).
#[inline(always)]
pub fn is_mptcp_subflow(sk: *mut c_void) -> bool {
    // SAFETY: the helper only casts a socket the verifier checked.
    !unsafe { bpf_skc_to_mptcp_sock(sk) }.is_null()
}

/// Notes that the calling task's `connect()` on the socket of `ctx` was decided
/// (`denied` or not) as a flow of segment `segment` under generation `generation`, for
/// the egress hook to hold the SYN to. A failed allocation only means the SYN is decided
/// again at egress.
#[inline(always)]
pub fn decided_at_connect(ctx: &SockAddrContext, segment: u32, generation: u32, denied: bool) {
    // SAFETY: a helper without memory arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    write(
        CONNECT_DECISIONS.get_or_insert_ptr_mut(ctx, None),
        cgroup_id,
        segment,
        generation,
        denied,
    );
}

/// Fills the storage `decision` points to, unless it is null.
#[inline(always)]
fn write(
    decision: *mut ConnectDecision,
    cgroup_id: u64,
    segment: u32,
    generation: u32,
    denied: bool,
) {
    if !decision.is_null() {
        // SAFETY: the socket's storage, checked for null.
        unsafe {
            (*decision).cgroup_id = cgroup_id;
            (*decision).segment = segment;
            (*decision).generation = generation;
            (*decision).denied = u8::from(denied);
        }
    }
}

/// Forgets any decision noted for the socket of `ctx`: its `connect()` is left to the
/// egress hook.
#[inline(always)]
pub fn left_to_egress(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the whole run; `sk` is its socket.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // Nothing noted is as good as forgotten.
    let _ = CONNECT_DECISIONS.delete(sk);
}

/// The socket that sent `ctx`'s packet when it is a TCP socket still connecting
/// (`SYN_SENT`): the packet is its SYN (first, retransmitted, or a Fast Open SYN with
/// data); else null. No header is parsed: the socket's state says what the packet is.
///
/// Verifier notes: the packet's `sk` is a socket-common pointer that may be null, whose
/// `state` may be read (not its `protocol`); `bpf_sk_fullsock` gives the full socket,
/// whose `protocol` may be read (`SYN_SENT` is a TCP state, but only the protocol says
/// so for certain). Both are read with 4-byte loads.
#[inline(always)]
pub fn connecting_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context pointer is valid for the whole run of the program.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: checked for null; the verifier allows reading `state` of a socket-common.
    if unsafe { (*sk).state } != BPF_TCP_SYN_SENT {
        return ptr::null_mut();
    }
    // SAFETY: `sk` is the packet's socket, checked for null.
    let full = unsafe { bpf_sk_fullsock(sk) };
    // SAFETY: checked for null before the read.
    if full.is_null() || unsafe { (*full).protocol } != u32::from(PROTO_TCP) {
        return ptr::null_mut();
    }
    full
}

/// How the connection the full socket `sk` is opening was decided, as noted in its
/// storage; all zero when nothing was noted (a kernel worker's `connect()`, or one made
/// before the hooks were attached): cgroup id 0 and generation 0 match no cgroup and no
/// active generation.
///
/// Verifier note: a copy with a zero sentinel, not an `Option` (see
/// `decide::listener_segment`).
#[inline(always)]
pub fn noted(sk: *mut bpf_sock) -> ConnectDecision {
    // SAFETY: `sk` is a full socket the verifier checked; no value, no flags: a lookup.
    let decision = unsafe { bpf_sk_storage_get(map(), sk.cast(), ptr::null_mut(), 0) }
        .cast::<ConnectDecision>();
    if decision.is_null() {
        ConnectDecision::default()
    } else {
        // SAFETY: the socket's storage, checked for null.
        unsafe { *decision }
    }
}

/// Notes the egress hook's decision on the connection `sk` (of cgroup `owner`, segment
/// `segment`) is opening under `generation`, so that its retransmitted SYNs follow it
/// unrecorded.
#[inline(always)]
pub fn decided_at_egress(
    sk: *mut bpf_sock,
    owner: u64,
    segment: u32,
    generation: u32,
    denied: bool,
) {
    // SAFETY: as in `noted`; with the create flag and no value, the storage starts zeroed.
    let decision = unsafe {
        bpf_sk_storage_get(
            map(),
            sk.cast(),
            ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<ConnectDecision>();
    write(decision, owner, segment, generation, denied);
}
