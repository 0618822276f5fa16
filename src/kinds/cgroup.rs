//! cgroups, as CRIU saves and restores them, plus the freezer behind `--freeze-cgroup`.
//!
//! **Dump** (`dump`): every thread's membership is read from `/proc/PID/task/TID/cgroup`
//! (paths relative to cryo's cgroup namespace root, one line per v1 hierarchy and `""` for
//! the v2 unified one). Identical memberships form one *set*; cryo's own set comes first
//! (id 1) and is recorded as `inventory.root_cg_set`, each thread's set id as
//! `thread_core.cg_set` (and, for the main thread, the older `tc.cg_set`). `cgroup.img` holds
//! every set but cryo's, and per hierarchy the directory trees under the sets' paths (mode,
//! owner, and CRIU's properties: in v1 `notify_on_release`, `cgroup.clone_children` and the
//! mode and owner of every one of these files and of `cgroup.procs`/`tasks`, plus each
//! controller's limits such as `cpu.shares`, `memory.limit_in_bytes`, `cpuset.*`,
//! `devices.list`, `pids.max`; in v2 `cgroup.subtree_control` and the `*.max` limits), so
//! restore can create what is missing. As CRIU, nothing is written when every task lives in cryo's set. Dumping only
//! reads `/proc` and the cgroup file systems. When the root has a cgroup namespace of its own,
//! each member's `cgns_prefix` says how much of its path is that namespace's root, which
//! restore unshares a new namespace at; a task in another cgroup namespace than the root's is
//! refused by `dump::precheck`.
//!
//! **Restore** (`CgRestore`): `--manage-cgroups[=MODE]` with CRIU's modes and default
//! (`soft`, also without the option); `ignore` skips everything. `--cgroup-root [CTRL:]PATH`
//! replaces the top directory of a hierarchy (all of them without CTRL) as CRIU does.
//! `CgRestore::load` rewrites the roots, then checks or creates the directories:
//! `none`/`props` need them to exist, `soft` creates missing ones (with their saved limits),
//! `full` also sets the limits of existing ones, `strict` refuses existing ones. A property
//! is written only when it differs (`devices.list` as `devices.deny` "a" plus one
//! `devices.allow` per line), then its file gets its saved mode and owner; a limit cryo did
//! not always save that the kernel refuses is only a warning. Each task is
//! then moved from outside by writing its host PID to `cgroup.procs` (`place`) as soon as
//! `restore::shape` starts on it, before its memory exists and before it forks its children,
//! which inherit the membership; a task whose set is its parent's (or, for the root, the set
//! cryo had at dump) stays where it was born. Threads whose set differs from their leader's
//! are moved one by one (`place_threads`: `tasks` in v1, `cgroup.threads` in v2).
//! Directories cryo created are removed again if the restore fails.
//!
//! **Freezer** (`Freezer`): `--freeze-cgroup PATH` at dump freezes the cgroup
//! (`freezer.state` FROZEN in v1, `cgroup.freeze` 1 in v2 until `cgroup.events` says
//! `frozen 1`), so nothing in it can fork or exit while `dump::run` seizes the tree
//! (`PTRACE_SEIZE` + `PTRACE_INTERRUPT` work on frozen tasks; the stops arrive once it is
//! thawed). `thaw` then lets the tasks reach their ptrace stops. Dropping the `Freezer` puts
//! the cgroup back as it was found: thawed, or frozen again if it was frozen before cryo
//! started (after the tree was released or killed).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::TaskImages;
use crate::image::{self, pb, ImageDir};
use crate::num::len32;

/// `--manage-cgroups` modes, as CRIU names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Do nothing with cgroups.
    Ignore,
    /// Move tasks; every directory must exist; no limits or permissions set.
    None,
    /// Move tasks; every directory must exist; limits and permissions set.
    Props,
    /// Create missing directories (with their limits); existing ones keep theirs.
    #[default]
    Soft,
    /// Create missing directories and set the limits of all.
    Full,
    /// Like full, but refuse directories that already exist.
    Strict,
}

impl Mode {
    /// CRIU's spellings; `None` (no value) is `soft`.
    pub fn parse(v: Option<&str>) -> Result<Mode, String> {
        Ok(match v.unwrap_or("soft") {
            "ignore" => Mode::Ignore,
            "none" => Mode::None,
            "props" => Mode::Props,
            "soft" => Mode::Soft,
            "full" => Mode::Full,
            "strict" => Mode::Strict,
            other => {
                return Err(format!(
                    "unknown cgroups mode '{other}' (none, props, soft, full, strict or ignore)"
                ))
            }
        })
    }

    /// RPC `criu_cg_mode` (IGNORE 0, CG_NONE 1, PROPS 2, SOFT 3, FULL 4, STRICT 5, DEFAULT 6).
    pub fn from_rpc(v: i32) -> Result<Mode, String> {
        Ok(match v {
            0 => Mode::Ignore,
            1 => Mode::None,
            2 => Mode::Props,
            3 | 6 => Mode::Soft,
            4 => Mode::Full,
            5 => Mode::Strict,
            _ => return Err(format!("unknown manage_cgroups_mode {v}")),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Ignore => "ignore",
            Mode::None => "none",
            Mode::Props => "props",
            Mode::Soft => "soft",
            Mode::Full => "full",
            Mode::Strict => "strict",
        }
    }
}

/// What restore is asked to do with cgroups.
#[derive(Debug, Clone, Default)]
pub struct CgOpts {
    pub mode: Mode,
    /// `--cgroup-root [CTRL:]PATH`: (controller, new root); no controller = every hierarchy.
    pub roots: Vec<(Option<String>, String)>,
}

impl CgOpts {
    /// Parses `--cgroup-root` values (`[CTRL:]PATH`, PATH absolute).
    pub fn parse_roots(values: &[String]) -> Result<Vec<(Option<String>, String)>, String> {
        values
            .iter()
            .map(|v| {
                let (ctl, path) = match v.split_once(':') {
                    Some((c, p)) => (Some(c.to_string()), p),
                    None => (None, v.as_str()),
                };
                if !path.starts_with('/') {
                    return Err(format!(
                        "--cgroup-root {v}: the path must be absolute ([CONTROLLER:]/PATH)"
                    ));
                }
                Ok((ctl, path.to_string()))
            })
            .collect()
    }
}

/// Why a cgroup could not be read, made, joined or frozen; names the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup hierarchy '{ctl}' (for {path}) is not mounted where cryo runs, and cryo cannot mount it")]
    NotMounted {
        ctl: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} does not exist (--manage-cgroups={mode} does not create cgroups)")]
    Missing { path: PathBuf, mode: &'static str },
    #[error("cgroup {path} already exists (--manage-cgroups=strict)")]
    Exists { path: PathBuf },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move {pid} into cgroup {path}")]
    Move {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--freeze-cgroup {path}: {what}")]
    Freezer { path: PathBuf, what: String },
    #[error("cgroup.img: {0}")]
    BadImage(String),
}

impl super::error::Failure for CgroupError {
    /// What the user can do about it.
    fn hint(&self) -> Option<String> {
        Some(match self {
            CgroupError::NotMounted { .. } => {
                "does the hierarchy still exist (a named v1 hierarchy disappears with its last cgroup)? mount it (e.g. under /sys/fs/cgroup), or restore with --manage-cgroups=ignore".into()
            }
            CgroupError::Missing { .. } => {
                "create it first, or restore with --manage-cgroups=soft (creates missing cgroups) or --cgroup-root".into()
            }
            CgroupError::Exists { .. } => {
                "remove it, or restore with --manage-cgroups=soft or full".into()
            }
            CgroupError::Move { .. } => {
                "check the cgroup's limits (pids.max, cpuset.cpus/mems empty) and, in v2, that it has no enabled subtree controllers; or restore with --manage-cgroups=ignore".into()
            }
            CgroupError::Freezer { .. } => {
                "give the cgroup directory (with freezer.state in v1, cgroup.freeze in v2); a task in uninterruptible sleep can keep it from freezing: retry, or dump without --freeze-cgroup".into()
            }
            _ => return None,
        })
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    crate::procfs::read_text(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, what: &'static str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Hierarchies as cryo sees them.

/// `/proc/.../cgroup` lines as (hierarchy name, path), sorted by name as CRIU sorts them.
/// The name is the kernel's: `cpu,cpuacct`, `name=systemd`, `""` for cgroup v2.
pub fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (name, path) = rest.split_once(':')?;
            Some((name.to_string(), path.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The cgroup file systems mounted in cryo's mount namespace.
struct Mounts(Vec<super::mounts::MountInfo>);

/// `--cgroup-yard`: where the caller mounted the hierarchies (set once, from the options).
static YARD_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the `--cgroup-yard` directory: its cgroup mounts are used before any other (CRIU uses
/// the yard instead of mounting hierarchies itself).
pub fn set_yard(dir: PathBuf) {
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    tracing::info!(yard = %dir.display(), "using the cgroup yard");
    let _ = YARD_DIR.set(dir);
}

impl Mounts {
    fn load() -> Result<Mounts, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let all = super::mounts::parse_mountinfo(&read(path)?);
        let mut v: Vec<_> = all
            .into_iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .collect();
        // The yard's mounts first, so `dir` finds a hierarchy there before anywhere else.
        if let Some(yard) = YARD_DIR.get() {
            v.sort_by_key(|m| !Path::new(&m.mountpoint).starts_with(yard));
        }
        Ok(Mounts(v))
    }

    /// The directory of cgroup `path` of hierarchy `name`: below a mount of that hierarchy
    /// whose root contains it.
    fn dir(&self, name: &str, path: &str) -> Result<PathBuf, CgroupError> {
        // A path from the images stays below its hierarchy: no `..`, no `.`.
        if path
            .split('/')
            .any(|c| c == ".." || c == "." || c.contains('\0'))
        {
            return Err(CgroupError::BadImage(format!(
                "cgroup path {path:?} is not a plain path"
            )));
        }
        let wanted: Vec<&str> = name.split(',').collect();
        for m in &self.0 {
            let fits = if name.is_empty() {
                m.fstype == "cgroup2"
            } else {
                m.fstype == "cgroup"
                    && wanted
                        .iter()
                        .all(|w| m.super_opts.split(',').any(|o| o == *w))
            };
            if !fits {
                continue;
            }
            if let Some(rest) = below(path, &m.root) {
                let mut p = PathBuf::from(&m.mountpoint);
                if !rest.is_empty() {
                    p.push(rest);
                }
                return Ok(p);
            }
        }
        // Not mounted where cryo runs (a named hierarchy another tool made, such as zdtm's
        // name=zdtmtst, or a controller nobody mounted): reach it through a mount of cryo's
        // own that is attached nowhere, as CRIU mounts what it needs in a private yard.
        let root = yard(name).map_err(|source| CgroupError::NotMounted {
            ctl: if name.is_empty() {
                "cgroup2".into()
            } else {
                name.to_string()
            },
            path: path.to_string(),
            source,
        })?;
        let mut p = root;
        let rest = path.trim_start_matches('/');
        if !rest.is_empty() {
            p.push(rest);
        }
        Ok(p)
    }
}

/// The root of hierarchy `name` (`""`: cgroup v2) through a detached mount of cryo's own,
/// made once per process and kept open until cryo exits (nothing is attached to any mount
/// namespace, so nothing is left behind).
fn yard(name: &str) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    static YARD: std::sync::Mutex<Vec<(String, std::os::fd::OwnedFd)>> =
        std::sync::Mutex::new(Vec::new());
    let mut yard = YARD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, fd)) = yard.iter().find(|(n, _)| n == name) {
        return Ok(PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    }
    let fd = if name.is_empty() {
        crate::sys::mount::detached("cgroup2", &[])?
    } else {
        let mut opts: Vec<(&str, Option<&str>)> = Vec::new();
        let mut controllers = false;
        for part in name.split(',') {
            match part.strip_prefix("name=") {
                Some(n) => opts.push(("name", Some(n))),
                None => {
                    controllers = true;
                    opts.push((part, None));
                }
            }
        }
        if !controllers {
            opts.push(("none", None));
        }
        // A named hierarchy whose last cgroup just went is dying for a moment: EBUSY.
        let mut tries = 0;
        loop {
            match crate::sys::mount::detached("cgroup", &opts) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r?,
            }
        }
    };
    tracing::info!(
        hierarchy = name,
        "cgroup hierarchy not mounted here: using a detached mount of it"
    );
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    yard.push((name.to_string(), fd));
    Ok(path)
}

/// `path` relative to `root` (both absolute cgroup paths), if it is inside it.
fn below<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// The saved limits of a cgroup directory, by hierarchy (CRIU saves more; these are the ones
/// that shape what the restored tasks can do). cpusets first: a v1 cpuset without cpus and
/// mems accepts no task.
fn props_of(name: &str) -> &'static [&'static str] {
    match name {
        "" => &[
            "cgroup.subtree_control",
            "cgroup.max.descendants",
            "cgroup.max.depth",
            "cpuset.cpus",
            "cpuset.mems",
            "cpu.max",
            "cpu.weight",
            "memory.max",
            "memory.high",
            "memory.low",
            "pids.max",
        ],
        _ => &[],
    }
}

/// The files of every v1 hierarchy saved with each directory, as CRIU: their mode and owner
/// (a container engine may hand a cgroup to the container's user), and the value of the
/// first two.
const V1_GLOBAL: &[&str] = &[
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.procs",
    "tasks",
];

/// Files whose mode and owner are restored, never their content.
fn perms_only(name: &str) -> bool {
    matches!(name, "cgroup.procs" | "tasks")
}

/// The limits saved per v1 controller: CRIU's list. The ones cryo saved before are applied
/// strictly; a failure to set any other is a warning ([`essential`]).
fn v1_props(ctl: &str) -> &'static [&'static str] {
    match ctl {
        "cpuset" => &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
        "cpu" => &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.rt_period_us",
            "cpu.rt_runtime_us",
        ],
        "memory" => &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.oom_control",
            "memory.use_hierarchy",
            "memory.kmem.limit_in_bytes",
            "memory.kmem.tcp.limit_in_bytes",
        ],
        "blkio" => &["blkio.weight"],
        "net_cls" => &["net_cls.classid"],
        "net_prio" => &["net_prio.ifpriomap"],
        "pids" => &["pids.max"],
        "devices" => &["devices.list"],
        _ => &[],
    }
}

/// Limits whose restore must succeed (what shapes the restored tasks most).
fn essential(name: &str) -> bool {
    matches!(
        name,
        "cpuset.cpus"
            | "cpuset.mems"
            | "cpu.shares"
            | "cpu.cfs_period_us"
            | "cpu.cfs_quota_us"
            | "memory.limit_in_bytes"
            | "memory.soft_limit_in_bytes"
            | "pids.max"
            | "devices.list"
    ) || !name.contains('.')
        || name.starts_with("cgroup.")
}

fn prop_names(name: &str) -> Vec<&'static str> {
    if name.is_empty() {
        return props_of(name).to_vec();
    }
    let mut v: Vec<&'static str> = name.split(',').flat_map(v1_props).copied().collect();
    v.extend_from_slice(V1_GLOBAL);
    v
}

/// One saved property of the cgroup directory `host`: its value (none for `cgroup.procs` and
/// `tasks`; a value too large for a signed 64-bit number is "-1", as CRIU) and, for v1
/// hierarchies, the file's mode and owner.
fn read_prop(host: &Path, name: &str, v1: bool) -> Option<pb::CgroupPropEntry> {
    let path = host.join(name);
    let meta = std::fs::metadata(&path).ok()?;
    let value = if perms_only(name) {
        String::new()
    } else {
        let v = std::fs::read_to_string(&path).ok()?;
        let v = v.trim_end_matches('\n').to_string();
        if v.parse::<i128>().is_ok_and(|n| n >= i128::from(i64::MAX)) {
            "-1".to_string()
        } else {
            v
        }
    };
    Some(pb::CgroupPropEntry {
        name: name.to_string(),
        value,
        perms: v1.then(|| pb::CgroupPerms {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }),
    })
}

// ---------------------------------------------------------------------------------------
// Dump

/// What a dump collected: the sets (cryo's first) and the directory trees.
#[derive(Debug, Default)]
pub struct CgDump {
    /// Every set seen, with its id (cryo's is 1).
    sets: Vec<pb::CgSetEntry>,
    /// Per hierarchy name: every saved directory by path, in walk order.
    dirs: BTreeMap<String, Vec<(String, pb::CgroupDirEntry)>>,
    /// The root task's set.
    root: u32,
    /// The tree's cgroup namespace root per hierarchy, when it has a namespace of its own
    /// (saved as each member's `cgns_prefix`, the length of that prefix of its path).
    ns_roots: HashMap<String, String>,
}

impl CgDump {
    fn set_id(&mut self, ctls: Vec<(String, String)>) -> (u32, bool) {
        let members: Vec<pb::CgMemberEntry> = ctls
            .into_iter()
            .map(|(name, path)| {
                let cgns_prefix = self
                    .ns_roots
                    .get(&name)
                    .filter(|r| below(&path, r).is_some())
                    // The root "/" itself is 1 (0 would mean no namespace).
                    .map(|r| len32(r.trim_end_matches('/').len().max(1)));
                pb::CgMemberEntry {
                    name,
                    path,
                    cgns_prefix,
                }
            })
            .collect();
        if let Some(s) = self.sets.iter().find(|s| s.ctls == members) {
            return (s.id, false);
        }
        let id = len32(self.sets.len()) + 1;
        self.sets.push(pb::CgSetEntry { id, ctls: members });
        (id, true)
    }

    /// cryo's own set id (`inventory.root_cg_set`).
    pub fn own_set(&self) -> Option<u32> {
        (!self.sets.is_empty()).then_some(1)
    }

    /// Saves the directories under `path` of hierarchy `name` (once each).
    fn walk(&mut self, mounts: &Mounts, name: &str, path: &str) {
        let dir = match mounts.dir(name, path) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cgroup directories not saved");
                return;
            }
        };
        let list = self.dirs.entry(name.to_string()).or_default();
        let mut stack = vec![(dir, path.to_string())];
        while let Some((host, cg)) = stack.pop() {
            if list.iter().any(|(p, _)| *p == cg) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&host) else {
                continue; // removed meanwhile
            };
            let properties = prop_names(name)
                .into_iter()
                .filter_map(|p| read_prop(&host, p, !name.is_empty()))
                .collect();
            list.push((
                cg.clone(),
                pb::CgroupDirEntry {
                    dir_name: String::new(),
                    children: Vec::new(),
                    properties,
                    dir_perms: Some(pb::CgroupPerms {
                        mode: meta.mode(),
                        uid: meta.uid(),
                        gid: meta.gid(),
                    }),
                },
            ));
            if let Ok(rd) = std::fs::read_dir(&host) {
                let mut subs: Vec<String> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                subs.sort();
                for s in subs.into_iter().rev() {
                    let child = if cg == "/" {
                        format!("/{s}")
                    } else {
                        format!("{cg}/{s}")
                    };
                    stack.push((host.join(&s), child));
                }
            }
        }
    }

    /// The image entry: every set but cryo's, and per hierarchy its directory trees (heads
    /// named by their path without the leading '/', children by their name). None when there
    /// is nothing to restore (every task in cryo's set), as CRIU.
    pub fn entry(&self) -> Option<pb::CgroupEntry> {
        if self.root == 1 && self.sets.len() == 1 {
            return None;
        }
        let sets: Vec<pb::CgSetEntry> = self.sets.iter().skip(1).cloned().collect();
        if sets.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = Vec::new();
        for s in &sets {
            for c in &s.ctls {
                if !names.contains(&c.name.as_str()) {
                    names.push(&c.name);
                }
            }
        }
        let controllers = names
            .into_iter()
            .map(|n| pb::CgControllerEntry {
                cnames: n.split(',').map(str::to_string).collect(),
                dirs: self.dirs.get(n).map(|d| tree(d)).unwrap_or_default(),
                is_threaded: Some(!n.is_empty()),
            })
            .collect();
        Some(pb::CgroupEntry { sets, controllers })
    }
}

/// Nests a flat list of (path, dir) into CRIU's tree of `cgroup_dir_entry`.
fn tree(flat: &[(String, pb::CgroupDirEntry)]) -> Vec<pb::CgroupDirEntry> {
    fn parent(p: &str) -> Option<&str> {
        if p == "/" {
            return None;
        }
        let i = p.rfind('/')?;
        Some(if i == 0 { "/" } else { &p[..i] })
    }
    fn build(
        flat: &[(String, pb::CgroupDirEntry)],
        at: &str,
        name: String,
        e: &pb::CgroupDirEntry,
    ) -> pb::CgroupDirEntry {
        let mut out = e.clone();
        out.dir_name = name;
        out.children = flat
            .iter()
            .filter(|(p, _)| parent(p) == Some(at))
            .map(|(p, c)| build(flat, p, p.rsplit('/').next().unwrap_or("").to_string(), c))
            .collect();
        out
    }
    flat.iter()
        .filter(|(p, _)| parent(p).is_none_or(|pp| !flat.iter().any(|(q, _)| q == pp)))
        .map(|(p, e)| build(flat, p, p.trim_start_matches('/').to_string(), e))
        .collect()
}

/// Reads the membership of every thread of `imgs` (host PIDs: call before the images are
/// renamed into a PID namespace) and sets their `cg_set`. `walk_dirs` is false with
/// `--manage-cgroups=ignore`, which, as in CRIU, saves no directory.
pub fn dump(imgs: &mut [TaskImages], walk_dirs: bool) -> Result<CgDump, CgroupError> {
    let mut cg = CgDump::default();
    let own = parse_proc_cgroup(&read(Path::new("/proc/self/cgroup"))?);
    if let Some(root) = imgs.first().filter(|r| !r.is_zombie()) {
        cg.ns_roots = ns_roots(root.vpid())?;
    }
    cg.set_id(own.clone());
    let mounts = Mounts::load()?;
    for (i, img) in imgs.iter_mut().enumerate() {
        if img.is_zombie() {
            continue;
        }
        let pid = img.pid;
        let tids = img.pstree.threads.clone();
        for (n, tid) in tids.iter().enumerate() {
            let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/cgroup"));
            let ctls = parse_proc_cgroup(&read(&path)?);
            let (id, new) = cg.set_id(ctls.clone());
            if new && walk_dirs {
                // Unlike CRIU, not below a path the task shares with cryo (often a
                // hierarchy's root): those directories are not the tree's, and a restore
                // would recreate any of them that disappeared meanwhile.
                for (name, p) in ctls.iter().filter(|c| !own.contains(c)) {
                    cg.walk(&mounts, name, p);
                }
            }
            if i == 0 && n == 0 {
                cg.root = id;
            }
            let core = if n == 0 {
                img.tc().cg_set = Some(id);
                &mut img.core
            } else {
                match img.threads.get_mut(n - 1) {
                    Some(c) => c,
                    None => continue,
                }
            };
            core.thread_core.get_or_insert_with(Default::default).cg_set = Some(id);
        }
    }
    Ok(cg)
}

/// The root of `pid`'s cgroup namespace on each hierarchy, if it is not cryo's namespace:
/// /proc/PID/cgroup as cryo sees it, less the same file as a thread inside that namespace
/// sees it.
fn ns_roots(pid: i32) -> Result<HashMap<String, String>, CgroupError> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).map(|m| m.ino()).ok();
    if ino(format!("/proc/{pid}/ns/cgroup")) == ino("/proc/self/ns/cgroup".into()) {
        return Ok(HashMap::new());
    }
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let outside = parse_proc_cgroup(&read(&path)?);
    let inside = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<String> {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/cgroup"))?;
            crate::sys::ns::setns(
                std::os::fd::AsFd::as_fd(&ns),
                crate::sys::ns::NsType::ControlGroup,
            )?;
            crate::procfs::read_text(Path::new(&format!("/proc/{pid}/cgroup")))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("panicked")))
    })
    .map_err(|source| CgroupError::Read { path, source })?;
    let inside = parse_proc_cgroup(&inside);
    let mut out = HashMap::new();
    for (name, full) in outside {
        let Some((_, rel)) = inside.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        // full = root + rel ("/" inside: the task sits at the namespace root).
        let root = if rel == "/" {
            full.clone()
        } else {
            match full.strip_suffix(rel.as_str()) {
                Some("") => "/".to_string(),
                Some(r) => r.to_string(),
                None => continue, // outside its namespace root: nothing to strip
            }
        };
        out.insert(name, root);
    }
    Ok(out)
}

/// Writes `cgroup.img` if any task lives outside cryo's cgroups.
pub fn write(dir: &ImageDir, cg: &CgDump) -> Result<(), image::ImageError> {
    if let Some(e) = cg.entry() {
        dir.write("cgroup.img", image::CGROUP, &[e])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Restore

/// One member of a set, ready to join.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    path: String,
    /// Its directory as cryo reaches it; `None` where cryo itself is in that very cgroup at
    /// restore (every puppet starts there, so nothing is resolved or mounted for it).
    dir: Option<PathBuf>,
    /// The cgroup namespace root (the first `cgns_prefix` bytes of the path), host dir.
    ns_root: Option<PathBuf>,
}

/// The cgroups of an image set, prepared for the restore; removes the directories it made
/// unless `keep` was called.
#[derive(Debug)]
pub struct CgRestore {
    sets: HashMap<u32, Vec<Member>>,
    /// The set cryo was in at dump (`inventory.root_cg_set`): tasks in it stay in cryo's.
    cryo_set: u32,
    created: Vec<PathBuf>,
    kept: std::cell::Cell<bool>,
}

/// A task's set id (per thread since CRIU 3.x; the main thread's `tc.cg_set` before).
pub fn set_of(core: &pb::CoreEntry) -> u32 {
    core.thread_core
        .as_ref()
        .and_then(|t| t.cg_set)
        .or(core.tc.as_ref().and_then(|t| t.cg_set))
        .unwrap_or(0)
}

/// Replaces `old` (a head directory) by `new` at the start of `path`, whole components only.
fn reroot(path: &str, old: &str, new: &str) -> Option<String> {
    let rest = below(path, old)?;
    let new = new.trim_end_matches('/');
    Some(if rest.is_empty() {
        if new.is_empty() {
            "/".into()
        } else {
            new.to_string()
        }
    } else {
        format!("{new}/{rest}")
    })
}

/// Flattens a controller's directory tree into (cgroup path, entry) in creation order
/// (parents first).
fn flatten(dirs: &[pb::CgroupDirEntry], at: &str, out: &mut Vec<(String, pb::CgroupDirEntry)>) {
    for d in dirs {
        let name = d.dir_name.trim_matches('/');
        let p = match (at.trim_end_matches('/'), name) {
            (parent, "") => format!("{parent}/"),
            (parent, name) => format!("{parent}/{name}"),
        };
        let p = if p.len() > 1 {
            p.trim_end_matches('/').to_string()
        } else {
            p
        };
        out.push((p.clone(), d.clone()));
        flatten(&d.children, &p, out);
    }
}

impl CgRestore {
    fn new(cryo_set: u32) -> CgRestore {
        CgRestore {
            sets: HashMap::new(),
            cryo_set,
            created: Vec::new(),
            kept: Default::default(),
        }
    }

    /// Reads `cgroup.img` and `inventory.root_cg_set`, applies `--cgroup-root`, then checks or
    /// creates every directory as `opts.mode` says. None: nothing to do.
    pub fn load(dir: &ImageDir, opts: &CgOpts) -> Result<Option<CgRestore>, CgroupError> {
        if opts.mode == Mode::Ignore {
            return Ok(None);
        }
        let inv: Option<Vec<pb::InventoryEntry>> = dir
            .read_opt("inventory.img", image::INVENTORY)
            .map_err(|e| CgroupError::BadImage(e.to_string()))?;
        let cryo_set = inv
            .and_then(|v| v.first().and_then(|i| i.root_cg_set))
            .unwrap_or(0);
        let Some(entries) = dir
            .read_opt::<pb::CgroupEntry>("cgroup.img", image::CGROUP)
            .map_err(|e| CgroupError::BadImage(e.to_string()))?
        else {
            return Ok(Some(CgRestore::new(cryo_set)));
        };
        let Some(mut ce) = entries.into_iter().next() else {
            return Ok(None);
        };
        // The directories of each hierarchy, flattened, keyed by hierarchy name.
        let mut dirs: HashMap<String, Vec<(String, pb::CgroupDirEntry)>> = HashMap::new();
        for c in &ce.controllers {
            let mut flat = Vec::new();
            flatten(&c.dirs, "", &mut flat);
            let heads: Vec<String> = c
                .dirs
                .iter()
                .map(|d| format!("/{}", d.dir_name.trim_end_matches('/')))
                .collect();
            let name = c.cnames.join(",");
            // --cgroup-root: a controller's own root wins over the global one.
            let new_root = opts
                .roots
                .iter()
                .find(|(ctl, _)| {
                    ctl.as_ref().is_some_and(|ctl| {
                        if ctl.is_empty() {
                            name.is_empty()
                        } else {
                            ctl.split(',').all(|x| c.cnames.iter().any(|n| n == x))
                        }
                    })
                })
                .or_else(|| opts.roots.iter().find(|(ctl, _)| ctl.is_none()))
                .map(|(_, r)| r.clone());
            if let Some(new) = new_root {
                for head in &heads {
                    for s in ce.sets.iter_mut() {
                        for m in s.ctls.iter_mut().filter(|m| m.name == name) {
                            if let Some(p) = reroot(&m.path, head, &new) {
                                tracing::info!(hierarchy = %name, from = %m.path, to = %p, "cgroup moved");
                                m.path = p;
                            }
                        }
                    }
                    for (p, _) in flat.iter_mut() {
                        if let Some(np) = reroot(p, head, &new) {
                            *p = np;
                        }
                    }
                }
            }
            dirs.insert(name, flat);
        }
        let mounts = Mounts::load()?;
        let own = parse_proc_cgroup(&read(Path::new("/proc/self/cgroup"))?);
        let mut me = CgRestore::new(cryo_set);
        for s in &ce.sets {
            let mut members = Vec::new();
            for m in &s.ctls {
                let ns_root = match m.cgns_prefix.unwrap_or(0) as usize {
                    0 => None,
                    n => {
                        let p = m.path.get(..n).ok_or_else(|| {
                            CgroupError::BadImage(format!(
                                "set {}: {}:{} is shorter than its cgroup namespace prefix {n}",
                                s.id, m.name, m.path
                            ))
                        })?;
                        Some(mounts.dir(&m.name, if p.is_empty() { "/" } else { p })?)
                    }
                };
                let shared = own.iter().any(|(n, p)| *n == m.name && *p == m.path);
                members.push(Member {
                    name: m.name.clone(),
                    path: m.path.clone(),
                    dir: if shared {
                        None
                    } else {
                        Some(mounts.dir(&m.name, &m.path)?)
                    },
                    ns_root,
                });
            }
            me.sets.insert(s.id, members);
        }
        // The directories: the saved trees, then the sets' own paths (images without trees).
        // A set's own path without a saved entry is only made if missing.
        let mut todo: Vec<(String, String, Option<pb::CgroupDirEntry>)> = Vec::new();
        let mut names: Vec<&String> = dirs.keys().collect();
        names.sort();
        for name in names {
            for (p, e) in &dirs[name] {
                todo.push((name.clone(), p.clone(), Some(e.clone())));
            }
        }
        for m in me.sets.values().flatten() {
            if !todo.iter().any(|(n, p, _)| *n == m.name && *p == m.path) {
                todo.push((m.name.clone(), m.path.clone(), None));
            }
        }
        for (name, path, entry) in todo {
            // A cgroup cryo is in exists and is left as it is (often a hierarchy's root, of
            // hierarchies that may not even be mounted anywhere).
            if own.iter().any(|(n, p)| *n == name && *p == path) {
                continue;
            }
            let host = mounts.dir(&name, &path)?;
            me.prepare_dir(opts.mode, &host, entry.as_ref())?;
        }
        Ok(Some(me))
    }

    /// Checks or makes one directory (its parents first) and sets what the mode says.
    fn prepare_dir(
        &mut self,
        mode: Mode,
        host: &Path,
        e: Option<&pb::CgroupDirEntry>,
    ) -> Result<(), CgroupError> {
        let exists = host.is_dir();
        let props = if exists {
            match mode {
                Mode::Strict if e.is_some() => {
                    // The hierarchy's own root always exists; only directories below count.
                    if host
                        .parent()
                        .is_some_and(|p| p.join("cgroup.procs").exists())
                    {
                        return Err(CgroupError::Exists {
                            path: host.to_path_buf(),
                        });
                    }
                    false
                }
                Mode::Full | Mode::Props => true,
                _ => false,
            }
        } else {
            match mode {
                Mode::None | Mode::Props => {
                    return Err(CgroupError::Missing {
                        path: host.to_path_buf(),
                        mode: mode.name(),
                    })
                }
                _ => {}
            }
            // mkdir -p, remembering what was made.
            let mut missing = Vec::new();
            let mut p = host;
            while !p.is_dir() {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(pp) => p = pp,
                    None => break,
                }
            }
            for d in missing.into_iter().rev() {
                std::fs::create_dir(&d).map_err(|source| CgroupError::Io {
                    what: "create cgroup",
                    path: d.clone(),
                    source,
                })?;
                tracing::info!(cgroup = %d.display(), "created cgroup");
                self.created.push(d);
            }
            true
        };
        let Some(e) = e else { return Ok(()) };
        if mode != Mode::None {
            if let Some(pm) = &e.dir_perms {
                let meta = std::fs::metadata(host).map_err(|source| CgroupError::Io {
                    what: "stat",
                    path: host.to_path_buf(),
                    source,
                })?;
                if (meta.uid(), meta.gid()) != (pm.uid, pm.gid) {
                    std::os::unix::fs::chown(host, Some(pm.uid), Some(pm.gid)).map_err(
                        |source| CgroupError::Io {
                            what: "chown",
                            path: host.to_path_buf(),
                            source,
                        },
                    )?;
                }
                if meta.mode() & 0o7777 != pm.mode & 0o7777 {
                    std::fs::set_permissions(
                        host,
                        std::fs::Permissions::from_mode(pm.mode & 0o7777),
                    )
                    .map_err(|source| CgroupError::Io {
                        what: "chmod",
                        path: host.to_path_buf(),
                        source,
                    })?;
                }
            }
        }
        if props {
            for p in &e.properties {
                set_prop(host, p)?;
            }
        }
        Ok(())
    }

    /// Moves the new task `pid` (host PID) into its saved cgroups unless it already is in
    /// them: its set is its parent's (`parent`'s core), or, for the root, the one cryo had
    /// at dump. Called before the task maps its memory or forks its children.
    pub fn place(
        &self,
        pid: i32,
        img: &TaskImages,
        parent: Option<&TaskImages>,
    ) -> Result<(), CgroupError> {
        let set = set_of(&img.core);
        if set == 0 {
            return Ok(()); // a zombie, or images without cgroup info
        }
        let born_in = match parent {
            Some(p) => set_of(&p.core),
            None => self.cryo_set,
        };
        if set == born_in {
            return Ok(());
        }
        self.join(pid, set, "cgroup.procs")
    }

    /// Moves `pid` (host PID) into the roots of the cgroup namespace its set was saved in,
    /// where it then unshares its namespace (so the namespace's root is what it was); true
    /// if the set has such roots.
    pub fn enter_ns_root(&self, pid: i32, img: &TaskImages) -> Result<bool, CgroupError> {
        let set = set_of(&img.core);
        let Some(members) = self.sets.get(&set) else {
            return Ok(false);
        };
        let mut any = false;
        for m in members {
            if let Some(root) = &m.ns_root {
                std::fs::write(root.join("cgroup.procs"), pid.to_string()).map_err(|source| {
                    CgroupError::Move {
                        pid,
                        path: root.clone(),
                        source,
                    }
                })?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Moves `pid` into its saved cgroups even if it was born there (after its cgroup
    /// namespace was made at the namespace root).
    pub fn place_now(&self, pid: i32, img: &TaskImages) -> Result<(), CgroupError> {
        match set_of(&img.core) {
            0 => Ok(()),
            set => self.join(pid, set, "cgroup.procs"),
        }
    }

    /// Moves every thread whose set differs from its leader's (v1 `tasks`, v2
    /// `cgroup.threads`). `threads`: (host TID, its core).
    pub fn place_threads(
        &self,
        leader: &TaskImages,
        threads: &[(i32, &pb::CoreEntry)],
    ) -> Result<(), CgroupError> {
        let own = set_of(&leader.core);
        for (tid, core) in threads {
            let set = set_of(core);
            if set != 0 && set != own {
                self.join(*tid, set, "")?;
            }
        }
        Ok(())
    }

    /// Writes `pid` into each member of `set` it is not in yet (`file` empty: per thread).
    fn join(&self, pid: i32, set: u32, file: &str) -> Result<(), CgroupError> {
        let members = match self.sets.get(&set) {
            Some(m) => m.clone(),
            // cryo's own set at dump (not saved): the cgroups cryo is in now.
            None if set == self.cryo_set => {
                let mounts = Mounts::load()?;
                parse_proc_cgroup(&read(Path::new("/proc/self/cgroup"))?)
                    .into_iter()
                    .filter_map(|(name, path)| {
                        let dir = mounts.dir(&name, &path).ok()?;
                        Some(Member {
                            name,
                            path,
                            dir: Some(dir),
                            ns_root: None,
                        })
                    })
                    .collect()
            }
            None => {
                return Err(CgroupError::BadImage(format!(
                    "task {pid} is in set {set}, which the image does not have"
                )))
            }
        };
        let now_path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let now = parse_proc_cgroup(&read(&now_path)?);
        for m in &members {
            if now.iter().any(|(n, p)| *n == m.name && *p == m.path) {
                continue;
            }
            let f = match file {
                "" if m.name.is_empty() => "cgroup.threads",
                "" => "tasks",
                f => f,
            };
            let dir = match &m.dir {
                Some(d) => d.clone(),
                // cryo's own cgroup at load; the task left it meanwhile (its parent's).
                None => Mounts::load()?.dir(&m.name, &m.path)?,
            };
            let target = dir.join(f);
            std::fs::write(&target, pid.to_string()).map_err(|source| CgroupError::Move {
                pid,
                path: dir.clone(),
                source,
            })?;
            tracing::debug!(pid, cgroup = %target.display(), "moved into cgroup");
        }
        Ok(())
    }

    /// The restore succeeded: keep the directories made.
    pub fn keep(&self) {
        self.kept.set(true);
    }
}

impl Drop for CgRestore {
    fn drop(&mut self) {
        if self.kept.get() {
            return;
        }
        for d in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!(
                    cgroup = %d.display(),
                    error = %e,
                    "could not remove a cgroup made for the failed restore"
                );
            }
        }
    }
}

/// Files that hold memberships (restored by moving tasks) or that would run or grant
/// something outside the tree: a property of that name in an image is skipped.
const NEVER_WRITTEN: &[&str] = &[
    "cgroup.threads",
    "release_agent",
    "cgroup.kill",
    "devices.allow",
    "devices.deny",
];

/// Writes a saved property back (v2 `cgroup.subtree_control` as `+ctl` words; v1
/// `devices.list` as `devices.deny` "a" then one `devices.allow` write per line, as CRIU)
/// and gives its file the saved mode and owner. Only the limits cryo always saved must
/// succeed; any other is a warning when the kernel refuses it.
fn set_prop(dir: &Path, p: &pb::CgroupPropEntry) -> Result<(), CgroupError> {
    if NEVER_WRITTEN.contains(&p.name.as_str()) {
        tracing::warn!(
            "cgroup {}: property {} is not restored from an image (ignored)",
            dir.display(),
            p.name
        );
        return Ok(());
    }
    // A property is a file of this very directory (`pids.max`, `notify_on_release`, ...).
    if p.name.is_empty()
        || p.name.contains('/')
        || p.name.starts_with('.')
        || (!p.name.contains('.') && !V1_GLOBAL.contains(&p.name.as_str()))
    {
        return Err(CgroupError::BadImage(format!(
            "cgroup property name {:?} is not a cgroup file",
            p.name
        )));
    }
    let r = set_value(dir, p).and_then(|_| set_perms(dir, p));
    match r {
        Err(e) if !essential(&p.name) => {
            tracing::warn!(error = %e, "cgroup property not restored");
            Ok(())
        }
        r => r,
    }
}

fn set_value(dir: &Path, p: &pb::CgroupPropEntry) -> Result<(), CgroupError> {
    let path = dir.join(&p.name);
    if perms_only(&p.name) {
        return Ok(());
    }
    if p.name == "cgroup.subtree_control" {
        for c in p.value.split_whitespace() {
            write_file(&path, "enable controller in", &format!("+{c}"))?;
        }
        return Ok(());
    }
    if p.name == "devices.list" {
        let now = match std::fs::read_to_string(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(
                    "cgroup {}: no devices.list, devices not restored",
                    dir.display()
                );
                return Ok(());
            }
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        if now.trim() == p.value.trim() {
            return Ok(());
        }
        write_file(&dir.join("devices.deny"), "set", "a")?;
        for line in p.value.lines().filter(|l| !l.trim().is_empty()) {
            write_file(&dir.join("devices.allow"), "set", line.trim())?;
        }
        return Ok(());
    }
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim_end_matches('\n') == p.value || p.value.is_empty() => Ok(()),
        Ok(_) if p.name == "devices.list" => {
            write_file(&dir.join("devices.deny"), "set", "a")?;
            for line in p.value.lines().filter(|l| !l.is_empty()) {
                write_file(&dir.join("devices.allow"), "set", line)?;
            }
            Ok(())
        }
        // The kernel reads one "IFNAME PRIO" pair per write.
        Ok(_) if p.name == "net_prio.ifpriomap" => {
            for line in p.value.lines().filter(|l| !l.is_empty()) {
                write_file(&path, "set", line)?;
            }
            Ok(())
        }
        Ok(_) => write_file(&path, "set", &p.value),
        // The controller is not enabled there (its parent was not saved): not fatal.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(
                cgroup = %dir.display(),
                property = %p.name,
                "no such property: limit not restored"
            );
            Ok(())
        }
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Gives a property file its saved mode and owner (devices.list's is the kernel's own).
fn set_perms(dir: &Path, p: &pb::CgroupPropEntry) -> Result<(), CgroupError> {
    let Some(pm) = p.perms.as_ref().filter(|_| p.name != "devices.list") else {
        return Ok(());
    };
    let path = dir.join(&p.name);
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(()); // no such file here (see set_value)
    };
    if (meta.uid(), meta.gid()) != (pm.uid, pm.gid) {
        std::os::unix::fs::chown(&path, Some(pm.uid), Some(pm.gid)).map_err(|source| {
            CgroupError::Io {
                what: "chown",
                path: path.clone(),
                source,
            }
        })?;
    }
    if meta.mode() & 0o7777 != pm.mode & 0o7777 {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(pm.mode & 0o7777))
            .map_err(|source| CgroupError::Io {
                what: "chmod",
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Freezer

/// A cgroup frozen for the seize; put back as it was found when dropped.
#[derive(Debug)]
pub struct Freezer {
    path: PathBuf,
    v2: bool,
    was_frozen: bool,
    /// `put_back` already ran.
    done: std::cell::Cell<bool>,
}

/// How long a cgroup may take to freeze (CRIU's default `--timeout` is 10 s).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl Freezer {
    fn file(&self) -> PathBuf {
        self.path.join(if self.v2 {
            "cgroup.freeze"
        } else {
            "freezer.state"
        })
    }

    /// Whether the cgroup is completely frozen; `Err` for an unknown state.
    fn frozen(&self) -> Result<bool, CgroupError> {
        if self.v2 {
            if read(&self.file())?.trim() == "0" {
                return Ok(false);
            }
            let ev = read(&self.path.join("cgroup.events"))?;
            return Ok(ev.lines().any(|l| l.trim() == "frozen 1"));
        }
        match read(&self.file())?.trim() {
            "FROZEN" => Ok(true),
            "THAWED" | "FREEZING" => Ok(false),
            other => Err(CgroupError::Freezer {
                path: self.path.clone(),
                what: format!("unknown freezer state '{other}'"),
            }),
        }
    }

    fn set(&self, frozen: bool) -> Result<(), CgroupError> {
        let v = match (self.v2, frozen) {
            (true, true) => "1",
            (true, false) => "0",
            (false, true) => "FROZEN",
            (false, false) => "THAWED",
        };
        write_file(&self.file(), if frozen { "freeze" } else { "thaw" }, v)
    }

    /// Freezes the cgroup at `path` (v1 or v2, whichever control file it has) and waits until
    /// it is frozen. If it was frozen already, it is left so.
    pub fn freeze(path: &Path) -> Result<Freezer, CgroupError> {
        let v2 = if path.join("freezer.state").exists() {
            false
        } else if path.join("cgroup.freeze").exists() {
            true
        } else {
            return Err(CgroupError::Freezer {
                path: path.to_path_buf(),
                what: "neither freezer.state (v1) nor cgroup.freeze (v2) is there".into(),
            });
        };
        let mut f = Freezer {
            path: path.to_path_buf(),
            v2,
            was_frozen: false,
            done: Default::default(),
        };
        // FREEZING counts as frozen, as in CRIU: someone else asked for it.
        f.was_frozen = if v2 {
            read(&f.file())?.trim() == "1"
        } else {
            read(&f.file())?.trim() != "THAWED"
        };
        tracing::info!(
            cgroup = %path.display(),
            version = if v2 { 2 } else { 1 },
            already_frozen = f.was_frozen,
            "freezing cgroup"
        );
        f.set(true)?;
        let t0 = Instant::now();
        let mut n = 0u32;
        while !f.frozen()? {
            if t0.elapsed() > FREEZE_TIMEOUT {
                return Err(CgroupError::Freezer {
                    path: path.to_path_buf(),
                    what: format!("still not frozen after {} s", FREEZE_TIMEOUT.as_secs()),
                });
            }
            n += 1;
            // v1 may stay FREEZING: ask again now and then (what CRIU does too).
            if !v2 && n.is_multiple_of(20) {
                f.set(true)?;
            }
            std::thread::sleep(Duration::from_millis(if n < 10 { 1 } else { 10 }));
        }
        Ok(f)
    }

    /// Thaws the cgroup so the seized tasks reach their ptrace stops.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set(false)
    }

    /// Puts the cgroup back as it was found (once). Called before the seized tasks are
    /// released, as CRIU does, so a task of a cgroup that was frozen goes from its ptrace stop
    /// straight into the freezer; not before they are killed (a frozen v1 task does not die).
    pub fn put_back(&self) {
        if self.done.replace(true) {
            return;
        }
        if let Err(e) = self.set(self.was_frozen) {
            tracing::error!(cgroup = %self.path.display(), error = %e, "could not put the cgroup back");
        } else if self.was_frozen {
            tracing::info!(cgroup = %self.path.display(), "cgroup frozen again, as it was");
        }
    }
}

impl Drop for Freezer {
    /// Last resort (errors, kill): the tasks are released or dead by now. A cgroup that was
    /// frozen is given a moment to be frozen again before cryo exits.
    fn drop(&mut self) {
        self.put_back();
        let t0 = Instant::now();
        while self.was_frozen
            && !self.frozen().unwrap_or(true)
            && t0.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        let v = parse_proc_cgroup("9:name=systemd:/\n1:cpu,cpuacct:/a b\n0::/x/y\n");
        assert_eq!(
            v,
            vec![
                ("".into(), "/x/y".into()),
                ("cpu,cpuacct".into(), "/a b".into()),
                ("name=systemd".into(), "/".into())
            ]
        );
    }

    #[test]
    fn roots_are_replaced_by_components() {
        assert_eq!(reroot("/a/b", "/a", "/n").as_deref(), Some("/n/b"));
        assert_eq!(reroot("/a", "/a", "/n").as_deref(), Some("/n"));
        assert_eq!(reroot("/ab", "/a", "/n"), None);
        assert_eq!(reroot("/x", "/", "/n").as_deref(), Some("/n/x"));
        assert_eq!(reroot("/a/b", "/a", "/").as_deref(), Some("/b"));
        assert_eq!(below("/a/b", "/"), Some("a/b"));
    }

    #[test]
    fn dir_trees_nest_and_flatten_back() {
        let e = pb::CgroupDirEntry::default();
        let flat = vec![
            ("/t".to_string(), e.clone()),
            ("/t/a".to_string(), e.clone()),
            ("/t/a/b".to_string(), e.clone()),
            ("/u/v".to_string(), e.clone()),
        ];
        let t = tree(&flat);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].dir_name, "t");
        assert_eq!(t[0].children[0].dir_name, "a");
        assert_eq!(t[1].dir_name, "u/v");
        let mut back = Vec::new();
        flatten(&t, "", &mut back);
        let paths: Vec<&str> = back.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/t", "/t/a", "/t/a/b", "/u/v"]);
    }

    #[test]
    fn modes_parse_like_criu() {
        assert_eq!(Mode::parse(None), Ok(Mode::Soft));
        assert_eq!(Mode::parse(Some("full")), Ok(Mode::Full));
        assert!(Mode::parse(Some("bogus")).is_err());
        assert_eq!(Mode::from_rpc(6), Ok(Mode::Soft));
        assert_eq!(
            CgOpts::parse_roots(&["cpu:/x".into(), "/y".into()]).unwrap(),
            vec![(Some("cpu".into()), "/x".into()), (None, "/y".into())]
        );
    }
}
