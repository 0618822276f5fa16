//! pidfds and files under /proc/PID of the tree's own processes (issue #12).

use integration::*;

/// integration/scripts/pidfds.py holds pidfds of its child, of itself and two of a process
/// it reaped, plus its child's /proc/PID/stat. After restore: the stat file is the child's,
/// a signal through the child's pidfd kills it, the self pidfd works, the dead process's two
/// pidfds still share one inode (not the child's), still say it is gone, and one keeps
/// PIDFD_NONBLOCK.
#[test]
fn pidfds_refer_to_the_same_processes_after_restore() {
    let dir = scratch("pidfds");
    let out = dir.join("out");
    let script = root().join("integration/scripts/pidfds.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let child = wait_ready(&out)[0];
    let _g2 = KillOnDrop(child);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "True gone True True True True");
}

/// A pidfd of a process outside the dumped tree (here the test itself) is refused before
/// the process is touched, naming the fd and the process.
#[test]
fn pidfd_of_a_process_outside_the_tree_is_refused() {
    let dir = scratch("pidfd-outside");
    let out = dir.join("out");
    let script = root().join("integration/scripts/pidfds.py");
    let pid = spawn(&["python3", script.to_str().unwrap(), "outside"], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let e = dump_fails(pid, &dir.join("img"), &[]);
    let me = std::process::id();
    assert!(
        e.contains("anon_inode:[pidfd]")
            && e.contains(&format!("process {me}, which is not in the dumped tree")),
        "{e}"
    );
    assert!(alive(pid), "a refused dump left the process running");
}

/// A process holding the /proc directory (an fd, and its working directory), and a file in
/// it, of a child it killed and reaped (zdtm's unhashed_proc, remap_dead_pid). The dump saves the gone PID (CRIU's PROCFS remap);
/// the restore makes a stand-in with that PID while the files are opened, then ends it. After
/// the restore both fds are valid, the directory is that PID's (gone again), and the PID is
/// free.
#[test]
fn proc_files_of_a_reaped_child_come_back() {
    let dir = scratch("dead-proc");
    let out = dir.join("out");
    let script = root().join("integration/scripts/dead_proc.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let child = wait_ready(&out)[0];
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        format!("True True /proc/{child} (deleted) True True"),
        "{}",
        log(&img, "restore.log")
    );
}
