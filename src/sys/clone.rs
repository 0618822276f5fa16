//! `struct clone_args` of `clone3(2)`: one definition for every task cryo creates, whether
//! cryo calls `clone3` itself (the restore puppet, `proc::spawn_puppet`) or a puppet calls it
//! from injected code (child processes and threads at restore, through scratch memory:
//! [`CloneArgs::to_bytes`]).

/// `struct clone_args` (linux/sched.h, the version with `set_tid` and `cgroup`: 88 bytes).
/// Pointers are addresses in the calling task.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    /// Address of an array of `set_tid_size` `pid_t`s: the new task's id in each PID
    /// namespace, innermost first.
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// The size the kernel is told (`CLONE_ARGS_SIZE_VER2`).
pub const CLONE_ARGS_SIZE: usize = std::mem::size_of::<CloneArgs>();
const _: () = assert!(CLONE_ARGS_SIZE == 88);

impl CloneArgs {
    /// A new process (`exit_signal`: what its parent gets when it dies; 0 with
    /// `CLONE_PARENT`) with `flags`, with an exact id (`set_tid` filled in by the caller).
    pub fn process(flags: u64, exit_signal: i32) -> CloneArgs {
        CloneArgs {
            flags,
            exit_signal: u64::from(exit_signal.cast_unsigned()),
            ..CloneArgs::default()
        }
    }

    /// A new thread of the calling process (`CLONE_THREAD` and what a thread shares), with an
    /// exact id (`set_tid` filled in by the caller).
    pub fn thread() -> CloneArgs {
        CloneArgs {
            flags: THREAD_FLAGS,
            ..CloneArgs::default()
        }
    }

    /// The struct as the kernel reads it (native endianness, no padding).
    pub fn to_bytes(&self) -> [u8; CLONE_ARGS_SIZE] {
        let words = [
            self.flags,
            self.pidfd,
            self.child_tid,
            self.parent_tid,
            self.exit_signal,
            self.stack,
            self.stack_size,
            self.tls,
            self.set_tid,
            self.set_tid_size,
            self.cgroup,
        ];
        let mut out = [0u8; CLONE_ARGS_SIZE];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// Clone flags of a thread: it shares memory, fs info, fds, signal handlers and SysV
/// semaphore undo lists with its process.
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        let a = CloneArgs {
            flags: 1,
            exit_signal: 17,
            set_tid: 0x1000,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        let b = a.to_bytes();
        assert_eq!(&b[0..8], &1u64.to_ne_bytes());
        assert_eq!(&b[32..40], &17u64.to_ne_bytes());
        assert_eq!(&b[64..72], &0x1000u64.to_ne_bytes());
        assert_eq!(&b[72..80], &1u64.to_ne_bytes());
        assert_eq!(std::mem::offset_of!(CloneArgs, set_tid), 64);
    }
}
