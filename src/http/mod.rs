//! The HTTP edge: the public server (`server`) and its routes (`routes`), the one mapping of
//! the error catalogue to status and JSON body (`error`), the OpenAPI document, signed
//! links, request ids, the per-request telemetry and access log, the connection caps, form
//! uploads, the answers actix-http writes on its own (`own_answers`) and the admin listener
//! (`admin`). Nothing below imports it.

pub mod access_log;
pub mod admin;
pub mod connections;
pub mod error;
pub mod form;
pub mod held_payload;
pub mod openapi;
pub mod own_answers;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod signed_url;
pub mod telemetry;
