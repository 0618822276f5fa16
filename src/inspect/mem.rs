//! The saved memory of a process: `pagemap-PID.img` says which pages were saved and where
//! their bytes are in `pages-N.img` (entries flagged PRESENT take the next bytes of the pages
//! image, in order); a page flagged PARENT is in the previous checkpoint of a pre-dump chain
//! (the `parent` link of an images directory), a LAZY one only on a page server. Shared
//! anonymous memory and memfds have their own `pagemap-shmem-ID.img`, at offsets in the
//! object. A page not saved at all was never populated (anonymous: zero) or is clean in its
//! file.
//!
//! Used for command lines and environments (from `mm_arg_*`/`mm_env_*`), `--search`,
//! `--dump-mem`, and the page comparison of `cryo diff`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use regex::bytes::Regex;

use super::model::{hex, Hit};
use super::source::{Member, Source};
use super::InspectError;
use crate::image::{self, pb};

/// `pagemap_entry.flags`.
pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

pub const PAGE: u64 = 4096;

/// `vma_entry.status` bits (CRIU's VMA_AREA_* / VMA_*).
pub mod status {
    pub const STACK: u32 = 1 << 1;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const HEAP: u32 = 1 << 5;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const SYSVIPC: u32 = 1 << 10;
    pub const SOCKET: u32 = 1 << 11;
    pub const VVAR: u32 = 1 << 12;
    pub const AIORING: u32 = 1 << 13;
    pub const MEMFD: u32 = 1 << 14;
}

/// One pagemap entry, normalised as CRIU does for old images (`in_parent`,
/// `compat_nr_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vaddr: u64,
    pub pages: u64,
    pub flags: u32,
    /// Offset of its first page in the pages image (PRESENT runs only).
    pub file_off: u64,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.vaddr + self.pages * PAGE
    }
    pub fn present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
    pub fn in_parent(&self) -> bool {
        self.flags & PE_PARENT != 0 && !self.present()
    }
}

/// The parent checkpoint of a pre-dump chain.
pub struct Parent {
    pub src: Source,
    pub map: PageMap,
}

/// Where the saved pages of one process (or shared memory object) are.
pub struct PageMap {
    /// The pagemap image's name.
    pub name: String,
    pub runs: Vec<Run>,
    /// The pages image (`None` when it is missing).
    pub pages: Option<Member>,
    pub pages_name: String,
    /// The pages image is compressed (`dump --compress`, `pages-N.img.zst`): read through
    /// a zstd decoder.
    pub compressed: bool,
    pub parent: Option<Box<Parent>>,
}

/// How many `parent` links are followed at most.
const MAX_CHAIN: u32 = 32;

impl PageMap {
    /// Loads pagemap image `name` (`pagemap-42.img`) of `src`; `None` if it is absent.
    /// `notes` gets what could not be found (a missing pages image or parent).
    pub fn load(
        src: &Source,
        name: &str,
        notes: &mut Vec<(String, String)>,
    ) -> Result<Option<PageMap>, InspectError> {
        Self::load_depth(src, name, notes, 0)
    }

    fn load_depth(
        src: &Source,
        name: &str,
        notes: &mut Vec<(String, String)>,
        depth: u32,
    ) -> Result<Option<PageMap>, InspectError> {
        let Some(m) = src.image(name) else {
            return Ok(None);
        };
        let bytes = src.bytes(m)?;
        let (pages_id, entries) = image::decode_pagemap(&src.display_name(m), &bytes)?;
        let mut runs = Vec::with_capacity(entries.len());
        let mut off = 0u64;
        let mut any_parent = false;
        for e in &entries {
            let mut flags = e.flags.unwrap_or(0);
            if e.in_parent == Some(true) {
                flags |= PE_PARENT;
            } else if e.flags.is_none() {
                flags = PE_PRESENT;
            }
            let pages = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
            let fits = pages
                .checked_mul(PAGE)
                .and_then(|b| e.vaddr.checked_add(b))
                .is_some();
            if !fits || e.vaddr % PAGE != 0 {
                notes.push((
                    name.to_string(),
                    format!(
                        "entry at {:#x} with {pages} pages is not a valid range; the entries from there on are not read",
                        e.vaddr
                    ),
                ));
                break;
            }
            runs.push(Run {
                vaddr: e.vaddr,
                pages,
                flags,
                file_off: off,
            });
            if flags & PE_PRESENT != 0 {
                off += pages * PAGE;
            }
            any_parent |= flags & PE_PARENT != 0;
        }
        let mut pages_name = format!("pages-{pages_id}.img");
        let mut pages = src.image(&pages_name).cloned();
        let mut raw_size = pages.as_ref().map(|p| p.size);
        let mut compressed = false;
        if pages.is_none() {
            let zname = crate::image::pages::compressed_name(&pages_name);
            if let Some(m) = src.image(&zname).cloned() {
                // The size that counts is the raw data's, in the head.
                let mut head = Vec::new();
                src.visit(&[&m], |_, r| {
                    r.take(64)
                        .read_to_end(&mut head)
                        .map_err(|e| read_err(src, &zname, e))?;
                    Ok(())
                })?;
                match crate::image::pages::head(Path::new(&zname), &head) {
                    Ok(h) => raw_size = Some(h.size),
                    Err(e) => notes.push((zname.clone(), e.to_string())),
                }
                pages_name = zname;
                pages = Some(m);
                compressed = true;
            }
        }
        match &pages {
            None if off > 0 => notes.push((
                pages_name.clone(),
                format!(
                    "missing: the {} saved pages of {name} cannot be read",
                    off / PAGE
                ),
            )),
            Some(_) if raw_size.unwrap_or(0) < off => notes.push((
                pages_name.clone(),
                format!(
                    "truncated: {} bytes, {name} needs {off}; pages past the end cannot be read",
                    raw_size.unwrap_or(0)
                ),
            )),
            _ => {}
        }
        let mut parent = None;
        if any_parent {
            match src.images_dir().map(|d| d.join("parent")) {
                Some(p) if p.exists() && depth < MAX_CHAIN => {
                    let psrc = Source::open(&p)?;
                    match Self::load_depth(&psrc, name, notes, depth + 1)? {
                        Some(map) => parent = Some(Box::new(Parent { src: psrc, map })),
                        None => notes.push((
                            format!("parent/{name}"),
                            "missing: pages kept in the parent checkpoint cannot be read".into(),
                        )),
                    }
                }
                _ => notes.push((
                    name.to_string(),
                    "has pages in a parent checkpoint, which is not here (no `parent` link, or an archive)".into(),
                )),
            }
        }
        runs.sort_by_key(|r| r.vaddr);
        Ok(Some(PageMap {
            name: name.to_string(),
            runs,
            pages,
            pages_name,
            compressed,
            parent,
        }))
    }

    /// The run holding `addr`.
    pub fn run_at(&self, addr: u64) -> Option<&Run> {
        let i = self.runs.partition_point(|r| r.end() <= addr);
        self.runs.get(i).filter(|r| r.vaddr <= addr)
    }

    /// (saved here, in the parent, lazy) pages within `[start, end)`.
    pub fn count(&self, start: u64, end: u64) -> (u64, u64, u64) {
        let (mut saved, mut parent, mut lazy) = (0, 0, 0);
        let i = self.runs.partition_point(|r| r.end() <= start);
        for r in &self.runs[i..] {
            if r.vaddr >= end {
                break;
            }
            let n = (r.end().min(end) - r.vaddr.max(start)) / PAGE;
            if r.present() {
                saved += n;
            } else if r.flags & PE_PARENT != 0 {
                parent += n;
            } else if r.flags & PE_LAZY != 0 {
                lazy += n;
            }
        }
        (saved, parent, lazy)
    }

    /// Pages saved in this checkpoint's pages image.
    pub fn saved_pages(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.present())
            .map(|r| r.pages)
            .sum()
    }
}

/// Bytes read from saved memory; `missing` are the ranges (address, length) not in the
/// checkpoint, left as zeros in `data`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes {
    pub data: Vec<u8>,
    pub missing: Vec<(u64, u64)>,
}

/// Reads `(map, address, length)` ranges; one pass over a compressed archive for all of
/// them.
pub fn read_ranges(
    src: &Source,
    reqs: &[(&PageMap, u64, usize)],
) -> Result<Vec<Bytes>, InspectError> {
    let mut out: Vec<Bytes> = reqs
        .iter()
        .map(|(_, _, len)| Bytes {
            data: vec![0; *len],
            missing: Vec::new(),
        })
        .collect();
    // (request, offset in its data, member, offset in member, length)
    let mut here: Vec<(usize, usize, &Member, u64, usize)> = Vec::new();
    // Pieces in a parent, grouped by parent.
    let mut up: Vec<(usize, usize, u64, usize)> = Vec::new();
    for (i, (map, addr, len)) in reqs.iter().enumerate() {
        let end = addr + *len as u64;
        let mut a = *addr;
        while a < end {
            let at = crate::num::usize_of(a - addr);
            match map.run_at(a) {
                Some(r) => {
                    let n = crate::num::usize_of(r.end().min(end) - a);
                    match (&map.pages, r.present(), r.flags & PE_PARENT != 0) {
                        (Some(p), true, _) if r.file_off + (a - r.vaddr) + n as u64 <= p.size => {
                            here.push((i, at, p, r.file_off + (a - r.vaddr), n))
                        }
                        (_, false, true) if map.parent.is_some() => up.push((i, at, a, n)),
                        _ => out[i].missing.push((a, n as u64)),
                    }
                    a += n as u64;
                }
                None => {
                    let next = map
                        .runs
                        .get(map.runs.partition_point(|r| r.end() <= a))
                        .map(|r| r.vaddr)
                        .unwrap_or(end)
                        .clamp(a + 1, end);
                    out[i].missing.push((a, next - a));
                    a = next;
                }
            }
        }
    }
    if !here.is_empty() {
        let plan: Vec<(&Member, u64, usize)> = here.iter().map(|h| (h.2, h.3, h.4)).collect();
        let got = src.read_many(&plan)?;
        for ((i, at, _, _, n), bytes) in here.iter().zip(got) {
            let n = (*n).min(bytes.len());
            out[*i].data[*at..*at + n].copy_from_slice(&bytes[..n]);
        }
    }
    for (i, at, a, n) in up {
        let p = reqs[i].0.parent.as_ref().expect("checked above");
        let b = read_ranges(&p.src, &[(&p.map, a, n)])?.remove(0);
        out[i].data[at..at + n].copy_from_slice(&b.data);
        out[i].missing.extend(b.missing);
    }
    Ok(out)
}

/// Splits a NUL-separated block (argv, environ) into strings.
pub fn nul_strings(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A VMA's kind, as `cryo inspect` names it.
pub fn vma_kind(v: &pb::VmaEntry) -> &'static str {
    let s = v.status;
    if s & status::VSYSCALL != 0 {
        "vsyscall"
    } else if s & status::VDSO != 0 {
        "vdso"
    } else if s & status::VVAR != 0 {
        "vvar"
    } else if s & status::HEAP != 0 {
        "heap"
    } else if s & status::STACK != 0 {
        "stack"
    } else if s & status::MEMFD != 0 {
        "memfd"
    } else if s & status::SYSVIPC != 0 {
        "sysvipc"
    } else if s & status::SOCKET != 0 {
        "socket"
    } else if s & status::AIORING != 0 {
        "aio"
    } else if s & (status::FILE_PRIVATE | status::FILE_SHARED) != 0 {
        "file"
    } else if s & status::ANON_SHARED != 0 {
        "shmem"
    } else {
        "anon"
    }
}

/// Like [`vma_kind`], also calling "stack" the anonymous VMA holding the main thread's
/// stack start (CRIU does not mark it).
pub fn vma_kind_at(v: &pb::VmaEntry, start_stack: u64) -> &'static str {
    match vma_kind(v) {
        "anon" if v.start <= start_stack && start_stack < v.end => "stack",
        k => k,
    }
}

/// "rwxp" for a VMA.
pub fn prot_string(v: &pb::VmaEntry) -> String {
    let p = v.prot.cast_signed();
    let shared = v.flags & libc::MAP_SHARED as u32 != 0;
    [
        if p & libc::PROT_READ != 0 { 'r' } else { '-' },
        if p & libc::PROT_WRITE != 0 { 'w' } else { '-' },
        if p & libc::PROT_EXEC != 0 { 'x' } else { '-' },
        if shared { 's' } else { 'p' },
    ]
    .iter()
    .collect()
}

/// Renders bytes for a terminal and JSON: printable ASCII as is, the rest `\xNN`
/// (`\n`, `\t`, `\0` short).
pub fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// One process's memory for a search: its pagemap and VMAs (start, end, label).
pub struct Searchable<'a> {
    pub pid: u32,
    pub comm: String,
    pub map: &'a PageMap,
    pub vmas: Vec<(u64, u64, String)>,
    /// For a shared memory object: object offset → address in this process, i.e.
    /// (object offset of the VMA's start, VMA start); `None` for a process's own pages.
    pub shared_at: Option<Vec<(u64, u64, u64)>>,
}

/// What a search needs to know.
pub struct SearchOpts<'a> {
    pub re: &'a Regex,
    pub context: usize,
    pub max_hits: usize,
}

/// Chunk read at once when searching, and the overlap kept between chunks (a match longer
/// than the overlap that spans two chunks is missed).
const CHUNK: usize = 4 << 20;
const OVERLAP: usize = 4096;

/// Searches the saved pages of every `Searchable`; returns the hits (at most `max_hits`,
/// then `true`) and the bytes searched.
pub fn search(
    src: &Source,
    items: &[Searchable<'_>],
    o: &SearchOpts<'_>,
) -> Result<(Vec<Hit>, bool, u64), InspectError> {
    let mut hits = Vec::new();
    let mut searched = 0u64;
    let mut full = false;
    // Pages in this checkpoint: one streaming pass over every pages image.
    let members: Vec<(usize, &Member)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| it.map.pages.as_ref().map(|m| (i, m)))
        .collect();
    let refs: Vec<&Member> = members.iter().map(|(_, m)| *m).collect();
    src.visit(&refs, |k, r| {
        let it = &items[members[k].0];
        let mut z;
        let r: &mut dyn Read = if it.map.compressed {
            z = zstd::stream::read::Decoder::new(r)
                .map_err(|e| read_err(src, &it.map.pages_name, e))?;
            &mut z
        } else {
            r
        };
        let mut pos = 0u64;
        let mut runs: Vec<&Run> = it.map.runs.iter().filter(|r| r.present()).collect();
        runs.sort_by_key(|r| r.file_off);
        for run in runs {
            if full {
                break;
            }
            if run.file_off < pos {
                continue;
            }
            skip(r, run.file_off - pos).map_err(|e| read_err(src, &it.map.pages_name, e))?;
            pos = run.file_off;
            let total = crate::num::usize_of(run.pages * PAGE);
            let mut done = 0usize;
            let mut carry: Vec<u8> = Vec::new();
            while done < total && !full {
                let n = CHUNK.min(total - done);
                let mut buf = std::mem::take(&mut carry);
                let keep = buf.len();
                buf.resize(keep + n, 0);
                match r.read_exact(&mut buf[keep..]) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // Truncated pages image (noted when loaded).
                        return Ok(());
                    }
                    Err(e) => return Err(read_err(src, &it.map.pages_name, e)),
                }
                pos += n as u64;
                searched += n as u64;
                let base = run.vaddr + done as u64 - keep as u64;
                find_in(&buf, base, keep, it, o, &mut hits, &mut full);
                done += n;
                let tail = buf.len().saturating_sub(OVERLAP);
                carry = buf[tail..].to_vec();
            }
        }
        Ok(())
    })?;
    // Pages kept in a parent checkpoint (directories only: read in place).
    for it in items {
        for run in it.map.runs.iter().filter(|r| r.in_parent()) {
            let mut done = 0u64;
            let total = run.pages * PAGE;
            while done < total && !full {
                let n = (CHUNK as u64).min(total - done);
                let b = read_ranges(src, &[(it.map, run.vaddr + done, crate::num::usize_of(n))])?
                    .remove(0);
                if b.missing.len() as u64 * PAGE >= n {
                    break;
                }
                searched += n;
                find_in(&b.data, run.vaddr + done, 0, it, o, &mut hits, &mut full);
                done += n;
            }
        }
    }
    let num = |h: &Hit| u64::from_str_radix(h.address.trim_start_matches("0x"), 16).unwrap_or(0);
    hits.sort_by_key(|h| (h.pid, num(h)));
    Ok((hits, full, searched))
}

fn read_err(src: &Source, name: &str, e: std::io::Error) -> InspectError {
    InspectError::Io {
        path: src
            .image(name)
            .map(|m| src.display_name(m))
            .unwrap_or_else(|| Path::new(name).to_path_buf()),
        op: "read",
        source: e,
    }
}

fn skip(r: &mut dyn Read, n: u64) -> std::io::Result<()> {
    let got = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    if got < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Matches in `buf` (whose byte 0 is at `base`; the first `carried` bytes were searched
/// with the previous chunk, so matches starting there are skipped).
fn find_in(
    buf: &[u8],
    base: u64,
    carried: usize,
    it: &Searchable<'_>,
    o: &SearchOpts<'_>,
    hits: &mut Vec<Hit>,
    full: &mut bool,
) {
    for m in o.re.find_iter(buf) {
        // Matches inside the carried bytes were found with the previous chunk.
        if m.end() <= carried {
            continue;
        }
        if hits.len() >= o.max_hits {
            *full = true;
            return;
        }
        let obj = base + m.start() as u64;
        let addr = match &it.shared_at {
            None => obj,
            Some(spans) => match spans
                .iter()
                .find(|(off, _, len)| obj >= *off && obj < off + len)
            {
                Some((off, start, _)) => start + (obj - off),
                None => continue, // not mapped by this process
            },
        };
        let (vstart, label) = it
            .vmas
            .iter()
            .find(|(s, e, _)| addr >= *s && addr < *e)
            .map(|(s, _, l)| (*s, l.clone()))
            .unwrap_or((addr, "?".into()));
        let c0 = m.start().saturating_sub(o.context);
        let c1 = (m.end() + o.context).min(buf.len());
        if hits
            .last()
            .is_some_and(|h| h.pid == it.pid && h.address == hex(addr))
        {
            continue;
        }
        hits.push(Hit {
            pid: it.pid,
            comm: it.comm.clone(),
            address: hex(addr),
            vma_start: hex(vstart),
            mapping: label,
            offset: addr - vstart,
            matched: escape(m.as_bytes()),
            context: escape(&buf[c0..c1]),
        });
    }
}

/// xxh3-128 of every saved page (this checkpoint's and its parents'), by address.
pub fn page_hashes(src: &Source, map: &PageMap) -> Result<BTreeMap<u64, u128>, InspectError> {
    let mut out = BTreeMap::new();
    if let Some(m) = &map.pages {
        let mut runs: Vec<&Run> = map.runs.iter().filter(|r| r.present()).collect();
        runs.sort_by_key(|r| r.file_off);
        src.visit(&[m], |_, r| {
            let mut z;
            let r: &mut dyn Read = if map.compressed {
                z = zstd::stream::read::Decoder::new(r)
                    .map_err(|e| read_err(src, &map.pages_name, e))?;
                &mut z
            } else {
                r
            };
            let mut pos = 0u64;
            let mut page = vec![0u8; crate::num::usize_of(PAGE)];
            for run in &runs {
                if run.file_off < pos {
                    continue;
                }
                skip(r, run.file_off - pos).map_err(|e| read_err(src, &map.pages_name, e))?;
                pos = run.file_off;
                for p in 0..run.pages {
                    if r.read_exact(&mut page).is_err() {
                        return Ok(());
                    }
                    pos += PAGE;
                    out.insert(run.vaddr + p * PAGE, twox_hash::XxHash3_128::oneshot(&page));
                }
            }
            Ok(())
        })?;
    }
    if let Some(p) = &map.parent {
        let up = page_hashes(&p.src, &p.map)?;
        for run in map.runs.iter().filter(|r| r.in_parent()) {
            for (a, h) in up.range(run.vaddr..run.end()) {
                out.insert(*a, *h);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_escapes() {
        assert_eq!(nul_strings(b"sleep\x001000\x00"), ["sleep", "1000"]);
        assert_eq!(nul_strings(b""), Vec::<String>::new());
        assert_eq!(escape(b"a\0b\n\xff"), "a\\0b\\n\\xff");
    }

    /// A pre-dump chain: the child checkpoint keeps one page in its parent (PE_PARENT,
    /// `parent` link), another in its own pages image.
    #[test]
    fn pages_in_the_parent_are_followed() {
        use crate::image::{ImageDir, INVENTORY};
        let base = std::env::temp_dir().join(format!("cryo-mem-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let inv = pb::InventoryEntry {
            img_version: 2,
            ..Default::default()
        };
        let entry = |vaddr, pages: u64, flags| pb::PagemapEntry {
            vaddr,
            compat_nr_pages: u32::try_from(pages).unwrap(),
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(pages),
        };
        let parent = ImageDir::create(&base.join("pre")).unwrap();
        parent
            .write("inventory.img", INVENTORY, std::slice::from_ref(&inv))
            .unwrap();
        parent
            .write_pagemap("pagemap-7.img", 1, &[entry(0x10000, 2, PE_PRESENT)])
            .unwrap();
        let mut pp = vec![b'a'; 4096];
        pp.extend(vec![b'b'; 4096]);
        parent.write_raw("pages-1.img", &pp).unwrap();
        let child = ImageDir::create(&base.join("dump")).unwrap();
        child.write("inventory.img", INVENTORY, &[inv]).unwrap();
        child
            .write_pagemap(
                "pagemap-7.img",
                1,
                &[entry(0x10000, 1, PE_PARENT), entry(0x11000, 1, PE_PRESENT)],
            )
            .unwrap();
        child.write_raw("pages-1.img", &[b'c'; 4096]).unwrap();
        std::os::unix::fs::symlink("../pre", base.join("dump/parent")).unwrap();
        let src = Source::open(&base.join("dump")).unwrap();
        let mut notes = Vec::new();
        let map = PageMap::load(&src, "pagemap-7.img", &mut notes)
            .unwrap()
            .unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(map.parent.is_some());
        assert_eq!(map.count(0x10000, 0x12000), (1, 1, 0));
        let b = read_ranges(&src, &[(&map, 0x10ffe, 4)]).unwrap().remove(0);
        assert_eq!(b.data, b"aacc");
        assert!(b.missing.is_empty());
        let b = read_ranges(&src, &[(&map, 0x11ffe, 4)]).unwrap().remove(0);
        assert_eq!(&b.data[..2], b"cc");
        assert_eq!(b.missing, [(0x12000, 2)]);
        let h = page_hashes(&src, &map).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[&0x10000], twox_hash::XxHash3_128::oneshot(&[b'a'; 4096]));
        assert_eq!(h[&0x11000], twox_hash::XxHash3_128::oneshot(&[b'c'; 4096]));
        // Without the link, the pages in the parent are named as unreadable.
        std::fs::remove_file(base.join("dump/parent")).unwrap();
        let src = Source::open(&base.join("dump")).unwrap();
        let mut notes = Vec::new();
        let map = PageMap::load(&src, "pagemap-7.img", &mut notes)
            .unwrap()
            .unwrap();
        assert!(notes[0].1.contains("parent checkpoint"), "{notes:?}");
        let b = read_ranges(&src, &[(&map, 0x10000, 8)]).unwrap().remove(0);
        assert_eq!(b.missing, [(0x10000, 8)]);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn vma_words() {
        let v = pb::VmaEntry {
            start: 0,
            end: 4096,
            pgoff: 0,
            shmid: 0,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: libc::MAP_PRIVATE as u32,
            status: 1 | status::HEAP | (1 << 9),
            fd: -1,
            madv: None,
            fdflags: None,
        };
        assert_eq!(prot_string(&v), "rw-p");
        assert_eq!(vma_kind(&v), "heap");
    }
}
