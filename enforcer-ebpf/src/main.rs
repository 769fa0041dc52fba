//! The enforcer kernel programs: one per hook named in DESIGN.md.
//!
//! Decided so far: new inbound flows at XDP ingress, and outbound `connect()` and
//! unconnected `sendmsg()` from local processes (IPv4 and IPv6), by the two ends'
//! segments and the rules of the active generation. The `sock_create` and `post_bind`
//! hooks still let everything through. Before the first policy is applied (generation 0) every hook lets
//! everything through: the agent applies a policy before it attaches anything.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya-ebpf's program macros emit undocumented `extern \"C\"` wrappers"
)]

mod decide;
mod maps;
mod xdp;

use maps::Slot;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock, cgroup_sock_addr, xdp},
    programs::{SockAddrContext, SockContext, XdpContext},
};
use enforcer_common::event::Verdict;

/// cgroup sock and sock_addr programs return 1 to let the call proceed.
const CGROUP_ALLOW: i32 = 1;
/// ... and 0 to refuse it: the caller sees EPERM.
const CGROUP_DENY: i32 = 0;

/// XDP ingress on the host's interfaces.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    try_xdp_ingress(&ctx).unwrap_or_else(|action| action)
}

fn try_xdp_ingress(ctx: &XdpContext) -> Result<u32, u32> {
    let generation = maps::active_generation();
    if generation == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    let decided = if generation % 2 == 0 {
        xdp::ingress(ctx, &Slot::<false>)
    } else {
        xdp::ingress(ctx, &Slot::<true>)
    };
    decided.map_err(|xdp::Malformed| xdp_action::XDP_DROP)
}

/// Outbound IPv4 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_sock_addr4(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv6 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    try_sock_addr6(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv4 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sock_addr4(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv6 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sock_addr6(&ctx).unwrap_or_else(|ret| ret)
}

/// The destination port and protocol of a sock_addr call.
///
/// Verifier note: `user_port` and `protocol` are read with full 4-byte loads, the only
/// width the kernel accepts for these context fields; the port is in network byte order
/// in the low 16 bits.
#[inline(always)]
fn port_and_proto(ctx: &SockAddrContext) -> (u16, u8) {
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (port, proto) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    (u16::from_be(port as u16), proto as u8)
}

/// Allow, or refuse with EPERM; audit-mode denials pass.
#[inline(always)]
fn verdict_to_return(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Deny => CGROUP_DENY,
        Verdict::Allow | Verdict::Audit => CGROUP_ALLOW,
    }
}

fn try_sock_addr4(ctx: &SockAddrContext) -> Result<i32, i32> {
    match maps::active_generation() {
        0 => Ok(CGROUP_ALLOW),
        generation if generation % 2 == 0 => Ok(sock_addr4(ctx, &Slot::<false>)),
        _ => Ok(sock_addr4(ctx, &Slot::<true>)),
    }
}

fn try_sock_addr6(ctx: &SockAddrContext) -> Result<i32, i32> {
    match maps::active_generation() {
        0 => Ok(CGROUP_ALLOW),
        generation if generation % 2 == 0 => Ok(sock_addr6(ctx, &Slot::<false>)),
        _ => Ok(sock_addr6(ctx, &Slot::<true>)),
    }
}

#[inline(always)]
fn sock_addr4<const B: bool>(ctx: &SockAddrContext, slot: &Slot<B>) -> i32 {
    // SAFETY: as above; `user_ip4` is a 4-byte field in network byte order.
    let addr = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    let (port, proto) = port_and_proto(ctx);
    let src = decide::task_segment(slot);
    let dst = decide::ipv4_segment(slot, addr);
    verdict_to_return(decide::flow(slot, src, dst, proto, port).verdict)
}

#[inline(always)]
fn sock_addr6<const B: bool>(ctx: &SockAddrContext, slot: &Slot<B>) -> i32 {
    // SAFETY: as above; each `user_ip6` word is read with a 4-byte load.
    let words = unsafe { (*ctx.sock_addr).user_ip6 };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let bytes = words[i].to_ne_bytes();
        addr[i * 4] = bytes[0];
        addr[i * 4 + 1] = bytes[1];
        addr[i * 4 + 2] = bytes[2];
        addr[i * 4 + 3] = bytes[3];
        i += 1;
    }
    let (port, proto) = port_and_proto(ctx);
    let src = decide::task_segment(slot);
    let dst = decide::ipv6_segment(slot, addr);
    verdict_to_return(decide::flow(slot, src, dst, proto, port).verdict)
}

/// `socket()` creation: where raw and packet sockets will be refused to segmented processes.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    try_sock(&ctx).unwrap_or_else(|ret| ret)
}

/// IPv4 `bind()` completion: where listener ports will be learnt per segment.
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    try_sock(&ctx).unwrap_or_else(|ret| ret)
}

/// IPv6 `bind()` completion: where listener ports will be learnt per segment.
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    try_sock(&ctx).unwrap_or_else(|ret| ret)
}

fn try_sock(_ctx: &SockContext) -> Result<i32, i32> {
    Ok(CGROUP_ALLOW)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a loaded program: the verifier rejects any path that could get here.
    loop {}
}

/// The kernel refuses GPL-only helpers to programs without a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
