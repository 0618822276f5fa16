//! Numeric conversions the pipelines share, so a cast never hides a lost value: sizes as
//! `usize` (lossless: cryo is x86_64 only), durations in the stats' integer fields
//! (saturating), and process ids between the kernel's `pid_t` and the images' `u32` (an id
//! from an image is checked: it must be a pid the kernel can hand out).

use std::time::Duration;

// cryo builds for x86_64 only (`compile_error!` in src/sys/mod.rs): usize is u64's width.
const _: () = assert!(usize::BITS == u64::BITS);

/// A size, offset or count as `usize` (lossless on x86_64).
#[allow(clippy::cast_possible_truncation)] // usize is 64 bits (asserted above)
pub const fn usize_of(v: u64) -> usize {
    v as usize
}

/// A size, offset or count as `u64` (lossless on x86_64).
pub const fn u64_of(v: usize) -> u64 {
    v as u64
}

/// Microseconds, for a `u32` stats field (saturates after 71 minutes).
pub fn micros_u32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Microseconds, for a `u64` report field (saturating).
pub fn micros_u64(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `PID_MAX_LIMIT` on 64-bit kernels: no pid or tid is above it.
pub const PID_MAX_LIMIT: u32 = 1 << 22;

/// A pid or tid the kernel handed out (positive), as the images keep it.
pub fn img_pid(pid: i32) -> u32 {
    pid.cast_unsigned()
}

/// A pid, tid, process group or session id from an image, as the kernel's `pid_t`: None
/// unless it is one the kernel could have handed out (1..=`PID_MAX_LIMIT`).
pub fn pid_from_img(v: u32) -> Option<i32> {
    if (1..=PID_MAX_LIMIT).contains(&v) {
        i32::try_from(v).ok()
    } else {
        None
    }
}

/// The kernel's `int` bits of a value the images keep as `u32` (flags, modes, ids the kernel
/// checks itself): the same 32 bits, reinterpreted.
pub const fn c_int(v: u32) -> i32 {
    v.cast_signed()
}

/// A value the kernel gave as a non-negative `int` (a count, a size, an id), as the images
/// keep it: the same 32 bits, reinterpreted.
pub const fn c_uint(v: i32) -> u32 {
    v.cast_unsigned()
}

/// The low 32 bits of `v`: an inode or device number as CRIU's images keep it (`u32` fields;
/// pipe, socket and shmem inode numbers fit).
pub fn low32(v: u64) -> u32 {
    u32::try_from(v & u64::from(u32::MAX)).unwrap_or_default()
}

/// A length or count the kernel bounds far below 4 GiB (a pipe's capacity, a socket queue,
/// a message), as the images' `u32`; saturated if it ever were not.
pub fn len32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
