//! Shared anonymous memory: `MAP_SHARED|MAP_ANONYMOUS` regions (a shmem inode the kernel
//! names "/dev/zero (deleted)"), usually inherited across fork, so several processes map the
//! same pages.
//!
//! Dump saves the content once per inode (the VMAs' `shmid`), from whichever task maps it
//! first, reading the inode through /proc/PID/map_files with `SEEK_DATA`/`SEEK_HOLE` so only
//! populated pages are written: `pagemap-shmem-SHMID.img` (offsets as `vaddr`) plus a pages
//! image of its own, as CRIU lays it out. Restore creates one shmem inode per shmid in cryo
//! (a shared anonymous mapping of cryo's, reopened through /proc/self/map_files), writes the
//! content into it, and each puppet maps that same inode: the processes share the memory
//! again, and the kernel still sees "/dev/zero (deleted)" shared mappings.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use super::error::{task_error_from, TaskError};
use super::memory::status;
use super::{DumpCx, RestoreCx, Syscalls, TaskImages};
use crate::image::{pb, ImageError};
use crate::num::{u64_of, usize_of};
use crate::procfs::{ProcError, Vma};
use crate::sys::mem::Mapping;
use crate::sys::PAGE_SIZE;

/// Why shared memory could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum ShmemError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("shared memory {shmid}: cannot {what}")]
    Object {
        shmid: u64,
        what: String,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(ShmemError);

fn obj(shmid: u64, what: &str) -> impl FnOnce(std::io::Error) -> ShmemError {
    let what = what.to_string();
    move |source| ShmemError::Object {
        shmid,
        what,
        source,
    }
}

/// The page size bits of mmap flags (`MAP_HUGE_MASK << MAP_HUGE_SHIFT`).
const HUGE_SIZE_BITS: u32 = 0x3f << 26;

/// Pages images of shared memory are numbered from here (task pages images are 1..=tasks).
const PAGES_ID_BASE: u32 = 1 << 20;

/// `pagemap_entry.flags`: page data is in the pages image.
const PE_PRESENT: u32 = 4;

fn image_name(shmid: u64) -> String {
    format!("pagemap-shmem-{shmid}.img")
}

/// Saves the shared anonymous region behind `v` (once per inode); returns its shmid.
pub fn dump_anon(cx: &mut DumpCx<'_>, v: &Vma) -> Result<u64, ShmemError> {
    let path = format!("/proc/{}/map_files/{:x}-{:x}", cx.pid, v.start, v.end);
    let read_err = |source| {
        ShmemError::from(ProcError::Read {
            path: path.clone().into(),
            source,
        })
    };
    let f = File::open(&path).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    let shmid = meta.ino();
    if cx.files.shmem_seen.insert(shmid) {
        save_content(cx, &f, std::path::Path::new(&path), meta.len(), shmid).map_err(read_err)?;
    }
    Ok(shmid)
}

/// Saves the populated pages of a shmem file (shared anonymous memory or a memfd) of
/// `size` bytes, opened at `path`, as `pagemap-shmem-SHMID.img` + a pages image of its own,
/// streamed from the file into the image (never held whole in cryo's memory).
pub fn save_content(
    cx: &mut DumpCx<'_>,
    f: &File,
    path: &std::path::Path,
    size: u64,
    shmid: u64,
) -> Result<(), std::io::Error> {
    let mut ranges = Vec::new();
    let mut off = 0u64;
    while off < size {
        use rustix::fs::{seek, SeekFrom};
        let Ok(start) = seek(f, SeekFrom::Data(off)) else {
            break; // ENXIO: no data after off
        };
        let end = seek(f, SeekFrom::Hole(start)).map_or(size, |e| e.min(size));
        let (s, e) = (
            start & !(PAGE_SIZE - 1),
            end.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        );
        ranges.push((s, e.min(size.div_ceil(PAGE_SIZE) * PAGE_SIZE)));
        off = end;
    }
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    cx.files.shmem_pages += 1;
    let pages_id = PAGES_ID_BASE + cx.files.shmem_pages;
    let entries: Vec<pb::PagemapEntry> = ranges
        .iter()
        .map(|&(s, e)| pb::PagemapEntry {
            vaddr: s,
            // Saturated: `nr_pages` holds the count (the u32 is for older readers).
            compat_nr_pages: u32::try_from((e - s) / PAGE_SIZE).unwrap_or(u32::MAX),
            in_parent: None,
            flags: Some(PE_PRESENT),
            nr_pages: Some((e - s) / PAGE_SIZE),
        })
        .collect();
    let io = |e: ImageError| std::io::Error::other(e.to_string());
    cx.dir
        .write_pagemap(&image_name(shmid), pages_id, &entries)
        .map_err(io)?;
    let spans: Vec<(u64, u64)> = ranges.iter().map(|&(s, e)| (s, e - s)).collect();
    let src = super::memory::ImageSource::file(f, path, &spans);
    let (out, name) = cx
        .dir
        .create_pages(&format!("pages-{pages_id}.img"))
        .map_err(io)?;
    let digest =
        super::memory::write_image(&src, cx.dir.compress(), &out, &cx.dir.file(&name), total)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    cx.dir.record(&name, digest);
    cx.stats.shpages_scanned = Some(cx.stats.shpages_scanned.unwrap_or(0) + size / PAGE_SIZE);
    cx.stats.shpages_written = Some(cx.stats.shpages_written.unwrap_or(0) + total / PAGE_SIZE);
    Ok(())
}

/// Writes the saved content of shmem object `shmid` (if any was saved) into `file`, which
/// is `size` bytes long.
pub fn load_content(
    dir: &crate::image::ImageDir,
    shmid: u64,
    file: &File,
    size: u64,
) -> Result<(), ShmemError> {
    load_with(dir, shmid, size, |off, data| file.write_all_at(data, off))
}

/// [`load_content`] through a shared mapping of `file` (hugetlbfs files have no `write`;
/// `size` is a whole number of their pages).
pub fn load_content_mapped(
    dir: &crate::image::ImageDir,
    shmid: u64,
    file: &File,
    size: u64,
) -> Result<(), ShmemError> {
    if size == 0 {
        return Ok(());
    }
    let fail = |what: &str| {
        let what = what.to_string();
        move |source| ShmemError::Object {
            shmid,
            what,
            source,
        }
    };
    let mut m = Mapping::file_rw(file, usize_of(size)).map_err(fail("map it"))?;
    load_with(dir, shmid, size, |off, data| {
        if off.saturating_add(data.len() as u64) > size {
            return Err(std::io::Error::other("saved pages lie past its end"));
        }
        m.write_at(usize_of(off), data);
        Ok(())
    })
}

/// Reads the saved content of shmem object `shmid` (`size` bytes), handing each run to
/// `put(offset, bytes)`.
fn load_with(
    dir: &crate::image::ImageDir,
    shmid: u64,
    size: u64,
    mut put: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<(), ShmemError> {
    let Some((pages_id, entries)) = dir.read_pagemap(&image_name(shmid))? else {
        return Ok(());
    };
    let pname = format!("pages-{pages_id}.img");
    // Raw, or compressed by `dump --compress` (decompressed here), as the dump wrote it.
    let (pages, _) = crate::image::pages::load(dir, &pname, 1)?.ok_or_else(|| {
        crate::image::pages::file_of(dir, &pname)
            .map_or_else(|e| e, |(path, _)| ImageError::Missing { path })
    })?;
    let map = pages;
    let pages = map.bytes();
    let mut off = 0u64;
    for e in entries {
        let len = e
            .nr_pages
            .unwrap_or(u64::from(e.compat_nr_pages))
            .saturating_mul(PAGE_SIZE);
        if e.vaddr.saturating_add(len) > size.div_ceil(PAGE_SIZE) * PAGE_SIZE {
            return Err(TaskError::BadImage(format!(
                "{}: pages at {:#x}+{len:#x} lie past the {size:#x} bytes of the object",
                image_name(shmid),
                e.vaddr
            ))
            .into());
        }
        let Some(buf) = usize::try_from(off)
            .ok()
            .and_then(|o| pages.get(o..o.checked_add(usize_of(len))?))
        else {
            return Err(ImageError::Truncated {
                path: dir.file(&pname),
                offset: pages.len(),
                what: "shared memory pages",
            }
            .into());
        };
        let keep = usize_of(size.saturating_sub(e.vaddr).min(len));
        // In 4 MiB steps, each dropped from cryo's page tables once written (it stays in
        // the page cache): cryo's RSS does not grow with the object.
        for (i, part) in buf[..keep].chunks(STEP).enumerate() {
            put(e.vaddr + u64_of(i * STEP), part).map_err(obj(shmid, "write the content"))?;
            map.release(usize_of(off) + i * STEP, part.len());
        }
        off += len;
    }
    Ok(())
}

/// The piece of saved content [`load_with`] hands over at a time.
const STEP: usize = 4 << 20;

/// Restore-side shmem inodes, one per shmid, made in cryo on first use.
#[derive(Default)]
pub struct ShmemStore {
    /// Size each inode needs: the furthest end any VMA maps.
    sizes: HashMap<u64, u64>,
    /// Inodes of huge pages (hugetlb): `MAP_HUGETLB` and the page size bits.
    huge: HashMap<u64, u32>,
    made: HashMap<u64, OwnedFd>,
}

impl ShmemStore {
    pub fn new(tasks: &[TaskImages]) -> Self {
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        let mut huge = HashMap::new();
        for v in tasks.iter().flat_map(|t| &t.mm.vmas) {
            if v.status & status::ANON_SHARED != 0 && v.status & status::SYSVIPC == 0 {
                // Bounds from the image: saturate (a size no memfd takes fails later).
                let end = v.pgoff.saturating_add(v.end.saturating_sub(v.start));
                let s = sizes.entry(v.shmid).or_default();
                *s = (*s).max(end);
                let hf = v.flags & (libc::MAP_HUGETLB as u32 | HUGE_SIZE_BITS);
                if hf & libc::MAP_HUGETLB as u32 != 0 {
                    huge.insert(v.shmid, hf);
                }
            }
        }
        ShmemStore {
            sizes,
            huge,
            made: HashMap::new(),
        }
    }

    /// cryo's fd of shmem inode `shmid`, created and filled on first use.
    pub fn get(&mut self, dir: &crate::image::ImageDir, shmid: u64) -> Result<i32, ShmemError> {
        if let Some(fd) = self.made.get(&shmid) {
            return Ok(fd.as_raw_fd());
        }
        let size = *self
            .sizes
            .get(&shmid)
            .ok_or_else(|| TaskError::BadImage(format!("no mapping uses shared memory {shmid}")))?;
        let err = |what: &str| obj(shmid, what);
        let fd = if let Some(&hf) = self.huge.get(&shmid) {
            // Huge pages cannot be written through the file: filled through cryo's own
            // mapping of them.
            let mut m = Mapping::anon_shared_huge(usize_of(size), hf.cast_signed())
                .map_err(err("mmap huge pages"))?;
            let bytes = m.bytes_mut();
            load_with(dir, shmid, size, |off, data| {
                bytes[usize_of(off)..usize_of(off) + data.len()].copy_from_slice(data);
                Ok(())
            })?;
            let path = format!("/proc/self/map_files/{:x}-{:x}", m.addr(), m.addr() + size);
            crate::sys::fd::open(&path, libc::O_RDWR | libc::O_CLOEXEC)
                .map_err(err("reopen through map_files"))?
        } else {
            let m = Mapping::anon_shared(usize_of(size)).map_err(err("mmap"))?;
            let path = format!("/proc/self/map_files/{:x}-{:x}", m.addr(), m.addr() + size);
            let fd = crate::sys::fd::open(&path, libc::O_RDWR | libc::O_CLOEXEC)
                .map_err(err("reopen through map_files"))?;
            drop(m);
            let file = File::from(fd);
            load_content(dir, shmid, &file, size)?;
            OwnedFd::from(file)
        };
        let raw = fd.as_raw_fd();
        self.made.insert(shmid, fd);
        Ok(raw)
    }
}

/// Maps shared anonymous VMA `v` in the puppet from cryo's inode (no pages to fill after).
pub fn map_anon(cx: &mut RestoreCx<'_>, v: &pb::VmaEntry, prot: u32) -> Result<(), ShmemError> {
    let local = {
        let mut objs = cx.objs.borrow_mut();
        let objs = &mut *objs;
        objs.shmem.get(&objs.dir, v.shmid)?
    };
    let fd = cx.take_from_cryo(local)?;
    // Flags and protection are the kernel's int bits, saved as u32.
    let flags = (v.flags.cast_signed() & !libc::MAP_ANONYMOUS) | libc::MAP_FIXED;
    let r = cx.named("mmap (shared memory)").mmap(
        v.start,
        v.end - v.start,
        prot.cast_signed(),
        flags,
        Some(fd),
        v.pgoff,
    );
    cx.close(fd)?;
    if r? != v.start {
        return Err(TaskError::BadImage(format!(
            "shared mapping {:#x}-{:#x} landed elsewhere",
            v.start, v.end
        ))
        .into());
    }
    Ok(())
}
