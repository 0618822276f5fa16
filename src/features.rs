//! Kernel feature probes for `cryo check` (what CRIU's kerndat/cr-check do, but only what
//! cryo needs). Every probe is harmless: it acts on cryo itself or a throwaway child.

use std::fs::File;

use serde::Serialize;

use crate::sys;

/// One probe result.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    /// Needed for a basic dump/restore (a missing one makes `cryo check` fail).
    pub required: bool,
    pub detail: String,
}

fn probe(name: &'static str, required: bool, r: Result<String, String>) -> Feature {
    match r {
        Ok(detail) => Feature {
            name,
            ok: true,
            required,
            detail,
        },
        Err(detail) => Feature {
            name,
            ok: false,
            required,
            detail,
        },
    }
}

fn kernel_at_least(major: u32, minor: u32) -> Result<String, String> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| e.to_string())?;
    let mut it = rel.trim().split(['.', '-']);
    let ma: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    if (ma, mi) >= (major, minor) {
        Ok(format!("kernel {}", rel.trim()))
    } else {
        Err(format!(
            "kernel {} is older than {major}.{minor}",
            rel.trim()
        ))
    }
}

fn config_has(opt: &str) -> Option<bool> {
    // /proc/config.gz is not always there; /boot/config-* is the usual fallback.
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let text = std::fs::read_to_string(format!("/boot/config-{}", rel.trim())).ok()?;
    Some(text.lines().any(|l| l == format!("{opt}=y")))
}

/// Runs every probe.
pub fn probe_all() -> Vec<Feature> {
    let me = crate::sys::proc::own_pid();
    let mut v = vec![
        probe(
            "ptrace",
            true,
            std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                .map(|s| s.trim().to_string())
                .map_or(Ok("no Yama restrictions".into()), |s| {
                    if s == "3" {
                        Err("kernel.yama.ptrace_scope=3 forbids ptrace; set it to 1 or lower".into())
                    } else {
                        Ok(format!("yama ptrace_scope={s}"))
                    }
                }),
        ),
        probe(
            "pagemap_scan",
            true,
            File::open("/proc/self/pagemap")
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    let mut out = Vec::new();
                    let a = &out as *const _ as u64 & !4095;
                    sys::mem::pagemap_scan(&f, a, a + 4096, 0, 0, sys::mem::page_is::PRESENT, &mut out)
                        .map(|_| "PAGEMAP_SCAN ioctl works".to_string())
                        .map_err(|e| format!("PAGEMAP_SCAN ioctl failed ({e}); needs Linux 6.7+"))
                }),
        ),
        probe(
            "process_vm_readv",
            true,
            {
                let src = [7u8; 16];
                let mut dst = [0u8; 16];
                sys::mem::vm_read(me, &mut dst, &[(src.as_ptr() as u64, 16)])
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        if dst == src {
                            Ok("works".into())
                        } else {
                            Err("returned wrong data".into())
                        }
                    })
            },
        ),
        probe("clone3_set_tid", true, kernel_at_least(5, 5)),
        probe("get_rseq_conf", true, kernel_at_least(5, 13)),
        probe(
            "can_map_vdso",
            true,
            match config_has("CONFIG_CHECKPOINT_RESTORE") {
                Some(true) | None => kernel_at_least(4, 9),
                Some(false) => Err("CONFIG_CHECKPOINT_RESTORE is off".into()),
            },
        ),
        probe(
            "kcmp",
            true,
            sys::proc::kcmp(me, me, sys::proc::KCMP_VM, 0, 0)
                .map(|_| "works".into())
                .map_err(|e| format!("kcmp failed ({e}); needs CONFIG_KCMP or CONFIG_CHECKPOINT_RESTORE")),
        ),
        probe(
            "mem_dirty_track",
            false,
            match config_has("CONFIG_MEM_SOFT_DIRTY") {
                Some(true) => Ok("soft-dirty bits available".into()),
                Some(false) => Err("CONFIG_MEM_SOFT_DIRTY is off: incremental (pre-dump) memory tracking cannot work".into()),
                None => Err("cannot tell (no kernel config found)".into()),
            },
        ),
        probe("timens", false, std::fs::metadata("/proc/self/ns/time").map(|_| "time namespaces".into()).map_err(|e| e.to_string())),
        probe("cgroupns", false, std::fs::metadata("/proc/self/ns/cgroup").map(|_| "cgroup namespaces".into()).map_err(|e| e.to_string())),
        probe("userns", false, std::fs::metadata("/proc/self/ns/user").map(|_| "user namespaces".into()).map_err(|e| e.to_string())),
        probe("uffd", false, std::fs::metadata("/proc/sys/vm/unprivileged_userfaultfd").map(|_| "userfaultfd".into()).map_err(|_| "no userfaultfd".to_string())),
        probe("mnt_id", false, std::fs::read_to_string("/proc/self/fdinfo/0").map_err(|e| e.to_string()).and_then(|s| if s.contains("mnt_id") { Ok("fdinfo has mnt_id".into()) } else { Err("fdinfo lacks mnt_id".into()) })),
        probe("pidfd_store", false, kernel_at_least(5, 6)),
        probe("seccomp_filters", false, kernel_at_least(4, 4)),
    ];
    // What the socket kinds need (TCP repair, the network lock, ...).
    v.extend(
        crate::kinds::inet_sk::features()
            .into_iter()
            .map(|(name, r)| probe(name, false, r)),
    );
    v.sort_by_key(|f| !f.required);
    v
}
