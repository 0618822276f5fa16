//! Namespace files: an fd opened on `/proc/PID/ns/KIND` (files.img NS records, CRIU's
//! `ns_file_entry`: the namespace's id and its `CLONE_NEW*` flag).
//!
//! cryo keeps such an fd when it refers to one of the holding process's own namespaces
//! (what `/proc/self/ns/net` gives), which restore makes again: the restored task opens
//! `/proc/self/ns/KIND` once it is in its restored namespaces (with the fds opened last,
//! `files::restore_late_fds`). An fd on a namespace the process is not in is refused before
//! the dump touches it.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, FdKind, FdObjects, FdProbe, TargetFd};
use super::DumpCx;
use crate::image::pb;

/// Namespace files.
pub struct NsFile;

/// Why a namespace file could not be saved or opened again.
#[derive(Debug, thiserror::Error)]
pub enum NsFileError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(NsFileError);

/// Namespace kinds: the name in /proc/PID/ns and in the fd's link, and its CLONE_NEW* flag.
const KINDS: [(&str, i32); 8] = [
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
    ("user", libc::CLONE_NEWUSER),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

/// The kind of namespace an fd link such as "net:[4026531840]" names.
fn kind_of(link: &str) -> Option<(&'static str, i32)> {
    let (kind, rest) = link.split_once(":[")?;
    rest.strip_suffix(']')?.parse::<u64>().ok()?;
    KINDS.iter().copied().find(|(k, _)| *k == kind)
}

impl FdKind for NsFile {
    const NAME: &'static str = "namespace file";
    const TYPE: pb::FdTypes = pb::FdTypes::Ns;
    type Error = NsFileError;

    fn claims(p: &FdProbe<'_>) -> bool {
        kind_of(p.link).is_some()
    }

    fn precheck(p: &FdProbe<'_>) -> Result<(), NsFileError> {
        let (kind, _) = kind_of(p.link).ok_or(TaskError::Internal("not a namespace file"))?;
        let own = std::fs::metadata(format!("/proc/{}/ns/{kind}", p.pid)).map(|m| m.ino());
        if p.meta.map(|m| m.ino()) == own.ok() {
            return Ok(());
        }
        Err(Unsupported::of(
            p.pid,
            format!("fd {} ({})", p.fd, p.link),
            format!("an fd on a {kind} namespace the process is not in"),
            "close it before the dump; only fds on the process's own namespaces are restored",
        )
        .into())
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, NsFileError> {
        let (_, flag) = kind_of(fd.link).ok_or(TaskError::Internal("not a namespace file"))?;
        let ino = fd.meta.map(|m| m.ino()).unwrap_or(0);
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Ns as i32,
            id,
            nsf: Some(pb::NsFileEntry {
                id,
                ns_id: super::misc::ns_id(ino),
                ns_cflag: flag as u32,
                flags: fd.flags(),
            }),
            ..Default::default()
        })
    }

    /// Opened in the task ([`path_in_task`]), not in cryo.
    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, NsFileError> {
        Err(TaskError::BadImage(format!(
            "file {}: a namespace file is opened by the restored task itself",
            e.id
        ))
        .into())
    }
}

/// The path the restored task opens record `e` by: its own namespace of that kind.
pub fn path_in_task(e: &pb::FileEntry) -> Result<String, NsFileError> {
    let n = e
        .nsf
        .as_ref()
        .ok_or_else(|| missing(e.id, "namespace file"))?;
    let (kind, _) = KINDS
        .iter()
        .find(|(_, f)| *f as u32 == n.ns_cflag)
        .ok_or_else(|| {
            Unsupported::restore(format!(
                "file {}: namespace file of unknown kind {:#x}",
                e.id, n.ns_cflag
            ))
        })?;
    Ok(format!("/proc/self/ns/{kind}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn recognises_namespace_links() {
        assert_eq!(super::kind_of("net:[4026531840]").map(|k| k.0), Some("net"));
        assert!(super::kind_of("socket:[12]").is_none());
        assert!(super::kind_of("net:[x]").is_none());
    }
}
