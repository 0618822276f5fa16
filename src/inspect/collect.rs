//! Reads a checkpoint's images (through `image`'s framing and the generated `pb` types) and
//! builds the [`Report`]: the process tree, fds, sockets, pipes, ttys, mounts, namespaces,
//! cgroups and memory. An image that is missing or does not decode becomes a `Note` and the
//! fields it would fill stay empty (`null`, "?"), so a table is never filled with a guess.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;

use super::mem::{self, PageMap};
use super::model::*;
use super::source::{Member, Source};
use super::{InspectError, Options};
use crate::image::{self, pb, Kind};

/// A process's argv and environment, when they are in the saved memory.
type ArgvEnv = (Option<Vec<String>>, Option<Vec<String>>);

/// A shared memory object to search: the first process mapping it, its name, (object
/// offset, address, length) of its VMAs there, and that process's VMA labels.
type SharedObj = (u32, String, Vec<(u64, u64, u64)>, Vec<(u64, u64, String)>);

/// Everything read from one checkpoint, kept for the report, a search, `--dump-mem` and
/// `cryo diff`.
pub struct Loaded {
    pub src: Source,
    pub inventory: Option<pb::InventoryEntry>,
    pub tasks: Vec<Task>,
    pub files: HashMap<u32, pb::FileEntry>,
    pub notes: Vec<(String, String)>,
    /// `cryo-manifest.json` (tool, time, number of files).
    pub manifest: Option<serde_json::Value>,
    /// memfd.img, by inode id.
    pub memfd: HashMap<u64, pb::MemfdInodeEntry>,
}

/// One process as saved.
pub struct Task {
    pub entry: pb::PstreeEntry,
    pub core: Option<pb::CoreEntry>,
    /// Non-leader threads: tid and core.
    pub threads: Vec<(u32, Option<pb::CoreEntry>)>,
    pub ids: Option<pb::TaskKobjIdsEntry>,
    pub mm: Option<pb::MmEntry>,
    pub fs: Option<pb::FsEntry>,
    pub fdinfo: Vec<pb::FdinfoEntry>,
    pub pagemap: Option<PageMap>,
}

impl Task {
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    pub fn comm(&self) -> String {
        self.core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .map(|t| t.comm.clone())
            .unwrap_or_else(|| "?".into())
    }

    fn state(&self) -> (String, Option<u32>) {
        let Some(tc) = self.core.as_ref().and_then(|c| c.tc.as_ref()) else {
            return ("?".into(), None);
        };
        match tc.task_state {
            1 => ("alive".into(), None),
            2 => ("dead".into(), None),
            3 => ("stopped".into(), tc.stop_signo),
            6 => ("zombie".into(), None),
            n => (format!("unknown({n})"), None),
        }
    }

    pub fn zombie(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .is_some_and(|t| t.task_state == 6)
    }
}

/// Decodes image `name` if present; a decoding error becomes a note.
fn img<M: Message + Default>(
    src: &Source,
    name: &str,
    kind: Kind,
    notes: &mut Vec<(String, String)>,
) -> Option<Vec<M>> {
    let m = src.image(name)?;
    let bytes = match src.bytes(m) {
        Ok(b) => b,
        Err(e) => {
            notes.push((name.into(), format!("cannot be read: {e}")));
            return None;
        }
    };
    match image::decode_all(&src.display_name(m), kind, &bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push((name.into(), format!("not decoded: {e}")));
            None
        }
    }
}

/// Like [`img`], for an image holding one entry.
fn img_one<M: Message + Default>(
    src: &Source,
    name: &str,
    kind: Kind,
    notes: &mut Vec<(String, String)>,
) -> Option<M> {
    let mut v = img::<M>(src, name, kind, notes)?;
    if v.len() != 1 {
        notes.push((name.into(), format!("holds {} entries, not one", v.len())));
        return None;
    }
    v.pop()
}

/// Reads the images of `src`.
pub fn load(src: Source) -> Result<Loaded, InspectError> {
    let mut notes = Vec::new();
    let inventory =
        img_one::<pb::InventoryEntry>(&src, "inventory.img", image::INVENTORY, &mut notes);
    if let Some(v) = inventory
        .as_ref()
        .map(|i| i.img_version)
        .filter(|v| *v != 2)
    {
        return Err(InspectError::NotACheckpoint {
            path: src.path.clone(),
            what: format!(
                "inventory.img says image version {v}; cryo reads version 2 (CRIU 1.x and later)"
            ),
        });
    }
    if src.image("pstree.img").is_none() {
        return Err(InspectError::NotACheckpoint {
            path: src.path.clone(),
            what: "pstree.img is missing, so there is no process tree".into(),
        });
    }
    let pstree = match img::<pb::PstreeEntry>(&src, "pstree.img", image::PSTREE, &mut notes) {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(InspectError::NotACheckpoint {
                path: src.path.clone(),
                what: format!(
                    "pstree.img {}",
                    notes
                        .iter()
                        .rev()
                        .find(|n| n.0 == "pstree.img")
                        .map(|n| n.1.clone())
                        .unwrap_or_else(|| "is empty".into())
                ),
            })
        }
    };
    let files: HashMap<u32, pb::FileEntry> =
        img::<pb::FileEntry>(&src, "files.img", image::FILES, &mut notes)
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
    let per_id = inventory
        .as_ref()
        .and_then(|i| i.fdinfo_per_id)
        .unwrap_or(false);
    let mut tasks = Vec::new();
    for e in pstree {
        let pid = e.pid;
        let core =
            img_one::<pb::CoreEntry>(&src, &format!("core-{pid}.img"), image::CORE, &mut notes);
        if core.is_none() && src.image(&format!("core-{pid}.img")).is_none() {
            notes.push((
                format!("core-{pid}.img"),
                format!("missing: the state, name and registers of {pid} are unknown"),
            ));
        }
        let threads = e
            .threads
            .iter()
            .filter(|t| **t != pid)
            .map(|t| {
                (
                    *t,
                    img_one::<pb::CoreEntry>(
                        &src,
                        &format!("core-{t}.img"),
                        image::CORE,
                        &mut notes,
                    ),
                )
            })
            .collect();
        let ids = img_one::<pb::TaskKobjIdsEntry>(
            &src,
            &format!("ids-{pid}.img"),
            image::IDS,
            &mut notes,
        )
        .or_else(|| core.as_ref().and_then(|c| c.ids));
        let zombie = core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .is_some_and(|t| t.task_state == 6);
        let (mm, fs, fdinfo, pagemap) = if zombie {
            (None, None, Vec::new(), None)
        } else {
            let mm = img_one::<pb::MmEntry>(&src, &format!("mm-{pid}.img"), image::MM, &mut notes);
            let fs = img_one::<pb::FsEntry>(&src, &format!("fs-{pid}.img"), image::FS, &mut notes);
            let fdname = match (per_id, &ids) {
                (true, Some(ids)) => format!("fdinfo-{}.img", ids.files_id),
                _ => format!("fdinfo-{pid}.img"),
            };
            let fdinfo = img::<pb::FdinfoEntry>(&src, &fdname, image::FDINFO, &mut notes)
                .unwrap_or_default();
            let pagemap = match PageMap::load(&src, &format!("pagemap-{pid}.img"), &mut notes) {
                Ok(p) => p,
                Err(e) => {
                    notes.push((format!("pagemap-{pid}.img"), format!("not read: {e}")));
                    None
                }
            };
            (mm, fs, fdinfo, pagemap)
        };
        tasks.push(Task {
            entry: e,
            core,
            threads,
            ids,
            mm,
            fs,
            fdinfo,
            pagemap,
        });
    }
    if files.is_empty()
        && tasks.iter().any(|t| !t.fdinfo.is_empty())
        && src.image("files.img").is_none()
    {
        notes.push((
            "files.img".into(),
            "missing: the fds' files are unknown (images of CRIU before 3.x keep them in per-kind images, which cryo does not read)".into(),
        ));
    }
    let manifest = src
        .image(crate::image::manifest::NAME)
        .and_then(|m| src.bytes(m).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let memfd = img::<pb::MemfdInodeEntry>(&src, "memfd.img", image::MEMFD_INODE, &mut notes)
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.inode_id, m))
        .collect();
    Ok(Loaded {
        src,
        inventory,
        tasks,
        files,
        notes,
        manifest,
        memfd,
    })
}

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
fn unix_name(u: &pb::UnixSkEntry) -> Option<String> {
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
fn inet_addr(family: u32, words: &[u32], port: u32) -> String {
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

fn proto_name(p: u32) -> String {
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
fn tty_side(i: &pb::TtyInfoEntry) -> &'static str {
    match major_minor(i.rdev) {
        // /dev/ptmx (what a Unix98 master's fd reports), or a BSD-style master.
        (5, 2) | (128..=135, _) if i.pty.is_some() => "master",
        (136..=143, _) => "slave",
        _ => "-",
    }
}

/// Major/minor of a dev_t as CRIU saves it (32 bits, glibc's encoding).
fn major_minor(d: u32) -> (u32, u32) {
    ((d >> 8) & 0xfff, (d & 0xff) | ((d >> 12) & 0xfff00))
}

fn fd_type_name(t: i32) -> String {
    match pb::FdTypes::try_from(t) {
        Ok(v) => v.as_str_name().to_string(),
        Err(_) => format!("unknown({t})"),
    }
}

/// What the report needs from the fd-kind images.
struct FdWorld {
    holders: HashMap<u32, Vec<Holder>>,
    tty_info: HashMap<u32, pb::TtyInfoEntry>,
    ghosts: BTreeSet<u32>,
    sk_queued: HashMap<u32, (u64, u64)>,
    pipe_data: HashMap<u32, u64>,
    fifo_data: HashMap<u32, u64>,
    tty_data: HashMap<u32, u64>,
    unix_by_ino: HashMap<u32, u32>,
}

impl Loaded {
    fn world(&mut self) -> FdWorld {
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
    fn reg_path(&self, w: &FdWorld, id: u32) -> Option<String> {
        let r = self.files.get(&id)?.reg.as_ref()?;
        Some(if w.ghosts.contains(&id) {
            format!("{} (deleted)", r.name)
        } else {
            r.name.clone()
        })
    }

    /// "pid:fd, pid:fd" of the holders of file `id` other than `me`.
    fn others(w: &FdWorld, id: u32, me: &Holder) -> String {
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

    fn tty_path(&self, w: &FdWorld, t: &pb::TtyFileEntry) -> String {
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
    fn fd(&self, w: &FdWorld, pid: u32, e: &pb::FdinfoEntry) -> Fd {
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

    fn others_of_pipe(&self, w: &FdWorld, pipe_id: u32, me: &Holder) -> String {
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

    /// The label of each VMA of `t`: (start, end, "kind path").
    pub fn vma_labels(&self, t: &Task) -> Vec<(u64, u64, String)> {
        let Some(mm) = &t.mm else { return Vec::new() };
        mm.vmas
            .iter()
            .map(|v| {
                let (kind, path) = self.vma_path(v, mm);
                let label = match path {
                    Some(p) => format!("{kind} {p}"),
                    None => format!("[{kind}]"),
                };
                (v.start, v.end, label)
            })
            .collect()
    }

    /// A VMA's kind and the path of what it maps.
    pub fn vma_path(&self, v: &pb::VmaEntry, mm: &pb::MmEntry) -> (&'static str, Option<String>) {
        let kind = mem::vma_kind_at(v, mm.mm_start_stack);
        let path = match kind {
            "file" => self
                .files
                .get(&(v.shmid as u32))
                .and_then(|f| f.reg.as_ref())
                .map(|r| r.name.clone()),
            "memfd" => self
                .files
                .get(&(v.shmid as u32))
                .and_then(|f| f.memfd.as_ref())
                .map(|m| match self.memfd.get(&(m.inode_id as u64)) {
                    Some(i) => format!("memfd:{}", i.name),
                    None => format!("memfd inode {}", m.inode_id),
                }),
            _ => None,
        };
        (kind, path)
    }

    /// The shmid of the pagemap-shmem image behind a shared VMA.
    pub fn shmem_of(&self, v: &pb::VmaEntry) -> Option<u64> {
        match mem::vma_kind(v) {
            "shmem" => Some(v.shmid),
            "memfd" => {
                let f = self.files.get(&(v.shmid as u32))?.memfd.as_ref()?;
                self.memfd.get(&(f.inode_id as u64)).map(|i| i.shmid as u64)
            }
            _ => None,
        }
    }

    /// The memory section of one task.
    fn memory(&self, t: &Task) -> Option<Memory> {
        let mm = t.mm.as_ref()?;
        let mut vmas = Vec::new();
        let (mut saved, mut parent, mut lazy, mut total) = (0, 0, 0, 0);
        for v in &mm.vmas {
            let (kind, path) = self.vma_path(v, mm);
            let (s, p, l) = t
                .pagemap
                .as_ref()
                .map(|m| m.count(v.start, v.end))
                .unwrap_or((0, 0, 0));
            saved += s;
            parent += p;
            lazy += l;
            total += v.end.saturating_sub(v.start);
            vmas.push(Vma {
                start: hex(v.start),
                end: hex(v.end),
                size: v.end.saturating_sub(v.start),
                prot: mem::prot_string(v),
                kind: kind.into(),
                path,
                offset: v.pgoff,
                pages_saved: s,
                pages_in_parent: p,
                pages_lazy: l,
            });
        }
        Some(Memory {
            vmas,
            vm_bytes: total,
            pages_saved: saved,
            bytes_saved: saved * mem::PAGE,
            pages_in_parent: parent,
            pages_lazy: lazy,
            brk: Some(hex(mm.mm_brk)),
            start_stack: Some(hex(mm.mm_start_stack)),
        })
    }

    /// argv and environment of every task, from the saved memory (one pass).
    fn cmdlines(&self) -> Result<HashMap<u32, ArgvEnv>, InspectError> {
        let mut reqs = Vec::new();
        let mut who = Vec::new();
        for t in &self.tasks {
            let (Some(mm), Some(map)) = (&t.mm, &t.pagemap) else {
                continue;
            };
            for (a, b) in [
                (mm.mm_arg_start, mm.mm_arg_end),
                (mm.mm_env_start, mm.mm_env_end),
            ] {
                // A hostile image cannot make us read gigabytes.
                if b > a && b - a <= 1 << 20 {
                    reqs.push((map, a, (b - a) as usize));
                } else {
                    reqs.push((map, a, 0));
                }
            }
            who.push(t.pid());
        }
        let got = mem::read_ranges(&self.src, &reqs)?;
        let mut out = HashMap::new();
        for (i, pid) in who.iter().enumerate() {
            let conv = |b: &mem::Bytes| {
                (b.missing.is_empty() && !b.data.is_empty()).then(|| mem::nul_strings(&b.data))
            };
            out.insert(*pid, (conv(&got[2 * i]), conv(&got[2 * i + 1])));
        }
        Ok(out)
    }

    fn file_name(&self, id: u32) -> Option<String> {
        self.files.get(&id)?.reg.as_ref().map(|r| r.name.clone())
    }

    /// The process section.
    fn processes(&self, o: &Options, w: &FdWorld) -> Result<Vec<Process>, InspectError> {
        let cmd = if o.sections.ps {
            self.cmdlines()?
        } else {
            HashMap::new()
        };
        let mut out = Vec::new();
        for t in &self.tasks {
            if o.pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            let (state, stop_signal) = t.state();
            let tc = t.core.as_ref().and_then(|c| c.tc.as_ref());
            let th = t.core.as_ref().and_then(|c| c.thread_core.as_ref());
            let mut threads = vec![Thread {
                tid: t.pid(),
                comm: th
                    .and_then(|c| c.comm.clone())
                    .or_else(|| tc.map(|c| c.comm.clone())),
            }];
            for (tid, c) in &t.threads {
                threads.push(Thread {
                    tid: *tid,
                    comm: c
                        .as_ref()
                        .and_then(|c| c.thread_core.as_ref())
                        .and_then(|c| c.comm.clone()),
                });
            }
            let creds = th.and_then(|c| c.creds.as_ref()).map(|c| Creds {
                uid: c.uid,
                gid: c.gid,
                euid: c.euid,
                egid: c.egid,
                groups: c.groups.clone(),
                cap_eff: format!(
                    "{:#x}",
                    c.cap_eff
                        .iter()
                        .enumerate()
                        .fold(0u64, |a, (i, w)| a | ((*w as u64) << (32 * i.min(1))))
                ),
                no_new_privs: c.no_new_privs.map(|v| v != 0),
            });
            let seccomp = th
                .and_then(|c| c.seccomp_mode)
                .or(tc.and_then(|c| c.old_seccomp_mode))
                .map(|m| match m {
                    0 => "disabled".to_string(),
                    1 => "strict".into(),
                    2 => "filter".into(),
                    n => format!("mode({n})"),
                });
            let mut ns = BTreeMap::new();
            if let Some(ids) = &t.ids {
                for (k, v) in ns_ids(ids) {
                    ns.insert(k.to_string(), v);
                }
            }
            let (argv, env) = cmd.get(&t.pid()).cloned().unwrap_or((None, None));
            let fds = o
                .sections
                .fds
                .then(|| t.fdinfo.iter().map(|e| self.fd(w, t.pid(), e)).collect());
            out.push(Process {
                pid: t.pid(),
                ppid: t.entry.ppid,
                pgid: t.entry.pgid,
                sid: t.entry.sid,
                state,
                stop_signal,
                comm: t.comm(),
                exe: t.mm.as_ref().and_then(|m| self.file_name(m.exe_file_id)),
                cwd: t.fs.as_ref().and_then(|f| self.file_name(f.cwd_id)),
                root: t.fs.as_ref().and_then(|f| self.file_name(f.root_id)),
                argv,
                env,
                threads,
                creds,
                seccomp,
                ns,
                cgroup_set: th.and_then(|c| c.cg_set).or(tc.and_then(|c| c.cg_set)),
                fds,
                memory: if o.sections.mem { self.memory(t) } else { None },
            });
        }
        Ok(out)
    }

    fn sockets(&self, o: &Options, w: &FdWorld, notes: &mut Vec<(String, String)>) -> Vec<Socket> {
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

    fn pipes(&self, o: &Options, w: &FdWorld) -> Vec<Pipe> {
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

    fn ttys(&self, o: &Options, w: &FdWorld) -> Vec<Tty> {
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

    fn ns_ids_of(&self, o: &Options) -> BTreeMap<(&'static str, u32), Vec<u32>> {
        let mut m: BTreeMap<(&'static str, u32), Vec<u32>> = BTreeMap::new();
        for t in &self.tasks {
            if o.pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            if let Some(ids) = &t.ids {
                for (k, v) in ns_ids(ids) {
                    m.entry((k, v)).or_default().push(t.pid());
                }
            }
        }
        m
    }

    fn mounts(&mut self, o: &Options) -> Vec<Mount> {
        let mut out = Vec::new();
        let ids: Vec<u32> = self
            .ns_ids_of(o)
            .keys()
            .filter(|(k, _)| *k == "mnt")
            .map(|(_, v)| *v)
            .collect();
        for id in ids {
            let name = format!("mountpoints-{id}.img");
            let Some(ms) = img::<pb::MntEntry>(&self.src, &name, image::MNTS, &mut self.notes)
            else {
                continue;
            };
            for m in ms {
                let fstype = m
                    .fsname
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        pb::Fstype::try_from(m.fstype as i32)
                            .map(|f| f.as_str_name().to_lowercase())
                            .unwrap_or_else(|_| format!("fstype({})", m.fstype))
                    });
                out.push(Mount {
                    ns: id,
                    mnt_id: m.mnt_id,
                    parent_id: m.parent_mnt_id,
                    mountpoint: m.mountpoint,
                    fstype,
                    source: m.source,
                    root: m.root,
                    options: m.options,
                    external: if m.ext_mount == Some(true) {
                        Some(m.ext_key.unwrap_or_default())
                    } else {
                        None
                    },
                    shared: m.shared_id.filter(|v| *v != 0),
                    master: m.master_id.filter(|v| *v != 0),
                });
            }
        }
        out
    }

    fn namespaces(&mut self, o: &Options) -> Vec<Namespace> {
        let mut out = Vec::new();
        for ((kind, id), pids) in self.ns_ids_of(o) {
            let mut details = BTreeMap::new();
            let n = &mut self.notes;
            let src = &self.src;
            let has = |name: String| src.image(&name).is_some();
            let saved = match kind {
                "uts" => {
                    if let Some(u) =
                        img_one::<pb::UtsnsEntry>(src, &format!("utsns-{id}.img"), image::UTSNS, n)
                    {
                        details.insert("hostname".into(), u.nodename.into());
                        details.insert("domainname".into(), u.domainname.into());
                        true
                    } else {
                        false
                    }
                }
                "net" => {
                    let mut saved = false;
                    if let Some(devs) = img::<pb::NetDeviceEntry>(
                        src,
                        &format!("netdev-{id}.img"),
                        image::NETDEV,
                        n,
                    ) {
                        let d: Vec<serde_json::Value> = devs
                            .iter()
                            .map(|d| {
                                serde_json::json!({
                                    "name": d.name, "mtu": d.mtu,
                                    "up": d.flags & libc::IFF_UP as u32 != 0,
                                    "type": pb::NdType::try_from(d.r#type).map(|t| t.as_str_name().to_lowercase()).unwrap_or_default(),
                                })
                            })
                            .collect();
                        details.insert("devices".into(), d.into());
                        saved = true;
                    }
                    if let Some(e) =
                        img_one::<pb::NetnsEntry>(src, &format!("netns-{id}.img"), image::NETNS, n)
                    {
                        if let Some(k) = e.ext_key {
                            details.insert("external".into(), k.into());
                        }
                        saved = true;
                    }
                    saved
                }
                "mnt" => {
                    let name = format!("mountpoints-{id}.img");
                    if let Some(ms) = img::<pb::MntEntry>(src, &name, image::MNTS, n) {
                        details.insert("mounts".into(), ms.len().into());
                        true
                    } else {
                        false
                    }
                }
                "ipc" => {
                    let mut saved = false;
                    for (what, kind) in [
                        ("shm", image::IPCNS_SHM),
                        ("sem", image::IPCNS_SEM),
                        ("msg", image::IPCNS_MSG),
                    ] {
                        let name = format!("ipcns-{what}-{id}.img");
                        if let Some(m) = src.image(&name) {
                            saved = true;
                            if let Ok(b) = src.bytes(m) {
                                if let Ok(e) = image::entries(&src.display_name(m), kind, &b) {
                                    details.insert(format!("{what}_objects"), e.len().into());
                                }
                            }
                        }
                    }
                    if has(format!("ipcns-mq-{id}.img")) {
                        details.insert("posix_mqueues".into(), true.into());
                    }
                    saved || has(format!("ipcns-var-{id}.img"))
                }
                "time" => {
                    if let Some(t) = img_one::<pb::TimensEntry>(
                        src,
                        &format!("timens-{id}.img"),
                        image::TIMENS,
                        n,
                    ) {
                        details.insert(
                            "monotonic".into(),
                            format!("{}.{:09}", t.monotonic.tv_sec, t.monotonic.tv_nsec).into(),
                        );
                        details.insert(
                            "boottime".into(),
                            format!("{}.{:09}", t.boottime.tv_sec, t.boottime.tv_nsec).into(),
                        );
                        true
                    } else {
                        false
                    }
                }
                "pid" => has(format!("pidns-{id}.img")),
                "user" => has(format!("userns-{id}.img")),
                _ => false,
            };
            out.push(Namespace {
                kind: kind.into(),
                id,
                saved,
                pids,
                details,
            });
        }
        out
    }

    fn cgroups(&mut self, o: &Options) -> Option<Cgroups> {
        let cg =
            img_one::<pb::CgroupEntry>(&self.src, "cgroup.img", image::CGROUP, &mut self.notes)?;
        let dumper = self.inventory.as_ref().and_then(|i| i.root_cg_set);
        let mut sets = Vec::new();
        for s in &cg.sets {
            let pids: Vec<u32> = self
                .tasks
                .iter()
                .filter(|t| {
                    let tc = t.core.as_ref().and_then(|c| c.tc.as_ref());
                    let th = t.core.as_ref().and_then(|c| c.thread_core.as_ref());
                    th.and_then(|c| c.cg_set).or(tc.and_then(|c| c.cg_set)) == Some(s.id)
                })
                .map(|t| t.pid())
                .filter(|p| o.pid.is_none_or(|q| q == *p))
                .collect();
            if o.pid.is_some() && pids.is_empty() {
                continue;
            }
            sets.push(CgroupSet {
                id: s.id,
                dumper: dumper == Some(s.id),
                pids,
                paths: s
                    .ctls
                    .iter()
                    .map(|c| (c.name.clone(), c.path.clone()))
                    .collect(),
            });
        }
        let mut dirs = Vec::new();
        fn walk(c: &str, base: &str, d: &pb::CgroupDirEntry, out: &mut Vec<CgroupDir>) {
            let path = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                d.dir_name.trim_start_matches('/')
            );
            out.push(CgroupDir {
                controllers: c.to_string(),
                path: path.clone(),
                properties: d
                    .properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect(),
            });
            for ch in &d.children {
                walk(c, &path, ch, out);
            }
        }
        for c in &cg.controllers {
            let names = c.cnames.join(",");
            for d in &c.dirs {
                walk(&names, "", d, &mut dirs);
            }
        }
        Some(Cgroups { sets, dirs })
    }

    fn summary(&self) -> Summary {
        let src = &self.src;
        // Image files only: not logs, the manifest or podman's descriptors.json.
        let images: Vec<&Member> = src
            .image_names()
            .iter()
            .filter(|n| {
                image::kind_of(n).is_some() || n.starts_with("pages-") || n.ends_with(".img")
            })
            .filter_map(|n| src.image(n))
            .collect();
        let tool = match &self.manifest {
            Some(m) => m["tool"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| "cryo (version not recorded)".into()),
            None => criu_version(src).unwrap_or_else(|| "CRIU (no cryo-manifest.json)".into()),
        };
        let (written, written_from) =
            match self.manifest.as_ref().and_then(|m| m["written"].as_u64()) {
                Some(t) => (Some(rfc3339(t)), Some("cryo-manifest.json".to_string())),
                None => match src.image("inventory.img").and_then(|m| m.mtime) {
                    Some(t) => (
                        Some(rfc3339(t)),
                        Some(if src.compression.is_some() {
                            "the archive's time for inventory.img".to_string()
                        } else {
                            "inventory.img's modification time".to_string()
                        }),
                    ),
                    None => (None, None),
                },
            };
        let mut notes = Vec::new();
        let stats = img::<pb::StatsEntry>(src, "stats-dump", image::STATS, &mut notes)
            .and_then(|mut v| v.pop())
            .and_then(|s| s.dump)
            .map(|d| DumpStats {
                freezing_us: d.freezing_time,
                frozen_us: d.frozen_time,
                memdump_us: d.memdump_time,
                memwrite_us: d.memwrite_time,
                pages_scanned: d.pages_scanned,
                pages_skipped_parent: d.pages_skipped_parent,
                pages_written: d.pages_written,
                pages_lazy: d.pages_lazy,
            });
        let pages: u64 = self
            .tasks
            .iter()
            .filter_map(|t| t.pagemap.as_ref())
            .map(|p| p.saved_pages())
            .sum();
        let parent = src
            .images_dir()
            .map(|d| d.join("parent"))
            .filter(|p| p.exists())
            .map(|p| std::fs::read_link(&p).unwrap_or(p).display().to_string());
        Summary {
            tool,
            written,
            written_from,
            img_version: self.inventory.as_ref().map(|i| i.img_version),
            root_pid: self.tasks.first().map(|t| t.pid()),
            processes: self.tasks.len(),
            threads: self
                .tasks
                .iter()
                .map(|t| t.entry.threads.len().max(1))
                .sum(),
            zombies: self.tasks.iter().filter(|t| t.zombie()).count(),
            images: images.len(),
            image_bytes: images.iter().map(|m| m.size).sum(),
            pages,
            page_bytes: pages * mem::PAGE,
            stats,
            manifest_files: self
                .manifest
                .as_ref()
                .and_then(|m| m["files"].as_object())
                .map(|f| f.len()),
            parent,
        }
    }

    /// Builds the report the options ask for.
    pub fn report(&mut self, o: &Options) -> Result<Report, InspectError> {
        if let Some(p) = o.pid {
            if !self.tasks.iter().any(|t| t.pid() == p) {
                return Err(InspectError::NoSuchPid {
                    pid: p,
                    pids: self
                        .tasks
                        .iter()
                        .map(|t| t.pid().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                });
            }
        }
        let s = &o.sections;
        let w = self.world();
        let processes = if s.ps || s.fds || s.mem {
            Some(self.processes(o, &w)?)
        } else {
            None
        };
        let mut sk_notes = Vec::new();
        let sockets = s.sockets.then(|| self.sockets(o, &w, &mut sk_notes));
        self.notes.extend(sk_notes);
        let pipes = s.fds.then(|| self.pipes(o, &w));
        let ttys = s.fds.then(|| self.ttys(o, &w));
        let mounts = if s.mounts { Some(self.mounts(o)) } else { None };
        let namespaces = if s.mounts {
            Some(self.namespaces(o))
        } else {
            None
        };
        let cgroups = if s.mounts { self.cgroups(o) } else { None };
        let container = if s.container {
            super::runtime::read(&self.src, &mut self.notes)?
        } else {
            None
        };
        let search = match &o.search {
            Some(spec) => Some(self.search(spec, o.pid)?),
            None => None,
        };
        let summary = self.summary();
        let mut notes: Vec<Note> = Vec::new();
        for (object, reason) in &self.notes {
            let n = Note {
                object: object.clone(),
                reason: reason.clone(),
            };
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        let src = &self.src;
        Ok(Report {
            format: FORMAT,
            source: SourceInfo {
                path: src.path.display().to_string(),
                kind: if src.compression.is_some() {
                    "archive"
                } else {
                    "directory"
                },
                compression: src.compression,
                container: src.container,
            },
            summary,
            processes,
            sockets,
            pipes,
            ttys,
            mounts,
            namespaces,
            cgroups,
            container,
            search,
            notes,
        })
    }

    /// `--search`: the saved memory of every process (or `pid`'s).
    fn search(
        &mut self,
        spec: &super::SearchSpec,
        pid: Option<u32>,
    ) -> Result<Search, InspectError> {
        let pattern = if spec.regex {
            spec.pattern.clone()
        } else {
            regex::escape(&spec.pattern)
        };
        let re = regex::bytes::RegexBuilder::new(&pattern)
            .unicode(false)
            .build()
            .map_err(|e| InspectError::Pattern(spec.pattern.clone(), e))?;
        // Shared memory objects, searched once, shown at the address of the first process
        // (of those searched) that maps them.
        let mut shm: BTreeMap<u64, SharedObj> = BTreeMap::new();
        let mut items_own = Vec::new();
        for t in &self.tasks {
            if pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            let labels = self.vma_labels(t);
            if let Some(mm) = &t.mm {
                for v in &mm.vmas {
                    if let Some(id) = self.shmem_of(v) {
                        let e = shm
                            .entry(id)
                            .or_insert_with(|| (t.pid(), t.comm(), Vec::new(), labels.clone()));
                        if e.0 == t.pid() {
                            e.2.push((v.pgoff, v.start, v.end.saturating_sub(v.start)));
                        }
                    }
                }
            }
            if let Some(map) = &t.pagemap {
                items_own.push((t.pid(), t.comm(), map, labels));
            }
        }
        let mut shm_maps = Vec::new();
        for (id, (p, comm, spans, labels)) in shm {
            if let Some(map) = PageMap::load(
                &self.src,
                &format!("pagemap-shmem-{id}.img"),
                &mut self.notes,
            )? {
                shm_maps.push((p, comm, map, spans, labels));
            }
        }
        let mut items: Vec<mem::Searchable<'_>> = items_own
            .into_iter()
            .map(|(pid, comm, map, vmas)| mem::Searchable {
                pid,
                comm,
                map,
                vmas,
                shared_at: None,
            })
            .collect();
        for (p, comm, map, spans, labels) in &shm_maps {
            items.push(mem::Searchable {
                pid: *p,
                comm: comm.clone(),
                map,
                vmas: labels.clone(),
                shared_at: Some(spans.clone()),
            });
        }
        let (hits, truncated, bytes) = mem::search(
            &self.src,
            &items,
            &mem::SearchOpts {
                re: &re,
                context: spec.context,
                max_hits: spec.max_hits,
            },
        )?;
        Ok(Search {
            pattern: spec.pattern.clone(),
            regex: spec.regex,
            hits,
            truncated,
            bytes_searched: bytes,
        })
    }

    /// `--dump-mem PID ADDR LEN`: the bytes, and the ranges not in the checkpoint with why.
    pub fn dump_mem(
        &self,
        pid: u32,
        addr: u64,
        len: u64,
    ) -> Result<(Vec<u8>, Vec<String>), InspectError> {
        let t =
            self.tasks
                .iter()
                .find(|t| t.pid() == pid)
                .ok_or_else(|| InspectError::NoSuchPid {
                    pid,
                    pids: self
                        .tasks
                        .iter()
                        .map(|t| t.pid().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                })?;
        let addr_err = |what: String| InspectError::Address { pid, addr, what };
        if len > 1 << 30 {
            return Err(addr_err("at most 1 GiB at a time".into()));
        }
        let mm =
            t.mm.as_ref()
                .ok_or_else(|| addr_err("no memory image (mm) for this process".into()))?;
        let end = addr
            .checked_add(len)
            .ok_or_else(|| addr_err("the range wraps around".into()))?;
        // The range must be mapped.
        let mut a = addr;
        while a < end {
            let Some(v) = mm.vmas.iter().find(|v| v.start <= a && a < v.end) else {
                return Err(addr_err(format!("{a:#x} is not mapped in {pid}")));
            };
            a = v.end;
        }
        let map = t
            .pagemap
            .as_ref()
            .ok_or_else(|| addr_err("no pagemap image for this process".into()))?;
        let b = mem::read_ranges(&self.src, &[(map, addr, len as usize)])?.remove(0);
        let mut why = Vec::new();
        for (s, n) in &b.missing {
            let v = mm.vmas.iter().find(|v| v.start <= *s && *s < v.end);
            let reason = match v.map(|v| {
                let (k, p) = self.vma_path(v, mm);
                (k, p)
            }) {
                Some(("file", Some(p))) => format!(
                    "clean pages of {p}: their content is in the file, not in the checkpoint"
                ),
                Some(("shmem" | "memfd", _)) => {
                    "shared memory: saved in pagemap-shmem images, not read by --dump-mem".into()
                }
                Some(("vvar" | "vsyscall", _)) => "kernel-provided pages, not saved".into(),
                _ => match map.run_at(*s) {
                    Some(r) if r.flags & mem::PE_LAZY != 0 => "lazy pages, on a page server".into(),
                    Some(r) if r.flags & mem::PE_PARENT != 0 => {
                        "in the parent checkpoint, which is not here".into()
                    }
                    Some(_) => "the pages image is missing or short".into(),
                    None => "never written (reads as zeros)".into(),
                },
            };
            why.push(format!("{s:#x}+{n:#x}: {reason}"));
        }
        Ok((b.data, why))
    }
}

/// The namespace ids of a task, by kind.
pub fn ns_ids(ids: &pb::TaskKobjIdsEntry) -> Vec<(&'static str, u32)> {
    [
        ("mnt", ids.mnt_ns_id),
        ("net", ids.net_ns_id),
        ("pid", ids.pid_ns_id),
        ("ipc", ids.ipc_ns_id),
        ("uts", ids.uts_ns_id),
        ("time", ids.time_ns_id),
        ("user", ids.user_ns_id),
        ("cgroup", ids.cgroup_ns_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

/// "CRIU 4.2" from the first lines of a CRIU dump.log next to the images, if any.
fn criu_version(src: &Source) -> Option<String> {
    let m = src.image("dump.log").or_else(|| src.member("dump.log"))?;
    let head = src.read_at(m, 0, 4096).ok()?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().find(|l| l.contains("Version: "))?;
    let v = line.split("Version: ").nth(1)?.split_whitespace().next()?;
    Some(format!("CRIU {v} (from dump.log)"))
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

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
