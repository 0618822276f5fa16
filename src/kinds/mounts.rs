//! Mount namespaces. A tree with a mount namespace of its own has its mounts read from the
//! root task's mountinfo at dump (file system type, source, options, propagation, place in
//! the tree) into `mountpoints-ID.img`, and tmpfs contents into `tmpfs-dev-N.tar.gz.img`
//! (made by `tar`, as CRIU does). Restore rebuilds the tree in a new namespace on top of the
//! root file system the caller gives (`--root`), then `pivot_root`s into it; the root puppet
//! joins that namespace before any file is opened.
//!
//! Each mount is restored one of three ways:
//! - **external**: the caller named it (`--external mnt[PATH]:KEY` at dump, a host path for
//!   KEY at restore); nothing of it is saved and the host path is bind-mounted again;
//! - **bind from the tree**: another mount of the tree holds the same file system with a
//!   root that contains this one's, so this one is bound from there (bind mounts of the
//!   container's own directories, runc's masked and read-only paths, `/dev/console`...);
//! - **fresh**: a file system the kernel makes anew (proc in the tree's PID namespace,
//!   sysfs and mqueue in its net and IPC namespaces, devpts, cgroup, tmpfs with its saved
//!   contents...).
//!
//! Anything else (a host directory bound in without `--external`, an unknown file system)
//! is refused before the tree is touched, naming the mount point.

use super::error::{task_error_from, TaskError, Unsupported};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use crate::sys::ns::{NsType, UnshareFlags};

use crate::image::{self, pb, ImageDir};

use super::{RestoreCx, Syscalls, TaskImages};

/// Why the mount tree could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Propagation(#[from] super::propagation::PropagationError),
    #[error(transparent)]
    Binfmt(#[from] super::binfmt::BinfmtError),
    #[error("cannot rebuild the mount tree: {what}")]
    Mount {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(MountsError);

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    pub major: u32,
    pub minor: u32,
    pub root: String,
    pub mountpoint: String,
    pub mnt_opts: String,
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 6 || r.len() < 3 {
                return None;
            }
            let (major, minor) = f[2].split_once(':')?;
            Some(MountInfo {
                id: f[0].parse().ok()?,
                parent: f[1].parse().ok()?,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: unescape(f[3]),
                mountpoint: unescape(f[4]),
                mnt_opts: f[5].to_string(),
                optional: f[6..].iter().map(|s| s.to_string()).collect(),
                fstype: r[0].to_string(),
                source: unescape(r[1]),
                super_opts: r[2].to_string(),
            })
        })
        .collect()
}

/// File systems the kernel makes anew, with CRIU's `fstype` numbers.
const FRESH: &[(&str, u32)] = &[
    ("proc", 1),
    ("sysfs", 2),
    ("devtmpfs", 3),
    // With its registrations (`binfmt`).
    ("binfmt_misc", 4),
    ("tmpfs", 5),
    ("devpts", 6),
    ("pstore", 8),
    ("securityfs", 9),
    ("debugfs", 11),
    ("cgroup", 12),
    ("mqueue", 14),
    ("tracefs", 19),
    ("cgroup2", 23),
];
const TMPFS: u32 = 5;
const BINFMT_MISC: u32 = 4;
const PROC: u32 = 1;

fn fstype_code(name: &str) -> Option<u32> {
    FRESH.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// The kernel-internal encoding of a device number (`MKDEV`: major << 20 | minor), as CRIU
/// saves `root_dev` and names `tmpfs-dev-N.tar.gz.img`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Per-mount flags from mountinfo's mount options.
fn mnt_flags(opts: &str) -> u32 {
    let mut f = MountFlags::empty();
    for o in opts.split(',') {
        f |= match o {
            "ro" => MountFlags::RDONLY,
            "nosuid" => MountFlags::NOSUID,
            "nodev" => MountFlags::NODEV,
            "noexec" => MountFlags::NOEXEC,
            "noatime" => MountFlags::NOATIME,
            "nodiratime" => MountFlags::NODIRATIME,
            "relatime" => MountFlags::RELATIME,
            "strictatime" => MountFlags::STRICTATIME,
            _ => MountFlags::empty(),
        };
    }
    // mountinfo names relatime and noatime; neither means strictatime.
    if !f.intersects(MountFlags::RELATIME | MountFlags::NOATIME) {
        f |= MountFlags::STRICTATIME;
    }
    f.bits()
}

/// The per-mount flags an image may ask for (never bind, move, remount or propagation bits).
fn safe_flags(bits: u32) -> MountFlags {
    MountFlags::from_bits_truncate(bits)
        & (MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC
            | MountFlags::NOATIME
            | MountFlags::NODIRATIME
            | MountFlags::RELATIME
            | MountFlags::STRICTATIME)
}

/// Whether `inner` is `outer` or below it, as paths.
fn path_within(inner: &str, outer: &str) -> Option<String> {
    if outer == "/" {
        return Some(inner.to_string());
    }
    let rest = inner.strip_prefix(outer)?;
    if rest.is_empty() {
        Some("/".into())
    } else if rest.starts_with('/') {
        Some(rest.to_string())
    } else {
        None
    }
}

/// Mountinfo entries in parents-first order (mountinfo order among siblings).
fn tree_order(all: Vec<MountInfo>) -> Vec<MountInfo> {
    let ids: Vec<u32> = all.iter().map(|m| m.id).collect();
    let mut out: Vec<MountInfo> = Vec::with_capacity(all.len());
    let mut left = all;
    // Roots: parents not listed (outside the task's root or namespace).
    let mut placed: Vec<u32> = Vec::new();
    while !left.is_empty() {
        let before = left.len();
        let (ready, rest): (Vec<MountInfo>, Vec<MountInfo>) = left
            .into_iter()
            .partition(|m| !ids.contains(&m.parent) || placed.contains(&m.parent));
        placed.extend(ready.iter().map(|m| m.id));
        out.extend(ready);
        left = rest;
        if left.len() == before {
            out.append(&mut left); // a cycle cannot happen; keep everything anyway
        }
    }
    out
}

/// The index of an earlier mount in `entries[..i]` that `entries[i]` can be bound from: the
/// same file system, with a root that contains this one's; and the path below it.
fn bind_source(entries: &[pb::MntEntry], i: usize) -> Option<(usize, String)> {
    let m = &entries[i];
    entries[..i].iter().enumerate().rev().find_map(|(j, e)| {
        if e.root_dev != m.root_dev {
            return None;
        }
        path_within(&m.root, &e.root).map(|rest| (j, rest))
    })
}

/// What a dump does with the tree's mounts (`--external mnt[..]`, `--ext-mount-map`,
/// `--enable-fs`, `--skip-mnt`, `--enable-external-sharing`/`-masters`).
#[derive(Debug, Clone, Default)]
pub struct MountPolicy {
    /// Mount point (as the tree sees it) → the key the restore gives a host path for.
    pub external: HashMap<String, String>,
    /// `--ext-mount-map auto` / `--external mnt[]`: a bind mount of something outside the
    /// tree is saved as external, with the host path it came from.
    pub auto_external: bool,
    /// `--enable-fs`: file systems (or `all`) saved as mountable by name with their source
    /// and options.
    pub enable_fs: Vec<String>,
    /// `--skip-mnt`: mount points not saved (nor anything mounted below them).
    pub skip: Vec<String>,
    /// `--enable-external-sharing`: mounts sharing a peer group with mounts outside the tree
    /// are allowed (the group is kept among the tree's mounts only).
    pub external_sharing: bool,
    /// `--enable-external-masters`: mounts that are slaves of mounts outside the tree are
    /// allowed (restored without that master).
    pub external_masters: bool,
}

impl MountPolicy {
    fn fs_enabled(&self, fstype: &str) -> bool {
        self.enable_fs.iter().any(|f| f == "all" || f == fstype)
    }
}

/// CRIU's key for an auto-detected external mount, whose host path is in `source`.
pub const AUTODETECTED: &str = "CRIU:AUTOGENERATED";
/// CRIU's `fstype` for a file system mounted by name (`--enable-fs`).
const AUTO: u32 = 16;

/// Drops the mounts at or below a `--skip-mnt` point.
fn skip_mounts(infos: Vec<MountInfo>, skip: &[String]) -> Vec<MountInfo> {
    if skip.is_empty() {
        return infos;
    }
    let mut gone: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for m in infos {
        let skipped = skip.iter().any(|s| {
            let s = s.trim_end_matches('/');
            !s.is_empty() && path_within(&m.mountpoint, s).is_some()
        });
        if skipped || gone.contains(&m.parent) {
            tracing::info!(mount = %m.mountpoint, "--skip-mnt: mount not saved");
            gone.push(m.id);
        } else {
            out.push(m);
        }
    }
    out
}

/// For a bind mount of the tree whose file system is mounted in cryo's namespace too (the
/// mount of cryo's that holds its root), the host path it shows: the best match is the
/// mount of cryo's on the same device whose root contains this one's, the deepest root
/// first.
fn auto_external_source(m: &MountInfo, own: &[MountInfo]) -> Option<String> {
    own.iter()
        .filter(|o| o.major == m.major && o.minor == m.minor)
        .filter_map(|o| path_within(&m.root, &o.root).map(|rest| (o, rest)))
        .max_by_key(|(o, _)| o.root.len())
        .map(|(o, rest)| {
            if rest == "/" {
                o.mountpoint.clone()
            } else {
                format!("{}{}", o.mountpoint.trim_end_matches('/'), rest)
            }
        })
}

/// Reads the mount tree of `pid` and decides how each mount is restored, refusing what
/// cannot be. `external` maps mount points (as the tree sees them) to the caller's keys.
/// Nothing is written; nothing of the task is touched.
pub fn plan(pid: i32, policy: &MountPolicy) -> Result<Vec<pb::MntEntry>, MountsError> {
    let text = crate::procfs::read(pid, "mountinfo")?;
    let infos = skip_mounts(tree_order(parse_mountinfo(&text)), &policy.skip);
    // cryo's own mounts, where auto-detected external binds come from.
    let own = if policy.auto_external {
        parse_mountinfo(&crate::procfs::read(
            crate::sys::proc::own_pid(),
            "mountinfo",
        )?)
    } else {
        Vec::new()
    };
    if infos.first().map(|m| m.mountpoint.as_str()) != Some("/") {
        return Err(Unsupported::of(
            pid,
            "mount namespace",
            "its mountinfo has no root mount",
            String::new(),
        )
        .into());
    }
    let norm = |p: &str| {
        let t = p.trim_end_matches('/');
        if t.is_empty() {
            "/".to_string()
        } else if t.starts_with('/') {
            t.to_string()
        } else {
            format!("/{t}")
        }
    };
    let external: HashMap<String, String> = policy
        .external
        .iter()
        .map(|(k, v)| (norm(k), v.clone()))
        .collect();
    let mut entries: Vec<pb::MntEntry> = Vec::new();
    for (i, m) in infos.iter().enumerate() {
        let shared = m
            .optional
            .iter()
            .find_map(|o| o.strip_prefix("shared:")?.parse().ok());
        let master = m
            .optional
            .iter()
            .find_map(|o| o.strip_prefix("master:")?.parse().ok());
        let code = fstype_code(&m.fstype);
        let mut e = pb::MntEntry {
            fstype: code.unwrap_or(0),
            mnt_id: m.id,
            root_dev: encode_dev(m.major, m.minor),
            parent_mnt_id: m.parent,
            flags: mnt_flags(&m.mnt_opts) | unbindable_bit(m),
            root: m.root.clone(),
            mountpoint: m.mountpoint.clone(),
            source: m.source.clone(),
            options: m
                .super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect::<Vec<_>>()
                .join(","),
            shared_id: shared,
            master_id: master,
            // CRIU names only file systems mounted by name (AUTO): the others are known by
            // their `fstype` number, and CRIU refuses a name on them.
            fsname: None,
            sb_flags: Some(if m.super_opts.split(',').any(|o| o == "ro") {
                MountFlags::RDONLY.bits()
            } else {
                0
            }),
            ..Default::default()
        };
        if let Some(key) = external.get(&norm(&m.mountpoint)).filter(|_| i > 0) {
            // CRIU's current form: the key alone (`ext_mount` is its older one, with the key in
            // `root`; CRIU refuses both at once).
            e.ext_key = Some(key.clone());
            entries.push(e);
            continue;
        }
        entries.push(e);
        if i == 0 {
            continue; // the root comes from --root at restore
        }
        if bind_source(&entries, i).is_some() {
            continue;
        }
        // --ext-mount-map auto / --external mnt[]: a tmpfs mounted in cryo's namespace too
        // is the host's (a submount of a recursive bind, `--rbind`), bound again from there
        // as CRIU's auto-detection does, not a copy of its files made anew.
        let host_tmpfs = (m.fstype == "tmpfs")
            .then(|| auto_external_source(m, &own))
            .flatten();
        if let Some(host) = host_tmpfs {
            let e = entries.last_mut().expect("pushed above");
            e.ext_key = Some(AUTODETECTED.to_string());
            e.source = host.trim_start_matches('/').to_string();
            continue;
        }
        if code.is_some() && m.root == "/" {
            continue;
        }
        if policy.fs_enabled(&m.fstype) {
            // --enable-fs: saved as CRIU saves an auto-detected file system, to be mounted
            // again with its source and options.
            let e = entries.last_mut().expect("pushed above");
            e.fstype = AUTO;
            e.fsname = Some(m.fstype.clone());
            continue;
        }
        if let Some(host) = auto_external_source(m, &own) {
            // --ext-mount-map auto / --external mnt[]: a bind of something outside the tree,
            // saved as CRIU saves it (the host path, without its leading slash, as source).
            let e = entries.last_mut().expect("pushed above");
            e.ext_key = Some(AUTODETECTED.to_string());
            e.source = host.trim_start_matches('/').to_string();
            continue;
        }
        return Err(Unsupported::of(pid, format!("mount {}", m.mountpoint), format!(
                "{} {} (root {}) is not a file system cryo recreates, nor bound from one inside the tree",
                m.fstype, m.source, m.root
            ), format!(
                "mark it external: --external mnt[{}]:KEY at dump, then --external mnt[KEY]:HOSTPATH at restore",
                m.mountpoint
            )).into());
    }
    Ok(entries)
}

/// `cryo_copied` values: how a mount of a nested namespace, copied from its parent
/// namespace's when the namespace was made, had its propagation afterwards.
pub const COPIED_AS_IS: u32 = 1;
pub const COPIED_PRIVATE: u32 = 2;
pub const COPIED_SLAVE: u32 = 3;

/// The key a copied mount is matched by in its parent namespace: mount point, root and the
/// k-th such mount (stacked ones).
fn copy_keys<'a>(infos: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String, usize)> {
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    infos
        .map(|(mp, root)| {
            let k = (mp.to_string(), root.to_string());
            let n = seen.entry(k.clone()).or_insert(0);
            *n += 1;
            (k.0, k.1, *n)
        })
        .collect()
}

/// `MS_UNBINDABLE` (linux/mount.h), as an entry's `flags` hold it.
pub const UNBINDABLE: u32 = 1 << 17;

/// `MS_UNBINDABLE` when mountinfo says the mount is unbindable, as CRIU keeps it in the
/// entry's flags (set again by `propagation::restore` once every mount exists).
fn unbindable_bit(m: &MountInfo) -> u32 {
    if unbindable_of(m) {
        UNBINDABLE
    } else {
        0
    }
}

fn unbindable_of(m: &MountInfo) -> bool {
    m.optional.iter().any(|o| o == "unbindable")
}

fn shared_of(m: &MountInfo) -> Option<u32> {
    m.optional
        .iter()
        .find_map(|o| o.strip_prefix("shared:")?.parse().ok())
}

fn master_of(m: &MountInfo) -> Option<u32> {
    m.optional
        .iter()
        .find_map(|o| o.strip_prefix("master:")?.parse().ok())
}

/// Plans the mount namespace of `pid`, nested in the tree: a namespace other than its parent
/// `ppid`'s, made as a copy of it (`unshare(CLONE_NEWNS)`, `clone(CLONE_NEWNS)`). Mounts that
/// are still the copies of the parent's (same file system, root and mount point) are saved
/// as `cryo_copied` with what became of their propagation; restore copies the parent's
/// restored namespace the same way, removes what the task unmounted and mounts what it
/// mounted. Those new mounts must be ones `plan` restores from inside the namespace (fresh
/// file systems, binds of other mounts of it; not external ones); a proc mount is saved with
/// a process of the PID namespace it shows (`proc_pid`: the tree's id of a task in the PID
/// namespace whose inode is given, None if the tree has none). A namespace whose root is not
/// its parent's (after `pivot_root`) is refused.
pub fn plan_nested(
    pid: i32,
    ppid: i32,
    policy: &MountPolicy,
    proc_pid: &dyn Fn(u64) -> Option<u32>,
) -> Result<Vec<pb::MntEntry>, MountsError> {
    // Both namespaces as seen from their roots: a task that chroot()ed shows only the mounts
    // under its root in its own mountinfo, with mount points relative to it (its first
    // mount would look like a root it pivoted into).
    let (own, own_fd) = ns_view(pid)?;
    let (theirs, their_fd) = ns_view(ppid)?;
    let infos = skip_mounts(tree_order(parse_mountinfo(&own)), &policy.skip);
    let base = tree_order(parse_mountinfo(&theirs));
    let own_root = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&own_fd));
    let their_root = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&their_fd)
    );
    let refuse = |m: &MountInfo, why: String| -> MountsError {
        Unsupported::of(
            pid,
            format!("mount {}", m.mountpoint),
            format!("in a mount namespace nested in the tree: {why}"),
            "only mount namespaces copied from their parent's (unshare -m), with file systems cryo makes fresh or binds of their own mounts added, are restored yet",
        )
        .into()
    };
    let base_keys = copy_keys(
        base.iter()
            .map(|m| (m.mountpoint.as_str(), m.root.as_str())),
    );
    let keys = copy_keys(
        infos
            .iter()
            .map(|m| (m.mountpoint.as_str(), m.root.as_str())),
    );
    let base_groups: std::collections::HashSet<u32> = base.iter().filter_map(shared_of).collect();
    let mut entries: Vec<pb::MntEntry> = Vec::new();
    let mut copied_ids: Vec<u32> = Vec::new();
    for (i, m) in infos.iter().enumerate() {
        let origin = base_keys
            .iter()
            .position(|k| *k == keys[i])
            .map(|j| &base[j])
            .filter(|b| b.major == m.major && b.minor == m.minor)
            .filter(|_| i == 0 || copied_ids.contains(&m.parent));
        let (shared, master) = (shared_of(m), master_of(m));
        let mut e = pb::MntEntry {
            fstype: fstype_code(&m.fstype).unwrap_or(0),
            mnt_id: m.id,
            root_dev: encode_dev(m.major, m.minor),
            parent_mnt_id: m.parent,
            flags: mnt_flags(&m.mnt_opts) | unbindable_bit(m),
            root: m.root.clone(),
            mountpoint: m.mountpoint.clone(),
            source: m.source.clone(),
            options: m
                .super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect::<Vec<_>>()
                .join(","),
            shared_id: shared,
            master_id: master,
            fsname: None,
            sb_flags: Some(if m.super_opts.split(',').any(|o| o == "ro") {
                MountFlags::RDONLY.bits()
            } else {
                0
            }),
            ..Default::default()
        };
        if let Some(b) = origin {
            let how = if shared == shared_of(b)
                && master == master_of(b)
                && unbindable_of(m) == unbindable_of(b)
            {
                COPIED_AS_IS
            } else if shared.is_none() && master.is_none() {
                COPIED_PRIVATE
            } else if shared.is_none() && master.is_some() && master == shared_of(b) {
                COPIED_SLAVE
            } else {
                return Err(refuse(m, format!(
                    "its propagation (shared {shared:?}, master {master:?}) is not what a copy of its parent namespace's mount (shared {:?}, master {:?}) becomes by one change",
                    shared_of(b), master_of(b)
                )));
            };
            e.cryo_copied = Some(how);
            // Named, so the restore can tell stacked copies apart.
            e.fsname = Some(m.fstype.clone());
            copied_ids.push(m.id);
            entries.push(e);
            continue;
        }
        if i == 0 {
            // pivot_root'ed into a mount made in the namespace (the old root detached).
            e.cryo_pivoted = Some(true);
        }
        if shared.is_some_and(|g| base_groups.contains(&g))
            || master.is_some_and(|g| base_groups.contains(&g))
        {
            return Err(refuse(
                m,
                "it propagates to or from its parent namespace's mounts".into(),
            ));
        }
        // Mounted again under a copy that is still a peer of its parent namespace's mount,
        // it would propagate there too (the parent namespace would get a second one).
        if let Some(p) = entries.iter().find(|p| {
            p.mnt_id == m.parent
                && p.cryo_copied == Some(COPIED_AS_IS)
                && p.shared_id.is_some_and(|g| base_groups.contains(&g))
        }) {
            return Err(refuse(
                m,
                format!(
                    "it is mounted under {}, which is still shared with its parent namespace's mount: mounting it again there would propagate it to the parent namespace",
                    p.mountpoint
                ),
            ));
        }
        let code = fstype_code(&m.fstype);
        entries.push(e);
        if bind_source(&entries, i).is_some() {
            continue;
        }
        if code == Some(PROC) && m.root == "/" {
            // The PID namespace it shows: that of its init (PID 1 there).
            let at = format!("{own_root}{}/1/ns/pid", m.mountpoint.trim_end_matches('/'));
            let dev_ok = crate::sys::fd::stat_in_root(&own_root, &m.mountpoint).is_ok_and(|st| {
                use std::os::unix::fs::MetadataExt;
                encode_dev(rustix::fs::major(st.dev()), rustix::fs::minor(st.dev()))
                    == encode_dev(m.major, m.minor)
            });
            let ns = std::fs::metadata(&at)
                .ok()
                .map(|st| std::os::unix::fs::MetadataExt::ino(&st));
            let Some(p) = ns.filter(|_| dev_ok).and_then(proc_pid) else {
                return Err(refuse(m, "the PID namespace it shows has no process of the tree, or it is covered by another mount".into()));
            };
            if shared.is_some() || master.is_some() {
                return Err(refuse(m, "a proc mount with propagation".into()));
            }
            entries.last_mut().expect("pushed above").cryo_proc_pid = Some(p);
            continue;
        }
        if code.is_some() && m.root == "/" {
            continue;
        }
        if policy.fs_enabled(&m.fstype) {
            let e = entries.last_mut().expect("pushed above");
            e.fstype = AUTO;
            e.fsname = Some(m.fstype.clone());
            continue;
        }
        if let Some(path) = outer_source(&their_root, &own_root, m, &base) {
            entries.last_mut().expect("pushed above").cryo_outer = Some(path);
            continue;
        }
        return Err(refuse(m, format!(
            "{} {} (root {}) is not a file system cryo recreates, nor bound from a mount of the namespace or from a path of its parent namespace that still leads to its source (same device and inode)",
            m.fstype, m.source, m.root
        )));
    }
    Ok(entries)
}

/// The mountinfo of the mount namespace of `pid` as seen from the namespace's root, and an
/// O_PATH fd of that root (`/proc/self/fd/FD` leads there): read by a thread of cryo's that
/// joins the namespace (`setns` moves its root to the namespace's), whatever root the task
/// has chroot()ed into. After `pivot_root` the namespace's root is the new one.
fn ns_view(pid: i32) -> Result<(String, OwnedFd), MountsError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|source| {
        MountsError::Mount {
            what: format!("open the mount namespace of process {pid}"),
            source,
        }
    })?;
    let work = || -> Result<(String, OwnedFd), MountsError> {
        use rustix::fs::{openat, Mode, OFlags};
        // cryo's /proc: the namespace's may be another PID namespace's, without cryo's threads.
        let proc = rustix::fs::open(
            "/proc",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(mnt_err("open /proc".into()))?;
        crate::sys::ns::unshare(UnshareFlags::FS).map_err(mnt_err("unshare(CLONE_FS)".into()))?;
        crate::sys::ns::setns(ns.as_fd(), NsType::Mount).map_err(mnt_err(format!(
            "join the mount namespace of process {pid} to read its mounts"
        )))?;
        let read = || -> std::io::Result<String> {
            let f = openat(
                &proc,
                "thread-self/mountinfo",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            std::io::read_to_string(std::fs::File::from(f))
        };
        let text = read().map_err(mnt_err(format!(
            "read the mounts of process {pid}'s namespace"
        )))?;
        let root = rustix::fs::open(
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(mnt_err(format!(
            "open the root of process {pid}'s mount namespace"
        )))?;
        Ok((text, root))
    };
    std::thread::scope(|s| s.spawn(work).join()).unwrap_or_else(|_| {
        Err(MountsError::Mount {
            what: format!("read the mounts of process {pid}'s namespace"),
            source: std::io::Error::other("the reading thread panicked"),
        })
    })
}

/// For a mount `m` of a nested namespace bound from a mount of its parent namespace (`base`,
/// the mountinfo of the parent namespace, whose root `their_root` leads to; `own_root`
/// leads to the nested namespace's root): the path in the parent namespace it is bound from.
/// The parent's mounts of the same file system whose root contains `m`'s (the deepest root
/// first), each the last one mounted at its mount point (not covered there); the first
/// whose path leads to the very directory or file `m`'s root is (same device and inode, as
/// `stat` says: a btrfs subvolume has a device of its own, and a path that another mount of
/// the same file system covers leads elsewhere). None when no path does, or `m` is covered
/// in its own namespace (its root cannot be compared).
fn outer_source(
    their_root: &str,
    own_root: &str,
    m: &MountInfo,
    base: &[MountInfo],
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if m.root.ends_with("//deleted") {
        return None;
    }
    let at = crate::sys::fd::open_in_root(own_root, &m.mountpoint, libc::O_PATH).ok()?;
    let id = rustix::fs::statx(
        &at,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()?
    .stx_mnt_id;
    if id != u64::from(m.id) {
        tracing::info!(
            "mount {}: covered in its namespace, its root cannot be compared with the parent namespace's paths",
            m.mountpoint
        );
        return None;
    }
    let want = std::fs::File::from(at).metadata().ok()?;
    let mut found: Vec<(&MountInfo, String)> = base
        .iter()
        .enumerate()
        .filter(|(_, b)| b.major == m.major && b.minor == m.minor)
        .filter(|(k, b)| !base[k + 1..].iter().any(|o| o.mountpoint == b.mountpoint))
        .filter_map(|(_, b)| {
            let rest = path_within(&m.root, &b.root)?;
            Some(if rest == "/" {
                (b, b.mountpoint.clone())
            } else {
                (b, format!("{}{}", b.mountpoint.trim_end_matches('/'), rest))
            })
        })
        .collect();
    found.sort_by_key(|(b, _)| std::cmp::Reverse(b.root.len()));
    found.into_iter().map(|(_, p)| p).find(|path| {
        crate::sys::fd::stat_in_root(their_root, path)
            .is_ok_and(|st| st.dev() == want.dev() && st.ino() == want.ino())
    })
}

/// The tmpfs mounts whose contents are saved: fresh ones (not external, not bound from an
/// earlier mount).
fn saved_tmpfs(entries: &[pb::MntEntry]) -> Vec<usize> {
    // The root too when it is a tmpfs a nested namespace pivoted into.
    let first = usize::from(entries.first().and_then(|e| e.cryo_pivoted) != Some(true));
    (first..entries.len())
        .filter(|&i| {
            let e = &entries[i];
            e.fstype == TMPFS
                && e.ext_key.is_none()
                && e.cryo_copied.is_none()
                && e.cryo_outer.is_none()
                && bind_source(entries, i).is_none()
        })
        .collect()
}

fn tmpfs_image(e: &pb::MntEntry) -> String {
    format!("tmpfs-dev-{}.tar.gz.img", e.root_dev)
}

/// The saved tmpfs `entries[i]` of `pid`, opened (O_PATH) through `root` (the tree's root,
/// or that of a nested namespace): at its
/// own mount point, or at that of another mount of the same file system and root when
/// another mount covers this one (zdtm's tempfs_overmounted01); checked by mount id.
fn open_saved_mount(
    pid: i32,
    root: &str,
    entries: &[pb::MntEntry],
    i: usize,
) -> Result<(OwnedFd, bool), MountsError> {
    let e = &entries[i];
    let same = entries.iter().filter(|x| {
        x.mnt_id != e.mnt_id && x.root_dev == e.root_dev && x.root == e.root && x.ext_key.is_none()
    });
    let mut first: Option<OwnedFd> = None;
    for m in std::iter::once(e).chain(same) {
        let Ok(fd) =
            crate::sys::fd::open_in_root(root, &m.mountpoint, libc::O_PATH | libc::O_DIRECTORY)
        else {
            continue;
        };
        let id = rustix::fs::statx(
            &fd,
            "",
            rustix::fs::AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::MNT_ID,
        )
        .map(|st| st.stx_mnt_id)
        .ok();
        if id == Some(u64::from(m.mnt_id)) {
            return Ok((fd, true));
        }
        first.get_or_insert(fd);
    }
    if let Some(fd) = first {
        return Ok((fd, false));
    }
    Err(TaskError::Fd {
        pid,
        fd: -1,
        what: format!("find the tmpfs mount {}", e.mountpoint),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
    .into())
}

/// A detached copy of the mount `at` holds the root of, without what is mounted in it.
fn clone_alone(at: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    open_tree(
        at,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
}

/// A tmpfs (`e`) of `pid` that no path of the tree leads to, every mount of it being covered
/// by another (zdtm's tempfs_overmounted): a copy of one of its mounts alone, made in a
/// private copy of the tree's mount namespace (every mount made private first, so that
/// nothing propagates back), where the mounts covering it are detached. The copy is made by
/// a child of cryo in the user namespace that owns the tree's mount namespace, as CRIU does:
/// copied from any other, every mount of the copy is locked (the kernel's guard against
/// revealing what a mount covers), and no cover could be detached. `Err`: why no copy was
/// made.
fn uncover_tmpfs(pid: i32, e: &pb::MntEntry) -> Result<OwnedFd, String> {
    use rustix::fs::{open, statx, AtFlags, Mode, OFlags, StatxFlags};
    let none = || {
        "no copy of the tree's mount namespace with the cover detached could be made to read it"
            .to_string()
    };
    let mnt = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|_| none())?;
    let ino = |f: &OwnedFd| rustix::fs::fstat(f).ok().map(|st| (st.st_dev, st.st_ino));
    let own_userns = open(
        "/proc/self/ns/user",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| none())?;
    // None: owned by cryo's own user namespace, which the child stays in.
    let userns = crate::sys::ns::owner(mnt.as_fd())
        .ok()
        .filter(|u| ino(u) != ino(&own_userns));
    // cryo's /proc: the tree's, seen from its namespace, does not know cryo's child.
    let proc = open(
        "/proc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| none())?;
    // Runs in the child: nothing here may log.
    let work = || -> Option<OwnedFd> {
        crate::sys::ns::setns(mnt.as_fd(), NsType::Mount).ok()?;
        crate::sys::ns::unshare(UnshareFlags::NEWNS).ok()?;
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .ok()?;
        let own = rustix::fs::openat(
            &proc,
            "thread-self/mountinfo",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let infos = parse_mountinfo(&std::io::read_to_string(std::fs::File::from(own)).ok()?);
        let id_at = |p: &str| -> Option<u64> {
            let f = open(p, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()?;
            Some(
                statx(&f, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
                    .ok()?
                    .stx_mnt_id,
            )
        };
        let of_it = infos
            .iter()
            .filter(|m| encode_dev(m.major, m.minor) == e.root_dev && m.root == e.root);
        'mounts: for m in of_it {
            // The mount and the mounts it is in.
            let mut chain = vec![u64::from(m.id)];
            let mut up = m.parent;
            while let Some(p) = infos
                .iter()
                .find(|x| x.id == up && !chain.contains(&u64::from(x.id)))
            {
                chain.push(u64::from(p.id));
                up = p.parent;
            }
            let parts: Vec<&str> = m.mountpoint.split('/').filter(|c| !c.is_empty()).collect();
            for k in 1..=parts.len() {
                let p = format!("/{}", parts[..k].join("/"));
                let mut tries = 0;
                loop {
                    let Some(id) = id_at(&p) else {
                        continue 'mounts;
                    };
                    if chain.contains(&id) {
                        break;
                    }
                    tries += 1;
                    if tries > 64
                        || rustix::mount::unmount(p.as_str(), UnmountFlags::DETACH).is_err()
                    {
                        continue 'mounts;
                    }
                }
            }
            let f = open(
                m.mountpoint.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            let id = statx(&f, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
                .ok()?
                .stx_mnt_id;
            if id == u64::from(m.id) {
                return clone_alone(&f).ok();
            }
        }
        None
    };
    match crate::sys::proc::fd_from_child(userns.as_ref().map(|u| u.as_fd()), work) {
        Ok(Some(copy)) => {
            tracing::info!(
                "tmpfs {}: read in a copy of the namespace, its covers detached",
                e.mountpoint
            );
            Ok(copy)
        }
        Ok(None) => Err(none()),
        Err(err) => Err(format!(
            "the child of cryo's making a copy of the tree's mount namespace with the cover detached failed: {err}"
        )),
    }
}

/// Writes the mount entries and the tmpfs contents (read through /proc/PID/root while the
/// tree is frozen; for a namespace `nested` in the tree, through the namespace's root, as
/// `plan_nested` read its mounts).
pub fn write(
    pid: i32,
    ns_id: u32,
    entries: &[pb::MntEntry],
    dir: &ImageDir,
    nested: bool,
) -> Result<(), MountsError> {
    dir.write(&format!("mountpoints-{ns_id}.img"), image::MNTS, entries)?;
    let view = if nested { Some(ns_view(pid)?.1) } else { None };
    let root = match &view {
        Some(fd) => format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)),
        None => format!("/proc/{pid}/root"),
    };
    for i in saved_tmpfs(entries) {
        let e = &entries[i];
        let name = tmpfs_image(e);
        let out = dir.create_file(&name)?;
        // A copy of the mount alone (open_tree, not recursive), so that files under
        // directories other mounts cover are saved too (zdtm's tempfs). open_tree copies
        // mounts of the caller's namespace: made from inside the tree's; the mount itself if
        // that fails. A tmpfs every mount of which is covered is reached in a private copy
        // of the namespace.
        let (at, alone) = match open_saved_mount(pid, &root, entries, i) {
            Ok((at, true)) => {
                let _in = super::ns::InNs::enter(pid, true).ok();
                let alone = clone_alone(&at).ok();
                (Some(at), alone)
            }
            // `at` is where its mount point leads: another mount covering it. Its contents
            // are read in a copy of the namespace with the cover detached, or not at all
            // (never the cover's files saved as the tmpfs's).
            Ok((_, false)) => match uncover_tmpfs(pid, e) {
                Ok(c) => (None, Some(c)),
                Err(why) => {
                    return Err(Unsupported::of(
                        pid,
                        format!("tmpfs {}", e.mountpoint),
                        format!("every mount of it is covered by another mount, and {why}"),
                        "unmount what covers it before the dump",
                    )
                    .into())
                }
            },
            Err(err) => match uncover_tmpfs(pid, e) {
                Ok(c) => (None, Some(c)),
                Err(why) => {
                    tracing::warn!("tmpfs {}: {why}", e.mountpoint);
                    return Err(err);
                }
            },
        };
        if alone.is_none() {
            tracing::warn!(
                "tmpfs {}: no copy of it alone could be made; its contents are read where its mount point leads",
                e.mountpoint
            );
        }
        let Some(held) = alone.as_ref().or(at.as_ref()) else {
            return Err(TaskError::Internal("a tmpfs was neither reached nor copied").into());
        };
        let src = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(held)
        );
        let st = std::process::Command::new("tar")
            .args([
                "--create",
                "--gzip",
                "--no-unquote",
                "--no-wildcards",
                "--one-file-system",
                "--preserve-permissions",
                "--sparse",
                "--numeric-owner",
                "--warning=no-file-ignored",
                "--directory",
                &src,
                ".",
            ])
            .stdout(out)
            .stderr(std::process::Stdio::piped())
            .output();
        let failed = |why: String, hint: &str| {
            Unsupported::of(
                pid,
                format!("tmpfs {}", e.mountpoint),
                format!("saving its contents with tar failed: {why}"),
                hint,
            )
        };
        match st {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(failed(
                    String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    "tar names the file it could not read: cryo must be able to read every file of the tmpfs (a non-root cryo only its own user's)",
                )
                .into())
            }
            Err(e) => return Err(failed(e.to_string(), "is GNU tar installed?").into()),
        }
        let bytes = std::fs::read(dir.file(&name)).map_err(|source| image::ImageError::Io {
            path: dir.file(&name),
            op: "read back",
            source,
        })?;
        dir.record(&name, image::manifest::FileDigest::of(&bytes));
    }
    // binfmt_misc registrations, read through the mount itself (its mount point may lead
    // to another mount: refused then).
    for e in entries
        .iter()
        .skip(1)
        .filter(|e| e.fstype == BINFMT_MISC && e.root == "/" && e.ext_key.is_none())
    {
        let i = entries
            .iter()
            .position(|x| x.mnt_id == e.mnt_id)
            .unwrap_or(0);
        match open_saved_mount(pid, &root, entries, i) {
            Ok((at, true)) => super::binfmt::dump(pid, &at, &e.mountpoint, dir)?,
            _ => {
                return Err(Unsupported::of(
                    pid,
                    format!("mount {}", e.mountpoint),
                    "a binfmt_misc mount another mount covers: its registrations cannot be read",
                    "unmount what covers it before the dump",
                )
                .into())
            }
        }
    }
    Ok(())
}

/// Where the restored tree comes from: the new root and the host paths of external mounts.
#[derive(Debug, Clone, Default)]
pub struct MountOpts {
    pub root: Option<PathBuf>,
    /// External mount key → host path.
    pub external: HashMap<String, PathBuf>,
    /// `--enable-fs`: file systems (or `all`) the images may ask to mount by name (CRIU's
    /// `AUTO` type).
    pub enable_fs: Vec<String>,
    /// `--ext-mount-map auto` / `--external mnt[]`: auto-detected external mounts are bound
    /// from the host path saved with them.
    pub auto_external: bool,
}

impl MountOpts {
    /// The host path an external mount is bound from.
    fn external_path(&self, key: &str, e: &pb::MntEntry) -> Option<PathBuf> {
        if key == AUTODETECTED {
            return self.auto_external.then(|| Path::new("/").join(&e.source));
        }
        self.external.get(key).cloned()
    }
}

fn mnt_err<E: Into<std::io::Error>>(what: String) -> impl Fn(E) -> MountsError {
    move |e| MountsError::Mount {
        what: what.clone(),
        source: e.into(),
    }
}

/// The saved mounts as restore uses them: parents first, the root first (CRIU writes its
/// entries children first, the root last), each named by its file system (CRIU names only
/// `AUTO` ones: the others by their `fstype` number), with CRIU's 0 for "no peer group" or
/// "no master" read as none.
fn restore_order(mut entries: Vec<pb::MntEntry>) -> Vec<pb::MntEntry> {
    if entries.len() > 1 && entries.last().is_some_and(|e| e.mountpoint == "/") {
        entries.reverse();
    }
    for e in &mut entries {
        if e.fsname.as_deref().is_none_or(str::is_empty) {
            e.fsname = FRESH
                .iter()
                .find(|(_, c)| *c == e.fstype)
                .map(|(n, _)| n.to_string());
        }
        // CRIU's older form of an external mount: the key in `root`.
        if e.ext_mount == Some(true) && e.ext_key.is_none() {
            e.ext_key = Some(std::mem::replace(&mut e.root, "/".into()));
        }
        e.shared_id = e.shared_id.filter(|&g| g != 0);
        e.master_id = e.master_id.filter(|&g| g != 0);
    }
    let ids: Vec<u32> = entries.iter().map(|e| e.mnt_id).collect();
    let mut out: Vec<pb::MntEntry> = Vec::with_capacity(entries.len());
    let mut placed: Vec<u32> = Vec::new();
    let mut left = entries;
    while !left.is_empty() {
        let before = left.len();
        let (ready, rest): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|e| placed.contains(&e.parent_mnt_id) || !ids.contains(&e.parent_mnt_id));
        placed.extend(ready.iter().map(|e| e.mnt_id));
        out.extend(ready);
        left = rest;
        if left.len() == before {
            out.append(&mut left);
        }
    }
    out
}

/// Gives the root puppet (`cx`) the saved mount namespace of `img`, rebuilt on
/// `opts.root`. Runs after the puppet has its new net and IPC namespaces (sysfs and mqueue
/// are made in them) and before any file is opened.
pub fn restore(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    opts: &MountOpts,
) -> Result<(), MountsError> {
    let Some((entries, root)) = check(cx.dir, img, opts)? else {
        return Ok(());
    };
    // The host path of each external mount (None for the others).
    let ext_paths: Vec<Option<PathBuf>> = entries
        .iter()
        .map(|e| e.ext_key.as_ref().and_then(|k| opts.external_path(k, e)))
        .collect();
    let pid = cx.pid;
    // Absolute: a builder that joins a mount namespace starts at its root, not in cryo's
    // working directory.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = abs(&cx.dir.path);
    let root = abs(&root);
    // A relative host path of an external mount is taken from "/", as CRIU's bind (made
    // from the root of the namespace it restores in) takes it: zdtm's mnt_root_ext gives
    // `--external mnt[MNT]:.zdtm_root_ext.tmp` for /.zdtm_root_ext.tmp.
    let ext_paths: Vec<Option<PathBuf>> = ext_paths
        .iter()
        .map(|p| p.as_deref().map(|p| Path::new("/").join(p)))
        .collect();
    // A puppet in a user namespace of its own makes the mount namespace itself, so that
    // namespace owns it (mounts made in it are then the tree's to change); the builder joins
    // it. Otherwise the builder makes one.
    let userns = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/user"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let own = userns(&pid.to_string()) != userns("self");
    if own {
        cx.unshare(libc::CLONE_NEWNS)?;
    }
    let (nsfd, ptys, roots, binfmt) = std::thread::scope(|s| {
        s.spawn(|| build(pid, own, &root, &entries, &ext_paths, &dir))
            .join()
            .unwrap_or(Err(TaskError::Internal("the mount builder panicked").into()))
    })?;
    cx.objs.borrow_mut().tty.premade.extend(ptys);
    cx.objs.borrow_mut().mount_roots.extend(roots);
    cx.objs.borrow_mut().binfmt.extend(binfmt);
    Ok(cx.join_ns(nsfd.as_fd(), libc::CLONE_NEWNS, "setns(CLONE_NEWNS)")?)
}

/// The entries of the nested mount namespace `id` (`plan_nested`), checked before anything
/// is built: plain absolute paths; copied mounts named; new ones only file systems cryo makes
/// fresh (or enabled with `--enable-fs`) or binds of mounts of the namespace, never external.
pub fn check_nested(
    dir: &ImageDir,
    id: u32,
    opts: &MountOpts,
) -> Result<Vec<pb::MntEntry>, MountsError> {
    let entries = restore_order(dir.read(&format!("mountpoints-{id}.img"), image::MNTS)?);
    let bad = |what: String| -> MountsError {
        TaskError::BadImage(format!("mountpoints-{id}.img: {what}")).into()
    };
    let pivoted = entries.first().and_then(|e| e.cryo_pivoted) == Some(true);
    if entries.first().and_then(|e| e.cryo_copied).is_none() && !pivoted {
        return Err(bad(
            "the root of a nested mount namespace is neither a copy of its parent's nor pivoted into".into(),
        ));
    }
    if pivoted && entries.iter().any(|e| e.cryo_copied.is_some()) {
        return Err(bad(
            "a namespace that pivoted into a new root has mounts copied from its parent's".into(),
        ));
    }
    if pivoted && entries.first().is_some_and(|e| e.mountpoint != "/") {
        return Err(bad("the first mount is not the root".into()));
    }
    for (i, e) in entries.iter().enumerate() {
        // A copy's root is only compared (an nsfs mount's is `net:[INO]`).
        if !clean_path(&e.mountpoint) || (e.cryo_copied.is_none() && !clean_path(&e.root)) {
            return Err(bad(format!(
                "mount {} has a mount point or root ({}) that is not a plain absolute path",
                e.mnt_id, e.root
            )));
        }
        if e.ext_key.is_some() {
            return Err(Unsupported::restore(format!(
                "mount {} of a mount namespace nested in the tree is external: cryo does not bind external mounts there yet",
                e.mountpoint
            ))
            .into());
        }
        if let Some(p) = &e.cryo_outer {
            if !clean_path(p) || e.cryo_copied.is_some() || e.ext_key.is_some() {
                return Err(bad(format!(
                    "mount {} is bound from its parent namespace's {p}, which is not a plain absolute path, or it is also copied or external",
                    e.mountpoint
                )));
            }
            continue;
        }
        match e.cryo_copied {
            Some(COPIED_AS_IS | COPIED_PRIVATE | COPIED_SLAVE) if e.fsname.is_some() => continue,
            Some(_) => {
                return Err(bad(format!(
                    "copied mount {} is not described",
                    e.mountpoint
                )))
            }
            None => {}
        }
        if bind_source(&entries, i).is_some() {
            continue;
        }
        let named = e.fsname.as_deref().and_then(fstype_code);
        let enabled = e.fstype == AUTO
            && e.fsname.as_deref().is_some_and(|n| {
                !n.is_empty() && opts.enable_fs.iter().any(|f| f == "all" || f == n)
            });
        if !enabled && (named.is_none() || named != Some(e.fstype)) {
            return Err(bad(format!(
                "mount {} ({}) is not a file system cryo makes fresh",
                e.mountpoint,
                e.fsname.as_deref().unwrap_or("?")
            )));
        }
    }
    Ok(entries)
}

/// Mounts of a nested mount namespace not made yet: proc mounts of a PID namespace whose
/// init is created later than the task that made the mount namespace (`unshare --mount
/// --pid --fork --mount-proc`: the parent makes the mount namespace, the child is the PID
/// namespace's init), and what is mounted below them.
pub struct PendingMounts {
    /// Host PID of a puppet in the namespace.
    owner: i32,
    entries: Vec<pb::MntEntry>,
    /// Indexes into `entries` still to mount, in order.
    todo: Vec<usize>,
    dir: PathBuf,
    /// Registrations made in its binfmt_misc mounts (removed again if the restore fails).
    pub binfmt: Vec<super::binfmt::Made>,
}

/// Gives the puppet `cx` (a child whose mount namespace is not its parent's) the saved
/// nested mount namespace of `img`: the puppet copies the one it inherited
/// (`unshare(CLONE_NEWNS)`, as the namespace was made), then a cryo thread that joined it
/// sets the propagation of the copied mounts as saved, unmounts the copies the task had
/// unmounted, and mounts the new ones (`host_of`: a tree PID's host PID, for the PID
/// namespace of a proc mount; those whose PID namespace is not there yet are returned for
/// [`finish_pending`]). Runs before any file of the task is opened.
pub fn restore_nested(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    opts: &MountOpts,
    host_of: &(dyn Fn(u32) -> Option<i32> + Sync),
) -> Result<Option<PendingMounts>, MountsError> {
    let Some(id) = img.ids.mnt_ns_id else {
        return Ok(None);
    };
    let entries = check_nested(cx.dir, id, opts)?;
    let pid = cx.pid;
    cx.unshare(libc::CLONE_NEWNS)?;
    if entries.first().and_then(|e| e.cryo_pivoted) == Some(true) {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut pending = PendingMounts {
            owner: pid,
            todo: (0..entries.len()).collect(),
            entries,
            dir: abs(&cx.dir.path),
            binfmt: Vec::new(),
        };
        let ptys = std::thread::scope(|s| {
            s.spawn(|| build_pivoted(&mut pending, host_of))
                .join()
                .unwrap_or(Err(TaskError::Internal("the mount builder panicked").into()))
        })?;
        cx.objs.borrow_mut().tty.premade.extend(ptys);
        cx.objs.borrow_mut().binfmt.append(&mut pending.binfmt);
        return Ok((!pending.todo.is_empty()).then_some(pending));
    }
    // The copy, as the puppet sees it; each copied entry is matched with its mount there.
    let current = tree_order(parse_mountinfo(&crate::procfs::read(pid, "mountinfo")?));
    let cur_keys = copy_keys(
        current
            .iter()
            .map(|m| (m.mountpoint.as_str(), m.root.as_str())),
    );
    let copied: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].cryo_copied.is_some())
        .collect();
    let saved_keys = copy_keys(
        copied
            .iter()
            .map(|&i| (entries[i].mountpoint.as_str(), entries[i].root.as_str())),
    );
    // For each current mount, the entry it is the copy of.
    let mut of_current: Vec<Option<usize>> = vec![None; current.len()];
    for (k, &i) in saved_keys.iter().zip(&copied) {
        let e = &entries[i];
        let found = cur_keys
            .iter()
            .position(|c| c == k)
            .filter(|&j| Some(current[j].fstype.as_str()) == e.fsname.as_deref());
        let Some(j) = found else {
            return Err(Unsupported::restore(format!(
                "mount {} ({} {}) was a copy of a mount of its parent namespace, which has no such mount now",
                e.mountpoint,
                e.fsname.as_deref().unwrap_or("?"),
                e.root
            ))
            .into());
        };
        of_current[j] = Some(i);
    }
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = abs(&cx.dir.path);
    let todo: Vec<usize> = (1..entries.len())
        .filter(|&i| entries[i].cryo_copied.is_none())
        .collect();
    let mut pending = PendingMounts {
        owner: pid,
        entries,
        todo,
        dir,
        binfmt: Vec::new(),
    };
    let ptys = std::thread::scope(|s| {
        s.spawn(|| build_nested(&mut pending, Some((&current, &of_current)), host_of))
            .join()
            .unwrap_or(Err(TaskError::Internal("the mount builder panicked").into()))
    })?;
    cx.objs.borrow_mut().tty.premade.extend(ptys);
    cx.objs.borrow_mut().binfmt.append(&mut pending.binfmt);
    Ok((!pending.todo.is_empty()).then_some(pending))
}

/// Mounts what `pending` could not before: those whose PID namespace now has its init
/// (`host_of`). Returns the ptys made on the way; `pending.todo` keeps what is still waiting.
pub fn finish_pending(
    pending: &mut PendingMounts,
    host_of: &(dyn Fn(u32) -> Option<i32> + Sync),
) -> Result<Vec<(u32, OwnedFd)>, MountsError> {
    let ready = pending.todo.iter().any(|&i| {
        pending.entries[i]
            .cryo_proc_pid
            .is_none_or(|p| host_of(p).is_some())
    });
    if !ready {
        return Ok(Vec::new());
    }
    std::thread::scope(|s| {
        s.spawn(|| build_nested(pending, None, host_of))
            .join()
            .unwrap_or(Err(TaskError::Internal("the mount builder panicked").into()))
    })
}

/// Whether `pending` still waits for a PID namespace (its todo is not empty).
pub fn is_pending(pending: &PendingMounts) -> bool {
    !pending.todo.is_empty()
}

/// The mount `m` of the namespace the calling thread is in (by its id), through its mount
/// point: it must be the topmost one there.
fn reach(jail: &Jail, m: &MountInfo) -> Result<Found, MountsError> {
    let f = jail
        .find(&m.mountpoint, None)
        .map_err(mnt_err(format!("find the copied mount {}", m.mountpoint)))?;
    let st = rustix::fs::statx(
        &f.0,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .map_err(mnt_err(format!("statx {}", m.mountpoint)))?;
    if st.stx_mnt_id != u64::from(m.id) {
        return Err(MountsError::Mount {
            what: format!("reach the copied mount {} (id {})", m.mountpoint, m.id),
            source: std::io::Error::other("another mount covers it"),
        });
    }
    Ok(f)
}

/// Joins (the calling thread, with its own fs attributes) the net, IPC, cgroup and mount
/// namespaces of restored puppet `pid`.
fn join_owner(pid: i32) -> Result<(), MountsError> {
    crate::sys::ns::unshare(UnshareFlags::FS).map_err(mnt_err("unshare(CLONE_FS)".into()))?;
    for (ns, kind) in [
        ("net", NsType::Network),
        ("ipc", NsType::InterProcessCommunication),
        ("cgroup", NsType::ControlGroup),
        ("mnt", NsType::Mount),
    ] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|source| {
            MountsError::Mount {
                what: format!("open the restored {ns} namespace"),
                source,
            }
        })?;
        crate::sys::ns::setns(f.as_fd(), kind)
            .map_err(mnt_err(format!("join the restored {ns} namespace")))?;
    }
    Ok(())
}

/// A copy, alone (`open_tree`), of what `p` leads to in the namespace `jail` is the root of:
/// the source of a bind from the parent namespace (`cryo_outer`), taken before the copies of
/// the parent's mounts the task had unmounted go.
fn clone_outer(jail: &Jail, p: &str) -> Result<OwnedFd, MountsError> {
    let f = jail
        .find(p, None)
        .map_err(mnt_err(format!("find {p} in the parent namespace's copy")))?;
    clone_alone(&f.0).map_err(mnt_err(format!(
        "copy {p} of the parent namespace (open_tree)"
    )))
}

/// Attaches `clone` (`clone_outer`) at the mount point of `entries[i]` (at `place` when
/// given, else reached from `jail`), made private at once (a copy of a shared mount is its
/// peer), with the saved flags. Returns an fd of its root.
fn attach_outer(
    clone: &OwnedFd,
    jail: &Jail,
    e: &pb::MntEntry,
    place: Option<(&Jail, &str)>,
) -> Result<OwnedFd, MountsError> {
    use crate::sys::mount::{set_propagation, Propagation};
    use rustix::mount::{move_mount, MoveMountFlags};
    let what = |w: &str| {
        format!(
            "{w} the bind of the parent namespace's {} at {}",
            e.cryo_outer.as_deref().unwrap_or("?"),
            e.mountpoint
        )
    };
    let file = rustix::fs::fstat(clone)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
    let find = |create: Option<bool>| match place {
        Some((d, n)) => d.find(n, create),
        None => jail.find(&e.mountpoint, create),
    };
    let target = find(Some(file)).map_err(mnt_err(what("make the mount point of")))?;
    move_mount(
        clone.as_fd(),
        "",
        target.0.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(mnt_err(what("attach")))?;
    let top = find(None).map_err(mnt_err(what("find")))?;
    set_propagation(top.0.as_fd(), Propagation::Private).map_err(mnt_err(what("make private")))?;
    let flags = safe_flags(e.flags);
    if !flags.is_empty() {
        rustix::mount::mount_remount(top.path(), MountFlags::BIND | flags, "")
            .map_err(mnt_err(what("set the flags of")))?;
    }
    Ok(top.0)
}

/// A directory of the namespace `jail` is the root of to build a new tree on: the first
/// subdirectory of its root (in a private copy that is discarded: what covers it there is
/// seen nowhere else).
fn spot_in(jail: &Jail) -> Result<String, MountsError> {
    use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags};
    let fd = openat(
        &jail.root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(mnt_err("read the copy's root".into()))?;
    let dir = Dir::read_from(&fd).map_err(mnt_err("read the copy's root".into()))?;
    for ent in dir.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if statat(&fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        {
            return Ok(name);
        }
    }
    Err(MountsError::Mount {
        what: "find a directory in the copy of the parent namespace to build the new root on"
            .into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// On a thread of its own, for a nested namespace that had pivoted into a new root
/// (`cryo_pivoted`): joins the owner puppet's namespaces; in the copy of the parent's
/// namespace it made (private: it is discarded) takes the sources of the binds from the
/// parent namespace, mounts the saved tree on a directory there (cryo's root back meanwhile,
/// as in `build_nested`), pivots into it (the puppet's root and working directory move with
/// it), detaches the old root, then sets the propagation saved.
fn build_pivoted(
    pending: &mut PendingMounts,
    host_of: &(dyn Fn(u32) -> Option<i32> + Sync),
) -> Result<Vec<(u32, OwnedFd)>, MountsError> {
    use rustix::fs::{open, Mode, OFlags};
    let pid = pending.owner;
    let host_root = open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(mnt_err("open cryo's root".into()))?;
    join_owner(pid)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(mnt_err(
        "make the copy of the parent namespace private".into(),
    ))?;
    let old = Jail::new(Path::new("/")).map_err(mnt_err("open the namespace's root".into()))?;
    let n = pending.entries.len();
    // A proc mount of a PID namespace whose init is created later (and what waits with it)
    // is mounted in the new root once that init exists (`finish_pending`, after the pivot).
    let waits = waiting(&pending.entries, &pending.todo, host_of);
    if waits[0] {
        return Err(Unsupported::restore(
            "the new root of a namespace that pivoted into it is a proc mount of a PID namespace restored later".to_string(),
        )
        .into());
    }
    if let Some(e) = (0..n)
        .filter(|&i| waits[i])
        .map(|i| &pending.entries[i])
        .find(|e| e.cryo_outer.is_some())
    {
        return Err(Unsupported::restore(format!(
            "mount {}, bound from the parent namespace, is below a proc mount of a PID namespace restored later, in a namespace that pivoted into a new root: what it is bound from is gone after the pivot",
            e.mountpoint
        ))
        .into());
    }
    let mut outer: Vec<Option<OwnedFd>> = Vec::with_capacity(n);
    for e in &pending.entries {
        outer.push(
            e.cryo_outer
                .as_deref()
                .map(|p| clone_outer(&old, p))
                .transpose()?,
        );
    }
    let spot = spot_in(&old)?;
    rustix::process::fchdir(&host_root).map_err(mnt_err("fchdir to cryo's root".into()))?;
    rustix::process::chroot(".").map_err(mnt_err("chroot to cryo's root".into()))?;
    // The root writable while the tree is built on it; its own flags last.
    let mut entries = pending.entries.clone();
    let ro = MountFlags::RDONLY.bits();
    let (root_flags, root_sb) = (entries[0].flags, entries[0].sb_flags.unwrap_or(0));
    entries[0].flags &= !ro;
    entries[0].sb_flags = Some(root_sb & !ro);
    let none: Vec<Option<PathBuf>> = vec![None; n];
    let mut ptys = Vec::new();
    let mut roots: Vec<Option<OwnedFd>> = (0..n).map(|_| None).collect();
    let mut places: Vec<Option<(Jail, String)>> = (0..n).map(|_| None).collect();
    places[0] = Some((
        old.dup().map_err(mnt_err("hold the copy's root".into()))?,
        spot,
    ));
    for i in std::iter::once(0).chain(mount_sequence(&entries)) {
        if waits[i] {
            continue;
        }
        let e = &entries[i];
        let place = if i == 0 {
            places[0].take()
        } else {
            place_of(&entries, i, &roots, &places)?
        };
        let jail = match &roots[0] {
            Some(r) => Jail::of(r).map_err(mnt_err("hold the new root".into()))?,
            None => old.dup().map_err(mnt_err("hold the copy's root".into()))?,
        };
        let fd = if let Some(c) = &outer[i] {
            attach_outer(c, &jail, e, place.as_ref().map(|(d, n)| (d, n.as_str())))?
        } else {
            let procns = match e.cryo_proc_pid {
                Some(p) => host_of(p).ok_or(TaskError::Internal(
                    "a proc mount that waits for its PID namespace was not left for later",
                ))?,
                None => pid,
            };
            mount_one(
                procns,
                &jail,
                &entries,
                i,
                &none,
                &pending.dir,
                &mut ptys,
                place.as_ref().map(|(d, n)| (&roots[..], d, n.as_str())),
            )?
        };
        roots[i] = Some(fd);
        places[i] = place;
    }
    let root_path = |roots: &[Option<OwnedFd>]| {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            roots[0].as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
        ))
    };
    let flags = safe_flags(root_flags);
    // A root bound from the parent's namespace (cryo_outer) has its flags from
    // `attach_outer`: its superblock is the parent's or the host's, never remounted here.
    let own_root = outer[0].is_none();
    if own_root && root_sb & ro != 0 {
        rustix::mount::mount_remount(
            root_path(&roots),
            flags | MountFlags::RDONLY,
            entries[0].options.as_str(),
        )
        .map_err(mnt_err("make the new root read-only".into()))?;
        if !flags.contains(MountFlags::RDONLY) {
            rustix::mount::mount_remount(root_path(&roots), MountFlags::BIND | flags, "")
                .map_err(mnt_err("set the flags of the new root".into()))?;
        }
    } else if own_root && flags.contains(MountFlags::RDONLY) {
        rustix::mount::mount_remount(root_path(&roots), MountFlags::BIND | flags, "")
            .map_err(mnt_err("make the new root read-only".into()))?;
    }
    if entries.iter().any(|e| e.fstype == BINFMT_MISC) {
        let saved = super::binfmt::load(&pending.dir)?;
        pending
            .binfmt
            .extend(register_binfmt(&entries, &roots, &saved)?);
    }
    // Into the namespace's root again, then pivot (every process whose root or working
    // directory is the old root moves with it: the puppet).
    let new_root = roots[0].as_ref().expect("mounted first");
    rustix::process::fchdir(&old.root).map_err(mnt_err("fchdir to the namespace's root".into()))?;
    rustix::process::chroot(".").map_err(mnt_err("chroot to the namespace's root".into()))?;
    rustix::process::fchdir(new_root).map_err(mnt_err("fchdir to the new root".into()))?;
    rustix::process::pivot_root(".", ".").map_err(mnt_err("pivot_root".into()))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(mnt_err("detach the old root".into()))?;
    rustix::process::fchdir(&host_root).map_err(mnt_err("fchdir to cryo's root".into()))?;
    rustix::process::chroot(".").map_err(mnt_err("chroot to cryo's root".into()))?;
    super::propagation::restore(&entries, &roots, &[])?;
    pending.todo.retain(|&i| waits[i]);
    Ok(ptys)
}

/// On a thread of its own: joins the owner puppet's net, IPC and cgroup namespaces and its
/// mount namespace, then takes cryo's root back (`chroot` to an fd of it kept from before:
/// paths through cryo's /proc keep working; mount targets are reached through fds of the
/// namespace). With `copy` (the copy's mounts and the entry each is a copy of) it first sets
/// the copies' propagation and unmounts the unmatched ones; then mounts what of
/// `pending.todo` it can, and sets the new mounts' propagation.
fn build_nested(
    pending: &mut PendingMounts,
    copy: Option<(&[MountInfo], &[Option<usize>])>,
    host_of: &(dyn Fn(u32) -> Option<i32> + Sync),
) -> Result<Vec<(u32, OwnedFd)>, MountsError> {
    use crate::sys::mount::{set_propagation, Propagation};
    use rustix::fs::{open, Mode, OFlags};
    let pid = pending.owner;
    let host_root = open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(mnt_err("open cryo's root".into()))?;
    join_owner(pid)?;
    let jail = Jail::new(Path::new("/")).map_err(mnt_err("open the namespace's root".into()))?;
    rustix::process::fchdir(&host_root).map_err(mnt_err("fchdir to cryo's root".into()))?;
    rustix::process::chroot(".").map_err(mnt_err("chroot to cryo's root".into()))?;
    let entries = &pending.entries;
    let mut outer: HashMap<usize, OwnedFd> = HashMap::new();
    if let Some((current, of_current)) = copy {
        // Propagation first, so that nothing unmounted below propagates to the parent
        // namespace; unmatched copies are made private before they go.
        let mut fds: HashMap<u32, Found> = HashMap::new();
        for (m, e) in current.iter().zip(of_current) {
            let how = e.and_then(|i| entries[i].cryo_copied);
            let p = match how {
                Some(COPIED_AS_IS) => continue,
                Some(COPIED_SLAVE) => Propagation::Slave,
                // A copy made unbindable in the nested namespace (CRIU keeps it in flags).
                Some(_) if e.is_some_and(|i| entries[i].flags & UNBINDABLE != 0) => {
                    Propagation::Unbindable
                }
                _ => Propagation::Private,
            };
            let Ok(f) = reach(&jail, m) else {
                // Covered by another mount: fine when it is as it must be already (an
                // unmatched one goes with its unmatched parent, or is unmounted below).
                let already = match p {
                    Propagation::Slave => shared_of(m).is_none() && master_of(m).is_some(),
                    Propagation::Unbindable => {
                        shared_of(m).is_none() && master_of(m).is_none() && unbindable_of(m)
                    }
                    _ => shared_of(m).is_none() && master_of(m).is_none() && !unbindable_of(m),
                };
                if e.is_some() && !already {
                    reach(&jail, m)?;
                }
                continue;
            };
            set_propagation(f.0.as_fd(), p).map_err(mnt_err(format!(
                "set the propagation of the copied mount {}",
                m.mountpoint
            )))?;
            fds.insert(m.id, f);
        }
        // Binds from the parent namespace, taken while the copy still has what they come
        // from.
        for &i in &pending.todo {
            if let Some(p) = &entries[i].cryo_outer {
                outer.insert(i, clone_outer(&jail, p)?);
            }
        }
        for (j, m) in current.iter().enumerate().rev() {
            if of_current[j].is_some() {
                continue;
            }
            let parent = current.iter().position(|p| p.id == m.parent);
            let parent_matched = parent.is_some_and(|p| of_current[p].is_some());
            if !parent_matched {
                continue; // goes with its unmatched parent
            }
            let p = parent.expect("matched");
            let pe = of_current[p].map(|i| &entries[i]);
            if pe.is_some_and(|e| e.cryo_copied == Some(COPIED_AS_IS))
                && shared_of(&current[p]).is_some()
            {
                return Err(Unsupported::restore(format!(
                    "mount {} is in the parent namespace but was not in the nested one, below a mount shared with the parent's: unmounting it would unmount the parent's too",
                    m.mountpoint
                ))
                .into());
            }
            let f = match fds.remove(&m.id) {
                Some(f) => f,
                None => reach(&jail, m)?,
            };
            rustix::mount::unmount(f.path(), UnmountFlags::DETACH).map_err(mnt_err(format!(
                "unmount the copied mount {}",
                m.mountpoint
            )))?;
        }
    }
    let mut ptys = Vec::new();
    let mut fds: Vec<Option<OwnedFd>> = (0..entries.len()).map(|_| None).collect();
    let waits = waiting(entries, &pending.todo, host_of);
    let left: Vec<usize> = pending.todo.iter().copied().filter(|&i| waits[i]).collect();
    let none: Vec<Option<PathBuf>> = vec![None; entries.len()];
    for &i in &pending.todo {
        let e = &entries[i];
        let procns = match e.cryo_proc_pid {
            Some(p) => host_of(p),
            None => Some(pid),
        };
        let Some(procns) = procns.filter(|_| !waits[i]) else {
            continue;
        };
        if let Some(c) = outer.get(&i) {
            fds[i] = Some(attach_outer(c, &jail, e, None)?);
            continue;
        }
        if e.cryo_outer.is_some() {
            return Err(Unsupported::restore(format!(
                "mount {}, bound from the parent namespace, is below a proc mount of a PID namespace restored later: cryo cannot bind it then",
                e.mountpoint
            ))
            .into());
        }
        fds[i] = Some(mount_one(
            procns,
            &jail,
            entries,
            i,
            &none,
            &pending.dir,
            &mut ptys,
            None,
        )?);
    }
    super::propagation::restore(entries, &fds, &[])?;
    // (This thread has cryo's root: an F-flag interpreter of a binfmt_misc mount made only
    // in a nested namespace is looked up there.)
    if entries.iter().any(|e| e.fstype == BINFMT_MISC) {
        let saved = super::binfmt::load(&pending.dir)?;
        pending
            .binfmt
            .extend(register_binfmt(entries, &fds, &saved)?);
    }
    pending.todo = left;
    Ok(ptys)
}

/// Which of `entries` (those of `todo`) wait: a proc mount of a PID namespace whose init is
/// not created yet, what is mounted below one that waits, and what is in a peer group (or is
/// a slave of one) with one that waits: `propagation::restore` joins only the mounts of one
/// batch.
fn waiting(
    entries: &[pb::MntEntry],
    todo: &[usize],
    host_of: &(dyn Fn(u32) -> Option<i32> + Sync),
) -> Vec<bool> {
    let groups = |e: &pb::MntEntry| [e.shared_id, e.master_id];
    let related = |a: &pb::MntEntry, b: &pb::MntEntry| {
        groups(a)
            .into_iter()
            .flatten()
            .any(|g| groups(b).contains(&Some(g)))
    };
    let mut waits: Vec<bool> = vec![false; entries.len()];
    loop {
        let mut changed = false;
        for &i in todo {
            if waits[i] {
                continue;
            }
            let e = &entries[i];
            let w = e.cryo_proc_pid.is_some_and(|p| host_of(p).is_none())
                || todo.iter().any(|&j| {
                    waits[j] && (entries[j].mnt_id == e.parent_mnt_id || related(&entries[j], e))
                });
            if w {
                waits[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    waits
}

/// Reads `mountpoints-ID.img` of `img` and checks it before anything is built: plain
/// absolute paths, only file systems cryo makes fresh, the root first, a host path for every
/// external key, and `--root` given. Returns the entries and the new root; None when the
/// task has no mount namespace recorded.
#[allow(clippy::type_complexity)]
pub fn check(
    dir: &ImageDir,
    img: &TaskImages,
    opts: &MountOpts,
) -> Result<Option<(Vec<pb::MntEntry>, PathBuf)>, MountsError> {
    let Some(id) = img.ids.mnt_ns_id else {
        return Ok(None);
    };
    let entries = restore_order(dir.read(&format!("mountpoints-{id}.img"), image::MNTS)?);
    let root = opts.root.clone().ok_or_else(|| {
        Unsupported::restore(format!(
            "the tree had a mount namespace of its own (root mount: {} {}): give --root DIR with its root file system",
            entries.first().and_then(|e| e.fsname.clone()).unwrap_or_default(),
            entries.first().map(|e| e.root.as_str()).unwrap_or("?")
        ))
    })?;
    for e in &entries {
        if !clean_path(&e.mountpoint) || !clean_path(&e.root) {
            return Err(TaskError::BadImage(format!(
                "mountpoints-{id}.img: mount {} has a mount point or root ({}) that is not a plain absolute path",
                e.mnt_id, e.root
            )).into());
        }
    }
    // Only file systems cryo makes fresh are mounted from the images' own words.
    for i in 1..entries.len() {
        let e = &entries[i];
        if e.ext_key.is_some() || bind_source(&entries, i).is_some() {
            continue;
        }
        let named = e.fsname.as_deref().and_then(fstype_code);
        let enabled = e.fstype == AUTO
            && e.fsname.as_deref().is_some_and(|n| {
                !n.is_empty() && opts.enable_fs.iter().any(|f| f == "all" || f == n)
            });
        if !enabled && (named.is_none() || named != Some(e.fstype)) {
            return Err(TaskError::BadImage(format!(
                "mountpoints-{id}.img: mount {} ({}) is not a file system cryo makes fresh",
                e.mountpoint,
                e.fsname.as_deref().unwrap_or("?")
            ))
            .into());
        }
    }
    if entries.first().map(|e| e.mountpoint.as_str()) != Some("/") {
        return Err(TaskError::BadImage(format!(
            "mountpoints-{id}.img: the first mount is not the root"
        ))
        .into());
    }
    for e in &entries {
        if let Some(k) = &e.ext_key {
            if k == AUTODETECTED && !opts.auto_external {
                return Err(Unsupported::restore(format!(
                    "mount {} is an auto-detected external mount (of /{}): give --ext-mount-map auto to bind it again",
                    e.mountpoint, e.source
                )).into());
            }
            if opts.external_path(k, e).is_none() {
                return Err(Unsupported::restore(format!(
                    "mount {} is external with key '{k}' and no host path was given for it (--external mnt[{k}]:HOSTPATH)",
                    e.mountpoint
                )).into());
            }
        }
    }
    Ok(Some((entries, root)))
}

/// A hostile image must not reach outside the new root: absolute paths without `..`.
fn clean_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir))
}

/// Resolves, as `build` does, the bind source (if any) and then the mount point of every
/// entry after the root inside `root`, making missing mount points, without mounting
/// anything; returns the host paths found. For tests and `cryo-fuzz`: what a hostile image
/// names must stay inside `root`.
pub fn resolve_dry(
    root: &Path,
    entries: &[pb::MntEntry],
    external: &HashMap<String, PathBuf>,
) -> Result<Vec<PathBuf>, MountsError> {
    let io = |w: String| move |source| MountsError::Mount { what: w, source };
    let jail = Jail::new(root).map_err(io(format!("open {}", root.display())))?;
    let real = |f: Found| std::fs::read_link(f.path()).map_err(io("read back a path".into()));
    let mut out = Vec::new();
    for i in 1..entries.len() {
        let e = &entries[i];
        let mut file = false;
        if e.ext_key.is_none() {
            if let Some((j, rest)) = bind_source(entries, i) {
                let src = &entries[j];
                let found = match &src.ext_key {
                    Some(k) => {
                        let host = external.get(k).ok_or_else(|| {
                            Unsupported::restore(format!("no host path for key '{k}'"))
                        })?;
                        Jail::new(host).and_then(|x| x.find(&rest, None))
                    }
                    None if j == 0 => jail.find(&rest, None),
                    None if rest == "/" => jail.find(&src.mountpoint, None),
                    None => jail.find(
                        &format!("{}{}", src.mountpoint.trim_end_matches('/'), rest),
                        None,
                    ),
                };
                if let Ok(f) = found {
                    file = std::fs::metadata(f.path()).is_ok_and(|m| m.is_file());
                    out.push(real(f)?);
                }
            }
        }
        let target = jail
            .find(&e.mountpoint, Some(file))
            .map_err(io(format!("create the mount point {}", e.mountpoint)))?;
        out.push(real(target)?);
    }
    Ok(out)
}

/// For each external mount that was the slave of a peer group outside the tree
/// (`--enable-external-masters`): the root of a mount of cryo's namespace in that group, if
/// there is one (the host's mount the external one was bound from, on the same machine), so
/// that the restored mount is made its slave again, as CRIU does. None for the others.
fn external_masters(
    entries: &[pb::MntEntry],
    external: &[Option<PathBuf>],
) -> Vec<Option<OwnedFd>> {
    use rustix::fs::{open, Mode, OFlags};
    let in_tree: HashSet<u32> = entries.iter().filter_map(|e| e.shared_id).collect();
    let wanted = |i: usize| {
        let e = &entries[i];
        e.master_id
            .filter(|m| external.get(i).is_some_and(Option::is_some) && !in_tree.contains(m))
    };
    if !(0..entries.len()).any(|i| wanted(i).is_some()) {
        return entries.iter().map(|_| None).collect();
    }
    let own = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default();
    (0..entries.len())
        .map(|i| {
            let m = wanted(i)?;
            let host = own.iter().find(|o| shared_of(o) == Some(m))?;
            let fd = open(
                host.mountpoint.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            tracing::info!(
                "mount {} was a slave of peer group {m}, outside the tree: it will be the slave of {} again",
                entries[i].mountpoint,
                host.mountpoint
            );
            Some(fd)
        })
        .collect()
}

/// On a thread of its own (namespaces and root are per thread): joins the puppet's net and
/// IPC namespaces, makes a private mount namespace (or, with `join`, joins the one the
/// puppet made in its user namespace), mounts every entry under `root`, pivots into it and
/// returns an fd of the namespace, and the ptys it had to make (index, master).
#[allow(clippy::type_complexity)]
fn build(
    pid: i32,
    join: bool,
    root: &Path,
    entries: &[pb::MntEntry],
    external: &[Option<PathBuf>],
    dir: &Path,
) -> Result<
    (
        OwnedFd,
        Vec<(u32, OwnedFd)>,
        MountRoots,
        Vec<super::binfmt::Made>,
    ),
    MountsError,
> {
    use std::os::fd::AsFd;
    // Masters outside the tree, reached from cryo's namespace (before leaving it).
    let ext_masters = external_masters(entries, external);
    // Read while the images are still reachable (not after `pivot_root`).
    let saved_binfmt = if entries.iter().any(|e| e.fstype == BINFMT_MISC) {
        super::binfmt::load(dir)?
    } else {
        Vec::new()
    };
    for (ns, kind) in [
        ("net", NsType::Network),
        ("ipc", NsType::InterProcessCommunication),
        ("cgroup", NsType::ControlGroup),
    ] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).map_err(|source| {
            MountsError::Mount {
                what: format!("open the restored {ns} namespace"),
                source,
            }
        })?;
        crate::sys::ns::setns(f.as_fd(), kind)
            .map_err(mnt_err(format!("join the restored {ns} namespace")))?;
    }
    if join {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|source| {
            MountsError::Mount {
                what: "open the restored mount namespace".into(),
                source,
            }
        })?;
        crate::sys::ns::unshare(UnshareFlags::FS).map_err(mnt_err("unshare(CLONE_FS)".into()))?;
        crate::sys::ns::setns(f.as_fd(), NsType::Mount)
            .map_err(mnt_err("join the restored mount namespace".into()))?;
    } else {
        crate::sys::ns::unshare(UnshareFlags::NEWNS)
            .map_err(mnt_err("unshare(CLONE_NEWNS)".into()))?;
    }
    let nsfd: OwnedFd = std::fs::File::open("/proc/thread-self/ns/mnt")
        .map_err(|source| MountsError::Mount {
            what: "open the new mount namespace".into(),
            source,
        })?
        .into();
    let private = MountPropagationFlags::REC | MountPropagationFlags::PRIVATE;
    rustix::mount::mount_change("/", private)
        .map_err(mnt_err("make the new mount namespace private".into()))?;
    rustix::mount::mount_bind(root, root)
        .map_err(mnt_err(format!("bind the new root {}", root.display())))?;
    let mut ptys = Vec::new();
    let jail = Jail::new(root).map_err(|source| MountsError::Mount {
        what: format!("open {}", root.display()),
        source,
    })?;
    // Each mount's root, held for its propagation and to reach what is mounted inside it.
    let mut roots: Vec<Option<OwnedFd>> = (0..entries.len()).map(|_| None).collect();
    roots[0] = Some(
        jail.root
            .try_clone()
            .map_err(mnt_err("hold the new root".into()))?,
    );
    // Where each mount sits: the directory of its mount point inside its parent mount, and
    // its name there (the root: the directory of `root` on the host).
    let mut places: Vec<Option<(Jail, String)>> = (0..entries.len()).map(|_| None).collect();
    places[0] = match (root.parent(), root.file_name()) {
        (Some(up), Some(name)) => Jail::new(up)
            .ok()
            .map(|j| (j, name.to_string_lossy().into_owned())),
        _ => None,
    };
    for i in mount_sequence(entries) {
        let place = place_of(entries, i, &roots, &places)?;
        let fd = mount_one(
            pid,
            &jail,
            entries,
            i,
            external,
            dir,
            &mut ptys,
            place.as_ref().map(|(d, n)| (&roots[..], d, n.as_str())),
        )?;
        roots[i] = Some(fd);
        places[i] = place;
    }
    // The root's own flags last: a read-only root still gets its mount points made above.
    let rflags = safe_flags(entries[0].flags);
    if !rflags.is_empty() {
        rustix::mount::mount_remount(root, MountFlags::BIND | rflags, "")
            .map_err(mnt_err("remount the root with its flags".into()))?;
    }
    rustix::process::chdir(root).map_err(mnt_err(format!("chdir {}", root.display())))?;
    rustix::process::pivot_root(".", ".").map_err(mnt_err("pivot_root".into()))?;
    // Propagation now that every mount exists (the new root may be shared only once
    // pivoted).
    roots[0] = Some(
        jail.find("/", None)
            .map_err(|source| MountsError::Mount {
                what: "find the new root".into(),
                source,
            })?
            .0,
    );
    super::propagation::restore(entries, &roots, &ext_masters)?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(mnt_err("detach the old root".into()))?;
    rustix::process::chdir("/").map_err(mnt_err("chdir /".into()))?;
    // The tree's root is this thread's now: an F-flag interpreter is opened from it.
    let binfmt = register_binfmt(entries, &roots, &saved_binfmt)?;
    let held = entries
        .iter()
        .zip(roots)
        .filter_map(|(e, r)| Some((e.mnt_id, (e.mountpoint.clone(), r?))))
        .collect();
    Ok((nsfd, ptys, held, binfmt))
}

/// Registers again what binfmt-misc.img saved in the binfmt_misc mounts of `entries` just
/// made (`roots`: their roots), from the calling thread (its root decides where an F-flag
/// interpreter is opened). One instance is shared by all of them: the first registers, the
/// others find the registrations there. External mounts are the host's and left alone.
fn register_binfmt(
    entries: &[pb::MntEntry],
    roots: &[Option<OwnedFd>],
    saved: &[pb::BinfmtMiscEntry],
) -> Result<Vec<super::binfmt::Made>, MountsError> {
    use std::os::fd::AsFd;
    let mut made = Vec::new();
    if saved.is_empty() {
        return Ok(made);
    }
    for (e, r) in entries.iter().zip(roots).skip(1) {
        if let (BINFMT_MISC, None, Some(r)) = (e.fstype, &e.ext_key, r) {
            made.push(super::binfmt::restore(saved, r.as_fd(), &e.mountpoint)?);
        }
    }
    Ok(made)
}

/// The mounts of a restored mount namespace by their id in the images: each one's mount
/// point and an O_PATH fd of its root (what is under a mount another one covers is reached
/// through it: unix sockets bound there, `unix_sk`).
pub type MountRoots = HashMap<u32, (String, OwnedFd)>;

/// The order `build` mounts `entries[1..]` in: a parent before its children and a bind's
/// source before the bind (`bind_source` is an earlier entry); among the children of one
/// mount, one whose mount point lies below another's (`a/b` under `a`: the tree had `a`
/// mounted over it later) first, so that reaching its mount point inside the parent never
/// crosses the sibling that covers it. When both cannot hold, the source goes first.
fn mount_sequence(entries: &[pb::MntEntry]) -> Vec<usize> {
    let n = entries.len();
    let mut by_id = std::collections::HashMap::with_capacity(n);
    for (i, e) in entries.iter().enumerate() {
        by_id.entry(e.mnt_id).or_insert(i);
    }
    let parent: Vec<Option<usize>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| by_id.get(&e.parent_mnt_id).copied().filter(|&p| p != i))
        .collect();
    let source: Vec<Option<usize>> = (0..n)
        .map(|i| {
            if i == 0 || entries[i].ext_key.is_some() {
                None
            } else {
                bind_source(entries, i).map(|(j, _)| j)
            }
        })
        .collect();
    let under = |i: usize, k: usize| {
        entries[i].mountpoint != entries[k].mountpoint
            && path_within(&entries[i].mountpoint, &entries[k].mountpoint).is_some()
    };
    // Mounts by parent, and for each mount how many of its unplaced siblings sit under its
    // mount point (those go first, so that it covers them as it did): counted once and
    // kept up to date as mounts are placed, which keeps this quadratic, not cubic.
    let mut siblings: std::collections::HashMap<Option<usize>, Vec<usize>> =
        std::collections::HashMap::new();
    for (k, &p) in parent.iter().enumerate().skip(1) {
        siblings.entry(p).or_default().push(k);
    }
    let mut blocked = vec![0usize; n];
    for group in siblings.values() {
        for &k in group {
            blocked[k] = group.iter().filter(|&&i| i != k && under(i, k)).count();
        }
    }
    let mut placed = vec![false; n];
    placed[0] = true;
    let mut out = Vec::with_capacity(n.saturating_sub(1));
    while out.len() + 1 < n {
        let ready = |i: usize, placed: &[bool]| {
            !placed[i] && parent[i].is_none_or(|p| placed[p]) && source[i].is_none_or(|j| placed[j])
        };
        let pick = (1..n)
            .find(|&k| ready(k, &placed) && blocked[k] == 0)
            .or_else(|| (1..n).find(|&k| ready(k, &placed)))
            .or_else(|| (1..n).find(|&k| !placed[k]));
        let Some(x) = pick else { break };
        placed[x] = true;
        out.push(x);
        for &k in &siblings[&parent[x]] {
            if k != x && under(x, k) {
                blocked[k] -= 1;
            }
        }
    }
    out
}

/// Where `entries[i]` is mounted, once its parent mount is: the directory holding its
/// mount point, reached inside the parent mount from the parent's root (not from the
/// namespace's root, where another mount may cover it), and the mount point's name in it. A
/// mount on its parent's root sits where the parent does. None when the parent is not known
/// (mount points are then reached from the root).
fn place_of(
    entries: &[pb::MntEntry],
    i: usize,
    roots: &[Option<OwnedFd>],
    places: &[Option<(Jail, String)>],
) -> Result<Option<(Jail, String)>, MountsError> {
    let e = &entries[i];
    let Some(p) = entries.iter().position(|x| x.mnt_id == e.parent_mnt_id) else {
        return Ok(None);
    };
    let (Some(proot), Some(rel)) = (
        &roots[p],
        path_within(&e.mountpoint, &entries[p].mountpoint),
    ) else {
        return Ok(None);
    };
    if rel == "/" {
        return Ok(match &places[p] {
            Some((d, n)) => Some((
                d.dup().map_err(mnt_err("hold a mount point".into()))?,
                n.clone(),
            )),
            None => None,
        });
    }
    let rel = rel.trim_end_matches('/');
    let (up, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent = Jail::of(proot)
        .and_then(|j| j.find(up, Some(false)))
        .map_err(mnt_err(format!(
            "create the directory of the mount point {}",
            e.mountpoint
        )))?;
    Ok(Some((Jail { root: parent.0 }, name.to_string())))
}

/// Removes the stand-in made for a deleted bind source (`path` inside the source mount
/// `entries[j]`); a failure is only logged (the bind is made).
fn remove_deleted_source(
    jail: &Jail,
    entries: &[pb::MntEntry],
    j: usize,
    roots: Option<&[Option<OwnedFd>]>,
    path: &str,
    file: bool,
) {
    let p = path.trim_end_matches('/');
    let (up, name) = p.rsplit_once('/').unwrap_or(("", p));
    let dir = match roots.and_then(|r| r.get(j)?.as_ref()) {
        Some(r) => Jail::of(r).and_then(|x| x.open(up, rustix::fs::OFlags::DIRECTORY)),
        None if j == 0 => jail.open(up, rustix::fs::OFlags::DIRECTORY),
        None => jail.open(
            &format!("{}/{}", entries[j].mountpoint.trim_end_matches('/'), up),
            rustix::fs::OFlags::DIRECTORY,
        ),
    };
    let flags = if file {
        rustix::fs::AtFlags::empty()
    } else {
        rustix::fs::AtFlags::REMOVEDIR
    };
    if let Err(err) = dir.and_then(|d| Ok(rustix::fs::unlinkat(&d, name, flags)?)) {
        tracing::warn!("could not remove {path}, made again for a bind of it: {err}");
    }
}

/// Resolves paths of the tree inside a directory as the tree would, with
/// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` stops at the directory and
/// absolute symlinks (in the root file system, in tmpfs contents just unpacked, in a host
/// directory bound in) are taken relative to it, so no lookup can lead outside. What it finds
/// is held as an O_PATH fd and used through its /proc path.
struct Jail {
    root: OwnedFd,
}

/// An O_PATH fd of cryo's, named by its /proc path (which `mount` and child processes such as
/// tar follow to the very file).
struct Found(OwnedFd);

impl Found {
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.0.as_raw_fd()
        ))
    }
}

impl Jail {
    /// A jail at the directory `fd` holds.
    fn of(fd: &OwnedFd) -> std::io::Result<Jail> {
        Ok(Jail {
            root: fd.try_clone()?,
        })
    }

    fn dup(&self) -> std::io::Result<Jail> {
        Jail::of(&self.root)
    }

    fn new(dir: &Path) -> std::io::Result<Jail> {
        use rustix::fs::{open, Mode, OFlags};
        Ok(Jail {
            root: open(
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
        })
    }

    /// `p` (absolute or relative, as the tree sees it) inside the jail, opened with `flags`.
    fn open(&self, p: &str, flags: rustix::fs::OFlags) -> std::io::Result<OwnedFd> {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
        let p = p.trim_start_matches('/');
        let p = if p.is_empty() { "." } else { p };
        Ok(openat2(
            &self.root,
            p,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?)
    }

    /// Finds `p` (as seen from the jail's directory); with `create`, makes it first if
    /// missing (a file when `Some(true)`, else a directory), each component created in its
    /// parent as found inside the jail.
    fn find(&self, p: &str, create: Option<bool>) -> std::io::Result<Found> {
        use rustix::fs::{mkdirat, openat, Mode, OFlags};
        if let Some(file) = create {
            if self.open(p, OFlags::PATH).is_err() {
                let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
                for (i, name) in parts.iter().enumerate() {
                    let last = i + 1 == parts.len();
                    let parent =
                        self.open(&parts[..i].join("/"), OFlags::PATH | OFlags::DIRECTORY)?;
                    let r = if last && file {
                        openat(
                            &parent,
                            *name,
                            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                            Mode::from_raw_mode(0o644),
                        )
                        .map(drop)
                    } else {
                        mkdirat(&parent, *name, Mode::from_raw_mode(0o755))
                    };
                    match r {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(Found(self.open(p, OFlags::PATH)?))
    }
}

/// Where `mount_one` mounts an entry: the roots of the mounts made so far (bind sources are
/// reached inside them), the directory holding the mount point and its name there
/// (`place_of`).
type Place<'a> = (&'a [Option<OwnedFd>], &'a Jail, &'a str);

/// Mounts `entries[i]` under `root` (`jail` resolves in it); at `place` when given, else at
/// its mount point as reached from the root.
#[allow(clippy::too_many_arguments)]
fn mount_one(
    pid: i32,
    jail: &Jail,
    entries: &[pb::MntEntry],
    i: usize,
    external: &[Option<PathBuf>],
    dir: &Path,
    ptys: &mut Vec<(u32, OwnedFd)>,
    place: Option<Place<'_>>,
) -> Result<OwnedFd, MountsError> {
    let e = &entries[i];
    let flags = safe_flags(e.flags);
    let what = |w: &str| {
        format!(
            "{w} {} at {}",
            e.fsname.as_deref().unwrap_or("?"),
            e.mountpoint
        )
    };
    let io = |w: String| move |source| MountsError::Mount { what: w, source };
    // Where a bind comes from, if it is one: a host path given for an external key, or a
    // path of the tree (found inside its root, or inside the external it is below).
    // A deleted bind source made again for the bind (path in the source mount, a file?,
    // the source entry), removed once the bind is made.
    let mut remove_after: Option<(String, bool, usize)> = None;
    let from: Option<Found> = if let Some(host) = &external[i] {
        // The caller's host path, taken as it is (a file or a directory).
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(host)
            .map_err(io(format!("open {} for {}", host.display(), e.mountpoint)))?;
        Some(Found(f.into()))
    } else if let Some((j, rest)) = bind_source(entries, i) {
        let src = &entries[j];
        // The root of the source mount, when it is held (found from there, not through
        // paths another mount may cover).
        let src_root = place
            .and_then(|(roots, _, _)| roots.get(j)?.as_ref())
            .filter(|_| external[j].is_none())
            .map(Jail::of)
            .transpose()
            .map_err(io(format!("hold the root of {}", src.mountpoint)))?;
        // A bind of a pty slave (runc's /dev/console is devpts root /N): the pty must exist
        // in the new devpts instance first; the terminal restore takes its master.
        if src.fsname.as_deref() == Some("devpts") && src.ext_key.is_none() {
            if let Ok(index) = rest.trim_start_matches('/').parse::<u32>() {
                let devpts = match &src_root {
                    Some(r) => r.find("/", None),
                    None => jail.find(&src.mountpoint, None),
                }
                .map_err(io(format!("find {}", src.mountpoint)))?;
                if !devpts.path().join(index.to_string()).exists() {
                    let ptmx = devpts.path().join("ptmx");
                    let m = super::tty::make_pty_at(&ptmx.to_string_lossy(), index).map_err(io(
                        format!("make pty {index} for the bind at {}", e.mountpoint),
                    ))?;
                    ptys.push((index, m));
                }
            }
        }
        // A bind of a directory or file deleted since (mountinfo's root ends in
        // "//deleted"): made again for the bind, removed after it, as CRIU does.
        let (rest, deleted) = match rest.strip_suffix("//deleted") {
            Some(r) => (r.to_string(), true),
            None => (rest, false),
        };
        let find_src = |create: Option<bool>| match (&external[j], &src_root) {
            (Some(host), _) => Jail::new(host).and_then(|x| x.find(&rest, create)),
            (None, Some(r)) => r.find(&rest, create),
            (None, None) if j == 0 => jail.find(&rest, create),
            (None, None) if rest == "/" => jail.find(&src.mountpoint, create),
            (None, None) => jail.find(
                &format!("{}{}", src.mountpoint.trim_end_matches('/'), rest),
                create,
            ),
        };
        let found = match find_src(None) {
            Err(err) if deleted && err.kind() == std::io::ErrorKind::NotFound => {
                // Of the kind of its mount point (a file bind is mounted on a file).
                let file = match place {
                    Some((_, d, n)) => d.open(n, rustix::fs::OFlags::PATH).ok(),
                    None => jail.open(&e.mountpoint, rustix::fs::OFlags::PATH).ok(),
                }
                .is_some_and(|f| {
                    rustix::fs::fstat(&f)
                        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
                });
                let f = find_src(Some(file));
                if f.is_ok() {
                    remove_after = Some((rest.clone(), file, j));
                }
                f
            }
            f => f,
        };
        Some(found.map_err(io(format!(
            "find the source of the bind at {}",
            e.mountpoint
        )))?)
    } else {
        None
    };
    // Its mount point, made if the tree lacks it (tmpfs contents do not hold their
    // submounts'): a file for a file bind.
    let file = from
        .as_ref()
        .is_some_and(|f| std::fs::metadata(f.path()).is_ok_and(|m| m.is_file()));
    let target = match place {
        Some((_, d, n)) => d.find(n, Some(file)),
        None => jail.find(&e.mountpoint, Some(file)),
    }
    .map_err(io(format!("create the mount point {}", e.mountpoint)))?;
    let _target_fd = target;
    let target = _target_fd.path();
    // After the mount, the path leads to the new mount (the fd to what was under it).
    let top = || {
        match place {
            Some((_, d, n)) => d.find(n, None),
            None => jail.find(&e.mountpoint, None),
        }
        .map_err(io(what("find")))
    };
    match from {
        Some(src) => {
            let bound = rustix::mount::mount_bind(src.path(), &target);
            drop(src);
            if let Some((p, file, j)) = remove_after.take() {
                remove_deleted_source(jail, entries, j, place.map(|(r, _, _)| r), &p, file);
            }
            bound.map_err(mnt_err(what("bind")))?;
            if !flags.is_empty() {
                rustix::mount::mount_remount(top()?.path(), MountFlags::BIND | flags, "")
                    .map_err(mnt_err(what("set the flags of")))?;
            }
        }
        None => {
            let fstype = e.fsname.clone().unwrap_or_default();
            let mut data = e.options.clone();
            if e.fstype == PROC {
                let ns = format!("pidns=/proc/{pid}/ns/pid");
                data = if data.is_empty() {
                    ns
                } else {
                    format!("{data},{ns}")
                };
            }
            let sb_ro = e.sb_flags.unwrap_or(0) & MountFlags::RDONLY.bits() != 0;
            let first = flags.difference(MountFlags::RDONLY);
            let data = std::ffi::CString::new(data).map_err(|_| MountsError::Mount {
                what: what("mount"),
                source: std::io::Error::other("its options hold a NUL byte"),
            })?;
            let (source, fstype) = (e.source.as_str(), fstype.as_str());
            rustix::mount::mount(source, &target, fstype, first, data.as_c_str())
                .map_err(mnt_err(what("mount")))?;
            // Its registrations come once the tree's root is in place (`register_binfmt`).
            if e.fstype == TMPFS {
                let img = dir.join(tmpfs_image(e));
                if img.exists() {
                    // The new mount, not what the path led to before it.
                    let top = top()?;
                    let out = std::process::Command::new("tar")
                        .args([
                            "--extract",
                            "--gzip",
                            "--no-unquote",
                            "--no-wildcards",
                            "--directory",
                        ])
                        .arg(top.path())
                        .arg("--file")
                        .arg(&img)
                        .output()
                        .map_err(|source| MountsError::Mount {
                            what: what("fill"),
                            source,
                        })?;
                    if !out.status.success() {
                        return Err(MountsError::Mount {
                            what: what("fill"),
                            source: std::io::Error::other(
                                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                            ),
                        });
                    }
                }
            }
            // Read-only last (its tmpfs contents are in). A read-only superblock is remounted
            // so (which makes this mount read-only too: made writable again if it was); a
            // read-only mount of a writable superblock only as a mount (`bind,remount`):
            // other mounts of it, and ghosts made through a writable copy of it
            // (zdtm ghost_on_rofs), may still write there.
            if sb_ro {
                let ro = flags | MountFlags::RDONLY;
                rustix::mount::mount_remount(top()?.path(), ro, e.options.as_str())
                    .map_err(mnt_err(what("make read-only")))?;
                if !flags.contains(MountFlags::RDONLY) {
                    rustix::mount::mount_remount(top()?.path(), MountFlags::BIND | flags, "")
                        .map_err(mnt_err(what("set the flags of")))?;
                }
            } else if flags.contains(MountFlags::RDONLY) {
                rustix::mount::mount_remount(top()?.path(), MountFlags::BIND | flags, "")
                    .map_err(mnt_err(what("make read-only")))?;
            }
        }
    }
    // Private for now: `propagation::restore` sets peer groups once every mount exists.
    Ok(top()?.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mounts_go_in_parent_first_and_under_a_sibling_before_it() {
        let m = |id: u32, parent: u32, at: &str| pb::MntEntry {
            mnt_id: id,
            parent_mnt_id: parent,
            mountpoint: at.into(),
            root_dev: id,
            root: "/".into(),
            ..Default::default()
        };
        // /x/y is a sibling of /x (both on /) that /x covers: it goes first; /x/z, on /x,
        // after /x; the rest in image order.
        let entries = vec![
            m(1, 1, "/"),
            m(2, 1, "/x"),
            m(3, 1, "/x/y"),
            m(4, 2, "/x/z"),
            m(5, 1, "/w"),
        ];
        assert_eq!(super::mount_sequence(&entries), vec![2, 1, 3, 4]);
    }

    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let t = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 37 36 0:5 / /proc rw,nosuid,nodev,noexec shared:3 - proc proc rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, "/mnt/a b");
        assert_eq!(m[0].optional, vec!["master:1"]);
        assert_eq!(m[1].fstype, "proc");
        assert_eq!(
            mnt_flags(&m[1].mnt_opts),
            // No atime option in mountinfo: strictatime.
            (MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::STRICTATIME)
                .bits()
        );
        assert_eq!(mnt_flags(&m[0].mnt_opts), MountFlags::NOATIME.bits());
    }

    #[test]
    fn unbindable_is_the_kernels_bit() {
        assert_eq!(u64::from(UNBINDABLE), libc::MS_UNBINDABLE);
    }

    #[test]
    fn paths_nest() {
        assert_eq!(path_within("/a/b", "/a").as_deref(), Some("/b"));
        assert_eq!(path_within("/a", "/a").as_deref(), Some("/"));
        assert_eq!(path_within("/ab", "/a"), None);
        assert_eq!(path_within("/x", "/").as_deref(), Some("/x"));
    }
}
