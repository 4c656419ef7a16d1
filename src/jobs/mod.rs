//! The work that runs beside the requests: the reaper, which removes expired media and
//! what crashed uploads left (`reaper`), and an account's purge (`purge`).

pub mod purge;
pub mod reaper;
