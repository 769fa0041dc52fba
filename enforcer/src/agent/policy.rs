//! Turning the configured policy source into a compiled policy the agent may apply:
//! plain policy files, or, when trusted keys are configured, only a bundle signed by one
//! of them and not older than the last one accepted.

use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

use super::floor::Floor;
use crate::{
    config::PolicySource,
    policy::{
        self, Compiled, PolicyError,
        bundle::{self, BundleError},
        source::SourceSet,
    },
};

/// A policy ready to apply.
#[derive(Debug)]
pub struct Candidate {
    /// The compiled policy.
    pub compiled: Compiled,
    /// SHA-256 (hex) of the policy files, names and texts in merge order.
    pub source_sha256: String,
    /// The bundle's version, for a signed bundle.
    pub bundle_version: Option<u64>,
    /// The id of the trusted key that signed the bundle, for a signed bundle.
    pub signer_key_id: Option<String>,
}

/// Frees `candidate` on a thread of its own: freeing a large compiled policy (sources,
/// spans, maps' image) takes over 100 ms at 100k rules, during which the agent's one task
/// would not see new cgroups, signals or metrics scrapes. Should no thread start, the
/// closure and the candidate in it are freed here instead.
pub fn drop_in_background(candidate: Candidate) {
    let _ = std::thread::Builder::new()
        .name("policy-drop".to_owned())
        .spawn(move || drop(candidate));
}

/// Why the configured policy cannot be applied; the message names the place.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The policy files are not valid: every error, a line each with file:line:col.
    #[error("policy rejected: {0}")]
    Invalid(String),
    /// The files could not be read.
    #[error("{0}")]
    Source(String),
    /// A bundle was refused (unsigned, altered, foreign, older).
    #[error("bundle {path} refused: {reason}")]
    Bundle {
        /// The bundle file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// SHA-256 (hex) of a set of policy files.
pub fn source_sha256(sources: &SourceSet) -> String {
    let mut hasher = crate::digest::hasher();
    for file in &sources.files {
        hasher.update(file.path.as_bytes());
        hasher.update(&[0]);
        hasher.update(file.text.as_bytes());
        hasher.update(&[0]);
    }
    hex::encode(crate::digest::finish(hasher))
}

/// Reads, checks and compiles the configured policy. A bundle older than `floor` (the
/// highest version this host accepted, [`Floor`]) or than `min_bundle_version` (the
/// runtime state's, from before the floor was kept) is refused; a newer one raises the
/// floor before it is returned, and is refused if the floor cannot be raised.
pub fn load(
    source: &PolicySource,
    min_bundle_version: u64,
    floor: &Floor,
) -> Result<Candidate, CandidateError> {
    if source.trusted_keys.is_empty() {
        return load_files(&source.path);
    }
    let bundle_error = |reason: String| CandidateError::Bundle {
        path: source.path.display().to_string(),
        reason,
    };
    let floor_version = floor.read().map_err(|err| bundle_error(err.to_string()))?;
    let candidate = load_bundle(source, min_bundle_version.max(floor_version))?;
    if let Some(version) = candidate.bundle_version
        && version > floor_version
    {
        floor
            .raise(version)
            .map_err(|err| bundle_error(format!("not applied: {err}")))?;
    }
    Ok(candidate)
}

/// A bundle signed by one of the trusted keys, at least `min_bundle_version`.
fn load_bundle(
    source: &PolicySource,
    min_bundle_version: u64,
) -> Result<Candidate, CandidateError> {
    let bundle_error = |reason: String| CandidateError::Bundle {
        path: source.path.display().to_string(),
        reason,
    };
    let keys: Vec<VerifyingKey> = source
        .trusted_keys
        .iter()
        .map(|path| bundle::read_public_key(path).map_err(|err| bundle_error(err.to_string())))
        .collect::<Result<_, _>>()?;
    let bytes = std::fs::read(&source.path).map_err(|err| bundle_error(err.to_string()))?;
    // Every trusted key is tried; a bundle signed by none of them is refused with the
    // reason the last key gave (they differ only by key id).
    let mut last = None;
    for key in &keys {
        match bundle::verify(&bytes, key, min_bundle_version) {
            Ok(verified) => {
                return Ok(Candidate {
                    source_sha256: source_sha256(&verified.compiled.sources),
                    compiled: verified.compiled,
                    bundle_version: Some(verified.payload.version),
                    signer_key_id: Some(bundle::key_id(key)),
                });
            }
            Err(err @ BundleError::UnknownKey { .. }) => last = Some(err),
            Err(err) => return Err(bundle_error(err.to_string())),
        }
    }
    Err(bundle_error(last.map_or_else(
        || "no trusted key".to_owned(),
        |err| err.to_string(),
    )))
}

fn load_files(path: &PathBuf) -> Result<Candidate, CandidateError> {
    match policy::load(std::slice::from_ref(path)) {
        Ok(compiled) => Ok(Candidate {
            source_sha256: source_sha256(&compiled.sources),
            compiled,
            bundle_version: None,
            signer_key_id: None,
        }),
        Err(PolicyError::Source(err)) => Err(CandidateError::Source(err.to_string())),
        Err(PolicyError::Rejected(rejected)) => {
            let lines: Vec<String> = rejected
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.one_line(&rejected.sources))
                .collect();
            Err(CandidateError::Invalid(lines.join("\n")))
        }
    }
}
