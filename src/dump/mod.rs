//! The dump pipeline: check → seize → collect → inject → per-kind dump → cure → memory →
//! write images → final state (kill, or leave running).
//!
//! Never harm the target: everything that can be refused is refused before the task is
//! touched (`precheck`); after seizing, every error path runs through [`Seized`]'s cleanup,
//! which cures the injection (code word, registers, signal mask) and detaches, so a failed
//! dump leaves the task running exactly as it was.

use std::time::Instant;

use crate::image::{self, pb, ImageDir};
use crate::kinds::error::{task_error_from, Failure, TaskError, Unsupported};
use crate::kinds::{self, DumpCx, FileTable, TaskImages};
use crate::notify::{Notifier, NotifyError};
use crate::num::{c_int, c_uint, img_pid, len32, micros_u32, micros_u64};
use crate::procfs;
use crate::sys::ptrace::{Stop, Tracee};
use crate::sys::remote::{Parasite, Syscalls};

pub mod predump;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    pub pid: i32,
    pub leave_running: bool,
    /// `--leave-stopped` (with `leave_running`): every process is left stopped (SIGSTOP),
    /// as CRIU leaves it, instead of running on.
    pub leave_stopped: bool,
    pub shell_job: bool,
    /// Largest deleted-but-open file saved as a ghost file (bytes).
    pub ghost_limit: u64,
    /// What to do with the tree's mounts: externals (`--external mnt[PATH]:KEY`, mount point
    /// as the tree sees it → the key the restore gives a host path for), auto-detected
    /// externals, `--enable-fs`, `--skip-mnt`, external sharing and masters.
    pub mounts: kinds::mounts::MountPolicy,
    /// Network namespaces (by inode) saved as external, with the caller's key
    /// (`--external net[INO]:KEY`).
    pub external_net: std::collections::HashMap<u64, String>,
    /// PID namespaces (by inode) saved as external, with the caller's key
    /// (`--external pid[INO]:KEY`): the tree's, when it is not the tree's own (a pod's).
    pub external_pid: std::collections::HashMap<u64, String>,
    /// `--empty-ns net`: a private network namespace is not saved; restore makes it empty.
    pub empty_net: bool,
    /// `--freeze-cgroup PATH`: freeze this cgroup while the tree is seized.
    pub freeze_cgroup: Option<std::path::PathBuf>,
    /// `--manage-cgroups=ignore` saves no cgroup directory (memberships are always saved).
    pub cgroup_mode: kinds::cgroup::Mode,
    /// `--file-locks`: save the tree's file locks (without it, a lock fails the dump).
    pub file_locks: bool,
    /// `--network-lock`: how the tree's network is locked while it is frozen (`netlock`).
    pub network_lock: crate::netlock::Method,
    /// `--tcp-established`, `--tcp-close`, `--skip-in-flight`, `--ext-unix-sk`.
    pub sock: kinds::files::SockOpts,
    /// `--link-remap`: a removed file with other names gets a temporary one for the restore.
    pub link_remap: bool,
    /// `--prev-images-dir`: the previous step of an incremental dump (relative to the images
    /// directory): only pages written since are saved, the others are marked in the parent.
    pub prev_images_dir: Option<String>,
    /// `--track-mem`: take the previous step's write tracking, and (with `--leave-running`)
    /// keep tracking for a later step.
    pub track_mem: bool,
    /// `--pre-dump-mode` (`splice`, `read`): recorded in the inventory, as CRIU does.
    pub pre_dump_mode: Option<String>,
    /// `--page-server --address A --port N`: the pages go to this page server (`host:port`).
    pub page_server: Option<String>,
    /// `--lazy-pages --address A --port N`: the pages of private anonymous memory are kept
    /// and served there (`host:port`) to a lazy-pages daemon once the dump is done.
    pub lazy_pages: Option<String>,
    /// With `lazy_pages`: a file (`--status-fd`'s `/proc/.../fd/N`) that gets one NUL byte
    /// once the images are complete and the lazy pages are being served (CRIU's
    /// `status_ready`), which is when runc lets `checkpoint --lazy-pages` go on.
    pub lazy_ready: Option<std::path::PathBuf>,
    /// With `lazy_pages`: how long the lazy-pages daemon may take to connect once the
    /// images are complete (`None`: no bound, the user starts the restore when they like).
    pub lazy_connect_within: Option<std::time::Duration>,
    /// With `lazy_pages`: the only address a lazy-pages daemon may connect from (`cryo
    /// migrate`: the destination's); `None`: any, as CRIU's `dump --lazy-pages`.
    pub lazy_peer: Option<std::net::IpAddr>,
    /// `--cpu-cap` bits (`kinds::cpuinfo`): with `CAP_IMAGE`, this CPU goes into cpuinfo.img.
    pub cpu_cap: u32,
    /// `--timeout N`: how long every thread of the tree may take to stop once seized
    /// (`None`: CRIU's default, [`DEFAULT_SEIZE_TIMEOUT`] seconds).
    pub timeout: Option<u32>,
}

/// CRIU's default `--timeout`, in seconds.
pub const DEFAULT_SEIZE_TIMEOUT: u32 = 10;

impl DumpOpts {
    /// When seizing must be over, counted from now.
    fn seize_deadline(&self) -> SeizeDeadline {
        SeizeDeadline::after(self.timeout.unwrap_or(DEFAULT_SEIZE_TIMEOUT))
    }

    /// How long a page server may take no data or give no answer: `--timeout` if given,
    /// else [`crate::pageserver::DEFAULT_IDLE_TIMEOUT`] (60 s: a loaded machine can stall a
    /// page server longer than CRIU's 10 s seize timeout). Past it the dump fails naming
    /// the page server, and the tree runs on.
    pub fn io_timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(crate::pageserver::DEFAULT_IDLE_TIMEOUT, |t| {
                std::time::Duration::from_secs(u64::from(t.max(1)))
            })
    }
}

/// The moment by which every seized thread must have stopped (`--timeout`). A thread that
/// cannot stop — one in `vfork()` whose child is frozen, one in an uninterruptible sleep
/// that never ends — would otherwise hang the dump for ever.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeizeDeadline {
    at: Instant,
    secs: u32,
}

impl SeizeDeadline {
    pub(crate) fn after(secs: u32) -> SeizeDeadline {
        SeizeDeadline {
            at: Instant::now() + std::time::Duration::from_secs(u64::from(secs)),
            secs,
        }
    }

    /// The error for thread `tid`, which has not stopped: why, as far as /proc tells.
    fn missed(&self, tid: i32) -> DumpError {
        let state = procfs::stat(tid).map(|s| s.state).unwrap_or('?');
        let wchan = procfs::read(tid, "wchan").unwrap_or_default();
        // A vfork parent sleeps in wait_for_vfork_done(), which the kernel inlines into
        // kernel_clone(): no other sleep there outlasts a timeout.
        let why = if wchan.contains("vfork") || wchan == "kernel_clone" {
            format!(
                "it is in vfork(), waiting for its child, which was frozen with it: a parent \
                 cannot stop before its vfork child calls exec or exits; dump again once it \
                 has (or raise --timeout, now {})",
                self.secs
            )
        } else {
            let at = if wchan.is_empty() || wchan == "0" {
                String::new()
            } else {
                format!(", in {wchan}")
            };
            format!(
                "state {state}{at}: it is in an uninterruptible wait; dump again when it is \
                 out of it, or give a longer --timeout (now {})",
                self.secs
            )
        };
        DumpError::SeizeTimeout {
            tid,
            secs: u64::from(self.secs),
            why,
        }
    }
}

/// Why a dump failed: the pipeline's own failures, and each kind's error, collected.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("cannot seize process {pid}")]
    Seize {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    /// A failure every stage can meet (in-target call, /proc, images, refusal, fault point).
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
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
    #[error(transparent)]
    Netns(#[from] kinds::netns::NetnsError),
    #[error(transparent)]
    Userns(#[from] kinds::userns::UsernsError),
    #[error(transparent)]
    Cpuinfo(#[from] kinds::cpuinfo::CpuinfoError),
    #[error(transparent)]
    NetLock(#[from] crate::netlock::NetLockError),
    #[error(transparent)]
    Track(#[from] crate::memtrack::TrackError),
    #[error(transparent)]
    PageServer(#[from] crate::pageserver::PsError),
    #[error(
        "thread {tid} did not stop within {secs} s of being seized ({why}); nothing was \
         saved and the tree runs on as it was"
    )]
    SeizeTimeout { tid: i32, secs: u64, why: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}
task_error_from!(DumpError, no_failure);

impl DumpError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        let kind: &dyn Failure = match self {
            DumpError::Seize { .. } => {
                return Some("is it already traced (gdb, strace) or a kernel thread? cryo needs ptrace (root or CAP_SYS_PTRACE)".into())
            }
            DumpError::NoSuchProcess { .. } => {
                return Some("check the pid given with -t/--tree".into())
            }
            DumpError::Privilege(p) => return Some(p.hint()),
            DumpError::Notify(_) | DumpError::Internal(_) | DumpError::SeizeTimeout { .. } => {
                return None
            }
            DumpError::Track(crate::memtrack::TrackError::Parent { .. }) => {
                return Some("--prev-images-dir is relative to the images directory (-D), as in CRIU: e.g. ../previous".into())
            }
            DumpError::Track(_) => return None,
            DumpError::PageServer(_) => {
                return Some("is `cryo page-server` (or `criu page-server`) listening at --address/--port?".into())
            }
            DumpError::Task(e) => e,
            DumpError::Files(e) => e,
            DumpError::Memory(e) => e,
            DumpError::Signals(e) => e,
            DumpError::Misc(e) => e,
            DumpError::Creds(e) => e,
            DumpError::Timers(e) => e,
            DumpError::Rlimits(e) => e,
            DumpError::Regs(e) => e,
            DumpError::Threads(e) => e,
            DumpError::Seccomp(e) => e,
            DumpError::Ns(e) => e,
            DumpError::Ipc(e) => e,
            DumpError::Mounts(e) => e,
            DumpError::Cgroup(e) => e,
            DumpError::Locks(e) => e,
            DumpError::Tty(e) => e,
            DumpError::Ghost(e) => e,
            DumpError::Netns(e) => e,
            DumpError::Userns(e) => e,
            DumpError::NetLock(e) => e,
            DumpError::Cpuinfo(e) => e,
        };
        kind.hint()
    }
}

/// A fault point of the dump ([`crate::fault`]); an interrupted dump says that the tree was
/// left running.
fn fault_point(stage: &str) -> Result<(), DumpError> {
    Ok(crate::fault::point(stage)?)
}

/// The seized threads of a task (leader first); released on drop unless [`Seized::kill`]
/// took them.
struct Seized {
    tracees: Vec<Tracee>,
    done: bool,
    /// The process was stopped by job control, with this signal.
    stop_sig: Option<i32>,
    /// The scratch area of the injection (site, address, length), left mapped by a dump
    /// that kills the tree (`dump_process`): unmapped before the task is let go.
    scratch_left: std::cell::Cell<Option<(u64, u64, u64)>>,
}

impl Seized {
    fn release(&mut self) {
        if !self.done {
            self.done = true;
            if let (Some((site, addr, len)), Some(leader)) =
                (self.scratch_left.take(), self.tracees.first())
            {
                if let Err(e) = Parasite::unmap_left(leader, site, addr, len) {
                    tracing::error!(tid = leader.tid, error = %e, "Could not unmap cryo's scratch area");
                }
            }
            if let (Some(sig), Some(leader)) = (self.stop_sig, self.tracees.first()) {
                // Queued stop signals may have been taken at seize: it stops again once
                // let go, as CRIU does.
                let _ = crate::sys::proc::kill(leader.tid, sig);
            }
            for t in &self.tracees {
                if let Err(e) = t.detach(0) {
                    tracing::error!(tid = t.tid, error = %e, "Error detaching from a task");
                }
            }
        }
    }
    fn sigkill(&self) {
        if let Some(leader) = self.tracees.first() {
            let _ = crate::sys::proc::kill(leader.tid, libc::SIGKILL);
        }
    }
    /// Kills the task and takes its threads' exit notifications. `bounded`: the init of a
    /// PID namespace nested in the tree, whose exit waits until every task of its namespace
    /// is reaped, also those whose parent is outside it (children its parent forked into
    /// the namespace after it), which only their new parent (a subreaper, PID 1) reaps:
    /// after a while its exit is left to finish without cryo.
    fn kill(&mut self, bounded: bool) {
        self.done = true;
        self.sigkill();
        // Reap our tracee notifications; the real parent gets the exit status. The leader
        // reports last: its exit waits until every other thread has been reaped.
        for t in self.tracees.iter().rev() {
            let _ = t.detach(0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            loop {
                let got = if bounded {
                    crate::sys::ptrace::try_wait(t.tid)
                } else {
                    t.wait().map(Some)
                };
                match got {
                    Ok(Some(Stop::Exited(_) | Stop::Killed(_))) | Err(_) => break,
                    Ok(Some(Stop::Stopped { .. })) => {
                        let _ = t.cont(0);
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Ok(None) => {
                        tracing::warn!(
                            tid = t.tid,
                            "the init of a nested PID namespace is still exiting: left to finish"
                        );
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        self.release();
    }
}

/// Waits until a seized and interrupted thread is in its ptrace stop: a thread that exited
/// meanwhile is None; a job-control stop reports its signal.
/// A thread that has not stopped by `deadline` fails the dump: it cannot be detached while it
/// runs, so it stays attached (and is let go without ever stopping) until cryo exits.
fn wait_seized(
    t: Tracee,
    deadline: SeizeDeadline,
) -> Result<Option<(Tracee, Option<i32>)>, DumpError> {
    let tid = t.tid;
    let give_up = |t: &Tracee, e| {
        let _ = t.detach(0);
        e
    };
    for _ in 0..100 {
        let st = match t.wait_until(deadline.at) {
            Ok(Some(st)) => Ok(st),
            Ok(None) => return Err(deadline.missed(tid)),
            Err(e) => Err(e),
        };
        match st {
            Ok(Stop::Stopped { sig, event }) if event == libc::PTRACE_EVENT_STOP => {
                // In a group stop (job control) the stop reports the stop signal; a running
                // task interrupted by PTRACE_INTERRUPT reports SIGTRAP.
                let stopped = matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                )
                .then_some(sig);
                if stopped.is_some() {
                    if let Err(e) = skip_pending_stops(&t) {
                        return Err(give_up(&t, e));
                    }
                }
                return Ok(Some((t, stopped)));
            }
            Ok(Stop::Stopped { sig, .. }) => {
                // A signal was being delivered: let it through, then stop again.
                if let Err(source) = t.cont(sig).and_then(|_| t.interrupt()) {
                    return Err(give_up(&t, DumpError::Seize { pid: tid, source }));
                }
            }
            Ok(_) => return Ok(None),
            Err(source) => return Err(give_up(&t, DumpError::Seize { pid: tid, source })),
        }
    }
    Err(give_up(
        &t,
        DumpError::Internal("task kept receiving signals while being seized"),
    ))
}

/// A stopped task may have stop signals queued on top of its stop (a second SIGSTOP, sent
/// while it was stopped). The first injected syscall would take one and stop the task in
/// the middle of the dump, so they are taken now, as CRIU does: the task is let out of its
/// ptrace stop, takes the signal into a signal-delivery stop, and is interrupted before the
/// signal is thrown away, so it runs no code of its own. The task is dumped stopped, and a
/// stop signal is queued again when it is released or restored.
fn skip_pending_stops(t: &Tracee) -> Result<(), DumpError> {
    let stop_bit = |sig: i32| 1u64 << (sig - 1);
    let seize_err = |source| DumpError::Seize { pid: t.tid, source };
    for _ in 0..8 {
        let st = procfs::status(t.tid)?;
        let blocked = t.sigmask().map_err(seize_err)?;
        let pending = (st.sig_pnd | st.shd_pnd)
            & (stop_bit(libc::SIGSTOP) | (stop_bit(libc::SIGTSTP) & !blocked));
        if pending == 0 {
            return Ok(());
        }
        t.cont(0).map_err(seize_err)?;
        loop {
            match t.wait().map_err(seize_err)? {
                Stop::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => break,
                Stop::Stopped { sig, .. } => {
                    // A signal-delivery stop: trap at once, then drop a stop signal (pass any
                    // other on: its handler frame is set up, none of its code runs).
                    let pass = if matches!(sig, libc::SIGSTOP | libc::SIGTSTP) {
                        0
                    } else {
                        sig
                    };
                    t.interrupt()
                        .and_then(|_| t.cont(pass))
                        .map_err(seize_err)?;
                }
                _ => return Err(DumpError::NoSuchProcess { pid: t.tid }),
            }
        }
    }
    Err(DumpError::Internal(
        "stop signals kept arriving while the task was seized",
    ))
}

/// Seizes every thread of every process of `pids` (none a zombie), re-reading each thread
/// list until no new thread appears. Pipelined: every thread is seized and interrupted
/// first, then the stops are collected, so the tasks stop concurrently instead of one
/// ptrace round trip after another (1000 threads or processes: a few ms instead of ~100).
/// On failure every task seized so far is let go. A process other than `root` that exited
/// meanwhile is `None`.
fn seize_all(
    pids: &[i32],
    root: i32,
    deadline: SeizeDeadline,
) -> Result<Vec<Option<Seized>>, DumpError> {
    let mut out: Vec<Seized> = Vec::with_capacity(pids.len());
    let mut pending: Vec<(usize, Tracee)> = Vec::new();
    let mut err = None;
    'issue: for (i, &pid) in pids.iter().enumerate() {
        out.push(Seized {
            tracees: Vec::new(),
            done: false,
            stop_sig: None,
            scratch_left: Default::default(),
        });
        // The leader first, so it is first in `tracees`.
        let mut tids = procfs::threads(pid).unwrap_or_default();
        tids.retain(|&t| t != pid);
        tids.insert(0, pid);
        for tid in tids {
            match Tracee::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
                Ok(t) => pending.push((i, t)),
                Err(e) if exited(tid, &e) => {}
                Err(source) => {
                    err = Some(DumpError::Seize { pid: tid, source });
                    break 'issue;
                }
            }
        }
    }
    for (i, t) in pending {
        let leader = t.tid == pids[i];
        match wait_seized(t, deadline) {
            Ok(Some((t, stopped))) => {
                if leader {
                    out[i].stop_sig = stopped;
                }
                out[i].tracees.push(t);
            }
            Ok(None) => {}
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let mut res = Vec::with_capacity(pids.len());
    for (i, &pid) in pids.iter().enumerate() {
        let s = std::mem::replace(
            &mut out[i],
            Seized {
                tracees: Vec::new(),
                done: true,
                stop_sig: None,
                scratch_left: Default::default(),
            },
        );
        if s.tracees.first().map(|t| t.tid) != Some(pid) {
            // A descendant that exited meanwhile (a fork-and-exit loop): the next walk of
            // the tree finds it as a zombie, or not at all. The root must be there.
            if pid == root {
                return Err(DumpError::NoSuchProcess { pid });
            }
            tracing::info!(pid, "a process of the tree exited while it was seized");
            res.push(None);
            continue;
        }
        res.push(Some(seize_new_threads(pid, s, deadline)?));
    }
    Ok(res)
}

/// Seizes the threads of `pid` that `s` does not hold yet, until none appears.
fn seize_new_threads(
    pid: i32,
    mut s: Seized,
    deadline: SeizeDeadline,
) -> Result<Seized, DumpError> {
    for _ in 0..10 {
        let mut new = false;
        let held: std::collections::HashSet<i32> = s.tracees.iter().map(|t| t.tid).collect();
        let mut pending = Vec::new();
        let mut err = None;
        for tid in procfs::threads(pid)? {
            if held.contains(&tid) {
                continue;
            }
            match Tracee::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
                Ok(t) => pending.push(t),
                Err(e) if exited(tid, &e) => {}
                Err(source) => {
                    err = Some(DumpError::Seize { pid: tid, source });
                    break;
                }
            }
        }
        for t in pending {
            match wait_seized(t, deadline) {
                Ok(Some((t, _))) => {
                    s.tracees.push(t);
                    new = true;
                }
                Ok(None) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        if !new {
            // Threads that exited while we worked are gone from the list; drop them too.
            let live = procfs::threads(pid)?;
            s.tracees.retain(|t| live.contains(&t.tid));
            return Ok(s);
        }
    }
    Err(DumpError::Internal("the process kept creating threads"))
}

/// `--freeze-cgroup`: the tree is seized while its cgroup is frozen, so no task can fork,
/// clone or exit meanwhile. `PTRACE_SEIZE` and `PTRACE_INTERRUPT` work on frozen tasks, whose
/// stops arrive once `freezer` thaws them; cryo waits for them only then. Every thread held
/// is waited for and (on error) detached before this returns, thawed first, so no task is
/// left half-seized; the freezer's drop restores the cgroup's own state later.
fn seize_frozen(
    root: i32,
    freezer: &kinds::cgroup::Freezer,
    opts: &DumpOpts,
) -> Result<Vec<(i32, i32, Seized)>, DumpError> {
    // (pid, ppid, threads held; empty for a zombie)
    let mut held: Vec<(i32, i32, Vec<Tracee>)> = Vec::new();
    let hold = |held: &mut Vec<(i32, i32, Vec<Tracee>)>| -> Result<(), DumpError> {
        for _ in 0..10 {
            let mut new = false;
            for (pid, ppid) in collect_tree(root)? {
                if held.iter().any(|(p, _, _)| *p == pid) {
                    continue;
                }
                new = true;
                held.push((pid, ppid, Vec::new()));
                if is_zombie(pid) {
                    continue;
                }
                let ts = &mut held.last_mut().expect("pushed").2;
                for _ in 0..10 {
                    let mut more = false;
                    for tid in procfs::threads(pid)? {
                        if ts.iter().any(|t| t.tid == tid) {
                            continue;
                        }
                        match Tracee::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
                            Ok(t) => ts.push(t),
                            Err(e) if exited(tid, &e) => continue,
                            Err(source) => return Err(DumpError::Seize { pid: tid, source }),
                        }
                        more = true;
                    }
                    if !more {
                        break;
                    }
                }
            }
            if !new {
                return Ok(());
            }
        }
        Err(DumpError::Internal("the tree kept changing while frozen"))
    };
    let mut err = hold(&mut held).err();
    if let Err(e) = freezer.thaw() {
        err.get_or_insert(e.into());
    }
    // The stops arrive only now that the cgroup is thawed.
    let deadline = opts.seize_deadline();
    let mut out = Vec::new();
    for (pid, ppid, ts) in held {
        let zombie = ts.is_empty();
        let mut s = Seized {
            tracees: Vec::new(),
            done: zombie,
            stop_sig: None,
            scratch_left: Default::default(),
        };
        let mut leader_gone = false;
        for t in ts {
            let is_leader = t.tid == pid;
            match wait_seized(t, deadline) {
                Ok(Some((t, stopped))) => {
                    if is_leader {
                        s.stop_sig = stopped;
                    }
                    s.tracees.push(t);
                }
                Ok(None) => leader_gone |= is_leader,
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        if !zombie && err.is_none() {
            if leader_gone || s.tracees.first().is_none_or(|t| t.tid != pid) {
                err = Some(DumpError::NoSuchProcess { pid });
            } else {
                match seize_new_threads(pid, s, deadline) {
                    Ok(s) => out.push((pid, ppid, s)),
                    Err(e) => err = Some(e),
                }
                continue;
            }
        }
        out.push((pid, ppid, s));
    }
    match err {
        Some(e) => {
            freezer.put_back();
            Err(e) // `out` drops: every seized task is detached
        }
        None => Ok(out),
    }
}

/// Result of a dump, for logs and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub pages_written: u64,
    pub frozen_us: u64,
    pub total_us: u64,
    pub remote_syscalls: u64,
}

/// The processes of the tree rooted at `root`, parents before children, with their parent.
/// A descendant that exits while it is listed is left out (its children, reparented, are
/// found again on a later walk).
fn collect_tree(root: i32) -> Result<Vec<(i32, i32)>, DumpError> {
    let mut out = vec![(root, 0)];
    let mut i = 0;
    while i < out.len() {
        let (pid, _) = out[i];
        let threads = match procfs::threads(pid) {
            Ok(t) => t,
            Err(_) if pid != root => {
                i += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for tid in threads {
            let Ok(children) = procfs::read(pid, &format!("task/{tid}/children")) else {
                continue;
            };
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !out.iter().any(|(p, _)| *p == c) {
                    out.push((c, pid));
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Whether two listings of the tree hold the same processes.
fn same_tasks(a: &[(i32, i32)], b: &[(i32, i32)]) -> bool {
    let pids = |v: &[(i32, i32)]| {
        let mut p: Vec<i32> = v.iter().map(|t| t.0).collect();
        p.sort_unstable();
        p
    };
    pids(a) == pids(b)
}

/// Whether `pid` is the init (PID 1) of its own PID namespace (`NSpid` ends with 1).
fn is_pid_ns_init(pid: i32) -> bool {
    procfs::read(pid, "status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            == Some("1")
    })
}

/// Refuses, before touching anything, what the tree's shape does not allow yet.
fn precheck(opts: &DumpOpts, tree: &[(i32, i32)]) -> Result<(), DumpError> {
    let root = opts.pid;
    let mut fds = kinds::files::Precheck::default();
    fds.sock = opts.sock;
    let pids: Vec<i32> = tree.iter().map(|t| t.0).collect();
    // A cryo that is not root dumps only its own user's processes, whatever capabilities
    // its file gives it (CAP_SYS_PTRACE would let it read anyone's memory).
    let me = crate::privilege::Privilege::current()?;
    for &pid in &pids {
        crate::privilege::dump_precheck(&me, pid)?;
    }
    let root_stat = procfs::stat(root)?;
    if root_stat.session != root && !opts.shell_job {
        return Err(Unsupported::of(root, format!("session {}", root_stat.session), "the process is not a session leader, so its session cannot be restored", "start it with setsid, or pass --shell-job (-j) to dump and restore it into cryo's session").into());
    }
    // Namespaces other than cryo's own are not restored yet: refuse rather than restore the
    // tree into the wrong ones (files opened in another mount namespace, wrong hostname...).
    // UTS, (empty) IPC and (loopback-only) net are restored (kinds/ns.rs); a PID namespace
    // whose init is the root (`check_pid_ns`).
    check_pid_ns(tree, &opts.external_pid)?;
    check_mnt_ns(opts, tree)?;
    check_same_ns(tree, "time")?;
    check_same_ns(tree, "cgroup")?;
    // A user namespace of the tree's own (a child of cryo's, holding every task).
    kinds::userns::precheck(tree)?;
    let ino = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    for &(pid, _) in tree {
        // unshare(CLONE_NEWTIME) without a child yet: the namespace its children would get
        // has no task to be saved from (CRIU refuses it too).
        if ino(&format!("/proc/{pid}/ns/time")) != ino(&format!("/proc/{pid}/ns/time_for_children"))
        {
            return Err(Unsupported::of(
                pid,
                "time namespace",
                "it made a time namespace for its children (unshare(CLONE_NEWTIME)) and has no child in it yet",
                "dump it once it has forked into the new namespace",
            )
            .into());
        }
    }
    // Sessions: what fork order and helpers the restore needs (crate::restore::sessions);
    // a shape it cannot make again is refused here.
    let mut stats = std::collections::HashMap::new();
    for &(pid, _) in tree {
        stats.insert(pid, procfs::stat(pid)?);
    }
    let plan_tasks: Vec<crate::restore::sessions::Task> = tree
        .iter()
        .map(|&(pid, ppid)| crate::restore::sessions::Task {
            pid: pid.cast_unsigned(),
            ppid: ppid.cast_unsigned(),
            sid: stats[&pid].session.cast_unsigned(),
            zombie: stats[&pid].state == 'Z',
        })
        .collect();
    let sessions = crate::restore::sessions::plan(&plan_tasks, is_pid_ns_init(root))
        .map_err(|why| {
            Unsupported::of(
                root,
                "sessions",
                why,
                "dump from the session leader, or give the tree a layout of §7 of docs/ARCHITECTURE.md",
            )
        })?;
    for &(pid, _) in tree {
        let st = procfs::stat(pid)?;
        if st.state == 'X' || (st.state == 'Z' && pid == root) {
            return Err(Unsupported::of(
                pid,
                "task state",
                "the process is exiting (dead or a zombie)",
                "nothing is left to dump",
            )
            .into());
        }
        if st.state == 'Z' {
            continue; // a zombie child is saved as its exit status
        }
        if pid != root {
            let in_tree = tree.iter().any(|(p, _)| *p == st.pgrp);
            // A group named after a gone session leader lives on in the session's helper.
            let helper_group = st.pgrp == st.session
                && sessions.via.values().any(|v| {
                    *v == crate::restore::sessions::Via::NewLeader(st.session.cast_unsigned())
                });
            // A group whose leader is gone (no process has its PID) is made again at
            // restore by its first member, through a helper with that PID (CRIU's
            // process-group helpers); the root's own group outside the tree is a shell's.
            let leader_gone = st.pgrp != root_stat.pgrp
                && !std::path::Path::new(&format!("/proc/{}", st.pgrp)).exists()
                && ns_ino(pid, "pid") == ns_ino(root, "pid");
            if !(in_tree
                || helper_group
                || leader_gone
                || opts.shell_job && st.pgrp == root_stat.pgrp)
            {
                return Err(Unsupported::of(
                    pid,
                    format!("process group {}", st.pgrp),
                    "its process group leader is outside the dumped tree",
                    "dump the tree from the group leader",
                )
                .into());
            }
        }
        kinds::files::precheck(pid, opts.shell_job, &pids, &mut fds)?;
    }
    kinds::files::precheck_tree(&fds)?;
    kinds::tty::precheck(tree, opts.shell_job)?;
    // Network namespaces whose contents are saved: every link must be one cryo recreates.
    let own_net = ns_ino(crate::sys::proc::own_pid(), "net");
    let mut seen = Vec::new();
    for &(pid, _) in tree {
        let Some(n) = ns_ino(pid, "net").filter(|&n| Some(n) != own_net) else {
            continue;
        };
        if seen.contains(&n) || opts.external_net.contains_key(&n) || opts.empty_net {
            continue;
        }
        seen.push(n);
        kinds::netns::precheck(pid)?;
    }
    Ok(())
}

/// A tree in a PID namespace other than cryo's is dumped when the namespace is the tree's own:
/// its root is the namespace's init (PID 1) and every task lives in it or in a namespace
/// nested in it (`check_nested_pid_ns`). PIDs are then saved as the tree sees them, and
/// restore makes a new namespace.
fn check_pid_ns(
    tree: &[(i32, i32)],
    external: &std::collections::HashMap<u64, String>,
) -> Result<(), DumpError> {
    let ns = |pid: i32| ns_ino(pid, "pid");
    let root = tree[0].0;
    let theirs = ns(root);
    // None: the root is exiting, which the rest of the precheck refuses.
    if theirs.is_none() {
        return Ok(());
    }
    if theirs != ns(crate::sys::proc::own_pid()) {
        let vroot = ns_pid(root)?;
        // An external namespace (a pod's): the tree is restored into the one the caller gives.
        let ext = theirs.is_some_and(|t| external.contains_key(&t));
        if vroot != 1 && !ext {
            return Err(Unsupported::of(root, "pid namespace", format!(
                    "the process is PID {vroot} of a PID namespace, not its init, so the namespace cannot be restored"
                ), format!("dump the namespace's init (PID 1 inside it), run cryo inside the namespace, or name it external (--external pid[{}]:KEY) to restore into one given then", theirs.unwrap_or(0))).into());
        }
    }
    check_nested_pid_ns(tree)
}

/// PID namespaces nested in the tree's: each was made by a task of the tree for its child,
/// which is the namespace's init (PID 1 there, one level below its parent), and holds that
/// init's descendants and the parent's later children (forked into it too). A task that
/// entered a namespace with `setns` (its parent is not in it and it is not its init nor a
/// later child of the init's parent), or made one for children it has not forked yet, is
/// refused.
fn check_nested_pid_ns(tree: &[(i32, i32)]) -> Result<(), DumpError> {
    let ns = |pid: i32| ns_ino(pid, "pid");
    let local = |pid: i32| ns_status_ids(pid, "NSpid:").and_then(|v| v.last().copied());
    let mut made: Vec<u64> = Vec::new();
    for &(pid, ppid) in &tree[1..] {
        // A zombie has no namespaces left (nothing to restore in them).
        let (Some(n), Some(pn)) = (ns(pid), ns(ppid)) else {
            continue;
        };
        if n == pn {
            continue;
        }
        let (ids, pids) = (
            ns_status_ids(pid, "NSpid:").unwrap_or_default(),
            ns_status_ids(ppid, "NSpid:").unwrap_or_default(),
        );
        let refuse = |why: &str| -> DumpError {
            Unsupported::of(
                pid,
                "pid namespace",
                why,
                "only PID namespaces made by a process of the tree for its children (unshare or clone with CLONE_NEWPID), whose init is its child, are restored",
            )
            .into()
        };
        if ids.len() != pids.len() + 1 {
            return Err(refuse("the process runs in a PID namespace other than its parent's that is not one level below it (it entered it with setns)"));
        }
        if ids.last() == Some(&1) {
            if made.contains(&n) {
                return Err(refuse("the process is PID 1 of a PID namespace another process of the tree is the init of"));
            }
            made.push(n);
            continue;
        }
        // A later child of the namespace's maker: its init is a sibling, still alive.
        let init_is_sibling = tree
            .iter()
            .any(|&(c, pp)| pp == ppid && ns(c) == Some(n) && local(c) == Some(1));
        if !init_is_sibling {
            return Err(refuse("the process runs in a PID namespace one level below its parent's whose init is not a child of its parent (it entered it with setns)"));
        }
    }
    for &(pid, _) in tree {
        let (own, kids) = (ns(pid), ns_ino(pid, "pid_for_children"));
        if own.is_none() || kids.is_none() || kids == own {
            continue;
        }
        if !tree.iter().any(|&(c, pp)| pp == pid && ns(c) == kids) {
            return Err(Unsupported::of(
                pid,
                "pid namespace",
                "it made a PID namespace for its children (unshare(CLONE_NEWPID)) and has no child that is its init",
                "dump it once it has forked into the new namespace",
            )
            .into());
        }
    }
    Ok(())
}

/// A tree in a mount namespace other than cryo's: every mount of the root's restorable
/// (`mounts::plan`), and every mount namespace nested in the tree too (`nested_mnt_ns`).
/// Returns the root's plan, or None in cryo's namespace.
fn check_mnt_ns(
    opts: &DumpOpts,
    tree: &[(i32, i32)],
) -> Result<Option<Vec<pb::MntEntry>>, DumpError> {
    for n in nested_mnt_ns(tree)? {
        plan_nested_mnt(opts, tree, &n)?;
    }
    let ns = |pid: i32| ns_ino(pid, "mnt");
    let root = tree[0].0;
    let theirs = ns(root);
    // None: the root is exiting, which the rest of the precheck refuses.
    if theirs.is_none() || theirs == ns(crate::sys::proc::own_pid()) {
        return Ok(None);
    }
    Ok(kinds::mounts::plan(root, &opts.mounts).map(Some)?)
}

/// Mount namespaces nested in the tree: (a task that made it, that task's parent, the
/// namespace's inode), in tree order. Each must have been made by a task of the tree whose
/// parent is in another one (`unshare -m`): a task that entered one with `setns` (cryo's,
/// or one another task made) is refused. A task in the root's namespace whose parent left
/// it (the parent unshared after the fork) is restored there (`enter_namespaces`).
fn nested_mnt_ns(tree: &[(i32, i32)]) -> Result<Vec<(i32, i32, u64)>, DumpError> {
    let ns = |pid: i32| ns_ino(pid, "mnt");
    let (root, own) = (ns(tree[0].0), ns(crate::sys::proc::own_pid()));
    let mut out: Vec<(i32, i32, u64)> = Vec::new();
    for &(pid, ppid) in &tree[1..] {
        // A zombie has no namespaces left (nothing to restore in them).
        let (Some(n), Some(pn)) = (ns(pid), ns(ppid)) else {
            continue;
        };
        if n == pn || Some(n) == root {
            continue;
        }
        if Some(n) == own || out.iter().any(|o| o.2 == n) {
            return Err(Unsupported::of(
                pid,
                "mount namespace",
                "the process entered a mount namespace other than its parent's that its parent did not make for it (setns)",
                "only mount namespaces made by a process of the tree (unshare -m) are restored",
            )
            .into());
        }
        out.push((pid, ppid, n));
    }
    Ok(out)
}

/// The plan of the nested mount namespace `n` (`nested_mnt_ns`): a proc mount there is
/// saved with the tree's PID of a task in the PID namespace it shows.
fn plan_nested_mnt(
    opts: &DumpOpts,
    tree: &[(i32, i32)],
    &(pid, ppid, _): &(i32, i32, u64),
) -> Result<Vec<pb::MntEntry>, DumpError> {
    let level = tree_level(tree[0].0)?;
    let proc_pid = |ino: u64| {
        tree.iter()
            .find(|&&(t, _)| ns_ino(t, "pid") == Some(ino))
            .and_then(|&(t, _)| ns_status_id(t, "NSpid:", level))
    };
    Ok(kinds::mounts::plan_nested(
        pid,
        ppid,
        &opts.mounts,
        &proc_pid,
    )?)
}

/// The inode of `pid`'s `kind` namespace (None once it exits).
fn ns_ino(pid: i32, kind: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .map(|m| m.ino())
        .ok()
}

/// Every task of the tree in the root's `kind` namespace (only the root's is restored).
fn check_same_ns(tree: &[(i32, i32)], kind: &str) -> Result<(), DumpError> {
    let ns = |pid: i32| ns_ino(pid, kind);
    let theirs = ns(tree[0].0);
    for &(pid, _) in &tree[1..] {
        // A zombie has no namespaces left (nothing to restore in them).
        if ns(pid).is_some_and(|n| Some(n) != theirs) {
            return Err(Unsupported::of(
                pid,
                format!("{kind} namespace"),
                format!("the process runs in a {kind} namespace other than the root's"),
                "only the root's namespace of this kind is restored yet",
            )
            .into());
        }
    }
    Ok(())
}

/// A task's PID in its own PID namespace (the last `NSpid` field of its status).
fn ns_pid(pid: i32) -> Result<u32, DumpError> {
    ns_status_ids(pid, "NSpid:")
        .and_then(|v| v.last().copied())
        .ok_or(DumpError::Internal("no NSpid line in /proc/PID/status"))
}

/// The fields of a `NSpid:`/`NSpgid:`/`NSsid:` line of a task's status: the id in each PID
/// namespace the task is in, from the one of cryo's /proc down to its own.
fn ns_status_ids(pid: i32, line: &str) -> Option<Vec<u32>> {
    let text = procfs::read(pid, "status").ok()?;
    text.lines().find_map(|l| l.strip_prefix(line)).map(|l| {
        l.split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    })
}

/// The level of the tree's PID namespace in `NSpid:` lines (the root's own one): ids at that
/// level are the ones the images hold.
fn tree_level(root: i32) -> Result<usize, DumpError> {
    ns_status_ids(root, "NSpid:")
        .and_then(|v| v.len().checked_sub(1))
        .ok_or(DumpError::Internal("no NSpid line in /proc/PID/status"))
}

/// A task's id at `level` of a `NSpid:`/`NSpgid:`/`NSsid:` line: as the tree's own PID
/// namespace sees it (a process group or session whose leader is gone has no task to ask,
/// but its members know its id). None when the task is not in that namespace or the id is
/// not visible there (0).
fn ns_status_id(pid: i32, line: &str, level: usize) -> Option<u32> {
    ns_status_ids(pid, line)?
        .get(level)
        .copied()
        .filter(|&v| v != 0)
}

/// A task's PID in the tree's PID namespace (`level`: `tree_level`).
fn level_pid(pid: i32, level: usize) -> Result<u32, DumpError> {
    ns_status_id(pid, "NSpid:", level).ok_or(DumpError::Internal(
        "a task of the tree has no PID in the tree's PID namespace",
    ))
}

/// Records, in each process's pstree entry, the ids its threads have in the PID namespaces
/// nested below the tree's (`level`: `tree_level`), and whether it made the namespace its
/// child is the init of for its next children (`pid_for_children`). Before `virtualize`:
/// `imgs` still name tasks by host PID.
fn record_nested_pids(imgs: &mut [TaskImages], level: usize) -> Result<(), DumpError> {
    for img in imgs.iter_mut() {
        let mut depth = None;
        let mut tids = Vec::new();
        // Every thread of a process is in its PID namespace (CLONE_THREAD with CLONE_NEWPID
        // is refused; setns changes only pid_for_children): a leader at the tree's level
        // answers for all of them, with no read of each thread's status.
        let leader = img.pstree.threads.first().map(|&t| {
            ns_status_ids(c_int(t), "NSpid:")
                .unwrap_or_default()
                .len()
                .saturating_sub(level + 1)
        });
        let threads: &[u32] = if leader == Some(0) {
            &[]
        } else {
            &img.pstree.threads
        };
        for &tid in threads {
            let ids = ns_status_ids(c_int(tid), "NSpid:").unwrap_or_default();
            let inner = ids.get(level + 1..).unwrap_or_default();
            if *depth.get_or_insert(inner.len()) != inner.len() {
                return Err(DumpError::Internal(
                    "threads of one process in PID namespaces of different depths",
                ));
            }
            tids.extend_from_slice(inner);
        }
        let depth = depth.unwrap_or(0);
        if depth > 0 {
            // A POSIX timer's thread as the process names it in its own PID namespace, where
            // timer_create reads it at restore.
            let local: std::collections::HashMap<u32, u32> = img
                .pstree
                .threads
                .iter()
                .copied()
                .zip(tids.chunks(depth).map(|c| c[depth - 1]))
                .collect();
            let timers = img
                .core
                .tc
                .as_mut()
                .and_then(|t| t.timers.as_mut())
                .map(|t| t.posix.iter_mut());
            for t in timers.into_iter().flatten() {
                if let Some(tid) = t.notify_thread_id.as_mut() {
                    *tid = c_int(local.get(&c_uint(*tid)).copied().unwrap_or(0));
                }
            }
            img.pstree.cryo_ns_depth = Some(len32(depth));
            img.pstree.cryo_ns_tids = tids;
        }
        let pid = c_int(img.pid);
        let (own, kids) = (ns_ino(pid, "pid"), ns_ino(pid, "pid_for_children"));
        if own.is_some() && kids.is_some() && kids != own {
            img.pstree.cryo_pidns_for_children = Some(true);
        }
    }
    Ok(())
}

/// Renames every task, thread and process group of `imgs` to the PIDs the tree sees in its
/// own PID namespace, as CRIU saves them. A process group or session whose leader is gone
/// keeps the id its members see; ids outside the PID namespace (cryo's session, for a shell
/// job) become 0.
fn virtualize(
    imgs: &mut [TaskImages],
    files: &mut FileTable,
    level: usize,
) -> Result<(), DumpError> {
    let mut map = std::collections::HashMap::new();
    for img in imgs.iter() {
        for &tid in &img.pstree.threads {
            map.insert(tid, level_pid(c_int(tid), level)?);
        }
        map.insert(img.pid, level_pid(c_int(img.pid), level)?);
    }
    let v = |p: u32| map.get(&p).copied().unwrap_or(0);
    files.ttys.rename_pids(v);
    for img in imgs.iter_mut() {
        // A group or session whose leader is gone (not in the tree): its id as the task
        // itself sees it; restore makes it with a helper task, as CRIU does.
        let own = |p: u32, line: &str| {
            map.get(&p)
                .copied()
                .or_else(|| ns_status_id(c_int(img.pid), line, level))
                .unwrap_or(0)
        };
        let (pgid, sid) = (
            own(img.pstree.pgid, "NSpgid:"),
            own(img.pstree.sid, "NSsid:"),
        );
        let d = img.ns_depth();
        img.pid = v(img.pid);
        let ps = &mut img.pstree;
        ps.pid = v(ps.pid);
        ps.ppid = v(ps.ppid);
        ps.pgid = pgid;
        ps.sid = sid;
        for t in ps.threads.iter_mut() {
            *t = v(*t);
        }
        let timers = img
            .core
            .tc
            .as_mut()
            .and_then(|t| t.timers.as_mut())
            .map(|t| t.posix.iter_mut());
        // A nested task's are its own namespace's already (`record_nested_pids`).
        let timers = timers.filter(|_| d == 0);
        for t in timers.into_iter().flatten() {
            if let Some(tid) = t.notify_thread_id.as_mut() {
                *tid = c_int(v(c_uint(*tid)));
            }
        }
    }
    Ok(())
}

/// Whether a failed `PTRACE_SEIZE` of `tid` means the task exited meanwhile: ESRCH (gone),
/// or EPERM for a task that is already a zombie or gone by now (the kernel refuses to attach
/// to an exiting task with EPERM; a tree that forks and exits all the time hits that).
fn exited(tid: i32, e: &std::io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::ESRCH) => true,
        Some(libc::EPERM) => procfs::stat(tid).map_or(true, |s| matches!(s.state, 'Z' | 'X')),
        _ => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    procfs::stat(pid).is_ok_and(|s| s.state == 'Z')
}

/// A zombie is saved as CRIU does: a pstree entry and a core with `task_state` DEAD and the
/// wait status its parent has not collected yet.
fn dump_zombie(pid: i32, img: &mut TaskImages) -> Result<(), DumpError> {
    let st = procfs::stat(pid)?;
    img.pid = img_pid(pid);
    img.pstree = pb::PstreeEntry {
        pid: img_pid(pid),
        ppid: c_uint(st.ppid),
        pgid: c_uint(st.pgrp),
        sid: c_uint(st.session),
        threads: vec![img_pid(pid)],
        ..Default::default()
    };
    img.core.mtype = pb::core_entry::March::X8664 as i32;
    let tc = img.tc();
    tc.task_state = kinds::misc::TASK_DEAD;
    tc.exit_code = c_uint(st.exit_code);
    tc.comm = st.comm;
    Ok(())
}

/// Looks for `pid`'s fd table among `tables` (one process per distinct table, with its files
/// id, in the kernel's order of tables: `kcmp(KCMP_FILES)` orders them), by binary search;
/// if the kernel refuses a comparison, every entry is compared for equality instead.
fn find_table(tables: &[(i32, u32)], pid: i32) -> Option<(i32, u32)> {
    search_table(tables, pid).ok()
}

fn search_table(tables: &[(i32, u32)], pid: i32) -> Result<(i32, u32), usize> {
    use crate::sys::proc::{kcmp, KCMP_FILES};
    let failed = std::cell::Cell::new(false);
    let r = tables.binary_search_by(|&(opid, _)| match kcmp(opid, pid, KCMP_FILES, 0, 0) {
        Ok(0) => std::cmp::Ordering::Equal,
        Ok(1) => std::cmp::Ordering::Less,
        Ok(2) => std::cmp::Ordering::Greater,
        _ => {
            failed.set(true);
            std::cmp::Ordering::Less
        }
    });
    if !failed.get() {
        return r.map(|i| tables[i]);
    }
    tables
        .iter()
        .find(|&&(opid, _)| kcmp(opid, pid, KCMP_FILES, 0, 0).ok() == Some(0))
        .copied()
        .ok_or(tables.len())
}

/// Adds a process with a table not seen before to `tables` (see [`find_table`]).
fn add_table(tables: &mut Vec<(i32, u32)>, e: (i32, u32)) {
    if let Err(i) = search_table(tables, e.0) {
        tables.insert(i, e);
    }
}

/// Dumps one seized process (all its threads) into `img`. Returns the number of injected
/// syscalls.
// The pipeline's state for one process, passed as it is (the memory options are two of them).
#[allow(clippy::too_many_arguments)]
fn dump_process(
    pid: i32,
    seized: &Seized,
    files: &mut FileTable,
    dir: &ImageDir,
    stats: &mut pb::DumpStatsEntry,
    img: &mut TaskImages,
    mut chain: Option<&mut crate::memtrack::Chain>,
    page_server: Option<(&mut crate::pageserver::Client, u32)>,
    lazy: Option<(&mut crate::pageserver::LazyStore, u32)>,
    keep_scratch: bool,
) -> Result<u64, DumpError> {
    let tracee = Tracee { tid: pid };
    let mut others = Vec::new();
    for t in seized.tracees.iter().skip(1) {
        let pt = |what, source| TaskError::Ptrace {
            pid: t.tid,
            what,
            source,
        };
        let mut regs = t.regs().map_err(|e| pt("PTRACE_GETREGS", e))?;
        kinds::rseq::leave_critical_section(pid, t, &mut regs)?;
        others.push(kinds::threads::SeizedThread {
            tracee: Tracee { tid: t.tid },
            regs,
            mask: t.sigmask().map_err(|e| pt("PTRACE_GETSIGMASK", e))?,
            status: procfs::status(t.tid)?,
        });
    }
    let mut regs = tracee.regs().map_err(|source| TaskError::Ptrace {
        pid,
        what: "PTRACE_GETREGS",
        source,
    })?;
    kinds::rseq::leave_critical_section(pid, &tracee, &mut regs)?;
    let sigmask = tracee.sigmask().map_err(|source| TaskError::Ptrace {
        pid,
        what: "PTRACE_GETSIGMASK",
        source,
    })?;
    let stat = procfs::stat(pid)?;
    let status = procfs::status(pid)?;
    let vmas = procfs::smaps(pid)?;
    // Seccomp: strict mode would kill the task at the first injected syscall; filters are
    // suspended for cryo's syscalls (PTRACE_O_SUSPEND_SECCOMP) and saved.
    let mut modes = vec![status.seccomp];
    let mut pending = status.sig_pnd | status.shd_pnd;
    for t in &others {
        modes.push(t.status.seccomp);
        pending |= t.status.sig_pnd;
    }
    // cryo's injected syscalls end with a trap (SIGTRAP), which must be unblocked meanwhile:
    // a SIGTRAP the program has pending (blocked) would be taken in the middle. Refused, as
    // CRIU does, before anything runs in the task.
    if pending & (1 << (libc::SIGTRAP - 1)) != 0 {
        return Err(Unsupported::of(
            pid,
            "signals",
            "a SIGTRAP is pending (blocked): cryo's in-task syscalls trap with SIGTRAP and would deliver it",
            "let the program take or discard its SIGTRAP, then dump",
        )
        .into());
    }
    // Strict mode (1) is suspended the same way (the kernel skips every seccomp check of a
    // tracee with PTRACE_O_SUSPEND_SECCOMP), as CRIU does; it has no filters to read.
    let mut seccomp_top = None;
    if modes.iter().any(|&m| m != 0) {
        for t in std::iter::once(&tracee).chain(others.iter().map(|o| &o.tracee)) {
            t.set_options(libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_SUSPEND_SECCOMP)
                .map_err(|source| TaskError::Ptrace {
                    pid: t.tid,
                    what: "PTRACE_SETOPTIONS(SUSPEND_SECCOMP)",
                    source,
                })?;
        }
        // Each thread's own chain (they differ when a thread added filters, or the leader
        // did after creating it without TSYNC).
        // A thread without filters (mode 0) has no chain to read (EINVAL).
        let mut tops = Vec::new();
        for (t, mode) in std::iter::once(&tracee)
            .chain(others.iter().map(|o| &o.tracee))
            .zip(&modes)
        {
            if i32::try_from(*mode) != Ok(kinds::seccomp::MODE_FILTER) {
                tops.push(None);
                continue;
            }
            tops.push(kinds::seccomp::add_chain(
                &mut files.seccomp,
                &kinds::seccomp::chain(pid, t)?,
            ));
        }
        seccomp_top = Some((tops, modes));
    }
    fault_point("collect")?;
    let site = vmas
        .iter()
        .find(|v| v.exec && v.start < 0x8000_0000_0000 && v.name != "[vdso]" && v.len() >= 4096)
        .map(|v| v.start)
        .ok_or(DumpError::Internal(
            "no executable mapping to run syscalls from",
        ))?;
    let mut cx = DumpCx {
        pid,
        tracee: &tracee,
        parasite: None,
        sigmask,
        regs,
        stat,
        status,
        vmas,
        files,
        dir,
        stats,
        chain: None,
        page_server: None,
        lazy: None,
        secbits: None,
        itimers: None,
        held: Default::default(),
    };
    // In-target work, inside the injection bracket.
    cx.parasite = Some(
        Parasite::inject(&tracee, site, regs)
            .map_err(|source| TaskError::Remote { pid, source })?,
    );
    let r = (|| -> Result<(), DumpError> {
        kinds::dump_kind::<kinds::signals::Signals>(&mut cx, img)?;
        fault_point("parasite")?;
        kinds::dump_kind::<kinds::misc::Misc>(&mut cx, img)?;
        kinds::signals::collect_actions(&mut cx, img)?;
        kinds::ns::dump_uts(&mut cx, img)?;
        kinds::ipc::dump(&mut cx, img)?;
        kinds::ns::dump_net(&mut cx, img)?;
        kinds::dump_kind::<kinds::creds::Creds>(&mut cx, img)?;
        kinds::dump_kind::<kinds::timers::Timers>(&mut cx, img)?;
        kinds::dump_kind::<kinds::rlimits::Rlimits>(&mut cx, img)?;
        kinds::dump_kind::<kinds::files::Files>(&mut cx, img)?;
        kinds::dump_kind::<kinds::regs::CpuState>(&mut cx, img)?;
        let scratch = cx
            .remote()?
            .scratch(64 * 1024)
            .map_err(|source| TaskError::Remote { pid, source })?;
        let leader = cx.remote()?;
        leader
            .batch_area()
            .map_err(|source| TaskError::Remote { pid, source })?;
        img.threads.extend(kinds::threads::dump_threads(
            pid,
            &others,
            site,
            scratch,
            &mut leader.remote,
        )?);
        for th in &others {
            img.pstree.threads.push(img_pid(th.tracee.tid));
        }
        // Write tracking for a later step (`--track-mem --leave-running`).
        if let Some(c) = chain
            .as_deref_mut()
            .filter(|c| c.rearm && c.needs_uffd(pid))
        {
            let vpid = c.vpid(pid);
            make_uffd(c, pid, vpid, cx.remote()?);
        }
        Ok(())
    })();
    let mut parasite = cx.parasite.take().expect("injected above");
    let calls = parasite.remote.calls;
    // A tree that will be killed keeps its scratch area (its munmap would be one more stop
    // per process); any way the tree is let go unmaps it first (`Seized::release`).
    if keep_scratch && r.is_ok() {
        let left = parasite.keep_scratch();
        seized
            .scratch_left
            .set(left.map(|(addr, len)| (site, addr, len)));
    }
    let cured = parasite
        .cure()
        .map_err(|source| TaskError::Remote { pid, source });
    r?;
    cured?;
    if let Some((tops, modes)) = seccomp_top {
        let cores = std::iter::once(&mut img.core).chain(img.threads.iter_mut());
        for ((core, top), mode) in cores.zip(tops).zip(modes) {
            let tc = core.thread_core.get_or_insert_with(Default::default);
            if top.is_some() {
                tc.seccomp_mode = Some(kinds::seccomp::MODE_FILTER);
                tc.seccomp_filter = top;
            } else if i32::try_from(mode) == Ok(kinds::seccomp::MODE_STRICT) {
                tc.seccomp_mode = Some(kinds::seccomp::MODE_STRICT);
            }
        }
    }
    // Memory after the cure, so the original code word is what gets saved.
    cx.chain = chain;
    cx.page_server = page_server;
    cx.lazy = lazy;
    kinds::dump_kind::<kinds::memory::Memory>(&mut cx, img)?;
    Ok(calls)
}

/// Makes a userfaultfd inside `pid` (through the injection bracket), takes it into cryo and
/// gives it to `chain` for write tracking. A process where that fails is simply not tracked
/// (its pages are saved whole at each step): the failure is logged, never fatal.
fn make_uffd(chain: &mut crate::memtrack::Chain, pid: i32, vpid: u32, remote: &mut Parasite<'_>) {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | crate::sys::mem::UFFD_USER_MODE_ONLY;
    let r = (|| -> Result<std::os::fd::OwnedFd, String> {
        let fd = remote
            .remote
            .userfaultfd(flags)
            .map_err(|e| e.to_string())?;
        let taken = crate::sys::fd::pidfd_open(pid)
            .and_then(|p| crate::sys::fd::pidfd_getfd(std::os::fd::AsFd::as_fd(&p), fd));
        remote.remote.close(fd).map_err(|e| e.to_string())?;
        taken.map_err(|e| e.to_string())
    })();
    match r.and_then(|fd| chain.adopt(pid, vpid, fd).map_err(|e| e.to_string())) {
        Ok(()) => {}
        Err(e) => tracing::warn!(
            pid,
            error = %e,
            "memory tracking: no userfaultfd in the process; its pages are saved whole at every step"
        ),
    }
}

/// Seizes every process of the tree under `root` not in `frozen` yet; a running process may
/// fork meanwhile, so the tree is walked again until nothing new appears (frozen processes
/// cannot fork).
fn freeze_tree(
    root: i32,
    mut frozen: Vec<(i32, i32, Seized)>,
    deadline: SeizeDeadline,
) -> Result<Vec<(i32, i32, Seized)>, DumpError> {
    for _ in 0..10 {
        let tree = collect_tree(root)?;
        let held: std::collections::HashSet<i32> = frozen.iter().map(|f| f.0).collect();
        let fresh: Vec<(i32, i32)> = tree
            .into_iter()
            .filter(|(p, _)| !held.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        // Zombies are not seized; the rest all at once.
        let live: Vec<i32> = fresh
            .iter()
            .map(|f| f.0)
            .filter(|&p| !is_zombie(p))
            .collect();
        let mut seized = seize_all(&live, root, deadline)?.into_iter();
        let live: std::collections::HashSet<i32> = live.into_iter().collect();
        for (pid, ppid) in fresh {
            let s = if live.contains(&pid) {
                match seized.next().expect("one per live process") {
                    Some(s) => s,
                    // Gone: looked at again by the next walk.
                    None => continue,
                }
            } else {
                Seized {
                    tracees: Vec::new(),
                    done: true,
                    stop_sig: None,
                    scratch_left: Default::default(),
                }
            };
            frozen.push((pid, ppid, s));
        }
    }
    // A zombie its parent reaped while the parent was being stopped (its wait4 finished
    // first) is gone: once every live task is stopped, none can disappear any more.
    frozen.retain(|(pid, _, s)| {
        !s.tracees.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    Ok(frozen)
}

/// The PID each process of the tree has in the images: its PID in the tree's own PID
/// namespace when that is not cryo's (as `virtualize` renames them), else its PID.
fn image_pids(root: i32, pids: &[i32]) -> Result<Vec<u32>, DumpError> {
    let own = kinds::misc::task_ids(crate::sys::proc::own_pid(), 1)?.pid_ns_id;
    let virt = kinds::misc::task_ids(root, 1)?.pid_ns_id != own;
    let level = tree_level(root)?;
    pids.iter()
        .map(|&p| {
            if virt {
                level_pid(p, level)
            } else {
                Ok(img_pid(p))
            }
        })
        .collect()
}

/// Dumps the process tree rooted at `opts.pid` into `dir`.
pub fn run(
    opts: &DumpOpts,
    dir: &ImageDir,
    hooks: &mut dyn Notifier,
) -> Result<DumpReport, DumpError> {
    let t0 = Instant::now();
    let root = opts.pid;
    if !std::path::Path::new(&format!("/proc/{root}")).exists() {
        return Err(DumpError::NoSuchProcess { pid: root });
    }
    // 1. Refuse what we cannot do before touching anything. With --freeze-cgroup the
    //    cgroup is frozen first (after the pre-dump hook), as CRIU does, so the tree checked
    //    is the tree seized. Declared before `frozen`, so dropped after it: the cgroup gets
    //    its own state back once every task is released or killed.
    let freezer = match &opts.freeze_cgroup {
        Some(p) => {
            hooks.notify("pre-dump", None)?;
            Some(kinds::cgroup::Freezer::freeze(p)?)
        }
        None => None,
    };
    // Removes what killed cryo processes left (before anything else can fail).
    let early_lock = crate::netlock::NetLock::new(opts.network_lock);
    // A tree that forks and exits while cryo looks at it (a task gone between the listing
    // and the reading of its /proc files) is checked again; one that keeps changing is
    // checked once frozen. A refusal of a tree that did not change stands.
    let mut tree0 = collect_tree(root)?;
    let mut checked = false;
    for _ in 0..5 {
        match precheck(opts, &tree0) {
            Ok(()) => {
                checked = true;
                break;
            }
            Err(e) => {
                let now = collect_tree(root)?;
                if same_tasks(&now, &tree0) {
                    return Err(e);
                }
                tracing::info!(error = %e, "the tree changed while it was checked: checking it again");
                tree0 = now;
            }
        }
    }
    // `--lazy-pages`: the port the lazy-pages daemon takes the pages from, bound before
    // anything is frozen (it connects when it likes; served once the dump is done).
    let mut lazy = match &opts.lazy_pages {
        Some(a) => {
            if opts.prev_images_dir.is_some() || opts.page_server.is_some() {
                return Err(Unsupported::of(
                    root,
                    "memory",
                    "--lazy-pages with --prev-images-dir or --page-server",
                    "dump with --lazy-pages alone (its pages are served from this dump)",
                )
                .into());
            }
            let l = std::net::TcpListener::bind(a).map_err(|source| {
                crate::pageserver::PsError::Io {
                    what: format!("cannot listen at {a}"),
                    source,
                }
            })?;
            tracing::info!(address = %a, "lazy pages: listening");
            Some((l, crate::pageserver::LazyStore::default()))
        }
        None => None,
    };
    // What this CPU can do, for a restore elsewhere to check (`--cpu-cap`), as CRIU does.
    if opts.cpu_cap & kinds::cpuinfo::CAP_IMAGE != 0 {
        kinds::cpuinfo::dump(dir)?;
    }
    // The page server, connected before anything is frozen (as CRIU does).
    let mut ps = match &opts.page_server {
        Some(a) => Some(crate::pageserver::Client::connect(a, opts.io_timeout())?),
        None => None,
    };
    if freezer.is_none() {
        hooks.notify("pre-dump", None)?;
    }
    fault_point("seize")?;

    // 2. Freeze the whole tree; a running process may fork meanwhile, so walk again until
    //    nothing new appears (frozen processes cannot fork).
    let tf = Instant::now();
    let frozen: Vec<(i32, i32, Seized)> = match &freezer {
        Some(f) => seize_frozen(root, f, opts)?,
        None => Vec::new(),
    };
    let mut frozen = freeze_tree(root, frozen, opts.seize_deadline())?;
    let tree: Vec<(i32, i32)> = frozen.iter().map(|(p, pp, _)| (*p, *pp)).collect();
    if !checked || !same_tasks(&tree, &tree0) {
        precheck(opts, &tree)?;
    }
    let freezing = tf.elapsed();
    // An incremental dump: the parent, its write tracking, and tracking kept for a later
    // step with --track-mem --leave-running. Dropped on any error: tracking ends.
    let mut chain = if opts.prev_images_dir.is_some() || (opts.track_mem && opts.leave_running) {
        let mut c = crate::memtrack::Chain::open(
            dir,
            opts.prev_images_dir.as_deref(),
            opts.track_mem || opts.prev_images_dir.is_some(),
        )?;
        c.rearm = opts.track_mem && opts.leave_running;
        let pids: Vec<i32> = frozen.iter().map(|f| f.0).collect();
        for (p, v) in pids.iter().zip(image_pids(root, &pids)?) {
            c.set_vpid(*p, v);
            // The parent's pages are on the page server: it says whether it has them.
            if let Some(ps) = ps.as_mut() {
                c.set_remote_parent(v, ps.has_parent(v)?);
            }
        }
        Some(c)
    } else {
        None
    };
    let vpids = if ps.is_some() || lazy.is_some() {
        let pids: Vec<i32> = frozen.iter().map(|f| f.0).collect();
        image_pids(root, &pids)?
    } else {
        Vec::new()
    };

    // 3. Each process.
    let mut files = FileTable::default();
    files.ghost_limit = opts.ghost_limit;
    files.link_remaps.enabled = opts.link_remap;
    files.shell_job = opts.shell_job;
    files.external_net = opts.external_net.clone();
    files.empty_net = opts.empty_net;
    // An external PID namespace (`--external pid[INO]:KEY`): only its key is saved.
    files.pidns = ns_ino(root, "pid")
        .and_then(|i| Some((i, opts.external_pid.get(&i)?.clone())))
        .map(|(i, k)| {
            let e = pb::PidnsEntry { ext_key: Some(k) };
            (kinds::misc::ns_id(i), e)
        });
    files.userns = kinds::userns::dump(root, ns_ino(root, "user").map(kinds::misc::ns_id))?;
    // A tree with a network namespace of its own: its contents are saved first (so the
    // lock's table is not among them), then the namespace is locked as a whole, as CRIU
    // does. Held by `files`, dropped before `frozen` on any error: the network opens before
    // the tasks run. A tree in cryo's namespace has its connections locked by the inet part.
    files.netlock = early_lock;
    // (The tree's pids first: a veth's peer may be in a namespace of another of them.)
    files.tree = frozen.iter().map(|f| f.0).collect();
    let root_net = ns_ino(root, "net");
    let own_netns = root_net.is_some() && root_net != ns_ino(crate::sys::proc::own_pid(), "net");
    if own_netns {
        let id = kinds::misc::ns_id(root_net.unwrap_or(0));
        if let Some(d) = kinds::ns::dump_net_of(root, id, &mut files)? {
            files.netns_content.push(d);
        }
        hooks.notify("network-lock", None)?;
        files.netlock.lock_netns_of(root)?;
    }
    fault_point("netlock")?;
    files.sock = opts.sock;
    files.tree = frozen.iter().map(|f| f.0).collect();
    let mut stats = pb::DumpStatsEntry::default();
    let mut imgs: Vec<TaskImages> = Vec::new();
    let mut calls = 0;
    let mut tables: Vec<(i32, u32)> = Vec::new();
    // A tree killed at the end keeps cryo's scratch areas until then (one stop fewer per
    // process); not one frozen by its cgroup, whose tasks may not run again to unmap theirs
    // before they are let go.
    let keep_scratch = !opts.leave_running && freezer.is_none() && chain.is_none();
    for (i, (pid, ppid, seized)) in frozen.iter().enumerate() {
        let mut img = TaskImages {
            pages_id: len32(i) + 1,
            ..Default::default()
        };
        if seized.tracees.is_empty() {
            dump_zombie(*pid, &mut img)?;
        } else {
            // An fd table shared with an earlier process (clone with CLONE_FILES). It is
            // restored by cloning the child from its parent with CLONE_FILES, so the parent
            // must share it (then so does whoever the parent shares it with). `tables` holds
            // one process per distinct table in kcmp order: a binary search per process.
            if let Some((opid, files_id)) = find_table(&tables, *pid) {
                let parent_shares = frozen[..i].iter().any(|(p, _, s)| {
                    p == ppid
                        && !s.tracees.is_empty()
                        && crate::sys::proc::kcmp(*pid, *ppid, crate::sys::proc::KCMP_FILES, 0, 0)
                            .ok()
                            == Some(0)
                });
                if parent_shares {
                    img.files_shared = Some(files_id);
                } else {
                    return Err(Unsupported::of(*pid, "fd table", format!("it is shared (CLONE_FILES) with process {opid}, but not with its parent"), "only a table its parent shares can be restored (the child is cloned from it with CLONE_FILES)").into());
                }
            }
            calls += dump_process(
                *pid,
                seized,
                &mut files,
                dir,
                &mut stats,
                &mut img,
                chain.as_mut(),
                ps.as_mut().map(|c| (c, vpids[i])),
                lazy.as_mut().map(|(_, s)| (s, vpids[i])),
                keep_scratch,
            )?;
            if let Some(sig) = seized.stop_sig {
                let tc = img.tc();
                tc.task_state = kinds::misc::TASK_STOPPED;
                tc.stop_signo = Some(c_uint(sig));
            }
        }
        img.pstree.ppid = c_uint(*ppid);
        let obj = len32(i) + 2;
        if seized.tracees.is_empty() {
            img.ids = kinds::misc::task_ids(*pid, obj)?;
        } else {
            // The namespaces `misc` read (the tree is frozen: they cannot change), with
            // this process's own object ids.
            img.ids.vm_id = obj;
            img.ids.files_id = obj;
            img.ids.fs_id = obj;
            img.ids.sighand_id = obj;
        }
        if let Some(f) = img.files_shared {
            img.ids.files_id = f;
        } else if !seized.tracees.is_empty() {
            add_table(&mut tables, (*pid, img.ids.files_id));
        }
        imgs.push(img);
    }
    if let Some(ps) = ps.take() {
        ps.close()?;
    }
    // Queued terminal bytes, read last; put back when `tty_data` drops (before a release).
    let tty_data = kinds::tty::finish_dump(&mut files)?;
    fault_point("write")?;
    // The mount tree, read again now that nothing in the tree can change it.
    if let Some(mounts) = check_mnt_ns(opts, &[(root, 0)])? {
        let id = imgs[0].ids.mnt_ns_id.unwrap_or(0);
        kinds::mounts::write(root, id, &mounts, dir, false)?;
    }
    // Mount namespaces nested in the tree, each from a task that made it.
    for n in nested_mnt_ns(&tree)? {
        let mounts = plan_nested_mnt(opts, &tree, &n)?;
        kinds::mounts::write(n.0, kinds::misc::ns_id(n.2), &mounts, dir, true)?;
    }
    // The clocks of the tree's time namespace, now that it is frozen.
    if let Some(id) = imgs[0]
        .ids
        .time_ns_id
        .filter(|&id| Some(id) != kinds::ns::own_ns_id("time"))
    {
        let e = kinds::ns::dump_time(root)?;
        dir.write(&format!("timens-{id}.img"), image::TIMENS, &[e])?;
    }
    // File locks, found by host PIDs, written with the tree's own.
    let host_pids: Vec<i32> = frozen.iter().map(|f| f.0).collect();
    let locks = kinds::locks::dump(&host_pids, opts.file_locks)?;
    // cgroups, by host PIDs (before `virtualize`).
    files.cgroups =
        kinds::cgroup::dump(&mut imgs, opts.cgroup_mode != kinds::cgroup::Mode::Ignore)?;
    let level = tree_level(root)?;
    record_nested_pids(&mut imgs, level)?;
    if imgs[0].ids.pid_ns_id != kinds::misc::task_ids(crate::sys::proc::own_pid(), 1)?.pid_ns_id {
        virtualize(&mut imgs, &mut files, level)?;
    }

    // 4. Images.
    write_images(dir, &imgs, &files)?;
    // The tcp-stream images, written meanwhile by a thread of their own.
    files.inet.write(dir)?;
    kinds::locks::write(dir, &locks, &imgs)?;
    tracing::info!("images written");
    let frozen_time = tf.elapsed();
    stats.freezing_time = micros_u32(freezing);
    stats.frozen_time = micros_u32(frozen_time);
    dir.write(
        "stats-dump",
        image::STATS,
        &[pb::StatsEntry {
            dump: Some(stats),
            restore: None,
        }],
    )?;
    if let Some(c) = chain.take() {
        if c.rearm {
            // Tracking goes on for the next step, held by a new holder.
            c.keep(dir, &host_pids)?;
        }
    }
    dir.finish()?;

    // 5. Final state. A failing post-dump hook leaves the tree running (the dump failed).
    drop(tty_data);
    // `--lazy-pages`: the kept pages are served from now on, in a thread: a restore that
    // runs while the post-dump hook waits (`cryo migrate --lazy-pages`) gets them then.
    let serving = match lazy.take() {
        Some((l, store)) => Some(crate::pageserver::LazyServing::start(
            l,
            store,
            opts.lazy_peer,
        )?),
        None => None,
    };
    if let Err(e) = hooks.notify("post-dump", None) {
        if let Some(s) = serving {
            s.cancel();
        }
        if let Some(f) = &freezer {
            f.put_back();
        }
        // Connections leave repair mode while the lock holds, then the lock goes (CRIU's
        // `network_unlock`), before the tree runs on.
        files.inet.resume();
        files.netlock.repair_done();
        if own_netns {
            let _ = hooks.notify("network-unlock", None);
        }
        files.netlock.unlock_now()?;
        for (_, _, seized) in frozen.iter_mut() {
            seized.release();
        }
        return Err(e.into());
    }
    // The network opens again before a tree left running goes on (CRIU's order: its
    // connections leave repair mode while the lock still holds, then the lock goes).
    if opts.leave_running {
        files.inet.resume();
        files.netlock.repair_done();
        if own_netns {
            hooks.notify("network-unlock", None)?;
        }
        files.netlock.unlock_now()?;
    }
    if let (Some(f), true) = (&freezer, opts.leave_running) {
        f.put_back();
    }
    // Every task is killed before any is waited for (a nested PID namespace's init may wait
    // for a task whose parent is outside its namespace: that parent must die to let it be
    // reaped). Then children first: a PID namespace's init, once killed, waits for every
    // other task of the namespace to be reaped, and cryo still traces them.
    let root_level = frozen
        .first()
        .and_then(|(_, _, s)| s.tracees.first())
        .and_then(|t| ns_status_ids(t.tid, "NSpid:"))
        .map_or(0, |v| v.len());
    let nested_init: Vec<bool> = frozen
        .iter()
        .map(|(_, _, s)| {
            s.tracees.first().is_some_and(|t| {
                ns_status_ids(t.tid, "NSpid:")
                    .is_some_and(|v| v.len() > root_level && v.last() == Some(&1))
            })
        })
        .collect();
    if !opts.leave_running {
        for (_, _, seized) in frozen.iter() {
            seized.sigkill();
        }
    }
    for ((_, _, seized), &init) in frozen.iter_mut().zip(&nested_init).rev() {
        if opts.leave_running {
            if opts.leave_stopped {
                // Stops once let go, as a job-control stop taken at seize does.
                seized.stop_sig = Some(libc::SIGSTOP);
            }
            seized.release();
        } else {
            seized.kill(init);
        }
    }
    // Killed: its connections vanish silently. A lock that protects TCP connections saved
    // with `--tcp-established` stays until the restore lifts it, as CRIU's (in cryo's
    // namespace, or an external one; a namespace saved with the tree dies with it, lock
    // and all: lifted before, it would let a peer's retransmission meet no socket and be
    // answered with a reset). So does the lock of a whole namespace, connections or not,
    // as CRIU's: the restore that joins that namespace again lifts it (zdtm
    // netns_lock_nftables/iptables). Any other lock goes now: never left behind.
    // A namespace saved with the tree dies with it once cryo lets it go: its links go
    // down first, while the lock holds (the kernel drops a dying namespace's lock before
    // its devices, and a packet in between would be answered with a reset).
    if !opts.leave_running {
        for (ino, ns) in files.netlock.whole_namespaces() {
            let saved = kinds::misc::ns_id(ino);
            if !files.netns_content.iter().any(|d| d.id == saved) {
                continue;
            }
            match kinds::netns::links_down_before_death(ns, ino) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    ns = ino,
                    links = n,
                    "the tree's network namespace dies with it: its links went down first"
                ),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
    files.inet.keep();
    if files.inet.has_connections() || files.netlock.holds_a_whole_namespace() {
        files.netlock.keep();
    } else {
        files.netlock.unlock_now()?;
    }
    files.link_remaps.keep();
    if let Some(s) = serving {
        // The images are complete; the lazy pages go to the daemon (CRIU's
        // `cr_lazy_mem_dump`) until it has them all. The tree is no more: a failure here
        // is the restore's. CRIU's `status_ready`: the `status-ready` notification (runc
        // waits for it over RPC and writes its own --status-fd then), and `--status-fd`.
        if let Err(e) = hooks.notify("status-ready", None) {
            s.cancel();
            return Err(e.into());
        }
        if let Some(p) = &opts.lazy_ready {
            crate::notify::status_ready(p);
        }
        s.finish(opts.lazy_connect_within)?;
    }
    Ok(DumpReport {
        pid: root,
        pages_written: stats.pages_written,
        frozen_us: micros_u64(frozen_time),
        total_us: micros_u64(t0.elapsed()),
        remote_syscalls: calls,
    })
}

fn write_images(dir: &ImageDir, imgs: &[TaskImages], files: &FileTable) -> Result<(), DumpError> {
    let mut inventory = pb::InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(kinds::misc::task_ids(crate::sys::proc::own_pid(), 1)?),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        root_cg_set: files.cgroups.own_set(),
        ..Default::default()
    };
    files
        .inet
        .fill_inventory(&mut inventory, &files.sock, &files.netlock);
    if dir.compress() {
        inventory.plugins_entry = Some(pb::PluginsEntry {
            plugins: vec![image::pages::CRIU_MARK.into()],
        });
    }
    dir.write("inventory.img", image::INVENTORY, &[inventory])?;
    let tree: Vec<pb::PstreeEntry> = imgs.iter().map(|i| i.pstree.clone()).collect();
    dir.write("pstree.img", image::PSTREE, &tree)?;
    write_tasks(dir, imgs)?;
    dir.write("files.img", image::FILES, &files.entries)?;
    if !files.pipe_data.is_empty() {
        dir.write_with_data("pipes-data.img", image::PIPES_DATA, &files.pipe_data)?;
    }
    kinds::ghost::write(dir, files)?;
    kinds::ipc::write(dir, files)?;
    kinds::tty::write(dir, files)?;
    kinds::cgroup::write(dir, &files.cgroups)?;
    kinds::netns::write(dir, &files.netns_content)?;
    for (id, e) in &files.netns {
        dir.write(
            &format!("netns-{id}.img"),
            image::NETNS,
            std::slice::from_ref(e),
        )?;
    }
    kinds::userns::write(dir, &files.userns)?;
    if let Some((id, e)) = &files.pidns {
        dir.write(
            &format!("pidns-{id}.img"),
            image::PIDNS,
            std::slice::from_ref(e),
        )?;
    }
    for (id, e) in &files.utsns {
        dir.write(
            &format!("utsns-{id}.img"),
            image::UTSNS,
            std::slice::from_ref(e),
        )?;
    }
    if !files.memfd_inodes.is_empty() {
        dir.write("memfd.img", image::MEMFD_INODE, &files.memfd_inodes)?;
    }
    if !files.sk_queues.is_empty() {
        dir.write_with_data("sk-queues.img", image::SK_QUEUES, &files.sk_queues)?;
    }
    if !files.fifo_data.is_empty() {
        dir.write_with_data("fifo-data.img", image::FIFO_DATA, &files.fifo_data)?;
    }
    dir.write(
        "seccomp.img",
        image::SECCOMP,
        &[pb::SeccompEntry {
            seccomp_filters: files.seccomp.clone(),
        }],
    )?;
    Ok(())
}

/// The per-task images: core (one per thread), ids, mm, fs, fdinfo, pagemap.
/// Writes every task's images (`write_task`, and the threads' `core-TID.img` in runs of 64)
/// from one worker per CPU (at most 4): a tree of 1000 processes or a process of 10 000
/// threads is thousands of small files, each a create, a write and a close.
fn write_tasks(dir: &ImageDir, imgs: &[TaskImages]) -> Result<(), DumpError> {
    const RUN: usize = 64;
    // (task, None): its own images; (task, Some(k)): the cores of its threads k*RUN...
    let mut jobs: Vec<(usize, Option<usize>)> = Vec::new();
    for (i, img) in imgs.iter().enumerate() {
        jobs.push((i, None));
        if !img.is_zombie() {
            jobs.extend((0..img.threads.len().div_ceil(RUN)).map(|k| (i, Some(k))));
        }
    }
    let run = |(i, part): (usize, Option<usize>)| -> Result<(), DumpError> {
        let img = &imgs[i];
        let Some(k) = part else {
            return write_task(dir, img);
        };
        let tids = img.pstree.threads.iter().skip(1).skip(k * RUN).take(RUN);
        for (tid, core) in tids.zip(img.threads.iter().skip(k * RUN)) {
            dir.write(
                &format!("core-{tid}.img"),
                image::CORE,
                std::slice::from_ref(core),
            )?;
        }
        Ok(())
    };
    let workers = std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1)
        .min(4);
    if workers < 2 || jobs.len() < 8 {
        return jobs.into_iter().try_for_each(run);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                sc.spawn(|| -> Result<(), DumpError> {
                    loop {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return Ok(());
                        }
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&job) = jobs.get(j) else {
                            return Ok(());
                        };
                        if let Err(e) = run(job) {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or(Err(DumpError::Internal("an image writer thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

fn write_task(dir: &ImageDir, img: &TaskImages) -> Result<(), DumpError> {
    let pid = img.pid;
    dir.write(
        &format!("core-{pid}.img"),
        image::CORE,
        std::slice::from_ref(&img.core),
    )?;
    if img.is_zombie() {
        return Ok(()); // nothing else is left of a zombie
    }
    dir.write(&format!("ids-{pid}.img"), image::IDS, &[img.ids])?;
    dir.write(
        &format!("mm-{pid}.img"),
        image::MM,
        std::slice::from_ref(&img.mm),
    )?;
    dir.write(&format!("fs-{pid}.img"), image::FS, &[img.fs])?;
    if img.files_shared.is_none() {
        dir.write(
            &format!("fdinfo-{}.img", img.ids.files_id),
            image::FDINFO,
            &img.fdinfo,
        )?;
    }
    if !img.pages_remote {
        dir.write_pagemap(&format!("pagemap-{pid}.img"), img.pages_id, &img.pagemap)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_server_may_stall_60_s_unless_timeout_says_otherwise() {
        let mut o = DumpOpts::default();
        assert_eq!(o.io_timeout(), std::time::Duration::from_secs(60));
        o.timeout = Some(3);
        assert_eq!(o.io_timeout(), std::time::Duration::from_secs(3));
        o.timeout = Some(0);
        assert_eq!(o.io_timeout(), std::time::Duration::from_secs(1));
    }
}
