//! The fd table: which files a task has open, at which fd numbers, with which flags and
//! offsets (files.img + fdinfo-N.img), and the dispatch to the module of each kind of open
//! file.
//!
//! Regular files, directories and character devices that are not terminals (/dev/null,
//! /dev/zero, ...) are CRIU "REG" records by path, handled here. Pipes and FIFOs
//! (`pipes.rs`), eventfd, signalfd, timerfd, epoll and inotify (one module each) implement
//! [`FdKind`]: dump reads the object through a copy of the target's fd taken with
//! `pidfd_getfd`; restore creates the object in cryo ([`FdObjects`]) and the puppet takes it
//! with `pidfd_getfd` on cryo, so fds that shared an open file description share one again,
//! across processes too. Anything else makes the dump stop *before* it touches the task,
//! naming the fd, its type and path, and what to do.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::dump::DumpError;
use crate::image::pb;
use crate::image::ImageDir;
use crate::procfs;
use crate::restore::RestoreError;
use crate::sys;
use crate::sys::proc::{kcmp, KCMP_FILE};

/// The fd table of a process.
pub struct Files;

/// What kind of open file an fd is, from its /proc link and stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Reg,
    Pipe,
    Fifo,
    EventFd,
    SignalFd,
    TimerFd,
    Epoll,
    Inotify,
    UnixSk,
    Memfd,
    Tty,
}

impl Class {
    pub fn fd_type(self) -> pb::FdTypes {
        match self {
            Class::Reg => pb::FdTypes::Reg,
            Class::Pipe => pb::FdTypes::Pipe,
            Class::Fifo => pb::FdTypes::Fifo,
            Class::EventFd => pb::FdTypes::Eventfd,
            Class::SignalFd => pb::FdTypes::Signalfd,
            Class::TimerFd => pb::FdTypes::Timerfd,
            Class::Epoll => pb::FdTypes::Eventpoll,
            Class::Inotify => pb::FdTypes::Inotify,
            Class::UnixSk => pb::FdTypes::Unixsk,
            Class::Memfd => pb::FdTypes::Memfd,
            Class::Tty => pb::FdTypes::Tty,
        }
    }
}

/// Decides what an fd is, or why it cannot be dumped yet: (type, hint).
fn classify(
    link: &str,
    meta: Option<&std::fs::Metadata>,
) -> Result<Class, (&'static str, &'static str)> {
    let hint_fd = "close it before the dump, or wait for the issue that adds it";
    if link.starts_with("pipe:") {
        return Ok(Class::Pipe);
    }
    if link.starts_with("socket:") {
        // Which family is checked against sock_diag (unix_sk::precheck).
        return Ok(Class::UnixSk);
    }
    if let Some(kind) = link.strip_prefix("anon_inode:") {
        return match kind {
            "[eventfd]" => Ok(Class::EventFd),
            "[eventpoll]" => Ok(Class::Epoll),
            "[signalfd]" => Ok(Class::SignalFd),
            "[timerfd]" => Ok(Class::TimerFd),
            "inotify" => Ok(Class::Inotify),
            "[pidfd]" => Err(("pidfd", hint_fd)),
            "[io_uring]" => Err(("io_uring", hint_fd)),
            "[userfaultfd]" => Err(("userfaultfd", hint_fd)),
            "bpf-map" | "bpf-prog" => Err(("bpf", hint_fd)),
            "[perf_event]" => Err(("perf_event", hint_fd)),
            "[fanotify]" => Err(("fanotify", hint_fd)),
            _ => Err(("anonymous inode", hint_fd)),
        };
    }
    if link.starts_with("/memfd:") {
        return Ok(Class::Memfd);
    }
    if link.ends_with(" (deleted)") && !meta.is_some_and(|m| m.is_file()) {
        // Deleted regular files are saved as ghost files; anything else deleted is not.
        return Err(("deleted special file", hint_fd));
    }
    if !link.starts_with('/') {
        return Err(("special file", hint_fd));
    }
    let Some(m) = meta else {
        return Ok(Class::Reg);
    };
    let ft = m.file_type();
    if ft.is_fifo() {
        return Ok(Class::Fifo);
    }
    if ft.is_socket() {
        return Err(("unix socket", "sockets are planned (issue #3)"));
    }
    if ft.is_char_device() {
        // pty masters and slaves, and /dev/tty (tty.rs).
        if super::tty::side(m.rdev()).is_some() {
            return Ok(Class::Tty);
        }
        let major = (m.rdev() >> 8) & 0xfff;
        if matches!(major, 4 | 5 | 136..=143) {
            return Err((
                "terminal",
                "only pseudo-terminals are supported; start the program with stdio redirected to files, /dev/null or a pty",
            ));
        }
    }
    Ok(Class::Reg)
}

/// With `--shell-job`, an fd on the process's controlling terminal (the terminal of the
/// shell it was started from, whose session leader is not in the `tree`) is saved as
/// `/dev/tty`: on restore it opens the terminal cryo runs on. Returns that path when `fd` is
/// such an fd.
fn shell_tty(
    pid: i32,
    shell_job: bool,
    meta: Option<&std::fs::Metadata>,
    tree: &[i32],
) -> Option<String> {
    let m = meta.filter(|m| shell_job && m.file_type().is_char_device())?;
    let st = procfs::stat(pid).ok()?;
    let ctty = st.tty_nr;
    (ctty != 0 && m.rdev() == ctty as u64 && !tree.contains(&st.session))
        .then(|| "/dev/tty".to_string())
}

/// Checks every fd of `pid` can be dumped, without touching the task. Called before
/// seizing. Sockets are collected into `socks` as (pid, fd, inode) for
/// `unix_sk::precheck`, which looks at the whole tree.
pub fn precheck(
    pid: i32,
    shell_job: bool,
    tree: &[i32],
    socks: &mut Vec<(i32, i32, u32)>,
) -> Result<(), DumpError> {
    for fd in procfs::fds(pid).map_err(DumpError::Proc)? {
        let link = procfs::link(pid, &format!("fd/{fd}")).map_err(DumpError::Proc)?;
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
        if shell_tty(pid, shell_job, meta.as_ref(), tree).is_some() {
            continue;
        }
        match classify(&link, meta.as_ref()) {
            Err((what, hint)) => {
                return Err(DumpError::Unsupported {
                    pid,
                    object: format!("fd {fd} ({link})"),
                    what: format!("{what} is not supported yet"),
                    hint: hint.to_string(),
                })
            }
            Ok(Class::UnixSk) => {
                if let Some(ino) = super::unix_sk::inode(&link) {
                    socks.push((pid, fd, ino));
                }
            }
            // A POSIX message queue looks like a regular file named "/NAME": saved as one
            // with `cryo_mqueue` (its queue with the IPC namespace), unless it was unlinked.
            Ok(Class::Reg) if meta.as_ref().is_some_and(|m| m.is_file()) && is_mqueue(pid, fd) => {
                if link.ends_with(" (deleted)") {
                    return Err(DumpError::Unsupported {
                        pid,
                        object: format!("fd {fd} (POSIX message queue {link})"),
                        what: "the queue was unlinked (mq_unlink) while open".into(),
                        hint: "close it before the dump".into(),
                    });
                }
            }
            Ok(Class::Reg | Class::Fifo) if !link.ends_with(" (deleted)") => {
                // Reopened by path at restore, in the task's own root and mount namespace:
                // the path must lead there to this very file.
                use std::os::unix::fs::MetadataExt;
                let there = std::fs::metadata(format!("/proc/{pid}/root{link}")).ok();
                let same = match (&meta, &there) {
                    (Some(a), Some(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                    _ => true, // vanished meanwhile: the dump itself says what
                };
                if !same {
                    return Err(DumpError::Unsupported {
                        pid,
                        object: format!("fd {fd} ({link})"),
                        what: "the file is outside the process's root (opened before a chroot or pivot_root, or in another mount namespace), so it cannot be reopened by its path".into(),
                        hint: "open it from inside the container, or give it to the restored tree with --inherit-fd".into(),
                    });
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Whether fd `fd` of `pid` is on an mqueue filesystem.
fn is_mqueue(pid: i32, fd: i32) -> bool {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    nix::sys::statfs::statfs(format!("/proc/{pid}/fd/{fd}").as_str())
        .is_ok_and(|s| s.filesystem_type().0 == MQUEUE_MAGIC)
}

/// Sets the file-status flags F_SETFL can change on cryo's object `id`.
pub fn set_fl(fd: BorrowedFd<'_>, flags: u32, id: u32) -> Result<(), RestoreError> {
    sys::fd::fcntl(fd, libc::F_SETFL, (flags & SETFL_MASK) as i64)
        .map(|_| ())
        .map_err(obj_err(id, "F_SETFL"))
}

/// One fd of the frozen target, as the kind modules see it at dump.
pub struct TargetFd<'a> {
    pub pid: i32,
    pub fd: i32,
    /// readlink of /proc/PID/fd/N.
    pub link: &'a str,
    pub meta: Option<&'a std::fs::Metadata>,
    /// /proc/PID/fdinfo/N, parsed and raw.
    pub info: &'a procfs::FdInfo,
    pub fdinfo: &'a str,
    /// A pidfd of the target, for `pidfd_getfd`.
    pub pidfd: BorrowedFd<'a>,
}

impl TargetFd<'_> {
    /// The open file flags to save (without O_CLOEXEC, which belongs to the fd).
    pub fn flags(&self) -> u32 {
        self.info.flags & !(libc::O_CLOEXEC as u32)
    }

    /// A copy of the target's fd in cryo (the same open file description).
    pub fn take(&self) -> Result<OwnedFd, DumpError> {
        sys::fd::pidfd_getfd(self.pidfd, self.fd).map_err(|e| self.err("pidfd_getfd", e))
    }

    /// An error about this fd.
    pub fn err(&self, what: impl Into<String>, source: std::io::Error) -> DumpError {
        DumpError::File {
            pid: self.pid,
            fd: self.fd,
            what: format!("{} ({}): {}", what.into(), self.link, source),
            source,
        }
    }

    /// A field of the fdinfo text ("eventfd-count", "sigmask", ...).
    pub fn field(&self, name: &str) -> Result<String, DumpError> {
        self.fdinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == name).then(|| v.trim().to_string())
            })
            .ok_or_else(|| {
                self.err(
                    format!("fdinfo has no '{name}'"),
                    std::io::Error::from_raw_os_error(libc::ENODATA),
                )
            })
    }
}

/// A kind of open file other than a regular one: both halves, side by side.
pub trait FdKind {
    /// The files.img record of a new open file description, with id `id`.
    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, DumpError>;
    /// Creates the object in cryo from its record; puppets take it with `pidfd_getfd`.
    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, RestoreError>;
}

/// File-status flags F_SETFL can change.
pub const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_NOATIME) as u32;

/// A files.img entry without the record its type needs.
pub fn missing(id: u32, what: &str) -> RestoreError {
    RestoreError::BadImage(format!("files.img entry {id} has no {what} record"))
}

/// An error creating object `id` in cryo.
pub fn obj_err(id: u32, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::File { id, what, source }
}

/// The open files restore creates in cryo (one per file id, made on first use), with the
/// per-kind state that spans several ids (the two ends of a pipe, a FIFO kept open).
pub struct FdObjects {
    pub dir: ImageDir,
    pub files: HashMap<u32, pb::FileEntry>,
    made: HashMap<u32, OwnedFd>,
    pub pipes: super::pipes::PipeStore,
    /// Epoll ids whose watch list was already filled (by the first task that has them).
    pub epolls_filled: HashSet<u32>,
    /// Shared anonymous memory inodes (not fds, but made and handed over the same way).
    pub shmem: super::shmem::ShmemStore,
    pub unix: super::unix_sk::UnixStore,
    pub ghosts: super::ghost::GhostStore,
    pub memfds: super::memfd::MemfdStore,
    pub tty: super::tty::TtyStore,
    /// `--inherit-fd` / RPC `inherit_fd`: objects the caller hands in instead of the dumped
    /// ones, by CRIU key (`pipe:[INO]`: every fd of the tree that was pipe inode INO at dump
    /// gets a dup of this one). cryo's own dups.
    pub inherited: HashMap<String, OwnedFd>,
    /// The root puppet (host PID) once the tree's network or mount namespace exists: unix
    /// sockets, FIFOs and inotify watches are made inside its namespaces.
    pub ns_pid: Option<i32>,
}

/// Is `key` an inherit-fd key cryo can honour (`pipe:[INO]`)?
pub fn inherit_key_supported(key: &str) -> bool {
    key.strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

impl FdObjects {
    /// Takes dups of the caller's fds for `--inherit-fd` (KEY, fd in cryo's own table).
    pub fn inherit(&mut self, list: &[(String, i32)]) -> Result<(), RestoreError> {
        for (key, fd) in list {
            if !inherit_key_supported(key) {
                return Err(RestoreError::Unsupported(format!(
                    "inherit-fd key '{key}': cryo can replace pipes only (pipe:[INODE])"
                )));
            }
            let dup = crate::sys::fd::dup_raw(*fd).map_err(|source| RestoreError::File {
                id: 0,
                what: format!("inherited fd {fd} for {key}"),
                source,
            })?;
            self.inherited.insert(key.clone(), dup);
        }
        Ok(())
    }

    pub fn new(
        dir: &ImageDir,
        files: &HashMap<u32, pb::FileEntry>,
        tasks: &[super::TaskImages],
    ) -> Result<Self, RestoreError> {
        Ok(FdObjects {
            dir: ImageDir::open(&dir.path)?,
            files: files.clone(),
            made: HashMap::new(),
            pipes: Default::default(),
            epolls_filled: HashSet::new(),
            shmem: super::shmem::ShmemStore::new(tasks),
            unix: Default::default(),
            ghosts: super::ghost::GhostStore::load(dir)?,
            memfds: Default::default(),
            tty: Default::default(),
            inherited: HashMap::new(),
            ns_pid: None,
        })
    }

    /// Closes every object cryo made (the puppets hold their own fds now).
    pub fn close_all(&mut self) {
        self.made.clear();
        self.pipes = Default::default();
        self.shmem = Default::default();
        self.unix = Default::default();
        self.ghosts.unlink_all();
        self.memfds = Default::default();
        self.tty.close();
        self.inherited.clear();
    }

    /// The record of file `id`.
    pub fn entry(&self, id: u32) -> Result<&pb::FileEntry, RestoreError> {
        self.files.get(&id).ok_or(RestoreError::BadImage(format!(
            "files.img has no entry with id {id}"
        )))
    }

    /// cryo's fd for file `id`, created on first use.
    pub fn get(&mut self, id: u32) -> Result<i32, RestoreError> {
        if let Some(fd) = self.made.get(&id) {
            return Ok(fd.as_raw_fd());
        }
        let e = self.entry(id)?.clone();
        let e = &e;
        let ty = pb::FdTypes::try_from(e.r#type);
        let by_path = matches!(
            ty,
            Ok(pb::FdTypes::Unixsk | pb::FdTypes::Fifo | pb::FdTypes::Inotify)
        );
        let _in_ns = match self.ns_pid.filter(|_| by_path) {
            Some(pid) => {
                // Images are read before the paths change.
                match ty {
                    Ok(pb::FdTypes::Unixsk) => super::unix_sk::load_queues(self)?,
                    Ok(pb::FdTypes::Fifo) => {
                        super::pipes::load(self, true)?;
                    }
                    _ => {}
                }
                Some(
                    super::ns::InNs::enter(pid, true).map_err(|source| RestoreError::File {
                        id,
                        what: "enter the tree's namespaces".into(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let fd = match ty {
            Ok(pb::FdTypes::Pipe) => super::pipes::Pipes::open(self, e)?,
            Ok(pb::FdTypes::Fifo) => super::pipes::Fifos::open(self, e)?,
            Ok(pb::FdTypes::Eventfd) => super::eventfd::EventFd::open(self, e)?,
            Ok(pb::FdTypes::Signalfd) => super::signalfd::SignalFd::open(self, e)?,
            Ok(pb::FdTypes::Timerfd) => super::timerfd::TimerFd::open(self, e)?,
            Ok(pb::FdTypes::Eventpoll) => super::epoll::Epoll::open(self, e)?,
            Ok(pb::FdTypes::Inotify) => super::inotify::Inotify::open(self, e)?,
            Ok(pb::FdTypes::Unixsk) => super::unix_sk::UnixSk::open(self, e)?,
            Ok(pb::FdTypes::Memfd) => super::memfd::Memfd::open(self, e)?,
            Ok(pb::FdTypes::Tty) => super::tty::Tty::open(self, e)?,
            _ => {
                return Err(RestoreError::Unsupported(format!(
                    "file {id} has type {} which this cryo cannot restore",
                    e.r#type
                )))
            }
        };
        let raw = fd.as_raw_fd();
        self.made.insert(id, fd);
        Ok(raw)
    }
}

impl Kind for Files {
    const NAME: &'static str = "files";

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), DumpError> {
        if img.files_shared.is_some() {
            return Ok(()); // saved with the task it shares the table with
        }
        let pid = cx.pid;
        let mut pidfd = None;
        for fd in procfs::fds(pid).map_err(DumpError::Proc)? {
            let link = procfs::link(pid, &format!("fd/{fd}")).map_err(DumpError::Proc)?;
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
            let tty = shell_tty(pid, cx.files.shell_job, meta.as_ref(), &cx.files.tree);
            let class = match tty {
                Some(_) => Ok(Class::Reg),
                None => classify(&link, meta.as_ref()),
            };
            let class = class.map_err(|(what, hint)| DumpError::Unsupported {
                pid,
                object: format!("fd {fd} ({link})"),
                what: format!("{what} is not supported yet"),
                hint: hint.to_string(),
            })?;
            let link = tty.unwrap_or(link);
            let text = procfs::read(pid, &format!("fdinfo/{fd}")).map_err(DumpError::Proc)?;
            let info = procfs::parse_fdinfo(&text).ok_or_else(|| {
                DumpError::Proc(procfs::ProcError::Parse {
                    path: format!("/proc/{pid}/fdinfo/{fd}").into(),
                    what: "unexpected format".into(),
                })
            })?;
            // Same open file description as an earlier fd (of any process)?
            let mut id = None;
            // Only fds on the same inode can share a description: compare those alone.
            let key = meta.as_ref().map(|m| (m.dev(), m.ino()));
            for &(opid, other, oid) in cx.files.fds_by_inode.get(&key).into_iter().flatten() {
                if kcmp(pid, opid, KCMP_FILE, fd as u64, other as u64).ok() == Some(0) {
                    id = Some(oid);
                    break;
                }
            }
            let id = match (id, class) {
                (Some(i), _) => i,
                (None, Class::Reg) => {
                    let meta = meta.as_ref().ok_or_else(|| DumpError::Unsupported {
                        pid,
                        object: format!("fd {fd} ({link})"),
                        what: "the file cannot be looked up from cryo".into(),
                        hint: "is it in another mount namespace? containers come with issue #4"
                            .into(),
                    })?;
                    let deleted = link.strip_suffix(" (deleted)");
                    let id = cx.files.add_reg(
                        deleted.unwrap_or(&link).to_string(),
                        info.flags & !(libc::O_CLOEXEC as u32),
                        info.pos,
                        meta.is_file().then_some(meta.len()),
                        meta.mode(),
                    );
                    if meta.is_file() && is_mqueue(pid, fd) {
                        if let Some(r) = cx.files.entries.last_mut().and_then(|e| e.reg.as_mut()) {
                            r.cryo_mqueue = Some(true);
                            r.size = None;
                        }
                    }
                    if deleted.is_some() {
                        super::ghost::dump(
                            cx.files,
                            pid,
                            &format!("fd {fd} ({link})"),
                            &format!("/proc/{pid}/fd/{fd}"),
                            meta,
                            id,
                        )?;
                    }
                    id
                }
                (None, _) => {
                    if pidfd.is_none() {
                        pidfd =
                            Some(
                                sys::fd::pidfd_open(pid).map_err(|source| DumpError::Ptrace {
                                    pid,
                                    what: "pidfd_open",
                                    source,
                                })?,
                            );
                    }
                    let t = TargetFd {
                        pid,
                        fd,
                        link: &link,
                        meta: meta.as_ref(),
                        info: &info,
                        fdinfo: &text,
                        pidfd: pidfd.as_ref().expect("opened above").as_fd(),
                    };
                    let id = cx.files.alloc();
                    let e = match class {
                        Class::Pipe => super::pipes::Pipes::dump(cx, &t, id)?,
                        Class::Fifo => super::pipes::Fifos::dump(cx, &t, id)?,
                        Class::EventFd => super::eventfd::EventFd::dump(cx, &t, id)?,
                        Class::SignalFd => super::signalfd::SignalFd::dump(cx, &t, id)?,
                        Class::TimerFd => super::timerfd::TimerFd::dump(cx, &t, id)?,
                        Class::Epoll => super::epoll::Epoll::dump(cx, &t, id)?,
                        Class::Inotify => super::inotify::Inotify::dump(cx, &t, id)?,
                        Class::UnixSk => super::unix_sk::UnixSk::dump(cx, &t, id)?,
                        Class::Memfd => super::memfd::Memfd::dump(cx, &t, id)?,
                        Class::Tty => super::tty::Tty::dump(cx, &t, id)?,
                        Class::Reg => unreachable!("handled above"),
                    };
                    cx.files.entries.push(e);
                    id
                }
            };
            cx.files
                .fds_by_inode
                .entry(key)
                .or_default()
                .push((pid, fd, id));
            img.fdinfo.push(pb::FdinfoEntry {
                id,
                flags: if info.flags & libc::O_CLOEXEC as u32 != 0 {
                    libc::FD_CLOEXEC as u32
                } else {
                    0
                },
                r#type: class.fd_type() as i32,
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
/// offset; every other inherited fd is closed. Non-regular files are made in cryo
/// ([`FdObjects`]) and taken by the puppet with `pidfd_getfd`.
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
    let objs_cell = cx.objs;
    // The puppet's pidfd of cryo: the one it inherited (kept), or one opened here (closed).
    let kept = cx.cryo_pidfd.map(|p| p as u64);
    let mut cryo_pidfd: Option<u64> = kept;
    let mut opened: HashMap<u32, u32> = HashMap::new(); // file id -> fd
    for f in &fds {
        let cloexec = if f.flags & libc::FD_CLOEXEC as u32 != 0 {
            libc::O_CLOEXEC as u64
        } else {
            0
        };
        if let Some(&src) = opened.get(&f.id).or(taken.get(&f.id)) {
            cx.sys(
                "dup3",
                libc::SYS_dup3,
                [src as u64, f.fd as u64, cloexec, 0, 0, 0],
            )?;
            opened.entry(f.id).or_insert(f.fd);
            continue;
        }
        let tmp = if f.r#type == pb::FdTypes::Reg as i32 {
            open_reg(cx, f.id)? as u64
        } else if super::tty::is_dev_tty(cx.files, f.id) {
            if img.pstree.sid == img.pid {
                // A session leader has no terminal before its setsid: tty::take_ctty opens it.
                continue;
            }
            super::tty::open_dev_tty(cx, f.id)? as u64
        } else {
            let local = objs_cell.borrow_mut().get(f.id)?;
            let pidfd = match cryo_pidfd {
                Some(p) => p,
                None => {
                    let p = cx.sys(
                        "pidfd_open (cryo)",
                        libc::SYS_pidfd_open,
                        [std::process::id() as u64, 0, 0, 0, 0, 0],
                    )?;
                    // Out of the way of the fd numbers still to be filled.
                    let high = cx.sys(
                        "fcntl(F_DUPFD)",
                        libc::SYS_fcntl,
                        [p, libc::F_DUPFD as u64, max_target as u64 + 1, 0, 0, 0],
                    )?;
                    cx.sys("close", libc::SYS_close, [p, 0, 0, 0, 0, 0])?;
                    cryo_pidfd = Some(high);
                    high
                }
            };
            // The new fd has FD_CLOEXEC set.
            let got = cx.sys(
                "pidfd_getfd",
                libc::SYS_pidfd_getfd,
                [pidfd, local as u64, 0, 0, 0, 0],
            )?;
            if got == f.fd as u64 && cloexec == 0 {
                cx.sys(
                    "fcntl(F_SETFD)",
                    libc::SYS_fcntl,
                    [got, libc::F_SETFD as u64, 0, 0, 0, 0],
                )?;
            }
            got
        };
        cx.place_fd(tmp, f.fd, cloexec)?;
        opened.insert(f.id, f.fd);
    }
    if let Some(p) = cryo_pidfd.filter(|_| kept.is_none()) {
        cx.sys("close", libc::SYS_close, [p, 0, 0, 0, 0, 0])?;
    }
    if !taken.is_empty() {
        let mut ranges = vec![(max_target as u64 + 1, u32::MAX as u64)];
        if let Some(k) = kept {
            ranges = vec![(max_target as u64 + 1, k - 1), (k + 1, u32::MAX as u64)];
        }
        for (lo, hi) in ranges.into_iter().filter(|(lo, hi)| lo <= hi) {
            cx.sys("close_range", libc::SYS_close_range, [lo, hi, 0, 0, 0, 0])?;
        }
    }
    // Epoll watch lists name the fds of this task, which all exist now.
    for f in &fds {
        if f.r#type == pb::FdTypes::Eventpoll as i32 {
            super::epoll::fill(cx, &mut objs_cell.borrow_mut(), f)?;
        }
    }
    Ok(FdTable {
        by_id: opened,
        max_fd: max_target,
    })
}

/// Opens regular-file record `id` in the puppet, at its saved offset; returns the fd.
fn open_reg(cx: &mut RestoreCx<'_>, id: u32) -> Result<i32, RestoreError> {
    let reg = cx.reg(id)?.clone();
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
    let fd = open_file(cx, id, reg.flags)?;
    if reg.pos != 0 {
        cx.sys(
            "lseek",
            libc::SYS_lseek,
            [fd as u64, reg.pos, libc::SEEK_SET as u64, 0, 0, 0],
        )?;
    }
    Ok(fd)
}

/// Opens the file of regular-file record `id` in the puppet with `flags` (a deleted file
/// is recreated from its ghost image by cryo and handed over); returns the puppet's fd.
pub fn open_file(cx: &mut RestoreCx<'_>, id: u32, flags: u32) -> Result<i32, RestoreError> {
    let cell = cx.objs;
    if cx.files.get(&id).map(|f| f.r#type) == Some(pb::FdTypes::Memfd as i32) {
        // A mapped memfd: the puppet takes cryo's memfd.
        let local = cell.borrow_mut().get(id)?;
        return Ok(cx.take_from_cryo(local)? as i32);
    }
    let reg = cx.reg(id)?.clone();
    let flags = flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
    if reg.cryo_mqueue == Some(true) {
        // Opened by name in the puppet's IPC namespace, whose queues exist by now.
        // The queue's name is the last component (the fd may have been opened through a
        // mount of the mqueue file system, e.g. /dev/mqueue/NAME).
        let name = reg.name.rsplit('/').next().unwrap_or_default();
        let p = cx.put_path(name)?;
        let mode = flags & (libc::O_ACCMODE | libc::O_NONBLOCK) as u32;
        return Ok(cx.sys("mq_open", libc::SYS_mq_open, [p, mode as u64, 0, 0, 0, 0])? as i32);
    }
    if cell.borrow().ghosts.is_ghost(id) {
        let local = {
            let mut objs = cell.borrow_mut();
            let objs = &mut *objs;
            objs.ghosts
                .open(&objs.dir, id, &reg.name, flags, objs.ns_pid)?
        };
        return Ok(cx.take_from_cryo(local.as_raw_fd())? as i32);
    }
    if reg.name == "/dev/tty" {
        // A shell job's terminal: the one cryo runs on, by its real name (/dev/pts/N), as the
        // program had it.
        if let Some(p) = own_terminal() {
            return cx.open(&p, flags);
        }
    }
    cx.open(&reg.name, flags)
}

/// The path of cryo's controlling terminal, when one of its stdio fds is on it.
fn own_terminal() -> Option<String> {
    let me = std::process::id() as i32;
    let ctty = procfs::stat(me).ok()?.tty_nr as u64;
    (0..3).find_map(|fd| {
        let m = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        (ctty != 0 && m.file_type().is_char_device() && m.rdev() == ctty)
            .then(|| procfs::link(me, &format!("fd/{fd}")).ok())
            .flatten()
    })
}
