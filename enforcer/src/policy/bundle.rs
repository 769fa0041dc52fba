//! Signed policy bundles: the policy sources, the SHA-256 of the image they compile to
//! and a version number, signed with ed25519, entirely offline. An agent configured with
//! trusted keys refuses unsigned, altered, foreign-signed and older bundles.

use std::{fs, io, os::unix::fs::OpenOptionsExt as _, path::Path};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{
    Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use serde::{Deserialize, Serialize};

use super::{Compiled, compile_sources, source::SourceSet};

/// The bundle format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Why a key, a signature or a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A key file is not an ed25519 key in PEM.
    #[error("{path}: not an ed25519 {kind} key in PEM form ({detail})")]
    BadKey {
        /// The file.
        path: String,
        /// `private` or `public`.
        kind: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The system random source failed.
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
    /// The file is not a bundle (corrupt, truncated or another format).
    #[error("not a valid bundle: {0}")]
    Corrupt(String),
    /// Signed by a key that is not trusted.
    #[error("signed by another key: the bundle names key {found}, the trusted key is {trusted}")]
    UnknownKey {
        /// Key id in the bundle.
        found: String,
        /// Key id of the trusted key.
        trusted: String,
    },
    /// The signature does not verify: the content was altered after signing.
    #[error("altered: the signature does not match the bundle's content")]
    BadSignature,
    /// The sources no longer compile, or compile to another image than was signed.
    #[error("the sources do not compile to the signed image: {0}")]
    ImageMismatch(String),
    /// Older than a version already accepted.
    #[error("version {found} is older than version {accepted}, which was already accepted")]
    Rollback {
        /// The bundle's version.
        found: u64,
        /// The lowest acceptable version.
        accepted: u64,
    },
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Must increase from one accepted bundle to the next.
    pub version: u64,
    /// SHA-256 (hex) of the compiled [`super::image::MapImage`].
    pub image_sha256: String,
    /// The policy files, in merge order.
    pub sources: Vec<PayloadSource>,
}

/// One policy file in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSource {
    /// The path it was signed from.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// The bundle file: the payload exactly as signed (a JSON string, so no re-encoding can
/// change the signed bytes), the signing key's id and the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    format: u32,
    key_id: String,
    payload: String,
    signature: String,
}

/// A short id of a public key: the first 16 hex digits of the SHA-256 of its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&crate::digest::sha256(key.as_bytes())[..8])
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates a key pair: the private key (PKCS#8 PEM, mode 0600) at `private`, the public
/// key (SPKI PEM) at `public`. Refuses to overwrite an existing file.
pub fn keygen(private: &Path, public: &Path) -> Result<VerifyingKey, BundleError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| BundleError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Random(e.to_string()))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| BundleError::Random(e.to_string()))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(private)
        .map_err(io_error(private))?;
    io::Write::write_all(&mut file, private_pem.as_bytes()).map_err(io_error(private))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(public)
        .and_then(|mut f| io::Write::write_all(&mut f, public_pem.as_bytes()))
        .map_err(io_error(public))?;
    Ok(key.verifying_key())
}

/// Reads a private key file.
pub fn read_private_key(path: &Path) -> Result<SigningKey, BundleError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| BundleError::BadKey {
        path: path.display().to_string(),
        kind: "private",
        detail: e.to_string(),
    })
}

/// Reads a public key file.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| BundleError::BadKey {
        path: path.display().to_string(),
        kind: "public",
        detail: e.to_string(),
    })
}

/// Signs a compiled policy as bundle `version`; returns the bundle file's bytes.
pub fn sign(compiled: &Compiled, version: u64, key: &SigningKey) -> Vec<u8> {
    let payload = Payload {
        version,
        image_sha256: compiled.image.digest_hex(),
        sources: compiled
            .sources
            .files
            .iter()
            .map(|f| PayloadSource {
                path: f.path.clone(),
                text: f.text.clone(),
            })
            .collect(),
    };
    let payload = serde_json::to_string(&payload).expect("a payload always serialises");
    let signature = key.sign(payload.as_bytes());
    let file = BundleFile {
        format: FORMAT,
        key_id: key_id(&key.verifying_key()),
        signature: BASE64.encode(signature.to_bytes()),
        payload,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).expect("a bundle always serialises");
    bytes.push(b'\n');
    bytes
}

/// A bundle that passed every check.
#[derive(Debug)]
pub struct Verified {
    /// The signed payload.
    pub payload: Payload,
    /// The policy, compiled again from the bundled sources.
    pub compiled: Compiled,
}

/// Checks a bundle against `trusted`, in order: well-formed, signed by the trusted key,
/// signature valid, sources compile to the signed image, version at least `min_version`.
pub fn verify(
    bytes: &[u8],
    trusted: &VerifyingKey,
    min_version: u64,
) -> Result<Verified, BundleError> {
    let file: BundleFile =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(BundleError::Corrupt(format!(
            "format {} (this build reads {FORMAT})",
            file.format
        )));
    }
    let trusted_id = key_id(trusted);
    if file.key_id != trusted_id {
        return Err(BundleError::UnknownKey {
            found: file.key_id,
            trusted: trusted_id,
        });
    }
    let signature = BASE64
        .decode(&file.signature)
        .ok()
        .and_then(|raw| <[u8; 64]>::try_from(raw).ok())
        .map(|raw| Signature::from_bytes(&raw))
        .ok_or_else(|| {
            BundleError::Corrupt("the signature is not 64 base64-encoded bytes".into())
        })?;
    trusted
        .verify(file.payload.as_bytes(), &signature)
        .map_err(|_| BundleError::BadSignature)?;
    let payload: Payload =
        serde_json::from_str(&file.payload).map_err(|e| BundleError::Corrupt(e.to_string()))?;
    let mut sources = SourceSet::default();
    for source in &payload.sources {
        sources.add(source.path.clone(), source.text.clone());
    }
    let compiled = compile_sources(sources).map_err(|rejected| {
        BundleError::ImageMismatch(format!(
            "{} diagnostics, first: {}",
            rejected.diagnostics.len(),
            rejected
                .diagnostics
                .first()
                .map_or("", |d| d.message.as_str())
        ))
    })?;
    let digest = compiled.image.digest_hex();
    if digest != payload.image_sha256 {
        return Err(BundleError::ImageMismatch(format!(
            "signed {}, compiled {digest}",
            payload.image_sha256
        )));
    }
    if payload.version < min_version {
        return Err(BundleError::Rollback {
            found: payload.version,
            accepted: min_version,
        });
    }
    Ok(Verified { payload, compiled })
}
