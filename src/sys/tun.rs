//! tun/tap devices: `create_persistent` makes one, in the calling thread's network
//! namespace, through `/dev/net/tun` (rtnetlink cannot create them).

use std::io;
use std::os::fd::AsRawFd;

use super::cvt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNSETIFINDEX: libc::c_ulong = 0x4004_54da;

/// `ioctl(fd, req, arg)` with an integer argument.
fn ioctl_int(fd: &std::fs::File, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the tun ioctls used with this helper take their argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    cvt(r as libc::c_long).map(|_| ())
}

/// Creates the persistent tun/tap device `name` with `flags` (IFF_TUN or IFF_TAP, plus
/// IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE), interface index `ifindex` (0: the kernel's
/// choice), and owner/group when given, then lets go of it.
pub fn create_persistent(
    name: &str,
    flags: u16,
    ifindex: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> io::Result<()> {
    if name.len() >= 16 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    if ifindex != 0 {
        // TUNSETIFINDEX takes a pointer to an unsigned int.
        let idx: libc::c_uint = ifindex;
        // SAFETY: `idx` lives across the call; the kernel reads 4 bytes from it.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFINDEX, &idx as *const libc::c_uint) };
        cvt(r as libc::c_long)?;
    }
    // struct ifreq: the name (16 bytes), then the flags (a short) at offset 16.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `ifr` is a struct ifreq-sized buffer the kernel reads and writes.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    cvt(r as libc::c_long)?;
    if let Some(o) = owner {
        ioctl_int(&f, TUNSETOWNER, o as libc::c_ulong)?;
    }
    if let Some(g) = group {
        ioctl_int(&f, TUNSETGROUP, g as libc::c_ulong)?;
    }
    ioctl_int(&f, TUNSETPERSIST, 1)
}
