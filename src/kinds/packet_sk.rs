//! Packet sockets (AF_PACKET; files.img PACKETSK records, CRIU's `packet_sock_entry`): type
//! (raw or datagram), protocol, the interface it is bound to, its options (TPACKET version,
//! reserve, auxiliary data, original device, vnet header, loss, timestamp, copy threshold),
//! its memberships (promiscuous, all-multicast, multicast and unicast addresses) and its
//! fanout group, as CRIU saves them, from `sock_diag` (`PACKET_DIAG_*`), queried in the
//! socket's network namespace.
//!
//! Its receive and transmit rings (`PACKET_RX_RING`/`PACKET_TX_RING`) are saved by their
//! parameters (CRIU's `packet_ring`); the program's mappings of them are saved by
//! `kinds::memory` as socket mappings naming this file (contents not saved: frames in a
//! ring are lost, as in CRIU). The obsolete `SOCK_PACKET` type is saved with the interface
//! it is bound to (by index; bound again by name, as its bind takes one).
//!
//! Restore makes the socket in the tree's network namespace, binds it to the same interface
//! index (the interface must have it), and sets everything back in CRIU's order, rings
//! before the fanout. Frames waiting in the socket are lost, as in CRIU. Refused, naming the
//! fd: a membership counted more than once.

use std::os::fd::{AsFd, OwnedFd};

use super::error::{task_error_from, TaskError, Unsupported};
use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, TargetFd};
use super::DumpCx;
use crate::image::pb;
use crate::sys::{inet, net};

/// Why a packet socket could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PacketSkError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(PacketSkError);

/// Packet sockets.
pub struct PacketSk;

/// `AF_PACKET` as `sockaddr_ll.sll_family` and the sock_diag request's family byte.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 17
const AF_PACKET_U16: u16 = libc::AF_PACKET as u16;
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 17
const AF_PACKET_U8: u8 = libc::AF_PACKET as u8;
const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_RX_RING: i32 = 5;
const PACKET_TX_RING: i32 = 13;
/// `PACKET_DIAG_*` attributes (numbered from 0).
const DIAG_INFO: u16 = 0;
const DIAG_MCLIST: u16 = 1;
const DIAG_RX_RING: u16 = 2;
const DIAG_TX_RING: u16 = 3;
const DIAG_FANOUT: u16 = 4;
/// `PDI_*` flags of `packet_diag_info`.
const PDI_AUXDATA: u32 = 2;
const PDI_ORIGDEV: u32 = 4;
const PDI_VNETHDR: u32 = 8;
const PDI_LOSS: u32 = 16;
/// The obsolete packet socket type (linux/socket.h).
const SOCK_PACKET: i32 = 10;
/// Fanout not set (CRIU's default).
const NO_FANOUT: u32 = u32::MAX;

/// What `sock_diag` says of one packet socket.
#[derive(Debug, Default)]
struct Diag {
    ty: u8,
    /// Protocol, host order.
    num: u16,
    ino: u32,
    /// index, version, reserve, copy_thresh, tstamp, flags.
    info: Option<[u32; 6]>,
    /// (index, count, type, address).
    mclist: Vec<(u32, u32, u16, Vec<u8>)>,
    rx_ring: Option<pb::PacketRing>,
    tx_ring: Option<pb::PacketRing>,
    fanout: Option<u32>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn parse(b: &[u8]) -> Option<Diag> {
    let mut d = Diag {
        ty: *b.get(1)?,
        num: u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?),
        ino: u32_at(b, 4)?,
        ..Default::default()
    };
    let mut off = 16;
    while off + 4 <= b.len() {
        let len = u16::from_ne_bytes(b[off..off + 2].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(b[off + 2..off + 4].try_into().ok()?);
        if len < 4 || off + len > b.len() {
            break;
        }
        let v = &b[off + 4..off + len];
        match ty {
            DIAG_INFO => {
                let mut i = [0u32; 6];
                for (k, w) in i.iter_mut().enumerate() {
                    *w = u32_at(v, k * 4)?;
                }
                d.info = Some(i);
            }
            DIAG_MCLIST => {
                // packet_diag_mclist: index, count (u32), type, alen (u16), addr[32].
                for m in v.chunks_exact(44) {
                    let alen = (u16::from_ne_bytes(m[10..12].try_into().ok()?) as usize).min(32);
                    d.mclist.push((
                        u32_at(m, 0)?,
                        u32_at(m, 4)?,
                        u16::from_ne_bytes(m[8..10].try_into().ok()?),
                        m[12..12 + alen].to_vec(),
                    ));
                }
            }
            DIAG_RX_RING => d.rx_ring = Some(ring(v)?),
            DIAG_TX_RING => d.tx_ring = Some(ring(v)?),
            DIAG_FANOUT => d.fanout = u32_at(v, 0),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(d)
}

/// A `packet_diag_ring`: block size and count, frame size and count, retire timeout, private
/// size, features (u32 each), as CRIU's `packet_ring`.
fn ring(v: &[u8]) -> Option<pb::PacketRing> {
    Some(pb::PacketRing {
        block_size: u32_at(v, 0)?,
        block_nr: u32_at(v, 4)?,
        frame_size: u32_at(v, 8)?,
        frame_nr: u32_at(v, 12)?,
        retire_tmo: u32_at(v, 16)?,
        sizeof_priv: u32_at(v, 20)?,
        features: u32_at(v, 24)?,
    })
}

/// Sets a ring back (`tpacket_req3`: the kernel reads the fields its TPACKET version uses).
fn set_ring(s: std::os::fd::BorrowedFd<'_>, opt: i32, r: &pb::PacketRing) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(28);
    for w in [
        r.block_size,
        r.block_nr,
        r.frame_size,
        r.frame_nr,
        r.retire_tmo,
        r.sizeof_priv,
        r.features,
    ] {
        req.extend_from_slice(&w.to_ne_bytes());
    }
    inet::setsockopt_bytes(s, SOL_PACKET, opt, &req)
}

/// The packet sockets of the network namespace cryo's thread is in.
fn diag_all() -> std::io::Result<Vec<Diag>> {
    let mut req = Vec::with_capacity(20);
    req.push(AF_PACKET_U8);
    req.push(0); // protocol: any
    req.extend_from_slice(&[0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    let show = 1u32 | 2 | 4 | 8; // INFO | MCLIST | RING_CFG | FANOUT
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // cookie: none
    Ok(inet::diag_dump(&req)?
        .iter()
        .filter_map(|m| parse(m))
        .collect())
}

impl FdKind for PacketSk {
    const NAME: &'static str = "packet socket";
    const TYPE: pb::FdTypes = pb::FdTypes::Packetsk;
    /// Made (and bound to its interface) in the tree's network namespace.
    const IN_TREE_NS: bool = true;
    type Error = PacketSkError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.socket.is_some_and(|(d, _, _)| d == libc::AF_PACKET)
    }

    fn dump(
        _cx: &mut DumpCx<'_>,
        fd: &TargetFd<'_>,
        id: u32,
    ) -> Result<pb::FileEntry, PacketSkError> {
        let ino = super::unix_sk::inode(fd.link).unwrap_or(0);
        let object = || format!("fd {} (packet socket, {})", fd.fd, fd.link);
        let all = {
            let _in = super::ns::InNs::enter(fd.pid, false)
                .map_err(|e| fd.err("enter its network namespace", e))?;
            diag_all().map_err(|e| fd.err("sock_diag (packet)", e))?
        };
        let d = all.into_iter().find(|d| d.ino == ino).ok_or_else(|| {
            Unsupported::of(
                fd.pid,
                object(),
                "sock_diag does not list it (is the packet_diag module there?)",
                "load packet_diag (modprobe packet_diag), or close it before the dump",
            )
        })?;
        let refuse = |what: &str, hint: &str| -> PacketSkError {
            Unsupported::of(fd.pid, object(), what, hint).into()
        };
        if let Some(m) = d.mclist.iter().find(|m| m.1 != 1) {
            return Err(refuse(
                &format!(
                    "membership of type {} on interface {} is counted {} times",
                    m.2, m.0, m.1
                ),
                "join it once, or close the socket before the dump",
            ));
        }
        let [index, version, reserve, copy_thresh, tstamp, flags] = d.info.ok_or_else(|| {
            fd.err(
                "sock_diag gave no PACKET_DIAG_INFO",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        let sk = fd.take()?;
        let s = sk.as_fd();
        let int = |opt| {
            net::getsockopt_int(s, libc::SOL_SOCKET, opt).map_err(|e| fd.err("getsockopt", e))
        };
        let opts = pb::SkOptsEntry {
            so_sndbuf: int(libc::SO_SNDBUF)?.cast_unsigned(),
            so_rcvbuf: int(libc::SO_RCVBUF)?.cast_unsigned(),
            so_priority: Some(int(libc::SO_PRIORITY)?.cast_unsigned()),
            so_mark: Some(int(libc::SO_MARK)?.cast_unsigned()).filter(|&m| m != 0),
            ..Default::default()
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Packetsk as i32,
            id,
            psk: Some(pb::PacketSockEntry {
                id,
                r#type: u32::from(d.ty),
                // Network byte order, as socket() takes it.
                protocol: u32::from(d.num.to_be()),
                flags: fd.flags(),
                ifindex: index,
                fown: Default::default(),
                opts,
                version,
                reserve,
                aux_data: flags & PDI_AUXDATA != 0,
                orig_dev: flags & PDI_ORIGDEV != 0,
                vnet_hdr: flags & PDI_VNETHDR != 0,
                loss: flags & PDI_LOSS != 0,
                timestamp: tstamp,
                copy_thresh,
                mclist: d
                    .mclist
                    .iter()
                    .map(|(index, _, ty, addr)| pb::PacketMclist {
                        index: *index,
                        r#type: u32::from(*ty),
                        addr: addr.clone(),
                    })
                    .collect(),
                fanout: d.fanout.filter(|&f| f != NO_FANOUT),
                rx_ring: d.rx_ring,
                tx_ring: d.tx_ring,
                ns_id: None,
            }),
            ..Default::default()
        })
    }

    fn open(_objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, PacketSkError> {
        let p = e
            .psk
            .as_ref()
            .ok_or_else(|| missing(e.id, "packet socket"))?;
        let err = |what: &str| obj_err(e.id, format!("packet socket: {what}"));
        if p.r#type.cast_signed() == SOCK_PACKET {
            return open_spkt(e, p);
        }
        let sk = inet::socket(
            libc::AF_PACKET,
            p.r#type.cast_signed(),
            p.protocol.cast_signed(),
        )
        .map_err(err("socket"))?;
        let s = sk.as_fd();
        // sockaddr_ll: family, protocol (0: keep), ifindex, then unused fields.
        let mut ll = [0u8; 20];
        ll[0..2].copy_from_slice(&AF_PACKET_U16.to_ne_bytes());
        ll[4..8].copy_from_slice(&p.ifindex.cast_signed().to_ne_bytes());
        inet::bind_raw(s, &ll).map_err(err(&format!("bind to interface {}", p.ifindex)))?;
        let set = |opt, v: u32, what: &str| {
            net::setsockopt_int(s, SOL_PACKET, opt, v.cast_signed()).map_err(err(what))
        };
        set(PACKET_VERSION, p.version, "PACKET_VERSION")?;
        set(PACKET_RESERVE, p.reserve, "PACKET_RESERVE")?;
        set(PACKET_TIMESTAMP, p.timestamp, "PACKET_TIMESTAMP")?;
        set(PACKET_COPY_THRESH, p.copy_thresh, "PACKET_COPY_THRESH")?;
        for (on, opt, what) in [
            (p.aux_data, PACKET_AUXDATA, "PACKET_AUXDATA"),
            (p.orig_dev, PACKET_ORIGDEV, "PACKET_ORIGDEV"),
            (p.vnet_hdr, PACKET_VNET_HDR, "PACKET_VNET_HDR"),
            (p.loss, PACKET_LOSS, "PACKET_LOSS"),
        ] {
            if on {
                set(opt, 1, what)?;
            }
        }
        for m in &p.mclist {
            // packet_mreq: ifindex (int), type, alen (u16), address[8].
            let mut mr = [0u8; 16];
            mr[0..4].copy_from_slice(&m.index.cast_signed().to_ne_bytes());
            // A type beyond 16 bits (a damaged image): one the kernel refuses.
            let ty = u16::try_from(m.r#type).unwrap_or(u16::MAX);
            mr[4..6].copy_from_slice(&ty.to_ne_bytes());
            let alen = m.addr.len().min(8);
            mr[6..8].copy_from_slice(&u16::try_from(alen).unwrap_or(8).to_ne_bytes());
            mr[8..8 + alen].copy_from_slice(&m.addr[..alen]);
            inet::setsockopt_bytes(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr)
                .map_err(err("PACKET_ADD_MEMBERSHIP"))?;
        }
        if let Some(r) = &p.rx_ring {
            set_ring(s, PACKET_RX_RING, r).map_err(err("PACKET_RX_RING"))?;
        }
        if let Some(r) = &p.tx_ring {
            set_ring(s, PACKET_TX_RING, r).map_err(err("PACKET_TX_RING"))?;
        }
        if let Some(f) = p.fanout.filter(|&f| f != NO_FANOUT) {
            set(PACKET_FANOUT, f, "PACKET_FANOUT")?;
        }
        set_sk_opts(s, p, e.id)?;
        Ok(sk)
    }
}

/// A `SOCK_PACKET` socket, as CRIU makes it: bound (when it was) to its interface by name,
/// then its file flags and socket options; it has no packet options.
fn open_spkt(e: &pb::FileEntry, p: &pb::PacketSockEntry) -> Result<OwnedFd, PacketSkError> {
    let err = |what: &str| obj_err(e.id, format!("packet socket (SOCK_PACKET): {what}"));
    let sk = inet::socket(libc::AF_PACKET, SOCK_PACKET, p.protocol.cast_signed())
        .map_err(err("socket"))?;
    let s = sk.as_fd();
    if p.ifindex > 0 {
        let name =
            inet::if_name(p.ifindex).map_err(err(&format!("name of interface {}", p.ifindex)))?;
        // struct sockaddr: family, then the name in sa_data[14] (the kernel adds the NUL:
        // a name of 14 bytes fits whole; a longer one cannot be named there).
        let mut sa = [0u8; 16];
        sa[0..2].copy_from_slice(&AF_PACKET_U16.to_ne_bytes());
        if name.len() > 14 {
            return Err(err(&format!("bind to {name}"))(std::io::Error::other(
                "the name is longer than the 14 bytes a SOCK_PACKET address holds",
            ))
            .into());
        }
        sa[2..2 + name.len()].copy_from_slice(name.as_bytes());
        inet::bind_raw(s, &sa).map_err(err(&format!("bind to {name}")))?;
    }
    set_sk_opts(s, p, e.id)?;
    Ok(sk)
}

/// The socket options and file flags, last (CRIU's `restore_socket_opts`, `rst_file_params`).
fn set_sk_opts(
    s: std::os::fd::BorrowedFd<'_>,
    p: &pb::PacketSockEntry,
    id: u32,
) -> Result<(), PacketSkError> {
    let err = |what: &str| obj_err(id, format!("packet socket: {what}"));
    let o = &p.opts;
    net::setsockopt_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        (o.so_sndbuf / 2).cast_signed(),
    )
    .map_err(err("SO_SNDBUFFORCE"))?;
    net::setsockopt_int(
        s,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        (o.so_rcvbuf / 2).cast_signed(),
    )
    .map_err(err("SO_RCVBUFFORCE"))?;
    if let Some(v) = o.so_priority.filter(|&v| v != 0) {
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PRIORITY, v.cast_signed())
            .map_err(err("SO_PRIORITY"))?;
    }
    if let Some(v) = o.so_mark {
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_MARK, v.cast_signed())
            .map_err(err("SO_MARK"))?;
    }
    set_fl(s, p.flags, id)?;
    Ok(())
}
