//! The bottom layer: what the service's words mean, with no backend and no HTTP. Ids and
//! validated values, the contract's error catalogue (what went wrong, never a status), the
//! content checks and the media profiles. It imports nothing else of the crate.

pub mod content_check;
pub mod digest;
pub mod error;
mod ids;
pub mod profile;
pub mod resumable_hash;
pub mod tus_metadata;

pub use error::ApiError;
pub use ids::*;
