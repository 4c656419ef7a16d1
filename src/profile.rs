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

use crate::domain::FileExtension;
use crate::error::ApiError;

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

/// The biggest `hdlr` or `stsd` box that is kept to be read; a bigger one is refused.
pub const MAX_KEPT_BOX: usize = 64 * 1024;
/// Tracks of one file whose handler and sample descriptions are remembered.
const MAX_TRACKS: usize = 64;

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
pub enum Refusal {
    /// Over the size rule (413); the details.
    Size(String),
    /// Against a content rule (400); the details.
    Content(String),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Size(details) => ApiError::OverProfileLimit(details),
            Refusal::Content(details) => ApiError::InvalidParameter(details),
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
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
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
    pub fn finish(&mut self) -> Result<(), Refusal> {
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
    fn check_size(&self) -> Result<(), Refusal> {
        let animated = self.animated();
        let size = self.seen.max(self.declared.unwrap_or(0));
        if size > self.rule.max_bytes(animated) {
            return Err(Refusal::Size(self.rule.size_details(animated)));
        }
        Ok(())
    }
}

fn content_refusal(extension: &str, reason: String) -> Refusal {
    Refusal::Content(format!("whatsapp profile: .{extension} {reason}"))
}

/// Walks the pages of an Ogg file as they stream past, in constant memory: a page's
/// header and segment table are kept (at most 282 bytes), its body only counted and
/// checksummed, except the first bytes of the first packet of each stream. The rules:
/// - every page is well formed (RFC 3533): the capture pattern `OggS`, version 0, the
///   checksum over the whole page, and the body its lacing values promise (a file that
///   ends inside a page is refused);
/// - there is one logical stream at a time (RFC 3533 §4: streams are multiplexed, or
///   chained one after the other): the first page begins it (BOS), its pages come in
///   sequence, nothing of it follows its last page (EOS), and a new stream begins only
///   after it has ended. A second stream multiplexed beside the first is refused, because
///   WhatsApp takes Opus only ("audio/ogg (OPUS codecs only)"): a file of Opus and Vorbis
///   is not one;
/// - the first packet of every stream begins with `OpusHead` (RFC 7845 §5.1).
#[derive(Debug)]
struct OggWalker {
    /// The header (27 bytes) and segment table of the page being read.
    header: Vec<u8>,
    /// Body bytes of the current page still to come (once its header is complete).
    body_left: u32,
    /// The checksum so far of the current page, and the one its header carries.
    crc: u32,
    expected_crc: u32,
    /// The first bytes of a stream's first packet, while they are collected; how many.
    magic: Vec<u8>,
    magic_wanted: usize,
    /// Pages read; the current stream's serial and last sequence number; whether it ended.
    pages: u64,
    serial: u32,
    sequence: u32,
    ended: bool,
}

/// An Ogg page header without its segment table.
const OGG_PAGE_HEADER: usize = 27;
const OPUS_MAGIC: &[u8] = b"OpusHead";
/// Header type flags (RFC 3533 §6).
const OGG_BOS: u8 = 0x02;
const OGG_EOS: u8 = 0x04;

/// The Ogg checksum: CRC-32 with the polynomial 0x04c11db7, unreflected, initial value
/// and final XOR 0 (RFC 3533 §6), a byte at a time.
const OGG_CRC: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn ogg_crc(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = (crc << 8) ^ OGG_CRC[usize::from((crc >> 24) as u8 ^ byte)];
    }
    crc
}

impl Default for OggWalker {
    fn default() -> Self {
        Self {
            header: Vec::with_capacity(OGG_PAGE_HEADER + 255),
            body_left: 0,
            crc: 0,
            expected_crc: 0,
            magic: Vec::new(),
            magic_wanted: 0,
            pages: 0,
            serial: 0,
            sequence: 0,
            ended: false,
        }
    }
}

impl OggWalker {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.in_body() {
                let take = (self.body_left as usize).min(data.len());
                let bytes = &data[..take];
                data = &data[take..];
                self.crc = ogg_crc(self.crc, bytes);
                self.body_left -= take as u32;
                if self.magic.len() < self.magic_wanted {
                    let more = (self.magic_wanted - self.magic.len()).min(bytes.len());
                    self.magic.extend_from_slice(&bytes[..more]);
                    if self.magic.len() == self.magic_wanted {
                        self.check_magic()?;
                    }
                }
                if self.body_left == 0 {
                    self.end_page()?;
                }
                continue;
            }
            let wanted = match self.header.get(OGG_PAGE_HEADER - 1) {
                Some(&segments) => OGG_PAGE_HEADER + usize::from(segments),
                None => OGG_PAGE_HEADER,
            };
            let take = (wanted - self.header.len()).min(data.len());
            let before = self.header.len();
            self.header.extend_from_slice(&data[..take]);
            data = &data[take..];
            if before < 4 && self.header.len() >= 4 {
                self.check_capture()?;
            }
            let complete = match self.header.get(OGG_PAGE_HEADER - 1) {
                Some(&segments) => self.header.len() == OGG_PAGE_HEADER + usize::from(segments),
                None => false,
            };
            if complete {
                self.begin_page()?;
            }
        }
        Ok(())
    }

    /// Whether the current page's header is complete and its body being read.
    fn in_body(&self) -> bool {
        self.body_left > 0
    }

    fn check_capture(&self) -> Result<(), String> {
        if &self.header[..4] == b"OggS" {
            return Ok(());
        }
        if self.pages == 0 {
            return Err(Self::not_opus("it is not an Ogg file"));
        }
        Err(malformed_ogg(&format!(
            "not an Ogg page where page {} should begin",
            self.pages + 1
        )))
    }

    /// A page's header and segment table were read.
    fn begin_page(&mut self) -> Result<(), String> {
        let header = &self.header;
        let number = self.pages + 1;
        if header[4] != 0 {
            return Err(malformed_ogg(&format!(
                "page {number} is of version {}; the only version is 0",
                header[4]
            )));
        }
        let flags = header[5];
        let serial = u32::from_le_bytes(header[14..18].try_into().expect("four bytes"));
        let sequence = u32::from_le_bytes(header[18..22].try_into().expect("four bytes"));
        self.expected_crc = u32::from_le_bytes(header[22..26].try_into().expect("four bytes"));
        let lacing = &header[OGG_PAGE_HEADER..];
        let body: u32 = lacing.iter().map(|&l| u32::from(l)).sum();
        let begins = flags & OGG_BOS != 0;
        if begins {
            if self.pages > 0 && !self.ended {
                return Err(Self::not_opus(&format!(
                    "a second logical stream (serial {serial}) is multiplexed with the first: \
                     one Opus stream at a time"
                )));
            }
            // The first packet: its lacing values up to the first one under 255.
            let first = lacing
                .iter()
                .position(|&l| l < 255)
                .map_or(body as usize, |end| {
                    lacing[..=end].iter().map(|&l| usize::from(l)).sum()
                });
            self.magic.clear();
            self.magic_wanted = first.min(OPUS_MAGIC.len());
            self.serial = serial;
            self.ended = false;
        } else if self.pages == 0 {
            return Err(malformed_ogg(
                "its first page does not begin a stream (no BOS flag)",
            ));
        } else if serial != self.serial {
            return Err(malformed_ogg(&format!(
                "page {number} belongs to stream serial {serial}, which never began, inside \
                 stream {}",
                self.serial
            )));
        } else if self.ended {
            return Err(malformed_ogg(&format!(
                "page {number} follows the last page (EOS) of its stream"
            )));
        } else if Some(sequence) != self.sequence.checked_add(1) {
            return Err(malformed_ogg(&format!(
                "page {number} has sequence number {sequence} after {}: a page is missing \
                 or out of order",
                self.sequence
            )));
        }
        self.sequence = sequence;
        if flags & OGG_EOS != 0 {
            self.ended = true;
        }
        let mut zeroed = [0u8; OGG_PAGE_HEADER];
        zeroed.copy_from_slice(&self.header[..OGG_PAGE_HEADER]);
        zeroed[22..26].fill(0);
        self.crc = ogg_crc(ogg_crc(0, &zeroed), lacing);
        self.body_left = body;
        if begins && self.magic_wanted == 0 {
            // An empty first packet.
            self.check_magic()?;
        }
        if body == 0 {
            self.end_page()?;
        }
        Ok(())
    }

    /// The current page's body was read.
    fn end_page(&mut self) -> Result<(), String> {
        let number = self.pages + 1;
        if self.crc != self.expected_crc {
            return Err(malformed_ogg(&format!(
                "page {number} has a bad checksum: its bytes are not those it was written with"
            )));
        }
        self.pages += 1;
        self.header.clear();
        Ok(())
    }

    /// The first bytes of a stream's first packet are in.
    fn check_magic(&mut self) -> Result<(), String> {
        let packet = std::mem::take(&mut self.magic);
        self.magic_wanted = 0;
        if packet.starts_with(OPUS_MAGIC) {
            return Ok(());
        }
        let codec = [
            (&b"\x01vorbis"[..], "Vorbis"),
            (b"Speex   ", "Speex"),
            (b"\x7fFLAC", "FLAC"),
            (b"\x80theora", "Theora"),
        ]
        .into_iter()
        .find(|(magic, _)| packet.starts_with(magic))
        .map(|(_, name)| name);
        let stream = if self.pages == 0 { "first" } else { "next" };
        Err(Self::not_opus(&match codec {
            Some(codec) => format!("its {stream} stream is {codec}"),
            None => format!("its {stream} stream is not Opus"),
        }))
    }

    fn finish(&mut self) -> Result<(), String> {
        if self.header.is_empty() && self.pages > 0 {
            return Ok(());
        }
        if self.pages == 0 && self.header.len() < 4 {
            return Err(Self::not_opus("it is not an Ogg file"));
        }
        let missing = if self.in_body() {
            format!("{} bytes of its body missing", self.body_left)
        } else {
            "its header cut short".to_owned()
        };
        Err(malformed_ogg(&format!(
            "file ends inside an Ogg page (page {}, {missing})",
            self.pages + 1
        )))
    }

    fn not_opus(why: &str) -> String {
        format!("audio must use the Opus codec ({why})")
    }
}

fn malformed_ogg(what: &str) -> String {
    format!("file is not a valid Ogg file ({what})")
}

/// Walks the boxes of an ISO media file (MP4, 3GP, M4A) as they stream past; see the
/// module docs.
#[derive(Debug)]
pub struct BoxWalker {
    /// The rules of a video (`.mp4`, `.3gp`), else those of audio (`.m4a`).
    video: bool,
    /// The `moov` box was read and passed.
    moov_seen: bool,
    /// The type of the top-level box being walked.
    top: [u8; 4],
    /// Bytes walked so far.
    position: u64,
    state: Walk,
    /// The header being read: 8 bytes, or 16 with a 64-bit size.
    header: [u8; 16],
    header_len: usize,
    /// The boxes entered inside `moov` (`moov` first), with their end positions.
    open: Vec<([u8; 4], u64)>,
    /// The payload of the `hdlr` or `stsd` box being read.
    kept: Vec<u8>,
    tracks: Vec<Track>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Header,
    /// Skipping this many more bytes of a box's payload.
    Skip(u64),
    /// Reading the payload of a box that is kept (`hdlr`, `stsd`); bytes still to come.
    Keep([u8; 4], u64),
    /// Inside a top-level box that runs to the end of the file.
    ToEnd,
}

#[derive(Debug, Default)]
struct Track {
    handler: Option<[u8; 4]>,
    sample_entries: Vec<[u8; 4]>,
}

const MOOV: [u8; 4] = *b"moov";

impl BoxWalker {
    pub fn new(video: bool) -> Self {
        Self {
            video,
            moov_seen: false,
            top: [0; 4],
            position: 0,
            state: Walk::Header,
            header: [0; 16],
            header_len: 0,
            open: Vec::new(),
            kept: Vec::new(),
            tracks: Vec::new(),
        }
    }

    /// Whether the `moov` box was seen, complete, and passed.
    pub fn done(&self) -> bool {
        self.moov_seen
    }

    /// The next bytes of the file, in chunks of any size.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match self.state {
                Walk::ToEnd => return Ok(()),
                Walk::Skip(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.position += take;
                    if take == left {
                        self.state = Walk::Header;
                        self.box_ended()?;
                    } else {
                        self.state = Walk::Skip(left - take);
                    }
                }
                Walk::Keep(kind, left) => {
                    let take = left.min(data.len() as u64);
                    self.kept.extend_from_slice(&data[..take as usize]);
                    data = &data[take as usize..];
                    self.position += take;
                    if take == left {
                        self.kept_box(kind)?;
                    } else {
                        self.state = Walk::Keep(kind, left - take);
                    }
                }
                Walk::Header => {
                    let wanted = if self.header_len >= 8 && self.size32() == 1 {
                        16
                    } else {
                        8
                    };
                    let take = (wanted - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&data[..take]);
                    self.header_len += take;
                    self.position += take as u64;
                    data = &data[take..];
                    if self.header_len == wanted && !(wanted == 8 && self.size32() == 1) {
                        self.header_len = 0;
                        self.begin_box(wanted as u64)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The end of the file.
    pub fn finish(&mut self) -> Result<(), String> {
        // Every box ends where its size says [ISO 14496-12]: a file cut short is refused.
        match self.state {
            _ if !self.open.is_empty() => Err("file ends inside its moov box".to_owned()),
            _ if !self.moov_seen => Err("file ends without a moov box".to_owned()),
            Walk::ToEnd => Ok(()),
            Walk::Header if self.header_len == 0 => Ok(()),
            Walk::Header => Err(malformed("it ends inside a box header")),
            Walk::Skip(_) | Walk::Keep(..) => Err(malformed(&format!(
                "it ends inside its {} box",
                fourcc(&self.top)
            ))),
        }
    }

    fn size32(&self) -> u32 {
        u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    /// A box header was read (`header_len` bytes of it); `position` is at its payload.
    fn begin_box(&mut self, header_len: u64) -> Result<(), String> {
        let kind = [
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ];
        let size = match self.size32() {
            0 => None,
            1 => Some(u64::from_be_bytes(
                self.header[8..16].try_into().expect("eight bytes"),
            )),
            size => Some(u64::from(size)),
        };
        let start = self.position - header_len;
        let payload = match size {
            Some(size) if size < header_len => {
                return Err(malformed(&format!(
                    "a {} box of {size} bytes",
                    fourcc(&kind)
                )))
            }
            Some(size) => Some(size - header_len),
            None => None,
        };
        let Some(&(parent, parent_end)) = self.open.last() else {
            // A top-level box. mdat, wherever it is, is skipped like any other box: its
            // place is not a rule (see the module docs).
            self.top = kind;
            return match (kind, payload) {
                // A file has exactly one moov [ISO 14496-12 §8.2.1]: a second one would
                // have gone unread, whatever its tracks.
                (MOOV, _) if self.moov_seen => Err(malformed("a second moov box")),
                (MOOV, None) => Err(malformed("a moov box without a size")),
                (MOOV, Some(payload)) => {
                    self.open.push((MOOV, start + header_len + payload));
                    self.state = Walk::Header;
                    self.box_ended()
                }
                (_, None) => {
                    self.state = Walk::ToEnd;
                    Ok(())
                }
                (_, Some(payload)) => self.skip(payload),
            };
        };
        // Inside moov: every box has a size and fits in its parent.
        let Some(payload) = payload else {
            return Err(malformed(&format!(
                "a {} box without a size inside {}",
                fourcc(&kind),
                fourcc(&parent)
            )));
        };
        let end = start + header_len + payload;
        if end > parent_end {
            return Err(malformed(&format!(
                "a {} box that overruns its {} box",
                fourcc(&kind),
                fourcc(&parent)
            )));
        }
        match (&parent, &kind) {
            (b"moov", b"trak") | (b"trak", b"mdia") | (b"mdia", b"minf") | (b"minf", b"stbl") => {
                if &kind == b"trak" {
                    if self.tracks.len() == MAX_TRACKS {
                        return Err(malformed("more than 64 tracks"));
                    }
                    self.tracks.push(Track::default());
                }
                self.open.push((kind, end));
                self.state = Walk::Header;
                self.box_ended()
            }
            (b"mdia", b"hdlr") | (b"stbl", b"stsd") => {
                if payload > MAX_KEPT_BOX as u64 {
                    return Err(malformed(&format!(
                        "a {} box over {} KiB",
                        fourcc(&kind),
                        MAX_KEPT_BOX / 1024
                    )));
                }
                self.kept.clear();
                self.state = Walk::Keep(kind, payload);
                if payload == 0 {
                    return self.kept_box(kind);
                }
                Ok(())
            }
            _ => self.skip(payload),
        }
    }

    fn skip(&mut self, payload: u64) -> Result<(), String> {
        if payload == 0 {
            self.state = Walk::Header;
            return self.box_ended();
        }
        self.state = Walk::Skip(payload);
        Ok(())
    }

    /// A kept box is complete: what it says is noted for the current track.
    fn kept_box(&mut self, kind: [u8; 4]) -> Result<(), String> {
        let payload = std::mem::take(&mut self.kept);
        let track = self.tracks.last_mut();
        match (&kind, track) {
            (b"hdlr", Some(track)) => {
                // version and flags, pre_defined, handler_type.
                let handler = payload
                    .get(8..12)
                    .ok_or_else(|| malformed("a short hdlr box"))?;
                track.handler = Some(handler.try_into().expect("four bytes"));
            }
            (b"stsd", Some(track)) => {
                // version and flags, entry_count, then the sample entries (boxes).
                let count = payload
                    .get(4..8)
                    .map(|c| u32::from_be_bytes(c.try_into().expect("four bytes")))
                    .ok_or_else(|| malformed("a short stsd box"))?;
                let mut at = 8usize;
                for _ in 0..count {
                    let entry = payload
                        .get(at..at + 8)
                        .ok_or_else(|| malformed("an stsd box shorter than its entries"))?;
                    let size = u32::from_be_bytes(entry[..4].try_into().expect("four bytes"));
                    if size < 8 {
                        return Err(malformed("a sample entry of less than 8 bytes"));
                    }
                    track
                        .sample_entries
                        .push(entry[4..8].try_into().expect("four bytes"));
                    at = at.saturating_add(size as usize);
                }
            }
            _ => {}
        }
        self.state = Walk::Header;
        self.box_ended()
    }

    /// Closes the boxes that end here; the end of `moov` decides the file.
    fn box_ended(&mut self) -> Result<(), String> {
        while let Some(&(kind, end)) = self.open.last() {
            if self.position < end {
                break;
            }
            self.open.pop();
            if kind == MOOV {
                self.check_tracks()?;
                self.moov_seen = true;
                self.tracks = Vec::new();
            }
        }
        Ok(())
    }

    fn check_tracks(&self) -> Result<(), String> {
        if !self.video {
            return self.check_audio_tracks();
        }
        // "Only H.264 video codec and AAC audio codec supported" [video]: the sample
        // entries of H.264 (avc1, avc3) and of MPEG-4 audio (mp4a), ISO/IEC 14496-15 and -14.
        let refuse = |found: String| {
            Err(format!(
                "video must be H.264 with AAC audio (sample entries avc1 or avc3, and mp4a): \
                 {found}"
            ))
        };
        let mut video = false;
        let mut audio = 0;
        for track in &self.tracks {
            let (allowed, what): (&[&[u8; 4]], &str) = match track.handler.as_ref() {
                Some(b"vide") => {
                    video = true;
                    (&[b"avc1", b"avc3"], "video")
                }
                Some(b"soun") => {
                    audio += 1;
                    (&[b"mp4a"], "audio")
                }
                _ => continue,
            };
            if track.sample_entries.is_empty() {
                return refuse(format!("an {what} track without a sample entry"));
            }
            if let Some(other) = track
                .sample_entries
                .iter()
                .find(|entry| !allowed.contains(entry))
            {
                return refuse(format!("found {what} {}", fourcc(other)));
            }
        }
        // video/mp4, video/3gp [media]: a video has a video track.
        if !video {
            return refuse("found no video track".to_owned());
        }
        // "Single audio stream or no audio stream only" [video].
        if audio > 1 {
            return Err(format!(
                "video must have a single audio track or none: found {audio} audio tracks"
            ));
        }
        Ok(())
    }

    /// audio/mp4 [media]: an audio file, so an audio track and no video; no codec is
    /// named for it. Cover art is metadata (`udta/meta`), not a track.
    fn check_audio_tracks(&self) -> Result<(), String> {
        let refuse = |found: &str| {
            Err(format!(
                "audio (audio/mp4) must have an audio track and no video track: found {found}"
            ))
        };
        let mut audio = false;
        for track in &self.tracks {
            match track.handler.as_ref() {
                Some(b"vide") => return refuse("a video track"),
                Some(b"soun") => audio = true,
                _ => {}
            }
        }
        if !audio {
            return refuse("no audio track");
        }
        Ok(())
    }
}

fn malformed(what: &str) -> String {
    format!("file is not a valid ISO media file ({what})")
}

/// A box type for a message: printable ASCII as is, other bytes escaped.
fn fourcc(kind: &[u8; 4]) -> String {
    kind.escape_ascii().to_string()
}

/// Walks the chunks of a WebP file (a RIFF container) as they stream past, skipping their
/// payloads by count: only the ten bytes of `VP8X` are kept. The rules are the WebP
/// container specification's (developers.google.com/speed/webp/docs/riff_container):
/// - the RIFF size is the size of the file after its first 8 bytes: a file that ends
///   before it or goes on after it is refused, and so is a chunk that runs past it (each
///   chunk padded to an even size);
/// - the first chunk is `VP8 ` or `VP8L` (a simple file: static) or a `VP8X` of exactly
///   10 bytes (an extended file);
/// - an extended file is animated when, and only when, its `VP8X` has the animation flag:
///   then an `ANIM` chunk comes before its `ANMF` frames, there is at least one frame and
///   no image outside them; without the flag there is neither `ANIM` nor `ANMF`, and a
///   `VP8 `/`VP8L` image. The flag and the chunks must agree, so one bit cannot make a
///   static image an animated sticker (whose size rule is five times the static one).
#[derive(Debug, Default)]
struct WebpWalker {
    /// Bytes of the RIFF header (12) or of a chunk header (8) being read.
    header: Vec<u8>,
    /// Bytes walked so far.
    position: u64,
    /// Where the RIFF chunk ends (its size + 8), once its header was read.
    riff_end: Option<u64>,
    /// Bytes of the current chunk's payload (and padding) still to skip.
    skip: u64,
    /// Inside a `VP8X` chunk: its payload so far (kept, 10 bytes).
    vp8x: Option<Vec<u8>>,
    layout: WebpLayout,
    /// An `ANIM` chunk was seen.
    anim: bool,
    /// `ANMF` frames seen.
    frames: u64,
    /// A `VP8 ` or `VP8L` image seen outside frames.
    image: bool,
    /// What the size rule is judged by: static once the file shows it, animated once its
    /// first frame comes.
    animated: Option<bool>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum WebpLayout {
    /// No chunk read yet.
    #[default]
    Start,
    /// `VP8 ` or `VP8L` first.
    Simple,
    /// `VP8X` first; with or without the animation flag.
    Extended { animation: bool },
}

/// The `VP8X` flag of an animated image.
const ANIMATION_FLAG: u8 = 0x02;
const RIFF_HEADER: usize = 12;
const CHUNK_HEADER: usize = 8;
const VP8X_SIZE: u64 = 10;
const ANIM_SIZE: u32 = 6;
/// An `ANMF` payload's frame header, before the frame's own chunks.
const ANMF_HEADER: u32 = 16;

impl WebpWalker {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if let Some(kept) = self.vp8x.as_mut() {
                let take = (VP8X_SIZE as usize - kept.len()).min(data.len());
                kept.extend_from_slice(&data[..take]);
                data = &data[take..];
                self.position += take as u64;
                if kept.len() == VP8X_SIZE as usize {
                    let flags = kept[0];
                    self.vp8x = None;
                    let animation = flags & ANIMATION_FLAG != 0;
                    self.layout = WebpLayout::Extended { animation };
                    if !animation {
                        self.animated = Some(false);
                    }
                }
                continue;
            }
            if self.skip > 0 {
                let take = self.skip.min(data.len() as u64);
                self.skip -= take;
                self.position += take;
                data = &data[take as usize..];
                continue;
            }
            // What is left of the RIFF chunk; nothing may follow it.
            let left = match self.riff_end {
                Some(end) if self.position >= end => {
                    return Err(malformed_webp(&format!(
                        "bytes after the end of its RIFF chunk, which its RIFF size puts at \
                         byte {end}"
                    )))
                }
                Some(end) => end - self.position,
                None => u64::MAX,
            };
            let wanted = if self.riff_end.is_some() {
                CHUNK_HEADER
            } else {
                RIFF_HEADER
            };
            let take = (wanted - self.header.len())
                .min(data.len())
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            self.header.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.position += take as u64;
            if self.riff_end.is_none() && self.header.len() >= 4 && &self.header[..4] != b"RIFF" {
                return Err(not_webp());
            }
            if self.header.len() < wanted {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            let size = u32::from_le_bytes(header[4..8].try_into().expect("four bytes"));
            if self.riff_end.is_none() {
                if &header[8..12] != b"WEBP" {
                    return Err(not_webp());
                }
                self.riff_end = Some(8 + u64::from(size));
                continue;
            }
            self.chunk(header[..4].try_into().expect("four bytes"), size)?;
        }
        Ok(())
    }

    /// A chunk header was read; `position` is at its payload.
    fn chunk(&mut self, kind: [u8; 4], size: u32) -> Result<(), String> {
        let name = fourcc(&kind);
        let padded = u64::from(size) + u64::from(size & 1);
        let riff_end = self.riff_end.expect("the RIFF header came first");
        if self.position + padded > riff_end {
            return Err(malformed_webp(&format!(
                "a {name} chunk of {size} bytes that runs past the end of its RIFF chunk"
            )));
        }
        self.skip = padded;
        let image = &kind == b"VP8 " || &kind == b"VP8L";
        match (self.layout, &kind) {
            (WebpLayout::Start, _) if image => {
                self.layout = WebpLayout::Simple;
                self.image = true;
                self.animated = Some(false);
            }
            (WebpLayout::Start, b"VP8X") => {
                if u64::from(size) != VP8X_SIZE {
                    return Err(malformed_webp(&format!(
                        "a VP8X chunk of {size} bytes, not {VP8X_SIZE}"
                    )));
                }
                self.skip = 0;
                self.vp8x = Some(Vec::with_capacity(VP8X_SIZE as usize));
            }
            (WebpLayout::Start, _) => {
                return Err(malformed_webp(&format!(
                    "its first chunk is {name}, not VP8, VP8L or VP8X"
                )))
            }
            (_, b"VP8X") => return Err(malformed_webp("a VP8X chunk that is not the first")),
            (WebpLayout::Simple, b"ANIM" | b"ANMF" | b"VP8 " | b"VP8L" | b"ALPH") => {
                return Err(malformed_webp(&format!(
                    "a {name} chunk after the image of a simple file (one without VP8X)"
                )))
            }
            (WebpLayout::Extended { animation: false }, b"ANIM" | b"ANMF") => {
                return Err(malformed_webp(&format!(
                    "an {name} chunk in a file whose VP8X has no animation flag"
                )))
            }
            (WebpLayout::Extended { animation: true }, b"ANIM") => {
                if self.anim || self.frames > 0 {
                    return Err(malformed_webp("a second ANIM chunk, or one after a frame"));
                }
                if size < ANIM_SIZE {
                    return Err(malformed_webp(&format!(
                        "an ANIM chunk of {size} bytes, not {ANIM_SIZE}"
                    )));
                }
                self.anim = true;
            }
            (WebpLayout::Extended { animation: true }, b"ANMF") => {
                if !self.anim {
                    return Err(malformed_webp("an ANMF frame before the ANIM chunk"));
                }
                if size < ANMF_HEADER {
                    return Err(malformed_webp(&format!(
                        "an ANMF frame of {size} bytes, shorter than its {ANMF_HEADER}-byte \
                         header"
                    )));
                }
                self.frames += 1;
                self.animated = Some(true);
            }
            (WebpLayout::Extended { animation: true }, b"VP8 " | b"VP8L" | b"ALPH") => {
                return Err(malformed_webp(&format!(
                    "a {name} image outside the ANMF frames of a file whose VP8X has the \
                     animation flag"
                )))
            }
            (WebpLayout::Extended { animation: false }, _) if image => {
                if self.image {
                    return Err(malformed_webp(&format!("a second image ({name} chunk)")));
                }
                self.image = true;
            }
            // ICCP, ALPH, EXIF, XMP and unknown chunks.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(riff_end) = self.riff_end else {
            return Err(not_webp());
        };
        if self.position < riff_end {
            return Err(malformed_webp(&format!(
                "file ends after {} bytes, before the {riff_end} of its RIFF size",
                self.position
            )));
        }
        if !self.header.is_empty() {
            return Err(malformed_webp("file ends inside a chunk header"));
        }
        match self.layout {
            WebpLayout::Extended { animation: true } if self.frames == 0 => Err(malformed_webp(
                "its VP8X has the animation flag, but it has no ANMF frame",
            )),
            WebpLayout::Extended { animation: true } | WebpLayout::Simple => Ok(()),
            _ if !self.image => Err(malformed_webp("no image (VP8 or VP8L chunk)")),
            _ => Ok(()),
        }
    }
}

fn not_webp() -> String {
    "sticker must be a WebP image (RIFF … WEBP)".to_owned()
}

fn malformed_webp(what: &str) -> String {
    format!("file is not a valid WebP file ({what})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A box with a 32-bit size.
    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    /// A box with size 1 and a 64-bit size.
    fn bx64(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = 1u32.to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(&((payload.len() + 16) as u64).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn track(handler: &[u8; 4], entries: &[&[u8; 4]]) -> Vec<u8> {
        let mut hdlr = vec![0; 8];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0; 12]);
        hdlr.extend_from_slice(b"handler\0");
        let mut stsd = vec![0; 4];
        stsd.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for entry in entries {
            stsd.extend(bx(entry, &[0; 30]));
        }
        let stbl = [bx(b"stsd", &stsd), bx(b"stts", &[0; 8])].concat();
        let minf = [bx(b"vmhd", &[0; 12]), bx(b"stbl", &stbl)].concat();
        let mdia = [
            bx(b"mdhd", &[0; 24]),
            bx(b"hdlr", &hdlr),
            bx(b"minf", &minf),
        ]
        .concat();
        bx(
            b"trak",
            &[bx(b"tkhd", &[0; 84]), bx(b"mdia", &mdia)].concat(),
        )
    }

    fn moov(tracks: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = bx(b"mvhd", &[0; 100]);
        for track in tracks {
            payload.extend_from_slice(track);
        }
        bx(b"moov", &payload)
    }

    fn ftyp() -> Vec<u8> {
        bx(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41")
    }

    fn h264_aac() -> Vec<u8> {
        moov(&[track(b"vide", &[b"avc1"]), track(b"soun", &[b"mp4a"])])
    }

    /// Walks `file` in chunks of `chunk` bytes, then ends it.
    fn walk(file: &[u8], chunk: usize, codecs: bool) -> Result<(), String> {
        let mut walker = BoxWalker::new(codecs);
        for piece in file.chunks(chunk) {
            walker.feed(piece)?;
        }
        walker.finish()
    }

    /// The same verdict whatever the chunking, 1-byte chunks included.
    fn verdict(file: &[u8], codecs: bool) -> Result<(), String> {
        let whole = walk(file, file.len().max(1), codecs);
        for chunk in [1, 2, 3, 7, 8, 9, 16, 100, 4096] {
            assert_eq!(walk(file, chunk, codecs), whole, "chunks of {chunk}");
        }
        whole
    }

    #[test]
    fn streamable_mp4_passes_in_any_chunking() {
        let file = [
            ftyp(),
            h264_aac(),
            bx(b"free", &[]),
            bx(b"mdat", &[7; 5000]),
        ]
        .concat();
        assert_eq!(verdict(&file, true), Ok(()));
        // Decided when moov ends, before a byte of mdat.
        let mut walker = BoxWalker::new(true);
        for byte in [ftyp(), h264_aac()].concat() {
            walker.feed(&[byte]).unwrap();
        }
        assert!(walker.done());
    }

    #[test]
    fn moov_after_mdat_is_read_at_the_end() {
        // ffmpeg's default layout, and many recorders': mdat first, moov last.
        let file = [
            ftyp(),
            bx(b"free", &[]),
            bx(b"mdat", &[7; 5000]),
            h264_aac(),
        ]
        .concat();
        assert_eq!(verdict(&file, true), Ok(()));
        let audio = [
            ftyp(),
            bx(b"mdat", &[7; 300]),
            moov(&[track(b"soun", &[b"mp4a"])]),
        ]
        .concat();
        assert_eq!(verdict(&audio, false), Ok(()));
        // The codec rules still hold, decided when moov ends.
        let mpeg4 = [
            ftyp(),
            bx(b"mdat", &[7; 300]),
            moov(&[track(b"vide", &[b"mp4v"])]),
        ]
        .concat();
        assert!(verdict(&mpeg4, true)
            .unwrap_err()
            .contains("found video mp4v"));
        // A 64-bit mdat is skipped by count like any box.
        let file = [ftyp(), bx64(b"mdat", &[7; 10]), h264_aac()].concat();
        assert_eq!(verdict(&file, true), Ok(()));
        // An mdat that runs to the end of the file (size 0) leaves no room for moov.
        let mut to_end = ftyp();
        to_end.extend_from_slice(&[0, 0, 0, 0]);
        to_end.extend_from_slice(b"mdat");
        to_end.extend(h264_aac());
        assert!(verdict(&to_end, true)
            .unwrap_err()
            .contains("without a moov"));
    }

    #[test]
    fn a_file_without_moov_is_refused() {
        let refused = verdict(&[ftyp(), bx(b"free", &[0; 50])].concat(), true).unwrap_err();
        assert!(refused.contains("without a moov"), "{refused}");
        let refused = verdict(&[ftyp(), bx(b"mdat", &[1; 10])].concat(), false).unwrap_err();
        assert!(refused.contains("without a moov"), "{refused}");
        assert!(verdict(&[], true).unwrap_err().contains("without a moov"));
        // Cut inside a box header, inside a skipped box, inside moov.
        let file = [ftyp(), h264_aac()].concat();
        assert!(verdict(&file[..ftyp().len() + 3], true)
            .unwrap_err()
            .contains("without a moov"));
        assert!(verdict(&file[..20], true)
            .unwrap_err()
            .contains("without a moov"));
        assert!(verdict(&file[..file.len() - 10], true)
            .unwrap_err()
            .contains("inside its moov"));
        // A top-level box of size 0 runs to the end: no moov can follow.
        let mut to_end = ftyp();
        to_end.extend_from_slice(&[0, 0, 0, 0]);
        to_end.extend_from_slice(b"free");
        to_end.extend(h264_aac());
        assert!(verdict(&to_end, true)
            .unwrap_err()
            .contains("without a moov"));
    }

    #[test]
    fn a_file_has_one_moov() {
        // A second moov after mdat, with HEVC: it would have gone unread.
        let hevc = moov(&[track(b"vide", &[b"hvc1"])]);
        let mdat = bx(b"mdat", &[1; 10]);
        let after = [ftyp(), h264_aac(), mdat.clone(), hevc.clone()].concat();
        let before = [ftyp(), h264_aac(), hevc, mdat.clone()].concat();
        let same = [ftyp(), h264_aac(), mdat.clone(), h264_aac()].concat();
        // In an .m4a, the second one holding video.
        let audio = moov(&[track(b"soun", &[b"mp4a"])]);
        let m4a = [ftyp(), audio, mdat, h264_aac()].concat();
        for (file, codecs) in [(after, true), (before, true), (same, true), (m4a, false)] {
            let refused = verdict(&file, codecs).unwrap_err();
            assert!(refused.contains("a second moov box"), "{refused}");
        }
    }

    #[test]
    fn a_file_cut_short_is_refused() {
        // Every top-level box is walked to its end, also after moov.
        let file = [ftyp(), h264_aac(), bx(b"mdat", &[7; 100])].concat();
        assert_eq!(verdict(&file, true), Ok(()));
        for cut in [1, 50, 100] {
            let refused = verdict(&file[..file.len() - cut], true).unwrap_err();
            assert!(refused.contains("ends inside its mdat box"), "{refused}");
        }
        // Inside the header of a box that follows moov.
        let refused = verdict(&[&file[..], &[0, 0, 0]].concat(), true).unwrap_err();
        assert!(refused.contains("ends inside a box header"), "{refused}");
    }

    #[test]
    fn m4a_is_audio_alone() {
        let with = |tracks: &[Vec<u8>]| [ftyp(), moov(tracks), bx(b"mdat", &[1; 10])].concat();
        let audio = track(b"soun", &[b"mp4a"]);
        assert_eq!(verdict(&with(std::slice::from_ref(&audio)), false), Ok(()));
        // Other codecs: none is named for audio/mp4.
        assert_eq!(verdict(&with(&[track(b"soun", &[b"alac"])]), false), Ok(()));
        // Chapters or lyrics (a text track) beside the audio.
        assert_eq!(
            verdict(&with(&[audio.clone(), track(b"text", &[b"tx3g"])]), false),
            Ok(())
        );
        let refused =
            verdict(&with(&[track(b"vide", &[b"avc1"]), audio.clone()]), false).unwrap_err();
        assert!(refused.contains("a video track"), "{refused}");
        let refused = verdict(&with(&[track(b"text", &[b"tx3g"])]), false).unwrap_err();
        assert!(refused.contains("no audio track"), "{refused}");
    }

    #[test]
    fn sixty_four_bit_sizes() {
        let inner_moov = {
            let payload = [bx(b"mvhd", &[0; 100]), track(b"vide", &[b"avc3"])].concat();
            bx64(b"moov", &payload)
        };
        let file = [
            ftyp(),
            bx64(b"free", &[9; 300]),
            inner_moov,
            bx64(b"mdat", &[7; 1000]),
        ]
        .concat();
        assert_eq!(verdict(&file, true), Ok(()));
        // A huge 64-bit box is skipped by count, never held.
        let mut huge = ftyp();
        huge.extend_from_slice(&1u32.to_be_bytes());
        huge.extend_from_slice(b"skip");
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut walker = BoxWalker::new(true);
        walker.feed(&huge).unwrap();
        walker.feed(&vec![0; 1 << 20]).unwrap();
        assert_eq!(walker.state, Walk::Skip((1 << 40) - 16 - (1 << 20)));
        assert!(walker.finish().unwrap_err().contains("without a moov"));
    }

    #[test]
    fn video_must_be_h264_with_aac() {
        let with = |tracks: &[Vec<u8>]| [ftyp(), moov(tracks), bx(b"mdat", &[1; 10])].concat();
        let refused = verdict(&with(&[track(b"vide", &[b"mp4v"])]), true).unwrap_err();
        assert!(refused.contains("found video mp4v"), "{refused}");
        assert!(refused.contains("H.264"), "{refused}");
        let refused = verdict(
            &with(&[track(b"vide", &[b"avc1"]), track(b"soun", &[b"Opus"])]),
            true,
        )
        .unwrap_err();
        assert!(refused.contains("found audio Opus"), "{refused}");
        let refused = verdict(&with(&[track(b"soun", &[b"mp4a"])]), true).unwrap_err();
        assert!(refused.contains("no video track"), "{refused}");
        // Video alone, and tracks of other kinds, pass.
        assert_eq!(
            verdict(
                &with(&[track(b"vide", &[b"avc1"]), track(b"text", &[b"tx3g"])]),
                true
            ),
            Ok(())
        );
        // Without codec rules (m4a), only the layout counts.
        assert_eq!(verdict(&with(&[track(b"soun", &[b"alac"])]), false), Ok(()));
    }

    #[test]
    fn video_has_one_audio_track_at_most() {
        let with = |tracks: &[Vec<u8>]| [ftyp(), moov(tracks), bx(b"mdat", &[1; 10])].concat();
        let video = track(b"vide", &[b"avc1"]);
        let audio = track(b"soun", &[b"mp4a"]);
        assert_eq!(verdict(&with(std::slice::from_ref(&video)), true), Ok(()));
        assert_eq!(
            verdict(&with(&[video.clone(), audio.clone()]), true),
            Ok(())
        );
        let refused = verdict(&with(&[video, audio.clone(), audio]), true).unwrap_err();
        assert!(refused.contains("found 2 audio tracks"), "{refused}");
    }

    #[test]
    fn malformed_boxes_are_refused() {
        // A size smaller than its header.
        let mut file = ftyp();
        file.extend_from_slice(&4u32.to_be_bytes());
        file.extend_from_slice(b"free");
        assert!(verdict(&file, true).unwrap_err().contains("not a valid"));
        // A child bigger than its parent.
        let mut trak = bx(b"trak", &bx(b"tkhd", &[0; 16]));
        trak[8..12].copy_from_slice(&100u32.to_be_bytes());
        let file = [ftyp(), moov(&[trak]), bx(b"mdat", &[0; 200])].concat();
        assert!(verdict(&file, true).unwrap_err().contains("overruns"));
        // A sample description too large to keep.
        let mut stsd = vec![0, 0, 0, 0, 0, 0, 0, 1];
        stsd.extend(bx(b"avc1", &vec![0; MAX_KEPT_BOX]));
        let stbl = bx(b"stbl", &bx(b"stsd", &stsd));
        let mdia = bx(b"mdia", &bx(b"minf", &stbl));
        let file = [ftyp(), moov(&[bx(b"trak", &mdia)])].concat();
        assert!(verdict(&file, true).unwrap_err().contains("KiB"));
    }

    fn webp_animated(file: &[u8], chunk: usize) -> Result<Option<bool>, String> {
        let mut walker = WebpWalker::default();
        for piece in file.chunks(chunk) {
            walker.feed(piece)?;
        }
        walker.finish()?;
        Ok(walker.animated)
    }

    fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body = chunks.concat();
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend(body);
        out
    }

    fn chunk(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = kind.to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    #[test]
    fn webp_static_or_animated() {
        for (file, animated) in [
            (riff(&[chunk(b"VP8 ", &[1; 31])]), false),
            (riff(&[chunk(b"VP8L", &[1; 40])]), false),
            (
                riff(&[vp8x(0x12), chunk(b"ANIM", &[0; 6]), anmf(30), anmf(31)]),
                true,
            ),
            // An ICC profile before ANIM, metadata after the frames.
            (
                riff(&[
                    vp8x(0x22),
                    chunk(b"ICCP", &[5; 301]),
                    chunk(b"ANIM", &[0; 6]),
                    anmf(9),
                    chunk(b"EXIF", &[0; 12]),
                ]),
                true,
            ),
            (
                riff(&[vp8x(0x10), chunk(b"ALPH", &[1; 9]), chunk(b"VP8 ", &[1; 9])]),
                false,
            ),
            (riff(&[vp8x(0x00), chunk(b"VP8 ", &[1; 9])]), false),
        ] {
            for size in [1, 2, 5, 13, 1000] {
                assert_eq!(webp_animated(&file, size), Ok(Some(animated)), "{file:?}");
            }
        }
        assert!(webp_animated(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 1).is_err());
        assert!(webp_animated(b"RIFF", 1).is_err());
    }

    /// A `VP8X` chunk with `flags` and a 64x64 canvas.
    fn vp8x(flags: u8) -> Vec<u8> {
        chunk(b"VP8X", &[flags, 0, 0, 0, 63, 0, 0, 63, 0, 0])
    }

    /// An `ANMF` frame: its 16-byte header and a `VP8L` image.
    fn anmf(image: usize) -> Vec<u8> {
        let mut payload = vec![0; 16];
        payload.extend(chunk(b"VP8L", &vec![1; image]));
        chunk(b"ANMF", &payload)
    }

    #[test]
    fn webp_animation_is_judged_by_its_frames() {
        // The animation flag on a static image: its VP8L is outside any frame.
        let flagged = riff(&[vp8x(0x02), chunk(b"VP8L", &[1; 40])]);
        // The flag and ANIM, but no frame follows.
        let no_frames = riff(&[vp8x(0x02), chunk(b"ANIM", &[0; 6])]);
        // Frames without the flag, and frames without ANIM before them.
        let unflagged = riff(&[vp8x(0x00), chunk(b"ANIM", &[0; 6]), anmf(20)]);
        let no_anim = riff(&[vp8x(0x02), anmf(20)]);
        for (file, reason) in [
            (&flagged, "VP8L"),
            (&no_frames, "ANMF"),
            (&unflagged, "animation flag"),
            (&no_anim, "ANIM"),
        ] {
            for size in [1, 7, 4096] {
                let refused = webp_animated(file, size).unwrap_err();
                assert!(refused.contains("not a valid WebP file"), "{refused}");
                assert!(refused.contains(reason), "{reason}: {refused}");
            }
        }
        // The flag, ANIM and frames: animated.
        let moving = riff(&[vp8x(0x12), chunk(b"ANIM", &[0; 6]), anmf(20), anmf(21)]);
        for size in [1, 7, 4096] {
            assert_eq!(webp_animated(&moving, size), Ok(Some(true)));
        }
    }

    #[test]
    fn webp_chunk_sizes_are_checked() {
        let image = chunk(b"VP8L", &[1; 40]);
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        // Twelve bytes of header and a chunk type: nothing else.
        cases.push((b"RIFF\x08\0\0\0WEBPVP8X".to_vec(), "ends"));
        let mut huge = b"VP8X".to_vec();
        huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        huge.extend_from_slice(&[0; 10]);
        cases.push((riff(&[huge, image.clone()]), "past the end"));
        // A VP8X chunk of four bytes instead of ten.
        cases.push((riff(&[chunk(b"VP8X", &[0; 4]), image.clone()]), "VP8X"));
        // The RIFF size says more than the body has, or less.
        let good = riff(std::slice::from_ref(&image));
        let mut longer = good.clone();
        longer[4..8].copy_from_slice(&(good.len() as u32 + 92).to_le_bytes());
        cases.push((longer, "RIFF size"));
        let mut shorter = good.clone();
        shorter[4..8].copy_from_slice(&(good.len() as u32 - 8 - 20).to_le_bytes());
        cases.push((shorter, "past the end"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 30]);
        cases.push((trailing, "after"));
        // No image at all.
        cases.push((riff(&[vp8x(0x10), chunk(b"ALPH", &[1; 9])]), "no image"));
        for (file, reason) in &cases {
            for size in [1, 5, 4096] {
                let refused = webp_animated(file, size).unwrap_err();
                assert!(refused.contains("not a valid WebP file"), "{refused}");
                assert!(refused.contains(reason), "{reason}: {refused}");
            }
        }
        assert_eq!(webp_animated(&good, 3), Ok(Some(false)));
    }

    fn ogg(file: &[u8], chunk: usize) -> Result<(), String> {
        let mut walker = OggWalker::default();
        for piece in file.chunks(chunk) {
            walker.feed(piece)?;
        }
        walker.finish()
    }

    #[test]
    fn ogg_must_start_with_opus() {
        let opus = opus_stream(7);
        let vorbis = page(0x02, 7, 0, &[VORBIS_HEAD]);
        for size in [1, 2, 27, 28, 36, 4096] {
            assert_eq!(ogg(&opus, size), Ok(()));
            let refused = ogg(&vorbis, size).unwrap_err();
            assert!(refused.contains("Vorbis"), "{refused}");
            assert!(refused.contains("Opus"), "{refused}");
        }
        // An empty first packet, and one too short to hold the magic.
        for first in [&b""[..], b"Opus"] {
            let refused = ogg(&page(0x02, 7, 0, &[first]), 1).unwrap_err();
            assert!(refused.contains("not Opus"), "{refused}");
        }
        assert!(ogg(b"ID3\x04 not ogg at all, and long enough to tell", 3)
            .unwrap_err()
            .contains("not an Ogg file"));
        assert!(ogg(b"OggS", 1).is_err());
        assert!(ogg(&opus[..30], 1).is_err());
    }

    /// The Ogg checksum (RFC 3533: CRC-32, polynomial 0x04c11db7, no reflection, initial
    /// value and final XOR 0), bit by bit.
    fn ogg_checksum(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &byte in data {
            crc ^= u32::from(byte) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// Sets the checksum of the page that `page` begins with.
    fn seal(page: &mut [u8]) {
        page[22..26].fill(0);
        let segments = usize::from(page[26]);
        let body: usize = page[27..27 + segments]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        let crc = ogg_checksum(&page[..27 + segments + body]);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
    }

    /// A valid Ogg page: `flags` (0x02 first page of a stream, 0x04 last), the stream's
    /// serial number, the page's sequence number, whole packets, a correct checksum.
    fn page(flags: u8, serial: u32, sequence: u32, packets: &[&[u8]]) -> Vec<u8> {
        let mut lacing = Vec::new();
        for packet in packets {
            lacing.extend(std::iter::repeat_n(255u8, packet.len() / 255));
            lacing.push((packet.len() % 255) as u8);
        }
        raw_page(flags, serial, sequence, &lacing, &packets.concat())
    }

    /// A page of these lacing values and body bytes, with a correct checksum.
    fn raw_page(flags: u8, serial: u32, sequence: u32, lacing: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = b"OggS\0".to_vec();
        out.push(flags);
        out.extend_from_slice(&[0; 8]); // granule position
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(lacing.len() as u8);
        out.extend_from_slice(lacing);
        out.extend_from_slice(body);
        seal(&mut out);
        out
    }

    const OPUS_HEAD: &[u8] = b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0";
    const VORBIS_HEAD: &[u8] = b"\x01vorbis\0\0\0\0\x01\x44\xac\0\0\0\0\0\0\0\0\0\0\0\0\xb8\x01";

    /// A stream of Opus: its two header pages and two of audio, the last with EOS.
    fn opus_stream(serial: u32) -> Vec<u8> {
        [
            page(0x02, serial, 0, &[OPUS_HEAD]),
            page(0, serial, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
            page(0, serial, 2, &[&[0xfc; 40], &[0xfc; 300], &[0xfc; 510]]),
            page(0x04, serial, 3, &[&[0xfc; 60]]),
        ]
        .concat()
    }

    fn ogg_verdict(file: &[u8]) -> Result<(), String> {
        let whole = ogg(file, file.len().max(1));
        for size in [1, 2, 26, 27, 28, 35, 100, 4096] {
            assert_eq!(ogg(file, size), whole, "chunks of {size}");
        }
        whole
    }

    #[test]
    fn valid_ogg_opus_passes() {
        assert_eq!(ogg_verdict(&opus_stream(7)), Ok(()));
        // Chained: one stream after the other has ended.
        assert_eq!(
            ogg_verdict(&[opus_stream(7), opus_stream(8)].concat()),
            Ok(())
        );
        // A packet across pages (the second page continues it), a page of 255 segments.
        let long = vec![0xfc; 1000];
        let first = raw_page(0, 7, 2, &[255, 255, 255], &long[..765]);
        let rest = raw_page(0x05, 7, 3, &[235], &long[765..]);
        let full = page(0, 7, 2, &[&vec![0xfc; 255 * 254]]);
        assert_eq!(full[26], 255);
        for file in [
            [
                page(0x02, 7, 0, &[OPUS_HEAD]),
                page(0, 7, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
                first,
                rest,
            ]
            .concat(),
            [
                page(0x02, 7, 0, &[OPUS_HEAD]),
                page(0, 7, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
                full,
            ]
            .concat(),
        ] {
            assert_eq!(ogg_verdict(&file), Ok(()));
        }
    }

    #[test]
    fn malformed_ogg_is_refused() {
        let good = opus_stream(7);
        let second_page = page(0x02, 7, 0, &[OPUS_HEAD]).len();
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        // One byte of an audio packet changed: the page's checksum no longer matches.
        let mut corrupt = good.clone();
        let at = good.len() - 10;
        corrupt[at] ^= 0x40;
        cases.push((corrupt, "checksum"));
        // Version 1, with a checksum that matches it.
        let mut version = good.clone();
        version[4] = 1;
        seal(&mut version);
        cases.push((version, "version"));
        // The first page without BOS.
        let mut no_bos = good.clone();
        no_bos[5] = 0;
        seal(&mut no_bos);
        cases.push((no_bos, "BOS"));
        // A last page whose lacing claims 65 025 bytes; 19 of them follow.
        let mut truncated = good[..good.len() - page(0x04, 7, 3, &[&[0xfc; 60]]).len()].to_vec();
        let mut header = page(0x04, 7, 3, &[]);
        header.truncate(26);
        header.push(255);
        header.extend_from_slice(&[255; 255]);
        header.extend_from_slice(&[0xfc; 19]);
        truncated.extend(header);
        cases.push((truncated, "ends inside an Ogg page"));
        // A second logical stream multiplexed with the first: a Vorbis one.
        let multiplexed = [
            page(0x02, 7, 0, &[OPUS_HEAD]),
            page(0x02, 9, 0, &[VORBIS_HEAD]),
            good[second_page..].to_vec(),
        ]
        .concat();
        cases.push((multiplexed, "second logical stream"));
        // A page of another stream without a BOS page of its own.
        let stray = [good.clone(), page(0, 9, 0, &[&[1; 10]])].concat();
        cases.push((stray, "serial"));
        // A page missing (sequence 2 dropped).
        let gap = [
            page(0x02, 7, 0, &[OPUS_HEAD]),
            page(0, 7, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]),
            page(0x04, 7, 3, &[&[0xfc; 60]]),
        ]
        .concat();
        cases.push((gap, "sequence"));
        // Bytes after the last page that are not a page.
        cases.push(([good.clone(), vec![0; 40]].concat(), "not an Ogg page"));
        // A page of the stream after its EOS page.
        let after_eos = [good.clone(), page(0, 7, 4, &[&[1; 10]])].concat();
        cases.push((after_eos, "EOS"));
        // Chained, the second stream Vorbis.
        let chained = [good.clone(), page(0x02, 8, 0, &[VORBIS_HEAD])].concat();
        cases.push((chained, "Vorbis"));
        for (file, reason) in &cases {
            let refused = ogg_verdict(file).unwrap_err();
            assert!(refused.contains(reason), "{reason}: {refused}");
        }
    }

    #[test]
    fn the_whatsapp_rule_table() {
        let whatsapp = Profile::Whatsapp;
        for (extension, class) in [
            ("jpeg", Class::Image),
            ("jpg", Class::Image),
            ("png", Class::Image),
            ("aac", Class::Audio),
            ("amr", Class::Audio),
            ("mp3", Class::Audio),
            ("m4a", Class::Audio),
            ("ogg", Class::Audio),
            ("mp4", Class::Video),
            ("3gp", Class::Video),
            ("webp", Class::Sticker),
            ("pdf", Class::Document),
            ("gif", Class::Document),
            ("opus", Class::Document),
        ] {
            assert_eq!(whatsapp.class(extension), class, "{extension}");
            assert_eq!(Profile::None.class(extension), Class::Document);
        }
        let rule = |ext: &str| whatsapp.rule(ext).unwrap();
        assert_eq!(rule("png").max_bytes(None), 5_000_000);
        assert_eq!(rule("ogg").max_bytes(None), 16_000_000);
        assert_eq!(rule("3gp").max_bytes(None), 16_000_000);
        assert_eq!(rule("webp").max_bytes(Some(false)), 100_000);
        assert_eq!(rule("webp").max_bytes(Some(true)), 500_000);
        assert_eq!(rule("webp").max_bytes(None), 500_000);
        assert_eq!(rule("ogg").content, Content::OggOpus);
        assert_eq!(rule("mp4").content, Content::IsoMedia { video: true });
        assert_eq!(rule("m4a").content, Content::IsoMedia { video: false });
        assert_eq!(
            rule("png").size_details(None),
            "whatsapp profile: images (jpeg, png) are at most 5 MB"
        );

        let ext = |e: &str| FileExtension::parse(e).unwrap();
        assert!(whatsapp
            .check_declared(&ext("png"), Some(5_000_000))
            .is_ok());
        assert!(whatsapp.check_declared(&ext("png"), None).is_ok());
        let err = whatsapp
            .check_declared(&ext("JPG"), Some(5_000_001))
            .unwrap_err();
        assert!(matches!(&err, ApiError::OverProfileLimit(d) if d.contains("5 MB")));
        // A sticker's kind is not known from its headers: the larger limit up front.
        assert!(whatsapp.check_declared(&ext("webp"), Some(300_000)).is_ok());
        assert!(whatsapp
            .check_declared(&ext("webp"), Some(500_001))
            .is_err());
        // Documents, and everything with the profile off, only have the global limit.
        assert!(whatsapp.check_declared(&ext("pdf"), Some(u64::MAX)).is_ok());
        assert!(Profile::None
            .check_declared(&ext("png"), Some(u64::MAX))
            .is_ok());
    }

    #[test]
    fn profile_names() {
        assert_eq!(
            Profile::try_from("whatsapp".to_owned()),
            Ok(Profile::Whatsapp)
        );
        assert_eq!(
            Profile::try_from("WhatsApp".to_owned()),
            Ok(Profile::Whatsapp)
        );
        assert_eq!(Profile::try_from("none".to_owned()), Ok(Profile::None));
        let err = Profile::try_from("telegram".to_owned()).unwrap_err();
        assert!(err.contains("media.profile"), "{err}");
    }

    /// The body through the wrapper in chunks of `chunk` bytes: the items it yields.
    async fn through(
        body: &[u8],
        extension: &str,
        declared: Option<u64>,
        chunk: usize,
    ) -> Result<usize, ApiError> {
        let chunks: Vec<Result<Bytes, ApiError>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut profiled = Profiled::new(
            futures_util::stream::iter(chunks),
            Profile::Whatsapp,
            &FileExtension::parse(extension).unwrap(),
            declared,
        );
        let mut passed = 0;
        while let Some(item) = profiled.next().await {
            passed += item?.len();
        }
        Ok(passed)
    }

    #[tokio::test]
    async fn the_wrapper_counts_and_checks() {
        // Sizes: at the rule passes, one byte more is a 413 while streaming.
        assert_eq!(
            through(&vec![0; 5_000_000], "png", None, 65536)
                .await
                .unwrap(),
            5_000_000
        );
        let err = through(&vec![0; 5_000_001], "png", None, 65536)
            .await
            .unwrap_err();
        assert!(matches!(&err, ApiError::OverProfileLimit(d) if d.contains("5 MB")));
        // A static sticker is held to 100 KB, an animated one to 500 KB.
        let still = riff(&[chunk(b"VP8L", &vec![1; 99_982])]);
        assert_eq!(still.len(), 100_002);
        let err = through(&still, "webp", None, 1000).await.unwrap_err();
        assert!(matches!(&err, ApiError::OverProfileLimit(d) if d.contains("static")));
        // Declared over the static limit: refused as soon as the head shows it is static.
        let err = through(&still[..50], "webp", Some(200_000), 10)
            .await
            .unwrap_err();
        assert!(matches!(&err, ApiError::OverProfileLimit(_)));
        let moving = |frame: usize| riff(&[vp8x(0x12), chunk(b"ANIM", &[0; 6]), anmf(frame)]);
        let file = moving(400_000);
        assert!(through(&file, "webp", None, 4096).await.is_ok());
        let file = moving(500_000);
        let err = through(&file, "webp", None, 4096).await.unwrap_err();
        assert!(matches!(&err, ApiError::OverProfileLimit(d) if d.contains("animated")));
        // Content: a type rule is a 400 naming it, also when decided at the end.
        let vorbis = page(0x02, 7, 0, &[VORBIS_HEAD]);
        let err = through(&vorbis, "ogg", None, 5).await.unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidParameter(d) if d.starts_with("whatsapp profile: .ogg")),
            "{err:?}"
        );
        let err = through(&ftyp(), "mp4", None, 5).await.unwrap_err();
        assert!(matches!(&err, ApiError::InvalidParameter(d) if d.contains("moov")));
        let file = [ftyp(), h264_aac(), bx(b"mdat", &[0; 10])].concat();
        assert_eq!(through(&file, "mp4", None, 1).await.unwrap(), file.len());
        // An empty body is not judged here: the upload answers it (code 1008).
        assert_eq!(through(&[], "mp4", None, 1).await.unwrap(), 0);
        // Documents pass untouched.
        assert!(through(&vec![0; 6_000_000], "pdf", None, 65536)
            .await
            .is_ok());
    }
}
