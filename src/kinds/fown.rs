//! File owners: who gets the SIGIO (or the signal set with `F_SETSIG`) of an open file with
//! `O_ASYNC` (`F_SETOWN`/`F_SETOWN_EX`), saved in the `fown_entry` every kind of file record
//! carries, as CRIU does.
//!
//! Dump reads the owner from cryo's copy of the fd (the owner belongs to the open file
//! description, so no syscall runs in the target): its type (thread, process or group), its
//! id as the tree sees it (a holder in a PID namespace nested in the tree's names it by its
//! id there at restore), the signal, and the real and effective uids it was set with,
//! which decide whether the signal may be sent. Restore sets the signal and, with those uids
//! taken for the moment, the owner, once every process of the task's subtree exists (an
//! owner must exist to be named).

use std::os::fd::BorrowedFd;

use super::error::TaskError;
use super::{RemoteFd, RestoreCx, Syscalls};
use crate::image::pb;

/// The owner of the open file behind cryo's copy `fd`, as a `fown_entry` (ids as the tree
/// sees them), or None when it has neither owner nor signal.
pub fn dump(root: i32, fd: BorrowedFd<'_>) -> std::io::Result<Option<pb::FownEntry>> {
    let o = match crate::sys::fd::owner(fd) {
        Ok(o) => o,
        // An O_PATH fd has no owner (fcntl refuses it).
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok(None),
        Err(e) => return Err(e),
    };
    if o.pid == 0 && o.sig == 0 {
        return Ok(None);
    }
    // The uids as the tree sees them in its user namespace (CRIU's).
    let inside = |id| match super::userns::maps_of(root) {
        Some((uids, _)) => super::userns::to_inside(&uids, id),
        None => id,
    };
    Ok(Some(pb::FownEntry {
        uid: inside(o.uid),
        euid: inside(o.euid),
        signum: o.sig.cast_unsigned(),
        pid_type: o.kind.cast_unsigned(),
        pid: (if o.pid == 0 { 0 } else { tree_pid(root, o.pid) }).cast_unsigned(),
    }))
}

/// `pid` (of cryo's namespace) as the tree sees it (`root`'s PID namespace; a holder in one
/// nested in it names it by its own id there at restore, `FdObjects::pids`). For a process
/// group whose leader is gone, the number itself.
fn tree_pid(root: i32, pid: i32) -> i32 {
    crate::procfs::tree_pid(root, pid).unwrap_or(pid)
}

/// The `fown_entry` of a file record, whichever kind it is (None: the kind has none).
pub fn slot(e: &mut pb::FileEntry) -> Option<&mut pb::FownEntry> {
    macro_rules! first {
        ($($f:ident),*) => {
            $(if let Some(x) = e.$f.as_mut() { return Some(&mut x.fown); })*
        };
    }
    first!(reg, pipe, efd, epfd, sgfd, tfd, ify, ffy, usk, tty, memfd, pidfd, isk, nlsk, psk);
    None
}

/// Whether `f` says anything (an owner or a signal).
pub fn is_set(f: &pb::FownEntry) -> bool {
    f.pid != 0 || f.signum != 0
}

/// Gives the puppet's fd `fd` the signal and owner of `f`; the puppet is the restored
/// process `holder` (its PID in the images), which names the owner in its own PID namespace:
/// an owner it cannot see there is left to another holder of the file (the kernel keeps one
/// owner per open file).
pub fn restore(
    cx: &mut RestoreCx<'_>,
    fd: RemoteFd,
    f: &pb::FownEntry,
    holder: u32,
) -> Result<(), TaskError> {
    if f.signum != 0 {
        cx.named("fcntl(F_SETSIG)")
            .fcntl(fd, crate::sys::fd::F_SETSIG, u64::from(f.signum))?;
    }
    if f.pid == 0 {
        return Ok(());
    }
    let Some(pid) = cx.objs.borrow().pids.seen_from(f.pid, holder) else {
        return Ok(());
    };
    // struct f_owner_ex { int type; pid_t pid; } (the kernel's int bits, as saved)
    let mut ex = f.pid_type.to_ne_bytes().to_vec();
    ex.extend_from_slice(&pid.to_ne_bytes());
    let at = cx.put(1024, &ex)?;
    if let Some((uids, _)) = super::userns::maps_of(cx.pid) {
        return set_in_userns(cx, fd, at, f, &uids);
    }
    // The owner's uids decide who may be signalled: take them for the call (the puppet is
    // still root, with a saved uid to come back with).
    let (ruid, euid, suid) = uids(cx.pid)?;
    let change = (f.uid, f.euid) != (ruid, euid);
    if change {
        cx.named("setresuid (file owner)")
            .setresuid(f.uid, f.euid, u32::MAX)?;
    }
    let r = cx
        .named("fcntl(F_SETOWN_EX)")
        .fcntl(fd, crate::sys::fd::F_SETOWN_EX, at);
    if change {
        cx.named("setresuid (back)").setresuid(ruid, euid, suid)?;
    }
    r.map(drop)
}

/// [`restore`] by a puppet in a user namespace of its own: it still has cryo's ids, which
/// are not mapped there, so it could not take them back after taking the owner's. It names
/// the owner (as it sees it), then cryo sets the same owner again through its own copy of
/// the file, with the owner's uids (`uids`: the namespace's uid map) on its calling thread.
fn set_in_userns(
    cx: &mut RestoreCx<'_>,
    fd: RemoteFd,
    at: u64,
    f: &pb::FownEntry,
    uids: &[pb::UidGidExtent],
) -> Result<(), TaskError> {
    cx.named("fcntl(F_SETOWN_EX)")
        .fcntl(fd, crate::sys::fd::F_SETOWN_EX, at)?;
    let (Some(uid), Some(euid)) = (
        super::userns::to_outside(uids, f.uid),
        super::userns::to_outside(uids, f.euid),
    ) else {
        return Err(TaskError::BadImage(format!(
            "file owner uids {}/{} are not mapped in the tree's user namespace",
            f.uid, f.euid
        )));
    };
    let pid = cx.pid;
    let err = |what| TaskError::fd(pid, fd, what);
    let copy = super::files::copy_of(pid, fd)?;
    let copy = std::os::fd::AsFd::as_fd(&copy);
    let o = crate::sys::fd::owner(copy).map_err(err("fcntl(F_GETOWN_EX)"))?;
    crate::sys::proc::with_uids(uid, euid, || crate::sys::fd::set_owner(copy, o.kind, o.pid))
        .and_then(|r| r)
        .map_err(err(
            "fcntl(F_SETOWN_EX) with the owner's uids, through cryo's copy",
        ))
}

/// The real, effective and saved uids of `pid`.
fn uids(pid: i32) -> Result<(u32, u32, u32), TaskError> {
    let text = crate::procfs::read(pid, "status")?;
    let v: Vec<u32> = text
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match v[..] {
        [r, e, s, ..] => Ok((r, e, s)),
        _ => Err(TaskError::Internal("no Uid line in /proc/PID/status")),
    }
}
