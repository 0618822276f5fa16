//! Restartable sequences (rseq): a thread stopped inside the critical section of one is
//! saved at its abort handler, as CRIU does. The kernel would send it there itself on its
//! way back to user space, but only while its `rseq_cs` pointer is set; the syscalls cryo
//! runs in the task (and restore, which registers the rseq area again from elsewhere) make
//! the kernel clear that pointer, and a thread resumed in the middle of the section would
//! complete it without the abort it is owed. So the instruction pointer is moved to the
//! abort handler in the saved registers and in the ones the task gets back after the dump.
//! A section flagged `RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL` is left as it is.

use super::error::{TaskError, Unsupported};
use crate::sys::ptrace::{Regs, Tracee};

/// `RSEQ_CS_FLAG_NO_RESTART_ON_SIGNAL`.
const NO_RESTART_ON_SIGNAL: u32 = 1 << 1;

/// Moves `regs` (thread `t`'s, as seized) to the abort handler of the rseq critical section
/// the thread is inside, if any. `pid` names the process in errors.
pub fn leave_critical_section(pid: i32, t: &Tracee, regs: &mut Regs) -> Result<(), TaskError> {
    let conf = t.rseq_conf().map_err(|source| TaskError::Ptrace {
        pid: t.tid,
        what: "PTRACE_GET_RSEQ_CONFIGURATION",
        source,
    })?;
    if conf.rseq_abi_pointer == 0 {
        return Ok(());
    }
    let read = |addr: u64, buf: &mut [u8]| {
        crate::sys::mem::vm_read(t.tid, buf, &[(addr, buf.len())]).map_err(|source| {
            TaskError::Memory {
                pid: t.tid,
                addr,
                what: "reading the rseq area",
                source,
            }
        })
    };
    // struct rseq { u32 cpu_id_start, cpu_id; u64 rseq_cs; u32 flags; ... }
    let mut area = [0u8; 32];
    read(conf.rseq_abi_pointer, &mut area)?;
    let cs_ptr = u64::from_ne_bytes(area[8..16].try_into().expect("8 bytes"));
    let area_flags = u32::from_ne_bytes(area[16..20].try_into().expect("4 bytes"));
    if cs_ptr == 0 {
        return Ok(());
    }
    // struct rseq_cs { u32 version, flags; u64 start_ip, post_commit_offset, abort_ip; }
    let mut cs = [0u8; 32];
    read(cs_ptr, &mut cs)?;
    let word = |o: usize| u64::from_ne_bytes(cs[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_ne_bytes(cs[0..4].try_into().expect("4 bytes"));
    let flags = u32::from_ne_bytes(cs[4..8].try_into().expect("4 bytes")) | area_flags;
    let (start, len, abort) = (word(8), word(16), word(24));
    if regs.rip < start || regs.rip >= start.wrapping_add(len) {
        return Ok(());
    }
    if version != 0 {
        return Err(Unsupported::of(
            pid,
            format!("thread {} rseq critical section", t.tid),
            format!("its rseq_cs descriptor has version {version}, which cryo does not know"),
            "dump it again when the thread has left the critical section",
        )
        .into());
    }
    if flags & NO_RESTART_ON_SIGNAL == 0 {
        tracing::info!(
            "thread {} is inside an rseq critical section: saved at its abort handler {abort:#x}",
            t.tid
        );
        regs.rip = abort;
    }
    Ok(())
}
