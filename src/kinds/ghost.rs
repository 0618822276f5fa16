//! Ghost files: regular files that were deleted while a task still had them open or mapped.
//! Their content goes into the images (`ghost-file-ID.img`, linked to the file's record by
//! `remap-fpath.img`, as CRIU lays it out), up to `--ghost-limit` bytes.
//!
//! Restore writes the content back to a file at the original path (or, if that path is
//! taken again, to a hidden name beside it), opens it from cryo with the saved flags, hands
//! the open file to the puppet and unlinks the file before the restored tree runs: the
//! program sees a deleted file with the same content, as before.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::FileTable;
use crate::image::{self, pb, ImageDir};

/// Why a deleted file (ghost) could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum GhostError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(GhostError);

/// Saves the content of the deleted file readable at `proc_path` (once per inode) and
/// links file record `reg_id` to it.
pub fn dump(
    files: &mut FileTable,
    pid: i32,
    object: &str,
    proc_path: &str,
    meta: &std::fs::Metadata,
    reg_id: u32,
) -> Result<(), GhostError> {
    let key = (meta.dev(), meta.ino());
    let ghost_id = match files.ghost_ids.get(&key) {
        Some(&g) => g,
        None => {
            if meta.len() > files.ghost_limit {
                return Err(Unsupported::of(pid, object, format!(
                        "the file was deleted and its {} bytes exceed the ghost file limit of {} bytes",
                        meta.len(),
                        files.ghost_limit
                    ), "raise the limit with --ghost-limit SIZE (e.g. --ghost-limit 64M)").into());
            }
            let mut content = Vec::with_capacity(meta.len() as usize);
            std::fs::File::open(proc_path)
                .and_then(|mut f| f.read_to_end(&mut content))
                .map_err(|source| TaskError::Fd {
                    pid,
                    fd: -1,
                    what: format!("{object}: read the deleted file's content"),
                    source,
                })?;
            let g = files.alloc();
            files.ghost_ids.insert(key, g);
            let tv = |s: i64, ns: i64| pb::Timeval {
                tv_sec: s as u64,
                tv_usec: (ns / 1000) as u64,
            };
            files.ghosts.push((
                g,
                pb::GhostFileEntry {
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mode: meta.mode(),
                    dev: Some(meta.dev() as u32),
                    ino: Some(meta.ino()),
                    rdev: None,
                    atim: Some(tv(meta.atime(), meta.atime_nsec())),
                    mtim: Some(tv(meta.mtime(), meta.mtime_nsec())),
                    chunks: None,
                    size: Some(content.len() as u64),
                    symlnk_target: None,
                },
                content,
            ));
            g
        }
    };
    files.remaps.push(pb::RemapFilePathEntry {
        orig_id: reg_id,
        remap_id: ghost_id,
        remap_type: Some(pb::RemapType::Ghost as i32),
    });
    Ok(())
}

/// Writes ghost-file-ID.img for every ghost and remap-fpath.img.
pub fn write(dir: &ImageDir, files: &FileTable) -> Result<(), GhostError> {
    for (id, e, content) in &files.ghosts {
        dir.write_with_data(
            &format!("ghost-file-{id}.img"),
            image::GHOST_FILE,
            &[(e.clone(), content.clone())],
        )?;
    }
    if !files.remaps.is_empty() {
        dir.write("remap-fpath.img", image::REMAP_FPATH, &files.remaps)?;
    }
    Ok(())
}

/// Restore side: which records are ghosts, and the files materialised for them (unlinked
/// when the restore ends, or fails).
#[derive(Default)]
pub struct GhostStore {
    remaps: HashMap<u32, u32>,
    made: HashMap<u32, PathBuf>,
    /// The root puppet when the tree has namespaces of its own: ghosts are made (and
    /// unlinked) inside its mount namespace, where their paths lead.
    ns_pid: Option<i32>,
}

impl GhostStore {
    pub fn load(dir: &ImageDir) -> Result<Self, GhostError> {
        let remaps = dir
            .read_opt::<pb::RemapFilePathEntry>("remap-fpath.img", image::REMAP_FPATH)?
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.remap_type == Some(pb::RemapType::Ghost as i32))
            .map(|r| (r.orig_id, r.remap_id))
            .collect();
        Ok(GhostStore {
            remaps,
            made: HashMap::new(),
            ns_pid: None,
        })
    }

    /// Whether file record `id` is a ghost.
    pub fn is_ghost(&self, id: u32) -> bool {
        self.remaps.contains_key(&id)
    }

    /// Opens record `id` (a ghost) in cryo with `flags`, materialising its content first.
    pub fn open(
        &mut self,
        dir: &ImageDir,
        id: u32,
        path: &str,
        flags: u32,
        ns_pid: Option<i32>,
    ) -> Result<OwnedFd, GhostError> {
        let g = self.remaps[&id];
        let err = |what: String| move |source| TaskError::Object { id, what, source };
        self.ns_pid = ns_pid;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.made.entry(g) {
            let name = format!("ghost-file-{g}.img");
            let mut v = dir.read_with_data::<pb::GhostFileEntry>(&name, image::GHOST_FILE)?;
            if v.len() != 1 {
                return Err(TaskError::BadImage(format!("{name} must hold one entry")).into());
            }
            let (e, content) = v.remove(0);
            let err = |what: String| move |source| TaskError::Object { id, what, source };
            // The image is read; now the path is the tree's.
            let _in = self
                .ns_pid
                .map(|p| super::ns::InNs::enter(p, true))
                .transpose()
                .map_err(err("enter the tree's namespaces".into()))?;
            let orig = Path::new(path);
            let at = if orig.symlink_metadata().is_err() {
                orig.to_path_buf()
            } else {
                orig.with_file_name(format!(".cryo-ghost-{g}-{}", std::process::id()))
            };
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(e.mode & 0o7777)
                .open(&at)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, &content)?;
                    std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid))
                })
                .map_err(err(format!(
                    "recreate deleted file {path} at {}",
                    at.display()
                )))?;
            slot.insert(at);
        }
        let at = &self.made[&g];
        let _in = self
            .ns_pid
            .map(|p| super::ns::InNs::enter(p, true))
            .transpose()
            .map_err(err("enter the tree's namespaces".into()))?;
        let flags =
            flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        Ok(
            crate::sys::fd::open(&at.to_string_lossy(), flags as i32 | libc::O_CLOEXEC)
                .map_err(err(format!("open recreated deleted file {}", at.display())))?,
        )
    }

    /// Unlinks every materialised file (the puppets keep them open).
    pub fn unlink_all(&mut self) {
        if self.made.is_empty() {
            return;
        }
        let _in = match self.ns_pid.map(|p| super::ns::InNs::enter(p, true)) {
            Some(Err(e)) => {
                for p in self.made.values() {
                    tracing::warn!("cannot remove recreated deleted file {}: {e}", p.display());
                }
                return;
            }
            other => other,
        };
        for (_, p) in self.made.drain() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for GhostStore {
    fn drop(&mut self) {
        self.unlink_all();
    }
}
