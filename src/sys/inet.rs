//! Inet sockets in cryo's own process. Raw calls only where `rustix` has no typed call:
//! `TCP_INFO`, the queue-size ioctls `SIOCOUTQ` and `SIOCOUTQNSD`, the kernel's TCP repair
//! mode (`TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ`, `TCP_REPAIR_OPTIONS`,
//! `TCP_REPAIR_WINDOW`, `TCP_TIMESTAMP`), options read or written as bytes, a socket's
//! network namespace (`SIOCGSKNS`), classic BPF filters and the packet `sock_diag` dump
//! (netlink-packet-sock-diag has only inet and unix). Through rustix: `SIOCINQ`
//! (`FIONREAD`), `poll` with no wait, peeking at a queue, raw IP packets sent with a mark
//! (forged FIN/ACK segments, datagrams put back in a queue), sockets, names, bind and connect.

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// socket options and ioctls take and give C ints and lengths the kernel bounds; sockaddr,
// tcp_info and sock_diag fields have C widths.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::net::{RecvFlags, SendFlags, SocketAddrAny};

use super::cvt;

/// `TCP_REPAIR` and friends (linux/tcp.h).
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
/// `SIOCOUTQNSD`: bytes in the send queue not sent yet.
const SIOCOUTQNSD: u64 = 0x894B;
/// `SIOCGSKNS`: an fd of the socket's network namespace.
const SIOCGSKNS: u64 = 0x894C;
/// `SIOCOUTQ` (= TIOCOUTQ).
const SIOCOUTQ: u64 = 0x5411;

/// `TCP_REPAIR` values: on, off (the kernel sends a window probe), off without the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    On = 1,
    Off = 0,
    OffNoProbe = -1,
}

/// `TCP_REPAIR_QUEUE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairQueue {
    None = 0,
    Recv = 1,
    Send = 2,
}

/// The first fields of `struct tcp_info` cryo uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `TCP_ESTABLISHED` (1) ... `TCP_CLOSING` (11).
    pub state: u8,
    /// `TCPI_OPT_*` bits.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Listener: connections waiting to be accepted.
    pub unacked: u32,
    /// Listener: its backlog.
    pub sacked: u32,
}

/// `getsockopt(TCP_INFO)`.
pub fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let mut b = [0u8; 104];
    let n = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b)?;
    if n < 32 {
        return Err(io::Error::other("short TCP_INFO"));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
    })
}

/// An option's raw bytes; returns how many the kernel wrote.
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as u32;
    // SAFETY: buf and len are valid for the kernel to write; len bounds the write.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr(),
            &mut len as *mut u32,
        )
    })?;
    Ok(len as usize)
}

/// Sets an option from raw bytes.
pub fn setsockopt_bytes(fd: BorrowedFd<'_>, level: i32, opt: i32, buf: &[u8]) -> io::Result<()> {
    // SAFETY: buf is valid for reads of its length.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_ptr(),
            buf.len(),
        )
    })
    .map(|_| ())
}

fn ioctl_int(fd: BorrowedFd<'_>, req: u64) -> io::Result<u32> {
    let mut v = 0i32;
    // SAFETY: the request writes one int to v.
    cvt(unsafe { libc::syscall(libc::SYS_ioctl, fd.as_raw_fd(), req, &mut v as *mut i32) })?;
    Ok(v as u32)
}

/// `SIOCINQ` (= `FIONREAD`): bytes in the receive queue (TCP: not read yet).
pub fn inq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let n = rustix::io::ioctl_fionread(fd)?;
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// `SIOCOUTQ`: bytes in the send queue (TCP: not acknowledged yet, sent or not).
pub fn outq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQ)
}

/// `SIOCOUTQNSD`: bytes in the send queue not sent yet.
pub fn outq_unsent(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

/// `SIOCGSKNS`: the socket's network namespace.
pub fn socket_netns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: the request takes no argument and returns a new fd.
    let r = cvt(unsafe { libc::syscall(libc::SYS_ioctl, fd.as_raw_fd(), SIOCGSKNS, 0) })?;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn set_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> io::Result<()> {
    setsockopt_bytes(fd, level, opt, &v.to_ne_bytes())
}

fn get_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt_bytes(fd, level, opt, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

/// `TCP_REPAIR`.
pub fn set_repair(fd: BorrowedFd<'_>, mode: Repair) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, mode as i32)
}

/// `TCP_REPAIR_QUEUE`: the queue `TCP_QUEUE_SEQ`, `send` and peeking `recv` work on.
pub fn set_repair_queue(fd: BorrowedFd<'_>, q: RepairQueue) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, q as i32)
}

/// `getsockopt(TCP_QUEUE_SEQ)`: the selected queue's sequence number (receive: rcv_nxt, send:
/// write_seq).
pub fn queue_seq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map(|v| v as u32)
}

/// `setsockopt(TCP_QUEUE_SEQ)` (before connect, in repair mode).
pub fn set_queue_seq(fd: BorrowedFd<'_>, seq: u32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, seq as i32)
}

/// `TCP_REPAIR_OPTIONS`: (option code, value) pairs as the handshake would have set them.
pub fn set_repair_options(fd: BorrowedFd<'_>, opts: &[(u32, u32)]) -> io::Result<()> {
    let mut b = Vec::with_capacity(opts.len() * 8);
    for (code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &b)
}

/// `getsockopt(TCP_TIMESTAMP)`: the connection's timestamp clock.
pub fn tcp_timestamp(fd: BorrowedFd<'_>) -> io::Result<u32> {
    get_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP).map(|v| v as u32)
}

/// `setsockopt(TCP_TIMESTAMP)`: continue the connection's timestamp clock from `ts`.
pub fn set_tcp_timestamp(fd: BorrowedFd<'_>, ts: u32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, ts as i32)
}

/// `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// `getsockopt(TCP_REPAIR_WINDOW)`; None on kernels without it (before 4.8).
pub fn repair_window(fd: BorrowedFd<'_>) -> io::Result<Option<RepairWindow>> {
    let mut b = [0u8; 20];
    match getsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &mut b) {
        Ok(20) => {}
        Ok(_) => return Err(io::Error::other("short TCP_REPAIR_WINDOW")),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => return Ok(None),
        Err(e) => return Err(e),
    }
    let w = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    Ok(Some(RepairWindow {
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    }))
}

/// `setsockopt(TCP_REPAIR_WINDOW)`.
pub fn set_repair_window(fd: BorrowedFd<'_>, w: &RepairWindow) -> io::Result<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &b)
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: copies queued bytes without consuming them (in repair
/// mode, from the queue `TCP_REPAIR_QUEUE` selected). 0 when nothing is queued.
pub fn recv_peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::net::recv(fd, buf, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((n, _)) => Ok(n),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of at most `max` bytes appended to `buf` (its spare
/// capacity, no zeroing); returns how many. 0 when nothing is queued.
pub fn recv_peek_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    let n = match rustix::net::recv(fd, &mut spare[..len], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok(((init, _), _)) => init.len(),
        Err(rustix::io::Errno::AGAIN) => 0,
        Err(e) => return Err(e.into()),
    };
    // SAFETY: rustix reports the first `n` bytes of the spare capacity initialized.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// `poll` with no timeout: the events of `events` the socket has now.
pub fn poll_now(fd: BorrowedFd<'_>, events: i16) -> io::Result<i16> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut p = [PollFd::from_borrowed_fd(
        fd,
        PollFlags::from_bits_retain(events.cast_unsigned()),
    )];
    rustix::event::poll(&mut p, Some(&Timespec::default()))?;
    Ok(p[0].revents().bits().cast_signed())
}

/// Sends one complete IP packet (`packet` starts with its IPv4 or IPv6 header) to `dst` on a
/// raw socket whose packets carry `mark` (`SO_MARK`), so they pass a network lock that
/// accepts that mark. Made in the caller's network namespace.
pub fn send_raw_ip(packet: &[u8], dst: std::net::IpAddr, mark: u32) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let v6 = dst.is_ipv6();
    let family = if v6 {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let sk = rustix::net::socket_with(
        family,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(rustix::net::ipproto::RAW),
    )?;
    let s = std::os::fd::AsFd::as_fd(&sk);
    set_int(s, libc::SOL_SOCKET, libc::SO_MARK, mark as i32)?;
    if v6 {
        set_int(s, libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, 1)?;
    }
    let n = match dst {
        std::net::IpAddr::V4(a) => rustix::net::sendto(
            s,
            packet,
            SendFlags::empty(),
            &std::net::SocketAddrV4::new(a, 0),
        )?,
        std::net::IpAddr::V6(a) => rustix::net::sendto(
            s,
            packet,
            SendFlags::empty(),
            &std::net::SocketAddrV6::new(a, 0, 0, 0),
        )?,
    };
    if n != packet.len() {
        return Err(io::Error::other("short raw send"));
    }
    Ok(())
}

/// `SO_GET_FILTER`: the socket's classic BPF filter, one `sock_filter` per u64 as CRIU packs
/// it (`code << 48 | jt << 40 | jf << 32 | k`); empty when none is attached.
pub fn socket_filter(fd: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    const SO_GET_FILTER: i32 = libc::SO_ATTACH_FILTER;
    // The option's length counts instructions, not bytes. First the count.
    let mut count: u32 = 0;
    let mut dummy = [0u8; 8];
    // SAFETY: a zero length asks only for the count, written to `count`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            dummy.as_mut_ptr(),
            &mut count as *mut u32,
        )
    })?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut insns = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0
        };
        count as usize
    ];
    let mut len = count;
    // SAFETY: insns has room for `count` sock_filter entries, which `len` announces.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            insns.as_mut_ptr(),
            &mut len as *mut u32,
        )
    })?;
    insns.truncate(len as usize);
    Ok(insns
        .iter()
        .map(|i| {
            u64::from(i.code) << 48 | u64::from(i.jt) << 40 | u64::from(i.jf) << 32 | u64::from(i.k)
        })
        .collect())
}

/// `SO_ATTACH_FILTER` with instructions packed as [`socket_filter`] returns them.
pub fn set_socket_filter(fd: BorrowedFd<'_>, packed: &[u64]) -> io::Result<()> {
    let mut insns: Vec<libc::sock_filter> = packed
        .iter()
        .map(|v| libc::sock_filter {
            code: (v >> 48) as u16,
            jt: (v >> 40) as u8,
            jf: (v >> 32) as u8,
            k: *v as u32,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: prog points at `len` valid instructions for the duration of the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog,
            std::mem::size_of::<libc::sock_fprog>(),
        )
    })
    .map(|_| ())
}

/// `socket(domain, ty | SOCK_CLOEXEC, proto)` for any family (the kernel's ints, as the
/// images keep them).
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, Protocol, SocketFlags, SocketType};
    let family = AddressFamily::from_raw(
        u16::try_from(domain).map_err(|_| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?,
    );
    // The type's flag bits (SOCK_NONBLOCK, SOCK_CLOEXEC) go in the flags.
    let flag_bits = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    let kind = SocketType::from_raw((ty & !flag_bits).cast_unsigned());
    let flags =
        SocketFlags::from_bits_retain((ty & flag_bits).cast_unsigned()) | SocketFlags::CLOEXEC;
    let proto = std::num::NonZeroU32::new(proto.cast_unsigned()).map(Protocol::from_raw);
    Ok(rustix::net::socket_with(family, kind, flags, proto)?)
}

/// The index of network interface `name` in the calling thread's network namespace
/// (`if_nametoindex`).
pub fn if_index(name: &str) -> io::Result<u32> {
    let s = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    Ok(rustix::net::netdevice::name_to_index(&s, name)?)
}

/// The name of network interface `index` in the calling thread's network namespace
/// (`SIOCGIFNAME`).
pub fn if_name(index: u32) -> io::Result<String> {
    let s = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    Ok(rustix::net::netdevice::index_to_name(&s, index)?)
}

/// `getsockname` as the raw address bytes (any family).
pub fn sockname(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    Ok(addr_bytes(&rustix::net::getsockname(fd)?))
}

/// `getpeername` as the raw address bytes; empty when not connected.
pub fn peername(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    match rustix::net::getpeername(fd) {
        Ok(a) => Ok(a.as_ref().map(addr_bytes).unwrap_or_default()),
        Err(rustix::io::Errno::NOTCONN) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The bytes of a socket address as the kernel gave them.
fn addr_bytes(a: &SocketAddrAny) -> Vec<u8> {
    // SAFETY: a SocketAddrAny holds `addr_len` initialized bytes at `as_ptr`.
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.addr_len() as usize) }.to_vec()
}

/// A socket address from raw bytes (a `sockaddr_*` of some family, as images keep them).
fn addr_of(addr: &[u8]) -> io::Result<SocketAddrAny> {
    if addr.len() < 2 || addr.len() > std::mem::size_of::<rustix::net::addr::SocketAddrStorage>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `addr` holds `len` initialized bytes, within the storage's size (checked); the
    // kernel checks the address itself.
    Ok(unsafe { SocketAddrAny::read(addr.as_ptr().cast(), addr.len() as u32) })
}

/// `bind` to an address given as raw bytes (a `sockaddr_*` of the socket's family).
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    Ok(rustix::net::bind(fd, &addr_of(addr)?)?)
}

/// `connect` to an address given as raw bytes.
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    Ok(rustix::net::connect(fd, &addr_of(addr)?)?)
}

/// A `sock_diag` dump (`SOCK_DIAG_BY_FAMILY`, `NLM_F_DUMP`) in the calling thread's network
/// namespace: `req` is the family's request (after the netlink header); returns the payload
/// of every answer (after its netlink header).
pub fn diag_dump(req: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let sk = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_SOCK_DIAG)?;
    let s = std::os::fd::AsFd::as_fd(&sk);
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(req);
    if super::fd::write(s, &msg)? != msg.len() {
        return Err(io::Error::other("short netlink write"));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = super::fd::read(s, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                return Err(io::Error::other("malformed sock_diag answer"));
            }
            match i32::from(ty) {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let e = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(-e));
                }
                _ => out.push(buf[off + 16..off + len].to_vec()),
            }
            off += (len + 3) & !3;
        }
    }
}
