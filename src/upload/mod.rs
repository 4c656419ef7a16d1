//! The core of an upload, from its first byte to ready: the session that streams a body into
//! storage and commits or rolls back its row (`ingest`), the part buffers (`buffer`), the
//! stall guard of the body (`body_guard`), the memory budget and per-account limits
//! (`limits`) and the shutdown cut-off (`shutdown`). It knows no HTTP status: refusals are
//! the catalogue's errors, which `http` answers.

pub mod body_guard;
pub mod buffer;
mod cleanup;
pub mod ingest;
pub mod limits;
mod part_writer;
pub mod resumable;
pub mod shutdown;
