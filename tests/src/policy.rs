//! Test policies written inline, compiled and applied to a freshly loaded kernel object.

use enforcer::{
    loader::Loader,
    policy::{compile_sources, image::MapImage, source::SourceSet},
};

use crate::require_root;

/// Compiles a policy text; panics with the diagnostics if it is invalid.
pub fn image(text: &str) -> MapImage {
    let mut sources = SourceSet::default();
    sources.add("test-policy.toml", text);
    match compile_sources(sources) {
        Ok(compiled) => compiled.image,
        Err(rejected) => panic!("test policy rejected: {:?}", rejected.diagnostics),
    }
}

/// Loads the kernel object and applies `image` as generation 1 (nothing attached yet).
pub fn loaded_with(image: &MapImage) -> Loader {
    require_root();
    let mut loader = Loader::load().unwrap_or_else(|err| panic!("loading failed: {err}"));
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let applied = loader
        .apply(image, &root)
        .unwrap_or_else(|err| panic!("apply failed: {err}"));
    assert_eq!(applied.generation, 1);
    assert!(
        applied.missing_cgroups.is_empty(),
        "cgroups missing: {:?}",
        applied.missing_cgroups
    );
    loader
}
