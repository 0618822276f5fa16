//! Link remaps (`--link-remap`): a file whose opened name was removed but which still has
//! another name (a hard link elsewhere) cannot be a ghost (that would be a copy, cut off from
//! its other names), and cannot be reopened by its old path. As CRIU does, the dump gives
//! it a temporary name beside the old one (`link_remap.ID`, a hard link made from the open
//! file) saved as a regular-file record, and a LINKED `remap-fpath` entry points the
//! original record at it. Restore opens that name, so the task gets the very same inode,
//! and removes it once the restore succeeded (a failed restore keeps it for the next try).
//!
//! Without `--link-remap` such a file is refused, as CRIU does. A dump that fails removes
//! the names it made ([`LinkRemaps`] does on drop unless the dump succeeded).
//!
//! On overlayfs (container roots) a file of a lower layer whose name was removed in the
//! container looks the same (the lower file keeps its link count), but the overlay will not
//! link it anywhere (ENOENT); as CRIU falls back then, it is saved as a ghost instead
//! ([`Remapped::Unlinkable`]): the lower layer cannot change under it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::error::{task_error_from, TaskError, Unsupported};
use super::FileTable;
use crate::image::pb;

/// Why a link remap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkRemapError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(LinkRemapError);

/// The temporary names one dump made: removed on drop unless [`LinkRemaps::keep`].
#[derive(Debug, Default)]
pub struct LinkRemaps {
    /// `--link-remap` was given.
    pub enabled: bool,
    /// (the tree's root, when its mount namespace is not cryo's; the name made there).
    made: Vec<(Option<i32>, PathBuf)>,
    kept: bool,
}

impl LinkRemaps {
    /// The dump succeeded: the names stay for the restore.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for LinkRemaps {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (ns, p) in self.made.drain(..) {
            let _in = ns.map(|pid| super::ns::InNs::enter(pid, true));
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove link remap");
            }
        }
    }
}

/// What [`dump`] did with a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Remapped {
    /// Saved as a link remap.
    Linked,
    /// On overlayfs, which refuses a name to it (a removed file of a lower layer): nothing
    /// was saved; the caller saves it as a ghost.
    Unlinkable,
}

/// overlayfs's `f_type` (linux/magic.h).
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Saves record `reg_id` (fd `fd` of `pid`, a file removed from `path` that still has other
/// names) as a link remap, or refuses it without `--link-remap`. `mnt_ns_pid`: the tree's
/// root when its mount namespace is not cryo's (the name is made there).
pub fn dump(
    files: &mut FileTable,
    pid: i32,
    fd: i32,
    path: &str,
    mnt_ns_pid: Option<i32>,
    reg_id: u32,
) -> Result<Remapped, LinkRemapError> {
    let object = format!("fd {fd} ({path} (deleted))");
    if !files.link_remaps.enabled {
        let overlay = crate::sys::fd::open(
            &format!("/proc/{pid}/fd/{fd}"),
            libc::O_PATH | libc::O_CLOEXEC,
        )
        .ok()
        .and_then(|f| rustix::fs::fstatfs(f).ok())
        .is_some_and(|s| s.f_type == OVERLAYFS_SUPER_MAGIC);
        return Err(Unsupported::of(
            pid,
            object,
            if overlay {
                "the file's name was removed but it has a link count (hard links, or on this overlayfs a lower layer's file removed in the container), so it can be neither copied nor reopened by its name without --link-remap"
            } else {
                "the file's name was removed but it has other names (hard links), so it can be neither copied nor reopened by its name"
            },
            "add --link-remap: cryo then gives it a temporary name beside the old one for the restore (or copies it, when overlayfs refuses a name)",
        )
        .into());
    }
    let err = |what: String| {
        move |source| TaskError::Fd {
            pid,
            fd,
            what,
            source,
        }
    };
    // Opened from cryo's /proc before entering the tree's mount namespace.
    let file = crate::sys::fd::open(
        &format!("/proc/{pid}/fd/{fd}"),
        libc::O_PATH | libc::O_CLOEXEC,
    )
    .map_err(err("open the file to link it".into()))?;
    let overlay =
        rustix::fs::fstatfs(file.as_fd()).is_ok_and(|s| s.f_type == OVERLAYFS_SUPER_MAGIC);
    let lid = files.alloc();
    let mut dir = Path::new(path)
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    // In a file system of the tree's user namespace cryo's ids (not mapped there) may not
    // make a name (EOVERFLOW): the link is made with the file's owner's ids, as CRIU does.
    // Read before entering the tree's mount namespace, whose /proc is the tree's.
    let owner = rustix::fs::fstat(file.as_fd())
        .ok()
        .filter(|_| super::userns::maps_of(pid).is_some())
        .map(|st| (st.st_uid, st.st_gid));
    let _in = mnt_ns_pid
        .map(|p| super::ns::InNs::enter(p, true))
        .transpose()
        .map_err(err("enter the tree's mount namespace".into()))?;
    let link = |at: &Path| {
        let l = || {
            rustix::fs::linkat(
                file.as_fd(),
                "",
                rustix::fs::CWD,
                at,
                rustix::fs::AtFlags::EMPTY_PATH,
            )
        };
        match (l(), owner) {
            (Err(rustix::io::Errno::OVERFLOW | rustix::io::Errno::PERM), Some((uid, gid))) => {
                crate::sys::proc::with_fs_ids(uid, gid, l).unwrap_or_else(|e| {
                    Err(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::PERM))
                })
            }
            (r, _) => r,
        }
    };
    let at = loop {
        let at = dir.join(format!("link_remap.{lid}"));
        match link(&at) {
            Ok(()) => break at,
            // overlayfs will not link the file itself (a lower layer's, removed): where its
            // directory is there (or none is left), a ghost instead, as CRIU falls back.
            Err(rustix::io::Errno::NOENT)
                if overlay && (dir.parent().is_none() || dir.is_dir()) =>
            {
                return Ok(Remapped::Unlinkable);
            }
            // The directory went too: use the nearest one that is left, as CRIU.
            Err(rustix::io::Errno::NOENT) if dir.parent().is_some() => {
                dir = dir.parent().expect("checked").to_path_buf();
            }
            Err(e) => {
                return Err(err(format!("link it to {}", at.display()))(e.into()).into());
            }
        }
    };
    files.link_remaps.made.push((mnt_ns_pid, at.clone()));
    files.entries.push(pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id: lid,
        reg: Some(pb::RegFileEntry {
            id: lid,
            flags: 0,
            pos: 0,
            fown: Default::default(),
            name: at.to_string_lossy().into_owned(),
            ..Default::default()
        }),
        ..Default::default()
    });
    files.remaps.push(pb::RemapFilePathEntry {
        orig_id: reg_id,
        remap_id: lid,
        remap_type: Some(pb::RemapType::Linked as i32),
    });
    Ok(Remapped::Linked)
}
