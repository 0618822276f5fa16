//! What cryo may do as the user it runs as: CRIU's `--unprivileged` mode.
//!
//! cryo always needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), as CRIU: root has both; a
//! non-root user runs a copy of cryo given file capabilities (`setcap
//! cap_checkpoint_restore,cap_sys_ptrace+eip cryo`) and says `--unprivileged`, accepting that
//! cryo then does only what the kernel lets such a user do, and only to that user's processes. [`check`] is CRIU's start-up
//! check (`check_caps`); [`restore_precheck`] refuses, by name and before anything is
//! created, a restore that would need more (another uid, new namespaces, TCP repair); and
//! [`Privilege::report`] is what `cryo check --unprivileged` prints.

use crate::procfs;

/// Capability numbers (linux/capability.h).
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// Why cryo cannot run (or cannot restore these images) as the user it is.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cryo needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), and has neither")]
    NoCheckpointRestore,
    #[error("running as non-root (uid {0}) requires '--unprivileged'")]
    NeedsUnprivileged(u32),
    #[error("cannot read cryo's own capabilities")]
    Proc(#[from] procfs::ProcError),
    #[error("an unprivileged cryo (uid {uid}) dumps only its own user's processes: process {pid} runs as uid {other}")]
    NotOwn { uid: u32, pid: i32, other: u32 },
    #[error("an unprivileged cryo (uid {uid}) cannot restore {what}: it needs {cap}")]
    Restore {
        uid: u32,
        what: String,
        cap: &'static str,
    },
}

impl PrivilegeError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            PrivilegeError::NoCheckpointRestore => {
                "run cryo as root, or give a copy of it file capabilities: setcap cap_checkpoint_restore,cap_sys_ptrace+eip PATH_TO_CRYO".into()
            }
            PrivilegeError::NeedsUnprivileged(_) => {
                "add --unprivileged (cryo then does only what the kernel allows this user; `cryo check --unprivileged` says what), or run it as root".into()
            }
            PrivilegeError::Proc(_) => "is /proc mounted?".into(),
            PrivilegeError::NotOwn { .. } => {
                "dump it as root (or as its own user)".into()
            }
            PrivilegeError::Restore { .. } => {
                "restore these images as root, or give this copy of cryo that capability too".into()
            }
        }
    }
}

/// The user cryo runs as and its effective capabilities.
#[derive(Debug, Clone, Copy)]
pub struct Privilege {
    pub uid: u32,
    pub gid: u32,
    pub cap_eff: u64,
}

impl Privilege {
    /// cryo's own (from /proc/self/status).
    pub fn current() -> Result<Privilege, PrivilegeError> {
        let s = procfs::status(crate::sys::proc::own_pid())?;
        Ok(Privilege {
            uid: s.uids[1],
            gid: s.gids[1],
            cap_eff: s.cap_eff,
        })
    }

    pub fn has(&self, cap: u32) -> bool {
        self.cap_eff & (1u64 << cap) != 0
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `cryo check --unprivileged`: what this user can do, one line each.
    pub fn report(&self) -> Vec<String> {
        let yes = |c: u32| self.has(c);
        let mut out = vec![format!(
            "cryo runs as uid {} gid {}{}",
            self.uid,
            self.gid,
            if self.is_root() { " (root)" } else { "" }
        )];
        let mut line = |ok: bool, what: &str, why: &str| {
            out.push(format!("{} {what}{why}", if ok { "yes:" } else { "no: " }))
        };
        line(
            yes(CAP_CHECKPOINT_RESTORE) || yes(CAP_SYS_ADMIN),
            "checkpoint/restore at all",
            " (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
        );
        line(
            self.is_root(),
            "dump processes of other users",
            " (root only: an unprivileged cryo refuses them)",
        );
        line(
            self.is_root() || (yes(CAP_SETUID) && yes(CAP_SETGID)),
            "restore processes of other users or groups",
            " (CAP_SETUID, CAP_SETGID)",
        );
        line(
            yes(CAP_SYS_ADMIN),
            "restore PID, mount, network, IPC, UTS, cgroup or time namespaces",
            " (CAP_SYS_ADMIN)",
        );
        line(
            yes(CAP_NET_ADMIN),
            "established TCP connections and the network lock",
            " (CAP_NET_ADMIN: TCP repair, nftables)",
        );
        line(
            true,
            &format!("processes of uid {} without those: memory, threads, files, pipes, unix sockets, signals, timers", self.uid),
            "",
        );
        out
    }
}

/// CRIU's start-up check (`check_caps`): CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN always;
/// a non-root user must say `--unprivileged`, and cryo then makes itself dumpable, so that
/// its own /proc files (and its children's) belong to that user and not to root.
pub fn check(unprivileged: bool) -> Result<Privilege, PrivilegeError> {
    let p = Privilege::current()?;
    if !p.has(CAP_CHECKPOINT_RESTORE) && !p.has(CAP_SYS_ADMIN) {
        return Err(PrivilegeError::NoCheckpointRestore);
    }
    if p.is_root() {
        return Ok(p);
    }
    if !unprivileged {
        return Err(PrivilegeError::NeedsUnprivileged(p.uid));
    }
    crate::sys::proc::set_dumpable(true);
    Ok(p)
}

/// Refuses the dump of process `pid` by a cryo that is not root when any of its uids is
/// not cryo's own.
pub fn dump_precheck(p: &Privilege, pid: i32) -> Result<(), PrivilegeError> {
    if p.is_root() {
        return Ok(());
    }
    let s = procfs::status(pid)?;
    match s.uids.iter().find(|&&u| u != p.uid) {
        Some(&other) => Err(PrivilegeError::NotOwn {
            uid: p.uid,
            pid,
            other,
        }),
        None => Ok(()),
    }
}

/// One thread's saved credentials.
pub struct TaskCreds {
    /// The thread and its process.
    pub tid: i32,
    pub pid: i32,
    /// Real, effective, saved and filesystem uids; the same for gids.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// What a restore of these images needs from cryo, checked before anything is created when
/// cryo runs as a user other than root.
pub struct RestoreNeeds<'a> {
    /// Every thread's credentials.
    pub creds: Vec<TaskCreds>,
    /// cryo's own supplementary groups (a thread keeps them without CAP_SETGID).
    pub own_groups: Vec<u32>,
    /// Namespaces the restore creates ("PID", "network", ...) outside a user namespace of
    /// the tree's own (those inside it are cryo's to make).
    pub new_namespaces: Vec<&'a str>,
    /// The tree's own user namespace, whose maps cryo writes.
    pub userns: Option<&'a crate::image::pb::UsernsEntry>,
    /// Established TCP connections come back through TCP repair.
    pub tcp_repair: bool,
}

/// Whether a user without CAP_SETUID/SETGID may write `map` into a user namespace it
/// made: only one id, its own (user_namespaces(7)).
fn own_id_only(map: &[crate::image::pb::UidGidExtent], own: u32) -> bool {
    matches!(map, [e] if e.count == 1 && e.lower_first == own)
}

/// Refuses, naming it, the first thing of `needs` that `p` may not do.
pub fn restore_precheck(p: &Privilege, needs: &RestoreNeeds<'_>) -> Result<(), PrivilegeError> {
    if p.is_root() {
        return Ok(());
    }
    let refuse = |what: String, cap| PrivilegeError::Restore {
        uid: p.uid,
        what,
        cap,
    };
    // Ids as the parent user namespace sees them: inside the tree's own one they are
    // whatever its maps make of cryo's.
    let (own_uid, own_gid) = match needs.userns {
        Some(u) => (
            crate::kinds::userns::to_inside(&u.uid_map, p.uid),
            crate::kinds::userns::to_inside(&u.gid_map, p.gid),
        ),
        None => (p.uid, p.gid),
    };
    for c in &needs.creds {
        let who = if c.tid == c.pid {
            format!("process {}", c.pid)
        } else {
            format!("thread {} of process {}", c.tid, c.pid)
        };
        if c.uids.iter().any(|&u| u != own_uid) && !p.has(CAP_SETUID) {
            return Err(refuse(
                format!("{who}, which ran as uid {}", c.uids[1]),
                "CAP_SETUID",
            ));
        }
        if c.gids.iter().any(|&g| g != own_gid) && !p.has(CAP_SETGID) {
            return Err(refuse(
                format!("{who}, which ran as gid {}", c.gids[1]),
                "CAP_SETGID",
            ));
        }
        let mut want = c.groups.clone();
        let mut have = if needs.userns.is_some() {
            // A new user namespace's tasks have no groups it maps unless setgroups is allowed.
            want.clone()
        } else {
            needs.own_groups.clone()
        };
        want.sort_unstable();
        have.sort_unstable();
        if want != have && !p.has(CAP_SETGID) {
            return Err(refuse(
                format!("{who}, which had the supplementary groups {want:?} (cryo has {have:?})"),
                "CAP_SETGID",
            ));
        }
    }
    if let Some(u) = needs.userns {
        if !own_id_only(&u.uid_map, p.uid) && !p.has(CAP_SETUID) {
            return Err(refuse(
                format!(
                    "the tree's user namespace, whose uid map has {} extent(s) and maps more than uid {}",
                    u.uid_map.len(),
                    p.uid
                ),
                "CAP_SETUID",
            ));
        }
        let gid_ok = own_id_only(&u.gid_map, p.gid) && u.cryo_setgroups_deny == Some(true);
        if !gid_ok && !p.has(CAP_SETGID) {
            return Err(refuse(
                format!(
                    "the tree's user namespace, whose gid map maps more than gid {} or allows setgroups",
                    p.gid
                ),
                "CAP_SETGID",
            ));
        }
    }
    if let Some(ns) = needs.new_namespaces.first() {
        if !p.has(CAP_SYS_ADMIN) {
            return Err(refuse(
                format!("the tree's own {ns} namespace"),
                "CAP_SYS_ADMIN",
            ));
        }
    }
    if needs.tcp_repair && !p.has(CAP_NET_ADMIN) {
        return Err(refuse(
            "established TCP connections (TCP repair; --tcp-close restores them closed)".into(),
            "CAP_NET_ADMIN",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_restore_is_refused_by_what_it_needs() {
        let user = Privilege {
            uid: 1000,
            gid: 1000,
            cap_eff: 1 << CAP_CHECKPOINT_RESTORE,
        };
        let own = |tid| TaskCreds {
            tid,
            pid: 5,
            uids: [1000; 4],
            gids: [1000; 4],
            groups: vec![],
        };
        let needs = |creds, new_namespaces, userns, tcp_repair| RestoreNeeds {
            creds,
            own_groups: vec![],
            new_namespaces,
            userns,
            tcp_repair,
        };
        restore_precheck(&user, &needs(vec![own(5), own(6)], vec![], None, false)).unwrap();
        let e = |n: RestoreNeeds| restore_precheck(&user, &n).unwrap_err().to_string();
        // Another uid, in a thread other than the leader.
        let other = TaskCreds {
            uids: [0; 4],
            ..own(7)
        };
        let m = e(needs(vec![own(5), other], vec![], None, false));
        assert!(
            m.contains("thread 7 of process 5") && m.contains("CAP_SETUID"),
            "{m}"
        );
        let grouped = TaskCreds {
            groups: vec![27],
            ..own(8)
        };
        let m = e(needs(vec![grouped], vec![], None, false));
        assert!(m.contains("[27]") && m.contains("CAP_SETGID"), "{m}");
        let m = e(needs(vec![own(5)], vec!["PID"], None, true));
        assert!(
            m.contains("PID namespace") && m.contains("CAP_SYS_ADMIN"),
            "{m}"
        );
        let m = e(needs(vec![own(5)], vec![], None, true));
        assert!(m.contains("CAP_NET_ADMIN"), "{m}");
        // A user namespace of its own mapping root to cryo's uid: allowed, with root's
        // ids inside; a map of more than cryo's own id is not.
        let ext = |first, lower_first, count| crate::image::pb::UidGidExtent {
            first,
            lower_first,
            count,
        };
        let ns = crate::image::pb::UsernsEntry {
            uid_map: vec![ext(0, 1000, 1)],
            gid_map: vec![ext(0, 1000, 1)],
            cryo_setgroups_deny: Some(true),
        };
        let root_inside = TaskCreds {
            uids: [0; 4],
            gids: [0; 4],
            ..own(9)
        };
        restore_precheck(&user, &needs(vec![root_inside], vec![], Some(&ns), false)).unwrap();
        let wide = crate::image::pb::UsernsEntry {
            uid_map: vec![ext(0, 100000, 65536)],
            ..ns.clone()
        };
        let m = e(needs(vec![], vec![], Some(&wide), false));
        assert!(m.contains("uid map") && m.contains("CAP_SETUID"), "{m}");
        let root = Privilege {
            uid: 0,
            gid: 0,
            cap_eff: 0,
        };
        let ns = needs(vec![own(5)], vec!["PID"], None, true);
        restore_precheck(&root, &ns).unwrap();
    }
}
