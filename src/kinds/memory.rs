//! Address space: VMAs (mm-PID.img), mm boundaries and auxv, and page contents
//! (pagemap-PID.img + pages-N.img).
//!
//! Dump finds populated pages with the `PAGEMAP_SCAN` ioctl (present or swapped, not the zero
//! page, not clean file pages), then copies them with `process_vm_readv` (or /proc/PID/mem for
//! unreadable mappings) straight into 4 MiB blocks of the pages image, one worker thread per
//! CPU, hashing each block for the manifest as it goes.
//!
//! Restore maps every VMA at its address in the puppet (remote `mmap`), maps a fresh vDSO at
//! the dumped address, fills pages from a read-only mapping of the pages image (anonymous
//! private VMAs with `UFFDIO_COPY` through the puppet's userfaultfd, the rest with the
//! puppet's `preadv` plus `process_vm_writev`; one worker per CPU), then sets final
//! protections, madvise bits and the mm fields (`PR_SET_MM_MAP`).

use super::error::{task_error_from, TaskError, Unsupported};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{DumpCx, Kind, RestoreCx, Syscalls, TaskImages};
use crate::image::manifest::{FileDigest, BLOCK};
use crate::image::pb;
use crate::num::{c_uint, micros_u32, u64_of, usize_of};
use crate::procfs::Vma;
use crate::sys::mem::{self, Mapping};
use crate::sys::remote::{arg, Batch};
use crate::sys::PAGE_SIZE;
use twox_hash::XxHash3_128;

/// Why memory could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The userfaultfd cryo fills the puppet's memory through.
    #[error("userfaultfd operation failed at {addr:#x}")]
    Uffd {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Shmem(#[from] super::shmem::ShmemError),
    #[error(transparent)]
    Memfd(#[from] super::memfd::MemfdError),
    #[error(transparent)]
    Ghost(#[from] super::ghost::GhostError),
    #[error(transparent)]
    Files(#[from] super::files::FilesError),
    /// A bug: a thread compressing pages panicked. The dump stops (the tree runs on).
    #[error("{path}: a thread compressing the pages panicked ({what}); the dump stopped, the process runs on: please report this")]
    WorkerPanicked {
        path: std::path::PathBuf,
        what: String,
    },
}
task_error_from!(MemoryError);

impl MemoryError {
    /// The copy of pages was stopped by termination signal `sig`.
    fn interrupted(sig: i32) -> MemoryError {
        TaskError::Fault(crate::fault::Fault::Interrupted {
            sig,
            stage: "memory".into(),
        })
        .into()
    }
}

/// `vma_entry.status` bits (CRIU's VMA_AREA_* / VMA_* values).
pub mod status {
    pub const REGULAR: u32 = 1 << 0;
    pub const STACK: u32 = 1 << 1;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const HEAP: u32 = 1 << 5;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const ANON_PRIVATE: u32 = 1 << 9;
    /// An attachment of a SysV shared memory segment (`shmat`); `shmid` is its id.
    pub const SYSVIPC: u32 = 1 << 10;
    /// A mapping of a packet socket's rings; `shmid` is the socket's file id (its rings are
    /// made again with the socket, the mapping of the new socket without saved contents).
    pub const SOCKET: u32 = 1 << 11;
    pub const VVAR: u32 = 1 << 12;
    /// An AIO ring (`io_setup`), made again by `kinds::aio`.
    pub const AIORING: u32 = 1 << 13;
    pub const MEMFD: u32 = 1 << 14;
    /// Not a mapping: a range of guard pages (`MADV_GUARD_INSTALL`) inside the mappings,
    /// recorded after every real VMA of mm-PID.img (CRIU's `VMA_AREA_GUARD`).
    pub const GUARD: u32 = 1 << 16;
}

/// `MADV_GUARD_INSTALL` (Linux 6.13).
const MADV_GUARD_INSTALL: i32 = 102;

/// Most auxv words CRIU accepts in `mm_saved_auxv` (its AT_VECTOR_SIZE on x86_64).
const CRIU_AUXV_WORDS: usize = 44;

/// `pagemap_entry.flags`: page data is in the pages image, or in the parent's.
const PE_PRESENT: u32 = crate::memtrack::PE_PRESENT;
const PE_PARENT: u32 = crate::memtrack::PE_PARENT;
const PE_LAZY: u32 = crate::memtrack::PE_LAZY;

/// smaps VmFlags that are madvise() state, with their MADV_* numbers.
const MADV_FLAGS: &[(&str, u32)] = &[
    ("sr", libc::MADV_SEQUENTIAL as u32),
    ("rr", libc::MADV_RANDOM as u32),
    ("dc", libc::MADV_DONTFORK as u32),
    ("hg", libc::MADV_HUGEPAGE as u32),
    ("nh", libc::MADV_NOHUGEPAGE as u32),
    ("mg", libc::MADV_MERGEABLE as u32),
    ("dd", libc::MADV_DONTDUMP as u32),
    ("wf", 18), // MADV_WIPEONFORK
];

/// The address space of a process.
pub struct Memory;

/// `MAP_DROPPABLE` (Linux 6.11): private anonymous memory the kernel may drop under pressure.
const MAP_DROPPABLE: u32 = 0x08;

/// `MAP_HUGETLB` plus the page size (log2, at `MAP_HUGE_SHIFT`), as CRIU saves it.
pub fn hugetlb_flags(page_size: u64) -> u32 {
    const MAP_HUGE_SHIFT: u32 = 26;
    let bits = if page_size.is_power_of_two() {
        page_size.trailing_zeros() << MAP_HUGE_SHIFT
    } else {
        0 // the default huge page size
    };
    libc::MAP_HUGETLB as u32 | bits
}

/// Below this many bytes of pages, restore fills from cryo's thread alone (no workers).
const SMALL_FILL: u64 = 1 << 20;

/// Parallel workers for page copies (one per CPU, at most 4).
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn classify(cx: &mut DumpCx<'_>, v: &Vma) -> Result<(u32, u32, u64, Option<u32>), MemoryError> {
    // Returns (status, mmap flags, shmid, fdflags).
    let unsupported = |what: &str, hint: &str| {
        Unsupported::of(
            cx.pid,
            format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
            what,
            hint,
        )
    };
    let mut flags = c_uint(if v.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    });
    if v.has_flag("gd") {
        flags |= c_uint(libc::MAP_GROWSDOWN);
    }
    if v.has_flag("nr") {
        flags |= c_uint(libc::MAP_NORESERVE);
    }
    // mlock()ed or MAP_LOCKED: restore maps it unlocked, fills it, then locks it.
    if v.has_flag("lo") {
        flags |= libc::MAP_LOCKED as u32;
    }
    // MAP_DROPPABLE (Linux 6.11) is a mapping type of its own, not MAP_PRIVATE.
    if v.has_flag("dp") && !v.shared {
        flags = (flags & !(libc::MAP_PRIVATE as u32)) | MAP_DROPPABLE;
    }
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    // A hugetlb memfd is mapped as any memfd (its file brings the huge pages back).
    // An attached SysV hugetlb segment goes the SysV way below (shmat of the segment its IPC
    // namespace brings back on huge pages).
    if v.has_flag("ht") && !v.name.starts_with("/memfd:") && !v.name.starts_with("/SYSV") {
        // Anonymous hugetlb memory (MAP_HUGETLB): mapped again with the same page size; a
        // shared one is saved once per inode like shared memory, a private one's pages
        // like any private memory. Files of a hugetlbfs mount are not.
        if !v.name.starts_with("/anon_hugepage") {
            return Err(unsupported(
                "a mapping of a hugetlbfs file is not supported yet",
                "use anonymous huge pages (MAP_HUGETLB), or unmap it before the dump",
            )
            .into());
        }
        let huge = hugetlb_flags(v.page_size);
        return Ok(if v.shared {
            let shmid = super::shmem::dump_anon(cx, v)?;
            (
                status::REGULAR | status::ANON_SHARED,
                flags | libc::MAP_ANONYMOUS as u32 | huge,
                shmid,
                None,
            )
        } else {
            (
                status::REGULAR | status::ANON_PRIVATE,
                flags | libc::MAP_ANONYMOUS as u32 | huge,
                0,
                None,
            )
        });
    }
    if super::aio::is_ring(v) {
        // As CRIU records it: only the marker, and MAP_SHARED.
        return Ok((status::AIORING, libc::MAP_SHARED as u32, 0, None));
    }
    Ok(match v.name.as_str() {
        // Kernel-provided mappings are recorded as CRIU does: anonymous private areas with a
        // marker bit (restore maps a fresh vDSO instead of their content).
        "[vsyscall]" => (status::VSYSCALL | status::ANON_PRIVATE, anon, 0, None),
        "[vvar]" | "[vvar_vclock]" => (
            status::REGULAR | status::VVAR | status::ANON_PRIVATE,
            anon,
            0,
            None,
        ),
        "[vdso]" => (
            status::REGULAR | status::VDSO | status::ANON_PRIVATE,
            anon,
            0,
            None,
        ),
        // An attached SysV segment (its inode number is its id): its content is saved with
        // its IPC namespace, the attachment is made again with shmat, as CRIU does.
        _ if v.name.starts_with("/SYSV") => {
            if !v.shared {
                return Err(unsupported(
                    "a private mapping of a System V shared memory segment",
                    "attach the segment with shmat (a shared mapping)",
                )
                .into());
            }
            (
                status::REGULAR | status::ANON_SHARED | status::SYSVIPC,
                flags | libc::MAP_ANONYMOUS as u32,
                v.inode,
                None,
            )
        }
        _ if v.shared && (!v.is_file() || v.name == "/dev/zero (deleted)") => {
            let shmid = super::shmem::dump_anon(cx, v)?;
            (
                status::REGULAR | status::ANON_SHARED,
                flags | libc::MAP_ANONYMOUS as u32,
                shmid,
                None,
            )
        }
        // A private mapping of shared anonymous memory (mmap of its /proc/PID/map_files
        // entry): the same shmem inode, mapped privately. Pages it has not written show the
        // shared pages, so it is mapped from the restored inode, and the pages it wrote are
        // saved as its own.
        _ if !v.shared && v.name == "/dev/zero (deleted)" => {
            let shmid = super::shmem::dump_anon(cx, v)?;
            (
                status::REGULAR | status::ANON_SHARED | status::FILE_PRIVATE,
                flags | libc::MAP_ANONYMOUS as u32,
                shmid,
                None,
            )
        }
        // A packet socket's rings (the name is the socket's, "socket:[INO]"): as CRIU, the
        // mapping names the socket's file record, which the process's fds saved already.
        _ if v.is_file() && v.name.starts_with("socket:[") => (
            status::REGULAR | status::SOCKET,
            flags,
            u64::from(socket_file(cx, v).map_err(|(what, hint)| unsupported(what, hint))?),
            None,
        ),
        _ if v.is_file() => {
            // The open mode the mapping needs: read-write only for a writable shared one.
            // VM_MAYWRITE ("mw") on a shared mapping means the file was opened for writing,
            // so the program may mprotect it writable later even if it is read-only now.
            let fdflags = c_uint(if v.shared && v.has_flag("mw") {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            });
            if v.name.starts_with("/memfd:") {
                let id = super::memfd::dump_mapping(cx, v, fdflags)?;
                let kind = if v.shared {
                    status::FILE_SHARED
                } else {
                    status::FILE_PRIVATE
                };
                return Ok((
                    status::REGULAR | kind | status::MEMFD,
                    flags,
                    u64::from(id),
                    Some(fdflags),
                ));
            }
            let meta = std::fs::metadata(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                cx.pid, v.start, v.end
            ))
            .map_err(|source| {
                TaskError::Proc(crate::procfs::ProcError::Read {
                    path: format!("/proc/{}/map_files/{:x}-{:x}", cx.pid, v.start, v.end).into(),
                    source,
                })
            })?;
            use std::os::unix::fs::MetadataExt;
            let id = match v.name.strip_suffix(" (deleted)") {
                // A deleted file: its content is saved as a ghost file.
                Some(name) => {
                    let id = cx.files.add_reg(
                        name.to_string(),
                        libc::O_RDONLY as u32,
                        0,
                        Some(meta.size()),
                        meta.mode(),
                    );
                    super::ghost::dump(
                        cx.files,
                        cx.pid,
                        &format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
                        &format!("/proc/{}/map_files/{:x}-{:x}", cx.pid, v.start, v.end),
                        &meta,
                        id,
                    )?;
                    id
                }
                None => cx
                    .files
                    .reg_for_path(&v.name, Some(meta.size()), meta.mode()),
            };
            let st = if v.shared {
                status::REGULAR | status::FILE_SHARED
            } else {
                status::REGULAR | status::FILE_PRIVATE
            };
            (st, flags, u64::from(id), Some(fdflags))
        }
        "[heap]" => (
            status::REGULAR | status::HEAP | status::ANON_PRIVATE,
            flags | libc::MAP_ANONYMOUS as u32,
            0,
            None,
        ),
        "[stack]" => (
            status::REGULAR | status::ANON_PRIVATE,
            flags | libc::MAP_ANONYMOUS as u32,
            0,
            None,
        ),
        _ => (
            status::REGULAR | status::ANON_PRIVATE,
            flags | libc::MAP_ANONYMOUS as u32,
            0,
            None,
        ),
    })
}

/// The file id of the packet socket mapping `v` maps: one of the process's fds on it
/// (saved before its memory), else any fd of the tree on it. Err: (what, hint).
fn socket_file(cx: &DumpCx<'_>, v: &Vma) -> Result<u32, (&'static str, &'static str)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!(
        "/proc/{}/map_files/{:x}-{:x}",
        cx.pid, v.start, v.end
    ))
    .map_err(|_| {
        (
            "its socket cannot be looked at (/proc/PID/map_files)",
            "unmap it before the dump",
        )
    })?;
    let fds = cx
        .files
        .fds_by_inode
        .get(&Some((meta.dev(), meta.ino())))
        .filter(|l| !l.is_empty())
        .ok_or((
            "a mapping of a socket no fd of the tree has open",
            "keep the socket open while it is mapped, or unmap it before the dump",
        ))?;
    let id = fds
        .iter()
        .find(|(pid, _, _)| *pid == cx.pid)
        .unwrap_or(&fds[0])
        .2;
    let packet = cx
        .files
        .entries
        .iter()
        .any(|e| e.id == id && e.r#type == pb::FdTypes::Packetsk as i32);
    if !packet {
        return Err((
            "a mapping of a socket that is not a packet socket's rings",
            "unmap it before the dump",
        ));
    }
    Ok(id)
}

/// One run of pages in the pages image.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub vaddr: u64,
    pub pages: u64,
    /// Offset of the run in the pages image.
    pub off: u64,
    /// The VMA lacks PROT_READ: read through /proc/PID/mem instead of process_vm_readv.
    pub via_mem: bool,
}

impl Kind for Memory {
    const NAME: &'static str = "memory";
    type Error = MemoryError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), MemoryError> {
        let t0 = Instant::now();
        let pid = cx.pid;
        let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| {
            TaskError::Proc(crate::procfs::ProcError::Read {
                path: format!("/proc/{pid}/pagemap").into(),
                source,
            })
        })?;
        let st = &cx.stat;
        img.mm.mm_start_code = st.start_code;
        img.mm.mm_end_code = st.end_code;
        img.mm.mm_start_data = st.start_data;
        img.mm.mm_end_data = st.end_data;
        img.mm.mm_start_stack = st.start_stack;
        img.mm.mm_start_brk = st.start_brk;
        img.mm.mm_arg_start = st.arg_start;
        img.mm.mm_arg_end = st.arg_end;
        img.mm.mm_env_start = st.env_start;
        img.mm.mm_env_end = st.env_end;
        let auxv = crate::procfs::auxv(pid)?;
        img.mm.mm_saved_auxv = auxv.iter().copied().take(CRIU_AUXV_WORDS).collect();
        img.mm.cryo_saved_auxv = auxv;
        let mut runs: Vec<Run> = Vec::new();
        let mut parents: Vec<(u64, u64)> = Vec::new();
        let mut off = 0u64;
        let mut zero_pages = 0u64;
        let vmas = cx.vmas.clone();
        for v in &vmas {
            let (st, flags, shmid, fdflags) = classify(cx, v)?;
            let mut madv = 0u64;
            for (f, bit) in MADV_FLAGS {
                if v.has_flag(f) {
                    madv |= 1 << bit;
                }
            }
            let prot = c_uint(
                (if v.read { libc::PROT_READ } else { 0 })
                    | (if v.write { libc::PROT_WRITE } else { 0 })
                    | (if v.exec { libc::PROT_EXEC } else { 0 }),
            );
            img.mm.vmas.push(pb::VmaEntry {
                start: v.start,
                end: v.end,
                pgoff: v.pgoff,
                shmid,
                prot,
                flags,
                status: st,
                fd: -1,
                madv: (madv != 0).then_some(madv),
                fdflags,
            });
            let special = st & (status::VSYSCALL | status::VVAR | status::VDSO) != 0;
            // The kernel may drop MAP_DROPPABLE pages at any time: like CRIU, they are not
            // saved, and come back as zero pages.
            let droppable = flags & MAP_DROPPABLE != 0;
            let private_mem =
                !special && !droppable && st & (status::ANON_PRIVATE | status::FILE_PRIVATE) != 0;
            if st & status::AIORING != 0 {
                // The whole ring (the kernel writes it; no page of it is "dirty" to track).
                let e = super::aio::ring_entry(v).ok_or_else(|| {
                    Unsupported::of(
                        pid,
                        format!("mapping {:#x}-{:#x} {}", v.start, v.end, v.name),
                        "an AIO ring that is not a whole number of pages",
                        "unmap it before the dump",
                    )
                })?;
                img.mm.aios.push(e);
            }
            if st & (status::VDSO | status::AIORING) != 0 {
                // CRIU's restorer reads the dumped vDSO to compare it with the running one;
                // cryo maps a fresh vDSO and skips this content.
                let pages = v.len() / PAGE_SIZE;
                runs.push(Run {
                    vaddr: v.start,
                    pages,
                    off,
                    via_mem: true,
                });
                off += v.len();
                continue;
            }
            if !private_mem {
                continue;
            }
            let (mut ranges, parent) = scan_private(cx, &pagemap, v)?;
            // Pages of anonymous memory that hold only zeros are left out (not in the
            // pagemap, they come back as never-touched pages: zeros). Not with a tracking
            // chain (a page left out would count as "in the parent" next time), not in a
            // file mapping (a page left out reads the file) nor in hugetlb memory (restored
            // by whole huge pages).
            if cx.chain.is_none()
                && st & status::ANON_PRIVATE != 0
                && v.read
                && flags & libc::MAP_HUGETLB as u32 == 0
            {
                let before: u64 = ranges.iter().map(|(s, e)| e - s).sum();
                ranges = drop_zero_pages(pid, ranges);
                zero_pages += (before - ranges.iter().map(|(s, e)| e - s).sum::<u64>()) / PAGE_SIZE;
            }
            parents.extend(parent);
            for (s, e) in ranges {
                let pages = (e - s) / PAGE_SIZE;
                runs.push(Run {
                    vaddr: s,
                    pages,
                    off,
                    via_mem: !v.read,
                });
                off += pages * PAGE_SIZE;
            }
        }
        // One entry for [vvar] + [vvar_vclock], as CRIU records them.
        img.mm.vmas.dedup_by(|b, a| {
            let vvar = |v: &pb::VmaEntry| v.status & status::VVAR != 0;
            if vvar(a) && vvar(b) && a.end == b.start {
                a.end = b.end;
                true
            } else {
                false
            }
        });
        if zero_pages > 0 {
            tracing::info!(
                pid,
                pages = zero_pages,
                "memory: zero-filled pages left out"
            );
        }
        cx.stats.pages_scanned += (cx.vmas.iter().map(|v| v.len()).sum::<u64>()) / PAGE_SIZE;
        if img.pages_id == 0 {
            img.pages_id = 1;
        }
        img.pagemap = pagemap_entries(&runs, &parents);
        cx.stats.pages_skipped_parent += parents
            .iter()
            .map(|(s, e)| (e - s) / PAGE_SIZE)
            .sum::<u64>();
        crate::fault::point("memory")?;
        if let Some((store, vpid)) = cx.lazy.as_mut() {
            // `dump --lazy-pages`: the pages of lazy mappings are kept for the daemon and
            // marked `PE_LAZY` (no data here); the rest are written as usual.
            let (mut kept, mut lazy_at, mut at) = (Vec::new(), Vec::new(), 0u64);
            for r in &runs {
                let vi = img.mm.vmas.partition_point(|v| v.end <= r.vaddr);
                let len = r.pages * PAGE_SIZE;
                if img
                    .mm
                    .vmas
                    .get(vi)
                    .is_some_and(|v| v.start <= r.vaddr && lazy_vma(v))
                {
                    let mut data = vec![0u8; usize_of(len)];
                    mem::vm_read(pid, &mut data, &[(r.vaddr, usize_of(len))]).map_err(
                        |source| TaskError::Memory {
                            pid,
                            addr: r.vaddr,
                            what: "reading pages",
                            source,
                        },
                    )?;
                    store.add(*vpid, r.vaddr, data);
                    lazy_at.push(r.vaddr);
                } else {
                    kept.push(Run { off: at, ..*r });
                    at += len;
                }
            }
            for e in &mut img.pagemap {
                if lazy_at.binary_search(&e.vaddr).is_ok() {
                    e.flags = Some(PE_LAZY);
                }
            }
            runs = kept;
            off = at;
        }
        if let Some((ps, vpid)) = cx.page_server.as_mut() {
            // The pages go to the page server; no pagemap or pages image here (CRIU's way).
            send_pages(ps, pid, *vpid, &img.pagemap, &runs, false)?;
            img.pages_remote = true;
        } else {
            let name = format!("pages-{}.img", img.pages_id);
            write_pages(cx, &name, &runs, off)?;
        }
        cx.stats.pages_written += off / PAGE_SIZE;
        // Guard regions: no page or mapping of their own, found by PAGEMAP_SCAN; they are
        // recorded last (after the uses of the real VMAs above).
        // Over the user address space only ([vsyscall] lies above it: EFAULT).
        let user = |v: &&Vma| v.name != "[vsyscall]";
        let end = vmas.iter().filter(user).map(|v| v.end).max();
        if let (Some(first), Some(end)) = (vmas.iter().find(user), end) {
            let mut guards = Vec::new();
            match mem::pagemap_scan(
                &pagemap,
                first.start,
                end,
                0,
                mem::page_is::GUARD,
                0,
                &mut guards,
            ) {
                Ok(()) => {}
                // A kernel that does not know the category has no guard pages to report.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => guards.clear(),
                Err(source) => {
                    return Err(TaskError::Memory {
                        pid,
                        addr: first.start,
                        what: "finding guard pages (PAGEMAP_SCAN)",
                        source,
                    }
                    .into())
                }
            }
            img.mm
                .vmas
                .extend(guards.into_iter().map(|(start, end)| pb::VmaEntry {
                    start,
                    end,
                    status: status::GUARD,
                    fd: -1,
                    ..Default::default()
                }));
        }
        cx.stats.memdump_time += micros_u32(t0.elapsed());
        cx.stats.memwrite_time = cx.stats.memdump_time;
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), MemoryError> {
        map_vdso(cx, img)?;
        // Which VMAs receive page data (they must be writable while we fill them).
        let mut has_pages = vec![false; img.mm.vmas.len()];
        {
            let mut vi = 0;
            for p in &img.pagemap {
                while vi < img.mm.vmas.len() && img.mm.vmas[vi].end <= p.vaddr {
                    vi += 1;
                }
                let Some(v) = img.mm.vmas.get(vi) else {
                    return Err(TaskError::BadImage(format!(
                        "pagemap-{}.img: pages at {:#x} lie outside every mapping",
                        img.pid, p.vaddr
                    ))
                    .into());
                };
                if p.vaddr < v.start || run_end(p).is_none() {
                    return Err(TaskError::BadImage(format!(
                        "pagemap-{}.img: pages at {:#x} lie outside every mapping",
                        img.pid, p.vaddr
                    ))
                    .into());
                }
                has_pages[vi] = v.status & (status::VDSO | status::VVAR | status::VSYSCALL) == 0;
            }
        }
        // Mappings whose pages `cryo receive` staged: moved from the stage, not copied.
        let staged = cx
            .stage
            .map(|st| stage_plan(cx, st, img))
            .unwrap_or_default();
        // Calls that need nothing back run in batches (one stop each); a mapping that needs an
        // fd opened first, or cryo's shared memory, runs the batch so far before it.
        let mut b = Batch::new();
        let mut anon: Vec<(usize, &pb::VmaEntry)> = Vec::new();
        let run = |cx: &mut RestoreCx<'_>,
                   b: &mut Batch,
                   anon: &mut Vec<(usize, &pb::VmaEntry)>|
         -> Result<(), MemoryError> {
            let got = cx.batch(b)?;
            for (i, v) in anon.drain(..) {
                check_addr(got[i], v)?;
            }
            b.calls.clear();
            Ok(())
        };
        for (v, fill) in img.mm.vmas.iter().zip(&has_pages) {
            if v.status & (status::VSYSCALL | status::VVAR | status::VDSO) != 0 {
                continue;
            }
            let prot = if *fill {
                v.prot | libc::PROT_WRITE as u32
            } else {
                v.prot
            };
            // Flags and protection are the kernel's int bits, saved as u32. A locked mapping
            // is locked once filled (MAP_LOCKED would fault it all in now).
            let flags = (v.flags.cast_signed() & !libc::MAP_LOCKED) | libc::MAP_FIXED;
            if cx.cow.contains(&(v.start, v.end)) {
                // Kept from the parent: already mapped, with the parent's pages.
                if prot != v.prot {
                    b.mprotect(v.start, v.end - v.start, prot.cast_signed())?;
                }
                // Pages this process did not have go back to zero.
                let mut at = v.start;
                // Every run's end was checked above.
                let runs = img
                    .pagemap
                    .iter()
                    .map(|p| (p.vaddr, run_end(p).unwrap_or(u64::MAX)));
                for (s, e) in runs
                    .filter(|&(s, e)| e > v.start && s < v.end)
                    .chain([(v.end, v.end)])
                {
                    if s > at {
                        b.named("madvise(MADV_DONTNEED)").madvise(
                            at,
                            s - at,
                            libc::MADV_DONTNEED,
                        )?;
                    }
                    at = at.max(e);
                }
            } else if v.status & status::SYSVIPC != 0 {
                attach_sysv(cx, img, v)?;
            } else if v.status & status::AIORING != 0 {
                // An area for the saved ring, replaced by a new ring once filled.
                anon.push((b.len(), v));
                b.mmap(
                    v.start,
                    v.end - v.start,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    None,
                    0,
                )?;
            } else if v.status & status::SOCKET != 0 {
                // The packet socket restored with the process's fds, rings set: mapped again.
                let id = u32::try_from(v.shmid).map_err(|_| {
                    TaskError::BadImage(format!(
                        "mm-{}.img: mapping {:#x} names socket {}",
                        img.pid, v.start, v.shmid
                    ))
                })?;
                run(cx, &mut b, &mut anon)?;
                let fd = super::files::open_socket(cx, id)?;
                let r = cx.mmap(
                    v.start,
                    v.end - v.start,
                    prot.cast_signed(),
                    flags,
                    Some(fd),
                    v.pgoff,
                );
                cx.close(fd)?;
                check_addr(r?, v)?;
            } else if v.status & status::ANON_SHARED != 0 {
                run(cx, &mut b, &mut anon)?;
                super::shmem::map_anon(cx, v, prot)?;
            } else if v.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0 {
                // A file mapping's `shmid` is the id of its file record.
                let id = u32::try_from(v.shmid).map_err(|_| {
                    TaskError::BadImage(format!(
                        "mm-{}.img: mapping {:#x} names file {}",
                        img.pid, v.start, v.shmid
                    ))
                })?;
                run(cx, &mut b, &mut anon)?;
                let fdflags = v.fdflags.unwrap_or(libc::O_RDONLY as u32);
                let fd = match super::files::open_file(cx, id, fdflags) {
                    Ok(fd) => fd,
                    // Not in its namespace (left on the root it pivoted away from).
                    Err(super::files::FilesError::Task(err)) if unreachable_path(&err) => {
                        let name = cx.reg(id)?.name.clone();
                        let flags = super::ghost::reopen_flags(fdflags);
                        match super::files::open_in_root_ns(cx, img.ids.mnt_ns_id, &name, flags)? {
                            Some(fd) => fd,
                            None => return Err(err.into()),
                        }
                    }
                    Err(err) => return Err(err.into()),
                };
                let r = cx.mmap(
                    v.start,
                    v.end - v.start,
                    prot.cast_signed(),
                    flags,
                    Some(fd),
                    v.pgoff,
                );
                cx.close(fd)?;
                check_addr(r?, v)?;
            } else if let Some(m) = staged.iter().find(|m| m.start == v.start) {
                // The staged pages, moved into place (the mapping is the stage's, read-write,
                // until its protection is set below).
                anon.push((b.len(), v));
                b.mremap(
                    m.from,
                    v.end - v.start,
                    v.end - v.start,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    v.start,
                )?;
            } else {
                anon.push((b.len(), v));
                b.mmap(v.start, v.end - v.start, prot.cast_signed(), flags, None, 0)?;
            }
        }
        if let Some(st) = cx.stage {
            // Staged pages the process no longer has go back to zero; the rest of its stage
            // goes (the other processes' stays for the children, see `shape`), and once
            // the root's pages are in, cryo's copy of the whole stage (the root puppet
            // holds it now).
            for m in &staged {
                for &(s, e) in &m.stale {
                    b.named("madvise(MADV_DONTNEED)")
                        .madvise(s, e - s, libc::MADV_DONTNEED)?;
                }
            }
            for (_, at) in st.windows_of(img.pid) {
                b.munmap(at, crate::stage::WINDOW)?;
            }
            run(cx, &mut b, &mut anon)?;
            if img.pid == st.root() {
                st.release();
            }
            let moved: u64 = staged.iter().map(|m| m.end - m.start).sum();
            if !staged.is_empty() {
                tracing::info!(
                    pid = cx.pid,
                    vpid = img.pid,
                    mappings = staged.len(),
                    mib = moved >> 20,
                    "memory: staged mappings moved into place"
                );
            }
        }
        run(cx, &mut b, &mut anon)?;
        tracing::info!(
            pid = cx.pid,
            mappings = img.mm.vmas.len(),
            "memory: mappings created"
        );
        let skip: Vec<(u64, u64)> = staged.iter().map(|m| (m.start, m.end)).collect();
        fill_pages(cx, img, &skip)?;
        tracing::info!(pid = cx.pid, "memory: pages written");
        super::aio::restore(cx, img)?;
        let mut b = Batch::new();
        for (v, fill) in img.mm.vmas.iter().zip(&has_pages) {
            let moved = skip.binary_search(&(v.start, v.end)).is_ok();
            let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
            if (*fill && v.prot & libc::PROT_WRITE as u32 == 0) || (moved && v.prot != rw) {
                b.mprotect(v.start, v.end - v.start, v.prot.cast_signed())?;
            }
            if let Some(madv) = v.madv {
                for advice in 0..64 {
                    if madv & (1u64 << advice) != 0 {
                        b.madvise(v.start, v.end - v.start, advice)?;
                    }
                }
            }
            if v.flags & libc::MAP_LOCKED as u32 != 0
                && v.status & (status::VSYSCALL | status::VVAR | status::VDSO) == 0
            {
                b.mlock(v.start, v.end - v.start)?;
            }
        }
        // Guard regions go back last, over the filled pages (installing one drops what is
        // there).
        for &(start, end) in &img.guards {
            b.named("madvise(MADV_GUARD_INSTALL)").madvise(
                start,
                end - start,
                MADV_GUARD_INSTALL,
            )?;
        }
        set_mm_map(cx, img, b)
    }
}

/// Address ranges `[start, end)`.
type Ranges = Vec<(u64, u64)>;

/// Takes the guard-region records ([`status::GUARD`]) out of `mm`'s VMAs, leaving the real
/// mappings (sorted, as everything else expects them); returns their ranges. A range that is
/// not page-aligned or not inside the saved mappings (which the dump never writes) is a bad
/// image: it would put guard pages where the program never had them.
pub fn split_guards(mm: &mut pb::MmEntry) -> Result<Ranges, TaskError> {
    let (guards, vmas): (Vec<_>, Vec<_>) = std::mem::take(&mut mm.vmas)
        .into_iter()
        .partition(|v| v.status & status::GUARD != 0);
    mm.vmas = vmas;
    let page = 4096u64;
    guards
        .into_iter()
        .map(|g| {
            let (start, end) = (g.start, g.end);
            let covered = start < end
                && start % page == 0
                && end % page == 0
                && covered_by_vmas(&mm.vmas, start, end);
            if covered {
                Ok((start, end))
            } else {
                Err(TaskError::BadImage(format!(
                    "guard pages {start:#x}-{end:#x} are not whole pages inside the saved \
                     mappings"
                )))
            }
        })
        .collect()
}

/// Whether `[start, end)` lies inside VMAs of `vmas` that follow one another without a gap.
fn covered_by_vmas(vmas: &[pb::VmaEntry], start: u64, end: u64) -> bool {
    let mut at = start;
    while at < end {
        match vmas.iter().find(|v| v.start <= at && at < v.end) {
            Some(v) => at = v.end,
            None => return false,
        }
    }
    true
}

/// The pages of a private VMA to save: (copied, in the parent). Without a parent every present
/// page is copied; with one, `memtrack::Chain` keeps only those written since.
fn scan_private(
    cx: &mut DumpCx<'_>,
    pagemap: &File,
    v: &Vma,
) -> Result<(Ranges, Ranges), MemoryError> {
    let pid = cx.pid;
    if let Some(chain) = cx.chain.as_deref_mut() {
        let vpid = chain.vpid(pid);
        let p = chain
            .scan_vma(pid, vpid, pagemap, v.start, v.end)
            .map_err(|e| TaskError::Memory {
                pid,
                addr: v.start,
                what: "PAGEMAP_SCAN (incremental)",
                source: std::io::Error::other(e.to_string()),
            })?;
        return Ok((p.copy, p.parent));
    }
    // Present or swapped pages (write-protection markers of a tracking chain left out).
    let ranges = crate::memtrack::present_pages(pagemap, v.start, v.end).map_err(|source| {
        TaskError::Memory {
            pid,
            addr: v.start,
            what: "PAGEMAP_SCAN",
            source,
        }
    })?;
    Ok((ranges, Vec::new()))
}

/// `ranges` (present pages of a readable private anonymous mapping of the frozen task `pid`)
/// without the pages that hold only zeros: the dump writes nothing for them and the restore
/// copies nothing (an address the pagemap does not list comes back as a zero page, in CRIU's
/// format too). CRIU leaves out only pages that map the kernel's zero page; a page the program
/// wrote zeros into (calloc, a cleared buffer) is a real page it copies.
///
/// Zeros come in large runs, data seldom starts with a zero word: the first word of every
/// chunk of `CHUNK` pages is read (1024 chunks per `process_vm_readv`), and only chunks whose
/// first word is zero are read whole and checked page by page. A zero page inside a chunk that
/// starts with data is kept (written, as CRIU does). If anything cannot be read the ranges
/// stay as they are (the copy then reads every page, and reports what failed).
fn drop_zero_pages(pid: i32, ranges: Ranges) -> Ranges {
    const CHUNK: u64 = 16; // pages: 64 KiB
    const PROBE: usize = 1024; // chunks sampled per call (UIO_MAXIOV)
    const WHOLE: usize = 16; // candidate chunks read whole per call (1 MiB)
    let ps = usize_of(PAGE_SIZE);
    // The chunks: (start, pages), never across a range's end.
    let chunks = ranges.iter().flat_map(|&(s, e)| {
        (s..e)
            .step_by(usize_of(CHUNK * PAGE_SIZE))
            .map(move |a| (a, ((e - a) / PAGE_SIZE).min(CHUNK)))
    });
    let mut out: Ranges = Vec::with_capacity(ranges.len());
    let keep = |out: &mut Ranges, s: u64, e: u64| match out.last_mut() {
        Some((_, le)) if *le == s => *le = e,
        _ => out.push((s, e)),
    };
    let mut batch: Vec<(u64, u64)> = Vec::with_capacity(PROBE);
    let mut words = vec![0u8; PROBE * 8];
    let mut whole = vec![0u8; WHOLE * usize_of(CHUNK) * ps];
    let mut iov: Vec<(u64, usize)> = Vec::with_capacity(PROBE);
    let mut chunks = chunks.peekable();
    while chunks.peek().is_some() {
        batch.clear();
        batch.extend(chunks.by_ref().take(PROBE));
        iov.clear();
        iov.extend(batch.iter().map(|&(a, _)| (a, 8)));
        let n = batch.len();
        if mem::vm_read(pid, &mut words[..n * 8], &iov).is_err() {
            return ranges;
        }
        let mut i = 0;
        while i < n {
            if words[i * 8..i * 8 + 8] != [0u8; 8] {
                let (a, pages) = batch[i];
                keep(&mut out, a, a + pages * PAGE_SIZE);
                i += 1;
                continue;
            }
            // Chunks starting with zero, up to WHOLE of them, read whole at once.
            let mut j = i + 1;
            while j < n && j - i < WHOLE && words[j * 8..j * 8 + 8] == [0u8; 8] {
                j += 1;
            }
            iov.clear();
            iov.extend(
                batch[i..j]
                    .iter()
                    .map(|&(a, p)| (a, usize_of(p * PAGE_SIZE))),
            );
            let len: usize = iov.iter().map(|r| r.1).sum();
            if mem::vm_read(pid, &mut whole[..len], &iov).is_err() {
                return ranges;
            }
            let mut pages = whole[..len].chunks_exact(ps);
            for &(a, p) in &batch[i..j] {
                for k in 0..p {
                    let page = pages.next().expect("read as many pages");
                    // No early exit: this folds into wide ORs.
                    let any = page.chunks_exact(8).fold(0u64, |acc, w| {
                        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
                    });
                    if any != 0 {
                        let at = a + k * PAGE_SIZE;
                        keep(&mut out, at, at + PAGE_SIZE);
                    }
                }
            }
            i = j;
        }
    }
    out
}

/// Pagemap entries in address order: the copied runs (`PE_PRESENT`, in image order) and the
/// ranges left in the parent (`PE_PARENT`, as CRIU writes them).
pub fn pagemap_entries(runs: &[Run], parents: &[(u64, u64)]) -> Vec<pb::PagemapEntry> {
    let mut out: Vec<pb::PagemapEntry> = runs
        .iter()
        .map(|r| pb::PagemapEntry {
            vaddr: r.vaddr,
            compat_nr_pages: u32::try_from(r.pages).unwrap_or(0),
            in_parent: None,
            flags: Some(PE_PRESENT),
            nr_pages: Some(r.pages),
        })
        .chain(parents.iter().map(|&(s, e)| {
            let pages = (e - s) / PAGE_SIZE;
            pb::PagemapEntry {
                vaddr: s,
                compat_nr_pages: u32::try_from(pages).unwrap_or(0),
                in_parent: None,
                flags: Some(PE_PARENT),
                nr_pages: Some(pages),
            }
        }))
        .collect();
    out.sort_by_key(|e| e.vaddr);
    out
}

/// One SysV attachment: a single `shmat` maps the whole segment, which may show as several
/// mappings (parts mprotect()ed differently). The first (offset 0) attaches it read-write if
/// any part of the chain is writable (else `SHM_RDONLY`), executable if any is; every part
/// then gets its own protection. A chain without its first part (the program unmapped it) is
/// refused, as CRIU does.
fn attach_sysv(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    v: &pb::VmaEntry,
) -> Result<(), MemoryError> {
    let vmas = &img.mm.vmas;
    let at = vmas.iter().position(|x| std::ptr::eq(x, v)).unwrap_or(0);
    // Back to the chain's first part, then forward over its parts.
    let mut head = at;
    while vmas[head].pgoff != 0 {
        let prev = head.checked_sub(1).map(|i| &vmas[i]);
        match prev {
            Some(p) if p.status & status::SYSVIPC != 0 && p.shmid == v.shmid && p.end == vmas[head].start => head -= 1,
            _ => {
                return Err(Unsupported::restore(format!(
                    "mm-{}.img: SysV segment {} is attached at {:#x} without its first part (partly unmapped attachments are not supported)",
                    img.pid, v.shmid, v.start
                ))
                .into())
            }
        }
    }
    let chain = vmas[head..]
        .iter()
        .enumerate()
        .take_while(|(i, x)| {
            *i == 0
                || (x.status & status::SYSVIPC != 0
                    && x.shmid == v.shmid
                    && x.pgoff != 0
                    && x.start == vmas[head + i - 1].end)
        })
        .map(|(_, x)| x);
    let (mut rw, mut exec) = (false, false);
    for x in chain {
        rw |= x.prot & libc::PROT_WRITE as u32 != 0;
        exec |= x.prot & libc::PROT_EXEC as u32 != 0;
    }
    const SHM_RDONLY: i32 = 0o10000;
    const SHM_REMAP: i32 = 0o40000;
    const SHM_EXEC: i32 = 0o100000;
    let attached_prot = libc::PROT_READ
        | if rw { libc::PROT_WRITE } else { 0 }
        | if exec { libc::PROT_EXEC } else { 0 };
    if v.pgoff == 0 {
        let id = i32::try_from(v.shmid).map_err(|_| {
            TaskError::BadImage(format!(
                "mm-{}.img: mapping {:#x} names SysV segment {}",
                img.pid, v.start, v.shmid
            ))
        })?;
        let flags = SHM_REMAP | if rw { 0 } else { SHM_RDONLY } | if exec { SHM_EXEC } else { 0 };
        let got = cx.named("shmat (SysV segment)").shmat(id, v.start, flags)?;
        check_addr(got, v)?;
    }
    if v.prot.cast_signed() != attached_prot {
        cx.mprotect(v.start, v.end - v.start, v.prot.cast_signed())?;
    }
    Ok(())
}

/// The bytes of a page run of a pagemap entry; None if they overflow (a damaged image).
fn run_bytes(p: &pb::PagemapEntry) -> Option<u64> {
    p.nr_pages
        .unwrap_or(u64::from(p.compat_nr_pages))
        .checked_mul(PAGE_SIZE)
}

/// Where a page run of a pagemap entry ends; None if it overflows (a damaged image).
fn run_end(p: &pb::PagemapEntry) -> Option<u64> {
    p.vaddr.checked_add(run_bytes(p)?)
}

/// madvise bits that make a child not inherit a mapping's content at fork.
const NOT_INHERITED: u64 = (1 << libc::MADV_DONTFORK) | (1 << 18); // MADV_WIPEONFORK

/// The private mappings (anonymous, or of a file) a child keeps from its parent at fork
/// (copy-on-write): those identical in both (range, file, offset, protection, flags, madvise
/// state) whose content a fork passes on. Keeping them also saves re-opening and re-mapping
/// every library in every process of a tree.
pub fn cow_kept(parent: &pb::MmEntry, child: &pb::MmEntry) -> Vec<(u64, u64)> {
    let anon = |v: &pb::VmaEntry| {
        v.status & (status::ANON_PRIVATE | status::FILE_PRIVATE) != 0
            && v.status & status::MEMFD == 0
            && v.prot & libc::PROT_READ as u32 != 0
            && v.status & (status::VDSO | status::VVAR | status::VSYSCALL) == 0
            && v.madv.unwrap_or(0) & NOT_INHERITED == 0
    };
    let mut out: Vec<(u64, u64)> = child
        .vmas
        .iter()
        .filter(|c| {
            anon(c)
                && parent.vmas.iter().any(|p| {
                    anon(p)
                        && (p.start, p.end, p.prot, p.flags, p.pgoff, p.madv, p.status)
                            == (c.start, c.end, c.prot, c.flags, c.pgoff, c.madv, c.status)
                        && (p.status & status::FILE_PRIVATE == 0 || p.shmid == c.shmid)
                })
        })
        .map(|c| (c.start, c.end))
        .collect();
    out.sort_unstable();
    out
}

/// The vDSO and vvar mappings a child keeps from its parent (forked in the same time
/// namespace): all of them when the child's are exactly the parent's, else none.
pub fn vdso_kept(parent: &pb::MmEntry, child: &pb::MmEntry) -> Vec<(u64, u64)> {
    let specials = |m: &pb::MmEntry| -> Vec<(u64, u64, u32)> {
        let mut v: Vec<(u64, u64, u32)> = m
            .vmas
            .iter()
            .filter(|v| v.status & (status::VDSO | status::VVAR) != 0)
            .map(|v| (v.start, v.end, v.status))
            .collect();
        v.sort_unstable();
        v
    };
    let c = specials(child);
    if c.is_empty() || c != specials(parent) {
        return Vec::new();
    }
    c.into_iter().map(|(s, e, _)| (s, e)).collect()
}

fn check_addr(got: u64, v: &pb::VmaEntry) -> Result<(), MemoryError> {
    if got != v.start {
        return Err(TaskError::BadImage(format!(
            "mapping {:#x}-{:#x} landed at {got:#x}",
            v.start, v.end
        ))
        .into());
    }
    Ok(())
}

/// `write_pages` through a shared mapping of the image: every worker copies its blocks
/// straight into the page cache (`process_vm_readv` into the mapping), so page-cache pages
/// are populated by all CPUs at once instead of by one writer.
fn write_pages_mapped(
    src: &ImageSource<'_>,
    file: &File,
    path: &std::path::Path,
    total: u64,
) -> Result<FileDigest, MemoryError> {
    let io = |op, source| {
        TaskError::Image(crate::image::ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        })
    };
    file.set_len(total).map_err(|e| io("ftruncate", e))?;
    let mut map = Mapping::file_rw(file, usize_of(total)).map_err(|e| io("mmap", e))?;
    // No read-ahead on the faults: a write fault on a hole of the (sparse) image otherwise
    // reads ahead into large folios, each zeroed before it is overwritten; on a VM whose free
    // memory goes back to the host those are fresh huge blocks, and zeroing them cost 3/4
    // of the dump (2.4 -> 1.1 s of CPU per GiB on ext4 here). Order-0 pages, one per fault.
    map.advise(libc::MADV_RANDOM);
    let nblocks = usize_of(total.div_ceil(u64_of(BLOCK)));
    let digests = Mutex::new(vec![String::new(); nblocks]);
    let first_err: Mutex<Option<MemoryError>> = Mutex::new(None);
    let chunks = map
        .file_chunks_mut(BLOCK)
        .expect("Mapping::file_rw is a file mapping");
    let queue = Mutex::new(chunks.enumerate());
    std::thread::scope(|s| {
        let work = || loop {
            if first_err.lock().expect("lock").is_some() {
                break;
            }
            if let Some(sig) = crate::sys::proc::interrupted() {
                first_err
                    .lock()
                    .expect("lock")
                    .get_or_insert(MemoryError::interrupted(sig));
                break;
            }
            let Some((b, mut chunk)) = queue.lock().expect("lock").next() else {
                break;
            };
            let start = b as u64 * BLOCK as u64;
            let end = start + chunk.len() as u64;
            let mut h = XxHash3_128::new();
            let mut at = start;
            while at < end {
                let step = (end - at).min(1 << 20);
                let o = usize_of(at - start);
                let dst = &mut chunk[o..o + usize_of(step)];
                if let Err(e) = src.fill(at, dst) {
                    first_err.lock().expect("lock").get_or_insert(e);
                    return;
                }
                h.write(dst);
                // Written: out of cryo's RSS (the page cache keeps it).
                chunk.release(o, usize_of(step));
                at += step;
            }
            digests.lock().expect("lock")[b] = format!("{:032x}", h.finish_128());
            crate::progress::advance(end - start);
        };
        for _ in 1..workers() {
            s.spawn(work);
        }
        work();
    });
    drop(queue);
    drop(map);
    if let Some(e) = first_err.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(FileDigest {
        size: total,
        blocks: digests.into_inner().expect("lock"),
    })
}

/// Copies every run from the frozen task into the pages image; returns the file's digest.
/// Under 1 MiB from this thread with one write; otherwise through a shared mapping of the
/// image (`write_pages_mapped`).
fn write_pages(cx: &DumpCx<'_>, name: &str, runs: &[Run], total: u64) -> Result<(), MemoryError> {
    write_pages_of(cx.pid, cx.dir, name, runs, total, false)
}

/// Bytes of the page-server stream sent in one write: the `ADD_F` records and pages of many
/// runs at once.
const SEND_CHUNK: usize = 4 << 20;

/// Sends process `pid`'s pagemap `entries` (sorted; `PE_PRESENT` ones are `runs`, in order)
/// to a page server as process `vpid`, reading the pages from the process. `lenient` as in
/// [`write_pages_of`]. Returns the bytes of pages sent.
///
/// Over one chunk of pages, a thread reads them from the process (`page_stream`) while this
/// one sends the chunk before: the copy out of the process and the socket's overlap.
pub fn send_pages(
    ps: &mut crate::pageserver::Client,
    pid: i32,
    vpid: u32,
    entries: &[pb::PagemapEntry],
    runs: &[Run],
    lenient: bool,
) -> Result<u64, MemoryError> {
    let ps_err = |e: crate::pageserver::PsError| {
        // The whole chain: the socket's own error (a timeout) is what the user needs.
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        MemoryError::from(TaskError::Memory {
            pid,
            addr: 0,
            what: "sending pages to the page server",
            source: std::io::Error::other(why),
        })
    };
    let present = entries
        .iter()
        .filter(|e| e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT != 0)
        .count();
    if present != runs.len() {
        return Err(TaskError::Internal("pagemap entries and page runs disagree").into());
    }
    ps.open(vpid).map_err(ps_err)?;
    let mem_file = if runs.iter().any(|r| r.via_mem) {
        File::open(format!("/proc/{pid}/mem")).ok()
    } else {
        None
    };
    let mem_file = mem_file.as_ref();
    let total: u64 = runs.iter().map(|r| r.pages * PAGE_SIZE).sum();
    let mut sent = 0u64;
    if total <= u64_of(SEND_CHUNK) {
        let mut emit = |b: Vec<u8>, n: usize, pages: u64| -> Result<Vec<u8>, MemoryError> {
            ps.data(&b[..n]).map_err(ps_err)?;
            sent += pages;
            crate::progress::advance(pages);
            Ok(b)
        };
        let buf = vec![0u8; SEND_CHUNK];
        page_stream(pid, vpid, entries, runs, lenient, mem_file, buf, &mut emit)?;
        return Ok(sent);
    }
    let stopped = || MemoryError::from(TaskError::Internal("the page sender stopped"));
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize, u64)>(1);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..2 {
        let _ = free_tx.send(vec![0u8; SEND_CHUNK]);
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut emit = |b: Vec<u8>, n: usize, pages: u64| -> Result<Vec<u8>, MemoryError> {
                full_tx.send((b, n, pages)).map_err(|_| stopped())?;
                free_rx.recv().map_err(|_| stopped())
            };
            let buf = vec![0u8; SEND_CHUNK];
            page_stream(pid, vpid, entries, runs, lenient, mem_file, buf, &mut emit)
        });
        let mut out = Ok(());
        // Ends when the reader is done (or failed: its error is returned below).
        for (b, n, pages) in full_rx.iter() {
            if let Err(e) = ps.data(&b[..n]) {
                out = Err(ps_err(e));
                break;
            }
            sent += pages;
            crate::progress::advance(pages);
            let _ = free_tx.send(b);
        }
        // A reader waiting to hand over or for a buffer stops.
        drop(full_rx);
        drop(free_tx);
        let read = reader
            .join()
            .unwrap_or(Err(TaskError::Internal("the page reader panicked").into()));
        out.and(read)
    })?;
    Ok(sent)
}

/// Builds process `vpid`'s page-server stream in `buf`: the `ADD_F` record of each of
/// `entries`, followed for `PE_PRESENT` ones by the pages of their run (`runs`, in order),
/// read from process `pid`. Each full buffer goes to `emit` (the buffer, the bytes used, the
/// bytes of pages in them), which gives back the one to fill next.
#[allow(clippy::too_many_arguments)]
fn page_stream(
    pid: i32,
    vpid: u32,
    entries: &[pb::PagemapEntry],
    runs: &[Run],
    lenient: bool,
    mem_file: Option<&File>,
    mut buf: Vec<u8>,
    emit: &mut dyn FnMut(Vec<u8>, usize, u64) -> Result<Vec<u8>, MemoryError>,
) -> Result<(), MemoryError> {
    let rec = crate::pageserver::Iov::SIZE;
    let (mut used, mut pages) = (0usize, 0u64);
    let mut runs = runs.iter();
    for e in entries {
        if used + rec > buf.len() {
            buf = emit(buf, used, pages)?;
            (used, pages) = (0, 0);
        }
        buf[used..used + rec].copy_from_slice(&crate::pageserver::add_record(vpid, e));
        used += rec;
        if e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
            continue;
        }
        let Some(r) = runs.next() else {
            return Err(TaskError::Internal("pagemap entries and page runs disagree").into());
        };
        let len = r.pages * PAGE_SIZE;
        let mut at = 0u64;
        while at < len {
            if used == buf.len() {
                buf = emit(buf, used, pages)?;
                (used, pages) = (0, 0);
            }
            let n = usize_of(len - at).min(buf.len() - used);
            let dst = &mut buf[used..used + n];
            let a = r.vaddr + at;
            let got = match (mem_file, r.via_mem) {
                (Some(m), true) => m.read_exact_at(dst, a),
                _ => mem::vm_read(pid, dst, &[(a, n)]),
            };
            if let Err(source) = got {
                if !lenient {
                    return Err(TaskError::Memory {
                        pid,
                        addr: a,
                        what: "reading pages",
                        source,
                    }
                    .into());
                }
                read_lenient(pid, dst, a, mem_file);
            }
            used += n;
            pages += u64_of(n);
            at += u64_of(n);
        }
    }
    if used > 0 {
        emit(buf, used, pages)?;
    }
    Ok(())
}

/// [`write_pages`] for process `pid` into `dir`, compressed when `dir` compresses
/// (`image::pages`); records the image in the manifest. `lenient` (a pre-dump, copying while
/// the tree runs): a range the process unmapped meanwhile is saved as zeros instead of
/// failing; the next step sees it as a new or written range and saves it again.
pub fn write_pages_of(
    pid: i32,
    dir: &crate::image::ImageDir,
    name: &str,
    runs: &[Run],
    total: u64,
    lenient: bool,
) -> Result<(), MemoryError> {
    let (file, this) = dir.create_pages(name)?;
    let path = dir.file(&this);
    let digest = pages_of(pid, dir.compress(), &file, &path, runs, total, lenient)?;
    dir.record(&this, digest);
    Ok(())
}

/// [`write_pages_of`] into `file` (at `path`); returns its digest.
fn pages_of(
    pid: i32,
    compress: bool,
    file: &File,
    path: &std::path::Path,
    runs: &[Run],
    total: u64,
    lenient: bool,
) -> Result<FileDigest, MemoryError> {
    let mem_file = if runs.iter().any(|r| r.via_mem) {
        Some(
            File::open(format!("/proc/{pid}/mem")).map_err(|source| TaskError::Memory {
                pid,
                addr: 0,
                what: "open /proc/PID/mem",
                source,
            })?,
        )
    } else {
        None
    };
    let src = ImageSource::Task {
        pid,
        runs,
        mem_file: mem_file.as_ref(),
        lenient,
    };
    write_image(&src, compress, file, path, total)
}

/// Where the bytes of a pages image come from.
pub(crate) enum ImageSource<'a> {
    /// The runs of a (frozen) task's memory; `lenient` as in [`write_pages_of`].
    Task {
        pid: i32,
        runs: &'a [Run],
        mem_file: Option<&'a File>,
        lenient: bool,
    },
    /// Ranges `(offset, len)` of `file` (a shmem inode, a memfd, opened at `path`), back to
    /// back in the image; `at[i]` is where range `i` starts in the image. Bytes past the
    /// file's end are zeros.
    File {
        file: &'a File,
        path: &'a std::path::Path,
        ranges: &'a [(u64, u64)],
        at: Vec<u64>,
    },
}

impl<'a> ImageSource<'a> {
    /// The file ranges `ranges` (offset, length) of `file` (opened at `path`), back to back.
    pub(crate) fn file(
        file: &'a File,
        path: &'a std::path::Path,
        ranges: &'a [(u64, u64)],
    ) -> ImageSource<'a> {
        let at = ranges
            .iter()
            .scan(0u64, |pos, r| {
                let a = *pos;
                *pos += r.1;
                Some(a)
            })
            .collect();
        ImageSource::File {
            file,
            path,
            ranges,
            at,
        }
    }

    /// Fills `dst` with the image bytes at `start`.
    fn fill(&self, start: u64, dst: &mut [u8]) -> Result<(), MemoryError> {
        match self {
            &ImageSource::Task {
                pid,
                runs,
                mem_file,
                lenient,
            } => {
                let end = start + u64_of(dst.len());
                if let Err(e) = copy_block(pid, runs, start, end, dst, mem_file) {
                    if !lenient {
                        return Err(e);
                    }
                    copy_block_lenient(pid, runs, start, end, dst, mem_file);
                }
                Ok(())
            }
            ImageSource::File {
                file,
                path,
                ranges,
                at,
            } => {
                let mut i = at.partition_point(|&a| a <= start).saturating_sub(1);
                let mut done = 0usize;
                while done < dst.len() {
                    let Some(&(off, len)) = ranges.get(i) else {
                        return Err(
                            TaskError::Internal("file source shorter than its image").into()
                        );
                    };
                    let pos = start + u64_of(done);
                    let skip = pos - at[i];
                    let n = usize_of((len - skip).min(u64_of(dst.len() - done)));
                    let piece = &mut dst[done..done + n];
                    let mut got = 0;
                    while got < n {
                        match file.read_at(&mut piece[got..], off + skip + u64_of(got)) {
                            Ok(0) => break,
                            Ok(k) => got += k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(source) => {
                                return Err(TaskError::Image(crate::image::ImageError::Io {
                                    path: path.to_path_buf(),
                                    op: "read",
                                    source,
                                })
                                .into())
                            }
                        }
                    }
                    // The tail past i_size reads short: zeros.
                    piece[got..].fill(0);
                    done += n;
                    i += 1;
                }
                Ok(())
            }
        }
    }
}

/// Writes `total` bytes from `src` into the pages image `file` (at `path`), compressed when
/// `compress`; returns its digest. Under `SMALL_FILL` from this thread with one write;
/// otherwise by every CPU ([`write_pages_compressed`], [`write_pages_mapped`]).
pub(crate) fn write_image(
    src: &ImageSource<'_>,
    compress: bool,
    file: &File,
    path: &std::path::Path,
    total: u64,
) -> Result<FileDigest, MemoryError> {
    if total <= SMALL_FILL {
        // A small process: copy and write from this thread, no pipeline to start.
        let mut buf = vec![0u8; usize_of(total)];
        src.fill(0, &mut buf)?;
        if compress {
            return Ok(crate::image::pages::write_all(file, path, &buf).map_err(TaskError::Image)?);
        }
        let mut file = file;
        std::io::Write::write_all(&mut file, &buf).map_err(|source| {
            TaskError::Image(crate::image::ImageError::Io {
                path: path.to_path_buf(),
                op: "write",
                source,
            })
        })?;
        return Ok(FileDigest::of(&buf));
    }
    crate::progress::start(total);
    if compress {
        return write_pages_compressed(src, file, path, total);
    }
    write_pages_mapped(src, file, path, total)
}

/// `write_pages` compressed (`dump --compress`): every worker copies a block of the image
/// from the task into its own buffer, compresses it and appends it in block order
/// (`image::pages::Writer`).
fn write_pages_compressed(
    src: &ImageSource<'_>,
    file: &File,
    path: &std::path::Path,
    total: u64,
) -> Result<FileDigest, MemoryError> {
    use crate::image::pages;
    let w = pages::Writer::new(file, path, total).map_err(TaskError::Image)?;
    let nblocks = usize_of(total.div_ceil(u64_of(pages::BLOCK)));
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<MemoryError>> = Mutex::new(None);
    let fail = |e: MemoryError| {
        first_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        w.fail();
    };
    // Test hook: a compression thread panics at its second block (a bug must fail the
    // dump, not hang it).
    let panic_at = crate::fault::injected("compress-worker-panic").then_some(1);
    let work = || {
        let mut c = match pages::Writer::compressor() {
            Ok(c) => c,
            Err(source) => {
                return fail(
                    TaskError::Image(crate::image::ImageError::Io {
                        path: path.to_path_buf(),
                        op: "zstd",
                        source,
                    })
                    .into(),
                )
            }
        };
        let mut raw = vec![0u8; pages::BLOCK];
        let mut enc = Vec::new();
        loop {
            if let Some(sig) = crate::sys::proc::interrupted() {
                return fail(MemoryError::interrupted(sig));
            }
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= nblocks {
                return;
            }
            let start = u64_of(b) * u64_of(pages::BLOCK);
            let end = (start + u64_of(pages::BLOCK)).min(total);
            let dst = &mut raw[..usize_of(end - start)];
            if let Err(e) = src.fill(start, dst) {
                return fail(e);
            }
            assert!(
                panic_at != Some(b),
                "CRYO_FAULT_INJECT=compress-worker-panic"
            );
            if let Err(source) = pages::Writer::encode(&mut c, dst, &mut enc) {
                return fail(
                    TaskError::Image(crate::image::ImageError::Io {
                        path: path.to_path_buf(),
                        op: "zstd",
                        source,
                    })
                    .into(),
                );
            }
            match w.put(b, &mut enc) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return fail(TaskError::Image(e).into()),
            }
            crate::progress::advance(end - start);
        }
    };
    // A panicking thread fails the dump: the others, waiting for its block, give up.
    let guarded = || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&work)) {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            fail(MemoryError::WorkerPanicked {
                path: path.to_path_buf(),
                what,
            });
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers() {
            s.spawn(guarded);
        }
        guarded();
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(w.finish())
}

/// Reads `dst.len()` bytes at `addr` page by page; pages that cannot be read are zeros.
fn read_lenient(pid: i32, dst: &mut [u8], addr: u64, mem_file: Option<&File>) {
    for (i, page) in dst.chunks_mut(usize_of(PAGE_SIZE)).enumerate() {
        let a = addr + u64_of(i) * PAGE_SIZE;
        let len = page.len();
        let ok = mem::vm_read(pid, page, &[(a, len)]).is_ok()
            || mem_file.is_some_and(|m| m.read_exact_at(page, a).is_ok());
        if !ok {
            page.fill(0);
        }
    }
}

/// Fills `buf` with image bytes [start, end) by reading the task's memory.
fn copy_block(
    pid: i32,
    runs: &[Run],
    start: u64,
    end: u64,
    buf: &mut [u8],
    mem_file: Option<&File>,
) -> Result<(), MemoryError> {
    // First run overlapping `start` (runs are sorted by offset).
    let mut i = runs.partition_point(|r| r.off + r.pages * PAGE_SIZE <= start);
    let mut ranges: Vec<(u64, usize)> = Vec::new();
    let mut pos = start;
    let flush = |ranges: &mut Vec<(u64, usize)>,
                 at: u64,
                 buf: &mut [u8]|
     -> Result<(), MemoryError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let len: usize = ranges.iter().map(|r| r.1).sum();
        let o = usize_of(at - start);
        mem::vm_read(pid, &mut buf[o..o + len], ranges).map_err(|source| TaskError::Memory {
            pid,
            addr: ranges[0].0,
            what: "process_vm_readv",
            source,
        })?;
        ranges.clear();
        Ok(())
    };
    let mut batch_at = pos;
    while pos < end {
        let r = runs[i];
        let skip = pos - r.off;
        let take = (r.pages * PAGE_SIZE - skip).min(end - pos);
        if r.via_mem {
            flush(&mut ranges, batch_at, buf)?;
            let o = usize_of(pos - start);
            mem_file
                .expect("opened when needed")
                .read_exact_at(&mut buf[o..o + usize_of(take)], r.vaddr + skip)
                .map_err(|source| TaskError::Memory {
                    pid,
                    addr: r.vaddr + skip,
                    what: "read /proc/PID/mem",
                    source,
                })?;
            batch_at = pos + take;
        } else {
            if ranges.is_empty() {
                batch_at = pos;
            }
            ranges.push((r.vaddr + skip, usize_of(take)));
        }
        pos += take;
        i += 1;
    }
    flush(&mut ranges, batch_at, buf)
}

/// [`copy_block`] page by page, zeros where the process has nothing readable any more.
fn copy_block_lenient(
    pid: i32,
    runs: &[Run],
    start: u64,
    end: u64,
    buf: &mut [u8],
    mem_file: Option<&File>,
) {
    let mut i = runs.partition_point(|r| r.off + r.pages * PAGE_SIZE <= start);
    let mut pos = start;
    while pos < end {
        let r = runs[i];
        let skip = pos - r.off;
        let take = (r.pages * PAGE_SIZE - skip).min(end - pos);
        let o = usize_of(pos - start);
        read_lenient(
            pid,
            &mut buf[o..o + usize_of(take)],
            r.vaddr + skip,
            mem_file,
        );
        pos += take;
        i += 1;
    }
}

/// Maps a fresh vDSO (with its data pages) at the dumped address.
fn map_vdso(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), MemoryError> {
    let specials: Vec<&pb::VmaEntry> = img
        .mm
        .vmas
        .iter()
        .filter(|v| v.status & (status::VVAR | status::VDSO) != 0)
        .collect();
    let Some(vdso) = specials.iter().find(|v| v.status & status::VDSO != 0) else {
        return Ok(()); // the task had unmapped its vDSO
    };
    if specials.iter().all(|v| cx.cow.contains(&(v.start, v.end))) {
        return Ok(()); // kept from the parent, where it is already checked and placed
    }
    let low = specials.iter().map(|v| v.start).min().unwrap_or(vdso.start);
    const ARCH_MAP_VDSO_64: i32 = 0x2003;
    let mut hint = low;
    for attempt in 0..2 {
        cx.named("arch_prctl(ARCH_MAP_VDSO_64)")
            .arch_prctl(ARCH_MAP_VDSO_64, hint)?;
        let maps = crate::procfs::read(cx.pid, "maps")?;
        let now = crate::procfs::parse_smaps(&maps).unwrap_or_default();
        let got = now.iter().find(|v| v.name == "[vdso]").map(|v| v.start);
        let size_now: u64 = now
            .iter()
            .filter(|v| matches!(v.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
            .map(|v| v.len())
            .sum();
        let size_then: u64 = specials.iter().map(|v| v.end - v.start).sum();
        if size_now != size_then {
            return Err(Unsupported::restore(format!(
                "the vDSO of this kernel differs from the dumped one ({size_now} vs {size_then} bytes); restoring across kernels is not supported yet"
            )).into());
        }
        match got {
            Some(g) if g == vdso.start => return Ok(()),
            Some(g) if attempt == 0 => {
                for v in now
                    .iter()
                    .filter(|v| matches!(v.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
                {
                    cx.munmap(v.start, v.len())?;
                }
                hint = hint.wrapping_add(vdso.start.wrapping_sub(g));
            }
            _ => break,
        }
    }
    Err(Unsupported::restore(format!("could not place the vDSO at {:#x}", vdso.start)).into())
}

/// Work item: up to `BLOCK` bytes of consecutive image data, as (image offset, remote ranges).
type Item = (usize, Vec<(u64, usize)>);

/// Builds work items from consecutive pieces of image data.
#[derive(Default)]
struct Items {
    items: Vec<Item>,
    /// Image offset just past the last item's data.
    end: usize,
    /// Bytes in the last item.
    cur: usize,
}

impl Items {
    /// Adds `len` bytes of image data at `off`, for remote address `addr`.
    fn push(&mut self, mut off: usize, mut addr: u64, mut len: usize) {
        while len > 0 {
            let full = self
                .items
                .last()
                .is_none_or(|i| self.cur >= BLOCK || i.1.len() >= 1024 || self.end != off);
            if full {
                self.items.push((off, Vec::new()));
                self.cur = 0;
            }
            let take = len.min(BLOCK - self.cur);
            self.items.last_mut().expect("pushed").1.push((addr, take));
            addr += u64_of(take);
            off += take;
            len -= take;
            self.cur += take;
            self.end = off;
        }
    }
}

/// Which anonymous VMAs a page fault would back with transparent huge pages (from
/// /sys/kernel/mm/transparent_hugepage: the PMD mode and the multi-size THP modes).
struct Thp {
    /// Some size is enabled for every VMA ("always").
    always: bool,
    /// Some size is enabled for `MADV_HUGEPAGE` VMAs ("always" or "madvise").
    madvise: bool,
}

impl Thp {
    /// The modes, read once per cryo process (they are the host's).
    fn read() -> Thp {
        static ONCE: std::sync::OnceLock<Thp> = std::sync::OnceLock::new();
        let t = ONCE.get_or_init(Thp::read_now);
        Thp {
            always: t.always,
            madvise: t.madvise,
        }
    }

    fn read_now() -> Thp {
        let dir = std::path::Path::new("/sys/kernel/mm/transparent_hugepage");
        let mode = |p: &std::path::Path| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let sel = s.split('[').nth(1).and_then(|r| r.split(']').next());
            sel.unwrap_or("never").to_string()
        };
        let top = mode(&dir.join("enabled"));
        let mut modes = vec![top.clone()];
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("hugepages-") {
                    let m = mode(&e.path().join("enabled"));
                    modes.push(if m == "inherit" { top.clone() } else { m });
                }
            }
        }
        Thp {
            always: modes.iter().any(|m| m == "always"),
            madvise: modes.iter().any(|m| m == "always" || m == "madvise"),
        }
    }

    /// Would a write fault in `v` (after its madvise bits are replayed) allocate a THP?
    fn on_fault(&self, v: &pb::VmaEntry, thp_disabled: bool) -> bool {
        let madv = v.madv.unwrap_or(0);
        let hg = madv & (1 << libc::MADV_HUGEPAGE) != 0;
        let nh = madv & (1 << libc::MADV_NOHUGEPAGE) != 0;
        !thp_disabled && !nh && (self.always || (hg && self.madvise))
    }
}

/// The puppet's userfaultfd, taken into cryo.
fn open_uffd(cx: &mut RestoreCx<'_>) -> Result<mem::Uffd, MemoryError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | mem::UFFD_USER_MODE_ONLY;
    let fd = cx.userfaultfd(flags)?;
    let taken = crate::sys::fd::pidfd_open(cx.pid)
        .and_then(|p| crate::sys::fd::pidfd_getfd(std::os::fd::AsFd::as_fd(&p), fd));
    cx.close(fd)?;
    let addr = 0;
    let taken = taken.map_err(|source| MemoryError::Uffd { addr, source })?;
    mem::Uffd::new(taken).map_err(|source| MemoryError::Uffd { addr, source })
}

/// Writes every page run into the puppet, from a mapping of the pages image.
///
/// Pages of anonymous private VMAs are written with `UFFDIO_COPY` by one cryo thread per CPU:
/// it allocates each page and copies into it, without zeroing it first and without a page
/// fault. The rest (file-private VMAs; VMAs where a fault would allocate a transparent huge
/// page, so they get one as before; everything when userfaultfd is not available) is read by
/// the puppet itself (`preadv`) while the other CPUs push with `process_vm_writev`.
/// The mappings `skip` (sorted) hold their pages already (moved from the stage).
fn fill_pages(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    skip: &[(u64, u64)],
) -> Result<(), MemoryError> {
    if img.pagemap.is_empty() {
        return Ok(());
    }
    for (path, runs) in page_sources(cx, img)? {
        if !runs.is_empty() {
            fill_from(cx, img, &path, &runs, skip)?;
        }
    }
    Ok(())
}

/// A mapping whose pages are in the stage (`crate::stage`).
struct Staged {
    start: u64,
    end: u64,
    /// Where its pages are in the puppet (a fork of cryo, which staged them, or of its
    /// parent).
    from: u64,
    /// Ranges the stage holds that the process no longer has (zeroed once moved).
    stale: Vec<(u64, u64)>,
}

/// The mappings of the process whose pages the stage holds, every one of them: private
/// anonymous ones (not growing down, not hugetlb, not kept copy-on-write from the parent)
/// lying in one mapping of the stage the puppet holds.
fn stage_plan(cx: &RestoreCx<'_>, st: &crate::stage::Stage, img: &TaskImages) -> Vec<Staged> {
    // The stage is made of transparent huge pages: not for a process that turned THP off.
    if cx.lazy.is_some() || img.mm.thp_disabled == Some(true) {
        return Vec::new();
    }
    let have = st.have(img.pid);
    if have.is_empty() {
        return Vec::new();
    }
    // The puppet's mappings (the windows it inherited): a range to move must be one.
    let own = crate::procfs::read(cx.pid, "maps")
        .ok()
        .and_then(|m| crate::procfs::parse_smaps(&m))
        .unwrap_or_default();
    let pages: Vec<(u64, u64)> = img
        .pagemap
        .iter()
        .filter_map(|p| Some((p.vaddr, run_end(p)?)))
        .collect();
    let not_plain = status::VDSO
        | status::VVAR
        | status::VSYSCALL
        | status::SYSVIPC
        | status::AIORING
        | status::SOCKET
        | status::ANON_SHARED
        | status::FILE_PRIVATE
        | status::FILE_SHARED;
    let mut out = Vec::new();
    for v in &img.mm.vmas {
        if v.status & status::ANON_PRIVATE == 0
            || v.status & not_plain != 0
            || v.flags & (libc::MAP_HUGETLB | libc::MAP_GROWSDOWN) as u32 != 0
            || cx.cow.contains(&(v.start, v.end))
            || v.madv.unwrap_or(0) & (1 << libc::MADV_NOHUGEPAGE) != 0
        {
            continue;
        }
        let span = [(v.start, v.end)];
        let mine = crate::memtrack::intersect(&pages, &span);
        if mine.is_empty() || !crate::memtrack::subtract(&mine, &have).is_empty() {
            continue;
        }
        let Some(from) = st.source(img.pid, v.start, v.end) else {
            continue;
        };
        let len = v.end - v.start;
        if !own.iter().any(|m| m.start <= from && from + len <= m.end) {
            continue;
        }
        let stale = crate::memtrack::subtract(&crate::memtrack::intersect(&have, &span), &mine);
        out.push(Staged {
            start: v.start,
            end: v.end,
            from,
            stale,
        });
    }
    out
}

/// One page source: a pages image and its runs (image offset, address, bytes).
pub type Source = (std::path::PathBuf, Vec<(u64, u64, u64)>);

/// Where every page of the task comes from: its own pages image for `PE_PRESENT` entries, and
/// for `PE_PARENT` ones the pages images up the `parent` links (an incremental dump), each
/// step's pagemap naming its own. A page marked in the parent that no parent holds is a
/// damaged chain, refused before anything is written.
fn page_sources(cx: &RestoreCx<'_>, img: &TaskImages) -> Result<Vec<Source>, MemoryError> {
    let (sources, lazy_only) = page_sources_in(cx.dir, img.pid, &img.pagemap, img.pages_id)?;
    // Pages a `dump --lazy-pages` left on its page server: only a lazy restore gets them,
    // and only into the memory its lazy-pages daemon serves.
    if let Some(&(s, _)) = lazy_only.first() {
        if cx.lazy.is_none() {
            return Err(TaskError::BadImage(format!(
                "pagemap-{}.img: the pages at {s:#x} are not in the images (a dump with --lazy-pages left them on its page server): restore with --lazy-pages and `cryo lazy-pages --page-server`",
                img.pid
            ))
            .into());
        }
        for &(s, e) in &lazy_only {
            let vi = img.mm.vmas.partition_point(|v| v.end <= s);
            if !img
                .mm
                .vmas
                .get(vi)
                .is_some_and(|v| v.start <= s && e <= v.end && lazy_vma(v))
            {
                return Err(TaskError::BadImage(format!(
                    "pagemap-{}.img: lazy pages at {s:#x} are not in a private anonymous mapping",
                    img.pid
                ))
                .into());
            }
        }
    }
    Ok(sources)
}

/// [`page_sources`] of process `pid` (in the images) of `dir`, from its pagemap `entries`;
/// also the ranges its pagemap marks lazy with no data here (`PE_LAZY` without
/// `PE_PRESENT`: left on the page server of a `dump --lazy-pages`).
pub fn page_sources_in(
    dir: &crate::image::ImageDir,
    pid: u32,
    entries: &[pb::PagemapEntry],
    pages_id: u32,
) -> Result<(Vec<Source>, Ranges), MemoryError> {
    let pm_name = format!("pagemap-{pid}.img");
    let bad = |what: String| MemoryError::from(TaskError::BadImage(what));
    // (image offset if present here, start, end) for each entry of one pagemap.
    let layout = |entries: &[pb::PagemapEntry], dir: &std::path::Path| {
        let mut off = 0u64;
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut lazy = Vec::new();
        for p in entries {
            let (Some(len), Some(end)) = (run_bytes(p), run_end(p)) else {
                return Err(bad(format!(
                    "{}: pages at {:#x} overflow",
                    dir.join(&pm_name).display(),
                    p.vaddr
                )));
            };
            let flags = p.flags.unwrap_or(if p.in_parent == Some(true) {
                PE_PARENT
            } else {
                PE_PRESENT
            });
            if flags & PE_PRESENT != 0 {
                out.push((Some(off), p.vaddr, end));
                off = off.checked_add(len).ok_or_else(|| {
                    bad(format!(
                        "{}: page runs overflow",
                        dir.join(&pm_name).display()
                    ))
                })?;
            } else if flags & PE_PARENT != 0 {
                out.push((None, p.vaddr, end));
                want.push((p.vaddr, end));
            } else if flags & PE_LAZY != 0 {
                lazy.push((p.vaddr, end));
            }
        }
        Ok((out, want, lazy))
    };
    let top = dir.file("");
    let (layout0, mut want, lazy_only) = layout(entries, &top)?;
    let runs = layout0
        .iter()
        .filter_map(|&(o, s, e)| Some((o?, s, e - s)))
        .collect();
    // The pages image under the name the dump wrote it (compressed or not: its inventory).
    let file = |d: &crate::image::ImageDir, id: u32| {
        crate::image::pages::file_of(d, &format!("pages-{id}.img"))
            .map(|f| f.0)
            .map_err(|e| MemoryError::from(TaskError::Image(e)))
    };
    let mut out: Vec<Source> = vec![(file(dir, pages_id)?, runs)];
    let mut dir = top;
    let mut depth = 0;
    while !want.is_empty() {
        depth += 1;
        dir = dir.join(crate::memtrack::PARENT_LINK);
        if depth > crate::memtrack::MAX_DEPTH || !dir.is_dir() {
            return Err(bad(format!(
                "pagemap-{}.img: pages at {:#x} are in the parent images, but {} is not an images directory",
                pid,
                want[0].0,
                dir.display()
            )));
        }
        let pdir = crate::image::ImageDir::open(&dir).map_err(TaskError::Image)?;
        let Some((pages_id, pentries)) = pdir.read_pagemap(&pm_name).map_err(TaskError::Image)?
        else {
            return Err(bad(format!(
                "{}: missing (pages at {:#x} are in the parent)",
                dir.join(&pm_name).display(),
                want[0].0
            )));
        };
        let (layout, _, plazy) = layout(&pentries, &dir)?;
        if let Some(&(s, _)) = plazy.first() {
            return Err(bad(format!(
                "{}: lazy pages at {s:#x} in a parent image (a lazy dump cannot be a parent)",
                dir.join(&pm_name).display()
            )));
        }
        let mut runs = Vec::new();
        let mut next = Vec::new();
        let mut covered = Vec::new();
        for &(o, s, e) in &layout {
            for (ws, we) in crate::memtrack::intersect(&want, &[(s, e)]) {
                covered.push((ws, we));
                match o {
                    Some(o) => runs.push((o + (ws - s), ws, we - ws)),
                    None => next.push((ws, we)),
                }
            }
        }
        covered.sort_unstable();
        if let Some(&(gs, _)) = crate::memtrack::subtract(&want, &covered).first() {
            return Err(bad(format!(
                "pagemap-{}.img: pages at {gs:#x} are marked in the parent, but {} does not have them",
                pid,
                dir.display()
            )));
        }
        next.sort_unstable();
        want = next;
        out.push((file(&pdir, pages_id)?, runs));
    }
    Ok((out, lazy_only))
}

/// Writes the page runs `runs` (image offset, address, bytes) of one pages image into the
/// puppet, from a read-only mapping of the image.
///
/// Pages of anonymous private VMAs are written with `UFFDIO_COPY` by one cryo thread per CPU:
/// it allocates each page and copies into it, without zeroing it first and without a page
/// fault. The rest (file-private VMAs; VMAs where a fault would allocate a transparent huge
/// page, so they get one as before; everything when userfaultfd is not available) is read by
/// the puppet itself (`preadv`) while the other CPUs push with `process_vm_writev`.
fn fill_from(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    path: &std::path::Path,
    runs: &[(u64, u64, u64)],
    skip: &[(u64, u64)],
) -> Result<(), MemoryError> {
    let path = path.to_path_buf();
    // Each run's size was checked (`run_end`); the end of the data is checked here.
    let map_len = runs
        .iter()
        .try_fold(0u64, |m, &(o, _, l)| Some(m.max(o.checked_add(l)?)))
        .ok_or_else(|| {
            TaskError::BadImage(format!(
                "pagemap-{}.img: the page runs add up to more than 2^64 bytes",
                img.pid
            ))
        })?;
    let need: u64 = runs.iter().map(|r| r.2).sum();
    // The raw image mapped, or a compressed one (`dump --compress`) read block by block:
    // only the blocks holding the first `map_len` bytes, which the pagemap needs.
    let data = if is_compressed(&path) {
        if !path.exists() {
            return Err(TaskError::Image(crate::image::ImageError::Missing { path }).into());
        }
        let z = crate::image::pages::Compressed::open(&path, map_len).map_err(TaskError::Image)?;
        Pages::Compressed(z)
    } else {
        let io = |op, source| {
            TaskError::Image(crate::image::ImageError::Io {
                path: path.clone(),
                op,
                source,
            })
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TaskError::Image(crate::image::ImageError::Missing { path }).into())
            }
            Err(e) => return Err(io("open", e).into()),
        };
        let len = usize_of(f.metadata().map_err(|e| io("stat", e))?.len());
        let map = Mapping::file_ro(&f, len).map_err(|e| io("mmap", e))?;
        if u64_of(len) < map_len {
            return Err(TaskError::Image(crate::image::ImageError::Truncated {
                path: path.clone(),
                offset: len,
                what: "page data",
            })
            .into());
        }
        map.advise(libc::MADV_SEQUENTIAL);
        Pages::Raw(map)
    };
    let vmas = &img.mm.vmas;
    let thp = Thp::read();
    let thp_disabled = img.mm.thp_disabled == Some(true);
    let special =
        |v: &pb::VmaEntry| v.status & (status::VDSO | status::VVAR | status::VSYSCALL) != 0;
    // Not hugetlb memory either (UFFDIO_COPY there goes by whole huge pages).
    let by_uffd = |v: &pb::VmaEntry| {
        v.status & status::ANON_PRIVATE != 0
            && v.flags & libc::MAP_HUGETLB as u32 == 0
            && !special(v)
            && !thp.on_fault(v, thp_disabled)
    };
    // Split the data by the VMA it goes to: `fast` for UFFDIO_COPY, `slow` for the rest.
    let (mut fast, mut slow) = (Items::default(), Items::default());
    let mut fast_vmas: Vec<usize> = Vec::new();
    let mut cow_runs: Vec<(usize, u64, usize)> = Vec::new(); // (image offset, addr, len)
                                                             // A small process (most of a process tree) is filled from cryo's thread alone: setting
                                                             // up a userfaultfd or workers would cost more than the copy.
    let small = need <= SMALL_FILL;
    let mut lazy_bytes = 0u64;
    for &(o, a, l) in runs {
        let mut off = usize_of(o);
        let mut addr = a;
        let mut left = usize_of(l);
        while left > 0 {
            let vi = vmas.partition_point(|v| v.end <= addr);
            let Some(v) = vmas.get(vi).filter(|v| v.start <= addr) else {
                return Err(TaskError::BadImage(format!(
                    "pagemap-{}.img: pages at {addr:#x} lie outside every mapping",
                    img.pid
                ))
                .into());
            };
            let take = left.min(usize_of(v.end - addr));
            if special(v) {
                // the fresh vDSO already has this content
            } else if skip.binary_search(&(v.start, v.end)).is_ok() {
                // moved from the stage with its pages
            } else if cx.lazy.is_some() && lazy_vma(v) {
                // A lazy restore: the lazy-pages daemon brings these pages.
                lazy_bytes += u64_of(take);
            } else if cx.cow.contains(&(v.start, v.end)) {
                cow_runs.push((off, addr, take)); // written only where it differs, below
            } else if !small && by_uffd(v) {
                if fast_vmas.last() != Some(&vi) {
                    fast_vmas.push(vi);
                }
                fast.push(off, addr, take);
            } else {
                slow.push(off, addr, take);
            }
            addr += u64_of(take);
            off += take;
            left -= take;
        }
    }
    crate::progress::start(need);
    let written = match &data {
        Pages::Compressed(z) => {
            fill_compressed(cx, vmas, &fast_vmas, fast.items, slow.items, &cow_runs, z)?
        }
        Pages::Raw(map) => {
            let bytes = map.bytes();
            if !fast.items.is_empty() {
                match uffd_fill(cx, vmas, &fast_vmas, &fast.items, map) {
                    Ok(true) => {}
                    Ok(false) => slow.items.append(&mut fast.items), // no userfaultfd here
                    Err(e) => return Err(e),
                }
            }
            let items = slow.items;
            let pid = cx.pid;
            if small {
                // A small process (most of a process tree): one process_vm_writev per item
                // from here costs less than opening the image in the puppet and starting
                // workers.
                for (o, ranges) in &items {
                    let len: usize = ranges.iter().map(|r| r.1).sum();
                    mem::vm_write(pid, &bytes[*o..*o + len], ranges).map_err(|source| {
                        TaskError::Memory {
                            pid,
                            what: "writing the restored memory",
                            addr: ranges[0].0,
                            source,
                        }
                    })?;
                    map.release(*o, len);
                }
            } else {
                fill_parallel(cx, Some(&*path), &items, map)?;
            }
            write_differing(pid, bytes, &cow_runs)?
        }
    };
    let pid = cx.pid;
    cx.stats.pages_restored =
        Some(cx.stats.pages_restored.unwrap_or(0) + (need - lazy_bytes) / PAGE_SIZE);
    if !cow_runs.is_empty() {
        let total: usize = cow_runs.iter().map(|r| r.2).sum();
        tracing::info!(
            pid,
            written = written / usize_of(PAGE_SIZE),
            kept = total / usize_of(PAGE_SIZE),
            "memory: pages kept from the parent that differ were written"
        );
    }
    Ok(())
}

/// The page data of one pages image, as [`fill_from`] reads it.
enum Pages {
    /// A raw `pages-N.img`, mapped.
    Raw(Mapping),
    /// A `pages-N.img.zst` (`dump --compress`), decoded block by block.
    Compressed(crate::image::pages::Compressed),
}

/// Is `path` a compressed pages image (the name [`page_sources_in`] gives one)?
fn is_compressed(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| crate::image::pages::is_compressed_name(&n.to_string_lossy()))
}

/// How a piece of image data gets into the puppet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// `UFFDIO_COPY` (anonymous private memory registered with the userfaultfd).
    Copy,
    /// `process_vm_writev`.
    Write,
    /// Written only where it differs from the parent's page (`write_differing`).
    Differ,
}

/// Writes the pages of a compressed image into the puppet without holding the image in
/// memory: one thread per CPU takes the next block, decodes it into its own one-block
/// buffer (checked against the block's digest) and writes every piece of the block where it
/// goes, as [`fill_from`] sorted them: `fast` with `UFFDIO_COPY` (or `process_vm_writev`
/// when the puppet cannot have a userfaultfd), `slow` with `process_vm_writev`, `cow` only
/// where it differs. cryo's memory stays a few blocks per thread, whatever the image's size.
/// Returns the bytes of `cow` written.
fn fill_compressed(
    cx: &mut RestoreCx<'_>,
    vmas: &[pb::VmaEntry],
    fast_vmas: &[usize],
    fast: Vec<Item>,
    slow: Vec<Item>,
    cow: &[(usize, u64, usize)],
    z: &crate::image::pages::Compressed,
) -> Result<usize, MemoryError> {
    let pid = cx.pid;
    let uffd = if fast.is_empty() {
        None
    } else {
        uffd_register(cx, vmas, fast_vmas)?
    };
    let copy = if uffd.is_some() {
        How::Copy
    } else {
        How::Write
    };
    // Every piece (image offset, address, length, how), sorted by image offset.
    let mut segs: Vec<(usize, u64, usize, How)> = Vec::new();
    for (items, how) in [(&fast, copy), (&slow, How::Write)] {
        for (o, ranges) in items {
            let mut off = *o;
            for &(a, l) in ranges {
                segs.push((off, a, l, how));
                off += l;
            }
        }
    }
    segs.extend(cow.iter().map(|&(o, a, l)| (o, a, l, How::Differ)));
    segs.sort_unstable_by_key(|s| s.0);
    let block = z.block();
    let mut blocks: Vec<usize> = Vec::new();
    for &(o, _, l, _) in &segs {
        for b in o / block..(o + l).div_ceil(block) {
            if blocks.last().is_none_or(|&x| x < b) {
                blocks.push(b);
            }
        }
    }
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<MemoryError>> = Mutex::new(None);
    let written = AtomicUsize::new(0);
    let fail = |e: MemoryError| {
        first_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    let failed = || {
        first_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    };
    let work = || {
        let mut d = match z.decoder() {
            Ok(d) => d,
            Err(e) => return fail(TaskError::Image(e).into()),
        };
        let mem_err = |addr, source| -> MemoryError {
            TaskError::Memory {
                pid,
                what: "writing the restored memory",
                addr,
                source,
            }
            .into()
        };
        while !failed() {
            if let Some(sig) = crate::sys::proc::interrupted() {
                return fail(MemoryError::interrupted(sig));
            }
            let Some(&b) = blocks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return;
            };
            let at = match z.decode(b, &mut d) {
                Ok(at) => usize_of(at),
                Err(e) => return fail(TaskError::Image(e).into()),
            };
            let end = at + d.raw.len();
            let raw = &d.raw;
            // process_vm_writev of consecutive pieces at once: (block offset, ranges).
            let mut batch: (usize, Vec<(u64, usize)>) = (0, Vec::new());
            let flush = |batch: &mut (usize, Vec<(u64, usize)>)| -> Result<(), MemoryError> {
                if batch.1.is_empty() {
                    return Ok(());
                }
                let len: usize = batch.1.iter().map(|r| r.1).sum();
                mem::vm_write(pid, &raw[batch.0..batch.0 + len], &batch.1)
                    .map_err(|e| mem_err(batch.1[0].0, e))?;
                batch.1.clear();
                Ok(())
            };
            let mut differ = Vec::new();
            let mut done = 0usize;
            let mut i = segs.partition_point(|s| s.0 + s.2 <= at);
            let r = (|| -> Result<(), MemoryError> {
                while let Some(&(o, a, l, how)) = segs.get(i).filter(|s| s.0 < end) {
                    i += 1;
                    let (lo, hi) = (o.max(at), (o + l).min(end));
                    let addr = a + u64_of(lo - o);
                    let (bo, n) = (lo - at, hi - lo);
                    done += n;
                    match how {
                        How::Write => {
                            let len: usize = batch.1.iter().map(|r| r.1).sum();
                            if batch.1.len() >= 1024 || batch.0 + len != bo {
                                flush(&mut batch)?;
                            }
                            if batch.1.is_empty() {
                                batch.0 = bo;
                            }
                            batch.1.push((addr, n));
                        }
                        How::Copy => {
                            let u = uffd.as_ref().expect("Copy only with a userfaultfd");
                            u.0.copy(addr, &raw[bo..hi - at])
                                .map_err(|source| MemoryError::Uffd { addr, source })?;
                        }
                        How::Differ => differ.push((bo, addr, n)),
                    }
                }
                flush(&mut batch)?;
                written.fetch_add(write_differing(pid, raw, &differ)?, Ordering::Relaxed);
                Ok(())
            })();
            if let Err(e) = r {
                return fail(e);
            }
            crate::progress::advance(u64_of(done));
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers().min(blocks.len()) {
            s.spawn(work);
        }
        work();
    });
    let mut r = match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(written.into_inner()),
    };
    if let Some((u, registered)) = uffd {
        for v in registered {
            if let Err(e) = unregister(&u, v) {
                if r.is_ok() {
                    r = Err(e);
                }
            }
        }
    }
    r
}

/// Fills `items` with two kinds of workers taking from one queue: the puppet itself reads
/// its share with preadv (native page faults are cheaper than process_vm_writev's), driven
/// from this thread, which is its tracer; the other CPUs push theirs with process_vm_writev.
fn fill_parallel(
    cx: &mut RestoreCx<'_>,
    path: Option<&std::path::Path>,
    items: &[Item],
    map: &Mapping,
) -> Result<(), MemoryError> {
    let bytes = map.bytes();
    let pid = cx.pid;
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<MemoryError>> = Mutex::new(None);
    let img_fd = match path.and_then(|p| p.to_str()) {
        Some(p) if !items.is_empty() => Some(match cx.open(p, libc::O_RDONLY as u32) {
            Ok(fd) => fd,
            // Out of the puppet's reach (a task that pivoted into a new root): cryo's fd.
            Err(err) => match std::fs::File::open(p) {
                Ok(local) => cx.take_from_cryo(std::os::fd::AsRawFd::as_raw_fd(&local))?,
                Err(_) => return Err(err.into()),
            },
        }),
        _ => None, // nothing left, or a non-UTF-8 path: the helpers do it all
    };
    let helpers = if img_fd.is_some() {
        workers() - 1
    } else {
        workers()
    };
    std::thread::scope(|s| {
        for _ in 0..helpers.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((o, ranges)) = items.get(i) else {
                    break;
                };
                let len: usize = ranges.iter().map(|r| r.1).sum();
                let r = mem::vm_write(pid, &bytes[*o..*o + len], ranges);
                // Used: out of cryo's RSS (it stays in the page cache).
                map.release(*o, len);
                crate::progress::advance(len as u64);
                if let Err(source) = r {
                    first_err.lock().expect("lock").get_or_insert(
                        TaskError::Memory {
                            pid,
                            what: "writing the restored memory",
                            addr: ranges[0].0,
                            source,
                        }
                        .into(),
                    );
                    break;
                }
            });
        }
        let Some(fd) = img_fd else { return };
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((o, ranges)) = items.get(i) else {
                break;
            };
            if let Some(sig) = crate::sys::proc::interrupted() {
                first_err
                    .lock()
                    .expect("lock")
                    .get_or_insert(MemoryError::interrupted(sig));
                break;
            }
            crate::progress::advance(ranges.iter().map(|r| r.1 as u64).sum());
            if let Err(e) = puppet_preadv(cx, fd, *o as u64, ranges) {
                first_err.lock().expect("lock").get_or_insert(e);
                break;
            }
        }
    });
    if let Some(fd) = img_fd {
        cx.close(fd)?;
    }
    if let Some(e) = first_err.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(())
}

/// Writes the pages of `runs` (image offset, address, length) that differ from what the
/// process holds now (its parent's pages, inherited copy-on-write); equal pages stay
/// shared. Returns the bytes written.
fn write_differing(
    pid: i32,
    image: &[u8],
    runs: &[(usize, u64, usize)],
) -> Result<usize, MemoryError> {
    const CHUNK: usize = 1 << 20;
    if runs.is_empty() {
        return Ok(0);
    }
    // Read through /proc/PID/mem: process_vm_readv pins pages, and pinning a page shared
    // copy-on-write makes the kernel copy it first (unsharing exactly what we keep shared).
    let procmem = File::open(format!("/proc/{pid}/mem")).map_err(|source| TaskError::Memory {
        pid,
        what: "writing the restored memory",
        addr: runs[0].1,
        source,
    })?;
    let mut now = vec![0u8; CHUNK];
    let mut written = 0;
    for &(off, addr, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = addr + done as u64;
            procmem
                .read_exact_at(&mut now[..n], at)
                .map_err(|source| TaskError::Memory {
                    pid,
                    addr: at,
                    what: "reading the restored memory",
                    source,
                })?;
            let want = &image[off + done..off + done + n];
            let mut p = 0;
            while p < n {
                let ps = usize_of(PAGE_SIZE);
                if want[p..p + ps] == now[p..p + ps] {
                    p += ps;
                    continue;
                }
                // A run of differing pages, written at once.
                let start = p;
                while p < n && want[p..p + ps] != now[p..p + ps] {
                    p += ps;
                }
                let a = at + start as u64;
                mem::vm_write(pid, &want[start..p], &[(a, p - start)]).map_err(|source| {
                    TaskError::Memory {
                        pid,
                        addr: a,
                        what: "writing the restored memory",
                        source,
                    }
                })?;
                written += p - start;
            }
            done += n;
        }
    }
    Ok(written)
}

/// Fills `items` (all in the VMAs `fill`) with `UFFDIO_COPY` from `bytes`, one thread per
/// CPU. `Ok(false)` when the puppet cannot have a userfaultfd (nothing was written then).
fn uffd_fill(
    cx: &mut RestoreCx<'_>,
    vmas: &[pb::VmaEntry],
    fill: &[usize],
    items: &[Item],
    map: &Mapping,
) -> Result<bool, MemoryError> {
    let Some((uffd, registered)) = uffd_register(cx, vmas, fill)? else {
        return Ok(false);
    };
    let mut r = uffd_copy_all(&uffd, items, map);
    // Unregister everything (closing the last fd would too, but an error shows here): a
    // user-mode access to a page still missing would wait for a handler that is not there.
    for v in registered {
        let u = unregister(&uffd, v);
        if r.is_ok() {
            r = u;
        }
    }
    r.map(|()| true)
}

/// The puppet's userfaultfd with the VMAs `fill` registered (the caller unregisters them
/// when done). `Ok(None)` when the puppet cannot have one, or a VMA cannot be registered
/// (nothing is registered then).
fn uffd_register<'v>(
    cx: &mut RestoreCx<'_>,
    vmas: &'v [pb::VmaEntry],
    fill: &[usize],
) -> Result<Option<(mem::Uffd, Vec<&'v pb::VmaEntry>)>, MemoryError> {
    let uffd = match open_uffd(cx) {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, "memory: no userfaultfd; filling with preadv/process_vm_writev");
            return Ok(None);
        }
    };
    let mut registered = Vec::new();
    for &vi in fill {
        let v = &vmas[vi];
        if let Err(e) = uffd.register(v.start, v.end - v.start) {
            tracing::info!(
                start = format_args!("{:#x}", v.start),
                end = format_args!("{:#x}", v.end),
                error = %e,
                "memory: cannot register with userfaultfd; filling with preadv/process_vm_writev"
            );
            for v in registered {
                unregister(&uffd, v)?;
            }
            return Ok(None);
        }
        registered.push(v);
    }
    Ok(Some((uffd, registered)))
}

fn unregister(uffd: &mem::Uffd, v: &pb::VmaEntry) -> Result<(), MemoryError> {
    uffd.unregister(v.start, v.end - v.start)
        .map_err(|source| MemoryError::Uffd {
            addr: v.start,
            source,
        })
}

/// Runs `UFFDIO_COPY` for every item, on one thread per CPU (this one included).
fn uffd_copy_all(uffd: &mem::Uffd, items: &[Item], map: &Mapping) -> Result<(), MemoryError> {
    let bytes = map.bytes();
    let next = AtomicUsize::new(0);
    let first_err: Mutex<Option<MemoryError>> = Mutex::new(None);
    let work = |main: bool| loop {
        if first_err.lock().expect("lock").is_some() {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some((o, ranges)) = items.get(i) else {
            break;
        };
        if main {
            if let Some(sig) = crate::sys::proc::interrupted() {
                first_err
                    .lock()
                    .expect("lock")
                    .get_or_insert(MemoryError::interrupted(sig));
                break;
            }
        }
        let mut o = *o;
        for &(addr, len) in ranges {
            if let Err(source) = uffd.copy(addr, &bytes[o..o + len]) {
                first_err
                    .lock()
                    .expect("lock")
                    .get_or_insert(MemoryError::Uffd { addr, source });
                return;
            }
            o += len;
        }
        // Copied: out of cryo's RSS (it stays in the page cache).
        map.release(items[i].0, o - items[i].0);
        crate::progress::advance((o - items[i].0) as u64);
    };
    std::thread::scope(|s| {
        for _ in 1..workers().min(items.len()) {
            s.spawn(|| work(false));
        }
        work(true);
    });
    match first_err.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Makes the puppet read image bytes at `off` into its own memory `ranges` (preadv).
fn puppet_preadv(
    cx: &mut RestoreCx<'_>,
    fd: i32,
    mut off: u64,
    ranges: &[(u64, usize)],
) -> Result<(), MemoryError> {
    let mut left: Vec<(u64, usize)> = ranges.to_vec();
    while !left.is_empty() {
        let iov: Vec<u8> = left
            .iter()
            .flat_map(|&(a, l)| a.to_ne_bytes().into_iter().chain((l as u64).to_ne_bytes()))
            .collect();
        let at = cx.put(8192, &iov)?;
        let n = usize_of(
            cx.named("preadv (page data)")
                .preadv(fd, at, u64_of(left.len()), off)?,
        );
        if n == 0 {
            return Err(TaskError::BadImage("pages image ended early".into()).into());
        }
        off += n as u64;
        // Drop what was read.
        let mut done = n;
        while done > 0 {
            if done >= left[0].1 {
                done -= left[0].1;
                left.remove(0);
            } else {
                left[0].0 += done as u64;
                left[0].1 -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// Can the pages of `v` come lazily (a lazy restore leaves them to the lazy-pages daemon)?
/// Private anonymous memory that is readable, not locked (`mlock` would fault it all in
/// before the daemon has it), not hugetlb and not the vDSO: CRIU's `vma_entry_can_be_lazy`.
pub fn lazy_vma(v: &pb::VmaEntry) -> bool {
    v.status & status::ANON_PRIVATE != 0
        && v.status & (status::VDSO | status::VVAR | status::VSYSCALL) == 0
        && v.flags & (libc::MAP_HUGETLB | libc::MAP_LOCKED) as u32 == 0
        && v.prot & libc::PROT_READ as u32 != 0
}

/// What the lazy-pages daemon serves for one process: the runs of saved pages in its lazy
/// mappings, each from a pages image here or (`remote`) from the page server.
#[derive(Debug, Default)]
pub struct LazyPlan {
    /// (pages image, runs (image offset, address, bytes)) inside lazy mappings.
    pub local: Vec<Source>,
    /// `[start, end)` ranges whose pages are on the page server (`PE_LAZY` only).
    pub remote: Vec<(u64, u64)>,
}

/// The lazy pages of process `vpid` of the images in `dir` (see [`LazyPlan`]).
pub fn lazy_plan(dir: &crate::image::ImageDir, vpid: u32) -> Result<LazyPlan, MemoryError> {
    let mut mm: pb::MmEntry = dir
        .read_one(&format!("mm-{vpid}.img"), crate::image::MM)
        .map_err(TaskError::Image)?;
    split_guards(&mut mm)?;
    let (pages_id, entries) = dir
        .read_pagemap(&format!("pagemap-{vpid}.img"))
        .map_err(TaskError::Image)?
        .ok_or_else(|| {
            TaskError::Image(crate::image::ImageError::Missing {
                path: dir.file(&format!("pagemap-{vpid}.img")),
            })
        })?;
    let (sources, remote) = page_sources_in(dir, vpid, &entries, pages_id)?;
    let lazy: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .filter(|v| lazy_vma(v))
        .map(|v| (v.start, v.end))
        .collect();
    let mut plan = LazyPlan {
        remote: crate::memtrack::intersect(&remote, &lazy),
        ..Default::default()
    };
    for (path, runs) in sources {
        if !runs.is_empty() && is_compressed(&path) {
            return Err(TaskError::BadImage(format!(
                "{}: the pages image is compressed (dump --compress); lazy pages are served from raw images only: restore without --lazy-pages, or dump without --compress",
                path.display()
            ))
            .into());
        }
        let mut keep = Vec::new();
        for (o, a, l) in runs {
            for (s, e) in crate::memtrack::intersect(&[(a, a + l)], &lazy) {
                keep.push((o + (s - a), s, e - s));
            }
        }
        if !keep.is_empty() {
            plan.local.push((path, keep));
        }
    }
    Ok(plan)
}

/// A lazy restore, once the task's children exist (they were forked with no userfaultfd, so
/// each rebuilds its own memory): a userfaultfd made inside the task (without
/// `UFFD_USER_MODE_ONLY`, so the kernel's own accesses wait for pages too), registered over
/// every lazy mapping that has saved pages, and handed with a pidfd of the task to the
/// lazy-pages daemon. From here on a touch of a missing page there waits for the daemon.
pub fn lazy_register(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), MemoryError> {
    let Some(sink) = cx.lazy else {
        return Ok(());
    };
    // The mappings registered must be the final ones.
    cx.run_later()?;
    let has = |v: &pb::VmaEntry| {
        img.pagemap.iter().any(|p| {
            p.flags.unwrap_or(PE_PRESENT) & (PE_PRESENT | PE_PARENT | PE_LAZY) != 0
                && p.vaddr < v.end
                && run_end(p).is_some_and(|e| e > v.start)
        })
    };
    let vmas: Vec<&pb::VmaEntry> = img
        .mm
        .vmas
        .iter()
        .filter(|v| lazy_vma(v) && has(v))
        .collect();
    let fd = cx.userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    let uffd_err = |addr, source| MemoryError::Uffd { addr, source };
    let taken = crate::sys::fd::pidfd_open(cx.pid).and_then(|p| {
        let t = crate::sys::fd::pidfd_getfd(std::os::fd::AsFd::as_fd(&p), fd)?;
        Ok((p, t))
    });
    cx.close(fd)?;
    let (pidfd, taken) = taken.map_err(|e| uffd_err(0, e))?;
    let uffd = mem::Uffd::new_lazy(taken).map_err(|e| uffd_err(0, e))?;
    for v in &vmas {
        uffd.register(v.start, v.end - v.start)
            .map_err(|e| uffd_err(v.start, e))?;
    }
    sink.send(img.pid, uffd.fd(), &pidfd).map_err(|e| {
        MemoryError::from(TaskError::Memory {
            pid: cx.pid,
            addr: 0,
            what: "handing the userfaultfd to the lazy-pages daemon",
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    tracing::info!(
        pid = cx.pid,
        mappings = vmas.len(),
        "memory: lazy mappings registered and handed to the lazy-pages daemon"
    );
    Ok(())
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP)`: code/data/brk/stack/args/env boundaries, auxv, exe.
/// `b`: calls to run first, in the same stop when no exe fd has to be opened (a child).
fn set_mm_map(cx: &mut RestoreCx<'_>, img: &TaskImages, mut b: Batch) -> Result<(), MemoryError> {
    let mm = &img.mm;
    let exe = cx.reg(mm.exe_file_id)?.name.clone();
    // A child inherits its parent's exe link, which the kernel will not replace while the
    // file is mapped (EBUSY): leave an equal one alone.
    let same = |a: std::io::Result<std::fs::Metadata>, b: std::io::Result<std::fs::Metadata>| {
        use std::os::unix::fs::MetadataExt;
        match (a, b) {
            (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
            _ => false,
        }
    };
    // The saved path is the task's own view: look it up inside the puppet's root.
    // A task in a nested mount namespace that pivoted away from the root its program is
    // on: that program is found in the tree's root namespace (below).
    let elsewhere = || -> std::io::Result<std::fs::Metadata> {
        use std::os::fd::AsFd;
        match cx.objs.borrow().root_mnt_ns_root(img.ids.mnt_ns_id) {
            Some(root) => Ok(std::fs::File::from(crate::sys::fd::open_in_root_fd(
                root?.as_fd(),
                &exe,
                libc::O_PATH | libc::O_CLOEXEC,
            )?)
            .metadata()?),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    };
    let exe_fd = if same(
        std::fs::metadata(format!("/proc/{}/exe", cx.pid)),
        crate::sys::fd::stat_in_root(&format!("/proc/{}/root", cx.pid), &exe)
            .or_else(|_| elsewhere()),
    ) {
        -1
    } else {
        cx.batch(&std::mem::take(&mut b))?;
        match cx.open(&exe, libc::O_RDONLY as u32) {
            Ok(fd) => fd,
            // Not in its namespace (left on the root it pivoted away from).
            Err(err) if unreachable_path(&err) => {
                super::files::open_in_root_ns(cx, img.ids.mnt_ns_id, &exe, libc::O_RDONLY)?
                    .ok_or(err)?
            }
            Err(err) => return Err(err.into()),
        }
    };
    // struct prctl_mm_map: 11 u64, auxv pointer, auxv_size u32, exe_fd u32.
    let words = if mm.cryo_saved_auxv.is_empty() {
        &mm.mm_saved_auxv
    } else {
        &mm.cryo_saved_auxv
    };
    let auxv: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let auxv_addr = cx.put(1024, &auxv)?;
    let mut m = Vec::with_capacity(112);
    for v in [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_addr,
    ] {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    // At most a few hundred bytes of auxv (`mm_saved_auxv` is bounded by the kernel's).
    let auxv_len = u32::try_from(auxv.len())
        .map_err(|_| TaskError::BadImage(format!("mm-{}.img: auxv too long", img.pid)))?;
    m.extend_from_slice(&auxv_len.to_ne_bytes());
    m.extend_from_slice(&exe_fd.to_ne_bytes());
    let addr = cx.put(512, &m)?;
    b.named("prctl(PR_SET_MM, PR_SET_MM_MAP)").prctl(
        libc::PR_SET_MM,
        [arg(libc::PR_SET_MM_MAP), addr, m.len() as u64, 0],
    )?;
    if mm.thp_disabled == Some(true) {
        b.prctl(libc::PR_SET_THP_DISABLE, [1, 0, 0, 0])?;
    }
    if exe_fd < 0 {
        // Nothing to close after it: run with the next batch (the task attributes').
        cx.batch_later(&b)?;
        return Ok(());
    }
    let r = cx.batch(&b);
    cx.close(exe_fd)?;
    r?;
    Ok(())
}

/// Whether an open failed only because the path is not reachable in the task's mount
/// namespace (then, and only then, it is looked for in the tree's root namespace).
fn unreachable_path(e: &TaskError) -> bool {
    matches!(e.errno(), Some(libc::ENOENT | libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, status: u32) -> pb::VmaEntry {
        pb::VmaEntry {
            start,
            end,
            status,
            ..Default::default()
        }
    }

    #[test]
    fn guard_ranges_must_lie_inside_the_saved_mappings() {
        let mm = |guard: (u64, u64)| pb::MmEntry {
            vmas: vec![
                vma(0x10000, 0x20000, 0),
                vma(0x20000, 0x30000, 0),
                vma(0x40000, 0x50000, 0),
                vma(guard.0, guard.1, status::GUARD),
            ],
            ..Default::default()
        };
        // Inside one mapping, and across two that follow one another.
        for ok in [(0x11000, 0x12000), (0x1f000, 0x21000)] {
            let mut m = mm(ok);
            assert_eq!(split_guards(&mut m).unwrap(), vec![ok]);
            assert_eq!(m.vmas.len(), 3);
        }
        // Over a gap, outside every mapping, unaligned, empty.
        for bad in [
            (0x2f000, 0x41000),
            (0x60000, 0x61000),
            (0x11000, 0x11800),
            (0x12000, 0x12000),
        ] {
            let e = split_guards(&mut mm(bad)).unwrap_err().to_string();
            assert!(e.contains("guard pages"), "{e}");
        }
    }
}
