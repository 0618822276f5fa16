//! Netlink sockets (files.img NETLINKSK records, CRIU's `netlink_sk_entry`): protocol, the
//! port id it is bound to, its multicast groups, the port or group it is connected to, and
//! socket options.
//!
//! Dump reads everything from cryo's copy of the socket: `getsockname` (port id, first 32
//! groups), `NETLINK_LIST_MEMBERSHIPS` (every group), `getpeername` (destination). A socket
//! with a message waiting to be read is refused, as CRIU does (the kernel's messages cannot
//! be put back): the program should read it, then the dump is tried again.
//!
//! Restore makes the socket in the tree's network namespace and binds it to the same port id
//! (if that id is taken there, the kernel picks another one, with a warning, as CRIU), joins
//! its groups (beyond the first 32 with `NETLINK_ADD_MEMBERSHIP`, where CRIU refuses), and
//! connects it again. Family ids of generic netlink and the socket's netlink options
//! (`NETLINK_PKTINFO`, `NETLINK_EXT_ACK`, ...) are not kept, as in CRIU.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, TargetFd};
use super::DumpCx;
use crate::image::pb;
use crate::sys::{inet, net};

/// Why a netlink socket could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkSkError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(NetlinkSkError);

/// Netlink sockets.
pub struct NetlinkSk;

const SOL_NETLINK: i32 = 270;
/// `AF_NETLINK` as `sockaddr_nl.nl_family`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 16
const AF_NETLINK_U16: u16 = libc::AF_NETLINK as u16;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// `netlink_sk_entry.state`.
const UNCONNECTED: u32 = 0;
const CONNECTED: u32 = 1;

/// (port id, groups bitmap of the first 32) of a `sockaddr_nl`.
fn parse_nl(b: &[u8]) -> Option<(u32, u32)> {
    let fam = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    if i32::from(fam) != libc::AF_NETLINK {
        return None;
    }
    Some((
        u32::from_ne_bytes(b.get(4..8)?.try_into().ok()?),
        u32::from_ne_bytes(b.get(8..12)?.try_into().ok()?),
    ))
}

fn sockaddr_nl(pid: u32, groups: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&AF_NETLINK_U16.to_ne_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&pid.to_ne_bytes());
    b.extend_from_slice(&groups.to_ne_bytes());
    b
}

/// A name for a netlink protocol, for messages.
fn proto_name(p: u32) -> String {
    match p.cast_signed() {
        libc::NETLINK_ROUTE => "NETLINK_ROUTE".into(),
        libc::NETLINK_AUDIT => "NETLINK_AUDIT".into(),
        libc::NETLINK_KOBJECT_UEVENT => "NETLINK_KOBJECT_UEVENT".into(),
        libc::NETLINK_GENERIC => "NETLINK_GENERIC".into(),
        libc::NETLINK_SOCK_DIAG => "NETLINK_SOCK_DIAG".into(),
        libc::NETLINK_NETFILTER => "NETLINK_NETFILTER".into(),
        o => format!("netlink protocol {o}"),
    }
}

/// The groups the socket belongs to, one bit per group, in 32-bit words.
fn memberships(s: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let mut b = vec![0u8; 128];
    let n = inet::getsockopt_bytes(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut b)?;
    let mut words: Vec<u32> = b[..n.min(b.len())]
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

impl FdKind for NetlinkSk {
    const NAME: &'static str = "netlink socket";
    const TYPE: pb::FdTypes = pb::FdTypes::Netlinksk;
    /// Made in the tree's network namespace.
    const IN_TREE_NS: bool = true;
    type Error = NetlinkSkError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.socket.is_some_and(|(d, _, _)| d == libc::AF_NETLINK)
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, NetlinkSkError> {
        let sk = fd.take()?;
        let s = sk.as_fd();
        let proto = net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)
            .map_err(|e| fd.err("SO_PROTOCOL", e))?
            .cast_unsigned();
        let object = || format!("fd {} ({}, {})", fd.fd, proto_name(proto), fd.link);
        if inet::poll_now(s, libc::POLLIN).map_err(|e| fd.err("poll", e))? & libc::POLLIN != 0 {
            return Err(Unsupported::of(
                fd.pid,
                object(),
                "a message waits to be read on it (the kernel's messages cannot be put back)",
                "dump again once the program has read it",
            )
            .into());
        }
        let (portid, _) = inet::sockname(s)
            .ok()
            .and_then(|b| parse_nl(&b))
            .ok_or_else(|| {
                fd.err(
                    "getsockname",
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                )
            })?;
        let groups = memberships(s).map_err(|e| fd.err("NETLINK_LIST_MEMBERSHIPS", e))?;
        let (dst_portid, dst_groups) = inet::peername(s)
            .ok()
            .and_then(|b| parse_nl(&b))
            .unwrap_or((0, 0));
        let dst_group = if dst_groups == 0 {
            0
        } else {
            dst_groups.trailing_zeros() + 1
        };
        let ino = super::unix_sk::inode(fd.link).unwrap_or(0);
        let opts = pb::SkOptsEntry {
            so_sndbuf: net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF)
                .map_err(|e| fd.err("SO_SNDBUF", e))?
                .cast_unsigned(),
            so_rcvbuf: net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF)
                .map_err(|e| fd.err("SO_RCVBUF", e))?
                .cast_unsigned(),
            so_passcred: Some(
                net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PASSCRED).unwrap_or(0) != 0,
            ),
            ..Default::default()
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Netlinksk as i32,
            id,
            nlsk: Some(pb::NetlinkSkEntry {
                id,
                ino,
                protocol: proto,
                state: if dst_portid != 0 || dst_group != 0 {
                    CONNECTED
                } else {
                    UNCONNECTED
                },
                flags: fd.flags(),
                portid,
                groups,
                dst_portid,
                dst_group,
                fown: Default::default(),
                opts,
                ns_id: None,
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, NetlinkSkError> {
        let n = e
            .nlsk
            .as_ref()
            .ok_or_else(|| missing(e.id, "netlink socket"))?;
        let err = |what: &str| obj_err(e.id, format!("{} socket: {what}", proto_name(n.protocol)));
        let sk = inet::socket(libc::AF_NETLINK, libc::SOCK_RAW, n.protocol.cast_signed())
            .map_err(err("socket"))?;
        let s = sk.as_fd();
        if n.portid != 0 {
            let first = n.groups.first().copied().unwrap_or(0);
            if let Err(e1) = inet::bind_raw(s, &sockaddr_nl(n.portid, first)) {
                // Port ids are per namespace: another socket may hold this one now.
                tracing::warn!(
                    "file {}: netlink port id {} is taken ({e1}); the kernel picks another",
                    e.id,
                    n.portid
                );
                inet::bind_raw(s, &sockaddr_nl(0, first)).map_err(err("bind"))?;
            }
            for (w, bits) in n.groups.iter().enumerate().skip(1) {
                for b in 0..32 {
                    if bits & (1 << b) != 0 {
                        // Past i32 (a damaged image): a group the kernel refuses, named in the error.
                        let group = i32::try_from(w * 32 + b + 1).unwrap_or(i32::MAX);
                        net::setsockopt_int(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                            .map_err(err(&format!("join group {group}")))?;
                    }
                }
            }
        }
        if n.state == CONNECTED {
            let g = if n.dst_group == 0 {
                0
            } else {
                1u32.checked_shl(n.dst_group - 1).unwrap_or(0)
            };
            inet::connect_raw(s, &sockaddr_nl(n.dst_portid, g)).map_err(err("connect"))?;
        }
        let o = &n.opts;
        net::set_buffer_sizes(s, o.so_sndbuf, o.so_rcvbuf).map_err(|(what, e)| err(what)(e))?;
        if o.so_passcred == Some(true) {
            net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
                .map_err(err("SO_PASSCRED"))?;
        }
        set_fl(s, n.flags, e.id)?;
        Ok(sk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_nl_round_trips() {
        assert_eq!(parse_nl(&sockaddr_nl(4242, 0x11)), Some((4242, 0x11)));
    }
}
