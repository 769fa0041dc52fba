//! enforcer: the per-host agent and CLI of the eBPF API segmentation enforcer.
//!
//! The crate is split by job, in layers where each module imports only from the layers
//! below it (`tests/layering.rs` holds the table):
//!
//! 1. [`digest`] (SHA-256), [`durable`] (atomic file replacement), [`object`] (the
//!    embedded kernel programs) and [`host`] (mounts, cgroups, interfaces, host name);
//! 2. [`policy`]: parsing, validation and the pure compiler to a map image;
//! 3. [`audit`] (the record format, the store and what reads it) and [`loader`] (the
//!    kernel programs and maps), which know nothing of each other;
//! 4. [`config`]: the agent's static configuration;
//! 5. [`agent`]: `enforcer run`, which joins them;
//! 6. [`cli`]: the `enforcer` command line.

pub mod agent;
pub mod audit;
pub mod cli;
pub mod config;
pub mod digest;
pub mod durable;
pub mod host;
pub mod loader;
pub mod object;
pub mod policy;
