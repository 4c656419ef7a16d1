//! The profile's rules and walkers, on files built box by box and page by page.

use super::mp4::Walk;
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
    let refused = verdict(&with(&[track(b"vide", &[b"avc1"]), audio.clone()]), false).unwrap_err();
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
