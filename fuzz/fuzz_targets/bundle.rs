//! Any bytes offered as a signed policy bundle are refused or accepted, never a panic; and
//! any policy text that compiles signs into a bundle that verifies to the same image and
//! is refused as a rollback below its version.
#![no_main]

use ed25519_dalek::SigningKey;
use enforcer::policy::{
    bundle::{self, BundleError},
    compile_sources,
    source::SourceSet,
};

/// A fixed key, so the seed bundles in the corpus carry valid signatures.
const SEED: [u8; 32] = [7; 32];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&SEED);
    let trusted = key.verifying_key();
    if let Ok(verified) = bundle::verify(data, &trusted, 0) {
        assert_eq!(
            verified.compiled.image.digest_hex(),
            verified.payload.image_sha256,
            "an accepted bundle compiles to its signed image"
        );
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = SourceSet::default();
    sources.add("fuzz.toml", text);
    let Ok(compiled) = compile_sources(sources) else {
        return;
    };
    let version = u64::from(data.first().copied().unwrap_or(0)) + 1;
    let signed = bundle::sign(&compiled, version, &key);
    let verified = bundle::verify(&signed, &trusted, version).expect("a fresh bundle verifies");
    assert_eq!(verified.compiled.image.digest(), compiled.image.digest());
    assert!(matches!(
        bundle::verify(&signed, &trusted, version + 1),
        Err(BundleError::Rollback { .. })
    ));
});
