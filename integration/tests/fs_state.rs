//! Where a process stands in the file system (issue #12): its root after a chroot, and a
//! working directory left outside that root (a chroot without chdir), with files open on
//! both sides of it.

use integration::*;

/// A python that chroots into `jail` without changing directory, holding a file outside
/// the jail and one inside. After restore /proc shows the same root and working directory,
/// paths resolve as before (absolute ones in the jail, relative ones from the working
/// directory outside it), and both files are read through their fds.
#[test]
fn chrooted_process_keeps_its_root_and_working_directory() {
    let dir = scratch("chroot");
    let jail = dir.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let out = dir.join("out");
    let script = r#"
import os, signal, sys
d = sys.argv[1]
os.chdir(d)
outside = open("outside", "w+"); outside.write("outside data"); outside.flush()
os.chroot(d + "/jail")
inside = open("/inside", "w+"); inside.write("inside data"); inside.flush()
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
outside.seek(0); inside.seek(0)
print(outside.read(), inside.read(), open("/inside").read(), open("outside").read(),
      os.path.exists("/jail"), flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let link = |what: &str| std::fs::read_link(format!("/proc/{pid}/{what}")).unwrap();
    assert_eq!(link("root"), jail);
    assert_eq!(link("cwd"), dir);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    assert_eq!(link("root"), jail, "root after restore");
    assert_eq!(link("cwd"), dir, "working directory after restore");
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        "outside data inside data inside data outside data False"
    );
}

/// A pipe whose read end is owned by the process (`F_SETOWN`) with `O_ASYNC` and
/// `F_SETSIG SIGUSR2`: after restore the owner and signal are the same, and bytes written
/// into the pipe from outside raise SIGUSR2 (POLL_IN) in the process.
#[test]
fn file_owner_and_signal_survive() {
    let dir = scratch("fown");
    let out = dir.join("out");
    let script = r#"
import fcntl, os, signal
F_SETSIG, F_GETSIG = 10, 11
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(r, F_SETSIG, signal.SIGUSR2)
fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
print("ready", r, w, flush=True)
info = signal.sigwaitinfo([signal.SIGUSR2])
print(fcntl.fcntl(r, fcntl.F_GETOWN) == os.getpid(), fcntl.fcntl(r, F_GETSIG),
      info.si_signo, info.si_code, os.read(r, 100), flush=True)
"#;
    let pid = spawn(&["python3", "-c", script], &out);
    let _g = KillOnDrop(pid);
    let w = wait_ready(&out)[1];
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/{w}"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"wake"))
        .unwrap();
    // The whole report line (a partial one was read once in CI: "True ").
    wait_for("the report", 10, || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.matches('\n').count() >= 2)
    });
    assert_eq!(
        lines(&out)[1],
        format!("True {} {} 1 b'wake'", libc::SIGUSR2, libc::SIGUSR2)
    );
}

/// A fanotify group with an inode mark on a file and a mount mark with an ignored mask
/// (`FAN_MARK_IGNORED_SURV_MODIFY`): after restore fdinfo shows the same group flags and
/// marks, and opening the file is reported with an fd on it.
#[test]
fn fanotify_group_keeps_its_marks() {
    let dir = scratch("fanotify");
    let out = dir.join("out");
    let script = r#"
import ctypes, os, select, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
FAN_NONBLOCK, FAN_OPEN, FAN_CLOSE_WRITE, FAN_MODIFY = 0x2, 0x20, 0x8, 0x2
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_IGNORED_MASK, FAN_MARK_IGNORED_SURV_MODIFY = 0x1, 0x10, 0x20, 0x40
fa = libc.syscall(300, FAN_NONBLOCK, os.O_RDONLY)
open(d + "/marked", "w").close()
assert libc.syscall(301, fa, FAN_MARK_ADD, FAN_OPEN | FAN_CLOSE_WRITE, -100, (d + "/marked").encode()) == 0
assert libc.syscall(301, fa, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                    FAN_MODIFY, -100, d.encode()) == 0
def marks():
    return sorted(l.split(" f_handle")[0] for l in open("/proc/self/fdinfo/%d" % fa) if l.startswith("fanotify"))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", fa, flush=True)
print(marks(), flush=True)
signal.sigwait([signal.SIGUSR1])
while select.select([fa], [], [], 0)[0]:
    try:
        os.read(fa, 65536)
    except BlockingIOError:
        break
os.close(os.open(d + "/marked", os.O_RDONLY))
select.select([fa], [], [], 5)
buf, seen = os.read(fa, 65536), False
while buf:
    n, _, _, _, mask, fd, pid = struct.unpack("IBBHQii", buf[:24])
    if fd >= 0:
        seen |= pid == os.getpid() and os.readlink("/proc/self/fd/%d" % fd) == d + "/marked"
        os.close(fd)
    buf = buf[n:]
print(marks(), flush=True)
print(seen, flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    wait_for("the marks", 10, || lines(&out).len() >= 2);
    let before = lines(&out)[1].clone();
    assert!(before.contains("mflags:40"), "{before}");
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 4);
    assert_eq!(lines(&out)[2], before, "fanotify marks after restore");
    assert_eq!(lines(&out)[3], "True", "no event for the marked file");
}
