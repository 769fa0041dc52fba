//! Run last: nothing the privileged tests made is left on the host.

use std::{fs, path::Path};

use enforcer_tests::{LINK_PREFIX, PREFIX, cmd::run, require_root};

fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nothing_made_by_the_tests_is_left_on_the_host() {
    require_root();
    let netns: Vec<String> = run("ip", &["netns", "list"])
        .lines()
        .filter(|line| line.starts_with(PREFIX))
        .map(str::to_owned)
        .collect();
    let links: Vec<String> = run("ip", &["-brief", "link", "show"])
        .lines()
        .filter(|line| line.starts_with(LINK_PREFIX))
        .map(str::to_owned)
        .collect();
    let cgroup2 = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let cgroups = entries_with_prefix(&cgroup2, PREFIX);
    let pins = entries_with_prefix(Path::new(enforcer::host::DEFAULT_BPFFS), PREFIX);
    assert!(
        netns.is_empty() && links.is_empty() && cgroups.is_empty() && pins.is_empty(),
        "left behind: netns {netns:?}, links {links:?}, cgroups {cgroups:?}, pins {pins:?}"
    );
}
