//! tun/tap files: open `/dev/net/tun` fds (files.img TUNF records, CRIU's `tunfile_entry`),
//! each attached to a device of a network namespace of the tree (a queue), detached from
//! it (`TUNSETQUEUE IFF_DETACH_QUEUE`, multi-queue devices), or attached to nothing yet.
//!
//! Dump reads, through a copy of the fd, the device and flags (`TUNGETIFF`) and the
//! namespace the file belongs to (`SIOCGSKNS`: the namespace of the task that opened it,
//! saved as `ns_id`). As CRIU, a REG record with the same id names `/dev/net/tun` and keeps
//! the open flags (CRIU's restore opens the file through it). The devices themselves are
//! links of their namespace, saved by `kinds::netns` (netdev `tun` entry); their vnet header
//! size and send buffer, which only an attached file tells, are read by [`queues_of`] from
//! the tree's files. A file of cryo's own network namespace, or of one whose contents are not
//! saved (`--external net`, `--empty-ns net`), is refused: its device would not be made
//! again (CRIU requires a network namespace too).
//!
//! Restore: the namespace's links are made first, every tun/tap device persistent
//! (`kinds::netns`). Each file is opened in its namespace (through a restored process of
//! it, `FdObjects::net_ns_host`), attached with the device's saved flags, detached again if
//! it was, and a device that was not persistent loses its persistence through its first
//! file, as CRIU does: it then lives as long as its files. A failed restore closes cryo's
//! files and kills the tree, whose namespace takes the devices with it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, TargetFd};
use super::DumpCx;
use crate::image::{self, pb};
use crate::sys::{fd as sysfd, inet, tun};

/// Why a tun/tap file could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(TunError);

/// tun/tap files.
pub struct Tun;

/// The flags `TUNSETIFF` keeps on a device: TUN or TAP, no packet info, vnet header,
/// multi-queue.
pub const KEEP_FLAGS: u32 = 0x0001 | 0x0002 | 0x1000 | 0x4000 | 0x0100;
/// `IFF_PERSIST` in `tun_link_entry.flags`.
const IFF_PERSIST: u32 = 0x0800;
const IFF_TAP: u16 = 0x0002;

/// The path CRIU's REG record of a tun file names.
const TUN_PATH: &str = "/dev/net/tun";

/// The network namespace (inode) tun file `fd` belongs to.
fn netns_ino(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    let ns = inet::socket_netns(fd)?;
    Ok(std::fs::File::from(ns).metadata()?.ino())
}

fn own_netns_ino() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// A copy of `pid`'s fd `fd` in cryo.
fn copy_fd(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    let pidfd = sysfd::pidfd_open(pid)?;
    sysfd::pidfd_getfd(pidfd.as_fd(), fd)
}

/// What an attached file tells of its device that its link info does not.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    pub vnethdr: u32,
    pub sndbuf: u32,
}

/// The tun/tap devices of network namespace `ns_ino` that files of the tree's processes
/// `tree` are on (attached or detached), by name, each with what its first file tells
/// (CRIU reads the same from the first file it dumps). A tap device with a filter is
/// refused, as CRIU does (the filter program lives in the memory of whoever set it).
pub fn queues_of(tree: &[i32], ns_ino: u64) -> Result<HashMap<String, Queue>, TunError> {
    let mut out = HashMap::new();
    for &pid in tree {
        for fd in crate::procfs::fds(pid)? {
            let path = format!("/proc/{pid}/fd/{fd}");
            let Ok(m) = std::fs::metadata(&path) else {
                continue;
            };
            if !(m.file_type().is_char_device() && tun::is_tun_dev(m.rdev())) {
                continue;
            }
            let err = |what: &str| {
                let what = what.to_string();
                move |source| TaskError::Fd {
                    pid,
                    fd,
                    what,
                    source,
                }
            };
            let copy = copy_fd(pid, fd).map_err(err("pidfd_getfd"))?;
            if netns_ino(copy.as_fd()).map_err(err("SIOCGSKNS (tun file)"))? != ns_ino {
                continue;
            }
            let Some((name, flags)) = tun::get_iff(copy.as_fd()).map_err(err("TUNGETIFF"))? else {
                continue;
            };
            if out.contains_key(&name) {
                continue;
            }
            if flags & IFF_TAP != 0
                && tun::filter_len(copy.as_fd()).map_err(err("TUNGETFILTER"))? != 0
            {
                return Err(Unsupported::of(
                    pid,
                    format!("fd {fd} (tap device {name})"),
                    "the tap device has a packet filter (TUNATTACHFILTER), which cannot be saved",
                    "a filter stays once set (TUNDETACHFILTER does not remove it): close the device's files and make the device again without one",
                )
                .into());
            }
            let (vnethdr, sndbuf) =
                tun::vnethdr_sndbuf(copy.as_fd()).map_err(err("TUNGETVNETHDRSZ/TUNGETSNDBUF"))?;
            out.insert(name, Queue { vnethdr, sndbuf });
        }
    }
    Ok(out)
}

/// Restore: the tun/tap links of the tree's saved network namespaces, by (namespace id in
/// the images, name): their saved flags and send buffer. Read from netdev-ID.img on first
/// use.
#[derive(Default)]
struct Links {
    loaded: HashSet<u32>,
    links: HashMap<(u32, String), (u32, u32)>,
}

impl FdKind for Tun {
    const NAME: &'static str = "tun/tap file";
    const TYPE: pb::FdTypes = pb::FdTypes::Tunf;
    /// Opened (and attached) in its device's network namespace.
    const IN_TREE_NS: bool = true;
    type Error = TunError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.meta
            .is_some_and(|m| m.file_type().is_char_device() && tun::is_tun_dev(m.rdev()))
    }

    /// A file of cryo's own network namespace, or of one no process of the tree is in:
    /// refused before the tree is touched.
    fn precheck(p: &FdProbe<'_>) -> Result<(), TunError> {
        let copy = copy_fd(p.pid, p.fd).map_err(|source| TaskError::Fd {
            pid: p.pid,
            fd: p.fd,
            what: "pidfd_getfd".into(),
            source,
        })?;
        let ino = netns_ino(copy.as_fd()).map_err(|source| TaskError::Fd {
            pid: p.pid,
            fd: p.fd,
            what: "SIOCGSKNS (tun file)".into(),
            source,
        })?;
        if Some(ino) == own_netns_ino() {
            return Err(refuse_ns(p.pid, p.fd, "cryo's own network namespace").into());
        }
        if !p
            .tree
            .iter()
            .any(|t| std::fs::metadata(format!("/proc/{t}/ns/net")).is_ok_and(|m| m.ino() == ino))
        {
            return Err(refuse_ns(
                p.pid,
                p.fd,
                &format!("network namespace net:[{ino}], which no process of the tree is in"),
            )
            .into());
        }
        Ok(())
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, TunError> {
        let copy = fd.take()?;
        let ino = netns_ino(copy.as_fd()).map_err(|e| fd.err("SIOCGSKNS (tun file)", e))?;
        // Its namespace must be one whose links are saved: a namespace of a process of the
        // tree, neither cryo's nor external nor left empty.
        let tree_ns =
            cx.files.tree.iter().any(|p| {
                std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == ino)
            });
        let why = if Some(ino) == own_netns_ino() {
            Some("cryo's own network namespace")
        } else if !tree_ns {
            Some("a network namespace no process of the tree is in")
        } else if cx.files.external_net.contains_key(&ino) {
            Some("an external network namespace (--external net)")
        } else if cx.files.empty_net {
            Some("a network namespace restored empty (--empty-ns net)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(refuse_ns(fd.pid, fd.fd, why).into());
        }
        let iff = tun::get_iff(copy.as_fd()).map_err(|e| fd.err("TUNGETIFF", e))?;
        // CRIU's REG record of the same id: the path and the open flags.
        cx.files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags: fd.flags(),
                pos: 0,
                fown: Default::default(),
                name: TUN_PATH.into(),
                mnt_id: (fd.info.mnt_id >= 0).then_some(fd.info.mnt_id),
                mode: fd.meta.map(MetadataExt::mode),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (netdev, detached) = match iff {
            Some((name, flags)) => (
                Some(name),
                (flags & tun::IFF_DETACH_QUEUE != 0).then_some(true),
            ),
            None => (None, None),
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Tunf as i32,
            id,
            tunf: Some(pb::TunfileEntry {
                id,
                netdev,
                detached,
                ns_id: Some(super::misc::ns_id(ino)),
            }),
            ..Default::default()
        })
    }

    /// The saved flags of the tun/tap links of the namespaces the tree's tun files are in.
    fn load(objs: &mut FdObjects) -> Result<(), TunError> {
        let mut want: Vec<u32> = objs
            .files
            .values()
            .filter_map(|e| e.tunf.as_ref().and_then(|t| t.ns_id))
            .collect();
        want.extend(objs.cur_net_ns);
        let links = objs.kinds.get::<Links>();
        for ns in want {
            if !links.loaded.insert(ns) {
                continue;
            }
            let devs: Vec<pb::NetDeviceEntry> = objs
                .dir
                .read_opt(&format!("netdev-{ns}.img"), image::NETDEV)?
                .unwrap_or_default();
            for d in devs {
                if let Some(t) = d.tun {
                    links.links.insert((ns, d.name), (t.flags, t.sndbuf));
                }
            }
        }
        Ok(())
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, TunError> {
        let t = e.tunf.as_ref().ok_or_else(|| missing(e.id, "tun file"))?;
        let err = |what: &str| obj_err(e.id, format!("tun/tap file: {what}"));
        // The open flags are in the REG record of the same id (merged into this entry when
        // files.img was read); O_RDWR without it.
        let flags = e
            .reg
            .as_ref()
            .map_or(libc::O_RDWR.cast_unsigned(), |r| r.flags);
        let access = flags.cast_signed() & libc::O_ACCMODE;
        let f = tun::open(access | libc::O_CLOEXEC).map_err(err("open /dev/net/tun"))?;
        if let Some(dev) = &t.netdev {
            let ns = t.ns_id.or(objs.cur_net_ns).unwrap_or(0);
            let (saved, sndbuf) = objs
                .kinds
                .get::<Links>()
                .links
                .get(&(ns, dev.clone()))
                .copied()
                .ok_or_else(|| {
                    TaskError::BadImage(format!(
                        "files.img entry {}: tun/tap file attached to {dev}, which netdev-{ns}.img does not list",
                        e.id
                    ))
                })?;
            // All IFF_* bits kept are below 1 << 16.
            let keep = u16::try_from(saved & KEEP_FLAGS).unwrap_or_default();
            tun::attach(f.as_fd(), dev, keep)
                .map_err(err(&format!("attach to {dev} (TUNSETIFF)")))?;
            // A file's send buffer is its own, set from the device's when the device is
            // made (by cryo's file, closed since) or set: set again for this one.
            if sndbuf > 0 {
                tun::set_sndbuf(f.as_fd(), sndbuf)
                    .map_err(err(&format!("set the send buffer of {dev}")))?;
            }
            if saved & IFF_PERSIST == 0 {
                tun::set_persist(f.as_fd(), false)
                    .map_err(err(&format!("drop the persistence of {dev}")))?;
            }
            if t.detached == Some(true) {
                tun::set_queue(f.as_fd(), tun::IFF_DETACH_QUEUE)
                    .map_err(err(&format!("detach the queue from {dev}")))?;
            }
        }
        set_fl(f.as_fd(), flags, e.id)?;
        Ok(f)
    }
}

/// A tun file whose device cryo would not make again.
fn refuse_ns(pid: i32, fd: i32, why: &str) -> Unsupported {
    Unsupported::of(
        pid,
        format!("fd {fd} ({TUN_PATH})"),
        format!("a tun/tap file of {why}: its device is not saved, so it could not be attached again"),
        "run the program in a network namespace of its own that is dumped with it (unshare -n, ip netns exec), as CRIU requires, or close the file before the dump",
    )
}
