//! File locks held by the tree: POSIX (`fcntl` F_SETLK), OFD (`F_OFD_SETLK`) and BSD
//! (`flock`) locks, saved in `filelocks.img` (CRIU's `file_lock_entry`) and taken again in
//! the restored tasks.
//!
//! **Dump** (`dump`, the tree seized): every lock a task holds through an fd is in that fd's
//! `/proc/PID/fdinfo/FD` `lock:` lines (same text as `/proc/locks`). A POSIX lock belongs to
//! the process whose pid it shows (fd tables shared with CLONE_FILES show it twice: kept
//! once). A flock or OFD lock belongs to the open file description, so it shows on every fd
//! of every task sharing it: kept once, with the first holder (parents come first, children
//! inherit the description at restore). As CRIU: a lock found without `--file-locks` fails
//! the dump; a POSIX lock in `/proc/locks` owned by a task of the tree but not reachable
//! through any of its fds fails it too. Leases (`F_SETLEASE`, CRIU's FL_LEASE) belong to
//! the open file description like flock locks; one being broken (an open that conflicted
//! with it started the break, the lease holder was told and has not released it yet) is
//! saved as CRIU saves it: the type it is being broken to (F_UNLCK or F_RDLCK) with
//! [`LEASE_BREAKING`]. Delegations and mandatory locks are refused.
//!
//! **Restore** (`restore`, after a task's fds are rebuilt, before its children exist):
//! each entry of that task is taken again from inside the puppet with an injected
//! `flock(fd, LOCK_SH|LOCK_EX | LOCK_NB)`, `fcntl(fd, F_SETLK / F_OFD_SETLK, &flock)` or
//! `fcntl(fd, F_SETLEASE, type)` (a lease the puppet may not take, in a user namespace of
//! its own, is taken by cryo through its copy of the fd: it belongs to the open file);
//! never blocking: a lock someone else took meanwhile fails the restore, naming it. A lease
//! being broken is taken as it was before the break (read on a read-only description, else
//! write) and broken again by cryo opening the file through `/proc/PID/fd/N` without
//! blocking, in the mode that breaks it to its saved target; the file's owner is cleared
//! first, so that the break signals no one (the holder was told before the dump; the owner
//! is set again with the other fds' owners).

use super::error::{task_error_from, TaskError, Unsupported};
use crate::image::{self, pb, ImageDir};
use crate::kinds::{RestoreCx, Syscalls, TaskImages};
use crate::num::c_uint;

/// Why file locks could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum LocksError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(LocksError);

/// `file_lock_entry.flag` values (CRIU's FL_*).
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFD: u32 = 4;
pub const FL_LEASE: u32 = 8;

/// `file_lock_entry.type` values (`F_RDLCK`, `F_WRLCK`; `F_UNLCK` only as the target of a
/// lease being broken).
const F_RDLCK: u32 = 0;
const F_WRLCK: u32 = 1;
const F_UNLCK: u32 = 2;
/// Added to a lease's type while it is being broken (CRIU's `LEASE_BREAKING`): the type
/// is then the one it is being broken to.
pub const LEASE_BREAKING: u32 = 4;

/// The image name (a global image, as in CRIU).
pub const IMAGE: &str = "filelocks.img";

/// One line of `/proc/locks` or of an fdinfo `lock:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// POSIX, FLOCK, OFDLCK, LEASE, DELEG, ...
    pub kind: String,
    /// ADVISORY, MANDATORY, ACTIVE, BREAKING, ...
    pub mode: String,
    /// READ, WRITE, UNLCK.
    pub access: String,
    /// The owner's pid (-1 for OFD locks).
    pub pid: i32,
    /// `MAJ:MIN:INO` of the locked file.
    pub file: String,
    pub start: i64,
    /// The last byte, `None` for EOF.
    pub end: Option<i64>,
}

/// Parses `1: POSIX  ADVISORY  WRITE 30191 fe:00:10012747 5 14` (a blocked waiter's `->`
/// marker is skipped). `None` if it is not such a line.
pub fn parse_line(s: &str) -> Option<LockLine> {
    let mut w = s.split_whitespace().filter(|t| *t != "->");
    let id = w.next()?;
    if !id.ends_with(':') {
        return None;
    }
    let kind = w.next()?.to_string();
    let mode = w.next()?.to_string();
    let access = w.next()?.to_string();
    let pid = w.next()?.parse().ok()?;
    let file = w.next()?.to_string();
    let start = w.next()?.parse().ok()?;
    let end = match w.next()? {
        "EOF" => None,
        e => Some(e.parse().ok()?),
    };
    Some(LockLine {
        kind,
        mode,
        access,
        pid,
        file,
        start,
        end,
    })
}

/// A lock found at dump: the index of the holding task in the dump order, and its entry
/// (`pid` is filled in by `write`, once pids are the tree's own).
#[derive(Debug, Clone)]
pub struct Found {
    pub task: usize,
    pub entry: pb::FileLockEntry,
    line: LockLine,
}

fn unsupported(pid: i32, fd: i32, what: String, hint: &str) -> Unsupported {
    Unsupported::of(pid, format!("fd {fd} file lock"), what, hint)
}

/// The locks held by `tree` (host pids, dump order; zombies have no fds and are skipped).
/// Without `requested` (`--file-locks`) any lock fails the dump, as in CRIU.
pub fn dump(tree: &[i32], requested: bool) -> Result<Vec<Found>, LocksError> {
    let mut out: Vec<(i32, i32, Found)> = Vec::new();
    for (task, &pid) in tree.iter().enumerate() {
        let dir = format!("/proc/{pid}/fdinfo");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue; // a zombie
        };
        let mut fds: Vec<i32> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        for fd in fds {
            let text = crate::procfs::read(pid, &format!("fdinfo/{fd}"))?;
            for l in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
                // Empty when the owner is not visible from cryo's PID namespace.
                if l.trim().is_empty() {
                    continue;
                }
                let Some(line) = parse_line(l) else {
                    return Err(crate::procfs::ProcError::Parse {
                        path: format!("/proc/{pid}/fdinfo/{fd}").into(),
                        what: format!("lock line '{}'", l.trim()),
                    }
                    .into());
                };
                let flag = match line.kind.as_str() {
                    "POSIX" => FL_POSIX,
                    "FLOCK" => FL_FLOCK,
                    "OFDLCK" => FL_OFD,
                    "LEASE" if line.mode == "ACTIVE" || line.mode == "BREAKING" => FL_LEASE,
                    "LEASE" => {
                        return Err(unsupported(
                            pid,
                            fd,
                            format!("a lease in state {}", line.mode),
                            "dump again once the lease break is over",
                        )
                        .into())
                    }
                    other => {
                        return Err(unsupported(
                            pid,
                            fd,
                            format!("a {other} lock (delegations are not supported)"),
                            "release it before the dump",
                        )
                        .into())
                    }
                };
                if line.mode != "ADVISORY" && flag != FL_LEASE {
                    return Err(unsupported(
                        pid,
                        fd,
                        format!("a {} lock (only advisory locks are supported)", line.mode),
                        "",
                    )
                    .into());
                }
                // A lease being broken shows the type it is being broken to.
                let breaking = flag == FL_LEASE && line.mode == "BREAKING";
                let ty = match line.access.as_str() {
                    "READ" if breaking => F_RDLCK | LEASE_BREAKING,
                    "UNLCK" if breaking => F_UNLCK | LEASE_BREAKING,
                    "READ" => F_RDLCK,
                    "WRITE" => F_WRLCK,
                    other => {
                        return Err(
                            unsupported(pid, fd, format!("a lock of type {other}"), "").into()
                        )
                    }
                };
                // A POSIX lock shows on the fds of every process sharing the table; it
                // belongs to the one whose pid it names.
                if flag == FL_POSIX && line.pid != pid {
                    continue;
                }
                let dup = out.iter().any(|(opid, ofd, f)| {
                    f.line == line
                        && (flag == FL_POSIX
                            || crate::sys::proc::kcmp(
                                pid,
                                *opid,
                                crate::sys::proc::KCMP_FILE,
                                c_uint(fd).into(),
                                c_uint(*ofd).into(),
                            )
                            .ok()
                                == Some(0))
                });
                if dup {
                    continue;
                }
                if !requested {
                    return Err(unsupported(
                        pid,
                        fd,
                        format!(
                            "the tree holds a {} lock on {} (as CRIU, locks are dumped only when asked)",
                            line.kind, line.file
                        ),
                        "dump with --file-locks (RPC file_locks)",
                    ).into());
                }
                let len = match line.end {
                    None => 0,
                    Some(e) => e + 1 - line.start,
                };
                let entry = pb::FileLockEntry {
                    flag,
                    r#type: ty,
                    pid: 0,
                    fd,
                    start: line.start,
                    len,
                };
                out.push((pid, fd, Found { task, entry, line }));
            }
        }
    }
    // A POSIX lock of a tree task that no fd shows cannot be taken again. (Checked only when
    // the tree holds locks at all: reading /proc/locks can take milliseconds.)
    let all = if out.is_empty() {
        None
    } else {
        std::fs::read_to_string("/proc/locks").ok()
    };
    if let Some(all) = all {
        // Blocked waiters (`->`) hold nothing: their syscall is restarted after restore.
        for line in all
            .lines()
            .filter(|l| !l.contains("->"))
            .filter_map(parse_line)
        {
            if line.kind == "POSIX"
                && tree.contains(&line.pid)
                && !out.iter().any(|(_, _, f)| f.line == line)
            {
                return Err(unsupported(
                    line.pid,
                    -1,
                    format!("a POSIX lock on {} held through no open fd", line.file),
                    "",
                )
                .into());
            }
        }
    }
    Ok(out.into_iter().map(|(_, _, f)| f).collect())
}

/// Writes `filelocks.img` (only when there are locks), with each holder's pid as the
/// images name it (`imgs` in dump order, pids already the tree's own).
pub fn write(dir: &ImageDir, found: &[Found], imgs: &[TaskImages]) -> Result<(), LocksError> {
    if found.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::with_capacity(found.len());
    for f in found {
        let img = imgs
            .get(f.task)
            .ok_or(TaskError::Internal("a file lock of an unknown task"))?;
        entries.push(pb::FileLockEntry {
            pid: img.vpid(),
            ..f.entry
        });
    }
    dir.write(IMAGE, image::FILE_LOCKS, &entries)?;
    Ok(())
}

/// `flock(2)` operations.
const LOCK_SH: i32 = 1;
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;
/// `fcntl(2)` commands.
const F_SETLK: i32 = 6;
const F_OFD_SETLK: i32 = 37;
const F_SETLEASE: i32 = 1024;
const F_GETFL: i32 = 3;
const F_SETOWN: i32 = 8;

/// `struct flock` of x86-64 (short type, short whence, off_t start, off_t len, pid_t pid).
fn flock_bytes(ty: u32, start: i64, len: i64, pid: i32) -> [u8; 32] {
    let mut b = [0u8; 32];
    // F_RDLCK or F_WRLCK (checked by the caller).
    b[0..2].copy_from_slice(&i16::try_from(ty).unwrap_or(-1).to_ne_bytes());
    // l_whence = SEEK_SET (0).
    b[8..16].copy_from_slice(&start.to_ne_bytes());
    b[16..24].copy_from_slice(&len.to_ne_bytes());
    b[24..28].copy_from_slice(&pid.to_ne_bytes());
    b
}

/// Takes again, in the puppet `cx`, the locks `img`'s task held (its fds exist already).
pub fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), LocksError> {
    let Some(all) = cx
        .dir
        .read_opt::<pb::FileLockEntry>(IMAGE, image::FILE_LOCKS)?
    else {
        return Ok(());
    };
    for e in all.iter().filter(|e| e.pid == img.vpid()) {
        // The fds are all in place.
        cx.run_later()?;
        let bad = |what: &str| {
            TaskError::BadImage(format!(
                "{IMAGE}: process {} fd {}: {what} (flag {}, type {})",
                e.pid, e.fd, e.flag, e.r#type
            ))
        };
        if e.fd < 0 {
            return Err(bad("no fd").into());
        }
        let fd = e.fd;
        let held = |r: Result<(), TaskError>| {
            r.map_err(|err| match err.errno() {
                Some(libc::EAGAIN | libc::EACCES) => {
                    Unsupported::restore(format!(
                        "process {} fd {}: the file lock (flag {}, range {}+{}) is held by another process now",
                        e.pid, e.fd, e.flag, e.start, e.len
                    ))
                    .into()
                }
                _ => err,
            })
        };
        if e.flag & FL_FLOCK != 0 {
            let op = match e.r#type {
                F_RDLCK => LOCK_SH,
                F_WRLCK => LOCK_EX,
                _ => return Err(bad("unknown flock type").into()),
            };
            held(cx.named("flock (file lock)").flock(fd, op | LOCK_NB))?;
        } else if e.flag & (FL_POSIX | FL_OFD) != 0 {
            if e.r#type != F_RDLCK && e.r#type != F_WRLCK {
                return Err(bad("unknown lock type").into());
            }
            let (cmd, pid) = if e.flag & FL_OFD != 0 {
                (F_OFD_SETLK, 0)
            } else {
                (F_SETLK, e.pid)
            };
            let a = cx.put(0, &flock_bytes(e.r#type, e.start, e.len, pid))?;
            held(
                cx.named("fcntl(F_SETLK) (file lock)")
                    .fcntl(fd, cmd, a)
                    .map(drop),
            )?;
        } else if e.flag & FL_LEASE != 0 {
            let breaking_to = match e.r#type {
                F_RDLCK | F_WRLCK => None,
                t if t == F_RDLCK | LEASE_BREAKING || t == F_UNLCK | LEASE_BREAKING => {
                    Some(t & !LEASE_BREAKING)
                }
                _ => return Err(bad("unknown lease type").into()),
            };
            // A lease being broken is taken as it was before: one broken to a read lease
            // was a write lease; one broken to none, a write lease unless the description
            // is read-only (a write lease on a read-only description is broken by readers
            // only to F_RDLCK).
            let ty = match breaking_to {
                None => e.r#type,
                Some(F_RDLCK) => F_WRLCK,
                Some(_) => {
                    let fl = cx.named("fcntl(F_GETFL) (lease)").fcntl(fd, F_GETFL, 0)?;
                    if fl & 3 == 0 {
                        F_RDLCK
                    } else {
                        F_WRLCK
                    }
                }
            };
            let r = cx
                .named("fcntl(F_SETLEASE) (lease)")
                .fcntl(fd, F_SETLEASE, u64::from(ty))
                .map(drop);
            // Only the file's owner (by fsuid) or a holder of CAP_LEASE in the initial user
            // namespace may take a lease: a puppet in a user namespace of its own, still with
            // cryo's ids, is neither. The lease belongs to the open file description, so
            // cryo takes it through its own copy of the fd.
            let r = match r {
                Err(err) if err.errno() == Some(libc::EACCES) => lease_from_cryo(cx.pid, fd, ty),
                r => r,
            };
            held(r)?;
            if let Some(target) = breaking_to {
                // No one is signalled by the break (F_SETLEASE made the taker the owner).
                cx.named("fcntl(F_SETOWN, 0) (lease being broken)")
                    .fcntl(fd, F_SETOWN, 0)?;
                break_lease(cx.pid, fd, target)?;
            }
        } else {
            return Err(bad("unknown lock kind").into());
        }
    }
    Ok(())
}

/// Starts breaking the lease on the file behind fd `fd` of process `pid` towards `target`
/// (F_UNLCK: an open for writing; F_RDLCK: one for reading), as the open that broke it
/// before the dump did: cryo opens the file through `/proc/PID/fd/FD` without blocking,
/// which starts the break and fails with EWOULDBLOCK. A file on a read-only mount (of a
/// writable file system: the open that broke it came through another mount) cannot be
/// opened for writing there (EROFS): then through a detached, writable copy of that mount
/// made for the purpose (`writable_clone`), which nothing else sees.
fn break_lease(pid: i32, fd: i32, target: u32) -> Result<(), TaskError> {
    use rustix::fs::{Mode, OFlags};
    let how = if target == F_UNLCK {
        OFlags::WRONLY
    } else {
        OFlags::RDONLY
    };
    let path = format!("/proc/{pid}/fd/{fd}");
    let fail = |what: String| TaskError::Fd {
        pid,
        fd,
        what,
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    };
    let open = |path: &str| {
        rustix::fs::open(
            path,
            how | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
    };
    let r = match open(&path) {
        Err(e) if e == rustix::io::Errno::ROFS => {
            let copy = || -> std::io::Result<std::os::fd::OwnedFd> {
                let at = rustix::fs::open(&path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
                // open_tree copies mounts of the caller's namespace only.
                let _in = super::ns::InNs::enter(pid, true)?;
                crate::sys::mount::writable_clone_of(std::os::fd::AsFd::as_fd(&at))
            };
            let clone = copy().map_err(|source| TaskError::Fd {
                pid,
                fd,
                what: "make a writable copy of its read-only mount, to break its lease again by an open for writing".into(),
                source,
            })?;
            open(&format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&clone)
            ))
        }
        r => r,
    };
    match r {
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(()),
        Err(e) => Err(TaskError::Fd {
            pid,
            fd,
            what: "open to break its lease again".into(),
            source: e.into(),
        }),
        Ok(_) => Err(fail(
            "open to break its lease again: nothing conflicted (the lease is not there)".into(),
        )),
    }
}

/// Takes the lease `ty` on the open file behind fd `fd` of process `pid` through cryo's copy
/// of it (`pidfd_getfd`).
fn lease_from_cryo(pid: i32, fd: i32, ty: u32) -> Result<(), TaskError> {
    let copy = super::files::copy_of(pid, fd)?;
    let ty = i32::try_from(ty).unwrap_or(-1);
    crate::sys::fd::set_lease(std::os::fd::AsFd::as_fd(&copy), ty).map_err(TaskError::fd(
        pid,
        fd,
        "fcntl(F_SETLEASE) through cryo's copy",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lock_lines() {
        let l = parse_line("1: POSIX  ADVISORY  WRITE 30191 fe:00:10012747 5 14").unwrap();
        assert_eq!(l.kind, "POSIX");
        assert_eq!(l.pid, 30191);
        assert_eq!(l.start, 5);
        assert_eq!(l.end, Some(14));
        let l = parse_line("\t1: OFDLCK ADVISORY  READ -1 fe:00:10012747 100 EOF").unwrap();
        assert_eq!(l.pid, -1);
        assert_eq!(l.end, None);
        let l = parse_line("2: -> FLOCK  ADVISORY  WRITE 7 fe:00:1 0 EOF").unwrap();
        assert_eq!(l.kind, "FLOCK");
        assert!(parse_line("pos:\t0").is_none());
    }

    #[test]
    fn flock_layout() {
        let b = flock_bytes(F_WRLCK, 5, 10, 42);
        assert_eq!(i16::from_ne_bytes([b[0], b[1]]), 1);
        assert_eq!(i64::from_ne_bytes(b[8..16].try_into().unwrap()), 5);
        assert_eq!(i32::from_ne_bytes(b[24..28].try_into().unwrap()), 42);
    }
}
