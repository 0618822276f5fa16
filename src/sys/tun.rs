//! tun/tap devices through `/dev/net/tun` (rtnetlink cannot create them): `create_persistent`
//! makes one in the calling thread's network namespace; the other calls read and set what a
//! tun file (a queue) knows: the device it is attached to and its flags (`TUNGETIFF`), the
//! vnet header size, send buffer and filter, attaching, detaching and persistence.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::cvt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNGETSNDBUF: libc::c_ulong = 0x8004_54d3;
const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const TUNSETIFINDEX: libc::c_ulong = 0x4004_54da;
/// `_IOR('T', 219, struct sock_fprog)` (16 bytes on 64-bit).
const TUNGETFILTER: libc::c_ulong = 0x8010_54db;

/// `TUNSETQUEUE` flag: the queue stops taking packets (the file stays on its device).
pub const IFF_DETACH_QUEUE: u16 = 0x0400;

/// The character device of tun files: 10:200.
pub fn is_tun_dev(rdev: u64) -> bool {
    rdev == libc::makedev(10, 200)
}

/// `ioctl(fd, req, arg)` with an integer argument.
fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the tun ioctls used with this helper take their argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `ioctl(fd, req, &int)`: reads (or, for the set calls, gives) one C int.
fn ioctl_ptr_int(fd: BorrowedFd<'_>, req: libc::c_ulong, v: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: `v` lives across the call; the kernel reads or writes 4 bytes there.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, v as *mut libc::c_int) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `ioctl(fd, req, &ifreq)` with a name and flags; returns the ifreq the kernel left.
fn ioctl_ifreq(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    name: &str,
    flags: u16,
) -> io::Result<[u8; 40]> {
    if name.len() >= 16 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // struct ifreq: the name (16 bytes), then the flags (a short) at offset 16.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `ifr` is a struct ifreq-sized buffer the kernel reads and writes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr.as_mut_ptr()) };
    cvt(libc::c_long::from(r))?;
    Ok(ifr)
}

/// Opens `/dev/net/tun` (a new tun file of the calling thread's network namespace) with the
/// open flags `flags` (`O_RDWR` and the like), close-on-exec.
pub fn open(flags: i32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let acc = flags & libc::O_ACCMODE;
    let f = std::fs::OpenOptions::new()
        .read(acc != libc::O_WRONLY)
        .write(acc != libc::O_RDONLY)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open("/dev/net/tun")?;
    Ok(f.into())
}

/// `TUNGETIFF`: the device the file is attached to and its flags (with `IFF_DETACH_QUEUE`
/// for a detached queue); None for a file attached to nothing (`EBADFD`).
pub fn get_iff(fd: BorrowedFd<'_>) -> io::Result<Option<(String, u16)>> {
    let mut ifr = [0u8; 40];
    // SAFETY: `ifr` is a struct ifreq-sized buffer the kernel writes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, ifr.as_mut_ptr()) };
    match cvt(libc::c_long::from(r)) {
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => Ok(None),
        Err(e) => Err(e),
        Ok(_) => {
            let end = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
            let name = String::from_utf8_lossy(&ifr[..end]).into_owned();
            Ok(Some((name, u16::from_ne_bytes([ifr[16], ifr[17]]))))
        }
    }
}

/// `TUNSETIFF`: attaches the file to device `name` (made when there is none) with `flags`.
pub fn attach(fd: BorrowedFd<'_>, name: &str, flags: u16) -> io::Result<()> {
    ioctl_ifreq(fd, TUNSETIFF, name, flags).map(|_| ())
}

/// `TUNSETQUEUE`: detaches (`IFF_DETACH_QUEUE`) or attaches again a multi-queue file.
pub fn set_queue(fd: BorrowedFd<'_>, flags: u16) -> io::Result<()> {
    ioctl_ifreq(fd, TUNSETQUEUE, "", flags).map(|_| ())
}

/// `TUNSETPERSIST`: whether the device outlives its last file.
pub fn set_persist(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    ioctl_int(fd, TUNSETPERSIST, libc::c_ulong::from(on))
}

/// `TUNGETVNETHDRSZ` and `TUNGETSNDBUF` of the device the file is attached to.
pub fn vnethdr_sndbuf(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let (mut h, mut s) = (0, 0);
    ioctl_ptr_int(fd, TUNGETVNETHDRSZ, &mut h)?;
    ioctl_ptr_int(fd, TUNGETSNDBUF, &mut s)?;
    Ok((h.cast_unsigned(), s.cast_unsigned()))
}

/// `TUNSETVNETHDRSZ` and `TUNSETSNDBUF`.
pub fn set_vnethdr_sndbuf(fd: BorrowedFd<'_>, vnethdr: u32, sndbuf: u32) -> io::Result<()> {
    ioctl_ptr_int(fd, TUNSETVNETHDRSZ, &mut vnethdr.cast_signed())?;
    set_sndbuf(fd, sndbuf)
}

/// `TUNSETSNDBUF`: the send buffer of the device and of every file attached to it.
pub fn set_sndbuf(fd: BorrowedFd<'_>, sndbuf: u32) -> io::Result<()> {
    ioctl_ptr_int(fd, TUNSETSNDBUF, &mut sndbuf.cast_signed())
}

/// `TUNGETFILTER` (tap devices only): how many instructions the device's filter has.
pub fn filter_len(fd: BorrowedFd<'_>) -> io::Result<u16> {
    // struct sock_fprog: len (unsigned short), then a pointer.
    let mut b = [0u8; 16];
    // SAFETY: `b` is a struct sock_fprog-sized buffer the kernel writes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETFILTER, b.as_mut_ptr()) };
    cvt(libc::c_long::from(r))?;
    Ok(u16::from_ne_bytes([b[0], b[1]]))
}

/// `TUNSETIFINDEX`: the interface index the device the file attaches to next will get.
pub fn set_ifindex(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // It takes a pointer to an unsigned int.
    ioctl_ptr_int(fd, TUNSETIFINDEX, &mut ifindex.cast_signed())
}

/// The parameters of a device made again: flags (`IFF_TUN` or `IFF_TAP`, plus `IFF_NO_PI`,
/// `IFF_VNET_HDR`, `IFF_MULTI_QUEUE`), interface index (0: the kernel's choice), owner and
/// group when set, vnet header size and send buffer.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub flags: u16,
    pub ifindex: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub vnethdr: u32,
    pub sndbuf: u32,
}

/// Creates the tun/tap device `name` with `p`, persistent (its files attach to it later and
/// drop the persistence when it had none), then lets go of it.
pub fn create_persistent(name: &str, p: &Params) -> io::Result<()> {
    let f = open(libc::O_RDWR)?;
    let fd = std::os::fd::AsFd::as_fd(&f);
    if p.ifindex != 0 {
        set_ifindex(fd, p.ifindex)?;
    }
    attach(fd, name, p.flags)?;
    if let Some(o) = p.owner {
        ioctl_int(fd, TUNSETOWNER, libc::c_ulong::from(o))?;
    }
    if let Some(g) = p.group {
        ioctl_int(fd, TUNSETGROUP, libc::c_ulong::from(g))?;
    }
    set_vnethdr_sndbuf(fd, p.vnethdr, p.sndbuf)?;
    set_persist(fd, true)
}
