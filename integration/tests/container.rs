//! Containers without a runtime (issue #4): a busybox shell loop started by
//! `scripts/container.sh` as PID 1 of new pid, mount, uts, ipc and net namespaces, rooted
//! (pivot_root) in a busybox rootfs with a private /proc, tmpfs /tmp and /dev, devpts,
//! mqueue, sysfs, a read-only bind of /etc and a host directory bound at /data. It is
//! restored into fresh namespaces on the same rootfs (`--root`) with /data re-bound from
//! the host (`--external`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::*;

/// The loop: one line per round into /data/count (the host directory): round number,
/// hostname, its PID, what it left in its tmpfs, how many processes its /proc shows, and what
/// a deleted file it keeps open (fd 4, in its tmpfs) holds.
const LOOP: &str = r#"#!/bin/sh
echo seed-ok > /tmp/seed
exec 4<>/tmp/ghost
echo ghost-ok >&4
rm /tmp/ghost
i=0
while true; do
  i=$((i+1))
  echo "$i $(hostname) $$ $(cat /tmp/seed) $(ls /proc | grep -c '^[0-9]') $(cat /proc/$$/fd/4)" >> /data/count
  sleep 0.05
done
"#;

struct Container {
    rootfs: PathBuf,
    host: PathBuf,
    /// The init's PID on the host.
    init: i32,
}

/// Builds the rootfs under `dir` and starts the loop in its container; waits for output.
fn start(dir: &Path) -> Container {
    start_with(dir, &[])
}

/// Like `start`, with `prefix` run before the launcher (it must exec it, not fork).
fn start_with(dir: &Path, prefix: &[&str]) -> Container {
    start_cmd(dir, prefix, &["/bin/sh", "/loop.sh"], "count")
}

/// Starts `cmd` in the container; waits until it wrote 3 lines to /data/`out`.
fn start_cmd(dir: &Path, prefix: &[&str], cmd: &[&str], out: &str) -> Container {
    let rootfs = dir.join("rootfs");
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    let st = std::process::Command::new(root().join("bundles/busybox/build-rootfs.sh"))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success(), "building the busybox rootfs");
    std::fs::write(rootfs.join("loop.sh"), LOOP).unwrap();
    // Static test programs the busybox rootfs can run.
    for prog in ["usock", "ptyhold", "oversock"] {
        let st = std::process::Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(rootfs.join(prog))
            .arg(root().join(format!("integration/progs/{prog}.c")))
            .status()
            .unwrap();
        assert!(st.success(), "building {prog}");
    }
    // A copy in the scratch directory: a launcher whose root is another uid outside
    // (`Userns::Mapped`) may not reach the checkout (a CI clone in a 0700 directory).
    let script = dir.join("container.sh");
    std::fs::copy(root().join("integration/scripts/container.sh"), &script).unwrap();
    for p in [dir, script.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([
        script.to_str().unwrap(),
        rootfs.to_str().unwrap(),
        host.to_str().unwrap(),
    ]);
    argv.extend_from_slice(cmd);
    let launcher = spawn(&argv, &dir.join("launch.log"));
    let count = host.join(out);
    wait_for("the container's first rounds", 20, || {
        lines(&count).len() >= 3
    });
    // unshare's child is the container's init.
    let init = children(launcher)[0];
    Container { rootfs, host, init }
}

/// The rounds written so far, checked: numbered 1, 2, ... without gap, each from PID 1 of a
/// namespace whose hostname, tmpfs and /proc are the container's.
fn rounds(host: &Path) -> usize {
    let v = lines(&host.join("count"));
    for (i, l) in v.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "round line {l:?}");
        assert_eq!(f[5], "ghost-ok", "the deleted file in {l:?}");
        assert_eq!(
            f[0],
            (i + 1).to_string(),
            "rounds broken at line {i}: {l:?}"
        );
        assert_eq!(f[1], "cryo-box", "hostname in {l:?}");
        assert_eq!(f[2], "1", "the loop is PID 1 of its namespace: {l:?}");
        assert_eq!(f[3], "seed-ok", "tmpfs content in {l:?}");
        let procs: u32 = f[4].parse().unwrap();
        assert!(procs <= 12, "/proc shows the host's processes: {l:?}");
    }
    v.len()
}

fn ns_pid_last(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last().map(String::from))
        .unwrap()
}

/// Dumps the container (killed), checks it stopped, restores it; returns the new init's
/// host PID.
fn cycle(c: &Container, img: &Path) -> i32 {
    cycle_with(c, img, &[], &[])
}

/// `cryo restore -d --root ROOTFS --external mnt[data]:HOST` of `img` plus `extra`, which
/// must succeed; returns the restored init's host PID.
fn restore_container(c: &Container, img: &Path, extra: &[&str]) -> i32 {
    let pidfile = img.join("pid");
    let mut args = vec!["--pidfile", pidfile.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = restore_container_with(c, img, "restore.log", &args, &[]);
    assert!(
        out.status.success(),
        "restore failed:\n{}",
        log(img, "restore.log")
    );
    std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `cryo restore` of the container `c` from `img` (its root, /data external, detached),
/// logging to `log` in `img`, with `extra` options and `env`; success or not.
fn restore_container_with(
    c: &Container,
    img: &Path,
    log: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let ext = format!("mnt[data]:{}", c.host.display());
    let mut args = vec![
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        log,
        "--root",
        c.rootfs.to_str().unwrap(),
        "--external",
        &ext,
    ];
    args.extend_from_slice(extra);
    cryo_env(&args, env)
}

/// Lets the script of a restored container go on (/data/go) and returns its result line.
fn script_result(c: &Container) -> String {
    std::fs::write(c.host.join("go"), "").unwrap();
    wait_for("the result", 20, || {
        lines(&c.host.join("out"))
            .iter()
            .any(|l| l.starts_with("result"))
    });
    let out = lines(&c.host.join("out"));
    let result = out.iter().find(|l| l.starts_with("result")).unwrap();
    result.trim_end().to_string()
}

/// `cycle` with extra dump and restore options.
fn cycle_with(c: &Container, img: &Path, dump_extra: &[&str], restore_extra: &[&str]) -> i32 {
    let mut extra = vec!["--external", "mnt[/data]:data"];
    extra.extend_from_slice(dump_extra);
    dump(c.init, img, &extra);
    wait_gone(c.init);
    let n = rounds(&c.host);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rounds(&c.host), n, "the dumped container kept running");
    let init = restore_container(c, img, restore_extra);
    assert_eq!(ns_pid_last(init), "1", "the restored init is PID 1 again");
    wait_for("the restored container's rounds", 20, || {
        lines(&c.host.join("count")).len() >= n + 5
    });
    rounds(&c.host);
    init
}

/// `--external mnt[KEY]:PATH` with a relative PATH at restore is taken from "/", as CRIU
/// takes it (zdtm's mnt_root_ext passes `mnt[MNT]:.zdtm_root_ext.tmp`), not from cryo's
/// working directory: the container's /data is bound from the host directory again and its
/// rounds go on there.
#[test]
fn relative_external_mount_path_is_taken_from_the_root() {
    let dir = scratch("container-relext");
    let mut c = start(&dir);
    let _g = KillOnDrop(c.init);
    let rel = c.host.strip_prefix("/").unwrap().display().to_string();
    let ext = format!("mnt[data]:{rel}");
    c.init = cycle_with(&c, &dir.join("img"), &[], &["--external", &ext]);
    let _g2 = KillOnDrop(c.init);
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.init)).unwrap();
    assert!(
        mi.lines()
            .any(|l| l.contains(&format!(" {} /data ", c.host.display()))),
        "{mi}"
    );
    kill(c.init);
}

#[test]
fn busybox_container_moves_to_fresh_namespaces() {
    let dir = scratch("container");
    let mut c = start(&dir);
    let _g = KillOnDrop(c.init);
    let own_ns = |pid: i32, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    let before: Vec<PathBuf> = ["pid", "mnt", "net"]
        .iter()
        .map(|n| own_ns(c.init, n))
        .collect();
    // Held open, so the old namespaces live on and their inode numbers cannot be reused.
    let _held: Vec<std::fs::File> = ["pid", "mnt", "net"]
        .iter()
        .map(|n| std::fs::File::open(format!("/proc/{}/ns/{n}", c.init)).unwrap())
        .collect();
    c.init = cycle(&c, &dir.join("img"));
    let _g2 = KillOnDrop(c.init);
    for (ns, old) in ["pid", "mnt", "net"].iter().zip(&before) {
        let now = own_ns(c.init, ns);
        assert_ne!(&now, old, "{ns} namespace is a new one");
        assert_ne!(
            now,
            own_ns(i32::try_from(std::process::id()).unwrap(), ns),
            "{ns} is not the host's"
        );
    }
    // The rebuilt mount tree: /etc read-only, /data the host's directory, devpts present.
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.init)).unwrap();
    let mount = |mp: &str| {
        mi.lines()
            .find(|l| l.split(' ').nth(4) == Some(mp))
            .unwrap_or_else(|| panic!("no {mp} mount in\n{mi}"))
            .to_string()
    };
    assert!(
        mount("/etc").split(' ').nth(5).unwrap().starts_with("ro"),
        "{mi}"
    );
    assert!(mount("/dev/pts").contains(" - devpts "), "{mi}");
    // The deleted file was made again in the container's own /tmp, not on the host.
    use std::os::unix::fs::MetadataExt;
    let dev = |p: String| std::fs::metadata(p).unwrap().dev();
    assert_eq!(
        dev(format!("/proc/{}/fd/4", c.init)),
        dev(format!("/proc/{}/root/tmp", c.init)),
        "the ghost file is in the container's tmpfs"
    );
    // /dev/console: a bind of pty 0 of the container's devpts, made again before the bind.
    let console = mount("/dev/console");
    assert!(
        console.contains(" /0 /dev/console ") && console.contains(" - devpts "),
        "{mi}"
    );
    assert!(
        mount("/data").contains(&format!(" {} /data ", c.host.display())),
        "{mi}"
    );
    // A restored container dumps and restores again.
    c.init = cycle(&c, &dir.join("img2"));
    let _g3 = KillOnDrop(c.init);
    kill(c.init);
}

/// A sandbox inside the container: its init (in the container's namespaces) runs `unshare
/// --mount --pid --fork --mount-proc` for the loop, which is then PID 1 of a PID namespace
/// nested in the container's, in a mount namespace copied from the container's with its own
/// /proc. Moved twice: every PID kept at all three levels, the nested namespaces rebuilt
/// inside the restored container's (not the host's).
#[test]
fn sandbox_nested_in_a_container_moves_twice() {
    let dir = scratch("container-nested");
    let mut c = start_cmd(
        &dir,
        &[],
        &[
            "/bin/sh",
            "-c",
            "unshare --mount --pid --fork --mount-proc /bin/sh /loop.sh & wait",
        ],
        "count",
    );
    let _g = KillOnDrop(c.init);
    let kid = |pid: i32| children(pid)[0];
    let nspid = |pid: i32| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap()
            .split_whitespace()
            .skip(2) // the host's level changes: the container gets new namespaces
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let unshare = kid(c.init);
    let loop_pid = kid(unshare);
    let before = (nspid(unshare), nspid(loop_pid));
    assert!(
        before.1.ends_with(" 1"),
        "the loop is PID 1 of its namespace: {before:?}"
    );
    let procs_at = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some("/proc"))
            .count()
    };
    assert_eq!(
        procs_at(loop_pid),
        2,
        "the container's /proc and the sandbox's on it"
    );
    let mut guards = Vec::new();
    for round in 0..2 {
        c.init = cycle(&c, &dir.join(format!("img{round}")));
        guards.push(KillOnDrop(c.init));
        let unshare = kid(c.init);
        let loop_pid = kid(unshare);
        assert_eq!((nspid(unshare), nspid(loop_pid)), before);
        assert_ne!(ns(loop_pid, "pid"), ns(c.init, "pid"));
        assert_ne!(ns(loop_pid, "mnt"), ns(c.init, "mnt"));
        assert_eq!(ns(unshare, "mnt"), ns(loop_pid, "mnt"));
        assert_eq!(procs_at(loop_pid), 2);
        assert_eq!(
            procs_at(c.init),
            1,
            "the sandbox's /proc is not the container's"
        );
    }
    kill(c.init);
}

#[test]
fn container_mount_refusals_name_the_mount() {
    let dir = scratch("container-refuse");
    let c = start(&dir);
    let _g = KillOnDrop(c.init);
    // A host directory bound in, not marked external: refused before anything is touched.
    let err = dump_fails(c.init, &dir.join("img"), &[]);
    assert!(err.contains("mount /data"), "{err}");
    assert!(err.contains("--external mnt[/data]"), "{err}");
    let n = rounds(&c.host);
    wait_for("the container to go on", 10, || {
        lines(&c.host.join("count")).len() >= n + 3
    });
    // At restore, --root and the external's host path are required, and asked for by name;
    // a failed restore leaves no process behind.
    let img = dir.join("img2");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--root"), "{e}");
    let o = cryo(&[
        "restore",
        "-D",
        d,
        "-d",
        "--root",
        c.rootfs.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("mnt[data]"), "{e}");
    let n = rounds(&c.host);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rounds(&c.host),
        n,
        "a failed restore left the container running"
    );
    // A fault after the mount tree was built and the files opened: nothing of it stays.
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ext = format!("mnt[data]:{}", c.host.display());
    let rootfs = c.rootfs.to_str().unwrap();
    let o = cryo_env(
        &[
            "restore",
            "-D",
            d,
            "-d",
            "--root",
            rootfs,
            "--external",
            &ext,
        ],
        &[("CRYO_FAULT_INJECT", "files")],
    );
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before,
        "a failed restore changed the host's mounts"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rounds(&c.host),
        n,
        "a failed restore left the container running"
    );
    // And the images still restore.
    let pidfile = img.join("pid");
    let out = cryo(&[
        "restore",
        "-D",
        d,
        "-d",
        "--root",
        rootfs,
        "--external",
        &ext,
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let init: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(init);
    wait_for("the container to go on", 10, || {
        lines(&c.host.join("count")).len() >= n + 3
    });
    kill(init);
}

/// Network namespaces made with `ip netns add`, deleted on drop.
struct NetNs(Vec<String>);

impl Drop for NetNs {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {}", args.join(" "));
}

fn ino(p: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

/// Two network namespaces stand for two hosts: the container runs in the first (its netns is
/// external, saved by key), the images are copied, and it is restored into the second.
#[test]
fn container_migrates_between_network_namespaces() {
    let dir = scratch("container-migrate");
    let me = std::process::id();
    let (a, b) = (format!("cryo-a-{me}"), format!("cryo-b-{me}"));
    ip(&["netns", "add", &a]);
    let _ns = NetNs(vec![a.clone()]);
    ip(&["netns", "add", &b]);
    let _ns2 = NetNs(vec![b.clone()]);
    // Each "host" has its own network: a veth pair, so the namespace holds more than a
    // loopback (which cryo would not save: it is external here).
    for n in [&a, &b] {
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&[
            "-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
    }
    let mut c = start_with(
        &dir,
        &["ip", "netns", "exec", &a, "env", "CONTAINER_NETNS=keep"],
    );
    let _g = KillOnDrop(c.init);
    let (path_a, path_b) = (format!("/run/netns/{a}"), format!("/run/netns/{b}"));
    assert_eq!(ino(&format!("/proc/{}/ns/net", c.init)), ino(&path_a));
    let img = dir.join("img");
    let ext = format!("net[{}]:extnet", ino(&path_a));
    // Without a namespace to join, restore says which key it needs.
    dump(
        c.init,
        &img,
        &["--external", "mnt[/data]:data", "--external", &ext],
    );
    wait_gone(c.init);
    let moved = dir.join("img-on-b");
    let st = std::process::Command::new("cp")
        .args(["-a", img.to_str().unwrap(), moved.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let hostmap = format!("mnt[data]:{}", c.host.display());
    let o = cryo(&[
        "restore",
        "-D",
        moved.to_str().unwrap(),
        "-d",
        "--root",
        c.rootfs.to_str().unwrap(),
        "--external",
        &hostmap,
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("extnet") && e.contains("--join-ns"),
        "{e}"
    );
    let join = format!("net:{path_b}");
    c.init = restore_container(&c, &moved, &["--join-ns", &join]);
    let _g2 = KillOnDrop(c.init);
    assert_eq!(
        ino(&format!("/proc/{}/ns/net", c.init)),
        ino(&path_b),
        "joined the second netns"
    );
    let n = rounds(&c.host);
    wait_for("the migrated container's rounds", 20, || {
        lines(&c.host.join("count")).len() >= n + 5
    });
    rounds(&c.host);
    kill(c.init);
}

/// A server and its client in a container talk over unix sockets, one bound to a path in the
/// container's tmpfs and one to an abstract name of its network namespace: after restore,
/// new connections still reach both listeners.
#[test]
fn unix_sockets_inside_a_container() {
    let dir = scratch("container-usock");
    let mut c = start_cmd(&dir, &[], &["/usock", "/data/usock"], "usock");
    let _g = KillOnDrop(c.init);
    let out = c.host.join("usock");
    let check = || {
        let v = lines(&out);
        for (i, l) in v.iter().enumerate() {
            let how = if i % 2 == 0 { "path" } else { "abstract" };
            assert_eq!(l, &format!("{} {how}", i + 1), "round {i} of {v:?}");
        }
        v.len()
    };
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    let n = check();
    c.init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(c.init);
    wait_for("new rounds after restore", 20, || {
        lines(&out).len() >= n + 6
    });
    check();
    kill(c.init);
}

/// A pty of the container's own devpts instance (not pty 0, its console), with a line
/// queued for the slave: the dump reads the pty through the container's root, not the host's
/// /dev/pts (where the same index is another terminal, or none), and after the restore the
/// program reads the line it had not read.
#[test]
fn pty_of_the_containers_own_devpts() {
    let dir = scratch("container-pty");
    let mut c = start_cmd(&dir, &[], &["/ptyhold", "/data/pty"], "pty");
    let _g = KillOnDrop(c.init);
    let out = c.host.join("pty");
    let first = lines(&out)[0].clone();
    assert!(first.starts_with("round 1 pts/"), "{first}");
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    let n = lines(&out).len();
    c.init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(c.init);
    wait_for("new rounds after restore", 20, || {
        lines(&out).len() >= n + 3
    });
    signal(c.init, libc::SIGUSR1);
    wait_for("the queued line", 20, || {
        lines(&out).iter().any(|l| l.starts_with("got "))
    });
    let v = lines(&out);
    assert!(v.contains(&"got ping".to_string()), "{v:?}");
    let idx = first.rsplit('/').next().unwrap().to_string();
    assert!(
        v.iter()
            .filter(|l| l.starts_with("round "))
            .all(|l| l.ends_with(&format!("pts/{idx}"))),
        "{v:?}"
    );
    kill(c.init);
}

/// Hostile roots: the root file system and the images may come from someone else. After a
/// dump, the rootfs gets symlinks planted at mount points (`/tmp` → a relative path climbing
/// out with `..`, `/dev` → an absolute path of the host), and a copy of the images gets a
/// tmpfs archive that tries to write outside (a symlink to a host directory with a file
/// below it, and a member named with `..`). Every lookup stays inside `--root`: the host
/// directories the tricks aim at stay empty and unmounted; the hostile archive fails the
/// restore cleanly (no process, no mount left); the container restored from its own images
/// runs on, its mounts placed where the symlinks lead inside its root.
#[test]
fn hostile_rootfs_and_images_stay_inside_the_root() {
    let dir = scratch("container-hostile");
    let c = start(&dir);
    let _g = KillOnDrop(c.init);
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    let n = rounds(&c.host);

    // Host directories the tricks aim at (not below /tmp or /dev, which the symlinks
    // replace inside the root).
    let base = PathBuf::from(format!("/var/tmp/cryo-victims-{}", std::process::id()));
    struct RmOnDrop(PathBuf);
    impl Drop for RmOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = RmOnDrop(base.clone());
    let victims: Vec<PathBuf> = ["victim-tmp", "victim-dev", "victim-tar"]
        .iter()
        .map(|v| base.join(v))
        .collect();
    for v in &victims {
        std::fs::create_dir_all(v).unwrap();
    }
    let inside = |p: &Path| c.rootfs.join(p.strip_prefix("/").unwrap());
    // /tmp -> ../../../..(...)/<victim-tmp>: `..` stops at the root.
    std::fs::remove_dir_all(c.rootfs.join("tmp")).unwrap();
    let climb = format!("{}{}", "../".repeat(20), victims[0].display());
    std::os::unix::fs::symlink(&climb, c.rootfs.join("tmp")).unwrap();
    std::fs::create_dir_all(inside(&victims[0])).unwrap();
    // /dev -> /<victim-dev>: absolute, taken inside the root.
    std::fs::remove_dir_all(c.rootfs.join("dev")).unwrap();
    std::os::unix::fs::symlink(&victims[1], c.rootfs.join("dev")).unwrap();
    std::fs::create_dir_all(inside(&victims[1])).unwrap();

    // A copy of the images whose /tmp archive tries to escape (no manifest: CRIU-style
    // images, so the tampering is not caught by a digest and reaches the archive).
    let bad = dir.join("img-bad");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "cryo-manifest.json" {
            std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
        }
    }
    let tars: Vec<PathBuf> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tmpfs-dev-"))
        .collect();
    assert!(!tars.is_empty(), "the dump saved tmpfs contents");
    let climb_tar = format!("{}{}", "../".repeat(20), victims[2].display());
    let script = format!(
        r#"
import io, tarfile, sys
for out in sys.argv[1:]:
    with tarfile.open(out, "w:gz") as t:
        s = tarfile.TarInfo("esc"); s.type = tarfile.SYMTYPE; s.linkname = "{victim}"; t.addfile(s)
        for name in ["esc/pwned", "{climb}/pwned2"]:
            f = tarfile.TarInfo(name); data = b"pwned\n"; f.size = len(data); t.addfile(f, io.BytesIO(data))
"#,
        victim = victims[2].display(),
        climb = climb_tar,
    );
    let st = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .args(&tars)
        .status()
        .unwrap();
    assert!(st.success(), "writing the hostile archive");

    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ext = format!("mnt[data]:{}", c.host.display());
    let o = cryo(&[
        "restore",
        "-D",
        bad.to_str().unwrap(),
        "-d",
        "--root",
        c.rootfs.to_str().unwrap(),
        "--external",
        &ext,
    ]);
    assert!(
        !o.status.success(),
        "the hostile archive should fail the restore"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before,
        "a failed restore changed the host's mounts"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rounds(&c.host),
        n,
        "a failed restore left a process running"
    );

    // The container's own images, on the rootfs with the planted symlinks.
    let init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(init);
    wait_for("the restored container's rounds", 20, || {
        lines(&c.host.join("count")).len() >= n + 5
    });
    rounds(&c.host);
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for v in &victims {
        let there: Vec<_> = std::fs::read_dir(v).unwrap().collect();
        assert!(
            there.is_empty(),
            "{} was written to: {there:?}",
            v.display()
        );
        assert!(
            !mi.contains(&format!(" {} ", v.display())),
            "{} got a mount on the host",
            v.display()
        );
    }
    // The mounts went where the symlinks lead inside the root.
    let mi = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    assert!(
        mi.contains(&format!(" {} ", victims[0].display()))
            && mi.contains(&format!(" {} ", victims[1].display())),
        "the container's /tmp and /dev are not where its symlinks lead: {mi}"
    );
    kill(init);
}

/// Processes running cryo's binary in a user namespace other than the test's: restore
/// puppets a failed restore left behind.
fn puppets_in_other_userns() -> Vec<i32> {
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    let bin = std::fs::canonicalize(cryo_bin()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).ok().as_ref() == Some(&bin)
                && std::fs::read_link(format!("/proc/{p}/ns/user")).is_ok_and(|u| u != own)
        })
        .collect()
}

/// The owner of `pid`'s `ns` namespace is its user namespace (`NS_GET_USERNS`).
fn owned_by_its_userns(pid: i32, ns: &str) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}")).unwrap();
    // SAFETY: NS_GET_USERNS (_IO(0xb7, 0x1)) takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0xb701) };
    assert!(r >= 0, "NS_GET_USERNS on {ns}");
    // SAFETY: the ioctl just returned this fd; nothing else owns it.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(r) });
    owner.metadata().unwrap().ino()
        == std::fs::metadata(format!("/proc/{pid}/ns/user"))
            .unwrap()
            .ino()
}

/// A rootless-style container (issue #16): `unshare --user --map-root-user` owns its pid,
/// mount, uts, ipc and net namespaces; it has a busybox root, a devpts with its console pty
/// and a tmpfs holding a deleted open file. It is moved twice: each time restored into a new
/// user namespace with the same maps and setgroups state, owning every other new namespace,
/// with the loop's credentials inside it, and a tree of mounts it may change itself. Faults
/// after the new user namespace exists leave no process and no mount behind.
#[test]
fn rootless_container_moves_twice() {
    let dir = scratch("container-userns");
    let mut c = start_with(&dir, &["env", "CONTAINER_USERNS=1"]);
    let _g = KillOnDrop(c.init);
    let userns_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let host_userns = userns_of(i32::try_from(std::process::id()).unwrap());
    assert_ne!(
        userns_of(c.init),
        host_userns,
        "the container has its own user namespace"
    );
    let maps = |pid: i32| {
        ["uid_map", "gid_map", "setgroups"]
            .map(|f| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap())
    };
    let saved = maps(c.init);
    assert_eq!(saved[2].trim(), "deny");
    let dump_ext = [
        "--external",
        "mnt[/dev/null]:null",
        "--external",
        "mnt[/dev/zero]:zero",
    ];
    let restore_ext = [
        "--external",
        "mnt[null]:/dev/null",
        "--external",
        "mnt[zero]:/dev/zero",
    ];
    let check = |init: i32, old_userns: &PathBuf| {
        let now = userns_of(init);
        assert_ne!(&now, old_userns, "a new user namespace");
        assert_ne!(now, host_userns, "not the host's user namespace");
        assert_eq!(maps(init), saved, "the maps and setgroups state");
        for ns in ["pid", "mnt", "net", "ipc", "uts"] {
            assert!(
                owned_by_its_userns(init, ns),
                "{ns} is owned by the new user namespace"
            );
        }
        let st = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
        assert!(st.contains("\nUid:\t0\t0\t0\t0\n"), "{st}");
        // The mount namespace is the container's own: it may change it (EPERM in one owned
        // by the host's user namespace).
        let o = std::process::Command::new("nsenter")
            .args([
                "-t",
                &init.to_string(),
                "-U",
                "-m",
                "--",
                "mount",
                "--make-rprivate",
                "/",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "mount --make-rprivate inside: {o:?}");
    };
    // Held open, so the old user namespace lives on and its inode number cannot be reused.
    let hold = |pid: i32| std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    let _held = hold(c.init);
    let old = userns_of(c.init);
    c.init = cycle_with(&c, &dir.join("img"), &dump_ext, &restore_ext);
    let _g2 = KillOnDrop(c.init);
    check(c.init, &old);
    // The second move, with faults first once the new user namespace exists.
    let _held2 = hold(c.init);
    let old = userns_of(c.init);
    let img = dir.join("img2");
    let mut ext = vec!["--external", "mnt[/data]:data"];
    ext.extend_from_slice(&dump_ext);
    dump(c.init, &img, &ext);
    wait_gone(c.init);
    let n = rounds(&c.host);
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = img.to_str().unwrap();
    let rootfs = c.rootfs.to_str().unwrap();
    let data = format!("mnt[data]:{}", c.host.display());
    for stage in ["userns", "netns", "files", "creds", "finish"] {
        let mut args = vec![
            "restore",
            "-D",
            d,
            "-d",
            "--root",
            rootfs,
            "--external",
            &data,
        ];
        args.extend_from_slice(&restore_ext);
        let o = cryo_env(&args, &[("CRYO_FAULT_INJECT", stage)]);
        assert!(!o.status.success(), "fault at {stage}");
        assert_eq!(
            std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            mounts_before,
            "a restore failed at {stage} changed the host's mounts"
        );
        wait_for("the failed restore's processes to go", 10, || {
            puppets_in_other_userns().is_empty()
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rounds(&c.host),
        n,
        "a failed restore left the container running"
    );
    c.init = restore_container(&c, &img, &restore_ext);
    let _g3 = KillOnDrop(c.init);
    wait_for("the restored container's rounds", 20, || {
        lines(&c.host.join("count")).len() >= n + 5
    });
    rounds(&c.host);
    check(c.init, &old);
    kill(c.init);
}

/// A pod (issue #16): a second container joins the first's PID, IPC, UTS and network
/// namespaces (as runc does with namespace paths in config.json); the member is dumped with
/// the PID and network namespaces external (runc's `extRootPidNS`, `extRootNetNS`) and
/// restored into them: `--inherit-fd` for the keys, `--join-ns` for IPC and UTS. It keeps
/// its PID inside the pod's namespace. Without the PID namespace the restore is refused by
/// its key and leaves nothing.
#[test]
fn pod_member_restores_into_its_pods_namespaces() {
    let dir = scratch("pod");
    let out = dir.join("member.out");
    let launcher = spawn(
        &[
            "unshare",
            "--pid",
            "--fork",
            "--ipc",
            "--uts",
            "--net",
            "sh",
            "-c",
            "hostname pod-a; while :; do sleep 0.2 & wait; done",
        ],
        &dir.join("infra.log"),
    );
    let _gl = KillOnDrop(launcher);
    let mut infra = 0;
    wait_for("the pod's init", 10, || {
        infra = children(launcher).first().copied().unwrap_or(0);
        infra > 0
    });
    let _gi = KillOnDrop(infra);
    let a = infra.to_string();
    // The member joins only once the pod has its name (the pod's shell may not have run
    // `hostname` yet when its PID shows up).
    wait_for("the pod's hostname", 10, || {
        std::process::Command::new("nsenter")
            .args(["-t", &a, "--uts", "hostname"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "pod-a")
    });
    let script = format!(
        "while true; do echo $$ $(hostname) >> {}; sleep 0.05; done",
        out.display()
    );
    let argv = [
        "nsenter", "-t", &a, "--pid", "--ipc", "--uts", "--net", "--", "setsid", "sh", "-c",
        &script,
    ];
    spawn(&argv, &dir.join("member.log"));
    wait_for("the member's first lines", 10, || lines(&out).len() >= 3);
    let vpid: String = lines(&out)[0].split_whitespace().next().unwrap().into();
    let ns = |pid: i32, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    // The member's host PID: in the pod's PID namespace, with that PID there.
    let member = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| {
            std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == Some(ns(infra, "pid"))
                && std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|l| l.split_whitespace().last().map(String::from))
                        == Some(vpid.clone())
                })
        })
        .expect("the member's host PID");
    use std::os::unix::fs::MetadataExt;
    let ino = |n: &str| {
        std::fs::metadata(format!("/proc/{infra}/ns/{n}"))
            .unwrap()
            .ino()
    };
    let img = dir.join("img");
    let ext_pid = format!("pid[{}]:extRootPidNS", ino("pid"));
    let ext_net = format!("net[{}]:extRootNetNS", ino("net"));
    dump(
        member,
        &img,
        &["--external", &ext_pid, "--external", &ext_net],
    );
    wait_gone(member);
    let n = lines(&out).len();
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("extRootPidNS"), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&out).len(), n, "a refused restore ran the member");
    let pidfile = img.join("pid");
    let cmd = format!(
        "exec {} restore -D {d} -d -v4 -o restore.log --inherit-fd fd[3]:extRootPidNS --inherit-fd fd[4]:extRootNetNS --join-ns ipc:/proc/{a}/ns/ipc --join-ns uts:/proc/{a}/ns/uts --pidfile {} 3</proc/{a}/ns/pid 4</proc/{a}/ns/net",
        cryo_bin().display(),
        pidfile.display()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "restore: {o:?}\n{}",
        log(&img, "restore.log")
    );
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _gm = KillOnDrop(restored);
    for n in ["pid", "net", "ipc", "uts"] {
        assert_eq!(
            ns(restored, n),
            ns(infra, n),
            "the member is in the pod's {n} namespace"
        );
    }
    wait_for("the restored member's lines", 10, || {
        lines(&out).len() >= n + 5
    });
    for l in lines(&out) {
        assert_eq!(
            l,
            format!("{vpid} pod-a"),
            "every line from the same PID in the pod"
        );
    }
    kill(restored);
}

/// The container's processes as it sees them: (PID, parent's PID, session, command) from
/// the host's /proc (`NSpid`, `NSsid`), but for the loop's short-lived `usleep`s.
fn ns_processes(init: i32) -> Vec<(String, String, String, String)> {
    let pidns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let want = pidns(&init.to_string());
    let field = |p: &str, key: &str| -> Option<String> {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|l| l.split_whitespace().last().map(String::from))
    };
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.file_name().to_string_lossy().into_owned();
        if !p.bytes().all(|b| b.is_ascii_digit()) || pidns(&p) != want {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if comm.trim() == "usleep" {
            continue;
        }
        let (Some(pid), Some(ppid), Some(sid)) =
            (field(&p, "NSpid:"), field(&p, "PPid:"), field(&p, "NSsid:"))
        else {
            continue;
        };
        let ppid = if pid == "1" {
            "0".into()
        } else {
            field(&ppid, "NSpid:").unwrap_or_default()
        };
        v.push((pid, ppid, sid, comm.trim().to_string()));
    }
    v.sort();
    v
}

/// Orphans of other sessions (zdtm's session00 and child_subreaper_and_reparent): in a
/// container whose init is a shell, one `sleep` stays in a session whose leader exited and
/// another in the session of a live leader that is not its parent; both were reparented to
/// the init. After a restore every process has the same PID, parent and session in the
/// container as before (cryo forks them through helpers that exit at once, as CRIU does).
#[test]
fn orphans_keep_sessions_whose_leader_is_gone_or_elsewhere() {
    let dir = scratch("container-sessions");
    let script = "setsid sh -c 'sleep 1000 & exit 0'; \
        setsid sh -c 'sh -c \"sleep 1001 &\"; exec sleep 1002' & \
        i=0; while true; do i=$((i+1)); echo $i >> /data/sess; usleep 50000; done";
    let mut c = start_cmd(&dir, &[], &["/bin/sh", "-c", script], "sess");
    let _g = KillOnDrop(c.init);
    wait_for("the orphans", 20, || {
        let v = ns_processes(c.init);
        v.iter().filter(|p| p.3 == "sleep" && p.1 == "1").count() == 3
    });
    let before = ns_processes(c.init);
    // Two orphans whose session is neither the init's nor their own.
    let odd: Vec<_> = before
        .iter()
        .filter(|p| p.3 == "sleep" && p.1 == "1" && p.2 != "1" && p.2 != p.0)
        .collect();
    assert_eq!(odd.len(), 2, "{before:?}");
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    c.init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(c.init);
    let n = lines(&c.host.join("sess")).len();
    wait_for("the restored loop", 20, || {
        lines(&c.host.join("sess")).len() >= n + 3
    });
    assert_eq!(ns_processes(c.init), before, "{}", log(&img, "restore.log"));
    kill(c.init);
}

/// Mounts covered by other mounts, made inside the container as zdtm's tempfs,
/// tempfs_overmounted, tempfs_overmounted01, overmount_with_shared_parent and mntns_deleted
/// leave them; after the restore (on /data/go) the script reads what the covers hide and
/// takes every mount off in the order the tree had them, which only works when each came
/// back under the mount it was under.
const OVERMOUNTS: &str = r#"#!/bin/sh
set -e
cd /tmp
# a tmpfs whose files are partly under another tmpfs
mkdir u; mount -t tmpfs u u; echo top-ok > u/top; mkdir u/sub; echo hidden-ok > u/sub/hidden
mount -t tmpfs cover u/sub
# stacks on a mount point whose parent mount is covered later
mkdir -p o/a/b
mount -t tmpfs t1 o/a/b; echo deep-ok > o/a/b/f; mount -t tmpfs t2 o/a/b; mkdir o/a/b/c; mount -t tmpfs t3 o/a/b/c
mount -t tmpfs t4 o/a; mount -t tmpfs t5 o/a; mkdir o/a/b; mount -t tmpfs t6 o/a/b
# a tmpfs reachable only through a bind of it; a bind covering the mount it is bound from
mkdir c; mount -t tmpfs c c; mkdir c/a c/b
mount -t tmpfs z1 c/a; mount --bind c/a c/b; mkdir -p c/a/b/c
mount --bind c/a/b c/a; mount --move c/b c/a/c
mount -t tmpfs z2 c/b; mkdir -p c/b/b/z; mount --bind c/b c/b/b; mount --bind c/b/b/b c/b/b
# a shared bind whose mount below a cover was propagated under the cover
mkdir s; mount --bind s s; mount --make-shared s; mkdir -p s/a/b/c s/d
mount --bind s/a/b s/a; mount --bind s/d s/a/c
# binds of a directory and a file deleted since
mkdir d-src d-dst; touch f-src f-dst
mount --bind d-src d-dst; mount --bind f-src f-dst; rmdir d-src; rm f-src
set +e
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
r="$(cat u/top)"; umount u/sub; r="$r $(cat u/sub/hidden)"
umount o/a/b && umount o/a && umount o/a && umount o/a/b/c && umount o/a/b && test "$(cat o/a/b/f)" = deep-ok && umount o/a/b && r="$r stack-ok"
umount -l c/a && umount -l c/b/b && umount -l c/b/b && test -d c/a/b/c && test -d c/b/b/z && r="$r chain-ok"
umount s/a/c && umount s/a && r="$r shared-ok"
umount d-dst && umount f-dst && r="$r deleted-ok"
echo "result $r" >> /data/out
exec sleep 1000
"#;

/// Mounts under covers come back under the mount they were under, with the files the covers
/// hide (zdtm's tempfs, tempfs_overmounted, tempfs_overmounted01,
/// overmount_with_shared_parent, mntns_deleted): each mount is mounted where it was inside
/// its parent mount (found from the parent's root, not by its path from the root), a tmpfs's
/// files are read from a copy of its mount alone, through a mount of it its path leads to,
/// and a bind of something deleted since is bound from a stand-in removed after.
#[test]
fn covered_mounts_come_back_under_their_covers() {
    script_result_is(
        "container-overmounts",
        OVERMOUNTS,
        "result top-ok hidden-ok stack-ok chain-ok shared-ok deleted-ok",
    );
}

/// The same covered mounts in a rootless-style container (issue #16; zdtm's
/// tempfs_overmounted in flavor uns): the tmpfs every mount of which is covered is read in a
/// copy of the container's mount namespace made inside its user namespace. A copy made from
/// cryo's own user namespace has every mount locked, no cover could be detached there, and
/// the dump was refused ("no copy of the tree's mount namespace with the cover detached").
#[test]
fn covered_mounts_in_a_user_namespace_come_back_under_their_covers() {
    script_result_in(
        "container-userns-overmounts",
        Userns::MapRoot,
        &[],
        OVERMOUNTS,
        "result top-ok hidden-ok stack-ok chain-ok shared-ok deleted-ok",
    );
}

/// A deleted file with another name, open in a container whose root is not the caller's
/// uid (zdtm's unlink_regular00 in flavor uns): with `--link-remap` its temporary name is
/// made in the container's tmpfs, where cryo's own ids are not mapped (the kernel refuses
/// them a new name there: EOVERFLOW, which failed the dump), with the file's owner's ids as
/// CRIU does. The restored container reads the same file through its fd, writes through its
/// fd land in its other name, and the temporary name is gone.
#[test]
fn linked_deleted_file_in_a_user_namespace_with_unmapped_root() {
    script_result_in(
        "container-userns-linkremap",
        Userns::Mapped,
        &["--link-remap"],
        LINKED_DELETED,
        "result remap-ok again-ok g",
    );
}

const LINKED_DELETED: &str = r#"#!/bin/sh
cd /tmp
mkdir d; echo remap-ok > d/f; ln d/f d/g; exec 4<>d/f; rm d/f
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
r="$(head -n1 <&4)"; echo again-ok >&4; r="$r $(tail -n1 d/g) $(ls d)"
echo "result $r" >> /data/out
exec sleep 1000
"#;

/// A host directory bound recursively into a container (`--rbind`, as runtimes do for an
/// `rbind` mount) with a tmpfs mounted below it on the host, dumped and restored with
/// `--external mnt[]` (every mount from outside the tree external, found again by its host
/// path, as CRIU's auto-detection): the tmpfs below /data is the host's again after the
/// restore, not a copy (cryo saved its files and made a new tmpfs): a file the host writes
/// in it afterwards is what the container reads, and the container's writes reach the host.
#[test]
fn recursive_external_bind_brings_the_hosts_submount_back() {
    let dir = scratch("container-rbind");
    let host = dir.join("host");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let _u = Unmount::at(&sub);
    sh(&format!("mount -t tmpfs cryo-it-rbind {}", sub.display()));
    std::fs::write(sub.join("f"), "host-1\n").unwrap();
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("rootfs/script.sh"), RBIND).unwrap();
    let c = start_cmd(
        &dir,
        &["env", "CONTAINER_DATA_RBIND=1"],
        &["/bin/sh", "/script.sh"],
        "out",
    );
    let _g = KillOnDrop(c.init);
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    let in_ct = format!("/proc/{}/root/data/sub", c.init);
    assert_eq!(
        dev(Path::new(&in_ct)),
        dev(&sub),
        "the container sees the host's tmpfs"
    );
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[]"]);
    wait_gone(c.init);
    let init = restore_container(&c, &img, &["--external", "mnt[]"]);
    let _g2 = KillOnDrop(init);
    let in_ct = format!("/proc/{init}/root/data/sub");
    assert_eq!(
        dev(Path::new(&in_ct)),
        dev(&sub),
        "the restored container's /data/sub is the host's tmpfs again"
    );
    std::fs::write(sub.join("f"), "host-2\n").unwrap();
    assert_eq!(
        script_result(&c),
        "result host-2",
        "{}",
        log(&img, "restore.log")
    );
    assert_eq!(
        std::fs::read_to_string(sub.join("from-ct")).unwrap(),
        "ct-ok\n",
        "the container's write reached the host's tmpfs"
    );
    kill(init);
}

const RBIND: &str = r#"#!/bin/sh
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
echo ct-ok > /data/sub/from-ct
echo "result $(cat /data/sub/f)" >> /data/out
exec sleep 1000
"#;

/// Runs `script` (it writes numbered lines to /data/out until /data/go exists, then a
/// "result ..." line) as the init of a container, dumps and restores the container, lets
/// the restored script go on and checks its result line is `expected` (the restore log is
/// printed if not).
fn script_result_is(name: &str, script: &str, expected: &str) {
    script_result_in(name, Userns::No, &[], script, expected);
}

/// How the container of [`script_result_in`] is user-namespaced.
#[derive(Clone, Copy, PartialEq)]
enum Userns {
    /// None of its own.
    No,
    /// `CONTAINER_USERNS=1`: root inside is the caller's uid 0 (`--map-root-user`).
    MapRoot,
    /// Root inside is uid 20000 outside, gid 0 gid 400000 (zdtm's uns maps): cryo's own
    /// ids are not mapped there (`progs/usermapped.c`).
    Mapped,
}

/// [`script_result_is`], in a rootless-style container (every namespace owned by a user
/// namespace of its own, as `userns` says), with `dump_extra` options at dump.
fn script_result_in(name: &str, userns: Userns, dump_extra: &[&str], script: &str, expected: &str) {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("rootfs/script.sh"), script).unwrap();
    let usermapped = prog("usermapped");
    let prefix: Vec<&str> = match userns {
        Userns::No => vec![],
        Userns::MapRoot => vec!["env", "CONTAINER_USERNS=1"],
        Userns::Mapped => {
            // Its root writes /data/out.
            std::fs::create_dir_all(dir.join("host")).unwrap();
            std::os::unix::fs::chown(dir.join("host"), Some(20000), Some(400000)).unwrap();
            vec![
                usermapped.to_str().unwrap(),
                "0 20000 20000",
                "0 400000 50000",
                "env",
                "CONTAINER_USERNS=made",
            ]
        }
    };
    let c = start_cmd(&dir, &prefix, &["/bin/sh", "/script.sh"], "out");
    let _g = KillOnDrop(c.init);
    let img = dir.join("img");
    let mut dump_ext = vec!["--external", "mnt[/data]:data"];
    dump_ext.extend_from_slice(dump_extra);
    let mut restore_ext = vec![];
    if userns != Userns::No {
        // Its /dev/null and /dev/zero are binds of the host's.
        dump_ext.extend([
            "--external",
            "mnt[/dev/null]:null",
            "--external",
            "mnt[/dev/zero]:zero",
        ]);
        restore_ext.extend([
            "--external",
            "mnt[null]:/dev/null",
            "--external",
            "mnt[zero]:/dev/zero",
        ]);
    }
    dump(c.init, &img, &dump_ext);
    wait_gone(c.init);
    let init = restore_container(&c, &img, &restore_ext);
    let _g2 = KillOnDrop(init);
    let n = lines(&c.host.join("out")).len();
    wait_for("the restored loop", 20, || {
        lines(&c.host.join("out")).len() >= n + 3
    });
    assert_eq!(script_result(&c), expected, "{}", log(&img, "restore.log"));
    kill(init);
}

/// The binfmt_misc tests one at a time: a container without a user namespace of its own
/// mounts the host's (one) binfmt_misc instance, so each test's dump would also save the
/// other's registrations (one names an interpreter only the other's container has).
static BINFMT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// binfmt_misc registrations of any bytes the kernel takes (zdtm's binfmt_misc in flavor
/// ns): an extension handler whose name and extension are not UTF-8 (and whose extension
/// ends in a carriage return), and a magic handler with an offset, a mask and flags, made
/// by a container in its binfmt_misc mount. cryo refused the first at dump ("not UTF-8
/// text"); now binfmt-misc.img holds the raw bytes (CRIU's field is a proto `string` it
/// fills with the kernel's bytes), both registrations are gone with the container and the
/// restored container reads each registration file again byte for byte as before, and
/// Debian's crit decodes the image.
#[test]
fn binfmt_misc_registrations_of_any_bytes_come_back() {
    let _b = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let tag = std::process::id();
    // name r<tag>\377x, extension \343\050<tag>\r (octal, as printf takes them).
    let ext_name = format!("r{tag}\\377x");
    let magic_name = format!("m{tag}");
    struct Unregister(Vec<String>);
    impl Drop for Unregister {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("unshare")
                    .args(["-m", "sh", "-c"])
                    .arg(format!(
                        "d=$(mktemp -d) && mount -t binfmt_misc none $d && \
                         f=\"$d/$(printf '{n}')\"; {{ [ ! -e \"$f\" ] || echo -1 > \"$f\"; }}; \
                         umount $d; rmdir $d"
                    ))
                    .status();
            }
        }
    }
    let _u = Unregister(vec![ext_name.clone(), magic_name.clone()]);
    let script = format!(
        r#"#!/bin/sh
mkdir /tmp/bf
mount -t binfmt_misc cryo-bf /tmp/bf
printf ':{ext_name}:E::\343\050{tag}\r::/bin/sh:' > /tmp/bf/register
printf ':{magic_name}:M:7:\x7fC\x52\x59:\xff\xdf\xff\xff:/bin/true:OC' > /tmp/bf/register
echo 0 > /tmp/bf/{magic_name}
e="/tmp/bf/$(printf '{ext_name}')"
cp "$e" /tmp/ext.before && cp /tmp/bf/{magic_name} /tmp/magic.before
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
r1=differ; cmp -s "$e" /tmp/ext.before && r1=same
r2=differ; cmp -s /tmp/bf/{magic_name} /tmp/magic.before && r2=same
m="$(tr '\n' ' ' < /tmp/bf/{magic_name})"
echo -1 > "$e"; echo -1 > /tmp/bf/{magic_name}
echo "result $r1 $r2 $m" >> /data/out
exec sleep 1000
"#
    );
    let dir = scratch("container-binfmt-bytes");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("rootfs/script.sh"), &script).unwrap();
    let c = start_cmd(&dir, &[], &["/bin/sh", "/script.sh"], "out");
    let _g = KillOnDrop(c.init);
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    let saved = std::fs::read(img.join("binfmt-misc.img")).expect("binfmt-misc.img written");
    let raw_ext = [&b"\xe3\x28"[..], tag.to_string().as_bytes(), b"\r"].concat();
    assert!(
        saved.windows(raw_ext.len()).any(|w| w == raw_ext),
        "binfmt-misc.img holds the extension's raw bytes"
    );
    // The instance may outlive the container's mount (another mount of it on the host, a
    // zdtm run's for one): the registrations are taken away here, so that only the restore
    // can bring them back.
    let host_has = |n: &str| {
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "d=$(mktemp -d) && mount -t binfmt_misc none $d && \
                 {{ [ -e \"$d/$(printf '{n}')\" ]; r=$?; umount $d; rmdir $d; exit $r; }}"
            ))
            .status()
            .unwrap()
            .success()
    };
    drop(Unregister(vec![ext_name.clone(), magic_name.clone()]));
    assert!(!host_has(&ext_name) && !host_has(&magic_name));
    let init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(init);
    let n = lines(&c.host.join("out")).len();
    wait_for("the restored loop", 20, || {
        lines(&c.host.join("out")).len() >= n + 3
    });
    assert_eq!(
        script_result(&c),
        "result same same disabled interpreter /bin/true flags: OC offset 7 \
         magic 7f435259 mask ffdfffff",
        "{}",
        log(&img, "restore.log")
    );
    kill(init);
    // crit has no handler for binfmt-misc.img (neither Debian's nor CRIU 4.2's): CRIU's own
    // message type (pycriu's, from CRIU's binfmt-misc.proto) reads cryo's entries, the raw
    // bytes as bytes.
    const DECODE: &str = r#"
import struct, sys
from pycriu.images import binfmt_misc_pb2 as b
d = open(sys.argv[1], "rb").read()
off = 8
while off < len(d):
    n = struct.unpack("<I", d[off:off + 4])[0]
    e = b.binfmt_misc_entry()
    e.ParseFromString(d[off + 4:off + 4 + n])
    off += 4 + n
    print(repr(e.name), e.interpreter, e.HasField("extension"), repr(e.extension), e.magic)
"#;
    let o = std::process::Command::new("/usr/bin/python3")
        .args(["-c", DECODE])
        .arg(img.join("binfmt-misc.img"))
        .output()
        .unwrap();
    if String::from_utf8_lossy(&o.stderr).contains("No module named 'pycriu'") {
        return skip(
            "pycriu (Debian's crit) is not installed: image not decoded with CRIU's schema",
        );
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && out.contains(&format!("'{magic_name}' /bin/true False '' 7f435259"))
            && out.contains(&format!("b'r{tag}\\xffx' /bin/sh True b'\\xe3({tag}\\r'")),
        "CRIU's binfmt_misc_entry reads cryo's image: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Deleted files on a read-only mount of a writable tmpfs inside a container (zdtm's
/// ghost_on_rofs in its namespace flavor): the tmpfs is rebuilt read-only as a mount only,
/// not as a file system (its superblock was remounted read-only before: the deleted file
/// could not be made again, restore failed with EROFS). After restore the fd reads the
/// file, the mount refuses writes, a writable bind of the same tmpfs still takes them, and
/// nothing is left of the deleted file.
#[test]
fn deleted_file_on_a_read_only_mount_in_a_container() {
    const SCRIPT: &str = r#"#!/bin/sh
cd /tmp
mkdir ro rw
mount -t tmpfs cryo-ro ro; mount --bind ro rw
echo ghost-ok > ro/ghost
exec 5<ro/ghost
rm ro/ghost
mount -o remount,bind,ro ro
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
left="$(ls ro | tr '\n' ' ')"
touch ro/new 2>/dev/null && r=writable || r=read-only
touch rw/new 2>/dev/null && w=writable || w=read-only
echo "result $(cat <&5) ro $r rw $w left:$left" >> /data/out
exec sleep 1000
"#;
    script_result_is(
        "container-ghost-rofs",
        SCRIPT,
        "result ghost-ok ro read-only rw writable left:",
    );
}

/// Unix sockets whose files are under a mount made after they were bound (zdtm's
/// overmount_sock): in each of the container's root and its /tmp tmpfs, a listener bound
/// in a directory, a connection accepted from it (the listener closed) and a tmpfs then
/// mounted over the directory (`progs/oversock.c`). The restore binds them where their
/// files were, under the covers (before, they were bound inside the covering tmpfs, whose
/// unmount then failed with EBUSY): after restore the connections carry data, the covers
/// unmount, and the socket files are there to unlink.
#[test]
fn sockets_bound_under_a_later_mount_come_back_under_it() {
    const SCRIPT: &str = r#"#!/bin/sh
mkdir -p /over /tmp/over
/oversock /over /data/root.out &
/oversock /tmp/over /data/tmp.out &
until [ -s /data/root.out ] && [ -s /data/tmp.out ]; do sleep 0.05; done
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
until grep -q result /data/root.out && grep -q result /data/tmp.out; do sleep 0.05; done
echo "result root: $(grep result /data/root.out | cut -d' ' -f2-) tmp: $(grep result /data/tmp.out | cut -d' ' -f2-)" >> /data/out
exec sleep 1000
"#;
    script_result_is(
        "container-oversock",
        SCRIPT,
        "result root: data-ok umount-ok unlink-ok tmp: data-ok umount-ok unlink-ok",
    );
}

/// A binfmt_misc mount inside a container (zdtm's binfmt_misc, mountpoints): it was
/// refused at dump; now it is mounted again at restore, showing the registrations of the
/// instance it was a mount of (the one cryo sees: without a user namespace of its own, the
/// container shares the host's). A registration the container made, disabled, with the F
/// flag (the kernel opens the interpreter when it is registered) and an interpreter that
/// exists only inside the container, is saved in binfmt-misc.img and is there after
/// restore, with its interpreter, flags and extension, still disabled: registered once the
/// container's root is in place. A restore that fails after the mounts (injected fault)
/// takes back what it registered in the instance, which a process of the host holds
/// mounted meanwhile (systemd does on most hosts), so that it outlives the failed restore.
#[test]
fn binfmt_misc_mount_comes_back_with_its_registrations() {
    let _b = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("cryo-it-{}", std::process::id());
    // The registration is the host's too: removed whatever happens to the test.
    struct Unregister(String);
    impl Drop for Unregister {
        fn drop(&mut self) {
            let _ = std::process::Command::new("unshare")
                .args(["-m", "sh", "-c"])
                .arg(format!(
                    "d=$(mktemp -d) && mount -t binfmt_misc none $d && \
                     {{ [ ! -e $d/{0} ] || echo -1 > $d/{0}; }}; umount $d; rmdir $d",
                    self.0
                ))
                .status();
        }
    }
    let _u = Unregister(name.clone());
    let script = format!(
        r#"#!/bin/sh
mkdir /tmp/bf
mount -t binfmt_misc cryo-bf /tmp/bf
echo ':{name}:E::{name}::/cryo-interp:F' > /tmp/bf/register
echo 0 > /tmp/bf/{name}
i=0
while [ ! -e /data/go ]; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
r="$(tr '\n' ' ' < /tmp/bf/{name})"
echo -1 > /tmp/bf/{name}
echo "result $r" >> /data/out
exec sleep 1000
"#
    );
    let dir = scratch("container-binfmt");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("rootfs/script.sh"), &script).unwrap();
    // Only in the container: the host has no /cryo-interp.
    assert!(!Path::new("/cryo-interp").exists());
    std::fs::write(dir.join("rootfs/cryo-interp"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.join("rootfs/cryo-interp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let c = start_cmd(&dir, &[], &["/bin/sh", "/script.sh"], "out");
    let _g = KillOnDrop(c.init);
    let img = dir.join("img");
    dump(c.init, &img, &["--external", "mnt[/data]:data"]);
    wait_gone(c.init);
    // Saved by cryo (a host that keeps the instance mounted would keep the registration
    // without it).
    let saved = std::fs::read(img.join("binfmt-misc.img")).expect("binfmt-misc.img written");
    assert!(
        saved.windows(name.len()).any(|w| w == name.as_bytes()),
        "binfmt-misc.img holds {name}"
    );
    // The instance goes with its last mount (the container's, torn down after it died),
    // and its registrations with it.
    let host_has = || {
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "d=$(mktemp -d) && mount -t binfmt_misc none $d && \
                 {{ [ -e $d/{name} ]; r=$?; umount $d; rmdir $d; exit $r; }}"
            ))
            .status()
            .unwrap()
            .success()
    };
    wait_for(
        "the registration to go with the container's mount",
        10,
        || !host_has(),
    );
    // From now on a process of the host holds the instance mounted (as systemd's
    // /proc/sys/fs/binfmt_misc does on most hosts): what a restore registers is the host's.
    let keep_at = dir.join("bf-host");
    std::fs::create_dir_all(&keep_at).unwrap();
    let keeper = spawn(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount -t binfmt_misc none {} && touch {}/ready && exec sleep 1000",
                keep_at.display(),
                dir.display()
            ),
        ],
        &dir.join("keeper.log"),
    );
    let _k = KillOnDrop(keeper);
    wait_for("the host's binfmt_misc mount", 10, || {
        dir.join("ready").exists()
    });
    let registered = || {
        Path::new(&format!("/proc/{keeper}/root"))
            .join(keep_at.strip_prefix("/").unwrap())
            .join(&name)
            .exists()
    };
    assert!(
        Path::new(&format!("/proc/{keeper}/root"))
            .join(keep_at.strip_prefix("/").unwrap())
            .join("status")
            .exists(),
        "the keeper's mount is seen"
    );
    assert!(!registered());
    let failed = restore_container_with(
        &c,
        &img,
        "restore-fault.log",
        &[],
        &[("CRYO_FAULT_INJECT", "finish")],
    );
    assert!(
        !failed.status.success(),
        "the injected fault fails the restore"
    );
    assert!(
        log(&img, "restore-fault.log").contains("binfmt_misc registration"),
        "{}",
        log(&img, "restore-fault.log")
    );
    assert!(
        !registered(),
        "the failed restore left its registration in the host's instance:\n{}",
        log(&img, "restore-fault.log")
    );
    let init = restore_container(&c, &img, &[]);
    let _g2 = KillOnDrop(init);
    let n = lines(&c.host.join("out")).len();
    wait_for("the restored loop", 20, || {
        lines(&c.host.join("out")).len() >= n + 3
    });
    assert!(registered(), "registered again, in the host's instance too");
    assert_eq!(
        script_result(&c),
        format!("result disabled interpreter /cryo-interp flags: F extension .{name}"),
        "{}",
        log(&img, "restore.log")
    );
    kill(init);
    kill(keeper);
}

/// A file open on a mount that another mount now covers is refused, as CRIU refuses it
/// (zdtm's overmounted_file, a test CRIU must fail): it would be reopened by a path that
/// leads to the cover. The container goes on.
#[test]
fn file_on_a_covered_mount_is_refused() {
    const SCRIPT: &str = r#"#!/bin/sh
cd /tmp
mkdir m; mount -t tmpfs m m; echo data > m/file
exec 5<m/file
mount --bind m m
i=0
while true; do i=$((i+1)); echo "$i" >> /data/out; sleep 0.05; done
"#;
    let dir = scratch("container-overmounted-file");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("rootfs/overmounted.sh"), SCRIPT).unwrap();
    let c = start_cmd(&dir, &[], &["/bin/sh", "/overmounted.sh"], "out");
    let _g = KillOnDrop(c.init);
    let err = dump_fails(c.init, &dir.join("img"), &["--external", "mnt[/data]:data"]);
    assert!(err.contains("fd 5"), "{err}");
    assert!(err.contains("covers"), "{err}");
    let n = lines(&c.host.join("out")).len();
    wait_for("the container to go on", 10, || {
        lines(&c.host.join("out")).len() >= n + 3
    });
    kill(c.init);
}

/// A container whose /data is the slave of a shared mount of the host (a host directory
/// bound there, mounts made on the host appear inside): after dump and restore (external,
/// `--enable-external-masters` as LXC and zdtm's mnt_ext_master pass it) /data is that
/// mount's slave again, not a private copy: what the host mounts there afterwards appears in
/// the container.
#[test]
fn external_mount_comes_back_as_the_slave_of_its_host_master() {
    let dir = scratch("container-extmaster");
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    let h = host.display().to_string();
    sh(&format!(
        "mount --bind {h} {h} && mount --make-private {h} && mount --make-shared {h}"
    ));
    let _u = Unmount::at(&h);
    let mut c = start_with(&dir, &["env", "CONTAINER_DATA_SLAVE=1"]);
    let _g = KillOnDrop(c.init);
    let master = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/data"))
            .map(|l| {
                l.split(" - ")
                    .next()
                    .unwrap()
                    .split(' ')
                    .skip(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let before = master(c.init);
    assert!(
        before.contains("master:"),
        "/data before the dump: {before}"
    );
    c.init = cycle_with(&c, &dir.join("img"), &["--enable-external-masters"], &[]);
    let _g2 = KillOnDrop(c.init);
    let after = master(c.init);
    assert_eq!(after, before, "/data's propagation after the restore");
    // A mount made on the host now propagates into the container.
    std::fs::create_dir_all(host.join("late")).unwrap();
    sh(&format!(
        "mount -t tmpfs late {h}/late && echo late-ok > {h}/late/f"
    ));
    let inside = format!("/proc/{}/root/data/late/f", c.init);
    assert_eq!(
        std::fs::read_to_string(&inside).unwrap_or_default().trim(),
        "late-ok",
        "the host's new mount is not seen in the restored container"
    );
    sh(&format!("umount {h}/late"));
    kill(c.init);
}
