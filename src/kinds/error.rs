//! The failures every kind can meet, which each kind's own error type wraps.
//!
//! Each kind module owns an error type (`EventFdError`, `MemoryError`, `CgroupError`, ...)
//! holding what is particular to it; the failures all kinds share (an in-target syscall that
//! failed, a /proc file that could not be read, a damaged image, an object cryo does not
//! handle) are spelled once here, so every message names the process, fd, file id or address
//! in the same way. The pipelines collect the kinds' errors with `#[from]` (`DumpError`,
//! `RestoreError`), and kinds never name the pipelines' errors.

use std::fmt;
use std::io;

use crate::fault::Fault;
use crate::image::ImageError;
use crate::procfs::ProcError;
use crate::sys::remote::RemoteError;

/// What any error of a kind can say to the user besides the message: what to do about it.
pub trait Failure: std::error::Error + Send + Sync + 'static {
    /// What the user can do about it, if cryo knows.
    fn hint(&self) -> Option<String> {
        None
    }
}

// A queued call ([`Batch`](crate::sys::remote::Batch)) cannot fail.
impl From<std::convert::Infallible> for TaskError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// A failure of an operation on a task or its objects, shared by every kind.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A syscall run inside the task (dump: the frozen task; restore: the puppet) failed.
    #[error("in-target syscall failed in process {pid}")]
    Remote {
        pid: i32,
        #[source]
        source: RemoteError,
    },
    #[error("{what} failed at {addr:#x} in process {pid}")]
    Memory {
        pid: i32,
        addr: u64,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} failed for process {pid}")]
    Ptrace {
        pid: i32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Restore: a path could not be opened inside the puppet.
    #[error("cannot open {path} for the restored process {pid}")]
    Open {
        pid: i32,
        path: String,
        #[source]
        source: RemoteError,
    },
    /// Dump: reading fd `fd` of process `pid` failed.
    #[error("process {pid}: fd {fd}: {what}")]
    Fd {
        pid: i32,
        fd: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    /// Restore: making the object of file id `id` (in cryo or in the puppet) failed.
    #[error("cannot recreate file {id} ({what})")]
    Object {
        id: u32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The images contradict themselves (a record names one that does not exist, ...).
    #[error("the images are inconsistent: {0}")]
    BadImage(String),
    #[error(transparent)]
    Fault(#[from] Fault),
    /// An object cryo does not handle.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl TaskError {
    /// The errno of a failed in-target syscall, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TaskError::Remote { source, .. } | TaskError::Open { source, .. } => source.errno(),
            _ => None,
        }
    }

    /// An error on fd `fd` of process `pid` doing `what`, for `map_err`.
    pub fn fd(pid: i32, fd: i32, what: &'static str) -> impl Fn(io::Error) -> TaskError {
        move |source| TaskError::Fd {
            pid,
            fd,
            what: what.into(),
            source,
        }
    }

    /// An error making the object of file `id`, for `map_err`.
    pub fn object(id: u32, what: impl Into<String>) -> impl FnOnce(io::Error) -> TaskError {
        let what = what.into();
        move |source| TaskError::Object { id, what, source }
    }
}

impl Failure for TaskError {
    fn hint(&self) -> Option<String> {
        match self {
            TaskError::Image(ImageError::Digest { .. }) => {
                Some("re-create the checkpoint; the images were damaged after the dump".into())
            }
            TaskError::Unsupported(u) => u.hint(),
            _ => None,
        }
    }
}

/// An object cryo cannot checkpoint or restore: which one, why, and what to do.
#[derive(Debug)]
pub struct Unsupported {
    /// The process holding it (at dump), if one.
    pub pid: Option<i32>,
    /// The object: "fd 4 (socket:[1234])", "mount /data", "file 7", ...
    pub object: String,
    /// Why it cannot be handled.
    pub what: String,
    /// What the user can do (may be empty).
    pub hint: String,
}

impl Unsupported {
    /// An object of process `pid`.
    pub fn of(
        pid: i32,
        object: impl Into<String>,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) -> Unsupported {
        Unsupported {
            pid: Some(pid),
            object: object.into(),
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// Something in the images this cryo cannot restore.
    pub fn restore(what: impl Into<String>) -> Unsupported {
        Unsupported {
            pid: None,
            object: String::new(),
            what: what.into(),
            hint: String::new(),
        }
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pid, self.object.is_empty()) {
            (Some(pid), false) => write!(f, "process {pid}: {}: {}", self.object, self.what),
            (None, false) => write!(f, "{}: {}", self.object, self.what),
            (Some(pid), true) => write!(f, "process {pid}: {}", self.what),
            (None, true) => write!(f, "not supported: {}", self.what),
        }
    }
}

impl std::error::Error for Unsupported {}

impl Failure for Unsupported {
    fn hint(&self) -> Option<String> {
        (!self.hint.is_empty()).then(|| self.hint.clone())
    }
}

/// Implements, for a kind's error type with a `Task(TaskError)` variant, the conversions
/// that let `?` pass on the shared failures (/proc reads, images, fault points, refusals) and
/// [`Failure`] with the task error's hint. Kinds with their own hints implement `Failure`
/// themselves and use `task_error_from!(Type, no_failure)`.
macro_rules! task_error_from {
    ($t:ty) => {
        $crate::kinds::error::task_error_from!($t, no_failure);
        impl $crate::kinds::error::Failure for $t {
            fn hint(&self) -> Option<String> {
                match self {
                    Self::Task(e) => $crate::kinds::error::Failure::hint(e),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
    ($t:ty, no_failure) => {
        // A queued call ([`Batch`](crate::sys::remote::Batch)) cannot fail.
        impl From<std::convert::Infallible> for $t {
            fn from(e: std::convert::Infallible) -> Self {
                match e {}
            }
        }
        impl From<$crate::procfs::ProcError> for $t {
            fn from(e: $crate::procfs::ProcError) -> Self {
                Self::Task(e.into())
            }
        }
        impl From<$crate::image::ImageError> for $t {
            fn from(e: $crate::image::ImageError) -> Self {
                Self::Task(e.into())
            }
        }
        impl From<$crate::fault::Fault> for $t {
            fn from(e: $crate::fault::Fault) -> Self {
                Self::Task(e.into())
            }
        }
        impl From<$crate::kinds::error::Unsupported> for $t {
            fn from(e: $crate::kinds::error::Unsupported) -> Self {
                Self::Task(e.into())
            }
        }
    };
}
pub(crate) use task_error_from;
