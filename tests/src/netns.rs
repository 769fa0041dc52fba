//! Network namespaces as remote test hosts, joined to this host by veth pairs.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    LINK_PREFIX,
    cmd::{run, run_quietly},
    require_root, unique_name,
};

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name and brings its loopback up.
    pub fn new() -> Self {
        Self::named(&unique_name())
    }

    /// Creates the namespace `name` and brings its loopback up.
    pub fn named(name: &str) -> Self {
        require_root();
        let name = name.to_owned();
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens the namespace file (for [`crate::probe::Spawn::netns`]).
    pub fn open(&self) -> File {
        File::open(self.path())
            .unwrap_or_else(|err| panic!("cannot open netns {}: {err}", self.name))
    }

    /// How many IPv4 datagrams the namespace has received (`Ip: InReceives` of its
    /// `/proc/net/snmp`), whatever became of them afterwards.
    pub fn ipv4_received(&self) -> u64 {
        let snmp = run(
            "ip",
            &["netns", "exec", &self.name, "cat", "/proc/net/snmp"],
        );
        let mut ip_lines = snmp.lines().filter(|line| line.starts_with("Ip:"));
        let (names, values) = (ip_lines.next(), ip_lines.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no Ip lines in /proc/net/snmp of {}: {snmp}", self.name);
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "InReceives")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no InReceives in /proc/net/snmp of {}", self.name))
    }

    /// How many UDP datagrams over IPv6 reached the namespace's UDP layer (delivered,
    /// discarded for a bad checksum or for want of a socket: `Udp6InDatagrams`,
    /// `Udp6InErrors` and `Udp6NoPorts` of its `/proc/net/snmp6`).
    pub fn udp6_received(&self) -> u64 {
        let snmp6 = run(
            "ip",
            &["netns", "exec", &self.name, "cat", "/proc/net/snmp6"],
        );
        snmp6
            .lines()
            .filter_map(|line| line.split_once(char::is_whitespace))
            .filter(|(name, _)| ["Udp6InDatagrams", "Udp6InErrors", "Udp6NoPorts"].contains(name))
            .map(|(name, value)| {
                value.trim().parse::<u64>().unwrap_or_else(|err| {
                    panic!("{name} in /proc/net/snmp6 of {}: {err}", self.name)
                })
            })
            .sum()
    }

    /// Runs `ip args...` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !run_quietly("ip", &["netns", "del", &self.name]) && !std::thread::panicking() {
            panic!("cannot delete netns {}", self.name);
        }
    }
}

/// A veth pair: the `host` end in the test's own namespace (standing for this host's
/// interface), the `peer` end inside a [`Netns`] (standing for a remote host).
///
/// Addresses come from 198.18.0.0/15 and 2001:db8::/32 only. Deleting the host end on
/// drop deletes the peer with it.
#[derive(Debug)]
pub struct Veth {
    host_if: String,
    host_ifindex: u32,
    /// The host end's IPv4 address.
    pub host_v4: Ipv4Addr,
    /// The peer end's IPv4 address.
    pub peer_v4: Ipv4Addr,
    /// The host end's IPv6 address.
    pub host_v6: Ipv6Addr,
    /// The peer end's IPv6 address.
    pub peer_v6: Ipv6Addr,
}

impl Veth {
    /// The peer's IPv4 address with `port`.
    pub fn peer_addr(&self, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(IpAddr::from(self.peer_v4), port)
    }

    /// Creates a veth pair into `netns`, addresses both ends (a /30 and a /64) and brings
    /// them up. IPv6 addresses skip duplicate address detection so they are usable at once.
    pub fn new(netns: &Netns) -> Self {
        require_root();
        // Pairs are counted apart from the serial that names every other object, so a
        // test file's many namespaces, cgroups and gates do not use up the pairs'
        // addresses (and names stay short). Only pairs are named so in this namespace.
        static PAIRS: AtomicU32 = AtomicU32::new(0);
        let pair = PAIRS.fetch_add(1, Ordering::Relaxed);
        assert!(pair < 64, "too many veth pairs in one test process");
        let pid = std::process::id();
        let host_if = format!("{LINK_PREFIX}{pid}-{pair}h");
        let peer_if = format!("{LINK_PREFIX}{pid}-{pair}p");
        assert!(host_if.len() <= 15, "interface name {host_if} is too long");
        // One /30 and one /64 per pair, spread by pid so a crashed run's leftovers do
        // not collide with the next run's addresses.
        let third = u8::try_from(pid % 250).expect("below 250");
        let fourth = u8::try_from(pair * 4).expect("below 256");
        let host_v4 = Ipv4Addr::new(198, 18, third, fourth + 1);
        let peer_v4 = Ipv4Addr::new(198, 18, third, fourth + 2);
        let host_v6 = Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(third),
            u16::from(fourth),
            0,
            0,
            0,
            1,
        );
        let peer_v6 = Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(third),
            u16::from(fourth),
            0,
            0,
            0,
            2,
        );

        add_veth(None, &host_if, netns, &peer_if);
        // From here on the guard owns the pair, so a failing step still removes it.
        let mut veth = Self {
            host_if,
            host_ifindex: 0,
            host_v4,
            peer_v4,
            host_v6,
            peer_v6,
        };
        address_up(
            None,
            &veth.host_if,
            &[(host_v4.into(), 30), (host_v6.into(), 64)],
        );
        address_up(
            Some(netns),
            &peer_if,
            &[(peer_v4.into(), 30), (peer_v6.into(), 64)],
        );
        veth.host_ifindex =
            std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", veth.host_if))
                .expect("read ifindex")
                .trim()
                .parse()
                .expect("ifindex is a number");
        veth
    }

    /// The host end's interface name.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The host end's interface index.
    pub fn host_ifindex(&self) -> u32 {
        self.host_ifindex
    }

    /// `ip -details link show` of the host end (shows an attached XDP program).
    pub fn host_link_details(&self) -> String {
        run("ip", &["-details", "link", "show", "dev", &self.host_if])
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if !run_quietly("ip", &["link", "del", &self.host_if]) && !std::thread::panicking() {
            panic!("cannot delete veth {}", self.host_if);
        }
    }
}

/// Runs `ip args...` in `netns`, or in the calling process's namespace for `None`.
fn ip_in(netns: Option<&Netns>, args: &[&str]) -> String {
    match netns {
        Some(netns) => netns.ip(args),
        None => run("ip", args),
    }
}

/// Creates a veth pair: `near` in `near_ns` (`None`: the calling process's namespace),
/// its peer `far` in `far_ns`. Deleting either end deletes both.
pub fn add_veth(near_ns: Option<&Netns>, near: &str, far_ns: &Netns, far: &str) {
    ip_in(
        near_ns,
        &[
            "link",
            "add",
            near,
            "type",
            "veth",
            "peer",
            "name",
            far,
            "netns",
            far_ns.name(),
        ],
    );
}

/// Gives `dev` in `netns` (`None`: the calling process's namespace) each address with its
/// prefix length, then brings it up. IPv6 addresses skip duplicate address detection, so
/// they are usable at once.
pub fn address_up(netns: Option<&Netns>, dev: &str, addresses: &[(IpAddr, u8)]) {
    for (address, prefix) in addresses {
        let cidr = format!("{address}/{prefix}");
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
        if address.is_ipv6() {
            args.push("nodad");
        }
        ip_in(netns, &args);
    }
    ip_in(netns, &["link", "set", dev, "up"]);
}

/// Joins the calling thread to the namespace behind `fd` (from [`Netns::open`]); the
/// sockets it creates afterwards live there. Async-signal-safe, for `pre_exec`.
pub fn setns_net(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A route of this host's network namespace, removed when dropped: `ip route add ARGS`
/// (with `-6` when an argument is an IPv6 address), undone with `ip route del ARGS`.
pub struct Route(Vec<String>);

impl Route {
    /// Adds the route `args` describe.
    pub fn add(args: &[&str]) -> Self {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        if args.iter().any(|a| a.contains(':')) {
            full.insert(0, "-6");
        }
        run("ip", &full);
        Self(full.iter().map(|s| (*s).to_owned()).collect())
    }

    /// A `local` route on loopback (AnyIP): every address of `prefix` is this host's.
    pub fn local(prefix: &str) -> Self {
        Self::add(&["local", prefix, "dev", "lo"])
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        let args: Vec<&str> = self
            .0
            .iter()
            .map(|s| if s == "add" { "del" } else { s.as_str() })
            .collect();
        let _ = run_quietly("ip", &args);
    }
}
