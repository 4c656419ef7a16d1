//! The content checked against the declared extension, while it streams: the first
//! `HEAD_BYTES` of the body go to a detector of file signatures (the `infer` crate), and a
//! detection counts only when it is a positive identification. An upload is refused (400,
//! code 1009) before it commits, the details naming both types, only when its bytes are
//! positively a binary type that its extension cannot be (a PNG declared as `.mp4`), so the
//! failure shows at upload time instead of as a failed send later. A file that is what its
//! extension says is never refused:
//! - a generic type (`application/octet-stream`: `.bin`, `.dat`, every unknown extension)
//!   accepts any content;
//! - content that is text (valid UTF-8 without binary control bytes, or UTF-16 with its byte
//!   order mark) is never refused: text cannot be positively a binary type, however it
//!   begins (`BMW is a car brand` in a `.txt`, `%PDF` in prose, an HTML page as `.txt`);
//! - a signature of two or three bytes (`BM`, `MZ`, `ID3`, an MPEG or ADTS frame sync, …)
//!   counts only when the structure behind it checks out (a BMP's header sizes, a PE's
//!   header at its offset, consecutive audio frames), see [`identify`];
//! - bytes the detector does not recognise pass.
//!
//! Related formats count as one (jpg/jpeg; the zip-based docx, xlsx, pptx, apk with zip;
//! mp4, m4a, m4v, 3gp, mov; ogg, opus, oga). Policy `media.verify_content`: `reject`
//! (default), `record` (store what was detected, refuse nothing), `off`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use crate::domain::ApiError;
use crate::domain::FileExtension;

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

/// Whether `head` (the first bytes of a body; `whole` when it is all of the body) is text:
/// UTF-8 (a character cut by the end of the head is fine) without the control bytes that
/// only binary files carry, or UTF-16 that opens with its byte order mark.
pub fn is_text(head: &[u8], whole: bool) -> bool {
    if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
        return head.len() % 2 == 0 || !whole;
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => head,
        Err(cut) if cut.error_len().is_none() && !whole => &head[..cut.valid_up_to()],
        Err(_) => return false,
    };
    // Tab, line feed, vertical tab, form feed, carriage return, bell, backspace, escape
    // (terminal colours) and SUB (an old end-of-text mark) occur in text; the rest of the
    // C0 controls and DEL do not.
    !text
        .iter()
        .any(|&b| matches!(b, 0x00..=0x06 | 0x0E..=0x19 | 0x1C..=0x1F | 0x7F))
}

/// What `head` positively is, if anything: the detector's answer, kept only when the
/// structure behind a short signature checks out. `whole` says the head is the whole body.
pub fn identify(head: &[u8], whole: bool) -> Option<infer::Type> {
    let kind = infer::get(head)?;
    structure_checks_out(kind.extension(), head, whole).then_some(kind)
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The checks behind the signatures of the detector that are too short, or too common in
/// ordinary bytes, to identify a file on their own. Longer signatures pass as they are.
fn structure_checks_out(extension: &str, b: &[u8], whole: bool) -> bool {
    match extension {
        "bmp" => bmp(b),
        "exe" | "dll" => pe(b),
        "mp3" => mp3(b, whole),
        "aac" => adts(b, whole),
        "gif" => b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a"),
        "jpg" => jpeg(b),
        // "BZh", the block size '1'-'9', then a block or the end-of-stream magic.
        "bz2" => {
            b.get(3).is_some_and(|l| (b'1'..=b'9').contains(l))
                && b.get(4..10).is_some_and(|m| {
                    m == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
                        || m == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90]
                })
        }
        // 1F 8B, deflate, and flags without the reserved bits.
        // 1F 8B, deflate, flags without the reserved bits, the extra flags deflate sets
        // and a known operating system.
        "gz" => {
            b.get(3).is_some_and(|f| f & 0xE0 == 0)
                && matches!(b.get(8), Some(0 | 2 | 4))
                && b.get(9).is_some_and(|os| *os <= 13 || *os == 255)
        }
        // compress(1) has three bytes of header and nothing behind them to check.
        "Z" => false,
        // "CWS": a version, then the zlib stream of the compressed movie. The header of an
        // uncompressed "FWS" movie has nothing behind its three bytes to check.
        "swf" => {
            b.starts_with(b"CWS")
                && b.get(3).is_some_and(|v| (1..=60).contains(v))
                && u16_be(b, 8).is_some_and(|z| {
                    // Deflate with a window of at most 32 KiB, no preset dictionary.
                    z % 31 == 0 && z >> 8 & 0x0F == 8 && z >> 12 <= 7 && z & 0x20 == 0
                })
        }
        "ps" => b.starts_with(b"%!PS"),
        "bc" => b.starts_with(&[b'B', b'C', 0xC0, 0xDE]),
        // A DER certificate: a SEQUENCE (30 82 + length) that opens with a SEQUENCE.
        "der" => {
            b.get(4..6) == Some(&[0x30, 0x82])
                && matches!((u16_be(b, 2), u16_be(b, 6)), (Some(outer), Some(inner)) if inner + 4 <= outer)
        }
        "obj" => coff(b),
        "cpio" if !b.starts_with(b"0707") => cpio(b),
        // JPEG XR: "II", BC 01, then the offset of the first directory past the header.
        "jxr" => b.get(3) == Some(&0x01) && u32_le(b, 4).is_some_and(|o| (8..1 << 20).contains(&o)),
        // The bare JPEG XL codestream's signature is two bytes with nothing to check behind
        // them; only the ISO BMFF form (a 12-byte signature box) identifies it.
        "jxl" => !b.starts_with(&[0xFF, 0x0A]),
        "ico" => ico(b),
        "ttf" => u16_be(b, 4).is_some_and(|n| (1..=100).contains(&n)),
        "webp" => b.starts_with(b"RIFF"),
        "pdf" => b.starts_with(b"%PDF-") && b.get(5).is_some_and(u8::is_ascii_digit),
        "midi" => b.get(4..8) == Some(&[0, 0, 0, 6]),
        // "fLaC", then the STREAMINFO block of 34 bytes.
        "flac" => b.get(4).is_some_and(|t| t & 0x7F == 0) && b.get(5..8) == Some(&[0, 0, 34]),
        "ape" => u16_le(b, 4).is_some_and(|v| (3800..=4100).contains(&v)),
        "dsf" => b.get(4..12) == Some(&[28, 0, 0, 0, 0, 0, 0, 0]),
        "sqlite" => b.starts_with(b"SQLite format 3\0"),
        "crx" => matches!(u32_le(b, 4), Some(2 | 3)),
        "psd" => matches!(u16_be(b, 4), Some(1 | 2)),
        "lz" => matches!(b.get(4), Some(0 | 1)),
        "cab" if b.starts_with(b"MSCF") => u32_le(b, 4) == Some(0),
        _ => true,
    }
}

/// A JPEG: after FF D8, a first marker segment that checks out: an APPn segment that names
/// what it holds (JFIF, Exif, XMP, ICC, Adobe, …), or another segment whose length leads
/// to the next marker.
fn jpeg(b: &[u8]) -> bool {
    let (Some(&marker), Some(len)) = (b.get(3), u16_be(b, 4)) else {
        return false;
    };
    if !(0xC0..=0xFE).contains(&marker) || len < 2 {
        return false;
    }
    const APP_IDS: &[&[u8]] = &[
        b"JFIF\0",
        b"JFXX\0",
        b"Exif\0",
        b"http://ns.adobe.com/",
        b"ICC_PROFILE\0",
        b"MPF\0",
        b"Photoshop 3.0\0",
        b"Adobe",
        b"Ducky",
        b"AVI1",
    ];
    let payload = b.get(6..).unwrap_or_default();
    if (0xE0..=0xEF).contains(&marker) && APP_IDS.iter().any(|id| payload.starts_with(id)) {
        return true;
    }
    b.get(4 + usize::from(len)) == Some(&0xFF)
}

/// The binary (old) cpio header: a regular file, directory or other known type, a file
/// name of printable characters, NUL-terminated where its length says.
fn cpio(b: &[u8]) -> bool {
    let Some(mode) = u16_le(b, 6) else {
        return false;
    };
    let Some(name_len) = u16_le(b, 20)
        .map(usize::from)
        .filter(|n| (2..=4096).contains(n))
    else {
        return false;
    };
    matches!(
        mode & 0xF000,
        0x1000 | 0x2000 | 0x4000 | 0x6000 | 0x8000 | 0xA000 | 0xC000
    ) && b.get(26 + name_len - 1) == Some(&0)
        && b[26..26 + name_len - 1]
            .iter()
            .all(|c| (0x20..=0x7E).contains(c))
}

/// A BMP: the file header (14 bytes) and a DIB header of one of the sizes that exist, the
/// pixels after both.
fn bmp(b: &[u8]) -> bool {
    let (Some(size), Some(offset), Some(dib)) = (u32_le(b, 2), u32_le(b, 10), u32_le(b, 14)) else {
        return false;
    };
    matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
        && offset >= 14 + dib
        && offset < 1 << 24
        && (size == 0 || size >= offset)
}

/// A PE executable or library: "MZ" and, at the offset its DOS header names, "PE\0\0".
fn pe(b: &[u8]) -> bool {
    u32_le(b, 0x3C)
        .and_then(|at| usize::try_from(at).ok())
        .filter(|&at| at >= 0x40)
        .and_then(|at| b.get(at..at + 4))
        == Some(b"PE\0\0")
}

/// A COFF object file: a plausible number of sections and an optional header of a size
/// that exists.
fn coff(b: &[u8]) -> bool {
    u16_le(b, 2).is_some_and(|n| (1..=96).contains(&n))
        && matches!(u16_le(b, 16), Some(0 | 0xE0 | 0xF0))
}

/// An icon: 1-256 images, each entry's reserved byte zero, the first image after the
/// directory.
fn ico(b: &[u8]) -> bool {
    let Some(count) = u16_le(b, 4).filter(|n| (1..=256).contains(n)) else {
        return false;
    };
    b.get(9) == Some(&0) && u32_le(b, 18) >= Some(6 + 16 * u32::from(count))
}

/// Audio made of frames that each start with a sync word and say their own length:
/// identified when the frames follow one another, at least three of them within the head,
/// or all of them up to the end of a short whole body.
fn frames(b: &[u8], whole: bool, frame_len: impl Fn(&[u8]) -> Option<usize>) -> bool {
    let (mut at, mut seen) = (0, 0);
    while seen < 3 {
        if at >= b.len() {
            // The end of a short body: its frames end exactly there, or at least two of
            // them came before a last one cut short.
            return whole && ((at == b.len() && seen > 0) || seen >= 2);
        }
        let Some(len) = frame_len(&b[at..]) else {
            return false;
        };
        seen += 1;
        at += len;
    }
    true
}

/// The length of the MPEG-1 Layer III frame (FF FB, no CRC) that `b` starts with.
fn mpeg_frame(b: &[u8]) -> Option<usize> {
    let h = b.get(..4)?;
    if h[0] != 0xFF || h[1] & 0xFE != 0xFA {
        return None;
    }
    const KBPS: [u32; 16] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0,
    ];
    const HZ: [u32; 4] = [44_100, 48_000, 32_000, 0];
    let kbps = KBPS[usize::from(h[2] >> 4)];
    let hz = HZ[usize::from((h[2] >> 2) & 3)];
    if kbps == 0 || hz == 0 {
        return None;
    }
    usize::try_from(144_000 * kbps / hz + u32::from((h[2] >> 1) & 1)).ok()
}

/// An MP3: an ID3v2 tag whose header is well formed, or MPEG audio frames in sequence.
fn mp3(b: &[u8], whole: bool) -> bool {
    if b.starts_with(b"ID3") {
        return b.len() >= 10
            && (2..=4).contains(&b[3])
            && b[4] != 0xFF
            && b[5] & 0x0F == 0
            && b[6..10].iter().all(|s| s & 0x80 == 0);
    }
    frames(b, whole, mpeg_frame)
}

/// The length of the ADTS frame (AAC) that `b` starts with.
fn adts_frame(b: &[u8]) -> Option<usize> {
    let h = b.get(..7)?;
    let sync = h[0] == 0xFF && h[1] & 0xF6 == 0xF0;
    let rate_index = (h[2] >> 2) & 0x0F;
    let len = (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
    (sync && rate_index < 13 && len >= 7).then_some(len)
}

fn adts(b: &[u8], whole: bool) -> bool {
    frames(b, whole, adts_frame)
}

/// Whether `extension` names a generic type, which any content may be.
fn generic(extension: &FileExtension) -> bool {
    extension.content_type() == "application/octet-stream"
}

/// The check of a body seen in pieces (a resumable upload, whose first bytes may come in
/// several requests): `head` is its first `HEAD_BYTES`, or all of it when `whole`. The
/// detected type, or the refusal `Checked` would give.
pub fn check_head(
    head: &[u8],
    whole: bool,
    extension: &FileExtension,
    policy: VerifyContent,
) -> Result<Option<&'static str>, ApiError> {
    if policy == VerifyContent::Off {
        return Ok(None);
    }
    let detected = Detected::default();
    decide(head, whole, extension, policy, &detected)?;
    Ok(detected.mime_type())
}

/// Detects the type of `head` (`whole`: all of the body) and decides whether `extension`
/// may carry it.
fn decide(
    head: &[u8],
    whole: bool,
    extension: &FileExtension,
    policy: VerifyContent,
    detected: &Detected,
) -> Result<(), ApiError> {
    let declared = extension.as_str();
    let text = is_text(head, whole);
    // Text is only what a text format or the declared extension says it is: prose that
    // begins "%PDF" is no PDF.
    let kind = identify(head, whole).filter(|kind| {
        !text
            || kind.matcher_type() == infer::MatcherType::Text
            || compatible(declared, kind.extension())
    });
    let _ = detected.0.set(kind.map(|k| k.mime_type()));
    match kind {
        Some(kind)
            if policy == VerifyContent::Reject
                && !generic(extension)
                && kind.matcher_type() != infer::MatcherType::Text
                && !compatible(declared, kind.extension()) =>
        {
            Err(ApiError::InvalidParameter(format!(
                "the content is {} ({}), which a .{} file ({}) cannot be",
                kind.mime_type(),
                kind.extension(),
                declared,
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
                    let verdict = decide(
                        this.head,
                        false,
                        this.extension,
                        *this.policy,
                        this.detected,
                    );
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
                match decide(this.head, true, this.extension, *this.policy, this.detected) {
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

    /// The verdict on a head, as `Checked` reaches it.
    fn refused(head: &[u8], whole: bool, extension: &str) -> bool {
        let extension = FileExtension::parse(extension).unwrap();
        decide(
            head,
            whole,
            &extension,
            VerifyContent::Reject,
            &Detected::default(),
        )
        .is_err()
    }

    /// A small deterministic generator (xorshift64*): the same bodies on every run.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
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
        assert!(!check(&long, "txt", VerifyContent::Reject).await.0);
        // A generic type is anything, a PNG too.
        assert_eq!(
            check(&long, "bin", VerifyContent::Reject).await,
            (true, Some("image/png"))
        );
    }

    /// Every signature of the detector that can begin a line of text, each as text.
    const TEXT_OPENINGS: &[&str] = &[
        "BMW is a car brand",
        "BMI,age,height",
        "BM",
        "MZ Motors annual report",
        "ID3 tags explained",
        "GIF87a",
        "GIF89a is the animated variant",
        "%PDF-1.7 starts every PDF, as this note explains",
        "%!PS-Adobe-3.0 is the PostScript header",
        "BC",
        "BZh91AY&SY",
        "FWS and CWS",
        "CWS",
        "#!/bin/sh",
        "MThd",
        "fLaC",
        "MAC address,vendor",
        "DSD ",
        "SQLite format 3",
        "SQLi",
        "Cr24",
        "8BPS",
        "MSCF",
        "ISc(",
        "OTTO",
        "LZIP",
        "{\\rtf1 plain",
        "!<arch>\n",
        "070707",
        "<?xml version=\"1.0\"?>",
        "<html><body>saved page</body></html>",
        "<!DOCTYPE html>",
        "-----BEGIN CERTIFICATE-----",
        "RIFF1234WAVEfmt ",
        "RIFF1234AVI LIST",
        "RIFF1234WEBPVP8 ",
        "FORM1234AIFFCOMM",
        "#!AMR\n",
        "AT&TFORM1234DJVU",
        "NES\u{1a}",
        "wOF2",
        "    ftypisom",
        "    ftypmp42",
        "    ftypM4A ",
        "    ftypqt  ",
        "    ftyp3gp4",
        "    ftypheic",
        "    ftypavif",
        "    moov",
        "PAR2",
        "dex\n035",
        "BOOKMOBI",
        "OggS is how an Ogg page begins",
        "Rar!",
        "Öffnungszeiten: 9–17 Uhr, café ünd ß",
        "\u{feff}BOM then text",
    ];

    #[test]
    fn text_that_begins_like_a_binary_format_is_never_refused() {
        let prose = "\tsaid the file, and went on for a while.\r\nSecond line; 3,4\n";
        for opening in TEXT_OPENINGS {
            for body in [
                format!("{opening}{prose}"),
                format!("{opening}{}", prose.repeat(400)),
                // The head's end cuts a character in two.
                format!("{opening}{}", "é".repeat(HEAD_BYTES)),
                // Something is detected at an offset: tar, DICOM, Mobipocket.
                format!("{opening}{}ustar{}", " ".repeat(252), "DICM".repeat(40)),
            ] {
                let whole = body.len() <= HEAD_BYTES;
                let head = &body.as_bytes()[..body.len().min(HEAD_BYTES)];
                assert!(is_text(head, whole), "{opening:?} is text");
                for extension in [
                    "txt", "csv", "json", "vcf", "bin", "dat", "enc", "md", "log", "jpg", "png",
                    "mp4", "pdf", "docx", "exe", "ogg",
                ] {
                    assert!(
                        !refused(head, whole, extension),
                        "{opening:?} refused as .{extension}"
                    );
                }
            }
        }
        // Binary is not text, even when it is mostly letters.
        assert!(!is_text(b"abc\0def", true));
        assert!(!is_text(PNG, true));
        assert!(!is_text(b"caf\xe9", true));
        assert!(
            is_text(b"caf\xc3", false),
            "a character cut by the head's end"
        );
        assert!(
            !is_text(b"caf\xc3", true),
            "a character cut by the body's end"
        );
        assert!(is_text(b"\xff\xfeh\0i\0", true), "UTF-16 with its mark");
    }

    #[test]
    fn short_signatures_count_only_with_their_structure() {
        // Text in a legacy encoding (not UTF-8) that begins like a format.
        for opening in [
            &b"BMI,gr\xf6\xdfe\n"[..],
            b"MZ-Kennzeichen\xe4\n",
            b"ID3 Tags \xfcber\n",
        ] {
            let mut body = opening.to_vec();
            body.extend(b"more text, then\xe9 some more\n".repeat(30));
            assert!(!is_text(&body, true));
            for extension in ["txt", "csv", "pdf", "jpg"] {
                assert!(!refused(&body, true, extension), "{opening:?} .{extension}");
            }
        }
        // A short signature followed by noise is not identified, save for a rare accident.
        let mut noise = Noise(0x5eed);
        let openings: &[&[u8]] = &[
            b"BM",
            b"MZ",
            b"ID3",
            &[0xFF, 0xFB],
            &[0xFF, 0xF1],
            &[0xFF, 0xF9],
            &[0xFF, 0xD8, 0xFF],
            b"GIF",
            b"BZh",
            &[0x1F, 0x8B, 0x08],
            &[0x1F, 0x9D],
            b"FWS",
            b"CWS",
            b"BC",
            &[0x30, 0x82],
            &[0x4C, 0x01],
            &[0x64, 0x86],
            &[0x00, 0x02],
            &[0xC7, 0x71],
            &[0x71, 0xC7],
            &[0x49, 0x49, 0xBC],
            &[0xFF, 0x0A],
            b"%!",
        ];
        const TRIES: usize = 4000;
        for opening in openings {
            let mut identified = 0;
            for i in 0..TRIES {
                let mut head = opening.to_vec();
                let len = if i % 2 == 0 { HEAD_BYTES } else { 16 + i % 600 };
                head.extend(noise.bytes(len - opening.len().min(len)));
                head.truncate(len.max(opening.len()));
                let whole = i % 2 == 1;
                if identify(&head, whole).is_some() {
                    identified += 1;
                }
                for extension in ["bin", "dat", "enc", "zzz"] {
                    assert!(!refused(&head, whole, extension));
                }
            }
            assert!(
                identified <= TRIES / 1000,
                "{opening:02x?} + noise identified {identified} times in {TRIES}"
            );
        }
    }

    #[test]
    fn generic_types_take_any_bytes() {
        let mut noise = Noise(42);
        for i in 0..20_000 {
            let len = if i % 4 == 0 { HEAD_BYTES } else { 1 + i % 2000 };
            let head = noise.bytes(len);
            for extension in ["bin", "dat", "enc", "zzz", "iso", "raw"] {
                assert!(!refused(&head, len < HEAD_BYTES, extension), "body {i}");
            }
        }
    }

    #[test]
    fn structures_that_check_out_are_identified() {
        // A BMP's headers: file size, pixel offset 54, a 40-byte DIB header.
        let mut bmp = b"BM".to_vec();
        bmp.extend(70u32.to_le_bytes());
        bmp.extend([0; 4]);
        bmp.extend(54u32.to_le_bytes());
        bmp.extend(40u32.to_le_bytes());
        bmp.resize(70, 0);
        assert_eq!(identify(&bmp, true).unwrap().extension(), "bmp");
        assert!(refused(&bmp, true, "png"));
        // A PE: "MZ", e_lfanew at 0x3C, "PE\0\0" there.
        let mut pe = b"MZ".to_vec();
        pe.resize(0x3C, 0x90);
        pe.extend(0x80u32.to_le_bytes());
        pe.resize(0x80, 0);
        pe.extend(b"PE\0\0");
        pe.resize(512, 0);
        assert_eq!(identify(&pe, true).unwrap().extension(), "exe");
        assert!(refused(&pe, true, "pdf"));
        // MPEG audio: 128 kbit/s, 44.1 kHz frames one after another (417 bytes each).
        let mut mp3 = Vec::new();
        for _ in 0..5 {
            let mut frame = vec![0xFF, 0xFB, 0x90, 0x64];
            frame.resize(417, 0x55);
            mp3.extend(frame);
        }
        assert_eq!(identify(&mp3, true).unwrap().extension(), "mp3");
        assert!(refused(&mp3, true, "jpg"));
        assert!(
            identify(&mp3[..500], false).is_none(),
            "one frame is not enough"
        );
        // ID3v2.4 tag header.
        let id3 = b"ID3\x04\x00\x00\x00\x00\x02\x01rest of the tag".to_vec();
        assert_eq!(identify(&id3, true).unwrap().extension(), "mp3");
        // JPEG with a JFIF APP0.
        let jpeg = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xFF\xDB";
        assert_eq!(identify(jpeg, true).unwrap().extension(), "jpg");
        assert!(refused(jpeg, true, "png"));
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
