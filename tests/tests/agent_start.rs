//! The agent's start refusals (docs/agent.md, "Start"): a bad config, a second agent, a
//! missing cgroup or interface, an invalid policy and an audit store that cannot be
//! created each stop `enforcer run` naming what is wrong, and leave the kernel as it was:
//! nothing attached on a fresh host, the earlier generation in force over earlier pins.

use std::{fs, process::ExitStatus};

use enforcer_tests::{
    LINK_PREFIX,
    agent::{AgentHost, PeerSite},
    policy::{ALLOWED_PORT, DENIED_PORT, api_to_peer},
    probe::{Outcome, Spawn},
};

/// A policy whose line 3 has an invalid CIDR.
const INVALID_POLICY: &str = "[segments.api]\ncgroups = [\"x\"]\ncidrs = [\"198.18.0.0/33\"]\n";

/// Asserts that the refused start attached nothing: no hook's link is pinned, no policy
/// is in force (`status` exits 3), and a connect the policy would deny succeeds.
fn assert_nothing_attached(agent: &AgentHost, site: &PeerSite) {
    let (code, status) = agent.status_with_exit_code();
    assert_eq!(
        code,
        Some(3),
        "status says a policy is enforced: {status:#}"
    );
    assert_eq!(
        status["attachments"].as_array().map(Vec::len),
        Some(0),
        "a hook was attached: {status:#}"
    );
    assert_eq!(
        Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
            .cgroup(&site.api)
            .run(),
        Outcome::Ok,
        "the refused agent left a policy enforced"
    );
}

/// Asserts that `enforcer run` exited with `code` and that its log says `what`.
fn assert_refused(refusal: &(ExitStatus, String), code: i32, what: &str) {
    let (status, log) = refusal;
    assert_eq!(status.code(), Some(code), "exit status; the log:\n{log}");
    assert!(log.contains(what), "the log does not say `{what}`:\n{log}");
}

#[test]
fn a_bad_config_is_refused_with_exit_2_before_anything_is_touched() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let agent = site.agent("127.0.0.1:19681", "bogus_setting = 1\n");
    let refusal = agent.refused_start(&agent.config());
    assert_refused(&refusal, 2, "unknown field `bogus_setting`");
    let place = format!("{}:", agent.config().display());
    assert!(
        refusal.1.contains(&place),
        "the log names no file:line:col:\n{}",
        refusal.1
    );
    for (what, dir) in [
        ("pin", agent.pin_dir().to_owned()),
        ("state", agent.state_dir()),
        ("audit", agent.audit_dir()),
    ] {
        assert!(
            !dir.exists(),
            "the refused agent made its {what} directory {}",
            dir.display()
        );
    }
}

#[test]
fn a_second_agent_is_refused_while_the_first_runs() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let mut agent = site.agent("127.0.0.1:19682", "");
    agent.start();
    // The same directories, another metrics address: the lock is what refuses it.
    let config = fs::read_to_string(agent.config()).expect("read the config");
    let second = agent.config().with_file_name("second.toml");
    fs::write(
        &second,
        config.replace("127.0.0.1:19682", "127.0.0.1:19683"),
    )
    .expect("write the second config");
    let refusal = agent.refused_start(&second);
    assert_refused(&refusal, 1, "another agent is running");
    assert!(agent.is_running(), "the first agent stopped");
    assert_eq!(
        agent.status()["agent_pid"].as_u64(),
        Some(u64::from(agent.pid())),
        "status names another agent"
    );
    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(denied.is_eperm(), "the first agent's policy: {denied:?}");
}

#[test]
fn a_missing_cgroup_is_named_by_its_field_and_nothing_is_attached() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let gone = site.parent.child("gone.slice");
    let agent = AgentHost::new(
        &gone,
        &api_to_peer(&site.api, &site.veth, false),
        "127.0.0.1:19684",
        "",
    );
    drop(gone);
    let refusal = agent.refused_start(&agent.config());
    assert_refused(&refusal, 1, "cgroup: no cgroup");
    assert_nothing_attached(&agent, &site);
}

#[test]
fn a_missing_interface_is_named_by_its_field_and_nothing_is_attached() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let missing = format!("{LINK_PREFIX}{}-none", std::process::id());
    let agent = site.agent(
        "127.0.0.1:19685",
        &format!(
            "\n[[interfaces]]\nname = \"{}\"\nxdp_mode = \"skb\"\n\n[[interfaces]]\nname = \"{missing}\"\n",
            site.veth.host_if()
        ),
    );
    let refusal = agent.refused_start(&agent.config());
    assert_refused(
        &refusal,
        1,
        &format!("interfaces[1].name: no interface `{missing}`"),
    );
    assert_nothing_attached(&agent, &site);
}

#[test]
fn an_invalid_policy_on_a_fresh_host_is_refused_and_nothing_is_attached() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let agent = site.agent("127.0.0.1:19686", "");
    agent.write_policy(INVALID_POLICY);
    let refusal = agent.refused_start(&agent.config());
    assert_refused(&refusal, 1, "nothing was attached");
    let place = format!("{}:3:", agent.policy_file().display());
    assert!(
        refusal.1.contains(&place),
        "the log names no file:line:col:\n{}",
        refusal.1
    );
    assert_nothing_attached(&agent, &site);
}

#[test]
fn an_invalid_policy_over_earlier_pins_keeps_their_generation_and_is_the_last_reload() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let mut agent = site.agent("127.0.0.1:19687", "");
    agent.start();
    let generation = agent.status()["generation"].as_u64().expect("generation");
    assert!(agent.terminate(), "the agent did not stop cleanly");

    agent.write_policy(INVALID_POLICY);
    agent.start();
    let status = agent.status();
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "the earlier generation is not in force: {status:#}"
    );
    let reload = &status["last_reload"];
    assert_eq!(
        (&reload["outcome"], &reload["trigger"]),
        (&"failed".into(), &"start".into()),
        "{status:#}"
    );
    let place = format!("{}:3:", agent.policy_file().display());
    assert!(
        reload["message"]
            .as_str()
            .is_some_and(|message| message.contains(&place)),
        "the last reload names no file:line:col: {status:#}"
    );
    assert_eq!(
        Spawn::tcp_client(site.veth.peer_addr(ALLOWED_PORT))
            .cgroup(&site.api)
            .run(),
        Outcome::Ok,
        "the earlier generation's allow is gone"
    );
    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(
        denied.is_eperm(),
        "the earlier generation's deny is gone: {denied:?}"
    );
}

#[test]
fn an_audit_dir_that_cannot_be_created_stops_the_start_naming_the_field() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let agent = site.agent("127.0.0.1:19688", "");
    // A file where the store's directory should be.
    fs::write(agent.audit_dir(), "not a directory").expect("write the file");
    let refusal = agent.refused_start(&agent.config());
    assert_refused(&refusal, 1, "audit.dir");
    assert!(
        agent.audit_dir().is_file(),
        "the file in the store's place is gone"
    );
    assert_nothing_attached(&agent, &site);
}

#[test]
fn an_invalid_policy_over_maps_a_failed_start_left_is_refused_as_on_a_fresh_host() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let agent = site.agent("127.0.0.1:19689", "");
    // A start that stops after pinning the maps, before any policy is applied.
    fs::write(agent.audit_dir(), "not a directory").expect("write the file");
    assert_refused(&agent.refused_start(&agent.config()), 1, "audit.dir");
    fs::remove_file(agent.audit_dir()).expect("remove the file");

    agent.write_policy(INVALID_POLICY);
    let refusal = agent.refused_start(&agent.config());
    assert_refused(&refusal, 1, "nothing was attached");
    assert_nothing_attached(&agent, &site);
}
