//! Answers that actix-http writes by itself, before the application sees a request (a
//! malformed head, too many headers, a header timeout, an over-long URI), carry no
//! `X-Request-Id` (no request exists to attach one to) and no body. The connection's writes
//! are watched instead: a response head of such an answer that leaves without the header
//! gets a freshly generated one, so a client can quote an id for every answer it receives,
//! and an empty one gets the contract's JSON error in place of its empty body, so that
//! every error of the API reads alike. Everything else passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The statuses actix-http answers on its own.
const OWN_ANSWERS: [&[u8]; 6] = [
    b"HTTP/1.1 400 ",
    b"HTTP/1.1 408 ",
    b"HTTP/1.1 414 ",
    b"HTTP/1.1 431 ",
    b"HTTP/1.0 400 ",
    b"HTTP/1.0 431 ",
];

pin_project_lite::pin_project! {
    /// An IO whose outgoing response heads of actix-http's own answers get an
    /// `X-Request-Id`.
    pub struct StampedIo<T> {
        #[pin]
        inner: T,
        // A rewritten head (and whatever followed it in the same write) not yet written
        // to `inner`, and how much of it has been.
        pending: Option<(Vec<u8>, usize)>,
    }
}

impl<T> StampedIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> StampedIo<T> {
    /// Writes what is pending; ready once nothing is.
    fn poll_pending(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while let Some((data, written)) = this.pending.as_mut() {
            let n = ready!(this.inner.as_mut().poll_write(cx, &data[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == data.len() {
                *this.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The contract's JSON error for one of actix-http's own answers of `status`.
fn error_body(status: &[u8]) -> String {
    let details = match status {
        b"408" => "the request head did not arrive within the time allowed",
        b"414" => "the request URI is too long",
        b"431" => "the request's header fields are too many or too large",
        _ => {
            "the request is not valid HTTP/1.1 (its request line, a header or its length \
             cannot be read)"
        }
    };
    serde_json::json!({
        "errors": [{ "code": 1009, "title": "Parameter value is not valid", "details": details }],
        "meta": crate::http::error::meta(),
    })
    .to_string()
}

/// `buf` with an `X-Request-Id` header after its status line, when it starts with the head
/// of one of actix-http's own answers that has none; an empty body (`content-length: 0`)
/// becomes the contract's JSON error.
fn stamp(buf: &[u8]) -> Option<Vec<u8>> {
    if !OWN_ANSWERS.iter().any(|status| buf.starts_with(status)) {
        return None;
    }
    let status_line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let head = String::from_utf8_lossy(&buf[..head_end.unwrap_or(buf.len())]).to_ascii_lowercase();
    if head.contains("\r\nx-request-id:") {
        return None;
    }
    let header = format!("x-request-id: {}\r\n", uuid::Uuid::new_v4());
    let mut stamped = Vec::with_capacity(buf.len() + header.len() + 256);
    stamped.extend_from_slice(&buf[..status_line_end]);
    stamped.extend_from_slice(header.as_bytes());
    match head_end {
        Some(head_end) if head.contains("\r\ncontent-length: 0") => {
            // The head whole and its body empty: the JSON error takes the body's place.
            let body = error_body(&buf[9..12]);
            // Each header line with its CRLF; the head's own end comes after the JSON's.
            for line in buf[status_line_end..head_end + 2].split_inclusive(|&b| b == b'\n') {
                let name = line.to_ascii_lowercase();
                if name.starts_with(b"content-length:") || name.starts_with(b"content-type:") {
                    continue;
                }
                stamped.extend_from_slice(line);
            }
            stamped.extend_from_slice(
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            stamped.extend_from_slice(&buf[head_end + 4..]);
        }
        _ => stamped.extend_from_slice(&buf[status_line_end..]),
    }
    Some(stamped)
}

impl<T: AsyncRead> AsyncRead for StampedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for StampedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_pending(cx))?;
        match stamp(buf) {
            Some(stamped) => {
                // Taken whole: written from `pending`, before anything that comes after.
                *self.as_mut().project().pending = Some((stamped, 0));
                match self.poll_pending(cx) {
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                    _ => Poll::Ready(Ok(buf.len())),
                }
            }
            None => self.project().inner.poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_pending(cx))?;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_pending(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn only_own_answers_without_an_id_are_stamped() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let stamped = String::from_utf8(stamp(own).unwrap()).unwrap();
        assert!(
            stamped.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\nx-request-id: ")
        );
        let (head, body) = stamped.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{stamped}"
        );
        assert!(
            head.ends_with(&format!("\r\ncontent-length: {}", body.len())),
            "{stamped}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["errors"][0]["code"], 1009);
        // The application's answers carry their id already; others are not touched.
        let app = b"HTTP/1.1 400 Bad Request\r\nX-Request-Id: abc\r\ncontent-length: 2\r\n\r\n{}";
        assert!(stamp(app).is_none());
        assert!(stamp(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(stamp(b"body bytes HTTP/1.1 400 ").is_none());
    }

    #[tokio::test]
    async fn a_stamped_head_is_written_whole_and_in_order() {
        let (client, mut server) = tokio::io::duplex(8);
        let mut io = StampedIo::new(client);
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let writer = tokio::spawn(async move {
            io.write_all(head).await.unwrap();
            io.write_all(b"next").await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut received)
            .await
            .unwrap();
        writer.await.unwrap();
        let text = String::from_utf8(received).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\nx-request-id: "),
            "{text}"
        );
        assert!(text.ends_with("}next"), "{text}");
        assert!(
            text.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
    }
}
