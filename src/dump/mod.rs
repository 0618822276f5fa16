//! The dump pipeline: check → seize → collect → inject → per-kind dump → cure → memory →
//! write images → final state (kill, or leave running).
//!
//! Never harm the target: everything that can be refused is refused before the task is
//! touched (`precheck`); after seizing, every error path runs through [`Seized`]'s cleanup,
//! which cures the injection (code word, registers, signal mask) and detaches, so a failed
//! dump leaves the task running exactly as it was.

use std::time::Instant;

use crate::image::{self, pb, ImageDir, ImageError};
use crate::kinds::{self, DumpCx, FileTable, Kind, TaskImages};
use crate::procfs::{self, ProcError};
use crate::sys::ptrace::{Stop, Tracee};
use crate::sys::remote::{Parasite, RemoteError};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    pub pid: i32,
    pub leave_running: bool,
    pub shell_job: bool,
}

/// Why a dump failed.
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
    #[error("{what} failed for process {pid}")]
    Ptrace {
        pid: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("in-target syscall failed in process {pid}")]
    Remote {
        pid: i32,
        #[source]
        source: RemoteError,
    },
    #[error("{what} failed at {addr:#x} in process {pid}")]
    Memory {
        pid: i32,
        addr: u64,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: {object}: {what}")]
    Unsupported {
        pid: i32,
        object: String,
        what: String,
        hint: String,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("fault injected at stage '{0}' (CRYO_FAULT_INJECT)")]
    Injected(String),
    #[error("interrupted by signal {sig} before stage '{stage}'; the process was left running")]
    Interrupted { sig: i32, stage: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl DumpError {
    pub fn remote(pid: i32, source: RemoteError) -> DumpError {
        DumpError::Remote { pid, source }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            DumpError::Unsupported { hint, .. } if !hint.is_empty() => Some(hint.clone()),
            DumpError::Seize { .. } => Some(
                "is it already traced (gdb, strace) or a kernel thread? cryo needs ptrace (root or CAP_SYS_PTRACE)".into(),
            ),
            DumpError::NoSuchProcess { .. } => Some("check the pid given with -t/--tree".into()),
            _ => None,
        }
    }
}

/// Test hook: `CRYO_FAULT_INJECT=<stage>` makes that stage fail, to prove a failed dump or
/// restore leaves nothing harmed. Stages: dump `seize collect parasite memory write`,
/// restore `verify fork files memory task creds finish`.
pub fn fault_point(stage: &str) -> Result<(), DumpError> {
    tracing::info!("stage: {stage}");
    if let Some(sig) = crate::sys::proc::interrupted() {
        return Err(DumpError::Interrupted {
            sig,
            stage: stage.to_string(),
        });
    }
    if std::env::var("CRYO_FAULT_INJECT").is_ok_and(|v| v == stage) {
        return Err(DumpError::Injected(stage.to_string()));
    }
    Ok(())
}

/// The seized threads of a task (leader first); released on drop unless [`Seized::kill`]
/// took them.
struct Seized {
    tracees: Vec<Tracee>,
    done: bool,
}

impl Seized {
    fn release(&mut self) {
        if !self.done {
            self.done = true;
            for t in &self.tracees {
                if let Err(e) = t.detach(0) {
                    tracing::error!("Error detaching from {}: {e}", t.tid);
                }
            }
        }
    }
    fn kill(&mut self) {
        self.done = true;
        if let Some(leader) = self.tracees.first() {
            let _ = crate::sys::proc::kill(leader.tid, libc::SIGKILL);
        }
        // Reap our tracee notifications; the real parent gets the exit status. The leader
        // reports last: its exit waits until every other thread has been reaped.
        for t in self.tracees.iter().rev() {
            let _ = t.detach(0);
            loop {
                match t.wait() {
                    Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) | Err(_) => break,
                    Ok(Stop::Stopped { .. }) => {
                        let _ = t.cont(0);
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

/// Seizes one thread and waits until it is in a ptrace stop, passing on any signal that
/// arrives meanwhile (so nothing is lost). `Ok(None)`: the thread is gone.
fn seize_thread(pid: i32, tid: i32) -> Result<Option<Tracee>, DumpError> {
    let t = match Tracee::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(source) => return Err(DumpError::Seize { pid: tid, source }),
    };
    let give_up = |t: &Tracee, e| {
        let _ = t.detach(0);
        e
    };
    for _ in 0..100 {
        match t.wait() {
            Ok(Stop::Stopped { sig, event }) if event == libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    return Err(give_up(
                        &t,
                        DumpError::Unsupported {
                            pid,
                            object: "task state".into(),
                            what: "the process is stopped (job control)".into(),
                            hint: "stopped tasks are planned (issue #3); send SIGCONT first".into(),
                        },
                    ));
                }
                return Ok(Some(t));
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

/// Seizes every thread of `pid`, re-reading the thread list until no new thread appears
/// (a running thread can create one while others are being seized).
fn seize(pid: i32) -> Result<Seized, DumpError> {
    let mut s = Seized {
        tracees: Vec::new(),
        done: false,
    };
    match seize_thread(pid, pid)? {
        Some(t) => s.tracees.push(t),
        None => return Err(DumpError::NoSuchProcess { pid }),
    }
    for _ in 0..10 {
        let mut new = false;
        for tid in procfs::threads(pid)? {
            if s.tracees.iter().any(|t| t.tid == tid) {
                continue;
            }
            if let Some(t) = seize_thread(pid, tid)? {
                s.tracees.push(t);
                new = true;
            }
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

/// Result of a dump, for logs and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub pages_written: u64,
    pub frozen_us: u64,
    pub total_us: u64,
    pub remote_syscalls: u64,
}

/// Dumps the process `opts.pid` into `dir`.
pub fn run(opts: &DumpOpts, dir: &ImageDir) -> Result<DumpReport, DumpError> {
    let t0 = Instant::now();
    let pid = opts.pid;
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DumpError::NoSuchProcess { pid });
    }
    // 1. Refuse what we cannot do before touching the task.
    for tid in procfs::threads(pid)? {
        let Ok(children) = procfs::read(pid, &format!("task/{tid}/children")) else {
            continue;
        };
        if !children.trim().is_empty() {
            return Err(DumpError::Unsupported {
                pid,
                object: format!("children {}", children.trim()),
                what: "process trees are not supported yet".into(),
                hint: "process trees are planned (issue #3)".into(),
            });
        }
    }
    let stat0 = procfs::stat(pid)?;
    if stat0.session != pid && !opts.shell_job {
        return Err(DumpError::Unsupported {
            pid,
            object: format!("session {}", stat0.session),
            what: "the process is not a session leader, so its session cannot be restored".into(),
            hint: "start it with setsid, or pass --shell-job (-j) to dump and restore it into cryo's session".into(),
        });
    }
    kinds::files::precheck(pid)?;
    fault_point("seize")?;

    // 2. Freeze.
    let tf = Instant::now();
    let mut seized = seize(pid)?;
    let freezing = tf.elapsed();
    let tracee = Tracee { tid: pid };
    let mut others = Vec::new();
    for t in seized.tracees.iter().skip(1) {
        let pt = |what, source| DumpError::Ptrace {
            pid: t.tid,
            what,
            source,
        };
        others.push(kinds::threads::SeizedThread {
            tracee: Tracee { tid: t.tid },
            regs: t.regs().map_err(|e| pt("PTRACE_GETREGS", e))?,
            mask: t.sigmask().map_err(|e| pt("PTRACE_GETSIGMASK", e))?,
        });
    }
    let regs = tracee.regs().map_err(|source| DumpError::Ptrace {
        pid,
        what: "PTRACE_GETREGS",
        source,
    })?;
    let sigmask = tracee.sigmask().map_err(|source| DumpError::Ptrace {
        pid,
        what: "PTRACE_GETSIGMASK",
        source,
    })?;
    let stat = procfs::stat(pid)?;
    let status = procfs::status(pid)?;
    let vmas = procfs::smaps(pid)?;
    if status.seccomp != 0 {
        return Err(DumpError::Unsupported {
            pid,
            object: "seccomp".into(),
            what: "seccomp filters are not supported yet".into(),
            hint: "planned with issue #5".into(),
        });
    }
    fault_point("collect")?;

    let mut files = FileTable::default();
    let mut stats = pb::DumpStatsEntry::default();
    let mut img = TaskImages::default();
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
        files: &mut files,
        dir,
        stats: &mut stats,
    };
    // 3. In-target work, inside the injection bracket.
    cx.parasite =
        Some(Parasite::inject(&tracee, site, regs).map_err(|e| DumpError::remote(pid, e))?);
    let r = (|| -> Result<(), DumpError> {
        kinds::signals::Signals::dump(&mut cx, &mut img)?;
        fault_point("parasite")?;
        kinds::misc::Misc::dump(&mut cx, &mut img)?;
        kinds::creds::Creds::dump(&mut cx, &mut img)?;
        kinds::timers::Timers::dump(&mut cx, &mut img)?;
        kinds::rlimits::Rlimits::dump(&mut cx, &mut img)?;
        kinds::files::Files::dump(&mut cx, &mut img)?;
        kinds::regs::CpuState::dump(&mut cx, &mut img)?;
        let scratch = cx
            .remote()?
            .scratch(64 * 1024)
            .map_err(|e| DumpError::remote(pid, e))?;
        for th in &others {
            img.threads
                .push(kinds::threads::dump_thread(pid, th, site, scratch)?);
            img.pstree.threads.push(th.tracee.tid as u32);
        }
        Ok(())
    })();
    let parasite = cx.parasite.take().expect("injected above");
    let calls = parasite.remote.calls;
    let cured = parasite.cure().map_err(|e| DumpError::remote(pid, e));
    r?;
    cured?;
    // 4. Memory (after the cure, so the original code word is what gets saved).
    kinds::memory::Memory::dump(&mut cx, &mut img)?;
    fault_point("write")?;
    drop(cx);

    // 5. Images.
    write_images(dir, &img, &files)?;
    tracing::info!("images written");
    let frozen = tf.elapsed();
    stats.freezing_time = freezing.as_micros() as u32;
    stats.frozen_time = frozen.as_micros() as u32;
    dir.write(
        "stats-dump",
        image::STATS,
        &[pb::StatsEntry {
            dump: Some(stats),
            restore: None,
        }],
    )?;
    dir.finish()?;

    // 6. Final state.
    if opts.leave_running {
        seized.release();
    } else {
        seized.kill();
    }
    Ok(DumpReport {
        pid,
        pages_written: stats.pages_written,
        frozen_us: frozen.as_micros() as u64,
        total_us: t0.elapsed().as_micros() as u64,
        remote_syscalls: calls,
    })
}

fn write_images(dir: &ImageDir, img: &TaskImages, files: &FileTable) -> Result<(), DumpError> {
    let pid = img.pid;
    dir.write(
        "inventory.img",
        image::INVENTORY,
        &[pb::InventoryEntry {
            img_version: 2,
            fdinfo_per_id: Some(true),
            root_ids: Some(kinds::misc::task_ids(std::process::id() as i32, 1)?),
            ns_per_id: Some(true),
            lsmtype: Some(pb::Lsmtype::NoLsm as i32),
            ..Default::default()
        }],
    )?;
    dir.write(
        "pstree.img",
        image::PSTREE,
        std::slice::from_ref(&img.pstree),
    )?;
    dir.write(
        &format!("core-{pid}.img"),
        image::CORE,
        std::slice::from_ref(&img.core),
    )?;
    for (tid, core) in img.pstree.threads.iter().skip(1).zip(&img.threads) {
        dir.write(
            &format!("core-{tid}.img"),
            image::CORE,
            std::slice::from_ref(core),
        )?;
    }
    dir.write(&format!("ids-{pid}.img"), image::IDS, &[img.ids])?;
    dir.write(
        &format!("mm-{pid}.img"),
        image::MM,
        std::slice::from_ref(&img.mm),
    )?;
    dir.write(&format!("fs-{pid}.img"), image::FS, &[img.fs])?;
    dir.write(
        &format!("fdinfo-{}.img", img.ids.files_id),
        image::FDINFO,
        &img.fdinfo,
    )?;
    dir.write("files.img", image::FILES, &files.entries)?;
    // pagemap: head, then entries.
    let mut pm = Vec::new();
    let head = pb::PagemapHead {
        pages_id: img.pages_id,
    };
    prost_frame(&mut pm, &head);
    for e in &img.pagemap {
        prost_frame(&mut pm, e);
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&image::IMG_COMMON_MAGIC.to_ne_bytes());
    if let image::Head::Common(m) = image::PAGEMAP.head {
        bytes.extend_from_slice(&m.to_ne_bytes());
    }
    bytes.extend_from_slice(&pm);
    dir.write_raw(&format!("pagemap-{pid}.img"), &bytes)?;
    dir.write(
        "seccomp.img",
        image::SECCOMP,
        &[pb::SeccompEntry::default()],
    )?;
    Ok(())
}

fn prost_frame<M: prost::Message>(out: &mut Vec<u8>, m: &M) {
    out.extend_from_slice(&(m.encoded_len() as u32).to_ne_bytes());
    m.encode(out).expect("Vec grows");
}
