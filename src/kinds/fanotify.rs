//! fanotify: the group's flags and its marks (files.img FANOTIFY records with their
//! `fanotify_mark_entry` list, as CRIU writes them). Events queued but not read yet are not
//! saved (as in CRIU).
//!
//! Dump reads fdinfo: `fanotify flags:` (the `fanotify_init` flags and the events' file
//! flags), then one line per mark: an inode mark names its file by handle, opened on a mount
//! of its filesystem to learn its path (as inotify does; a deleted file is saved as a ghost
//! and marked again on it), a mount mark names its mount by id, saved with its mount point.
//! Restore makes the group in cryo and adds every mark again by path, inside the tree's
//! mount namespace: its mask, then its ignored mask (`FAN_MARK_IGNORED_MASK`), with the
//! mark's flags (`FAN_MARK_IGNORED_SURV_MODIFY`, ...).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, obj_err, FdKind, FdObjects, FdProbe, TargetFd, SETFL_MASK};
use super::DumpCx;
use crate::image::pb;
use crate::procfs;
use crate::sys::fd as sysfd;

/// fanotify groups.
pub struct Fanotify;

/// Why a fanotify group could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A marked file that was deleted, saved as a ghost.
    #[error(transparent)]
    Ghost(#[from] super::ghost::GhostError),
    #[error("process {pid}: fd {fd}: cannot parse the fanotify fdinfo line '{line}'")]
    Fdinfo { pid: i32, fd: i32, line: String },
}
task_error_from!(FanotifyError);

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

/// The `key:hex` fields of an fdinfo line after `fanotify `.
fn fields(line: &str) -> Option<Vec<(&str, &str)>> {
    line.strip_prefix("fanotify ")?
        .split_whitespace()
        .map(|t| t.split_once(':'))
        .collect()
}

fn hex(fs: &[(&str, &str)], k: &str) -> Option<u64> {
    fs.iter()
        .find(|(n, _)| *n == k)
        .and_then(|(_, v)| u64::from_str_radix(v, 16).ok())
}

/// The mount point of mount `mnt_id` in `pid`'s mount namespace.
fn mount_point(pid: i32, mnt_id: u32) -> Option<String> {
    let mi = procfs::read(pid, "mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.first()?.parse::<u32>().ok()? == mnt_id).then(|| f.get(4).map(|s| s.to_string()))?
    })
}

impl FdKind for Fanotify {
    const NAME: &'static str = "fanotify";
    const TYPE: pb::FdTypes = pb::FdTypes::Fanotify;
    /// Marks are added by path, as the tree sees it.
    const IN_TREE_NS: bool = true;
    type Error = FanotifyError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.link == "anon_inode:[fanotify]"
    }

    fn dump(
        cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, FanotifyError> {
        let bad = |line: &str| FanotifyError::Fdinfo {
            pid: fd.pid,
            fd: fd.fd,
            line: line.to_string(),
        };
        let (mut faflags, mut evflags) = (0, 0);
        let mut marks = Vec::new();
        for line in fd.fdinfo.lines().filter(|l| l.starts_with("fanotify ")) {
            let fs = fields(line).ok_or_else(|| bad(line))?;
            let get = |k| hex(&fs, k).ok_or_else(|| bad(line));
            if line.starts_with("fanotify flags:") {
                faflags = get("flags")? as u32;
                evflags = get("event-flags")? as u32;
            } else if line.starts_with("fanotify mnt_id:") {
                let mnt_id = get("mnt_id")? as u32;
                let path = mount_point(fd.pid, mnt_id).ok_or_else(|| {
                    Unsupported::of(
                        fd.pid,
                        format!("fd {} (fanotify mount mark)", fd.fd),
                        format!("mount {mnt_id} is not in the process's mount namespace"),
                        "remove the mark before the dump",
                    )
                })?;
                marks.push(pb::FanotifyMarkEntry {
                    id,
                    r#type: pb::MarkType::Mount as i32,
                    mflags: get("mflags")? as u32,
                    mask: get("mask")? as u32,
                    ignored_mask: get("ignored_mask")? as u32,
                    s_dev: 0,
                    ie: None,
                    me: Some(pb::FanotifyMountMarkEntry {
                        mnt_id,
                        path: Some(path),
                    }),
                });
            } else if line.starts_with("fanotify ino:") {
                let sdev = get("sdev")? as u32;
                let ino = get("ino")?;
                let handle_type = get("fhandle-type")? as i32;
                let text = fs
                    .iter()
                    .find(|(k, _)| *k == "f_handle")
                    .map(|(_, v)| *v)
                    .ok_or_else(|| bad(line))?;
                let handle = (0..text.len() / 2)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| bad(line))?;
                let object = format!("fd {} (fanotify mark on inode {ino:#x})", fd.fd);
                let (path, deleted) =
                    super::inotify::handle_path(fd.pid, sdev, handle_type, &handle).map_err(
                        |why| {
                            Unsupported::of(
                        fd.pid,
                        object.clone(),
                        format!("cannot find the marked file: {why}"),
                        "cryo adds fanotify marks again by path; the file must still have one",
                    )
                        },
                    )?;
                let path = match deleted {
                    Some(f) => {
                        use std::os::unix::fs::MetadataExt;
                        let live = path.trim_end_matches(" (deleted)").to_string();
                        let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
                        let meta = std::fs::metadata(&proc_path)
                            .map_err(|e| fd.err("stat the marked deleted file", e))?;
                        let rid = cx.files.add_reg(
                            live.clone(),
                            libc::O_RDONLY as u32,
                            0,
                            None,
                            meta.mode(),
                        );
                        super::ghost::dump(cx.files, fd.pid, &object, &proc_path, &meta, rid)?;
                        live
                    }
                    None => path,
                };
                let mut words: Vec<u64> = handle
                    .chunks(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b[..c.len()].copy_from_slice(c);
                        u64::from_ne_bytes(b)
                    })
                    .collect();
                words.resize(words.len().max(16), 0);
                marks.push(pb::FanotifyMarkEntry {
                    id,
                    r#type: pb::MarkType::Inode as i32,
                    mflags: get("mflags")? as u32,
                    mask: get("mask")? as u32,
                    ignored_mask: get("ignored_mask")? as u32,
                    s_dev: sdev,
                    ie: Some(pb::FanotifyInodeMarkEntry {
                        i_ino: ino,
                        f_handle: pb::FhEntry {
                            bytes: handle.len() as u32,
                            r#type: handle_type as u32,
                            handle: words,
                            path: Some(path),
                            mnt_id: None,
                        },
                    }),
                    me: None,
                });
            } else if line.starts_with("fanotify sdev:") {
                return Err(Unsupported::of(
                    fd.pid,
                    format!("fd {} (fanotify)", fd.fd),
                    "a filesystem mark (FAN_MARK_FILESYSTEM)",
                    "remove the mark before the dump",
                )
                .into());
            }
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Fanotify as i32,
            id,
            ffy: Some(pb::FanotifyFileEntry {
                id,
                flags: fd.flags(),
                fown: Default::default(),
                faflags,
                evflags,
                mark: marks,
            }),
            ..Default::default()
        })
    }

    fn load(objs: &mut FdObjects) -> Result<(), FanotifyError> {
        // A marked file that was deleted is made from its ghost in the tree's namespace.
        Ok(objs.ghosts.preload(&objs.dir)?)
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, FanotifyError> {
        let ffy = e.ffy.as_ref().ok_or_else(|| missing(e.id, "fanotify"))?;
        let err = |what: String| obj_err(e.id, format!("fanotify: {what}"));
        // The flags as they were (fdinfo shows FAN_CLOEXEC too, so it is not added here).
        let fd =
            sysfd::fanotify_init(ffy.faflags, ffy.evflags).map_err(err("fanotify_init".into()))?;
        for m in &ffy.mark {
            let (kind, path) = match (&m.ie, &m.me) {
                (Some(ie), _) => {
                    let path = ie.f_handle.path.as_deref().ok_or_else(|| {
                        Unsupported::restore(format!(
                            "fanotify mark of file {} has no path (dumped by CRIU?)",
                            e.id
                        ))
                    })?;
                    let ghost = objs.ghosts.materialize_inode(
                        &objs.dir,
                        m.s_dev,
                        ie.i_ino,
                        path,
                        objs.ns_pid,
                    )?;
                    let path = ghost
                        .map_or_else(|| path.to_string(), |p| p.to_string_lossy().into_owned());
                    (0, path)
                }
                (None, Some(me)) => {
                    let path = me.path.clone().ok_or_else(|| {
                        Unsupported::restore(format!(
                            "fanotify mount mark of file {} has no path (dumped by CRIU?)",
                            e.id
                        ))
                    })?;
                    (FAN_MARK_MOUNT, path)
                }
                (None, None) => return Err(missing(e.id, "fanotify mark target").into()),
            };
            let flags = FAN_MARK_ADD | kind | (m.mflags & !(FAN_MARK_MOUNT | FAN_MARK_FILESYSTEM));
            if m.mask != 0 {
                sysfd::fanotify_mark(fd.as_fd(), flags, m.mask as u64, &path)
                    .map_err(err(format!("mark {path} (mask {:#x})", m.mask)))?;
            }
            if m.ignored_mask != 0 {
                sysfd::fanotify_mark(
                    fd.as_fd(),
                    flags | FAN_MARK_IGNORED_MASK,
                    m.ignored_mask as u64,
                    &path,
                )
                .map_err(err(format!(
                    "mark {path} (ignored mask {:#x})",
                    m.ignored_mask
                )))?;
            }
        }
        sysfd::fcntl(fd.as_fd(), libc::F_SETFL, (ffy.flags & SETFL_MASK) as i64)
            .map_err(err("F_SETFL".into()))?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fanotify_fdinfo_fields() {
        let fs =
            super::fields("fanotify mnt_id:1b mflags:40 mask:40000038 ignored_mask:3").unwrap();
        assert_eq!(super::hex(&fs, "mnt_id"), Some(0x1b));
        assert_eq!(super::hex(&fs, "mask"), Some(0x4000_0038));
        assert!(super::fields("fanotify bogus").is_none());
    }
}
