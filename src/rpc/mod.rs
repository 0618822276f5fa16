//! `cryo swrk FD`: CRIU's RPC service, as container runtimes and go-criu/libcriu drive it.
//!
//! One request per process over the SOCK_SEQPACKET socket at FD: a `criu_req` (VERSION,
//! FEATURE_CHECK, CHECK, DUMP, RESTORE, PRE_DUMP and SINGLE_PRE_DUMP; after a PRE_DUMP, as
//! CRIU, more PRE_DUMPs and a final DUMP on the same socket), then, for DUMP and RESTORE
//! with `notify_scripts`, NOTIFY round trips at every action point (each must be
//! acknowledged with `notify_success`), then one `criu_resp`. Paths come as fds in the
//! *caller's* table (`images_dir_fd`, `work_dir_fd`), reached through
//! `/proc/<peer>/fd/<n>` with the peer pid from `SO_PEERCRED`. Options cryo cannot honour
//! are refused by name in `cr_errmsg`, never ignored.
//!
//! What container runtimes send (runc 1.1.5): `root` (the restore's new root), `ext_mnt` and
//! `external mnt[..]` (external bind mounts: at DUMP mount point → name, at RESTORE name →
//! host path), `inherit_fd` (`pipe:[INO]` → one of cryo's own fds, the container's stdio;
//! `extRootNetNS`, `extRootPidNS` → a network or PID namespace to join), `external
//! net[INO]:KEY` and `pid[INO]:KEY`, `join_ns` net, ipc and uts,
//! `empty_ns` (CLONE_NEWNET only), `orphan_pts_master` (the new pty master goes back in an
//! `orphan-pts-master` NOTIFY), `status_fd`, `rst_sibling` (see `do_restore`), and the cgroup
//! options (`cgroup_mode`, `kinds::cgroup`). containerd's runc adds `file_locks`
//! (`kinds::locks`) and `leave_running`, and the cgroup it names in `freeze_cgroup` is
//! already frozen (containerd pauses the task first): it is left frozen.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use prost::Message;

use crate::image::{pb, ImageDir};
use crate::notify::{ActionScripts, Chain, NoHooks, Notifier, NotifyError};
use crate::sys::net;
use crate::{dump, features, kinds, restore};

pub mod config;

/// The CRIU version cryo answers VERSION with (runc needs at least 3.0.0; 3.17.1 or higher
/// keeps every runtime's feature gates open).
const VERSION: (i32, i32, i32) = (4, 2, 0);

/// Why the service failed to run at all (errors of a request go back in `criu_resp`).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("swrk socket fd {fd}: {source}")]
    Socket {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("the request is not a criu_req: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the caller closed the socket before sending a request")]
    NoRequest,
}

/// Sends NOTIFY messages and waits for the caller's acknowledgement: the pipeline's points
/// (`network-lock`/`network-unlock` among them, sent by the pipelines when the tree has a
/// network namespace of its own, as CRIU), and, before `post-restore`, one
/// `orphan-pts-master` per pty master kept for the caller, carrying it as the only
/// SCM_RIGHTS fd.
pub struct RpcNotifier<'a> {
    sk: BorrowedFd<'a>,
    /// RESTORE with `orphan_pts_master`.
    orphan_pts_master: bool,
}

impl RpcNotifier<'_> {
    fn send(
        &mut self,
        action: &str,
        pid: Option<i32>,
        pass: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError> {
        let fail = |why: String| NotifyError::Rpc {
            action: action.to_string(),
            why,
        };
        let resp = pb::CriuResp {
            r#type: pb::CriuReqType::Notify as i32,
            success: true,
            notify: Some(pb::CriuNotify {
                script: Some(action.to_string()),
                pid,
            }),
            ..Default::default()
        };
        net::send_msg(self.sk, &resp.encode_to_vec(), pass)
            .map_err(|e| fail(format!("send: {e}")))?;
        let raw = net::recv_msg(self.sk).map_err(|e| fail(format!("receive: {e}")))?;
        if raw.is_empty() {
            return Err(fail("the caller closed the socket".into()));
        }
        let ack = pb::CriuReq::decode(raw.as_slice()).map_err(|e| fail(e.to_string()))?;
        if ack.r#type != pb::CriuReqType::Notify as i32 || ack.notify_success != Some(true) {
            return Err(fail("the caller refused it".into()));
        }
        Ok(())
    }
}

impl Notifier for RpcNotifier<'_> {
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError> {
        if action == "post-restore" && self.orphan_pts_master {
            for m in crate::kinds::tty::take_orphan_masters() {
                self.send("orphan-pts-master", None, Some(m.as_fd()))?;
            }
        }
        self.send(action, pid, None)
    }
}

/// Serves one request on socket `fd`. Returns whether it succeeded (the exit status).
pub fn serve(fd: i32) -> Result<bool, RpcError> {
    let sk = take_fd(fd)?;
    let mut first = true;
    loop {
        let raw = net::recv_msg(sk.as_fd()).map_err(|source| RpcError::Socket { fd, source })?;
        if raw.is_empty() {
            return if first {
                Err(RpcError::NoRequest)
            } else {
                Ok(true)
            };
        }
        first = false;
        let req = pb::CriuReq::decode(raw.as_slice())?;
        let ty = pb::CriuReqType::try_from(req.r#type).unwrap_or(pb::CriuReqType::Empty);
        // `keep_open`: CRIU serves more requests on the socket after a PAGE_SERVER(_CHLD)
        // (they only start a process); after any other request the service ends.
        let again = req.keep_open == Some(true)
            && matches!(
                ty,
                pb::CriuReqType::PageServer | pb::CriuReqType::PageServerChld
            );
        let ok = serve_one(&sk, fd, req)?;
        if !again || !ok {
            return Ok(ok);
        }
    }
}

/// One request (and, after a PRE_DUMP, CRIU's pre-dump loop); returns whether it succeeded.
fn serve_one(sk: &OwnedFd, fd: i32, req: pb::CriuReq) -> Result<bool, RpcError> {
    let ty = pb::CriuReqType::try_from(req.r#type).unwrap_or(pb::CriuReqType::Empty);
    let peer = net::peer_pid(sk.as_fd()).map_err(|source| RpcError::Socket { fd, source })?;
    let result = match ty {
        pb::CriuReqType::Version => Ok(pb::CriuResp {
            version: Some(pb::CriuVersion {
                major_number: VERSION.0,
                minor_number: VERSION.1,
                sublevel: Some(VERSION.2),
                name: Some("cryo".into()),
                ..Default::default()
            }),
            ..resp(ty, true)
        }),
        pb::CriuReqType::FeatureCheck => Ok(feature_check()),
        pb::CriuReqType::Check => {
            let missing: Vec<String> = features::probe_all()
                .into_iter()
                .filter(|f| f.required && !f.ok)
                .map(|f| format!("{}: {}", f.name, f.detail))
                .collect();
            if missing.is_empty() {
                Ok(resp(ty, true))
            } else {
                Err(format!("missing kernel features: {}", missing.join("; ")))
            }
        }
        pb::CriuReqType::Dump => do_dump(&req, peer, sk.as_fd(), false),
        pb::CriuReqType::Restore => do_restore(&req, peer, sk.as_fd()),
        pb::CriuReqType::PreDump | pb::CriuReqType::SinglePreDump => {
            do_dump(&req, peer, sk.as_fd(), true)
        }
        pb::CriuReqType::CpuinfoDump | pb::CriuReqType::CpuinfoCheck => do_cpuinfo(&req, peer, ty),
        pb::CriuReqType::PageServer | pb::CriuReqType::PageServerChld => do_page_server(&req, peer),
        _ => Err(format!(
            "request type {} is not supported by cryo",
            req.r#type
        )),
    };
    let ok = answer(sk.as_fd(), fd, ty, result)?;
    if ty != pb::CriuReqType::PreDump || !ok {
        return Ok(ok);
    }
    // CRIU's pre-dump loop: more PRE_DUMPs, then the DUMP, on the same socket (runc kills
    // the service after the first answer instead; the tracking lives in its own holder).
    loop {
        let raw = net::recv_msg(sk.as_fd()).map_err(|source| RpcError::Socket { fd, source })?;
        if raw.is_empty() {
            return Ok(true);
        }
        let req = pb::CriuReq::decode(raw.as_slice())?;
        let ty = pb::CriuReqType::try_from(req.r#type).unwrap_or(pb::CriuReqType::Empty);
        let result = match ty {
            pb::CriuReqType::PreDump => do_dump(&req, peer, sk.as_fd(), true),
            pb::CriuReqType::Dump => do_dump(&req, peer, sk.as_fd(), false),
            _ => Err("Bad req seq".to_string()),
        };
        let ok = answer(sk.as_fd(), fd, ty, result)?;
        if ty != pb::CriuReqType::PreDump || !ok {
            return Ok(ok);
        }
    }
}

/// Sends the answer to one request (an error as CRIU sends it); returns whether it succeeded.
fn answer(
    sk: BorrowedFd<'_>,
    fd: i32,
    ty: pb::CriuReqType,
    result: Result<pb::CriuResp, String>,
) -> Result<bool, RpcError> {
    let (out, ok) = match result {
        Ok(r) => (r, true),
        Err(msg) => {
            tracing::error!("{msg}");
            // An unknown type decodes as EMPTY, which is what CRIU answers it with.
            (
                pb::CriuResp {
                    cr_errno: Some(libc::EINVAL),
                    cr_errmsg: Some(msg),
                    ..resp(ty, false)
                },
                false,
            )
        }
    };
    net::send_msg(sk, &out.encode_to_vec(), None)
        .map_err(|source| RpcError::Socket { fd, source })?;
    Ok(ok)
}

fn resp(ty: pb::CriuReqType, success: bool) -> pb::CriuResp {
    pb::CriuResp {
        r#type: ty as i32,
        success,
        ..Default::default()
    }
}

fn take_fd(fd: i32) -> Result<OwnedFd, RpcError> {
    // The fd was handed over on the command line and must be a socket; cryo owns it now.
    let probe = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|source| RpcError::Socket { fd, source })?;
    if !probe.to_string_lossy().starts_with("socket:") {
        return Err(RpcError::Socket {
            fd,
            source: std::io::Error::other(format!("not a socket ({})", probe.display())),
        });
    }
    Ok(crate::sys::fd::adopt(fd))
}

/// FEATURE_CHECK: every feature answered (asked or not, as CRIU does) with what this kernel
/// and cryo can do.
fn feature_check() -> pb::CriuResp {
    pb::CriuResp {
        features: Some(pb::CriuFeatures {
            // Write tracking for pre-dumps: uffd-wp or soft-dirty (`memtrack`); without
            // either a chain still works but saves every page each step.
            mem_track: Some(crate::memtrack::Method::detect() != crate::memtrack::Method::Full),
            // Lazy restore (`lazy`): userfaultfd with the fork/remap/remove/unmap events,
            // probed as `check --feature uffd-noncoop` does.
            lazy_pages: Some(features::probe("uffd-noncoop").is_some_and(|f| f.ok)),
            // The pidfd store (pid reuse detection across pre-dumps) is not implemented.
            pidfd_store: Some(false),
        }),
        ..resp(pb::CriuReqType::FeatureCheck, true)
    }
}

/// The caller's fd `n`, as a path cryo can use.
fn caller_path(peer: i32, n: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{peer}/fd/{n}"))
}

/// CLONE_NEWNET, the only `empty_ns` bit cryo honours (a new network namespace holding a
/// loopback, as it makes for any tree with a namespace of its own).
const EMPTY_NS_NET: u32 = libc::CLONE_NEWNET as u32;

/// `tcp_established`, `tcp_close`, `tcp_skip_in_flight`, `ext_unix_sk`.
fn sock_opts(o: &pb::CriuOpts) -> kinds::files::SockOpts {
    let on = |b: Option<bool>| b == Some(true);
    kinds::files::SockOpts {
        tcp_established: on(o.tcp_established),
        tcp_close: on(o.tcp_close),
        skip_in_flight: on(o.tcp_skip_in_flight),
        ext_unix_sk: on(o.ext_unix_sk),
    }
}

/// Refuses the options cryo cannot honour, by name.
fn refuse_unsupported(o: &pb::CriuOpts, restore: bool) -> Result<(), String> {
    let mut bad: Vec<String> = Vec::new();
    let on = |b: Option<bool>| b == Some(true);
    if !o.unix_sk_ino.is_empty() {
        bad.push(
            "unix_sk_ino (external unix sockets by inode are not supported; ext_unix_sk is)".into(),
        );
    }
    // tcp_established, tcp_skip_in_flight, tcp_close, ext_unix_sk (sock_opts) and
    // link_remap are honoured; evasive_devices and force_irmap tune nothing cryo does:
    // accepted, as on the command line.
    if on(o.auto_dedup) {
        bad.push("auto_dedup (deduplication of parent images is not implemented yet)".into());
    }
    if let Err(e) = mount_pairs(o) {
        bad.push(e);
    }
    if let Err(e) = net_externals(o) {
        bad.push(e);
    }
    for i in &o.inherit_fd {
        if !restore {
            bad.push(format!("inherit_fd {} (a restore option)", i.key));
        }
    }
    for j in &o.join_ns {
        if !matches!(j.ns.as_str(), "net" | "ipc" | "uts" | "mnt" | "time") {
            bad.push(format!(
                "join_ns {} (network, IPC, UTS, mount and time namespaces can be joined; a PID namespace is external: external pid[INO]:KEY and inherit_fd)",
                j.ns
            ));
        }
    }
    if let Some(f) = o.empty_ns.filter(|f| f & !EMPTY_NS_NET != 0) {
        bad.push(format!(
            "empty_ns {f:#x} (only CLONE_NEWNET, a new network namespace with a loopback, is supported)"
        ));
    }
    if o.cgroup_props.is_some()
        || o.cgroup_props_file.is_some()
        || !o.cgroup_dump_controller.is_empty()
    {
        bad.push("cgroup_props/cgroup_props_file/cgroup_dump_controller (cryo saves a fixed set of cgroup limits)".into());
    }
    if let Some(y) = &o.cgroup_yard {
        crate::kinds::cgroup::set_yard(PathBuf::from(y));
    }
    if o.lsm_profile
        .as_deref()
        .is_some_and(|p| !p.is_empty() && p != "none")
        || o.lsm_mount_context
            .as_deref()
            .is_some_and(|p| !p.is_empty())
    {
        bad.push("lsm_profile/lsm_mount_context (LSM profiles are not implemented yet)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("options not supported by cryo: {}", bad.join("; ")))
    }
}

/// The mount pairs of `ext_mnt` (`{key, val}`) and of `external` strings `mnt[A]:B`: at
/// DUMP (container mount point, name), at RESTORE (name, host path). Other `external` kinds
/// cryo cannot honour are an error naming them; kinds it does not look up (`console:...`)
/// are kept, as CRIU keeps them.
fn mount_pairs(o: &pb::CriuOpts) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = o
        .ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect();
    for e in &o.external {
        match crate::cli::External::parse(e).map_err(|m| format!("external {e}: {m}"))? {
            crate::cli::External::Mount(a, b) => out.push((a, b)),
            crate::cli::External::Refused(why) => return Err(format!("external {e} ({why})")),
            _ => {}
        }
    }
    Ok(out)
}

/// `auto_ext_mnt`, or `external` `mnt[]`: auto-detected external mounts.
fn auto_ext_mounts(o: &pb::CriuOpts) -> bool {
    o.auto_ext_mnt == Some(true)
        || o.external.iter().any(|e| {
            matches!(
                crate::cli::External::parse(e),
                Ok(crate::cli::External::MountAuto(_))
            )
        })
}

/// `enable_fs` values, split at commas.
fn enable_fs(o: &pb::CriuOpts) -> Vec<String> {
    o.enable_fs
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The network namespaces of `external` `net[INODE]:KEY` (runc sends
/// `net[INO]:extRootNetNS` when the config names a netns path), by inode.
fn net_externals(o: &pb::CriuOpts) -> Result<HashMap<u64, String>, String> {
    o.external
        .iter()
        .filter_map(|e| e.strip_prefix("net["))
        .map(|r| {
            r.split_once("]:")
                .and_then(|(ino, key)| Some((ino.parse::<u64>().ok()?, key.to_string())))
                .filter(|(_, k)| !k.is_empty())
                .ok_or_else(|| format!("external net[{r} (expected net[INODE]:KEY)"))
        })
        .collect()
}

/// The PID namespaces of `external` `pid[INODE]:KEY` (runc sends `pid[INO]:extRootPidNS`
/// when the config names a PID namespace path: a pod's), by inode.
fn pid_externals(o: &pb::CriuOpts) -> Result<HashMap<u64, String>, String> {
    o.external
        .iter()
        .filter_map(|e| e.strip_prefix("pid["))
        .map(|r| {
            r.split_once("]:")
                .and_then(|(ino, key)| Some((ino.parse::<u64>().ok()?, key.to_string())))
                .filter(|(_, k)| !k.is_empty())
                .ok_or_else(|| format!("external pid[{r} (expected pid[INODE]:KEY)"))
        })
        .collect()
}

/// What a RESTORE joins instead of creating: `join_ns` net, and `inherit_fd` entries that
/// name an external namespace (`extRootNetNS` → the fd, one of cryo's own).
fn ns_join(o: &pb::CriuOpts) -> crate::kinds::ns::NsJoin {
    let kind = |k: &str| {
        o.join_ns
            .iter()
            .find(|j| j.ns == k)
            .map(|j| PathBuf::from(&j.ns_file))
    };
    crate::kinds::ns::NsJoin {
        net: kind("net"),
        ipc: kind("ipc"),
        uts: kind("uts"),
        mnt: kind("mnt"),
        time: kind("time"),
        by_key: o
            .inherit_fd
            .iter()
            .filter(|i| !i.key.contains(':'))
            .map(|i| {
                (
                    i.key.clone(),
                    PathBuf::from(format!("/proc/self/fd/{}", i.fd)),
                )
            })
            .collect(),
    }
}

/// `status_fd`: CRIU writes one NUL byte to it when the job is done and closes it; the fd is
/// the caller's, reached through /proc.
fn signal_status_fd(o: &pb::CriuOpts, peer: i32) {
    if let Some(n) = o.status_fd {
        crate::notify::status_ready(&caller_path(peer, n));
    }
}

/// `network_lock` when given; cryo's default (nftables) otherwise.
fn network_lock(o: &pb::CriuOpts) -> Result<crate::netlock::Method, String> {
    match o.network_lock {
        Some(v) => crate::netlock::Method::from_rpc(v),
        None => Ok(crate::netlock::Method::default()),
    }
}

/// `veths` ({if_in, if_out}) and `external` `veth[IN]:OUT[@BRIDGE]` / `macvlan[IN]:LINK`.
fn link_opts(o: &pb::CriuOpts) -> Result<kinds::netns::LinkOpts, String> {
    let mut l = kinds::netns::LinkOpts::default();
    for v in &o.veths {
        l.add_veth(&v.if_in, &v.if_out);
    }
    for e in &o.external {
        l.add_external(e)?;
    }
    Ok(l)
}

/// `manage_cgroups` (legacy switch: soft or ignore), overridden by `manage_cgroups_mode`;
/// soft when neither is given, as CRIU.
fn cgroup_mode(o: &pb::CriuOpts) -> Result<kinds::cgroup::Mode, String> {
    if let Some(m) = o.manage_cgroups_mode {
        return kinds::cgroup::Mode::from_rpc(m);
    }
    Ok(match o.manage_cgroups {
        Some(false) => kinds::cgroup::Mode::Ignore,
        _ => kinds::cgroup::Mode::Soft,
    })
}

/// Opens the images directory and the log for a DUMP or RESTORE request; returns the images
/// directory, its path and the work directory's. Images: the request's `config_file`
/// `images-dir`, else `images_dir_fd`, else `images_dir`. Work: the `config_file`
/// `work-dir`, else `work_dir_fd`, else a default configuration file's `work-dir`, else the
/// images directory (CRIU's order).
fn setup(
    l: &config::Layered,
    peer: i32,
    create: bool,
) -> Result<(ImageDir, PathBuf, PathBuf), String> {
    let o = &l.opts;
    let images = if let Some(d) = &l.images_dir_from_rpc_conf {
        d.clone()
    } else if o.images_dir_fd >= 0 {
        caller_path(peer, o.images_dir_fd)
    } else if let Some(d) = &o.images_dir {
        PathBuf::from(d)
    } else {
        return Err("no images directory (images_dir_fd or images_dir)".into());
    };
    let dir = if create {
        ImageDir::create(&images)
    } else {
        ImageDir::open(&images)
    }
    .map_err(|e| e.to_string())?;
    let work = match (&l.work_dir, l.work_dir_from_rpc_conf, o.work_dir_fd) {
        (Some(w), true, _) => w.clone(),
        (_, _, Some(n)) => caller_path(peer, n),
        (Some(w), false, None) => w.clone(),
        (None, _, None) => images.clone(),
    };
    if let Some(f) = &o.log_file {
        if l.log_file_from_request && f.contains('/') {
            return Err(format!(
                "log_file {f:?} must be a plain name in the work directory"
            ));
        }
        // CRIU's RPC default level is 2; runtimes ask for 4.
        let _ = crate::logging::init(
            crate::num::c_uint(o.log_level.unwrap_or(2).max(0)),
            Some(&work.join(f)),
        );
    }
    for f in &l.files {
        tracing::debug!("Parsed config file {}", f.display());
    }
    Ok((dir, images, work))
}

/// CRIU writes `stats-dump` / `stats-restore` into the work directory, where podman reads
/// them (`--print-stats`) and takes `stats-dump` into a `--export` archive; cryo writes
/// them with the images, so a copy goes to a work directory of its own.
fn copy_stats(images: &std::path::Path, work: &std::path::Path, name: &str) {
    let same = match (images.canonicalize(), work.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return;
    }
    if let Err(e) = std::fs::copy(images.join(name), work.join(name)) {
        tracing::warn!(file = %name, work_dir = %work.display(), error = %e, "cannot copy into the work directory");
    }
}

/// The notifiers of a request: the caller's NOTIFY round trips if it asked for them, then
/// the configuration files' `action-script`s and those named in the environment's
/// `CRYO_ACTION_SCRIPTS` (colon-separated): CRIU runs both in RPC mode.
fn hooks<'a>(l: &config::Layered, sk: BorrowedFd<'a>, images: PathBuf) -> Box<dyn Notifier + 'a> {
    let o = &l.opts;
    let mut chain: Vec<Box<dyn Notifier + 'a>> = Vec::new();
    if o.notify_scripts == Some(true) {
        chain.push(Box::new(RpcNotifier {
            sk,
            orphan_pts_master: o.orphan_pts_master == Some(true),
        }));
    }
    let mut scripts: Vec<PathBuf> = l.action_scripts.clone();
    scripts.extend(
        std::env::var_os("CRYO_ACTION_SCRIPTS")
            .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    if !scripts.is_empty() {
        chain.push(Box::new(ActionScripts {
            scripts,
            images_dir: images,
        }));
    }
    if chain.is_empty() {
        Box::new(NoHooks)
    } else {
        Box::new(Chain(chain))
    }
}

/// `--cpu-cap` as RPC `cpu_cap` gives it: the checks asked for, and the image always (CRIU).
fn cpu_cap(o: &pb::CriuOpts) -> u32 {
    use kinds::cpuinfo::{CAP_ALL, CAP_IMAGE};
    o.cpu_cap.map_or(0, |c| (c & CAP_ALL) | CAP_IMAGE)
}

/// CPUINFO_DUMP and CPUINFO_CHECK: cpuinfo.img written, or checked against this CPU (a CPU
/// that cannot run the images is `success=false` with `cr_errno` ENOTSUP, as CRIU answers).
fn do_cpuinfo(req: &pb::CriuReq, peer: i32, ty: pb::CriuReqType) -> Result<pb::CriuResp, String> {
    let l = config::layer(req.opts.as_ref().ok_or("CPUINFO request without options")?)?;
    let dump = ty == pb::CriuReqType::CpuinfoDump;
    let (dir, _, _) = setup(&l, peer, dump)?;
    if dump {
        kinds::cpuinfo::dump(&dir).map_err(|e| e.to_string())?;
        return Ok(resp(ty, true));
    }
    // CRIU's default checks without `cpu_cap`; with it, the ones it names.
    let cap = l
        .opts
        .cpu_cap
        .map_or(kinds::cpuinfo::CAP_DEFAULT, |c| c & kinds::cpuinfo::CAP_ALL);
    match kinds::cpuinfo::check(&dir, cap) {
        Ok(()) => Ok(resp(ty, true)),
        Err(e) => Ok(pb::CriuResp {
            cr_errno: Some(libc::ENOTSUP),
            cr_errmsg: Some(e.to_string()),
            ..resp(ty, false)
        }),
    }
}

/// PAGE_SERVER and PAGE_SERVER_CHLD: a page server (`cryo page-server`) receiving into the
/// images directory, listening at `ps.address`/`ps.port` (port 0: one the kernel picks) before
/// the answer goes back with its pid and port, as CRIU answers (type PAGE_SERVER for both).
/// It is a process of its own in either case (CRIU's PAGE_SERVER daemonizes, its
/// PAGE_SERVER_CHLD stays the service's child; both outlive the request), serving one
/// client, then exiting.
fn do_page_server(req: &pb::CriuReq, peer: i32) -> Result<pb::CriuResp, String> {
    let l = config::layer(req.opts.as_ref().ok_or("PAGE_SERVER without options")?)?;
    let o = l.opts.clone();
    let (_, images, work) = setup(&l, peer, true)?;
    let ps = o.ps.clone().unwrap_or_default();
    let port = ps.port.unwrap_or(0);
    let addr = crate::pageserver::address(ps.address.as_deref(), Some(&port.to_string()), true)?;
    let listener = std::net::TcpListener::bind(&addr)
        .map_err(|e| format!("page server: cannot listen at {addr}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    // The caller's fds (`/proc/<peer>/fd/<n>`) may be closed once it has the answer: the
    // server gets the directories they name.
    let real =
        |p: &std::path::Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut cmd = std::process::Command::new(
        std::env::current_exe().map_err(|e| format!("cannot find cryo itself: {e}"))?,
    );
    cmd.arg("page-server").arg("-D").arg(real(&images)?);
    if let Some(f) = &o.log_file {
        cmd.arg("-W").arg(real(&work)?).arg("-o").arg(f);
        cmd.arg(format!("-v{}", o.log_level.unwrap_or(2).clamp(0, 4)));
    }
    if let Some(p) = &o.parent_img {
        cmd.arg("--prev-images-dir").arg(p);
    }
    crate::sys::fd::set_cloexec(listener.as_fd(), false).map_err(|e| e.to_string())?;
    let child = cmd
        .env(
            crate::pageserver::LISTEN_FD_ENV,
            std::os::fd::AsRawFd::as_raw_fd(&listener).to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("page server: cannot start it: {e}"))?;
    let pid = child.id();
    tracing::info!(pid, port, "page server started");
    // Reaped as soon as it exits while this service lives (it serves more requests with
    // `keep_open`): no zombie is left; once the service exits, init reaps it.
    reap_in_background(child);
    Ok(pb::CriuResp {
        ps: Some(pb::CriuPageServerInfo {
            pid: i32::try_from(pid).ok(),
            port: Some(i32::from(port)),
            ..Default::default()
        }),
        ..resp(pb::CriuReqType::PageServer, true)
    })
}

/// Waits for `child` in a thread of its own (which ends with it or with this process).
fn reap_in_background(mut child: std::process::Child) {
    let pid = child.id();
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || match child.wait() {
            Ok(st) => tracing::info!(pid, %st, "page server exited"),
            Err(e) => tracing::warn!(pid, error = %e, "page server: cannot wait for it"),
        });
    if let Err(e) = spawned {
        tracing::warn!(pid, error = %e, "page server: no thread to reap it");
    }
}

/// DUMP, or with `pre` PRE_DUMP / SINGLE_PRE_DUMP (answered with the request's type).
fn do_dump(
    req: &pb::CriuReq,
    peer: i32,
    sk: BorrowedFd<'_>,
    pre: bool,
) -> Result<pb::CriuResp, String> {
    let what = if pre {
        "PRE_DUMP without options"
    } else {
        "DUMP without options"
    };
    let l = config::layer(req.opts.as_ref().ok_or(what)?)?;
    let o = l.opts.clone();
    refuse_unsupported(&o, false)?;
    let (dir, images, work) = setup(&l, peer, true)?;
    let opts = dump::DumpOpts {
        // CRIU dumps the caller itself when no pid is given; cryo cannot freeze its caller.
        pid: o
            .pid
            .ok_or("DUMP needs opts.pid (cryo cannot dump the process that asks)")?,
        leave_running: o.leave_running == Some(true) || o.leave_stopped == Some(true),
        leave_stopped: o.leave_stopped == Some(true),
        shell_job: o.shell_job == Some(true),
        ghost_limit: o.ghost_limit.map(u64::from).unwrap_or(1 << 20),
        // Container mount point → name (runc also lists device paths that match no mount:
        // those are ignored, as CRIU does).
        mounts: kinds::mounts::MountPolicy {
            external: mount_pairs(&o)?.into_iter().collect(),
            auto_external: auto_ext_mounts(&o),
            enable_fs: enable_fs(&o),
            skip: o.skip_mnt.clone(),
            external_sharing: o.ext_sharing == Some(true),
            external_masters: o.ext_masters == Some(true),
        },
        external_net: net_externals(&o)?,
        external_pid: pid_externals(&o)?,
        // runc always asks: the container's netns is recreated empty (CRIU saves no links,
        // addresses or routes then either).
        empty_net: o.empty_ns.unwrap_or(0) & EMPTY_NS_NET != 0,
        freeze_cgroup: o.freeze_cgroup.as_ref().map(PathBuf::from),
        cgroup_mode: cgroup_mode(&o)?,
        // containerd's runc always asks (`--file-locks`).
        file_locks: o.file_locks == Some(true),
        network_lock: network_lock(&o)?,
        sock: sock_opts(&o),
        link_remap: o.link_remap == Some(true),
        prev_images_dir: o.parent_img.clone(),
        track_mem: o.track_mem == Some(true),
        // criu_pre_dump_mode: SPLICE = 1, READ = 2.
        pre_dump_mode: (o.pre_dump_mode == Some(2)).then(|| "read".to_string()),
        cpu_cap: cpu_cap(&o),
        timeout: o.timeout,
        // `lazy_pages` (runc's `checkpoint --lazy-pages --page-server ADDR:PORT`): `ps` is
        // where the lazy-pages daemon takes the pages from; `status_fd` is written once it
        // can (after the images, before the pages are served), as CRIU does.
        lazy_pages: match (&o.ps, o.lazy_pages == Some(true)) {
            (Some(ps), true) => Some(crate::pageserver::address(
                ps.address.as_deref(),
                ps.port.map(|p| p.to_string()).as_deref(),
                true,
            )?),
            (None, true) => {
                return Err("lazy_pages needs ps (the address and port the lazy-pages daemon takes the pages from)".into())
            }
            _ => None,
        },
        lazy_ready: o
            .status_fd
            .filter(|_| o.lazy_pages == Some(true))
            .map(|n| caller_path(peer, n)),
        lazy_connect_within: None,
        lazy_peer: None,
        // `ps` otherwise: the page server the pages go to (runc's --page-server ADDR:PORT).
        page_server: match &o.ps {
            Some(_) if o.lazy_pages == Some(true) => None,
            Some(ps) => Some(crate::pageserver::address(
                ps.address.as_deref(),
                ps.port.map(|p| p.to_string()).as_deref(),
                false,
            )?),
            None => None,
        },
    };
    let mut n = hooks(&l, sk, images.clone());
    if pre {
        let r =
            dump::predump::run(&opts, &dir, n.as_mut()).map_err(|e| error_text(&e, e.hint()))?;
        copy_stats(&images, &work, "stats-dump");
        tracing::info!("Pre-dumped {} (frozen {} us)", r.pid, r.frozen_us);
        let ty = pb::CriuReqType::try_from(req.r#type).unwrap_or(pb::CriuReqType::PreDump);
        return Ok(resp(ty, true));
    }
    let r = dump::run(&opts, &dir, n.as_mut()).map_err(|e| error_text(&e, e.hint()))?;
    copy_stats(&images, &work, "stats-dump");
    if opts.lazy_ready.is_none() {
        signal_status_fd(&o, peer);
    }
    tracing::info!(
        "Dumped {} in {} us (frozen {} us)",
        r.pid,
        r.total_us,
        r.frozen_us
    );
    Ok(pb::CriuResp {
        dump: Some(pb::CriuDumpResp {
            restored: Some(false),
        }),
        ..resp(pb::CriuReqType::Dump, true)
    })
}

fn do_restore(req: &pb::CriuReq, peer: i32, sk: BorrowedFd<'_>) -> Result<pb::CriuResp, String> {
    let l = config::layer(req.opts.as_ref().ok_or("RESTORE without options")?)?;
    let o = l.opts.clone();
    refuse_unsupported(&o, true)?;
    let (dir, images, work) = setup(&l, peer, false)?;
    // RPC restores always detach (CRIU forces it): the caller, not cryo, is the parent.
    let opts = restore::RestoreOpts {
        detach: true,
        leave_stopped: o.leave_stopped == Some(true),
        pidfile: None,
        shell_job: o.shell_job == Some(true),
        orphan_pts_master: o.orphan_pts_master == Some(true),
        // The caller (runc, crun) is the restored root's parent, as with CRIU.
        sibling: o.rst_sibling == Some(true),
        inherit_fd: o
            .inherit_fd
            .iter()
            .filter(|i| i.key.contains(':'))
            .map(|i| (i.key.clone(), i.fd))
            .collect(),
        join: ns_join(&o),
        mounts: crate::kinds::mounts::MountOpts {
            root: o.root.as_ref().map(PathBuf::from),
            // Name → host path (duplicates, e.g. runc's /dev/null, agree).
            external: mount_pairs(&o)?
                .into_iter()
                .map(|(k, v)| (k, PathBuf::from(v)))
                .collect(),
            enable_fs: enable_fs(&o),
            auto_external: auto_ext_mounts(&o),
        },
        cgroups: kinds::cgroup::CgOpts {
            mode: cgroup_mode(&o)?,
            roots: o
                .cg_root
                .iter()
                .map(|r| (r.ctrl.clone(), r.path.clone()))
                .collect(),
        },
        network_lock: network_lock(&o)?,
        links: link_opts(&o)?,
        sock: sock_opts(&o),
        // runc's `restore --lazy-pages`: the lazy-pages daemon (`cryo lazy-pages`, started
        // by the user) listens in the work directory, as CRIU's does.
        lazy_pages: (o.lazy_pages == Some(true)).then(|| crate::lazy::socket_path(&work)),
        cpu_cap: cpu_cap(&o),
        stage: None,
    };
    let mut n = hooks(&l, sk, images.clone());
    let r = restore::run(&opts, &dir, n.as_mut()).map_err(|e| error_text(&e, e.hint()))?;
    copy_stats(&images, &work, "stats-restore");
    signal_status_fd(&o, peer);
    tracing::info!("Restored {} in {} us", r.pid, r.total_us);
    Ok(pb::CriuResp {
        restore: Some(pb::CriuRestoreResp { pid: r.pid }),
        ..resp(pb::CriuReqType::Restore, true)
    })
}

/// An error and its causes on one line, plus the hint, for `cr_errmsg`.
fn error_text(e: &dyn std::error::Error, hint: Option<String>) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    if let Some(h) = hint {
        s.push_str(" (hint: ");
        s.push_str(&h);
        s.push(')');
    }
    s
}
