//! Reads a checkpoint's images (through `image`'s framing and the generated `pb` types) and
//! builds the [`Report`]: the process tree, fds, sockets, pipes, ttys, mounts, namespaces,
//! cgroups and memory. An image that is missing or does not decode becomes a `Note` and the
//! fields it would fill stay empty (`null`, "?"), so a table is never filled with a guess.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use super::files::FdWorld;
use super::mem::{self, PageMap};
use super::model::*;
use super::source::{Member, Source};
use super::system::ns_ids;
use super::{InspectError, Options};
use crate::image::{self, pb, Kind};

/// A process's argv and environment, when they are in the saved memory.
type ArgvEnv = (Option<Vec<String>>, Option<Vec<String>>);

/// A shared memory object to search: the first process mapping it, its name, (object
/// offset, address, length) of its VMAs there, and that process's VMA labels.
type SharedObj = (u32, String, Vec<(u64, u64, u64)>, Vec<(u64, u64, String)>);

/// Everything read from one checkpoint, kept for the report, a search, `--dump-mem` and
/// `cryo diff`.
pub struct Loaded {
    pub src: Source,
    pub inventory: Option<pb::InventoryEntry>,
    pub tasks: Vec<Task>,
    pub files: HashMap<u32, pb::FileEntry>,
    pub notes: Vec<(String, String)>,
    /// `cryo-manifest.json` (tool, time, number of files).
    pub manifest: Option<serde_json::Value>,
    /// memfd.img, by inode id.
    pub memfd: HashMap<u64, pb::MemfdInodeEntry>,
}

/// One process as saved.
pub struct Task {
    pub entry: pb::PstreeEntry,
    pub core: Option<pb::CoreEntry>,
    /// Non-leader threads: tid and core.
    pub threads: Vec<(u32, Option<pb::CoreEntry>)>,
    pub ids: Option<pb::TaskKobjIdsEntry>,
    pub mm: Option<pb::MmEntry>,
    pub fs: Option<pb::FsEntry>,
    pub fdinfo: Vec<pb::FdinfoEntry>,
    pub pagemap: Option<PageMap>,
}

impl Task {
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    pub fn comm(&self) -> String {
        self.core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .map(|t| t.comm.clone())
            .unwrap_or_else(|| "?".into())
    }

    fn state(&self) -> (String, Option<u32>) {
        let Some(tc) = self.core.as_ref().and_then(|c| c.tc.as_ref()) else {
            return ("?".into(), None);
        };
        match tc.task_state {
            1 => ("alive".into(), None),
            2 => ("dead".into(), None),
            3 => ("stopped".into(), tc.stop_signo),
            6 => ("zombie".into(), None),
            n => (format!("unknown({n})"), None),
        }
    }

    pub fn zombie(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .is_some_and(|t| t.task_state == 6)
    }
}

/// Decodes image `name` if present; a decoding error becomes a note.
pub(super) fn img<M: Message + Default>(
    src: &Source,
    name: &str,
    kind: Kind,
    notes: &mut Vec<(String, String)>,
) -> Option<Vec<M>> {
    let m = src.image(name)?;
    let bytes = match src.bytes(m) {
        Ok(b) => b,
        Err(e) => {
            notes.push((name.into(), format!("cannot be read: {e}")));
            return None;
        }
    };
    match image::decode_all(&src.display_name(m), kind, &bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push((name.into(), format!("not decoded: {e}")));
            None
        }
    }
}

/// Like [`img`], for an image holding one entry.
pub(super) fn img_one<M: Message + Default>(
    src: &Source,
    name: &str,
    kind: Kind,
    notes: &mut Vec<(String, String)>,
) -> Option<M> {
    let mut v = img::<M>(src, name, kind, notes)?;
    if v.len() != 1 {
        notes.push((name.into(), format!("holds {} entries, not one", v.len())));
        return None;
    }
    v.pop()
}

/// Reads the images of `src`.
pub fn load(src: Source) -> Result<Loaded, InspectError> {
    let mut notes = Vec::new();
    let inventory =
        img_one::<pb::InventoryEntry>(&src, "inventory.img", image::INVENTORY, &mut notes);
    if let Some(v) = inventory
        .as_ref()
        .map(|i| i.img_version)
        .filter(|v| *v != 2)
    {
        return Err(InspectError::NotACheckpoint {
            path: src.path.clone(),
            what: format!(
                "inventory.img says image version {v}; cryo reads version 2 (CRIU 1.x and later)"
            ),
        });
    }
    if src.image("pstree.img").is_none() {
        return Err(InspectError::NotACheckpoint {
            path: src.path.clone(),
            what: "pstree.img is missing, so there is no process tree".into(),
        });
    }
    let pstree = match img::<pb::PstreeEntry>(&src, "pstree.img", image::PSTREE, &mut notes) {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(InspectError::NotACheckpoint {
                path: src.path.clone(),
                what: format!(
                    "pstree.img {}",
                    notes
                        .iter()
                        .rev()
                        .find(|n| n.0 == "pstree.img")
                        .map(|n| n.1.clone())
                        .unwrap_or_else(|| "is empty".into())
                ),
            })
        }
    };
    let files: HashMap<u32, pb::FileEntry> =
        img::<pb::FileEntry>(&src, "files.img", image::FILES, &mut notes)
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
    let per_id = inventory
        .as_ref()
        .and_then(|i| i.fdinfo_per_id)
        .unwrap_or(false);
    let mut tasks = Vec::new();
    for e in pstree {
        let pid = e.pid;
        let core =
            img_one::<pb::CoreEntry>(&src, &format!("core-{pid}.img"), image::CORE, &mut notes);
        if core.is_none() && src.image(&format!("core-{pid}.img")).is_none() {
            notes.push((
                format!("core-{pid}.img"),
                format!("missing: the state, name and registers of {pid} are unknown"),
            ));
        }
        let threads = e
            .threads
            .iter()
            .filter(|t| **t != pid)
            .map(|t| {
                (
                    *t,
                    img_one::<pb::CoreEntry>(
                        &src,
                        &format!("core-{t}.img"),
                        image::CORE,
                        &mut notes,
                    ),
                )
            })
            .collect();
        let ids = img_one::<pb::TaskKobjIdsEntry>(
            &src,
            &format!("ids-{pid}.img"),
            image::IDS,
            &mut notes,
        )
        .or_else(|| core.as_ref().and_then(|c| c.ids));
        let zombie = core
            .as_ref()
            .and_then(|c| c.tc.as_ref())
            .is_some_and(|t| t.task_state == 6);
        let (mm, fs, fdinfo, pagemap) = if zombie {
            (None, None, Vec::new(), None)
        } else {
            let mm = img_one::<pb::MmEntry>(&src, &format!("mm-{pid}.img"), image::MM, &mut notes);
            let fs = img_one::<pb::FsEntry>(&src, &format!("fs-{pid}.img"), image::FS, &mut notes);
            let fdname = match (per_id, &ids) {
                (true, Some(ids)) => format!("fdinfo-{}.img", ids.files_id),
                _ => format!("fdinfo-{pid}.img"),
            };
            let fdinfo = img::<pb::FdinfoEntry>(&src, &fdname, image::FDINFO, &mut notes)
                .unwrap_or_default();
            let pagemap = match PageMap::load(&src, &format!("pagemap-{pid}.img"), &mut notes) {
                Ok(p) => p,
                Err(e) => {
                    notes.push((format!("pagemap-{pid}.img"), format!("not read: {e}")));
                    None
                }
            };
            (mm, fs, fdinfo, pagemap)
        };
        tasks.push(Task {
            entry: e,
            core,
            threads,
            ids,
            mm,
            fs,
            fdinfo,
            pagemap,
        });
    }
    if files.is_empty()
        && tasks.iter().any(|t| !t.fdinfo.is_empty())
        && src.image("files.img").is_none()
    {
        notes.push((
            "files.img".into(),
            "missing: the fds' files are unknown (images of CRIU before 3.x keep them in per-kind images, which cryo does not read)".into(),
        ));
    }
    let manifest = src
        .image(crate::image::manifest::NAME)
        .and_then(|m| src.bytes(m).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let memfd = img::<pb::MemfdInodeEntry>(&src, "memfd.img", image::MEMFD_INODE, &mut notes)
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.inode_id, m))
        .collect();
    Ok(Loaded {
        src,
        inventory,
        tasks,
        files,
        notes,
        manifest,
        memfd,
    })
}

impl Loaded {
    /// The label of each VMA of `t`: (start, end, "kind path").
    pub fn vma_labels(&self, t: &Task) -> Vec<(u64, u64, String)> {
        let Some(mm) = &t.mm else { return Vec::new() };
        mm.vmas
            .iter()
            .map(|v| {
                let (kind, path) = self.vma_path(v, mm);
                let label = match path {
                    Some(p) => format!("{kind} {p}"),
                    None => format!("[{kind}]"),
                };
                (v.start, v.end, label)
            })
            .collect()
    }

    /// A VMA's kind and the path of what it maps.
    pub fn vma_path(&self, v: &pb::VmaEntry, mm: &pb::MmEntry) -> (&'static str, Option<String>) {
        let kind = mem::vma_kind_at(v, mm.mm_start_stack);
        let path = match kind {
            "file" => self
                .files
                .get(&(v.shmid as u32))
                .and_then(|f| f.reg.as_ref())
                .map(|r| r.name.clone()),
            "memfd" => self
                .files
                .get(&(v.shmid as u32))
                .and_then(|f| f.memfd.as_ref())
                .map(|m| match self.memfd.get(&(m.inode_id as u64)) {
                    Some(i) => format!("memfd:{}", i.name),
                    None => format!("memfd inode {}", m.inode_id),
                }),
            _ => None,
        };
        (kind, path)
    }

    /// The shmid of the pagemap-shmem image behind a shared VMA.
    pub fn shmem_of(&self, v: &pb::VmaEntry) -> Option<u64> {
        match mem::vma_kind(v) {
            "shmem" => Some(v.shmid),
            "memfd" => {
                let f = self.files.get(&(v.shmid as u32))?.memfd.as_ref()?;
                self.memfd.get(&(f.inode_id as u64)).map(|i| i.shmid as u64)
            }
            _ => None,
        }
    }

    /// The memory section of one task.
    fn memory(&self, t: &Task) -> Option<Memory> {
        let mm = t.mm.as_ref()?;
        let mut vmas = Vec::new();
        let (mut saved, mut parent, mut lazy, mut total) = (0, 0, 0, 0);
        for v in &mm.vmas {
            let (kind, path) = self.vma_path(v, mm);
            let (s, p, l) = t
                .pagemap
                .as_ref()
                .map(|m| m.count(v.start, v.end))
                .unwrap_or((0, 0, 0));
            saved += s;
            parent += p;
            lazy += l;
            total += v.end.saturating_sub(v.start);
            vmas.push(Vma {
                start: hex(v.start),
                end: hex(v.end),
                size: v.end.saturating_sub(v.start),
                prot: mem::prot_string(v),
                kind: kind.into(),
                path,
                offset: v.pgoff,
                pages_saved: s,
                pages_in_parent: p,
                pages_lazy: l,
            });
        }
        Some(Memory {
            vmas,
            vm_bytes: total,
            pages_saved: saved,
            bytes_saved: saved * mem::PAGE,
            pages_in_parent: parent,
            pages_lazy: lazy,
            brk: Some(hex(mm.mm_brk)),
            start_stack: Some(hex(mm.mm_start_stack)),
        })
    }

    /// argv and environment of every task, from the saved memory (one pass).
    fn cmdlines(&self) -> Result<HashMap<u32, ArgvEnv>, InspectError> {
        let mut reqs = Vec::new();
        let mut who = Vec::new();
        for t in &self.tasks {
            let (Some(mm), Some(map)) = (&t.mm, &t.pagemap) else {
                continue;
            };
            for (a, b) in [
                (mm.mm_arg_start, mm.mm_arg_end),
                (mm.mm_env_start, mm.mm_env_end),
            ] {
                // A hostile image cannot make us read gigabytes.
                if b > a && b - a <= 1 << 20 {
                    reqs.push((map, a, (b - a) as usize));
                } else {
                    reqs.push((map, a, 0));
                }
            }
            who.push(t.pid());
        }
        let got = mem::read_ranges(&self.src, &reqs)?;
        let mut out = HashMap::new();
        for (i, pid) in who.iter().enumerate() {
            let conv = |b: &mem::Bytes| {
                (b.missing.is_empty() && !b.data.is_empty()).then(|| mem::nul_strings(&b.data))
            };
            out.insert(*pid, (conv(&got[2 * i]), conv(&got[2 * i + 1])));
        }
        Ok(out)
    }

    fn file_name(&self, id: u32) -> Option<String> {
        self.files.get(&id)?.reg.as_ref().map(|r| r.name.clone())
    }

    /// The process section.
    fn processes(&self, o: &Options, w: &FdWorld) -> Result<Vec<Process>, InspectError> {
        // Always read (one pass): `null` must mean "not in the checkpoint", not "not asked".
        let cmd = self.cmdlines()?;
        let mut out = Vec::new();
        for t in &self.tasks {
            if o.pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            let (state, stop_signal) = t.state();
            let tc = t.core.as_ref().and_then(|c| c.tc.as_ref());
            let th = t.core.as_ref().and_then(|c| c.thread_core.as_ref());
            let mut threads = vec![Thread {
                tid: t.pid(),
                comm: th
                    .and_then(|c| c.comm.clone())
                    .or_else(|| tc.map(|c| c.comm.clone())),
            }];
            for (tid, c) in &t.threads {
                threads.push(Thread {
                    tid: *tid,
                    comm: c
                        .as_ref()
                        .and_then(|c| c.thread_core.as_ref())
                        .and_then(|c| c.comm.clone()),
                });
            }
            let creds = th.and_then(|c| c.creds.as_ref()).map(|c| Creds {
                uid: c.uid,
                gid: c.gid,
                euid: c.euid,
                egid: c.egid,
                groups: c.groups.clone(),
                cap_eff: format!(
                    "{:#x}",
                    c.cap_eff
                        .iter()
                        .enumerate()
                        .fold(0u64, |a, (i, w)| a | ((*w as u64) << (32 * i.min(1))))
                ),
                no_new_privs: c.no_new_privs.map(|v| v != 0),
            });
            let seccomp = th
                .and_then(|c| c.seccomp_mode)
                .or(tc.and_then(|c| c.old_seccomp_mode))
                .map(|m| match m {
                    0 => "disabled".to_string(),
                    1 => "strict".into(),
                    2 => "filter".into(),
                    n => format!("mode({n})"),
                });
            let mut ns = BTreeMap::new();
            if let Some(ids) = &t.ids {
                for (k, v) in ns_ids(ids) {
                    ns.insert(k.to_string(), v);
                }
            }
            let (argv, env) = cmd.get(&t.pid()).cloned().unwrap_or((None, None));
            let fds = o
                .sections
                .fds
                .then(|| t.fdinfo.iter().map(|e| self.fd(w, t.pid(), e)).collect());
            out.push(Process {
                pid: t.pid(),
                ppid: t.entry.ppid,
                pgid: t.entry.pgid,
                sid: t.entry.sid,
                state,
                stop_signal,
                comm: t.comm(),
                exe: t.mm.as_ref().and_then(|m| self.file_name(m.exe_file_id)),
                cwd: t.fs.as_ref().and_then(|f| self.file_name(f.cwd_id)),
                root: t.fs.as_ref().and_then(|f| self.file_name(f.root_id)),
                argv,
                env,
                threads,
                creds,
                seccomp,
                ns,
                cgroup_set: th.and_then(|c| c.cg_set).or(tc.and_then(|c| c.cg_set)),
                fds,
                memory: if o.sections.mem { self.memory(t) } else { None },
            });
        }
        Ok(out)
    }

    fn summary(&self) -> Summary {
        let src = &self.src;
        // Image files only: not logs, the manifest or podman's descriptors.json.
        let images: Vec<&Member> = src
            .image_names()
            .iter()
            .filter(|n| {
                image::kind_of(n).is_some() || n.starts_with("pages-") || n.ends_with(".img")
            })
            .filter_map(|n| src.image(n))
            .collect();
        let tool = match &self.manifest {
            Some(m) => m["tool"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| "cryo (version not recorded)".into()),
            None => criu_version(src).unwrap_or_else(|| "CRIU (no cryo-manifest.json)".into()),
        };
        let (written, written_from) =
            match self.manifest.as_ref().and_then(|m| m["written"].as_u64()) {
                Some(t) => (Some(rfc3339(t)), Some("cryo-manifest.json".to_string())),
                None => match src.image("inventory.img").and_then(|m| m.mtime) {
                    Some(t) => (
                        Some(rfc3339(t)),
                        Some(if src.compression.is_some() {
                            "the archive's time for inventory.img".to_string()
                        } else {
                            "inventory.img's modification time".to_string()
                        }),
                    ),
                    None => (None, None),
                },
            };
        // With the images, or (CRIU under podman writes it to the work dir) next to them.
        let stats_bytes = src
            .image("stats-dump")
            .or_else(|| src.member("stats-dump"))
            .and_then(|m| src.bytes(m).ok().map(|b| (src.display_name(m), b)));
        let stats = stats_bytes
            .and_then(|(path, b)| image::decode_all::<pb::StatsEntry>(&path, image::STATS, &b).ok())
            .and_then(|mut v| v.pop())
            .and_then(|s| s.dump)
            .map(|d| DumpStats {
                freezing_us: d.freezing_time,
                frozen_us: d.frozen_time,
                memdump_us: d.memdump_time,
                memwrite_us: d.memwrite_time,
                pages_scanned: d.pages_scanned,
                pages_skipped_parent: d.pages_skipped_parent,
                pages_written: d.pages_written,
                pages_lazy: d.pages_lazy,
            });
        let pages: u64 = self
            .tasks
            .iter()
            .filter_map(|t| t.pagemap.as_ref())
            .map(|p| p.saved_pages())
            .sum();
        let parent = src
            .images_dir()
            .map(|d| d.join("parent"))
            .filter(|p| p.exists())
            .map(|p| std::fs::read_link(&p).unwrap_or(p).display().to_string());
        Summary {
            tool,
            written,
            written_from,
            img_version: self.inventory.as_ref().map(|i| i.img_version),
            root_pid: self.tasks.first().map(|t| t.pid()),
            processes: self.tasks.len(),
            threads: self
                .tasks
                .iter()
                .map(|t| t.entry.threads.len().max(1))
                .sum(),
            zombies: self.tasks.iter().filter(|t| t.zombie()).count(),
            images: images.len(),
            image_bytes: images.iter().map(|m| m.size).sum(),
            pages,
            page_bytes: pages * mem::PAGE,
            stats,
            manifest_files: self
                .manifest
                .as_ref()
                .and_then(|m| m["files"].as_object())
                .map(|f| f.len()),
            parent,
        }
    }

    /// Builds the report the options ask for.
    pub fn report(&mut self, o: &Options) -> Result<Report, InspectError> {
        if let Some(p) = o.pid {
            if !self.tasks.iter().any(|t| t.pid() == p) {
                return Err(InspectError::NoSuchPid {
                    pid: p,
                    pids: self
                        .tasks
                        .iter()
                        .map(|t| t.pid().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                });
            }
        }
        let s = &o.sections;
        let w = self.world();
        let processes = if s.ps || s.fds || s.mem {
            Some(self.processes(o, &w)?)
        } else {
            None
        };
        let mut sk_notes = Vec::new();
        let sockets = s.sockets.then(|| self.sockets(o, &w, &mut sk_notes));
        self.notes.extend(sk_notes);
        let pipes = s.fds.then(|| self.pipes(o, &w));
        let ttys = s.fds.then(|| self.ttys(o, &w));
        let mounts = if s.mounts { Some(self.mounts(o)) } else { None };
        let namespaces = if s.mounts {
            Some(self.namespaces(o))
        } else {
            None
        };
        let cgroups = if s.mounts { self.cgroups(o) } else { None };
        let container = if s.container {
            super::runtime::read(&self.src, &mut self.notes)?
        } else {
            None
        };
        let search = match &o.search {
            Some(spec) => Some(self.search(spec, o.pid)?),
            None => None,
        };
        let summary = self.summary();
        let mut notes: Vec<Note> = Vec::new();
        for (object, reason) in &self.notes {
            let n = Note {
                object: object.clone(),
                reason: reason.clone(),
            };
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        let src = &self.src;
        Ok(Report {
            format: FORMAT,
            source: SourceInfo {
                path: src.path.display().to_string(),
                kind: if src.compression.is_some() {
                    "archive"
                } else {
                    "directory"
                },
                compression: src.compression,
                container: src.container,
            },
            summary,
            processes,
            sockets,
            pipes,
            ttys,
            mounts,
            namespaces,
            cgroups,
            container,
            search,
            notes,
        })
    }

    /// `--search`: the saved memory of every process (or `pid`'s).
    fn search(
        &mut self,
        spec: &super::SearchSpec,
        pid: Option<u32>,
    ) -> Result<Search, InspectError> {
        let pattern = if spec.regex {
            spec.pattern.clone()
        } else {
            regex::escape(&spec.pattern)
        };
        let re = regex::bytes::RegexBuilder::new(&pattern)
            .unicode(false)
            .build()
            .map_err(|e| InspectError::Pattern(spec.pattern.clone(), e))?;
        // Shared memory objects, searched once, shown at the address of the first process
        // (of those searched) that maps them.
        let mut shm: BTreeMap<u64, SharedObj> = BTreeMap::new();
        let mut items_own = Vec::new();
        for t in &self.tasks {
            if pid.is_some_and(|p| p != t.pid()) {
                continue;
            }
            let labels = self.vma_labels(t);
            if let Some(mm) = &t.mm {
                for v in &mm.vmas {
                    if let Some(id) = self.shmem_of(v) {
                        let e = shm
                            .entry(id)
                            .or_insert_with(|| (t.pid(), t.comm(), Vec::new(), labels.clone()));
                        if e.0 == t.pid() {
                            e.2.push((v.pgoff, v.start, v.end.saturating_sub(v.start)));
                        }
                    }
                }
            }
            if let Some(map) = &t.pagemap {
                items_own.push((t.pid(), t.comm(), map, labels));
            }
        }
        let mut shm_maps = Vec::new();
        for (id, (p, comm, spans, labels)) in shm {
            if let Some(map) = PageMap::load(
                &self.src,
                &format!("pagemap-shmem-{id}.img"),
                &mut self.notes,
            )? {
                shm_maps.push((p, comm, map, spans, labels));
            }
        }
        let mut items: Vec<mem::Searchable<'_>> = items_own
            .into_iter()
            .map(|(pid, comm, map, vmas)| mem::Searchable {
                pid,
                comm,
                map,
                vmas,
                shared_at: None,
            })
            .collect();
        for (p, comm, map, spans, labels) in &shm_maps {
            items.push(mem::Searchable {
                pid: *p,
                comm: comm.clone(),
                map,
                vmas: labels.clone(),
                shared_at: Some(spans.clone()),
            });
        }
        let (hits, truncated, bytes) = mem::search(
            &self.src,
            &items,
            &mem::SearchOpts {
                re: &re,
                context: spec.context,
                max_hits: spec.max_hits,
            },
        )?;
        Ok(Search {
            pattern: spec.pattern.clone(),
            regex: spec.regex,
            hits,
            truncated,
            bytes_searched: bytes,
        })
    }

    /// `--dump-mem PID ADDR LEN`: the bytes, and the ranges not in the checkpoint with why.
    pub fn dump_mem(
        &self,
        pid: u32,
        addr: u64,
        len: u64,
    ) -> Result<(Vec<u8>, Vec<String>), InspectError> {
        let t =
            self.tasks
                .iter()
                .find(|t| t.pid() == pid)
                .ok_or_else(|| InspectError::NoSuchPid {
                    pid,
                    pids: self
                        .tasks
                        .iter()
                        .map(|t| t.pid().to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                })?;
        let addr_err = |what: String| InspectError::Address { pid, addr, what };
        if len > 1 << 30 {
            return Err(addr_err("at most 1 GiB at a time".into()));
        }
        let mm =
            t.mm.as_ref()
                .ok_or_else(|| addr_err("no memory image (mm) for this process".into()))?;
        let end = addr
            .checked_add(len)
            .ok_or_else(|| addr_err("the range wraps around".into()))?;
        // The range must be mapped.
        let mut a = addr;
        while a < end {
            let Some(v) = mm.vmas.iter().find(|v| v.start <= a && a < v.end) else {
                return Err(addr_err(format!("{a:#x} is not mapped in {pid}")));
            };
            a = v.end;
        }
        let map = t
            .pagemap
            .as_ref()
            .ok_or_else(|| addr_err("no pagemap image for this process".into()))?;
        let b = mem::read_ranges(&self.src, &[(map, addr, len as usize)])?.remove(0);
        let mut why = Vec::new();
        for (s, n) in &b.missing {
            let v = mm.vmas.iter().find(|v| v.start <= *s && *s < v.end);
            let reason = match v.map(|v| {
                let (k, p) = self.vma_path(v, mm);
                (k, p)
            }) {
                Some(("file", Some(p))) => format!(
                    "clean pages of {p}: their content is in the file, not in the checkpoint"
                ),
                Some(("shmem" | "memfd", _)) => {
                    "shared memory: saved in pagemap-shmem images, not read by --dump-mem".into()
                }
                Some(("vvar" | "vsyscall", _)) => "kernel-provided pages, not saved".into(),
                _ => match map.run_at(*s) {
                    Some(r) if r.flags & mem::PE_LAZY != 0 => "lazy pages, on a page server".into(),
                    Some(r) if r.flags & mem::PE_PARENT != 0 => {
                        "in the parent checkpoint, which is not here".into()
                    }
                    Some(_) => "the pages image is missing or short".into(),
                    None => "never written (reads as zeros)".into(),
                },
            };
            why.push(format!("{s:#x}+{n:#x}: {reason}"));
        }
        Ok((b.data, why))
    }
}

/// "CRIU 4.2" from the first lines of a CRIU dump.log next to the images, if any.
fn criu_version(src: &Source) -> Option<String> {
    let m = src.image("dump.log").or_else(|| src.member("dump.log"))?;
    let head = src.read_at(m, 0, 4096).ok()?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().find(|l| l.contains("Version: "))?;
    let v = line.split("Version: ").nth(1)?.split_whitespace().next()?;
    Some(format!("CRIU {v} (from dump.log)"))
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
