//! media-node: the upload node of a messaging API. Clients upload a file once, get an id,
//! and refer to that id when they send messages; files are kept for a retention period
//! (24 hours by default), then removed.
//!
//! The folders are the layers, each importing only from those below it (`ARCHITECTURE.md`):
//! `domain` at the bottom; `settings` and `metrics`; the backends, `metadata` (rows, in SQL)
//! and `storage` (bytes, in object storage); the core, `upload`, `jobs` and `auth`; the HTTP
//! edge, `http`; and `startup`, which assembles the servers from `settings`.

pub mod auth;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod metadata;
pub mod metrics;
pub mod settings;
pub mod startup;
pub mod storage;
pub mod upload;
