//! User namespaces: a tree whose root runs in a user namespace of its own (a rootless
//! container: `unshare --user --map-root-user`, podman rootless, zdtm's uns flavour).
//!
//! Dump (`precheck`, `dump`): the namespace must be a child of cryo's, hold every task of the
//! tree, and come with a PID namespace of the tree's own (children and threads are created
//! with `set_tid`, which needs CAP_CHECKPOINT_RESTORE over the PID namespace's owner). Its
//! uid and gid maps, as cryo (in the parent namespace) reads them, and its `setgroups` state
//! are saved in CRIU's `userns-ID.img` (`userns_entry`; the setgroups state in cryo's field
//! 1000). Credentials are saved as the tasks see them inside (`inside`), as CRIU does.
//!
//! Restore (`load`, `set_maps`): the root puppet is cloned with `CLONE_NEWUSER` (and
//! `CLONE_NEWPID`), so the PID namespace and every namespace it unshares afterwards are owned
//! by the new user namespace; cryo writes the maps (`setgroups` before `gid_map`) while it is
//! stopped, before it does anything. The puppet then has every capability inside the
//! namespace until `Creds` gives each task its own. cryo itself stays in its namespace and,
//! being the owner's parent-namespace root, may still enter and change the tree's namespaces
//! (the mount builder joins the puppet's mount namespace instead of making one).

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use super::error::{task_error_from, TaskError, Unsupported};
use crate::image::{self, pb, ImageDir};
use crate::procfs;

/// Why a user namespace could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("user namespace of process {pid}: {what}")]
    Io {
        pid: i32,
        what: String,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(UsernsError);

/// The id an unmapped uid or gid shows inside a namespace (`kernel.overflowuid`).
const OVERFLOW_ID: u32 = 65534;

fn ns_ino(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/user"))
        .ok()
        .map(|m| m.ino())
}

/// Parses a `uid_map`/`gid_map` file: `inside outside count` per line.
pub fn parse_map(text: &str) -> Option<Vec<pb::UidGidExtent>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            match f[..] {
                [first, lower_first, count] => Some(pb::UidGidExtent {
                    first,
                    lower_first,
                    count,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The map's text as the kernel takes it (one write of every line).
fn map_text(m: &[pb::UidGidExtent]) -> String {
    m.iter()
        .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
        .collect()
}

/// `id` of the parent namespace as seen inside the namespace of `map`.
pub fn to_inside(map: &[pb::UidGidExtent], id: u32) -> u32 {
    map.iter()
        .find(|e| {
            id >= e.lower_first && u64::from(id) < u64::from(e.lower_first) + u64::from(e.count)
        })
        .map_or(OVERFLOW_ID, |e| e.first + (id - e.lower_first))
}

/// The id outside (in cryo's namespace) of `id` inside, through `map`; None if unmapped.
pub fn to_outside(map: &[pb::UidGidExtent], id: u32) -> Option<u32> {
    map.iter()
        .find(|e| id >= e.first && u64::from(id) < u64::from(e.first) + u64::from(e.count))
        .map(|e| e.lower_first + (id - e.first))
}

/// The uid and gid maps of `pid`'s user namespace when it is not cryo's (outside ids as
/// cryo's namespace sees them).
pub fn maps_of(pid: i32) -> Option<Maps> {
    // cryo's own namespace, read once (it does not change while cryo runs).
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let theirs = ns_ino(&pid.to_string())?;
    if Some(theirs) == *OWN.get_or_init(|| ns_ino("self")) {
        return None;
    }
    let read = |f: &str| {
        crate::procfs::read_text(std::path::Path::new(&format!("/proc/{pid}/{f}")))
            .ok()
            .and_then(|t| parse_map(&t))
    };
    Some((read("uid_map")?, read("gid_map")?))
}

/// A user namespace's uid and gid maps (`maps_of`).
pub type Maps = (Vec<pb::UidGidExtent>, Vec<pb::UidGidExtent>);

/// Rewrites the ids of `s` (read by cryo from /proc/PID/status, so in cryo's namespace)
/// as the task sees them inside its user namespace, whose maps are `maps` (`maps_of`; None
/// in cryo's namespace, where nothing changes).
pub fn inside(maps: Option<&Maps>, s: &mut procfs::Status) {
    let Some((u, g)) = maps else {
        return;
    };
    for id in &mut s.uids {
        *id = to_inside(u, *id);
    }
    for id in &mut s.gids {
        *id = to_inside(g, *id);
    }
    for id in &mut s.groups {
        *id = to_inside(g, *id);
    }
}

/// Before anything is touched: a tree in a user namespace other than cryo's is one cryo
/// restores when the root's namespace is a child of cryo's, every task is in it, and the tree
/// has a PID namespace of its own. Refused by name otherwise.
pub fn precheck(tree: &[(i32, i32)]) -> Result<(), UsernsError> {
    let own = ns_ino("self");
    let root = tree[0].0;
    let theirs = ns_ino(&root.to_string());
    for &(pid, _) in &tree[1..] {
        // A zombie has no namespaces left.
        let ns = ns_ino(&pid.to_string());
        if ns.is_some() && ns != theirs {
            return Err(Unsupported::of(
                pid,
                "user namespace",
                "the process runs in a user namespace other than the root's (nested user namespaces)",
                "dump the tree of that namespace on its own (its init as the root)",
            )
            .into());
        }
    }
    if theirs.is_none() || theirs == own {
        return Ok(());
    }
    let f =
        std::fs::File::open(format!("/proc/{root}/ns/user")).map_err(|source| UsernsError::Io {
            pid: root,
            what: "open /proc/PID/ns/user".into(),
            source,
        })?;
    let parent = crate::sys::ns::parent(f.as_fd())
        .ok()
        .and_then(|p| std::fs::File::from(p).metadata().ok().map(|m| m.ino()));
    if parent != own {
        return Err(Unsupported::of(
            root,
            "user namespace",
            "the process's user namespace is not a child of cryo's (nested twice or more)",
            "run cryo in the parent of the tree's user namespace (nsenter --user)",
        )
        .into());
    }
    let pidns = |p: &str| {
        std::fs::metadata(format!("/proc/{p}/ns/pid"))
            .ok()
            .map(|m| m.ino())
    };
    if pidns(&root.to_string()) == pidns("self") {
        return Err(Unsupported::of(
            root,
            "user namespace",
            "the tree has a user namespace of its own but shares cryo's PID namespace: its processes could not be given their PIDs from inside it",
            "start the tree in a PID namespace of its own too (unshare --user --pid --fork)",
        )
        .into());
    }
    if maps_of(root).is_none() {
        return Err(UsernsError::Io {
            pid: root,
            what: "read uid_map and gid_map".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
    }
    Ok(())
}

/// The root's user namespace when it is not cryo's: its id (`ids.user_ns_id`) and entry.
pub fn dump(root: i32, id: Option<u32>) -> Result<Option<(u32, pb::UsernsEntry)>, UsernsError> {
    let (Some(id), Some((uid_map, gid_map))) = (id, maps_of(root)) else {
        return Ok(None);
    };
    let deny = std::fs::read_to_string(format!("/proc/{root}/setgroups"))
        .map_err(|source| UsernsError::Io {
            pid: root,
            what: "read /proc/PID/setgroups".into(),
            source,
        })?
        .trim()
        == "deny";
    Ok(Some((
        id,
        pb::UsernsEntry {
            uid_map,
            gid_map,
            cryo_setgroups_deny: deny.then_some(true),
        },
    )))
}

/// Writes `userns-ID.img`.
pub fn write(dir: &ImageDir, ns: &Option<(u32, pb::UsernsEntry)>) -> Result<(), UsernsError> {
    if let Some((id, e)) = ns {
        dir.write(
            &format!("userns-{id}.img"),
            image::USERNS,
            std::slice::from_ref(e),
        )?;
    }
    Ok(())
}

/// The root's user namespace to make at restore: its entry when the root's `user_ns_id`
/// differs from the dumper's (`inventory.root_ids`). Checks the maps are ones the kernel
/// takes (1 to 340 extents each, counts not zero).
pub fn load(
    dir: &ImageDir,
    root: Option<u32>,
    dumper: Option<u32>,
) -> Result<Option<pb::UsernsEntry>, UsernsError> {
    let Some(id) = root.filter(|_| root != dumper && dumper.is_some()) else {
        return Ok(None);
    };
    let e: pb::UsernsEntry = dir.read_one(&format!("userns-{id}.img"), image::USERNS)?;
    for (name, m) in [("uid_map", &e.uid_map), ("gid_map", &e.gid_map)] {
        if m.is_empty() || m.len() > 340 || m.iter().any(|x| x.count == 0) {
            return Err(TaskError::BadImage(format!(
                "userns-{id}.img: the {name} has {} extents (1 to 340 of non-zero length expected)",
                m.len()
            ))
            .into());
        }
    }
    Ok(Some(e))
}

/// Gives the new user namespace of the stopped puppet `pid` the saved maps: `uid_map`,
/// then `setgroups` (before `gid_map`, as the kernel requires), then `gid_map`.
pub fn set_maps(pid: i32, e: &pb::UsernsEntry) -> Result<(), UsernsError> {
    let w = |file: &str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|source| UsernsError::Io {
            pid,
            what: format!("write /proc/PID/{file}"),
            source,
        })
    };
    w("uid_map", map_text(&e.uid_map))?;
    if e.cryo_setgroups_deny == Some(true) {
        w("setgroups", "deny".into())?;
    }
    w("gid_map", map_text(&e.gid_map))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_translate() {
        let m = parse_map("         0     100000      65536\n     65536       1000          1\n")
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(to_inside(&m, 100000), 0);
        assert_eq!(to_inside(&m, 100005), 5);
        assert_eq!(to_inside(&m, 1000), 65536);
        assert_eq!(to_inside(&m, 0), OVERFLOW_ID);
        assert_eq!(map_text(&m), "0 100000 65536\n65536 1000 1\n");
        let id = parse_map("0 0 4294967295\n").unwrap();
        assert_eq!(to_inside(&id, 4294967294), 4294967294);
        assert!(parse_map("0 0\n").is_none());
    }
}
