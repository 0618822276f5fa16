//! Credentials: real/effective/saved/fs uids and gids, supplementary groups, the five
//! capability sets, securebits and no_new_privs.
//!
//! Dump reads /proc/PID/status and asks the task for its securebits. Restore runs in the
//! puppet (which starts with cryo's root credentials) and applies them in the order the
//! kernel's rules require: groups and gids first, then uids with capability fix-ups
//! suspended, bounding set, securebits, capabilities, ambient set, no_new_privs last.

use super::error::{task_error_from, TaskError};
use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::image::pb;
use crate::procfs;

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
    vec![v as u32, (v >> 32) as u32]
}
fn join(w: &[u32]) -> u64 {
    w.first().copied().unwrap_or(0) as u64 | (w.get(1).copied().unwrap_or(0) as u64) << 32
}

/// The credentials part of /proc/PID/status, as an image entry.
pub(crate) fn from_status(s: &procfs::Status, secbits: u32) -> pb::CredsEntry {
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
        no_new_privs: Some(s.no_new_privs as u32),
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
        let pid = cx.pid;
        let p = cx.remote()?;
        let secbits = p
            .remote
            .call(
                "prctl(PR_GET_SECUREBITS)",
                libc::SYS_prctl,
                [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
            )
            .map_err(|source| TaskError::Remote { pid, source })?;
        img.thread().creds = Some(from_status(&cx.status, secbits as u32));
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
            let secbits = cx.sys(
                "prctl(PR_GET_SECUREBITS)",
                libc::SYS_prctl,
                [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
            )?;
            let i = from_status(&now, secbits as u32);
            cx.inherited.creds = Some(i.clone());
            i
        }
    };
    if same(&inherited, c) {
        return Ok(()); // the thread already has exactly these credentials
    }
    let now = procfs::status(cx.pid)?;
    let cur_secbits = inherited.secbits as u64;
    let u = |v: u32| v as u64;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let ga = cx.put(1024, &groups)?;
    cx.sys(
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, ga, 0, 0, 0, 0],
    )?;
    cx.sys(
        "setresgid",
        libc::SYS_setresgid,
        [u(c.gid), u(c.egid), u(c.sgid), 0, 0, 0],
    )?;
    cx.sys("setfsgid", libc::SYS_setfsgid, [u(c.fsgid), 0, 0, 0, 0, 0])?;
    cx.sys(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        [
            libc::PR_SET_SECUREBITS as u64,
            cur_secbits | SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS,
            0,
            0,
            0,
            0,
        ],
    )?;
    cx.sys(
        "setresuid",
        libc::SYS_setresuid,
        [u(c.uid), u(c.euid), u(c.suid), 0, 0, 0],
    )?;
    cx.sys("setfsuid", libc::SYS_setfsuid, [u(c.fsuid), 0, 0, 0, 0, 0])?;
    let bnd = join(&c.cap_bnd);
    for cap in 0..=CAP_LAST {
        if bnd & (1 << cap) == 0 && now.cap_bnd & (1 << cap) != 0 {
            cx.sys(
                "prctl(PR_CAPBSET_DROP)",
                libc::SYS_prctl,
                [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
            )?;
        }
    }
    cx.sys(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_SET_SECUREBITS as u64, c.secbits as u64, 0, 0, 0, 0],
    )?;
    // capset(header{version 3, pid 0}, data[2]{effective, permitted, inheritable})
    let (eff, prm, inh) = (join(&c.cap_eff), join(&c.cap_prm), join(&c.cap_inh));
    let mut cap = Vec::with_capacity(32);
    cap.extend_from_slice(&CAP_V3.to_ne_bytes());
    cap.extend_from_slice(&0i32.to_ne_bytes());
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            cap.extend_from_slice(&((set >> half) as u32).to_ne_bytes());
        }
    }
    let ca = cx.put(2048, &cap)?;
    cx.sys("capset", libc::SYS_capset, [ca, ca + 8, 0, 0, 0, 0])?;
    let amb = join(&c.cap_amb);
    for capn in 0..=CAP_LAST {
        if amb & (1 << capn) != 0 {
            cx.sys(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    capn,
                    0,
                    0,
                    0,
                ],
            )?;
        }
    }
    if c.no_new_privs.unwrap_or(0) != 0 {
        cx.sys(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
