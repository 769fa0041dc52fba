//! Test policies written inline, compiled and applied to a freshly loaded kernel object,
//! and the small api-to-peer policy the agent and audit tests give the real agent.

use enforcer::{
    loader::Loader,
    policy::{compile_sources, image::MapImage, source::SourceSet},
};

use crate::{cgroup::TestCgroup, netns::Veth, require_root};

/// The port [`api_to_peer`] allows.
pub const ALLOWED_PORT: u16 = 5432;
/// The port [`api_to_peer`] denies unless told to open it.
pub const DENIED_PORT: u16 = 5433;

/// A policy for `api` (a cgroup) and the peer end of `veth`: `api` may reach the peer on
/// [`ALLOWED_PORT`] (rule `api-to-peer`), and on [`DENIED_PORT`] only when `open_second`
/// is set (rule `api-to-peer-second`).
pub fn api_to_peer(api: &TestCgroup, veth: &Veth, open_second: bool) -> String {
    let second = if open_second {
        format!(
            "\n[[allow]]\nid = \"api-to-peer-second\"\nfrom = [\"api\"]\nto = [\"peer\"]\nports = [\"{DENIED_PORT}/tcp\"]\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"[segments.api]
cgroups = ["{api}"]

[segments.peer]
cidrs = ["{peer}/32"]

[[allow]]
id = "api-to-peer"
from = ["api"]
to = ["peer"]
ports = ["{ALLOWED_PORT}/tcp"]
{second}"#,
        api = api.relative_path(),
        peer = veth.peer_v4,
    )
}

/// Three service segments by cgroup, of which only `orders` may reach `inventory`, on
/// `port`/tcp; `gateway` may reach neither (the listener-binding tests' policy).
pub fn orders_to_inventory(
    inventory: &TestCgroup,
    gateway: &TestCgroup,
    orders: &TestCgroup,
    port: u16,
) -> String {
    format!(
        r#"
[segments.inventory]
cgroups = ["{}"]

[segments.gateway]
cgroups = ["{}"]

[segments.orders]
cgroups = ["{}"]

[[allow]]
id = "orders-to-inventory"
from = ["orders"]
to = ["inventory"]
ports = ["{port}/tcp"]
"#,
        inventory.relative_path(),
        gateway.relative_path(),
        orders.relative_path()
    )
}

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
        applied.cgroups.missing.is_empty(),
        "cgroups missing: {:?}",
        applied.cgroups.missing
    );
    loader
}
