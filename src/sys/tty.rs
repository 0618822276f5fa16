//! Terminal ioctls on cryo's own fds (pty masters and slaves it took from a target with
//! `pidfd_getfd` at dump, or made itself at restore): termios, window size, pty index, lock,
//! packet and exclusive modes, session and foreground group, queued byte counts.
//!
//! rustix covers the window size, exclusive mode, foreground group, `FIONREAD` and
//! `statfs`. The rest is hand-written: rustix's `Termios` does not expose every one of the
//! kernel's 19 control characters (the images keep them all, as CRIU's), and it has no
//! locked termios, pty index, pty lock or packet-mode ioctls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::termios::Winsize;

use super::cvt;

/// The kernel's `struct termios2` (termios with explicit input and output speeds).
pub type Termios = libc::termios2;

/// `ioctl(fd, req, &mut int)`: an int the kernel writes.
fn get_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: req is one of the int-out ioctls below; v outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    cvt(libc::c_long::from(r))?;
    Ok(v)
}

/// `ioctl(fd, req, &int)`: an int the kernel reads.
fn set_int(fd: BorrowedFd<'_>, req: libc::c_ulong, v: i32) -> io::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: req is one of the int-in ioctls below; v outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `TCGETS2`. On a pty master it reads the slave's termios.
pub fn termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    // SAFETY: termios2 is plain old data; zero is a valid value.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one struct termios2 into t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t as *mut Termios) };
    cvt(libc::c_long::from(r))?;
    Ok(t)
}

/// `TCSETS2` (now, without flushing queued input).
pub fn set_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    // SAFETY: TCSETS2 reads one struct termios2 from t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, t as *const Termios) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `TIOCGLCKTRMIOS`: the locked termios bits (the kernel fills the `struct termios` head of
/// the termios2; the speeds are left zero).
pub fn locked_termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    // SAFETY: termios2 is plain old data; zero is a valid value.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes a struct termios, which is shorter than termios2 and has the
    // same leading layout.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGLCKTRMIOS, &mut t as *mut Termios) };
    cvt(libc::c_long::from(r))?;
    Ok(t)
}

/// `TIOCSLCKTRMIOS` (CAP_SYS_ADMIN).
pub fn set_locked_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    // SAFETY: the kernel reads a struct termios, the leading part of t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSLCKTRMIOS, t as *const Termios) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `TIOCGWINSZ`.
pub fn winsize(fd: BorrowedFd<'_>) -> io::Result<Winsize> {
    Ok(rustix::termios::tcgetwinsize(fd)?)
}

/// `TIOCSWINSZ`.
pub fn set_winsize(fd: BorrowedFd<'_>, w: Winsize) -> io::Result<()> {
    Ok(rustix::termios::tcsetwinsize(fd, w)?)
}

/// `TIOCGPTN`: the index of a pty master.
pub fn pty_index(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get_int(fd, libc::TIOCGPTN).map(i32::cast_unsigned)
}

/// `TIOCGPTLCK`: is the slave locked (unlockpt not called yet)?
pub fn pty_locked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGPTLCK).map(|v| v != 0)
}

/// `TIOCSPTLCK`.
pub fn set_pty_locked(fd: BorrowedFd<'_>, locked: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCSPTLCK, i32::from(locked))
}

/// `TIOCGPKT`: packet mode of a pty master.
pub fn packet_mode(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGPKT).map(|v| v != 0)
}

/// `TIOCPKT`.
pub fn set_packet_mode(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCPKT, i32::from(on))
}

/// `TIOCGEXCL`: exclusive mode of this side of the tty.
pub fn exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

/// `TIOCEXCL` / `TIOCNXCL`.
pub fn set_exclusive(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    if on {
        Ok(rustix::termios::ioctl_tiocexcl(fd)?)
    } else {
        Ok(rustix::termios::ioctl_tiocnxcl(fd)?)
    }
}

/// `TIOCGSID`: the session whose controlling terminal this is (on a master: its slave's).
/// Hand-written: the kernel answers 0 when the session is not in cryo's PID namespace (a
/// container's console), which rustix's `Pid` cannot hold.
pub fn session(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get_int(fd, libc::TIOCGSID)
}

/// `TIOCGPGRP`: the foreground process group (on a master: its slave's); 0 when none.
pub fn foreground(fd: BorrowedFd<'_>) -> io::Result<i32> {
    match rustix::termios::tcgetpgrp(fd) {
        Ok(p) => Ok(p.as_raw_nonzero().get()),
        // rustix's answer when the kernel says 0.
        Err(rustix::io::Errno::OPNOTSUPP) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `FIONREAD`: bytes a read would return now (in canonical mode: complete lines only).
pub fn queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let n = rustix::io::ioctl_fionread(fd)?;
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `statfs(path)`: is it the root of a devpts mount?
pub fn is_devpts(path: &str) -> bool {
    const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == DEVPTS_SUPER_MAGIC)
}
