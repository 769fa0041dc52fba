//! Where cgroup v2 and bpffs are mounted.
//!
//! Nothing here is hard-coded to one distribution's layout: mounts are read from
//! `/proc/self/mountinfo`, so a hybrid hierarchy (cgroup2 at `/sys/fs/cgroup/unified`)
//! and a pure one (`/sys/fs/cgroup`) are found alike.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// The default directory for the agent's pins.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// What can go wrong while discovering or preparing host mounts.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `/proc/self/mountinfo` could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    /// No cgroup2 filesystem is mounted.
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    /// bpffs could not be mounted at the given path.
    #[error("cannot mount bpffs at {path}: {source}")]
    MountBpffs {
        /// Where the mount was attempted.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// One line of `/proc/self/mountinfo`, reduced to what the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the filesystem is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`cgroup2`, `bpf`, ...).
    pub fs_type: String,
}

/// Parses the text of a `mountinfo` file; lines that do not follow the format are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mount_point = fields.split(' ').nth(4)?;
            let fs_type = rest.split(' ').next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape_octal(mount_point)),
                fs_type: fs_type.to_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in mount paths.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match escape
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<Mount>, HostError> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .map_err(HostError::MountInfo)
}

/// The mount point of the cgroup v2 hierarchy (the first one listed).
pub fn cgroup2_mount() -> Result<PathBuf, HostError> {
    mounts()?
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point)
        .ok_or(HostError::NoCgroup2)
}

/// Whether a bpffs is mounted exactly at `path`.
pub fn is_bpffs(path: &Path) -> Result<bool, HostError> {
    Ok(mounts()?
        .iter()
        .any(|mount| mount.fs_type == "bpf" && mount.mount_point == path))
}

/// Whether `path` lies on a bpffs: the deepest mount containing it is of type `bpf`.
pub fn on_bpffs(path: &Path) -> Result<bool, HostError> {
    Ok(mounts()?
        .iter()
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.components().count())
        .is_some_and(|mount| mount.fs_type == "bpf"))
}

/// Mounts bpffs at `path` unless one is already there; returns whether it mounted one.
pub fn ensure_bpffs(path: &Path) -> Result<bool, HostError> {
    if is_bpffs(path)? {
        return Ok(false);
    }
    let mount_error = |source| HostError::MountBpffs {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(path).map_err(mount_error)?;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| mount_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call, and a
    // null `data` is allowed for bpffs.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_error(io::Error::last_os_error()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:45 / /sys/fs/bpf rw,relatime - bpf bpf rw
51 23 0:46 / /mnt/with\\040space rw shared:1 - ext4 /dev/vdb rw
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_hierarchy() {
        let mounts = parse_mountinfo(HYBRID);
        let cgroup2 = mounts.iter().find(|m| m.fs_type == "cgroup2").unwrap();
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn reads_optional_fields_and_escaped_paths() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[3].fs_type, "bpf");
        assert_eq!(mounts[4].mount_point, Path::new("/mnt/with space"));
        assert_eq!(mounts[4].fs_type, "ext4");
    }

    #[test]
    fn skips_malformed_lines() {
        assert!(parse_mountinfo("garbage\n\n1 2 3\n").is_empty());
        assert_eq!(unescape_octal("a\\0"), "a\\0");
        assert_eq!(unescape_octal("tab\\011x"), "tab\tx");
    }
}
