//! Progress of the long part of a dump or restore (copying memory), published through two
//! atomics so the engine stays free of terminal code; the CLI draws a bar from them when
//! stderr is a terminal, in a thread of its own ([`Display`]), which the engine can stop for
//! a moment ([`pause`]): the restore puppet is forked from a single-threaded cryo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// What draws the progress from a thread of its own (the CLI's bar).
pub trait Display: Send {
    /// Starts its thread.
    fn start(&mut self);
    /// Stops its thread: it has ended when this returns.
    fn stop(&mut self);
}

static DISPLAY: Mutex<Option<Box<dyn Display>>> = Mutex::new(None);

fn display() -> std::sync::MutexGuard<'static, Option<Box<dyn Display>>> {
    DISPLAY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shows the progress with `d` until [`hide`].
pub fn show(mut d: Box<dyn Display>) {
    d.start();
    if let Some(mut old) = display().replace(d) {
        old.stop();
    }
}

/// Stops the display shown with [`show`], if any.
pub fn hide() {
    if let Some(mut d) = display().take() {
        d.stop();
    }
}

/// The display's thread is stopped while this lives (from [`pause`]).
#[must_use = "the display starts again when the guard drops"]
pub struct Paused(());

/// Stops the display's thread until the returned guard drops.
pub fn pause() -> Paused {
    if let Some(d) = display().as_mut() {
        d.stop();
    }
    Paused(())
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(d) = display().as_mut() {
            d.start();
        }
    }
}
