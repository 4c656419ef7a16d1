//! Object storage: one `Arc<dyn ObjectStore>` (local disk or S3-compatible), the key scheme,
//! and the single place where a storage error becomes "not found" or "unavailable".
//!
//! Keys are `<prefix>/<media id>`: nothing the client sends ever reaches a key.

mod error;
mod resumable;
mod s3_uploads;
mod streamed_put;
mod streaming;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore,
    ObjectStoreExt, RetryConfig,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub use error::{StorageError, StorageFault};
pub use resumable::{AppendFile, APPEND_BUFFER, MAX_PART_NUMBER};
pub use s3_uploads::PendingUpload;
pub use streamed_put::StreamedPut;

use crate::domain::MediaId;
use crate::settings::StorageSettings;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The object store with the service's key scheme.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The store for streamed GETs (S3: a client with no whole-request deadline).
    reads: Arc<dyn ObjectStore>,
    read_idle_timeout: Duration,
    prefix: Option<Path>,
    kind: Kind,
    /// The client of streamed single PUTs (`storage.s3.streamed_put`), when they are on.
    puts: Option<Arc<streamed_put::PutClient>>,
    description: String,
    /// Durations of calls by operation, once metrics are attached.
    timings: Option<prometheus::HistogramVec>,
}

/// What differs between the two stores for unfinished uploads.
#[derive(Debug, Clone)]
enum Kind {
    /// Local disk: an unfinished upload is a staging file `<object path>#<n>` beside the
    /// object, found by its name.
    Local { root: std::path::PathBuf },
    /// S3: multipart uploads by id (object_store's `MultipartStore`), and the listing that
    /// finds an upload whose id was never saved.
    S3 {
        store: Arc<AmazonS3>,
        lister: Arc<s3_uploads::UploadLister>,
    },
}

/// A multipart upload's id, as S3 knows it.
pub type UploadId = object_store::MultipartId;

/// Staging files of one object tried on local disk: object_store numbers them from 1, and
/// an id is only ever uploaded once; `#0` is a resumable upload's append-only file.
const LOCAL_STAGING_SUFFIXES: std::ops::RangeInclusive<u32> = 0..=8;

impl Storage {
    /// Builds the store from `storage.url`: `file://DIR` or `s3://BUCKET[/PREFIX]`.
    pub fn from_settings(settings: &StorageSettings) -> anyhow::Result<Self> {
        let url = settings.url.as_str();
        if let Some(dir) = url.strip_prefix("file://") {
            anyhow::ensure!(!dir.is_empty(), "storage.url file:// needs a directory");
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            let store = LocalFileSystem::new_with_prefix(dir)
                .with_context(|| format!("opening {dir}"))?
                .with_automatic_cleanup(true);
            let root = std::fs::canonicalize(dir).with_context(|| format!("opening {dir}"))?;
            let store: Arc<dyn ObjectStore> = Arc::new(store);
            Ok(Self {
                reads: store.clone(),
                read_idle_timeout: settings.read_idle_timeout,
                store,
                prefix: None,
                kind: Kind::Local { root },
                puts: None,
                description: format!("file://{dir}"),
                timings: None,
            })
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = match rest.split_once('/') {
                Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
                None => (rest, ""),
            };
            anyhow::ensure!(!bucket.is_empty(), "storage.url s3:// needs a bucket");
            let allow_http = settings.s3.allow_http || env_flag("AWS_ALLOW_HTTP");
            // Control calls must fail within seconds when storage is down (503 to the
            // client, the row rolled back), not hang for minutes.
            let control = ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(settings.request_timeout)
                .with_allow_http(allow_http);
            let s3 = build_s3(bucket, settings, control.clone())?;
            let lister = s3_uploads::UploadLister::new(&s3, bucket, settings, &control)?;
            let reads =
                streaming::read_client(CONNECT_TIMEOUT, settings.read_idle_timeout, allow_http);
            let reads = build_s3(bucket, settings, reads)?;
            let s3 = Arc::new(s3);
            let puts = settings
                .s3
                .streams_puts()
                .then(|| {
                    streamed_put::PutClient::new(
                        CONNECT_TIMEOUT,
                        settings.read_idle_timeout,
                        POOL_IDLE_TIMEOUT,
                    )
                })
                .transpose()?
                .map(Arc::new);
            Ok(Self {
                store: s3.clone(),
                reads: Arc::new(reads),
                read_idle_timeout: settings.read_idle_timeout,
                prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
                kind: Kind::S3 {
                    store: s3,
                    lister: Arc::new(lister),
                },
                puts,
                description: format!("s3://{bucket}/{prefix}"),
                timings: None,
            })
        } else {
            anyhow::bail!("unsupported storage.url {url:?}: expected file://DIR or s3://BUCKET")
        }
    }

    /// Records the duration of every call in `timings`, labelled by operation.
    pub fn with_timings(mut self, timings: prometheus::HistogramVec) -> Self {
        self.timings = Some(timings);
        self
    }

    /// A timer for one call of `operation`; it records when dropped.
    pub fn timer(&self, operation: &str) -> Option<prometheus::HistogramTimer> {
        self.timings
            .as_ref()
            .map(|h| h.with_label_values(&[operation]).start_timer())
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object key of a media id.
    pub fn key(&self, id: MediaId) -> Path {
        match &self.prefix {
            Some(prefix) => prefix.clone().join(id.to_string()),
            None => Path::from(id.to_string()),
        }
    }

    /// An object, or a range of it: the store's answer, read with `body`.
    pub async fn get(&self, id: MediaId, range: Option<std::ops::Range<u64>>) -> Result<GetResult> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let _timer = self.timer("get");
        Ok(self.reads.get_opts(&self.key(id), options).await?)
    }

    /// The bytes of a `get` as a stream that fails when storage stalls longer than
    /// `storage.read_idle_timeout` (downloads use this).
    pub fn stream(&self, result: GetResult) -> BoxStream<'static, Result<Bytes>> {
        streaming::ReadIdle::new(Self::body(result), self.read_idle_timeout).boxed()
    }

    /// The bytes of a `get`, as a stream. Local files are read in large chunks: the
    /// store's own file stream reads 8 KiB per blocking call, too slow for 37 MiB files.
    pub fn body(result: GetResult) -> BoxStream<'static, Result<Bytes>> {
        match result.payload {
            GetResultPayload::File(file, _) => read_file_range(file, result.range),
            GetResultPayload::Stream(stream) => stream.map_err(StorageError::from).boxed(),
        }
    }

    /// Deletes an object; one that is already gone counts as deleted.
    pub async fn delete(&self, id: MediaId) -> Result<()> {
        let _timer = self.timer("delete");
        match self.store.delete(&self.key(id)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes the objects of many ids at once (S3: DeleteObjects, 1000 keys a request).
    /// Returns the ids whose object may still exist; one already gone counts as deleted.
    pub async fn delete_many(&self, ids: &[MediaId]) -> Vec<MediaId> {
        let paths =
            futures_util::stream::iter(ids.iter().map(|id| Ok(self.key(*id))).collect::<Vec<_>>())
                .boxed();
        let _timer = self.timer("delete_many");
        let results: Vec<object_store::Result<Path>> =
            self.store.delete_stream(paths).collect().await;
        // Keys and the paths in errors both end with the media id.
        let id_of = |path: &str| path.rsplit('/').next().and_then(MediaId::parse);
        let mut gone = std::collections::HashSet::with_capacity(ids.len());
        for result in results {
            match result {
                Ok(path) => gone.extend(id_of(path.as_ref())),
                Err(object_store::Error::NotFound { path, .. }) => gone.extend(id_of(&path)),
                Err(err) => tracing::warn!(error = %err, "deleting an object failed"),
            }
        }
        ids.iter()
            .filter(|id| !gone.contains(*id))
            .copied()
            .collect()
    }

    /// Whether an object exists (tests and operations).
    pub async fn exists(&self, id: MediaId) -> Result<bool> {
        match self.store.head(&self.key(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// A cheap round trip that proves the store answers (readiness): a lookup of a key that
    /// never exists, for which "not found" is the healthy answer.
    pub async fn ping(&self) -> Result<()> {
        let _timer = self.timer("ping");
        let probe = self.probe_key();
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// A key that never exists, under the prefix.
    fn probe_key(&self) -> Path {
        match &self.prefix {
            Some(prefix) => prefix.clone().join(".readiness-probe"),
            None => Path::from(".readiness-probe"),
        }
    }

    /// Every object key under the storage prefix (tests and operations; not for hot paths).
    pub async fn object_keys(&self) -> Result<Vec<String>> {
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(self.prefix.as_ref()).try_collect().await?;
        Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Whether multipart uploads are made by id (S3), so that the id can be saved in the
    /// row first; otherwise (local disk) object_store's own writer is used.
    pub fn uploads_by_id(&self) -> bool {
        matches!(self.kind, Kind::S3 { .. })
    }

    /// Whether a body of known length may go to storage as one streamed PUT
    /// (`storage.s3.streamed_put`).
    pub fn streams_puts(&self) -> bool {
        self.puts.is_some()
    }

    /// Starts one PUT of `length` bytes to `id`'s object, its body given as it arrives.
    pub async fn start_streamed_put(&self, id: MediaId, length: u64) -> Result<StreamedPut> {
        match (&self.kind, &self.puts) {
            (Kind::S3 { store, .. }, Some(puts)) => {
                // Timed from the body's end to S3's answer: the time the client waits on
                // storage, whatever its own speed.
                let timing = self
                    .timings
                    .as_ref()
                    .map(|h| h.with_label_values(&["put_streamed"]));
                puts.start(store.as_ref(), &self.key(id), length, timing)
                    .await
            }
            _ => Err(StorageError(object_store::Error::NotSupported {
                source: "streamed PUTs need S3 with storage.s3.streamed_put".into(),
            })),
        }
    }

    /// Why a streamed PUT broke off. S3 may refuse the request (a wrong key, no such
    /// bucket) before reading its body and close the connection, and the client then
    /// sees the connection break rather than the answer. So a failure that looks passing
    /// is checked with a listing of the prefix, whose answer S3 always sends: if it shows
    /// a configuration fault, that is the error.
    pub async fn explain_put_failure(&self, err: StorageError) -> StorageError {
        if err.fault() != StorageFault::Unavailable {
            return err;
        }
        // A prefix under which nothing is stored: the answer is short however many
        // objects there are.
        let probe = self.probe_key();
        let _timer = self.timer("list");
        // Storage that is down would hold the answer to the client for the whole request
        // timeout: the probe gets a few seconds, then the first error stands.
        let listed = tokio::time::timeout(
            EXPLAIN_TIMEOUT,
            self.store.list_with_delimiter(Some(&probe)),
        )
        .await;
        match listed {
            Err(_) => err,
            Ok(Err(probe)) => {
                let probe = StorageError::from(probe);
                if probe.fault() == StorageFault::Misconfigured {
                    probe
                } else {
                    err
                }
            }
            Ok(Ok(_)) => err,
        }
    }

    fn multipart_store(&self) -> Result<&AmazonS3> {
        match &self.kind {
            Kind::S3 { store, .. } => Ok(store),
            Kind::Local { .. } => Err(StorageError(object_store::Error::NotSupported {
                source: "multipart uploads by id need S3".into(),
            })),
        }
    }

    /// Starts a multipart upload for `id`'s object; its id is what aborts it later.
    pub async fn create_multipart(&self, id: MediaId) -> Result<UploadId> {
        let store = self.multipart_store()?;
        let _timer = self.timer("create_multipart");
        Ok(store.create_multipart(&self.key(id)).await?)
    }

    /// Uploads part `index` (from 0) of a multipart upload.
    pub async fn put_part(
        &self,
        id: MediaId,
        upload: &UploadId,
        index: usize,
        data: object_store::PutPayload,
    ) -> Result<object_store::multipart::PartId> {
        let store = self.multipart_store()?;
        let _timer = self.timer("put_part");
        Ok(store.put_part(&self.key(id), upload, index, data).await?)
    }

    /// Completes a multipart upload from its parts in order.
    pub async fn complete_multipart(
        &self,
        id: MediaId,
        upload: &UploadId,
        parts: Vec<object_store::multipart::PartId>,
    ) -> Result<()> {
        let store = self.multipart_store()?;
        let _timer = self.timer("complete_multipart");
        store
            .complete_multipart(&self.key(id), upload, parts)
            .await?;
        Ok(())
    }

    /// Aborts a multipart upload by id; one already gone counts as aborted.
    pub async fn abort_multipart(&self, id: MediaId, upload: &UploadId) -> Result<()> {
        let store = self.multipart_store()?;
        let _timer = self.timer("abort_multipart");
        match store.abort_multipart(&self.key(id), upload).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes whatever an upload of `id` that never finished may have left besides the
    /// object: on S3 its multipart upload, by the id saved in the row (`recorded`), or found
    /// by listing when the row says one was being created (`Some("")`); on local disk its
    /// staging files.
    pub async fn abort_unfinished(
        &self,
        id: MediaId,
        recorded: Option<&str>,
    ) -> anyhow::Result<()> {
        match (&self.kind, recorded) {
            (Kind::S3 { .. }, None) => Ok(()),
            (Kind::S3 { .. }, Some("")) => {
                for upload in self.pending_uploads(id).await? {
                    self.abort_pending(&upload).await?;
                }
                Ok(())
            }
            (Kind::S3 { .. }, Some(upload)) => {
                Ok(self.abort_multipart(id, &upload.to_owned()).await?)
            }
            (Kind::Local { .. }, _) => {
                for upload in self.pending_uploads(id).await? {
                    self.abort_pending(&upload).await?;
                }
                Ok(())
            }
        }
    }

    /// The staging file paths an unfinished local upload of `id` may have left.
    fn local_staging_paths(root: &std::path::Path, key: &Path) -> Vec<std::path::PathBuf> {
        let object = root.join(key.as_ref());
        LOCAL_STAGING_SUFFIXES
            .map(|n| {
                let mut name = object.clone().into_os_string();
                name.push(format!("#{n}"));
                std::path::PathBuf::from(name)
            })
            .collect()
    }

    /// Unfinished uploads of `id`: on S3 by listing its key, on local disk its staging files
    /// (as a key relative to the storage root, with an empty upload id).
    pub async fn pending_uploads(&self, id: MediaId) -> anyhow::Result<Vec<PendingUpload>> {
        match &self.kind {
            Kind::S3 { lister, .. } => {
                let _timer = self.timer("list_multipart");
                lister.list(self.key(id).as_ref()).await
            }
            Kind::Local { root } => {
                let mut found = Vec::new();
                for path in Self::local_staging_paths(root, &self.key(id)) {
                    if tokio::fs::try_exists(&path).await? {
                        found.push(local_pending(root, &path));
                    }
                }
                Ok(found)
            }
        }
    }

    /// Every unfinished upload under the storage prefix (tests and operations; a listing
    /// of the bucket, or a walk of the directory).
    pub async fn all_pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        match &self.kind {
            Kind::S3 { lister, .. } => {
                let prefix = self
                    .prefix
                    .as_ref()
                    .map(|p| format!("{p}/"))
                    .unwrap_or_default();
                lister.list(&prefix).await
            }
            Kind::Local { root } => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || {
                    let mut found = Vec::new();
                    let mut dirs = vec![root.clone()];
                    while let Some(dir) = dirs.pop() {
                        for entry in std::fs::read_dir(&dir)? {
                            let path = entry?.path();
                            if path.is_dir() {
                                dirs.push(path);
                            } else if path
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().contains('#'))
                            {
                                found.push(local_pending(&root, &path));
                            }
                        }
                    }
                    Ok(found)
                })
                .await?
            }
        }
    }

    /// Aborts an unfinished upload found by `pending_uploads`; one already gone counts as
    /// aborted.
    pub async fn abort_pending(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        let _timer = self.timer("abort_multipart");
        match &self.kind {
            Kind::S3 { store, .. } => {
                match store
                    .abort_multipart(&Path::from(upload.key.as_str()), &upload.upload_id)
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(err) => Err(err.into()),
                }
            }
            Kind::Local { root } => match tokio::fs::remove_file(root.join(&upload.key)).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            },
        }
    }
}

/// A local staging file as a pending upload: its path relative to the root.
fn local_pending(root: &std::path::Path, path: &std::path::Path) -> PendingUpload {
    PendingUpload {
        key: path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        upload_id: String::new(),
    }
}

/// Time to open a connection to object storage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a failed streamed PUT waits for the listing that explains it.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an unused connection to object storage is kept for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn build_s3(
    bucket: &str,
    settings: &StorageSettings,
    client: ClientOptions,
) -> anyhow::Result<AmazonS3> {
    let s3 = &settings.s3;
    // AWS_* variables first; the service's own keys override them.
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    // Retries stay within seconds too.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    };
    Ok(builder
        .with_retry(retry)
        // A second SHA-256 pass over every part costs upload throughput (BENCHMARKS.md).
        .with_unsigned_payload(!s3.sign_payload)
        .with_client_options(client)
        .build()?)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Chunk size for reading local files.
const FILE_CHUNK: usize = 256 * 1024;

fn read_file_range(
    file: std::fs::File,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, Result<Bytes>> {
    let io_error = |err: std::io::Error| {
        StorageError::from(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(err),
        })
    };
    let state = (
        tokio::fs::File::from_std(file),
        range.start,
        range.end,
        false,
    );
    futures_util::stream::try_unfold(state, move |(mut file, pos, end, seeked)| async move {
        if pos >= end {
            return Ok(None);
        }
        if !seeked {
            file.seek(std::io::SeekFrom::Start(pos))
                .await
                .map_err(io_error)?;
        }
        let want = usize::try_from(end - pos)
            .unwrap_or(FILE_CHUNK)
            .min(FILE_CHUNK);
        let mut buffer = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            let n = file.read(&mut buffer[filled..]).await.map_err(io_error)?;
            if n == 0 {
                return Err(io_error(std::io::ErrorKind::UnexpectedEof.into()));
            }
            filled += n;
        }
        Ok(Some((
            buffer.freeze(),
            (file, pos + want as u64, end, true),
        )))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &str, code: &str) -> StorageError {
        let body = format!(
            "Server returned non-2xx status code: {status}: <?xml version=\"1.0\"?>\
             <Error><Code>{code}</Code><Message>m</Message></Error>"
        );
        let source: Box<dyn std::error::Error + Send + Sync> = body.into();
        StorageError(match status {
            "404 Not Found" => object_store::Error::NotFound {
                path: "k".into(),
                source,
            },
            "403 Forbidden" => object_store::Error::PermissionDenied {
                path: "k".into(),
                source,
            },
            _ => object_store::Error::Generic {
                store: "S3",
                source,
            },
        })
    }

    #[test]
    fn faults_follow_the_s3_error_code() {
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ] {
            assert_eq!(
                answered("403 Forbidden", code).fault(),
                StorageFault::Misconfigured
            );
        }
        assert_eq!(
            answered("404 Not Found", "NoSuchBucket").fault(),
            StorageFault::Misconfigured
        );
        assert_eq!(
            answered("404 Not Found", "NoSuchKey").fault(),
            StorageFault::NotFound
        );
        assert_eq!(
            answered("404 Not Found", "NoSuchUpload").fault(),
            StorageFault::NotFound
        );
        for (status, code) in [
            ("400 Bad Request", "ExpiredToken"),
            ("403 Forbidden", "RequestTimeTooSkewed"),
            ("503 Service Unavailable", "SlowDown"),
            ("500 Internal Server Error", "InternalError"),
        ] {
            assert_eq!(
                answered(status, code).fault(),
                StorageFault::Unavailable,
                "{code}"
            );
        }
        // No answer at all (connection refused): passes, maybe.
        let refused = StorageError(object_store::Error::Generic {
            store: "S3",
            source: "error sending request".into(),
        });
        assert_eq!(refused.fault(), StorageFault::Unavailable);
    }
}
