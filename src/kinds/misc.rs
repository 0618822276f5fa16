//! Per-process attributes that are not objects of their own: identity in the process tree
//! (pid, session, process group), name, personality, umask, cwd/root, exe link, brk, rseq
//! registration, robust futex list, clear-child-tid address, scheduling, oom_score_adj,
//! dumpable, THP-disable, child-subreaper and parent-death signal.

use super::error::{task_error_from, TaskError};
use super::{DumpCx, Kind, RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::num::{c_int, c_uint, img_pid, low32};
use crate::procfs;
use crate::sys::proc;
use crate::sys::remote::{arg, Batch, RemoteError};

/// Why the task's miscellaneous state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MiscError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A working directory or root deleted while in use (saved as a ghost).
    #[error(transparent)]
    Ghost(#[from] super::ghost::GhostError),
}
task_error_from!(MiscError);

/// Miscellaneous per-task state.
pub struct Misc;

/// membarrier(2) command returning the registrations of the caller's mm (Linux 6.3).
const MEMBARRIER_CMD_GET_REGISTRATIONS: i32 = 1 << 9;
const MEMBARRIER_WHAT: &str = "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)";
/// Where in scratch the batch of `Misc::dump` has its results written: after the
/// dispositions the signals' queries, held for the same stop, write at its start.
const RESULTS_AT: u64 = 4096;
/// Where in those results the interval timers are (3 × 32 bytes, after the 24 bytes of
/// prctl results).
const ITIMERS_AT: u64 = 64;

/// `task_core_entry.task_state`: alive.
pub const TASK_ALIVE: u32 = 1;
/// `task_core_entry.task_state`: dead (a zombie).
pub const TASK_DEAD: u32 = 2;
/// `task_core_entry.task_state`: stopped by job control (`stop_signo` says with what).
pub const TASK_STOPPED: u32 = 3;

fn read_trim(pid: i32, name: &str) -> Result<String, MiscError> {
    Ok(procfs::read(pid, name)?.trim().to_string())
}

fn stat_of(pid: i32, name: &str) -> Result<std::fs::Metadata, MiscError> {
    let path = format!("/proc/{pid}/{name}");
    Ok(
        std::fs::metadata(&path).map_err(|source| procfs::ProcError::Read {
            path: path.into(),
            source,
        })?,
    )
}

impl Kind for Misc {
    const NAME: &'static str = "task attributes";
    type Error = MiscError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), MiscError> {
        use std::os::unix::fs::MetadataExt;
        let pid = cx.pid;
        let st = cx.stat.clone();
        img.pid = img_pid(pid);
        img.pstree = pb::PstreeEntry {
            pid: img_pid(pid),
            ppid: 0,
            pgid: c_uint(st.pgrp),
            sid: c_uint(st.session),
            threads: vec![img_pid(pid)],
            ..Default::default()
        };
        // exe, cwd, root as regular-file records.
        for (name, slot) in [("exe", 0), ("cwd", 1), ("root", 2)] {
            let path = procfs::link(pid, name)?;
            let m = stat_of(pid, name)?;
            let deleted = path.strip_suffix(" (deleted)").filter(|_| slot != 0);
            let dead = deleted.and_then(|d| super::files::dead_proc_pid_at(pid, name, d));
            let id = match (deleted, dead) {
                // The /proc directory of a process gone since: reopened while a stand-in
                // with that PID exists (zdtm's unhashed_proc).
                (Some(live), Some(n)) => {
                    let id = cx.files.reg_for_path(live, None, m.mode());
                    cx.files.note_dead_pid(id, n);
                    id
                }
                // A removed directory: made again as a ghost (shared with fds on it).
                (Some(live), None) => {
                    let id = cx.files.add_reg(
                        live.to_string(),
                        (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
                        0,
                        None,
                        m.mode(),
                    );
                    let what = format!("{name} ({path})");
                    super::ghost::dump(
                        cx.files,
                        pid,
                        &what,
                        &format!("/proc/{pid}/{name}"),
                        &m,
                        id,
                    )?;
                    id
                }
                (None, _) => cx
                    .files
                    .reg_for_path(&path, m.is_file().then_some(m.len()), m.mode()),
            };
            match slot {
                0 => img.mm.exe_file_id = id,
                1 => img.fs.cwd_id = id,
                _ => img.fs.root_id = id,
            }
        }
        img.fs.umask = Some(cx.status.umask);
        let personality = u32::from_str_radix(&read_trim(pid, "personality")?, 16).unwrap_or(0);
        let oom = read_trim(pid, "oom_score_adj")?.parse::<i32>().ok();
        let loginuid = read_trim(pid, "loginuid")?.parse::<u32>().ok();
        {
            let tc = img.tc();
            tc.task_state = TASK_ALIVE;
            tc.exit_code = 0;
            tc.personality = personality;
            tc.flags = st.flags;
            tc.comm = st.comm.clone();
            tc.oom_score_adj = oom;
            tc.loginuid = loginuid;
        }
        let (policy, prio, nice) = proc::sched(pid).map_err(|source| TaskError::Ptrace {
            pid,
            what: "sched_getscheduler",
            source,
        })?;
        let (rla, rla_len) = proc::robust_list(pid).map_err(|source| TaskError::Ptrace {
            pid,
            what: "get_robust_list",
            source,
        })?;
        let rseq = cx.tracee.rseq_conf().map_err(|source| TaskError::Ptrace {
            pid,
            what: "PTRACE_GET_RSEQ_CONFIGURATION",
            source,
        })?;
        {
            let th = img.thread();
            th.futex_rla = rla;
            th.futex_rla_len = low32(rla_len);
            th.sched_policy = Some(c_uint(policy));
            th.sched_prio = Some(c_uint(prio));
            th.sched_nice = Some(nice);
            th.comm = Some(st.comm.clone());
            th.rseq_entry = Some(pb::RseqEntry {
                rseq_abi_pointer: rseq.rseq_abi_pointer,
                rseq_abi_size: rseq.rseq_abi_size,
                signature: rseq.signature,
                rseq_cs_pointer: None,
            });
        }
        img.ids = task_ids(pid, 2)?;
        // What only the task itself can tell (with the signals' held queries).
        let buf = cx.scratch()? + RESULTS_AT;
        let mut b = Batch::new();
        b.brk(0)?;
        b.prctl(libc::PR_GET_DUMPABLE, [0; 4])?;
        b.prctl(libc::PR_GET_THP_DISABLE, [0; 4])?;
        b.prctl(libc::PR_GET_TID_ADDRESS, [buf, 0, 0, 0])?;
        b.prctl(libc::PR_GET_PDEATHSIG, [buf + 8, 0, 0, 0])?;
        b.prctl(libc::PR_GET_CHILD_SUBREAPER, [buf + 16, 0, 0, 0])?;
        // The secure bits, for `creds`, and the interval timers, for `timers` (kept in
        // `cx`): the same stop.
        let secbits_at = b.len();
        b.prctl(libc::PR_GET_SECUREBITS, [0; 4])?;
        for (i, w) in (0u64..).zip(super::timers::ITIMERS) {
            b.getitimer(w, buf + ITIMERS_AT + 32 * i)?;
        }
        // membarrier() registrations of the mm, last (Linux 6.3+; EINVAL before: then the
        // batch runs again without it and none are saved). One stop for all of these: a
        // tree of 100 processes waits for each of its tasks to be scheduled once per stop.
        let queries = b.len();
        b.named(MEMBARRIER_WHAT)
            .membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS, 0)?;
        let (got, membarrier) = match cx.batch(&b) {
            Ok(got) => {
                let m = got.get(queries).copied().filter(|&m| m != 0);
                (got, m)
            }
            Err(TaskError::Remote {
                source:
                    RemoteError::Errno {
                        what: MEMBARRIER_WHAT,
                        ..
                    },
                ..
            }) => {
                b.calls.truncate(queries);
                (cx.batch(&b)?, None)
            }
            Err(e) => return Err(e.into()),
        };
        let (brk, dumpable, thp) = (got[0], got[1], got[2]);
        cx.secbits = got.get(secbits_at).copied();
        let mut raw = [0u8; 160];
        crate::sys::mem::vm_read(pid, &mut raw, &[(buf, 160)]).map_err(|source| {
            TaskError::Memory {
                pid,
                addr: buf,
                what: "reading prctl results",
                source,
            }
        })?;
        let mut itimers = [0u8; 96];
        itimers.copy_from_slice(&raw[64..160]);
        cx.itimers = Some(itimers);
        let word = |o: usize| u64::from_ne_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
        img.mm.mm_brk = brk;
        img.mm.dumpable = Some(c_int(low32(dumpable)));
        img.mm.thp_disabled = Some(thp != 0);
        img.ti().clear_tid_addr = word(0);
        img.thread().pdeath_sig = Some(low32(word(8)));
        img.tc().child_subreaper = Some(low32(word(16)) != 0);
        img.tc().membarrier_registration_mask = membarrier.map(low32);
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), MiscError> {
        // Session and process group are set by the restore pipeline: a session before the
        // task's children exist, groups once every task exists (`restore::set_process_groups`).
        let tc = img.core.tc.clone().unwrap_or_default();
        let th = img.core.thread_core.clone().unwrap_or_default();
        // All of these and the thread attributes run in one stop.
        let mut b = Batch::new();
        b.personality(tc.personality)?;
        b.umask(img.fs.umask.unwrap_or(0o022))?;
        // Both paths are the mount namespace's: the working directory first, as it may be
        // outside the root (a chroot without chdir). Each has its own place in scratch
        // (the thread attributes use its start).
        let root = super::ghost::live_path(cx, img.fs.root_id)?;
        let cwd = super::ghost::live_path(cx, img.fs.cwd_id)?;
        let nul = |p: &str| {
            let mut v = p.as_bytes().to_vec();
            v.push(0);
            v
        };
        let p = cx.put(CWD_AT, &nul(&cwd))?;
        b.named(CHDIR).chdir(p)?;
        if root != "/" {
            let p = cx.put(ROOT_AT, &nul(&root))?;
            b.chroot(p)?;
        }
        let tid_addr = img
            .core
            .thread_info
            .as_ref()
            .map(|t| t.clear_tid_addr)
            .unwrap_or(0);
        // Held back: they run with the last calls of the task's shaping.
        super::threads::restore_attrs_later(cx, &th, tid_addr, &tc.comm, b, (CHDIR, &cwd))
            .map_err(|e| match e {
                TaskError::Remote { pid, source } if source.what() == CHDIR => TaskError::Open {
                    pid,
                    path: cwd.clone(),
                    source,
                },
                e => e,
            })?;
        // Each registration command again (each bit of the mask is one).
        for bit in 0..31 {
            if tc.membarrier_registration_mask.unwrap_or(0) & (1u32 << bit) != 0 {
                cx.named("membarrier (register)")
                    .membarrier(1i32 << bit, 0)?;
            }
        }
        restore_loginuid(cx, tc.loginuid)?;
        if tc.child_subreaper == Some(true) {
            cx.prctl(libc::PR_SET_CHILD_SUBREAPER, [1, 0, 0, 0])?;
        }
        if let Some(oom) = tc.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", cx.pid);
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim().parse::<i32>().ok() != Some(oom) {
                if let Err(e) = std::fs::write(&path, oom.to_string()) {
                    tracing::warn!(oom, error = %e, "could not set oom_score_adj (lowering it needs CAP_SYS_RESOURCE)");
                }
            }
        }
        Ok(())
    }
}

/// The login uid, as CRIU: a saved value other than "unset" is written by the task itself
/// (the kernel lets only a task set its own) when it differs from the one it inherited from
/// cryo, and only where cryo may set login uids (`cryo check --feature loginuid`); a task
/// whose login uid cannot be set then fails the restore, as its audit identity would be wrong.
fn restore_loginuid(cx: &mut RestoreCx<'_>, saved: Option<u32>) -> Result<(), MiscError> {
    let Some(uid) = saved.filter(|&u| u != u32::MAX) else {
        return Ok(());
    };
    let path = format!("/proc/{}/loginuid", cx.pid);
    let now = std::fs::read_to_string(&path).ok();
    if now.as_deref().map(str::trim) == Some(uid.to_string().as_str()) {
        return Ok(());
    }
    if let Err(why) = crate::features::loginuid_writable() {
        tracing::warn!(uid, %why, "the login uid is not restored");
        return Ok(());
    }
    // The task writes it as its user namespace names it (the kernel reads what is written
    // through the opener's namespace); one its namespace cannot name it only inherits.
    let uid = match super::userns::maps_of(cx.pid) {
        None => uid,
        Some((map, _)) => {
            let inside = super::userns::to_inside(&map, uid);
            match super::userns::to_outside(&map, inside) {
                Some(back) if back == uid => inside,
                _ => {
                    tracing::warn!(
                        uid,
                        "the login uid is not restored: the task's user namespace does not map it"
                    );
                    return Ok(());
                }
            }
        }
    };
    let fd = cx.open("/proc/self/loginuid", libc::O_WRONLY as u32)?;
    let text = uid.to_string();
    let buf = cx.put(1024, text.as_bytes())?;
    let wrote =
        cx.named("write (/proc/self/loginuid)")
            .write(fd, buf, crate::num::u64_of(text.len()));
    cx.close(fd)?;
    wrote?;
    Ok(())
}

/// Where `Misc` puts the working directory and root paths in scratch (each up to PATH_MAX,
/// after the areas the other kinds use), and the name of its batched `chdir`.
const CWD_AT: u64 = 16384;
const ROOT_AT: u64 = CWD_AT + 4096 + 8;
const CHDIR: &str = "chdir (working directory)";

/// Namespace kinds in `task_kobj_ids_entry` order (pid, net, ipc, uts, mnt, user, cgroup, time).
const NS: [&str; 8] = ["pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time"];

/// Kernel-object ids of a task. `vm/files/fs/sighand` are `obj` (cryo itself uses 1, the task
/// 2, so a reader sees they are not shared with the dumper); a namespace id is the same number
/// for the same namespace (derived from its inode), so tasks sharing cryo's namespaces carry
/// the ids of `inventory.root_ids`.
pub fn task_ids(pid: i32, obj: u32) -> Result<pb::TaskKobjIdsEntry, procfs::ProcError> {
    use std::os::unix::fs::MetadataExt;
    let mut ns = [None; 8];
    for (i, kind) in NS.iter().enumerate() {
        let path = format!("/proc/{pid}/ns/{kind}");
        ns[i] = std::fs::metadata(&path).ok().map(|m| ns_id(m.ino()));
    }
    Ok(pb::TaskKobjIdsEntry {
        vm_id: obj,
        files_id: obj,
        fs_id: obj,
        sighand_id: obj,
        pid_ns_id: ns[0],
        net_ns_id: ns[1],
        ipc_ns_id: ns[2],
        uts_ns_id: ns[3],
        mnt_ns_id: ns[4],
        user_ns_id: ns[5],
        cgroup_ns_id: ns[6],
        time_ns_id: ns[7],
    })
}

/// A small stable id for a namespace inode (namespace inodes are 0xF0000000 + n).
pub fn ns_id(ino: u64) -> u32 {
    (ino & 0x0fff_ffff) as u32
}

/// The last attributes, set after credentials (a uid change resets them).
pub fn restore_late(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), MiscError> {
    let mut b = Batch::new();
    if let Some(d) = img.mm.dumpable {
        b.prctl(libc::PR_SET_DUMPABLE, [arg(d), 0, 0, 0])?;
    }
    let pdeath = img
        .core
        .thread_core
        .as_ref()
        .and_then(|t| t.pdeath_sig)
        .unwrap_or(0);
    b.prctl(libc::PR_SET_PDEATHSIG, [u64::from(pdeath), 0, 0, 0])?;
    // With whatever follows (the timers), or at the end of the task's shaping.
    cx.batch_later(&b)?;
    Ok(())
}
