//! The agent: `enforcer run`. It loads (or adopts) the pinned kernel programs, applies
//! the configured policy as a generation, attaches to the configured cgroup and
//! interfaces, then reloads on SIGHUP and on policy file changes and serves metrics until
//! SIGTERM. Stopping leaves every pin, and so enforcement, in place.

mod audit;
pub mod consumer;
pub mod enrich;
mod floor;
pub mod interfaces;
mod metrics;
mod netlink;
mod notify;
#[cfg(test)]
mod ocsf;
pub mod policy;
pub mod state;
pub mod sweep;
mod watch;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::TcpListener as StdTcpListener,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    audit::{history, record},
    config::Config,
    host,
    loader::{Loader, PinLayout, PinnedMaps},
    policy::{
        diff::diff,
        model::Action,
        names::{GENERATIONS_KEPT, GenerationNames},
    },
};
use audit::AuditThread;
use enforcer_common::maps::RuleCounters;
use floor::Floor;
use interfaces::{InterfaceSet, InterfaceXdp};
use policy::{Candidate, CandidateError};
use state::{ActivePolicy, AgentLock, AgentState, Reload, ReloadOutcome, StateDir};
use watch::PolicyChange;

/// How long the policy files must stay quiet before the agent reloads after a change
/// that may be part of a larger edit ([`PolicyChange::Writing`]: a truncation, a write
/// still open, a file removed or renamed away, any change in a policy directory): an
/// editor's write-and-rename, or a `cp` of several files, becomes one reload.
const SETTLE_WRITING: Duration = Duration::from_millis(25);
/// How long after the policy file or bundle is whole ([`PolicyChange::Written`]: its
/// writer closed it, or it was renamed into place).
const SETTLE_WRITTEN: Duration = Duration::from_millis(3);
/// How long the agent waits for the record of an applied policy to be written.
const NOTE_WRITTEN_WITHIN: Duration = Duration::from_secs(2);

/// Waits until the policy files are quiet after `change`, so a burst of changes becomes
/// one reload: [`SETTLE_WRITTEN`] after a write ended, [`SETTLE_WRITING`] while the last
/// change may be half a write.
async fn settle(mut change: PolicyChange, changes: &mut mpsc::UnboundedReceiver<PolicyChange>) {
    loop {
        let quiet = match change {
            PolicyChange::Written => SETTLE_WRITTEN,
            PolicyChange::Writing => SETTLE_WRITING,
        };
        match tokio::time::timeout(quiet, changes.recv()).await {
            Ok(Some(next)) => change = next,
            Ok(None) | Err(_) => return,
        }
    }
}

/// What the agent and its metrics server share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Rule names of the active generation (element `i` is rule id `i + 1`).
    pub rule_names: Vec<String>,
    /// Whether each rule of the active generation denies (element `i` is rule id `i + 1`):
    /// an allow rule only ever allows, a deny rule denies or (a segment in audit mode)
    /// audits. `None` for a generation an earlier agent applied.
    pub rule_denies: Option<Vec<bool>>,
    /// Decisions of earlier generations by rule id, for the rules the active generation
    /// still has: its counters add to the kernel's, so a rule's count runs on across
    /// reloads.
    pub carried: HashMap<String, RuleCounters>,
    /// Reloads by outcome.
    pub reloads: BTreeMap<ReloadOutcome, u64>,
    /// Each interface's XDP (attached, or why not), by name.
    pub interfaces: BTreeMap<String, InterfaceXdp>,
}

/// The running agent.
struct Agent {
    config: Config,
    state_dir: StateDir,
    _lock: AgentLock,
    loader: Loader,
    cgroup_root: PathBuf,
    state: AgentState,
    shared: Arc<Mutex<Shared>>,
    /// The policy of the generation this agent applied last, with its generation: what
    /// the next applied generation is compared with in its audit record. `None` until
    /// this agent applies one (an adopted generation has no compiled copy here).
    applied: Option<(u32, Candidate)>,
    /// The anti-rollback floor, in the data directory.
    floor: Floor,
    /// Names of the last few generations, newest last (for audit records and status).
    generations: Vec<GenerationNames>,
    audit: AuditThread,
    /// The cgroup paths and segments of the generation this agent applied, resolved again
    /// on changes; `None` while an earlier agent's generation is in force (its table
    /// stays as that agent left it).
    listed_cgroups: Option<Vec<(String, u32)>>,
    /// The watch on the cgroup table's guard directories.
    cgroup_watch: watch::CgroupWatch,
    /// Where the watch reports changes (taken by [`Agent::serve`]).
    cgroup_changes: Option<mpsc::UnboundedReceiver<()>>,
    /// The interfaces with XDP ingress.
    interfaces: InterfaceSet,
    /// The rtnetlink watch on this host's interfaces and addresses.
    _host_watch: netlink::HostWatch,
    /// Where it reports changes (taken by [`Agent::serve`]).
    host_changes: Option<mpsc::UnboundedReceiver<()>>,
}

/// Runs the agent in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let metrics = StdTcpListener::bind(config.metrics_listen).with_context(|| {
            format!("metrics.listen: cannot listen on {}", config.metrics_listen)
        })?;
        metrics.set_nonblocking(true)?;
        let metrics = tokio::net::TcpListener::from_std(metrics)?;
        let agent = Agent::start(config, config_path)?;
        agent.serve(metrics).await
    })
}

impl Agent {
    /// Everything up to enforcing: checks the host against the config, loads or adopts
    /// the pins, applies the policy, attaches.
    fn start(config: Config, config_path: &Path) -> anyhow::Result<Self> {
        let state_dir = StateDir::new(&config.state_dir);
        let lock = state_dir
            .lock()
            .with_context(|| format!("state_dir {}", config.state_dir.display()))?;
        let cgroup_root = host::cgroup2_mount()?;
        let cgroup = cgroup_root.join(&config.cgroup);
        if !cgroup.is_dir() {
            bail!("cgroup: no cgroup {} on this host", cgroup.display());
        }
        let interfaces = InterfaceSet::new(config.interfaces.clone());
        interfaces.check_listed()?;

        let previous = state_dir.read().unwrap_or_default();
        let pins = PinLayout::new(&config.pin_dir);
        let adopting = pins.has_maps();
        let floor = Floor::new(&config.data_dir);
        let candidate = policy::load(&config.policy, previous.accepted_bundle_version, &floor);
        // Pins an earlier agent left enforce its generation; maps pinned by a start that
        // stopped before its first apply (its audit store failed, say) enforce nothing,
        // so an invalid policy over them is refused as on a fresh host. Maps that cannot
        // be read are left to the load below, which names the problem.
        let in_force = adopting
            && PinnedMaps::open(&pins.maps_dir())
                .and_then(|mut maps| maps.active_generation())
                .ok()
                .is_none_or(|generation| generation > 0);
        if let Err(err) = &candidate
            && !in_force
        {
            bail!("{err}; nothing was attached");
        }

        let mut loader = Loader::load_pinned(&pins).context("loading the kernel programs")?;
        loader.set_dedup_window(config.audit.dedup_window)?;
        loader.set_fold_sources(config.audit.fold_sources)?;
        let generations = state_dir.generations();
        let audit = AuditThread::start(
            &config,
            loader.take_events()?,
            loader.fold_reporter()?,
            &pins,
            &cgroup_root,
            generations.clone(),
            adopting,
        )?;
        let (cgroup_tx, cgroup_changes) = mpsc::unbounded_channel();
        let cgroup_watch =
            watch::CgroupWatch::new(cgroup_tx).context("watching the cgroup tree")?;
        // The watch starts before the first read, so no change falls between the two.
        let (host_tx, host_changes) = mpsc::unbounded_channel();
        let host_watch = netlink::watch_host(host_tx)
            .context("watching this host's interfaces and addresses (rtnetlink)")?;
        let local = host::interfaces::addresses().context("reading this host's addresses")?;
        let count = loader.set_local_addresses(&local)?;
        tracing::info!(
            count,
            "this host's addresses are decided as local destinations"
        );
        let mut agent = Self {
            interfaces,
            _host_watch: host_watch,
            host_changes: Some(host_changes),
            listed_cgroups: None,
            cgroup_watch,
            cgroup_changes: Some(cgroup_changes),
            state: AgentState {
                pid: std::process::id(),
                config: config_path.to_owned(),
                active: previous.active.clone(),
                last_reload: None,
                accepted_bundle_version: previous
                    .accepted_bundle_version
                    .max(floor.read().unwrap_or_default()),
                interfaces: BTreeMap::new(),
            },
            shared: Arc::new(Mutex::new(Shared {
                rule_names: generations
                    .last()
                    .map(|names| names.rules.clone())
                    .unwrap_or_default(),
                rule_denies: None,
                carried: HashMap::new(),
                reloads: BTreeMap::new(),
                interfaces: BTreeMap::new(),
            })),
            applied: None,
            floor,
            generations,
            audit,
            config,
            state_dir,
            _lock: lock,
            loader,
            cgroup_root,
        };
        if adopting {
            tracing::info!(
                pin_dir = %pins.dir().display(),
                generation = agent.loader.active_generation()?,
                "adopting the pinned maps and links of an earlier agent"
            );
        }
        // The policy goes in before the first attach, so a fresh host enforces it from
        // the first connect; an adopted host keeps its generation until this flip.
        agent.settle("start", candidate, true)?;

        let outcome = agent.loader.attach_cgroup(&cgroup)?;
        tracing::info!(cgroup = %cgroup.display(), ?outcome, "cgroup hooks in force");
        // Bindings made from now on are learnt by the kernel; those made before, here.
        agent.learn_existing_listeners();
        let changes = agent.interfaces.sync(&mut agent.loader)?;
        agent.note_xdp_changes(&changes);
        agent.publish_interfaces();
        agent.write_state();
        Ok(agent)
    }

    /// Applies `candidate` (or records why not) as the outcome of a reload.
    fn settle(
        &mut self,
        trigger: &str,
        candidate: Result<Candidate, CandidateError>,
        force: bool,
    ) -> anyhow::Result<()> {
        let outcome = match candidate {
            Err(err) => {
                let generation = self.loader.active_generation()?;
                tracing::error!(
                    trigger,
                    active_generation = generation,
                    "policy refused, the active generation stays: {err}"
                );
                self.audit.note(history::refused(
                    trigger,
                    generation,
                    &err.to_string(),
                    record::now_ms(),
                    &host::hostname(),
                ));
                Reload {
                    at: state::now(),
                    trigger: trigger.to_owned(),
                    outcome: ReloadOutcome::Failed,
                    message: Some(err.to_string()),
                }
            }
            Ok(candidate) => {
                let image_sha256 = candidate.compiled.image.digest_hex();
                let unchanged = self.state.active.as_ref().is_some_and(|active| {
                    active.source_sha256 == candidate.source_sha256
                        && active.image_sha256 == image_sha256
                });
                if unchanged && !force {
                    tracing::info!(trigger, "policy unchanged; nothing to apply");
                    policy::drop_in_background(candidate);
                    Reload {
                        at: state::now(),
                        trigger: trigger.to_owned(),
                        outcome: ReloadOutcome::Unchanged,
                        message: None,
                    }
                } else {
                    self.apply(trigger, candidate, image_sha256)?
                }
            }
        };
        {
            let mut shared = self.shared.lock().expect("the shared lock is not poisoned");
            *shared.reloads.entry(outcome.outcome).or_default() += 1;
        }
        self.state.last_reload = Some(outcome);
        Ok(())
    }

    /// Applies `candidate` as a new generation, records it with what changed against the
    /// generation this agent applied before, and keeps it for the next comparison.
    fn apply(
        &mut self,
        trigger: &str,
        candidate: Candidate,
        image_sha256: String,
    ) -> anyhow::Result<Reload> {
        let started = Instant::now();
        let image = &candidate.compiled.image;
        // What changed against the generation applied before, for its history record:
        // compared on a thread of its own while the maps are filled and flipped, so it
        // neither delays enforcement nor holds up the next reload afterwards.
        let previous = self.applied.as_ref();
        let compare = || {
            previous.map(|(generation, old)| {
                let old = (&old.compiled.policy, &old.compiled.image);
                (
                    *generation,
                    diff(old, (&candidate.compiled.policy, image)).summary,
                )
            })
        };
        let (applied, changes) = std::thread::scope(|scope| {
            let comparing = std::thread::Builder::new()
                .name("policy-diff".to_owned())
                .spawn_scoped(scope, compare);
            let applied = self.loader.apply(image, &self.cgroup_root);
            let changes = match comparing {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    tracing::error!(
                        "the comparison with the previous generation failed; the history record of this one names no changes"
                    );
                    None
                }),
                Err(err) => {
                    tracing::warn!(error = %err, "no thread for the comparison with the previous generation; compared after the flip");
                    compare()
                }
            };
            (applied, changes)
        });
        let applied = applied?;
        if let Some(first) = applied.cgroups.missing.first() {
            tracing::warn!(
                count = applied.cgroups.missing.len(),
                first = %first,
                "cgroups of the policy not on this host yet: they are classified when they appear"
            );
        }
        self.listed_cgroups = Some(image.cgroups.clone());
        self.cgroup_watch.watch_only(&applied.cgroups.guards);
        // A cgroup created between the resolution and the watch is seen by this pass.
        self.refresh_cgroups();
        tracing::info!(
            trigger,
            generation = applied.generation,
            rules = image.rule_names.len(),
            source_sha256 = %candidate.source_sha256,
            elapsed_ms = started.elapsed().as_millis(),
            "policy applied"
        );
        for warning in &candidate.compiled.warnings {
            tracing::warn!("{}", warning.one_line(&candidate.compiled.sources));
        }
        let record = history::applied(
            &history::Applied {
                trigger,
                generation: applied.generation,
                source_sha256: &candidate.source_sha256,
                image_sha256: &image_sha256,
                bundle_version: candidate.bundle_version,
                signer_key_id: candidate.signer_key_id.as_deref(),
                changes,
                segments: image.segment_names.len(),
                rules: image.rule_names.len(),
            },
            record::now_ms(),
            &host::hostname(),
        );
        // The generation is in force: its record is written before the agent goes on, so a
        // crash right after cannot leave flows of a generation the store never names.
        if !self.audit.note_written(record, NOTE_WRITTEN_WITHIN) {
            tracing::warn!(
                generation = applied.generation,
                "the record of the applied policy is not written yet; it stays queued"
            );
        }
        let names = GenerationNames::of(image, applied.generation, &candidate.source_sha256);
        self.audit.learn(names.clone());
        self.generations.push(names);
        if self.generations.len() > GENERATIONS_KEPT {
            self.generations.remove(0);
        }
        if let Err(err) = self.state_dir.write_generations(&self.generations) {
            tracing::warn!(error = %err, "cannot write the generations' names for status");
        }
        {
            let mut shared = self.shared.lock().expect("the shared lock is not poisoned");
            let replaced_names =
                std::mem::replace(&mut shared.rule_names, image.rule_names.clone());
            let mut carried = HashMap::new();
            if let Some((_, final_counts)) = &applied.replaced {
                for (name, counts) in replaced_names.iter().zip(final_counts) {
                    let mut total = shared.carried.get(name).copied().unwrap_or_default();
                    total.add(counts);
                    carried.insert(name.clone(), total);
                }
            }
            let kept: HashSet<&String> = image.rule_names.iter().collect();
            carried.retain(|name, _| kept.contains(name));
            shared.carried = carried;
            shared.rule_denies = Some(
                candidate
                    .compiled
                    .policy
                    .rules
                    .iter()
                    .map(|rule| rule.action == Action::Deny)
                    .collect(),
            );
        }
        if let Some(version) = candidate.bundle_version {
            self.state.accepted_bundle_version = self.state.accepted_bundle_version.max(version);
        }
        self.state.active = Some(ActivePolicy {
            generation: applied.generation,
            source_sha256: candidate.source_sha256.clone(),
            image_sha256,
            bundle_version: candidate.bundle_version,
            applied_at: state::now(),
        });
        if let Some((_, replaced)) = self.applied.replace((applied.generation, candidate)) {
            policy::drop_in_background(replaced);
        }
        Ok(Reload {
            at: state::now(),
            trigger: trigger.to_owned(),
            outcome: ReloadOutcome::Applied,
            message: None,
        })
    }

    /// Resolves the active cgroup table again after a guard directory changed, and
    /// watches the guards it now has. A failure is logged; new cgroups then stay
    /// unclassified (fail closed) until the next change or reload.
    fn refresh_cgroups(&mut self) {
        let Some(listed) = &self.listed_cgroups else {
            return;
        };
        match self.loader.refresh_cgroups(listed, &self.cgroup_root) {
            Ok(table) => self.cgroup_watch.watch_only(&table.guards),
            Err(err) => tracing::error!(error = %err, "cannot update the cgroup table"),
        }
    }

    /// Puts XDP attached to, failed on, or detached from interfaces in the audit trail.
    fn note_xdp_changes(&self, changes: &[interfaces::XdpChange]) {
        let hostname = host::hostname();
        for change in changes {
            self.audit.note(history::xdp(
                &change.interface,
                change.attached,
                change.error.as_deref(),
                record::now_ms(),
                &hostname,
            ));
        }
    }

    /// After rtnetlink reported a change: XDP onto interfaces that appeared (or were
    /// re-created), off those that went, and this host's addresses read again.
    fn host_changed(&mut self) {
        match self.interfaces.sync(&mut self.loader) {
            Ok(changes) => self.note_xdp_changes(&changes),
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "cannot bring XDP up to date with this host's interfaces"
            ),
        }
        self.publish_interfaces();
        self.write_state();
        self.refresh_local_addresses();
    }

    /// Learns the listening sockets that were bound before the cgroup hooks were attached
    /// (services started before the agent). A failure is logged: those sockets' ports are
    /// then `host`'s until they are bound again or declared in the policy.
    fn learn_existing_listeners(&mut self) {
        let learnt = host::sockets::listeners()
            .map_err(anyhow::Error::from)
            .and_then(|listeners| {
                Ok(self
                    .loader
                    .learn_existing_listeners(&listeners, &self.cgroup_root)?)
            });
        match learnt {
            Ok(count) => tracing::info!(count, "listeners bound before the hooks learnt"),
            Err(err) => {
                tracing::error!(error = %err, "cannot learn the listeners bound before the hooks")
            }
        }
    }

    /// Shows the interfaces' XDP to metrics and status.
    fn publish_interfaces(&mut self) {
        let known = self.interfaces.known().clone();
        self.state.interfaces = known.clone();
        self.shared
            .lock()
            .expect("the shared lock is not poisoned")
            .interfaces = known;
    }

    /// Reads this host's addresses again into the kernel's table after rtnetlink
    /// reported a change. A failure is logged and the table keeps what it had.
    fn refresh_local_addresses(&mut self) {
        let refreshed = host::interfaces::addresses()
            .map_err(anyhow::Error::from)
            .and_then(|local| Ok(self.loader.set_local_addresses(&local)?));
        match refreshed {
            Ok(count) => tracing::info!(count, "this host's addresses changed"),
            Err(err) => tracing::error!(error = %err, "cannot update this host's addresses"),
        }
    }

    fn write_state(&self) {
        if let Err(err) = self.state_dir.write(&self.state) {
            tracing::warn!(error = %err, dir = %self.state_dir.dir().display(), "cannot write the agent state");
        }
    }

    /// Reloads the policy; a failure keeps the active generation.
    async fn reload(&mut self, trigger: &str, force: bool) -> anyhow::Result<()> {
        let source = self.config.policy.clone();
        let min_version = self.state.accepted_bundle_version;
        let floor = self.floor.clone();
        // Compiling a large policy takes a while: keep the runtime (metrics) responsive.
        let candidate =
            tokio::task::spawn_blocking(move || policy::load(&source, min_version, &floor))
                .await
                .context("the policy compiler panicked")?;
        self.settle(trigger, candidate, force)?;
        self.write_state();
        notify::status(&self.status_line());
        Ok(())
    }

    /// What `systemctl status` shows: the generation in force and the last reload.
    fn status_line(&self) -> String {
        let generation = self
            .state
            .active
            .as_ref()
            .map_or_else(|| "no".to_owned(), |active| active.generation.to_string());
        match &self.state.last_reload {
            Some(reload) if reload.outcome == ReloadOutcome::Failed => format!(
                "enforcing generation {generation}; the last policy ({}) was refused: see the log",
                reload.trigger
            ),
            _ => format!("enforcing generation {generation}"),
        }
    }

    /// Reloads on SIGHUP and policy changes, serves metrics, stops on SIGTERM/SIGINT.
    async fn serve(mut self, metrics: tokio::net::TcpListener) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (changes_tx, mut changes) = mpsc::unbounded_channel();
        let _watch = watch::watch(&self.config.policy.path, changes_tx)
            .with_context(|| format!("watching {}", self.config.policy.path.display()))?;

        let source = Arc::new(metrics::MetricsSource {
            maps: Mutex::new(PinnedMaps::open(
                &PinLayout::new(&self.config.pin_dir).maps_dir(),
            )?),
            pins: PinLayout::new(&self.config.pin_dir),
            shared: Arc::clone(&self.shared),
            audit: Arc::clone(&self.audit.stats),
            forward: self.audit.forward_stats.clone(),
        });
        tracing::info!(address = %self.config.metrics_listen, "serving /metrics and /healthz");
        tokio::spawn(metrics::serve(metrics, source));

        let mut audit_ended = self
            .audit
            .take_ended()
            .context("the audit thread is watched once")?;
        let mut cgroup_changes = self
            .cgroup_changes
            .take()
            .context("the cgroup watch is served once")?;
        let mut host_changes = self
            .host_changes
            .take()
            .context("the host watch is served once")?;
        tracing::info!(pid = self.state.pid, "enforcing");
        notify::ready(&self.status_line());
        let keep_alive_every = notify::keep_alive_interval();
        let mut keep_alive =
            tokio::time::interval(keep_alive_every.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = keep_alive.tick(), if keep_alive_every.is_some() => notify::keep_alive(),
                _ = &mut audit_ended => {
                    return Err(match self.audit.stop() {
                        Err(err) => err.context("the audit consumer stopped"),
                        Ok(()) => anyhow::anyhow!("the audit consumer stopped"),
                    });
                }
                _ = hangup.recv() => self.reload("sighup", true).await?,
                Some(()) = cgroup_changes.recv() => {
                    // No settling: until the table knows a new cgroup, its processes are
                    // unclassified. Changes already queued are covered by this pass.
                    while cgroup_changes.try_recv().is_ok() {}
                    self.refresh_cgroups();
                }
                Some(()) = host_changes.recv() => {
                    // Changes already queued are covered by this pass.
                    while host_changes.try_recv().is_ok() {}
                    self.host_changed();
                }
                Some(change) = changes.recv() => {
                    settle(change, &mut changes).await;
                    self.reload("file-change", false).await?;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tracing::info!(
            pin_dir = %self.config.pin_dir.display(),
            "stopping; enforcement stays in place (remove it with `enforcer uninstall`)"
        );
        notify::stopping();
        self.audit
            .stop()
            .context("sealing the audit store at shutdown")
    }
}
