//! The load generator's unary gRPC client: each call goes straight onto a shared HTTP/2
//! connection through the `h2` crate (the one tonic's transport is built on), without the
//! layers a general-purpose channel adds per call: tonic's request buffer (a queue and a task
//! hop), hyper's dispatch queue (another hop) and the task hyper spawns to stream each request
//! body. The bench shares the machine with the server it measures, so every microsecond it
//! spends per call is taken from that server; colony and etcd get the same client.
//!
//! The wire format is gRPC's: `content-type: application/grpc`, `te: trailers`, each message
//! framed by a compression flag (0) and a big-endian `u32` length, and the call's status in
//! the `grpc-status` trailer (or in the headers of a trailers-only answer).

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Uri};

/// Bytes before each gRPC message: the compression flag and the length.
const MESSAGE_PREFIX: usize = 5;

/// One HTTP/2 connection to a gRPC server; clones share it (a call is one stream).
#[derive(Clone)]
pub(crate) struct UnaryChannel {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl UnaryChannel {
    /// Connects to `authority` (`host:port`) with TCP_NODELAY and drives the connection on a
    /// task of its own.
    pub(crate) async fn connect(authority: &str) -> anyhow::Result<UnaryChannel> {
        let stream = crate::bench::connect_nodelay(authority).await?;
        let (send, connection) = h2::client::handshake(stream)
            .await
            .with_context(|| format!("HTTP/2 handshake with {authority}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "bench gRPC connection closed");
            }
        });
        Ok(UnaryChannel {
            send,
            authority: authority.to_string(),
        })
    }

    /// The URI of the method `path` (`/package.Service/Method`) on this channel's server.
    pub(crate) fn method(&self, path: &str) -> anyhow::Result<Uri> {
        Ok(format!("http://{}{path}", self.authority).parse()?)
    }

    /// Calls the unary method `method` (see [`UnaryChannel::method`]) with `request`; an
    /// error for a transport failure, a malformed answer or a status other than OK.
    pub(crate) async fn call<Req, Resp>(
        &mut self,
        method: &Uri,
        request: &Req,
    ) -> anyhow::Result<Resp>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let http_request = Request::post(method.clone())
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            )
            .header(http::header::TE, HeaderValue::from_static("trailers"))
            .body(())?;
        // Waits while the connection has as many streams open as the server allows.
        std::future::poll_fn(|cx| self.send.poll_ready(cx))
            .await
            .context("HTTP/2 connection")?;
        let (answer, mut body) = self.send.send_request(http_request, false)?;
        body.send_data(frame(request), true)?;
        let answer = answer.await?;
        ensure!(
            answer.status() == http::StatusCode::OK,
            "HTTP status {}",
            answer.status()
        );
        let (head, mut body) = answer.into_parts();
        // A trailers-only answer (an error before any message) carries its status here.
        let trailers_only = head.headers.contains_key("grpc-status");
        if trailers_only {
            check_status(&head.headers)?;
        }
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            // Give the window back at once, or the connection stalls after 64 KiB.
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        match body.trailers().await? {
            Some(trailers) => check_status(&trailers)?,
            None if trailers_only => {}
            None => bail!("answer without a grpc-status"),
        }
        unframe(received.freeze())
    }
}

/// `message` framed as one uncompressed gRPC message.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(MESSAGE_PREFIX + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).expect("bench requests are far below 4 GiB"));
    message
        .encode(&mut out)
        .expect("the buffer was sized by encoded_len");
    out.freeze()
}

/// The one message in a unary answer's body.
fn unframe<M: prost::Message + Default>(mut body: Bytes) -> anyhow::Result<M> {
    ensure!(
        body.len() >= MESSAGE_PREFIX,
        "answer body of {} bytes",
        body.len()
    );
    ensure!(body.get_u8() == 0, "compressed answer (none was offered)");
    let len = body.get_u32() as usize;
    ensure!(
        body.len() == len,
        "answer message of {} bytes framed as {len}",
        body.len()
    );
    Ok(M::decode(body)?)
}

/// `Ok` if `headers` say the call succeeded (`grpc-status: 0`).
fn check_status(headers: &HeaderMap) -> anyhow::Result<()> {
    let status = headers
        .get("grpc-status")
        .context("no grpc-status")?
        .to_str()
        .context("grpc-status is not text")?;
    if status != "0" {
        // The message is percent-encoded on the wire.
        let message = headers
            .get("grpc-message")
            .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy())
            .unwrap_or_default();
        bail!("gRPC status {status}: {message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_etcdpb::etcdserverpb::PutRequest;

    #[test]
    fn a_framed_message_unframes_to_itself() {
        let request = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..PutRequest::default()
        };
        let framed = frame(&request);
        assert_eq!(framed[0], 0);
        assert_eq!(
            framed.len(),
            MESSAGE_PREFIX + prost::Message::encoded_len(&request)
        );
        assert_eq!(unframe::<PutRequest>(framed).expect("unframes"), request);
    }

    #[test]
    fn a_truncated_or_compressed_answer_is_an_error() {
        let framed = frame(&PutRequest::default());
        assert!(unframe::<PutRequest>(framed.slice(..3)).is_err());
        let mut longer = BytesMut::from(&framed[..]);
        longer.put_u8(1);
        assert!(unframe::<PutRequest>(longer.freeze()).is_err());
        let mut compressed = BytesMut::from(&framed[..]);
        compressed[0] = 1;
        assert!(unframe::<PutRequest>(compressed.freeze()).is_err());
    }

    #[test]
    fn a_status_other_than_ok_is_an_error_with_its_message() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(check_status(&headers).is_ok());
        headers.insert("grpc-status", HeaderValue::from_static("9"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("required%20revision%20has%20been%20compacted"),
        );
        let error = check_status(&headers).expect_err("status 9").to_string();
        assert_eq!(error, "gRPC status 9: required revision has been compacted");
        assert!(check_status(&HeaderMap::new()).is_err());
    }
}
