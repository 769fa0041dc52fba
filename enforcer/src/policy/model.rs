//! The typed policy: what a set of valid policy files means, with the source span of
//! every item kept for messages.

use std::{fmt, str::FromStr};

use enforcer_common::maps::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use ipnet::IpNet;
use serde::Serialize;

use super::source::Span;

/// Protocol of a port set: a transport protocol with ports, or ICMP with message types
/// in place of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4; the "ports" are message types.
    Icmp,
    /// ICMPv6; the "ports" are message types.
    Icmpv6,
}

/// `echo`: the ICMP echo request's type, the one a rule names most.
const ICMP_ECHO_REQUEST: u16 = 8;
/// `echo`: the ICMPv6 echo request's type.
const ICMPV6_ECHO_REQUEST: u16 = 128;

impl Proto {
    /// Every protocol.
    pub const ALL: [Self; 4] = [Self::Tcp, Self::Udp, Self::Icmp, Self::Icmpv6];

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Icmp => PROTO_ICMP,
            Self::Icmpv6 => PROTO_ICMPV6,
        }
    }

    /// Whether the "ports" are ICMP message types.
    pub const fn is_icmp(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }

    /// The lowest port (1) or ICMP type (0).
    pub const fn first_port(self) -> u16 {
        if self.is_icmp() { 0 } else { 1 }
    }

    /// The highest port (65535) or ICMP type (255).
    pub const fn last_port(self) -> u16 {
        if self.is_icmp() { 255 } else { u16::MAX }
    }

    /// The type `echo` names: the echo request.
    const fn echo(self) -> Option<u16> {
        match self {
            Self::Icmp => Some(ICMP_ECHO_REQUEST),
            Self::Icmpv6 => Some(ICMPV6_ECHO_REQUEST),
            Self::Tcp | Self::Udp => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
        })
    }
}

/// A protocol and an inclusive port range (`8443/tcp`, `9000-9100/tcp`, `*/udp`), or ICMP
/// message types (`echo/icmp`, `13/icmp`, `*/icmpv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    /// The protocol.
    pub proto: Proto,
    /// First port, at least 1.
    pub first: u16,
    /// Last port, at least `first`.
    pub last: u16,
}

impl PortRange {
    /// Whether `port`/`proto` is in the range.
    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = (self.proto.first_port(), self.proto.last_port());
        match (self.first, self.last) {
            range if range == all => write!(f, "*/{}", self.proto),
            (first, last) if first == last && self.proto.echo() == Some(first) => {
                write!(f, "echo/{}", self.proto)
            }
            (first, last) if first == last => write!(f, "{first}/{}", self.proto),
            (first, last) => write!(f, "{first}-{last}/{}", self.proto),
        }
    }
}

/// Why a port specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// No `/tcp`, `/udp`, `/icmp` or `/icmpv6` suffix.
    #[error(
        "expected PORT/PROTO, PORT-PORT/PROTO or */PROTO with PROTO tcp or udp, or TYPE/icmp, TYPE/icmpv6 with TYPE echo, a number or *"
    )]
    Shape,
    /// An unknown protocol.
    #[error("unknown protocol `{0}` (expected tcp, udp, icmp or icmpv6)")]
    Proto(String),
    /// A port that is not a number in 1..=65535.
    #[error("`{0}` is not a port number (1-65535)")]
    Number(String),
    /// An ICMP type that is not `echo` or a number in 0..=255.
    #[error("`{0}` is not an ICMP type (echo, or 0-255)")]
    IcmpType(String),
    /// A range whose start is after its end.
    #[error("range {0}-{1} runs backwards")]
    Backwards(u16, u16),
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = spec.trim().split_once('/').ok_or(PortError::Shape)?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            other => return Err(PortError::Proto(other.to_owned())),
        };
        let number = |text: &str| -> Result<u16, PortError> {
            if proto.is_icmp() {
                return match (text, proto.echo()) {
                    ("echo", Some(echo)) => Ok(echo),
                    _ => text
                        .parse::<u16>()
                        .ok()
                        .filter(|kind| *kind <= proto.last_port())
                        .ok_or_else(|| PortError::IcmpType(text.to_owned())),
                };
            }
            text.parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| PortError::Number(text.to_owned()))
        };
        let (first, last) = match ports.split_once('-') {
            _ if ports == "*" => (proto.first_port(), proto.last_port()),
            Some((first, last)) => (number(first)?, number(last)?),
            None => {
                let port = number(ports)?;
                (port, port)
            }
        };
        if first > last {
            return Err(PortError::Backwards(first, last));
        }
        Ok(Self { proto, first, last })
    }
}

/// Per-segment rollout switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced.
    Enforce,
    /// Would-be denials pass and are recorded as `audit`.
    Audit,
}

/// A rule's action, also the verdict for unclassified flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the flow through.
    Allow,
    /// Refuse the flow.
    Deny,
}

/// Which verdicts produce audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    /// Every decided flow.
    All,
    /// Denied and audit-mode flows only.
    Deny,
}

/// Policy-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Which verdicts produce audit records (default: all).
    pub audit: AuditLevel,
    /// The verdict for a flow a hook cannot classify (default: deny).
    pub unclassified: Action,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            audit: AuditLevel::All,
            unclassified: Action::Deny,
        }
    }
}

/// Management access that is always allowed, whatever the rules say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failsafe {
    /// Its name (`ssh`).
    pub name: String,
    /// Source networks.
    pub from: Vec<IpNet>,
    /// Destination ports on this host.
    pub ports: PortRange,
    /// Where it is declared.
    pub span: Span,
}

/// A named segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its name.
    pub name: String,
    /// Local cgroup paths, relative to the cgroup2 root, without leading or trailing `/`.
    pub cgroups: Vec<String>,
    /// Networks of the segment's hosts.
    pub cidrs: Vec<IpNet>,
    /// Local listener ports served by the segment.
    pub ports: Vec<PortRange>,
    /// Enforce or audit.
    pub mode: Mode,
    /// Whether its processes may open raw sockets.
    pub raw_sockets: bool,
    /// Whether its processes may have ICMP errors queued on their sockets with the bytes
    /// they carry (`IP_RECVERR`, `IPV6_RECVERR`).
    pub icmp_errors: bool,
    /// Where it is declared.
    pub span: Span,
}

/// One side of a rule: a segment name, `host`, `world`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SegmentRef {
    /// `*`: every segment.
    Any,
    /// A segment by name (including the implicit `host` and `world`).
    Named(String),
}

impl SegmentRef {
    /// Whether the reference covers segment `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Named(own) => own == name,
        }
    }

    /// Whether the reference covers destination segment `name`: as [`SegmentRef::covers`],
    /// except that `*` does not cover `broadcast` and `multicast` (a datagram there
    /// reaches every listening host, so only a rule naming the class allows it).
    pub fn covers_destination(&self, name: &str) -> bool {
        match self {
            Self::Any => !matches!(name, BROADCAST | MULTICAST),
            Self::Named(_) => self.covers(name),
        }
    }
}

impl fmt::Display for SegmentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// An allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its stable id, shown in audit records and metrics.
    pub id: String,
    /// Allow or deny.
    pub action: Action,
    /// Source segments.
    pub from: Vec<SegmentRef>,
    /// Destination segments.
    pub to: Vec<SegmentRef>,
    /// Destination ports.
    pub ports: Vec<PortRange>,
    /// Where it is declared.
    pub span: Span,
}

impl Rule {
    /// Whether the rule matches a flow between two segments on `port`/`proto`.
    pub fn matches(&self, from: &str, to: &str, proto: Proto, port: u16) -> bool {
        self.from.iter().any(|r| r.covers(from))
            && self.to.iter().any(|r| r.covers_destination(to))
            && self.ports.iter().any(|p| p.contains(proto, port))
    }
}

/// The implicit segment of local processes in no segment.
pub const HOST: &str = "host";
/// The implicit segment of addresses in no segment.
pub const WORLD: &str = "world";
/// The implicit segment of broadcast destinations; `*` does not cover it.
pub const BROADCAST: &str = "broadcast";
/// The implicit segment of multicast destinations; `*` does not cover it.
pub const MULTICAST: &str = "multicast";
/// Every implicit segment, in id order after `*`.
pub const IMPLICIT: [&str; 4] = [HOST, WORLD, BROADCAST, MULTICAST];

/// A valid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Defaults.
    pub defaults: Defaults,
    /// Failsafe access, in name order.
    pub failsafes: Vec<Failsafe>,
    /// Named segments, in name order.
    pub segments: Vec<Segment>,
    /// Rules, in declaration order (files in load order, then position in the file).
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The segment called `name`, if declared.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments
            .binary_search_by(|segment| segment.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.segments[i])
    }

    /// The mode of a segment by name; the implicit segments are always enforced.
    pub fn mode_of(&self, name: &str) -> Mode {
        self.segment(name)
            .map_or(Mode::Enforce, |segment| segment.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_and_print_back() {
        for spec in [
            "8443/tcp",
            "9000-9100/tcp",
            "*/udp",
            "53/udp",
            "1-65535/tcp",
            "echo/icmp",
            "echo/icmpv6",
            "13/icmp",
            "0-255/icmpv6",
            "*/icmp",
        ] {
            let range: PortRange = spec.parse().unwrap();
            let printed = range.to_string();
            assert_eq!(
                printed.parse::<PortRange>().unwrap(),
                range,
                "{spec} -> {printed}"
            );
        }
        let all: PortRange = "*/tcp".parse().unwrap();
        assert_eq!((all.first, all.last), (1, 65535));
        let echo: PortRange = "echo/icmpv6".parse().unwrap();
        assert_eq!(
            (echo.proto, echo.first, echo.last),
            (Proto::Icmpv6, 128, 128)
        );
        let ping: PortRange = "8/icmp".parse().unwrap();
        assert_eq!(ping.to_string(), "echo/icmp");
        let every: PortRange = "*/icmp".parse().unwrap();
        assert_eq!((every.first, every.last), (0, 255));
        assert_eq!(every.proto.number(), 1);
    }

    #[test]
    fn bad_port_specs_say_why() {
        assert_eq!("8443".parse::<PortRange>(), Err(PortError::Shape));
        assert_eq!(
            "256/icmp".parse::<PortRange>(),
            Err(PortError::IcmpType("256".into()))
        );
        assert_eq!(
            "echo/tcp".parse::<PortRange>(),
            Err(PortError::Number("echo".into()))
        );
        assert_eq!(
            "0/tcp".parse::<PortRange>(),
            Err(PortError::Number("0".into()))
        );
        assert_eq!(
            "70000/tcp".parse::<PortRange>(),
            Err(PortError::Number("70000".into()))
        );
        assert_eq!(
            "80/sctp".parse::<PortRange>(),
            Err(PortError::Proto("sctp".into()))
        );
        assert_eq!(
            "90-80/tcp".parse::<PortRange>(),
            Err(PortError::Backwards(90, 80))
        );
    }
}
