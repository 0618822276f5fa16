//! Ghost files: files that were deleted while a task still had them open, mapped, or as its
//! working directory. What makes them again goes into the images (`ghost-file-ID.img`,
//! linked to the file's record by `remap-fpath.img`, as CRIU lays it out):
//!
//! - a regular file: its content, up to `--ghost-limit` bytes of allocated blocks (as CRIU
//!   counts it, so a sparse file is measured by its data). From 12 KiB on, only the data
//!   extents are saved (`ghost_chunk_entry` + bytes, found with `SEEK_DATA`/`SEEK_HOLE`):
//!   the holes stay holes on restore;
//! - a directory, a FIFO (its queued bytes are saved by `pipes`), a character or block
//!   device (its number), a symlink (its target): only the entry.
//!
//! Every ghost keeps its mode, owner, and access and modification times. Restore makes the
//! file again at the original path (or, if that path is taken again or its directory is
//! gone, at a hidden name in the nearest directory that exists), opens it from cryo with the
//! saved flags or hands its path to whoever needs it (a FIFO, a working directory), and
//! removes it before the restored tree runs: the program sees a deleted file, as before.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{FileTable, RestoreCx};
use crate::image::{self, pb, ImageDir};

/// Why a deleted file (ghost) could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum GhostError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(GhostError);

/// Files smaller than this are saved whole; larger ones by their data extents (as CRIU).
const CHUNKS_FROM: u64 = 3 * 4096;

/// What follows a ghost's entry in its image.
#[derive(Debug)]
pub enum Body {
    /// Not a regular file: nothing.
    None,
    /// The whole content.
    Bytes(Vec<u8>),
    /// The data extents (offset, bytes); the rest of the file, up to its size, is holes.
    Chunks(Vec<(u64, Vec<u8>)>),
}

/// One ghost file to save.
#[derive(Debug)]
pub struct Ghost {
    pub id: u32,
    pub entry: pb::GhostFileEntry,
    pub body: Body,
}

/// Saves what makes the deleted file at `proc_path` again (once per inode) and links file
/// record `reg_id` to it. `object` names it in errors ("fd 4 (/tmp/x (deleted))").
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
            let ft = meta.file_type();
            let err = |what: &str| {
                let what = format!("{object}: {what}");
                move |source| TaskError::Fd {
                    pid,
                    fd: -1,
                    what,
                    source,
                }
            };
            let mut entry = pb::GhostFileEntry {
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode(),
                dev: Some(crate::num::low32(meta.dev())),
                ino: Some(meta.ino()),
                atim: Some(timeval(meta.atime(), meta.atime_nsec())),
                mtim: Some(timeval(meta.mtime(), meta.mtime_nsec())),
                ..Default::default()
            };
            let body = if ft.is_file() {
                // As CRIU: the limit is on the blocks the file takes, so holes are free.
                let used = meta.blocks() * 512;
                if used > files.ghost_limit {
                    return Err(Unsupported::of(
                        pid,
                        object,
                        format!(
                            "the file was deleted and its {used} bytes of data exceed the ghost file limit of {} bytes",
                            files.ghost_limit
                        ),
                        "raise the limit with --ghost-limit SIZE (e.g. --ghost-limit 64M)",
                    )
                    .into());
                }
                let f = std::fs::File::open(proc_path)
                    .map_err(err("open the deleted file to read it"))?;
                if meta.len() < CHUNKS_FROM {
                    let mut content = Vec::with_capacity(crate::num::usize_of(meta.len()));
                    (&f).read_to_end(&mut content)
                        .map_err(err("read the deleted file's content"))?;
                    entry.size = Some(content.len() as u64);
                    Body::Bytes(content)
                } else {
                    entry.chunks = Some(true);
                    entry.size = Some(meta.len());
                    Body::Chunks(
                        data_extents(&f, meta.len())
                            .map_err(err("read the deleted file's data extents"))?,
                    )
                }
            } else if ft.is_symlink() {
                let f = crate::sys::fd::open(proc_path, libc::O_PATH | libc::O_CLOEXEC)
                    .map_err(err("open the deleted symlink"))?;
                let target = rustix::fs::readlinkat(f.as_fd(), "", Vec::new())
                    .map_err(|e| err("read the deleted symlink's target")(e.into()))?;
                entry.symlnk_target = Some(target.to_string_lossy().into_owned());
                Body::None
            } else if ft.is_char_device() || ft.is_block_device() {
                entry.rdev = Some(crate::num::low32(meta.rdev()));
                Body::None
            } else if ft.is_dir() || ft.is_fifo() {
                Body::None
            } else {
                return Err(Unsupported::of(
                    pid,
                    object,
                    "a deleted socket file cannot be made again",
                    "close it before the dump",
                )
                .into());
            };
            let g = files.alloc();
            files.ghost_ids.insert(key, g);
            files.ghosts.push(Ghost { id: g, entry, body });
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

fn timeval(s: i64, ns: i64) -> pb::Timeval {
    pb::Timeval {
        tv_sec: s.cast_unsigned(),
        tv_usec: (ns / 1000).cast_unsigned(),
    }
}

/// The data extents of `f` below `size`, with their bytes (`SEEK_DATA`/`SEEK_HOLE`; a file
/// system without them is one extent).
fn data_extents(f: &std::fs::File, size: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(rustix::io::Errno::INVAL) if pos == 0 => 0, // no SEEK_DATA here
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = seek(f, SeekFrom::Hole(data))?.min(size);
        let mut buf = vec![0u8; crate::num::usize_of(hole - data)];
        f.read_exact_at(&mut buf, data)?;
        out.push((data, buf));
        pos = hole;
    }
    Ok(out)
}

/// Writes ghost-file-ID.img for every ghost and remap-fpath.img.
pub fn write(dir: &ImageDir, files: &FileTable) -> Result<(), GhostError> {
    for g in &files.ghosts {
        let name = format!("ghost-file-{}.img", g.id);
        match &g.body {
            Body::None => {
                dir.write_with_data(&name, image::GHOST_FILE, &[(g.entry.clone(), vec![])])?
            }
            Body::Bytes(b) => dir.write_mixed::<_, pb::GhostChunkEntry>(
                &name,
                image::GHOST_FILE,
                (&g.entry, b),
                &[],
            )?,
            Body::Chunks(chunks) => {
                let rest: Vec<(pb::GhostChunkEntry, &[u8])> = chunks
                    .iter()
                    .map(|(off, b)| {
                        (
                            pb::GhostChunkEntry {
                                len: b.len() as u64,
                                off: *off,
                            },
                            b.as_slice(),
                        )
                    })
                    .collect();
                dir.write_mixed(&name, image::GHOST_FILE, (&g.entry, &[]), &rest)?
            }
        }
    }
    if !files.remaps.is_empty() {
        dir.write("remap-fpath.img", image::REMAP_FPATH, &files.remaps)?;
    }
    Ok(())
}

/// A ghost's image: its entry and data, and its chunks with theirs.
type GhostImage = (
    (pb::GhostFileEntry, Vec<u8>),
    Vec<(pb::GhostChunkEntry, Vec<u8>)>,
);

/// Reads ghost-file-`g`.img.
fn read_ghost(dir: &ImageDir, g: u32) -> Result<GhostImage, GhostError> {
    let name = format!("ghost-file-{g}.img");
    Ok(dir
        .read_mixed::<pb::GhostFileEntry, pb::GhostChunkEntry>(&name, image::GHOST_FILE)?
        .ok_or_else(|| TaskError::BadImage(format!("{name} is missing")))?)
}

/// A ghost made on restore: where, and whether it is a directory (removed with rmdir).
struct Made {
    at: PathBuf,
    dir: bool,
    /// Made under a read-only mount: a writable copy of that mount, rooted at the file's
    /// directory, through which it was made and is removed.
    via: Option<OwnedFd>,
    /// Its device and inode: an fd opened on it through another mount is checked against
    /// them.
    inode: (u64, u64),
    /// Its file handle (type, bytes), when its file system gives one: it is linked through
    /// another mount by it ([`GhostStore::link_into`]).
    handle: Option<Handle>,
}

/// A file handle: its type and bytes (`name_to_handle_at`).
type Handle = (i32, Vec<u8>);

/// Restore side: which records are ghosts, and the files made for them (removed when the
/// restore ends, or fails).
#[derive(Default)]
pub struct GhostStore {
    /// File record id → ghost id.
    remaps: HashMap<u32, u32>,
    made: HashMap<u32, Made>,
    /// File record id → the record of its temporary name (`--link-remap`), and the names
    /// used, removed once the restore succeeded ([`GhostStore::finish`]).
    linked: HashMap<u32, u32>,
    linked_used: Vec<String>,
    /// Temporary names of link remaps in other mount namespaces than `ns_pid`'s: the
    /// directory (held) and the name, removed there.
    linked_at: Vec<(OwnedFd, String)>,
    /// Ghost images read ahead ([`GhostStore::preload`]), and the (dev, inode) of those made.
    cache: HashMap<u32, GhostImage>,
    inodes: HashMap<u32, (u32, u64)>,
    /// Other names of ghosts, linked through another mount ([`GhostStore::link_into`]):
    /// the directory (held) and the name, removed with the ghosts.
    links: Vec<(OwnedFd, String)>,
    /// The root puppet when the tree has namespaces of its own: ghosts are made (and
    /// removed) inside its mount namespace, where their paths lead.
    ns_pid: Option<i32>,
}

impl GhostStore {
    pub fn load(dir: &ImageDir) -> Result<Self, GhostError> {
        let all = dir
            .read_opt::<pb::RemapFilePathEntry>("remap-fpath.img", image::REMAP_FPATH)?
            .unwrap_or_default();
        let of = |t: pb::RemapType| {
            all.iter()
                .filter(|r| r.remap_type.unwrap_or(0) == t as i32)
                .map(|r| (r.orig_id, r.remap_id))
                .collect()
        };
        let mut g = GhostStore::default();
        g.remaps = of(pb::RemapType::Ghost);
        g.linked = of(pb::RemapType::Linked);
        Ok(g)
    }

    /// The record of the temporary name file record `id` is reopened through
    /// (`--link-remap`), if it has one.
    pub fn linked(&self, id: u32) -> Option<u32> {
        self.linked.get(&id).copied()
    }

    /// Notes a temporary name used, to remove once the restore succeeded.
    pub fn note_linked(&mut self, path: &str, ns_pid: Option<i32>) {
        self.ns_pid = self.ns_pid.or(ns_pid);
        if !self.linked_used.iter().any(|p| p == path) {
            self.linked_used.push(path.to_string());
        }
    }

    /// Notes that the temporary name `name` in the directory `dir` holds (of a mount
    /// namespace other than the root's) was used: it is removed there once the restore
    /// succeeded.
    pub fn note_linked_at(&mut self, dir: OwnedFd, name: &str) {
        self.linked_at.push((dir, name.to_string()));
    }

    /// The restore succeeded: removes the ghosts and the temporary names of link remaps.
    pub fn finish(&mut self) {
        self.unlink_all();
        for (dir, name) in self.linked_at.drain(..) {
            if let Err(e) = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty())
            {
                tracing::warn!(path = %name, error = %e, "cannot remove link remap");
            }
        }
        if self.linked_used.is_empty() {
            return;
        }
        let _in = self.ns_pid.map(|p| super::ns::InNs::enter(p, true));
        for p in self.linked_used.drain(..) {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p, error = %e, "cannot remove link remap");
            }
        }
    }

    /// Whether file record `id` is a ghost.
    pub fn is_ghost(&self, id: u32) -> bool {
        self.remaps.contains_key(&id)
    }

    /// Makes the ghost of file record `id` (whose path was `path`) if not made yet, and
    /// returns where it is, as the tree's mount namespace sees it.
    pub fn materialize(
        &mut self,
        dir: &ImageDir,
        id: u32,
        path: &str,
        ns_pid: Option<i32>,
    ) -> Result<PathBuf, GhostError> {
        let g = *self.remaps.get(&id).ok_or_else(|| {
            TaskError::BadImage(format!("file {id} has no ghost in remap-fpath.img"))
        })?;
        self.make_ghost(dir, g, id, path, ns_pid, None)
    }

    /// As [`GhostStore::materialize`], made in the directory `in_dir` holds (that of the
    /// fd's own mount, `path`'s directory there) when not made yet; where the tree's mount
    /// namespace has `path` if that fails.
    pub fn materialize_in(
        &mut self,
        dir: &ImageDir,
        id: u32,
        path: &str,
        ns_pid: Option<i32>,
        in_dir: std::os::fd::BorrowedFd<'_>,
    ) -> Result<PathBuf, GhostError> {
        let g = *self.remaps.get(&id).ok_or_else(|| {
            TaskError::BadImage(format!("file {id} has no ghost in remap-fpath.img"))
        })?;
        self.make_ghost(dir, g, id, path, ns_pid, Some(in_dir))
    }

    /// Reads the images of every ghost, so that they can be made from inside the tree's
    /// mount namespace, where the images directory is not (a FIFO or an inotify watch is
    /// made there).
    pub fn preload(&mut self, dir: &ImageDir) -> Result<(), GhostError> {
        let mut ids: Vec<u32> = self.remaps.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for g in ids {
            if !self.made.contains_key(&g) && !self.cache.contains_key(&g) {
                let img = read_ghost(dir, g)?;
                self.cache.insert(g, img);
            }
        }
        Ok(())
    }

    /// Makes the ghost of the deleted inode `ino` of device `dev` (the kernel's encoding,
    /// as inotify shows it), if one was saved, and returns where it is. [`preload`] first.
    pub fn materialize_inode(
        &mut self,
        dir: &ImageDir,
        dev: u32,
        ino: u64,
        path: &str,
        ns_pid: Option<i32>,
    ) -> Result<Option<PathBuf>, GhostError> {
        // Outside the tree's namespaces (or already done by the kind's `load`).
        self.preload(dir)?;
        let user_dev = crate::num::low32(libc::makedev(dev >> 20, dev & 0xf_ffff));
        let found = self.cache.iter().find_map(|(&g, ((e, _), _))| {
            (e.ino == Some(ino) && e.dev == Some(user_dev)).then_some(g)
        });
        let found = found.or_else(|| {
            self.inodes
                .iter()
                .find_map(|(&g, &k)| (k == (user_dev, ino)).then_some(g))
        });
        match found {
            Some(g) => self.make_ghost(dir, g, 0, path, ns_pid, None).map(Some),
            None => Ok(None),
        }
    }

    /// Makes ghost `g` (for file record `id`, whose path was `path`) if not made yet.
    fn make_ghost(
        &mut self,
        dir: &ImageDir,
        g: u32,
        id: u32,
        path: &str,
        ns_pid: Option<i32>,
        in_dir: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<PathBuf, GhostError> {
        if let Some(m) = self.made.get(&g) {
            return Ok(m.at.clone());
        }
        self.ns_pid = ns_pid;
        let ((e, data), chunks) = match self.cache.remove(&g) {
            Some(img) => img,
            None => read_ghost(dir, g)?,
        };
        self.inodes
            .insert(g, (e.dev.unwrap_or(0), e.ino.unwrap_or(0)));
        let err = |what: String| move |source| TaskError::Object { id, what, source };
        let is_dir = e.mode & libc::S_IFMT == libc::S_IFDIR;
        if let Some(d) = in_dir {
            // In the directory of the fd's own mount: its name there, or a hidden one.
            let (_, name0) = split(Path::new(path));
            let name = match rustix::fs::statat(d, name0, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => name0.to_path_buf(),
                _ => PathBuf::from(format!(".cryo-ghost-{g}-{}", std::process::id())),
            };
            if make(d, &name, &e, &data, &chunks).is_ok() {
                let at = Path::new(path)
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .join(&name);
                let (inode, handle) = identify(d, &name);
                let held = d
                    .try_clone_to_owned()
                    .map_err(err("hold the deleted file's directory".into()))?;
                self.made.insert(
                    g,
                    Made {
                        at: at.clone(),
                        dir: is_dir,
                        via: Some(held),
                        inode,
                        handle,
                    },
                );
                return Ok(at);
            }
        }
        // The image is read; now the path is the tree's.
        let _in = self
            .ns_pid
            .map(|p| super::ns::InNs::enter(p, true))
            .transpose()
            .map_err(err("enter the tree's namespaces".into()))?;
        let at = place(Path::new(path), g);
        let what = || format!("recreate deleted file {path} at {}", at.display());
        let via = match make(rustix::fs::CWD, &at, &e, &data, &chunks) {
            Ok(()) => None,
            // A read-only mount of a writable file system (zdtm ghost_on_rofs): made
            // through a writable copy of the mount, that the program never sees.
            Err(x) if x.raw_os_error() == Some(libc::EROFS) => {
                let (dir, name) = split(&at);
                let clone = crate::sys::mount::writable_clone(dir).map_err(err(format!(
                    "{} (a read-only mount): make a writable copy of the mount",
                    what()
                )))?;
                make(clone.as_fd(), name, &e, &data, &chunks).map_err(err(what()))?;
                Some(clone)
            }
            Err(x) => return Err(err(what())(x).into()),
        };
        let (inode, handle) = match &via {
            Some(v) => identify(v.as_fd(), split(&at).1),
            None => identify(rustix::fs::CWD, &at),
        };
        self.made.insert(
            g,
            Made {
                at: at.clone(),
                dir: is_dir,
                via,
                inode,
                handle,
            },
        );
        Ok(at)
    }

    /// The device and inode of the file made for record `id` (a ghost), once made.
    pub fn made_inode(&self, id: u32) -> Option<(u64, u64)> {
        let g = self.remaps.get(&id)?;
        self.made.get(g).map(|m| m.inode).filter(|&i| i != (0, 0))
    }

    /// Links the file made for record `id` (a ghost) into the directory `dir` holds (not
    /// an O_PATH fd) as `name`, or a hidden name when `name` is taken, through `dir`'s
    /// mount: the file's handle opened there (zdtm mntns_link_ghost: the file held through
    /// two mounts that show it at different places; CRIU links it through a mount that has
    /// both). Returns the name used; it is removed with the ghost.
    pub fn link_into(
        &mut self,
        id: u32,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &str,
    ) -> std::io::Result<String> {
        use rustix::fs::{self as rfs, AtFlags};
        let g = *self
            .remaps
            .get(&id)
            .ok_or_else(|| std::io::Error::other("no ghost"))?;
        let (ty, h) = self
            .made
            .get(&g)
            .and_then(|m| m.handle.clone())
            .ok_or_else(|| {
                std::io::Error::other("its file system gives no file handle of the file made")
            })?;
        let f = crate::sys::fd::open_by_handle(dir, ty, &h)?;
        let used = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => name.to_string(),
            _ => format!(".cryo-ghost-{g}-{}", std::process::id()),
        };
        rfs::linkat(&f, "", dir, used.as_str(), AtFlags::EMPTY_PATH)?;
        let held = dir.try_clone_to_owned()?;
        self.links.push((held, used.clone()));
        Ok(used)
    }

    /// Opens record `id` (a ghost) in cryo with `flags`, making it first.
    pub fn open(
        &mut self,
        dir: &ImageDir,
        id: u32,
        path: &str,
        flags: u32,
        ns_pid: Option<i32>,
    ) -> Result<OwnedFd, GhostError> {
        let at = self.materialize(dir, id, path, ns_pid)?;
        let _in = self
            .ns_pid
            .map(|p| super::ns::InNs::enter(p, true))
            .transpose()
            .map_err(TaskError::object(id, "enter the tree's namespaces"))?;
        let how = reopen_flags(flags) | libc::O_CLOEXEC;
        let what = || format!("open recreated deleted file {}", at.display());
        match crate::sys::fd::open(&at.to_string_lossy(), how) {
            // Open for writing under a read-only mount (made so after the open): through
            // the writable copy the file was made in.
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                let via = self
                    .made
                    .values()
                    .find(|m| m.at == at)
                    .and_then(|m| m.via.as_ref())
                    .ok_or(e)
                    .map_err(TaskError::object(id, what()))?;
                let f = rustix::fs::openat(
                    via,
                    split(&at).1,
                    rustix::fs::OFlags::from_bits_retain(how.cast_unsigned()),
                    rustix::fs::Mode::empty(),
                )
                .map_err(|x| TaskError::object(id, what())(x.into()))?;
                Ok(f)
            }
            r => Ok(r.map_err(TaskError::object(id, what()))?),
        }
    }

    /// Removes every file made (the puppets keep them open): files first, then
    /// directories, deepest first.
    pub fn unlink_all(&mut self) {
        for (dir, name) in self.links.drain(..) {
            if let Err(e) = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty())
            {
                tracing::warn!(file = %name, error = %e, "cannot remove a link of a recreated deleted file");
            }
        }
        if self.made.is_empty() {
            return;
        }
        let _in = match self.ns_pid.map(|p| super::ns::InNs::enter(p, true)) {
            Some(Err(e)) => {
                for m in self.made.values() {
                    tracing::warn!(file = %m.at.display(), error = %e, "cannot remove recreated deleted file");
                }
                return;
            }
            other => other,
        };
        let mut all: Vec<Made> = self.made.drain().map(|(_, m)| m).collect();
        all.sort_by_key(|m| (m.dir, std::cmp::Reverse(m.at.as_os_str().len())));
        for m in all {
            let (dir, name) = match &m.via {
                Some(v) => (v.as_fd(), split(&m.at).1),
                None => (rustix::fs::CWD, m.at.as_path()),
            };
            let flags = if m.dir {
                rustix::fs::AtFlags::REMOVEDIR
            } else {
                rustix::fs::AtFlags::empty()
            };
            let r = rustix::fs::unlinkat(dir, name, flags);
            if let Err(e) = r {
                tracing::warn!(
                    "cannot remove recreated deleted file {}: {e}",
                    m.at.display()
                );
            }
        }
    }
}

impl Drop for GhostStore {
    fn drop(&mut self) {
        self.unlink_all();
    }
}

/// The path file record `id` is reached by in the restored tree: its ghost's (made now)
/// when the file was deleted, else its own.
pub fn live_path(cx: &RestoreCx<'_>, id: u32) -> Result<String, GhostError> {
    let name = cx.reg(id)?.name.clone();
    let mut objs = cx.objs.borrow_mut();
    if !objs.ghosts.is_ghost(id) {
        return Ok(name);
    }
    let objs = &mut *objs;
    let at = objs.ghosts.materialize(&objs.dir, id, &name, objs.ns_pid)?;
    Ok(at.to_string_lossy().into_owned())
}

/// The flags to reopen a file with: without those that only matter when creating it
/// (`O_TMPFILE` too, which `fdinfo` shows on a file made by it).
pub fn reopen_flags(flags: u32) -> i32 {
    const O_TMPFILE_BIT: u32 = 0o20000000;
    let mut f = flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
    if f & O_TMPFILE_BIT != 0 {
        f &= !(O_TMPFILE_BIT | libc::O_DIRECTORY as u32);
    }
    f.cast_signed()
}

/// Where to make ghost `g` of `orig`: the original path when it is free and its directory
/// exists (a program comparing the name of its deleted file or working directory sees the
/// same), else a hidden name in the nearest directory that exists.
fn place(orig: &Path, g: u32) -> PathBuf {
    let parent = orig.parent().unwrap_or(Path::new("/"));
    if parent.is_dir() && orig.symlink_metadata().is_err() {
        return orig.to_path_buf();
    }
    let hidden = format!(".cryo-ghost-{g}-{}", std::process::id());
    let mut dir = parent;
    while !dir.is_dir() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    dir.join(hidden)
}

/// The device and inode of the file `name` in `dir` (or (0, 0)), and its file handle when
/// its file system gives one.
fn identify(dir: std::os::fd::BorrowedFd<'_>, name: &Path) -> ((u64, u64), Option<Handle>) {
    use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
    let inode =
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_or((0, 0), |s| (s.st_dev, s.st_ino));
    let handle = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .and_then(|f| crate::sys::fd::name_to_handle(f.as_fd()).ok());
    (inode, handle)
}

/// The directory and name of `at` (a ghost's place: an absolute path).
fn split(at: &Path) -> (&Path, &Path) {
    (
        at.parent().unwrap_or(Path::new("/")),
        at.file_name().map_or(at, Path::new),
    )
}

/// Makes the file `e` describes at `at` (relative to `dir`), then gives it its owner, mode
/// and times.
fn make(
    dir: std::os::fd::BorrowedFd<'_>,
    at: &Path,
    e: &pb::GhostFileEntry,
    data: &[u8],
    chunks: &[(pb::GhostChunkEntry, Vec<u8>)],
) -> std::io::Result<()> {
    use rustix::fs::{self as rfs, FileType, Mode, OFlags};
    let perm = e.mode & 0o7777;
    let fmt = e.mode & libc::S_IFMT;
    match fmt {
        libc::S_IFREG => {
            let f = std::fs::File::from(rfs::openat(
                dir,
                at,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?);
            let fill = || -> std::io::Result<()> {
                if e.chunks == Some(true) {
                    f.set_len(e.size.unwrap_or(0))?;
                    for (c, bytes) in chunks {
                        if bytes.len() as u64 != c.len {
                            return Err(std::io::Error::other(format!(
                                "chunk at {} holds {} bytes, not {}",
                                c.off,
                                bytes.len(),
                                c.len
                            )));
                        }
                        f.write_all_at(bytes, c.off)?;
                    }
                } else {
                    f.write_all_at(data, 0)?;
                }
                Ok(())
            };
            if let Err(err) = fill() {
                let _ = rfs::unlinkat(dir, at, rfs::AtFlags::empty());
                return Err(err);
            }
        }
        libc::S_IFDIR => rfs::mkdirat(dir, at, Mode::from_raw_mode(0o700))?,
        libc::S_IFLNK => {
            let target = e.symlnk_target.as_deref().ok_or_else(|| {
                std::io::Error::other("the image has no target for a deleted symlink")
            })?;
            rfs::symlinkat(target, dir, at)?;
        }
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
            let rdev = match fmt {
                libc::S_IFIFO => 0,
                _ => u64::from(e.rdev.ok_or_else(|| {
                    std::io::Error::other("the image has no device number for a deleted device")
                })?),
            };
            rfs::mknodat(
                dir,
                at,
                FileType::from_raw_mode(fmt),
                Mode::from_raw_mode(0o600),
                rdev,
            )?;
        }
        _ => {
            return Err(std::io::Error::other(format!(
                "a deleted file of mode {:o} cannot be made",
                e.mode
            )))
        }
    }
    let undo = |err: std::io::Error| {
        let flags = if fmt == libc::S_IFDIR {
            rfs::AtFlags::REMOVEDIR
        } else {
            rfs::AtFlags::empty()
        };
        let _ = rfs::unlinkat(dir, at, flags);
        err
    };
    // Owner before mode: a chown clears set-user-ID and set-group-ID.
    rfs::chownat(
        dir,
        at,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
        rfs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|x| undo(x.into()))?;
    if fmt != libc::S_IFLNK {
        rfs::chmodat(dir, at, Mode::from_raw_mode(perm), rfs::AtFlags::empty())
            .map_err(|x| undo(x.into()))?;
    }
    if let (Some(a), Some(m)) = (&e.atim, &e.mtim) {
        let ts = |t: &pb::Timeval| rfs::Timespec {
            tv_sec: t.tv_sec.cast_signed(),
            tv_nsec: (t.tv_usec * 1000).cast_signed(),
        };
        rfs::utimensat(
            dir,
            at,
            &rfs::Timestamps {
                last_access: ts(a),
                last_modification: ts(m),
            },
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|x| undo(x.into()))?;
    }
    Ok(())
}
