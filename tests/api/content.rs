//! The content checked against the declared extension, with real files made here by
//! Python's standard library (a PNG written with zlib, a WAV with `wave`, a ZIP with
//! `zipfile`), never downloaded.

use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{assert_error, content, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    content_that_the_extension_cannot_be_is_refused,
    record_policy_stores_what_was_detected,
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
    for (body, extension, detected) in [
        (png.clone(), "mp4", "image/png"),
        (real_file("wav"), "ogg", "audio/x-wav"),
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
        s.media.verify_content = media_node::content_check::VerifyContent::Record;
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
