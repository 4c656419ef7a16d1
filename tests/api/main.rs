//! API tests: every status and header of the contract, on both backend pairs.

mod housekeeping;

mod auth;
mod content;
mod delete;
mod download;
mod errors;
mod form;
mod http_layer;
mod idempotency;
mod limits;
mod openapi;
mod ops;
mod profile;
mod resumable;
mod streamed_put;
mod upload;
