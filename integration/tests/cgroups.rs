//! cgroups (issue #4): memberships survive dump and restore in cgroup v1 hierarchies and the
//! v2 unified one (`--manage-cgroups`, `--cgroup-root`), and `--freeze-cgroup` seizes a busy
//! forking tree inside a frozen cgroup, then puts the cgroup back as it was, even when the
//! dump fails. Needs the hybrid layout of the development VM (v1 under
//! /sys/fs/cgroup/<controller>, v2 at /sys/fs/cgroup/unified).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::*;

const V1: &str = "/sys/fs/cgroup";
const V2: &str = "/sys/fs/cgroup/unified";

/// cgroup directories made (or expected) by a test; on drop every process in them is killed
/// and reaped, freezers are thawed, and the directories are removed, deepest first.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn make(&mut self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self.0.push(p.clone());
        p
    }
    fn expect(&mut self, p: &str) {
        self.0.push(PathBuf::from(p));
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let mut dirs = self.0.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ps = procs(d);
                if ps.is_empty() || Instant::now() > deadline {
                    break;
                }
                for p in ps {
                    // SAFETY: kill and waitpid with integers and a null status pointer.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                        libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if d.exists() {
                if let Err(e) = std::fs::remove_dir(d) {
                    eprintln!("cannot remove {}: {e}", d.display());
                }
            }
        }
    }
}

/// The /proc/PID/cgroup lines of the hierarchies the test uses.
fn membership(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(":pids:") || l.contains(":cpu:") || l.starts_with("0::"))
        .map(str::to_string)
        .collect()
}

/// Every process of the tree under `root` (root first).
fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(children(p));
        i += 1;
    }
    out
}

/// A shell tree spread over two v1 hierarchies (pids, cpu) and v2: the root in T, one child
/// in T/sub (with a grandchild inheriting it), another child in T. Limits are set on the
/// cgroups. After a dump, the cgroups are removed; `--manage-cgroups` (soft) makes them again
/// with their limits and every task is back in its cgroups. Then `--cgroup-root` moves the
/// pids tree elsewhere, and `--manage-cgroups=none` refuses a missing cgroup, leaving nothing.
#[test]
fn tree_keeps_its_v1_and_v2_cgroups() {
    let dir = scratch("cgroups");
    let n = format!("cryo-test-{}", std::process::id());
    let mut cg = Cgroups(Vec::new());
    let pids = cg.make(&format!("{V1}/pids/{n}"));
    let pids_sub = cg.make(&format!("{V1}/pids/{n}/sub"));
    let cpu = cg.make(&format!("{V1}/cpu/{n}"));
    let cpu_sub = cg.make(&format!("{V1}/cpu/{n}/sub"));
    let v2 = cg.make(&format!("{V2}/{n}"));
    cg.expect(&format!("{V1}/pids/{n}-moved"));
    cg.expect(&format!("{V1}/pids/{n}-moved/sub"));
    std::fs::write(pids.join("pids.max"), "100").unwrap();
    std::fs::write(cpu_sub.join("cpu.shares"), "512").unwrap();
    let out = dir.join("out");
    let script = format!(
        "for c in {p} {c} {u}; do echo $$ > $c/cgroup.procs; done
         sh -c 'for c in {ps} {cs}; do echo $$ > $c/cgroup.procs; done; sleep 1000 & echo a >> {o}; wait' &
         sleep 1000 & echo r >> {o}; wait",
        p = pids.display(),
        c = cpu.display(),
        u = v2.display(),
        ps = pids_sub.display(),
        cs = cpu_sub.display(),
        o = out.display()
    );
    let root = spawn(&["/bin/sh", "-c", &script], &dir.join("log"));
    let _guard = KillOnDrop(root);
    wait_for("the tree", 10, || {
        lines(&out).len() == 2 && tree(root).len() == 4
    });
    let before: Vec<(i32, Vec<String>)> = tree(root).iter().map(|&p| (p, membership(p))).collect();
    assert!(
        before[0]
            .1
            .iter()
            .any(|l| l.ends_with(&format!(":pids:/{n}"))),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(_, m)| m.iter().any(|l| l.ends_with("/sub"))),
        "no task in sub: {before:?}"
    );

    let img = dir.join("img");
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    // The image: the sets, and a thread_core.cg_set in every core.
    let shown = cryo(&["show", img.join("cgroup.img").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains(&format!("/{n}/sub")), "{text}");
    for (p, _) in &before {
        let core = cryo(&["show", img.join(format!("core-{p}.img")).to_str().unwrap()]);
        assert!(
            String::from_utf8_lossy(&core.stdout).contains("\"cg_set\""),
            "core-{p}.img has no cg_set"
        );
    }
    // Gone: soft mode must make them again, with their limits.
    for d in [&pids_sub, &pids, &cpu_sub, &cpu, &v2] {
        std::fs::remove_dir(d).unwrap();
    }
    let d = img.to_str().unwrap();
    restore_with(&img, &["--manage-cgroups"]);
    for (p, m) in &before {
        assert_eq!(&membership(*p), m, "process {p} is not in its cgroups");
    }
    assert_eq!(
        std::fs::read_to_string(pids.join("pids.max"))
            .unwrap()
            .trim(),
        "100"
    );
    assert_eq!(
        std::fs::read_to_string(cpu_sub.join("cpu.shares"))
            .unwrap()
            .trim(),
        "512"
    );

    // Again, under another pids root; first in none mode, which must refuse it.
    dump(root, &img, &[]);
    wait_tree_gone(&img);
    let moved = format!("pids:/{n}-moved");
    let o = cryo(&[
        "restore",
        "-D",
        d,
        "-d",
        "--manage-cgroups=none",
        "--cgroup-root",
        &moved,
    ]);
    assert!(!o.status.success(), "none mode made a cgroup");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{n}-moved")) && err.contains("does not exist"),
        "{err}"
    );
    for (p, _) in &before {
        assert!(!alive(*p), "process {p} left behind by a failed restore");
    }
    restore_with(&img, &["--cgroup-root", &moved]);
    for (p, m) in &before {
        let want: Vec<String> = m
            .iter()
            .map(|l| l.replace(&format!(":pids:/{n}"), &format!(":pids:/{n}-moved")))
            .collect();
        assert_eq!(membership(*p), want, "process {p} not under the new root");
    }
}

/// A shell loop that forks two children per line, counting into `out`, inside `cg`.
fn busy_tree(dir: &Path, cg: &Path) -> (i32, PathBuf) {
    let out = dir.join("count");
    let script = format!(
        "echo $$ > {}/cgroup.procs; i=0; while :; do i=$((i+1)); echo $i >> {}; /bin/true & /bin/true & wait; done",
        cg.display(),
        out.display()
    );
    let root = spawn(&["/bin/sh", "-c", &script], &dir.join("log"));
    wait_for("the loop to count", 10, || lines(&out).len() > 20);
    (root, out)
}

/// Thaws a freezer cgroup when dropped: declared after `KillOnDrop`, it drops first, so a
/// failing test does not leave a frozen (unkillable) task to wait for.
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

/// Waits (a little) for a freezer to settle in `want`; returns the state seen.
fn settles(f: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = freezer_state(f);
        if s == want || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn freezer_state(f: &Path) -> String {
    std::fs::read_to_string(f.join("freezer.state"))
        .unwrap()
        .trim()
        .to_string()
}

fn counting(out: &Path) -> bool {
    let a = lines(out).len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if lines(out).len() > a + 2 {
            return true;
        }
    }
    false
}

fn traced(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
}

/// `--freeze-cgroup` with the v1 freezer on a tree that forks all the time: repeated
/// `--leave-running` dumps succeed and leave it thawed and running; a final dump restores
/// and the count goes on without a gap.
#[test]
fn freezer_dumps_a_forking_tree() {
    let dir = scratch("cgfreeze");
    let mut cg = Cgroups(Vec::new());
    let f = cg.make(&format!(
        "{V1}/freezer/cryo-test-{}-busy",
        std::process::id()
    ));
    let (root, out) = busy_tree(&dir, &f);
    let _guard = KillOnDrop(root);
    let _thaw = Thaw(f.clone());
    let img = dir.join("img");
    let fs = f.to_str().unwrap();
    for _ in 0..5 {
        dump(root, &img, &["--freeze-cgroup", fs, "-R"]);
        assert_eq!(freezer_state(&f), "THAWED");
        assert!(
            counting(&out),
            "the tree stopped after a --leave-running dump"
        );
        assert!(!traced(root));
    }
    dump(root, &img, &["--freeze-cgroup", fs]);
    wait_tree_gone(&img);
    let at_dump = lines(&out).len();
    restore(&img);
    assert!(
        procs(&f).contains(&root),
        "the restored root is not in the freezer cgroup"
    );
    wait_for("the count to go on", 10, || lines(&out).len() > at_dump + 5);
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        v,
        (1..=v.len() as u64).collect::<Vec<_>>(),
        "gap or restart in the count"
    );
}

/// A failed dump (fault injected) with `--freeze-cgroup` leaves the cgroup thawed and the
/// tree running and untraced; a cgroup frozen before cryo started stays frozen after a
/// `--leave-running` dump and after a failed one, and its tree runs on once thawed.
#[test]
fn freezer_is_put_back_as_it_was() {
    let dir = scratch("cgfreeze2");
    let mut cg = Cgroups(Vec::new());
    let f = cg.make(&format!(
        "{V1}/freezer/cryo-test-{}-back",
        std::process::id()
    ));
    let (root, out) = busy_tree(&dir, &f);
    let _guard = KillOnDrop(root);
    let _thaw = Thaw(f.clone());
    let img = dir.join("img");
    let fs = f.to_str().unwrap();
    for stage in ["seize", "collect", "memory", "write"] {
        let o = cryo_env(
            &[
                "dump",
                "-t",
                &root.to_string(),
                "-D",
                img.to_str().unwrap(),
                "--freeze-cgroup",
                fs,
            ],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(
            !o.status.success(),
            "fault at {stage} did not fail the dump"
        );
        assert_eq!(freezer_state(&f), "THAWED", "after a fault at {stage}");
        assert!(counting(&out), "the tree stopped after a fault at {stage}");
        assert!(!traced(root), "still traced after a fault at {stage}");
    }

    std::fs::write(f.join("freezer.state"), "FROZEN").unwrap();
    wait_for("the cgroup to freeze", 10, || freezer_state(&f) == "FROZEN");
    dump(root, &img, &["--freeze-cgroup", fs, "-R"]);
    assert_eq!(
        settles(&f, "FROZEN"),
        "FROZEN",
        "a frozen cgroup was left thawed"
    );
    let o = cryo_env(
        &[
            "dump",
            "-t",
            &root.to_string(),
            "-D",
            img.to_str().unwrap(),
            "--freeze-cgroup",
            fs,
        ],
        &[("CRYO_FAULT_INJECT", "memory")],
    );
    assert!(!o.status.success());
    assert_eq!(
        settles(&f, "FROZEN"),
        "FROZEN",
        "a failed dump thawed a frozen cgroup"
    );
    let n = lines(&out).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&out).len(), n, "the frozen tree kept counting");
    std::fs::write(f.join("freezer.state"), "THAWED").unwrap();
    assert!(counting(&out), "the tree does not run once thawed");
    assert!(!traced(root));
}

/// A program that made a cgroup namespace in cgroup T and then moved to T/inner sees its
/// cgroup as /inner. After a dump, the cgroups are removed; the restore makes them again,
/// unshares a new namespace at T and moves it to T/inner: it still sees /inner, and the host
/// sees T/inner.
#[test]
fn cgroup_namespace_keeps_its_root() {
    let dir = scratch("cgns");
    let me = std::process::id();
    let mut cgs = Cgroups(Vec::new());
    let t = cgs.make(&format!("/sys/fs/cgroup/unified/cryo-test-cgns-{me}"));
    let inner = cgs.make(&format!("/sys/fs/cgroup/unified/cryo-test-cgns-{me}/inner"));
    let out = dir.join("seen");
    let script = format!(
        "echo $$ > {t}/cgroup.procs; exec unshare -C sh -c 'echo $$ > {i}/cgroup.procs; exec sh -c \"while :; do grep ^0:: /proc/self/cgroup >> {o}; sleep 0.05; done\"'",
        t = t.display(),
        i = inner.display(),
        o = out.display()
    );
    let launcher = spawn(&["sh", "-c", &script], &dir.join("log"));
    let _g = KillOnDrop(launcher);
    wait_for("lines", 10, || lines(&out).len() >= 2);
    let pid = tree(launcher)[0];
    let host_view = |p: i32| membership(p).into_iter().find(|l| l.starts_with("0::"));
    let want = format!("0::/cryo-test-cgns-{me}/inner");
    assert_eq!(host_view(pid).as_deref(), Some(want.as_str()));
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let _ = std::fs::remove_dir(&inner);
    let _ = std::fs::remove_dir(&t);
    restore_with(&img, &[]);
    let _g2 = KillOnDrop(pid);
    assert_eq!(host_view(pid).as_deref(), Some(want.as_str()));
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap(),
        std::fs::read_link("/proc/self/ns/cgroup").unwrap(),
        "a cgroup namespace of its own"
    );
    let n = lines(&out).len();
    wait_for("lines after restore", 10, || lines(&out).len() >= n + 3);
    assert!(
        lines(&out).iter().all(|l| l == "0::/inner"),
        "{:?}",
        lines(&out)
    );
    kill(pid);
}

/// A named v1 hierarchy that exists but is mounted nowhere (zdtm leaves `name=zdtmtst` so;
/// any tool that made a named hierarchy and unmounted it does the same). CRIU mounts what it
/// needs privately; cryo reaches it through a detached mount of its own: a process in a
/// cgroup of that hierarchy is dumped and restored back into it, and nothing stays mounted.
#[test]
fn unmounted_named_hierarchy_is_reached_privately() {
    let dir = scratch("cgnamed");
    let name = format!("cryotest{}", std::process::id());
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |on: bool| {
        let st = if on {
            std::process::Command::new("mount")
                .args(["-t", "cgroup", "-o", &format!("none,name={name}"), "cgroup"])
                .arg(&mnt)
                .status()
        } else {
            std::process::Command::new("umount").arg(&mnt).status()
        };
        assert!(st.unwrap().success(), "mount/umount of the named hierarchy");
    };
    mount(true);
    let cg = mnt.join("job");
    std::fs::create_dir(&cg).unwrap();
    let pid = spawn(&["sleep", "1000"], &dir.join("sleep.log"));
    std::fs::write(cg.join("cgroup.procs"), pid.to_string()).unwrap();
    // The hierarchy outlives its last mount while it has a cgroup.
    mount(false);
    let line = format!(":name={name}:/job");
    let member = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/cgroup"))
            .unwrap_or_default()
            .contains(&line)
    };
    assert!(member(pid), "the process is in {line}");
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!("name={name}"))
    };
    assert!(!mounted());

    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    restore(&img);
    let ok = member(pid);
    let leftover = mounted();
    kill(pid);
    // Clean up: mount it again to remove the cgroup; the hierarchy then goes away. The
    // killed process may take a moment to leave the cgroup.
    mount(true);
    for _ in 0..200 {
        if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    mount(false);
    assert!(ok, "the restored process is back in {line}");
    assert!(!leftover, "cryo left the named hierarchy mounted");
}

/// CRIU's cgroup properties (zdtm cgroup03/cgroup04): a process in a v1 memory cgroup with a
/// memory limit, and in a devices cgroup with a whitelist, whose `notify_on_release` and
/// `cgroup.procs` files and directory were handed to another user (mode 0777, owner
/// 1000:1000). After a dump the cgroups are removed; the restore (`--manage-cgroups`, soft)
/// makes them again with the limit, the whitelist, the files' mode and owner.
#[test]
fn cgroup_properties_and_file_owners_are_restored() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = scratch("cgprops");
    let n = format!("cryo-props-{}", std::process::id());
    let mut cg = Cgroups(Vec::new());
    let mem = cg.make(&format!("{V1}/memory/{n}"));
    let dev = cg.make(&format!("{V1}/devices/{n}"));
    std::fs::write(mem.join("memory.limit_in_bytes"), "268435456").unwrap();
    for f in ["", "notify_on_release", "cgroup.procs"] {
        let p = mem.join(f);
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(dev.join("devices.deny"), "a").unwrap();
    let allow = ["c 1:3 rwm", "c 1:5 rwm", "c 1:8 rwm", "c 1:9 rwm"];
    for a in allow {
        std::fs::write(dev.join("devices.allow"), a).unwrap();
    }
    let list = std::fs::read_to_string(dev.join("devices.list")).unwrap();
    let out = dir.join("out");
    let script = format!(
        "echo $$ > {m}/cgroup.procs; echo $$ > {d}/cgroup.procs; echo r > {o}; exec sleep 1000",
        m = mem.display(),
        d = dev.display(),
        o = out.display()
    );
    let pid = spawn(&["/bin/sh", "-c", &script], &dir.join("log"));
    let _guard = KillOnDrop(pid);
    wait_for("the process", 10, || {
        lines(&out).len() == 1
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    for d in [&mem, &dev] {
        std::fs::remove_dir(d).unwrap();
    }
    restore_with(&img, &["--manage-cgroups"]);
    let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(member.contains(&format!(":memory:/{n}")), "{member}");
    assert!(member.contains(&format!(":devices:/{n}")), "{member}");
    assert_eq!(
        std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        "268435456"
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("devices.list")).unwrap(),
        list
    );
    for f in ["", "notify_on_release", "cgroup.procs"] {
        let m = std::fs::metadata(mem.join(f)).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.uid(), m.gid()),
            (0o777, 1000, 1000),
            "{n}/{f}"
        );
    }
}

/// `--cgroup-yard DIR` (zdtm's static/cgroup_yard): the caller mounted the hierarchies in a
/// yard of its own, one per subdirectory named as CRIU names them (`NAME` for `name=NAME`).
/// cryo takes the option at dump and restore, uses the yard's mounts, and a process in a
/// cgroup of a named hierarchy mounted only there is restored back into it.
#[test]
fn cgroup_yard_is_used() {
    let dir = scratch("cgyard");
    let name = format!("cryoyard{}", std::process::id());
    let yard = dir.join("yard");
    let mnt = yard.join(&name);
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = |on: bool| {
        let st = if on {
            std::process::Command::new("mount")
                .args(["-t", "cgroup", "-o", &format!("none,name={name}"), "cgroup"])
                .arg(&mnt)
                .status()
        } else {
            std::process::Command::new("umount").arg(&mnt).status()
        };
        assert!(st.unwrap().success(), "mount/umount of the named hierarchy");
    };
    mount(true);
    let cg = mnt.join("job");
    std::fs::create_dir(&cg).unwrap();
    let pid = spawn(&["sleep", "1000"], &dir.join("sleep.log"));
    let _g = KillOnDrop(pid);
    std::fs::write(cg.join("cgroup.procs"), pid.to_string()).unwrap();
    let line = format!(":name={name}:/job");
    let member = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/cgroup"))
            .unwrap_or_default()
            .contains(&line)
    };
    assert!(member(pid), "the process is in {line}");

    let img = dir.join("img");
    let y = yard.to_str().unwrap();
    dump(pid, &img, &["--manage-cgroups", "--cgroup-yard", y]);
    wait_gone(pid);
    let d = img.to_str().unwrap();
    let o = cryo(&[
        "restore",
        "-D",
        d,
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--manage-cgroups",
        "--cgroup-yard",
        y,
    ]);
    let ok = o.status.success() && member(pid);
    let logs = log(&img, "dump.log") + &log(&img, "restore.log");
    kill(pid);
    for _ in 0..200 {
        if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    mount(false);
    assert!(ok, "the restored process is back in {line}:\n{logs}");
    assert!(logs.contains("using the cgroup yard"), "{logs}");
}
