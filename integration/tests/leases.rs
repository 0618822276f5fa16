//! File leases (`F_SETLEASE`, issue #12), saved with `--file-locks` as CRIU does.

use integration::*;

/// Dumps the program `pid` (with `--file-locks`) into DIR/img, restores it once it is gone
/// and returns the report it writes to `out` on SIGUSR1 afterwards.
fn report_after_restore(pid: i32, dir: &std::path::Path, out: &std::path::Path) -> String {
    let img = dir.join("img");
    dump(pid, &img, &["--file-locks"]);
    wait_gone(pid);
    restore(&img);
    report_on_signal(pid, out)
}

/// The start of the lease-breaking programs: the lease fcntls and the SIGIOs counted in
/// `got`.
const BREAKING_PROLOGUE: &str = r#"
import fcntl, os, signal, sys, time
F_SETLEASE, F_GETLEASE, F_SETSIG, F_GETOWN = 1024, 1025, 10, 9
got = []
signal.signal(signal.SIGIO, lambda s, f: got.append(s))
"#;

/// The end of the lease-breaking programs: "ready REPORT", then on SIGUSR1 the report again
/// and the number of locks left once the leases are given up.
const BREAKING_EPILOGUE: &str = r#"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
os.write(1, ("ready " + report() + "\n").encode())
signal.sigwait([signal.SIGUSR1])
time.sleep(0.2)
line = report()
for fd in fds:
    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
left = sum(1 for fd in fds for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("lock:"))
os.write(1, (line + f" {left}\n").encode())
"#;

/// A read lease on one of two descriptions of a file, none on the other, and a write lease
/// on a second file: each description has the same lease after restore (`F_GETLEASE`).
/// Without `--file-locks` the dump is refused, naming the option.
#[test]
fn leases_come_back_on_their_descriptions() {
    let dir = scratch("leases");
    let out = dir.join("out");
    let script = r#"
import fcntl, os, signal, sys
d = sys.argv[1]
F_SETLEASE, F_GETLEASE = 1024, 1025
r1 = os.open(d + "/r", os.O_RDONLY | os.O_CREAT, 0o644)
r2 = os.open(d + "/r", os.O_RDONLY)
w = os.open(d + "/w", os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.fcntl(r1, F_SETLEASE, fcntl.F_RDLCK)
fcntl.fcntl(w, F_SETLEASE, fcntl.F_WRLCK)
def report():
    return [fcntl.fcntl(fd, F_GETLEASE) for fd in (r1, r2, w)]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", *report(), flush=True)
signal.sigwait([signal.SIGUSR1])
print(*report(), flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let before = wait_ready(&out);
    assert_eq!(before, [libc::F_RDLCK, libc::F_UNLCK, libc::F_WRLCK]);
    let e = dump_fails(pid, &dir.join("refused"), &[]);
    assert!(e.contains("LEASE") && e.contains("--file-locks"), "{e}");
    assert_eq!(
        report_after_restore(pid, &dir, &out),
        format!("{} {} {}", libc::F_RDLCK, libc::F_UNLCK, libc::F_WRLCK)
    );
}

/// A lease taken in a user namespace of the tree's own, whose root is not cryo's (ids 0..
/// inside are 100000.. outside): the restored puppet, in a new user namespace and still with
/// cryo's ids, may not take it itself (`F_SETLEASE` wants the file's owner or CAP_LEASE in
/// the initial user namespace); the lease comes back on its description all the same.
#[test]
fn lease_in_a_user_namespace_comes_back() {
    let dir = scratch("leases-userns");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::os::unix::fs::chown(&files, Some(100_000), Some(100_000)).unwrap();
    let out = dir.join("out");
    // The launcher makes a child a user namespace (maps written from outside), which makes
    // a PID namespace whose init, the tree, takes a read lease on a file it owns.
    let script = r#"
import ctypes, fcntl, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
child_r, parent_w = os.pipe()
parent_r, child_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        sys.exit(f"unshare(CLONE_NEWUSER): {ctypes.get_errno()}")
    os.write(child_w, b"u")
    os.read(child_r, 1)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if libc.unshare(0x20000000) != 0:
        sys.exit(f"unshare(CLONE_NEWPID): {ctypes.get_errno()}")
    if os.fork() == 0:
        os.setsid()
        F_SETLEASE, F_GETLEASE = 1024, 1025
        fd = os.open(d + "/f", os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
        n = 0
        while True:
            print(f"{n} pid={os.getpid()} uid={os.getuid()} lease={fcntl.fcntl(fd, F_GETLEASE)}", flush=True)
            n += 1
            time.sleep(0.1)
    os.wait()
    sys.exit(0)
os.read(parent_r, 1)
for f, m in (("uid_map", "0 100000 65536"), ("gid_map", "0 100000 65536")):
    with open(f"/proc/{pid}/{f}", "w") as w:
        w.write(m + "\n")
os.write(parent_w, b"m")
os.wait()
"#;
    let launcher = spawn(&["python3", "-c", script, files.to_str().unwrap()], &out);
    let _g = KillOnDrop(launcher);
    let last = || {
        lines(&out)
            .into_iter()
            .rev()
            .find(|l| l.contains(" lease="))
    };
    wait_for("the lease", 20, || last().is_some());
    let root = children(children(launcher)[0])[0];
    let r = KillOnDrop(root);
    let state = |l: String| l.split_once(' ').map(|(_, s)| s.to_string()).unwrap();
    let before = state(last().unwrap());
    assert_eq!(before, format!("pid=1 uid=0 lease={}", libc::F_RDLCK));
    let img = dir.join("img");
    dump(root, &img, &["--file-locks"]);
    wait_gone(root);
    // The PID is free now (the restored init gets another one): no kill of a stranger later.
    std::mem::forget(r);
    let n = lines(&out).len();
    // The root is init of its PID namespace: its PID outside is not kept (as with CRIU),
    // so the pidfile says which process to kill at the end.
    let pidfile = dir.join("restored.pid");
    restore_with(&img, &["--pidfile", pidfile.to_str().unwrap()]);
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(restored);
    wait_for("the restored tree", 20, || lines(&out).len() >= n + 3);
    assert_eq!(state(last().unwrap()), before);
}

/// Leases being broken (zdtm file_lease02's shapes, our program): a read lease broken by an
/// open for writing (breaking to F_UNLCK), a write lease broken by an open for reading (to
/// F_RDLCK), one broken by an open for writing (to F_UNLCK), and a write lease on a
/// read-only description broken by a reader (to F_RDLCK); the holder got its SIGIO
/// for each before the dump and has not given the leases up. After the restore each lease
/// is still being broken towards the same type (`F_GETLEASE`, and `BREAKING` in fdinfo),
/// no second SIGIO arrives, each file's owner is the program again (`F_GETOWN`), and the
/// holder can then finish the breaks by giving the leases up.
#[test]
fn leases_being_broken_stay_broken_without_a_second_signal() {
    let dir = scratch("leases-breaking");
    let out = dir.join("out");
    let script = BREAKING_PROLOGUE.to_string()
        + r#"
d = sys.argv[1]
fds = []
for name, mode, lease, breaker in [("r", os.O_RDONLY, fcntl.F_RDLCK, os.O_WRONLY),
                                   ("w", os.O_WRONLY, fcntl.F_WRLCK, os.O_RDONLY),
                                   ("x", os.O_WRONLY, fcntl.F_WRLCK, os.O_WRONLY),
                                   ("y", os.O_RDONLY, fcntl.F_WRLCK, os.O_RDONLY)]:
    fd = os.open(d + "/" + name, mode | os.O_CREAT, 0o644)
    fcntl.fcntl(fd, F_SETLEASE, lease)
    fcntl.fcntl(fd, F_SETSIG, signal.SIGIO)
    try:
        os.close(os.open(d + "/" + name, breaker | os.O_NONBLOCK))
        sys.exit("the open did not conflict with the lease")
    except BlockingIOError:
        pass
    fds.append(fd)
while len(got) < 4:
    time.sleep(0.01)
def report():
    modes = []
    for fd in fds:
        lock = [l for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("lock:")]
        modes.append(lock[0].split()[3] if lock else "none")
    leases = [fcntl.fcntl(fd, F_GETLEASE) for fd in fds]
    own = all(fcntl.fcntl(fd, F_GETOWN) == os.getpid() for fd in fds)
    return " ".join(map(str, leases + modes + [len(got), own]))
"# + BREAKING_EPILOGUE;
    let pid = spawn(&["python3", "-c", &script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the program", 10, || !lines(&out).is_empty());
    let want = "2 0 2 0 BREAKING BREAKING BREAKING BREAKING 4 True";
    assert_eq!(lines(&out)[0], format!("ready {want}"));
    assert_eq!(report_after_restore(pid, &dir, &out), format!("{want} 0"));
}

/// A read lease on a file opened through a read-only bind mount, broken (towards F_UNLCK)
/// by an open for writing through the writable directory the bind shows: after the restore
/// the lease is still being broken (`F_GETLEASE` F_UNLCK, `BREAKING` in fdinfo), without a
/// second SIGIO, on a description that is still read-only on the read-only mount; the
/// holder can then give it up. (An open for writing on the read-only mount itself fails
/// with EROFS: the break is started again another way.)
#[test]
fn lease_being_broken_on_a_read_only_mount_stays_broken() {
    let dir = scratch("leases-ro-mount");
    let (w, r) = (dir.join("w"), dir.join("r"));
    std::fs::create_dir_all(&w).unwrap();
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(w.join("f"), "data\n").unwrap();
    let (w_s, r_s) = (w.to_str().unwrap(), r.to_str().unwrap());
    // Takes the read-only bind out of cryo's namespace.
    let _u = Unmount::at(&r);
    sh(&format!(
        "mount --bind {w_s} {r_s} && mount -o remount,bind,ro {r_s}"
    ));
    let out = dir.join("out");
    let script = BREAKING_PROLOGUE.to_string()
        + r#"
r, w = sys.argv[1], sys.argv[2]
fd = os.open(r + "/f", os.O_RDONLY)
fds = [fd]
fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
fcntl.fcntl(fd, F_SETSIG, signal.SIGIO)
try:
    os.open(w + "/f", os.O_WRONLY | os.O_NONBLOCK)
    sys.exit("the open did not conflict with the lease")
except BlockingIOError:
    pass
while not got:
    time.sleep(0.01)
def report():
    lock = [l for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("lock:")]
    mode = lock[0].split()[3] if lock else "none"
    ro = open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0][-1] == "0"
    return f"{fcntl.fcntl(fd, F_GETLEASE)} {mode} {len(got)} {ro} {os.readlink(f'/proc/self/fd/{fd}')}"
"# + BREAKING_EPILOGUE;
    let pid = spawn(&["python3", "-c", &script, r_s, w_s], &out);
    let _g = KillOnDrop(pid);
    wait_for("the program", 10, || !lines(&out).is_empty());
    let want = format!("2 BREAKING 1 True {r_s}/f");
    assert_eq!(lines(&out)[0], format!("ready {want}"));
    assert_eq!(report_after_restore(pid, &dir, &out), format!("{want} 0"));
}
