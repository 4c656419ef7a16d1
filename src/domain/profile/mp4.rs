//! The ISO base media file walker of the profile's `.mp4`, `.3gp` and `.m4a` rules
//! (ISO 14496-12).

use super::format::fourcc;

/// The biggest `hdlr` or `stsd` box that is kept to be read; a bigger one is refused.
pub const MAX_KEPT_BOX: usize = 64 * 1024;
/// Tracks of one file whose handler and sample descriptions are remembered.
const MAX_TRACKS: usize = 64;

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
    pub(super) state: Walk,
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
pub(super) enum Walk {
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
