use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use test_support::on_both_backends;
use test_support::{assert_error, content, Backend, TempDir, TestApp};

on_both_backends!(
    missing_and_bad_tokens_are_401,
    scopes_are_enforced_and_403_comes_before_404,
    repeated_authorization_headers_are_401,
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(secret: &str, alg: Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn missing_and_bad_tokens_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = app.settings.auth.hs256_secret.clone().unwrap();
    let secret = secret.expose();
    let id = app
        .upload_ok(&app.token("acct"), "jpg", content(10, 30))
        .await;

    let expired = sign(
        secret,
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() - 3600}),
    );
    let wrong_key = sign(
        &"w".repeat(40),
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    let no_sub = sign(secret, Algorithm::HS256, json!({"exp": now() + 600}));
    let no_exp = sign(secret, Algorithm::HS256, json!({"sub": "acct"}));
    let hs512 = sign(
        secret,
        Algorithm::HS512,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    let valid = app.token("acct");
    let payload = valid.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic scheme", Some(format!("Basic {valid}"))),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong key", Some(format!("Bearer {wrong_key}"))),
        ("no sub", Some(format!("Bearer {no_sub}"))),
        ("no exp", Some(format!("Bearer {no_exp}"))),
        ("other algorithm", Some(format!("Bearer {hs512}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
    ];
    for (name, header) in cases {
        for (method, path) in [
            (Method::POST, "/v1/media".to_owned()),
            (Method::GET, format!("/v1/media/{id}")),
            (Method::DELETE, format!("/v1/media/{id}")),
        ] {
            let mut request = app
                .request(method.clone(), &path, None)
                .header("X-Gr-File-Extension", "jpg")
                .body(b"x".to_vec());
            if let Some(value) = &header {
                request = request.header("Authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{name} {method} {path}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
            assert_error(response, 401, 1005).await;
        }
    }
    assert_only_stored(&app, &id, "nothing stored by refused uploads").await;
    // Sanity: the same token shape with the right key works.
    let fine = sign(
        secret,
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    assert_eq!(app.get(&fine, &id).await.status(), 200);
    assert_eq!(app.delete(&fine, &id).await.status(), 200);
    app.assert_eventually_empty().await;
}

/// Exactly the media `id` is stored: its row and its object, and no other row, object,
/// staging file or multipart upload.
async fn assert_only_stored(app: &TestApp, id: &str, what: &str) {
    assert_eq!(app.row_count().await, 1, "{what}: rows");
    let objects = app.object_keys().await;
    assert!(
        objects.len() == 1 && objects[0].rsplit('/').next() == Some(id),
        "{what}: objects {objects:?}"
    );
    assert_eq!(
        app.pending_multipart_uploads().await,
        0,
        "{what}: multipart uploads"
    );
}

async fn scopes_are_enforced_and_403_comes_before_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app
        .upload_ok(&app.token("acct"), "jpg", content(10, 31))
        .await;
    let read_only = app.token_with_scope("acct", "media:read");
    let write_only = app.token_with_scope("acct", "media:write");
    let both = app.token_with_scope("acct", "openid media:write media:read");
    let neither = app.token_with_scope("acct", "profile");

    assert_error(
        app.upload(&read_only, "jpg", b"x".to_vec()).await,
        403,
        1005,
    )
    .await;
    assert_error(app.upload(&neither, "jpg", b"x".to_vec()).await, 403, 1005).await;
    assert_eq!(
        app.upload(&write_only, "jpg", b"x".to_vec()).await.status(),
        201
    );

    assert_error(app.get(&write_only, &id).await, 403, 1005).await;
    assert_eq!(app.get(&read_only, &id).await.status(), 200);
    assert_eq!(app.get(&both, &id).await.status(), 200);

    // 403 says nothing about ids: unknown and malformed ids get it too.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(app.get(&write_only, &unknown).await, 403, 1005).await;
    assert_error(app.get(&write_only, "nonsense").await, 403, 1005).await;
    assert_error(app.delete(&read_only, &unknown).await, 403, 1005).await;
    assert_error(app.delete(&read_only, &id).await, 403, 1005).await;
    assert_eq!(app.delete(&write_only, &id).await.status(), 200);
    let _ = Duration::from_secs(0);
}

async fn repeated_authorization_headers_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "jpg", content(10, 32)).await;
    let other = app.token("other");
    // Two valid tokens, a valid one after a bad one and a bad one after a valid one: the
    // request is ambiguous whichever header a proxy would pick, so it is malformed.
    for second in [
        format!("Bearer {token}"),
        format!("Bearer {other}"),
        "Bearer not.a.jwt".to_owned(),
        "Basic eDp5".to_owned(),
    ] {
        for (method, path) in [
            (Method::POST, "/v1/media".to_owned()),
            (Method::GET, format!("/v1/media/{id}")),
            (Method::DELETE, format!("/v1/media/{id}")),
        ] {
            let response = app
                .request(method.clone(), &path, Some(&token))
                .header("Authorization", &second)
                .header("X-Gr-File-Extension", "jpg")
                .body(b"x".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_error(response, 401, 1005).await;
        }
    }
    assert_only_stored(&app, &id, "nothing stored, nothing deleted").await;
    assert_eq!(app.get(&token, &id).await.status(), 200);
    assert_eq!(app.delete(&token, &id).await.status(), 200);
    app.assert_eventually_empty().await;
}

// Public keys that change without a restart. The backend plays no part in them, so these run
// on the embedded pair only.

/// A key pair made with `openssl genpkey`: its public PEM and a signer.
struct KeyPair {
    public_pem: Vec<u8>,
    signing: EncodingKey,
    alg: Algorithm,
}

impl KeyPair {
    fn generate(dir: &Path, name: &str, alg: Algorithm) -> Self {
        let genpkey: &[&str] = match alg {
            Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::ES384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Algorithm::EdDSA => &["-algorithm", "ED25519"],
            other => panic!("no key type for {other:?}"),
        };
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub.pem"));
        openssl(&[&["genpkey"], genpkey, &["-out", private.to_str().unwrap()]].concat());
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let private = std::fs::read(private).unwrap();
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
            _ => EncodingKey::from_ec_pem(&private),
        }
        .unwrap();
        Self {
            public_pem: std::fs::read(public).unwrap(),
            signing,
            alg,
        }
    }

    fn token(&self, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let claims = json!({"sub": "acct", "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }

    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> serde_json::Value {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&self.signing, self.alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        jwk
    }
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command line tool");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the API took the token: a made-up id is 404 for a valid token, 401 otherwise.
async fn accepted(app: &TestApp, token: &str) -> bool {
    let status = app
        .get(token, &uuid::Uuid::new_v4().to_string())
        .await
        .status();
    assert!(status == 404 || status == 401, "{status}");
    status == 404
}

async fn eventually_accepted(app: &TestApp, token: &str, within: Duration) {
    let started = Instant::now();
    while !accepted(app, token).await {
        assert!(started.elapsed() < within, "not accepted within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Kubernetes Secret volume: `<dir>/signing.pem` → `..data/signing.pem`, where `..data` is
/// a symlink to a timestamped directory that an update replaces atomically.
struct SecretVolume {
    dir: PathBuf,
    generation: usize,
}

impl SecretVolume {
    fn new(dir: PathBuf, pem: &[u8]) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Self { dir, generation: 0 };
        volume.update(pem);
        std::os::unix::fs::symlink("..data/signing.pem", volume.key_file()).unwrap();
        volume
    }

    fn key_file(&self) -> PathBuf {
        self.dir.join("signing.pem")
    }

    fn update(&mut self, pem: &[u8]) {
        self.generation += 1;
        let version = format!("..2026_11_25_{}", self.generation);
        std::fs::create_dir_all(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("signing.pem"), pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_files_are_used_without_a_restart() {
    let keys = TempDir::new();
    let old = KeyPair::generate(&keys.0, "old", Algorithm::ES256);
    let new = KeyPair::generate(&keys.0, "new", Algorithm::ES384);
    let mut volume = SecretVolume::new(keys.0.join("secret"), &old.public_pem);
    let poll = Duration::from_millis(500);
    let key_file = volume.key_file();
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.auth.public_key_files = vec![key_file];
        s.auth.key_files_poll = poll;
    })
    .await;
    assert!(accepted(&app, &old.token(Some("signing"))).await);
    assert!(accepted(&app, &old.token(None)).await);
    assert!(!accepted(&app, &new.token(Some("signing"))).await);

    // The Secret is updated (another key, even another curve): picked up within the poll
    // (and some slack for a loaded machine).
    volume.update(&new.public_pem);
    eventually_accepted(&app, &new.token(Some("signing")), 4 * poll).await;
    assert!(accepted(&app, &new.token(None)).await);
    assert!(!accepted(&app, &old.token(Some("signing"))).await);
    assert!(!accepted(&app, &old.token(None)).await);

    // A broken update keeps the last good key.
    volume.update(b"-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n");
    tokio::time::sleep(4 * poll).await;
    assert!(accepted(&app, &new.token(Some("signing"))).await);
}

/// Serves a JWKS over HTTP/1.1 and counts the requests.
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[serde_json::Value]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let answer = Arc::new(Mutex::new((200, json!({ "keys": keys }).to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (answer.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url, answer, hits }
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn serve_keys(&self, keys: &[serde_json::Value]) {
        self.serve(200, json!({ "keys": keys }).to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests arrived; the first of them saw what was served when
    /// this was called, and was answered before the last one arrived.
    async fn wait_for_fetches(&self, n: usize) {
        let target = self.hits() + n;
        let started = Instant::now();
        while self.hits() < target {
            assert!(started.elapsed() < Duration::from_secs(10), "no refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_fetched_and_an_unknown_kid_refreshes_it_at_most_once_per_window() {
    let keys = TempDir::new();
    let rsa = KeyPair::generate(&keys.0, "rsa", Algorithm::RS256);
    let p384 = KeyPair::generate(&keys.0, "p384", Algorithm::ES384);
    let ed = KeyPair::generate(&keys.0, "ed", Algorithm::EdDSA);
    let server = JwksServer::start(&[rsa.jwk("k1")]).await;
    let url = server.url.clone();
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.auth.jwks_url = Some(url);
        s.auth.jwks_refresh = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(server.hits(), 1, "fetched once at start");
    assert!(accepted(&app, &rsa.token(Some("k1"))).await);
    assert!(
        accepted(&app, &rsa.token(None)).await,
        "no kid: by algorithm"
    );
    // A kid names one key: another key's signature under it is refused (no refresh: k1 is known).
    assert!(!accepted(&app, &p384.token(Some("k1"))).await);
    assert_eq!(server.hits(), 1);

    // The provider publishes a new key: the first token naming it refreshes the set.
    server.serve_keys(&[rsa.jwk("k1"), p384.jwk("k2")]);
    assert!(accepted(&app, &p384.token(Some("k2"))).await);
    assert_eq!(server.hits(), 2);
    assert!(accepted(&app, &p384.token(None)).await);

    // Within the rate-limit window, unknown kids refresh no more, however many arrive: a
    // flood of made-up kids cannot turn into a flood of requests to the provider.
    server.serve_keys(&[rsa.jwk("k1"), p384.jwk("k2"), ed.jwk("k3")]);
    let tries: Vec<_> = (0..20)
        .map(|i| {
            let token = ed.token(Some(if i % 2 == 0 { "k3" } else { "made-up" }));
            let app = &app;
            async move { accepted(app, &token).await }
        })
        .collect();
    let results = futures_util::future::join_all(tries).await;
    assert!(results.iter().all(|accepted| !accepted));
    assert_eq!(server.hits(), 2, "no refresh within the window");
    assert!(accepted(&app, &rsa.token(Some("k1"))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_refreshed_periodically_and_a_failed_refresh_keeps_the_last_keys() {
    let keys = TempDir::new();
    let first = KeyPair::generate(&keys.0, "first", Algorithm::ES256);
    let second = KeyPair::generate(&keys.0, "second", Algorithm::ES256);
    let server = JwksServer::start(&[first.jwk("first")]).await;
    let url = server.url.clone();
    let every = Duration::from_millis(200);
    let app = TestApp::spawn_with(Backend::Embedded, |s| {
        s.auth.jwks_url = Some(url);
        s.auth.jwks_refresh = every;
    })
    .await;
    assert!(accepted(&app, &first.token(Some("first"))).await);

    // Failures of every kind keep the keys of the last good fetch.
    for (status, body) in [
        (500, "oops".to_owned()),
        (200, "<html>not json</html>".to_owned()),
        (200, json!({"keys": []}).to_string()),
    ] {
        server.serve(status, body);
        server.wait_for_fetches(2).await;
        assert!(
            accepted(&app, &first.token(Some("first"))).await,
            "{status}"
        );
    }
    // The provider rotates: the periodic refresh alone picks it up.
    server.serve_keys(&[second.jwk("second")]);
    server.wait_for_fetches(2).await;
    assert!(accepted(&app, &second.token(None)).await);
    assert!(!accepted(&app, &first.token(Some("first"))).await);
}
