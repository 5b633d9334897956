//! Unit tests of the core on a tiny lossless in-memory network (the simulator crate covers
//! loss, partitions and scale).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::wire::{self, Message, StreamMessage};
use crate::*;

/// Nodes on a perfect network with a fixed one-way latency, driven by a time-ordered queue.
struct Net {
    nodes: Vec<Swim>,
    up: Vec<bool>,
    queue: BTreeMap<(u64, u64), (usize, Event)>,
    seq: u64,
    now: u64,
    log: Vec<(usize, Notification)>,
}

enum Event {
    Packet(Addr, Vec<u8>),
    Stream(Vec<u8>),
    Timer(Timer),
}

fn addr(i: usize) -> Addr {
    Addr::v4([10, 0, 0, i as u8 + 1], 8301)
}

impl Net {
    fn new(n: usize, config: Config) -> Self {
        let nodes = (0..n)
            .map(|i| {
                Swim::new(
                    config.clone(),
                    &format!("n{i}"),
                    addr(i),
                    1,
                    Meta::default(),
                    i as u64,
                )
            })
            .collect();
        let mut net = Self {
            nodes,
            up: vec![true; n],
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            log: Vec::new(),
        };
        for i in 0..n {
            net.nodes[i].start(0);
            net.collect(i);
        }
        net
    }
    fn push(&mut self, at: u64, node: usize, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (node, e));
    }
    fn collect(&mut self, i: usize) {
        for out in self.nodes[i].drain_outputs() {
            match out {
                Output::Packet { to, bytes } => {
                    let dst = usize::from(to.as_v4().expect("v4")[3]) - 1;
                    self.push(self.now + 500, dst, Event::Packet(addr(i), bytes));
                }
                Output::Stream { to, bytes } => {
                    let dst = usize::from(to.as_v4().expect("v4")[3]) - 1;
                    self.push(self.now + 1500, dst, Event::Stream(bytes));
                }
                Output::Timer { at, timer } => self.push(at, i, Event::Timer(timer)),
                Output::Notify(n) => self.log.push((i, n)),
            }
        }
        self.nodes[i].check_invariants();
    }
    fn run_until(&mut self, until: u64) {
        while let Some((&(at, s), _)) = self.queue.first_key_value() {
            if at > until {
                break;
            }
            let (node, e) = self.queue.remove(&(at, s)).expect("queued");
            self.now = at;
            if !self.up[node] {
                continue;
            }
            match e {
                Event::Packet(from, b) => self.nodes[node]
                    .handle_packet(at, from, &b)
                    .expect("valid packet"),
                Event::Stream(b) => self.nodes[node].handle_stream(at, &b).expect("valid frame"),
                Event::Timer(t) => self.nodes[node].handle_timer(at, t),
            }
            self.collect(node);
        }
        self.now = until;
    }
    fn join_all(&mut self) {
        for i in 1..self.nodes.len() {
            self.nodes[i].join(0, &[addr(0)]);
            self.collect(i);
        }
    }
    fn state(&self, observer: usize, of: usize) -> Option<State> {
        self.nodes[observer]
            .member(&format!("n{of}"))
            .map(|m| m.state)
    }
}

#[test]
fn nodes_joining_one_seed_all_see_each_other() {
    let mut net = Net::new(8, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    for i in 0..8 {
        assert_eq!(
            net.nodes[i].cluster_size(),
            8,
            "node {i} sees {:?}",
            net.nodes[i].members()
        );
        for j in 0..8 {
            if i != j {
                assert_eq!(net.state(i, j), Some(State::Alive));
            }
        }
    }
}

#[test]
fn a_dead_node_is_declared_failed_everywhere_and_a_live_one_never() {
    let mut net = Net::new(6, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    net.up[3] = false;
    net.run_until(30 * SECOND);
    for i in (0..6).filter(|&i| i != 3) {
        assert_eq!(net.state(i, 3), Some(State::Dead), "observer {i}");
        for j in (0..6).filter(|&j| j != 3 && j != i) {
            assert_eq!(net.state(i, j), Some(State::Alive), "observer {i} of {j}");
        }
    }
    assert!(
        !net.log
            .iter()
            .any(|(_, n)| matches!(n, Notification::Failed(x) if &**x != "n3"))
    );
}

#[test]
fn a_suspected_node_refutes_with_a_higher_incarnation() {
    let mut net = Net::new(4, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    // n1 hears that n0 suspects n2 at its current incarnation.
    let m = net.nodes[1].member("n2").expect("known").clone();
    let suspect = wire::encode_update(&Update::Suspect {
        name: m.name.clone(),
        generation: m.generation,
        incarnation: m.incarnation,
        from: Name::from("n0"),
    });
    let packet = wire::encode_packet("n0", &Message::Gossip, &[&suspect]);
    net.nodes[1]
        .handle_packet(net.now, addr(0), &packet)
        .expect("valid");
    assert_eq!(net.state(1, 2), Some(State::Suspect));
    net.collect(1);
    let t = net.now;
    net.run_until(t + 5 * SECOND);
    assert_eq!(net.state(1, 2), Some(State::Alive), "refuted");
    assert!(net.nodes[2].incarnation() > m.incarnation);
    assert!(
        net.log
            .iter()
            .any(|(i, n)| *i == 2 && matches!(n, Notification::Refuted { .. }))
    );
}

#[test]
fn leave_is_disseminated_as_left_not_failed() {
    let mut net = Net::new(5, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    net.nodes[4].leave(net.now);
    net.collect(4);
    let t = net.now;
    net.run_until(t + 2 * SECOND);
    assert!(net.nodes[4].leave_propagated());
    net.up[4] = false;
    let t = net.now;
    net.run_until(t + 20 * SECOND);
    for i in 0..4 {
        assert_eq!(net.state(i, 4), Some(State::Left), "observer {i}");
    }
}

#[test]
fn a_restarted_node_with_a_new_address_replaces_its_old_generation() {
    let mut net = Net::new(4, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    // n3 restarts at generation 2 on a new address (slot 4 of the address plan).
    net.up[3] = false;
    net.nodes.push(Swim::new(
        Config::lan(),
        "n3",
        addr(4),
        2,
        Meta::default(),
        99,
    ));
    net.up.push(true);
    net.nodes[4].start(net.now);
    net.nodes[4].join(net.now, &[addr(0)]);
    net.collect(4);
    let t = net.now;
    net.run_until(t + 2 * SECOND);
    for i in 0..3 {
        let m = net.nodes[i].member("n3").expect("known");
        assert_eq!(
            (m.generation, m.addr, m.state),
            (2, addr(4), State::Alive),
            "observer {i}"
        );
    }
    // Old news about generation 1 (a stale full state) does not resurrect or kill it.
    let stale = wire::encode_update(&Update::Dead {
        name: Name::from("n3"),
        generation: 1,
        incarnation: 9,
        from: Name::from("n1"),
    });
    let packet = wire::encode_packet("n1", &Message::Gossip, &[&stale]);
    net.nodes[0]
        .handle_packet(net.now, addr(1), &packet)
        .expect("valid");
    assert_eq!(net.state(0, 3), Some(State::Alive));
}

#[test]
fn metadata_changes_reach_everyone_and_user_events_are_delivered_once() {
    let mut net = Net::new(5, Config::lan());
    net.join_all();
    net.run_until(3 * SECOND);
    let meta = Meta {
        zone: "rack-2".into(),
        ..Meta::default()
    };
    net.nodes[2].set_meta(net.now, meta).expect("small");
    net.nodes[2]
        .fire_event(net.now, "id-1".into(), "deploy".into(), b"v2".to_vec())
        .expect("valid");
    net.collect(2);
    let t = net.now;
    net.run_until(t + 3 * SECOND);
    for i in 0..5 {
        if i != 2 {
            assert_eq!(
                net.nodes[i].member("n2").expect("known").meta.zone,
                "rack-2"
            );
        }
        let events: Vec<_> = net.nodes[i]
            .recent_events()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(events, vec!["deploy".to_string()], "node {i}");
    }
    let delivered = net
        .log
        .iter()
        .filter(|(_, n)| matches!(n, Notification::Event(_)))
        .count();
    assert_eq!(delivered, 5);
}

#[test]
fn digest_exchange_heals_diverged_views() {
    let mut net = Net::new(3, Config::lan());
    // No join: n0 learns of n1 only through a push-pull of state.
    let frame = wire::encode_stream(
        "n1",
        &addr(1),
        &StreamMessage::Digest {
            digest: 1,
            members: 1,
        },
    );
    net.nodes[0].handle_stream(0, &frame).expect("valid");
    net.collect(0);
    net.run_until(2 * SECOND);
    assert_eq!(net.state(1, 0), Some(State::Alive));
    assert_eq!(net.state(0, 1), Some(State::Alive));
}

#[test]
fn garbage_is_counted_and_refused() {
    let mut s = Swim::new(Config::lan(), "n0", addr(0), 1, Meta::default(), 1);
    assert_eq!(
        s.handle_packet(0, addr(1), b""),
        Err(DecodeError::Truncated { field: "magic" })
    );
    assert_eq!(
        s.handle_packet(0, addr(1), b"XX\x01"),
        Err(DecodeError::Magic)
    );
    assert_eq!(
        s.handle_packet(0, addr(1), b"CS\x09"),
        Err(DecodeError::Version(9))
    );
    let good = wire::encode_packet("n1", &Message::Ack { seq: 3 }, &[]);
    for cut in 0..good.len() {
        assert!(
            s.handle_packet(0, addr(1), &good[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        s.handle_packet(0, addr(1), &long),
        Err(DecodeError::Trailing(1))
    );
    assert_eq!(s.stats().decode_errors, good.len() as u64 + 4);
    s.check_invariants();
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-z0-9-]{1,20}".prop_map(|s| Name::from(s.as_str()))
}

fn arb_update() -> impl Strategy<Value = Update> {
    prop_oneof![
        (
            arb_name(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            "[a-z]{0,8}"
        )
            .prop_map(
                |(name, ip, port, generation, incarnation, zone)| Update::Alive {
                    name,
                    addr: Addr::v4(ip, port),
                    generation,
                    incarnation,
                    meta: std::sync::Arc::new(Meta {
                        zone,
                        ..Meta::default()
                    }),
                }
            ),
        (arb_name(), any::<u64>(), any::<u32>(), arb_name()).prop_map(
            |(name, generation, incarnation, from)| {
                Update::Suspect {
                    name,
                    generation,
                    incarnation,
                    from,
                }
            }
        ),
        (arb_name(), any::<u64>(), any::<u32>(), arb_name()).prop_map(
            |(name, generation, incarnation, from)| {
                Update::Dead {
                    name,
                    generation,
                    incarnation,
                    from,
                }
            }
        ),
        (arb_name(), any::<u64>(), any::<u32>()).prop_map(|(name, generation, incarnation)| {
            Update::Left {
                name,
                generation,
                incarnation,
            }
        }),
        (
            any::<u64>(),
            "[a-f0-9]{8}",
            "[a-z]{1,8}",
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(ltime, id, name, payload)| Update::Event {
                ltime,
                id,
                name,
                payload
            }),
    ]
}

proptest! {
    #[test]
    fn packets_round_trip(seq in any::<u32>(), updates in proptest::collection::vec(arb_update(), 0..8)) {
        let encoded: Vec<Vec<u8>> = updates.iter().map(wire::encode_update).collect();
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let bytes = wire::encode_packet("me", &Message::Ack { seq }, &refs);
        let p = wire::decode_packet(&bytes).expect("round trip");
        prop_assert_eq!(p.message, Message::Ack { seq });
        prop_assert_eq!(p.updates, updates);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut s = Swim::new(Config::lan(), "n0", addr(0), 1, Meta::default(), 1);
        let _ = s.handle_packet(0, addr(1), &bytes);
        let _ = s.handle_stream(0, &bytes);
        let mut prefixed = b"CS\x01".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = s.handle_packet(0, addr(1), &prefixed);
        let _ = s.handle_stream(0, &prefixed);
        s.check_invariants();
    }
}
