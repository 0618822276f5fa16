//! Sockets cryo inspects or creates in its own process: the `sock_diag` netlink query that
//! lists unix sockets with their peers, names and queues (netlink-packet-sock-diag), and the socket calls restore needs
//! (socketpair, bind, listen, connect, accept, options, peeking at queued data).

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// socket calls return byte counts the kernel bounds; sockaddr and netlink fields have C widths.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, SendFlags, Shutdown, SocketAddrUnix, SocketFlags, SocketType};

use super::cvt;

/// One unix socket as `sock_diag` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7) or TCP_LISTEN (10).
    pub state: u8,
    /// Bound address: a path, or an abstract name starting with NUL. Empty when unbound.
    pub name: Vec<u8>,
    /// (inode, device) of the socket file a path name refers to.
    pub vfs: Option<(u32, u32)>,
    /// Inode of the connected peer (0: none).
    pub peer: u32,
    /// Inodes of connections waiting to be accepted (listeners).
    pub icons: Vec<u32>,
    /// Listener: (waiting connections, backlog). Others: (bytes queued in, bytes queued out).
    pub rqlen: (u32, u32),
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// Inode of the network namespace the socket was made in (set by the caller, which
    /// knows in which namespace it asked).
    pub netns: u64,
}

/// Every unix socket of cryo's network namespace: one `sock_diag` dump (netlink-packet-sock-diag
/// builds the request and parses the answers).
pub fn unix_diag() -> io::Result<Vec<UnixDiag>> {
    use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
    use netlink_packet_sock_diag::SockDiagMessage;

    let req = SockDiagMessage::UnixRequest(UnixRequest {
        // Every state (unconnected datagram sockets are TCP_CLOSE).
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::NAME
            | ShowFlags::VFS
            | ShowFlags::PEER
            | ShowFlags::ICONS
            | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    });
    let mut out = Vec::new();
    diag_dump(req, |m| {
        if let SockDiagMessage::UnixResponse(r) = m {
            out.push(unix_of(&r));
        }
    })?;
    Ok(out)
}

/// The shutdown state (RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2) of the inet socket of inode `ino`
/// (`family` AF_INET or AF_INET6, `protocol` IPPROTO_UDP, ...), from an inet `sock_diag`
/// dump of the calling thread's network namespace; None when it is not listed. (`poll`
/// shows a datagram socket's receive shutdown only.)
pub fn inet_shutdown(family: u8, protocol: u8, ino: u32) -> io::Result<Option<u8>> {
    use netlink_packet_sock_diag::inet::{
        nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags,
    };
    use netlink_packet_sock_diag::SockDiagMessage;
    let req = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(u32::MAX),
        socket_id: if i32::from(family) == libc::AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    });
    let mut found = None;
    diag_dump(req, |m| {
        if let SockDiagMessage::InetResponse(r) = m {
            if r.header.inode == ino {
                // The kernel always adds INET_DIAG_SHUTDOWN.
                found = Some(
                    r.nlas
                        .iter()
                        .find_map(|n| match n {
                            Nla::Shutdown(s) => Some(*s),
                            _ => None,
                        })
                        .unwrap_or(0),
                );
            }
        }
    })?;
    Ok(found)
}

/// Sends the `sock_diag` dump request `req` (netlink-packet-sock-diag builds it and parses
/// the answers) in the calling thread's network namespace and gives each answer to `each`.
fn diag_dump(
    req: netlink_packet_sock_diag::SockDiagMessage,
    mut each: impl FnMut(netlink_packet_sock_diag::SockDiagMessage),
) -> io::Result<()> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_sock_diag::SockDiagMessage;

    let sk = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(rustix::net::netlink::SOCK_DIAG),
    )?;
    let mut req = NetlinkMessage::from(req);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut b = vec![0u8; req.buffer_len()];
    req.serialize(&mut b);
    write_all(sk.as_fd(), &b)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rustix::io::read(&sk, &mut buf)?;
        if n == 0 {
            return Err(io::Error::other("sock_diag: the answer ended early"));
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            if len < 16 || off + len > n {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            let m = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..off + len])
                .map_err(|e| io::Error::other(format!("sock_diag reply: {e}")))?;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// A unix socket of a `sock_diag` answer. A name is kept as the kernel reports it: a path
/// with its NUL, an abstract name after its leading NUL.
fn unix_of(r: &netlink_packet_sock_diag::unix::UnixResponse) -> UnixDiag {
    use netlink_packet_core::Emitable;
    use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName};
    use std::os::unix::ffi::OsStrExt;

    let mut d = UnixDiag {
        kind: r.header.kind,
        state: r.header.state,
        ino: r.header.inode,
        ..Default::default()
    };
    for nla in &r.nlas {
        match nla {
            Nla::Name(UnixDiagName::Pathname(p)) => {
                d.name = p.as_bytes().to_vec();
                d.name.push(0);
            }
            Nla::Name(UnixDiagName::Abstract(a)) => {
                d.name = [&[0u8][..], a].concat();
            }
            Nla::Vfs(v) => {
                // (Its fields are private: read back from its wire form, inode then device.)
                let mut b = [0u8; 8];
                v.emit(&mut b);
                let (ino, dev) = b.split_at(4);
                d.vfs = Some((
                    u32::from_ne_bytes(ino.try_into().expect("4")),
                    u32::from_ne_bytes(dev.try_into().expect("4")),
                ));
            }
            Nla::Peer(p) => d.peer = *p,
            Nla::PendingConnections(v) => d.icons = v.clone(),
            Nla::ReceiveQueueLength(a, b) => d.rqlen = (*a, *b),
            Nla::Shutdown(s) => d.shutdown = *s,
            _ => {}
        }
    }
    d
}

fn write_all(fd: BorrowedFd<'_>, b: &[u8]) -> io::Result<()> {
    if rustix::io::write(fd, b)? != b.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
}

/// The `sockaddr_un` of `name`: a path, or an abstract name starting with NUL. A path ends
/// at its first NUL, as the kernel reads it (names from sock_diag may carry trailing NULs).
pub fn unix_addr(name: &[u8]) -> io::Result<SocketAddrUnix> {
    use std::os::unix::ffi::OsStrExt;
    Ok(match name.split_first() {
        Some((0, abstract_name)) => SocketAddrUnix::new_abstract_name(abstract_name)?,
        _ => {
            let path = name.split(|&b| b == 0).next().unwrap_or_default();
            SocketAddrUnix::new(std::ffi::OsStr::from_bytes(path))?
        }
    })
}

/// `socket(AF_UNIX, kind | SOCK_CLOEXEC, 0)` (`kind`: `SOCK_STREAM`, ... as images keep it).
pub fn unix_socket(kind: i32) -> io::Result<OwnedFd> {
    let ty = SocketType::from_raw(kind.cast_unsigned());
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        ty,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `socketpair(AF_UNIX, kind | SOCK_CLOEXEC)`.
pub fn unix_pair(kind: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let ty = SocketType::from_raw(kind.cast_unsigned());
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        ty,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `bind` to a unix name.
pub fn bind(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::net::bind(fd, &unix_addr(name)?)?)
}

/// `connect` to a unix name.
pub fn connect(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::net::connect(fd, &unix_addr(name)?)?)
}

/// `listen(fd, backlog)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    Ok(rustix::net::listen(fd, backlog)?)
}

/// `accept4(fd, NULL, NULL, SOCK_CLOEXEC)`.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(fd, SocketFlags::CLOEXEC)?)
}

/// `shutdown(fd, how)` (`SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`).
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    let how = match how {
        libc::SHUT_RD => Shutdown::Read,
        libc::SHUT_WR => Shutdown::Write,
        libc::SHUT_RDWR => Shutdown::Both,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    Ok(rustix::net::shutdown(fd, how)?)
}

/// An integer socket option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut v = 0i32;
    let mut len = 4u32;
    // SAFETY: v and len are valid for the kernel to write.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            level,
            opt,
            &mut v as *mut i32,
            &mut len as *mut u32,
        )
    })?;
    Ok(v)
}

/// A socket's (domain, type, protocol): `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`.
pub fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<(i32, i32, i32)> {
    Ok((
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
    ))
}

/// Gives a socket the send and receive buffer sizes another one reported (SO_SNDBUF,
/// SO_RCVBUF: the kernel reports twice what it was given, so half is set), beyond the
/// system's limits as a dump's socket may have had them (the FORCE options). The error
/// names the option that failed.
pub fn set_buffer_sizes(
    fd: BorrowedFd<'_>,
    sndbuf: u32,
    rcvbuf: u32,
) -> Result<(), (&'static str, io::Error)> {
    for (opt, name, v) in [
        (libc::SO_SNDBUFFORCE, "SO_SNDBUFFORCE", sndbuf),
        (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE", rcvbuf),
    ] {
        setsockopt_int(fd, libc::SOL_SOCKET, opt, (v / 2).cast_signed()).map_err(|e| (name, e))?;
    }
    Ok(())
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: v is valid for reads of 4 bytes.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const i32,
            4,
        )
    })
    .map(|_| ())
}

fn timeout_of(opt: i32) -> io::Result<Timeout> {
    match opt {
        libc::SO_SNDTIMEO => Ok(Timeout::Send),
        libc::SO_RCVTIMEO => Ok(Timeout::Recv),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// A timeout socket option (`SO_SNDTIMEO`/`SO_RCVTIMEO`) as (sec, usec); (0, 0) for none.
pub fn getsockopt_tv(fd: BorrowedFd<'_>, opt: i32) -> io::Result<(u64, u64)> {
    let t = rustix::net::sockopt::socket_timeout(fd, timeout_of(opt)?)?;
    Ok(t.map_or((0, 0), |d| (d.as_secs(), u64::from(d.subsec_micros()))))
}

/// Sets a timeout socket option from (sec, usec) as images keep it; (0, 0) for none.
pub fn setsockopt_tv(fd: BorrowedFd<'_>, opt: i32, sec: u64, usec: u64) -> io::Result<()> {
    let usec = u32::try_from(usec)
        .ok()
        .filter(|u| *u < 1_000_000)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let t = (sec != 0 || usec != 0).then(|| Duration::new(sec, usec * 1000));
    Ok(rustix::net::sockopt::set_socket_timeout(
        fd,
        timeout_of(opt)?,
        t,
    )?)
}

/// What a non-destructive read of a socket queue found.
pub enum Peeked {
    /// The next message (datagram) or bytes (stream).
    Data(usize),
    /// Nothing (more) queued.
    Empty,
    /// The message carries file descriptors (SCM_RIGHTS); they were closed again.
    Fds,
}

/// `recvmsg(MSG_PEEK | MSG_DONTWAIT)` into `buf`, honouring the socket's SO_PEEK_OFF.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Peeked> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 64];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points at valid iovec and control buffers for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd.as_raw_fd(),
            &mut msg as *mut libc::msghdr,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = match cvt(r) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(Peeked::Empty),
        Err(e) => return Err(e),
    };
    // Passed fds were installed in cryo by the peek: close them.
    let mut had_fds = false;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                had_fds = true;
                let data = libc::CMSG_DATA(c) as *const i32;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    libc::close(*data.add(i));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if had_fds {
        return Ok(Peeked::Fds);
    }
    if n == 0 && msg.msg_flags & libc::MSG_TRUNC == 0 {
        return Ok(Peeked::Data(0));
    }
    Ok(Peeked::Data(n))
}

/// `send(fd, buf, MSG_DONTWAIT | MSG_NOSIGNAL)`.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        fd,
        buf,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// `sendto` a unix name (an unconnected datagram).
pub fn send_to(fd: BorrowedFd<'_>, buf: &[u8], name: &[u8]) -> io::Result<usize> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    Ok(rustix::net::sendto(fd, buf, flags, &unix_addr(name)?)?)
}

/// Receives one whole datagram (SEQPACKET message) from `fd`, sized first with
/// `MSG_PEEK | MSG_TRUNC`. An empty vector means the peer closed the connection.
pub fn recv_msg(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut probe = [0u8; 1];
    // SAFETY: probe is valid for writes of 1 byte; MSG_TRUNC returns the full length.
    let len = cvt(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd.as_raw_fd(),
            probe.as_mut_ptr(),
            1,
            libc::MSG_PEEK | libc::MSG_TRUNC,
            0,
            0,
        )
    })? as usize;
    let mut buf = vec![0u8; len.max(1)];
    // SAFETY: buf is valid for writes of its length.
    let n = cvt(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            0,
            0,
            0,
        )
    })? as usize;
    buf.truncate(n);
    Ok(buf)
}

/// Sends one message, optionally with one fd attached (SCM_RIGHTS).
pub fn send_msg(fd: BorrowedFd<'_>, buf: &[u8], pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(p) = pass {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer is large enough for one cmsg with one int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            *(libc::CMSG_DATA(c) as *mut i32) = p.as_raw_fd();
        }
    }
    // SAFETY: msg points at valid buffers for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd.as_raw_fd(),
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        )
    })
    .map(|_| ())
}

/// The pid of the process at the other end of a unix socket (SO_PEERCRED).
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as u32;
    // SAFETY: cred and len are valid for the kernel to write.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred,
            &mut len as *mut u32,
        )
    })?;
    Ok(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_timeouts_round_trip() {
        let (a, _b) = unix_pair(libc::SOCK_STREAM).unwrap();
        assert_eq!(getsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO).unwrap(), (0, 0));
        setsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO, 2, 500_000).unwrap();
        setsockopt_tv(a.as_fd(), libc::SO_RCVTIMEO, 7, 0).unwrap();
        assert_eq!(
            getsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO).unwrap(),
            (2, 500_000)
        );
        assert_eq!(getsockopt_tv(a.as_fd(), libc::SO_RCVTIMEO).unwrap(), (7, 0));
        // A damaged image's microseconds are refused, not wrapped.
        assert!(setsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO, 1, 1_000_000).is_err());
        setsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO, 0, 0).unwrap();
        assert_eq!(getsockopt_tv(a.as_fd(), libc::SO_SNDTIMEO).unwrap(), (0, 0));
    }

    #[test]
    fn abstract_and_path_names_bind() {
        let s = unix_socket(libc::SOCK_DGRAM).unwrap();
        let name = format!("\0cryo-test-{}", std::process::id());
        bind(s.as_fd(), name.as_bytes()).unwrap();
        let c = unix_socket(libc::SOCK_DGRAM).unwrap();
        assert_eq!(send_to(c.as_fd(), b"hi", name.as_bytes()).unwrap(), 2);
    }

    #[test]
    fn a_path_name_ends_at_its_first_nul() {
        let dir = std::env::temp_dir().join(format!("cryo-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let s = unix_socket(libc::SOCK_DGRAM).unwrap();
        bind(s.as_fd(), path.as_os_str().as_encoded_bytes()).unwrap();
        // As sock_diag may report it: the path, then NULs.
        let mut named = path.as_os_str().as_encoded_bytes().to_vec();
        named.extend_from_slice(&[0, 0]);
        let c = unix_socket(libc::SOCK_DGRAM).unwrap();
        connect(c.as_fd(), &named).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
