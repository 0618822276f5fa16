//! `cryo swrk FD`: CRIU's RPC service, as container runtimes and go-criu/libcriu drive it.
//!
//! One request per process over the SOCK_SEQPACKET socket at FD: a `criu_req` (VERSION,
//! FEATURE_CHECK, CHECK, DUMP, RESTORE; PRE_DUMP is refused), then, for DUMP and RESTORE
//! with `notify_scripts`, NOTIFY round trips at every action point (each must be
//! acknowledged with `notify_success`), then one `criu_resp`. Paths come as fds in the
//! *caller's* table (`images_dir_fd`, `work_dir_fd`), reached through
//! `/proc/<peer>/fd/<n>` with the peer pid from `SO_PEERCRED`. Options cryo cannot honour
//! are refused by name in `cr_errmsg`, never ignored.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use prost::Message;

use crate::image::{pb, ImageDir};
use crate::notify::{ActionScripts, Chain, NoHooks, Notifier, NotifyError};
use crate::sys::net;
use crate::{dump, features, kinds, restore};

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

/// Sends NOTIFY messages and waits for the caller's acknowledgement.
pub struct RpcNotifier<'a> {
    sk: BorrowedFd<'a>,
}

impl Notifier for RpcNotifier<'_> {
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError> {
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
        net::send_msg(self.sk, &resp.encode_to_vec(), None)
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

/// Serves one request on socket `fd`. Returns whether it succeeded (the exit status).
pub fn serve(fd: i32) -> Result<bool, RpcError> {
    let sk = take_fd(fd)?;
    let raw = net::recv_msg(sk.as_fd()).map_err(|source| RpcError::Socket { fd, source })?;
    if raw.is_empty() {
        return Err(RpcError::NoRequest);
    }
    let req = pb::CriuReq::decode(raw.as_slice())?;
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
        pb::CriuReqType::Dump => do_dump(&req, peer, sk.as_fd()),
        pb::CriuReqType::Restore => do_restore(&req, peer, sk.as_fd()),
        pb::CriuReqType::PreDump | pb::CriuReqType::SinglePreDump => Err(
            "pre-dump is not supported: it needs soft-dirty memory tracking, which this kernel lacks"
                .into(),
        ),
        _ => Err(format!("request type {} is not supported by cryo", req.r#type)),
    };
    let (out, ok) = match result {
        Ok(r) => (r, true),
        Err(msg) => {
            tracing::error!("{msg}");
            // An unknown type decodes as EMPTY, which is what CRIU answers it with.
            let t = ty;
            (
                pb::CriuResp {
                    cr_errno: Some(libc::EINVAL),
                    cr_errmsg: Some(msg),
                    ..resp(t, false)
                },
                false,
            )
        }
    };
    net::send_msg(sk.as_fd(), &out.encode_to_vec(), None)
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
            // Incremental dumps need soft-dirty (off here) and are not implemented.
            mem_track: Some(false),
            // Lazy restore is not implemented.
            lazy_pages: Some(false),
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

/// Refuses the options cryo cannot honour, by name.
fn refuse_unsupported(o: &pb::CriuOpts, restore: bool) -> Result<(), String> {
    let mut bad: Vec<&str> = Vec::new();
    let on = |b: Option<bool>| b == Some(true);
    if on(o.tcp_established) {
        bad.push("tcp_established (TCP connection repair is not implemented yet)");
    }
    if on(o.ext_unix_sk) || !o.unix_sk_ino.is_empty() {
        bad.push("ext_unix_sk (external unix sockets are not implemented yet)");
    }
    if on(o.file_locks) {
        bad.push("file_locks (file locks are not implemented yet)");
    }
    if on(o.track_mem) || o.parent_img.is_some() || on(o.auto_dedup) {
        bad.push("track_mem/parent_img/auto_dedup (incremental dumps need soft-dirty, which this kernel lacks)");
    }
    if on(o.lazy_pages) || o.ps.is_some() {
        bad.push("lazy_pages/ps (lazy restore and the page server are not implemented yet)");
    }
    if o.root.is_some() {
        bad.push("root (restoring into a new root comes with issue #4)");
    }
    if !o.ext_mnt.is_empty() || !o.external.is_empty() {
        bad.push("ext_mnt/external (external resources come with issue #4)");
    }
    if !o.inherit_fd.is_empty() {
        bad.push("inherit_fd (inherited fds come with issue #4)");
    }
    if !o.join_ns.is_empty() || o.empty_ns.unwrap_or(0) != 0 {
        bad.push("join_ns/empty_ns (namespaces come with issue #4)");
    }
    if o.cgroup_props.is_some()
        || o.cgroup_props_file.is_some()
        || !o.cgroup_dump_controller.is_empty()
        || o.cgroup_yard.is_some()
    {
        bad.push("cgroup_props/cgroup_props_file/cgroup_dump_controller/cgroup_yard (cryo saves a fixed set of cgroup limits and uses the mounted hierarchies)");
    }
    if on(o.orphan_pts_master) {
        bad.push("orphan_pts_master (ttys come with issue #4)");
    }
    if o.lsm_profile.is_some() || o.lsm_mount_context.is_some() {
        bad.push("lsm_profile (LSM profiles are not implemented yet)");
    }
    if o.status_fd.is_some() {
        bad.push("status_fd (not implemented yet)");
    }
    if restore && o.veths.iter().len() > 0 {
        bad.push("veths (network namespaces come with issue #4)");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("options not supported by cryo: {}", bad.join("; ")))
    }
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

/// Opens the images directory and the log for a DUMP or RESTORE request.
fn setup(o: &pb::CriuOpts, peer: i32, create: bool) -> Result<(ImageDir, PathBuf), String> {
    let images = if o.images_dir_fd >= 0 {
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
    let work = o
        .work_dir_fd
        .map(|n| caller_path(peer, n))
        .unwrap_or_else(|| images.clone());
    if let Some(f) = &o.log_file {
        if f.contains('/') {
            return Err(format!(
                "log_file {f:?} must be a plain name in the work directory"
            ));
        }
        // CRIU's RPC default level is 2; runtimes ask for 4.
        let _ = crate::logging::init(o.log_level.unwrap_or(2) as u32, Some(&work.join(f)));
    }
    Ok((dir, images))
}

/// The notifiers of a request: the caller's NOTIFY round trips if it asked for them, then
/// the action scripts named in the environment's `CRYO_ACTION_SCRIPTS` (colon-separated;
/// CRIU runs both in RPC mode, its scripts coming from a config file cryo does not read).
fn hooks<'a>(o: &pb::CriuOpts, sk: BorrowedFd<'a>, images: PathBuf) -> Box<dyn Notifier + 'a> {
    let mut chain: Vec<Box<dyn Notifier + 'a>> = Vec::new();
    if o.notify_scripts == Some(true) {
        chain.push(Box::new(RpcNotifier { sk }));
    }
    let scripts: Vec<PathBuf> = std::env::var_os("CRYO_ACTION_SCRIPTS")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
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

fn do_dump(req: &pb::CriuReq, peer: i32, sk: BorrowedFd<'_>) -> Result<pb::CriuResp, String> {
    let o = req.opts.clone().ok_or("DUMP without options")?;
    refuse_unsupported(&o, false)?;
    let (dir, images) = setup(&o, peer, true)?;
    let opts = dump::DumpOpts {
        // CRIU dumps the caller itself when no pid is given; cryo cannot freeze its caller.
        pid: o
            .pid
            .ok_or("DUMP needs opts.pid (cryo cannot dump the process that asks)")?,
        leave_running: o.leave_running == Some(true),
        shell_job: o.shell_job == Some(true),
        ghost_limit: o.ghost_limit.map(u64::from).unwrap_or(1 << 20),
        external_mounts: Default::default(),
        external_net: Default::default(),
        empty_net: false,
        freeze_cgroup: o.freeze_cgroup.as_ref().map(PathBuf::from),
        cgroup_mode: cgroup_mode(&o)?,
    };
    let mut n = hooks(&o, sk, images);
    let r = dump::run(&opts, &dir, n.as_mut()).map_err(|e| error_text(&e, e.hint()))?;
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
    let o = req.opts.clone().ok_or("RESTORE without options")?;
    refuse_unsupported(&o, true)?;
    let (dir, images) = setup(&o, peer, false)?;
    // RPC restores always detach (CRIU forces it): the caller, not cryo, is the parent.
    let opts = restore::RestoreOpts {
        detach: true,
        pidfile: None,
        shell_job: o.shell_job == Some(true),
        orphan_pts_master: false, // refused above until the master is sent to the client
        mounts: Default::default(),
        join: Default::default(),
        cgroups: kinds::cgroup::CgOpts {
            mode: cgroup_mode(&o)?,
            roots: o
                .cg_root
                .iter()
                .map(|r| (r.ctrl.clone(), r.path.clone()))
                .collect(),
        },
    };
    let mut n = hooks(&o, sk, images);
    let r = restore::run(&opts, &dir, n.as_mut()).map_err(|e| error_text(&e, e.hint()))?;
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
