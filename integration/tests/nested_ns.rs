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

/// (counter, the rest) of the last status line.
fn last_status(out: &Path) -> Option<(u64, String)> {
    let l = lines(out).into_iter().rev().find(|l| l.contains(" pid="))?;
    let (n, rest) = l.split_once(' ')?;
    Some((n.parse().ok()?, rest.to_string()))
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
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
