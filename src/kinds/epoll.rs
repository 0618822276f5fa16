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
use super::{DumpCx, RestoreCx, Syscalls};
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
        let mut tfds: Vec<pb::EventpollTfdEntry> = Vec::new();
        // The fd numbers as registered (`tfds` gets the numbers restore will use).
        let mut registered: Vec<u32> = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("tfd:")) {
            let mut t = parse_tfd(line).ok_or_else(|| EpollError::Fdinfo {
                pid: fd.pid,
                fd: fd.fd,
                line: line.to_string(),
            })?;
            t.id = id;
            // An epoll in flight (passed in a queued message, held by cryo now) is filled from
            // the task receiving it, as CRIU does, unchecked.
            if fd.pid != std::process::id().cast_signed() {
                // The item's place among those registered with the same fd number (fdinfo
                // lists them in the epoll's order, which KCMP_EPOLL_TFD counts in).
                let toff = registered.iter().filter(|&&o| o == t.tfd).count();
                registered.push(t.tfd);
                t.tfd = target_fd(fd, &t, u32::try_from(toff).unwrap_or(u32::MAX))?;
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
        sysfd::set_fl(fd.as_fd(), ep.flags & SETFL_MASK).map_err(err("F_SETFL"))?;
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

/// The fd number at which restore can name the file an epoll item watches: the number it was
/// registered with, if that fd is still the same file, else another fd of the task on that
/// file (the registered one was closed or replaced: CRIU finds it the same way, with
/// `KCMP_EPOLL_TFD`). A watched file the task no longer has open at all is refused.
fn target_fd(fd: &TargetFd<'_>, t: &pb::EventpollTfdEntry, toff: u32) -> Result<u32, EpollError> {
    let same = |n: i32| -> bool {
        let ino = std::fs::metadata(format!("/proc/{}/fd/{n}", fd.pid)).map(|m| m.ino());
        ino.is_ok_and(|i| Some(i) == t.inode)
            && crate::sys::proc::kcmp_epoll_tfd(fd.pid, n, fd.fd, t.tfd, toff).unwrap_or(false)
    };
    if i32::try_from(t.tfd).is_ok_and(same) {
        return Ok(t.tfd);
    }
    // KCMP_EPOLL_TFD is missing (before Linux 4.13): as before, only the registered number.
    if crate::sys::proc::kcmp_epoll_tfd(fd.pid, fd.fd, fd.fd, t.tfd, toff)
        .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
    {
        let ino = std::fs::metadata(format!("/proc/{}/fd/{}", fd.pid, t.tfd)).map(|m| m.ino());
        if ino.is_ok_and(|i| Some(i) == t.inode) {
            return Ok(t.tfd);
        }
    }
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", fd.pid))
        .map_err(|e| fd.err("listing /proc/PID/fd", e))?
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    if let Some(n) = fds.into_iter().find(|&n| same(n)) {
        tracing::debug!(
            pid = fd.pid,
            epoll = fd.fd,
            registered = t.tfd,
            now = n,
            "epoll target found at another fd"
        );
        return Ok(n.cast_unsigned());
    }
    Err(Unsupported::of(
        fd.pid,
        format!("fd {} (epoll)", fd.fd),
        format!(
            "it watches a file (registered as fd {}) that the process no longer has open",
            t.tfd
        ),
        "keep one fd on each watched file open, or remove the watch (EPOLL_CTL_DEL)",
    )
    .into())
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
    let epfd = super::files::fd_number(f)?;
    for t in &ep.tfd {
        // struct epoll_event is packed on x86_64: u32 events, u64 data.
        let mut ev = [0u8; 12];
        ev[..4].copy_from_slice(&t.events.to_ne_bytes());
        ev[4..].copy_from_slice(&t.data.to_ne_bytes());
        let p = cx.put(0, &ev)?;
        cx.named("epoll_ctl(EPOLL_CTL_ADD)")
            // The watched fd as the kernel's int (it checks the number).
            .epoll_ctl(epfd, libc::EPOLL_CTL_ADD, t.tfd.cast_signed(), p)?;
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
