//! `GET /v1/media`: the caller's live media, newest first, a page at a time (keyset
//! pagination: `next` is an opaque cursor, `after` takes it back).

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::state::AppState;
use crate::auth::SCOPE_READ;
use crate::domain::ApiError;
use crate::domain::MediaId;
use crate::http::error::meta;
use crate::metadata::{ListCursor, MediaRecord};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(&req, SCOPE_READ).await?;
    let (limit, after) = page(req.query_string())?;
    // One more than asked tells whether a next page exists.
    let mut rows = state
        .metadata
        .list_readable(&caller.account, Utc::now(), after, limit + 1)
        .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| {
            encode_cursor(ListCursor {
                created_at: last.created_at,
                id: last.id,
            })
        })
    } else {
        None
    };
    let media: Vec<Value> = rows.iter().map(media_object).collect();
    Ok(HttpResponse::Ok().json(json!({ "media": media, "next": next, "meta": meta() })))
}

/// The media object of the listing and of `/info` (which adds its `url`).
pub fn media_object(record: &MediaRecord) -> Value {
    json!({
        "id": record.id.to_string(),
        "mime_type": record.content_type,
        "detected_mime_type": record.detected_mime_type,
        "extension": record.extension.as_str(),
        "file_size": record.size_bytes,
        "sha256": record.sha256,
        "created_at": timestamp(record.created_at),
        "expires_at": timestamp(record.expires_at),
    })
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `limit` (1-1000, default 100) and `after` from the query; each at most once.
fn page(query: &str) -> Result<(u32, Option<ListCursor>), ApiError> {
    let invalid = |what: &str| ApiError::InvalidParameter(what.to_owned());
    let (mut limit, mut after) = (None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "limit" => &mut limit,
            "after" => &mut after,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(invalid(&format!("{key} may be given once")));
        }
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| invalid("limit must be a whole number from 1 to 1000"))?,
    };
    let after = after
        .map(|raw| {
            decode_cursor(&raw).ok_or_else(|| invalid("after is not a cursor of this listing"))
        })
        .transpose()?;
    Ok((limit, after))
}

/// 8 bytes of creation time (Unix milliseconds) and the 16 bytes of the id, in hex.
fn encode_cursor(cursor: ListCursor) -> String {
    let mut bytes = cursor.created_at.timestamp_millis().to_be_bytes().to_vec();
    bytes.extend_from_slice(cursor.id.as_uuid().as_bytes());
    hex::encode(bytes)
}

fn decode_cursor(raw: &str) -> Option<ListCursor> {
    let bytes = hex::decode(raw).ok()?;
    if bytes.len() != 24 {
        return None;
    }
    let millis = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    Some(ListCursor {
        created_at: DateTime::from_timestamp_millis(millis)?,
        id: MediaId::from(uuid::Uuid::from_slice(&bytes[8..]).ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursor = ListCursor {
            created_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            id: MediaId::new_random(),
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)), Some(cursor));
        assert!(decode_cursor("zz").is_none());
        assert!(decode_cursor(&"0".repeat(46)).is_none());
        assert!(page("after=nothex").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(page("").unwrap().0, 100);
        assert_eq!(page("limit=1000").unwrap().0, 1000);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=x",
            "limit=1&limit=2",
        ] {
            assert!(page(bad).is_err(), "{bad}");
        }
        assert_eq!(page("other=1&limit=5").unwrap().0, 5);
    }
}
