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

use std::collections::HashMap;
use std::time::Instant;

use crate::image::{self, pb, ImageDir, ImageError, Manifest};
use crate::kinds::{self, Kind, RestoreCx, TaskImages};
use crate::procfs::{self, ProcError};
use crate::sys::mem::Mapping;
use crate::sys::ptrace::{Stop, Tracee};
use crate::sys::remote::{Remote, RemoteError, SYSCALL_INSN};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub detach: bool,
    pub pidfile: Option<std::path::PathBuf>,
}

/// Why a restore failed.
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
    #[error("{what} failed on the restored process")]
    Ptrace {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("cannot open {path} for the restored process")]
    Open {
        path: String,
        #[source]
        source: RemoteError,
    },
    #[error("cannot write the restored process's memory at {addr:#x}")]
    Memory {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set resource limit RLIMIT_{name} to {cur}/{max}")]
    Limit {
        name: &'static str,
        cur: u64,
        max: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the images are inconsistent: {0}")]
    BadImage(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("fault injected at stage '{0}' (CRYO_FAULT_INJECT)")]
    Injected(String),
    #[error("interrupted by signal {sig} before stage '{stage}'; nothing was left running")]
    Interrupted { sig: i32, stage: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl RestoreError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            RestoreError::PidBusy { .. } => Some(
                "wait until it exits (a killed process is gone once its parent reaps it), or restore in a new PID namespace (issue #4)".into(),
            ),
            RestoreError::Limit { .. } => Some(
                "cryo cannot raise a hard limit without CAP_SYS_RESOURCE: run it with limits at least as high (ulimit -H)".into(),
            ),
            RestoreError::Image(ImageError::Digest { .. }) => {
                Some("re-create the checkpoint; the images were damaged after the dump".into())
            }
            _ => None,
        }
    }
}

fn fault_point(stage: &str) -> Result<(), RestoreError> {
    crate::dump::fault_point(stage).map_err(|e| match e {
        crate::dump::DumpError::Interrupted { sig, .. } => RestoreError::Interrupted {
            sig,
            stage: stage.to_string(),
        },
        _ => RestoreError::Injected(stage.to_string()),
    })
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

/// Reaps the restored threads' exit notifications if the restore fails (the puppet's death
/// takes them with it; as their tracer cryo must collect their exits).
struct ThreadsGuard(Vec<i32>);

impl Drop for ThreadsGuard {
    fn drop(&mut self) {
        for &tid in &self.0 {
            let t = Tracee { tid };
            let _ = crate::sys::proc::kill(tid, libc::SIGKILL);
            while let Ok(Stop::Stopped { .. }) = t.wait() {
                let _ = t.cont(0);
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

/// Reads the single task of the image set.
fn read_task(dir: &ImageDir) -> Result<(TaskImages, HashMap<u32, pb::FileEntry>), RestoreError> {
    let inv: pb::InventoryEntry = dir.read_one("inventory.img", image::INVENTORY)?;
    if inv.img_version != 2 {
        return Err(RestoreError::Unsupported(format!(
            "image version {} (cryo reads version 2)",
            inv.img_version
        )));
    }
    let tree: Vec<pb::PstreeEntry> = dir.read("pstree.img", image::PSTREE)?;
    let [ps] = tree.as_slice() else {
        return Err(RestoreError::Unsupported(format!(
            "{} processes in pstree.img; process trees are planned (issue #3)",
            tree.len()
        )));
    };
    let pid = ps.pid;
    let ids: pb::TaskKobjIdsEntry = dir.read_one(&format!("ids-{pid}.img"), image::IDS)?;
    let mut pm = dir.read::<pb::PagemapEntry>(&format!("pagemap-{pid}.img"), image::PAGEMAP)?;
    // The first entry is really a pagemap_head (same wire shape prefix): decode it as such.
    let raw = std::fs::read(dir.file(&format!("pagemap-{pid}.img"))).map_err(|source| {
        ImageError::Io {
            path: dir.file(&format!("pagemap-{pid}.img")),
            op: "read",
            source,
        }
    })?;
    let path = dir.file(&format!("pagemap-{pid}.img"));
    let frames = image::entries(&path, image::PAGEMAP, &raw)?;
    let head = frames
        .first()
        .map(|(_, p)| <pb::PagemapHead as prost::Message>::decode(*p))
        .transpose()
        .map_err(|source| ImageError::Decode {
            path: path.clone(),
            offset: 8,
            message: "pagemap_head",
            source,
        })?
        .ok_or_else(|| RestoreError::BadImage(format!("pagemap-{pid}.img has no head entry")))?;
    if !pm.is_empty() {
        pm.remove(0);
    }
    let img = TaskImages {
        pid,
        pstree: ps.clone(),
        core: dir.read_one(&format!("core-{pid}.img"), image::CORE)?,
        ids,
        mm: dir.read_one(&format!("mm-{pid}.img"), image::MM)?,
        fs: dir.read_one(&format!("fs-{pid}.img"), image::FS)?,
        fdinfo: dir
            .read_opt(&format!("fdinfo-{}.img", ids.files_id), image::FDINFO)?
            .unwrap_or_default(),
        pagemap: pm,
        pages_id: head.pages_id,
        threads: ps
            .threads
            .iter()
            .skip(1)
            .map(|tid| dir.read_one(&format!("core-{tid}.img"), image::CORE))
            .collect::<Result<_, _>>()?,
    };
    let files = dir
        .read::<pb::FileEntry>("files.img", image::FILES)?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    Ok((img, files))
}

/// A free, page-aligned address range of `len` bytes outside every VMA of the dumped task
/// and of cryo itself, for the trampoline.
fn trampoline_addr(img: &TaskImages, len: u64) -> Result<u64, RestoreError> {
    let own =
        procfs::parse_smaps(&procfs::read(std::process::id() as i32, "maps")?).unwrap_or_default();
    let mut used: Vec<(u64, u64)> = img.mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    used.extend(own.iter().map(|v| (v.start, v.end)));
    used.sort_unstable();
    let guard = 1 << 20; // keep clear of stack guard gaps
    let mut cand = 1u64 << 24;
    for (s, e) in used {
        if cand + len + guard <= s {
            return Ok(cand);
        }
        cand = cand.max(e + guard);
    }
    if cand + len < 0x7fff_0000_0000 {
        return Ok(cand);
    }
    Err(RestoreError::Internal(
        "no free address for the restore trampoline",
    ))
}

/// Restores the image set in `dir`.
pub fn run(opts: &RestoreOpts, dir: &ImageDir) -> Result<RestoreReport, RestoreError> {
    let t0 = Instant::now();
    // 1. Verify before creating anything.
    match Manifest::load(&dir.path)? {
        Some(m) => m.verify(&dir.path, 2)?,
        None => tracing::warn!(
            "no cryo-manifest.json in {}: images not verified (written by CRIU?)",
            dir.path.display()
        ),
    }
    fault_point("verify")?;
    let (img, files) = read_task(dir)?;
    let pid = img.pid as i32;
    if let Ok(st) = procfs::stat(pid) {
        return Err(RestoreError::PidBusy {
            pid,
            who: format!("{} (state {})", st.comm, st.state),
        });
    }

    // 2. Trampoline + puppet.
    let tr_len: u64 = 16 * 4096;
    let tr = trampoline_addr(&img, tr_len)?;
    let mut code = Mapping::anon_fixed(tr, 4096, libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|source| RestoreError::Fork { pid, source })?;
    code.write_at(0, &SYSCALL_INSN.to_ne_bytes());
    code.protect(libc::PROT_READ | libc::PROT_EXEC)
        .map_err(|source| RestoreError::Fork { pid, source })?;
    let scratch = Mapping::anon_fixed(
        tr + 4096,
        (tr_len - 4096) as usize,
        libc::PROT_READ | libc::PROT_WRITE,
    )
    .map_err(|source| RestoreError::Fork { pid, source })?;
    fault_point("fork")?;
    let child = crate::sys::proc::spawn_puppet(pid).map_err(|source| {
        if source.raw_os_error() == Some(libc::EEXIST) {
            RestoreError::PidBusy {
                pid,
                who: "a process that appeared meanwhile".into(),
            }
        } else {
            RestoreError::Fork { pid, source }
        }
    })?;
    let mut puppet = Puppet {
        tracee: Tracee { tid: child },
        released: false,
    };
    drop(code);
    drop(scratch);
    let pt = |what| move |source| RestoreError::Ptrace { what, source };
    match puppet.tracee.wait().map_err(pt("waitpid"))? {
        Stop::Stopped {
            sig: libc::SIGSTOP, ..
        } => {}
        other => {
            return Err(RestoreError::Ptrace {
                what: "waiting for the new process",
                source: std::io::Error::other(format!("unexpected state {other:?}")),
            })
        }
    }
    puppet
        .tracee
        .set_options(
            libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE,
        )
        .map_err(pt("PTRACE_SETOPTIONS"))?;
    let base = puppet.tracee.regs().map_err(pt("PTRACE_GETREGS"))?;
    let own_rseq = puppet
        .tracee
        .rseq_conf()
        .map_err(pt("PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let tracee = Tracee { tid: child };
    let mut stats = pb::RestoreStatsEntry::default();
    let mut cx = RestoreCx {
        pid,
        remote: Remote::new(&tracee, tr, base),
        scratch: tr + 4096,
        scratch_len: tr_len - 4096,
        dir,
        files: &files,
        stats: &mut stats,
        inherited: Default::default(),
    };

    // 3. Empty the puppet: cryo's rseq area, fds and memory must go.
    if own_rseq.rseq_abi_pointer != 0 {
        cx.sys(
            "rseq (unregister)",
            libc::SYS_rseq,
            [
                own_rseq.rseq_abi_pointer,
                own_rseq.rseq_abi_size as u64,
                1,
                own_rseq.signature as u64,
                0,
                0,
            ],
        )?;
    }
    cx.sys(
        "close_range",
        libc::SYS_close_range,
        [0, u32::MAX as u64, 0, 0, 0, 0],
    )?;
    cx.sys("munmap", libc::SYS_munmap, [0, tr, 0, 0, 0, 0])?;
    let top = 0x7fff_ffff_f000u64;
    cx.sys(
        "munmap",
        libc::SYS_munmap,
        [tr + tr_len, top - (tr + tr_len), 0, 0, 0, 0],
    )?;

    // 4. The kinds, in dependency order.
    let tf = Instant::now();
    kinds::memory::Memory::restore(&mut cx, &img)?;
    fault_point("memory")?;
    kinds::files::Files::restore(&mut cx, &img)?;
    fault_point("files")?;
    kinds::rlimits::Rlimits::restore(&mut cx, &img)?;
    kinds::signals::Signals::restore(&mut cx, &img)?;
    kinds::misc::Misc::restore(&mut cx, &img)?;
    kinds::regs::CpuState::restore(&mut cx, &img)?;
    fault_point("task")?;
    // Threads are created after everything they share and before the leader drops its
    // credentials (creating them needs them). Each one is killed with the puppet on error.
    let threads = kinds::threads::restore_threads(&mut cx, &img)?;
    let _threads_guard = ThreadsGuard(threads.iter().map(|t| t.tracee.tid).collect());
    fault_point("threads")?;
    kinds::creds::Creds::restore(&mut cx, &img)?;
    fault_point("creds")?;
    kinds::misc::restore_late(&mut cx, &img)?;
    kinds::timers::Timers::restore(&mut cx, &img)?;
    fault_point("finish")?;

    // 5. Last injected syscall unmaps the trampoline; then the dumped registers.
    cx.remote.call_to_exit(
        "munmap (trampoline)",
        libc::SYS_munmap,
        [tr, tr_len, 0, 0, 0, 0],
    )?;
    let calls = cx.remote.calls;
    let ti = img
        .core
        .thread_info
        .as_ref()
        .ok_or_else(|| RestoreError::BadImage(format!("core-{pid}.img has no registers")))?;
    let regs = kinds::regs::pb_to_regs(&ti.gpregs, &base);
    puppet
        .tracee
        .set_regs(&regs)
        .map_err(pt("PTRACE_SETREGS"))?;
    let mask = img.core.tc.as_ref().map(|t| t.blk_sigset).unwrap_or(0);
    puppet
        .tracee
        .set_sigmask(mask)
        .map_err(pt("PTRACE_SETSIGMASK"))?;
    stats.restore_time = tf.elapsed().as_micros() as u32;
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{pid}")).map_err(|source| ImageError::Io {
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
    for t in &threads {
        t.tracee.set_regs(&t.regs).map_err(pt("PTRACE_SETREGS"))?;
        t.tracee
            .set_sigmask(t.mask)
            .map_err(pt("PTRACE_SETSIGMASK"))?;
    }
    for t in &threads {
        t.tracee.detach(0).map_err(pt("PTRACE_DETACH"))?;
    }
    puppet.tracee.detach(0).map_err(pt("PTRACE_DETACH"))?;
    puppet.released = true;
    std::mem::forget(_threads_guard);
    let report = RestoreReport {
        pid,
        pages_restored: stats.pages_restored.unwrap_or(0),
        total_us: t0.elapsed().as_micros() as u64,
        remote_syscalls: calls,
    };
    if !opts.detach {
        // Like criu without -d: stay the parent until the restored process exits.
        let mut status = 0;
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).map(|s| {
            if let nix::sys::wait::WaitStatus::Exited(_, c) = s {
                status = c;
            }
        });
    }
    Ok(report)
}
