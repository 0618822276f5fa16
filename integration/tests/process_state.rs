//! Process, memory and signal state in less common shapes (issue #12): a stopped child with
//! a stop signal queued on top, zombies and their process groups, locked, sequential,
//! droppable and huge-page mappings, a private mapping of shared memory, a shared file
//! mapping made writable later, membarrier registrations, a pending signal 32 (glibc's
//! timer signal) and a SIGEV_THREAD timer, seccomp filters shared by threads (TSYNC after the
//! restore), an fd table shared with a grandchild, a thread inside an rseq critical section;
//! and what must be refused without harm: a pending SIGTRAP, a time namespace made for
//! children not forked yet. Each test runs one case of integration/progs/procstate.c, but
//! the login uid's (a shell that sets its own, then execs sleep).

use integration::*;

/// Starts `procstate CASE`, waits until it is set up; returns (pid, its output file, dir).
fn start(case: &str) -> (i32, std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch(&format!("procstate-{case}"));
    let out = dir.join("out");
    let pid = spawn(
        &[
            prog("procstate").to_str().unwrap(),
            case,
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    wait_ready(&out);
    (pid, out, dir)
}

/// Lets the program check itself (SIGUSR1); returns its "ok" lines, failing on any "BAD".
fn finish(pid: i32, out: &std::path::Path) -> Vec<String> {
    signal(pid, libc::SIGUSR1);
    wait_for("the checks", 20, || lines(out).iter().any(|l| l == "done"));
    let got = lines(out);
    assert!(
        got.iter().all(|l| !l.starts_with("BAD")),
        "{}",
        got.join("\n")
    );
    got.into_iter().filter(|l| l.starts_with("ok")).collect()
}

/// One dump/restore cycle of a case; returns its "ok" lines.
fn cycle(case: &str) -> (Vec<String>, std::path::PathBuf) {
    let (pid, out, dir) = start(case);
    let _g = KillOnDrop(pid);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let ok = finish(pid, &out);
    for p in tree_pids(&img) {
        kill(p);
    }
    (ok, img)
}

/// A child stopped by SIGSTOP with another SIGSTOP queued while it was stopped (the dump
/// must not stop in the middle of its in-task syscalls), and one stopped by SIGTSTP: after
/// the restore their parent sees them stopped, by the same signals, and once continued
/// they go on.
#[test]
fn stopped_children_keep_their_stop_signal() {
    assert_eq!(cycle("stopped").0.len(), 4);
}

/// Unreaped children: one killed by SIGKILL, one leading its own process group, one in a
/// group whose leader was reaped before the dump. The parent reaps them after the restore
/// with the same statuses, and they are in the same groups.
#[test]
fn zombies_keep_status_and_process_group() {
    assert_eq!(cycle("zombies").0.len(), 5);
}

/// mlock()ed and MADV_SEQUENTIAL mappings keep their flags, MAP_DROPPABLE memory comes back
/// empty (as CRIU), a read-only shared mapping of a file opened read-write can be made
/// writable, a private mapping of shared anonymous memory still sees the pages it did not
/// write, huge pages (when the system has free ones) keep their data and page size, and a
/// membarrier registration is still there.
#[test]
fn memory_flags_mappings_and_registrations_survive() {
    let (ok, _) = cycle("memory");
    assert!(ok.len() >= 4, "{ok:?}");
}

/// A thread with signal 32 blocked and pending (what a SIGEV_THREAD timer's helper thread
/// can have at any moment) gets it after the restore, and the timer keeps ticking.
#[test]
fn pending_signal_32_and_sigev_thread_timer() {
    assert_eq!(cycle("signal32").0.len(), 2);
}

/// Threads sharing a seccomp filter, and one without any: after the restore the program
/// adds a filter to all of them at once with SECCOMP_FILTER_FLAG_TSYNC, which the kernel
/// allows only if their filters are shared, not copies.
#[test]
fn seccomp_filters_stay_shared_between_threads() {
    assert_eq!(cycle("seccomp").0.len(), 3);
}

/// A process of uid 1000 whose leader has no seccomp filter and whose thread has one of its
/// own refusing prctl: the restore's syscalls in that thread (its credentials) run past the
/// filter, which is there again afterwards (zdtm's seccomp_filter_threads in a user
/// namespace).
#[test]
fn seccomp_filter_of_a_thread_only() {
    assert_eq!(cycle("thrfilter").0.len(), 2);
}

/// A process, its child and its grandchild share one fd table (CLONE_FILES): an fd the root
/// opens after the restore is in the grandchild's table too.
#[test]
fn fd_table_shared_with_a_grandchild() {
    assert_eq!(cycle("files").0.len(), 1);
}

/// A thread running long rseq critical sections is dumped inside one: it is saved at the
/// section's abort handler, so it never completes a section whose descriptor the kernel
/// dropped.
#[test]
fn thread_inside_an_rseq_critical_section() {
    // The thread is almost always inside a section; on a loaded machine it may be caught
    // between two. Every cycle must restore correctly; at least one of five must have caught
    // it inside (so the abort-handler path is what was tested).
    let mut inside = 0;
    for _ in 0..5 {
        let (ok, img) = cycle("rseq");
        if ok.is_empty() {
            integration::skip("glibc registers no rseq area here");
            return;
        }
        assert_eq!(ok.len(), 2);
        if log(&img, "dump.log").contains("inside an rseq critical section") {
            inside += 1;
            break;
        }
    }
    assert!(
        inside > 0,
        "in five dumps the thread was never inside its critical section"
    );
}

/// A child in seccomp strict mode (zdtm's static/seccomp_strict): dumped with seccomp
/// suspended for cryo's syscalls, it is in strict mode again after the restore, and still
/// reads, writes and exits normally (not killed).
#[test]
fn seccomp_strict_mode_comes_back() {
    assert_eq!(cycle("strict").0.len(), 3);
}

/// An epoll whose watches were registered under fd numbers since closed, or reused for
/// another watched file (zdtm's static/epoll01): each watch is saved at an fd still open on
/// its file, and after the restore each pipe wakes the epoll with its own data.
#[test]
fn epoll_watches_of_closed_fd_numbers_come_back() {
    assert_eq!(cycle("epoll").0.len(), 1);
}

/// A blocked SIGTRAP pending: cryo's in-task syscalls trap with SIGTRAP, so the dump is
/// refused before anything runs in the task, naming it, and the signal is still pending.
#[test]
fn pending_sigtrap_is_refused_and_left_alone() {
    let (pid, out, dir) = start("sigtrap");
    let _g = KillOnDrop(pid);
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(e.contains("SIGTRAP is pending"), "{e}");
    assert_eq!(finish(pid, &out).len(), 1);
}

/// A time namespace made for children (unshare(CLONE_NEWTIME)) before any child is in it
/// is refused before the seize, as CRIU does; the process goes on.
#[test]
fn time_namespace_for_children_is_refused() {
    let (pid, out, dir) = start("timens");
    let _g = KillOnDrop(pid);
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(e.contains("time namespace"), "{e}");
    assert_eq!(finish(pid, &out).len(), 1);
}

/// A process whose login uid differs from cryo's (zdtm's static/loginuid): after the restore
/// /proc/PID/loginuid is the saved value again, not the one the restored task inherited.
#[test]
fn login_uid_comes_back() {
    if !cryo(&["check", "--feature", "loginuid"]).status.success() {
        integration::skip(
            "this process cannot set login uids (no audit support or CAP_AUDIT_CONTROL)",
        );
        return;
    }
    let dir = scratch("loginuid");
    // The shell writes its own login uid (the redirection is the shell's open), then becomes sleep.
    let pid = spawn(
        &[
            "sh",
            "-c",
            "echo 4242 > /proc/self/loginuid && exec sleep 1000",
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    let luid = || std::fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap_or_default();
    wait_for("the login uid", 10, || {
        luid() == "4242"
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep"))
    });
    dump_and_restore(pid, &dir.join("img"));
    assert_eq!(luid(), "4242", "{}", log(&dir.join("img"), "restore.log"));
}

/// The same inside a user namespace whose map is not the identity (zdtm's loginuid in its
/// uns flavor): the task writes its login uid as its namespace names it (100000 + 4242
/// outside is 4242 inside; written as 104242 from inside, the kernel said EINVAL and the
/// restore failed). The process is the init of a PID namespace of its own in its launcher's
/// session (`--shell-job`).
#[test]
fn login_uid_comes_back_in_a_user_namespace() {
    if !cryo(&["check", "--feature", "loginuid"]).status.success() {
        integration::skip(
            "this process cannot set login uids (no audit support or CAP_AUDIT_CONTROL)",
        );
        return;
    }
    let dir = scratch("loginuid-userns");
    let launcher = spawn(
        &[
            "sh",
            "-c",
            "echo 104242 > /proc/self/loginuid && exec unshare --user --pid --fork \
             sh -c 'until grep -q 100000 /proc/self/uid_map; do sleep 0.05; done; exec sleep 1000'",
        ],
        &dir.join("log"),
    );
    let _l = KillOnDrop(launcher);
    let mut pid = 0;
    wait_for("unshare's child", 10, || {
        pid = children(launcher).first().copied().unwrap_or(0);
        pid != 0
    });
    let _g = KillOnDrop(pid);
    for m in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{m}"), "0 100000 65536").unwrap();
    }
    let luid =
        |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap_or_default();
    wait_for("the sleeper", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep"))
    });
    assert_eq!(luid(pid), "104242");
    let img = dir.join("img");
    dump(pid, &img, &["--shell-job"]);
    wait_gone(pid);
    let pidfile = dir.join("restored.pid");
    restore_with(
        &img,
        &["--shell-job", "--pidfile", pidfile.to_str().unwrap()],
    );
    let new: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(new);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{new}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    assert_eq!(luid(new), "104242", "{}", log(&img, "restore.log"));
}

/// Guard regions (`MADV_GUARD_INSTALL`, zdtm's maps12): two guard pages among four private
/// anonymous pages come back as guard pages (pagemap marks them, and a child writing to one
/// dies of SIGSEGV), the pages between keep their content; `check --feature
/// pagemap_scan_guard_pages` answers yes on such a kernel.
#[test]
fn guard_regions_come_back() {
    let dir = scratch("guard-pages");
    let out = dir.join("out");
    let script = root().join("integration/scripts/guard_pages.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 20, || lines(&out).len() >= 2);
    let want = "guards [0, 1, 0, 1] data ['A', 'C'] segv True";
    if lines(&out)[1] != want {
        skip(&format!(
            "this kernel does not report guard pages: {}",
            lines(&out)[1]
        ));
        return;
    }
    let o = cryo(&["check", "--feature", "pagemap_scan_guard_pages"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report after the restore", 20, || {
        lines(&out).len() >= 3
    });
    assert_eq!(lines(&out)[2], want);
}

/// An AIO ring (`io_setup`, zdtm's aio01) with its head and tail mid-way round comes back
/// at its address with the same size, head, tail and events left: a new request moves the
/// tail by one, and io_getevents returns the events left plus the new one. `check
/// --feature aio_remap` answers yes.
#[test]
fn aio_ring_comes_back() {
    let dir = scratch("aio-ring");
    let out = dir.join("out");
    let script = root().join("integration/scripts/aio_ring.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    wait_for("the ring's state", 20, || lines(&out).len() >= 2);
    let before = lines(&out)[1].clone();
    let f: Vec<u32> = before
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (nr, head, tail) = (f[0], f[1], f[2]);
    assert!(head != 0 && tail < head, "{before}");
    let o = cryo(&["check", "--feature", "aio_remap"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report after the restore", 20, || {
        lines(&out).len() >= 4
    });
    assert_eq!(lines(&out)[2], before);
    let left = (tail + nr - head) % nr;
    assert_eq!(lines(&out)[3], format!("after 0 1 events {}", left + 1));
}

/// A real interval timer dumped while its SIGALRM is pending (blocked): the kernel has not
/// armed it again (getitimer reads value 0 with its interval), and setitimer keeps an
/// interval only with a value, so the restore arms it to fire at once, as CRIU; after the
/// restore it ticks on (zdtm timers, which met this moment).
#[test]
fn real_timer_with_its_signal_pending_ticks_on() {
    let dir = scratch("itimer-pending");
    let out = dir.join("out");
    let script = root().join("integration/scripts/itimer_pending.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the timer", 20, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "timer (0.0, 0.05)");
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the ticks", 20, || lines(&out).len() >= 3);
    assert_eq!(lines(&out)[2], "ticks True");
}
