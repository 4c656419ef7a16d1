//! Upload and download through media-node against the same storage backend accessed
//! directly, in one run, reported as ratios; plus the server's memory under concurrent
//! 37 MiB uploads.
//!
//! Run: `scripts/bench upload` (starts PostgreSQL and the S3 server, then
//! `cargo bench --bench upload`). Results go to BENCHMARKS.md by hand, with the command.

#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use helpers::{content, process_env, test_settings, Backend, TempDir};
use media_node::settings::Settings;
use media_node::storage::Storage;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_media-node");
const MIB: usize = 1024 * 1024;
const PART_SIZE: usize = 8 * MIB;

struct Server {
    child: Child,
    port: u16,
    auth: media_node::settings::AuthSettings,
}

impl Server {
    /// A release-built `media-node` over the backends of `settings`.
    fn start(settings: &Settings) -> Self {
        let port = free_port();
        let child = Command::new(BIN)
            .env("MEDIA_NODE__SERVER__HOST", "127.0.0.1")
            .env("MEDIA_NODE__SERVER__PORT", port.to_string())
            .env("MEDIA_NODE__ADMIN__HOST", "127.0.0.1")
            .env("MEDIA_NODE__ADMIN__PORT", free_port().to_string())
            .env("MEDIA_NODE__LOG__LEVEL", "warn")
            .envs(process_env(settings))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            auth: settings.auth.clone(),
        }
    }

    async fn wait(&self) {
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("media-node did not start");
    }

    fn token(&self) -> String {
        media_node::auth::Authenticator::from_settings(&self.auth, true)
            .unwrap()
            .mint("bench", Duration::from_secs(3600), None)
            .unwrap()
    }

    /// Resident set size now and at its peak, from /proc.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `data` the way a well-written direct client would: one PUT when small, a
/// multipart upload with the same part size as media-node when large.
async fn direct_put(store: &Arc<dyn ObjectStore>, key: &Path, data: &Bytes) {
    if data.len() < PART_SIZE {
        store
            .put(key, PutPayload::from(data.clone()))
            .await
            .unwrap();
    } else {
        let mut writer =
            BufWriter::with_capacity(store.clone(), key.clone(), PART_SIZE).with_max_concurrency(2);
        for chunk in data.chunks(64 * 1024) {
            writer.write_all(chunk).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    }
}

struct Row {
    what: String,
    via_service: f64,
    direct: f64,
    unit: &'static str,
}

async fn measure<F, Fut>(rounds: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f(usize::MAX).await; // warm-up
    let started = Instant::now();
    for i in 0..rounds {
        f(i).await;
    }
    started.elapsed() / rounds as u32
}

async fn compare(
    name: &str,
    server: &Server,
    storage: &Storage,
    size: usize,
    rounds: usize,
) -> Vec<Row> {
    let client = reqwest::Client::new();
    let token = server.token();
    let data = Bytes::from(content(size, 7));
    let base = format!("http://127.0.0.1:{}", server.port);
    let store = storage.store().clone();

    let ids = std::cell::RefCell::new(Vec::new());
    let upload = measure(rounds, |_| {
        let request = client
            .post(format!("{base}/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "bin")
            .body(data.clone())
            .send();
        let ids = &ids;
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 201);
            let json: serde_json::Value = response.json().await.unwrap();
            ids.borrow_mut()
                .push(json["media"][0]["id"].as_str().unwrap().to_owned());
        }
    })
    .await;
    let direct_upload = measure(rounds, |i| {
        let store = store.clone();
        let data = data.clone();
        async move {
            direct_put(
                &store,
                &Path::from(format!("bench-direct/{size}/{i}")),
                &data,
            )
            .await;
        }
    })
    .await;

    let id = ids.borrow()[0].clone();
    let download = measure(rounds, |_| {
        let request = client
            .get(format!("{base}/v1/media/{id}"))
            .bearer_auth(&token)
            .send();
        async move {
            let body = request.await.unwrap().bytes().await.unwrap();
            assert_eq!(body.len(), size);
        }
    })
    .await;
    let direct_key = Path::from(format!("bench-direct/{size}/0"));
    let direct_download = measure(rounds, |_| {
        let store = store.clone();
        let key = direct_key.clone();
        async move {
            let body = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(body.len(), size);
        }
    })
    .await;

    let label = if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / 1024)
    };
    let rate = |d: Duration| size as f64 / MIB as f64 / d.as_secs_f64();
    if size >= MIB {
        vec![
            Row {
                what: format!("{name}: upload {label}"),
                via_service: rate(upload),
                direct: rate(direct_upload),
                unit: "MiB/s",
            },
            Row {
                what: format!("{name}: download {label}"),
                via_service: rate(download),
                direct: rate(direct_download),
                unit: "MiB/s",
            },
        ]
    } else {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        vec![
            Row {
                what: format!("{name}: upload {label}"),
                via_service: ms(upload),
                direct: ms(direct_upload),
                unit: "ms/request",
            },
            Row {
                what: format!("{name}: download {label}"),
                via_service: ms(download),
                direct: ms(direct_download),
                unit: "ms/request",
            },
        ]
    }
}

/// Peak server memory while `parallel` clients each upload 37 MiB.
async fn memory(server: &Server, parallel: usize) -> (u64, u64) {
    let client = reqwest::Client::new();
    let token = server.token();
    let data = Bytes::from(content(helpers::MAX_UPLOAD as usize, 9));
    let base = format!("http://127.0.0.1:{}", server.port);
    let (before, _) = server.rss_kib();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let request = client
            .post(format!("{base}/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .body(data.clone())
            .send();
        tasks.spawn(async move { assert_eq!(request.await.unwrap().status(), 201) });
    }
    tasks.join_all().await;
    let (_, peak) = server.rss_kib();
    (before, peak)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let dir = TempDir::new();
    let mut production_settings = test_settings(Backend::Production, &dir).await;
    let embedded_dir = TempDir::new();
    let mut embedded_settings = test_settings(Backend::Embedded, &embedded_dir).await;
    for settings in [&mut production_settings, &mut embedded_settings] {
        settings.storage.part_size_bytes = PART_SIZE;
    }
    let production = Server::start(&production_settings);
    let embedded = Server::start(&embedded_settings);
    production.wait().await;
    embedded.wait().await;
    let s3 = Storage::from_settings(&production_settings.storage).unwrap();
    let local = Storage::from_settings(&embedded_settings.storage).unwrap();

    let mut rows = Vec::new();
    for (size, rounds) in [(100 * 1024, 50), (MIB, 20), (37 * MIB, 5)] {
        rows.extend(compare("PostgreSQL + S3 (Garage)", &production, &s3, size, rounds).await);
        rows.extend(compare("SQLite + local disk", &embedded, &local, size, rounds).await);
    }

    println!("| measurement | through media-node | direct to the backend | media-node / direct |");
    println!("| --- | --- | --- | --- |");
    for row in &rows {
        println!(
            "| {} | {:.1} {} | {:.1} {} | {:.2} |",
            row.what,
            row.via_service,
            row.unit,
            row.direct,
            row.unit,
            row.via_service / row.direct
        );
    }

    drop(production);
    drop(embedded);
    for parallel in [1, 8] {
        // A fresh process each time, so the peak belongs to this load alone.
        let server = Server::start(&production_settings);
        server.wait().await;
        let (before, peak) = memory(&server, parallel).await;
        println!(
            "\nPostgreSQL + S3: {parallel} concurrent 37 MiB upload(s): server RSS {:.1} MiB before, peak {:.1} MiB",
            before as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}
