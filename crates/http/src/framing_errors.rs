//! The answers actix-http writes by itself, before any handler or middleware runs —
//! `400` for a request it cannot parse (a malformed header, two `Content-Length`s),
//! `408` for a request head that does not arrive in time, `431` for headers over the
//! limit — have no body and no request id. This wraps each connection's stream and
//! writes those answers as the API's envelope instead, with a request id, so every
//! error a client can see has the same shape.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ApiError, ErrorCode};

/// The framework's error heads are a status line, `content-length`, `connection` and
/// `date`: well under this.
const MAX_FRAMEWORK_HEAD: usize = 512;

/// A connection's stream whose framework-written error answers become envelopes.
#[derive(Debug)]
pub(crate) struct Enveloping<T> {
    io: T,
    /// The envelope being written in place of such an answer, and how much of it is
    /// out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> Enveloping<T> {
    pub(crate) fn new(io: T) -> Self {
        Enveloping { io, pending: None }
    }
}

/// The envelope for `written`, if it is one of the framework's own bodiless error
/// answers, written whole (a head that ends the buffer, with `content-length: 0`).
pub(crate) fn envelope_for(written: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here: rule out all but a short head with a 4xx status before
    // looking closer.
    if written.len() > MAX_FRAMEWORK_HEAD || !written.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(written).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let (code, message) = match status_line.strip_prefix("HTTP/1.1 ")?.get(..3)? {
        "400" => (
            ErrorCode::BadRequest,
            "The request could not be read: its request line or headers are malformed, or it has conflicting Content-Length headers.",
        ),
        "408" => (
            ErrorCode::RequestTimeout,
            "The request's head did not arrive in time; send it again.",
        ),
        "431" => (
            ErrorCode::HeadersTooLarge,
            "The request's headers are larger than the server accepts; send fewer or smaller headers.",
        ),
        _ => return None,
    };
    let mut kept = Vec::new();
    let mut bodiless = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" {
            bodiless = true;
        } else if !lower.starts_with("content-type:") {
            kept.push(line);
        }
    }
    if !bodiless {
        return None;
    }
    let request_id = crate::middleware::new_request_id();
    let body = ApiError::new(code, message)
        .envelope(&request_id)
        .to_string();
    let mut out = format!("{status_line}\r\n");
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl<T: AsyncWrite + Unpin> Enveloping<T> {
    /// Writes out the pending envelope, if any.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.pending {
            if *sent == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Enveloping<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Enveloping<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(envelope) = envelope_for(buf) {
            // Taken in full; the envelope goes out in its place (now, or on the
            // flush or shutdown that follows).
            this.pending = Some((envelope, 0));
            if let Poll::Ready(Err(err)) = this.poll_pending(cx) {
                return Poll::Ready(Err(err));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frameworks_bodiless_errors_become_envelopes_and_nothing_else_does() {
        let framework = "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Fri, 04 Dec 2026 17:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(envelope_for(framework.as_bytes()).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("connection: close\r\ndate: Fri"), "{head}");
        assert!(head.contains("x-request-id: req_"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["error"]["code"], "headers_too_large");
        for status in ["400 Bad Request", "408 Request Timeout"] {
            let written = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            assert!(envelope_for(written.as_bytes()).is_some(), "{status}");
        }
        // Answers of the API itself, with a body, pass untouched; so does anything
        // that is not a whole bodiless head.
        for other in [
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\ncontent-type: application/json\r\n\r\n{\"error\":{}}",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            "data: HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(envelope_for(other.as_bytes()), None, "{other}");
        }
    }
}
