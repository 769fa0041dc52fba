//! `explain`: how each end of a flow is classified and what the kernel will decide,
//! computed from the compiled image with the kernel's own lookup procedure.

use std::net::IpAddr;

use ipnet::IpNet;

use enforcer_common::{
    event::{Reason, Verdict},
    maps::SEGMENT_HOST,
};
use serde::Serialize;

use super::{
    image::MapImage,
    lookup::{ImageIndex, canonical, is_this_host},
    model::Proto,
    reference::Endpoint,
};

/// An endpoint argument that names nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a segment of this policy, an IP address, or a cgroup path (a cgroup path has a `/` or ends in .service, .slice or .scope)"
)]
pub struct UnknownEndpoint(pub String);

/// Reads an endpoint argument: a segment name of `image`, an IP address, or a cgroup path.
pub fn parse_endpoint(text: &str, image: &MapImage) -> Result<Endpoint, UnknownEndpoint> {
    let text = text.trim();
    if text != "*" && image.segment_id(text).is_some() {
        return Ok(Endpoint::Segment(text.to_owned()));
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(Endpoint::Addr(addr));
    }
    if text.contains('/')
        || [".service", ".slice", ".scope"]
            .iter()
            .any(|s| text.ends_with(s))
    {
        return Ok(Endpoint::Cgroup(text.trim_matches('/').to_owned()));
    }
    Err(UnknownEndpoint(text.to_owned()))
}

/// The addresses the host in question delivers to itself, beyond loopback and the
/// unspecified address.
#[derive(Debug, Clone, Default)]
pub struct LocalAddresses(Vec<IpNet>);

impl LocalAddresses {
    /// The addresses and prefixes `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether `addr` (an IPv4-mapped address as IPv4) is one of them.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// `endpoint`, as [`Endpoint::LocalAddr`] when it is one of these addresses.
    pub fn mark(&self, endpoint: Endpoint) -> Endpoint {
        match endpoint {
            Endpoint::Addr(addr) if self.contains(addr) => Endpoint::LocalAddr(addr),
            other => other,
        }
    }
}

/// How one end was classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classified {
    /// What was given.
    pub given: String,
    /// The segment it belongs to.
    pub segment: String,
    /// Why, in words.
    pub because: String,
}

/// The answer to `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The source.
    pub from: Classified,
    /// The destination.
    pub to: Classified,
    /// `PORT/PROTO`.
    pub port: String,
    /// allow, deny or audit.
    pub verdict: &'static str,
    /// `rule`, `default-deny` or `failsafe`.
    pub reason: &'static str,
    /// The deciding rule's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The granting failsafe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<String>,
}

/// Classifies one end of a flow; `destination` for the end being reached, where an
/// address of this host ([`is_this_host`]) is `host` (then the port's listener decides).
fn classify(
    index: &ImageIndex<'_>,
    endpoint: &Endpoint,
    given: &str,
    destination: bool,
) -> (u32, Classified) {
    let image = index.image();
    let (id, because) = match endpoint {
        Endpoint::Segment(name) => (
            image.segment_id(name).unwrap_or(SEGMENT_HOST),
            "named directly".to_owned(),
        ),
        Endpoint::Addr(addr) if destination && is_this_host(*addr) => (
            SEGMENT_HOST,
            format!(
                "address {} is this host (loopback or unspecified): the segment serving the port, else host",
                canonical(*addr)
            ),
        ),
        Endpoint::LocalAddr(addr) if destination => (
            SEGMENT_HOST,
            format!(
                "address {} is an address of this host: the segment serving the port, else host",
                canonical(*addr)
            ),
        ),
        Endpoint::Addr(addr) | Endpoint::LocalAddr(addr) => {
            let class = if destination {
                index.classify_destination(*addr)
            } else {
                index.classify_addr(*addr)
            };
            let shown = canonical(*addr);
            let matched = class
                .prefix_len
                .and_then(|len| IpNet::new(shown, u8::try_from(len).ok()?).ok())
                .map(|net| net.trunc());
            let because = match matched {
                Some(net) => format!("address {shown} matches {net}, the longest listed prefix"),
                None => format!("address {shown} is in no segment's CIDRs"),
            };
            (class.segment, because)
        }
        Endpoint::Cgroup(path) => match index.classify_cgroup(path) {
            (id, Some(listed)) if listed == path => {
                (id, format!("cgroup {path} is listed by the segment"))
            }
            (id, Some(listed)) => (
                id,
                format!("cgroup {path} is under {listed}, listed by the segment"),
            ),
            (id, None) => (
                id,
                format!(
                    "cgroup {path} is under no segment's cgroups: a local process in no segment"
                ),
            ),
        },
    };
    let segment = image.segment_name(id).to_owned();
    (
        id,
        Classified {
            given: given.to_owned(),
            segment,
            because,
        },
    )
}

/// Explains a flow from `from` to `to` on `port`/`proto`.
pub fn explain(
    index: &ImageIndex<'_>,
    (from, from_text): (&Endpoint, &str),
    (to, to_text): (&Endpoint, &str),
    proto: Proto,
    port: u16,
) -> Explanation {
    let image = index.image();
    let (src, from_class) = classify(index, from, from_text, false);
    let (mut dst, mut to_class) = classify(index, to, to_text, true);
    if dst == SEGMENT_HOST
        && let Some(owner) = index.listener(proto.number(), port)
    {
        dst = owner;
        to_class.because = format!("local port {port}/{proto} is a listener of the segment");
        to_class.segment = image.segment_name(owner).to_owned();
    }
    let port_text = format!("{port}/{proto}");
    if let Endpoint::Addr(addr) | Endpoint::LocalAddr(addr) = from
        && let Some(number) = index.failsafe(*addr, proto.number(), port)
    {
        return Explanation {
            from: from_class,
            to: to_class,
            port: port_text,
            verdict: Verdict::Allow.word(),
            reason: Reason::Failsafe.word(),
            rule: None,
            failsafe: image.failsafe_names.get(number as usize - 1).cloned(),
        };
    }
    let decision = index.decide(src, dst, proto.number(), port);
    Explanation {
        from: from_class,
        to: to_class,
        port: port_text,
        verdict: decision.verdict.word(),
        reason: decision.reason.word(),
        rule: (decision.reason == Reason::Rule)
            .then(|| image.rule_name(decision.rule_id).to_owned()),
        failsafe: None,
    }
}
