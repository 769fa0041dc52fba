//! Privileged test harness: real network namespaces, veth pairs, cgroup v2 directories,
//! bpffs pin directories and real client/server processes.
//!
//! Every object is named with [`PREFIX`] (or [`LINK_PREFIX`] for interfaces), the test
//! process id and a counter, and is removed when its guard drops, also while a test
//! panics. The `leftovers` test asserts that nothing with these prefixes survives a run;
//! [`leftovers::sweep`] removes what a killed run left.
//!
//! Nothing here skips: a test that cannot get root, a namespace or a cgroup panics with a
//! message saying what is missing.

pub mod agent;
pub mod bpf_raw;
pub mod cgroup;
pub mod cmd;
pub mod differential;
pub mod events;
pub mod leftovers;
pub mod netns;
pub mod ocsf;
pub mod packet;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod script;
pub mod services;
pub mod syslog;
pub mod trace;

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every netns, cgroup and pin directory the tests create.
pub const PREFIX: &str = "enforcer-test-";

/// The name of the demo enclave's sandbox cgroup, pin directory and files directory, and
/// the prefix of its network namespaces (`enforcer-demo`, see `src/bin/enforcer-demo/`).
pub const DEMO_PREFIX: &str = "enforcer-demo";

/// Prefix of every network interface the tests create (interface names are at most 15
/// bytes, so it is shorter than [`PREFIX`]).
pub const LINK_PREFIX: &str = "enft";

/// Panics unless the test runs as root: the privileged tier needs CAP_SYS_ADMIN,
/// CAP_NET_ADMIN and CAP_BPF, and it must fail, not skip, without them.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged tests need root (euid is {euid}); run them through `./x test`"
    );
}

/// The `target/<profile>/` directory of the running test or benchmark (tests run from
/// its `deps/`), where the package's binaries are.
pub fn profile_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// A number unique within this test process, for naming kernel objects.
pub fn next_serial() -> u32 {
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A name `PREFIX<pid>-<serial>` for a netns, cgroup or pin directory.
pub fn unique_name() -> String {
    format!("{PREFIX}{}-{}", std::process::id(), next_serial())
}
