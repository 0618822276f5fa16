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
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        format!("True {} {} 1 b'wake'", libc::SIGUSR2, libc::SIGUSR2)
    );
}
