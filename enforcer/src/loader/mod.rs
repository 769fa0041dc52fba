//! Loads the embedded kernel object, gets every program past the verifier and attaches
//! programs to interfaces (XDP) and cgroups (sock, sock_addr, sockopt and skb hooks).
//!
//! A [`Loader`] owns the kernel objects it created: dropping it detaches and unloads
//! everything that is not pinned. [`Loader::load_pinned`] pins every map and program and
//! the attach methods pin every link, so enforcement outlives the agent; a later
//! `load_pinned` on the same directory reuses the maps and moves the pinned links onto
//! its own programs in place (no second attach, no moment without a program).

mod batch;
mod cgroups;
mod counters;
mod events;
mod fill;
mod folds;
mod generation;
mod learnt;
mod local;
mod map_set;
mod pins;
mod settings;
pub mod sys;
mod verdicts;

use std::{
    fs::{self, File},
    io,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::Path,
    time::Duration,
};

pub use cgroups::CgroupTable;
pub use counters::{Counters, EventCounts, ReasonCount};
pub use events::EventReader;
pub use fill::MapFill;
pub use folds::{FoldReporter, Swept};
pub use generation::Applied;
pub use map_set::{MapSet, PinnedMaps};
pub use pins::{PinLayout, PinnedLinkState, Removal};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, Program, ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::FdLink,
    },
    sys::SyscallError,
};
use aya_obj::generated::bpf_attach_type;
use enforcer_common::{
    event::Hook,
    maps::{
        DEFAULT_DEDUP_WINDOW_NS, DEFAULT_FOLD_SOURCES, EVENTS, FOLD_REPORT_PROGRAM, HostSettings,
        MAP_NAMES,
    },
};

use crate::object;

/// The cgroup hooks, attached together to one cgroup.
pub const CGROUP_HOOKS: [Hook; 13] = [
    Hook::Connect4,
    Hook::Connect6,
    Hook::Sendmsg4,
    Hook::Sendmsg6,
    Hook::SockCreate,
    Hook::PostBind4,
    Hook::PostBind6,
    Hook::SockRelease,
    Hook::Setsockopt,
    Hook::SkbEgress,
    Hook::Bind4,
    Hook::Bind6,
    Hook::SkbIngress,
];

/// What can go wrong while loading or attaching the kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object could not be parsed or its maps could not be created.
    #[error("cannot load the kernel object: {0}")]
    Object(#[source] Box<EbpfError>),
    /// A map pinned by an earlier agent has another layout than this build's (a release
    /// changed it): nothing is loaded, and the earlier programs, which still hold their
    /// maps, keep enforcing until the pins are removed.
    #[error(
        "cannot load the kernel object: the pinned map `{name}` is incompatible with this build ({detail}); the earlier agent's programs keep enforcing: stop the agent, run `enforcer uninstall`, then start it"
    )]
    IncompatiblePin {
        /// The map.
        name: String,
        /// What differs (aya's words: `key_size is 4, expected 8`).
        detail: String,
    },
    /// The object lacks a program this agent expects (a build mismatch).
    #[error("the kernel object has no program `{0}`")]
    MissingProgram(&'static str),
    /// A program was refused by the kernel (the verifier log is in the source) or could
    /// not be attached.
    #[error("program `{program}`: {action} failed: {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// What was being done: `load`, `attach`, `info`.
        action: &'static str,
        /// aya's error, carrying the verifier log for load failures.
        #[source]
        source: Box<ProgramError>,
    },
    /// The object lacks a map this agent expects (a build mismatch).
    #[error("the kernel object has no map `{0}`")]
    MissingMap(&'static str),
    /// A map could not be read or written.
    #[error("map `{map}`: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// The generation counter would overflow (after four billion applies).
    #[error("no generation numbers left; reload the agent to start over")]
    GenerationsExhausted,
    /// The number of possible CPUs could not be read (per-CPU maps need it).
    #[error("cannot read the number of possible CPUs: {0}")]
    PossibleCpus(#[source] io::Error),
    /// The host's ephemeral port range could not be read.
    #[error("cannot read {path}: {reason}")]
    EphemeralPorts {
        /// The sysctl file.
        path: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The event ring buffer was already handed out (there is one consumer).
    #[error("the event ring buffer has already been taken")]
    EventsTaken,
    /// A ring-buffer record is not a `FlowEvent` (a kernel object from another build).
    #[error("an event record of {0} bytes, expected {size}", size = size_of::<enforcer_common::event::FlowEvent>())]
    EventSize(usize),
    /// bpffs could not be found or mounted for the pins.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// The pin directory is not on bpffs.
    #[error("{0} is not on a bpffs mount")]
    NotBpffs(String),
    /// A pin or pin directory could not be created, read or removed.
    #[error("{path}: {source}")]
    Pins {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A link could not be pinned, opened, read or updated.
    #[error("link {what}: {reason}")]
    Link {
        /// The link (its pin name) and the action.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The cgroup directory to attach to could not be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the kernel reports about one loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProgram {
    /// The hook the program serves.
    pub hook: Hook,
    /// The kernel's program id.
    pub id: u32,
    /// Instructions the verifier walked to accept the program, where the kernel says.
    pub verified_instructions: Option<u32>,
}

/// How an attach method found the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// Nothing was attached: a new link now runs this loader's program.
    Attached,
    /// A pinned link was already attached there: it now runs this loader's program.
    Adopted,
    /// A pinned link was attached elsewhere (another cgroup, a re-created interface): a
    /// new link is attached here, then the old one is removed.
    Moved,
}

/// The kernel object with every program loaded (verified) and none attached yet.
pub struct Loader {
    ebpf: Ebpf,
    /// Where maps, programs and links are pinned; `None` keeps everything private to
    /// this loader.
    pins: Option<PinLayout>,
    /// Links of an unpinned loader, detached when it is dropped.
    links: Vec<NewLink>,
}

/// A link an attach just made: through aya, or with `BPF_LINK_CREATE` directly for the
/// setsockopt hook, whose aya 0.16 link cannot be turned into an [`FdLink`].
enum NewLink {
    /// Made through aya.
    Aya(FdLink),
    /// Made with [`sys::link_create`].
    Created(OwnedFd),
}

impl NewLink {
    /// Pins the link at `path`: it stays attached until the pin is removed.
    fn pin(self, path: &Path) -> Result<(), String> {
        match self {
            Self::Aya(link) => link.pin(path).map(drop).map_err(|err| err.to_string()),
            Self::Created(fd) => sys::pin(&fd, path).map_err(|err| err.to_string()),
        }
    }
}

impl Loader {
    /// Parses the embedded object, creates its maps, loads every program and writes the
    /// host settings: the default de-duplication window and this host's ephemeral ports.
    /// Nothing is pinned: everything goes when the loader is dropped.
    pub fn load() -> Result<Self, LoaderError> {
        let ebpf = EbpfLoader::new()
            .load(object::BYTES)
            .map_err(|err| LoaderError::Object(Box::new(err)))?;
        Self::finish(ebpf, None)
    }

    /// Like [`Loader::load`], with every map and program pinned under `layout` (bpffs is
    /// mounted first if needed). Maps already pinned there are reused with their content:
    /// the active generation, counters, learnt listeners and unread events survive.
    pub fn load_pinned(layout: &PinLayout) -> Result<Self, LoaderError> {
        layout.create()?;
        let mut loader = EbpfLoader::new();
        let paths = MAP_NAMES.map(|name| (name, layout.map(name)));
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object::BYTES).map_err(|err| match err {
            EbpfError::MapError(MapError::IncompatiblePinnedMap {
                name,
                property,
                expected,
                actual,
            }) => LoaderError::IncompatiblePin {
                name,
                detail: format!("{property} is {actual}, expected {expected}"),
            },
            err => LoaderError::Object(Box::new(err)),
        })?;
        let mut loader = Self::finish(ebpf, Some(layout.clone()))?;
        loader.pin_programs(layout)?;
        Ok(loader)
    }

    fn finish(ebpf: Ebpf, pins: Option<PinLayout>) -> Result<Self, LoaderError> {
        let mut loader = Self {
            ebpf,
            pins,
            links: Vec::new(),
        };
        for hook in Hook::ALL {
            loader.load_program(hook)?;
        }
        let reporter = loader
            .ebpf
            .program_mut(FOLD_REPORT_PROGRAM)
            .ok_or(LoaderError::MissingProgram(FOLD_REPORT_PROGRAM))?;
        <&mut Xdp>::try_from(reporter)
            .and_then(Xdp::load)
            .map_err(program_error(FOLD_REPORT_PROGRAM, "load"))?;
        let (ephemeral_low, ephemeral_high) = ephemeral_ports()?;
        settings::write(
            &mut loader.ebpf,
            HostSettings {
                dedup_window_ns: DEFAULT_DEDUP_WINDOW_NS,
                // Unknown on a kernel without SO_NETNS_COOKIE: then bindings are learnt in
                // every namespace, as before.
                netns_cookie: crate::host::netns_cookie().unwrap_or(0),
                ephemeral_low,
                ephemeral_high,
                fail_closed: 0,
                _pad: 0,
                fold_sources: DEFAULT_FOLD_SOURCES,
            },
        )?;
        Ok(loader)
    }

    /// Pins every program, replacing the pins of an earlier agent (its programs stay
    /// loaded while a link still runs them).
    fn pin_programs(&mut self, layout: &PinLayout) -> Result<(), LoaderError> {
        for hook in Hook::ALL {
            let path = layout.program(hook);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LoaderError::Pins {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
            self.program_mut(hook)?
                .pin(&path)
                .map_err(|err| LoaderError::Link {
                    what: format!("program {} pin", hook.program_name()),
                    reason: err.to_string(),
                })?;
        }
        Ok(())
    }

    /// The pin layout, for a pinned loader.
    pub fn pins(&self) -> Option<&PinLayout> {
        self.pins.as_ref()
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut Program, LoaderError> {
        let name = hook.program_name();
        self.ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram(name))
    }

    /// Sets the fold window: attempts of one fold within `window` of its last event are
    /// counted into its next one (see `enforcer_common::maps::FOLDS`). Zero writes every
    /// attempt as an event of its own.
    pub fn set_dedup_window(&mut self, window: Duration) -> Result<(), LoaderError> {
        let mut host = settings::read(&mut self.ebpf)?;
        host.dedup_window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        settings::write(&mut self.ebpf, host)
    }

    /// Sets the fold threshold: denials of one destination under one rule from more than
    /// `sources` distinct sources within a window fold by destination; 0 never does.
    pub fn set_fold_sources(&mut self, sources: u16) -> Result<(), LoaderError> {
        let mut host = settings::read(&mut self.ebpf)?;
        host.fold_sources = sources;
        settings::write(&mut self.ebpf, host)
    }

    /// Hands out the consumer side of the event ring buffer; there is only one.
    pub fn take_events(&mut self) -> Result<EventReader, LoaderError> {
        let ring = self.ebpf.take_map(EVENTS).ok_or(LoaderError::EventsTaken)?;
        RingBuf::try_from(ring)
            .map(EventReader::new)
            .map_err(map_error(EVENTS))
    }

    /// Every counter, summed over CPUs; the rule counters are the active generation's.
    pub fn counters(&mut self) -> Result<Counters, LoaderError> {
        counters::all(&mut self.ebpf)
    }

    fn load_program(&mut self, hook: Hook) -> Result<(), LoaderError> {
        let name = hook.program_name();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram(name))?;
        let loaded = match hook {
            Hook::XdpIngress => <&mut Xdp>::try_from(program).and_then(Xdp::load),
            Hook::SockCreate | Hook::PostBind4 | Hook::PostBind6 | Hook::SockRelease => {
                <&mut CgroupSock>::try_from(program).and_then(CgroupSock::load)
            }
            Hook::Connect4
            | Hook::Connect6
            | Hook::Sendmsg4
            | Hook::Sendmsg6
            | Hook::Bind4
            | Hook::Bind6 => {
                <&mut CgroupSockAddr>::try_from(program).and_then(CgroupSockAddr::load)
            }
            Hook::Setsockopt => {
                <&mut CgroupSockopt>::try_from(program).and_then(CgroupSockopt::load)
            }
            Hook::SkbEgress | Hook::SkbIngress => {
                <&mut CgroupSkb>::try_from(program).and_then(CgroupSkb::load)
            }
        };
        loaded.map_err(program_error(name, "load"))
    }

    /// What the kernel reports about each loaded program, in [`Hook::ALL`] order.
    pub fn programs(&self) -> Result<Vec<LoadedProgram>, LoaderError> {
        Hook::ALL
            .into_iter()
            .map(|hook| {
                let name = hook.program_name();
                let program = self
                    .ebpf
                    .program(name)
                    .ok_or(LoaderError::MissingProgram(name))?;
                let info = program.info().map_err(program_error(name, "info"))?;
                Ok(LoadedProgram {
                    hook,
                    id: info.id(),
                    verified_instructions: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    /// Applies a compiled policy as the next generation: its maps are filled while the
    /// current generation keeps deciding, then one write makes it active. cgroup paths
    /// are resolved to ids under `cgroup_root` (the cgroup2 mount).
    pub fn apply(
        &mut self,
        image: &crate::policy::image::MapImage,
        cgroup_root: &Path,
    ) -> Result<Applied, LoaderError> {
        generation::apply(&mut self.ebpf, image, cgroup_root)
    }

    /// Resolves the active generation's cgroup table again (`listed` is its image's
    /// `cgroups`) and writes the changes into it in place: cgroup identity is host state,
    /// so this is not a new generation. Call it when a watched guard directory gains or
    /// loses a child.
    pub fn refresh_cgroups(
        &mut self,
        listed: &[(String, u32)],
        cgroup_root: &Path,
    ) -> Result<CgroupTable, LoaderError> {
        let table = cgroups::resolve(listed, cgroup_root);
        if let Some((_, slot)) = generation::active_slot(&mut self.ebpf)? {
            cgroups::write(&mut self.ebpf, slot, &table)?;
        }
        Ok(table)
    }

    /// The active generation number (0 before the first apply).
    pub fn active_generation(&mut self) -> Result<u32, LoaderError> {
        generation::active(&mut self.ebpf)
    }

    /// Runs the XDP program on `packet` through `BPF_PROG_TEST_RUN`, `repeat` times, and
    /// returns its action (`XDP_DROP` 1, `XDP_PASS` 2, ...) and the kernel's mean time per
    /// run. Nothing is attached and no interface sees the packet.
    pub fn test_run_xdp(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), LoaderError> {
        let name = Hook::XdpIngress.program_name();
        let program = self
            .ebpf
            .program(name)
            .ok_or(LoaderError::MissingProgram(name))?;
        let xdp: &Xdp = program
            .try_into()
            .map_err(program_error(name, "test run"))?;
        let mut out = vec![0u8; packet.len() + 256];
        let options = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = xdp
            .test_run(options)
            .map_err(program_error(name, "test run"))?;
        Ok((result.return_value, result.duration))
    }

    /// The program that writes a fold's pending attempts as an event, for the consumer's
    /// sweeps (never attached, never pinned: each agent loads its own).
    pub fn fold_reporter(&self) -> Result<FoldReporter, LoaderError> {
        let program = self
            .ebpf
            .program(FOLD_REPORT_PROGRAM)
            .ok_or(LoaderError::MissingProgram(FOLD_REPORT_PROGRAM))?;
        let fd = program
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(program_error(FOLD_REPORT_PROGRAM, "open"))?;
        Ok(FoldReporter::new(fd))
    }

    /// Names of the maps the object created.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_owned()).collect()
    }

    /// Attaches the XDP ingress program to `interface` (index `ifindex`); a pinned
    /// loader pins the link as `xdp@<interface>`, or adopts the one pinned there.
    ///
    /// The agent's `auto` asks for [`XdpMode::Skb`] on a veth: native XDP on a veth costs
    /// locally originated traffic more than it saves.
    pub fn attach_xdp(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<Attachment, LoaderError> {
        let pin = self.pins.as_ref().map(|pins| pins.xdp_link(interface));
        self.attach(
            Hook::XdpIngress,
            pin.as_deref(),
            sys::LinkTarget::Xdp(ifindex),
            |program| {
                let xdp = <&mut Xdp>::try_from(program)?;
                let id = xdp.attach(ifindex, mode)?;
                let link = xdp.take_link(id)?;
                FdLink::try_from(link)
                    .map(NewLink::Aya)
                    .map_err(ProgramError::from)
            },
        )
    }

    /// Attaches every cgroup hook to the cgroup directory `cgroup`; a pinned loader pins
    /// each link, or adopts the one pinned for that hook.
    ///
    /// Attachments are BPF links, which the kernel always adds in multi mode: they run
    /// alongside other cgroup programs on the host (systemd's own, for example) instead of
    /// replacing them. A link refuses attach flags, hence [`CgroupAttachMode::Single`]
    /// (no flags) rather than `AllowMultiple`.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<Attachment, LoaderError> {
        let cgroup_error = |source| LoaderError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        };
        let dir = File::open(cgroup).map_err(cgroup_error)?;
        // A cgroup2 directory's inode number is the cgroup id.
        let cgroup_id = dir.metadata().map_err(cgroup_error)?.ino();
        let mut outcome = Attachment::Adopted;
        for hook in CGROUP_HOOKS {
            let pin = self.pins.as_ref().map(|pins| pins.cgroup_link(hook));
            let attached = self.attach(
                hook,
                pin.as_deref(),
                sys::LinkTarget::Cgroup(cgroup_id),
                |program| attach_to_cgroup(hook, program, &dir),
            )?;
            // Report the strongest change over all hooks.
            outcome = match (outcome, attached) {
                (_, Attachment::Attached) | (Attachment::Attached, _) => Attachment::Attached,
                (_, Attachment::Moved) | (Attachment::Moved, _) => Attachment::Moved,
                _ => Attachment::Adopted,
            };
        }
        Ok(outcome)
    }

    /// Makes `hook`'s program run at `target`: through the link pinned at `pin` when it
    /// is attached there (updated in place), else through a new link made by `attach`
    /// (pinned at `pin`, replacing a link pinned for another target; or kept by this
    /// loader when there is no pin).
    fn attach(
        &mut self,
        hook: Hook,
        pin: Option<&Path>,
        target: sys::LinkTarget,
        attach: impl FnOnce(&mut Program) -> Result<NewLink, ProgramError>,
    ) -> Result<Attachment, LoaderError> {
        let name = hook.program_name();
        let link_error = |what: &str, reason: String| LoaderError::Link {
            what: format!("{name} {what}"),
            reason,
        };
        let existing = match pin {
            Some(pin) if pin.exists() => {
                Some(sys::open_pin(pin).map_err(|err| link_error("open pin", err.to_string()))?)
            }
            _ => None,
        };
        if let Some(link) = &existing {
            let details =
                sys::link_details(link).map_err(|err| link_error("info", err.to_string()))?;
            if details.target == target {
                let program = self.program_mut(hook)?;
                let fd = program.fd().map_err(program_error(name, "adopt"))?;
                sys::link_update(link, fd).map_err(|err| link_error("update", err.to_string()))?;
                return Ok(Attachment::Adopted);
            }
        }
        let link = attach(self.program_mut(hook)?).map_err(program_error(name, "attach"))?;
        match pin {
            Some(pin) => {
                if existing.is_some() {
                    // The old link detaches when its pin and our descriptor are gone;
                    // the new one is already in force.
                    fs::remove_file(pin).map_err(|source| LoaderError::Pins {
                        path: pin.display().to_string(),
                        source,
                    })?;
                }
                link.pin(pin).map_err(|err| link_error("pin", err))?;
            }
            None => self.links.push(link),
        }
        Ok(if existing.is_some() {
            Attachment::Moved
        } else {
            Attachment::Attached
        })
    }

    /// Detaches the XDP links pinned for interfaces not in `keep` (interfaces removed
    /// from the configuration); returns their names.
    pub fn detach_other_interfaces(&self, keep: &[&str]) -> Result<Vec<String>, LoaderError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let mut detached = Vec::new();
        for link in pins.links()? {
            if let Some(interface) = PinLayout::xdp_interface(&link.name)
                && !keep.contains(&interface)
            {
                let path = pins.xdp_link(interface);
                fs::remove_file(&path).map_err(|source| LoaderError::Pins {
                    path: path.display().to_string(),
                    source,
                })?;
                detached.push(interface.to_owned());
            }
        }
        Ok(detached)
    }

    /// Makes the kernel's table of this host's addresses hold exactly `addresses` (every
    /// address of every interface, and the broadcast addresses of their networks);
    /// returns how many it holds. A connect or send to a local address is decided
    /// against the listening segment, like loopback; one to a broadcast address is in the
    /// `broadcast` class.
    pub fn set_local_addresses(
        &mut self,
        addresses: &crate::host::interfaces::Addresses,
    ) -> Result<usize, LoaderError> {
        local::sync(&mut self.ebpf, addresses)
    }

    /// Learns the listeners in `listeners` (the host's sockets, [`crate::host::sockets`])
    /// that the kernel has not learnt itself at `bind()`, because they were bound before
    /// the hooks were attached; `root` is the cgroup2 mount. Returns how many it learnt.
    pub fn learn_existing_listeners(
        &mut self,
        listeners: &[crate::host::sockets::Listener],
        root: &Path,
    ) -> Result<usize, LoaderError> {
        learnt::seed(&mut self.ebpf, listeners, root)
    }

    /// How full the active generation's maps and the host maps are.
    pub fn map_fill(&mut self) -> Result<Vec<MapFill>, LoaderError> {
        fill::map_fill(&mut self.ebpf)
    }
}

/// Attaches the program of cgroup hook `hook` to the cgroup `dir` as a new link.
fn attach_to_cgroup(
    hook: Hook,
    program: &mut Program,
    dir: &File,
) -> Result<NewLink, ProgramError> {
    let mode = CgroupAttachMode::Single;
    let link = match hook {
        Hook::SockCreate | Hook::PostBind4 | Hook::PostBind6 | Hook::SockRelease => {
            let sock = <&mut CgroupSock>::try_from(program)?;
            let id = sock.attach(dir, mode)?;
            FdLink::try_from(sock.take_link(id)?)?
        }
        Hook::Connect4
        | Hook::Connect6
        | Hook::Sendmsg4
        | Hook::Sendmsg6
        | Hook::Bind4
        | Hook::Bind6 => {
            let addr = <&mut CgroupSockAddr>::try_from(program)?;
            let id = addr.attach(dir, mode)?;
            FdLink::try_from(addr.take_link(id)?)?
        }
        Hook::SkbEgress | Hook::SkbIngress => {
            let direction = if hook == Hook::SkbEgress {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let skb = <&mut CgroupSkb>::try_from(program)?;
            let id = skb.attach(dir, direction, mode)?;
            FdLink::try_from(skb.take_link(id)?)?
        }
        Hook::Setsockopt => {
            let sockopt = <&mut CgroupSockopt>::try_from(program)?;
            let created =
                sys::link_create(sockopt.fd()?, dir, bpf_attach_type::BPF_CGROUP_SETSOCKOPT)
                    .map_err(|io_error| SyscallError {
                        call: "bpf_link_create",
                        io_error,
                    })?;
            return Ok(NewLink::Created(created));
        }
        Hook::XdpIngress => return Err(ProgramError::UnexpectedProgramType),
    };
    Ok(NewLink::Aya(link))
}

/// Where the kernel publishes the ephemeral port range.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// This host's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_ports() -> Result<(u16, u16), LoaderError> {
    let error = |reason: String| LoaderError::EphemeralPorts {
        path: EPHEMERAL_PORTS,
        reason,
    };
    let text = fs::read_to_string(EPHEMERAL_PORTS).map_err(|e| error(e.to_string()))?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Ok((low, high)),
        _ => Err(error(format!(
            "expected two ports, found {:?}",
            text.trim()
        ))),
    }
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> LoaderError {
    move |source| LoaderError::Map {
        map,
        source: Box::new(source),
    }
}

fn program_error(
    program: &'static str,
    action: &'static str,
) -> impl FnOnce(ProgramError) -> LoaderError {
    move |source| LoaderError::Program {
        program,
        action,
        source: Box::new(source),
    }
}
