//! The backends under the API: the metadata repository's and the storage seam's contracts,
//! each on both kinds (SQLite and PostgreSQL; local disk and the S3 server), and the reaper —
//! inside one application, through an S3 outage, and as three replicas at the same moment.

mod metadata_contract;
mod storage_contract;

mod reaper;
mod reaper_outage;
mod reaper_replicas;
