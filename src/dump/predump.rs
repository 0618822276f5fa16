//! `cryo pre-dump`: one step of an incremental dump. The tree is frozen only to list the pages
//! to save (those written since the previous step, `memtrack::Chain`) and to arm write
//! tracking again; it then runs on while the pages are copied out of it. What a later step
//! (another pre-dump, or `dump --prev-images-dir`) needs is in the images directory as CRIU
//! writes it (`inventory.img`, `pagemap-PID.img`, `pages-N.img`, the `parent` link), plus
//! `cryo-memtrack.json` (who holds the tracking).
//!
//! Never harm the target: nothing but memory is looked at; the only change is the write
//! tracking (see `memtrack`), removed again if the step fails. A page the tree unmaps while
//! it is being copied is saved as zeros: it is not present (or not tracked) at the next step,
//! which therefore never takes it from this one.

use std::fs::File;
use std::time::Instant;

use super::{fault_point, freeze_tree, image_pids, DumpError, DumpOpts, DumpReport};
use crate::image::{self, pb, ImageDir};
use crate::kinds::error::TaskError;
use crate::kinds::memory::{pagemap_entries, send_pages, write_pages_of, Run};
use crate::memtrack::Chain;
use crate::notify::Notifier;
use crate::num::{micros_u32, micros_u64};
use crate::procfs::{self, Vma};
use crate::sys::ptrace::Tracee;
use crate::sys::remote::Parasite;
use crate::sys::PAGE_SIZE;

/// One process's share of the step, decided while the tree is frozen.
struct Plan {
    pid: i32,
    vpid: u32,
    runs: Vec<Run>,
    parents: Vec<(u64, u64)>,
    total: u64,
}

/// Is this a VMA whose pages a dump saves in the pagemap (private memory, not the kernel's)?
fn private_mem(v: &Vma) -> bool {
    !v.shared
        && !matches!(
            v.name.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        )
        && v.page_size <= PAGE_SIZE
}

/// Runs one pre-dump step of the tree under `opts.pid` into `dir`.
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
    // Dropped on any error: the tracking ends (its holder is killed, cryo's fds closed).
    let mut chain = Chain::open(dir, opts.prev_images_dir.as_deref(), true)?;
    chain.rearm = true;
    let mut ps = match &opts.page_server {
        Some(a) => Some(crate::pageserver::Client::connect(a, opts.io_timeout())?),
        None => None,
    };
    hooks.notify("pre-dump", None)?;
    fault_point("seize")?;
    let tf = Instant::now();
    let mut frozen = freeze_tree(root, Vec::new(), opts.seize_deadline())?;
    let host_pids: Vec<i32> = frozen.iter().map(|f| f.0).collect();
    let plans = (|| -> Result<Vec<Plan>, DumpError> {
        let vpids = image_pids(root, &host_pids)?;
        let mut plans = Vec::new();
        for ((pid, _, seized), vpid) in frozen.iter().zip(vpids) {
            if seized.tracees.is_empty() {
                continue; // a zombie has no memory
            }
            chain.set_vpid(*pid, vpid);
            if let (Some(ps), true) = (ps.as_mut(), chain.parent.is_some()) {
                chain.set_remote_parent(vpid, ps.has_parent(vpid)?);
            }
            plans.push(plan_process(&mut chain, *pid, vpid)?);
        }
        fault_point("memory")?;
        Ok(plans)
    })();
    // The tree runs again; the pages are copied meanwhile.
    for (_, _, seized) in frozen.iter_mut() {
        seized.release();
    }
    let frozen_time = tf.elapsed();
    let plans = plans?;
    tracing::info!(
        frozen_us = micros_u64(frozen_time),
        method = chain.method.name(),
        "pre-dump: tree running again; copying pages"
    );

    // Shared memory is not pre-dumped; zdtm (check_pages_counts) reads shpages_written.
    let mut stats = pb::DumpStatsEntry {
        frozen_time: micros_u32(frozen_time),
        shpages_scanned: Some(0),
        shpages_skipped_parent: Some(0),
        shpages_written: Some(0),
        ..Default::default()
    };
    for (i, p) in plans.iter().enumerate() {
        let pages_id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let entries = pagemap_entries(&p.runs, &p.parents);
        if let Some(ps) = ps.as_mut() {
            send_pages(ps, p.pid, p.vpid, &entries, &p.runs, true)?;
        } else {
            let name = format!("pages-{pages_id}.img");
            write_pages_of(p.pid, dir, &name, &p.runs, p.total, true)?;
            dir.write_pagemap(&format!("pagemap-{}.img", p.vpid), pages_id, &entries)?;
        }
        stats.pages_written += p.total / PAGE_SIZE;
        stats.pages_skipped_parent += p
            .parents
            .iter()
            .map(|(s, e)| (e - s) / PAGE_SIZE)
            .sum::<u64>();
    }
    if let Some(ps) = ps.take() {
        ps.close()?;
    }
    fault_point("write")?;
    // CRIU's dump_uptime: microseconds since boot (its pid-reuse check of a later step).
    let uptime = std::fs::read_to_string("/proc/uptime").ok().and_then(|s| {
        let (secs, frac) = s.split_whitespace().next()?.split_once('.')?;
        let cents: u64 = frac.get(..2)?.parse().ok()?;
        Some(secs.parse::<u64>().ok()? * 1_000_000 + cents * 10_000)
    });
    let inventory = pb::InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        ns_per_id: Some(true),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_uptime: uptime,
        // CRIU's PRE_DUMP_SPLICE (1, its default) and PRE_DUMP_READ (2).
        pre_dump_mode: Some(if opts.pre_dump_mode.as_deref() == Some("read") {
            2
        } else {
            1
        }),
        // CRIU refuses a compressed dump by this mark (`image::pages::CRIU_MARK`).
        plugins_entry: dir.compress().then(|| pb::PluginsEntry {
            plugins: vec![crate::image::pages::CRIU_MARK.into()],
        }),
        ..Default::default()
    };
    dir.write("inventory.img", image::INVENTORY, &[inventory])?;
    stats.memwrite_time = micros_u32(t0.elapsed());
    dir.write(
        "stats-dump",
        image::STATS,
        &[pb::StatsEntry {
            dump: Some(stats),
            restore: None,
        }],
    )?;
    let alive: Vec<i32> = host_pids
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    chain.keep(dir, &alive)?;
    dir.finish()?;
    hooks.notify("post-dump", None)?;
    Ok(DumpReport {
        pid: root,
        pages_written: stats.pages_written,
        frozen_us: micros_u64(frozen_time),
        total_us: micros_u64(t0.elapsed()),
        remote_syscalls: 0,
    })
}

/// Lists what to save of one frozen process and arms its tracking.
fn plan_process(chain: &mut Chain, pid: i32, vpid: u32) -> Result<Plan, DumpError> {
    let vmas = procfs::smaps(pid)?;
    if chain.needs_uffd(pid) {
        inject_uffd(chain, pid, vpid, &vmas)?;
    }
    let path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&path).map_err(|source| {
        TaskError::Proc(procfs::ProcError::Read {
            path: path.clone().into(),
            source,
        })
    })?;
    let mut runs = Vec::new();
    let mut parents = Vec::new();
    let mut off = 0u64;
    for v in vmas.iter().filter(|v| private_mem(v)) {
        let p = chain.scan_vma(pid, vpid, &pagemap, v.start, v.end)?;
        for (s, e) in p.copy {
            let pages = (e - s) / PAGE_SIZE;
            runs.push(Run {
                vaddr: s,
                pages,
                off,
                via_mem: !v.read,
            });
            off += pages * PAGE_SIZE;
        }
        parents.extend(p.parent);
    }
    chain.clear_soft_dirty(pid, vpid)?;
    Ok(Plan {
        pid,
        vpid,
        runs,
        parents,
        total: off,
    })
}

/// Makes the process's userfaultfd through a short injection bracket. A process cryo cannot
/// run a syscall in (seccomp strict mode, a pending SIGTRAP) is left untracked.
fn inject_uffd(chain: &mut Chain, pid: i32, vpid: u32, vmas: &[Vma]) -> Result<(), DumpError> {
    let status = procfs::status(pid)?;
    if status.seccomp == 1 || (status.sig_pnd | status.shd_pnd) & (1 << (libc::SIGTRAP - 1)) != 0 {
        tracing::info!(
            pid,
            "memory tracking: cannot run a syscall in the process (seccomp strict mode or a pending SIGTRAP); its pages are saved whole"
        );
        return Ok(());
    }
    let tracee = Tracee { tid: pid };
    if status.seccomp == 2 {
        tracee
            .set_options(libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_SUSPEND_SECCOMP)
            .map_err(|source| TaskError::Ptrace {
                pid,
                what: "PTRACE_SETOPTIONS(SUSPEND_SECCOMP)",
                source,
            })?;
    }
    let regs = tracee.regs().map_err(|source| TaskError::Ptrace {
        pid,
        what: "PTRACE_GETREGS",
        source,
    })?;
    let site = vmas
        .iter()
        .find(|v| v.exec && v.start < 0x8000_0000_0000 && v.name != "[vdso]" && v.len() >= 4096)
        .map(|v| v.start)
        .ok_or(DumpError::Internal(
            "no executable mapping to run syscalls from",
        ))?;
    let mut parasite = Parasite::inject(&tracee, site, regs)
        .map_err(|source| TaskError::Remote { pid, source })?;
    super::make_uffd(chain, pid, vpid, &mut parasite);
    parasite
        .cure()
        .map_err(|source| TaskError::Remote { pid, source })?;
    Ok(())
}
