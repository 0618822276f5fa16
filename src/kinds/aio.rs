//! AIO rings: the ring `io_setup` maps into a process ("/[aio] (deleted)"), where the
//! kernel posts the completion events of its asynchronous I/O requests.
//!
//! Dump records the ring's mapping as CRIU does (status `AIORING`, flags `MAP_SHARED`, its
//! whole content saved with the process's pages) and an `aio_ring_entry` in mm-PID.img: the
//! ring's address (its context id) and length, and the `nr_events` `io_setup` was given,
//! estimated back from the ring's length as CRIU does. Requests still in flight cannot be
//! seen from outside; like CRIU, the ring is saved as it is.
//!
//! Restore maps an anonymous area at the ring's address, which receives the saved content
//! with the other pages; then the puppet makes a new ring with `io_setup`, moves its tail
//! (and the kernel's count of completed events) where it was by submitting writes to
//! /dev/null, which complete at once, sets its head, copies the saved events into it, and
//! `mremap`s the new ring over the area, at the old address (CRIU's `restore_aio_ring`).

use super::error::TaskError;
use super::{RestoreCx, Syscalls, TaskImages};
use crate::image::pb;
use crate::procfs::Vma;
use crate::sys::PAGE_SIZE;

/// `struct aio_ring`'s header (before the events), and one `struct io_event`.
const HEADER: u64 = 32;
const EVENT: u64 = 32;

/// Whether mapping `v` is an AIO ring.
pub fn is_ring(v: &Vma) -> bool {
    v.name.starts_with("/[aio]")
}

/// The record of AIO ring `v`, or None if its length is not a whole number of pages.
pub fn ring_entry(v: &Vma) -> Option<pb::AioRingEntry> {
    let len = v.end.checked_sub(v.start)?;
    if len == 0 || len % PAGE_SIZE != 0 {
        return None;
    }
    // The kernel makes room for max(nr, 4 * CPUs) * 2 + 2 events, rounded up to whole pages;
    // io_setup(nr) with this nr gets a ring of the same length again.
    let events = (len - HEADER) / EVENT;
    Some(pb::AioRingEntry {
        id: v.start,
        nr_req: u32::try_from(events.saturating_sub(2) / 2).ok()?,
        ring_len: u32::try_from(len).ok()?,
    })
}

/// Scratch offsets: the new context id, the I/O buffer, the iocb, the iocb pointers.
const SCRATCH_CTX: u64 = 0;
const SCRATCH_BUF: u64 = 8;
const SCRATCH_IOCB: u64 = 64;
const SCRATCH_PTRS: u64 = 128;
/// iocb pointers submitted per `io_submit`.
const BATCH: u64 = 128;

fn bad(img: &TaskImages, what: String) -> TaskError {
    TaskError::BadImage(format!("mm-{}.img: {what}", img.pid))
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Makes the AIO rings of `img` again over the areas that hold their saved content (mapped
/// and filled by the memory restore).
pub fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), TaskError> {
    for e in &img.mm.aios {
        restore_ring(cx, img, e)?;
    }
    Ok(())
}

fn restore_ring(
    cx: &mut RestoreCx<'_>,
    img: &TaskImages,
    e: &pb::AioRingEntry,
) -> Result<(), TaskError> {
    let pid = cx.pid;
    let (addr, len) = (e.id, u64::from(e.ring_len));
    let mem = |what: &'static str, addr: u64| {
        move |source| TaskError::Memory {
            pid,
            addr,
            what,
            source,
        }
    };
    if len < HEADER + EVENT || len % PAGE_SIZE != 0 {
        return Err(bad(img, format!("AIO ring {addr:#x} has length {len}")));
    }
    let mut saved = vec![0u8; crate::num::usize_of(len)];
    let n = saved.len();
    crate::sys::mem::vm_read(pid, &mut saved, &[(addr, n)])
        .map_err(mem("reading a saved AIO ring", addr))?;
    let (nr, head, tail) = (
        read_u32(&saved, 4),
        read_u32(&saved, 8),
        read_u32(&saved, 12),
    );
    if u64::from(nr) != (len - HEADER) / EVENT || head >= nr || tail >= nr {
        return Err(bad(
            img,
            format!("AIO ring {addr:#x}: {nr} events, head {head}, tail {tail} do not fit its length {len}"),
        ));
    }
    let ctxp = cx.put(SCRATCH_CTX, &0u64.to_ne_bytes())?;
    cx.sys(
        "io_setup",
        libc::SYS_io_setup,
        [u64::from(e.nr_req), ctxp, 0, 0, 0, 0],
    )?;
    let mut word = [0u8; 8];
    crate::sys::mem::vm_read(pid, &mut word, &[(ctxp, 8)])
        .map_err(mem("reading the new AIO context", ctxp))?;
    let ctx = u64::from_ne_bytes(word);
    let mut hdr = [0u8; 8];
    crate::sys::mem::vm_read(pid, &mut hdr, &[(ctx, 8)])
        .map_err(mem("reading a new AIO ring", ctx))?;
    if read_u32(&hdr, 4) != nr {
        return Err(TaskError::Internal(
            "io_setup made an AIO ring of another size than the saved one",
        ));
    }
    if head != 0 || tail != 0 {
        // The tail moves by one per completed request, round the ring once more when it
        // is behind the head (so the kernel counts the completed events right).
        let count = u64::from(if tail < head { nr + tail } else { tail });
        let fd = cx.open("/dev/null", libc::O_WRONLY as u32)?;
        let buf = cx.put(SCRATCH_BUF, &[0u8])?;
        // struct iocb: aio_data, aio_key, aio_rw_flags, aio_lio_opcode (IOCB_CMD_PWRITE),
        // aio_reqprio, aio_fildes, aio_buf, aio_nbytes, aio_offset, reserved, flags, resfd.
        let mut iocb = [0u8; 64];
        iocb[16..18].copy_from_slice(&1u16.to_ne_bytes());
        iocb[20..24].copy_from_slice(&crate::num::c_uint(fd).to_ne_bytes());
        iocb[24..32].copy_from_slice(&buf.to_ne_bytes());
        iocb[32..40].copy_from_slice(&1u64.to_ne_bytes());
        let iocbp = cx.put(SCRATCH_IOCB, &iocb)?;
        let per = BATCH.min(u64::from(nr - 1)).max(1);
        let ptrs: Vec<u8> = (0..per).flat_map(|_| iocbp.to_ne_bytes()).collect();
        let ptrs = cx.put(SCRATCH_PTRS, &ptrs)?;
        let mut done = 0u64;
        while done < count {
            let n = cx.sys(
                "io_submit",
                libc::SYS_io_submit,
                [ctx, (count - done).min(per), ptrs, 0, 0, 0],
            )?;
            if n == 0 {
                return Err(TaskError::Internal("io_submit took no request"));
            }
            done += n;
            // Reading the events is setting the head: room for the next ones.
            let h = u32::try_from(done.min(u64::from(head))).unwrap_or(head);
            crate::sys::mem::vm_write(pid, &h.to_ne_bytes(), &[(ctx + 8, 4)])
                .map_err(mem("setting an AIO ring's head", ctx + 8))?;
        }
        cx.close(fd)?;
    }
    // The events, as saved (the header keeps the new ring's).
    let h = crate::num::usize_of(HEADER);
    crate::sys::mem::vm_write(pid, &saved[h..], &[(ctx + HEADER, saved.len() - h)])
        .map_err(mem("copying the events of an AIO ring", ctx))?;
    let got = cx.sys(
        "mremap (AIO ring)",
        libc::SYS_mremap,
        [
            ctx,
            len,
            len,
            (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
            addr,
            0,
        ],
    )?;
    if got != addr {
        return Err(TaskError::Internal("the AIO ring was moved elsewhere"));
    }
    Ok(())
}
