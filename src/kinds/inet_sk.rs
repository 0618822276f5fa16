//! Inet sockets, IPv4 and IPv6 (IPv4-mapped too): TCP (unbound, bound, listening,
//! established and half-closed connections), UDP / UDP-Lite (bound, connected, with their
//! queued datagrams), ICMP echo ("ping") sockets and raw sockets of any protocol (bound,
//! connected, with their header-include, no-defrag and ICMP filter options; what is queued
//! on them is not saved, as in CRIU), each restored on the same fd with its options, as
//! CRIU's `inetsk` records in files.img (`inet_sk_entry`), plus `tcp-stream-INO.img` per
//! connection.
//!
//! Dump, through cryo's copy of the target's socket (`pidfd_getfd`: the same socket):
//! addresses (`getsockname`, `SO_PEERNAME`), the TCP state and a listener's backlog
//! (`TCP_INFO`), socket, IP and TCP options (and, beyond CRIU, `TCP_USER_TIMEOUT`,
//! `TCP_CONGESTION`, the IPv6 traffic class and hop limit), shutdown state (`poll`). A
//! connection needs `--tcp-established`: the tree's connections are locked first (all at
//! once, one `nft` run: [`InetDump`]), then each socket goes into repair mode and
//! `tcp_repair::save` reads it. The copies stay in repair mode until the end of the dump:
//! when the tree is killed they close silently and the lock stays, for the restore to lift
//! ([`InetDump::keep`]); on any failure, or with `--leave-running`, repair mode is turned off
//! again and the lock removed before the tree goes on ([`InetDump::resume`], also on drop).
//! Datagrams queued on a UDP socket are peeked (`SO_PEEK_OFF`) with their source address
//! into sk-queues.img (CRIU drops them).
//!
//! Restore makes each socket in cryo in the tree's network namespace: `SO_REUSEADDR` and
//! `SO_REUSEPORT` on while sockets share ports, `IP_FREEBIND` while binding; a listener binds
//! and listens, a UDP socket binds and connects, its datagrams are sent again from their
//! source on a raw socket; a connection is rebuilt in repair mode by `tcp_repair::restore`.
//! What must wait for the tree to be complete is kept in [`InetStore`] and done by
//! [`Finish::run`] just before the tree resumes: the dump's lock is removed (CRIU's, too),
//! then each connection leaves repair mode (the kernel sends a window probe, the peer
//! answers, the connection goes on), sends what the program had written but the kernel not
//! sent yet, and every socket gets its own `SO_REUSEADDR`/`SO_REUSEPORT` back.
//!
//! Refused before the tree is touched ([`InetSk::precheck`]), naming the fd and the
//! addresses: a connection without `--tcp-established`/`--tcp-close`, a listener with
//! connections not accepted yet without `--skip-in-flight`, a corked UDP socket, and
//! protocols other than TCP, UDP, UDP-Lite, ping and raw (MPTCP, SCTP). A socket made in
//! another network namespace of the tree than its process's (the process entered it, made
//! the socket and came back) is saved with that namespace's `ns_id` (`SIOCGSKNS`), as CRIU,
//! locked there, and made there at restore (through a restored process of it,
//! `FdObjects::net_ns_host`); one of a namespace no process of the tree is in is refused
//! before the tree is touched, naming the namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::error::{task_error_from, Failure, TaskError, Unsupported};
use super::files::{missing, obj_err, set_fl, FdKind, FdObjects, FdProbe, SockOpts, TargetFd};
use super::tcp_repair::{self, is_connection, state_name, CLOSE, ESTABLISHED, LISTEN};
use super::DumpCx;
use crate::image::manifest::FileDigest;
use crate::image::{self, pb, ImageDir, ImageError};
use crate::netlock::{Conn, Method, NetLock, NetLockError, RepairedSk};
use crate::sys::{self, inet, net};

/// Why an inet socket could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum InetSkError {
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Locking or unlocking the tree's connections.
    #[error(transparent)]
    Lock(#[from] NetLockError),
    /// A step of TCP repair on one connection.
    #[error("{conn}: {what}")]
    Repair {
        conn: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(InetSkError, no_failure);

impl Failure for InetSkError {
    fn hint(&self) -> Option<String> {
        match self {
            InetSkError::Task(e) => e.hint(),
            InetSkError::Lock(e) => e.hint(),
            InetSkError::Repair { .. } => Some(
                "TCP repair needs CAP_NET_ADMIN in the socket's network namespace; --tcp-close restores connections closed instead".into(),
            ),
        }
    }
}

/// Inet sockets (AF_INET, AF_INET6).
pub struct InetSk;

const IPPROTO_UDPLITE: i32 = 136;
const IPPROTO_MPTCP: i32 = 262;
/// `SO_BUF_LOCK` (Linux 5.14).
const SO_BUF_LOCK: i32 = 72;

/// What cryo learns of an inet socket from the socket itself.
#[derive(Debug, Clone)]
struct Described {
    family: i32,
    ty: i32,
    proto: i32,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    /// TCP state (UDP: ESTABLISHED when connected, else CLOSE, as sock_diag says).
    state: u32,
    tcp: Option<inet::TcpInfo>,
}

impl Described {
    fn proto_name(&self) -> &'static str {
        proto_name(self.ty, self.proto)
    }

    /// "TCP 10.0.0.1:80 <-> 10.0.0.2:5555 (ESTABLISHED)", for messages.
    fn show(&self) -> String {
        match self.peer {
            Some(p) => format!(
                "{} {} <-> {} ({})",
                self.proto_name(),
                self.local,
                p,
                state_name(self.state)
            ),
            None if self.local.port() == 0 => format!("{} unbound", self.proto_name()),
            None => format!(
                "{} {} ({})",
                self.proto_name(),
                self.local,
                if self.state == LISTEN {
                    "LISTEN"
                } else {
                    "bound"
                }
            ),
        }
    }

    fn is_tcp(&self) -> bool {
        self.ty == libc::SOCK_STREAM && self.proto == libc::IPPROTO_TCP
    }

    fn is_udp(&self) -> bool {
        self.ty == libc::SOCK_DGRAM
            && (self.proto == libc::IPPROTO_UDP || self.proto == IPPROTO_UDPLITE)
    }

    /// An ICMP echo ("ping") socket: a datagram socket whose port is its echo id.
    fn is_ping(&self) -> bool {
        is_ping(self.ty, self.proto)
    }

    /// A raw IP socket of any protocol (its "port" is the protocol number).
    fn is_raw(&self) -> bool {
        self.ty == libc::SOCK_RAW
    }

    /// A TCP connection (established, half closed or being opened).
    fn is_conn(&self) -> bool {
        self.is_tcp() && is_connection(self.state)
    }

    /// A TCP connection closed (both FINs acknowledged, or reset) whose socket still names
    /// its peer: saved through repair mode too with `--tcp-established`, as CRIU does, so
    /// that it comes back with its addresses and what was left to read.
    fn is_closed_conn(&self) -> bool {
        self.is_tcp() && self.state == CLOSE && self.peer.is_some()
    }
}

fn is_ping(ty: i32, proto: i32) -> bool {
    ty == libc::SOCK_DGRAM && (proto == libc::IPPROTO_ICMP || proto == libc::IPPROTO_ICMPV6)
}

fn proto_name(ty: i32, proto: i32) -> &'static str {
    match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_STREAM, 0) => "TCP",
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) | (libc::SOCK_DGRAM, 0) => "UDP",
        (libc::SOCK_DGRAM, IPPROTO_UDPLITE) => "UDP-Lite",
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP) | (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6) => {
            "ICMP (ping)"
        }
        (libc::SOCK_RAW, _) => "raw IP",
        (_, IPPROTO_MPTCP) => "MPTCP",
        (_, libc::IPPROTO_SCTP) => "SCTP",
        _ => "inet",
    }
}

/// Parses a `struct sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                0,
                scope,
            )))
        }
        _ => None,
    }
}

/// Reads the socket's addresses and state.
fn describe(
    sk: BorrowedFd<'_>,
    (family, ty, proto): (i32, i32, i32),
) -> std::io::Result<Described> {
    let local = rustix::net::getsockname(sk)?;
    let local = SocketAddr::try_from(local)
        .map_err(|_| std::io::Error::other("getsockname: not an inet address"))?;
    // SO_PEERNAME answers for a connection still being opened, getpeername does not.
    // The kernel refuses a buffer longer than the family's address.
    let mut b = [0u8; 28];
    let len = if family == libc::AF_INET6 { 28 } else { 16 };
    let peer = match inet::getsockopt_bytes(sk, libc::SOL_SOCKET, libc::SO_PEERNAME, &mut b[..len])
    {
        Ok(n) => parse_sockaddr(&b[..n]),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => None,
        Err(e) => return Err(e),
    };
    let (state, tcp) = if ty == libc::SOCK_STREAM && proto == libc::IPPROTO_TCP {
        let ti = inet::tcp_info(sk)?;
        (u32::from(ti.state), Some(ti))
    } else if peer.is_some() {
        (ESTABLISHED, None)
    } else {
        (CLOSE, None)
    };
    Ok(Described {
        family,
        ty,
        proto,
        local,
        peer,
        state,
        tcp,
    })
}

/// An address as inet_sk_entry spells it: one word for IPv4, four for IPv6, each the
/// address bytes as they lie in memory.
fn addr_words(a: IpAddr) -> Vec<u32> {
    match a {
        IpAddr::V4(v) => vec![u32::from_ne_bytes(v.octets())],
        IpAddr::V6(v) => v
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    }
}

/// The address an inet_sk_entry (or cryo_inet_addr) names.
fn sockaddr_of(family: u32, port: u32, words: &[u32]) -> Option<SocketAddr> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match family.cast_signed() {
        // Images of CRIU 0.1 had 4 words for IPv4 too.
        libc::AF_INET => {
            let a: [u8; 4] = bytes.get(0..4)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a),
                u16::try_from(port).ok()?,
            )))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = bytes.get(0..16)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                u16::try_from(port).ok()?,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// A copy of fd `p` of its process (for the checks before the seize).
fn copy_of(p: &FdProbe<'_>) -> Result<OwnedFd, TaskError> {
    let err = |what: &'static str| {
        move |source| TaskError::Fd {
            pid: p.pid,
            fd: p.fd,
            what: what.into(),
            source,
        }
    };
    let pidfd = sys::fd::pidfd_open(p.pid).map_err(err("pidfd_open"))?;
    sys::fd::pidfd_getfd(pidfd.as_fd(), p.fd).map_err(err("pidfd_getfd"))
}

/// The inode of a network namespace fd (or path).
fn ns_ino(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| m.ino())
}

/// The inode of the network namespace socket `sk` was made in (`SIOCGSKNS`).
fn sock_netns(sk: BorrowedFd<'_>) -> Option<u64> {
    inet::socket_netns(sk)
        .ok()
        .and_then(|f| ns_ino(&std::fs::File::from(f)))
}

/// The inodes of the network namespaces the processes `tree` are in, each with one of them.
fn tree_netns(tree: &[i32]) -> HashMap<u64, i32> {
    let mut out = HashMap::new();
    for &p in tree {
        if let Some(ns) = proc_netns(p) {
            out.entry(ns).or_insert(p);
        }
    }
    out
}

/// The refusal of socket `d` (fd `fd` of `pid`) made in network namespace `ns`, which no
/// process of the tree is in: its namespace is not saved, so it could not be made again.
fn outside_tree(pid: i32, fd: i32, d: &Described, ns: u64) -> Unsupported {
    Unsupported::of(
        pid,
        format!("fd {fd} ({})", d.show()),
        format!("it was made in network namespace net:[{ns}], which no process of the tree is in (cryo, like CRIU, saves and makes again the network namespaces of the tree's processes only)"),
        format!("close it before the dump, or dump the tree that owns net:[{ns}] together with this process (from a common ancestor), or keep a process of the tree in that namespace (`ls -l /proc/*/ns/net | grep {ns}` shows who is in it)"),
    )
}

/// The inode of the network namespace of process `pid`.
fn proc_netns(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// What cryo cannot save about socket `d` (fd `fd` of `pid`), as a refusal; the same checks
/// before the seize and again while frozen.
fn check(
    pid: i32,
    fd: i32,
    sk: BorrowedFd<'_>,
    d: &Described,
    opts: &SockOpts,
) -> Result<(), InetSkError> {
    let object = format!("fd {fd} ({})", d.show());
    let refuse = |what: String, hint: &str| -> InetSkError {
        Unsupported::of(pid, object.clone(), what, hint).into()
    };
    if !d.is_tcp() && !d.is_udp() && !d.is_ping() && !d.is_raw() {
        let hint = if d.proto == IPPROTO_MPTCP {
            "MPTCP is not supported; for a Go program, GODEBUG=multipathtcp=0 makes it use TCP; otherwise close the socket before the dump"
        } else {
            "only TCP, UDP, UDP-Lite, ICMP (ping) and raw sockets are supported; close it before the dump"
        };
        return Err(refuse(
            format!("{} sockets are not supported yet", d.proto_name()),
            hint,
        ));
    }
    if d.is_udp() {
        if net::getsockopt_int(sk, libc::IPPROTO_UDP, libc::UDP_CORK).unwrap_or(0) != 0 {
            return Err(refuse(
                "the datagram being built is corked (UDP_CORK)".into(),
                "let the program finish its datagram (uncork), then dump",
            ));
        }
        return Ok(());
    }
    if d.is_ping() || d.is_raw() {
        return Ok(());
    }
    let ti = d.tcp.unwrap_or_default();
    if d.state == LISTEN && ti.unacked > 0 && !opts.skip_in_flight {
        return Err(refuse(
            format!(
                "{} connection(s) are waiting to be accepted",
                ti.unacked
            ),
            "let the program accept them, or pass --skip-in-flight to drop them (their clients see the connection reset)",
        ));
    }
    if d.is_conn() && !opts.tcp_established && !opts.tcp_close {
        return Err(refuse(
            "it is an established TCP connection".into(),
            "pass --tcp-established to save it (TCP repair; the peer does not notice), or --tcp-close to restore it closed",
        ));
    }
    if !d.is_conn() && !matches!(d.state, CLOSE | LISTEN) {
        return Err(refuse(
            format!("unexpected TCP state {}", state_name(d.state)),
            "dump again in a moment",
        ));
    }
    Ok(())
}

/// Socket-level options, as CRIU saves them.
fn sk_opts(s: BorrowedFd<'_>) -> std::io::Result<pb::SkOptsEntry> {
    let int = |opt| net::getsockopt_int(s, libc::SOL_SOCKET, opt);
    let (snd_s, snd_u) = net::getsockopt_tv(s, libc::SO_SNDTIMEO)?;
    let (rcv_s, rcv_u) = net::getsockopt_tv(s, libc::SO_RCVTIMEO)?;
    let mut linger = [0u8; 8];
    inet::getsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &mut linger)?;
    let l_onoff = i32::from_ne_bytes(linger[0..4].try_into().expect("4"));
    let l_linger = i32::from_ne_bytes(linger[4..8].try_into().expect("4"));
    let mut dev = [0u8; 16];
    let n = inet::getsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, &mut dev)?;
    let dev = String::from_utf8_lossy(&dev[..n])
        .trim_end_matches('\0')
        .to_string();
    let mark = int(libc::SO_MARK)?.cast_unsigned();
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)?.cast_unsigned(),
        so_rcvbuf: int(libc::SO_RCVBUF)?.cast_unsigned(),
        so_snd_tmo_sec: snd_s,
        so_snd_tmo_usec: snd_u,
        so_rcv_tmo_sec: rcv_s,
        so_rcv_tmo_usec: rcv_u,
        reuseaddr: Some(int(libc::SO_REUSEADDR)? != 0),
        so_priority: Some(int(libc::SO_PRIORITY)?.cast_unsigned()),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)?.cast_unsigned()),
        so_mark: (mark != 0).then_some(mark),
        so_passcred: None,
        so_passsec: None,
        so_dontroute: Some(int(libc::SO_DONTROUTE)? != 0),
        so_no_check: Some(int(libc::SO_NO_CHECK)? != 0),
        so_bound_dev: (!dev.is_empty()).then_some(dev),
        so_filter: inet::socket_filter(s)?,
        so_reuseport: Some(int(libc::SO_REUSEPORT)? != 0),
        so_broadcast: Some(int(libc::SO_BROADCAST)? != 0),
        so_keepalive: Some(int(libc::SO_KEEPALIVE)? != 0),
        tcp_keepcnt: None,
        tcp_keepidle: None,
        tcp_keepintvl: None,
        so_oobinline: Some(int(libc::SO_OOBINLINE)?.cast_unsigned()),
        so_linger: (l_onoff != 0).then_some(l_linger.cast_unsigned()),
        so_buf_lock: int(SO_BUF_LOCK).ok().map(|v| v.cast_unsigned()),
    })
}

/// IP-level options (CRIU's, plus the IPv6 traffic class and hop limit).
fn ip_opts(s: BorrowedFd<'_>, family: i32) -> std::io::Result<pb::IpOptsEntry> {
    let ip = |opt| net::getsockopt_int(s, libc::IPPROTO_IP, opt);
    let ip6 = |opt| net::getsockopt_int(s, libc::IPPROTO_IPV6, opt);
    let nz = |v: i32| (v != 0).then_some(v.cast_unsigned());
    if family == libc::AF_INET6 {
        let hops = ip6(libc::IPV6_UNICAST_HOPS)?;
        Ok(pb::IpOptsEntry {
            freebind: Some(ip6(libc::IPV6_FREEBIND)? != 0).filter(|&b| b),
            raw: None,
            pktinfo: Some(ip6(libc::IPV6_RECVPKTINFO)? != 0).filter(|&b| b),
            tos: None,
            ttl: None,
            cryo_tclass: nz(ip6(libc::IPV6_TCLASS)?),
            cryo_hoplimit: (hops != 64 && hops > 0).then_some(hops.cast_unsigned()),
        })
    } else {
        Ok(pb::IpOptsEntry {
            freebind: Some(ip(libc::IP_FREEBIND)? != 0).filter(|&b| b),
            raw: None,
            pktinfo: Some(ip(libc::IP_PKTINFO)? != 0).filter(|&b| b),
            tos: nz(ip(libc::IP_TOS)?),
            ttl: nz(ip(libc::IP_TTL)?),
            cryo_tclass: None,
            cryo_hoplimit: None,
        })
    }
}

/// The peer of a connected ping or raw socket, which `getpeername` and `SO_PEERNAME` do not
/// tell (it has no peer port): its line in `/proc/PID/net/{raw,raw6,icmp,icmp6}`, found by
/// inode, in the network namespace of `pid`.
fn proc_net_peer(pid: i32, d: &Described, ino: u32) -> Option<SocketAddr> {
    let v6 = d.family == libc::AF_INET6;
    let file = match (d.is_raw(), v6) {
        (true, false) => "raw",
        (true, true) => "raw6",
        (false, false) => "icmp",
        (false, true) => "icmp6",
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
    let line = text.lines().skip(1).find(|l| {
        l.split_whitespace()
            .nth(9)
            .and_then(|i| i.parse::<u32>().ok())
            == Some(ino)
    })?;
    let rem = line.split_whitespace().nth(2)?;
    let (addr, port) = rem.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word of the address as the kernel holds it, printed as a number.
    let words: Vec<u32> = addr
        .as_bytes()
        .chunks(8)
        .map(|c| u32::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect::<Option<_>>()?;
    let peer = sockaddr_of(d.family.cast_unsigned(), u32::from(port), &words)?;
    (!peer.ip().is_unspecified()).then_some(peer)
}

/// `SOL_RAW`, `ICMP_FILTER`, `SOL_ICMPV6`, `ICMPV6_FILTER`, `IP_NODEFRAG`, `IPV6_HDRINCL`
/// (linux/in.h, linux/icmp.h, linux/in6.h).
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const SOL_ICMPV6: i32 = 58;
const ICMPV6_FILTER: i32 = 1;
const IP_NODEFRAG: i32 = 22;
const IPV6_HDRINCL: i32 = 36;

/// A raw socket's own options, as CRIU's `ip_opts_raw_entry` holds them: header included,
/// no defragmentation (IPv4), and the ICMP type filter of an ICMP / ICMPv6 socket.
fn raw_opts(s: BorrowedFd<'_>, family: i32, proto: i32) -> std::io::Result<pb::IpOptsRawEntry> {
    let mut r = pb::IpOptsRawEntry::default();
    let words = |b: &[u8]| -> Vec<u32> {
        b.chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    if family == libc::AF_INET6 {
        // IPV6_HDRINCL is Linux 4.5+; older kernels have no such option to save.
        r.hdrincl = net::getsockopt_int(s, libc::IPPROTO_IPV6, IPV6_HDRINCL)
            .ok()
            .filter(|&v| v != 0)
            .map(|_| true);
        if proto == libc::IPPROTO_ICMPV6 {
            let mut f = [0u8; 32];
            let n = inet::getsockopt_bytes(s, SOL_ICMPV6, ICMPV6_FILTER, &mut f)?;
            r.icmpv_filter = words(&f[..n]);
        }
    } else {
        r.hdrincl =
            Some(net::getsockopt_int(s, libc::IPPROTO_IP, libc::IP_HDRINCL)? != 0).filter(|&b| b);
        r.nodefrag =
            Some(net::getsockopt_int(s, libc::IPPROTO_IP, IP_NODEFRAG)? != 0).filter(|&b| b);
        if proto == libc::IPPROTO_ICMP {
            let mut f = [0u8; 4];
            let n = inet::getsockopt_bytes(s, SOL_RAW, ICMP_FILTER, &mut f)?;
            r.icmpv_filter = words(&f[..n]);
        }
    }
    Ok(r)
}

/// Sets a raw socket's own options back (see [`raw_opts`]).
fn restore_raw_opts(
    s: BorrowedFd<'_>,
    id: u32,
    family: i32,
    r: &pb::IpOptsRawEntry,
) -> Result<(), InetSkError> {
    let err = |what: &str| obj_err(id, format!("raw socket: {what}"));
    let bytes: Vec<u8> = r
        .icmpv_filter
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    if family == libc::AF_INET6 {
        if r.hdrincl == Some(true) {
            net::setsockopt_int(s, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1)
                .map_err(err("IPV6_HDRINCL"))?;
        }
        if !bytes.is_empty() {
            inet::setsockopt_bytes(s, SOL_ICMPV6, ICMPV6_FILTER, &bytes)
                .map_err(err("ICMPV6_FILTER"))?;
        }
    } else {
        if r.hdrincl == Some(true) {
            net::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_HDRINCL, 1)
                .map_err(err("IP_HDRINCL"))?;
        }
        if r.nodefrag == Some(true) {
            net::setsockopt_int(s, libc::IPPROTO_IP, IP_NODEFRAG, 1).map_err(err("IP_NODEFRAG"))?;
        }
        if !bytes.is_empty() {
            inet::setsockopt_bytes(s, SOL_RAW, ICMP_FILTER, &bytes).map_err(err("ICMP_FILTER"))?;
        }
    }
    Ok(())
}

/// TCP-level options (CRIU's, plus `TCP_USER_TIMEOUT` and the congestion control).
fn tcp_opts(s: BorrowedFd<'_>) -> std::io::Result<pb::TcpOptsEntry> {
    let tcp = |opt| net::getsockopt_int(s, libc::IPPROTO_TCP, opt);
    let nz = |v: i32| (v != 0).then_some(v.cast_unsigned());
    let mut cc = [0u8; 16];
    let n = inet::getsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_CONGESTION, &mut cc)?;
    let cc = String::from_utf8_lossy(&cc[..n])
        .trim_end_matches('\0')
        .to_string();
    Ok(pb::TcpOptsEntry {
        cork: Some(tcp(libc::TCP_CORK)? != 0).filter(|&b| b),
        nodelay: Some(tcp(libc::TCP_NODELAY)? != 0).filter(|&b| b),
        keepcnt: nz(tcp(libc::TCP_KEEPCNT)?),
        keepidle: nz(tcp(libc::TCP_KEEPIDLE)?),
        keepintvl: nz(tcp(libc::TCP_KEEPINTVL)?),
        cryo_user_timeout: nz(tcp(libc::TCP_USER_TIMEOUT)?),
        cryo_congestion: (!cc.is_empty()).then_some(cc),
    })
}

/// The shutdown state, from `poll` (a send shutdown of a TCP socket shows in its state).
fn shutdown_of(s: BorrowedFd<'_>) -> std::io::Result<pb::SkShutdown> {
    let ev = inet::poll_now(s, libc::POLLRDHUP | libc::POLLHUP)?;
    let rd = ev & libc::POLLRDHUP != 0;
    let both = ev & libc::POLLHUP != 0;
    Ok(match (rd, both) {
        (true, true) => pb::SkShutdown::Both,
        (true, false) => pb::SkShutdown::Read,
        _ => pb::SkShutdown::None,
    })
}

/// A datagram socket's shutdown state: `poll` shows its receive side only, sock_diag both
/// (asked in its process's network namespace; `polled` when sock_diag cannot tell).
fn udp_shutdown(pid: i32, d: &Described, ino: u32, polled: pb::SkShutdown) -> pb::SkShutdown {
    if polled == pb::SkShutdown::Both {
        return polled;
    }
    let (Ok(family), Ok(proto)) = (u8::try_from(d.family), u8::try_from(d.proto)) else {
        return polled;
    };
    let bits =
        super::ns::InNs::enter(pid, false).and_then(|_in| net::inet_shutdown(family, proto, ino));
    match bits {
        Ok(Some(b)) => pb::SkShutdown::try_from(i32::from(b & 3)).unwrap_or(polled),
        Ok(None) => polled,
        Err(e) => {
            tracing::warn!(pid, socket = %d.show(), "sock_diag (its write shutdown): {e}; the receive side's is saved only");
            polled
        }
    }
}

/// Reads the datagrams queued on a UDP socket without consuming them, each with the address
/// it came from.
fn peek_datagrams(s: BorrowedFd<'_>) -> std::io::Result<Vec<Datagram>> {
    use rustix::net::{RecvAncillaryBuffer, RecvFlags};
    let old = net::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let r = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut anc = RecvAncillaryBuffer::default();
        match rustix::net::recvmsg(s, &mut iov, &mut anc, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok(m) => {
                let from = m.address.and_then(|a| SocketAddr::try_from(a).ok());
                let n = m.bytes.min(buf.len());
                out.push((from, buf[..n].to_vec()));
                if out.len() > 1 << 20 {
                    break Err(std::io::Error::other(
                        "more than a million datagrams queued",
                    ));
                }
            }
            Err(e) if e == rustix::io::Errno::AGAIN => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    let _ = net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    r.map(|_| out)
}

/// The inode of a "socket:[N]" link.
fn inode(link: &str) -> Option<u32> {
    super::unix_sk::inode(link)
}

impl FdKind for InetSk {
    const NAME: &'static str = "inet socket";
    const TYPE: pb::FdTypes = pb::FdTypes::Inetsk;
    /// Made in the tree's network namespace.
    const IN_TREE_NS: bool = true;
    type Error = InetSkError;

    fn claims(p: &FdProbe<'_>) -> bool {
        p.socket
            .is_some_and(|(domain, _, _)| domain == libc::AF_INET || domain == libc::AF_INET6)
    }

    fn precheck(p: &FdProbe<'_>) -> Result<(), InetSkError> {
        let Some(kind) = p.socket else {
            return Ok(());
        };
        // The copy the kind was read through; another only if there is none.
        let taken;
        let sk = match p.copy {
            Some(c) => c,
            None => {
                taken = copy_of(p)?;
                taken.as_fd()
            }
        };
        let d = describe(sk, kind).map_err(|source| TaskError::Fd {
            pid: p.pid,
            fd: p.fd,
            what: "read the socket's addresses and state".into(),
            source,
        })?;
        check(p.pid, p.fd, sk, &d, &p.sock)?;
        // Made in a network namespace no process of the tree is in: refused now, before
        // the tree is frozen and its connections locked (`dump` checks again).
        let proc_ns = p.netns.or_else(|| proc_netns(p.pid));
        match sock_netns(sk) {
            Some(n) if Some(n) != proc_ns && !tree_netns(p.tree).contains_key(&n) => {
                Err(outside_tree(p.pid, p.fd, &d, n).into())
            }
            _ => Ok(()),
        }
    }

    fn load(objs: &mut FdObjects) -> Result<(), InetSkError> {
        load(objs)
    }

    fn dump(cx: &mut DumpCx<'_>, fd: &TargetFd<'_>, id: u32) -> Result<pb::FileEntry, InetSkError> {
        let sk = fd.take()?;
        let s = sk.as_fd();
        let kind = match fd.socket {
            Some(k) => k,
            None => net::socket_kind(s).map_err(|e| fd.err("SO_DOMAIN", e))?,
        };
        let d = describe(s, kind).map_err(|e| fd.err("addresses and state", e))?;
        let opts = cx.files.sock;
        check(fd.pid, fd.fd, s, &d, &opts)?;
        // The namespace the socket was made in (a process that entered another namespace of
        // the tree, made it and came back): restore makes it there, so it must be one of the
        // tree's processes' (a namespace only a socket holds is not saved).
        let proc_ns = cx.files.inet.netns_of(fd.pid);
        let sk_ns = sock_netns(s).or(proc_ns);
        if let Some(n) =
            sk_ns.filter(|&n| Some(n) != proc_ns && !tree_netns(&cx.files.tree).contains_key(&n))
        {
            return Err(outside_tree(fd.pid, fd.fd, &d, n).into());
        }
        let ino = inode(fd.link).ok_or_else(|| {
            fd.err(
                "socket inode",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        let so = sk_opts(s).map_err(|e| fd.err("socket options", e))?;
        let mut e =
            pb::InetSkEntry {
                id,
                ino,
                family: d.family.cast_unsigned(),
                r#type: d.ty.cast_unsigned(),
                proto: d.proto.cast_unsigned(),
                state: d.state,
                src_port: u32::from(d.local.port()),
                dst_port: d.peer.map_or(0, |p| u32::from(p.port())),
                flags: fd.flags(),
                backlog: 0,
                src_addr: addr_words(d.local.ip()),
                dst_addr: addr_words(d.peer.map(|p| p.ip()).unwrap_or(
                    if d.family == libc::AF_INET6 {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    },
                )),
                fown: Default::default(),
                opts: so.clone(),
                v6only: None,
                ip_opts: Some(ip_opts(s, d.family).map_err(|e| fd.err("IP options", e))?),
                // Filled below for a raw socket.
                ifname: None,
                ns_id: sk_ns.map(super::misc::ns_id),
                shutdown: None,
                tcp_opts: None,
            };
        if d.family == libc::AF_INET6 {
            let v6only = net::getsockopt_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                .map_err(|e| fd.err("IPV6_V6ONLY", e))?;
            e.v6only = Some(v6only != 0);
            // A link-local address needs its interface to be bound again.
            if let (SocketAddr::V6(l), true) = (d.local, d.local.port() != 0) {
                if l.scope_id() != 0 || (l.ip().segments()[0] & 0xffc0) == 0xfe80 {
                    match &so.so_bound_dev {
                        Some(dev) => e.ifname = Some(dev.clone()),
                        None => {
                            return Err(Unsupported::of(
                                fd.pid,
                                format!("fd {} ({})", fd.fd, d.show()),
                                "a link-local address not bound to its device (SO_BINDTODEVICE)",
                                "bind the socket to its device, or use another address",
                            )
                            .into())
                        }
                    }
                }
            }
        }
        if (d.is_ping() || d.is_raw()) && d.peer.is_none() {
            if let Some(p) = proc_net_peer(fd.pid, &d, ino) {
                e.state = ESTABLISHED;
                e.dst_port = u32::from(p.port());
                e.dst_addr = addr_words(p.ip());
            }
        }
        let sh = shutdown_of(s).map_err(|e| fd.err("poll (shutdown state)", e))?;
        if d.is_tcp() {
            e.tcp_opts = Some(tcp_opts(s).map_err(|e| fd.err("TCP options", e))?);
            if sh != pb::SkShutdown::None {
                e.shutdown = Some(sh as i32);
            }
            if d.state == LISTEN {
                e.backlog = d.tcp.map_or(0, |t| t.sacked);
            }
            if (d.is_conn() || d.is_closed_conn()) && opts.tcp_established && !opts.tcp_close {
                let tree = cx.files.tree.clone();
                let name = format!("fd {} of process {} ({})", fd.fd, fd.pid, d.show());
                let inet = &mut cx.files.inet;
                inet.ensure_locked(&tree, &mut cx.files.netlock)?;
                inet::set_repair(s, inet::Repair::On).map_err(|source| InetSkError::Repair {
                    conn: name.clone(),
                    what: "TCP_REPAIR on".into(),
                    source,
                })?;
                inet.repaired.push(Repaired {
                    sk: sk.try_clone().map_err(|e| fd.err("dup", e))?,
                    reuseaddr: so.reuseaddr == Some(true),
                    name: name.clone(),
                });
                let mut data = inet.buffer();
                let saved = tcp_repair::save(s, &mut data).map_err(|st| InetSkError::Repair {
                    conn: name,
                    what: st.what,
                    source: st.source,
                })?;
                e.state = saved.state;
                inet.write_stream(cx.dir, ino, saved.entry, data);
            }
        } else if d.is_ping() || d.is_raw() {
            e.shutdown = Some(sh as i32);
            if d.is_raw() {
                let raw =
                    raw_opts(s, d.family, d.proto).map_err(|e| fd.err("raw socket options", e))?;
                if let Some(ip) = e.ip_opts.as_mut() {
                    ip.raw = Some(raw);
                }
            }
            // What is queued on a ping or raw socket is not saved (as in CRIU): replies and
            // copies of packets the program had not read yet are lost.
            let queued = inet::inq(s).unwrap_or(0);
            if queued > 0 {
                tracing::warn!(pid = fd.pid, fd = fd.fd, socket = %d.show(), queued, "datagrams queued on the socket are not saved");
            }
        } else {
            e.shutdown = Some(udp_shutdown(fd.pid, &d, ino, sh) as i32);
            for (from, data) in peek_datagrams(s).map_err(|e| fd.err("peek at the datagrams", e))? {
                cx.files.sk_queues.push((
                    pb::SkPacketEntry {
                        id_for: id,
                        length: crate::num::len32(data.len()),
                        scm: Vec::new(),
                        cryo_from: from.map(|a| pb::CryoInetAddr {
                            family: if a.is_ipv4() {
                                libc::AF_INET as u32
                            } else {
                                libc::AF_INET6 as u32
                            },
                            port: u32::from(a.port()),
                            addr: addr_words(a.ip()),
                        }),
                    },
                    data,
                ));
            }
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Inetsk as i32,
            id,
            isk: Some(e),
            ..Default::default()
        })
    }

    fn open(objs: &mut FdObjects, e: &pb::FileEntry) -> Result<OwnedFd, InetSkError> {
        load(objs)?;
        let isk = e.isk.as_ref().ok_or_else(|| missing(e.id, "inet socket"))?;
        open_inet(objs, e.id, isk)
    }
}

/// A queued datagram: where it came from, and its bytes.
type Datagram = (Option<SocketAddr>, Vec<u8>);

/// A connection the dump put in repair mode: cryo's copy of the socket.
struct Repaired {
    sk: OwnedFd,
    /// Its `SO_REUSEADDR`: leaving repair mode clears it.
    reuseaddr: bool,
    name: String,
}

/// A tcp-stream image for the writer: the socket inode, its entry, its queue bytes.
type StreamJob = (u32, pb::TcpStreamEntry, Vec<u8>);
/// What the writer did: each image written (name, digest), or the first error.
type Written = Result<Vec<(String, FileDigest)>, ImageError>;

/// Writes the tcp-stream images on a thread of its own while the dump reads the next
/// connections (the queue bytes are copied once, from the buffer that peeked them into the
/// file); the buffers come back to be used again.
struct StreamWriter {
    jobs: Option<std::sync::mpsc::SyncSender<StreamJob>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Written>>,
}

impl StreamWriter {
    fn start(dir: &std::path::Path) -> StreamWriter {
        let dir = dir.to_path_buf();
        // Room for a few connections, so that the dump rarely waits for the writer (each
        // wait is a trip through the scheduler, long on a loaded machine).
        let (jobs, rx) = std::sync::mpsc::sync_channel::<StreamJob>(8);
        let (tx_back, back) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut done = Vec::new();
            let mut failed = None;
            for (ino, entry, data) in rx {
                if failed.is_none() {
                    let name = format!("tcp-stream-{ino:x}.img");
                    match ImageDir::write_one_with_data_at(
                        &dir.join(&name),
                        image::TCP_STREAM,
                        &entry,
                        &data,
                    ) {
                        Ok(d) => done.push((name, d)),
                        Err(e) => failed = Some(e),
                    }
                }
                let _ = tx_back.send(data);
            }
            failed.map_or(Ok(done), Err)
        });
        StreamWriter {
            jobs: Some(jobs),
            back,
            thread: Some(thread),
        }
    }

    /// Waits for every image to be written.
    fn finish(&mut self) -> Written {
        self.jobs = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(Vec::new()),
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(ImageError::Invalid {
                path: std::path::PathBuf::new(),
                what: "the tcp-stream writer panicked".into(),
            }),
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The dump's inet state: the connections it put in repair mode, the lock that protects
/// them, and the writer of their tcp-stream images.
#[derive(Default)]
pub struct InetDump {
    repaired: Vec<Repaired>,
    /// Writes the tcp-stream images (started at the first connection).
    writer: Option<StreamWriter>,
    /// How many tcp-stream images were handed to the writer.
    streams: usize,
    /// A buffer for the next connection's queues.
    spare: Vec<u8>,
    /// Whether the tree's connections are locked (`FileTable::netlock`).
    locked: bool,
    /// The last process whose sockets were dumped, and its network namespace (read once
    /// per process, not per socket).
    proc_ns: Option<(i32, Option<u64>)>,
}

impl std::fmt::Debug for InetDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InetDump")
            .field("repaired", &self.repaired.len())
            .field("streams", &self.streams)
            .field("locked", &self.locked)
            .finish()
    }
}

/// The TCP connections of the tree, as the lock names them (IPv4-mapped addresses as IPv4),
/// by network namespace (its inode, and a process of the tree in it), and where each is
/// (process, fd, inode: recorded before they go into repair mode). In a namespace `whole`
/// says is locked whole already, no connection needs a rule of its own: every socket of
/// the tree there is recorded as it is (a later run takes only those it finds in repair
/// mode out of it), without looking inside.
type NsConns = Vec<(u64, i32, Vec<Conn>)>;
fn tree_connections(tree: &[i32], whole: impl Fn(u64) -> bool) -> (NsConns, Vec<RepairedSk>) {
    let mut seen = std::collections::HashSet::new();
    let mut out: NsConns = Vec::new();
    let mut socks = Vec::new();
    // With several namespaces in the tree, a socket may have been made in another one than
    // its process's: each is looked at, and grouped by its own namespace.
    let spaces = tree_netns(tree);
    let several = spaces.len() > 1;
    for &pid in tree {
        let ns = proc_netns(pid).unwrap_or(0);
        let whole = whole(ns) && !several;
        let mut pidfd = None;
        for fd in crate::procfs::fds(pid).unwrap_or_default() {
            let Ok(link) = crate::procfs::link(pid, &format!("fd/{fd}")) else {
                continue;
            };
            let Some(ino) = inode(&link) else {
                continue;
            };
            if !seen.insert(ino) {
                continue;
            }
            if whole {
                socks.push(RepairedSk {
                    pid,
                    fd,
                    ino: u64::from(ino),
                });
                continue;
            }
            if pidfd.is_none() {
                pidfd = sys::fd::pidfd_open(pid).ok();
            }
            let Some(pidfd) = &pidfd else {
                break;
            };
            let Ok(sk) = sys::fd::pidfd_getfd(pidfd.as_fd(), fd) else {
                continue;
            };
            let Ok(kind) = net::socket_kind(sk.as_fd()) else {
                continue;
            };
            if kind.0 != libc::AF_INET && kind.0 != libc::AF_INET6 {
                continue;
            }
            let Ok(d) = describe(sk.as_fd(), kind) else {
                continue;
            };
            if let (true, Some(p)) = (d.is_conn() || d.is_closed_conn(), d.peer) {
                // Locked in the namespace it was made in, through a process of the tree
                // there (`dump` refuses a socket of a namespace no process is in).
                let (ns, pid_there) = match sock_netns(sk.as_fd()).filter(|_| several) {
                    Some(n) if n != ns => match spaces.get(&n) {
                        Some(&there) => (n, there),
                        // No process of the tree is in it: refused (precheck and dump),
                        // never locked in a namespace it does not live in.
                        None => continue,
                    },
                    _ => (ns, pid),
                };
                let conn = Conn {
                    src: tcp_repair::unmap(d.local.ip()),
                    sport: d.local.port(),
                    dst: tcp_repair::unmap(p.ip()),
                    dport: p.port(),
                };
                match out.iter_mut().find(|(i, _, _)| *i == ns) {
                    Some((_, _, l)) => l.push(conn),
                    None => out.push((ns, pid_there, vec![conn])),
                }
                socks.push(RepairedSk {
                    pid,
                    fd,
                    ino: u64::from(ino),
                });
            }
        }
    }
    (out, socks)
}

impl InetDump {
    /// The inode of the network namespace of `pid` (frozen: it cannot change meanwhile).
    fn netns_of(&mut self, pid: i32) -> Option<u64> {
        match self.proc_ns {
            Some((p, ns)) if p == pid => ns,
            _ => {
                let ns = proc_netns(pid);
                self.proc_ns = Some((pid, ns));
                ns
            }
        }
    }

    /// Locks the tree's connections, once, before the first goes into repair mode (their
    /// whole network namespace is locked already when the tree has one of its own), and
    /// records where they are, for a later run if cryo is killed.
    fn ensure_locked(&mut self, tree: &[i32], lock: &mut NetLock) -> Result<(), InetSkError> {
        if self.locked {
            return Ok(());
        }
        if tree.is_empty() {
            return Err(TaskError::Internal("empty tree").into());
        }
        let (by_ns, socks) = tree_connections(tree, |ns| lock.holds_whole(ns));
        lock.record_repair(&socks);
        // Each namespace the connections live in (the root's, or another one a task of the
        // tree is in), unless it is locked whole already.
        for (ns, pid, conns) in &by_ns {
            if !lock.holds_whole(*ns) {
                lock.lock_connections(*pid, conns)?;
            }
        }
        self.locked = true;
        Ok(())
    }

    /// Whether TCP connections of the tree were locked and saved in repair mode (their lock
    /// must then stay until the restore).
    pub fn has_connections(&self) -> bool {
        self.locked
    }

    /// A buffer for a connection's queues: one the writer is done with, or a new one.
    fn buffer(&mut self) -> Vec<u8> {
        if self.spare.capacity() > 0 {
            return std::mem::take(&mut self.spare);
        }
        self.writer
            .as_ref()
            .and_then(|w| w.back.try_recv().ok())
            .unwrap_or_default()
    }

    /// Hands a connection's tcp-stream image to the writer (started the first time).
    fn write_stream(&mut self, dir: &ImageDir, ino: u32, entry: pb::TcpStreamEntry, data: Vec<u8>) {
        let w = self
            .writer
            .get_or_insert_with(|| StreamWriter::start(&dir.path));
        self.streams += 1;
        if let Some(jobs) = &w.jobs {
            if let Err(std::sync::mpsc::SendError((_, _, data))) = jobs.send((ino, entry, data)) {
                // The writer is gone (it panicked): `write` reports it.
                self.spare = data;
            }
        }
    }

    /// Waits until the tcp-stream images are written, and records them in the manifest.
    pub fn write(&mut self, dir: &ImageDir) -> Result<(), ImageError> {
        let Some(mut w) = self.writer.take() else {
            return Ok(());
        };
        let done = w.finish()?;
        if done.len() != self.streams {
            return Err(ImageError::Invalid {
                path: dir.path.clone(),
                what: format!(
                    "{} tcp-stream images written of {}",
                    done.len(),
                    self.streams
                ),
            });
        }
        for (name, d) in done {
            dir.record(&name, d);
        }
        Ok(())
    }

    /// What inventory.img says about sockets: `--tcp-close`, and the lock the restore must
    /// lift (method and run id).
    pub fn fill_inventory(&self, inv: &mut pb::InventoryEntry, sock: &SockOpts, lock: &NetLock) {
        if sock.tcp_close {
            inv.tcp_close = Some(true);
        }
        if lock.is_held() {
            inv.network_lock_method = Some(lock.method().to_inventory());
            inv.dump_criu_run_id = Some(lock.run_id().to_string());
        }
    }

    /// The tree goes on (a failed dump, `--leave-running`): each connection leaves repair
    /// mode (the kernel sends a window probe) and gets its `SO_REUSEADDR` back. Runs while
    /// the lock still holds, as CRIU's `network_unlock` (the probe is dropped; the peer's
    /// next retransmission passes once the lock is lifted), and before the tree is released.
    pub fn resume(&mut self) {
        for r in self.repaired.drain(..) {
            let s = r.sk.as_fd();
            if let Err(e) = inet::set_repair(s, inet::Repair::Off) {
                tracing::error!("{}: cannot leave TCP repair mode: {e}", r.name);
            }
            let _ = net::setsockopt_int(
                s,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                i32::from(r.reuseaddr),
            );
        }
    }

    /// The tree was killed: cryo's copies close in repair mode, so the connections vanish
    /// without a packet (the lock stays until the restore lifts it: `NetLock::keep`).
    pub fn keep(&mut self) {
        self.repaired.clear();
    }
}

impl Drop for InetDump {
    fn drop(&mut self) {
        self.resume();
    }
}

// ---------------------------------------------------------------------------------------
// Restore

/// What must be done to a restored socket just before the tree runs.
enum Fixup {
    /// A connection in repair mode.
    Conn {
        reuseaddr: bool,
        reuseport: bool,
        /// Written by the program, never sent: sent once out of repair mode (the socket's
        /// inode names its tcp-stream image, the range the bytes in it).
        ino: u32,
        unsent: std::ops::Range<usize>,
        /// Its own `SO_SNDBUF`, set once `unsent` is queued, and then its own
        /// `SO_BUF_LOCK` again.
        sndbuf: Option<u32>,
        buf_lock: Option<u32>,
        name: String,
    },
    /// Any other socket: its own port sharing options.
    Other { reuseaddr: bool, reuseport: bool },
}

struct Made {
    sk: OwnedFd,
    fix: Fixup,
}

/// A tcp-stream image: its entry, the file mapped, and where the queue bytes lie in it.
type Stream = (
    pb::TcpStreamEntry,
    crate::sys::mem::Mapping,
    std::ops::Range<usize>,
);

/// The restore's inet state.
#[derive(Default)]
pub struct InetStore {
    loaded: bool,
    /// tcp-stream images by socket inode: the entry, the file's bytes and where the queue
    /// bytes lie in them.
    streams: HashMap<u32, Stream>,
    /// Datagrams queued on UDP sockets, by file id.
    queues: HashMap<u32, Vec<Datagram>>,
    /// The dump was made with `--tcp-close`.
    tcp_close: bool,
    /// The dump's lock: CRIU's method number and run id.
    lock: Option<(Method, Option<String>)>,
    /// The images are cryo's (a lock is then always an nftables table).
    cryo_images: bool,
    made: Vec<Made>,
    /// The connections restored, for a CRIU iptables lock.
    conns: Vec<Conn>,
}

/// Reads what restore needs from the images (before cryo enters the tree's namespaces).
fn load(objs: &mut FdObjects) -> Result<(), InetSkError> {
    if objs.kinds.get::<InetStore>().loaded {
        return Ok(());
    }
    tracing::debug!("inet: loading images");
    let dir = &objs.dir;
    let inv: Option<pb::InventoryEntry> = dir
        .read_opt::<pb::InventoryEntry>("inventory.img", image::INVENTORY)?
        .and_then(|v| v.into_iter().next());
    let cryo_images = dir.path.join("cryo-manifest.json").exists();
    let mut streams = HashMap::new();
    let mut has_conn = false;
    let inet_ids: std::collections::HashSet<u32> = objs
        .files
        .values()
        .filter_map(|f| f.isk.as_ref())
        .map(|i| i.id)
        .collect();
    for isk in objs.files.values().filter_map(|f| f.isk.as_ref()) {
        // Closed connections that named their peer have a tcp-stream image too when they
        // were saved with `--tcp-established` (CRIU's, too).
        if isk.proto.cast_signed() == libc::IPPROTO_TCP
            && isk.dst_port != 0
            && (is_connection(isk.state) || isk.state == CLOSE)
        {
            let name = format!("tcp-stream-{:x}.img", isk.ino);
            let map = dir.map(&name)?;
            has_conn |= is_connection(isk.state) || map.is_some();
            let Some(map) = map else {
                continue;
            };
            let bytes = map.bytes();
            let path = dir.file(&name);
            let first = image::entries_with_data(&path, image::TCP_STREAM, bytes)?
                .first()
                .map(|(off, payload, data)| {
                    let at = data.as_ptr() as usize - bytes.as_ptr() as usize;
                    (*off, payload.to_vec(), at..at + data.len())
                });
            if let Some((off, payload, range)) = first {
                let e = <pb::TcpStreamEntry as prost::Message>::decode(payload.as_slice())
                    .map_err(|source| ImageError::Decode {
                        path,
                        offset: off,
                        message: image::TCP_STREAM.message,
                        source,
                    })?;
                streams.insert(isk.ino, (e, map, range));
            }
        }
    }
    let mut queues: HashMap<u32, Vec<Datagram>> = HashMap::new();
    if !inet_ids.is_empty() {
        for (e, data) in
            dir.read_with_data::<pb::SkPacketEntry>("sk-queues.img", image::SK_QUEUES)?
        {
            if inet_ids.contains(&e.id_for) {
                let from = e
                    .cryo_from
                    .as_ref()
                    .and_then(|a| sockaddr_of(a.family, a.port, &a.addr));
                queues.entry(e.id_for).or_default().push((from, data));
            }
        }
    }
    let st = objs.kinds.get::<InetStore>();
    st.streams = streams;
    st.queues = queues;
    st.tcp_close = inv.as_ref().and_then(|i| i.tcp_close) == Some(true);
    st.lock = has_conn.then(|| {
        let inv = inv.as_ref();
        (
            // Absent: iptables, CRIU's default.
            Method::from_inventory(inv.and_then(|i| i.network_lock_method)),
            inv.and_then(|i| i.dump_criu_run_id.clone()),
        )
    });
    st.cryo_images = cryo_images;
    st.loaded = true;
    tracing::debug!("inet: {} tcp-stream images loaded", st.streams.len());
    Ok(())
}

/// A new socket of the record's family, type and protocol, sharing ports for now.
fn new_socket(id: u32, isk: &pb::InetSkEntry) -> Result<OwnedFd, InetSkError> {
    use rustix::net::{AddressFamily, Protocol, SocketFlags, SocketType};
    let make = || {
        rustix::net::socket_with(
            // A family beyond 16 bits is none (AF_UNSPEC): the kernel refuses it.
            AddressFamily::from_raw(u16::try_from(isk.family).unwrap_or(0)),
            SocketType::from_raw(isk.r#type),
            SocketFlags::CLOEXEC,
            std::num::NonZeroU32::new(isk.proto).map(Protocol::from_raw),
        )
    };
    let sk = match make() {
        // A ping socket may be made only by a group of the namespace's
        // `net.ipv4.ping_group_range` (restored already): in a user namespace that is one
        // of its gids, not cryo's. Made with the range's first gid as effective gid.
        Err(rustix::io::Errno::ACCESS)
            if is_ping(isk.r#type.cast_signed(), isk.proto.cast_signed()) =>
        {
            let low = crate::procfs::sysctl("net/ipv4/ping_group_range")
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()));
            match low {
                Some(gid) => crate::sys::proc::with_egid(gid, make)
                    .map_err(obj_err(id, "inet socket: socket (as the ping group)"))?,
                None => Err(rustix::io::Errno::ACCESS),
            }
        }
        r => r,
    }
    .map_err(|e| obj_err(id, "inet socket: socket")(e.into()))?;
    let s = sk.as_fd();
    let set = |level, opt, v, what: &str| {
        net::setsockopt_int(s, level, opt, v).map_err(obj_err(id, format!("inet socket: {what}")))
    };
    if isk.v6only == Some(true) {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1, "IPV6_V6ONLY")?;
    }
    // Sockets of the tree may share a port; each gets its own setting back at the end.
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    Ok(sk)
}

/// Binds `s` to `local` (with `IP_FREEBIND` for the time of the call, so an address not up
/// yet does not fail it), on the interface `ifname` for a link-local IPv6 address.
fn bind(s: BorrowedFd<'_>, local: SocketAddr, ifname: Option<&str>) -> std::io::Result<()> {
    let mut local = local;
    if let (SocketAddr::V6(v), Some(dev)) = (&mut local, ifname) {
        let idx = crate::sys::inet::if_index(dev)
            .map_err(|e| std::io::Error::other(format!("interface {dev}: {e}")))?;
        v.set_scope_id(idx);
    }
    let (level, opt) = if local.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND)
    } else {
        (libc::IPPROTO_IP, libc::IP_FREEBIND)
    };
    let was = net::getsockopt_int(s, level, opt)?;
    net::setsockopt_int(s, level, opt, 1)?;
    let r = rustix::net::bind(s, &local).map_err(std::io::Error::from);
    net::setsockopt_int(s, level, opt, was)?;
    r
}

/// Sets the options of the record on `s`. The send buffer is left alone when `keep_sndbuf`.
fn restore_opts(
    s: BorrowedFd<'_>,
    id: u32,
    isk: &pb::InetSkEntry,
    keep_sndbuf: bool,
) -> Result<(), InetSkError> {
    let err = |what: &str| obj_err(id, format!("inet socket: {what}"));
    let sol = |opt, v: i32, what: &str| {
        net::setsockopt_int(s, libc::SOL_SOCKET, opt, v).map_err(err(what))
    };
    let o = &isk.opts;
    // The kernel doubles what it is given and reports the doubled value.
    if !keep_sndbuf {
        sol(
            libc::SO_SNDBUFFORCE,
            (o.so_sndbuf / 2).cast_signed(),
            "SO_SNDBUFFORCE",
        )?;
    }
    sol(
        libc::SO_RCVBUFFORCE,
        (o.so_rcvbuf / 2).cast_signed(),
        "SO_RCVBUFFORCE",
    )?;
    // Setting a size locks that buffer: the saved locks, none too, come after (CRIU's order).
    if let Some(v) = o.so_buf_lock {
        sol(SO_BUF_LOCK, v.cast_signed(), "SO_BUF_LOCK")?;
    }
    if let Some(v) = o.so_priority {
        sol(libc::SO_PRIORITY, v.cast_signed(), "SO_PRIORITY")?;
    }
    if let Some(v) = o.so_rcvlowat.filter(|&v| v > 1) {
        sol(libc::SO_RCVLOWAT, v.cast_signed(), "SO_RCVLOWAT")?;
    }
    if let Some(v) = o.so_mark.filter(|&v| v != 0) {
        sol(libc::SO_MARK, v.cast_signed(), "SO_MARK")?;
    }
    for (on, opt, what) in [
        (o.so_dontroute, libc::SO_DONTROUTE, "SO_DONTROUTE"),
        (o.so_no_check, libc::SO_NO_CHECK, "SO_NO_CHECK"),
        (o.so_broadcast, libc::SO_BROADCAST, "SO_BROADCAST"),
        (o.so_keepalive, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    ] {
        if on == Some(true) {
            sol(opt, 1, what)?;
        }
    }
    if o.so_oobinline.is_some_and(|v| v != 0) {
        sol(libc::SO_OOBINLINE, 1, "SO_OOBINLINE")?;
    }
    if let Some(l) = o.so_linger {
        let mut b = 1i32.to_ne_bytes().to_vec();
        b.extend_from_slice(&l.cast_signed().to_ne_bytes());
        inet::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &b)
            .map_err(err("SO_LINGER"))?;
    }
    if o.so_snd_tmo_sec != 0 || o.so_snd_tmo_usec != 0 {
        net::setsockopt_tv(s, libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec)
            .map_err(err("SO_SNDTIMEO"))?;
    }
    if o.so_rcv_tmo_sec != 0 || o.so_rcv_tmo_usec != 0 {
        net::setsockopt_tv(s, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)
            .map_err(err("SO_RCVTIMEO"))?;
    }
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        inet::setsockopt_bytes(s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
            .map_err(err(&format!("SO_BINDTODEVICE {dev}")))?;
    }
    if !o.so_filter.is_empty() {
        inet::set_socket_filter(s, &o.so_filter).map_err(err("SO_ATTACH_FILTER"))?;
    }
    // Deprecated places of the keepalive settings, still honoured.
    for (v, opt, what) in [
        (o.tcp_keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        (o.tcp_keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
        (o.tcp_keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v {
            net::setsockopt_int(s, libc::IPPROTO_TCP, opt, v.cast_signed()).map_err(err(what))?;
        }
    }
    if let Some(ip) = &isk.ip_opts {
        let v6 = isk.family.cast_signed() == libc::AF_INET6;
        let set = |level, opt, v: u32, what: &str| {
            net::setsockopt_int(s, level, opt, v.cast_signed()).map_err(err(what))
        };
        if v6 {
            if ip.freebind == Some(true) {
                set(libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1, "IPV6_FREEBIND")?;
            }
            if ip.pktinfo == Some(true) {
                set(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RECVPKTINFO,
                    1,
                    "IPV6_RECVPKTINFO",
                )?;
            }
            if let Some(v) = ip.cryo_tclass {
                set(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, v, "IPV6_TCLASS")?;
            }
            if let Some(v) = ip.cryo_hoplimit {
                set(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_UNICAST_HOPS,
                    v,
                    "IPV6_UNICAST_HOPS",
                )?;
            }
        } else {
            if ip.freebind == Some(true) {
                set(libc::IPPROTO_IP, libc::IP_FREEBIND, 1, "IP_FREEBIND")?;
            }
            if ip.pktinfo == Some(true) {
                set(libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO")?;
            }
            if let Some(v) = ip.tos {
                set(libc::IPPROTO_IP, libc::IP_TOS, v, "IP_TOS")?;
            }
            if let Some(v) = ip.ttl {
                set(libc::IPPROTO_IP, libc::IP_TTL, v, "IP_TTL")?;
            }
        }
    }
    if let (Some(t), true) = (&isk.tcp_opts, isk.proto.cast_signed() == libc::IPPROTO_TCP) {
        let set = |opt, v: u32, what: &str| {
            net::setsockopt_int(s, libc::IPPROTO_TCP, opt, v.cast_signed()).map_err(err(what))
        };
        if let Some(cc) = t.cryo_congestion.as_deref() {
            inet::setsockopt_bytes(s, libc::IPPROTO_TCP, libc::TCP_CONGESTION, cc.as_bytes())
                .map_err(err(&format!("TCP_CONGESTION {cc}")))?;
        }
        if t.nodelay == Some(true) {
            set(libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
        }
        if t.cork == Some(true) {
            set(libc::TCP_CORK, 1, "TCP_CORK")?;
        }
        for (v, opt, what) in [
            (t.keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
            (t.keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
            (t.keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
            (
                t.cryo_user_timeout,
                libc::TCP_USER_TIMEOUT,
                "TCP_USER_TIMEOUT",
            ),
        ] {
            if let Some(v) = v {
                set(opt, v, what)?;
            }
        }
    }
    Ok(())
}

/// Applies the record's shutdown state (a socket never connected says ENOTCONN: ignored).
fn restore_shutdown(s: BorrowedFd<'_>, id: u32, isk: &pb::InetSkEntry) -> Result<(), InetSkError> {
    use rustix::net::Shutdown;
    let how = match isk.shutdown.and_then(|v| pb::SkShutdown::try_from(v).ok()) {
        Some(pb::SkShutdown::Read) => Shutdown::Read,
        Some(pb::SkShutdown::Write) => Shutdown::Write,
        Some(pb::SkShutdown::Both) => Shutdown::Both,
        _ => return Ok(()),
    };
    match rustix::net::shutdown(s, how) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NOTCONN => Ok(()),
        Err(e) => Err(obj_err(id, "inet socket: shutdown")(e.into()).into()),
    }
}

/// Sends the datagrams queued on UDP socket `s` (bound to `local`) again, each from the
/// address it came from, on a raw socket marked to pass the network lock.
fn requeue_datagrams(
    s: BorrowedFd<'_>,
    id: u32,
    isk: &pb::InetSkEntry,
    local: SocketAddr,
    queue: Vec<Datagram>,
) -> Result<(), InetSkError> {
    let local = SocketAddr::try_from(
        rustix::net::getsockname(s)
            .map_err(|e| obj_err(id, "inet socket: getsockname")(e.into()))?,
    )
    .unwrap_or(local);
    let proto = u8::try_from(isk.proto).map_err(|_| {
        TaskError::BadImage(format!(
            "file {id}: protocol {} is not an IP protocol",
            isk.proto
        ))
    })?;
    let mut sent = 0;
    for (from, data) in queue {
        let Some(from) = from else {
            tracing::warn!("file {id}: a queued datagram without its source address is dropped");
            continue;
        };
        // The destination: the socket's own address, or loopback when it is bound to any.
        let from_ip = tcp_repair::unmap(from.ip());
        let mut dst = tcp_repair::unmap(local.ip());
        if dst.is_unspecified() || dst.is_ipv4() != from_ip.is_ipv4() {
            dst = if from_ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
        }
        let mut l4 = Vec::with_capacity(8 + data.len());
        l4.extend_from_slice(&from.port().to_be_bytes());
        l4.extend_from_slice(&local.port().to_be_bytes());
        if i32::from(proto) == IPPROTO_UDPLITE {
            l4.extend_from_slice(&0u16.to_be_bytes()); // checksum coverage: all
        } else {
            // A datagram fits the UDP length field (it came from a socket queue).
            let udp_len = u16::try_from(8 + data.len()).unwrap_or(u16::MAX);
            l4.extend_from_slice(&udp_len.to_be_bytes());
        }
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(&data);
        let pkt = tcp_repair::ip_packet(from_ip, dst, proto, l4, 6);
        inet::send_raw_ip(&pkt, dst, crate::netlock::SOCCR_MARK).map_err(obj_err(
            id,
            format!("inet socket: requeue a datagram from {from}"),
        ))?;
        sent += 1;
    }
    if sent > 0 {
        // They arrive through the loopback device: wait until the queue holds them all.
        for _ in 0..200 {
            if peek_datagrams(s).map(|q| q.len()).unwrap_or(0) >= sent {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(())
}

/// Makes the socket of inet record `isk` (file `id`).
fn open_inet(objs: &mut FdObjects, id: u32, isk: &pb::InetSkEntry) -> Result<OwnedFd, InetSkError> {
    let family = isk.family.cast_signed();
    let proto = isk.proto.cast_signed();
    let ty = isk.r#type.cast_signed();
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(
            Unsupported::restore(format!("file {id}: inet socket of family {family}")).into(),
        );
    }
    if !(ty == libc::SOCK_STREAM || ty == libc::SOCK_DGRAM || ty == libc::SOCK_RAW) {
        return Err(Unsupported::restore(format!(
            "file {id}: {} sockets cannot be restored yet",
            proto_name(ty, proto)
        ))
        .into());
    }
    let bad_addr = || TaskError::BadImage(format!("inet socket {id} has a malformed address"));
    let local = sockaddr_of(isk.family, isk.src_port, &isk.src_addr).ok_or_else(bad_addr)?;
    let peer = sockaddr_of(isk.family, isk.dst_port, &isk.dst_addr).ok_or_else(bad_addr)?;
    let tcp_peer = proto == libc::IPPROTO_TCP && isk.dst_port != 0;
    let opts = objs.sock;
    tracing::debug!("inet: restoring file {id}");
    let st = objs.kinds.get::<InetStore>();
    // A closed connection that still named its peer comes back through repair mode when it
    // was saved so (a tcp-stream image, `--tcp-established`), else as a socket never
    // connected, as CRIU restores it.
    let closed = tcp_peer
        && isk.state == CLOSE
        && !(opts.tcp_established && st.streams.contains_key(&isk.ino));
    let conn = tcp_peer && (is_connection(isk.state) || (isk.state == CLOSE && !closed));
    let sk = new_socket(id, isk)?;
    let s = sk.as_fd();
    let show = format!(
        "TCP {local} <-> {peer} ({}, file {id})",
        state_name(isk.state)
    );
    if closed || (conn && (opts.tcp_close || st.tcp_close)) {
        // Restored closed: a socket that was never connected.
        restore_opts(s, id, isk, false)?;
        let _ = rustix::net::shutdown(s, rustix::net::Shutdown::Both);
        set_fl(s, isk.flags, id)?;
        return Ok(sk);
    }
    if conn {
        if !opts.tcp_established {
            return Err(Unsupported {
                pid: None,
                object: show,
                what: "the images hold an established TCP connection".into(),
                hint: "pass --tcp-established to restore it (or --tcp-close to restore it closed)"
                    .into(),
            }
            .into());
        }
        let Some((entry, map, range)) = st.streams.get(&isk.ino) else {
            return Err(TaskError::BadImage(format!(
                "{show}: tcp-stream-{:x}.img is missing (dumped with --tcp-close? then restore with --tcp-close)",
                isk.ino
            ))
            .into());
        };
        let repair = |what: &str| {
            let conn = show.clone();
            let what = what.to_string();
            move |source| InetSkError::Repair { conn, what, source }
        };
        inet::set_repair(s, inet::Repair::On).map_err(repair("TCP_REPAIR on"))?;
        // Room for both queues, whatever the program had (its own sizes come back later).
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, i32::MAX / 2)
            .map_err(repair("SO_SNDBUFFORCE"))?;
        net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, i32::MAX / 2)
            .map_err(repair("SO_RCVBUFFORCE"))?;
        set_fl(s, libc::O_NONBLOCK as u32, id)?;
        let ifname = isk.ifname.as_deref();
        let data = &map.bytes()[range.clone()];
        let restored = tcp_repair::restore(s, isk.state, entry, data, local, peer, || {
            bind(s, local, ifname).map_err(|source| tcp_repair::Step {
                what: format!("bind to {local}"),
                source,
            })
        })
        .map_err(|st| InetSkError::Repair {
            conn: show.clone(),
            what: st.what,
            source: st.source,
        })?;
        let unsent = range.start + restored.unsent.start..range.start + restored.unsent.end;
        let keep_sndbuf = !unsent.is_empty();
        restore_opts(s, id, isk, keep_sndbuf)?;
        restore_shutdown(s, id, isk)?;
        set_fl(s, isk.flags, id)?;
        let st = objs.kinds.get::<InetStore>();
        st.conns.push(Conn {
            src: tcp_repair::unmap(local.ip()),
            sport: local.port(),
            dst: tcp_repair::unmap(peer.ip()),
            dport: peer.port(),
        });
        st.made.push(Made {
            sk: sk.try_clone().map_err(obj_err(id, "inet socket: dup"))?,
            fix: Fixup::Conn {
                reuseaddr: isk.opts.reuseaddr == Some(true),
                reuseport: isk.opts.so_reuseport == Some(true),
                ino: isk.ino,
                unsent,
                sndbuf: keep_sndbuf.then_some(isk.opts.so_sndbuf),
                buf_lock: isk.opts.so_buf_lock,
                name: show,
            },
        });
        return Ok(sk);
    }
    let err = |what: String| {
        obj_err(
            id,
            format!("inet socket ({}): {what}", proto_name(ty, proto)),
        )
    };
    // A raw socket's port is its protocol: it is bound only to an address of its own.
    let raw = ty == libc::SOCK_RAW;
    if isk.src_port != 0 && !(raw && local.ip().is_unspecified()) {
        bind(s, local, isk.ifname.as_deref()).map_err(err(format!("bind to {local}")))?;
    }
    tracing::debug!("inet: bound");
    if isk.state == LISTEN && proto == libc::IPPROTO_TCP {
        rustix::net::listen(s, isk.backlog.cast_signed())
            .map_err(|e| err(format!("listen on {local}"))(e.into()))?;
    }
    // A connected ping or raw socket has no peer port.
    let portless = raw || is_ping(ty, proto);
    if proto != libc::IPPROTO_TCP
        && (isk.dst_port != 0
            || (portless && isk.state == ESTABLISHED && !peer.ip().is_unspecified()))
    {
        rustix::net::connect(s, &peer).map_err(|e| err(format!("connect to {peer}"))(e.into()))?;
    }
    tracing::debug!("inet: listening/connected");
    restore_opts(s, id, isk, false)?;
    if let Some(r) = isk
        .ip_opts
        .as_ref()
        .and_then(|ip| ip.raw.as_ref())
        .filter(|_| raw)
    {
        restore_raw_opts(s, id, family, r)?;
    }
    tracing::debug!("inet: options");
    if let Some(q) = st.queues.remove(&id) {
        requeue_datagrams(s, id, isk, local, q)?;
    }
    restore_shutdown(s, id, isk)?;
    set_fl(s, isk.flags, id)?;
    let st = objs.kinds.get::<InetStore>();
    st.made.push(Made {
        sk: sk.try_clone().map_err(obj_err(id, "inet socket: dup"))?,
        fix: Fixup::Other {
            reuseaddr: isk.opts.reuseaddr == Some(true),
            reuseport: isk.opts.so_reuseport == Some(true),
        },
    });
    Ok(sk)
}

/// What is left to do for the inet sockets once the tree is complete, taken out of the
/// restore's objects before cryo closes its copies ([`take_restored`]).
#[derive(Default)]
pub struct Finish {
    made: Vec<Made>,
    streams: HashMap<u32, Stream>,
    lock: Option<(Method, Option<String>)>,
    cryo_images: bool,
    conns: Vec<Conn>,
}

/// Takes the restored sockets' last steps out of `objs`.
pub fn take_restored(objs: &mut FdObjects) -> Finish {
    let st = objs.kinds.get::<InetStore>();
    Finish {
        made: std::mem::take(&mut st.made),
        streams: std::mem::take(&mut st.streams),
        lock: st.lock.take(),
        cryo_images: st.cryo_images,
        conns: std::mem::take(&mut st.conns),
    }
}

impl Finish {
    /// Lifts the lock the dump left (in the network namespace of `ns_pid`, the restored root,
    /// or cryo's own, and, unless `one_netns` says every task is in the root's, in each other
    /// namespace a connection lives in), takes every connection out of repair mode and sends
    /// what it had not sent yet, and gives every socket its own port-sharing options back.
    /// Runs just before the tree resumes.
    pub fn run(self, ns_pid: i32, one_netns: bool, lock: &mut NetLock) -> Result<(), InetSkError> {
        let has_conn = self
            .made
            .iter()
            .any(|m| matches!(m.fix, Fixup::Conn { .. }));
        if let (Some((method, run_id)), true) = (&self.lock, has_conn) {
            lock.lift_dump_lock(
                *method,
                run_id.as_deref(),
                ns_pid,
                self.cryo_images,
                &self.conns,
            )?;
            // Connections of tasks in other namespaces than the root's were locked there.
            let root_ns = std::fs::metadata(format!("/proc/{ns_pid}/ns/net"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .ok();
            let mut done: Vec<u64> = root_ns.into_iter().collect();
            for m in self
                .made
                .iter()
                .filter(|m| !one_netns && matches!(m.fix, Fixup::Conn { .. }))
            {
                let Some(ns) = inet::socket_netns(m.sk.as_fd())
                    .ok()
                    .map(std::fs::File::from)
                else {
                    continue;
                };
                let Ok(ino) = ns
                    .metadata()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                else {
                    continue;
                };
                if !done.contains(&ino) {
                    done.push(ino);
                    lock.lift_dump_lock_in(
                        *method,
                        run_id.as_deref(),
                        &ns,
                        self.cryo_images,
                        &self.conns,
                    )?;
                }
            }
        }
        for m in self.made {
            let s = m.sk.as_fd();
            match m.fix {
                Fixup::Conn {
                    reuseaddr,
                    reuseport,
                    ino,
                    unsent,
                    sndbuf,
                    buf_lock,
                    name,
                } => {
                    let unsent = self
                        .streams
                        .get(&ino)
                        .map_or(&[][..], |(_, map, _)| &map.bytes()[unsent]);
                    let fail = |what: &str| {
                        let conn = name.clone();
                        let what = what.to_string();
                        move |source| InetSkError::Repair { conn, what, source }
                    };
                    inet::set_repair(s, inet::Repair::Off).map_err(fail("TCP_REPAIR off"))?;
                    net::setsockopt_int(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        i32::from(reuseaddr),
                    )
                    .map_err(fail("SO_REUSEADDR"))?;
                    net::setsockopt_int(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEPORT,
                        i32::from(reuseport),
                    )
                    .map_err(fail("SO_REUSEPORT"))?;
                    let mut off = 0;
                    while off < unsent.len() {
                        match net::send(s, &unsent[off..]) {
                            Ok(n) if n > 0 => off += n,
                            Ok(_) => break,
                            Err(e) => return Err(fail("send the unsent bytes")(e)),
                        }
                    }
                    if let Some(b) = sndbuf {
                        net::setsockopt_int(
                            s,
                            libc::SOL_SOCKET,
                            libc::SO_SNDBUFFORCE,
                            (b / 2).cast_signed(),
                        )
                        .map_err(fail("SO_SNDBUFFORCE"))?;
                        if let Some(l) = buf_lock {
                            net::setsockopt_int(s, libc::SOL_SOCKET, SO_BUF_LOCK, l.cast_signed())
                                .map_err(fail("SO_BUF_LOCK"))?;
                        }
                    }
                }
                Fixup::Other {
                    reuseaddr,
                    reuseport,
                } => {
                    let _ = net::setsockopt_int(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        i32::from(reuseaddr),
                    );
                    let _ = net::setsockopt_int(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEPORT,
                        i32::from(reuseport),
                    );
                }
            }
        }
        Ok(())
    }
}

/// `cryo check` probes of what the socket kinds need, with CRIU's feature names: (name,
/// whether it works: what, or why not).
pub fn features() -> Vec<(&'static str, Result<String, String>)> {
    vec![
        ("tcp_half_closed", half_closed_repair()),
        ("network_lock_nftables", crate::netlock::probe_nftables()),
        ("sk_ns", socket_netns()),
        ("ipv6_freebind", ipv6_freebind()),
        ("sockopt_buf_lock", buf_lock()),
    ]
}

/// TCP repair mode on a connection already shut down for writing (Linux 4.10+).
fn half_closed_repair() -> Result<String, String> {
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let c = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (_a, _) = l.accept().map_err(|e| e.to_string())?;
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    match inet::set_repair(c.as_fd(), inet::Repair::On) {
        Ok(()) => {
            let _ = inet::set_repair(c.as_fd(), inet::Repair::OffNoProbe);
            Ok("TCP repair works on half-closed connections".into())
        }
        Err(e) => Err(format!(
            "TCP_REPAIR on a half-closed connection: {e} (needs Linux 4.10+ and CAP_NET_ADMIN)"
        )),
    }
}

fn socket_netns() -> Result<String, String> {
    let s = inet::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| e.to_string())?;
    inet::socket_netns(s.as_fd())
        .map(|_| "SIOCGSKNS works".into())
        .map_err(|e| format!("SIOCGSKNS: {e}"))
}

fn ipv6_freebind() -> Result<String, String> {
    let s = inet::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).map_err(|e| e.to_string())?;
    net::setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)
        .map(|_| "IPV6_FREEBIND works".into())
        .map_err(|e| format!("IPV6_FREEBIND: {e}"))
}

fn buf_lock() -> Result<String, String> {
    let s = inet::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| e.to_string())?;
    net::getsockopt_int(s.as_fd(), libc::SOL_SOCKET, SO_BUF_LOCK)
        .map(|_| "SO_BUF_LOCK works".into())
        .map_err(|e| format!("SO_BUF_LOCK: {e} (Linux 5.14+)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_image_encoding() {
        for a in ["10.1.2.3:80", "[fe80::1]:22", "[::ffff:10.0.0.1]:5"] {
            let a: SocketAddr = a.parse().unwrap();
            let fam = if a.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let back = sockaddr_of(
                fam.cast_unsigned(),
                u32::from(a.port()),
                &addr_words(a.ip()),
            )
            .unwrap();
            assert_eq!(back.ip(), a.ip());
            assert_eq!(back.port(), a.port());
        }
    }
}
