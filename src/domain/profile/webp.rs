//! The WebP container walker of the profile's `.webp` (sticker) rule.

use super::format::fourcc;

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
pub(super) struct WebpWalker {
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
    pub(super) animated: Option<bool>,
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
    pub(super) fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
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

    pub(super) fn finish(&mut self) -> Result<(), String> {
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
