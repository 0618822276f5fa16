//! signalfd: the signal mask it reads and its file flags (files.img SIGNALFD records).
//!
//! A signalfd delivers the signals of whichever task reads it, so cryo can create it in its
//! own process and hand it to the puppet unchanged.

use std::os::fd::{AsFd, OwnedFd};

use super::error::{task_error_from, TaskError};
use super::files::{obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::image::pb;
use crate::sys::fd as sysfd;

/// signalfd file descriptors.
pub struct SignalFd;

/// Why a signalfd could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum SignalFdError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("process {pid}: fd {fd}: sigmask '{text}' in fdinfo is not a hex number")]
    Mask { pid: i32, fd: i32, text: String },
}
task_error_from!(SignalFdError);

impl FdKind for SignalFd {
    const NAME: &'static str = "signalfd";
    const TYPE: pb::FdTypes = pb::FdTypes::Signalfd;
    type Error = SignalFdError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[signalfd]"
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, SignalFdError> {
        let m = fd.field("sigmask")?;
        let sigmask = u64::from_str_radix(&m, 16).map_err(|_| SignalFdError::Mask {
            pid: fd.pid,
            fd: fd.fd,
            text: m.clone(),
        })?;
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Signalfd as i32,
            id,
            sgfd: Some(pb::SignalfdEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                sigmask,
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, SignalFdError> {
        let sf = e
            .sgfd
            .as_ref()
            .ok_or_else(|| super::files::missing(e.id, "signalfd"))?;
        let err = |what: &str| obj_err(e.id, format!("signalfd: {what}"));
        let fd = sysfd::signalfd(sf.sigmask, libc::SFD_CLOEXEC).map_err(err("signalfd4"))?;
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (sf.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}
