//! pidfds (files.img PIDFD records, `pidfd_entry` as CRIU 4.x writes it): the process a
//! pidfd refers to, by the PID the tree sees (`nspid`; a holder in a PID namespace nested in
//! the tree's opens it by the PID it sees there, `FdObjects::pids`), its flags (`PIDFD_NONBLOCK`), and
//! its pidfs inode, which says which pidfds refer to one process.
//!
//! A pidfd of a process of the dumped tree is opened again inside the restored task that
//! holds it (`pidfd_open` on that PID in the tree's PID namespace), once the process exists:
//! `files::restore_late_fds` runs after the task's children are made. A pidfd of a process
//! that had exited and been reaped (`Pid: -1` in fdinfo, `nspid` -1) is made in cryo from a
//! child that exits at once: every pidfd that shared a dead process (same inode) is opened
//! from the same one, so they still compare equal, and the child is reaped at once.
//! A pidfd of a live process outside the tree, or of a thread, is refused at dump.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, obj_err, FdKind, FdObjects, FdProbe, TargetFd};
use super::{DumpCx, RemoteFd, RestoreCx, Syscalls};
use crate::image::pb;

/// pidfd file descriptors.
pub struct PidFd;

/// Why a pidfd could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum PidFdError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot open again the pidfd of process {nspid} (file {id}); does it exist by now?")]
    Open {
        id: u32,
        nspid: i32,
        #[source]
        source: TaskError,
    },
    #[error("process {pid}: fd {fd}: fdinfo has no usable '{field}' line")]
    Fdinfo {
        pid: i32,
        fd: i32,
        field: &'static str,
    },
}
task_error_from!(PidFdError);

/// `PIDFD_NONBLOCK`, the one flag a pidfd is opened with that it keeps.
const PIDFD_NONBLOCK: u32 = libc::O_NONBLOCK.cast_unsigned();

/// Restore-side state: the pidfds of dead processes, made ahead by inode.
#[derive(Default)]
struct DeadPidfds {
    made: HashMap<u32, OwnedFd>,
}

impl FdKind for PidFd {
    const NAME: &'static str = "pidfd";
    const TYPE: pb::FdTypes = pb::FdTypes::Pidfd;
    type Error = PidFdError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[pidfd]"
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, PidFdError> {
        use std::os::unix::fs::MetadataExt;
        let bad = |field| PidFdError::Fdinfo {
            pid: fd.pid,
            fd: fd.fd,
            field,
        };
        let pid: i32 = fd.field("Pid")?.parse().map_err(|_| bad("Pid"))?;
        let nspid = if pid < 0 {
            -1
        } else {
            if !cx.files.tree.contains(&pid) {
                let what = if std::path::Path::new(&format!("/proc/{pid}/task/{pid}")).exists() {
                    format!("the pidfd refers to process {pid}, which is not in the dumped tree")
                } else {
                    format!("the pidfd refers to thread {pid} (PIDFD_THREAD), not to a process")
                };
                return Err(Unsupported::of(
                    fd.pid,
                    format!("fd {} ({})", fd.fd, fd.link),
                    what,
                    "dump a tree that holds that process too, or close the pidfd before the dump",
                )
                .into());
            }
            // The PID the tree sees (its own in a PID namespace nested in the tree's is not
            // what the holder sees: restore translates it, `FdObjects::pids`).
            let root = cx.files.tree.first().copied().unwrap_or(pid);
            crate::procfs::tree_pid(root, pid).ok_or(bad("NSpid"))?
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Pidfd as i32,
            id,
            pidfd: Some(pb::PidfdEntry {
                id,
                ino: fd.meta.map(|m| crate::num::low32(m.ino())).unwrap_or(0),
                flags: fd.flags(),
                nspid,
                fown: Default::default(),
            }),
            ..Default::default()
        })
    }

    /// A pidfd of a dead process (a live one is opened in the task: [`open_in_task`]).
    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, PidFdError> {
        let p = e.pidfd.as_ref().ok_or_else(|| missing(e.id, "pidfd"))?;
        if p.nspid >= 0 {
            return Err(TaskError::Internal("a live pidfd is opened in its task").into());
        }
        let err = |what: &str| obj_err(e.id, format!("pidfd of a dead process: {what}"));
        if !objs.kinds.get::<DeadPidfds>().made.contains_key(&e.id) {
            // Every record on this dead process, from one child that exits at once.
            let same: Vec<(u32, u32)> = objs
                .files
                .values()
                .filter_map(|f| f.pidfd.as_ref())
                .filter(|q| q.nspid < 0 && q.ino == p.ino)
                .map(|q| (q.id, q.flags))
                .collect();
            let child = crate::sys::proc::spawn_exiting().map_err(err("fork a child"))?;
            let opened: Result<Vec<(u32, OwnedFd)>, _> = same
                .iter()
                .map(|&(id, flags)| {
                    crate::sys::fd::pidfd_open_flags(child, flags & PIDFD_NONBLOCK)
                        .map(|fd| (id, fd))
                })
                .collect();
            crate::sys::proc::reap(child).map_err(err("reap the child"))?;
            let made = &mut objs.kinds.get::<DeadPidfds>().made;
            made.extend(opened.map_err(err("pidfd_open"))?);
        }
        let fd = objs
            .kinds
            .get::<DeadPidfds>()
            .made
            .remove(&e.id)
            .ok_or(TaskError::Internal("a dead pidfd was not made"))?;
        rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| err("F_SETFD")(e.into()))?;
        Ok(fd)
    }
}

/// Whether record `e` is a pidfd of a live process, opened in its task once that exists.
pub fn is_live(e: &pb::FileEntry) -> bool {
    e.pidfd.as_ref().is_some_and(|p| p.nspid >= 0)
}

/// Opens the pidfd of record `e` (a live process of the tree) in the puppet `cx` drives,
/// the restored process `holder` (its PID in the images); returns the puppet's fd.
pub fn open_in_task(
    cx: &mut RestoreCx<'_>,
    e: &pb::FileEntry,
    holder: u32,
) -> Result<RemoteFd, PidFdError> {
    let p = e.pidfd.as_ref().ok_or_else(|| missing(e.id, "pidfd"))?;
    let flags = p.flags & PIDFD_NONBLOCK;
    // The PID as the holder names it in its own PID namespace.
    let seen = cx
        .objs
        .borrow()
        .pids
        .seen_from(p.nspid.cast_unsigned(), holder)
        .ok_or_else(|| {
            TaskError::Unsupported(Unsupported::restore(format!(
                "process {holder} holds a pidfd of process {}, which is outside its PID namespace",
                p.nspid
            )))
        })?;
    cx.pidfd_open(seen, flags)
        .map_err(|source| PidFdError::Open {
            id: e.id,
            nspid: p.nspid,
            source,
        })
}
