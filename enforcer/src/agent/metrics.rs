//! `/metrics` (Prometheus text, through `prometheus-client`) and `/healthz`, served on
//! the configured address. Every scrape reads the kernel counters from the pinned maps,
//! so the figures are the kernel's own, not a copy that could lag.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, atomic::Ordering},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use super::{Shared, consumer::AuditStats};
use crate::{
    audit::forward::{Failure, ForwardStats},
    loader::{CGROUP_HOOKS, PinLayout, PinnedMaps},
};

/// What a scrape reads.
pub struct MetricsSource {
    /// The agent's maps, opened through their pins.
    pub maps: Mutex<PinnedMaps>,
    /// The pins, for the health check.
    pub pins: PinLayout,
    /// The agent's reload state and rule names.
    pub shared: Arc<Mutex<Shared>>,
    /// The audit consumer's counts.
    pub audit: Arc<AuditStats>,
    /// The forwarder's counts, when one runs.
    pub forward: Option<Arc<ForwardStats>>,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// SHA-256 (hex) of the kernel object this binary loads, for `enforcer_build_info`;
/// computed once.
fn object_sha256() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| hex::encode(crate::digest::sha256(crate::object::BYTES)))
}

impl MetricsSource {
    /// The exposition text.
    pub fn render(&self) -> Result<String, String> {
        let (counters, fill) = {
            let mut maps = self.maps.lock().expect("the metrics lock is not poisoned");
            let counters = maps.counters().map_err(|err| err.to_string())?;
            let fill = maps.map_fill().map_err(|err| err.to_string())?;
            (counters, fill)
        };
        let mut registry = Registry::with_prefix("enforcer");

        let generation = Gauge::<i64>::default();
        registry.register(
            "policy_generation",
            "The policy generation the kernel enforces (0: none yet)",
            generation.clone(),
        );
        generation.set(i64::from(counters.generation));

        let build = gauge_family(
            &mut registry,
            "build_info",
            "Always 1: the running agent's version and the kernel object it loads",
        );
        build
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("ebpf_sha256", object_sha256().to_owned()),
            ])
            .set(1);

        let rules = counter_family(
            &mut registry,
            "rule_decisions",
            "Decisions per rule of the active generation and verdict (only the verdicts the rule can give), counted across the reloads the rule was in",
        );
        let shared = self.shared.lock().expect("the shared lock is not poisoned");
        for (index, counts) in counters.rules.iter().enumerate() {
            let rule = shared
                .rule_names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("rule-{}", index + 1));
            let mut total = shared.carried.get(&rule).copied().unwrap_or_default();
            total.add(counts);
            // An allow rule only allows; a deny rule denies or, in audit mode, audits.
            let verdicts: &[(&str, u64)] = match shared.rule_denies.as_ref().map(|d| d.get(index)) {
                Some(Some(false)) => &[("allow", total.allow)],
                Some(Some(true)) => &[("deny", total.deny), ("audit", total.audit)],
                _ => &[
                    ("allow", total.allow),
                    ("deny", total.deny),
                    ("audit", total.audit),
                ],
            };
            for (verdict, count) in verdicts {
                rules
                    .get_or_create(&vec![
                        ("rule", rule.clone()),
                        ("verdict", (*verdict).to_owned()),
                    ])
                    .inc_by(*count);
            }
        }

        let reasons = counter_family(
            &mut registry,
            "decisions",
            "Decisions per reason and verdict since the programs were first loaded",
        );
        for count in &counters.by_reason {
            reasons
                .get_or_create(&vec![
                    ("reason", count.reason.word().to_owned()),
                    ("verdict", count.verdict.word().to_owned()),
                ])
                .inc_by(count.count);
        }

        let events = counter_family(
            &mut registry,
            "events",
            "Flow events written to the ring buffer, lost to a full ring, or suppressed as duplicates",
        );
        for (outcome, count) in [
            ("emitted", counters.events.emitted),
            ("lost", counters.events.lost),
            ("suppressed", counters.events.suppressed),
        ] {
            events
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(count);
        }

        let stored = Counter::<u64>::default();
        registry.register(
            "audit_flow_records",
            "Flow records written to the audit store",
            stored.clone(),
        );
        stored.inc_by(self.audit.flows.load(Ordering::Relaxed));
        let lost = counter_family(
            &mut registry,
            "audit_lost_events",
            "Events recorded as lost in the audit store's gap records, by cause",
        );
        for (cause, count) in [
            ("ring-full", &self.audit.lost_ring),
            ("write-error", &self.audit.lost_write),
        ] {
            lost.get_or_create(&vec![("cause", cause.to_owned())])
                .inc_by(count.load(Ordering::Relaxed));
        }
        let writable = Gauge::<i64>::default();
        registry.register(
            "audit_store_writable",
            "1 while the last audit write succeeded, 0 while records cannot be written",
            writable.clone(),
        );
        writable.set(i64::from(self.audit.store_ok.load(Ordering::Relaxed)));

        if let Some(forward) = &self.forward {
            let delivered = Counter::<u64>::default();
            registry.register(
                "audit_forwarded_records",
                "Records the syslog collector's TCP stack acknowledged",
                delivered.clone(),
            );
            delivered.inc_by(forward.delivered.load(Ordering::Relaxed));
            let connected = Gauge::<i64>::default();
            registry.register(
                "audit_forward_connected",
                "1 while connected to the syslog collector",
                connected.clone(),
            );
            connected.set(i64::from(forward.connected.load(Ordering::Relaxed)));
            let failures = counter_family(
                &mut registry,
                "audit_forward_failures",
                "Failed attempts to reach the syslog collector and lost connections, by reason (resolve, connect, tls, lost)",
            );
            for failure in Failure::ALL {
                failures
                    .get_or_create(&vec![("reason", failure.word().to_owned())])
                    .inc_by(forward.failures(failure));
            }
        }

        let reloads = counter_family(&mut registry, "reloads", "Policy reloads by outcome");
        for (outcome, count) in &shared.reloads {
            reloads
                .get_or_create(&vec![("outcome", outcome.word().to_owned())])
                .inc_by(*count);
        }
        let xdp = gauge_family(
            &mut registry,
            "interface_xdp",
            "1 while XDP ingress is attached to the interface, 0 when attaching failed",
        );
        for (name, state) in &shared.interfaces {
            xdp.get_or_create(&vec![
                ("interface", name.clone()),
                ("mode", state.mode.clone()),
            ])
            .set(i64::from(state.error.is_none()));
        }
        drop(shared);

        let entries = gauge_family(&mut registry, "map_entries", "Entries in a bounded map");
        let limits = gauge_family(&mut registry, "map_limit", "The most entries a map holds");
        for map in &fill {
            let labels = vec![("map", map.map.to_owned())];
            entries
                .get_or_create(&labels)
                .set(as_i64(map.entries.into()));
            limits.get_or_create(&labels).set(as_i64(map.limit.into()));
        }

        let mut text = String::new();
        encode(&mut text, &registry).map_err(|err| err.to_string())?;
        Ok(text)
    }

    /// `Ok` when every configured hook has its link and a policy is active; else what
    /// is missing.
    pub fn health(&self) -> Result<(), String> {
        let links = self.pins.links().map_err(|err| err.to_string())?;
        let attached = |name: &str| {
            links
                .iter()
                .any(|link| link.name == name && link.details.is_ok())
        };
        let mut missing: Vec<String> = CGROUP_HOOKS
            .iter()
            .map(|hook| hook.program_name())
            .filter(|name| !attached(name))
            .map(str::to_owned)
            .collect();
        let interfaces = self
            .shared
            .lock()
            .expect("the shared lock is not poisoned")
            .interfaces
            .clone();
        for (interface, state) in &interfaces {
            let pin = self.pins.xdp_link(interface);
            let name = pin.file_name().map(|n| n.to_string_lossy().into_owned());
            if state.error.is_some() || !name.as_deref().is_some_and(attached) {
                missing.push(format!("xdp on {interface}"));
            }
        }
        if !missing.is_empty() {
            return Err(format!("not attached: {}", missing.join(", ")));
        }
        let generation = self
            .maps
            .lock()
            .expect("the metrics lock is not poisoned")
            .active_generation()
            .map_err(|err| err.to_string())?;
        if generation == 0 {
            return Err("no policy is active".to_owned());
        }
        Ok(())
    }

    fn respond(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match request.uri().path() {
            "/metrics" => match self.render() {
                Ok(text) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(err) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot read the counters: {err}\n"),
                ),
            },
            "/healthz" => match self.health() {
                Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                Err(err) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{err}\n"),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics or /healthz\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    }
}

/// Serves `/metrics` and `/healthz` until the runtime stops.
pub async fn serve(listener: TcpListener, source: Arc<MetricsSource>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "metrics: accept failed");
                continue;
            }
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = source.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "metrics: connection ended with an error");
            }
        });
    }
}
