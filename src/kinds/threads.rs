//! Threads other than the leader: per-thread registers and FPU state, TLS (in the registers),
//! blocked mask, private pending signals, alternate stack, clear-child-tid address, robust
//! futex list, rseq registration, scheduling, name, parent-death signal and credentials.
//! Everything else (memory, fds, dispositions, limits) is shared by the thread group and
//! belongs to the leader's kinds. One `core-TID.img` per thread, without `tc`/`ids`, as CRIU
//! writes them.
//!
//! Dump runs the in-thread syscalls (`sigaltstack`, `prctl`) in each thread, through the code
//! word the leader's injection already swapped. Restore creates each thread inside the puppet
//! with `clone3(CLONE_THREAD..., set_tid = TID)`; with `PTRACE_O_TRACECLONE` the new thread
//! starts traced and stopped, and cryo shapes it like the leader before letting it go.

use super::error::{task_error_from, TaskError, Unsupported};
use super::{RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::num::{c_int, c_uint, low32, pid_from_img};
use crate::procfs;
use crate::sys::clone::CloneArgs;
use crate::sys::ptrace::{Regs, Stop, Tracee};
use crate::sys::remote::{table_bytes, table_outcome, Batch, Remote, ThreadInjection, TABLE_CODE};

/// Why a thread could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("thread id {tid} is in use by another task")]
    TidBusy { tid: i32 },
    #[error(transparent)]
    Regs(#[from] super::regs::RegsError),
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    #[error(transparent)]
    Creds(#[from] super::creds::CredsError),
    #[error(transparent)]
    Signals(#[from] super::signals::SignalsError),
}
task_error_from!(ThreadsError);

/// A seized non-leader thread and what was captured at seize time.
pub struct SeizedThread {
    pub tracee: Tracee,
    pub regs: Regs,
    pub mask: u64,
    /// Its `/proc/PID/task/TID/status`, read once at seize time.
    pub status: procfs::Status,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// What a thread reports from inside itself: its alternate stack (24 bytes), clear-child-tid
/// address (at 32) and parent-death signal (at 40), as the kernel wrote them, and its
/// securebits.
struct InThread {
    raw: [u8; 48],
    secbits: u64,
}

/// Threads whose in-thread calls run at the same time (`dump_threads`), and the scratch
/// bytes each one takes: its table of calls, then what the calls write.
const DUMP_CHUNK: usize = 128;
const DUMP_TABLE: usize = 8 + 64 * 4 + 8;
const DUMP_SLOT: usize = DUMP_TABLE + 48;

/// Dumps the non-leader threads `ths` of process `pid`, in order. `site` holds the
/// syscall instruction (already swapped in by the leader's injection), `scratch` is the
/// leader's scratch area and `leader` its executor, whose code area runs the threads'
/// calls: each thread makes its own from a table of its own, a chunk of threads at once
/// (one stop per thread, all overlapping).
pub fn dump_threads(
    pid: i32,
    ths: &[SeizedThread],
    site: u64,
    scratch: u64,
    leader: &mut Remote<'_>,
) -> Result<Vec<pb::CoreEntry>, ThreadsError> {
    let mut out = Vec::with_capacity(ths.len());
    // One user namespace for every thread of the process (see `creds::from_status_in`).
    let maps = super::userns::maps_of(pid);
    for chunk in ths.chunks(DUMP_CHUNK) {
        let inside = in_thread_calls(pid, chunk, site, scratch, leader)?;
        for (th, ins) in chunk.iter().zip(inside) {
            out.push(dump_thread(pid, th, &ins, maps.as_ref())?);
        }
    }
    Ok(out)
}

/// Runs the in-thread queries of every thread of `chunk` at once (see [`dump_threads`]).
/// A thread that started its calls is always waited for and cured, even when another
/// failed: none is left running cryo's code.
fn in_thread_calls(
    pid: i32,
    chunk: &[SeizedThread],
    site: u64,
    scratch: u64,
    leader: &mut Remote<'_>,
) -> Result<Vec<InThread>, ThreadsError> {
    let remote = |tid| move |source| TaskError::Remote { pid: tid, source };
    let code = leader
        .batch_area()
        .filter(|a| crate::num::usize_of(a.code_len) >= TABLE_CODE.len())
        .map(|a| a.code)
        .ok_or(TaskError::Internal("no code area for the threads' calls"))?;
    let mut buf = vec![0u8; DUMP_SLOT * chunk.len()];
    let mut batches = Vec::with_capacity(chunk.len());
    for j in 0..chunk.len() {
        let slot = scratch + (DUMP_SLOT * j) as u64;
        let outs = slot + DUMP_TABLE as u64;
        let mut b = Batch::new();
        b.sigaltstack(0, outs)?;
        b.prctl(libc::PR_GET_TID_ADDRESS, [outs + 32, 0, 0, 0])?;
        b.prctl(libc::PR_GET_PDEATHSIG, [outs + 40, 0, 0, 0])?;
        b.prctl(libc::PR_GET_SECUREBITS, [0; 4])?;
        let t = table_bytes(&b.calls);
        buf[DUMP_SLOT * j..DUMP_SLOT * j + t.len()].copy_from_slice(&t);
        batches.push(b);
    }
    let mem = |what, source| TaskError::Memory {
        pid,
        addr: scratch,
        what,
        source,
    };
    crate::sys::mem::vm_write(pid, &buf, &[(scratch, buf.len())])
        .map_err(|e| mem("writing the threads' calls", e))?;
    leader
        .write_code(code, &TABLE_CODE)
        .map_err(|source| TaskError::Ptrace {
            pid,
            what: "writing the threads' call code",
            source,
        })?;
    const WHAT: &str = "a thread's own queries (sigaltstack, prctl)";
    let mut injs = Vec::with_capacity(chunk.len());
    let mut first: Option<ThreadsError> = None;
    for (j, (th, b)) in chunk.iter().zip(&batches).enumerate() {
        let tid = th.tracee.tid;
        let started =
            ThreadInjection::with_mask(&th.tracee, site, th.regs, th.mask).and_then(|mut inj| {
                let table = scratch + (DUMP_SLOT * j) as u64;
                match inj.remote.start_table(WHAT, code, table, b.calls.len()) {
                    Ok(()) => Ok(inj),
                    Err(e) => {
                        // Not started: put it back now.
                        let _ = inj.cure();
                        Err(e)
                    }
                }
            });
        match started {
            Ok(inj) => injs.push(inj),
            Err(e) => {
                first = Some(remote(tid)(e).into());
                break;
            }
        }
    }
    // Every started thread is waited for before anything else happens.
    let mut stopped = Vec::with_capacity(injs.len());
    for mut inj in injs {
        let tid = inj.remote.tracee().tid;
        match inj.remote.finish_table(WHAT) {
            Ok(()) => stopped.push(inj),
            Err(e) => {
                if matches!(e, crate::sys::remote::RemoteError::Died { .. }) {
                    // Gone: nothing to put back.
                    std::mem::forget(inj);
                } else if let Err(c) = inj.cure() {
                    // Stopped elsewhere (another's SIGSTOP, a fault): its own registers and
                    // mask go back, so that once detached it runs its own code, not cryo's.
                    tracing::error!("thread {tid}: could not be put back after its table: {c}");
                }
                first.get_or_insert(remote(tid)(e).into());
            }
        }
    }
    let mut back = vec![0u8; buf.len()];
    if first.is_none() {
        if let Err(e) = crate::sys::mem::vm_read(pid, &mut back, &[(scratch, buf.len())]) {
            first = Some(mem("reading the threads' answers", e).into());
        }
    }
    for inj in stopped {
        let tid = inj.remote.tracee().tid;
        if let Err(e) = inj.cure() {
            first.get_or_insert(remote(tid)(e).into());
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    let mut res = Vec::with_capacity(chunk.len());
    for (j, (th, b)) in chunk.iter().zip(&batches).enumerate() {
        let slot = &back[DUMP_SLOT * j..DUMP_SLOT * (j + 1)];
        let r = table_outcome(&b.calls, &slot[..DUMP_TABLE]).map_err(remote(th.tracee.tid))?;
        let mut raw = [0u8; 48];
        raw.copy_from_slice(&slot[DUMP_TABLE..]);
        res.push(InThread { raw, secbits: r[3] });
    }
    Ok(res)
}

/// One non-leader thread `th` of process `pid`, with what it reported from inside; `maps`:
/// the process's user namespace maps (`userns::maps_of`).
fn dump_thread(
    pid: i32,
    th: &SeizedThread,
    ins: &InThread,
    maps: Option<&super::userns::Maps>,
) -> Result<pb::CoreEntry, ThreadsError> {
    let t = &th.tracee;
    let tid = t.tid;
    let pt = |what, source| TaskError::Ptrace {
        pid: tid,
        what,
        source,
    };
    let mut regs = th.regs;
    super::regs::fix_syscall_restart(&mut regs);
    let xstate = t
        .xstate()
        .map_err(|e| pt("PTRACE_GETREGSET(NT_X86_XSTATE)", e))?;
    let rseq = t
        .rseq_conf()
        .map_err(|e| pt("PTRACE_GET_RSEQ_CONFIGURATION", e))?;
    let private = t
        .pending_signals(false)
        .map_err(|e| pt("PTRACE_PEEKSIGINFO", e))?;
    let (rla, rla_len) =
        crate::sys::proc::robust_list(tid).map_err(|e| pt("get_robust_list", e))?;
    let (policy, prio, nice) =
        crate::sys::proc::sched(tid).map_err(|e| pt("sched_getscheduler", e))?;
    let status = &th.status;
    // The name as status showed it at seize (one read less per thread), unless the kernel
    // escaped it there.
    let comm = match &status.name {
        Some(n) => n.clone(),
        None => procfs::read(pid, &format!("task/{tid}/comm"))?
            .trim_end()
            .to_string(),
    };
    let raw = &ins.raw;
    let secbits = ins.secbits;

    Ok(pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: u64_at(raw, 32),
            gpregs: super::regs::regs_to_pb(&regs),
            fpregs: super::regs::xsave_to_pb(&xstate),
            tls: Vec::new(),
        }),
        thread_core: Some(pb::ThreadCoreEntry {
            futex_rla: rla,
            futex_rla_len: low32(rla_len),
            sched_nice: Some(nice),
            sched_policy: Some(c_uint(policy)),
            sched_prio: Some(c_uint(prio)),
            blk_sigset: Some(th.mask),
            sas: Some(pb::ThreadSasEntry {
                ss_sp: u64_at(raw, 0),
                ss_flags: u32::from_ne_bytes(raw[8..12].try_into().expect("4 bytes")),
                ss_size: u64_at(raw, 16),
            }),
            pdeath_sig: Some(low32(u64_at(raw, 40))),
            signals_p: (!private.is_empty()).then(|| pb::SignalQueueEntry {
                signals: private
                    .into_iter()
                    .map(|s| pb::SiginfoEntry {
                        siginfo: s.to_vec(),
                    })
                    .collect(),
            }),
            creds: Some(super::creds::from_status_in(maps, status, low32(secbits))),
            comm: Some(comm),
            rseq_entry: Some(pb::RseqEntry {
                rseq_abi_pointer: rseq.rseq_abi_pointer,
                rseq_abi_size: rseq.rseq_abi_size,
                signature: rseq.signature,
                rseq_cs_pointer: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A restored (still stopped) thread and the registers and mask it resumes with.
pub struct RestoredThread {
    pub tracee: Tracee,
    pub regs: Regs,
    pub mask: u64,
}

/// Creates every non-leader thread of `img` in the puppet driven by `cx` (the leader) and
/// gives each its state. The threads stay stopped; the caller releases them at the end.
pub fn restore_threads(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
) -> Result<Vec<RestoredThread>, ThreadsError> {
    // The threads start as copies of the leader (and the clone code and arguments are
    // written to scratch directly): everything held back is done first.
    cx.run_later()?;
    let mut made = Vec::new();
    let r = create_threads(cx, img, &mut made);
    if r.is_err() {
        // The threads made so far are cryo's tracees: they are killed and reaped here, or
        // their leader (killed by the caller) could never be reaped.
        for &tid in made.iter().rev() {
            let t = Tracee { tid };
            let _ = crate::sys::proc::kill(tid, libc::SIGKILL);
            while let Ok(Stop::Stopped { .. }) = t.wait() {
                let _ = t.cont(0);
            }
        }
    }
    r
}

/// [`restore_threads`]: the threads it creates are noted in `made` (host TIDs) as they are.
fn create_threads(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    made: &mut Vec<i32>,
) -> Result<Vec<RestoredThread>, ThreadsError> {
    // Threads are created in the order of the seccomp filters they share with the leader,
    // which installs those filters in between (see `seccomp::shared_with_leader`).
    let (leader_chain, shared) = super::seccomp::shared_with_leader(cx, img)?;
    let mut order: Vec<usize> = (0..img.threads.len()).collect();
    order.sort_by_key(|&i| shared[i]);
    let mut installed = 0;
    let mut out = Vec::new();
    // Threads are created in groups that share the same filters, many per stop.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in &order {
        match groups.last_mut() {
            Some(g) if shared[g[0]] == shared[i] && g.len() < CLONES_PER_STOP => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    let mut made_threads: Vec<(usize, i32)> = Vec::new();
    for group in groups {
        if shared[group[0]] > installed {
            super::seccomp::install(cx, &leader_chain[installed..shared[group[0]]])?;
            installed = shared[group[0]];
        }
        let hosts = clone_group(cx, img, &group, made)?;
        made_threads.extend(group.into_iter().zip(hosts));
    }
    // Each thread makes its own calls (name, rseq, robust list, clear-child-tid address)
    // from a table in scratch, all of them in one stop, with code the leader's batches run
    // from; a chunk of threads run theirs at once. The threads were cloned from the
    // leader: its register template is theirs.
    let code = cx
        .remote
        .batch_area()
        .map(|a| a.code)
        .ok_or(TaskError::Internal("no code area for the threads' calls"))?;
    let base = cx.remote.base();
    for chunk in made_threads.chunks(PIPELINE) {
        let tracees: Vec<Tracee> = chunk
            .iter()
            .map(|&(_, host)| Tracee { tid: host })
            .collect();
        for t in &tracees {
            let host = t.tid;
            match t.wait().map_err(|source| TaskError::Ptrace {
                pid: host,
                what: "waiting for a new thread",
                source,
            })? {
                Stop::Stopped { .. } => {}
                other => {
                    return Err(TaskError::Ptrace {
                        pid: host,
                        what: "waiting for a new thread",
                        source: std::io::Error::other(format!("unexpected state {other:?}")),
                    }
                    .into())
                }
            }
        }
        let mut batches = Vec::with_capacity(chunk.len());
        let mut tables = vec![0u8; TABLE_SLOT * chunk.len()];
        for (j, &(i, _)) in chunk.iter().enumerate() {
            let core = &img.threads[i];
            let th = core.thread_core.clone().unwrap_or_default();
            let clear_tid = core.thread_info.as_ref().map_or(0, |t| t.clear_tid_addr);
            let comm_at = COMM_AREA + (COMM_SLOT * j) as u64;
            let b = attr_batch(cx, &th, clear_tid, "", comm_at, Batch::new())?;
            let t = table_bytes(&b.calls);
            let slot = tables
                .get_mut(TABLE_SLOT * j..TABLE_SLOT * j + t.len())
                .ok_or(TaskError::Internal("a thread's calls do not fit its table"))?;
            slot.copy_from_slice(&t);
            batches.push(b);
        }
        let at = cx.put(TABLE_AREA, &tables)?;
        cx.remote
            .write_code(code, &TABLE_CODE)
            .map_err(|source| TaskError::Ptrace {
                pid: cx.pid,
                what: "writing the threads' call code",
                source,
            })?;
        let mut remotes: Vec<Remote<'_>> = tracees
            .iter()
            .map(|t| {
                let mut r = Remote::new(t, cx.remote.site(), base);
                r.batch_like(&cx.remote);
                r
            })
            .collect();
        const WHAT: &str = "a thread's own calls (name, rseq, robust list, clear-child-tid)";
        for (j, (r, b)) in remotes.iter_mut().zip(&batches).enumerate() {
            let pid = r.tracee().tid;
            r.start_table(WHAT, code, at + (TABLE_SLOT * j) as u64, b.calls.len())
                .map_err(|source| TaskError::Remote { pid, source })?;
        }
        for r in &mut remotes {
            let pid = r.tracee().tid;
            r.finish_table(WHAT)
                .map_err(|source| TaskError::Remote { pid, source })?;
        }
        let mut back = vec![0u8; tables.len()];
        crate::sys::mem::vm_read(cx.pid, &mut back, &[(at, tables.len())]).map_err(|source| {
            TaskError::Memory {
                pid: cx.pid,
                addr: at,
                what: "reading the threads' calls back",
                source,
            }
        })?;
        for (j, (r, b)) in remotes.iter().zip(&batches).enumerate() {
            let pid = r.tracee().tid;
            table_outcome(&b.calls, &back[TABLE_SLOT * j..TABLE_SLOT * (j + 1)])
                .map_err(|source| TaskError::Remote { pid, source })?;
        }
        for (&(i, host), remote) in chunk.iter().zip(remotes) {
            let core = &img.threads[i];
            // Checked when pstree.img was read.
            let tid = pid_from_img(img.pstree.threads[i + 1]).unwrap_or(0);
            let t = Tracee { tid: host };
            let mut tcx = RestoreCx {
                pid: host,
                remote,
                scratch: cx.scratch,
                scratch_len: cx.scratch_len,
                dir: cx.dir,
                files: cx.files,
                objs: cx.objs,
                stats: &mut *cx.stats,
                inherited: super::Inherited {
                    seccomp: installed,
                    ..cx.inherited.clone()
                },
                cow: Vec::new(),
                cryo_pidfd: cx.cryo_pidfd,
                lazy: cx.lazy,
                later: Default::default(),
                stage: None,
            };
            // Its pending signals are queued from inside, with the ids its PID namespace gives.
            let local = (
                img.local_pid(),
                img.ns_ids(i + 1).last().copied().unwrap_or(tid),
            );
            let mask = restore_one(&mut tcx, local, tid, core)?;
            cx.remote.calls += tcx.remote.calls;
            // What the next thread inherits comes from the leader, not from this thread: keep only
            // what was learnt (not changed) here.
            cx.inherited.creds = tcx.inherited.creds.clone();
            cx.inherited.xstate_len = tcx.inherited.xstate_len;
            let ti = core
                .thread_info
                .as_ref()
                .ok_or_else(|| TaskError::BadImage(format!("core-{tid}.img has no registers")))?;
            out.push((
                i,
                RestoredThread {
                    tracee: t,
                    regs: super::regs::pb_to_regs(&ti.gpregs, &base),
                    mask,
                },
            ));
        }
    }
    // The leader has these already.
    cx.inherited.seccomp = installed;
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// Threads whose own calls run at the same time (`create_threads`), where each one's name
/// goes in scratch for that (threads share one memory: one slot each), and where each
/// one's table of calls goes (`TABLE_SLOT` bytes from `TABLE_AREA`: 5 calls).
const PIPELINE: usize = 64;
const COMM_AREA: u64 = 28672;
const COMM_SLOT: usize = 16;
const TABLE_AREA: u64 = 30720;
const TABLE_SLOT: usize = 8 + 64 * 5 + 8;

/// Most threads one stop creates: each takes a `clone_args` and its `set_tid` in scratch
/// (`CLONE_SLOT` bytes from `CLONE_AREA`), and the batch's code page holds about as many calls.
/// A slot holds ids for the 32 PID namespace levels the kernel allows, as deep as a process
/// may be (`check_nested_pids` in restore).
const CLONES_PER_STOP: usize = 40;
const CLONE_AREA: u64 = 8192;
const CLONE_SLOT: usize = 96 + 4 * 32;

/// Creates the threads `group` (indexes into `img.threads`) with one batch of
/// `clone3(CLONE_THREAD..., set_tid = TID)`: returns their host TIDs in order; each is
/// noted in `made` as soon as it exists. The new threads start stopped (PTRACE_O_TRACECLONE)
/// and run nothing until they are given their registers.
fn clone_group(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    group: &[usize],
    made: &mut Vec<i32>,
) -> Result<Vec<i32>, ThreadsError> {
    // Each thread's ids from the tree's PID namespace down to its own (checked when
    // pstree.img was read); clone3 returns the last, and takes them innermost first.
    let ids: Vec<Vec<i32>> = group.iter().map(|&i| img.ns_ids(i + 1)).collect();
    let tids: Vec<i32> = ids.iter().map(|v| v.last().copied().unwrap_or(0)).collect();
    let mut buf = vec![0u8; CLONE_SLOT * tids.len()];
    let mut b = Batch::new();
    for (j, levels) in ids.iter().enumerate() {
        let at = cx.scratch + CLONE_AREA + (CLONE_SLOT * j) as u64;
        if 96 + 4 * levels.len() > CLONE_SLOT {
            return Err(TaskError::Unsupported(Unsupported::restore(format!(
                "thread {} is {} PID namespaces below the tree's (cryo restores threads up to {} levels deep)",
                levels[0],
                levels.len() - 1,
                (CLONE_SLOT - 96) / 4 - 1
            )))
            .into());
        }
        let mut args = CloneArgs::thread();
        args.set_tid = at + 96;
        args.set_tid_size = levels.len() as u64;
        let slot = &mut buf[CLONE_SLOT * j..CLONE_SLOT * (j + 1)];
        slot[..crate::sys::clone::CLONE_ARGS_SIZE].copy_from_slice(&args.to_bytes());
        for (k, tid) in levels.iter().rev().enumerate() {
            slot[96 + 4 * k..100 + 4 * k].copy_from_slice(&tid.to_ne_bytes());
        }
        let Ok(_) = b
            .named("clone3 (thread)")
            .clone3(at, crate::sys::clone::CLONE_ARGS_SIZE as u64);
    }
    cx.put(CLONE_AREA, &buf)?;
    cx.remote.children.clear();
    let r = cx.batch(&b);
    let hosts: Vec<i32> = cx.remote.children.drain(..).collect();
    made.extend(&hosts);
    let got = r.map_err(|e| match &e {
        TaskError::Remote { source, .. } if source.errno() == Some(libc::EEXIST) => {
            ThreadsError::TidBusy {
                tid: tids.get(hosts.len()).copied().unwrap_or(0),
            }
        }
        _ => e.into(),
    })?;
    if hosts.len() != tids.len() {
        return Err(TaskError::BadImage(format!(
            "{} threads were asked for, {} created",
            tids.len(),
            hosts.len()
        ))
        .into());
    }
    for (&tid, &g) in tids.iter().zip(&got) {
        if i64::from(tid).cast_unsigned() != g {
            return Err(TaskError::BadImage(format!("thread {tid} was created as {g}")).into());
        }
    }
    Ok(hosts)
}

/// Per-thread attributes every thread (the leader included) gets back from inside itself:
/// name (`comm_fallback` when the thread entry has none), rseq registration, robust futex
/// list, clear-child-tid address, and scheduling (set from outside, only when it differs
/// from what the thread inherited).
/// `b` holds calls to run before them, in the same stop (a process's own attributes).
pub fn restore_attrs(
    cx: &mut RestoreCx<'_>,
    th: &pb::ThreadCoreEntry,
    clear_tid_addr: u64,
    comm_fallback: &str,
    b: Batch,
) -> Result<(), TaskError> {
    // One stop for all of them (thousands of threads make this count).
    let b = attr_batch(cx, th, clear_tid_addr, comm_fallback, 0, b)?;
    cx.batch(&b)?;
    restore_sched(cx, th)
}

/// [`restore_attrs`] with the in-thread calls held back to run with the next batch
/// ([`RestoreCx::batch_later`]); the failure of the call named `what` is reported as a
/// failed open of `path` (the working directory's `chdir`).
pub fn restore_attrs_later(
    cx: &mut RestoreCx<'_>,
    th: &pb::ThreadCoreEntry,
    clear_tid_addr: u64,
    comm_fallback: &str,
    b: Batch,
    (what, path): (&'static str, &str),
) -> Result<(), TaskError> {
    let b = attr_batch(cx, th, clear_tid_addr, comm_fallback, 0, b)?;
    cx.batch_later_opening(&b, what, path)?;
    restore_sched(cx, th)
}

/// The calls of [`restore_attrs`] made inside the thread, appended to `b`; the name is put
/// at `comm_at` in scratch.
fn attr_batch(
    cx: &mut RestoreCx<'_>,
    th: &pb::ThreadCoreEntry,
    clear_tid_addr: u64,
    comm_fallback: &str,
    comm_at: u64,
    mut b: Batch,
) -> Result<Batch, TaskError> {
    let comm = th.comm.as_deref().unwrap_or(comm_fallback);
    if !comm.is_empty() {
        let mut c = comm.as_bytes().to_vec();
        c.truncate(15);
        c.push(0);
        let a = cx.put(comm_at, &c)?;
        b.prctl(libc::PR_SET_NAME, [a, 0, 0, 0])?;
    }
    if let Some(r) = th.rseq_entry.as_ref().filter(|r| r.rseq_abi_pointer != 0) {
        b.rseq(r.rseq_abi_pointer, r.rseq_abi_size, 0, r.signature)?;
    }
    if th.futex_rla != 0 {
        b.set_robust_list(th.futex_rla, u64::from(th.futex_rla_len))?;
    }
    b.set_tid_address(clear_tid_addr)?;
    Ok(b)
}

/// The scheduling part of [`restore_attrs`], set from outside.
fn restore_sched(cx: &mut RestoreCx<'_>, th: &pb::ThreadCoreEntry) -> Result<(), TaskError> {
    let tid = cx.pid;
    if let (Some(policy), Some(prio), Some(nice)) = (th.sched_policy, th.sched_prio, th.sched_nice)
    {
        let now = match cx.inherited.sched {
            Some(s) => s,
            None => {
                let s = crate::sys::proc::sched(tid).map_err(|source| TaskError::Ptrace {
                    pid: tid,
                    what: "sched_getscheduler",
                    source,
                })?;
                cx.inherited.sched = Some(s);
                s
            }
        };
        // The kernel's ints (it checks them).
        let (policy, prio) = (c_int(policy), c_int(prio));
        if now != (policy, prio, nice) {
            crate::sys::proc::set_sched(tid, policy, prio, nice).map_err(|source| {
                TaskError::Ptrace {
                    pid: tid,
                    what: "sched_setscheduler",
                    source,
                }
            })?;
            // Threads created from now on by this task start with these values.
            cx.inherited.sched = Some((policy, prio, nice));
        }
    }
    Ok(())
}

/// Applies a thread's own state from inside it; returns its blocked mask.
fn restore_one(
    cx: &mut RestoreCx<'_>,
    (pid, local_tid): (i32, i32),
    tid: i32,
    core: &pb::CoreEntry,
) -> Result<u64, ThreadsError> {
    let th = core.thread_core.clone().unwrap_or_default();
    let ti = core
        .thread_info
        .as_ref()
        .ok_or_else(|| TaskError::BadImage(format!("core-{tid}.img has no registers")))?;
    // Alternate stack (the new thread inherited none).
    if let Some(s) = th.sas.filter(|s| s.ss_flags & 2 == 0) {
        let mut ss = Vec::with_capacity(24);
        ss.extend_from_slice(&s.ss_sp.to_ne_bytes());
        ss.extend_from_slice(&u64::from(s.ss_flags & !1).to_ne_bytes());
        ss.extend_from_slice(&s.ss_size.to_ne_bytes());
        let a = cx.put(512, &ss)?;
        cx.sigaltstack(a, 0)?;
    }
    // The calls of `restore_attrs` ran already (from a table, `create_threads`).
    restore_sched(cx, &th)?;
    // Private pending signals, queued by the thread to itself.
    if let Some(q) = &th.signals_p {
        for s in &q.signals {
            if s.siginfo.len() != 128 {
                return Err(TaskError::BadImage(
                    "a pending signal's siginfo is not 128 bytes".into(),
                )
                .into());
            }
            let signo = i32::from_ne_bytes(s.siginfo[0..4].try_into().expect("4 bytes"));
            let a = cx.put(512, &s.siginfo)?;
            cx.rt_tgsigqueueinfo(pid, local_tid, signo, a)?;
        }
    }
    super::regs::set_xstate(cx, &ti.fpregs)?;
    super::seccomp::restore_core(cx, core, c_uint(tid))?;
    if let Some(c) = &th.creds {
        super::creds::restore_creds(cx, c)?;
    }
    if let Some(sig) = th.pdeath_sig.filter(|s| *s != 0) {
        // A new thread starts with none.
        cx.prctl(libc::PR_SET_PDEATHSIG, [u64::from(sig), 0, 0, 0])?;
    }
    Ok(th.blk_sigset.unwrap_or(0))
}
