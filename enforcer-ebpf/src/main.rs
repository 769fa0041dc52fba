//! The enforcer kernel programs: one per hook named in DESIGN.md.
//!
//! Until the datapath lands these programs decide nothing: every hook lets the flow
//! through. They already carry the final program names, section types and maps, so the
//! agent, the loader and the tests are built against the real object.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya-ebpf's program macros emit undocumented `extern \"C\"` wrappers"
)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock, cgroup_sock_addr, map, xdp},
    maps::RingBuf,
    programs::{SockAddrContext, SockContext, XdpContext},
};
use enforcer_common::maps::EVENTS_RING_BYTES;

/// cgroup sock and sock_addr programs return 1 to let the call proceed.
const CGROUP_ALLOW: i32 = 1;

/// Per-flow audit records ([`enforcer_common::event::FlowEvent`]) for the agent.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// XDP ingress on the host's interfaces.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    try_xdp_ingress(&ctx).unwrap_or_else(|action| action)
}

fn try_xdp_ingress(_ctx: &XdpContext) -> Result<u32, u32> {
    Ok(xdp_action::XDP_PASS)
}

/// Outbound IPv4 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv6 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv4 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx).unwrap_or_else(|ret| ret)
}

/// Outbound IPv6 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sock_addr(&ctx).unwrap_or_else(|ret| ret)
}

fn try_sock_addr(_ctx: &SockAddrContext) -> Result<i32, i32> {
    Ok(CGROUP_ALLOW)
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
