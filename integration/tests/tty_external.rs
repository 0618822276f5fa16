//! A terminal outside the dumped tree, as LXC and LXD treat a container's console: dumped
//! with `--external tty[RDEV:DEV]` (st_rdev and st_dev of the terminal, in hex, CRIU's key),
//! restored with `--inherit-fd fd[N]:tty[RDEV:DEV]`, where N is an fd of cryo's on another
//! terminal: every fd the tree had on the old terminal is the new one.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use integration::*;

/// A new pty pair (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: m and s are valid out-pointers; no name, termios or window size.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds are new and ours.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// CRIU's key of a terminal fd: `tty[RDEV:DEV]` in hex.
fn key(fd: &OwnedFd) -> String {
    let m = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    format!("tty[{:x}:{:x}]", m.rdev(), m.dev())
}

#[test]
fn external_terminal_is_replaced_by_the_inherited_one() {
    let dir = scratch("tty-ext");
    let out = dir.join("out");
    let (m1, s1) = pty();
    let k = key(&s1);
    // A shell reading lines from the terminal; it does not make it its controlling one.
    let script = format!(
        "while read l; do echo \"got $l\" >> {}; done",
        out.display()
    );
    let mut c = Command::new("/bin/sh");
    c.args(["-c", &script])
        .stdin(Stdio::from(s1.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and close_range only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let pid = i32::try_from(c.spawn().unwrap().id()).unwrap();
    let _g = KillOnDrop(pid);
    let mut w1 = std::fs::File::from(m1);
    w1.write_all(b"one\n").unwrap();
    wait_for("the first line", 10, || lines(&out).len() == 1);
    let img = dir.join("img");
    dump(pid, &img, &["--external", &k]);
    wait_gone(pid);
    drop(s1);
    // Another terminal for the restored shell, at cryo's fd 5.
    let (m2, s2) = pty();
    let new_name = std::fs::read_link(format!("/proc/self/fd/{}", s2.as_raw_fd())).unwrap();
    let raw = s2.as_raw_fd();
    let mut r = Command::new(cryo_bin());
    r.args([
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
    ])
    .arg("--inherit-fd")
    .arg(format!("fd[5]:{k}"))
    .stdin(Stdio::null());
    // SAFETY: dup2 only, between fork and exec (fd 5 without CLOEXEC).
    unsafe {
        r.pre_exec(move || {
            if libc::dup2(raw, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = r.output().unwrap();
    assert!(o.status.success(), "{}", log(&img, "restore.log"));
    drop(s2);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        new_name,
        "stdin is the inherited terminal"
    );
    let mut w2 = std::fs::File::from(m2);
    w2.write_all(b"two\n").unwrap();
    wait_for("the line typed on the new terminal", 10, || {
        lines(&out).len() == 2
    });
    assert_eq!(lines(&out), ["got one", "got two"]);
}
