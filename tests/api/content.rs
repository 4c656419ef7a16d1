//! The content checked against the declared extension, with real files made here by
//! Python's standard library (a PNG written with zlib, a WAV with `wave`, a ZIP with
//! `zipfile`) and a corpus of ordinary files from real encoders (`tests/corpus`), never
//! downloaded: what is what its extension says is stored, on both profiles.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use reqwest::Method;
use serde_json::Value;

use test_support::on_both_backends;
use test_support::{assert_error, content, Backend, TestApp};

on_both_backends!(
    content_that_the_extension_cannot_be_is_refused,
    record_policy_stores_what_was_detected,
    ordinary_files_are_stored_on_both_profiles,
    random_bytes_of_a_generic_type_are_stored,
);

/// A real file of `kind` (png, wav, zip) from Python's standard library.
fn real_file(kind: &str) -> Vec<u8> {
    let script = r#"
import io, struct, sys, wave, zipfile, zlib
kind = sys.argv[1]
out = io.BytesIO()
if kind == "png":
    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff)
    raw = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(16 * 3)) for y in range(16))
    out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
              + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
elif kind == "wav":
    w = wave.open(out, "wb"); w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
    w.writeframes(bytes(range(256)) * 40); w.close()
elif kind == "zip":
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("hello.txt", "hello media")
sys.stdout.buffer.write(out.getvalue())
"#;
    let out = Command::new("python3")
        .args(["-c", script, kind])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn info(app: &TestApp, token: &str, id: &str) -> Value {
    app.request(Method::GET, &format!("/v1/media/{id}/info"), Some(token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn content_that_the_extension_cannot_be_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let png = real_file("png");

    // What it is, or a relative of it: stored, with the detected type recorded.
    let id = app.upload_ok(&token, "png", png.clone()).await;
    let described = info(&app, &token, &id).await;
    assert_eq!(described["mime_type"], "image/png");
    assert_eq!(described["detected_mime_type"], "image/png");
    let zip_as_docx = app.upload_ok(&token, "docx", real_file("zip")).await;
    assert_eq!(
        info(&app, &token, &zip_as_docx).await["detected_mime_type"],
        "application/zip"
    );
    // Bytes the detector does not know pass, whatever the extension.
    let unknown = app.upload_ok(&token, "jpg", content(5000, 3)).await;
    assert!(info(&app, &token, &unknown).await["detected_mime_type"].is_null());
    let rows = app.row_count().await;

    // Positively something else: 400, naming both types, and nothing kept.
    let from_corpus = |name: &str| {
        corpus()
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, body)| body.clone())
            .unwrap()
    };
    for (body, extension, detected) in [
        (png.clone(), "mp4", "image/png"),
        (real_file("wav"), "ogg", "audio/x-wav"),
        (from_corpus("drawing.png"), "jpg", "image/png"),
        (from_corpus("clip.mp4"), "pdf", "video/mp4"),
        (from_corpus("song.mp3"), "txt", "audio/mpeg"),
        (from_corpus("drawing.bmp"), "png", "image/bmp"),
    ] {
        let response = app.upload(&token, extension, body).await;
        let error = assert_error(response, 400, 1009).await;
        let details = error["errors"][0]["details"].as_str().unwrap().to_owned();
        assert!(details.contains(detected), "{details}");
        assert!(details.contains(&format!(".{extension}")), "{details}");
    }
    assert_eq!(app.row_count().await, rows);
    assert_eq!(app.object_keys().await.len() as u64, rows);
}

async fn record_policy_stores_what_was_detected(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.media.verify_content = media_node::domain::content_check::VerifyContent::Record;
    })
    .await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "mp4", real_file("png")).await;
    let described = info(&app, &token, &id).await;
    assert_eq!(
        described["mime_type"], "video/mp4",
        "served as its extension says"
    );
    assert_eq!(described["detected_mime_type"], "image/png");
}

/// The corpus of `tests/corpus/make_corpus.py`, made once per test run: (file name, bytes).
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let python = std::env::var("MEDIA_NODE_TEST_CORPUS_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/media-node/corpus-venv/bin/python",
                std::env::var("HOME").unwrap()
            )
        });
        let dir = std::env::temp_dir().join(format!("media-node-corpus-{}", std::process::id()));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/make_corpus.py");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{python} runs (scripts/test makes its venv): {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let files: Vec<_> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|name| (name.to_owned(), std::fs::read(dir.join(name)).unwrap()))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(files.len() >= 50, "the corpus has {} files", files.len());
        files
    })
}

async fn ordinary_files_are_stored_on_both_profiles(backend: Backend) {
    for profile in [
        media_node::domain::profile::Profile::None,
        media_node::domain::profile::Profile::Whatsapp,
    ] {
        let app = TestApp::spawn_with(backend, |s| s.media.profile = profile).await;
        let token = app.token("acct");
        let mut refused = Vec::new();
        for (name, body) in corpus() {
            let extension = name.rsplit('.').next().unwrap();
            let response = app.upload(&token, extension, body.clone()).await;
            let status = response.status().as_u16();
            if status != 201 {
                refused.push(format!(
                    "{name}: {status} {}",
                    response.text().await.unwrap()
                ));
            }
        }
        assert!(refused.is_empty(), "{profile:?} refused {refused:#?}");
        assert_eq!(app.row_count().await, corpus().len() as u64);
    }
}

async fn random_bytes_of_a_generic_type_are_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    // A fixed generator (xorshift64*): the same 1 200 bodies on every run, from 1 byte up.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let extensions = ["bin", "dat", "enc", "raw"];
    let bodies: Vec<(&str, Vec<u8>)> = (0..1200)
        .map(|i| {
            let len = 1 + (next() % 3000) as usize;
            let body = (0..len).map(|_| next() as u8).collect();
            (extensions[i % extensions.len()], body)
        })
        .collect();
    for batch in bodies.chunks(16) {
        let answers = futures_util::future::join_all(
            batch
                .iter()
                .map(|(extension, body)| app.upload(&token, extension, body.clone())),
        )
        .await;
        for answer in answers {
            let status = answer.status().as_u16();
            assert_eq!(status, 201, "{}", answer.text().await.unwrap());
        }
    }
    assert_eq!(app.row_count().await, bodies.len() as u64);
}
