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
    /// A file is being written (truncated, written to, created, renamed away, its
    /// attributes changed): more may follow before it is whole.
    Writing,
    /// A write ended: a file was closed after writing, renamed into place, or removed;
    /// or events were lost, and only a reload can tell what changed.
    Written,
}

impl PolicyChange {
    /// What an inotify event says; `None` for events that change nothing (reads).
    fn of(kind: &EventKind) -> Option<Self> {
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Self::Written),
            EventKind::Access(_) => None,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_) => Some(Self::Written),
            _ => Some(Self::Writing),
        }
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
        let Ok(event) = event else {
            // A watch error (queue overflow): changes may have been missed, so reload.
            let _ = changes.send(PolicyChange::Written);
            return;
        };
        let Some(change) = PolicyChange::of(&event.kind) else {
            return;
        };
        let relevant = match &only {
            Some(file) => event.paths.iter().any(|p| p == file),
            None => true,
        };
        if relevant {
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
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    use super::*;

    #[test]
    fn only_an_ended_write_counts_as_written() {
        let written = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::File),
        ];
        for kind in written {
            assert_eq!(
                PolicyChange::of(&kind),
                Some(PolicyChange::Written),
                "{kind:?}"
            );
        }
        let writing = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ];
        for kind in writing {
            assert_eq!(
                PolicyChange::of(&kind),
                Some(PolicyChange::Writing),
                "{kind:?}"
            );
        }
        let reads = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        for kind in reads {
            assert_eq!(PolicyChange::of(&kind), None, "{kind:?}");
        }
    }
}
