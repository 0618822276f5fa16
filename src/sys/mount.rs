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

/// The propagation `mount_setattr(2)` can set on a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Shared,
    Slave,
    Private,
    /// Private, and no bind of it can be made (`MS_UNBINDABLE`).
    Unbindable,
}

/// `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {propagation})`: sets the propagation of the mount
/// whose root `fd` holds (an O_PATH fd is enough), without a path (Linux 5.12+).
pub fn set_propagation(fd: std::os::fd::BorrowedFd<'_>, p: Propagation) -> io::Result<()> {
    let propagation = match p {
        Propagation::Shared => libc::MS_SHARED,
        Propagation::Slave => libc::MS_SLAVE,
        Propagation::Private => libc::MS_PRIVATE,
        Propagation::Unbindable => libc::MS_UNBINDABLE,
    };
    setattr(
        fd,
        &MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation,
            userns_fd: 0,
        },
    )
}

/// A detached, writable copy of the mount at directory `dir` (`open_tree(OPEN_TREE_CLONE)`,
/// then `MOUNT_ATTR_RDONLY` cleared on the copy alone), rooted at `dir`: files under a
/// read-only mount of a writable file system are made or removed through
/// `/proc/self/fd/FD/NAME`. Nothing else sees the copy; it goes away with the fd.
pub fn writable_clone(dir: &std::path::Path) -> io::Result<OwnedFd> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    let fd = open_tree(
        rustix::fs::CWD,
        dir,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    writable(fd)
}

/// As [`writable_clone`], for the mount and file or directory `fd` (an O_PATH fd is enough)
/// holds: a detached, writable copy rooted there. The mount must be in the calling thread's
/// mount namespace.
pub fn writable_clone_of(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::mount::{open_tree, OpenTreeFlags};
    let clone = open_tree(
        fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    writable(clone)
}

/// Clears the read-only attribute of the detached mount `clone`.
fn writable(clone: OwnedFd) -> io::Result<OwnedFd> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    setattr(
        std::os::fd::AsFd::as_fd(&clone),
        &MountAttr {
            attr_set: 0,
            attr_clr: MOUNT_ATTR_RDONLY,
            propagation: 0,
            userns_fd: 0,
        },
    )?;
    Ok(clone)
}

fn setattr(fd: std::os::fd::BorrowedFd<'_>, attr: &MountAttr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `fd` is a valid fd for the call, the path is a NUL-terminated empty string,
    // and `attr` is a live `struct mount_attr` of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
