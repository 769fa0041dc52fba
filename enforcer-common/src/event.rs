//! The per-flow audit event that kernel programs write into the ring buffer.

use crate::wire::wire_enum;

wire_enum! {
    /// The kernel hook that produced an event; its name is the program's.
    pub enum Hook {
        /// XDP ingress on a host interface.
        XdpIngress = 1 => "xdp_ingress",
        /// cgroup `connect4`.
        Connect4 = 2 => "connect4",
        /// cgroup `connect6`.
        Connect6 = 3 => "connect6",
        /// cgroup `sendmsg4`.
        Sendmsg4 = 4 => "sendmsg4",
        /// cgroup `sendmsg6`.
        Sendmsg6 = 5 => "sendmsg6",
        /// cgroup `sock_create`.
        SockCreate = 6 => "sock_create",
        /// cgroup `post_bind4`.
        PostBind4 = 7 => "post_bind4",
        /// cgroup `post_bind6`.
        PostBind6 = 8 => "post_bind6",
        /// cgroup `sock_release`.
        SockRelease = 9 => "sock_release",
        /// cgroup `setsockopt`: source-route and routing-header socket options.
        Setsockopt = 10 => "setsockopt",
        /// cgroup skb egress: packets of segment sockets carrying a source route.
        SkbEgress = 11 => "skb_egress",
        /// cgroup `bind4`: notes which sockets asked for a port of their own.
        Bind4 = 12 => "bind4",
        /// cgroup `bind6`: as `bind4`, for IPv6 sockets.
        Bind6 = 13 => "bind6",
        /// cgroup skb ingress: new inbound flows to a local socket, decided against the
        /// socket's segment (the per-socket layer).
        SkbIngress = 14 => "skb_ingress",
    }
    /// The program's name in the eBPF object, as loaded and pinned.
    fn program_name;
}

wire_enum! {
    /// What a hook decided for a flow.
    pub enum Verdict {
        /// The flow was let through by policy.
        Allow = 1 => "allow",
        /// The flow was refused.
        Deny = 2 => "deny",
        /// The flow would have been denied but its segment is in audit mode, so it passed.
        Audit = 3 => "audit",
    }
    /// The word audit records, the CLI and metrics use for the verdict.
    fn word;
}

wire_enum! {
    /// Why a verdict was reached, when it was not a rule (then `rule_id` names the rule).
    pub enum Reason {
        /// A policy rule matched; the event's `rule_id` names it.
        Rule = 1 => "rule",
        /// No rule matched between two classified segments.
        DefaultDeny = 2 => "default-deny",
        /// A side of the flow could not be classified; the configured default applied.
        Unclassified = 3 => "unclassified",
        /// Failsafe management access matched.
        Failsafe = 4 => "failsafe",
        /// The packet was malformed or truncated; the documented fixed verdict applied.
        Malformed = 5 => "malformed",
        /// A raw or packet socket, decided by the segment's `raw_sockets` grant.
        RawSocket = 6 => "raw-socket",
        /// The agent could not write audit records and is configured to fail closed: the
        /// flow was denied whatever the policy says.
        AuditUnavailable = 7 => "audit-unavailable",
        /// A source route or routing header from a process of a segment (a socket option,
        /// or a packet carrying one): refused, whatever the destination.
        SourceRoute = 8 => "source-route",
        /// A process joined a socket group (`SO_REUSEPORT`) on an address and port that a
        /// process of another segment holds: refused, so it cannot take a share of that
        /// segment's connections.
        ListenerTaken = 9 => "listener-taken",
        /// A process of a segment turned on `IP_RECVERR`/`IPV6_RECVERR`, which queues ICMP
        /// errors on its socket with the bytes they carry (any host can send one): decided
        /// by the segment's `icmp_errors` grant.
        IcmpErrors = 10 => "icmp-errors",
        /// A packet of a segment's socket to an address of this host leaving through
        /// another interface than loopback (the socket is bound to a device, or named
        /// the interface for one `sendmsg`): its flow was decided as one to this host, so
        /// it is dropped, whatever the policy says.
        LocalElsewhere = 11 => "local-elsewhere",
    }
    /// The word audit records, `status` and metrics use for the reason.
    fn word;
}

/// Address family of an event's addresses (the Linux `AF_*` values).
pub mod family {
    /// IPv4: the first four bytes of each address field hold the address.
    pub const INET: u8 = 2;
    /// IPv6: all sixteen bytes hold the address.
    pub const INET6: u8 = 10;
}

/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// One flow decision, as written by a kernel program into the ring buffer.
///
/// Fields are ordered by alignment so that the record has no implicit padding;
/// `_pad` makes the tail explicit. Addresses are in network byte order, ports in
/// host byte order. Fields a hook cannot know (pid/comm at XDP, ifindex at the
/// cgroup hooks) are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub timestamp_ns: u64,
    /// cgroup v2 id of the calling task (cgroup hooks only).
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid`: tgid in the high half, pid in the low half.
    pub pid_tgid: u64,
    /// The policy generation that decided.
    pub generation: u32,
    /// The matched rule's numeric id for [`Reason::Rule`], the failsafe's number for
    /// [`Reason::Failsafe`], else 0.
    pub rule_id: u32,
    /// Numeric id of the source segment.
    pub src_segment: u32,
    /// Numeric id of the destination segment.
    pub dst_segment: u32,
    /// Ingress interface index (XDP only).
    pub ifindex: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Source address (IPv4 in the first four bytes).
    pub src_addr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst_addr: [u8; 16],
    /// Command name of the calling task (cgroup hooks only), NUL padded.
    pub comm: [u8; COMM_LEN],
    /// [`Hook`] code.
    pub hook: u8,
    /// [`Verdict`] code.
    pub verdict: u8,
    /// [`Reason`] code.
    pub reason: u8,
    /// Address family, one of [`family`].
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP; an MPTCP subflow is 6 with [`FLOW_FLAG_MPTCP`],
    /// which records write as 262); for [`Reason::SourceRoute`] and
    /// [`Reason::IcmpErrors`] what was refused
    /// (see `docs/datapath.md`).
    pub protocol: u8,
    /// `FLOW_FLAG_*` bits: what the hook found out about the flow beyond its fields.
    pub flags: u8,
    /// `FOLD_*` code: which attempts [`Self::count`] covers.
    pub fold: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// `bpf_ktime_get_boot_ns` of the earliest attempt this event covers (the same as
    /// `timestamp_ns` when it covers one).
    pub first_ns: u64,
    /// How many attempts this event stands for: itself and those folded into it since the
    /// fold's previous event (at least 1). Every decided attempt is in exactly one event's
    /// count, or counted as lost.
    pub count: u32,
    /// Explicit tail padding; always zero.
    pub _tail: u32,
}

/// [`FlowEvent::fold`]: the event stands for itself alone (no fold state could be kept:
/// folding off, or the fold table full).
pub const FOLD_NONE: u8 = 0;
/// [`FlowEvent::fold`]: attempts of one flow (same addresses, ports, process, verdict):
/// a SYN retransmit, the next datagram of a UDP stream.
pub const FOLD_FLOW: u8 = 1;
/// [`FlowEvent::fold`]: denied attempts from one source address to one destination
/// address and port under one rule, whatever the source port.
pub const FOLD_SOURCE: u8 = 2;
/// [`FlowEvent::fold`]: denied attempts to one destination address and port under one
/// rule from sources beyond the fold threshold; the event names the latest source.
pub const FOLD_DESTINATION: u8 = 3;

/// [`FlowEvent::flags`] bit: the flow stays on this host. Set by the outbound hooks when
/// the destination address is this host (loopback, the unspecified address, an address
/// of the host or one its `local` routes deliver here: the destination segment is the
/// one serving the port, not the address's), and by the per-socket layer for a packet
/// from a local process (the source segment is the sender's, not its address's).
pub const FLOW_FLAG_ON_THIS_HOST: u8 = 1;

/// [`FlowEvent::flags`] bit: the flow is a Multipath TCP subflow (`IPPROTO_MPTCP`, 262,
/// which is TCP on the wire): its record carries protocol 6 and this bit, because the
/// event's protocol field holds 8 bits. The decision is TCP's (rules on `tcp` ports apply).
pub const FLOW_FLAG_MPTCP: u8 = 2;

/// `IPPROTO_MPTCP`: the protocol number of a Multipath TCP socket, which records carry for
/// a flow flagged [`FLOW_FLAG_MPTCP`]. Wider than [`FlowEvent::protocol`].
pub const IPPROTO_MPTCP: u16 = 262;

const _: () = assert!(size_of::<FlowEvent>() == 120);
const _: () = assert!(align_of::<FlowEvent>() == 8);

impl FlowEvent {
    /// An all-zero event, the starting point for a kernel program filling one in.
    pub const ZEROED: Self = Self {
        timestamp_ns: 0,
        cgroup_id: 0,
        pid_tgid: 0,
        generation: 0,
        rule_id: 0,
        src_segment: 0,
        dst_segment: 0,
        ifindex: 0,
        src_port: 0,
        dst_port: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        comm: [0; COMM_LEN],
        hook: 0,
        verdict: 0,
        reason: 0,
        family: 0,
        protocol: 0,
        flags: 0,
        fold: FOLD_NONE,
        _pad: 0,
        first_ns: 0,
        count: 1,
        _tail: 0,
    };
}

// SAFETY: `FlowEvent` is `repr(C)`, `Copy`, made only of integers and byte arrays, and has
// no implicit padding (asserted above), so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_codes_round_trip() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_code(hook as u8), Some(hook));
        }
        assert_eq!(Hook::from_code(0), None);
        assert_eq!(Hook::from_code(Hook::ALL.len() as u8 + 1), None);
    }

    #[test]
    fn verdict_and_reason_codes_round_trip() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v as u8), Some(v));
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r as u8), Some(r));
        }
        assert_eq!(Verdict::from_code(0), None);
        assert_eq!(Reason::from_code(0), None);
    }

    #[test]
    fn event_fields_sit_at_fixed_offsets() {
        assert_eq!(core::mem::offset_of!(FlowEvent, generation), 24);
        assert_eq!(core::mem::offset_of!(FlowEvent, src_addr), 48);
        assert_eq!(core::mem::offset_of!(FlowEvent, comm), 80);
        assert_eq!(core::mem::offset_of!(FlowEvent, hook), 96);
        assert_eq!(core::mem::offset_of!(FlowEvent, flags), 101);
        assert_eq!(core::mem::offset_of!(FlowEvent, fold), 102);
        assert_eq!(core::mem::offset_of!(FlowEvent, first_ns), 104);
        assert_eq!(core::mem::offset_of!(FlowEvent, count), 112);
    }
}
