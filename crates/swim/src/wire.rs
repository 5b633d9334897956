//! The wire format: versioned, length-checked, big-endian. Every read checks the bytes left, so
//! a truncated or garbage datagram decodes to a [`DecodeError`], never a panic.
//!
//! ```text
//! packet  = magic "CS" | version u8 | sender name | message | n u8 | n × (len u16 | update)
//! stream  = magic "CS" | version u8 | sender name | stream message
//! name    = len u8 (1..=128) | utf-8 bytes
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::addr::Addr;

/// First two bytes of every packet and stream frame.
pub const MAGIC: [u8; 2] = *b"CS";
/// Wire version; a packet with another version is refused with [`DecodeError::Version`].
pub const VERSION: u8 = 1;
/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Largest encoded metadata accepted.
pub const MAX_META_LEN: usize = 512;
/// Largest user event payload accepted.
pub const MAX_EVENT_PAYLOAD: usize = 512;

/// A node's name: its identity in the cluster. Cheap to clone.
pub type Name = Arc<str>;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the field needs.
    Truncated {
        /// Which field was cut short.
        field: &'static str,
    },
    /// Not a colony packet.
    Magic,
    /// A colony packet of a version this build does not speak.
    Version(u8),
    /// An unknown message or update kind.
    Kind(u8),
    /// A field with an impossible value.
    Invalid(&'static str),
    /// Bytes left over after the last field.
    Trailing(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { field } => write!(f, "truncated at {field}"),
            Self::Magic => f.write_str("not a colony gossip packet (bad magic)"),
            Self::Version(v) => write!(
                f,
                "unsupported wire version {v} (this build speaks {VERSION})"
            ),
            Self::Kind(k) => write!(f, "unknown message kind {k}"),
            Self::Invalid(what) => write!(f, "invalid {what}"),
            Self::Trailing(n) => write!(f, "{n} trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Node metadata: role, zone and free-form tags. Versioned by the incarnation of the
/// [`Update::Alive`] that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// `server` or `client` (or empty).
    pub role: String,
    /// Failure domain, e.g. a rack or availability zone.
    pub zone: String,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
}

/// One piece of disseminated membership knowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The member is alive at this address, generation and incarnation.
    Alive {
        /// Member name.
        name: Name,
        /// Where it listens.
        addr: Addr,
        /// Identifies one run of the process; a restart picks a larger one.
        generation: u64,
        /// Bumped by the member itself to refute suspicion or announce new metadata.
        incarnation: u32,
        /// Its metadata.
        meta: Arc<Meta>,
    },
    /// `from` suspects the member at this incarnation.
    Suspect {
        /// Member name.
        name: Name,
        /// Generation suspected.
        generation: u64,
        /// Incarnation suspected.
        incarnation: u32,
        /// Who suspects it.
        from: Name,
    },
    /// `from` declares the member failed.
    Dead {
        /// Member name.
        name: Name,
        /// Generation declared failed.
        generation: u64,
        /// Incarnation declared failed.
        incarnation: u32,
        /// Who declared it.
        from: Name,
    },
    /// The member left gracefully (or was force-left while failed).
    Left {
        /// Member name.
        name: Name,
        /// Generation that left.
        generation: u64,
        /// Incarnation that left.
        incarnation: u32,
    },
    /// A user event (Consul's `/v1/event/fire`), ordered by a Lamport time.
    Event {
        /// Lamport time assigned by the firing node.
        ltime: u64,
        /// Unique id (a UUID string).
        id: String,
        /// Event name.
        name: String,
        /// Opaque payload.
        payload: Vec<u8>,
    },
}

impl Update {
    /// The member this update is about, or `None` for a user event.
    pub fn member(&self) -> Option<&Name> {
        match self {
            Self::Alive { name, .. }
            | Self::Suspect { name, .. }
            | Self::Dead { name, .. }
            | Self::Left { name, .. } => Some(name),
            Self::Event { .. } => None,
        }
    }
}

/// Datagram messages (UDP in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Are you alive? `target` names the expected receiver, so that a reused address is noticed.
    Ping {
        /// Sequence number echoed by the ack.
        seq: u32,
        /// The member the sender believes it is pinging.
        target: Name,
        /// Low 32 bits of the sender's view digest (anti-entropy hint).
        digest: u32,
    },
    /// Yes.
    Ack {
        /// Sequence number of the ping.
        seq: u32,
    },
    /// Please ping `target` for me and relay its ack (and a nack if it stays silent).
    PingReq {
        /// The origin's sequence number, echoed in the relayed ack or nack.
        seq: u32,
        /// Member to ping.
        target: Name,
        /// Its address.
        addr: Addr,
        /// Whether the origin wants a nack on timeout (Lifeguard).
        nack: bool,
    },
    /// The relay tried and heard nothing from the target (Lifeguard: tells the origin that
    /// its own link to the relay works).
    Nack {
        /// The origin's sequence number.
        seq: u32,
    },
    /// Only piggybacked updates.
    Gossip,
}

/// Stream messages (TCP in production): anti-entropy and joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// A digest of the sender's view; a receiver whose digest differs answers with its state.
    Digest {
        /// Order-independent hash of the view.
        digest: u64,
        /// Members in the view (alive, suspect, failed and left).
        members: u32,
    },
    /// A full view. `reply` asks the receiver to answer with its own view.
    State {
        /// Whether to answer with a `State { reply: false }`.
        reply: bool,
        /// Whether the sender is joining (the answer then always carries the full view).
        join: bool,
        /// One record per member (Alive, Suspect, Dead or Left).
        members: Vec<Update>,
        /// Recent user events, so that a joiner or a healed partition sees them.
        events: Vec<Update>,
    },
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sender's name.
    pub from: Name,
    /// The message.
    pub message: Message,
    /// Piggybacked updates.
    pub updates: Vec<Update>,
}

/// A decoded stream frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    /// Sender's name.
    pub from: Name,
    /// Sender's address for replies.
    pub reply_to: Addr,
    /// The message.
    pub message: StreamMessage,
}

// ------------------------------------------------------------------------------------ writer

/// Appends wire fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a packet or frame: magic, version, sender.
    pub fn header(from: &str) -> Self {
        let mut w = Self {
            buf: Vec::with_capacity(256),
        };
        w.buf.extend_from_slice(&MAGIC);
        w.buf.push(VERSION);
        w.name(from);
        w
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn name(&mut self, s: &str) {
        let bytes = &s.as_bytes()[..s.len().min(MAX_NAME_LEN)];
        self.u8(bytes.len() as u8);
        self.buf.extend_from_slice(bytes);
    }
    fn str16(&mut self, s: &[u8]) {
        self.u16(s.len() as u16);
        self.buf.extend_from_slice(s);
    }
    fn addr(&mut self, a: &Addr) {
        self.buf.extend_from_slice(&a.ip);
        self.u16(a.port);
    }
    fn meta(&mut self, m: &Meta) {
        self.str16(m.role.as_bytes());
        self.str16(m.zone.as_bytes());
        self.u16(m.tags.len() as u16);
        for (k, v) in &m.tags {
            self.str16(k.as_bytes());
            self.str16(v.as_bytes());
        }
    }
    /// Length of what has been written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True if nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Writes a datagram message.
    pub fn message(&mut self, m: &Message) {
        match m {
            Message::Ping {
                seq,
                target,
                digest,
            } => {
                self.u8(1);
                self.u32(*seq);
                self.name(target);
                self.u32(*digest);
            }
            Message::Ack { seq } => {
                self.u8(2);
                self.u32(*seq);
            }
            Message::PingReq {
                seq,
                target,
                addr,
                nack,
            } => {
                self.u8(3);
                self.u32(*seq);
                self.name(target);
                self.addr(addr);
                self.u8(u8::from(*nack));
            }
            Message::Nack { seq } => {
                self.u8(4);
                self.u32(*seq);
            }
            Message::Gossip => self.u8(5),
        }
    }
    /// Writes one update without framing.
    pub fn update(&mut self, u: &Update) {
        match u {
            Update::Alive {
                name,
                addr,
                generation,
                incarnation,
                meta,
            } => {
                self.u8(1);
                self.name(name);
                self.addr(addr);
                self.u64(*generation);
                self.u32(*incarnation);
                self.meta(meta);
            }
            Update::Suspect {
                name,
                generation,
                incarnation,
                from,
            } => {
                self.u8(2);
                self.name(name);
                self.u64(*generation);
                self.u32(*incarnation);
                self.name(from);
            }
            Update::Dead {
                name,
                generation,
                incarnation,
                from,
            } => {
                self.u8(3);
                self.name(name);
                self.u64(*generation);
                self.u32(*incarnation);
                self.name(from);
            }
            Update::Left {
                name,
                generation,
                incarnation,
            } => {
                self.u8(4);
                self.name(name);
                self.u64(*generation);
                self.u32(*incarnation);
            }
            Update::Event {
                ltime,
                id,
                name,
                payload,
            } => {
                self.u8(5);
                self.u64(*ltime);
                self.name(id);
                self.name(name);
                self.str16(payload);
            }
        }
    }
    /// Writes a stream message.
    pub fn stream_message(&mut self, reply_to: &Addr, m: &StreamMessage) {
        self.addr(reply_to);
        match m {
            StreamMessage::Digest { digest, members } => {
                self.u8(1);
                self.u64(*digest);
                self.u32(*members);
            }
            StreamMessage::State {
                reply,
                join,
                members,
                events,
            } => {
                self.u8(2);
                self.u8(u8::from(*reply) | (u8::from(*join) << 1));
                self.u32(members.len() as u32);
                for u in members {
                    self.framed_update_bytes(&encode_update(u));
                }
                self.u32(events.len() as u32);
                for u in events {
                    self.framed_update_bytes(&encode_update(u));
                }
            }
        }
    }
    /// Appends an already encoded update with its length prefix.
    pub fn framed_update_bytes(&mut self, bytes: &[u8]) {
        self.u16(bytes.len() as u16);
        self.buf.extend_from_slice(bytes);
    }
    /// Appends the count byte that precedes piggybacked updates.
    pub fn update_count(&mut self, n: u8) {
        self.u8(n);
    }
    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Encodes one update on its own (the unit the broadcast queue stores).
pub fn encode_update(u: &Update) -> Vec<u8> {
    let mut w = Writer::default();
    w.update(u);
    w.finish()
}

/// Encodes a packet with the given (already encoded) updates.
pub fn encode_packet(from: &str, message: &Message, updates: &[&[u8]]) -> Vec<u8> {
    let mut w = Writer::header(from);
    w.message(message);
    w.update_count(updates.len() as u8);
    for u in updates {
        w.framed_update_bytes(u);
    }
    w.finish()
}

/// Bytes a packet takes before its piggybacked updates (header, message, update count).
pub fn packet_overhead(from: &str, message: &Message) -> usize {
    let mut w = Writer::header(from);
    w.message(message);
    w.len() + 1
}

/// Encodes a stream frame.
pub fn encode_stream(from: &str, reply_to: &Addr, message: &StreamMessage) -> Vec<u8> {
    let mut w = Writer::header(from);
    w.stream_message(reply_to, message);
    w.finish()
}

// ------------------------------------------------------------------------------------ reader

/// Reads wire fields, checking every length.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() - self.pos < n {
            return Err(DecodeError::Truncated { field });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self, len: usize, field: &'static str) -> Result<String, DecodeError> {
        let b = self.take(len, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid(field))
    }
    fn name(&mut self, field: &'static str) -> Result<Name, DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(DecodeError::Invalid(field));
        }
        let b = self.take(len, field)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::Invalid(field))?;
        Ok(Name::from(s))
    }
    fn str16(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::Invalid(field));
        }
        self.string(len, field)
    }
    fn addr(&mut self, field: &'static str) -> Result<Addr, DecodeError> {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(self.take(16, field)?);
        Ok(Addr {
            ip,
            port: self.u16(field)?,
        })
    }
    fn meta(&mut self) -> Result<Meta, DecodeError> {
        let start = self.pos;
        let role = self.str16("meta role", MAX_META_LEN)?;
        let zone = self.str16("meta zone", MAX_META_LEN)?;
        let n = self.u16("meta tag count")?;
        let mut tags = BTreeMap::new();
        for _ in 0..n {
            let k = self.str16("meta tag", MAX_META_LEN)?;
            let v = self.str16("meta tag", MAX_META_LEN)?;
            tags.insert(k, v);
        }
        if self.pos - start > MAX_META_LEN {
            return Err(DecodeError::Invalid("meta (larger than 512 bytes)"));
        }
        Ok(Meta { role, zone, tags })
    }
    fn header(&mut self) -> Result<Name, DecodeError> {
        if self.take(2, "magic")? != MAGIC {
            return Err(DecodeError::Magic);
        }
        let v = self.u8("version")?;
        if v != VERSION {
            return Err(DecodeError::Version(v));
        }
        self.name("sender")
    }
    fn end(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
    fn message(&mut self) -> Result<Message, DecodeError> {
        Ok(match self.u8("message kind")? {
            1 => Message::Ping {
                seq: self.u32("ping seq")?,
                target: self.name("ping target")?,
                digest: self.u32("ping digest")?,
            },
            2 => Message::Ack {
                seq: self.u32("ack seq")?,
            },
            3 => Message::PingReq {
                seq: self.u32("ping-req seq")?,
                target: self.name("ping-req target")?,
                addr: self.addr("ping-req addr")?,
                nack: match self.u8("ping-req nack")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("ping-req nack flag")),
                },
            },
            4 => Message::Nack {
                seq: self.u32("nack seq")?,
            },
            5 => Message::Gossip,
            k => return Err(DecodeError::Kind(k)),
        })
    }
    fn update(&mut self) -> Result<Update, DecodeError> {
        Ok(match self.u8("update kind")? {
            1 => Update::Alive {
                name: self.name("alive name")?,
                addr: self.addr("alive addr")?,
                generation: self.u64("alive generation")?,
                incarnation: self.u32("alive incarnation")?,
                meta: Arc::new(self.meta()?),
            },
            2 => Update::Suspect {
                name: self.name("suspect name")?,
                generation: self.u64("suspect generation")?,
                incarnation: self.u32("suspect incarnation")?,
                from: self.name("suspect from")?,
            },
            3 => Update::Dead {
                name: self.name("dead name")?,
                generation: self.u64("dead generation")?,
                incarnation: self.u32("dead incarnation")?,
                from: self.name("dead from")?,
            },
            4 => Update::Left {
                name: self.name("left name")?,
                generation: self.u64("left generation")?,
                incarnation: self.u32("left incarnation")?,
            },
            5 => Update::Event {
                ltime: self.u64("event ltime")?,
                id: self.name("event id")?.to_string(),
                name: self.name("event name")?.to_string(),
                payload: {
                    let len = usize::from(self.u16("event payload")?);
                    if len > MAX_EVENT_PAYLOAD {
                        return Err(DecodeError::Invalid(
                            "event payload (larger than 512 bytes)",
                        ));
                    }
                    self.take(len, "event payload")?.to_vec()
                },
            },
            k => return Err(DecodeError::Kind(k)),
        })
    }
    fn framed_update(&mut self) -> Result<Update, DecodeError> {
        let len = usize::from(self.u16("update length")?);
        let body = self.take(len, "update")?;
        let mut inner = Reader::new(body);
        let u = inner.update()?;
        inner.end()?;
        Ok(u)
    }
}

/// Decodes a datagram.
pub fn decode_packet(bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(bytes);
    let from = r.header()?;
    let message = r.message()?;
    let n = r.u8("update count")?;
    let mut updates = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        updates.push(r.framed_update()?);
    }
    r.end()?;
    Ok(Packet {
        from,
        message,
        updates,
    })
}

/// Decodes a stream frame.
pub fn decode_stream(bytes: &[u8]) -> Result<StreamFrame, DecodeError> {
    let mut r = Reader::new(bytes);
    let from = r.header()?;
    let reply_to = r.addr("reply address")?;
    let message = match r.u8("stream kind")? {
        1 => StreamMessage::Digest {
            digest: r.u64("digest")?,
            members: r.u32("digest members")?,
        },
        2 => {
            let flags = r.u8("state flags")?;
            if flags > 3 {
                return Err(DecodeError::Invalid("state flags"));
            }
            let n = r.u32("state count")? as usize;
            // Each record takes at least 3 bytes: refuse counts the frame cannot hold.
            if n > bytes.len() / 3 {
                return Err(DecodeError::Invalid("state count"));
            }
            let mut members = Vec::with_capacity(n);
            for _ in 0..n {
                let u = r.framed_update()?;
                if u.member().is_none() {
                    return Err(DecodeError::Invalid("state record"));
                }
                members.push(u);
            }
            let n = r.u32("event count")? as usize;
            if n > bytes.len() / 3 {
                return Err(DecodeError::Invalid("event count"));
            }
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                let u = r.framed_update()?;
                if u.member().is_some() {
                    return Err(DecodeError::Invalid("event record"));
                }
                events.push(u);
            }
            StreamMessage::State {
                reply: flags & 1 != 0,
                join: flags & 2 != 0,
                members,
                events,
            }
        }
        k => return Err(DecodeError::Kind(k)),
    };
    r.end()?;
    Ok(StreamFrame {
        from,
        reply_to,
        message,
    })
}
