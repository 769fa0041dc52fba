//! From policy files to a typed [`Policy`], with a diagnostic for everything that is
//! wrong (each naming `file:line:col`) and nothing compiled when anything is.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    str::FromStr,
};

use enforcer_common::maps::MAX_CGROUP_DEPTH;
use ipnet::IpNet;
use toml::Spanned;

use super::{
    chunk,
    diagnostic::{self, Diagnostic},
    model::{
        Action, AuditLevel, Defaults, Failsafe, IMPLICIT, Mode, Policy, PortRange, Rule, Segment,
        SegmentRef,
    },
    source::{SourceSet, Span},
    syntax::{RawFile, RawRule, RawSegment},
};

/// The outcome of reading a policy: the policy if it is valid, and every finding.
#[derive(Debug)]
pub struct Validated {
    /// `Some` when there is no error.
    pub policy: Option<Policy>,
    /// Errors and warnings in source order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and validates every file of `sources` as one policy.
pub fn validate(sources: &SourceSet) -> Validated {
    let mut v = Validator {
        sources,
        diagnostics: Vec::new(),
        cidr_members: Vec::new(),
        cgroup_members: Vec::new(),
        port_members: Vec::new(),
        defaults: None,
        failsafes: BTreeMap::new(),
        segments: BTreeMap::new(),
        rules: Vec::new(),
        rule_ids: HashMap::new(),
    };
    let mut files = Vec::new();
    for (index, file) in sources.files.iter().enumerate() {
        for (offset, parsed) in parse_pieces(&file.text) {
            let loc = Loc {
                file: index,
                offset,
            };
            let err = match parsed {
                Ok(raw) => {
                    files.push((loc, raw));
                    continue;
                }
                Err(err) => err,
            };
            let range = err
                .span()
                .map_or(offset..offset, |r| r.start + offset..r.end + offset);
            let code = if err.message().starts_with("unknown field") {
                "unknown-field"
            } else {
                "syntax"
            };
            v.diagnostics.push(Diagnostic::error(
                code,
                Span { file: index, range },
                err.message().trim().to_owned(),
            ));
        }
    }
    let mut raw_rules = Vec::new();
    for (loc, raw) in files {
        v.defaults(loc, raw.defaults);
        for (name, failsafe) in raw.failsafe {
            v.failsafe(loc, name, failsafe);
        }
        for (name, segment) in raw.segments {
            v.segment(loc, name, segment);
        }
        for (action, rules) in [(Action::Allow, raw.allow), (Action::Deny, raw.deny)] {
            raw_rules.extend(rules.into_iter().map(|rule| (loc, action, rule)));
        }
    }
    // Declaration order: file load order, then position within the file.
    raw_rules.sort_by_key(|(loc, _, rule)| (loc.file, loc.offset + rule.span().start));
    v.check_overlaps();
    for (loc, action, rule) in raw_rules {
        v.rule(loc, action, rule);
    }
    let has_errors = v.diagnostics.iter().any(Diagnostic::is_error);
    let policy = (!has_errors).then(|| Policy {
        defaults: v.defaults.map(|(defaults, _)| defaults).unwrap_or_default(),
        failsafes: v.failsafes.into_values().collect(),
        segments: v.segments.into_values().collect(),
        rules: v.rules,
    });
    diagnostic::sort_by_place(&mut v.diagnostics);
    Validated {
        policy,
        diagnostics: v.diagnostics,
    }
}

struct Validator<'s> {
    sources: &'s SourceSet,
    diagnostics: Vec<Diagnostic>,
    /// Every segment member with its segment and place, for the overlap checks.
    cidr_members: Vec<(IpNet, String, Span)>,
    cgroup_members: Vec<(String, String, Span)>,
    port_members: Vec<(PortRange, String, Span)>,
    defaults: Option<(Defaults, Span)>,
    failsafes: BTreeMap<String, Failsafe>,
    segments: BTreeMap<String, Segment>,
    rules: Vec<Rule>,
    /// Where each rule id was first used.
    rule_ids: HashMap<String, Span>,
}

/// Where a parsed piece of a file starts: spans inside it are relative to `offset`.
#[derive(Debug, Clone, Copy)]
struct Loc {
    file: usize,
    offset: usize,
}

fn span<T>(loc: Loc, value: &Spanned<T>) -> Span {
    let range = value.span();
    Span {
        file: loc.file,
        range: range.start + loc.offset..range.end + loc.offset,
    }
}

/// Parses the pieces of one file, on as many threads as there are cores when it has
/// more than one piece.
fn parse_pieces(text: &str) -> Vec<(usize, Result<RawFile, toml::de::Error>)> {
    let pieces = chunk::split(text);
    let parse = |range: &std::ops::Range<usize>| {
        (range.start, toml::from_str::<RawFile>(&text[range.clone()]))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(pieces.len());
    if threads <= 1 {
        return pieces.iter().map(parse).collect();
    }
    let per_thread = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = pieces
            .chunks(per_thread)
            .map(|share| scope.spawn(move || share.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("the TOML parser does not panic"))
            .collect()
    })
}

/// Segment names and rule ids: a letter or digit, then letters, digits, `-`, `_`, `.`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Validator<'_> {
    fn error(&mut self, code: &'static str, span: Span, message: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::error(code, span, message));
    }

    fn choice<T: Copy>(
        &mut self,
        loc: Loc,
        value: &Spanned<String>,
        field: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let found = choices
            .iter()
            .find(|(name, _)| *name == value.get_ref().as_str());
        if found.is_none() {
            let expected: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            self.error(
                "bad-value",
                span(loc, value),
                format!("`{field}` must be one of {}", expected.join(", ")),
            );
        }
        found.map(|(_, v)| *v)
    }

    fn defaults(&mut self, loc: Loc, raw: Option<Spanned<super::syntax::RawDefaults>>) {
        let Some(raw) = raw else { return };
        let here = span(loc, &raw);
        if let Some((_, first)) = &self.defaults {
            let first = first.clone();
            let note = format!("first set at {}", self.sources.location(&first));
            self.diagnostics.push(
                Diagnostic::error("duplicate-defaults", here, "[defaults] is set twice")
                    .with_note(note),
            );
            return;
        }
        let raw = raw.into_inner();
        let mut defaults = Defaults::default();
        if let Some(audit) = &raw.audit
            && let Some(level) = self.choice(
                loc,
                audit,
                "audit",
                &[("all", AuditLevel::All), ("deny", AuditLevel::Deny)],
            )
        {
            defaults.audit = level;
        }
        if let Some(unclassified) = &raw.unclassified
            && let Some(action) = self.choice(
                loc,
                unclassified,
                "unclassified",
                &[("deny", Action::Deny), ("allow", Action::Allow)],
            )
        {
            defaults.unclassified = action;
        }
        self.defaults = Some((defaults, here));
    }

    fn cidr(&mut self, loc: Loc, text: &Spanned<String>) -> Option<IpNet> {
        let raw = text.get_ref().trim();
        let net = IpNet::from_str(raw)
            .ok()
            .or_else(|| IpAddr::from_str(raw).ok().map(IpNet::from));
        match net {
            None => {
                self.error(
                    "bad-cidr",
                    span(loc, text),
                    format!("`{raw}` is not an IPv4 or IPv6 CIDR"),
                );
                None
            }
            Some(net) if net.trunc() != net => {
                self.diagnostics.push(
                    Diagnostic::error(
                        "bad-cidr",
                        span(loc, text),
                        format!("`{raw}` has host bits set"),
                    )
                    .with_note(format!("did you mean {}?", net.trunc())),
                );
                None
            }
            Some(IpNet::V6(net))
                if net.prefix_len() >= 96 && net.addr().to_ipv4_mapped().is_some() =>
            {
                let v4 = net.addr().to_ipv4_mapped().map(|addr| {
                    ipnet::Ipv4Net::new(addr, net.prefix_len() - 96).map(|v4| v4.trunc())
                });
                let mut warning = Diagnostic::warning(
                    "mapped-prefix",
                    span(loc, text),
                    format!(
                        "`{raw}` is an IPv4-mapped IPv6 prefix: such addresses are decided as their IPv4 address, so it matches nothing"
                    ),
                );
                if let Some(Ok(v4)) = v4 {
                    warning = warning.with_note(format!("did you mean {v4}?"));
                }
                self.diagnostics.push(warning);
                Some(IpNet::V6(net))
            }
            Some(net) => Some(net),
        }
    }

    fn port(&mut self, loc: Loc, text: &Spanned<String>) -> Option<PortRange> {
        match PortRange::from_str(text.get_ref()) {
            Ok(range) => Some(range),
            Err(err) => {
                self.error(
                    "bad-port",
                    span(loc, text),
                    format!("bad port `{}`: {err}", text.get_ref()),
                );
                None
            }
        }
    }

    /// A TCP or UDP port range: what a failsafe opens and what a segment listens on. ICMP
    /// types are for rules only.
    fn transport_port(
        &mut self,
        loc: Loc,
        text: &Spanned<String>,
        what: &str,
    ) -> Option<PortRange> {
        let range = self.port(loc, text)?;
        if range.proto.is_icmp() {
            self.error(
                "icmp-not-a-port",
                span(loc, text),
                format!(
                    "{what} takes TCP or UDP ports; `{}` names ICMP message types, which only rules take",
                    text.get_ref()
                ),
            );
            return None;
        }
        Some(range)
    }

    fn failsafe(
        &mut self,
        loc: Loc,
        name: Spanned<String>,
        raw: Spanned<super::syntax::RawFailsafe>,
    ) {
        let here = span(loc, &name);
        if self.failsafes.contains_key(name.get_ref()) {
            self.error(
                "duplicate-failsafe",
                here,
                format!("failsafe `{}` is declared twice", name.get_ref()),
            );
            return;
        }
        let raw = raw.into_inner();
        if raw.from.get_ref().is_empty() {
            self.error(
                "empty-list",
                span(loc, &raw.from),
                "a failsafe needs at least one source CIDR in `from`",
            );
        }
        let from: Vec<IpNet> = raw
            .from
            .get_ref()
            .iter()
            .filter_map(|c| self.cidr(loc, c))
            .collect();
        let Some(ports) = self.transport_port(loc, &raw.port, "a failsafe") else {
            return;
        };
        self.failsafes.insert(
            name.get_ref().clone(),
            Failsafe {
                name: name.into_inner(),
                from,
                ports,
                span: here,
            },
        );
    }

    fn cgroup_path(&mut self, loc: Loc, text: &Spanned<String>) -> Option<String> {
        let raw = text.get_ref().trim();
        let path = raw.trim_matches('/');
        let depth = path.split('/').count();
        let problem = if path.is_empty() {
            Some("is empty (the cgroup2 root cannot be a segment member)".to_owned())
        } else if path.starts_with("sys/fs/cgroup") {
            Some("must be relative to the cgroup2 root: drop the mount point prefix".to_owned())
        } else if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            Some("has an empty, `.` or `..` component".to_owned())
        } else if path.contains('\0') {
            Some("contains a NUL byte".to_owned())
        } else if depth > MAX_CGROUP_DEPTH as usize {
            Some(format!(
                "is {depth} levels deep; the kernel classifies cgroups at most {MAX_CGROUP_DEPTH} levels below the root"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                "bad-cgroup",
                span(loc, text),
                format!("cgroup path `{raw}` {problem}"),
            );
            return None;
        }
        Some(path.to_owned())
    }

    fn segment(&mut self, loc: Loc, name: Spanned<String>, raw: Spanned<RawSegment>) {
        let here = span(loc, &name);
        let text = name.get_ref().as_str();
        if IMPLICIT.contains(&text) {
            self.error(
                "reserved-segment",
                here,
                format!("`{text}` is an implicit segment and cannot be declared"),
            );
            return;
        }
        if !is_identifier(text) {
            self.error(
                "bad-name",
                here,
                format!("segment name `{text}` must be letters, digits, `-`, `_` or `.`"),
            );
            return;
        }
        if self.segments.contains_key(text) {
            self.error(
                "duplicate-segment",
                here,
                format!("segment `{text}` is declared twice"),
            );
            return;
        }
        let whole = span(loc, &raw);
        let raw = raw.into_inner();
        if raw.cgroups.is_empty() && raw.cidrs.is_empty() && raw.ports.is_empty() {
            self.error(
                "empty-segment",
                whole,
                format!("segment `{text}` has no cgroups, cidrs or ports"),
            );
        }
        let mut cgroups = Vec::new();
        for text in &raw.cgroups {
            if let Some(path) = self.cgroup_path(loc, text) {
                self.cgroup_members
                    .push((path.clone(), name.get_ref().clone(), span(loc, text)));
                cgroups.push(path);
            }
        }
        let mut cidrs = Vec::new();
        for text in &raw.cidrs {
            if let Some(net) = self.cidr(loc, text) {
                self.cidr_members
                    .push((net, name.get_ref().clone(), span(loc, text)));
                cidrs.push(net);
            }
        }
        let mut ports = Vec::new();
        for text in &raw.ports {
            if let Some(range) = self.transport_port(loc, text, "a segment's `ports`") {
                self.port_members
                    .push((range, name.get_ref().clone(), span(loc, text)));
                ports.push(range);
            }
        }
        let mode = raw
            .mode
            .as_ref()
            .and_then(|m| {
                self.choice(
                    loc,
                    m,
                    "mode",
                    &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
                )
            })
            .unwrap_or(Mode::Enforce);
        self.segments.insert(
            text.to_owned(),
            Segment {
                name: name.into_inner(),
                cgroups,
                cidrs,
                ports,
                mode,
                raw_sockets: raw.raw_sockets.is_some_and(|r| r.into_inner()),
                icmp_errors: raw.icmp_errors.is_some_and(|r| r.into_inner()),
                span: here,
            },
        );
    }

    /// The same CIDR or cgroup listed twice, or one listener port served twice: each is
    /// reported at its second appearance, naming the first.
    fn check_overlaps(&mut self) {
        let mut problems = Vec::new();
        let mut first_cidr: HashMap<IpNet, (&str, &Span)> = HashMap::new();
        for (net, segment, place) in &self.cidr_members {
            if let Some((other, first)) = first_cidr.get(net) {
                problems.push((
                    place.clone(),
                    format!("CIDR {net} is listed in `{other}` and again in `{segment}`"),
                    (*first).clone(),
                ));
            } else {
                first_cidr.insert(*net, (segment, place));
            }
        }
        let mut first_cgroup: HashMap<&str, (&str, &Span)> = HashMap::new();
        for (path, segment, place) in &self.cgroup_members {
            if let Some((other, first)) = first_cgroup.get(path.as_str()) {
                problems.push((
                    place.clone(),
                    format!("cgroup `{path}` is listed in `{other}` and again in `{segment}`"),
                    (*first).clone(),
                ));
            } else {
                first_cgroup.insert(path, (segment, place));
            }
        }
        let mut ports: Vec<&(PortRange, String, Span)> = self.port_members.iter().collect();
        ports.sort_by_key(|(range, _, place)| {
            (range.proto, range.first, place.file, place.range.start)
        });
        for pair in ports.windows(2) {
            let ((a, a_segment, a_place), (b, b_segment, b_place)) = (pair[0], pair[1]);
            if a.proto == b.proto && b.first <= a.last {
                problems.push((
                    b_place.clone(),
                    format!("listener ports {b} (`{b_segment}`) overlap {a} (`{a_segment}`)"),
                    a_place.clone(),
                ));
            }
        }
        for (place, message, first) in problems {
            let note = format!("first listed at {}", self.sources.location(&first));
            self.diagnostics
                .push(Diagnostic::error("duplicate-member", place, message).with_note(note));
        }
    }

    fn segment_ref(&mut self, loc: Loc, text: &Spanned<String>) -> Option<SegmentRef> {
        let name = text.get_ref().as_str();
        if name == "*" {
            return Some(SegmentRef::Any);
        }
        if IMPLICIT.contains(&name) || self.segments.contains_key(name) {
            return Some(SegmentRef::Named(name.to_owned()));
        }
        let known: Vec<&str> = self.segments.keys().map(String::as_str).collect();
        let mut diagnostic = Diagnostic::error(
            "unknown-segment",
            span(loc, text),
            format!("unknown segment `{name}`"),
        );
        if let Some(close) = known.iter().find(|k| strsim::levenshtein(k, name) <= 2) {
            diagnostic = diagnostic.with_note(format!("did you mean `{close}`?"));
        }
        diagnostic = diagnostic.with_note(format!(
            "known segments: {}host, world, or * for any",
            known.iter().map(|k| format!("{k}, ")).collect::<String>()
        ));
        self.diagnostics.push(diagnostic);
        None
    }

    fn refs(
        &mut self,
        loc: Loc,
        field: &str,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Vec<SegmentRef> {
        if list.get_ref().is_empty() {
            self.error(
                "empty-list",
                span(loc, list),
                format!("`{field}` needs at least one segment"),
            );
        }
        list.get_ref()
            .iter()
            .filter_map(|r| self.segment_ref(loc, r))
            .collect()
    }

    fn rule(&mut self, loc: Loc, action: Action, raw: Spanned<RawRule>) {
        let raw = raw.into_inner();
        let id = raw.id.get_ref().clone();
        let here = span(loc, &raw.id);
        if !is_identifier(&id) {
            self.error(
                "bad-name",
                here.clone(),
                format!("rule id `{id}` must be letters, digits, `-`, `_` or `.`"),
            );
        } else if let Some(first) = self.rule_ids.get(&id) {
            let note = format!("first used at {}", self.sources.location(first));
            self.diagnostics.push(
                Diagnostic::error(
                    "duplicate-rule-id",
                    here.clone(),
                    format!("rule id `{id}` is used twice"),
                )
                .with_note(note),
            );
        }
        let from = self.refs(loc, "from", &raw.from);
        let to = self.refs(loc, "to", &raw.to);
        if raw.ports.get_ref().is_empty() {
            self.error(
                "empty-list",
                span(loc, &raw.ports),
                "`ports` needs at least one port (use \"*/tcp\" for all)",
            );
        }
        let ports = raw
            .ports
            .get_ref()
            .iter()
            .filter_map(|p| self.port(loc, p))
            .collect();
        self.rule_ids
            .entry(id.clone())
            .or_insert_with(|| here.clone());
        self.rules.push(Rule {
            id,
            action,
            from,
            to,
            ports,
            span: here,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of what `validate` says of a policy whose one segment has `cgroup`.
    fn cgroup_codes(cgroup: &str) -> Vec<&'static str> {
        let mut sources = SourceSet::default();
        sources.add(
            "depth.toml",
            format!("[segments.api]\ncgroups = [\"{cgroup}\"]\n"),
        );
        validate(&sources)
            .diagnostics
            .iter()
            .map(|d| d.code)
            .collect()
    }

    #[test]
    fn a_cgroup_as_deep_as_the_kernel_classifies_is_taken_and_one_deeper_refused() {
        let path = |levels: i32| vec!["a"; levels as usize].join("/");
        assert!(
            !cgroup_codes(&path(MAX_CGROUP_DEPTH)).contains(&"bad-cgroup"),
            "{MAX_CGROUP_DEPTH} levels are classified"
        );
        assert!(cgroup_codes(&path(MAX_CGROUP_DEPTH + 1)).contains(&"bad-cgroup"));
    }
}
