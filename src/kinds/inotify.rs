//! inotify: the watches (watch descriptor, mask, watched file) and file flags (files.img
//! INOTIFY records). Events queued but not read yet are not saved (as in CRIU).
//!
//! fdinfo names a watched file only by file handle; dump opens the handle on a mount of the
//! same filesystem (`open_by_handle_at`) to learn its path, saved in `f_handle.path`.
//! Restore adds the watches again by path in cryo, making the kernel hand out the same watch
//! descriptor numbers (it allocates them in increasing order).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::image::pb;
use crate::num::{c_int, c_uint, len32};
use crate::procfs;
use crate::sys::fd as sysfd;

/// inotify instances.
pub struct Inotify;

/// Why an inotify instance could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum InotifyError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("process {pid}: fd {fd}: cannot parse the inotify fdinfo line '{line}'")]
    Fdinfo { pid: i32, fd: i32, line: String },
    /// A watched file that was deleted, saved as a ghost.
    #[error(transparent)]
    Ghost(#[from] super::ghost::GhostError),
    /// Finding the mount namespace of a watched file (`FdObjects::other_mnt_ns_host`).
    #[error(transparent)]
    Files(Box<super::files::FilesError>),
    #[error("file {id}: inotify watch of {path} got descriptor {got}, not the saved {want}")]
    WrongWd {
        id: u32,
        path: String,
        got: i32,
        want: u32,
    },
}
task_error_from!(InotifyError);

/// One "inotify wd:1 ino:2c29 sdev:800003 mask:fce ignored_mask:0 fhandle-bytes:8
/// fhandle-type:1 f_handle:292c000040d1e1ac" line (all numbers hex).
#[derive(Debug, Default, PartialEq)]
struct Watch {
    wd: u32,
    ino: u64,
    sdev: u32,
    mask: u32,
    ignored_mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_watch(line: &str) -> Option<Watch> {
    let mut w = Watch::default();
    for tok in line.strip_prefix("inotify")?.split_whitespace() {
        let (k, v) = tok.split_once(':')?;
        let hex = || u64::from_str_radix(v, 16).ok();
        match k {
            "wd" => w.wd = u32::try_from(hex()?).ok()?,
            "ino" => w.ino = hex()?,
            "sdev" => w.sdev = u32::try_from(hex()?).ok()?,
            "mask" => w.mask = u32::try_from(hex()?).ok()?,
            "ignored_mask" => w.ignored_mask = u32::try_from(hex()?).ok()?,
            // An int printed as unsigned hex.
            "fhandle-type" => w.handle_type = c_int(u32::try_from(hex()?).ok()?),
            "f_handle" => {
                w.handle = (0..v.len() / 2)
                    .map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()?
            }
            _ => {}
        }
    }
    Some(w)
}

/// The path of the file a watch refers to, as cryo sees it, and an fd of that file when it
/// was deleted (its path then ends with " (deleted)").
fn path_of(pid: i32, w: &Watch) -> Result<(String, Option<OwnedFd>), String> {
    handle_path(pid, w.sdev, w.handle_type, &w.handle)
}

/// The path of the file of handle (`handle_type`, `handle`) on device `sdev` (the kernel's
/// encoding, as fdinfo shows it), opened on a mount of that device in `pid`'s mount
/// namespace, and an fd of the file when it was deleted (its path then ends with
/// " (deleted)"). Also used by fanotify.
pub fn handle_path(
    pid: i32,
    sdev: u32,
    handle_type: i32,
    handle: &[u8],
) -> Result<(String, Option<OwnedFd>), String> {
    handle_path_at(pid, sdev, handle_type, handle).map(|(p, f, _)| (p, f))
}

/// As [`handle_path`], with the id of the mount it was opened on.
fn handle_path_at(
    pid: i32,
    sdev: u32,
    handle_type: i32,
    handle: &[u8],
) -> Result<(String, Option<OwnedFd>, u32), String> {
    let (major, minor) = (sdev >> 20, sdev & 0xf_ffff);
    let dev = format!("{major}:{minor}");
    let mi = procfs::read(pid, "mountinfo").map_err(|e| e.to_string())?;
    // A mount of that filesystem, its own root first (any mount of it can open the handle).
    let mut mounts: Vec<(bool, String, u32)> = mi
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&dev.as_str()))
                .then(|| (f[3] != "/", f[4].to_string(), f[0].parse().unwrap_or(0)))
        })
        .collect();
    mounts.sort();
    let (_, mnt, mnt_id) = mounts
        .first()
        .ok_or_else(|| format!("no mount of device {dev} in /proc/{pid}/mountinfo"))?;
    // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
    let mfd = sysfd::open_in_root(
        &format!("/proc/{pid}/root"),
        mnt,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
    )
    .map_err(|e| format!("open mount {mnt}: {e}"))?;
    let f = sysfd::open_by_handle(mfd.as_fd(), handle_type, handle)
        .map_err(|e| format!("open_by_handle_at on {mnt}: {e}"))?;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    if !p.starts_with('/') {
        return Err(format!("the watched file is {p}"));
    }
    if p.ends_with(" (deleted)") {
        return Ok((p, Some(f), *mnt_id));
    }
    Ok((p, None, *mnt_id))
}

/// The path of a watched file on a mount that only another mount namespace of the tree has
/// (zdtm inotify01: a parent watches a directory of the tmpfs its child mounted in a
/// namespace of its own, through /proc/CHILD/fd/N), with the id of that mount.
fn path_in_tree(pid: i32, tree: &[i32], w: &Watch) -> Option<(String, Option<OwnedFd>, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mnt_ns = |p: i32| {
        std::fs::metadata(format!("/proc/{p}/ns/mnt"))
            .map(|m| m.ino())
            .ok()
    };
    let own = mnt_ns(pid);
    tree.iter()
        .filter(|&&t| t != pid && mnt_ns(t) != own)
        .find_map(|&t| handle_path_at(t, w.sdev, w.handle_type, &w.handle).ok())
}

impl FdKind for Inotify {
    const NAME: &'static str = "inotify";
    const TYPE: pb::FdTypes = pb::FdTypes::Inotify;
    /// Watches are added by path, as the tree sees it.
    const IN_TREE_NS: bool = true;
    type Error = InotifyError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:inotify"
    }

    fn dump(
        cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, InotifyError> {
        let mut wds = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
            let w = parse_watch(line).ok_or_else(|| InotifyError::Fdinfo {
                pid: fd.pid,
                fd: fd.fd,
                line: line.to_string(),
            })?;
            let object = format!("fd {} (inotify watch {})", fd.fd, w.wd);
            let (path, deleted, mnt_id) = match path_of(fd.pid, &w) {
                Ok((p, d)) => (p, d, None),
                Err(why) => match path_in_tree(fd.pid, &cx.files.tree, &w) {
                    // Not deleted: a ghost is made in the root's namespace.
                    Some((p, None, m)) => (p, None, Some(m)),
                    _ => {
                        return Err(Unsupported::of(
                            fd.pid,
                            object.clone(),
                            format!("cannot find the watched file (inode {:#x}): {why}", w.ino),
                            "cryo re-adds inotify watches by path; the watched file must still have one",
                        )
                        .into())
                    }
                },
            };
            // A deleted file: saved as a ghost (shared with the fds open on it), on which
            // restore adds the watch; its record names it by its old path.
            let path = match deleted {
                Some(f) => {
                    let live = path.trim_end_matches(" (deleted)").to_string();
                    let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
                    let meta = std::fs::metadata(&proc_path)
                        .map_err(|e| fd.err("stat the watched deleted file", e))?;
                    use std::os::unix::fs::MetadataExt;
                    let rid =
                        cx.files
                            .add_reg(live.clone(), libc::O_RDONLY as u32, 0, None, meta.mode());
                    super::ghost::dump(cx.files, fd.pid, &object, &proc_path, &meta, rid)?;
                    live
                }
                None => path,
            };
            let mut words: Vec<u64> = w
                .handle
                .chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    u64::from_ne_bytes(b)
                })
                .collect();
            words.resize(words.len().max(16), 0);
            wds.push(pb::InotifyWdEntry {
                id,
                i_ino: w.ino,
                mask: w.mask,
                ignored_mask: w.ignored_mask,
                s_dev: w.sdev,
                wd: w.wd,
                f_handle: pb::FhEntry {
                    bytes: len32(w.handle.len()),
                    r#type: c_uint(w.handle_type),
                    handle: words,
                    path: Some(path),
                    mnt_id,
                },
            });
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Inotify as i32,
            id,
            ify: Some(pb::InotifyFileEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                wd: wds,
            }),
            ..Default::default()
        })
    }

    fn load(objs: &mut FdObjects) -> Result<(), InotifyError> {
        // A watched file that was deleted is made from its ghost in the tree's namespace.
        Ok(objs.ghosts.preload(&objs.dir)?)
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, InotifyError> {
        let ify = e
            .ify
            .as_ref()
            .ok_or_else(|| super::files::missing(e.id, "inotify"))?;
        let err = |what: &str| obj_err(e.id, format!("inotify: {what}"));
        let fd = sysfd::inotify_init(libc::IN_CLOEXEC).map_err(err("inotify_init1"))?;
        let mut wds: Vec<&pb::InotifyWdEntry> = ify.wd.iter().collect();
        wds.sort_by_key(|w| w.wd);
        for w in wds {
            let path = w.f_handle.path.as_deref().ok_or_else(|| {
                Unsupported::restore(format!(
                    "inotify watch {} of file {} has no path (dumped by CRIU?)",
                    w.wd, e.id
                ))
            })?;
            // A deleted file: watched on its ghost.
            let ghost =
                objs.ghosts
                    .materialize_inode(&objs.dir, w.s_dev, w.i_ino, path, objs.ns_pid)?;
            let ghost = ghost.map(|p| p.to_string_lossy().into_owned());
            let path = ghost.as_deref().unwrap_or(path);
            // On a mount of another mount namespace of the tree: watched from there.
            let root_ns = objs.root_mnt_ns();
            let other = objs
                .other_mnt_ns_host(
                    w.f_handle.mnt_id.and_then(|m| i32::try_from(m).ok()),
                    root_ns,
                )
                .map_err(|e| InotifyError::Files(Box::new(e)))?
                .filter(|_| ghost.is_none());
            let add = |fd: std::os::fd::BorrowedFd<'_>| match &other {
                Some(h) => super::ns::in_mnt_ns(h, || sysfd::inotify_add_watch(fd, path, w.mask)),
                None => sysfd::inotify_add_watch(fd, path, w.mask),
            };
            // Watch descriptors are handed out in increasing order: add and drop until the
            // kernel reaches the saved one.
            let mut tries = 0u32;
            loop {
                let got = add(fd.as_fd()).map_err(err(&format!("watch {path}")))?;
                if c_uint(got) == w.wd {
                    break;
                }
                tries += 1;
                if c_uint(got) > w.wd || tries > 1 << 20 {
                    return Err(InotifyError::WrongWd {
                        id: e.id,
                        path: path.to_string(),
                        got,
                        want: w.wd,
                    });
                }
                sysfd::inotify_rm_watch(fd.as_fd(), got).map_err(err("inotify_rm_watch"))?;
            }
        }
        sysfd::set_fl(fd.as_fd(), ify.flags & SETFL_MASK).map_err(err("F_SETFL"))?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_an_inotify_fdinfo_line() {
        let w = super::parse_watch("inotify wd:a ino:2c29 sdev:800003 mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:292c000040d1e1ac").unwrap();
        assert_eq!((w.wd, w.ino, w.sdev, w.mask), (10, 0x2c29, 0x800003, 0xfce));
        assert_eq!(w.handle_type, 1);
        assert_eq!(w.handle, vec![0x29, 0x2c, 0, 0, 0x40, 0xd1, 0xe1, 0xac]);
    }
}
