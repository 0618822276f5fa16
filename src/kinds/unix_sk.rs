//! Unix sockets: stream, datagram and seqpacket; socketpairs, listeners (with connections
//! not accepted yet), connected and unconnected sockets, path (absolute or relative) and
//! abstract names, socket files deleted or replaced by other files, options, shutdown state,
//! queued data and the files passed in queued messages (files.img UNIXSK records +
//! sk-queues.img).
//!
//! Dump learns each socket's peer, name and queues from `sock_diag`, and reads the queued
//! data without consuming it (`MSG_PEEK` with `SO_PEEK_OFF`, through a copy of the target's
//! fd). Files passed in a queued message (SCM_RIGHTS) come to cryo with the peek and are
//! saved like any open file (`files::dump_in_flight`), named by file id in the message's
//! `scm` entry. The socket file of a path name is found with `SIOCUNIXFILE`: whether it was
//! deleted, its mode and owner, and for a relative name the directory it was bound in
//! (`name_dir`). Every peer must be in the dumped tree: that is checked before the tree is
//! touched.
//!
//! Restore makes the sockets in cryo: a connected pair becomes a `socketpair`; a listener is
//! bound (a stale socket file is replaced) and listens; a socket whose peer waited in a
//! listener's backlog connects to that listener again; a datagram socket connected to a named
//! one (or to itself) connects to it by name. A relative name is bound from its directory
//! (a helper thread with its own working directory). A deleted socket file is bound where it
//! was (the directory made again if it is gone, whatever file took its place moved aside for
//! the moment), reached by a temporary hard link while its peers connect, and unlinked; the
//! links and made directories go when the restore ends. Queued data is sent again by the
//! peer (or, for a named datagram socket, from a temporary socket; for an unnamed one whose
//! peer is gone, from a socketpair end closed after), with the passed files attached; then
//! the shutdown state is applied.

use super::error::{task_error_from, Failure, TaskError, Unsupported};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::files::{
    missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, PrecheckFd, SockOpts, TargetFd,
};
use super::DumpCx;
use crate::image::{self, pb};
use crate::num::{c_int, c_uint};
use crate::sys::net::{self, UnixDiag};
use crate::sys::scm;

/// Why a unix socket could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum UnixSkError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The listener a socket connects to again, made first, or a file passed in a queued
    /// message (SCM_RIGHTS), made to be sent again.
    #[error(transparent)]
    Files(#[from] Box<super::files::FilesError>),
    /// A file passed in a queued message (SCM_RIGHTS) could not be saved.
    #[error(
        "process {pid}: fd {fd} ({link}): a file passed in a message queued on it (SCM_RIGHTS)"
    )]
    InFlight {
        pid: i32,
        fd: i32,
        link: String,
        #[source]
        source: Box<super::files::FilesError>,
    },
}
task_error_from!(UnixSkError, no_failure);

impl Failure for UnixSkError {
    fn hint(&self) -> Option<String> {
        match self {
            UnixSkError::Task(e) => e.hint(),
            UnixSkError::Files(e) => e.hint(),
            UnixSkError::InFlight { source, .. } => source
                .hint()
                .or_else(|| Some("let the program receive its queued messages, then dump".into())),
        }
    }
}

/// Unix sockets.
pub struct UnixSk;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `unix_sk_entry.uflags`: the record stands for a peer outside the tree (CRIU's value).
const USK_EXTERN: u32 = 1;

/// Connects unix socket `u` (file `id`) again to `peer`, a named datagram socket outside
/// the tree (`--ext-unix-sk`), e.g. /dev/log.
fn connect_external(
    objs: &mut FdObjects,
    id: u32,
    u: &pb::UnixSkEntry,
    peer: &pb::UnixSkEntry,
) -> Result<OwnedFd, UnixSkError> {
    if !objs.sock.ext_unix_sk {
        return Err(Unsupported::restore(format!(
            "file {id}: unix socket {} was connected to {}, outside the dumped tree: pass --ext-unix-sk to connect it again",
            u.ino,
            show_name(&peer.name)
        ))
        .into());
    }
    let err = |what: &str| obj_err(id, format!("unix socket {}: {what}", u.ino));
    let s = net::unix_socket(u.r#type.cast_signed()).map_err(err("socket"))?;
    if !u.name.is_empty() {
        bind_name(objs, s.as_fd(), u)?;
    }
    net::connect(s.as_fd(), &peer.name).map_err(err(&format!(
        "connect to {} (outside the tree)",
        show_name(&peer.name)
    )))?;
    finish(&s, u)?;
    set_fl(s.as_fd(), u.flags, id)?;
    Ok(s)
}

/// The inodes of every socket the processes `tree` hold.
fn tree_socket_inodes(tree: &[i32]) -> HashSet<u32> {
    tree.iter()
        .flat_map(|&pid| {
            crate::procfs::fds(pid)
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |fd| crate::procfs::link(pid, &format!("fd/{fd}")).ok())
        })
        .filter_map(|l| inode(&l))
        .collect()
}

/// Socket inode of a "socket:[N]" link.
pub fn inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// All unix sockets of the network namespaces `pids` live in (sock_diag answers for the
/// asker's namespace: cryo enters each in turn), by inode, each with the namespace it was
/// found in (`UnixDiag::netns`).
pub fn diag_all(pids: &[i32]) -> std::io::Result<HashMap<u32, UnixDiag>> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut out = HashMap::new();
    let own = std::fs::metadata("/proc/self/ns/net")?.ino();
    for &pid in pids {
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()) else {
            continue;
        };
        if !seen.insert(ns) {
            continue;
        }
        let _in = if ns != own {
            Some(super::ns::InNs::enter(pid, false)?)
        } else {
            None
        };
        out.extend(
            net::unix_diag()?
                .into_iter()
                .map(|d| (d.ino, UnixDiag { netns: ns, ..d })),
        );
    }
    Ok(out)
}

/// The unix sockets of the network namespace socket `sk` was made in (`SIOCGSKNS`), for a
/// socket the namespaces of the processes do not show: its process made it in another
/// namespace of the tree and came back (or the socket went to another process).
fn diag_socket_ns(sk: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<UnixDiag>> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::File::from(crate::sys::inet::socket_netns(sk)?);
    let ino = ns.metadata()?.ino();
    let own = std::fs::metadata("/proc/self/ns/net")?.ino();
    let _in = if ino != own {
        Some(super::ns::InNs::enter_net_fd(ns, None)?)
    } else {
        None
    };
    Ok(net::unix_diag()?
        .into_iter()
        .map(|d| UnixDiag { netns: ino, ..d })
        .collect())
}

/// The inodes of the network namespaces the processes `tree` are in.
fn tree_netns(tree: &[i32]) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    tree.iter()
        .filter_map(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).ok())
        .map(|m| m.ino())
        .collect()
}

/// Checks, before the tree is touched, that every socket of the tree is a unix socket cryo
/// can restore and that its peer belongs to the tree. `socks` are (pid, fd, inode).
fn precheck(socks: &[(i32, i32, u32)], opts: &SockOpts) -> Result<(), UnixSkError> {
    if socks.is_empty() {
        return Ok(());
    }
    let pids: Vec<i32> = socks.iter().map(|s| s.0).collect();
    let mut diag = diag_all(&pids).map_err(|source| TaskError::Fd {
        pid: socks[0].0,
        fd: socks[0].1,
        what: "sock_diag query of unix sockets".into(),
        source,
    })?;
    // A socket made in another network namespace than its process's: asked for in its own.
    for &(pid, fd, ino) in socks {
        if diag.contains_key(&ino) {
            continue;
        }
        let sk = super::files::copy_of(pid, fd)?;
        let found = diag_socket_ns(sk.as_fd()).map_err(TaskError::fd(
            pid,
            fd,
            "sock_diag query of the unix sockets of its network namespace",
        ))?;
        diag.extend(found.into_iter().map(|d| (d.ino, d)));
    }
    let mine: HashSet<u32> = socks.iter().map(|s| s.2).collect();
    for &(pid, fd, ino) in socks {
        let Some(d) = diag.get(&ino) else {
            return Err(Unsupported::of(
                pid,
                format!("fd {fd} (unix socket {ino})"),
                "sock_diag does not show it in the network namespace it was made in",
                "close it before the dump",
            )
            .into());
        };
        // peer 0: unconnected, or the peer is gone (closed, or not accepted yet).
        if d.peer != 0 && !mine.contains(&d.peer) {
            let peer = diag.get(&d.peer);
            // --ext-unix-sk: a named datagram peer (a log socket) is connected to again.
            let named_dgram =
                peer.is_some_and(|p| i32::from(p.kind) == libc::SOCK_DGRAM && !p.name.is_empty());
            if opts.ext_unix_sk && named_dgram {
                continue;
            }
            let peer_name = peer.map(|p| show_name(&p.name)).unwrap_or_default();
            let hint = if opts.ext_unix_sk {
                "--ext-unix-sk takes only a peer that is a datagram socket bound to a name (e.g. /dev/log); dump the tree that holds both ends"
            } else if named_dgram {
                "pass --ext-unix-sk to connect it to that name again at restore"
            } else {
                "dump the tree that holds both ends (a common ancestor with -t); only a named datagram peer can be external (--ext-unix-sk)"
            };
            return Err(Unsupported::of(
                pid,
                format!("fd {fd} (unix socket {ino})"),
                format!(
                    "its peer (socket {}{}) belongs to a process outside the dumped tree",
                    d.peer,
                    if peer_name.is_empty() {
                        String::new()
                    } else {
                        format!(" {peer_name}")
                    }
                ),
                hint,
            )
            .into());
        }
        // A listener's waiting connections are named by their clients.
        for client in &d.icons {
            let what = if !mine.contains(client) {
                "a connection waiting to be accepted comes from a process outside the dumped tree"
            } else if diag.get(client).is_some_and(|c| c.rqlen.1 > 0) {
                "a connection waiting to be accepted already carries data"
            } else {
                continue;
            };
            return Err(Unsupported::of(
                pid,
                format!("fd {fd} (listening unix socket {})", show_name(&d.name)),
                what,
                "let the program accept its pending connections, then dump",
            )
            .into());
        }
    }
    Ok(())
}

/// A printable socket name ("@abstract" or the path).
fn show_name(name: &[u8]) -> String {
    match name.first() {
        None => String::new(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        Some(_) => String::from_utf8_lossy(name).into_owned(),
    }
}

/// Saves a socket's queue without consuming it (`sk-queues.img`): one entry per message
/// (datagram, seqpacket record) or chunk (stream), with the files passed in it saved and
/// named by file id.
fn dump_queue(
    cx: &mut DumpCx<'_>,
    fd: &TargetFd<'_>,
    sk: &OwnedFd,
    d: &UnixDiag,
    id: u32,
) -> Result<(), UnixSkError> {
    let kind = i32::from(d.kind);
    // A stream or seqpacket socket that is not connected has no queue, and reading it fails
    // (EINVAL, ENOTCONN).
    if kind != libc::SOCK_DGRAM && u32::from(d.state) != TCP_ESTABLISHED {
        return Ok(());
    }
    // Stream and seqpacket sockets report the bytes queued: peeking stops there, before
    // the end of the queue would hand over (and clear) a pending error such as ECONNRESET.
    let queued = (kind != libc::SOCK_DGRAM).then_some(d.rqlen.0 as usize);
    let s = sk.as_fd();
    let old = net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| fd.err("SO_PEEK_OFF", e))?;
    net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| fd.err("SO_PEEK_OFF", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0usize;
    let r = (|| -> Result<(), UnixSkError> {
        loop {
            if queued.is_some_and(|q| seen >= q) {
                return Ok(());
            }
            let m = match scm::peek_msg(s, &mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(fd.err("peek at the queued data", e).into()),
            };
            if m.truncated {
                return Err(Unsupported::of(
                    fd.pid,
                    format!("fd {} ({})", fd.fd, fd.link),
                    format!("a queued message is larger than {} bytes", buf.len()),
                    "let the program read its queued messages, then dump",
                )
                .into());
            }
            if m.len == 0 && m.fds.is_empty() {
                return Ok(()); // end of the stream, or an empty datagram (not kept)
            }
            seen += m.len;
            let mut rights = Vec::new();
            for f in m.fds {
                let (rid, _) =
                    super::files::dump_in_flight(cx, f).map_err(|e| UnixSkError::InFlight {
                        pid: fd.pid,
                        fd: fd.fd,
                        link: fd.link.to_string(),
                        source: Box::new(e),
                    })?;
                rights.push(rid);
            }
            cx.files.sk_queues.push((
                pb::SkPacketEntry {
                    id_for: id,
                    length: crate::num::len32(m.len),
                    scm: if rights.is_empty() {
                        Vec::new()
                    } else {
                        vec![pb::ScmEntry {
                            r#type: libc::SCM_RIGHTS as u32,
                            rights,
                        }]
                    },
                    cryo_from: None,
                },
                buf[..m.len].to_vec(),
            ));
        }
    })();
    // Put the peek offset back as the program had it.
    let _ = net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    r
}

/// What the socket file of a socket bound to a path tells.
struct NameFile {
    /// Gone (unlinked, or replaced by another file).
    deleted: bool,
    /// The directory a relative name was bound in.
    dir: Option<String>,
    /// The file's mode and owner.
    perms: Option<pb::FilePermsEntry>,
    /// The mount the file is on, when the task is in a mount namespace other than cryo's
    /// (CRIU's `mnt_id`): restore reaches the file through that mount even if another one
    /// covers its directory now (zdtm overmount_sock).
    mnt_id: Option<i32>,
}

/// What the socket file of a socket bound to a path tells ([`NameFile`]). `SIOCUNIXFILE`
/// names the very file the socket is attached to; without it (old kernels) the name is
/// looked up in the task's root and compared by inode.
fn name_file(
    fd: &TargetFd<'_>,
    sk: &OwnedFd,
    name: &[u8],
    d: &UnixDiag,
) -> Result<NameFile, UnixSkError> {
    use std::os::unix::fs::MetadataExt;
    let text = String::from_utf8_lossy(name).into_owned();
    let Ok(file) = scm::unix_file(sk.as_fd()) else {
        let on_disk = crate::sys::fd::stat_in_root(&format!("/proc/{}/root", fd.pid), &text)
            .ok()
            .map(|m| crate::num::low32(m.ino()));
        return Ok(NameFile {
            deleted: on_disk != d.vfs.map(|v| v.0),
            dir: None,
            perms: None,
            mnt_id: None,
        });
    };
    let mnt_ns = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    let mnt_id = if mnt_ns(format!("/proc/{}/ns/mnt", fd.pid)) != mnt_ns("/proc/self/ns/mnt".into())
    {
        rustix::fs::statx(
            &file,
            "",
            rustix::fs::AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::MNT_ID,
        )
        .ok()
        .and_then(|st| i32::try_from(st.stx_mnt_id).ok())
    } else {
        None
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| fd.err("readlink of the socket file", e))?;
    let meta = std::fs::File::from(file)
        .metadata()
        .map_err(|e| fd.err("stat of the socket file", e))?;
    let link = link.to_string_lossy().into_owned();
    let (path, deleted) = match link.strip_suffix(" (deleted)") {
        Some(p) => (p.to_string(), true),
        None => (link, false),
    };
    let perms = pb::FilePermsEntry {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
    };
    if text.starts_with('/') {
        return Ok(NameFile {
            deleted,
            dir: None,
            perms: Some(perms),
            mnt_id,
        });
    }
    // Bound by a relative name: the directory is the path without the name.
    let dir = path
        .strip_suffix(text.as_str())
        .and_then(|d| d.strip_suffix('/'))
        .filter(|d| !d.is_empty())
        .or(path
            .strip_suffix(text.as_str())
            .filter(|d| *d == "/")
            .map(|_| "/"))
        .ok_or_else(|| {
            Unsupported::of(
                fd.pid,
                format!("fd {} (unix socket {text})", fd.fd),
                format!("its relative name does not end the path of its socket file ({path})"),
                "bind it by an absolute path, or close it before the dump",
            )
        })?;
    Ok(NameFile {
        deleted,
        dir: Some(dir.to_string()),
        perms: Some(perms),
        mnt_id,
    })
}

fn opts(fd: &TargetFd<'_>, sk: &OwnedFd) -> Result<pb::SkOptsEntry, UnixSkError> {
    let s = sk.as_fd();
    let int =
        |opt| net::getsockopt_int(s, libc::SOL_SOCKET, opt).map_err(|e| fd.err("getsockopt", e));
    let (snd_s, snd_u) =
        net::getsockopt_tv(s, libc::SO_SNDTIMEO).map_err(|e| fd.err("SO_SNDTIMEO", e))?;
    let (rcv_s, rcv_u) =
        net::getsockopt_tv(s, libc::SO_RCVTIMEO).map_err(|e| fd.err("SO_RCVTIMEO", e))?;
    Ok(pb::SkOptsEntry {
        so_sndbuf: c_uint(int(libc::SO_SNDBUF)?),
        so_rcvbuf: c_uint(int(libc::SO_RCVBUF)?),
        so_snd_tmo_sec: snd_s,
        so_snd_tmo_usec: snd_u,
        so_rcv_tmo_sec: rcv_s,
        so_rcv_tmo_usec: rcv_u,
        so_passcred: Some(int(libc::SO_PASSCRED)? != 0),
        so_passsec: Some(int(libc::SO_PASSSEC)? != 0),
        ..Default::default()
    })
}

impl FdKind for UnixSk {
    const NAME: &'static str = "unix socket";
    const TYPE: pb::FdTypes = pb::FdTypes::Unixsk;
    /// Bound and connected by name in the tree's network and mount namespaces.
    const IN_TREE_NS: bool = true;
    type Error = UnixSkError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.socket
            .is_some_and(|(domain, _, _)| domain == libc::AF_UNIX)
    }

    fn precheck_tree(fds: &[PrecheckFd], opts: &SockOpts) -> Result<(), UnixSkError> {
        let socks: Vec<(i32, i32, u32)> = fds
            .iter()
            .filter_map(|f| Some((f.pid, f.fd, inode(&f.link)?)))
            .collect();
        precheck(&socks, opts)
    }

    fn load(objs: &mut FdObjects) -> Result<(), UnixSkError> {
        load_queues(objs)
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, UnixSkError> {
        let ino = inode(fd.link).ok_or_else(|| {
            fd.err(
                "socket inode",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        if cx.files.unix_diag.is_none() {
            let tree = cx.files.tree.clone();
            cx.files.unix_diag = Some(diag_all(&tree).map_err(|e| fd.err("sock_diag", e))?);
            cx.files.unix_tree_netns = tree_netns(&tree);
        }
        let sk = fd.take()?;
        // Made in another network namespace than its process's (zdtm netns_sub): asked for
        // in the namespace the socket names.
        if !cx
            .files
            .unix_diag
            .as_ref()
            .is_some_and(|m| m.contains_key(&ino))
        {
            let found = diag_socket_ns(sk.as_fd()).map_err(|e| fd.err("sock_diag", e))?;
            if let Some(m) = cx.files.unix_diag.as_mut() {
                m.extend(found.into_iter().map(|d| (d.ino, d)));
            }
        }
        let d = cx
            .files
            .unix_diag
            .as_ref()
            .and_then(|m| m.get(&ino))
            .cloned()
            .ok_or_else(|| {
                Unsupported::of(
                    fd.pid,
                    format!("fd {} ({})", fd.fd, fd.link),
                    "sock_diag does not show it in the network namespace it was made in",
                    "close it before the dump",
                )
            })?;
        // Restore makes it in its namespace, which must be one the tree's processes are in
        // (a namespace only a socket holds is not saved).
        if d.netns != 0 && !cx.files.unix_tree_netns.contains(&d.netns) {
            return Err(Unsupported::of(
                fd.pid,
                format!("fd {} (unix socket {ino})", fd.fd),
                "it was made in a network namespace no process of the tree is in (cryo saves the namespaces of the tree's processes only)",
                "close it before the dump, or keep a process of the tree in that namespace",
            )
            .into());
        }
        let o = opts(fd, &sk)?;
        // --ext-unix-sk: the peer outside the tree gets a record of its own (CRIU's
        // USK_EXTERN), which restore connects to by name.
        if d.peer != 0 && cx.files.sock.ext_unix_sk {
            let known = cx
                .files
                .entries
                .iter()
                .any(|e| e.usk.as_ref().is_some_and(|u| u.ino == d.peer));
            if !known && !tree_socket_inodes(&cx.files.tree).contains(&d.peer) {
                let name = cx
                    .files
                    .unix_diag
                    .as_ref()
                    .and_then(|m| m.get(&d.peer))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let pid = cx.files.alloc();
                cx.files.entries.push(pb::FileEntry {
                    r#type: pb::FdTypes::Unixsk as i32,
                    id: pid,
                    usk: Some(pb::UnixSkEntry {
                        id: pid,
                        ino: d.peer,
                        r#type: libc::SOCK_DGRAM as u32,
                        state: TCP_LISTEN,
                        uflags: USK_EXTERN,
                        peer: 0,
                        name,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
        if u32::from(d.state) != TCP_LISTEN {
            dump_queue(cx, fd, &sk, &d, id)?;
        }
        // A path name whose socket file is gone (unlinked, or replaced by another file).
        let mut name = d.name.clone();
        while name.len() > 1 && name.last() == Some(&0) && name[0] != 0 {
            name.pop();
        }
        let (deleted, name_dir, file_perms, mnt_id) = if !name.is_empty() && name[0] != 0 {
            let f = name_file(fd, &sk, &name, &d)?;
            (Some(f.deleted), f.dir, f.perms, f.mnt_id)
        } else {
            (None, None, None, None)
        };
        let shutdown = match d.shutdown & 3 {
            0 => pb::SkShutdown::None,
            1 => pb::SkShutdown::Read,
            2 => pb::SkShutdown::Write,
            _ => pb::SkShutdown::Both,
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Unixsk as i32,
            id,
            usk: Some(pb::UnixSkEntry {
                id,
                ino,
                r#type: u32::from(d.kind),
                state: u32::from(d.state),
                flags: fd.flags(),
                uflags: 0,
                backlog: if u32::from(d.state) == TCP_LISTEN {
                    d.rqlen.1
                } else {
                    0
                },
                peer: d.peer,
                fown: Default::default(),
                opts: o,
                name,
                shutdown: Some(shutdown as i32),
                file_perms,
                name_dir,
                deleted,
                mnt_id,
                cryo_icons: if u32::from(d.state) == TCP_LISTEN {
                    d.icons.clone()
                } else {
                    Vec::new()
                },
                // The network namespace it was made in (CRIU's field): restore makes it there.
                ns_id: (d.netns != 0).then(|| super::misc::ns_id(d.netns)),
            }),
            ..Default::default()
        })
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, UnixSkError> {
        if let Some(fd) = objs.kinds.get::<UnixStore>().pending.remove(&e.id) {
            return Ok(fd);
        }
        let u = e.usk.as_ref().ok_or_else(|| missing(e.id, "unix socket"))?;
        let err = |what: &str| obj_err(e.id, format!("unix socket {}: {what}", u.ino));
        let kind = c_int(u.r#type);
        load_queues(objs)?;
        objs.kinds.get::<UnixStore>().ns_pid = objs.ns_pid;
        let all: HashMap<u32, pb::UnixSkEntry> = objs
            .files
            .values()
            .filter_map(|f| f.usk.clone())
            .map(|s| (s.ino, s))
            .collect();
        // A peer outside the tree (--ext-unix-sk) is only ever connected to, never made.
        if let Some(p) = all.get(&u.peer).filter(|p| p.uflags & USK_EXTERN != 0) {
            return connect_external(objs, e.id, u, p);
        }
        let by_ino: HashMap<u32, pb::UnixSkEntry> = all
            .into_iter()
            .filter(|(_, s)| s.uflags & USK_EXTERN == 0)
            .collect();
        let peer = by_ino.get(&u.peer).cloned();
        let listener_named = |name: &[u8]| {
            by_ino
                .values()
                .find(|s| s.state == TCP_LISTEN && !name.is_empty() && s.name == name)
                .cloned()
        };
        let sk = if u.state == TCP_LISTEN {
            let s = net::unix_socket(kind).map_err(err("socket"))?;
            bind_name(objs, s.as_fd(), u)?;
            net::listen(s.as_fd(), c_int(u.backlog)).map_err(err("listen"))?;
            accept_again(objs, &s, u, &by_ino)?;
            s
        } else if let Some(l) = by_ino
            .values()
            .find(|s| s.state == TCP_LISTEN && s.cryo_icons.contains(&u.ino))
            .cloned()
        {
            // It waited in a listener's backlog: connect to the listener again.
            objs.get(l.id).map_err(Box::new)?;
            let s = net::unix_socket(kind).map_err(err("socket"))?;
            connect_to(objs, s.as_fd(), &l)
                .map_err(err(&format!("connect to {}", show_name(&l.name))))?;
            s
        } else if let Some(p) = peer.as_ref().filter(|p| p.peer == u.ino && p.ino != u.ino) {
            if let Some(l) = listener_named(&u.name).or_else(|| listener_named(&p.name)) {
                // An accepted connection: made by connecting to the listener, which keeps
                // the names both ends report.
                objs.get(l.id).map_err(Box::new)?;
                return objs
                    .kinds
                    .get::<UnixStore>()
                    .pending
                    .remove(&e.id)
                    .ok_or_else(|| {
                        TaskError::BadImage(format!(
                            "unix socket {} was not re-accepted by {}",
                            u.ino,
                            show_name(&l.name)
                        ))
                        .into()
                    });
            }
            // Both ends in the images: a socketpair, with the names it had.
            let (mine, theirs) = net::unix_pair(kind).map_err(err("socketpair"))?;
            for (fd, s) in [(&mine, u), (&theirs, p)] {
                if !s.name.is_empty() {
                    bind_name(objs, fd.as_fd(), s)?;
                }
            }
            // Each queue is refilled by the other end. Both ends are known before: a queue
            // may carry either (zdtm scm06 passes each end over both).
            objs.provide(u.id, &mine).map_err(Box::new)?;
            objs.provide(p.id, &theirs).map_err(Box::new)?;
            send_queue(objs, u.id, theirs.as_fd())?;
            send_queue(objs, p.id, mine.as_fd())?;
            finish(&theirs, p)?;
            set_fl(theirs.as_fd(), p.flags, p.id)?;
            mine
        } else if u.state == TCP_ESTABLISHED && kind != libc::SOCK_DGRAM {
            // Its peer is gone: what is queued is still readable, then end of file.
            let (mine, theirs) = net::unix_pair(kind).map_err(err("socketpair"))?;
            objs.provide(u.id, &mine).map_err(Box::new)?;
            send_queue(objs, u.id, theirs.as_fd())?;
            drop(theirs);
            mine
        } else {
            let queued = objs.kinds.get::<UnixStore>().queues.contains_key(&u.id);
            let s = if kind == libc::SOCK_DGRAM && u.name.is_empty() && queued {
                // Unnamed, with messages from a peer that is gone: they come from the other
                // end of a socketpair, closed after.
                let (mine, theirs) = net::unix_pair(kind).map_err(err("socketpair"))?;
                objs.provide(u.id, &mine).map_err(Box::new)?;
                send_queue(objs, u.id, theirs.as_fd())?;
                mine
            } else {
                net::unix_socket(kind).map_err(err("socket"))?
            };
            if !u.name.is_empty() {
                bind_name(objs, s.as_fd(), u)?;
                // Messages queued to a named datagram socket come from a stand-in sender.
                if kind != libc::SOCK_STREAM && queued {
                    objs.provide(u.id, &s).map_err(Box::new)?;
                    let tmp = net::unix_socket(kind).map_err(err("socket"))?;
                    send_queue_to(objs, u.id, tmp.as_fd(), u)?;
                }
            }
            // A datagram socket connected to a named one, or to itself: connected by name.
            if let Some(p) = peer.as_ref().filter(|_| kind == libc::SOCK_DGRAM) {
                if p.ino != u.ino {
                    objs.get(p.id).map_err(Box::new)?;
                }
                connect_to(objs, s.as_fd(), p)
                    .map_err(err(&format!("connect to {}", show_name(&p.name))))?;
            }
            s
        };
        finish(&sk, u)?;
        set_fl(sk.as_fd(), u.flags, e.id)?;
        Ok(sk)
    }
}

/// Re-creates the accepted connections of listener `l` (just made, its backlog still
/// empty): for each saved pair whose server end carries the listener's name, a client
/// connects and the listener accepts, so both ends report the names they had.
fn accept_again(
    objs: &mut FdObjects,
    l: &OwnedFd,
    lu: &pb::UnixSkEntry,
    by_ino: &HashMap<u32, pb::UnixSkEntry>,
) -> Result<(), UnixSkError> {
    let err = |what: &str| obj_err(lu.id, format!("unix socket {}: {what}", lu.ino));
    for srv in by_ino
        .values()
        .filter(|s| s.state == TCP_ESTABLISHED && s.name == lu.name && s.r#type == lu.r#type)
    {
        let Some(cli) = by_ino.get(&srv.peer).filter(|c| c.peer == srv.ino) else {
            continue;
        };
        let c = net::unix_socket(c_int(cli.r#type)).map_err(err("socket"))?;
        if !cli.name.is_empty() {
            bind_name(objs, c.as_fd(), cli)?;
        }
        connect_to(objs, c.as_fd(), lu).map_err(err("connect (re-accept)"))?;
        let a = net::accept(l.as_fd()).map_err(err("accept"))?;
        send_queue(objs, srv.id, c.as_fd())?;
        send_queue(objs, cli.id, a.as_fd())?;
        finish(&a, srv)?;
        finish(&c, cli)?;
        set_fl(a.as_fd(), srv.flags, srv.id)?;
        set_fl(c.as_fd(), cli.flags, cli.id)?;
        objs.kinds.get::<UnixStore>().pending.insert(srv.id, a);
        objs.kinds.get::<UnixStore>().pending.insert(cli.id, c);
    }
    Ok(())
}

/// One message queued on a socket.
struct Queued {
    data: Vec<u8>,
    /// Files passed with it (SCM_RIGHTS), by file id.
    rights: Vec<u32>,
}

/// Restore-side state spanning several unix sockets.
#[derive(Default)]
pub struct UnixStore {
    /// Sockets made together with another one (the other end of a socketpair), by file id.
    pub pending: HashMap<u32, OwnedFd>,
    /// Queued messages by socket file id (sk-queues.img), loaded once.
    queues: HashMap<u32, Vec<Queued>>,
    /// Files passed in the messages queued on each socket (by socket file id).
    rights: HashMap<u32, Vec<u32>>,
    loaded: bool,
    /// How to reach a socket whose file was deleted, by inode: a hard link to its file,
    /// made for the restore.
    links: HashMap<u32, PathBuf>,
    /// What the restore made for deleted sockets and removes when it ends: the links, and
    /// directories made again (parents first).
    made_links: Vec<PathBuf>,
    made_dirs: Vec<PathBuf>,
    /// How to reach a socket bound under a mount that another mount covers, by inode: its
    /// directory (held, as bound) and its file name there.
    covered: HashMap<u32, (OwnedFd, std::ffi::OsString)>,
    /// The tree's namespaces those paths are in (the root puppet).
    ns_pid: Option<i32>,
    /// Files in flight whose kind's per-task step (an epoll's watches) ran.
    in_flight_done: HashSet<u32>,
}

impl Drop for UnixStore {
    fn drop(&mut self) {
        if self.made_links.is_empty() && self.made_dirs.is_empty() {
            return;
        }
        let _in = self
            .ns_pid
            .and_then(|p| super::ns::InNs::enter(p, true).ok());
        for l in &self.made_links {
            let _ = std::fs::remove_file(l);
        }
        for d in self.made_dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!(
                    "could not remove {} (made for a deleted unix socket): {e}",
                    d.display()
                );
            }
        }
    }
}

pub fn load_queues(objs: &mut FdObjects) -> Result<(), UnixSkError> {
    if objs.kinds.get::<UnixStore>().loaded {
        return Ok(());
    }
    for (e, data) in objs
        .dir
        .read_with_data::<pb::SkPacketEntry>("sk-queues.img", image::SK_QUEUES)?
    {
        let mut rights = Vec::new();
        for scm in &e.scm {
            if scm.r#type != libc::SCM_RIGHTS as u32 {
                return Err(Unsupported::restore(format!(
                    "sk-queues.img: a message queued on file {} carries control data of type {} (only SCM_RIGHTS is restored)",
                    e.id_for, scm.r#type
                ))
                .into());
            }
            rights.extend_from_slice(&scm.rights);
        }
        let store = objs.kinds.get::<UnixStore>();
        store
            .rights
            .entry(e.id_for)
            .or_default()
            .extend_from_slice(&rights);
        store
            .queues
            .entry(e.id_for)
            .or_default()
            .push(Queued { data, rights });
    }
    objs.kinds.get::<UnixStore>().loaded = true;
    Ok(())
}

/// Files in flight (passed in a message queued on one of `sockets`, the file ids a task
/// holds) that no task holds and whose per-task step has not run yet: an epoll's watch
/// list names the fds of the task that receives it.
pub fn in_flight_to(objs: &mut FdObjects, sockets: &[u32]) -> Result<Vec<u32>, UnixSkError> {
    load_queues(objs)?;
    let mut out = Vec::new();
    for s in sockets {
        let ids = objs
            .kinds
            .get::<UnixStore>()
            .rights
            .get(s)
            .cloned()
            .unwrap_or_default();
        for id in ids {
            if !objs.held.contains(&id) && objs.kinds.get::<UnixStore>().in_flight_done.insert(id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// The files passed with a message, as cryo's own copies (made on first use).
fn rights_fds(objs: &mut FdObjects, rights: &[u32]) -> Result<Vec<OwnedFd>, UnixSkError> {
    rights
        .iter()
        .map(|&r| objs.dup(r).map_err(|e| UnixSkError::Files(Box::new(e))))
        .collect()
}

/// Sends the messages queued for socket `id` through `from` (its peer).
fn send_queue(
    objs: &mut FdObjects,
    id: u32,
    from: std::os::fd::BorrowedFd<'_>,
) -> Result<(), UnixSkError> {
    let queue = objs
        .kinds
        .get::<UnixStore>()
        .queues
        .remove(&id)
        .unwrap_or_default();
    for msg in queue {
        let fds = rights_fds(objs, &msg.rights)?;
        let mut pass: Vec<std::os::fd::BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let mut off = 0;
        loop {
            off += scm::send_rights(from, &msg.data[off..], &pass, None)
                .map_err(obj_err(id, "unix socket: requeue the data"))?;
            pass.clear(); // the files go with the first bytes
            if off >= msg.data.len() {
                break;
            }
        }
    }
    Ok(())
}

/// Sends the messages queued for named datagram (or seqpacket) socket `u` from `from`, an
/// unnamed stand-in, by name.
fn send_queue_to(
    objs: &mut FdObjects,
    id: u32,
    from: std::os::fd::BorrowedFd<'_>,
    u: &pb::UnixSkEntry,
) -> Result<(), UnixSkError> {
    let queue = objs
        .kinds
        .get::<UnixStore>()
        .queues
        .remove(&id)
        .unwrap_or_default();
    for msg in queue {
        let fds = rights_fds(objs, &msg.rights)?;
        let pass: Vec<std::os::fd::BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        at_address(objs, u, |a| {
            scm::send_rights(from, &msg.data, &pass, Some(a))
        })
        .map_err(obj_err(id, "unix socket: requeue a datagram"))?;
    }
    Ok(())
}

/// Where a socket bound to a path can be reached now: the link to a deleted one's file,
/// its directory and name for a relative name, or its name.
fn address(objs: &mut FdObjects, s: &pb::UnixSkEntry) -> Vec<u8> {
    if let Some(l) = objs.kinds.get::<UnixStore>().links.get(&s.ino) {
        return l.as_os_str().as_bytes().to_vec();
    }
    match full_path(s) {
        Some(p) => p.as_os_str().as_bytes().to_vec(),
        None => s.name.clone(),
    }
}

/// Connects `fd` to the socket `to` (made already) by the address it can be reached at.
fn connect_to(
    objs: &mut FdObjects,
    fd: std::os::fd::BorrowedFd<'_>,
    to: &pb::UnixSkEntry,
) -> std::io::Result<()> {
    at_address(objs, to, |a| net::connect(fd, a))
}

/// Runs `op` on the address socket `s` (made already) is reached at: by its file name from
/// a thread working in its directory when a mount covers that directory now, else as
/// [`address`] says.
fn at_address<T: Send>(
    objs: &mut FdObjects,
    s: &pb::UnixSkEntry,
    op: impl FnOnce(&[u8]) -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    if let Some((dir, name)) = objs.kinds.get::<UnixStore>().covered.get(&s.ino) {
        let dir = dir.try_clone()?;
        let name = name.clone();
        return in_dir_fd(&dir, || op(name.as_bytes()));
    }
    let a = address(objs, s);
    with_address(&a, op)
}

/// Runs `op` on unix address `a`; a path too long for `sockaddr_un` is given relative to
/// its directory, from a thread working there.
fn with_address<T: Send>(
    a: &[u8],
    op: impl FnOnce(&[u8]) -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    const SUN_PATH: usize = 108;
    if a.len() < SUN_PATH || a.first() == Some(&0) {
        return op(a);
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(a));
    let (Some(dir), Some(base)) = (p.parent(), p.file_name()) else {
        return op(a);
    };
    in_dir(dir, || op(base.as_bytes()))
}

/// Runs `f` in a thread of its own whose working directory is `dir` (the thread gets a
/// private fs context, so cryo's own stays where it is): relative unix names resolve there.
/// The thread shares the caller's namespaces.
fn in_dir<T: Send>(
    dir: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            crate::sys::ns::unshare(crate::sys::ns::UnshareFlags::FS)?;
            std::env::set_current_dir(dir)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("helper thread panicked")))
    })
}

/// As [`in_dir`], working in the directory `dir` holds.
fn in_dir_fd<T: Send>(
    dir: &OwnedFd,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            crate::sys::ns::unshare(crate::sys::ns::UnshareFlags::FS)?;
            rustix::process::fchdir(dir)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("helper thread panicked")))
    })
}

/// Gives the socket file `name` (relative to `dir`) the mode and owner it had, when saved.
fn set_perms<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    name: P,
    perms: Option<&pb::FilePermsEntry>,
) -> std::io::Result<()> {
    use rustix::fs::{chmodat, chownat, AtFlags, Gid, Mode, Uid};
    let Some(p) = perms else { return Ok(()) };
    chmodat(
        &dir,
        name,
        Mode::from_raw_mode(p.mode & 0o7777),
        AtFlags::empty(),
    )?;
    chownat(
        &dir,
        name,
        Some(Uid::from_raw(p.uid)),
        Some(Gid::from_raw(p.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Whether the directory `dir` (a path of the tree, inside the mount at `mountpoint` whose
/// root `root` holds, where the socket file was) does not lead to that mount now: another
/// mount covers it. A directory that is missing is judged by its nearest ancestor that is
/// there: one inside the mount's place on another mount (a cover without that path), or
/// none down to the mount point, is covered; one on the mount itself is not (the directory
/// is simply gone, and the plain bind says so).
fn covered_dir(dir: &Path, mountpoint: &str, root: &OwnedFd) -> bool {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let id = |st: rustix::fs::Statx| st.stx_mnt_id;
    let Ok(mine) = statx(root, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).map(id) else {
        return false;
    };
    let mut d = dir;
    loop {
        match statx(rustix::fs::CWD, d, AtFlags::empty(), StatxFlags::MNT_ID).map(id) {
            Ok(there) => return !d.starts_with(mountpoint) || there != mine,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => match d.parent() {
                Some(up) => d = up,
                None => return false,
            },
            Err(_) => return false,
        }
    }
}

/// Binds `fd` to `s`'s name where its file was, in a directory that a mount made after the
/// bind covers now (zdtm overmount_sock): from a thread with a private copy of the tree's
/// mount namespace in which the socket's mount, alone (`open_tree` without its submounts),
/// is put over its mount point (or, for the root, made the thread's root), so the name,
/// bound as the program bound it, leads under the cover. Nothing of this is seen outside
/// the thread: the tree's mounts stay as they are, and unmounting the cover later is not
/// kept busy by the socket. Returns the directory the file is in (held) and its name, by
/// which the socket's peers connect.
fn bind_covered(
    fd: std::os::fd::BorrowedFd<'_>,
    s: &pb::UnixSkEntry,
    full: &Path,
    mountpoint: &str,
    root: &OwnedFd,
) -> std::io::Result<(OwnedFd, std::ffi::OsString)> {
    use crate::sys::ns::{unshare, UnshareFlags};
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::{MountPropagationFlags, MoveMountFlags, OpenTreeFlags};
    let (Some(dir), Some(base)) = (full.parent(), full.file_name()) else {
        return Err(std::io::Error::other("the name has no directory"));
    };
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // In the tree's namespace still: a copy of that mount alone.
            let alone = rustix::mount::open_tree(
                root,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )?;
            unshare(UnshareFlags::NEWNS | UnshareFlags::FS)?;
            // Nothing mounted in the copy may propagate to the tree's mounts.
            rustix::mount::mount_change(
                "/",
                MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
            )?;
            if mountpoint == "/" {
                rustix::process::fchdir(&alone)?;
                rustix::process::chroot(".")?;
            } else {
                rustix::mount::move_mount(
                    &alone,
                    "",
                    rustix::fs::CWD,
                    mountpoint,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )?;
            }
            // A stale socket file in the way (the program's, left on a disk) is replaced.
            {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(full).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(full)?;
                }
            }
            // A relative name from the directory it was bound in.
            if let Some(d) = s
                .name_dir
                .as_ref()
                .filter(|_| s.name.first() != Some(&b'/'))
            {
                std::env::set_current_dir(d)?;
            }
            net::bind(fd, &s.name)?;
            let held = rustix::fs::open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok((held, base.to_os_string()))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("helper thread panicked")))
    })
}

/// The path of a socket's name: absolute as saved, or a relative name under the directory
/// it was bound in. None for unnamed and abstract sockets.
fn full_path(s: &pb::UnixSkEntry) -> Option<PathBuf> {
    if s.name.first().is_none_or(|&c| c == 0) {
        return None;
    }
    // A path name ends at its first NUL (CRIU's images may keep the terminating one).
    let name = s.name.split(|&c| c == 0).next().unwrap_or(&[]);
    let name = Path::new(std::ffi::OsStr::from_bytes(name));
    Some(match (&s.name_dir, name.is_absolute()) {
        (Some(d), false) => Path::new(d).join(name),
        _ => name.to_path_buf(),
    })
}

/// Binds `fd` to socket `s`'s saved name. A relative name is bound from its directory. A
/// stale socket file in the way is replaced, and the file takes the saved mode and owner. A
/// socket whose file was deleted is bound where it was (its directory made again if gone,
/// another file there moved aside meanwhile), then its file is unlinked, leaving a hard link
/// for its peers to connect through until the restore ends.
fn bind_name(
    objs: &mut FdObjects,
    fd: std::os::fd::BorrowedFd<'_>,
    s: &pb::UnixSkEntry,
) -> Result<(), UnixSkError> {
    let id = s.id;
    let what = |w: &str| format!("unix socket {}: {w} {}", s.ino, show_name(&s.name));
    let Some(full) = full_path(s) else {
        return net::bind(fd, &s.name)
            .map_err(obj_err(id, what("bind to")))
            .map_err(Into::into);
    };
    let bind = || -> std::io::Result<()> {
        match (&s.name_dir, s.name.first()) {
            (Some(dir), Some(&c)) if c != b'/' => in_dir(Path::new(dir), || net::bind(fd, &s.name)),
            _ => net::bind(fd, &s.name),
        }
    };
    let dir = full.parent().unwrap_or(Path::new("/")).to_path_buf();
    let deleted = s.deleted == Some(true);
    // Bound in another mount namespace of the tree than the root's (a child that made its
    // own and bound there, zdtm sk-unix-mntns): bound from a thread in that namespace, by
    // the name the program gave; its peers reach it through its directory, held.
    let root_ns = objs.root_mnt_ns();
    let other = objs
        .other_mnt_ns_host(s.mnt_id, root_ns)
        .map_err(|e| UnixSkError::Files(Box::new(e)))?;
    if let Some(host) = other.filter(|_| !deleted) {
        let base = full
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        let held = super::ns::in_mnt_ns(&host, || {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&full);
            }
            bind()?;
            set_perms(rustix::fs::CWD, &full, s.file_perms.as_ref())?;
            Ok(rustix::fs::open(
                &dir,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?)
        })
        .map_err(obj_err(id, what("bind (in its mount namespace) to")))?;
        objs.kinds
            .get::<UnixStore>()
            .covered
            .insert(s.ino, (held, base));
        return Ok(());
    }
    // Its file's mount, restored: a mount made after the bind may cover the directory.
    let mount = s
        .mnt_id
        .and_then(|m| u32::try_from(m).ok())
        .and_then(|m| objs.mount_roots.get(&m))
        .map(|(mp, r)| r.try_clone().map(|r| (mp.clone(), r)))
        .transpose()
        .map_err(obj_err(id, what("hold the mount of")))?;
    if let Some((mountpoint, root)) = mount.filter(|(mp, r)| !deleted && covered_dir(&dir, mp, r)) {
        let (held, base) = bind_covered(fd, s, &full, &mountpoint, &root).map_err(obj_err(
            id,
            what("bind (under a mount that covers it now) to"),
        ))?;
        set_perms(&held, &base, s.file_perms.as_ref())
            .map_err(obj_err(id, what("set the mode and owner of")))?;
        objs.kinds
            .get::<UnixStore>()
            .covered
            .insert(s.ino, (held, base));
        return Ok(());
    }
    // Directories removed since the bind are made again (and removed at the end when the
    // socket's file was deleted too).
    let mut missing_dirs = Vec::new();
    let mut at = dir.as_path();
    while at.symlink_metadata().is_err() {
        missing_dirs.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    for d in missing_dirs.iter().rev() {
        std::fs::create_dir(d).map_err(obj_err(id, what(&format!("make {} for", d.display()))))?;
        if deleted {
            objs.kinds.get::<UnixStore>().made_dirs.push(d.clone());
        }
    }
    if !deleted {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&full);
        }
        bind().map_err(obj_err(id, what("bind to")))?;
        set_perms(rustix::fs::CWD, &full, s.file_perms.as_ref())
            .map_err(obj_err(id, what("set the mode and owner of")))?;
        return Ok(());
    }
    let me = std::process::id();
    let aside = dir.join(format!(".cryo-aside-{me}-{}", s.ino));
    let moved = full.symlink_metadata().is_ok();
    if moved {
        std::fs::rename(&full, &aside).map_err(obj_err(id, what("move aside what is now at")))?;
    }
    let link = dir.join(format!(".cryo-sk-{me}-{}", s.ino));
    let r = bind()
        .map_err(obj_err(id, what("bind to")))
        .and_then(|_| {
            std::fs::hard_link(&full, &link)
                .map_err(obj_err(id, what("link the deleted socket file")))
        })
        .and_then(|_| {
            let store = objs.kinds.get::<UnixStore>();
            store.links.insert(s.ino, link.clone());
            store.made_links.push(link.clone());
            std::fs::remove_file(&full).map_err(obj_err(id, what("unlink")))
        });
    if moved {
        if let Err(e) = std::fs::rename(&aside, &full) {
            tracing::error!(
                "cannot put {} back from {}: {e}",
                full.display(),
                aside.display()
            );
        }
    }
    r.map_err(Into::into)
}

/// Options and shutdown state, once the queues are refilled.
fn finish(sk: &OwnedFd, u: &pb::UnixSkEntry) -> Result<(), UnixSkError> {
    let s = sk.as_fd();
    let err = |what: &str| obj_err(u.id, format!("unix socket {}: {what}", u.ino));
    let o = &u.opts;
    // The kernel doubles what it is given and reports the doubled value.
    net::setsockopt_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        c_int(o.so_sndbuf / 2),
    )
    .map_err(err("SO_SNDBUFFORCE"))?;
    net::setsockopt_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        c_int(o.so_rcvbuf / 2),
    )
    .map_err(err("SO_RCVBUFFORCE"))?;
    if o.so_snd_tmo_sec != 0 || o.so_snd_tmo_usec != 0 {
        net::setsockopt_tv(s, libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec)
            .map_err(err("SO_SNDTIMEO"))?;
    }
    if o.so_rcv_tmo_sec != 0 || o.so_rcv_tmo_usec != 0 {
        net::setsockopt_tv(s, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)
            .map_err(err("SO_RCVTIMEO"))?;
    }
    if o.so_passcred == Some(true) {
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
            .map_err(err("SO_PASSCRED"))?;
    }
    if o.so_passsec == Some(true) {
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PASSSEC, 1).map_err(err("SO_PASSSEC"))?;
    }
    let how = match u.shutdown.and_then(|v| pb::SkShutdown::try_from(v).ok()) {
        Some(pb::SkShutdown::Read) => Some(libc::SHUT_RD),
        Some(pb::SkShutdown::Write) => Some(libc::SHUT_WR),
        Some(pb::SkShutdown::Both) => Some(libc::SHUT_RDWR),
        _ => None,
    };
    if let Some(how) = how {
        if u.state == TCP_ESTABLISHED || u.peer != 0 {
            net::shutdown(s, how).map_err(err("shutdown"))?;
        }
    }
    Ok(())
}
