//! Media profiles (`media.profile`): per-type rules of a messaging platform, applied to
//! uploads while they stream. `none` (the default) applies none; `whatsapp` applies the
//! rules of WhatsApp's documentation of the media its Cloud API takes, in decimal
//! megabytes:
//!
//! | class | extensions | at most | content |
//! | --- | --- | --- | --- |
//! | image | jpeg, jpg, png | 5 MB | |
//! | audio | aac, amr, mp3, m4a, ogg | 16 MB | `.ogg`: Opus only; `.m4a`: no video |
//! | video | mp4, 3gp | 16 MB | H.264 video, AAC audio, one audio track or none |
//! | sticker | webp | 100 KB static, 500 KB animated | WebP |
//! | document | anything else | `limits.max_upload_bytes` | |
//!
//! Every rule names its source beside it, one of these:
//! - [media]: WhatsApp Cloud API reference, Media, "Supported media types"
//!   (developers.facebook.com/docs/whatsapp/cloud-api/reference/media#supported-media-types):
//!   audio `audio/aac`, `audio/amr`, `audio/mpeg`, `audio/mp4`, and `audio/ogg` "(OPUS codecs
//!   only; base audio/ogg not supported.)", 16 MB; documents 100 MB; images `image/jpeg` and
//!   `image/png`, 5 MB; stickers `image/webp`, 100 KB static and 500 KB animated; video
//!   `video/3gp` and `video/mp4`, 16 MB. The pages of the Cloud API's audio, image, sticker
//!   and video messages repeat these rows.
//! - [video]: the Cloud API's "Video messages" page, "Supported video formats": "Only H.264
//!   video codec and AAC audio codec supported. Single audio stream or no audio stream
//!   only."
//! - The format's own specification, for a file that is not what its extension says it is,
//!   or is not a valid file of that format at all: [RFC 3533] (Ogg), [RFC 7845] (Ogg Opus),
//!   [ISO 14496-12] (the ISO base media file format: MP4, 3GP, M4A), [WebP container] (the
//!   WebP container specification, developers.google.com/speed/webp/docs/riff_container).
//!
//! Not rules, for want of a source that makes them one: the "Video messages" page (as
//! revised in November 2025) recommends the H.264 Main or Baseline profile without
//! B-frames, and `moov` boxes before `mdat` (ffmpeg's `-movflags faststart`), "for broader
//! compatibility", which is advice, not a requirement; so a file whose `moov` follows
//! `mdat` (ffmpeg's default layout, and many recorders') is taken. Not checked either,
//! though the documentation asks for them: stickers of 512x512 pixels, images of 8-bit RGB
//! or RGBA, and the documents' 100 MB, which `limits.max_upload_bytes` (37 MiB by default)
//! stays under unless configured otherwise.
//!
//! A body over its size rule is refused with 413 (code 1009): by `Content-Length` before a
//! byte of it is read (also at `Expect: 100-continue`), else as soon as the count passes
//! the rule. A body that breaks a content rule is refused with 400 (code 1009). Either
//! way the details name the rule, and the upload rolls back like any other failure.
//!
//! Content is checked as it passes, in constant memory, never by buffering the file:
//! - MP4/3GP/M4A: the top-level boxes are walked as they stream past (32-bit size and
//!   type; size 1: a 64-bit size follows; size 0: the box runs to the end of the file),
//!   `mdat` skipped by count wherever it is, to the end of the file: a file without a
//!   `moov`, with a second one, or cut short inside a box is refused.
//!   Inside `moov`, only the path to each track's handler
//!   (`trak/mdia/hdlr`) and sample descriptions (`trak/mdia/minf/stbl/stsd`) is entered;
//!   those two small boxes are the only bytes kept (at most `MAX_KEPT_BOX` each), the
//!   rest is skipped by count. For `.mp4` and `.3gp`, video tracks must be `avc1`/`avc3`
//!   (H.264), audio tracks `mp4a` (AAC), there must be a video track and at most one
//!   audio track; an `.m4a` has
//!   an audio track and no video track.
//! - OGG: every page is checked (capture pattern, version 0, checksum, a body as long as
//!   its lacing says), one logical stream at a time (begun by a BOS page, its pages in
//!   sequence, a chained stream only after the previous one's EOS), and every stream's
//!   first packet must start with `OpusHead`: not Vorbis, Speex or FLAC, and no second
//!   stream beside the Opus one (see `OggWalker`).
//! - WebP: every chunk header is read and checked against the RIFF size (a chunk that
//!   runs past it, a file that ends before it or goes on after it, a `VP8X` that is not
//!   10 bytes are refused); animated means the `VP8X` animation flag with an `ANIM` chunk
//!   and `ANMF` frames, the flag and the chunks agreeing (see `WebpWalker`). A static file
//!   is held to the static limit as soon as its first chunks show it, an animated one to
//!   the animated limit from its first frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use crate::domain::ApiError;
use crate::domain::FileExtension;

mod format;
mod mp4;
mod ogg;
#[cfg(test)]
mod tests;
mod webp;

pub use mp4::{BoxWalker, MAX_KEPT_BOX};
use ogg::OggWalker;
use webp::WebpWalker;

/// `media.profile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Profile {
    /// No rules beyond `limits.max_upload_bytes`.
    #[default]
    None,
    /// The WhatsApp Business Platform's media rules.
    Whatsapp,
}

impl TryFrom<String> for Profile {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Profile::None),
            "whatsapp" => Ok(Profile::Whatsapp),
            _ => Err(format!(
                "media.profile must be \"none\" or \"whatsapp\", not {value:?}"
            )),
        }
    }
}

/// Images: "5 MB" [media].
pub const IMAGE_MAX_BYTES: u64 = 5_000_000;
/// Audio: "16 MB" [media].
pub const AUDIO_MAX_BYTES: u64 = 16_000_000;
/// Video: "16 MB" [media].
pub const VIDEO_MAX_BYTES: u64 = 16_000_000;
/// Static stickers: "100 KB" [media].
pub const STATIC_STICKER_MAX_BYTES: u64 = 100_000;
/// Animated stickers: "500 KB" [media].
pub const ANIMATED_STICKER_MAX_BYTES: u64 = 500_000;

/// The media classes of the WhatsApp rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Image,
    Audio,
    Video,
    Sticker,
    Document,
}

/// What the bytes of an extension must be, beyond their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Nothing is checked.
    Any,
    /// A valid Ogg file of Opus streams, one at a time.
    OggOpus,
    /// A valid ISO media file (MP4, 3GP, M4A): with `video`, of H.264 video and AAC audio;
    /// without, of audio alone.
    IsoMedia { video: bool },
    /// A WebP image, static or animated.
    Webp,
}

/// The rule of one extension under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The extension, as the table spells it.
    pub extension: &'static str,
    pub class: Class,
    pub content: Content,
}

/// The WhatsApp rule table; every other extension is a document. Sources: see the module
/// docs.
const WHATSAPP: &[Rule] = &[
    // image/jpeg, image/png [media]; .jpg is the other spelling of image/jpeg.
    rule("jpeg", Class::Image, Content::Any),
    rule("jpg", Class::Image, Content::Any),
    rule("png", Class::Image, Content::Any),
    // audio/aac, audio/amr, audio/mpeg [media].
    rule("aac", Class::Audio, Content::Any),
    rule("amr", Class::Audio, Content::Any),
    rule("mp3", Class::Audio, Content::Any),
    // audio/mp4 [media]: an ISO media file [ISO 14496-12]; no codec is named for it.
    rule("m4a", Class::Audio, Content::IsoMedia { video: false }),
    // "audio/ogg (OPUS codecs only; base audio/ogg not supported.)" [media]; an Ogg file
    // [RFC 3533] of Opus [RFC 7845].
    rule("ogg", Class::Audio, Content::OggOpus),
    // video/mp4, video/3gp [media]; "Only H.264 video codec and AAC audio codec" [video].
    rule("mp4", Class::Video, Content::IsoMedia { video: true }),
    rule("3gp", Class::Video, Content::IsoMedia { video: true }),
    // image/webp, static or animated [media]; a WebP file [WebP container].
    rule("webp", Class::Sticker, Content::Webp),
];

const fn rule(extension: &'static str, class: Class, content: Content) -> Rule {
    Rule {
        extension,
        class,
        content,
    }
}

impl Profile {
    /// The rule for a (lower-case) extension; `None` when the profile has none for it
    /// (profile off, or a document: only `limits.max_upload_bytes` applies).
    pub fn rule(self, extension: &str) -> Option<Rule> {
        match self {
            Profile::None => None,
            Profile::Whatsapp => WHATSAPP.iter().copied().find(|r| r.extension == extension),
        }
    }

    /// The class of an extension under this profile.
    pub fn class(self, extension: &str) -> Class {
        self.rule(extension).map_or(Class::Document, |r| r.class)
    }

    /// Refuses (413) a declared `Content-Length` over the rule of `extension`.
    pub fn check_declared(
        self,
        extension: &FileExtension,
        length: Option<u64>,
    ) -> Result<(), ApiError> {
        match (self.rule(extension.as_str()), length) {
            (Some(rule), Some(length)) if length > rule.max_bytes(None) => {
                Err(ApiError::OverProfileLimit(rule.size_details(None)))
            }
            _ => Ok(()),
        }
    }
}

impl Rule {
    /// The most bytes a file may have; for a sticker, `animated` when known (until then
    /// the animated limit, the larger).
    pub fn max_bytes(&self, animated: Option<bool>) -> u64 {
        match self.class {
            Class::Image => IMAGE_MAX_BYTES,
            Class::Audio => AUDIO_MAX_BYTES,
            Class::Video => VIDEO_MAX_BYTES,
            Class::Sticker if animated == Some(false) => STATIC_STICKER_MAX_BYTES,
            Class::Sticker => ANIMATED_STICKER_MAX_BYTES,
            Class::Document => u64::MAX,
        }
    }

    /// The size rule, as the details of a refusal name it.
    pub fn size_details(&self, animated: Option<bool>) -> String {
        let rule = match (self.class, animated) {
            (Class::Image, _) => "images (jpeg, png) are at most 5 MB",
            (Class::Audio, _) => "audio files (aac, amr, mp3, m4a, ogg) are at most 16 MB",
            (Class::Video, _) => "videos (mp4, 3gp) are at most 16 MB",
            (Class::Sticker, Some(false)) => "static stickers (webp) are at most 100 KB",
            (Class::Sticker, Some(true)) => "animated stickers (webp) are at most 500 KB",
            (Class::Sticker, None) => "stickers (webp) are at most 100 KB static, 500 KB animated",
            (Class::Document, _) => "documents are at most limits.max_upload_bytes",
        };
        format!("whatsapp profile: {rule}")
    }
}

/// Why a body breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleBroken {
    /// Over the size rule (413); the details.
    Size(String),
    /// Against a content rule (400); the details.
    Content(String),
}

impl From<RuleBroken> for ApiError {
    fn from(refusal: RuleBroken) -> Self {
        match refusal {
            RuleBroken::Size(details) => ApiError::OverProfileLimit(details),
            RuleBroken::Content(details) => ApiError::InvalidParameter(details),
        }
    }
}

pin_project_lite::pin_project! {
    /// A body checked against the profile's rule for its extension as it passes. Without a
    /// rule (profile off, or a document) it only hands the chunks on.
    pub struct Profiled<S> {
        #[pin]
        inner: S,
        check: Option<Box<Check>>,
    }
}

impl<S> Profiled<S> {
    /// `declared` is the body's `Content-Length`, when it has one.
    pub fn new(
        inner: S,
        profile: Profile,
        extension: &FileExtension,
        declared: Option<u64>,
    ) -> Self {
        let check = profile
            .rule(extension.as_str())
            .map(|rule| Box::new(Check::new(rule, declared)));
        Self { inner, check }
    }
}

impl<S> Stream for Profiled<S>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    type Item = Result<Bytes, ApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let Some(check) = this.check.as_mut() else {
            return this.inner.poll_next(cx);
        };
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match check.feed(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(refusal) => {
                    *this.check = None;
                    Poll::Ready(Some(Err(refusal.into())))
                }
            },
            Poll::Ready(None) => {
                let verdict = check.finish();
                *this.check = None;
                match verdict {
                    Ok(()) => Poll::Ready(None),
                    Err(refusal) => Poll::Ready(Some(Err(refusal.into()))),
                }
            }
            other => other,
        }
    }
}

/// One body's check: its size so far and what its content showed.
#[derive(Debug)]
pub struct Check {
    rule: Rule,
    declared: Option<u64>,
    seen: u64,
    inspector: Inspector,
}

#[derive(Debug)]
enum Inspector {
    Any,
    Ogg(OggWalker),
    Iso(BoxWalker),
    Webp(WebpWalker),
}

impl Check {
    pub fn new(rule: Rule, declared: Option<u64>) -> Self {
        let inspector = match rule.content {
            Content::Any => Inspector::Any,
            Content::OggOpus => Inspector::Ogg(OggWalker::default()),
            Content::IsoMedia { video } => Inspector::Iso(BoxWalker::new(video)),
            Content::Webp => Inspector::Webp(WebpWalker::default()),
        };
        Self {
            rule,
            declared,
            seen: 0,
            inspector,
        }
    }

    /// The next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), RuleBroken> {
        self.seen += chunk.len() as u64;
        let extension = self.rule.extension;
        let content = match &mut self.inspector {
            Inspector::Any => Ok(()),
            Inspector::Ogg(head) => head.feed(chunk),
            Inspector::Iso(walker) => walker.feed(chunk),
            Inspector::Webp(head) => head.feed(chunk),
        };
        content.map_err(|reason| content_refusal(extension, reason))?;
        self.check_size()
    }

    /// The end of the body: what is still undecided is decided now. An empty body is left
    /// to the upload's own answer (400, code 1008).
    pub fn finish(&mut self) -> Result<(), RuleBroken> {
        if self.seen == 0 {
            return Ok(());
        }
        let extension = self.rule.extension;
        let content = match &mut self.inspector {
            Inspector::Any => Ok(()),
            Inspector::Ogg(head) => head.finish(),
            Inspector::Iso(walker) => walker.finish(),
            Inspector::Webp(head) => head.finish(),
        };
        content.map_err(|reason| content_refusal(extension, reason))?;
        self.check_size()
    }

    fn animated(&self) -> Option<bool> {
        match &self.inspector {
            Inspector::Webp(head) => head.animated,
            _ => None,
        }
    }

    /// Over the rule by what was seen, or by what was declared once the rule is known
    /// (a static sticker declared at 300 KB is refused as soon as it shows it is static).
    fn check_size(&self) -> Result<(), RuleBroken> {
        let animated = self.animated();
        let size = self.seen.max(self.declared.unwrap_or(0));
        if size > self.rule.max_bytes(animated) {
            return Err(RuleBroken::Size(self.rule.size_details(animated)));
        }
        Ok(())
    }
}

fn content_refusal(extension: &str, reason: String) -> RuleBroken {
    RuleBroken::Content(format!("whatsapp profile: .{extension} {reason}"))
}
