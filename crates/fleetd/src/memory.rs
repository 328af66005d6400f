//! How fleetd's memory goes back to the system after a burst, with glibc's malloc.
//!
//! Measured on 3 real-systemd machines and one `fleetctl start --no-block` of 1,000 units
//! (`crates/cluster/tests/publish_timeline.rs`): the leader's live heap peaks near 10 MB
//! (heaptrack), but glibc gives each thread that meets a locked arena an arena of its own, up
//! to 8 per core, and keeps what was freed in each of them. With 16 tokio workers (a 16-core
//! machine) the leader then sat at 30 MB RSS after the burst (anonymous 19 MB), against 22 MB
//! (anonymous 11 MB) with two arenas; the followers, with little to allocate, barely move.
//! So fleetd caps the arenas at [`ARENAS`] and, every [`TRIM_INTERVAL`], hands the free pages
//! of every arena back (`malloc_trim`), which glibc does on its own only for the top of the
//! main heap.
//!
//! Hand-written rather than a different allocator: two glibc calls, nothing to build, and the
//! static glibc build keeps working as it is. With musl (its allocator returns memory itself)
//! and other C libraries these are no-ops.

use std::time::Duration;

/// malloc arenas at most. Two rather than one: the agent's and the API's threads allocate at
/// the same moments during a burst, and one arena would serialize them on its lock.
pub const ARENAS: i32 = 2;

/// How often freed memory is handed back: a burst's buffers go back within this long after it.
/// A trim of fleetd's heap (about 10 MB) is a walk of two arenas, well under a millisecond.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Caps glibc's arenas at [`ARENAS`], unless the operator chose a number (`MALLOC_ARENA_MAX`,
/// or `arena_max` in `GLIBC_TUNABLES`), which glibc has then applied. Call before the runtime
/// starts its threads. Returns the cap set, if one was.
pub fn limit_arenas() -> Option<i32> {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return None;
    }
    set_arena_max(ARENAS).then_some(ARENAS)
}

/// Hands the free pages of every arena back to the system. True if some were.
pub fn release_free_memory() -> bool {
    trim()
}

/// Calls [`release_free_memory`] every [`TRIM_INTERVAL`], forever: spawn it on the runtime.
pub async fn release_periodically() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let released = release_free_memory();
        tracing::debug!(
            released,
            took_us = started.elapsed().as_micros() as u64,
            "handed freed memory back to the system"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt only changes a malloc parameter; it takes glibc's own lock.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim locks each arena in turn and only releases free pages.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_: i32) -> bool {
    false
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_arena_cap() {
        // The test binary runs with the environment of whoever started it: only the call's
        // answer is checked, which an unknown parameter or a failed call would make false.
        assert!(set_arena_max(ARENAS));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_can_be_handed_back() {
        // Blocks of 64 KiB, below glibc's mmap threshold (128 KiB), so they come from an
        // arena and stay there once freed, interleaved with blocks still held so that the
        // freed ones are not merely the top of the heap.
        let mut held = Vec::new();
        let mut freed = Vec::new();
        for i in 0..512 {
            let block = vec![i as u8; 64 * 1024];
            if i % 2 == 0 {
                held.push(block);
            } else {
                freed.push(block);
            }
        }
        drop(freed);
        assert!(release_free_memory());
        drop(std::hint::black_box(held));
    }
}
