//! One module per kind of kernel object a task owns. Each implements [`Kind`]: `dump` reads the
//! object from the frozen task into [`TaskImages`]; `restore` recreates it inside the restore
//! puppet from the same fields. Dump and restore of a kind sit side by side in one file, so a
//! reader sees both halves of the format at once.
//!
//! The dump and restore pipelines (`crate::dump`, `crate::restore`) call the kinds in a fixed
//! order; see docs/ARCHITECTURE.md for why the order is what it is.

pub mod aio;
pub mod binfmt;
pub mod cgroup;
pub mod cpuinfo;
pub mod creds;
pub mod epoll;
pub mod error;
pub mod eventfd;
pub mod fanotify;
pub mod files;
pub mod fown;
pub mod ghost;
pub mod inet_sk;
pub mod inotify;
pub mod ipc;
pub mod linkremap;
pub mod locks;
pub mod memfd;
pub mod memory;
pub mod misc;
pub mod mounts;
pub mod netlink_sk;
pub mod netns;
pub mod ns;
pub mod nsfile;
pub mod packet_sk;
pub mod pidfd;
pub mod pipes;
pub mod propagation;
pub mod regs;
pub mod rlimits;
pub mod rseq;
pub mod seccomp;
pub mod shmem;
pub mod signalfd;
pub mod signals;
pub mod tcp_repair;
pub mod threads;
pub mod timerfd;
pub mod timers;
pub mod tty;
pub mod tun;
pub mod unix_sk;
pub mod userns;

use std::collections::HashMap;

pub use error::{Failure, TaskError, Unsupported};

use crate::image::pb;
use crate::image::ImageDir;
use crate::procfs::{Stat, Status, Vma};
use crate::sys::clone::CloneArgs;
use crate::sys::ptrace::{Regs, Tracee};
use crate::sys::remote::{Batch, Parasite, Remote};
pub use crate::sys::remote::{RemoteFd, Syscalls};

/// A kind of per-task kernel object: both halves of its checkpoint/restore. The pipelines
/// run kinds through [`dump_kind`] and [`restore_kind`], which log the kind's name as the
/// stage.
pub trait Kind {
    /// Name used in logs and errors ("memory", "files", ...).
    const NAME: &'static str;
    /// The kind's own error (collected by `DumpError`/`RestoreError`).
    type Error: Failure;
    /// Reads the object from the frozen task into `img`.
    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), Self::Error>;
    /// Recreates the object in the puppet from `img`.
    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), Self::Error>;
}

/// Runs kind `K`'s dump on one task, logging it as a stage.
pub fn dump_kind<K: Kind>(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), K::Error> {
    tracing::debug!(kind = K::NAME, pid = cx.pid, "dump");
    K::dump(cx, img)
}

/// Runs kind `K`'s restore on one task, logging it as a stage.
pub fn restore_kind<K: Kind>(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), K::Error> {
    tracing::debug!(kind = K::NAME, pid = cx.pid, "restore");
    K::restore(cx, img)
}

/// Everything cryo saves about one process: the leader's images and its threads' cores.
#[derive(Debug, Default, Clone)]
pub struct TaskImages {
    pub pid: u32,
    pub pstree: pb::PstreeEntry,
    pub core: pb::CoreEntry,
    pub ids: pb::TaskKobjIdsEntry,
    pub mm: pb::MmEntry,
    /// Restore: the guard regions (`MADV_GUARD_INSTALL`) recorded in mm-PID.img, taken out
    /// of `mm.vmas` (dump records them at the end of `mm.vmas`).
    pub guards: Vec<(u64, u64)>,
    pub fs: pb::FsEntry,
    pub fdinfo: Vec<pb::FdinfoEntry>,
    pub pagemap: Vec<pb::PagemapEntry>,
    /// pages-N.img holding this task's pages.
    pub pages_id: u32,
    /// Cores of the non-leader threads, in the order of `pstree.threads[1..]`.
    pub threads: Vec<pb::CoreEntry>,
    /// Dump: the fd table is shared (CLONE_FILES) with the earlier task whose `files_id` this
    /// is; its fds are saved once, with that task.
    pub files_shared: Option<u32>,
    /// Dump: the pagemap and pages went to a page server (nothing is written here).
    pub pages_remote: bool,
}

impl TaskImages {
    /// The task's pid in its own PID namespace, as the kernel's `pid_t` (restore checks every
    /// pid of pstree.img when it reads it; 0 for an id that is not one).
    pub fn vpid(&self) -> i32 {
        crate::num::pid_from_img(self.pid).unwrap_or(0)
    }

    /// How many PID namespaces below the tree's the process is in (pstree's
    /// `cryo_ns_depth`; 0 in the tree's own).
    pub fn ns_depth(&self) -> usize {
        crate::num::usize_of(u64::from(self.pstree.cryo_ns_depth.unwrap_or(0)))
    }

    /// The ids thread `i` (0: the leader) has in each PID namespace from the tree's down to
    /// its own (one id in the tree's namespace; checked when pstree.img was read).
    pub fn ns_ids(&self, i: usize) -> Vec<i32> {
        let d = self.ns_depth();
        let first = self.pstree.threads.get(i).copied().unwrap_or(self.pid);
        std::iter::once(first)
            .chain(self.pstree.cryo_ns_tids.iter().skip(i * d).take(d).copied())
            .map(|t| crate::num::pid_from_img(t).unwrap_or(0))
            .collect()
    }

    /// The process's PID as it sees it itself, in its own PID namespace.
    pub fn local_pid(&self) -> i32 {
        self.ns_ids(0).last().copied().unwrap_or(0)
    }

    /// A zombie: only its exit status was saved.
    pub fn is_zombie(&self) -> bool {
        self.core
            .tc
            .as_ref()
            .is_some_and(|t| t.task_state == misc::TASK_DEAD)
    }

    pub fn tc(&mut self) -> &mut pb::TaskCoreEntry {
        self.core.tc.get_or_insert_with(Default::default)
    }
    pub fn thread(&mut self) -> &mut pb::ThreadCoreEntry {
        self.core.thread_core.get_or_insert_with(Default::default)
    }
    pub fn ti(&mut self) -> &mut pb::ThreadInfoX86 {
        self.core.thread_info.get_or_insert_with(Default::default)
    }
}

/// A dumped fd: (pid, fd number, file id).
pub type DumpedFd = (i32, i32, u32);

/// Allocates file ids (one per open file description) and collects files.img.
#[derive(Debug, Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    next: u32,
    /// Path-only records (mapped files, exe, cwd, root) already added, by path.
    by_path: HashMap<String, u32>,
    /// One dumped fd per open file description so far as (pid, fd, file id), by the
    /// (device, inode) of the open file (None: could not stat it), in kcmp order: fds of any
    /// process that share an open file description (kcmp) share the record, and only fds on
    /// one inode can.
    pub fds_by_inode: HashMap<Option<(u64, u64)>, Vec<DumpedFd>>,
    /// pipes-data.img and fifo-data.img: bytes queued in each pipe, saved once per pipe.
    pub pipe_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    pub fifo_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    /// Pipe inodes whose data is already saved.
    pub pipes_seen: std::collections::HashSet<u32>,
    /// Shared-memory inodes whose content is already saved, and how many pages images
    /// they took.
    pub shmem_seen: std::collections::HashSet<u64>,
    pub shmem_pages: u32,
    /// Unix sockets of the namespace (sock_diag), queried at the first socket.
    pub unix_diag: Option<HashMap<u32, crate::sys::net::UnixDiag>>,
    /// The network namespaces (inodes) of the tree's processes, read with `unix_diag`.
    pub unix_tree_netns: std::collections::HashSet<u64>,
    /// sk-queues.img: data queued on each socket, by socket file id.
    pub sk_queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
    /// Files passed in queued messages (SCM_RIGHTS), which cryo holds while the dump lasts
    /// (`files::dump_in_flight`).
    pub in_flight: Vec<std::os::fd::OwnedFd>,
    /// Ghost files (deleted but open, mapped or a working directory): id by (dev, inode),
    /// their entries and content, the remap records linking file records to them, and the size limit.
    pub ghost_ids: HashMap<(u64, u64), u32>,
    /// The mount (id) each ghost file was first seen open through, its path on the file
    /// system (the mount's root joined with the path under its mount point) and by which fd:
    /// a second mount that shows it at another path (or whose root cannot be read) is
    /// refused (the restore makes a ghost at one place).
    pub ghost_mnts: HashMap<(u64, u64), (i32, Option<String>, String)>,
    pub ghosts: Vec<ghost::Ghost>,
    pub remaps: Vec<pb::RemapFilePathEntry>,
    pub ghost_limit: u64,
    /// `--link-remap`, and the temporary names made for removed files with other names.
    pub link_remaps: linkremap::LinkRemaps,
    /// memfd.img: each memfd inode once.
    pub memfd_inodes: Vec<pb::MemfdInodeEntry>,
    /// seccomp.img: every thread's filter chain, each filter once per chain position.
    pub seccomp: Vec<pb::SeccompFilter>,
    /// `--shell-job`: fds on the controlling terminal are saved as `/dev/tty`.
    pub shell_job: bool,
    /// The pids of the dumped tree.
    pub tree: Vec<i32>,
    /// Terminals: tty-info records, cryo's copies of the fds, queued data (`tty.rs`).
    pub ttys: tty::TtyDump,
    /// pidns-ID.img: the root's PID namespace when it is external (`--external pid[INO]:KEY`).
    pub pidns: Option<(u32, pb::PidnsEntry)>,
    /// userns-ID.img: the root's user namespace when it is not cryo's (`userns.rs`).
    pub userns: Option<(u32, pb::UsernsEntry)>,
    /// utsns-ID.img: the names of each UTS namespace of the tree that is not cryo's.
    pub utsns: Vec<(u32, pb::UtsnsEntry)>,
    /// The contents of each network namespace of the tree that is not cryo's, nor external
    /// nor empty (`kinds::netns`: netdev-, netns-, ifaddr-, route-, rule-, nftables-ID.img).
    pub netns_content: Vec<netns::NetnsDump>,
    /// netns-ID.img: each network namespace of the tree that is not cryo's: external (with
    /// the caller's key) or empty (`--empty-ns net`: contents not saved).
    pub netns: Vec<(u32, pb::NetnsEntry)>,
    /// `--external net[INO]:KEY`: network namespaces (by inode) saved as external.
    pub external_net: HashMap<u64, String>,
    /// `--empty-ns net`: private network namespaces are restored empty, not saved.
    pub empty_net: bool,
    /// ipcns-*-ID.img: the objects of each IPC namespace of the tree that is not cryo's.
    pub ipcns: Vec<ipc::IpcNs>,
    /// cgroup.img and `inventory.root_cg_set`: the tasks' cgroup sets (`cgroup.rs`).
    pub cgroups: cgroup::CgDump,
    /// The command's socket options (`--tcp-established`, ...).
    pub sock: files::SockOpts,
    /// Inet sockets: connections in repair mode, tcp-stream images. Declared before
    /// `netlock`, so that on an error the connections leave repair mode while the lock still
    /// holds, as CRIU (`network_unlock`: repair off, then unlock), and the record of them a
    /// later run would use if cryo were killed goes only once they are out.
    pub inet: inet_sk::InetDump,
    /// The network lock of the dump (`netlock`), dropped after `inet`.
    pub netlock: crate::netlock::NetLock,
}

impl FileTable {
    pub fn alloc(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// Records that file `id` is (in) the /proc directory of gone process `pid` (CRIU's
    /// PROCFS remap, once per PID): the restore makes a stand-in with that PID while the
    /// tree opens its files.
    pub fn note_dead_pid(&mut self, id: u32, pid: u32) {
        let procfs = pb::RemapType::Procfs as i32;
        if !self
            .remaps
            .iter()
            .any(|r| r.remap_type == Some(procfs) && r.remap_id == pid)
        {
            self.remaps.push(pb::RemapFilePathEntry {
                orig_id: id,
                remap_id: pid,
                remap_type: Some(procfs),
            });
        }
    }

    /// The record for a file referenced by path only (a mapping, exe, cwd, root): one per
    /// path, opened read-only (a mapping's open mode is in `vma_entry.fdflags`).
    pub fn reg_for_path(&mut self, name: &str, size: Option<u64>, mode: u32) -> u32 {
        if let Some(&id) = self.by_path.get(name) {
            return id;
        }
        let id = self.add_reg(name.to_string(), libc::O_RDONLY as u32, 0, size, mode);
        self.by_path.insert(name.to_string(), id);
        id
    }

    /// Adds a regular-file record (path based) and returns its id.
    pub fn add_reg(
        &mut self,
        name: String,
        flags: u32,
        pos: u64,
        size: Option<u64>,
        mode: u32,
    ) -> u32 {
        let id = self.alloc();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags,
                pos,
                fown: Default::default(),
                name,
                size,
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        });
        id
    }
}

/// Dump-side context of one frozen task.
pub struct DumpCx<'a> {
    pub pid: i32,
    pub tracee: &'a Tracee,
    /// The in-target executor (present between injection and cure).
    pub parasite: Option<Parasite<'a>>,
    /// Blocked signal mask as captured at seize time.
    pub sigmask: u64,
    /// Registers as captured at seize time (before syscall-restart fix-ups).
    pub regs: Regs,
    pub stat: Stat,
    pub status: Status,
    pub vmas: Vec<Vma>,
    pub files: &'a mut FileTable,
    pub dir: &'a ImageDir,
    pub stats: &'a mut pb::DumpStatsEntry,
    /// An incremental dump's parent and write tracking (`--prev-images-dir`).
    pub chain: Option<&'a mut crate::memtrack::Chain>,
    /// `--page-server`: the connection the pages go to, and this process's PID in the images.
    pub page_server: Option<(&'a mut crate::pageserver::Client, u32)>,
    /// `dump --lazy-pages`: where the pages of lazy mappings go (kept in cryo for the
    /// lazy-pages daemon), with the process's PID in the images.
    pub lazy: Option<(&'a mut crate::pageserver::LazyStore, u32)>,
    /// The task's secure bits (`PR_GET_SECUREBITS`), read in `misc`'s stop for `creds`.
    pub secbits: Option<u64>,
    /// The task's interval timers (3 × `struct itimerval`), read in `misc`'s stop for `timers`.
    pub itimers: Option<[u8; 96]>,
    /// Queries held back ([`DumpCx::batch_later`]): they run first in the stop of the next
    /// batch (or call), their results left where they write them in scratch.
    pub held: Batch,
}

impl<'a> DumpCx<'a> {
    /// The remote executor; kinds that need in-target syscalls run while it exists.
    pub fn remote(&mut self) -> Result<&mut Parasite<'a>, TaskError> {
        self.parasite.as_mut().ok_or(TaskError::Internal(
            "in-target executor used outside the injection window",
        ))
    }

    /// The target's scratch area (64 KiB, mapped once per injection window).
    pub fn scratch(&mut self) -> Result<u64, TaskError> {
        let pid = self.pid;
        self.remote()?
            .scratch(64 * 1024)
            .map_err(|source| TaskError::Remote { pid, source })
    }

    /// Runs the calls queued in `b` in the target, in one stop where possible (see
    /// [`Remote::run_batch`](crate::sys::remote::Remote::run_batch)); returns their results.
    /// Calls held back ([`DumpCx::batch_later`]) run first, in the same stop.
    pub fn batch(&mut self, b: &Batch) -> Result<Vec<u64>, TaskError> {
        let pid = self.pid;
        let held = std::mem::take(&mut self.held);
        let n = held.len();
        let mut all = held;
        all.calls.extend_from_slice(&b.calls);
        let mut got = self
            .remote()?
            .run_batch(&all)
            .map_err(|source| TaskError::Remote { pid, source })?;
        Ok(got.split_off(n.min(got.len())))
    }

    /// Holds the calls of `b` (queries whose results they write into scratch, none that
    /// forks or exits) until the next batch or call, to run in its stop: a tree of many
    /// processes waits for each of its tasks to be scheduled once per stop.
    /// [`DumpCx::flush_held`] runs them at once.
    pub fn batch_later(&mut self, b: &Batch) {
        self.held.calls.extend_from_slice(&b.calls);
    }

    /// Runs the calls held back (if any), in a stop of their own.
    pub fn flush_held(&mut self) -> Result<(), TaskError> {
        if !self.held.is_empty() {
            self.batch(&Batch::new())?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the target's memory at `addr` (e.g. what a call wrote).
    pub fn peek(&self, addr: u64, buf: &mut [u8], what: &'static str) -> Result<(), TaskError> {
        let n = buf.len();
        crate::sys::mem::vm_read(self.pid, buf, &[(addr, n)]).map_err(|source| TaskError::Memory {
            pid: self.pid,
            addr,
            what,
            source,
        })
    }
}

impl Syscalls for DumpCx<'_> {
    type Error = TaskError;
    /// Runs a syscall in the target (inside the injection window only), after the calls
    /// held back ([`DumpCx::batch_later`]).
    fn sys(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, TaskError> {
        let pid = self.pid;
        self.flush_held()?;
        self.remote()?
            .remote
            .call(what, nr, a)
            .map_err(|source| TaskError::Remote { pid, source })
    }
}

impl Syscalls for RestoreCx<'_> {
    type Error = TaskError;
    /// Runs a syscall in the puppet.
    /// Calls held back ([`RestoreCx::batch_later`]) run first (in a stop of their own: a
    /// call such as clone3 or exit must not run from batch code).
    fn sys(&mut self, what: &'static str, nr: i64, a: [u64; 6]) -> Result<u64, TaskError> {
        let pid = self.pid;
        self.flush_later()?;
        self.remote
            .call(what, nr, a)
            .map_err(|source| TaskError::Remote { pid, source })
    }
}

/// Restore-side context: the puppet process being shaped into the task.
pub struct RestoreCx<'a> {
    pub pid: i32,
    pub remote: Remote<'a>,
    /// Scratch memory inside the puppet (part of the trampoline area).
    pub scratch: u64,
    pub scratch_len: u64,
    pub dir: &'a ImageDir,
    pub files: &'a HashMap<u32, pb::FileEntry>,
    /// Open files made in cryo for the puppets to take (pipes, eventfds, ...).
    pub objs: &'a std::cell::RefCell<files::FdObjects>,
    pub stats: &'a mut pb::RestoreStatsEntry,
    /// What every task of the puppet starts with (inherited from cryo), learnt once, so
    /// restoring a value equal to it costs nothing (matters with thousands of threads).
    pub inherited: Inherited,
    /// Private anonymous mappings this process kept from its parent at fork (copy-on-write):
    /// only their pages that differ from the parent's are written, so unchanged pages stay
    /// shared as they were before the dump.
    pub cow: Vec<(u64, u64)>,
    /// A pidfd of cryo the puppet holds at this fd number: a puppet in a new PID namespace
    /// cannot name cryo to `pidfd_open`.
    pub cryo_pidfd: Option<i32>,
    /// A lazy restore (`--lazy-pages`): where each task's userfaultfd goes (the lazy-pages
    /// daemon), and a sign that lazy mappings are not filled.
    pub lazy: Option<&'a crate::lazy::Sink>,
    /// The root's memory staged by `cryo receive` (`crate::stage`), kept in the puppet at
    /// its stage addresses: moved onto the mappings it holds (the root only).
    pub stage: Option<&'a crate::stage::Stage>,
    /// Calls queued by [`RestoreCx::batch_later`], run in the stop of the next call.
    pub later: Later,
}

/// Side-effect calls a [`RestoreCx`] holds back so that they run in the same stop as the
/// next batch (each stop of a puppet costs a wake-up; under load, a scheduler tick): only
/// while `on` (the main context of a process being shaped; [`RestoreCx::run_later`] must run
/// before it is dropped). The scratch data of queued calls stays below `top`: meanwhile
/// [`RestoreCx::put`] writes above it.
#[derive(Debug, Default)]
pub struct Later {
    pub on: bool,
    calls: Batch,
    /// Scratch offset the data of queued calls lies below (`put` adds it to its offsets).
    top: u64,
    /// End of the highest data `put` wrote since the last [`RestoreCx::end_later`].
    put_top: u64,
    /// Calls held back whose failure is an open of this path (a `chdir`): (call name, path).
    paths: Vec<(&'static str, String)>,
}

/// The error of a held-back call: a failed open of its path for a `chdir` held with
/// [`RestoreCx::batch_later_opening`].
fn held_error(
    pid: i32,
    paths: Vec<(&'static str, String)>,
    source: crate::sys::remote::RemoteError,
) -> TaskError {
    match paths.into_iter().find(|(what, _)| *what == source.what()) {
        Some((_, path)) => TaskError::Open { pid, path, source },
        None => TaskError::Remote { pid, source },
    }
}

/// The last held-back calls of a process, started by [`RestoreCx::start_later`] and
/// running in its puppet while cryo shapes other processes.
#[derive(Debug)]
pub struct HeldRun {
    pub pid: i32,
    base: crate::sys::ptrace::Regs,
    started: crate::sys::remote::Started,
    paths: Vec<(&'static str, String)>,
}

impl HeldRun {
    /// Waits for the calls to be done in the puppet (trampoline at `tr`); the error of the
    /// one that failed.
    pub fn finish(self, tr: u64) -> Result<(), TaskError> {
        let t = crate::sys::ptrace::Tracee { tid: self.pid };
        let mut r = crate::restore::batch_remote(&t, tr, self.base);
        let pid = self.pid;
        r.finish_batch(self.started)
            .map(drop)
            .map_err(|source| held_error(pid, self.paths, source))
    }
}

/// Where [`RestoreCx::clone3_with_tid`] puts `struct clone_args` in scratch.
const SCRATCH_CLONE_ARGS: u64 = 2048;
/// Where [`RestoreCx::clone3_with_tid`] puts the `set_tid` array in scratch.
const SCRATCH_SET_TID: u64 = 3072;

/// State the puppet (and each thread it creates before dropping privileges) starts with.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    pub creds: Option<pb::CredsEntry>,
    pub sched: Option<(i32, i32, i32)>,
    pub xstate_len: Option<usize>,
    /// Seccomp filters (the oldest of the saved chain) the leader installed before creating
    /// its threads, so they have them already.
    pub seccomp: usize,
}

impl RestoreCx<'_> {
    /// Runs the calls queued in `b` in the puppet, in one stop where possible (see
    /// [`Remote::run_batch`](crate::sys::remote::Remote::run_batch)); returns their results.
    /// The calls held back by [`Self::batch_later`] run first, in the same stop.
    pub fn batch(&mut self, b: &Batch) -> Result<Vec<u64>, TaskError> {
        let pid = self.pid;
        if b.is_empty() && self.later.calls.is_empty() {
            return Ok(Vec::new());
        }
        let held = self.later.calls.len();
        let run = if held == 0 {
            self.remote.run_batch(b)
        } else {
            let mut all = std::mem::take(&mut self.later.calls);
            all.calls.extend_from_slice(&b.calls);
            self.remote.run_batch(&all)
        };
        let paths = std::mem::take(&mut self.later.paths);
        let mut got = run.map_err(|source| held_error(pid, paths, source))?;
        Ok(got.split_off(held.min(got.len())))
    }

    /// Like [`Self::batch_later`]; the failure of the call named `what` among them is
    /// reported as a failed open of `path` (a `chdir`).
    pub fn batch_later_opening(
        &mut self,
        b: &Batch,
        what: &'static str,
        path: &str,
    ) -> Result<(), TaskError> {
        self.later.paths.push((what, path.to_string()));
        self.batch_later(b)
    }

    /// Queues the calls of `b` (side effects: nothing is returned) to run in the stop of the
    /// next batch or call of this puppet, or at [`Self::run_later`]; without
    /// [`Later::on`] they run now. A failure is reported when they run, under the failed
    /// call's name. The scratch data they use must have been `put` already.
    pub fn batch_later(&mut self, b: &Batch) -> Result<(), TaskError> {
        if !self.later.on {
            return self.batch(b).map(drop);
        }
        self.later.calls.calls.extend_from_slice(&b.calls);
        self.later.top = self.later.top.max(self.later.put_top).next_multiple_of(64);
        Ok(())
    }

    /// Runs the calls held back by [`Self::batch_later`] now (one stop), if any, at a
    /// point where no scratch data is in use (between kinds): `put` writes from the start of
    /// scratch again, and code that puts its data at fixed places in scratch may run.
    pub fn run_later(&mut self) -> Result<(), TaskError> {
        self.flush_later()?;
        self.later.top = 0;
        self.later.put_top = 0;
        Ok(())
    }

    /// Runs the calls held back now, if any; the data `put` meanwhile stays where it is.
    fn flush_later(&mut self) -> Result<(), TaskError> {
        if self.later.calls.is_empty() {
            return Ok(());
        }
        self.batch(&Batch::new()).map(drop)
    }

    /// Starts what is held back and stops holding calls back (the end of a process's
    /// shaping): the puppet runs the calls while cryo shapes the next process. Returns the
    /// run to wait for ([`HeldRun::finish`]) before anything else is done with this
    /// puppet; None when nothing was held, or the calls took more than one stop and ran now.
    pub fn start_later(&mut self) -> Result<Option<HeldRun>, TaskError> {
        let pid = self.pid;
        let base = self.remote.base();
        let later = std::mem::take(&mut self.later);
        let started = self
            .remote
            .start_batch(&later.calls)
            .map_err(|source| TaskError::Remote { pid, source })?;
        match started {
            Some(started) => Ok(Some(HeldRun {
                pid,
                base,
                started,
                paths: later.paths,
            })),
            None => {
                self.later.calls = later.calls;
                self.later.paths = later.paths;
                self.flush_later()?;
                self.later = Later::default();
                Ok(None)
            }
        }
    }

    /// Copies `bytes` into the puppet's scratch area at `off` (above the data of calls held
    /// back, [`Self::batch_later`]); returns the remote address.
    pub fn put(&mut self, off: u64, bytes: &[u8]) -> Result<u64, TaskError> {
        let end = off + bytes.len() as u64;
        let mut base = self.later.top;
        if base + end > self.scratch_len {
            // No room above: the held calls run now, and what lies below `top` (only their
            // data: a kind's own data since its last `batch_later` lies above) is free.
            if base == 0 || end > base || end > self.scratch_len {
                return Err(TaskError::Internal("scratch area too small"));
            }
            self.flush_later()?;
            self.later.top = 0;
            base = 0;
        }
        let off = base + off;
        self.later.put_top = self.later.put_top.max(base + end);
        let addr = self.scratch + off;
        if bytes.is_empty() {
            return Ok(addr);
        }
        crate::sys::mem::vm_write(self.pid, bytes, &[(addr, bytes.len())]).map_err(|source| {
            TaskError::Memory {
                pid: self.pid,
                addr,
                what: "writing the scratch area",
                source,
            }
        })?;
        Ok(addr)
    }

    /// Copies a NUL-terminated path into scratch (at offset 0); returns its remote address.
    pub fn put_path(&mut self, path: &str) -> Result<u64, TaskError> {
        let mut b = path.as_bytes().to_vec();
        b.push(0);
        self.put(0, &b)
    }

    /// Opens `path` inside the puppet with `flags`; returns the fd.
    /// (`flags`: the kernel's int bits, as the images keep them.)
    pub fn open(&mut self, path: &str, flags: u32) -> Result<RemoteFd, TaskError> {
        let p = self.put_path(path)?;
        self.flush_later()?;
        self.remote
            .openat(libc::AT_FDCWD, p, flags.cast_signed(), 0)
            .map_err(|source| TaskError::Open {
                pid: self.pid,
                path: path.to_string(),
                source,
            })
    }

    /// Creates a task from the puppet with `clone3(args)` and the exact id `tid` (in the
    /// puppet's PID namespace): the struct and its `set_tid` array are put into scratch.
    /// Returns the id the puppet sees (cryo's may differ: `remote.last_child`).
    pub fn clone3_with_tid(
        &mut self,
        what: &'static str,
        args: CloneArgs,
        tid: i32,
    ) -> Result<i32, TaskError> {
        self.clone3_with_tids(what, args, &[tid])
    }

    /// [`Self::clone3_with_tid`] with the task's ids in several PID namespaces: `tids`,
    /// innermost (the new task's own) first, as clone3's `set_tid` takes them.
    pub fn clone3_with_tids(
        &mut self,
        what: &'static str,
        mut args: CloneArgs,
        tids: &[i32],
    ) -> Result<i32, TaskError> {
        let bytes: Vec<u8> = tids.iter().flat_map(|t| t.to_ne_bytes()).collect();
        args.set_tid = self.put(SCRATCH_SET_TID, &bytes)?;
        args.set_tid_size = crate::num::u64_of(tids.len());
        let a = self.put(SCRATCH_CLONE_ARGS, &args.to_bytes())?;
        self.named(what)
            .clone3(a, crate::sys::clone::CLONE_ARGS_SIZE as u64)
    }

    /// Gives the puppet its own fd for cryo's fd `local` (the same open file description,
    /// through `pidfd_getfd`); returns the puppet's fd, which the caller closes.
    pub fn take_from_cryo(&mut self, local: i32) -> Result<RemoteFd, TaskError> {
        if let Some(chan) = self.cryo_pidfd {
            return self.take_via(chan, local);
        }
        let pidfd = self
            .named("pidfd_open (cryo)")
            .pidfd_open(crate::sys::proc::own_pid(), 0)?;
        let got = self.pidfd_getfd(pidfd, local);
        self.close(pidfd)?;
        got
    }

    /// The puppet's fd for cryo's fd `local`, through `chan`: its pidfd of cryo, or its end
    /// of the fd transport (`sys::remote::set_transport`, a puppet in another user
    /// namespace). The new fd is close-on-exec.
    pub fn take_via(&mut self, chan: RemoteFd, local: i32) -> Result<RemoteFd, TaskError> {
        let buf = self.scratch + self.scratch_len - 256;
        let pid = self.pid;
        self.flush_later()?;
        self.remote
            .take_cryo_fd(chan, local, buf)
            .map_err(|source| TaskError::Remote { pid, source })
    }

    /// Moves the puppet's fd `tmp` to fd number `target`, close-on-exec or not.
    pub fn place_fd(
        &mut self,
        tmp: RemoteFd,
        target: RemoteFd,
        cloexec: bool,
    ) -> Result<(), TaskError> {
        if tmp != target {
            self.dup3(tmp, target, if cloexec { libc::O_CLOEXEC } else { 0 })?;
            self.close(tmp)?;
        } else if cloexec {
            self.set_cloexec(tmp, true)?;
        }
        Ok(())
    }

    /// Makes the puppet join the namespace cryo holds open as `ns` (`flag`: its CLONE_NEW*
    /// kind): it takes the fd, `setns`es and closes it.
    pub fn join_ns(
        &mut self,
        ns: std::os::fd::BorrowedFd<'_>,
        flag: i32,
        what: &'static str,
    ) -> Result<(), TaskError> {
        let fd = self.take_from_cryo(std::os::fd::AsRawFd::as_raw_fd(&ns))?;
        let r = self.named(what).setns(fd, flag);
        self.close(fd)?;
        r
    }

    /// Looks up the regular-file record `id` in files.img.
    pub fn reg(&self, id: u32) -> Result<&pb::RegFileEntry, TaskError> {
        self.files
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .ok_or(TaskError::BadImage(format!(
                "files.img has no regular-file entry with id {id}"
            )))
    }
}
