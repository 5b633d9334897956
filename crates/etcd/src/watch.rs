//! The `etcdserverpb.Watch` service: one bidirectional stream carries any number of watchers.
//! Each watcher replays the store's change history from its start revision, then follows new
//! changes as the store wakes it; events come in revision order, all events of one revision in
//! one response. A watcher that starts before the compacted revision (or falls that far
//! behind) is cancelled with the compacted revision, as etcd does.

use crate::context::EtcdContext;
use crate::convert::event;
use colony_etcdpb::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion, watch_server::Watch,
};
use colony_runtime::Topic;
use colony_store::{KeyRange, Table, prefix_end};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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

/// Reads the client's requests until the stream ends, creating and cancelling watchers.
async fn serve_stream(ctx: Arc<EtcdContext>, mut inbound: Streaming<WatchRequest>, tx: Outbound) {
    let mut watchers: HashMap<i64, JoinHandle<()>> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = tx.closed() => break,
        };
        let Ok(Some(request)) = message else { break };
        watchers.retain(|_, task| !task.is_finished());
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let id = if create.watch_id == 0 {
                    while watchers.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                } else {
                    create.watch_id
                };
                if watchers.contains_key(&id) || id < 0 {
                    let refusal = WatchResponse {
                        header: ctx.current_header(),
                        watch_id: INVALID_WATCH_ID,
                        created: true,
                        canceled: true,
                        cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream"
                            .into(),
                        ..WatchResponse::default()
                    };
                    if tx.send(Ok(refusal)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if let Some(task) = start_watcher(&ctx, id, create, &tx).await {
                    watchers.insert(id, task);
                }
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                if let Some(task) = watchers.remove(&cancel.watch_id) {
                    task.abort();
                    let canceled = WatchResponse {
                        header: ctx.current_header(),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    };
                    if tx.send(Ok(canceled)).await.is_err() {
                        break;
                    }
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher is caught up with what it has been sent, and the header tells
                // the client the revision the store has reached.
                let progress = WatchResponse {
                    header: ctx.current_header(),
                    watch_id: INVALID_WATCH_ID,
                    ..WatchResponse::default()
                };
                if tx.send(Ok(progress)).await.is_err() {
                    break;
                }
            }
            None => {}
        }
    }
    for task in watchers.into_values() {
        task.abort();
    }
}

/// What one watcher follows.
struct WatchSpec {
    id: i64,
    range: KeyRange,
    next_revision: u64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

/// Sends the `created` response and starts the watcher's task.
async fn start_watcher(
    ctx: &Arc<EtcdContext>,
    id: i64,
    create: WatchCreateRequest,
    tx: &Outbound,
) -> Option<JoinHandle<()>> {
    let current = ctx.agent.read(|s| s.applied_index());
    let start = create.start_revision.max(0) as u64;
    let spec = WatchSpec {
        id,
        range: KeyRange {
            start: create.key,
            end: create.range_end,
        },
        next_revision: if start == 0 { current + 1 } else { start },
        prev_kv: create.prev_kv,
        no_put: create.filters.contains(&(FilterType::Noput as i32)),
        no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
        progress_notify: create.progress_notify,
    };
    let created = WatchResponse {
        header: ctx.header(current),
        watch_id: id,
        created: true,
        ..WatchResponse::default()
    };
    tx.send(Ok(created)).await.ok()?;
    let ctx = ctx.clone();
    let tx = tx.clone();
    Some(tokio::spawn(
        async move { run_watcher(ctx, spec, tx).await },
    ))
}

/// The narrowest store topic that wakes the watcher on every change in its range.
fn topic(range: &KeyRange) -> Topic {
    match std::str::from_utf8(&range.start) {
        Ok(key) if range.is_single_key() => Topic::Key(key.to_string()),
        Ok(prefix) if range.end == prefix_end(&range.start) && !prefix.is_empty() => {
            Topic::Prefix(prefix.to_string())
        }
        _ => Topic::Table(Table::Kvs),
    }
}

/// What one look at the history found.
enum Batch {
    /// Events to send (maybe none), the revision to look from next, and whether more are
    /// already waiting.
    Events {
        events: Vec<colony_etcdpb::mvccpb::Event>,
        next_revision: u64,
        current: u64,
        more: bool,
    },
    /// The history no longer reaches back to the watcher's next revision.
    Compacted(u64),
}

fn read_batch(ctx: &EtcdContext, spec: &WatchSpec) -> Batch {
    ctx.agent.read(|s| {
        let current = s.applied_index();
        let history = match s.history().since(spec.next_revision) {
            Ok(history) => history,
            Err(compacted) => return Batch::Compacted(compacted.compacted),
        };
        let mut events = Vec::new();
        let mut next_revision = current.max(spec.next_revision.saturating_sub(1)) + 1;
        let mut more = false;
        let mut last_revision = 0;
        for change in history {
            if events.len() >= EVENTS_PER_RESPONSE_MAX && change.revision != last_revision {
                next_revision = change.revision;
                more = true;
                break;
            }
            last_revision = change.revision;
            if !spec.range.contains(change.key.as_bytes()) {
                continue;
            }
            let is_put = change.kv.is_some();
            if (is_put && spec.no_put) || (!is_put && spec.no_delete) {
                continue;
            }
            events.push(event(change, spec.prev_kv));
        }
        Batch::Events {
            events,
            next_revision,
            current,
            more,
        }
    })
}

async fn run_watcher(ctx: Arc<EtcdContext>, mut spec: WatchSpec, tx: Outbound) {
    let mut changes = ctx.agent.subscribe(&topic(&spec.range));
    let mut shutdown = ctx.agent.shutdown_signal();
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    let mut sent_since_progress = false;
    loop {
        changes.borrow_and_update();
        match read_batch(&ctx, &spec) {
            Batch::Compacted(compacted) => {
                let canceled = WatchResponse {
                    header: ctx.current_header(),
                    watch_id: spec.id,
                    canceled: true,
                    compact_revision: compacted as i64,
                    cancel_reason: "mvcc: required revision has been compacted".into(),
                    ..WatchResponse::default()
                };
                let _ = tx.send(Ok(canceled)).await;
                return;
            }
            Batch::Events {
                events,
                next_revision,
                current,
                more,
            } => {
                spec.next_revision = next_revision;
                if !events.is_empty() {
                    sent_since_progress = true;
                    let response = WatchResponse {
                        header: ctx.header(current),
                        watch_id: spec.id,
                        events,
                        ..WatchResponse::default()
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                if more {
                    continue;
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = progress.tick(), if spec.progress_notify => {
                if !sent_since_progress {
                    let notification = WatchResponse {
                        header: ctx.current_header(),
                        watch_id: spec.id,
                        ..WatchResponse::default()
                    };
                    if tx.send(Ok(notification)).await.is_err() {
                        return;
                    }
                }
                sent_since_progress = false;
            }
            _ = shutdown.changed() => return,
        }
    }
}
