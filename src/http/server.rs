//! The public listener. `HttpServer` has no hook for `Expect: 100-continue`, and actix-http
//! answers `100 Continue` by itself, before the application sees the request: a client
//! would start sending a body that is then refused. So the listener is assembled from the
//! parts `HttpServer` uses (actix-server, actix-http's `HttpService`, the `App` as the
//! service) with an expect service that checks the token and the declared length first.
//! Everything else is set as `HttpServer` sets it (graceful shutdown signal, worker count,
//! connection cap, timeouts, `TCP_NODELAY`, disabled signals).

use std::net::TcpListener;
use std::time::Duration;

use actix_http::body::BoxBody;
use actix_http::{HttpService, Request, Response};
use actix_server::Server;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::http::{header::HeaderValue, Method};
use actix_web::{middleware, web, App, HttpMessage, ResponseError};

use crate::auth::SCOPE_WRITE;
use crate::domain::ApiError;
use crate::http::own_answers::StampedIo;
use crate::http::request_id::{self, RequestId};
use crate::http::routes::{self, AppState};

/// How the public listener runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub workers: usize,
    pub max_connections_per_worker: usize,
    pub shutdown_timeout: Duration,
    pub request_header_timeout: Duration,
    pub keep_alive: Duration,
    pub send_timeout: Duration,
}

/// `HttpServer`'s default: how long a connection lingers after its last answer when the
/// request body was not read, so the client can read the answer.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the public API on `listener`.
pub fn start(
    listener: TcpListener,
    options: Options,
    state: web::Data<AppState>,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder
        .workers(options.workers)
        .max_concurrent_connections(options.max_connections_per_worker)
        // HttpServer's default.
        .backlog(1024)
        .shutdown_timeout(options.shutdown_timeout.as_secs_f64().ceil() as u64)
        .disable_signals()
        .listen("media-node-public", listener, move || {
            let shutdown = shutdown.clone();
            let expect_state = state.clone();
            let app_state = state.clone();
            let app = move || {
                App::new()
                    .app_data(app_state.clone())
                    .app_data(
                        web::PathConfig::default()
                            .error_handler(|_, _| ApiError::media_not_found().into()),
                    )
                    .wrap(middleware::from_fn(crate::http::telemetry::middleware))
                    .configure(routes::configure)
                    .default_service(web::to(routes::not_found))
            };
            let app = app()
                .into_factory()
                .map_err(|err: actix_web::Error| err.error_response());
            let send_timeout = options.send_timeout;
            let service = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .keep_alive(options.keep_alive)
                .client_request_timeout(options.request_header_timeout)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .h1_allow_half_closed(true)
                // Small answers (errors, short files) go out at once instead of waiting for
                // the client's delayed ACK.
                .tcp_nodelay(true)
                .local_addr(addr)
                .on_connect_ext(
                    move |io: &StampedIo<actix_web::rt::net::TcpStream>, _: &mut _| {
                        crate::http::connections::on_connect(io.get_ref(), send_timeout)
                    },
                )
                .expect(fn_service(move |req: Request| {
                    let state = expect_state.clone();
                    async move { expect_continue(&state, req).await }
                }))
                .finish(map_config(app, move |()| AppConfig::default()));
            // What `HttpService::tcp` does, with the stream wrapped so that actix-http's
            // own answers get a request id too.
            fn_service(|io: actix_web::rt::net::TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    StampedIo::new(io),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(service)
        })?
        .run();
    Ok(server)
}

/// Decides an `Expect: 100-continue` request: an upload is refused with its final answer
/// (401, 403, 400 for any header `routes::upload::check_headers` refuses, 413, 429 for an
/// account with all its uploads running, 409 for an
/// `Idempotency-Key` whose upload still streams, 422 for one whose media has another
/// extension) before the client sends its body; so are a tus creation with its first bytes
/// and a tus `PATCH` (401, 403, the headers their handlers refuse: 412, 415, 400, 413; 429);
/// anything else continues.
async fn expect_continue(state: &AppState, req: Request) -> Result<Request, Response<BoxBody>> {
    let refusal = |err: ApiError| {
        let id = RequestId::from_header(req.headers().get(&request_id::HEADER));
        tracing::info!(request_id = %id, status = err.status_code().as_u16(), "upload refused before its body");
        let mut response = err.error_response();
        if let Ok(value) = HeaderValue::from_str(id.as_str()) {
            response.headers_mut().insert(request_id::HEADER, value);
        }
        if req.path().starts_with("/v1/uploads") {
            response.headers_mut().insert(
                routes::uploads::TUS_RESUMABLE,
                HeaderValue::from_static(routes::uploads::VERSION),
            );
        }
        Response::from(response)
    };
    // A tus creation with its first bytes, or a tus PATCH: the same checks as their
    // handlers run before reading the body.
    let limit = state.ingest.max_upload_bytes;
    let resumable = match (req.method(), req.path()) {
        (&Method::POST, "/v1/uploads") => {
            Some(routes::uploads::check_creation(req.headers(), limit, state.profile).map(drop))
        }
        (&Method::PATCH, path) if path.starts_with("/v1/uploads/") => {
            Some(routes::uploads::check_patch(req.headers(), limit).map(drop))
        }
        _ => None,
    };
    if let Some(headers) = resumable {
        let checked = state.auth.authenticate(req.headers()).and_then(|caller| {
            caller.require(SCOPE_WRITE)?;
            headers?;
            state.limits.upload_allowed(&caller.account)
        });
        return match checked {
            Ok(()) => Ok(req),
            Err(err) => Err(refusal(err)),
        };
    }
    if req.method() != Method::POST || req.path() != "/v1/media" {
        return Ok(req);
    }
    let checked = state.auth.authenticate(req.headers()).and_then(|caller| {
        caller.require(SCOPE_WRITE)?;
        let headers = routes::upload::check_headers(
            req.headers(),
            state.ingest.max_upload_bytes,
            state.profile,
        )?;
        state.limits.upload_allowed(&caller.account)?;
        Ok((caller, headers))
    });
    let key_refusal = match &checked {
        Ok((
            caller,
            routes::upload::UploadHeaders {
                extension: Some(extension),
                key: Some(key),
                ..
            },
        )) => {
            state
                .ingest
                .key_refusal(&caller.account, key, extension)
                .await
        }
        _ => None,
    };
    match (checked, key_refusal) {
        (Ok(_), Some(err)) | (Err(err), _) => Err(refusal(err)),
        (Ok(_), None) => Ok(req),
    }
}
