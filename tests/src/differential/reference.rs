//! The reference: what the documentation says XDP ingress decides for a new inbound flow
//! ([`decide`]), and the cgroup hooks for an outbound one ([`decide_outbound`], held
//! against real connects by `tests/tools_agree_with_the_kernel.rs`), computed from the
//! generated [`Spec`] with linear scans, sharing nothing with the compiler,
//! `enforcer::policy::{lookup, reference}` or `enforcer_common::decision`.
//!
//! From policies/README.md ("Semantics") and docs/datapath.md ("Decision", "Fixed
//! verdicts at XDP ingress"), for a TCP SYN (without ACK) or a UDP datagram reaching this
//! host:
//! 1. The source is the segment with the longest prefix containing the source address,
//!    an IPv4-mapped IPv6 address taken as its IPv4 address, else `world`. (A prefix
//!    written in IPv4-mapped form is an IPv6 prefix, so it contains no address that is
//!    classified: a mapped source is looked up as IPv4.) Sources are never `broadcast` or
//!    `multicast`: those are destination classes.
//! 2. The destination is the segment declaring the port for the protocol, else `host`
//!    (no process has bound anything here, so nothing is learnt).
//! 3. A source address covered by a failsafe on its port passes (`failsafe`).
//! 4. UDP to a port no segment declares is not a flow the policy governs: it passes,
//!    unrecorded (replies to our own queries).
//! 5. The first matching deny rule denies; else the first matching allow rule allows;
//!    else `default-deny`. A rule matches when its `from` names the source segment or
//!    `*`, its `to` names the destination or `*` (which covers neither `broadcast` nor
//!    `multicast`), and a port spec covers the flow.
//! 6. A denial becomes `audit` (passes) when either segment is in audit mode.
//!
//! For an outbound `connect()` or `sendmsg()` from a local process ([`decide_outbound`];
//! policies/README.md "Semantics" and docs/datapath.md "Decision", "cgroup hooks"):
//! 1. The source is the segment listing the process's cgroup's nearest listed ancestor
//!    (the cgroup itself included), else `host`. The cgroup hooks walk the ancestry the
//!    same way; a cgroup created under a listed path's ancestor after the policy was
//!    applied would be `unclassified`, which the caller avoids by creating its cgroups
//!    first.
//! 2. A destination that is this host is the segment serving the port: the segment of a
//!    process bound there (the caller binds nothing), else the segment declaring the port
//!    for the protocol, else `host`. "This host" is loopback (`127.0.0.0/8`, `::1`), the
//!    unspecified address (`0.0.0.0`, `::`), their IPv4-mapped forms, and the host's own
//!    addresses and `local` routes, which no policy holds: the caller names them.
//! 3. Otherwise `255.255.255.255` and the broadcast address of every IPv4 network the
//!    host is on (host state: the caller names them) are `broadcast`, and `224.0.0.0/4`,
//!    `ff00::/8` are `multicast`; any other address is the segment with the longest
//!    prefix containing it, an IPv4-mapped address taken as its IPv4 address, else
//!    `world`.
//! 4. Failsafes do not apply: they grant source addresses access to this host's ports,
//!    and an outbound flow from a process has no source address the policy classifies.
//! 5. and 6. as for inbound flows: first matching deny, else first matching allow, else
//!    `default-deny`; `*` in `to` covers neither `broadcast` nor `multicast`; a denial is
//!    `audit` when either segment is in audit mode.

use super::{
    net::{Addr, Family, Net},
    spec::{Proto, Spec},
};

/// A decided flow, in the words audit records use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `allow`, `deny` or `audit`.
    pub verdict: &'static str,
    /// `rule`, `default-deny` or `failsafe`.
    pub reason: &'static str,
    /// The deciding rule's id (reason `rule`).
    pub rule: Option<String>,
    /// Every failsafe that grants the flow (reason `failsafe`); which one a record names
    /// is not specified, so any of them is right.
    pub failsafes: Vec<String>,
    /// The source segment.
    pub src: String,
    /// The destination segment.
    pub dst: String,
}

impl Decision {
    /// Whether the flow passes.
    pub fn passes(&self) -> bool {
        self.verdict != "deny"
    }
}

/// The segment of a source address (step 1).
pub fn source_segment(spec: &Spec, src: Addr) -> String {
    let src = src.as_classified();
    let mut best: Option<(u8, &str)> = None;
    for segment in &spec.segments {
        for net in &segment.cidrs {
            if net.contains(src) && best.is_none_or(|(len, _)| net.len > len) {
                best = Some((net.len, &segment.name));
            }
        }
    }
    best.map_or_else(|| "world".to_owned(), |(_, name)| name.to_owned())
}

/// The segment serving local port `port`/`proto` (step 2), if one declares it.
pub fn listener(spec: &Spec, proto: Proto, port: u16) -> Option<&str> {
    spec.segments
        .iter()
        .find(|s| s.ports.iter().any(|p| p.contains(proto, port)))
        .map(|s| s.name.as_str())
}

/// The failsafes that grant `addr` access to `port`/`proto` (step 3). The caller says
/// which address: the classified one is the documented behaviour.
pub fn granting_failsafes(spec: &Spec, addr: Addr, proto: Proto, port: u16) -> Vec<String> {
    spec.failsafes
        .iter()
        .filter(|f| f.port.contains(proto, port) && f.from.iter().any(|net| net.contains(addr)))
        .map(|f| f.name.clone())
        .collect()
}

/// The segment of a local process in cgroup `path` (relative to the cgroup2 root;
/// outbound step 1): the segment listing its nearest listed ancestor, else `host`.
pub fn cgroup_segment(spec: &Spec, path: &str) -> String {
    let path = path.trim_matches('/');
    let mut best: Option<(usize, &str)> = None;
    for segment in &spec.segments {
        for listed in &segment.cgroups {
            let listed = listed.trim_matches('/');
            let covers = path == listed
                || (path.len() > listed.len()
                    && path.starts_with(listed)
                    && path.as_bytes()[listed.len()] == b'/');
            if covers && best.is_none_or(|(len, _)| listed.len() > len) {
                best = Some((listed.len(), &segment.name));
            }
        }
    }
    best.map_or_else(|| "host".to_owned(), |(_, name)| name.to_owned())
}

/// Whether an outbound destination is this host (outbound step 2): loopback, the
/// unspecified address, an IPv4-mapped form of either, or an address in `host_nets` (the
/// host's own addresses and `local` routes, which the caller knows and no policy says).
pub fn is_this_host(dst: Addr, host_nets: &[Net]) -> bool {
    let classified = dst.as_classified();
    let special = match classified.family {
        Family::V4 => classified.bits >> 24 == 127 || classified.bits == 0,
        Family::V6 => classified.bits == 1 || classified.bits == 0,
    };
    special
        || host_nets
            .iter()
            .any(|net| net.contains(dst) || net.contains(classified))
}

/// The segment of an outbound destination that is not this host (outbound step 3);
/// `host_broadcasts` are the broadcast addresses of the host's IPv4 networks.
pub fn remote_segment(spec: &Spec, dst: Addr, host_broadcasts: &[Addr]) -> String {
    let classified = dst.as_classified();
    match classified.family {
        Family::V4 if classified.bits == 0xffff_ffff || host_broadcasts.contains(&classified) => {
            return "broadcast".to_owned();
        }
        Family::V4 if classified.bits >> 28 == 0xe => return "multicast".to_owned(),
        Family::V6 if classified.bits >> 120 == 0xff => return "multicast".to_owned(),
        _ => {}
    }
    source_segment(spec, dst)
}

/// The host state an outbound decision needs and no policy holds.
#[derive(Clone, Debug, Default)]
pub struct HostState {
    /// The host's own addresses and `local` routes (loopback and the unspecified address
    /// need not be named).
    pub nets: Vec<Net>,
    /// The broadcast addresses of the host's IPv4 networks.
    pub broadcasts: Vec<Addr>,
}

/// The documented decision for an outbound flow from a local process in cgroup `cgroup`
/// to `dst` on `port`/`proto` (the outbound steps above), and whether the destination is
/// this host.
pub fn decide_outbound(
    spec: &Spec,
    cgroup: &str,
    dst: Addr,
    host: &HostState,
    proto: Proto,
    port: u16,
) -> (Decision, bool) {
    let src_segment = cgroup_segment(spec, cgroup);
    let this_host = is_this_host(dst, &host.nets);
    let dst_segment = if this_host {
        listener(spec, proto, port).unwrap_or("host").to_owned()
    } else {
        remote_segment(spec, dst, &host.broadcasts)
    };
    (
        rules_decide(spec, src_segment, dst_segment, proto, port),
        this_host,
    )
}

/// Steps 5 and 6: the rules, then audit mode.
fn rules_decide(
    spec: &Spec,
    src_segment: String,
    dst_segment: String,
    proto: Proto,
    port: u16,
) -> Decision {
    let names = |list: &[String], segment: &str, destination: bool| {
        list.iter().any(|n| {
            n == segment
                || (n == "*"
                    && !(destination && (segment == "broadcast" || segment == "multicast")))
        })
    };
    let matching = |deny: bool| {
        spec.rules.iter().find(|r| {
            r.deny == deny
                && names(&r.from, &src_segment, false)
                && names(&r.to, &dst_segment, true)
                && r.ports.iter().any(|p| p.contains(proto, port))
        })
    };
    let (denied, reason, rule) = match (matching(true), matching(false)) {
        (Some(deny), _) => (true, "rule", Some(deny.id.clone())),
        (None, Some(allow)) => (false, "rule", Some(allow.id.clone())),
        (None, None) => (true, "default-deny", None),
    };
    let audit_mode = |name: &str| spec.segments.iter().any(|s| s.name == name && s.audit);
    let verdict = if !denied {
        "allow"
    } else if audit_mode(&src_segment) || audit_mode(&dst_segment) {
        "audit"
    } else {
        "deny"
    };
    Decision {
        verdict,
        reason,
        rule,
        failsafes: Vec::new(),
        src: src_segment,
        dst: dst_segment,
    }
}

/// The decision for a new inbound flow from `src` to local port `port`/`proto`, with
/// failsafes matched against `failsafe_addr`; `None` when the flow passes ungoverned
/// (step 4).
pub fn decide_with_failsafe_addr(
    spec: &Spec,
    src: Addr,
    failsafe_addr: Addr,
    proto: Proto,
    port: u16,
) -> Option<Decision> {
    let src_segment = source_segment(spec, src);
    let declared = listener(spec, proto, port);
    let dst_segment = declared.unwrap_or("host").to_owned();
    let failsafes = granting_failsafes(spec, failsafe_addr, proto, port);
    if !failsafes.is_empty() {
        return Some(Decision {
            verdict: "allow",
            reason: "failsafe",
            rule: None,
            failsafes,
            src: src_segment,
            dst: dst_segment,
        });
    }
    if proto == Proto::Udp && declared.is_none() {
        return None;
    }
    Some(rules_decide(spec, src_segment, dst_segment, proto, port))
}

/// The documented decision for a new inbound flow (failsafes matched against the
/// classified source address, like every other step).
pub fn decide(spec: &Spec, src: Addr, proto: Proto, port: u16) -> Option<Decision> {
    decide_with_failsafe_addr(spec, src, src.as_classified(), proto, port)
}
