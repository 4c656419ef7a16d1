//! One S3 PUT whose body is forwarded as it arrives (`storage.s3.streamed_put`): the upload
//! holds a small window of chunks instead of part buffers, and S3 does the work of one
//! object write instead of a multipart upload's.
//!
//! The request is presigned by object_store's signer (the store's credentials, the payload
//! UNSIGNED) and sent with the declared `Content-Length`. S3 stores the object only once
//! that many bytes arrived, so an upload stopped before its last chunk (a refused digest, a
//! client gone, a replayed retry) leaves nothing: the request is dropped mid-body, which
//! closes its connection. The caller keeps the last chunk back until it has decided.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::signer::Signer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::StorageError;

/// Chunks waiting for the connection to S3, besides the one being written.
const QUEUED_CHUNKS: usize = 2;

/// How long the presigned URL stays valid: S3 checks it when the request starts.
const URL_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// The HTTP client of streamed PUTs: a connect timeout, no whole-request deadline (a phone
/// may take minutes to send 37 MiB), idle limits applied per chunk by `StreamedPut`.
#[derive(Debug)]
pub(super) struct PutClient {
    http: reqwest::Client,
    /// Longest wait for S3 to take the next chunk, or to answer once all were sent.
    idle: Duration,
}

impl PutClient {
    pub(super) fn new(
        connect_timeout: Duration,
        idle: Duration,
        pool_idle: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(pool_idle)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, idle })
    }

    /// Starts the PUT of `length` bytes to `key`; its body is what `send` and `finish` give.
    pub(super) async fn start(
        &self,
        signer: &dyn Signer,
        key: &Path,
        length: u64,
        timing: Option<prometheus::Histogram>,
    ) -> Result<StreamedPut, StorageError> {
        let url = signer
            .signed_url(object_store::signer::Method::PUT, key, URL_VALIDITY)
            .await?;
        let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUED_CHUNKS);
        let body = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        let request = self
            .http
            .put(url.as_str())
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(body));
        let request = tokio::spawn(async move {
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            // S3 explains itself in a small XML document; its code decides the fault.
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(2048).collect();
            let source = format!("Server returned non-2xx status code: {status}: {text}").into();
            let path = String::new();
            Err(StorageError::from(match status.as_u16() {
                404 => object_store::Error::NotFound { path, source },
                401 | 403 => object_store::Error::PermissionDenied { path, source },
                _ => object_store::Error::Generic {
                    store: "S3",
                    source,
                },
            }))
        });
        Ok(StreamedPut {
            sender: Some(sender),
            request: Some(request),
            idle: self.idle,
            timing,
        })
    }
}

fn transport(err: reqwest::Error) -> StorageError {
    StorageError::from(object_store::Error::Generic {
        store: "S3",
        source: Box::new(err),
    })
}

fn stalled(what: &str, idle: Duration) -> StorageError {
    let err = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("object storage {what} for {idle:?}"),
    );
    StorageError::from(object_store::Error::Generic {
        store: "S3",
        source: Box::new(err),
    })
}

/// A PUT under way. Dropped before `finish` returned, it is cancelled mid-body and S3
/// keeps nothing of it.
#[derive(Debug)]
pub struct StreamedPut {
    sender: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    request: Option<JoinHandle<Result<(), StorageError>>>,
    idle: Duration,
    /// Times the wait for S3's answer once the body has ended.
    timing: Option<prometheus::Histogram>,
}

impl StreamedPut {
    /// Forwards the next chunk; waits while S3 takes the ones before (backpressure: the
    /// client's body is not read meanwhile), at most the idle limit.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let Some(sender) = self.sender.as_ref() else {
            return Err(self.failure().await);
        };
        match tokio::time::timeout(self.idle, sender.send(Ok(chunk))).await {
            Ok(Ok(())) => Ok(()),
            // The request ended before its body did: S3 refused it, or the connection broke.
            Ok(Err(_)) => Err(self.failure().await),
            Err(_) => {
                self.cancel().await;
                Err(stalled("took nothing", self.idle))
            }
        }
    }

    /// Sends the last chunk and waits for S3's answer: on success the object exists.
    pub async fn finish(&mut self, last: Bytes) -> Result<(), StorageError> {
        if !last.is_empty() {
            self.send(last).await?;
        }
        // The end of the body.
        self.sender = None;
        let _timer = self.timing.as_ref().map(|h| h.start_timer());
        let Some(request) = self.request.as_mut() else {
            return Err(stalled("lost the request", self.idle));
        };
        // On a timeout the request stays, for `settle` to wait for once more.
        let answer = tokio::time::timeout(self.idle, request)
            .await
            .map_err(|_| stalled("did not answer", self.idle))?;
        self.request = None;
        match answer {
            Ok(result) => result,
            Err(join) => Err(object_store::Error::from(join).into()),
        }
    }

    /// Ends a PUT that will not be finished. One whose whole body was sent may still
    /// write the object: its answer is awaited (up to the idle limit), so that a deletion
    /// after this comes after the write. Any other is stopped mid-body, which S3 discards.
    pub async fn settle(&mut self) {
        if self.sender.is_none() {
            if let Some(request) = self.request.take() {
                let _ = tokio::time::timeout(self.idle, request).await;
            }
        }
        self.cancel().await;
    }

    /// Stops the request mid-body and waits until its connection is closed.
    pub async fn cancel(&mut self) {
        self.sender = None;
        if let Some(request) = self.request.take() {
            request.abort();
            let _ = request.await;
        }
    }

    /// Why the request stopped taking chunks: its own error.
    async fn failure(&mut self) -> StorageError {
        self.sender = None;
        match self.request.take() {
            Some(request) => match tokio::time::timeout(self.idle, request).await {
                Ok(Ok(Err(err))) => err,
                Ok(Ok(Ok(()))) => stalled("answered before the body ended", self.idle),
                Ok(Err(join)) => object_store::Error::from(join).into(),
                Err(_) => stalled("did not answer", self.idle),
            },
            None => stalled("lost the request", self.idle),
        }
    }
}

impl Drop for StreamedPut {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            request.abort();
        }
    }
}
