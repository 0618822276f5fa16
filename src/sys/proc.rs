//! Process-level syscalls that act on another task from outside: creating a task with an exact
//! PID (`clone3` + `set_tid`), resource limits (`prlimit64`), `kcmp`, scheduling, robust futex
//! lists, signals.

use std::io;

use super::clone::{CloneArgs, CLONE_ARGS_SIZE};
use super::cvt;

/// Runs `f` with the calling thread's real and effective uids set to `ruid`/`euid` (its
/// saved uid kept), then gives it its own back. Raw syscalls: they change this thread only
/// (glibc's wrappers would change every thread of cryo). What `f` does with those ids is
/// recorded as theirs (`F_SETOWN_EX` keeps the caller's uids).
pub fn with_uids<T>(ruid: u32, euid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: pointers to live locals of the size the call writes.
    cvt(unsafe { libc::syscall(libc::SYS_getresuid, &raw mut r, &raw mut e, &raw mut s) })?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresuid, ruid, euid, u32::MAX) })?;
    let out = f();
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) })?;
    Ok(out)
}

/// Runs `f` with the calling thread's effective gid set to `egid`, then gives it its own
/// back (this thread only, as [`with_uids`]).
pub fn with_egid<T>(egid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    let (mut r, mut e, mut s) = (0u32, 0u32, 0u32);
    // SAFETY: pointers to live locals of the size the call writes.
    cvt(unsafe { libc::syscall(libc::SYS_getresgid, &raw mut r, &raw mut e, &raw mut s) })?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, egid, u32::MAX) })?;
    let out = f();
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresgid, u32::MAX, e, u32::MAX) })?;
    Ok(out)
}

/// Runs `f` with the calling thread's file-system ids set to `uid`/`gid` and every
/// capability it is permitted effective (an fsuid other than 0 drops the file ones), then
/// gives it its own ids and capabilities back (this thread only, as [`with_uids`]).
pub fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    // struct __user_cap_header_struct { version (_LINUX_CAPABILITY_VERSION_3), pid (0:
    // this thread) }; two struct __user_cap_data_struct { effective, permitted, inheritable }.
    let mut hdr = [0x2008_0522u32, 0];
    let mut caps = [0u32; 6];
    // SAFETY: pointers to live locals of the sizes the call reads and writes.
    cvt(unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), caps.as_mut_ptr()) })?;
    // SAFETY: plain integer arguments; both return the previous id.
    let (old_uid, old_gid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, uid),
            libc::syscall(libc::SYS_setfsgid, gid),
        )
    };
    let mut raised = caps;
    raised[0] = caps[1];
    raised[3] = caps[4];
    // SAFETY: pointers to live locals of the sizes the call reads.
    let set = cvt(unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), raised.as_ptr()) });
    let out = set.map(|_| f());
    // SAFETY: plain integer arguments.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, old_uid);
        libc::syscall(libc::SYS_setfsgid, old_gid);
    }
    // SAFETY: pointers to live locals of the sizes the call reads.
    cvt(unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), caps.as_ptr()) })?;
    out
}

/// Creates the restore "puppet": a child with PID `pid` that blocks all signals, arranges to
/// die with cryo (`PR_SET_PDEATHSIG`), calls `PTRACE_TRACEME` and stops itself with SIGSTOP.
/// From then on it only ever executes what its tracer points it at. Returns the child's PID.
/// With `new_pid_ns` it is instead PID 1 of a new PID namespace (`pid` is its PID there),
/// and the PID returned is the one it has in cryo's namespace. With `sibling` it is created
/// with `CLONE_PARENT` (cryo's parent is its parent, as CRIU's `--restore-sibling`) and
/// waits in `pause()` for cryo to seize it instead of `PTRACE_TRACEME` (which would make
/// that parent its tracer). With `new_user_ns` it is also in a new user namespace (which then
/// owns the new PID namespace); it has no uid/gid maps until the caller writes them, and
/// needs none to stop.
///
/// cryo must have a single thread, checked here at the moment of the fork: the check cannot
/// go stale, since only a thread of cryo's could start another, and the caller is the only
/// one. (The child of a multi-threaded fork gets a copy of memory the other threads were in
/// the middle of changing; the puppet's tracer is the calling thread.) Fails with
/// [`SpawnError::Threads`] otherwise: callers pause anything that runs in a thread of its
/// own first (`progress::pause` stops the CLI's progress display).
pub fn spawn_puppet(
    pid: i32,
    new_pid_ns: bool,
    new_user_ns: bool,
    sibling: bool,
) -> Result<i32, SpawnError> {
    spawn(pid, new_pid_ns, new_user_ns, sibling, !new_pid_ns)
}

/// [`spawn_puppet`] into the existing PID namespace `ns` (an external one, a pod's), where
/// the puppet gets PID `pid`: the calling thread's namespace for children is `ns` for the
/// fork and then its own again.
pub fn spawn_puppet_in(
    ns: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    sibling: bool,
) -> Result<i32, SpawnError> {
    use std::os::fd::AsFd;
    let own = std::fs::File::open("/proc/thread-self/ns/pid").map_err(SpawnError::Clone)?;
    super::ns::setns(ns, super::ns::NsType::ProcessID).map_err(SpawnError::Clone)?;
    // The child cannot see cryo from there (getppid is 0): no parent check.
    let r = spawn(pid, false, false, sibling, false);
    if let Err(e) = super::ns::setns(own.as_fd(), super::ns::NsType::ProcessID) {
        // Every later child of this thread would be created there.
        tracing::error!(error = %e, "cannot return to cryo's PID namespace; aborting");
        std::process::abort();
    }
    r
}

fn spawn(
    pid: i32,
    new_pid_ns: bool,
    new_user_ns: bool,
    sibling: bool,
    check_parent: bool,
) -> Result<i32, SpawnError> {
    wait_single_threaded()?;
    let tid = pid;
    let mut flags = if new_pid_ns {
        libc::CLONE_NEWPID as u64
    } else {
        0
    };
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    if new_user_ns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    // With CLONE_PARENT the kernel wants no exit signal: the child gets cryo's own.
    let mut args = CloneArgs::process(flags, if sibling { 0 } else { libc::SIGCHLD });
    args.set_tid = &tid as *const i32 as u64;
    args.set_tid_size = 1;
    // The parent the child must have (cryo, or cryo's parent with CLONE_PARENT); if it has
    // another, cryo died meanwhile. (Not "PID 1": cryo may itself be PID 1 of a namespace.)
    let parent = if sibling {
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
    } else {
        own_pid()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; args is valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, CLONE_ARGS_SIZE) };
    if r == 0 {
        // Child: only raw syscalls, no allocation, never returns.
        // SAFETY: all calls take plain values or valid local pointers.
        unsafe {
            // The raw syscall: glibc's sigfillset/sigprocmask leave its own signals 32 and
            // 33 (SIGCANCEL, SIGSETXID) unblocked, and a program's pending signal 32 (a
            // SIGEV_THREAD timer's) would then be delivered while cryo restores.
            let all: u64 = !0;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                std::ptr::null_mut::<u64>(),
                8,
            );
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // A cryo run from a file with capabilities (`--unprivileged`) is not dumpable,
            // and neither would its child be: its /proc files would belong to root, which
            // cryo's own uid could not open. The task's saved dumpable mode is set last.
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
            if check_parent && libc::getppid() != parent {
                libc::_exit(1);
            }
            if sibling {
                // Every signal is blocked: only cryo's PTRACE_INTERRUPT (or SIGKILL) ends it.
                loop {
                    libc::pause();
                }
            }
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::raise(libc::SIGSTOP);
            libc::_exit(127);
        }
    }
    let pid = cvt(r).map_err(SpawnError::Clone)?;
    i32::try_from(pid).map_err(|_| SpawnError::Clone(io::Error::from_raw_os_error(libc::EOVERFLOW)))
}

/// Why the restore puppet could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cryo has {0} threads: the restore puppet must be forked from a single-threaded cryo")]
    Threads(usize),
    #[error("clone3 failed")]
    Clone(#[source] io::Error),
}

impl SpawnError {
    /// The errno of a failed clone3.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SpawnError::Clone(e) => e.raw_os_error(),
            SpawnError::Threads(_) => None,
        }
    }
}

/// Waits (at most a second) until cryo has one thread. Worker threads that finished their
/// work (a scope ends when their closures return) take a moment to leave /proc/self/task.
fn wait_single_threaded() -> Result<(), SpawnError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match threads().map_err(SpawnError::Clone)? {
            1 => return Ok(()),
            n if std::time::Instant::now() >= deadline => return Err(SpawnError::Threads(n)),
            _ => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    }
}

/// How many threads cryo has now (entries of /proc/self/task).
pub fn threads() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Makes cryo dumpable or not (`PR_SET_DUMPABLE`): a cryo started from a file with
/// capabilities is not, and its /proc files (and its children's) then belong to root.
pub fn set_dumpable(on: bool) {
    // SAFETY: a prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(on)) };
}

/// cryo's own PID (in its own PID namespace).
pub fn own_pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// Creates a child that exits at once and is left unreaped (a zombie): what a pidfd of a
/// dead process is made from. Returns its PID; the caller reaps it with [`reap`].
pub fn spawn_exiting() -> io::Result<i32> {
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; args is valid for the call. The
    // child makes one raw syscall and never returns, so a multi-threaded parent is fine.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY: exit_group takes a plain integer and does not return.
        unsafe {
            libc::syscall(libc::SYS_exit_group, 0);
        }
    }
    cvt(r).and_then(|p| i32::try_from(p).map_err(|_| io::Error::from_raw_os_error(libc::ERANGE)))
}

/// Runs `f` in a forked child of cryo that first joined the user namespace `userns` (when
/// given) and hands the fd `f` returns back to the caller (SCM_RIGHTS over a socket pair);
/// `Ok(None)` when `f` found nothing. A thread cannot join a user namespace (the kernel
/// refuses it to a multi-threaded process), and a mount namespace copied by a task outside
/// the one owning the original has every mount locked (no cover can be unmounted there).
/// The child is glibc's `fork` (malloc's locks are made usable in it), so `f` may allocate;
/// it must not log (another thread may have held the log's lock at the fork). The child
/// never returns: it `_exit`s once it sent its answer. A child that gives no answer within
/// [`FD_FROM_CHILD_TIMEOUT`] (hung: a lock another thread held at the fork, say) is killed
/// and reaped, and the call fails with `TimedOut` naming it: the tree, frozen meanwhile, is
/// not held for ever.
pub fn fd_from_child(
    userns: Option<std::os::fd::BorrowedFd<'_>>,
    f: impl FnOnce() -> Option<std::os::fd::OwnedFd>,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    fd_from_child_within(userns, f, FD_FROM_CHILD_TIMEOUT)
}

/// How long [`fd_from_child`] waits for its child's answer (what the child does takes
/// milliseconds).
pub const FD_FROM_CHILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`fd_from_child`] waiting at most `timeout` for the answer.
pub fn fd_from_child_within(
    userns: Option<std::os::fd::BorrowedFd<'_>>,
    f: impl FnOnce() -> Option<std::os::fd::OwnedFd>,
    timeout: std::time::Duration,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: glibc's fork; the child runs `f` (allocation is safe after glibc's fork) and
    // then `_exit`s, never returning into the caller's frames.
    let r = unsafe { libc::fork() };
    if r == 0 {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Some(u) = userns {
                super::ns::setns(u, super::ns::NsType::User).ok()?;
            }
            f()
        }));
        let fd = out.ok().flatten();
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        let _ = super::scm::send_rights(theirs.as_fd(), &[1], &fds, None);
        // SAFETY: _exit takes a plain integer and does not return.
        unsafe { libc::_exit(0) };
    }
    let pid = r;
    cvt(libc::c_long::from(pid))?;
    drop(theirs);
    // A failed wait (poll or pidfd_open) is no answer either: the child goes all the same.
    let answered = answered_within(ours.as_fd(), pid, timeout);
    if !matches!(answered, Ok(true)) {
        // SAFETY: kill with integers; `pid` is our unreaped child, so it is no other process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = reap(pid);
        answered?;
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "cryo's child {pid} gave no answer within {} s (it hung); it was killed",
                timeout.as_secs_f64()
            ),
        ));
    }
    let mut buf = [0u8; 1];
    // The child answered, or ended without (its end of the pair closed: an empty answer).
    let got = super::scm::recv_rights_nonblock(ours.as_fd(), &mut buf);
    // Another waiter of cryo's may have reaped it: nothing is lost then.
    let _ = reap(pid);
    let (_, mut fds) = match got {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Vec::new()),
        r => r?,
    };
    Ok(fds.pop())
}

/// Waits until `sock` can be read (an answer, or the peer's end closed) or cryo's child `pid`
/// has ended (its pidfd readable: a copy of the peer's end that another fork of cryo's holds
/// would otherwise keep the pair open), for at most `timeout`; false when neither came.
fn answered_within(
    sock: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use std::os::fd::AsFd;
    // None when another waiter of cryo's reaped it already: the socket alone then.
    let pidfd = super::fd::pidfd_open(pid).ok();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = vec![PollFd::new(&sock, PollFlags::IN)];
        if let Some(p) = &pidfd {
            fds.push(PollFd::from_borrowed_fd(p.as_fd(), PollFlags::IN));
        }
        let t = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&t)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            // A signal cryo handles (SIGINT, SIGTERM: seen at the next fault point).
            Err(rustix::io::Errno::INTR) if !left.is_zero() => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for cryo's child `pid` to end and reaps it.
pub fn reap(pid: i32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD))?;
    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())?;
    Ok(())
}

/// `prlimit64(pid, resource, NULL, &old)`: (soft, hard), RLIM_INFINITY as u64::MAX.
pub fn get_rlimit(pid: i32, resource: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: old is a valid out-pointer.
    let r = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) };
    cvt(libc::c_long::from(r))?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// `prlimit64(pid, resource, &new, NULL)`.
pub fn set_rlimit(pid: i32, resource: u32, cur: u64, max: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: new is a valid in-pointer.
    cvt(libc::c_long::from(unsafe {
        libc::prlimit64(pid, resource as _, &new, std::ptr::null_mut())
    }))
    .map(|_| ())
}

/// `KCMP_FILE`.
pub const KCMP_FILE: i32 = 0;
/// `KCMP_VM`.
pub const KCMP_VM: i32 = 1;
/// `KCMP_FILES`.
pub const KCMP_FILES: i32 = 2;
/// `KCMP_FS`.
pub const KCMP_FS: i32 = 3;
/// `KCMP_SIGHAND`.
pub const KCMP_SIGHAND: i32 = 4;

/// `kcmp(pid1, pid2, type, idx1, idx2)`: 0 when equal, 1/2 for ordering, 3 when not comparable.
pub fn kcmp(pid1: i32, pid2: i32, kind: i32, idx1: u64, idx2: u64) -> io::Result<i32> {
    // SAFETY: kcmp takes only integers.
    cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) })
        .map(|r| i32::try_from(r).unwrap_or(3))
}

/// `KCMP_EPOLL_TFD`.
pub const KCMP_EPOLL_TFD: i32 = 7;

/// `kcmp(pid, pid, KCMP_EPOLL_TFD, fd, {efd, tfd, toff})`: whether fd `fd` of `pid` is the file
/// of the `toff`-th item (in the epoll's order) registered with fd number `tfd` in the epoll at
/// fd `efd` of `pid`. ENOENT when there is no such item.
pub fn kcmp_epoll_tfd(pid: i32, fd: i32, efd: i32, tfd: u32, toff: u32) -> io::Result<bool> {
    /// `struct kcmp_epoll_slot`.
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: efd.cast_unsigned(),
        tfd,
        toff,
    };
    let at = std::ptr::from_ref(&slot) as u64;
    // SAFETY: the slot outlives the call, which only reads it.
    cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, fd, at) }).map(|r| r == 0)
}

/// Scheduling policy, priority and nice value of a thread.
pub fn sched(tid: i32) -> io::Result<(i32, i32, i32)> {
    // SAFETY: integer-only syscalls and a valid out-pointer.
    unsafe {
        let policy = libc::sched_getscheduler(tid);
        cvt(libc::c_long::from(policy))?;
        let mut p: libc::sched_param = std::mem::zeroed();
        cvt(libc::c_long::from(libc::sched_getparam(tid, &mut p)))?;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid.cast_unsigned());
        Ok((policy, p.sched_priority, nice))
    }
}

/// Sets scheduling policy/priority and nice value of a thread.
pub fn set_sched(tid: i32, policy: i32, prio: i32, nice: i32) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: p is a valid in-pointer; integers otherwise.
    unsafe {
        cvt(libc::c_long::from(libc::sched_setscheduler(
            tid, policy, &p,
        )))?;
        cvt(libc::c_long::from(libc::setpriority(
            libc::PRIO_PROCESS,
            tid.cast_unsigned(),
            nice,
        )))?;
    }
    Ok(())
}

/// `get_robust_list(tid)`: (head address, length).
pub fn robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both are valid out-pointers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    })?;
    Ok((head, len as u64))
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    cvt(libc::c_long::from(unsafe { libc::kill(pid, sig) })).map(|_| ())
}

/// This process's own signal dispositions, as the kernel's `struct sigaction` words
/// (handler, flags, restorer, mask) for signals 1..=64 (index 0 = signal 1). A child created
/// by fork inherits exactly these.
pub fn own_sigactions() -> Vec<[u64; 4]> {
    (1..=64)
        .map(|sig| {
            let mut k = [0u64; 4];
            // SAFETY: rt_sigaction with a null new action only writes `k` (32 bytes, the
            // kernel's x86_64 struct sigaction with an 8-byte mask).
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    std::ptr::null::<u8>(),
                    k.as_mut_ptr(),
                    8usize,
                )
            };
            k
        })
        .collect()
}

/// Blocks signal `sig` in the calling thread (rustix has no sigprocmask).
pub fn block_signal(sig: i32) {
    // SAFETY: sigset_t is plain old data filled by sigemptyset/sigaddset; the old mask is not
    // asked for.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_termination(sig: libc::c_int) {
    INTERRUPTED.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT, SIGTERM, SIGHUP and SIGQUIT set a flag instead of killing cryo, so a dump or
/// restore interrupted by the user stops at the next safe point and cleans up (the target is
/// released unharmed, a half-restored process is killed). SIGKILL cannot be caught.
pub fn catch_termination_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_termination as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The termination signal received since [`catch_termination_signals`], if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Whether cryo's (this test's) child `pid` is gone: reaped, not a zombie left behind.
    fn reaped(pid: i32) -> bool {
        // SAFETY: waitpid with a null status pointer.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    }

    /// A child that hangs (here: sleeps for a minute instead of answering) is killed once the
    /// timeout passes, reaped, and the call fails naming it, instead of waiting for it.
    #[test]
    fn a_hung_child_is_killed_after_the_timeout() {
        let t = Instant::now();
        let r = fd_from_child_within(
            None,
            || {
                // SAFETY: sleep takes a plain integer.
                unsafe { libc::sleep(60) };
                None
            },
            Duration::from_millis(500),
        );
        let took = t.elapsed();
        let e = r.expect_err("no answer came");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("gave no answer within 0.5 s"), "{e}");
        let pid: i32 = e
            .to_string()
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .expect("the error names the child");
        assert!(reaped(pid), "the hung child {pid} is killed and reaped");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    /// A child that dies without answering while a process it forked still holds its end of
    /// the pair (so no end of stream comes) is seen as gone at once: no answer, no wait.
    #[test]
    fn a_child_that_dies_without_answering_is_no_answer_at_once() {
        let t = Instant::now();
        let r = fd_from_child_within(
            None,
            || {
                // SAFETY: fork; the grandchild sleeps (holding the pair's end) and exits.
                unsafe {
                    if libc::fork() == 0 {
                        libc::sleep(3);
                        libc::_exit(0);
                    }
                    libc::raise(libc::SIGKILL);
                }
                None
            },
            Duration::from_secs(20),
        );
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// The fd a child sends comes back (the same file).
    #[test]
    fn the_childs_fd_comes_back() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let want = rustix::fs::fstat(&f).unwrap().st_ino;
        let got = fd_from_child_within(
            None,
            || std::fs::File::open("/proc/self/exe").ok().map(Into::into),
            Duration::from_secs(20),
        )
        .unwrap()
        .expect("an fd");
        assert_eq!(rustix::fs::fstat(&got).unwrap().st_ino, want);
    }
}
