//! Credentials: real/effective/saved/fs uids and gids, supplementary groups, the five
//! capability sets, securebits and no_new_privs.
//!
//! Dump reads /proc/PID/status and asks the task for its securebits. Restore runs in the
//! puppet (which starts with cryo's root credentials) and applies them in the order the
//! kernel's rules require: groups and gids first, then uids with capability fix-ups
//! suspended, bounding set, securebits, capabilities, ambient set, no_new_privs last.

use super::error::{task_error_from, TaskError};
use super::{DumpCx, Kind, RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::num::low32;
use crate::procfs;
use crate::sys::remote::arg;

/// Why credentials could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(CredsError);

/// Credentials of a thread.
pub struct Creds;

const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const CAP_LAST: u64 = 63;
const CAP_V3: u32 = 0x2008_0522;

fn words(v: u64) -> Vec<u32> {
    vec![low32(v), low32(v >> 32)]
}
fn join(w: &[u32]) -> u64 {
    u64::from(w.first().copied().unwrap_or(0)) | u64::from(w.get(1).copied().unwrap_or(0)) << 32
}

/// The credentials part of /proc/PID/status, as an image entry, with the ids as `pid` sees
/// them inside its user namespace (`userns::inside`).
pub(crate) fn from_status(pid: i32, s: &procfs::Status, secbits: u32) -> pb::CredsEntry {
    from_status_in(super::userns::maps_of(pid).as_ref(), s, secbits)
}

/// [`from_status`] with the user namespace's maps already read (`userns::maps_of`): every
/// thread of a process is in the same user namespace (a multi-threaded process can neither
/// `setns` nor `unshare` into another), so its threads share one read.
pub(crate) fn from_status_in(
    maps: Option<&super::userns::Maps>,
    s: &procfs::Status,
    secbits: u32,
) -> pb::CredsEntry {
    let mut s = s.clone();
    super::userns::inside(maps, &mut s);
    pb::CredsEntry {
        uid: s.uids[0],
        euid: s.uids[1],
        suid: s.uids[2],
        fsuid: s.uids[3],
        gid: s.gids[0],
        egid: s.gids[1],
        sgid: s.gids[2],
        fsgid: s.gids[3],
        cap_inh: words(s.cap_inh),
        cap_prm: words(s.cap_prm),
        cap_eff: words(s.cap_eff),
        cap_bnd: words(s.cap_bnd),
        cap_amb: words(s.cap_amb),
        secbits,
        groups: s.groups.clone(),
        no_new_privs: Some(u32::from(s.no_new_privs)),
        ..Default::default()
    }
}

/// Equal credentials, treating absent optional fields as zero (CRIU omits some).
fn same(a: &pb::CredsEntry, b: &pb::CredsEntry) -> bool {
    let ids = |c: &pb::CredsEntry| {
        [
            c.uid, c.gid, c.euid, c.egid, c.suid, c.sgid, c.fsuid, c.fsgid,
        ]
    };
    let caps = |c: &pb::CredsEntry| {
        [
            join(&c.cap_inh),
            join(&c.cap_prm),
            join(&c.cap_eff),
            join(&c.cap_bnd),
            join(&c.cap_amb),
        ]
    };
    ids(a) == ids(b)
        && caps(a) == caps(b)
        && a.secbits == b.secbits
        && a.groups == b.groups
        && a.no_new_privs.unwrap_or(0) == b.no_new_privs.unwrap_or(0)
}

impl Kind for Creds {
    const NAME: &'static str = "credentials";
    type Error = CredsError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), CredsError> {
        // Read with the task attributes (`misc`) when they ran first.
        let secbits = match cx.secbits.take() {
            Some(s) => s,
            None => cx.prctl(libc::PR_GET_SECUREBITS, [0; 4])?,
        };
        img.thread().creds = Some(from_status(cx.pid, &cx.status, low32(secbits)));
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), CredsError> {
        match img.core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) {
            Some(c) => restore_creds(cx, c),
            None => Ok(()),
        }
    }
}

/// Gives the thread `cx` drives the credentials `c` (credentials are per thread).
pub fn restore_creds(cx: &mut RestoreCx<'_>, c: &pb::CredsEntry) -> Result<(), CredsError> {
    let inherited = match cx.inherited.creds.clone() {
        Some(i) => i,
        None => {
            let now = procfs::status(cx.pid)?;
            let secbits = cx.prctl(libc::PR_GET_SECUREBITS, [0; 4])?;
            let i = from_status(cx.pid, &now, low32(secbits));
            cx.inherited.creds = Some(i.clone());
            i
        }
    };
    if same(&inherited, c) {
        return Ok(()); // the thread already has exactly these credentials
    }
    let now = procfs::status(cx.pid)?;
    let cur_secbits = u64::from(inherited.secbits);
    // Only when they differ: in a user namespace whose setgroups is "deny" the call fails.
    if inherited.groups != c.groups {
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        let ga = cx.put(1024, &groups)?;
        cx.setgroups(c.groups.len() as u64, ga)?;
    }
    cx.setresgid(c.gid, c.egid, c.sgid)?;
    cx.setfsgid(c.fsgid)?;
    // Securebits are changed only when needed (it takes CAP_SETPCAP, which an unprivileged
    // cryo has not): kept capabilities across a change of uids, then the saved bits.
    let uids = |c: &pb::CredsEntry| [c.uid, c.euid, c.suid, c.fsuid];
    let mut secbits_now = cur_secbits;
    if uids(&inherited) != uids(c) {
        let keep = cur_secbits | SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS;
        if keep != secbits_now {
            cx.prctl(libc::PR_SET_SECUREBITS, [keep, 0, 0, 0])?;
            secbits_now = keep;
        }
    }
    cx.setresuid(c.uid, c.euid, c.suid)?;
    cx.setfsuid(c.fsuid)?;
    let bnd = join(&c.cap_bnd);
    for cap in 0..=CAP_LAST {
        if bnd & (1 << cap) == 0 && now.cap_bnd & (1 << cap) != 0 {
            cx.prctl(libc::PR_CAPBSET_DROP, [cap, 0, 0, 0])?;
        }
    }
    if u64::from(c.secbits) != secbits_now {
        cx.prctl(libc::PR_SET_SECUREBITS, [u64::from(c.secbits), 0, 0, 0])?;
    }
    // capset(header{version 3, pid 0}, data[2]{effective, permitted, inheritable})
    let (eff, prm, inh) = (join(&c.cap_eff), join(&c.cap_prm), join(&c.cap_inh));
    let mut cap = Vec::with_capacity(32);
    cap.extend_from_slice(&CAP_V3.to_ne_bytes());
    cap.extend_from_slice(&0i32.to_ne_bytes());
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            cap.extend_from_slice(&low32(set >> half).to_ne_bytes());
        }
    }
    let ca = cx.put(2048, &cap)?;
    cx.capset(ca, ca + 8)?;
    let amb = join(&c.cap_amb);
    for capn in 0..=CAP_LAST {
        if amb & (1 << capn) != 0 {
            let raise = arg(libc::PR_CAP_AMBIENT_RAISE);
            cx.prctl(libc::PR_CAP_AMBIENT, [raise, capn, 0, 0])?;
        }
    }
    if c.no_new_privs.unwrap_or(0) != 0 {
        cx.prctl(libc::PR_SET_NO_NEW_PRIVS, [1, 0, 0, 0])?;
    }
    Ok(())
}
