//! Notices changes the agent acts on, through inotify: to the policy files (the policy
//! directory, or a policy file's or bundle's directory filtered to that file, so editors
//! that replace files by rename are seen as well as in-place writes), and to the cgroup
//! directories that guard the policy's cgroups (a child cgroup created or removed).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, ModifyKind, RenameMode},
};
use tokio::sync::mpsc;

/// What a change to the policy files says about the write behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// More may follow before the policy is whole: a file truncated, written to, created,
    /// removed or renamed away, its attributes changed; or any change in a policy
    /// directory, where an edit may span several files.
    Writing,
    /// The policy file (or bundle) is whole: its writer closed it, or it was renamed into
    /// place; or events were lost, and only a reload can tell what changed.
    Written,
}

impl PolicyChange {
    /// What `event` says, for a watch of the single file `only` (`None`: of a whole
    /// directory); `None` when it does not concern the policy or changes nothing (reads).
    fn of(event: &notify::Event, only: Option<&Path>) -> Option<Self> {
        if event.need_rescan() {
            return Some(Self::Written);
        }
        if matches!(
            event.kind,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        ) {
            return None;
        }
        let Some(file) = only else {
            return Some(Self::Writing);
        };
        let names_file = |path: Option<&PathBuf>| path.is_some_and(|path| path == file);
        if !event.paths.iter().any(|path| path == file) {
            return None;
        }
        // A rename's destination is its last path (`Both` names the source first).
        let whole = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
                names_file(event.paths.last())
            }
            _ => false,
        };
        Some(if whole { Self::Written } else { Self::Writing })
    }
}

/// A running watch; dropping it stops watching.
pub struct PolicyWatch {
    _watcher: RecommendedWatcher,
}

/// Watches `path` and sends a [`PolicyChange`] on `changes` for every change that may
/// alter it.
pub fn watch(
    path: &Path,
    changes: mpsc::UnboundedSender<PolicyChange>,
) -> notify::Result<PolicyWatch> {
    let (dir, only): (PathBuf, Option<PathBuf>) = if path.is_dir() {
        (path.to_owned(), None)
    } else {
        let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
        (parent, Some(path.to_owned()))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A watch error: changes may have been missed, so reload.
        let change = match event {
            Ok(event) => PolicyChange::of(&event, only.as_deref()),
            Err(_) => Some(PolicyChange::Written),
        };
        if let Some(change) = change {
            // The receiver is gone only when the agent is stopping.
            let _ = changes.send(change);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(PolicyWatch { _watcher: watcher })
}

/// A watch on the guard directories of the active cgroup table
/// ([`crate::loader::CgroupTable::guards`]); dropping it stops watching.
pub struct CgroupWatch {
    watcher: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl CgroupWatch {
    /// A watch on no directory yet that sends `()` on `changes` whenever a watched
    /// directory gains or loses an entry (a child cgroup), or when events were missed.
    pub fn new(changes: mpsc::UnboundedSender<()>) -> notify::Result<Self> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Writes to cgroup files (`cgroup.procs`, ...) are not of interest; an error
            // (queue overflow) may hide a new cgroup, so it counts as a change.
            let relevant = event.is_err()
                || event.is_ok_and(|event| {
                    matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_))
                });
            if relevant {
                // The receiver is gone only when the agent is stopping.
                let _ = changes.send(());
            }
        })?;
        Ok(Self {
            watcher,
            watched: BTreeSet::new(),
        })
    }

    /// Watches exactly `dirs` from now on. A directory that vanished in the meantime is
    /// skipped: its parent, also a guard, reports the removal.
    pub fn watch_only(&mut self, dirs: &[PathBuf]) {
        let wanted: BTreeSet<PathBuf> = dirs.iter().cloned().collect();
        for gone in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        self.watched.retain(|dir| wanted.contains(dir));
        for dir in wanted {
            if !self.watched.contains(&dir) {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(dir);
                    }
                    Err(err) => {
                        tracing::warn!(dir = %dir.display(), error = %err, "cannot watch a cgroup directory");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, Flag, MetadataKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |event, path| {
            event.add_path(path.into())
        })
    }

    #[test]
    fn only_the_policy_file_closed_or_renamed_into_place_counts_as_written() {
        let file = Path::new("/etc/enforcer/policy.toml");
        let only = Some(file);
        let written = [
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &[
                    "/etc/enforcer/.policy.toml.swp",
                    "/etc/enforcer/policy.toml",
                ],
            ),
        ];
        for event in &written {
            assert_eq!(
                PolicyChange::of(event, only),
                Some(PolicyChange::Written),
                "{event:?}"
            );
        }
        let writing = [
            event(
                EventKind::Create(CreateKind::File),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Remove(RemoveKind::File),
                &["/etc/enforcer/policy.toml"],
            ),
            // Renamed away (an editor's backup): the policy is gone until its new copy.
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/etc/enforcer/policy.toml", "/etc/enforcer/policy.toml~"],
            ),
        ];
        for event in &writing {
            assert_eq!(
                PolicyChange::of(event, only),
                Some(PolicyChange::Writing),
                "{event:?}"
            );
        }
        let ignored = [
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                &["/etc/enforcer/policy.toml"],
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/etc/enforcer/enforcer.toml"],
            ),
        ];
        for event in &ignored {
            assert_eq!(PolicyChange::of(event, only), None, "{event:?}");
        }
    }

    #[test]
    fn in_a_policy_directory_every_change_waits_for_quiet_and_lost_events_reload() {
        let closed = event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/etc/enforcer/policy.d/web.toml"],
        );
        assert_eq!(PolicyChange::of(&closed, None), Some(PolicyChange::Writing));
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        for only in [None, Some(Path::new("/etc/enforcer/policy.toml"))] {
            assert_eq!(
                PolicyChange::of(&overflow, only),
                Some(PolicyChange::Written)
            );
        }
    }
}
