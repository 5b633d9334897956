//! The internal RPC port of a server (`--rpc-addr`, Consul's 8300): Raft messages between
//! servers, requests other servers forward to the leader (writes, read barriers, session
//! renewals), and the HTTP API requests client agents forward to a server.
//!
//! Every frame is a `u32` little-endian length, then a version byte and the postcard encoding
//! of an [`RpcFrame`]. A connection carries one of two conversations, chosen by its first
//! frame:
//! - `RaftHello { from, to }`, then Raft messages from `from`, one way. Each server keeps one
//!   such connection to each peer and drops messages while it is down (Raft retransmits).
//! - `Request` frames, each answered by a `Response` with the same id, in any order.
//!
//! A garbage, oversized or truncated frame closes its connection with a log line; nothing
//! else is affected.

use crate::raft_node::ClusterError;
use colony_raft::{Envelope, Message};
use colony_store::{Command, Outcome, Session};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The largest frame accepted (a snapshot of a large state travels in one frame).
pub const RPC_FRAME_BYTES_MAX: usize = 256 << 20;
const RPC_FORMAT_VERSION: u8 = 1;
/// Raft messages queued per peer at most; more are dropped (Raft retransmits).
const PEER_QUEUE_MAX: usize = 4_096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// One frame on the RPC port.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RpcFrame {
    /// Opens a stream of Raft messages from `from` to `to`.
    RaftHello { from: u64, to: u64 },
    /// One Raft message on such a stream.
    Raft(Message),
    /// A request to the receiving server.
    Request { id: u64, request: RpcRequest },
    /// The answer to the request with the same id.
    Response {
        id: u64,
        response: Result<RpcResponse, ClusterError>,
    },
}

/// What one server asks another (in practice: its leader).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Propose a command and answer once it is committed and applied.
    Propose(Box<Command>),
    /// Confirm leadership and answer the commit index a linearizable read must wait for.
    /// Servers now ask through Raft itself (`colony_raft::Message::ReadIndex`, which also
    /// counts as the asker's acknowledgement); still answered for servers that send it.
    ReadIndex,
    /// Restart a session's TTL (the leader measures TTLs).
    RenewSession(String),
    /// Whether the receiver is already part of a cluster (asked before bootstrapping).
    Membership,
    /// How the receiver's disk is doing: its recent fsync latencies (any server answers).
    DiskStats,
    /// An HTTP API request a client agent forwards; any server serves it.
    Http(Box<ForwardedHttp>),
    /// A client agent's checks: answered once the checks table's index differs from
    /// `min_index` (or after a minute), by any server, from its own state.
    NodeChecks {
        /// The client's node.
        node: String,
        /// The index the client last saw (0 at first).
        min_index: u64,
    },
    /// A check result or a deregistration from a client agent's check runners; any server
    /// proposes it (only `CheckUpdate` and `CatalogDeregister` are accepted).
    Submit(Box<Command>),
    /// How long until a session expires unless renewed, as the leader's TTL tracker says.
    SessionRemaining(String),
    /// The index a default-consistency read must wait for: inside its lease the leader
    /// answers its applied index at once (what it would read itself), else it confirms its
    /// leadership with a quorum as for [`RpcRequest::ReadIndex`]. Answered with
    /// `RpcResponse::ReadIndex`.
    LeaseReadIndex,
    /// The index a linearizable read on the asking server must wait for, asked in `term` by
    /// the voter `from` (which counts as its acknowledgement of the leader, as
    /// `colony_raft::Message::ReadIndex` does): the leader answers from what its Raft thread
    /// published when the rule allows (read_gate.rs), else it confirms its leadership with a
    /// quorum. Answered with `RpcResponse::ReadIndex`.
    FollowerReadIndex {
        /// The asker's term when its reads had arrived.
        term: u64,
        /// The asker's Raft id.
        from: u64,
    },
    /// Whether the receiver is still in `term`, asked by that term's leader before it serves
    /// its own linearizable reads (read_gate.rs). Answered with
    /// `RpcResponse::TermConfirmed`.
    ConfirmTerm {
        /// The asking leader's term when its reads had arrived.
        term: u64,
    },
}

/// An HTTP API request forwarded by a client agent, served by the receiving server as if
/// it had arrived on its own HTTP port, except that agent endpoints act for `origin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedHttp {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Request headers (hop-by-hop headers removed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The client agent the request came through.
    pub origin: OriginNode,
}

/// The client agent a forwarded request came through: `/v1/agent/*` endpoints act on its
/// node, as they would on that agent in Consul.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginNode {
    /// Node name.
    pub name: String,
    /// The address it advertises.
    pub address: String,
}

/// A server's answer to a [`ForwardedHttp`] request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpAnswer {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RpcResponse {
    /// The command was applied at `index` with this outcome.
    Applied {
        /// Log index.
        index: u64,
        /// What the state machine said.
        outcome: Outcome,
    },
    /// The index to wait for.
    ReadIndex(u64),
    /// The renewed session, or `None` if it does not exist.
    Renewed(Option<Session>),
    /// Whether the server has a cluster configuration.
    Membership {
        /// See the variant.
        is_member: bool,
    },
    /// The receiver's recent fsync latencies.
    DiskStats {
        /// Samples in its window.
        samples: u32,
        /// Their 99th percentile, in microseconds.
        p99_us: u64,
    },
    /// The answer to a forwarded HTTP request.
    Http(Box<HttpAnswer>),
    /// A node's checks (with their definitions) and the checks table's index.
    NodeChecks {
        /// The checks table's index.
        index: u64,
        /// The checks.
        checks: Vec<colony_store::Check>,
    },
    /// Milliseconds until a session expires on the leader, or `None` if it does not track it.
    SessionRemaining(Option<u64>),
    /// Whether the receiver's published Raft state is still in the asked term.
    TermConfirmed(bool),
}

/// Why a forwarded request has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The request never left: the target could not be reached. Safe to retry.
    #[error("cannot reach server {addr}: {detail}")]
    Unreachable {
        /// The target.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// The connection failed after the request was sent: it may or may not have been done.
    #[error(
        "lost the connection to server {0} before it answered; the request may or may not have been done"
    )]
    Lost(SocketAddr),
    /// The target answered with an error.
    #[error(transparent)]
    Remote(#[from] ClusterError),
}

fn encode_frame(frame: &RpcFrame) -> Vec<u8> {
    encode_frame_into(Vec::new(), frame)
}

/// `out` with `frame` appended.
fn encode_frame_into(mut out: Vec<u8>, frame: &RpcFrame) -> Vec<u8> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, RPC_FORMAT_VERSION]);
    let mut out = postcard::to_extend(frame, out).expect("encoding into a Vec cannot fail");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<RpcFrame>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > RPC_FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes (1 to {RPC_FRAME_BYTES_MAX} allowed)"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    if body[0] != RPC_FORMAT_VERSION {
        return Err(std::io::Error::other(format!(
            "unknown frame version {}",
            body[0]
        )));
    }
    let (frame, rest) = postcard::take_from_bytes::<RpcFrame>(&body[1..])
        .map_err(|e| std::io::Error::other(format!("malformed frame: {e}")))?;
    if !rest.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} trailing bytes after a frame",
            rest.len()
        )));
    }
    Ok(Some(frame))
}

/// Where each server's RPC port is, by Raft id: learned from membership.
#[derive(Debug, Default)]
pub struct ServerDirectory {
    servers: RwLock<HashMap<u64, ServerInfo>>,
}

/// One server as membership announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Node name.
    pub name: String,
    /// RPC address.
    pub rpc_addr: SocketAddr,
    /// Whether membership says it is alive.
    pub alive: bool,
    /// Where its etcd gRPC API listens (`http://IP:PORT`), if it serves one.
    pub grpc_url: Option<String>,
}

impl ServerDirectory {
    /// Records (or updates) a server.
    pub fn upsert(&self, id: u64, info: ServerInfo) {
        self.servers
            .write()
            .expect("directory lock poisoned")
            .insert(id, info);
    }

    /// The server with this id.
    pub fn get(&self, id: u64) -> Option<ServerInfo> {
        self.servers
            .read()
            .expect("directory lock poisoned")
            .get(&id)
            .cloned()
    }

    /// Every known server, by id.
    pub fn all(&self) -> Vec<(u64, ServerInfo)> {
        let mut all: Vec<(u64, ServerInfo)> = self
            .servers
            .read()
            .expect("directory lock poisoned")
            .iter()
            .map(|(id, info)| (*id, info.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

/// Outbound Raft message streams, one per peer.
///
/// The Raft thread writes a Ready's messages for a peer straight into that peer's socket
/// (one non-blocking write) whenever nothing is queued ahead of them, so that a message
/// costs no hand-off to another thread. Whatever the socket does not take at once, and
/// everything sent while the stream is connecting or while earlier bytes are still going
/// out, is queued for the peer's stream task, which writes it when the socket is ready.
/// Snapshots are always queued, and encoded by the task, not on the Raft thread.
pub(crate) struct Peers {
    local_id: u64,
    directory: Arc<ServerDirectory>,
    links: Mutex<HashMap<u64, Arc<PeerLink>>>,
    runtime: tokio::runtime::Handle,
    dropped: AtomicU64,
    /// Streams that ended because the peer closed them (its process ended or restarted).
    closed_by_peer: Counter,
}

/// One peer's outbound stream, shared by the Raft thread and the stream's task.
struct PeerLink {
    state: Mutex<LinkState>,
    /// Wakes the stream's task: something was queued, or the server is stopping.
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct LinkState {
    /// The connected stream's write half, once its hello was written.
    writer: Option<Arc<OwnedWriteHalf>>,
    /// What waits for the task, oldest first.
    queued: VecDeque<Outgoing>,
    /// Bytes of the first queued entry already written (a partial write).
    written_of_first: usize,
    /// The task is writing the queue: nobody else writes meanwhile.
    is_task_writing: bool,
    /// The server is stopping: the task ends.
    is_closed: bool,
}

/// Queued for a peer's stream task.
enum Outgoing {
    /// Frames, encoded.
    Encoded(Vec<u8>),
    /// A message for the task to encode (a snapshot: too large to encode on the Raft thread).
    Message(Box<Message>),
}

impl Peers {
    /// Streams to the servers in `directory`; `closed_by_peer` counts streams their peer
    /// closed.
    pub(crate) fn new(
        local_id: u64,
        directory: Arc<ServerDirectory>,
        closed_by_peer: Counter,
    ) -> Self {
        Peers {
            local_id,
            directory,
            links: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            dropped: AtomicU64::new(0),
            closed_by_peer,
        }
    }

    fn link(&self, to: u64) -> Arc<PeerLink> {
        let mut links = self.links.lock().expect("peers lock poisoned");
        links
            .entry(to)
            .or_insert_with(|| {
                let link = Arc::new(PeerLink {
                    state: Mutex::new(LinkState::default()),
                    wake: tokio::sync::Notify::new(),
                });
                let task_link = link.clone();
                let directory = self.directory.clone();
                let from = self.local_id;
                let closed = self.closed_by_peer.clone();
                self.runtime.spawn(async move {
                    run_peer_stream(from, to, directory, task_link, closed).await;
                });
                link
            })
            .clone()
    }

    /// Sends `message` to `to`; dropped if too much is queued for it already.
    #[cfg(test)]
    pub(crate) fn send(&self, to: u64, message: Message) {
        self.send_all(vec![Envelope { to, message }]);
    }

    /// Sends `envelopes`, each peer's in order: one write per peer when its socket takes
    /// them at once.
    pub(crate) fn send_all(&self, envelopes: Vec<Envelope>) {
        let mut by_peer: Vec<(u64, Vec<Message>)> = Vec::new();
        for Envelope { to, message } in envelopes {
            match by_peer.iter_mut().find(|(peer, _)| *peer == to) {
                Some((_, messages)) => messages.push(message),
                None => by_peer.push((to, vec![message])),
            }
        }
        for (to, messages) in by_peer {
            self.send_to(to, messages);
        }
    }

    fn send_to(&self, to: u64, messages: Vec<Message>) {
        let link = self.link(to);
        let has_snapshot = messages
            .iter()
            .any(|m| matches!(m, Message::InstallSnapshot { .. }));
        // A batch is queued as one entry, except one with a snapshot: one entry per message.
        let entries = if has_snapshot { messages.len() } else { 1 };
        let mut state = link.state.lock().expect("link lock poisoned");
        if state.queued.len() + entries > PEER_QUEUE_MAX {
            self.dropped
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            return;
        }
        if has_snapshot {
            state
                .queued
                .extend(messages.into_iter().map(|m| Outgoing::Message(Box::new(m))));
        } else {
            let bytes = messages.into_iter().fold(Vec::new(), |bytes, message| {
                encode_frame_into(bytes, &RpcFrame::Raft(message))
            });
            let written = match &state.writer {
                Some(writer) if state.queued.is_empty() && !state.is_task_writing => {
                    // Not writable now, or broken (the task finds out): queue it all.
                    writer.try_write(&bytes).unwrap_or(0)
                }
                _ => 0,
            };
            if written == bytes.len() {
                return;
            }
            if written > 0 {
                // The queue was empty: the rest of these bytes comes first.
                state.written_of_first = written;
            }
            state.queued.push_back(Outgoing::Encoded(bytes));
        }
        drop(state);
        link.wake.notify_one();
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        for link in links.values() {
            link.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_closed = true;
            link.wake.notify_one();
        }
    }
}

/// Keeps a connection to peer `to` and writes what the Raft thread could not write itself;
/// while the peer is unreachable, queued messages are dropped.
///
/// The peer never writes on a Raft stream, so anything the read half sees (end of stream
/// or an error) means the peer closed it: its process ended or restarted. The stream is
/// dropped at once and the next message opens a new one. Without this, the first message
/// after a peer's restart would be written into the dead connection and lost, and a lost
/// pre-vote or its answer costs a whole election timeout.
async fn run_peer_stream(
    from: u64,
    to: u64,
    directory: Arc<ServerDirectory>,
    link: Arc<PeerLink>,
    closed_by_peer: Counter,
) {
    loop {
        // Something to send opens the connection.
        loop {
            {
                let state = link.state.lock().expect("link lock poisoned");
                if state.is_closed {
                    return;
                }
                if !state.queued.is_empty() {
                    break;
                }
            }
            link.wake.notified().await;
        }
        let Some(addr) = directory.get(to).map(|info| info.rpc_addr) else {
            forget_queued(&link);
            continue;
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                forget_queued(&link);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let hello = encode_frame(&RpcFrame::RaftHello { from, to });
        if let Err(error) = writer.write_all(&hello).await {
            tracing::debug!(peer = to, %addr, %error, "raft stream to peer broke; reconnecting");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        let writer = Arc::new(writer);
        {
            let mut state = link.state.lock().expect("link lock poisoned");
            state.writer = Some(writer.clone());
            state.is_task_writing = true;
        }
        let result: std::io::Result<StreamEnd> = async {
            let mut probe = [0u8; 1];
            loop {
                if write_queued(&link, &writer).await? {
                    return Ok(StreamEnd::Done);
                }
                tokio::select! {
                    // A closed peer is noticed before anything more is written to it.
                    biased;
                    _ = reader.read(&mut probe) => return Ok(StreamEnd::ClosedByPeer),
                    () = link.wake.notified() => {
                        link.state.lock().expect("link lock poisoned").is_task_writing = true;
                    }
                }
            }
        }
        .await;
        {
            let mut state = link.state.lock().expect("link lock poisoned");
            state.writer = None;
            state.is_task_writing = false;
            // Frames cut in the middle cannot go on a new stream.
            if state.written_of_first > 0 {
                state.queued.pop_front();
                state.written_of_first = 0;
            }
        }
        match result {
            Ok(StreamEnd::Done) => return,
            Ok(StreamEnd::ClosedByPeer) => {
                closed_by_peer.inc();
                tracing::debug!(peer = to, %addr, "raft stream closed by the peer; a new one opens with the next message");
            }
            Err(error) => {
                tracing::debug!(peer = to, %addr, %error, "raft stream to peer broke; reconnecting");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Drops what was queued for an unreachable peer (Raft sends it again if it matters).
fn forget_queued(link: &PeerLink) {
    let mut state = link.state.lock().expect("link lock poisoned");
    state.queued.clear();
    state.written_of_first = 0;
}

/// Writes the queued entries until none is left, then lets the Raft thread write directly
/// again. Called with `is_task_writing` set; returns whether the server is stopping.
async fn write_queued(link: &PeerLink, writer: &OwnedWriteHalf) -> std::io::Result<bool> {
    loop {
        let (front, offset) = {
            let mut state = link.state.lock().expect("link lock poisoned");
            if state.is_closed {
                return Ok(true);
            }
            let offset = state.written_of_first;
            // Taken out, leaving an empty entry in its place, so that the queue stays
            // non-empty (the Raft thread keeps queueing behind it) while it is written.
            match state.queued.front_mut() {
                Some(front) => (
                    std::mem::replace(front, Outgoing::Encoded(Vec::new())),
                    offset,
                ),
                None => {
                    state.is_task_writing = false;
                    return Ok(false);
                }
            }
        };
        // A snapshot is encoded here: off the Raft thread, and outside the lock it takes.
        let chunk = match front {
            Outgoing::Encoded(bytes) => bytes,
            Outgoing::Message(message) => encode_frame(&RpcFrame::Raft(*message)),
        };
        let mut written = offset;
        let outcome = async {
            while written < chunk.len() {
                writer.writable().await?;
                match writer.try_write(&chunk[written..]) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        }
        .await;
        let mut state = link.state.lock().expect("link lock poisoned");
        match outcome {
            Ok(()) => {
                state.queued.pop_front();
                state.written_of_first = 0;
            }
            Err(error) => {
                // Put the entry back as it was, for the cleanup to judge.
                if let Some(front) = state.queued.front_mut() {
                    *front = Outgoing::Encoded(chunk);
                }
                state.written_of_first = written;
                return Err(error);
            }
        }
    }
}

/// Why an outbound Raft stream ended without an error.
enum StreamEnd {
    /// The queue closed: this server is stopping.
    Done,
    /// The peer closed the connection.
    ClosedByPeer,
}

/// What a server does with what arrives on its RPC port.
pub trait RpcHandler: Send + Sync + 'static {
    /// A Raft message from server `from`, meant for server `to`.
    fn handle_raft(&self, from: u64, to: u64, message: Message);
    /// The Raft stream from server `from` ended (its process may have died).
    fn raft_stream_closed(&self, from: u64);
    /// The runtime inbound Raft streams are read on: the Raft thread's own, so that a
    /// message reaches the core without waking another thread first. `None`: the runtime
    /// that accepted the connection.
    fn raft_streams_runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }
    /// A request; answered when the future resolves.
    fn handle_request(
        self: Arc<Self>,
        request: RpcRequest,
    ) -> impl std::future::Future<Output = Result<RpcResponse, ClusterError>> + Send;
}

/// Accepts RPC connections until the process stops.
pub async fn serve<H: RpcHandler>(listener: TcpListener, handler: Arc<H>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "rpc accept failed");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, handler).await {
                tracing::warn!(%peer, %error, "closing rpc connection");
            }
        });
    }
}

async fn serve_connection<H: RpcHandler>(
    stream: TcpStream,
    handler: Arc<H>,
) -> std::io::Result<()> {
    let (mut read_half, writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(&mut read_half);
    let Some(first) = read_frame(&mut reader).await? else {
        return Ok(());
    };
    match first {
        RpcFrame::RaftHello { from, to } => {
            // What the buffer read past the hello is the stream's next bytes.
            let read_ahead = reader.buffer().to_vec();
            drop(reader);
            let stream = read_half
                .reunite(writer)
                .map_err(|_| std::io::Error::other("the halves of one socket did not reunite"))?;
            let result = match handler.raft_streams_runtime() {
                Some(runtime) => {
                    let stream = stream.into_std()?;
                    let reading = handler.clone();
                    let task = runtime.spawn(async move {
                        let stream = TcpStream::from_std(stream)?;
                        read_raft_stream(from, to, read_ahead, stream, &*reading).await
                    });
                    match task.await {
                        Ok(result) => result,
                        Err(error) if error.is_panic() => Err(std::io::Error::other(format!(
                            "the raft stream reader panicked: {error}"
                        ))),
                        // Cancelled: the raft thread stopped, and its runtime with it.
                        Err(_) => Ok(()),
                    }
                }
                None => read_raft_stream(from, to, read_ahead, stream, &*handler).await,
            };
            handler.raft_stream_closed(from);
            result
        }
        RpcFrame::Request { id, request } => {
            let (answers, mut outbox) = mpsc::channel::<RpcFrame>(1024);
            let writing = tokio::spawn(async move {
                let mut writer = BufWriter::new(writer);
                while let Some(frame) = outbox.recv().await {
                    writer.write_all(&encode_frame(&frame)).await?;
                    while let Ok(frame) = outbox.try_recv() {
                        writer.write_all(&encode_frame(&frame)).await?;
                    }
                    writer.flush().await?;
                }
                Ok::<(), std::io::Error>(())
            });
            let spawn_request = |id: u64, request: RpcRequest| {
                let handler = handler.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let response = handler.handle_request(request).await;
                    let _ = answers.send(RpcFrame::Response { id, response }).await;
                });
            };
            spawn_request(id, request);
            let result = loop {
                match read_frame(&mut reader).await {
                    Ok(Some(RpcFrame::Request { id, request })) => spawn_request(id, request),
                    Ok(Some(other)) => {
                        break Err(std::io::Error::other(format!(
                            "unexpected frame on a request connection: {}",
                            frame_name(&other)
                        )));
                    }
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            };
            drop(answers);
            // Answer what is in flight before closing.
            let _ = writing.await;
            result
        }
        other => Err(std::io::Error::other(format!(
            "unexpected first frame: {}",
            frame_name(&other)
        ))),
    }
}

/// Hands each Raft message of an inbound stream (after its hello, `read_ahead` being bytes
/// already read from `stream`) to `handler`, until the stream ends.
async fn read_raft_stream<H: RpcHandler>(
    from: u64,
    to: u64,
    read_ahead: Vec<u8>,
    stream: TcpStream,
    handler: &H,
) -> std::io::Result<()> {
    let mut reader = tokio::io::BufReader::new(std::io::Cursor::new(read_ahead).chain(stream));
    while let Some(frame) = read_frame(&mut reader).await? {
        match frame {
            RpcFrame::Raft(message) => handler.handle_raft(from, to, message),
            other => {
                return Err(std::io::Error::other(format!(
                    "unexpected frame on a raft stream: {}",
                    frame_name(&other)
                )));
            }
        }
    }
    Ok(())
}

fn frame_name(frame: &RpcFrame) -> &'static str {
    match frame {
        RpcFrame::RaftHello { .. } => "RaftHello",
        RpcFrame::Raft(_) => "Raft",
        RpcFrame::Request { .. } => "Request",
        RpcFrame::Response { .. } => "Response",
    }
}

type Waiter = oneshot::Sender<Result<RpcResponse, ClusterError>>;

/// Callers waiting on one connection; `closed` once its reader stopped (no answer will come).
#[derive(Default)]
struct WaiterState {
    closed: bool,
    waiting: HashMap<u64, Waiter>,
}

type Waiters = Arc<Mutex<WaiterState>>;

struct Connection {
    outbox: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
}

/// A call's entry in its connection's waiter table, removed when the call ends however it
/// ends (the reader removes it first when the answer comes).
struct Waiting<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.waiting.remove(&self.id);
        }
    }
}

/// Sends requests to servers over pooled connections (one per address).
#[derive(Default)]
pub struct RpcClient {
    connections: Mutex<HashMap<SocketAddr, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl RpcClient {
    /// Sends `request` to the server at `addr` and waits for its answer.
    ///
    /// # Errors
    /// [`CallError`]: whether the request may have been done is in the variant.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        let connection = self.connection(addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = connection.waiters.lock().expect("waiters lock poisoned");
            if waiters.closed {
                drop(waiters);
                self.forget(addr, &connection);
                return Err(CallError::Unreachable {
                    addr,
                    detail: "connection closed".into(),
                });
            }
            waiters.waiting.insert(id, tx);
        }
        // Whatever ends this call — an answer, a timeout, or the caller dropping it (its
        // client went away) — its waiter leaves the table.
        let _waiting = Waiting {
            waiters: &connection.waiters,
            id,
        };
        let frame = encode_frame(&RpcFrame::Request { id, request });
        if connection.outbox.send(frame).await.is_err() {
            self.forget(addr, &connection);
            return Err(CallError::Unreachable {
                addr,
                detail: "connection closed".into(),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(error))) => Err(CallError::Remote(error)),
            Ok(Err(_)) => {
                self.forget(addr, &connection);
                Err(CallError::Lost(addr))
            }
            Err(_) => Err(CallError::Lost(addr)),
        }
    }

    fn forget(&self, addr: SocketAddr, connection: &Arc<Connection>) {
        let mut connections = self.connections.lock().expect("connections lock poisoned");
        if connections
            .get(&addr)
            .is_some_and(|c| Arc::ptr_eq(c, connection))
        {
            connections.remove(&addr);
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Arc<Connection>, CallError> {
        if let Some(connection) = self
            .connections
            .lock()
            .expect("connections lock poisoned")
            .get(&addr)
            .filter(|c| {
                !c.outbox.is_closed() && !c.waiters.lock().expect("waiters lock poisoned").closed
            })
        {
            return Ok(connection.clone());
        }
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = stream.into_split();
        let (outbox, mut frames) = mpsc::channel::<Vec<u8>>(1024);
        let waiters: Waiters = Arc::default();
        tokio::spawn(async move {
            let mut writer = BufWriter::new(writer);
            while let Some(frame) = frames.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
                while let Ok(frame) = frames.try_recv() {
                    if writer.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
        });
        let reading = waiters.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(&mut reader);
            while let Ok(Some(RpcFrame::Response { id, response })) = read_frame(&mut reader).await
            {
                let waiter = reading
                    .lock()
                    .expect("waiters lock poisoned")
                    .waiting
                    .remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            // Dropping the waiters tells every caller still waiting that the answer is lost.
            let mut state = reading.lock().expect("waiters lock poisoned");
            state.closed = true;
            state.waiting.clear();
        });
        let connection = Arc::new(Connection { outbox, waiters });
        self.connections
            .lock()
            .expect("connections lock poisoned")
            .insert(addr, connection.clone());
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rpc_frames_round_trip_and_garbage_is_an_error() {
        let frame = encode_frame(&RpcFrame::RaftHello { from: 3, to: 9 });
        let decoded = read_frame(&mut frame.as_slice()).await.expect("read");
        assert!(matches!(
            decoded,
            Some(RpcFrame::RaftHello { from: 3, to: 9 })
        ));
        let mut garbage: &[u8] = &[5, 0, 0, 0, RPC_FORMAT_VERSION, 200, 200, 200, 200];
        assert!(read_frame(&mut garbage).await.is_err());
        let mut oversized: &[u8] = &[255, 255, 255, 255];
        let error = read_frame(&mut oversized).await.expect_err("refused");
        assert!(error.to_string().contains("bytes"), "{error}");
        let mut truncated = &frame[..frame.len() - 1];
        assert!(read_frame(&mut truncated).await.is_err());
    }

    /// A call whose caller gives up (its client went away: the future is dropped) leaves no
    /// waiter behind, although the server never answers.
    #[tokio::test]
    async fn rpc_a_dropped_call_leaves_no_waiter() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A server that takes the connection and never answers.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            std::future::pending::<()>().await;
            drop(stream);
        });
        let client = RpcClient::default();
        for _ in 0..3 {
            let call = client.call(addr, RpcRequest::Membership, Duration::from_secs(60));
            assert!(
                tokio::time::timeout(Duration::from_millis(50), call)
                    .await
                    .is_err(),
                "no answer comes"
            );
        }
        let connection = client
            .connections
            .lock()
            .expect("connections")
            .get(&addr)
            .cloned()
            .expect("a pooled connection");
        let waiting = connection.waiters.lock().expect("waiters").waiting.len();
        assert_eq!(waiting, 0, "the dropped calls left waiters");
        server.abort();
    }

    async fn expect_raft_frames(stream: &mut TcpStream, from: u64, term: u64) {
        let mut reader = tokio::io::BufReader::new(stream);
        let deadline = Duration::from_secs(5);
        let hello = tokio::time::timeout(deadline, read_frame(&mut reader))
            .await
            .expect("a hello in time")
            .expect("readable");
        assert!(
            matches!(hello, Some(RpcFrame::RaftHello { from: f, to: 2 }) if f == from),
            "{hello:?}"
        );
        let message = tokio::time::timeout(deadline, read_frame(&mut reader))
            .await
            .expect("a message in time")
            .expect("readable");
        assert!(
            matches!(message, Some(RpcFrame::Raft(Message::PreVote { term: t, .. })) if t == term),
            "the first message sent is the first one received: {message:?}"
        );
    }

    /// A directory that knows server 2 at `addr`.
    fn peer_directory(addr: SocketAddr) -> Arc<ServerDirectory> {
        let directory = Arc::new(ServerDirectory::default());
        directory.upsert(
            2,
            ServerInfo {
                name: "peer".into(),
                rpc_addr: addr,
                alive: true,
                grpc_url: None,
            },
        );
        directory
    }

    fn pre_vote(term: u64) -> Message {
        Message::PreVote {
            term,
            last_index: 0,
            last_term: 0,
        }
    }

    /// A peer that restarts on the same address gets the very first message sent after its
    /// restart (before the fix it was written into the dead connection and lost, which cost
    /// a whole election timeout when that message was a pre-vote).
    #[tokio::test]
    async fn raft_stream_to_a_restarted_peer_delivers_the_first_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let directory = peer_directory(addr);
        let closed = Counter::default();
        let peers = Peers::new(1, directory, closed.clone());
        peers.send(2, pre_vote(1));
        let (mut first, _) = listener.accept().await.expect("accept");
        expect_raft_frames(&mut first, 1, 1).await;

        // The peer's process ends: its connection and its listener close.
        drop(first);
        drop(listener);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while closed.get() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream never noticed that its peer closed it"
            );
            tokio::task::yield_now().await;
        }

        // It restarts on the same address; one message is sent and must arrive.
        let listener = TcpListener::bind(addr).await.expect("rebind the same port");
        peers.send(2, pre_vote(2));
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("a new connection after the restart")
            .expect("accept");
        expect_raft_frames(&mut second, 1, 2).await;
    }

    async fn next_frame(
        reader: &mut tokio::io::BufReader<TcpStream>,
        deadline: Duration,
    ) -> RpcFrame {
        tokio::time::timeout(deadline, read_frame(reader))
            .await
            .expect("a frame in time")
            .expect("readable")
            .expect("not the end")
    }

    fn append(index: u64) -> Message {
        Message::Append {
            term: 1,
            prev_index: index,
            prev_term: 1,
            entries: vec![colony_raft::Entry {
                index: index + 1,
                term: 1,
                kind: colony_raft::EntryKind::Normal,
                data: vec![7; 16 * 1024],
            }],
            commit: 0,
        }
    }

    /// A peer that does not read for a while: the socket fills, what the sender cannot write
    /// at once (part of a batch included) is queued behind what it wrote, and once the peer
    /// reads, every message arrives exactly once, in the order sent — a snapshot (encoded by
    /// the stream's task) in its place among them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_stream_to_a_slow_reader_delivers_every_message_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let directory = peer_directory(addr);
        let peers = Arc::new(Peers::new(1, directory, Counter::default()));
        const SENT: u64 = 1_000;
        const SNAPSHOT_AT: u64 = 600;
        // Sent from a plain thread, as the Raft thread does, in batches of three.
        let sender = {
            let peers = peers.clone();
            std::thread::spawn(move || {
                let mut index = 0;
                while index < SENT {
                    let mut batch = Vec::new();
                    for _ in 0..3 {
                        if index == SNAPSHOT_AT {
                            let snapshot = colony_raft::Snapshot {
                                meta: colony_raft::SnapshotMeta { index, term: 1 },
                                voters: vec![1, 2],
                                data: vec![9; 256 * 1024],
                            };
                            let message = Message::InstallSnapshot { term: 1, snapshot };
                            batch.push(Envelope { to: 2, message });
                        } else if index < SENT {
                            batch.push(Envelope {
                                to: 2,
                                message: append(index),
                            });
                        }
                        index += 1;
                    }
                    peers.send_all(batch);
                    if index == 30 {
                        // Let the first batches connect and go out directly.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        };
        let (stream, _) = listener.accept().await.expect("accept");
        // Read nothing until the sender is done: its writes fill the socket and queue up.
        tokio::task::spawn_blocking(move || sender.join().expect("sender"))
            .await
            .expect("joined");
        let mut reader = tokio::io::BufReader::new(stream);
        let deadline = Duration::from_secs(10);
        assert!(matches!(
            next_frame(&mut reader, deadline).await,
            RpcFrame::RaftHello { from: 1, to: 2 }
        ));
        for index in 0..SENT {
            match next_frame(&mut reader, deadline).await {
                RpcFrame::Raft(Message::Append {
                    prev_index,
                    entries,
                    ..
                }) => {
                    assert_eq!(prev_index, index, "appends in order");
                    assert_eq!(entries[0].data.len(), 16 * 1024, "whole");
                }
                RpcFrame::Raft(Message::InstallSnapshot { snapshot, .. }) => {
                    assert_eq!(index, SNAPSHOT_AT, "the snapshot in its place");
                    assert_eq!(snapshot.data.len(), 256 * 1024);
                }
                other => panic!("unexpected frame at {index}: {other:?}"),
            }
        }
        assert_eq!(peers.dropped.load(Ordering::Relaxed), 0, "nothing dropped");
    }
}
