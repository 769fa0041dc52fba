//! The reference: what the documentation says XDP ingress decides for a new inbound flow,
//! computed from the generated [`Spec`] with linear scans, sharing nothing with the
//! compiler, `enforcer::policy::{lookup, reference}` or `enforcer_common::decision`.
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

use super::{
    net::Addr,
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
    Some(Decision {
        verdict,
        reason,
        rule,
        failsafes: Vec::new(),
        src: src_segment,
        dst: dst_segment,
    })
}

/// The documented decision for a new inbound flow (failsafes matched against the
/// classified source address, like every other step).
pub fn decide(spec: &Spec, src: Addr, proto: Proto, port: u16) -> Option<Decision> {
    decide_with_failsafe_addr(spec, src, src.as_classified(), proto, port)
}
