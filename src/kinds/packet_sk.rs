//! Packet sockets (AF_PACKET; files.img PACKETSK records, CRIU's `packet_sock_entry`): type
//! (raw or datagram), protocol, the interface it is bound to, its options (TPACKET version,
//! reserve, auxiliary data, original device, vnet header, loss, timestamp, copy threshold),
//! its memberships (promiscuous, all-multicast, multicast and unicast addresses) and its
//! fanout group, as CRIU saves them, from `sock_diag` (`PACKET_DIAG_*`), queried in the
//! socket's network namespace.
//!
//! Restore makes the socket in the tree's network namespace, binds it to the same interface
//! index (the interface must have it), and sets everything back in CRIU's order. Frames
//! waiting in the socket are lost, as in CRIU. Refused, naming the fd: mmapped rings
//! (`PACKET_RX_RING`/`PACKET_TX_RING`: CRIU re-maps them, cryo not yet), the obsolete
//! `SOCK_PACKET` type, and a membership counted more than once.

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
    rings: bool,
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
            DIAG_RX_RING | DIAG_TX_RING => d.rings = true,
            DIAG_FANOUT => d.fanout = u32_at(v, 0),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(d)
}

/// The packet sockets of the network namespace cryo's thread is in.
fn diag_all() -> std::io::Result<Vec<Diag>> {
    let mut req = Vec::with_capacity(20);
    req.push(libc::AF_PACKET as u8);
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
        if d.ty as i32 == SOCK_PACKET {
            return Err(refuse(
                "the obsolete SOCK_PACKET type is not supported",
                "use SOCK_RAW or SOCK_DGRAM, or close it before the dump",
            ));
        }
        if d.rings {
            return Err(refuse(
                "mmapped rings (PACKET_RX_RING/PACKET_TX_RING) are not supported yet",
                "close it before the dump",
            ));
        }
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
            so_sndbuf: int(libc::SO_SNDBUF)? as u32,
            so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
            so_priority: Some(int(libc::SO_PRIORITY)? as u32),
            so_mark: Some(int(libc::SO_MARK)? as u32).filter(|&m| m != 0),
            ..Default::default()
        };
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Packetsk as i32,
            id,
            psk: Some(pb::PacketSockEntry {
                id,
                r#type: d.ty as u32,
                // Network byte order, as socket() takes it.
                protocol: d.num.to_be() as u32,
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
                        r#type: *ty as u32,
                        addr: addr.clone(),
                    })
                    .collect(),
                fanout: d.fanout.filter(|&f| f != NO_FANOUT),
                rx_ring: None,
                tx_ring: None,
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
        if p.rx_ring.is_some() || p.tx_ring.is_some() || p.r#type as i32 == SOCK_PACKET {
            return Err(Unsupported::restore(format!(
                "file {}: a packet socket with mmapped rings or of type SOCK_PACKET",
                e.id
            ))
            .into());
        }
        let sk = inet::socket(libc::AF_PACKET, p.r#type as i32, p.protocol as i32)
            .map_err(err("socket"))?;
        let s = sk.as_fd();
        // sockaddr_ll: family, protocol (0: keep), ifindex, then unused fields.
        let mut ll = [0u8; 20];
        ll[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        ll[4..8].copy_from_slice(&(p.ifindex as i32).to_ne_bytes());
        inet::bind_raw(s, &ll).map_err(err(&format!("bind to interface {}", p.ifindex)))?;
        let set = |opt, v: u32, what: &str| {
            net::setsockopt_int(s, SOL_PACKET, opt, v as i32).map_err(err(what))
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
            mr[0..4].copy_from_slice(&(m.index as i32).to_ne_bytes());
            mr[4..6].copy_from_slice(&(m.r#type as u16).to_ne_bytes());
            let alen = m.addr.len().min(8);
            mr[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
            mr[8..8 + alen].copy_from_slice(&m.addr[..alen]);
            inet::setsockopt_bytes(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr)
                .map_err(err("PACKET_ADD_MEMBERSHIP"))?;
        }
        if let Some(f) = p.fanout.filter(|&f| f != NO_FANOUT) {
            set(PACKET_FANOUT, f, "PACKET_FANOUT")?;
        }
        let o = &p.opts;
        net::setsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (o.so_sndbuf / 2) as i32,
        )
        .map_err(err("SO_SNDBUFFORCE"))?;
        net::setsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (o.so_rcvbuf / 2) as i32,
        )
        .map_err(err("SO_RCVBUFFORCE"))?;
        if let Some(v) = o.so_priority.filter(|&v| v != 0) {
            net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PRIORITY, v as i32)
                .map_err(err("SO_PRIORITY"))?;
        }
        if let Some(v) = o.so_mark {
            net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_MARK, v as i32)
                .map_err(err("SO_MARK"))?;
        }
        set_fl(s, p.flags, e.id)?;
        Ok(sk)
    }
}
