//! Namespaces a tree owns:
//! - UTS: hostname and domainname, saved once per namespace as `utsns-ID.img` (ID is the
//!   `uts_ns_id` of `ids-PID.img`), read with `uname` run inside the task;
//! - IPC: the new namespace itself (`restore_ipc`); its contents (SysV objects, sysctls)
//!   are `kinds/ipc.rs`.
//! - net: an external namespace (`--external net[INO]:KEY`) or `--empty-ns net` is saved as a
//!   `netns-ID.img` entry only; any other namespace of the tree with its contents
//!   (`kinds/netns.rs`); restore makes a new namespace and rebuilds it, or joins the one
//!   given for an external key.
//!
//! Restore gives a task a new namespace (`unshare` inside the puppet, then the UTS names)
//! when its namespace differs from the one it inherits: cryo's for the root, its parent's
//! for a child; children forked afterwards inherit it. The time namespace is here too
//! (`dump_time`, `restore_time`); PID, mount and cgroup namespaces are in `restore` and
//! `kinds/mounts.rs`, `kinds/cgroup.rs`.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use rustix::time::ClockId;

use super::{DumpCx, RestoreCx, Syscalls, TaskImages};
use crate::image::{self, pb};

/// Why a namespace could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The contents of a network namespace (`kinds/netns.rs`).
    #[error(transparent)]
    Netns(#[from] super::netns::NetnsError),
}
task_error_from!(NsError, no_failure);

impl super::error::Failure for NsError {
    fn hint(&self) -> Option<String> {
        match self {
            NsError::Task(e) => e.hint(),
            NsError::Netns(e) => e.hint(),
        }
    }
}

/// The namespace id cryo itself has for `kind` ("uts", ...), as `task_ids` computes ids.
pub fn own_ns_id(kind: &str) -> Option<u32> {
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .ok()
        .map(|m| super::misc::ns_id(m.ino()))
}

/// Saves the hostname and domainname of the task's UTS namespace, once per namespace.
pub fn dump_uts(cx: &mut DumpCx<'_>, img: &TaskImages) -> Result<(), NsError> {
    let Some(id) = img.ids.uts_ns_id else {
        return Ok(());
    };
    if Some(id) == own_ns_id("uts") || cx.files.utsns.iter().any(|(i, _)| *i == id) {
        return Ok(());
    }
    let buf = cx.scratch()?;
    cx.uname(buf)?;
    // struct utsname: six 65-byte fields; nodename is the 2nd, domainname the 6th.
    let mut u = vec![0u8; 6 * 65];
    cx.peek(buf, &mut u, "reading utsname")?;
    let field = |i: usize| {
        let f = &u[i * 65..(i + 1) * 65];
        let end = f.iter().position(|&b| b == 0).unwrap_or(65);
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    cx.files.utsns.push((
        id,
        pb::UtsnsEntry {
            nodename: field(1),
            domainname: field(5),
        },
    ));
    Ok(())
}

/// Saves a network namespace of the tree (not cryo's) once: its contents
/// (`kinds::netns`), or only its key when external (`--external net[INO]:KEY`), or nothing
/// with `--empty-ns net`.
pub fn dump_net(cx: &mut DumpCx<'_>, img: &TaskImages) -> Result<(), NsError> {
    let Some(id) = img.ids.net_ns_id else {
        return Ok(());
    };
    if Some(id) == own_ns_id("net")
        || cx.files.netns_content.iter().any(|d| d.id == id)
        || cx.files.netns.iter().any(|(i, _)| *i == id)
    {
        return Ok(());
    }
    let pid = cx.pid;
    let d = dump_net_of(pid, id, cx.files)?;
    if let Some(d) = d {
        cx.files.netns_content.push(d);
    }
    Ok(())
}

/// The part of [`dump_net`] that needs no injection (`dump::run` calls it for the root's
/// namespace before the network is locked): external and empty namespaces are recorded in
/// `files.netns`; the contents of any other are returned.
pub fn dump_net_of(
    pid: i32,
    id: u32,
    files: &mut super::FileTable,
) -> Result<Option<super::netns::NetnsDump>, NsError> {
    let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .unwrap_or(0);
    // External (the caller gives one at restore) or empty: nothing of it is saved.
    if let Some(key) = files.external_net.get(&ino).cloned() {
        let e = pb::NetnsEntry {
            ext_key: Some(key),
            ..Default::default()
        };
        files.netns.push((id, e));
        return Ok(None);
    }
    if files.empty_net {
        files.netns.push((id, pb::NetnsEntry::default()));
        return Ok(None);
    }
    let host = own_ns_id("net").unwrap_or(0);
    Ok(Some(super::netns::dump(pid, id, host, &files.tree)?))
}

/// Namespaces the restored tree joins instead of getting new ones.
#[derive(Debug, Clone, Default)]
pub struct NsJoin {
    /// `--join-ns net:PATH`: the root's network namespace.
    pub net: Option<std::path::PathBuf>,
    /// `--join-ns ipc:PATH`: the root's IPC namespace (its contents are not restored).
    pub ipc: Option<std::path::PathBuf>,
    /// `--join-ns uts:PATH`: the root's UTS namespace (its names are not set).
    pub uts: Option<std::path::PathBuf>,
    /// `--join-ns mnt:PATH`: the root's mount namespace, joined whatever the tree had (its
    /// saved mounts are not rebuilt), as CRIU does.
    pub mnt: Option<std::path::PathBuf>,
    /// `--join-ns time:PATH`: the root's time namespace, joined whatever the tree had (its
    /// saved clocks are not set), as CRIU does.
    pub time: Option<std::path::PathBuf>,
    /// External namespaces by the key they were saved with (`--inherit-fd fd[N]:KEY` gives
    /// `/proc/self/fd/N`).
    pub by_key: HashMap<String, std::path::PathBuf>,
}

/// Gives the puppet a new, empty network namespace when `img`'s differs from the inherited
/// one (the caller locks it, then rebuilds it from the images with
/// `kinds::netns::restore`: links, addresses, routes, rules, sysctls, firewall); or joins the
/// one the caller gives (`join`), which an external namespace requires, or the one of the
/// tree another restored task is in already. Returns which of these it did.
pub fn restore_net(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<u32>,
    is_root: bool,
    join: &NsJoin,
) -> Result<NetEntered, NsError> {
    let Some(id) = img.ids.net_ns_id.filter(|&id| Some(id) != inherited) else {
        return Ok(NetEntered::Inherited);
    };
    // A namespace of the tree another restored task is in already (a child that went back
    // to an ancestor's namespace, zdtm netns_sub): joined, not made a second time.
    let made = cx.objs.borrow().net_ns_host.get(&id).copied();
    if let Some(p) = made {
        let path = format!("/proc/{p}/ns/net");
        let f = std::fs::File::open(&path).map_err(|source| TaskError::Object {
            id,
            what: format!("open the restored network namespace ({path})"),
            source,
        })?;
        cx.join_ns(f.as_fd(), libc::CLONE_NEWNET, "setns(CLONE_NEWNET)")?;
        return Ok(NetEntered::Joined);
    }
    // One made and rebuilt ahead, for a socket of it an earlier process holds
    // (`FdObjects::net_ns_made`): joined.
    let ahead = cx
        .objs
        .borrow()
        .net_ns_made
        .get(&id)
        .map(std::fs::File::try_clone);
    if let Some(f) = ahead {
        let f = f.map_err(|source| TaskError::Object {
            id,
            what: "hold the network namespace made ahead".into(),
            source,
        })?;
        cx.join_ns(f.as_fd(), libc::CLONE_NEWNET, "setns(CLONE_NEWNET)")?;
        return Ok(NetEntered::Joined);
    }
    let ns: Option<pb::NetnsEntry> = cx
        .dir
        .read_opt::<pb::NetnsEntry>(&format!("netns-{id}.img"), image::NETNS)?
        .and_then(|v| v.into_iter().next());
    let key = ns.as_ref().and_then(|n| n.ext_key.clone());
    // --join-ns is for the tree's own namespace: the one the root has (a child's namespace
    // of its own is new again).
    let root_ns = is_root;
    let path = join
        .net
        .clone()
        .filter(|_| root_ns)
        .or_else(|| key.as_ref().and_then(|k| join.by_key.get(k).cloned()));
    if let (Some(k), None) = (&key, &path) {
        return Err(Unsupported::restore(format!(
            "the network namespace was saved as external with key '{k}': give the one to join with --join-ns net:PATH (or --inherit-fd fd[N]:{k})"
        )).into());
    }
    if let Some(p) = path {
        let f = std::fs::File::open(&p).map_err(|source| TaskError::Object {
            id,
            what: format!("open network namespace {}", p.display()),
            source,
        })?;
        cx.join_ns(f.as_fd(), libc::CLONE_NEWNET, "setns(CLONE_NEWNET)")?;
        return Ok(NetEntered::Joined);
    }
    cx.unshare(libc::CLONE_NEWNET)?;
    let path = format!("/proc/{}/ns/net", cx.pid);
    let f = std::fs::File::open(&path).map_err(|source| TaskError::Object {
        id,
        what: format!("open the new network namespace ({path})"),
        source,
    })?;
    Ok(NetEntered::Made { id, ns: f })
}

/// What [`restore_net`] did for a task.
#[derive(Debug)]
pub enum NetEntered {
    /// The task stays in the namespace it inherits.
    Inherited,
    /// It joined a namespace that exists (--join-ns, an external key, or one of the tree
    /// restored for another task).
    Joined,
    /// It is in a new, empty namespace: links, addresses, routes and firewall are made by
    /// [`super::netns::restore`] once the caller has locked it, so that no packet meets the
    /// namespace's addresses before its sockets exist (a peer would get a reset).
    Made { id: u32, ns: std::fs::File },
}

impl NetEntered {
    /// Whether the task is in a namespace other than the one it inherits.
    pub fn is_own(&self) -> bool {
        !matches!(self, NetEntered::Inherited)
    }
}

/// Gives the puppet a new, empty IPC namespace when `img`'s differs from the inherited one
/// (`ipc::restore` fills it next).
/// With `join` (the root's `--join-ns ipc:PATH`) it joins that one instead; returns whether
/// it did (its contents are then the owner's, not restored).
pub fn restore_ipc(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<u32>,
    join: Option<&std::path::Path>,
) -> Result<bool, NsError> {
    match img.ids.ipc_ns_id {
        Some(id) if Some(id) != inherited => {
            if let Some(p) = join {
                join_path(cx, id, p, libc::CLONE_NEWIPC, "setns(CLONE_NEWIPC)")?;
                return Ok(true);
            }
            cx.unshare(libc::CLONE_NEWIPC)?;
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// Makes the puppet join the namespace at `path` (of kind `flag`).
pub fn join_path(
    cx: &mut RestoreCx<'_>,
    id: u32,
    path: &std::path::Path,
    flag: i32,
    what: &'static str,
) -> Result<(), NsError> {
    let f = std::fs::File::open(path).map_err(|source| TaskError::Object {
        id,
        what: format!("open the namespace to join {}", path.display()),
        source,
    })?;
    Ok(cx.join_ns(f.as_fd(), flag, what)?)
}

/// Gives the puppet a new UTS namespace with the saved names when `img`'s differs from the
/// one it has now (`inherited`: its parent's id, or cryo's for the root).
/// With `join` (the root's `--join-ns uts:PATH`) it joins that one instead.
pub fn restore_uts(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<u32>,
    join: Option<&std::path::Path>,
) -> Result<(), NsError> {
    let Some(id) = img.ids.uts_ns_id else {
        return Ok(());
    };
    if Some(id) == inherited {
        return Ok(());
    }
    if let Some(p) = join {
        return join_path(cx, id, p, libc::CLONE_NEWUTS, "setns(CLONE_NEWUTS)");
    }
    let e: pb::UtsnsEntry = cx.dir.read_one(&format!("utsns-{id}.img"), image::UTSNS)?;
    cx.unshare(libc::CLONE_NEWUTS)?;
    let a = cx.put(0, e.nodename.as_bytes())?;
    cx.sethostname(a, e.nodename.len() as u64)?;
    let a = cx.put(0, e.domainname.as_bytes())?;
    cx.setdomainname(a, e.domainname.len() as u64)?;
    Ok(())
}

/// Reads `/proc/PID/timens_offsets`: (monotonic, boottime) offsets in nanoseconds.
fn timens_offsets(pid: &str) -> Option<(i128, i128)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).ok()?;
    let mut m = None;
    let mut b = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let ns = f[1].parse::<i128>().ok()? * 1_000_000_000 + f[2].parse::<i128>().ok()?;
        match f[0] {
            "monotonic" | "1" => m = Some(ns),
            "boottime" | "7" => b = Some(ns),
            _ => {}
        }
    }
    Some((m?, b?))
}

fn clock_ns(clock: ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(clock);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn to_timespec(ns: i128) -> pb::Timespec {
    pb::Timespec {
        // A clock of the tree: not negative, and far below 2^64 seconds.
        tv_sec: u64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0),
        tv_nsec: u64::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn from_timespec(t: &pb::Timespec) -> i128 {
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// The clocks of `pid`'s time namespace now, as CRIU saves them (`timens-ID.img`): its
/// monotonic and boot-time clocks, so restore can make them go on from these values.
/// Refuses a task whose children would get another time namespace than its own.
pub fn dump_time(pid: i32) -> Result<pb::TimensEntry, NsError> {
    let ino = |n: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{n}"))
            .map(|m| m.ino())
            .ok()
    };
    if ino("time") != ino("time_for_children") {
        return Err(Unsupported::of(
            pid,
            "time namespace",
            "its children would start in another time namespace than its own",
            "dump it once it has forked into the new namespace",
        )
        .into());
    }
    let (their_m, their_b) = timens_offsets(&pid.to_string())
        .ok_or(TaskError::Internal("cannot read /proc/PID/timens_offsets"))?;
    let (own_m, own_b) = timens_offsets("self").unwrap_or((0, 0));
    Ok(pb::TimensEntry {
        monotonic: to_timespec(clock_ns(ClockId::Monotonic) - own_m + their_m),
        boottime: to_timespec(clock_ns(ClockId::Boottime) - own_b + their_b),
    })
}

/// Puts the puppet in a new time namespace whose clocks go on from the saved values (the
/// time the tree spent frozen does not count), when `img`'s differs from the inherited one.
/// Runs before its vDSO is mapped.
pub fn restore_time(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<u32>,
) -> Result<(), NsError> {
    let Some(id) = img.ids.time_ns_id.filter(|&id| Some(id) != inherited) else {
        return Ok(());
    };
    let e: pb::TimensEntry = cx
        .dir
        .read_one(&format!("timens-{id}.img"), image::TIMENS)?;
    cx.unshare(libc::CLONE_NEWTIME)?;
    let (own_m, own_b) = timens_offsets("self").unwrap_or((0, 0));
    let m = from_timespec(&e.monotonic) - (clock_ns(ClockId::Monotonic) - own_m);
    let b = from_timespec(&e.boottime) - (clock_ns(ClockId::Boottime) - own_b);
    let ts = |ns: i128| {
        format!(
            "{} {}",
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000)
        )
    };
    let text = format!(
        "{} {}\n{} {}\n",
        libc::CLOCK_MONOTONIC,
        ts(m),
        libc::CLOCK_BOOTTIME,
        ts(b)
    );
    let path = format!("/proc/{}/timens_offsets", cx.pid);
    std::fs::write(&path, text).map_err(|source| TaskError::Object {
        id,
        what: format!("set the time namespace's clock offsets ({path})"),
        source,
    })?;
    let ns = std::fs::File::open(format!("/proc/{}/ns/time_for_children", cx.pid)).map_err(
        |source| TaskError::Object {
            id,
            what: "open the new time namespace".into(),
            source,
        },
    )?;
    Ok(cx.join_ns(ns.as_fd(), libc::CLONE_NEWTIME, "setns(CLONE_NEWTIME)")?)
}

thread_local! {
    static IN_NS_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` on a thread of its own in the held mount namespace `at` of the tree, with its
/// process's root as root and working directory; the thread keeps the caller's other
/// namespaces (network). cryo's own threads are not moved.
pub fn in_mnt_ns<T: Send>(
    at: &super::files::MntNsHold,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    use crate::sys::ns::{setns, unshare, NsType, UnshareFlags};
    std::thread::scope(|sc| {
        sc.spawn(|| {
            unshare(UnshareFlags::FS)?;
            setns(at.ns.as_fd(), NsType::Mount)?;
            rustix::process::fchdir(&at.root)?;
            rustix::process::chroot(".")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("helper thread panicked")))
    })
}

/// cryo's calling thread, moved into the network (and, with `mnt`, mount) namespace of
/// `pid` until dropped, so the objects it makes there (unix sockets, FIFOs opened by path,
/// sock_diag queries) belong to the tree and its paths resolve as the tree sees them. The
/// thread gets a private fs context first (a mount namespace can only be entered by a
/// thread that shares it with nobody); drop returns to cryo's namespaces and working
/// directory. Nested guards do nothing.
pub struct InNs {
    back: Option<(
        std::fs::File,
        Option<std::fs::File>,
        std::fs::File,
        std::fs::File,
    )>,
}

impl InNs {
    pub fn enter(pid: i32, mnt: bool) -> std::io::Result<InNs> {
        InNs::enter_split(pid, mnt.then_some(pid))
    }

    /// As [`InNs::enter`], with the network namespace of `net_pid` and the mount namespace
    /// of `mnt_pid` (a task of the tree in a network namespace other than the root's).
    pub fn enter_split(net_pid: i32, mnt_pid: Option<i32>) -> std::io::Result<InNs> {
        if IN_NS_DEPTH.with(|d| d.get()) > 0 {
            IN_NS_DEPTH.with(|d| d.set(d.get() + 1));
            return Ok(InNs { back: None });
        }
        let their_net = std::fs::File::open(format!("/proc/{net_pid}/ns/net"))?;
        Self::enter_net_fd(their_net, mnt_pid)
    }

    /// As [`InNs::enter_split`], with the network namespace `their_net` (an fd of it, e.g.
    /// the one `SIOCGSKNS` gives for a socket made in a namespace no process is in now).
    pub fn enter_net_fd(their_net: std::fs::File, mnt_pid: Option<i32>) -> std::io::Result<InNs> {
        use crate::sys::ns::{setns, unshare, NsType, UnshareFlags};
        if IN_NS_DEPTH.with(|d| d.get()) > 0 {
            IN_NS_DEPTH.with(|d| d.set(d.get() + 1));
            return Ok(InNs { back: None });
        }
        let open = |p: String| std::fs::File::open(p);
        let their_mnt = match mnt_pid {
            Some(pid) => Some(open(format!("/proc/{pid}/ns/mnt"))?),
            None => None,
        };
        let own_net = open("/proc/thread-self/ns/net".into())?;
        let own_mnt_file = open("/proc/thread-self/ns/mnt".into())?;
        // Only a mount namespace other than cryo's is entered.
        let their_mnt = their_mnt.filter(|t| {
            let ino = |f: &std::fs::File| f.metadata().map(|m| m.ino()).ok();
            ino(t) != ino(&own_mnt_file)
        });
        let mnt = their_mnt.is_some();
        let own_mnt = mnt.then_some(own_mnt_file);
        let cwd = open(".".into())?;
        let root = open("/proc/thread-self/root".into())?;
        if mnt {
            unshare(UnshareFlags::FS)?;
        }
        setns(their_net.as_fd(), NsType::Network)?;
        let guard = InNs {
            back: Some((own_net, own_mnt, cwd, root)),
        };
        IN_NS_DEPTH.with(|d| d.set(1));
        if let Some(m) = &their_mnt {
            setns(m.as_fd(), NsType::Mount)?; // the guard goes back on error
        }
        Ok(guard)
    }
}

impl Drop for InNs {
    fn drop(&mut self) {
        use crate::sys::ns::{setns, NsType};
        IN_NS_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some((net, mnt, cwd, root)) = self.back.take() {
            let back = (|| -> std::io::Result<()> {
                if let Some(m) = mnt {
                    setns(m.as_fd(), NsType::Mount)?;
                    // setns reset the root to the namespace's: cryo's own, if it had one.
                    rustix::process::fchdir(&root)?;
                    rustix::process::chroot(".")?;
                }
                setns(net.as_fd(), NsType::Network)?;
                Ok(rustix::process::fchdir(&cwd)?)
            })();
            if let Err(e) = back {
                // Going on would resolve cryo's own paths in the tree's namespaces. The
                // puppets die with cryo (PTRACE_O_EXITKILL), so nothing is left behind.
                tracing::error!(error = %e, "cannot return to cryo's namespaces; aborting");
                std::process::abort();
            }
        }
    }
}
