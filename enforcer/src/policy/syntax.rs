//! The TOML shape of a policy file, with the span of every value kept, before any
//! meaning is checked. `deny_unknown_fields` everywhere: a misspelt key is an error at
//! its place, never silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// `[defaults]`.
    pub defaults: Option<Spanned<RawDefaults>>,
    /// `[failsafe.NAME]` tables.
    #[serde(default)]
    pub failsafe: BTreeMap<Spanned<String>, Spanned<RawFailsafe>>,
    /// `[segments.NAME]` tables.
    #[serde(default)]
    pub segments: BTreeMap<Spanned<String>, Spanned<RawSegment>>,
    /// `[[allow]]` rules.
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
    /// `[[deny]]` rules.
    #[serde(default)]
    pub deny: Vec<Spanned<RawRule>>,
}

/// `[defaults]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// `"all"` or `"deny"`.
    pub audit: Option<Spanned<String>>,
    /// `"deny"` or `"allow"`.
    pub unclassified: Option<Spanned<String>>,
}

/// `[failsafe.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailsafe {
    /// Source CIDRs.
    pub from: Spanned<Vec<Spanned<String>>>,
    /// One port spec.
    pub port: Spanned<String>,
    /// Free text for readers.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[segments.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSegment {
    /// cgroup paths.
    #[serde(default)]
    pub cgroups: Vec<Spanned<String>>,
    /// CIDRs.
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// Listener port specs.
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    /// `"enforce"` or `"audit"`.
    pub mode: Option<Spanned<String>>,
    /// Grant raw sockets.
    pub raw_sockets: Option<Spanned<bool>>,
    /// Grant ICMP errors with their payload (`IP_RECVERR`, `IPV6_RECVERR`).
    pub icmp_errors: Option<Spanned<bool>>,
    /// Free text for readers.
    #[serde(default)]
    pub description: Option<String>,
}

/// `[[allow]]` or `[[deny]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Stable rule id.
    pub id: Spanned<String>,
    /// Source segment names.
    pub from: Spanned<Vec<Spanned<String>>>,
    /// Destination segment names.
    pub to: Spanned<Vec<Spanned<String>>>,
    /// Port specs.
    pub ports: Spanned<Vec<Spanned<String>>>,
    /// Free text for readers.
    #[serde(default)]
    pub description: Option<String>,
}
