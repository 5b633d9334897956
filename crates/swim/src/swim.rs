//! The membership state machine. Inputs: [`Swim::handle_packet`], [`Swim::handle_stream`],
//! [`Swim::handle_timer`] and user calls (`join`, `leave`, `set_meta`, `fire_event`), each with
//! the caller's `now` in microseconds. Outputs: [`Output`]s the caller drains with
//! [`Swim::drain_outputs`] and executes (send, schedule, notify). Randomness comes from a
//! seeded generator the caller chooses.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use colony_base::SplitMix64;

use crate::addr::Addr;
use crate::broadcast::{BroadcastQueue, Subject};
use crate::config::Config;
use crate::index::{NameIndex, name_hash};
use crate::member::{Member, State, digest_of};
use crate::wire::{
    self, DecodeError, MAX_EVENT_PAYLOAD, MAX_META_LEN, MAX_NAME_LEN, Message, Meta, Name,
    StreamMessage, Update,
};

/// Stands for this node in the probe order.
const SELF: u32 = u32::MAX;
/// Top bit of a ping's digest hint: the sender has no membership update in flight.
const QUIET: u32 = 1 << 31;

/// Timers the core asks the caller to fire. Stale timers (a probe that already finished, a
/// suspicion already refuted) are recognised by their sequence number or token and ignored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Start the next probe.
    Probe,
    /// Resend the direct ping of probe `seq` if no ack came.
    ProbeRetry(u32),
    /// Probe `seq` timed out directly: ask others.
    ProbeIndirect(u32),
    /// Probe `seq` still unanswered: ask the same relays again (survives heavy loss).
    ProbeIndirectRetry(u32),
    /// Probe `seq` ends: suspect the target if nobody heard from it.
    ProbeDeadline(u32),
    /// Relay `seq` (a ping we send for someone else): resend the ping.
    RelayRetry(u32),
    /// Relay `seq`: give up and nack.
    RelayDeadline(u32),
    /// The suspicion of a member may have expired.
    Suspicion {
        /// The suspected member.
        name: Name,
        /// Identifies the deadline; a rescheduled suspicion gets a new token.
        token: u64,
    },
    /// Send pending updates to a few members.
    Gossip,
    /// Exchange a digest with a random member.
    PushPull,
    /// Try a failed member again; forget long-failed ones.
    Reconnect,
}

/// Something the membership view did that the caller may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A member became alive (joined, rejoined, or refuted its failure).
    Up(Name),
    /// A member's address or metadata changed while alive.
    Updated(Name),
    /// A member is suspected.
    Suspect(Name),
    /// A member was declared failed.
    Failed(Name),
    /// A member left.
    Left(Name),
    /// A long-gone member was forgotten.
    Reaped(Name),
    /// This node refuted a suspicion or failure about itself.
    Refuted {
        /// The new incarnation.
        incarnation: u32,
    },
    /// A join handshake (or push-pull) with `from` completed.
    Synced(Name),
    /// A user event arrived (or was fired here).
    Event(UserEvent),
    /// Another process claims this node's name with a newer generation.
    NameConflict {
        /// Address of the other claimant.
        addr: Addr,
    },
}

/// A user event (Consul's `/v1/event/fire`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// Unique id.
    pub id: String,
    /// Event name.
    pub name: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Lamport time.
    pub ltime: u64,
}

/// An effect the caller executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram (UDP).
    Packet {
        /// Destination.
        to: Addr,
        /// Encoded packet.
        bytes: Vec<u8>,
    },
    /// Send a stream frame (TCP), one frame per connection.
    Stream {
        /// Destination.
        to: Addr,
        /// Encoded frame.
        bytes: Vec<u8>,
    },
    /// Call [`Swim::handle_timer`] with `timer` at time `at` (µs).
    Timer {
        /// When.
        at: u64,
        /// What.
        timer: Timer,
    },
    /// Tell the application.
    Notify(Notification),
}

/// Counters for metrics and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent.
    pub packets_out: u64,
    /// Datagram bytes sent.
    pub bytes_out: u64,
    /// Stream frames sent.
    pub streams_out: u64,
    /// Stream bytes sent.
    pub stream_bytes_out: u64,
    /// Datagrams received and decoded.
    pub packets_in: u64,
    /// Undecodable datagrams or frames dropped.
    pub decode_errors: u64,
    /// Pings addressed to another name (address reuse) dropped.
    pub misdirected: u64,
    /// Probes that ended without an ack.
    pub probes_failed: u64,
    /// Probes acked.
    pub probes_ok: u64,
    /// Suspicions this node raised from its own probes.
    pub suspicions_raised: u64,
    /// Refutations of suspicions about this node.
    pub refutations: u64,
}

/// This node's own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfState {
    /// Member of the cluster.
    Alive,
    /// Announced its departure; no longer refutes.
    Leaving,
}

#[derive(Debug)]
struct Probe {
    target: Name,
    /// The periodic round-robin probe (false: a check of a suspicion heard from others).
    periodic: bool,
    acked: bool,
    nacks_expected: u32,
    nacks: u32,
    relays: Vec<Addr>,
    /// When the verdict is due (a timer firing much later means this node was stalled).
    due: u64,
}

#[derive(Debug)]
struct Relay {
    origin: Addr,
    origin_seq: u32,
    target: Name,
    target_addr: Addr,
    nack: bool,
}

#[derive(Debug)]
struct Suspicion {
    started: u64,
    confirmations: BTreeSet<Name>,
    token: u64,
    deadline: u64,
}

/// One node's membership protocol: SWIM with Lifeguard.
#[derive(Debug)]
pub struct Swim {
    config: Config,
    me: Name,
    addr: Addr,
    generation: u64,
    incarnation: u32,
    meta: Arc<Meta>,
    self_state: SelfState,
    rng: SplitMix64,

    members: Vec<Member>,
    index: NameIndex,
    reachable: usize,
    /// Members failed or left: the few that reconnect and reaping look at.
    gone: BTreeSet<Name>,
    digest: u64,

    /// Members (and [`SELF`]) in the shared probe order.
    probe_order: Vec<u32>,
    order_dirty: bool,
    self_pos: usize,
    digest_mismatch_since: Option<u64>,
    last_digest_sync: Option<u64>,
    probes: BTreeMap<u32, Probe>,
    next_seq: u32,
    relays: BTreeMap<u32, Relay>,
    suspicions: BTreeMap<Name, Suspicion>,
    /// Members that refuted a suspicion recently: (patience level, when). Their probes wait
    /// longer for an ack, so a member that is slow but alive is not suspected again and again.
    flappers: BTreeMap<Name, (u8, u64)>,
    next_token: u64,
    awareness: u32,

    broadcasts: BroadcastQueue,
    events: BroadcastQueue,
    recent_events: VecDeque<UserEvent>,
    event_ids: BTreeSet<String>,
    event_clock: u64,

    outputs: Vec<Output>,
    stats: Stats,
}

impl Swim {
    /// A node named `name`, reachable at `addr`, in run `generation` (a restart must pick a
    /// larger one: the runtime uses start-up wall-clock microseconds), drawing randomness from
    /// `seed`.
    ///
    /// # Panics
    /// Panics if `name` is empty or longer than 128 bytes (the runtime validates names first).
    pub fn new(
        config: Config,
        name: &str,
        addr: Addr,
        generation: u64,
        meta: Meta,
        seed: u64,
    ) -> Self {
        assert!(
            !name.is_empty() && name.len() <= MAX_NAME_LEN,
            "invalid node name {name:?}"
        );
        Self {
            config,
            me: Name::from(name),
            addr,
            generation,
            incarnation: 0,
            meta: Arc::new(meta),
            self_state: SelfState::Alive,
            rng: SplitMix64::new(seed),
            members: Vec::new(),
            index: NameIndex::default(),
            reachable: 0,
            gone: BTreeSet::new(),
            digest: 0,
            probe_order: Vec::new(),
            order_dirty: true,
            self_pos: 0,
            digest_mismatch_since: None,
            last_digest_sync: None,
            probes: BTreeMap::new(),
            next_seq: 0,
            relays: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            flappers: BTreeMap::new(),
            next_token: 0,
            awareness: 0,
            broadcasts: BroadcastQueue::default(),
            events: BroadcastQueue::default(),
            recent_events: VecDeque::new(),
            event_ids: BTreeSet::new(),
            event_clock: 0,
            outputs: Vec::new(),
            stats: Stats::default(),
        }
    }

    // ------------------------------------------------------------------------ accessors

    /// This node's name.
    pub fn name(&self) -> &Name {
        &self.me
    }
    /// This node's gossip address.
    pub fn addr(&self) -> Addr {
        self.addr
    }
    /// This node's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// This node's incarnation.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
    /// This node's metadata.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }
    /// Whether this node is a member or leaving.
    pub fn self_state(&self) -> SelfState {
        self.self_state
    }
    /// Every other member this node knows (alive, suspect, failed or left).
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    /// One member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.index
            .get(&self.members, name)
            .map(|i| &self.members[i as usize])
    }
    /// Members believed alive or suspect, this node included.
    pub fn cluster_size(&self) -> usize {
        self.reachable + 1
    }
    /// Lifeguard's local health score (0 = healthy); probe interval and timeout are scaled by
    /// `score + 1`.
    pub fn awareness(&self) -> u32 {
        self.awareness
    }
    /// The order-independent digest of this node's view, itself included.
    pub fn digest(&self) -> u64 {
        self.digest.wrapping_add(digest_of(
            &self.me,
            self.generation,
            self.incarnation,
            State::Alive,
        ))
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Updates waiting to be disseminated.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len() + self.events.len()
    }
    /// Recent user events, oldest first.
    pub fn recent_events(&self) -> impl Iterator<Item = &UserEvent> {
        self.recent_events.iter()
    }
    /// The current suspicion deadline of a member, if suspected.
    pub fn suspicion_deadline(&self, name: &str) -> Option<u64> {
        self.suspicions.get(name).map(|s| s.deadline)
    }
    /// Whether this node's `Left` announcement has been sent enough times to stop now.
    pub fn leave_propagated(&self) -> bool {
        let subject = Subject::Member(self.me.clone());
        match self.broadcasts.transmits(&subject) {
            None => true,
            Some(sent) => sent as usize >= self.config.gossip_fanout.min(self.reachable),
        }
    }
    /// An upper bound of the memory the membership table takes, in bytes: the entries, the
    /// name index, the probe order, and every member's name and metadata counted as if not
    /// shared with any other structure.
    pub fn table_bytes(&self) -> usize {
        let entries = self.members.capacity() * std::mem::size_of::<Member>();
        let index = self.index.capacity() * (std::mem::size_of::<u32>() + 1);
        let order = self.probe_order.capacity() * std::mem::size_of::<u32>();
        let heap: usize = self
            .members
            .iter()
            .map(|m| {
                let meta = std::mem::size_of::<Meta>()
                    + m.meta.role.capacity()
                    + m.meta.zone.capacity()
                    + m.meta
                        .tags
                        .iter()
                        .map(|(k, v)| k.capacity() + v.capacity() + 64)
                        .sum::<usize>();
                // Arc headers (two counters each) for the name and the metadata.
                16 + m.name.len() + 16 + meta
            })
            .sum();
        entries + index + order + heap
    }

    /// Takes the effects produced so far.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }
    /// Appends the effects produced so far to `out` (no allocation when `out` has room).
    pub fn drain_outputs_into(&mut self, out: &mut Vec<Output>) {
        out.append(&mut self.outputs);
    }

    // ------------------------------------------------------------------------ user calls

    /// Schedules the periodic timers. Call once, after construction.
    pub fn start(&mut self, now: u64) {
        let stagger = self.rng.below(self.config.probe_interval.max(1));
        self.set_timer(now + stagger, Timer::Probe);
        let stagger = self.rng.below(self.config.gossip_interval.max(1));
        self.set_timer(now + stagger, Timer::Gossip);
        let pp = self.push_pull_interval();
        let stagger = self.rng.below(pp.max(1));
        self.set_timer(now + pp / 2 + stagger, Timer::PushPull);
        let rc = self.config.reconnect_interval;
        let stagger = self.rng.below(rc.max(1));
        self.set_timer(now + rc + stagger, Timer::Reconnect);
    }

    /// Sends this node's state to each seed, which answers with its view (a join).
    pub fn join(&mut self, _now: u64, seeds: &[Addr]) {
        let me = self.self_record();
        for &seed in seeds {
            if seed == self.addr {
                continue;
            }
            let frame = StreamMessage::State {
                reply: true,
                join: true,
                members: vec![me.clone()],
                events: Vec::new(),
            };
            self.send_stream(seed, &frame);
        }
    }

    /// Announces a graceful departure. Keep handling input until [`Swim::leave_propagated`]
    /// (or a timeout) before stopping.
    pub fn leave(&mut self, _now: u64) {
        if self.self_state == SelfState::Leaving {
            return;
        }
        self.self_state = SelfState::Leaving;
        self.incarnation += 1;
        let left = Update::Left {
            name: self.me.clone(),
            generation: self.generation,
            incarnation: self.incarnation,
        };
        self.queue_member_update(&left);
        // Tell a few members at once instead of waiting for the next gossip round.
        self.gossip_round();
    }

    /// Marks a failed member as left (Consul's force-leave). Returns false if the member is
    /// unknown or not failed (an alive member would refute it anyway).
    pub fn force_leave(&mut self, now: u64, name: &str) -> bool {
        let Some(i) = self.index.get(&self.members, name) else {
            return false;
        };
        let m = &self.members[i as usize];
        if m.state != State::Dead {
            return false;
        }
        let left = Update::Left {
            name: m.name.clone(),
            generation: m.generation,
            incarnation: m.incarnation,
        };
        self.apply(now, &left, None);
        true
    }

    /// Changes this node's metadata and announces it with a new incarnation.
    pub fn set_meta(&mut self, _now: u64, meta: Meta) -> Result<(), &'static str> {
        let mut w = wire::Writer::default();
        w.update(&Update::Alive {
            name: self.me.clone(),
            addr: self.addr,
            generation: 0,
            incarnation: 0,
            meta: Arc::new(meta.clone()),
        });
        if w.len() > MAX_META_LEN + 64 + MAX_NAME_LEN {
            return Err("metadata larger than 512 bytes");
        }
        self.meta = Arc::new(meta);
        self.incarnation += 1;
        let me = self.self_record();
        self.queue_member_update(&me);
        Ok(())
    }

    /// Fires a user event to the whole cluster.
    pub fn fire_event(
        &mut self,
        _now: u64,
        id: String,
        name: String,
        payload: Vec<u8>,
    ) -> Result<u64, &'static str> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err("event name must be 1 to 128 bytes");
        }
        if id.is_empty() || id.len() > MAX_NAME_LEN {
            return Err("event id must be 1 to 128 bytes");
        }
        if payload.len() > MAX_EVENT_PAYLOAD {
            return Err("event payload larger than 512 bytes");
        }
        self.event_clock += 1;
        let event = UserEvent {
            id,
            name,
            payload,
            ltime: self.event_clock,
        };
        self.accept_event(event);
        Ok(self.event_clock)
    }

    /// Makes room for `additional` more members (the simulator's warm start).
    pub fn reserve_members(&mut self, additional: usize) {
        self.members.reserve_exact(additional);
        self.index.reserve(&self.members, additional);
    }

    /// Adds a member directly, as if learned from a full sync (the simulator's warm start).
    pub fn insert_member(&mut self, now: u64, update: &Update) {
        if let Update::Alive {
            name,
            addr,
            generation,
            incarnation,
            meta,
        } = update
            && *name != self.me
            && self.index.get(&self.members, name).is_none()
        {
            self.insert(
                now,
                name.clone(),
                *addr,
                *generation,
                *incarnation,
                meta.clone(),
            );
        }
    }

    // ------------------------------------------------------------------------ input

    /// Handles a datagram from `from`. Undecodable input is counted and reported, never panics.
    pub fn handle_packet(&mut self, now: u64, from: Addr, bytes: &[u8]) -> Result<(), DecodeError> {
        let packet = match wire::decode_packet(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.decode_errors += 1;
                return Err(e);
            }
        };
        self.stats.packets_in += 1;
        for update in &packet.updates {
            self.apply(now, update, Some(from));
        }
        match packet.message {
            Message::Ping {
                seq,
                target,
                digest,
            } => {
                if target != self.me {
                    self.stats.misdirected += 1;
                    return Ok(());
                }
                self.send_packet(from, &Message::Ack { seq }, None);
                self.compare_digest(now, from, digest);
            }
            Message::Ack { seq } => self.handle_ack(now, seq),
            Message::Nack { seq } => {
                if let Some(p) = self.probes.get_mut(&seq) {
                    p.nacks += 1;
                }
            }
            Message::PingReq {
                seq,
                target,
                addr,
                nack,
            } => {
                let relay_seq = self.next_seq();
                let ping = Message::Ping {
                    seq: relay_seq,
                    target: target.clone(),
                    digest: self.digest_hint(),
                };
                self.send_packet(addr, &ping, None);
                self.relays.insert(
                    relay_seq,
                    Relay {
                        origin: from,
                        origin_seq: seq,
                        target,
                        target_addr: addr,
                        nack,
                    },
                );
                let timeout = self.scaled(self.config.probe_timeout);
                self.set_timer(now + timeout / 3, Timer::RelayRetry(relay_seq));
                self.set_timer(now + timeout * 4 / 5, Timer::RelayDeadline(relay_seq));
            }
            Message::Gossip => {}
        }
        Ok(())
    }

    /// Handles a stream frame (one per connection).
    pub fn handle_stream(&mut self, now: u64, bytes: &[u8]) -> Result<(), DecodeError> {
        let frame = match wire::decode_stream(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.stats.decode_errors += 1;
                return Err(e);
            }
        };
        match frame.message {
            StreamMessage::Digest { digest, .. } => {
                if digest != self.digest() {
                    let state = self.full_state(true, false);
                    self.send_stream(frame.reply_to, &state);
                }
            }
            StreamMessage::State {
                reply,
                join,
                members,
                events,
            } => {
                for record in &members {
                    self.merge_record(now, record, frame.reply_to);
                }
                for event in &events {
                    self.apply(now, event, None);
                }
                if reply {
                    let state = self.full_state(false, false);
                    self.send_stream(frame.reply_to, &state);
                }
                if !join || !reply {
                    self.notify(Notification::Synced(frame.from));
                }
            }
        }
        Ok(())
    }

    /// Handles a timer set earlier.
    pub fn handle_timer(&mut self, now: u64, timer: Timer) {
        match timer {
            Timer::Probe => {
                self.start_probe(now);
                let next = self.scaled(self.config.probe_interval);
                self.set_timer(now + next, Timer::Probe);
            }
            Timer::ProbeRetry(seq) => {
                if let Some((target, addr)) = self.unacked_probe_target(seq) {
                    let ping = Message::Ping {
                        seq,
                        target: target.clone(),
                        digest: self.digest_hint(),
                    };
                    self.send_packet(addr, &ping, Some(&target));
                }
            }
            Timer::ProbeIndirect(seq) => self.probe_indirect(now, seq),
            Timer::ProbeIndirectRetry(seq) => self.retry_indirect(seq),
            Timer::ProbeDeadline(seq) => {
                self.finish_probe(now, seq);
            }
            Timer::RelayRetry(seq) => {
                if let Some(r) = self.relays.get(&seq) {
                    let (target, addr) = (r.target.clone(), r.target_addr);
                    let ping = Message::Ping {
                        seq,
                        target,
                        digest: self.digest_hint(),
                    };
                    self.send_packet(addr, &ping, None);
                }
            }
            Timer::RelayDeadline(seq) => {
                if let Some(r) = self.relays.remove(&seq)
                    && r.nack
                {
                    self.send_packet(r.origin, &Message::Nack { seq: r.origin_seq }, None);
                }
            }
            Timer::Suspicion { name, token } => self.suspicion_expired(now, &name, token),
            Timer::Gossip => {
                self.gossip_round();
                self.set_timer(now + self.config.gossip_interval, Timer::Gossip);
            }
            Timer::PushPull => {
                if let Some(target) = self.random_members(1, None).first().copied() {
                    let addr = self.members[target as usize].addr;
                    let digest = StreamMessage::Digest {
                        digest: self.digest(),
                        members: self.members.len() as u32 + 1,
                    };
                    self.send_stream(addr, &digest);
                }
                let interval = self.push_pull_interval();
                self.set_timer(now + interval, Timer::PushPull);
            }
            Timer::Reconnect => {
                self.reconnect(now);
                let rc = self.config.reconnect_interval;
                let jitter = self.rng.below(rc.max(1));
                self.set_timer(now + rc / 2 + jitter, Timer::Reconnect);
            }
        }
    }

    // ------------------------------------------------------------------------ probing

    fn start_probe(&mut self, now: u64) {
        if self.self_state == SelfState::Leaving {
            return;
        }
        let Some(target) = self.next_probe_target(now) else {
            return;
        };
        self.probe_member(now, target, true);
    }

    /// Lifeguard confirmations: a node that hears of a suspicion checks the suspect itself with
    /// probability about k/n, so that about k independent verdicts arrive within one probe
    /// period instead of waiting for the suspect's turn in everyone's round-robin.
    fn maybe_check(&mut self, now: u64, member: u32, name: &Name) {
        if !self.config.lifeguard || self.self_state == SelfState::Leaving {
            return;
        }
        if self.probes.values().any(|p| p.target == *name) {
            return;
        }
        let k = u64::from(self.config.suspicion_confirmations) + 1;
        let n = self.cluster_size().max(1) as u64;
        if self.rng.below(n) < k {
            self.probe_member(now, member, false);
        }
    }

    /// Probes member `target`: direct ping, a retry, indirect pings, then a verdict.
    fn probe_member(&mut self, now: u64, target: u32, periodic: bool) {
        let (name, addr) = {
            let m = &self.members[target as usize];
            (m.name.clone(), m.addr)
        };
        let seq = self.next_seq();
        self.probes.insert(
            seq,
            Probe {
                target: name.clone(),
                periodic,
                acked: false,
                nacks_expected: 0,
                nacks: 0,
                relays: Vec::new(),
                due: u64::MAX,
            },
        );
        self.send_packet(
            addr,
            &Message::Ping {
                seq,
                target: name.clone(),
                digest: self.digest_hint(),
            },
            Some(&name),
        );
        let timeout = self.scaled(self.config.probe_timeout);
        let retry = self.config.probe_retry;
        if retry < timeout {
            self.set_timer(now + retry, Timer::ProbeRetry(seq));
        }
        self.set_timer(now + timeout, Timer::ProbeIndirect(seq));
        let interval =
            self.scaled(self.config.probe_interval) * (1 + u64::from(self.patience(now, &name)));
        let due = now + interval - interval / 20;
        if let Some(p) = self.probes.get_mut(&seq) {
            p.due = due;
        }
        self.set_timer(due, Timer::ProbeDeadline(seq));
    }

    /// Extra probe intervals a member gets before it is suspected, and the factor (minus one)
    /// its suspicion timeout is stretched by: 0 normally, up to 2 for a member that refuted a
    /// suspicion or a failure in the last minute (a paused or starved process that answers
    /// late but answers). Costs such a member, if it really dies, up to two probe intervals and
    /// two more minimum suspicion timeouts of detection time.
    fn patience(&mut self, now: u64, name: &Name) -> u8 {
        match self.flappers.get(name) {
            Some(&(level, since))
                if now.saturating_sub(since) < 60 * self.config.probe_interval =>
            {
                level
            }
            Some(_) => {
                self.flappers.remove(name);
                0
            }
            None => 0,
        }
    }

    /// Coordinated probing. Every node orders the members (itself included) the same way, by
    /// a hash of their names, and at slot `k` (one probe interval of the shared clock) probes
    /// the member `offset(k)` places after itself, where `offset(k)` is a pseudo-random number
    /// in `1..n` that every node derives from `k` alone. Nodes that agree on the membership
    /// thus probe every member exactly once per slot (a rotation), so a failed member is first
    /// probed within one interval instead of after an exponentially distributed wait, while
    /// who probes whom changes unpredictably from slot to slot. Where views differ, the
    /// rotation degrades gracefully towards independent random choices.
    fn next_probe_target(&mut self, now: u64) -> Option<u32> {
        if self.reachable == 0 {
            return None;
        }
        if self.order_dirty {
            self.rebuild_probe_order();
        }
        let len = self.probe_order.len();
        let slot = now / self.config.probe_interval.max(1);
        let offset = 1 + (digest_of("slot", slot, 0, State::Alive) % (len as u64 - 1)) as usize;
        let start = self.self_pos + offset;
        (0..len)
            .map(|step| self.probe_order[(start + step) % len])
            .find(|&i| i != SELF && self.members[i as usize].state.is_reachable())
    }

    fn rebuild_probe_order(&mut self) {
        let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(self.members.len() + 1);
        keyed.push((name_hash(&self.me), SELF));
        keyed.extend(
            self.members
                .iter()
                .enumerate()
                .map(|(i, m)| (name_hash(&m.name), i as u32)),
        );
        keyed.sort_unstable();
        self.probe_order.clear();
        self.probe_order.extend(keyed.iter().map(|&(_, i)| i));
        self.self_pos = self
            .probe_order
            .iter()
            .position(|&i| i == SELF)
            .unwrap_or(0);
        self.order_dirty = false;
    }

    fn unacked_probe_target(&self, seq: u32) -> Option<(Name, Addr)> {
        let p = self.probes.get(&seq).filter(|p| !p.acked)?;
        let m = self.member(&p.target)?;
        m.state.is_reachable().then(|| (m.name.clone(), m.addr))
    }

    fn probe_indirect(&mut self, now: u64, seq: u32) {
        let Some((target, addr)) = self.unacked_probe_target(seq) else {
            return;
        };
        let exclude = self.index.get(&self.members, &target);
        let relays = self.random_members(self.config.indirect_checks, exclude);
        let nack = self.config.lifeguard;
        for &r in &relays {
            let relay_addr = self.members[r as usize].addr;
            let msg = Message::PingReq {
                seq,
                target: target.clone(),
                addr,
                nack,
            };
            self.send_packet(relay_addr, &msg, None);
        }
        // One more direct attempt alongside the indirect ones.
        self.send_packet(
            addr,
            &Message::Ping {
                seq,
                target: target.clone(),
                digest: self.digest_hint(),
            },
            Some(&target),
        );
        let relay_addrs: Vec<Addr> = relays
            .iter()
            .map(|&r| self.members[r as usize].addr)
            .collect();
        if let Some(p) = self.probes.get_mut(&seq) {
            p.nacks_expected = if nack { relays.len() as u32 } else { 0 };
            p.relays = relay_addrs;
        }
        self.set_timer(
            now + self.config.probe_retry,
            Timer::ProbeIndirectRetry(seq),
        );
    }

    /// Second round of the indirect probe: the same relays and one more direct ping. Only
    /// probes still unanswered pay for it; under 20% loss it turns a probe's false-failure
    /// probability from about 4e-3 into about 1e-4.
    fn retry_indirect(&mut self, seq: u32) {
        let Some((target, addr)) = self.unacked_probe_target(seq) else {
            return;
        };
        let relays = self
            .probes
            .get(&seq)
            .map(|p| p.relays.clone())
            .unwrap_or_default();
        let nack = self.config.lifeguard;
        for relay in relays {
            let msg = Message::PingReq {
                seq,
                target: target.clone(),
                addr,
                nack,
            };
            self.send_packet(relay, &msg, None);
        }
        let ping = Message::Ping {
            seq,
            target: target.clone(),
            digest: self.digest_hint(),
        };
        self.send_packet(addr, &ping, Some(&target));
    }

    fn handle_ack(&mut self, _now: u64, seq: u32) {
        if let Some(p) = self.probes.get_mut(&seq) {
            if !p.acked {
                p.acked = true;
                self.stats.probes_ok += 1;
                if p.periodic {
                    self.adjust_awareness(-1);
                }
            }
            return;
        }
        if let Some(r) = self.relays.remove(&seq) {
            self.send_packet(r.origin, &Message::Ack { seq: r.origin_seq }, None);
        }
    }

    /// Ends probe `seq`, suspecting its target (or confirming a suspicion of it) if it never
    /// answered.
    fn finish_probe(&mut self, now: u64, seq: u32) {
        let Some(p) = self.probes.remove(&seq) else {
            return;
        };
        if p.acked {
            return;
        }
        if self.config.lifeguard && now.saturating_sub(p.due) > self.config.probe_interval / 4 {
            // The verdict comes long after it was due: this node was paused or starved, and its
            // unread acks are probably waiting in the socket. Blame itself, not the target.
            self.adjust_awareness(1);
            return;
        }
        self.stats.probes_failed += 1;
        if self.config.lifeguard && p.periodic {
            let missed = p.nacks_expected.saturating_sub(p.nacks);
            let delta = if p.nacks_expected == 0 { 1 } else { missed };
            self.adjust_awareness(delta as i32);
        }
        let Some(m) = self.member(&p.target) else {
            return;
        };
        if !m.state.is_reachable() {
            return;
        }
        let suspect = Update::Suspect {
            name: m.name.clone(),
            generation: m.generation,
            incarnation: m.incarnation,
            from: self.me.clone(),
        };
        let addr = m.addr;
        let fresh = m.state == State::Alive;
        self.apply(now, &suspect, None);
        if fresh {
            self.stats.suspicions_raised += 1;
        }
        if fresh && self.config.lifeguard {
            // Buddy system: tell the suspect first, so that it can refute at once.
            self.send_packet(addr, &Message::Gossip, Some(&p.target));
        }
    }

    fn adjust_awareness(&mut self, delta: i32) {
        if !self.config.lifeguard {
            return;
        }
        let max = self.config.awareness_max.saturating_sub(1) as i64;
        self.awareness = (i64::from(self.awareness) + i64::from(delta)).clamp(0, max) as u32;
    }

    fn scaled(&self, d: u64) -> u64 {
        d * (u64::from(self.awareness) + 1)
    }

    // ------------------------------------------------------------------------ suspicion

    /// Minimum and maximum suspicion timeouts for `name`: Lifeguard's bounds, stretched for a
    /// member that recently refuted suspicions or failures (see [`Swim::patience`]).
    fn suspicion_bounds(&mut self, now: u64, name: &Name) -> (u64, u64) {
        let stretch = 1 + u64::from(self.patience(now, name));
        let min = self.config.suspicion_min(self.cluster_size()) * stretch;
        (min, min * self.config.suspicion_max_mult)
    }

    fn start_suspicion(&mut self, now: u64, name: &Name, from: &Name) {
        let (min, _) = self.suspicion_bounds(now, name);
        let timeout = if self.config.lifeguard {
            min * self.config.suspicion_max_mult
        } else {
            min
        };
        let token = self.next_token();
        let mut confirmations = BTreeSet::new();
        confirmations.insert(from.clone());
        self.suspicions.insert(
            name.clone(),
            Suspicion {
                started: now,
                confirmations,
                token,
                deadline: now + timeout,
            },
        );
        self.set_timer(
            now + timeout,
            Timer::Suspicion {
                name: name.clone(),
                token,
            },
        );
    }

    /// Lifeguard: an independent confirmation shortens the suspicion timeout. Returns true if
    /// the confirmation was new.
    fn confirm_suspicion(&mut self, now: u64, name: &Name, from: &Name) -> bool {
        if !self.config.lifeguard {
            return false;
        }
        let n = self.cluster_size();
        let (min, max) = self.suspicion_bounds(now, name);
        let k = self
            .config
            .suspicion_confirmations
            .min(n.saturating_sub(2) as u32);
        let token = self.next_token();
        let Some(s) = self.suspicions.get_mut(name) else {
            return false;
        };
        if !s.confirmations.insert(from.clone()) {
            return false;
        }
        let c = (s.confirmations.len() - 1) as f64;
        let timeout = if k == 0 {
            min
        } else {
            let frac = (c + 1.0).ln() / (f64::from(k) + 1.0).ln();
            let t = max as f64 - (max - min) as f64 * frac;
            (t.max(min as f64)) as u64
        };
        s.token = token;
        s.deadline = (s.started + timeout).max(now);
        let at = s.deadline;
        self.set_timer(
            at,
            Timer::Suspicion {
                name: name.clone(),
                token,
            },
        );
        true
    }

    fn suspicion_expired(&mut self, now: u64, name: &Name, token: u64) {
        if self.suspicions.get(name).is_none_or(|s| s.token != token) {
            return;
        }
        self.suspicions.remove(name);
        let Some(m) = self.member(name) else {
            return;
        };
        if m.state != State::Suspect {
            return;
        }
        let dead = Update::Dead {
            name: m.name.clone(),
            generation: m.generation,
            incarnation: m.incarnation,
            from: self.me.clone(),
        };
        self.apply(now, &dead, None);
    }

    // ------------------------------------------------------------------------ merging

    /// Applies one update (from gossip, push-pull or this node), re-disseminating it if it
    /// taught us something. `source` is the address of the packet it came in, if any.
    fn apply(&mut self, now: u64, update: &Update, source: Option<Addr>) {
        match update {
            Update::Alive {
                name,
                addr,
                generation,
                incarnation,
                meta,
            } => {
                if *name == self.me {
                    self.alive_about_me(*addr, *generation, *incarnation);
                    return;
                }
                self.apply_alive(now, name, *addr, *generation, *incarnation, meta, update);
            }
            Update::Suspect {
                name,
                generation,
                incarnation,
                from,
            } => {
                if *name == self.me {
                    self.refute(*generation, *incarnation, source);
                    return;
                }
                let Some(i) = self.index.get(&self.members, name) else {
                    return;
                };
                let m = &self.members[i as usize];
                if (m.generation, m.incarnation) > (*generation, *incarnation)
                    || m.generation != *generation
                {
                    return;
                }
                match m.state {
                    State::Dead | State::Left => {}
                    State::Suspect if m.incarnation == *incarnation => {
                        if self.confirm_suspicion(now, name, from) {
                            self.queue_member_update(update);
                        }
                    }
                    State::Alive | State::Suspect => {
                        let name = m.name.clone();
                        self.set_state(i, State::Suspect, *incarnation, now);
                        self.start_suspicion(now, &name, from);
                        self.queue_member_update(update);
                        self.notify(Notification::Suspect(name.clone()));
                        if *from != self.me {
                            self.maybe_check(now, i, &name);
                        }
                    }
                }
            }
            Update::Dead {
                name,
                generation,
                incarnation,
                ..
            } => self.apply_gone(
                now,
                update,
                name,
                (*generation, *incarnation),
                State::Dead,
                source,
            ),
            Update::Left {
                name,
                generation,
                incarnation,
            } => self.apply_gone(
                now,
                update,
                name,
                (*generation, *incarnation),
                State::Left,
                source,
            ),
            Update::Event {
                ltime,
                id,
                name,
                payload,
            } => {
                if self.event_ids.contains(id) {
                    return;
                }
                self.event_clock = self.event_clock.max(*ltime);
                self.accept_event(UserEvent {
                    id: id.clone(),
                    name: name.clone(),
                    payload: payload.clone(),
                    ltime: *ltime,
                });
            }
        }
    }

    /// A member failed (`Dead`) or left (`Left`) at `version`. Left overrides failed at the
    /// same version; about this node, either is refuted (unless it is leaving).
    fn apply_gone(
        &mut self,
        now: u64,
        update: &Update,
        name: &Name,
        version: (u64, u32),
        state: State,
        source: Option<Addr>,
    ) {
        if *name == self.me {
            self.refute(version.0, version.1, source);
            return;
        }
        let Some(i) = self.index.get(&self.members, name) else {
            return;
        };
        let m = &self.members[i as usize];
        let already = match state {
            State::Left => m.state == State::Left,
            _ => matches!(m.state, State::Dead | State::Left),
        };
        if m.generation != version.0 || m.incarnation > version.1 || already {
            return;
        }
        let name = m.name.clone();
        self.suspicions.remove(&name);
        self.set_state(i, state, version.1, now);
        self.queue_member_update(update);
        self.notify(if state == State::Left {
            Notification::Left(name)
        } else {
            Notification::Failed(name)
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_alive(
        &mut self,
        now: u64,
        name: &Name,
        addr: Addr,
        generation: u64,
        incarnation: u32,
        meta: &Arc<Meta>,
        update: &Update,
    ) {
        match self.index.get(&self.members, name) {
            None => {
                self.insert(
                    now,
                    name.clone(),
                    addr,
                    generation,
                    incarnation,
                    meta.clone(),
                );
                self.queue_member_update(update);
                self.notify(Notification::Up(name.clone()));
            }
            Some(i) => {
                let m = &self.members[i as usize];
                let newer = (generation, incarnation) > (m.generation, m.incarnation);
                if !newer {
                    return;
                }
                let was = m.state;
                let new_generation = generation != m.generation;
                let changed = m.addr != addr || *m.meta != **meta;
                self.suspicions.remove(name);
                let old = digest_of(&m.name, m.generation, m.incarnation, m.state);
                let m = &mut self.members[i as usize];
                m.addr = addr;
                m.generation = generation;
                m.incarnation = incarnation;
                m.meta = meta.clone();
                m.state = State::Alive;
                m.state_since = now;
                let new = digest_of(&m.name, generation, incarnation, State::Alive);
                self.digest = self.digest.wrapping_sub(old).wrapping_add(new);
                if !was.is_reachable() {
                    self.reachable += 1;
                    self.gone.remove(name);
                }
                self.queue_member_update(update);
                if matches!(was, State::Suspect | State::Dead) && !new_generation {
                    let level = self.flappers.get(name).map_or(0, |f| f.0);
                    self.flappers
                        .insert(name.clone(), ((level + 1).min(2), now));
                }
                if was != State::Alive {
                    self.notify(Notification::Up(name.clone()));
                } else if changed {
                    self.notify(Notification::Updated(name.clone()));
                }
            }
        }
    }

    /// A record from a push-pull: alive and left records apply as gossip; a remote belief that
    /// a member failed only makes it suspect here, so that a member alive on our side of a
    /// healed partition gets the chance to refute instead of being killed by old news.
    fn merge_record(&mut self, now: u64, record: &Update, source: Addr) {
        match record {
            Update::Dead {
                name,
                generation,
                incarnation,
                from,
            }
            | Update::Suspect {
                name,
                generation,
                incarnation,
                from,
            } => {
                let suspect = Update::Suspect {
                    name: name.clone(),
                    generation: *generation,
                    incarnation: *incarnation,
                    from: from.clone(),
                };
                self.apply(now, &suspect, Some(source));
            }
            other => self.apply(now, other, Some(source)),
        }
    }

    fn alive_about_me(&mut self, addr: Addr, generation: u64, incarnation: u32) {
        if generation > self.generation {
            self.notify(Notification::NameConflict { addr });
        } else if generation == self.generation && incarnation > self.incarnation {
            // An echo of a newer claim than ours: take a higher incarnation so ours wins.
            self.incarnation = incarnation + 1;
            let me = self.self_record();
            self.queue_member_update(&me);
        }
    }

    fn refute(&mut self, generation: u64, incarnation: u32, source: Option<Addr>) {
        if generation != self.generation || incarnation < self.incarnation {
            return;
        }
        if self.self_state == SelfState::Leaving {
            return;
        }
        self.incarnation = incarnation + 1;
        self.stats.refutations += 1;
        self.adjust_awareness(1);
        let me = self.self_record();
        self.queue_member_update(&me);
        self.notify(Notification::Refuted {
            incarnation: self.incarnation,
        });
        if let Some(addr) = source {
            self.send_packet(addr, &Message::Gossip, None);
        }
    }

    fn insert(
        &mut self,
        now: u64,
        name: Name,
        addr: Addr,
        generation: u64,
        incarnation: u32,
        meta: Arc<Meta>,
    ) {
        let i = self.members.len() as u32;
        self.digest =
            self.digest
                .wrapping_add(digest_of(&name, generation, incarnation, State::Alive));
        self.members.push(Member {
            name,
            addr,
            generation,
            incarnation,
            state: State::Alive,
            state_since: now,
            meta,
        });
        self.index.insert(&self.members, i);
        self.reachable += 1;
        self.order_dirty = true;
    }

    fn set_state(&mut self, i: u32, state: State, incarnation: u32, now: u64) {
        let m = &mut self.members[i as usize];
        debug_assert!(incarnation >= m.incarnation, "incarnations only grow");
        let old = digest_of(&m.name, m.generation, m.incarnation, m.state);
        if m.state.is_reachable() && !state.is_reachable() {
            self.reachable -= 1;
        } else if !m.state.is_reachable() && state.is_reachable() {
            self.reachable += 1;
        }
        m.state = state;
        m.incarnation = incarnation;
        m.state_since = now;
        if state.is_reachable() {
            self.gone.remove(&m.name);
        } else {
            self.gone.insert(m.name.clone());
        }
        let new = digest_of(&m.name, m.generation, incarnation, state);
        self.digest = self.digest.wrapping_sub(old).wrapping_add(new);
    }

    fn accept_event(&mut self, event: UserEvent) {
        let update = Update::Event {
            ltime: event.ltime,
            id: event.id.clone(),
            name: event.name.clone(),
            payload: event.payload.clone(),
        };
        self.events.push(
            Subject::Event(event.id.clone()),
            wire::encode_update(&update),
        );
        self.event_ids.insert(event.id.clone());
        self.recent_events.push_back(event.clone());
        while self.recent_events.len() > self.config.event_buffer {
            if let Some(old) = self.recent_events.pop_front() {
                self.event_ids.remove(&old.id);
            }
        }
        self.notify(Notification::Event(event));
    }

    // ------------------------------------------------------------------------ anti-entropy

    fn full_state(&self, reply: bool, join: bool) -> StreamMessage {
        let mut members = Vec::with_capacity(self.members.len() + 1);
        members.push(self.self_record());
        members.extend(self.members.iter().map(|m| m.record(&self.me)));
        let events = self
            .recent_events
            .iter()
            .map(|e| Update::Event {
                ltime: e.ltime,
                id: e.id.clone(),
                name: e.name.clone(),
                payload: e.payload.clone(),
            })
            .collect();
        StreamMessage::State {
            reply,
            join,
            members,
            events,
        }
    }

    /// Pings carry 32 bits of the sender's view digest. A mismatch that outlasts normal
    /// dissemination means one side missed an update for good (its retransmissions ran out):
    /// start a digest exchange with the sender instead of waiting for the periodic push-pull.
    fn compare_digest(&mut self, now: u64, from: Addr, hint: u32) {
        let quiet = self.broadcasts.is_empty();
        if hint == self.digest_hint() || !quiet || hint & QUIET == 0 {
            // Equal views, or updates still in flight on either side: nothing to conclude.
            self.digest_mismatch_since = None;
            return;
        }
        let settle = self.config.probe_interval;
        let since = *self.digest_mismatch_since.get_or_insert(now);
        let recent_sync = self.last_digest_sync.is_some_and(|t| now - t < 10 * settle);
        if now - since >= settle && !recent_sync {
            self.digest_mismatch_since = None;
            self.last_digest_sync = Some(now);
            let msg = StreamMessage::Digest {
                digest: self.digest(),
                members: self.members.len() as u32 + 1,
            };
            self.send_stream(from, &msg);
        }
    }

    /// 31 bits of the view digest, and the top bit set when no membership update waits to be
    /// sent (the view is settled as far as this node knows).
    fn digest_hint(&self) -> u32 {
        let quiet = if self.broadcasts.is_empty() { QUIET } else { 0 };
        (self.digest() as u32 & !QUIET) | quiet
    }

    fn push_pull_interval(&self) -> u64 {
        // Like memberlist: back off in large clusters so the total exchange rate stays bounded.
        let n = self.cluster_size() as f64;
        let scale = if n > 32.0 {
            (n / 32.0).log2().ceil() + 1.0
        } else {
            1.0
        };
        (self.config.push_pull_interval as f64 * scale) as u64
    }

    fn reconnect(&mut self, now: u64) {
        // Forget members gone for long enough.
        let expired: Vec<Name> = self
            .gone
            .iter()
            .filter(|name| {
                self.member(name).is_some_and(|m| {
                    let horizon = match m.state {
                        State::Left => self.config.left_reap_after,
                        _ => self.config.dead_reap_after,
                    };
                    now.saturating_sub(m.state_since) >= horizon
                })
            })
            .cloned()
            .collect();
        for name in expired {
            if let Some(i) = self.index.get(&self.members, &name) {
                self.remove(i);
                self.notify(Notification::Reaped(name));
            }
        }
        // Try one failed member: if it is alive on the other side of a healed partition, the
        // digest exchange that follows merges the two views.
        let dead: Vec<u32> = self
            .gone
            .iter()
            .filter_map(|name| self.index.get(&self.members, name))
            .filter(|&i| self.members[i as usize].state == State::Dead)
            .collect();
        if !dead.is_empty() {
            let pick = dead[self.rng.below(dead.len() as u64) as usize];
            let addr = self.members[pick as usize].addr;
            let digest = StreamMessage::Digest {
                digest: self.digest(),
                members: self.members.len() as u32 + 1,
            };
            self.send_stream(addr, &digest);
        }
    }

    fn remove(&mut self, i: u32) {
        let m = &self.members[i as usize];
        self.digest =
            self.digest
                .wrapping_sub(digest_of(&m.name, m.generation, m.incarnation, m.state));
        if m.state.is_reachable() {
            self.reachable -= 1;
        }
        let name = m.name.clone();
        self.gone.remove(&name);
        self.flappers.remove(&name);
        self.index.remove(&self.members, i);
        let last = self.members.len() as u32 - 1;
        if i != last {
            self.index.relocate(&self.members, last, i);
        }
        self.members.swap_remove(i as usize);
        self.order_dirty = true;
    }

    // ------------------------------------------------------------------------ sending

    fn self_record(&self) -> Update {
        match self.self_state {
            SelfState::Alive => Update::Alive {
                name: self.me.clone(),
                addr: self.addr,
                generation: self.generation,
                incarnation: self.incarnation,
                meta: self.meta.clone(),
            },
            SelfState::Leaving => Update::Left {
                name: self.me.clone(),
                generation: self.generation,
                incarnation: self.incarnation,
            },
        }
    }

    fn queue_member_update(&mut self, update: &Update) {
        if let Some(name) = update.member() {
            self.broadcasts
                .push(Subject::Member(name.clone()), wire::encode_update(update));
        }
    }

    fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() && self.events.is_empty() {
            return;
        }
        for i in self.random_members(self.config.gossip_fanout, None) {
            let addr = self.members[i as usize].addr;
            self.send_packet(addr, &Message::Gossip, None);
        }
    }

    /// Sends a datagram with as many piggybacked updates as fit; when `buddy` names a
    /// suspected member, its suspicion goes first (Lifeguard's buddy system).
    fn send_packet(&mut self, to: Addr, message: &Message, buddy: Option<&Name>) {
        let mut updates: Vec<Vec<u8>> = Vec::new();
        let mut budget = self
            .config
            .max_packet
            .saturating_sub(wire::packet_overhead(&self.me, message));
        let mut exclude = None;
        if let Some(name) = buddy
            && self.config.lifeguard
            && let Some(m) = self.member(name)
            && m.state == State::Suspect
        {
            let suspect = wire::encode_update(&m.record(&self.me));
            budget = budget.saturating_sub(suspect.len() + 2);
            updates.push(suspect);
            exclude = Some(Subject::Member(name.clone()));
        }
        let limit = self.config.retransmit_limit(self.cluster_size());
        let before = updates.len();
        self.broadcasts
            .take(budget, 255, limit, exclude.as_ref(), &mut updates);
        let used: usize = updates[before..].iter().map(|u| u.len() + 2).sum();
        // User events only get the room membership updates left over.
        self.events
            .take(budget.saturating_sub(used), 255, limit, None, &mut updates);
        let refs: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
        let bytes = wire::encode_packet(&self.me, message, &refs);
        self.stats.packets_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.outputs.push(Output::Packet { to, bytes });
    }

    fn send_stream(&mut self, to: Addr, message: &StreamMessage) {
        let bytes = wire::encode_stream(&self.me, &self.addr, message);
        self.stats.streams_out += 1;
        self.stats.stream_bytes_out += bytes.len() as u64;
        self.outputs.push(Output::Stream { to, bytes });
    }

    fn set_timer(&mut self, at: u64, timer: Timer) {
        self.outputs.push(Output::Timer { at, timer });
    }

    fn notify(&mut self, n: Notification) {
        self.outputs.push(Output::Notify(n));
    }

    fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn next_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Up to `k` distinct random reachable members, excluding `exclude`.
    fn random_members(&mut self, k: usize, exclude: Option<u32>) -> Vec<u32> {
        let n = self.members.len();
        let mut out = Vec::with_capacity(k);
        if n == 0 || k == 0 {
            return out;
        }
        let available = self.reachable
            - usize::from(exclude.is_some_and(|e| self.members[e as usize].state.is_reachable()));
        let want = k.min(available);
        let mut tries = 0;
        while out.len() < want && tries < 8 * k + 16 {
            tries += 1;
            let i = self.rng.below(n as u64) as u32;
            if Some(i) != exclude
                && self.members[i as usize].state.is_reachable()
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        if out.len() < want {
            // Sparse table (many failed members): fall back to a scan.
            for i in 0..n as u32 {
                if out.len() >= want {
                    break;
                }
                if Some(i) != exclude
                    && self.members[i as usize].state.is_reachable()
                    && !out.contains(&i)
                {
                    out.push(i);
                }
            }
        }
        out
    }

    // ------------------------------------------------------------------------ invariants

    /// Checks internal consistency; the simulator calls it after every input.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.index.len(),
            self.members.len(),
            "index and table sizes differ"
        );
        assert!(
            self.index.get(&self.members, &self.me).is_none(),
            "a node never lists itself"
        );
        let mut digest = 0u64;
        let mut reachable = 0;
        for (i, m) in self.members.iter().enumerate() {
            assert_eq!(
                self.index.get(&self.members, &m.name),
                Some(i as u32),
                "index of {} is wrong",
                m.name
            );
            digest = digest.wrapping_add(digest_of(&m.name, m.generation, m.incarnation, m.state));
            reachable += usize::from(m.state.is_reachable());
            if m.state == State::Suspect && self.suspicions.contains_key(&m.name) {
                assert!(self.suspicions[&m.name].deadline >= self.suspicions[&m.name].started);
            }
        }
        for name in self.suspicions.keys() {
            assert_eq!(
                self.member(name).map(|m| m.state),
                Some(State::Suspect),
                "suspicion without suspect state: {name}"
            );
        }
        assert_eq!(digest, self.digest, "incremental digest drifted");
        assert_eq!(reachable, self.reachable, "reachable count drifted");
        assert_eq!(
            self.gone.len(),
            self.members.len() - reachable,
            "gone set drifted"
        );
        if !self.order_dirty {
            let mut order = self.probe_order.clone();
            order.sort_unstable();
            assert_eq!(order.pop(), Some(SELF), "probe order lacks this node");
            assert!(
                order.iter().copied().eq(0..self.members.len() as u32),
                "probe order is not a permutation"
            );
            assert_eq!(self.probe_order[self.self_pos], SELF);
        }
        assert!(
            self.awareness < self.config.awareness_max.max(1),
            "awareness out of range"
        );
        self.broadcasts.check_invariants();
        self.events.check_invariants();
    }
}
