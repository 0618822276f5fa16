//! Unix-socket calls beyond the plain ones of `net`: messages that carry file descriptors
//! (`SCM_RIGHTS`), peeked at dump and sent again at restore (rustix's `recvmsg`/`sendmsg`
//! with ancillary buffers), and the socket file a bound socket is attached to
//! (`SIOCUNIXFILE`, which rustix has no call for).

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// cmsg lengths and fd counts are C widths the kernel bounds (at most SCM_MAX_FD fds).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

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
    // Room for a full SCM_RIGHTS (and a credentials message, if SO_PASSCRED is on).
    let mut space = vec![
        MaybeUninit::<u8>::uninit();
        rustix::cmsg_space!(ScmRights(MAX_FDS), ScmCredentials(1))
    ];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
    let r = match rustix::net::recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut control, flags) {
        Ok(r) => r,
        Err(rustix::io::Errno::AGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(Some(PeekedMsg {
        len: r.bytes.min(buf.len()),
        truncated: r.flags.contains(ReturnFlags::TRUNC),
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
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("SCM_RIGHTS: control buffer too small"));
    }
    let iov = [IoSlice::new(buf)];
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    Ok(match name {
        Some(name) => {
            let addr = super::net::unix_addr(name)?;
            rustix::net::sendmsg_addr(fd, &addr, &iov, &mut control, flags)?
        }
        None => rustix::net::sendmsg(fd, &iov, &mut control, flags)?,
    })
}

/// `ioctl(SIOCUNIXFILE)`: an `O_PATH` fd of the socket file a bound unix socket is attached
/// to (Linux 4.10+; needs CAP_NET_ADMIN). Its `/proc/self/fd` link is the file's path as it
/// is now, " (deleted)" when it was unlinked.
pub fn unix_file(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const SIOCUNIXFILE: libc::c_ulong = 0x89E0; // SIOCPROTOPRIVATE + 0
                                                // SAFETY: the ioctl takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCUNIXFILE, 0) };
    let fd = cvt(libc::c_long::from(r))? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `recvmsg(MSG_CMSG_CLOEXEC)` of up to `buf.len()` bytes with the fds they carry
/// (SCM_RIGHTS); blocking as the socket is. `(0, [])` at end of stream.
pub fn recv_rights(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_rights_flags(fd, buf, RecvFlags::CMSG_CLOEXEC)
}

/// [`recv_rights`] that does not wait (`MSG_DONTWAIT`): `WouldBlock` when nothing is there.
pub fn recv_rights_nonblock(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_rights_flags(fd, buf, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT)
}

fn recv_rights_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: RecvFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((r.bytes.min(buf.len()), fds))
}
