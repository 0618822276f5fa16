//! memfd: anonymous files from `memfd_create`, open as fds and/or mapped (files.img MEMFD
//! records, memfd.img inode records, content as shmem pages in `pagemap-shmem-INODE.img`).
//!
//! Dump saves each memfd inode once (name, size, mode, owner, seals and populated pages);
//! every fd or mapping of it gets a MEMFD file record pointing at the inode. Restore makes
//! the memfd in cryo with the same name, size and content, applies the seals last, and hands
//! it to the puppets: fds and mappings of several processes share one inode again.
//! A hugetlb memfd (`MFD_HUGETLB`) keeps its page size (`hugetlb_flag`, as CRIU writes it);
//! its content is written back through a mapping. An fd of shared anonymous memory ("/dev/zero (deleted)", a shmem inode too) is saved
//! and restored as a memfd, as CRIU does.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::error::{task_error_from, TaskError};
use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, TargetFd};
use super::shmem::ShmemError;
use super::DumpCx;
use crate::image::{self, pb};
use crate::num::{c_int, low32};
use crate::sys::fd as sysfd;

/// memfd file descriptors (and the records of memfd mappings).
pub struct Memfd;

/// Why a memfd could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum MemfdError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Its content (saved as shared memory).
    #[error(transparent)]
    Content(#[from] ShmemError),
}
task_error_from!(MemfdError);

/// `statfs.f_type` of hugetlbfs.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// The memfd name in a "/memfd:NAME (deleted)" link.
fn name_of(link: &str) -> &str {
    let n = link.strip_prefix("/memfd:").unwrap_or(link);
    n.strip_suffix(" (deleted)").unwrap_or(n)
}

/// Saves the memfd inode readable at `proc_path` once; returns its inode id.
fn save_inode(
    cx: &mut DumpCx<'_>,
    link: &str,
    proc_path: &str,
    err: impl Fn(&str, std::io::Error) -> TaskError,
) -> Result<u32, MemfdError> {
    let f = File::open(proc_path).map_err(|e| err("open the memfd", e))?;
    let meta = f.metadata().map_err(|e| err("stat the memfd", e))?;
    let ino = meta.ino();
    // A hugetlb memfd (MFD_HUGETLB): CRIU's flag is MFD_HUGETLB with the page size's log2 at
    // MFD_HUGE_SHIFT; hugetlbfs reports its page size as the block size.
    let hugetlb_flag = rustix::fs::fstatfs(&f)
        .ok()
        .filter(|st| st.f_type.cast_unsigned() == HUGETLBFS_MAGIC)
        .map(|_| {
            let bits = meta.blksize().trailing_zeros() << 26;
            libc::MFD_HUGETLB | bits
        });
    // The content is saved once per inode, by a mapping of it (shared anonymous memory) or
    // by this; the inode record once too.
    let content_saved = !cx.files.shmem_seen.insert(ino);
    if !cx.files.memfd_inodes.iter().any(|i| i.inode_id == ino) {
        let seals = sysfd::seals(f.as_fd()).unwrap_or(0);
        cx.files.memfd_inodes.push(pb::MemfdInodeEntry {
            name: name_of(link).to_string(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            shmid: low32(ino),
            seals,
            inode_id: ino,
            hugetlb_flag,
            mode: Some(meta.mode()),
        });
        if !content_saved {
            super::shmem::save_content(cx, &f, std::path::Path::new(proc_path), meta.len(), ino)
                .map_err(|e| err("read the memfd's content", e))?;
        }
    }
    Ok(low32(ino))
}

/// The MEMFD record of a mapping of a memfd (opened with `fdflags`); returns its file id.
pub fn dump_mapping(
    cx: &mut DumpCx<'_>,
    v: &crate::procfs::Vma,
    fdflags: u32,
) -> Result<u32, MemfdError> {
    let pid = cx.pid;
    let proc_path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let inode_id = save_inode(cx, &v.name, &proc_path, |what, source| TaskError::Fd {
        pid,
        fd: -1,
        what: format!("mapping {:#x}-{:#x} {}: {what}", v.start, v.end, v.name),
        source,
    })?;
    let id = cx.files.alloc();
    cx.files.entries.push(entry(id, fdflags, 0, inode_id));
    Ok(id)
}

fn entry(id: u32, flags: u32, pos: u64, inode_id: u32) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Memfd as i32,
        id,
        memfd: Some(pb::MemfdFileEntry {
            id,
            flags,
            pos,
            fown: Default::default(),
            inode_id,
        }),
        ..Default::default()
    }
}

impl FdKind for Memfd {
    const NAME: &'static str = "memfd";
    const TYPE: pb::FdTypes = pb::FdTypes::Memfd;
    type Error = MemfdError;

    fn claims(p: &FdProbe<'_>) -> bool {
        // An fd of shared anonymous memory (opened through /proc/PID/map_files, the mapping
        // maybe gone since) is a shmem inode as a memfd's: saved and restored as one, as
        // CRIU does (the real /dev/zero is a character device).
        p.link.starts_with("/memfd:")
            || (p.link == "/dev/zero (deleted)" && p.meta.is_some_and(|m| m.file_type().is_file()))
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, MemfdError> {
        let inode_id = save_inode(
            cx,
            fd.link,
            &format!("/proc/{}/fd/{}", fd.pid, fd.fd),
            |what, e| fd.err(what, e),
        )?;
        Ok(entry(id, fd.flags(), fd.info.pos, inode_id))
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, MemfdError> {
        let m = e.memfd.as_ref().ok_or_else(|| missing(e.id, "memfd"))?;
        let err = |what: &str| obj_err(e.id, format!("memfd: {what}"));
        let store = objs.kinds.get::<MemfdStore>();
        if store.inodes.is_none() {
            let all = objs
                .dir
                .read_opt::<pb::MemfdInodeEntry>("memfd.img", image::MEMFD_INODE)?
                .unwrap_or_default();
            store.inodes = Some(all.into_iter().map(|i| (low32(i.inode_id), i)).collect());
        }
        if !store.made.contains_key(&m.inode_id) {
            let ino = store
                .inodes
                .as_ref()
                .and_then(|all| all.get(&m.inode_id))
                .cloned()
                .ok_or_else(|| {
                    TaskError::BadImage(format!("memfd.img has no inode {}", m.inode_id))
                })?;
            let huge = ino.hugetlb_flag.unwrap_or(0);
            let fd = sysfd::memfd_create(
                &ino.name,
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | huge,
            )
            .map_err(err("memfd_create"))?;
            let f = File::from(fd);
            f.set_len(ino.size).map_err(err("ftruncate"))?;
            if huge & libc::MFD_HUGETLB != 0 {
                // hugetlbfs has no write(): the content goes through a shared mapping.
                super::shmem::load_content_mapped(&objs.dir, ino.inode_id, &f, ino.size)?;
            } else {
                super::shmem::load_content(&objs.dir, ino.inode_id, &f, ino.size)?;
            }
            if let Some(mode) = ino.mode {
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(err("fchmod"))?;
            }
            std::os::unix::fs::fchown(&f, Some(ino.uid), Some(ino.gid)).map_err(err("fchown"))?;
            if ino.seals != 0 {
                sysfd::add_seals(f.as_fd(), ino.seals).map_err(err("F_ADD_SEALS"))?;
            }
            store.made.insert(m.inode_id, (OwnedFd::from(f), false));
        }
        let (mfd, used) = store.made.get_mut(&m.inode_id).expect("made");
        let fd = if !*used {
            *used = true;
            mfd.try_clone().map_err(err("dup"))?
        } else {
            // Another open file description of the same memfd.
            sysfd::open(
                &format!("/proc/self/fd/{}", mfd.as_raw_fd()),
                (c_int(m.flags) & libc::O_ACCMODE) | libc::O_CLOEXEC,
            )
            .map_err(err("reopen through /proc/self/fd"))?
        };
        set_fl(fd.as_fd(), m.flags, e.id)?;
        if m.pos != 0 {
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(m.pos))
                .map_err(|e| err("lseek")(e.into()))?;
        }
        Ok(fd)
    }
}

/// Restore-side memfd inodes: saved records (loaded once) and the memfds made, with whether
/// their first description was handed out yet.
#[derive(Default)]
pub struct MemfdStore {
    inodes: Option<HashMap<u32, pb::MemfdInodeEntry>>,
    made: HashMap<u32, (OwnedFd, bool)>,
}
