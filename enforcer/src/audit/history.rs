//! The agent's and the policies' history as records in the store, beside the flows they
//! explain: when the agent started (and whether after a crash), stopped, or failed
//! closed; which interfaces got XDP or lost it; which policy was applied or refused, and
//! why. `audit query --kind agent` and
//! `--kind policy` find them.

use super::record::{AgentEvent, Kind, PolicyEvent, Record, SEVERITY_HIGH, SEVERITY_LOW};
use crate::policy::diff::DiffSummary;

/// The agent's record of `event` at `now_ms`, described by `message`.
fn agent(event: &str, now_ms: i64, hostname: &str, message: String) -> Record {
    let mut record = Record::new(Kind::Agent, now_ms, hostname, message);
    record.unmapped.agent = Some(AgentEvent {
        event: event.to_owned(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        recovered: false,
        interface: None,
        error: None,
    });
    record
}

/// XDP attached to `interface`, detached from it, or (`error`) failed to attach.
pub fn xdp(
    interface: &str,
    attached: bool,
    error: Option<&str>,
    now_ms: i64,
    hostname: &str,
) -> Record {
    let (event, message) = match (attached, error) {
        (true, _) => (
            "xdp-attached",
            format!("XDP ingress in force on {interface}"),
        ),
        (false, Some(error)) => (
            "xdp-attach-failed",
            format!("cannot attach XDP ingress to {interface}; it has none: {error}"),
        ),
        (false, None) => (
            "xdp-detached",
            format!("XDP detached from {interface}: it is gone or no longer configured"),
        ),
    };
    let mut record = agent(event, now_ms, hostname, message);
    if error.is_some() {
        record.severity_id = SEVERITY_HIGH;
    }
    if let Some(details) = &mut record.unmapped.agent {
        details.interface = Some(interface.to_owned());
        details.error = error.map(str::to_owned);
    }
    record
}

/// The agent started; `recovered` when the previous run ended without sealing the store.
pub fn started(recovered: bool, now_ms: i64, hostname: &str) -> Record {
    let mut record = agent(
        "started",
        now_ms,
        hostname,
        if recovered {
            format!(
                "agent started (pid {}) after a crash: the previous run ended without sealing the store",
                std::process::id()
            )
        } else {
            format!("agent started (pid {})", std::process::id())
        },
    );
    if recovered {
        record.severity_id = SEVERITY_HIGH;
    }
    if let Some(event) = &mut record.unmapped.agent {
        event.recovered = recovered;
    }
    record
}

/// The agent is stopping; enforcement stays in place.
pub fn stopping(now_ms: i64, hostname: &str) -> Record {
    agent(
        "stopping",
        now_ms,
        hostname,
        "agent stopping; the kernel programs keep enforcing".to_owned(),
    )
}

/// The fail-closed switch turned on (`on`) or off.
pub fn fail_closed(on: bool, now_ms: i64, hostname: &str) -> Record {
    let mut record = if on {
        agent(
            "fail-closed",
            now_ms,
            hostname,
            "fail-closed: audit records cannot be written; every new flow but failsafe access is denied".to_owned(),
        )
    } else {
        agent(
            "fail-closed-lifted",
            now_ms,
            hostname,
            "fail-closed lifted: flows are decided by the policy again".to_owned(),
        )
    };
    record.severity_id = SEVERITY_HIGH;
    record
}

/// A policy record of `event`, described by `message`.
fn policy(
    event: PolicyEvent,
    severity: u32,
    now_ms: i64,
    hostname: &str,
    message: String,
) -> Record {
    let mut record = Record::new(Kind::Policy, now_ms, hostname, message);
    record.severity_id = severity;
    record.unmapped.policy = Some(event);
    record
}

/// What an applied policy was.
pub struct Applied<'a> {
    /// What made the agent read it.
    pub trigger: &'a str,
    /// The generation it became.
    pub generation: u32,
    /// SHA-256 of its files.
    pub source_sha256: &'a str,
    /// SHA-256 of its compiled maps.
    pub image_sha256: &'a str,
    /// The bundle's version, for a signed bundle.
    pub bundle_version: Option<u64>,
    /// The id of the key that signed the bundle, for a signed bundle.
    pub signer_key_id: Option<&'a str>,
    /// The generation it replaced and what changed against it, when this agent applied
    /// that one too (after a restart the agent has no compiled copy of the generation it
    /// adopted).
    pub changes: Option<(u32, DiffSummary)>,
    /// Its segments.
    pub segments: usize,
    /// Its rules.
    pub rules: usize,
}

/// A policy applied.
pub fn applied(what: &Applied<'_>, now_ms: i64, hostname: &str) -> Record {
    policy(
        PolicyEvent {
            outcome: "applied".to_owned(),
            trigger: what.trigger.to_owned(),
            generation: what.generation,
            source_sha256: Some(what.source_sha256.to_owned()),
            image_sha256: Some(what.image_sha256.to_owned()),
            bundle_version: what.bundle_version,
            signer_key_id: what.signer_key_id.map(str::to_owned),
            previous_generation: what.changes.map(|(generation, _)| generation),
            diff: what.changes.map(|(_, summary)| summary),
            segments: Some(what.segments as u64),
            rules: Some(what.rules as u64),
            error: None,
        },
        SEVERITY_LOW,
        now_ms,
        hostname,
        format!(
            "policy applied as generation {} ({}, source {}{}): {}",
            what.generation,
            what.trigger,
            &what.source_sha256[..what.source_sha256.len().min(12)],
            what.signer_key_id
                .map(|key| format!(", signed by {key}"))
                .unwrap_or_default(),
            what.changes.map_or_else(
                || "no earlier generation of this run to compare with".to_owned(),
                |(previous, summary)| format!("against generation {previous}, {summary}")
            ),
        ),
    )
}

/// A policy refused; generation `active` stays in force.
pub fn refused(trigger: &str, active: u32, error: &str, now_ms: i64, hostname: &str) -> Record {
    policy(
        PolicyEvent {
            outcome: "refused".to_owned(),
            trigger: trigger.to_owned(),
            generation: active,
            source_sha256: None,
            image_sha256: None,
            bundle_version: None,
            signer_key_id: None,
            previous_generation: None,
            diff: None,
            segments: None,
            rules: None,
            error: Some(error.to_owned()),
        },
        SEVERITY_HIGH,
        now_ms,
        hostname,
        format!("policy refused ({trigger}); generation {active} stays in force: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::SEVERITY_INFO;

    /// Failures and refusals are High (4); the rest Informational (1) or Low (2).
    #[test]
    fn failures_and_refusals_are_high_severity_and_the_rest_low() {
        let applied = applied(
            &Applied {
                trigger: "start",
                generation: 2,
                source_sha256: "ab",
                image_sha256: "cd",
                bundle_version: None,
                signer_key_id: None,
                changes: None,
                segments: 1,
                rules: 0,
            },
            0,
            "host-a",
        );
        let severities: Vec<(&str, u32)> = [
            ("started", started(false, 0, "host-a")),
            ("started after a crash", started(true, 0, "host-a")),
            ("stopping", stopping(0, "host-a")),
            ("fail-closed", fail_closed(true, 0, "host-a")),
            ("xdp attached", xdp("eth0", true, None, 0, "host-a")),
            ("xdp failed", xdp("eth0", false, Some("busy"), 0, "host-a")),
            ("policy applied", applied),
            ("policy refused", refused("sighup", 2, "bad", 0, "host-a")),
        ]
        .into_iter()
        .map(|(what, record)| (what, record.severity_id))
        .collect();
        assert_eq!(
            severities,
            [
                ("started", SEVERITY_INFO),
                ("started after a crash", SEVERITY_HIGH),
                ("stopping", SEVERITY_INFO),
                ("fail-closed", SEVERITY_HIGH),
                ("xdp attached", SEVERITY_INFO),
                ("xdp failed", SEVERITY_HIGH),
                ("policy applied", SEVERITY_LOW),
                ("policy refused", SEVERITY_HIGH),
            ]
        );
    }
}
