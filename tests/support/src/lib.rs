//! What the tests and benchmarks share: a real media-node started on port 0 for one test, on
//! one of the two backend pairs — SQLite + local disk (the embedded default) or PostgreSQL +
//! the S3 server started by `scripts/s3-server` — each test with its own database and its own
//! key prefix; the `media-node` binary as a process; a TCP proxy that takes a server off the
//! network; seeded media, test content and the checks of the contract's answers.
//!
//! A library of its own (a dev-dependency of media-node), so that it is built once for every
//! test binary and benchmark, and each uses what it needs of it.

mod answers;
mod app;
mod data;
mod process;
mod proxy;
mod services;

pub use answers::{assert_error, labelled_value, metric_value};
pub use app::{RawResponse, TestApp};
pub use data::{content, files_under, seed, seed_expired, sha256_hex};
pub use process::{free_port, media_node_binary, media_node_command, process_env, ServiceProcess};
pub use proxy::TcpProxy;
pub use services::{create_database, test_settings, Services, TempDir};

/// The contract's largest upload: 37 MiB.
pub const MAX_UPLOAD: u64 = 38_797_312;
/// The part size the tests run with (the S3 minimum), so that a few MiB make several parts.
pub const PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + local disk.
    Embedded,
    /// PostgreSQL + S3 (Garage).
    Production,
}

/// Declares a test body `async fn name(backend: Backend)` once and runs it on both pairs.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_local_disk() {
                    super::$name($crate::Backend::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_s3() {
                    super::$name($crate::Backend::Production).await
                }
            }
        )+
    };
}
