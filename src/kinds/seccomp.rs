//! Seccomp filters (seccomp.img + `thread_core.seccomp_mode/seccomp_filter`), as podman's
//! default profile or a self-sandboxing program installs them.
//!
//! Dump: a task with filters is traced with `PTRACE_O_SUSPEND_SECCOMP`, so the syscalls cryo
//! injects are not filtered (or killed); each thread's chain is read with
//! `PTRACE_SECCOMP_GET_FILTER` (and its flags with `PTRACE_SECCOMP_GET_METADATA`) and
//! stored once in a shared table, each filter naming the one installed before it (`prev`).
//! Restore: the puppets are traced with `PTRACE_O_SUSPEND_SECCOMP` too; the leader installs
//! its filters, oldest first, while it creates its threads, each thread once the leader has
//! the filters the two share (it inherits them, so the threads share those filters again and
//! a later TSYNC works); then each thread and the leader install the rest of their own chain — everything injected
//! afterwards runs unfiltered, and the filters take effect when the task is released. A
//! thread without filters reads none. Strict mode (`seccomp_mode` 1, no filters) is suspended
//! the same way at dump and entered again last at restore, as CRIU does. User-notification
//! filters are refused at dump.

use super::error::{task_error_from, TaskError, Unsupported};
use crate::image::{self, pb};
use crate::kinds::{RestoreCx, Syscalls, TaskImages};
use crate::sys::ptrace::Tracee;

/// Why seccomp filters could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(SeccompError);

/// `SECCOMP_MODE_STRICT`: only read, write, exit and sigreturn.
pub const MODE_STRICT: i32 = 1;
/// `SECCOMP_MODE_FILTER`.
pub const MODE_FILTER: i32 = 2;
/// `seccomp(2)` operation entering strict mode.
const SECCOMP_SET_MODE_STRICT: u32 = 0;
/// Filter flags that are replayed at install: LOG and SPEC_ALLOW.
const REPLAY_FLAGS: u64 = 2 | 4;
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
const FLAG_NEW_LISTENER: u64 = 8;

/// The filter chain of thread `t`, oldest first, as (program, flags).
pub fn chain(pid: i32, t: &Tracee) -> Result<Vec<(Vec<u8>, u64)>, SeccompError> {
    let pt = |what, source| TaskError::Ptrace {
        pid: t.tid,
        what,
        source,
    };
    let mut v = Vec::new();
    let mut i = 0;
    while let Some(p) = t
        .seccomp_filter(i)
        .map_err(|e| pt("PTRACE_SECCOMP_GET_FILTER", e))?
    {
        let flags = t
            .seccomp_flags(i)
            .map_err(|e| pt("PTRACE_SECCOMP_GET_METADATA", e))?;
        if flags & FLAG_NEW_LISTENER != 0 {
            return Err(Unsupported::of(
                pid,
                format!("thread {} seccomp filter {i}", t.tid),
                "it hands syscalls to a user-space supervisor (SECCOMP_FILTER_FLAG_NEW_LISTENER)",
                "seccomp user notification is not supported",
            )
            .into());
        }
        v.push((p, flags & REPLAY_FLAGS));
        i += 1;
    }
    v.reverse();
    Ok(v)
}

/// `SECCOMP_FILTER_FLAG_TSYNC` and `_TSYNC_ESRCH`: not replayed (every thread installs its
/// own chain on restore).
const TSYNC_FLAGS: u32 = 1 | 16;
/// `seccomp(2)` operation installing a filter.
const SECCOMP_SET_MODE_FILTER: u32 = 1;

/// Adds `chain` to the shared `table` (each filter once per position in a chain); returns the
/// index of its newest filter, which is what a thread records.
pub fn add_chain(table: &mut Vec<pb::SeccompFilter>, chain: &[(Vec<u8>, u64)]) -> Option<u32> {
    let mut prev: Option<u32> = None;
    for (prog, flags) in chain {
        let f = pb::SeccompFilter {
            filter: prog.clone(),
            prev,
            // SECCOMP_FILTER_FLAG_* bits, all in the low 32.
            flags: Some(crate::num::low32(*flags)),
        };
        let idx = match table.iter().position(|t| *t == f) {
            Some(i) => i,
            None => {
                table.push(f);
                table.len() - 1
            }
        };
        prev = Some(crate::num::len32(idx));
    }
    prev
}

/// Installs the leader's saved chain in the puppet (which is traced with
/// `PTRACE_O_SUSPEND_SECCOMP`, so later injected syscalls are not filtered).
pub fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), SeccompError> {
    restore_core(cx, &img.core, img.pid)
}

/// The filter chain saved in `core` (a thread's, or the leader's), oldest first, as
/// indices into seccomp.img's table (empty without filters).
fn chain_of(
    cx: &RestoreCx<'_>,
    core: &pb::CoreEntry,
    id: u32,
) -> Result<Vec<(u32, pb::SeccompFilter)>, SeccompError> {
    let Some(tc) = core.thread_core.as_ref() else {
        return Ok(Vec::new());
    };
    if tc.seccomp_mode != Some(MODE_FILTER) {
        return Ok(Vec::new());
    }
    let table = cx
        .dir
        .read_opt::<pb::SeccompEntry>("seccomp.img", image::SECCOMP)?
        .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
        .unwrap_or_default()
        .seccomp_filters;
    // Newest to oldest through `prev`, then oldest first.
    let mut order = Vec::new();
    let mut at = tc.seccomp_filter;
    while let Some(i) = at {
        let f = table.get(i as usize).ok_or_else(|| {
            TaskError::BadImage(format!("seccomp.img has no filter {i} (core-{id}.img)"))
        })?;
        if order.len() > table.len() {
            return Err(TaskError::BadImage("seccomp.img filters form a loop".into()).into());
        }
        order.push((i, f.clone()));
        at = f.prev;
    }
    order.reverse();
    Ok(order)
}

/// A filter chain: each filter's image id and the filter.
type Chain = Vec<(u32, pb::SeccompFilter)>;

/// The leader's saved chain, and for each thread of `img` how many of its oldest filters
/// the thread shares with the leader. The leader installs them one by one while it creates
/// its threads (`threads::restore_threads`), each thread being created once the leader has
/// the filters it shares: it inherits those very filters, as it did, so a later
/// `SECCOMP_FILTER_FLAG_TSYNC` (which needs every thread's filters to be the caller's own or
/// their ancestors) works again. Each thread then installs the rest of its own chain
/// (`Inherited::seccomp` says how many to skip).
pub fn shared_with_leader(
    cx: &RestoreCx<'_>,
    img: &TaskImages,
) -> Result<(Chain, Vec<usize>), SeccompError> {
    let leader = chain_of(cx, &img.core, img.pid)?;
    let mut shared = Vec::new();
    for (i, th) in img.threads.iter().enumerate() {
        let tid = img.pstree.threads.get(i + 1).copied().unwrap_or(img.pid);
        let c = chain_of(cx, th, tid)?;
        shared.push(
            leader
                .iter()
                .zip(&c)
                .take_while(|(a, b)| a.0 == b.0)
                .count(),
        );
    }
    Ok((leader, shared))
}

/// Installs the chain saved in `core` (a thread's, or the leader's) in the task `cx` drives,
/// but for the filters it inherited from the leader. Threads are created before their own
/// filters are installed, so chains that differ between threads come back as they were.
/// TSYNC is not replayed.
pub fn restore_core(
    cx: &mut RestoreCx<'_>,
    core: &pb::CoreEntry,
    id: u32,
) -> Result<(), SeccompError> {
    let chain = chain_of(cx, core, id)?;
    let skip = cx.inherited.seccomp.min(chain.len());
    install(cx, &chain[skip..])?;
    let strict = core
        .thread_core
        .as_ref()
        .is_some_and(|t| t.seccomp_mode == Some(MODE_STRICT));
    if strict {
        // After the task's children exist (they did not inherit it) and before its threads'
        // last syscalls, which the suspension lets through.
        cx.named("seccomp(SECCOMP_SET_MODE_STRICT)")
            .seccomp(SECCOMP_SET_MODE_STRICT, 0, 0)?;
    }
    Ok(())
}

/// Installs `filters`, oldest first, in the task `cx` drives.
pub fn install(
    cx: &mut RestoreCx<'_>,
    filters: &[(u32, pb::SeccompFilter)],
) -> Result<(), SeccompError> {
    for (_, f) in filters {
        if f.filter.is_empty() || f.filter.len() % 8 != 0 || f.filter.len() > 4096 * 8 {
            return Err(TaskError::BadImage(format!(
                "seccomp.img: a filter of {} bytes is not a BPF program",
                f.filter.len()
            ))
            .into());
        }
        let prog = cx.put(4096, &f.filter)?;
        // struct sock_fprog { u16 len; u64 filter; }
        let mut fprog = [0u8; 16];
        // At most 4096 instructions (checked above).
        let insns = u16::try_from(f.filter.len() / 8).unwrap_or(u16::MAX);
        fprog[..2].copy_from_slice(&insns.to_ne_bytes());
        fprog[8..].copy_from_slice(&prog.to_ne_bytes());
        let a = cx.put(2048, &fprog)?;
        let flags = f.flags.unwrap_or(0) & !TSYNC_FLAGS;
        cx.named("seccomp(SECCOMP_SET_MODE_FILTER)")
            .seccomp(SECCOMP_SET_MODE_FILTER, flags, a)?;
    }
    Ok(())
}
