//! File-descriptor objects cryo creates or borrows in its *own* process: pidfds (to take a
//! target's fd, `pidfd_getfd`), pipes, eventfd, signalfd, timerfd, epoll, inotify, file
//! handles, and the `tee` that reads a pipe without draining it. Restore builds such objects
//! here and the puppet takes them with `pidfd_getfd` on cryo, so every fd that shares an open
//! file description in the images shares one again.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(ret)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstr(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// `pidfd_open(pid, flags)` (`flags`: 0 or `PIDFD_NONBLOCK`); also works on a zombie.
pub fn pidfd_open_flags(pid: i32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

/// A pidfd of cryo itself at the lowest fd number not below `at` (close-on-exec).
pub fn pidfd_open_self_at(at: RawFd) -> io::Result<OwnedFd> {
    let fd = pidfd_open(std::process::id() as i32)?;
    // SAFETY: plain integer arguments on an fd we own.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, at) } as libc::c_long)
}

/// `pidfd_getfd`: a new fd in cryo for the open file description behind `fd` in the process
/// `pidfd` refers to (the same description, like SCM_RIGHTS).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// `openat(AT_FDCWD, path, flags)`; also reopens `/proc/PID/fd/N` (a new description of a
/// pipe, FIFO or file).
pub fn open(path: &str, flags: i32) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the call.
    owned(unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, p.as_ptr(), flags, 0) })
}

/// Opens `path` as a process whose root is the directory `root` would (typically
/// `/proc/PID/root`): `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..` and
/// absolute symlinks stay inside it (through `/proc/PID/root` alone, an absolute symlink
/// would be followed from cryo's own root).
pub fn open_in_root(root: &str, path: &str, flags: i32) -> io::Result<OwnedFd> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel = path.trim_start_matches('/');
    Ok(openat2(
        &dir,
        if rel.is_empty() { "." } else { rel },
        OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// stat of `path` as seen from the root `root` (see [`open_in_root`]).
pub fn stat_in_root(root: &str, path: &str) -> io::Result<std::fs::Metadata> {
    std::fs::File::from(open_in_root(root, path, libc::O_PATH)?).metadata()
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two fds.
    cvt(unsafe { libc::syscall(libc::SYS_pipe2, fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `tee(in, out, len, SPLICE_F_NONBLOCK)`: copies up to `len` bytes queued in pipe `input`
/// into pipe `out` without consuming them. 0 when `input` is empty.
pub fn tee(input: BorrowedFd<'_>, out: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: plain integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tee,
            input.as_raw_fd(),
            out.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    match cvt(r) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(0),
        Err(e) => Err(e),
    }
}

/// `fcntl(fd, cmd, arg)` for the integer commands (F_GETFL, F_SETFL, F_GETPIPE_SZ, ...).
pub fn fcntl(fd: BorrowedFd<'_>, cmd: i32, arg: i64) -> io::Result<i64> {
    // SAFETY: integer-argument fcntl commands only.
    cvt(unsafe { libc::syscall(libc::SYS_fcntl, fd.as_raw_fd(), cmd, arg) })
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    cvt(unsafe { libc::syscall(libc::SYS_read, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) })
        .map(|n| n as usize)
}

/// `write(2)` from `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of its length.
    cvt(unsafe { libc::syscall(libc::SYS_write, fd.as_raw_fd(), buf.as_ptr(), buf.len()) })
        .map(|n| n as usize)
}

/// `eventfd2(0, flags)`.
pub fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_eventfd2, 0, flags) })
}

/// `signalfd4(-1, mask, flags)` with a raw 64-bit signal mask.
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: mask is valid for reads of 8 bytes (the kernel's sigset size).
    owned(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags) })
}

/// `timerfd_create(clockid, flags)`.
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_timerfd_create, clockid, flags) })
}

/// `timerfd_settime(fd, flags, {interval, value})`, times as (seconds, nanoseconds).
pub fn timerfd_settime(
    fd: BorrowedFd<'_>,
    flags: i32,
    value: (u64, u64),
    interval: (u64, u64),
) -> io::Result<()> {
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval.0 as i64,
            tv_nsec: interval.1 as i64,
        },
        it_value: libc::timespec {
            tv_sec: value.0 as i64,
            tv_nsec: value.1 as i64,
        },
    };
    // SAFETY: its is a valid itimerspec; the old value is not requested.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_timerfd_settime,
            fd.as_raw_fd(),
            flags,
            &its as *const libc::itimerspec,
            0,
        )
    })
    .map(|_| ())
}

/// `TFD_IOC_SET_TICKS`: the expiration count a timerfd reports before its next expiry.
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    const TFD_IOC_SET_TICKS: u64 = 0x4008_5400; // _IOW('T', 0, u64)
                                                // SAFETY: the ioctl reads one u64 from a valid pointer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            TFD_IOC_SET_TICKS,
            &ticks as *const u64,
        )
    })
    .map(|_| ())
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) })
}

/// `inotify_init1(flags)`.
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_inotify_init1, flags) })
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &str, mask: u32) -> io::Result<i32> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_inotify_add_watch,
            fd.as_raw_fd(),
            p.as_ptr(),
            mask,
        )
    })
    .map(|w| w as i32)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_inotify_rm_watch, fd.as_raw_fd(), wd) }).map(|_| ())
}

/// `open_by_handle_at(mount_fd, {bytes, type, handle}, O_PATH)`: the file a handle names.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: buf holds a complete file_handle of the length its header states.
    owned(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })
}

/// `memfd_create(name, flags)`.
pub fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    let n = cstr(name)?;
    // SAFETY: n is a valid NUL-terminated string for the call.
    owned(unsafe { libc::syscall(libc::SYS_memfd_create, n.as_ptr(), flags) })
}

/// Takes ownership of `fd`, an fd this process was given at exec (e.g. `swrk FD`). The
/// caller checks it is open and of the right kind first.
pub fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: the fd was inherited for cryo to use and nothing else in cryo owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, 0)` on an fd of cryo's own table that cryo does not own (an
/// inherited fd named on the command line or in a request, e.g. `--inherit-fd fd[0]:KEY`):
/// a new fd for the same open file description.
pub fn dup_raw(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; an fd that is not open gives EBADF.
    owned(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) } as libc::c_long)
}

/// Who gets the I/O signals of an open file (`fcntl` `F_GETOWN_EX`, `F_GETSIG`,
/// `F_GETOWNER_UIDS`): the owner's type (`F_OWNER_TID`/`PID`/`PGRP`) and id (in cryo's PID
/// namespace; 0: none), the signal (0: SIGIO), and the real and effective uids it was set
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub kind: i32,
    pub pid: i32,
    pub sig: i32,
    pub uid: u32,
    pub euid: u32,
}

/// `fcntl` commands of linux/fcntl.h the libc crate lacks.
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;
pub const F_GETOWNER_UIDS: i32 = 17;

/// The owner of the open file behind `fd` (see [`Owner`]).
pub fn owner(fd: BorrowedFd<'_>) -> io::Result<Owner> {
    let mut ex = [0i32; 2]; // struct f_owner_ex { int type; pid_t pid; }
    let mut uids = [0u32; 2];
    // SAFETY: each pointer is to a live local of the size the command writes.
    unsafe {
        cvt(libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, ex.as_mut_ptr()) as libc::c_long)?;
        cvt(libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) as libc::c_long)?;
    }
    // SAFETY: plain integer arguments.
    let sig = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) } as libc::c_long)?;
    Ok(Owner {
        kind: ex[0],
        pid: ex[1],
        sig: sig as i32,
        uid: uids[0],
        euid: uids[1],
    })
}

/// `fanotify_init(flags, event_f_flags)`.
pub fn fanotify_init(flags: u32, event_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_fanotify_init, flags, event_flags) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn fanotify_mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &str) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string for the call; the rest are integers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            fd.as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            p.as_ptr(),
        )
    })
    .map(|_| ())
}
