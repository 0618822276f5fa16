//! epoll: the watch list (target fd, events, user data) and file flags (files.img EVENTPOLL
//! records with their `tfd` entries).
//!
//! An epoll item is keyed by the watched file *and the fd number in the task that added it*,
//! so restore creates the epoll instance in cryo but fills the list from inside the puppet,
//! with `epoll_ctl` on the restored fd numbers, once every fd of the task exists.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::{DumpCx, RestoreCx};
use crate::image::pb;
use crate::sys::fd as sysfd;

/// epoll instances.
pub struct Epoll;

/// Why an epoll could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum EpollError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("process {pid}: fd {fd}: cannot parse the epoll fdinfo line '{line}'")]
    Fdinfo { pid: i32, fd: i32, line: String },
}
task_error_from!(EpollError);

/// Restore: the epolls whose watch list was already filled (by the first task that has
/// them).
#[derive(Default)]
struct Filled(HashSet<u32>);

/// Parses one "tfd: 5 events: 19 data: 5 pos:0 ino:1c52 sdev:e" line of an epoll fdinfo.
fn parse_tfd(line: &str) -> Option<pb::EventpollTfdEntry> {
    let mut t = pb::EventpollTfdEntry::default();
    let mut it = line.split_whitespace().peekable();
    while let Some(tok) = it.next() {
        let (key, val) = match tok.split_once(':') {
            Some((k, v)) if !v.is_empty() => (k, v.to_string()),
            Some((k, _)) => (k, it.next()?.to_string()),
            None => continue,
        };
        match key {
            "tfd" => t.tfd = val.parse().ok()?,
            "events" => t.events = u32::from_str_radix(&val, 16).ok()?,
            "data" => t.data = u64::from_str_radix(&val, 16).ok()?,
            "pos" => t.pos = Some(val.parse().ok()?),
            "ino" => t.inode = Some(u64::from_str_radix(&val, 16).ok()?),
            "sdev" => t.dev = Some(u32::from_str_radix(&val, 16).ok()?),
            _ => {}
        }
    }
    Some(t)
}

impl FdKind for Epoll {
    const NAME: &'static str = "epoll";
    const TYPE: pb::FdTypes = pb::FdTypes::Eventpoll;
    type Error = EpollError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[eventpoll]"
    }

    fn dump(_cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, EpollError> {
        let mut tfds = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
            let mut t = parse_tfd(line).ok_or_else(|| EpollError::Fdinfo {
                pid: fd.pid,
                fd: fd.fd,
                line: line.to_string(),
            })?;
            t.id = id;
            // The watched file must still be open at that fd number, or restore could not
            // name it. An epoll in flight (passed in a queued message, held by cryo now) is
            // filled from the task receiving it, as CRIU does, unchecked.
            let in_flight = fd.pid == std::process::id() as i32;
            let same = in_flight
                || std::fs::metadata(format!("/proc/{}/fd/{}", fd.pid, t.tfd))
                    .map(|m| Some(m.ino()) == t.inode)
                    .unwrap_or(false);
            if !same {
                return Err(Unsupported::of(
                    fd.pid,
                    format!("fd {} (epoll)", fd.fd),
                    format!(
                        "it watches a file that is no longer open at fd {} (closed or replaced after EPOLL_CTL_ADD)",
                        t.tfd
                    ),
                    "cryo restores epoll watches by fd number; keep the watched fd open",
                )
                .into());
            }
            tfds.push(t);
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Eventpoll as i32,
            id,
            epfd: Some(pb::EventpollFileEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                tfd: tfds,
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, EpollError> {
        let ep = e
            .epfd
            .as_ref()
            .ok_or_else(|| super::files::missing(e.id, "eventpoll"))?;
        let err = |what: &str| obj_err(e.id, format!("epoll: {what}"));
        let fd = sysfd::epoll_create().map_err(err("epoll_create1"))?;
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (ep.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL"))?;
        Ok(fd)
    }

    /// The watch lists name the fds of the task, which all exist now.
    fn after_fds(
        cx: &mut RestoreCx<'_>,
        objs: &mut FdObjects,
        f: &pb::FdinfoEntry,
    ) -> Result<(), EpollError> {
        fill(cx, objs, f)
    }
}

/// Adds the saved watches of the epoll at `f` (already installed in the puppet, like every
/// fd of the task), unless another task sharing it did already.
fn fill(
    cx: &mut RestoreCx<'_>,
    objs: &mut FdObjects,
    f: &pb::FdinfoEntry,
) -> Result<(), EpollError> {
    if !objs.kinds.get::<Filled>().0.insert(f.id) {
        return Ok(());
    }
    let ep = objs
        .entry(f.id)?
        .epfd
        .as_ref()
        .ok_or_else(|| super::files::missing(f.id, "eventpoll"))?;
    for t in &ep.tfd {
        // struct epoll_event is packed on x86_64: u32 events, u64 data.
        let mut ev = [0u8; 12];
        ev[..4].copy_from_slice(&t.events.to_ne_bytes());
        ev[4..].copy_from_slice(&t.data.to_ne_bytes());
        let p = cx.put(0, &ev)?;
        cx.sys(
            "epoll_ctl(EPOLL_CTL_ADD)",
            libc::SYS_epoll_ctl,
            [
                f.fd as u64,
                libc::EPOLL_CTL_ADD as u64,
                t.tfd as u64,
                p,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_an_epoll_fdinfo_line() {
        let t = super::parse_tfd(
            "tfd:        5 events:       19 data:                7  pos:0 ino:1c52 sdev:e",
        )
        .unwrap();
        assert_eq!((t.tfd, t.events, t.data), (5, 0x19, 7));
        assert_eq!((t.pos, t.inode, t.dev), (Some(0), Some(0x1c52), Some(0xe)));
    }
}
