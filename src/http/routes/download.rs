//! `GET`/`HEAD /v1/media/{id}` and `/v1/{account}/media/{id}`: the bytes back, streamed
//! from storage, with a single `Range` and the conditional headers `If-Match`,
//! `If-Unmodified-Since` (412 when not met) and `If-None-Match` (304) honoured, in the order
//! of RFC 9110 13.2.2.

use std::ops::Range;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;

use super::state::{media_id, AppState};
use crate::auth::SCOPE_READ;
use crate::domain::ApiError;
use crate::domain::{AccountId, MediaId};
use crate::metadata::{MediaRecord, MediaStatus};

pub async fn download(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A signed link (from `/info`) stands in for the token: it names this id, and only
    // the owner's token could have asked for it. It has a request rate of its own, checked
    // before anything is looked up.
    if let Some(id) = MediaId::parse(&path) {
        if let Some(link) = state.links.check(id, req.query_string(), Utc::now())? {
            state.link_limits.check(&link)?;
            return serve(&req, &state, None, id).await;
        }
    }
    let caller = state.caller(&req, SCOPE_READ).await?;
    let id = media_id(&path)?;
    serve(&req, &state, Some(&caller.account), id).await
}

/// `GET /v1/media/{id}/info`: what is stored, and a short-lived signed link to the bytes.
pub async fn info(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(&req, SCOPE_READ).await?;
    let id = media_id(&path)?;
    let now = Utc::now();
    let record = state
        .metadata
        .find_readable(id, &caller.account, now)
        .await?
        .ok_or_else(ApiError::media_not_found)?;
    let mut body = super::list::media_object(&record);
    body["url"] = state.links.sign(id, now).into();
    body["meta"] = crate::http::error::meta();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .json(body))
}

pub async fn download_for_account(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(&req, SCOPE_READ).await?;
    let (account, id) = path.into_inner();
    if account != caller.account.as_str() {
        return Err(ApiError::media_not_found());
    }
    let id = media_id(&id)?;
    serve(&req, &state, Some(&caller.account), id).await
}

/// Serves `id` to its `owner`, or to the holder of a valid signed link (`None`), whose
/// request counts against the owner's account rate (when one is configured) as the owner's
/// own requests do.
async fn serve(
    req: &HttpRequest,
    state: &AppState,
    owner: Option<&AccountId>,
    id: MediaId,
) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let record = match owner {
        Some(owner) => state.metadata.find_readable(id, owner, now).await?,
        None => state
            .metadata
            .get(id)
            .await?
            .filter(|r| r.status == MediaStatus::Ready && r.expires_at > now),
    }
    .ok_or_else(ApiError::media_not_found)?;
    if owner.is_none() {
        state.limits.check_rate(&record.owner)?;
    }
    let size = record.size_bytes.unwrap_or(0);
    let etag = record.sha256.as_deref().map(|sha| format!("\"{sha}\""));

    match evaluate_conditions(req.headers(), etag.as_deref(), record.last_modified()) {
        Condition::Proceed => {}
        Condition::NotModified => {
            let mut response = HttpResponse::build(StatusCode::NOT_MODIFIED);
            validators(&mut response, &record, etag.as_deref());
            return Ok(response.finish());
        }
        Condition::Failed(header) => {
            return Err(ApiError::PreconditionFailed(format!(
                "{header} is not met by the media's current version (see its ETag and \
                 Last-Modified)"
            )))
        }
    }

    let range = match requested_range(req.headers(), etag.as_deref()) {
        Some(spec) => match resolve(spec, size) {
            Resolved::Whole => None,
            Resolved::Part(range) => Some(range),
            Resolved::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
        },
        None => None,
    };

    let mut response = match &range {
        Some(r) => {
            let mut b = HttpResponse::build(StatusCode::PARTIAL_CONTENT);
            b.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ));
            b
        }
        None => HttpResponse::Ok(),
    };
    validators(&mut response, &record, etag.as_deref());
    response
        .insert_header((header::CONTENT_TYPE, record.content_type.as_str()))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}.{}\"",
                record.id, record.extension
            ),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));

    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    if req.method() == Method::HEAD {
        // The length of what a GET would send; the server sends no body for HEAD.
        let empty = futures_util::stream::empty::<Result<bytes::Bytes, ApiError>>();
        return Ok(response.body(SizedStream::new(length, empty)));
    }

    let object = state.storage.get(id, range).await?;
    let media = state.metrics.media.clone();
    media.downloads.inc();
    let stream = state
        .storage
        .stream(object)
        .map_ok(move |chunk| {
            media.download_bytes.inc_by(chunk.len() as u64);
            chunk
        })
        .map_err(ApiError::from);
    Ok(response.body(SizedStream::new(length, stream)))
}

/// Headers that describe this version of the media, on 200, 206 and 304 alike (and so on
/// the answers to HEAD). `Last-Modified` is when the upload completed.
fn validators(response: &mut HttpResponseBuilder, record: &MediaRecord, etag: Option<&str>) {
    if let Some(digest) = record
        .sha256
        .as_deref()
        .and_then(crate::domain::digest::repr_digest)
    {
        response.insert_header((crate::domain::digest::REPR_DIGEST, digest));
    }
    if let Some(etag) = etag {
        response.insert_header((header::ETAG, etag));
    }
    response
        .insert_header((header::CACHE_CONTROL, "private"))
        .insert_header((
            header::EXPIRES,
            httpdate::fmt_http_date(record.expires_at.into()),
        ))
        .insert_header((
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(record.last_modified().into()),
        ));
}

/// What the conditional headers of a GET or HEAD of existing media decide.
#[derive(Debug, PartialEq, Eq)]
enum Condition {
    /// Serve it (whole, or the `Range`).
    Proceed,
    /// 304: `If-None-Match` matched.
    NotModified,
    /// 412: the named precondition is not met.
    Failed(&'static str),
}

/// RFC 9110 13.2.2: `If-Match` first; `If-Unmodified-Since` only without it; then
/// `If-None-Match`; `Range` (and `If-Range`) only after all of them held. `If-Modified-Since`
/// is not evaluated (a client holding the ETag sends `If-None-Match`).
fn evaluate_conditions(
    headers: &HeaderMap,
    etag: Option<&str>,
    last_modified: DateTime<Utc>,
) -> Condition {
    if headers.contains_key(header::IF_MATCH) {
        if !if_match(headers, etag) {
            return Condition::Failed("If-Match");
        }
    } else if let Some(since) = if_unmodified_since(headers) {
        // The comparison is at the one-second precision of the Last-Modified sent.
        if last_modified.timestamp() > since {
            return Condition::Failed("If-Unmodified-Since");
        }
    }
    if etag.is_some_and(|etag| none_match(headers, etag)) {
        return Condition::NotModified;
    }
    Condition::Proceed
}

/// `If-Match` (RFC 9110 13.1.1) with the strong comparison: `*` (the media exists), or a
/// listed tag identical to the ETag; a weak tag (`W/"…"`) never matches, and neither does a
/// value that is not an entity tag. Our ETags are hex, so splitting the list at commas
/// cannot cut one of them apart.
fn if_match(headers: &HeaderMap, etag: Option<&str>) -> bool {
    headers
        .get_all(header::IF_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || Some(tag) == etag)
}

/// `If-Unmodified-Since` (RFC 9110 13.1.4) in Unix seconds; `None` (the header is ignored)
/// when absent, repeated or not a valid HTTP-date.
fn if_unmodified_since(headers: &HeaderMap) -> Option<i64> {
    let mut values = headers.get_all(header::IF_UNMODIFIED_SINCE);
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let date = httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()?;
    let seconds = date.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

/// `If-None-Match` with a weak comparison (RFC 9110 13.1.2): `*` or any listed tag.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The `Range` header, unless `If-Range` names another version (then the whole body).
fn requested_range<'a>(headers: &'a HeaderMap, etag: Option<&str>) -> Option<&'a str> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let matches = etag.is_some_and(|e| if_range.to_str().is_ok_and(|v| v.trim() == e));
        if !matches {
            return None;
        }
    }
    Some(range)
}

#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// No range, a syntactically invalid one, or several: answer with the whole body.
    Whole,
    /// One satisfiable range, as a half-open byte range clipped to the object.
    Part(Range<u64>),
    Unsatisfiable,
}

/// Resolves a `Range` header value against an object of `size` bytes (RFC 9110 14.1.2).
fn resolve(spec: &str, size: u64) -> Resolved {
    // The range unit is case-insensitive (RFC 9110 14.1): `BYTES=0-1` is a byte range.
    let spec = spec.trim();
    let Some(set) = spec
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &spec[6..])
    else {
        return Resolved::Whole;
    };
    let mut ranges = set.split(',').map(str::trim);
    let (Some(first), None) = (ranges.next(), ranges.next()) else {
        return Resolved::Whole;
    };
    let Some((start, end)) = first.split_once('-') else {
        return Resolved::Whole;
    };
    let (start, end) = (start.trim(), end.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if start.is_empty() {
        // bytes=-N: the last N bytes.
        return match number(end) {
            Some(0) => Resolved::Unsatisfiable,
            Some(_) if size == 0 => Resolved::Unsatisfiable,
            Some(n) => Resolved::Part(size.saturating_sub(n)..size),
            None => Resolved::Whole,
        };
    }
    let Some(first_byte) = number(start) else {
        return Resolved::Whole;
    };
    let last_byte = if end.is_empty() {
        None
    } else {
        match number(end) {
            Some(last) if last >= first_byte => Some(last),
            _ => return Resolved::Whole,
        }
    };
    if first_byte >= size {
        return Resolved::Unsatisfiable;
    }
    let end = last_byte.map_or(size, |last| last.saturating_add(1).min(size));
    Resolved::Part(first_byte..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn ranges() {
        assert_eq!(resolve("bytes=0-99", 1000), Resolved::Part(0..100));
        assert_eq!(resolve("bytes=900-", 1000), Resolved::Part(900..1000));
        assert_eq!(resolve("bytes=-100", 1000), Resolved::Part(900..1000));
        assert_eq!(resolve("bytes=-5000", 1000), Resolved::Part(0..1000));
        assert_eq!(resolve("bytes=990-5000", 1000), Resolved::Part(990..1000));
        assert_eq!(resolve("bytes=999-999", 1000), Resolved::Part(999..1000));
        assert_eq!(resolve("bytes=1000-", 1000), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=1000-1001", 1000), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=-0", 1000), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=0-1,5-6", 1000), Resolved::Whole);
        assert_eq!(resolve("bytes=5-1", 1000), Resolved::Whole);
        assert_eq!(resolve("items=0-1", 1000), Resolved::Whole);
        assert_eq!(resolve("bytes=abc", 1000), Resolved::Whole);
        assert_eq!(resolve("bytes=+1-2", 1000), Resolved::Whole);
        // The unit is case-insensitive (RFC 9110 14.1).
        assert_eq!(resolve("BYTES=0-1", 1000), Resolved::Part(0..2));
        assert_eq!(resolve("Bytes=0-1", 1000), Resolved::Part(0..2));
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn conditions_in_the_order_of_rfc_9110() {
        use header::{IF_MATCH, IF_NONE_MATCH, IF_UNMODIFIED_SINCE};
        let etag = Some("\"abc\"");
        let modified = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let date = |seconds: u64| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
        };
        let (at, before, after) = (date(1_000_000), date(999_999), date(1_000_001));
        let judge = |pairs: &[(header::HeaderName, &str)]| {
            evaluate_conditions(&headers(pairs), etag, modified)
        };
        use Condition::*;
        assert_eq!(judge(&[]), Proceed);
        assert_eq!(judge(&[(IF_MATCH, "\"abc\"")]), Proceed);
        assert_eq!(judge(&[(IF_MATCH, "\"x\", \"abc\"")]), Proceed);
        assert_eq!(
            judge(&[(IF_MATCH, "\"x\""), (IF_MATCH, "\"abc\"")]),
            Proceed
        );
        assert_eq!(judge(&[(IF_MATCH, "*")]), Proceed);
        assert_eq!(judge(&[(IF_MATCH, "W/\"abc\"")]), Failed("If-Match"));
        assert_eq!(judge(&[(IF_MATCH, "abc")]), Failed("If-Match"));
        assert_eq!(judge(&[(IF_MATCH, "")]), Failed("If-Match"));
        assert_eq!(judge(&[(IF_UNMODIFIED_SINCE, &at)]), Proceed);
        assert_eq!(judge(&[(IF_UNMODIFIED_SINCE, &after)]), Proceed);
        assert_eq!(
            judge(&[(IF_UNMODIFIED_SINCE, &before)]),
            Failed("If-Unmodified-Since")
        );
        // An invalid or repeated date is ignored.
        assert_eq!(judge(&[(IF_UNMODIFIED_SINCE, "yesterday")]), Proceed);
        assert_eq!(
            judge(&[(IF_UNMODIFIED_SINCE, &before), (IF_UNMODIFIED_SINCE, &at)]),
            Proceed
        );
        // If-Match present: If-Unmodified-Since is not evaluated.
        assert_eq!(
            judge(&[(IF_MATCH, "*"), (IF_UNMODIFIED_SINCE, &before)]),
            Proceed
        );
        // Both come before If-None-Match.
        assert_eq!(
            judge(&[(IF_MATCH, "\"x\""), (IF_NONE_MATCH, "\"abc\"")]),
            Failed("If-Match")
        );
        assert_eq!(
            judge(&[(IF_UNMODIFIED_SINCE, &before), (IF_NONE_MATCH, "*")]),
            Failed("If-Unmodified-Since")
        );
        assert_eq!(
            judge(&[(IF_MATCH, "\"abc\""), (IF_NONE_MATCH, "\"abc\"")]),
            NotModified
        );
        // Without an ETag only `*` matches.
        let none = |pairs: &[(header::HeaderName, &str)]| {
            evaluate_conditions(&headers(pairs), None, modified)
        };
        assert_eq!(none(&[(IF_MATCH, "*")]), Proceed);
        assert_eq!(none(&[(IF_MATCH, "\"abc\"")]), Failed("If-Match"));
    }

    #[test]
    fn if_none_match() {
        let mut headers = HeaderMap::new();
        let etag = "\"abc\"";
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(none_match(&headers, etag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        assert!(!none_match(&headers, etag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&headers, etag));
    }
}
