//! What the agent tells `enforcer status` beyond the kernel's own pins: whether it runs
//! (an exclusive lock on `agent.lock`, released by the kernel whatever way the agent
//! ends), and its last reload (`state.json`, replaced atomically) and the names of recent
//! generations (`generations.json`) in the state directory.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions, TryLockError},
    io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::interfaces::InterfaceXdp;
use crate::{durable, policy::names::GenerationNames};

/// The lock file a running agent holds.
const LOCK: &str = "agent.lock";
/// The agent's state.
const STATE: &str = "state.json";
/// The names (segments, rules, failsafes) of the last few generations, newest last.
const GENERATIONS: &str = "generations.json";

/// The policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivePolicy {
    /// The kernel generation number.
    pub generation: u32,
    /// SHA-256 of the policy files.
    pub source_sha256: String,
    /// SHA-256 of the compiled map image.
    pub image_sha256: String,
    /// The signed bundle's version, when the policy came from one.
    pub bundle_version: Option<u64>,
    /// When it was applied (seconds since the epoch).
    pub applied_at: u64,
}

/// What one reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadOutcome {
    /// A new generation is in force.
    Applied,
    /// The policy compiled to the generation already in force; nothing was applied.
    Unchanged,
    /// The policy was refused (or could not be applied); the active generation stays.
    Failed,
}

impl ReloadOutcome {
    /// The word status, state files and metrics use.
    pub fn word(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        }
    }
}

/// The outcome of one reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// When (seconds since the epoch).
    pub at: u64,
    /// What asked for it: `start`, `sighup`, `file-change`.
    pub trigger: String,
    /// What it did.
    pub outcome: ReloadOutcome,
    /// The error for a failed reload (file:line:col for an invalid policy).
    pub message: Option<String>,
}

/// The state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent's process id.
    pub pid: u32,
    /// The config file it runs with.
    pub config: PathBuf,
    /// The policy in force, once one was applied by this or an earlier agent.
    pub active: Option<ActivePolicy>,
    /// The last reload.
    pub last_reload: Option<Reload>,
    /// The highest bundle version accepted so far (older bundles are refused).
    pub accepted_bundle_version: u64,
    /// Each interface's XDP ingress (attached, or why not), by name.
    #[serde(default)]
    pub interfaces: BTreeMap<String, InterfaceXdp>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// The running agent's hold on the state directory; dropping it (or the agent's end)
/// releases it.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl StateDir {
    /// The state directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the agent lock; fails when another agent holds it.
    pub fn lock(&self) -> io::Result<AgentLock> {
        fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))?;
        file.try_lock().map_err(|err| match err {
            TryLockError::WouldBlock => io::Error::other(format!(
                "another agent is running (it holds {})",
                self.dir.join(LOCK).display()
            )),
            TryLockError::Error(err) => err,
        })?;
        Ok(AgentLock { _file: file })
    }

    /// Whether an agent holds the lock now.
    pub fn agent_running(&self) -> bool {
        let Ok(file) = File::open(self.dir.join(LOCK)) else {
            return false;
        };
        file.try_lock_shared().is_err()
    }

    /// The last state written, if any.
    pub fn read(&self) -> Option<AgentState> {
        let text = fs::read_to_string(self.dir.join(STATE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces the state file atomically.
    pub fn write(&self, state: &AgentState) -> io::Result<()> {
        self.replace(
            STATE,
            &serde_json::to_vec_pretty(state).map_err(io::Error::other)?,
        )
    }

    /// The names of the last few generations applied, newest last.
    pub fn generations(&self) -> Vec<GenerationNames> {
        fs::read_to_string(self.dir.join(GENERATIONS))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Rule names of the newest generation (element `i` is rule id `i + 1`).
    pub fn rule_names(&self) -> Vec<String> {
        self.generations()
            .pop()
            .map(|names| names.rules)
            .unwrap_or_default()
    }

    /// Replaces the generations' names.
    pub fn write_generations(&self, generations: &[GenerationNames]) -> io::Result<()> {
        self.replace(
            GENERATIONS,
            &serde_json::to_vec(generations).map_err(io::Error::other)?,
        )
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        durable::replace_file(&self.dir.join(name), bytes)
    }

    /// Removes the agent's files (and the directory if nothing else is in it); returns
    /// what was removed.
    pub fn remove(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for name in [STATE, GENERATIONS, LOCK] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        if fs::remove_dir(&self.dir).is_ok() {
            removed.push(self.dir.clone());
        }
        Ok(removed)
    }
}
