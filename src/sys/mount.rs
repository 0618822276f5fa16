//! Detached mounts: a file system instance cryo can reach through an fd without attaching it
//! anywhere (`fsopen`, `fsconfig`, `fsmount`), so nothing is left mounted on the host when
//! cryo exits or fails. Used for the mqueue file system of an IPC namespace and for cgroup
//! hierarchies that exist but are not mounted where cryo runs.

use std::io;
use std::os::fd::OwnedFd;

use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, FsMountFlags,
    FsOpenFlags, MountAttrFlags,
};

/// One `fsconfig` option: a flag (`None`) or a string value.
pub type FsOption<'a> = (&'a str, Option<&'a str>);

/// A new, detached mount of file system `fstype` with `options`; its root is reachable as
/// `/proc/self/fd/FD`. The mount goes away with the last fd on it.
pub fn detached(fstype: &str, options: &[FsOption<'_>]) -> io::Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in options {
        match value {
            None => fsconfig_set_flag(&fs, *key)?,
            Some(v) => fsconfig_set_string(&fs, *key, *v)?,
        }
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )?)
}
