//! File leases (`F_SETLEASE`, issue #12), saved with `--file-locks` as CRIU does.

use integration::*;

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
    let img = dir.join("img");
    dump(pid, &img, &["--file-locks"]);
    wait_gone(pid);
    restore(&img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        format!("{} {} {}", libc::F_RDLCK, libc::F_UNLCK, libc::F_WRLCK)
    );
}
