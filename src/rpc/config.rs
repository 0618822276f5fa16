//! Configuration files in RPC mode, in CRIU's order: the default files
//! (`/etc/criu/default.conf`, `~/.criu/default.conf`, `$CRIU_CONFIG_FILE`) first, then the
//! request's options over them, then the request's `config_file` (runc sends
//! `/etc/criu/runc.conf` or the container's `org.criu.config` annotation) over everything: a
//! container's `log-file` or `tcp-established` there reaches the dump. A file that does not
//! exist is skipped, as CRIU skips it.

use std::path::PathBuf;

use prost::Message;

use crate::cli::config;
use crate::cli::getopt::{Event, Kind};
use crate::image::pb;

/// A request's options with the configuration files applied.
#[derive(Debug, Default)]
pub struct Layered {
    pub opts: pb::CriuOpts,
    /// `work-dir` from a configuration file (the request's `config_file` one wins over
    /// `work_dir_fd`, a default file's does not).
    pub work_dir: Option<PathBuf>,
    pub work_dir_from_rpc_conf: bool,
    /// `images-dir` from the request's `config_file` (wins over `images_dir_fd`).
    pub images_dir_from_rpc_conf: Option<PathBuf>,
    /// `log_file` came from the request itself (CRIU allows no directory in it then).
    pub log_file_from_request: bool,
    /// `action-script`s of the configuration files (CRIU runs them in RPC mode too).
    pub action_scripts: Vec<PathBuf>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Applies one configuration option to RPC options (the fields CRIU's `criu_opts` has for
/// it; options without one, such as `--libdir`, are ignored as in RPC mode).
fn apply(o: &mut pb::CriuOpts, l: &mut Layered, e: &Event) -> Result<(), String> {
    let on = !e.negated;
    let v = e.value.clone().unwrap_or_default();
    let bad = |what: &str| format!("configuration option {}: {what}", e.spec.long);
    match e.spec.kind {
        Kind::FinalState if e.spec.long == "leave-running" => o.leave_running = Some(true),
        Kind::FinalState => o.leave_stopped = Some(true),
        _ => {}
    }
    match e.spec.canon {
        "tree" => o.pid = Some(v.trim().parse().map_err(|_| bad("not a pid"))?),
        "images-dir" => l.images_dir_from_rpc_conf = Some(PathBuf::from(v)),
        "work-dir" => l.work_dir = Some(PathBuf::from(v)),
        "log-file" => {
            o.log_file = Some(v);
            l.log_file_from_request = false;
        }
        "root" => o.root = Some(v),
        "restore-sibling" => o.rst_sibling = Some(on),
        "tcp-established" => o.tcp_established = Some(on),
        "evasive-devices" => o.evasive_devices = Some(on),
        "shell-job" => o.shell_job = Some(on),
        "file-locks" => o.file_locks = Some(on),
        "link-remap" => o.link_remap = Some(on),
        "track-mem" => o.track_mem = Some(on),
        "auto-dedup" => o.auto_dedup = Some(on),
        "force-irmap" => o.force_irmap = Some(on),
        "tcp-close" => o.tcp_close = Some(on),
        "skip-in-flight" => o.tcp_skip_in_flight = Some(on),
        "weak-sysctls" => o.weak_sysctls = Some(on),
        "skip-file-rwx-check" => o.skip_file_rwx_check = Some(on),
        "mntns-compat-mode" => o.mntns_compat_mode = Some(on),
        "unprivileged" => o.unprivileged = Some(on),
        "display-stats" => o.display_stats = Some(on),
        "orphan-pts-master" => o.orphan_pts_master = Some(on),
        "lazy-pages" => o.lazy_pages = Some(true),
        "stream" if on => return Err(bad("image streaming is not implemented yet")),
        "tls" => o.tls = Some(on),
        "tls-no-cn-verify" => o.tls_no_cn_verify = Some(true),
        "tls-cacert" => o.tls_cacert = Some(v),
        "tls-cacrl" => o.tls_cacrl = Some(v),
        "tls-cert" => o.tls_cert = Some(v),
        "tls-key" => o.tls_key = Some(v),
        "ext-unix-sk" => {
            o.ext_unix_sk = Some(true);
            if !v.is_empty() {
                let inode = v.trim().parse().map_err(|_| bad("not an inode"))?;
                o.unix_sk_ino.push(pb::UnixSk { inode });
            }
        }
        "page-server" if on => {
            o.ps.get_or_insert_with(Default::default);
        }
        "address" => o.ps.get_or_insert_with(Default::default).address = Some(v),
        "port" => {
            o.ps.get_or_insert_with(Default::default).port =
                Some(v.trim().parse().map_err(|_| bad("not a port"))?)
        }
        "prev-images-dir" => o.parent_img = Some(v),
        "ext-mount-map" if v == "auto" => o.auto_ext_mnt = Some(true),
        "ext-mount-map" => {
            let (key, val) = v.split_once(':').ok_or_else(|| bad("expected A:B"))?;
            o.ext_mnt.push(pb::ExtMountMap {
                key: key.into(),
                val: val.into(),
            });
        }
        "manage-cgroups" => {
            use crate::kinds::cgroup::Mode;
            o.manage_cgroups_mode = Some(match Mode::parse(e.value.as_deref())? {
                Mode::Ignore => 0,
                Mode::None => 1,
                Mode::Props => 2,
                Mode::Soft => 3,
                Mode::Full => 4,
                Mode::Strict => 5,
            });
        }
        "cgroup-root" => {
            let (ctrl, path) = match v.split_once(':') {
                Some((c, p)) => (Some(c.to_string()), p.to_string()),
                None => (None, v),
            };
            o.cg_root.push(pb::CgroupRoot { ctrl, path });
        }
        "inherit-fd" => {
            let (n, key) = v
                .strip_prefix("fd[")
                .and_then(|r| r.split_once("]:"))
                .ok_or_else(|| bad("expected fd[N]:KEY"))?;
            o.inherit_fd.push(pb::InheritFd {
                key: key.into(),
                fd: n.parse().map_err(|_| bad("expected fd[N]:KEY"))?,
            });
        }
        "join-ns" => {
            let (ns, rest) = v.split_once(':').ok_or_else(|| bad("expected NS:FILE"))?;
            let (file, extra) = match rest.split_once(',') {
                Some((f, x)) => (f, Some(x.to_string())),
                None => (rest, None),
            };
            o.join_ns.push(pb::JoinNamespace {
                ns: ns.into(),
                ns_file: file.into(),
                extra_opt: extra,
            });
        }
        "veth-pair" => {
            let (a, b) = v.split_once('=').ok_or_else(|| bad("expected IN=OUT"))?;
            o.veths.push(pb::CriuVethPair {
                if_in: a.into(),
                if_out: b.into(),
            });
        }
        "skip-mnt" => o.skip_mnt.push(v),
        "enable-fs" => o.enable_fs.push(v),
        "enable-external-sharing" => o.ext_sharing = Some(true),
        "enable-external-masters" => o.ext_masters = Some(true),
        "freeze-cgroup" => o.freeze_cgroup = Some(v),
        "ghost-limit" => {
            o.ghost_limit =
                Some(u32::try_from(crate::cli::parse_size(&v)?).map_err(|_| bad("too large"))?)
        }
        "irmap-scan-path" => o.irmap_scan_paths.push(v),
        "lsm-profile" => o.lsm_profile = Some(v),
        "lsm-mount-context" => o.lsm_mount_context = Some(v),
        "timeout" => o.timeout = Some(v.trim().parse().map_err(|_| bad("not a number"))?),
        "external" => o.external.push(v),
        "empty-ns" if v == "net" => {
            o.empty_ns = Some(o.empty_ns.unwrap_or(0) | libc::CLONE_NEWNET as u32)
        }
        "empty-ns" => return Err(format!("Unsupported empty namespace: {v}")),
        "cgroup-props" => o.cgroup_props = Some(v),
        "cgroup-props-file" => o.cgroup_props_file = Some(v),
        "cgroup-dump-controller" => o.cgroup_dump_controller.push(v),
        "cgroup-yard" => o.cgroup_yard = Some(v),
        "pre-dump-mode" => {
            o.pre_dump_mode = Some(match v.as_str() {
                "splice" => pb::CriuPreDumpMode::Splice as i32,
                "read" => pb::CriuPreDumpMode::VmRead as i32,
                _ => return Err("Unable to parse value of --pre-dump-mode".into()),
            })
        }
        "network-lock" => {
            o.network_lock = Some(match v.as_str() {
                "iptables" => pb::CriuNetworkLockMethod::Iptables as i32,
                "nftables" => pb::CriuNetworkLockMethod::Nftables as i32,
                "skip" | "none" => pb::CriuNetworkLockMethod::Skip as i32,
                _ => return Err(format!("Invalid value for --network-lock: {v}")),
            })
        }
        "action-script" => l.action_scripts.push(PathBuf::from(v)),
        other => {
            tracing::debug!(option = %other, "configuration option: nothing to do in RPC mode")
        }
    }
    Ok(())
}

/// The options of `req` with the configuration files applied, in CRIU's order.
pub fn layer(req: &pb::CriuOpts) -> Result<Layered, String> {
    let mut l = Layered::default();
    // swrk's own command line decides about the default files (`--no-default-config`).
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (defaults, files) = crate::cli::config_events(&argv).map_err(|e| e.to_string())?;
    l.files = files;
    let mut base = pb::CriuOpts {
        images_dir_fd: -1,
        ..Default::default()
    };
    for e in &defaults {
        apply(&mut base, &mut l, e)?;
    }
    // The request over the default files: its fields that are set replace theirs, its lists
    // come after theirs (protobuf merge rules are CRIU's here).
    base.merge(req.encode_to_vec().as_slice())
        .map_err(|e| format!("request options: {e}"))?;
    // CRIU takes the request's log level as it is (2 when unset).
    base.log_level = req.log_level;
    l.log_file_from_request = req.log_file.is_some();
    if let Some(f) = req.config_file.as_deref().filter(|f| !f.is_empty()) {
        let path = PathBuf::from(f);
        match config::read(&path).map_err(|e| e.to_string())? {
            Some(events) => {
                tracing::debug!("Overwriting RPC settings with values from {f}");
                let work_before = l.work_dir.take();
                for e in &events {
                    apply(&mut base, &mut l, e)?;
                }
                l.work_dir_from_rpc_conf = l.work_dir.is_some();
                if l.work_dir.is_none() {
                    l.work_dir = work_before;
                }
                l.files.push(path);
            }
            None => tracing::debug!("RPC configuration file {f} does not exist"),
        }
    }
    // CRIU's start-up check, as on the command line: the capabilities cryo needs, and
    // `unprivileged` for a non-root user (cryo then makes itself dumpable).
    crate::privilege::check(base.unprivileged == Some(true))
        .map_err(|e| format!("{e}: {}", e.hint()))?;
    l.opts = base;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_config_file_overrides_the_request() {
        let dir = std::env::temp_dir().join(format!("cryo-rpc-conf-{}", std::process::id()));
        std::fs::write(
            &dir,
            "tcp-established\nlog-file from-conf.log\nno-shell-job\nexternal mnt[a]:b\nmanage-cgroups=full\n",
        )
        .unwrap();
        let req = pb::CriuOpts {
            images_dir_fd: 5,
            shell_job: Some(true),
            log_file: Some("dump.log".into()),
            external: vec!["mnt[c]:d".into()],
            config_file: Some(dir.to_string_lossy().into()),
            ..Default::default()
        };
        let l = layer(&req).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(l.opts.images_dir_fd, 5);
        assert_eq!(l.opts.tcp_established, Some(true));
        assert_eq!(l.opts.shell_job, Some(false));
        assert_eq!(l.opts.log_file.as_deref(), Some("from-conf.log"));
        assert!(!l.log_file_from_request);
        assert_eq!(l.opts.external, ["mnt[c]:d", "mnt[a]:b"]);
        assert_eq!(l.opts.manage_cgroups_mode, Some(4));
        // A configuration file that does not exist is skipped.
        let req = pb::CriuOpts {
            config_file: Some("/nonexistent/runc.conf".into()),
            log_file: Some("dump.log".into()),
            ..Default::default()
        };
        let l = layer(&req).unwrap();
        assert_eq!(l.opts.log_file.as_deref(), Some("dump.log"));
        assert!(l.log_file_from_request);
    }
}
