//! Sockets cryo inspects or creates in its own process: the `sock_diag` netlink query that
//! lists unix sockets with their peers, names and queues, and the socket calls restore needs
//! (socketpair, bind, listen, connect, accept, options, peeking at queued data).

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// socket calls return byte counts the kernel bounds; sockaddr and netlink fields have C widths.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, SendFlags, Shutdown, SocketAddrUnix, SocketFlags, SocketType};

use super::cvt;

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(ret)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// Every unix socket of cryo's network namespace.
pub fn unix_diag() -> io::Result<Vec<UnixDiag>> {
    // SAFETY: plain integer arguments.
    let sk = owned(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    })?;
    // nlmsghdr (16) + unix_diag_req (24)
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(libc::AF_UNIX as u8);
    req.push(0); // protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
                                                // NAME | VFS | PEER | ICONS | RQLEN
    req.extend_from_slice(&(1u32 | 2 | 4 | 8 | 16).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // cookie: none
    write_all(sk.as_fd(), &req)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = cvt(unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                sk.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
                0,
                0,
                0,
            )
        })? as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(-e));
                }
                _ => {
                    if let Some(d) = parse_diag(&buf[off + 16..off + len]) {
                        out.push(d);
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// Parses a unix_diag_msg and its attributes.
fn parse_diag(b: &[u8]) -> Option<UnixDiag> {
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
    };
    let mut d = UnixDiag {
        kind: *b.get(1)?,
        state: *b.get(2)?,
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
            0 => d.name = v.to_vec(),
            1 => d.vfs = Some((u32_at(v, 0)?, u32_at(v, 4)?)),
            2 => d.peer = u32_at(v, 0)?,
            3 => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
            4 => d.rqlen = (u32_at(v, 0)?, u32_at(v, 4)?),
            6 => d.shutdown = *v.first()?,
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(d)
}

fn write_all(fd: BorrowedFd<'_>, b: &[u8]) -> io::Result<()> {
    if rustix::io::write(fd, b)? != b.len() {
        return Err(io::Error::other("short write"));
    }
    Ok(())
}

/// The `sockaddr_un` of `name`: a path, or an abstract name starting with NUL. A path ends
/// at its first NUL, as the kernel reads it (names from sock_diag may carry trailing NULs).
fn sockaddr(name: &[u8]) -> io::Result<SocketAddrUnix> {
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
    Ok(rustix::net::bind(fd, &sockaddr(name)?)?)
}

/// `connect` to a unix name.
pub fn connect(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    Ok(rustix::net::connect(fd, &sockaddr(name)?)?)
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
    Ok(rustix::net::sendto(fd, buf, flags, &sockaddr(name)?)?)
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
