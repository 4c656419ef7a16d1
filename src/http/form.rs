//! Uploads sent as `multipart/form-data` (`curl -F file=@picture.jpg`, a form's file input,
//! the shape of the Cloud API's media upload): the one file part of the form is the upload.
//! Its bytes stream through as they arrive, like a raw body's; text fields beside it (such
//! as `messaging_product` and `type`) are read and ignored. Any other form is refused (400,
//! code 1009): no file part, two, or an envelope that is not a well-formed form.
//!
//! The form is parsed by `multer`, which needs a `Send` stream; the request's payload is
//! not, so it is handed over one chunk at a time through [`Feed`], polled on the same task.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use actix_web::http::header::{self, HeaderMap};
use bytes::Bytes;
use futures_util::Stream;

use crate::domain::ApiError;

/// What the envelope of a form (boundary lines, part headers, text fields) may add to the
/// file's bytes: a form's `Content-Length` may exceed `limits.max_upload_bytes` by this
/// much, while the file part itself is held to the limit.
pub const ENVELOPE_ALLOWANCE: u64 = 64 * 1024;

/// The boundary of a `multipart/form-data` body; `None` for any other content type (the
/// body is the file's raw bytes).
pub fn boundary(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let Ok(value) = value.to_str() else {
        return Ok(None);
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    match multer::parse_boundary(value) {
        Ok(boundary) if !boundary.is_empty() => Ok(Some(boundary)),
        _ => Err(refused(
            "the multipart/form-data Content-Type has no boundary",
        )),
    }
}

/// The refusal of a form that cannot be taken as an upload.
fn refused(why: &str) -> ApiError {
    ApiError::InvalidParameter(format!(
        "{why}: send the file's raw bytes as the body, or a form with exactly one file part"
    ))
}

/// The request body as multer reads it: the chunk the form's reader last handed over.
#[derive(Default)]
struct Slot {
    chunk: Option<Bytes>,
    ended: bool,
    failed: bool,
}

#[derive(Clone, Default)]
struct Feed(Arc<Mutex<Slot>>);

#[derive(Debug)]
struct BodyFailed;

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body failed")
    }
}

impl std::error::Error for BodyFailed {}

impl Stream for Feed {
    type Item = Result<Bytes, BodyFailed>;

    /// Pending when empty: [`Form::drive`] refills it and polls again, no waker needed.
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(chunk) = slot.chunk.take() {
            Poll::Ready(Some(Ok(chunk)))
        } else if slot.failed {
            Poll::Ready(Some(Err(BodyFailed)))
        } else if slot.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// Where the reading of the form is.
enum Stage {
    /// Streaming the file part.
    File(multer::Field<'static>),
    /// After the file part: looking for the next part, or the end.
    After,
    /// Reading a text field after the file part.
    Text(multer::Field<'static>),
    /// After the closing boundary: what may follow it (an epilogue) is read and dropped,
    /// so that the connection stays usable.
    Drain,
    Done,
}

/// The file part's bytes, read from the form; ends once the whole form has been read and
/// found to hold no other file part.
pub struct FormFile<S> {
    form: Form<S>,
    stage: Stage,
}

struct Form<S> {
    source: S,
    feed: Feed,
    multipart: multer::Multipart<'static>,
    /// Bytes of the body read so far, and what the body may hold.
    read: u64,
    limit: u64,
    /// Bytes of the file part handed on so far: the rest of what was read is envelope,
    /// which the reader holds until it understands it (a part's headers, say).
    file: u64,
    /// Bytes of text fields read so far.
    text: u64,
    /// The body's own error (a timeout, the client gone), answered as it is.
    error: Option<ApiError>,
}

impl<S> Form<S>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Unpin,
{
    /// Polls `step` with the body fed to the form's reader until it is ready or the body
    /// has nothing more for now.
    fn drive<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut multer::Multipart<'static>, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        loop {
            if let Poll::Ready(done) = step(&mut self.multipart, cx) {
                return Poll::Ready(done);
            }
            let mut slot = self.feed.0.lock().unwrap_or_else(|e| e.into_inner());
            if slot.chunk.is_some() || slot.ended || slot.failed {
                // The reader has not taken what it was given; it waits on something else.
                return Poll::Pending;
            }
            if self.read - self.file > ENVELOPE_ALLOWANCE {
                // Not read further: what the reader holds stays within the allowance and
                // one chunk, whatever the client sends in place of a form.
                self.error = Some(refused(
                    "the form's envelope (boundary lines, part headers, text fields) is \
                     larger than 64 KiB",
                ));
                slot.failed = true;
                continue;
            }
            match Pin::new(&mut self.source).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.read += chunk.len() as u64;
                    if self.read > self.limit {
                        self.error = Some(ApiError::PayloadTooLarge {
                            limit: self.limit - ENVELOPE_ALLOWANCE,
                        });
                        slot.failed = true;
                    } else {
                        slot.chunk = Some(chunk);
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    self.error = Some(err);
                    slot.failed = true;
                }
                Poll::Ready(None) => slot.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The answer to an error of the form's reader.
    fn explain(&mut self, err: multer::Error) -> ApiError {
        match (err, self.error.take()) {
            (_, Some(own)) => own,
            (multer::Error::IncompleteStream | multer::Error::IncompleteFieldData { .. }, _) => {
                refused("the form ends before its closing boundary")
            }
            _ => refused("the body is not a well-formed multipart/form-data form"),
        }
    }

    /// Counts a text field's bytes; a form is not a place to send data beside the file.
    fn count_text(&mut self, chunk: &Bytes) -> Result<(), ApiError> {
        self.text += chunk.len() as u64;
        if self.text > ENVELOPE_ALLOWANCE / 2 {
            return Err(refused("the form's text fields are too large"));
        }
        Ok(())
    }

    fn poll_field(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<multer::Field<'static>>, ApiError>> {
        match self.drive(cx, |multipart, cx| multipart.poll_next_field(cx)) {
            Poll::Ready(Ok(field)) => Poll::Ready(Ok(field)),
            Poll::Ready(Err(err)) => Poll::Ready(Err(self.explain(err))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads a text field to its end.
    fn poll_text(
        &mut self,
        cx: &mut Context<'_>,
        field: &mut multer::Field<'static>,
    ) -> Poll<Result<(), ApiError>> {
        loop {
            match self.drive(cx, |_, cx| Pin::new(&mut *field).poll_next(cx)) {
                Poll::Ready(Some(Ok(chunk))) => self.count_text(&chunk)?,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(self.explain(err))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Reads the form up to its file part: the part's filename (if it has one that is not
/// empty) and a stream of its bytes. `limit` is `limits.max_upload_bytes`.
pub async fn file_part<S>(
    source: S,
    boundary: String,
    limit: u64,
) -> Result<(Option<String>, FormFile<S>), ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Unpin,
{
    let feed = Feed::default();
    let mut form = Form {
        source,
        feed: feed.clone(),
        multipart: multer::Multipart::new(feed, boundary),
        read: 0,
        limit: limit.saturating_add(ENVELOPE_ALLOWANCE),
        file: 0,
        text: 0,
        error: None,
    };
    loop {
        let field = futures_util::future::poll_fn(|cx| form.poll_field(cx)).await?;
        let Some(mut field) = field else {
            return Err(refused("the form has no file part"));
        };
        if let Some(name) = field.file_name() {
            let name = (!name.is_empty()).then(|| name.to_owned());
            let stage = Stage::File(field);
            return Ok((name, FormFile { form, stage }));
        }
        futures_util::future::poll_fn(|cx| form.poll_text(cx, &mut field)).await?;
    }
}

impl<S> Stream for FormFile<S>
where
    S: Stream<Item = Result<Bytes, ApiError>> + Unpin,
{
    type Item = Result<Bytes, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.stage, Stage::Done) {
                Stage::File(mut field) => {
                    match this
                        .form
                        .drive(cx, |_, cx| Pin::new(&mut field).poll_next(cx))
                    {
                        Poll::Ready(Some(Ok(chunk))) => {
                            this.form.file += chunk.len() as u64;
                            this.stage = Stage::File(field);
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                        Poll::Ready(Some(Err(err))) => {
                            return Poll::Ready(Some(Err(this.form.explain(err))))
                        }
                        Poll::Ready(None) => this.stage = Stage::After,
                        Poll::Pending => {
                            this.stage = Stage::File(field);
                            return Poll::Pending;
                        }
                    }
                }
                Stage::After => match this.form.poll_field(cx) {
                    Poll::Ready(Ok(Some(field))) if field.file_name().is_some() => {
                        return Poll::Ready(Some(Err(refused("the form has two file parts"))));
                    }
                    Poll::Ready(Ok(Some(field))) => this.stage = Stage::Text(field),
                    Poll::Ready(Ok(None)) => this.stage = Stage::Drain,
                    Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                    Poll::Pending => {
                        this.stage = Stage::After;
                        return Poll::Pending;
                    }
                },
                Stage::Text(mut field) => match this.form.poll_text(cx, &mut field) {
                    Poll::Ready(Ok(())) => this.stage = Stage::After,
                    Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                    Poll::Pending => {
                        this.stage = Stage::Text(field);
                        return Poll::Pending;
                    }
                },
                Stage::Drain => {
                    let form = &mut this.form;
                    let slot = form.feed.0.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.ended || slot.failed {
                        return Poll::Ready(None);
                    }
                    drop(slot);
                    match Pin::new(&mut form.source).poll_next(cx) {
                        Poll::Ready(Some(Ok(chunk))) => {
                            form.read += chunk.len() as u64;
                            if form.read > form.limit {
                                return Poll::Ready(None);
                            }
                            this.stage = Stage::Drain;
                        }
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(None),
                        Poll::Pending => {
                            this.stage = Stage::Drain;
                            return Poll::Pending;
                        }
                    }
                }
                Stage::Done => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const BOUNDARY: &str = "X-BOUNDARY-42";

    /// A body in chunks of `size` bytes that is not ready before every chunk (it wakes its
    /// task at once), as a network body often is.
    struct Trickle {
        chunks: std::collections::VecDeque<Bytes>,
        ready: bool,
    }

    impl Stream for Trickle {
        type Item = Result<Bytes, ApiError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let ready = self.ready;
            self.ready = !ready;
            if !ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.chunks.pop_front().map(Ok))
        }
    }

    fn trickle(body: &[u8], size: usize) -> Trickle {
        Trickle {
            chunks: body.chunks(size).map(Bytes::copy_from_slice).collect(),
            ready: false,
        }
    }

    fn form(file: &[u8], files: usize) -> Vec<u8> {
        let mut body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"messaging_product\"\r\n\r\n\
             whatsapp\r\n"
        )
        .into_bytes();
        for _ in 0..files {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                     filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(file);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\n\
                 image/png\r\n--{BOUNDARY}--\r\n"
            )
            .as_bytes(),
        );
        body
    }

    async fn read(body: &[u8], size: usize) -> Result<(Option<String>, Vec<u8>), ApiError> {
        let (name, mut file) = file_part(trickle(body, size), BOUNDARY.to_owned(), 1 << 20).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = file.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok((name, bytes))
    }

    /// The file's bytes, whatever the chunking: boundaries and part heads split anywhere,
    /// a file that holds CRLFs, dashes and the start of its delimiter.
    #[tokio::test]
    async fn the_file_part_is_read_whatever_the_chunking() {
        let mut file: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        // What begins like a delimiter without being one (a sender's boundary never
        // occurs in the content, RFC 2046 §5.1.1).
        file.extend_from_slice(format!("\r\n--{}\r\n--\r\n", &BOUNDARY[..9]).as_bytes());
        let body = form(&file, 1);
        for size in [1, 2, 3, 7, 64, 1000, body.len()] {
            let (name, bytes) = read(&body, size).await.unwrap();
            assert_eq!(name.as_deref(), Some("a.png"));
            assert!(bytes == file, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn other_forms_are_refused_whatever_the_chunking() {
        let file = vec![b'x'; 3000];
        let two = form(&file, 2);
        let none = form(&file, 0);
        let mut cut = form(&file, 1);
        cut.truncate(cut.len() - 10);
        for size in [1, 5, 4096] {
            for body in [&two, &none, &cut] {
                let err = read(body, size).await.unwrap_err();
                assert!(
                    matches!(&err, ApiError::InvalidParameter(msg) if msg.contains("raw bytes")),
                    "{err:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn text_fields_are_bounded() {
        let mut body =
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n")
                .into_bytes();
        body.extend(std::iter::repeat_n(b'n', 40_000));
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&form(b"file", 1));
        let err = read(&body, 4096).await.unwrap_err();
        assert!(matches!(err, ApiError::InvalidParameter(_)), "{err:?}");
    }

    /// What is not the file (a preamble, part headers, text fields, before or after the
    /// file part) is held by the form's reader until it is understood, so it is bounded:
    /// the form is refused once more than the envelope's allowance of it has been read.
    #[tokio::test]
    async fn the_envelope_is_bounded() {
        let pad = |n: usize| "p".repeat(n);
        let file_head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
        );
        let bodies = [
            // A preamble that never reaches a boundary.
            pad(900_000),
            // A part header that never ends.
            format!("{file_head}X-Pad: {}", pad(900_000)),
            // The same after a well-formed file part.
            format!(
                "{file_head}\r\nfile\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; \
                 name=\"note\"; X-Pad: {}",
                pad(900_000)
            ),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = taken.clone();
            let source = trickle(body.as_bytes(), 4096).inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let outcome = async {
                let (_, mut file) = file_part(source, BOUNDARY.to_owned(), 1 << 20).await?;
                while let Some(chunk) = file.next().await {
                    chunk?;
                }
                Ok::<_, ApiError>(())
            }
            .await;
            let err = outcome.expect_err("a form with a boundless envelope");
            assert!(
                matches!(&err, ApiError::InvalidParameter(msg) if msg.contains("raw bytes")),
                "body {i}: {err:?}"
            );
            let taken = taken.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                taken <= ENVELOPE_ALLOWANCE + 2 * 4096,
                "body {i}: {taken} bytes read before the refusal"
            );
        }
    }

    #[test]
    fn only_multipart_form_data_is_a_form() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONTENT_TYPE, value.parse().unwrap());
            map
        };
        assert_eq!(boundary(&HeaderMap::new()).unwrap(), None);
        assert_eq!(boundary(&headers("image/jpeg")).unwrap(), None);
        assert_eq!(
            boundary(&headers("multipart/mixed; boundary=a")).unwrap(),
            None
        );
        assert_eq!(
            boundary(&headers("Multipart/Form-Data; boundary=\"a b\"")).unwrap(),
            Some("a b".to_owned())
        );
        assert!(boundary(&headers("multipart/form-data")).is_err());
        assert!(boundary(&headers("multipart/form-data; boundary=")).is_err());
    }
}
