//! Pseudo-terminals inside the dumped tree (issue #4, `src/kinds/tty.rs`): a pty pair, the
//! controlling terminal and foreground group of a session, /dev/tty, and the bytes queued in
//! both directions, checked through what an interactive shell on the pty sees.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use integration::*;

/// The tests make and free ptys by index: one at a time, so one does not take the other's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// (tty_nr, tpgid) of a process, from /proc/PID/stat.
fn terminal_of(pid: i32) -> (u64, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
    (f[4].parse().unwrap(), f[5].parse().unwrap())
}

/// Types `s` on the terminal (through the relay's FIFO).
fn type_in(fifo: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// What the terminal printed after byte `off`.
fn printed(out: &Path, off: usize) -> String {
    let b = std::fs::read(out).unwrap_or_default();
    String::from_utf8_lossy(&b[off.min(b.len())..]).into_owned()
}

/// Waits until the terminal printed `needle` after byte `off`; returns all it printed since.
fn wait_printed(out: &Path, off: usize, needle: &str) -> String {
    wait_for(&format!("'{needle}' on the terminal"), 15, || {
        printed(out, off).contains(needle)
    });
    printed(out, off)
}

/// Window size and termios as `stty` run by the shell reports them.
fn check_stty(text: &str) {
    assert!(text.contains("37 91"), "window size lost:\n{text}");
    assert!(text.contains("intr = ^G"), "VINTR lost:\n{text}");
    let words: Vec<&str> = text.split([' ', ';', '\n', '\r']).collect();
    assert!(words.contains(&"-echo"), "-echo lost:\n{text}");
}

/// `scripts/pty_shell.py`: python holds a pty master and relays a FIFO to it and its output
/// to a file; its child `sh -i` has the slave as stdio and controlling terminal (dash also
/// opens /dev/tty for job control). Before the dump the shell runs `sleep` in the
/// foreground, a typed line and half a line wait in the slave's input, and the shell's
/// output waits unread in the master (the relay is paused). After restore: same pty, same
/// controlling terminal and foreground group, the queued output arrives, the typed line and
/// the half line (completed after restore) run, and new commands run with the same window
/// size and termios.
#[test]
fn interactive_shell_on_a_pty_keeps_its_terminal() {
    let _serial = serial();
    let dir = scratch("pty");
    let (fifo, out, log) = (dir.join("in"), dir.join("out"), dir.join("log"));
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let script = root().join("integration/scripts/pty_shell.py");
    let root_pid = spawn(
        &[
            "/usr/bin/python3",
            script.to_str().unwrap(),
            fifo.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &log,
    );
    let _g = KillOnDrop(root_pid);
    let sh = wait_ready(&log)[0];
    let _g2 = KillOnDrop(sh);

    type_in(&fifo, "stty size; stty -a; echo mark-$((1+1))\n");
    check_stty(&wait_printed(&out, 0, "mark-2"));
    let (tty_nr, idle_fg) = terminal_of(sh);
    assert_ne!(tty_nr, 0, "the shell has no controlling terminal");
    assert_eq!(
        idle_fg, sh,
        "an idle interactive shell is its terminal's foreground"
    );
    let stdin = std::fs::read_link(format!("/proc/{sh}/fd/0")).unwrap();

    // Queue bytes both ways: pause the relay, let the shell print and start a foreground
    // job, then type a line and half of another while the job runs.
    signal(root_pid, libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(400));
    let off = usize::try_from(std::fs::metadata(&out).unwrap().len()).unwrap();
    type_in(&fifo, "echo queued-$((40+2)); sleep 6\n");
    wait_for("the foreground job", 10, || terminal_of(sh).1 != sh);
    std::thread::sleep(Duration::from_millis(300));
    type_in(&fifo, "echo typed-$((2+3))\necho par");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !printed(&out, off).contains("queued-42"),
        "the relay was not paused"
    );
    let (_, job_fg) = terminal_of(sh);

    let img = dir.join("img");
    dump_and_restore(root_pid, &img);
    let data = cryo(&["show", img.join("tty-data.img").to_str().unwrap()]);
    assert!(data.status.success(), "no queued tty data was saved");

    assert_eq!(
        terminal_of(sh),
        (tty_nr, job_fg),
        "controlling terminal or foreground group changed"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{sh}/fd/0")).unwrap(),
        stdin
    );
    // The output that waited in the master.
    signal(root_pid, libc::SIGUSR1);
    wait_printed(&out, off, "queued-42");
    // The typed line and the half line run once the job ends.
    type_in(&fifo, "tial-$((3*3))\n");
    let text = wait_printed(&out, off, "partial-9");
    let (t, p) = (text.find("typed-5"), text.find("partial-9"));
    assert!(
        t.is_some() && t < p,
        "typed input lost or reordered:\n{text}"
    );
    wait_for("the job to end", 10, || terminal_of(sh).1 == sh);

    let off = usize::try_from(std::fs::metadata(&out).unwrap().len()).unwrap();
    type_in(&fifo, "stty size; stty -a; echo hello-$((6*7))\n");
    check_stty(&wait_printed(&out, off, "hello-42"));
    assert_eq!(terminal_of(sh), (tty_nr, sh));
}

/// A slave whose master is outside the tree (here the test holds it): restore refuses while
/// that pty index is in use, naming it; once it is free the slave comes back with the same
/// index, hung up (its temporary master is gone), and the process runs on.
#[test]
fn slave_without_its_master_comes_back_with_its_index() {
    let _serial = serial();
    let dir = scratch("orphan-pts");
    let m = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .unwrap();
    let mut n: libc::c_int = 0;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes one.
    unsafe {
        use std::os::fd::AsRawFd;
        assert_eq!(libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock), 0);
        assert_eq!(libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n), 0);
    }
    let slave = format!("/dev/pts/{n}");
    let pid = spawn(
        &[
            "/bin/sh",
            "-c",
            &format!("exec 3<>{slave}; exec sleep 1000"),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    let fd3 = format!("/proc/{pid}/fd/3");
    wait_for("the slave fd", 10, || {
        std::fs::read_link(&fd3).is_ok_and(|l| l.to_string_lossy() == slave)
    });
    assert_ne!(terminal_of(pid).0, 0, "the slave is the session's terminal");
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&format!("pty {n} is in use")),
        "{err}"
    );
    assert!(!alive(pid));
    drop(m);
    wait_for("the pty to be freed", 10, || !Path::new(&slave).exists());
    restore(&img);
    // Hung up: its temporary master is closed, so devpts no longer lists the slave.
    let link = std::fs::read_link(&fd3).unwrap();
    assert_eq!(link.to_string_lossy(), format!("{slave} (deleted)"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "the process died with its terminal");
}
