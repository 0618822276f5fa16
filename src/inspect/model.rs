//! The report `cryo inspect` builds, which is also its `--json` output. The shape is stable
//! (documented in docs/inspect.md; `format` names its version): fields are only added,
//! never renamed or retyped, within a version. Addresses are hex strings ("0x7ffd1000"),
//! sizes and counts are numbers, absent values are `null` or left out where noted.

use std::collections::BTreeMap;

use serde::Serialize;

use super::source::{Codec, Container, TarSummary};

/// The value of `format`.
pub const FORMAT: &str = "cryo-inspect/1";

/// A hex address for JSON.
pub fn hex(a: u64) -> String {
    format!("{a:#x}")
}

/// Everything `cryo inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub source: SourceInfo,
    pub summary: Summary,
    /// With `--ps`, `--fds`, `--mem` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<Process>>,
    /// With `--sockets` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<Socket>>,
    /// With `--fds` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipes: Option<Vec<Pipe>>,
    /// With `--fds` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttys: Option<Vec<Tty>>,
    /// With `--mounts` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    /// With `--mounts` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<Namespace>>,
    /// With `--mounts` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Cgroups>,
    /// A container runtime's checkpoint (podman, containerd), with `--container` or no
    /// section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    /// With `--search`/`--search-regex`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Search>,
    /// What could not be read, and why (never silently left out).
    pub notes: Vec<Note>,
}

/// What was opened.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub path: String,
    /// "directory" or "archive".
    pub kind: &'static str,
    /// Archives only: none, gzip or zstd.
    pub compression: Option<Codec>,
    /// none, podman or containerd.
    pub container: Container,
}

/// The overview printed first.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// "cryo 0.1.0" (from cryo-manifest.json) or "CRIU" (images without a manifest).
    pub tool: String,
    /// When the images were written (UTC, RFC 3339), and where that comes from.
    pub written: Option<String>,
    pub written_from: Option<String>,
    pub img_version: Option<u32>,
    pub root_pid: Option<u32>,
    pub processes: usize,
    pub threads: usize,
    pub zombies: usize,
    /// Image files and their total size (runtime files of a container archive excluded).
    pub images: usize,
    pub image_bytes: u64,
    /// Pages saved in the pages images of the processes (shared memory excluded).
    pub pages: u64,
    pub page_bytes: u64,
    /// From `stats-dump`.
    pub stats: Option<DumpStats>,
    /// cryo-manifest.json: number of files it lists.
    pub manifest_files: Option<usize>,
    /// Pre-dump chain: the `parent` directory this dump's unchanged pages are in.
    pub parent: Option<String>,
}

/// `stats-dump`, in microseconds and pages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DumpStats {
    pub freezing_us: u32,
    pub frozen_us: u32,
    pub memdump_us: u32,
    pub memwrite_us: u32,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
}

/// One process (thread group) of the tree.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// alive, stopped, zombie, dead, or unknown(N).
    pub state: String,
    /// For a stopped process: the signal that stopped it.
    pub stop_signal: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub root: Option<String>,
    /// Read from the saved memory (`null` when those pages are not in the checkpoint).
    pub argv: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub threads: Vec<Thread>,
    pub creds: Option<Creds>,
    /// disabled, strict or filter.
    pub seccomp: Option<String>,
    /// Namespace kind → id, as in ids-PID.img (`namespaces` describes them).
    pub ns: BTreeMap<String, u32>,
    /// The cgroup set of the main thread (`cgroups.sets`).
    pub cgroup_set: Option<u32>,
    /// With `--fds` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<Fd>>,
    /// With `--mem` or no section flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Thread {
    pub tid: u32,
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub groups: Vec<u32>,
    /// Effective capabilities, as a hex mask.
    pub cap_eff: String,
    pub no_new_privs: Option<bool>,
}

/// One open file descriptor.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fd {
    pub fd: u32,
    /// file, dir, chr, pipe, fifo, unix, inet, inet6, packet, netlink, eventfd, eventpoll,
    /// inotify, fanotify, signalfd, timerfd, tty, memfd, ns, tun, bpfmap, pidfd, ext, or
    /// unknown(N).
    pub kind: String,
    /// A path, or a description of the object and its peer ("pipe:[123] -> 4567:3").
    pub target: String,
    /// Open flags (O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_NONBLOCK, ...).
    pub flags: Vec<String>,
    pub cloexec: bool,
    /// File position, for files that have one.
    pub pos: Option<u64>,
    /// The id of the open file description (shared by fds of the same description).
    pub file_id: u32,
}

/// The address space of a process.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub vmas: Vec<Vma>,
    /// Sum of the VMA sizes.
    pub vm_bytes: u64,
    /// Pages whose content is in this checkpoint's pages image.
    pub pages_saved: u64,
    pub bytes_saved: u64,
    /// Pages left in the parent checkpoint (pre-dump chain).
    pub pages_in_parent: u64,
    /// Pages not saved, to be fetched lazily from a page server.
    pub pages_lazy: u64,
    pub brk: Option<String>,
    pub start_stack: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Vma {
    pub start: String,
    pub end: String,
    pub size: u64,
    /// "rwxp": read, write, execute, p(rivate) or s(hared).
    pub prot: String,
    /// heap, stack, anon, file, shmem, memfd, vdso, vvar, vsyscall, sysvipc, socket, aio.
    pub kind: String,
    /// The mapped file (or memfd name).
    pub path: Option<String>,
    /// Offset into the file, bytes.
    pub offset: u64,
    pub pages_saved: u64,
    pub pages_in_parent: u64,
    pub pages_lazy: u64,
}

/// Where a socket, pipe or tty end is held.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub fd: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Socket {
    /// The file id (as in `Fd.file_id`).
    pub id: u32,
    pub ino: Option<u32>,
    /// unix, inet, inet6, packet, netlink.
    pub family: String,
    /// stream, dgram, seqpacket, raw, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// listen, established, close, syn-sent, ... (TCP state names, as the kernel uses them
    /// for every family).
    pub state: String,
    /// The socket's name or address (unix: path or @abstract; inet: addr:port).
    pub local: Option<String>,
    /// The peer: its address, or for unix sockets the peer's inode.
    pub peer: Option<String>,
    pub peer_ino: Option<u32>,
    /// Bytes and packets queued for reading (sk-queues.img).
    pub queued_bytes: u64,
    pub queued_packets: u64,
    /// TCP: bytes in the send queue (tcp-stream-INO.img), not yet acknowledged.
    pub send_queue_bytes: Option<u64>,
    /// For a listener.
    pub backlog: Option<u32>,
    pub shutdown: Option<String>,
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pipe {
    /// The pipe's inode number.
    pub pipe_id: u32,
    /// pipe or fifo.
    pub kind: &'static str,
    /// FIFOs: the path.
    pub path: Option<String>,
    /// Bytes in the pipe at the checkpoint (pipes-data.img / fifo-data.img).
    pub queued_bytes: u64,
    pub readers: Vec<Holder>,
    pub writers: Vec<Holder>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tty {
    pub id: u32,
    /// pty, console, vt, ctty, ext, serial.
    #[serde(rename = "type")]
    pub kind: String,
    /// A pty's master or slave side ("-" for other ttys).
    pub side: String,
    pub index: Option<u32>,
    /// The session it is the controlling terminal of, and its foreground group.
    pub sid: u32,
    pub pgrp: u32,
    pub rows: Option<u32>,
    pub cols: Option<u32>,
    /// Bytes waiting (tty-data.img).
    pub queued_bytes: u64,
    pub holders: Vec<(Holder, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mount {
    pub ns: u32,
    pub mnt_id: u32,
    pub parent_id: u32,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
    /// The directory of the file system mounted there.
    pub root: String,
    pub options: String,
    /// --external key, for a mount saved without its content.
    pub external: Option<String>,
    pub shared: Option<u32>,
    pub master: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Namespace {
    /// mnt, net, pid, ipc, uts, time, user, cgroup.
    pub kind: String,
    pub id: u32,
    /// True when the checkpoint has an image of it (a namespace of the tree's own);
    /// false for the host's, which is not saved.
    pub saved: bool,
    pub pids: Vec<u32>,
    /// Depends on the kind: uts: hostname, domainname; net: devices, external; mnt:
    /// mounts; ipc: shm/sem/msg counts; time: monotonic/boottime offsets.
    pub details: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Cgroups {
    pub sets: Vec<CgroupSet>,
    /// The directories saved, with their properties.
    pub dirs: Vec<CgroupDir>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupSet {
    pub id: u32,
    /// Whether it is the set cryo/CRIU itself was in (`inventory.root_cg_set`).
    pub dumper: bool,
    pub pids: Vec<u32>,
    /// controller (or "" for cgroup v2) → path.
    pub paths: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupDir {
    pub controllers: String,
    pub path: String,
    pub properties: Vec<(String, String)>,
}

/// The container runtime's side of a checkpoint.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ContainerInfo {
    pub runtime: String,
    pub name: Option<String>,
    pub id: Option<String>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub created: Option<String>,
    /// containerd: the checkpoint's own image name, runtime and snapshotter.
    pub checkpoint_name: Option<String>,
    pub runtime_type: Option<String>,
    pub snapshotter: Option<String>,
    pub spec: Option<SpecSummary>,
    /// The OCI runtime spec as saved (spec.dump, or containerd's checkpoint config).
    pub oci_spec: Option<serde_json::Value>,
    /// The container's writable layer: podman's rootfs-diff.tar, containerd's rw layer.
    pub rootfs_diff: Option<TarSummary>,
    /// Files deleted from the image (podman's deleted.files).
    pub deleted_files: Vec<String>,
    /// podman: the content of /dev/shm (devshm-checkpoint.tar).
    pub dev_shm: Option<TarSummary>,
    /// podman: network.status as saved (`null` for `--network none`).
    pub network: Option<serde_json::Value>,
    /// Runtime files next to the images, with their sizes.
    pub files: Vec<(String, u64)>,
}

/// The parts of the OCI runtime spec people look for.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SpecSummary {
    pub oci_version: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub terminal: bool,
    pub hostname: Option<String>,
    pub root: Option<String>,
    pub root_readonly: bool,
    /// destination, type, source, options.
    pub mounts: Vec<(String, String, String, String)>,
    /// type, path.
    pub namespaces: Vec<(String, String)>,
    pub cgroups_path: Option<String>,
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    /// Default action and number of syscall rules.
    pub seccomp: Option<(String, usize)>,
    pub annotations: BTreeMap<String, String>,
}

/// `--search` / `--search-regex` results.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub pattern: String,
    pub regex: bool,
    pub hits: Vec<Hit>,
    /// Stopped after this many (`--max-hits`).
    pub truncated: bool,
    /// Bytes of saved memory searched.
    pub bytes_searched: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub pid: u32,
    pub comm: String,
    pub address: String,
    /// The VMA it is in: its kind and path, and the offset from the VMA's start.
    pub vma_start: String,
    pub mapping: String,
    pub offset: u64,
    /// The match, with non-printable bytes escaped.
    #[serde(rename = "match")]
    pub matched: String,
    /// Bytes around it, escaped the same way.
    pub context: String,
}

/// Something not read, or read only in part.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Note {
    /// The image, file or object.
    pub object: String,
    pub reason: String,
}
