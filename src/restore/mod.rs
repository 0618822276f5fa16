//! The restore pipeline: verify → read images → create the puppet with the dumped PID →
//! empty it → per-kind restore → registers → let it run.
//!
//! The "puppet" is a child created with `clone3(set_tid = PID)` that stops itself under
//! ptrace. cryo then drives it entirely with injected syscalls through a one-page trampoline
//! (`syscall; int3`) placed at an address that is free in both cryo and the dumped layout:
//! it closes every inherited fd, unmaps all of cryo's memory, maps the dumped VMAs, fills
//! pages from another thread with `process_vm_writev`, and recreates the rest. The last
//! injected syscall unmaps the trampoline itself; cryo catches its exit, loads the dumped
//! registers and detaches. Until that moment nothing of the program has run, and every
//! failure kills the puppet, so a failed restore leaves no process behind.

pub mod sessions;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use crate::image::{self, pb, ImageDir, ImageError, Manifest};
use crate::kinds::error::{task_error_from, Failure, TaskError, Unsupported};
use crate::kinds::{self, RestoreCx, TaskImages};
use crate::notify::{Notifier, NotifyError};
use crate::num::{micros_u32, micros_u64, pid_from_img, usize_of};
use crate::procfs;
use crate::sys::clone::CloneArgs;
use crate::sys::mem::Mapping;
use crate::sys::ptrace::{Regs, Stop, Tracee};
use crate::sys::remote::{Batch, BatchArea, Remote, RemoteError, Syscalls, SYSCALL_INSN};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub detach: bool,
    pub pidfile: Option<std::path::PathBuf>,
    /// `--shell-job`: the tree joins cryo's session and terminal; without `detach` its
    /// process group gets the terminal's foreground while cryo waits for it.
    pub shell_job: bool,
    /// `--root` and external mounts, for a tree with a mount namespace of its own.
    pub mounts: kinds::mounts::MountOpts,
    /// Namespaces to join rather than create (`--join-ns`, external keys).
    pub join: kinds::ns::NsJoin,
    /// `--orphan-pts-master`: keep the pty masters made for slaves whose master was not in
    /// the tree (`kinds::tty::take_orphan_masters`) instead of hanging the slaves up.
    pub orphan_pts_master: bool,
    /// `--restore-sibling` / RPC `rst_sibling`: the root is created as cryo's sibling
    /// (`CLONE_PARENT`), so cryo's caller is its parent.
    pub sibling: bool,
    /// `--inherit-fd fd[N]:KEY` (RPC `inherit_fd`): (KEY, fd N of cryo's own table).
    pub inherit_fd: Vec<(String, i32)>,
    /// `--manage-cgroups` and `--cgroup-root` (`kinds::cgroup`).
    pub cgroups: kinds::cgroup::CgOpts,
    /// `--network-lock`: how the restored tree's network stays locked until it runs.
    pub network_lock: crate::netlock::Method,
    /// Links whose other side is outside the tree (`--external veth[..]`, `macvlan[..]`,
    /// `--veth-pair`).
    pub links: kinds::netns::LinkOpts,
    /// `--tcp-established`, `--tcp-close`, `--ext-unix-sk`.
    pub sock: kinds::files::SockOpts,
    /// `--lazy-pages`: the lazy-pages daemon's socket (`crate::lazy`); private anonymous
    /// memory is left to it.
    pub lazy_pages: Option<std::path::PathBuf>,
    /// `--cpu-cap` bits (`kinds::cpuinfo`): with `CAP_IMAGE`, cpuinfo.img is checked against
    /// this CPU before anything is created.
    pub cpu_cap: u32,
    /// The tree's memory staged by `cryo receive` during the pre-copy rounds
    /// (`crate::stage`): moved into its processes instead of copied from the images.
    pub stage: Option<std::sync::Arc<crate::stage::Stage>>,
}

/// Why a restore failed: the pipeline's own failures, and each kind's error, collected.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("PID {pid} is in use by another process ({who})")]
    PidBusy { pid: i32, who: String },
    #[error("cannot create a process with PID {pid}")]
    Fork {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a process with PID {pid}")]
    Spawn {
        pid: i32,
        #[source]
        source: crate::sys::proc::SpawnError,
    },
    #[error("{what} failed on the restored process")]
    Ptrace {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot write the restored process's memory at {addr:#x}")]
    WriteMemory {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    /// A failure every stage can meet (in-target call, /proc, images, refusal, fault point).
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    InetSk(#[from] kinds::inet_sk::InetSkError),
    #[error(transparent)]
    Files(#[from] kinds::files::FilesError),
    #[error(transparent)]
    Memory(#[from] kinds::memory::MemoryError),
    #[error(transparent)]
    Signals(#[from] kinds::signals::SignalsError),
    #[error(transparent)]
    Misc(#[from] kinds::misc::MiscError),
    #[error(transparent)]
    Creds(#[from] kinds::creds::CredsError),
    #[error(transparent)]
    Timers(#[from] kinds::timers::TimersError),
    #[error(transparent)]
    Rlimits(#[from] kinds::rlimits::RlimitsError),
    #[error(transparent)]
    Regs(#[from] kinds::regs::RegsError),
    #[error(transparent)]
    Threads(#[from] kinds::threads::ThreadsError),
    #[error(transparent)]
    Seccomp(#[from] kinds::seccomp::SeccompError),
    #[error(transparent)]
    Ns(#[from] kinds::ns::NsError),
    #[error(transparent)]
    Ipc(#[from] kinds::ipc::IpcError),
    #[error(transparent)]
    Mounts(#[from] kinds::mounts::MountsError),
    #[error(transparent)]
    Cgroup(#[from] kinds::cgroup::CgroupError),
    #[error(transparent)]
    Locks(#[from] kinds::locks::LocksError),
    #[error(transparent)]
    Tty(#[from] kinds::tty::TtyError),
    #[error(transparent)]
    Ghost(#[from] kinds::ghost::GhostError),
    #[error("the images are inconsistent: {0}")]
    BadImage(String),
    #[error(transparent)]
    Netns(#[from] kinds::netns::NetnsError),
    #[error(transparent)]
    Userns(#[from] kinds::userns::UsernsError),
    #[error(transparent)]
    Cpuinfo(#[from] kinds::cpuinfo::CpuinfoError),
    #[error(transparent)]
    NetLock(#[from] crate::netlock::NetLockError),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}
task_error_from!(RestoreError, no_failure);

impl RestoreError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        let kind: &dyn Failure = match self {
            RestoreError::PidBusy { .. } | RestoreError::Threads(kinds::threads::ThreadsError::TidBusy { .. }) => {
                return Some("wait until it exits (a killed process is gone once its parent reaps it); a tree dumped as the init of its own PID namespace is restored in a new one, where its PIDs are always free".into())
            }
            RestoreError::Privilege(p) => return Some(p.hint()),
            RestoreError::Fork { .. }
            | RestoreError::Spawn { .. }
            | RestoreError::Ptrace { .. }
            | RestoreError::Remote(_)
            | RestoreError::WriteMemory { .. }
            | RestoreError::Notify(_)
            | RestoreError::BadImage(_)
            | RestoreError::Lazy(_)
            | RestoreError::Internal(_) => return None,
            RestoreError::Task(e) => e,
            RestoreError::Files(e) => e,
            RestoreError::Memory(e) => e,
            RestoreError::Signals(e) => e,
            RestoreError::Misc(e) => e,
            RestoreError::Creds(e) => e,
            RestoreError::Timers(e) => e,
            RestoreError::Rlimits(e) => e,
            RestoreError::Regs(e) => e,
            RestoreError::Threads(e) => e,
            RestoreError::Seccomp(e) => e,
            RestoreError::Ns(e) => e,
            RestoreError::Ipc(e) => e,
            RestoreError::Mounts(e) => e,
            RestoreError::Cgroup(e) => e,
            RestoreError::Locks(e) => e,
            RestoreError::Tty(e) => e,
            RestoreError::Ghost(e) => e,
            RestoreError::Netns(e) => e,
            RestoreError::Userns(e) => e,
            RestoreError::Cpuinfo(e) => e,
            RestoreError::NetLock(e) => e,
            RestoreError::InetSk(e) => e,
        };
        kind.hint()
    }
}

/// A fault point of the restore ([`crate::fault`]).
fn fault_point(stage: &str) -> Result<(), RestoreError> {
    Ok(crate::fault::point(stage)?)
}

/// The puppet; killed on drop unless released.
struct Puppet {
    tracee: Tracee,
    released: bool,
}

impl Drop for Puppet {
    fn drop(&mut self) {
        if !self.released {
            let _ = crate::sys::proc::kill(self.tracee.tid, libc::SIGKILL);
            while let Ok(Stop::Stopped { .. }) = self.tracee.wait() {
                let _ = self.tracee.cont(0);
            }
        }
    }
}

/// Result of a restore, for logs and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub pid: i32,
    pub pages_restored: u64,
    pub total_us: u64,
    pub remote_syscalls: u64,
}

/// Reads the whole image set: every task of pstree.img (parents before children) and the
/// shared files.img. Also says whether the root had a PID namespace of its own (it is then
/// its PID 1), and gives the key of an external one it ran in (`pidns-ID.img`, `--external
/// pid[INO]:KEY` at dump).
#[allow(clippy::type_complexity)]
fn read_tree(
    dir: &ImageDir,
) -> Result<
    (
        Vec<TaskImages>,
        HashMap<u32, pb::FileEntry>,
        bool,
        Option<String>,
    ),
    RestoreError,
> {
    let inv: pb::InventoryEntry = dir.read_one("inventory.img", image::INVENTORY)?;
    if inv.img_version != 2 {
        return Err(Unsupported::restore(format!(
            "image version {} (cryo reads version 2)",
            inv.img_version
        ))
        .into());
    }
    let tree: Vec<pb::PstreeEntry> = dir.read("pstree.img", image::PSTREE)?;
    if tree.is_empty() {
        return Err(RestoreError::BadImage("pstree.img has no process".into()));
    }
    for (i, ps) in tree.iter().enumerate() {
        // Every id is one the kernel can hand out, so `TaskImages::vpid` and the ids passed
        // to the kernel below are exact; but a group or session 0, one outside the tree's
        // PID namespace (its init's, dumped with --shell-job: it joins cryo's).
        let outside = |id: u32| id == 0;
        let ids = [ps.pid]
            .into_iter()
            .chain([ps.pgid, ps.sid].into_iter().filter(|&x| !outside(x)))
            .chain(ps.threads.iter().copied());
        for id in ids.chain((i > 0).then_some(ps.ppid)) {
            if crate::num::pid_from_img(id).is_none() {
                return Err(RestoreError::BadImage(format!(
                    "pstree.img: process {}: {id} is not a process id",
                    ps.pid
                )));
            }
        }
        let parent_ok = if i == 0 {
            true
        } else {
            tree[..i].iter().any(|p| p.pid == ps.ppid)
        };
        if !parent_ok {
            return Err(RestoreError::BadImage(format!(
                "pstree.img: process {} comes before its parent {}",
                ps.pid, ps.ppid
            )));
        }
    }
    let tasks = tree
        .iter()
        .map(|ps| read_task(dir, ps))
        .collect::<Result<Vec<_>, _>>()?;
    check_nested_pids(&tasks)?;
    check_proc_pids(dir, &tasks)?;
    let files = merge_files(dir.read::<pb::FileEntry>("files.img", image::FILES)?);
    let mut own_pid_ns = match (
        inv.root_ids.and_then(|r| r.pid_ns_id),
        tasks[0].ids.pid_ns_id,
    ) {
        (Some(cryo), Some(root)) => cryo != root,
        _ => false,
    };
    let ext_pid = match tasks[0].ids.pid_ns_id.filter(|_| own_pid_ns) {
        Some(id) => dir
            .read_opt::<pb::PidnsEntry>(&format!("pidns-{id}.img"), image::PIDNS)?
            .and_then(|v| v.into_iter().next())
            .and_then(|e| e.ext_key),
        None => None,
    };
    if ext_pid.is_some() {
        // Not the tree's: the caller gives the namespace to create it in.
        own_pid_ns = false;
    }
    if own_pid_ns && tasks[0].pid != 1 {
        return Err(RestoreError::BadImage(format!(
            "the root process {} has a PID namespace of its own but is not its PID 1",
            tasks[0].pid
        )));
    }
    Ok((tasks, files, own_pid_ns, ext_pid))
}

/// files.img by id. A tun/tap file is two records with one id, as CRIU writes it: a REG
/// one (path and open flags) and the TUNF one; the REG record is kept in the other's `reg`.
fn merge_files(list: Vec<pb::FileEntry>) -> HashMap<u32, pb::FileEntry> {
    let mut out: HashMap<u32, pb::FileEntry> = HashMap::new();
    for f in list {
        match out.remove(&f.id) {
            Some(prev) if prev.r#type == pb::FdTypes::Reg as i32 && f.reg.is_none() => {
                out.insert(f.id, pb::FileEntry { reg: prev.reg, ..f });
            }
            Some(prev) if f.r#type == pb::FdTypes::Reg as i32 && prev.reg.is_none() => {
                out.insert(f.id, pb::FileEntry { reg: f.reg, ..prev });
            }
            _ => {
                out.insert(f.id, f);
            }
        }
    }
    out
}

/// PID namespaces nested in the tree's (pstree's `cryo_ns_depth`/`cryo_ns_tids`): every id
/// one the kernel can hand out, one list per thread, a process as deep as its parent (the
/// same namespace) or one level deeper as the init (PID 1) of a namespace its parent made.
fn check_nested_pids(tasks: &[TaskImages]) -> Result<(), RestoreError> {
    for (i, t) in tasks.iter().enumerate() {
        let ps = &t.pstree;
        let bad =
            |why: &str| RestoreError::BadImage(format!("pstree.img: process {}: {why}", ps.pid));
        let d = t.ns_depth();
        if d > 31 {
            return Err(bad("nested more than 32 PID namespaces deep"));
        }
        if ps.cryo_ns_tids.len() != d * ps.threads.len() {
            return Err(bad(
                "its ids in nested PID namespaces do not match its threads",
            ));
        }
        if ps.cryo_ns_tids.iter().any(|&v| pid_from_img(v).is_none()) {
            return Err(bad("an id in a nested PID namespace is not a process id"));
        }
        // Its ids in nested namespaces are its first thread's (`TaskImages::ns_ids`).
        if d > 0 && ps.threads.first() != Some(&ps.pid) {
            return Err(bad(
                "it is in a nested PID namespace and its first thread is not the process itself",
            ));
        }
        if i == 0 {
            if d != 0 || !ps.cryo_ns_tids.is_empty() {
                return Err(bad("the root is in a PID namespace below the tree's"));
            }
            continue;
        }
        // Checked by read_tree: the parent comes first.
        let Some(p) = tasks[..i].iter().find(|p| p.pid == ps.ppid) else {
            continue;
        };
        if p.is_zombie() {
            // A zombie is made by exiting: it forks no child.
            return Err(bad(&format!("its parent {} is a zombie", p.pid)));
        }
        let pd = p.ns_depth();
        let same = t.ids.pid_ns_id.is_none() || t.ids.pid_ns_id == p.ids.pid_ns_id;
        let ok = if d == pd {
            same
        } else {
            d == pd + 1 && (t.local_pid() == 1 || init_sibling(&tasks[..i], t).is_some())
        };
        if !ok {
            return Err(bad(
                "its PID namespace is neither its parent's nor one its parent made for its children, whose init is an earlier child",
            ));
        }
    }
    Ok(())
}

/// A proc mount of a nested mount namespace is made once the init of the PID namespace it
/// shows exists: `cryo_proc_pid` must name a live process of the tree.
fn check_proc_pids(dir: &ImageDir, tasks: &[TaskImages]) -> Result<(), RestoreError> {
    let mut seen = std::collections::HashSet::new();
    for id in tasks.iter().filter_map(|t| t.ids.mnt_ns_id) {
        if !seen.insert(id) {
            continue;
        }
        let name = format!("mountpoints-{id}.img");
        let Some(entries) = dir.read_opt::<pb::MntEntry>(&name, image::MNTS)? else {
            continue;
        };
        for e in &entries {
            let Some(p) = e.cryo_proc_pid else { continue };
            if !tasks.iter().any(|t| t.pid == p && !t.is_zombie()) {
                return Err(RestoreError::BadImage(format!(
                    "{name}: proc mount {} shows the PID namespace of process {p}, which is not a live process of the tree",
                    e.mountpoint
                )));
            }
        }
    }
    Ok(())
}

/// The init (PID 1) of the nested PID namespace `t` was forked into by its parent after it
/// (`t` is a later child of the namespace's maker): a sibling among `earlier`, one level
/// below the parent, in `t`'s PID namespace (any such sibling for a zombie, whose namespace
/// was not saved).
fn init_sibling<'a>(earlier: &'a [TaskImages], t: &TaskImages) -> Option<&'a TaskImages> {
    earlier.iter().find(|s| {
        s.pstree.ppid == t.pstree.ppid
            && s.pid != t.pid
            && s.ns_depth() == t.ns_depth()
            && s.local_pid() == 1
            && !s.is_zombie()
            && (t.ids.pid_ns_id.is_none() || s.ids.pid_ns_id == t.ids.pid_ns_id)
    })
}

/// Reads the images of one task.
fn read_task(dir: &ImageDir, ps: &pb::PstreeEntry) -> Result<TaskImages, RestoreError> {
    let pid = ps.pid;
    let core: pb::CoreEntry = dir.read_one(&format!("core-{pid}.img"), image::CORE)?;
    if core
        .tc
        .as_ref()
        .is_some_and(|t| t.task_state == kinds::misc::TASK_DEAD)
    {
        return Ok(TaskImages {
            pid,
            pstree: ps.clone(),
            core,
            ..Default::default()
        });
    }
    let ids: pb::TaskKobjIdsEntry = dir.read_one(&format!("ids-{pid}.img"), image::IDS)?;
    let (pages_id, pm) = dir
        .read_pagemap(&format!("pagemap-{pid}.img"))?
        .ok_or_else(|| ImageError::Missing {
            path: dir.file(&format!("pagemap-{pid}.img")),
        })?;
    let mut mm: pb::MmEntry = dir.read_one(&format!("mm-{pid}.img"), image::MM)?;
    let guards = kinds::memory::split_guards(&mut mm)?;
    let img = TaskImages {
        pid,
        pstree: ps.clone(),
        core,
        ids,
        mm,
        guards,
        fs: dir.read_one(&format!("fs-{pid}.img"), image::FS)?,
        fdinfo: dir
            .read_opt(&format!("fdinfo-{}.img", ids.files_id), image::FDINFO)?
            .unwrap_or_default(),
        pagemap: pm,
        pages_id,
        threads: ps
            .threads
            .iter()
            .skip(1)
            .map(|tid| dir.read_one(&format!("core-{tid}.img"), image::CORE))
            .collect::<Result<_, _>>()?,
        files_shared: None,
        pages_remote: false,
    };
    Ok(img)
}

/// A free, page-aligned address range of `len` bytes outside every VMA of the dumped task
/// and of cryo itself, for the trampoline.
fn trampoline_addr(tasks: &[TaskImages], len: u64) -> Result<u64, RestoreError> {
    let own = procfs::parse_smaps(&procfs::read(crate::sys::proc::own_pid(), "maps")?)
        .unwrap_or_default();
    let mut used: Vec<(u64, u64)> = tasks
        .iter()
        .flat_map(|t| t.mm.vmas.iter().map(|v| (v.start, v.end)))
        .collect();
    used.extend(own.iter().map(|v| (v.start, v.end)));
    used.sort_unstable();
    let guard = 1 << 20; // keep clear of stack guard gaps
    let mut cand = 1u64 << 24;
    // VMA bounds come from the images: saturate rather than overflow.
    for (s, e) in used {
        if cand.saturating_add(len + guard) <= s {
            return Ok(cand);
        }
        cand = cand.max(e.saturating_add(guard));
    }
    if cand.saturating_add(len) < 0x7fff_0000_0000 {
        return Ok(cand);
    }
    Err(RestoreError::Internal(
        "no free address for the restore trampoline",
    ))
}

/// Size of the trampoline area (one code page + scratch).
const TR_LEN: u64 = 16 * 4096;
/// The last bytes of the trampoline area: results of batched calls, not scratch.
const SCRATCH_RESULTS: u64 = 4096;

/// A [`Remote`] for a puppet task at the trampoline `tr`, which runs batches of calls from
/// the rest of the trampoline's code page (results in its last scratch page).
pub(crate) fn batch_remote(t: &Tracee, tr: u64, base: Regs) -> Remote<'_> {
    let mut r = Remote::new(t, tr, base);
    r.set_batch_area(trampoline_batch_area(tr));
    r
}

/// Where batches run in a puppet whose trampoline is at `tr`.
pub(crate) fn trampoline_batch_area(tr: u64) -> BatchArea {
    BatchArea {
        code: tr + 16,
        code_len: 4096 - 16,
        results: tr + TR_LEN - SCRATCH_RESULTS,
        results_len: SCRATCH_RESULTS,
    }
}
/// Top of the user address space (47-bit).
const USER_TOP: u64 = 0x7fff_ffff_f000;

/// Every puppet task created so far (processes and threads, in creation order). On drop
/// (a failed restore) they are killed newest first: a thread-group leader reports its exit
/// only after its other threads are reaped, a parent after nothing.
struct Puppets(Vec<Puppet>);

impl Drop for Puppets {
    fn drop(&mut self) {
        while let Some(p) = self.0.pop() {
            drop(p);
        }
    }
}

/// A task shaped and stopped, waiting for the final release.
struct Ready {
    /// Host PID.
    pid: i32,
    /// Stopped by job control when dumped (with this signal): stopped again when released.
    stopped: Option<i32>,
    regs: pb::UserX86RegsEntry,
    mask: u64,
    threads: Vec<kinds::threads::RestoredThread>,
}

/// Everything `shape` needs besides the task itself.
struct Shared<'a> {
    dir: &'a ImageDir,
    files: &'a HashMap<u32, pb::FileEntry>,
    objs: &'a std::cell::RefCell<kinds::files::FdObjects>,
    tasks: &'a [TaskImages],
    mounts: &'a kinds::mounts::MountOpts,
    join: &'a kinds::ns::NsJoin,
    links: &'a kinds::netns::LinkOpts,
    /// The lock of the root's network namespace, taken as soon as it is rebuilt.
    netlock: &'a std::cell::RefCell<crate::netlock::NetLock>,
    /// The network namespace id of the dumper (`inventory.root_ids`): the root shares cryo's
    /// namespace when its own is that one.
    dumper_net: Option<u32>,
    /// The dumper's namespace ids (`inventory.root_ids`; CRIU numbers namespaces its own
    /// way, and cryo's ids are per host): the root shares cryo's namespace of a kind when its
    /// own is the dumper's.
    dumper: pb::TaskKobjIdsEntry,
    /// Each created task's PID in cryo's namespace, by its dumped PID (they differ inside a
    /// restored PID namespace).
    host: HashMap<u32, i32>,
    /// See [`RestoreCx::cryo_pidfd`]; every puppet inherits it from the root's fd table.
    cryo_pidfd: Option<i32>,
    /// The saved cgroups, to move each task into (None: `--manage-cgroups=ignore`).
    cgroups: Option<&'a kinds::cgroup::CgRestore>,
    /// The fork order and helpers the tree's sessions need ([`sessions`]).
    sessions: &'a sessions::Plan,
    /// Children forked by a copy of another task than their parent (through a session
    /// helper): the task whose memory and fds the copy had, by child PID.
    forked_by: HashMap<u32, u32>,
    /// PIDs of processes gone before the dump whose /proc directories the tree holds
    /// (`remap-fpath.img`, CRIU's PROCFS remaps), and the helpers standing in for them while
    /// the tree opens its files (host PID, PID in the tree's namespace).
    dead_pids: Vec<u32>,
    dead_helpers: Vec<(i32, i32)>,
    /// A lazy restore's connection to the lazy-pages daemon.
    lazy: Option<&'a crate::lazy::Sink>,
    /// The tree's staged memory, when it can be used (`RestoreOpts::stage`).
    stage: Option<&'a crate::stage::Stage>,
    /// Mounts of nested mount namespaces that wait for the init of their PID namespace.
    pending_mounts: Vec<kinds::mounts::PendingMounts>,
    tr: u64,
    calls: u64,
    /// The credentials every puppet process starts with, once learnt (`Inherited::creds`).
    creds: Option<pb::CredsEntry>,
    /// The last calls of processes shaped, still running (`RestoreCx::start_later`).
    held: Vec<kinds::HeldRun>,
}

/// Waits until the processes shaped so far have run their last calls (children, once all
/// of a parent's are shaped; every process, once the root is).
fn finish_held(sh: &mut Shared<'_>) -> Result<(), RestoreError> {
    for h in std::mem::take(&mut sh.held) {
        h.finish(sh.tr)?;
    }
    Ok(())
}

fn ptrace_err(what: &'static str) -> impl Fn(std::io::Error) -> RestoreError {
    move |source| RestoreError::Ptrace { what, source }
}

/// The signal that puts a task dumped as stopped back in its group stop: the one that
/// stopped it, if it is a stop signal (images without one: SIGSTOP).
fn stop_signal(saved: Option<u32>) -> i32 {
    match saved.and_then(|s| i32::try_from(s).ok()) {
        Some(s @ (libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)) => s,
        _ => libc::SIGSTOP,
    }
}

/// Turns the stopped puppet `idx` into its task, stage by stage, in the order of the
/// pipeline (docs/ARCHITECTURE.md §3, step 5): its cgroups, emptying the puppet, its
/// namespaces, its fds, its memory, its children (recursively, so they inherit what they
/// share with it) and its session, the task's own state, its threads, and last its
/// credentials. Every created puppet is pushed to `puppets` first, so a failure anywhere
/// kills them all.
fn shape(
    sh: &mut Shared<'_>,
    idx: usize,
    inherited: Option<&kinds::files::FdTable>,
    puppets: &mut Puppets,
    ready: &mut Vec<Ready>,
    stats: &mut pb::RestoreStatsEntry,
) -> Result<(), RestoreError> {
    let tasks = sh.tasks;
    let img = &tasks[idx];
    let pid = *sh.host.get(&img.pid).ok_or(RestoreError::Internal(
        "a task was shaped before it was created",
    ))?;
    // The task this one was forked from (None for the root, a copy of cryo).
    let forker = sh
        .forked_by
        .get(&img.pid)
        .copied()
        .unwrap_or(img.pstree.ppid);
    let parent = tasks.iter().find(|t| idx != 0 && t.pid == forker);
    tracing::debug!(pid, vpid = img.pid, "shaping");
    let own_cgns = enter_cgroups(sh, idx, pid, img, parent)?;
    let t = Tracee { tid: pid };
    let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    let mut cx = RestoreCx {
        pid,
        remote: batch_remote(&t, sh.tr, base),
        scratch: sh.tr + 4096,
        scratch_len: TR_LEN - 4096 - SCRATCH_RESULTS,
        dir: sh.dir,
        files: sh.files,
        objs: sh.objs,
        stats,
        inherited: Default::default(),
        cow: Vec::new(),
        cryo_pidfd: sh.cryo_pidfd,
        lazy: sh.lazy,
        later: Default::default(),
        stage: sh.stage,
    };
    // Calls whose results nothing needs at once are held back to run in the stop of the next
    // batch (RestoreCx::batch_later): the shaping of a child of a fan-out takes 2 stops, not 7.
    cx.later.on = true;
    // Every process of the tree has the root puppet's credentials until its own are set
    // (a child is forked before its parent's): learnt once for all.
    cx.inherited.creds.clone_from(&sh.creds);
    empty_puppet(sh, &mut cx, idx, own_cgns, img, parent)?;
    enter_namespaces(sh, &mut cx, idx, img, parent)?;
    let mut table = restore_files(&mut cx, img, parent, inherited)?;
    // Memory before the children, so they inherit it copy-on-write.
    kinds::restore_kind::<kinds::memory::Memory>(&mut cx, img)?;
    fault_point("memory")?;
    create_children(sh, &mut cx, img, &mut table, puppets, ready)?;
    // The staged memory of the other processes, kept for the children forked above: gone.
    if let Some(st) = cx.stage {
        let mut b = Batch::new();
        for (_, at) in st.windows() {
            b.munmap(at, crate::stage::WINDOW)?;
        }
        cx.batch_later(&b)?;
    }
    // A lazy restore registers the memory its daemon fills only now: the children were
    // forked without it (each rebuilt its own memory, none kept copy-on-write), and nothing
    // so far touched those pages. What comes next may (rseq, the program itself).
    kinds::memory::lazy_register(&mut cx, img)?;
    restore_task_state(&mut cx, img)?;
    let threads = create_threads(sh, &mut cx, img, puppets)?;
    enter_childrens_pid_ns(sh, &mut cx, img)?;
    kinds::restore_kind::<kinds::creds::Creds>(&mut cx, img)?;
    if sh.creds.is_none() {
        sh.creds.clone_from(&cx.inherited.creds);
    }
    fault_point("creds")?;
    kinds::misc::restore_late(&mut cx, img)?;
    kinds::restore_kind::<kinds::timers::Timers>(&mut cx, img)?;
    // The last calls run while the next process is shaped (their stops overlap); waited
    // for before anything else is done with this one (`finish_held`).
    if let Some(h) = cx.start_later()? {
        sh.held.push(h);
    }
    sh.calls += cx.remote.calls;
    let ti = img
        .core
        .thread_info
        .as_ref()
        .ok_or_else(|| RestoreError::BadImage(format!("core-{pid}.img has no registers")))?;
    ready.push(Ready {
        pid,
        stopped: img
            .core
            .tc
            .as_ref()
            .filter(|t| t.task_state == kinds::misc::TASK_STOPPED)
            .map(|t| stop_signal(t.stop_signo)),
        regs: ti.gpregs,
        mask: img.core.tc.as_ref().map(|t| t.blk_sigset).unwrap_or(0),
        threads,
    });
    Ok(())
}

/// Stage "cgroups": moves the task (host PID `pid`) into its saved cgroups before its memory
/// is charged and its children inherit them. A root with a cgroup namespace of its own is
/// put at the namespace's root first; returns whether it has one (`empty_puppet` then
/// unshares it).
fn enter_cgroups(
    sh: &Shared<'_>,
    idx: usize,
    pid: i32,
    img: &TaskImages,
    parent: Option<&TaskImages>,
) -> Result<bool, RestoreError> {
    let own_cgns = idx == 0
        && img.ids.cgroup_ns_id.is_some()
        && img.ids.cgroup_ns_id
            != sh
                .dumper
                .cgroup_ns_id
                .or_else(|| kinds::ns::own_ns_id("cgroup"));
    if let Some(cg) = sh.cgroups {
        if own_cgns {
            cg.enter_ns_root(pid, img)?;
        } else {
            cg.place(pid, img, parent)?;
        }
    }
    Ok(own_cgns)
}

/// `rseq` flag: unregister.
const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// Stage "empty the puppet": drops what it inherited from cryo. The root unregisters cryo's
/// rseq area and closes cryo's fds (children are forked once both are gone, and inherit
/// their parent's restored fds on purpose); a root with its own cgroup namespace unshares
/// it; then every mapping goes but the trampoline and, in a child, the private anonymous
/// mappings it keeps copy-on-write from its parent (`RestoreCx::cow`).
fn empty_puppet(
    sh: &Shared<'_>,
    cx: &mut RestoreCx<'_>,
    idx: usize,
    own_cgns: bool,
    img: &TaskImages,
    parent: Option<&TaskImages>,
) -> Result<(), RestoreError> {
    if idx == 0 {
        let own = Tracee { tid: cx.pid }
            .rseq_conf()
            .map_err(ptrace_err("PTRACE_GET_RSEQ_CONFIGURATION"))?;
        if own.rseq_abi_pointer != 0 {
            cx.named("rseq (unregister)").rseq(
                own.rseq_abi_pointer,
                own.rseq_abi_size,
                RSEQ_FLAG_UNREGISTER,
                own.signature,
            )?;
        }
        // Every fd but the pidfd of cryo it may hold (a non-negative fd number).
        match sh.cryo_pidfd.map(i32::cast_unsigned) {
            Some(keep) => {
                cx.close_range(0, keep - 1)?;
                cx.close_range(keep + 1, u32::MAX)?;
            }
            None => cx.close_range(0, u32::MAX)?,
        }
    }
    if own_cgns {
        cx.unshare(libc::CLONE_NEWCGROUP)?;
        if let Some(cg) = sh.cgroups {
            cg.place_now(cx.pid, img)?;
        }
    }
    // A child starts as a copy of its parent's restored memory: it keeps the private
    // anonymous mappings it had in common with the parent (copy-on-write) and drops the rest.
    // Not in a lazy restore: the parent's lazy memory has no pages yet.
    if let Some(parent) = parent.filter(|_| !img.is_zombie() && sh.lazy.is_none()) {
        cx.cow = kinds::memory::cow_kept(&parent.mm, &img.mm);
        // Its vDSO too, where the parent has the same one (its data pages follow the time
        // namespace: only in the parent's).
        if img.ids.time_ns_id == parent.ids.time_ns_id {
            cx.cow.extend(kinds::memory::vdso_kept(&parent.mm, &img.mm));
            cx.cow.sort_unstable();
        }
    }
    let tr = sh.tr;
    let mut keep = cx.cow.clone();
    keep.extend([(tr, tr + TR_LEN), (USER_TOP, USER_TOP)]);
    // Every puppet keeps the staged memory (its own, and its children's to pass on).
    if let Some(st) = cx.stage {
        keep.extend(
            st.windows()
                .into_iter()
                .map(|(_, at)| (at, at + crate::stage::WINDOW)),
        );
    }
    keep.sort_unstable();
    let mut from = 0;
    let mut b = Batch::new();
    for &(s, e) in &keep {
        if s > from {
            b.munmap(from, s - from)?;
        }
        from = from.max(e);
    }
    // Run with the next batch (the fds' or the mappings').
    cx.batch_later(&b)?;
    Ok(())
}

/// Stage "namespaces": the task's UTS, time, IPC and net namespaces when they are not the
/// ones it inherits (children inherit their parent's), and the root's mount namespace,
/// before any file is opened.
fn enter_namespaces(
    sh: &mut Shared<'_>,
    cx: &mut RestoreCx<'_>,
    idx: usize,
    img: &TaskImages,
    parent: Option<&TaskImages>,
) -> Result<(), RestoreError> {
    let pid = cx.pid;
    // The root's are compared with the namespaces the dumper ran in (`inventory.root_ids`).
    let parent_ids = parent.map(|p| p.ids);
    let (uts_now, ipc_now, net_now) = match parent_ids {
        Some(p) => (p.uts_ns_id, p.ipc_ns_id, p.net_ns_id),
        None => (
            sh.dumper.uts_ns_id.or_else(|| kinds::ns::own_ns_id("uts")),
            sh.dumper.ipc_ns_id.or_else(|| kinds::ns::own_ns_id("ipc")),
            sh.dumper_net,
        ),
    };
    let root_join = |p: &Option<std::path::PathBuf>| p.clone().filter(|_| idx == 0);
    kinds::ns::restore_uts(cx, img, uts_now, root_join(&sh.join.uts).as_deref())?;
    // Before its vDSO is mapped (its data pages follow the time namespace).
    let time_now = parent.map_or_else(
        || {
            sh.dumper
                .time_ns_id
                .or_else(|| kinds::ns::own_ns_id("time"))
        },
        |p| p.ids.time_ns_id,
    );
    let dumper_mnt = sh.dumper.mnt_ns_id.or_else(|| kinds::ns::own_ns_id("mnt"));
    match root_join(&sh.join.time) {
        Some(p) => kinds::ns::join_path(cx, 0, &p, libc::CLONE_NEWTIME, "setns(CLONE_NEWTIME)")?,
        None => kinds::ns::restore_time(cx, img, time_now)?,
    }
    if !kinds::ns::restore_ipc(cx, img, ipc_now, root_join(&sh.join.ipc).as_deref())? {
        kinds::ipc::restore(cx.dir, pid, img, ipc_now)?;
    }
    let net = kinds::ns::restore_net(cx, img, net_now, idx == 0, sh.join)?;
    let made = matches!(net, kinds::ns::NetEntered::Made { .. });
    if (idx == 0 && net.is_own()) || made {
        // Locked before any socket of the tree exists (CRIU's order), and a namespace made
        // anew before its links, addresses and routes: a peer's packet that met the
        // restored address with no socket there yet would be answered with a reset. A
        // namespace a child of the tree made for itself too: its connections have peers
        // outside the tree as well.
        if idx == 0 {
            fault_point("netns")?;
        }
        sh.netlock.borrow_mut().lock_netns_of(pid)?;
    }
    if let kinds::ns::NetEntered::Made { id, ns } = &net {
        kinds::netns::restore(cx.dir, *id, ns.as_fd(), sh.links)?;
    }
    // The root's mount namespace, before any file is opened (children inherit it): the
    // one given with --join-ns mnt:PATH, or its own rebuilt.
    let joined_mnt = root_join(&sh.join.mnt);
    if let Some(p) = &joined_mnt {
        kinds::ns::join_path(cx, 0, p, libc::CLONE_NEWNS, "setns(CLONE_NEWNS)")?;
        sh.objs.borrow_mut().tty.root = Some(format!("/proc/{pid}/root"));
    } else if idx == 0 && img.ids.mnt_ns_id.is_some() && img.ids.mnt_ns_id != dumper_mnt {
        kinds::mounts::restore(cx, img, sh.mounts)?;
        // Terminals are made in the tree's own devpts instances.
        sh.objs.borrow_mut().tty.root = Some(format!("/proc/{pid}/root"));
    }
    // A child in the root's mount namespace that its parent left (it unshared after the
    // fork): it goes back there.
    let root_mnt = sh.tasks[0].ids.mnt_ns_id;
    let back_to_root = parent.is_some_and(|p| p.ids.mnt_ns_id != img.ids.mnt_ns_id)
        && img.ids.mnt_ns_id.is_some()
        && img.ids.mnt_ns_id == root_mnt;
    if back_to_root {
        let root_host = sh.host[&sh.tasks[0].pid];
        let p = std::path::PathBuf::from(format!("/proc/{root_host}/ns/mnt"));
        kinds::ns::join_path(cx, 0, &p, libc::CLONE_NEWNS, "setns(CLONE_NEWNS)")?;
    }
    // A child's mount namespace of its own (nested in the tree): a copy of its parent's,
    // changed as saved.
    if let Some(p) = parent.filter(|p| {
        !back_to_root && img.ids.mnt_ns_id.is_some() && img.ids.mnt_ns_id != p.ids.mnt_ns_id
    }) {
        tracing::debug!(pid, from = ?p.ids.mnt_ns_id, to = ?img.ids.mnt_ns_id, "nested mount namespace");
        let host = &sh.host;
        let pending =
            kinds::mounts::restore_nested(cx, img, sh.mounts, &|p| host.get(&p).copied())?;
        sh.pending_mounts.extend(pending);
    }
    if let Some(ns) = img.ids.mnt_ns_id {
        let mut objs = sh.objs.borrow_mut();
        if let std::collections::hash_map::Entry::Vacant(e) = objs.mnt_ns_host.entry(ns) {
            e.insert(kinds::files::MntNsHold::of(pid).map_err(|source| {
                kinds::TaskError::Object {
                    id: 0,
                    what: format!("hold the mount namespace of process {pid}"),
                    source,
                }
            })?);
        }
    }
    // A socket made in this task's network namespace by another task of the tree is made
    // in it through this task ([`kinds::files::FdObjects::net_ns_host`]).
    if let Some(ns) = img.ids.net_ns_id {
        sh.objs.borrow_mut().net_ns_host.entry(ns).or_insert(pid);
    }
    // Sockets, FIFOs and inotify watches are made in the root's namespaces (children in
    // mount namespaces of their own still get the root's; a child in a network namespace
    // of its own gets its sockets made there, `FdObjects::net_pid`).
    if idx == 0 && (img.ids.mnt_ns_id != dumper_mnt || net.is_own() || joined_mnt.is_some()) {
        sh.objs.borrow_mut().ns_pid = Some(pid);
    }
    Ok(())
}

/// Stage "fds": the task's fd table (a child sharing its parent's table, CLONE_FILES, has
/// it already) and its file locks.
fn restore_files(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    parent: Option<&TaskImages>,
    inherited: Option<&kinds::files::FdTable>,
) -> Result<kinds::files::FdTable, RestoreError> {
    let shares_table = parent.is_some_and(|p| p.ids.files_id == img.ids.files_id);
    let table = match inherited {
        Some(t) if shares_table => t.clone(),
        _ => kinds::files::restore_fds(cx, img, inherited)?,
    };
    kinds::locks::restore(cx, img)?;
    fault_point("files")?;
    Ok(table)
}

/// Stage "children and session": forks the task's children now, so they inherit the fds
/// they share with it, and shapes each completely before the next. Those that stayed in the
/// session this task had before its `setsid` (in another session and not leading their own)
/// are forked before it; a session leader's `setsid` comes next, then the others.
fn create_children(
    sh: &mut Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    table: &mut kinds::files::FdTable,
    puppets: &mut Puppets,
    ready: &mut Vec<Ready>,
) -> Result<(), RestoreError> {
    let tasks = sh.tasks;
    let plan = sh.sessions;
    // The root first makes the stand-ins of gone processes whose /proc files the tree opens
    // (children open theirs while the root forks them).
    if std::ptr::eq(img, &tasks[0]) {
        for n in sh.dead_pids.clone() {
            let h = fork_helper(sh, cx, Some(n), puppets)?;
            sh.dead_helpers.push(h);
        }
    }
    // Children forked through a session helper are not forked here.
    let mut kids: Vec<usize> = (0..tasks.len())
        .filter(|&c| {
            tasks[c].pstree.ppid == img.pid
                && tasks[c].pid != img.pid
                && !plan.via.contains_key(&tasks[c].pid)
        })
        .collect();
    // Early: forked in the session this task had before its setsid() (they do not lead their
    // own session, or led one only after forking a child there: `sessions::Plan::born`).
    // The others come after, so their own children can stay in this task's session.
    let early =
        |c: &TaskImages| plan.born_in(c.pid, c.pstree.sid, img.pstree.sid) != img.pstree.sid;
    kids.sort_by_key(|&c| !early(&tasks[c]));
    let mut in_own_session = img.pstree.sid != img.pid;
    let mut next = 0;
    while next < kids.len() {
        let cidx = kids[next];
        let child = &tasks[cidx];
        if !in_own_session && !early(child) {
            lead_session(cx, img)?;
            in_own_session = true;
        }
        if !child.is_zombie() {
            // A run of live children forked at this point (all before, or all after, this
            // task's setsid) is forked in one stop; their first stops are awaited together.
            // The parent changes nothing between their forks, so each is the same copy as
            // when they were forked one by one.
            let run = kids[next..]
                .iter()
                .take(FORKS_PER_STOP)
                .take_while(|&&c| {
                    let t = &tasks[c];
                    !t.is_zombie()
                        && (in_own_session || early(t))
                        // Same PID namespace as this task, its ids fit a slot, and no mount
                        // waits for a namespace's init: else forked alone (`fork_child`).
                        && t.ns_depth() == img.ns_depth()
                        && 96 + 4 * t.ns_ids(0).len() <= FORK_SLOT
                        && sh.pending_mounts.is_empty()
                })
                .count()
                .max(1);
            fork_children(sh, cx, img, &kids[next..next + run], puppets)?;
            for &c in &kids[next..next + run] {
                shape(sh, c, Some(table), puppets, ready, cx.stats)?;
            }
            next += run;
            continue;
        }
        next += 1;
        fork_child(sh, cx, img, child, puppets)?;
        // The zombie-to-be's puppet (the orphans it forks are pushed after it).
        let zombie_at = puppets.0.len() - 1;
        {
            // A zombie that leads the session of orphans of the tree forks them before it
            // dies, after its setsid() (`sessions::Via::ZombieLeader`).
            let hosted = plan.hosted_by(child.pid);
            if !hosted.is_empty() {
                let host = *puppets.0.last().map(|p| &p.tracee.tid).expect("pushed");
                let t = Tracee { tid: host };
                let mut zcx = helper_cx(sh, &t, &mut *cx.stats)?;
                zcx.setsid()?;
                fork_adopted(sh, &mut zcx, img, &hosted, table, puppets, ready)?;
                sh.calls += std::mem::take(&mut zcx.remote.calls);
            }
            // Its process group: its own, or one whose leader is gone and no task of the
            // tree is in (made for the moment by a helper). A group led by another task of
            // the tree is not joined (that task is put in it only at the end).
            let pgid = child.pstree.pgid;
            let group = if pgid == child.pid {
                ZombieGroup::Own
            } else if pgid != 0 && pgid != child.pstree.sid && !tasks.iter().any(|t| t.pid == pgid)
            {
                if child.ns_depth() > 0 {
                    return Err(Unsupported::restore(format!(
                        "zombie {} is in process group {pgid}, whose leader is gone, in a nested PID namespace",
                        child.pid
                    ))
                    .into());
                }
                ZombieGroup::Orphan(pgid)
            } else {
                ZombieGroup::Inherited
            };
            make_zombie(sh.tr, child, group, &mut puppets.0[zombie_at])?;
            // Its death queued SIGCHLD in this task, which the dumped task had not got
            // pending (pending signals are restored from the images): take it back.
            let set = cx.put(3072, &(1u64 << (libc::SIGCHLD - 1)).to_ne_bytes())?;
            let ts = cx.put(3080, &[0u8; 16])?;
            let _ = cx.rt_sigtimedwait(set, 0, ts);
        }
    }
    if !in_own_session {
        lead_session(cx, img)?;
    }
    session_helpers(sh, cx, img, table, puppets, ready)?;
    // Its fds that name processes of the tree (pidfds, /proc/PID files), which all exist now
    // but its later siblings.
    make_net_ns_ahead(sh, cx, img)?;
    kinds::files::restore_late_fds(cx, img, table)?;
    finish_held(sh)?;
    Ok(())
}

/// The saved network namespaces that sockets or tun/tap files of this task (left for its
/// late fds) were made in, whose first process is not restored yet: a later sibling's
/// branch of the tree made them. Each is made now by this task (unshare, then back to its
/// own), locked and rebuilt (links, addresses, routes, firewall) as its first process would
/// have; that process joins it (`ns::restore_net`). The task is in the tree's user
/// namespace, which owns every network namespace of the tree.
fn make_net_ns_ahead(
    sh: &Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
) -> Result<(), RestoreError> {
    let todo = cx
        .objs
        .borrow()
        .net_ns_to_make_ahead(img.fdinfo.iter().map(|f| f.id), img.ids.net_ns_id);
    let pid = cx.pid;
    for id in todo {
        let open = |what: &str| {
            let path = format!("/proc/{pid}/ns/net");
            std::fs::File::open(&path).map_err(|source| kinds::TaskError::Object {
                id,
                what: format!("open {what} ({path})"),
                source,
            })
        };
        let own = open("the process's network namespace")?;
        cx.unshare(libc::CLONE_NEWNET)?;
        let made = open("the network namespace made ahead");
        cx.join_ns(own.as_fd(), libc::CLONE_NEWNET, "setns(CLONE_NEWNET)")?;
        let made = made?;
        // Locked before its links and addresses, as every namespace the restore makes.
        sh.netlock.borrow_mut().lock_netns(made.as_fd(), None)?;
        tracing::debug!(
            pid,
            ns = id,
            "network namespace made ahead of its first process"
        );
        kinds::netns::restore(cx.dir, id, made.as_fd(), sh.links)?;
        cx.objs.borrow_mut().net_ns_made.insert(id, made);
    }
    Ok(())
}

/// A process that made a PID namespace for its children (unshare(CLONE_NEWPID)) forks into
/// it again: it enters the one its child is the init of (its last made). After its threads: a process whose
/// `pid_for_children` is not its own PID namespace cannot create threads (clone(CLONE_THREAD)
/// fails with EINVAL), and before its credentials are dropped (setns needs CAP_SYS_ADMIN).
fn enter_childrens_pid_ns(
    sh: &Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
) -> Result<(), RestoreError> {
    let tasks = sh.tasks;
    if img.pstree.cryo_pidns_for_children == Some(true) {
        let init = tasks
            .iter()
            .rev()
            .find(|c| {
                c.pstree.ppid == img.pid
                    && c.ns_depth() > img.ns_depth()
                    && c.local_pid() == 1
                    && !c.is_zombie()
            })
            .and_then(|c| sh.host.get(&c.pid).copied())
            .ok_or_else(|| RestoreError::BadImage(format!(
                "pstree.img: process {} made a PID namespace for its children and has no child that is its init",
                img.pid
            )))?;
        join_pid_ns(cx, init, "open the restored child PID namespace")?;
    }
    Ok(())
}

/// The task `cx` drives forks its next children into the PID namespace of process `of`
/// (host PID): setns(CLONE_NEWPID) sets its `pid_for_children`.
fn join_pid_ns(cx: &mut RestoreCx<'_>, of: i32, op: &'static str) -> Result<(), RestoreError> {
    let path = format!("/proc/{of}/ns/pid");
    let f = std::fs::File::open(&path).map_err(|source| ImageError::Io {
        path: path.clone().into(),
        op,
        source,
    })?;
    cx.join_ns(f.as_fd(), libc::CLONE_NEWPID, "setns(CLONE_NEWPID)")?;
    Ok(())
}

/// The session helpers this task hosts (`sessions::Via`): as the root, one helper per session
/// whose leader is gone (PID = the session, which it leads); as a live leader, one helper
/// with a free PID for the orphans of its session. Each helper forks its children, which are
/// shaped completely, then exits; its children return to the root (the PID namespace's init)
/// and this task reaps it.
fn session_helpers(
    sh: &mut Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    table: &mut kinds::files::FdTable,
    puppets: &mut Puppets,
    ready: &mut Vec<Ready>,
) -> Result<(), RestoreError> {
    let plan = sh.sessions;
    let mut helpers: Vec<(Option<u32>, Vec<u32>)> = Vec::new();
    if std::ptr::eq(img, &sh.tasks[0]) {
        helpers.extend(plan.new_leaders().into_iter().map(|(s, c)| (Some(s), c)));
    }
    let hosted = plan.hosted_by(img.pid);
    if !hosted.is_empty() && !img.is_zombie() {
        helpers.push((None, hosted));
    }
    for (sid, kids) in helpers {
        let (hpid, vpid) = fork_helper(sh, cx, sid, puppets)?;
        {
            let t = Tracee { tid: hpid };
            let mut hcx = helper_cx(sh, &t, &mut *cx.stats)?;
            if sid.is_some() {
                hcx.named("setsid (session helper)").setsid()?;
            }
            fork_adopted(sh, &mut hcx, img, &kids, table, puppets, ready)?;
            match hcx.named("exit_group (session helper)").exit_group(0) {
                Err(TaskError::Remote {
                    source: RemoteError::Died { .. },
                    ..
                }) => {}
                Ok(()) => return Err(RestoreError::Internal("the session helper did not exit")),
                Err(e) => return Err(e.into()),
            }
            sh.calls += std::mem::take(&mut hcx.remote.calls);
        }
        if let Some(p) = puppets.0.iter_mut().find(|p| p.tracee.tid == hpid) {
            p.released = true;
        }
        // Reaped by this task, which the dumped tree never saw; its SIGCHLD taken back.
        cx.named("wait4 (session helper)")
            .wait4(vpid, 0, libc::__WALL)?;
        let set = cx.put(3072, &(1u64 << (libc::SIGCHLD - 1)).to_ne_bytes())?;
        let ts = cx.put(3080, &[0u8; 16])?;
        let _ = cx.rt_sigtimedwait(set, 0, ts);
    }
    Ok(())
}

/// The PIDs of gone processes whose /proc directories the tree holds (PROCFS remaps).
fn dead_pids(dir: &ImageDir) -> Result<Vec<u32>, RestoreError> {
    let mut v: Vec<u32> = dir
        .read_opt::<pb::RemapFilePathEntry>("remap-fpath.img", image::REMAP_FPATH)?
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.remap_type == Some(pb::RemapType::Procfs as i32))
        .map(|r| r.remap_id)
        .collect();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Every file of the tree is open: the stand-ins of gone processes exit and the root (their
/// parent) reaps them; the SIGCHLDs their deaths queued in the root are taken back.
fn end_dead_pid_helpers(
    sh: &Shared<'_>,
    root: i32,
    puppets: &mut Puppets,
) -> Result<(), RestoreError> {
    if sh.dead_helpers.is_empty() {
        return Ok(());
    }
    for &(host, _) in &sh.dead_helpers {
        let t = Tracee { tid: host };
        let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
        match Remote::new(&t, sh.tr, base)
            .named("exit_group (dead pid helper)")
            .exit_group(0)
        {
            Err(RemoteError::Died { .. }) => {}
            Ok(()) => return Err(RestoreError::Internal("a dead pid helper did not exit")),
            Err(e) => return Err(e.into()),
        }
        if let Some(p) = puppets.0.iter_mut().find(|p| p.tracee.tid == host) {
            p.released = true;
        }
    }
    let t = Tracee { tid: root };
    let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    let mut r = Remote::new(&t, sh.tr, base);
    for &(_, vpid) in &sh.dead_helpers {
        r.named("wait4 (dead pid helper)")
            .wait4(vpid, 0, libc::__WALL)?;
    }
    let (set, ts) = (sh.tr + 4096 + 3072, sh.tr + 4096 + 3080);
    let mask = (1u64 << (libc::SIGCHLD - 1)).to_ne_bytes();
    for (addr, b) in [(set, &mask[..]), (ts, &[0u8; 16][..])] {
        crate::sys::mem::vm_write(root, b, &[(addr, b.len())])
            .map_err(|source| RestoreError::WriteMemory { addr, source })?;
    }
    let _ = r.rt_sigtimedwait(set, 0, ts);
    Ok(())
}

/// A restore context driving the task `t` (a session helper, or a zombie-to-be leader).
fn helper_cx<'a>(
    sh: &Shared<'a>,
    t: &'a Tracee,
    stats: &'a mut pb::RestoreStatsEntry,
) -> Result<RestoreCx<'a>, RestoreError> {
    let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    Ok(RestoreCx {
        pid: t.tid,
        remote: batch_remote(t, sh.tr, base),
        scratch: sh.tr + 4096,
        scratch_len: TR_LEN - 4096 - SCRATCH_RESULTS,
        dir: sh.dir,
        files: sh.files,
        objs: sh.objs,
        stats,
        inherited: Default::default(),
        cow: Vec::new(),
        cryo_pidfd: sh.cryo_pidfd,
        // Helpers and zombies-to-be get no memory of the tree's.
        lazy: None,
        later: Default::default(),
        stage: None,
    })
}

/// Forks a session helper from the task `cx` drives: with PID `sid` (a gone leader's), or
/// with the first free PID above every PID of the tree. Returns its host PID and its PID in
/// the tree's namespace; it is stopped, traced, and killed with the others on failure.
fn fork_helper(
    sh: &Shared<'_>,
    cx: &mut RestoreCx<'_>,
    sid: Option<u32>,
    puppets: &mut Puppets,
) -> Result<(i32, i32), RestoreError> {
    // Forked with everything held back done (the helper is a copy of this task).
    cx.run_later()?;
    let top = sh
        .tasks
        .iter()
        .flat_map(|t| [t.pid, t.pstree.sid, t.pstree.pgid])
        .chain(
            sh.tasks
                .iter()
                .flat_map(|t| t.pstree.threads.iter().copied()),
        )
        .max()
        .unwrap_or(1);
    let candidates: Vec<u32> = match sid {
        Some(s) => vec![s],
        None => (1..=64).map(|i| top + i).collect(),
    };
    let mut last = None;
    for want in candidates {
        let want = pid_from_img(want)
            .ok_or_else(|| RestoreError::BadImage(format!("PID {want} is out of range")))?;
        let args = CloneArgs::process(0, libc::SIGCHLD);
        match cx.clone3_with_tid("clone3 (session helper)", args, want) {
            Ok(got) => {
                let host = cx.remote.last_child.take().unwrap_or(got);
                puppets.0.push(Puppet {
                    tracee: Tracee { tid: host },
                    released: false,
                });
                match puppets.0.last().expect("pushed").tracee.wait() {
                    Ok(Stop::Stopped { .. }) => return Ok((host, got)),
                    other => {
                        return Err(RestoreError::Ptrace {
                            what: "waiting for a session helper",
                            source: std::io::Error::other(format!("unexpected state {other:?}")),
                        })
                    }
                }
            }
            Err(e) if e.errno() == Some(libc::EEXIST) && sid.is_none() => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or(
        RestoreError::Internal("no free PID for a session helper"),
        Into::into,
    ))
}

/// Forks `kids` (children of the root in the images) from the copy of `forker` that `hcx`
/// drives, and shapes each completely (as if `forker` had forked it: its memory and fds).
fn fork_adopted(
    sh: &mut Shared<'_>,
    hcx: &mut RestoreCx<'_>,
    forker: &TaskImages,
    kids: &[u32],
    table: &mut kinds::files::FdTable,
    puppets: &mut Puppets,
    ready: &mut Vec<Ready>,
) -> Result<(), RestoreError> {
    let tasks = sh.tasks;
    for &k in kids {
        let cidx = tasks
            .iter()
            .position(|t| t.pid == k)
            .ok_or(RestoreError::Internal(
                "a session helper's child is not in the tree",
            ))?;
        let child = &tasks[cidx];
        sh.forked_by.insert(child.pid, forker.pid);
        fork_child(sh, hcx, forker, child, puppets)?;
        if child.is_zombie() {
            let group = if child.pstree.pgid == child.pid {
                ZombieGroup::Own
            } else {
                ZombieGroup::Inherited
            };
            make_zombie(sh.tr, child, group, puppets.0.last_mut().expect("pushed"))?;
            continue;
        }
        shape(sh, cidx, Some(table), puppets, ready, hcx.stats)?;
    }
    Ok(())
}

/// A session leader's `setsid`, then its controlling terminal (`tty::take_ctty`), so the
/// children forked after it inherit both.
fn lead_session(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RestoreError> {
    cx.setsid()?;
    kinds::tty::take_ctty(cx, img)?;
    Ok(())
}

/// Makes the task `cx` drives fork `child` (`clone3` with its PID, and `CLONE_FILES` when
/// it shares the fd table), pushes the new puppet, and waits until it stops, traced.
fn fork_child(
    sh: &mut Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    child: &TaskImages,
    puppets: &mut Puppets,
) -> Result<(), RestoreError> {
    // The child is a copy of this task: everything held back is done first.
    cx.run_later()?;
    let forking = Instant::now();
    let mut flags = if child.ids.files_id == img.ids.files_id && !child.is_zombie() {
        libc::CLONE_FILES as u64
    } else {
        0
    };
    // Its ids from the tree's PID namespace down to its own; one level deeper than its
    // parent, it is the init of a namespace of its own (checked by `check_nested_pids`).
    let ids = child.ns_ids(0);
    let deeper = child.ns_depth() > img.ns_depth();
    if deeper && child.local_pid() == 1 {
        flags |= libc::CLONE_NEWPID as u64;
    }
    // A later child of a process that made a PID namespace: forked into it, the namespace
    // of its init (a sibling forked before it), then the parent's children are its own
    // namespace's again until `enter_childrens_pid_ns`.
    let joined = if deeper && child.local_pid() != 1 {
        let init = init_sibling(sh.tasks, child)
            .and_then(|s| sh.host.get(&s.pid).copied())
            .ok_or_else(|| {
                RestoreError::BadImage(format!(
                    "pstree.img: process {} is in the PID namespace of a sibling that is not created before it",
                    child.pid
                ))
            })?;
        join_pid_ns(cx, init, "open the PID namespace of the child's init")?;
        true
    } else {
        false
    };
    // The id the parent sees.
    let cpid = ids.get(img.ns_depth()).copied().unwrap_or(0);
    let set_tid: Vec<i32> = ids.iter().rev().copied().collect();
    let args = CloneArgs::process(flags, libc::SIGCHLD);
    let got = cx
        .clone3_with_tids("clone3 (child process)", args, &set_tid)
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => RestoreError::PidBusy {
                pid: cpid,
                who: "a process that appeared meanwhile".into(),
            },
            _ => e.into(),
        })?;
    let host = cx.remote.last_child.take().unwrap_or(got);
    puppets.0.push(Puppet {
        tracee: Tracee { tid: host },
        released: false,
    });
    sh.host.insert(child.pid, host);
    if joined {
        join_pid_ns(cx, cx.pid, "open the parent's own PID namespace")?;
    }
    if got != cpid {
        return Err(RestoreError::BadImage(format!(
            "process {cpid} was created as {got}"
        )));
    }
    match puppets
        .0
        .last()
        .expect("pushed")
        .tracee
        .wait()
        .map_err(ptrace_err("waitpid"))?
    {
        Stop::Stopped { .. } => {}
        other => {
            return Err(RestoreError::Ptrace {
                what: "waiting for a new process",
                source: std::io::Error::other(format!("unexpected state {other:?}")),
            })
        }
    }
    cx.stats.forking_time += micros_u32(forking.elapsed());
    sh.calls += std::mem::take(&mut cx.remote.calls);
    // The init of a PID namespace exists now: proc mounts showing it can be made, before
    // it opens any file.
    if !sh.pending_mounts.is_empty() {
        let host = &sh.host;
        for p in &mut sh.pending_mounts {
            let ptys = kinds::mounts::finish_pending(p, &|v| host.get(&v).copied())?;
            cx.objs.borrow_mut().tty.premade.extend(ptys);
            cx.objs.borrow_mut().binfmt.append(&mut p.binfmt);
        }
        sh.pending_mounts.retain(kinds::mounts::is_pending);
    }
    Ok(())
}

/// Most children one stop forks: each takes a `clone_args` and its `set_tid` in scratch
/// (`FORK_SLOT` bytes from `FORK_AREA`), and the batch's code page holds about as many calls.
const FORKS_PER_STOP: usize = 40;
const FORK_AREA: u64 = 8192;
const FORK_SLOT: usize = 128;

/// Makes the task `cx` drives fork the live children `kids` (indexes into the tree) in one
/// batch of `clone3` (each with its PID, and `CLONE_FILES` when it shares the fd table),
/// pushes each new puppet as soon as it exists, then waits until every one has stopped,
/// traced. The children run concurrently up to their first stop.
fn fork_children(
    sh: &mut Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    kids: &[usize],
    puppets: &mut Puppets,
) -> Result<(), RestoreError> {
    let tasks = sh.tasks;
    if let [only] = kids {
        return fork_child(sh, cx, img, &tasks[*only], puppets);
    }
    // The children are copies of this task (and their clone_args go to scratch directly):
    // everything held back is done first.
    cx.run_later()?;
    let forking = Instant::now();
    // The id the parent sees.
    let seen = |t: &TaskImages| t.ns_ids(0).get(img.ns_depth()).copied().unwrap_or(0);
    let size = crate::sys::clone::CLONE_ARGS_SIZE;
    let mut buf = vec![0u8; FORK_SLOT * kids.len()];
    let mut b = Batch::new();
    for (j, &c) in kids.iter().enumerate() {
        let child = &tasks[c];
        let flags = if child.ids.files_id == img.ids.files_id {
            libc::CLONE_FILES as u64
        } else {
            0
        };
        let at = cx.scratch + FORK_AREA + (FORK_SLOT * j) as u64;
        // Its ids from the tree's PID namespace down to its own (this task's), innermost
        // first in set_tid; `create_children` checked that they fit the slot.
        let ids = child.ns_ids(0);
        let mut args = CloneArgs::process(flags, libc::SIGCHLD);
        args.set_tid = at + 96;
        args.set_tid_size = crate::num::u64_of(ids.len());
        let slot = &mut buf[FORK_SLOT * j..FORK_SLOT * (j + 1)];
        slot[..size].copy_from_slice(&args.to_bytes());
        for (k, id) in ids.iter().rev().enumerate() {
            slot[96 + 4 * k..100 + 4 * k].copy_from_slice(&id.to_ne_bytes());
        }
        b.named("clone3 (child process)").clone3(at, size as u64)?;
    }
    cx.put(FORK_AREA, &buf)?;
    cx.remote.children.clear();
    let r = cx.batch(&b);
    let hosts: Vec<i32> = cx.remote.children.drain(..).collect();
    cx.remote.last_child = None;
    for (&host, &c) in hosts.iter().zip(kids) {
        puppets.0.push(Puppet {
            tracee: Tracee { tid: host },
            released: false,
        });
        sh.host.insert(tasks[c].pid, host);
    }
    let got = r.map_err(|e| match e.errno() {
        Some(libc::EEXIST) => RestoreError::PidBusy {
            pid: kids.get(hosts.len()).map_or(0, |&c| seen(&tasks[c])),
            who: "a process that appeared meanwhile".into(),
        },
        _ => e.into(),
    })?;
    if hosts.len() != kids.len() {
        return Err(RestoreError::BadImage(format!(
            "{} processes were asked for, {} created",
            kids.len(),
            hosts.len()
        )));
    }
    for (&c, &g) in kids.iter().zip(&got) {
        let cpid = seen(&tasks[c]);
        if i64::from(cpid).cast_unsigned() != g {
            return Err(RestoreError::BadImage(format!(
                "process {cpid} was created as {g}"
            )));
        }
    }
    for &host in &hosts {
        match (Tracee { tid: host })
            .wait()
            .map_err(ptrace_err("waitpid"))?
        {
            Stop::Stopped { .. } => {}
            other => {
                return Err(RestoreError::Ptrace {
                    what: "waiting for a new process",
                    source: std::io::Error::other(format!("unexpected state {other:?}")),
                })
            }
        }
    }
    cx.stats.forking_time += micros_u32(forking.elapsed());
    sh.calls += std::mem::take(&mut cx.remote.calls);
    Ok(())
}

/// Stage "task": what belongs to the process as a whole (limits, signal dispositions and
/// pending signals, the rest of `Misc`, the leader's registers and FPU state).
fn restore_task_state(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RestoreError> {
    kinds::restore_kind::<kinds::rlimits::Rlimits>(cx, img)?;
    kinds::restore_kind::<kinds::signals::Signals>(cx, img)?;
    kinds::restore_kind::<kinds::misc::Misc>(cx, img)?;
    kinds::restore_kind::<kinds::regs::CpuState>(cx, img)?;
    fault_point("task")?;
    Ok(())
}

/// Stage "threads": created after everything they share and before the leader drops its
/// credentials (creating them needs them), and before any seccomp filter: each thread
/// installs its own chain (suspended for cryo's syscalls), then the leader. Then they join
/// their cgroups.
fn create_threads(
    sh: &Shared<'_>,
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    puppets: &mut Puppets,
) -> Result<Vec<kinds::threads::RestoredThread>, RestoreError> {
    let threads = kinds::threads::restore_threads(cx, img)?;
    kinds::seccomp::restore(cx, img)?;
    for th in &threads {
        puppets.0.push(Puppet {
            tracee: Tracee { tid: th.tracee.tid },
            released: false,
        });
    }
    if let Some(cg) = sh.cgroups {
        let ths: Vec<(i32, &pb::CoreEntry)> = threads
            .iter()
            .map(|t| t.tracee.tid)
            .zip(&img.threads)
            .collect();
        cg.place_threads(img, &ths)?;
    }
    fault_point("threads")?;
    Ok(threads)
}

/// Without `-d`, like criu: stay the parent until the restored root exits. A shell job had
/// the terminal's foreground since before it was released (`run`); cryo takes it back.
pub fn wait_for(root: i32, shell_job: bool) {
    if let Some(pid) = rustix::process::Pid::from_raw(root) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    }
    if !shell_job {
        return;
    }
    if let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        crate::sys::proc::block_signal(libc::SIGTTOU);
        let _ = rustix::termios::tcsetpgrp(&tty, rustix::process::getpgrp());
    }
}

/// Gives the foreground of cryo's terminal to the restored shell job's process group, before
/// it runs (a background job reading the terminal would be stopped by SIGTTIN).
fn foreground(root: i32) {
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return;
    };
    let Some(root) = rustix::process::Pid::from_raw(root) else {
        return;
    };
    let Ok(job) = rustix::process::getpgid(Some(root)) else {
        return;
    };
    if let Err(e) = rustix::termios::tcsetpgrp(&tty, job) {
        tracing::warn!(error = %e, "could not give the terminal to the restored job");
    }
}

/// The process group a zombie is put in before it dies.
enum ZombieGroup {
    /// Its parent's (as forked).
    Inherited,
    /// Its own (it leads it).
    Own,
    /// This group, whose leader is gone and which no other task of the tree is in.
    Orphan(u32),
}

/// Puts the puppet `r` drives (about to become a zombie, or a live member) in process group
/// `pgid`, whose leader is gone: a helper child is cloned with PID `pgid` (in the tree's PID
/// namespace), makes the group, the puppet joins it, and the helper exits and is reaped by
/// the puppet. The group lives on with the puppet in it, as CRIU's helper tasks do. The
/// helper has no exit signal: no SIGCHLD is left queued in a live member, and one that
/// ignores SIGCHLD does not have it reaped away before its wait4.
fn join_orphan_group(r: &mut Remote<'_>, tr: u64, pgid: u32) -> Result<(), RestoreError> {
    let pid = r.tracee().tid;
    let pgid = pid_from_img(pgid)
        .ok_or_else(|| RestoreError::BadImage(format!("process group {pgid} is out of range")))?;
    let put = |addr: u64, b: &[u8]| {
        crate::sys::mem::vm_write(pid, b, &[(addr, b.len())])
            .map_err(|source| RestoreError::WriteMemory { addr, source })
    };
    // struct clone_args at +2048, set_tid array at +3072 (the scratch page after the
    // trampoline's).
    let (args_at, set_tid_at) = (tr + 4096 + 2048, tr + 4096 + 3072);
    put(set_tid_at, &pgid.to_ne_bytes())?;
    let args = CloneArgs {
        set_tid: set_tid_at,
        set_tid_size: 1,
        ..CloneArgs::process(0, 0)
    };
    put(args_at, &args.to_bytes())?;
    let got = r.named("clone3 (process group helper)").clone3(
        args_at,
        crate::num::u64_of(crate::sys::clone::CLONE_ARGS_SIZE),
    )?;
    let host = r.last_child.take().unwrap_or(got);
    let helper = Tracee { tid: host };
    let mut guard = Puppet {
        tracee: Tracee { tid: host },
        released: false,
    };
    match helper.wait().map_err(ptrace_err("waitpid (helper)"))? {
        Stop::Stopped { .. } => {}
        other => {
            return Err(RestoreError::Ptrace {
                what: "waiting for a process group helper",
                source: std::io::Error::other(format!("unexpected state {other:?}")),
            })
        }
    }
    let hbase = helper.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    let mut hr = Remote::new(&helper, tr, hbase);
    hr.named("setpgid (helper)").setpgid(0, 0)?;
    r.named("setpgid (zombie)").setpgid(0, pgid)?;
    match hr.named("exit_group (helper)").exit_group(0) {
        Err(RemoteError::Died { .. }) => guard.released = true,
        Ok(()) => {
            return Err(RestoreError::Internal(
                "the process group helper did not exit",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    // Reaped by its parent, which the dumped tree never saw.
    r.named("wait4 (helper)").wait4(pgid, 0, libc::__WALL)?;
    Ok(())
}

/// Turns a fresh puppet into the zombie `img` describes: it exits with the saved status
/// (or dies of the saved signal, without a core file), and cryo, as its tracer, collects
/// only the tracer's notification; the exit status stays for its restored parent. First it
/// enters its process group (`group`).
fn make_zombie(
    tr: u64,
    img: &TaskImages,
    group: ZombieGroup,
    p: &mut Puppet,
) -> Result<(), RestoreError> {
    let status = img.core.tc.as_ref().map(|t| t.exit_code).unwrap_or(0);
    let t = Tracee { tid: p.tracee.tid };
    let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    let mut r = Remote::new(&t, tr, base);
    // A wait status: the killing signal (7 bits) or the exit code (8 bits).
    let sig = i32::try_from(status & 0x7f).expect("7 bits");
    let code = i32::try_from((status >> 8) & 0xff).expect("8 bits");
    match group {
        ZombieGroup::Inherited => {}
        // A session leader (its group is its session's): setsid(), unless it did already
        // (to fork orphans of its session, `create_children`).
        ZombieGroup::Own if img.pstree.sid == img.pid => {
            match r.named("setsid (zombie)").setsid() {
                Err(e) if e.errno() == Some(libc::EPERM) => {}
                other => other?,
            }
        }
        ZombieGroup::Own => r.named("setpgid (zombie)").setpgid(0, 0)?,
        ZombieGroup::Orphan(pgid) => join_orphan_group(&mut r, tr, pgid)?,
    }
    let result = if sig != 0 {
        crate::sys::proc::set_rlimit(t.tid, libc::RLIMIT_CORE, 0, 0)
            .map_err(ptrace_err("prlimit64(RLIMIT_CORE)"))?;
        let act = [0u8; 32]; // SIG_DFL, no flags, empty mask
        let scratch = tr + 4096;
        crate::sys::mem::vm_write(t.tid, &act, &[(scratch, 32)]).map_err(|source| {
            RestoreError::WriteMemory {
                addr: scratch,
                source,
            }
        })?;
        // SIGKILL's action cannot be changed (EINVAL), nor needs to be: it always kills.
        if sig != libc::SIGKILL {
            r.rt_sigaction(sig, scratch, 0)?;
        }
        t.set_sigmask(0).map_err(ptrace_err("PTRACE_SETSIGMASK"))?;
        // Inside the tree's PID namespace: its own PID there.
        match r.named("kill (zombie)").kill(img.local_pid(), sig) {
            // As its tracer cryo sees the signal first: let it through, and it kills.
            Err(RemoteError::UnexpectedStop { sig: s, .. }) if s == sig => {
                t.cont(s).map_err(ptrace_err("PTRACE_CONT"))?;
                match t.wait().map_err(ptrace_err("waitpid"))? {
                    Stop::Killed(_) | Stop::Exited(_) => Err(RemoteError::Died {
                        what: "kill (zombie)",
                        how: format!("signal {s}"),
                    }),
                    _ => Ok(()),
                }
            }
            other => other,
        }
    } else {
        r.named("exit_group (zombie)").exit_group(code)
    };
    match result {
        Err(RemoteError::Died { .. }) => {
            p.released = true;
            Ok(())
        }
        Ok(_) => Err(RestoreError::Internal("the zombie did not exit")),
        Err(e) => Err(e.into()),
    }
}

/// Puts every task into its process group: leaders first, then members (`host`: host PIDs
/// by dumped PID; groups are named in the tree's own PID namespace).
fn set_process_groups(
    tasks: &[TaskImages],
    host: &HashMap<u32, i32>,
    tr: u64,
) -> Result<(), RestoreError> {
    for leaders_pass in [true, false] {
        for img in tasks.iter().filter(|t| !t.is_zombie()) {
            let (pid, pgid) = (img.vpid(), pid_from_img(img.pstree.pgid).unwrap_or(0));
            if (pgid == pid) != leaders_pass {
                continue;
            }
            if img.pstree.sid == img.pid {
                continue;
            }
            let Some(&leader) = host.get(&img.pstree.pgid) else {
                // A shell job's group outside the tree: it stays in cryo's. Else a group
                // whose leader is gone (zdtm session01): made again by its first member.
                if pgid != 0
                    && tasks
                        .first()
                        .is_some_and(|r| r.pstree.pgid != img.pstree.pgid)
                {
                    join_gone_leaders_group(img, host[&img.pid], pgid, tr)?;
                }
                continue;
            };
            let hpid = host[&img.pid];
            if procfs::stat(hpid)?.pgrp == leader {
                continue;
            }
            // The group as the task names it, in its own PID namespace: the leader's id at
            // the task's level (a leader it cannot see is one it only inherits, above).
            let depth = img.ns_depth();
            let local = if depth == 0 {
                Some(pgid)
            } else {
                tasks
                    .iter()
                    .find(|t| t.pid == img.pstree.pgid && t.ids.pid_ns_id == img.ids.pid_ns_id)
                    .map(TaskImages::local_pid)
            };
            let Some(local) = local else {
                return Err(Unsupported::restore(format!(
                    "process {} is in process group {pgid}, whose leader is outside its PID namespace",
                    img.pid
                ))
                .into());
            };
            let t = Tracee { tid: hpid };
            let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
            let mut r = Remote::new(&t, tr, base);
            let target = if leaders_pass { 0 } else { local };
            r.setpgid(0, target)?;
        }
    }
    Ok(())
}

/// Puts live task `img` (host PID `hpid`) in process group `pgid` (as the tree's PID
/// namespace numbers it) whose leader is gone: it joins the group if another member or a
/// zombie made it already, else it makes it through a helper with that PID
/// ([`join_orphan_group`]).
fn join_gone_leaders_group(
    img: &TaskImages,
    hpid: i32,
    pgid: i32,
    tr: u64,
) -> Result<(), RestoreError> {
    if img.ns_depth() > 0 {
        return Err(Unsupported::restore(format!(
            "process {} is in process group {pgid}, whose leader is gone, in a nested PID namespace",
            img.pid
        ))
        .into());
    }
    // Its group as its own PID namespace numbers it (the last NSpgid).
    let now = procfs::parse_status(&procfs::read(hpid, "status")?)
        .get("NSpgid")
        .and_then(|v| {
            v.split_whitespace()
                .last()
                .and_then(|x| x.parse::<i32>().ok())
        });
    if now == Some(pgid) {
        return Ok(()); // forked in it (a gone session leader's group, made by its helper)
    }
    let t = Tracee { tid: hpid };
    let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
    let mut r = Remote::new(&t, tr, base);
    match r.named("setpgid (group of a gone leader)").setpgid(0, pgid) {
        Err(e) if e.errno() == Some(libc::EPERM) => join_orphan_group(&mut r, tr, img.pstree.pgid),
        other => other.map_err(Into::into),
    }
}

/// The fork order and helpers the tree's sessions need; a tree whose sessions cannot be made
/// again is a damaged image (the dump refuses such trees).
fn session_plan(tasks: &[TaskImages], own_pid_ns: bool) -> Result<sessions::Plan, RestoreError> {
    let v: Vec<sessions::Task> = tasks
        .iter()
        .map(|t| sessions::Task {
            pid: t.pid,
            ppid: t.pstree.ppid,
            sid: t.pstree.sid,
            zombie: t.is_zombie(),
        })
        .collect();
    let root_is_init = own_pid_ns && tasks.first().is_some_and(|t| t.pid == 1);
    sessions::plan(&v, root_is_init)
        .map_err(|why| RestoreError::BadImage(format!("pstree.img: sessions: {why}")))
}

/// What restore reads and decides before it creates any process (see [`plan`]).
pub struct Plan {
    pub tasks: Vec<TaskImages>,
    pub files: HashMap<u32, pb::FileEntry>,
    /// The root had a PID namespace of its own.
    pub own_pid_ns: bool,
    /// The root's user namespace, when it had one of its own.
    pub userns: Option<pb::UsernsEntry>,
    /// Where the restore trampoline goes.
    pub trampoline: u64,
    /// The checked mount entries and `--root`, when the root task has a mount namespace.
    pub mounts: Option<(Vec<pb::MntEntry>, std::path::PathBuf)>,
    pub objs: kinds::files::FdObjects,
    pub cgroups: Option<kinds::cgroup::CgRestore>,
}

/// The planning steps of [`run`], up to and not including the first fork, without the
/// checks that depend on the host's processes (busy PIDs) and without hooks: verify the
/// manifest, read the tree, load cgroups as `opts` say, place the trampoline, load the fd
/// objects' images and check the mount plan. Creates no process; for `cryo-fuzz` and tests.
pub fn plan(dir: &ImageDir, opts: &RestoreOpts) -> Result<Plan, RestoreError> {
    if let Some(m) = Manifest::load(&dir.path)? {
        m.verify(&dir.path, 1)?;
    }
    let (tasks, files, own_pid_ns, _) = read_tree(dir)?;
    session_plan(&tasks, own_pid_ns)?;
    let cgroups = kinds::cgroup::CgRestore::load(dir, &opts.cgroups)?;
    let trampoline = trampoline_addr(&tasks, TR_LEN)?;
    let objs = kinds::files::FdObjects::new(dir, &files, &tasks)?;
    // As `shape` decides for the root: a mount namespace other than cryo's is rebuilt.
    let root = &tasks[0];
    let dumper = dir
        .read_one::<pb::InventoryEntry>("inventory.img", image::INVENTORY)?
        .root_ids
        .unwrap_or_default();
    let userns = kinds::userns::load(dir, root.ids.user_ns_id, dumper.user_ns_id)?;
    let dumper_mnt = dumper.mnt_ns_id.or_else(|| kinds::ns::own_ns_id("mnt"));
    let mounts = if root.ids.mnt_ns_id.is_some()
        && root.ids.mnt_ns_id != dumper_mnt
        && opts.join.mnt.is_none()
    {
        kinds::mounts::check(dir, root, &opts.mounts)?
    } else {
        None
    };
    // As `enter_namespaces` decides for a child: a mount namespace nested in the tree.
    for t in &tasks[1..] {
        let parent = tasks.iter().find(|p| p.pid == t.pstree.ppid);
        if let (Some(id), Some(p)) = (t.ids.mnt_ns_id, parent) {
            if Some(id) != p.ids.mnt_ns_id && Some(id) != root.ids.mnt_ns_id {
                kinds::mounts::check_nested(dir, id, &opts.mounts)?;
            }
        }
    }
    Ok(Plan {
        tasks,
        files,
        own_pid_ns,
        userns,
        trampoline,
        mounts,
        objs,
        cgroups,
    })
}

/// Restores the image set in `dir`.
pub fn run(
    opts: &RestoreOpts,
    dir: &ImageDir,
    hooks: &mut dyn Notifier,
) -> Result<RestoreReport, RestoreError> {
    let r = run_tree(opts, dir, hooks);
    // The devices a failed restore moved into its namespaces (`--external netdev`) go
    // back to cryo's: the namespaces die with the tree, and a veth with them.
    match &r {
        Ok(_) => opts.links.keep_moved(),
        Err(_) => opts.links.give_back(),
    }
    r
}

/// [`run`]'s work; `run` gives back what a failure must not take with the tree.
fn run_tree(
    opts: &RestoreOpts,
    dir: &ImageDir,
    hooks: &mut dyn Notifier,
) -> Result<RestoreReport, RestoreError> {
    let t0 = Instant::now();
    hooks.notify("pre-restore", None)?;
    // 1. Verify before creating anything.
    match Manifest::load(&dir.path)? {
        // A lazy restore's pages are the lazy-pages daemon's to verify (`lazy::serve`),
        // while the tree runs: hashing them first would delay its first instruction by
        // the time to read them all (~1 s for 2 GiB).
        Some(m) if opts.lazy_pages.is_some() => {
            m.verify_but(&dir.path, 2, crate::lazy::verified_by_daemon)?
        }
        Some(m) => m.verify(&dir.path, 2)?,
        None => tracing::warn!(
            dir = %dir.path.display(),
            "no cryo-manifest.json: images not verified (written by CRIU?)"
        ),
    }
    if opts.cpu_cap & kinds::cpuinfo::CAP_IMAGE != 0 {
        kinds::cpuinfo::check(dir, opts.cpu_cap)?;
    }
    fault_point("verify")?;
    let (tasks, files, own_pid_ns, ext_pid) = read_tree(dir)?;
    // Registers this CPU cannot load (AVX-512 state on a CPU without it) fail here, not as a
    // SIGILL once the tree runs.
    for t in &tasks {
        let tids = t.pstree.threads.iter();
        for (tid, core) in tids.zip(std::iter::once(&t.core).chain(&t.threads)) {
            if let Some(ti) = &core.thread_info {
                kinds::cpuinfo::check_saved_state(*tid, &ti.fpregs)?;
            }
        }
    }
    let session_plan = session_plan(&tasks, own_pid_ns)?;
    // The external PID namespace to create the tree in (`--external pid[INO]:KEY` at dump;
    // `--inherit-fd fd[N]:KEY`, RPC `inherit_fd`, at restore).
    let ext_pidns = match &ext_pid {
        Some(k) => {
            let p = opts.join.by_key.get(k).ok_or_else(|| {
                Unsupported::restore(format!(
                    "the tree ran in an external PID namespace saved with key '{k}': give it with --inherit-fd fd[N]:{k}"
                ))
            })?;
            Some(std::fs::File::open(p).map_err(|source| ImageError::Io {
                path: p.clone(),
                op: "open the external PID namespace",
                source,
            })?)
        }
        None => None,
    };
    // In a PID namespace of its own the tree's PIDs are free by construction (in an
    // external one, clone3 says EEXIST).
    for t in tasks.iter().filter(|_| !own_pid_ns && ext_pidns.is_none()) {
        for &tid in &t.pstree.threads {
            let tid = pid_from_img(tid).unwrap_or(0);
            if let Ok(st) = procfs::stat(tid) {
                return Err(RestoreError::PidBusy {
                    pid: tid,
                    who: format!("{} (state {})", st.comm, st.state),
                });
            }
        }
    }
    let vroot = tasks[0].vpid();
    // Before any puppet exists (so it drops after them: a lock goes once they are dead).
    // Named after the dump's run id, as CRIU's restore names its lock.
    let inventory = dir.read_one::<pb::InventoryEntry>("inventory.img", image::INVENTORY)?;
    // A lock the dump left (inventory names its method) is lifted, and the network locked
    // during the restore, with the dump's method whatever --network-lock says, as CRIU.
    let lock_method = match inventory.network_lock_method {
        Some(m) if inventory.dump_criu_run_id.is_some() => {
            crate::netlock::Method::from_inventory(Some(m))
        }
        _ => opts.network_lock,
    };
    // The network namespace the dumper ran in (CRIU numbers namespaces its own way; cryo's
    // ids are per host): a tree that shared it shares cryo's now.
    let dumper = inventory.root_ids.unwrap_or_default();
    let dumper_net = dumper.net_ns_id.or_else(|| kinds::ns::own_ns_id("net"));
    let own_netns = tasks[0].ids.net_ns_id.is_some() && tasks[0].ids.net_ns_id != dumper_net;
    // A cryo that is not root: what these images need that it may not do is refused now,
    // before anything (even a stale network lock's cleanup) is touched.
    let me = crate::privilege::Privilege::current()?;
    if !me.is_root() {
        // Every thread's credentials: a thread may run as another user than its leader.
        let creds = tasks
            .iter()
            .flat_map(|t| {
                let tids = t
                    .pstree
                    .threads
                    .iter()
                    .map(|&x| pid_from_img(x).unwrap_or(0));
                let pid = t.vpid();
                std::iter::once(&t.core)
                    .chain(&t.threads)
                    .zip(std::iter::once(pid).chain(tids.skip(1)))
                    .map(move |x| (pid, x))
            })
            .filter_map(|(pid, (core, tid))| {
                let c = core.thread_core.as_ref()?.creds.as_ref()?;
                Some(crate::privilege::TaskCreds {
                    tid,
                    pid,
                    uids: [c.uid, c.euid, c.suid, c.fsuid],
                    gids: [c.gid, c.egid, c.sgid, c.fsgid],
                    groups: c.groups.clone(),
                })
            })
            .collect();
        let ids = &tasks[0].ids;
        // Made inside a user namespace of the tree's own, its other namespaces are that
        // namespace's (cryo owns it): only the maps written into it need more.
        let userns = kinds::userns::load(dir, ids.user_ns_id, dumper.user_ns_id)?;
        let mut new_namespaces = Vec::new();
        for (name, mine, theirs) in [
            ("PID", dumper.pid_ns_id, ids.pid_ns_id),
            ("mount", dumper.mnt_ns_id, ids.mnt_ns_id),
            ("network", dumper_net, ids.net_ns_id),
            ("IPC", dumper.ipc_ns_id, ids.ipc_ns_id),
            ("UTS", dumper.uts_ns_id, ids.uts_ns_id),
            ("cgroup", dumper.cgroup_ns_id, ids.cgroup_ns_id),
            ("time", dumper.time_ns_id, ids.time_ns_id),
        ] {
            if theirs.is_some() && mine.is_some() && theirs != mine {
                new_namespaces.push(name);
            }
        }
        if own_pid_ns && !new_namespaces.contains(&"PID") {
            new_namespaces.insert(0, "PID");
        }
        if userns.is_some() {
            new_namespaces.clear();
        }
        // Connections restored closed (`--tcp-close`, now or at the dump) need no repair.
        let tcp_repair = !opts.sock.tcp_close
            && inventory.tcp_close != Some(true)
            && std::fs::read_dir(&dir.path)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
                })
                .unwrap_or(false);
        crate::privilege::restore_precheck(
            &me,
            &crate::privilege::RestoreNeeds {
                creds,
                own_groups: procfs::status(crate::sys::proc::own_pid())?.groups,
                new_namespaces,
                userns: userns.as_ref(),
                tcp_repair,
            },
        )?;
    }
    let netlock = std::cell::RefCell::new(crate::netlock::NetLock::for_restore(
        lock_method,
        inventory.dump_criu_run_id.as_deref(),
    ));
    // Before any puppet exists (so it drops after them): dirs made here go if we fail.
    let cgroups = kinds::cgroup::CgRestore::load(dir, &opts.cgroups)?;
    // A root in a user namespace of its own: the puppet is cloned into a new one.
    let userns = kinds::userns::load(dir, tasks[0].ids.user_ns_id, dumper.user_ns_id)?;
    if userns.is_some() && !own_pid_ns {
        return Err(Unsupported::restore(
            "the tree had a user namespace of its own without a PID namespace of its own",
        )
        .into());
    }
    // A lazy restore: the daemon must be there before anything is created.
    let lazy = match &opts.lazy_pages {
        Some(p) => Some(crate::lazy::Sink::connect(p)?),
        None => None,
    };
    // Any thread's filters, not only a leader's (threads may have filters of their own).
    let uses_seccomp = tasks
        .iter()
        .flat_map(|t| std::iter::once(&t.core).chain(&t.threads))
        .any(|core| {
            core.thread_core.as_ref().is_some_and(|c| {
                matches!(
                    c.seccomp_mode,
                    Some(kinds::seccomp::MODE_FILTER | kinds::seccomp::MODE_STRICT)
                )
            })
        });

    // The tree's staged memory (`cryo receive`), if it is this tree's and lies clear of
    // every mapping of the tree (the puppets map them while they hold the stage).
    let stage = opts
        .stage
        .as_deref()
        .filter(|_| opts.lazy_pages.is_none())
        .filter(|st| {
            let windows = st.windows();
            let clear = windows.iter().all(|&(_, at)| {
                let end = at + crate::stage::WINDOW;
                tasks
                    .iter()
                    .flat_map(|t| &t.mm.vmas)
                    .all(|v| v.end <= at || v.start >= end)
            });
            let usable = st.root() == tasks[0].pid && !windows.is_empty() && clear;
            tracing::info!(
                root = st.root(),
                windows = windows.len(),
                usable,
                "restore: memory staged by receive"
            );
            usable
        });
    // 2. Trampoline + root puppet.
    let tr = trampoline_addr(&tasks, TR_LEN)?;
    let mut code = Mapping::anon_fixed(tr, 4096, libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|source| RestoreError::Fork { pid: vroot, source })?;
    code.write_at(0, &SYSCALL_INSN.to_ne_bytes());
    code.protect(libc::PROT_READ | libc::PROT_EXEC)
        .map_err(|source| RestoreError::Fork { pid: vroot, source })?;
    let scratch = Mapping::anon_fixed(
        tr + 4096,
        usize_of(TR_LEN - 4096),
        libc::PROT_READ | libc::PROT_WRITE,
    )
    .map_err(|source| RestoreError::Fork { pid: vroot, source })?;
    fault_point("fork")?;
    // A puppet in a new PID namespace gets a pidfd of cryo with it, at an fd number above
    // every saved one (closed again before the tree runs).
    let mut transport = None;
    // Likewise for a tree with PID namespaces nested in its own: a puppet there cannot name
    // cryo either.
    let nested_pidns = tasks.iter().any(|t| t.ns_depth() > 0);
    let cryo_pidfd = if own_pid_ns || ext_pidns.is_some() || nested_pidns {
        let top = tasks
            .iter()
            .flat_map(|t| t.fdinfo.iter().map(|f| f.fd))
            .max()
            .unwrap_or(2);
        let at = kinds::files::fd_number_above(top)?;
        let fork_err = |source| RestoreError::Fork { pid: vroot, source };
        if userns.is_some() {
            // In another user namespace it may not take cryo's fds with pidfd_getfd: it
            // gets its end of a socket cryo sends them over, at that fd number.
            let (guard, end) = crate::sys::remote::new_transport(at).map_err(fork_err)?;
            transport = Some(guard);
            Some(end)
        } else {
            Some(crate::sys::fd::pidfd_open_self_at(at).map_err(fork_err)?)
        }
    } else {
        None
    };
    let forking = Instant::now();
    let sibling = opts.sibling;
    // The puppet is a fork of cryo, which must then have one thread: the progress display
    // stops for that moment.
    let paused = crate::progress::pause();
    let spawned = match &ext_pidns {
        Some(ns) => crate::sys::proc::spawn_puppet_in(ns.as_fd(), vroot, sibling),
        None => crate::sys::proc::spawn_puppet(vroot, own_pid_ns, userns.is_some(), sibling),
    };
    drop(paused);
    let child = spawned.map_err(|source| match source.errno() {
        Some(libc::EEXIST) => RestoreError::PidBusy {
            pid: vroot,
            who: "a process that appeared meanwhile".into(),
        },
        _ => RestoreError::Spawn { pid: vroot, source },
    })?;
    // From here on, `root` is the restored root's PID in cryo's namespace.
    let root = child;
    let mut puppets = Puppets(vec![Puppet {
        tracee: Tracee { tid: child },
        released: false,
    }]);
    drop(code);
    drop(scratch);
    if sibling {
        // Not cryo's child: cryo becomes its tracer by seizing it.
        Tracee::seize(child, 0).map_err(ptrace_err("PTRACE_SEIZE (restore sibling)"))?;
    }
    match puppets.0[0].tracee.wait().map_err(ptrace_err("waitpid"))? {
        Stop::Stopped {
            sig: libc::SIGSTOP, ..
        } => {}
        Stop::Stopped {
            sig: libc::SIGTRAP,
            event: libc::PTRACE_EVENT_STOP,
        } if sibling => {}
        other => {
            return Err(RestoreError::Ptrace {
                what: "waiting for the new process",
                source: std::io::Error::other(format!("unexpected state {other:?}")),
            })
        }
    }
    let forking = forking.elapsed();
    if let Some(u) = &userns {
        // Before the puppet does anything: its credentials inside depend on them.
        kinds::userns::set_maps(child, u)?;
        fault_point("userns")?;
    }
    puppets.0[0]
        .tracee
        .set_options(
            libc::PTRACE_O_EXITKILL
                | libc::PTRACE_O_TRACESYSGOOD
                | libc::PTRACE_O_TRACECLONE
                | libc::PTRACE_O_TRACEFORK
                | if uses_seccomp {
                    libc::PTRACE_O_SUSPEND_SECCOMP
                } else {
                    0
                },
        )
        .map_err(ptrace_err("PTRACE_SETOPTIONS"))?;

    // 3. Shape every task (children are created from their parents on the way).
    let tf = Instant::now();
    let mut stats = pb::RestoreStatsEntry {
        // Creating the tasks: the root here, the others in `shape`.
        forking_time: micros_u32(forking),
        ..Default::default()
    };
    let mut ready = Vec::new();
    let objs = std::cell::RefCell::new(kinds::files::FdObjects::new(dir, &files, &tasks)?);
    objs.borrow_mut().tty.orphan_pts_master = opts.orphan_pts_master;
    objs.borrow_mut().inherit(&opts.inherit_fd)?;
    objs.borrow_mut().sock = opts.sock;
    let mut sh = Shared {
        dir,
        files: &files,
        objs: &objs,
        tasks: &tasks,
        mounts: &opts.mounts,
        join: &opts.join,
        links: &opts.links,
        netlock: &netlock,
        dumper_net,
        dumper,
        host: HashMap::from([(tasks[0].pid, root)]),
        cryo_pidfd: cryo_pidfd.as_ref().map(|f| f.as_raw_fd()),
        cgroups: cgroups.as_ref(),
        sessions: &session_plan,
        forked_by: HashMap::new(),
        dead_pids: dead_pids(dir)?,
        dead_helpers: Vec::new(),
        lazy: lazy.as_ref(),
        stage,
        pending_mounts: Vec::new(),
        tr,
        calls: 0,
        creds: None,
        held: Vec::new(),
    };
    shape(&mut sh, 0, None, &mut puppets, &mut ready, &mut stats)?;
    finish_held(&mut sh)?;
    // A veth left for a namespace that never came (its peer's) is an error, not a link
    // silently missing.
    kinds::netns::all_links_made(&opts.links)?;
    end_dead_pid_helpers(&sh, root, &mut puppets)?;
    if let Some(l) = &lazy {
        // The daemon counts the tree's processes: the zombies too (CRIU sends them negated).
        for t in tasks.iter().filter(|t| t.is_zombie()) {
            l.send_zombie(t.pid)
                .map_err(ptrace_err("sending a zombie to the lazy-pages daemon"))?;
        }
    }
    if !sh.pending_mounts.is_empty() {
        return Err(RestoreError::BadImage(
            "a proc mount of a nested mount namespace shows a PID namespace no task was created in"
                .into(),
        ));
    }
    // The root's namespaces exist (runc runs its prestart hooks with this pid).
    hooks.notify("setup-namespaces", Some(root))?;
    hooks.notify("post-setup-namespaces", None)?;
    set_process_groups(&tasks, &sh.host, tr)?;
    kinds::tty::set_foreground(&objs, &tasks, tr, sh.cryo_pidfd, |pid| sh.host[&pid])?;
    fault_point("finish")?;

    // 4. Last injected syscall of each task unmaps the trampoline; then the dumped registers.
    // Every task runs its munmap at the same time: each step is started in all of them
    // before the first is waited for, so their wake-ups overlap.
    let tracees: Vec<Tracee> = ready.iter().map(|r| Tracee { tid: r.pid }).collect();
    let mut bases = Vec::with_capacity(ready.len());
    for t in &tracees {
        let base = t.regs().map_err(ptrace_err("PTRACE_GETREGS"))?;
        if let Some(fd) = sh.cryo_pidfd {
            // Shared fd tables (CLONE_FILES) see it closed already: ignore EBADF.
            let _ = Remote::new(t, tr, base)
                .named("close (cryo's pidfd)")
                .close(fd);
        }
        bases.push(base);
    }
    let mut unmaps: Vec<Remote<'_>> = tracees
        .iter()
        .zip(&bases)
        .map(|(t, &base)| Remote::new(t, tr, base))
        .collect();
    const UNMAP: &str = "munmap (trampoline)";
    for u in &mut unmaps {
        u.start_munmap_to_exit(UNMAP, tr, TR_LEN)?;
    }
    for at_entry in [true, false] {
        for u in &mut unmaps {
            u.step_to_exit(UNMAP, at_entry)?;
        }
    }
    drop(unmaps);
    for ((r, t), base) in ready.iter().zip(&tracees).zip(&bases) {
        t.set_regs(&kinds::regs::pb_to_regs(&r.regs, base))
            .map_err(ptrace_err("PTRACE_SETREGS"))?;
        t.set_sigmask(r.mask)
            .map_err(ptrace_err("PTRACE_SETSIGMASK"))?;
        for th in &r.threads {
            th.tracee
                .set_regs(&th.regs)
                .map_err(ptrace_err("PTRACE_SETREGS"))?;
            th.tracee
                .set_sigmask(th.mask)
                .map_err(ptrace_err("PTRACE_SETSIGMASK"))?;
        }
        if let Some(sig) = r.stopped {
            // Queued now, taken when released: the task enters its group stop again, with
            // the signal that stopped it (what a parent's waitid reports).
            crate::sys::proc::kill(r.pid, sig).map_err(ptrace_err("kill (stop signal)"))?;
        }
    }
    sh.calls += 2 * ready.len() as u64;
    stats.restore_time = micros_u32(tf.elapsed());
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{root}")).map_err(|source| ImageError::Io {
            path: p.clone(),
            op: "write pidfile",
            source,
        })?;
    }
    let _ = dir.write(
        "stats-restore",
        image::STATS,
        &[pb::StatsEntry {
            dump: None,
            restore: Some(stats),
        }],
    );
    // What the inet sockets still need once the tree is complete (their lock lifted, repair
    // mode left): kept out of the copies closed now.
    let inet = kinds::inet_sk::take_restored(&mut objs.borrow_mut());
    // cryo's copies of pipes, eventfds, ... must not outlive the restore (a reader would
    // never see EOF while cryo waits for the root without -d).
    objs.borrow_mut().close_all();
    // Everything exists and nothing runs yet: a failing hook still kills it all.
    hooks.notify("post-restore", Some(root))?;
    // The network opens just before the tree runs (CRIU's `network_unlock`).
    if own_netns {
        hooks.notify("network-unlock", None)?;
    }
    fault_point("netunlock")?;
    netlock.borrow_mut().unlock_now()?;
    // CRIU locks a tree's own network namespace with its iptables chain before it saves the
    // namespace's firewall: the chain came back with the rules, and goes now, as CRIU's
    // network_unlock removes it, whether the tree has connections or not.
    if own_netns
        && lock_method == crate::netlock::Method::Iptables
        && !dir.path.join("cryo-manifest.json").exists()
    {
        netlock.borrow_mut().lift_dump_lock(
            crate::netlock::Method::Iptables,
            None,
            root,
            false,
            &[],
        )?;
    }
    let one_netns = tasks
        .iter()
        .all(|t| t.ids.net_ns_id == tasks[0].ids.net_ns_id);
    inet.run(root, one_netns, &mut netlock.borrow_mut())?;
    hooks.notify("pre-resume", None)?;
    if opts.shell_job && !opts.detach {
        foreground(root);
    }
    if let Some(cg) = &cgroups {
        cg.keep();
    }
    for made in std::mem::take(&mut objs.borrow_mut().binfmt) {
        made.keep();
    }
    // 5. Let them run: children and threads before their parents.
    for p in puppets.0.iter_mut().rev().filter(|p| !p.released) {
        p.tracee.detach(0).map_err(ptrace_err("PTRACE_DETACH"))?;
        p.released = true;
    }
    if let Err(e) = hooks.notify("post-resume", None) {
        // Too late to undo: the tree runs. Say so, like CRIU.
        tracing::warn!(error = %e, "post-resume notification failed");
    }
    drop(transport);
    let report = RestoreReport {
        pid: root,
        pages_restored: stats.pages_restored.unwrap_or(0),
        total_us: micros_u64(t0.elapsed()),
        remote_syscalls: sh.calls,
    };
    Ok(report)
}
