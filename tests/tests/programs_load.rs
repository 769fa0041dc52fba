//! Every program in the kernel object passes the verifier on this kernel.

use aya::programs::loaded_programs;
use enforcer::loader::Loader;
use enforcer_common::{event::Hook, maps};
use enforcer_tests::require_root;

#[test]
fn every_program_loads_and_passes_the_verifier() {
    require_root();
    let loader = Loader::load().unwrap_or_else(|err| panic!("loading failed: {err}"));
    let programs = loader.programs().expect("program info");
    let hooks: Vec<Hook> = programs.iter().map(|p| p.hook).collect();
    assert_eq!(hooks, Hook::ALL, "one loaded program per hook");

    // The kernel lists each of them as loaded, under its own id.
    let kernel_ids: Vec<u32> = loaded_programs()
        .map(|info| info.expect("program info").id())
        .collect();
    for program in &programs {
        assert!(
            kernel_ids.contains(&program.id),
            "{} (id {}) is not among the kernel's loaded programs",
            program.hook.program_name(),
            program.id
        );
        assert!(
            program.verified_instructions.is_some_and(|n| n > 0),
            "{}: the verifier reports no walked instructions",
            program.hook.program_name()
        );
    }
    assert!(loader.map_names().iter().any(|name| name == maps::EVENTS));
}

#[test]
fn dropping_the_loader_unloads_every_program() {
    require_root();
    let loader = Loader::load().expect("load");
    let ids: Vec<u32> = loader
        .programs()
        .expect("info")
        .iter()
        .map(|p| p.id)
        .collect();
    drop(loader);
    let still_loaded: Vec<u32> = loaded_programs()
        .map(|info| info.expect("program info").id())
        .filter(|id| ids.contains(id))
        .collect();
    assert!(
        still_loaded.is_empty(),
        "programs {still_loaded:?} outlived their loader"
    );
}
