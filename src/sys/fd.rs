//! File-descriptor objects cryo creates or borrows in its *own* process: pidfds (to take a
//! target's fd, `pidfd_getfd`), pipes, eventfd, signalfd, timerfd, epoll, inotify, file
//! handles, and the `tee` that reads a pipe without draining it. Restore builds such objects
//! here and the puppet takes them with `pidfd_getfd` on cryo, so every fd that shares an open
//! file description in the images shares one again.
//!
//! Calls go through rustix, which types them; these functions only take the raw ints the
//! images keep (flags, clock ids, signal masks) and give `std::io` results. `unsafe` is left
//! for what rustix does not cover: `signalfd4`, `TFD_IOC_SET_TICKS`, `open_by_handle_at`, and
//! adopting a raw fd cryo was handed at exec.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::event::{epoll, EventfdFlags};
use rustix::fs::{inotify, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::pipe::{PipeFlags, SpliceFlags};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use super::cvt;

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(cvt(ret)?).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstr(path: &str) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path).map_err(|_| einval())
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(einval)?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// `pidfd_open(pid, flags)` (`flags`: 0 or `PIDFD_NONBLOCK`); also works on a zombie.
pub fn pidfd_open_flags(pid: i32, flags: u32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(einval)?;
    Ok(rustix::process::pidfd_open(
        pid,
        PidfdFlags::from_bits_retain(flags),
    )?)
}

/// `pidfd_send_signal(pidfd, sig)`: no PID reuse can make it hit another process.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(sig).ok_or_else(einval)?;
    Ok(rustix::process::pidfd_send_signal(pidfd, sig)?)
}

/// A pidfd of cryo itself at the lowest fd number not below `at` (close-on-exec).
pub fn pidfd_open_self_at(at: RawFd) -> io::Result<OwnedFd> {
    let fd = pidfd_open(super::proc::own_pid())?;
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, at)?)
}

/// `pidfd_getfd`: a new fd in cryo for the open file description behind `fd` in the process
/// `pidfd` refers to (the same description, like SCM_RIGHTS).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        fd,
        PidfdGetfdFlags::empty(),
    )?)
}

/// `openat(AT_FDCWD, path, flags)`; also reopens `/proc/PID/fd/N` (a new description of a
/// pipe, FIFO or file). `flags` are the kernel's `O_*` bits, as images keep them.
pub fn open(path: &str, flags: i32) -> io::Result<OwnedFd> {
    let flags = OFlags::from_bits_retain(flags.cast_unsigned());
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens `path` as a process whose root is the directory `root` would (typically
/// `/proc/PID/root`): `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..` and
/// absolute symlinks stay inside it (through `/proc/PID/root` alone, an absolute symlink
/// would be followed from cryo's own root).
pub fn open_in_root(root: &str, path: &str, flags: i32) -> io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    open_in_root_fd(dir.as_fd(), path, flags)
}

/// As [`open_in_root`], with the root directory held as `dir`.
pub fn open_in_root_fd(dir: BorrowedFd<'_>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let rel = path.trim_start_matches('/');
    Ok(openat2(
        dir,
        if rel.is_empty() { "." } else { rel },
        OFlags::from_bits_retain(flags.cast_unsigned()) | OFlags::CLOEXEC,
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
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// `tee(in, out, len, SPLICE_F_NONBLOCK)`: copies up to `len` bytes queued in pipe `input`
/// into pipe `out` without consuming them. 0 when `input` is empty.
pub fn tee(input: BorrowedFd<'_>, out: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    match rustix::pipe::tee(input, out, len, SpliceFlags::NONBLOCK) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `fcntl(F_GETFL)`: the file status flags and access mode, as the kernel's `O_*` bits.
pub fn get_fl(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::fcntl_getfl(fd)?.bits())
}

/// `fcntl(F_SETFL, flags)` (the kernel changes only the bits F_SETFL may change).
pub fn set_fl(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    Ok(rustix::fs::fcntl_setfl(
        fd,
        OFlags::from_bits_retain(flags),
    )?)
}

/// `fcntl(F_GETPIPE_SZ)`: a pipe's capacity in bytes.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// `fcntl(F_SETPIPE_SZ, size)`: the capacity the kernel gave (at least `size`).
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_setpipe_size(fd, size)?)
}

/// `fcntl(F_GET_SEALS)`: a memfd's seals, as the kernel's `F_SEAL_*` bits.
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.bits())
}

/// `fcntl(F_ADD_SEALS, seals)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(
        fd,
        SealFlags::from_bits_retain(seals),
    )?)
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// `write(2)` from `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

/// `eventfd2(0, flags)` (`flags`: the kernel's `EFD_*` bits).
pub fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    let flags = EventfdFlags::from_bits_retain(flags.cast_unsigned());
    Ok(rustix::event::eventfd(0, flags)?)
}

/// `signalfd4(-1, mask, flags)` with a raw 64-bit signal mask (rustix has no signalfd).
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: mask is valid for reads of 8 bytes (the kernel's sigset size).
    owned(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags) })
}

/// `timerfd_create(clockid, flags)` (`clockid` as images keep it: realtime, monotonic,
/// boottime or their alarm variants).
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    let clock = match clockid {
        libc::CLOCK_REALTIME => TimerfdClockId::Realtime,
        libc::CLOCK_MONOTONIC => TimerfdClockId::Monotonic,
        libc::CLOCK_BOOTTIME => TimerfdClockId::Boottime,
        libc::CLOCK_REALTIME_ALARM => TimerfdClockId::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => TimerfdClockId::BoottimeAlarm,
        _ => return Err(einval()),
    };
    let flags = TimerfdFlags::from_bits_retain(flags.cast_unsigned());
    Ok(rustix::time::timerfd_create(clock, flags)?)
}

/// A time as (seconds, nanoseconds), checked: both must fit the kernel's `timespec`.
fn timespec((sec, nsec): (u64, u64)) -> io::Result<Timespec> {
    Ok(Timespec {
        tv_sec: i64::try_from(sec).map_err(|_| einval())?,
        tv_nsec: i64::try_from(nsec).map_err(|_| einval())?,
    })
}

/// `timerfd_settime(fd, flags, {interval, value})`, times as (seconds, nanoseconds).
pub fn timerfd_settime(
    fd: BorrowedFd<'_>,
    flags: i32,
    value: (u64, u64),
    interval: (u64, u64),
) -> io::Result<()> {
    let its = Itimerspec {
        it_interval: timespec(interval)?,
        it_value: timespec(value)?,
    };
    let flags = TimerfdTimerFlags::from_bits_retain(flags.cast_unsigned());
    rustix::time::timerfd_settime(fd, flags, &its)?;
    Ok(())
}

/// `TFD_IOC_SET_TICKS`: the expiration count a timerfd reports before its next expiry
/// (rustix has no such ioctl).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    // _IOW('T', 0, u64)
    const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
    // SAFETY: the ioctl reads one u64 from a valid pointer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            fd.as_raw_fd(),
            TFD_IOC_SET_TICKS,
            &ticks as *const u64,
        )
    })
    .map(drop)
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub fn epoll_create() -> io::Result<OwnedFd> {
    Ok(epoll::create(epoll::CreateFlags::CLOEXEC)?)
}

/// `inotify_init1(flags)` (`flags`: the kernel's `IN_*` creation bits).
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    let flags = inotify::CreateFlags::from_bits_retain(flags.cast_unsigned());
    Ok(inotify::init(flags)?)
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &str, mask: u32) -> io::Result<i32> {
    let mask = inotify::WatchFlags::from_bits_retain(mask);
    Ok(inotify::add_watch(fd, path, mask)?)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    Ok(inotify::remove_watch(fd, wd)?)
}

/// `open_by_handle_at(mount_fd, {bytes, type, handle}, O_PATH)`: the file a handle names
/// (rustix has no file handles).
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let len = u32::try_from(handle.len()).map_err(|_| einval())?;
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&len.to_ne_bytes());
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

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH)`: the handle type and bytes of the file `fd`
/// holds (an O_PATH fd is enough); EOPNOTSUPP on a file system without file handles.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> io::Result<(i32, Vec<u8>)> {
    const MAX: usize = 128; // MAX_HANDLE_SZ
                            // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[MAX]; }
    let mut buf = vec![0u8; 8 + MAX];
    buf[..4].copy_from_slice(&u32::try_from(MAX).map_err(|_| einval())?.to_ne_bytes());
    let mut mnt_id: libc::c_int = 0;
    // SAFETY: buf holds a file_handle header stating MAX bytes of room after it, the path
    // is a NUL-terminated empty string and mnt_id a live int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr(),
            &raw mut mnt_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let ty = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX {
        return Err(einval());
    }
    Ok((ty, buf[8..8 + len].to_vec()))
}

/// `memfd_create(name, flags)` (`flags`: the kernel's `MFD_*` bits).
pub fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        MemfdFlags::from_bits_retain(flags),
    )?)
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
    owned(libc::c_long::from(unsafe {
        libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)
    }))
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

/// `fcntl(fd, F_SETLEASE, ty)` (`F_RDLCK`, `F_WRLCK`): a lease on the open file behind
/// `fd`, which belongs to that open file description (whoever holds an fd on it).
pub fn set_lease(fd: BorrowedFd<'_>, ty: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(libc::c_long::from(unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, ty)
    }))
    .map(drop)
}

/// `fcntl(fd, F_SETOWN_EX, {kind, pid})`: `pid` in cryo's PID namespace; the owner's uids
/// are the calling thread's.
pub fn set_owner(fd: BorrowedFd<'_>, kind: i32, pid: i32) -> io::Result<()> {
    let ex = [kind, pid]; // struct f_owner_ex { int type; pid_t pid; }
                          // SAFETY: the pointer is to a live local of the size the command reads.
    cvt(libc::c_long::from(unsafe {
        libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, ex.as_ptr())
    }))
    .map(drop)
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
        cvt(libc::c_long::from(libc::fcntl(
            fd.as_raw_fd(),
            F_GETOWN_EX,
            ex.as_mut_ptr(),
        )))?;
        cvt(libc::c_long::from(libc::fcntl(
            fd.as_raw_fd(),
            F_GETOWNER_UIDS,
            uids.as_mut_ptr(),
        )))?;
    }
    // SAFETY: plain integer arguments.
    let sig = cvt(libc::c_long::from(unsafe {
        libc::fcntl(fd.as_raw_fd(), F_GETSIG)
    }))?;
    Ok(Owner {
        kind: ex[0],
        pid: ex[1],
        sig: i32::try_from(sig).map_err(|_| einval())?,
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

/// Sets or clears `FD_CLOEXEC` on one of cryo's fds (cleared: a program cryo spawns inherits
/// it at the same number).
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on {
        rustix::io::FdFlags::CLOEXEC
    } else {
        rustix::io::FdFlags::empty()
    };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// Closes every fd of this process above 2 except `keep`: what a helper cryo spawned does
/// first with what it inherited (it must not hold its caller's sockets or pipes open).
/// Returns the kept fds, owned.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd is closed by now; the fds listed are inherited ones that no
    // object of this process owns yet (this runs first in the helper's main).
    let mut kept = Vec::new();
    for fd in open {
        if fd <= 2
            || rustix::io::fcntl_getfd(
                // SAFETY: `fd` was listed as open just above and is only borrowed for this call.
                unsafe { BorrowedFd::borrow_raw(fd) },
            )
            .is_err()
        {
            continue;
        }
        // SAFETY: `fd` is open (checked above) and owned by nothing else in this process, so
        // this takes ownership of it once; dropping it closes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if keep.contains(&fd) {
            kept.push(owned);
        }
    }
    Ok(kept)
}
