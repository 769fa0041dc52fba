//! The agent as infrastructure teams run it: the real `enforcer run` binary on a real
//! cgroup and veth, killed, restarted (also with another cgroup, interface list or map
//! layout), fed bad policies, scraped, asked for its status and uninstalled.

use std::{
    collections::BTreeSet,
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

use aya::{maps::loaded_maps, programs::loaded_links, programs::loaded_programs};
use enforcer::loader::CGROUP_HOOKS;
use enforcer_tests::{
    agent::PeerSite,
    netns::Veth,
    policy::{ALLOWED_PORT, DENIED_PORT, api_to_peer},
    probe::{Outcome, Spawn},
};

/// XDP on the site's veth in the default mode, `auto`: generic (SKB) mode on a veth.
fn xdp_config(veth: &Veth) -> String {
    format!(
        "\n[[interfaces]]\nname = \"{}\"\nxdp_mode = \"auto\"\n",
        veth.host_if()
    )
}

/// `(pin, link id, program id)` of every attachment `status --json` lists.
fn attachments(status: &serde_json::Value) -> Vec<(String, u64, u64)> {
    status["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| {
            (
                a["pin"].as_str().expect("pin").to_owned(),
                a["link_id"].as_u64().expect("link id"),
                a["program_id"].as_u64().expect("program id"),
            )
        })
        .collect()
}

/// Whether `err` says the object it was about has gone (ENOENT): it was freed between
/// the kernel listing its id and the lookup of that id.
fn gone(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::ENOENT);
        }
        cause = err.source();
    }
    false
}

/// Every object of one kind the kernel lists; panics if it cannot list them, so a failed
/// enumeration never passes for "nothing left". Objects that go while they are listed
/// (other tests run on this host) are skipped.
fn listed<T, E: std::error::Error + 'static>(
    objects: impl Iterator<Item = Result<T, E>>,
    what: &str,
) -> Vec<T> {
    objects
        .filter_map(|object| match object {
            Ok(object) => Some(object),
            Err(err) if gone(&err) => None,
            Err(err) => panic!("cannot list the kernel's {what}: {err}"),
        })
        .collect()
}

/// The ids of every BPF link, program and map the kernel has now.
fn kernel_objects() -> [BTreeSet<u64>; 3] {
    [
        listed(loaded_links(), "links")
            .iter()
            .map(|link| u64::from(link.id()))
            .collect(),
        listed(loaded_programs(), "programs")
            .iter()
            .map(|program| u64::from(program.id()))
            .collect(),
        listed(loaded_maps(), "maps")
            .iter()
            .map(|map| u64::from(map.id()))
            .collect(),
    ]
}

/// How many kernel links run one of `programs`.
fn links_running(programs: &BTreeSet<u64>) -> usize {
    listed(loaded_links(), "links")
        .iter()
        .filter(|link| programs.contains(&u64::from(link.program_id())))
        .count()
}

#[test]
fn sigkill_leaves_enforcement_and_the_restarted_agent_adopts_the_pins() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19611", &xdp_config(veth));
    agent.start();
    let before = attachments(&agent.status());
    assert_eq!(
        before.len(),
        CGROUP_HOOKS.len() + 1,
        "every cgroup hook and XDP: {before:?}"
    );
    // `auto` on a veth is generic mode, not the driver's.
    let details = veth.host_link_details();
    assert!(
        details.contains("xdpgeneric"),
        "auto did not choose generic XDP on a veth: {details}"
    );

    // Clients keep trying, a few milliseconds apart, across the kill and the restart.
    let allowed = Spawn::tcp_client_paced(veth.peer_addr(ALLOWED_PORT), 1500)
        .cgroup(api)
        .run_in_background();
    let denied = Spawn::tcp_denied_paced(veth.peer_addr(DENIED_PORT), 1500)
        .cgroup(api)
        .run_in_background();
    std::thread::sleep(Duration::from_millis(400));
    agent.kill();
    let down = agent.status();
    assert_eq!(down["agent_running"], false, "{down:#}");
    assert_eq!(
        attachments(&down),
        before,
        "the pins keep every link while the agent is down"
    );
    std::thread::sleep(Duration::from_millis(400));
    let second = agent.start();
    assert!(
        agent
            .log(second)
            .contains("adopting the pinned maps and links"),
        "the restarted agent did not adopt:\n{}",
        agent.log(second)
    );

    assert_eq!(allowed.outcome(), Outcome::Ok, "an allowed attempt failed");
    assert_eq!(
        denied.outcome(),
        Outcome::Ok,
        "a denied attempt did not fail with EPERM"
    );

    // The same links, now running the new agent's programs: one attachment per hook.
    let after = attachments(&agent.status());
    let links = |list: &[(String, u64, u64)]| -> Vec<(String, u64)> {
        list.iter()
            .map(|(pin, link, _)| (pin.clone(), *link))
            .collect()
    };
    assert_eq!(
        links(&after),
        links(&before),
        "links were replaced, not adopted"
    );
    let old: BTreeSet<u64> = before.iter().map(|(.., program)| *program).collect();
    let new: BTreeSet<u64> = after.iter().map(|(.., program)| *program).collect();
    assert!(
        old.is_disjoint(&new),
        "the links still run the killed agent's programs"
    );
    assert_eq!(
        links_running(&new),
        CGROUP_HOOKS.len() + 1,
        "one kernel link per hook runs the new programs"
    );
    assert_eq!(links_running(&old), 0, "a link still runs an old program");
}

#[test]
fn an_invalid_policy_is_refused_and_the_active_one_stays_in_force() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19612", "");
    let first = agent.start();
    let generation = agent.status()["generation"].as_u64().expect("generation");

    // A typo on line 3 of the file the admin edits.
    agent.write_policy("[segments.api]\ncgroups = [\"x\"]\ncidrs = [\"198.18.0.0/33\"]\n");
    let status = agent.wait_for_status("the failed reload", |s| {
        s["last_reload"]["outcome"] == "failed"
    });
    let file = agent.policy_file();
    let place = format!("{}:3:", file.display());
    let message = status["last_reload"]["message"].as_str().expect("message");
    assert!(
        message.contains(&place),
        "status names no file:line: {message}"
    );
    assert!(
        agent.log(first).contains(&place),
        "the agent's log names no file:line:\n{}",
        agent.log(first)
    );
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "the generation changed"
    );
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(ALLOWED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok,
        "the old policy's allow is gone"
    );
    let outcome = Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
        .cgroup(api)
        .run();
    assert!(
        outcome.is_eperm(),
        "the old policy's deny is gone: {outcome:?}"
    );

    // A valid edit is applied as the next generation, through SIGHUP as well.
    agent.write_policy(&api_to_peer(api, veth, true));
    agent.wait_for_status("the next generation", |s| {
        s["generation"].as_u64() == Some(generation + 1) && s["last_reload"]["outcome"] == "applied"
    });
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok,
        "the new allow is not in force"
    );
    agent.hangup();
    agent.wait_for_status("the SIGHUP reload", |s| {
        s["generation"].as_u64() == Some(generation + 2) && s["last_reload"]["trigger"] == "sighup"
    });
}

fn ids_of_pinned_maps(dir: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(dir)
        .expect("maps pin directory")
        .map(|entry| {
            u64::from(
                aya::maps::MapInfo::from_pin(entry.expect("entry").path())
                    .expect("map info")
                    .id(),
            )
        })
        .collect()
}

#[test]
fn sigterm_keeps_enforcement_and_uninstall_leaves_nothing_of_ours_in_the_kernel() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19613", &xdp_config(veth));
    agent.start();
    let status = agent.status();
    let links: BTreeSet<u64> = attachments(&status).iter().map(|(_, l, _)| *l).collect();
    let programs: BTreeSet<u64> = attachments(&status).iter().map(|(.., p)| *p).collect();
    let maps = ids_of_pinned_maps(&agent.pin_dir().join("maps"));
    assert!(maps.len() > 20, "only {} maps pinned", maps.len());

    assert!(
        agent.terminate(),
        "the agent did not exit cleanly on SIGTERM"
    );
    let outcome = Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
        .cgroup(api)
        .run();
    assert!(
        outcome.is_eperm(),
        "enforcement ended with the agent: {outcome:?}"
    );

    // What the kernel lists holds every object of ours now, so an empty answer after the
    // uninstall means they went, not that the listing failed.
    let ours = [&links, &programs, &maps];
    for (kind, (listed, ours)) in ["links", "programs", "maps"]
        .iter()
        .zip(kernel_objects().iter().zip(ours))
    {
        assert!(
            ours.is_subset(listed),
            "the kernel does not list the agent's {kind} {:?}",
            ours.difference(listed).collect::<Vec<_>>()
        );
    }

    let output = agent.command(&["uninstall"]);
    assert!(
        output.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!agent.pin_dir().exists(), "the pin directory is left");
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok,
        "enforcement outlived uninstall"
    );
    // The kernel frees objects shortly after their last reference goes.
    let started = Instant::now();
    loop {
        let [all_links, all_programs, all_maps] = kernel_objects();
        let left_links: Vec<&u64> = all_links.intersection(&links).collect();
        let left_programs: Vec<&u64> = all_programs.intersection(&programs).collect();
        let left_maps: Vec<&u64> = all_maps.intersection(&maps).collect();
        if left_links.is_empty() && left_programs.is_empty() && left_maps.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "left in the kernel after uninstall: links {left_links:?}, programs {left_programs:?}, maps {left_maps:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fetches `url` with a real HTTP client; returns the status code and body.
fn fetch(url: &str) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|err| panic!("GET {url}: body: {err}"));
    (status, body)
}

/// Parses exposition text, insisting that every line is a comment or a sample.
fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let samples = lines
        .iter()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).expect("parse");
    assert_eq!(
        scrape.samples.len(),
        samples,
        "some lines are not Prometheus samples:\n{text}"
    );
    scrape
}

/// The value of the sample of `metric` with `labels`, if the scrape has one.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && labels
                    .iter()
                    .all(|(label, value)| s.labels.get(label) == Some(value))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("not a counter or gauge: {other:?}"),
        })
}

fn rule_allows(scrape: &prometheus_parse::Scrape, rule: &str) -> f64 {
    sample(
        scrape,
        "enforcer_rule_decisions_total",
        &[("rule", rule), ("verdict", "allow")],
    )
    .unwrap_or_else(|| panic!("no allow counter for rule {rule}"))
}

#[test]
fn metrics_parse_as_prometheus_text_and_the_counters_move() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19614", "");
    agent.start();

    let (code, body) = fetch("http://127.0.0.1:19614/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, text) = fetch("http://127.0.0.1:19614/metrics");
    assert_eq!(code, 200, "{text}");
    let before = rule_allows(&parse_metrics(&text), "api-to-peer");
    for _ in 0..3 {
        assert_eq!(
            Spawn::tcp_client(veth.peer_addr(ALLOWED_PORT))
                .cgroup(api)
                .run(),
            Outcome::Ok
        );
    }
    let (_, text) = fetch("http://127.0.0.1:19614/metrics");
    let scrape = parse_metrics(&text);
    assert_eq!(rule_allows(&scrape, "api-to-peer") - before, 3.0, "{text}");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "enforcer_policy_generation"),
        "no generation gauge:\n{text}"
    );
    // An allow rule has an allow series only.
    let verdicts: Vec<&str> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "enforcer_rule_decisions_total"
                && s.labels.get("rule") == Some("api-to-peer")
        })
        .filter_map(|s| s.labels.get("verdict"))
        .collect();
    assert_eq!(verdicts, ["allow"], "{text}");
    let build = scrape
        .samples
        .iter()
        .find(|s| s.metric == "enforcer_build_info")
        .unwrap_or_else(|| panic!("no build info:\n{text}"));
    assert_eq!(build.labels.get("version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        build
            .labels
            .get("ebpf_sha256")
            .is_some_and(|h| h.len() == 64)
    );

    // A reload that keeps the rule (and adds one): its count runs on; the new rule
    // starts at zero.
    let counted = rule_allows(&scrape, "api-to-peer");
    agent.write_policy(&api_to_peer(api, veth, true));
    agent.wait_for_status("the next generation", |s| s["policy"]["generation"] == 2);
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(ALLOWED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok
    );
    let (_, text) = fetch("http://127.0.0.1:19614/metrics");
    let scrape = parse_metrics(&text);
    assert_eq!(rule_allows(&scrape, "api-to-peer"), counted + 1.0, "{text}");
    assert_eq!(rule_allows(&scrape, "api-to-peer-second"), 0.0, "{text}");
}

/// Datagrams on a `NOTIFY_SOCKET` the test owns, as systemd would receive them.
struct NotifySocket {
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

/// What the test itself puts in the socket's queue.
const FILLER: &[u8] = b"FILLER";

impl NotifySocket {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("{}.notify", enforcer_tests::unique_name()));
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self { path, socket }
    }

    /// Fills the socket's receive queue, so the next sender blocks in `send()` until the
    /// test reads.
    fn fill(&self) -> usize {
        let sender = UnixDatagram::unbound().expect("a sender");
        sender.set_nonblocking(true).expect("nonblocking");
        let mut sent = 0;
        while sender.send_to(FILLER, &self.path).is_ok() {
            sent += 1;
            assert!(sent < 100_000, "the notify socket's queue never fills");
        }
        sent
    }

    /// The next message that is not filler, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buffer = [0u8; 4096];
        loop {
            let length = self.socket.recv(&mut buffer).ok()?;
            if &buffer[..length] != FILLER {
                return Some(String::from_utf8_lossy(&buffer[..length]).into_owned());
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn systemd_hears_ready_only_once_the_kernel_enforces_then_keep_alives_and_stopping() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let mut agent = site.agent("127.0.0.1:19632", "");
    let notify = NotifySocket::new();
    // With the queue full, the agent's READY=1 waits in send(): whatever the kernel
    // enforces now, it enforced when the agent said it was ready.
    assert!(notify.fill() > 0);
    agent.start_with(&[
        ("NOTIFY_SOCKET", notify.path.as_os_str()),
        ("WATCHDOG_USEC", std::ffi::OsStr::new("2000000")),
    ]);
    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(denied.is_eperm(), "not enforcing at READY=1: {denied:?}");
    assert_eq!(
        Spawn::tcp_client(site.veth.peer_addr(ALLOWED_PORT))
            .cgroup(&site.api)
            .run(),
        Outcome::Ok,
        "the policy's allow is not in force at READY=1"
    );
    let ready = notify.next(Duration::from_secs(10)).expect("READY=1");
    assert!(
        ready.lines().any(|l| l == "READY=1")
            && ready.lines().any(|l| l == "STATUS=enforcing generation 1"),
        "{ready:?}"
    );
    // Keep-alives every half of WatchdogSec (2 s here).
    let started = Instant::now();
    let keep_alive = notify.next(Duration::from_secs(5)).expect("a keep-alive");
    assert_eq!(keep_alive.trim(), "WATCHDOG=1");
    let second = notify
        .next(Duration::from_secs(5))
        .expect("another keep-alive");
    assert_eq!(second.trim(), "WATCHDOG=1");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "keep-alives paced by the watchdog"
    );
    assert!(agent.terminate(), "the agent stops cleanly");
    let mut said = Vec::new();
    while let Some(message) = notify.next(Duration::from_millis(500)) {
        said.push(message);
    }
    assert!(
        said.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{said:?}"
    );
}

/// The entry of the status list `list` (`maps`, `rules`, `interfaces`) whose `key` is
/// `name`.
fn entry<'a>(
    status: &'a serde_json::Value,
    list: &str,
    key: &str,
    name: &str,
) -> &'a serde_json::Value {
    status[list]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e[key] == name))
        .unwrap_or_else(|| panic!("status lists no {list} entry {name}: {status:#}"))
}

#[test]
fn status_exits_0_only_while_a_policy_is_enforced_and_shows_map_fill_and_rule_counts() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19771", "");
    let (code, status) = agent.status_with_exit_code();
    assert_eq!(code, Some(3), "before any start: {status:#}");
    assert_eq!(status["installed"], false, "{status:#}");

    agent.start();
    for _ in 0..2 {
        assert_eq!(
            Spawn::tcp_client(veth.peer_addr(ALLOWED_PORT))
                .cgroup(api)
                .run(),
            Outcome::Ok
        );
    }
    let (code, status) = agent.status_with_exit_code();
    assert_eq!(code, Some(0), "while enforcing: {status:#}");
    let rule = entry(&status, "rules", "name", "api-to-peer");
    assert_eq!(
        (&rule["allow"], &rule["deny"], &rule["audit"]),
        (&2.into(), &0.into(), &0.into()),
        "{status:#}"
    );
    // The policy's one peer address and one cgroup, against the maps' limits.
    for (map, entries) in [("cidrs_v4", 1), ("cidrs_v6", 0)] {
        let fill = entry(&status, "maps", "map", map);
        assert_eq!(fill["entries"], entries, "{status:#}");
        assert!(fill["limit"].as_u64() > Some(0), "{status:#}");
    }
    assert!(
        entry(&status, "maps", "map", "cgroups")["entries"].as_u64() >= Some(1),
        "{status:#}"
    );
    let text = agent.command(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for shown in [
        "maps:",
        "cidrs_v4",
        "rules (active generation):",
        "api-to-peer",
    ] {
        assert!(
            text.contains(shown),
            "status does not show {shown}:\n{text}"
        );
    }

    // Down, the pins enforce: still 0. Uninstalled: 3.
    assert!(agent.terminate(), "the agent did not stop cleanly");
    assert_eq!(agent.status_with_exit_code().0, Some(0), "agent down");
    let output = agent.command(&["uninstall"]);
    assert!(output.status.success(), "uninstall failed");
    let (code, status) = agent.status_with_exit_code();
    assert_eq!(code, Some(3), "after uninstall: {status:#}");
    assert_eq!(agent.command(&["status"]).status.code(), Some(3));
}

#[test]
fn uninstall_refuses_while_the_agent_runs_and_keeps_what_it_did_not_make() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19772", "");
    agent.start();
    let refused = agent.command(&["uninstall"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "uninstall ran beside the agent"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("the agent is running"), "{said}");
    assert!(agent.pin_dir().join("maps").is_dir(), "pins removed");
    let denied = Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
        .cgroup(api)
        .run();
    assert!(denied.is_eperm(), "enforcement gone: {denied:?}");

    // What an operator put beside the agent's pins.
    let theirs = [
        agent.pin_dir().join("operator-notes"),
        agent.pin_dir().join("links").join("operator-links"),
    ];
    for dir in &theirs {
        std::fs::create_dir(dir).expect("mkdir on bpffs");
    }
    assert!(agent.terminate(), "the agent did not stop cleanly");
    let output = agent.command(&["uninstall"]);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "uninstall failed: {said}");
    for dir in &theirs {
        assert!(dir.is_dir(), "uninstall removed {}", dir.display());
        assert!(
            said.contains(&format!("kept {}", dir.display())),
            "uninstall does not list {}:\n{said}",
            dir.display()
        );
    }
    for ours in ["maps", "programs"] {
        assert!(!agent.pin_dir().join(ours).exists(), "{ours} left:\n{said}");
    }
    let store: Vec<_> = std::fs::read_dir(agent.audit_dir())
        .expect("the audit store is kept")
        .collect();
    assert!(!store.is_empty(), "the audit store was emptied");
    assert!(
        said.contains(&format!(
            "the audit store in {} is kept",
            agent.audit_dir().display()
        )),
        "{said}"
    );
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok,
        "enforcement outlived uninstall"
    );
}

/// An interface of this host's namespace, deleted on drop.
struct HostLink(String);

impl HostLink {
    /// A new interface named `enft<pid>-<serial><suffix>`, made by `ip ARGS` with the name
    /// in place of `NAME`.
    fn new(suffix: &str, args: &[&str]) -> Self {
        let name = format!(
            "{}{}-{}{suffix}",
            enforcer_tests::LINK_PREFIX,
            std::process::id(),
            enforcer_tests::next_serial()
        );
        let args: Vec<&str> = args
            .iter()
            .map(|arg| if *arg == "NAME" { name.as_str() } else { arg })
            .collect();
        enforcer_tests::cmd::run("ip", &args);
        Self(name)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        enforcer_tests::cmd::run_quietly("ip", &["link", "del", &self.0]);
    }
}

/// How many times `log` says attaching XDP to `interface` failed.
fn failed_attaches(log: &str, interface: &str) -> usize {
    log.lines()
        .filter(|line| {
            line.contains("cannot attach XDP ingress")
                && line.contains(&format!("interface={interface} "))
        })
        .count()
}

#[test]
fn a_failed_attach_shows_in_status_metrics_and_healthz_and_is_retried() {
    let site = PeerSite::new(&[DENIED_PORT]);
    // A bridge has no native XDP; a TUN device carries no Ethernet frames.
    let bridge = HostLink::new("b", &["link", "add", "NAME", "type", "bridge"]);
    let tun = HostLink::new("t", &["tuntap", "add", "dev", "NAME", "mode", "tun"]);
    let extra = format!(
        "{}\n[[interfaces]]\nname = \"{}\"\nxdp_mode = \"native\"\n\n[[interfaces]]\nname = \"{}\"\n",
        xdp_config(&site.veth),
        bridge.0,
        tun.0
    );
    let mut agent = site.agent("127.0.0.1:19773", &extra);
    let start = agent.start();

    let status = agent.status();
    let shown = entry(&status, "interfaces", "name", &bridge.0);
    assert_eq!(
        (&shown["xdp"], &shown["mode"]),
        (&"failed".into(), &"native".into()),
        "{status:#}"
    );
    assert!(
        shown["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no reason: {status:#}"
    );
    let shown = entry(&status, "interfaces", "name", &tun.0);
    assert_eq!(shown["xdp"], "failed", "{status:#}");
    assert!(
        shown["error"]
            .as_str()
            .is_some_and(|e| e.contains("not an Ethernet interface")),
        "{status:#}"
    );
    assert_eq!(
        entry(&status, "interfaces", "name", site.veth.host_if())["xdp"],
        "attached",
        "{status:#}"
    );
    assert_eq!(failed_attaches(&agent.log(start), &bridge.0), 1);

    let (_, text) = fetch("http://127.0.0.1:19773/metrics");
    let scrape = parse_metrics(&text);
    let xdp = |interface: &str, mode: &str| {
        sample(
            &scrape,
            "enforcer_interface_xdp",
            &[("interface", interface), ("mode", mode)],
        )
    };
    assert_eq!(xdp(&bridge.0, "native"), Some(0.0), "{text}");
    assert_eq!(xdp(site.veth.host_if(), "auto"), Some(1.0), "{text}");
    let (code, body) = fetch("http://127.0.0.1:19773/healthz");
    assert_eq!(code, 503, "{body}");
    for missing in [&bridge.0, &tun.0] {
        assert!(body.contains(&format!("xdp on {missing}")), "{body}");
    }
    assert!(!body.contains(site.veth.host_if()), "{body}");

    // The next interface change tries the bridge again.
    let _another = HostLink::new("n", &["tuntap", "add", "dev", "NAME", "mode", "tun"]);
    let started = Instant::now();
    while failed_attaches(&agent.log(start), &bridge.0) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failed attach was not tried again:\n{}",
            agent.log(start)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(denied.is_eperm(), "the cgroup hooks: {denied:?}");

    // A cgroup hook's link unpinned behind the agent's back is missing too.
    std::fs::remove_file(agent.pin_dir().join("links").join("connect4")).expect("unpin");
    let (code, body) = fetch("http://127.0.0.1:19773/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connect4"), "{body}");
}

/// The agent's count of reloads with `outcome`, from its `/metrics` at `metrics`.
fn reloads(metrics: &str, outcome: &str) -> f64 {
    let (_, text) = fetch(&format!("http://{metrics}/metrics"));
    sample(
        &parse_metrics(&text),
        "enforcer_reloads_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_write_that_changes_nothing_applies_nothing_and_failed_reloads_are_counted() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let mut agent = site.agent("127.0.0.1:19774", "");
    agent.start();
    let generation = agent.status()["generation"].as_u64().expect("generation");
    let reloads = |outcome: &str| reloads("127.0.0.1:19774", outcome);
    assert_eq!(reloads("failed"), 0.0);

    // The same bytes written again.
    agent.write_policy(&api_to_peer(&site.api, &site.veth, false));
    let status = agent.wait_for_status("the unchanged reload", |s| {
        s["last_reload"]["outcome"] == "unchanged"
    });
    assert_eq!(
        status["last_reload"]["trigger"], "file-change",
        "{status:#}"
    );
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "{status:#}"
    );
    assert_eq!(reloads("unchanged"), 1.0);

    for (count, cidr) in [(1.0, "198.18.0.0/33"), (2.0, "198.18.0.0/34")] {
        agent.write_policy(&format!(
            "[segments.api]\ncgroups = [\"x\"]\ncidrs = [\"{cidr}\"]\n"
        ));
        agent.wait_for_status("the failed reload", |s| {
            s["last_reload"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(cidr))
        });
        assert_eq!(reloads("failed"), count);
    }
    assert_eq!(
        agent.status()["generation"].as_u64(),
        Some(generation),
        "a refused policy changed the generation"
    );
}

/// An editor that writes a policy in pieces, the file open in between, has its policy
/// applied once it is whole: the half-written file is never compiled (which would
/// refuse it, or worse, apply half a policy).
#[test]
fn a_policy_written_in_pieces_is_applied_once_whole_and_never_half() {
    use std::io::Write as _;

    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let mut agent = site.agent("127.0.0.1:19775", "");
    agent.start();
    let generation = agent.status()["generation"].as_u64().expect("generation");
    let reloads = |outcome: &str| reloads("127.0.0.1:19775", outcome);
    let applied_before = reloads("applied");

    let whole = api_to_peer(&site.api, &site.veth, true);
    let pieces = whole.as_bytes().chunks(whole.len().div_ceil(3));
    let mut file = std::fs::File::create(agent.policy_file()).expect("truncate the policy");
    for piece in pieces {
        file.write_all(piece).expect("write a piece");
        file.flush().expect("flush");
        // Each piece lands while the agent waits for the file to be quiet.
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(file);

    let status = agent.wait_for_status("the whole policy applied", |s| {
        s["generation"].as_u64() > Some(generation)
    });
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation + 1),
        "one reload for one write: {status:#}"
    );
    assert_eq!(reloads("failed"), 0.0, "a half-written policy was compiled");
    assert_eq!(reloads("applied"), applied_before + 1.0);
    assert_eq!(
        Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
            .cgroup(&site.api)
            .run(),
        Outcome::Ok,
        "the second rule of the whole policy is not in force"
    );
}

#[test]
fn a_restart_moves_the_hooks_to_a_new_cgroup_and_removes_xdp_of_an_unlisted_interface() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let xdp = xdp_config(veth);
    let mut agent = site.agent("127.0.0.1:19775", &xdp);
    agent.start();
    let before = attachments(&agent.status());
    assert!(before.iter().any(|(pin, ..)| pin.starts_with("xdp@")));
    assert!(agent.terminate(), "the agent did not stop cleanly");

    // The config now names another cgroup and no interface.
    let elsewhere = enforcer_tests::cgroup::TestCgroup::new();
    let config = std::fs::read_to_string(agent.config()).expect("read the config");
    let config = config
        .replace(
            &format!("cgroup = \"{}\"", site.parent.relative_path()),
            &format!("cgroup = \"{}\"", elsewhere.relative_path()),
        )
        .replace(&xdp, "");
    std::fs::write(agent.config(), format!("interfaces = []\n{config}")).expect("write");
    let second = agent.start();

    let status = agent.status();
    let after = attachments(&status);
    assert_eq!(after.len(), CGROUP_HOOKS.len(), "{status:#}");
    let target = format!("cgroup {}", elsewhere.path().display());
    for attachment in status["attachments"].as_array().expect("attachments") {
        assert_eq!(attachment["target"], target.as_str(), "{status:#}");
    }
    let old_links: BTreeSet<u64> = before.iter().map(|(_, link, _)| *link).collect();
    assert!(
        after.iter().all(|(_, link, _)| !old_links.contains(link)),
        "a link pinned for the old cgroup was kept: {status:#}"
    );
    assert_eq!(
        entry(&status, "interfaces", "name", veth.host_if())["xdp"],
        "none",
        "{status:#}"
    );
    assert!(
        agent.log(second).contains("XDP detached"),
        "{}",
        agent.log(second)
    );
    // The old links leave the kernel; the old cgroup is no longer enforced.
    let started = Instant::now();
    while listed(loaded_links(), "links")
        .iter()
        .any(|link| old_links.contains(&u64::from(link.id())))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "an old link is still in the kernel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
            .cgroup(api)
            .run(),
        Outcome::Ok,
        "the cgroup the config no longer names is still enforced"
    );
}

/// Pins at `path` a one-entry BPF array of 4-byte keys and values: a map whose layout
/// none of the agent's maps has, as a release that changed one would have left it.
fn pin_array_map(path: &Path) {
    let map = enforcer_tests::bpf_raw::array_map(4, 1).expect("create a map");
    enforcer_tests::bpf_raw::pin(std::os::fd::AsFd::as_fd(&map), path).expect("pin the map");
}

#[test]
fn an_incompatible_pinned_map_is_refused_and_the_old_enforcement_stays() {
    let site = PeerSite::new(&[DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19777", "");
    agent.start();
    let before = agent.status();
    assert!(agent.terminate(), "the agent did not stop cleanly");

    // The running programs keep their map; its pin now names one of another layout (the
    // real one's pin is set aside, to be put back for `status`).
    let pin = agent
        .pin_dir()
        .join("maps")
        .join(enforcer_common::maps::FOLDS);
    let aside = agent.pin_dir().join("set-aside");
    std::fs::rename(&pin, &aside).expect("set the map's pin aside");
    pin_array_map(&pin);
    let (exit, log) = agent.refused_start(&agent.config());
    assert_eq!(exit.code(), Some(1), "{log}");
    assert!(
        log.contains("cannot load the kernel object")
            && log.contains("pinned map")
            && log.contains("incompatible"),
        "the refusal does not say the pinned map is incompatible:\n{log}"
    );
    let denied = Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
        .cgroup(api)
        .run();
    assert!(denied.is_eperm(), "the old enforcement is gone: {denied:?}");

    std::fs::remove_file(&pin).expect("unpin the other map");
    std::fs::rename(&aside, &pin).expect("put the map's pin back");
    let after = agent.status();
    assert_eq!(attachments(&after), attachments(&before), "{after:#}");
    assert_eq!(after["generation"], before["generation"], "{after:#}");
}
