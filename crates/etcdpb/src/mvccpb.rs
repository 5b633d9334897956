//! Package `mvccpb`: the stored form of a key and the events a watch reports.

/// A key as stored: its value and the revisions that describe its history.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct KeyValue {
    /// The key. Never empty for a stored key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Store revision at which the key was last created.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// Store revision at which the key was last modified.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Number of modifications since creation; a delete resets it to 0.
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// Lease the key is attached to, or 0 for none.
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// One change to a key, as delivered to a watcher.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Event {
    /// Kind of change ([`event::EventType`]).
    #[prost(enumeration = "event::EventType", tag = "1")]
    pub r#type: i32,
    /// The key after a put; for a delete, the key with `mod_revision` set to the deletion's.
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    /// The key before the change, when the watcher asked for it.
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

/// Types nested in [`Event`].
pub mod event {
    /// Whether an event stored or removed a key.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum EventType {
        /// The key was written.
        Put = 0,
        /// The key was deleted (or expired with its lease).
        Delete = 1,
    }
}
