//! The kernel object built from `enforcer-ebpf` by `build.rs`, embedded in the binary so
//! that an agent and its programs can never drift apart.

/// The ELF bytes of the kernel object, aligned for aya's parser.
pub static BYTES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// SHA-256 (hex) of [`BYTES`]: which kernel programs this binary loads, for
/// `enforcer_build_info`. Computed once.
pub fn sha256_hex() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| hex::encode(crate::digest::sha256(BYTES)))
}
