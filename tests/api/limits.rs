//! The upload memory budget and the limits per account: uploads wait for room, then are
//! refused (503) with nothing left behind; one account cannot take the whole replica;
//! concurrent uploads and, when configured, the request rate are capped per account (429).

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, Response};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use test_support::{assert_error, content, Backend, TestApp, PART_SIZE};

const PART: u64 = PART_SIZE as u64;

/// A chunked upload whose client sends only what the test tells it to: it holds a whole
/// part of the budget (a body of unknown length reserves one) for as long as it lasts.
struct SlowUpload {
    sender: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    response: JoinHandle<reqwest::Result<Response>>,
    ticker: Option<JoinHandle<()>>,
}

impl SlowUpload {
    async fn start(app: &TestApp, token: &str) -> Self {
        Self::begin(app, token, None, 1024).await
    }

    /// Like `start`, and the client goes on sending a little every 200 ms, so that the
    /// body never stalls (5 KiB a second: a part is far away).
    async fn start_ticking(app: &TestApp, token: &str) -> Self {
        let mut upload = Self::start(app, token).await;
        upload.tick(Duration::from_millis(200), 1024);
        upload
    }

    /// An upload whose client sends `head` bytes at once, declaring `declared` bytes
    /// (`Content-Length`) when given, chunked otherwise.
    async fn begin(app: &TestApp, token: &str, declared: Option<u64>, head: usize) -> Self {
        let (sender, receiver) = mpsc::channel(4);
        let body =
            reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let mut request = app
            .request(Method::POST, "/v1/media", Some(token))
            .header("X-Gr-File-Extension", "bin");
        if let Some(declared) = declared {
            request = request.header("Content-Length", declared);
        }
        let response = tokio::spawn(request.body(body).send());
        sender
            .send(Ok(Bytes::from(content(head, 9))))
            .await
            .unwrap();
        Self {
            sender: Some(sender),
            response,
            ticker: None,
        }
    }

    /// From now on the client sends `bytes` every `every`.
    fn tick(&mut self, every: Duration, bytes: usize) {
        let sender = self.sender.clone().unwrap();
        self.ticker = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if sender
                    .send(Ok(Bytes::from(content(bytes, 8))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }

    /// Ends the body normally: the upload completes.
    async fn finish(mut self) -> Response {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            let _ = ticker.await;
        }
        drop(self.sender.take());
        tokio::time::timeout(Duration::from_secs(30), &mut self.response)
            .await
            .expect("an answer once the body ended")
            .unwrap()
            .unwrap()
    }

    /// Breaks the body off: the client is gone and the upload rolls back.
    async fn abandon(mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Err(std::io::Error::other("client gone"))).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.response.abort();
    }
}

/// Waits (bounded) until uploads hold `bytes` of the budget.
async fn wait_for_memory(app: &TestApp, bytes: u64) {
    let gauge = &app.metrics.limits.memory_in_use;
    for _ in 0..200 {
        if gauge.get() == bytes as i64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("uploads hold {} bytes, not {bytes}", gauge.get());
}

/// Waits (bounded) until `n` reservations have had to wait.
async fn wait_for_waits(app: &TestApp, n: u64) {
    let waits = &app.metrics.limits.memory_waits;
    for _ in 0..200 {
        if waits.get() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} reservations waited, not {n}", waits.get());
}

/// Waits (bounded) until there are `n` rows.
async fn wait_for_rows(app: &TestApp, n: u64) {
    for _ in 0..100 {
        if app.row_count().await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.row_count().await, n, "rows");
}

fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

test_support::on_both_backends!(an_upload_without_room_waits_then_gets_503_and_leaves_nothing);

async fn an_upload_without_room_waits_then_gets_503_and_leaves_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = 2 * PART;
        s.limits.account_memory_share = 1.0;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::from_secs(1);
    })
    .await;
    let token = app.token("acct");
    let first = SlowUpload::start(&app, &token).await;
    let second = SlowUpload::start(&app, &token).await;
    wait_for_memory(&app, 2 * PART).await;
    // Memory is reserved before the row is written: wait for both rows.
    wait_for_rows(&app, 2).await;

    let response = tokio::time::timeout(
        Duration::from_secs(10),
        app.upload(&token, "bin", content(4096, 1)),
    )
    .await
    .expect("refused once the wait is over");
    assert!(retry_after(&response) >= 1);
    assert_error(response, 503, 1011).await;
    let limits = &app.metrics.limits;
    assert_eq!(
        limits.memory_refusals.with_label_values(&["replica"]).get(),
        1
    );
    assert!(limits.memory_waits.get() >= 1);
    // The refused upload wrote nothing: the two rows are the slow uploads'.
    assert_eq!(app.row_count().await, 2);

    first.abandon().await;
    second.abandon().await;
    app.assert_eventually_empty().await;
    wait_for_memory(&app, 0).await;
}

test_support::on_both_backends!(an_upload_that_waits_gets_its_turn_when_room_frees);

async fn an_upload_that_waits_gets_its_turn_when_room_frees(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = 2 * PART;
        s.limits.account_memory_share = 1.0;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::from_secs(60);
        // Far shorter than the wait below: waiting for memory is not the client stalling.
        s.limits.body_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let token = app.token("acct");
    let first = SlowUpload::start_ticking(&app, &token).await;
    let second = SlowUpload::start_ticking(&app, &token).await;
    wait_for_memory(&app, 2 * PART).await;

    // Larger than a part: it waits for a whole part, then for the rest.
    let data = content(PART_SIZE + 4096, 2);
    let waiting = {
        let request = app
            .request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "bin")
            .body(data.clone());
        tokio::spawn(request.send())
    };
    wait_for_waits(&app, 1).await;
    // Longer than the body idle timeout: the waiting upload's body is not read meanwhile,
    // and that is not held against it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished());

    // The first slow upload ends: its part goes to storage and frees room.
    assert_eq!(first.finish().await.status(), 201);
    let response = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting upload went on when room freed")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 201);
    let json: serde_json::Value = response.json().await.unwrap();
    let id = json["media"][0]["id"].as_str().unwrap().to_owned();
    let stored = app.get(&token, &id).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.bytes().await.unwrap().to_vec(), data);

    second.abandon().await;
    // The abandoned upload was rolled back; the two stored ones stay.
    wait_for_rows(&app, 2).await;
    wait_for_memory(&app, 0).await;
}

test_support::on_both_backends!(a_small_upload_reserves_only_what_it_declares);

async fn a_small_upload_reserves_only_what_it_declares(backend: Backend) {
    // Room for one part and 64 KiB: a slow chunked upload holds the part.
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = PART + 64 * 1024;
        s.limits.account_memory_share = 1.0;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::ZERO;
    })
    .await;
    let token = app.token("acct");
    let slow = SlowUpload::start(&app, &token).await;
    wait_for_memory(&app, PART).await;
    // 4 KiB declared by Content-Length fits in what is left, without waiting.
    app.upload_ok(&token, "bin", content(4096, 3)).await;
    // A chunked one would need a whole part, and there is no waiting here.
    let refused = SlowUpload::start(&app, &token).await;
    let response = refused.finish().await;
    assert_error(response, 503, 1011).await;
    slow.abandon().await;
    wait_for_memory(&app, 0).await;
    assert_eq!(app.row_count().await, 1);
}

test_support::on_both_backends!(a_greedy_account_cannot_starve_another);

async fn a_greedy_account_cannot_starve_another(backend: Backend) {
    // Four parts in all, two per account.
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = 4 * PART;
        s.limits.account_memory_share = 0.5;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::from_secs(2);
    })
    .await;
    let greedy = app.token("greedy");
    let normal = app.token("normal");
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(SlowUpload::start(&app, &greedy).await);
    }
    wait_for_memory(&app, 2 * PART).await;
    // A third greedy upload waits for its account's share ...
    let third = SlowUpload::start(&app, &greedy).await;
    wait_for_waits(&app, 1).await;
    // Waiting for its account's share, it holds nothing of the replica's budget.
    assert_eq!(app.state.limits.free_bytes(), 2 * PART);

    // ... while the other account's upload, over a part, goes through.
    let data = content(PART_SIZE + 1000, 4);
    let id = app.upload_ok(&normal, "bin", data.clone()).await;
    let stored = app.get(&normal, &id).await;
    assert_eq!(stored.bytes().await.unwrap().to_vec(), data);

    // The greedy one is refused when its wait is over: its own share is full.
    let response = tokio::time::timeout(Duration::from_secs(10), third.response)
        .await
        .expect("refused once the wait is over")
        .unwrap()
        .unwrap();
    assert!(retry_after(&response) >= 1);
    assert_error(response, 429, 1015).await;
    assert_eq!(
        app.metrics
            .limits
            .memory_refusals
            .with_label_values(&["account"])
            .get(),
        1
    );

    for holder in holders {
        holder.abandon().await;
    }
    assert_eq!(app.delete(&normal, &id).await.status(), 200);
    app.assert_eventually_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_concurrent_uploads_of_one_account_get_429_before_the_body() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.limits.max_uploads_per_account = 2;
    })
    .await;
    let greedy = app.token("greedy");
    let first = SlowUpload::start(&app, &greedy).await;
    let second = SlowUpload::start(&app, &greedy).await;
    wait_for_memory(&app, 2 * PART).await;
    wait_for_rows(&app, 2).await;

    // The third sends a head and then nothing: it is answered all the same.
    let (_sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        app.request(Method::POST, "/v1/media", Some(&greedy))
            .header("X-Gr-File-Extension", "bin")
            .body(body)
            .send(),
    )
    .await
    .expect("answered without its body")
    .unwrap();
    assert!(retry_after(&response) >= 1);
    assert_error(response, 429, 1015).await;
    assert_eq!(app.row_count().await, 2);
    assert_eq!(
        app.metrics
            .limits
            .account_refusals
            .with_label_values(&["concurrent_uploads"])
            .get(),
        1
    );

    // Sent with `Expect: 100-continue`, it is refused before the client sends a byte.
    let (_stream, head) = crate::http_layer::expect_continue(app.port(), Some(&greedy), 10).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );

    // Another account is not concerned.
    app.upload_ok(&app.token("normal"), "bin", content(100, 5))
        .await;
    // Once one finishes, the greedy account may upload again.
    assert_eq!(first.finish().await.status(), 201);
    app.upload_ok(&greedy, "bin", content(100, 6)).await;
    second.abandon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.limits.account_requests_per_second = Some(1);
        s.limits.account_request_burst = Some(1);
    })
    .await;
    let token = app.token("busy");
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(app.get(&token, &id).await.status(), 404);
    let response = app.get(&token, &id).await;
    assert!(retry_after(&response) >= 1);
    assert_error(response, 429, 1015).await;
    // Uploads count too.
    let response = app.upload(&token, "bin", content(10, 7)).await;
    assert_error(response, 429, 1015).await;
    // Another account has its own allowance.
    assert_eq!(app.get(&app.token("calm"), &id).await.status(), 404);
    assert_eq!(
        app.metrics
            .limits
            .account_refusals
            .with_label_values(&["request_rate"])
            .get(),
        2
    );
    assert_eq!(app.row_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_rate_there_is_no_rate_limit() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let token = app.token("busy");
    let id = uuid::Uuid::new_v4().to_string();
    for _ in 0..20 {
        assert_eq!(app.get(&token, &id).await.status(), 404);
    }
    assert_eq!(app.state.limits.tracked_accounts(), 0);
}

test_support::on_both_backends!(uploads_larger_than_the_budget_allows_at_once_all_get_through);

/// More large uploads at once than the budget holds: each waits for parts of the others to
/// reach storage, none holds a half reservation that blocks the rest, and all are stored.
async fn uploads_larger_than_the_budget_allows_at_once_all_get_through(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = 3 * PART;
        s.limits.account_memory_share = 1.0;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::from_secs(60);
    })
    .await;
    let uploads: Vec<_> = (0..6u8)
        .map(|n| {
            let data = content(2 * PART_SIZE + PART_SIZE / 2, 20 + n);
            let request = app
                .request(
                    Method::POST,
                    "/v1/media",
                    Some(&app.token(&format!("a{n}"))),
                )
                .header("X-Gr-File-Extension", "bin")
                .body(data.clone());
            (n, data, tokio::spawn(request.send()))
        })
        .collect();
    let gauge = app.metrics.limits.memory_in_use.clone();
    let mut peak = 0;
    let mut stored = Vec::new();
    for (n, data, task) in uploads {
        let response = loop {
            peak = peak.max(gauge.get());
            if task.is_finished() {
                break task.await.unwrap().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(response.status(), 201, "upload {n}");
        let json: serde_json::Value = response.json().await.unwrap();
        stored.push((n, json["media"][0]["id"].as_str().unwrap().to_owned(), data));
    }
    assert!(peak <= (3 * PART) as i64, "peak {peak}");
    for (n, id, data) in stored {
        let response = app.get(&app.token(&format!("a{n}")), &id).await;
        assert_eq!(response.bytes().await.unwrap().to_vec(), data, "upload {n}");
    }
    wait_for_memory(&app, 0).await;
}

test_support::on_both_backends!(beyond_the_waiting_uploads_allowed_one_more_gets_503_at_once);

/// `limits.max_waiting_uploads`: a waiting upload holds what its client sent in the HTTP
/// layer, outside the budget, so no more than that many wait; one more is answered 503
/// with `Retry-After` at once (here none may wait, while the wait itself would be 30 s),
/// and writes nothing.
async fn beyond_the_waiting_uploads_allowed_one_more_gets_503_at_once(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.limits.upload_memory_budget_bytes = 2 * PART;
        s.limits.account_memory_share = 1.0;
        s.limits.newcomer_memory_share = 0.0;
        s.limits.upload_memory_wait = Duration::from_secs(30);
        s.limits.max_waiting_uploads = 0;
    })
    .await;
    let token = app.token("acct");
    let first = SlowUpload::start(&app, &token).await;
    let second = SlowUpload::start(&app, &token).await;
    wait_for_memory(&app, 2 * PART).await;
    wait_for_rows(&app, 2).await;

    let started = std::time::Instant::now();
    let response = app
        .upload(&app.token("other"), "bin", content(4096, 1))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after the wait: {:?}",
        started.elapsed()
    );
    assert!(retry_after(&response) >= 1);
    assert_error(response, 503, 1011).await;
    let refusals = &app.metrics.limits.memory_refusals;
    assert_eq!(refusals.with_label_values(&["queue"]).get(), 1);
    assert_eq!(refusals.with_label_values(&["replica"]).get(), 0);
    assert_eq!(app.row_count().await, 2);

    first.abandon().await;
    second.abandon().await;
    app.assert_eventually_empty().await;
}

test_support::on_both_backends!(
    accounts_holding_the_budget_with_slow_uploads_do_not_make_another_wait
);

/// Two accounts trickle 20 uploads each and hold all the budget an account holding memory
/// may take; a third account's uploads, a small one and one of three parts, go through
/// without waiting for them, from the newcomers' reserve.
async fn accounts_holding_the_budget_with_slow_uploads_do_not_make_another_wait(backend: Backend) {
    const MIB: u64 = 1024 * 1024;
    let app = TestApp::spawn_with(backend, |s| {
        // The budget as multipart uploads take it, part by part.
        s.storage.s3.streamed_put = Some(false);
        s.storage.part_size_bytes = 8 * MIB as usize;
        s.limits.upload_memory_budget_bytes = 256 * MIB;
        s.limits.account_memory_share = 0.5;
        s.limits.newcomer_memory_share = 0.125;
        s.limits.upload_memory_wait = Duration::from_secs(10);
    })
    .await;
    let (first, second, third) = (app.token("slow-a"), app.token("slow-b"), app.token("c"));
    let mut trickles = Vec::new();
    for _ in 0..20 {
        for token in [&first, &second] {
            // 2 MiB at once, then 4 KiB every half second: fast enough for the minimum
            // body rate, and so slow that its part stays reserved while the test runs.
            let mut trickle =
                SlowUpload::begin(&app, token, Some(20 * MIB), 2 * MIB as usize).await;
            trickle.tick(Duration::from_millis(500), 4096);
            trickles.push(trickle);
        }
    }
    // Each holds a part of 8 MiB, up to its account's 128 MiB: together all but the
    // reserve's 32 MiB, and the rest of them wait.
    wait_for_memory(&app, 224 * MIB).await;

    let small = content(MIB as usize, 7);
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        app.upload(&third, "bin", small.clone()),
    )
    .await
    .expect("answered long before the 10 s memory wait is over");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let small_took = started.elapsed();
    // Three parts: each is reserved once the account's previous one is stored.
    let large = content(20 * MIB as usize, 8);
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        app.upload(&third, "bin", large.clone()),
    )
    .await
    .expect("a large upload goes through one part at a time");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let id: String = response.json::<serde_json::Value>().await.unwrap()["media"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = app.get(&third, &id).await.bytes().await.unwrap();
    assert!(stored.to_vec() == large, "the large upload stored whole");
    println!("1 MiB upload answered in {small_took:?} beside the trickles");
    // The trickles still hold what they held.
    assert!(app.metrics.limits.memory_in_use.get() as u64 >= 224 * MIB);

    for trickle in trickles {
        trickle.abandon().await;
    }
    wait_for_memory(&app, 0).await;
    assert_eq!(app.delete(&third, &id).await.status(), 200);
    // The small upload's row stays until deleted or expired; only it is left.
    app.assert_eventually_holds(1).await;
}
