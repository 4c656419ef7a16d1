//! The Ogg Opus walker of the profile's `.ogg` rule (RFC 3533, RFC 7845).

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
pub(super) struct OggWalker {
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
    pub(super) fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
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

    pub(super) fn finish(&mut self) -> Result<(), String> {
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
