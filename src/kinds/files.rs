//! The fd table: which files a task has open, at which fd numbers, with which flags and
//! offsets (files.img + fdinfo-N.img), and [`FD_KINDS`], the table of every other kind of
//! open file.
//!
//! Regular files, directories and character devices that are not terminals (/dev/null,
//! /dev/zero, ...) are CRIU "REG" records by path, handled here. Every other kind of open
//! file (pipes, FIFOs, eventfd, signalfd, timerfd, epoll, inotify, memfd, unix sockets,
//! terminals) is a module implementing [`FdKind`] plus one line in [`FD_KINDS`]: the first
//! kind whose `claims` accepts an fd's /proc link, stat and socket family owns it. Dump
//! reads the object through a copy of the target's fd taken with `pidfd_getfd`; restore
//! creates the object in cryo ([`FdObjects`]) and the puppet takes it with `pidfd_getfd` on
//! cryo, so fds that shared an open file description share one again, across processes too.
//! An fd no kind claims makes the dump stop *before* it touches the task, naming the fd, its
//! type and path, and what to do.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::error::{task_error_from, Failure, TaskError, Unsupported};
use super::{DumpCx, DumpedFd, Kind, RemoteFd, RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::image::ImageDir;
use crate::num::c_uint;
use crate::procfs;
use crate::sys;
use crate::sys::proc::{kcmp, KCMP_FILE};

/// The fd table of a process.
pub struct Files;

/// Every kind of open file other than a regular one, in the order their `claims` are asked.
/// A new kind is a module implementing [`FdKind`] and one line here.
pub static FD_KINDS: &[FdOps] = &[
    FdOps::of::<super::pipes::Pipes>(),
    FdOps::of::<super::pipes::Fifos>(),
    FdOps::of::<super::eventfd::EventFd>(),
    FdOps::of::<super::signalfd::SignalFd>(),
    FdOps::of::<super::timerfd::TimerFd>(),
    FdOps::of::<super::epoll::Epoll>(),
    FdOps::of::<super::inotify::Inotify>(),
    FdOps::of::<super::fanotify::Fanotify>(),
    FdOps::of::<super::memfd::Memfd>(),
    FdOps::of::<super::unix_sk::UnixSk>(),
    FdOps::of::<super::inet_sk::InetSk>(),
    FdOps::of::<super::netlink_sk::NetlinkSk>(),
    FdOps::of::<super::packet_sk::PacketSk>(),
    FdOps::of::<super::tun::Tun>(),
    FdOps::of::<super::tty::Tty>(),
    FdOps::of::<super::pidfd::PidFd>(),
    FdOps::of::<super::nsfile::NsFile>(),
];

/// Why the fd table could not be saved or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The error of the fd kind that owns the object.
    #[error(transparent)]
    Kind(#[from] KindFailure),
    /// A deleted file (saved as a ghost file).
    #[error(transparent)]
    Ghost(#[from] super::ghost::GhostError),
    /// `/dev/tty`, opened in the puppet.
    #[error(transparent)]
    Tty(#[from] super::tty::TtyError),
    /// A pidfd of a process of the tree, opened in the puppet.
    #[error(transparent)]
    PidFd(#[from] super::pidfd::PidFdError),
    /// A removed file with other names (`--link-remap`).
    #[error(transparent)]
    LinkRemap(#[from] super::linkremap::LinkRemapError),
}
task_error_from!(FilesError, no_failure);

impl Failure for FilesError {
    fn hint(&self) -> Option<String> {
        match self {
            FilesError::Task(e) => e.hint(),
            FilesError::Kind(k) => k.inner.hint(),
            FilesError::Ghost(e) => e.hint(),
            FilesError::Tty(e) => e.hint(),
            FilesError::PidFd(e) => e.hint(),
            FilesError::LinkRemap(e) => e.hint(),
        }
    }
}

/// An fd kind's own error, named by the kind (what the table's entry points return).
#[derive(Debug)]
pub struct KindFailure {
    /// The kind's name ([`FdKind::NAME`]).
    pub kind: &'static str,
    pub inner: Box<dyn Failure>,
}

impl std::fmt::Display for KindFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.inner, self.kind)
    }
}

impl std::error::Error for KindFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl FilesError {
    fn kind<K: FdKind>(e: K::Error) -> FilesError {
        FilesError::Kind(KindFailure {
            kind: K::NAME,
            inner: Box::new(e),
        })
    }
}

/// What cryo knows of an fd before deciding which kind owns it.
pub struct FdProbe<'a> {
    pub pid: i32,
    pub fd: i32,
    /// readlink of /proc/PID/fd/N ("pipe:[123]", "/tmp/f (deleted)", ...).
    pub link: &'a str,
    /// stat of /proc/PID/fd/N (None if it could not be looked up from cryo).
    pub meta: Option<&'a std::fs::Metadata>,
    /// For a socket: its (domain, type, protocol), read from the socket itself.
    pub socket: Option<(i32, i32, i32)>,
    /// For a socket: cryo's copy of it (`pidfd_getfd`, taken to read `socket`), so that a
    /// kind's check does not take another.
    pub copy: Option<BorrowedFd<'a>>,
    /// For a socket: the inode of its process's network namespace (read once per process).
    pub netns: Option<u64>,
    /// The socket options of the command (`--tcp-established`, ...).
    pub sock: SockOpts,
    /// The processes of the tree (a socket of a network namespace none of them is in is
    /// refused).
    pub tree: &'a [i32],
}

/// The options that decide which sockets can be dumped and how they come back (CRIU's
/// `--tcp-established`, `--tcp-close`, `--skip-in-flight`, `--ext-unix-sk`; RPC
/// `tcp_established`, `tcp_close`, `tcp_skip_in_flight`, `ext_unix_sk`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockOpts {
    /// Established TCP connections are saved (TCP repair mode) and restored.
    pub tcp_established: bool,
    /// Established TCP connections are dropped: restored closed.
    pub tcp_close: bool,
    /// Connections waiting in a listener's accept queue are dropped.
    pub skip_in_flight: bool,
    /// A unix socket whose peer is outside the tree is connected to that peer again.
    pub ext_unix_sk: bool,
}

impl FdProbe<'_> {
    /// The file was unlinked while open.
    pub fn deleted(&self) -> bool {
        self.link.ends_with(" (deleted)")
    }
    /// A path of the file system, not deleted.
    pub fn live_path(&self) -> bool {
        self.link.starts_with('/') && !self.deleted()
    }
}

/// An fd of the tree, as the tree-wide pre-seize checks see it.
#[derive(Debug, Clone)]
pub struct PrecheckFd {
    pub pid: i32,
    pub fd: i32,
    pub link: String,
}

/// A kind of open file other than a regular one: both halves, side by side, and how an fd
/// is recognised. Every method but `claims`, `dump` and `open` has a default.
pub trait FdKind {
    /// Name in logs and errors ("eventfd", "unix socket", ...).
    const NAME: &'static str;
    /// Its files.img record type.
    const TYPE: pb::FdTypes;
    /// Restore makes the object inside the tree's network and mount namespaces (a socket
    /// bound to a name there, a FIFO or a watched file found by its path there).
    const IN_TREE_NS: bool = false;
    /// The kind's own error.
    type Error: Failure + From<TaskError>;

    /// Is the fd `p` one of this kind's?
    fn claims(p: &FdProbe<'_>) -> bool;
    /// Checks one fd before the tree is touched.
    fn precheck(_p: &FdProbe<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Checks every fd of this kind in the tree at once, before the tree is touched.
    fn precheck_tree(_fds: &[PrecheckFd], _opts: &SockOpts) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The files.img record of a new open file description, with id `id`.
    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, Self::Error>;
    /// Reads what `open` needs from the images, before cryo enters the tree's namespaces.
    fn load(_objs: &mut FdObjects) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Creates the object in cryo from its record; puppets take it with `pidfd_getfd`.
    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, Self::Error>;
    /// Runs in the puppet once every fd of the task exists (epoll adds its watches). A kind
    /// that adds one must be named where `restore_fds_in` runs the held-back calls first.
    fn after_fds(
        _cx: &mut RestoreCx<'_>,
        _objs: &mut FdObjects,
        _f: &pb::FdinfoEntry,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

type ClaimsFn = fn(&FdProbe<'_>) -> bool;
type PrecheckFn = fn(&FdProbe<'_>) -> Result<(), FilesError>;
type PrecheckTreeFn = fn(&[PrecheckFd], &SockOpts) -> Result<(), FilesError>;
type DumpFn = fn(&mut DumpCx<'_>, &TargetFd<'_>, u32) -> Result<pb::FileEntry, FilesError>;
type LoadFn = fn(&mut FdObjects) -> Result<(), FilesError>;
type OpenFn = fn(&mut FdObjects, &pb::FileEntry) -> Result<OwnedFd, FilesError>;
type AfterFdsFn =
    fn(&mut RestoreCx<'_>, &mut FdObjects, &pb::FdinfoEntry) -> Result<(), FilesError>;

/// One line of [`FD_KINDS`]: an [`FdKind`]'s entry points, its errors named by the kind.
pub struct FdOps {
    pub name: &'static str,
    pub fd_type: pb::FdTypes,
    pub in_tree_ns: bool,
    pub claims: ClaimsFn,
    pub precheck: PrecheckFn,
    pub precheck_tree: PrecheckTreeFn,
    pub dump: DumpFn,
    pub load: LoadFn,
    pub open: OpenFn,
    pub after_fds: AfterFdsFn,
}

impl FdOps {
    /// The table line of kind `K`.
    pub const fn of<K: FdKind>() -> FdOps {
        FdOps {
            name: K::NAME,
            fd_type: K::TYPE,
            in_tree_ns: K::IN_TREE_NS,
            claims: K::claims,
            precheck: |p| K::precheck(p).map_err(FilesError::kind::<K>),
            precheck_tree: |fds, o| K::precheck_tree(fds, o).map_err(FilesError::kind::<K>),
            dump: |cx, fd, id| K::dump(cx, fd, id).map_err(FilesError::kind::<K>),
            load: |objs| K::load(objs).map_err(FilesError::kind::<K>),
            open: |objs, e| K::open(objs, e).map_err(FilesError::kind::<K>),
            after_fds: |cx, objs, f| K::after_fds(cx, objs, f).map_err(FilesError::kind::<K>),
        }
    }

    /// The line for files.img records of type `t`.
    pub fn for_type(t: i32) -> Option<&'static FdOps> {
        FD_KINDS.iter().find(|k| k.fd_type as i32 == t)
    }
}

/// A name for a socket family, for messages.
fn family_name(domain: i32) -> String {
    match domain {
        libc::AF_UNIX => "unix".into(),
        libc::AF_INET => "IPv4 (AF_INET)".into(),
        libc::AF_INET6 => "IPv6 (AF_INET6)".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_VSOCK => "vsock".into(),
        libc::AF_ALG => "AF_ALG".into(),
        libc::AF_XDP => "XDP".into(),
        libc::AF_BLUETOOTH => "bluetooth".into(),
        d => format!("family {d}"),
    }
}

/// The kind that owns the fd `p`, `None` for a regular-file record, or why it cannot be
/// dumped: (what it is, what to do).
fn classify(p: &FdProbe<'_>) -> Result<Option<&'static FdOps>, (String, &'static str)> {
    if let Some(k) = FD_KINDS.iter().find(|k| (k.claims)(p)) {
        return Ok(Some(k));
    }
    let hint_fd = "close it before the dump";
    let link = p.link;
    if let Some((domain, _, _)) = p.socket {
        let hint = match domain {
            libc::AF_VSOCK => "vsock connections to the host or to VMs cannot be checkpointed; close it before the dump and connect again after the restore",
            libc::AF_ALG => "kernel crypto (AF_ALG) sockets cannot be checkpointed; close it before the dump and open it again after the restore",
            libc::AF_XDP => "XDP sockets (their UMEM and rings) cannot be checkpointed; close it before the dump",
            _ => "close it before the dump",
        };
        return Err((format!("{} socket", family_name(domain)), hint));
    }
    if let Some(kind) = link.strip_prefix("anon_inode:") {
        let what = match kind {
            "[pidfd]" => "pidfd",
            "[io_uring]" => "io_uring",
            "[userfaultfd]" => "userfaultfd",
            "bpf-map" | "bpf-prog" => "bpf",
            "[perf_event]" => "perf_event",
            "[fanotify]" => "fanotify",
            _ => "anonymous inode",
        };
        return Err((what.into(), hint_fd));
    }
    if link.starts_with("socket:") {
        return Err(("socket of an unknown family".into(), hint_fd));
    }
    if p.deleted() && p.meta.is_some_and(|m| m.file_type().is_socket()) {
        // Deleted files, directories, devices and symlinks are saved as ghost files (FIFOs
        // by their kind); a socket file cannot be bound again to a name no one sees.
        return Err(("deleted socket file".into(), hint_fd));
    }
    if !link.starts_with('/') {
        return Err(("special file".into(), hint_fd));
    }
    let Some(m) = p.meta else {
        return Ok(None);
    };
    let ft = m.file_type();
    if ft.is_socket() {
        return Err((
            "socket file opened as a file (O_PATH)".into(),
            "close it before the dump",
        ));
    }
    if ft.is_char_device() {
        let (major, minor) = ((m.rdev() >> 8) & 0xfff, m.rdev() & 0xff);
        // Virtual terminals (4:0-63) and /dev/console (5:1) are reopened by path.
        let vt_or_console = (major == 4 && minor < 64) || (major == 5 && minor == 1);
        if matches!(major, 4 | 5 | 136..=143) && !vt_or_console {
            return Err((
                "terminal".into(),
                "only pseudo-terminals, virtual terminals and /dev/console are supported; start the program with stdio redirected to files, /dev/null or a pty",
            ));
        }
    }
    Ok(None)
}

/// A socket's (domain, type, protocol) and cryo's copy of it.
type SocketCopy = ((i32, i32, i32), OwnedFd);

/// For an fd whose link says it is a socket: its (domain, type, protocol), read through a
/// copy of it (`pidfd_getfd`; the target is not touched), and that copy, which the kind's
/// checks and dump use too. `pidfd` is opened on first use.
fn socket_of(
    pid: i32,
    fd: i32,
    link: &str,
    pidfd: &mut Option<OwnedFd>,
) -> Result<Option<SocketCopy>, TaskError> {
    if !link.starts_with("socket:") {
        return Ok(None);
    }
    let err = |what: &str| {
        let what = what.to_string();
        move |source| TaskError::Fd {
            pid,
            fd,
            what,
            source,
        }
    };
    if pidfd.is_none() {
        *pidfd = Some(sys::fd::pidfd_open(pid).map_err(err("pidfd_open"))?);
    }
    let own = sys::fd::pidfd_getfd(pidfd.as_ref().expect("opened above").as_fd(), fd)
        .map_err(err("pidfd_getfd"))?;
    let kind = sys::net::socket_kind(own.as_fd()).map_err(err("getsockopt(SO_DOMAIN)"))?;
    Ok(Some((kind, own)))
}

/// An fd no kind can dump.
fn refuse(pid: i32, fd: i32, link: &str, (what, hint): (String, &str)) -> Unsupported {
    Unsupported::of(
        pid,
        format!("fd {fd} ({link})"),
        format!("{what} is not supported yet"),
        hint,
    )
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
    (ctty != 0 && m.rdev() == u64::from(ctty) && !tree.contains(&st.session))
        .then(|| "/dev/tty".to_string())
}

/// What the pre-seize checks collect over the whole tree: the fds of each kind, for the
/// kinds' tree-wide checks ([`precheck_tree`]).
#[derive(Debug, Default)]
pub struct Precheck {
    by_kind: HashMap<&'static str, Vec<PrecheckFd>>,
    /// The command's socket options.
    pub sock: SockOpts,
}

/// Checks every fd of `pid` can be dumped, without touching the task. Called before
/// seizing, for every process of the tree; then [`precheck_tree`].
pub fn precheck(
    pid: i32,
    shell_job: bool,
    tree: &[i32],
    pc: &mut Precheck,
) -> Result<(), FilesError> {
    let mut pidfd = None;
    let mut netns = None;
    let mut mounts = MountsSeen::default();
    for fd in procfs::fds(pid)? {
        // The tree still runs: an fd closed since the listing is no longer ours to check
        // (the dump itself reads the table again once the tree is frozen).
        let gone =
            |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF));
        let link = match procfs::link(pid, &format!("fd/{fd}")) {
            Err(procfs::ProcError::Read { source, .. }) if gone(&source) => continue,
            r => r?,
        };
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
        if shell_tty(pid, shell_job, meta.as_ref(), tree).is_some() {
            continue;
        }
        let socket = match socket_of(pid, fd, &link, &mut pidfd) {
            Err(TaskError::Fd { source, .. }) if gone(&source) => continue,
            r => r?,
        };
        let p = FdProbe {
            pid,
            fd,
            link: &link,
            meta: meta.as_ref(),
            socket: socket.as_ref().map(|s| s.0),
            copy: socket.as_ref().map(|s| s.1.as_fd()),
            netns: match (&socket, netns) {
                (None, _) => None,
                (Some(_), Some(n)) => Some(n),
                (Some(_), None) => {
                    netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                        .ok()
                        .map(|m| m.ino());
                    netns
                }
            },
            sock: pc.sock,
            tree,
        };
        match classify(&p) {
            Err(why) => return Err(refuse(pid, fd, &link, why).into()),
            Ok(Some(k)) => {
                (k.precheck)(&p)?;
                pc.by_kind.entry(k.name).or_default().push(PrecheckFd {
                    pid,
                    fd,
                    link: link.clone(),
                });
            }
            // A POSIX message queue looks like a regular file named "/NAME": saved as one
            // with `cryo_mqueue` (its queue with the IPC namespace), unless it was unlinked.
            Ok(None) if meta.as_ref().is_some_and(|m| m.is_file()) && is_mqueue(pid, fd) => {
                if p.deleted() {
                    return Err(Unsupported::of(
                        pid,
                        format!("fd {fd} (POSIX message queue {link})"),
                        "the queue was unlinked (mq_unlink) while open",
                        "close it before the dump",
                    )
                    .into());
                }
            }
            Ok(None) if !p.deleted() => {
                if let Err(e) = reachable_by_path(&p) {
                    if !reachable_from_tree(&p, tree) {
                        return Err(e.into());
                    }
                }
                if meta.as_ref().is_some_and(|m| m.is_file()) {
                    not_overmounted(&p, &mut mounts)?;
                }
            }
            Ok(None) => {}
        }
    }
    Ok(())
}

/// What [`not_overmounted`] learnt of a task's mounts: its mountinfo, and per mount id
/// whether its mount point still leads to it.
#[derive(Default)]
struct MountsSeen {
    infos: Option<Vec<super::mounts::MountInfo>>,
    covered: HashMap<u32, bool>,
}

/// A regular file whose mount, in the task's mount namespace, another mount now covers
/// (zdtm's overmounted_file: a bind mounted over the directory holding it) is refused, as
/// CRIU refuses it ("open files on overmounted mounts are not supported"): the restore
/// reopens files by path, which would lead to the covering mount.
fn not_overmounted(p: &FdProbe<'_>, seen: &mut MountsSeen) -> Result<(), Unsupported> {
    let Ok(info) = procfs::fdinfo(p.pid, p.fd) else {
        return Ok(()); // closed meanwhile: the dump itself says what
    };
    let Ok(id) = u32::try_from(info.mnt_id) else {
        return Ok(());
    };
    if seen.infos.is_none() {
        seen.infos = Some(
            procfs::read(p.pid, "mountinfo")
                .map(|t| super::mounts::parse_mountinfo(&t))
                .unwrap_or_default(),
        );
    }
    let infos = seen.infos.as_deref().unwrap_or_default();
    let covered = *seen.covered.entry(id).or_insert_with(|| {
        // Only a mount of the task's namespace (a file opened elsewhere is refused by
        // `reachable_by_path` when its path leads elsewhere).
        let Some(m) = infos.iter().find(|m| m.id == id) else {
            return false;
        };
        let at = sys::fd::open_in_root(
            &format!("/proc/{}/root", p.pid),
            &m.mountpoint,
            libc::O_PATH,
        );
        at.ok()
            .and_then(|f| {
                rustix::fs::statx(
                    &f,
                    "",
                    rustix::fs::AtFlags::EMPTY_PATH,
                    rustix::fs::StatxFlags::MNT_ID,
                )
                .ok()
            })
            .is_some_and(|st| st.stx_mnt_id != u64::from(id))
    });
    if !covered {
        return Ok(());
    }
    Err(Unsupported::of(
        p.pid,
        format!("fd {} ({})", p.fd, p.link),
        format!("the file is on mount {id}, which another mount now covers (overmounted), so it cannot be reopened by its path"),
        "unmount what covers it before the dump, or close the file",
    ))
}

/// Runs every kind's tree-wide check on the fds [`precheck`] collected.
pub fn precheck_tree(pc: &Precheck) -> Result<(), FilesError> {
    for k in FD_KINDS {
        if let Some(fds) = pc.by_kind.get(k.name) {
            (k.precheck_tree)(fds, &pc.sock)?;
        }
    }
    Ok(())
}

/// A file reopened by path at restore, in the task's own root and mount namespace: the path
/// must lead there to this very file.
pub fn reachable_by_path(p: &FdProbe<'_>) -> Result<(), Unsupported> {
    let there = sys::fd::stat_in_root(&format!("/proc/{}/root", p.pid), p.link).ok();
    let same = match (p.meta, &there) {
        (Some(a), Some(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => true, // vanished meanwhile: the dump itself says what
    };
    if same {
        return Ok(());
    }
    Err(Unsupported::of(
        p.pid,
        format!("fd {} ({})", p.fd, p.link),
        "the file is outside the process's root (opened before a chroot or pivot_root, or in another mount namespace), so it cannot be reopened by its path",
        "open it from inside the container, or give it to the restored tree with --inherit-fd",
    ))
}

/// A file opened through a mount of another mount namespace of the tree (a child that made
/// its own after inheriting the fd): the path leads to it in the root of a task of the tree
/// whose namespace has that mount. The restore opens it there (`mnt_id`).
fn reachable_from_tree(p: &FdProbe<'_>, tree: &[i32]) -> bool {
    let Ok(id) = procfs::fdinfo(p.pid, p.fd).map(|i| i.mnt_id.to_string()) else {
        return false;
    };
    let mnt_ns = |pid: i32| {
        std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
            .map(|m| m.ino())
            .ok()
    };
    let own = mnt_ns(p.pid);
    let mut seen = std::collections::HashSet::new();
    tree.iter()
        .filter(|&&t| t != p.pid)
        .filter(|&&t| mnt_ns(t).is_some_and(|n| Some(n) != own && seen.insert(n)))
        .any(|&t| {
            let has = procfs::read(t, "mountinfo")
                .is_ok_and(|m| m.lines().any(|l| l.split(' ').next() == Some(id.as_str())));
            has && reachable_by_path(&FdProbe { pid: t, ..*p }).is_ok()
        })
}

/// The PID of a process gone since fd `fd` of `pid` opened its /proc directory or a file in
/// it (`name`: /proc/N or /proc/N/...): the fd is on procfs and /proc/N no longer exists in
/// the task's view.
fn dead_proc_pid(pid: i32, fd: i32, name: &str) -> Option<u32> {
    dead_proc_pid_at(pid, &format!("fd/{fd}"), name)
}

/// [`dead_proc_pid`] for `/proc/PID/LINK` (`fd/N`, `cwd`, `root`) of `pid` naming `name`.
pub fn dead_proc_pid_at(pid: i32, link: &str, name: &str) -> Option<u32> {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    let n: u32 = name
        .strip_prefix("/proc/")?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    let on_proc = rustix::fs::statfs(format!("/proc/{pid}/{link}").as_str())
        .is_ok_and(|s| s.f_type == PROC_SUPER_MAGIC);
    let gone = std::fs::symlink_metadata(format!("/proc/{pid}/root/proc/{n}")).is_err();
    (on_proc && gone).then_some(n)
}

/// Whether fd `fd` of `pid` is on an mqueue filesystem.
fn is_mqueue(pid: i32, fd: i32) -> bool {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    rustix::fs::statfs(format!("/proc/{pid}/fd/{fd}").as_str())
        .is_ok_and(|s| s.f_type == MQUEUE_MAGIC)
}

/// Sets the file-status flags F_SETFL can change on cryo's object `id`.
pub fn set_fl(fd: BorrowedFd<'_>, flags: u32, id: u32) -> Result<(), TaskError> {
    sys::fd::set_fl(fd, flags & SETFL_MASK)
        .map(|_| ())
        .map_err(TaskError::object(id, "F_SETFL"))
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
    /// For a socket: its (domain, type, protocol) and cryo's copy of it.
    pub socket: Option<(i32, i32, i32)>,
    pub copy: Option<BorrowedFd<'a>>,
}

impl TargetFd<'_> {
    /// The open file flags to save (without O_CLOEXEC, which belongs to the fd).
    pub fn flags(&self) -> u32 {
        self.info.flags & !(libc::O_CLOEXEC as u32)
    }

    /// A copy of the target's fd in cryo (the same open file description).
    pub fn take(&self) -> Result<OwnedFd, TaskError> {
        match self.copy {
            Some(c) => c
                .try_clone_to_owned()
                .map_err(|e| self.err("F_DUPFD_CLOEXEC", e)),
            None => {
                sys::fd::pidfd_getfd(self.pidfd, self.fd).map_err(|e| self.err("pidfd_getfd", e))
            }
        }
    }

    /// An error about this fd.
    pub fn err(&self, what: impl Into<String>, source: std::io::Error) -> TaskError {
        TaskError::Fd {
            pid: self.pid,
            fd: self.fd,
            what: format!("{} ({}): {}", what.into(), self.link, source),
            source,
        }
    }

    /// A field of the fdinfo text ("eventfd-count", "sigmask", ...).
    pub fn field(&self, name: &str) -> Result<String, TaskError> {
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

/// File-status flags F_SETFL can change.
pub const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_NOATIME) as u32;

/// A files.img entry without the record its type needs.
pub fn missing(id: u32, what: &str) -> TaskError {
    TaskError::BadImage(format!("files.img entry {id} has no {what} record"))
}

/// An error creating object `id` in cryo.
pub fn obj_err(id: u32, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TaskError {
    TaskError::object(id, what)
}

/// State of the fd kinds that spans several file ids during one restore (the two ends of a
/// pipe, a FIFO kept open, a socket's peer), one value per type, made on first use, so a
/// kind keeps its state in its own module. Dropped when the restore ends.
#[derive(Default)]
pub struct KindState(HashMap<TypeId, Box<dyn Any>>);

impl KindState {
    /// The state of type `T`, made empty on first use.
    pub fn get<T: Default + 'static>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut()
            .expect("KindState is keyed by the type it holds")
    }
}

/// The open files restore creates in cryo (one per file id, made on first use), with the
/// per-kind state that spans several ids.
pub struct FdObjects {
    pub dir: ImageDir,
    pub files: HashMap<u32, pb::FileEntry>,
    made: HashMap<u32, OwnedFd>,
    /// The fd kinds' own state ([`KindState::get`]).
    pub kinds: KindState,
    /// Shared anonymous memory inodes (not fds, but made and handed over the same way).
    pub shmem: super::shmem::ShmemStore,
    pub ghosts: super::ghost::GhostStore,
    pub tty: super::tty::TtyStore,
    /// `--inherit-fd` / RPC `inherit_fd`: objects the caller hands in instead of the dumped
    /// ones, by CRIU key (`pipe:[INO]`: every fd of the tree that was pipe inode INO at dump
    /// gets a dup of this one). cryo's own dups.
    pub inherited: HashMap<String, OwnedFd>,
    /// The root puppet (host PID) once the tree's network or mount namespace exists: unix
    /// sockets, FIFOs and inotify watches are made inside its namespaces.
    pub ns_pid: Option<i32>,
    /// The puppet whose fds are being made, while its network namespace is not the root's:
    /// its sockets are made in its own network namespace.
    pub net_pid: Option<i32>,
    /// Each saved network namespace of the tree once a restored process is in it (by the
    /// namespace's id in the images): that process. A socket made in another namespace
    /// than its holder's (its record's `ns_id`) is made in that process's.
    pub net_ns_host: HashMap<u32, i32>,
    /// Saved network namespaces made (and rebuilt) ahead of their first process, for a
    /// socket or tun/tap file of theirs whose holder is restored earlier and is not that
    /// process's ancestor (a later sibling's branch made the namespace): that process joins
    /// it (`ns::restore_net`). By id in the images.
    pub net_ns_made: HashMap<u32, std::fs::File>,
    /// The saved network namespace of the puppet whose fds are being made.
    pub cur_net_ns: Option<u32>,
    /// The restore's socket options (`--tcp-established`, ...).
    pub sock: SockOpts,
    /// The file ids some task's fd table holds (the others are only in flight: passed in
    /// a message queued on a unix socket).
    pub held: std::collections::HashSet<u32>,
    /// Which id each process of the tree has in each nested PID namespace (pidfds and file
    /// owners are saved with the tree's ids).
    pub pids: PidView,
    /// The mounts of the tree's restored mount namespace (`mounts::restore`), by their id
    /// in the images: mount point and root.
    pub mount_roots: super::mounts::MountRoots,
    /// Each saved mount namespace of the tree once a restored process is in it (by the
    /// namespace's id in the images): the namespace and that process's root, held.
    pub mnt_ns_host: HashMap<u32, MntNsHold>,
    /// The saved mount namespace of the puppet whose fds are being made.
    pub cur_mnt_ns: Option<u32>,
    /// The saved mount namespaces of the tree, and (read on first use) which of them each
    /// saved mount id belongs to.
    mnt_ns_ids: Vec<u32>,
    mnt_of: Option<HashMap<u32, u32>>,
    /// The root's saved mount namespace.
    root_mnt_ns: Option<u32>,
    /// Files left for the late fds ([`FdObjects::in_ns_not_yet_made`]).
    pub deferred: std::collections::HashSet<u32>,
    /// The saved namespaces that have their mounts in the images (not the one the tree
    /// shares with the dumper).
    mnt_saved: std::collections::HashSet<u32>,
    /// binfmt_misc registrations the restore made: removed again if it fails (dropped),
    /// kept once the tree runs.
    pub binfmt: Vec<super::binfmt::Made>,
}

/// A mount namespace of the tree, held while the restore runs: the namespace and the root
/// of a restored process in it (opened through cryo's /proc when the process got there).
pub struct MntNsHold {
    pub ns: std::fs::File,
    pub root: std::fs::File,
}

impl MntNsHold {
    /// Holds the mount namespace and root of restored process `pid` (host PID).
    pub fn of(pid: i32) -> std::io::Result<MntNsHold> {
        Ok(MntNsHold {
            ns: std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?,
            root: std::fs::File::open(format!("/proc/{pid}/root"))?,
        })
    }

    pub fn try_clone(&self) -> std::io::Result<MntNsHold> {
        Ok(MntNsHold {
            ns: self.ns.try_clone()?,
            root: self.root.try_clone()?,
        })
    }
}

/// The tree's processes by their PID in the images: ids from the tree's PID namespace down
/// to their own, depth, own namespace, parent.
#[derive(Default)]
pub struct PidView {
    tasks: HashMap<u32, (Vec<i32>, usize, Option<u32>, u32)>,
}

impl PidView {
    fn new(tasks: &[super::TaskImages]) -> PidView {
        PidView {
            tasks: tasks
                .iter()
                .map(|t| {
                    (
                        t.pid,
                        (t.ns_ids(0), t.ns_depth(), t.ids.pid_ns_id, t.pstree.ppid),
                    )
                })
                .collect(),
        }
    }

    /// The id process `holder` gives the kernel for `pid` (the tree's PID), in its own PID
    /// namespace: None when `pid` is not in that namespace or one below it. An id that names
    /// no process of the tree is passed on as it is from the tree's namespace.
    pub fn seen_from(&self, pid: u32, holder: u32) -> Option<i32> {
        let d = self.tasks.get(&holder).map_or(0, |h| h.1);
        let Some(o) = self.tasks.get(&pid) else {
            return (d == 0).then_some(pid.cast_signed());
        };
        if d == 0 {
            return o.0.first().copied();
        }
        // The owner's namespace at depth d: that of its nearest ancestor (or itself) there
        // (a nested namespace is made by a process for its children).
        let mut cur = pid;
        let ns = loop {
            let t = self.tasks.get(&cur)?;
            if t.1 == d {
                break t.2;
            }
            if t.1 < d {
                return None;
            }
            cur = t.3;
        };
        if ns.is_some() && ns == self.tasks.get(&holder)?.2 {
            o.0.get(d).copied()
        } else {
            None
        }
    }
}

/// Is `key` an inherit-fd key cryo looks up (`pipe:[INO]`, `tty[RDEV:DEV]`)? Other keys
/// are accepted and match nothing, as in CRIU.
pub fn inherit_key_supported(key: &str) -> bool {
    let pipe = key
        .strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| n.parse::<u32>().is_ok());
    let tty = key
        .strip_prefix("tty[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.split_once(':'))
        .is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        });
    pipe || tty
}

impl FdObjects {
    /// Takes dups of the caller's fds for `--inherit-fd` (KEY, fd in cryo's own table).
    pub fn inherit(&mut self, list: &[(String, i32)]) -> Result<(), TaskError> {
        for (key, fd) in list {
            if !inherit_key_supported(key) {
                tracing::warn!(
                    "inherit-fd key '{key}': cryo replaces pipes (pipe:[INODE]) and terminals (tty[RDEV:DEV]); nothing else is looked up"
                );
            }
            let dup = crate::sys::fd::dup_raw(*fd).map_err(|source| TaskError::Object {
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
    ) -> Result<Self, FilesError> {
        Ok(FdObjects {
            dir: ImageDir::open(&dir.path)?,
            files: files.clone(),
            made: HashMap::new(),
            kinds: KindState::default(),
            shmem: super::shmem::ShmemStore::new(tasks),
            ghosts: super::ghost::GhostStore::load(dir)?,
            tty: Default::default(),
            inherited: HashMap::new(),
            ns_pid: None,
            net_pid: None,
            net_ns_host: HashMap::new(),
            net_ns_made: HashMap::new(),
            cur_net_ns: None,
            sock: SockOpts::default(),
            held: tasks
                .iter()
                .flat_map(|t| t.fdinfo.iter().map(|f| f.id))
                .collect(),
            pids: PidView::new(tasks),
            mount_roots: HashMap::new(),
            mnt_ns_host: HashMap::new(),
            cur_mnt_ns: None,
            mnt_ns_ids: {
                let mut v: Vec<u32> = tasks.iter().filter_map(|t| t.ids.mnt_ns_id).collect();
                v.sort_unstable();
                v.dedup();
                v
            },
            mnt_of: None,
            root_mnt_ns: tasks.first().and_then(|t| t.ids.mnt_ns_id),
            deferred: Default::default(),
            mnt_saved: Default::default(),
            binfmt: Vec::new(),
        })
    }

    /// Closes every object cryo made (the puppets hold their own fds now).
    pub fn close_all(&mut self) {
        self.made.clear();
        self.kinds = KindState::default();
        self.shmem = Default::default();
        self.ghosts.finish();
        self.tty.close();
        self.inherited.clear();
        self.mount_roots.clear();
        self.mnt_ns_host.clear();
    }

    /// The record of file `id`.
    pub fn entry(&self, id: u32) -> Result<&pb::FileEntry, TaskError> {
        self.files.get(&id).ok_or(TaskError::BadImage(format!(
            "files.img has no entry with id {id}"
        )))
    }

    /// A copy (dup) of cryo's object for file `id`, made on first use, to pass it in a
    /// message (SCM_RIGHTS). A regular file, which tasks open themselves, is opened by cryo
    /// for this, in the tree's mount namespace.
    pub fn dup(&mut self, id: u32) -> Result<OwnedFd, FilesError> {
        if !self.made.contains_key(&id) && self.entry(id)?.r#type == pb::FdTypes::Reg as i32 {
            let fd = self.open_reg_here(id)?;
            self.made.insert(id, fd);
        }
        self.get(id)?;
        Ok(self.made[&id]
            .try_clone()
            .map_err(TaskError::object(id, "dup"))?)
    }

    /// Records `fd` as the object of file `id` while its kind is still making it (unless
    /// made already): a socket whose queue is refilled before its `open` returns may carry
    /// itself, or a file whose own queue carries it back, and must not be made twice.
    pub fn provide(&mut self, id: u32, fd: &OwnedFd) -> Result<(), FilesError> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.made.entry(id) {
            e.insert(fd.try_clone().map_err(TaskError::object(id, "dup"))?);
        }
        Ok(())
    }

    /// Opens regular-file record `id` in cryo, at its saved offset.
    fn open_reg_here(&mut self, id: u32) -> Result<OwnedFd, FilesError> {
        let reg = self
            .entry(id)?
            .reg
            .clone()
            .ok_or_else(|| missing(id, "regular file"))?;
        if reg.cryo_mqueue == Some(true) {
            return Err(Unsupported::restore(format!(
                "file {id} ({}): a POSIX message queue passed in a queued message cannot be restored",
                reg.name
            ))
            .into());
        }
        let flags = (reg.flags
            & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32))
            .cast_signed()
            | libc::O_CLOEXEC;
        let fd = if self.ghosts.is_ghost(id) {
            self.ghosts
                .open(&self.dir, id, &reg.name, flags.cast_unsigned(), self.ns_pid)?
        } else {
            let _in_ns = self
                .ns_pid
                .map(|p| super::ns::InNs::enter(p, true))
                .transpose()
                .map_err(TaskError::object(id, "enter the tree's namespaces"))?;
            sys::fd::open(&reg.name, flags)
                .map_err(TaskError::object(id, format!("open {}", reg.name)))?
        };
        if reg.pos != 0 {
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(reg.pos))
                .map_err(|e| TaskError::object(id, "lseek")(e.into()))?;
        }
        Ok(fd)
    }

    /// The saved mount namespace that saved mount `mnt_id` belongs to, from the
    /// `mountpoints-ID.img` of the tree's namespaces (read once). None when no saved
    /// namespace has it (the tree shares cryo's, or the file came from outside the tree).
    pub fn mnt_ns_of(&mut self, mnt_id: u32) -> Result<Option<u32>, FilesError> {
        if self.mnt_of.is_none() {
            let mut map = HashMap::new();
            for &ns in &self.mnt_ns_ids {
                let name = format!("mountpoints-{ns}.img");
                let entries: Option<Vec<pb::MntEntry>> = self
                    .dir
                    .read_opt(&name, crate::image::MNTS)
                    .map_err(TaskError::from)?;
                if let Some(entries) = entries {
                    self.mnt_saved.insert(ns);
                    for e in entries {
                        map.entry(e.mnt_id).or_insert(ns);
                    }
                }
            }
            self.mnt_of = Some(map);
        }
        Ok(self.mnt_of.as_ref().and_then(|m| m.get(&mnt_id).copied()))
    }

    /// The root (`/proc/PID/root` of a restored process) of the mount namespace that the
    /// file of `reg` was opened in, when that is another saved namespace of the tree than the
    /// one of the puppet whose fds are being made (a child in a mount namespace of its own
    /// holding a file its parent opened: zdtm mntns_open). None: open it in the puppet.
    pub fn other_mnt_ns_root(
        &mut self,
        reg: &pb::RegFileEntry,
    ) -> Result<Option<std::fs::File>, FilesError> {
        let own = self.cur_mnt_ns;
        Ok(self.other_mnt_ns_host(reg.mnt_id, own)?.map(|h| h.root))
    }

    /// The saved mount namespace that saved mount `mnt_id` belongs to, held (a copy), when
    /// that is not `own` (the saved namespace the object would be made in otherwise) and a
    /// restored process is in it by now.
    pub fn other_mnt_ns_host(
        &mut self,
        mnt_id: Option<i32>,
        own: Option<u32>,
    ) -> Result<Option<MntNsHold>, FilesError> {
        let (Some(m), Some(own)) = (mnt_id.and_then(|m| u32::try_from(m).ok()), own) else {
            return Ok(None);
        };
        // A mount no saved namespace has, held by a task whose namespace is saved: the
        // root's, when the tree shares that one with the dumper (its mounts are not saved).
        let ns = match self.mnt_ns_of(m)? {
            Some(ns) => Some(ns),
            None if self.mnt_saved.contains(&own) => {
                self.root_mnt_ns.filter(|r| !self.mnt_saved.contains(r))
            }
            None => None,
        };
        let Some(ns) = ns.filter(|&ns| ns != own) else {
            return Ok(None);
        };
        match self.mnt_ns_host.get(&ns) {
            Some(h) => Ok(Some(h.try_clone().map_err(TaskError::object(
                0,
                "hold a mount namespace of the tree",
            ))?)),
            None => Ok(None),
        }
    }

    /// Whether regular file `id` was opened through a mount of a saved mount namespace other
    /// than that of the puppet whose fds are being made, which no restored process is in yet
    /// (a child's, made after its parent's fds): it is opened with the late fds, recorded in
    /// `deferred`.
    /// Likewise a socket or tun/tap file made in another saved network namespace than the
    /// puppet's ([`FdObjects::other_net_ns`]) that no restored process is in yet: made with
    /// the late fds, once the task's children (its namespace's first process among them)
    /// exist.
    pub fn in_ns_not_yet_made(&mut self, id: u32) -> bool {
        let Some(e) = self.files.get(&id) else {
            return false;
        };
        // (A tun/tap record has the REG record of `/dev/net/tun` too: not opened by path.)
        let late = if is_net_file(e) {
            self.other_net_ns(e).is_some_and(|ns| {
                !self.net_ns_host.contains_key(&ns) && !self.net_ns_made.contains_key(&ns)
            })
        } else {
            e.reg
                .as_ref()
                .and_then(|r| r.mnt_id)
                .and_then(|m| u32::try_from(m).ok())
                .and_then(|m| self.mnt_ns_of(m).ok().flatten())
                .is_some_and(|ns| {
                    Some(ns) != self.cur_mnt_ns && !self.mnt_ns_host.contains_key(&ns)
                })
        };
        if late {
            self.deferred.insert(id);
        }
        late
    }

    /// The saved network namespace socket or tun/tap record `e` was made in, when it is not
    /// that of the puppet whose fds are being made (a process that entered another
    /// namespace of the tree, made it and came back).
    fn other_net_ns(&self, e: &pb::FileEntry) -> Option<u32> {
        Self::other_net_ns_of(e, self.cur_net_ns)
    }

    /// [`FdObjects::other_net_ns`] for a puppet in saved network namespace `cur`.
    fn other_net_ns_of(e: &pb::FileEntry, cur: Option<u32>) -> Option<u32> {
        e.usk
            .as_ref()
            .and_then(|u| u.ns_id)
            .or_else(|| e.tunf.as_ref().and_then(|t| t.ns_id))
            .or_else(|| {
                // (An inet socket's is its holder's in cryo's older images, which may lack
                // the holder's.)
                e.isk
                    .as_ref()
                    .and_then(|i| i.ns_id)
                    .filter(|_| cur.is_some())
            })
            .filter(|&ns| Some(ns) != cur)
    }

    /// The saved network namespaces that files `ids` of a puppet in saved namespace `cur`
    /// were made in and that no restored process is in yet, nor made ahead: called once the
    /// puppet's children exist (its late fds), these are made by a later sibling's branch
    /// of the tree, so they are made ahead ([`FdObjects::net_ns_made`]).
    pub fn net_ns_to_make_ahead(
        &self,
        ids: impl Iterator<Item = u32>,
        cur: Option<u32>,
    ) -> std::collections::BTreeSet<u32> {
        ids.filter(|id| self.deferred.contains(id))
            .filter_map(|id| self.files.get(&id))
            .filter(|e| is_net_file(e))
            .filter_map(|e| Self::other_net_ns_of(e, cur))
            .filter(|ns| !self.net_ns_host.contains_key(ns) && !self.net_ns_made.contains_key(ns))
            .collect()
    }

    /// The root of the tree's root mount namespace, for a task in saved namespace `own` that
    /// is another one: where a file its own namespace no longer reaches by path is opened, as
    /// CRIU opens a file it knows no mount of (the program of a task that pivoted into a new
    /// root, left on the root it detached). None in the root's namespace.
    pub fn root_mnt_ns_root(&self, own: Option<u32>) -> Option<std::io::Result<std::fs::File>> {
        if own.is_none() || own == self.root_mnt_ns {
            return None;
        }
        match self.root_mnt_ns.and_then(|r| self.mnt_ns_host.get(&r)) {
            Some(h) => Some(h.root.try_clone()),
            // The tree shares cryo's namespace.
            None if self
                .root_mnt_ns
                .is_none_or(|r| !self.mnt_saved.contains(&r)) =>
            {
                Some(std::fs::File::open("/"))
            }
            None => None,
        }
    }

    /// The root's saved mount namespace (where sockets, FIFOs and inotify watches are made).
    pub fn root_mnt_ns(&self) -> Option<u32> {
        self.root_mnt_ns
    }

    /// cryo's fd for file `id`, created on first use by the kind of its record.
    pub fn get(&mut self, id: u32) -> Result<i32, FilesError> {
        if let Some(fd) = self.made.get(&id) {
            return Ok(fd.as_raw_fd());
        }
        let e = self.entry(id)?.clone();
        let Some(kind) = FdOps::for_type(e.r#type) else {
            return Err(Unsupported::restore(format!(
                "file {id} has type {} which this cryo cannot restore",
                e.r#type
            ))
            .into());
        };
        let mut net_pid = self.net_pid.or(self.ns_pid);
        let mut net_fd = None;
        // A socket made in another network namespace of the tree than its holder's (a
        // process that entered a second namespace, made it and came back): made there. One
        // whose namespace's first process is a child of its holder waited for it
        // (`in_ns_not_yet_made`, the late fds); one whose namespace's first process comes
        // later in another branch, for the namespace made ahead (`net_ns_made`).
        if let Some(ns) = self.other_net_ns(&e).filter(|_| kind.in_tree_ns) {
            if let Some(&p) = self.net_ns_host.get(&ns) {
                net_pid = Some(p);
            } else if let Some(f) = self.net_ns_made.get(&ns) {
                net_fd = Some(f.try_clone().map_err(TaskError::object(
                    id,
                    "hold a network namespace of the tree",
                ))?);
            } else {
                // Made in its holder's it would answer in the wrong namespace.
                return Err(Unsupported::restore(format!(
                    "file {id}: a socket or tun/tap file of network namespace {ns}, needed before that namespace exists: no process of it is restored yet and no process holding the file in its fd table made it ahead (the file is only in flight, queued on a unix socket?), so cryo cannot make the file there"
                ))
                .into());
            }
        }
        let _in_ns = match (net_fd, net_pid.filter(|_| kind.in_tree_ns)) {
            (Some(f), _) => {
                (kind.load)(self)?;
                Some(
                    super::ns::InNs::enter_net_fd(f, self.ns_pid)
                        .map_err(TaskError::object(id, "enter the tree's namespaces"))?,
                )
            }
            (None, Some(pid)) => {
                // Images are read before the paths change.
                (kind.load)(self)?;
                Some(
                    super::ns::InNs::enter_split(pid, self.ns_pid)
                        .map_err(TaskError::object(id, "enter the tree's namespaces"))?,
                )
            }
            (None, None) => None,
        };
        let fd = (kind.open)(self, &e)?;
        let raw = fd.as_raw_fd();
        self.made.insert(id, fd);
        Ok(raw)
    }
}

/// What [`dump_fd`] saved for one fd.
/// Looks for the open file description of `pid`'s `fd` among `list`, one fd per distinct
/// description, kept in the kernel's order of descriptions (`kcmp(KCMP_FILE)` orders them):
/// a binary search, so a tree of n processes holding fds on one file costs O(n log n)
/// comparisons, not O(n²). `Err` carries where it would go. Should the kernel refuse a
/// comparison, every entry is compared for equality instead.
fn find_description(list: &[DumpedFd], pid: i32, fd: i32) -> Result<DumpedFd, usize> {
    let failed = std::cell::Cell::new(false);
    let cmp = |&(opid, other, _): &DumpedFd| match kcmp(
        opid,
        pid,
        KCMP_FILE,
        c_uint(other).into(),
        c_uint(fd).into(),
    ) {
        Ok(0) => std::cmp::Ordering::Equal,
        Ok(1) => std::cmp::Ordering::Less,
        Ok(2) => std::cmp::Ordering::Greater,
        _ => {
            failed.set(true);
            std::cmp::Ordering::Less
        }
    };
    let r = list.binary_search_by(cmp);
    if !failed.get() {
        return r.map(|i| list[i]);
    }
    list.iter()
        .find(|&&(opid, other, _)| {
            kcmp(
                opid,
                pid,
                KCMP_FILE,
                c_uint(other).into(),
                c_uint(fd).into(),
            )
            .ok()
                == Some(0)
        })
        .copied()
        .ok_or(list.len())
}

/// Adds a new description's fd to `list` in kcmp order (see [`find_description`]).
fn add_description(list: &mut Vec<DumpedFd>, e: DumpedFd) {
    match find_description(list, e.0, e.1) {
        Ok(_) => {}
        Err(i) => list.insert(i, e),
    }
}

struct DumpedFdInfo {
    id: u32,
    kind: Option<&'static FdOps>,
    cloexec: bool,
}

/// Saves the open file behind fd `fd` of process `pid` (a task of the tree, or cryo itself
/// for a file in flight) unless an fd dumped earlier shares its open file description, and
/// returns its file id. `pidfd` is a pidfd of `pid`, opened on first use.
fn dump_fd(
    cx: &mut DumpCx<'_>,
    pid: i32,
    fd: i32,
    pidfd: &mut Option<OwnedFd>,
    of_tree: bool,
) -> Result<DumpedFdInfo, FilesError> {
    let link = procfs::link(pid, &format!("fd/{fd}"))?;
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok();
    let tty = if of_tree {
        shell_tty(pid, cx.files.shell_job, meta.as_ref(), &cx.files.tree)
    } else {
        None
    };
    let mut socket = None;
    let kind = match tty {
        Some(_) => None,
        None => {
            socket = socket_of(pid, fd, &link, pidfd)?;
            let p = FdProbe {
                pid,
                fd,
                link: &link,
                meta: meta.as_ref(),
                socket: socket.as_ref().map(|s| s.0),
                copy: socket.as_ref().map(|s| s.1.as_fd()),
                netns: None,
                sock: cx.files.sock,
                tree: &cx.files.tree,
            };
            classify(&p).map_err(|why| refuse(pid, fd, &link, why))?
        }
    };
    let link = tty.unwrap_or(link);
    let text = procfs::read(pid, &format!("fdinfo/{fd}"))?;
    let info = procfs::parse_fdinfo(&text).ok_or_else(|| procfs::ProcError::Parse {
        path: format!("/proc/{pid}/fdinfo/{fd}").into(),
        what: "unexpected format".into(),
    })?;
    // Same open file description as an earlier fd (of any process)? Only fds on the same
    // inode can share one: those alone are searched.
    let key = meta.as_ref().map(|m| (m.dev(), m.ino()));
    let id = cx
        .files
        .fds_by_inode
        .get(&key)
        .and_then(|l| find_description(l, pid, fd).ok())
        .map(|(_, _, oid)| oid);
    let fresh = id.is_none();
    let id = match (id, kind) {
        (Some(i), _) => i,
        (None, None) => {
            let meta = meta.as_ref().ok_or_else(|| {
                Unsupported::of(
                    pid,
                    format!("fd {fd} ({link})"),
                    "the file cannot be looked up from cryo",
                    "is it in a mount namespace cryo cannot reach? close it before the dump",
                )
            })?;
            let deleted = link.strip_suffix(" (deleted)");
            let dead = dead_proc_pid(pid, fd, deleted.unwrap_or(&link));
            let id = cx.files.add_reg(
                deleted.unwrap_or(&link).to_string(),
                info.flags & !(libc::O_CLOEXEC as u32),
                info.pos,
                meta.is_file().then_some(meta.len()),
                meta.mode(),
            );
            // The mount it was opened through (CRIU's `mnt_id`): a task in a mount namespace
            // nested in the tree may hold a file of another namespace's mount.
            if let Some(r) = cx.files.entries.last_mut().and_then(|e| e.reg.as_mut()) {
                r.mnt_id = (info.mnt_id >= 0).then_some(info.mnt_id);
            }
            if meta.file_type().is_char_device()
                && super::tty::is_vt_or_console(meta.rdev())
                && procfs::stat(pid)
                    .is_ok_and(|s| s.session == pid && u64::from(s.tty_nr) == meta.rdev())
            {
                if let Some(r) = cx.files.entries.last_mut().and_then(|e| e.reg.as_mut()) {
                    r.cryo_ctty = Some(true);
                }
            }
            if meta.is_file() && is_mqueue(pid, fd) {
                if let Some(r) = cx.files.entries.last_mut().and_then(|e| e.reg.as_mut()) {
                    r.cryo_mqueue = Some(true);
                    r.size = None;
                }
            }
            // Removed from this name, but it has others: a link remap, unless the file system
            // refuses the file a name (overlayfs: a lower layer's file), then a ghost below.
            let mut linked = false;
            if let Some(path) = deleted.filter(|_| dead.is_none() && meta.nlink() > 0) {
                // Made in the mount namespace that has the fd's mount: the task's own, or
                // an ancestor's (a file its parent opened before it made its own).
                let holder = mount_holder(pid, info.mnt_id);
                let own_mnt = std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino());
                let theirs = std::fs::metadata(format!("/proc/{holder}/ns/mnt")).map(|m| m.ino());
                let ns = (own_mnt.ok() != theirs.ok()).then_some(holder);
                linked = super::linkremap::dump(cx.files, pid, fd, path, ns, id)?
                    == super::linkremap::Remapped::Linked;
                // The temporary name (the entry just pushed) is on the fd's mount: reopened
                // in the namespace that has it.
                let pushed = cx.files.entries.last_mut().filter(|_| linked);
                if let Some(r) = pushed.and_then(|e| e.reg.as_mut()) {
                    r.mnt_id = (info.mnt_id >= 0).then_some(info.mnt_id);
                }
            }
            if let Some(n) = dead {
                // The /proc directory of a process gone since (CRIU's dead-process remap): the
                // restore makes a helper with that PID while the file is opened.
                cx.files.note_dead_pid(id, n);
            } else if deleted.is_some() && !linked {
                // Made again at one place: an fd opened through another mount that shows it
                // at the same place of the file system (the same directory bound elsewhere,
                // as zdtm's mntns_ghost01) opens it there; at another place (zdtm's
                // mntns_link_ghost: binds of two directories in two namespaces) it is linked
                // there on restore through the fd's mount, by file handle (CRIU links it
                // through a mount that has both).
                let held = (meta.dev(), meta.ino());
                let on_fs = path_on_fs(pid, info.mnt_id, deleted.unwrap_or(&link));
                match cx.files.ghost_mnts.get(&held) {
                    Some((m, at, first)) if *m != info.mnt_id && (at.is_none() || *at != on_fs) => {
                        // Restore links the file made into this fd's place through its
                        // mount, by file handle: a directory cannot be linked, and the file
                        // system must give handles.
                        let handle = sys::fd::open(
                            &format!("/proc/{pid}/fd/{fd}"),
                            libc::O_PATH | libc::O_CLOEXEC,
                        )
                        .and_then(|f| sys::fd::name_to_handle(f.as_fd()));
                        let why = if meta.is_dir() {
                            Some("a directory cannot be linked there".to_string())
                        } else {
                            handle
                                .err()
                                .map(|e| format!("its file system gives no file handle ({e})"))
                        };
                        if let Some(why) = why {
                            return Err(Unsupported::of(
                                pid,
                                format!("fd {fd} ({link})"),
                                format!(
                                    "the deleted file is open through two mounts that show it at different places: mount {} here ({}), mount {m} for {first} ({}); cryo makes it again at one place and links it into the other, but {why}",
                                    info.mnt_id,
                                    on_fs.as_deref().unwrap_or("not in the process's mount namespace"),
                                    at.as_deref().unwrap_or("not in its process's mount namespace"),
                                ),
                                "close one of them, or keep a name of the file (then it is restored through that name with --link-remap)",
                            )
                            .into());
                        }
                    }
                    Some(_) => {}
                    None => {
                        cx.files.ghost_mnts.insert(
                            held,
                            (info.mnt_id, on_fs, format!("fd {fd} of process {pid}")),
                        );
                    }
                }
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
        (None, Some(k)) => {
            if pidfd.is_none() {
                *pidfd = Some(
                    sys::fd::pidfd_open(pid).map_err(|source| TaskError::Ptrace {
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
                socket: socket.as_ref().map(|s| s.0),
                copy: socket.as_ref().map(|s| s.1.as_fd()),
            };
            let id = cx.files.alloc();
            // Known before the kind looks inside it (a socket whose queue holds itself).
            add_description(cx.files.fds_by_inode.entry(key).or_default(), (pid, fd, id));
            let e = (k.dump)(cx, &t, id)?;
            cx.files.entries.push(e);
            save_owner(cx, pid, fd, id, pidfd, socket.as_ref().map(|s| s.1.as_fd()))?;
            return Ok(DumpedFdInfo {
                id,
                kind,
                cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            });
        }
    };
    if fresh {
        save_owner(cx, pid, fd, id, pidfd, socket.as_ref().map(|s| s.1.as_fd()))?;
        add_description(cx.files.fds_by_inode.entry(key).or_default(), (pid, fd, id));
    }
    Ok(DumpedFdInfo {
        id,
        kind,
        cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
    })
}

/// Saves a file no fd of the tree may hold: one passed in a message still queued on a unix
/// socket (SCM_RIGHTS), which cryo received a reference to by peeking. cryo keeps `file`
/// open until the dump ends, so fds of the tree dumped later that share its open file
/// description find it (kcmp). Returns its file id and kind.
pub fn dump_in_flight(
    cx: &mut DumpCx<'_>,
    file: OwnedFd,
) -> Result<(u32, pb::FdTypes), FilesError> {
    let me = std::process::id().cast_signed();
    let fd = file.as_raw_fd();
    cx.files.in_flight.push(file);
    let mut pidfd = None;
    let d = dump_fd(cx, me, fd, &mut pidfd, false)?;
    Ok((d.id, d.kind.map_or(pb::FdTypes::Reg, |k| k.fd_type)))
}

impl Kind for Files {
    const NAME: &'static str = "files";
    type Error = FilesError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), FilesError> {
        if img.files_shared.is_some() {
            return Ok(()); // saved with the task it shares the table with
        }
        let pid = cx.pid;
        let mut pidfd = None;
        for fd in procfs::fds(pid)? {
            let d = dump_fd(cx, pid, fd, &mut pidfd, true)?;
            img.fdinfo.push(pb::FdinfoEntry {
                id: d.id,
                flags: if d.cloexec {
                    libc::FD_CLOEXEC as u32
                } else {
                    0
                },
                r#type: d.kind.map_or(pb::FdTypes::Reg, |k| k.fd_type) as i32,
                fd: c_uint(fd),
                xattr_security_selinux: None,
            });
        }
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), FilesError> {
        restore_fds(cx, img, None).map(|_| ())
    }
}

/// Saves the owner and signal of the open file behind fd `fd` of `pid` (`F_SETOWN`,
/// `F_SETSIG`) in the `fown_entry` of its record `id`, when it has one.
fn save_owner(
    cx: &mut DumpCx<'_>,
    pid: i32,
    fd: i32,
    id: u32,
    pidfd: &mut Option<OwnedFd>,
    copy: Option<BorrowedFd<'_>>,
) -> Result<(), FilesError> {
    let err = |what: &'static str| {
        move |source| TaskError::Fd {
            pid,
            fd,
            what: what.into(),
            source,
        }
    };
    let taken;
    let copy = match copy {
        Some(c) => c,
        None => {
            if pidfd.is_none() {
                *pidfd = Some(sys::fd::pidfd_open(pid).map_err(err("pidfd_open"))?);
            }
            taken = sys::fd::pidfd_getfd(pidfd.as_ref().expect("opened above").as_fd(), fd)
                .map_err(err("pidfd_getfd"))?;
            taken.as_fd()
        }
    };
    let Some(owner) = super::fown::dump(cx.files.tree.first().copied().unwrap_or(pid), copy)
        .map_err(err("read the file's owner"))?
    else {
        return Ok(());
    };
    if let Some(slot) = cx
        .files
        .entries
        .iter_mut()
        .rev()
        .find(|e| e.id == id)
        .and_then(super::fown::slot)
    {
        *slot = owner;
    }
    Ok(())
}

/// A restored fd table: which fd holds each file id, and the highest fd.
#[derive(Debug, Clone, Default)]
pub struct FdTable {
    pub by_id: HashMap<u32, RemoteFd>,
    pub max_fd: RemoteFd,
}

/// The fd number an fdinfo record names, checked (the image says u32; the kernel's fds are
/// non-negative ints).
pub fn fd_number(f: &pb::FdinfoEntry) -> Result<RemoteFd, TaskError> {
    // Below i32::MAX, so one above the highest is still an fd number.
    RemoteFd::try_from(f.fd)
        .ok()
        .filter(|fd| *fd < RemoteFd::MAX)
        .ok_or_else(|| {
            TaskError::BadImage(format!("file {}: fd number {} is out of range", f.id, f.fd))
        })
}

/// The first fd number above `fd` (an fd number from an image), checked.
pub fn fd_number_above(fd: u32) -> Result<RemoteFd, TaskError> {
    RemoteFd::try_from(fd)
        .ok()
        .and_then(|fd| fd.checked_add(1))
        .ok_or_else(|| TaskError::BadImage(format!("fd number {fd} is out of range")))
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
) -> Result<FdTable, FilesError> {
    // A task in another network namespace than the root's has its sockets made in it.
    let net_of = |pid: Option<i32>| {
        let p = pid.map_or_else(
            || "/proc/self/ns/net".to_string(),
            |p| format!("/proc/{p}/ns/net"),
        );
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let objs_cell = cx.objs;
    let ns_pid = objs_cell.borrow().ns_pid;
    objs_cell.borrow_mut().net_pid = (net_of(Some(cx.pid)) != net_of(ns_pid)).then_some(cx.pid);
    objs_cell.borrow_mut().cur_mnt_ns = img.ids.mnt_ns_id;
    objs_cell.borrow_mut().cur_net_ns = img.ids.net_ns_id;
    let r = restore_fds_in(cx, img, inherited);
    objs_cell.borrow_mut().net_pid = None;
    objs_cell.borrow_mut().cur_mnt_ns = None;
    objs_cell.borrow_mut().cur_net_ns = None;
    r
}

/// The part of [`restore_fds`] that makes the fds.
fn restore_fds_in(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<&FdTable>,
) -> Result<FdTable, FilesError> {
    let mut fds = img
        .fdinfo
        .iter()
        .map(|f| Ok((fd_number(f)?, f)))
        .collect::<Result<Vec<(RemoteFd, &pb::FdinfoEntry)>, TaskError>>()?;
    fds.sort_by_key(|(fd, _)| *fd);
    let max_target = fds.iter().map(|(fd, _)| *fd).max().unwrap_or(0);
    // Numbers above every fd in play (max_target < i32::MAX, checked above).
    let above = max_target + 1;
    // Park what we take over from the parent above every fd in play, then drop the rest.
    let mut taken: HashMap<u32, RemoteFd> = HashMap::new(); // file id -> parked fd
                                                            // The puppet's pidfd of cryo: the one it inherited (kept), or one opened here (closed).
    let kept = cx.cryo_pidfd;
    // The dup3s and closes of inherited fds need no result: they run in batches (one stop
    // for a child that only inherits its fds), flushed before any other call.
    let mut b = crate::sys::remote::Batch::new();
    if let Some(parent) = inherited {
        // A child's table is its parent's (every fd at most `parent.max_fd`) plus the kept
        // pidfd of cryo: the numbers above all of them are free, so the parked copies go
        // there with dup3 at known numbers.
        let mut park = max_target.max(parent.max_fd).max(kept.unwrap_or(0)) + 1;
        for (_, f) in &fds {
            if let (Some(&src), false) = (parent.by_id.get(&f.id), taken.contains_key(&f.id)) {
                b.named("dup3 (park an inherited fd)").dup3(src, park, 0)?;
                taken.insert(f.id, park);
                park += 1;
            }
        }
        // Every fd of the parent's (the kept pidfd lies above them all).
        b.close_range(0, max_target.max(parent.max_fd).cast_unsigned())?;
    }
    let objs_cell = cx.objs;
    let mut cryo_pidfd: Option<RemoteFd> = kept;
    let mut opened: HashMap<u32, RemoteFd> = HashMap::new(); // file id -> fd
    for &(fd, f) in &fds {
        let cloexec = f.flags & libc::FD_CLOEXEC.cast_unsigned() != 0;
        let late = opened_late(cx.files, f.id)
            || (!taken.contains_key(&f.id) && objs_cell.borrow_mut().in_ns_not_yet_made(f.id));
        if late && !taken.contains_key(&f.id) {
            continue; // restore_late_fds
        }
        if let Some(&src) = opened.get(&f.id).or(taken.get(&f.id)) {
            b.dup3(src, fd, if cloexec { libc::O_CLOEXEC } else { 0 })?;
            opened.entry(f.id).or_insert(fd);
            continue;
        }
        cx.batch(&std::mem::take(&mut b))?;
        let tmp = if f.r#type == pb::FdTypes::Reg as i32 {
            open_reg(cx, f.id)?
        } else if super::tty::is_dev_tty(cx.files, f.id) {
            if img.pstree.sid == img.pid {
                // A session leader has no terminal before its setsid: tty::take_ctty opens it.
                continue;
            }
            super::tty::open_dev_tty(cx, f.id)?
        } else {
            let local = objs_cell.borrow_mut().get(f.id)?;
            let pidfd = match cryo_pidfd {
                Some(p) => p,
                None => {
                    let p = cx
                        .named("pidfd_open (cryo)")
                        .pidfd_open(crate::sys::proc::own_pid(), 0)?;
                    // Out of the way of the fd numbers still to be filled.
                    let high = cx.dup_above(p, above)?;
                    cx.close(p)?;
                    cryo_pidfd = Some(high);
                    high
                }
            };
            // The new fd has FD_CLOEXEC set.
            let got = cx.take_via(pidfd, local)?;
            if got == fd && !cloexec {
                cx.set_cloexec(got, false)?;
            }
            got
        };
        cx.place_fd(tmp, fd, cloexec)?;
        opened.insert(f.id, fd);
    }
    if let Some(p) = cryo_pidfd.filter(|_| kept.is_none()) {
        b.close(p)?;
    }
    if !taken.is_empty() {
        let above = above.cast_unsigned();
        let mut ranges = vec![(above, u32::MAX)];
        if let Some(k) = kept.map(i32::cast_unsigned) {
            ranges = vec![(above, k - 1), (k + 1, u32::MAX)];
        }
        for (lo, hi) in ranges.into_iter().filter(|(lo, hi)| lo <= hi) {
            b.close_range(lo, hi)?;
        }
    }
    // Held back to run with the next batch (the mappings'), unless a kind works on the
    // fds now (epoll, the only one with `after_fds`, fills its watch lists).
    cx.batch_later(&b)?;
    if fds
        .iter()
        .any(|(_, f)| f.r#type == pb::FdTypes::Eventpoll as i32)
    {
        cx.run_later()?;
    }
    // What a kind does once every fd of the task exists (epoll watch lists name them).
    for (_, f) in &fds {
        if let Some(k) = FdOps::for_type(f.r#type) {
            (k.after_fds)(cx, &mut objs_cell.borrow_mut(), f)?;
        }
    }
    // The same for files in flight to this task (passed in a message queued on one of its
    // sockets, held by no task): an epoll's watches name the receiver's fds. The puppet
    // holds the file for that moment only.
    let ids: Vec<u32> = fds.iter().map(|(_, f)| f.id).collect();
    let in_flight = super::unix_sk::in_flight_to(&mut objs_cell.borrow_mut(), &ids)
        .map_err(FilesError::kind::<super::unix_sk::UnixSk>)?;
    for id in in_flight {
        let t = objs_cell.borrow().entry(id)?.r#type;
        let Some(k) = FdOps::for_type(t) else {
            continue;
        };
        let local = objs_cell.borrow_mut().get(id)?;
        let tmp = cx.take_from_cryo(local)?;
        let f = pb::FdinfoEntry {
            id,
            flags: 0,
            r#type: t,
            fd: c_uint(tmp),
            xattr_security_selinux: None,
        };
        (k.after_fds)(cx, &mut objs_cell.borrow_mut(), &f)?;
        cx.close(tmp)?;
    }
    Ok(FdTable {
        by_id: opened,
        max_fd: above - 1,
    })
}

/// Whether record `e` is a socket or tun/tap file, made in the network namespace its
/// record names (`ns_id`).
fn is_net_file(e: &pb::FileEntry) -> bool {
    e.isk.is_some() || e.usk.is_some() || e.tunf.is_some()
}

/// Whether file `id` names processes of the tree, so it is opened only once the task's
/// children exist ([`restore_late_fds`]): a pidfd of a live process, a file under
/// `/proc/PID/` (a child's `/proc/PID/stat`, ...), a namespace file (opened by the task
/// itself), or an inotify instance watching files of another mount namespace.
fn opened_late(files: &HashMap<u32, pb::FileEntry>, id: u32) -> bool {
    let Some(e) = files.get(&id) else {
        return false;
    };
    if super::pidfd::is_live(e) || e.nsf.is_some() {
        return true;
    }
    // An inotify watch on a mount of another mount namespace of the tree (a child's): made
    // once that namespace exists.
    if e.ify
        .as_ref()
        .is_some_and(|i| i.wd.iter().any(|w| w.f_handle.mnt_id.is_some()))
    {
        return true;
    }
    e.reg.as_ref().is_some_and(|r| {
        r.name
            .strip_prefix("/proc/")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Opens the fds of the task `cx` drives that name processes of the tree ([`opened_late`]),
/// once its children exist: pidfds by the PID the tree sees, `/proc/PID/...` files by path.
/// `table` is what [`restore_fds`] made; the fds opened here are added to it.
pub fn restore_late_fds(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    table: &mut FdTable,
) -> Result<(), FilesError> {
    let ns_pid = cx.objs.borrow().ns_pid;
    let own_net = |pid: Option<i32>| {
        let p = pid.map_or_else(
            || "/proc/self/ns/net".to_string(),
            |p| format!("/proc/{p}/ns/net"),
        );
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    let net_pid = (own_net(Some(cx.pid)) != own_net(ns_pid)).then_some(cx.pid);
    {
        let mut o = cx.objs.borrow_mut();
        o.cur_mnt_ns = img.ids.mnt_ns_id;
        o.cur_net_ns = img.ids.net_ns_id;
        o.net_pid = net_pid;
    }
    let r = restore_late_fds_in(cx, img, table);
    let mut o = cx.objs.borrow_mut();
    o.cur_mnt_ns = None;
    o.cur_net_ns = None;
    o.net_pid = None;
    r
}

/// The part of [`restore_late_fds`] that opens the fds.
fn restore_late_fds_in(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    table: &mut FdTable,
) -> Result<(), FilesError> {
    let mut fds = img
        .fdinfo
        .iter()
        .filter(|f| {
            (opened_late(cx.files, f.id) || cx.objs.borrow().deferred.contains(&f.id))
                && !table.by_id.contains_key(&f.id)
        })
        .map(|f| Ok((fd_number(f)?, f)))
        .collect::<Result<Vec<(RemoteFd, &pb::FdinfoEntry)>, TaskError>>()?;
    fds.sort_by_key(|(fd, _)| *fd);
    let mut opened: HashMap<u32, RemoteFd> = HashMap::new();
    for (fd, f) in fds {
        let cloexec = f.flags & libc::FD_CLOEXEC.cast_unsigned() != 0;
        if let Some(&src) = opened.get(&f.id) {
            cx.dup3(src, fd, if cloexec { libc::O_CLOEXEC } else { 0 })?;
            continue;
        }
        let e = cx
            .files
            .get(&f.id)
            .cloned()
            .ok_or_else(|| missing(f.id, "file"))?;
        let tmp = if e.r#type == pb::FdTypes::Pidfd as i32 {
            super::pidfd::open_in_task(cx, &e, img.pid)?
        } else if e.r#type == pb::FdTypes::Ns as i32 {
            let path = super::nsfile::path_in_task(&e)
                .map_err(FilesError::kind::<super::nsfile::NsFile>)?;
            let flags = e.nsf.as_ref().map_or(0, |n| n.flags);
            cx.open(&path, super::ghost::reopen_flags(flags).cast_unsigned())?
        } else if e.r#type == pb::FdTypes::Inotify as i32 || is_net_file(&e) {
            // An inotify instance, or a socket or tun/tap file of a namespace made by a
            // child: made in cryo and taken over.
            let local = cx.objs.borrow_mut().get(f.id)?;
            cx.take_from_cryo(local)?
        } else {
            open_reg(cx, f.id)?
        };
        cx.place_fd(tmp, fd, cloexec)?;
        opened.insert(f.id, fd);
    }
    table.by_id.extend(opened);
    // File owners, now that every process they may name exists: once per open file.
    let mut done = std::collections::HashSet::new();
    let mut all = img
        .fdinfo
        .iter()
        .map(|f| Ok((fd_number(f)?, f)))
        .collect::<Result<Vec<(RemoteFd, &pb::FdinfoEntry)>, TaskError>>()?;
    all.sort_by_key(|(fd, _)| *fd);
    for (fd, f) in all {
        let Some(mut e) = cx.files.get(&f.id).cloned() else {
            continue;
        };
        if let Some(o) = super::fown::slot(&mut e).filter(|o| super::fown::is_set(o)) {
            if done.insert(f.id) {
                super::fown::restore(cx, fd, o, img.pid)?;
            }
        }
    }
    Ok(())
}

/// Cryo's own copy of fd `fd` of process `pid` (`pidfd_getfd`: the same open file).
pub fn copy_of(pid: i32, fd: i32) -> Result<OwnedFd, TaskError> {
    let pidfd = sys::fd::pidfd_open(pid).map_err(TaskError::fd(pid, fd, "pidfd_open"))?;
    sys::fd::pidfd_getfd(pidfd.as_fd(), fd).map_err(TaskError::fd(pid, fd, "pidfd_getfd"))
}

/// Opens regular-file record `id` in the puppet, at its saved offset; returns the fd.
fn open_reg(cx: &mut RestoreCx<'_>, id: u32) -> Result<RemoteFd, FilesError> {
    let reg = cx.reg(id)?.clone();
    if let Some(size) = reg.size {
        if let Ok(m) = std::fs::metadata(&reg.name) {
            if m.len() < reg.pos {
                tracing::warn!(
                    file = %reg.name,
                    size = m.len(),
                    offset = reg.pos,
                    saved_size = size,
                    "file now shorter than the saved offset"
                );
            }
        }
    }
    let fd = open_file(cx, id, reg.flags)?;
    if reg.pos != 0 {
        cx.lseek(fd, reg.pos, libc::SEEK_SET)?;
    }
    Ok(fd)
}

/// Opens the file of regular-file record `id` in the puppet with `flags` (a deleted file
/// is recreated from its ghost image by cryo and handed over); returns the puppet's fd.
pub fn open_file(cx: &mut RestoreCx<'_>, id: u32, flags: u32) -> Result<RemoteFd, FilesError> {
    let cell = cx.objs;
    if cx.files.get(&id).map(|f| f.r#type) == Some(pb::FdTypes::Memfd as i32) {
        // A mapped memfd: the puppet takes cryo's memfd.
        let local = cell.borrow_mut().get(id)?;
        return Ok(cx.take_from_cryo(local)?);
    }
    let reg = cx.reg(id)?.clone();
    let flags = super::ghost::reopen_flags(flags).cast_unsigned();
    if reg.cryo_mqueue == Some(true) {
        // Opened by name in the puppet's IPC namespace, whose queues exist by now.
        // The queue's name is the last component (the fd may have been opened through a
        // mount of the mqueue file system, e.g. /dev/mqueue/NAME).
        let name = reg.name.rsplit('/').next().unwrap_or_default();
        let p = cx.put_path(name)?;
        let mode = flags.cast_signed() & (libc::O_ACCMODE | libc::O_NONBLOCK);
        return Ok(cx.mq_open(p, mode)?);
    }
    let linked = cell.borrow().ghosts.linked(id);
    if let Some(lid) = linked {
        // Removed from its name, reopened through the temporary one the dump made (in the
        // namespace of the mount it was opened through).
        let lreg = cx.reg(lid)?.clone();
        let path = lreg.name.clone();
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
            None => ("/", path.as_str()),
        };
        let other = cell.borrow_mut().other_mnt_ns_root(&lreg)?;
        let own_ns = cx.objs.borrow().cur_mnt_ns;
        let root_ns = cx.objs.borrow().root_mnt_ns();
        let (fd, held) = match other {
            Some(root) => {
                let local = sys::fd::open_in_root_fd(root.as_fd(), &path, flags.cast_signed())
                    .map_err(TaskError::object(
                        id,
                        format!("open {path} (in another mount namespace of the tree)"),
                    ))?;
                let held = sys::fd::open_in_root_fd(root.as_fd(), dir, libc::O_PATH).ok();
                (cx.take_from_cryo(local.as_raw_fd())?, held)
            }
            None => {
                let fd = cx.open(&path, flags)?;
                // In the puppet's own namespace, when that is not the root's.
                let held = (own_ns.is_some() && own_ns != root_ns)
                    .then(|| {
                        sys::fd::open_in_root(&format!("/proc/{}/root", cx.pid), dir, libc::O_PATH)
                            .ok()
                    })
                    .flatten();
                (fd, held)
            }
        };
        let mut objs = cell.borrow_mut();
        let ns = objs.ns_pid;
        match held {
            Some(d) => objs.ghosts.note_linked_at(d, name),
            None => objs.ghosts.note_linked(&path, ns),
        }
        return Ok(fd);
    }
    if cell.borrow().ghosts.is_ghost(id) {
        return open_ghost(cx, id, &reg, flags);
    }
    let other = cell.borrow_mut().other_mnt_ns_root(&reg)?;
    if let Some(root) = other {
        // Opened through a mount of another mount namespace of the tree: cryo opens it in
        // that namespace's root and hands it over, so its mount is that one.
        let local = sys::fd::open_in_root_fd(root.as_fd(), &reg.name, flags.cast_signed())
            .map_err(TaskError::object(
                id,
                format!("open {} (in another mount namespace of the tree)", reg.name),
            ))?;
        return Ok(cx.take_from_cryo(local.as_raw_fd())?);
    }
    if reg.name == "/dev/tty" {
        // A shell job's terminal: the one cryo runs on, by its real name (/dev/pts/N), as the
        // program had it.
        if let Some(p) = own_terminal() {
            return Ok(cx.open(&p, flags)?);
        }
    }
    Ok(cx.open(&reg.name, flags)?)
}

/// Opens ghost record `id` (a deleted file, made again first) for the puppet with `flags`
/// through the mount it was opened through: in the root of the namespace that has that
/// mount (another saved namespace's, else the puppet's own), cryo opens the file made in
/// the fd's directory (zdtm mntns_ghost01: a read-only bind of the file's directory in a
/// child's namespace) and hands it over. When that directory is another place of the file
/// system (zdtm mntns_link_ghost: binds of two directories), the file made is linked into it
/// first through that mount (by file handle) and the link removed with the ghost, as CRIU
/// links it. The file opened must be the inode made. A directory no longer there is
/// opened by cryo where the file was made.
fn open_ghost(
    cx: &mut RestoreCx<'_>,
    id: u32,
    reg: &pb::RegFileEntry,
    flags: u32,
) -> Result<RemoteFd, FilesError> {
    let cell = cx.objs;
    let other = cell.borrow_mut().other_mnt_ns_root(reg)?;
    let root = match other {
        Some(r) => Ok(r),
        None => std::fs::File::open(format!("/proc/{}/root", cx.pid)),
    };
    let (dir, name) = match reg.name.rsplit_once('/') {
        Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
        None => ("/", reg.name.as_str()),
    };
    let dirfd = root
        .and_then(|r| sys::fd::open_in_root_fd(r.as_fd(), dir, libc::O_RDONLY | libc::O_DIRECTORY));
    let at = {
        let mut objs = cell.borrow_mut();
        let objs = &mut *objs;
        match &dirfd {
            Ok(d) => {
                objs.ghosts
                    .materialize_in(&objs.dir, id, &reg.name, objs.ns_pid, d.as_fd())?
            }
            Err(_) => objs
                .ghosts
                .materialize(&objs.dir, id, &reg.name, objs.ns_pid)?,
        }
    };
    let made = cell.borrow().ghosts.made_inode(id);
    let where_made = |cx: &mut RestoreCx<'_>| -> Result<RemoteFd, FilesError> {
        let local = {
            let mut objs = cell.borrow_mut();
            let objs = &mut *objs;
            objs.ghosts
                .open(&objs.dir, id, &reg.name, flags, objs.ns_pid)?
        };
        // The name may show another file than the one made (made in another mount
        // namespace's directory): never handed over silently.
        let same = rustix::fs::fstat(&local).is_ok_and(|s| Some((s.st_dev, s.st_ino)) == made);
        if made.is_some() && !same {
            return Err(TaskError::object(
                id,
                format!(
                    "open deleted file {} where it was made: that path shows another file (it was made in another mount namespace)",
                    reg.name
                ),
            )(std::io::Error::from_raw_os_error(libc::ESTALE))
            .into());
        }
        Ok(cx.take_from_cryo(local.as_raw_fd())?)
    };
    let dirfd = match (dirfd, made) {
        (Ok(d), Some(_)) => d,
        (r, _) => {
            tracing::warn!(file = %reg.name, error = ?r.err(), "the deleted file's directory or the file made is not there: opened where it was made");
            return where_made(cx);
        }
    };
    let open = |n: &str| {
        rustix::fs::openat(
            &dirfd,
            n,
            rustix::fs::OFlags::from_bits_retain(flags) | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
        .filter(|f| rustix::fs::fstat(f).is_ok_and(|s| Some((s.st_dev, s.st_ino)) == made))
    };
    // Made in this directory (the same place of the file system)?
    let made_name = at.file_name().map(|n| n.to_string_lossy().into_owned());
    let is_made = |n: &str| {
        rustix::fs::statat(&dirfd, n, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| Some((s.st_dev, s.st_ino)) == made)
    };
    if let Some(n) = made_name.as_deref().filter(|n| is_made(n)) {
        return match open(n) {
            Some(local) => Ok(cx.take_from_cryo(local.as_raw_fd())?),
            // Open for writing under a read-only mount (made so after the open).
            None => where_made(cx),
        };
    }
    let what = format!(
        "link deleted file {} made again into {dir} through its mount",
        reg.name
    );
    let used = cell
        .borrow_mut()
        .ghosts
        .link_into(id, dirfd.as_fd(), name)
        .map_err(TaskError::object(id, what))?;
    let local = open(&used).ok_or_else(|| {
        TaskError::object(
            id,
            format!("open deleted file {} made again at {dir}/{used}", reg.name),
        )(std::io::Error::from_raw_os_error(libc::ESTALE))
    })?;
    Ok(cx.take_from_cryo(local.as_raw_fd())?)
}

/// Where `path` (an fd's, as its link reads) is on its file system: the root of `pid`'s
/// mount `mnt_id` joined with the part of `path` under that mount's mount point. None when
/// `pid`'s namespace has no such mount or `path` is not under it.
fn path_on_fs(pid: i32, mnt_id: i32, path: &str) -> Option<String> {
    let infos = super::mounts::parse_mountinfo(&procfs::read(pid, "mountinfo").ok()?);
    let m = infos
        .iter()
        .find(|m| i64::from(m.id) == i64::from(mnt_id))?;
    let rest = if m.mountpoint == "/" {
        path
    } else {
        let r = path.strip_prefix(m.mountpoint.as_str())?;
        if !r.is_empty() && !r.starts_with('/') {
            return None;
        }
        r
    };
    Some(format!("{}{rest}", m.root.trim_end_matches('/')))
}

/// `pid`, or the nearest ancestor of it, whose mount namespace has mount `mnt_id` (`pid` when
/// none has).
fn mount_holder(pid: i32, mnt_id: i32) -> i32 {
    let has = |p: i32| {
        procfs::read(p, "mountinfo").is_ok_and(|t| {
            t.lines()
                .any(|l| l.split(' ').next() == Some(mnt_id.to_string().as_str()))
        })
    };
    let mut p = pid;
    for _ in 0..64 {
        if has(p) {
            return p;
        }
        match procfs::stat(p).map(|s| s.ppid) {
            Ok(pp) if pp > 1 => p = pp,
            _ => break,
        }
    }
    pid
}

/// Opens `path` with `flags` for the puppet `cx`, in saved mount namespace `own`, in the
/// tree's root mount namespace instead of its own: a file its namespace no longer reaches by
/// path (the program and libraries of a task that pivoted into a new root, left on the root
/// it detached), which CRIU too opens in the root's namespace when it knows no mount of it.
/// None in the root's namespace, or when the file is not there either.
pub fn open_in_root_ns(
    cx: &mut RestoreCx<'_>,
    own: Option<u32>,
    path: &str,
    flags: i32,
) -> Result<Option<RemoteFd>, TaskError> {
    let Some(Ok(root)) = cx.objs.borrow().root_mnt_ns_root(own) else {
        return Ok(None);
    };
    let Ok(local) = sys::fd::open_in_root_fd(root.as_fd(), path, flags | libc::O_CLOEXEC) else {
        return Ok(None);
    };
    tracing::info!(
        pid = cx.pid,
        "{path} is not in the task's mount namespace: opened in the tree's root namespace"
    );
    cx.take_from_cryo(local.as_raw_fd()).map(Some)
}

/// The puppet's fd on the packet socket of file `id` (the one its fds have: cryo's object,
/// made with the fds, rings set), for a mapping of its rings.
pub fn open_socket(cx: &mut RestoreCx<'_>, id: u32) -> Result<RemoteFd, FilesError> {
    if cx.files.get(&id).map(|f| f.r#type) != Some(pb::FdTypes::Packetsk as i32) {
        return Err(TaskError::BadImage(format!(
            "a socket mapping names file {id}, which is not a packet socket"
        ))
        .into());
    }
    let local = cx.objs.borrow_mut().get(id)?;
    Ok(cx.take_from_cryo(local)?)
}

/// The path of cryo's controlling terminal, when one of its stdio fds is on it.
fn own_terminal() -> Option<String> {
    let me = crate::sys::proc::own_pid();
    let ctty = u64::from(procfs::stat(me).ok()?.tty_nr);
    (0..3).find_map(|fd| {
        let m = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        (ctty != 0 && m.file_type().is_char_device() && m.rdev() == ctty)
            .then(|| procfs::link(me, &format!("fd/{fd}")).ok())
            .flatten()
    })
}
