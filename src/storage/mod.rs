//! Object storage: one `Arc<dyn ObjectStore>` (local disk or S3-compatible), the key scheme,
//! and the single place where a storage error becomes "not found" or "unavailable".
//!
//! Keys are `<prefix>/<media id>`: nothing the client sends ever reaches a key.

mod s3_uploads;
mod streaming;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, GetResultPayload, ObjectStore,
    ObjectStoreExt, RetryConfig,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub use s3_uploads::PendingUpload;

use crate::domain::MediaId;
use crate::settings::StorageSettings;

#[derive(Debug, thiserror::Error)]
#[error("object storage error")]
pub struct StorageError(#[source] object_store::Error);

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self.0, object_store::Error::NotFound { .. })
    }

    /// Everything but "not found" means the store did not do what was asked: the request is
    /// answered 503 and may be retried.
    pub fn is_unavailable(&self) -> bool {
        !self.is_not_found()
    }
}

impl From<object_store::Error> for StorageError {
    fn from(err: object_store::Error) -> Self {
        Self(err)
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The object store with the service's key scheme.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The store for streamed GETs (S3: a client with no whole-request deadline).
    reads: Arc<dyn ObjectStore>,
    read_idle_timeout: Duration,
    prefix: Option<Path>,
    /// Present for S3: the bucket-level calls object_store does not offer.
    s3: Option<Arc<s3_uploads::S3Uploads>>,
    description: String,
    /// Durations of calls by operation, once metrics are attached.
    timings: Option<prometheus::HistogramVec>,
}

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
            let store: Arc<dyn ObjectStore> = Arc::new(store);
            Ok(Self {
                reads: store.clone(),
                read_idle_timeout: settings.read_idle_timeout,
                store,
                prefix: None,
                s3: None,
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
            let s3 = build_s3(bucket, settings, control)?;
            let reads =
                streaming::read_client(CONNECT_TIMEOUT, settings.read_idle_timeout, allow_http);
            let reads = build_s3(bucket, settings, reads)?;
            let uploads = s3_uploads::S3Uploads::new(&s3, bucket, settings)?;
            Ok(Self {
                store: Arc::new(s3),
                reads: Arc::new(reads),
                read_idle_timeout: settings.read_idle_timeout,
                prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
                s3: Some(Arc::new(uploads)),
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
        let probe = match &self.prefix {
            Some(prefix) => prefix.clone().join(".readiness-probe"),
            None => Path::from(".readiness-probe"),
        };
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Every object key under the storage prefix (tests and operations; not for hot paths).
    pub async fn object_keys(&self) -> Result<Vec<String>> {
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(self.prefix.as_ref()).try_collect().await?;
        Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Unfinished multipart uploads under a media id's key (S3 only; local disk has none
    /// that outlive the process).
    pub async fn pending_uploads(&self, id: MediaId) -> anyhow::Result<Vec<PendingUpload>> {
        let _timer = self.timer("list_multipart");
        match &self.s3 {
            Some(s3) => s3.list(self.key(id).as_ref()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every unfinished multipart upload under the storage prefix.
    pub async fn all_pending_uploads(&self) -> anyhow::Result<Vec<PendingUpload>> {
        match &self.s3 {
            Some(s3) => {
                let prefix = self
                    .prefix
                    .as_ref()
                    .map(|p| format!("{p}/"))
                    .unwrap_or_default();
                s3.list(&prefix).await
            }
            None => Ok(Vec::new()),
        }
    }

    /// Aborts an unfinished multipart upload; one already gone counts as aborted.
    pub async fn abort_pending(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        let _timer = self.timer("abort_multipart");
        match &self.s3 {
            Some(s3) => s3.abort(upload).await,
            None => Ok(()),
        }
    }
}

/// Time to open a connection to object storage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
