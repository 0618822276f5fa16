//! Unix sockets: stream, datagram and seqpacket; socketpairs, listeners (with connections
//! not accepted yet), connected and unconnected sockets, path and abstract names, options,
//! shutdown state and queued data (files.img UNIXSK records + sk-queues.img).
//!
//! Dump learns each socket's peer, name and queues from `sock_diag`, and reads the queued
//! data without consuming it (`MSG_PEEK` with `SO_PEEK_OFF`, through a copy of the target's
//! fd). Every peer must be in the dumped tree: that is checked before the tree is touched.
//!
//! Restore makes the sockets in cryo: a connected pair becomes a `socketpair`; a listener is
//! bound (a stale socket file is replaced) and listens; a socket whose peer waited in a
//! listener's backlog connects to that listener again; a datagram socket connected to a named
//! one connects to it by name. Queued data is sent again by the peer (or, for a named
//! datagram socket, from a temporary socket), then the shutdown state is applied.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};

use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, PrecheckFd, TargetFd};
use super::DumpCx;
use crate::image::{self, pb};
use crate::sys::net::{self, Peeked, UnixDiag};

/// Why a unix socket could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum UnixSkError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The listener a socket connects to again, made first.
    #[error(transparent)]
    Files(#[from] Box<super::files::FilesError>),
}
task_error_from!(UnixSkError);

/// Unix sockets.
pub struct UnixSk;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;

/// Socket inode of a "socket:[N]" link.
pub fn inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// All unix sockets of the network namespaces `pids` live in (sock_diag answers for the
/// asker's namespace: cryo enters each in turn), by inode.
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
        out.extend(net::unix_diag()?.into_iter().map(|d| (d.ino, d)));
    }
    Ok(out)
}

/// Checks, before the tree is touched, that every socket of the tree is a unix socket cryo
/// can restore and that its peer belongs to the tree. `socks` are (pid, fd, inode).
fn precheck(socks: &[(i32, i32, u32)]) -> Result<(), UnixSkError> {
    if socks.is_empty() {
        return Ok(());
    }
    let pids: Vec<i32> = socks.iter().map(|s| s.0).collect();
    let diag = diag_all(&pids).map_err(|source| TaskError::Fd {
        pid: socks[0].0,
        fd: socks[0].1,
        what: "sock_diag query of unix sockets".into(),
        source,
    })?;
    let mine: HashSet<u32> = socks.iter().map(|s| s.2).collect();
    for &(pid, fd, ino) in socks {
        let Some(d) = diag.get(&ino) else {
            return Err(Unsupported::of(pid, format!("fd {fd} (socket:[{ino}])"), "only unix sockets are supported yet (this is an inet, netlink or packet socket)", "TCP and UDP sockets are planned (--tcp-established is refused for now); close it before the dump").into());
        };
        // peer 0: unconnected, or the peer is gone (closed, or not accepted yet).
        if d.peer != 0 && !mine.contains(&d.peer) {
            let peer_name = diag
                .get(&d.peer)
                .map(|p| show_name(&p.name))
                .unwrap_or_default();
            return Err(Unsupported::of(pid, format!("fd {fd} (unix socket {ino})"), format!(
                    "its peer (socket {}{}) belongs to a process outside the dumped tree",
                    d.peer,
                    if peer_name.is_empty() {
                        String::new()
                    } else {
                        format!(" {peer_name}")
                    }
                ), "dump the tree that holds both ends (a common ancestor with -t); external unix sockets are not supported yet").into());
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

/// Reads a socket's queue without consuming it: one entry per message (datagram,
/// seqpacket) or one chunk (stream).
fn peek_queue(fd: &TargetFd<'_>, sk: &OwnedFd) -> Result<Vec<Vec<u8>>, UnixSkError> {
    let s = sk.as_fd();
    let old = net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| fd.err("SO_PEEK_OFF", e))?;
    net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| fd.err("SO_PEEK_OFF", e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let r = loop {
        match net::peek(s, &mut buf) {
            Ok(Peeked::Data(0)) | Ok(Peeked::Empty) => break Ok(()),
            Ok(Peeked::Data(n)) => out.push(buf[..n.min(buf.len())].to_vec()),
            Ok(Peeked::Fds) => {
                break Err(Unsupported::of(
                    fd.pid,
                    format!("fd {} ({})", fd.fd, fd.link),
                    "a queued message carries file descriptors (SCM_RIGHTS)",
                    "let the program read its queued messages, then dump",
                )
                .into())
            }
            Err(e) => break Err(fd.err("peek at the queued data", e).into()),
        }
    };
    // Put the peek offset back as the program had it.
    let _ = net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    r.map(|_| out)
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
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
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

    fn precheck_tree(fds: &[PrecheckFd]) -> Result<(), UnixSkError> {
        let socks: Vec<(i32, i32, u32)> = fds
            .iter()
            .filter_map(|f| Some((f.pid, f.fd, inode(&f.link)?)))
            .collect();
        precheck(&socks)
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
                    "not a unix socket of the tree's network namespaces",
                    "only unix sockets are supported yet",
                )
            })?;
        let sk = fd.take()?;
        let o = opts(fd, &sk)?;
        if d.state as u32 != TCP_LISTEN {
            for msg in peek_queue(fd, &sk)? {
                cx.files.sk_queues.push((
                    pb::SkPacketEntry {
                        id_for: id,
                        length: msg.len() as u32,
                        scm: Vec::new(),
                    },
                    msg,
                ));
            }
        }
        // A path name whose socket file is gone (unlinked, or replaced by another file).
        let mut name = d.name.clone();
        while name.len() > 1 && name.last() == Some(&0) && name[0] != 0 {
            name.pop();
        }
        let deleted = if !name.is_empty() && name[0] != 0 {
            use std::os::unix::fs::MetadataExt;
            let path = String::from_utf8_lossy(&name).into_owned();
            // Looked up in the task's own root (and mount namespace).
            let on_disk = crate::sys::fd::stat_in_root(&format!("/proc/{}/root", fd.pid), &path)
                .ok()
                .map(|m| m.ino() as u32);
            Some(on_disk != d.vfs.map(|v| v.0))
        } else {
            None
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
                r#type: d.kind as u32,
                state: d.state as u32,
                flags: fd.flags(),
                uflags: 0,
                backlog: if d.state as u32 == TCP_LISTEN {
                    d.rqlen.1
                } else {
                    0
                },
                peer: d.peer,
                fown: Default::default(),
                opts: o,
                name,
                shutdown: Some(shutdown as i32),
                deleted,
                cryo_icons: if d.state as u32 == TCP_LISTEN {
                    d.icons.clone()
                } else {
                    Vec::new()
                },
                ..Default::default()
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
        let kind = u.r#type as i32;
        load_queues(objs)?;
        let by_ino: HashMap<u32, pb::UnixSkEntry> = objs
            .files
            .values()
            .filter_map(|f| f.usk.clone())
            .map(|s| (s.ino, s))
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
            bind_name(s.as_fd(), u, e.id)?;
            net::listen(s.as_fd(), u.backlog as i32).map_err(err("listen"))?;
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
            net::connect(s.as_fd(), &l.name)
                .map_err(err(&format!("connect to {}", show_name(&l.name))))?;
            s
        } else if let Some(p) = peer.as_ref().filter(|p| p.peer == u.ino) {
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
                    bind_name(fd.as_fd(), s, s.id)?;
                }
            }
            // Each queue is refilled by the other end.
            send_queue(objs, u.id, theirs.as_fd())?;
            send_queue(objs, p.id, mine.as_fd())?;
            finish(&theirs, p)?;
            set_fl(theirs.as_fd(), p.flags, p.id)?;
            objs.kinds.get::<UnixStore>().pending.insert(p.id, theirs);
            mine
        } else if let Some(p) = peer {
            // A datagram socket connected to a named one: connect again by name.
            objs.get(p.id).map_err(Box::new)?;
            let s = net::unix_socket(kind).map_err(err("socket"))?;
            if !u.name.is_empty() {
                bind_name(s.as_fd(), u, e.id)?;
            }
            net::connect(s.as_fd(), &p.name)
                .map_err(err(&format!("connect to {}", show_name(&p.name))))?;
            s
        } else if u.state == TCP_ESTABLISHED && kind != libc::SOCK_DGRAM {
            // Its peer is gone: what is queued is still readable, then end of file.
            let (mine, theirs) = net::unix_pair(kind).map_err(err("socketpair"))?;
            send_queue(objs, u.id, theirs.as_fd())?;
            drop(theirs);
            mine
        } else {
            let s = net::unix_socket(kind).map_err(err("socket"))?;
            if !u.name.is_empty() {
                bind_name(s.as_fd(), u, e.id)?;
                // Messages queued to a named datagram socket come from a stand-in sender.
                if kind != libc::SOCK_STREAM {
                    let tmp = net::unix_socket(kind).map_err(err("socket"))?;
                    for msg in objs
                        .kinds
                        .get::<UnixStore>()
                        .queues
                        .remove(&u.id)
                        .unwrap_or_default()
                    {
                        net::send_to(tmp.as_fd(), &msg, &u.name)
                            .map_err(err("requeue a datagram"))?;
                    }
                }
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
        let c = net::unix_socket(cli.r#type as i32).map_err(err("socket"))?;
        net::connect(c.as_fd(), &lu.name).map_err(err("connect (re-accept)"))?;
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

/// Restore-side state spanning several unix sockets.
#[derive(Default)]
pub struct UnixStore {
    /// Sockets made together with another one (the other end of a socketpair), by file id.
    pub pending: HashMap<u32, OwnedFd>,
    /// Queued messages by socket file id (sk-queues.img), loaded once.
    queues: HashMap<u32, Vec<Vec<u8>>>,
    loaded: bool,
}

pub fn load_queues(objs: &mut FdObjects) -> Result<(), UnixSkError> {
    if objs.kinds.get::<UnixStore>().loaded {
        return Ok(());
    }
    for (e, data) in objs
        .dir
        .read_with_data::<pb::SkPacketEntry>("sk-queues.img", image::SK_QUEUES)?
    {
        objs.kinds
            .get::<UnixStore>()
            .queues
            .entry(e.id_for)
            .or_default()
            .push(data);
    }
    objs.kinds.get::<UnixStore>().loaded = true;
    Ok(())
}

/// Sends the messages queued for socket `id` through `from` (its peer).
fn send_queue(
    objs: &mut FdObjects,
    id: u32,
    from: std::os::fd::BorrowedFd<'_>,
) -> Result<(), UnixSkError> {
    for msg in objs
        .kinds
        .get::<UnixStore>()
        .queues
        .remove(&id)
        .unwrap_or_default()
    {
        let mut off = 0;
        while off < msg.len() {
            off += net::send(from, &msg[off..])
                .map_err(obj_err(id, "unix socket: requeue the data"))?;
            if msg.is_empty() {
                break;
            }
        }
    }
    Ok(())
}

/// Binds `s` to its saved name, replacing a stale socket file; a deleted one is unlinked
/// again after binding.
fn bind_name(
    fd: std::os::fd::BorrowedFd<'_>,
    s: &pb::UnixSkEntry,
    id: u32,
) -> Result<(), UnixSkError> {
    let path_name = s.name.first().is_some_and(|&c| c != 0);
    // A path name ends at its first NUL (CRIU's images may keep the terminating one).
    let path =
        String::from_utf8_lossy(s.name.split(|&c| c == 0).next().unwrap_or(&[])).into_owned();
    if path_name {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&path);
        }
    }
    net::bind(fd, &s.name).map_err(obj_err(
        id,
        format!("unix socket {}: bind to {}", s.ino, show_name(&s.name)),
    ))?;
    if path_name && s.deleted == Some(true) {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
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
        (o.so_sndbuf / 2) as i32,
    )
    .map_err(err("SO_SNDBUFFORCE"))?;
    net::setsockopt_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        (o.so_rcvbuf / 2) as i32,
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
