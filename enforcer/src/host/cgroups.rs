//! cgroup v2 identity: a cgroup2 directory's inode number is the cgroup id that the
//! kernel programs see (`bpf_get_current_cgroup_id`, `bpf_skb_cgroup_id`).

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _, path::Path};

/// How deep [`paths_by_id`] descends below the root.
const MAX_DEPTH: usize = 16;

/// The cgroup id of the cgroup directory `dir`, or `None` when there is no directory.
pub fn id(dir: &Path) -> Option<u64> {
    fs::metadata(dir)
        .ok()
        .filter(fs::Metadata::is_dir)
        .map(|meta| meta.ino())
}

/// Every cgroup at or below `root` (the cgroup2 mount), by id, as a path from the mount
/// (`/system.slice/payments.service`; the root itself is `/`).
pub fn paths_by_id(root: &Path) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    scan(root, root, &mut paths, 0);
    paths
}

fn scan(root: &Path, dir: &Path, paths: &mut HashMap<u64, String>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    if let Some(id) = id(dir) {
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        paths.insert(id, format!("/{}", relative.display()));
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            scan(root, &entry.path(), paths, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_found_by_inode_and_named_from_the_root() {
        let root = tempfile::tempdir().unwrap();
        let child = root.path().join("a.slice/b.service");
        fs::create_dir_all(&child).unwrap();
        fs::write(root.path().join("a.slice/file"), b"").unwrap();
        let child_id = id(&child).unwrap();
        assert_eq!(id(&root.path().join("a.slice/file")), None);
        assert_eq!(id(&root.path().join("missing")), None);
        let paths = paths_by_id(root.path());
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[&child_id], "/a.slice/b.service");
        assert_eq!(paths[&id(root.path()).unwrap()], "/");
    }
}
