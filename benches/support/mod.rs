//! What the benchmarks share: a release-built media-node as its own process.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use media_node::settings::Settings;

/// The binary measured: this build's, or `MEDIA_NODE_BIN` (another build, for a before and
/// after in one run).
pub fn binary() -> String {
    std::env::var("MEDIA_NODE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_media-node").to_owned())
}

/// Settings for the measured server from `BENCH_SERVER_ENV` (`KEY=VALUE,KEY=VALUE`, e.g.
/// `MEDIA_NODE__DATABASE__MAX_CONNECTIONS=2`), for trying a setting.
pub fn server_env() -> Vec<(String, String)> {
    std::env::var("BENCH_SERVER_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
pub const MIB: usize = 1024 * 1024;

pub struct Server {
    child: Child,
    port: u16,
    auth: media_node::settings::AuthSettings,
}

impl Server {
    /// A `media-node` process over the backends of `settings`, with `extra` environment.
    pub fn start(settings: &Settings, extra: &[(&str, String)]) -> Self {
        let port = free_port();
        let child = Command::new(binary())
            .env("MEDIA_NODE__SERVER__HOST", "127.0.0.1")
            .env("MEDIA_NODE__SERVER__PORT", port.to_string())
            .env("MEDIA_NODE__ADMIN__HOST", "127.0.0.1")
            .env("MEDIA_NODE__ADMIN__PORT", free_port().to_string())
            .env("MEDIA_NODE__LOG__LEVEL", "warn")
            .envs(test_support::process_env(settings))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(server_env())
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

    pub async fn wait(&self) {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A token of `account`, valid for an hour.
    pub fn token_for(&self, account: &str) -> String {
        media_node::auth::Authenticator::from_settings(&self.auth, true)
            .unwrap()
            .mint(account, Duration::from_secs(3600), None)
            .unwrap()
    }

    /// glibc's `malloc_stats()` of the server (arenas and mapped chunks), printed on its
    /// stderr through gdb: where memory is held, for `BENCH_MEMORY_STATS=1`.
    pub fn malloc_stats(&self) {
        let status = Command::new("gdb")
            .args(["-p", &self.child.id().to_string(), "-batch", "-ex"])
            .arg("call (void) malloc_stats()")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("malloc_stats: gdb did not run ({status:?})");
        }
    }

    /// CPU time the process has used so far, user and system (utime + stime of
    /// `/proc/<pid>/stat`), in seconds: on shared cores, the figure that does not depend on
    /// how the cores were split between the client, the servers and media-node.
    pub fn cpu_seconds(&self) -> f64 {
        static TICKS_PER_SECOND: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        let ticks = *TICKS_PER_SECOND.get_or_init(|| {
            let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        });
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses: the state is the
        // third field of the line, utime the 14th and stime the 15th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let field = |n: usize| fields[n - 3].parse::<f64>().unwrap();
        (field(14) + field(15)) / ticks
    }

    /// Resident set size now and at its peak (KiB), from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
