//! Multi-threaded processes (issue #3): every thread is dumped and restored with its TID,
//! registers, TLS, name and signal mask, and keeps running; a failed dump or restore of a
//! threaded process harms nothing.

use std::path::Path;
use std::time::Duration;

use integration::*;

/// tid -> (name, SigBlk) for every thread of `pid`.
fn threads_state(pid: i32) -> Vec<(i32, String, String)> {
    let mut v: Vec<(i32, String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let tid: i32 = e.unwrap().file_name().to_string_lossy().parse().unwrap();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
            let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
            let blk = st
                .lines()
                .find(|l| l.starts_with("SigBlk"))
                .unwrap()
                .to_string();
            (tid, comm.trim().to_string(), blk)
        })
        .collect();
    v.sort();
    v
}

/// Per-thread "tid:counter:tls_ok" fields of the report line `n`.
fn counters(out: &Path, pid: i32, n: usize) -> Vec<(i32, u64, bool)> {
    signal(pid, libc::SIGUSR1);
    wait_for("threads report", 20, || lines(out).len() > n);
    lines(out)[n]
        .split_whitespace()
        .map(|f| {
            let p: Vec<&str> = f.split(':').collect();
            (p[0].parse().unwrap(), p[1].parse().unwrap(), p[2] == "1")
        })
        .collect()
}

fn start(dir: &Path) -> (i32, std::path::PathBuf) {
    let out = dir.join("threads.out");
    let pid = spawn(
        &[prog_threads().to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    wait_for("threads ready", 10, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    (pid, out)
}

fn prog_threads() -> std::path::PathBuf {
    // threads.c needs -pthread; glibc has it built in, so the default build works.
    prog("threads")
}

#[test]
fn eight_threads_keep_running_with_their_identity() {
    let dir = scratch("threads");
    let (pid, out) = start(&dir);
    let _guard = KillOnDrop(pid);
    let c1 = counters(&out, pid, 1);
    assert_eq!(c1.len(), 8);
    let before = threads_state(pid);
    assert_eq!(before.len(), 9);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    for t in &before {
        assert!(
            img.join(format!("core-{}.img", t.0)).exists(),
            "no core for thread {}",
            t.0
        );
    }
    restore(&img);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        threads_state(pid),
        before,
        "threads' ids, names or masks changed"
    );
    let c2 = counters(&out, pid, 2);
    for (a, b) in c1.iter().zip(&c2) {
        assert_eq!(a.0, b.0, "thread ids changed");
        assert!(
            b.1 > a.1,
            "thread {} stopped counting ({} -> {})",
            a.0,
            a.1,
            b.1
        );
        assert!(b.2, "thread {} lost its TLS", a.0);
    }
}

#[test]
fn failed_dump_or_restore_of_threads_harms_nothing() {
    let dir = scratch("threadfault");
    let (pid, out) = start(&dir);
    let _guard = KillOnDrop(pid);
    // The main thread shows SIGUSR1 unblocked only inside sigwait(), which it enters just
    // after writing "ready": compare from there.
    wait_for("the main thread in sigwait", 10, || {
        threads_state(pid)
            .first()
            .is_some_and(|t| t.2 == "SigBlk:\t0000000000000000")
    });
    let before = threads_state(pid);
    for stage in ["parasite", "memory"] {
        let o = cryo_env(
            &[
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                dir.join("x").to_str().unwrap(),
            ],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success());
        // (Back in its sigwait once it runs again.)
        wait_for(&format!("the threads as before stage {stage}"), 10, || {
            threads_state(pid) == before
        });
    }
    let c1 = counters(&out, pid, 1);
    std::thread::sleep(Duration::from_millis(100));
    let c2 = counters(&out, pid, 2);
    assert!(
        c1.iter().zip(&c2).all(|(a, b)| b.1 > a.1),
        "threads stopped after failed dumps"
    );
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    for stage in ["task", "threads", "creds", "finish"] {
        let o = cryo_env(
            &["restore", "-D", img.to_str().unwrap(), "-d"],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "stage {stage}");
        wait_gone(pid);
        for (tid, _, _) in &before {
            assert!(
                !Path::new(&format!("/proc/{tid}")).exists(),
                "stage {stage}: thread {tid} left behind"
            );
        }
    }
    restore(&img);
    // The main thread shows SIGUSR1 unblocked only while it is inside sigwait(), which it
    // re-enters once it runs again.
    wait_for("the threads' state as before", 10, || {
        threads_state(pid) == before
    });
}
