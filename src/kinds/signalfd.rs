//! signalfd: the signal mask it reads and its file flags (files.img SIGNALFD records).
//!
//! A signalfd delivers the signals of whichever task reads it, so cryo can create it in its
//! own process and hand it to the puppet unchanged.

use std::os::fd::{AsFd, OwnedFd};

use super::files::{obj_err, FdKind, FdObjects, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::dump::DumpError;
use crate::image::pb;
use crate::restore::RestoreError;
use crate::sys::fd as sysfd;

/// signalfd file descriptors.
pub struct SignalFd;

impl FdKind for SignalFd {
    fn dump(_cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, DumpError> {
        let m = fd.field("sigmask")?;
        let sigmask = u64::from_str_radix(&m, 16).map_err(|_| {
            fd.err(
                format!("sigmask '{m}'"),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
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

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, RestoreError> {
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
