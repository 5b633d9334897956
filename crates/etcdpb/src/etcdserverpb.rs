//! Package `etcdserverpb`: the KV, Watch, Lease, Cluster and Maintenance services and their
//! messages.
//!
//! Revisions, lease IDs, TTLs and watch IDs are `int64` on the wire; cluster and member IDs
//! and raft indexes and terms are `uint64`. Keys and values are bytes.

use crate::mvccpb::{Event, KeyValue};

/// Common head of every response: who answered and at which store revision.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ResponseHeader {
    /// ID of the answering cluster.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// ID of the answering member.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// Store revision the request saw (0 for calls that do not touch the store). On a watch
    /// progress response, every later event on the stream has a higher revision.
    #[prost(int64, tag = "3")]
    pub revision: i64,
    /// Raft term when the request was applied.
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

// ---------------------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------------------

/// Reads one key or the range `[key, range_end)`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RangeRequest {
    /// First key of the range, or the only key when `range_end` is empty.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range, exclusive. `"\0"` means every key from `key` on; `key` plus one
    /// (e.g. `"ab"` for `"aa"`) means every key with the prefix `key`.
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Most keys to return; 0 is no limit.
    #[prost(int64, tag = "3")]
    pub limit: i64,
    /// Store revision to read at; 0 or less reads the newest.
    #[prost(int64, tag = "4")]
    pub revision: i64,
    /// Order of the results ([`range_request::SortOrder`]).
    #[prost(enumeration = "range_request::SortOrder", tag = "5")]
    pub sort_order: i32,
    /// Field the results are sorted by ([`range_request::SortTarget`]).
    #[prost(enumeration = "range_request::SortTarget", tag = "6")]
    pub sort_target: i32,
    /// Serve from the answering member's local state instead of a linearizable read.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
    /// Return keys without their values.
    #[prost(bool, tag = "8")]
    pub keys_only: bool,
    /// Return only the count of keys in the range.
    #[prost(bool, tag = "9")]
    pub count_only: bool,
    /// Leave out keys whose mod revision is lower than this (0: no bound).
    #[prost(int64, tag = "10")]
    pub min_mod_revision: i64,
    /// Leave out keys whose mod revision is higher than this (0: no bound).
    #[prost(int64, tag = "11")]
    pub max_mod_revision: i64,
    /// Leave out keys whose create revision is lower than this (0: no bound).
    #[prost(int64, tag = "12")]
    pub min_create_revision: i64,
    /// Leave out keys whose create revision is higher than this (0: no bound).
    #[prost(int64, tag = "13")]
    pub max_create_revision: i64,
}

/// Types nested in [`RangeRequest`].
pub mod range_request {
    /// Sort direction of a range's results.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SortOrder {
        /// Unsorted (key order).
        None = 0,
        /// Lowest first.
        Ascend = 1,
        /// Highest first.
        Descend = 2,
    }

    /// Field a range's results are sorted by.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SortTarget {
        /// The key.
        Key = 0,
        /// The key's version.
        Version = 1,
        /// The create revision.
        Create = 2,
        /// The mod revision.
        Mod = 3,
        /// The value.
        Value = 4,
    }
}

/// Result of a [`RangeRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RangeResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Matching keys (empty when only the count was asked for).
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    /// More keys matched than were returned.
    #[prost(bool, tag = "3")]
    pub more: bool,
    /// Number of keys in the range, regardless of limit and filters.
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// Writes one key.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// Lease to attach the key to; 0 for none.
    #[prost(int64, tag = "3")]
    pub lease: i64,
    /// Return the key as it was before the write.
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

/// Result of a [`PutRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct PutResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The key before the write, when asked for and it existed.
    #[prost(message, optional, tag = "2")]
    pub prev_kv: Option<KeyValue>,
}

/// Deletes one key or the range `[key, range_end)`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DeleteRangeRequest {
    /// First key of the range, or the only key when `range_end` is empty.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range, exclusive (same conventions as [`RangeRequest::range_end`]).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Return the deleted keys.
    #[prost(bool, tag = "3")]
    pub prev_kv: bool,
}

/// Result of a [`DeleteRangeRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DeleteRangeResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Number of keys deleted.
    #[prost(int64, tag = "2")]
    pub deleted: i64,
    /// The deleted keys, when asked for.
    #[prost(message, repeated, tag = "3")]
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a transaction branch.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RequestOp {
    /// The operation.
    #[prost(oneof = "request_op::Request", tags = "1, 2, 3, 4")]
    pub request: Option<request_op::Request>,
}

/// Types nested in [`RequestOp`].
pub mod request_op {
    /// The operations a transaction can carry.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
    pub enum Request {
        /// A read.
        #[prost(message, tag = "1")]
        RequestRange(super::RangeRequest),
        /// A write.
        #[prost(message, tag = "2")]
        RequestPut(super::PutRequest),
        /// A delete.
        #[prost(message, tag = "3")]
        RequestDeleteRange(super::DeleteRangeRequest),
        /// A nested transaction.
        #[prost(message, tag = "4")]
        RequestTxn(super::TxnRequest),
    }
}

/// Result of one [`RequestOp`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ResponseOp {
    /// The result.
    #[prost(oneof = "response_op::Response", tags = "1, 2, 3, 4")]
    pub response: Option<response_op::Response>,
}

/// Types nested in [`ResponseOp`].
pub mod response_op {
    /// The results a transaction can return.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
    pub enum Response {
        /// Result of a read.
        #[prost(message, tag = "1")]
        ResponseRange(super::RangeResponse),
        /// Result of a write.
        #[prost(message, tag = "2")]
        ResponsePut(super::PutResponse),
        /// Result of a delete.
        #[prost(message, tag = "3")]
        ResponseDeleteRange(super::DeleteRangeResponse),
        /// Result of a nested transaction.
        #[prost(message, tag = "4")]
        ResponseTxn(super::TxnResponse),
    }
}

/// One guard of a transaction: compares a field of a key (or of every key in a range).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Compare {
    /// The comparison ([`compare::CompareResult`]).
    #[prost(enumeration = "compare::CompareResult", tag = "1")]
    pub result: i32,
    /// The field compared ([`compare::CompareTarget`]).
    #[prost(enumeration = "compare::CompareTarget", tag = "2")]
    pub target: i32,
    /// The key compared.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// The value compared against; its variant matches `target`.
    #[prost(oneof = "compare::TargetUnion", tags = "4, 5, 6, 7, 8")]
    pub target_union: Option<compare::TargetUnion>,
    /// Compare every key in `[key, range_end)` (same conventions as
    /// [`RangeRequest::range_end`]).
    #[prost(bytes = "vec", tag = "64")]
    pub range_end: Vec<u8>,
}

/// Types nested in [`Compare`].
pub mod compare {
    /// How the key's field must relate to the given value.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum CompareResult {
        /// Equal.
        Equal = 0,
        /// Greater than.
        Greater = 1,
        /// Less than.
        Less = 2,
        /// Not equal.
        NotEqual = 3,
    }

    /// The field of the key that is compared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum CompareTarget {
        /// The key's version.
        Version = 0,
        /// The create revision.
        Create = 1,
        /// The mod revision.
        Mod = 2,
        /// The value.
        Value = 3,
        /// The lease.
        Lease = 4,
    }

    /// The value a key's field is compared against.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
    pub enum TargetUnion {
        /// A version.
        #[prost(int64, tag = "4")]
        Version(i64),
        /// A create revision.
        #[prost(int64, tag = "5")]
        CreateRevision(i64),
        /// A mod revision.
        #[prost(int64, tag = "6")]
        ModRevision(i64),
        /// A value.
        #[prost(bytes, tag = "7")]
        Value(Vec<u8>),
        /// A lease ID.
        #[prost(int64, tag = "8")]
        Lease(i64),
    }
}

/// An atomic if/then/else: when every compare holds, `success` runs, else `failure`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct TxnRequest {
    /// Guards, all of which must hold.
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    /// Operations run when the guards hold.
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

/// Result of a [`TxnRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct TxnResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Whether the guards held (so `success` ran).
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
    /// Results of the branch that ran, in order.
    #[prost(message, repeated, tag = "3")]
    pub responses: Vec<ResponseOp>,
}

/// Discards the history superseded before a revision.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct CompactionRequest {
    /// Revision to compact up to.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// Answer only once the compaction is physically applied to the backend.
    #[prost(bool, tag = "2")]
    pub physical: bool,
}

/// Result of a [`CompactionRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct CompactionResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

// ---------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------

/// A message on a watch stream from the client.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchRequest {
    /// What the client asks for.
    #[prost(oneof = "watch_request::RequestUnion", tags = "1, 2, 3")]
    pub request_union: Option<watch_request::RequestUnion>,
}

/// Types nested in [`WatchRequest`].
pub mod watch_request {
    /// The requests a watch stream carries.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Oneof)]
    pub enum RequestUnion {
        /// Start a watcher.
        #[prost(message, tag = "1")]
        CreateRequest(super::WatchCreateRequest),
        /// Stop a watcher.
        #[prost(message, tag = "2")]
        CancelRequest(super::WatchCancelRequest),
        /// Ask for a progress notification.
        #[prost(message, tag = "3")]
        ProgressRequest(super::WatchProgressRequest),
    }
}

/// Starts a watcher on one key or the range `[key, range_end)`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchCreateRequest {
    /// First key of the range, or the only key when `range_end` is empty.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// End of the range, exclusive (same conventions as [`RangeRequest::range_end`]).
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Revision to watch from, inclusive; 0 is "from now".
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    /// Ask for periodic empty responses while nothing happens.
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    /// Event kinds to leave out ([`watch_create_request::FilterType`]).
    #[prost(enumeration = "watch_create_request::FilterType", repeated, tag = "5")]
    pub filters: Vec<i32>,
    /// Include each key's previous version in events.
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    /// Watch ID to use; 0 lets the server choose.
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
    /// Allow large revisions to be split over several responses.
    #[prost(bool, tag = "8")]
    pub fragment: bool,
}

/// Types nested in [`WatchCreateRequest`].
pub mod watch_create_request {
    /// An event kind a watcher can leave out.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum FilterType {
        /// Leave out puts.
        Noput = 0,
        /// Leave out deletes.
        Nodelete = 1,
    }
}

/// Stops a watcher.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchCancelRequest {
    /// The watcher to stop.
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

/// Asks for a progress notification on the stream as soon as possible.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchProgressRequest {}

/// A message on a watch stream from the server.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct WatchResponse {
    /// Response header; on a progress notification its revision is the progress.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The watcher this response is for.
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    /// Answers a create request.
    #[prost(bool, tag = "3")]
    pub created: bool,
    /// The watcher is cancelled (asked for, or its start revision was compacted).
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    /// Oldest revision still available, when the watcher asked for a compacted one.
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    /// Why the watcher was cancelled.
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    /// More fragments of this revision follow.
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    /// The events.
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

// ---------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------

/// Creates a lease.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseGrantRequest {
    /// Requested time to live, in seconds.
    #[prost(int64, tag = "1")]
    pub ttl: i64,
    /// Requested lease ID; 0 lets the server choose.
    #[prost(int64, tag = "2")]
    pub id: i64,
}

/// Result of a [`LeaseGrantRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseGrantResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// ID of the granted lease.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// Time to live the server chose, in seconds.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    /// Error text, if any.
    #[prost(string, tag = "4")]
    pub error: String,
}

/// Ends a lease, deleting its keys.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseRevokeRequest {
    /// The lease.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// Result of a [`LeaseRevokeRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseRevokeResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// Renews a lease; sent on the keep-alive stream.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseKeepAliveRequest {
    /// The lease.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// Result of one [`LeaseKeepAliveRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseKeepAliveResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The lease.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// New time to live, in seconds; 0 or less if the lease no longer exists.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
}

/// Asks about one lease.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseTimeToLiveRequest {
    /// The lease.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Also list the keys attached to it.
    #[prost(bool, tag = "2")]
    pub keys: bool,
}

/// Result of a [`LeaseTimeToLiveRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseTimeToLiveResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The lease.
    #[prost(int64, tag = "2")]
    pub id: i64,
    /// Remaining time to live, in seconds; -1 if the lease does not exist.
    #[prost(int64, tag = "3")]
    pub ttl: i64,
    /// Time to live granted at creation or last renewal, in seconds.
    #[prost(int64, tag = "4")]
    pub granted_ttl: i64,
    /// Keys attached to the lease, when asked for.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub keys: Vec<Vec<u8>>,
}

/// Lists every lease.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseLeasesRequest {}

/// One lease in a [`LeaseLeasesResponse`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseStatus {
    /// The lease.
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// Result of a [`LeaseLeasesRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct LeaseLeasesResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The leases.
    #[prost(message, repeated, tag = "2")]
    pub leases: Vec<LeaseStatus>,
}

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

/// A member of the cluster.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Member {
    /// Member ID.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Human-readable name; empty until the member has started.
    #[prost(string, tag = "2")]
    pub name: String,
    /// URLs the member serves its peers on (`peerURLs`).
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    /// URLs the member serves clients on (`clientURLs`); empty until it has started.
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    /// The member is a non-voting learner (`isLearner`).
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

/// Adds a member.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberAddRequest {
    /// URLs the new member will serve its peers on.
    #[prost(string, repeated, tag = "1")]
    pub peer_urls: Vec<String>,
    /// Add it as a non-voting learner.
    #[prost(bool, tag = "2")]
    pub is_learner: bool,
}

/// Result of a [`MemberAddRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberAddResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The added member.
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
    /// Every member after the addition.
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<Member>,
}

/// Removes a member.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberRemoveRequest {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Result of a [`MemberRemoveRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberRemoveResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Every member after the removal.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// Changes a member's peer URLs.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberUpdateRequest {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its new peer URLs.
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
}

/// Result of a [`MemberUpdateRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberUpdateResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Every member after the update.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// Lists the members.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberListRequest {
    /// Answer from a linearizable read of the membership rather than local state.
    #[prost(bool, tag = "1")]
    pub linearizable: bool,
}

/// Result of a [`MemberListRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberListResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Every member.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

/// Promotes a learner to a voting member.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberPromoteRequest {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Result of a [`MemberPromoteRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberPromoteResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Every member after the promotion.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

// ---------------------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------------------

/// Kind of a cluster alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmType {
    /// No alarm; in a request, any alarm.
    None = 0,
    /// The storage quota is used up.
    Nospace = 1,
    /// Store corruption was detected.
    Corrupt = 2,
}

/// Lists, raises or clears alarms.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct AlarmRequest {
    /// What to do ([`alarm_request::AlarmAction`]).
    #[prost(enumeration = "alarm_request::AlarmAction", tag = "1")]
    pub action: i32,
    /// Member the alarm concerns (`memberID`); 0 for every member.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// Kind of alarm ([`AlarmType`]).
    #[prost(enumeration = "AlarmType", tag = "3")]
    pub alarm: i32,
}

/// Types nested in [`AlarmRequest`].
pub mod alarm_request {
    /// What an alarm request does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum AlarmAction {
        /// List alarms.
        Get = 0,
        /// Raise an alarm.
        Activate = 1,
        /// Clear an alarm.
        Deactivate = 2,
    }
}

/// A raised alarm.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct AlarmMember {
    /// Member that raised it (`memberID`).
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// Kind of alarm ([`AlarmType`]).
    #[prost(enumeration = "AlarmType", tag = "2")]
    pub alarm: i32,
}

/// Result of an [`AlarmRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct AlarmResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The alarms concerned.
    #[prost(message, repeated, tag = "2")]
    pub alarms: Vec<AlarmMember>,
}

/// Asks a member for its status.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct StatusRequest {}

/// Result of a [`StatusRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct StatusResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Server version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// Backend size allocated, in bytes (`dbSize`).
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    /// Member ID of the leader as this member sees it.
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    /// Raft committed index (`raftIndex`).
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    /// Raft term (`raftTerm`).
    #[prost(uint64, tag = "6")]
    pub raft_term: u64,
    /// Raft applied index (`raftAppliedIndex`).
    #[prost(uint64, tag = "7")]
    pub raft_applied_index: u64,
    /// Active alarms and health problems.
    #[prost(string, repeated, tag = "8")]
    pub errors: Vec<String>,
    /// Backend size in use, in bytes (`dbSizeInUse`).
    #[prost(int64, tag = "9")]
    pub db_size_in_use: i64,
    /// This member is a learner (`isLearner`).
    #[prost(bool, tag = "10")]
    pub is_learner: bool,
    /// Version of the storage format (`storageVersion`; etcd 3.6).
    #[prost(string, tag = "11")]
    pub storage_version: String,
    /// Configured storage quota, in bytes (`dbSizeQuota`; etcd 3.6).
    #[prost(int64, tag = "12")]
    pub db_size_quota: i64,
    /// Downgrade in progress, if any (`downgradeInfo`; etcd 3.6).
    #[prost(message, optional, tag = "13")]
    pub downgrade_info: Option<DowngradeInfo>,
}

/// State of a cluster downgrade.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DowngradeInfo {
    /// A downgrade is enabled.
    #[prost(bool, tag = "1")]
    pub enabled: bool,
    /// Version being downgraded to (`targetVersion`).
    #[prost(string, tag = "2")]
    pub target_version: String,
}

/// Defragments a member's backend.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DefragmentRequest {}

/// Result of a [`DefragmentRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DefragmentResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// Asks for a hash of the whole backend (meant for tests).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HashRequest {}

/// Result of a [`HashRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HashResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The hash.
    #[prost(uint32, tag = "2")]
    pub hash: u32,
}

/// Asks for a hash of the key space up to a revision (etcd's `HashKVRequest`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HashKvRequest {
    /// Revision to hash up to; 0 for the newest.
    #[prost(int64, tag = "1")]
    pub revision: i64,
}

/// Result of a [`HashKvRequest`] (etcd's `HashKVResponse`).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HashKvResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// The hash.
    #[prost(uint32, tag = "2")]
    pub hash: u32,
    /// Compacted revision when hashing began.
    #[prost(int64, tag = "3")]
    pub compact_revision: i64,
    /// Revision the hash covers up to (etcd 3.6).
    #[prost(int64, tag = "4")]
    pub hash_revision: i64,
}

/// Asks for a snapshot of the backend, streamed in chunks.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct SnapshotRequest {}

/// One chunk of a snapshot stream.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct SnapshotResponse {
    /// Response header; the first one of the stream gives the snapshot's point in time.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Bytes still to come after this chunk.
    #[prost(uint64, tag = "2")]
    pub remaining_bytes: u64,
    /// The chunk.
    #[prost(bytes = "vec", tag = "3")]
    pub blob: Vec<u8>,
    /// Version of the server that made the snapshot (etcd 3.6).
    #[prost(string, tag = "4")]
    pub version: String,
}

/// Asks the leader to hand leadership to another member.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MoveLeaderRequest {
    /// Member to become leader (`targetID`).
    #[prost(uint64, tag = "1")]
    pub target_id: u64,
}

/// Result of a [`MoveLeaderRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MoveLeaderResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// Validates, starts or cancels a cluster downgrade (etcd 3.5).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DowngradeRequest {
    /// What to do ([`downgrade_request::DowngradeAction`]).
    #[prost(enumeration = "downgrade_request::DowngradeAction", tag = "1")]
    pub action: i32,
    /// Target version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// Types nested in [`DowngradeRequest`].
pub mod downgrade_request {
    /// What a downgrade request does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum DowngradeAction {
        /// Check that the target version is possible.
        Validate = 0,
        /// Start the downgrade.
        Enable = 1,
        /// Cancel a downgrade in progress.
        Cancel = 2,
    }
}

/// Result of a [`DowngradeRequest`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DowngradeResponse {
    /// Response header.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Current cluster version.
    #[prost(string, tag = "2")]
    pub version: String,
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

// Stubs generated by build.rs (tonic_build::manual). They pass clippy as they are (their
// modules carry tonic's own `#![allow]`s), so no extra allow is put here.
mod generated {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.KV.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Lease.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Cluster.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Maintenance.rs"));
}
pub use generated::{
    cluster_client, cluster_server, k_v_client, k_v_server, lease_client, lease_server,
    maintenance_client, maintenance_server, watch_client, watch_server,
};
