//! What uploads and accounts may take of a replica: the memory budget of upload buffers,
//! each account's share of it, each account's concurrent uploads and, when configured, each
//! account's request rate.
//!
//! The budget is a semaphore whose permits are KiB (a `u32` of KiB covers 4 TiB; bytes
//! would overflow the `u32` that `acquire_many` takes at 4 GiB). An upload reserves a part
//! buffer's worth before it starts filling that buffer, and the reservation travels with
//! the part until storage has it; see `UploadSlot::reserve` for how much is reserved.
//! Each account has a semaphore of its own, its share of the budget, taken before the
//! replica's: what one account waits for in the replica's queue is at most its share.
//!
//! Shares alone are not fair when a few accounts hold the budget with slow uploads: their
//! parts are reserved until the parts fill, and a trickle fills them slowly, so another
//! account would wait for a part that no one gives back. A part of the budget, the
//! newcomers' reserve (`limits.newcomer_memory_share`), is kept for accounts that hold
//! nothing of it: an upload of such an account takes from the reserve when the rest is full,
//! and an account that holds something never does. An honest account thus always gets
//! through, one part at a time, however much others hold; only many accounts arriving at
//! once share the reserve among them.
//!
//! Per-account state lives in a map whose size is bounded: an entry that no upload holds
//! and whose rate limiter has refilled is dropped when the map is full, so a client that
//! mints tokens with ever new `sub`s cannot grow it without bound.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use prometheus::IntGauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::{AccountId, ApiError};
use crate::metrics::LimitMetrics;
use crate::settings::LimitSettings;

/// Accounts tracked at most. Entries held by an upload are never dropped, and there are
/// fewer of those than connections; the others are dropped first when the map fills.
const MAX_TRACKED_ACCOUNTS: usize = 16_384;

/// The limits of one replica, shared by all its workers.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("budget_kib", &self.inner.budget_kib)
            .field("reserve_kib", &self.inner.reserve_kib)
            .field("account_share_kib", &self.inner.account_share_kib)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// The budget but the newcomers' reserve, open to every account.
    memory: Arc<Semaphore>,
    /// The newcomers' reserve, open to accounts that hold no memory.
    reserve: Arc<Semaphore>,
    budget_kib: u32,
    shared_kib: u32,
    reserve_kib: u32,
    account_share_kib: u32,
    wait: Duration,
    max_uploads_per_account: usize,
    /// Reservations waiting now, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
    rate: Option<Quota>,
    /// How long an unused rate limiter takes to refill: an entry idle for longer loses
    /// nothing when dropped.
    refill: Duration,
    accounts: Mutex<HashMap<AccountId, Arc<Account>>>,
    metrics: LimitMetrics,
}

struct Account {
    memory: Arc<Semaphore>,
    /// Woken when a reservation of the account ends: an upload waiting for memory may
    /// then be a newcomer's again.
    released: Notify,
    uploads: AtomicUsize,
    rate: Option<DefaultDirectRateLimiter>,
    last_seen: Mutex<Instant>,
}

/// Whole KiB that hold `bytes`, at least one.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

impl Limits {
    /// `config` was validated with the settings: the budget fits in `u32` KiB and each
    /// account's share holds at least one part.
    pub fn new(config: &LimitSettings, metrics: LimitMetrics) -> Self {
        let budget_kib = kib(config.upload_memory_budget_bytes);
        let account_share_kib =
            ((f64::from(budget_kib) * config.account_memory_share).floor() as u32).max(1);
        let reserve_kib = ((f64::from(budget_kib) * config.newcomer_memory_share).floor() as u32)
            .min(budget_kib - 1);
        let shared_kib = budget_kib - reserve_kib;
        let rate = config.account_requests_per_second.and_then(|rps| {
            let rps = NonZeroU32::new(rps)?;
            let burst = config
                .account_request_burst
                .and_then(NonZeroU32::new)
                .unwrap_or(rps);
            Some(Quota::per_second(rps).allow_burst(burst))
        });
        let refill = rate.map_or(Duration::ZERO, |quota| {
            quota.replenish_interval() * quota.burst_size().get()
        });
        metrics.memory_budget.set(i64::from(budget_kib) * 1024);
        Self {
            inner: Arc::new(Inner {
                memory: Arc::new(Semaphore::new(shared_kib as usize)),
                reserve: Arc::new(Semaphore::new(reserve_kib as usize)),
                budget_kib,
                shared_kib,
                reserve_kib,
                account_share_kib,
                wait: config.upload_memory_wait,
                max_uploads_per_account: config.max_uploads_per_account as usize,
                waiting: AtomicUsize::new(0),
                max_waiting: config.max_waiting_uploads as usize,
                rate,
                refill,
                accounts: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// The entry of `account`, made if new; the map is trimmed when full.
    fn account(&self, account: &AccountId) -> Arc<Account> {
        let inner = &self.inner;
        let mut accounts = inner.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = accounts.get(account) {
            *entry.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            return entry.clone();
        }
        if accounts.len() >= MAX_TRACKED_ACCOUNTS {
            inner.trim(&mut accounts);
        }
        let entry = Arc::new(Account {
            memory: Arc::new(Semaphore::new(inner.account_share_kib as usize)),
            released: Notify::new(),
            uploads: AtomicUsize::new(0),
            rate: inner.rate.map(governor::RateLimiter::direct),
            last_seen: Mutex::new(Instant::now()),
        });
        accounts.insert(account.clone(), entry.clone());
        entry
    }

    /// Bytes of the replica's budget that no upload holds now.
    pub fn free_bytes(&self) -> u64 {
        (self.inner.memory.available_permits() + self.inner.reserve.available_permits()) as u64
            * 1024
    }

    /// Accounts tracked now (tests).
    pub fn tracked_accounts(&self) -> usize {
        self.inner
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// 429 when `account` is over its request rate (if one is configured).
    pub fn check_rate(&self, account: &AccountId) -> Result<(), ApiError> {
        if self.inner.rate.is_none() {
            return Ok(());
        }
        let entry = self.account(account);
        let Some(limiter) = entry.rate.as_ref() else {
            return Ok(());
        };
        match limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                self.inner
                    .metrics
                    .account_refusals
                    .with_label_values(&["request_rate"])
                    .inc();
                Err(ApiError::TooManyRequests {
                    details: "too many requests for this account; retry after the delay in \
                              Retry-After"
                        .to_owned(),
                    retry_after: retry_after_seconds(wait),
                })
            }
        }
    }

    /// Whether `account` may start one more upload now (for `Expect: 100-continue`, which
    /// answers before the upload begins; `begin_upload` decides for good).
    pub fn upload_allowed(&self, account: &AccountId) -> Result<(), ApiError> {
        let running = self
            .inner
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .map_or(0, |entry| entry.uploads.load(Ordering::Acquire));
        if running >= self.inner.max_uploads_per_account {
            return Err(self.inner.too_many_uploads());
        }
        Ok(())
    }

    /// Counts an upload of `account` for as long as the slot lives; 429 at once when the
    /// account already has as many uploads running on this replica as it may.
    pub fn begin_upload(&self, account: &AccountId) -> Result<UploadSlot, ApiError> {
        let entry = self.account(account);
        let before = entry.uploads.fetch_add(1, Ordering::AcqRel);
        let slot = UploadSlot {
            limits: self.inner.clone(),
            account: entry,
        };
        if before >= self.inner.max_uploads_per_account {
            return Err(self.inner.too_many_uploads());
        }
        Ok(slot)
    }
}

impl Inner {
    fn too_many_uploads(&self) -> ApiError {
        self.metrics
            .account_refusals
            .with_label_values(&["concurrent_uploads"])
            .inc();
        ApiError::TooManyRequests {
            details: format!(
                "this account already has {} uploads running; retry when one has finished",
                self.max_uploads_per_account
            ),
            retry_after: 1,
        }
    }

    /// Makes room in a full map: entries that nobody holds and whose rate limiter has
    /// refilled go first; if that is not enough, any entry nobody holds (losing its rate
    /// state, which costs the account nothing but a fresh burst), down to three quarters.
    fn trim(&self, accounts: &mut HashMap<AccountId, Arc<Account>>) {
        let now = Instant::now();
        accounts.retain(|_, entry| {
            Arc::strong_count(entry) > 1
                || now.duration_since(*entry.last_seen.lock().unwrap_or_else(|e| e.into_inner()))
                    < self.refill
        });
        let target = MAX_TRACKED_ACCOUNTS * 3 / 4;
        if accounts.len() > target {
            let mut excess = accounts.len() - target;
            accounts.retain(|_, entry| {
                if excess > 0 && Arc::strong_count(entry) == 1 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// Whole seconds to put in `Retry-After`, at least one.
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// One running upload of an account; dropping it ends the upload's count.
pub struct UploadSlot {
    limits: Arc<Inner>,
    account: Arc<Account>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.account.uploads.fetch_sub(1, Ordering::AcqRel);
    }
}

impl UploadSlot {
    /// Reserves `bytes` of memory for one part buffer, first from the account's share,
    /// then from the replica's budget, waiting up to `limits.upload_memory_wait` in all.
    /// The body is not read meanwhile (backpressure), and that time is not the client's:
    /// the body guard only counts time spent polling the body.
    ///
    /// How much an upload reserves is decided by its caller (`ingest`): a whole part,
    /// or less when the declared `Content-Length` says fewer bytes remain. It is one
    /// reservation per buffer, taken before the buffer is filled, never grown bit by bit:
    /// uploads that each hold half a part and wait for the other half could hold the whole
    /// budget between them and none would finish.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, ApiError> {
        let inner = &self.limits;
        // A part is never larger than a share or than the budget but the reserve (checked
        // with the settings); clamped anyway, as a request for more permits than a
        // semaphore has would wait forever.
        let kib = kib(bytes)
            .min(inner.account_share_kib)
            .min(inner.shared_kib);
        let account = self.account.memory.clone();
        let deadline = Instant::now() + inner.wait;
        // Taken when the reservation must wait, given back when it ends.
        let mut queued: Option<Waiting> = None;
        // The account's share first, and only then the replica's budget: an upload waiting
        // for its account's share holds nothing of the replica's meanwhile.
        let account_permit = match account.clone().try_acquire_many_owned(kib) {
            Ok(permit) => permit,
            Err(_) => {
                queued = Some(self.queue()?);
                inner.metrics.memory_waits.inc();
                // Refused while waiting for the account's share: the account is to blame
                // (429) only if the replica had room; otherwise the replica is full (503).
                let account_full = || {
                    if inner.memory.available_permits() >= kib as usize {
                        self.refused("account")
                    } else {
                        self.refused("replica")
                    }
                };
                tokio::time::timeout_at(deadline, account.acquire_many_owned(kib))
                    .await
                    .map_err(|_| account_full())?
                    .map_err(|_| account_full())?
            }
        };
        let replica_permit = loop {
            // Enabled before the account's holdings are looked at, so that a reservation
            // ending in between still wakes this one.
            let released = self.account.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let newcomer = kib <= inner.reserve_kib && self.holds_nothing_else(kib);
            if let Ok(permit) = inner.memory.clone().try_acquire_many_owned(kib) {
                break permit;
            }
            if newcomer {
                if let Ok(permit) = inner.reserve.clone().try_acquire_many_owned(kib) {
                    break permit;
                }
            }
            if queued.is_none() {
                queued = Some(self.queue()?);
                inner.metrics.memory_waits.inc();
            }
            tokio::select! {
                permit = inner.memory.clone().acquire_many_owned(kib) => {
                    break permit.map_err(|_| self.refused("replica"))?;
                }
                permit = inner.reserve.clone().acquire_many_owned(kib), if newcomer => {
                    break permit.map_err(|_| self.refused("replica"))?;
                }
                // The account's other reservations ended: it may take from the reserve. (The
                // upload looks again from the back of the queues, behind later arrivals.)
                () = &mut released, if !newcomer => {}
                () = tokio::time::sleep_until(deadline) => return Err(self.refused("replica")),
            }
        };
        drop(queued);
        let bytes = i64::from(kib) * 1024;
        inner.metrics.memory_in_use.add(bytes);
        Ok(Reservation {
            permits: Some((account_permit, replica_permit)),
            account: self.account.clone(),
            gauge: inner.metrics.memory_in_use.clone(),
            bytes,
        })
    }

    /// Whether the account holds no memory but the `kib` just taken of its share: then it
    /// may take from the newcomers' reserve. Of two reservations of one account taken at
    /// the same moment, at most one finds it so.
    fn holds_nothing_else(&self, kib: u32) -> bool {
        self.account.memory.available_permits() + kib as usize
            >= self.limits.account_share_kib as usize
    }

    /// A place among the reservations that wait; none when `limits.max_waiting_uploads`
    /// already wait (503 at once). A waiting upload does not read its body, and the HTTP
    /// layer holds what the client sent meanwhile (up to about 300 KiB a connection), so
    /// waiters are memory the budget does not see: their number is what bounds it.
    fn queue(&self) -> Result<Waiting, ApiError> {
        let inner = &self.limits;
        let before = inner.waiting.fetch_add(1, Ordering::AcqRel);
        let place = Waiting(inner.clone());
        if before >= inner.max_waiting {
            drop(place);
            return Err(self.refused("queue"));
        }
        Ok(place)
    }

    fn refused(&self, limit: &'static str) -> ApiError {
        self.limits
            .metrics
            .memory_refusals
            .with_label_values(&[limit])
            .inc();
        match limit {
            "account" => ApiError::TooManyRequests {
                details: "this account's uploads hold all the memory it may use on this \
                          replica; retry when one has finished"
                    .to_owned(),
                retry_after: 1,
            },
            _ => ApiError::MemoryBudget,
        }
    }
}

/// A reservation waiting for memory, counted until dropped.
struct Waiting(Arc<Inner>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Memory reserved for one part buffer; given back when dropped (the part reached storage,
/// or the upload ended).
pub struct Reservation {
    /// The account's share and the replica's budget (or reserve).
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    /// Keeps the account's entry (and so its semaphore) in the map while memory is held.
    account: Arc<Account>,
    gauge: IntGauge,
    bytes: i64,
}

impl Reservation {
    /// Bytes reserved (whole KiB).
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The permits first, so that an upload of the account woken below finds them back.
        self.permits.take();
        self.gauge.sub(self.bytes);
        self.account.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: u64, share: f64, uploads: u32, rps: Option<u32>) -> Limits {
        limits_waiting(budget, share, uploads, rps, 1000)
    }

    fn limits_waiting(
        budget: u64,
        share: f64,
        uploads: u32,
        rps: Option<u32>,
        waiting: u32,
    ) -> Limits {
        limits_with_reserve(budget, share, uploads, rps, waiting, 0.0)
    }

    fn limits_with_reserve(
        budget: u64,
        share: f64,
        uploads: u32,
        rps: Option<u32>,
        waiting: u32,
        newcomer: f64,
    ) -> Limits {
        let mut settings = crate::settings::Settings::embedded_defaults()
            .unwrap()
            .limits;
        settings.upload_memory_budget_bytes = budget;
        settings.account_memory_share = share;
        settings.newcomer_memory_share = newcomer;
        settings.upload_memory_wait = Duration::from_millis(200);
        settings.max_uploads_per_account = uploads;
        settings.max_waiting_uploads = waiting;
        settings.account_requests_per_second = rps;
        settings.account_request_burst = None;
        Limits::new(&settings, LimitMetrics::new())
    }

    fn account(name: &str) -> AccountId {
        AccountId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn reservations_are_counted_and_given_back() {
        let limits = limits(1024 * 1024, 1.0, 10, None);
        let slot = limits.begin_upload(&account("a")).unwrap();
        let first = slot.reserve(600 * 1024).await.unwrap();
        assert_eq!(limits.inner.metrics.memory_in_use.get(), 600 * 1024);
        let err = slot.reserve(600 * 1024).await.err().unwrap();
        assert!(matches!(err, ApiError::MemoryBudget), "{err:?}");
        drop(first);
        assert_eq!(limits.inner.metrics.memory_in_use.get(), 0);
        let _again = slot.reserve(600 * 1024).await.unwrap();
        assert_eq!(limits.inner.metrics.memory_waits.get(), 1);
    }

    #[tokio::test]
    async fn an_account_is_held_to_its_share() {
        let limits = limits(1024 * 1024, 0.5, 10, None);
        let greedy = limits.begin_upload(&account("greedy")).unwrap();
        let _held = greedy.reserve(512 * 1024).await.unwrap();
        let err = greedy.reserve(1024).await.err().unwrap();
        assert!(matches!(err, ApiError::TooManyRequests { .. }), "{err:?}");
        // Waiting for its share, it held nothing of the replica's budget.
        assert_eq!(limits.free_bytes(), 512 * 1024);
        let other = limits.begin_upload(&account("other")).unwrap();
        other.reserve(512 * 1024).await.unwrap();
    }

    const MIB: u64 = 1024 * 1024;

    /// Accounts that hold the budget but the reserve (slow uploads, say) do not make an
    /// account that holds nothing wait; they cannot take the reserve themselves.
    #[tokio::test]
    async fn the_reserve_is_for_accounts_that_hold_nothing() {
        // 6 MiB open to all, 2 MiB of reserve.
        let limits = limits_with_reserve(8 * MIB, 1.0, 100, None, 100, 0.25);
        let greedy = limits.begin_upload(&account("greedy")).unwrap();
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(greedy.reserve(MIB).await.unwrap());
        }
        // The greedy account, holding memory, waits and is refused: the rest is the reserve.
        let err = greedy.reserve(MIB).await.err().unwrap();
        assert!(matches!(err, ApiError::MemoryBudget), "{err:?}");
        assert_eq!(limits.free_bytes(), 2 * MIB);
        // Another account gets a part at once ...
        let other = limits.begin_upload(&account("other")).unwrap();
        let started = Instant::now();
        let first = other.reserve(MIB).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(100), "at once");
        // ... but not a second one while it holds the first,
        let err = other.reserve(MIB).await.err().unwrap();
        assert!(matches!(err, ApiError::MemoryBudget), "{err:?}");
        // and a third account has what is left of the reserve.
        let third = limits.begin_upload(&account("third")).unwrap();
        let _third = third.reserve(MIB).await.unwrap();
        assert_eq!(limits.free_bytes(), 0);
        drop(first);
        assert_eq!(limits.inner.metrics.memory_in_use.get() as u64, 7 * MIB);
    }

    /// An upload of an account that holds memory waits; once the account's other
    /// reservations end, it is a newcomer's and takes from the reserve.
    #[tokio::test]
    async fn an_account_whose_parts_are_stored_takes_from_the_reserve_again() {
        let limits = limits_with_reserve(8 * MIB, 1.0, 100, None, 100, 0.25);
        let greedy = limits.begin_upload(&account("greedy")).unwrap();
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(greedy.reserve(MIB).await.unwrap());
        }
        let other = limits.begin_upload(&account("other")).unwrap();
        let first = other.reserve(2 * MIB).await.unwrap();
        let next = other.reserve(2 * MIB);
        let store_first = async {
            while limits.inner.waiting.load(Ordering::Acquire) < 1 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (next, ()) = tokio::join!(next, store_first);
        assert!(next.is_ok(), "{:?}", next.err());
        assert_eq!(limits.inner.metrics.memory_waits.get(), 1);
        assert_eq!(limits.free_bytes(), 0);
    }

    /// Waiting uploads hold their clients' bytes outside the budget: beyond
    /// `max_waiting_uploads` of them, one more is refused at once instead of waiting.
    #[tokio::test]
    async fn no_more_uploads_wait_than_allowed() {
        let limits = limits_waiting(1024 * 1024, 1.0, 100, None, 2);
        let holder = limits.begin_upload(&account("holder")).unwrap();
        let held = holder.reserve(1024 * 1024).await.unwrap();
        let slots: Vec<UploadSlot> = (0..3)
            .map(|i| limits.begin_upload(&account(&format!("w{i}"))).unwrap())
            .collect();
        let (first, second) = (slots[0].reserve(1024), slots[1].reserve(1024));
        let third = async {
            // Once the two others wait.
            while limits.inner.waiting.load(Ordering::Acquire) < 2 {
                tokio::task::yield_now().await;
            }
            let started = Instant::now();
            let refused = slots[2].reserve(1024).await.err().unwrap();
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "refused at once"
            );
            assert!(matches!(refused, ApiError::MemoryBudget), "{refused:?}");
            drop(held);
        };
        let (first, second, ()) = tokio::join!(first, second, third);
        assert!(
            first.is_ok() && second.is_ok(),
            "the two waiting got their turn"
        );
        let refusals = &limits.inner.metrics.memory_refusals;
        assert_eq!(refusals.with_label_values(&["queue"]).get(), 1);
        assert_eq!(refusals.with_label_values(&["replica"]).get(), 0);
        assert_eq!(limits.inner.waiting.load(Ordering::Acquire), 0);
        // No place left taken: with room, nobody waits, and a new waiter is let in.
        let _full = slots[0].reserve(1024 * 1024 - 2048).await.unwrap();
    }

    #[test]
    fn concurrent_uploads_are_capped_per_account() {
        let limits = limits(1024 * 1024, 1.0, 2, None);
        let a = account("a");
        let _one = limits.begin_upload(&a).unwrap();
        let two = limits.begin_upload(&a).unwrap();
        assert!(limits.begin_upload(&a).is_err());
        assert!(limits.begin_upload(&account("b")).is_ok());
        drop(two);
        assert!(limits.begin_upload(&a).is_ok());
    }

    #[test]
    fn the_rate_limit_answers_with_a_delay() {
        let limits = limits(1024 * 1024, 1.0, 2, Some(1));
        let a = account("a");
        limits.check_rate(&a).unwrap();
        match limits.check_rate(&a) {
            Err(ApiError::TooManyRequests { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        limits.check_rate(&account("b")).unwrap();
    }

    #[test]
    fn the_account_map_stays_bounded() {
        let limits = limits(1024 * 1024, 1.0, 2, None);
        let held = limits.begin_upload(&account("held")).unwrap();
        for n in 0..(MAX_TRACKED_ACCOUNTS * 2) {
            drop(limits.begin_upload(&account(&format!("sub-{n}"))).unwrap());
        }
        assert!(limits.tracked_accounts() <= MAX_TRACKED_ACCOUNTS);
        // The entry an upload holds is never dropped.
        assert!(limits
            .inner
            .accounts
            .lock()
            .unwrap()
            .contains_key(&account("held")));
        drop(held);
    }
}
