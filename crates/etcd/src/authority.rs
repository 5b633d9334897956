//! Repairs the HTTP/2 `:authority` that etcdctl 3.4 sends to one endpoint at a time.
//!
//! `etcdctl --endpoints http://host:2379 endpoint status` (also `hashkv`, `defrag` and
//! `move-leader`) dials each endpoint by its raw string, so grpc-go sends
//! `:authority: http://host:2379`. That is not a valid authority, and the `h2` server under
//! tonic resets such streams with `PROTOCOL_ERROR`, where etcd's Go server accepts them.
//!
//! [`AuthorityRepair`] wraps an accepted connection and reads the client's bytes ahead of h2.
//! It decodes the connection's first header block; if that block's authority is well formed
//! (every client but this one) the wrapper steps aside and passes bytes through untouched for
//! the rest of the connection. If the authority carries a scheme or path, the wrapper keeps
//! decoding every header block on that connection (it must, to follow the client's HPACK
//! table), strips the authority down to `host:port`, and re-encodes each block as literals
//! without indexing, so h2's decoder never depends on the client's dynamic table. Anything it
//! cannot parse is passed on unchanged for h2 to reject with its own error.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes in a frame header.
const FRAME_HEADER: usize = 9;
/// HEADERS and CONTINUATION frame types.
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
/// Frame flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a peer may send before settings say otherwise (RFC 9113 §4.2); the
/// re-encoded blocks are split at this size.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are not repaired (h2 refuses far smaller ones anyway).
const BLOCK_BYTES_MAX: usize = 1 << 20;

/// What the wrapper does with the bytes it reads.
enum Mode {
    /// Until the first header block has been seen.
    Sniffing,
    /// The authority was fine (or the stream is not HTTP/2 as expected): bytes pass through.
    PassThrough,
    /// The authority needs repair: every header block is decoded and re-encoded.
    Rewriting,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    /// The frames exactly as received, for passing on unchanged.
    raw: Vec<u8>,
}

/// An accepted connection whose client-sent `:authority` is repaired before h2 reads it.
pub struct AuthorityRepair<S> {
    inner: S,
    mode: Mode,
    preface_done: bool,
    /// Bytes read from `inner` and not yet examined.
    incoming: BytesMut,
    /// Bytes ready for h2.
    ready: BytesMut,
    /// Payload bytes of a non-header frame still to copy through unexamined.
    skip: usize,
    pending: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // h2 announces no header table size, so the client's table is the default 4 KiB.
        decoder.set_max_allowed_table_size(4096);
        AuthorityRepair {
            inner,
            mode: Mode::Sniffing,
            preface_done: false,
            incoming: BytesMut::new(),
            ready: BytesMut::new(),
            skip: 0,
            pending: None,
            decoder,
            eof: false,
        }
    }

    /// Hands everything buffered to h2 unchanged and stops examining the stream.
    fn give_up(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.ready.extend_from_slice(&pending.raw);
        }
        let rest = self.incoming.split();
        self.ready.extend_from_slice(&rest);
        self.skip = 0;
        self.mode = Mode::PassThrough;
    }

    /// Moves as many examined bytes from `incoming` to `ready` as the buffer allows.
    fn process(&mut self) {
        loop {
            if matches!(self.mode, Mode::PassThrough) {
                let rest = self.incoming.split();
                self.ready.extend_from_slice(&rest);
                return;
            }
            if !self.preface_done {
                let n = self.incoming.len().min(PREFACE.len());
                if self.incoming[..n] != PREFACE[..n] {
                    return self.give_up();
                }
                if n < PREFACE.len() {
                    return;
                }
                let preface = self.incoming.split_to(PREFACE.len());
                self.ready.extend_from_slice(&preface);
                self.preface_done = true;
            }
            if self.skip > 0 {
                let n = self.skip.min(self.incoming.len());
                if n == 0 {
                    return;
                }
                let bytes = self.incoming.split_to(n);
                self.ready.extend_from_slice(&bytes);
                self.skip -= n;
                continue;
            }
            if self.incoming.len() < FRAME_HEADER {
                return;
            }
            let head = &self.incoming[..FRAME_HEADER];
            let length =
                usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let kind = head[3];
            let flags = head[4];
            let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let in_block = self.pending.is_some();
            if kind != HEADERS && kind != CONTINUATION && !in_block {
                let header = self.incoming.split_to(FRAME_HEADER);
                self.ready.extend_from_slice(&header);
                self.skip = length;
                continue;
            }
            let header_block_frame = (kind == HEADERS && !in_block)
                || (kind == CONTINUATION && in_block && self.pending_stream() == Some(stream_id));
            if !header_block_frame || length > BLOCK_BYTES_MAX {
                // A protocol error h2 will name better than we can.
                return self.give_up();
            }
            if self.incoming.len() < FRAME_HEADER + length {
                return;
            }
            let frame = self.incoming.split_to(FRAME_HEADER + length);
            let Some(fragment) = fragment_of(kind, flags, &frame[FRAME_HEADER..]) else {
                if let Some(pending) = self.pending.take() {
                    self.ready.extend_from_slice(&pending.raw);
                }
                self.ready.extend_from_slice(&frame);
                return self.give_up();
            };
            let pending = self.pending.get_or_insert_with(|| PendingBlock {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                fragment: Vec::new(),
                raw: Vec::new(),
            });
            pending.fragment.extend_from_slice(fragment);
            pending.raw.extend_from_slice(&frame);
            if pending.fragment.len() > BLOCK_BYTES_MAX {
                return self.give_up();
            }
            if flags & END_HEADERS != 0 {
                let block = self.pending.take().expect("a block is pending");
                self.finish_block(block);
            }
        }
    }

    fn pending_stream(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.stream_id)
    }

    /// Decides what a complete header block becomes.
    fn finish_block(&mut self, block: PendingBlock) {
        let Ok(mut fields) = self.decoder.decode(&block.fragment) else {
            self.ready.extend_from_slice(&block.raw);
            self.mode = Mode::PassThrough;
            return;
        };
        let mut repaired = false;
        for (name, value) in &mut fields {
            if name.as_slice() != b":authority" {
                continue;
            }
            if let Some(fixed) = repair(value) {
                *value = fixed;
                repaired = true;
            }
        }
        match self.mode {
            Mode::Sniffing if !repaired => {
                self.ready.extend_from_slice(&block.raw);
                self.mode = Mode::PassThrough;
            }
            Mode::Sniffing | Mode::Rewriting => {
                if matches!(self.mode, Mode::Sniffing) {
                    tracing::debug!(
                        "etcd: repairing a client's :authority (a scheme or path in it) on this connection"
                    );
                }
                self.mode = Mode::Rewriting;
                let encoded = encode_literals(&fields);
                write_frames(&mut self.ready, block.stream_id, block.end_stream, &encoded);
            }
            Mode::PassThrough => self.ready.extend_from_slice(&block.raw),
        }
    }
}

/// The header block fragment inside a HEADERS or CONTINUATION payload, without padding and
/// priority fields; `None` if the payload is inconsistent.
fn fragment_of(kind: u8, flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if kind == CONTINUATION {
        return Some(payload);
    }
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    (start <= end).then(|| &payload[start..end])
}

/// `host:port` from an authority that does not parse but does once a `scheme://` prefix and
/// a path are cut off; `None` if the value is fine as it is or cannot be saved.
fn repair(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let without_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = without_scheme.split('/').next()?;
    http::uri::Authority::try_from(host).ok()?;
    Some(host.as_bytes().to_vec())
}

/// HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1); `first` holds the
/// representation's leading flag bits.
fn encode_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Every field as "literal header field without indexing, new name", no Huffman coding
/// (RFC 7541 §6.2.2): the result depends on no table state.
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        encode_integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        encode_integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A HEADERS frame and as many CONTINUATION frames as `block` needs.
fn write_frames(out: &mut BytesMut, stream_id: u32, end_stream: bool, block: &[u8]) {
    let mut chunks = block.chunks(DEFAULT_MAX_FRAME).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        let kind = if first { HEADERS } else { CONTINUATION };
        let mut flags = 0;
        if first && end_stream {
            flags |= END_STREAM;
        }
        if last {
            flags |= END_HEADERS;
        }
        let length = chunk.len();
        out.extend_from_slice(&[
            (length >> 16) as u8,
            (length >> 8) as u8,
            length as u8,
            kind,
            flags,
        ]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(chunk);
        first = false;
        if last {
            return;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::PassThrough) && this.incoming.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // Whatever is left is incomplete: h2 gets it as it is and reports the error.
                let rest = this.incoming.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready.extend_from_slice(&rest);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                if let Some(pending) = this.pending.take() {
                    this.ready.extend_from_slice(&pending.raw);
                }
            } else {
                this.incoming.extend_from_slice(read.filled());
                this.process();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityRepair<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client's bytes: the preface, a SETTINGS frame, then one HEADERS frame per block
    /// (encoded by `loona_hpack`'s encoder, which indexes into its dynamic table) and a DATA
    /// frame after each.
    fn client_bytes(blocks: &[Vec<(&[u8], &[u8])>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let mut encoder = loona_hpack::Encoder::new();
        for (i, fields) in blocks.iter().enumerate() {
            let block = encoder.encode(fields.iter().copied());
            let mut frames = BytesMut::new();
            write_frames(&mut frames, 2 * i as u32 + 1, false, &block);
            out.extend_from_slice(&frames);
            out.extend_from_slice(&[0, 0, 5, 0x0, END_STREAM, 0, 0, 0, 2 * i as u8 + 1]);
            out.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        out
    }

    /// The bytes h2 would read after `bytes` went through the wrapper in small writes.
    async fn through_repair(bytes: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Small writes, so frames arrive split across reads.
            for chunk in bytes.chunks(7) {
                client.write_all(chunk).await.expect("write");
            }
        });
        let mut seen = Vec::new();
        AuthorityRepair::new(server)
            .read_to_end(&mut seen)
            .await
            .expect("read");
        writer.await.expect("writer");
        seen
    }

    /// The header lists of every block in a well-formed client byte stream, decoded with one
    /// decoder as h2 does.
    fn header_lists(seen: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut at = PREFACE.len();
        let mut block = Vec::new();
        while at < seen.len() {
            let length = usize::from(seen[at]) << 16
                | usize::from(seen[at + 1]) << 8
                | usize::from(seen[at + 2]);
            let (kind, flags) = (seen[at + 3], seen[at + 4]);
            let payload = &seen[at + FRAME_HEADER..at + FRAME_HEADER + length];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(fragment_of(kind, flags, payload).expect("fragment"));
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).expect("block decodes"));
                    block.clear();
                }
            }
            at += FRAME_HEADER + length;
        }
        blocks
    }

    fn request(
        authority: &'static [u8],
        path: &'static [u8],
    ) -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            // Not in the static table: the encoder indexes it and later blocks refer to it.
            (b"te", b"trailers"),
            (b"user-agent", b"grpc-go/1.26.0"),
        ]
    }

    #[tokio::test]
    async fn a_scheme_in_the_authority_is_cut_off_in_every_block() {
        let blocks = [
            request(
                b"http://127.0.0.1:2379",
                b"/etcdserverpb.Maintenance/Status",
            ),
            request(
                b"http://127.0.0.1:2379",
                b"/etcdserverpb.Maintenance/HashKV",
            ),
            request(b"http://127.0.0.1:2379/", b"/etcdserverpb.KV/Range"),
        ];
        let decoded = header_lists(&through_repair(client_bytes(&blocks)).await);
        assert_eq!(decoded.len(), 3);
        for (got, sent) in decoded.iter().zip(&blocks) {
            for ((name, value), (sent_name, sent_value)) in got.iter().zip(sent) {
                assert_eq!(name.as_slice(), *sent_name);
                if name == b":authority" {
                    assert_eq!(value.as_slice(), b"127.0.0.1:2379");
                } else {
                    assert_eq!(value.as_slice(), *sent_value);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_well_formed_authority_passes_through_byte_for_byte() {
        let bytes = client_bytes(&[
            request(b"127.0.0.1:2379", b"/etcdserverpb.KV/Range"),
            // Later blocks are not examined, whatever they hold.
            request(b"http://127.0.0.1:2379", b"/etcdserverpb.KV/Put"),
        ]);
        assert_eq!(through_repair(bytes.clone()).await, bytes);
    }

    #[tokio::test]
    async fn garbage_and_truncated_input_reach_h2_unchanged() {
        for bytes in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            client_bytes(&[request(b"http://h:1", b"/p")])[..PREFACE.len() + 20].to_vec(),
            [
                PREFACE,
                &[0, 0, 3, HEADERS, END_HEADERS, 0, 0, 0, 1, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ] {
            assert_eq!(through_repair(bytes.clone()).await, bytes);
        }
    }

    #[test]
    fn repair_cuts_scheme_and_path_and_leaves_good_or_hopeless_values() {
        assert_eq!(
            repair(b"http://10.0.0.1:2379"),
            Some(b"10.0.0.1:2379".to_vec())
        );
        assert_eq!(
            repair(b"https://etcd.example:2379/x"),
            Some(b"etcd.example:2379".to_vec())
        );
        assert_eq!(repair(b"10.0.0.1:2379"), None);
        assert_eq!(repair(b"http:// bad host"), None);
    }

    #[test]
    fn long_blocks_are_split_into_continuation_frames() {
        let block = vec![7u8; DEFAULT_MAX_FRAME * 2 + 5];
        let mut out = BytesMut::new();
        write_frames(&mut out, 3, true, &block);
        assert_eq!(out.len(), block.len() + 3 * FRAME_HEADER);
        assert_eq!((out[3], out[4]), (HEADERS, END_STREAM));
        let second = FRAME_HEADER + DEFAULT_MAX_FRAME;
        assert_eq!((out[second + 3], out[second + 4]), (CONTINUATION, 0));
        let third = 2 * second;
        assert_eq!(
            (out[third + 3], out[third + 4]),
            (CONTINUATION, END_HEADERS)
        );
        assert_eq!(&out[third..third + 3], &[0, 0, 5]);
    }
}
