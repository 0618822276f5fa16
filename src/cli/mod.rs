//! Command line, compatible with CRIU 4.2's: the same commands, every option under the same
//! spellings (short and long, `--no-X` forms, abbreviations, options before or after the
//! command: `getopt`), configuration files read in CRIU's order and with its precedence
//! (`config`), exit codes (0 success, 1 failure).
//!
//! [`parse`] reads the configuration files and the command line into one canonical argument
//! list that the clap definitions below parse. Options that only tune what cryo already does
//! (or permit what cryo then refuses object by object, naming it) are accepted with CRIU's
//! meaning; options that ask for what cryo cannot do are refused by name with the reason
//! (`unsupported_opts!`).

pub mod config;
pub mod getopt;

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use getopt::{Event, Resolved};

/// Checkpoint/restore for Linux processes, with CRIU-compatible images.
///
/// cryo freezes a running process, writes its complete state into a directory of image files
/// (CRIU's format: crit and checkpointctl read them), and later recreates it with the same
/// PID, memory, files and registers, so it continues exactly where it stopped. It takes
/// CRIU's command line and configuration files (/etc/criu/default.conf,
/// ~/.criu/default.conf, $CRIU_CONFIG_FILE, --config FILE).
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
    Dump(Opts),
    /// Restore a process from an images directory.
    ///
    /// The images are verified first (cryo-manifest.json); the process is recreated with its
    /// original PID, which must be free.
    Restore(Opts),
    /// Decode an image file to JSON (like `crit show`).
    Show(ShowArgs),
    /// Check that this kernel has what cryo needs (`--feature NAME`: one of CRIU's feature
    /// names; `--extra`, `--experimental`, `--all`: the optional ones too).
    Check(Opts),
    /// Save the tree's memory while it runs on (an incremental dump's step): frozen only to
    /// list its pages and arm write tracking; `--prev-images-dir` names the step before.
    #[command(name = "pre-dump")]
    PreDump(Opts),
    /// Serve one CRIU RPC request on the SOCK_SEQPACKET socket at fd FD (what runc, podman,
    /// go-criu and libcriu run as `criu swrk FD`).
    Swrk(SwrkArgs),
    /// Receive the pages of a dump over TCP (`-D DIR --port N [--address A] [-d]
    /// [--status-fd FD] [--prev-images-dir ../PREV]`): CRIU's page server.
    #[command(name = "page-server")]
    PageServer(Opts),
    /// The lazy-pages daemon: serves the memory of a `restore --lazy-pages` from the images
    /// (or, with `--page-server`, from a `dump --lazy-pages` at `--address`/`--port`).
    #[command(name = "lazy-pages")]
    LazyPages(Opts),
    /// Live migration (cryo's): `migrate -t PID --to ADDR:PORT [--max-rounds N] [--json]`
    /// copies the tree's memory to `cryo receive` while it runs (rounds until the written
    /// pages stop shrinking), then freezes it, sends the last pages and the other images,
    /// and kills it once the destination runs it. Any failure before that leaves it running.
    Migrate(Opts),
    /// The destination of `cryo migrate`: `receive --port PORT [--address A] [-D DIR]
    /// [--timeout N]` receives one migration into DIR and restores the tree here (detached).
    /// It listens on every address unless --address names one, and serves the first peer
    /// that connects (with no authentication: listen on a private network, or a firewalled
    /// port).
    Receive(Opts),
    /// Not implemented yet: CRIU's RPC daemon on a socket (use `swrk`).
    Service(Opts),
    /// Deduplicate pages against a parent dump: not implemented yet (refused by name when the
    /// images have a parent; nothing to do without one).
    Dedup(Opts),
    /// Record this CPU in DIR/cpuinfo.img (`cpuinfo dump -D DIR`), or check that this CPU can
    /// run what was dumped with `--cpu-cap` (`cpuinfo check -D DIR [--cpu-cap=CAP]`, all
    /// checks by default): exit 0 if it can, else 1 with every missing feature named.
    Cpuinfo(CpuinfoArgs),
    /// CRIU's removed `exec` command.
    Exec(Opts),
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

/// Commands of cryo's own (not CRIU's): their arguments go to clap as they are, without
/// CRIU's grammar or configuration files (a search pattern such as `-v` stays a pattern).
const OWN_COMMANDS: &[&str] = &["inspect", "diff", "completions", "man"];

/// `cryo swrk FD`.
#[derive(Debug, Args, Clone)]
pub struct SwrkArgs {
    /// The socket's fd number.
    #[arg(value_name = "FD")]
    pub fd: i32,
}

/// `cryo cpuinfo dump|check`.
#[derive(Debug, Args, Clone)]
pub struct CpuinfoArgs {
    /// dump or check.
    #[arg(value_name = "ACTION")]
    pub action: String,
    #[command(flatten)]
    pub opts: Opts,
}

/// `cryo show`.
#[derive(Debug, Args, Clone)]
pub struct ShowArgs {
    /// The image file.
    pub file: PathBuf,
}

/// Every CRIU option (CRIU accepts each of them with every command). Options that mean
/// nothing to a command are accepted and ignored there, as CRIU does.
#[derive(Debug, Args, Clone, Default)]
pub struct Opts {
    // --- Generic.
    /// dump: PID of the process to dump (the root of the tree).
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: Option<i32>,
    /// Directory holding the images.
    #[arg(
        short = 'D',
        long = "images-dir",
        value_name = "DIR",
        default_value = "."
    )]
    pub images_dir: PathBuf,
    /// Directory for logs, pidfiles and stats (default: the images directory).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// dump: keep the process running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// dump: keep the processes after the dump, stopped (SIGSTOP) instead of running;
    /// restore: leave the restored processes stopped. `kill -CONT` lets them run.
    #[arg(short = 's', long = "leave-stopped", conflicts_with = "leave_running")]
    pub leave_stopped: bool,
    /// restore: detach after restore: cryo exits and the process runs on (also --daemon).
    #[arg(short = 'd', long = "restore-detached")]
    pub restore_detached: bool,
    /// restore: create the restored root as cryo's sibling (CLONE_PARENT): cryo's parent
    /// becomes its parent (needs --restore-detached, as in CRIU).
    #[arg(short = 'S', long = "restore-sibling")]
    pub restore_sibling: bool,
    /// Write the restored root's PID to FILE (relative to the work directory).
    #[arg(long = "pidfile", value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// dump: record this CPU in cpuinfo.img; restore: refuse, before anything is created,
    /// a CPU that lacks what the recorded one had. CAP (CRIU's words, commas between, `^`
    /// inverts): `fpu` (the saved FPU/XSAVE state fits), `ins` (every instruction-set
    /// extension is here), `cpu` (all feature words equal), `all`, `none`. Default checks
    /// fpu,ins; a bare `--cpu-cap` means all.
    #[arg(long = "cpu-cap", value_name = "CAP", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub cpu_cap: Vec<String>,
    /// restore: run this command (after `--`) once the tree is restored, as the parent of
    /// the restored root (cryo becomes that command).
    #[arg(long = "exec-cmd")]
    pub exec_cmd: bool,
    /// The command of --exec-cmd.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// dump: freeze this cgroup (v1 freezer or v2 directory) while the tree is seized, so
    /// nothing in it forks or exits meanwhile; it is put back as it was afterwards.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// restore: sysctls this kernel lacks are skipped instead of failing the restore.
    #[arg(long = "weak-sysctls")]
    pub weak_sysctls: bool,
    /// restore: accepted; cryo has one mount engine (CRIU's mount-v2 behaviour).
    #[arg(long = "mntns-compat-mode")]
    pub mntns_compat_mode: bool,
    /// How the tree's network is locked from the freeze until the restored tree runs
    /// (packets dropped, never answered with a reset): nftables (the default: a table
    /// `inet cryo-PID`), iptables (a chain `cryo-PID`), or skip (also `none`).
    #[arg(long = "network-lock", value_name = "METHOD")]
    pub network_lock: Option<String>,
    /// Accepted: a uprobes area is an ordinary special mapping to cryo.
    #[arg(long = "allow-uprobes")]
    pub allow_uprobes: bool,

    /// Run as a non-root user, accepting the limits: cryo needs CAP_CHECKPOINT_RESTORE
    /// (a copy given file capabilities: `setcap cap_checkpoint_restore,cap_sys_ptrace+eip
    /// cryo`) and then does only what the kernel lets this user do (its own processes, no
    /// new namespaces but user ones, no TCP repair); anything more is refused by name before
    /// anything is touched. `check --unprivileged` says what works.
    #[arg(long = "unprivileged")]
    pub unprivileged: bool,

    // --- External resources.
    /// External resources. Mounts: at dump `mnt[MOUNTPOINT]:KEY` saves the mount at
    /// MOUNTPOINT (as the tree sees it) as external, without contents; at restore
    /// `mnt[KEY]:HOSTPATH` bind-mounts HOSTPATH there again; `mnt[]` (dump) saves every
    /// bind mount from outside the tree as external. Network: at dump `net[INODE]:KEY` saves
    /// a network namespace as external; at restore `veth[IN]:OUT[@BRIDGE]` makes the peer of
    /// veth IN in cryo's network namespace as OUT (added to BRIDGE), `macvlan[IN]:HOSTLINK`
    /// makes macvlan IN on HOSTLINK. `tty[RDEV:DEV]`: a terminal outside the tree (its fds
    /// come back through --inherit-fd). Other strings are kept, as CRIU keeps them, for
    /// whoever looks them up.
    #[arg(long = "external", value_name = "RES")]
    pub external: Vec<String>,

    // --- Special resources.
    /// dump: save established TCP connections (TCP repair mode; the peer does not notice:
    /// they are locked until the restore); restore: restore them. Without it, a connection
    /// makes the dump refuse, naming it.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// dump: drop the connections waiting in a listener's accept queue (their clients see
    /// a reset) instead of refusing.
    #[arg(long = "skip-in-flight")]
    pub skip_in_flight: bool,
    /// dump: do not save established TCP connections; restore: make them closed sockets.
    #[arg(long = "tcp-close")]
    pub tcp_close: bool,
    /// restore: the directory holding the root file system of a tree that had a mount
    /// namespace of its own. Its mounts (proc, sysfs, tmpfs with contents, devpts, binds...)
    /// are rebuilt on top of it in a new mount namespace, which the tree then lives in.
    #[arg(short = 'r', long = "root", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Use any path to a device file if the original one is missing (cryo reopens devices
    /// by their path).
    #[arg(long = "evasive-devices")]
    pub evasive_devices: bool,
    /// dump: a file whose name was removed while open but which has other names (hard
    /// links) gets a temporary name beside the old one (`link_remap.N`), through which the
    /// restore reopens the same file, then removes it. Without it such a file is refused.
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// dump: largest deleted-but-open file whose content is saved in the images (a "ghost
    /// file"), in bytes, or with a K, M or G suffix. Larger ones make the dump refuse.
    #[arg(long = "ghost-limit", value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub ghost_limit: u64,
    /// Accepted for compatibility: CRIU finds the data of a sparse ghost file with FIEMAP
    /// (`--ghost-fiemap`) or SEEK_DATA/SEEK_HOLE (`--no-ghost-fiemap`); cryo always uses
    /// SEEK_DATA/SEEK_HOLE, which finds the same data, and keeps the holes either way.
    #[arg(long = "ghost-fiemap")]
    pub ghost_fiemap: bool,
    /// Run FILE at every notification point (pre-dump, post-dump, pre-restore,
    /// post-restore, pre-resume, post-resume, ...) with CRTOOLS_SCRIPT_ACTION,
    /// CRTOOLS_IMAGE_DIR and CRTOOLS_INIT_PID set, as CRIU does. A script that fails aborts
    /// the operation (before the restored process runs). May be given several times.
    #[arg(long = "action-script", value_name = "FILE")]
    pub action_script: Vec<PathBuf>,
    /// The process is a shell job: allow it not to be a session leader; on restore it joins
    /// cryo's session and terminal.
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// dump: save the tree's POSIX, OFD and flock file locks and file leases (without it, a
    /// lock held by the tree fails the dump, as in CRIU); restore takes them again.
    /// Delegations and mandatory locks are refused.
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Plugin directory (cryo has no plugins; accepted).
    #[arg(short = 'L', long = "libdir", value_name = "PATH")]
    pub libdir: Option<PathBuf>,
    /// dump, pre-dump: how many seconds every thread of the tree may take to stop once
    /// seized (default 10, as CRIU). A thread that cannot stop — a parent in vfork() whose
    /// child was frozen with it, an endless uninterruptible sleep — fails the dump by name
    /// after that, and the tree runs on. dump, pre-dump --page-server: also how long the page
    /// server may make no progress (default 60). migrate: also how long any wait for the
    /// destination may take while the tree is frozen (default 10; past it the tree runs on
    /// here). page-server, receive: how long a connected peer may send nothing (default 60).
    #[arg(long = "timeout", value_name = "N")]
    pub timeout: Option<u32>,
    /// Accepted for compatibility: CRIU's inode-to-path map for notify watches. cryo finds
    /// watched files through their file handles (`open_by_handle_at`) whatever is given.
    #[arg(long = "force-irmap")]
    pub force_irmap: bool,
    /// Accepted: a hint for the inotify path search cryo does not need.
    #[arg(long = "irmap-scan-path", value_name = "PATH")]
    pub irmap_scan_path: Vec<String>,
    /// cgroups: at restore, how to move the tasks back into their saved cgroups: ignore,
    /// none (the cgroups must exist), props (and set their saved limits), soft (create the
    /// missing ones; the default, also without this option), full (create missing ones and
    /// set every limit), strict (refuse existing ones). At dump, `ignore` saves no cgroup
    /// directory (memberships are always saved).
    #[arg(long = "manage-cgroups", value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "soft")]
    pub manage_cgroups: Option<String>,
    /// restore: put the saved cgroup tree of controller CTRL (of every hierarchy without
    /// CTRL; an empty CTRL is cgroup v2) under PATH instead of where it was; dump: accepted
    /// (cryo saves the directories from the tasks' own cgroups down). May be repeated.
    #[arg(long = "cgroup-root", value_name = "[CTRL:]PATH")]
    pub cgroup_root: Vec<String>,
    /// A directory where the cgroup hierarchies are already mounted, one per subdirectory
    /// (CRIU's yard: `cpu,cpuacct`, `zdtmtst` for `name=zdtmtst`, `unified` for v2; relative
    /// to the work directory): cryo uses those mounts first instead of mounting a hierarchy
    /// it does not find mounted.
    #[arg(long = "cgroup-yard", value_name = "PATH")]
    pub cgroup_yard: Option<String>,
    /// dump: ignore this mount point (and what is mounted below it) when saving the mount
    /// namespace; it is not restored.
    #[arg(long = "skip-mnt", value_name = "PATH")]
    pub skip_mnt: Vec<String>,
    /// Mounts of these file systems (comma-separated names, or `all`) are saved as
    /// `mount(source, point, type, options)` and mounted so again at restore.
    #[arg(long = "enable-fs", value_name = "FSNAMES")]
    pub enable_fs: Vec<String>,
    /// Allow mounts shared with mounts outside the tree (their peer group is not kept).
    #[arg(long = "enable-external-sharing")]
    pub enable_external_sharing: bool,
    /// Allow mounts that are slaves of mounts outside the tree (restored as private).
    #[arg(long = "enable-external-masters")]
    pub enable_external_masters: bool,
    /// restore: `fd[N]:KEY`: give the restored tree cryo's fd N wherever it had the object
    /// KEY. Supported keys: `pipe:[INODE]` (every fd that was that pipe at dump, either end),
    /// and the key of an external namespace (`--external net[INO]:KEY` at dump): N is a
    /// namespace fd to join.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    pub inherit_fd: Vec<String>,
    /// Older spelling of mount externals: at dump MOUNTPOINT:KEY, at restore KEY:HOSTPATH;
    /// `auto` (dump) saves every bind mount from outside the tree as external.
    #[arg(short = 'M', long = "ext-mount-map", value_name = "A:B")]
    pub ext_mount_map: Vec<String>,
    /// dump: `net` saves a private network namespace as empty (not its devices); restore
    /// then gives the tree a new, empty one.
    #[arg(long = "empty-ns", value_name = "NS")]
    pub empty_ns: Vec<String>,
    /// restore: the peer of veth IN (inside the tree's network namespace) is made in cryo's
    /// network namespace as OUT, added to BRIDGE if given. Same as --external
    /// 'veth[IN]:OUT[@BRIDGE]'.
    #[arg(long = "veth-pair", value_name = "IN=OUT[@BRIDGE]")]
    pub veth_pair: Vec<String>,
    /// restore: join an existing namespace instead of creating one: `net:PATH` or `net:PID`
    /// (e.g. /run/netns/NAME).
    #[arg(short = 'J', long = "join-ns", value_name = "NS:PATH")]
    pub join_ns: Vec<String>,
    /// restore: the file validation method (filesize or buildid); cryo reopens files by
    /// path and warns when one shrank.
    #[arg(long = "file-validation", value_name = "METHOD")]
    pub file_validation: Option<String>,
    /// restore: accepted; cryo does not check file permissions against the images.
    #[arg(long = "skip-file-rwx-check")]
    pub skip_file_rwx_check: bool,
    /// dump: accept a unix socket whose peer is outside the tree when that peer is a named
    /// datagram socket (e.g. /dev/log); restore connects it to that name again. CRIU's
    /// optional `=INODE` is accepted too.
    #[arg(short = 'x', long = "ext-unix-sk", value_name = "INODE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub ext_unix_sk: Vec<String>,
    /// Close this fd before anything else.
    #[arg(long = "close", value_name = "FD")]
    pub close: Vec<i32>,
    /// restore: keep the pty master made for a slave whose master was not in the dumped tree
    /// (cryo holds it while it waits) instead of leaving the slave hung up (cryo's; CRIU has
    /// this over RPC).
    #[arg(long = "orphan-pts-master")]
    pub orphan_pts_master: bool,

    // --- Check.
    /// check: one feature (CRIU's names: mnt_id, timens, external_net_ns, uffd-noncoop,
    /// mem_dirty_track, ...; `list` lists them).
    #[arg(long = "feature", value_name = "NAME")]
    pub feature: Option<String>,
    /// check: also the features needed only in specific cases.
    #[arg(long = "extra")]
    pub extra: bool,
    /// check: also experimental features.
    #[arg(long = "experimental")]
    pub experimental: bool,

    // --- Logging.
    /// Log file, relative to the work directory (default: stderr).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Accepted (each process logs into the same file).
    #[arg(long = "log-pid")]
    pub log_pid: bool,
    /// Log level 0..4 (0 none, 1 errors, 2 warnings (default), 3 info, 4 debug). Also -v,
    /// -vv, -v4.
    #[arg(short = 'v', long = "verbosity", value_name = "N", default_value_t = 2, require_equals = true, num_args = 0..=1, default_missing_value = "3")]
    pub verbosity: u32,
    /// Print dump/restore statistics.
    #[arg(long = "display-stats")]
    pub display_stats: bool,
    /// Print a machine-readable JSON summary on stdout (cryo's).
    #[arg(long)]
    pub json: bool,
    /// migrate: the destination, `ADDR:PORT` of a `cryo receive`.
    #[arg(long = "to", value_name = "ADDR:PORT")]
    pub to: Option<String>,
    /// migrate: at most N pre-copy rounds before the final freeze (default 8).
    #[arg(long = "max-rounds", value_name = "N")]
    pub max_rounds: Option<u32>,

    // --- Memory dumping.
    /// pre-dump mode (splice or read); accepted (cryo always copies after the tree runs
    /// again, as `read` does).
    #[arg(long = "pre-dump-mode", value_name = "MODE")]
    pub pre_dump_mode: Option<String>,
    /// Track the pages the tree writes from now on, for a later incremental dump (implied by
    /// `pre-dump`).
    #[arg(long = "track-mem")]
    pub track_mem: bool,
    /// The images directory of the previous step of an incremental dump (relative to the
    /// images directory, as CRIU takes it): its `parent` link.
    #[arg(long = "prev-images-dir", value_name = "DIR")]
    pub prev_images_dir: Option<String>,
    /// dump, pre-dump: write the pages images compressed with zstd (`pages-N.img.zst`, cryo's
    /// own; `zstd -d` turns one back into CRIU's `pages-N.img`). CRIU cannot restore such a
    /// dump; `cryo restore` reads both.
    #[arg(long = "compress")]
    pub compress: bool,

    /// Lazy restore: `restore` leaves private anonymous memory to the `lazy-pages` daemon,
    /// which brings each page on its first touch; `dump` keeps those pages and serves them on
    /// `--port` to a `lazy-pages --page-server` until every one is taken; `receive` restores
    /// the migrated tree so, a `lazy-pages` daemon serving the received images.
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    // --- Page server.
    /// Send the pages to a page server (`--address`, `--port`) instead of writing them.
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// Page server address (the server's to listen on, the dump's to connect to).
    #[arg(long = "address", value_name = "ADDR")]
    pub address: Option<String>,
    /// Page server port.
    #[arg(long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// Page server socket (used only with a page server).
    #[arg(long = "ps-socket", value_name = "FD")]
    pub ps_socket: Option<String>,
    /// Write \0 to FD once ready (page server, lazy pages and service only).
    #[arg(long = "status-fd", value_name = "FD")]
    pub status_fd: Option<String>,
    /// TLS for the page server (used only with a page server).
    #[arg(long = "tls")]
    pub tls: bool,
    #[arg(long = "tls-cacert", value_name = "FILE", hide = true)]
    pub tls_cacert: Option<String>,
    #[arg(long = "tls-cacrl", value_name = "FILE", hide = true)]
    pub tls_cacrl: Option<String>,
    #[arg(long = "tls-cert", value_name = "FILE", hide = true)]
    pub tls_cert: Option<String>,
    #[arg(long = "tls-key", value_name = "FILE", hide = true)]
    pub tls_key: Option<String>,
    #[arg(long = "tls-no-cn-verify", hide = true)]
    pub tls_no_cn_verify: bool,
    /// Accepted: cryo has no deprecated features to turn on.
    #[arg(long = "deprecated")]
    pub deprecated: bool,

    // --- Configuration files (read before anything else; see `cli::config`).
    /// Read this configuration file (after the default ones, which it disables).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not read /etc/criu/default.conf and ~/.criu/default.conf.
    #[arg(long = "no-default-config")]
    pub no_default_config: bool,

    /// CRIU options cryo does not support yet (refused with a message).
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// CRIU's `parse_size`: the number (C's `atol`), times 1024, 1024² or 1024³ when a K, M or
/// G appears anywhere in the word.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim_start();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (bytes, or a number with K, M or G)"))?;
    let mult = if s.contains('K') {
        1 << 10
    } else if s.contains('M') {
        1 << 20
    } else if s.contains('G') {
        1 << 30
    } else {
        1
    };
    Ok(n * mult)
}

/// The mount pairs of `--external mnt[A]:B` and `--ext-mount-map A:B`: (mount point, key)
/// at dump, (key, host path) at restore; and whether the caller asked to auto-detect
/// external bind mounts (`--ext-mount-map auto`, `--external mnt[]`).
#[derive(Debug, Clone, Default)]
pub struct ExternalMounts {
    pub pairs: Vec<(String, String)>,
    pub auto: bool,
}

impl ExternalMounts {
    /// Mount point → key.
    pub fn dump_map(&self) -> std::collections::HashMap<String, String> {
        self.pairs.iter().cloned().collect()
    }

    /// `--root` and key → host path.
    pub fn restore_opts(&self, root: Option<PathBuf>) -> crate::kinds::mounts::MountOpts {
        crate::kinds::mounts::MountOpts {
            root,
            external: self
                .pairs
                .iter()
                .map(|(k, v)| (k.clone(), PathBuf::from(v)))
                .collect(),
            ..Default::default()
        }
    }
}

/// What an `--external` string is (CRIU's formats, `criu --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    /// `mnt[A]:B`.
    Mount(String, String),
    /// `mnt[]` or `mnt[]:FLAGS` (FLAGS `m`: external masters, `s`: external sharing).
    MountAuto(String),
    /// `net[INODE]:KEY`.
    Net(u64, String),
    /// `pid[INODE]:KEY`: the tree's PID namespace belongs to someone else (a pod's); the
    /// restore is given it to create the tree in (CRIU's `extRootPidNS`).
    Pid(u64, String),
    /// `tty[RDEV:DEV]`.
    Tty(String),
    /// `veth[IN]:OUT[@BRIDGE]` or `macvlan[IN]:HOSTLINK`: a link with a side outside the
    /// tree (`kinds::netns::LinkOpts`).
    Link,
    /// A kind cryo does not handle yet, with the reason.
    Refused(&'static str),
    /// Anything else: kept, as CRIU keeps it, and looked up by nobody (LXC passes
    /// `console:PATH` and `apparmor:PROFILE`).
    Other,
}

impl External {
    pub fn parse(s: &str) -> Result<External, String> {
        let typed = s
            .split_once('[')
            .filter(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase()));
        let Some((kind, rest)) = typed else {
            return Ok(External::Other);
        };
        let (id, val) = match rest.split_once(']') {
            Some((id, tail)) => (id, tail.strip_prefix(':')),
            None => {
                return Err(format!(
                    "--external {s}: expected TYPE[ID] or TYPE[ID]:VALUE"
                ))
            }
        };
        Ok(match kind {
            "mnt" if id.is_empty() => External::MountAuto(val.unwrap_or("").to_string()),
            "mnt" => match val.filter(|v| !v.is_empty()) {
                Some(v) => External::Mount(id.to_string(), v.to_string()),
                None => return Err(format!("--external {s}: expected mnt[A]:B")),
            },
            "net" => match (id.parse::<u64>(), val.filter(|v| !v.is_empty())) {
                (Ok(ino), Some(k)) => External::Net(ino, k.to_string()),
                _ => return Err(format!("--external {s}: expected net[INODE]:KEY")),
            },
            "tty" => External::Tty(id.to_string()),
            "dev" => {
                External::Refused("external block device mounts (dev[..]) are not implemented yet")
            }
            "file" => External::Refused("external files (file[..]) are not implemented yet"),
            "unix" => External::Refused("external unix sockets (unix[..]) are not implemented yet"),
            "pid" => match (id.parse::<u64>(), val.filter(|v| !v.is_empty())) {
                (Ok(ino), Some(k)) => External::Pid(ino, k.to_string()),
                _ => return Err(format!("--external {s}: expected pid[INODE]:KEY")),
            },
            "veth" | "macvlan" => {
                crate::kinds::netns::LinkOpts::default().add_external(s)?;
                External::Link
            }
            _ => External::Other,
        })
    }
}

impl Opts {
    /// `--cpu-cap` as `kinds::cpuinfo` bits (0 without the option: no cpuinfo image).
    pub fn cpu_cap_bits(&self) -> Result<u32, String> {
        Ok(crate::kinds::cpuinfo::parse_cap(&self.cpu_cap)?.unwrap_or(0))
    }

    /// The checks of `cpuinfo check`: CRIU's default (fpu, ins) without `--cpu-cap`, all of
    /// them for `none`.
    pub fn cpu_checks(&self) -> Result<u32, String> {
        use crate::kinds::cpuinfo::{CAP_ALL, CAP_DEFAULT};
        Ok(match crate::kinds::cpuinfo::parse_cap(&self.cpu_cap)? {
            None => CAP_DEFAULT,
            Some(0) => CAP_ALL,
            Some(c) => c & CAP_ALL,
        })
    }

    /// The socket options (`--tcp-established`, `--tcp-close`, `--skip-in-flight`,
    /// `--ext-unix-sk`).
    pub fn sock_opts(&self) -> crate::kinds::files::SockOpts {
        crate::kinds::files::SockOpts {
            tcp_established: self.tcp_established,
            tcp_close: self.tcp_close,
            skip_in_flight: self.skip_in_flight,
            ext_unix_sk: !self.ext_unix_sk.is_empty(),
        }
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

    /// Every `--external`, parsed.
    pub fn externals(&self) -> Result<Vec<External>, String> {
        self.external.iter().map(|e| External::parse(e)).collect()
    }

    /// Parses the mount externals (`--external mnt[..]`, `--ext-mount-map`).
    pub fn mounts(&self) -> Result<ExternalMounts, String> {
        let mut out = ExternalMounts::default();
        for e in self.externals()? {
            match e {
                External::Mount(a, b) => out.pairs.push((a, b)),
                External::MountAuto(_) => out.auto = true,
                _ => {}
            }
        }
        for m in &self.ext_mount_map {
            if m == "auto" {
                out.auto = true;
                continue;
            }
            match m.split_once(':') {
                Some((a, b)) => out.pairs.push((a.to_string(), b.to_string())),
                None => return Err(format!("invalid argument for --ext-mount-map: {m}")),
            }
        }
        Ok(out)
    }

    /// `--external net[INO]:KEY`: network namespace inode → key.
    pub fn net_externals(&self) -> Result<std::collections::HashMap<u64, String>, String> {
        Ok(self
            .externals()?
            .into_iter()
            .filter_map(|e| match e {
                External::Net(i, k) => Some((i, k)),
                _ => None,
            })
            .collect())
    }

    /// `--external pid[INO]:KEY`: PID namespaces (by inode) saved as external.
    pub fn pid_externals(&self) -> Result<std::collections::HashMap<u64, String>, String> {
        Ok(self
            .externals()?
            .into_iter()
            .filter_map(|e| match e {
                External::Pid(i, k) => Some((i, k)),
                _ => None,
            })
            .collect())
    }

    /// `--empty-ns net` (the only kind CRIU accepts).
    pub fn empty_net(&self) -> Result<bool, String> {
        for ns in &self.empty_ns {
            if ns != "net" {
                return Err(format!("Unsupported empty namespace: {ns}"));
            }
        }
        Ok(!self.empty_ns.is_empty())
    }

    /// `--join-ns KIND:PATH` or `KIND:PID` for net, ipc, uts, mnt and time (CRIU's user is
    /// refused).
    pub fn join(&self) -> Result<crate::kinds::ns::NsJoin, String> {
        let mut j = crate::kinds::ns::NsJoin::default();
        for s in &self.join_ns {
            let Some((ns, rest)) = s.split_once(':') else {
                return Err(format!("invalid argument for --join-ns: {s}"));
            };
            let file = rest.split(',').next().unwrap_or("");
            let path = || {
                if file.chars().all(|c| c.is_ascii_digit()) {
                    PathBuf::from(format!("/proc/{file}/ns/{ns}"))
                } else {
                    PathBuf::from(file)
                }
            };
            match ns {
                "net" | "ipc" | "uts" | "mnt" | "time" if file.is_empty() => {
                    return Err(format!("invalid argument for --join-ns: {s}"))
                }
                "net" => j.net = Some(path()),
                "ipc" => j.ipc = Some(path()),
                "uts" => j.uts = Some(path()),
                "mnt" => j.mnt = Some(path()),
                "time" => j.time = Some(path()),
                _ => {
                    return Err(format!(
                        "--join-ns {s}: cryo joins network, IPC, UTS, mount and time namespaces (net:, ipc:, uts:, mnt:, time:PATH); a PID namespace is given with --external pid[INO]:KEY and --inherit-fd fd[N]:KEY; a user namespace cannot be joined yet"
                    ))
                }
            }
        }
        Ok(j)
    }

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

    /// `--enable-fs` values, split at commas.
    pub fn enabled_fs(&self) -> Vec<String> {
        self.enable_fs
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The mount options of a dump: externals, auto-detection, extra file systems,
    /// skipped mount points, external sharing and masters.
    pub fn mount_policy(&self) -> Result<crate::kinds::mounts::MountPolicy, String> {
        let m = self.mounts()?;
        let (mut sharing, mut masters) =
            (self.enable_external_sharing, self.enable_external_masters);
        for e in self.externals()? {
            if let External::MountAuto(flags) = e {
                sharing |= flags.contains('s');
                masters |= flags.contains('m');
            }
        }
        Ok(crate::kinds::mounts::MountPolicy {
            external: m.dump_map(),
            auto_external: m.auto,
            enable_fs: self.enabled_fs(),
            skip: self.skip_mnt.clone(),
            external_sharing: sharing,
            external_masters: masters,
        })
    }

    /// What CRIU checks once the options are read (`check_options`, `crtools.c`), for
    /// command `cmd`. Errors are CRIU's.
    pub fn check(&self, cmd: &str) -> Result<(), String> {
        if let Some((opt, why)) = self.unsupported.first() {
            return Err(format!(
                "option --{opt} is not supported by cryo yet: {why}"
            ));
        }
        if self.restore_sibling && !self.restore_detached && cmd == "restore" {
            return Err("--restore-sibling only makes sense with --restore-detached".into());
        }
        if self.mntns_compat_mode && cmd != "restore" {
            return Err("Option --mntns-compat-mode is only valid on restore".into());
        }
        if !self.inherit_fd.is_empty() && cmd != "restore" {
            return Err("--inherit-fd is restore-only option".into());
        }
        if self.exec_cmd {
            if cmd != "restore" {
                return Err("--exec-cmd is available for the restore command only".into());
            }
            if self.restore_detached {
                return Err("--restore-detached and --exec-cmd cannot be used together".into());
            }
            if self.command.is_empty() {
                return Err("--exec-cmd requires a command".into());
            }
        }
        if let Some(t) = self.tree {
            if t <= 0 {
                return Err(format!("invalid argument for --tree: {t}"));
            }
        }
        if let Some(m) = self.pre_dump_mode.as_deref() {
            if m != "splice" && m != "read" {
                return Err("Unable to parse value of --pre-dump-mode".into());
            }
        }
        if let Some(m) = self.network_lock.as_deref() {
            if !["iptables", "nftables", "skip", "none"].contains(&m) {
                return Err(format!("Invalid value for --network-lock: {m}"));
            }
        }
        if let Some(m) = self.file_validation.as_deref() {
            if m != "filesize" && m != "buildid" {
                return Err(format!("Unknown file validation method `{m}' selected"));
            }
        }
        self.cpu_cap_bits()?;
        if let Some(p) = self.port.as_deref() {
            if p.trim().parse::<u16>().map_or(true, |n| n == 0) {
                return Err(format!("invalid argument for --port: {p}"));
            }
        }
        if let Some(f) = self.status_fd.as_deref() {
            if f.trim().parse::<i32>().is_err() {
                return Err("Unable to parse a value of --status-fd".into());
            }
        }
        for v in &self.veth_pair {
            if !v.contains('=') {
                return Err(format!("invalid argument for --veth-pair: {v}"));
            }
        }
        self.links()?;
        self.cgroup_mode()?;
        crate::kinds::cgroup::CgOpts::parse_roots(&self.cgroup_root)?;
        self.mounts()?;
        self.empty_net()?;
        self.join()?;
        if cmd == "restore" {
            self.inherit_fds()?;
        }
        for e in self.externals()? {
            if let External::Refused(why) = e {
                return Err(format!("--external: {why}"));
            }
        }
        Ok(())
    }
}

macro_rules! unsupported_opts {
    ($($field:ident : $ty:ty = $long:literal $(short $short:literal)?, $why:literal;)*) => {
        /// CRIU options that ask for what cryo cannot do yet.
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
    auto_dedup: bool = "auto-dedup", "deduplication against the parent images (pre-dump chains) is not implemented yet: the parent's pages stay";
    lsm_profile: Option<String> = "lsm-profile", "LSM profiles are not saved or applied yet";
    lsm_mount_context: Option<String> = "lsm-mount-context", "LSM mount contexts are not applied yet";
    stream: bool = "stream", "image streaming is not implemented yet";
    cgroup_props: Option<String> = "cgroup-props", "cryo saves a fixed set of cgroup properties";
    cgroup_props_file: Option<String> = "cgroup-props-file", "cryo saves a fixed set of cgroup properties";
    cgroup_dump_controller: Vec<String> = "cgroup-dump-controller", "cryo saves every hierarchy the tree is in";
}

/// The commands CRIU knows (`crtools.c`), plus cryo's `show`.
const COMMANDS: &[&str] = &[
    "dump",
    "pre-dump",
    "restore",
    "lazy-pages",
    "check",
    "page-server",
    "service",
    "swrk",
    "dedup",
    "exec",
    "show",
    "cpuinfo",
    "migrate",
    "receive",
];

/// A command line that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Getopt(#[from] getopt::GetoptError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Clap(String),
}

/// What the command line asks for.
pub enum Invocation {
    /// Print this help (the command's, if one was named) and exit 0.
    Help(Option<String>),
    /// Print the version and exit 0.
    Version,
    /// Run.
    Run(Box<Run>),
}

/// A command to run, with its options resolved.
pub struct Run {
    pub cli: Cli,
    /// The command's name as given (`dump`, `restore`...).
    pub command: String,
    /// The configuration files that were read, in order.
    pub config_files: Vec<PathBuf>,
}

/// The options of the configuration files read before `argv` (CRIU's order), and the files.
pub fn config_events(argv: &[String]) -> Result<(Vec<Event>, Vec<PathBuf>), CliError> {
    // CRIU's pre_parse: only the command line's own words count here.
    let mut no_default = false;
    let mut cfg: Option<String> = None;
    for (i, a) in argv.iter().enumerate() {
        if a == "--no-default-config" {
            no_default = true;
        } else if a == "--config" {
            cfg = argv.get(i + 1).cloned();
            no_default = true;
        } else if let Some(f) = a.strip_prefix("--config=") {
            cfg = Some(f.to_string());
            no_default = true;
        }
    }
    let mut events = Vec::new();
    let mut read = Vec::new();
    for path in config::sources(no_default, cfg.as_deref()) {
        if let Some(ev) = config::read(&path)? {
            events.extend(ev);
            read.push(path);
        }
    }
    Ok((events, read))
}

/// Reads the configuration files and `argv` (program name first) as CRIU does.
pub fn parse(argv: &[String]) -> Result<Invocation, CliError> {
    let args = argv.get(1..).unwrap_or(&[]);
    if let Some(own) = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .filter(|c| OWN_COMMANDS.contains(&c.as_str()))
    {
        return parse_own(argv, own);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let cmd = getopt::tokenize(args)
            .ok()
            .and_then(|p| p.operands.first().cloned());
        return Ok(Invocation::Help(cmd));
    }
    let (mut events, config_files) = config_events(args)?;
    let cmdline = getopt::tokenize(args)?;
    events.extend(cmdline.events);
    let resolved = Resolved::fold(&events);
    if resolved.version {
        return Ok(Invocation::Version);
    }
    if resolved.help {
        return Ok(Invocation::Help(cmdline.operands.first().cloned()));
    }
    if resolved.deprecated_ms {
        return Err(CliError::Usage(
            "--ms is deprecated; see \"Check options\" of criu --help".into(),
        ));
    }
    let mut operands = cmdline.operands.into_iter();
    let Some(command) = operands.next() else {
        return Err(CliError::Usage(
            "command is required (dump, restore, show, inspect, diff, check, ...; see cryo --help)"
                .into(),
        ));
    };
    if !COMMANDS.contains(&command.as_str()) {
        return Err(CliError::Usage(format!("unknown command: {command}")));
    }
    let rest: Vec<String> = operands.collect();
    let exec_cmd = resolved.flags.get("exec-cmd") == Some(&true);
    let wants = match command.as_str() {
        "swrk" | "show" | "cpuinfo" => 1,
        "restore" if exec_cmd => usize::MAX,
        _ => 0,
    };
    if rest.len() > wants || (wants == 1 && rest.is_empty()) {
        return Err(CliError::Usage(if wants == 1 {
            match command.as_str() {
                "swrk" => "Usage: criu swrk <fd>".to_string(),
                "cpuinfo" => "cpuinfo requires an action: dump or check".to_string(),
                _ => "show needs an image file".to_string(),
            }
        } else {
            format!(
                "excessive parameter{} for command {command}",
                if rest.len() > 1 { "s" } else { "" }
            )
        }));
    }
    let mut canon = vec![argv.first().cloned().unwrap_or_else(|| "cryo".into())];
    canon.push(command.clone());
    match command.as_str() {
        "swrk" | "show" => {
            canon.extend(rest);
        }
        _ => {
            if command == "cpuinfo" {
                canon.extend(rest.iter().cloned());
            }
            canon.extend(resolved.to_args());
            if command == "restore" && exec_cmd {
                canon.push("--".into());
                canon.extend(rest);
            }
        }
    }
    let matches = Cli::command()
        .try_get_matches_from(&canon)
        .map_err(|e| CliError::Clap(e.render().to_string().trim().to_string()))?;
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| CliError::Clap(e.render().to_string().trim().to_string()))?;
    Ok(Invocation::Run(Box::new(Run {
        cli,
        command,
        config_files,
    })))
}

/// A command of cryo's own (`OWN_COMMANDS`), parsed by clap alone.
fn parse_own(argv: &[String], command: &str) -> Result<Invocation, CliError> {
    use clap::error::ErrorKind;
    let matches = match Cli::command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::DisplayHelp => {
            return Ok(Invocation::Help(Some(command.to_string())))
        }
        Err(e) => return Err(CliError::Clap(e.render().to_string().trim().to_string())),
    };
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| CliError::Clap(e.render().to_string().trim().to_string()))?;
    if cli.version {
        return Ok(Invocation::Version);
    }
    Ok(Invocation::Run(Box::new(Run {
        cli,
        command: command.to_string(),
        config_files: Vec::new(),
    })))
}

/// Where a command line that cannot be parsed would have logged (`-o`, relative to `-W`,
/// else `-D`, as CRIU resolves it), read from the words as far as they can be read, so the
/// error reaches the log file a caller such as zdtm reads.
pub fn log_file_of(argv: &[String]) -> Option<PathBuf> {
    let args = argv.get(1..).unwrap_or(&[]);
    let mut events: Vec<Event> = config_events(args).map(|(e, _)| e).unwrap_or_default();
    // Word by word, skipping what getopt refuses.
    let mut i = 0;
    while i < args.len() {
        let mut end = (i + 1).min(args.len());
        // An option with a separate value takes the next word along.
        if let Ok(p) = getopt::tokenize(&args[i..end]) {
            events.extend(p.events);
        } else if end < args.len() {
            end += 1;
            if let Ok(p) = getopt::tokenize(&args[i..end]) {
                events.extend(p.events);
            } else {
                end -= 1;
            }
        }
        i = end;
    }
    let r = Resolved::fold(&events);
    let log = PathBuf::from(r.value("log-file")?);
    if log.is_absolute() {
        return Some(log);
    }
    let base = r
        .value("work-dir")
        .or_else(|| r.value("images-dir"))
        .unwrap_or(".");
    Some(Path::new(base).join(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: &[&str]) -> Box<Run> {
        // Keep the machine's configuration files out of unit tests.
        let mut argv = vec!["criu".to_string(), "--no-default-config".to_string()];
        argv.extend(v.iter().map(|s| s.to_string()));
        match parse(&argv) {
            Ok(Invocation::Run(r)) => r,
            Ok(_) => panic!("not a run"),
            Err(e) => panic!("{e}"),
        }
    }

    fn opts(v: &[&str]) -> Opts {
        match run(v).cli.cmd {
            Some(Cmd::Dump(o) | Cmd::Restore(o) | Cmd::Check(o) | Cmd::PreDump(o)) => o,
            _ => panic!(),
        }
    }

    fn err(v: &[&str]) -> String {
        let mut argv = vec!["criu".to_string(), "--no-default-config".to_string()];
        argv.extend(v.iter().map(|s| s.to_string()));
        match parse(&argv) {
            Err(e) => e.to_string(),
            Ok(Invocation::Run(r)) => match r.cli.cmd {
                Some(Cmd::Dump(o) | Cmd::Restore(o) | Cmd::Check(o)) => o
                    .check(&r.command)
                    .err()
                    .unwrap_or_else(|| panic!("accepted: {v:?}")),
                _ => panic!("accepted: {v:?}"),
            },
            Ok(_) => panic!(),
        }
    }

    #[test]
    fn every_criu_option_reaches_clap() {
        for spec in getopt::OPTIONS {
            if matches!(
                spec.kind,
                getopt::Kind::Help | getopt::Kind::Version | getopt::Kind::Deprecated
            ) {
                continue;
            }
            let arg = match spec.arg {
                getopt::HasArg::No => format!("--{}", spec.long),
                _ => format!("--{}=1", spec.long),
            };
            let mut argv = vec!["criu".to_string(), "--no-default-config".to_string()];
            argv.extend(["dump".to_string(), arg.clone()]);
            assert!(
                matches!(parse(&argv), Ok(Invocation::Run(_))),
                "{arg}: {:?}",
                parse(&argv).err()
            );
            if spec.kind == getopt::Kind::Bool {
                argv[3] = format!("--no-{}", spec.long);
                assert!(
                    matches!(parse(&argv), Ok(Invocation::Run(_))),
                    "--no-{}",
                    spec.long
                );
            }
        }
    }

    #[test]
    fn criu_spellings() {
        let d = opts(&[
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
        assert_eq!(d.tree, Some(42));
        assert!(d.leave_running);
        assert_eq!(d.verbosity, 4);
        assert_eq!(d.log_file.unwrap(), PathBuf::from("d.log"));
        // Options before the command, as getopt permutes them.
        let d = opts(&[
            "-vvv",
            "--tree=7",
            "dump",
            "--images-dir",
            "/x",
            "-R",
            "--timeout",
            "10",
        ]);
        assert_eq!((d.tree, d.verbosity, d.leave_running), (Some(7), 5, true));
        assert_eq!(d.images_dir, PathBuf::from("/x"));
        let k = opts(&[
            "check",
            "--no-default-config",
            "-verbosity=0",
            "--feature",
            "mnt_id",
        ]);
        assert_eq!(k.verbosity, 0);
        assert_eq!(k.feature.as_deref(), Some("mnt_id"));
        let r = opts(&["restore", "-D", "/x", "-d", "--pidfile", "p", "-j", "-v"]);
        assert!(r.restore_detached && r.shell_job);
        assert_eq!(r.verbosity, 3);
        let r = opts(&["restore", "--daemon", "-S"]);
        assert!(r.restore_detached && r.restore_sibling);
    }

    #[test]
    fn zdtm_command_lines() {
        let d = opts(&[
            "dump",
            "--no-default-config",
            "--log-file",
            "dump.log",
            "--images-dir",
            "dump/zdtm/static/env00/51/1",
            "--verbosity=4",
            "--tree",
            "51",
            "--pidfile",
            "/x/env00.pid",
            "--timeout",
            "10",
            "--pre-dump-mode",
            "splice",
        ]);
        assert_eq!((d.tree, d.verbosity, d.timeout), (Some(51), 4, Some(10)));
        assert!(d.check("dump").is_ok());
        let r = opts(&[
            "restore",
            "--no-default-config",
            "--log-file",
            "restore.log",
            "--images-dir",
            "d",
            "--verbosity=4",
            "--pidfile",
            "p.pid",
            "--root",
            "/tmp/criu-root-x/root/root",
            "--external",
            "mnt[ZDTM_DEV]:/tmp/criu-root-x/dev",
            "--restore-detached",
        ]);
        assert!(r.check("restore").is_ok());
        assert_eq!(
            r.mounts().unwrap().pairs,
            [("ZDTM_DEV".to_string(), "/tmp/criu-root-x/dev".to_string())]
        );
    }

    #[test]
    fn lxc_command_lines() {
        let d = opts(&[
            "dump",
            "--tcp-established",
            "--file-locks",
            "--link-remap",
            "--manage-cgroups=full",
            "--ext-mount-map",
            "auto",
            "--enable-external-sharing",
            "--enable-external-masters",
            "--enable-fs",
            "hugetlbfs",
            "--enable-fs",
            "tracefs",
            "-D",
            "/c",
            "-o",
            "/c/dump.log",
            "--cgroup-root",
            "name=systemd:/lxc.payload.ct1",
            "--cgroup-root",
            "pids:/lxc.payload.ct1",
            "--ext-mount-map",
            "/sys/kernel/security:sys/kernel/security",
            "-t",
            "20211",
            "--skip-in-flight",
            "--freeze-cgroup",
            "/sys/fs/cgroup/freezer//lxc.payload.ct1",
            "--ext-mount-map",
            "/dev/console:console",
            "--external",
            "tty[8800:1a]",
            "--force-irmap",
            "--ghost-limit",
            "1024",
            "--leave-running",
        ]);
        d.check("dump").unwrap();
        let p = d.mount_policy().unwrap();
        assert!(p.auto_external && p.external_sharing && p.external_masters);
        assert_eq!(p.enable_fs, ["hugetlbfs", "tracefs"]);
        assert_eq!(p.external["/dev/console"], "console");
        assert_eq!(d.ghost_limit, 1024);
        let r = opts(&[
            "restore",
            "--tcp-established",
            "--file-locks",
            "--link-remap",
            "--manage-cgroups=full",
            "--ext-mount-map",
            "auto",
            "--enable-external-sharing",
            "--enable-external-masters",
            "--enable-fs",
            "hugetlbfs",
            "--enable-fs",
            "tracefs",
            "-D",
            "/c",
            "-o",
            "/c/restore.log",
            "--cgroup-root",
            "name=systemd:/lxc.payload.ct1",
            "--ext-mount-map",
            "sys/kernel/security:/sys/kernel/security",
            "--root",
            "/usr/lib/x86_64-linux-gnu/lxc/rootfs",
            "--restore-detached",
            "--restore-sibling",
            "--ext-mount-map",
            "console:/dev/pts/0",
            "--external",
            "console:/dev/pts/0",
        ]);
        r.check("restore").unwrap();
        assert_eq!(
            r.cgroup_opts().unwrap().mode,
            crate::kinds::cgroup::Mode::Full
        );
    }

    #[test]
    fn unsupported_options_are_named() {
        assert!(err(&["dump", "-t", "1", "--stream"]).contains("--stream"));
        assert!(err(&["restore", "--external", "veth[eth0]"]).contains("veth[IFNAME]"));
        assert!(err(&["restore", "--veth-pair", "eth0"]).contains("--veth-pair"));
        assert!(err(&["dump", "-t", "1", "--cpu-cap=avx"]).contains("avx"));
        // Accepted now: they permit what cryo refuses object by object, or tune nothing.
        for extra in [
            "--tcp-established",
            "--tcp-close",
            "--skip-in-flight",
            "--link-remap",
            "--evasive-devices",
            "--ext-unix-sk",
            "--force-irmap",
            "--cpu-cap=fpu",
            "--cpu-cap=none",
            "--cpu-cap=^ins,cpu",
            "--cpu-cap",
            "--network-lock=skip",
            "--libdir=/nowhere",
        ] {
            opts(&["dump", "-t", "1", extra]).check("dump").unwrap();
        }
        // The socket options are CRIU's spellings.
        let o = opts(&[
            "dump",
            "-t",
            "1",
            "--tcp-established",
            "--skip-in-flight",
            "-x",
        ]);
        let s = o.sock_opts();
        assert!(s.tcp_established && s.skip_in_flight && s.ext_unix_sk && !s.tcp_close);
        // Links with a side outside the tree, both spellings.
        let r = opts(&[
            "restore",
            "--external",
            "veth[eth0]:v0@br0",
            "--veth-pair",
            "eth1=v1",
            "--external",
            "macvlan[mv0]:eth9",
            "--network-lock",
            "iptables",
        ]);
        r.check("restore").unwrap();
        let l = r.links().unwrap();
        assert_eq!(l.veth["eth0"], ("v0".to_string(), Some("br0".to_string())));
        assert_eq!(l.veth["eth1"], ("v1".to_string(), None));
        assert_eq!(l.macvlan["mv0"], "eth9");
        assert_eq!(r.network_lock(), Ok(crate::netlock::Method::Iptables));
        // --no- forms switch them off again.
        assert!(!opts(&["dump", "-t", "1", "--track-mem", "--no-track-mem"]).track_mem);
    }

    #[test]
    fn criu_errors() {
        assert!(err(&["dump", "--frob"]).contains("unrecognized option '--frob'"));
        assert!(err(&["restore", "-S"]).contains("--restore-sibling only makes sense"));
        assert!(err(&["dump", "--mntns-compat-mode"]).contains("only valid on restore"));
        assert!(err(&["dump", "--inherit-fd", "fd[1]:x"]).contains("restore-only"));
        assert!(err(&["dump", "--pre-dump-mode", "x"]).contains("--pre-dump-mode"));
        assert!(err(&["dump", "--empty-ns", "pid"]).contains("Unsupported empty namespace"));
        assert!(err(&["dump", "--ms"]).contains("deprecated"));
        assert!(err(&["dump", "extra"]).contains("excessive parameter for command dump"));
        assert!(err(&["frob"]).contains("unknown command: frob"));
        assert!(err(&["restore", "--exec-cmd"]).contains("requires a command"));
    }

    #[test]
    fn own_commands_are_not_rewritten() {
        let own = |v: &[&str]| {
            let argv: Vec<String> = std::iter::once("cryo")
                .chain(v.iter().copied())
                .map(String::from)
                .collect();
            match parse(&argv) {
                Ok(Invocation::Run(r)) => r,
                _ => panic!("{v:?}"),
            }
        };
        // A pattern that looks like a CRIU option reaches `inspect` as it is.
        let r = own(&["inspect", "--search", "-v", "/ckpt"]);
        let Some(Cmd::Inspect(i)) = r.cli.cmd else {
            panic!()
        };
        assert_eq!(i.search.as_deref(), Some("-v"));
        assert_eq!(i.path, PathBuf::from("/ckpt"));
        let r = own(&["diff", "--json", "/a", "/b"]);
        assert!(matches!(r.cli.cmd, Some(Cmd::Diff(d)) if d.json));
        let argv: Vec<String> = ["cryo", "man", "--help"].map(String::from).to_vec();
        assert!(matches!(parse(&argv), Ok(Invocation::Help(Some(c))) if c == "man"));
        // zdtm: --pidfile on every command, --no-default-config repeated.
        let d = opts(&["dump", "-t", "7", "--pidfile", "x.pid"]);
        assert_eq!(d.pidfile.as_deref(), Some(Path::new("x.pid")));
        let k = opts(&[
            "check",
            "--no-default-config",
            "--no-default-config",
            "--feature",
            "mnt_id",
        ]);
        assert_eq!(k.feature.as_deref(), Some("mnt_id"));
    }

    #[test]
    fn exec_cmd_takes_the_rest() {
        let r = opts(&[
            "restore",
            "--exec-cmd",
            "-D",
            "/x",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]);
        assert!(r.exec_cmd);
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
    }

    #[test]
    fn inherit_fd_parses() {
        let r = opts(&["restore", "--inherit-fd", "fd[1]:pipe:[42]"]);
        assert_eq!(r.inherit_fds().unwrap(), vec![("pipe:[42]".to_string(), 1)]);
        let r = opts(&["restore", "--inherit-fd", "1:pipe:[42]"]);
        assert!(r.inherit_fds().is_err());
    }

    #[test]
    fn externals() {
        use External::*;
        assert_eq!(
            External::parse("mnt[/a]:k").unwrap(),
            Mount("/a".into(), "k".into())
        );
        assert_eq!(External::parse("mnt[]").unwrap(), MountAuto(String::new()));
        assert_eq!(External::parse("mnt[]:sm").unwrap(), MountAuto("sm".into()));
        assert_eq!(
            External::parse("net[4026531840]:k").unwrap(),
            Net(4026531840, "k".into())
        );
        assert_eq!(
            External::parse("tty[8800:1a]").unwrap(),
            Tty("8800:1a".into())
        );
        assert_eq!(External::parse("console:/dev/pts/0").unwrap(), Other);
        assert_eq!(External::parse("apparmor:unconfined").unwrap(), Other);
        assert!(matches!(External::parse("unix[12]").unwrap(), Refused(_)));
        assert_eq!(External::parse("veth[eth0]:v0").unwrap(), Link);
        assert!(External::parse("macvlan[mv0]").is_err());
        assert!(External::parse("mnt[x]").is_err());
    }

    #[test]
    fn cgroup_options() {
        let r = opts(&["restore", "--manage-cgroups", "--cgroup-root", "cpu:/x"]);
        assert_eq!(r.manage_cgroups.as_deref(), Some("soft"));
        assert_eq!(r.cgroup_root, ["cpu:/x"]);
        let d = opts(&[
            "dump",
            "-t",
            "1",
            "--manage-cgroups=full",
            "--freeze-cgroup",
            "/f",
        ]);
        assert_eq!(d.cgroup_mode(), Ok(crate::kinds::cgroup::Mode::Full));
        assert_eq!(d.freeze_cgroup, Some(PathBuf::from("/f")));
    }

    #[test]
    fn sizes_like_criu() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn log_file_of_a_bad_command_line() {
        let v = |a: &[&str]| {
            let mut argv = vec!["criu".to_string(), "--no-default-config".to_string()];
            argv.extend(a.iter().map(|s| s.to_string()));
            log_file_of(&argv)
        };
        assert_eq!(
            v(&["dump", "--frob", "--log-file", "dump.log", "-D", "/img"]),
            Some(PathBuf::from("/img/dump.log"))
        );
        assert_eq!(
            v(&["dump", "-o", "d.log", "-W", "/w", "-D", "/img", "--bad=1"]),
            Some(PathBuf::from("/w/d.log"))
        );
        assert_eq!(
            v(&["dump", "-o", "/abs.log"]),
            Some(PathBuf::from("/abs.log"))
        );
        assert_eq!(v(&["dump", "--frob"]), None);
    }
}
