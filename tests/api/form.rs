//! Uploads sent as `multipart/form-data`: the form's one file part is the upload.

use reqwest::Method;

use test_support::on_both_backends;
use test_support::{assert_error, content, sha256_hex, Backend, TempDir, TestApp};

on_both_backends!(
    curl_form_upload_stores_the_file_not_the_envelope,
    cloud_api_style_form_with_text_fields_is_the_file,
    filename_gives_the_extension_when_the_header_is_absent,
    filename_without_extension_and_no_header_is_refused,
    two_file_parts_are_refused,
    form_without_file_part_is_refused,
    malformed_forms_are_refused,
    digest_with_a_form_is_refused,
    limit_applies_to_the_file_part_not_the_envelope,
    expect_continue_checks_a_form_by_its_headers,
);

/// Bytes that begin like a JPEG (JFIF), then deterministic noise.
fn picture(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes =
        b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec();
    bytes.extend(content(len - bytes.len(), seed));
    bytes
}

const BOUNDARY: &str = "9f3c1e0b7a5d4c2e8b6a1f0d3e5c7b9a";

/// A form body as Python `requests` (urllib3) builds it: each part's Content-Disposition,
/// a Content-Type for the file, CRLF line ends, and `--boundary--` at the end.
/// `parts` are (name, Some((filename, content type)) for a file, bytes).
type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some((filename, content_type)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                     Content-Type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn post_form(
    app: &TestApp,
    token: &str,
    extension: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .request(Method::POST, "/v1/media", Some(token))
        .header("Content-Type", content_type)
        .body(body);
    if let Some(extension) = extension {
        request = request.header("X-Gr-File-Extension", extension);
    }
    request.send().await.unwrap()
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// The id of a 201 answer.
async fn created(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["media"][0]["id"].as_str().unwrap().to_owned()
}

/// Downloads `id` and checks it is `data`, byte for byte and by its ETag; returns the
/// served Content-Type.
async fn assert_stored(app: &TestApp, token: &str, id: &str, data: &[u8]) -> String {
    let response = app.get(token, id).await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), data.len(), "the stored size is the file's");
    assert!(body == data, "the stored bytes are the file's");
    assert_eq!(etag, format!("\"{}\"", sha256_hex(data)));
    content_type
}

/// A refusal that says `says` and leaves no row and no object.
async fn assert_refused(
    app: &TestApp,
    response: reqwest::Response,
    status: u16,
    code: u64,
    says: &str,
) {
    let body = assert_error(response, status, code).await;
    let details = body["errors"][0]["details"].as_str().unwrap().to_owned();
    assert_eq!(app.row_count().await, 0, "{details}");
    assert!(app.object_keys().await.is_empty(), "{details}");
    assert!(details.contains(says), "{details}");
}

async fn curl_form_upload_stores_the_file_not_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let dir = TempDir::new();
    // Larger than a part: the file streams through more than one.
    let data = picture(6_000_000, 1);
    let path = dir.0.join("picture.jpg");
    std::fs::write(&path, &data).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-w", "\n%{http_code}", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{}/v1/media", app.port()))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "X-Gr-File-Extension: jpg"])
        .args(["-F", &format!("file=@{}", path.display())]);
    let output = tokio::task::spawn_blocking(move || curl.output())
        .await
        .unwrap()
        .expect("curl runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout} {:?}", output.stderr);
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(status, "201", "{body}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let id = json["media"][0]["id"].as_str().unwrap();
    let served = assert_stored(&app, &token, id, &data).await;
    assert_eq!(served, "image/jpeg");
    assert_eq!(app.row_count().await, 1);
}

async fn cloud_api_style_form_with_text_fields_is_the_file(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = picture(200_000, 2);
    // `requests.post(url, data={"messaging_product": "whatsapp", "type": "image/jpeg"},
    // files={"file": ("photo.jpg", f, "image/jpeg")})`: the text fields come first.
    let body = form(&[
        ("messaging_product", None, b"whatsapp"),
        ("type", None, b"image/jpeg"),
        ("file", Some(("photo.jpg", "image/jpeg")), &data),
    ]);
    let id = created(post_form(&app, &token, Some("jpg"), &form_type(), body).await).await;
    assert_stored(&app, &token, &id, &data).await;

    // Text fields after the file part are read and ignored too.
    let data = picture(50_000, 3);
    let body = form(&[
        ("file", Some(("photo.jpg", "image/jpeg")), &data),
        ("messaging_product", None, b"whatsapp"),
    ]);
    let id = created(post_form(&app, &token, Some("jpg"), &form_type(), body).await).await;
    assert_stored(&app, &token, &id, &data).await;
    assert_eq!(app.row_count().await, 2);
}

async fn filename_gives_the_extension_when_the_header_is_absent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = picture(10_000, 4);
    let body = form(&[("file", Some(("Holiday.Photo.JPG", "image/jpeg")), &data)]);
    let id = created(post_form(&app, &token, None, &form_type(), body).await).await;
    assert_eq!(assert_stored(&app, &token, &id, &data).await, "image/jpeg");

    // The header, when sent, rules over the filename.
    let data = content(10_000, 5);
    let body = form(&[("file", Some(("notes.jpg", "image/jpeg")), &data)]);
    let id = created(post_form(&app, &token, Some("bin"), &form_type(), body).await).await;
    assert_eq!(
        assert_stored(&app, &token, &id, &data).await,
        "application/octet-stream"
    );
}

async fn filename_without_extension_and_no_header_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(1_000, 6);
    let body = form(&[("file", Some(("blob", "application/octet-stream")), &data)]);
    let response = post_form(&app, &token, None, &form_type(), body).await;
    assert_refused(&app, response, 400, 1008, "X-Gr-File-Extension").await;
    let body = form(&[("file", Some(("odd.jp-g", "image/jpeg")), &data)]);
    let response = post_form(&app, &token, None, &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "X-Gr-File-Extension").await;
}

async fn two_file_parts_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let first = picture(100_000, 7);
    let second = picture(100_000, 8);
    let body = form(&[
        ("file", Some(("a.jpg", "image/jpeg")), &first),
        ("file", Some(("b.jpg", "image/jpeg")), &second),
    ]);
    let response = post_form(&app, &token, Some("jpg"), &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    app.assert_eventually_empty().await;
}

async fn form_without_file_part_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let body = form(&[
        ("messaging_product", None, b"whatsapp"),
        ("file", None, b"just a text field"),
    ]);
    let response = post_form(&app, &token, Some("jpg"), &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    // An empty form: only the closing boundary.
    let body = format!("--{BOUNDARY}--\r\n").into_bytes();
    let response = post_form(&app, &token, Some("jpg"), &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
}

async fn malformed_forms_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = picture(100_000, 9);
    // Not a form at all.
    let response = post_form(&app, &token, Some("jpg"), &form_type(), content(50_000, 10)).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    // No boundary in the Content-Type.
    let body = form(&[("file", Some(("a.jpg", "image/jpeg")), &data)]);
    let response = post_form(&app, &token, Some("jpg"), "multipart/form-data", body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    // Cut off before the closing boundary.
    let mut body = form(&[("file", Some(("a.jpg", "image/jpeg")), &data)]);
    body.truncate(body.len() - BOUNDARY.len() - 8);
    let response = post_form(&app, &token, Some("jpg"), &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    // A part without headers' end.
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
    )
    .into_bytes();
    let response = post_form(&app, &token, Some("jpg"), &form_type(), body).await;
    assert_refused(&app, response, 400, 1009, "raw bytes").await;
    app.assert_eventually_empty().await;
}

async fn digest_with_a_form_is_refused(backend: Backend) {
    use base64::Engine;
    use sha2::Digest;
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = picture(10_000, 11);
    let body = form(&[("file", Some(("a.jpg", "image/jpeg")), &data)]);
    let digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
    );
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("Content-Type", form_type())
        .header("X-Gr-File-Extension", "jpg")
        .header("Content-Digest", digest)
        .body(body)
        .send()
        .await
        .unwrap();
    let refusal = assert_error(response, 400, 1009).await;
    assert!(
        refusal["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("Content-Digest"),
        "{refusal}"
    );
    assert_eq!(app.row_count().await, 0);
}

async fn limit_applies_to_the_file_part_not_the_envelope(backend: Backend) {
    const LIMIT: u64 = 300_000;
    let app = TestApp::spawn_with(backend, |s| s.limits.max_upload_bytes = LIMIT).await;
    let token = app.token("acct");
    // The file at the limit: the form's Content-Length is over it by the envelope.
    let data = content(LIMIT as usize, 12);
    let body = form(&[
        ("messaging_product", None, b"whatsapp"),
        ("file", Some(("a.bin", "application/octet-stream")), &data),
    ]);
    assert!(body.len() as u64 > LIMIT);
    let id = created(post_form(&app, &token, None, &form_type(), body).await).await;
    assert_stored(&app, &token, &id, &data).await;
    app.delete(&token, &id).await;
    app.assert_eventually_empty().await;

    // One byte more in the file part is too large, whatever the envelope.
    let data = content(LIMIT as usize + 1, 13);
    let body = form(&[("file", Some(("a.bin", "application/octet-stream")), &data)]);
    let response = post_form(&app, &token, None, &form_type(), body).await;
    assert_refused(&app, response, 413, 1009, "").await;
    app.assert_eventually_empty().await;
}

async fn expect_continue_checks_a_form_by_its_headers(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: u64 = 300_000;
    let app = TestApp::spawn_with(backend, |s| s.limits.max_upload_bytes = LIMIT).await;
    let token = app.token("acct");
    let data = picture(20_000, 14);
    let body = form(&[("file", Some(("a.jpg", "image/jpeg")), &data)]);
    let headers = |extra: &[(&'static str, String)]| {
        let mut all = vec![
            ("Authorization", format!("Bearer {token}")),
            ("Content-Type", form_type()),
        ];
        all.extend_from_slice(extra);
        all
    };

    // No extension header: the filename gives it, once the body is read.
    let (mut stream, head) =
        crate::http_layer::expect_continue_with(app.port(), &headers(&[]), body.len() as u64).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(&body).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(app.row_count().await, 1);

    // A digest with a form: refused before the body.
    let digest = [(
        "Content-Digest",
        format!("sha-256=:{}:", "A".repeat(43) + "="),
    )];
    let (_, head) =
        crate::http_layer::expect_continue_with(app.port(), &headers(&digest), 1000).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // A Content-Length beyond what a file within the limit and its envelope can be.
    let too_long = LIMIT + 64 * 1024 + 1;
    let (_, head) =
        crate::http_layer::expect_continue_with(app.port(), &headers(&[]), too_long).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Within the envelope's allowance, it is let through.
    let (_, head) =
        crate::http_layer::expect_continue_with(app.port(), &headers(&[]), LIMIT + 1000).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    assert_eq!(app.row_count().await, 1);
}
