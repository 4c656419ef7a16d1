//! The HTTP layer under hostile and slow clients: labels a client cannot choose, memory
//! bounded by bytes whatever the chunking, timeouts on bodies and connections.

use std::time::Duration;

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{self, content, sha256_hex, Backend, ServiceProcess, TempDir, TestApp};

/// A `media-node` process on the embedded backends, with a token for it.
pub struct Process {
    pub server: ServiceProcess,
    pub token: String,
    _dir: TempDir,
}

impl Process {
    pub async fn start(backend: Backend, extra: &[(&'static str, &str)]) -> Self {
        let dir = TempDir::new();
        let settings = helpers::test_settings(backend, &dir).await;
        let mut env = helpers::process_env(&settings);
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut server = ServiceProcess::start(&dir.0, &env);
        server.wait_ready().await;
        let token = media_node::auth::Authenticator::from_settings(&settings.auth, false)
            .unwrap()
            .mint("acct", Duration::from_secs(600), None)
            .unwrap();
        Self {
            server,
            token,
            _dir: dir,
        }
    }

    /// A kibibyte figure of `/proc/<pid>/status` (`VmHWM`, `VmRSS`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.server.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in {status}"))
    }
}

/// Reads one HTTP/1.1 answer's head and its `Content-Length` body from `stream`.
pub async fn read_answer(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(n > 0, "connection closed before a full head: {buffer:?}");
        buffer.push(byte[0]);
    }
    let head = String::from_utf8(buffer).unwrap();
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let before = app.metrics_text().await.len();
    const REQUESTS: usize = 10_000;
    for i in 0..REQUESTS {
        let method = Method::from_bytes(format!("M{i:05}{}", "X".repeat(58)).as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/v1/media" } else { "/nowhere" };
        let response = app.request(method, path, None).send().await.unwrap();
        assert!(response.status().is_client_error());
    }
    let text = app.metrics_text().await;
    println!(
        "/metrics: {before} bytes before, {} bytes after {REQUESTS} made-up methods",
        text.len()
    );
    assert!(
        !text.contains("XXXXXXXX"),
        "a made-up method became a label"
    );
    assert!(
        text.len() < before + 16 * 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(text.contains("method=\"OTHER\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_chunks_keep_memory_bounded_by_bytes() {
    let process = Process::start(Backend::Embedded, &[]).await;
    let data = content(7 * 1024 * 1024, 61);
    let mut stream = TcpStream::connect(("127.0.0.1", process.server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         X-Gr-File-Extension: bin\r\nTransfer-Encoding: chunked\r\n\r\n",
        process.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Every byte its own chunk: "1\r\n<byte>\r\n", written 64 KiB of data at a time.
    for slice in data.chunks(64 * 1024) {
        let mut wire = Vec::with_capacity(slice.len() * 6);
        for byte in slice {
            wire.extend_from_slice(b"1\r\n");
            wire.push(*byte);
            wire.extend_from_slice(b"\r\n");
        }
        stream.write_all(&wire).await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, head, body) = read_answer(&mut stream).await;
    assert_eq!(status, 201, "{head}{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = json["media"][0]["id"].as_str().unwrap().to_owned();

    let peak_mib = process.memory_kib("VmHWM") / 1024;
    println!("peak resident memory after 7 MiB in 1-byte chunks: {peak_mib} MiB");
    assert!(
        peak_mib < 100,
        "resident memory peaked at {peak_mib} MiB for a 7 MiB upload"
    );
    let stored = reqwest::Client::new()
        .get(process.server.url(&format!("/v1/media/{id}")))
        .bearer_auth(&process.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&stored), sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_range_unit_is_case_insensitive() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let token = app.token("acct");
    let data = content(1000, 67);
    let id = app.upload_ok(&token, "bin", data.clone()).await;
    for unit in ["BYTES", "Bytes"] {
        let response = app
            .get_with(&token, &id, "Range", format!("{unit}=0-1"))
            .await;
        assert_eq!(response.status(), 206, "{unit}");
        assert_eq!(response.headers()["content-range"], "bytes 0-1/1000");
        assert_eq!(response.bytes().await.unwrap(), data[..2]);
    }
}
