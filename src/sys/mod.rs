//! The only place in cryo that talks to the kernel through `unsafe` code.
//!
//! Policy: every function here is a small, typed, safe wrapper around one syscall or ioctl
//! (named after it), returning `std::io::Result`. Callers never see raw pointers. Syscalls
//! go through rustix wherever it has them; the hand-written `unsafe` left is for what it
//! lacks (ptrace, `process_vm_*`, `clone3` with `set_tid`, userfaultfd and `PAGEMAP_SCAN`,
//! SysV IPC, a few tty and socket ioctls). Operations that *mutate another process*
//! (register writes, pokes, injected syscalls) are methods on [`ptrace::Tracee`] or
//! [`remote::Remote`] so a reader can find every place where cryo touches a target. The
//! crate denies `unsafe_code`; this module opts in.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("cryo currently supports x86_64 only");

pub mod clone;
pub mod cpuid;
pub mod fd;
pub mod inet;
pub mod ipc;
pub mod mem;
pub mod mount;
pub mod net;
pub mod ns;
pub mod proc;
pub mod ptrace;
pub mod remote;
pub mod scm;
pub mod tty;
pub mod tun;

/// Turns a libc return value (-1 + errno) into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Page size (4 KiB on x86_64).
pub const PAGE_SIZE: u64 = 4096;
