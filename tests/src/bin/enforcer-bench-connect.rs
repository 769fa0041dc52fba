//! `enforcer-bench-connect ROUNDS CONNECTS RULES...`: what a filter on outbound
//! connections costs loopback `connect()`, in one run: no filter, the enforcer's cgroup
//! hooks, and nftables output rules matching the client's cgroup
//! (`socket cgroupv2 level N "PATH"`) at each RULES count.
//!
//! Every client and server runs inside a network namespace this benchmark creates; the
//! nftables rules live only there and go with it. Setups:
//! - `none`: no filter; the client in a cgroup nothing is attached to;
//! - `enforcer`: the client in a cgroup the enforcer's cgroup hooks are attached to, as a
//!   segment a rule allows to reach the server's port (its `connect()` is decided by
//!   `connect4`, its SYN passes `skb_egress`);
//! - `nft-N`: the client in a cgroup nothing is attached to, in a namespace whose output
//!   chain holds `ct state established,related accept`, then N rules
//!   `socket cgroupv2 level L "PATH" tcp dport P accept`, each naming a cgroup of its own
//!   (one per segment, as a user translating a policy would write them), the client's
//!   last, then `ct state new drop`.
//!
//! Each round runs CONNECTS connections per setup, one after the other (each closed with
//! a reset), the setups in a rotating order. Prints one line per round and setup, then
//! `connect-p50-us SETUP VALUE` and `connect-p99-us SETUP VALUE`: medians over the
//! rounds of each round's p50 and p99. Run by `./x bench connect`, which writes the table.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, ExitCode, Stdio},
};

use enforcer_tests::{
    cgroup::TestCgroup,
    netns::Netns,
    policy::{image, loaded_with},
    probe::{Outcome, Server, Spawn},
};

/// The loopback port of every accepting server (one per namespace).
const PORT: u16 = 18_190;
/// Where nftables resolves a `socket cgroupv2` path from (fixed in nft itself).
const NFT_CGROUP_BASE: &str = "/sys/fs/cgroup";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [rounds, connects, rules @ ..] if !rules.is_empty() => rounds
            .parse::<usize>()
            .ok()
            .zip(connects.parse::<u32>().ok())
            .zip(
                rules
                    .iter()
                    .map(|r| r.parse::<usize>().ok())
                    .collect::<Option<Vec<usize>>>(),
            ),
        _ => None,
    };
    let Some(((rounds, connects), rules)) = parsed else {
        eprintln!("usage: enforcer-bench-connect ROUNDS CONNECTS RULES...");
        return ExitCode::from(2);
    };
    match bench(rounds.max(1), connects.max(1), &rules) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-connect: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A name for a kernel object of this run: the `cx` prefix, the pid, `what`.
fn name(what: &str) -> String {
    format!("cx{}-{what}", std::process::id())
}

/// One way to run the clients: its namespace's server and the client's cgroup.
struct Setup<'a> {
    label: String,
    server: &'a Server,
    client: &'a TestCgroup,
    netns: &'a Netns,
}

/// A namespace with an accepting server on loopback, and (for nftables) the segment
/// cgroups its rules name. Dropped in field order: the server, then the namespace (its
/// rules with it), then the cgroups.
struct Host {
    server: Server,
    netns: Netns,
    _segments: Vec<TestCgroup>,
}

impl Host {
    /// A namespace `what` without rules.
    fn plain(what: &str) -> Self {
        let netns = Netns::named(&name(what));
        Self {
            server: accept_server(&netns),
            netns,
            _segments: Vec::new(),
        }
    }

    /// A namespace `what` whose output chain has `rules` cgroup rules, the last one for
    /// `client`; the other rules' cgroups are made under `parent`.
    fn nft(
        what: &str,
        rules: usize,
        parent: &TestCgroup,
        client: &TestCgroup,
    ) -> Result<Self, String> {
        let netns = Netns::named(&name(what));
        let segments: Vec<TestCgroup> = (1..rules)
            .map(|i| parent.child(&format!("{what}-s{i}.service")))
            .collect();
        let mut text = format!(
            "table inet {table} {{\n chain output {{\n  type filter hook output priority 0; policy accept;\n  ct state established,related accept\n",
            table = name("bench").replace('-', "_"),
        );
        for (i, cgroup) in segments.iter().chain([client]).enumerate() {
            let port = if i + 1 == rules {
                PORT
            } else {
                20_000 + i as u16
            };
            text.push_str(&format!(
                "  socket cgroupv2 level {} \"{}\" tcp dport {port} accept\n",
                cgroup_level(cgroup),
                nft_cgroup_path(cgroup)?,
            ));
        }
        text.push_str("  ct state new drop\n }\n}\n");
        nft_load(&netns, &text)?;
        Ok(Self {
            server: accept_server(&netns),
            netns,
            _segments: segments,
        })
    }
}

/// A server in `netns` that accepts connections on loopback and closes them.
fn accept_server(netns: &Netns) -> Server {
    Spawn::tcp_accept(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)))
        .netns(netns)
        .serve()
}

/// The cgroup's depth below the cgroup2 root (the root is level 0).
fn cgroup_level(cgroup: &TestCgroup) -> usize {
    Path::new(&cgroup.relative_path()).components().count()
}

/// The cgroup's path as nftables takes it: relative to [`NFT_CGROUP_BASE`].
fn nft_cgroup_path(cgroup: &TestCgroup) -> Result<String, String> {
    cgroup
        .path()
        .strip_prefix(NFT_CGROUP_BASE)
        .map(|path| path.to_string_lossy().into_owned())
        .map_err(|_| {
            format!(
                "nft resolves cgroup paths under {NFT_CGROUP_BASE}; {} is not there",
                cgroup.path().display()
            )
        })
}

/// Loads the ruleset `text` inside `netns` (`nsenter --net`: `ip netns exec` would mount
/// a sysfs of its own over /sys, hiding the cgroup2 mount nft resolves paths in).
fn nft_load(netns: &Netns, text: &str) -> Result<(), String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nsenter nft (is nftables installed?): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .map_err(|e| format!("nft stdin: {e}"))?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "nft -f failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn bench(rounds: usize, connects: u32, rules: &[usize]) -> Result<(), String> {
    let governed_parent = TestCgroup::named(&name("governed"));
    let governed = governed_parent.child("client.service");
    let plain_parent = TestCgroup::named(&name("plain"));
    let plain = plain_parent.child("client.service");
    let policy = image(&format!(
        r#"
[segments.client]
cgroups = ["{}"]

[[allow]]
id = "client-to-host"
from = ["client"]
to = ["host"]
ports = ["{PORT}/tcp"]
"#,
        governed.relative_path(),
    ));
    let mut loader = loaded_with(&policy);
    loader
        .attach_cgroup(governed_parent.path())
        .map_err(|e| e.to_string())?;

    let open = Host::plain("open");
    let filtered: Vec<(usize, Host)> = rules
        .iter()
        .map(|&n| Host::nft(&format!("nft{n}"), n.max(1), &plain_parent, &plain).map(|h| (n, h)))
        .collect::<Result<_, _>>()?;
    let mut setups = vec![
        Setup {
            label: "none".into(),
            server: &open.server,
            client: &plain,
            netns: &open.netns,
        },
        Setup {
            label: "enforcer".into(),
            server: &open.server,
            client: &governed,
            netns: &open.netns,
        },
    ];
    for (n, host) in &filtered {
        setups.push(Setup {
            label: format!("nft-{n}"),
            server: &host.server,
            client: &plain,
            netns: &host.netns,
        });
    }

    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for k in 0..setups.len() {
            let index = (round + k) % setups.len();
            let setup = &setups[index];
            let (p50, p99) = connect_round(setup, connects)?;
            println!(
                "round {round} {}: connect {p50:.2}/{p99:.2} us",
                setup.label
            );
            figures[index].push((p50, p99));
        }
    }
    let counters = loader.counters().map_err(|e| e.to_string())?;
    let decided: u64 = counters.by_reason.iter().map(|c| c.count).sum();
    if decided == 0 {
        return Err("the enforcer's hooks decided no connection".into());
    }
    for (setup, rounds) in setups.iter().zip(&figures) {
        println!(
            "connect-p50-us {} {:.2}",
            setup.label,
            median(rounds.iter().map(|r| r.0))
        );
        println!(
            "connect-p99-us {} {:.2}",
            setup.label,
            median(rounds.iter().map(|r| r.1))
        );
    }
    Ok(())
}

/// `connects` connections of one setup's client to its server: p50 and p99 of
/// `connect()` in µs.
fn connect_round(setup: &Setup, connects: u32) -> Result<(f64, f64), String> {
    let (outcome, answer) = Spawn::tcp_connect_timed(setup.server.addr, connects)
        .netns(setup.netns)
        .cgroup(setup.client)
        .run_in_background()
        .outcome_and_answer();
    if outcome != Outcome::Ok {
        return Err(format!("{}: connects: {outcome:?}", setup.label));
    }
    let times: Vec<f64> = answer
        .split_whitespace()
        .filter_map(|ns| ns.parse::<f64>().ok())
        .collect();
    let [p50, p99] = times[..] else {
        return Err(format!("{}: the client answered {answer:?}", setup.label));
    };
    Ok((p50 / 1e3, p99 / 1e3))
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
