//! The `media-node` binary as its own process.

use std::path::PathBuf;
use std::time::Duration;

use media_node::settings::Settings;

use crate::answers::metric_value;

/// The `media-node` executable cargo built with the test or benchmark that runs this: those
/// are in `<target>/<profile>/deps/`, the package's binaries one folder up (cargo builds the
/// binaries of a package before its integration tests and benchmarks).
pub fn media_node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary in <target>/<profile>/deps");
    let binary = profile_dir.join(format!("media-node{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} not found: run the tests through cargo (scripts/test)",
        binary.display()
    );
    binary
}

/// The `media-node` binary, run in `dir` with no `MEDIA_NODE__`, `AWS_`, `APP_ENV` or
/// `RUST_LOG` variables inherited from the test's environment.
pub fn media_node_command(dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(media_node_binary());
    command
        .current_dir(dir)
        .env_remove("APP_ENV")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("MEDIA_NODE__") || key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `media-node serve` process on free loopback ports, its output in a log file.
pub struct ServiceProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub admin_port: u16,
    log: PathBuf,
}

impl ServiceProcess {
    pub fn start(dir: &std::path::Path, envs: &[(&str, String)]) -> Self {
        Self::start_on(dir, free_port(), free_port(), envs)
    }

    /// `start` on given ports: a replica started again where it was (a rollout's new pod
    /// behind the same endpoint). Each start logs to a file of its own.
    pub fn start_on(
        dir: &std::path::Path,
        port: u16,
        admin_port: u16,
        envs: &[(&str, String)],
    ) -> Self {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("media-node-{port}-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = media_node_command(dir)
            .env("MEDIA_NODE__SERVER__HOST", "127.0.0.1")
            .env("MEDIA_NODE__SERVER__PORT", port.to_string())
            .env("MEDIA_NODE__ADMIN__HOST", "127.0.0.1")
            .env("MEDIA_NODE__ADMIN__PORT", admin_port.to_string())
            .env("MEDIA_NODE__SERVER__WORKERS", "1")
            // Tests that exercise the drain set their own.
            .env("MEDIA_NODE__SERVER__DRAIN_DELAY", "100ms")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            admin_port,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let url = self.admin_url("/readyz");
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("media-node exited early: {status}\n{}", self.logs());
            }
            if let Ok(response) = reqwest::get(&url).await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("media-node did not become ready\n{}", self.logs());
    }

    /// The value of an unlabelled counter or gauge on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not exported"))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (bounded) for the process to exit; its status and logs.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.logs());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within {within:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(40))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment that makes a `media-node` process use the backends of `settings`.
pub fn process_env(settings: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "MEDIA_NODE__DATABASE__URL",
            settings.database.url.expose().to_owned(),
        ),
        ("MEDIA_NODE__STORAGE__URL", settings.storage.url.clone()),
        (
            "MEDIA_NODE__STORAGE__PART_SIZE_BYTES",
            settings.storage.part_size_bytes.to_string(),
        ),
    ];
    if let Some(secret) = &settings.auth.hs256_secret {
        env.push(("MEDIA_NODE__AUTH__HS256_SECRET", secret.expose().to_owned()));
    }
    if let Some(secret) = &settings.auth.url_signing_secret {
        env.push((
            "MEDIA_NODE__AUTH__URL_SIGNING_SECRET",
            secret.expose().to_owned(),
        ));
    }
    let s3 = &settings.storage.s3;
    if let Some(endpoint) = &s3.endpoint {
        env.push(("MEDIA_NODE__STORAGE__S3__ENDPOINT", endpoint.clone()));
        env.push((
            "MEDIA_NODE__STORAGE__S3__ALLOW_HTTP",
            s3.allow_http.to_string(),
        ));
    }
    if let Some(streamed) = s3.streamed_put {
        env.push((
            "MEDIA_NODE__STORAGE__S3__STREAMED_PUT",
            streamed.to_string(),
        ));
    }
    env.push((
        "MEDIA_NODE__STORAGE__S3__STREAMED_PUT_IDLE_TIMEOUT",
        format!("{}ms", s3.streamed_put_idle_timeout.as_millis()),
    ));
    if let Some(region) = &s3.region {
        env.push(("MEDIA_NODE__STORAGE__S3__REGION", region.clone()));
    }
    if let Some(key) = &s3.access_key_id {
        env.push(("MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID", key.clone()));
    }
    if let Some(secret) = &s3.secret_access_key {
        env.push((
            "MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY",
            secret.expose().to_owned(),
        ));
    }
    env
}
