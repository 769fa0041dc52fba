//! The agent's pins on bpffs, so enforcement outlives the agent and a restarted agent
//! adopts what is in force instead of attaching twice:
//!
//! ```text
//! <pin_dir>/maps/<MAP>              every map of the kernel object
//! <pin_dir>/programs/<program>      every program
//! <pin_dir>/links/<program>         the cgroup hook links (one cgroup)
//! <pin_dir>/links/xdp@<interface>   one XDP link per interface
//! ```

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use enforcer_common::event::Hook;

use super::{
    LoaderError,
    sys::{LinkDetails, link_details, open_pin},
};
use crate::host;

/// Prefix of XDP link pins; the interface name follows.
const XDP_LINK_PREFIX: &str = "xdp@";

/// The layout of a pin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

/// One pinned link, as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLinkState {
    /// The pin's file name (`connect4`, `xdp@eth0`).
    pub name: String,
    /// The kernel's view, or why it could not be read.
    pub details: Result<LinkDetails, String>,
}

/// What [`PinLayout::remove`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Pins and directories removed.
    pub removed: Vec<PathBuf>,
    /// Files in the pin directory that are not the agent's, left alone.
    pub kept: Vec<PathBuf>,
}

impl PinLayout {
    /// The layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    /// Where programs are pinned.
    pub fn programs_dir(&self) -> PathBuf {
        self.dir.join("programs")
    }

    /// Where links are pinned.
    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// The pin of the program serving `hook`.
    pub fn program(&self, hook: Hook) -> PathBuf {
        self.programs_dir().join(hook.program_name())
    }

    /// The pin of the cgroup link of `hook`.
    pub fn cgroup_link(&self, hook: Hook) -> PathBuf {
        self.links_dir().join(hook.program_name())
    }

    /// The pin of the XDP link on interface `name`.
    pub fn xdp_link(&self, interface: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{XDP_LINK_PREFIX}{interface}"))
    }

    /// The interface an XDP link pin name stands for.
    pub fn xdp_interface(pin_name: &str) -> Option<&str> {
        pin_name.strip_prefix(XDP_LINK_PREFIX)
    }

    fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LoaderError + '_ {
        move |source| LoaderError::Pins {
            path: path.display().to_string(),
            source,
        }
    }

    /// Creates the directories, mounting bpffs at the pin directory's parent first when
    /// the pin directory is not on one.
    pub fn create(&self) -> Result<(), LoaderError> {
        let bpffs = |path: &Path| host::on_bpffs(path).map_err(LoaderError::Host);
        if !bpffs(&self.dir)? {
            let parent = self.dir.parent().unwrap_or(Path::new("/"));
            host::ensure_bpffs(parent).map_err(LoaderError::Host)?;
            if !bpffs(&self.dir)? {
                return Err(LoaderError::NotBpffs(self.dir.display().to_string()));
            }
        }
        for dir in [self.maps_dir(), self.programs_dir(), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(Self::io_error(&dir))?;
        }
        Ok(())
    }

    /// Whether any map is pinned (an agent ran here and was not uninstalled).
    pub fn has_maps(&self) -> bool {
        fs::read_dir(self.maps_dir()).is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Every pinned link with the kernel's view of it, sorted by name.
    pub fn links(&self) -> Result<Vec<PinnedLinkState>, LoaderError> {
        let dir = self.links_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Self::io_error(&dir)(err)),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Self::io_error(&dir))?;
            let details = open_pin(&entry.path())
                .and_then(link_details)
                .map_err(|err| err.to_string());
            links.push(PinnedLinkState {
                name: entry.file_name().to_string_lossy().into_owned(),
                details,
            });
        }
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    /// Removes every pin of the agent, links first (which detaches the programs), then
    /// programs and maps, then the directories if nothing else is in them. Files that
    /// are not the agent's are left alone and reported.
    pub fn remove(&self) -> Result<Removal, LoaderError> {
        let mut removal = Removal::default();
        let program_names: Vec<&str> = Hook::ALL.iter().map(|hook| hook.program_name()).collect();
        let links_dir = self.links_dir();
        self.remove_entries(&links_dir, &mut removal, |name| {
            program_names.contains(&name) || Self::xdp_interface(name).is_some()
        })?;
        let programs_dir = self.programs_dir();
        self.remove_entries(&programs_dir, &mut removal, |name| {
            program_names.contains(&name)
        })?;
        let maps_dir = self.maps_dir();
        self.remove_entries(&maps_dir, &mut removal, |_| true)?;
        let own_dirs = [links_dir, programs_dir, maps_dir];
        removal.kept.extend(self.others_at_top(&own_dirs)?);
        for dir in own_dirs.into_iter().chain([self.dir.clone()]) {
            match fs::remove_dir(&dir) {
                Ok(()) => removal.removed.push(dir),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {}
                Err(err) => return Err(Self::io_error(&dir)(err)),
            }
        }
        Ok(removal)
    }

    /// What the top of the pin directory holds besides `own_dirs`: someone else's, so
    /// [`PinLayout::remove`] keeps and lists it (and the pin directory stays).
    fn others_at_top(&self, own_dirs: &[PathBuf]) -> Result<Vec<PathBuf>, LoaderError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Self::io_error(&self.dir)(err)),
        };
        let mut others = Vec::new();
        for entry in entries {
            let path = entry.map_err(Self::io_error(&self.dir))?.path();
            if !own_dirs.contains(&path) {
                others.push(path);
            }
        }
        Ok(others)
    }

    fn remove_entries(
        &self,
        dir: &Path,
        removal: &mut Removal,
        ours: impl Fn(&str) -> bool,
    ) -> Result<(), LoaderError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(Self::io_error(dir)(err)),
        };
        for entry in entries {
            let entry = entry.map_err(Self::io_error(dir))?;
            let path = entry.path();
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file && ours(&entry.file_name().to_string_lossy()) {
                fs::remove_file(&path).map_err(Self::io_error(&path))?;
                removal.removed.push(path);
            } else {
                removal.kept.push(path);
            }
        }
        Ok(())
    }
}
