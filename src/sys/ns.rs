//! The namespaces of cryo's own threads: `setns` into a namespace held open as an fd, and
//! `unshare`. A thread doing this (the mount-tree builder, the IPC and cgroup workers, the
//! `InNs` guard) is one cryo starts for the purpose and ends, or brings back.

use std::io;
use std::os::fd::BorrowedFd;

pub use rustix::thread::{LinkNameSpaceType as NsType, UnshareFlags};

/// `setns(fd, kind)`: the calling thread joins the namespace `fd` names (of kind `kind`).
pub fn setns(fd: BorrowedFd<'_>, kind: NsType) -> io::Result<()> {
    Ok(rustix::thread::move_into_link_name_space(fd, Some(kind))?)
}

/// `unshare(flags)` for the calling thread: new namespaces, or its own copy of the file
/// system information (`UnshareFlags::FS`). Its own fd table (`UnshareFlags::FILES`) is
/// refused: fds other threads hand it would no longer be in its table.
pub fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the only hazard of unshare is CLONE_FILES (a thread that no longer shares the
    // fd table could use fds another thread owns, or lose its own), refused above.
    Ok(unsafe { rustix::thread::unshare_unsafe(flags) }?)
}

/// `ioctl(NS_GET_PARENT)` (`_IO(0xb7, 0x2)`).
const NS_GET_PARENT: libc::c_ulong = 0xb702;

/// The parent of the user (or PID) namespace `fd` names, as a new fd (`NS_GET_PARENT`).
/// Fails with EPERM when the parent is outside cryo's own user namespace.
pub fn parent(fd: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: NS_GET_PARENT takes no argument and returns a new fd, or -1 with errno set.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_PARENT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r) })
}

/// `ioctl(NS_GET_USERNS)` (`_IO(0xb7, 0x1)`).
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace that owns the namespace `fd` names, as a new fd (`NS_GET_USERNS`).
/// Fails with EPERM when that user namespace is outside cryo's own.
pub fn owner(fd: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd, or -1 with errno set.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_USERNS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r) })
}
