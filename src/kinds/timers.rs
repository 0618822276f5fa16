//! Interval timers (ITIMER_REAL/VIRTUAL/PROF) and POSIX timers (timer_create). Read inside
//! the task (`getitimer`, `timer_gettime`, `timer_getoverrun`; ids, signals and clocks from
//! /proc/PID/timers); created again with their original ids and armed as the very last step
//! of restore, so the remaining time is as close as possible to what it was at the dump. The
//! overrun count is saved but not replayed.

use super::error::{task_error_from, TaskError, Unsupported};
use super::{DumpCx, Kind, RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::sys::remote::{Batch, PR_TIMER_CREATE_RESTORE_IDS};

/// Why timers could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum TimersError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(TimersError);

/// Interval timers of a process.
pub struct Timers;

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// `sigev_notify` values.
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD_ID: u32 = 4;

/// Parses /proc/PID/timers (id, signal/sival_ptr, notify kind/tid, clock) into entries whose
/// times are filled in later from inside the task.
pub fn parse_posix_timers(text: &str) -> Option<Vec<pb::PosixTimerEntry>> {
    let mut out: Vec<pb::PosixTimerEntry> = Vec::new();
    for line in text.lines() {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        match k {
            "ID" => out.push(pb::PosixTimerEntry {
                it_id: v.parse().ok()?,
                ..Default::default()
            }),
            "signal" => {
                let (signo, ptr) = v.split_once('/')?;
                let t = out.last_mut()?;
                t.si_signo = signo.parse().ok()?;
                t.sival_ptr = u64::from_str_radix(ptr, 16).ok()?;
            }
            "notify" => {
                let (kind, who) = v.split_once('/')?;
                let t = out.last_mut()?;
                t.it_sigev_notify = match kind {
                    "signal" => 0,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD_ID,
                    _ => return None,
                };
                // Newer kernels print "signal/tid.N" for SIGEV_THREAD_ID (a flag on top of
                // the notify kind), older ones "thread/tid.N".
                let (whom, tid) = who.split_once('.')?;
                let tid = tid.parse().ok()?;
                if whom == "tid" {
                    t.it_sigev_notify |= SIGEV_THREAD_ID;
                }
                if t.it_sigev_notify & SIGEV_THREAD_ID != 0 {
                    t.notify_thread_id = Some(tid);
                }
            }
            "ClockID" => out.last_mut()?.clock_id = v.parse().ok()?,
            _ => {}
        }
    }
    Some(out)
}

/// Puts a timer's four words (interval sec/sub-sec, value sec/sub-sec: an `itimerval` or
/// an `itimerspec`) into scratch, for `setitimer`/`timer_settime`; returns their address.
fn put_times(cx: &mut RestoreCx<'_>, words: [u64; 4]) -> Result<u64, TimersError> {
    let raw: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(cx.put(512, &raw)?)
}

/// `TIMER_ABSTIME` is not used: `timer_settime` gets the time left.
const TIMER_RELATIVE: i32 = 0;

/// Recreates POSIX timers with their original ids (the kernel's restore mode), then arms
/// them; called last, so their remaining time is as close as possible to the dump's.
fn restore_posix(
    cx: &mut RestoreCx<'_>,
    timers: &[pb::PosixTimerEntry],
) -> Result<(), TimersError> {
    if timers.is_empty() {
        return Ok(());
    }
    cx.prctl(PR_TIMER_CREATE_RESTORE_IDS, [1, 0, 0, 0])
        .map_err(|_| {
        Unsupported::restore(
            "this kernel cannot recreate POSIX timers with given ids (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15+)",
        )
    })?;
    let mut sorted: Vec<&pb::PosixTimerEntry> = timers.iter().collect();
    sorted.sort_by_key(|t| t.it_id);
    for t in &sorted {
        // struct sigevent: sigev_value, sigev_signo, sigev_notify, _tid (64 bytes).
        let mut sev = [0u8; 64];
        sev[0..8].copy_from_slice(&t.sival_ptr.to_ne_bytes());
        sev[8..12].copy_from_slice(&t.si_signo.to_ne_bytes());
        sev[12..16].copy_from_slice(&t.it_sigev_notify.to_ne_bytes());
        sev[16..20].copy_from_slice(&t.notify_thread_id.unwrap_or(0).to_ne_bytes());
        let a = cx.put(4096, &sev)?;
        // Ids and clocks are the kernel's ints, kept as u32 (the kernel checks them).
        let id = cx.put(4160, &t.it_id.to_ne_bytes())?;
        cx.timer_create(t.clock_id.cast_signed(), a, id)?;
    }
    cx.prctl(PR_TIMER_CREATE_RESTORE_IDS, [0; 4])?;
    for t in sorted.iter().filter(|t| t.vsec != 0 || t.vnsec != 0) {
        let a = put_times(cx, [t.isec, t.insec, t.vsec, t.vnsec])?;
        cx.timer_settime(t.it_id.cast_signed(), TIMER_RELATIVE, a, 0)?;
    }
    Ok(())
}

/// The interval timers in the order of `TaskTimersEntry` (real, virtual, prof).
pub const ITIMERS: [i32; 3] = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF];

impl Kind for Timers {
    const NAME: &'static str = "timers";
    type Error = TimersError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), TimersError> {
        let pid = cx.pid;
        let text = crate::procfs::read(pid, "timers")?;
        let mut posix = parse_posix_timers(&text).ok_or_else(|| {
            Unsupported::of(
                pid,
                "POSIX timers",
                "/proc/PID/timers has an unexpected format",
                String::new(),
            )
        })?;
        let buf = cx.scratch()?;
        let mut entries = Vec::new();
        // Read with the task attributes (`misc`) when they ran first.
        let raw = match cx.itimers.take() {
            Some(raw) => raw,
            None => {
                let mut b = Batch::new();
                for (i, w) in (0u64..).zip(ITIMERS) {
                    b.getitimer(w, buf + 32 * i)?;
                }
                cx.batch(&b)?;
                let mut raw = [0u8; 96];
                crate::sys::mem::vm_read(pid, &mut raw, &[(buf, 96)]).map_err(|source| {
                    TaskError::Memory {
                        pid,
                        addr: buf,
                        what: "reading itimers",
                        source,
                    }
                })?;
                raw
            }
        };
        for o in [0, 32, 64] {
            // struct itimerval { interval {sec, usec}, value {sec, usec} }
            entries.push(pb::ItimerEntry {
                isec: u64_at(&raw, o),
                iusec: u64_at(&raw, o + 8),
                vsec: u64_at(&raw, o + 16),
                vusec: u64_at(&raw, o + 24),
            });
        }
        for t in &mut posix {
            // struct itimerspec { interval {sec, nsec}, value {sec, nsec} }
            cx.timer_gettime(t.it_id.cast_signed(), buf)?;
            let mut raw = [0u8; 32];
            crate::sys::mem::vm_read(pid, &mut raw, &[(buf, 32)]).map_err(|source| {
                TaskError::Memory {
                    pid,
                    addr: buf,
                    what: "reading a POSIX timer",
                    source,
                }
            })?;
            (t.isec, t.insec, t.vsec, t.vnsec) = (
                u64_at(&raw, 0),
                u64_at(&raw, 8),
                u64_at(&raw, 16),
                u64_at(&raw, 24),
            );
            // An int the kernel caps at DELAYTIMER_MAX.
            t.overrun =
                u32::try_from(cx.timer_getoverrun(t.it_id.cast_signed())?).unwrap_or(u32::MAX);
        }
        let mut it = entries.into_iter();
        img.tc().timers = Some(pb::TaskTimersEntry {
            real: it.next().unwrap_or_default(),
            virt: it.next().unwrap_or_default(),
            prof: it.next().unwrap_or_default(),
            posix,
        });
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), TimersError> {
        let Some(t) = img.core.tc.as_ref().and_then(|t| t.timers.as_ref()) else {
            return Ok(());
        };
        restore_posix(cx, &t.posix)?;
        for (which, e) in [
            (libc::ITIMER_REAL, &t.real),
            (libc::ITIMER_VIRTUAL, &t.virt),
            (libc::ITIMER_PROF, &t.prof),
        ] {
            if e.vsec == 0 && e.vusec == 0 && e.isec == 0 && e.iusec == 0 {
                continue; // disarmed (the puppet has no timers: fork does not inherit them)
            }
            // A value of 0 with an interval: the timer fired while the task was stopped and
            // its signal is pending (saved with the signals); the kernel would arm it again
            // when the signal is taken, but setitimer keeps the interval only with a value.
            // As CRIU: armed to fire at once (its signal merges with the pending one), then
            // every interval (zdtm timers: the real timer never ticked again).
            let vusec = if e.vsec == 0 && e.vusec == 0 {
                1
            } else {
                e.vusec
            };
            let a = put_times(cx, [e.isec, e.iusec, e.vsec, vusec])?;
            cx.setitimer(which, a, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let t = "ID: 0\nsignal: 34/0000000000001234\nnotify: signal/pid.77\nClockID: 1\n\
                 ID: 1\nsignal: 14/0000000000000000\nnotify: thread/tid.78\nClockID: 0\n\
                 ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.77\nClockID: 0\n\
                 ID: 3\nsignal: 32/0000000000000000\nnotify: signal/tid.79\nClockID: 1\n";
        let v = parse_posix_timers(t).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(
            (v[0].it_id, v[0].si_signo, v[0].sival_ptr, v[0].clock_id),
            (0, 34, 0x1234, 1)
        );
        assert_eq!(
            (v[1].it_sigev_notify, v[1].notify_thread_id),
            (SIGEV_THREAD_ID, Some(78))
        );
        assert_eq!(v[2].it_sigev_notify, SIGEV_NONE);
        // Linux 6.13+: SIGEV_THREAD_ID shown as a flag of the kind.
        assert_eq!(
            (v[3].it_sigev_notify, v[3].notify_thread_id),
            (SIGEV_THREAD_ID, Some(79))
        );
        assert!(parse_posix_timers("garbage").is_none());
    }
}
