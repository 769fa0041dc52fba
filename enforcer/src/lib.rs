//! enforcer: the per-host agent and CLI of the eBPF API segmentation enforcer.
//!
//! The crate is split by job: [`object`] embeds the kernel programs, [`host`] discovers
//! the host's cgroup2 and bpffs mounts, [`loader`] loads the programs into the kernel and
//! attaches them, [`policy`] parses and compiles policies, [`config`] reads the agent's
//! static configuration, [`audit`] records and checks the flow audit trail, and [`cli`] is
//! the `enforcer` command line.

pub mod agent;
pub mod audit;
pub mod cli;
pub mod config;
pub mod digest;
pub mod host;
pub mod loader;
pub mod object;
pub mod policy;
