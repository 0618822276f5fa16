//! Resource limits (`prlimit64`), read and set from outside the task.

use super::error::{task_error_from, Failure, TaskError};
use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::image::pb;
use crate::sys::proc::{get_rlimit, set_rlimit};

/// Why resource limits could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum RlimitsError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot set resource limit RLIMIT_{name} to {cur}/{max}")]
    Limit {
        name: &'static str,
        cur: u64,
        max: u64,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(RlimitsError, no_failure);

impl Failure for RlimitsError {
    fn hint(&self) -> Option<String> {
        match self {
            RlimitsError::Task(e) => e.hint(),
            RlimitsError::Limit { .. } => Some(
                "cryo cannot raise a hard limit without CAP_SYS_RESOURCE: run it with limits at least as high (ulimit -H)".into(),
            ),
        }
    }
}

/// Number of RLIMIT_* resources.
const RLIM_NLIMITS: u32 = 16;
const NAMES: [&str; 16] = [
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// Resource limits of a process.
pub struct Rlimits;

impl Kind for Rlimits {
    const NAME: &'static str = "rlimits";
    type Error = RlimitsError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), RlimitsError> {
        // From /proc: prlimit64 on a process of another user needs CAP_SYS_RESOURCE.
        let v = crate::procfs::limits(cx.pid)?
            .into_iter()
            .take(RLIM_NLIMITS as usize)
            .map(|(cur, max)| pb::RlimitEntry { cur, max })
            .collect();
        img.tc().rlimits = Some(pb::TaskRlimitsEntry { rlimits: v });
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RlimitsError> {
        let Some(rl) = img.core.tc.as_ref().and_then(|t| t.rlimits.as_ref()) else {
            return Ok(());
        };
        for (r, e) in rl.rlimits.iter().enumerate().take(RLIM_NLIMITS as usize) {
            let now = get_rlimit(cx.pid, r as u32).map_err(|source| TaskError::Ptrace {
                pid: cx.pid,
                what: "prlimit64",
                source,
            })?;
            if now == (e.cur, e.max) {
                continue;
            }
            set_rlimit(cx.pid, r as u32, e.cur, e.max).map_err(|source| RlimitsError::Limit {
                name: NAMES[r],
                cur: e.cur,
                max: e.max,
                source,
            })?;
        }
        Ok(())
    }
}
