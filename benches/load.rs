//! Uploads and downloads under concurrency, through media-node and through the baselines a
//! user could use instead, driven by one async load generator in one run:
//!
//! - `media-node`: the release binary as its own process (token, SQL, hashing, checks);
//! - `bare actix`: an actix-web handler in this process that streams the body to the same
//!   store the way media-node does (one streamed PUT where media-node makes one, else the
//!   same part size and concurrency), with no auth, no SQL and no hashing: the physical
//!   limit of the front end, the only baseline on local disk;
//! - `S3 presigned` (S3 only): the object put (one PUT, whatever the size) and got directly
//!   through presigned URLs, the same HTTP client and concurrency;
//! - `object_store multipart` (S3 only, bodies of a part or more): object_store's own
//!   multipart upload with media-node's part size and two parts in flight, and its GET.
//!
//! Each cell is `requests` operations by `concurrency` workers, each worker with its own
//! account (so the per-account limits are not what is measured). Uploads per second and
//! p50/p99 latency for small bodies, MiB/s for large ones, and beside them media-node's own
//! CPU over the cell (utime + stime of its process: ms per request for small bodies, s per
//! GiB for large ones), which does not depend on how the two shared cores were split
//! between the load generator, the servers and media-node; refused requests (503 when the
//! memory budget is full) are counted, not hidden. Then the memory budget: a fresh server,
//! 128 concurrent 37 MiB uploads, its peak RSS against the budget, and every upload stored
//! or refused with nothing left behind.
//!
//! Run: `scripts/bench load` (starts PostgreSQL and the S3 server: Garage, or s3s-fs with
//! `BENCH_S3=s3s`). Subsets through the
//! environment: `BENCH_BACKENDS=s3,local`, `BENCH_SIZES=4k,100k,1m,37m`,
//! `BENCH_CONCURRENCY=1,8,32,128`, `BENCH_TARGETS=media-node,bare,presigned,multipart`,
//! `BENCH_MEMORY=0` to skip the memory run, `BENCH_MEMORY=local` to run it on local disk
//! instead of S3, `BENCH_MEMORY_CLIENTS=N` for fewer than 128 uploads in it,
//! `BENCH_MEMORY_STATS=1` for glibc's `malloc_stats()` of the server after them (through
//! gdb); `MEDIA_NODE_BIN` measures another build of the server,
//! `BENCH_SERVER_ENV=KEY=VALUE,...` gives it settings.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use media_node::settings::Settings;
use media_node::storage::Storage;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::ObjectStoreExt;
use support::{Server, MIB};
use test_support::{content, test_settings, Backend, TempDir};
use tokio::io::AsyncWriteExt;

/// media-node's default part size, used by every baseline too.
const PART_SIZE: usize = 8 * MIB;
const MAX_WORKERS: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    MediaNode,
    Bare,
    Presigned,
    Multipart,
}

impl Target {
    fn key(self) -> &'static str {
        match self {
            Target::MediaNode => "media-node",
            Target::Bare => "bare",
            Target::Presigned => "presigned",
            Target::Multipart => "multipart",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::MediaNode => "media-node",
            Target::Bare => "bare actix",
            Target::Presigned => "S3 presigned",
            Target::Multipart => "object_store multipart",
        }
    }
}

/// What one cell measured.
#[derive(Default)]
struct Cell {
    ok: usize,
    statuses: BTreeMap<String, usize>,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// media-node's own CPU seconds (utime + stime) over the cell, for its target.
    server_cpu: Option<f64>,
}

impl Cell {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: usize) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let at = (sorted.len() * p / 100).min(sorted.len() - 1);
        sorted[at].as_secs_f64() * 1000.0
    }

    fn refused(&self) -> String {
        self.statuses
            .iter()
            .map(|(k, v)| format!("{v}×{k}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Runs `requests` operations with `concurrency` workers; an operation is given its index
/// and its worker and returns the bytes it moved, or why it failed.
async fn drive<F, Fut>(concurrency: usize, requests: usize, op: F) -> Cell
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let cell = Arc::new(Mutex::new(Cell::default()));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (op, next, cell) = (op.clone(), next.clone(), cell.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let began = Instant::now();
                let result = op(i, worker).await;
                let took = began.elapsed();
                let mut cell = cell.lock().unwrap();
                match result {
                    Ok(bytes) => {
                        cell.ok += 1;
                        cell.bytes += bytes;
                        cell.latencies.push(took);
                    }
                    Err(why) => *cell.statuses.entry(why).or_default() += 1,
                }
            }
        });
    }
    workers.join_all().await;
    let mut cell = Arc::try_unwrap(cell)
        .ok()
        .expect("workers are done")
        .into_inner()
        .unwrap();
    cell.elapsed = started.elapsed();
    cell
}

/// Reads a response to its end without keeping it; the bytes read, or the status.
async fn drain(response: reqwest::Result<reqwest::Response>, expect: u16) -> Result<u64, String> {
    let response = response.map_err(|e| format!("error ({})", short(&e)))?;
    let status = response.status().as_u16();
    let mut stream = response.bytes_stream();
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        read += chunk
            .map_err(|e| format!("body error ({})", short(&e)))?
            .len() as u64;
    }
    if status == expect {
        Ok(read)
    } else {
        Err(status.to_string())
    }
}

fn short(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    text.truncate(60);
    text
}

/// The id under which the bare relay keeps the object of `key`.
fn bare_id(key: &str) -> media_node::domain::MediaId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let uuid = uuid::Uuid::from_slice(&digest[..16]).unwrap();
    media_node::domain::MediaId::parse(&uuid.hyphenated().to_string()).unwrap()
}

/// Where the bare relay keeps the object of `key`.
fn bare_object(storage: &Storage, key: &str) -> Path {
    storage.key(bare_id(key))
}

/// The bare front end: a handler that streams a body into the store and one that streams
/// an object out, nothing else. It takes the way to storage media-node takes for the same
/// body: one streamed PUT (`Storage::start_streamed_put`, the chunks forwarded as they
/// arrive, the last one held back as media-node does) for a declared length over a part
/// where the settings stream PUTs, object_store's buffered writer (one PUT, or multipart
/// with two parts in flight) otherwise. Its objects live under ids made from its keys, so
/// that the streamed PUT, which writes by id, and the reads find the same object.
fn start_bare(storage: Storage) -> u16 {
    async fn put(
        key: web::Path<String>,
        req: actix_web::HttpRequest,
        mut body: web::Payload,
        storage: web::Data<Storage>,
    ) -> actix_web::Result<HttpResponse> {
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let failed = actix_web::error::ErrorInternalServerError;
        if let Some(length) = declared.filter(|&l| l > PART_SIZE as u64 && storage.streams_puts()) {
            let mut put = storage
                .start_streamed_put(bare_id(&key), length)
                .await
                .map_err(failed)?;
            let mut held: Option<Bytes> = None;
            while let Some(chunk) = body.next().await {
                if let Some(ready) = held.replace(chunk?) {
                    put.send(ready).await.map_err(failed)?;
                }
            }
            put.finish(held.unwrap_or_default()).await.map_err(failed)?;
            return Ok(HttpResponse::Created().finish());
        }
        let store = storage.store().clone();
        let mut writer = BufWriter::with_capacity(store, bare_object(&storage, &key), PART_SIZE)
            .with_max_concurrency(2);
        while let Some(chunk) = body.next().await {
            writer.write_all(&chunk?).await?;
        }
        writer.shutdown().await?;
        Ok(HttpResponse::Created().finish())
    }

    async fn get(
        key: web::Path<String>,
        storage: web::Data<Storage>,
    ) -> actix_web::Result<HttpResponse> {
        let found = storage
            .store()
            .get(&bare_object(&storage, &key))
            .await
            .map_err(actix_web::error::ErrorInternalServerError)?;
        // Local files in media-node's chunks: the store's own file stream reads 8 KiB per
        // blocking call, which would make the baseline slower than what it bounds.
        Ok(HttpResponse::Ok().streaming(Storage::body(found)))
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(storage.clone()))
                    .app_data(web::PayloadConfig::new(usize::MAX))
                    .route("/bare/{key:.*}", web::post().to(put))
                    .route("/bare/{key:.*}", web::get().to(get))
            })
            // As media-node does: without it, small answers wait for the peer's delayed ACK.
            .on_connect(|io, _| {
                if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .workers(2)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap()
        })
    });
    port
}

/// One backend pair: a media-node process, the bare front end, and for S3 a signer.
struct Pair {
    name: &'static str,
    server: Server,
    bare_port: u16,
    /// The way to storage of the bare relay and of the direct targets.
    storage: Storage,
    s3: Option<Arc<AmazonS3>>,
    tokens: Vec<String>,
    client: reqwest::Client,
}

impl Pair {
    async fn start(name: &'static str, settings: &Settings) -> Self {
        let server = Server::start(settings, &[]);
        server.wait().await;
        // The bare relay takes media-node's way to storage: its settings, with what
        // `BENCH_SERVER_ENV` changes of the streamed PUT.
        let mut storage_settings = settings.storage.clone();
        for (key, value) in support::server_env() {
            if key == "MEDIA_NODE__STORAGE__S3__STREAMED_PUT" {
                // Anything else would leave the relay on another way than media-node.
                let on = value.parse::<bool>().unwrap_or_else(|_| {
                    panic!("{key}={value} in BENCH_SERVER_ENV: write true or false")
                });
                storage_settings.s3.streamed_put = Some(on);
            }
        }
        let storage = Storage::from_settings(&storage_settings).unwrap();
        let s3 = settings.storage.url.strip_prefix("s3://").map(|_| {
            let s3 = &settings.storage.s3;
            Arc::new(
                AmazonS3Builder::new()
                    .with_endpoint(s3.endpoint.clone().unwrap())
                    .with_region(s3.region.clone().unwrap())
                    .with_bucket_name(test_support::Services::from_env().s3_bucket)
                    .with_access_key_id(s3.access_key_id.clone().unwrap())
                    .with_secret_access_key(s3.secret_access_key.as_ref().unwrap().expose())
                    .with_allow_http(true)
                    .build()
                    .unwrap(),
            )
        });
        let tokens = (0..MAX_WORKERS)
            .map(|w| server.token_for(&format!("bench-{w}")))
            .collect();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_WORKERS)
            .tcp_nodelay(true)
            .build()
            .unwrap();
        Self {
            name,
            bare_port: start_bare(storage.clone()),
            storage,
            server,
            s3,
            tokens,
            client,
        }
    }

    /// What is measured at `size`: every target that applies, less those that
    /// `BENCH_TARGETS` (`media-node,bare,presigned,multipart`) leaves out.
    fn targets(&self, size: usize) -> Vec<Target> {
        let mut targets = vec![Target::MediaNode, Target::Bare];
        if self.s3.is_some() {
            targets.push(Target::Presigned);
            if size >= PART_SIZE {
                targets.push(Target::Multipart);
            }
        }
        let chosen = list("BENCH_TARGETS", "media-node,bare,presigned,multipart");
        targets.retain(|t| chosen.iter().any(|c| t.key() == c));
        targets
    }

    /// Uploads `requests` bodies of `size` through `target`; returns the cell and what was
    /// stored (ids with their owner's worker, or keys).
    async fn upload(
        &self,
        target: Target,
        data: Bytes,
        concurrency: usize,
        requests: usize,
        run: &str,
    ) -> (Cell, Vec<(String, usize)>) {
        let stored = Arc::new(Mutex::new(Vec::new()));
        let client = self.client.clone();
        let cell = match target {
            Target::MediaNode => {
                let url = self.server.url("/v1/media");
                let tokens = self.tokens.clone();
                let stored = stored.clone();
                drive(concurrency, requests, move |_, worker| {
                    let request = client
                        .post(&url)
                        .bearer_auth(&tokens[worker])
                        .header("X-Gr-File-Extension", "bin")
                        .body(data.clone())
                        .send();
                    let stored = stored.clone();
                    let len = data.len() as u64;
                    async move {
                        let response = request.await.map_err(|e| short(&e))?;
                        let status = response.status().as_u16();
                        let text = response.text().await.map_err(|e| short(&e))?;
                        if status != 201 {
                            return Err(status.to_string());
                        }
                        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let id = json["media"][0]["id"].as_str().unwrap().to_owned();
                        stored.lock().unwrap().push((id, worker));
                        Ok(len)
                    }
                })
                .await
            }
            Target::Bare | Target::Presigned => {
                let mut urls = Vec::with_capacity(requests);
                for i in 0..requests {
                    let key = format!("bench-load/{run}/{i}");
                    urls.push(self.url_of(target, &key, reqwest::Method::PUT).await);
                    stored.lock().unwrap().push((key, 0));
                }
                let method = if target == Target::Bare {
                    reqwest::Method::POST
                } else {
                    reqwest::Method::PUT
                };
                drive(concurrency, requests, move |i, _| {
                    let request = client
                        .request(method.clone(), &urls[i])
                        .body(data.clone())
                        .send();
                    let len = data.len() as u64;
                    let expect = if method == reqwest::Method::POST {
                        201
                    } else {
                        200
                    };
                    async move { drain(request.await, expect).await.map(|_| len) }
                })
                .await
            }
            Target::Multipart => {
                let store = self.storage.store().clone();
                let keys: Vec<Path> = (0..requests)
                    .map(|i| Path::from(format!("bench-load/{run}/{i}")))
                    .collect();
                for key in &keys {
                    stored.lock().unwrap().push((key.to_string(), 0));
                }
                drive(concurrency, requests, move |i, _| {
                    let mut writer =
                        BufWriter::with_capacity(store.clone(), keys[i].clone(), PART_SIZE)
                            .with_max_concurrency(2);
                    let data = data.clone();
                    async move {
                        for chunk in data.chunks(64 * 1024) {
                            writer.write_all(chunk).await.map_err(|e| short(&e))?;
                        }
                        writer.shutdown().await.map_err(|e| short(&e))?;
                        Ok(data.len() as u64)
                    }
                })
                .await
            }
        };
        let stored = std::mem::take(&mut *stored.lock().unwrap());
        (cell, stored)
    }

    /// Downloads `requests` times, cycling over what `upload` stored.
    async fn download(
        &self,
        target: Target,
        stored: &[(String, usize)],
        concurrency: usize,
        requests: usize,
    ) -> Cell {
        let client = self.client.clone();
        match target {
            Target::Multipart => {
                let store = self.storage.store().clone();
                let keys: Vec<Path> = stored.iter().map(|(k, _)| Path::from(k.as_str())).collect();
                drive(concurrency, requests, move |i, _| {
                    let store = store.clone();
                    let key = keys[i % keys.len()].clone();
                    async move {
                        let mut stream =
                            store.get(&key).await.map_err(|e| short(&e))?.into_stream();
                        let mut read = 0u64;
                        while let Some(chunk) = stream.next().await {
                            read += chunk.map_err(|e| short(&e))?.len() as u64;
                        }
                        Ok(read)
                    }
                })
                .await
            }
            _ => {
                let mut requests_of = Vec::with_capacity(stored.len());
                for (key, worker) in stored {
                    let (url, token) = match target {
                        Target::MediaNode => (
                            self.server.url(&format!("/v1/media/{key}")),
                            Some(self.tokens[*worker].clone()),
                        ),
                        _ => (self.url_of(target, key, reqwest::Method::GET).await, None),
                    };
                    requests_of.push((url, token));
                }
                drive(concurrency, requests, move |i, _| {
                    let (url, token) = &requests_of[i % requests_of.len()];
                    let mut request = client.get(url);
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    let request = request.send();
                    async move { drain(request.await, 200).await }
                })
                .await
            }
        }
    }

    async fn url_of(&self, target: Target, key: &str, method: reqwest::Method) -> String {
        match target {
            Target::Bare => format!("http://127.0.0.1:{}/bare/{key}", self.bare_port),
            _ => {
                let method =
                    object_store::signer::Method::from_bytes(method.as_str().as_bytes()).unwrap();
                self.s3
                    .as_ref()
                    .unwrap()
                    .signed_url(method, &Path::from(key), Duration::from_secs(3600))
                    .await
                    .unwrap()
                    .to_string()
            }
        }
    }

    /// Removes what a cell stored, outside the measurement.
    async fn clean(&self, target: Target, stored: Vec<(String, usize)>) {
        let requests = stored.len();
        let stored = Arc::new(stored);
        match target {
            Target::MediaNode => {
                let client = self.client.clone();
                let tokens = self.tokens.clone();
                let base = self.server.url("/v1/media");
                drive(16, requests, move |i, _| {
                    let (id, worker) = &stored[i];
                    let request = client
                        .delete(format!("{base}/{id}"))
                        .bearer_auth(&tokens[*worker])
                        .send();
                    async move { drain(request.await, 200).await }
                })
                .await;
            }
            _ => {
                let storage = self.storage.clone();
                drive(16, requests, move |i, _| {
                    let store = storage.store().clone();
                    let key = match target {
                        Target::Bare => bare_object(&storage, &stored[i].0),
                        _ => Path::from(stored[i].0.as_str()),
                    };
                    async move {
                        store.delete(&key).await.map_err(|e| short(&e))?;
                        Ok(0)
                    }
                })
                .await;
            }
        }
    }
}

/// How many operations a cell runs: enough to last a few seconds, at least two rounds of
/// every worker.
fn requests_for(size: usize, concurrency: usize) -> usize {
    match size {
        s if s <= 4096 => (16 * concurrency).max(600),
        s if s <= 100 * 1024 => (8 * concurrency).max(300),
        s if s <= MIB => (2 * concurrency).max(80),
        _ => concurrency.max(4),
    }
}

fn label(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / 1024)
    }
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn size_of(name: &str) -> usize {
    match name {
        "4k" => 4096,
        "100k" => 100 * 1024,
        "1m" => MIB,
        "37m" => test_support::MAX_UPLOAD as usize,
        other => panic!("unknown size {other}: 4k, 100k, 1m or 37m"),
    }
}

/// The columns of a table: the targets measured on this pair at any size.
fn columns(pair: &Pair) -> Vec<Target> {
    let mut all = pair.targets(usize::MAX);
    all.sort();
    all
}

/// One printed line: a cell of every target at one size, concurrency and direction.
fn print_line(columns: &[Target], size: usize, concurrency: usize, cells: &[(Target, Cell)]) {
    let small = size < MIB;
    let value = |cell: &Cell| {
        if small {
            cell.per_second()
        } else {
            cell.mib_per_second()
        }
    };
    let of = |target: Target| cells.iter().find(|(t, _)| *t == target).map(|(_, c)| c);
    let mut line = format!("| {} | {concurrency} |", label(size));
    for &target in columns {
        let Some(cell) = of(target) else {
            line.push_str(" – |");
            continue;
        };
        let mut text = if small {
            format!(
                "{:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
                cell.per_second(),
                cell.percentile_ms(50),
                cell.percentile_ms(99)
            )
        } else {
            format!("{:.0} MiB/s", cell.mib_per_second())
        };
        if !cell.statuses.is_empty() {
            let failed: usize = cell.statuses.values().sum();
            text.push_str(&format!(
                " ({failed} of {} failed: {})",
                cell.ok + failed,
                cell.refused()
            ));
        }
        line.push_str(&format!(" {text} |"));
    }
    // media-node's own CPU: per request for small bodies, per GiB for large ones.
    if columns.contains(&Target::MediaNode) {
        let cpu = of(Target::MediaNode).and_then(|cell| {
            let seconds = cell.server_cpu?;
            Some(if small {
                format!("{:.3} ms/request", seconds * 1000.0 / cell.ok.max(1) as f64)
            } else {
                format!(
                    "{:.2} s/GiB",
                    seconds / (cell.bytes.max(1) as f64 / (1024.0 * MIB as f64))
                )
            })
        });
        line.push_str(&format!(" {} |", cpu.as_deref().unwrap_or("–")));
    }
    let node = of(Target::MediaNode).map(value).unwrap_or(f64::NAN);
    for baseline in [Target::Bare, Target::Presigned] {
        if columns.contains(&baseline) {
            let base = of(baseline).map(value).unwrap_or(f64::NAN);
            line.push_str(&format!(" {:.2} |", node / base));
        }
    }
    println!("{line}");
}

async fn matrix(pair: &Pair, sizes: &[usize], concurrencies: &[usize]) {
    // Uploads and downloads are measured together (downloads read the uploads' objects)
    // and printed as two tables afterwards.
    let mut uploads = Vec::new();
    let mut downloads = Vec::new();
    for &size in sizes {
        let data = Bytes::from(content(size, 7));
        for &concurrency in concurrencies {
            let requests = requests_for(size, concurrency);
            let mut up = Vec::new();
            let mut down = Vec::new();
            for target in pair.targets(size) {
                let run = uuid::Uuid::new_v4().to_string();
                // Warm-up: connections, prepared statements, caches.
                let warm = concurrency.min(4);
                let (_, stored) = pair
                    .upload(target, data.clone(), warm, warm, &format!("{run}-warm"))
                    .await;
                pair.clean(target, stored).await;
                let cpu = pair.server.cpu_seconds();
                let (mut cell, stored) = pair
                    .upload(target, data.clone(), concurrency, requests, &run)
                    .await;
                let cpu_after_upload = pair.server.cpu_seconds();
                let mut read = if stored.is_empty() {
                    Cell::default()
                } else {
                    pair.download(target, &stored, concurrency, requests).await
                };
                if target == Target::MediaNode {
                    cell.server_cpu = Some(cpu_after_upload - cpu);
                    read.server_cpu = Some(pair.server.cpu_seconds() - cpu_after_upload);
                }
                eprintln!(
                    "{}, {}, c={concurrency}, {}: {} uploads ok {}, {} downloads ok {}",
                    pair.name,
                    label(size),
                    target.name(),
                    cell.ok,
                    cell.refused(),
                    read.ok,
                    read.refused()
                );
                pair.clean(target, stored).await;
                up.push((target, cell));
                down.push((target, read));
            }
            uploads.push((size, concurrency, up));
            downloads.push((size, concurrency, down));
        }
    }
    let columns = columns(pair);
    for (direction, lines) in [("upload", &uploads), ("download", &downloads)] {
        println!("\n### {}: {direction}\n", pair.name);
        let mut head = String::from("| size | concurrency |");
        for target in &columns {
            head.push_str(&format!(" {} |", target.name()));
        }
        if columns.contains(&Target::MediaNode) {
            head.push_str(" media-node CPU |");
        }
        if columns.contains(&Target::Bare) {
            head.push_str(" media-node / bare |");
        }
        if columns.contains(&Target::Presigned) {
            head.push_str(" media-node / presigned |");
        }
        let rule = "| --- ".repeat(head.matches(" |").count()) + "|";
        println!("{head}\n{rule}");
        for (size, concurrency, cells) in lines.iter() {
            print_line(&columns, *size, *concurrency, cells);
        }
    }
}

/// 128 concurrent 37 MiB uploads against a fresh server: its peak memory against the
/// budget, and every upload either stored or refused with nothing left behind.
async fn memory(settings: &Settings) {
    // `BENCH_MEMORY_CLIENTS` runs fewer (under a heap profiler, say).
    let clients: usize = std::env::var("BENCH_MEMORY_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    let budget = settings.limits.upload_memory_budget_bytes;
    let server = Server::start(settings, &[]);
    server.wait().await;
    let client = reqwest::Client::new();
    let data = Bytes::from(content(test_support::MAX_UPLOAD as usize, 9));
    let (before, _) = server.rss_kib();
    let tokens: Vec<String> = (0..clients)
        .map(|w| server.token_for(&format!("memory-{w}")))
        .collect();
    let url = server.url("/v1/media");
    let started = Instant::now();
    let cell = drive(clients, clients, move |_, worker| {
        let request = client
            .post(&url)
            .bearer_auth(&tokens[worker])
            .header("X-Gr-File-Extension", "mp4")
            .body(data.clone())
            .send();
        async move { drain(request.await, 201).await }
    })
    .await;
    let (after, peak) = server.rss_kib();
    if std::env::var("BENCH_MEMORY_STATS").is_ok_and(|v| v == "1") {
        server.malloc_stats();
    }
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let objects = storage.object_keys().await.unwrap().len();
    let pending = storage.all_pending_uploads().await.unwrap().len();
    let metadata =
        media_node::metadata::Metadata::connect(settings.database.url.expose(), 1).unwrap();
    let rows = metadata.count().await.unwrap();
    println!(
        "\n{clients} concurrent 37 MiB uploads on {}, budget {} MiB: server RSS {:.1} MiB before, \
         peak {:.1} MiB (budget + {:.1} MiB), {:.1} MiB once they ended; {} stored, refused: {}; \
         afterwards {rows} rows, \
         {objects} objects, {pending} unfinished multipart uploads; {:.1} s",
        if settings.storage.url.starts_with("s3://") {
            "PostgreSQL + S3"
        } else {
            "SQLite + local disk"
        },
        budget / MIB as u64,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 / 1024.0 - budget as f64 / MIB as f64,
        after as f64 / 1024.0,
        cell.ok,
        if cell.statuses.is_empty() {
            "none".to_owned()
        } else {
            cell.refused()
        },
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(cell.ok + cell.statuses.values().sum::<usize>(), clients);
    assert_eq!(
        rows as usize, cell.ok,
        "a row for every stored upload, no other"
    );
    assert_eq!(
        objects, cell.ok,
        "an object for every stored upload, no other"
    );
    assert_eq!(pending, 0, "no unfinished multipart upload");
}

#[tokio::main]
async fn main() {
    let backends = list("BENCH_BACKENDS", "s3,local");
    let sizes: Vec<usize> = list("BENCH_SIZES", "4k,100k,1m,37m")
        .iter()
        .map(|s| size_of(s))
        .collect();
    let concurrencies: Vec<usize> = list("BENCH_CONCURRENCY", "1,8,32,128")
        .iter()
        .map(|c| c.parse::<usize>().unwrap().clamp(1, MAX_WORKERS))
        .collect();
    println!(
        "media-node {} load benchmark, {}",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    let s3_dir = TempDir::new();
    let local_dir = TempDir::new();
    for backend in &backends {
        let (name, mut settings) = match backend.as_str() {
            // `scripts/bench` says which S3 server it started.
            "s3" => (
                match std::env::var("BENCH_S3").as_deref() {
                    Ok("s3s") => "PostgreSQL + S3 (s3s-fs)",
                    _ => "PostgreSQL + S3 (Garage)",
                },
                test_settings(Backend::Production, &s3_dir).await,
            ),
            "local" => (
                "SQLite + local disk",
                test_settings(Backend::Embedded, &local_dir).await,
            ),
            other => panic!("unknown backend {other}: s3 or local"),
        };
        settings.storage.part_size_bytes = PART_SIZE;
        let pair = Pair::start(name, &settings).await;
        matrix(&pair, &sizes, &concurrencies).await;
    }

    let memory_on = std::env::var("BENCH_MEMORY").unwrap_or_else(|_| "s3".to_owned());
    if memory_on != "0" {
        let dir = TempDir::new();
        let backend = if memory_on == "local" {
            Backend::Embedded
        } else {
            Backend::Production
        };
        let mut settings = test_settings(backend, &dir).await;
        settings.storage.part_size_bytes = PART_SIZE;
        memory(&settings).await;
    }
}
