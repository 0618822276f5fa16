//! Network namespace helpers (the namespace's contents are the h-netns branch's work; this
//! file holds only [`within`], which `crate::netlock` needs, with the same signature as
//! there, so the two merge by taking that branch's file).

use std::os::fd::BorrowedFd;

/// Runs `f` on a cryo thread that entered the network namespace `ns`.
pub fn within<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace worker panicked")))
    })
}
