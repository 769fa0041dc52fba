//! The cgroup programs attach to a test cgroup, and a process inside it still connects
//! and sends to a test host.

use std::net::SocketAddr;

use aya::programs::loaded_links;
use enforcer::loader::{CGROUP_HOOKS, Loader};
use enforcer_tests::{
    cgroup::TestCgroup,
    netns::{Netns, Veth},
    probe::{Outcome, Spawn},
};

#[test]
fn process_in_attached_cgroup_still_connects_and_sends() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let cgroup = TestCgroup::new();
    let mut loader = Loader::load().expect("load");
    loader
        .attach_cgroup(cgroup.path())
        .expect("attach cgroup programs");

    let cgroup_program_ids: Vec<u32> = loader
        .programs()
        .expect("info")
        .into_iter()
        .filter(|p| CGROUP_HOOKS.contains(&p.hook))
        .map(|p| p.id)
        .collect();
    let linked: Vec<u32> = loaded_links()
        .map(|link| link.expect("link info").program_id())
        .filter(|id| cgroup_program_ids.contains(id))
        .collect();
    assert_eq!(
        linked.len(),
        CGROUP_HOOKS.len(),
        "one kernel link per cgroup hook"
    );

    for remote in [
        SocketAddr::new(veth.peer_v4.into(), 0),
        SocketAddr::new(veth.peer_v6.into(), 0),
    ] {
        let tcp = Spawn::tcp_server(remote).netns(&netns).serve();
        let udp = Spawn::udp_server(remote).netns(&netns).serve();
        assert_eq!(
            Spawn::tcp_client(tcp.addr).cgroup(&cgroup).run(),
            Outcome::Ok,
            "connect to {}",
            tcp.addr
        );
        assert_eq!(
            Spawn::udp_client(udp.addr).cgroup(&cgroup).run(),
            Outcome::Ok,
            "sendto {}",
            udp.addr
        );
    }

    // A child cgroup is covered by the same attachment and is not refused either.
    let child = cgroup.child("api.service");
    let tcp = Spawn::tcp_server(SocketAddr::new(veth.peer_v4.into(), 0))
        .netns(&netns)
        .serve();
    assert_eq!(
        Spawn::tcp_client(tcp.addr).cgroup(&child).run(),
        Outcome::Ok
    );
}
