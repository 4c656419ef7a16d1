//! `media.profile = whatsapp`: the WhatsApp Business Platform's per-type rules, with real
//! media files made here by ffmpeg (Debian's package; never downloaded): what follows the
//! rules is stored, what breaks a size rule is 413, a content rule 400, each naming the
//! rule and leaving nothing behind; with the profile off the same files are stored.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use media_node::domain::profile::Profile;
use test_support::on_both_backends;
use test_support::{assert_error, content, sha256_hex, Backend, TempDir, TestApp};

on_both_backends!(
    media_that_follows_the_rules_is_stored,
    content_against_a_rule_is_refused,
    sizes_over_a_rule_are_refused,
    malformed_webp_is_refused,
    malformed_ogg_is_refused,
    malformed_iso_media_is_refused,
    with_the_profile_off_nothing_changes,
);

/// Runs ffmpeg with `args` and returns the file it wrote to `dir/name`.
fn ffmpeg(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let run = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y"])
        .args(args)
        .arg(&out)
        .output()
        .expect("ffmpeg runs (scripts/test installs Debian's ffmpeg)");
    assert!(
        run.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(out).unwrap()
}

/// A second of test pattern with a tone: H.264 and AAC unless `video` says otherwise.
fn movie(dir: &Path, name: &str, video: &str, faststart: bool) -> Vec<u8> {
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x64:rate=10",
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-t",
        "1",
        "-c:v",
        video,
        "-c:a",
        "aac",
    ];
    if faststart {
        args.extend(["-movflags", "+faststart"]);
    }
    ffmpeg(dir, name, &args)
}

/// A second of tone in `codec`.
fn sound(dir: &Path, name: &str, codec: &str, faststart: bool) -> Vec<u8> {
    let mut args = vec!["-f", "lavfi", "-i", "sine", "-t", "1", "-c:a", codec];
    if faststart {
        args.extend(["-movflags", "+faststart"]);
    }
    ffmpeg(dir, name, &args)
}

/// Raw RGB noise of `frames` frames of `width`×`height`, as a file ffmpeg reads: noise
/// does not compress, so the encoded size follows the pixel count.
fn noise(dir: &Path, width: usize, height: usize, frames: usize, seed: u8) -> String {
    let path = dir.join(format!("noise-{seed}.rgb"));
    std::fs::write(&path, content(width * height * 3 * frames, seed)).unwrap();
    path.display().to_string()
}

/// A still image of noise, `width`×`height`, encoded by the `extra` arguments.
fn noise_image(dir: &Path, name: &str, size: (usize, usize), seed: u8, extra: &[&str]) -> Vec<u8> {
    let input = noise(dir, size.0, size.1, 1, seed);
    let dimensions = format!("{}x{}", size.0, size.1);
    let mut args = vec![
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &dimensions,
        "-i",
        &input,
        "-frames:v",
        "1",
    ];
    args.extend(extra);
    ffmpeg(dir, name, &args)
}

/// An animated WebP of `frames` frames of noise, `side`×`side`, lossless (libwebp).
fn animated_webp(dir: &Path, name: &str, side: usize, frames: usize, seed: u8) -> Vec<u8> {
    let input = noise(dir, side, side, frames, seed);
    let dimensions = format!("{side}x{side}");
    ffmpeg(
        dir,
        name,
        &[
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            &dimensions,
            "-r",
            "10",
            "-i",
            &input,
            "-c:v",
            "libwebp",
            "-lossless",
            "1",
            "-loop",
            "0",
        ],
    )
}

fn static_webp(dir: &Path, name: &str, side: usize, seed: u8) -> Vec<u8> {
    noise_image(
        dir,
        name,
        (side, side),
        seed,
        &["-c:v", "libwebp", "-lossless", "1"],
    )
}

/// A still WebP with transparency, lossy: `VP8X`, `ALPH` and `VP8 ` chunks.
fn alpha_webp(dir: &Path, name: &str, side: usize, seed: u8) -> Vec<u8> {
    let input = dir.join(format!("noise-{seed}.rgba"));
    std::fs::write(&input, content(side * side * 4, seed)).unwrap();
    let input = input.display().to_string();
    let dimensions = format!("{side}x{side}");
    ffmpeg(
        dir,
        name,
        &[
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgba",
            "-s",
            &dimensions,
            "-i",
            &input,
            "-frames:v",
            "1",
            "-c:v",
            "libwebp",
            "-pix_fmt",
            "yuva420p",
        ],
    )
}

/// A simple WebP (`RIFF`, `WEBP`, one `VP8L` chunk) made extended: a `VP8X` chunk with
/// `flags` and the canvas of a `side`×`side` image put before its image chunk.
fn with_vp8x(simple: &[u8], flags: u8, side: u32) -> Vec<u8> {
    let canvas = (side - 1).to_le_bytes();
    let mut vp8x = b"VP8X".to_vec();
    vp8x.extend_from_slice(&10u32.to_le_bytes());
    vp8x.extend_from_slice(&[flags, 0, 0, 0]);
    vp8x.extend_from_slice(&canvas[..3]);
    vp8x.extend_from_slice(&canvas[..3]);
    let mut out = simple[..12].to_vec();
    out.extend(vp8x);
    out.extend_from_slice(&simple[12..]);
    let riff = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    out
}

/// Where the pages of an Ogg file begin and end.
fn ogg_pages(file: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut pages = Vec::new();
    let mut at = 0;
    while at < file.len() {
        assert_eq!(&file[at..at + 4], b"OggS", "a page at {at}");
        let segments = usize::from(file[at + 26]);
        let body: usize = file[at + 27..at + 27 + segments]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        pages.push(at..at + 27 + segments + body);
        at += 27 + segments + body;
    }
    pages
}

/// Gives an Ogg page the checksum that matches it (RFC 3533: CRC-32, polynomial
/// 0x04c11db7, unreflected, over the page with its checksum field zeroed).
fn seal_ogg_page(page: &mut [u8]) {
    page[22..26].fill(0);
    let mut crc = 0u32;
    for &byte in &*page {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    page[22..26].copy_from_slice(&crc.to_le_bytes());
}

/// The size of the last top-level box of an ISO media file.
fn moov_tail(file: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        if at + size == file.len() {
            return size;
        }
        at += size;
    }
}

/// `file` with a `free` box after it that brings it to `total` bytes.
fn padded(file: &[u8], total: usize) -> Vec<u8> {
    let free = total - file.len();
    let mut out = file.to_vec();
    out.extend_from_slice(&(free as u32).to_be_bytes());
    out.extend_from_slice(b"free");
    out.extend(content(free - 8, 10));
    assert_eq!(out.len(), total);
    out
}

async fn whatsapp(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| s.media.profile = Profile::Whatsapp).await
}

/// Nothing of a refused upload stays: `rows` rows and objects (the earlier uploads), no
/// unfinished multipart upload.
async fn assert_nothing_stays(app: &TestApp, rows: u64) {
    assert_eq!(app.row_count().await, rows, "rows");
    assert_eq!(app.object_keys().await.len() as u64, rows, "objects");
    assert_eq!(
        app.pending_multipart_uploads().await,
        0,
        "multipart uploads"
    );
}

fn details(error: &Value) -> String {
    error["errors"][0]["details"].as_str().unwrap().to_owned()
}

/// An upload over a raw connection, for refusals answered before the body is read: the
/// head, then as much of `body` as the server takes (with `Content-Length` when `declared`,
/// else chunked), then the whole answer. The status and the JSON body.
async fn raw_upload(
    app: &TestApp,
    token: &str,
    extension: &str,
    body: &[u8],
    declared: bool,
    send_body: bool,
) -> (u16, Value) {
    let mut head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: {extension}\r\nConnection: close\r\n"
    );
    let mut wire = Vec::new();
    if declared {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        wire.extend_from_slice(body);
    } else {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(64 * 1024) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    }
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    if send_body {
        // The server may answer and close before the whole body is written.
        let _ = stream.write_all(&wire).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let start = text.find("\r\n\r\n").expect("a complete head") + 4;
    let json = serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

/// The answer to an upload head sent with `Expect: 100-continue`.
async fn expect_continue(app: &TestApp, token: &str, extension: &str, length: usize) -> String {
    let headers = [
        ("Authorization", format!("Bearer {token}")),
        ("X-Gr-File-Extension", extension.to_owned()),
    ];
    crate::http_layer::expect_continue_with(app.port(), &headers, length as u64)
        .await
        .1
}

async fn media_that_follows_the_rules_is_stored(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    let video = movie(d, "fast.mp4", "libx264", true);
    let webp = static_webp(d, "small.webp", 64, 1);
    let animated = animated_webp(d, "moving.webp", 100, 5, 2);
    assert!(
        animated.len() > 100_000 && animated.len() <= 500_000,
        "an animated sticker over the static limit: {}",
        animated.len()
    );
    let voice = ffmpeg(
        d,
        "voice.ogg",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:duration=5",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-c:a",
            "libopus",
            "-b:a",
            "16k",
            "-application",
            "voip",
        ],
    );
    // Two Opus files one after the other: a chained Ogg file (two streams in sequence).
    let chained = [
        sound(d, "first.ogg", "libopus", false),
        sound(d, "second.ogg", "libopus", false),
    ]
    .concat();
    // A voice memo as phones record them: mono AAC at 16 kHz, moov at the end.
    let memo = ffmpeg(
        d,
        "memo.m4a",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:duration=3",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-c:a",
            "aac",
            "-b:a",
            "32k",
        ],
    );
    assert_eq!(&memo[memo.len() - moov_tail(&memo)..][4..8], b"moov");
    // An .m4a with cover art: a picture in its metadata, not a video track.
    let cover = noise_image(d, "cover.png", (64, 64), 12, &[]);
    assert!(!cover.is_empty());
    let covered = ffmpeg(
        d,
        "covered.m4a",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-i",
            &d.join("cover.png").display().to_string(),
            "-map",
            "0",
            "-map",
            "1",
            "-c:a",
            "aac",
            "-c:v",
            "png",
            "-disposition:v",
            "attached_pic",
        ],
    );
    let transparent = alpha_webp(d, "alpha.webp", 64, 11);
    assert_eq!(&transparent[12..16], b"VP8X");
    let image = noise_image(d, "small.png", (300, 300), 3, &[]);
    let files = [
        ("mp4", video.clone()),
        ("3gp", movie(d, "small.3gp", "libx264", true)),
        // moov after mdat, as ffmpeg writes them by default and many recorders do.
        ("mp4", movie(d, "slow.mp4", "libx264", false)),
        // No audio stream is allowed too.
        (
            "mp4",
            ffmpeg(
                d,
                "silent.mp4",
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=size=64x64:rate=10",
                    "-t",
                    "1",
                    "-c:v",
                    "libx264",
                ],
            ),
        ),
        ("3gp", movie(d, "slow.3gp", "libx264", false)),
        ("m4a", sound(d, "slow.m4a", "aac", false)),
        ("m4a", memo),
        ("m4a", covered),
        ("ogg", sound(d, "opus.ogg", "libopus", false)),
        ("ogg", voice),
        ("ogg", chained),
        ("m4a", sound(d, "fast.m4a", "aac", true)),
        ("webp", webp),
        ("webp", animated),
        ("webp", transparent),
        ("png", image),
        ("jpg", noise_image(d, "small.jpg", (300, 300), 4, &[])),
        // A document: only limits.max_upload_bytes, 6 MB passes (multipart on the way).
        ("pdf", content(6_000_000, 5)),
    ];
    for (extension, body) in &files {
        let id = app.upload_ok(&token, extension, body.clone()).await;
        let stored = app.get(&token, &id).await;
        assert_eq!(stored.status(), 200, "{extension}");
        assert_eq!(
            stored.headers()["etag"],
            format!("\"{}\"", sha256_hex(body)).as_str(),
            "{extension}"
        );
    }
    // Also streamed without a length (chunked).
    let response = app
        .request(reqwest::Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "mp4")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            video
                .chunks(1000)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_nothing_stays(&app, files.len() as u64 + 1).await;
}

async fn content_against_a_rule_is_refused(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    for (extension, body, rule) in [
        // MPEG-4 Part 2 video, not H.264, before mdat and after it.
        (
            "mp4",
            movie(d, "mpeg4.mp4", "mpeg4", true),
            "H.264 with AAC audio",
        ),
        (
            "3gp",
            movie(d, "mpeg4.3gp", "mpeg4", false),
            "H.264 with AAC audio",
        ),
        ("ogg", sound(d, "vorbis.ogg", "libvorbis", false), "Opus"),
    ] {
        let error = assert_error(app.upload(&token, extension, body).await, 400, 1009).await;
        let details = details(&error);
        assert!(
            details.starts_with(&format!("whatsapp profile: .{extension} ")),
            "{details}"
        );
        assert!(details.contains(rule), "{details}");
        assert_nothing_stays(&app, 0).await;
    }
    // The ogg says what it found.
    let error = assert_error(
        app.upload(&token, "ogg", sound(d, "vorbis2.ogg", "libvorbis", false))
            .await,
        400,
        1009,
    )
    .await;
    assert!(details(&error).contains("Vorbis"), "{error}");
    assert_nothing_stays(&app, 0).await;

    // An empty body stays a missing body (code 1008), chunked too.
    let empty = app
        .request(reqwest::Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "mp4")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            Vec::<Result<Vec<u8>, std::io::Error>>::new(),
        )))
        .send()
        .await
        .unwrap();
    assert_error(empty, 400, 1008).await;
    assert_nothing_stays(&app, 0).await;
}

async fn sizes_over_a_rule_are_refused(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    let png = noise_image(d, "big.png", (1400, 1300), 6, &[]);
    let jpeg = noise_image(
        d,
        "big.jpg",
        (2000, 1800),
        7,
        &["-q:v", "1", "-pix_fmt", "yuvj444p"],
    );
    for image in [&png, &jpeg] {
        assert!(image.len() > 5_000_000, "{}", image.len());
    }
    let image_rule = "whatsapp profile: images (jpeg, png) are at most 5 MB";

    // By Content-Length: refused from the head alone, no byte of the body sent.
    for (extension, image) in [("png", &png), ("jpg", &jpeg)] {
        let (status, error) = raw_upload(&app, &token, extension, image, true, false).await;
        assert_eq!(
            (status, error["errors"][0]["code"].as_u64()),
            (413, Some(1009))
        );
        assert_eq!(details(&error), image_rule);
        // And at Expect: 100-continue, before the client sends it.
        let line = expect_continue(&app, &token, extension, image.len()).await;
        assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    }
    // Chunked, without a length: cut off while streaming.
    for (extension, image) in [("png", &png), ("jpeg", &jpeg)] {
        let (status, error) = raw_upload(&app, &token, extension, image, false, true).await;
        assert_eq!(
            (status, error["errors"][0]["code"].as_u64()),
            (413, Some(1009))
        );
        assert_eq!(details(&error), image_rule);
        assert_nothing_stays(&app, 0).await;
    }

    // A static sticker over 100 KB, declared (under the animated limit, so only its
    // first bytes tell) and chunked.
    let still = static_webp(d, "big.webp", 200, 8);
    assert!(
        still.len() > 100_000 && still.len() < 500_000,
        "{}",
        still.len()
    );
    for declared in [true, false] {
        let (status, error) = raw_upload(&app, &token, "webp", &still, declared, true).await;
        assert_eq!(
            (status, error["errors"][0]["code"].as_u64()),
            (413, Some(1009))
        );
        assert_eq!(
            details(&error),
            "whatsapp profile: static stickers (webp) are at most 100 KB"
        );
        assert_nothing_stays(&app, 0).await;
    }
    // An animated one over 500 KB.
    let moving = animated_webp(d, "big-moving.webp", 160, 12, 9);
    assert!(moving.len() > 500_000, "{}", moving.len());
    let (status, error) = raw_upload(&app, &token, "webp", &moving, false, true).await;
    assert_eq!(status, 413);
    assert_eq!(
        details(&error),
        "whatsapp profile: animated stickers (webp) are at most 500 KB"
    );
    assert_nothing_stays(&app, 0).await;

    // A streamable video padded past 16 MB (a free box after the media): refused while
    // streaming, after a multipart upload began; nothing of it stays.
    let base = movie(d, "fast.mp4", "libx264", true);
    let video = padded(&base, 16_000_001);
    let (status, error) = raw_upload(&app, &token, "mp4", &video, false, true).await;
    assert_eq!(status, 413);
    assert_eq!(
        details(&error),
        "whatsapp profile: videos (mp4, 3gp) are at most 16 MB"
    );
    assert_nothing_stays(&app, 0).await;
    // One byte less is a video like any other.
    app.upload_ok(&token, "mp4", padded(&base, 16_000_000))
        .await;
    assert_nothing_stays(&app, 1).await;
}

async fn malformed_webp_is_refused(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    // A static image over the static limit, with the VP8X animation flag set: no frames.
    let still = static_webp(d, "big.webp", 340, 8);
    assert!(
        still.len() > 300_000 && still.len() < 500_000,
        "{}",
        still.len()
    );
    assert_eq!(&still[12..16], b"VP8L");
    let flagged = with_vp8x(&still, 0x02, 340);
    // Unflagged, the same image is a static sticker over 100 KB.
    let unflagged = with_vp8x(&still, 0x00, 340);

    let small = static_webp(d, "small.webp", 64, 1);
    // Twelve bytes of RIFF header and a chunk type.
    let sixteen = b"RIFF\x08\0\0\0WEBPVP8X".to_vec();
    // A VP8X chunk that claims 0xFFFFFFF0 bytes.
    let mut huge = with_vp8x(&small, 0x00, 64);
    huge[16..20].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    // A VP8X chunk of four bytes.
    let mut short_vp8x = small[..12].to_vec();
    short_vp8x.extend_from_slice(b"VP8X\x04\0\0\0\0\0\0\0");
    short_vp8x.extend_from_slice(&small[12..]);
    let riff = (short_vp8x.len() - 8) as u32;
    short_vp8x[4..8].copy_from_slice(&riff.to_le_bytes());
    // RIFF sizes that do not match the body.
    let mut longer = small.clone();
    longer[4..8].copy_from_slice(&(small.len() as u32 + 100).to_le_bytes());
    let mut trailing = small.clone();
    trailing.extend_from_slice(&[0; 30]);

    for (body, reason) in [
        (flagged, "VP8L"),
        (sixteen, "ends"),
        (huge, "past the end"),
        (short_vp8x, "VP8X"),
        (longer, "RIFF size"),
        (trailing, "after"),
    ] {
        let error = assert_error(app.upload(&token, "webp", body).await, 400, 1009).await;
        let details = details(&error);
        assert!(
            details.starts_with("whatsapp profile: .webp file is not a valid WebP file"),
            "{details}"
        );
        assert!(details.contains(reason), "{reason}: {details}");
        assert_nothing_stays(&app, 0).await;
    }
    let error = assert_error(app.upload(&token, "webp", unflagged).await, 413, 1009).await;
    assert_eq!(
        details(&error),
        "whatsapp profile: static stickers (webp) are at most 100 KB"
    );
    assert_nothing_stays(&app, 0).await;
    // Made extended by the same helper, a small image is a sticker like any other.
    app.upload_ok(&token, "webp", with_vp8x(&small, 0x00, 64))
        .await;
    assert_nothing_stays(&app, 1).await;
}

async fn malformed_ogg_is_refused(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    let opus = sound(d, "opus.ogg", "libopus", false);
    let pages = ogg_pages(&opus);
    assert!(pages.len() >= 3, "{pages:?}");
    // A byte of the audio changed: the last page's checksum no longer matches.
    let mut corrupt = opus.clone();
    let at = opus.len() - 5;
    corrupt[at] ^= 0x01;
    // One field of the first page changed at a time, its checksum made to match.
    let first = pages[0].clone();
    let mut version = opus.clone();
    version[first.start + 4] = 1;
    seal_ogg_page(&mut version[first.clone()]);
    let mut no_bos = opus.clone();
    no_bos[first.start + 5] &= !0x02;
    seal_ogg_page(&mut no_bos[first.clone()]);
    // A page whose lacing claims 65 025 bytes, with 19 of them before the body ends.
    let mut truncated = opus[..pages.last().unwrap().start].to_vec();
    let last = &opus[pages.last().unwrap().clone()];
    truncated.extend_from_slice(&last[..26]);
    truncated.push(255);
    truncated.extend_from_slice(&[255; 255]);
    truncated.extend_from_slice(&last[last.len() - 19..]);
    // Opus with a Vorbis stream multiplexed beside it (ffmpeg, two streams in one file).
    let multiplexed = ffmpeg(
        d,
        "two.ogg",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=880:duration=1",
            "-map",
            "0",
            "-map",
            "1",
            "-c:a:0",
            "libopus",
            "-c:a:1",
            "libvorbis",
        ],
    );
    for (body, reason) in [
        (corrupt, "checksum"),
        (version, "version"),
        (no_bos, "BOS"),
        (truncated, "ends inside an Ogg page"),
        (multiplexed, "second logical stream"),
    ] {
        let error = assert_error(app.upload(&token, "ogg", body).await, 400, 1009).await;
        let details = details(&error);
        assert!(details.starts_with("whatsapp profile: .ogg "), "{details}");
        assert!(details.contains(reason), "{reason}: {details}");
        assert_nothing_stays(&app, 0).await;
    }
}

/// The top-level box of `kind` in an ISO media file.
fn top_box<'a>(file: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
    let mut at = 0;
    while at < file.len() {
        let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        if &file[at + 4..at + 8] == kind {
            return &file[at..at + size];
        }
        at += size;
    }
    panic!("no {kind:?} box");
}

async fn malformed_iso_media_is_refused(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = whatsapp(backend).await;
    let token = app.token("acct");

    // An H.264 video with the moov of an HEVC one (hvc1) after its own: a file has one
    // moov, and the second would have gone unread.
    let h264 = movie(d, "fast.mp4", "libx264", true);
    let hevc = ffmpeg(
        d,
        "hevc.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10",
            "-t",
            "1",
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=error",
            "-tag:v",
            "hvc1",
        ],
    );
    let hevc_moov = top_box(&hevc, b"moov");
    assert!(
        hevc_moov.windows(4).any(|w| w == b"hvc1"),
        "an hvc1 sample entry"
    );
    let two_moovs = [&h264[..], hevc_moov].concat();
    let slow = movie(d, "slow.mp4", "libx264", false);
    let two_moovs_slow = [&slow[..], hevc_moov].concat();
    // An .m4a with a video track beside its audio.
    let with_video = movie(d, "video.m4a", "libx264", false);
    // A video with two audio tracks (AAC both).
    let two_audio = ffmpeg(
        d,
        "two-audio.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=880",
            "-t",
            "1",
            "-map",
            "0",
            "-map",
            "1",
            "-map",
            "2",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
        ],
    );
    // A video cut short inside its mdat, after a moov that came first.
    let cut = h264[..h264.len() - 100].to_vec();
    for (extension, body, reason) in [
        ("mp4", two_moovs, "a second moov box"),
        ("mp4", two_moovs_slow, "a second moov box"),
        ("m4a", with_video, "a video track"),
        ("mp4", cut, "ends inside its mdat box"),
        ("mp4", two_audio, "found 2 audio tracks"),
    ] {
        let error = assert_error(app.upload(&token, extension, body).await, 400, 1009).await;
        let details = details(&error);
        assert!(
            details.starts_with(&format!("whatsapp profile: .{extension} ")),
            "{details}"
        );
        assert!(details.contains(reason), "{reason}: {details}");
        assert_nothing_stays(&app, 0).await;
    }
}

async fn with_the_profile_off_nothing_changes(backend: Backend) {
    let dir = TempDir::new();
    let d = &dir.0;
    let app = TestApp::spawn(backend).await;
    assert_eq!(app.settings.media.profile, Profile::None);
    let token = app.token("acct");

    let files = [
        ("mp4", movie(d, "slow.mp4", "libx264", false)),
        // No audio stream is allowed too.
        (
            "mp4",
            ffmpeg(
                d,
                "silent.mp4",
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=size=64x64:rate=10",
                    "-t",
                    "1",
                    "-c:v",
                    "libx264",
                ],
            ),
        ),
        ("mp4", movie(d, "mpeg4.mp4", "mpeg4", true)),
        ("ogg", sound(d, "vorbis.ogg", "libvorbis", false)),
        ("png", noise_image(d, "big.png", (1400, 1300), 6, &[])),
        ("webp", static_webp(d, "big.webp", 200, 8)),
    ];
    for (extension, body) in &files {
        app.upload_ok(&token, extension, body.clone()).await;
    }
    assert_nothing_stays(&app, files.len() as u64).await;
}
