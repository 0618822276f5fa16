//! Namespaces a tree owns (issue #4, first piece): the UTS namespace — hostname and
//! domainname — saved once per namespace as `utsns-ID.img`, where ID is the namespace id of
//! `ids-PID.img` (`uts_ns_id`).
//!
//! Dump reads the names with `uname` run inside the task. Restore gives a task a new UTS
//! namespace (`unshare(CLONE_NEWUTS)` + `sethostname`/`setdomainname`, inside the puppet)
//! when its namespace differs from the one it inherits: cryo's for the root, its parent's
//! for a child; children forked afterwards inherit it. Other namespaces are still refused
//! by `dump::precheck`.

use std::os::unix::fs::MetadataExt;

use super::{DumpCx, RestoreCx, TaskImages};
use crate::dump::DumpError;
use crate::image::{self, pb};
use crate::restore::RestoreError;

/// The namespace id cryo itself has for `kind` ("uts", ...), as `task_ids` computes ids.
pub fn own_ns_id(kind: &str) -> Option<u32> {
    std::fs::metadata(format!("/proc/self/ns/{kind}"))
        .ok()
        .map(|m| super::misc::ns_id(m.ino()))
}

/// Saves the hostname and domainname of the task's UTS namespace, once per namespace.
pub fn dump_uts(cx: &mut DumpCx<'_>, img: &TaskImages) -> Result<(), DumpError> {
    let Some(id) = img.ids.uts_ns_id else {
        return Ok(());
    };
    if Some(id) == own_ns_id("uts") || cx.files.utsns.iter().any(|(i, _)| *i == id) {
        return Ok(());
    }
    let pid = cx.pid;
    let p = cx.remote()?;
    let buf = p
        .scratch(64 * 1024)
        .map_err(|e| DumpError::remote(pid, e))?;
    p.remote
        .call("uname", libc::SYS_uname, [buf, 0, 0, 0, 0, 0])
        .map_err(|e| DumpError::remote(pid, e))?;
    // struct utsname: six 65-byte fields; nodename is the 2nd, domainname the 6th.
    let mut u = vec![0u8; 6 * 65];
    let n = u.len();
    crate::sys::mem::vm_read(pid, &mut u, &[(buf, n)]).map_err(|source| DumpError::Memory {
        pid,
        addr: buf,
        what: "reading utsname",
        source,
    })?;
    let field = |i: usize| {
        let f = &u[i * 65..(i + 1) * 65];
        let end = f.iter().position(|&b| b == 0).unwrap_or(65);
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    cx.files.utsns.push((
        id,
        pb::UtsnsEntry {
            nodename: field(1),
            domainname: field(5),
        },
    ));
    Ok(())
}

/// Gives the puppet a new UTS namespace with the saved names when `img`'s differs from the
/// one it has now (`inherited`: its parent's id, or cryo's for the root).
pub fn restore_uts(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    inherited: Option<u32>,
) -> Result<(), RestoreError> {
    let Some(id) = img.ids.uts_ns_id else {
        return Ok(());
    };
    if Some(id) == inherited {
        return Ok(());
    }
    let e: pb::UtsnsEntry = cx.dir.read_one(&format!("utsns-{id}.img"), image::UTSNS)?;
    cx.sys(
        "unshare(CLONE_NEWUTS)",
        libc::SYS_unshare,
        [libc::CLONE_NEWUTS as u64, 0, 0, 0, 0, 0],
    )?;
    let a = cx.put(0, e.nodename.as_bytes())?;
    cx.sys(
        "sethostname",
        libc::SYS_sethostname,
        [a, e.nodename.len() as u64, 0, 0, 0, 0],
    )?;
    let a = cx.put(0, e.domainname.as_bytes())?;
    cx.sys(
        "setdomainname",
        libc::SYS_setdomainname,
        [a, e.domainname.len() as u64, 0, 0, 0, 0],
    )?;
    Ok(())
}
