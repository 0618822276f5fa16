//! Mount propagation of a restored mount namespace: the peer groups (`shared:N`) and slaves
//! (`master:N`) its mounts had, and which are unbindable, as CRIU's mount-v2 restores them.
//!
//! The mount builder (`kinds::mounts`) makes every mount private, so nothing it mounts
//! propagates anywhere while the tree is built (a bind of a shared mount would otherwise
//! join its peer group, and a mount below one member would appear below every member: LXC's
//! `/proc/sys` bound from `/proc`, with `/proc/sys/net` on it, came back twice). Once every
//! mount exists, [`restore`] recreates each saved peer group: its widest member (a root
//! containing the others') is made shared, then every other member joins that group with
//! `move_mount(MOVE_MOUNT_SET_GROUP)`, which copies both the peer group and the master.
//! A slave joins its master's group the same way and is then made a slave. An external
//! mount whose master is outside the tree (`--enable-external-masters`) joins the peer
//! group of a mount of cryo's namespace in that group, when there is one, and is made its
//! slave again; another mount whose master is outside is restored without it; a
//! member whose root is not inside the widest member's (SET_GROUP needs that) gets a group
//! of its own, with a warning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};

use crate::sys::mount::{set_propagation, Propagation};

use crate::image::pb;

/// Why a peer group or slave could not be set up again.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore the propagation of mount {mountpoint} ({what})")]
pub struct PropagationError {
    pub mountpoint: String,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

struct Groups<'a> {
    entries: &'a [pb::MntEntry],
    fds: &'a [Option<OwnedFd>],
    /// Per mount: the root of a mount outside the tree in its master's peer group.
    ext_masters: &'a [Option<OwnedFd>],
    members: BTreeMap<u32, Vec<usize>>,
    rep: HashMap<u32, usize>,
    done: HashSet<u32>,
    busy: HashSet<u32>,
}

/// Whether `inner` is `outer` or below it, as paths.
fn within(inner: &str, outer: &str) -> bool {
    outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|r| r.starts_with('/'))
}

impl Groups<'_> {
    fn fail(
        &self,
        i: usize,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> PropagationError {
        let mountpoint = self.entries[i].mountpoint.clone();
        move |source| PropagationError {
            mountpoint,
            what,
            source,
        }
    }

    /// Sets the propagation of mount `i` through cryo's fd of its root (no path: this runs
    /// after `pivot_root`, where cryo's /proc is out of reach).
    fn set(&self, i: usize, p: Propagation, what: &'static str) -> Result<(), PropagationError> {
        let fd = self.fds[i].as_ref().expect("only mounted entries");
        set_propagation(fd.as_fd(), p).map_err(self.fail(i, what))
    }

    /// Puts mount `to` in `from`'s peer group and under its master.
    fn join(&self, from: usize, to: usize) -> Result<(), PropagationError> {
        self.join_fd(self.fds[from].as_ref().expect("mounted"), to)
    }

    /// Puts mount `to` in the peer group (and under the master) of the mount whose root `f`
    /// holds.
    fn join_fd(&self, f: &OwnedFd, to: usize) -> Result<(), PropagationError> {
        use rustix::mount::{move_mount, MoveMountFlags};
        let t = self.fds[to].as_ref().expect("mounted");
        move_mount(
            f.as_fd(),
            "",
            t.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_SET_GROUP
                | MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| self.fail(to, "MOVE_MOUNT_SET_GROUP")(e.into()))
    }

    /// Whether `to` may be put in `from`'s group (same file system, root inside).
    fn joinable(&self, from: usize, to: usize) -> bool {
        let (f, t) = (&self.entries[from], &self.entries[to]);
        f.root_dev == t.root_dev && within(&t.root, &f.root)
    }

    /// Makes peer group `g` again (its master's first).
    fn group(&mut self, g: u32) -> Result<(), PropagationError> {
        if self.done.contains(&g) || !self.busy.insert(g) {
            return Ok(()); // made, or a master cycle (impossible in a real tree)
        }
        let r = self.rep[&g];
        if let Some(m) = self.entries[r].master_id {
            self.slave(r, m)?;
        }
        self.set(r, Propagation::Shared, "make shared")?;
        for i in self.members[&g].clone() {
            if i == r {
                continue;
            }
            if self.joinable(r, i) {
                self.join(r, i)?;
            } else {
                tracing::warn!(
                    "mount {} was in the peer group of {} but its root {} is not inside {}: it gets a group of its own",
                    self.entries[i].mountpoint,
                    self.entries[r].mountpoint,
                    self.entries[i].root,
                    self.entries[r].root
                );
                if let Some(m) = self.entries[i].master_id {
                    self.slave(i, m)?;
                }
                self.set(i, Propagation::Shared, "make shared")?;
            }
        }
        self.done.insert(g);
        Ok(())
    }

    /// Makes mount `i` a slave of peer group `m`, if that group is in the tree (or reached
    /// outside it, `ext_masters`).
    fn slave(&mut self, i: usize, m: u32) -> Result<(), PropagationError> {
        if let Some(from) = self.ext_masters.get(i).and_then(Option::as_ref) {
            if !self.members.contains_key(&m) {
                // Peer group numbers are the kernel's and get reused: the host mount found
                // by number may be an unrelated one (another file system: EINVAL). Then the
                // mount is restored without that master, as when none is found.
                match self.join_fd(from, i) {
                    Ok(()) => return self.set(i, Propagation::Slave, "make a slave"),
                    Err(e) => {
                        tracing::warn!(
                            "mount {} was a slave of peer group {m}, outside the tree; the host's mount of that group cannot be its master ({e}): restored without that master",
                            self.entries[i].mountpoint
                        );
                        return Ok(());
                    }
                }
            }
        }
        if !self.members.contains_key(&m) {
            tracing::info!(
                "mount {} was a slave of peer group {m}, outside the tree: restored without that master",
                self.entries[i].mountpoint
            );
            return Ok(());
        }
        self.group(m)?;
        let r = self.rep[&m];
        if !self.joinable(r, i) {
            tracing::warn!(
                "mount {} was a slave of {} but its root {} is not inside {}: restored without that master",
                self.entries[i].mountpoint,
                self.entries[r].mountpoint,
                self.entries[i].root,
                self.entries[r].root
            );
            return Ok(());
        }
        self.join(r, i)?;
        self.set(i, Propagation::Slave, "make a slave")
    }
}

/// Sets the saved propagation of every mount of `entries` whose root cryo holds in `fds`
/// (same order; all of them private so far). `ext_masters` (same order, may be shorter):
/// for a mount whose master is outside the tree, the root of a mount in that peer group.
pub fn restore(
    entries: &[pb::MntEntry],
    fds: &[Option<OwnedFd>],
    ext_masters: &[Option<OwnedFd>],
) -> Result<(), PropagationError> {
    let mut members: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let (Some(g), Some(_)) = (e.shared_id, &fds[i]) {
            members.entry(g).or_default().push(i);
        }
    }
    // The widest member (shortest root) of each group, the first one among equals.
    let rep = members
        .iter()
        .filter_map(|(g, m)| {
            m.iter()
                .copied()
                .min_by_key(|&i| (entries[i].root.len(), i))
                .map(|i| (*g, i))
        })
        .collect();
    let mut groups = Groups {
        entries,
        fds,
        ext_masters,
        members,
        rep,
        done: HashSet::new(),
        busy: HashSet::new(),
    };
    let ids: Vec<u32> = groups.members.keys().copied().collect();
    for g in ids {
        groups.group(g)?;
    }
    for (i, e) in entries.iter().enumerate() {
        if let (None, Some(m), Some(_)) = (e.shared_id, e.master_id, &fds[i]) {
            groups.slave(i, m)?;
        }
    }
    // Unbindable last: no bind could be taken of these while the tree was built (CRIU
    // delays it the same way). A mount cannot be both shared and unbindable.
    for (i, e) in entries.iter().enumerate() {
        let Some(fd) = &fds[i] else { continue };
        if e.flags & super::mounts::UNBINDABLE == 0 {
            continue;
        }
        if e.shared_id.is_some() {
            tracing::warn!(mountpoint = %e.mountpoint, "mount saved both shared and unbindable: left shared");
            continue;
        }
        set_propagation(fd.as_fd(), Propagation::Unbindable)
            .map_err(groups.fail(i, "make it unbindable"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_nest() {
        assert!(within("/sys", "/"));
        assert!(within("/sys/net", "/sys"));
        assert!(within("/sys", "/sys"));
        assert!(!within("/sysx", "/sys"));
        assert!(!within("/", "/sys"));
    }
}
