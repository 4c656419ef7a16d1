//! Token verification, key loading and minting.

use super::jwks::parse_jwks;
use super::verifying_key::{rsa_modulus_bits, unsigned_bits};
use super::*;
use actix_web::http::header::HeaderValue;
use std::path::PathBuf;

use jsonwebtoken::jwk::Jwk;

use crate::settings::Secret;

fn settings(secret: &str) -> AuthSettings {
    AuthSettings {
        hs256_secret: Some(Secret::new(secret)),
        public_key_files: vec![],
        key_files_poll: Duration::from_secs(5),
        jwks_url: None,
        jwks_refresh: Duration::from_secs(300),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
        generated_secret_file: PathBuf::from("/nonexistent/jwt-secret"),
        url_signing_secret: None,
        url_signing_secret_previous: None,
        signed_url_ttl: Duration::from_secs(300),
    }
}

fn headers(token: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    map
}

#[test]
fn round_trip_and_scopes() {
    let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
    let token = auth
        .mint("acct-1", Duration::from_secs(60), Some("media:read"))
        .unwrap();
    let caller = auth.authenticate(&headers(&token)).unwrap();
    assert_eq!(caller.account.as_str(), "acct-1");
    assert!(caller.require(SCOPE_READ).is_ok());
    assert!(matches!(
        caller.require(SCOPE_WRITE),
        Err(ApiError::Forbidden(_))
    ));
}

#[test]
fn the_admin_scope_must_be_named() {
    let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
    let caller = |scope: Option<&str>| {
        let token = auth.mint("ops", Duration::from_secs(60), scope).unwrap();
        auth.authenticate(&headers(&token)).unwrap()
    };
    // No scope claim: reading and writing, not the admin's purge.
    let unscoped = caller(None);
    assert!(unscoped.require(SCOPE_WRITE).is_ok());
    assert!(matches!(
        unscoped.require_named(SCOPE_ADMIN),
        Err(ApiError::Forbidden(_))
    ));
    for scope in ["media:read media:write", "media:adminx", "media:ADMIN"] {
        assert!(
            matches!(
                caller(Some(scope)).require_named(SCOPE_ADMIN),
                Err(ApiError::Forbidden(_))
            ),
            "{scope}"
        );
    }
    let admin = caller(Some("media:read media:admin"));
    assert!(admin.require_named(SCOPE_ADMIN).is_ok());
    assert!(admin.require(SCOPE_READ).is_ok());
    assert!(admin.require(SCOPE_WRITE).is_err());
}

#[test]
fn refuses_other_keys_and_none() {
    let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
    let other = Authenticator::from_settings(&settings(&"z".repeat(32)), true).unwrap();
    let token = other.mint("acct", Duration::from_secs(60), None).unwrap();
    assert!(auth.authenticate(&headers(&token)).is_err());

    // alg: none, with the claims of a valid token.
    let valid = auth.mint("acct", Duration::from_secs(60), None).unwrap();
    let payload = valid.split('.').nth(1).unwrap();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let forged = format!("{none_header}.{payload}.");
    assert!(auth.authenticate(&headers(&forged)).is_err());
}

fn sign(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn configured_issuer_and_audience_must_be_present_and_match() {
    let secret = "k".repeat(32);
    let mut s = settings(&secret);
    s.issuer = Some("https://idp.example".into());
    s.audience = Some("media-node".into());
    let auth = Authenticator::from_settings(&s, true).unwrap();
    let exp = now() + 600;
    let accepted = |claims: serde_json::Value| {
        auth.authenticate(&headers(&sign(&secret, claims)))
            .map(|c| c.account.as_str().to_owned())
    };
    let iss = "https://idp.example";
    for (name, claims) in [
        ("neither", serde_json::json!({"sub": "a", "exp": exp})),
        (
            "no iss",
            serde_json::json!({"sub": "a", "exp": exp, "aud": "media-node"}),
        ),
        (
            "no aud",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss}),
        ),
        (
            "other iss",
            serde_json::json!({"sub": "a", "exp": exp, "iss": "x", "aud": "media-node"}),
        ),
        (
            "other aud",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": "other"}),
        ),
        (
            "aud array without ours",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["x", "y"]}),
        ),
        (
            "empty aud array",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": []}),
        ),
    ] {
        assert!(accepted(claims).is_err(), "{name} accepted");
    }
    for (name, claims) in [
        (
            "single aud",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": "media-node"}),
        ),
        (
            "aud array",
            serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other", "media-node"]}),
        ),
    ] {
        assert_eq!(accepted(claims).unwrap(), "a", "{name} refused");
    }
}

#[test]
fn numeric_dates_may_have_fractions() {
    let secret = "k".repeat(32);
    let auth = Authenticator::from_settings(&settings(&secret), true).unwrap();
    let now = now() as f64;
    let token = sign(
        &secret,
        serde_json::json!({"sub": "a", "exp": now + 600.5, "nbf": now - 10.25, "iat": now - 10.75}),
    );
    assert!(auth.authenticate(&headers(&token)).is_ok());
    let expired = sign(&secret, serde_json::json!({"sub": "a", "exp": now - 600.5}));
    assert!(auth.authenticate(&headers(&expired)).is_err());
    let not_yet = sign(
        &secret,
        serde_json::json!({"sub": "a", "exp": now + 600.5, "nbf": now + 300.5}),
    );
    assert!(auth.authenticate(&headers(&not_yet)).is_err());
}

#[test]
fn mint_applies_the_servers_rules() {
    let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
    let ttl = Duration::from_secs(60);
    for sub in ["", "a\nb", &"x".repeat(AccountId::MAX_LEN + 1)] {
        assert!(auth.mint(sub, ttl, None).is_err(), "{sub:?}");
    }
    for scope in ["", "   ", "\t\n"] {
        assert!(auth.mint("acct", ttl, Some(scope)).is_err(), "{scope:?}");
    }
    let token = auth
        .mint("acct", ttl, Some("  media:read \t media:write "))
        .unwrap();
    let caller = auth.authenticate(&headers(&token)).unwrap();
    assert!(caller.require(SCOPE_READ).is_ok() && caller.require(SCOPE_WRITE).is_ok());
    assert!(auth.mint("acct", Duration::MAX, None).is_err());
}

#[test]
fn production_without_key_is_an_error() {
    let mut s = settings("x");
    s.hs256_secret = None;
    assert!(Authenticator::from_settings(&s, true).is_err());
}

#[test]
fn short_secret_is_refused() {
    assert!(Authenticator::from_settings(&settings("short"), false).is_err());
}

/// A directory of generated keys, removed at the end of the test.
struct KeyDir(PathBuf);

impl KeyDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("media-node-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Generates a key pair with `openssl genpkey ARGS`: the private key's PEM and the
    /// path of `<name>.pem`, the public key.
    fn key_pair(&self, name: &str, genpkey: &[&str]) -> (Vec<u8>, PathBuf) {
        let private = self.0.join(format!("{name}.key"));
        let public = self.0.join(format!("{name}.pem"));
        openssl(&[&["genpkey"], genpkey, &["-out", private.to_str().unwrap()]].concat());
        openssl(&[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        (std::fs::read(&private).unwrap(), public)
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
const P384: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];

fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = serde_json::json!({"sub": "acct", "exp": now() + 600});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn with_key_files(files: Vec<PathBuf>) -> AuthSettings {
    let mut s = settings("unused");
    s.hs256_secret = None;
    s.public_key_files = files;
    s
}

#[test]
fn an_ec_keys_curve_decides_its_algorithm() {
    let dir = KeyDir::new();
    let (p256, p256_pub) = dir.key_pair("p256", P256);
    let (p384, p384_pub) = dir.key_pair("p384", P384);
    let auth =
        Authenticator::from_settings(&with_key_files(vec![p256_pub, p384_pub]), true).unwrap();
    let p256 = EncodingKey::from_ec_pem(&p256).unwrap();
    let p384 = EncodingKey::from_ec_pem(&p384).unwrap();
    for kid in [None, Some("p256")] {
        let token = signed(Algorithm::ES256, &p256, kid);
        assert!(auth.authenticate(&headers(&token)).is_ok(), "ES256 {kid:?}");
    }
    for kid in [None, Some("p384")] {
        let token = signed(Algorithm::ES384, &p384, kid);
        assert!(auth.authenticate(&headers(&token)).is_ok(), "ES384 {kid:?}");
    }
}

#[test]
fn small_rsa_keys_are_refused_at_start() {
    let dir = KeyDir::new();
    let (_, small) = dir.key_pair(
        "small",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let err = Authenticator::from_settings(&with_key_files(vec![small.clone()]), true).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("1024 bits is too small"), "{message}");
    assert!(message.contains("2048"), "{message}");
    assert!(message.contains(&small.display().to_string()), "{message}");

    let (private, fine) = dir.key_pair(
        "fine",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let auth = Authenticator::from_settings(&with_key_files(vec![fine]), true).unwrap();
    let token = signed(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
        Some("fine"),
    );
    assert!(auth.authenticate(&headers(&token)).is_ok());
}

#[test]
fn a_tokens_kid_selects_the_key() {
    let dir = KeyDir::new();
    let (a, a_pub) = dir.key_pair("a", P256);
    let (b, b_pub) = dir.key_pair("b", P256);
    let auth = Authenticator::from_settings(&with_key_files(vec![a_pub, b_pub]), true).unwrap();
    let a = EncodingKey::from_ec_pem(&a).unwrap();
    let b = EncodingKey::from_ec_pem(&b).unwrap();
    let ok = |token: String| auth.authenticate(&headers(&token)).is_ok();
    assert!(ok(signed(Algorithm::ES256, &a, Some("a"))));
    assert!(ok(signed(Algorithm::ES256, &b, Some("b"))));
    // Without a kid, every key of the algorithm is tried.
    assert!(ok(signed(Algorithm::ES256, &a, None)));
    assert!(ok(signed(Algorithm::ES256, &b, None)));
    // A kid names one key: another key's signature does not do, nor an unknown kid.
    assert!(!ok(signed(Algorithm::ES256, &b, Some("a"))));
    assert!(!ok(signed(Algorithm::ES256, &a, Some("b"))));
    assert!(!ok(signed(Algorithm::ES256, &a, Some("c"))));
    assert!(!ok(signed(Algorithm::ES256, &a, Some(""))));
}

#[test]
fn key_file_ids_are_unique() {
    let dir = KeyDir::new();
    let (_, first) = dir.key_pair("k", P256);
    std::fs::create_dir_all(dir.0.join("other")).unwrap();
    let second = dir.0.join("other/k.pub");
    std::fs::copy(&first, &second).unwrap();
    let err = Authenticator::from_settings(&with_key_files(vec![first, second]), true).unwrap_err();
    assert!(
        format!("{err:#}").contains("both have the id \"k\""),
        "{err:#}"
    );
}

#[test]
fn jwks_keys_get_their_algorithm_from_the_key() {
    let dir = KeyDir::new();
    let (p384, _) = dir.key_pair("p384", P384);
    let p384 = EncodingKey::from_ec_pem(&p384).unwrap();
    let ec = |alg: Option<&str>, kid: &str| {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&p384, Algorithm::ES384).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        match alg {
            Some(alg) => jwk["alg"] = alg.into(),
            None => {
                jwk.as_object_mut().unwrap().remove("alg");
            }
        }
        jwk
    };
    // A 1024-bit modulus (the top bit set) with exponent 65537.
    let small_rsa = serde_json::json!({
        "kty": "RSA", "kid": "small", "e": "AQAB",
        "n": "wA".to_owned() + &"A".repeat(169),
    });
    let set = serde_json::json!({"keys": [
        ec(Some("ES384"), "with-alg"),
        ec(None, "without-alg"),
        ec(Some("ES256"), "wrong-alg"),
        ec(Some("RS256"), "wrong-family"),
        small_rsa,
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
        {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "whatever", "kid": "odd"},
    ]});
    let rules = Rules {
        leeway: Duration::from_secs(5),
        issuer: None,
        audience: None,
    };
    let keys = parse_jwks(set.to_string().as_bytes(), &rules).unwrap();
    let found: Vec<_> = keys
        .iter()
        .map(|k| (k.id.clone().unwrap(), k.alg))
        .collect();
    assert_eq!(
        found,
        vec![
            ("with-alg".to_owned(), Algorithm::ES384),
            ("without-alg".to_owned(), Algorithm::ES384),
        ]
    );
    // Nothing usable is an error (so it cannot replace good keys), as is garbage.
    let empty = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(parse_jwks(empty.to_string().as_bytes(), &rules).is_err());
    assert!(parse_jwks(b"<html>", &rules).is_err());
    assert!(parse_jwks(b"{\"keys\": []}", &rules).is_err());
}

#[test]
fn rsa_modulus_sizes() {
    // SEQUENCE { INTEGER (0x00 then 256 bytes, the top bit set), INTEGER 65537 }
    let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00, 0x80];
    der.extend(std::iter::repeat_n(0x11, 255));
    der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    assert_eq!(rsa_modulus_bits(&der), Some(2048));
    assert_eq!(rsa_modulus_bits(&der[..20]), None);
    assert_eq!(unsigned_bits(&[0x00, 0x01]), 1);
    assert_eq!(unsigned_bits(&[0x7f, 0xff]), 15);
    assert_eq!(unsigned_bits(&[]), 0);
}
