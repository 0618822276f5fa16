//! Progress of the long part of a dump or restore (copying memory), published through two
//! atomics so the engine stays free of terminal code; the CLI draws a bar from them when
//! stderr is a terminal.

use std::sync::atomic::{AtomicU64, Ordering};

static DONE: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Starts a new phase of `total` bytes.
pub fn start(total: u64) {
    DONE.store(0, Ordering::Relaxed);
    TOTAL.store(total, Ordering::Relaxed);
}

/// Records `bytes` more done.
pub fn advance(bytes: u64) {
    DONE.fetch_add(bytes, Ordering::Relaxed);
}

/// (done, total) bytes of the current phase.
pub fn get() -> (u64, u64) {
    (DONE.load(Ordering::Relaxed), TOTAL.load(Ordering::Relaxed))
}
