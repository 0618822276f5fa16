//! The fd side of a report: each fd described from its `files.img` record (path, or the
//! object and who holds its other end), and the pipes, sockets and ttys of the tree with
//! their queued bytes, from the fd-kind images (tty-info, remap-fpath, sk-queues,
//! pipes-data, fifo-data, tty-data, tcp-stream).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::collect::{img, img_one, Loaded};
use super::mem;
use super::model::*;
use super::Options;
use crate::image::{self, pb};

/// `O_*` flag names.
pub fn open_flags(f: u32) -> Vec<String> {
    let f = f as i32;
    let mut v = vec![match f & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    }
    .to_string()];
    for (bit, name) in [
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"), // the kernel's value (libc has 0 on x86_64)
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
    ] {
        if bit == libc::O_DSYNC && f & libc::O_SYNC == libc::O_SYNC {
            continue;
        }
        if f & bit == bit {
            v.push(name.into());
        }
    }
    v
}

/// TCP state names (the kernel uses them for every socket family).
pub fn sk_state(s: u32) -> String {
    match s {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait1",
        5 => "fin-wait2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        _ => return format!("state({s})"),
    }
    .into()
}

pub fn sk_type(t: u32) -> String {
    match t as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_RAW => "raw",
        libc::SOCK_SEQPACKET => "seqpacket",
        libc::SOCK_RDM => "rdm",
        10 => "packet",
        _ => return format!("type({t})"),
    }
    .into()
}

/// A unix socket's name: a path (made absolute with `name_dir`), `@abstract`, or `None`.
pub(super) fn unix_name(u: &pb::UnixSkEntry) -> Option<String> {
    if u.name.is_empty() {
        return None;
    }
    if u.name[0] == 0 {
        return Some(format!("@{}", mem::escape(&u.name[1..])));
    }
    let n = String::from_utf8_lossy(&u.name).into_owned();
    Some(match &u.name_dir {
        Some(d) if !n.starts_with('/') => format!("{d}/{n}"),
        _ => n,
    })
}

/// An inet address from CRIU's words (in memory order).
pub(super) fn inet_addr(family: u32, words: &[u32], port: u32) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == libc::AF_INET6 as u32 && bytes.len() >= 16 {
        let a: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        format!("[{}]:{port}", std::net::Ipv6Addr::from(a))
    } else if bytes.len() >= 4 {
        let a: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
        format!("{}:{port}", std::net::Ipv4Addr::from(a))
    } else {
        format!("?:{port}")
    }
}

pub(super) fn proto_name(p: u32) -> String {
    match p as i32 {
        libc::IPPROTO_TCP => "tcp".into(),
        libc::IPPROTO_UDP => "udp".into(),
        libc::IPPROTO_UDPLITE => "udplite".into(),
        libc::IPPROTO_ICMP => "icmp".into(),
        libc::IPPROTO_ICMPV6 => "icmpv6".into(),
        libc::IPPROTO_RAW => "raw".into(),
        _ => format!("proto({p})"),
    }
}

/// "master" or "slave" for a pty side (by its device major), "-" for other ttys.
pub(super) fn tty_side(i: &pb::TtyInfoEntry) -> &'static str {
    match major_minor(i.rdev) {
        // /dev/ptmx (what a Unix98 master's fd reports), or a BSD-style master.
        (5, 2) | (128..=135, _) if i.pty.is_some() => "master",
        (136..=143, _) => "slave",
        _ => "-",
    }
}

/// Major/minor of a dev_t as CRIU saves it (32 bits, glibc's encoding).
pub(super) fn major_minor(d: u32) -> (u32, u32) {
    ((d >> 8) & 0xfff, (d & 0xff) | ((d >> 12) & 0xfff00))
}

pub(super) fn fd_type_name(t: i32) -> String {
    match pb::FdTypes::try_from(t) {
        Ok(v) => v.as_str_name().to_string(),
        Err(_) => format!("unknown({t})"),
    }
}

/// What the report needs from the fd-kind images.
pub(super) struct FdWorld {
    pub(super) holders: HashMap<u32, Vec<Holder>>,
    pub(super) tty_info: HashMap<u32, pb::TtyInfoEntry>,
    pub(super) ghosts: BTreeSet<u32>,
    pub(super) sk_queued: HashMap<u32, (u64, u64)>,
    pub(super) pipe_data: HashMap<u32, u64>,
    pub(super) fifo_data: HashMap<u32, u64>,
    pub(super) tty_data: HashMap<u32, u64>,
    pub(super) unix_by_ino: HashMap<u32, u32>,
}

impl Loaded {
    pub(super) fn world(&mut self) -> FdWorld {
        let n = &mut self.notes;
        let src = &self.src;
        let mut holders: HashMap<u32, Vec<Holder>> = HashMap::new();
        for t in &self.tasks {
            for f in &t.fdinfo {
                holders.entry(f.id).or_default().push(Holder {
                    pid: t.pid(),
                    fd: f.fd,
                });
            }
        }
        // Tasks sharing an fd table (CLONE_FILES) read the same fdinfo: listed under each.
        let tty_info = img::<pb::TtyInfoEntry>(src, "tty-info.img", image::TTY_INFO, n)
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let ghosts = img::<pb::RemapFilePathEntry>(src, "remap-fpath.img", image::REMAP_FPATH, n)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.remap_type.unwrap_or(0) == pb::RemapType::Ghost as i32)
            .map(|r| r.orig_id)
            .collect();
        let mut sk_queued: HashMap<u32, (u64, u64)> = HashMap::new();
        for q in
            img::<pb::SkPacketEntry>(src, "sk-queues.img", image::SK_QUEUES, n).unwrap_or_default()
        {
            let e = sk_queued.entry(q.id_for).or_default();
            e.0 += q.length as u64;
            e.1 += 1;
        }
        let sum = |v: Vec<pb::PipeDataEntry>| {
            let mut m: HashMap<u32, u64> = HashMap::new();
            for p in v {
                *m.entry(p.pipe_id).or_default() += p.bytes as u64;
            }
            m
        };
        let pipe_data = sum(img(src, "pipes-data.img", image::PIPES_DATA, n).unwrap_or_default());
        let fifo_data = sum(img(src, "fifo-data.img", image::FIFO_DATA, n).unwrap_or_default());
        let mut tty_data: HashMap<u32, u64> = HashMap::new();
        for d in
            img::<pb::TtyDataEntry>(src, "tty-data.img", image::TTY_DATA, n).unwrap_or_default()
        {
            *tty_data.entry(d.tty_id).or_default() += d.data.len() as u64;
        }
        let unix_by_ino = self
            .files
            .values()
            .filter_map(|f| f.usk.as_ref().map(|u| (u.ino, f.id)))
            .collect();
        FdWorld {
            holders,
            tty_info,
            ghosts,
            sk_queued,
            pipe_data,
            fifo_data,
            tty_data,
            unix_by_ino,
        }
    }

    /// A path of a REG record (with " (deleted)" for a ghost).
    pub(super) fn reg_path(&self, w: &FdWorld, id: u32) -> Option<String> {
        let r = self.files.get(&id)?.reg.as_ref()?;
        Some(if w.ghosts.contains(&id) {
            format!("{} (deleted)", r.name)
        } else {
            r.name.clone()
        })
    }

    /// "pid:fd, pid:fd" of the holders of file `id` other than `me`.
    pub(super) fn others(w: &FdWorld, id: u32, me: &Holder) -> String {
        let v: Vec<String> = w
            .holders
            .get(&id)
            .into_iter()
            .flatten()
            .filter(|h| *h != me)
            .map(|h| format!("{}:{}", h.pid, h.fd))
            .collect();
        v.join(",")
    }

    pub(super) fn tty_path(&self, w: &FdWorld, t: &pb::TtyFileEntry) -> String {
        if let Some(p) = t.regf_id.and_then(|r| self.reg_path(w, r)) {
            // A master opened as /dev/ptmx: name its pty.
            return match w.tty_info.get(&t.tty_info_id) {
                Some(i) if tty_side(i) == "master" && !p.contains("pts") => {
                    format!("{p} (pts {})", i.pty.as_ref().map(|x| x.index).unwrap_or(0))
                }
                _ => p,
            };
        }
        match w.tty_info.get(&t.tty_info_id) {
            Some(i) => {
                let (maj, min) = major_minor(i.rdev);
                match (maj, i.pty.as_ref()) {
                    (128..=135, Some(p)) => format!("/dev/ptmx (pts {})", p.index),
                    (5, Some(p)) if min == 2 => format!("/dev/ptmx (pts {})", p.index),
                    (136..=143, Some(p)) => format!("/dev/pts/{}", p.index),
                    (5, _) if min == 0 => "/dev/tty".into(),
                    (5, _) if min == 1 => "/dev/console".into(),
                    (4, _) => format!("/dev/tty{min}"),
                    _ => format!("tty {maj}:{min}"),
                }
            }
            None => format!("tty (tty-info {} missing)", t.tty_info_id),
        }
    }

    /// One fd of `pid`.
    pub(super) fn fd(&self, w: &FdWorld, pid: u32, e: &pb::FdinfoEntry) -> Fd {
        let me = Holder { pid, fd: e.fd };
        let cloexec = e.flags & libc::FD_CLOEXEC as u32 != 0;
        let mk = |kind: &str, target: String, flags: Option<u32>, pos: Option<u64>| Fd {
            fd: e.fd,
            kind: kind.into(),
            target,
            flags: flags.map(open_flags).unwrap_or_default(),
            cloexec,
            pos,
            file_id: e.id,
        };
        let Some(f) = self.files.get(&e.id) else {
            return mk(
                &fd_type_name(e.r#type).to_lowercase(),
                format!("? (file {} not in files.img)", e.id),
                None,
                None,
            );
        };
        if let Some(r) = &f.reg {
            let mode = r.mode.unwrap_or(0) & libc::S_IFMT;
            let kind = match mode {
                libc::S_IFDIR => "dir",
                libc::S_IFCHR => "chr",
                libc::S_IFBLK => "blk",
                _ if r.cryo_mqueue == Some(true) => "mqueue",
                _ => "file",
            };
            let pos = (kind == "file").then_some(r.pos);
            return mk(
                kind,
                self.reg_path(w, f.id).unwrap_or_default(),
                Some(r.flags),
                pos,
            );
        }
        if let Some(p) = &f.pipe {
            let peers = Self::others_of_pipe(self, w, p.pipe_id, &me);
            let q = w.pipe_data.get(&p.pipe_id).copied().unwrap_or(0);
            let mut t = format!("pipe:[{}]", p.pipe_id);
            if !peers.is_empty() {
                t.push_str(&format!(" <-> {peers}"));
            }
            if q > 0 {
                t.push_str(&format!(" ({q} bytes queued)"));
            }
            return mk("pipe", t, Some(p.flags), None);
        }
        if let Some(ff) = &f.fifo {
            let path = ff
                .regf_id
                .and_then(|r| self.reg_path(w, r))
                .unwrap_or_else(|| "?".into());
            let flags = ff
                .regf_id
                .and_then(|r| self.files.get(&r))
                .and_then(|r| r.reg.as_ref())
                .map(|r| r.flags);
            let q = w.fifo_data.get(&ff.pipe_id).copied().unwrap_or(0);
            let t = if q > 0 {
                format!("{path} (fifo, {q} bytes queued)")
            } else {
                format!("{path} (fifo)")
            };
            return mk("fifo", t, flags, None);
        }
        if let Some(u) = &f.usk {
            let mut t = format!("unix {}", sk_type(u.r#type));
            if let Some(n) = unix_name(u) {
                t.push_str(&format!(" {n}"));
            }
            if sk_state(u.state) == "listen" {
                t.push_str(" listening");
            } else if u.peer != 0 {
                match w.unix_by_ino.get(&u.peer) {
                    Some(pid) => {
                        let peer_holders = Self::others(w, *pid, &me);
                        let pname = self
                            .files
                            .get(pid)
                            .and_then(|p| p.usk.as_ref())
                            .and_then(unix_name);
                        t.push_str(&format!(" <-> {}", pname.unwrap_or_default()));
                        if !peer_holders.is_empty() {
                            t = t.trim_end().to_string();
                            t.push_str(&format!(" {peer_holders}"));
                        }
                    }
                    None => t.push_str(&format!(" <-> ino {} (outside the tree)", u.peer)),
                }
            }
            let (qb, _) = w.sk_queued.get(&u.id).copied().unwrap_or((0, 0));
            if qb > 0 {
                t.push_str(&format!(" ({qb} bytes queued)"));
            }
            return mk("unix", t, Some(u.flags), None);
        }
        if let Some(i) = &f.isk {
            let fam = if i.family == libc::AF_INET6 as u32 {
                "inet6"
            } else {
                "inet"
            };
            let mut t = format!(
                "{} {}",
                proto_name(i.proto),
                inet_addr(i.family, &i.src_addr, i.src_port)
            );
            if i.dst_port != 0 || i.dst_addr.iter().any(|w| *w != 0) {
                t.push_str(&format!(
                    " -> {}",
                    inet_addr(i.family, &i.dst_addr, i.dst_port)
                ));
            }
            t.push_str(&format!(" {}", sk_state(i.state)));
            return mk(fam, t, Some(i.flags), None);
        }
        if let Some(ev) = &f.efd {
            let sem = if ev.cryo_semaphore == Some(true) {
                ", semaphore"
            } else {
                ""
            };
            return mk(
                "eventfd",
                format!("eventfd (count {}{sem})", ev.counter),
                Some(ev.flags),
                None,
            );
        }
        if let Some(ep) = &f.epfd {
            let tfds: Vec<String> = ep.tfd.iter().map(|t| t.tfd.to_string()).collect();
            return mk(
                "eventpoll",
                format!(
                    "eventpoll (watches fds {})",
                    if tfds.is_empty() {
                        "none".into()
                    } else {
                        tfds.join(",")
                    }
                ),
                Some(ep.flags),
                None,
            );
        }
        if let Some(s) = &f.sgfd {
            return mk(
                "signalfd",
                format!("signalfd (mask {:#x})", s.sigmask),
                Some(s.flags),
                None,
            );
        }
        if let Some(t) = &f.tfd {
            let clock = match t.clockid as i32 {
                libc::CLOCK_REALTIME => "realtime".to_string(),
                libc::CLOCK_MONOTONIC => "monotonic".into(),
                libc::CLOCK_BOOTTIME => "boottime".into(),
                c => format!("clock {c}"),
            };
            return mk(
                "timerfd",
                format!(
                    "timerfd ({clock}, next in {}.{:09}s, every {}.{:09}s)",
                    t.vsec, t.vnsec, t.isec, t.insec
                ),
                Some(t.flags),
                None,
            );
        }
        if let Some(i) = &f.ify {
            return mk(
                "inotify",
                format!("inotify ({} watches)", i.wd.len()),
                Some(i.flags),
                None,
            );
        }
        if let Some(ff) = &f.ffy {
            return mk("fanotify", "fanotify".into(), Some(ff.flags), None);
        }
        if let Some(t) = &f.tty {
            let q = w.tty_data.get(&t.tty_info_id).copied().unwrap_or(0);
            let mut target = self.tty_path(w, t);
            if q > 0 {
                target.push_str(&format!(" ({q} bytes queued)"));
            }
            return mk("tty", target, Some(t.flags), None);
        }
        if let Some(m) = &f.memfd {
            let name = self
                .memfd
                .get(&(m.inode_id as u64))
                .map(|i| format!("memfd:{} ({} bytes)", i.name, i.size))
                .unwrap_or_else(|| format!("memfd (inode {})", m.inode_id));
            return mk("memfd", name, Some(m.flags), Some(m.pos));
        }
        if let Some(n) = &f.nsf {
            return mk(
                "ns",
                format!("namespace {} (flags {:#x})", n.ns_id, n.ns_cflag),
                Some(n.flags),
                None,
            );
        }
        if let Some(p) = &f.pidfd {
            return mk(
                "pidfd",
                format!("pidfd (pid {})", p.nspid),
                Some(p.flags),
                None,
            );
        }
        if let Some(p) = &f.psk {
            return mk(
                "packet",
                format!("packet {} ifindex {}", sk_type(p.r#type), p.ifindex),
                Some(p.flags),
                None,
            );
        }
        if let Some(nl) = &f.nlsk {
            return mk(
                "netlink",
                format!("netlink protocol {} port {}", nl.protocol, nl.portid),
                Some(nl.flags),
                None,
            );
        }
        if f.tunf.is_some() {
            return mk("tun", "tun".into(), None, None);
        }
        if f.bpf.is_some() {
            return mk("bpfmap", "bpf map".into(), None, None);
        }
        if f.ext.is_some() {
            return mk("ext", "external file".into(), None, None);
        }
        mk(
            &fd_type_name(f.r#type).to_lowercase(),
            format!("{} (not described)", fd_type_name(f.r#type)),
            None,
            None,
        )
    }

    pub(super) fn others_of_pipe(&self, w: &FdWorld, pipe_id: u32, me: &Holder) -> String {
        let mut v: Vec<String> = Vec::new();
        for f in self.files.values() {
            if f.pipe.as_ref().is_some_and(|p| p.pipe_id == pipe_id) {
                for h in w.holders.get(&f.id).into_iter().flatten() {
                    if h != me {
                        v.push(format!("{}:{}", h.pid, h.fd));
                    }
                }
            }
        }
        v.sort();
        v.join(",")
    }

    pub(super) fn sockets(
        &self,
        o: &Options,
        w: &FdWorld,
        notes: &mut Vec<(String, String)>,
    ) -> Vec<Socket> {
        let mut out = Vec::new();
        let mut ids: Vec<&u32> = self.files.keys().collect();
        ids.sort();
        for id in ids {
            let f = &self.files[id];
            let holders: Vec<Holder> = w.holders.get(id).cloned().unwrap_or_default();
            if o.pid.is_some_and(|p| !holders.iter().any(|h| h.pid == p)) {
                continue;
            }
            let (qb, qp) = w.sk_queued.get(id).copied().unwrap_or((0, 0));
            let shutdown = |s: Option<i32>| {
                s.filter(|s| *s != 0).map(|s| {
                    pb::SkShutdown::try_from(s)
                        .map(|v| v.as_str_name().to_lowercase())
                        .unwrap_or_else(|_| s.to_string())
                })
            };
            if let Some(u) = &f.usk {
                let state = sk_state(u.state);
                out.push(Socket {
                    id: *id,
                    ino: Some(u.ino),
                    family: "unix".into(),
                    kind: sk_type(u.r#type),
                    local: unix_name(u),
                    peer: (u.peer != 0).then(|| {
                        w.unix_by_ino
                            .get(&u.peer)
                            .and_then(|p| self.files.get(p))
                            .and_then(|p| p.usk.as_ref())
                            .and_then(unix_name)
                            .unwrap_or_else(|| format!("ino {}", u.peer))
                    }),
                    peer_ino: (u.peer != 0).then_some(u.peer),
                    queued_bytes: qb,
                    queued_packets: qp,
                    send_queue_bytes: None,
                    backlog: (state == "listen").then_some(u.backlog),
                    state,
                    shutdown: shutdown(u.shutdown),
                    holders,
                });
            } else if let Some(i) = &f.isk {
                let state = sk_state(i.state);
                // An established TCP connection's queues are in tcp-stream-INO.img.
                let (mut qb, mut sendq) = (qb, None);
                if i.proto == libc::IPPROTO_TCP as u32 && state != "listen" && state != "close" {
                    let name = format!("tcp-stream-{:x}.img", i.ino);
                    match self.src.image(&name) {
                        Some(_) => {
                            let mut n = Vec::new();
                            if let Some(t) = img_one::<pb::TcpStreamEntry>(
                                &self.src,
                                &name,
                                image::TCP_STREAM,
                                &mut n,
                            ) {
                                qb = t.inq_len as u64;
                                sendq = Some(t.outq_len as u64);
                            }
                            notes.extend(n);
                        }
                        None => notes
                            .push((name, "missing: the connection's queues are unknown".into())),
                    }
                }
                out.push(Socket {
                    id: *id,
                    ino: Some(i.ino),
                    family: if i.family == libc::AF_INET6 as u32 {
                        "inet6"
                    } else {
                        "inet"
                    }
                    .into(),
                    kind: format!("{} {}", sk_type(i.r#type), proto_name(i.proto)),
                    local: Some(inet_addr(i.family, &i.src_addr, i.src_port)),
                    peer: (i.dst_port != 0).then(|| inet_addr(i.family, &i.dst_addr, i.dst_port)),
                    peer_ino: None,
                    queued_bytes: qb,
                    queued_packets: qp,
                    send_queue_bytes: sendq,
                    backlog: (state == "listen").then_some(i.backlog),
                    state,
                    shutdown: shutdown(i.shutdown),
                    holders,
                });
            } else if let Some(p) = &f.psk {
                out.push(Socket {
                    id: *id,
                    ino: None,
                    family: "packet".into(),
                    kind: sk_type(p.r#type),
                    state: "-".into(),
                    local: Some(format!("ifindex {} protocol {:#x}", p.ifindex, p.protocol)),
                    peer: None,
                    peer_ino: None,
                    queued_bytes: qb,
                    queued_packets: qp,
                    send_queue_bytes: None,
                    backlog: None,
                    shutdown: None,
                    holders,
                });
            } else if let Some(n) = &f.nlsk {
                out.push(Socket {
                    id: *id,
                    ino: Some(n.ino),
                    family: "netlink".into(),
                    kind: format!("protocol {}", n.protocol),
                    state: sk_state(n.state),
                    local: Some(format!("port {}", n.portid)),
                    peer: (n.dst_portid != 0).then(|| format!("port {}", n.dst_portid)),
                    peer_ino: None,
                    queued_bytes: qb,
                    queued_packets: qp,
                    send_queue_bytes: None,
                    backlog: None,
                    shutdown: None,
                    holders,
                });
            }
        }
        out
    }

    pub(super) fn pipes(&self, o: &Options, w: &FdWorld) -> Vec<Pipe> {
        let mut by_id: BTreeMap<(u32, &'static str), Pipe> = BTreeMap::new();
        for f in self.files.values() {
            let (pipe_id, kind, flags, path) = if let Some(p) = &f.pipe {
                (p.pipe_id, "pipe", p.flags, None)
            } else if let Some(ff) = &f.fifo {
                let reg = ff
                    .regf_id
                    .and_then(|r| self.files.get(&r))
                    .and_then(|r| r.reg.as_ref());
                (
                    ff.pipe_id,
                    "fifo",
                    reg.map(|r| r.flags).unwrap_or(0),
                    reg.map(|r| r.name.clone()),
                )
            } else {
                continue;
            };
            let queued = if kind == "pipe" {
                &w.pipe_data
            } else {
                &w.fifo_data
            };
            let e = by_id.entry((pipe_id, kind)).or_insert_with(|| Pipe {
                pipe_id,
                kind,
                path,
                queued_bytes: queued.get(&pipe_id).copied().unwrap_or(0),
                readers: Vec::new(),
                writers: Vec::new(),
            });
            let acc = flags as i32 & libc::O_ACCMODE;
            for h in w.holders.get(&f.id).into_iter().flatten() {
                if acc == libc::O_RDONLY || acc == libc::O_RDWR {
                    e.readers.push(h.clone());
                }
                if acc == libc::O_WRONLY || acc == libc::O_RDWR {
                    e.writers.push(h.clone());
                }
            }
        }
        by_id
            .into_values()
            .map(|mut p| {
                p.readers.sort();
                p.writers.sort();
                p
            })
            .filter(|p| {
                o.pid
                    .is_none_or(|pid| p.readers.iter().chain(&p.writers).any(|h| h.pid == pid))
            })
            .collect()
    }

    pub(super) fn ttys(&self, o: &Options, w: &FdWorld) -> Vec<Tty> {
        let mut out = Vec::new();
        let mut infos: Vec<&pb::TtyInfoEntry> = w.tty_info.values().collect();
        infos.sort_by_key(|i| i.id);
        for i in infos {
            let mut holders = Vec::new();
            for f in self.files.values() {
                if let Some(t) = f.tty.as_ref().filter(|t| t.tty_info_id == i.id) {
                    let path = self.tty_path(w, t);
                    for h in w.holders.get(&f.id).into_iter().flatten() {
                        holders.push((h.clone(), path.clone()));
                    }
                }
            }
            holders.sort();
            if o.pid
                .is_some_and(|p| !holders.iter().any(|(h, _)| h.pid == p))
            {
                continue;
            }
            out.push(Tty {
                id: i.id,
                kind: pb::TtyType::try_from(i.r#type)
                    .map(|t| t.as_str_name().to_lowercase())
                    .unwrap_or_else(|_| i.r#type.to_string()),
                side: tty_side(i).into(),
                index: i.pty.as_ref().map(|p| p.index),
                sid: i.sid,
                pgrp: i.pgrp,
                rows: i.winsize.as_ref().map(|w| w.ws_row),
                cols: i.winsize.as_ref().map(|w| w.ws_col),
                queued_bytes: w.tty_data.get(&i.id).copied().unwrap_or(0),
                holders,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_states() {
        assert_eq!(open_flags(libc::O_WRONLY as u32), ["O_WRONLY"]);
        assert_eq!(
            open_flags((libc::O_RDWR | libc::O_APPEND | libc::O_SYNC) as u32),
            ["O_RDWR", "O_APPEND", "O_SYNC"]
        );
        assert_eq!(sk_state(10), "listen");
        assert_eq!(sk_type(5), "seqpacket");
        assert_eq!(major_minor(136 << 8 | 3), (136, 3));
        assert_eq!(
            inet_addr(2, &[u32::from_ne_bytes([127, 0, 0, 1])], 80),
            "127.0.0.1:80"
        );
    }
}
