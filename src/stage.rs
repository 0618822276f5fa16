//! Memory staged on a migration's destination (`cryo receive` restoring in full).
//!
//! Each pre-copy round's pages of every process of the tree are written, as they arrive,
//! into `receive`'s own anonymous memory, laid out as in the process: the page at address
//! `A` of the `k`-th process staged lives at `place(k, A)` in one of 1 GiB windows (a fixed
//! translation of the process's addresses, one per process, so that the pages of one
//! mapping are one mapping here too and the processes' windows do not meet). Later rounds
//! overwrite what they wrote again, the final round (the tree frozen) only its few pages.
//! The restore's root puppet, a fork of `receive`, inherits every window, and each puppet
//! forked from it those of the processes not shaped yet; each `mremap`s its own staged
//! ranges onto its mappings: page tables move, no page is copied while the tree is frozen
//! (`kinds::memory`, restore side). A puppet unmaps its own windows once its pages are
//! moved and the others' once its children are forked; `receive` drops its copy as soon as
//! the root's pages are moved, so the pages are the restored processes' alone (their
//! writes do not copy them).
//!
//! The received images stay as they are (the stage is a copy): a window that cannot be
//! mapped, a compressed pages image, a mapping the stage does not hold entirely, are
//! restored from the images as before.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::image::ImageDir;
use crate::sys::mem::Mapping;
use crate::sys::PAGE_SIZE;

/// Size (and alignment) of a window.
pub const WINDOW: u64 = 1 << 30;
/// Transparent huge page size.
const HUGE: u64 = 2 << 20;
/// A round staging this much of a process is collapsed into huge pages.
const COLLAPSE_FROM: u64 = 64 << 20;
/// The translation between the process's addresses and the stage's.
const MIRROR: u64 = 0x4000_0000_0000;
/// The processes' translations differ in these address bits (40 to 45): up to 64
/// processes are staged, the others restored from the images.
const SLOT_SHIFT: u32 = 40;
const SLOTS: u64 = 64;

/// Where the page at `addr` of the process lives in the stage (the root's translation).
pub fn mirror(addr: u64) -> u64 {
    if addr >= MIRROR {
        addr - MIRROR
    } else {
        addr + MIRROR
    }
}

/// Where the page at `addr` of the `k`-th process staged lives in the stage.
fn place(k: u64, addr: u64) -> u64 {
    mirror(addr) ^ (k << SLOT_SHIFT)
}

/// The staged memory of a tree (its processes by their PID in the images).
pub struct Stage {
    root: u32,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    procs: BTreeMap<u32, Proc>,
    /// receive's mappings of every window (dropped by `release`).
    maps: Vec<Mapping>,
    /// Staging stopped (a compressed image, a read error): nothing is staged any more and
    /// the restore ignores the stage.
    off: bool,
    /// receive's copy is dropped: the windows live on in the puppets only.
    released: bool,
}

/// What the stage holds of one process.
#[derive(Default)]
struct Proc {
    /// Its translation (`place`).
    k: u64,
    /// Its mapped windows: the process address they start at, their stage address.
    windows: BTreeMap<u64, u64>,
    /// Windows that could not be mapped (something of receive's own is there).
    refused: Vec<u64>,
    /// Process address ranges the stage holds (sorted, disjoint, merged).
    have: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.lock().expect("lock");
        f.debug_struct("Stage")
            .field("root", &self.root)
            .field("processes", &i.procs.len())
            .field(
                "windows",
                &i.procs.values().map(|p| p.windows.len()).sum::<usize>(),
            )
            .field("off", &i.off)
            .finish()
    }
}

impl Stage {
    /// The stage of the tree whose root is `root` (its PID in the images).
    pub fn new(root: u32) -> Stage {
        Stage {
            root,
            inner: Mutex::default(),
        }
    }

    /// The tree's root.
    pub fn root(&self) -> u32 {
        self.root
    }

    /// Copies the pages the images of one round (`dir`) hold for the tree's processes into
    /// the stage; returns the bytes staged. An error stops staging (the restore then reads
    /// every page from the images).
    pub fn absorb(&self, dir: &Path) -> Result<u64, String> {
        let mut i = self.inner.lock().expect("lock");
        if i.off || i.released {
            return Ok(0);
        }
        let r = absorb_round(&mut i, self.root, dir);
        if r.is_err() {
            i.off = true;
            i.maps.clear();
            i.procs.clear();
        }
        r
    }

    /// Every window of every process, as (process address, stage address) pairs; none
    /// once staging stopped.
    pub fn windows(&self) -> Vec<(u64, u64)> {
        let i = self.inner.lock().expect("lock");
        i.procs
            .values()
            .flat_map(|p| p.windows.iter().map(|(&w, &at)| (w, at)))
            .collect()
    }

    /// Process `pid`'s windows (process address, stage address).
    pub fn windows_of(&self, pid: u32) -> Vec<(u64, u64)> {
        let i = self.inner.lock().expect("lock");
        i.procs
            .get(&pid)
            .map(|p| p.windows.iter().map(|(&w, &at)| (w, at)).collect())
            .unwrap_or_default()
    }

    /// The address ranges of process `pid` the stage holds (sorted, disjoint).
    pub fn have(&self, pid: u32) -> Vec<(u64, u64)> {
        let i = self.inner.lock().expect("lock");
        i.procs
            .get(&pid)
            .map(|p| p.have.clone())
            .unwrap_or_default()
    }

    /// Where `[start, end)` of process `pid` is in the stage, if every window it spans is
    /// mapped (the caller checks that they are one mapping).
    pub fn source(&self, pid: u32, start: u64, end: u64) -> Option<u64> {
        let i = self.inner.lock().expect("lock");
        let p = i.procs.get(&pid)?;
        let mut w = start & !(WINDOW - 1);
        while w < end {
            if *p.windows.get(&w)? != place(p.k, w) {
                return None;
            }
            w = w.checked_add(WINDOW)?;
        }
        // One translation over the whole range only.
        let (a, b) = (place(p.k, start), place(p.k, end - 1));
        (b > a && b - a == end - 1 - start).then_some(a)
    }

    /// Drops receive's copy of the stage (the puppets have theirs), in a thread of its own:
    /// unmapping 256 MiB of pages shared with the puppets takes tens of milliseconds the
    /// restore need not wait for (the tree does not run before the commit). What the
    /// stage holds where stays known, for the puppets shaped after.
    pub fn release(&self) {
        let mut i = self.inner.lock().expect("lock");
        let maps = std::mem::take(&mut i.maps);
        i.released = true;
        drop(i);
        if maps.is_empty() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = tx.send(maps);
        if let Err(e) = std::thread::Builder::new()
            .name("stage-release".into())
            .spawn(move || drop(rx.recv()))
        {
            tracing::debug!(error = %e, "stage: released in this thread");
        }
    }
}

/// The PIDs of the processes whose pagemaps `dir` holds (`pagemap-PID.img`), the root first.
fn pids_in(dir: &Path, root: u32) -> Result<Vec<u32>, String> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?
                .strip_prefix("pagemap-")?
                .strip_suffix(".img")?
                .parse()
                .ok()
        })
        .collect();
    pids.sort_unstable_by_key(|&p| (p != root, p));
    Ok(pids)
}

fn absorb_round(i: &mut Inner, root: u32, dir: &Path) -> Result<u64, String> {
    let d = ImageDir::open(dir).map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    for pid in pids_in(dir, root)? {
        let k = match i.procs.get(&pid) {
            Some(p) => p.k,
            None => {
                // The root is always the first (translation 0, `mirror`).
                let k = if pid == root {
                    0
                } else {
                    u64::try_from(i.procs.keys().filter(|&&p| p != root).count() + 1)
                        .unwrap_or(u64::MAX)
                };
                if k >= SLOTS {
                    continue;
                }
                i.procs.insert(
                    pid,
                    Proc {
                        k,
                        ..Proc::default()
                    },
                );
                k
            }
        };
        let Inner { procs, maps, .. } = &mut *i;
        let p = procs.get_mut(&pid).expect("inserted above");
        debug_assert_eq!(p.k, k);
        bytes += absorb_into(p, maps, &d, pid, dir)?;
    }
    Ok(bytes)
}

fn absorb_into(
    p: &mut Proc,
    maps: &mut Vec<Mapping>,
    d: &ImageDir,
    pid: u32,
    dir: &Path,
) -> Result<u64, String> {
    let Some((pages_id, entries)) = d
        .read_pagemap(&format!("pagemap-{pid}.img"))
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    let (path, compressed) = crate::image::pages::file_of(d, &format!("pages-{pages_id}.img"))
        .map_err(|e| e.to_string())?;
    if compressed {
        return Err(format!(
            "{}: compressed pages are not staged",
            path.display()
        ));
    }
    let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut off = 0u64;
    let mut bytes = 0u64;
    let mut got: Vec<(u64, u64)> = Vec::new();
    for e in &entries {
        let n = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        let len = n
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| format!("{}: a page run overflows", dir.display()))?;
        let flags = e.flags.unwrap_or(if e.in_parent == Some(true) {
            crate::memtrack::PE_PARENT
        } else {
            crate::memtrack::PE_PRESENT
        });
        if flags & crate::memtrack::PE_PRESENT == 0 {
            continue;
        }
        let end = e
            .vaddr
            .checked_add(len)
            .filter(|&e| e <= 1 << 47)
            .ok_or_else(|| format!("{}: pages at {:#x} overflow", dir.display(), e.vaddr))?;
        let mut a = e.vaddr;
        let mut o = off;
        while a < end {
            let w = a & !(WINDOW - 1);
            let take = (w + WINDOW).min(end) - a;
            if !p.windows.contains_key(&w) && !p.refused.contains(&w) {
                match Mapping::anon_fixed(
                    place(p.k, w),
                    crate::num::usize_of(WINDOW),
                    libc::PROT_READ | libc::PROT_WRITE,
                ) {
                    Ok(m) => {
                        p.windows.insert(w, m.addr());
                        maps.push(m);
                    }
                    Err(err) => {
                        tracing::info!(pid, window = format_args!("{w:#x}"), error = %err, "stage: a window cannot be mapped here; its pages come from the images");
                        p.refused.push(w);
                    }
                }
            }
            if let Some(&at) = p.windows.get(&w) {
                let m = maps
                    .iter_mut()
                    .find(|m| m.addr() == at)
                    .ok_or_else(|| format!("stage: window {w:#x} of process {pid} lost"))?;
                let i = usize::try_from(a - w).map_err(|e| e.to_string())?;
                let n = usize::try_from(take).map_err(|e| e.to_string())?;
                f.read_exact_at(&mut m.bytes_mut()[i..i + n], o)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                got.push((a, a + take));
                bytes += take;
            }
            a += take;
            o += take;
        }
        off += len;
    }
    if !got.is_empty() {
        got.extend_from_slice(&p.have);
        p.have = merge(got);
    }
    // A big round (the first): its whole 2 MiB blocks become transparent huge pages, so that
    // the restore's forks copy and its release drops one entry per 2 MiB, not 512.
    if bytes >= COLLAPSE_FROM && std::env::var_os("CRYO_STAGE_NO_COLLAPSE").is_none() {
        let t = std::time::Instant::now();
        let mut n = 0u64;
        for &(s, e) in &p.have {
            let mut b = s.next_multiple_of(HUGE);
            while b + HUGE <= e {
                let w = b & !(WINDOW - 1);
                if let Some(&at) = p.windows.get(&w) {
                    if let Some(m) = maps.iter().find(|m| m.addr() == at) {
                        let i = crate::num::usize_of(b - w);
                        if m.collapse(i, crate::num::usize_of(HUGE)).is_ok() {
                            n += 1;
                        }
                    }
                }
                b += HUGE;
            }
        }
        tracing::info!(
            pid,
            huge = n,
            ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
            "stage: collapsed"
        );
    }
    Ok(bytes)
}

/// Sorted, disjoint, merged ranges of `v`.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_its_own_inverse_and_keeps_windows_contiguous() {
        for a in [
            0x40_0000u64,
            0x5555_5555_0000,
            0x7fff_ffff_f000,
            MIRROR,
            MIRROR - 4096,
        ] {
            assert_eq!(mirror(mirror(a)), a);
            for k in 0..SLOTS {
                // Each process's translation stays in the user half and is its own inverse.
                assert!(place(k, a) < 1 << 47);
                assert_eq!(place(k, a) ^ (k << SLOT_SHIFT), mirror(a));
            }
        }
        assert_eq!(mirror(0x7f00_4000_0000) + WINDOW, mirror(0x7f00_8000_0000));
        assert_eq!(
            place(3, 0x7f00_4000_0000) + WINDOW,
            place(3, 0x7f00_8000_0000)
        );
        // Two processes with the same layout (a fork) are staged apart.
        assert_ne!(place(0, 0x5555_0000_0000), place(1, 0x5555_0000_0000));
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 50)]),
            vec![(0, 8), (10, 30), (40, 50)]
        );
    }
}
