//! Any text fed to the policy parser, validator, compiler and diagnostic renderer must
//! give a policy or diagnostics, never a panic.
#![no_main]

use enforcer::policy::{compile_sources, source::SourceSet};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = SourceSet::default();
    sources.add("fuzz.toml", text);
    match compile_sources(sources) {
        Ok(compiled) => {
            let _ = compiled.image.digest();
            for warning in &compiled.warnings {
                let _ = warning.render(&compiled.sources);
            }
        }
        Err(rejected) => {
            for diagnostic in &rejected.diagnostics {
                let _ = diagnostic.render(&rejected.sources);
                let _ = diagnostic.to_json(&rejected.sources);
            }
        }
    }
});
