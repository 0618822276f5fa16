//! Terminals other than a live pty pair (issue #12): a virtual terminal that is the session's
//! controlling terminal, /dev/console, and a pty slave whose master was closed.

use integration::*;

/// A session leader that opened a virtual terminal node (4:5) without O_NOCTTY, so it is
/// its controlling terminal, and a /dev/console node (5:1): both are reopened by path, the
/// virtual terminal is the controlling terminal again, and a pty slave whose master was
/// closed (its /dev/pts name is gone) comes back hung up under the same name.
#[test]
fn virtual_terminal_console_and_orphaned_pty_slave_come_back() {
    let dir = scratch("terminals");
    let out = dir.join("out");
    let script = r#"
import os, signal, stat, sys
d = sys.argv[1]
os.mknod(d + "/vt", stat.S_IFCHR | 0o600, os.makedev(4, 5))
vt = os.open(d + "/vt", os.O_RDONLY)
os.mknod(d + "/console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
con = os.open(d + "/console", os.O_RDONLY | os.O_NOCTTY)
m, s = os.openpty()
name = os.readlink("/proc/self/fd/%d" % s)
os.close(m)
def report():
    tty_nr = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
    hung = os.read(s, 1) == b""  # a hung-up terminal reads end-of-file
    return [tty_nr == os.makedev(4, 5), os.fstat(vt).st_rdev == os.makedev(4, 5),
            os.fstat(con).st_rdev == os.makedev(5, 1), os.readlink("/proc/self/fd/%d" % s) == name + " (deleted)",
            hung]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", *report(), flush=True)
signal.sigwait([signal.SIGUSR1])
print(*report(), flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the program to be ready", 20, || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready"))
    });
    assert_eq!(lines(&out)[0], "ready True True True True True");
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "True True True True True");
}
