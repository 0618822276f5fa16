//! Memory staged on a migration's destination (`cryo receive` restoring in full).
//!
//! Each pre-copy round's pages of the tree's root process are written, as they arrive, into
//! `receive`'s own anonymous memory, laid out as in the process: the page at address `A`
//! lives at `mirror(A)` in one of 1 GiB windows (a fixed translation of the process's
//! addresses, so that the pages of one mapping are one mapping here too). Later rounds
//! overwrite what they wrote again, the final round (the tree frozen) only its few pages.
//! The restore's root puppet, a fork of `receive`, inherits the windows and `mremap`s each
//! staged range onto its mapping: page tables move, no page is copied while the tree is
//! frozen (`kinds::memory`, restore side). `receive` drops its own copy as soon as the
//! puppet has moved its pages, so the pages are the restored process's alone (its writes
//! do not copy them).
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
/// A round staging this much is collapsed into huge pages.
const COLLAPSE_FROM: u64 = 64 << 20;
/// The translation between the process's addresses and the stage's.
const MIRROR: u64 = 0x4000_0000_0000;

/// Where the page at `addr` of the process lives in the stage.
pub fn mirror(addr: u64) -> u64 {
    if addr >= MIRROR {
        addr - MIRROR
    } else {
        addr + MIRROR
    }
}

/// The staged memory of process `pid` (its PID in the images).
pub struct Stage {
    pid: u32,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Mapped windows by the process address they start at.
    windows: BTreeMap<u64, Mapping>,
    /// Windows that could not be mapped (something of receive's own is there).
    refused: Vec<u64>,
    /// Process address ranges the stage holds (sorted, disjoint, merged).
    have: Vec<(u64, u64)>,
    /// Staging stopped (a compressed image, a read error): nothing is staged any more and
    /// the restore ignores the stage.
    off: bool,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.lock().expect("lock");
        f.debug_struct("Stage")
            .field("pid", &self.pid)
            .field("windows", &i.windows.len())
            .field("ranges", &i.have.len())
            .field("off", &i.off)
            .finish()
    }
}

impl Stage {
    pub fn new(pid: u32) -> Stage {
        Stage {
            pid,
            inner: Mutex::default(),
        }
    }

    /// The process whose memory this is.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Copies the pages the images of one round (`dir`) hold for the process into the
    /// stage; returns the bytes staged. An error stops staging (the restore then reads
    /// every page from the images).
    pub fn absorb(&self, dir: &Path) -> Result<u64, String> {
        let mut i = self.inner.lock().expect("lock");
        if i.off {
            return Ok(0);
        }
        let r = absorb_into(&mut i, self.pid, dir);
        if r.is_err() {
            i.off = true;
            i.windows.clear();
            i.have.clear();
        }
        r
    }

    /// The stage's windows as (process address, stage address) pairs; none once staging
    /// stopped or the stage was released.
    pub fn windows(&self) -> Vec<(u64, u64)> {
        let i = self.inner.lock().expect("lock");
        i.windows
            .values()
            .map(|m| (unmirror(m.addr()), m.addr()))
            .collect()
    }

    /// The process address ranges the stage holds (sorted, disjoint).
    pub fn have(&self) -> Vec<(u64, u64)> {
        self.inner.lock().expect("lock").have.clone()
    }

    /// Where `[start, end)` of the process is in the stage, if every window it spans is
    /// mapped (the caller checks that they are one mapping).
    pub fn source(&self, start: u64, end: u64) -> Option<u64> {
        let i = self.inner.lock().expect("lock");
        let mut w = start & !(WINDOW - 1);
        while w < end {
            let m = i.windows.get(&w)?;
            if m.addr() != mirror(w) {
                return None;
            }
            w = w.checked_add(WINDOW)?;
        }
        // One translation on both sides of the mirror line only.
        let (a, b) = (mirror(start), mirror(end - 1));
        (b > a && b - a == end - 1 - start).then_some(a)
    }

    /// Drops receive's copy of the stage (the puppet has its own), in a thread of its own:
    /// unmapping 256 MiB of pages shared with the puppet takes tens of milliseconds the
    /// restore need not wait for (the tree does not run before the commit).
    pub fn release(&self) {
        let mut i = self.inner.lock().expect("lock");
        let windows = std::mem::take(&mut i.windows);
        i.have.clear();
        i.off = true;
        drop(i);
        if windows.is_empty() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = tx.send(windows);
        if let Err(e) = std::thread::Builder::new()
            .name("stage-release".into())
            .spawn(move || drop(rx.recv()))
        {
            tracing::debug!(error = %e, "stage: released in this thread");
        }
    }
}

fn unmirror(a: u64) -> u64 {
    // The translation is its own inverse.
    mirror(a)
}

fn absorb_into(i: &mut Inner, pid: u32, dir: &Path) -> Result<u64, String> {
    let d = ImageDir::open(dir).map_err(|e| e.to_string())?;
    let Some((pages_id, entries)) = d
        .read_pagemap(&format!("pagemap-{pid}.img"))
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    let (path, compressed) = crate::image::pages::file_of(&d, &format!("pages-{pages_id}.img"))
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
    for p in &entries {
        let n = p.nr_pages.unwrap_or(u64::from(p.compat_nr_pages));
        let len = n
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| format!("{}: a page run overflows", dir.display()))?;
        let flags = p.flags.unwrap_or(if p.in_parent == Some(true) {
            crate::memtrack::PE_PARENT
        } else {
            crate::memtrack::PE_PRESENT
        });
        if flags & crate::memtrack::PE_PRESENT == 0 {
            continue;
        }
        let end = p
            .vaddr
            .checked_add(len)
            .filter(|&e| e <= 1 << 47)
            .ok_or_else(|| format!("{}: pages at {:#x} overflow", dir.display(), p.vaddr))?;
        let mut a = p.vaddr;
        let mut o = off;
        while a < end {
            let w = a & !(WINDOW - 1);
            let take = (w + WINDOW).min(end) - a;
            if !i.windows.contains_key(&w) && !i.refused.contains(&w) {
                match Mapping::anon_fixed(
                    mirror(w),
                    crate::num::usize_of(WINDOW),
                    libc::PROT_READ | libc::PROT_WRITE,
                ) {
                    Ok(m) => {
                        i.windows.insert(w, m);
                    }
                    Err(e) => {
                        tracing::info!(window = format_args!("{w:#x}"), error = %e, "stage: a window cannot be mapped here; its pages come from the images");
                        i.refused.push(w);
                    }
                }
            }
            if let Some(m) = i.windows.get_mut(&w) {
                let at = usize::try_from(a - w).map_err(|e| e.to_string())?;
                let n = usize::try_from(take).map_err(|e| e.to_string())?;
                f.read_exact_at(&mut m.bytes_mut()[at..at + n], o)
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
        got.extend_from_slice(&i.have);
        i.have = merge(got);
    }
    // A big round (the first): its whole 2 MiB blocks become transparent huge pages, so that
    // the restore's fork copies and its release drops one entry per 2 MiB, not 512.
    if bytes >= COLLAPSE_FROM && std::env::var_os("CRYO_STAGE_NO_COLLAPSE").is_none() {
        let t = std::time::Instant::now();
        let mut n = 0u64;
        for &(s, e) in &i.have {
            let mut b = s.next_multiple_of(HUGE);
            while b + HUGE <= e {
                let w = b & !(WINDOW - 1);
                if let Some(m) = i.windows.get(&w) {
                    let at = crate::num::usize_of(b - w);
                    if m.collapse(at, crate::num::usize_of(HUGE)).is_ok() {
                        n += 1;
                    }
                }
                b += HUGE;
            }
        }
        tracing::info!(
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
            assert_eq!(unmirror(mirror(a)), a);
        }
        assert_eq!(mirror(0x7f00_4000_0000) + WINDOW, mirror(0x7f00_8000_0000));
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 50)]),
            vec![(0, 8), (10, 30), (40, 50)]
        );
    }
}
