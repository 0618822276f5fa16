//! The contents of an IPC namespace the tree owns (not cryo's), saved once per namespace as
//! CRIU does:
//! - `ipcns-var-ID.img`: its sysctls (`kernel.sem`, `msgmax`, `msgmnb`, `msgmni`,
//!   `auto_msgmni`, `shmmax`, `shmall`, `shmmni`, `shm_rmid_forced`, `fs.mqueue.*`, and the
//!   `*_next_id` values);
//! - `ipcns-shm-ID.img`: each System V shared memory segment (`ipc_shm_entry`: key, id,
//!   owner, mode, size) followed by its bytes, padded to 4 (`in_pagemaps` false, the layout
//!   `crit` decodes; restore also accepts CRIU's `in_pagemaps` images, whose bytes are in
//!   `pagemap-shmem-ID.img`);
//! - `ipcns-sem-ID.img`: each semaphore set (`ipc_sem_entry`) followed by its values, one
//!   u16 each, padded to 8;
//! - `ipcns-msg-ID.img`: each message queue (`ipc_msg_entry`) followed by its messages in
//!   queue order, each a framed `ipc_msg` (type, size) then its body padded to 8.
//!
//! Nothing runs in the target. cryo starts a thread of its own, `setns`es it into the
//! namespace (`/proc/PID/ns/ipc`: an IPC namespace is per thread) and works there: the
//! `*_STAT` calls list the objects, a segment is attached read-only and read through
//! `/proc/self/map_files` (holes are not populated), semaphores are read with `GETALL`, and
//! messages are copied with `msgrcv(MSG_COPY)`, which leaves them queued. Restore does the
//! same in the puppet's new namespace (made by `ns::restore_ipc`): each object is created
//! after writing its id to `/proc/sys/kernel/*_next_id`, so it gets the same id, then its
//! owner, content, values or messages are set. Limits are raised as needed before the
//! objects are made and set to their saved values after.
//!
//! Refused at dump, naming the object: a segment marked for removal but still attached
//! (`SHM_DEST`), a hugetlb segment, segments while `kernel.shm_rmid_forced` is 1 (their
//! life is tied to a creator cryo cannot restore), and POSIX message queues (listed through
//! a detached mount of the namespace's mqueue filesystem). A segment attached by a task of
//! the tree is refused by `memory`. Not kept: times, last pids, `SEM_UNDO` adjustments, and
//! `cuid`/`cgid` (the creator is cryo, root).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use super::error::{task_error_from, Failure, TaskError};
use super::{DumpCx, FileTable, TaskImages};
use crate::image::{self, pb, ImageDir, ImageError};
use crate::num::{c_int, c_uint, len32, low32, u64_of, usize_of};
use crate::sys::ipc::{self as sys, Perm};
use crate::sys::ns::NsType;
use crate::sys::PAGE_SIZE;

/// `shm_perm.mode` bits: removed (IPC_RMID) but still attached; locked in memory.
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Failure while saving or recreating the objects of an IPC namespace; names the object.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("cannot enter the IPC namespace of process {pid}")]
    Enter {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("{object}: {what} failed")]
    Op {
        object: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{object}: the kernel gave it id {got} instead")]
    WrongId { object: String, got: i32 },
    #[error("{object}: {what}")]
    Unsupported { object: String, what: String },
    #[error("the IPC namespace changed while it was read: {0}")]
    Changed(String),
    #[error("{path} holds {text:?}, not numbers")]
    BadCtl { path: String, text: String },
    #[error("the thread working in the IPC namespace died")]
    Worker,
}

task_error_from!(IpcError, no_failure);

impl Failure for IpcError {
    fn hint(&self) -> Option<String> {
        match self {
            IpcError::Task(e) => e.hint(),
            _ => None,
        }
    }
}

fn op<'a>(object: &'a str, what: &'static str) -> impl FnOnce(io::Error) -> IpcError + 'a {
    move |source| IpcError::Op {
        object: object.to_string(),
        what,
        source,
    }
}

fn shm_name(id: i32, key: i32) -> String {
    format!("SysV shm segment id {id} (key {key:#x})")
}
fn sem_name(id: i32, key: i32) -> String {
    format!("SysV semaphore set id {id} (key {key:#x})")
}
fn msg_name(id: i32, key: i32) -> String {
    format!("SysV message queue id {id} (key {key:#x})")
}

/// Everything saved about one IPC namespace.
#[derive(Debug, Default)]
pub struct IpcNs {
    pub id: u32,
    pub var: pb::IpcVarEntry,
    /// Each segment with its bytes (exactly `size` of them).
    pub shm: Vec<(pb::IpcShmEntry, Vec<u8>)>,
    pub sem: Vec<(pb::IpcSemEntry, Vec<u16>)>,
    pub msg: Vec<Queue>,
    /// POSIX message queues (cryo's `ipcns-mq-ID.img`).
    pub mq: Vec<pb::CryoMqueueEntry>,
}

/// A message queue and its messages (header, body), in queue order.
pub type Queue = (pb::IpcMsgEntry, Vec<(pb::IpcMsg, Vec<u8>)>);

/// Runs `f` in a thread of cryo's that has joined the IPC namespace of process `pid`.
fn in_ipc_ns<T: Send>(
    pid: i32,
    f: impl FnOnce() -> Result<T, IpcError> + Send,
) -> Result<T, IpcError> {
    let ns = File::open(format!("/proc/{pid}/ns/ipc"))
        .map_err(|source| IpcError::Enter { pid, source })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            crate::sys::ns::setns(ns.as_fd(), NsType::InterProcessCommunication)
                .map_err(|source| IpcError::Enter { pid, source })?;
            f()
        })
        .join()
        .unwrap_or(Err(IpcError::Worker))
    })
}

// ---------------------------------------------------------------------------------------
// sysctls

/// A u32 field of `ipc_var_entry` and its sysctl.
type U32Field = (&'static str, fn(&mut pb::IpcVarEntry) -> &mut u32);

/// The mandatory u32 sysctls (CRIU's order), then the two u64 ones.
const U32_CTLS: [U32Field; 6] = [
    ("kernel/msgmax", |e| &mut e.msg_ctlmax),
    ("kernel/msgmnb", |e| &mut e.msg_ctlmnb),
    ("kernel/auto_msgmni", |e| &mut e.auto_msgmni),
    ("kernel/msgmni", |e| &mut e.msg_ctlmni),
    ("kernel/shmmni", |e| &mut e.shm_ctlmni),
    ("kernel/shm_rmid_forced", |e| &mut e.shm_rmid_forced),
];
const MQ_CTLS: [U32Field; 3] = [
    ("fs/mqueue/queues_max", |e| &mut e.mq_queues_max),
    ("fs/mqueue/msg_max", |e| &mut e.mq_msg_max),
    ("fs/mqueue/msgsize_max", |e| &mut e.mq_msgsize_max),
];
type U64Field = (&'static str, fn(&mut pb::IpcVarEntry) -> &mut u64);
const U64_CTLS: [U64Field; 2] = [
    ("kernel/shmmax", |e| &mut e.shm_ctlmax),
    ("kernel/shmall", |e| &mut e.shm_ctlall),
];
type OptField = (&'static str, fn(&mut pb::IpcVarEntry) -> &mut Option<u32>);
const OPT_CTLS: [OptField; 5] = [
    ("fs/mqueue/msg_default", |e| &mut e.mq_msg_default),
    ("fs/mqueue/msgsize_default", |e| &mut e.mq_msgsize_default),
    ("kernel/msg_next_id", |e| &mut e.msg_next_id),
    ("kernel/sem_next_id", |e| &mut e.sem_next_id),
    ("kernel/shm_next_id", |e| &mut e.shm_next_id),
];

/// The numbers in `/proc/sys/NAME` (of the calling thread's IPC namespace); `None` if the
/// kernel has no such sysctl.
fn read_ctl(name: &str) -> Result<Option<Vec<i64>>, IpcError> {
    let path = format!("/proc/sys/{name}");
    let s = match crate::procfs::sysctl(name) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(op(&path, "read")(source)),
    };
    s.split_whitespace()
        .map(|w| {
            // u64 values (shmmax) above i64::MAX wrap, and are written back the same.
            w.parse::<i64>()
                .or_else(|_| w.parse::<u64>().map(u64::cast_signed))
                .map_err(|_| IpcError::BadCtl {
                    path: path.clone(),
                    text: s.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn write_ctl(name: &str, value: &str) -> Result<(), IpcError> {
    let path = format!("/proc/sys/{name}");
    std::fs::write(&path, value).map_err(op(&path, "write"))
}

fn one(name: &str) -> Result<Option<i64>, IpcError> {
    Ok(read_ctl(name)?.and_then(|v| v.first().copied()))
}

fn dump_var() -> Result<pb::IpcVarEntry, IpcError> {
    let mut e = pb::IpcVarEntry {
        sem_ctls: read_ctl("kernel/sem")?
            .unwrap_or_default()
            .into_iter()
            .map(|v| low32(v.cast_unsigned()))
            .collect(),
        ..Default::default()
    };
    for (name, f) in U32_CTLS.iter().chain(&MQ_CTLS) {
        *f(&mut e) = low32(one(name)?.unwrap_or(0).cast_unsigned());
    }
    for (name, f) in U64_CTLS {
        *f(&mut e) = one(name)?.unwrap_or(0).cast_unsigned();
    }
    for (name, f) in OPT_CTLS {
        // -1: no next id requested (the kernel refuses to be given it back).
        *f(&mut e) = one(name)?.and_then(|v| u32::try_from(v).ok());
    }
    Ok(e)
}

/// Which sysctls `restore_var` sets: before the objects exist, only limits, and only
/// upwards (so every saved object fits); after, every saved value.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Raise,
    Final,
}

/// Writes `want` to sysctl `name` if it differs from what it holds (in `Raise`, only if
/// it is higher: `want` and what it holds are compared element by element).
fn set_ctl(name: &str, want: &[i64], phase: Phase) -> Result<(), IpcError> {
    let Some(now) = read_ctl(name)? else {
        return Ok(()); // not in this kernel
    };
    let target: Vec<i64> = match phase {
        Phase::Final => want.to_vec(),
        Phase::Raise => want
            .iter()
            .zip(now.iter().chain(std::iter::repeat(&0)))
            .map(|(&w, &n)| {
                if w.cast_unsigned() > n.cast_unsigned() {
                    w
                } else {
                    n
                }
            })
            .collect(),
    };
    if target == now || target.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = target
        .iter()
        .map(|&v| {
            if name.ends_with("shmmax") || name.ends_with("shmall") {
                v.cast_unsigned().to_string()
            } else {
                v.to_string()
            }
        })
        .collect();
    write_ctl(name, &text.join(" "))
}

fn restore_var(e: &pb::IpcVarEntry, phase: Phase) -> Result<(), IpcError> {
    let mut e = e.clone();
    set_ctl(
        "kernel/sem",
        &e.sem_ctls.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(),
        phase,
    )?;
    for (name, f) in U64_CTLS {
        set_ctl(name, &[f(&mut e).cast_signed()], phase)?;
    }
    for (name, f) in U32_CTLS.iter().chain(&MQ_CTLS) {
        // Flags, not limits: only their final value matters. shm_rmid_forced destroys
        // unattached segments once set, so it comes after them.
        let flag = name.ends_with("auto_msgmni") || name.ends_with("shm_rmid_forced");
        if phase == Phase::Raise && flag {
            continue;
        }
        set_ctl(name, &[i64::from(*f(&mut e))], phase)?;
    }
    for (name, f) in OPT_CTLS {
        let next_id = name.ends_with("_next_id");
        if let Some(v) = *f(&mut e) {
            if !(next_id && phase == Phase::Raise) {
                set_ctl(name, &[i64::from(v)], phase)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// dump

fn desc(id: i32, p: &Perm) -> pb::IpcDescEntry {
    pb::IpcDescEntry {
        key: c_uint(p.key),
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode,
        id: c_uint(id),
    }
}

/// Every object of kind `what` at the kernel indexes 0..=max (`stat` fails with EINVAL on a
/// free index); there must be `count` of them.
fn list<T>(
    what: &str,
    (max, count): (i32, i32),
    stat: impl Fn(i32) -> io::Result<T>,
) -> Result<Vec<T>, IpcError> {
    let mut out = Vec::new();
    for i in 0..=max {
        match stat(i) {
            Ok(s) => out.push(s),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(source) => {
                return Err(IpcError::Op {
                    object: format!("{what} at index {i}"),
                    what: "*_STAT",
                    source,
                })
            }
        }
    }
    if u64_of(out.len()) != u64::from(c_uint(count)) {
        return Err(IpcError::Changed(format!(
            "found {} {what}s, the kernel counts {count}",
            out.len()
        )));
    }
    Ok(out)
}

fn dump_shm(var: &pb::IpcVarEntry) -> Result<Vec<(pb::IpcShmEntry, Vec<u8>)>, IpcError> {
    let info = sys::shm_info().map_err(op("SysV shm", "shmctl(SHM_INFO)"))?;
    let mut out = Vec::new();
    for s in list("SysV shm segment", info, sys::shm_stat)? {
        let name = shm_name(s.id, s.perm.key);
        let refuse = |what: &str| IpcError::Unsupported {
            object: name.clone(),
            what: what.into(),
        };
        if s.perm.mode & SHM_DEST != 0 {
            return Err(refuse(&format!(
                "it was removed (IPC_RMID) but is still attached {} times",
                s.nattch
            )));
        }
        if var.shm_rmid_forced != 0 {
            return Err(refuse(
                "kernel.shm_rmid_forced is 1: the segment lives only as long as its creator, which cryo cannot restore",
            ));
        }
        let at = sys::ShmAttach::new(s.id, s.size, true).map_err(op(&name, "shmat"))?;
        let f = File::open(at.map_files()).map_err(op(&name, "open map_files"))?;
        let fs = rustix::fs::fstatfs(&f).map_err(|e| op(&name, "fstatfs")(e.into()))?;
        // A hugetlb segment (SHM_HUGETLB): CRIU's flag, with the page size's log2 at
        // SHM_HUGE_SHIFT (hugetlbfs reports its page size as the block size).
        let hugetlb_flag = if fs.f_type == HUGETLBFS_MAGIC {
            let blk = f.metadata().map_err(op(&name, "fstat"))?.blksize();
            Some(c_uint(libc::SHM_HUGETLB) | (blk.trailing_zeros() << 26))
        } else {
            None
        };
        let mut data = vec![0u8; usize_of(s.size)];
        let mut got = 0;
        while got < data.len() {
            match f.read_at(&mut data[got..], got as u64) {
                Ok(0) => break, // past the end reads as zeroes
                Ok(n) => got += n,
                Err(e) => return Err(op(&name, "read the content")(e)),
            }
        }
        tracing::info!(object = %name, bytes = s.size, "ipc: shm segment");
        out.push((
            pb::IpcShmEntry {
                desc: desc(s.id, &s.perm),
                size: s.size,
                in_pagemaps: Some(false),
                hugetlb_flag,
            },
            data,
        ));
    }
    Ok(out)
}

fn dump_sem() -> Result<Vec<(pb::IpcSemEntry, Vec<u16>)>, IpcError> {
    let info = sys::sem_info().map_err(op("SysV semaphores", "semctl(SEM_INFO)"))?;
    let mut out = Vec::new();
    for s in list("SysV semaphore set", info, sys::sem_stat)? {
        let name = sem_name(s.id, s.perm.key);
        let values =
            sys::sem_get_all(s.id, usize_of(s.nsems)).map_err(op(&name, "semctl(GETALL)"))?;
        tracing::info!(object = %name, ?values, "ipc: semaphore set");
        out.push((
            pb::IpcSemEntry {
                desc: desc(s.id, &s.perm),
                nsems: low32(s.nsems),
            },
            values,
        ));
    }
    Ok(out)
}

fn dump_msg() -> Result<Vec<Queue>, IpcError> {
    let info = sys::msg_info().map_err(op("SysV message queues", "msgctl(MSG_INFO)"))?;
    let mut out = Vec::new();
    for q in list("SysV message queue", info, sys::msg_stat)? {
        let name = msg_name(q.id, q.perm.key);
        let mut msgs = Vec::new();
        for i in 0..q.qnum {
            // No message is longer than all the queued bytes.
            let (mtype, body) = sys::msg_copy(q.id, i, usize_of(q.cbytes.max(1)))
                .map_err(op(&name, "msgrcv(MSG_COPY)"))?;
            msgs.push((
                pb::IpcMsg {
                    mtype: mtype.cast_unsigned(),
                    msize: len32(body.len()),
                },
                body,
            ));
        }
        tracing::info!(object = %name, messages = msgs.len(), "ipc: message queue");
        out.push((
            pb::IpcMsgEntry {
                desc: desc(q.id, &q.perm),
                qbytes: low32(q.qbytes),
                qnum: low32(q.qnum),
            },
            msgs,
        ));
    }
    Ok(out)
}

/// The POSIX message queues of the namespace (listed through a detached mount of its mqueue
/// filesystem), each with its messages. Reading a message takes it off the queue, so each
/// queue is emptied and at once refilled in the same order (the tree is frozen; nothing else
/// lives in its namespace). A queue with an `mq_notify` registration is refused: refilling
/// it would fire the notification.
fn dump_mqueues() -> Result<Vec<pb::CryoMqueueEntry>, IpcError> {
    let mnt = sys::mqueue_mount().map_err(op("the mqueue filesystem", "fsopen/fsmount"))?;
    let root = format!("/proc/self/fd/{}", mnt.as_raw_fd());
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map_err(op("the mqueue filesystem", "readdir"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let object = format!("POSIX message queue /{name}");
        let path = format!("{root}/{name}");
        let meta = std::fs::metadata(&path).map_err(op(&object, "stat"))?;
        let state = std::fs::read_to_string(&path).map_err(op(&object, "read"))?;
        let notify = state
            .split_whitespace()
            .find_map(|f| f.strip_prefix("NOTIFY_PID:"))
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if notify != 0 {
            return Err(IpcError::Unsupported {
                object,
                what: format!("process {notify} is registered for its notification (mq_notify), which cryo cannot restore"),
            });
        }
        let fd =
            sys::mq_open(&name, libc::O_RDWR | libc::O_NONBLOCK).map_err(op(&object, "mq_open"))?;
        let info = sys::mq_info(fd.as_fd()).map_err(op(&object, "mq_getattr"))?;
        // Whatever happens, every message taken goes back before this returns.
        let mut msgs = Vec::new();
        let taken = loop {
            match sys::mq_take(fd.as_fd(), usize_of(info.msgsize)) {
                Ok(Some((prio, data))) => msgs.push(pb::CryoMqMsg { prio, data }),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let mut put_back = Ok(());
        for m in &msgs {
            if let Err(e) = sys::mq_put(fd.as_fd(), m.prio, &m.data) {
                tracing::error!(object = %object, error = %e, "a message could not be put back");
                put_back = Err(e);
            }
        }
        taken.map_err(op(&object, "mq_receive"))?;
        put_back.map_err(op(&object, "mq_send (put back)"))?;
        out.push(pb::CryoMqueueEntry {
            name,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            maxmsg: info.maxmsg,
            msgsize: info.msgsize,
            msgs,
        });
    }
    Ok(out)
}

/// Makes queue `e` again in the calling thread's namespace, with its owner, mode and messages.
fn restore_mqueue(e: &pb::CryoMqueueEntry) -> Result<(), IpcError> {
    let object = format!("POSIX message queue /{}", e.name);
    let fd = sys::mq_create(&e.name, e.mode, e.maxmsg, e.msgsize)
        .map_err(op(&object, "mq_open(O_CREAT)"))?;
    std::os::unix::fs::fchown(&fd, Some(e.uid), Some(e.gid)).map_err(|source| IpcError::Op {
        object: object.clone(),
        what: "fchown",
        source,
    })?;
    let mode = rustix::fs::Mode::from_bits_truncate(e.mode);
    rustix::fs::fchmod(&fd, mode).map_err(|err| IpcError::Op {
        object: object.clone(),
        what: "fchmod",
        source: err.into(),
    })?;
    for m in &e.msgs {
        sys::mq_put(fd.as_fd(), m.prio, &m.data).map_err(op(&object, "mq_send"))?;
    }
    Ok(())
}

/// Saves the contents of the task's IPC namespace, once per namespace, unless it is
/// cryo's own.
pub fn dump(cx: &mut DumpCx<'_>, img: &TaskImages) -> Result<(), IpcError> {
    let Some(id) = img.ids.ipc_ns_id else {
        return Ok(());
    };
    if Some(id) == super::ns::own_ns_id("ipc") || cx.files.ipcns.iter().any(|n| n.id == id) {
        return Ok(());
    }
    let pid = cx.pid;
    let ns = in_ipc_ns(pid, || {
        let var = dump_var()?;
        Ok(IpcNs {
            id,
            mq: dump_mqueues()?,
            shm: dump_shm(&var)?,
            sem: dump_sem()?,
            msg: dump_msg()?,
            var,
        })
    })
    .map_err(|e| match e {
        IpcError::Unsupported { object, what } => super::error::Unsupported::of(
            pid,
            object,
            what,
            "remove it before the dump, or keep it outside the namespace",
        )
        .into(),
        e => e,
    })?;
    cx.files.ipcns.push(ns);
    Ok(())
}

/// Writes the four images of every IPC namespace saved.
pub fn write(dir: &ImageDir, files: &FileTable) -> Result<(), ImageError> {
    for ns in &files.ipcns {
        let id = ns.id;
        dir.write(
            &format!("ipcns-var-{id}.img"),
            image::IPC_VAR,
            std::slice::from_ref(&ns.var),
        )?;
        let shm: Vec<_> = ns
            .shm
            .iter()
            .map(|(e, data)| {
                let mut d = data.clone();
                d.resize(data.len().next_multiple_of(4), 0);
                (*e, d)
            })
            .collect();
        dir.write_with_data(&format!("ipcns-shm-{id}.img"), image::IPCNS_SHM, &shm)?;
        let sem: Vec<_> = ns
            .sem
            .iter()
            .map(|(e, values)| {
                let mut d: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
                d.resize(image::sem_values_len(values.len()), 0);
                (*e, d)
            })
            .collect();
        dir.write_with_data(&format!("ipcns-sem-{id}.img"), image::IPCNS_SEM, &sem)?;
        let msg: Vec<_> = ns
            .msg
            .iter()
            .map(|(e, msgs)| (*e, image::ipc_msgs_data(msgs)))
            .collect();
        dir.write_with_data(&format!("ipcns-msg-{id}.img"), image::IPCNS_MSG, &msg)?;
        if !ns.mq.is_empty() {
            dir.write(&format!("ipcns-mq-{id}.img"), image::IPCNS_MQ, &ns.mq)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// restore

/// Reads the images of IPC namespace `id`; `None` if it was saved empty (no
/// `ipcns-var-ID.img`: an image of an older cryo).
fn load(dir: &ImageDir, id: u32) -> Result<Option<IpcNs>, IpcError> {
    let Some(var) =
        dir.read_opt::<pb::IpcVarEntry>(&format!("ipcns-var-{id}.img"), image::IPC_VAR)?
    else {
        return Ok(None);
    };
    let var = var.into_iter().next().unwrap_or_default();
    let mut ns = IpcNs {
        id,
        var,
        ..Default::default()
    };
    for (e, data) in
        dir.read_with_data::<pb::IpcShmEntry>(&format!("ipcns-shm-{id}.img"), image::IPCNS_SHM)?
    {
        let mut data = data;
        if e.in_pagemaps == Some(true) {
            data = Vec::new(); // filled from pagemap-shmem-ID.img once the segment exists
        } else {
            data.truncate(usize_of(e.size));
        }
        ns.shm.push((e, data));
    }
    for (e, data) in
        dir.read_with_data::<pb::IpcSemEntry>(&format!("ipcns-sem-{id}.img"), image::IPCNS_SEM)?
    {
        let values = data
            .chunks_exact(2)
            .take(e.nsems as usize)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        ns.sem.push((e, values));
    }
    let name = format!("ipcns-msg-{id}.img");
    for (e, data) in dir.read_with_data::<pb::IpcMsgEntry>(&name, image::IPCNS_MSG)? {
        let msgs = image::read_ipc_msgs(&dir.file(&name), &data, e.qnum as usize)?;
        ns.msg.push((e, msgs));
    }
    ns.mq = dir
        .read_opt(&format!("ipcns-mq-{id}.img"), image::IPCNS_MQ)?
        .unwrap_or_default();
    Ok(Some(ns))
}

/// Creates each object with its saved id: writes the id to `kernel/KIND_next_id`, calls
/// `create`, and checks what the kernel gave.
fn create_with_id(
    kind: &str,
    object: &str,
    id: u32,
    create: impl FnOnce() -> io::Result<i32>,
) -> Result<i32, IpcError> {
    write_ctl(&format!("kernel/{kind}_next_id"), &id.to_string())?;
    let got = create().map_err(op(object, "create"))?;
    if got != c_int(id) {
        return Err(IpcError::WrongId {
            object: object.to_string(),
            got,
        });
    }
    Ok(got)
}

fn restore_shm(dir: &ImageDir, e: &pb::IpcShmEntry, data: &[u8]) -> Result<(), IpcError> {
    let d = &e.desc;
    let name = shm_name(c_int(d.id), c_int(d.key));
    let huge = e.hugetlb_flag.unwrap_or(0);
    let flags = c_int((d.mode & 0o777) | huge) | libc::IPC_CREAT | libc::IPC_EXCL;
    let id = create_with_id("shm", &name, d.id, || {
        sys::shm_get(c_int(d.key), e.size, flags)
    })?;
    sys::shm_set_owner(id, d.uid, d.gid).map_err(op(&name, "shmctl(IPC_SET)"))?;
    if d.mode & SHM_LOCKED != 0 {
        sys::shm_lock(id).map_err(op(&name, "shmctl(SHM_LOCK)"))?;
    }
    let mut at = sys::ShmAttach::new(id, e.size, false).map_err(op(&name, "shmat"))?;
    if huge & c_uint(libc::SHM_HUGETLB) != 0 && e.in_pagemaps != Some(true) {
        // hugetlbfs has no write(): through the attachment.
        for (i, page) in data.chunks(usize_of(PAGE_SIZE)).enumerate() {
            if page.iter().any(|&b| b != 0) {
                at.write_at(u64_of(i) * PAGE_SIZE, page)
                    .map_err(op(&name, "write the content"))?;
            }
        }
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(at.map_files())
        .map_err(op(&name, "open map_files"))?;
    if e.in_pagemaps == Some(true) {
        // CRIU's layout: the bytes are shmem pages of the segment's id.
        return super::shmem::load_content(dir, u64::from(d.id), &f, e.size).map_err(|err| {
            IpcError::Op {
                object: name.clone(),
                what: "write the content from pagemap-shmem",
                source: io::Error::other(err.to_string()),
            }
        });
    }
    // Only pages holding something, so holes stay holes.
    for (i, page) in data.chunks(usize_of(PAGE_SIZE)).enumerate() {
        if page.iter().any(|&b| b != 0) {
            f.write_all_at(page, u64_of(i) * PAGE_SIZE)
                .map_err(op(&name, "write the content"))?;
        }
    }
    Ok(())
}

fn restore_sem(e: &pb::IpcSemEntry, values: &[u16]) -> Result<(), IpcError> {
    let d = &e.desc;
    let name = sem_name(c_int(d.id), c_int(d.key));
    let flags = c_int(d.mode & 0o777) | libc::IPC_CREAT | libc::IPC_EXCL;
    let id = create_with_id("sem", &name, d.id, || {
        sys::sem_get(c_int(d.key), c_int(e.nsems), flags)
    })?;
    sys::sem_set_owner(id, d.uid, d.gid).map_err(op(&name, "semctl(IPC_SET)"))?;
    sys::sem_set_all(id, values).map_err(op(&name, "semctl(SETALL)"))
}

fn restore_msg(e: &pb::IpcMsgEntry, msgs: &[(pb::IpcMsg, Vec<u8>)]) -> Result<(), IpcError> {
    let d = &e.desc;
    let name = msg_name(c_int(d.id), c_int(d.key));
    let flags = c_int(d.mode & 0o777) | libc::IPC_CREAT | libc::IPC_EXCL;
    let id = create_with_id("msg", &name, d.id, || sys::msg_get(c_int(d.key), flags))?;
    // Room for every message even if the limit was lowered after they were sent.
    let total: u64 = msgs.iter().map(|(_, b)| b.len() as u64).sum();
    let qbytes = u64::from(e.qbytes);
    sys::msg_set(id, d.uid, d.gid, qbytes.max(total)).map_err(op(&name, "msgctl(IPC_SET)"))?;
    for (m, body) in msgs {
        sys::msg_send(id, m.mtype.cast_signed(), body).map_err(op(&name, "msgsnd"))?;
    }
    if total > qbytes {
        sys::msg_set(id, d.uid, d.gid, qbytes).map_err(op(&name, "msgctl(IPC_SET)"))?;
    }
    Ok(())
}

/// Fills the new IPC namespace of the puppet whose host pid is `host_pid` (made by
/// `ns::restore_ipc`) with the saved objects, when `img`'s namespace is not the one it
/// inherits (`inherited`).
pub fn restore(
    dir: &ImageDir,
    host_pid: i32,
    img: &TaskImages,
    inherited: Option<u32>,
) -> Result<(), IpcError> {
    let Some(id) = img.ids.ipc_ns_id.filter(|&id| Some(id) != inherited) else {
        return Ok(());
    };
    let Some(ns) = load(dir, id)? else {
        return Ok(());
    };
    in_ipc_ns(host_pid, || {
        restore_var(&ns.var, Phase::Raise)?;
        for (e, data) in &ns.shm {
            restore_shm(dir, e, data)?;
        }
        for (e, values) in &ns.sem {
            restore_sem(e, values)?;
        }
        for (e, msgs) in &ns.msg {
            restore_msg(e, msgs)?;
        }
        for e in &ns.mq {
            restore_mqueue(e)?;
        }
        restore_var(&ns.var, Phase::Final)
    })?;
    tracing::info!(
        ns = id,
        segments = ns.shm.len(),
        semaphore_sets = ns.sem.len(),
        message_queues = ns.msg.len(),
        "ipc namespace read"
    );
    Ok(())
}
