//! The OpenAPI 3.1 document of the public API, generated with `utoipa` and served at
//! `GET /openapi.json`. The operations below are declarations only (the handlers live in
//! `routes/`); a copy is checked in as `docs/openapi.json`, and a test fails when it differs
//! from what this module generates (`UPDATE_OPENAPI=1 cargo test --lib openapi` rewrites it).
//!
//! Every status an operation declares is one its handler can answer today.

#![allow(dead_code)] // The schema types and operation functions exist for the document only.

use std::sync::OnceLock;

use actix_web::{http::header, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

use crate::http::error::API_VERSION;

/// The document, rendered once.
pub fn json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut text = document()
            .to_pretty_json()
            .expect("the document serialises");
        text.push('\n');
        text
    })
}

/// The document as a value.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = API_VERSION.to_owned();
    doc
}

/// `GET /openapi.json`: needs no token.
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(json())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "media-node",
        description = "The upload node of a messaging API: upload a file once, get an id, \
            refer to it when sending messages. Files are kept 24 hours. Every request needs \
            `Authorization: Bearer <JWT>` except `GET /openapi.json` and a signed download \
            link from `/v1/media/{id}/info`. A method a path does not serve is answered 405 \
            (code 1025) with `Allow`; an unknown path 404 (code 1006). Every answer carries \
            `X-Request-Id`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        upload,
        list,
        download,
        download_head,
        delete,
        info,
        download_for_account,
        openapi_json
    ),
    components(schemas(Error, ErrorItem), responses(
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RequestTimeout,
        Conflict,
        PayloadTooLarge,
        PreconditionFailed,
        RangeNotSatisfiable,
        UnprocessableContent,
        TooManyRequests,
        InternalError,
        ServiceUnavailable
    )),
    modifiers(&BearerScheme, &OptionalHeaders),
    tags((name = "media", description = "Upload, download, inspect, list and delete media"))
)]
struct ApiDoc;

/// The `bearer` security scheme (a JWT with `sub` and `exp`).
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with `sub` (the owning account) and `exp`; `iss`/`aud` when \
                         configured. An optional `scope` claim must hold `media:write` to \
                         upload or delete and `media:read` to read.",
                    ))
                    .build(),
            ),
        );
    }
}

/// An optional header is absent or a string, never JSON null (utoipa renders an
/// `Option<String>` header as `["string", "null"]`).
struct OptionalHeaders;

impl Modify for OptionalHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::RefOr;
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.head,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in != ParameterIn::Header {
                        continue;
                    }
                    if let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema {
                        if let SchemaType::Array(types) = &schema.schema_type {
                            if let [only] = types
                                .iter()
                                .filter(|t| **t != Type::Null)
                                .collect::<Vec<_>>()[..]
                            {
                                schema.schema_type = SchemaType::Type(only.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- Schemas ----------------------------------------------------------------------------

/// The `meta` object of every JSON body.
#[derive(ToSchema)]
#[schema(example = json!({"api_status": "stable", "version": "2.0.1"}))]
struct Meta {
    #[schema(example = "stable")]
    api_status: String,
    #[schema(example = "2.0.1")]
    version: String,
}

/// A media id: a UUID, hyphenated (either case in requests, lower case in answers).
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", example = "f32bb4f9-850b-43c6-9b91-279831914c95")]
struct MediaId(String);

/// The raw bytes of a file.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
struct FileBytes(Vec<u8>);

/// A form (`curl -F file=@picture.jpg`, a file input, the Cloud API's media upload) with
/// exactly one file part, which is the upload; its bytes stream through like a raw body's,
/// held to the same limits (the form's `Content-Length` may exceed `limits.max_upload_bytes`
/// by up to 64 KiB of envelope). Text fields are ignored. No file part, two, or a malformed
/// form (no boundary, cut short) is 400 (code 1009).
#[derive(ToSchema)]
struct UploadForm {
    /// The file: the one part with a `filename` in its Content-Disposition, whatever its
    /// field name. The filename's extension is used when `X-Gr-File-Extension` is absent.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Ignored, whatever it holds (the Cloud API's upload sends `whatsapp`).
    #[schema(value_type = Value, required = false, example = "whatsapp")]
    messaging_product: Option<serde_json::Value>,
    /// Ignored, whatever it holds (the Cloud API's upload sends the file's MIME type).
    #[schema(rename = "type", value_type = Value, required = false, example = "image/jpeg")]
    kind: Option<serde_json::Value>,
}

#[derive(ToSchema)]
struct CreatedMedia {
    id: MediaId,
}

/// The answer to an upload.
#[derive(ToSchema)]
struct Created {
    /// Exactly one element: the new media.
    #[schema(min_items = 1, max_items = 1)]
    media: Vec<CreatedMedia>,
    meta: Meta,
}

/// The answer to a delete.
#[derive(ToSchema)]
struct Deleted {
    meta: Meta,
}

/// One error.
#[derive(ToSchema)]
struct ErrorItem {
    /// 1004 resource already exists (409: an upload with the Idempotency-Key is still in
    /// progress), 1005 access denied (401, 403), 1006 not found (404), 1008 required
    /// parameter missing (400), 1009 parameter value not valid (400, 408, 412, 413, 416, 422),
    /// 1011 service not ready (503), 1014 internal error (500), 1015 too many requests
    /// (429), 1025 invalid request (405).
    #[schema(schema_with = error_code)]
    code: u16,
    #[schema(example = "Parameter value is not valid")]
    title: String,
    /// A human line; for a 500 it carries the request id, never internals.
    #[schema(example = "X-Gr-File-Extension must be 1-16 letters or digits")]
    details: String,
}

/// The stable numeric codes (those of the WhatsApp Business API where one fits).
fn error_code() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .enum_values(Some([1004, 1005, 1006, 1008, 1009, 1011, 1014, 1015, 1025]))
        .build()
}

/// The body of every error answer of the API (not of 304 or HEAD, which have none).
#[derive(ToSchema)]
struct Error {
    #[schema(min_items = 1)]
    errors: Vec<ErrorItem>,
    meta: Meta,
}

/// A stored file, as listed.
#[derive(ToSchema)]
struct MediaObject {
    id: MediaId,
    /// The served type, from the extension.
    #[schema(example = "image/jpeg")]
    mime_type: String,
    /// The type detected from the content; null when not detected.
    #[schema(required = true)]
    detected_mime_type: Option<String>,
    /// Lower case, without the dot.
    #[schema(example = "jpeg")]
    extension: String,
    /// Bytes.
    #[schema(minimum = 1)]
    file_size: i64,
    /// SHA-256 of the content, lower-case hex.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// From then on the media is gone (404).
    #[schema(format = DateTime)]
    expires_at: String,
}

/// `GET /v1/media/{id}/info`.
#[derive(ToSchema)]
struct MediaInfo {
    id: MediaId,
    #[schema(example = "image/jpeg")]
    mime_type: String,
    #[schema(required = true)]
    detected_mime_type: Option<String>,
    #[schema(example = "jpeg")]
    extension: String,
    #[schema(minimum = 1)]
    file_size: i64,
    #[schema(pattern = "^[0-9a-f]{64}$")]
    sha256: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// A short-lived download link for this id that needs no token (relative unless a
    /// public base URL is configured); null when no link key is configured.
    #[schema(required = true)]
    url: Option<String>,
    meta: Meta,
}

/// `GET /v1/media`: a page of the caller's live media, newest first.
#[derive(ToSchema)]
struct MediaList {
    media: Vec<MediaObject>,
    /// The cursor of the next page (pass it as `after`), null on the last page.
    #[schema(required = true, pattern = "^0000[0-9a-f]{44}$")]
    next: Option<String>,
    meta: Meta,
}

// ---- Shared error answers -----------------------------------------------------------------

#[derive(ToResponse)]
#[response(
    description = "Bad request (code 1008: a required parameter is missing; 1009: a \
    value is not valid)"
)]
struct BadRequest(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "Missing, malformed, expired or badly signed token, or a bad or expired \
        link signature (code 1005)",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
struct Unauthorized(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "A valid token without the needed scope (code 1005); checked before \
    the id"
)]
struct Forbidden(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "No such media for this account, a malformed id, or expired \
    (code 1006)"
)]
struct NotFound(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "The body stalled for the idle timeout or came slower than the \
    minimum rate (code 1009); nothing was kept"
)]
struct RequestTimeout(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "An upload with this Idempotency-Key is still in progress \
    (code 1004); refused before the body is read (with `Expect: 100-continue`, before it is \
    sent). Retry once it has finished"
)]
struct Conflict(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "The Idempotency-Key was used by this account for an upload \
    with other content, or with another X-Gr-File-Extension (refused before the body is \
    read; with `Expect: 100-continue`, before it is sent) (code 1009); nothing of this upload \
    was kept"
)]
struct UnprocessableContent(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "The body is over the limit, or over the size rule of the media \
    profile for its extension, by Content-Length before it is read or while streaming \
    (code 1009, the details naming the rule); nothing was kept"
)]
struct PayloadTooLarge(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "A precondition is not met (code 1009, the details naming the header): \
        `If-Match` names no tag identical to the ETag (strong comparison), or, without \
        `If-Match`, the media was last modified after `If-Unmodified-Since`"
)]
struct PreconditionFailed(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "The Range cannot be satisfied (code 1009)",
    headers(("Content-Range" = String, description = "`bytes */<size>`"))
)]
struct RangeNotSatisfiable(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "An account limit: concurrent uploads, its share of the upload memory, or \
        its request rate (a signed link's downloads count as its owner's); or a signed link's \
        own request rate (code 1015); nothing was stored",
    headers(("Retry-After" = String, description = "Seconds"))
)]
struct TooManyRequests(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "A bug, or object storage refusing the service's configuration \
    (code 1014); details carry the request id"
)]
struct InternalError(#[to_schema] Error);

#[derive(ToResponse)]
#[response(
    description = "Database or object storage unavailable, the replica's upload memory full, \
        or the replica stopping (code 1011); nothing was stored",
    headers(("Retry-After" = String, description = "Seconds"))
)]
struct ServiceUnavailable(#[to_schema] Error);

// ---- Operations ---------------------------------------------------------------------------

/// Upload a file
///
/// The raw bytes of the file as the body (not multipart), 1 byte up to the configured limit
/// (37 MiB by default). All or nothing: a refused or failed upload leaves nothing behind.
/// With `Expect: 100-continue` the token, scope, extension, Idempotency-Key,
/// Content-Length and the form of Content-Digest are checked before the body is sent. When a media profile is configured (`media.profile`:
/// `whatsapp`), its per-type rules apply too: a body over the size rule of its extension
/// is 413, content against a rule (an `.ogg` that is not Opus, an MP4 that is not H.264
/// with AAC, a file that is not a valid one of its format) is 400, both code 1009 with
/// details naming the rule.
///
/// With an `Idempotency-Key`, a retry by the same account with the same key and the same
/// bytes answers the media stored by the first upload (201, same id and `Location`,
/// `Idempotent-Replayed: true`) and keeps nothing of its own; other bytes, or another
/// extension (the extension is part of the request), are 422; a retry while the first
/// upload is still streaming is 409. A key is free again once its media expired or was
/// deleted, or once its first upload counts as crashed.
#[utoipa::path(
    post,
    path = "/v1/media",
    operation_id = "upload",
    tag = "media",
    params(
        ("X-Gr-File-Extension" = Option<String>, Header,
            description = "The file's extension without the dot: 1-16 ASCII letters or \
                digits, case-insensitive, one leading dot tolerated. The stored type comes \
                from it, never from Content-Type. Required with a raw body (missing: 400, \
                code 1008); with a multipart/form-data body it may be left out, the file \
                part's filename then giving it (none there either: 400, code 1008).",
            example = "jpeg", pattern = "^\\.?[A-Za-z0-9]{1,16}$"),
        ("Content-Digest" = Option<String>, Header,
            description = "RFC 9530 `sha-256=:<base64>:`; verified before the upload \
                commits, a mismatch or a malformed sha-256 member is 400 (code 1009) and \
                nothing is kept. Members of other algorithms are ignored. With a \
                multipart/form-data body (whose content is the whole form) it is refused, \
                400 (code 1009), as is Repr-Digest."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "IETF httpapi draft: 1-255 visible ASCII characters (0x21-0x7E), \
                the first not a double quote, or 1-255 of them in double quotes (a \
                Structured Field string; the key is what the quotes enclose; a lone or \
                unclosed quote is invalid). Per account; kept as long as the media. Invalid, or \
                sent twice, is 400 (code 1009).",
            example = "4b1c7e0e-5d7f-4a43-9f5e-3f4a1b2c9d10",
            pattern = "^([!#-~][!-~]{0,254}|\"[!-~]{1,255}\")$"),
    ),
    request_body(description = "The file's bytes: the raw body (any Content-Type but \
        multipart/form-data), or a multipart/form-data form with exactly one file part",
        content(
            (FileBytes = "application/octet-stream"),
            (UploadForm = "multipart/form-data"),
        )),
    responses(
        (status = 201, description = "Stored (or, for an Idempotency-Key retry, stored \
            before)", body = Created,
            headers(
                ("Location" = String, description = "`/v1/media/<id>`"),
                ("Idempotent-Replayed" = String,
                    description = "`true` when an Idempotency-Key retry answers the media \
                        its first upload stored; absent otherwise"),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = UnprocessableContent),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("bearer" = []))
)]
fn upload() {}

/// List the caller's media
///
/// The caller's live media, newest first, a page at a time (needs `media:read`).
#[utoipa::path(
    get,
    path = "/v1/media",
    operation_id = "list",
    tag = "media",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "Page size, 1-1000 (default 100)"),
        ("after" = Option<String>, Query, pattern = "^0000[0-9a-f]{44}$",
            description = "The `next` cursor of the previous page (opaque)"),
    ),
    responses(
        (status = 200, description = "A page", body = MediaList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("bearer" = []))
)]
fn list() {}

/// Download a file
///
/// The bytes, streamed, with their stored type. Either the owner's token or a signed link
/// from `/v1/media/{id}/info` (`expires` and `signature` in the query, no token).
/// One `Range` gives 206 (several may give the whole body); `If-None-Match` gives 304.
/// `If-Match` and `If-Unmodified-Since` that are not met give 412; the conditional
/// headers are evaluated in the order of RFC 9110 13.2.2 (If-Match, If-Unmodified-Since,
/// If-None-Match, then Range and If-Range).
/// A signed link has a request rate of its own on each replica
/// (`limits.signed_link_rate_per_second`, default 5 a second with a burst of 10), and its
/// downloads count against the owner's account rate when one is configured: over either,
/// 429 with `Retry-After`.
#[utoipa::path(
    get,
    path = "/v1/media/{id}",
    operation_id = "download",
    tag = "media",
    params(
        ("id" = String, Path, description = "The media id (a UUID; anything else is 404)"),
        ("expires" = Option<i64>, Query,
            description = "Signed link: its expiry (Unix seconds); only with `signature`"),
        ("signature" = Option<String>, Query,
            description = "Signed link: its HMAC (hex); a bad or expired one is 401, one \
                fetched more often than its rate allows 429"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-99`"),
        ("If-Range" = Option<String>, Header,
            description = "The ETag the Range applies to; another gives the whole body"),
        ("If-None-Match" = Option<String>, Header,
            description = "ETags the client holds; a match (or `*`) gives 304"),
        ("If-Match" = Option<String>, Header,
            description = "ETags (or `*`) the client expects; none identical to the ETag \
                (strong comparison: a weak `W/` tag never matches) gives 412"),
        ("If-Unmodified-Since" = Option<String>, Header,
            description = "An HTTP-date; media last modified after it gives 412. Ignored \
                with If-Match, and when not a valid date"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "*/*", body = FileBytes,
            headers(
                ("Content-Type" = String, description = "From the extension"),
                ("ETag" = String, description = "SHA-256 of the content, lower-case hex, quoted"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Disposition" = String,
                    description = "`attachment; filename=\"<id>.<ext>\"`"),
                ("Cache-Control" = String, description = "`private`"),
                ("Expires" = String, description = "The expiry, an HTTP-date"),
                ("Last-Modified" = String,
                    description = "When the upload completed, an HTTP-date"),
                ("Repr-Digest" = String, description = "`sha-256=:<base64>:` of the whole file"),
            )),
        (status = 206, description = "One range of the file", content_type = "*/*",
            body = FileBytes,
            headers(
                ("Content-Range" = String, description = "`bytes <first>-<last>/<size>`"),
                ("ETag" = String, description = "As for 200"),
                ("Last-Modified" = String, description = "As for 200"),
                ("Repr-Digest" = String, description = "Of the whole file"),
            )),
        (status = 304, description = "Not modified (If-None-Match matched); no body",
            headers(
                ("ETag" = String, description = "As for 200"),
                ("Last-Modified" = String, description = "As for 200"),
            )),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
        (status = 416, response = RangeNotSatisfiable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security((), ("bearer" = []))
)]
fn download() {}

/// A file's headers
///
/// As `GET`, without a body (answers carry no body, errors included).
#[utoipa::path(
    head,
    path = "/v1/media/{id}",
    operation_id = "download_head",
    tag = "media",
    params(
        ("id" = String, Path, description = "The media id"),
        ("expires" = Option<i64>, Query, description = "Signed link: its expiry"),
        ("signature" = Option<String>, Query, description = "Signed link: its HMAC (hex)"),
        ("Range" = Option<String>, Header, description = "One byte range"),
        ("If-Range" = Option<String>, Header, description = "The ETag the Range applies to"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds"),
        ("If-Match" = Option<String>, Header, description = "ETags the client expects"),
        ("If-Unmodified-Since" = Option<String>, Header, description = "An HTTP-date"),
    ),
    responses(
        (status = 200, description = "The whole file's headers",
            headers(
                ("Content-Length" = u64, description = "What a GET would send"),
                ("Last-Modified" = String,
                    description = "When the upload completed, an HTTP-date"),
            )),
        (status = 206, description = "One range's headers"),
        (status = 304, description = "Not modified"),
        (status = 401, description = "Not authenticated"),
        (status = 403, description = "Scope missing"),
        (status = 404, description = "No such media"),
        (status = 412, description = "Precondition not met (If-Match, If-Unmodified-Since)"),
        (status = 416, description = "Range not satisfiable"),
        (status = 429, description = "Account limit, or the signed link's own rate"),
        (status = 500, description = "Internal error"),
        (status = 503, description = "Unavailable"),
    ),
    security((), ("bearer" = []))
)]
fn download_head() {}

/// Download a file (account form)
///
/// The same answer as `GET /v1/media/{id}` when `account` is the token's `sub`, 404
/// otherwise. No signed links here.
#[utoipa::path(
    get,
    path = "/v1/{account}/media/{id}",
    operation_id = "download_for_account",
    tag = "media",
    params(
        ("account" = String, Path, description = "The token's `sub`"),
        ("id" = String, Path, description = "The media id"),
        ("Range" = Option<String>, Header, description = "One byte range"),
        ("If-Range" = Option<String>, Header, description = "The ETag the Range applies to"),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds"),
        ("If-Match" = Option<String>, Header,
            description = "ETags (or `*`) the client expects; no identical one gives 412"),
        ("If-Unmodified-Since" = Option<String>, Header,
            description = "An HTTP-date; modified after it gives 412 (ignored with If-Match)"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "*/*", body = FileBytes,
            headers(("Last-Modified" = String,
                description = "When the upload completed, an HTTP-date"))),
        (status = 206, description = "One range of the file", content_type = "*/*",
            body = FileBytes),
        (status = 304, description = "Not modified; no body"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 412, response = PreconditionFailed),
        (status = 416, response = RangeNotSatisfiable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("bearer" = []))
)]
fn download_for_account() {}

/// Delete a file
///
/// Removes the object and its row (needs `media:write`).
#[utoipa::path(
    delete,
    path = "/v1/media/{id}",
    operation_id = "delete",
    tag = "media",
    params(("id" = String, Path, description = "The media id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("bearer" = []))
)]
fn delete() {}

/// What is stored
///
/// The media object and a short-lived signed link to its bytes that needs no token.
#[utoipa::path(
    get,
    path = "/v1/media/{id}/info",
    operation_id = "info",
    tag = "media",
    params(("id" = String, Path, description = "The media id")),
    responses(
        (status = 200, description = "The media object", body = MediaInfo,
            headers(("Cache-Control" = String, description = "`private, no-store`"))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
    security(("bearer" = []))
)]
fn info() {}

/// This document
///
/// Needs no token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json",
        body = Object)),
    security(())
)]
fn openapi_json() {}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

    /// The checked-in document is the generated one. `UPDATE_OPENAPI=1` rewrites it.
    #[test]
    fn checked_in_document_is_current() {
        let generated = json();
        if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
            std::fs::write(CHECKED_IN, generated).expect("write docs/openapi.json");
            return;
        }
        let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the generated document; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test --lib openapi` and commit it"
        );
    }

    #[test]
    fn every_operation_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = &doc["paths"];
        for (path, method) in [
            ("/v1/media", "post"),
            ("/v1/media", "get"),
            ("/v1/media/{id}", "get"),
            ("/v1/media/{id}", "head"),
            ("/v1/media/{id}", "delete"),
            ("/v1/media/{id}/info", "get"),
            ("/v1/{account}/media/{id}", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
