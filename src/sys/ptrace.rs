//! ptrace(2) wrappers: a [`Tracee`] is one thread cryo has attached to.
//!
//! Dump seizes with `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (the target never sees a signal);
//! restore uses a child that called `PTRACE_TRACEME` and stopped itself.

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// ptrace(2) takes every argument as a register-width word and returns one.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io;

use super::cvt;

/// General-purpose registers as the kernel's `user_regs_struct` (x86_64).
pub type Regs = libc::user_regs_struct;

/// ptrace requests missing from libc on some versions.
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `NT_X86_XSTATE` regset: the whole XSAVE area.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_PEEKSIGINFO_SHARED`: read the process-wide queue instead of the thread's.
pub const PEEKSIGINFO_SHARED: u32 = 1;

/// The kernel's answer to `PTRACE_GET_RSEQ_CONFIGURATION`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct RseqConf {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// What `waitpid` saw for a tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A ptrace stop with this signal and event (`status >> 16`).
    Stopped { sig: i32, event: i32 },
    /// The thread exited with this code.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

/// A thread under ptrace. Does not detach on drop: callers decide (see `dump::Seized`).
#[derive(Debug)]
pub struct Tracee {
    pub tid: i32,
}

fn req(r: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: ptrace requests used here take plain integers or pointers to buffers owned by
    // the caller, sized as the request expects; the kernel validates the tid.
    let ret = unsafe { libc::ptrace(r, tid, addr, data) };
    cvt(ret)
}

/// `waitpid(tid, __WALL)` decoded into a [`Stop`].
pub fn wait(tid: i32) -> io::Result<Stop> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break;
    }
    Ok(decode(status))
}

/// `waitpid(tid, __WALL)` like [`wait`], but gives up at `deadline`: `None` if the thread had
/// not changed state by then. Polls with `WNOHANG` (a stop that has already happened is taken
/// at once; otherwise the sleep between polls grows from 20 µs to 2 ms).
pub fn wait_until(tid: i32, deadline: std::time::Instant) -> io::Result<Option<Stop>> {
    let mut nap = std::time::Duration::from_micros(20);
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r != 0 {
            return Ok(Some(decode(status)));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(std::time::Duration::from_millis(2));
    }
}

fn decode(status: i32) -> Stop {
    if libc::WIFSTOPPED(status) {
        Stop::Stopped {
            sig: libc::WSTOPSIG(status),
            event: status >> 16,
        }
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        Stop::Exited(libc::WEXITSTATUS(status))
    }
}

/// `waitpid(tid, __WALL | WNOHANG)`: None while `tid` has nothing to report.
pub fn try_wait(tid: i32) -> io::Result<Option<Stop>> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFSTOPPED(status) {
        Stop::Stopped {
            sig: libc::WSTOPSIG(status),
            event: status >> 16,
        }
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        Stop::Exited(libc::WEXITSTATUS(status))
    }))
}

/// `PTRACE_TRACEME` (called by a restore child on itself).
pub fn traceme() -> io::Result<()> {
    req(libc::PTRACE_TRACEME, 0, 0, 0).map(|_| ())
}

impl Tracee {
    /// `PTRACE_SEIZE` with options, then `PTRACE_INTERRUPT`. Does not wait.
    pub fn seize(tid: i32, options: i32) -> io::Result<Tracee> {
        req(libc::PTRACE_SEIZE, tid, 0, options as usize)?;
        let t = Tracee { tid };
        if let Err(e) = req(libc::PTRACE_INTERRUPT, tid, 0, 0) {
            let _ = t.detach(0);
            return Err(e);
        }
        Ok(t)
    }

    /// `PTRACE_SETOPTIONS`.
    pub fn set_options(&self, options: i32) -> io::Result<()> {
        req(libc::PTRACE_SETOPTIONS, self.tid, 0, options as usize).map(|_| ())
    }

    /// `PTRACE_SECCOMP_GET_FILTER`: the BPF program (8-byte instructions) of seccomp filter
    /// `index` (0 is the most recently installed); `None` past the last one.
    pub fn seccomp_filter(&self, index: u64) -> io::Result<Option<Vec<u8>>> {
        const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
        let n = match req(PTRACE_SECCOMP_GET_FILTER, self.tid, index as usize, 0) {
            Ok(n) => n as usize,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; n * 8];
        req(
            PTRACE_SECCOMP_GET_FILTER,
            self.tid,
            index as usize,
            buf.as_mut_ptr() as usize,
        )?;
        Ok(Some(buf))
    }

    /// `PTRACE_SECCOMP_GET_METADATA`: the flags filter `index` was installed with.
    pub fn seccomp_flags(&self, index: u64) -> io::Result<u64> {
        const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
        let mut md = [index, 0u64]; // struct seccomp_metadata { filter_off, flags }
        req(
            PTRACE_SECCOMP_GET_METADATA,
            self.tid,
            16,
            md.as_mut_ptr() as usize,
        )?;
        Ok(md[1])
    }

    /// `PTRACE_GETREGS`.
    pub fn regs(&self) -> io::Result<Regs> {
        // SAFETY: user_regs_struct is plain old data; zeroed is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        req(
            libc::PTRACE_GETREGS,
            self.tid,
            0,
            &mut r as *mut Regs as usize,
        )?;
        Ok(r)
    }

    /// `PTRACE_SETREGS`. Warning: changes what the target executes next.
    pub fn set_regs(&self, r: &Regs) -> io::Result<()> {
        req(libc::PTRACE_SETREGS, self.tid, 0, r as *const Regs as usize).map(|_| ())
    }

    /// `PTRACE_GETREGSET NT_X86_XSTATE`: the raw XSAVE area (as long as the kernel says).
    pub fn xstate(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        req(
            libc::PTRACE_GETREGSET,
            self.tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut libc::iovec as usize,
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// `PTRACE_SETREGSET NT_X86_XSTATE`.
    pub fn set_xstate(&self, data: &[u8]) -> io::Result<()> {
        let mut copy = data.to_vec();
        let mut iov = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len(),
        };
        req(
            libc::PTRACE_SETREGSET,
            self.tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut libc::iovec as usize,
        )
        .map(|_| ())
    }

    /// `PTRACE_GETSIGMASK`: the blocked signal set as a 64-bit mask.
    pub fn sigmask(&self) -> io::Result<u64> {
        let mut m: u64 = 0;
        req(PTRACE_GETSIGMASK, self.tid, 8, &mut m as *mut u64 as usize)?;
        Ok(m)
    }

    /// `PTRACE_SETSIGMASK`.
    pub fn set_sigmask(&self, m: u64) -> io::Result<()> {
        req(PTRACE_SETSIGMASK, self.tid, 8, &m as *const u64 as usize).map(|_| ())
    }

    /// `PTRACE_GET_RSEQ_CONFIGURATION`.
    pub fn rseq_conf(&self) -> io::Result<RseqConf> {
        let mut c = RseqConf::default();
        let n = req(
            PTRACE_GET_RSEQ_CONFIGURATION,
            self.tid,
            std::mem::size_of::<RseqConf>(),
            &mut c as *mut RseqConf as usize,
        )?;
        if n as usize != std::mem::size_of::<RseqConf>() {
            return Err(io::Error::other("short rseq configuration"));
        }
        Ok(c)
    }

    /// `PTRACE_PEEKSIGINFO`: pending signals (raw 128-byte siginfo each), without dequeuing.
    pub fn pending_signals(&self, shared: bool) -> io::Result<Vec<[u8; 128]>> {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        let mut out = Vec::new();
        loop {
            let mut buf = [[0u8; 128]; 32];
            let a = Args {
                off: out.len() as u64,
                flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
                nr: buf.len() as i32,
            };
            let n = req(
                PTRACE_PEEKSIGINFO,
                self.tid,
                &a as *const Args as usize,
                buf.as_mut_ptr() as usize,
            )? as usize;
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                return Ok(out);
            }
        }
    }

    /// `PTRACE_PEEKDATA`: one word of target memory.
    pub fn peek(&self, addr: u64) -> io::Result<u64> {
        // PEEKDATA returns the word; -1 is ambiguous, so clear errno first.
        // SAFETY: errno location is thread-local and valid.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: PEEKDATA reads target memory; the kernel checks the address.
        let v = unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, self.tid, addr as usize, 0) };
        if v == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(0) {
                return Err(e);
            }
        }
        Ok(v as u64)
    }

    /// `PTRACE_POKEDATA`. Warning: writes target memory (even read-only text).
    pub fn poke(&self, addr: u64, word: u64) -> io::Result<()> {
        req(
            libc::PTRACE_POKEDATA,
            self.tid,
            addr as usize,
            word as usize,
        )
        .map(|_| ())
    }

    /// `PTRACE_CONT` delivering `sig` (0 for none).
    pub fn cont(&self, sig: i32) -> io::Result<()> {
        req(libc::PTRACE_CONT, self.tid, 0, sig as usize).map(|_| ())
    }

    /// `PTRACE_SYSCALL`: run to the next syscall entry or exit.
    pub fn cont_syscall(&self) -> io::Result<()> {
        req(libc::PTRACE_SYSCALL, self.tid, 0, 0).map(|_| ())
    }

    /// `PTRACE_GETEVENTMSG`: at a fork/clone event stop, the new task's PID as cryo sees it.
    pub fn event_msg(&self) -> io::Result<u64> {
        let mut msg: libc::c_ulong = 0;
        req(
            libc::PTRACE_GETEVENTMSG,
            self.tid,
            0,
            &mut msg as *mut libc::c_ulong as usize,
        )?;
        Ok(msg as u64)
    }

    /// `PTRACE_INTERRUPT`.
    pub fn interrupt(&self) -> io::Result<()> {
        req(libc::PTRACE_INTERRUPT, self.tid, 0, 0).map(|_| ())
    }

    /// `PTRACE_DETACH` delivering `sig`.
    pub fn detach(&self, sig: i32) -> io::Result<()> {
        req(libc::PTRACE_DETACH, self.tid, 0, sig as usize).map(|_| ())
    }

    /// Waits for this tracee's next state change.
    pub fn wait(&self) -> io::Result<Stop> {
        wait(self.tid)
    }

    /// [`wait_until`] for this thread.
    pub fn wait_until(&self, deadline: std::time::Instant) -> io::Result<Option<Stop>> {
        wait_until(self.tid, deadline)
    }
}
