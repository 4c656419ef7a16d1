//! The content checked against the declared extension, while it streams: the first
//! `HEAD_BYTES` of the body go to a detector of file signatures (the `infer` crate). When it
//! positively identifies a type the extension cannot be (a PNG declared as `.mp4`), the
//! upload is refused (400, code 1009) before it commits, the details naming both types, so
//! the failure shows at upload time instead of as a failed send later. Bytes the detector
//! does not recognise pass: arbitrary binary files still upload. Related formats count as
//! one (jpg/jpeg; the zip-based docx, xlsx, pptx, apk with zip; mp4, m4a, m4v, 3gp, mov;
//! ogg, opus, oga). Policy `media.verify_content`: `reject` (default), `record` (store what
//! was detected, refuse nothing), `off`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use crate::domain::FileExtension;
use crate::error::ApiError;

/// How much of the start of a body the detector sees.
pub const HEAD_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyContent {
    #[default]
    Reject,
    Record,
    Off,
}

/// Extensions that name one format, or formats built on one container.
const FAMILIES: &[&[&str]] = &[
    &["jpg", "jpeg", "jpe", "jfif"],
    &["tif", "tiff"],
    &[
        "zip", "docx", "xlsx", "pptx", "apk", "jar", "odt", "ods", "odp", "epub", "xpi", "aar",
        "ipa", "vsdx",
    ],
    &[
        "mp4", "m4a", "m4v", "m4b", "m4p", "3gp", "3g2", "mov", "qt", "f4v", "heic", "heif", "avif",
    ],
    &["ogg", "opus", "oga", "ogv", "ogx", "spx"],
    &["mkv", "mka", "webm"],
    &["mpg", "mpeg", "mpe"],
    &["mid", "midi"],
    &["gz", "tgz"],
    &["htm", "html"],
    &["doc", "xls", "ppt", "msi", "msg"],
    &["aac", "adts"],
];

fn family(extension: &str) -> Option<&'static [&'static str]> {
    FAMILIES.iter().copied().find(|f| f.contains(&extension))
}

/// Whether content detected as `detected` (the detector's extension) may carry `declared`.
pub fn compatible(declared: &str, detected: &str) -> bool {
    declared == detected || family(declared).is_some_and(|f| f.contains(&detected))
}

/// What the detector made of an upload's first bytes, once it has seen them.
#[derive(Debug, Clone, Default)]
pub struct Detected(Arc<OnceLock<Option<&'static str>>>);

impl Detected {
    /// The detected MIME type; `None` when unrecognised or not checked.
    pub fn mime_type(&self) -> Option<&'static str> {
        self.0.get().copied().flatten()
    }
}

pin_project_lite::pin_project! {
    /// A body whose first bytes are checked against the declared extension as they pass.
    pub struct Checked<S> {
        #[pin]
        inner: S,
        head: Vec<u8>,
        extension: FileExtension,
        policy: VerifyContent,
        detected: Detected,
        decided: bool,
    }
}

impl<S> Checked<S> {
    pub fn new(inner: S, extension: FileExtension, policy: VerifyContent) -> (Self, Detected) {
        let detected = Detected::default();
        let checked = Self {
            inner,
            head: Vec::new(),
            extension,
            decided: policy == VerifyContent::Off,
            policy,
            detected: detected.clone(),
        };
        (checked, detected)
    }
}

/// Detects the type of `head` and decides whether `extension` may carry it.
fn decide(
    head: &[u8],
    extension: &FileExtension,
    policy: VerifyContent,
    detected: &Detected,
) -> Result<(), ApiError> {
    let kind = infer::get(head);
    let _ = detected.0.set(kind.map(|k| k.mime_type()));
    match kind {
        Some(kind)
            if policy == VerifyContent::Reject
                && !compatible(extension.as_str(), kind.extension()) =>
        {
            Err(ApiError::InvalidParameter(format!(
                "the content is {} ({}), which a .{} file ({}) cannot be",
                kind.mime_type(),
                kind.extension(),
                extension.as_str(),
                extension.content_type(),
            )))
        }
        _ => Ok(()),
    }
}

impl<S> Stream for Checked<S>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    type Item = Result<Bytes, ApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) if !*this.decided => {
                let take = (HEAD_BYTES - this.head.len()).min(chunk.len());
                this.head.extend_from_slice(&chunk[..take]);
                if this.head.len() >= HEAD_BYTES {
                    *this.decided = true;
                    let verdict = decide(this.head, this.extension, *this.policy, this.detected);
                    *this.head = Vec::new();
                    if let Err(err) = verdict {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) if !*this.decided => {
                // A body shorter than the head: decided on all of it.
                *this.decided = true;
                match decide(this.head, this.extension, *this.policy, this.detected) {
                    Ok(()) => Poll::Ready(None),
                    Err(err) => Poll::Ready(Some(Err(err))),
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

    async fn check(
        body: &[u8],
        extension: &str,
        policy: VerifyContent,
    ) -> (bool, Option<&'static str>) {
        let chunks: Vec<Result<Bytes, ApiError>> = body
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let (checked, detected) = Checked::new(
            futures_util::stream::iter(chunks),
            FileExtension::parse(extension).unwrap(),
            policy,
        );
        let items: Vec<_> = checked.collect().await;
        (items.iter().all(Result::is_ok), detected.mime_type())
    }

    #[tokio::test]
    async fn refuses_only_what_is_positively_something_else() {
        assert_eq!(
            check(PNG, "png", VerifyContent::Reject).await,
            (true, Some("image/png"))
        );
        assert_eq!(
            check(PNG, "mp4", VerifyContent::Reject).await,
            (false, Some("image/png"))
        );
        assert_eq!(
            check(PNG, "mp4", VerifyContent::Record).await,
            (true, Some("image/png"))
        );
        assert_eq!(check(PNG, "mp4", VerifyContent::Off).await, (true, None));
        // Unrecognised bytes pass, whatever the extension.
        assert_eq!(
            check(b"just some text", "jpg", VerifyContent::Reject).await,
            (true, None)
        );
        // A long body is decided on its head.
        let mut long = PNG.to_vec();
        long.resize(100_000, 7);
        assert!(!check(&long, "pdf", VerifyContent::Reject).await.0);
    }

    #[test]
    fn families() {
        assert!(compatible("jpeg", "jpg"));
        assert!(compatible("docx", "zip"));
        assert!(compatible("zip", "docx"));
        assert!(compatible("m4a", "mp4"));
        assert!(compatible("opus", "ogg"));
        assert!(!compatible("png", "jpg"));
        assert!(!compatible("mp4", "ogg"));
    }
}
