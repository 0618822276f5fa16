//! The fd table: which files a task has open, at which fd numbers, with which flags and
//! offsets (files.img + fdinfo-N.img).
//!
//! Supported so far: regular files, directories and character devices that are not
//! terminals (/dev/null, /dev/zero, /dev/urandom, ...), all saved as CRIU "REG" records by
//! path. Two fds sharing one open file description (dup, inherited) share one record and keep
//! one offset after restore. Anything else makes the dump stop *before* it touches the task,
//! naming the fd, its type and path, and what to do.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::dump::DumpError;
use crate::image::pb;
use crate::procfs;
use crate::restore::RestoreError;
use crate::sys::proc::{kcmp, KCMP_FILE};

/// The fd table of a process.
pub struct Files;

/// Why an fd cannot be dumped yet (checked before the task is touched).
fn unsupported(
    link: &str,
    meta: Option<&std::fs::Metadata>,
) -> Option<(&'static str, &'static str)> {
    let hint_fd = "close it before the dump, or wait for the issue that adds it";
    if link.starts_with("pipe:") {
        return Some((
            "pipe",
            "pipes are planned (issue #3); redirect the program's stdio to files",
        ));
    }
    if link.starts_with("socket:") {
        return Some(("socket", "sockets are planned (issues #3 and #5)"));
    }
    if let Some(kind) = link.strip_prefix("anon_inode:") {
        return Some((
            match kind {
                "[eventfd]" => "eventfd",
                "[eventpoll]" => "epoll",
                "[signalfd]" => "signalfd",
                "[timerfd]" => "timerfd",
                "inotify" => "inotify",
                "[pidfd]" => "pidfd",
                "[io_uring]" => "io_uring",
                "[userfaultfd]" => "userfaultfd",
                "bpf-map" | "bpf-prog" => "bpf",
                "[perf_event]" => "perf_event",
                _ => "anonymous inode",
            },
            hint_fd,
        ));
    }
    if link.starts_with("/memfd:") {
        return Some(("memfd", hint_fd));
    }
    if link.ends_with(" (deleted)") {
        return Some(("deleted file", "ghost files are planned (issue #3)"));
    }
    if !link.starts_with('/') {
        return Some(("special file", hint_fd));
    }
    let m = meta?;
    let ft = m.file_type();
    if ft.is_fifo() {
        return Some(("FIFO", "FIFOs are planned (issue #3)"));
    }
    if ft.is_socket() {
        return Some(("unix socket", "sockets are planned (issue #3)"));
    }
    if ft.is_char_device() {
        let major = (m.rdev() >> 8) & 0xfff;
        if matches!(major, 4 | 5 | 136..=143) {
            return Some((
                "terminal",
                "ttys are planned (issue #4); start the program with stdio redirected to files or /dev/null",
            ));
        }
    }
    None
}

/// Checks every fd can be dumped, without touching the task. Called before seizing.
pub fn precheck(pid: i32) -> Result<(), DumpError> {
    for fd in procfs::fds(pid).map_err(DumpError::Proc)? {
        let link = procfs::link(pid, &format!("fd/{fd}")).map_err(DumpError::Proc)?;
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
        if let Some((what, hint)) = unsupported(&link, meta.as_ref()) {
            return Err(DumpError::Unsupported {
                pid,
                object: format!("fd {fd} ({link})"),
                what: format!("{what} is not supported yet"),
                hint: hint.to_string(),
            });
        }
    }
    Ok(())
}

impl Kind for Files {
    const NAME: &'static str = "files";

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), DumpError> {
        let pid = cx.pid;
        for fd in procfs::fds(pid).map_err(DumpError::Proc)? {
            let link = procfs::link(pid, &format!("fd/{fd}")).map_err(DumpError::Proc)?;
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
            if let Some((what, hint)) = unsupported(&link, meta.as_ref()) {
                return Err(DumpError::Unsupported {
                    pid,
                    object: format!("fd {fd} ({link})"),
                    what: format!("{what} is not supported yet"),
                    hint: hint.to_string(),
                });
            }
            let meta = meta.ok_or_else(|| DumpError::Unsupported {
                pid,
                object: format!("fd {fd} ({link})"),
                what: "the file cannot be looked up from cryo".into(),
                hint: "is it in another mount namespace? containers come with issue #4".into(),
            })?;
            let info = procfs::fdinfo(pid, fd).map_err(DumpError::Proc)?;
            // Same open file description as an earlier fd?
            let mut id = None;
            for &(opid, other, oid) in &cx.files.fds {
                if kcmp(pid, opid, KCMP_FILE, fd as u64, other as u64).ok() == Some(0) {
                    id = Some(oid);
                    break;
                }
            }
            let id = match id {
                Some(i) => i,
                None => cx.files.add_reg(
                    link.clone(),
                    info.flags & !(libc::O_CLOEXEC as u32),
                    info.pos,
                    meta.is_file().then_some(meta.len()),
                    meta.mode(),
                ),
            };
            cx.files.fds.push((pid, fd, id));
            img.fdinfo.push(pb::FdinfoEntry {
                id,
                flags: if info.flags & libc::O_CLOEXEC as u32 != 0 {
                    libc::FD_CLOEXEC as u32
                } else {
                    0
                },
                r#type: pb::FdTypes::Reg as i32,
                fd: fd as u32,
                xattr_security_selinux: None,
            });
        }
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RestoreError> {
        restore_fds(cx, img, None).map(|_| ())
    }
}

/// A restored fd table: which fd holds each file id, and the highest fd.
#[derive(Debug, Clone, Default)]
pub struct FdTable {
    pub by_id: HashMap<u32, u32>,
    pub max_fd: u32,
}

/// Recreates the fd table of the task `cx` drives. `inherited` is the table of the parent it
/// was forked from (None for the root, whose inherited fds were all closed): fds sharing an
/// open file description with the parent are taken over from it, which keeps one shared
/// offset; every other inherited fd is closed.
pub fn restore_fds(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<&FdTable>,
) -> Result<FdTable, RestoreError> {
    let mut fds: Vec<&pb::FdinfoEntry> = img.fdinfo.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let max_target = fds.iter().map(|f| f.fd).max().unwrap_or(0);
    // Park what we take over from the parent above every fd in play, then drop the rest.
    let mut taken: HashMap<u32, u32> = HashMap::new(); // file id -> parked fd
    if let Some(parent) = inherited {
        let park = max_target.max(parent.max_fd) as u64 + 1;
        for f in &fds {
            if let (Some(&src), false) = (parent.by_id.get(&f.id), taken.contains_key(&f.id)) {
                let tmp = cx.sys(
                    "fcntl(F_DUPFD)",
                    libc::SYS_fcntl,
                    [src as u64, libc::F_DUPFD as u64, park, 0, 0, 0],
                )?;
                taken.insert(f.id, tmp as u32);
            }
        }
        cx.sys(
            "close_range",
            libc::SYS_close_range,
            [0, park - 1, 0, 0, 0, 0],
        )?;
    }
    let mut opened: HashMap<u32, u32> = HashMap::new(); // file id -> fd
    for f in &fds {
        let cloexec = if f.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        if f.r#type != pb::FdTypes::Reg as i32 {
            return Err(RestoreError::Unsupported(format!(
                "fd {} has type {} which this cryo cannot restore",
                f.fd, f.r#type
            )));
        }
        if let Some(&src) = opened.get(&f.id).or(taken.get(&f.id)) {
            cx.sys(
                "dup3",
                libc::SYS_dup3,
                [src as u64, f.fd as u64, cloexec, 0, 0, 0],
            )?;
            opened.entry(f.id).or_insert(f.fd);
            continue;
        }
        let reg = cx.reg(f.id)?.clone();
        let flags =
            reg.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        if let Some(size) = reg.size {
            if let Ok(m) = std::fs::metadata(&reg.name) {
                if m.len() < reg.pos {
                    tracing::warn!(
                        "{}: now {} bytes, shorter than the saved offset {} (was {size} bytes)",
                        reg.name,
                        m.len(),
                        reg.pos
                    );
                }
            }
        }
        let tmp = cx.open(&reg.name, flags)? as u64;
        if reg.pos != 0 {
            cx.sys(
                "lseek",
                libc::SYS_lseek,
                [tmp, reg.pos, libc::SEEK_SET as u64, 0, 0, 0],
            )?;
        }
        if tmp != f.fd as u64 {
            cx.sys("dup3", libc::SYS_dup3, [tmp, f.fd as u64, cloexec, 0, 0, 0])?;
            cx.sys("close", libc::SYS_close, [tmp, 0, 0, 0, 0, 0])?;
        } else if cloexec != 0 {
            cx.sys(
                "fcntl(F_SETFD)",
                libc::SYS_fcntl,
                [tmp, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0],
            )?;
        }
        opened.insert(f.id, f.fd);
    }
    if !taken.is_empty() {
        cx.sys(
            "close_range",
            libc::SYS_close_range,
            [max_target as u64 + 1, u32::MAX as u64, 0, 0, 0, 0],
        )?;
    }
    Ok(FdTable {
        by_id: opened,
        max_fd: max_target,
    })
}
