//! Running syscalls inside another process ("remote syscalls").
//!
//! A [`Remote`] points a stopped tracee's instruction pointer at a `syscall; int3` sequence,
//! loads the syscall number and arguments into its registers, lets it run until the `int3`
//! trap, and reads the result. One round trip costs about 5 µs on the development VM.
//!
//! [`Parasite`] is the dump-side bracket around it: it swaps 8 bytes of the target's code for
//! the syscall sequence, blocks the target's signals, optionally maps a scratch area, and puts
//! everything back on [`Parasite::cure`] (or, as a last resort, on drop).

use std::io;

use super::ptrace::{Regs, Stop, Tracee};

/// `syscall; int3; int3; int3; int3; int3; int3` as a little-endian word.
pub const SYSCALL_INSN: u64 = 0xcccc_cccc_cccc_050f;

/// Error from a remote syscall.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("ptrace failed while running {what} in the target")]
    Ptrace {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("target stopped with signal {sig} while running {what}")]
    UnexpectedStop { what: &'static str, sig: i32 },
    #[error("target died while running {what} ({how})")]
    Died { what: &'static str, how: String },
    #[error("{what} failed in the target")]
    Errno {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    /// The call this error names.
    pub fn what(&self) -> &'static str {
        match self {
            RemoteError::Ptrace { what, .. }
            | RemoteError::UnexpectedStop { what, .. }
            | RemoteError::Died { what, .. }
            | RemoteError::Errno { what, .. } => what,
        }
    }

    /// The errno of a syscall that ran and failed (None: it did not run to completion).
    pub fn errno(&self) -> Option<i32> {
        match self {
            RemoteError::Errno { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The error of a raw syscall result in -4095..0 (`-errno`).
fn errno_of(r: i64) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EINVAL))
}

/// Executes syscalls in a stopped tracee, with `site` holding [`SYSCALL_INSN`].
pub struct Remote<'t> {
    t: &'t Tracee,
    site: u64,
    base: Regs,
    /// Number of syscalls run so far (for stats and logs).
    pub calls: u64,
    /// The task created by the last fork/clone event seen, as cryo (not the tracee) numbers
    /// it: differs from the syscall's result when the tracee is in another PID namespace.
    pub last_child: Option<i32>,
    /// Every task created by fork/clone events so far, as cryo numbers them, in order
    /// (a batch of `clone3` creates many); the caller clears it.
    pub children: Vec<i32>,
    /// Where batches run; None: [`Remote::run_batch`] makes the calls one by one.
    batch: Option<BatchArea>,
    /// The tracee's `/proc/PID/mem`, opened for the first batch (or shared with another
    /// thread of the same process: one memory).
    mem: Option<std::rc::Rc<std::fs::File>>,
    /// Number of stops (round trips) the calls took.
    pub stops: u64,
}

/// cryo's end of the socket through which restored puppets in another user namespace take
/// cryo's fds: such a puppet may not `pidfd_getfd` from cryo (that needs ptrace rights over
/// cryo, in cryo's user namespace), so cryo sends each fd with SCM_RIGHTS instead. Set by
/// the restore for its duration ([`set_transport`]); None otherwise.
static TRANSPORT: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// Sets (or, with None, drops) cryo's end of the fd transport (see [`Remote::take_cryo_fd`]).
pub fn set_transport(end: Option<std::os::fd::OwnedFd>) {
    *TRANSPORT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = end;
}

/// A new fd transport: a socket pair whose one end cryo keeps as the transport until the
/// returned guard drops; the other end is returned at fd number `at` or above, for the
/// puppet to inherit.
pub fn new_transport(at: i32) -> io::Result<(TransportGuard, std::os::fd::OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let theirs = rustix::io::fcntl_dupfd_cloexec(&theirs, at)?;
    set_transport(Some(mine));
    Ok((TransportGuard(()), theirs))
}

/// Drops cryo's end of the fd transport when dropped.
pub struct TransportGuard(());

impl Drop for TransportGuard {
    fn drop(&mut self) {
        set_transport(None);
    }
}

/// `struct msghdr` (56 bytes), its `iovec`, a one-byte buffer and room for one SCM_RIGHTS
/// control message, at these offsets of the 256 bytes [`Remote::take_cryo_fd`] is given.
const MSG_IOV: usize = 64;
const MSG_DATA: usize = 96;
const MSG_CONTROL: usize = 128;
const MSG_CONTROL_LEN: usize = 24;

impl<'t> Remote<'t> {
    /// `base` is the register template (segment registers etc. are taken from it).
    pub fn new(t: &'t Tracee, site: u64, base: Regs) -> Self {
        Remote {
            t,
            site,
            base,
            calls: 0,
            last_child: None,
            children: Vec::new(),
            batch: None,
            mem: None,
            stops: 0,
        }
    }

    /// Lets [`Remote::run_batch`] run whole batches in one stop from `area`.
    pub fn set_batch_area(&mut self, area: BatchArea) {
        self.batch = Some(area);
    }

    /// The area batches run from, if any.
    pub fn batch_area(&self) -> Option<BatchArea> {
        self.batch
    }

    /// Runs batches like `other`, a thread of the same process: the same area, and its
    /// `/proc/PID/mem` (one memory, opened once for thousands of threads).
    pub fn batch_like(&mut self, other: &Remote<'_>) {
        self.batch = other.batch;
        if other.mem.is_some() {
            self.mem.clone_from(&other.mem);
        }
    }

    fn mem(&mut self) -> io::Result<&std::fs::File> {
        if self.mem.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{}/mem", self.t.tid))?;
            self.mem = Some(std::rc::Rc::new(f));
        }
        Ok(self.mem.as_deref().expect("opened above"))
    }

    /// Writes `bytes` at `addr` in the tracee through `/proc/PID/mem`, which writes text
    /// pages too (a private copy of the page, as `PTRACE_POKEDATA`).
    /// Warning: writes another process's memory.
    pub fn write_code(&mut self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.mem()?.write_all_at(bytes, addr)
    }

    /// Reads `buf.len()` bytes at `addr` through `/proc/PID/mem` (text pages included).
    pub fn read_code(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.mem()?.read_exact_at(buf, addr)
    }

    /// Runs the calls of `b` in order, as many per stop as the batch area holds, and stops at
    /// the first failure (its error names that call; the calls after it do not run). Returns
    /// every call's result (0 for all when the area keeps no results). Without a batch area
    /// the calls are made one by one, with the same outcome.
    pub fn run_batch(&mut self, b: &Batch) -> Result<Vec<u64>, RemoteError> {
        let Some((area, per)) = self.per_stop() else {
            return b
                .calls
                .iter()
                .map(|c| self.call(c.what, c.nr, c.a))
                .collect();
        };
        let mut out = Vec::with_capacity(b.calls.len());
        for chunk in b.calls.chunks(per) {
            if chunk.len() == 1 {
                let c = chunk[0];
                out.push(self.call(c.what, c.nr, c.a)?);
                continue;
            }
            let started = self.launch(area, chunk)?;
            out.extend(self.collect(started)?);
        }
        Ok(out)
    }

    /// How many calls one stop of this tracee runs (1: no batch area).
    fn per_stop(&self) -> Option<(BatchArea, usize)> {
        let area = self
            .batch
            .filter(|a| crate::num::usize_of(a.code_len) > CALL_CODE_MAX + 1)?;
        let per_code = (crate::num::usize_of(area.code_len) - 1) / CALL_CODE_MAX;
        let per = if area.results != 0 {
            per_code.min(crate::num::usize_of(area.results_len) / 8)
        } else {
            per_code
        };
        Some((area, per.max(1)))
    }

    /// Writes the code of `chunk` into `area` and lets the tracee run it; [`Self::collect`]
    /// waits for it.
    fn launch(&mut self, area: BatchArea, chunk: &[Call]) -> Result<Started, RemoteError> {
        let results = (area.results != 0).then_some(area.results);
        let (code, traps) = batch_code(chunk, results);
        let what = chunk[0].what;
        let pt = |source| RemoteError::Ptrace { what, source };
        self.write_code(area.code, &code).map_err(pt)?;
        let mut regs = self.base;
        regs.orig_rax = u64::MAX;
        regs.rip = area.code;
        self.t.set_regs(&regs).map_err(pt)?;
        self.t.cont(0).map_err(pt)?;
        self.stops += 1;
        Ok(Started {
            calls: chunk.to_vec(),
            traps,
            code_len: code.len(),
            area,
        })
    }

    /// Waits for a batch [`Self::launch`] started and returns its calls' results, or the
    /// error of the one that failed (named).
    fn collect(&mut self, s: Started) -> Result<Vec<u64>, RemoteError> {
        let chunk = &s.calls[..];
        let what = chunk[0].what;
        let pt = |source| RemoteError::Ptrace { what, source };
        self.wait_trap(what)?;
        let r = self.t.regs().map_err(pt)?;
        let end = crate::num::usize_of(r.rip.wrapping_sub(s.area.code));
        let done = if end == s.code_len {
            chunk.len()
        } else {
            s.traps
                .iter()
                .position(|&t| t == end)
                .ok_or(RemoteError::UnexpectedStop {
                    what,
                    sig: libc::SIGTRAP,
                })?
        };
        self.calls += done as u64 + u64::from(done < chunk.len());
        let mut vals = vec![0u8; 8 * chunk.len()];
        if s.area.results != 0 {
            let n = vals.len();
            crate::sys::mem::vm_read(self.t.tid, &mut vals, &[(s.area.results, n)]).map_err(pt)?;
        }
        let mut out = Vec::with_capacity(done);
        for (i, c) in chunk.iter().enumerate().take(done) {
            let v = u64::from_le_bytes(vals[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            tracing::debug!(
                "{}: {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {v:#x} (batched)",
                self.t.tid,
                c.what,
                c.a[0],
                c.a[1],
                c.a[2],
                c.a[3],
                c.a[4],
                c.a[5]
            );
            out.push(v);
        }
        if done < chunk.len() {
            let c = chunk[done];
            let e = r.rax.cast_signed();
            tracing::debug!(
                "{}: {}({:#x}, {:#x}, {:#x}, ...) = {e} (batched)",
                self.t.tid,
                c.what,
                c.a[0],
                c.a[1],
                c.a[2]
            );
            return Err(RemoteError::Errno {
                what: c.what,
                source: errno_of(e),
            });
        }
        Ok(out)
    }

    /// Starts the calls of `b` (at least two, none that forks or exits) and returns at
    /// once, while they take one stop: the tracee runs them while cryo works on other
    /// tasks; [`Self::finish_batch`] (on a `Remote` of the same tracee and batch area) waits
    /// for them. Returns None, having started nothing, when they take more than one stop.
    pub fn start_batch(&mut self, b: &Batch) -> Result<Option<Started>, RemoteError> {
        match self.per_stop() {
            Some((area, per)) if b.calls.len() > 1 && b.calls.len() <= per => {
                self.launch(area, &b.calls).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Waits for the calls [`Self::start_batch`] started: their results, or the error of
    /// the one that failed, as [`Self::run_batch`] reports it.
    pub fn finish_batch(&mut self, s: Started) -> Result<Vec<u64>, RemoteError> {
        self.collect(s)
    }

    /// Waits until the tracee reaches its `int3` (SIGTRAP), continuing past ptrace events.
    fn wait_trap(&mut self, what: &'static str) -> Result<(), RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        loop {
            match self.t.wait().map_err(pt)? {
                Stop::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => return Ok(()),
                // A fork/clone event: note the new task; a group-stop / interrupt
                // notification: just continue to the trap.
                Stop::Stopped { event, .. } if event != 0 => {
                    if matches!(
                        event,
                        libc::PTRACE_EVENT_FORK
                            | libc::PTRACE_EVENT_CLONE
                            | libc::PTRACE_EVENT_VFORK
                    ) {
                        // The new task's pid, an int the kernel hands over in a word.
                        self.last_child = i32::try_from(self.t.event_msg().map_err(pt)?).ok();
                        self.children.extend(self.last_child);
                    }
                    self.t.cont(0).map_err(pt)?
                }
                Stop::Stopped { sig, .. } => return Err(RemoteError::UnexpectedStop { what, sig }),
                Stop::Exited(c) => {
                    return Err(RemoteError::Died {
                        what,
                        how: format!("exit code {c}"),
                    })
                }
                Stop::Killed(s) => {
                    return Err(RemoteError::Died {
                        what,
                        how: format!("killed by signal {s}"),
                    })
                }
            }
        }
    }

    /// The tracee's own fd (close-on-exec) for cryo's fd `local`: taken with `pidfd_getfd`
    /// through `chan`, its pidfd of cryo; or, while a transport is set ([`set_transport`]),
    /// sent by cryo over it and received with `recvmsg` on `chan`, the tracee's end, using
    /// 256 bytes of its memory at `buf`.
    pub fn take_cryo_fd(
        &mut self,
        chan: RemoteFd,
        local: i32,
        buf: u64,
    ) -> Result<RemoteFd, RemoteError> {
        use std::os::fd::{AsFd, BorrowedFd};
        let sent = {
            let t = TRANSPORT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match t.as_ref() {
                None => None,
                Some(end) => {
                    // SAFETY: `local` is an fd cryo's caller holds open for this call.
                    let pass = unsafe { BorrowedFd::borrow_raw(local) };
                    Some(super::net::send_msg(end.as_fd(), b"F", Some(pass)))
                }
            }
        };
        let Some(sent) = sent else {
            let a = [arg(chan), arg(local), 0, 0, 0, 0];
            return self
                .call("pidfd_getfd", libc::SYS_pidfd_getfd, a)
                .map(int_of);
        };
        sent.map_err(|source| RemoteError::Errno {
            what: "sendmsg (an fd to the restored process)",
            source,
        })?;
        let mut hdr = [0u8; MSG_CONTROL];
        let put =
            |h: &mut [u8], off: usize, v: u64| h[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        // msghdr: name, namelen, iov, iovlen, control, controllen, flags.
        put(&mut hdr, 16, buf + MSG_IOV as u64);
        put(&mut hdr, 24, 1);
        put(&mut hdr, 32, buf + MSG_CONTROL as u64);
        put(&mut hdr, 40, MSG_CONTROL_LEN as u64);
        // iovec: base, len.
        put(&mut hdr, MSG_IOV, buf + MSG_DATA as u64);
        put(&mut hdr, MSG_IOV + 8, 1);
        let mem = |what: &'static str| move |source| RemoteError::Ptrace { what, source };
        super::mem::vm_write(self.t.tid, &hdr, &[(buf, hdr.len())])
            .map_err(mem("writing a msghdr"))?;
        let flags = arg(libc::MSG_CMSG_CLOEXEC);
        self.call(
            "recvmsg (an fd from cryo)",
            libc::SYS_recvmsg,
            [arg(chan), buf, flags, 0, 0, 0],
        )?;
        // cmsghdr: len (8), level (4), type (4), then the fd.
        let mut c = [0u8; MSG_CONTROL_LEN];
        super::mem::vm_read(
            self.t.tid,
            &mut c,
            &[(buf + MSG_CONTROL as u64, MSG_CONTROL_LEN)],
        )
        .map_err(mem("reading the received fd"))?;
        let word = |o: usize| i32::from_ne_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
        if word(8) != libc::SOL_SOCKET || word(12) != libc::SCM_RIGHTS {
            return Err(RemoteError::Errno {
                what: "recvmsg (an fd from cryo)",
                source: io::Error::other("no fd came with the message"),
            });
        }
        Ok(word(16))
    }

    /// The register template this executor loads calls into.
    pub fn base(&self) -> Regs {
        self.base
    }

    /// Starts the tracee on the table of calls at `table` with [`TABLE_CODE`] at `code` and
    /// returns at once, so that many threads run theirs at the same time;
    /// [`Remote::finish_table`] waits for it, [`table_outcome`] tells how it went. `calls`:
    /// how many the table holds (for the count of calls made).
    pub fn start_table(
        &mut self,
        what: &'static str,
        code: u64,
        table: u64,
        calls: usize,
    ) -> Result<(), RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        let mut regs = self.base;
        regs.orig_rax = u64::MAX;
        regs.rip = code;
        regs.rbx = table;
        self.t.set_regs(&regs).map_err(pt)?;
        self.t.cont(0).map_err(pt)?;
        self.calls += calls as u64;
        self.stops += 1;
        Ok(())
    }

    /// Waits for the table run [`Remote::start_table`] started to reach its end (its `int3`).
    pub fn finish_table(&mut self, what: &'static str) -> Result<(), RemoteError> {
        self.wait_trap(what)
    }

    /// Address of the syscall instruction this executor uses.
    pub fn site(&self) -> u64 {
        self.site
    }

    /// The tracee this executor drives.
    pub fn tracee(&self) -> &Tracee {
        self.t
    }

    fn load(&self, nr: i64, a: [u64; 6]) -> Regs {
        let mut r = self.base;
        r.rax = nr.cast_unsigned();
        r.orig_rax = u64::MAX; // not in a syscall: no restart logic on resume
        r.rdi = a[0];
        r.rsi = a[1];
        r.rdx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        r.rip = self.site;
        r
    }

    /// Runs `nr(args)` and returns the raw result (negative errno on failure).
    pub fn raw(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<i64, RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        self.t.set_regs(&self.load(nr, a)).map_err(pt)?;
        self.t.cont(0).map_err(pt)?;
        self.calls += 1;
        self.stops += 1;
        self.wait_trap(what)?;
        let r = self.t.regs().map_err(pt)?;
        Ok(r.rax.cast_signed())
    }

    /// Runs a syscall and turns a negative result into an error naming `what`.
    pub fn call(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, RemoteError> {
        let r = self.raw(what, nr, a)?;
        tracing::debug!(
            "{}: {what}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {r:#x}",
            self.t.tid,
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            a[5]
        );
        if (-4095..0).contains(&r) {
            return Err(RemoteError::Errno {
                what,
                source: errno_of(r),
            });
        }
        Ok(r.cast_unsigned())
    }

    /// Starts `nr(args)` and returns at once: the tracee runs it while the caller starts the
    /// same in other tracees; [`Remote::finish_call`] waits for it.
    pub fn start_call(
        &mut self,
        what: &'static str,
        nr: i64,
        a: [u64; 6],
    ) -> Result<(), RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        self.t.set_regs(&self.load(nr, a)).map_err(pt)?;
        self.t.cont(0).map_err(pt)?;
        self.calls += 1;
        self.stops += 1;
        Ok(())
    }

    /// Waits for the call [`Remote::start_call`] started and returns its result, a negative
    /// one turned into an error naming `what`.
    pub fn finish_call(&mut self, what: &'static str) -> Result<u64, RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        self.wait_trap(what)?;
        let r = self.t.regs().map_err(pt)?.rax.cast_signed();
        tracing::debug!("{}: {what}(...) = {r:#x} (pipelined)", self.t.tid);
        if (-4095..0).contains(&r) {
            return Err(RemoteError::Errno {
                what,
                source: errno_of(r),
            });
        }
        Ok(r.cast_unsigned())
    }

    /// `munmap(addr, len)` of the very page holding the syscall instruction (the last call a
    /// puppet runs): there is no `int3` to return to, so the tracee is left stopped at the
    /// syscall's exit.
    pub fn munmap_to_exit(
        &mut self,
        what: &'static str,
        addr: u64,
        len: u64,
    ) -> Result<(), RemoteError> {
        self.call_to_exit(what, libc::SYS_munmap, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }

    /// The first step of [`Remote::munmap_to_exit`], split so that many tracees run theirs
    /// concurrently: loads `munmap(addr, len)` and lets the tracee run to the syscall's
    /// entry. [`Remote::finish_to_exit`] takes it to the exit.
    pub fn start_munmap_to_exit(
        &mut self,
        what: &'static str,
        addr: u64,
        len: u64,
    ) -> Result<(), RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        let regs = self.load(libc::SYS_munmap, [addr, len, 0, 0, 0, 0]);
        self.t.set_regs(&regs).map_err(pt)?;
        self.t.cont_syscall().map_err(pt)
    }

    /// Waits for the syscall-entry (`at_entry`) or syscall-exit stop of a call started with
    /// [`Remote::start_munmap_to_exit`]; at the entry it lets the tracee run on to the exit,
    /// at the exit it checks the result and leaves the tracee stopped there.
    pub fn step_to_exit(&mut self, what: &'static str, at_entry: bool) -> Result<(), RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        match self.t.wait().map_err(pt)? {
            Stop::Stopped { sig, .. } if sig == (libc::SIGTRAP | 0x80) => {}
            Stop::Stopped { sig, .. } => return Err(RemoteError::UnexpectedStop { what, sig }),
            other => {
                return Err(RemoteError::Died {
                    what,
                    how: format!("{other:?}"),
                })
            }
        }
        if at_entry {
            return self.t.cont_syscall().map_err(pt);
        }
        self.calls += 1;
        let r = self.t.regs().map_err(pt)?.rax.cast_signed();
        if (-4095..0).contains(&r) {
            return Err(RemoteError::Errno {
                what,
                source: errno_of(r),
            });
        }
        Ok(())
    }

    /// Runs a syscall and leaves the tracee stopped at its exit.
    fn call_to_exit(
        &mut self,
        what: &'static str,
        nr: i64,
        a: [u64; 6],
    ) -> Result<u64, RemoteError> {
        let pt = |source| RemoteError::Ptrace { what, source };
        self.t.set_regs(&self.load(nr, a)).map_err(pt)?;
        // Entry stop, then exit stop.
        for _ in 0..2 {
            self.t.cont_syscall().map_err(pt)?;
            match self.t.wait().map_err(pt)? {
                Stop::Stopped { sig, .. } if sig == (libc::SIGTRAP | 0x80) => {}
                Stop::Stopped { sig, .. } => return Err(RemoteError::UnexpectedStop { what, sig }),
                other => {
                    return Err(RemoteError::Died {
                        what,
                        how: format!("{other:?}"),
                    })
                }
            }
        }
        self.calls += 1;
        let r = self.t.regs().map_err(pt)?.rax.cast_signed();
        if (-4095..0).contains(&r) {
            return Err(RemoteError::Errno {
                what,
                source: errno_of(r),
            });
        }
        Ok(r.cast_unsigned())
    }
}

/// A batch running in a tracee ([`Remote::start_batch`]), to be waited for.
#[derive(Debug)]
pub struct Started {
    calls: Vec<Call>,
    traps: Vec<usize>,
    code_len: usize,
    area: BatchArea,
}

/// One queued call of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub what: &'static str,
    pub nr: i64,
    pub a: [u64; 6],
}

/// Syscalls queued to run in the target in one stop ([`Remote::run_batch`]): each typed
/// [`Syscalls`] method queues its call and returns 0, so a batch holds only calls whose
/// results the caller does not need at once (side effects, or queries that write into
/// target memory read back afterwards, or whose results `run_batch` returns). The calls run
/// in order and stop at the first failure, which is reported under its own name, exactly
/// as the same calls made one by one with `?`.
#[derive(Debug, Default)]
pub struct Batch {
    pub calls: Vec<Call>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }
    pub fn len(&self) -> usize {
        self.calls.len()
    }
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

impl Syscalls for Batch {
    /// Queueing cannot fail; the calls' failures come from [`Remote::run_batch`].
    type Error = std::convert::Infallible;
    fn sys(
        &mut self,
        what: &'static str,
        nr: i64,
        a: [u64; 6],
    ) -> Result<u64, std::convert::Infallible> {
        self.calls.push(Call { what, nr, a });
        Ok(0)
    }
}

/// Where [`Remote::run_batch`] puts its generated code and results in the tracee.
#[derive(Debug, Clone, Copy)]
pub struct BatchArea {
    /// Executable memory the code is written to (through `/proc/PID/mem`, which may write
    /// read-only text): `code_len` bytes from `code`.
    pub code: u64,
    pub code_len: u64,
    /// Writable memory for the calls' results (8 bytes each), `results_len` bytes; 0: the
    /// results are not kept (the calls' side effects are what matters).
    pub results: u64,
    pub results_len: u64,
}

/// Largest code one call takes: 7 × `mov r64, imm64` (10), `syscall` (2), the store (10),
/// `cmp rax, -4095` (6), `jb +1` (2), `int3` (1).
const CALL_CODE_MAX: usize = 7 * 10 + 2 + 10 + 6 + 2 + 1;

/// The machine code of one batch: for every call the number and arguments are loaded,
/// `syscall` runs, its result is stored (when `results` is set), and a failure
/// (`rax` in -4095..-1) traps at once with an `int3` of its own; the end is a final `int3`.
/// Returns the code and, for each call, the offset just after its failure `int3`.
fn batch_code(calls: &[Call], results: Option<u64>) -> (Vec<u8>, Vec<usize>) {
    // REX prefix and opcode of `mov r64, imm64`, and the short zeroing `xor r32, r32`, for
    // rax, rdi, rsi, rdx, r10, r8, r9.
    const MOV: [[u8; 2]; 7] = [
        [0x48, 0xb8],
        [0x48, 0xbf],
        [0x48, 0xbe],
        [0x48, 0xba],
        [0x49, 0xba],
        [0x49, 0xb8],
        [0x49, 0xb9],
    ];
    const XOR: [&[u8]; 7] = [
        &[0x31, 0xc0],
        &[0x31, 0xff],
        &[0x31, 0xf6],
        &[0x31, 0xd2],
        &[0x45, 0x31, 0xd2],
        &[0x45, 0x31, 0xc0],
        &[0x45, 0x31, 0xc9],
    ];
    let mut code = Vec::with_capacity(calls.len() * CALL_CODE_MAX + 1);
    let mut traps = Vec::with_capacity(calls.len());
    for (i, c) in calls.iter().enumerate() {
        let vals = [
            c.nr.cast_unsigned(),
            c.a[0],
            c.a[1],
            c.a[2],
            c.a[3],
            c.a[4],
            c.a[5],
        ];
        for (r, v) in vals.into_iter().enumerate() {
            if v == 0 {
                code.extend_from_slice(XOR[r]);
            } else {
                code.extend_from_slice(&MOV[r]);
                code.extend_from_slice(&v.to_le_bytes());
            }
        }
        code.extend_from_slice(&[0x0f, 0x05]); // syscall
        if let Some(res) = results {
            // movabs [res + 8 i], rax
            code.extend_from_slice(&[0x48, 0xa3]);
            code.extend_from_slice(&(res + 8 * i as u64).to_le_bytes());
        }
        // cmp rax, -4095; jb +1; int3
        code.extend_from_slice(&[0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x72, 0x01, 0xcc]);
        traps.push(code.len());
    }
    code.push(0xcc);
    (code, traps)
}

/// Code that runs a table of syscalls from memory in the thread executing it, `rbx` pointing
/// at the table ([`table_bytes`]): it makes each call in turn, stores its result in the
/// entry, counts it in the table's first word, stops at the first failure or at the end
/// marker, and traps (`int3`). Many threads of one process run it at once from the same
/// code, each on its own table: one stop per thread for all its calls.
///
/// ```text
///   lea r12, [rbx+8]
/// loop:
///   mov rax, [r12]        ; number; -1 ends the table
///   cmp rax, -1
///   je done
///   mov rdi, [r12+8] ... mov r9, [r12+48]
///   syscall
///   mov [r12+56], rax     ; result
///   cmp rax, -4095
///   jae done              ; failed: stop here
///   inc qword [rbx]       ; one more done
///   add r12, 64
///   jmp loop
/// done:
///   int3
/// ```
pub const TABLE_CODE: [u8; 69] = [
    0x4c, 0x8d, 0x63, 0x08, 0x49, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x36, 0x49, 0x8b,
    0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54,
    0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89,
    0x44, 0x24, 0x38, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x48, 0xff, 0x03, 0x49, 0x83,
    0xc4, 0x40, 0xeb, 0xc0, 0xcc,
];

/// Bytes of one call in a table: number, six arguments, result.
const TABLE_ENTRY: usize = 64;

/// Bytes a table of `n` calls takes: the count of calls done, the entries, the end marker.
pub fn table_len(n: usize) -> usize {
    8 + TABLE_ENTRY * n + 8
}

/// The table of `calls` as [`TABLE_CODE`] reads it (none done yet).
pub fn table_bytes(calls: &[Call]) -> Vec<u8> {
    let mut t = Vec::with_capacity(table_len(calls.len()));
    t.extend_from_slice(&0u64.to_ne_bytes());
    for c in calls {
        t.extend_from_slice(&c.nr.to_ne_bytes());
        for a in c.a {
            t.extend_from_slice(&a.to_ne_bytes());
        }
        t.extend_from_slice(&0u64.to_ne_bytes());
    }
    t.extend_from_slice(&u64::MAX.to_ne_bytes());
    t
}

/// What a run of the table of `calls` left in `bytes` (the table read back): every call's
/// result, or the error of the one that failed (the calls after it did not run), named as
/// [`Remote::run_batch`] names it.
pub fn table_outcome(calls: &[Call], bytes: &[u8]) -> Result<Vec<u64>, RemoteError> {
    let word = |o: usize| -> Option<u64> {
        bytes
            .get(o..o + 8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
    };
    let short = || RemoteError::Ptrace {
        what: "reading a table of calls back",
        source: io::Error::other("short table"),
    };
    let done = crate::num::usize_of(word(0).ok_or_else(short)?);
    let mut out = Vec::with_capacity(calls.len());
    for (i, c) in calls.iter().enumerate() {
        let r = word(8 + TABLE_ENTRY * i + 56).ok_or_else(short)?;
        if i >= done {
            let e = r.cast_signed();
            if (-4095..0).contains(&e) {
                return Err(RemoteError::Errno {
                    what: c.what,
                    source: errno_of(e),
                });
            }
            return Err(RemoteError::Ptrace {
                what: c.what,
                source: io::Error::other("the call did not run"),
            });
        }
        out.push(r);
    }
    Ok(out)
}

/// A file descriptor number in the target's table (not in cryo's).
pub type RemoteFd = i32;

/// A C `int` argument as the syscall ABI passes it (sign-extended to a register).
pub fn arg(v: i32) -> u64 {
    i64::from(v).cast_unsigned()
}

/// A syscall result that is an fd or another `int` (the kernel returns values that fit; a
/// failure was already turned into an error).
#[allow(clippy::cast_possible_truncation)] // non-negative results of int-returning syscalls
fn int_of(r: u64) -> i32 {
    r as i32
}

/// The `prctl` option names cryo uses, for error messages.
fn prctl_name(op: i32) -> &'static str {
    match op {
        libc::PR_GET_SECUREBITS => "prctl(PR_GET_SECUREBITS)",
        libc::PR_SET_SECUREBITS => "prctl(PR_SET_SECUREBITS)",
        libc::PR_CAPBSET_DROP => "prctl(PR_CAPBSET_DROP)",
        libc::PR_CAP_AMBIENT => "prctl(PR_CAP_AMBIENT)",
        libc::PR_SET_NO_NEW_PRIVS => "prctl(PR_SET_NO_NEW_PRIVS)",
        libc::PR_GET_TID_ADDRESS => "prctl(PR_GET_TID_ADDRESS)",
        libc::PR_GET_PDEATHSIG => "prctl(PR_GET_PDEATHSIG)",
        libc::PR_SET_PDEATHSIG => "prctl(PR_SET_PDEATHSIG)",
        libc::PR_GET_DUMPABLE => "prctl(PR_GET_DUMPABLE)",
        libc::PR_SET_DUMPABLE => "prctl(PR_SET_DUMPABLE)",
        libc::PR_GET_THP_DISABLE => "prctl(PR_GET_THP_DISABLE)",
        libc::PR_SET_THP_DISABLE => "prctl(PR_SET_THP_DISABLE)",
        libc::PR_GET_CHILD_SUBREAPER => "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::PR_SET_CHILD_SUBREAPER => "prctl(PR_SET_CHILD_SUBREAPER)",
        libc::PR_SET_NAME => "prctl(PR_SET_NAME)",
        libc::PR_SET_MM => "prctl(PR_SET_MM)",
        PR_TIMER_CREATE_RESTORE_IDS => "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        _ => "prctl",
    }
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS)` (Linux 6.15): `timer_create` takes the id passed in.
pub const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

/// The namespace kinds `unshare` is given, for error messages.
fn unshare_name(flags: i32) -> &'static str {
    match flags {
        libc::CLONE_NEWNET => "unshare(CLONE_NEWNET)",
        libc::CLONE_NEWIPC => "unshare(CLONE_NEWIPC)",
        libc::CLONE_NEWUTS => "unshare(CLONE_NEWUTS)",
        libc::CLONE_NEWCGROUP => "unshare(CLONE_NEWCGROUP)",
        libc::CLONE_NEWTIME => "unshare(CLONE_NEWTIME)",
        libc::CLONE_NEWNS => "unshare(CLONE_NEWNS)",
        _ => "unshare",
    }
}

/// Syscalls run inside a task cryo drives (the frozen target at dump, a puppet at restore),
/// typed. An implementor provides [`Syscalls::sys`], the raw call with its error type;
/// every other method is one syscall with typed arguments: fds of the target's table as
/// [`RemoteFd`], addresses and lengths *in the target* as `u64`. A failure names the call
/// (`what`); [`Syscalls::named`] gives a call a more precise name ("mmap (scratch area)").
///
/// `sys` stays for the rare call that has no method here.
pub trait Syscalls {
    /// What a failed call returns (`RemoteError`, or `TaskError` naming the process).
    type Error;

    /// Runs syscall `nr` with arguments `a` in the task; a negative result is an error
    /// naming `what`.
    fn sys(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, Self::Error>;

    /// The next call fails as `what` instead of its syscall's name.
    fn named(&mut self, what: &'static str) -> Named<'_, Self>
    where
        Self: Sized,
    {
        Named { inner: self, what }
    }

    // --- fds ---

    /// `close(fd)`.
    fn close(&mut self, fd: RemoteFd) -> Result<(), Self::Error> {
        self.sys("close", libc::SYS_close, [arg(fd), 0, 0, 0, 0, 0])
            .map(drop)
    }
    /// `close_range(first, last, 0)`.
    fn close_range(&mut self, first: u32, last: u32) -> Result<(), Self::Error> {
        let a = [u64::from(first), u64::from(last), 0, 0, 0, 0];
        self.sys("close_range", libc::SYS_close_range, a).map(drop)
    }
    /// `dup3(old, new, flags)` (`flags`: `O_CLOEXEC` or 0).
    fn dup3(&mut self, old: RemoteFd, new: RemoteFd, flags: i32) -> Result<(), Self::Error> {
        let a = [arg(old), arg(new), arg(flags), 0, 0, 0];
        self.sys("dup3", libc::SYS_dup3, a).map(drop)
    }
    /// `fcntl(fd, F_DUPFD, min)`: a copy of `fd` at the lowest free number not below `min`.
    fn dup_above(&mut self, fd: RemoteFd, min: RemoteFd) -> Result<RemoteFd, Self::Error> {
        let a = [arg(fd), arg(libc::F_DUPFD), arg(min), 0, 0, 0];
        self.sys("fcntl(F_DUPFD)", libc::SYS_fcntl, a).map(int_of)
    }
    /// `fcntl(fd, F_SETFD, FD_CLOEXEC or 0)`.
    fn set_cloexec(&mut self, fd: RemoteFd, on: bool) -> Result<(), Self::Error> {
        let flag = if on { libc::FD_CLOEXEC } else { 0 };
        let a = [arg(fd), arg(libc::F_SETFD), arg(flag), 0, 0, 0];
        self.sys("fcntl(F_SETFD)", libc::SYS_fcntl, a).map(drop)
    }
    /// `fcntl(fd, cmd, arg)` for any other command (`arg`: an integer or a target address).
    fn fcntl(&mut self, fd: RemoteFd, cmd: i32, val: u64) -> Result<u64, Self::Error> {
        self.sys("fcntl", libc::SYS_fcntl, [arg(fd), arg(cmd), val, 0, 0, 0])
    }
    /// `lseek(fd, off, whence)`.
    fn lseek(&mut self, fd: RemoteFd, off: u64, whence: i32) -> Result<u64, Self::Error> {
        let a = [arg(fd), off, arg(whence), 0, 0, 0];
        self.sys("lseek", libc::SYS_lseek, a)
    }
    /// `ioctl(fd, req, arg)` (`arg`: an integer or a target address).
    fn ioctl(&mut self, fd: RemoteFd, req: u64, val: u64) -> Result<u64, Self::Error> {
        self.sys("ioctl", libc::SYS_ioctl, [arg(fd), req, val, 0, 0, 0])
    }
    /// `openat(dirfd, path, flags, mode)`, `path` a NUL-terminated string in the target.
    fn openat(
        &mut self,
        dirfd: RemoteFd,
        path: u64,
        flags: i32,
        mode: u32,
    ) -> Result<RemoteFd, Self::Error> {
        let a = [arg(dirfd), path, arg(flags), u64::from(mode), 0, 0];
        self.sys("openat", libc::SYS_openat, a).map(int_of)
    }
    /// `preadv(fd, iov, iovcnt, off)`: bytes read.
    fn preadv(
        &mut self,
        fd: RemoteFd,
        iov: u64,
        iovcnt: u64,
        off: u64,
    ) -> Result<u64, Self::Error> {
        self.sys(
            "preadv",
            libc::SYS_preadv,
            [arg(fd), iov, iovcnt, off, 0, 0],
        )
    }
    /// `write(fd, buf, len)`, `buf` in the target: bytes written.
    fn write(&mut self, fd: RemoteFd, buf: u64, len: u64) -> Result<u64, Self::Error> {
        self.sys("write", libc::SYS_write, [arg(fd), buf, len, 0, 0, 0])
    }
    /// `flock(fd, op)`.
    fn flock(&mut self, fd: RemoteFd, op: i32) -> Result<(), Self::Error> {
        self.sys("flock", libc::SYS_flock, [arg(fd), arg(op), 0, 0, 0, 0])
            .map(drop)
    }
    /// `socket(domain, type, protocol)`.
    fn socket(&mut self, domain: i32, ty: i32, protocol: i32) -> Result<RemoteFd, Self::Error> {
        let a = [arg(domain), arg(ty), arg(protocol), 0, 0, 0];
        self.sys("socket", libc::SYS_socket, a).map(int_of)
    }
    /// `epoll_ctl(epfd, op, fd, event)`, `event` a `struct epoll_event` in the target.
    fn epoll_ctl(
        &mut self,
        epfd: RemoteFd,
        op: i32,
        fd: RemoteFd,
        event: u64,
    ) -> Result<(), Self::Error> {
        let a = [arg(epfd), arg(op), arg(fd), event, 0, 0];
        self.sys("epoll_ctl", libc::SYS_epoll_ctl, a).map(drop)
    }
    /// `mq_open(name, oflag, 0, NULL)` of an existing queue, `name` in the target.
    fn mq_open(&mut self, name: u64, oflag: i32) -> Result<RemoteFd, Self::Error> {
        let a = [name, arg(oflag), 0, 0, 0, 0];
        self.sys("mq_open", libc::SYS_mq_open, a).map(int_of)
    }
    /// `userfaultfd(flags)`.
    fn userfaultfd(&mut self, flags: i32) -> Result<RemoteFd, Self::Error> {
        let a = [arg(flags), 0, 0, 0, 0, 0];
        self.sys("userfaultfd", libc::SYS_userfaultfd, a)
            .map(int_of)
    }
    /// `pidfd_open(pid, flags)` (`pid` as the task sees it).
    fn pidfd_open(&mut self, pid: i32, flags: u32) -> Result<RemoteFd, Self::Error> {
        let a = [arg(pid), u64::from(flags), 0, 0, 0, 0];
        self.sys("pidfd_open", libc::SYS_pidfd_open, a).map(int_of)
    }
    /// `pidfd_getfd(pidfd, fd, 0)`: the task's own fd for `fd` of the process `pidfd` names.
    fn pidfd_getfd(&mut self, pidfd: RemoteFd, fd: i32) -> Result<RemoteFd, Self::Error> {
        let a = [arg(pidfd), arg(fd), 0, 0, 0, 0];
        self.sys("pidfd_getfd", libc::SYS_pidfd_getfd, a)
            .map(int_of)
    }

    // --- memory ---

    /// `mmap(addr, len, prot, flags, fd, off)` (`fd` None: anonymous); the address mapped.
    fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: Option<RemoteFd>,
        off: u64,
    ) -> Result<u64, Self::Error> {
        let a = [addr, len, arg(prot), arg(flags), arg(fd.unwrap_or(-1)), off];
        self.sys("mmap", libc::SYS_mmap, a)
    }
    /// `munmap(addr, len)`.
    fn munmap(&mut self, addr: u64, len: u64) -> Result<(), Self::Error> {
        self.sys("munmap", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }
    /// `mremap(old, old_len, new_len, flags, new_addr)`; the address the pages are at now.
    fn mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: i32,
        new_addr: u64,
    ) -> Result<u64, Self::Error> {
        let a = [old, old_len, new_len, arg(flags), new_addr, 0];
        self.sys("mremap", libc::SYS_mremap, a)
    }
    /// `mprotect(addr, len, prot)`.
    fn mprotect(&mut self, addr: u64, len: u64, prot: i32) -> Result<(), Self::Error> {
        let a = [addr, len, arg(prot), 0, 0, 0];
        self.sys("mprotect", libc::SYS_mprotect, a).map(drop)
    }
    /// `madvise(addr, len, advice)`.
    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> Result<(), Self::Error> {
        let a = [addr, len, arg(advice), 0, 0, 0];
        self.sys("madvise", libc::SYS_madvise, a).map(drop)
    }
    /// `shmat(id, addr, flags)`: attaches SysV segment `id` at `addr`; the address attached.
    fn shmat(&mut self, id: i32, addr: u64, flags: i32) -> Result<u64, Self::Error> {
        self.sys(
            "shmat",
            libc::SYS_shmat,
            [arg(id), addr, arg(flags), 0, 0, 0],
        )
    }
    /// `mlock(addr, len)`.
    fn mlock(&mut self, addr: u64, len: u64) -> Result<(), Self::Error> {
        self.sys("mlock", libc::SYS_mlock, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }
    /// `membarrier(cmd, flags, 0)`: a command's result (a registration mask for
    /// `MEMBARRIER_CMD_GET_REGISTRATIONS`).
    fn membarrier(&mut self, cmd: i32, flags: u32) -> Result<u64, Self::Error> {
        let a = [arg(cmd), u64::from(flags), 0, 0, 0, 0];
        self.sys("membarrier", libc::SYS_membarrier, a)
    }
    /// `brk(addr)`: the break after the call (`brk(0)` reads it).
    fn brk(&mut self, addr: u64) -> Result<u64, Self::Error> {
        self.sys("brk", libc::SYS_brk, [addr, 0, 0, 0, 0, 0])
    }

    // --- the task itself ---

    /// `prctl(op, args...)`.
    fn prctl(&mut self, op: i32, args: [u64; 4]) -> Result<u64, Self::Error> {
        let [a2, a3, a4, a5] = args;
        self.sys(
            prctl_name(op),
            libc::SYS_prctl,
            [arg(op), a2, a3, a4, a5, 0],
        )
    }
    /// `arch_prctl(code, addr)`.
    fn arch_prctl(&mut self, code: i32, addr: u64) -> Result<u64, Self::Error> {
        let a = [arg(code), addr, 0, 0, 0, 0];
        self.sys("arch_prctl", libc::SYS_arch_prctl, a)
    }
    /// `personality(persona)`.
    fn personality(&mut self, persona: u32) -> Result<(), Self::Error> {
        let a = [u64::from(persona), 0, 0, 0, 0, 0];
        self.sys("personality", libc::SYS_personality, a).map(drop)
    }
    /// `umask(mask)`.
    fn umask(&mut self, mask: u32) -> Result<(), Self::Error> {
        let a = [u64::from(mask), 0, 0, 0, 0, 0];
        self.sys("umask", libc::SYS_umask, a).map(drop)
    }
    /// `chdir(path)`, `path` in the target.
    fn chdir(&mut self, path: u64) -> Result<(), Self::Error> {
        self.sys("chdir", libc::SYS_chdir, [path, 0, 0, 0, 0, 0])
            .map(drop)
    }
    /// `chroot(path)`, `path` in the target.
    fn chroot(&mut self, path: u64) -> Result<(), Self::Error> {
        self.sys("chroot", libc::SYS_chroot, [path, 0, 0, 0, 0, 0])
            .map(drop)
    }
    /// `unshare(flags)`.
    fn unshare(&mut self, flags: i32) -> Result<(), Self::Error> {
        let a = [arg(flags), 0, 0, 0, 0, 0];
        self.sys(unshare_name(flags), libc::SYS_unshare, a)
            .map(drop)
    }
    /// `setns(fd, nstype)`.
    fn setns(&mut self, fd: RemoteFd, nstype: i32) -> Result<(), Self::Error> {
        let a = [arg(fd), arg(nstype), 0, 0, 0, 0];
        self.sys("setns", libc::SYS_setns, a).map(drop)
    }
    /// `uname(buf)`, `buf` a `struct utsname` in the target.
    fn uname(&mut self, buf: u64) -> Result<(), Self::Error> {
        self.sys("uname", libc::SYS_uname, [buf, 0, 0, 0, 0, 0])
            .map(drop)
    }
    /// `sethostname(name, len)`, `name` in the target.
    fn sethostname(&mut self, name: u64, len: u64) -> Result<(), Self::Error> {
        let a = [name, len, 0, 0, 0, 0];
        self.sys("sethostname", libc::SYS_sethostname, a).map(drop)
    }
    /// `setdomainname(name, len)`, `name` in the target.
    fn setdomainname(&mut self, name: u64, len: u64) -> Result<(), Self::Error> {
        let a = [name, len, 0, 0, 0, 0];
        self.sys("setdomainname", libc::SYS_setdomainname, a)
            .map(drop)
    }
    /// `setsid()`.
    fn setsid(&mut self) -> Result<(), Self::Error> {
        self.sys("setsid", libc::SYS_setsid, [0; 6]).map(drop)
    }
    /// `setpgid(pid, pgid)`.
    fn setpgid(&mut self, pid: i32, pgid: i32) -> Result<(), Self::Error> {
        let a = [arg(pid), arg(pgid), 0, 0, 0, 0];
        self.sys("setpgid", libc::SYS_setpgid, a).map(drop)
    }
    /// `set_tid_address(addr)`.
    fn set_tid_address(&mut self, addr: u64) -> Result<(), Self::Error> {
        let a = [addr, 0, 0, 0, 0, 0];
        self.sys("set_tid_address", libc::SYS_set_tid_address, a)
            .map(drop)
    }
    /// `set_robust_list(head, len)`.
    fn set_robust_list(&mut self, head: u64, len: u64) -> Result<(), Self::Error> {
        let a = [head, len, 0, 0, 0, 0];
        self.sys("set_robust_list", libc::SYS_set_robust_list, a)
            .map(drop)
    }
    /// `rseq(addr, len, flags, sig)` (`flags` 1: unregister).
    fn rseq(&mut self, addr: u64, len: u32, flags: i32, sig: u32) -> Result<(), Self::Error> {
        let a = [addr, u64::from(len), arg(flags), u64::from(sig), 0, 0];
        self.sys("rseq", libc::SYS_rseq, a).map(drop)
    }
    /// `seccomp(op, flags, args)`, `args` in the target.
    fn seccomp(&mut self, op: u32, flags: u32, args: u64) -> Result<(), Self::Error> {
        let a = [u64::from(op), u64::from(flags), args, 0, 0, 0];
        self.sys("seccomp", libc::SYS_seccomp, a).map(drop)
    }
    /// `clone3(args, size)`, `args` a `struct clone_args` in the target; the new task's id
    /// as the calling task names it.
    fn clone3(&mut self, args: u64, size: u64) -> Result<i32, Self::Error> {
        self.sys("clone3", libc::SYS_clone3, [args, size, 0, 0, 0, 0])
            .map(int_of)
    }

    // --- credentials ---

    /// `setgroups(n, list)`, `list` n `gid_t`s in the target.
    fn setgroups(&mut self, n: u64, list: u64) -> Result<(), Self::Error> {
        self.sys("setgroups", libc::SYS_setgroups, [n, list, 0, 0, 0, 0])
            .map(drop)
    }
    /// `setresuid(r, e, s)`.
    fn setresuid(&mut self, r: u32, e: u32, s: u32) -> Result<(), Self::Error> {
        let a = [u64::from(r), u64::from(e), u64::from(s), 0, 0, 0];
        self.sys("setresuid", libc::SYS_setresuid, a).map(drop)
    }
    /// `setresgid(r, e, s)`.
    fn setresgid(&mut self, r: u32, e: u32, s: u32) -> Result<(), Self::Error> {
        let a = [u64::from(r), u64::from(e), u64::from(s), 0, 0, 0];
        self.sys("setresgid", libc::SYS_setresgid, a).map(drop)
    }
    /// `setfsuid(uid)`.
    fn setfsuid(&mut self, uid: u32) -> Result<(), Self::Error> {
        let a = [u64::from(uid), 0, 0, 0, 0, 0];
        self.sys("setfsuid", libc::SYS_setfsuid, a).map(drop)
    }
    /// `setfsgid(gid)`.
    fn setfsgid(&mut self, gid: u32) -> Result<(), Self::Error> {
        let a = [u64::from(gid), 0, 0, 0, 0, 0];
        self.sys("setfsgid", libc::SYS_setfsgid, a).map(drop)
    }
    /// `capset(header, data)`, both in the target.
    fn capset(&mut self, header: u64, data: u64) -> Result<(), Self::Error> {
        self.sys("capset", libc::SYS_capset, [header, data, 0, 0, 0, 0])
            .map(drop)
    }

    // --- signals and timers ---

    /// `rt_sigaction(sig, act, oact, 8)`, `act`/`oact` kernel `struct sigaction`s in the
    /// target (0: none).
    fn rt_sigaction(&mut self, sig: i32, act: u64, oact: u64) -> Result<(), Self::Error> {
        let a = [arg(sig), act, oact, 8, 0, 0];
        self.sys("rt_sigaction", libc::SYS_rt_sigaction, a)
            .map(drop)
    }
    /// `sigaltstack(ss, old)`, both `stack_t`s in the target (0: none).
    fn sigaltstack(&mut self, ss: u64, old: u64) -> Result<(), Self::Error> {
        let a = [ss, old, 0, 0, 0, 0];
        self.sys("sigaltstack", libc::SYS_sigaltstack, a).map(drop)
    }
    /// `rt_sigqueueinfo(tgid, sig, info)`, `info` a siginfo in the target.
    fn rt_sigqueueinfo(&mut self, tgid: i32, sig: i32, info: u64) -> Result<(), Self::Error> {
        let a = [arg(tgid), arg(sig), info, 0, 0, 0];
        self.sys("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, a)
            .map(drop)
    }
    /// `rt_tgsigqueueinfo(tgid, tid, sig, info)`, `info` a siginfo in the target.
    fn rt_tgsigqueueinfo(
        &mut self,
        tgid: i32,
        tid: i32,
        sig: i32,
        info: u64,
    ) -> Result<(), Self::Error> {
        let a = [arg(tgid), arg(tid), arg(sig), info, 0, 0];
        self.sys("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo, a)
            .map(drop)
    }
    /// `rt_sigtimedwait(set, info, timeout, 8)`, all in the target (`info` 0: none).
    fn rt_sigtimedwait(&mut self, set: u64, info: u64, timeout: u64) -> Result<u64, Self::Error> {
        let a = [set, info, timeout, 8, 0, 0];
        self.sys("rt_sigtimedwait", libc::SYS_rt_sigtimedwait, a)
    }
    /// `exit_group(code)`: the task ends (a successful call never returns: `Died`).
    fn exit_group(&mut self, code: i32) -> Result<(), Self::Error> {
        let a = [arg(code), 0, 0, 0, 0, 0];
        self.sys("exit_group", libc::SYS_exit_group, a).map(drop)
    }
    /// `wait4(pid, status, options, NULL)` (`pid` as the task sees it, `status` in the
    /// target or 0): the pid reaped.
    fn wait4(&mut self, pid: i32, status: u64, options: i32) -> Result<i32, Self::Error> {
        let a = [arg(pid), status, arg(options), 0, 0, 0];
        self.sys("wait4", libc::SYS_wait4, a).map(int_of)
    }
    /// `kill(pid, sig)` (`pid` as the task sees it).
    fn kill(&mut self, pid: i32, sig: i32) -> Result<(), Self::Error> {
        self.sys("kill", libc::SYS_kill, [arg(pid), arg(sig), 0, 0, 0, 0])
            .map(drop)
    }
    /// `getitimer(which, value)`, `value` in the target.
    fn getitimer(&mut self, which: i32, value: u64) -> Result<(), Self::Error> {
        let a = [arg(which), value, 0, 0, 0, 0];
        self.sys("getitimer", libc::SYS_getitimer, a).map(drop)
    }
    /// `setitimer(which, new, old)`, both in the target.
    fn setitimer(&mut self, which: i32, new: u64, old: u64) -> Result<(), Self::Error> {
        let a = [arg(which), new, old, 0, 0, 0];
        self.sys("setitimer", libc::SYS_setitimer, a).map(drop)
    }
    /// `timer_create(clock, sevp, id)`, `sevp` and `id` in the target.
    fn timer_create(&mut self, clock: i32, sevp: u64, id: u64) -> Result<(), Self::Error> {
        let a = [arg(clock), sevp, id, 0, 0, 0];
        self.sys("timer_create", libc::SYS_timer_create, a)
            .map(drop)
    }
    /// `timer_settime(id, flags, new, old)`, `new`/`old` in the target.
    fn timer_settime(
        &mut self,
        id: i32,
        flags: i32,
        new: u64,
        old: u64,
    ) -> Result<(), Self::Error> {
        let a = [arg(id), arg(flags), new, old, 0, 0];
        self.sys("timer_settime", libc::SYS_timer_settime, a)
            .map(drop)
    }
    /// `timer_gettime(id, value)`, `value` in the target.
    fn timer_gettime(&mut self, id: i32, value: u64) -> Result<(), Self::Error> {
        let a = [arg(id), value, 0, 0, 0, 0];
        self.sys("timer_gettime", libc::SYS_timer_gettime, a)
            .map(drop)
    }
    /// `timer_getoverrun(id)`.
    fn timer_getoverrun(&mut self, id: i32) -> Result<u64, Self::Error> {
        let a = [arg(id), 0, 0, 0, 0, 0];
        self.sys("timer_getoverrun", libc::SYS_timer_getoverrun, a)
    }
}

/// A [`Syscalls`] whose calls fail under one given name (from [`Syscalls::named`]).
pub struct Named<'a, S> {
    inner: &'a mut S,
    what: &'static str,
}

impl<S: Syscalls> Syscalls for Named<'_, S> {
    type Error = S::Error;
    fn sys(&mut self, _what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, S::Error> {
        self.inner.sys(self.what, nr, a)
    }
}

impl Syscalls for Remote<'_> {
    type Error = RemoteError;
    fn sys(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, RemoteError> {
        self.call(what, nr, a)
    }
}

/// The last bytes of a dump's scratch area, where batches store their results: kinds use
/// the scratch area below it.
pub const SCRATCH_RESULTS: u64 = 4096;

/// Dump-side injection bracket: original code word, registers and signal mask are saved and
/// put back by [`Parasite::cure`]. While it lives, the target's signals are blocked (except
/// SIGTRAP, which the executor needs), so nothing is delivered mid-injection.
pub struct Parasite<'t> {
    pub remote: Remote<'t>,
    site: u64,
    orig_word: u64,
    orig_regs: Regs,
    orig_mask: u64,
    scratch: Option<(u64, u64)>,
    /// The original bytes of the batch code area (after the code word), saved before the
    /// first batch overwrote them.
    saved_code: Option<Vec<u8>>,
    cured: bool,
}

impl<'t> Parasite<'t> {
    /// Installs the syscall sequence at `site` (start of an executable mapping).
    pub fn inject(t: &'t Tracee, site: u64, orig_regs: Regs) -> Result<Self, RemoteError> {
        let pt = |source| RemoteError::Ptrace {
            what: "injection setup",
            source,
        };
        let orig_mask = t.sigmask().map_err(pt)?;
        let orig_word = t.peek(site).map_err(pt)?;
        t.set_sigmask(!(1u64 << (libc::SIGTRAP - 1))).map_err(pt)?;
        if let Err(e) = t.poke(site, SYSCALL_INSN) {
            let _ = t.set_sigmask(orig_mask);
            return Err(pt(e));
        }
        Ok(Parasite {
            remote: Remote::new(t, site, orig_regs),
            site,
            orig_word,
            orig_regs,
            orig_mask,
            scratch: None,
            saved_code: None,
            cured: false,
        })
    }

    /// Makes batches possible ([`Remote::run_batch`]): the rest of the code word's page holds
    /// their code (its bytes are saved first and put back by the cure) and, once a scratch
    /// area exists, its last 4 KiB their results. Returns the area, for the other threads.
    pub fn batch_area(&mut self) -> Result<BatchArea, RemoteError> {
        let code = self.site + 8;
        let code_len = 4096 - (code & 4095);
        if self.saved_code.is_none() {
            let mut buf = vec![0u8; usize::try_from(code_len).unwrap_or(0)];
            self.remote
                .read_code(code, &mut buf)
                .map_err(|source| RemoteError::Ptrace {
                    what: "saving the batch code area",
                    source,
                })?;
            self.saved_code = Some(buf);
        }
        let (results, results_len) = match self.scratch {
            Some((a, l)) if l >= SCRATCH_RESULTS + 4096 => {
                (a + l - SCRATCH_RESULTS, SCRATCH_RESULTS)
            }
            _ => (0, 0),
        };
        let area = BatchArea {
            code,
            code_len,
            results,
            results_len,
        };
        self.remote.set_batch_area(area);
        Ok(area)
    }

    /// Runs `b` in one stop (see [`Remote::run_batch`]); returns the calls' results.
    pub fn run_batch(&mut self, b: &Batch) -> Result<Vec<u64>, RemoteError> {
        self.batch_area()?;
        self.remote.run_batch(b)
    }

    /// Maps (once) and returns a private read-write scratch area of `len` bytes in the target.
    pub fn scratch(&mut self, len: u64) -> Result<u64, RemoteError> {
        if let Some((a, l)) = self.scratch {
            if l >= len {
                return Ok(a);
            }
        }
        let addr = self.remote.named("mmap (scratch area)").mmap(
            0,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
            0,
        )?;
        if let Some((a, l)) = self.scratch.replace((addr, len)) {
            self.remote.named("munmap (scratch area)").munmap(a, l)?;
        }
        if self.saved_code.is_some() {
            self.batch_area()?;
        }
        Ok(addr)
    }

    /// Puts the target back exactly as it was: scratch unmapped, code word, registers and
    /// signal mask restored.
    pub fn cure(mut self) -> Result<(), RemoteError> {
        self.cure_inner()
    }

    /// Takes the scratch area (address, length), if one was mapped, out of the cure: it
    /// stays mapped (no stop to unmap it), for a task that will be killed, or let go only
    /// after [`Parasite::unmap_left`] removed it.
    pub fn keep_scratch(&mut self) -> Option<(u64, u64)> {
        self.scratch.take()
    }

    /// Unmaps a scratch area [`Parasite::cure_keeping_scratch`] left in the stopped task `t`
    /// (a new injection at `site`, cured at once).
    pub fn unmap_left(t: &Tracee, site: u64, addr: u64, len: u64) -> Result<(), RemoteError> {
        let regs = t.regs().map_err(|source| RemoteError::Ptrace {
            what: "PTRACE_GETREGS",
            source,
        })?;
        let mut p = Parasite::inject(t, site, regs)?;
        p.scratch = Some((addr, len));
        p.cure()
    }

    fn cure_inner(&mut self) -> Result<(), RemoteError> {
        self.cured = true;
        let tid = self.remote.tracee().tid;
        let mut first_err = None;
        if let Some((a, l)) = self.scratch.take() {
            if let Err(e) = self.remote.named("munmap (scratch area)").munmap(a, l) {
                first_err.get_or_insert(e);
            }
        }
        let pt = |source| RemoteError::Ptrace {
            what: "restoring the target after injection",
            source,
        };
        let t2 = Tracee { tid };
        if let Some(saved) = self.saved_code.take() {
            if let Err(e) = self.remote.write_code(self.site + 8, &saved) {
                first_err.get_or_insert(pt(e));
            }
        }
        if let Err(e) = t2.poke(self.site, self.orig_word) {
            first_err.get_or_insert(pt(e));
        }
        if let Err(e) = t2.set_regs(&self.orig_regs) {
            first_err.get_or_insert(pt(e));
        }
        if let Err(e) = t2.set_sigmask(self.orig_mask) {
            first_err.get_or_insert(pt(e));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Parasite<'_> {
    fn drop(&mut self) {
        if !self.cured {
            if let Err(e) = self.cure_inner() {
                tracing::error!(
                    "Could not fully restore task {} after injection: {e}",
                    self.remote.tracee().tid
                );
            }
        }
    }
}

/// The per-thread part of an injection: another thread of a process whose code word is
/// already swapped by a [`Parasite`] runs syscalls too. Saves and restores that thread's
/// registers and signal mask; must be cured before the owning `Parasite`.
pub struct ThreadInjection<'t> {
    pub remote: Remote<'t>,
    orig_regs: Regs,
    orig_mask: u64,
    cured: bool,
}

impl<'t> ThreadInjection<'t> {
    /// Prepares thread `t` (stopped, with registers `orig_regs`) to run syscalls at `site`.
    pub fn new(t: &'t Tracee, site: u64, orig_regs: Regs) -> Result<Self, RemoteError> {
        let pt = |source| RemoteError::Ptrace {
            what: "thread injection setup",
            source,
        };
        let orig_mask = t.sigmask().map_err(pt)?;
        t.set_sigmask(!(1u64 << (libc::SIGTRAP - 1))).map_err(pt)?;
        Ok(ThreadInjection {
            remote: Remote::new(t, site, orig_regs),
            orig_regs,
            orig_mask,
            cured: false,
        })
    }

    /// [`ThreadInjection::new`] for a thread whose signal mask the caller read already
    /// (`orig_mask`): one ptrace call less.
    pub fn with_mask(
        t: &'t Tracee,
        site: u64,
        orig_regs: Regs,
        orig_mask: u64,
    ) -> Result<Self, RemoteError> {
        t.set_sigmask(!(1u64 << (libc::SIGTRAP - 1)))
            .map_err(|source| RemoteError::Ptrace {
                what: "thread injection setup",
                source,
            })?;
        Ok(ThreadInjection {
            remote: Remote::new(t, site, orig_regs),
            orig_regs,
            orig_mask,
            cured: false,
        })
    }

    /// Puts the thread's registers and signal mask back.
    pub fn cure(mut self) -> Result<(), RemoteError> {
        self.cure_inner()
    }

    fn cure_inner(&mut self) -> Result<(), RemoteError> {
        self.cured = true;
        let t = self.remote.tracee();
        let pt = |source| RemoteError::Ptrace {
            what: "restoring a thread after injection",
            source,
        };
        t.set_regs(&self.orig_regs).map_err(pt)?;
        t.set_sigmask(self.orig_mask).map_err(pt)
    }
}

impl Drop for ThreadInjection<'_> {
    fn drop(&mut self) {
        if !self.cured {
            if let Err(e) = self.cure_inner() {
                tracing::error!(
                    "Could not restore thread {} after injection: {e}",
                    self.remote.tracee().tid
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_code_traps_after_each_call_and_at_the_end() {
        let calls = [
            Call {
                what: "getpid",
                nr: libc::SYS_getpid,
                a: [0; 6],
            },
            Call {
                what: "close",
                nr: libc::SYS_close,
                a: [7, 0, 0, 0, 0, 0],
            },
        ];
        let (code, traps) = batch_code(&calls, Some(0x1000));
        assert_eq!(traps.len(), 2);
        assert_eq!(code.last(), Some(&0xcc));
        assert_eq!(*traps.last().unwrap(), code.len() - 1);
        for &t in &traps {
            assert_eq!(code[t - 1], 0xcc, "a failure traps right after its call");
        }
        // getpid: xor of every argument register, syscall, the store to 0x1000.
        assert_eq!(&code[..2], &[0x48, 0xb8]);
        assert!(code
            .windows(10)
            .any(|w| w[..2] == [0x48, 0xa3] && w[2..] == 0x1000u64.to_le_bytes()));
        assert!(code
            .windows(10)
            .any(|w| w[..2] == [0x48, 0xa3] && w[2..] == 0x1008u64.to_le_bytes()));
    }

    /// A real process runs batches: results come back in order, a failure names its call
    /// and stops the batch there, and the cure puts the code page back as it was.
    #[test]
    fn batches_run_in_a_seized_process_and_stop_at_the_first_failure() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("SKIP: needs root for ptrace");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t = Tracee::seize(pid, 0).unwrap();
        loop {
            if let Stop::Stopped { event, .. } = t.wait().unwrap() {
                if event == libc::PTRACE_EVENT_STOP {
                    break;
                }
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let site = maps
            .lines()
            .find(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
            .and_then(|l| l.split('-').next())
            .map(|a| u64::from_str_radix(a, 16).unwrap())
            .unwrap();
        let mut before = vec![0u8; 4096];
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut before, site).unwrap();
        let regs = t.regs().unwrap();
        let mut p = Parasite::inject(&t, site, regs).unwrap();
        p.scratch(64 * 1024).unwrap();
        let mut b = Batch::new();
        let Ok(_) = b.sys("getpid", libc::SYS_getpid, [0; 6]);
        let Ok(_) = b.sys("getppid", libc::SYS_getppid, [0; 6]);
        let got = p.run_batch(&b).unwrap();
        assert_eq!(got[0], u64::try_from(pid).unwrap());
        assert_eq!(got[1], u64::from(std::process::id()));
        assert_eq!(p.remote.stops, 2, "the scratch mmap and one batch");
        // The second call fails: the third (a mapping at a fixed free address) never runs.
        let probe = 0x3a00_0000_0000u64;
        let mut b = Batch::new();
        let Ok(_) = b.sys("getpid", libc::SYS_getpid, [0; 6]);
        let Ok(()) = b.named("close (bad fd)").close(-1);
        let Ok(_) = b.mmap(
            probe,
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            None,
            0,
        );
        let e = p.run_batch(&b).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBADF));
        assert!(e.to_string().contains("close (bad fd)"), "{e}");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            !maps.contains("3a0000000000-"),
            "the call after the failure ran:\n{maps}"
        );
        p.cure().unwrap();
        let mut after = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut after, site).unwrap();
        assert!(before == after, "the code page differs after the cure");
        assert_eq!(t.regs().unwrap().rip, regs.rip);
        t.detach(0).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
