//! XDP ingress on the configured interfaces, kept current: with `interfaces = "all"`
//! every Ethernet interface of the agent's network namespace but loopback and the
//! excluded ones, including those that appear while the agent runs (rtnetlink reports
//! them; L3 devices such as IPIP, GRE, WireGuard and TUN carry bare IP packets, which
//! XDP's parser does not read, and are left to the per-socket layer); with a
//! list, exactly the listed ones, attached again when one is re-created. What each
//! interface has is shown by `status` and `/metrics`, an attach that failed included.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::programs::XdpMode;
use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Interfaces},
    host,
    loader::Loader,
};

/// What one interface has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceXdp {
    /// The interface index it had when last attached to (or tried).
    pub index: u32,
    /// The mode asked for (`auto`: native where the driver has it, else generic).
    pub mode: String,
    /// Why attaching failed; `None` while XDP is attached.
    pub error: Option<String>,
}

/// The interfaces with XDP, and those where attaching failed.
pub struct InterfaceSet {
    selection: Interfaces,
    /// By interface name.
    known: BTreeMap<String, InterfaceXdp>,
    /// Interfaces `"all"` passed over because they are not Ethernet (logged once each).
    skipped: Vec<String>,
}

/// The attach mode for `mode` on an interface that is a veth or not: `auto` is generic
/// (SKB) mode on a veth and the kernel's choice elsewhere. Native XDP on a veth copies
/// every locally sent TCP segment into a page-pool buffer before the program runs, which
/// cost allowed TCP into a container about three quarters of its throughput, where SKB
/// mode cost at most about a fifth (`docs/benchmarks.md`, "Filters compared").
fn aya_mode(mode: config::XdpMode, veth: bool) -> XdpMode {
    match mode {
        config::XdpMode::Auto if veth => XdpMode::Skb,
        config::XdpMode::Auto => XdpMode::Default,
        config::XdpMode::Native => XdpMode::Driver,
        config::XdpMode::Skb => XdpMode::Skb,
    }
}

fn mode_word(mode: config::XdpMode) -> &'static str {
    match mode {
        config::XdpMode::Auto => "auto",
        config::XdpMode::Native => "native",
        config::XdpMode::Skb => "skb",
    }
}

impl InterfaceSet {
    /// No interface attached yet.
    pub fn new(selection: Interfaces) -> Self {
        Self {
            selection,
            known: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// Each interface's XDP, by name.
    pub fn known(&self) -> &BTreeMap<String, InterfaceXdp> {
        &self.known
    }

    /// At start, before anything is loaded or attached: every listed interface must
    /// exist, so a typo in the config is refused by its field with nothing attached (no
    /// cgroup hook either: the check runs before the agent touches the kernel).
    pub fn check_listed(&self) -> anyhow::Result<()> {
        if let Interfaces::Listed(list) = &self.selection {
            for (i, interface) in list.iter().enumerate() {
                host::interfaces::index(&interface.name).with_context(|| {
                    format!(
                        "interfaces[{i}].name: no interface `{}` on this host",
                        interface.name
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Attaches XDP to every selected interface of the host that does not have it at its
    /// current index, and forgets (and unpins) interfaces that are gone or no longer
    /// selected. An attach that fails is logged and kept as failed (retried at the next
    /// change); it does not stop the others. Returns what changed, for the audit trail.
    pub fn sync(&mut self, loader: &mut Loader) -> anyhow::Result<Vec<XdpChange>> {
        let mut changes = Vec::new();
        let present = host::interfaces::all().context("listing this host's interfaces")?;
        let link_types = host::interfaces::link_types().context("reading link types")?;
        let mut keep = BTreeMap::new();
        let mut skipped = Vec::new();
        for (name, index) in present {
            let Some(mode) = self.selection.selects(&name) else {
                continue;
            };
            let link_type = link_types
                .iter()
                .find(|(link, _)| *link == name)
                .map(|(_, link_type)| *link_type);
            // No link-layer address at all (TUN, WireGuard) is not Ethernet either.
            if link_type != Some(host::interfaces::LINK_TYPE_ETHERNET) {
                // XDP's parser reads Ethernet frames; an L3 device hands it bare IP
                // packets. The per-socket layer decides what arrives there.
                if matches!(self.selection, Interfaces::All { .. }) {
                    if !self.skipped.contains(&name) {
                        tracing::info!(interface = %name, ?link_type, "not an Ethernet interface: no XDP; the per-socket layer decides its traffic");
                    }
                    skipped.push(name);
                    continue;
                }
                keep.insert(
                    name,
                    InterfaceXdp {
                        index,
                        mode: mode_word(mode).to_owned(),
                        error: Some(format!(
                            "not an Ethernet interface (link type {}): XDP cannot parse its packets; the per-socket layer decides its traffic",
                            link_type.map_or_else(|| "none".to_owned(), |t| t.to_string())
                        )),
                    },
                );
                continue;
            }
            let current = self
                .known
                .remove(&name)
                .filter(|known| known.index == index && known.error.is_none());
            let state = match current {
                Some(attached) => attached,
                None => {
                    let veth = host::interfaces::is_veth(index).unwrap_or_else(|err| {
                        // A veth that vanished meanwhile fails its attach below.
                        tracing::warn!(interface = %name, error = %err, "cannot tell whether the interface is a veth; `auto` leaves its XDP mode to the kernel");
                        false
                    });
                    let attach_mode = aya_mode(mode, veth);
                    let error = match loader.attach_xdp(&name, index, attach_mode) {
                        Ok(outcome) => {
                            tracing::info!(interface = %name, index, mode = mode_word(mode), ?attach_mode, ?outcome, "XDP ingress in force");
                            None
                        }
                        Err(err) => {
                            tracing::error!(interface = %name, index, mode = mode_word(mode), error = %err, "cannot attach XDP ingress; the interface has none");
                            Some(err.to_string())
                        }
                    };
                    changes.push(XdpChange {
                        interface: name.clone(),
                        attached: error.is_none(),
                        error: error.clone(),
                    });
                    InterfaceXdp {
                        index,
                        mode: mode_word(mode).to_owned(),
                        error,
                    }
                }
            };
            keep.insert(name, state);
        }
        for gone in self.known.keys() {
            tracing::info!(interface = %gone, "interface gone or no longer selected");
        }
        self.known = keep;
        self.skipped = skipped;
        let attached: Vec<&str> = self
            .known
            .iter()
            .filter(|(_, state)| state.error.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        for detached in loader.detach_other_interfaces(&attached)? {
            tracing::info!(interface = %detached, "XDP detached: the interface is gone or no longer configured");
            changes.push(XdpChange {
                interface: detached,
                attached: false,
                error: None,
            });
        }
        Ok(changes)
    }
}

/// XDP put on or taken off an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpChange {
    /// The interface.
    pub interface: String,
    /// Attached (else detached, or failed to attach when `error` says why).
    pub attached: bool,
    /// Why the attach failed.
    pub error: Option<String>,
}
