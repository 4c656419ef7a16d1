//! media-node: the upload node of a messaging API. Clients upload a file once, get an id,
//! and refer to that id when they send messages; files are kept for a retention period
//! (24 hours by default), then removed.
//!
//! Bytes go to object storage (`storage`), metadata and expiry to SQL (`metadata`); an
//! upload's "row, stream, commit or roll back" lives in `ingest`; `startup` assembles the
//! HTTP servers from `settings`.

pub mod allocator;
pub mod auth;
pub mod body;
pub mod connections;
pub mod content_check;
pub mod digest;
pub mod domain;
pub mod error;
pub mod form;
pub mod ingest;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod profile;
pub mod public_server;
pub mod purge;
pub mod reaper;
pub mod request_id;
pub mod response_body;
pub mod routes;
pub mod settings;
pub mod signed_url;
pub mod stamped_io;
pub mod startup;
pub mod storage;
pub mod telemetry;
