//! Checkpoint and restore of single real programs (issue #2 §5): a counter that must continue
//! without gap, 256 MiB of random memory whose checksum must match, a python3 interpreter
//! holding state, and --leave-running.

use std::path::Path;
use std::time::Duration;

use integration::*;

/// The numbers in the counter file: must be 0, 1, 2, ... with no gap and no repeat.
fn check_sequence(p: &Path) -> u64 {
    let v: Vec<u64> = lines(p)
        .iter()
        .map(|l| l.parse().expect("number"))
        .collect();
    for (i, n) in v.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64,
            "counter sequence broken at line {i}: {:?}",
            &v[i.saturating_sub(3)..(i + 3).min(v.len())]
        );
    }
    v.len() as u64
}

#[test]
fn counter_continues_without_gap() {
    let dir = scratch("counter");
    let out = dir.join("count.txt");
    let pid = spawn(
        &[prog("counter").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("counter output", 10, || lines(&out).len() >= 5);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let at_dump = check_sequence(&out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        check_sequence(&out),
        at_dump,
        "the dumped process kept running"
    );
    restore(&img);
    assert!(alive(pid), "restored process has the same pid");
    wait_for("counter to continue", 10, || {
        lines(&out).len() as u64 >= at_dump + 10
    });
    // And a second cycle on the restored process.
    let img2 = dir.join("img2");
    dump(pid, &img2, &[]);
    wait_gone(pid);
    restore(&img2);
    let n = lines(&out).len() as u64;
    wait_for("counter to continue after 2nd restore", 10, || {
        lines(&out).len() as u64 >= n + 5
    });
    kill(pid);
    check_sequence(&out);
}

#[test]
fn memory_checksum_survives() {
    let dir = scratch("memhog");
    let (pid, out) = start_memhog(&dir, 256);
    let _guard = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let after = memhog_sum(pid, &out);
    assert_eq!(before, after, "memory checksum changed across dump/restore");
    kill(pid);
    // Images are private: 0700 directory, 0600 files.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".img") || name.starts_with("stats") || name.starts_with("cryo-") {
            assert_eq!(
                e.metadata().unwrap().permissions().mode() & 0o777,
                0o600,
                "{name}"
            );
        }
    }
}

/// 64 MiB of anonymous memory the program wrote zeros into (every page present): the dump
/// leaves those pages out (the images hold a few hundred KiB, not 64 MiB), and after restore
/// the memory reads the same (zeros, its checksum unchanged).
#[test]
fn written_zero_pages_are_left_out_of_the_images() {
    let dir = scratch("zeromem");
    let (pid, out) = start_memhog_with(&dir, 64, &["zero"]);
    let _guard = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let pages: u64 = std::fs::read_dir(&img)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        pages < 8 << 20,
        "pages images hold {pages} bytes for 64 MiB of zeros"
    );
    let after = memhog_sum(pid, &out);
    assert_eq!(before, after, "memory checksum changed across dump/restore");
    kill(pid);
}

const PY: &str = r#"
import os, signal, sys, time, json
state = {"ticks": 0, "words": {}, "blob": bytes(range(256)) * 4096}
def report(sig, frm):
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"ticks": state["ticks"], "n": len(state["words"]),
                            "blob": sum(state["blob"]) % 1000003}) + "\n")
signal.signal(signal.SIGUSR1, report)
with open(sys.argv[1], "a") as f:
    f.write("ready\n")
while True:
    state["ticks"] += 1
    state["words"]["w%d" % state["ticks"]] = state["ticks"] * 3
    time.sleep(0.02)
"#;

#[test]
fn python_interpreter_keeps_its_state() {
    let dir = scratch("python");
    let script = dir.join("state.py");
    std::fs::write(&script, PY).unwrap();
    let out = dir.join("out.jsonl");
    let pid = spawn(
        &[
            "/usr/bin/python3",
            script.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("python ready", 20, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = |n: usize| -> serde_json::Value {
        signal(pid, libc::SIGUSR1);
        wait_for("python report", 20, || lines(&out).len() > n);
        serde_json::from_str(&lines(&out)[n]).unwrap()
    };
    let before = report(1);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    std::thread::sleep(Duration::from_millis(200));
    let after = report(2);
    kill(pid);
    let (t0, t1) = (
        before["ticks"].as_u64().unwrap(),
        after["ticks"].as_u64().unwrap(),
    );
    assert!(
        t1 > t0,
        "interpreter state did not continue: {before} -> {after}"
    );
    assert!(
        t1 < t0 + 200,
        "interpreter restarted or jumped: {before} -> {after}"
    );
    assert_eq!(
        after["n"].as_u64().unwrap(),
        t1,
        "dict lost entries: {after}"
    );
    assert_eq!(before["blob"], after["blob"]);
}

#[test]
fn leave_running_keeps_the_original_and_images_restore() {
    let dir = scratch("leave");
    let (pid, out) = start_memhog(&dir, 32);
    let _guard = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &["--leave-running"]);
    assert!(alive(pid), "--leave-running killed the process");
    assert_eq!(
        memhog_sum(pid, &out),
        before,
        "original changed by the dump"
    );
    // The PID is still taken: restore must refuse clearly and start nothing.
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("PID {pid} is in use")));
    kill(pid);
    restore(&img);
    assert_eq!(memhog_sum(pid, &out), before);
    kill(pid);
}

/// A busy loop whose whole state lives in AVX registers (ymm1-ymm3, xmm15), dumped while
/// running in user mode: the count must go on from where it was and the register patterns
/// must be intact, which needs the exact XSAVE state back.
#[test]
fn vector_registers_survive_a_busy_loop() {
    let dir = scratch("vecregs");
    let out = dir.join("vr.out");
    let pid = spawn(
        &[prog("vecregs").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("ready", 10, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    let report = |n: usize| -> (u64, u64, u64) {
        signal(pid, libc::SIGUSR1);
        wait_for("report", 10, || lines(&out).len() > n);
        let v: Vec<u64> = lines(&out)[n]
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    };
    let before = report(1);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let after = report(2);
    assert_eq!(after.2, 0, "a vector register pattern was corrupted");
    assert_eq!(after.0, after.1, "ymm lanes diverged");
    assert!(
        after.0 > before.0,
        "the count did not go on: {before:?} -> {after:?}"
    );
    assert!(
        after.0 < before.0 + 50_000_000_000,
        "the count jumped: {before:?} -> {after:?}"
    );
}

/// POSIX timers come back with the same ids, clock, signal and payload, keep firing, and a
/// long one keeps (nearly) its remaining time.
#[test]
fn posix_timers_keep_ticking() {
    let dir = scratch("ptimers");
    let out = dir.join("pt.out");
    let pid = spawn(
        &[prog("ptimers").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("ready", 10, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    std::thread::sleep(Duration::from_millis(200));
    let report = |n: usize| -> Vec<String> {
        signal(pid, libc::SIGUSR1);
        wait_for("report", 10, || lines(&out).len() > n);
        lines(&out)[n].split(' ').map(str::to_string).collect()
    };
    let before = report(1);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    std::thread::sleep(Duration::from_millis(300));
    let after = report(2);
    let ticks = |r: &[String]| r[0].parse::<u64>().unwrap();
    assert!(
        ticks(&after) >= ticks(&before) + 5,
        "the periodic timer stopped: {before:?} -> {after:?}"
    );
    assert_eq!(before[1..4], after[1..4], "timer ids or payload changed");
    assert_eq!(after[3], "1234");
    let left = |r: &[String]| r[4].parse::<i64>().unwrap();
    assert!(
        left(&after) <= left(&before) && left(&after) >= left(&before) - 5,
        "{before:?} -> {after:?}"
    );
}

/// A program that sandboxed itself with a seccomp filter (and no_new_privs), with a second
/// thread that inherited it: dumping does not trip the filter, and after restore the filter
/// still rules both (getppid still fails with EPERM, Seccomp: 2, NoNewPrivs: 1).
#[test]
fn seccomp_filter_survives() {
    let dir = scratch("seccomp");
    let out = dir.join("out");
    let script = root().join("integration/scripts/seccomp_filter.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the filter", 20, || !lines(&out).is_empty());
    assert_eq!(lines(&out)[0], "ready getppid=-1 errno=1");
    // Filters per thread: the third thread added one of its own.
    let chains = || {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| {
                let t = t.unwrap().file_name();
                let st = std::fs::read_to_string(format!(
                    "/proc/{pid}/task/{}/status",
                    t.to_string_lossy()
                ))
                .unwrap();
                st.lines()
                    .find(|l| l.starts_with("Seccomp_filters:"))
                    .unwrap_or("none")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    let before = chains();
    assert_eq!(before.len(), 3, "{before:?}");
    assert_ne!(
        before[0], before[2],
        "the threads' chains differ: {before:?}"
    );
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    assert_eq!(chains(), before, "each thread has its own chain again");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Threads:\t3"), "{status}");
    for tid in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = tid.unwrap().file_name();
        let st =
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", tid.to_string_lossy()))
                .unwrap();
        assert!(st.contains("Seccomp:\t2"), "thread {tid:?} lost its filter");
    }
    signal(pid, libc::SIGUSR1);
    wait_for("the probe", 10, || lines(&out).len() == 2);
    assert_eq!(lines(&out)[1], "after getppid=-1 errno=1 2");
}

/// `--shell-job`: a job started from a shell in one tmux session (its stdio on that pane's
/// terminal, not a session leader) is dumped, then restored from a shell in another tmux
/// session, and keeps reading the keyboard there: a line typed into the new pane reaches it.
#[test]
fn shell_job_moves_to_another_terminal() {
    let dir = scratch("shelljob");
    let out = dir.join("out");
    let tmux = |args: &[&str]| {
        let st = std::process::Command::new("tmux")
            .args(["-L", &format!("cryo-test-{}", std::process::id())])
            .args(args)
            .stdin(std::process::Stdio::null())
            .status()
            .expect("tmux (integration/setup.sh installs it)");
        assert!(st.success(), "tmux {args:?}");
    };
    struct Server(String);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .status();
        }
    }
    let _server = Server(format!("cryo-test-{}", std::process::id()));
    let bash = "bash --norc --noprofile";
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "a",
        "-x",
        "100",
        "-y",
        "20",
        bash,
    ]);
    let job = format!(
        "sh -c 'echo $$ > {d}/pid; while read l; do echo \"got $l\" >> {d}/out; done'",
        d = dir.display()
    );
    tmux(&["send-keys", "-t", "a", &job, "Enter"]);
    wait_for("the job", 10, || !lines(&dir.join("pid")).is_empty());
    let pid: i32 = lines(&dir.join("pid"))[0].parse().unwrap();
    let _g = KillOnDrop(pid);
    tmux(&["send-keys", "-t", "a", "one", "Enter"]);
    wait_for("the first line", 10, || lines(&out) == ["got one"]);
    let img = dir.join("img");
    dump(pid, &img, &["--shell-job"]);
    wait_gone(pid);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "b",
        "-x",
        "100",
        "-y",
        "20",
        bash,
    ]);
    let cmd = format!(
        "{} restore --shell-job -D {} -v4 -o restore.log",
        cryo_bin().display(),
        img.display()
    );
    tmux(&["send-keys", "-t", "b", &cmd, "Enter"]);
    wait_for("the restored job", 10, || alive(pid));
    // Typed into the new pane, read by the restored job.
    wait_for("a line typed in the new terminal", 10, || {
        tmux(&["send-keys", "-t", "b", "two", "Enter"]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        lines(&out).iter().any(|l| l == "got two")
    });
    let link = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert!(link.to_string_lossy().starts_with("/dev/pts/"), "{link:?}");
}

/// A process in UTS, IPC and network namespaces of its own (its own hostname, loopback up)
/// is restored into new ones, with the same hostname and the loopback up; the host's are
/// untouched.
#[test]
fn uts_namespace_keeps_its_hostname() {
    let dir = scratch("uts");
    let out = dir.join("out");
    let script = r#"
import os, signal, socket
socket.sethostname("cryo-uts-test")
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
print(socket.gethostname(), flush=True)
"#;
    let pid = spawn(
        &[
            "unshare",
            "-u",
            "-i",
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec python3 -c \"$0\"",
            script,
        ],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    for kind in ["uts", "ipc", "net"] {
        assert_ne!(
            ns(&format!("/proc/{pid}/ns/{kind}")),
            ns(&format!("/proc/self/ns/{kind}")),
            "restored into the host's {kind} namespace"
        );
    }
    let lo = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains(",UP"),
        "loopback not up: {}",
        String::from_utf8_lossy(&lo.stdout)
    );
    signal(pid, libc::SIGUSR1);
    wait_for("the hostname", 10, || lines(&out).len() == 2);
    assert_eq!(lines(&out)[1], "cryo-uts-test");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host
    );
}

/// The ipcns-*.img images of the single IPC namespace in `img`, by kind ("shm", ...).
fn ipc_image(img: &Path, kind: &str) -> std::path::PathBuf {
    let prefix = format!("ipcns-{kind}-");
    std::fs::read_dir(img)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .unwrap_or_else(|| panic!("no {prefix}*.img in {}", img.display()))
}

/// A SysV segment attached twice (`shmattach.c`: read-write with its middle page made
/// read-only, and read-only elsewhere), in an IPC namespace of the process's own: after the
/// restore both attachments are the restored segment again (a byte written through one shows
/// through the other), with its content and each mapping's permissions.
#[test]
fn sysv_shm_attachments_come_back() {
    let dir = scratch("shmattach");
    let out = dir.join("out");
    let pid = spawn(
        &["unshare", "-i", prog("shmattach").to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    wait_for("the first report", 10, || lines(&out).len() >= 2);
    let want = "have 1 1 rw-s r--s rw-s r--s";
    assert_eq!(lines(&out)[1], want);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report after the restore", 10, || {
        lines(&out).len() >= 3
    });
    assert_eq!(lines(&out)[2], want);
}

/// A process in an IPC namespace of its own (`ipcns.c`) holding a SysV shm segment (with a
/// hole) and a private one, a semaphore set and a message queue with 4 messages (one above
/// the default msgmax, which it raised) is restored into a new namespace with the same ids,
/// segment bytes, semaphore values, messages in order, and sysctls (kernel.sem too, whose
/// text is longer than a first short read); the images decode with
/// crit; nothing leaks into the host's namespace.
#[test]
fn ipc_namespace_keeps_its_objects() {
    let dir = scratch("ipcns");
    let out = dir.join("out");
    let pid = spawn(&["unshare", "-i", prog("ipcns").to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let ids = wait_ready(&out);
    wait_for("the expected state", 10, || lines(&out).len() >= 2);
    let want = lines(&out)[1].clone();
    assert!(
        want.starts_with(&format!(
            "want ids {} {} {} {} ",
            ids[0], ids[1], ids[2], ids[3]
        )),
        "{want}"
    );
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/ipc")).unwrap(),
        std::fs::read_link("/proc/self/ns/ipc").unwrap(),
        "restored into the host's IPC namespace"
    );
    // The objects were made in the new namespace only (keys are decimal there).
    for f in ["shm", "sem", "msg"] {
        let host = std::fs::read_to_string(format!("/proc/sysvipc/{f}")).unwrap();
        assert!(
            !host.contains(&0x4372_0001u32.to_string())
                && !host.contains(&0x4372_0002u32.to_string())
                && !host.contains(&0x4372_0003u32.to_string()),
            "a test object leaked into the host's namespace: {host}"
        );
    }
    signal(pid, libc::SIGUSR1);
    wait_for("the restored state", 10, || lines(&out).len() >= 3);
    let have = lines(&out)[2].clone();
    assert_eq!(have.replacen("have", "want", 1), want);

    // The images: CRIU's framing, which crit decodes (shm bytes inline, sem values, messages).
    let crit = |kind: &str| -> serde_json::Value {
        let o = std::process::Command::new("crit")
            .args(["decode", "-i"])
            .arg(ipc_image(&img, kind))
            .output()
            .expect("crit (integration/setup.sh installs it)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let shm = crit("shm");
    let seg = shm["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["desc"]["id"] == ids[0])
        .expect("the keyed segment");
    assert_eq!(seg["desc"]["key"], 0x4372_0001u32);
    assert_eq!(seg["size"], 3 * 4096 + 100);
    assert_eq!(seg["desc"]["mode"].as_u64().unwrap() & 0o777, 0o640);
    let sem = crit("sem");
    assert_eq!(
        sem["entries"][0]["extra"],
        serde_json::json!([0, 1, 7, 300, 32767])
    );
    let msg = crit("msg");
    let q = &msg["entries"][0];
    assert_eq!(q["desc"]["id"], ids[2]);
    let types: Vec<_> = q["extra"]
        .as_array()
        .unwrap()
        .iter()
        .step_by(2)
        .map(|m| (m["mtype"].as_u64().unwrap(), m["msize"].as_u64().unwrap()))
        .collect();
    assert_eq!(types, [(1, 5), (5, 14), (2, 8500), (1, 0)]);
    let var = crit("var");
    assert_eq!(var["entries"][0]["msg_ctlmax"], 9000);
    assert_eq!(
        var["entries"][0]["sem_ctls"],
        serde_json::json!([567_543_001, 826_660_645, 1_189_648_053, 13156])
    );
}

/// POSIX message queues of a private IPC namespace come back with their attributes, mode
/// and messages (in priority order), whether the program keeps the queue open or not; the
/// open fd is reopened on the new queue. A queue with an mq_notify registration is refused,
/// naming it, and the process goes on untouched.
#[test]
fn ipc_namespace_keeps_its_posix_queues() {
    for mode in ["mq", "mqfd"] {
        let dir = scratch(&format!("ipcns-{mode}"));
        let out = dir.join("out");
        let pid = spawn(
            &["unshare", "-i", prog("ipcns").to_str().unwrap(), mode],
            &out,
        );
        let _g = KillOnDrop(pid);
        wait_ready(&out);
        wait_for("the expected state", 10, || lines(&out).len() >= 3);
        let want = lines(&out);
        assert!(
            want[2].starts_with("want-mq ") && want[2].contains(" 7:high 1:low 1:low-2"),
            "{want:?}"
        );
        let img = dir.join("img");
        dump_and_restore(pid, &img);
        signal(pid, libc::SIGUSR1);
        wait_for("the state after restore", 10, || lines(&out).len() >= 5);
        let l = lines(&out);
        assert_eq!(
            l[3].replacen("have", "want", 1),
            l[1],
            "{mode}: SysV objects"
        );
        assert_eq!(
            l[4].replacen("have", "want", 1),
            l[2],
            "{mode}: the POSIX queue"
        );
        kill(pid);
    }
    let dir = scratch("ipcns-mqnotify");
    let out = dir.join("out");
    let pid = spawn(
        &["unshare", "-i", prog("ipcns").to_str().unwrap(), "mqnotify"],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    wait_for("the expected state", 10, || lines(&out).len() >= 3);
    let err = dump_fails(pid, &dir.join("img"), &[]);
    assert!(
        err.contains("POSIX message queue /cryo-test-q") && err.contains("mq_notify"),
        "{err}"
    );
    signal(pid, libc::SIGUSR1);
    wait_for("the state after the refused dump", 10, || {
        lines(&out).len() >= 5
    });
    let l = lines(&out);
    assert_eq!(
        l[4].replacen("have", "want", 1),
        l[2],
        "the refused dump changed the queue"
    );
}

/// A program in a time namespace whose clocks are days ahead of the host's: after a dump, a
/// pause and a restore, its monotonic clock goes on from where it was (the pause does not
/// count) and stays days ahead.
#[test]
fn time_namespace_clocks_go_on() {
    let dir = scratch("timens");
    let out = dir.join("clocks");
    let script = r#"
import sys, time
out = open(sys.argv[1], "a", buffering=1)
while True:
    out.write("%.3f\n" % time.clock_gettime(time.CLOCK_MONOTONIC))
    time.sleep(0.05)
"#;
    let launcher = spawn(
        &[
            "unshare",
            "-T",
            "--monotonic",
            "864000",
            "--fork",
            "setsid",
            "python3",
            "-c",
            script,
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(launcher);
    wait_for("clock lines", 10, || lines(&out).len() >= 3);
    let pid = children(launcher)[0];
    let _g2 = KillOnDrop(pid);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let before = lines(&out).len();
    restore(&img);
    wait_for("clock lines after restore", 10, || {
        lines(&out).len() >= before + 3
    });
    let v: Vec<f64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    let host = std::fs::read_to_string("/proc/uptime").unwrap();
    let host: f64 = host.split_whitespace().next().unwrap().parse().unwrap();
    for w in v.windows(2) {
        let step = w[1] - w[0];
        assert!(
            (0.0..0.8).contains(&step),
            "monotonic clock jumped by {step:.3}s (the 1.5 s pause counted?)"
        );
    }
    assert!(
        v[v.len() - 1] > host + 800_000.0,
        "the clock is no longer days ahead"
    );
    kill(pid);
}

/// `--restore-sibling` (what runtimes ask for over RPC as `rst_sibling`): the restored
/// process is created as cryo's sibling, so cryo's caller (this test) is its parent.
#[test]
fn restore_sibling_makes_the_caller_the_parent() {
    let (img, pid) = dumped_sleep("sibling", &[]);
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d", "-S", "-v4", "-o", "restore.log"]);
    assert!(
        o.status.success(),
        "restore failed:\n{}",
        log(&img, "restore.log")
    );
    let _g = KillOnDrop(pid);
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = st
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ppid,
        std::process::id(),
        "the caller is the restored process's parent"
    );
    assert!(alive(pid));
    kill(pid);
}

/// A process of another user (as zdtm's tests run): cryo reads its resource limits from
/// /proc, since `prlimit64` on it needs CAP_SYS_RESOURCE, which this VM (and many
/// containers cryo runs in) does not have. Its uid and limits come back.
#[test]
fn process_of_another_user_keeps_its_limits() {
    let dir = scratch("otheruser");
    let log = dir.join("out.log");
    let pid = spawn(
        &[
            "setpriv",
            "--reuid=18943",
            "--regid=18943",
            "--clear-groups",
            "sh",
            "-c",
            "ulimit -S -n 123; exec sleep 1000",
        ],
        &log,
    );
    let _g = KillOnDrop(pid);
    let ready = || {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .starts_with("sleep")
    };
    wait_for("sleep as uid 18943", 10, ready);
    let limits = || std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let uid = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string()
    };
    let (l0, u0) = (limits(), uid());
    assert!(l0.contains("Max open files            123 "), "{l0}");
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    assert_eq!(uid(), u0);
    assert_eq!(limits(), l0);
}

/// A SysV hugetlb segment (SHM_HUGETLB, zdtm's shm-hugetlb) in the process's own IPC
/// namespace, detached, comes back on huge pages with its id and content (the dump
/// refused it before). Skipped when the kernel has no free huge page.
#[test]
fn sysv_hugetlb_segment_comes_back() {
    let dir = scratch("shm-huge");
    let out = dir.join("out");
    let script = root().join("integration/scripts/shm_huge.py");
    let pid = spawn(
        &["unshare", "-i", "python3", script.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("the segment", 20, || !lines(&out).is_empty());
    if lines(&out)[0].starts_with("nohuge") {
        skip(&format!(
            "no huge pages for a SysV segment: {}",
            lines(&out)[0]
        ));
        return;
    }
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 20, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "b'huge data' b'huge data' 2097152");
}

/// A SysV hugetlb segment still attached at the dump (zdtm's shm-hugetlb) comes back
/// attached at the same address, on huge pages, with its content: the mapping goes the
/// SysV way (shmat of the restored segment) instead of being refused as a hugetlbfs file.
/// Skipped when the kernel has no free huge page.
#[test]
fn attached_sysv_hugetlb_segment_comes_back() {
    let dir = scratch("shm-huge-attached");
    let out = dir.join("out");
    let script = root().join("integration/scripts/shm_huge.py");
    let pid = spawn(
        &[
            "unshare",
            "-i",
            "python3",
            script.to_str().unwrap(),
            "attached",
        ],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("the segment", 20, || !lines(&out).is_empty());
    if lines(&out)[0].starts_with("nohuge") {
        skip(&format!(
            "no huge pages for a SysV segment: {}",
            lines(&out)[0]
        ));
        return;
    }
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 20, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "b'huge data' b'huge data' 2097152");
}
