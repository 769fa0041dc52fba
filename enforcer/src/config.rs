//! The agent's static configuration (`/etc/enforcer/enforcer.toml`): which interfaces and
//! cgroup to enforce on, where the policy and the trusted keys are, where pins, audit
//! records and metrics go. Loading checks every field and reports each problem with the
//! field's name and its `file:line:col`, so a bad config is refused before anything is
//! attached. The documented example is `deploy/enforcer.toml`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    audit::{
        files::Format,
        forward::{ClientCertificate, Collector, Framing, Tls},
        store::Fsync,
    },
    policy::source::{SourceSet, Span},
};

/// Where the agent and the commands that read its config look unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/enforcer/enforcer.toml";

/// Where the agent pins its programs, links and maps unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/enforcer";
/// Where the running agent keeps its lock and its state (last reload, pid) unless told
/// otherwise; `enforcer status` reads it.
pub const DEFAULT_STATE_DIR: &str = "/run/enforcer";
/// Default directory of what must survive a reboot (the unit's `StateDirectory=`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/enforcer";
/// Where audit records go unless told otherwise.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/enforcer/audit";
/// Where `/metrics` and the health endpoint listen unless told otherwise: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
const MAX_IFNAME: usize = 15;

/// How the XDP program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Generic mode on a veth; elsewhere native (driver) mode where the driver has it,
    /// else generic (the kernel decides).
    Auto,
    /// Native (driver) mode; attaching fails on drivers without it.
    Native,
    /// Generic (SKB) mode: works everywhere.
    Skb,
}

/// What to do while the store cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteErrorAction {
    /// Keep enforcing the policy; events wait in the ring, and those that could not be
    /// stored are written as a gap when the store works again.
    KeepEnforcing,
    /// Deny every new flow except failsafe access until the store works again.
    FailClosed,
}

/// Which interfaces get XDP ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interfaces {
    /// Every interface of the agent's network namespace but loopback and `exclude`,
    /// including those that appear while it runs (the default).
    All {
        /// Interfaces never to attach to.
        exclude: Vec<String>,
        /// How to attach.
        xdp_mode: XdpMode,
    },
    /// Exactly these (an empty list: outbound enforcement only).
    Listed(Vec<Interface>),
}

impl Interfaces {
    /// How to attach to `name` when it is selected; `None` when it is not (loopback,
    /// excluded, or not listed).
    pub fn selects(&self, name: &str) -> Option<XdpMode> {
        match self {
            Self::All { exclude, xdp_mode } => {
                (name != LOOPBACK && !exclude.iter().any(|x| x == name)).then_some(*xdp_mode)
            }
            Self::Listed(list) => list
                .iter()
                .find(|interface| interface.name == name)
                .map(|interface| interface.xdp_mode),
        }
    }
}

/// The loopback interface, never attached by `interfaces = "all"`: a local flow is
/// decided by the cgroup hooks, and XDP would see every local SYN as coming from `world`.
pub const LOOPBACK: &str = "lo";

/// One interface to attach XDP ingress to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// The interface name (`eth0`).
    pub name: String,
    /// How to attach.
    pub xdp_mode: XdpMode,
}

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySource {
    /// A policy directory, a policy file, or a signed bundle.
    pub path: PathBuf,
    /// Public keys (PEM) whose signatures are trusted. When any are listed, only a bundle
    /// signed by one of them is applied.
    pub trusted_keys: Vec<PathBuf>,
}

/// Audit settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Directory of the local audit store.
    pub dir: PathBuf,
    /// The fold window: attempts of one fold (one flow; for denials, one source to one
    /// destination whatever its port) within this window of the fold's last record are
    /// counted into its next record. Zero records every attempt on its own.
    #[serde(rename = "dedup_window_ms", serialize_with = "as_millis")]
    pub dedup_window: Duration,
    /// Denials of one destination under one rule from more sources than this within a
    /// window fold into one record by destination; 0 never folds by destination.
    pub fold_sources: u16,
    /// Start a new store file past this many bytes.
    pub rotate_bytes: u64,
    /// Start a new store file once the current one is this old.
    #[serde(serialize_with = "as_millis")]
    pub rotate_age: Duration,
    /// Remove the oldest files while the store exceeds this many bytes.
    pub retain_bytes: u64,
    /// Remove files whose last record is older than this.
    #[serde(serialize_with = "as_millis")]
    pub retain_age: Duration,
    /// When records are forced to disk.
    #[serde(serialize_with = "fsync_word")]
    pub fsync: Fsync,
    /// The format new store files are written in: `compact` (binary, about a tenth of
    /// the JSON's size; OCSF JSON is rendered on read) or `jsonl` (a JSON record per
    /// line, as stores written before the compact format).
    #[serde(serialize_with = "format_word")]
    pub format: Format,
    /// What happens while records cannot be written.
    pub on_write_error: WriteErrorAction,
    /// The syslog collector records are forwarded to, if any.
    pub forward: Option<Forward>,
    /// The forward-secure sealing key (`enforcer audit setup-keys`), if sealing is on.
    pub seal_key: Option<PathBuf>,
    /// How often the chain is sealed under the current key, which then moves forward.
    #[serde(serialize_with = "as_millis")]
    pub seal_interval: Duration,
}

/// Forwarding to a syslog collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    /// The collector: an IP address or a host name (resolved at every connection
    /// attempt), and a port.
    pub address: Collector,
    /// How records are delimited on the stream (default: octet counting).
    pub framing: Framing,
    /// TLS, when configured.
    pub tls: Option<ForwardTls>,
}

/// TLS to the syslog collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardTls {
    /// PEM file of the CA certificates the collector's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the collector's certificate must carry (default: the address's host
    /// name, or its IP).
    pub server_name: String,
    /// The certificate this host presents to a collector that requires one (mutual TLS).
    pub client_certificate: Option<ClientCertificate>,
}

fn fsync_word<S: serde::Serializer>(fsync: &Fsync, out: S) -> Result<S::Ok, S::Error> {
    match fsync {
        Fsync::Batch => out.serialize_str("batch"),
        Fsync::Interval(every) => out.serialize_str(&format!("every {} ms", every.as_millis())),
        Fsync::Never => out.serialize_str("never"),
    }
}

fn format_word<S: serde::Serializer>(format: &Format, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(match format {
        Format::Compact => "compact",
        Format::Lines => "jsonl",
    })
}

const MIB: u64 = 1 << 20;

fn as_millis<S: serde::Serializer>(window: &Duration, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_u128(window.as_millis())
}

/// The whole, checked configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Interfaces for XDP ingress.
    pub interfaces: Interfaces,
    /// The cgroup the cgroup hooks attach to, relative to the cgroup2 root (`""`: the
    /// root, so every process on the host).
    pub cgroup: String,
    /// The policy.
    pub policy: PolicySource,
    /// The bpffs directory for pins.
    pub pin_dir: PathBuf,
    /// The agent's lock and state file.
    pub state_dir: PathBuf,
    /// What must survive a reboot, unlike `state_dir` (in `/run`): the anti-rollback
    /// floor of signed bundles.
    pub data_dir: PathBuf,
    /// Audit settings.
    pub audit: Audit,
    /// Address of `/metrics` and the health endpoint.
    pub metrics_listen: SocketAddr,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `file:line:col`, when the problem has a place.
    pub location: Option<String>,
    /// The field, dotted (`interfaces[1].xdp_mode`), when the problem is about one.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config was refused: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the config:\n{}", .problems.len(), list(.problems))]
pub struct ConfigError {
    /// The problems, in the order the fields are checked.
    pub problems: Vec<Problem>,
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `interfaces`: the word `"all"` or a list of `[[interfaces]]` tables.
enum RawInterfaces {
    All,
    Listed(Vec<RawInterface>),
}

impl<'de> Deserialize<'de> for RawInterfaces {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect;
        impl<'de> serde::de::Visitor<'de> for Expect {
            type Value = RawInterfaces;
            fn expecting(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                out.write_str("\"all\" or a list of [[interfaces]] tables")
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Self::Value, E> {
                if word == "all" {
                    Ok(RawInterfaces::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(word), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                // The list's own deserializer, so each name keeps its place for problems.
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawInterfaces::Listed)
            }
        }
        deserializer.deserialize_any(Expect)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    #[serde(default = "default_xdp_mode")]
    xdp_mode: XdpMode,
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    path: Spanned<String>,
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: Option<Spanned<String>>,
    dedup_window_ms: Option<u64>,
    fold_sources: Option<u16>,
    rotate_size_mib: Option<Spanned<u64>>,
    rotate_age_minutes: Option<Spanned<u64>>,
    retain_size_mib: Option<Spanned<u64>>,
    retain_days: Option<Spanned<u64>>,
    fsync: Option<RawFsync>,
    fsync_interval_ms: Option<Spanned<u64>>,
    format: Option<RawFormat>,
    on_write_error: Option<WriteErrorAction>,
    forward: Option<RawForward>,
    seal_key: Option<Spanned<String>>,
    seal_interval_seconds: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    address: Spanned<String>,
    #[serde(default)]
    framing: Framing,
    #[serde(default)]
    tls: bool,
    ca_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawFormat {
    Compact,
    Jsonl,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawFsync {
    Batch,
    Interval,
    Never,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<RawInterfaces>,
    #[serde(default)]
    interfaces_exclude: Vec<Spanned<String>>,
    xdp_mode: Option<Spanned<XdpMode>>,
    cgroup: Option<Spanned<String>>,
    policy: RawPolicy,
    pin_dir: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    metrics: RawMetrics,
}

/// Collects problems with their places.
struct Checker {
    sources: SourceSet,
    problems: Vec<Problem>,
}

impl Checker {
    fn problem<T>(&mut self, value: &Spanned<T>, field: String, message: impl Into<String>) {
        let span = Span {
            file: 0,
            range: value.span(),
        };
        self.problems.push(Problem {
            location: Some(self.sources.location(&span)),
            field: Some(field),
            message: message.into(),
        });
    }

    /// A number above zero (`default` when absent), or a problem.
    fn positive(&mut self, value: Option<&Spanned<u64>>, field: &str, default: u64) -> u64 {
        match value {
            None => default,
            Some(value) if *value.get_ref() == 0 => {
                self.problem(value, field.to_owned(), "must be above zero");
                default
            }
            Some(value) => *value.get_ref(),
        }
    }

    /// The interface selection: `"all"` (the default) with its exclusions and mode, or
    /// the listed interfaces; names checked, and the settings that only go with `"all"`
    /// refused beside a list.
    fn interfaces(&mut self, raw: &RawConfig) -> Interfaces {
        let mut names = Vec::new();
        let mut interface_name = |checker: &mut Self, name: &Spanned<String>, field: String| {
            let text = name.get_ref();
            if text.is_empty() || text.len() > MAX_IFNAME || text.contains(['/', ' ', '\0']) {
                checker.problem(
                    name,
                    field,
                    format!("`{text}` is not an interface name (1 to {MAX_IFNAME} bytes, no `/` or spaces)"),
                );
            } else if names.contains(text) {
                checker.problem(name, field, format!("`{text}` is listed twice"));
            }
            names.push(text.clone());
        };
        match &raw.interfaces {
            None | Some(RawInterfaces::All) => {
                for (i, name) in raw.interfaces_exclude.iter().enumerate() {
                    interface_name(self, name, format!("interfaces_exclude[{i}]"));
                }
                Interfaces::All {
                    exclude: raw
                        .interfaces_exclude
                        .iter()
                        .map(|name| name.get_ref().clone())
                        .collect(),
                    xdp_mode: raw
                        .xdp_mode
                        .as_ref()
                        .map_or(XdpMode::Auto, |m| *m.get_ref()),
                }
            }
            Some(RawInterfaces::Listed(list)) => {
                for (i, interface) in list.iter().enumerate() {
                    interface_name(self, &interface.name, format!("interfaces[{i}].name"));
                }
                if let Some(first) = raw.interfaces_exclude.first() {
                    self.problem(
                        first,
                        "interfaces_exclude".to_owned(),
                        "only goes with `interfaces = \"all\"`; leave the interface out of the list instead",
                    );
                }
                if let Some(mode) = &raw.xdp_mode {
                    self.problem(
                        mode,
                        "xdp_mode".to_owned(),
                        "only goes with `interfaces = \"all\"`; set `xdp_mode` in each [[interfaces]] table instead",
                    );
                }
                Interfaces::Listed(
                    list.iter()
                        .map(|interface| Interface {
                            name: interface.name.get_ref().clone(),
                            xdp_mode: interface.xdp_mode,
                        })
                        .collect(),
                )
            }
        }
    }

    /// An absolute path, or a problem.
    fn absolute(&mut self, value: &Spanned<String>, field: &str) -> PathBuf {
        let path = PathBuf::from(value.get_ref());
        if !path.is_absolute() {
            self.problem(value, field.to_owned(), "must be an absolute path");
        }
        path
    }

    /// An absolute path to an existing file, or a problem.
    fn file(&mut self, value: &Spanned<String>, field: &str) -> PathBuf {
        let path = self.absolute(value, field);
        if path.is_absolute() && !path.is_file() {
            self.problem(
                value,
                field.to_owned(),
                format!("no file at {}", path.display()),
            );
        }
        path
    }

    /// `[audit.forward]`: the collector's address, the framing, and TLS with its files
    /// read as the agent will read them, so a certificate or key problem is reported
    /// here and not when the agent starts.
    fn forward(&mut self, forward: &RawForward) -> Option<Forward> {
        let field = |key: &str| format!("audit.forward.{key}");
        let address = match forward.address.get_ref().parse::<Collector>() {
            Ok(address) => Some(address),
            Err(err) => {
                self.problem(&forward.address, field("address"), err.to_string());
                None
            }
        };
        let tls_keys = [
            ("ca_file", forward.ca_file.as_ref()),
            ("server_name", forward.server_name.as_ref()),
            ("cert_file", forward.cert_file.as_ref()),
            ("key_file", forward.key_file.as_ref()),
        ];
        if !forward.tls {
            // Without `tls = true` these would be ignored and records sent in the clear.
            for (key, value) in tls_keys {
                if let Some(value) = value {
                    self.problem(
                        value,
                        field(key),
                        "only goes with `tls = true`; without it records are sent as plain TCP",
                    );
                }
            }
            return address.map(|address| Forward {
                address,
                framing: forward.framing,
                tls: None,
            });
        }
        let before = self.problems.len();
        let ca_file = match &forward.ca_file {
            Some(ca_file) => Some(self.file(ca_file, &field("ca_file"))),
            None => {
                self.problem(
                    &forward.address,
                    field("ca_file"),
                    "`tls = true` needs the CA file the collector's certificate chains to",
                );
                None
            }
        };
        let client_certificate = match (&forward.cert_file, &forward.key_file) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
                cert_file: self.file(cert_file, &field("cert_file")),
                key_file: self.file(key_file, &field("key_file")),
            }),
            (Some(cert_file), None) => {
                self.problem(
                    cert_file,
                    field("cert_file"),
                    "needs `key_file` too: the client certificate's private key (PEM)",
                );
                None
            }
            (None, Some(key_file)) => {
                self.problem(
                    key_file,
                    field("key_file"),
                    "needs `cert_file` too: the client certificate (PEM) the key belongs to",
                );
                None
            }
        };
        let address = address?;
        let server_name = forward.server_name.as_ref().map_or_else(
            || address.default_server_name(),
            |name| name.get_ref().clone(),
        );
        let ca_file = ca_file?;
        if self.problems.len() == before {
            // The files exist: read them as the agent will.
            if let Err(err) = Tls::new(&ca_file, client_certificate.as_ref(), &server_name) {
                let place = match err.key() {
                    "cert_file" => forward.cert_file.as_ref(),
                    "key_file" => forward.key_file.as_ref(),
                    "server_name" => forward.server_name.as_ref(),
                    _ => forward.ca_file.as_ref(),
                }
                .unwrap_or(&forward.address);
                self.problem(place, field(err.key()), err.to_string());
            }
        }
        Some(Forward {
            address,
            framing: forward.framing,
            tls: Some(ForwardTls {
                ca_file,
                server_name,
                client_certificate,
            }),
        })
    }
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            problems: vec![Problem {
                location: None,
                field: None,
                message: format!("cannot read {}: {err}", path.display()),
            }],
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Checks config text; `name` is the file name used in locations.
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigError> {
        let mut checker = Checker {
            sources: SourceSet::default(),
            problems: Vec::new(),
        };
        checker.sources.add(name, text);
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                // The parser names the field (unknown field, missing field, wrong type or
                // value) in its message.
                let location = err.span().map(|range| {
                    checker.sources.location(&Span {
                        file: 0,
                        range: range.start..range.end,
                    })
                });
                return Err(ConfigError {
                    problems: vec![Problem {
                        location,
                        field: None,
                        message: err.message().to_owned(),
                    }],
                });
            }
        };

        let interfaces = checker.interfaces(&raw);

        let cgroup = match &raw.cgroup {
            Some(value) => {
                let path = value.get_ref().trim_matches('/');
                if path.split('/').any(|c| c == "." || c == "..")
                    || value.get_ref().starts_with("/sys/")
                {
                    checker.problem(
                        value,
                        "cgroup".to_owned(),
                        "must be relative to the cgroup2 root, without `.` or `..`",
                    );
                }
                path.to_owned()
            }
            None => String::new(),
        };

        let policy = PolicySource {
            path: checker.absolute(&raw.policy.path, "policy.path"),
            trusted_keys: raw
                .policy
                .trusted_keys
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    let field = format!("policy.trusted_keys[{i}]");
                    let path = checker.absolute(key, &field);
                    if path.is_absolute() && !path.is_file() {
                        checker.problem(key, field, format!("no key file at {}", path.display()));
                    }
                    path
                })
                .collect(),
        };

        let pin_dir = raw.pin_dir.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_PIN_DIR),
            |value| checker.absolute(value, "pin_dir"),
        );
        let state_dir = raw.state_dir.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_STATE_DIR),
            |value| checker.absolute(value, "state_dir"),
        );
        let data_dir = raw.data_dir.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_DATA_DIR),
            |value| checker.absolute(value, "data_dir"),
        );
        let audit = Audit {
            dir: raw.audit.dir.as_ref().map_or_else(
                || PathBuf::from(DEFAULT_AUDIT_DIR),
                |value| checker.absolute(value, "audit.dir"),
            ),
            dedup_window: Duration::from_millis(raw.audit.dedup_window_ms.unwrap_or(1000)),
            fold_sources: raw
                .audit
                .fold_sources
                .unwrap_or(enforcer_common::maps::DEFAULT_FOLD_SOURCES),
            rotate_bytes: checker.positive(
                raw.audit.rotate_size_mib.as_ref(),
                "audit.rotate_size_mib",
                64,
            ) * MIB,
            rotate_age: Duration::from_secs(
                checker.positive(
                    raw.audit.rotate_age_minutes.as_ref(),
                    "audit.rotate_age_minutes",
                    60,
                ) * 60,
            ),
            retain_bytes: checker.positive(
                raw.audit.retain_size_mib.as_ref(),
                "audit.retain_size_mib",
                10_240,
            ) * MIB,
            retain_age: Duration::from_secs(
                checker.positive(raw.audit.retain_days.as_ref(), "audit.retain_days", 365) * 86_400,
            ),
            fsync: match raw.audit.fsync.unwrap_or(RawFsync::Interval) {
                RawFsync::Batch => Fsync::Batch,
                RawFsync::Never => Fsync::Never,
                RawFsync::Interval => Fsync::Interval(Duration::from_millis(checker.positive(
                    raw.audit.fsync_interval_ms.as_ref(),
                    "audit.fsync_interval_ms",
                    1000,
                ))),
            },
            format: match raw.audit.format.unwrap_or(RawFormat::Compact) {
                RawFormat::Compact => Format::Compact,
                RawFormat::Jsonl => Format::Lines,
            },
            on_write_error: raw
                .audit
                .on_write_error
                .unwrap_or(WriteErrorAction::KeepEnforcing),
            seal_key: raw
                .audit
                .seal_key
                .as_ref()
                .map(|value| checker.absolute(value, "audit.seal_key")),
            seal_interval: Duration::from_secs(checker.positive(
                raw.audit.seal_interval_seconds.as_ref(),
                "audit.seal_interval_seconds",
                900,
            )),
            forward: raw
                .audit
                .forward
                .as_ref()
                .and_then(|forward| checker.forward(forward)),
        };
        let metrics_listen = match &raw.metrics.listen {
            Some(value) => value.get_ref().parse().unwrap_or_else(|_| {
                checker.problem(
                    value,
                    "metrics.listen".to_owned(),
                    format!("`{}` is not an address:port", value.get_ref()),
                );
                DEFAULT_METRICS_LISTEN.parse().expect("valid default")
            }),
            None => DEFAULT_METRICS_LISTEN.parse().expect("valid default"),
        };

        if checker.problems.is_empty() {
            Ok(Self {
                interfaces,
                cgroup,
                policy,
                pin_dir,
                state_dir,
                data_dir,
                audit,
                metrics_listen,
            })
        } else {
            Err(ConfigError {
                problems: checker.problems,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        Config::parse("enforcer.toml", text)
            .expect_err("the config should be refused")
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let config = Config::parse(
            "enforcer.toml",
            "[policy]\npath = \"/etc/enforcer/policy\"\n",
        )
        .expect("minimal config");
        assert_eq!(
            config.interfaces,
            Interfaces::All {
                exclude: vec![],
                xdp_mode: XdpMode::Auto
            }
        );
        assert_eq!(config.cgroup, "");
        assert_eq!(config.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(config.audit.dedup_window, Duration::from_secs(1));
        assert!(config.metrics_listen.ip().is_loopback());
    }

    #[test]
    fn every_bad_field_is_named_with_its_place() {
        let found = problems(
            r#"
cgroup = "../escape"
pin_dir = "relative/pins"

[policy]
path = "policy"
trusted_keys = ["/nonexistent/enforcer-test.pub"]

[[interfaces]]
name = "an-interface-name-too-long"

[[interfaces]]
name = "eth0"

[[interfaces]]
name = "eth0"
xdp_mode = "skb"

[metrics]
listen = "localhost"
"#,
        );
        assert_eq!(
            found,
            [
                "enforcer.toml:10:8: `interfaces[0].name`: `an-interface-name-too-long` is not an interface name (1 to 15 bytes, no `/` or spaces)",
                "enforcer.toml:16:8: `interfaces[2].name`: `eth0` is listed twice",
                "enforcer.toml:2:10: `cgroup`: must be relative to the cgroup2 root, without `.` or `..`",
                "enforcer.toml:6:8: `policy.path`: must be an absolute path",
                "enforcer.toml:7:17: `policy.trusted_keys[0]`: no key file at /nonexistent/enforcer-test.pub",
                "enforcer.toml:3:11: `pin_dir`: must be an absolute path",
                "enforcer.toml:20:10: `metrics.listen`: `localhost` is not an address:port",
            ]
        );
    }

    #[test]
    fn interfaces_are_all_but_loopback_and_the_excluded_or_exactly_a_list() {
        let all = Config::parse(
            "enforcer.toml",
            "interfaces = \"all\"\ninterfaces_exclude = [\"docker0\"]\nxdp_mode = \"skb\"\n[policy]\npath = \"/p\"\n",
        )
        .expect("all with exclusions");
        assert_eq!(all.interfaces.selects("eth0"), Some(XdpMode::Skb));
        assert_eq!(all.interfaces.selects("docker0"), None);
        assert_eq!(all.interfaces.selects(LOOPBACK), None);
        let none = Config::parse(
            "enforcer.toml",
            "interfaces = []\n[policy]\npath = \"/p\"\n",
        )
        .expect("an empty list");
        assert_eq!(none.interfaces, Interfaces::Listed(vec![]));
        assert_eq!(none.interfaces.selects("eth0"), None);

        let mixed = problems(
            "interfaces_exclude = [\"eth1\"]\nxdp_mode = \"native\"\n[policy]\npath = \"/p\"\n[[interfaces]]\nname = \"eth0\"\n",
        );
        assert_eq!(
            mixed,
            [
                "enforcer.toml:1:23: `interfaces_exclude`: only goes with `interfaces = \"all\"`; leave the interface out of the list instead",
                "enforcer.toml:2:12: `xdp_mode`: only goes with `interfaces = \"all\"`; set `xdp_mode` in each [[interfaces]] table instead",
            ]
        );
        let word = problems("interfaces = \"every\"\n[policy]\npath = \"/p\"\n");
        assert!(
            word[0].starts_with(
                "enforcer.toml:1:14: invalid value: string \"every\", expected \"all\" or a list"
            ),
            "{word:?}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named_by_the_parser() {
        let unknown = problems(
            "[policy]\npath = \"/p\"\n[[interfaces]]\nname = \"eth0\"\nxdp_mod = \"skb\"\n",
        );
        assert_eq!(unknown.len(), 1);
        assert!(
            unknown[0].starts_with("enforcer.toml:5:1: unknown field `xdp_mod`"),
            "{unknown:?}"
        );
        let bad_mode = problems(
            "[policy]\npath = \"/p\"\n[[interfaces]]\nname = \"eth0\"\nxdp_mode = \"fast\"\n",
        );
        assert!(
            bad_mode[0].starts_with("enforcer.toml:5:12: unknown variant `fast`"),
            "{bad_mode:?}"
        );
        let missing = problems("pin_dir = \"/sys/fs/bpf/x\"\n");
        assert!(missing[0].contains("missing field `policy`"), "{missing:?}");
        let bad_format = problems("[policy]\npath = \"/p\"\n[audit]\nformat = \"xml\"\n");
        assert!(
            bad_format[0].starts_with(
                "enforcer.toml:4:10: unknown variant `xml`, expected `compact` or `jsonl`"
            ),
            "{bad_format:?}"
        );
    }

    fn forward(table: &str) -> Result<Config, Vec<String>> {
        Config::parse(
            "enforcer.toml",
            &format!("[policy]\npath = \"/p\"\n[audit.forward]\n{table}"),
        )
        .map_err(|err| err.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_collector_is_an_address_or_a_host_name_and_framing_defaults_to_octet_counting() {
        let by_ip = forward("address = \"198.18.0.10:6514\"\n")
            .expect("an address")
            .audit
            .forward
            .expect("forwarding");
        assert_eq!(
            by_ip.address,
            Collector::Address("198.18.0.10:6514".parse().unwrap())
        );
        assert_eq!(by_ip.framing, Framing::OctetCounting);
        assert_eq!(by_ip.tls, None);
        let by_name = forward("address = \"collector.example:6514\"\nframing = \"newline\"\n")
            .expect("a host name")
            .audit
            .forward
            .expect("forwarding");
        assert_eq!(
            by_name.address,
            Collector::Name {
                host: "collector.example".to_owned(),
                port: 6514
            }
        );
        assert_eq!(by_name.framing, Framing::Newline);
        assert_eq!(
            forward("address = \"collector.example\"\n").unwrap_err(),
            [
                "enforcer.toml:4:11: `audit.forward.address`: `collector.example` is not a host:port or address:port (no port)"
            ]
        );
        let framing = forward("address = \"198.18.0.10:6514\"\nframing = \"lines\"\n").unwrap_err();
        assert!(
            framing[0].starts_with("enforcer.toml:5:11: unknown variant `lines`, expected `octet-counting` or `newline`"),
            "{framing:?}"
        );
    }

    #[test]
    fn tls_files_are_named_field_by_field() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").expect("write");
        let not_pem = not_pem.display();
        let missing = dir.path().join("missing.pem");
        let missing = missing.display();

        // TLS keys without `tls = true` would send records in the clear.
        assert_eq!(
            forward(&format!("address = \"198.18.0.10:6514\"\nca_file = \"{not_pem}\"\ncert_file = \"{not_pem}\"\n")).unwrap_err(),
            [
                "enforcer.toml:5:11: `audit.forward.ca_file`: only goes with `tls = true`; without it records are sent as plain TCP",
                "enforcer.toml:6:13: `audit.forward.cert_file`: only goes with `tls = true`; without it records are sent as plain TCP",
            ]
        );
        // Both or neither; absolute; present.
        assert_eq!(
            forward(&format!("address = \"198.18.0.10:6514\"\ntls = true\nca_file = \"{missing}\"\ncert_file = \"client.pem\"\n")).unwrap_err(),
            [
                format!("enforcer.toml:6:11: `audit.forward.ca_file`: no file at {missing}"),
                "enforcer.toml:7:13: `audit.forward.cert_file`: needs `key_file` too: the client certificate's private key (PEM)".to_owned(),
            ]
        );
        assert_eq!(
            forward(&format!("address = \"198.18.0.10:6514\"\ntls = true\nca_file = \"{not_pem}\"\nkey_file = \"{not_pem}\"\n")).unwrap_err(),
            ["enforcer.toml:7:12: `audit.forward.key_file`: needs `cert_file` too: the client certificate (PEM) the key belongs to"]
        );
        assert_eq!(
            forward(&format!("address = \"198.18.0.10:6514\"\ntls = true\nca_file = \"{not_pem}\"\ncert_file = \"relative.pem\"\nkey_file = \"{missing}\"\n")).unwrap_err(),
            [
                "enforcer.toml:7:13: `audit.forward.cert_file`: must be an absolute path".to_owned(),
                format!("enforcer.toml:8:12: `audit.forward.key_file`: no file at {missing}"),
            ]
        );
        // The files are read as the agent reads them.
        assert_eq!(
            forward(&format!(
                "address = \"198.18.0.10:6514\"\ntls = true\nca_file = \"{not_pem}\"\n"
            ))
            .unwrap_err(),
            [format!(
                "enforcer.toml:6:11: `audit.forward.ca_file`: {not_pem}: no PEM certificate in the file"
            )]
        );
        assert_eq!(
            forward(&format!("address = \"198.18.0.10:6514\"\ntls = true\nca_file = \"{not_pem}\"\nserver_name = \"not a name\"\n")).unwrap_err(),
            ["enforcer.toml:7:15: `audit.forward.server_name`: `not a name` is not a DNS name or an IP address"]
        );
    }
}
