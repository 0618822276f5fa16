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

#[test]
fn nested_mount_and_pid_namespaces_keep_pids_and_mounts() {
    if !require_tools(&[("unshare", "--help"), ("python3", "--version")]) {
        return;
    }
    let dir = scratch("nested-ns");
    let out = dir.join("out");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap().to_string();
    let inner = dir.join("inner.py");
    std::fs::write(&inner, INNER).unwrap();
    let inner = inner.to_str().unwrap();
    // The root stays in cryo's namespaces; unshare (its child) makes the mount, UTS and IPC
    // namespaces and the PID namespace its own child is the init of.
    let script = format!(
        "unshare --mount --pid --fork --mount-proc --uts --ipc --net sh -c 'hostname inner-ns && mount -t tmpfs cryo-nested {mnt_s} && echo hello >{mnt_s}/f && exec python3 {inner} {mnt_s}' & wait"
    );
    let root = spawn(&["/bin/sh", "-c", &script], &out);
    let _g = KillOnDrop(root);
    wait_for("the nested init's status", 20, || {
        last_status(&out).is_some()
    });
    let unshare = children(root)[0];
    let init = children(unshare)[0];
    wait_for("the init's child", 10, || !children(init).is_empty());
    let sleeper = children(init)[0];
    let tree = vec![root, unshare, init, sleeper];
    let _k: Vec<KillOnDrop> = tree[1..].iter().map(|&p| KillOnDrop(p)).collect();
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
