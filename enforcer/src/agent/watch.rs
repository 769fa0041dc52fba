//! Notices changes to the policy files: the policy directory (or a policy file's or
//! bundle's directory, filtered to that file) is watched through inotify, so editors
//! that replace files by rename are seen as well as in-place writes.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// A running watch; dropping it stops watching.
pub struct PolicyWatch {
    _watcher: RecommendedWatcher,
}

/// Watches `path` and sends `()` on `changes` for every change that may alter it.
pub fn watch(path: &Path, changes: mpsc::UnboundedSender<()>) -> notify::Result<PolicyWatch> {
    let (dir, only): (PathBuf, Option<PathBuf>) = if path.is_dir() {
        (path.to_owned(), None)
    } else {
        let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
        (parent, Some(path.to_owned()))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // A watch error (queue overflow): changes may have been missed, so reload.
            let _ = changes.send(());
            return;
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = match &only {
            Some(file) => event.paths.iter().any(|p| p == file),
            None => true,
        };
        if relevant {
            // The receiver is gone only when the agent is stopping.
            let _ = changes.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(PolicyWatch { _watcher: watcher })
}
