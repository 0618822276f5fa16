//! Interval timers (ITIMER_REAL/VIRTUAL/PROF). Read inside the task with `getitimer`; armed
//! again as the very last step of restore, so the remaining time is as close as possible to
//! what it was when the task was frozen. (POSIX timers come with issue #3.)

use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::dump::DumpError;
use crate::image::pb;
use crate::restore::RestoreError;

/// Interval timers of a process.
pub struct Timers;

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Kind for Timers {
    const NAME: &'static str = "timers";

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), DumpError> {
        let pid = cx.pid;
        if !std::fs::read_to_string(format!("/proc/{pid}/timers"))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            return Err(DumpError::Unsupported {
                pid,
                object: "POSIX timers".into(),
                what: "POSIX timers (timer_create) are not supported yet".into(),
                hint: "planned with issue #3".into(),
            });
        }
        let p = cx.remote()?;
        let buf = p
            .scratch(64 * 1024)
            .map_err(|e| DumpError::remote(pid, e))?;
        let mut entries = Vec::new();
        for which in 0..3u64 {
            p.remote
                .call("getitimer", libc::SYS_getitimer, [which, buf, 0, 0, 0, 0])
                .map_err(|e| DumpError::remote(pid, e))?;
            let mut raw = [0u8; 32];
            crate::sys::mem::vm_read(pid, &mut raw, &[(buf, 32)]).map_err(|source| {
                DumpError::Memory {
                    pid,
                    addr: buf,
                    what: "reading itimers",
                    source,
                }
            })?;
            // struct itimerval { interval {sec, usec}, value {sec, usec} }
            entries.push(pb::ItimerEntry {
                isec: u64_at(&raw, 0),
                iusec: u64_at(&raw, 8),
                vsec: u64_at(&raw, 16),
                vusec: u64_at(&raw, 24),
            });
        }
        let mut it = entries.into_iter();
        img.tc().timers = Some(pb::TaskTimersEntry {
            real: it.next().unwrap_or_default(),
            virt: it.next().unwrap_or_default(),
            prof: it.next().unwrap_or_default(),
            posix: Vec::new(),
        });
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RestoreError> {
        let Some(t) = img.core.tc.as_ref().and_then(|t| t.timers.as_ref()) else {
            return Ok(());
        };
        for (which, e) in [&t.real, &t.virt, &t.prof].into_iter().enumerate() {
            if e.vsec == 0 && e.vusec == 0 {
                continue; // disarmed (the puppet has no timers: fork does not inherit them)
            }
            let mut raw = Vec::with_capacity(32);
            for v in [e.isec, e.iusec, e.vsec, e.vusec] {
                raw.extend_from_slice(&v.to_ne_bytes());
            }
            let a = cx.put(512, &raw)?;
            cx.sys(
                "setitimer",
                libc::SYS_setitimer,
                [which as u64, a, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }
}
