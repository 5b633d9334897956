//! DNS messages on the wire (RFC 1035, with EDNS0 of RFC 6891): parsing a query and
//! encoding an answer within a size limit. Pure: bytes in, bytes out; malformed input is a
//! [`ParseError`], never a panic.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type NS.
pub const TYPE_NS: u16 = 2;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type SOA.
pub const TYPE_SOA: u16 = 6;
/// Record type PTR.
pub const TYPE_PTR: u16 = 12;
/// Record type TXT.
pub const TYPE_TXT: u16 = 16;
/// Record type AAAA (an IPv6 address).
pub const TYPE_AAAA: u16 = 28;
/// Record type SRV (RFC 2782).
pub const TYPE_SRV: u16 = 33;
/// The EDNS0 pseudo-record.
pub const TYPE_OPT: u16 = 41;
/// Query type ANY.
pub const TYPE_ANY: u16 = 255;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// The largest name, in wire bytes (RFC 1035 §2.3.4).
pub const NAME_BYTES_MAX: usize = 255;
/// The largest label.
pub const LABEL_BYTES_MAX: usize = 63;
/// A UDP answer's size without EDNS.
pub const UDP_BYTES_CLASSIC: usize = 512;
/// The largest UDP answer this server sends, whatever EDNS offers (the usual safe size).
pub const UDP_BYTES_MAX: usize = 4096;
/// The largest message over TCP (its length prefix is 16 bits).
pub const TCP_BYTES_MAX: usize = 65_535;
/// The EDNS payload size this server advertises.
pub const EDNS_PAYLOAD: u16 = UDP_BYTES_MAX as u16;

const HEADER_BYTES: usize = 12;
const POINTER_JUMPS_MAX: usize = 64;
const OPT_RECORD_BYTES: usize = 11;

/// A response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// No error (possibly no data).
    NoError = 0,
    /// The query was malformed.
    FormErr = 1,
    /// The server could not answer (here: the catalog could not be read).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// The opcode is not supported.
    NotImp = 4,
    /// Not this server's zone (it does no recursion).
    Refused = 5,
}

/// A domain name: its labels, as received (compare them case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Name {
    labels: Vec<Vec<u8>>,
}

/// Why a text is not a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A label is empty (two dots in a row) or longer than 63 bytes.
    #[error("label {0:?} is empty or longer than 63 bytes")]
    BadLabel(String),
    /// The whole name is longer than 255 bytes.
    #[error("name longer than 255 bytes")]
    TooLong,
}

impl Name {
    /// The root name.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses `a.b.c` or `a.b.c.` (no escapes).
    ///
    /// # Errors
    /// [`NameError`] for an empty or overlong label, or an overlong name.
    pub fn from_dotted(text: &str) -> Result<Self, NameError> {
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Ok(Self::root());
        }
        let labels = text
            .split('.')
            .map(|label| {
                if label.is_empty() || label.len() > LABEL_BYTES_MAX {
                    Err(NameError::BadLabel(label.to_string()))
                } else {
                    Ok(label.as_bytes().to_vec())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = Self { labels };
        if name.wire_len() > NAME_BYTES_MAX {
            return Err(NameError::TooLong);
        }
        Ok(name)
    }

    /// The labels, leftmost first.
    pub fn labels(&self) -> &[Vec<u8>] {
        &self.labels
    }

    /// The name with `suffix`'s labels appended.
    ///
    /// # Errors
    /// [`NameError::TooLong`] if the result is over 255 bytes.
    pub fn join(&self, suffix: &Name) -> Result<Self, NameError> {
        let mut labels = self.labels.clone();
        labels.extend(suffix.labels.iter().cloned());
        let name = Self { labels };
        if name.wire_len() > NAME_BYTES_MAX {
            return Err(NameError::TooLong);
        }
        Ok(name)
    }

    /// Bytes on the wire, uncompressed.
    pub fn wire_len(&self) -> usize {
        self.labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1
    }

    /// Whether `suffix` ends this name (case-insensitively); returns the labels before it.
    pub fn strip_suffix(&self, suffix: &Name) -> Option<&[Vec<u8>]> {
        let n = self.labels.len().checked_sub(suffix.labels.len())?;
        let matches = self.labels[n..]
            .iter()
            .zip(&suffix.labels)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
        matches.then(|| &self.labels[..n])
    }

    /// The name in presentation form, with a trailing dot; bytes outside printable ASCII,
    /// dots and backslashes inside labels are escaped as `\DDD`.
    pub fn to_dotted(&self) -> String {
        if self.labels.is_empty() {
            return ".".to_string();
        }
        let mut out = String::new();
        for label in &self.labels {
            for &byte in label {
                if byte.is_ascii_graphic() && byte != b'.' && byte != b'\\' {
                    out.push(char::from(byte));
                } else {
                    out.push_str(&format!("\\{byte:03}"));
                }
            }
            out.push('.');
        }
        out
    }

    fn lowercase_key(labels: &[Vec<u8>]) -> Vec<u8> {
        let mut key = Vec::new();
        for label in labels {
            key.push(label.len() as u8);
            key.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        key
    }
}

/// The question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked about.
    pub name: Name,
    /// The record type asked for.
    pub qtype: u16,
    /// The class (IN in practice).
    pub qclass: u16,
}

/// What an EDNS0 OPT record in a query says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the asker accepts.
    pub udp_payload: u16,
    /// The EDNS version (only 0 exists).
    pub version: u8,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The asker's id, echoed.
    pub id: u16,
    /// The RD flag, echoed.
    pub recursion_desired: bool,
    /// The CD flag, echoed.
    pub checking_disabled: bool,
    /// The one question.
    pub question: Question,
    /// The query's EDNS0 record, if any.
    pub edns: Option<Edns>,
}

/// Why bytes are not a query this server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the 12-byte header: not even an id to answer to.
    #[error("{0} bytes, shorter than a DNS header")]
    ShortHeader(usize),
    /// The QR bit is set: a response, which is never answered (no reflection loops).
    #[error("a response, not a query")]
    NotAQuery,
    /// Only QUERY (opcode 0) is served.
    #[error("opcode {0} is not supported")]
    Opcode(u8),
    /// Not exactly one question.
    #[error("{0} questions, expected exactly 1")]
    QuestionCount(u16),
    /// The message ends inside a field.
    #[error("message ends early, at byte {0}")]
    Truncated(usize),
    /// A label length with the reserved high bits 01 or 10.
    #[error("bad label type at byte {0}")]
    BadLabel(usize),
    /// A name over 255 bytes.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// Compression pointers that loop or point forward.
    #[error("bad compression pointer at byte {0}")]
    BadPointer(usize),
    /// More than one OPT record, or one not at the root.
    #[error("malformed EDNS OPT record")]
    BadOpt,
}

impl ParseError {
    /// The response code for this error, or `None` if the message gets no answer.
    pub fn rcode(&self) -> Option<Rcode> {
        match self {
            ParseError::ShortHeader(_) | ParseError::NotAQuery => None,
            ParseError::Opcode(_) => Some(Rcode::NotImp),
            _ => Some(Rcode::FormErr),
        }
    }
}

/// The id and opcode of a message, if it has a header (for answering one that does not parse).
pub fn header_id_opcode(bytes: &[u8]) -> Option<(u16, u8)> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    Some((
        u16::from_be_bytes([bytes[0], bytes[1]]),
        ((flags >> 11) & 0xf) as u8,
    ))
}

/// Parses a query.
///
/// # Errors
/// [`ParseError`] says what is wrong; [`ParseError::rcode`] says how to answer it.
pub fn parse_query(bytes: &[u8]) -> Result<Query, ParseError> {
    if bytes.len() < HEADER_BYTES {
        return Err(ParseError::ShortHeader(bytes.len()));
    }
    let word = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let id = word(0);
    let flags = word(2);
    if flags & 0x8000 != 0 {
        return Err(ParseError::NotAQuery);
    }
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(ParseError::Opcode(opcode));
    }
    let (qdcount, ancount, nscount, arcount) = (word(4), word(6), word(8), word(10));
    if qdcount != 1 {
        return Err(ParseError::QuestionCount(qdcount));
    }
    let mut reader = Reader { bytes, pos: 12 };
    let name = reader.name()?;
    let qtype = reader.u16()?;
    let qclass = reader.u16()?;
    for _ in 0..u32::from(ancount) + u32::from(nscount) {
        reader.record()?;
    }
    let mut edns = None;
    for _ in 0..arcount {
        let record = reader.record()?;
        if record.rtype == TYPE_OPT {
            if edns.is_some() || !record.name.labels.is_empty() {
                return Err(ParseError::BadOpt);
            }
            edns = Some(Edns {
                udp_payload: record.class,
                version: (record.ttl >> 16) as u8,
            });
        }
    }
    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        question: Question {
            name,
            qtype,
            qclass,
        },
        edns,
    })
}

struct RawRecord {
    name: Name,
    rtype: u16,
    class: u16,
    ttl: u32,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(ParseError::Truncated(self.pos))?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(ParseError::Truncated(self.pos))?;
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name at the current position, following compression pointers (each must point
    /// before itself, and at most 64 of them), leaving the position after the name's own bytes.
    fn name(&mut self) -> Result<Name, ParseError> {
        let mut labels = Vec::new();
        let mut wire_len = 1;
        let mut at = self.pos;
        let mut resume = None;
        let mut jumps = 0;
        loop {
            let len = *self.bytes.get(at).ok_or(ParseError::Truncated(at))?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    at += 1;
                    break;
                }
                0x00 => {
                    let len = usize::from(len);
                    let label = self
                        .bytes
                        .get(at + 1..at + 1 + len)
                        .ok_or(ParseError::Truncated(at))?;
                    wire_len += len + 1;
                    if wire_len > NAME_BYTES_MAX {
                        return Err(ParseError::NameTooLong);
                    }
                    labels.push(label.to_vec());
                    at += 1 + len;
                }
                0xc0 => {
                    let low = *self.bytes.get(at + 1).ok_or(ParseError::Truncated(at))?;
                    let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                    jumps += 1;
                    if target >= at || jumps > POINTER_JUMPS_MAX {
                        return Err(ParseError::BadPointer(at));
                    }
                    resume.get_or_insert(at + 2);
                    at = target;
                }
                _ => return Err(ParseError::BadLabel(at)),
            }
        }
        self.pos = resume.unwrap_or(at);
        Ok(Name { labels })
    }

    fn record(&mut self) -> Result<RawRecord, ParseError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        let rdlength = self.u16()?;
        self.take(usize::from(rdlength))?;
        Ok(RawRecord {
            name,
            rtype,
            class,
            ttl,
        })
    }
}

/// A record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias.
    Cname(Name),
    /// The name at an address (reverse lookups).
    Ptr(Name),
    /// A service location (RFC 2782).
    Srv {
        /// Lower is preferred.
        priority: u16,
        /// Relative weight among equal priorities.
        weight: u16,
        /// The port.
        port: u16,
        /// The host (never compressed, as RFC 2782 asks).
        target: Name,
    },
    /// Character strings (each at most 255 bytes; longer ones are cut).
    Txt(Vec<Vec<u8>>),
    /// The zone's start of authority.
    Soa {
        /// Primary name server.
        mname: Name,
        /// Responsible mailbox.
        rname: Name,
        /// Serial.
        serial: u32,
        /// Refresh, seconds.
        refresh: u32,
        /// Retry, seconds.
        retry: u32,
        /// Expire, seconds.
        expire: u32,
        /// Negative-caching TTL, seconds.
        minimum: u32,
    },
}

impl RData {
    /// The record type.
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Aaaa(_) => TYPE_AAAA,
            RData::Cname(_) => TYPE_CNAME,
            RData::Ptr(_) => TYPE_PTR,
            RData::Srv { .. } => TYPE_SRV,
            RData::Txt(_) => TYPE_TXT,
            RData::Soa { .. } => TYPE_SOA,
        }
    }
}

/// One resource record of class IN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its owner.
    pub name: Name,
    /// Seconds it may be cached.
    pub ttl: u32,
    /// Its data.
    pub data: RData,
}

/// A response to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The query's id.
    pub id: u16,
    /// The query's opcode.
    pub opcode: u8,
    /// The result.
    pub rcode: Rcode,
    /// AA: this server is authoritative for the name.
    pub authoritative: bool,
    /// RD, echoed from the query.
    pub recursion_desired: bool,
    /// CD, echoed from the query.
    pub checking_disabled: bool,
    /// The question, echoed (absent when the query could not be parsed).
    pub question: Option<Question>,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section.
    pub additional: Vec<Record>,
    /// Whether to add an OPT record (the query had one).
    pub edns: bool,
}

impl Response {
    /// An empty response to `query` with `rcode`.
    pub fn to(query: &Query, rcode: Rcode) -> Self {
        Self {
            id: query.id,
            opcode: 0,
            rcode,
            authoritative: false,
            recursion_desired: query.recursion_desired,
            checking_disabled: query.checking_disabled,
            question: Some(query.question.clone()),
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            edns: query.edns.is_some(),
        }
    }

    /// A bare error response to a message that did not parse.
    pub fn error(id: u16, opcode: u8, rcode: Rcode) -> Self {
        Self {
            id,
            opcode,
            rcode,
            authoritative: false,
            recursion_desired: false,
            checking_disabled: false,
            question: None,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            edns: false,
        }
    }
}

/// An encoded response and whether answer records had to be left out to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The message.
    pub bytes: Vec<u8>,
    /// Answer (or authority) records were dropped: the TC bit is set.
    pub truncated: bool,
}

/// Encodes `response` in at most `limit` bytes (at least 512): answer records that do not
/// fit are dropped and the TC bit set; additional records that do not fit are dropped
/// silently (they are hints). Names are compressed, except SRV targets.
pub fn encode(response: &Response, limit: usize) -> Encoded {
    let limit = limit.clamp(UDP_BYTES_CLASSIC, TCP_BYTES_MAX);
    let mut writer = Writer {
        out: Vec::with_capacity(512),
        offsets: HashMap::new(),
    };
    writer.out.extend_from_slice(&[0; HEADER_BYTES]);
    let mut qdcount = 0u16;
    if let Some(question) = &response.question {
        writer.name(&question.name, true);
        writer.u16(question.qtype);
        writer.u16(question.qclass);
        qdcount = 1;
    }
    let budget = limit - if response.edns { OPT_RECORD_BYTES } else { 0 };
    let mut truncated = false;
    let mut counts = [0u16; 3];
    for (section, records) in [&response.answers, &response.authority, &response.additional]
        .into_iter()
        .enumerate()
    {
        if truncated {
            break;
        }
        for record in records {
            let saved = writer.out.len();
            writer.record(record);
            if writer.out.len() > budget {
                writer.rollback(saved);
                // Additional records are hints: leaving them out is not truncation.
                truncated = section < 2;
                break;
            }
            counts[section] += 1;
        }
    }
    let mut arcount = counts[2];
    if response.edns {
        writer.out.push(0); // root
        writer.u16(TYPE_OPT);
        writer.u16(EDNS_PAYLOAD);
        writer.out.extend_from_slice(&[0, 0, 0, 0]); // extended rcode, version 0, flags
        writer.u16(0); // no options
        arcount += 1;
    }
    let mut flags = 0x8000u16 | (u16::from(response.opcode & 0xf) << 11);
    if response.authoritative {
        flags |= 0x0400;
    }
    if truncated {
        flags |= 0x0200;
    }
    if response.recursion_desired {
        flags |= 0x0100;
    }
    if response.checking_disabled {
        flags |= 0x0010;
    }
    flags |= response.rcode as u16;
    let header = [response.id, flags, qdcount, counts[0], counts[1], arcount];
    for (i, word) in header.iter().enumerate() {
        writer.out[i * 2..i * 2 + 2].copy_from_slice(&word.to_be_bytes());
    }
    Encoded {
        bytes: writer.out,
        truncated,
    }
}

struct Writer {
    out: Vec<u8>,
    /// Where each name suffix already written starts (lowercased labels as the key).
    offsets: HashMap<Vec<u8>, u16>,
}

impl Writer {
    fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn name(&mut self, name: &Name, compress: bool) {
        for i in 0..name.labels.len() {
            let key = Name::lowercase_key(&name.labels[i..]);
            if compress && let Some(&offset) = self.offsets.get(&key) {
                self.u16(0xc000 | offset);
                return;
            }
            if let Ok(offset) = u16::try_from(self.out.len())
                && offset < 0x4000
            {
                self.offsets.entry(key).or_insert(offset);
            }
            let label = &name.labels[i];
            self.out.push(label.len() as u8);
            self.out.extend_from_slice(label);
        }
        self.out.push(0);
    }

    fn record(&mut self, record: &Record) {
        self.name(&record.name, true);
        self.u16(record.data.rtype());
        self.u16(CLASS_IN);
        self.u32(record.ttl);
        let length_at = self.out.len();
        self.u16(0);
        match &record.data {
            RData::A(ip) => self.out.extend_from_slice(&ip.octets()),
            RData::Aaaa(ip) => self.out.extend_from_slice(&ip.octets()),
            RData::Cname(name) | RData::Ptr(name) => self.name(name, true),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                self.u16(*priority);
                self.u16(*weight);
                self.u16(*port);
                self.name(target, false);
            }
            RData::Txt(strings) => {
                for string in strings {
                    let string = &string[..string.len().min(255)];
                    self.out.push(string.len() as u8);
                    self.out.extend_from_slice(string);
                }
            }
            RData::Soa {
                mname,
                rname,
                serial,
                refresh,
                retry,
                expire,
                minimum,
            } => {
                self.name(mname, true);
                self.name(rname, true);
                for value in [serial, refresh, retry, expire, minimum] {
                    self.u32(*value);
                }
            }
        }
        let length = (self.out.len() - length_at - 2) as u16;
        self.out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
    }

    fn rollback(&mut self, len: usize) {
        self.out.truncate(len);
        self.offsets.retain(|_, offset| usize::from(*offset) < len);
    }
}

/// A query's bytes, for tests here and in the other DNS modules.
#[cfg(test)]
pub(crate) fn query_bytes(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(text: &str) -> Name {
        Name::from_dotted(text).expect("valid name")
    }

    #[test]
    fn dns_query_parses_with_and_without_edns() {
        let query =
            parse_query(&query_bytes(7, "Web.service.consul", TYPE_SRV, None)).expect("a query");
        assert_eq!(query.id, 7);
        assert!(query.recursion_desired);
        assert_eq!(query.question.qtype, TYPE_SRV);
        assert_eq!(query.question.name.to_dotted(), "Web.service.consul.");
        assert_eq!(query.edns, None);
        let query = parse_query(&query_bytes(8, "a.consul", TYPE_A, Some(1232))).expect("a query");
        assert_eq!(
            query.edns,
            Some(Edns {
                udp_payload: 1232,
                version: 0
            })
        );
    }

    #[test]
    fn dns_malformed_queries_get_precise_errors() {
        assert_eq!(parse_query(&[0; 5]), Err(ParseError::ShortHeader(5)));
        let mut response = query_bytes(1, "a.consul", TYPE_A, None);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(ParseError::NotAQuery));
        let mut notify = query_bytes(1, "a.consul", TYPE_A, None);
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify), Err(ParseError::Opcode(4)));
        let mut two = query_bytes(1, "a.consul", TYPE_A, None);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(ParseError::QuestionCount(2)));
        let whole = query_bytes(1, "a.consul", TYPE_A, None);
        assert!(matches!(
            parse_query(&whole[..whole.len() - 3]),
            Err(ParseError::Truncated(_))
        ));
        // A pointer to itself.
        let mut looped = whole[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&looped), Err(ParseError::BadPointer(12)));
        // Label type 01.
        let mut bad = whole[..12].to_vec();
        bad.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&bad), Err(ParseError::BadLabel(12)));
        // A name of 300 bytes.
        let mut long = whole[..12].to_vec();
        for _ in 0..5 {
            long.push(59);
            long.extend_from_slice(&[b'a'; 59]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_query(&long), Err(ParseError::NameTooLong));
        assert_eq!(ParseError::NotAQuery.rcode(), None);
        assert_eq!(ParseError::Opcode(2).rcode(), Some(Rcode::NotImp));
        assert_eq!(ParseError::NameTooLong.rcode(), Some(Rcode::FormErr));
    }

    #[test]
    fn dns_names_follow_backward_pointers() {
        // Question "x.consul", then an answer-less additional record whose name points into
        // the question's "consul" label.
        let mut bytes = query_bytes(3, "x.consul", TYPE_A, None);
        bytes[11] = 1; // arcount
        bytes.extend_from_slice(&[0xc0, 14, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0]);
        let query = parse_query(&bytes).expect("a query");
        assert_eq!(query.question.name, name("x.consul"));
    }

    #[test]
    fn dns_encode_compresses_names_and_keeps_srv_targets_whole() {
        let query =
            parse_query(&query_bytes(9, "web.service.consul", TYPE_SRV, None)).expect("a query");
        let mut response = Response::to(&query, Rcode::NoError);
        let target = name("n1.node.dc1.consul");
        response.answers.push(Record {
            name: query.question.name.clone(),
            ttl: 0,
            data: RData::Srv {
                priority: 1,
                weight: 1,
                port: 8080,
                target: target.clone(),
            },
        });
        response.additional.push(Record {
            name: target,
            ttl: 0,
            data: RData::A(Ipv4Addr::new(127, 0, 0, 1)),
        });
        let encoded = encode(&response, UDP_BYTES_CLASSIC);
        assert!(!encoded.truncated);
        let bytes = &encoded.bytes;
        // Header: response, RD echoed, one of each.
        assert_eq!(&bytes[..12], &[0, 9, 0x81, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
        // The answer's owner is a pointer to the question's name.
        let question_end = 12 + name("web.service.consul").wire_len() + 4;
        assert_eq!(&bytes[question_end..question_end + 2], &[0xc0, 12]);
        // The SRV target is written out in full ("n1" label right after the SRV fields).
        let srv_rdata = question_end + 2 + 10;
        assert_eq!(&bytes[srv_rdata + 6..srv_rdata + 9], &[2, b'n', b'1']);
    }

    #[test]
    fn dns_encode_truncates_answers_to_the_limit_and_sets_tc() {
        let query =
            parse_query(&query_bytes(1, "web.service.consul", TYPE_A, None)).expect("a query");
        let mut response = Response::to(&query, Rcode::NoError);
        for i in 0..100u8 {
            response.answers.push(Record {
                name: query.question.name.clone(),
                ttl: 0,
                data: RData::A(Ipv4Addr::new(10, 0, 0, i)),
            });
        }
        let small = encode(&response, UDP_BYTES_CLASSIC);
        assert!(small.truncated);
        assert!(small.bytes.len() <= UDP_BYTES_CLASSIC);
        assert_eq!(small.bytes[2] & 0x02, 0x02, "TC set");
        let answers = u16::from_be_bytes([small.bytes[6], small.bytes[7]]);
        // Each compressed A record is 16 bytes.
        assert_eq!(
            usize::from(answers),
            (UDP_BYTES_CLASSIC - 12 - 24) / 16,
            "as many as fit"
        );
        let whole = encode(&response, TCP_BYTES_MAX);
        assert!(!whole.truncated);
        assert_eq!(u16::from_be_bytes([whole.bytes[6], whole.bytes[7]]), 100);
    }

    #[test]
    fn dns_names_parse_and_strip_suffixes_case_insensitively() {
        let full = name("Web.Service.CONSUL.");
        let rest = full.strip_suffix(&name("consul")).expect("ends in consul");
        assert_eq!(rest, &[b"Web".to_vec(), b"Service".to_vec()]);
        assert!(full.strip_suffix(&name("org")).is_none());
        assert_eq!(Name::from_dotted(".").expect("root"), Name::root());
        assert!(Name::from_dotted("a..b").is_err());
        assert!(Name::from_dotted(&"a".repeat(64)).is_err());
        assert_eq!(
            Name {
                labels: vec![b"a.b\x01".to_vec()]
            }
            .to_dotted(),
            "a\\046b\\001."
        );
    }

    proptest! {
        #[test]
        fn dns_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_query(&bytes);
        }

        #[test]
        fn dns_parse_never_panics_on_mutated_queries(
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8),
            cut in 0usize..64,
        ) {
            let mut bytes = query_bytes(5, "web.service.dc1.consul", TYPE_SRV, Some(4096));
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            let _ = parse_query(&bytes);
        }
    }
}
