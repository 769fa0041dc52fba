//! The reference evaluator: the policy semantics written as plainly as possible over the
//! typed [`Policy`], with no compilation, no ids and no tries. The compiled image and the
//! kernel's lookup procedure are tested against it.
//!
//! Semantics:
//! 1. A destination `255.255.255.255` is `broadcast` and a multicast destination
//!    `multicast`; any other remote address, and every source address, belongs to the
//!    segment with the longest matching CIDR, else `world`; an IPv4-mapped IPv6 address
//!    is treated as the IPv4 address.
//!    A `*` in a rule covers every segment but `broadcast` and `multicast`.
//! 2. A local cgroup belongs to the segment listing its nearest ancestor (itself
//!    included), else `host`.
//! 3. A destination address that is this host (loopback, unspecified, or an address the
//!    caller names as the host's, [`Endpoint::LocalAddr`]) is `host`; traffic to `host`
//!    on a port a segment declares is traffic to that segment.
//! 4. A source address covered by a failsafe on the flow's port is allowed (`failsafe`).
//! 5. Otherwise the first matching deny rule denies; else the first matching allow rule
//!    allows; else the flow is denied by default (`default-deny`).
//! 6. A denial becomes `audit` when either segment is in audit mode.

use std::net::IpAddr;

use enforcer_common::event::{Reason, Verdict};
use ipnet::IpNet;

use super::{
    lookup::canonical,
    model::{Action, BROADCAST, HOST, MULTICAST, Mode, Policy, Proto, WORLD},
};

/// One end of a flow, as an admin names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A segment by name (`host` and `world` included).
    Segment(String),
    /// An address.
    Addr(IpAddr),
    /// An address the host in question delivers to itself other than loopback and the
    /// unspecified address (one of its interfaces' addresses, or one a `local` route
    /// delivers there): host state that no policy holds, so the caller says it.
    LocalAddr(IpAddr),
    /// A local cgroup path, relative to the cgroup2 root.
    Cgroup(String),
}

/// What the reference says about a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The source segment.
    pub from_segment: String,
    /// The destination segment.
    pub to_segment: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The reason.
    pub reason: Reason,
    /// The deciding rule's id, when `reason` is a rule.
    pub rule: Option<String>,
    /// The granting failsafe's name, when `reason` is failsafe.
    pub failsafe: Option<String>,
}

/// The segment of a source address (rule 1): the longest matching CIDR, else `world`.
/// Broadcast and multicast are destination classes, never a source's.
pub fn segment_of_addr(policy: &Policy, addr: IpAddr) -> String {
    let addr = canonical(addr);
    policy
        .segments
        .iter()
        .flat_map(|s| s.cidrs.iter().map(move |net| (net, &s.name)))
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or_else(|| WORLD.to_owned(), |(_, name)| name.clone())
}

/// The segment of a destination address (rule 1): `broadcast` or `multicast` for a
/// group address, else as a source.
pub fn segment_of_destination(policy: &Policy, addr: IpAddr) -> String {
    match canonical(addr) {
        IpAddr::V4(v4) if v4.is_broadcast() => BROADCAST.to_owned(),
        addr if addr.is_multicast() => MULTICAST.to_owned(),
        _ => segment_of_addr(policy, addr),
    }
}

/// The segment of a cgroup path (rule 2).
pub fn segment_of_cgroup(policy: &Policy, path: &str) -> String {
    let path = path.trim_matches('/');
    policy
        .segments
        .iter()
        .flat_map(|s| s.cgroups.iter().map(move |c| (c, &s.name)))
        .filter(|(listed, _)| path == listed.as_str() || path.starts_with(&format!("{listed}/")))
        .max_by_key(|(listed, _)| listed.len())
        .map_or_else(|| HOST.to_owned(), |(_, name)| name.clone())
}

/// The segment of an endpoint as a flow's source.
pub fn segment_of(policy: &Policy, endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Segment(name) => name.clone(),
        Endpoint::Addr(addr) | Endpoint::LocalAddr(addr) => segment_of_addr(policy, *addr),
        Endpoint::Cgroup(path) => segment_of_cgroup(policy, path),
    }
}

/// Evaluates one flow.
pub fn evaluate(
    policy: &Policy,
    from: &Endpoint,
    to: &Endpoint,
    proto: Proto,
    port: u16,
) -> Outcome {
    let from_segment = segment_of(policy, from);
    // Loopback and the unspecified address are this host, whatever the CIDRs say.
    let mut to_segment = match to {
        Endpoint::Addr(addr)
            if canonical(*addr).is_loopback() || canonical(*addr).is_unspecified() =>
        {
            HOST.to_owned()
        }
        Endpoint::LocalAddr(_) => HOST.to_owned(),
        Endpoint::Addr(addr) => segment_of_destination(policy, *addr),
        _ => segment_of(policy, to),
    };
    if to_segment == HOST
        && let Some(owner) = policy
            .segments
            .iter()
            .find(|s| s.ports.iter().any(|p| p.contains(proto, port)))
    {
        to_segment = owner.name.clone();
    }
    let outcome = |verdict, reason, rule: Option<&str>, failsafe: Option<&str>| Outcome {
        from_segment: from_segment.clone(),
        to_segment: to_segment.clone(),
        verdict,
        reason,
        rule: rule.map(str::to_owned),
        failsafe: failsafe.map(str::to_owned),
    };
    if let Endpoint::Addr(addr) | Endpoint::LocalAddr(addr) = from {
        let addr = canonical(*addr);
        // Longest matching failsafe prefix; the first by name among equals.
        let granted = policy
            .failsafes
            .iter()
            .filter(|f| f.ports.contains(proto, port))
            .flat_map(|f| f.from.iter().map(move |net: &IpNet| (net, f)))
            .filter(|(net, _)| net.contains(&addr))
            .fold(None, |best: Option<(&IpNet, _)>, (net, f)| match best {
                Some((b, _)) if b.prefix_len() >= net.prefix_len() => best,
                _ => Some((net, f)),
            });
        if let Some((_, failsafe)) = granted {
            return outcome(Verdict::Allow, Reason::Failsafe, None, Some(&failsafe.name));
        }
    }
    let matching = |action| {
        policy
            .rules
            .iter()
            .find(|r| r.action == action && r.matches(&from_segment, &to_segment, proto, port))
    };
    let (denied, reason, rule) = match (matching(Action::Deny), matching(Action::Allow)) {
        (Some(deny), _) => (true, Reason::Rule, Some(deny.id.as_str())),
        (None, Some(allow)) => (false, Reason::Rule, Some(allow.id.as_str())),
        (None, None) => (true, Reason::DefaultDeny, None),
    };
    let audit_mode =
        policy.mode_of(&from_segment) == Mode::Audit || policy.mode_of(&to_segment) == Mode::Audit;
    let verdict = match (denied, audit_mode) {
        (false, _) => Verdict::Allow,
        (true, false) => Verdict::Deny,
        (true, true) => Verdict::Audit,
    };
    outcome(verdict, reason, rule, None)
}
