//! Cross-process memory: `process_vm_readv`/`process_vm_writev`, the `PAGEMAP_SCAN` ioctl,
//! and local `mmap` helpers for the restore trampoline and image files.

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// process_vm_*, userfaultfd and PAGEMAP_SCAN pass addresses and counts as register-width words.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Most iovecs one `process_vm_*` call takes (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Reads the remote `ranges` (address, length) back to back into `buf` (which must be exactly
/// as long as their sum). Fails on a short read (for example an unreadable page).
pub fn vm_read(pid: i32, buf: &mut [u8], ranges: &[(u64, usize)]) -> io::Result<()> {
    transfer(pid, buf.as_mut_ptr(), buf.len(), ranges, false)
}

/// Writes `buf` into the remote `ranges` back to back (the inverse of [`vm_read`]).
/// Warning: writes another process's memory.
pub fn vm_write(pid: i32, buf: &[u8], ranges: &[(u64, usize)]) -> io::Result<()> {
    transfer(pid, buf.as_ptr() as *mut u8, buf.len(), ranges, true)
}

fn transfer(
    pid: i32,
    base: *mut u8,
    len: usize,
    ranges: &[(u64, usize)],
    write: bool,
) -> io::Result<()> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    if total != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "buffer and ranges differ in size",
        ));
    }
    let ranges: Vec<(u64, usize)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    let ranges = ranges.as_slice();
    let mut done = 0usize;
    let mut idx = 0usize; // current range
    let mut skip = 0usize; // bytes of ranges[idx] already done
    while idx < ranges.len() {
        let mut remote: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(ranges.len() - idx));
        let mut chunk = 0usize;
        for (i, &(addr, l)) in ranges[idx..].iter().enumerate() {
            if remote.len() == IOV_MAX {
                break;
            }
            let off = if i == 0 { skip } else { 0 };
            remote.push(libc::iovec {
                iov_base: (addr as usize + off) as *mut libc::c_void,
                iov_len: l - off,
            });
            chunk += l - off;
        }
        let local = libc::iovec {
            // SAFETY: done < len, so the pointer stays inside the caller's buffer.
            iov_base: unsafe { base.add(done) }.cast(),
            iov_len: chunk,
        };
        // SAFETY: `local` covers `chunk` bytes of the caller's buffer (mutable for reads);
        // remote iovecs are addresses in the other process, checked by the kernel.
        let n = cvt(unsafe {
            if write {
                libc::process_vm_writev(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
            } else {
                libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as _, 0)
            }
        } as libc::c_long)? as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "no bytes transferred at remote address {:#x}",
                    ranges[idx].0 as usize + skip
                ),
            ));
        }
        done += n;
        // Advance idx/skip by n bytes.
        let mut left = n;
        while left > 0 {
            let rem = ranges[idx].1 - skip;
            if left >= rem {
                left -= rem;
                idx += 1;
                skip = 0;
            } else {
                skip += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// `userfaultfd(2)` flag: handle only faults from user mode (kernel accesses to a missing page
/// in a registered range fail instead of waiting for a handler).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// `UFFD_FEATURE_WP_UNPOPULATED`: pages not populated yet are write-protected too.
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: a write to a protected page is resolved by the kernel itself
/// (the protection is dropped, `PAGE_IS_WRITTEN` set); no message, no handler.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `userfaultfd(UFFD_USER_MODE_ONLY | O_CLOEXEC)` in cryo itself (a probe of what the kernel
/// offers; tracking another process needs one made inside it).
pub fn userfaultfd_local() -> io::Result<OwnedFd> {
    // SAFETY: integer-only syscall; it returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) };
    let fd = cvt(r)? as i32;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// `userfaultfd(O_CLOEXEC | O_NONBLOCK)` in cryo itself, kernel faults included (a probe of
/// what a lazy restore needs: CAP_SYS_PTRACE or `vm.unprivileged_userfaultfd`).
pub fn userfaultfd_full() -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    let fd = cvt(r)? as RawFd;
    // SAFETY: the kernel just returned this new fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A userfaultfd of another process (made inside it, taken with `pidfd_getfd`): registration
/// and `UFFDIO_COPY` act on that process's address space, with sources in cryo's own memory.
/// Used to fill fresh anonymous memory: `UFFDIO_COPY` allocates each page and copies into it
/// directly (no zeroing, no page faults).
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// Takes `fd` (a new userfaultfd) and does the `UFFDIO_API` handshake (no features).
    pub fn new(fd: OwnedFd) -> io::Result<Uffd> {
        // struct uffdio_api: api, features, ioctls
        let mut api = [UFFD_API, 0u64, 0u64];
        // SAFETY: `api` is a valid struct uffdio_api the kernel reads and writes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) };
        cvt(libc::c_long::from(r))?;
        if api[2] & (1 << 0x3F) == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        Ok(Uffd { fd })
    }

    /// Takes `fd` (a new userfaultfd) and asks for asynchronous write protection
    /// (`UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`, Linux 6.7+): written pages are
    /// then read back with `PAGEMAP_SCAN` (`PAGE_IS_WRITTEN`). ENOTSUP without them.
    pub fn new_wp_async(fd: OwnedFd) -> io::Result<Uffd> {
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = [UFFD_API, want, 0u64];
        // SAFETY: `api` is a valid struct uffdio_api the kernel reads and writes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) };
        cvt(libc::c_long::from(r))?;
        if api[1] & want != want {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        Ok(Uffd { fd })
    }

    /// A userfaultfd whose `UFFDIO_API` handshake was done earlier (by an earlier cryo run).
    pub fn from_tracking(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// The fd (for handing it to another process).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// `UFFDIO_REGISTER` (missing-page mode) of `[start, start + len)` in the owner's memory.
    /// Until [`Uffd::unregister`], a user-mode access to a missing page there blocks.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        self.register_mode(start, len, UFFDIO_REGISTER_MODE_MISSING, 0x03)
    }

    /// `UFFDIO_REGISTER` in write-protect mode (with `WP_ASYNC`: nothing ever blocks).
    pub fn register_wp(&self, start: u64, len: u64) -> io::Result<()> {
        self.register_mode(start, len, UFFDIO_REGISTER_MODE_WP, 0x06)
    }

    fn register_mode(&self, start: u64, len: u64, mode: u64, needed_ioctl: u32) -> io::Result<()> {
        // struct uffdio_register: range (start, len), mode, ioctls
        let mut reg = [start, len, mode, 0u64];
        // SAFETY: `reg` is a valid struct uffdio_register the kernel reads and writes.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, reg.as_mut_ptr()) };
        cvt(libc::c_long::from(r))?;
        if reg[3] & (1 << needed_ioctl) == 0 {
            let _ = self.unregister(start, len);
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        Ok(())
    }

    /// `UFFDIO_WRITEPROTECT` of `[start, start + len)` (registered in WP mode): every page,
    /// populated or not, counts as not written from now on.
    pub fn write_protect(&self, start: u64, len: u64) -> io::Result<()> {
        let mut wp = [start, len, UFFDIO_WRITEPROTECT_MODE_WP];
        // SAFETY: `wp` is a valid struct uffdio_writeprotect.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_WRITEPROTECT as _,
                wp.as_mut_ptr(),
            )
        };
        cvt(libc::c_long::from(r)).map(|_| ())
    }

    /// `UFFDIO_UNREGISTER` of `[start, start + len)`.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = [start, len];
        // SAFETY: `range` is a valid struct uffdio_range.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_UNREGISTER as _,
                range.as_mut_ptr(),
            )
        };
        cvt(libc::c_long::from(r)).map(|_| ())
    }

    /// `UFFDIO_COPY`: `src` into the owner's registered memory at `dst` (page aligned, pages
    /// not present yet). Warning: writes another process's memory.
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < src.len() {
            // dst, src, len, mode, copy (bytes copied or -errno, set by the kernel)
            let mut c = [
                dst + done as u64,
                src[done..].as_ptr() as u64,
                (src.len() - done) as u64,
                UFFDIO_COPY_MODE_DONTWAKE,
                0u64,
            ];
            // SAFETY: `c` is a valid struct uffdio_copy whose source lies inside `src`, which
            // the kernel only reads; the destination is in another address space.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, c.as_mut_ptr()) };
            let r = cvt(libc::c_long::from(r));
            let copied = c[4] as i64;
            match r {
                Ok(_) if copied > 0 => done += copied as usize,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "UFFDIO_COPY copied nothing",
                    ))
                }
                // Partial copy (for example a pending signal): go on from there.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && copied > 0 => {
                    done += copied as usize
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `UFFDIO_WAKE`: `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
/// `UFFDIO_ZEROPAGE`: `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
/// The non-cooperative events a lazy restore follows: the program's fork (the child's
/// memory gets a userfaultfd of its own), mremap, MADV_DONTNEED/REMOVE and munmap.
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

/// One `struct uffd_msg` read from a userfaultfd (lazy restore).
#[derive(Debug)]
pub enum UffdMsg {
    /// A missing page was touched at `addr` (not aligned).
    PageFault { addr: u64 },
    /// The process forked: `uffd` covers the child's copy of the registered memory.
    Fork { uffd: OwnedFd },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `[start, end)` was dropped (MADV_DONTNEED / MADV_REMOVE) or unmapped: it reads as
    /// zeros (or is gone) from now on.
    Remove { start: u64, end: u64 },
    /// Something else (ignored).
    Other(u8),
}

/// What one `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` of a lazy restore did.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// Every page is there now (copied, or already present: `EEXIST` pages are skipped).
    Done,
    /// The memory layout is changing (an event is pending): read the events, then retry
    /// from `done` bytes on.
    Again { done: usize },
    /// The range is no longer mapped (`ENOENT`): nothing to do there.
    Gone,
    /// The process's memory is gone (it exited: `ESRCH`).
    Exited,
}

impl Uffd {
    /// Takes `fd` (a new userfaultfd made without `UFFD_USER_MODE_ONLY`, so the kernel's own
    /// accesses wait for pages too) and asks for the events a lazy restore follows (fork,
    /// mremap, remove, unmap). `EVENT_FORK` needs CAP_SYS_PTRACE (cryo's).
    pub fn new_lazy(fd: OwnedFd) -> io::Result<Uffd> {
        let want = UFFD_FEATURE_EVENT_FORK
            | UFFD_FEATURE_EVENT_REMAP
            | UFFD_FEATURE_EVENT_REMOVE
            | UFFD_FEATURE_EVENT_UNMAP;
        let mut api = [UFFD_API, want, 0u64];
        // SAFETY: `api` is a valid struct uffdio_api the kernel reads and writes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) };
        cvt(libc::c_long::from(r))?;
        if api[1] & want != want {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        Ok(Uffd { fd })
    }

    /// `UFFDIO_COPY` of `src` to `dst` waking whoever waits there; pages already present are
    /// skipped. Warning: writes another process's memory.
    pub fn copy_wake(&self, dst: u64, src: &[u8]) -> io::Result<Filled> {
        let mut done = 0usize;
        while done < src.len() {
            let mut c = [
                dst + done as u64,
                src[done..].as_ptr() as u64,
                (src.len() - done) as u64,
                0u64,
                0u64,
            ];
            // SAFETY: `c` is a valid struct uffdio_copy whose source lies inside `src`, which
            // the kernel only reads; the destination is in another address space.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, c.as_mut_ptr()) };
            let copied = c[4] as i64;
            if r == 0 {
                // All of it (the kernel reports the bytes copied).
                done += usize::try_from(copied)
                    .ok()
                    .filter(|&c| c > 0)
                    .unwrap_or(src.len() - done);
                continue;
            }
            if copied > 0 {
                done += copied as usize;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EEXIST) => {
                    // This page is there already (the program faulted it or a copy raced):
                    // wake any waiter and go on after it.
                    let _ = self.wake(dst + done as u64, 4096);
                    done += 4096;
                }
                Some(libc::EAGAIN) => return Ok(Filled::Again { done }),
                Some(libc::ENOENT) => return Ok(Filled::Gone),
                Some(libc::ESRCH) => return Ok(Filled::Exited),
                _ => return Err(io::Error::last_os_error()),
            }
        }
        Ok(Filled::Done)
    }

    /// `UFFDIO_ZEROPAGE` of `[start, start + len)`, waking waiters (a page that was never
    /// saved reads as zeros, as it did).
    pub fn zeropage(&self, start: u64, len: u64) -> io::Result<Filled> {
        let mut z = [start, len, 0u64, 0u64];
        // SAFETY: `z` is a valid struct uffdio_zeropage.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, z.as_mut_ptr()) };
        if r == 0 {
            return Ok(Filled::Done);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EEXIST) => {
                let _ = self.wake(start, len);
                Ok(Filled::Done)
            }
            Some(libc::EAGAIN) => Ok(Filled::Again { done: 0 }),
            Some(libc::ENOENT) => Ok(Filled::Gone),
            Some(libc::ESRCH) => Ok(Filled::Exited),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// `UFFDIO_WAKE` of `[start, start + len)`.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = [start, len];
        // SAFETY: `range` is a valid struct uffdio_range.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, range.as_mut_ptr()) };
        cvt(libc::c_long::from(r)).map(|_| ())
    }

    /// Reads the pending messages (the fd is non-blocking: none is an empty list).
    pub fn read_msgs(&self) -> io::Result<Vec<UffdMsg>> {
        let mut buf = [0u8; 32 * 16];
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let u64_at = |m: &[u8], o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&m[o..o + 8]);
            u64::from_ne_bytes(w)
        };
        let mut out = Vec::new();
        for m in buf[..n as usize].chunks_exact(32) {
            out.push(match m[0] {
                0x12 => UffdMsg::PageFault {
                    addr: u64_at(m, 16),
                },
                0x13 => {
                    let fd = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]) as RawFd;
                    // SAFETY: the kernel installed this new fd in our table for us.
                    let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
                    UffdMsg::Fork { uffd }
                }
                0x14 => UffdMsg::Remap {
                    from: u64_at(m, 8),
                    to: u64_at(m, 16),
                    len: u64_at(m, 24),
                },
                0x15 | 0x16 => UffdMsg::Remove {
                    start: u64_at(m, 8),
                    end: u64_at(m, 16),
                },
                e => UffdMsg::Other(e),
            });
        }
        Ok(out)
    }
}

/// Page categories of the `PAGEMAP_SCAN` ioctl (linux/fs.h).
pub mod page_is {
    pub const WPALLOWED: u64 = 1 << 0;
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    pub const PFNZERO: u64 = 1 << 5;
    pub const SOFT_DIRTY: u64 = 1 << 7;
    /// A guard region page (`MADV_GUARD_INSTALL`, Linux 6.13; reported since 6.14).
    pub const GUARD: u64 = 1 << 8;
}

/// `pm_scan_arg.flags`.
pub mod pm_scan {
    /// Write-protect the pages that match (re-arms `PAGE_IS_WRITTEN` tracking).
    pub const WP_MATCHING: u64 = 1 << 0;
    /// Fail with EPERM when a VMA in the range has no asynchronous write protection.
    pub const CHECK_WPASYNC: u64 = 1 << 1;
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

/// `ioctl(PAGEMAP_SCAN)` on an open `/proc/PID/pagemap`: the ranges in `[start, end)` holding
/// pages whose categories, after xor-ing `inverted`, include all of `mask` and one of `anyof`.
/// Appends `(start, end)` ranges to `out`.
pub fn pagemap_scan(
    pagemap: &File,
    start: u64,
    end: u64,
    inverted: u64,
    mask: u64,
    anyof: u64,
    out: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    pagemap_scan_flags(pagemap, 0, start, end, inverted, mask, anyof, out)
}

/// [`pagemap_scan`] with `pm_scan_arg.flags` ([`pm_scan`]). With `WP_MATCHING` the matching
/// pages are write-protected again. Warning: that changes the target's page tables (not what it
/// sees: with `WP_ASYNC` its next write just sets `PAGE_IS_WRITTEN` again).
#[allow(clippy::too_many_arguments)]
pub fn pagemap_scan_flags(
    pagemap: &File,
    flags: u64,
    start: u64,
    end: u64,
    inverted: u64,
    mask: u64,
    anyof: u64,
    out: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    let mut regions = vec![PageRegion::default(); 512];
    let mut cur = start;
    while cur < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start: cur,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: inverted,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: anyof | mask,
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points at `regions` (vec_len entries).
        let n = cvt(libc::c_long::from(unsafe {
            libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg)
        }))? as usize;
        for r in &regions[..n] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= cur {
            break;
        }
        cur = arg.walk_end;
    }
    Ok(())
}

/// Whether this kernel installs guard regions (`MADV_GUARD_INSTALL`) and reports them to
/// `PAGEMAP_SCAN` ([`page_is::GUARD`]): tried on a private page of cryo's own.
pub fn guard_pages_reported() -> io::Result<bool> {
    // SAFETY: a fresh private mapping at an address the kernel picks, ours alone.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let m = Mapping {
        addr: p.cast(),
        len: 4096,
        file: false,
        shared_rw: false,
    };
    // SAFETY: advice on our own mapping, which nothing reads (MADV_GUARD_INSTALL = 102).
    cvt(libc::c_long::from(unsafe { libc::madvise(p, 4096, 102) }))?;
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut out = Vec::new();
    pagemap_scan(
        &pagemap,
        m.addr(),
        m.addr() + super::PAGE_SIZE,
        0,
        page_is::GUARD,
        0,
        &mut out,
    )?;
    Ok(!out.is_empty())
}

/// `MADV_COLLAPSE` (Linux 6.1).
const MADV_COLLAPSE: i32 = 25;

/// A local anonymous or file mapping, unmapped on drop.
pub struct Mapping {
    addr: *mut u8,
    len: usize,
    /// A file mapping ([`Mapping::release`] keeps its bytes).
    file: bool,
    /// A shared, writable file mapping ([`Mapping::file_rw`]): what
    /// [`Mapping::file_chunks_mut`] hands out blocks of.
    shared_rw: bool,
}

// SAFETY: the mapping is plain memory owned by this value; sharing read access is fine.
unsafe impl Send for Mapping {}
// SAFETY: see above; only shared references are handed out.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` read-only (private).
    pub fn file_ro(file: &File, len: usize) -> io::Result<Mapping> {
        Self::map_file(file, len, libc::PROT_READ, libc::MAP_PRIVATE)
    }

    /// Maps the first `len` bytes of `file` shared and read-write (writes go to its page
    /// cache). The file must be at least `len` bytes long.
    pub fn file_rw(file: &File, len: usize) -> io::Result<Mapping> {
        Self::map_file(
            file,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }

    fn map_file(file: &File, len: usize, prot: i32, flags: i32) -> io::Result<Mapping> {
        let shared_rw = flags & libc::MAP_SHARED != 0 && prot & libc::PROT_WRITE != 0;
        if len == 0 {
            return Ok(Mapping {
                addr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
                file: true,
                shared_rw,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel; we own it until drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: p.cast(),
            len,
            file: true,
            shared_rw,
        })
    }

    /// The mapping's bytes, writable (a read-write mapping only).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: addr..addr+len is mapped read-write for our lifetime, and &mut self makes
        // this the only live view.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }

    /// A shared read-write file mapping's bytes ([`Mapping::file_rw`]) in blocks of `size`
    /// (the last one shorter), each of which can be released once written; `None` for any
    /// other mapping.
    pub fn file_chunks_mut(&mut self, size: usize) -> Option<impl Iterator<Item = FileChunk<'_>>> {
        if !self.shared_rw {
            return None;
        }
        Some(
            self.bytes_mut()
                .chunks_mut(size)
                .map(|bytes| FileChunk { bytes }),
        )
    }

    /// A new shared anonymous mapping of `len` bytes of huge pages (hugetlb), read-write;
    /// `huge` holds `MAP_HUGETLB` and the page size bits (`MAP_HUGE_*`).
    pub fn anon_shared_huge(len: usize, huge: i32) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | huge,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: p.cast(),
            len,
            file: false,
            shared_rw: false,
        })
    }

    /// A new shared anonymous (shmem) mapping of `len` bytes, read-write.
    pub fn anon_shared(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: p.cast(),
            len,
            file: false,
            shared_rw: false,
        })
    }

    /// Where the mapping starts.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Maps `len` bytes at exactly `addr` (fails if anything is there), with `prot`.
    pub fn anon_fixed(addr: u64, len: usize, prot: i32) -> io::Result<Mapping> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces existing mappings.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if p as u64 != addr {
            // Old kernels ignore NOREPLACE and return another address.
            // SAFETY: p was just mapped by us with this length.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(Mapping {
            addr: p.cast(),
            len,
            file: false,
            shared_rw: false,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: addr..addr+len is mapped readable for our lifetime.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// Writes `data` at `off` (the mapping must be writable).
    pub fn write_at(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: bounds checked above; the mapping is ours and writable by construction.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(off), data.len()) };
    }

    /// `mprotect` of the whole mapping.
    pub fn protect(&mut self, prot: i32) -> io::Result<()> {
        // SAFETY: the range is our own mapping.
        cvt(libc::c_long::from(unsafe {
            libc::mprotect(self.addr.cast(), self.len, prot)
        }))
        .map(|_| ())
    }

    /// Drops this mapping's page-table entries for the whole pages inside `[off, off + len)`,
    /// so that image bytes already used stop counting in cryo's RSS (a 2 GiB image read or
    /// written through a mapping would otherwise make cryo's RSS 2 GiB). Only file mappings:
    /// their bytes stay what they were (the page cache keeps them, written ones of a shared
    /// mapping too); a no-op on anonymous ones.
    pub fn release(&self, off: usize, len: usize) {
        if self.file {
            // SAFETY: the range lies inside our mapping (clamped); for a file mapping
            // MADV_DONTNEED changes no byte anyone can read.
            unsafe { madvise_inner(self.addr, self.len, off, len, libc::MADV_DONTNEED) };
        }
    }

    /// `madvise(MADV_COLLAPSE)` of `[off, off + len)` of an anonymous mapping: its pages
    /// become one transparent huge page per aligned 2 MiB (content unchanged).
    pub fn collapse(&self, off: usize, len: usize) -> io::Result<()> {
        if self.file || off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the range lies inside our own mapping, and MADV_COLLAPSE changes no byte.
        cvt(libc::c_long::from(unsafe {
            libc::madvise(self.addr.add(off).cast(), len, MADV_COLLAPSE)
        }))
        .map(|_| ())
    }

    /// Advises the kernel (e.g. `MADV_WILLNEED`, `MADV_SEQUENTIAL`).
    pub fn advise(&self, advice: i32) {
        if self.len > 0 {
            // SAFETY: advice on our own mapping cannot affect memory safety.
            unsafe { libc::madvise(self.addr.cast(), self.len, advice) };
        }
    }
}

/// A block of a read-write file mapping, handed out by [`Mapping::file_chunks_mut`]: written
/// through, then [`FileChunk::release`]d so that cryo's RSS stops counting it while the
/// bytes stay in the file's page cache.
pub struct FileChunk<'a> {
    bytes: &'a mut [u8],
}

impl FileChunk<'_> {
    /// Drops the page-table entries of the whole pages inside `[off, off + len)` of this
    /// block (clamped to it). Their bytes stay what they were: the block belongs to a
    /// shared file mapping, whose pages the page cache keeps.
    pub fn release(&mut self, off: usize, len: usize) {
        // SAFETY: the range is clamped to this block, exclusively borrowed, inside a shared
        // file mapping (the only way to get a FileChunk), where MADV_DONTNEED changes no byte.
        unsafe {
            madvise_inner(
                self.bytes.as_mut_ptr(),
                self.bytes.len(),
                off,
                len,
                libc::MADV_DONTNEED,
            )
        };
    }
}

impl std::ops::Deref for FileChunk<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl std::ops::DerefMut for FileChunk<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// `madvise(advice)` on the whole pages inside `[base + off, base + off + len)`, clamped to
/// `[base, base + size)`.
///
/// # Safety
/// `[base, base + size)` must be memory this process mapped and may change as `advice` does.
unsafe fn madvise_inner(base: *mut u8, size: usize, off: usize, len: usize, advice: i32) {
    let page = 4096usize;
    let start = (base as usize).saturating_add(off.min(size));
    let end = (base as usize).saturating_add(off.saturating_add(len).min(size));
    let (a, b) = (start.div_ceil(page) * page, end / page * page);
    if b > a {
        // SAFETY: a page-aligned range inside the caller's mapping (see above).
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, advice) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: we own this mapping.
            unsafe { libc::munmap(self.addr.cast(), self.len) };
        }
    }
}
