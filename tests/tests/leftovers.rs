//! Run last: nothing the privileged tests (and the demo they run) made is left on the
//! host.

use std::{fs, path::Path};

use enforcer_tests::{DEMO_PREFIX, LINK_PREFIX, PREFIX, cmd::run, require_root};

/// Whether `name` is one the tests or the demo give their objects.
fn ours(name: &str) -> bool {
    name.starts_with(PREFIX) || name.starts_with(DEMO_PREFIX)
}

fn our_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| ours(name))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nothing_made_by_the_tests_is_left_on_the_host() {
    require_root();
    let netns: Vec<String> = run("ip", &["netns", "list"])
        .lines()
        .filter(|line| ours(line))
        .map(str::to_owned)
        .collect();
    let links: Vec<String> = run("ip", &["-brief", "link", "show"])
        .lines()
        .filter(|line| line.starts_with(LINK_PREFIX))
        .map(str::to_owned)
        .collect();
    let cgroup2 = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let cgroups = our_entries(&cgroup2);
    let pins = our_entries(Path::new(enforcer::host::DEFAULT_BPFFS));
    let files = our_entries(&std::env::temp_dir());
    assert!(
        netns.is_empty()
            && links.is_empty()
            && cgroups.is_empty()
            && pins.is_empty()
            && files.is_empty(),
        "left behind: netns {netns:?}, links {links:?}, cgroups {cgroups:?}, pins {pins:?}, \
         files {files:?}"
    );
}
