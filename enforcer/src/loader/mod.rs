//! Loads the embedded kernel object, gets every program past the verifier and attaches
//! programs to interfaces (XDP) and cgroups (sock and sock_addr hooks).
//!
//! A [`Loader`] owns the kernel objects it created: dropping it detaches and unloads
//! everything that is not pinned.

mod counters;
mod events;
mod generation;

use std::{fs::File, io, path::Path, time::Duration};

pub use counters::{Counters, EventCounts, ReasonCount};
pub use events::EventReader;
pub use generation::Applied;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, MapData, MapError, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, TestRun as _, TestRunOptions,
        Xdp, XdpMode,
    },
};
use enforcer_common::{
    event::Hook,
    maps::{DEFAULT_DEDUP_WINDOW_NS, EVENTS, HOST_SETTINGS, HostSettings, slot_of},
};

use crate::object;

/// The cgroup hooks, attached together to one cgroup.
pub const CGROUP_HOOKS: [Hook; 7] = [
    Hook::Connect4,
    Hook::Connect6,
    Hook::Sendmsg4,
    Hook::Sendmsg6,
    Hook::SockCreate,
    Hook::PostBind4,
    Hook::PostBind6,
];

/// What can go wrong while loading or attaching the kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The object could not be parsed or its maps could not be created.
    #[error("cannot load the kernel object: {0}")]
    Object(#[source] Box<EbpfError>),
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

/// The kernel object with every program loaded (verified) and none attached yet.
pub struct Loader {
    ebpf: Ebpf,
}

impl Loader {
    /// Parses the embedded object, creates its maps, loads every program and writes the
    /// host settings: the default de-duplication window and this host's ephemeral ports.
    pub fn load() -> Result<Self, LoaderError> {
        let ebpf = EbpfLoader::new()
            .load(object::BYTES)
            .map_err(|err| LoaderError::Object(Box::new(err)))?;
        let mut loader = Self { ebpf };
        for hook in Hook::ALL {
            loader.load_program(hook)?;
        }
        let (ephemeral_low, ephemeral_high) = ephemeral_ports()?;
        loader.set_host_settings(HostSettings {
            dedup_window_ns: DEFAULT_DEDUP_WINDOW_NS,
            ephemeral_low,
            ephemeral_high,
            _pad: [0; 4],
        })?;
        Ok(loader)
    }

    fn host_settings(&mut self) -> Result<HostSettings, LoaderError> {
        let array: Array<&mut MapData, HostSettings> =
            Array::try_from(map(&mut self.ebpf, HOST_SETTINGS)?)
                .map_err(map_error(HOST_SETTINGS))?;
        array.get(&0, 0).map_err(map_error(HOST_SETTINGS))
    }

    fn set_host_settings(&mut self, settings: HostSettings) -> Result<(), LoaderError> {
        let mut array: Array<&mut MapData, HostSettings> =
            Array::try_from(map(&mut self.ebpf, HOST_SETTINGS)?)
                .map_err(map_error(HOST_SETTINGS))?;
        array.set(0, &settings, 0).map_err(map_error(HOST_SETTINGS))
    }

    /// Sets the de-duplication window: an event for the same flow within `window` of the
    /// last one written is suppressed and counted. Zero writes every event.
    pub fn set_dedup_window(&mut self, window: Duration) -> Result<(), LoaderError> {
        let mut settings = self.host_settings()?;
        settings.dedup_window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.set_host_settings(settings)
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
        let generation = self.active_generation()?;
        let rules = if generation == 0 {
            Vec::new()
        } else {
            let slot = slot_of(generation);
            let count = generation::slot_config(&mut self.ebpf, slot)?.rule_count;
            counters::rules(&mut self.ebpf, slot, count)?
        };
        let (by_reason, events) = counters::host(&mut self.ebpf)?;
        Ok(Counters {
            generation,
            rules,
            by_reason,
            events,
        })
    }

    fn load_program(&mut self, hook: Hook) -> Result<(), LoaderError> {
        let name = hook.program_name();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram(name))?;
        let loaded = match hook {
            Hook::XdpIngress => <&mut Xdp>::try_from(program).and_then(Xdp::load),
            Hook::SockCreate | Hook::PostBind4 | Hook::PostBind6 => {
                <&mut CgroupSock>::try_from(program).and_then(CgroupSock::load)
            }
            Hook::Connect4 | Hook::Connect6 | Hook::Sendmsg4 | Hook::Sendmsg6 => {
                <&mut CgroupSockAddr>::try_from(program).and_then(CgroupSockAddr::load)
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

    /// Names of the maps the object created.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_owned()).collect()
    }

    /// Attaches the XDP ingress program to the interface with index `ifindex`.
    ///
    /// Use [`XdpMode::Skb`] on veth: native XDP on veth costs locally originated traffic
    /// more than it saves.
    pub fn attach_xdp(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), LoaderError> {
        let name = Hook::XdpIngress.program_name();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram(name))?;
        <&mut Xdp>::try_from(program)
            .and_then(|xdp| xdp.attach(ifindex, mode))
            .map(drop)
            .map_err(program_error(name, "attach"))
    }

    /// Attaches every cgroup hook to the cgroup directory `cgroup`.
    ///
    /// Attachments are BPF links, which the kernel always adds in multi mode: they run
    /// alongside other cgroup programs on the host (systemd's own, for example) instead of
    /// replacing them. A link refuses attach flags, hence [`CgroupAttachMode::Single`]
    /// (no flags) rather than `AllowMultiple`.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), LoaderError> {
        let dir = File::open(cgroup).map_err(|source| LoaderError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        for hook in CGROUP_HOOKS {
            let name = hook.program_name();
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(LoaderError::MissingProgram(name))?;
            let attached = match hook {
                Hook::SockCreate | Hook::PostBind4 | Hook::PostBind6 => {
                    <&mut CgroupSock>::try_from(program)
                        .and_then(|p| p.attach(&dir, CgroupAttachMode::Single))
                        .map(drop)
                }
                _ => <&mut CgroupSockAddr>::try_from(program)
                    .and_then(|p| p.attach(&dir, CgroupAttachMode::Single))
                    .map(drop),
            };
            attached.map_err(program_error(name, "attach"))?;
        }
        Ok(())
    }
}

/// Where the kernel publishes the ephemeral port range.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// This host's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_ports() -> Result<(u16, u16), LoaderError> {
    let error = |reason: String| LoaderError::EphemeralPorts {
        path: EPHEMERAL_PORTS,
        reason,
    };
    let text = std::fs::read_to_string(EPHEMERAL_PORTS).map_err(|e| error(e.to_string()))?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    match (bounds.next(), bounds.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Ok((low, high)),
        _ => Err(error(format!(
            "expected two ports, found {:?}",
            text.trim()
        ))),
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, LoaderError> {
    ebpf.map_mut(name).ok_or(LoaderError::MissingMap(name))
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
