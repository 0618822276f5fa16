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
}

impl<'t> Remote<'t> {
    /// `base` is the register template (segment registers etc. are taken from it).
    pub fn new(t: &'t Tracee, site: u64, base: Regs) -> Self {
        Remote {
            t,
            site,
            base,
            calls: 0,
            last_child: None,
        }
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
        r.rax = nr as u64;
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
        loop {
            match self.t.wait().map_err(pt)? {
                Stop::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => break,
                // A fork/clone event: note the new task; a group-stop / interrupt
                // notification: just continue to the trap.
                Stop::Stopped { event, .. } if event != 0 => {
                    if matches!(
                        event,
                        libc::PTRACE_EVENT_FORK
                            | libc::PTRACE_EVENT_CLONE
                            | libc::PTRACE_EVENT_VFORK
                    ) {
                        self.last_child = Some(self.t.event_msg().map_err(pt)? as i32);
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
        let r = self.t.regs().map_err(pt)?;
        Ok(r.rax as i64)
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
                source: io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    /// Runs a syscall and leaves the tracee stopped at its exit (for a final `munmap` of the
    /// very page holding the syscall instruction: there is no `int3` to return to).
    pub fn call_to_exit(
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
        let r = self.t.regs().map_err(pt)?.rax as i64;
        if (-4095..0).contains(&r) {
            return Err(RemoteError::Errno {
                what,
                source: io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }
}

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
            cured: false,
        })
    }

    /// Maps (once) and returns a private read-write scratch area of `len` bytes in the target.
    pub fn scratch(&mut self, len: u64) -> Result<u64, RemoteError> {
        if let Some((a, l)) = self.scratch {
            if l >= len {
                return Ok(a);
            }
        }
        let addr = self.remote.call(
            "mmap (scratch area)",
            libc::SYS_mmap,
            [
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if let Some((a, l)) = self.scratch.replace((addr, len)) {
            self.remote.call(
                "munmap (scratch area)",
                libc::SYS_munmap,
                [a, l, 0, 0, 0, 0],
            )?;
        }
        Ok(addr)
    }

    /// Puts the target back exactly as it was: scratch unmapped, code word, registers and
    /// signal mask restored.
    pub fn cure(mut self) -> Result<(), RemoteError> {
        self.cure_inner()
    }

    fn cure_inner(&mut self) -> Result<(), RemoteError> {
        self.cured = true;
        let tid = self.remote.tracee().tid;
        let mut first_err = None;
        if let Some((a, l)) = self.scratch.take() {
            if let Err(e) = self.remote.call(
                "munmap (scratch area)",
                libc::SYS_munmap,
                [a, l, 0, 0, 0, 0],
            ) {
                first_err.get_or_insert(e);
            }
        }
        let pt = |source| RemoteError::Ptrace {
            what: "restoring the target after injection",
            source,
        };
        let t2 = Tracee { tid };
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
