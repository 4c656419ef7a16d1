//! How the C allocator hands memory back. Upload part buffers are large (8 MiB by default)
//! and short-lived. glibc's malloc serves such blocks with `mmap` and returns them on free,
//! but only until the first one is freed: then it raises its mmap threshold to that size
//! (up to 32 MiB), so every later part comes from an arena and freed parts stay resident,
//! spread over one arena per thread. Measured with 128 concurrent 37 MiB uploads and a
//! 256 MiB budget: peak RSS 500 MiB with glibc's defaults, 330-355 MiB with the threshold
//! fixed and two arenas (BENCHMARKS.md). The budget then bounds what is resident, as the
//! pod's memory limit assumes.

/// Blocks from this size up are mapped on their own and unmapped when freed: every part
/// buffer (parts are at least 5 MiB), while the buffers of small bodies (a 1 MiB photo)
/// reuse arena memory instead of paying a fresh mapping and its page faults each time.
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;
/// Arenas for small allocations; glibc's default is eight per core.
const ARENA_MAX: i32 = 2;

/// How often freed arena memory is handed back while serving.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands back to the system what the arenas hold free (glibc's `malloc_trim`). After a
/// burst (a flood of uploads waiting for memory, 128 concurrent uploads) the arenas keep
/// their peak size, resident though unused, and the pod's working set with them.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock; it may run beside other threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every `TRIM_EVERY`, on a blocking thread (a trim walks the free lists under the
/// arena's lock: about a millisecond after a burst, nothing when idle).
pub async fn trim_periodically() {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Applies the settings above, unless the operator chose their own through glibc's
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_ARENA_MAX` environment variables. Call before any
/// thread is started.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let chosen = |name: &str| std::env::var_os(name).is_some();
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists.
        unsafe {
            if !chosen("MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            }
            if !chosen("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
            }
        }
    }
}
