//! eventfd: its counter, semaphore mode and file flags (files.img EVENTFD records).
//!
//! Dump reads `eventfd-count` and `eventfd-semaphore` from fdinfo; restore creates an eventfd
//! in cryo and writes the counter back into it.

use std::os::fd::{AsFd, OwnedFd};

use super::error::{task_error_from, TaskError};
use super::files::{obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::image::pb;
use crate::sys::fd as sysfd;

/// eventfd file descriptors.
pub struct EventFd;

/// Why an eventfd could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum EventFdError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("process {pid}: fd {fd}: eventfd-count '{text}' in fdinfo is not a hex number")]
    Count { pid: i32, fd: i32, text: String },
}
task_error_from!(EventFdError);

impl FdKind for EventFd {
    const NAME: &'static str = "eventfd";
    const TYPE: pb::FdTypes = pb::FdTypes::Eventfd;
    type Error = EventFdError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[eventfd]"
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, EventFdError> {
        let count = fd.field("eventfd-count")?;
        let counter = u64::from_str_radix(count.trim(), 16).map_err(|_| EventFdError::Count {
            pid: fd.pid,
            fd: fd.fd,
            text: count.clone(),
        })?;
        let sem = fd.field("eventfd-semaphore").ok().as_deref() == Some("1");
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Eventfd as i32,
            id,
            efd: Some(pb::EventfdFileEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                counter,
                cryo_semaphore: sem.then_some(true),
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, EventFdError> {
        let ef = e
            .efd
            .as_ref()
            .ok_or_else(|| super::files::missing(e.id, "eventfd"))?;
        let err = |what: &str| obj_err(e.id, format!("eventfd: {what}"));
        let mut flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
        if ef.cryo_semaphore == Some(true) {
            flags |= libc::EFD_SEMAPHORE;
        }
        let fd = sysfd::eventfd(flags).map_err(err("eventfd2"))?;
        if ef.counter != 0 {
            sysfd::write(fd.as_fd(), &ef.counter.to_ne_bytes())
                .map_err(err(&format!("set the counter to {}", ef.counter)))?;
        }
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (ef.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}
