//! Memory write tracking between the steps of an incremental dump (`pre-dump` chains,
//! `dump --prev-images-dir --track-mem`), and the parent side of those chains.
//!
//! A step saves only the pages written since the step before; the others are marked
//! `PE_PARENT` in its pagemap and read through the `parent` link at restore. What was written
//! is known by one of three methods, chosen once per run (`Method::detect`) and named in the
//! log and by `cryo check --feature mem_dirty_track`:
//!
//! - `uffd-wp`: a userfaultfd made inside each process (an injected `userfaultfd`), taken by
//!   cryo, with `UFFD_FEATURE_WP_ASYNC | WP_UNPOPULATED` (Linux 6.7+). Private VMAs are
//!   registered in write-protect mode and protected; a write just clears the page's protection
//!   in the kernel (nothing is delivered, nothing blocks), and `PAGEMAP_SCAN` reports it as
//!   `PAGE_IS_WRITTEN`, re-protecting it in the same call (`PM_SCAN_WP_MATCHING`). The
//!   userfaultfd must stay open between the steps (closing the last fd removes the tracking):
//!   a holder process (`cryo __memtrack-hold`, spawned by the step, killed by the next one or
//!   when every tracked process has exited) keeps it; the next step takes it back with
//!   `pidfd_getfd`, as named by `cryo-memtrack.json` in the step's images directory.
//! - `soft-dirty`: `/proc/PID/clear_refs` (4) and `PAGE_IS_SOFT_DIRTY`, where the kernel has
//!   `CONFIG_MEM_SOFT_DIRTY` and no asynchronous write protection. Nothing to hold.
//! - `full`: every step saves every page (still a valid chain).
//!
//! The program does not see the tracking: nothing is added to its fd table, its own
//! userfaultfds keep their ranges (a range already registered stays untracked and is saved
//! whole each step), `mprotect`, `fork` (the child is not tracked) and `MAP_SHARED` memory
//! (saved whole, as always) behave as before. New VMAs (mmap, brk, mremap) are untracked and
//! saved whole. A page is marked in the parent only if it is present now, was not written and
//! the parent chain holds it; everything else is copied, so a gap in the tracking costs bytes,
//! never correctness. Tracking ends with the final dump, or when a step fails (`Chain::end`).
//!
//! What stays visible: VMAs registered by cryo carry the `uw` smaps flag, a heap that grows
//! after a step gets a second VMA, and a range cryo registered cannot be registered by the
//! program's own userfaultfd (EBUSY) until the chain ends.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::{pb, ImageDir};
use crate::sys::mem::{self, page_is, pm_scan, Uffd};
use crate::sys::PAGE_SIZE;

/// The record of a step's tracking, in its images directory.
pub const RECORD: &str = "cryo-memtrack.json";
/// The images directory's link to the previous step (CRIU's `parent`).
pub const PARENT_LINK: &str = "parent";
/// The hidden command of the holder process.
pub const HOLD_CMD: &str = "__memtrack-hold";
/// The longest chain followed (a loop of links is a damaged set).
pub const MAX_DEPTH: usize = 64;

/// `pagemap_entry.flags` (CRIU's PE_*).
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

/// Why tracking or a chain failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{what} of process {pid}")]
    Io {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("previous images {}: {what}", dir.display())]
    Parent { dir: PathBuf, what: String },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("cannot start the tracking holder")]
    Holder(#[source] std::io::Error),
}

/// How written pages are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    UffdWp,
    SoftDirty,
    Full,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::UffdWp => "uffd-wp",
            Method::SoftDirty => "soft-dirty",
            Method::Full => "full",
        }
    }

    /// The best method this kernel offers (`CRYO_MEM_TRACK=uffd-wp|soft-dirty|full` forces
    /// one, for tests).
    pub fn detect() -> Method {
        match std::env::var("CRYO_MEM_TRACK").as_deref() {
            Ok("full") => return Method::Full,
            Ok("soft-dirty") => return Method::SoftDirty,
            Ok("uffd-wp") => return Method::UffdWp,
            _ => {}
        }
        if uffd_wp_async() {
            Method::UffdWp
        } else if soft_dirty() {
            Method::SoftDirty
        } else {
            Method::Full
        }
    }

    /// What `cryo check --feature mem_dirty_track` says.
    pub fn describe(self) -> &'static str {
        match self {
            Method::UffdWp => "written pages tracked with userfaultfd async write protection and PAGEMAP_SCAN (PAGE_IS_WRITTEN)",
            Method::SoftDirty => "written pages tracked with soft-dirty bits",
            Method::Full => "no write tracking here (no UFFD_FEATURE_WP_ASYNC, no soft-dirty): each step of an incremental dump saves every page",
        }
    }
}

/// Can a userfaultfd have asynchronous write protection here?
fn uffd_wp_async() -> bool {
    mem::userfaultfd_local()
        .and_then(Uffd::new_wp_async)
        .is_ok()
}

/// Does this kernel keep soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)? A page of cryo's written
/// after `clear_refs` must show bit 55 in pagemap.
fn soft_dirty() -> bool {
    let Ok(mut m) = mem::Mapping::anon_shared(4096) else {
        return false;
    };
    // Private memory would be better, but a shared page reports soft-dirty the same way.
    m.write_at(0, &[1]);
    if std::fs::write("/proc/self/clear_refs", "4").is_err() {
        return false;
    }
    m.write_at(0, &[2]);
    let Ok(f) = File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut e = [0u8; 8];
    use std::os::unix::fs::FileExt;
    if f.read_exact_at(&mut e, m.addr() / PAGE_SIZE * 8).is_err() {
        return false;
    }
    u64::from_le_bytes(e) & (1 << 55) != 0
}

/// A process's start time (field 22 of /proc/PID/stat), to tell it from a later one with
/// the same PID.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `h` is still the holder a step started: same start time, and a process running
/// cryo's own executable as `cryo __memtrack-hold`. The record comes from an images
/// directory, which may be hostile: without this a crafted record would make cryo kill, or
/// take fds from, any process it names.
fn is_holder(h: Proc) -> bool {
    if start_time(h.pid) != Some(h.start) {
        return false;
    }
    let exe = |p: &str| std::fs::read_link(p).ok();
    let same_exe = match (exe(&format!("/proc/{}/exe", h.pid)), exe("/proc/self/exe")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", h.pid)).unwrap_or_default();
    same_exe
        && cmdline
            .split(|b| *b == 0)
            .nth(1)
            .is_some_and(|a| a == HOLD_CMD.as_bytes())
}

/// Whether an fd taken from a holder is a userfaultfd (and not whatever a crafted record
/// pointed at).
fn is_userfaultfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
}

/// `cryo-memtrack.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub method: Option<Method>,
    /// The process holding the userfaultfds (uffd-wp).
    pub holder: Option<Proc>,
    pub tasks: Vec<TaskRec>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

/// One tracked process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRec {
    /// Host PID and start time.
    pub proc: Proc,
    /// PID in the images (pagemap-VPID.img).
    pub vpid: u32,
    /// The userfaultfd's number in the holder.
    pub fd: Option<i32>,
    /// The ranges registered (VMAs when they were registered).
    pub ranges: Vec<(u64, u64)>,
}

/// The tracking of one process during a step.
pub struct Task {
    pub proc: Proc,
    pub vpid: u32,
    pub uffd: Option<Uffd>,
    pub ranges: Vec<(u64, u64)>,
    /// Tracked since the previous step (its written pages can be trusted).
    pub since_parent: bool,
}

/// An incremental dump's state during one step: the parent (if any) and the tracking.
pub struct Chain {
    pub method: Method,
    /// Tracking goes on after this step (a pre-dump, or `--track-mem --leave-running`): the
    /// written pages found are protected again and new ranges registered.
    pub rearm: bool,
    /// The previous step's images directory.
    pub parent: Option<PathBuf>,
    old_holder: Option<Proc>,
    tasks: HashMap<i32, Task>,
    coverage: HashMap<u32, Vec<(u64, u64)>>,
    vpids: HashMap<i32, u32>,
    /// Page server mode: the parent's pagemaps are on the server, which only says whether
    /// it has one for a process (`PS_IOV_PARENT`).
    remote_parent: HashMap<u32, bool>,
}

impl Chain {
    /// Opens a step: `prev` is `--prev-images-dir` (relative to `dir`, as CRIU takes it).
    /// The `parent` link is made in `dir`. `track`: take the parent's tracking (its
    /// userfaultfds from the holder).
    pub fn open(dir: &ImageDir, prev: Option<&str>, track: bool) -> Result<Chain, TrackError> {
        let method = Method::detect();
        let mut chain = Chain {
            method,
            rearm: false,
            parent: None,
            old_holder: None,
            tasks: HashMap::new(),
            coverage: HashMap::new(),
            vpids: HashMap::new(),
            remote_parent: HashMap::new(),
        };
        let Some(prev) = prev else {
            tracing::info!(
                method = method.name(),
                "memory tracking: {}",
                method.describe()
            );
            return Ok(chain);
        };
        let link = dir.file(PARENT_LINK);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(prev, &link).map_err(|e| TrackError::Parent {
            dir: link.clone(),
            what: format!("cannot make the parent link: {e}"),
        })?;
        let pdir = dir.file(PARENT_LINK);
        // A step that fails here leaves no `parent` link behind (a later dump into the same
        // directory would otherwise read through it).
        let fail = |what: String| {
            let _ = std::fs::remove_file(&link);
            TrackError::Parent {
                dir: pdir.clone(),
                what,
            }
        };
        if !pdir.join("inventory.img").exists() {
            return Err(fail("no inventory.img: not an images directory (give --prev-images-dir relative to the images directory, as CRIU does)".into()));
        }
        let rec: Record = match std::fs::read(pdir.join(RECORD)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| fail(format!("{RECORD}: {e}")))?,
            Err(_) => Record::default(), // CRIU's images, or a step that tracked nothing
        };
        chain.parent = Some(pdir.clone());
        if let (Some(h), true) = (rec.holder, track && method == Method::UffdWp) {
            chain.take_from_holder(h, &rec.tasks);
        } else if track && method == Method::SoftDirty && rec.method == Some(Method::SoftDirty) {
            for t in &rec.tasks {
                if start_time(t.proc.pid) == Some(t.proc.start) {
                    chain.tasks.insert(
                        t.proc.pid,
                        Task {
                            proc: t.proc,
                            vpid: t.vpid,
                            uffd: None,
                            ranges: Vec::new(),
                            since_parent: true,
                        },
                    );
                }
            }
        }
        tracing::info!(
            method = method.name(),
            parent = %pdir.display(),
            tracked = chain.tasks.len(),
            "memory tracking: {}",
            method.describe()
        );
        Ok(chain)
    }

    /// Takes the parent step's userfaultfds from its holder (which is killed once this step
    /// is done or fails). A task whose fd cannot be had is simply untracked (saved whole).
    fn take_from_holder(&mut self, h: Proc, tasks: &[TaskRec]) {
        if !is_holder(h) {
            tracing::warn!(
                holder = h.pid,
                "memory tracking: the previous step's holder is gone; every page is saved"
            );
            return;
        }
        self.old_holder = Some(h);
        let Ok(pidfd) = crate::sys::fd::pidfd_open(h.pid) else {
            return;
        };
        for t in tasks {
            let Some(fd) = t.fd else { continue };
            if start_time(t.proc.pid) != Some(t.proc.start) {
                continue;
            }
            match crate::sys::fd::pidfd_getfd(pidfd.as_fd(), fd) {
                Ok(f) if !is_userfaultfd(&f) => tracing::warn!(
                    pid = t.proc.pid,
                    fd,
                    "memory tracking: the holder's fd is not a userfaultfd; every page is saved"
                ),
                Ok(f) => {
                    self.tasks.insert(
                        t.proc.pid,
                        Task {
                            proc: t.proc,
                            vpid: t.vpid,
                            uffd: Some(Uffd::from_tracking(f)),
                            ranges: t.ranges.clone(),
                            since_parent: true,
                        },
                    );
                }
                Err(e) => tracing::warn!(
                    pid = t.proc.pid,
                    error = %e,
                    "memory tracking: cannot take the userfaultfd from the holder; every page is saved"
                ),
            }
        }
    }

    /// Records the PID the images give host process `pid` (they differ in a PID namespace).
    pub fn set_vpid(&mut self, pid: i32, vpid: u32) {
        self.vpids.insert(pid, vpid);
    }

    /// Page server mode: whether the server's parent directory has pages of `vpid`.
    pub fn set_remote_parent(&mut self, vpid: u32, has: bool) {
        self.remote_parent.insert(vpid, has);
    }

    /// The PID the images give host process `pid`.
    pub fn vpid(&self, pid: i32) -> u32 {
        self.vpids
            .get(&pid)
            .copied()
            .unwrap_or_else(|| crate::num::img_pid(pid))
    }

    /// The tracking of `pid`, if any.
    pub fn task(&self, pid: i32) -> Option<&Task> {
        self.tasks.get(&pid)
    }

    /// Does `pid` need a userfaultfd made inside it (uffd-wp, tracking wanted, none yet)?
    pub fn needs_uffd(&self, pid: i32) -> bool {
        self.method == Method::UffdWp && self.tasks.get(&pid).is_none_or(|t| t.uffd.is_none())
    }

    /// Adopts a userfaultfd made inside `pid` (taken into cryo) for tracking from now on.
    pub fn adopt(&mut self, pid: i32, vpid: u32, fd: OwnedFd) -> Result<(), TrackError> {
        let uffd = Uffd::new_wp_async(fd).map_err(|source| TrackError::Io {
            pid,
            what: "UFFDIO_API (WP_ASYNC)",
            source,
        })?;
        let start = start_time(pid).unwrap_or(0);
        self.tasks.insert(
            pid,
            Task {
                proc: Proc { pid, start },
                vpid,
                uffd: Some(uffd),
                ranges: Vec::new(),
                since_parent: false,
            },
        );
        Ok(())
    }

    /// The pages of the parent chain for `vpid`: every range its pagemap names (present there
    /// or further up).
    fn coverage(&mut self, vpid: u32) -> &[(u64, u64)] {
        if let Some(&has) = self.remote_parent.get(&vpid) {
            // Only the server knows; its parent was written by the step that tracked.
            let all = if has { vec![(0, u64::MAX)] } else { Vec::new() };
            return self.coverage.entry(vpid).or_insert(all);
        }
        let parent = self.parent.clone();
        self.coverage.entry(vpid).or_insert_with(|| {
            let Some(p) = parent else { return Vec::new() };
            let Ok(d) = ImageDir::open(&p) else {
                return Vec::new();
            };
            match d.read_pagemap(&format!("pagemap-{vpid}.img")) {
                Ok(Some((_, entries))) => {
                    let mut v: Vec<(u64, u64)> = entries
                        .iter()
                        .filter(|e| e.flags.unwrap_or(PE_PRESENT) & (PE_PRESENT | PE_PARENT) != 0)
                        .filter_map(|e| Some((e.vaddr, run_end(e)?)))
                        .collect();
                    v.sort_unstable();
                    v
                }
                _ => Vec::new(),
            }
        })
    }

    /// Splits the pages of one private VMA `[start, end)` of `pid` into those to copy and
    /// those the parent holds. With `rearm` the written pages are protected again and an
    /// untracked VMA is registered. The tree is frozen.
    pub fn scan_vma(
        &mut self,
        pid: i32,
        vpid: u32,
        pagemap: &File,
        start: u64,
        end: u64,
    ) -> Result<Pages, TrackError> {
        let rearm = self.rearm;
        let io = |what| move |source| TrackError::Io { pid, what, source };
        let present = present_pages(pagemap, start, end).map_err(io("PAGEMAP_SCAN"))?;
        let dirty_bit = match self.method {
            Method::UffdWp => page_is::WRITTEN,
            Method::SoftDirty => page_is::SOFT_DIRTY,
            Method::Full => 0,
        };
        let tracked = self.tasks.get(&pid).is_some_and(|t| {
            t.since_parent
                && (self.method == Method::SoftDirty
                    || t.ranges.iter().any(|&(s, e)| s < end && e > start))
        }) && self.parent.is_some()
            && dirty_bit != 0;
        // Is this VMA write-protected asynchronously (ours: we registered an overlapping range)?
        let wp_ok = |pm: &File| {
            let mut scratch = Vec::new();
            mem::pagemap_scan_flags(
                pm,
                pm_scan::CHECK_WPASYNC,
                start,
                end,
                0,
                0,
                page_is::PRESENT,
                &mut scratch,
            )
            .is_ok()
        };
        let mut pages = Pages::default();
        if tracked && (self.method != Method::UffdWp || wp_ok(pagemap)) {
            let mut written = Vec::new();
            let flags = if rearm && self.method == Method::UffdWp {
                pm_scan::WP_MATCHING
            } else {
                0
            };
            mem::pagemap_scan_flags(
                pagemap,
                flags,
                start,
                end,
                page_is::PFNZERO | page_is::FILE,
                page_is::PFNZERO | page_is::FILE | dirty_bit,
                page_is::PRESENT | page_is::SWAPPED,
                &mut written,
            )
            .map_err(io("PAGEMAP_SCAN (written pages)"))?;
            let clean = subtract(&present, &written);
            let cover = self.coverage(vpid).to_vec();
            pages.parent = intersect(&clean, &cover);
            let missing = subtract(&clean, &pages.parent);
            if !missing.is_empty() {
                // Present, not written, yet not in the parent: a page that appeared without a
                // write (e.g. read from swap after the parent step); copied.
                tracing::debug!(
                    pid,
                    start = format_args!("{start:#x}"),
                    pages = missing
                        .iter()
                        .map(|(s, e)| (e - s) / PAGE_SIZE)
                        .sum::<u64>(),
                    first = format_args!("{:#x}", missing[0].0),
                    "memory tracking: clean pages the parent does not hold"
                );
            }
            pages.copy = subtract(&present, &pages.parent);
        } else {
            pages.copy = present;
            if rearm && self.method == Method::UffdWp {
                self.register(pid, start, end);
            }
        }
        Ok(pages)
    }

    /// Registers `[start, end)` of `pid` for write tracking and protects it all (pages now
    /// present are being saved by this step). A range the kernel refuses (the program's own
    /// userfaultfd has it: EBUSY) stays untracked.
    fn register(&mut self, pid: i32, start: u64, end: u64) {
        let Some(t) = self.tasks.get_mut(&pid) else {
            return;
        };
        let Some(u) = &t.uffd else { return };
        let r = u
            .register_wp(start, end - start)
            .and_then(|()| u.write_protect(start, end - start));
        match r {
            Ok(()) => t.ranges.push((start, end)),
            Err(e) => tracing::info!(
                pid,
                start = format_args!("{start:#x}"),
                end = format_args!("{end:#x}"),
                error = %e,
                "memory tracking: range not tracked (saved whole at every step)"
            ),
        }
    }

    /// Soft-dirty: clears the bits of `pid` (after its pages were scanned).
    pub fn clear_soft_dirty(&mut self, pid: i32, vpid: u32) -> Result<(), TrackError> {
        if self.method != Method::SoftDirty {
            return Ok(());
        }
        std::fs::write(format!("/proc/{pid}/clear_refs"), "4").map_err(|source| {
            TrackError::Io {
                pid,
                what: "clear_refs (soft-dirty)",
                source,
            }
        })?;
        let start = start_time(pid).unwrap_or(0);
        self.tasks.insert(
            pid,
            Task {
                proc: Proc { pid, start },
                vpid,
                uffd: None,
                ranges: Vec::new(),
                since_parent: true,
            },
        );
        Ok(())
    }

    /// A pre-dump step is done: the userfaultfds go to a new holder, the record is written,
    /// the previous holder is killed. Tasks not in `alive` (host PIDs) are dropped.
    pub fn keep(mut self, dir: &ImageDir, alive: &[i32]) -> Result<(), TrackError> {
        self.tasks.retain(|pid, _| alive.contains(pid));
        let mut rec = Record {
            method: Some(self.method),
            holder: None,
            tasks: Vec::new(),
        };
        let mut fds: Vec<(i32, i32)> = Vec::new();
        for t in self.tasks.values() {
            let fd = t.uffd.as_ref().map(|u| u.fd().as_raw_fd());
            if let Some(fd) = fd {
                fds.push((t.proc.pid, fd));
            }
            rec.tasks.push(TaskRec {
                proc: t.proc,
                vpid: t.vpid,
                fd,
                ranges: t.ranges.clone(),
            });
        }
        if !fds.is_empty() {
            rec.holder = Some(spawn_holder(&self.tasks, &fds)?);
        }
        let json = serde_json::to_vec_pretty(&rec).expect("record serializes");
        if let Err(e) = dir.write_raw(RECORD, &json) {
            if let Some(h) = rec.holder {
                kill_holder(h);
            }
            return Err(e.into());
        }
        self.end();
        Ok(())
    }

    /// The chain ends here (the final dump, or a failed step): the previous holder is killed
    /// and cryo's userfaultfds are closed, which removes every protection.
    pub fn end(&mut self) {
        if let Some(h) = self.old_holder.take() {
            kill_holder(h);
        }
        self.tasks.clear();
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.end();
    }
}

/// The pages of `[start, end)` that hold data: present (not the zero page, not a clean file
/// page) or swapped out. `PAGEMAP_SCAN` reports the write-protection markers that
/// `UFFD_FEATURE_WP_UNPOPULATED` leaves in empty page table entries as `PAGE_IS_SWAPPED` too;
/// they are told from real swap entries by their swap type in `/proc/PID/pagemap` (31,
/// `SWP_PTE_MARKER`) and left out: they are holes.
pub fn present_pages(pagemap: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut present = Vec::new();
    mem::pagemap_scan(
        pagemap,
        start,
        end,
        page_is::PFNZERO | page_is::FILE,
        page_is::PFNZERO | page_is::FILE,
        page_is::PRESENT,
        &mut present,
    )?;
    let mut swapped = Vec::new();
    mem::pagemap_scan(
        pagemap,
        start,
        end,
        page_is::FILE,
        page_is::FILE,
        page_is::SWAPPED,
        &mut swapped,
    )?;
    if swapped.is_empty() {
        return Ok(present);
    }
    use std::os::unix::fs::FileExt;
    const PM_SWAP: u64 = 1 << 62;
    const SWP_PTE_MARKER: u64 = 31;
    let mut real = Vec::new();
    for (s, e) in swapped {
        let n = crate::num::usize_of((e - s) / PAGE_SIZE);
        let mut raw = vec![0u8; n * 8];
        pagemap.read_exact_at(&mut raw, s / PAGE_SIZE * 8)?;
        for (i, w) in raw.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if v & PM_SWAP != 0 && v & 0x1f != SWP_PTE_MARKER {
                let a = s + crate::num::u64_of(i) * PAGE_SIZE;
                match real.last_mut() {
                    Some((_, le)) if *le == a => *le = a + PAGE_SIZE,
                    _ => real.push((a, a + PAGE_SIZE)),
                }
            }
        }
    }
    if real.is_empty() {
        return Ok(present);
    }
    present.extend(real);
    present.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(present.len());
    for (s, e) in present {
        match merged.last_mut() {
            Some((_, le)) if *le >= s => *le = (*le).max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// What one VMA's pages become in a step.
#[derive(Debug, Default)]
pub struct Pages {
    /// Copied into this step's pages image.
    pub copy: Vec<(u64, u64)>,
    /// Marked `PE_PARENT`.
    pub parent: Vec<(u64, u64)>,
}

fn run_end(e: &pb::PagemapEntry) -> Option<u64> {
    let n = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
    e.vaddr.checked_add(n.checked_mul(PAGE_SIZE)?)
}

/// `a` minus `b` (both sorted, disjoint ranges).
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > cur {
                        out.push((cur, bs));
                    }
                    cur = cur.max(be);
                    k += 1;
                }
                _ => {
                    out.push((cur, e));
                    cur = e;
                }
            }
        }
    }
    out
}

/// `a` ∩ `b` (both sorted, disjoint ranges).
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Starts `cryo __memtrack-hold PID:FD...` holding `fds` (cryo's own fd numbers, inherited
/// as they are).
fn spawn_holder(tasks: &HashMap<i32, Task>, fds: &[(i32, i32)]) -> Result<Proc, TrackError> {
    let exe = std::env::current_exe().map_err(TrackError::Holder)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HOLD_CMD)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (pid, fd) in fds {
        cmd.arg(format!("{pid}:{fd}"));
    }
    let owned: Vec<&OwnedFd> = tasks
        .values()
        .filter_map(|t| t.uffd.as_ref().map(Uffd::fd))
        .collect();
    for f in &owned {
        crate::sys::fd::set_cloexec(f.as_fd(), false).map_err(TrackError::Holder)?;
    }
    let child = cmd.spawn();
    for f in &owned {
        let _ = crate::sys::fd::set_cloexec(f.as_fd(), true);
    }
    let child = child.map_err(TrackError::Holder)?;
    let pid = i32::try_from(child.id())
        .map_err(|_| TrackError::Holder(std::io::ErrorKind::InvalidData.into()))?;
    // The holder is reparented once cryo exits; nobody waits for it here.
    drop(child);
    let start = start_time(pid).unwrap_or(0);
    tracing::info!(
        holder = pid,
        tasks = fds.len(),
        "memory tracking: holder started"
    );
    Ok(Proc { pid, start })
}

fn kill_holder(h: Proc) {
    if is_holder(h) {
        let _ = crate::sys::proc::kill(h.pid, libc::SIGKILL);
        tracing::info!(holder = h.pid, "memory tracking: previous holder stopped");
    }
}

/// Ends the tracking a step's record names (its holder), e.g. when the chain is abandoned.
pub fn end_recorded(dir: &Path) {
    if let Ok(b) = std::fs::read(dir.join(RECORD)) {
        if let Ok(rec) = serde_json::from_slice::<Record>(&b) {
            if let Some(h) = rec.holder {
                kill_holder(h);
            }
        }
    }
}

/// The holder's main (`cryo __memtrack-hold PID:FD...`): keeps the userfaultfds open until
/// every tracked process has exited or it is killed.
pub fn hold(args: &[String]) -> std::io::Result<()> {
    let pairs: Vec<(i32, i32)> = args
        .iter()
        .filter_map(|a| {
            let (p, f) = a.split_once(':')?;
            Some((p.parse().ok()?, f.parse().ok()?))
        })
        .collect();
    let keep: Vec<i32> = pairs.iter().map(|p| p.1).collect();
    let _kept = crate::sys::fd::close_all_except(&keep)?;
    let _ = rustix::process::setsid();
    let _ = std::env::set_current_dir("/");
    let mut pidfds: Vec<OwnedFd> = pairs
        .iter()
        .filter_map(|(p, _)| crate::sys::fd::pidfd_open(*p).ok())
        .collect();
    // A pidfd becomes readable when its process exits.
    while !pidfds.is_empty() {
        let mut polls: Vec<rustix::event::PollFd<'_>> = pidfds
            .iter()
            .map(|f| rustix::event::PollFd::new(f, rustix::event::PollFlags::IN))
            .collect();
        if rustix::event::poll(&mut polls, None).is_err() {
            continue;
        }
        let gone: Vec<bool> = polls.iter().map(|p| !p.revents().is_empty()).collect();
        drop(polls);
        let mut i = 0;
        pidfds.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sets() {
        let a = [(0, 10), (20, 30)];
        let b = [(5, 25)];
        assert_eq!(subtract(&a, &b), vec![(0, 5), (25, 30)]);
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25)]);
        assert_eq!(subtract(&a, &[]), a.to_vec());
        assert_eq!(subtract(&a, &[(0, 30)]), vec![]);
        assert_eq!(intersect(&[(0, 4)], &[(4, 8)]), vec![]);
        assert_eq!(
            subtract(&[(0, 30)], &[(2, 3), (5, 6)]),
            vec![(0, 2), (3, 5), (6, 30)]
        );
    }
}
