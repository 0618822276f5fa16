//! `cryo inspect` and `cryo diff`: what a checkpoint holds, without restoring it.
//!
//! - `source`: opens an images directory, a podman or containerd checkpoint (directory or
//!   archive, plain/gzip/zstd tar), read in place.
//! - `collect`: decodes the images (with `image`'s framing and `pb` types) into a `Report`;
//!   `files` describes fds, pipes, sockets and ttys, `system` mounts, namespaces, cgroups.
//! - `mem`: the saved memory (pagemap + pages, parent chains): command lines, `--search`,
//!   `--dump-mem`, page hashes for `diff`.
//! - `runtime`: the container runtime's files (OCI spec via oci-spec, config, rootfs diff).
//! - `model`: the report, which is also the `--json` document (docs/inspect.md).
//! - `render`: the terminal view. `diff`: two checkpoints compared.

pub mod collect;
pub mod diff;
pub mod files;
pub mod mem;
pub mod model;
pub mod render;
pub mod runtime;
pub mod source;
pub mod system;

use std::path::{Path, PathBuf};

pub use collect::Loaded;
pub use model::Report;

/// Errors of `cryo inspect` / `cryo diff`: each names the file or object and the reason.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a checkpoint: {what}")]
    NotACheckpoint { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    Archive { path: PathBuf, what: String },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("process {pid} is not in this checkpoint (its processes: {pids})")]
    NoSuchPid { pid: u32, pids: String },
    #[error("process {pid}, address {addr:#x}: {what}")]
    Address { pid: u32, addr: u64, what: String },
    #[error("search pattern {0:?} is not a valid regular expression")]
    Pattern(String, #[source] regex::Error),
}

impl InspectError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            InspectError::NotACheckpoint { .. } => Some(
                "give an images directory (cryo/criu dump -D DIR), a podman checkpoint \
                 (`podman container checkpoint --export FILE`, or its checkpoint directory) or a \
                 containerd checkpoint exported with `ctr images export --skip-manifest-json FILE REF`; \
                 `cryo show FILE` decodes a single image"
                    .into(),
            ),
            InspectError::NoSuchPid { .. } => {
                Some("`cryo inspect --ps PATH` lists the processes".into())
            }
            InspectError::Address { .. } => {
                Some("`cryo inspect --mem --pid PID PATH` lists the mapped ranges".into())
            }
            _ => None,
        }
    }
}

/// Which parts of the report to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections {
    /// Process tree, command lines, environments, threads.
    pub ps: bool,
    /// fds, pipes, ttys.
    pub fds: bool,
    pub sockets: bool,
    /// Mounts, namespaces, cgroups.
    pub mounts: bool,
    /// VMAs and saved pages.
    pub mem: bool,
    /// The container runtime's side.
    pub container: bool,
}

impl Sections {
    pub const ALL: Sections = Sections {
        ps: true,
        fds: true,
        sockets: true,
        mounts: true,
        mem: true,
        container: true,
    };
    pub const NONE: Sections = Sections {
        ps: false,
        fds: false,
        sockets: false,
        mounts: false,
        mem: false,
        container: false,
    };
}

/// `--search` / `--search-regex`.
#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub pattern: String,
    pub regex: bool,
    /// Bytes of context on each side.
    pub context: usize,
    pub max_hits: usize,
}

/// What `cryo inspect` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub sections: Sections,
    /// Only this process (and what it holds).
    pub pid: Option<u32>,
    pub search: Option<SearchSpec>,
    /// Whether the summary is printed (the terminal view).
    pub summary: bool,
}

/// Opens and reads a checkpoint.
pub fn load(path: &Path) -> Result<Loaded, InspectError> {
    collect::load(source::Source::open(path)?)
}

/// `cryo inspect PATH` as a report.
pub fn inspect(path: &Path, o: &Options) -> Result<Report, InspectError> {
    load(path)?.report(o)
}
