//! `--on-this-host` and `--local-address`: which addresses the host in question delivers
//! to itself, for the tools that decide flows offline (`explain`, `simulate`). Loopback
//! and the unspecified address are this host in any policy; interface addresses and
//! `local` routes are host state, which the kernel knows and a policy does not.

use std::net::IpAddr;

use anyhow::Context as _;
use ipnet::IpNet;

use crate::policy::explain::LocalAddresses;

/// Arguments naming the host's own addresses.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Decide as this machine's kernel does: its interface addresses and its `local`
    /// routes in any table (AnyIP prefixes, IPv6 anycast) are this host.
    #[arg(long)]
    on_this_host: bool,
    /// An address or prefix the host in question delivers to itself (its interface
    /// addresses, `local` routes); repeat for more.
    #[arg(long = "local-address", value_name = "ADDR|PREFIX", value_parser = parse_net)]
    local_addresses: Vec<IpNet>,
}

/// What `args` name: this machine's addresses and local routes with `--on-this-host`,
/// and every `--local-address`.
pub fn addresses(args: &HostArgs) -> anyhow::Result<LocalAddresses> {
    let mut nets = args.local_addresses.clone();
    if args.on_this_host {
        let here = crate::host::interfaces::addresses()
            .context("--on-this-host: reading this machine's addresses and local routes")?;
        nets.extend(here.local.into_iter().map(IpNet::from));
        nets.extend(here.prefixes);
    }
    Ok(LocalAddresses::new(nets))
}

/// An address (a host prefix) or a prefix.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is neither an IP address nor a prefix"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::reference::Endpoint;

    #[test]
    fn addresses_and_prefixes_mark_their_endpoints_mapped_forms_included() {
        let local = LocalAddresses::new(vec![
            parse_net("198.18.0.1").unwrap(),
            parse_net("198.19.253.0/24").unwrap(),
        ]);
        for inside in ["198.18.0.1", "198.19.253.7", "::ffff:198.19.253.7"] {
            let addr: IpAddr = inside.parse().unwrap();
            assert_eq!(
                local.mark(Endpoint::Addr(addr)),
                Endpoint::LocalAddr(addr),
                "{inside}"
            );
        }
        let outside: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(local.mark(Endpoint::Addr(outside)), Endpoint::Addr(outside));
        assert!(parse_net("not-an-address").is_err());
    }
}
