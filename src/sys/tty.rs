//! Terminal ioctls on cryo's own fds (pty masters and slaves it took from a target with
//! `pidfd_getfd` at dump, or made itself at restore): termios, window size, pty index, lock,
//! packet and exclusive modes, session and foreground group, queued byte counts.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// The kernel's `struct termios2` (termios with explicit input and output speeds).
pub type Termios = libc::termios2;

/// `ioctl(fd, req, &mut int)`: an int the kernel writes.
fn get_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: req is one of the int-out ioctls below; v outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    cvt(r as libc::c_long)?;
    Ok(v)
}

/// `ioctl(fd, req, &int)`: an int the kernel reads.
fn set_int(fd: BorrowedFd<'_>, req: libc::c_ulong, v: i32) -> io::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: req is one of the int-in ioctls below; v outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) };
    cvt(r as libc::c_long).map(|_| ())
}

/// `TCGETS2`. On a pty master it reads the slave's termios.
pub fn termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    // SAFETY: termios2 is plain old data; zero is a valid value.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one struct termios2 into t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t as *mut Termios) };
    cvt(r as libc::c_long)?;
    Ok(t)
}

/// `TCSETS2` (now, without flushing queued input).
pub fn set_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    // SAFETY: TCSETS2 reads one struct termios2 from t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, t as *const Termios) };
    cvt(r as libc::c_long).map(|_| ())
}

/// `TIOCGLCKTRMIOS`: the locked termios bits (the kernel fills the `struct termios` head of
/// the termios2; the speeds are left zero).
pub fn locked_termios(fd: BorrowedFd<'_>) -> io::Result<Termios> {
    // SAFETY: termios2 is plain old data; zero is a valid value.
    let mut t: Termios = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes a struct termios, which is shorter than termios2 and has the
    // same leading layout.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGLCKTRMIOS, &mut t as *mut Termios) };
    cvt(r as libc::c_long)?;
    Ok(t)
}

/// `TIOCSLCKTRMIOS` (CAP_SYS_ADMIN).
pub fn set_locked_termios(fd: BorrowedFd<'_>, t: &Termios) -> io::Result<()> {
    // SAFETY: the kernel reads a struct termios, the leading part of t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSLCKTRMIOS, t as *const Termios) };
    cvt(r as libc::c_long).map(|_| ())
}

/// `TIOCGWINSZ`.
pub fn winsize(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into w.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut w as *mut libc::winsize,
        )
    } as libc::c_long)?;
    Ok(w)
}

/// `TIOCSWINSZ`.
pub fn set_winsize(fd: BorrowedFd<'_>, w: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one struct winsize from w.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, w as *const libc::winsize) };
    cvt(r as libc::c_long).map(|_| ())
}

/// `TIOCGPTN`: the index of a pty master.
pub fn pty_index(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get_int(fd, libc::TIOCGPTN).map(|v| v as u32)
}

/// `TIOCGPTLCK`: is the slave locked (unlockpt not called yet)?
pub fn pty_locked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGPTLCK).map(|v| v != 0)
}

/// `TIOCSPTLCK`.
pub fn set_pty_locked(fd: BorrowedFd<'_>, locked: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCSPTLCK, locked as i32)
}

/// `TIOCGPKT`: packet mode of a pty master.
pub fn packet_mode(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGPKT).map(|v| v != 0)
}

/// `TIOCPKT`.
pub fn set_packet_mode(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_int(fd, libc::TIOCPKT, on as i32)
}

/// `TIOCGEXCL`: exclusive mode of this side of the tty.
pub fn exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TIOCGEXCL).map(|v| v != 0)
}

/// `TIOCEXCL` / `TIOCNXCL`.
pub fn set_exclusive(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let req = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: TIOCEXCL and TIOCNXCL take no argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req) };
    cvt(r as libc::c_long).map(|_| ())
}

/// `TIOCGSID`: the session whose controlling terminal this is (on a master: its slave's).
pub fn session(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get_int(fd, libc::TIOCGSID)
}

/// `TIOCGPGRP`: the foreground process group (on a master: its slave's).
pub fn foreground(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get_int(fd, libc::TIOCGPGRP)
}

/// `FIONREAD`: bytes a read would return now (in canonical mode: complete lines only).
pub fn queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    get_int(fd, libc::FIONREAD).map(|v| v as usize)
}

/// `statfs(path)`: is it the root of a devpts mount?
pub fn is_devpts(path: &str) -> bool {
    const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
    let Ok(p) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zero is a valid value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: p is NUL-terminated and s outlives the call.
    let r = unsafe { libc::statfs(p.as_ptr(), &mut s) };
    r == 0 && s.f_type as i64 == DEVPTS_SUPER_MAGIC
}
