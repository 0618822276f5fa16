//! System V IPC calls made by cryo itself, from a thread that has entered a target's IPC
//! namespace (`kinds/ipc.rs`): `*ctl(*_INFO)` and `*_STAT` to list objects, create/own/set
//! them, `shmat`/`shmdt`, `semctl(GETALL/SETALL)`, `msgrcv(MSG_COPY)`/`msgsnd`, and a
//! detached mount of the namespace's mqueue filesystem (`fsopen`/`fsmount`).

// Casts here cross the C ABI with their bits (the kernel checks what it is given):
// SysV IPC results are ints and longs the kernel bounds (ids, counts, sizes).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// `shmctl` commands not in the libc crate (linux/shm.h).
const SHM_STAT: libc::c_int = 13;
const SHM_INFO: libc::c_int = 14;
const SHM_LOCK: libc::c_int = 11;
/// `msgrcv` flag: copy the message at an index without dequeuing it (linux/msg.h).
const MSG_COPY: libc::c_int = 0o40000;

/// The common part of every SysV object (`struct ipc_perm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits plus the object's state bits (`SHM_DEST`, `SHM_LOCKED`).
    pub mode: u32,
}

impl Perm {
    fn of(p: &libc::ipc_perm) -> Perm {
        Perm {
            key: p.__key,
            uid: p.uid,
            gid: p.gid,
            cuid: p.cuid,
            cgid: p.cgid,
            mode: u32::from(p.mode),
        }
    }
}

/// A shared memory segment as `shmctl(SHM_STAT)` reports it.
#[derive(Debug, Clone, Copy)]
pub struct ShmStat {
    pub id: i32,
    pub perm: Perm,
    pub size: u64,
    pub nattch: u64,
}

/// A semaphore set as `semctl(SEM_STAT)` reports it.
#[derive(Debug, Clone, Copy)]
pub struct SemStat {
    pub id: i32,
    pub perm: Perm,
    pub nsems: u64,
}

/// A message queue as `msgctl(MSG_STAT)` reports it.
#[derive(Debug, Clone, Copy)]
pub struct MsgStat {
    pub id: i32,
    pub perm: Perm,
    pub qbytes: u64,
    pub qnum: u64,
    /// Bytes queued.
    pub cbytes: u64,
}

fn zeroed_shmid_ds() -> libc::shmid_ds {
    // SAFETY: shmid_ds is plain integers; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_semid_ds() -> libc::semid_ds {
    // SAFETY: semid_ds is plain integers; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_msqid_ds() -> libc::msqid_ds {
    // SAFETY: msqid_ds is plain integers; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// `shmctl(0, SHM_INFO)`: (highest index in use, number of segments).
pub fn shm_info() -> io::Result<(i32, i32)> {
    // struct shm_info (48 bytes) is smaller than shmid_ds; its first field is `int used_ids`.
    let mut buf = zeroed_shmid_ds();
    // SAFETY: buf is a writable shmid_ds, larger than the shm_info the kernel writes.
    let max = cvt(libc::c_long::from(unsafe {
        libc::shmctl(0, SHM_INFO, &mut buf)
    }))?;
    Ok((max as i32, buf.shm_perm.__key))
}

/// `shmctl(index, SHM_STAT)`: the segment at kernel index `index` (EINVAL: none there).
pub fn shm_stat(index: i32) -> io::Result<ShmStat> {
    let mut ds = zeroed_shmid_ds();
    // SAFETY: ds is a writable shmid_ds.
    let id = cvt(libc::c_long::from(unsafe {
        libc::shmctl(index, SHM_STAT, &mut ds)
    }))?;
    Ok(ShmStat {
        id: id as i32,
        perm: Perm::of(&ds.shm_perm),
        size: ds.shm_segsz as u64,
        nattch: ds.shm_nattch,
    })
}

/// `shmget(key, size, flags)`.
pub fn shm_get(key: i32, size: u64, flags: i32) -> io::Result<i32> {
    // SAFETY: integer arguments only.
    cvt(libc::c_long::from(unsafe {
        libc::shmget(key, size as usize, flags)
    }))
    .map(|id| id as i32)
}

/// `shmctl(IPC_STAT)` then `shmctl(IPC_SET)` with the owner `uid`/`gid`.
pub fn shm_set_owner(id: i32, uid: u32, gid: u32) -> io::Result<()> {
    let mut ds = zeroed_shmid_ds();
    // SAFETY: ds is a writable shmid_ds.
    cvt(libc::c_long::from(unsafe {
        libc::shmctl(id, libc::IPC_STAT, &mut ds)
    }))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    // SAFETY: ds is a valid shmid_ds the kernel only reads.
    cvt(libc::c_long::from(unsafe {
        libc::shmctl(id, libc::IPC_SET, &mut ds)
    }))
    .map(|_| ())
}

/// `shmctl(SHM_LOCK)`: keeps the segment's pages in memory.
pub fn shm_lock(id: i32) -> io::Result<()> {
    // SAFETY: SHM_LOCK takes no buffer.
    cvt(libc::c_long::from(unsafe {
        libc::shmctl(id, SHM_LOCK, std::ptr::null_mut())
    }))
    .map(|_| ())
}

/// A segment attached to cryo's address space (`shmat`), detached on drop. Its content is
/// reached through [`ShmAttach::map_files`], never as memory, so reading a hole does not
/// allocate a page in the segment.
pub struct ShmAttach {
    addr: usize,
    len: u64,
}

impl ShmAttach {
    /// `shmat(id, NULL, SHM_RDONLY or 0)`; `size` is the segment's size.
    pub fn new(id: i32, size: u64, read_only: bool) -> io::Result<ShmAttach> {
        let flags = if read_only { libc::SHM_RDONLY } else { 0 };
        // SAFETY: the kernel picks the address; the mapping is only reached through
        // /proc/self/map_files and unmapped by Drop.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(ShmAttach {
            addr: p as usize,
            len: size.div_ceil(super::PAGE_SIZE) * super::PAGE_SIZE,
        })
    }

    /// Copies `data` into the attachment at `off` (a segment on hugetlbfs has no `write`).
    /// The attachment must be writable (`read_only` false).
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let Ok(at) = usize::try_from(off) else {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        };
        if at.saturating_add(data.len()) as u64 > self.len {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        // SAFETY: the range lies inside our writable attachment (checked above), which
        // nothing else in cryo references.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.addr as *mut u8).add(at),
                data.len(),
            );
        }
        Ok(())
    }

    /// `/proc/self/map_files/START-END` of the attachment: a file on the segment.
    pub fn map_files(&self) -> String {
        format!(
            "/proc/self/map_files/{:x}-{:x}",
            self.addr,
            self.addr as u64 + self.len
        )
    }
}

impl Drop for ShmAttach {
    fn drop(&mut self) {
        // SAFETY: addr is what shmat returned and no reference into it exists.
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
    }
}

/// `semctl(0, 0, SEM_INFO)`: (highest index in use, number of sets).
pub fn sem_info() -> io::Result<(i32, i32)> {
    // SAFETY: seminfo is plain integers; all zeroes is a valid value.
    let mut info: libc::seminfo = unsafe { std::mem::zeroed() };
    // SAFETY: SEM_INFO writes one struct seminfo through the pointer.
    let max = cvt(libc::c_long::from(unsafe {
        libc::semctl(0, 0, libc::SEM_INFO, &mut info as *mut libc::seminfo)
    }))?;
    Ok((max as i32, info.semusz))
}

/// `semctl(index, 0, SEM_STAT)`: the set at kernel index `index` (EINVAL: none there).
pub fn sem_stat(index: i32) -> io::Result<SemStat> {
    let mut ds = zeroed_semid_ds();
    // SAFETY: SEM_STAT writes one semid_ds through the pointer.
    let id = cvt(libc::c_long::from(unsafe {
        libc::semctl(index, 0, libc::SEM_STAT, &mut ds as *mut libc::semid_ds)
    }))?;
    Ok(SemStat {
        id: id as i32,
        perm: Perm::of(&ds.sem_perm),
        nsems: ds.sem_nsems,
    })
}

/// `semget(key, nsems, flags)`.
pub fn sem_get(key: i32, nsems: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: integer arguments only.
    cvt(libc::c_long::from(unsafe {
        libc::semget(key, nsems, flags)
    }))
    .map(|id| id as i32)
}

/// `semctl(id, 0, IPC_STAT)`.
fn sem_ds(id: i32) -> io::Result<libc::semid_ds> {
    let mut ds = zeroed_semid_ds();
    // SAFETY: IPC_STAT writes one semid_ds through the pointer.
    let r = unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
    cvt(libc::c_long::from(r)).map(|_| ds)
}

/// `semctl(IPC_STAT)` then `semctl(IPC_SET)` with the owner `uid`/`gid`.
pub fn sem_set_owner(id: i32, uid: u32, gid: u32) -> io::Result<()> {
    let mut ds = sem_ds(id)?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    // SAFETY: IPC_SET reads one semid_ds through the pointer.
    let r = unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) };
    cvt(libc::c_long::from(r)).map(|_| ())
}

/// `semctl(GETALL)`: the values of the `nsems` semaphores of set `id`.
pub fn sem_get_all(id: i32, nsems: usize) -> io::Result<Vec<u16>> {
    let mut v = vec![0u16; nsems.max(1)];
    // SAFETY: GETALL writes nsems unsigned shorts; v holds at least that many.
    cvt(libc::c_long::from(unsafe {
        libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr())
    }))?;
    v.truncate(nsems);
    Ok(v)
}

/// `semctl(SETALL)`: sets every semaphore of set `id`; `values` has one per semaphore.
pub fn sem_set_all(id: i32, values: &[u16]) -> io::Result<()> {
    let ds = sem_ds(id)?;
    if values.len() as u64 != ds.sem_nsems {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} values for a set of {}", values.len(), ds.sem_nsems),
        ));
    }
    // SAFETY: SETALL reads as many unsigned shorts as the set has: exactly values.len().
    cvt(libc::c_long::from(unsafe {
        libc::semctl(id, 0, libc::SETALL, values.as_ptr())
    }))
    .map(|_| ())
}

/// `msgctl(0, MSG_INFO)`: (highest index in use, number of queues).
pub fn msg_info() -> io::Result<(i32, i32)> {
    // SAFETY: msginfo is plain integers; all zeroes is a valid value.
    let mut info: libc::msginfo = unsafe { std::mem::zeroed() };
    // SAFETY: MSG_INFO writes one struct msginfo (smaller than msqid_ds) through the pointer.
    let max = cvt(libc::c_long::from(unsafe {
        libc::msgctl(
            0,
            libc::MSG_INFO,
            &mut info as *mut libc::msginfo as *mut libc::msqid_ds,
        )
    }))?;
    Ok((max as i32, info.msgpool))
}

/// `msgctl(index, MSG_STAT)`: the queue at kernel index `index` (EINVAL: none there).
pub fn msg_stat(index: i32) -> io::Result<MsgStat> {
    let mut ds = zeroed_msqid_ds();
    // SAFETY: ds is a writable msqid_ds.
    let id = cvt(libc::c_long::from(unsafe {
        libc::msgctl(index, libc::MSG_STAT, &mut ds)
    }))?;
    Ok(MsgStat {
        id: id as i32,
        perm: Perm::of(&ds.msg_perm),
        qbytes: ds.msg_qbytes,
        qnum: ds.msg_qnum,
        cbytes: ds.__msg_cbytes,
    })
}

/// `msgget(key, flags)`.
pub fn msg_get(key: i32, flags: i32) -> io::Result<i32> {
    // SAFETY: integer arguments only.
    cvt(libc::c_long::from(unsafe { libc::msgget(key, flags) })).map(|id| id as i32)
}

/// `msgctl(IPC_STAT)` then `msgctl(IPC_SET)` with the owner and the byte limit.
pub fn msg_set(id: i32, uid: u32, gid: u32, qbytes: u64) -> io::Result<()> {
    let mut ds = zeroed_msqid_ds();
    // SAFETY: ds is a writable msqid_ds.
    cvt(libc::c_long::from(unsafe {
        libc::msgctl(id, libc::IPC_STAT, &mut ds)
    }))?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_qbytes = qbytes;
    // SAFETY: ds is a valid msqid_ds the kernel only reads.
    cvt(libc::c_long::from(unsafe {
        libc::msgctl(id, libc::IPC_SET, &mut ds)
    }))
    .map(|_| ())
}

/// `msgrcv(id, .., max, index, MSG_COPY | IPC_NOWAIT)`: a copy of the message at position
/// `index` of the queue, left queued: (type, body). `max` bounds the body.
pub fn msg_copy(id: i32, index: u64, max: usize) -> io::Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds a long (mtype) followed by max bytes of text, as msgrcv writes.
    let n = cvt(unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr() as *mut libc::c_void,
            max,
            index as libc::c_long,
            MSG_COPY | libc::IPC_NOWAIT,
        )
    } as libc::c_long)? as usize;
    let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    buf.drain(..8);
    buf.truncate(n);
    Ok((mtype, buf))
}

/// `msgsnd(id, {mtype, body}, IPC_NOWAIT)`.
pub fn msg_send(id: i32, mtype: i64, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 + body.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(body);
    // SAFETY: buf holds a long (mtype) followed by body.len() bytes, as msgsnd reads.
    cvt(libc::c_long::from(unsafe {
        libc::msgsnd(
            id,
            buf.as_ptr() as *const libc::c_void,
            body.len(),
            libc::IPC_NOWAIT,
        )
    }))
    .map(|_| ())
}

/// A detached mount of the mqueue filesystem of the calling thread's IPC namespace; its root
/// is `/proc/self/fd/FD`.
pub fn mqueue_mount() -> io::Result<OwnedFd> {
    super::mount::detached("mqueue", &[])
}

/// `struct mq_attr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct MqAttr {
    flags: libc::c_long,
    maxmsg: libc::c_long,
    msgsize: libc::c_long,
    curmsgs: libc::c_long,
    pad: [libc::c_long; 4],
}

/// A POSIX message queue's limits and current length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqInfo {
    pub maxmsg: u64,
    pub msgsize: u64,
    pub curmsgs: u64,
}

fn mq_name(name: &str) -> io::Result<std::ffi::CString> {
    // The kernel takes the name without its leading slash.
    std::ffi::CString::new(name.trim_start_matches('/'))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens the existing queue `name` of the calling thread's IPC namespace (`mq_open`).
pub fn mq_open(name: &str, flags: i32) -> io::Result<OwnedFd> {
    let n = mq_name(name)?;
    // SAFETY: a NUL-terminated name; no O_CREAT, so the mode and attr arguments are unused.
    let fd = cvt(unsafe {
        libc::syscall(libc::SYS_mq_open, n.as_ptr(), flags | libc::O_CLOEXEC, 0, 0)
    })?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates queue `name` (it must not exist) with these limits, for writing.
pub fn mq_create(name: &str, mode: u32, maxmsg: u64, msgsize: u64) -> io::Result<OwnedFd> {
    let n = mq_name(name)?;
    let attr = MqAttr {
        maxmsg: maxmsg as libc::c_long,
        msgsize: msgsize as libc::c_long,
        ..Default::default()
    };
    // SAFETY: a NUL-terminated name and a valid mq_attr for the duration of the call.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            n.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            libc::c_long::from(mode),
            &attr as *const MqAttr,
        )
    })?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `mq_getattr`.
pub fn mq_info(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<MqInfo> {
    use std::os::fd::AsRawFd;
    let mut a = MqAttr::default();
    // SAFETY: a writable mq_attr; no new attributes.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd.as_raw_fd(),
            std::ptr::null::<MqAttr>(),
            &mut a as *mut MqAttr,
        )
    })?;
    Ok(MqInfo {
        maxmsg: a.maxmsg as u64,
        msgsize: a.msgsize as u64,
        curmsgs: a.curmsgs as u64,
    })
}

/// Takes the first message (highest priority) without waiting: (priority, body), or None
/// when the queue is empty. `fd` must have O_NONBLOCK.
pub fn mq_take(
    fd: std::os::fd::BorrowedFd<'_>,
    msgsize: usize,
) -> io::Result<Option<(u32, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut prio: libc::c_uint = 0;
    // SAFETY: buf is writable for its length; prio is a valid out pointer; no timeout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_timedreceive,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut prio as *mut libc::c_uint,
            std::ptr::null::<libc::timespec>(),
        )
    };
    match cvt(r) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some((prio, buf)))
        }
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Queues one message (`fd` open for writing, non-blocking if the caller wants no wait).
pub fn mq_put(fd: std::os::fd::BorrowedFd<'_>, prio: u32, body: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: body is readable for its length; no timeout.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mq_timedsend,
            fd.as_raw_fd(),
            body.as_ptr(),
            body.len(),
            prio as libc::c_uint,
            std::ptr::null::<libc::timespec>(),
        )
    })
    .map(|_| ())
}
