//! Pseudo-terminals held by the dumped tree (CRIU's TTY files): pty masters, their slaves,
//! `/dev/tty`, the controlling terminal of each session and its foreground process group.
//!
//! Dump: each tty fd becomes a `files.img` entry of type TTY (`tty_file_entry`) plus a
//! satellite REG record (`regf_id`) holding the path the fd was opened by (`/dev/ptmx`,
//! `/dev/pts/ptmx`, `/dev/pts/3`, ...). Each side of each pty is described once in
//! `tty-info.img` (`tty_info_entry`, id `index << 1 | is_master` as in CRIU): termios,
//! locked termios, window size, packet mode, lock, exclusive mode, session and foreground
//! group, owner, and (cryo extension) the devpts mount it lives in. Once every task is
//! dumped, [`finish_dump`] reads the bytes queued in both directions of each pty whose
//! master the tree holds (`tty-data.img`, like CRIU's `tty_dump_queued_data`), and puts them
//! back ([`Drained`]'s drop) so a failed or `--leave-running` dump loses nothing. Input
//! waiting for the slave is kept line by line (complete lines, then the unterminated one).
//!
//! Restore: [`TtyStore`] makes each pty in cryo on first use: it opens the saved ptmx path
//! until the kernel hands out the saved index (extra masters are closed afterwards; an index
//! held by a foreign pty is an error naming it), unlocks it, opens a keeper slave, puts the
//! queued bytes back with the line discipline in a raw mode ([`inject`]), then sets
//! termios, window size, packet and exclusive modes. The puppets take the master and their
//! own slave descriptions with `pidfd_getfd` like any other [`FdKind`]. The session leader
//! takes its terminal right after its `setsid` ([`take_ctty`]: `TIOCSCTTY` on its slave) and
//! opens its `/dev/tty` fds then; [`set_foreground`] gives the foreground to the saved group
//! once the process groups exist. A slave whose master was outside the tree gets a master
//! made for it; cryo closes it at the end (the slave is hung up, as with CRIU), unless
//! `--orphan-pts-master` asks to keep it ([`take_orphan_masters`]). Lock state is applied last
//! ([`TtyStore::close`]), since a locked slave cannot be opened.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::files::{missing, set_fl, FdKind, FdObjects, FdProbe, TargetFd};
use super::{DumpCx, FileTable, RemoteFd, RestoreCx, Syscalls, TaskImages};
use crate::image::{self, pb, ImageDir};
use crate::num::{c_int, c_uint, len32, low32};
use crate::procfs;
use crate::sys;
use crate::sys::ptrace::Tracee;
use crate::sys::remote::Remote;
use crate::sys::tty::Termios;

/// Why a terminal could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(TtyError);

/// CRIU's fixed index for `/dev/tty` (the caller's controlling terminal).
pub const CTTY_INDEX: u32 = 1006;
/// Most bytes saved per direction of one pty.
const DATA_LIMIT: usize = 1 << 20;

/// Which end of a terminal an fd is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A pty master (opened through a `ptmx` node, 5:2).
    Master,
    /// A pty slave (`/dev/pts/N`, major 136).
    Slave,
    /// `/dev/tty` (5:0): whatever the caller's controlling terminal is.
    Ctty,
}

fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// The side of a character device, if it is one cryo restores.
pub fn side(rdev: u64) -> Option<Side> {
    match (major(rdev), minor(rdev)) {
        (5, 2) => Some(Side::Master),
        (5, 0) => Some(Side::Ctty),
        (136..=143, _) => Some(Side::Slave),
        _ => None,
    }
}

/// The pty index of a slave device number.
pub fn slave_index(rdev: u64) -> u32 {
    low32((major(rdev) - 136) * 256 + minor(rdev))
}

/// CRIU's tty_info id: `index << 1 | is_master`.
pub fn info_id(index: u32, master: bool) -> u32 {
    (index << 1) | u32::from(master)
}

/// The pty index of a master fd, from its fdinfo ("tty-index:").
fn fdinfo_index(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == "tty-index").then(|| v.trim().parse().ok())?
    })
}

/// The devpts mount a pty lives in, from the path one of its ends was opened by: a slave's
/// directory; for a master, the directory of its ptmx node if that is a devpts mount
/// (`/dev/pts/ptmx`), else its `pts` subdirectory (`/dev/ptmx` → `/dev/pts`, as the kernel
/// finds it). The path is the process's own; it is looked at through `/proc/PID/root`, in
/// the process's mount namespace (a container's devpts instance is not cryo's).
fn devpts_of(pid: i32, path: &str, side: Side) -> Option<String> {
    let dir = std::path::Path::new(path).parent()?.to_str()?;
    let is_devpts = |d: &str| sys::tty::is_devpts(&in_root(pid, d));
    let cand = if side == Side::Master && !is_devpts(dir) {
        format!("{}/pts", dir.trim_end_matches('/'))
    } else {
        dir.to_string()
    };
    is_devpts(&cand).then_some(cand)
}

/// `path` of process `pid` as cryo reaches it: through the process's root.
fn in_root(pid: i32, path: &str) -> String {
    format!("/proc/{pid}/root{path}")
}

// ---------------------------------------------------------------------------------------
// Dump
// ---------------------------------------------------------------------------------------

/// Checks, from /proc only, what the tree's terminals allow: the controlling terminal of a
/// session leader must be a pty the tree holds; a `/dev/tty` fd needs a controlling terminal
/// cryo restores (a pty whose master the tree holds, or the shell job's terminal).
pub fn precheck(tree: &[(i32, i32)], shell_job: bool) -> Result<(), TtyError> {
    let pids: Vec<i32> = tree.iter().map(|t| t.0).collect();
    let mut held = HashSet::new(); // indices of ptys with any end in the tree
    let mut masters = HashSet::new(); // ... with their master in the tree
    let mut dev_tty = Vec::new(); // (pid, fd) of /dev/tty fds
    for &pid in &pids {
        let Ok(fds) = procfs::fds(pid) else { continue };
        for fd in fds {
            let Ok(m) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            if !m.file_type().is_char_device() {
                continue;
            }
            match side(m.rdev()) {
                Some(Side::Master) => {
                    let info = procfs::read(pid, &format!("fdinfo/{fd}")).unwrap_or_default();
                    if let Some(i) = fdinfo_index(&info) {
                        held.insert(i);
                        masters.insert(i);
                    }
                }
                Some(Side::Slave) => {
                    held.insert(slave_index(m.rdev()));
                }
                Some(Side::Ctty) => dev_tty.push((pid, fd)),
                None => {}
            }
        }
    }
    let root_tty = procfs::stat(pids[0])?.tty_nr;
    for &pid in &pids {
        let st = procfs::stat(pid)?;
        if st.state == 'Z' {
            continue;
        }
        let ctty = u64::from(st.tty_nr);
        let pty = (side(ctty) == Some(Side::Slave)).then(|| slave_index(ctty));
        if st.session == pid
            && ctty != 0
            && !pty.is_some_and(|i| held.contains(&i))
            && !holds_vt_ctty(pid, ctty)
        {
            return Err(Unsupported::of(pid, format!("controlling terminal {}:{}", major(ctty), minor(ctty)), "the session leader's controlling terminal is not a pty open in the dumped tree", "keep an fd of the terminal open in the tree, or start the session without one (setsid)").into());
        }
        for &(_, fd) in dev_tty.iter().filter(|(p, _)| *p == pid) {
            let shell = shell_job && ctty == u64::from(root_tty) && !pids.contains(&st.session);
            // A slave whose master is outside (a container's console) is restored as the
            // controlling terminal with --orphan-pts-master.
            if !(shell || pty.is_some_and(|i| masters.contains(&i) || held.contains(&i))) {
                return Err(Unsupported::of(pid, format!("fd {fd} (/dev/tty)"), "/dev/tty is open but the process's controlling terminal is not a pty the tree holds", "pass --shell-job if it is the terminal of the shell the tree runs from").into());
            }
        }
    }
    Ok(())
}

/// Whether `rdev` is a virtual terminal (4:0-63) or /dev/console (5:1), which are reopened
/// by path (regular-file records).
pub fn is_vt_or_console(rdev: u64) -> bool {
    let (ma, mi) = (major(rdev), minor(rdev));
    (ma == 4 && mi < 64) || (ma == 5 && mi == 1)
}

/// Whether `pid` holds an fd on `ctty`, a virtual terminal or /dev/console.
fn holds_vt_ctty(pid: i32, ctty: u64) -> bool {
    is_vt_or_console(ctty)
        && procfs::fds(pid).is_ok_and(|fds| {
            fds.iter().any(|fd| {
                std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == ctty)
            })
        })
}

/// One side of a tty seen during the dump: its tty-info record and cryo's copy of the fd.
#[derive(Debug)]
struct Seen {
    entry: pb::TtyInfoEntry,
    fd: Option<OwnedFd>,
    /// The process whose fd it was: its root is where the devpts paths lead.
    pid: i32,
}

/// What the dump collects about ttys (in [`FileTable`]).
#[derive(Debug, Default)]
pub struct TtyDump {
    infos: BTreeMap<u32, Seen>,
    data: Vec<pb::TtyDataEntry>,
}

impl TtyDump {
    /// Renames the sessions and foreground groups (read from cryo's PID namespace) to the
    /// tree's own PIDs with `v`.
    pub fn rename_pids(&mut self, v: impl Fn(u32) -> u32) {
        for s in self.infos.values_mut() {
            s.entry.sid = v(s.entry.sid);
            s.entry.pgrp = v(s.entry.pgrp);
        }
    }
}

fn to_pb(t: &Termios) -> pb::TermiosEntry {
    pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: u32::from(t.c_line),
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc.iter().map(|&c| u32::from(c)).collect(),
    }
}

fn from_pb(e: &pb::TermiosEntry) -> Termios {
    let mut cc = [0u8; 19];
    for (d, s) in cc.iter_mut().zip(&e.c_cc) {
        // A control character: the low byte.
        *d = s.to_le_bytes()[0];
    }
    Termios {
        c_iflag: e.c_iflag,
        c_oflag: e.c_oflag,
        c_cflag: e.c_cflag,
        c_lflag: e.c_lflag,
        c_line: e.c_line.to_le_bytes()[0],
        c_cc: cc,
        c_ispeed: e.c_ispeed,
        c_ospeed: e.c_ospeed,
    }
}

/// Terminal fds (TTY entries in files.img).
pub struct Tty;

impl FdKind for Tty {
    const NAME: &'static str = "terminal";
    const TYPE: pb::FdTypes = pb::FdTypes::Tty;
    type Error = TtyError;

    /// pty masters and slaves, and /dev/tty. A slave whose master was closed is shown as
    /// deleted (devpts removed its node): it is the same pty, as CRIU takes it.
    fn claims(p: &FdProbe<'_>) -> bool {
        p.link.starts_with('/')
            && p.meta.is_some_and(|m| {
                std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())
                    && side(m.rdev()).is_some()
            })
    }

    fn dump(cx: &mut DumpCx<'_>, t: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, TtyError> {
        let meta = t
            .meta
            .ok_or_else(|| t.err("stat", std::io::Error::from_raw_os_error(libc::ENOENT)))?;
        let rdev = meta.rdev();
        let side = side(rdev)
            .ok_or_else(|| t.err("not a pty", std::io::Error::from_raw_os_error(libc::ENOTTY)))?;
        let (info, index, fd) = match side {
            Side::Ctty => (info_id(CTTY_INDEX, false), CTTY_INDEX, None),
            Side::Master => {
                let fd = t.take()?;
                let i = sys::tty::pty_index(fd.as_fd()).map_err(|e| t.err("TIOCGPTN", e))?;
                (info_id(i, true), i, Some(fd))
            }
            Side::Slave => {
                let i = slave_index(rdev);
                (info_id(i, false), i, Some(t.take()?))
            }
        };
        let link = t.link.trim_end_matches(" (deleted)");
        let regf = cx
            .files
            .add_reg(link.to_string(), t.flags(), 0, None, meta.mode());
        if let std::collections::btree_map::Entry::Vacant(v) = cx.files.ttys.infos.entry(info) {
            let entry = describe(t, side, info, index, fd.as_ref().map(|f| f.as_fd()), meta)?;
            v.insert(Seen {
                entry,
                fd,
                pid: t.pid,
            });
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Tty as i32,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                flags: t.flags(),
                fown: Default::default(),
                regf_id: Some(regf),
            }),
            ..Default::default()
        })
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, TtyError> {
        let tfe = e.tty.as_ref().ok_or_else(|| missing(e.id, "tty"))?;
        let index = tfe.tty_info_id >> 1;
        if index == CTTY_INDEX {
            return Err(TaskError::Internal("/dev/tty is opened in the puppet").into());
        }
        let objs_ = &mut *objs;
        // A terminal the caller hands in (`--inherit-fd fd[N]:tty[RDEV:DEV]`, CRIU's key of a
        // terminal saved as external, such as a container's console): every fd that was
        // that terminal gets the caller's.
        objs_.tty.load(&objs_.dir)?;
        if let Some(info) = objs_.tty.infos.get(&tfe.tty_info_id) {
            let key = format!("tty[{:x}:{:x}]", info.rdev, info.dev.unwrap_or(0));
            if let Some(fd) = objs_.inherited.get(&key) {
                let fd = fd.try_clone().map_err(|source| TaskError::Object {
                    id: e.id,
                    what: format!("dup of the inherited {key}"),
                    source,
                })?;
                set_fl(fd.as_fd(), tfe.flags, e.id)?;
                return Ok(fd);
            }
        }
        objs_.tty.ensure(&objs_.dir, &objs_.files, index)?;
        let pair = &objs_.tty.pairs[&index];
        let err = |what: String| {
            move |source| TaskError::Object {
                id: e.id,
                what,
                source,
            }
        };
        if tfe.tty_info_id & 1 == 1 {
            let fd = pair
                .master
                .try_clone()
                .map_err(err(format!("dup of pty master {index}")))?;
            set_fl(fd.as_fd(), tfe.flags, e.id)?;
            return Ok(fd);
        }
        // Each slave fd of the images is its own open file description.
        let flags = (c_int(tfe.flags) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC))
            | libc::O_NOCTTY
            | libc::O_CLOEXEC;
        let node = format!("/proc/self/fd/{}", pair.slave_node.as_raw_fd());
        Ok(sys::fd::open(&node, flags).map_err(err(format!("open {}", pair.slave_path)))?)
    }
}

/// The tty-info record of one side, read through cryo's copy of the fd.
fn describe(
    t: &TargetFd<'_>,
    side: Side,
    info: u32,
    index: u32,
    fd: Option<BorrowedFd<'_>>,
    meta: &std::fs::Metadata,
) -> Result<pb::TtyInfoEntry, TtyError> {
    let mut e = pb::TtyInfoEntry {
        id: info,
        r#type: if side == Side::Ctty {
            pb::TtyType::Ctty as i32
        } else {
            pb::TtyType::Pty as i32
        },
        rdev: rdev32(meta.rdev()),
        dev: Some(low32(meta.dev())),
        ..Default::default()
    };
    let Some(fd) = fd else { return Ok(e) };
    let devpts =
        devpts_of(t.pid, t.link.trim_end_matches(" (deleted)"), side).ok_or_else(|| {
            Unsupported::of(
                t.pid,
                format!("fd {} ({})", t.fd, t.link),
                "the pty's devpts mount cannot be found from the path it was opened by",
                "open ptys through /dev/ptmx or <devpts>/ptmx and <devpts>/N",
            )
        })?;
    e.pty = Some(pb::TtyPtyEntry { index });
    if let Ok(m) = std::fs::metadata(in_root(t.pid, &format!("{devpts}/{index}"))) {
        e.uid = Some(m.uid());
        e.gid = Some(m.gid());
    }
    e.cryo_devpts = Some(devpts);
    let termios = match sys::tty::termios(fd) {
        // Hung up (the other end is gone): nothing more to read, as CRIU.
        Err(err) if err.raw_os_error() == Some(libc::EIO) => return Ok(e),
        r => r.map_err(|err| t.err("TCGETS2", err))?,
    };
    e.termios = Some(to_pb(&termios));
    e.termios_locked = sys::tty::locked_termios(fd).ok().map(|l| to_pb(&l));
    e.winsize = sys::tty::winsize(fd).ok().map(|w| pb::WinsizeEntry {
        ws_row: w.ws_row.into(),
        ws_col: w.ws_col.into(),
        ws_xpixel: w.ws_xpixel.into(),
        ws_ypixel: w.ws_ypixel.into(),
    });
    e.exclusive = sys::tty::exclusive(fd).unwrap_or(false);
    if side == Side::Master {
        e.packet_mode = sys::tty::packet_mode(fd).map_err(|err| t.err("TIOCGPKT", err))?;
        e.locked = sys::tty::pty_locked(fd).map_err(|err| t.err("TIOCGPTLCK", err))?;
        // On a master these read the slave's session and foreground group from outside.
        e.sid = c_uint(sys::tty::session(fd).unwrap_or(0).max(0));
        e.pgrp = c_uint(sys::tty::foreground(fd).unwrap_or(0).max(0));
    }
    Ok(e)
}

/// A device number as the kernel's 32-bit encoding (what /proc/PID/stat tty_nr shows).
fn rdev32(dev: u64) -> u32 {
    let (ma, mi) = (major(dev), minor(dev));
    low32((mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12))
}

/// Input queued for a slave reader.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub data: Vec<u8>,
    /// Canonical mode: the lengths of the complete lines at the start of `data` (the rest is
    /// the line being typed). None: raw bytes (non-canonical mode, or CRIU's images).
    pub lines: Option<Vec<u32>>,
}

/// The queued bytes of one pty, read at dump; put back when dropped.
struct DrainedPty {
    master: OwnedFd,
    slave: Option<OwnedFd>,
    termios: Termios,
    out: Vec<u8>,
    input: Input,
}

/// The queued bytes read out of the tree's ptys by [`finish_dump`]. They are written back
/// into the ptys when this is dropped, so a dump that fails or leaves the tree running
/// loses nothing; drop it before the tasks are released.
#[derive(Default)]
pub struct Drained(Vec<DrainedPty>);

impl Drop for Drained {
    fn drop(&mut self) {
        for d in &self.0 {
            let Some(slave) = &d.slave else {
                if !d.out.is_empty() {
                    tracing::warn!(bytes = d.out.len(), "cannot put back pty output");
                }
                continue;
            };
            if let Err(e) = inject(
                d.master.as_fd(),
                slave.as_fd(),
                &d.termios,
                &d.out,
                &d.input,
            ) {
                tracing::error!(error = %e, "putting queued pty data back");
            }
        }
    }
}

/// After every task is dumped: completes the slave records (session, foreground group, lock
/// and packet mode come from the master, or from /proc for a slave whose master is
/// outside), and reads the bytes queued in each pty whose master the tree holds.
pub fn finish_dump(files: &mut FileTable) -> Result<Drained, TtyError> {
    let tree = files.tree.clone();
    let ids: Vec<u32> = files.ttys.infos.keys().copied().collect();
    for &id in ids.iter().filter(|&&i| i & 1 == 0 && i >> 1 != CTTY_INDEX) {
        let from_master = files.ttys.infos.get(&(id | 1)).map(|m| {
            let m = &m.entry;
            (m.sid, m.pgrp, m.locked, m.packet_mode)
        });
        let s = &mut files.ttys.infos.get_mut(&id).expect("listed").entry;
        match from_master {
            Some((sid, pgrp, locked, pkt)) => {
                (s.sid, s.pgrp, s.locked, s.packet_mode) = (sid, pgrp, locked, pkt);
            }
            None => {
                for &pid in &tree {
                    if let Ok(st) = procfs::stat(pid) {
                        if st.tty_nr == s.rdev && st.session > 0 {
                            s.sid = c_uint(st.session);
                            s.pgrp = c_uint(st.tpgid.max(0));
                            break;
                        }
                    }
                }
            }
        }
    }
    let mut drained = Drained::default();
    for &id in ids.iter().filter(|&&i| i & 1 == 1) {
        let seen = &files.ttys.infos[&id];
        let (Some(fd), Some(t)) = (&seen.fd, &seen.entry.termios) else {
            continue; // hung up
        };
        let index = id >> 1;
        let devpts = seen.entry.cryo_devpts.clone().unwrap_or_default();
        let err = |what: String| {
            move |source: std::io::Error| TaskError::Fd {
                pid: 0,
                fd: -1,
                what: format!("pty {index}: {what}: {source}"),
                source,
            }
        };
        let master = fd.try_clone().map_err(err("dup".into()))?;
        let packet = seen.entry.packet_mode;
        let locked = seen.entry.locked;
        let has_slave = files.ttys.infos.contains_key(&(id & !1));
        // A description of cryo's own on the slave, non-blocking, to read and write back
        // the input side. A locked slave is unlocked for the open.
        let slave = if has_slave {
            if locked {
                sys::tty::set_pty_locked(master.as_fd(), false).map_err(err("unlock".into()))?;
            }
            let path = format!("{devpts}/{index}");
            let s = sys::fd::open(
                &in_root(seen.pid, &path),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            if locked {
                sys::tty::set_pty_locked(master.as_fd(), true).map_err(err("lock".into()))?;
            }
            Some(s.map_err(err(format!("open {path}")))?)
        } else {
            None
        };
        drained.0.push(DrainedPty {
            master,
            slave,
            termios: from_pb(t),
            out: Vec::new(),
            input: Input::default(),
        });
        let d = drained.0.last_mut().expect("pushed");
        read_master(d.master.as_fd(), packet, &mut d.out).map_err(err("read master".into()))?;
        if let Some(s) = &d.slave {
            read_slave(s.as_fd(), &mut d.input).map_err(err("read slave".into()))?;
        }
        if !d.out.is_empty() {
            files.ttys.data.push(pb::TtyDataEntry {
                tty_id: id,
                data: d.out.clone(),
                ..Default::default()
            });
        }
        if !d.input.data.is_empty() {
            let lines = d.input.lines.clone();
            let whole: u32 = lines.iter().flatten().sum();
            files.ttys.data.push(pb::TtyDataEntry {
                tty_id: id & !1,
                data: d.input.data.clone(),
                cryo_partial: lines
                    .as_ref()
                    .map(|_| len32(d.input.data.len()).saturating_sub(whole)),
                cryo_lines: lines.unwrap_or_default(),
            });
        }
        tracing::info!(
            pty = index,
            for_master = d.out.len(),
            for_slave = d.input.data.len(),
            "pty: bytes queued"
        );
    }
    Ok(drained)
}

fn too_much() -> std::io::Error {
    std::io::Error::other(format!("more than {DATA_LIMIT} bytes queued"))
}

/// Reads everything queued for the master's reader (non-blocking for the time of the
/// reads; the description is the task's). In packet mode each read starts with a status
/// byte: data packets keep their payload, pending control status is dropped.
fn read_master(fd: BorrowedFd<'_>, packet: bool, out: &mut Vec<u8>) -> std::io::Result<()> {
    let fl = sys::fd::get_fl(fd)?;
    sys::fd::set_fl(fd, fl | libc::O_NONBLOCK.cast_unsigned())?;
    let mut buf = vec![0u8; 8192];
    let r = loop {
        match sys::fd::read(fd, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) if packet => {
                if buf[0] == 0 {
                    out.extend_from_slice(&buf[1..n]);
                } else {
                    tracing::warn!(status = buf[0], "pty packet-mode status not kept");
                }
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EIO)) => {
                break Ok(())
            }
            Err(e) => break Err(e),
        }
        if out.len() > DATA_LIMIT {
            break Err(too_much());
        }
    };
    sys::fd::set_fl(fd, fl)?;
    r
}

/// Reads, through cryo's own non-blocking slave description, the input queued for the
/// slave's reader. In canonical mode each read returns one complete line; the line being
/// typed is not readable then, so it is read with canonical mode off for a moment (with
/// the queue empty, switching back changes nothing).
fn read_slave(fd: BorrowedFd<'_>, input: &mut Input) -> std::io::Result<()> {
    let t = sys::tty::termios(fd)?;
    let mut buf = vec![0u8; 8192];
    let read_rest = |data: &mut Vec<u8>, buf: &mut [u8]| -> std::io::Result<()> {
        loop {
            match sys::fd::read(fd, buf) {
                Ok(0) => return Ok(()),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
                Err(e) => return Err(e),
            }
            if data.len() > DATA_LIMIT {
                return Err(too_much());
            }
        }
    };
    if t.c_lflag & libc::ICANON == 0 {
        return read_rest(&mut input.data, &mut buf);
    }
    let mut lines = Vec::new();
    loop {
        match sys::fd::read(fd, &mut buf) {
            // 0: a line ended by EOF with nothing on it.
            Ok(n) => {
                input.data.extend_from_slice(&buf[..n]);
                lines.push(len32(n));
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
            Err(e) => return Err(e),
        }
        if input.data.len() > DATA_LIMIT || lines.len() > DATA_LIMIT / 8 {
            return Err(too_much());
        }
    }
    input.lines = Some(lines);
    let mut raw = t;
    raw.c_lflag &= !libc::ICANON;
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    sys::tty::set_termios(fd, &raw)?;
    let r = read_rest(&mut input.data, &mut buf);
    sys::tty::set_termios(fd, &t)?;
    r
}

/// Writes tty-info.img and tty-data.img.
pub fn write(dir: &ImageDir, files: &FileTable) -> Result<(), TtyError> {
    if files.ttys.infos.is_empty() {
        return Ok(());
    }
    let infos: Vec<pb::TtyInfoEntry> = files.ttys.infos.values().map(|s| s.entry.clone()).collect();
    dir.write("tty-info.img", image::TTY_INFO, &infos)?;
    if !files.ttys.data.is_empty() {
        dir.write("tty-data.img", image::TTY_DATA, &files.ttys.data)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Putting queued bytes back (dump write-back and restore)
// ---------------------------------------------------------------------------------------

fn write_all(fd: BorrowedFd<'_>, mut b: &[u8]) -> std::io::Result<()> {
    let t0 = Instant::now();
    while !b.is_empty() {
        match sys::fd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if t0.elapsed() > Duration::from_secs(2) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `fd` has `n` bytes readable (the line discipline works asynchronously).
fn wait_queued(fd: BorrowedFd<'_>, n: usize) -> std::io::Result<()> {
    let t0 = Instant::now();
    while sys::tty::queued(fd)? < n {
        if t0.elapsed() > Duration::from_secs(2) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the line discipline did not take the queued bytes",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Two distinct byte values, neither NUL nor newline, that `data` does not contain.
fn free_bytes(data: &[u8]) -> Option<(u8, u8)> {
    let mut used = [false; 256];
    for &b in data {
        used[b as usize] = true;
    }
    let mut free = (1u8..=255).filter(|&b| b != b'\n' && !used[b as usize]);
    Some((free.next()?, free.next()?))
}

/// Puts queued bytes back into a pty exactly as they were, then sets termios `t`: `out`
/// (written by the slave side, for the master's reader) and `input` (for the slave's
/// reader). The bytes were already processed by the line discipline, so they go in with
/// the slave in a raw mode: no echo, no signals, no output or input translation, every
/// special character off. Complete canonical lines are re-entered one by one, each ended by
/// its newline or by a spare EOF character (which readers never see), with any inner
/// newline quoted by a spare LNEXT character; the line being typed goes last, unended.
pub fn inject(
    master: BorrowedFd<'_>,
    slave: BorrowedFd<'_>,
    t: &Termios,
    out: &[u8],
    input: &Input,
) -> std::io::Result<()> {
    let mut raw = *t;
    raw.c_iflag &= !(libc::ICRNL
        | libc::INLCR
        | libc::IGNCR
        | libc::ISTRIP
        | libc::IUCLC
        | libc::IXON
        | libc::PARMRK);
    raw.c_oflag &= !libc::OPOST;
    raw.c_lflag &= !(libc::ECHO
        | libc::ECHOE
        | libc::ECHOK
        | libc::ECHONL
        | libc::ECHOCTL
        | libc::ECHOKE
        | libc::ECHOPRT
        | libc::ISIG
        | libc::ICANON
        | libc::EXTPROC);
    raw.c_cc = [0; 19];
    raw.c_cc[libc::VMIN] = 1;
    sys::tty::set_termios(slave, &raw)?;
    if !out.is_empty() {
        let before = sys::tty::queued(master)?;
        write_all(slave, out)?;
        wait_queued(master, before + out.len())?;
    }
    let spare = input.lines.as_ref().and_then(|_| free_bytes(&input.data));
    match (&input.lines, spare) {
        (Some(lines), Some((eof, lnext))) if !input.data.is_empty() => {
            raw.c_lflag |= libc::ICANON | libc::IEXTEN;
            raw.c_cc[libc::VEOF] = eof;
            raw.c_cc[libc::VLNEXT] = lnext;
            sys::tty::set_termios(slave, &raw)?;
            let before = sys::tty::queued(slave)?;
            let quote = |b: &[u8], w: &mut Vec<u8>| {
                for &c in b {
                    if c == b'\n' {
                        w.push(lnext);
                    }
                    w.push(c);
                }
            };
            let (mut off, mut total) = (0usize, 0usize);
            for &len in lines {
                let line = &input.data[off..off + len as usize];
                off += len as usize;
                let mut w = Vec::with_capacity(line.len() + 2);
                match line.split_last() {
                    Some((b'\n', body)) => {
                        quote(body, &mut w);
                        w.push(b'\n');
                    }
                    _ => {
                        quote(line, &mut w);
                        w.push(eof);
                    }
                }
                write_all(master, &w)?;
                total += line.len();
                wait_queued(slave, before + total)?;
            }
            let partial = &input.data[off..];
            if !partial.is_empty() {
                let mut w = Vec::new();
                quote(partial, &mut w);
                write_all(master, &w)?;
                // Not countable in canonical mode: give the line discipline a moment.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        _ if !input.data.is_empty() => {
            let before = sys::tty::queued(slave)?;
            write_all(master, &input.data)?;
            wait_queued(slave, before + input.data.len())?;
        }
        _ => {}
    }
    sys::tty::set_termios(slave, t)
}

// ---------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------

/// A pty made by cryo for the restore.
pub struct Pair {
    pub master: OwnedFd,
    /// cryo's own slave description (queued data, controlling terminal, foreground).
    pub slave: OwnedFd,
    pub slave_path: String,
    /// An O_PATH fd of the slave's device node, reopened for each slave fd of the images.
    pub slave_node: OwnedFd,
    /// Its master was outside the dumped tree: cryo's master is temporary.
    orphan: bool,
    locked: bool,
}

/// The ptys restore makes (one per index), and their saved state.
#[derive(Default)]
pub struct TtyStore {
    loaded: bool,
    infos: HashMap<u32, pb::TtyInfoEntry>,
    data: HashMap<u32, pb::TtyDataEntry>,
    pub pairs: HashMap<u32, Pair>,
    /// `--orphan-pts-master`: keep the master made for a slave whose master was outside the
    /// tree (see [`take_orphan_masters`]) instead of closing it.
    pub orphan_pts_master: bool,
    /// Where the tree's paths lead from cryo: `/proc/PID/root` of the root puppet once it
    /// lives in a restored mount namespace (its devpts instances are not cryo's).
    pub root: Option<String>,
    /// Ptys the mount rebuild had to make already (a bind of a devpts slave such as runc's
    /// `/dev/console` needs it to exist): index → unlocked master.
    pub premade: HashMap<u32, OwnedFd>,
}

static ORPHAN_MASTERS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// With `orphan_pts_master`, the pty masters the last restore made for slaves whose master
/// was not in the tree (the slaves are not hung up while these stay open). The RPC layer
/// hands them to its client (SCM_RIGHTS); the CLI just holds them.
pub fn take_orphan_masters() -> Vec<OwnedFd> {
    std::mem::take(&mut *ORPHAN_MASTERS.lock().unwrap_or_else(|e| e.into_inner()))
}

fn tty_err(index: u32, what: String) -> impl FnOnce(std::io::Error) -> TaskError {
    move |source| TaskError::Object {
        id: index,
        what: format!("pty {index}: {what}"),
        source,
    }
}

impl TtyStore {
    /// Reads tty-info.img and tty-data.img once.
    fn load(&mut self, dir: &ImageDir) -> Result<(), TtyError> {
        if self.loaded {
            return Ok(());
        }
        self.loaded = true;
        for e in dir
            .read_opt::<pb::TtyInfoEntry>("tty-info.img", image::TTY_INFO)?
            .unwrap_or_default()
        {
            self.infos.insert(e.id, e);
        }
        for e in dir
            .read_opt::<pb::TtyDataEntry>("tty-data.img", image::TTY_DATA)?
            .unwrap_or_default()
        {
            self.data.insert(e.tty_id, e);
        }
        Ok(())
    }

    /// The pty whose terminal session `sid` had, if cryo restores it as a terminal (its
    /// master was in the tree).
    fn ctty_of(&self, sid: u32) -> Option<u32> {
        self.infos
            .values()
            .filter(|e| e.id >> 1 != CTTY_INDEX && e.sid == sid)
            .map(|e| e.id >> 1)
            .find(|&i| self.infos.contains_key(&info_id(i, true)) || self.orphan_pts_master)
    }

    /// Makes pty `index` in cryo, unless already made.
    pub fn ensure(
        &mut self,
        dir: &ImageDir,
        files: &HashMap<u32, pb::FileEntry>,
        index: u32,
    ) -> Result<(), TtyError> {
        self.load(dir)?;
        if self.pairs.contains_key(&index) {
            return Ok(());
        }
        let minfo = self.infos.get(&info_id(index, true));
        let sinfo = self.infos.get(&info_id(index, false));
        let info = sinfo.or(minfo).ok_or_else(|| {
            TaskError::BadImage(format!("tty-info.img has no record of pty {index}"))
        })?;
        // The paths the fds were opened by.
        let path_of = |master: bool| {
            files.values().find_map(|f| {
                let t = f.tty.as_ref()?;
                (t.tty_info_id == info_id(index, master))
                    .then(|| files.get(&t.regf_id.unwrap_or(t.id))?.reg.as_ref())
                    .flatten()
                    .map(|r| r.name.clone())
            })
        };
        let devpts = info
            .cryo_devpts
            .clone()
            .or_else(|| {
                let s = path_of(false)?;
                Some(std::path::Path::new(&s).parent()?.to_str()?.to_string())
            })
            .unwrap_or_else(|| "/dev/pts".into());
        let master_path = path_of(true).unwrap_or_else(|| format!("{devpts}/ptmx"));
        let slave_path = path_of(false).unwrap_or_else(|| format!("{devpts}/{index}"));
        // Paths as the tree sees them, resolved inside its root.
        let root = self.root.clone();
        let open_in = |p: &str, flags: i32| match &root {
            Some(r) => sys::fd::open_in_root(r, p, flags),
            None => sys::fd::open(p, flags),
        };
        let premade = self.premade.remove(&index);
        let existing =
            open_in(&slave_path, libc::O_PATH).and_then(|f| std::fs::File::from(f).metadata());
        if let (Ok(m), None) = (existing, &premade) {
            if m.file_type().is_char_device() && slave_index(m.rdev()) == index {
                return Err(Unsupported::restore(format!(
                    "pty {index} is in use by another terminal ({slave_path} exists); close it, or restore where that index is free"
                )).into());
            }
        }
        // devpts hands out the lowest free index: hold masters until ours comes.
        let mut extras = Vec::new();
        let master = if let Some(m) = premade {
            m
        } else {
            loop {
                let m = open_in(
                    &master_path,
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
                .map_err(tty_err(index, format!("open {master_path}")))?;
                let got =
                    sys::tty::pty_index(m.as_fd()).map_err(tty_err(index, "TIOCGPTN".into()))?;
                if got == index {
                    break m;
                }
                if got > index {
                    return Err(Unsupported::restore(format!(
                    "pty {index} was taken by another terminal meanwhile ({master_path} gave {got})"
                ))
                    .into());
                }
                extras.push(m);
            }
        };
        drop(extras);
        sys::tty::set_pty_locked(master.as_fd(), false)
            .map_err(tty_err(index, "TIOCSPTLCK".into()))?;
        let slave = open_in(
            &slave_path,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
        .map_err(tty_err(index, format!("open {slave_path}")))?;
        let m = std::fs::metadata(format!("/proc/self/fd/{}", slave.as_raw_fd()))
            .map_err(tty_err(index, "stat slave".into()))?;
        if side(m.rdev()) != Some(Side::Slave) || slave_index(m.rdev()) != index {
            return Err(Unsupported::restore(format!(
                "{slave_path} is not the slave of the pty made through {master_path}: different devpts instances?"
            )).into());
        }
        if let (Some(uid), Some(gid)) = (info.uid, info.gid) {
            if let Err(e) = std::os::unix::fs::fchown(&slave, Some(uid), Some(gid)) {
                tracing::warn!(pty = index, slave = %slave_path, uid, gid, error = %e, "cannot give the slave its owner");
            }
        }
        let t = sinfo
            .and_then(|s| s.termios.as_ref())
            .or(minfo.and_then(|m| m.termios.as_ref()));
        if let Some(t) = t {
            let t = from_pb(t);
            let out = self
                .data
                .get(&info_id(index, true))
                .map(|d| d.data.clone())
                .unwrap_or_default();
            let input = self
                .data
                .get(&info_id(index, false))
                .map(|d| Input {
                    data: d.data.clone(),
                    lines: d.cryo_partial.map(|_| d.cryo_lines.clone()),
                })
                .unwrap_or_default();
            inject(master.as_fd(), slave.as_fd(), &t, &out, &input)
                .map_err(tty_err(index, "queued data and termios".into()))?;
        }
        if let Some(l) = info.termios_locked.as_ref() {
            if let Err(e) = sys::tty::set_locked_termios(slave.as_fd(), &from_pb(l)) {
                tracing::warn!(pty = index, error = %e, "TIOCSLCKTRMIOS failed");
            }
        }
        if let Some(w) = info.winsize.as_ref() {
            let dim = |v: u32| {
                u16::try_from(v).map_err(|_| {
                    TaskError::BadImage(format!("tty {index}: window size {v} is out of range"))
                })
            };
            let w = rustix::termios::Winsize {
                ws_row: dim(w.ws_row)?,
                ws_col: dim(w.ws_col)?,
                ws_xpixel: dim(w.ws_xpixel)?,
                ws_ypixel: dim(w.ws_ypixel)?,
            };
            sys::tty::set_winsize(master.as_fd(), w)
                .map_err(tty_err(index, "TIOCSWINSZ".into()))?;
        }
        let master_info = minfo.cloned();
        if let Some(mi) = &master_info {
            sys::tty::set_packet_mode(master.as_fd(), mi.packet_mode)
                .map_err(tty_err(index, "TIOCPKT".into()))?;
            if mi.exclusive {
                sys::tty::set_exclusive(master.as_fd(), true)
                    .map_err(tty_err(index, "TIOCEXCL".into()))?;
            }
        }
        if sinfo.is_some_and(|s| s.exclusive) {
            sys::tty::set_exclusive(slave.as_fd(), true)
                .map_err(tty_err(index, "TIOCEXCL".into()))?;
        }
        let locked = master_info.as_ref().is_some_and(|m| m.locked);
        tracing::info!(pty = index, master = %master_path, slave = %slave_path, "pty made");
        self.pairs.insert(
            index,
            Pair {
                master,
                slave,
                // Opened again by Tty::open, from cryo: its node, found inside the tree's root.
                slave_path: slave_path.clone(),
                slave_node: open_in(&slave_path, libc::O_PATH)
                    .map_err(tty_err(index, format!("find {slave_path}")))?,
                orphan: master_info.is_none(),
                locked,
            },
        );
        Ok(())
    }

    /// At the end of the restore (the puppets hold their own fds): locks what was locked,
    /// keeps or closes the masters made for orphan slaves, and drops cryo's copies.
    pub fn close(&mut self) {
        let keep = self.orphan_pts_master;
        for (index, p) in self.pairs.drain() {
            if p.locked {
                if let Err(e) = sys::tty::set_pty_locked(p.master.as_fd(), true) {
                    tracing::warn!(pty = index, error = %e, "cannot lock the pty again");
                }
            }
            if p.orphan && keep {
                ORPHAN_MASTERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(p.master);
            }
        }
        self.infos.clear();
        self.data.clear();
        self.premade.clear();
        self.loaded = false;
    }
}

/// Is file `id` a `/dev/tty` fd (opened in the puppet once it has its terminal)?
pub fn is_dev_tty(files: &HashMap<u32, pb::FileEntry>, id: u32) -> bool {
    files
        .get(&id)
        .and_then(|f| f.tty.as_ref())
        .is_some_and(|t| t.tty_info_id >> 1 == CTTY_INDEX)
}

/// Opens `/dev/tty` (file `id`) in the puppet; returns its fd. A shell job's is the
/// terminal cryo runs on, which the puppet still has.
pub fn open_dev_tty(cx: &mut RestoreCx<'_>, id: u32) -> Result<RemoteFd, TtyError> {
    let flags = cx
        .files
        .get(&id)
        .and_then(|f| f.tty.as_ref())
        .map(|t| t.flags)
        .ok_or_else(|| missing(id, "tty"))?;
    let flags = flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32);
    Ok(cx.open("/dev/tty", flags | libc::O_NOCTTY as u32)?)
}

/// Right after a session leader's `setsid`: makes the pty its session had its controlling
/// terminal (`TIOCSCTTY` on a slave fd it takes from cryo, then closes), so the children
/// forked next inherit it, and opens the task's `/dev/tty` fds. `cx.pid` is the puppet's
/// pid on this host; `img.pid` (the dumped pid) is what the images' sessions name.
pub fn take_ctty(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), TtyError> {
    let cell = cx.objs;
    let keeper = {
        let mut objs = cell.borrow_mut();
        let o = &mut *objs;
        o.tty.load(&o.dir)?;
        match o.tty.ctty_of(img.pid) {
            Some(index) => {
                o.tty.ensure(&o.dir, &o.files, index)?;
                Some(o.tty.pairs[&index].slave.as_raw_fd())
            }
            None => None,
        }
    };
    if let Some(keeper) = keeper {
        let fd = cx.take_from_cryo(keeper)?;
        let r = cx.named("ioctl(TIOCSCTTY)").ioctl(fd, libc::TIOCSCTTY, 0);
        cx.close(fd)?;
        r?;
    } else if let Some(f) = img.fdinfo.iter().find(|f| {
        cx.files
            .get(&f.id)
            .and_then(|e| e.reg.as_ref())
            .is_some_and(|r| r.cryo_ctty == Some(true))
    }) {
        // A virtual terminal or the console, reopened by path with the other files.
        let fd = super::files::fd_number(f)?;
        cx.named("ioctl(TIOCSCTTY)").ioctl(fd, libc::TIOCSCTTY, 0)?;
    }
    // The /dev/tty fds restore_fds left for now.
    let mut fds: Vec<&pb::FdinfoEntry> = img
        .fdinfo
        .iter()
        .filter(|f| is_dev_tty(cx.files, f.id))
        .collect();
    fds.sort_by_key(|f| f.fd);
    let mut first: HashMap<u32, RemoteFd> = HashMap::new();
    for f in fds {
        let fd = super::files::fd_number(f)?;
        let cloexec = f.flags & libc::FD_CLOEXEC.cast_unsigned() != 0;
        if let Some(&src) = first.get(&f.id) {
            cx.dup3(src, fd, if cloexec { libc::O_CLOEXEC } else { 0 })?;
            continue;
        }
        let tmp = open_dev_tty(cx, f.id)?;
        cx.place_fd(tmp, fd, cloexec)?;
        first.insert(f.id, fd);
    }
    Ok(())
}

/// Once every process group exists: gives each restored terminal's foreground to the group
/// that had it. `TIOCSPGRP` only works from the terminal's session, so its leader (stopped
/// puppet `host(sid)`) runs it on a slave fd it takes from cryo. `host` maps a dumped pid to
/// the puppet's pid on this host; `tr` is the trampoline.
pub fn set_foreground(
    objs: &std::cell::RefCell<FdObjects>,
    tasks: &[TaskImages],
    tr: u64,
    cryo_pidfd: Option<i32>,
    host: impl Fn(u32) -> i32,
) -> Result<(), TtyError> {
    // (cryo's slave fd, session, foreground group), for the groups not in the foreground
    // yet: TIOCSCTTY already gave it to the session leader's group.
    let todo: Vec<(i32, u32, u32)> = {
        let o = objs.borrow();
        let mut v: Vec<(i32, u32, u32)> = o
            .tty
            .pairs
            .iter()
            .filter(|(_, p)| !p.orphan || o.tty.orphan_pts_master)
            .filter_map(|(&index, p)| {
                let e = o
                    .tty
                    .infos
                    .get(&info_id(index, false))
                    .or(o.tty.infos.get(&info_id(index, true)))?;
                let leader = tasks
                    .iter()
                    .any(|t| t.pid == e.sid && !t.is_zombie() && t.pstree.sid == t.pid);
                // Read through the master: cryo is not in the terminal's session.
                let now = sys::tty::foreground(p.master.as_fd()).ok();
                (leader && e.pgrp != 0 && now != Some(host(e.pgrp)))
                    .then(|| (p.slave.as_raw_fd(), e.sid, e.pgrp))
            })
            .collect();
        v.sort_unstable();
        v
    };
    for (keeper, sid, pgrp) in todo {
        let pid = host(sid);
        let t = Tracee { tid: pid };
        let base = t.regs().map_err(|source| TaskError::Ptrace {
            pid,
            what: "PTRACE_GETREGS",
            source,
        })?;
        let mut r = Remote::new(&t, tr, base);
        let remote = |source| TaskError::Remote { pid, source };
        let pidfd = match cryo_pidfd {
            Some(fd) => fd,
            None => r
                .named("pidfd_open (cryo)")
                .pidfd_open(sys::proc::own_pid(), 0)
                .map_err(remote)?,
        };
        // Its scratch's first bytes hold the group below.
        let fd = r.take_cryo_fd(pidfd, keeper, tr + 2 * 4096);
        if cryo_pidfd.is_none() {
            r.close(pidfd).map_err(remote)?;
        }
        let fd = fd.map_err(remote)?;
        let scratch = tr + 4096;
        // Named inside the session's PID namespace.
        let group = c_int(pgrp);
        sys::mem::vm_write(pid, &group.to_ne_bytes(), &[(scratch, 4)]).map_err(|source| {
            TaskError::Memory {
                pid,
                addr: scratch,
                what: "writing the foreground group",
                source,
            }
        })?;
        let res = r
            .named("ioctl(TIOCSPGRP)")
            .ioctl(fd, libc::TIOCSPGRP, scratch);
        r.close(fd).map_err(remote)?;
        res.map_err(remote)?;
        tracing::info!(session = sid, group, "terminal foreground group set");
    }
    Ok(())
}

/// Makes pty `index` through the ptmx node at `ptmx` (a path cryo can open) and unlocks it:
/// devpts hands out the lowest free index, so masters are held until `index` comes.
pub fn make_pty_at(ptmx: &str, index: u32) -> std::io::Result<OwnedFd> {
    let mut extras = Vec::new();
    loop {
        let m = sys::fd::open(ptmx, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
        let got = sys::tty::pty_index(m.as_fd())?;
        if got == index {
            sys::tty::set_pty_locked(m.as_fd(), false)?;
            return Ok(m);
        }
        if got > index {
            return Err(std::io::Error::other(format!(
                "{ptmx} gave pty {got}: index {index} is taken"
            )));
        }
        extras.push(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers() {
        // /dev/pts/3 and /dev/pts/300 (minors above 255 stay on major 136).
        let pts3 = (136u64 << 8) | 3;
        assert_eq!(side(pts3), Some(Side::Slave));
        assert_eq!(slave_index(pts3), 3);
        let pts300 = (136u64 << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(slave_index(pts300), 300);
        assert_eq!(rdev32(pts300), low32(pts300));
        assert_eq!(side((5 << 8) | 2), Some(Side::Master));
        assert_eq!(side(5 << 8), Some(Side::Ctty));
        assert_eq!(side((4 << 8) | 1), None);
        assert_eq!(info_id(3, true), 7);
        assert_eq!(
            fdinfo_index("pos:\t0\nflags:\t02\ntty-index:\t12\n"),
            Some(12)
        );
    }

    #[test]
    fn spare_bytes_avoid_the_data() {
        let (a, b) = free_bytes(&[1, 2, 3]).unwrap();
        assert!(a > 3 && b > 3 && a != b && a != b'\n' && b != b'\n');
        let all: Vec<u8> = (1..=255).collect();
        assert_eq!(free_bytes(&all), None);
    }
}
