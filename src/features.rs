//! `cryo check`: what this kernel offers and cryo can use. Every feature name CRIU 4.2 knows
//! (`criu/cr-check.c`) is answered, truthfully for cryo: a feature is supported only if the
//! kernel has it *and* cryo handles what it is about (runc, podman and zdtm ask before they
//! use something: `external_net_ns`, `uffd-noncoop`, `mem_dirty_track`, `mnt_id`, ...). A
//! feature cryo does not handle says so in its detail whatever the kernel has. Every probe is
//! harmless: it acts on cryo itself or on files it makes and removes.

use std::fs::File;

use serde::Serialize;

use crate::sys;

/// CRIU's three categories (`criu check`, `--extra`, `--experimental`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Needed for any dump or restore: `cryo check` fails without it.
    Required,
    /// Needed for some trees only (`--extra`, `--all`).
    Extra,
    /// Experimental (`--experimental`, `--all`).
    Experimental,
}

/// One probe result.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    pub category: Category,
    /// Needed for a basic dump/restore (a missing one makes `cryo check` fail).
    pub required: bool,
    pub detail: String,
}

/// The names `criu check --feature` accepts, in CRIU 4.2's order.
pub const CRIU_FEATURES: &[&str] = &[
    "mnt_id",
    "mem_dirty_track",
    "aio_remap",
    "timerfd",
    "tun",
    "tun_ns",
    "userns",
    "fdinfo_lock",
    "seccomp_suspend",
    "seccomp_filters",
    "loginuid",
    "cgroupns",
    "autofs",
    "tcp_half_closed",
    "compat_cr",
    "uffd",
    "uffd-noncoop",
    "can_map_vdso",
    "sk_ns",
    "sk_unix_file",
    "net_diag_raw",
    "nsid",
    "link_nsid",
    "kcmp_epoll",
    "timens",
    "external_net_ns",
    "clone3_set_tid",
    "newifindex",
    "nftables",
    "has_ipt_legacy",
    "pidfd_store",
    "ns_pid",
    "apparmor_stacking",
    "network_lock_nftables",
    "sockopt_buf_lock",
    "memfd_hugetlb",
    "move_mount_set_group",
    "openat2",
    "get_rseq_conf",
    "ipv6_freebind",
    "pagemap_scan",
    "timer_cr_ids",
    "overlayfs_maps",
    "breakpoints",
    "pagemap_scan_guard_pages",
];

/// cryo's own required probes (not CRIU feature names except where they coincide).
const REQUIRED: &[&str] = &[
    "ptrace",
    "pagemap_scan",
    "process_vm_readv",
    "clone3_set_tid",
    "get_rseq_conf",
    "can_map_vdso",
    "kcmp",
];

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

/// Soft-dirty bits: a pagemap entry of a freshly written page of cryo's carries bit 55 only
/// when the kernel tracks them.
fn soft_dirty() -> bool {
    if config_has("CONFIG_MEM_SOFT_DIRTY") == Some(true) {
        return true;
    }
    let page = vec![1u8; 4096 * 2];
    let addr = (page.as_ptr() as u64 + 4095) & !4095;
    let Ok(f) = File::open("/proc/self/pagemap") else {
        return false;
    };
    let mut buf = [0u8; 8];
    let r = std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, addr / 4096 * 8);
    std::hint::black_box(&page);
    r.is_ok() && u64::from_le_bytes(buf) & (1 << 55) != 0
}

/// A program cryo runs for a feature, found in PATH.
fn in_path(tool: &str, what: &str) -> Result<String, String> {
    let found = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found {
        Ok(what.to_string())
    } else {
        Err(format!("{tool} is not in PATH"))
    }
}

/// Whether this process can set its login uid, as a restored task must (CRIU's `LUID_FULL`):
/// `/proc/self/loginuid` exists (audit syscall support) and writing the current value back is
/// allowed (CAP_AUDIT_CONTROL, loginuid not immutable). Only the login session id of cryo
/// itself changes. Asked once per process.
pub fn loginuid_writable() -> Result<(), String> {
    static ANSWER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let path = "/proc/self/loginuid";
            let now = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            std::fs::write(path, now.trim())
                .map_err(|e| format!("{path} cannot be written here: {e}"))
        })
        .clone()
}

/// `KCMP_EPOLL_TFD` (Linux 4.13): an epoll item whose registered fd was closed or replaced is
/// found at another fd of the task on its file. Probed on an eventfd in an epoll of cryo's.
fn kcmp_epoll() -> Result<String, String> {
    use rustix::event::epoll;
    use std::os::fd::AsRawFd;
    let ep = sys::fd::epoll_create().map_err(|e| format!("epoll_create1: {e}"))?;
    let ev = sys::fd::eventfd(libc::EFD_CLOEXEC).map_err(|e| format!("eventfd: {e}"))?;
    epoll::add(
        &ep,
        &ev,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN,
    )
    .map_err(|e| format!("epoll_ctl: {e}"))?;
    let me = sys::proc::own_pid();
    let fd = ev.as_raw_fd();
    match sys::proc::kcmp_epoll_tfd(me, fd, ep.as_raw_fd(), fd.cast_unsigned(), 0) {
        Ok(true) => Ok(
            "an epoll watch whose fd was closed or replaced is found at another fd on its file"
                .into(),
        ),
        Ok(false) => Err("kcmp(KCMP_EPOLL_TFD) does not match an epoll's own target".into()),
        Err(e) => Err(format!("kcmp(KCMP_EPOLL_TFD): {e}")),
    }
}

/// As CRIU's check: a tun file takes an interface index for its device (TUNSETIFINDEX).
fn tun_check() -> Result<String, String> {
    let f = sys::tun::open(libc::O_RDWR | libc::O_CLOEXEC)
        .map_err(|e| format!("open /dev/net/tun: {e}"))?;
    sys::tun::set_ifindex(std::os::fd::AsFd::as_fd(&f), 13)
        .map(|()| "tun/tap files and devices are saved (TUNSETIFINDEX works)".into())
        .map_err(|e| format!("TUNSETIFINDEX: {e}"))
}

/// As CRIU's check: a tun file tells its network namespace (SIOCGSKNS).
fn tun_ns_check() -> Result<String, String> {
    let f = sys::tun::open(libc::O_RDWR | libc::O_CLOEXEC)
        .map_err(|e| format!("open /dev/net/tun: {e}"))?;
    sys::inet::socket_netns(std::os::fd::AsFd::as_fd(&f))
        .map(|_| "a tun file's network namespace is saved (SIOCGSKNS works on it)".into())
        .map_err(|e| format!("SIOCGSKNS on a tun file: {e}"))
}

/// A feature cryo does not handle, whatever the kernel offers.
fn not_in_cryo(why: &str) -> Result<String, String> {
    Err(why.to_string())
}

fn exists(path: &str, what: &str) -> Result<String, String> {
    std::fs::metadata(path)
        .map(|_| what.to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// `lock:` lines in fdinfo (Linux 4.1): cryo reads the tree's file locks there.
fn fdinfo_lock() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("cryo-check-lock-{}", sys::proc::own_pid()));
    let f = File::create(&dir).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&dir);
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared)
        .map_err(|e| e.to_string())?;
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    if info.contains("lock:") {
        Ok("fdinfo shows file locks".into())
    } else {
        Err("fdinfo does not show file locks (Linux 4.1+)".into())
    }
}

/// `TFD_IOC_SET_TICKS` (CONFIG_CHECKPOINT_RESTORE): cryo puts a timerfd's unread ticks back.
fn timerfd() -> Result<String, String> {
    let fd = sys::fd::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC)
        .map_err(|e| e.to_string())?;
    use std::os::fd::AsFd;
    sys::fd::timerfd_set_ticks(fd.as_fd(), 1)
        .map(|_| "timerfd ticks can be set (TFD_IOC_SET_TICKS)".into())
        .map_err(|e| format!("TFD_IOC_SET_TICKS failed ({e}); needs CONFIG_CHECKPOINT_RESTORE"))
}

/// The answer for one feature name, CRIU's or cryo's own; None if unknown.
pub fn probe(name: &str) -> Option<Feature> {
    let me = sys::proc::own_pid();
    let category = if REQUIRED.contains(&name) {
        Category::Required
    } else if matches!(name, "autofs" | "compat_cr") {
        Category::Experimental
    } else {
        Category::Extra
    };
    let r: Result<String, String> = match name {
        // cryo's own requirements.
        "ptrace" => std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .map(|s| s.trim().to_string())
            .map_or(Ok("no Yama restrictions".into()), |s| {
                if s == "3" {
                    Err("kernel.yama.ptrace_scope=3 forbids ptrace; set it to 1 or lower".into())
                } else {
                    Ok(format!("yama ptrace_scope={s}"))
                }
            }),
        "pagemap_scan" => File::open("/proc/self/pagemap")
            .map_err(|e| e.to_string())
            .and_then(|f| {
                let mut out = Vec::new();
                let a = &out as *const _ as u64 & !4095;
                sys::mem::pagemap_scan(&f, a, a + 4096, 0, 0, sys::mem::page_is::PRESENT, &mut out)
                    .map(|_| "PAGEMAP_SCAN ioctl works".to_string())
                    .map_err(|e| format!("PAGEMAP_SCAN ioctl failed ({e}); needs Linux 6.7+"))
            }),
        "process_vm_readv" => {
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
        }
        "clone3_set_tid" => kernel_at_least(5, 5),
        "get_rseq_conf" => kernel_at_least(5, 13),
        "can_map_vdso" => match config_has("CONFIG_CHECKPOINT_RESTORE") {
            Some(true) | None => kernel_at_least(4, 9),
            Some(false) => Err("CONFIG_CHECKPOINT_RESTORE is off".into()),
        },
        "kcmp" => sys::proc::kcmp(me, me, sys::proc::KCMP_VM, 0, 0)
            .map(|_| "works".into())
            .map_err(|e| format!("kcmp failed ({e}); needs CONFIG_KCMP or CONFIG_CHECKPOINT_RESTORE")),

        // CRIU's names that cryo handles when the kernel has them.
        "mnt_id" => std::fs::read_to_string("/proc/self/fdinfo/0")
            .or_else(|_| std::fs::read_to_string(format!("/proc/{me}/fdinfo/1")))
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.contains("mnt_id") {
                    Ok("fdinfo has mnt_id".into())
                } else {
                    Err("fdinfo lacks mnt_id".into())
                }
            }),
        "timerfd" => timerfd(),
        "fdinfo_lock" => fdinfo_lock(),
        "seccomp_suspend" => kernel_at_least(4, 3)
            .map(|k| format!("{k}: PTRACE_O_SUSPEND_SECCOMP (cryo injects syscalls past filters)")),
        "seccomp_filters" => kernel_at_least(4, 4)
            .map(|k| format!("{k}: PTRACE_SECCOMP_GET_FILTER (cryo saves each thread's filters)")),
        "userns" => exists("/proc/self/ns/user", "user namespaces (a tree's own, child of cryo's, with its uid/gid maps and setgroups state)"),
        "cgroupns" => exists("/proc/self/ns/cgroup", "cgroup namespaces"),
        "timens" => exists("/proc/self/ns/time", "time namespaces (clocks go on from their saved values)"),
        "external_net_ns" => Ok("--external net[INODE]:KEY at dump, --inherit-fd fd[N]:KEY or --join-ns at restore".into()),
        "ns_pid" => std::fs::read_to_string("/proc/self/status")
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.contains("NSpid:") {
                    Ok("/proc/PID/status has NSpid".into())
                } else {
                    Err("/proc/PID/status lacks NSpid (Linux 4.1+)".into())
                }
            }),
        "openat2" => kernel_at_least(5, 6).map(|k| format!("{k}: cryo resolves paths in a tree's root with openat2(RESOLVE_IN_ROOT)")),
        "timer_cr_ids" => kernel_at_least(6, 15).map(|k| format!("{k}: POSIX timers get their ids back (PR_TIMER_CREATE_RESTORE_IDS)")),
        "move_mount_set_group" => kernel_at_least(5, 15).map(|k| format!("{k}: mount peer groups are restored with MOVE_MOUNT_SET_GROUP")),

        // What cryo does not handle (yet), whatever the kernel has.
        "mem_dirty_track" => {
            let m = crate::memtrack::Method::detect();
            let sd = if soft_dirty() { "on" } else { "off" };
            let why = format!("{}: {} (soft-dirty is {sd} in this kernel)", m.name(), m.describe());
            if m == crate::memtrack::Method::Full { Err(why) } else { Ok(why) }
        }
        "uffd" => crate::sys::mem::userfaultfd_full()
            .map(|_| "userfaultfd: lazy restore (--lazy-pages) and the restore's memory fill".to_string())
            .map_err(|e| format!("userfaultfd (kernel faults included; needs CAP_SYS_PTRACE): {e}")),
        "uffd-noncoop" => crate::sys::mem::userfaultfd_full()
            .and_then(crate::sys::mem::Uffd::new_lazy)
            .map(|_| "userfaultfd fork/remap/remove/unmap events: lazy restore (--lazy-pages) follows the program's fork, mremap, MADV_DONTNEED and munmap".to_string())
            .map_err(|e| format!("userfaultfd without the fork/remap/remove/unmap events lazy restore needs: {e}")),
        "pidfd_store" => not_in_cryo("the pidfd store (pid reuse detection across pre-dumps) is not implemented in cryo"),
        // Rings are made again with io_setup and moved to their address (Linux 3.19+).
        "aio_remap" => kernel_at_least(3, 19).map(|k| format!("{k}: AIO rings can be moved with mremap")),
        "tun" => tun_check(),
        "tun_ns" => tun_ns_check(),
        "loginuid" => loginuid_writable().map(|()| "a task's login uid (/proc/PID/loginuid) is restored".into()),
        "autofs" => not_in_cryo("autofs mounts are not supported by cryo"),
        "compat_cr" => not_in_cryo("32-bit (compat) tasks are not supported by cryo"),
        // As CRIU's probe: on an unbound socket the ioctl, if the kernel has it, finds no
        // file (ENOENT).
        "sk_unix_file" => sys::net::unix_socket(libc::SOCK_DGRAM)
            .map_err(|e| format!("socket: {e}"))
            .and_then(|s| match sys::scm::unix_file(std::os::fd::AsFd::as_fd(&s)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    Ok("SIOCUNIXFILE finds a unix socket's file".into())
                }
                Ok(_) => Ok("SIOCUNIXFILE finds a unix socket's file".into()),
                Err(e) => Err(format!("SIOCUNIXFILE is not supported ({e}); Linux 6.6+")),
            }),
        "net_diag_raw" => Ok("raw sockets are saved (cryo reads each through a copy of the target's fd, not through sock_diag)".into()),
        "nsid" => kernel_at_least(4, 0).map(|k| format!("{k}: a veth peer's namespace is found by its NETNSA_NSID")),
        "link_nsid" => kernel_at_least(4, 0).map(|k| format!("{k}: IFLA_LINK_NETNSID names a veth peer's namespace")),
        "newifindex" => kernel_at_least(4, 15).map(|k| format!("{k}: links are made again with their saved ifindex")),
        "kcmp_epoll" => kcmp_epoll(),
        "nftables" => in_path("nft", "a network namespace's nftables rules are saved with `nft list ruleset` and loaded again with nft"),
        "has_ipt_legacy" => in_path("iptables-legacy-save", "a network namespace's legacy iptables rules are saved with iptables-legacy-save"),
        "apparmor_stacking" => not_in_cryo("LSM profiles are not supported by cryo"),
        "memfd_hugetlb" => sys::fd::memfd_create("cryo-probe", libc::MFD_CLOEXEC | libc::MFD_HUGETLB)
            .map(|_| "memfd_create(MFD_HUGETLB) works (hugetlbfs files other than memfds are not supported)".into())
            .map_err(|e| format!("memfd_create(MFD_HUGETLB) fails ({e})")),
        // What the socket kinds need (TCP repair, the network lock, ...): their own probes.
        "tcp_half_closed" | "network_lock_nftables" | "sk_ns" | "ipv6_freebind" | "sockopt_buf_lock" => {
            static SOCKETS: std::sync::OnceLock<Vec<(&str, Result<String, String>)>> =
                std::sync::OnceLock::new();
            SOCKETS
                .get_or_init(crate::kinds::inet_sk::features)
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| r.clone())?
        }
        "overlayfs_maps" => not_in_cryo("not checked by cryo: it reopens mapped files by path"),
        "breakpoints" => not_in_cryo("hardware breakpoints (debug registers) are not saved by cryo"),
        "pagemap_scan_guard_pages" => match sys::mem::guard_pages_reported() {
            Ok(true) => Ok("PAGEMAP_SCAN reports guard regions (MADV_GUARD_INSTALL)".into()),
            Ok(false) => Err("PAGEMAP_SCAN does not report guard regions; needs Linux 6.14+".into()),
            Err(e) => Err(format!("guard regions cannot be probed ({e}); need Linux 6.14+")),
        },
        _ => return None,
    };
    let name: &'static str = CRIU_FEATURES
        .iter()
        .chain(REQUIRED)
        .find(|n| **n == name)
        .copied()?;
    Some(match r {
        Ok(detail) => Feature {
            name,
            ok: true,
            category,
            required: category == Category::Required,
            detail,
        },
        Err(detail) => Feature {
            name,
            ok: false,
            category,
            required: category == Category::Required,
            detail,
        },
    })
}

/// Runs every probe: cryo's required ones first, then the rest of CRIU's names.
pub fn probe_all() -> Vec<Feature> {
    let mut v: Vec<Feature> = REQUIRED.iter().filter_map(|n| probe(n)).collect();
    v.extend(
        CRIU_FEATURES
            .iter()
            .filter(|n| !REQUIRED.contains(n))
            .filter_map(|n| probe(n)),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_criu_name_is_answered() {
        for n in CRIU_FEATURES {
            assert!(probe(n).is_some(), "{n}");
        }
        assert!(probe("bogus").is_none());
        // What runc and podman ask before they use lazy pages (Linux 4.11+ with the events).
        assert!(probe("uffd-noncoop").unwrap().ok);
        // uffd-wp on 6.7+ kernels (this VM), soft-dirty elsewhere; either way it names itself.
        assert!(probe("mem_dirty_track")
            .unwrap()
            .detail
            .contains("soft-dirty is"));
        assert!(probe("external_net_ns").unwrap().ok);
    }
}
