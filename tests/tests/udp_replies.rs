//! UDP replies are stateful: a segment's UDP server answers exactly the remote peer whose
//! datagram to its port XDP let in, and nothing else passes as a "reply". Sending from a
//! listener port to any other port or host the policy does not allow is refused and
//! recorded, in audit mode recorded as `audit`.

use std::net::SocketAddr;

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{decided_by, drain},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

const DNS: u16 = 18_053;

/// The sendmsg records of datagrams from local port `src_port`.
fn sends(events: &[FlowEvent], src_port: u16) -> Vec<FlowEvent> {
    events
        .iter()
        .filter(|e| {
            matches!(
                Hook::from_code(e.hook),
                Some(Hook::Sendmsg4 | Hook::Sendmsg6)
            ) && e.src_port == src_port
        })
        .copied()
        .collect()
}

#[test]
fn a_udp_server_answers_its_client_and_no_one_else() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let dns = parent.child("dns.service");
    let trial = parent.child("trial.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.dns]
cgroups = ["{}"]
ports = ["{DNS}/udp"]

[segments.trial]
cgroups = ["{}"]
mode = "audit"

[segments.clients]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "clients-to-dns"
from = ["clients"]
to = ["dns"]
ports = ["{DNS}/udp"]
"#,
        dns.relative_path(),
        trial.relative_path(),
        veth.peer_v4,
        veth.peer_v6
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    // A service of the client host on a port no rule opens to `dns`.
    let _victim = Spawn::udp_server(veth.peer_addr(19_999))
        .netns(&netns)
        .serve();

    {
        // The real exchange: the client's query is let in at XDP and the server's answer,
        // from its port to the client's, passes.
        let _server = Spawn::udp_server(SocketAddr::new(veth.host_v4.into(), DNS))
            .cgroup(&dns)
            .serve();
        let asked = Spawn::udp_client(SocketAddr::new(veth.host_v4.into(), DNS))
            .netns(&netns)
            .run();
        assert_eq!(asked, Outcome::Ok, "the client gets its answer");
    }

    // The attack: a process of `dns` sends from the listener port to another port of the
    // client host, which no rule allows. Before, it passed as a "reply", unrecorded.
    let from_listener = Spawn::udp_client_from(veth.peer_addr(19_999), DNS)
        .cgroup(&dns)
        .run();
    assert!(from_listener.is_eperm(), "{from_listener:?}");
    // In audit mode the same send passes, and is on record.
    let audited = Spawn::udp_client_from(veth.peer_addr(19_999), 18_054)
        .cgroup(&trial)
        .run();
    assert_eq!(audited, Outcome::Ok, "audit mode lets it through");

    let recorded = drain(&mut events);
    // From the listener port only the attack was decided: the answer to the client passed
    // as a reply (its query is the inbound record).
    let refused = sends(&recorded, DNS);
    assert_eq!(refused.len(), 1, "{recorded:#?}");
    assert_eq!(refused[0].dst_port, 19_999);
    assert_eq!(refused[0].verdict, Verdict::Deny as u8);
    assert_eq!(decided_by(&image, &refused[0]), "default-deny");
    let audit = sends(&recorded, 18_054);
    assert_eq!(audit.len(), 1, "{recorded:#?}");
    assert_eq!(audit[0].dst_port, 19_999);
    assert_eq!(audit[0].verdict, Verdict::Audit as u8);
}
