//! Unix-socket calls beyond the plain ones of `net`: messages that carry file descriptors
//! (`SCM_RIGHTS`), peeked at dump and sent again at restore, and the socket file a bound
//! socket is attached to (`SIOCUNIXFILE`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Most fds one message can carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// One message (datagram, seqpacket record or stream chunk) read without consuming it.
pub struct PeekedMsg {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The message is longer than the buffer.
    pub truncated: bool,
    /// The fds it carries (SCM_RIGHTS), installed in cryo by the peek (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

/// `recvmsg(MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC)` into `buf`, honouring the socket's
/// `SO_PEEK_OFF`; `None` when nothing (more) is queued. The kernel gives the peeker its own
/// references to files passed in the message: the queue keeps them too.
pub fn peek_msg(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<PeekedMsg>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a full SCM_RIGHTS (and a credentials message, if SO_PASSCRED is on).
    let mut cbuf = vec![0u64; (MAX_FDS * 4 + 128) / 8];
    // SAFETY: msghdr is plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len() * 8;
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
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled; every fd in
    // an SCM_RIGHTS message is new in cryo's table and owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(PeekedMsg {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds,
    }))
}

/// `sendmsg(MSG_DONTWAIT | MSG_NOSIGNAL)` of `buf`, carrying `fds` (SCM_RIGHTS) when not
/// empty; to `name` (a unix address) when given. Returns the bytes sent.
pub fn send_rights(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
    name: Option<&[u8]>,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::ETOOMANYREFS));
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = vec![0u64; (MAX_FDS * 4 + 64) / 8];
    // SAFETY: msghdr and sockaddr_un are plain old data; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(name) = name {
        if name.len() >= addr.sun_path.len() {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        addr.sun_family = libc::AF_UNIX as u16;
        for (d, s) in addr.sun_path.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = (2 + name.len() + usize::from(name.first() != Some(&0))) as u32;
    }
    if !fds.is_empty() {
        let bytes = (fds.len() * 4) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        // SAFETY: the control buffer holds one cmsg with up to MAX_FDS ints.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            let data = libc::CMSG_DATA(c) as *mut RawFd;
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points at valid buffers for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd.as_raw_fd(),
            &msg as *const libc::msghdr,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
    .map(|n| n as usize)
}

/// `ioctl(SIOCUNIXFILE)`: an `O_PATH` fd of the socket file a bound unix socket is attached
/// to (Linux 4.10+; needs CAP_NET_ADMIN). Its `/proc/self/fd` link is the file's path as it
/// is now, " (deleted)" when it was unlinked.
pub fn unix_file(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const SIOCUNIXFILE: libc::c_ulong = 0x89E0; // SIOCPROTOPRIVATE + 0
                                                // SAFETY: the ioctl takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCUNIXFILE, 0) };
    let fd = cvt(r as libc::c_long)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
