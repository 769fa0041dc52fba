//! The kernel object built from `enforcer-ebpf` by `build.rs`, embedded in the binary so
//! that an agent and its programs can never drift apart.

/// The ELF bytes of the kernel object, aligned for aya's parser.
pub static BYTES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));
