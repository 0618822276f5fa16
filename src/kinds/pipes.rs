//! Pipes and FIFOs, with the bytes in flight and the pipe's capacity (files.img PIPE/FIFO
//! records + pipes-data.img / fifo-data.img).
//!
//! Dump reads what is queued without draining it: cryo opens a read end of the same pipe
//! through /proc/PID/fd/N and `tee`s the buffers into a pipe of its own, once per pipe
//! (keyed by inode). Restore makes one pipe per inode in cryo, gives it the saved capacity
//! and data, and hands the puppets the two ends (or a fresh description through
//! /proc/self/fd for a second description of the same end). A FIFO is reopened by path with
//! a read-write keeper held by cryo, so opening either end never blocks.

use super::error::{task_error_from, TaskError};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use super::files::{
    missing, obj_err, reachable_by_path, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK,
};
use super::DumpCx;
use crate::image::{self, pb};
use crate::sys::fd as sysfd;

/// Why a pipe or FIFO could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PipesError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(PipesError);

/// Anonymous pipes.
pub struct Pipes;
/// Named pipes.
pub struct Fifos;

/// Restore-side state spanning several file ids of one pipe.
#[derive(Default)]
pub struct PipeStore {
    /// Saved data by pipe inode (loaded on first use).
    pipe_data: Option<HashMap<u32, (pb::PipeDataEntry, Vec<u8>)>>,
    fifo_data: Option<HashMap<u32, (pb::PipeDataEntry, Vec<u8>)>>,
    /// pipe inode -> (read end, write end, read end handed out, write end handed out).
    pipes: HashMap<u32, (OwnedFd, OwnedFd, bool, bool)>,
    /// FIFO inode -> cryo's read-write keeper.
    fifos: HashMap<u32, OwnedFd>,
}

/// Reads what is queued in the pipe behind `fd` without consuming it: (capacity, bytes).
fn queued(fd: &TargetFd<'_>) -> Result<(u32, Vec<u8>), PipesError> {
    let rd = sysfd::open(
        &format!("/proc/{}/fd/{}", fd.pid, fd.fd),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )
    .map_err(|e| fd.err("open a read end", e))?;
    let size = sysfd::fcntl(rd.as_fd(), libc::F_GETPIPE_SZ, 0)
        .map_err(|e| fd.err("F_GETPIPE_SZ", e))? as usize;
    let (tr, tw) = sysfd::pipe().map_err(|e| fd.err("pipe", e))?;
    sysfd::fcntl(tw.as_fd(), libc::F_SETPIPE_SZ, size as i64)
        .map_err(|e| fd.err("F_SETPIPE_SZ on cryo's copy", e))?;
    let n = sysfd::tee(rd.as_fd(), tw.as_fd(), size).map_err(|e| fd.err("tee", e))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match sysfd::read(tr.as_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(fd.err("read cryo's copy", e).into()),
        }
    }
    buf.truncate(got);
    Ok((size as u32, buf))
}

/// The pipes-data / fifo-data entry of pipe `ino`: its capacity and queued bytes.
fn data_entry(fd: &TargetFd<'_>, ino: u32) -> Result<(pb::PipeDataEntry, Vec<u8>), PipesError> {
    let (size, data) = queued(fd)?;
    Ok((
        pb::PipeDataEntry {
            pipe_id: ino,
            bytes: data.len() as u32,
            size: Some(size),
        },
        data,
    ))
}

fn inode(fd: &TargetFd<'_>) -> Result<u32, PipesError> {
    fd.link
        .strip_prefix("pipe:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .or_else(|| {
            use std::os::unix::fs::MetadataExt;
            fd.meta.map(|m| m.ino() as u32)
        })
        .ok_or_else(|| {
            fd.err(
                "pipe inode",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
            .into()
        })
}

impl FdKind for Pipes {
    const NAME: &'static str = "pipe";
    const TYPE: pb::FdTypes = pb::FdTypes::Pipe;
    type Error = PipesError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link.starts_with("pipe:")
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, PipesError> {
        let ino = inode(fd)?;
        if cx.files.pipes_seen.insert(ino) {
            let e = data_entry(fd, ino)?;
            cx.files.pipe_data.push(e);
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Pipe as i32,
            id,
            pipe: Some(pb::PipeEntry {
                id,
                pipe_id: ino,
                flags: fd.flags(),
                fown: Default::default(),
            }),
            ..Default::default()
        })
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, PipesError> {
        let pe = e.pipe.as_ref().ok_or_else(|| missing(e.id, "pipe"))?;
        let err = |what: &str| obj_err(e.id, format!("pipe {}: {what}", pe.pipe_id));
        // A pipe the caller hands in (--inherit-fd pipe:[INO]): its fd, as it is (the caller's
        // flags, no saved data), at every end of the dumped pipe.
        if let Some(fd) = objs.inherited.get(&format!("pipe:[{}]", pe.pipe_id)) {
            return Ok(fd.try_clone().map_err(err("dup of the inherited fd"))?);
        }
        if !objs
            .kinds
            .get::<PipeStore>()
            .pipes
            .contains_key(&pe.pipe_id)
        {
            let (r, w) = sysfd::pipe().map_err(err("pipe2"))?;
            let data = load(objs, false)?.remove(&pe.pipe_id);
            fill(w.as_fd(), data, pe.pipe_id, e.id)?;
            objs.kinds
                .get::<PipeStore>()
                .pipes
                .insert(pe.pipe_id, (r, w, false, false));
        }
        let (r, w, r_used, w_used) = objs
            .kinds
            .get::<PipeStore>()
            .pipes
            .get_mut(&pe.pipe_id)
            .expect("made");
        let acc = pe.flags & libc::O_ACCMODE as u32;
        let (end, used) = if acc == libc::O_WRONLY as u32 {
            (w.as_fd(), w_used)
        } else {
            (r.as_fd(), r_used)
        };
        let fd = if !*used {
            *used = true;
            end.try_clone_to_owned().map_err(err("dup"))?
        } else {
            // Another open file description of the same end.
            sysfd::open(
                &format!("/proc/self/fd/{}", end.as_raw_fd()),
                acc as i32 | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
            .map_err(err("reopen through /proc/self/fd"))?
        };
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (pe.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}

impl FdKind for Fifos {
    const NAME: &'static str = "FIFO";
    const TYPE: pb::FdTypes = pb::FdTypes::Fifo;
    /// Reopened by its path, as the tree sees it.
    const IN_TREE_NS: bool = true;
    type Error = PipesError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link.starts_with('/') && p.meta.is_some_and(|m| m.file_type().is_fifo())
    }

    fn precheck(p: &FdProbe<'_>) -> Result<(), PipesError> {
        if p.deleted() {
            return Ok(()); // made again as a ghost
        }
        Ok(reachable_by_path(p)?)
    }

    fn load(objs: &mut FdObjects) -> Result<(), PipesError> {
        // A deleted FIFO is made from its ghost inside the tree's mount namespace.
        objs.ghosts.preload(&objs.dir).map_err(|e| match e {
            super::ghost::GhostError::Task(t) => t,
        })?;
        load(objs, true).map(|_| ())
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, PipesError> {
        use std::os::unix::fs::MetadataExt;
        let meta = fd.meta.ok_or_else(|| {
            fd.err(
                "stat the FIFO",
                std::io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
        let ino = meta.ino() as u32;
        if cx.files.pipes_seen.insert(ino) {
            let e = data_entry(fd, ino)?;
            cx.files.fifo_data.push(e);
        }
        // The path lives in a regular-file record of its own, as CRIU does; a FIFO deleted
        // while open is made again from a ghost (once per inode).
        let deleted = fd.link.strip_suffix(" (deleted)");
        let regf_id = cx.files.add_reg(
            deleted.unwrap_or(fd.link).to_string(),
            fd.flags(),
            0,
            None,
            meta.mode(),
        );
        if deleted.is_some() {
            super::ghost::dump(
                cx.files,
                fd.pid,
                &format!("fd {} ({})", fd.fd, fd.link),
                &format!("/proc/{}/fd/{}", fd.pid, fd.fd),
                meta,
                regf_id,
            )
            .map_err(|e| match e {
                super::ghost::GhostError::Task(t) => t,
            })?;
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Fifo as i32,
            id,
            fifo: Some(pb::FifoEntry {
                id,
                pipe_id: ino,
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        })
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, PipesError> {
        let fe = e.fifo.as_ref().ok_or_else(|| missing(e.id, "fifo"))?;
        let reg = fe
            .regf_id
            .and_then(|r| objs.files.get(&r))
            .and_then(|f| f.reg.clone())
            .ok_or_else(|| missing(e.id, "FIFO path (regf_id)"))?;
        let mut reg = reg;
        if let Some(regf_id) = fe.regf_id.filter(|&r| objs.ghosts.is_ghost(r)) {
            let at = objs
                .ghosts
                .materialize(&objs.dir, regf_id, &reg.name, objs.ns_pid)
                .map_err(|e| match e {
                    super::ghost::GhostError::Task(t) => t,
                })?;
            reg.name = at.to_string_lossy().into_owned();
        }
        let err = |what: &str| obj_err(e.id, format!("FIFO {}: {what}", reg.name));
        if !objs
            .kinds
            .get::<PipeStore>()
            .fifos
            .contains_key(&fe.pipe_id)
        {
            // Read-write never blocks and keeps both ends open while the puppets open theirs.
            let keeper = sysfd::open(&reg.name, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .map_err(err("open read-write"))?;
            let data = load(objs, true)?.remove(&fe.pipe_id);
            fill(keeper.as_fd(), data, fe.pipe_id, e.id)?;
            objs.kinds
                .get::<PipeStore>()
                .fifos
                .insert(fe.pipe_id, keeper);
        }
        let acc = reg.flags & libc::O_ACCMODE as u32;
        let fd = sysfd::open(&reg.name, acc as i32 | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .map_err(err("open"))?;
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (reg.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}

/// The saved data of every pipe (or FIFO), loaded once.
pub fn load(
    objs: &mut FdObjects,
    fifo: bool,
) -> Result<&mut HashMap<u32, (pb::PipeDataEntry, Vec<u8>)>, PipesError> {
    let store = objs.kinds.get::<PipeStore>();
    let (slot, name, kind) = if fifo {
        (&mut store.fifo_data, "fifo-data.img", image::FIFO_DATA)
    } else {
        (&mut store.pipe_data, "pipes-data.img", image::PIPES_DATA)
    };
    if slot.is_none() {
        let all = objs.dir.read_with_data::<pb::PipeDataEntry>(name, kind)?;
        *slot = Some(all.into_iter().map(|(e, d)| (e.pipe_id, (e, d))).collect());
    }
    Ok(slot.as_mut().expect("loaded"))
}

/// Gives a new pipe its saved capacity and queued bytes (written through `w`).
fn fill(
    w: BorrowedFd<'_>,
    data: Option<(pb::PipeDataEntry, Vec<u8>)>,
    pipe_id: u32,
    id: u32,
) -> Result<(), PipesError> {
    let Some((e, bytes)) = data else {
        return Ok(());
    };
    let err = |what: &str| obj_err(id, format!("pipe {pipe_id}: {what}"));
    if let Some(size) = e.size {
        let want = size.max(bytes.len() as u32);
        let now = sysfd::fcntl(w, libc::F_GETPIPE_SZ, 0).map_err(err("F_GETPIPE_SZ"))?;
        if now != want as i64 {
            sysfd::fcntl(w, libc::F_SETPIPE_SZ, want as i64)
                .map_err(err(&format!("F_SETPIPE_SZ {want}")))?;
        }
    }
    let fl = sysfd::fcntl(w, libc::F_GETFL, 0).map_err(err("F_GETFL"))?;
    sysfd::fcntl(w, libc::F_SETFL, fl | libc::O_NONBLOCK as i64).map_err(err("F_SETFL"))?;
    let mut off = 0;
    while off < bytes.len() {
        off += sysfd::write(w, &bytes[off..]).map_err(err("write the queued data"))?;
    }
    sysfd::fcntl(w, libc::F_SETFL, fl).map_err(err("F_SETFL"))?;
    Ok(())
}
