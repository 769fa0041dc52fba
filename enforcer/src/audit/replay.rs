//! Replaying recorded flows under a candidate policy (`enforcer policy simulate`). Each
//! flow record is decided again with the candidate's compiled image and the kernel's
//! lookup procedure ([`crate::policy::explain`]), its ends named the way the kernel saw them: a local process by
//! its cgroup path, a remote end by its address, the local listener of an inbound flow
//! by the segment that served it.

use std::{collections::BTreeMap, collections::HashMap, net::IpAddr};

use serde::Serialize;

use super::record::Record;
use crate::policy::{
    explain::{LocalAddresses, explain},
    lookup::ImageIndex,
    model::Proto,
    reference::Endpoint,
};

/// What a change does to the flows it groups, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// Allowed, and would be denied.
    Closed,
    /// Let through by audit mode (recorded `audit`), and would be denied: the flows that
    /// start failing when a segment goes from audit mode to enforce.
    DeniedOnceEnforced,
    /// Denied, and would pass (allowed, or let through by audit mode).
    Opened,
    /// Allowed by a rule, and would pass only by audit mode (recorded `audit`).
    NowAudited,
    /// Let through by audit mode, and would be allowed by a rule.
    NowAllowed,
}

impl ChangeKind {
    /// The kind of a change from verdict `was` to `becomes` (both `allow`, `audit` or
    /// `deny`); `None` when they are the same.
    pub fn of(was: &str, becomes: &str) -> Option<Self> {
        Some(match (was, becomes) {
            _ if was == becomes => return None,
            ("allow", "deny") => Self::Closed,
            ("audit", "deny") => Self::DeniedOnceEnforced,
            ("deny", _) => Self::Opened,
            ("allow", _) => Self::NowAudited,
            _ => Self::NowAllowed,
        })
    }

    /// How `simulate` names it.
    pub fn words(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::DeniedOnceEnforced => "denied once enforced",
            Self::Opened => "opened",
            Self::NowAudited => "now audited",
            Self::NowAllowed => "now allowed",
        }
    }
}

/// A group of flows whose verdict would change the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Change {
    /// What the change does.
    pub kind: ChangeKind,
    /// Source segment under the candidate.
    pub from: String,
    /// Destination segment under the candidate.
    pub to: String,
    /// Destination port and protocol (`8443/tcp`).
    pub port: String,
    /// The recorded verdict.
    pub was: String,
    /// The rule (or reason) that decided it.
    pub was_by: String,
    /// The candidate's verdict.
    pub becomes: String,
    /// The candidate's rule (or reason).
    pub becomes_by: String,
}

/// What a replay found.
#[derive(Debug, Default, Serialize)]
pub struct Replay {
    /// Flow records replayed.
    pub replayed: u64,
    /// Flows whose verdict would stay.
    pub unchanged: u64,
    /// Flow records not replayable (raw sockets; decisions not made by the policy).
    pub skipped: u64,
    /// Flows whose verdict would change, grouped, with their counts.
    pub changes: BTreeMap<Change, u64>,
}

/// How a flow's end is named for the replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Naming {
    /// By the segment the record names.
    Segment,
    /// By its address or cgroup path.
    Text,
    /// By its address, which the recording host delivered to itself.
    LocalAddress,
}

/// The recorded ends (each with how it is named), protocol and port of a flow: what a
/// decision depends on.
type FlowKey = (String, Naming, String, Naming, Proto, u16);

/// Replays flows one at a time against a candidate.
pub struct Simulator<'a> {
    index: ImageIndex<'a>,
    local: LocalAddresses,
    cache: HashMap<FlowKey, Option<(String, String, String, String)>>,
    /// The result so far.
    pub replay: Replay,
}

fn endpoint(text: &str, naming: Naming, index: &ImageIndex<'_>) -> Option<Endpoint> {
    match (naming, text.parse::<IpAddr>()) {
        (Naming::Segment, _) => index
            .image()
            .segment_id(text)
            .map(|_| Endpoint::Segment(text.to_owned())),
        (Naming::LocalAddress, Ok(addr)) => Some(Endpoint::LocalAddr(addr)),
        (_, Ok(addr)) => Some(Endpoint::Addr(addr)),
        (_, Err(_)) => Some(Endpoint::Cgroup(text.trim_matches('/').to_owned())),
    }
}

impl<'a> Simulator<'a> {
    /// A simulator for the candidate's index. A destination the record marks as the
    /// recording host's own address is decided as this host; `local` names more such
    /// addresses, for records written before they were marked.
    pub fn new(index: ImageIndex<'a>, local: LocalAddresses) -> Self {
        Self {
            index,
            local,
            cache: HashMap::new(),
            replay: Replay::default(),
        }
    }

    /// Replays one record (records other than flows are ignored).
    pub fn replay(&mut self, record: &Record) {
        let Some(flow) = record.flow() else {
            return;
        };
        let (Some(src), Some(dst), Some(info)) = (
            &record.src_endpoint,
            &record.dst_endpoint,
            &record.connection_info,
        ) else {
            self.replay.skipped += 1;
            return;
        };
        let proto = match info.protocol_name.as_str() {
            // An MPTCP flow (262) was decided as the TCP it is on the wire.
            "tcp" | "mptcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            _ => {
                self.replay.skipped += 1;
                return;
            }
        };
        if !matches!(
            flow.reason.as_str(),
            "rule" | "default-deny" | "unclassified" | "failsafe"
        ) {
            self.replay.skipped += 1;
            return;
        }
        let inbound = info.direction_id == 1;
        // A local process is its cgroup; an inbound flow's local end is the segment that
        // served the port (learnt from its bind, which a replay cannot redo).
        let (from_text, from_naming) = if inbound || flow.cgroup.is_empty() {
            // A local sender of an inbound flow is known by its segment, not its address.
            if src.ip.is_empty() || (inbound && info.to_this_host()) {
                (flow.src_segment.clone(), Naming::Segment)
            } else {
                (src.ip.clone(), Naming::Text)
            }
        } else {
            (flow.cgroup.clone(), Naming::Text)
        };
        // A destination the kernel decided as this host (the record says so, or the
        // caller names the address) is decided so again, whatever the candidate's CIDRs.
        let to_this_host = info.to_this_host()
            || dst
                .ip
                .parse::<IpAddr>()
                .is_ok_and(|addr| self.local.contains(addr));
        let (to_text, to_naming) = if inbound {
            (flow.dst_segment.clone(), Naming::Segment)
        } else if to_this_host {
            (dst.ip.clone(), Naming::LocalAddress)
        } else {
            (dst.ip.clone(), Naming::Text)
        };
        let key = (from_text, from_naming, to_text, to_naming, proto, dst.port);
        let index = &self.index;
        let decided = self
            .cache
            .entry(key)
            .or_insert_with_key(
                |(from_text, from_naming, to_text, to_naming, proto, port)| {
                    let from = endpoint(from_text, *from_naming, index)?;
                    let to = endpoint(to_text, *to_naming, index)?;
                    let answer = explain(index, (&from, from_text), (&to, to_text), *proto, *port);
                    let by = answer
                        .rule
                        .or(answer.failsafe)
                        .unwrap_or_else(|| answer.reason.to_owned());
                    Some((
                        answer.from.segment,
                        answer.to.segment,
                        answer.verdict.to_owned(),
                        by,
                    ))
                },
            )
            .clone();
        let Some((from, to, verdict, by)) = decided else {
            self.replay.skipped += 1;
            return;
        };
        self.replay.replayed += 1;
        let Some(kind) = ChangeKind::of(&flow.verdict, &verdict) else {
            self.replay.unchanged += 1;
            return;
        };
        let change = Change {
            kind,
            from,
            to,
            port: format!("{}/{}", dst.port, info.protocol_name),
            was: flow.verdict.clone(),
            was_by: flow.rule.clone().unwrap_or_else(|| flow.reason.clone()),
            becomes: verdict,
            becomes_by: by,
        };
        *self.replay.changes.entry(change).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{compile_sources, source::SourceSet};

    /// A denied outbound flow (see [`Record::example_flow`]).
    fn denied(protocol: (&str, u32), port: u16) -> Record {
        Record::example_flow("deny", protocol, port)
    }

    /// The candidate in which `api` (enforced, or in audit mode) may reach `db` on 5432/tcp
    /// only.
    fn candidate(api_mode: &str) -> crate::policy::Compiled {
        let mut sources = SourceSet::default();
        sources.add(
            "candidate.toml",
            format!(
                r#"
[segments.api]
cgroups = ["system.slice/api.service"]
mode = "{api_mode}"

[segments.db]
cidrs = ["198.18.7.0/24"]

[[allow]]
id = "api-to-db"
from = ["api"]
to = ["db"]
ports = ["5432/tcp"]
"#
            ),
        );
        compile_sources(sources).expect("the candidate compiles")
    }

    fn simulator(candidate: &crate::policy::Compiled) -> Simulator<'_> {
        Simulator::new(ImageIndex::new(&candidate.image), LocalAddresses::default())
    }

    #[test]
    fn an_mptcp_flow_is_replayed_as_tcp_and_a_udp_one_on_the_same_port_as_udp() {
        let candidate = candidate("enforce");
        let mut simulator = simulator(&candidate);
        simulator.replay(&denied(("mptcp", 262), 5432));
        simulator.replay(&denied(("udp", 17), 5432));
        simulator.replay(&denied(("tcp", 6), 5432));
        let replay = &simulator.replay;
        assert_eq!((replay.replayed, replay.skipped), (3, 0));
        // The tcp rule opens the MPTCP and the TCP flow, not the UDP one (decided once
        // per protocol, not once per port).
        assert_eq!(replay.unchanged, 1, "{:#?}", replay.changes);
        let opened: Vec<(&str, u64)> = replay
            .changes
            .iter()
            .map(|(change, flows)| (change.port.as_str(), *flows))
            .collect();
        assert_eq!(opened, vec![("5432/mptcp", 1), ("5432/tcp", 1)]);
    }

    #[test]
    fn each_change_is_named_by_what_it_does_to_the_flow() {
        let kinds = |simulator: &Simulator<'_>| -> Vec<(ChangeKind, String, u64)> {
            let changes = &simulator.replay.changes;
            changes
                .iter()
                .map(|(change, flows)| (change.kind, change.port.clone(), *flows))
                .collect()
        };
        // The documented rollout: recorded in audit mode, then enforced.
        let enforcing = candidate("enforce");
        let mut enforced = simulator(&enforcing);
        enforced.replay(&Record::example_flow("audit", ("tcp", 6), 22));
        enforced.replay(&Record::example_flow("audit", ("tcp", 6), 22));
        enforced.replay(&Record::example_flow("audit", ("tcp", 6), 5432));
        enforced.replay(&Record::example_flow("allow", ("tcp", 6), 80));
        enforced.replay(&Record::example_flow("deny", ("tcp", 6), 5432));
        assert_eq!(
            kinds(&enforced),
            vec![
                (ChangeKind::Closed, "80/tcp".to_owned(), 1),
                (ChangeKind::DeniedOnceEnforced, "22/tcp".to_owned(), 2),
                (ChangeKind::Opened, "5432/tcp".to_owned(), 1),
                (ChangeKind::NowAllowed, "5432/tcp".to_owned(), 1),
            ]
        );
        // Back to audit mode: what was denied passes, recorded.
        let auditing = candidate("audit");
        let mut audited = simulator(&auditing);
        audited.replay(&Record::example_flow("deny", ("tcp", 6), 22));
        audited.replay(&Record::example_flow("allow", ("tcp", 6), 80));
        audited.replay(&Record::example_flow("audit", ("tcp", 6), 23));
        assert_eq!(
            kinds(&audited),
            vec![
                (ChangeKind::Opened, "22/tcp".to_owned(), 1),
                (ChangeKind::NowAudited, "80/tcp".to_owned(), 1),
            ]
        );
        assert_eq!(audited.replay.unchanged, 1);
        assert_eq!(
            ChangeKind::DeniedOnceEnforced.words(),
            "denied once enforced"
        );
    }
}
