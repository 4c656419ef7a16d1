//! Three `media-node serve` replicas behind a real HAProxy, run with the configuration that
//! ships in `deploy/haproxy/haproxy.cfg` (only its addresses and ports are filled in, from
//! the environment as the file expects), sharing one PostgreSQL database and one Garage
//! bucket prefix, with `APP_ENV=production` (so `media-node migrate` runs first, as the
//! migration Job does).
//!
//! 1. An upload through the balancer is served by every replica; 37 MiB stream through it.
//! 2. A rolling restart (SIGTERM, exit, start again on the same ports, one replica at a
//!    time) under continuous traffic fails no request.
//! 3. SIGKILL of a replica in the middle of a stream of uploads loses no acknowledged upload,
//!    and after a reaper pass nothing is left without its row.
//!
//! Needs HAProxy (the Debian package; `scripts/test` installs it).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media_node::auth::Authenticator;
use media_node::domain::MediaId;
use media_node::metadata::{MediaStatus, Metadata};
use media_node::storage::Storage;
use serde_json::Value;
use test_support::{
    content, free_port, media_node_command, sha256_hex, Backend, ServiceProcess, TempDir,
    MAX_UPLOAD,
};

/// One cluster at a time: each starts three replicas and a balancer on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than HAProxy's `fall × inter` (1 × 1 s) plus a check's own time: the balancer
/// takes a draining replica out before its listener closes.
const DRAIN_DELAY: &str = "3s";

/// HAProxy with the shipped configuration.
struct Haproxy {
    child: Child,
    port: u16,
    stats_port: u16,
    log: std::path::PathBuf,
}

impl Haproxy {
    fn binary() -> String {
        let on_path = Command::new("sh")
            .args(["-c", "command -v haproxy"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        on_path
            .or_else(|| {
                std::path::Path::new("/usr/sbin/haproxy")
                    .exists()
                    .then(|| "/usr/sbin/haproxy".to_owned())
            })
            .expect("HAProxy is needed: the Debian package haproxy (scripts/test installs it)")
    }

    /// Fills in the environment haproxy.cfg reads (deploy/haproxy/example.env names it)
    /// and starts it in the foreground, after `haproxy -c`.
    fn start(dir: &std::path::Path, replicas: &[(u16, u16)]) -> Self {
        let port = free_port();
        let stats_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("MEDIA_NODE_LB_ADDR".into(), "127.0.0.1".into()),
            ("MEDIA_NODE_LB_PORT".into(), port.to_string()),
            ("MEDIA_NODE_LB_STATS_PORT".into(), stats_port.to_string()),
        ];
        for (i, (public, admin)) in replicas.iter().enumerate() {
            let n = i + 1;
            env.push((format!("MEDIA_NODE_R{n}_ADDR"), "127.0.0.1".into()));
            env.push((format!("MEDIA_NODE_R{n}_PORT"), public.to_string()));
            env.push((format!("MEDIA_NODE_R{n}_ADMIN_PORT"), admin.to_string()));
        }
        // Every variable of example.env is filled in, and nothing else is needed.
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/haproxy/example.env"
        ))
        .unwrap();
        for line in example
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
        {
            let key = line.split('=').next().unwrap();
            assert!(env.iter().any(|(k, _)| k == key), "{key} is not filled in");
        }
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
        let binary = Self::binary();
        let check = Command::new(&binary)
            .args(["-c", "-f", config])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&binary)
            .args(["-db", "-f", config])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            stats_port,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Each backend server's state (`UP`, `DOWN`, ...) from the stats page.
    async fn states(&self) -> HashMap<String, String> {
        let Ok(response) = reqwest::get(format!(
            "http://127.0.0.1:{}/stats;csv;norefresh",
            self.stats_port
        ))
        .await
        else {
            return HashMap::new();
        };
        let text = response.text().await.unwrap_or_default();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status)) =
            (column("pxname"), column("svname"), column("status"))
        else {
            return HashMap::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[px] == "media_node" && f[sv].starts_with('r'))
            .map(|f| (f[sv].to_owned(), f[status].to_owned()))
            .collect()
    }

    /// Waits (bounded) until the balancer's health checks have `server` in `state`.
    async fn wait_state(&self, server: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let states = self.states().await;
            if states.get(server).map(String::as_str) == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} never became {state}: {states:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three replicas on fixed ports, the balancer in front, and ways to look behind them.
struct Cluster {
    dir: TempDir,
    env: Vec<(&'static str, String)>,
    replicas: Vec<Option<ServiceProcess>>,
    ports: Vec<(u16, u16)>,
    haproxy: Haproxy,
    token: String,
    metadata: Metadata,
    storage: Storage,
    client: reqwest::Client,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    async fn start() -> Self {
        let serial = SERIAL.lock().await;
        let dir = TempDir::new();
        let settings = test_support::test_settings(Backend::Production, &dir).await;
        let mut env = test_support::process_env(&settings);
        env.extend([
            ("APP_ENV", "production".to_owned()),
            ("MEDIA_NODE__SERVER__DRAIN_DELAY", DRAIN_DELAY.to_owned()),
            ("MEDIA_NODE__SERVER__SHUTDOWN_TIMEOUT", "15s".to_owned()),
            ("MEDIA_NODE__LOG__FORMAT", "json".to_owned()),
        ]);
        // Production serve only checks the schema: migrate once, as the Job does.
        let migrated = media_node_command(&dir.0)
            .arg("migrate")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            migrated.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut replicas = Vec::new();
        for (port, admin) in &ports {
            replicas.push(Some(ServiceProcess::start_on(&dir.0, *port, *admin, &env)));
        }
        for replica in replicas.iter_mut().flatten() {
            replica.wait_ready().await;
        }
        let haproxy = Haproxy::start(&dir.0, &ports);
        for server in ["r1", "r2", "r3"] {
            haproxy.wait_state(server, "UP").await;
        }
        let token = Authenticator::from_settings(&settings.auth, false)
            .unwrap()
            .mint("acct", Duration::from_secs(3600), None)
            .unwrap();
        let metadata = Metadata::connect(settings.database.url.expose(), 2).unwrap();
        let storage = Storage::from_settings(&settings.storage).unwrap();
        Self {
            dir,
            env,
            replicas,
            ports,
            haproxy,
            token,
            metadata,
            storage,
            client: client(),
            _serial: serial,
        }
    }

    fn replica(&self, i: usize) -> &ServiceProcess {
        self.replicas[i].as_ref().unwrap()
    }

    /// SIGTERM to replica `i`, then its exit (status and logs), bounded.
    async fn stop(&mut self, i: usize) -> (std::process::ExitStatus, String) {
        let mut replica = self.replicas[i].take().unwrap();
        replica.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = replica.child.try_wait().unwrap() {
                return (status, replica.logs());
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM\n{}",
                replica.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replica `i` started again on its ports; back once ready and UP at the balancer.
    async fn start_again(&mut self, i: usize) {
        let (port, admin) = self.ports[i];
        let mut replica = ServiceProcess::start_on(&self.dir.0, port, admin, &self.env);
        replica.wait_ready().await;
        self.replicas[i] = Some(replica);
        self.haproxy.wait_state(&format!("r{}", i + 1), "UP").await;
    }

    async fn upload(&self, body: reqwest::Body) -> Result<(u16, Option<String>), String> {
        upload(
            &self.client,
            &self.haproxy.url("/v1/media"),
            &self.token,
            body,
        )
        .await
    }

    /// GET of `id` at `base` (the balancer or a replica): status and the body's SHA-256.
    async fn download(&self, base: &str, id: &str) -> Result<(u16, String), String> {
        let response = self
            .client
            .get(format!("{base}/v1/media/{id}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| format!("{e:?}"))?;
        Ok((status, sha256_hex(&body)))
    }

    fn all_logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir.0).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(40).collect();
                text.push_str(&format!("==> {}\n", path.display()));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }
}

/// An upload: its status and, for a 201, the id (else the body).
async fn upload(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: reqwest::Body,
) -> Result<(u16, Option<String>), String> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("X-Gr-File-Extension", "bin")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    if status == 201 {
        let json: Value = serde_json::from_str(&text).map_err(|e| format!("{e:?}"))?;
        Ok((status, json["media"][0]["id"].as_str().map(str::to_owned)))
    } else {
        Ok((status, Some(text)))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A body sent in chunks of `chunk` bytes, `pause` apart (a client on a slow link).
fn trickle(data: Vec<u8>, chunk: usize, pause: Duration, sent: Arc<AtomicUsize>) -> reqwest::Body {
    let chunks: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut rest| {
        let sent = sent.clone();
        async move {
            let chunk = rest.next()?;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            sent.fetch_add(1, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk), rest))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_what_the_balancer_took_and_37_mib_stream_through() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let cluster = Cluster::start().await;

        // A small upload through the balancer, read back from each replica directly.
        let data = content(300 * 1024, 90);
        let (status, id) = cluster.upload(data.clone().into()).await.unwrap();
        assert_eq!(status, 201, "{id:?}");
        let id = id.unwrap();
        for i in 0..3 {
            let base = cluster.replica(i).url("");
            let (status, sha) = cluster.download(&base, &id).await.unwrap();
            assert_eq!(status, 200, "replica {}", i + 1);
            assert_eq!(sha, sha256_hex(&data), "replica {}", i + 1);
        }
        println!("an upload through the balancer: downloaded from all 3 replicas directly");

        // 37 MiB, chunked, in 1 MiB pieces: a replica is already storing it while the
        // client is still sending, so the balancer streams the body instead of buffering.
        let big = content(MAX_UPLOAD as usize, 91);
        let chunks = big.len().div_ceil(1024 * 1024);
        let sent = Arc::new(AtomicUsize::new(0));
        let body = trickle(
            big.clone(),
            1024 * 1024,
            Duration::from_millis(40),
            sent.clone(),
        );
        let upload = {
            let client = cluster.client.clone();
            let url = cluster.haproxy.url("/v1/media");
            let token = cluster.token.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("X-Gr-File-Extension", "mp4")
                    .body(body)
                    .send()
                    .await
            })
        };
        let mut streamed_early = false;
        while !upload.is_finished() {
            let mut in_flight = 0.0;
            for i in 0..3 {
                in_flight += cluster.replica(i).metric("media_uploads_in_flight").await;
            }
            if in_flight >= 1.0 && sent.load(Ordering::SeqCst) < chunks {
                streamed_early = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let response = upload.await.unwrap().unwrap();
        assert_eq!(response.status(), 201);
        let json: Value = response.json().await.unwrap();
        let big_id = json["media"][0]["id"].as_str().unwrap().to_owned();
        assert!(
            streamed_early,
            "a replica had the upload in flight before the client sent its last chunk"
        );
        let (status, sha) = cluster
            .download(&cluster.haproxy.url(""), &big_id)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(sha, sha256_hex(&big));
        println!(
            "37 MiB ({} bytes) streamed through the balancer: 201, SHA-256 equal",
            big.len()
        );

        // One byte more is the service's own 413 (the balancer has no limit of its own),
        // refused by its Content-Length before the body is read.
        let mut over = big;
        over.push(0);
        let response = cluster
            .client
            .post(cluster.haproxy.url("/v1/media"))
            .bearer_auth(&cluster.token)
            .header("X-Gr-File-Extension", "mp4")
            .body(over)
            .send()
            .await
            .unwrap();
        test_support::assert_error(response, 413, 1009).await;

        // The admin endpoints are not reachable through the balancer; the balancer's request
        // id reaches the replica (which answers with it) when the client sent none. The
        // balancer's own answers are in the API's error shape.
        for path in [
            "/metrics",
            "/livez",
            "/readyz",
            "/admin/accounts/acct/purge",
        ] {
            let response = cluster
                .client
                .get(cluster.haproxy.url(path))
                .send()
                .await
                .unwrap();
            test_support::assert_error(response, 404, 1006).await;
        }
        let response = cluster
            .client
            .get(cluster.haproxy.url(&format!("/v1/media/{id}")))
            .bearer_auth(&cluster.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // HAProxy's unique-id-format: client address:port_frontend address:port_time_...
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            request_id.starts_with("7F000001:") && request_id.matches('_').count() == 3,
            "the balancer's request id reaches the replica: {request_id}"
        );
        println!(
            "over the limit: the service's 413; admin paths: 404 at the balancer; request id \
             {request_id}"
        );

        // No replica left: the balancer's 503 in the API's error shape, with Retry-After.
        let mut cluster = cluster;
        for i in 0..3 {
            cluster.replica(i).signal("KILL");
        }
        for server in ["r1", "r2", "r3"] {
            cluster.haproxy.wait_state(server, "DOWN").await;
        }
        let response = cluster
            .client
            .get(cluster.haproxy.url(&format!("/v1/media/{id}")))
            .bearer_auth(&cluster.token)
            .send()
            .await
            .unwrap();
        assert!(response.headers().contains_key("retry-after"));
        test_support::assert_error(response, 503, 1011).await;
        cluster.replicas.clear();
        println!("no replica ready: the balancer's 503, JSON, Retry-After");
    })
    .await
    .expect("the test finishes in time");
}

/// What the traffic loops saw.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    verified: AtomicU64,
    /// Of `sent`, the slow uploads.
    slow: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_fails_no_request() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut cluster = Cluster::start().await;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let base = cluster.haproxy.url("");
        let mut loops = tokio::task::JoinSet::new();
        // Four clients, each uploading (up to 512 KiB) and downloading in turn through the
        // balancer, as fast as they can.
        for worker in 0..4u8 {
            let (counts, stop, base) = (counts.clone(), stop.clone(), base.clone());
            let client = cluster.client.clone();
            let token = cluster.token.clone();
            loops.spawn(async move {
                let mut n: usize = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let len = 1024 + (n * 7919 + usize::from(worker) * 104_729) % (512 * 1024);
                    let data = content(len, worker.wrapping_mul(31).wrapping_add(n as u8));
                    counts.sent.fetch_add(1, Ordering::SeqCst);
                    let answer = client
                        .post(format!("{base}/v1/media"))
                        .bearer_auth(&token)
                        .header("X-Gr-File-Extension", "bin")
                        .body(data.clone())
                        .send()
                        .await;
                    let id = match answer {
                        Ok(r) => {
                            counts.answered.fetch_add(1, Ordering::SeqCst);
                            let status = r.status().as_u16();
                            let text = r.text().await.unwrap_or_default();
                            if status != 201 {
                                counts.fail(format!("upload: {status} {text}"));
                                continue;
                            }
                            let json: Value = serde_json::from_str(&text).unwrap();
                            json["media"][0]["id"].as_str().unwrap().to_owned()
                        }
                        Err(e) => {
                            counts.fail(format!("upload: {e:?}"));
                            continue;
                        }
                    };
                    counts.sent.fetch_add(1, Ordering::SeqCst);
                    let answer = client
                        .get(format!("{base}/v1/media/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match answer {
                        Ok(r) => {
                            counts.answered.fetch_add(1, Ordering::SeqCst);
                            let status = r.status().as_u16();
                            match r.bytes().await {
                                Ok(body) if status == 200 && body[..] == data[..] => {
                                    counts.verified.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(body) => counts.fail(format!(
                                    "download: {status}, {} bytes of {len}",
                                    body.len()
                                )),
                                Err(e) => counts.fail(format!("download body: {e:?}")),
                            }
                        }
                        Err(e) => counts.fail(format!("download: {e:?}")),
                    }
                }
            });
        }

        // And two clients on a slow link: 6 MiB uploads over about five seconds each, longer
        // than the drain delay, so that every stop finds long uploads in flight that must
        // finish where they are after the listener has closed.
        for worker in 10..12u8 {
            let (counts, stop, url) = (counts.clone(), stop.clone(), format!("{base}/v1/media"));
            let (client, token) = (cluster.client.clone(), cluster.token.clone());
            loops.spawn(async move {
                let mut n: u8 = 0;
                while !stop.load(Ordering::SeqCst) {
                    n = n.wrapping_add(1);
                    let data = content(6 * 1024 * 1024, worker.wrapping_mul(13).wrapping_add(n));
                    let body = trickle(
                        data,
                        256 * 1024,
                        Duration::from_millis(200),
                        Arc::new(AtomicUsize::new(0)),
                    );
                    counts.sent.fetch_add(1, Ordering::SeqCst);
                    counts.slow.fetch_add(1, Ordering::SeqCst);
                    match upload(&client, &url, &token, body).await {
                        Ok((201, _)) => {
                            counts.answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, body)) => {
                            counts.answered.fetch_add(1, Ordering::SeqCst);
                            counts.fail(format!("slow upload: {status} {body:?}"));
                        }
                        Err(e) => counts.fail(format!("slow upload: {e}")),
                    }
                }
            });
        }

        // A rollout: one replica at a time is stopped, exits, and comes back on its ports.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..3 {
            let before = counts.sent.load(Ordering::SeqCst);
            // A stop that finds uploads in flight (there is nearly always one).
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut in_flight = 0.0;
            while in_flight < 1.0 && Instant::now() < deadline {
                in_flight = cluster.replica(i).metric("media_uploads_in_flight").await;
                if in_flight < 1.0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let signalled = Instant::now();
            let (status, logs) = cluster.stop(i).await;
            let stop_took = signalled.elapsed();
            assert!(status.success(), "replica {} exit {status}\n{logs}", i + 1);
            // A clean stop: nothing cut off at the deadline, no clean-up left over.
            let complaints: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
                .collect();
            assert!(complaints.is_empty(), "replica {}: {complaints:#?}", i + 1);
            cluster.start_again(i).await;
            println!(
                "replica r{} stopped with {in_flight} uploads in flight (exit 0 after {:.1} s), \
                 restarted; {} requests meanwhile, {} failed so far",
                i + 1,
                stop_took.as_secs_f64(),
                counts.sent.load(Ordering::SeqCst) - before,
                counts.failed.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
        while loops.join_next().await.is_some() {}

        let (sent, answered, failed, verified) = (
            counts.sent.load(Ordering::SeqCst),
            counts.answered.load(Ordering::SeqCst),
            counts.failed.load(Ordering::SeqCst),
            counts.verified.load(Ordering::SeqCst),
        );
        println!(
            "rolling restart: requests sent {sent} (of them slow 6 MiB uploads {}), answered \
             {answered}, failed {failed}, downloads verified {verified}",
            counts.slow.load(Ordering::SeqCst)
        );
        let errors = counts.errors.lock().unwrap().clone();
        assert!(
            failed == 0,
            "{failed} requests failed: {errors:#?}\n{}\n{}",
            cluster.haproxy.logs(),
            cluster.all_logs()
        );
        assert_eq!(sent, answered);
        assert!(verified > 0);
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_no_acknowledged_upload() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start().await;
        let url = cluster.haproxy.url("/v1/media");

        type Outcome = (Vec<u8>, Result<(u16, Option<String>), String>);
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = tokio::task::JoinSet::new();
        // Six clients uploading 6 to 12 MiB (multipart: parts are 5 MiB here), in 256 KiB
        // chunks with short pauses, so that uploads are under way on every replica at any
        // time.
        for worker in 0..6u8 {
            let (outcomes, stop, url) = (outcomes.clone(), stop.clone(), url.clone());
            let (client, token) = (cluster.client.clone(), cluster.token.clone());
            loops.spawn(async move {
                let mut n: usize = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let len = 6 * 1024 * 1024
                        + (n * 2_654_435 + usize::from(worker) * 1_000_003) % (6 * 1024 * 1024);
                    let data = content(len, worker.wrapping_mul(17).wrapping_add(n as u8));
                    let body = trickle(
                        data.clone(),
                        256 * 1024,
                        Duration::from_millis(5),
                        Arc::new(AtomicUsize::new(0)),
                    );
                    let answer = upload(&client, &url, &token, body).await;
                    outcomes.lock().unwrap().push((data, answer));
                }
            });
        }

        // SIGKILL once the victim has uploads under way and multipart uploads are open.
        let victim = cluster.replica(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (in_flight, open) = loop {
            let in_flight = victim.metric("media_uploads_in_flight").await;
            let open = cluster.storage.all_pending_uploads().await.unwrap().len();
            if in_flight >= 2.0 && open >= 4 {
                break (in_flight, open);
            }
            assert!(Instant::now() < deadline, "no uploads reached the victim");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let killed = Command::new("kill")
            .args(["-KILL", &victim.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let killed_at = Instant::now();
        println!(
            "SIGKILL to r2 with {in_flight} uploads in flight there ({open} multipart uploads \
             open on the three replicas)"
        );
        // The stream goes on through the other two replicas for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::SeqCst);
        while loops.join_next().await.is_some() {}

        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
        let sent = outcomes.len();
        let mut acknowledged = Vec::new();
        let mut failed = 0;
        for (data, answer) in &outcomes {
            match answer {
                Ok((201, Some(id))) => acknowledged.push((id.clone(), sha256_hex(data))),
                Ok((status, body)) => {
                    assert!(
                        *status >= 500,
                        "an upload got neither 201 nor an error: {status} {body:?}"
                    );
                    // The balancer's 502 too is in the API's error shape.
                    let json: Value = serde_json::from_str(body.as_deref().unwrap_or(""))
                        .unwrap_or_else(|_| panic!("not a JSON error: {status} {body:?}"));
                    assert!(json["errors"][0]["code"].is_u64(), "{json}");
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
        }
        let answered = outcomes.iter().filter(|(_, a)| a.is_ok()).count();
        if failed == 0 {
            // Rare: every upload the victim held had sent its last byte. The properties
            // below hold all the same; the counts say the crash cut nothing this time.
            println!("the crash cut off no upload (of {sent})");
        }

        // Every acknowledged upload is there, byte for byte.
        let base = cluster.haproxy.url("");
        let mut verified = 0;
        for (id, sha) in &acknowledged {
            let (status, got) = cluster.download(&base, id).await.unwrap();
            assert_eq!(status, 200, "acknowledged upload {id} is lost");
            assert_eq!(&got, sha, "acknowledged upload {id} changed");
            verified += 1;
        }

        // What the crash left: rows of uploads that never finished, their unfinished
        // multipart uploads or objects.
        let left_rows = cluster
            .metadata
            .count()
            .await
            .unwrap()
            .saturating_sub(acknowledged.len() as u64);
        let left_multipart = cluster.storage.all_pending_uploads().await.unwrap().len();
        println!(
            "after the crash: {left_rows} rows of unfinished uploads, {left_multipart} \
             unfinished multipart uploads; errors seen: {:?}",
            outcomes
                .iter()
                .filter_map(|(_, a)| match a {
                    Ok((201, _)) => None,
                    Ok((status, _)) => Some(status.to_string()),
                    // The balancer closed the connection while the body was still
                    // being sent (its replica was gone), before a complete answer.
                    Err(e) if e.contains("IncompleteMessage") => {
                        Some("connection closed before a complete answer".into())
                    }
                    Err(e) => Some(e.chars().take(120).collect()),
                })
                .collect::<Vec<_>>()
        );

        // The crashed uploads' rows are reaped once they are stale (4 s, the minimum).
        let wait = Duration::from_millis(4500).saturating_sub(killed_at.elapsed());
        tokio::time::sleep(wait).await;
        let reap = media_node_command(&cluster.dir.0)
            .args(["reap", "--once"])
            .envs(cluster.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "4s")
            .output()
            .unwrap();
        assert!(
            reap.status.success(),
            "reap: {}{}",
            String::from_utf8_lossy(&reap.stdout),
            String::from_utf8_lossy(&reap.stderr)
        );
        let reaped = String::from_utf8_lossy(&reap.stdout).trim().to_owned();

        // No object without its ready row, no row that was not acknowledged, no unfinished
        // multipart upload.
        let keys = cluster.storage.object_keys().await.unwrap();
        let mut orphans = Vec::new();
        for key in &keys {
            let id = MediaId::parse(key.rsplit('/').next().unwrap()).unwrap();
            match cluster.metadata.get(id).await.unwrap() {
                Some(row) if row.status == MediaStatus::Ready => {}
                other => orphans.push((key.clone(), other.map(|r| r.status))),
            }
        }
        let pending = cluster.storage.all_pending_uploads().await.unwrap();
        let rows = cluster.metadata.count().await.unwrap();
        println!(
            "crash: uploads sent {sent}, answered {answered}, acknowledged (201) {}, failed \
             {failed}, verified {verified}, lost {}; reaper {reaped}; objects {}, rows {rows}, \
             orphans {}, unfinished multipart uploads {}",
            acknowledged.len(),
            acknowledged.len() - verified,
            keys.len(),
            orphans.len(),
            pending.len()
        );
        assert!(orphans.is_empty(), "orphan objects: {orphans:?}");
        assert!(
            pending.is_empty(),
            "unfinished multipart uploads: {}",
            pending.len()
        );
        // Every row is a finished upload with its object (the objects map one to one to
        // ready rows, and there are as many). An upload the crash cut off between its
        // commit and its 201 would be stored although its client saw an error: allowed
        // (it expires like any other), and counted.
        assert_eq!(keys.len() as u64, rows, "a row without its object");
        assert!(rows >= acknowledged.len() as u64);
        println!(
            "stored although the client saw an error: {}",
            rows - acknowledged.len() as u64
        );
    })
    .await
    .expect("the test finishes in time");
}
