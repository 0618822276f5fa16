//! CPU state of a thread: general-purpose registers (with syscall-restart fix-ups) and the
//! XSAVE area (x87/SSE/AVX/AVX-512/AMX...).
//!
//! Dump stores CRIU's fields (so CRIU tools see the registers) plus the raw XSAVE bytes in a
//! cryo extension field, which restore prefers: it is exact on the same CPU model.
//! The general-purpose registers are written last, by `restore::finish`, because every
//! injected syscall before that borrows them.

use super::error::{task_error_from, TaskError};
use super::{DumpCx, Kind, RestoreCx, TaskImages};
use crate::image::pb;
use crate::sys::ptrace::Regs;

/// Why the registers could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error(transparent)]
    Task(#[from] TaskError),
}
task_error_from!(RegsError);

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// CPU registers.
pub struct CpuState;

/// Applies the kernel's syscall-restart rule to registers captured at a ptrace stop inside a
/// syscall, so that on restore the task re-executes the syscall (read, wait4, ...) or, for
/// restart-block syscalls (nanosleep, poll with timeout) whose kernel state cannot be carried
/// over, sees EINTR with the remaining time already written by the kernel, as CRIU does.
pub fn fix_syscall_restart(r: &mut Regs) -> bool {
    if (r.orig_rax as i64) < 0 {
        return false;
    }
    match -(r.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
            true
        }
        ERESTART_RESTARTBLOCK => {
            r.rax = (-libc::EINTR) as i64 as u64;
            true
        }
        _ => false,
    }
}

pub fn regs_to_pb(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

/// Image registers → kernel registers; `orig_rax` is -1 so the kernel applies no restart
/// logic when the task resumes (the fix-up already happened at dump time).
pub fn pb_to_regs(p: &pb::UserX86RegsEntry, base: &Regs) -> Regs {
    let mut r = *base;
    r.r15 = p.r15;
    r.r14 = p.r14;
    r.r13 = p.r13;
    r.r12 = p.r12;
    r.rbp = p.bp;
    r.rbx = p.bx;
    r.r11 = p.r11;
    r.r10 = p.r10;
    r.r9 = p.r9;
    r.r8 = p.r8;
    r.rax = p.ax;
    r.rcx = p.cx;
    r.rdx = p.dx;
    r.rsi = p.si;
    r.rdi = p.di;
    r.orig_rax = u64::MAX;
    r.rip = p.ip;
    r.cs = p.cs;
    r.eflags = p.flags;
    r.rsp = p.sp;
    r.ss = p.ss;
    r.fs_base = p.fs_base;
    r.gs_base = p.gs_base;
    r.ds = p.ds;
    r.es = p.es;
    r.fs = p.fs;
    r.gs = p.gs;
    r
}

fn u16_at(b: &[u8], o: usize) -> u32 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u32
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn words(b: &[u8], o: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| u32_at(b, o + 4 * i)).collect()
}

/// CRIU's view of an XSAVE area: legacy FXSAVE fields plus the AVX upper halves.
pub fn xsave_to_pb(x: &[u8]) -> pb::UserX86FpregsEntry {
    let mut e = pb::UserX86FpregsEntry {
        cryo_xsave_raw: Some(x[..x.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)].to_vec()),
        cryo_xsave_size: Some(x.len() as u32),
        ..Default::default()
    };
    if x.len() < 512 {
        return e;
    }
    e.cwd = u16_at(x, 0);
    e.swd = u16_at(x, 2);
    e.twd = x[4] as u32;
    e.fop = u16_at(x, 6);
    e.rip = u64_at(x, 8);
    e.rdp = u64_at(x, 16);
    e.mxcsr = u32_at(x, 24);
    e.mxcsr_mask = u32_at(x, 28);
    e.st_space = words(x, 32, 32);
    e.xmm_space = words(x, 160, 64);
    e.padding = words(x, 416, 24);
    if x.len() >= 576 + 256 {
        e.xsave = Some(pb::UserX86XsaveEntry {
            xstate_bv: u64_at(x, 512),
            ymmh_space: words(x, 576, 64),
            ..Default::default()
        });
    }
    e
}

/// Rebuilds an XSAVE area from CRIU's fields (for images without the raw bytes), sized `len`.
pub fn pb_to_xsave(e: &pb::UserX86FpregsEntry, len: usize) -> Vec<u8> {
    let mut x = vec![0u8; len.max(576)];
    let put16 =
        |x: &mut Vec<u8>, o: usize, v: u32| x[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
    let put32 = |x: &mut Vec<u8>, o: usize, v: u32| x[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put16(&mut x, 0, e.cwd);
    put16(&mut x, 2, e.swd);
    x[4] = e.twd as u8;
    put16(&mut x, 6, e.fop);
    x[8..16].copy_from_slice(&e.rip.to_le_bytes());
    x[16..24].copy_from_slice(&e.rdp.to_le_bytes());
    put32(&mut x, 24, e.mxcsr);
    put32(&mut x, 28, e.mxcsr_mask);
    for (i, w) in e.st_space.iter().take(32).enumerate() {
        put32(&mut x, 32 + 4 * i, *w);
    }
    for (i, w) in e.xmm_space.iter().take(64).enumerate() {
        put32(&mut x, 160 + 4 * i, *w);
    }
    let mut bv = 0b11u64; // x87 + SSE
    if let Some(xs) = &e.xsave {
        if xs.ymmh_space.len() == 64 && x.len() >= 576 + 256 {
            for (i, w) in xs.ymmh_space.iter().enumerate() {
                put32(&mut x, 576 + 4 * i, *w);
            }
            bv |= xs.xstate_bv & 0b100;
        }
    }
    x[512..520].copy_from_slice(&bv.to_le_bytes());
    x
}

/// Loads the saved FPU/vector state into the thread `cx` drives: the raw XSAVE bytes when
/// they fit this CPU, else CRIU's legacy+AVX fields.
pub fn set_xstate(cx: &mut RestoreCx<'_>, fp: &pb::UserX86FpregsEntry) -> Result<(), RegsError> {
    let t = cx.remote.tracee();
    let len = match cx.inherited.xstate_len {
        Some(l) => l,
        None => {
            let l = t
                .xstate()
                .map_err(|source| TaskError::Ptrace {
                    pid: t.tid,
                    what: "PTRACE_GETREGSET(NT_X86_XSTATE)",
                    source,
                })?
                .len();
            cx.inherited.xstate_len = Some(l);
            l
        }
    };
    let saved = fp
        .cryo_xsave_size
        .map(|s| s as usize)
        .or(fp.cryo_xsave_raw.as_ref().map(|r| r.len()));
    let x = match (&fp.cryo_xsave_raw, saved) {
        (Some(raw), Some(size)) if size == len && raw.len() <= len => {
            let mut x = raw.clone();
            x.resize(len, 0); // the trimmed zero tail
            x
        }
        (Some(_), Some(size)) => {
            tracing::warn!(
                "XSAVE area size differs ({size} bytes saved, {len} here): restoring legacy and AVX state only"
            );
            pb_to_xsave(fp, len)
        }
        _ => pb_to_xsave(fp, len),
    };
    Ok(t.set_xstate(&x).map_err(|source| TaskError::Ptrace {
        pid: t.tid,
        what: "PTRACE_SETREGSET(NT_X86_XSTATE)",
        source,
    })?)
}

impl Kind for CpuState {
    const NAME: &'static str = "cpu state";
    type Error = RegsError;

    fn dump(cx: &mut DumpCx<'_>, img: &mut TaskImages) -> Result<(), RegsError> {
        let mut regs = cx.regs;
        if fix_syscall_restart(&mut regs) {
            tracing::debug!(
                "task {} was in syscall {}; it will resume it (result {:#x})",
                cx.pid,
                cx.regs.orig_rax,
                regs.rax
            );
        }
        let xstate = cx.tracee.xstate().map_err(|source| TaskError::Ptrace {
            pid: cx.pid,
            what: "PTRACE_GETREGSET(NT_X86_XSTATE)",
            source,
        })?;
        img.core.mtype = pb::core_entry::March::X8664 as i32;
        let ti = img.ti();
        ti.gpregs = regs_to_pb(&regs);
        ti.fpregs = xsave_to_pb(&xstate);
        Ok(())
    }

    fn restore(cx: &mut RestoreCx<'_>, img: &TaskImages) -> Result<(), RegsError> {
        let ti = img.core.thread_info.as_ref().ok_or_else(|| {
            TaskError::BadImage(format!("core-{}.img has no thread_info", img.pid))
        })?;
        set_xstate(cx, &ti.fpregs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero() -> Regs {
        Regs {
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rbp: 0,
            rbx: 0,
            r11: 0,
            r10: 0,
            r9: 0,
            r8: 0,
            rax: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            orig_rax: 0,
            rip: 0,
            cs: 0,
            eflags: 0,
            rsp: 0,
            ss: 0,
            fs_base: 0,
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        }
    }

    #[test]
    fn restart_rules() {
        let mut r = zero();
        r.orig_rax = 0; // read
        r.rax = (-(ERESTARTSYS)) as u64;
        r.rip = 0x1002;
        assert!(fix_syscall_restart(&mut r));
        assert_eq!((r.rax, r.rip), (0, 0x1000));

        let mut r = zero();
        r.orig_rax = 35; // nanosleep
        r.rax = (-(ERESTART_RESTARTBLOCK)) as u64;
        r.rip = 0x2002;
        assert!(fix_syscall_restart(&mut r));
        assert_eq!(r.rax as i64, -(libc::EINTR as i64));
        assert_eq!(r.rip, 0x2002);

        let mut r = zero();
        r.orig_rax = u64::MAX;
        r.rax = (-(ERESTARTSYS)) as u64;
        assert!(!fix_syscall_restart(&mut r));
    }

    #[test]
    fn xsave_round_trip_of_legacy_fields() {
        let mut x = vec![0u8; 1024];
        for (i, b) in x.iter_mut().enumerate().take(512) {
            *b = (i * 7) as u8;
        }
        x[512..520].copy_from_slice(&7u64.to_le_bytes());
        let mut e = xsave_to_pb(&x);
        e.cryo_xsave_raw = None;
        let y = pb_to_xsave(&e, 1024);
        assert_eq!(&x[..5], &y[..5]); // byte 5 is reserved in the FXSAVE layout
        assert_eq!(&x[6..24], &y[6..24]);
        assert_eq!(&x[24..416], &y[24..416]);
    }
}
