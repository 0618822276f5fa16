//! Namespaces nested inside the dumped tree (issue #16, item 2): a process of the tree that
//! made a mount namespace and a PID namespace of its own for its child (`unshare --mount
//! --pid --fork --mount-proc`, what sandboxes such as bubblewrap do), with UTS, IPC and net
//! namespaces of its own too. After a restore every task has its PID at every level, the
//! nested mount namespace has its own mounts (a tmpfs with its file, /proc of the nested PID
//! namespace) and cryo's namespace has none of them.

use std::path::Path;
use std::time::Duration;

use integration::*;

/// The init of the nested PID namespace (PID 1 there): mounts a tmpfs at MNT with a file in
/// it, forks a child that sleeps, then writes a status line every 100 ms, without forking:
/// a counter, its hostname, the PIDs its /proc shows, the file's contents.
const INNER: &str = r#"
import os, socket, sys, time
mnt = sys.argv[1]
child = os.fork()
if child == 0:
    while True:
        time.sleep(1)
n = 0
while True:
    procs = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    data = open(mnt + "/f").read().strip()
    print(f"{n} pid={os.getpid()} host={socket.gethostname()} procs={procs} data={data}", flush=True)
    n += 1
    time.sleep(0.1)
"#;

/// Tests that mount in cryo's namespace, and the one that counts its mounts, take this
/// lock to write; every other test takes it to read: their nested mount namespaces are
/// copies of cryo's, and a restore copies cryo's again, so a mount that another test makes
/// or removes between the dump and the restore would be in one copy and not the other.
static HOST_MOUNTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn host_mounts() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOST_MOUNTS.write().unwrap_or_else(|e| e.into_inner())
}

fn copies_host_mounts() -> std::sync::RwLockReadGuard<'static, ()> {
    HOST_MOUNTS.read().unwrap_or_else(|e| e.into_inner())
}

/// (counter, the rest) of the last status line.
fn last_status(out: &Path) -> Option<(u64, String)> {
    let l = lines(out).into_iter().rev().find(|l| l.contains(" pid="))?;
    let (n, rest) = l.split_once(' ')?;
    Some((n.parse().ok()?, rest.to_string()))
}

fn ns(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn nspid(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default()
        .to_string()
}

fn mounted_at(pid: i32, at: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(at))
        .map(|l| l.split(" - ").nth(1).unwrap_or_default().to_string())
        .collect()
}

/// Everything a test checks about the tree, to compare before and after.
#[derive(Debug, PartialEq)]
struct Shape {
    nspids: Vec<String>,
    /// Whether each task shares each namespace kind with the root (cryo's).
    same_as_root: Vec<Vec<bool>>,
    /// What is mounted at MNT and /proc in the nested namespace.
    inner_mnt: Vec<String>,
    inner_proc: Vec<String>,
}

fn shape(tree: &[i32], mnt: &str) -> Shape {
    let kinds = ["mnt", "pid", "uts", "ipc", "net"];
    Shape {
        nspids: tree.iter().map(|&p| nspid(p)).collect(),
        same_as_root: tree
            .iter()
            .map(|&p| kinds.iter().map(|k| ns(p, k) == ns(tree[0], k)).collect())
            .collect(),
        inner_mnt: mounted_at(tree[2], mnt)
            .into_iter()
            .map(|m| m.split(' ').next().unwrap_or_default().to_string())
            .collect(),
        inner_proc: mounted_at(tree[2], "/proc")
            .into_iter()
            .map(|m| m.split(' ').next().unwrap_or_default().to_string())
            .collect(),
    }
}

/// A started sandbox tree: (root, unshare, the nested init, its child), its output file and
/// the tmpfs mount point inside. The guards kill it.
struct Sandbox {
    tree: Vec<i32>,
    out: std::path::PathBuf,
    mnt: String,
    _guards: Vec<KillOnDrop>,
}

/// Starts a tree whose root stays in cryo's namespaces; unshare (its child) makes the mount,
/// UTS, IPC and net namespaces and the PID namespace its own child is the init of. None when
/// a tool is missing.
fn start_sandbox(dir: &Path) -> Option<Sandbox> {
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return None;
    }
    let out = dir.join("out");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    let inner = dir.join("inner.py");
    std::fs::write(&inner, INNER).unwrap();
    let inner = inner.to_str().unwrap();
    let script = format!(
        "unshare --mount --pid --fork --mount-proc --uts --ipc --net sh -c 'hostname inner-ns && mount -t tmpfs cryo-nested {mnt_s} && echo hello >{mnt_s}/f && exec python3 {inner} {mnt_s}' & wait"
    );
    let root = spawn(&["/bin/sh", "-c", &script], &out);
    let mut guards = vec![KillOnDrop(root)];
    wait_for("the nested init's status", 20, || {
        last_status(&out).is_some()
    });
    let unshare = children(root)[0];
    let init = children(unshare)[0];
    wait_for("the init's child", 10, || !children(init).is_empty());
    let sleeper = children(init)[0];
    let tree = vec![root, unshare, init, sleeper];
    guards.extend(tree[1..].iter().map(|&p| KillOnDrop(p)));
    Some(Sandbox {
        tree,
        out,
        mnt: mnt_s,
        _guards: guards,
    })
}

#[test]
fn nested_mount_and_pid_namespaces_keep_pids_and_mounts() {
    let _host = copies_host_mounts();
    let dir = scratch("nested-ns");
    let Some(sb) = start_sandbox(&dir) else {
        return;
    };
    let (tree, out, mnt_s) = (sb.tree.clone(), sb.out.clone(), sb.mnt.clone());
    let mnt = std::path::PathBuf::from(&mnt_s);
    let root = tree[0];
    let before = shape(&tree, &mnt_s);
    assert_eq!(before.inner_mnt, vec!["tmpfs"], "{before:?}");
    assert_eq!(before.inner_proc.last().map(String::as_str), Some("proc"));
    assert!(mounted_at(std::process::id().cast_signed(), &mnt_s).is_empty());
    let (_, status) = last_status(&out).unwrap();
    assert!(
        status.starts_with("pid=1 host=inner-ns procs=[1, "),
        "{status}"
    );
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        assert_eq!(
            tree_pids(&img),
            tree,
            "pstree.img names the tasks by host PID"
        );
        wait_tree_gone(&img);
        let at_dump = last_status(&out).unwrap().0;
        restore(&img);
        for &p in &tree {
            assert!(alive(p), "process {p} was not restored");
        }
        assert_eq!(shape(&tree, &mnt_s), before, "namespaces or PIDs changed");
        wait_for("the nested init to go on", 20, || {
            last_status(&out).is_some_and(|(n, _)| n > at_dump + 2)
        });
        // Same PIDs seen from inside, same hostname, same /proc, same tmpfs contents.
        assert_eq!(last_status(&out).unwrap().1, status);
        // cryo's namespace got none of the nested one's mounts.
        assert!(mounted_at(std::process::id().cast_signed(), &mnt_s).is_empty());
        assert!(!mnt.join("f").exists());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--join-ns mnt:PATH` and `--join-ns time:PATH` (CRIU's, as runtimes use them for
/// containers sharing namespaces): the restored root enters the given mount and time
/// namespaces instead of the ones it had. A program of cryo's namespaces is restored into a
/// mount namespace where a tmpfs with a file is mounted and a time namespace whose boot-time
/// clock is ten days ahead; it sees both.
#[test]
fn restore_joins_given_mount_and_time_namespaces() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("join-mnt-time");
    let out = dir.join("out");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    // The holder of the namespaces to join.
    let holder = spawn(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--time",
            "--boottime",
            "864000",
            "--fork",
            "sh",
            "-c",
            &format!(
                "mount -t tmpfs joined {mnt_s} && echo in-joined-ns >{mnt_s}/f && exec sleep 1000"
            ),
        ],
        &dir.join("holder.log"),
    );
    let _h = KillOnDrop(holder);
    wait_for("the holder's mount", 10, || {
        children(holder)
            .first()
            .is_some_and(|&c| std::fs::read_to_string(format!("/proc/{c}/root{mnt_s}/f")).is_ok())
    });
    let inner = children(holder)[0];
    let _i = KillOnDrop(inner);
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"import sys, time
n = 0
while True:
    try:
        data = open(sys.argv[1] + "/f").read().strip()
    except OSError:
        data = "none"
    boot = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    print(f"{n} data={data} boot={boot}", flush=True)
    n += 1
    time.sleep(0.1)
"#,
    )
    .unwrap();
    let pid = spawn(&["python3", prog.to_str().unwrap(), &mnt_s], &out);
    let _g = KillOnDrop(pid);
    let field = |l: &str, k: &str| -> String {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the program's output", 10, || lines(&out).len() >= 2);
    let before = lines(&out).last().cloned().unwrap();
    assert_eq!(field(&before, "data="), "none");
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let n = lines(&out).len();
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--join-ns",
        &format!("mnt:/proc/{inner}/ns/mnt"),
        "--join-ns",
        &format!("time:{inner}"),
    ]);
    assert!(
        o.status.success(),
        "restore failed:\n{}",
        log(&img, "restore.log")
    );
    assert_eq!(ns(pid, "mnt"), ns(inner, "mnt"));
    assert_eq!(ns(pid, "time"), ns(inner, "time"));
    wait_for("the restored program", 10, || lines(&out).len() >= n + 3);
    let after = lines(&out).last().cloned().unwrap();
    assert_eq!(field(&after, "data="), "in-joined-ns", "{after}");
    let boot = |l: &str| field(l, "boot=").parse::<i64>().unwrap();
    assert!(
        boot(&after) - boot(&before) >= 864_000,
        "{before} / {after}"
    );
    // An unknown or unsupported kind is refused by name.
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "--join-ns",
        "user:1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("user namespace cannot be joined"));
}

/// A fault once the nested namespaces exist (every task created, the nested mount
/// namespace built, its proc mounted): the restore fails and leaves no process and no
/// mount behind; the next restore works.
#[test]
fn fault_after_nested_namespaces_leaves_nothing_behind() {
    let _host = host_mounts();
    let dir = scratch("nested-ns-fault");
    let Some(sb) = start_sandbox(&dir) else {
        return;
    };
    let img = dir.join("img");
    dump(sb.tree[0], &img, &[]);
    wait_tree_gone(&img);
    let own_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count()
    };
    let mounts_before = own_mounts();
    let d = img.to_str().unwrap();
    for stage in ["finish", "creds"] {
        let o = cryo_env(
            &["restore", "-D", d, "-d", "-v4", "-o", "restore.log"],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(
            !o.status.success(),
            "the fault at {stage} must fail the restore"
        );
        for &p in &sb.tree {
            wait_gone(p);
        }
        assert!(mounted_at(std::process::id().cast_signed(), &sb.mnt).is_empty());
        assert_eq!(
            own_mounts(),
            mounts_before,
            "a mount was left in cryo's namespace"
        );
    }
    restore(&img);
    for &p in &sb.tree {
        assert!(alive(p), "process {p} was not restored");
    }
}

/// A process that entered with setns (nsenter) a mount namespace another process of the
/// tree made is refused by name before anything is touched; the tree keeps running.
#[test]
fn setns_into_a_sibling_mount_namespace_is_refused() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("nsenter", "--help")]) {
        return;
    }
    let dir = scratch("nested-ns-setns");
    let root = spawn(
        &[
            "/bin/sh",
            "-c",
            "unshare --mount sleep 1000 & a=$!; sleep 0.3; nsenter --mount=/proc/$a/ns/mnt sleep 1000 & wait",
        ],
        &dir.join("out"),
    );
    let _g = KillOnDrop(root);
    wait_for("the entered child", 10, || {
        let k = children(root);
        k.len() == 2 && ns(k[1], "mnt") == ns(k[0], "mnt") && ns(k[0], "mnt") != ns(root, "mnt")
    });
    let kids = children(root);
    let _k: Vec<KillOnDrop> = kids.iter().map(|&p| KillOnDrop(p)).collect();
    let e = dump_fails(root, &dir.join("img"), &[]);
    assert!(
        e.contains(&format!("process {}", kids[1]))
            && e.contains("mount namespace")
            && e.contains("setns"),
        "{e}"
    );
    assert!(
        alive(root) && kids.iter().all(|&k| alive(k)),
        "the refused tree keeps running"
    );
}

/// A child that stayed in the root's mount namespace while its parent left it (the parent
/// forked it, then made a mount namespace of its own, as zdtm's tempfs_subns does): after a
/// restore the child is in the root's namespace again and the parent in its own, with its
/// tmpfs.
#[test]
fn child_left_in_the_roots_mount_namespace_stays_there() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help")]) {
        return;
    }
    let dir = scratch("nested-ns-left");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    let inner = format!(
        "sleep 1000 & exec unshare --mount --propagation private sh -c 'mount -t tmpfs left {mnt_s} && exec sleep 1000'"
    );
    let root = spawn(
        &["/bin/sh", "-c", &format!("sh -c \"{inner}\" & wait")],
        &dir.join("out"),
    );
    let _g = KillOnDrop(root);
    wait_for("the parent's tmpfs", 10, || {
        children(root)
            .first()
            .is_some_and(|&a| mounted_at(a, &mnt_s).len() == 1 && children(a).len() == 1)
    });
    let a = children(root)[0];
    let b = children(a)[0];
    let _k = [KillOnDrop(a), KillOnDrop(b)];
    let check = || {
        assert_eq!(
            ns(b, "mnt"),
            ns(root, "mnt"),
            "the child is in the root's namespace"
        );
        assert_ne!(ns(a, "mnt"), ns(root, "mnt"), "the parent has its own");
        assert_eq!(mounted_at(a, &mnt_s), vec!["tmpfs left rw".to_string()]);
        assert!(mounted_at(b, &mnt_s).is_empty());
    };
    check();
    let img = dir.join("img");
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    restore(&img);
    check();
}

/// A multi-threaded process that made a PID namespace for its children (a thread started,
/// then unshare(CLONE_NEWPID) and a fork: the child is PID 1 there): after a restore it has
/// its threads again, its next children still go into its child's namespace, and both go on.
#[test]
fn threaded_process_that_made_a_pid_namespace_keeps_its_threads() {
    let _host = copies_host_mounts();
    if !require_tools(&[("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-threads");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
threading.Thread(target=lambda: time.sleep(100000), daemon=True).start()
if libc.unshare(0x20000000) != 0:
    sys.exit(f"unshare: {ctypes.get_errno()}")
who = "parent"
if os.fork() == 0:
    who = "child"
n = 0
while True:
    print(f"{n} {who} pid={os.getpid()}", flush=True)
    n += 1
    time.sleep(0.1)
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let pid = spawn(&["python3", prog.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the child", 20, || {
        lines(&out).iter().any(|l| l.contains("child pid=1"))
    });
    let child = children(pid)[0];
    let _c = KillOnDrop(child);
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count()
    };
    let check = || {
        assert_eq!(threads(), 2, "the parent has its two threads");
        assert_eq!(ns(pid, "pid_for_children"), ns(child, "pid"));
        assert_ne!(ns(pid, "pid"), ns(child, "pid"));
        assert!(nspid(child).ends_with("\t1"), "{}", nspid(child));
    };
    check();
    let last = |who: &str| {
        lines(&out)
            .iter()
            .rev()
            .find(|l| l.contains(who))
            .and_then(|l| l.split(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let (p0, c0) = (last(" parent "), last(" child "));
    restore(&img);
    check();
    wait_for("both to go on", 20, || {
        last(" parent ") > p0 + 2 && last(" child ") > c0 + 2
    });
}

/// A POSIX timer that signals a thread by id (`SIGEV_THREAD_ID`), made by the init of a PID
/// namespace its parent made (its id 1 there): the id is read in the timer's owner's PID
/// namespace, so it is saved as the owner sees it. After a restore the timer still ticks to
/// that thread.
#[test]
fn timer_of_a_nested_init_signals_its_own_thread() {
    let _host = copies_host_mounts();
    if !require_tools(&[("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-pids");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"import ctypes, os, signal, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:
    sys.exit(f"unshare: {ctypes.get_errno()}")
child = os.fork()
n = 0
if child == 0:
    ticks = 0
    def tick(*_):
        global ticks
        ticks += 1
    signal.signal(signal.SIGUSR1, tick)
    class SigEvent(ctypes.Structure):
        _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int),
                    ("notify", ctypes.c_int), ("tid", ctypes.c_int), ("pad", ctypes.c_byte * 44)]
    SIGEV_THREAD_ID = 4
    sev = SigEvent(None, signal.SIGUSR1, SIGEV_THREAD_ID, threading.get_native_id())
    timer = ctypes.c_void_p()
    if libc.timer_create(1, ctypes.byref(sev), ctypes.byref(timer)) != 0:
        sys.exit(f"timer_create: {ctypes.get_errno()}")
    spec = (ctypes.c_long * 4)(0, 200_000_000, 0, 200_000_000)
    if libc.timer_settime(timer, 0, spec, None) != 0:
        sys.exit(f"timer_settime: {ctypes.get_errno()}")
    while True:
        print(f"{n} child pid={os.getpid()} ticks={ticks}", flush=True)
        n += 1
        time.sleep(0.1)
while True:
    print(f"{n} parent child={child}", flush=True)
    n += 1
    time.sleep(0.1)
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let pid = spawn(&["python3", prog.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let field = |who: &str, k: &str| -> String {
        lines(&out)
            .iter()
            .rev()
            .find(|l| l.contains(who))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix(k)))
            .unwrap_or_default()
            .to_string()
    };
    wait_for("both processes", 20, || {
        !field(" parent ", "child=").is_empty()
            && field(" child ", "ticks=").parse().unwrap_or(0) > 1
    });
    let child = children(pid)[0];
    let _c = KillOnDrop(child);
    assert_eq!(field(" child ", "pid="), "1");
    let timer_thread = || {
        std::fs::read_to_string(format!("/proc/{child}/timers"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("notify:"))
            .and_then(|v| v.split_once('.'))
            .map(|(_, tid)| tid.trim().to_string())
            .unwrap_or_default()
    };
    let check = || {
        assert_eq!(
            timer_thread(),
            child.to_string(),
            "the timer signals the child"
        );
    };
    check();
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let n = lines(&out).len();
    let ticks: u64 = field(" child ", "ticks=").parse().unwrap();
    restore(&img);
    check();
    wait_for("both to go on", 20, || {
        lines(&out).len() > n + 6
            && field(" child ", "ticks=").parse::<u64>().unwrap_or(0) > ticks + 2
    });
}

/// Hostile images of a tree with nested namespaces are refused by name before any process
/// is made: a process of a nested PID namespace whose first thread is another id, and a
/// proc mount of a nested mount namespace showing the PID namespace of no process of the
/// tree.
#[test]
fn hostile_nested_namespace_images_are_refused_before_anything_starts() {
    let _host = copies_host_mounts();
    use cryo::image::{pb, ImageDir, MNTS, PSTREE};
    let dir = scratch("nested-ns-hostile");
    let Some(sb) = start_sandbox(&dir) else {
        return;
    };
    let img = dir.join("img");
    dump(sb.tree[0], &img, &[]);
    wait_tree_gone(&img);
    let edited = |name: &str, edit: &dyn Fn(&ImageDir)| -> String {
        let copy = dir.join(name);
        let _ = std::fs::remove_dir_all(&copy);
        let o = std::process::Command::new("cp")
            .args(["-a", img.to_str().unwrap(), copy.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success());
        edit(&ImageDir::open(&copy).unwrap());
        std::fs::remove_file(copy.join("cryo-manifest.json")).unwrap();
        let o = cryo(&["restore", "-D", copy.to_str().unwrap(), "-d"]);
        assert!(!o.status.success(), "{name}: the restore must fail");
        for &p in &sb.tree {
            assert!(!alive(p), "{name}: process {p} was made");
        }
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = edited("first-thread", &|d| {
        let mut ps: Vec<pb::PstreeEntry> = d.read("pstree.img", PSTREE).unwrap();
        let init = ps.iter_mut().find(|p| p.cryo_ns_depth == Some(1)).unwrap();
        init.threads[0] = init.pid + 1;
        d.write("pstree.img", PSTREE, &ps).unwrap();
    });
    assert!(e.contains("first thread is not the process itself"), "{e}");
    let e = edited("proc-pid", &|d| {
        let mut found = false;
        for f in std::fs::read_dir(&d.path).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().to_string();
            if !name.starts_with("mountpoints-") {
                continue;
            }
            let mut m: Vec<pb::MntEntry> = d.read(&name, MNTS).unwrap();
            for e in m.iter_mut().filter(|e| e.cryo_proc_pid.is_some()) {
                e.cryo_proc_pid = Some(999_999);
                found = true;
            }
            d.write(&name, MNTS, &m).unwrap();
        }
        assert!(found, "the nested namespace has a proc mount");
    });
    assert!(e.contains("not a live process of the tree"), "{e}");
}

/// A process that made a PID namespace and forked twice into it: its first child is PID 1
/// there, the second PID 2. Both come back with their PIDs at both levels, and the parent
/// still forks into that namespace.
#[test]
fn second_child_forked_into_a_made_pid_namespace_keeps_its_pids() {
    let _host = copies_host_mounts();
    if !require_tools(&[("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-second");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:
    sys.exit(f"unshare: {ctypes.get_errno()}")
who = "parent"
for name in ("first", "second"):
    if os.fork() == 0:
        who = name
        break
    time.sleep(0.2)
n = 0
while True:
    print(f"{n} {who} pid={os.getpid()}", flush=True)
    n += 1
    time.sleep(0.1)
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let pid = spawn(&["python3", prog.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("both children", 20, || {
        let l = lines(&out);
        l.iter().any(|l| l.contains("first pid=1")) && l.iter().any(|l| l.contains("second pid=2"))
    });
    let kids = children(pid);
    assert_eq!(kids.len(), 2);
    let _k: Vec<KillOnDrop> = kids.iter().map(|&p| KillOnDrop(p)).collect();
    let check = || {
        assert_eq!(ns(kids[0], "pid"), ns(kids[1], "pid"));
        assert_eq!(ns(pid, "pid_for_children"), ns(kids[0], "pid"));
        assert!(nspid(kids[0]).ends_with("\t1"), "{}", nspid(kids[0]));
        assert!(nspid(kids[1]).ends_with("\t2"), "{}", nspid(kids[1]));
    };
    check();
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let n = lines(&out).len();
    restore(&img);
    check();
    wait_for("all three to go on", 20, || {
        let l = lines(&out);
        l.len() > n + 9
            && ["parent", "first pid=1", "second pid=2"]
                .iter()
                .all(|w| l[n..].iter().any(|x| x.contains(w)))
    });
}

/// The peer group (`shared:N`) of what is mounted at `at` in `pid`'s mount namespace.
fn peer_group(pid: i32, at: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(at))?
        .split(" - ")
        .next()?
        .split(' ')
        .skip(6)
        .find(|f| f.starts_with("shared:"))
        .map(str::to_string)
}

/// A peer group whose mounts are made at two moments of the restore: a shared tmpfs of the
/// nested mount namespace, and its bind below the namespace's /proc (made only once the
/// init of the PID namespace it shows exists). After a restore they are still one group.
#[test]
fn peer_group_with_a_mount_below_the_nested_proc_stays_one() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-peers");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    let out = dir.join("out");
    let script = format!(
        "unshare --mount --propagation private --pid --fork --mount-proc sh -c 'mount -t tmpfs peers {mnt_s} && mount --make-shared {mnt_s} && mount --bind {mnt_s} /proc/sys && echo ready && exec sleep 1000' & wait"
    );
    let root = spawn(&["/bin/sh", "-c", &script], &out);
    let _g = KillOnDrop(root);
    wait_for("the bind below /proc", 20, || {
        lines(&out).iter().any(|l| l == "ready")
    });
    let unshare = children(root)[0];
    let init = children(unshare)[0];
    let _k = [KillOnDrop(unshare), KillOnDrop(init)];
    let check = || {
        let (a, b) = (peer_group(init, &mnt_s), peer_group(init, "/proc/sys"));
        assert!(a.is_some() && a == b, "one peer group: {a:?} {b:?}");
    };
    check();
    let img = dir.join("img");
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    restore(&img);
    check();
}

/// The optional fields (propagation) of what is mounted at `at` in `pid`'s mount namespace.
fn propagation_fields(pid: i32, at: &str) -> Option<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let line = info.lines().rfind(|l| l.split(' ').nth(4) == Some(at))?;
    let head = line.split(" - ").next()?;
    Some(head.split(' ').skip(6).map(str::to_string).collect())
}

/// An unbindable tmpfs (zdtm's `unbindable`: a directory inside it was bound elsewhere before
/// it was made unbindable) in a mount namespace of the tree. After a restore it is unbindable
/// again (not only mounted: zdtm's own check passed while it came back bindable), no bind of
/// it can be made, and the bind of its directory shows the directory's file.
#[test]
fn an_unbindable_mount_stays_unbindable() {
    if !require_tools(&[("unshare", "--help"), ("nsenter", "--help")]) {
        return;
    }
    let _host = copies_host_mounts();
    let dir = scratch("nested-ns-unbindable");
    let (u, b) = (dir.join("u"), dir.join("b"));
    std::fs::create_dir_all(&u).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (u_s, b_s) = (u.to_str().unwrap(), b.to_str().unwrap());
    let out = dir.join("out");
    let script = format!(
        "unshare --mount --propagation private sh -c 'mount -t tmpfs unbindable {u_s} && mkdir {u_s}/aux && echo kept > {u_s}/aux/f && mount --bind {u_s}/aux {b_s} && mount --make-unbindable {u_s} && echo ready && exec sleep 1000' & wait"
    );
    let root = spawn(&["/bin/sh", "-c", &script], &out);
    let _g = KillOnDrop(root);
    wait_for("the unbindable mount", 20, || {
        lines(&out).iter().any(|l| l == "ready")
    });
    let inner = children(root)[0];
    let _k = KillOnDrop(inner);
    let check = |pid: i32| {
        let f = propagation_fields(pid, u_s).expect("the tmpfs is mounted");
        assert!(
            f.iter().any(|o| o == "unbindable") && !f.iter().any(|o| o.starts_with("shared:")),
            "{u_s} is not unbindable: {f:?}"
        );
        let bind = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "mount", "--bind", u_s, b_s])
            .output()
            .unwrap();
        assert!(
            !bind.status.success(),
            "a bind of the unbindable {u_s} was made"
        );
        let kept = std::fs::read_to_string(format!("/proc/{pid}/root{b_s}/f")).unwrap_or_default();
        assert_eq!(kept, "kept\n", "the bind of the directory inside it");
    };
    check(inner);
    let img = dir.join("img");
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    restore(&img);
    check(children(root)[0]);
}

/// pidfds and file owners are saved with the tree's PIDs and named at restore as each holder
/// sees them: a process of the tree's PID namespace holds a pidfd of its child, the init of a
/// PID namespace it made (PID 1 there), and owns a pipe's signals (`F_SETOWN`) with it; the
/// child holds the same pipe (one open file). After a restore the pidfd and the owner are that
/// child again (not PID 1 of the tree's namespace), and the child's restore, which sees the
/// owner as 1, does not fail.
#[test]
fn pidfd_and_file_owner_name_a_nested_init() {
    let _host = copies_host_mounts();
    if !require_tools(&[("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-pidfd");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"import ctypes, fcntl, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:
    sys.exit(f"unshare: {ctypes.get_errno()}")
r, w = os.pipe()
child = os.fork()
n = 0
if child == 0:
    while True:
        # One write a line: both processes write to one file, in step after a restore.
        os.write(1, f"{n} child pid={os.getpid()} own={fcntl.fcntl(r, fcntl.F_GETOWN)}\n".encode())
        n += 1
        time.sleep(0.1)
pidfd = os.pidfd_open(child)
fcntl.fcntl(r, fcntl.F_SETOWN, child)
while True:
    own = fcntl.fcntl(r, fcntl.F_GETOWN)
    os.write(1, f"{n} parent pidfd={pidfd} child={child} own={own}\n".encode())
    n += 1
    time.sleep(0.1)
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let pid = spawn(&["python3", prog.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let field = |who: &str, k: &str| -> String {
        lines(&out)
            .iter()
            .rev()
            .find(|l| l.contains(who))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix(k)))
            .unwrap_or_default()
            .to_string()
    };
    wait_for("both processes", 20, || {
        !field(" parent ", "own=").is_empty() && field(" child ", "own=") == "1"
    });
    let child = children(pid)[0];
    let _c = KillOnDrop(child);
    let pidfd = field(" parent ", "pidfd=");
    let pidfd_target = || {
        std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{pidfd}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(pidfd_target(), child.to_string());
    assert_eq!(field(" parent ", "own="), child.to_string());
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let n = lines(&out).len();
    restore(&img);
    assert_eq!(
        pidfd_target(),
        child.to_string(),
        "the pidfd names the child"
    );
    wait_for("both to go on", 20, || {
        let l = lines(&out);
        l.len() > n + 6
            && l[n..].iter().any(|x| x.contains(" parent "))
            && l[n..].iter().any(|x| x.contains(" child "))
    });
    assert_eq!(
        field(" parent ", "own="),
        child.to_string(),
        "the owner is the child"
    );
    assert_eq!(
        field(" child ", "own="),
        "1",
        "the child sees itself as the owner"
    );
}
/// A mount of a nested mount namespace that its parent namespace does not have, under a copy
/// that is still a peer of the parent's mount (`unshare --propagation unchanged` under a
/// shared mount; the new mount made private, a mount put on it, and its propagated copy then
/// unmounted in the parent namespace, which leaves the busy one in the child): mounted again
/// at restore it would propagate to the parent namespace (cryo's). The dump refuses it by
/// name and the tree keeps running.
#[test]
fn new_mount_under_a_copy_still_shared_with_the_parent_is_refused() {
    let _host = host_mounts();
    if !require_tools(&[("unshare", "--help"), ("mount", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-shared-copy");
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let base_s = base.to_str().unwrap().to_string();
    sh(&format!(
        "mount -t tmpfs cryo-shared-base {base_s} && mount --make-shared {base_s} && mkdir {base_s}/x"
    ));
    // Takes the shared tmpfs (and what propagated under it) out of cryo's namespace.
    let _u = Unmount::at(&base_s);
    let root = spawn(
        &[
            "/bin/sh",
            "-c",
            &format!(
                "unshare --mount --propagation unchanged sh -c 'mount -t tmpfs cryo-new {base_s}/x && mount --make-private {base_s}/x && mkdir {base_s}/x/y && mount -t tmpfs cryo-sub {base_s}/x/y && touch {base_s}/x/ready && exec sleep 1000' & wait"
            ),
        ],
        &dir.join("out"),
    );
    let _g = KillOnDrop(root);
    wait_for("the nested mount", 10, || {
        children(root).first().is_some_and(|&c| {
            mounted_at(c, &format!("{base_s}/x")).len() == 1
                && std::path::Path::new(&format!("/proc/{c}/root{base_s}/x/ready")).exists()
        })
    });
    let child = children(root)[0];
    let _c = KillOnDrop(child);
    // cryo's namespace got the propagated copy of the new mount: take it away.
    sh(&format!("umount {base_s}/x"));
    let me = std::process::id().cast_signed();
    assert!(mounted_at(me, &format!("{base_s}/x")).is_empty());
    assert_eq!(mounted_at(child, &format!("{base_s}/x")).len(), 1);
    let e = dump_fails(root, &dir.join("img"), &[]);
    assert!(
        e.contains(&format!("mount {base_s}/x"))
            && e.contains("still shared with its parent namespace's mount"),
        "{e}"
    );
    assert!(
        alive(root) && alive(child),
        "the refused tree keeps running"
    );
}

/// The child of [`file_of_the_parents_namespace_stays_the_parents`]: counts on the fd it
/// inherited (argv[1]), one number a line, every 100 ms.
const COUNT_ON_FD: &str = r#"
import os, sys, time
fd, n = int(sys.argv[1]), 0
while True:
    os.write(fd, f"{n}\n".encode())
    n += 1
    time.sleep(0.1)
"#;

/// A child that made a mount namespace of its own and mounted a tmpfs over the directory
/// of a file it inherited from its parent, holding the file by the same name in both (a
/// sandbox helper given a log file, say): after a restore, what the child writes on the fd
/// still reaches its parent's file (the host's), not the one of the same name on its own
/// tmpfs, and the fd is on the parent's mount. The parent closed its fd (else the child's
/// would be taken over from it).
#[test]
fn file_of_the_parents_namespace_stays_the_parents() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-parent-file");
    let d = dir.join("d");
    std::fs::create_dir_all(&d).unwrap();
    let d_s = d.to_str().unwrap().to_string();
    let f = d.join("f");
    std::fs::write(&f, "").unwrap();
    let child = dir.join("child.py");
    std::fs::write(&child, COUNT_ON_FD).unwrap();
    let child = child.to_str().unwrap();
    let parent = format!(
        "import os, subprocess\n\
         fd = os.open('{d_s}/f', os.O_WRONLY | os.O_APPEND)\n\
         p = subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', \
         'mount -t tmpfs inner {d_s} && echo inner >{d_s}/f && exec python3 {child} %d' % fd], \
         pass_fds=[fd])\n\
         os.close(fd)\n\
         p.wait()\n"
    );
    let root = spawn(&["python3", "-c", &parent], &dir.join("out"));
    let _g = KillOnDrop(root);
    wait_for("the child's count", 20, || lines(&f).len() > 2);
    let kid = children(root)[0];
    let _k = KillOnDrop(kid);
    let inner = format!("/proc/{kid}/root{d_s}/f");
    // The fd's mount (fdinfo mnt_id) is one of the parent's, not the child's copy.
    let fd_mount = |pid: i32| -> String {
        let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == f))
            .expect("the child holds the parent's file")
            .file_name();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .unwrap()
            .trim()
            .to_string()
    };
    let ids = |pid: i32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    let check = || {
        let m = fd_mount(kid);
        assert!(ids(root).contains(&m), "fd on mount {m}, not the parent's");
        assert!(!ids(kid).contains(&m), "fd on mount {m}, the child's own");
        assert_eq!(std::fs::read_to_string(&inner).unwrap(), "inner\n");
    };
    check();
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let at = lines(&f).len();
        restore(&img);
        count_goes_on(&f, at);
        check();
    }
}

/// Binds a datagram socket at argv[1] and, every 100 ms, sends itself a numbered message
/// by that path from a new socket and reads it back: writes "N ok" (its own message came
/// back), "N bad" or "N err ERRNO" to argv[2].
const SELF_BY_PATH: &str = r#"
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(path)
n = 0
with open(out, "a", buffering=1) as f:
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        msg = f"{os.getpid()}-{n}".encode()
        try:
            c.sendto(msg, path)
            srv.settimeout(1)
            got = srv.recv(100)
            f.write(f"{n} {'ok' if got == msg else 'bad'}\n")
        except OSError as e:
            f.write(f"{n} err {e.errno}\n")
        c.close()
        n += 1
        time.sleep(0.1)
"#;

/// A parent and its child that made a mount namespace of its own (a tmpfs over the
/// directory) each bind a unix socket at the same path, two sockets in two namespaces: after
/// a restore each still reaches its own by that path (the child's is bound in its
/// namespace, not in the parent's, where it would take the parent's name).
#[test]
fn sockets_bound_at_one_path_in_two_mount_namespaces_stay_apart() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-sockets");
    let d = dir.join("d");
    std::fs::create_dir_all(&d).unwrap();
    let d_s = d.to_str().unwrap().to_string();
    let prog = dir.join("sock.py");
    std::fs::write(&prog, SELF_BY_PATH).unwrap();
    let prog = prog.to_str().unwrap();
    let (out_p, out_c) = (dir.join("out-parent"), dir.join("out-child"));
    let script = format!(
        "unshare --mount --propagation private sh -c 'mount -t tmpfs inner {d_s} && exec python3 {prog} {d_s}/sock {}' & exec python3 {prog} {d_s}/sock {}",
        out_c.display(),
        out_p.display()
    );
    let root = spawn(&["/bin/sh", "-c", &script], &dir.join("out"));
    let _g = KillOnDrop(root);
    let ok_from = |out: &Path, from: usize| {
        let l = lines(out);
        l.len() > from + 2 && l[from..].iter().all(|l| l.ends_with(" ok"))
    };
    wait_for("both to reach their own socket", 20, || {
        ok_from(&out_p, 0) && ok_from(&out_c, 0)
    });
    let kid = children(root)[0];
    let _k = KillOnDrop(kid);
    assert_ne!(ns(kid, "mnt"), ns(root, "mnt"));
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let (at_p, at_c) = (lines(&out_p).len(), lines(&out_c).len());
        restore(&img);
        wait_for("both to go on", 20, || {
            lines(&out_p).len() > at_p + 3 && lines(&out_c).len() > at_c + 3
        });
        for out in [&out_p, &out_c] {
            let l = lines(out);
            assert!(
                l.iter().all(|l| l.ends_with(" ok")),
                "{}: {:?}",
                out.display(),
                &l[l.len().saturating_sub(8)..]
            );
            let n: Vec<u64> = l
                .iter()
                .map(|l| l.split(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(
                n.windows(2).all(|w| w[1] == w[0] + 1),
                "gap or restart: {n:?}"
            );
        }
    }
}

/// Holds its directory argv[1] at fd 100 and makes a file there every 100 ms, named by a
/// counter.
const MAKE_FILES: &str = r#"
import os, sys, time
d = sys.argv[1]
os.dup2(os.open(d, os.O_RDONLY | os.O_DIRECTORY), 100)
n = 0
while True:
    open(f"{d}/{n}", "w").close()
    n += 1
    time.sleep(0.1)
"#;

/// Starts [`MAKE_FILES`] (argv[2]) in a mount namespace of its own over a tmpfs at
/// argv[1], watches the directory it holds through /proc/CHILD/fd/100 with inotify
/// (IN_CREATE) and writes the name of each file made to argv[3], and to the file "log" it
/// opened in that directory too.
const WATCH_CHILD: &str = r#"
import ctypes, os, struct, subprocess, sys, time
d, child, out = sys.argv[1:4]
p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      f"mount -t tmpfs inner {d} && exec python3 {child} {d}"])
target = f"/proc/{p.pid}/fd/100"
while not os.path.exists(target):
    time.sleep(0.05)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if fd < 0 or libc.inotify_add_watch(fd, target.encode(), 0x100) < 0:
    sys.exit(f"inotify: {ctypes.get_errno()}")
log = os.open(f"{target}/log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
with open(out, "a", buffering=1) as f:
    while True:
        buf = os.read(fd, 4096)
        off = 0
        while off < len(buf):
            _, _, _, ln = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16:off + 16 + ln].rstrip(b"\0").decode()
            off += 16 + ln
            if name != "log":
                f.write(name + "\n")
                os.write(log, f"{name}\n".encode())
"#;

/// A parent watching, with inotify, a directory of the tmpfs its child mounted in a mount
/// namespace of its own (through /proc/CHILD/fd/N: the parent's namespace has no such
/// mount), and writing to a file it opened there: after a restore it still hears of each
/// file the child makes there, and its writes still reach that file (opened once the
/// child's namespace exists again).
#[test]
fn inotify_watch_on_a_childs_mount_namespace_still_hears() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-inotify");
    let d = dir.join("d");
    std::fs::create_dir_all(&d).unwrap();
    let (child, parent) = (dir.join("child.py"), dir.join("parent.py"));
    std::fs::write(&child, MAKE_FILES).unwrap();
    std::fs::write(&parent, WATCH_CHILD).unwrap();
    let out = dir.join("names");
    let root = spawn(
        &[
            "python3",
            parent.to_str().unwrap(),
            d.to_str().unwrap(),
            child.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("out"),
    );
    let _g = KillOnDrop(root);
    wait_for("the parent to hear of files", 20, || lines(&out).len() > 2);
    let kid = children(root)[0];
    let _k = KillOnDrop(kid);
    assert_ne!(ns(kid, "mnt"), ns(root, "mnt"));
    assert!(
        std::fs::read_dir(&d).unwrap().next().is_none(),
        "the files are the child's"
    );
    let last = |l: &[String]| l.last().and_then(|s| s.parse::<u64>().ok()).unwrap();
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let before = lines(&out);
        restore(&img);
        wait_for("the parent to hear of new files", 20, || {
            lines(&out).len() > before.len() + 3
        });
        let after = lines(&out);
        let new: Vec<u64> = after[before.len()..]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let log = std::path::PathBuf::from(format!("/proc/{kid}/root{}/log", d.display()));
        wait_for("the log in the child's tmpfs to have it all", 10, || {
            lines(&log).len() >= after.len()
        });
        assert_eq!(
            lines(&log)[..after.len()],
            after[..],
            "the log in the child's tmpfs"
        );
        assert!(
            new.first().is_some_and(|&n| n > last(&before))
                && new.windows(2).all(|w| w[1] == w[0] + 1),
            "files heard of after the restore: {new:?}, before up to {}",
            last(&before)
        );
    }
}

/// A sandbox's child (bubblewrap's shape): in a mount namespace of its own it mounts a
/// tmpfs as its new root, with a file, a read-only tmpfs inside and a bind of a host
/// directory, `pivot_root`s into it and detaches the old root; then, every 100 ms, writes a
/// counter to argv[2]/out and what it sees to argv[2]/seen (through the bind).
const PIVOTED: &str = r#"
import ctypes, os, sys, time
d, h = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def sh(c):
    assert os.system(c) == 0, c
sh(f"mount -t tmpfs newroot {d}")
with open(f"{d}/data", "w") as f:
    f.write("root-data\n")
for s in ("sub", "host", "old"):
    os.mkdir(f"{d}/{s}")
sh(f"mount -t tmpfs sub {d}/sub")
with open(f"{d}/sub/x", "w") as f:
    f.write("sub-data\n")
sh(f"mount -o remount,bind,ro {d}/sub")
sh(f"mount --bind {h} {d}/host")
os.chdir(d)
if libc.syscall(155, b".", b"old") != 0:
    raise OSError(ctypes.get_errno(), "pivot_root")
if libc.umount2(b"/old", 2) != 0:
    raise OSError(ctypes.get_errno(), "umount2")
os.rmdir("/old")
os.chdir("/")
n = 0
with open("/host/out", "a", buffering=1) as out:
    while True:
        seen = f"{open('/data').read().strip()} {open('/sub/x').read().strip()} cwd={os.getcwd()} old={os.path.exists('/old')}"
        with open("/host/seen", "w") as s:
            s.write(seen)
        out.write(f"{n}\n")
        n += 1
        time.sleep(0.1)
"#;

/// The mounts `pid` sees: (mount point, root, file system, read-only), sorted.
fn mount_list(pid: i32) -> Vec<(String, String, String, bool)> {
    let mut v: Vec<_> = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(" - ").unwrap();
            let f: Vec<&str> = a.split(' ').collect();
            let ro = f[5].split(',').any(|o| o == "ro");
            let fs = b.split(' ').next().unwrap().to_string();
            (f[4].to_string(), f[3].to_string(), fs, ro)
        })
        .collect();
    v.sort();
    v
}

/// A child of the tree that pivoted into a new root in a mount namespace of its own (the
/// old root detached, as bubblewrap and Chrome's sandbox do) comes back with that root: the
/// same mounts (the tmpfs root with its file, a read-only tmpfs, the bind of the host's
/// directory it writes through), root and working directory `/`, no old root left, its
/// program (on the root it left) the same; its count goes on, twice; nothing of it is
/// mounted in cryo's namespace.
#[test]
fn child_that_pivoted_into_a_new_root_keeps_it() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-pivoted");
    let (d, h) = (dir.join("d"), dir.join("host"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(&h).unwrap();
    let (d_s, h_s) = (d.to_str().unwrap(), h.to_str().unwrap());
    let child = dir.join("child.py");
    std::fs::write(&child, PIVOTED).unwrap();
    let parent = format!(
        "import subprocess\n\
         subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'python3', \
         '{}', '{d_s}', '{h_s}']).wait()\n",
        child.display()
    );
    let root = spawn(&["python3", "-c", &parent], &dir.join("log"));
    let _g = KillOnDrop(root);
    let out = h.join("out");
    wait_for("the sandboxed count", 20, || lines(&out).len() > 2);
    let kid = children(root)[0];
    let _k = KillOnDrop(kid);
    let mounts = mount_list(kid);
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    assert_eq!((mounts[0].0.as_str(), mounts[0].2.as_str()), ("/", "tmpfs"));
    let exe = std::fs::read_link(format!("/proc/{kid}/exe")).unwrap();
    let seen = "root-data sub-data cwd=/ old=False";
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let at = lines(&out).len();
        restore(&img);
        count_goes_on(&out, at);
        let kid = children(root)[0];
        assert_eq!(mount_list(kid), mounts);
        assert_eq!(std::fs::read_to_string(h.join("seen")).unwrap(), seen);
        for l in ["root", "cwd"] {
            assert_eq!(
                std::fs::read_link(format!("/proc/{kid}/{l}")).unwrap(),
                Path::new("/")
            );
        }
        assert_eq!(std::fs::read_link(format!("/proc/{kid}/exe")).unwrap(), exe);
        // Written on the root before the dump: the tmpfs root's content came back (its
        // read-write mode is in `mount_list`).
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{kid}/root/data")).unwrap(),
            "root-data\n"
        );
        let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !own.contains(d_s) && !own.contains(" /old "),
            "a mount of the sandbox is left in cryo's namespace:\n{own}"
        );
    }
}

/// The init of a new PID namespace (`unshare --mount --pid --fork`: unshare made the mount
/// namespace, its child is the init) builds a new root with a proc mount of its own PID
/// namespace and pivots into it, the whole namespace (unshare too) moving there.
const PIVOTED_PROC: &str = r#"
import ctypes, os, sys, time
d, h = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def sh(c):
    assert os.system(c) == 0, c
sh(f"mount -t tmpfs newroot {d}")
for s in ("proc", "host", "old"):
    os.mkdir(f"{d}/{s}")
sh(f"mount -t proc proc {d}/proc")
sh(f"mount --bind {h} {d}/host")
os.chdir(d)
if libc.syscall(155, b".", b"old") != 0:
    raise OSError(ctypes.get_errno(), "pivot_root")
if libc.umount2(b"/old", 2) != 0:
    raise OSError(ctypes.get_errno(), "umount2")
os.rmdir("/old")
os.chdir("/")
n = 0
with open("/host/out", "a", buffering=1) as out:
    while True:
        procs = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        with open("/host/seen", "w") as s:
            s.write(f"self={os.readlink('/proc/self')} procs={procs}")
        out.write(f"{n}\n")
        n += 1
        time.sleep(0.1)
"#;

/// A mount namespace that pivoted into a new root holding a proc mount of a PID namespace
/// whose init is restored after the namespace's first task (its parent, unshare): the root is
/// built and pivoted into when unshare is restored, and the proc mount is made in it once the
/// init exists, before it runs (cryo refused this: "cannot mount it yet"). The init's /proc
/// shows its own PID namespace again (itself as 1, its parent's namespace not), its count
/// goes on, twice, and nothing of it is mounted in cryo's namespace.
#[test]
fn pivoted_namespace_with_the_proc_of_a_later_pid_namespace() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-pivoted-proc");
    let (d, h) = (dir.join("d"), dir.join("host"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all(&h).unwrap();
    let (d_s, h_s) = (d.to_str().unwrap(), h.to_str().unwrap());
    let child = dir.join("child.py");
    std::fs::write(&child, PIVOTED_PROC).unwrap();
    let parent = format!(
        "import subprocess\n\
         subprocess.Popen(['unshare', '--mount', '--pid', '--fork', '--propagation', \
         'private', 'python3', '{}', '{d_s}', '{h_s}']).wait()\n",
        child.display()
    );
    // From "/": pivot_root moves the root and working directory of every process of the
    // namespace that has them at the old root (unshare's too; one elsewhere would be left
    // on the detached old root).
    let root = spawn(
        &["sh", "-c", "cd / && exec python3 -c \"$0\"", &parent],
        &dir.join("log"),
    );
    let _g = KillOnDrop(root);
    let out = h.join("out");
    wait_for("the sandboxed count", 20, || lines(&out).len() > 2);
    let unshare = children(root)[0];
    let init = children(unshare)[0];
    let _k = (KillOnDrop(unshare), KillOnDrop(init));
    let mounts = mount_list(init);
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    assert!(mounts.iter().any(|m| m.0 == "/proc" && m.2 == "proc"));
    let seen = std::fs::read_to_string(h.join("seen")).unwrap();
    assert!(seen.starts_with("self=1 procs=[1]"), "{seen}");
    let pids = (nspid(unshare), nspid(init));
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let at = lines(&out).len();
        restore(&img);
        count_goes_on(&out, at);
        assert_eq!(children(root), vec![unshare]);
        assert_eq!(children(unshare), vec![init]);
        assert_eq!((nspid(unshare), nspid(init)), pids);
        assert_eq!(mount_list(init), mounts);
        assert_eq!(mount_list(unshare), mounts);
        // Written after the restore: the proc mount shows the init's own namespace.
        std::fs::remove_file(h.join("seen")).unwrap();
        // Written whole: open("w") makes it empty first.
        wait_for("a new status", 10, || {
            std::fs::read_to_string(h.join("seen")).is_ok_and(|s| s.contains("procs="))
        });
        let now = std::fs::read_to_string(h.join("seen")).unwrap();
        assert!(now.starts_with("self=1 procs=[1]"), "{now}");
        let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !own.contains(d_s) && !own.contains(" /old "),
            "a mount of the sandbox is left in cryo's namespace:\n{own}"
        );
    }
}

/// In a mount namespace of its own (no `pivot_root`): mounts a tmpfs at argv[1] (D) with a
/// file and a bind of the host directory argv[2] at D/host, and the same bind at
/// argv[3]/host (E, a plain directory); forks a child that `chroot`s into D (a mount's
/// root), then itself `chroot`s into E (a directory of the namespace's root mount, so its
/// mountinfo shows only E/host). Each then writes a counter every 100 ms to /host/out-NAME.
const CHROOTED: &str = r#"
import os, sys, time
d, h, e = sys.argv[1], sys.argv[2], sys.argv[3]
def sh(c):
    assert os.system(c) == 0, c
sh(f"mount -t tmpfs chrooted {d}")
with open(f"{d}/data", "w") as f:
    f.write("root-data\n")
os.mkdir(f"{d}/host")
sh(f"mount --bind {h} {d}/host")
sh(f"mount --bind {h} {e}/host")
if os.fork() == 0:
    os.chroot(d)
    name = "kid"
else:
    os.chroot(e)
    name = "maker"
os.chdir("/")
n = 0
with open(f"/host/out-{name}", "a", buffering=1) as out:
    while True:
        out.write(f"{n}\n")
        n += 1
        time.sleep(0.1)
"#;

/// Two tasks of a mount namespace nested in the tree, each `chroot`ed (no `pivot_root`):
/// the one that made the namespace into a directory of its root mount, its child into a
/// tmpfs mounted there. Neither is taken for a pivot_root (the namespace keeps the root it
/// had, copied from the tree's): after a restore each has the same root, sees the same
/// mounts, its count goes on, twice; nothing of it is mounted in cryo's namespace.
#[test]
fn chrooted_tasks_in_a_nested_mount_namespace_keep_their_roots() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-chrooted");
    let (d, h, e) = (dir.join("d"), dir.join("host"), dir.join("e"));
    for p in [&d, &h, &e.join("host")] {
        std::fs::create_dir_all(p).unwrap();
    }
    let child = dir.join("child.py");
    std::fs::write(&child, CHROOTED).unwrap();
    let parent = format!(
        "import subprocess\n\
         subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'python3', \
         '{}', '{}', '{}', '{}']).wait()\n",
        child.display(),
        d.display(),
        h.display(),
        e.display()
    );
    let root = spawn(&["python3", "-c", &parent], &dir.join("log"));
    let _g = KillOnDrop(root);
    let (out_m, out_k) = (h.join("out-maker"), h.join("out-kid"));
    wait_for("both chrooted counts", 20, || {
        lines(&out_m).len() > 2 && lines(&out_k).len() > 2
    });
    let tasks = || {
        let maker = children(root)[0];
        (maker, children(maker)[0])
    };
    let (maker, kid) = tasks();
    let _k = [KillOnDrop(maker), KillOnDrop(kid)];
    let roots =
        |m: i32, k: i32| [m, k].map(|p| std::fs::read_link(format!("/proc/{p}/root")).unwrap());
    let before = (roots(maker, kid), mount_list(maker), mount_list(kid));
    assert_eq!(before.0, [e.clone(), d.clone()]);
    assert_eq!(
        before.1.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["/host"]
    );
    assert_eq!(
        before.2.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["/", "/host"]
    );
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        dump(root, &img, &[]);
        wait_tree_gone(&img);
        let (at_m, at_k) = (lines(&out_m).len(), lines(&out_k).len());
        restore(&img);
        count_goes_on(&out_m, at_m);
        count_goes_on(&out_k, at_k);
        let (maker, kid) = tasks();
        assert_eq!(
            (roots(maker, kid), mount_list(maker), mount_list(kid)),
            before
        );
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{kid}/root/data")).unwrap(),
            "root-data\n"
        );
        assert_ne!(ns(maker, "mnt"), ns(root, "mnt"));
        let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !own.contains(dir.to_str().unwrap()),
            "a mount of the chrooted tasks is left in cryo's namespace:\n{own}"
        );
    }
}

/// A child that, in a mount namespace of its own, bound a directory (`a`) of a tmpfs of its
/// parent's namespace (cryo's) at a place of its own and unmounted its copy of the tmpfs
/// (the bind's source is then only in the parent's namespace); then, in the parent's namespace, a
/// bind of the same tmpfs's other directory (`b`) was put over `a`'s path. The path the
/// bind came from now leads to `b` (same device, other inode): binding it again at restore
/// would show `b`'s files as `a`'s. The dump refuses the mount by name and the tree keeps
/// running, its bind still showing `a`'s file.
#[test]
fn bind_from_a_parent_path_now_leading_elsewhere_is_refused() {
    let _host = host_mounts();
    if !require_tools(&[("unshare", "--help"), ("mount", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-outer-inode");
    let (x, y) = (dir.join("x"), dir.join("y"));
    std::fs::create_dir_all(&x).unwrap();
    std::fs::create_dir_all(&y).unwrap();
    let (x_s, y_s) = (
        x.to_str().unwrap().to_string(),
        y.to_str().unwrap().to_string(),
    );
    sh(&format!(
        "mount -t tmpfs cryo-outer {x_s} && mount --make-private {x_s} && mkdir {x_s}/a {x_s}/b && echo a >{x_s}/a/f && echo b >{x_s}/b/f"
    ));
    // Takes the tmpfs (and the bind over its `a`) out of cryo's namespace.
    let _u = Unmount::at(&x_s);
    let ready = dir.join("ready");
    let root = spawn(
        &[
            "/bin/sh",
            "-c",
            &format!(
                "unshare --mount --propagation private sh -c 'mount --bind {x_s}/a {y_s} && umount {x_s} && touch {} && exec sleep 1000' & wait",
                ready.display()
            ),
        ],
        &dir.join("out"),
    );
    let _g = KillOnDrop(root);
    wait_for("the child's bind", 10, || ready.exists());
    let child = children(root)[0];
    let _c = KillOnDrop(child);
    sh(&format!("mount --bind {x_s}/b {x_s}/a"));
    let f = format!("/proc/{child}/root{y_s}/f");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\n");
    assert_eq!(
        std::fs::read_to_string(format!("{x_s}/a/f")).unwrap(),
        "b\n"
    );
    let e = dump_fails(root, &dir.join("img"), &[]);
    assert!(
        e.contains(&format!("mount {y_s}")) && e.contains("same device and inode"),
        "{e}"
    );
    assert!(
        alive(root) && alive(child),
        "the refused tree keeps running"
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a\n");
}

/// zdtm's mntns_link_remap/mntns_link_ghost shape, the parent's side: with D/0 a tmpfs (dirs
/// 1 and 2) and D/1 a bind of D/0/1 (made by the test), opens D/1/F, links it as D/0/2/F
/// (and D/0/F when argv[2] is "1"), starts the child in a mount namespace of its own with
/// the fd, closes its own and, once the child is ready, removes D/0/1/F and D/0/2/F.
const LINKED_PARENT: &str = r#"
import os, subprocess, sys
d, keep, child = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
fd = os.open(f"{d}/1/F", os.O_CREAT | os.O_RDWR, 0o600)
os.write(fd, b"data\n")
os.link(f"{d}/0/1/F", f"{d}/0/2/F")
if keep:
    os.link(f"{d}/0/1/F", f"{d}/0/F")
r, w = os.pipe()
p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "python3", child,
                      d, str(fd), str(w)], pass_fds=[fd, w])
os.close(fd)
os.close(w)
os.read(r, 1)
os.unlink(f"{d}/0/1/F")
os.unlink(f"{d}/0/2/F")
p.wait()
"#;

/// The child: unmounts D/1 and D/0 in its namespace after binding D/0/2 at D/2, opens F
/// there, so it holds the file through the parent's D/1 (the fd it was given) and its own
/// D/2; then every 100 ms prints a counter, the two fds' mount ids, the link count, whether
/// both are one inode, and the file's bytes.
const LINKED_CHILD: &str = r#"
import os, sys, time
d, fd1, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def sh(c):
    assert os.system(c) == 0, c
sh(f"umount {d}/1")
sh(f"mount --bind {d}/0/2 {d}/2")
sh(f"umount {d}/0")
fd2 = os.open(f"{d}/2/F", os.O_RDWR)
os.close(w)
def mnt(fd):
    return [l for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("mnt_id:")][0].split()[1]
n = 0
while True:
    s1, s2 = os.fstat(fd1), os.fstat(fd2)
    print(f"{n} {mnt(fd1)} {mnt(fd2)} {s1.st_nlink} {s1.st_ino == s2.st_ino} {os.pread(fd2, 9, 0)!r}", flush=True)
    n += 1
    time.sleep(0.1)
"#;

/// The id of the mount at `at` in `pid`'s namespace (the topmost).
fn mount_id_at(pid: i32, at: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(at))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
}

/// Starts the LINKED_PARENT/LINKED_CHILD tree in `dir` (mounts D/0, D/1 in cryo's namespace,
/// taken away by the returned guard): (root, child, output, D, guards).
fn start_linked(
    dir: &Path,
    keep: bool,
) -> (
    i32,
    i32,
    std::path::PathBuf,
    String,
    Vec<KillOnDrop>,
    Unmount,
) {
    let d = dir.join("d");
    for s in ["0", "1", "2"] {
        std::fs::create_dir_all(d.join(s)).unwrap();
    }
    let d_s = d.to_str().unwrap().to_string();
    let u = Unmount(vec![d.join("1"), d.join("0")]);
    sh(&format!(
        "mount -t tmpfs cryo-linked {d_s}/0 && mount --make-private {d_s}/0 && mkdir {d_s}/0/1 {d_s}/0/2 && mount --bind {d_s}/0/1 {d_s}/1 && mount --make-private {d_s}/1"
    ));
    let (parent, child) = (dir.join("parent.py"), dir.join("child.py"));
    std::fs::write(&parent, LINKED_PARENT).unwrap();
    std::fs::write(&child, LINKED_CHILD).unwrap();
    let out = dir.join("out");
    let root = spawn(
        &[
            "python3",
            parent.to_str().unwrap(),
            &d_s,
            if keep { "1" } else { "0" },
            child.to_str().unwrap(),
        ],
        &out,
    );
    let g = KillOnDrop(root);
    wait_for("the child's report", 20, || lines(&out).len() > 2);
    let kid = children(root)[0];
    (root, kid, out, d_s, vec![g, KillOnDrop(kid)], u)
}

/// zdtm's mntns_link_remap, our program: a child in a mount namespace of its own holds a
/// file removed from the names it was opened by, still linked elsewhere, through two
/// mounts: its parent's bind D/1 (unmounted in the child's namespace) and its own D/2.
/// After a restore with `--link-remap` (twice) each fd is on the mount it was on (the
/// parent namespace's D/1 and the child's D/2), on one inode with one link, with its bytes;
/// no temporary name is left on the file system.
#[test]
fn removed_file_held_through_two_namespaces_mounts_keeps_both() {
    held_through_two_namespaces_mounts("nested-ns-link-remap", true);
}

/// zdtm's mntns_link_ghost, our program: as above, with the file left without any name (a
/// ghost), held through the two namespaces' mounts, which show it at two places of its file
/// system (/1/F and /2/F of D/0's tmpfs). After a restore (twice) each fd is on the mount it
/// was on (the parent namespace's D/1 and the child's D/2), on one inode with no link left,
/// with its bytes; no name made for the restore is left (cryo made it again at one place and
/// linked it into the other through the fd's mount, as CRIU links it).
#[test]
fn deleted_file_held_through_two_namespaces_mounts_comes_back() {
    held_through_two_namespaces_mounts("nested-ns-link-ghost", false);
}

/// Both tests above and below: the file keeps `links` links (1 with `--link-remap`, 0 as a
/// ghost); two dump/restore rounds.
fn held_through_two_namespaces_mounts(name: &str, link_remap: bool) {
    let _host = host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch(name);
    let (root, _, out, d, _g, _u) = start_linked(&dir, link_remap);
    let names = || {
        ["0", "0/1", "0/2"].map(|s| {
            let mut v: Vec<_> = std::fs::read_dir(format!("{d}/{s}"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        })
    };
    let before = names();
    let fields = |l: &str| l.split(' ').skip(1).map(str::to_string).collect::<Vec<_>>();
    let first = fields(lines(&out).last().unwrap());
    let me = std::process::id().cast_signed();
    assert_eq!(Some(first[0].clone()), mount_id_at(me, &format!("{d}/1")));
    let links = if link_remap { "1" } else { "0" };
    assert_eq!(first[2..], [links, "True", "b'data\\n'"]);
    for round in 0..2 {
        let img = dir.join(format!("img{round}"));
        let opts: &[&str] = if link_remap { &["--link-remap"] } else { &[] };
        dump(root, &img, opts);
        wait_tree_gone(&img);
        let at = lines(&out).len();
        restore(&img);
        first_fields_go_on(&out, at);
        let kid = children(root)[0];
        let now = fields(lines(&out).last().unwrap());
        assert_eq!(
            Some(now[0].clone()),
            mount_id_at(me, &format!("{d}/1")),
            "{now:?}"
        );
        assert_eq!(
            Some(now[1].clone()),
            mount_id_at(kid, &format!("{d}/2")),
            "{now:?}"
        );
        assert_eq!(now[2..], first[2..]);
        assert_eq!(names(), before);
    }
}

/// As `count_goes_on`, for lines whose first field is the counter.
fn first_fields_go_on(out: &Path, at: usize) {
    wait_for("the count to go on", 10, || lines(out).len() >= at + 2);
    let v: Vec<u64> = lines(out)
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or restart: {v:?}"
    );
}

/// zdtm's mntns_ghost01 shape, the child: in a mount namespace of its own, binds D over
/// itself read-only, opens D/g through it, says so (argv[2] made), then every 100 ms prints a
/// counter, its fd's mount id, whether that mount is read-only, and the file's bytes.
const GHOST_RO_CHILD: &str = r#"
import os, sys, time
d, ready = sys.argv[1], sys.argv[2]
assert os.system(f"mount --bind {d} {d} && mount -o remount,bind,ro {d}") == 0
fd = os.open(f"{d}/g", os.O_RDONLY)
open(ready, "w").close()
n = 0
while True:
    m = [l for l in open(f"/proc/self/fdinfo/{fd}") if l.startswith("mnt_id:")][0].split()[1]
    line = [l for l in open("/proc/self/mountinfo") if l.split()[0] == m]
    ro = bool(line) and "ro" in line[0].split()[5].split(",")
    print(f"{n} {m} {ro} {os.pread(fd, 9, 0)!r}", flush=True)
    n += 1
    time.sleep(0.1)
"#;

/// A deleted file held through two mounts of one directory: the parent's (cryo's
/// namespace) and a read-only bind of the directory over itself in its child's namespace
/// (zdtm's mntns_ghost01). That is no refusal: after a restore the child's fd is on its own
/// read-only mount again, with the file's bytes.
#[test]
fn deleted_file_held_through_two_mounts_of_one_directory_comes_back() {
    let _host = copies_host_mounts();
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns-ghost-ro");
    let d = dir.join("d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("g"), "ghost\n").unwrap();
    let child = dir.join("child.py");
    std::fs::write(&child, GHOST_RO_CHILD).unwrap();
    let ready = dir.join("ready");
    let parent = format!(
        "import os, subprocess, time\n\
         fd = os.open('{d}/g', os.O_RDONLY)\n\
         p = subprocess.Popen(['unshare', '--mount', '--propagation', 'private', 'python3', '{c}', '{d}', '{r}'])\n\
         while not os.path.exists('{r}'):\n    time.sleep(0.01)\n\
         os.unlink('{d}/g')\n\
         p.wait()\n",
        d = d.display(),
        c = child.display(),
        r = ready.display()
    );
    let out = dir.join("out");
    let root = spawn(&["python3", "-c", &parent], &out);
    let _g = KillOnDrop(root);
    wait_for("the child's report", 20, || {
        lines(&out).len() > 2 && !d.join("g").exists()
    });
    let kid = children(root)[0];
    let _k = KillOnDrop(kid);
    let d_s = d.to_str().unwrap();
    let fields = |l: &str| l.split(' ').skip(1).map(str::to_string).collect::<Vec<_>>();
    let first = fields(lines(&out).last().unwrap());
    assert_eq!(Some(first[0].clone()), mount_id_at(kid, d_s));
    assert_eq!(first[1..], ["True", "b'ghost\\n'"]);
    let img = dir.join("img");
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    let at = lines(&out).len();
    restore(&img);
    first_fields_go_on(&out, at);
    let kid = children(root)[0];
    let now = fields(lines(&out).last().unwrap());
    assert_eq!(Some(now[0].clone()), mount_id_at(kid, d_s), "{now:?}");
    assert_eq!(now[1..], first[1..]);
    assert!(!d.join("g").exists(), "the ghost's name is left");
}
