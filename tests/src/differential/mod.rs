//! Differential testing of the kernel programs: random policies ([`spec`]) and random
//! inbound frames ([`flow`]) decided by the real XDP program through `BPF_PROG_TEST_RUN`,
//! and compared with a [`reference`] written from the documented semantics alone.
//!
//! Independence: the reference reads the generator's own plain data ([`spec::Spec`]),
//! not the policy the agent parses, and classifies addresses with its own prefix type
//! ([`net::Net`]). It never calls the compiler, `enforcer::policy::lookup`,
//! `enforcer::policy::reference` or `enforcer_common::decision`. So the parser (piecewise
//! for large files), the validator, the compiler, the loader's map writes and the kernel's
//! lookups are all on the side being checked; only the TOML the generator writes connects
//! the two, and a parser that misread it would show as a divergence.

pub mod flow;
pub mod net;
pub mod reference;
pub mod spec;

use enforcer::policy::{Compiled, compile_sources, source::SourceSet};

/// A seeded random source: one seed reproduces one policy and its flows.
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }

    /// True with the given probability in percent.
    pub fn chance(&mut self, percent: u8) -> bool {
        self.0.u8(..100) < percent
    }

    /// An element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Any `u32`.
    pub fn u32(&mut self) -> u32 {
        self.0.u32(..)
    }

    /// Any `u128`.
    pub fn u128(&mut self) -> u128 {
        self.0.u128(..)
    }

    /// A port, 1 to 65535.
    pub fn port(&mut self) -> u16 {
        self.0.u16(1..)
    }
}

/// The seed of policy `index` of a run seeded with `seed` (SplitMix64 of both).
pub fn policy_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Compiles a generated policy's files as the agent does; the first errors on rejection.
pub fn compile(files: &[(String, String)]) -> Result<Compiled, String> {
    let mut sources = SourceSet::default();
    for (name, text) in files {
        sources.add(name, text);
    }
    compile_sources(sources).map_err(|rejected| {
        rejected
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{d:?}"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Writes a policy's files under `target/<profile>/<test>/seed-S-policy-N/`, where a
/// developer finds them; returns the directory.
pub fn keep_policy(test: &str, seed: u64, index: u64, files: &[(String, String)]) -> String {
    let dir = crate::profile_dir()
        .join(test)
        .join(format!("seed-{seed}-policy-{index}"));
    std::fs::create_dir_all(&dir).expect("create the failure directory");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a policy file");
    }
    dir.display().to_string()
}
