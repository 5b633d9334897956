//! The membership runtime: binds the sans-IO SWIM core (`colony-swim`) to a UDP socket and a
//! TCP listener on one port, tokio timers and the wall clock. One task owns the core; the rest
//! of the agent talks to it through [`Gossip`] (commands) and reads a published view.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use colony_swim::{Addr, Config, Meta, Name, Notification, Output, State, Swim, Timer, UserEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::keyring::{Keyring, KeyringError, parse_key};

/// The keyring shared by the membership task (which seals and opens) and the API (which
/// rotates keys).
type SharedKeyring = Arc<RwLock<Option<Keyring>>>;

/// The internal user event that carries a keyring operation to every member (sealed with
/// the gossip key, like all gossip).
pub const KEYRING_EVENT: &str = "_colony-keyring";
/// User events whose name starts with this are colony's own, hidden from `/v1/event/list`.
pub const INTERNAL_EVENT_PREFIX: &str = "_colony-";
/// Member tag listing the fingerprints of the member's gossip keys, primary first.
pub const TAG_KEYS: &str = "keys";

/// Largest stream frame accepted (a full state of ~100,000 members).
pub const MAX_STREAM_FRAME: usize = 8 << 20;
/// How long a stream connection may take to deliver its frame.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Membership settings of an agent.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's name.
    pub node_name: String,
    /// Where to listen (UDP and TCP, same port; port 0 picks one).
    pub bind: SocketAddr,
    /// The address other members reach this node at (its port is replaced by the bound port
    /// when `bind` asked for port 0).
    pub advertise: IpAddr,
    /// Metadata: role, zone, tags.
    pub meta: Meta,
    /// Protocol parameters.
    pub swim: Config,
    /// Gossip encryption keys (`None`: gossip in the clear).
    pub keyring: Option<Keyring>,
    /// Where keyring changes are saved (`None`: not persisted).
    pub keyring_file: Option<std::path::PathBuf>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Binding the gossip port failed.
    #[error("cannot bind gossip port {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The advertised address is not one other nodes can send to.
    #[error(
        "cannot advertise {0}: other nodes cannot reach an unspecified address; pass --advertise with a routable IP"
    )]
    Unspecified(IpAddr),
    /// The node name is unusable.
    #[error("invalid node name {0:?}: 1 to 128 bytes")]
    Name(String),
}

/// One member as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Belief.
    pub state: State,
    /// Incarnation.
    pub incarnation: u32,
    /// Generation (start-up time of that process, µs since the epoch).
    pub generation: u64,
    /// Metadata.
    pub meta: Meta,
    /// When this node adopted the belief (ms since the Unix epoch).
    pub since_ms: u64,
}

/// What the membership layer publishes after every change.
#[derive(Debug, Clone, Default)]
pub struct GossipView {
    /// This node.
    pub local: Option<MemberInfo>,
    /// Every other member known.
    pub members: Vec<MemberInfo>,
    /// Lifeguard's awareness score.
    pub awareness: u32,
    /// Recent user events, oldest first.
    pub events: Vec<UserEvent>,
    /// Whether this node is leaving.
    pub leaving: bool,
    /// Counters.
    pub stats: colony_swim::Stats,
    /// Datagrams or frames that could not be decoded.
    pub decode_errors: u64,
}

/// A membership change the agent may act on (catalog reconciliation, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member is alive (joined, rejoined, refuted).
    Alive(String),
    /// A member failed.
    Failed(String),
    /// A member left.
    Left(String),
    /// A member was forgotten.
    Reaped(String),
}

/// A keyring operation, as Consul's `/v1/operator/keyring` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringOp {
    /// Accept messages sealed with this key.
    Install,
    /// Seal outgoing messages with this key.
    Use,
    /// Stop accepting this key.
    Remove,
}

enum GossipCommand {
    Join(Vec<SocketAddr>, oneshot::Sender<bool>),
    Leave(oneshot::Sender<()>),
    ForceLeave(String, oneshot::Sender<bool>),
    Fire(String, Vec<u8>, oneshot::Sender<Result<UserEvent, String>>),
}

impl KeyringOp {
    fn as_str(self) -> &'static str {
        match self {
            KeyringOp::Install => "install",
            KeyringOp::Use => "use",
            KeyringOp::Remove => "remove",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "install" => Some(KeyringOp::Install),
            "use" => Some(KeyringOp::Use),
            "remove" => Some(KeyringOp::Remove),
            _ => None,
        }
    }
}

/// Applies a keyring operation and saves the keyring if it is persisted (undoing the change
/// if saving fails; the error names the file). `lenient` is for operations heard from other
/// members, which may arrive out of order: `use` installs the key first, and removing a key
/// that is absent or primary here is a no-op.
fn change_keyring(
    keyring: &SharedKeyring,
    file: Option<&std::path::Path>,
    op: KeyringOp,
    key: [u8; 32],
    lenient: bool,
) -> Result<(), String> {
    let mut guard = keyring.write().expect("keyring lock");
    let ring = guard.as_mut().ok_or_else(|| {
        "gossip encryption is not enabled on this agent (start it with --encrypt)".to_string()
    })?;
    let before = ring.clone();
    match op {
        KeyringOp::Install => {
            ring.install(key);
            Ok(())
        }
        KeyringOp::Use => {
            if lenient {
                ring.install(key);
            }
            ring.use_key(key)
        }
        KeyringOp::Remove if lenient && ring.holds(&key) != Some(false) => Ok(()),
        KeyringOp::Remove => ring.remove(key),
    }
    .map_err(|e: KeyringError| e.to_string())?;
    if ring.generation() != before.generation()
        && let Some(path) = file
        && let Err(error) = crate::keyring::save_keyring(path, ring)
    {
        *ring = before;
        return Err(error.to_string());
    }
    Ok(())
}

/// Handle on the running membership layer.
#[derive(Debug)]
pub struct Gossip {
    commands: mpsc::Sender<GossipCommand>,
    view: Arc<RwLock<GossipView>>,
    changes: watch::Receiver<u64>,
    events: tokio::sync::broadcast::Sender<MemberEvent>,
    local_addr: SocketAddr,
    keyring: SharedKeyring,
    keyring_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for GossipCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipCommand")
    }
}

/// Converts a socket address for the core.
pub fn to_addr(a: SocketAddr) -> Addr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Addr {
        ip: ip.octets(),
        port: a.port(),
    }
}

/// Converts a core address to a socket address.
pub fn to_socket(a: Addr) -> SocketAddr {
    match a.as_v4() {
        Some(v4) => SocketAddr::from((v4, a.port)),
        None => SocketAddr::from((Ipv6Addr::from(a.ip), a.port)),
    }
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn os_seed() -> u64 {
    let mut buf = [0u8; 8];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
    {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => wall_us() ^ u64::from(std::process::id()),
    }
}

impl Gossip {
    /// Binds the gossip port and starts the membership task.
    pub async fn start(config: GossipConfig) -> Result<Arc<Gossip>, GossipError> {
        if config.advertise.is_unspecified() {
            return Err(GossipError::Unspecified(config.advertise));
        }
        if config.node_name.is_empty() || config.node_name.len() > colony_swim::wire::MAX_NAME_LEN {
            return Err(GossipError::Name(config.node_name.clone()));
        }
        let (udp, tcp) = bind_pair(config.bind).await?;
        let port = udp
            .local_addr()
            .map_err(|source| GossipError::Bind {
                addr: config.bind,
                source,
            })?
            .port();
        let local_addr = SocketAddr::new(config.advertise, port);
        let generation = wall_us();
        // The first announcement already names the keys.
        let mut meta = config.meta.clone();
        if let Some(ring) = &config.keyring {
            meta.tags
                .insert(TAG_KEYS.to_string(), ring.fingerprints().join(","));
        }
        let keyring_tagged = config.keyring.as_ref().map(Keyring::generation);
        let swim = Swim::new(
            config.swim.clone(),
            &config.node_name,
            to_addr(local_addr),
            generation,
            meta,
            os_seed(),
        );
        let (commands, command_rx) = mpsc::channel(64);
        let (changes_tx, changes) = watch::channel(0);
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let view = Arc::new(RwLock::new(GossipView::default()));
        let keyring: SharedKeyring = Arc::new(RwLock::new(config.keyring));
        let (frames_tx, frames_rx) = mpsc::channel(256);
        tokio::spawn(accept_streams(tcp, frames_tx));
        let mut driver = Driver {
            swim,
            udp: Arc::new(udp),
            epoch: Instant::now(),
            base_us: wall_us(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view: view.clone(),
            changes: changes_tx,
            events: events.clone(),
            joins: Vec::new(),
            leave_waiters: Vec::new(),
            decode_errors: 0,
            published_at: Instant::now(),
            keyring: keyring.clone(),
            keyring_file: config.keyring_file.clone(),
            keyring_tagged,
            pending_events: Vec::new(),
        };
        // The view names this member before anyone can ask (the API serves right after).
        driver.publish();
        tokio::spawn(driver.run(command_rx, frames_rx));
        tracing::info!(bind = %config.bind, advertise = %local_addr, "gossip listening (udp+tcp)");
        Ok(Arc::new(Gossip {
            commands,
            view,
            changes,
            events,
            local_addr,
            keyring,
            keyring_file: config.keyring_file,
        }))
    }

    /// The keyring's keys, primary first; `None` when gossip is not encrypted.
    pub fn keyring_list(&self) -> Option<Vec<String>> {
        self.keyring
            .read()
            .expect("keyring lock")
            .as_ref()
            .map(Keyring::list)
    }

    /// The fingerprints of this agent's keys, primary first; `None` when gossip is not
    /// encrypted.
    pub fn keyring_fingerprints(&self) -> Option<Vec<String>> {
        self.keyring
            .read()
            .expect("keyring lock")
            .as_ref()
            .map(Keyring::fingerprints)
    }

    /// Applies a keyring operation (`install`, `use` or `remove`) with a base64 key, and saves
    /// the keyring if it is persisted. If saving fails the change is undone and the error
    /// names the file.
    pub fn keyring_change(&self, op: KeyringOp, key: &str) -> Result<(), String> {
        let key = parse_key(key).map_err(|e| e.to_string())?;
        change_keyring(&self.keyring, self.keyring_file.as_deref(), op, key, false)
    }

    /// Tells every member to apply a keyring operation this agent has applied, by an internal
    /// user event (sealed with the current primary key, as all gossip is).
    ///
    /// # Errors
    /// The event could not be fired (membership is stopping).
    pub async fn keyring_announce(&self, op: KeyringOp, key: &str) -> Result<(), String> {
        let payload = format!("{} {key}", op.as_str());
        self.fire_event(KEYRING_EVENT, payload.into_bytes())
            .await
            .map(|_| ())
    }

    /// The advertised gossip address (with the bound port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The current view.
    pub fn view(&self) -> GossipView {
        self.view.read().expect("gossip view lock").clone()
    }

    /// A receiver that changes whenever the view changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Membership events (alive, failed, left, reaped).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Joins through `seeds`; true once one of them answered with its view, false if none
    /// did within 5 s.
    pub async fn join(&self, seeds: Vec<SocketAddr>) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(GossipCommand::Join(seeds, tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Announces departure and waits (≤ 3 s) until it has been gossiped.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(GossipCommand::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }

    /// Marks a failed member as left; false if it is unknown or not failed.
    pub async fn force_leave(&self, name: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(GossipCommand::ForceLeave(name.to_string(), tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Fires a user event.
    pub async fn fire_event(&self, name: &str, payload: Vec<u8>) -> Result<UserEvent, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(GossipCommand::Fire(name.to_string(), payload, tx))
            .await
            .map_err(|_| "membership layer stopped".to_string())?;
        rx.await
            .map_err(|_| "membership layer stopped".to_string())?
    }
}

async fn bind_pair(bind: SocketAddr) -> Result<(UdpSocket, TcpListener), GossipError> {
    let err = |source| GossipError::Bind { addr: bind, source };
    // With port 0, the UDP socket picks a port and TCP must get the same one: retry a few
    // times if another process holds the TCP side.
    for _ in 0..16 {
        let udp = UdpSocket::bind(bind).await.map_err(err)?;
        let port = udp.local_addr().map_err(err)?.port();
        match TcpListener::bind(SocketAddr::new(bind.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if bind.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    )))
}

async fn accept_streams(tcp: TcpListener, frames: mpsc::Sender<Vec<u8>>) {
    loop {
        let Ok((conn, peer)) = tcp.accept().await else {
            continue;
        };
        let frames = frames.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(STREAM_TIMEOUT, read_frame(conn)).await {
                Ok(Ok(frame)) => {
                    let _ = frames.send(frame).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "dropping gossip stream"),
                Err(_) => tracing::debug!(%peer, "gossip stream timed out"),
            }
        });
    }
}

async fn read_frame(mut conn: TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u32().await? as usize;
    if len > MAX_STREAM_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("stream frame of {len} bytes exceeds {MAX_STREAM_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn send_frame(to: SocketAddr, bytes: Vec<u8>) {
    let attempt = async {
        let mut conn = TcpStream::connect(to).await?;
        conn.write_u32(bytes.len() as u32).await?;
        conn.write_all(&bytes).await?;
        conn.shutdown().await
    };
    match tokio::time::timeout(STREAM_TIMEOUT, attempt).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%to, error = %e, "gossip stream send failed"),
        Err(_) => tracing::debug!(%to, "gossip stream send timed out"),
    }
}

struct Driver {
    swim: Swim,
    udp: Arc<UdpSocket>,
    epoch: Instant,
    base_us: u64,
    timers: BinaryHeap<Reverse<(u64, u64, Timer)>>,
    timer_seq: u64,
    view: Arc<RwLock<GossipView>>,
    changes: watch::Sender<u64>,
    events: tokio::sync::broadcast::Sender<MemberEvent>,
    /// Pending joins: answered `true` at the next completed state exchange, dropped (read as
    /// `false`) at their deadline.
    joins: Vec<(Instant, oneshot::Sender<bool>)>,
    leave_waiters: Vec<oneshot::Sender<()>>,
    decode_errors: u64,
    published_at: Instant,
    keyring: SharedKeyring,
    keyring_file: Option<std::path::PathBuf>,
    /// The keyring generation the `keys` tag was last computed from.
    keyring_tagged: Option<u64>,
    /// Membership events waiting for the view that explains them to be published.
    pending_events: Vec<MemberEvent>,
}

impl Driver {
    /// The core's clock: wall-clock µs at start-up plus monotonic time since. Monotonic within
    /// the process, and shared across agents to the precision of their wall clocks, which is
    /// what coordinated probing needs (every agent derives the same probe slot from it).
    fn now(&self) -> u64 {
        self.base_us + self.epoch.elapsed().as_micros() as u64
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<GossipCommand>,
        mut frames: mpsc::Receiver<Vec<u8>>,
    ) {
        let now = self.now();
        self.swim.start(now);
        self.flush().await;
        let mut buf = vec![0u8; 65_536];
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let sleep_until = next_timer.map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |at| self.epoch + Duration::from_micros(at.saturating_sub(self.base_us)),
            );
            tokio::select! {
                received = self.udp.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received {
                        let now = self.now();
                        let result = match self.open(&buf[..len]) {
                            Ok(plain) => self.swim.handle_packet(now, to_addr(from), &plain).map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        if let Err(e) = result {
                            self.decode_errors += 1;
                            tracing::debug!(%from, error = %e, "dropping gossip packet");
                        }
                    }
                }
                Some(frame) = frames.recv() => {
                    let now = self.now();
                    let result = match self.open(&frame) {
                        Ok(plain) => self.swim.handle_stream(now, &plain).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = result {
                        self.decode_errors += 1;
                        tracing::debug!(error = %e, "dropping gossip stream frame");
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.command(command);
                }
                () = tokio::time::sleep_until(sleep_until) => {
                    let now = self.now();
                    while let Some(Reverse((at, _, _))) = self.timers.peek() {
                        if *at > now {
                            break;
                        }
                        let Some(Reverse((_, _, timer))) = self.timers.pop() else { break };
                        self.swim.handle_timer(now, timer);
                    }
                }
            }
            self.refresh_keyring_tag();
            self.flush().await;
        }
    }

    /// Announces this member's key fingerprints (tag `keys`) whenever the keyring changed.
    fn refresh_keyring_tag(&mut self) {
        let (generation, fingerprints) = match self.keyring.read().expect("keyring lock").as_ref() {
            Some(ring) if Some(ring.generation()) != self.keyring_tagged => {
                (ring.generation(), ring.fingerprints())
            }
            _ => return,
        };
        let mut meta = (**self.swim.meta()).clone();
        meta.tags
            .insert(TAG_KEYS.to_string(), fingerprints.join(","));
        match self.swim.set_meta(self.now(), meta) {
            Ok(()) => self.keyring_tagged = Some(generation),
            Err(error) => {
                tracing::warn!(error, "cannot announce the keyring's fingerprints");
                self.keyring_tagged = Some(generation);
            }
        }
    }

    /// Applies a keyring operation another member announced.
    fn apply_keyring_event(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split_whitespace();
        let (Some(op), Some(key)) = (words.next().and_then(KeyringOp::parse), words.next()) else {
            tracing::warn!(payload = %text, "malformed keyring event ignored");
            return;
        };
        let result = parse_key(key).map_err(|e| e.to_string()).and_then(|key| {
            change_keyring(&self.keyring, self.keyring_file.as_deref(), op, key, true)
        });
        match result {
            Ok(()) => tracing::info!(
                op = op.as_str(),
                "keyring changed by a member's announcement"
            ),
            Err(error) => {
                tracing::warn!(%error, op = op.as_str(), "keyring announcement not applied")
            }
        }
        self.refresh_keyring_tag();
    }

    /// Opens an incoming message: decrypts it when gossip is encrypted.
    fn open<'a>(&self, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, KeyringError> {
        match self.keyring.read().expect("keyring lock").as_ref() {
            Some(ring) => ring.open(bytes).map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(bytes)),
        }
    }

    /// Seals an outgoing message when gossip is encrypted.
    fn seal(&self, bytes: Vec<u8>) -> Vec<u8> {
        match self.keyring.read().expect("keyring lock").as_ref() {
            Some(ring) => ring.seal(&bytes),
            None => bytes,
        }
    }

    fn command(&mut self, command: GossipCommand) {
        let now = self.now();
        match command {
            GossipCommand::Join(seeds, reply) => {
                let addrs: Vec<Addr> = seeds.iter().map(|s| to_addr(*s)).collect();
                self.swim.join(now, &addrs);
                self.joins
                    .push((Instant::now() + Duration::from_secs(5), reply));
            }
            GossipCommand::Leave(reply) => {
                self.swim.leave(now);
                self.leave_waiters.push(reply);
            }
            GossipCommand::ForceLeave(name, reply) => {
                let _ = reply.send(self.swim.force_leave(now, &name));
            }
            GossipCommand::Fire(name, payload, reply) => {
                let id = uuid_from(os_seed(), os_seed());
                let result = self
                    .swim
                    .fire_event(now, id.clone(), name, payload)
                    .map_err(str::to_string)
                    .and_then(|_| {
                        self.swim
                            .recent_events()
                            .find(|e| e.id == id)
                            .cloned()
                            .ok_or_else(|| "event lost".to_string())
                    });
                let _ = reply.send(result);
            }
        }
    }

    async fn flush(&mut self) {
        let mut changed = false;
        for out in self.swim.drain_outputs() {
            match out {
                Output::Packet { to, bytes } => {
                    let bytes = self.seal(bytes);
                    let _ = self.udp.send_to(&bytes, to_socket(to)).await;
                }
                Output::Stream { to, bytes } => {
                    let bytes = self.seal(bytes);
                    tokio::spawn(send_frame(to_socket(to), bytes));
                }
                Output::Timer { at, timer } => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse((at, self.timer_seq, timer)));
                }
                Output::Notify(note) => {
                    changed = true;
                    self.notify(note);
                }
            }
        }
        let now = Instant::now();
        self.joins.retain(|(deadline, _)| *deadline > now);
        if self.swim.self_state() == colony_swim::SelfState::Leaving && self.swim.leave_propagated()
        {
            for w in self.leave_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        let stale = self
            .view
            .read()
            .map(|v| v.local.is_none() || v.decode_errors != self.decode_errors)
            .unwrap_or(true);
        // Counters move with every packet: refresh them at least once a second.
        let old = self.published_at.elapsed() >= Duration::from_secs(1);
        if changed || stale || old {
            self.publish();
        }
        // Subscribers (catalog reconciliation) read the view: send events only after it.
        for event in self.pending_events.drain(..) {
            let _ = self.events.send(event);
        }
    }

    fn notify(&mut self, note: Notification) {
        let info = |swim: &Swim, name: &Name| swim.member(name).map(|m| to_socket(m.addr));
        match note {
            Notification::Up(name) => {
                let addr = info(&self.swim, &name).map_or_else(String::new, |a| a.to_string());
                tracing::info!(member = %name, %addr, "member alive");
                self.pending_events
                    .push(MemberEvent::Alive(name.to_string()));
            }
            Notification::Updated(name) => tracing::debug!(member = %name, "member updated"),
            Notification::Suspect(name) => tracing::info!(member = %name, "member suspected"),
            Notification::Failed(name) => {
                tracing::warn!(member = %name, "member failed");
                self.pending_events
                    .push(MemberEvent::Failed(name.to_string()));
            }
            Notification::Left(name) => {
                tracing::info!(member = %name, "member left");
                self.pending_events
                    .push(MemberEvent::Left(name.to_string()));
            }
            Notification::Reaped(name) => {
                tracing::info!(member = %name, "member reaped");
                self.pending_events
                    .push(MemberEvent::Reaped(name.to_string()));
            }
            Notification::Refuted { incarnation } => {
                tracing::info!(incarnation, "refuted a suspicion of this node");
            }
            Notification::Synced(from) => {
                tracing::debug!(peer = %from, "state exchange completed");
                for (_, reply) in self.joins.drain(..) {
                    let _ = reply.send(true);
                }
            }
            Notification::Event(e) if e.name == KEYRING_EVENT => {
                self.apply_keyring_event(&e.payload);
            }
            Notification::Event(e) => {
                tracing::info!(event = %e.name, ltime = e.ltime, "user event")
            }
            Notification::NameConflict { addr } => {
                tracing::error!(other = %to_socket(addr), "another node claims this node's name with a newer generation");
            }
        }
    }

    fn publish(&mut self) {
        let wall_now = wall_us() / 1000;
        let mono_now = self.now();
        let since =
            |state_since: u64| wall_now.saturating_sub(mono_now.saturating_sub(state_since) / 1000);
        let swim = &self.swim;
        let view = GossipView {
            local: Some(MemberInfo {
                name: swim.name().to_string(),
                addr: to_socket(swim.addr()),
                state: if swim.self_state() == colony_swim::SelfState::Leaving {
                    State::Left
                } else {
                    State::Alive
                },
                incarnation: swim.incarnation(),
                generation: swim.generation(),
                meta: (**swim.meta()).clone(),
                since_ms: wall_now,
            }),
            members: swim
                .members()
                .iter()
                .map(|m| MemberInfo {
                    name: m.name.to_string(),
                    addr: to_socket(m.addr),
                    state: m.state,
                    incarnation: m.incarnation,
                    generation: m.generation,
                    meta: (*m.meta).clone(),
                    since_ms: since(m.state_since),
                })
                .collect(),
            awareness: swim.awareness(),
            events: swim.recent_events().cloned().collect(),
            leaving: swim.self_state() == colony_swim::SelfState::Leaving,
            stats: swim.stats(),
            decode_errors: self.decode_errors,
        };
        if let Ok(mut v) = self.view.write() {
            *v = view;
        }
        self.changes.send_modify(|n| *n += 1);
        self.published_at = Instant::now();
    }
}

fn uuid_from(a: u64, b: u64) -> String {
    colony_base::SplitMix64::new(a ^ b.rotate_left(17)).uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Announcements may arrive out of order: a member applies them leniently, while the
    /// agent the operator talks to applies them strictly.
    #[test]
    fn keyring_announcements_apply_leniently_and_operator_requests_strictly() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ring: SharedKeyring = Arc::new(RwLock::new(Some(Keyring::new(a))));
        // `use` before its `install` arrived: installs, then uses.
        assert_eq!(
            change_keyring(&ring, None, KeyringOp::Use, b, false).ok(),
            None
        );
        change_keyring(&ring, None, KeyringOp::Use, b, true).expect("lenient use");
        let prints = ring
            .read()
            .expect("lock")
            .as_ref()
            .map(Keyring::fingerprints);
        assert_eq!(
            prints.and_then(|p| p.first().cloned()),
            Some(crate::keyring::fingerprint(&b))
        );
        // Removing the primary or an absent key: refused when asked, ignored when heard.
        assert!(change_keyring(&ring, None, KeyringOp::Remove, b, false).is_err());
        change_keyring(&ring, None, KeyringOp::Remove, b, true).expect("ignored");
        change_keyring(&ring, None, KeyringOp::Remove, [3u8; 32], true).expect("ignored");
        change_keyring(&ring, None, KeyringOp::Remove, a, true).expect("old key removed");
        assert_eq!(
            ring.read().expect("lock").as_ref().map(|r| r.list().len()),
            Some(1)
        );
        // Without encryption there is nothing to change.
        let plain: SharedKeyring = Arc::new(RwLock::new(None));
        assert!(change_keyring(&plain, None, KeyringOp::Install, a, true).is_err());
    }
}
