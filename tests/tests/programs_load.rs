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

#[test]
fn preflight_states_the_kernel_floor_and_finds_this_host_fit() {
    require_root();
    let output = std::process::Command::new(enforcer_tests::agent::enforcer_bin())
        .args(["preflight", "--json"])
        .output()
        .expect("run enforcer preflight");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON; stderr: {}", String::from_utf8_lossy(&output.stderr)));
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["fit"], true, "{report:#}");
    assert_eq!(report["kernel_floor"], "5.19");
    let names: Vec<&str> = report["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    let every: Vec<&str> = Hook::ALL.iter().map(|h| h.program_name()).collect();
    assert_eq!(names, every);
    let features = report["features"].as_array().expect("features");
    // The features issue #20 names, each on its own line.
    for wanted in ["BTF", "cgroup v2", "ring buffer", "BPF LSM", "lsm_cgroup"] {
        assert!(
            features
                .iter()
                .any(|f| f["name"].as_str().is_some_and(|n| n.contains(wanted))),
            "preflight states nothing about {wanted}: {report:#}"
        );
    }
    for feature in features {
        // Each is stated with what its absence costs; the required ones are here.
        assert!(feature["without"].as_str().is_some_and(|w| !w.is_empty()));
        if feature["required"] == true {
            assert_eq!(feature["present"], true, "{feature}");
        }
    }
}
