//! timerfd: clock, remaining time, interval, unread expirations and file flags (files.img
//! TIMERFD records).
//!
//! fdinfo gives the remaining time relative to now, so restore arms the new timer relative
//! to the moment of restore (the frozen time does not count, as for POSIX timers), then sets
//! the expirations that were not read yet with `TFD_IOC_SET_TICKS`.

use std::os::fd::{AsFd, OwnedFd};

use super::error::{task_error_from, TaskError};
use super::files::{obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::image::pb;
use crate::sys::fd as sysfd;

/// timerfd file descriptors.
pub struct TimerFd;

/// Why a timerfd could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum TimerFdError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("process {pid}: fd {fd}: cannot parse '{field}' in the timerfd's fdinfo")]
    Fdinfo {
        pid: i32,
        fd: i32,
        field: &'static str,
    },
}
task_error_from!(TimerFdError);

/// Parses "(sec, nsec)".
fn pair(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

impl FdKind for TimerFd {
    const NAME: &'static str = "timerfd";
    const TYPE: pb::FdTypes = pb::FdTypes::Timerfd;
    type Error = TimerFdError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[timerfd]"
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, TimerFdError> {
        let bad = |field: &'static str| TimerFdError::Fdinfo {
            pid: fd.pid,
            fd: fd.fd,
            field,
        };
        let clockid = fd.field("clockid")?.parse().map_err(|_| bad("clockid"))?;
        let ticks = fd.field("ticks")?.parse().map_err(|_| bad("ticks"))?;
        let sf = fd.field("settime flags")?;
        let settime_flags = u32::from_str_radix(&sf, 8).map_err(|_| bad("settime flags"))?;
        let (vsec, vnsec) = pair(&fd.field("it_value")?).ok_or_else(|| bad("it_value"))?;
        let (isec, insec) = pair(&fd.field("it_interval")?).ok_or_else(|| bad("it_interval"))?;
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Timerfd as i32,
            id,
            tfd: Some(pb::TimerfdEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                clockid,
                ticks,
                settime_flags,
                vsec,
                vnsec,
                isec,
                insec,
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, TimerFdError> {
        let t = e
            .tfd
            .as_ref()
            .ok_or_else(|| super::files::missing(e.id, "timerfd"))?;
        let err = |what: &str| obj_err(e.id, format!("timerfd: {what}"));
        let fd = sysfd::timerfd_create(crate::num::c_int(t.clockid), libc::TFD_CLOEXEC)
            .map_err(err(&format!("timerfd_create (clock {})", t.clockid)))?;
        if let Some(value) = arm_value(t) {
            // Relative: the saved value is the time that was left.
            sysfd::timerfd_settime(fd.as_fd(), 0, value, (t.isec, t.insec))
                .map_err(err("timerfd_settime"))?;
        }
        if t.ticks != 0 {
            sysfd::timerfd_set_ticks(fd.as_fd(), t.ticks).map_err(err("TFD_IOC_SET_TICKS"))?;
        }
        sysfd::set_fl(fd.as_fd(), t.flags & SETFL_MASK).map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}

/// The value a restored timer is armed with (None: left disarmed): the time that was left.
/// A periodic timer that had expired without being read shows 0 left in fdinfo (the kernel
/// moves it on only when it is read); it is armed one interval away, or a value of 0 would
/// disarm it for good.
fn arm_value(t: &pb::TimerfdEntry) -> Option<(u64, u64)> {
    if t.vsec != 0 || t.vnsec != 0 {
        Some((t.vsec, t.vnsec))
    } else if t.isec != 0 || t.insec != 0 {
        Some((t.isec, t.insec))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::image::pb;

    #[test]
    fn an_expired_periodic_timer_is_armed_one_interval_away() {
        let t = |vsec, vnsec, isec, insec| pb::TimerfdEntry {
            vsec,
            vnsec,
            isec,
            insec,
            ..Default::default()
        };
        assert_eq!(super::arm_value(&t(0, 48, 0, 50)), Some((0, 48)));
        assert_eq!(
            super::arm_value(&t(0, 0, 0, 50_000_000)),
            Some((0, 50_000_000))
        );
        assert_eq!(super::arm_value(&t(0, 0, 0, 0)), None);
    }

    #[test]
    fn parses_fdinfo_pairs() {
        assert_eq!(super::pair(" (1, 999884)"), Some((1, 999884)));
        assert_eq!(super::pair("(0, 0)"), Some((0, 0)));
        assert_eq!(super::pair("0, 0"), None);
    }
}
