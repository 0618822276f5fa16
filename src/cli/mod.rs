//! Command line, compatible with CRIU's: same commands, option spellings (short and long),
//! getopt quirks (`-v4`, `-vvv`, `-verbosity=0`), exit codes (0 success, 1 failure).
//! CRIU options cryo does not implement yet are recognised and refused by name.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Checkpoint/restore for Linux processes, with CRIU-compatible images.
///
/// cryo freezes a running process, writes its complete state into a directory of image files
/// (CRIU's format: crit and checkpointctl read them), and later recreates it with the same
/// PID, memory, files and registers, so it continues exactly where it stopped.
///
/// Typical use:
///
///   cryo dump -t 1234 -D /tmp/ckpt -o dump.log      # save and stop process 1234
///
///   cryo restore -D /tmp/ckpt -d -o restore.log     # bring it back, detached
///
///   cryo dump -t INIT -D /tmp/c --external 'mnt[/data]:data'      # a container's init
///
///   cryo restore -D /tmp/c -d --root ROOTFS --external 'mnt[data]:/srv/data'
///
///   cryo show /tmp/ckpt/core-1234.img                # look inside an image
///
///   cryo inspect /tmp/ckpt                           # processes, files, memory...
///
///   cryo inspect --search 'secret' ckpt.tar.zst      # in the saved memory
///
///   cryo diff /tmp/ckpt1 /tmp/ckpt2                  # what changed in between
///
///   cryo check                                       # can this kernel do it?
#[derive(Debug, Parser)]
#[command(
    name = "cryo",
    version,
    verbatim_doc_comment,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// Print version (CRIU prints "Version: X").
    #[arg(short = 'V', long = "version", global = true)]
    pub version: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Checkpoint a running process into an images directory.
    ///
    /// The process is frozen with ptrace (it never sees a signal), its state is written to
    /// DIR, and it is then killed, unless --leave-running is given. If anything fails the
    /// process is left running exactly as it was.
    Dump(DumpArgs),
    /// Restore a process from an images directory.
    ///
    /// The images are verified first (cryo-manifest.json); the process is recreated with its
    /// original PID, which must be free.
    Restore(RestoreArgs),
    /// Decode an image file to JSON (like `crit show`).
    Show(ShowArgs),
    /// Check that this kernel has what cryo needs.
    Check(CheckArgs),
    /// Not implemented yet: incremental memory dumps (needs soft-dirty tracking).
    #[command(name = "pre-dump")]
    PreDump(DumpArgs),
    /// Serve one CRIU RPC request on the SOCK_SEQPACKET socket at fd FD (what runc, podman,
    /// go-criu and libcriu run as `criu swrk FD`).
    Swrk(SwrkArgs),
    /// Show what a checkpoint holds: processes, files, sockets, mounts, memory, container.
    ///
    /// Reads an images directory (cryo's or CRIU's), a podman checkpoint (`podman container
    /// checkpoint --export` archive, plain, gzip or zstd, or its checkpoint directory) or a
    /// containerd checkpoint (`ctr images export --skip-manifest-json` archive, or an OCI
    /// layout directory), in place. The summary comes first, then the process tree (command
    /// lines and environments read from the saved memory), fds, pipes, ttys, sockets, mounts,
    /// namespaces, cgroups, memory and the container runtime's side (OCI spec, rootfs diff,
    /// network). Section flags (--ps, --fds, ...) combine, and without any every section is
    /// shown; --json prints the same as one JSON document
    /// (docs/inspect.md). What cannot be read is listed under NOT READ, never guessed.
    Inspect(InspectArgs),
    /// Compare two checkpoints of the same process tree: processes added or gone, fds
    /// changed, saved memory pages changed per VMA.
    Diff(DiffArgs),
    /// Print a shell completion script for cryo.
    ///
    /// bash: `cryo completions bash > /etc/bash_completion.d/cryo`; zsh: into a directory of
    /// $fpath as `_cryo`; fish: `~/.config/fish/completions/cryo.fish`.
    Completions(CompletionsArgs),
    /// Print cryo's man page (roff), or write one page per command into a directory.
    ///
    /// `cryo man | man -l -` reads it; `cryo man --dir /usr/local/share/man/man1` installs
    /// cryo.1 and cryo-COMMAND.1 for every command.
    Man(ManArgs),
}

/// `cryo inspect`.
#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    /// An images directory, a podman checkpoint (archive or directory) or a containerd
    /// checkpoint (exported OCI archive or layout directory).
    #[arg(value_name = "DIR|ARCHIVE")]
    pub path: PathBuf,
    /// Print one JSON document (its shape is documented in docs/inspect.md).
    #[arg(long)]
    pub json: bool,
    /// Show the process tree: PIDs, states, threads, command lines, environments.
    #[arg(long)]
    pub ps: bool,
    /// Show the open files of each process, pipes and ttys.
    #[arg(long)]
    pub fds: bool,
    /// Show sockets: family, state, addresses, queued bytes, holders.
    #[arg(long)]
    pub sockets: bool,
    /// Show mounts, namespaces and cgroups.
    #[arg(long)]
    pub mounts: bool,
    /// Show memory: each process's VMAs and the pages saved in them.
    #[arg(long)]
    pub mem: bool,
    /// Show the container runtime's side (podman, containerd): name, image, OCI spec,
    /// rootfs diff, network.
    #[arg(long)]
    pub container: bool,
    /// Only this process (and what it holds).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Find STRING in the saved memory of every process: process, address, mapping and
    /// the bytes around it.
    #[arg(
        long,
        value_name = "STRING",
        conflicts_with = "search_regex",
        allow_hyphen_values = true
    )]
    pub search: Option<String>,
    /// Like --search, with a regular expression (Rust regex syntax, over bytes).
    #[arg(
        long = "search-regex",
        value_name = "REGEX",
        allow_hyphen_values = true
    )]
    pub search_regex: Option<String>,
    /// Bytes of context shown on each side of a match.
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub context: usize,
    /// Stop after this many matches.
    #[arg(long = "max-hits", value_name = "N", default_value_t = 1000)]
    pub max_hits: usize,
    /// Write LEN bytes of process PID's saved memory from address ADDR (hex with 0x, or
    /// decimal; LEN may end in K or M) to --output or stdout. Pages not in the checkpoint
    /// come out as zeros and are listed on stderr with the reason.
    #[arg(long = "dump-mem", num_args = 3, value_names = ["PID", "ADDR", "LEN"])]
    pub dump_mem: Option<Vec<String>>,
    /// With --dump-mem: the file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl InspectArgs {
    /// The sections asked for: all unless a section flag (or a search) narrows them.
    pub fn sections(&self) -> crate::inspect::Sections {
        let any = self.ps || self.fds || self.sockets || self.mounts || self.mem || self.container;
        if !any {
            if self.search.is_some() || self.search_regex.is_some() {
                return crate::inspect::Sections::NONE;
            }
            return crate::inspect::Sections::ALL;
        }
        crate::inspect::Sections {
            ps: self.ps,
            fds: self.fds,
            sockets: self.sockets,
            mounts: self.mounts,
            mem: self.mem,
            container: self.container,
        }
    }

    /// `--dump-mem PID ADDR LEN` parsed.
    pub fn dump_mem(&self) -> Result<Option<(u32, u64, u64)>, String> {
        let Some(v) = &self.dump_mem else {
            return Ok(None);
        };
        let pid = v[0]
            .parse()
            .map_err(|_| format!("--dump-mem: '{}' is not a PID", v[0]))?;
        let num = |s: &str| -> Option<u64> {
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => parse_size(s).ok(),
            }
        };
        let addr = num(&v[1]).ok_or_else(|| format!("--dump-mem: '{}' is not an address", v[1]))?;
        let len = num(&v[2]).ok_or_else(|| format!("--dump-mem: '{}' is not a length", v[2]))?;
        Ok(Some((pid, addr, len)))
    }
}

/// `cryo diff`.
#[derive(Debug, Args, Clone)]
pub struct DiffArgs {
    /// The earlier checkpoint (directory or archive).
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The later checkpoint.
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `cryo completions`.
#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `cryo man`.
#[derive(Debug, Args, Clone)]
pub struct ManArgs {
    /// Write cryo.1 and cryo-COMMAND.1 for every command into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Commands of cryo's own (not CRIU's): their arguments are not rewritten by `normalize`.
const OWN_COMMANDS: &[&str] = &["inspect", "diff", "completions", "man"];

/// `cryo swrk FD`.
#[derive(Debug, Args, Clone)]
pub struct SwrkArgs {
    /// The socket's fd number.
    #[arg(value_name = "FD")]
    pub fd: i32,
}

/// Options every command shares (CRIU's generic options).
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Directory holding the images.
    #[arg(
        short = 'D',
        long = "images-dir",
        value_name = "DIR",
        default_value = "."
    )]
    pub images_dir: PathBuf,
    /// Directory for logs and stats (default: the images directory).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Log file, relative to the work directory (default: stderr).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Log level 0..4 (0 none, 1 errors, 2 warnings (default), 3 info, 4 debug). Also -v, -vv, -v4.
    #[arg(long = "verbosity", value_name = "N", default_value_t = 2, require_equals = true, num_args = 0..=1, default_missing_value = "3")]
    pub verbosity: u32,
    /// Accepted for compatibility (each process logs into the same file).
    #[arg(long = "log-pid")]
    pub log_pid: bool,
    /// Accepted for compatibility: cryo reads no configuration files. May be repeated.
    #[arg(long = "no-default-config", overrides_with = "no_default_config")]
    pub no_default_config: bool,
    /// restore: write the restored root's PID to FILE (relative to the work directory).
    /// Accepted by every command, as CRIU does (zdtm passes it to dump too).
    #[arg(long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print dump/restore statistics.
    #[arg(long = "display-stats")]
    pub display_stats: bool,
    /// Run FILE at every notification point (pre-dump, post-dump, pre-restore,
    /// post-restore, pre-resume, post-resume) with CRTOOLS_SCRIPT_ACTION, CRTOOLS_IMAGE_DIR
    /// and CRTOOLS_INIT_PID set, as CRIU does. A script that fails aborts the operation
    /// (before the restored process runs). May be given several times.
    #[arg(long = "action-script", value_name = "FILE")]
    pub action_script: Vec<PathBuf>,
    /// Restore: the directory holding the root file system of a tree that had a mount
    /// namespace of its own. Its mounts (proc, sysfs, tmpfs with contents, devpts, binds...)
    /// are rebuilt on top of it in a new mount namespace, which the tree then lives in.
    #[arg(short = 'r', long = "root", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// External resources. Mounts: at dump `mnt[MOUNTPOINT]:KEY` saves the mount at
    /// MOUNTPOINT (as the tree sees it) as external, without contents; at restore
    /// `mnt[KEY]:HOSTPATH` bind-mounts HOSTPATH there again. Network: at dump
    /// `net[INODE]:KEY` saves a network namespace as external; at restore
    /// `veth[IN]:OUT[@BRIDGE]` makes the peer of veth IN in cryo's network namespace as OUT
    /// (added to BRIDGE), `macvlan[IN]:HOSTLINK` makes macvlan IN on HOSTLINK. Other kinds
    /// are refused.
    #[arg(long = "external", value_name = "RES")]
    pub external: Vec<String>,
    /// Older spelling of mount externals: at dump MOUNTPOINT:KEY, at restore KEY:HOSTPATH.
    #[arg(short = 'M', long = "ext-mount-map", value_name = "A:B")]
    pub ext_mount_map: Vec<String>,
    /// Dump: `net` saves a private network namespace as empty (not its devices); restore
    /// then gives the tree a new, empty one.
    #[arg(long = "empty-ns", value_name = "NS")]
    pub empty_ns: Option<String>,
    /// Restore: join an existing namespace instead of creating one: `net:PATH` (e.g.
    /// /run/netns/NAME or /proc/PID/ns/net).
    #[arg(short = 'J', long = "join-ns", value_name = "NS:PATH")]
    pub join_ns: Vec<String>,
    /// cgroups: at restore, how to move the tasks back into their saved cgroups: ignore,
    /// none (the cgroups must exist), props (and set their saved limits), soft (create the
    /// missing ones; the default, also without this option), full (create missing ones and
    /// set every limit), strict (refuse existing ones). At dump, `ignore` saves no cgroup
    /// directory (memberships are always saved).
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "soft")]
    pub manage_cgroups: Option<String>,
    /// Restore: put the saved cgroup tree of controller CTRL (of every hierarchy without
    /// CTRL: cpu, pids, name=systemd; an empty CTRL is cgroup v2) under PATH instead of where
    /// it was. May be given several times.
    #[arg(long = "cgroup-root", value_name = "[CTRL:]PATH")]
    pub cgroup_root: Vec<String>,
    /// Dump: freeze this cgroup (v1 freezer or v2 directory) while the tree is seized, so
    /// nothing in it forks or exits meanwhile; it is put back as it was afterwards.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// Dump: save the tree's POSIX, OFD and flock file locks (without it, a lock held by
    /// the tree fails the dump, as in CRIU); restore takes them again. Leases are refused.
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// How the tree's network is locked from the freeze until the restored tree runs
    /// (packets dropped, never answered with a reset): nftables (the default: a table
    /// `inet cryo-PID`), iptables (a chain `cryo-PID`), or skip.
    #[arg(long = "network-lock", value_name = "METHOD")]
    pub network_lock: Option<String>,
    /// Restore: the peer of veth IN (inside the tree's network namespace) is made in cryo's
    /// network namespace as OUT, added to BRIDGE if given. Same as --external
    /// 'veth[IN]:OUT[@BRIDGE]'.
    #[arg(long = "veth-pair", value_name = "IN=OUT[@BRIDGE]")]
    pub veth_pair: Vec<String>,
    /// Dump: save established TCP connections (TCP repair mode; the peer does not notice:
    /// they are locked with nftables until the restore). Restore: restore them. Without
    /// it, a connection makes the dump refuse, naming it.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Dump: do not save established TCP connections; restore: make them closed sockets.
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// Dump: drop the connections waiting in a listener's accept queue (their clients see
    /// a reset) instead of refusing.
    #[arg(long = "skip-in-flight")]
    pub skip_in_flight: bool,
    /// Dump: accept a unix socket whose peer is outside the tree when that peer is a named
    /// datagram socket (e.g. /dev/log); restore connects it to that name again. CRIU's
    /// optional list of socket inodes is accepted too (those sockets, any type).
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "INO,...", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub ext_unix_sk: Option<String>,
    /// Dump: a file whose name was removed while open but which has other names (hard
    /// links) gets a temporary name beside the old one (`link_remap.N`), through which the
    /// restore reopens the same file, then removes it. Without it such a file is refused.
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// Accepted for compatibility: CRIU's inode-to-path map for notify watches. cryo finds
    /// watched files through their file handles (`open_by_handle_at`) whatever is given.
    #[arg(long = "force-irmap")]
    pub force_irmap: bool,
    #[arg(long = "irmap-scan-path", value_name = "PATH", hide = true)]
    pub irmap_scan_path: Vec<String>,
    /// CRIU options cryo does not support yet (refused with a message).
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// The mount pairs of `--external mnt[A]:B` and `--ext-mount-map A:B`: (mount point, key)
/// at dump, (key, host path) at restore.
#[derive(Debug, Clone, Default)]
pub struct ExternalMounts(pub Vec<(String, String)>);

impl ExternalMounts {
    /// Mount point → key.
    pub fn dump_map(&self) -> std::collections::HashMap<String, String> {
        self.0.iter().cloned().collect()
    }

    /// `--root` and key → host path.
    pub fn restore_opts(&self, root: Option<PathBuf>) -> crate::kinds::mounts::MountOpts {
        crate::kinds::mounts::MountOpts {
            root,
            external: self
                .0
                .iter()
                .map(|(k, v)| (k.clone(), PathBuf::from(v)))
                .collect(),
        }
    }
}

impl Common {
    /// The socket options (`--tcp-established`, `--tcp-close`, `--skip-in-flight`,
    /// `--ext-unix-sk`).
    pub fn sock_opts(&self) -> crate::kinds::files::SockOpts {
        crate::kinds::files::SockOpts {
            tcp_established: self.tcp_established,
            tcp_close: self.tcp_close,
            skip_in_flight: self.skip_in_flight,
            ext_unix_sk: self.ext_unix_sk.is_some(),
        }
    }

    /// The `--manage-cgroups` mode (soft when not given, as in CRIU).
    pub fn cgroup_mode(&self) -> Result<crate::kinds::cgroup::Mode, String> {
        crate::kinds::cgroup::Mode::parse(self.manage_cgroups.as_deref())
    }

    /// `--manage-cgroups` and `--cgroup-root` for a restore.
    pub fn cgroup_opts(&self) -> Result<crate::kinds::cgroup::CgOpts, String> {
        Ok(crate::kinds::cgroup::CgOpts {
            mode: self.cgroup_mode()?,
            roots: crate::kinds::cgroup::CgOpts::parse_roots(&self.cgroup_root)?,
        })
    }

    /// Parses the mount externals; any other `--external` kind is refused by name.
    pub fn mounts(&self) -> Result<ExternalMounts, String> {
        let mut out = Vec::new();
        for e in self.external.iter().filter(|e| {
            !["net[", "veth[", "macvlan["]
                .iter()
                .any(|k| e.starts_with(k))
        }) {
            let pair = e
                .strip_prefix("mnt[")
                .and_then(|r| r.split_once("]:"))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty());
            match pair {
                Some((a, b)) => out.push((a.to_string(), b.to_string())),
                None => {
                    return Err(format!(
                        "--external {e}: cryo supports mounts (mnt[A]:B), network namespaces (net[INO]:KEY) and links (veth[IN]:OUT, macvlan[IN]:HOSTLINK) as external resources"
                    ))
                }
            }
        }
        for m in &self.ext_mount_map {
            match m
                .split_once(':')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            {
                Some((a, b)) => out.push((a.to_string(), b.to_string())),
                None => return Err(format!("--ext-mount-map {m}: expected A:B")),
            }
        }
        Ok(ExternalMounts(out))
    }

    /// `--external net[INO]:KEY`: network namespace inode → key.
    pub fn net_externals(&self) -> Result<std::collections::HashMap<u64, String>, String> {
        self.external
            .iter()
            .filter_map(|e| e.strip_prefix("net["))
            .map(|r| {
                r.split_once("]:")
                    .and_then(|(ino, key)| Some((ino.parse().ok()?, key.to_string())))
                    .filter(|(_, k)| !k.is_empty())
                    .ok_or_else(|| format!("--external net[{r}: expected net[INODE]:KEY"))
            })
            .collect()
    }

    /// `--network-lock` (nftables when not given).
    pub fn network_lock(&self) -> Result<crate::netlock::Method, String> {
        self.network_lock.as_deref().map_or(
            Ok(crate::netlock::Method::default()),
            crate::netlock::Method::parse,
        )
    }

    /// Links with a side outside the tree: `--external veth[..]`/`macvlan[..]`, `--veth-pair`.
    pub fn links(&self) -> Result<crate::kinds::netns::LinkOpts, String> {
        let mut l = crate::kinds::netns::LinkOpts::default();
        for e in &self.external {
            l.add_external(e)?;
        }
        for v in &self.veth_pair {
            l.add_veth_pair(v)?;
        }
        Ok(l)
    }

    /// `--empty-ns net` (the only kind CRIU accepts).
    pub fn empty_net(&self) -> Result<bool, String> {
        match self.empty_ns.as_deref() {
            None => Ok(false),
            Some("net") | Some("network") => Ok(true),
            Some(o) => Err(format!("--empty-ns {o}: only 'net' is supported")),
        }
    }

    /// `--join-ns net:PATH` (other kinds are refused).
    pub fn join(&self) -> Result<crate::kinds::ns::NsJoin, String> {
        let mut j = crate::kinds::ns::NsJoin::default();
        for s in &self.join_ns {
            match s.split_once(':') {
                Some(("net", p)) if !p.is_empty() => j.net = Some(PathBuf::from(p)),
                _ => {
                    return Err(format!(
                        "--join-ns {s}: cryo joins only a network namespace yet (net:PATH)"
                    ))
                }
            }
        }
        Ok(j)
    }
}

/// `cryo dump` / `pre-dump`.
#[derive(Debug, Args, Clone)]
pub struct DumpArgs {
    /// PID of the process to dump (the root of the tree).
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Keep the process running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// The process is a shell job: allow it not to be a session leader.
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Seize timeout in seconds (accepted for compatibility; seizing is immediate).
    #[arg(long = "timeout", value_name = "N")]
    pub timeout: Option<u32>,
    /// Pre-dump mode (splice|read); accepted for compatibility.
    #[arg(long = "pre-dump-mode", value_name = "MODE")]
    pub pre_dump_mode: Option<String>,
    /// Largest deleted-but-open file whose content is saved in the images (a "ghost file"),
    /// in bytes, or with a K, M or G suffix. Larger ones make the dump refuse. Default 1M.
    #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub ghost_limit: u64,
    /// Accepted for compatibility: CRIU finds the data of a sparse ghost file with FIEMAP
    /// (`--ghost-fiemap`) or SEEK_DATA/SEEK_HOLE (`--no-ghost-fiemap`); cryo always uses
    /// SEEK_DATA/SEEK_HOLE, which finds the same data, and keeps the holes either way.
    #[arg(long = "ghost-fiemap")]
    pub ghost_fiemap: bool,
    #[arg(long = "no-ghost-fiemap", hide = true)]
    pub no_ghost_fiemap: bool,
    #[command(flatten)]
    pub common: Common,
}

/// "1048576", "512K", "1M", "2G" → bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("'{s}' is not a size (bytes, or a number with K, M or G)"))
}

/// `cryo restore`.
#[derive(Debug, Args, Clone)]
pub struct RestoreArgs {
    /// Detach after restore: cryo exits and the process runs on.
    #[arg(short = 'd', long = "restore-detached")]
    pub detached: bool,
    /// Restore a shell job into cryo's session.
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Keep the pty master made for a slave whose master was not in the dumped tree (cryo
    /// holds it while it waits) instead of leaving the slave hung up.
    #[arg(long = "orphan-pts-master")]
    pub orphan_pts_master: bool,
    /// Create the restored root as cryo's sibling (CLONE_PARENT): cryo's parent becomes its
    /// parent, as with CRIU's --restore-sibling (runtimes ask for it over RPC).
    #[arg(short = 'S', long = "restore-sibling")]
    pub restore_sibling: bool,
    /// `fd[N]:KEY`: give the restored tree cryo's fd N wherever it had the object KEY.
    /// Supported keys: `pipe:[INODE]` (every fd that was that pipe at dump, either end), and
    /// the key of an external namespace (`--external net[INO]:KEY` at dump): N is a
    /// namespace fd to join.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    pub inherit_fd: Vec<String>,
    /// Accepted for compatibility: -t is meaningless on restore.
    #[arg(short = 't', long = "tree", value_name = "PID", hide = true)]
    pub tree: Option<i32>,
    #[command(flatten)]
    pub common: Common,
}

impl RestoreArgs {
    /// Parses `--inherit-fd fd[N]:KEY` into (KEY, N).
    pub fn inherit_fds(&self) -> Result<Vec<(String, i32)>, String> {
        self.inherit_fd
            .iter()
            .map(|s| {
                s.strip_prefix("fd[")
                    .and_then(|r| r.split_once("]:"))
                    .and_then(|(n, k)| Some((k.to_string(), n.parse::<i32>().ok()?)))
                    .filter(|(k, n)| !k.is_empty() && *n >= 0)
                    .ok_or_else(|| format!("--inherit-fd {s}: expected fd[N]:KEY"))
            })
            .collect()
    }
}

/// `cryo show`.
#[derive(Debug, Args, Clone)]
pub struct ShowArgs {
    /// The image file.
    pub file: PathBuf,
}

/// `cryo check`.
#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// Check one feature (CRIU names: mnt_id, get_rseq_conf, timens, mem_dirty_track, ...);
    /// `list` lists them.
    #[arg(long = "feature", value_name = "NAME")]
    pub feature: Option<String>,
    /// Also report optional features.
    #[arg(long = "all", alias = "extra")]
    pub all: bool,
    #[command(flatten)]
    pub common: Common,
}

macro_rules! unsupported_opts {
    ($($field:ident : $ty:ty = $long:literal $(short $short:literal)?, $why:literal;)*) => {
        /// CRIU options that change results and are not implemented yet.
        #[derive(Debug, Args, Clone, Default)]
        pub struct Unsupported {
            $(
                #[arg(long = $long, hide = true $(, short = $short)?)]
                pub $field: $ty,
            )*
        }
        impl Unsupported {
            /// The first option given that cryo cannot honour, with the reason.
            pub fn first(&self) -> Option<(&'static str, &'static str)> {
                $(if is_set(&self.$field) { return Some(($long, $why)); })*
                None
            }
        }
    };
}

fn is_set<T: IsSet>(v: &T) -> bool {
    v.is_set()
}
trait IsSet {
    fn is_set(&self) -> bool;
}
impl IsSet for bool {
    fn is_set(&self) -> bool {
        *self
    }
}
impl IsSet for Option<String> {
    fn is_set(&self) -> bool {
        self.is_some()
    }
}
impl IsSet for Vec<String> {
    fn is_set(&self) -> bool {
        !self.is_empty()
    }
}

unsupported_opts! {
    evasive_devices: bool = "evasive-devices", "evasive devices are not implemented yet";
    page_server: bool = "page-server", "the page server is not implemented yet";
    address: Option<String> = "address", "the page server is not implemented yet";
    port: Option<String> = "port", "the page server is not implemented yet";
    track_mem: bool = "track-mem", "memory tracking needs soft-dirty, which this kernel lacks";
    prev_images_dir: Option<String> = "prev-images-dir", "incremental dumps are not implemented yet";
    auto_dedup: bool = "auto-dedup", "incremental dumps are not implemented yet";
    lazy_pages: bool = "lazy-pages", "lazy restore is not implemented yet";
    leave_stopped: bool = "leave-stopped" short 's', "stopped final state is not implemented yet";
    exec_cmd: bool = "exec-cmd", "--exec-cmd is not implemented yet";
    lsm_profile: Option<String> = "lsm-profile", "LSM profiles are not saved or applied yet";
    cpu_cap: Option<String> = "cpu-cap", "CPU capability checks are not implemented yet";
    stream: bool = "stream", "image streaming is not implemented yet";
    status_fd: Option<String> = "status-fd", "--status-fd is not implemented yet";
    config: Option<String> = "config", "configuration files are not read by cryo";
    unprivileged: bool = "unprivileged", "unprivileged mode is not implemented yet";
}

/// Rewrites CRIU's getopt-only spellings into ones clap understands:
/// `-v` / `-vv` / `-v4` / `-verbosity=0` (which getopt reads as `-v` + "erbosity=0" → 0)
/// become `--verbosity=N`.
pub fn normalize(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let args: Vec<String> = args.into_iter().collect();
    // A search pattern such as "-v" must reach `cryo inspect` untouched.
    if args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|c| OWN_COMMANDS.contains(&c.as_str()))
    {
        return args;
    }
    let mut out = Vec::new();
    let mut level: Option<u32> = None;
    let mut pos = None;
    for a in args {
        if let Some(rest) = a.strip_prefix("-v").filter(|_| !a.starts_with("--")) {
            let cur = level.unwrap_or(2);
            level = Some(if rest.is_empty() {
                cur + 1
            } else if rest.chars().all(|c| c == 'v') {
                cur.saturating_add(1)
                    .saturating_add(u32::try_from(rest.len()).unwrap_or(u32::MAX))
            } else {
                // getopt hands "rest" to atoi(): leading digits, else 0.
                rest.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            });
            pos.get_or_insert(out.len());
            continue;
        }
        if a == "--verbosity" {
            level = Some(level.unwrap_or(2) + 1);
            pos.get_or_insert(out.len());
            continue;
        }
        if let Some(v) = a.strip_prefix("--verbosity=") {
            level = Some(v.parse().unwrap_or(0));
            pos.get_or_insert(out.len());
            continue;
        }
        out.push(a);
    }
    if let (Some(l), Some(_)) = (level, pos) {
        // Options must follow the subcommand for clap; append at the end.
        out.push(format!("--verbosity={}", l.min(4)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Cli {
        Cli::try_parse_from(normalize(v.iter().map(|s| s.to_string()))).unwrap()
    }

    #[test]
    fn criu_spellings() {
        let c = parse(&[
            "criu",
            "dump",
            "-t",
            "42",
            "-D",
            "/tmp/x",
            "-v4",
            "-o",
            "d.log",
            "--leave-running",
        ]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        assert_eq!(d.tree, 42);
        assert!(d.leave_running);
        assert_eq!(d.common.verbosity, 4);
        assert_eq!(d.common.log_file.unwrap(), PathBuf::from("d.log"));

        let c = parse(&[
            "criu",
            "dump",
            "--tree=7",
            "--images-dir",
            "/x",
            "-vvv",
            "-R",
            "--timeout",
            "10",
            "--pre-dump-mode",
            "splice",
        ]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        assert_eq!((d.tree, d.common.verbosity, d.leave_running), (7, 4, true));

        // zdtm: --pidfile on dump, and feature probes repeating --no-default-config.
        let c = parse(&[
            "criu",
            "dump",
            "-t",
            "7",
            "--pidfile",
            "x.pid",
            "--timeout",
            "10",
        ]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        assert_eq!(
            d.common.pidfile.as_deref(),
            Some(std::path::Path::new("x.pid"))
        );
        let c = parse(&[
            "criu",
            "check",
            "--no-default-config",
            "--no-default-config",
            "-verbosity=0",
            "--feature",
            "mnt_id",
        ]);
        let Some(Cmd::Check(k)) = c.cmd else { panic!() };
        assert_eq!(k.common.verbosity, 0);
        assert_eq!(k.feature.as_deref(), Some("mnt_id"));

        let c = parse(&[
            "criu",
            "restore",
            "-D",
            "/x",
            "-d",
            "--pidfile",
            "p",
            "-j",
            "-v",
        ]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert!(r.detached && r.shell_job);
        assert_eq!(r.common.verbosity, 3);
    }

    #[test]
    fn unsupported_options_are_named() {
        let c = parse(&["criu", "dump", "-t", "1", "--page-server"]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        assert_eq!(d.common.unsupported.first().unwrap().0, "page-server");
        // The socket options are CRIU's spellings.
        let c = parse(&[
            "criu",
            "dump",
            "-t",
            "1",
            "--tcp-established",
            "--skip-in-flight",
            "-x",
        ]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        let o = d.common.sock_opts();
        assert!(o.tcp_established && o.skip_in_flight && o.ext_unix_sk && !o.tcp_close);
        assert!(d.common.unsupported.first().is_none());
        let c = parse(&["criu", "restore", "--lazy-pages"]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert_eq!(r.common.unsupported.first().unwrap().0, "lazy-pages");
        // Supported now, but only for the kinds cryo handles.
        let c = parse(&[
            "criu",
            "restore",
            "--external",
            "mnt[x]:y",
            "--external",
            "tty[1:2]",
        ]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert!(r.common.mounts().unwrap_err().contains("tty[1:2]"));
    }

    #[test]
    fn inherit_fd_parses() {
        let c = parse(&["criu", "restore", "--inherit-fd", "fd[1]:pipe:[42]"]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert_eq!(r.inherit_fds().unwrap(), vec![("pipe:[42]".to_string(), 1)]);
        let c = parse(&["criu", "restore", "--inherit-fd", "1:pipe:[42]"]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert!(r.inherit_fds().is_err());
    }

    #[test]
    fn cgroup_options() {
        let c = parse(&[
            "criu",
            "restore",
            "--manage-cgroups",
            "--cgroup-root",
            "cpu:/x",
        ]);
        let Some(Cmd::Restore(r)) = c.cmd else {
            panic!()
        };
        assert_eq!(r.common.manage_cgroups.as_deref(), Some("soft"));
        assert_eq!(r.common.cgroup_root, ["cpu:/x"]);
        assert!(r.common.unsupported.first().is_none());
        let c = parse(&[
            "criu",
            "dump",
            "-t",
            "1",
            "--manage-cgroups=full",
            "--freeze-cgroup",
            "/f",
        ]);
        let Some(Cmd::Dump(d)) = c.cmd else { panic!() };
        assert_eq!(d.common.cgroup_mode(), Ok(crate::kinds::cgroup::Mode::Full));
        assert_eq!(d.common.freeze_cgroup, Some(PathBuf::from("/f")));
    }
}
