//! Signal state: dispositions (sigactions), the blocked mask, pending signals (process-wide
//! and per-thread, with full siginfo) and the alternate signal stack.
//!
//! Dispositions and the alternate stack can only be read from inside the task, so dump runs
//! `rt_sigaction`/`sigaltstack` there, in the stop of the task attributes' queries (`misc`):
//! `Signals::dump` holds them, `collect_actions` reads what they wrote. Pending signals are peeked with `PTRACE_PEEKSIGINFO`
//! (not dequeued) and re-queued on restore from inside the task itself, which the kernel
//! allows for any si_code.

use super::error::{task_error_from, TaskError};
use super::{DumpCx, Kind, RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::sys::remote::Batch;

/// Why signal state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(SignalsError);

/// Signal dispositions, mask, queues and alternate stack.
pub struct Signals;

/// Size of the kernel's `struct sigaction` on x86_64 (handler, flags, restorer, mask).
const KSA: usize = 32;
const SS_DISABLE: u32 = 2;
const SS_ONSTACK: u32 = 1;

fn dumpable_sig(sig: i32) -> bool {
    sig != libc::SIGKILL && sig != libc::SIGSTOP
}

/// Where signal `sig` (1..=64)'s sigaction lies in a table of 64.
fn slot(sig: i32) -> usize {
    (sig.unsigned_abs() as usize - 1) * KSA
}

/// Signal `sig`'s bit in a 64-bit mask.
fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Kind for Signals {
    const NAME: &'static str = "signals";
    type Error = SignalsError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), SignalsError> {
        let pid = cx.pid;
        let pt = |what, source| TaskError::Ptrace { pid, what, source };
        let shared = cx
            .tracee
            .pending_signals(true)
            .map_err(|e| pt("PTRACE_PEEKSIGINFO", e))?;
        let private = cx
            .tracee
            .pending_signals(false)
            .map_err(|e| pt("PTRACE_PEEKSIGINFO", e))?;
        let q = |v: Vec<[u8; 128]>| {
            (!v.is_empty()).then(|| pb::SignalQueueEntry {
                signals: v
                    .into_iter()
                    .map(|s| pb::SiginfoEntry {
                        siginfo: s.to_vec(),
                    })
                    .collect(),
            })
        };
        img.tc().signals_s = q(shared);
        img.thread().signals_p = q(private);
        img.tc().blk_sigset = cx.sigmask;

        // Only signals with a handler or ignored (and SIGCHLD, whose SA_NOCLDWAIT and
        // SA_NOCLDSTOP matter even with the default action) can differ from the default:
        // the others read as zeroes from the fresh scratch area. Saves ~60 injected calls.
        let asked = asked(cx);
        let buf = cx.scratch()?;
        let mut b = Batch::new();
        for sig in 1..=64 {
            if dumpable_sig(sig) && asked & bit(sig) != 0 {
                b.rt_sigaction(sig, 0, buf + slot(sig) as u64)?;
            }
        }
        let ss_addr = buf + slot(65) as u64;
        b.sigaltstack(0, ss_addr)?;
        // Held for the stop of the task attributes (`misc`), the next batch; read by
        // `collect_actions` after it. One stop fewer per process.
        cx.batch_later(&b);
        Ok(())
    }
    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), SignalsError> {
        let tc =
            img.core.tc.as_ref().ok_or_else(|| {
                TaskError::BadImage(format!("core-{}.img has no task core", img.pid))
            })?;
        // The puppet inherited cryo's own dispositions; whatever differs is set.
        let mut raw = vec![0u8; 64 * KSA];
        let mut sigs = (1..=64).filter(|s| dumpable_sig(*s));
        for sa in &tc.sigactions {
            let Some(sig) = sigs.next() else { break };
            let o = slot(sig);
            raw[o..o + 8].copy_from_slice(&sa.sigaction.to_ne_bytes());
            raw[o + 8..o + 16].copy_from_slice(&sa.flags.to_ne_bytes());
            raw[o + 16..o + 24].copy_from_slice(&sa.restorer.to_ne_bytes());
            raw[o + 24..o + 32].copy_from_slice(&sa.mask.to_ne_bytes());
        }
        let base = cx.put(4096, &raw)?;
        // Only dispositions that differ from what the puppet inherited from cryo.
        let inherited = crate::sys::proc::own_sigactions();
        let differs = |sig: i32| {
            let o = slot(sig);
            let want: Vec<u64> = (0..4).map(|w| u64_at(&raw, o + 8 * w)).collect();
            want[..] != inherited[o / KSA][..]
        };
        let mut b = Batch::new();
        for sig in (1..=64).filter(|s| dumpable_sig(*s) && differs(*s)) {
            b.rt_sigaction(sig, base + slot(sig) as u64, 0)?;
        }
        // Alternate stack: always set (the puppet inherited cryo's).
        let sas = img.core.thread_core.as_ref().and_then(|t| t.sas);
        let (sp, size, flags) = match sas {
            Some(s) if s.ss_flags & SS_DISABLE == 0 => {
                (s.ss_sp, s.ss_size, s.ss_flags & !SS_ONSTACK)
            }
            _ => (0, 0, SS_DISABLE),
        };
        let mut ss = Vec::with_capacity(24);
        ss.extend_from_slice(&sp.to_ne_bytes());
        ss.extend_from_slice(&u64::from(flags).to_ne_bytes());
        ss.extend_from_slice(&size.to_ne_bytes());
        let a = cx.put(512, &ss)?;
        b.sigaltstack(a, 0)?;
        // With the next batch (the task attributes'); a pending signal queued below runs it
        // first.
        cx.batch_later(&b)?;
        // Pending signals, queued from inside the task (all signals are blocked there), so
        // named by its PID in its own namespace.
        let pid = img.local_pid();
        let queue =
            |q: Option<&pb::SignalQueueEntry>| q.map(|q| q.signals.clone()).unwrap_or_default();
        for (shared, q) in [
            (true, queue(tc.signals_s.as_ref())),
            (
                false,
                queue(
                    img.core
                        .thread_core
                        .as_ref()
                        .and_then(|t| t.signals_p.as_ref()),
                ),
            ),
        ] {
            for s in q {
                if s.siginfo.len() != 128 {
                    return Err(TaskError::BadImage(
                        "a pending signal's siginfo is not 128 bytes".into(),
                    )
                    .into());
                }
                let signo = i32::from_ne_bytes(s.siginfo[0..4].try_into().expect("4 bytes"));
                let a = cx.put(512, &s.siginfo)?;
                if shared {
                    cx.rt_sigqueueinfo(pid, signo, a)?;
                } else {
                    cx.rt_tgsigqueueinfo(pid, pid, signo, a)?;
                }
            }
        }
        Ok(())
    }
}

/// The signals whose disposition is asked from the task (`Signals::dump`).
fn asked(cx: &DumpCx<'_>) -> u64 {
    cx.status.sig_cgt | cx.status.sig_ign | (1 << (libc::SIGCHLD - 1))
}

/// The second half of `Signals::dump`: the dispositions and alternate stack its held
/// queries wrote into scratch (running them first if no stop took them yet).
pub fn collect_actions(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), SignalsError> {
    cx.flush_held()?;
    let pid = cx.pid;
    let asked = asked(cx);
    let buf = cx.scratch()?;
    let mut raw = vec![0u8; 64 * KSA + 24];
    let n = raw.len();
    crate::sys::mem::vm_read(pid, &mut raw, &[(buf, n)]).map_err(|source| TaskError::Memory {
        pid,
        addr: buf,
        what: "reading sigactions",
        source,
    })?;
    let mut acts = Vec::new();
    for sig in 1..=64 {
        if dumpable_sig(sig) {
            let o = slot(sig);
            if asked & bit(sig) == 0 {
                acts.push(pb::SaEntry {
                    compat_sigaction: Some(false),
                    ..Default::default()
                });
                continue;
            }
            acts.push(pb::SaEntry {
                sigaction: u64_at(&raw, o),
                flags: u64_at(&raw, o + 8),
                restorer: u64_at(&raw, o + 16),
                mask: u64_at(&raw, o + 24),
                compat_sigaction: Some(false),
                mask_extended: None,
            });
        }
    }
    img.tc().sigactions = acts;
    let o = 64 * KSA;
    img.thread().sas = Some(pb::ThreadSasEntry {
        ss_sp: u64_at(&raw, o),
        ss_flags: u32::from_ne_bytes(raw[o + 8..o + 12].try_into().expect("4 bytes")),
        ss_size: u64_at(&raw, o + 16),
    });
    Ok(())
}
