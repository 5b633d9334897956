//! The `etcdserverpb.Watch` service: one bidirectional stream carries any number of watchers.
//! One task serves a stream and all its watchers: each watcher replays the store's change
//! history from its start revision, then follows new changes; a store change wakes the task
//! once, which reads the history once under one lock for every watcher (as etcd groups its
//! watchers), so a thousand watchers of one key cost one wake-up per stream, not a thousand.
//! Events come in revision order, all events of one revision in one response — unless the
//! watcher asked for `fragment` and the response would exceed etcd's request limit (1.5 MiB):
//! then it goes out in pieces, every piece but the last marked `fragment`. A watcher that
//! starts before the compacted revision (or falls that far behind) is cancelled with the
//! compacted revision, as etcd does.

use crate::context::{EtcdContext, REQUEST_BYTES_MAX};
use crate::convert::event;
use colony_etcdpb::etcdserverpb::{
    WatchRequest, WatchResponse, watch_create_request::FilterType, watch_request::RequestUnion,
    watch_server::Watch,
};
use colony_runtime::Topic;
use colony_store::{KeyRange, StateMachine, Table};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The most events sent in one response (more wait for the next, whole revisions at a time).
const EVENTS_PER_RESPONSE_MAX: usize = 1000;
/// How often an idle watcher that asked for progress notifications gets one (etcd's default).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// Responses buffered per stream before watchers wait for the client to read.
const STREAM_BUFFER: usize = 256;
/// The watch ID etcd uses for responses about no particular watcher.
const INVALID_WATCH_ID: i64 = -1;

/// The Watch service.
pub struct WatchService {
    ctx: Arc<EtcdContext>,
}

impl WatchService {
    /// A Watch service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        WatchService { ctx }
    }
}

type Outbound = mpsc::Sender<Result<WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let ctx = self.ctx.clone();
        tokio::spawn(async move { serve_stream(ctx, inbound, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What one watcher follows, and where it is.
struct Watcher {
    range: KeyRange,
    next_revision: u64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    sent_since_progress: bool,
    /// Split responses larger than [`REQUEST_BYTES_MAX`] (`WatchCreateRequest.fragment`).
    fragment: bool,
}

/// Serves one stream: the client's requests, and every watcher's events as the store changes.
async fn serve_stream(ctx: Arc<EtcdContext>, mut inbound: Streaming<WatchRequest>, tx: Outbound) {
    let mut watchers: BTreeMap<i64, Watcher> = BTreeMap::new();
    let mut next_id: i64 = 0;
    let mut changes = ctx.agent.subscribe(&Topic::Table(Table::Kvs));
    let mut shutdown = ctx.agent.shutdown_signal();
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    let mut behind = false;
    loop {
        if behind {
            changes.borrow_and_update();
            match deliver(&ctx, &mut watchers, &tx).await {
                Some(more) => behind = more,
                None => return,
            }
        }
        tokio::select! {
            message = inbound.message() => {
                let Ok(Some(request)) = message else { return };
                let Some(started) = handle_request(&ctx, request, &mut watchers, &mut next_id, &tx).await else {
                    return;
                };
                behind |= started;
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                behind = true;
            }
            _ = progress.tick() => {
                if !notify_progress(&ctx, &mut watchers, &tx).await {
                    return;
                }
            }
            () = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// Handles one client request; `None` if the client is gone, else whether a watcher started.
async fn handle_request(
    ctx: &EtcdContext,
    request: WatchRequest,
    watchers: &mut BTreeMap<i64, Watcher>,
    next_id: &mut i64,
    tx: &Outbound,
) -> Option<bool> {
    let current = || ctx.agent.read(StateMachine::applied_index);
    let response = match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            let id = if create.watch_id == 0 {
                while watchers.contains_key(next_id) {
                    *next_id += 1;
                }
                *next_id
            } else {
                create.watch_id
            };
            if watchers.contains_key(&id) || id < 0 {
                WatchResponse {
                    header: ctx.current_header(),
                    watch_id: INVALID_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                    ..WatchResponse::default()
                }
            } else {
                let now = current();
                let start = create.start_revision.max(0) as u64;
                watchers.insert(
                    id,
                    Watcher {
                        range: KeyRange {
                            start: create.key,
                            end: create.range_end,
                        },
                        next_revision: if start == 0 { now + 1 } else { start },
                        prev_kv: create.prev_kv,
                        no_put: create.filters.contains(&(FilterType::Noput as i32)),
                        no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
                        progress_notify: create.progress_notify,
                        sent_since_progress: false,
                        fragment: create.fragment,
                    },
                );
                tx.send(Ok(WatchResponse {
                    header: ctx.header(now),
                    watch_id: id,
                    created: true,
                    ..WatchResponse::default()
                }))
                .await
                .ok()?;
                return Some(true);
            }
        }
        Some(RequestUnion::CancelRequest(cancel)) => {
            if watchers.remove(&cancel.watch_id).is_none() {
                return Some(false);
            }
            WatchResponse {
                header: ctx.current_header(),
                watch_id: cancel.watch_id,
                canceled: true,
                ..WatchResponse::default()
            }
        }
        // Watchers are caught up with what they were sent; the header says how far the store
        // has come.
        Some(RequestUnion::ProgressRequest(_)) => WatchResponse {
            header: ctx.current_header(),
            watch_id: INVALID_WATCH_ID,
            ..WatchResponse::default()
        },
        None => return Some(false),
    };
    tx.send(Ok(response)).await.ok()?;
    Some(false)
}

/// Reads the history once for every watcher and sends what each has not seen. Returns whether
/// some watcher has more waiting (it hit the per-response cap), or `None` if the client is
/// gone.
async fn deliver(
    ctx: &EtcdContext,
    watchers: &mut BTreeMap<i64, Watcher>,
    tx: &Outbound,
) -> Option<bool> {
    let mut responses = Vec::new();
    let mut cancelled = Vec::new();
    let mut more = false;
    ctx.agent.read(|state| {
        let current = state.applied_index();
        for (id, watcher) in watchers.iter_mut() {
            match read_batch(state, watcher) {
                Batch::Compacted(compacted) => {
                    cancelled.push(*id);
                    responses.push(WatchResponse {
                        header: ctx.header(current),
                        watch_id: *id,
                        canceled: true,
                        compact_revision: compacted as i64,
                        cancel_reason: "mvcc: required revision has been compacted".into(),
                        ..WatchResponse::default()
                    });
                }
                Batch::Events {
                    events,
                    next_revision,
                    more: has_more,
                } => {
                    watcher.next_revision = next_revision;
                    more |= has_more;
                    if !events.is_empty() {
                        watcher.sent_since_progress = true;
                        let pieces = if watcher.fragment {
                            fragments(events, REQUEST_BYTES_MAX)
                        } else {
                            vec![events]
                        };
                        let last = pieces.len() - 1;
                        for (i, events) in pieces.into_iter().enumerate() {
                            responses.push(WatchResponse {
                                header: ctx.header(current),
                                watch_id: *id,
                                events,
                                fragment: i < last,
                                ..WatchResponse::default()
                            });
                        }
                    }
                }
            }
        }
    });
    for id in cancelled {
        watchers.remove(&id);
    }
    for response in responses {
        tx.send(Ok(response)).await.ok()?;
    }
    Some(more)
}

/// `events` in pieces of at most `limit` encoded bytes each (a single larger event is a piece
/// of its own), in order; one piece if they fit.
fn fragments(
    events: Vec<colony_etcdpb::mvccpb::Event>,
    limit: usize,
) -> Vec<Vec<colony_etcdpb::mvccpb::Event>> {
    use prost::Message as _;
    let mut pieces = vec![Vec::new()];
    let mut bytes = 0;
    for event in events {
        // Each event costs its length, a tag byte and a length prefix in the response.
        let size = event.encoded_len() + 6;
        let piece = pieces.last_mut().expect("one piece at least");
        if !piece.is_empty() && bytes + size > limit {
            pieces.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        pieces.last_mut().expect("one piece at least").push(event);
    }
    pieces
}

/// Sends a progress notification to each watcher that asked for them and was idle since the
/// last tick; false if the client is gone.
async fn notify_progress(
    ctx: &EtcdContext,
    watchers: &mut BTreeMap<i64, Watcher>,
    tx: &Outbound,
) -> bool {
    for (id, watcher) in watchers.iter_mut() {
        if watcher.progress_notify && !watcher.sent_since_progress {
            let notification = WatchResponse {
                header: ctx.current_header(),
                watch_id: *id,
                ..WatchResponse::default()
            };
            if tx.send(Ok(notification)).await.is_err() {
                return false;
            }
        }
        watcher.sent_since_progress = false;
    }
    true
}

/// What one look at the history found for one watcher.
enum Batch {
    /// Events to send (maybe none), the revision to look from next, and whether more are
    /// already waiting.
    Events {
        events: Vec<colony_etcdpb::mvccpb::Event>,
        next_revision: u64,
        more: bool,
    },
    /// The history no longer reaches back to the watcher's next revision.
    Compacted(u64),
}

fn read_batch(state: &StateMachine, watcher: &Watcher) -> Batch {
    let current = state.applied_index();
    let history = match state.history().since(watcher.next_revision) {
        Ok(history) => history,
        Err(compacted) => return Batch::Compacted(compacted.compacted),
    };
    let mut events = Vec::new();
    let mut next_revision = current.max(watcher.next_revision.saturating_sub(1)) + 1;
    let mut more = false;
    let mut last_revision = 0;
    for change in history {
        if events.len() >= EVENTS_PER_RESPONSE_MAX && change.revision != last_revision {
            next_revision = change.revision;
            more = true;
            break;
        }
        last_revision = change.revision;
        if !watcher.range.contains(change.key.as_bytes()) {
            continue;
        }
        let is_put = change.kv.is_some();
        if (is_put && watcher.no_put) || (!is_put && watcher.no_delete) {
            continue;
        }
        events.push(event(change, watcher.prev_kv));
    }
    Batch::Events {
        events,
        next_revision,
        more,
    }
}
