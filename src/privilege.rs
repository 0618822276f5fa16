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

/// What a restore of these images needs from cryo, checked before anything is created when
/// cryo runs as a user other than root.
pub struct RestoreNeeds<'a> {
    /// Each process's PID and its uids (real, effective, saved, fs) and gids.
    pub creds: Vec<(i32, [u32; 4], [u32; 4])>,
    /// Namespaces the restore creates ("PID", "network", ...), other than a user namespace.
    pub new_namespaces: Vec<&'a str>,
    /// Established TCP connections come back through TCP repair.
    pub tcp_repair: bool,
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
    for &(pid, uids, gids) in &needs.creds {
        if uids.iter().any(|&u| u != p.uid) && !p.has(CAP_SETUID) {
            return Err(refuse(
                format!("process {pid}, which ran as uid {}", uids[1]),
                "CAP_SETUID",
            ));
        }
        if gids.iter().any(|&g| g != p.gid) && !p.has(CAP_SETGID) {
            return Err(refuse(
                format!("process {pid}, which ran as gid {}", gids[1]),
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
            "established TCP connections (TCP repair)".into(),
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
        let own = |pid| (pid, [1000; 4], [1000; 4]);
        let ok = RestoreNeeds {
            creds: vec![own(5), own(6)],
            new_namespaces: vec![],
            tcp_repair: false,
        };
        restore_precheck(&user, &ok).unwrap();
        let other = RestoreNeeds {
            creds: vec![own(5), (6, [0; 4], [1000; 4])],
            ..ok
        };
        let e = restore_precheck(&user, &other).unwrap_err().to_string();
        assert!(e.contains("process 6") && e.contains("CAP_SETUID"), "{e}");
        let ns = RestoreNeeds {
            creds: vec![own(5)],
            new_namespaces: vec!["PID"],
            tcp_repair: true,
        };
        let e = restore_precheck(&user, &ns).unwrap_err().to_string();
        assert!(
            e.contains("PID namespace") && e.contains("CAP_SYS_ADMIN"),
            "{e}"
        );
        let root = Privilege {
            uid: 0,
            gid: 0,
            cap_eff: 0,
        };
        restore_precheck(&root, &ns).unwrap();
    }
}
