//! podman 4.3 checkpoints and restores containers through cryo (issue #5), the way it does
//! with CRIU: podman probes `criu` from PATH itself (go-criu VERSION), then runc runs it for
//! the work. Here `criu` is a symlink to the cryo under test, first in PATH and also named
//! with `--runtime-flag criu=LINK` (runc under conmon, on restore, gets conmon's PATH, not
//! ours). The settings are those `/work/shared/reference/runtimes-on-this-vm.md` lists for
//! this VM: `--runtime runc` (crun is not installed, and without checkpoint support), the
//! vfs storage driver (overlay in one test), `--network none`, rlimits runc can set, and a private
//! `--root/--runroot/--tmpdir`, runc root and containers.conf, so nothing is shared with
//! other podman users of the machine. The image is a busybox rootfs
//! (`bundles/busybox/build-rootfs.sh`) brought in with `podman import`.
//!
//! The container's shell writes a counter, one line per number, to a bind-mounted host
//! file: after a restore the numbers go on with no gap and no repeat (a new start would
//! repeat 1, a lost step would skip one). Everything (containers, images, storage, mounts)
//! is removed when a test ends, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::{cryo_bin, ok, root, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shell's hard limit on open files: runc cannot raise the init's beyond it without
/// CAP_SYS_RESOURCE, and podman's default (1048576) is above it on this VM.
fn nofile_hard() -> u64 {
    let o = Command::new("sh").args(["-c", "ulimit -Hn"]).output();
    o.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(1024)
}

/// A private podman installation: its storage, run and tmp dirs, runc root, config, and a
/// `bin/criu` symlink to cryo. Dropping it removes every container and image it holds,
/// unmounts what is left under it and deletes it.
struct Podman {
    dir: PathBuf,
    link: PathBuf,
    path: String,
    /// What `--runtime` names: `runc`, or the pod wrapper (see [`Podman::for_pods`]).
    runtime: String,
    /// The storage driver: `vfs` (a copied root), or `overlay` (an overlayfs root).
    driver: &'static str,
}

/// A `runc` for pods on this VM: podman 4.3 gives a pod's infra container RLIMIT_NOFILE
/// 1048576 with no way to lower it (`pod create` has no `--ulimit`, containers.conf's
/// default_ulimits are not applied to it), and runc cannot raise the hard limit above the
/// shell's without CAP_SYS_RESOURCE. This wrapper lowers the limit in the bundle's
/// config.json to the hard limit it has, then runs runc. It is named `runc` because podman
/// only checkpoints through a runtime of that name.
const POD_RUNC: &str = r#"#!/bin/sh
b=
prev=
for a in "$@"; do
    case "$prev" in --bundle|-b) b=$a ;; esac
    case "$a" in --bundle=*) b=${a#--bundle=} ;; esac
    prev=$a
done
if [ -n "$b" ] && [ -f "$b/config.json" ]; then
    python3 - "$b/config.json" "$(ulimit -Hn)" <<'EOP' || exit 1
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
c = json.load(open(path))
for r in c.get("process", {}).get("rlimits") or []:
    if r["type"] == "RLIMIT_NOFILE":
        r["hard"], r["soft"] = min(r["hard"], n), min(r["soft"], n)
json.dump(c, open(path, "w"))
EOP
fi
exec runc "$@"
"#;

impl Podman {
    fn new(name: &str) -> Podman {
        Podman::with_driver(name, "vfs")
    }

    fn with_driver(name: &str, driver: &'static str) -> Podman {
        let dir = std::env::temp_dir().join(format!("cryo-podman-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        for d in ["bin", "root", "runroot", "tmp", "runc", "host"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let link = bin.join("criu");
        std::os::unix::fs::symlink(cryo_bin(), &link).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        // Only this file is read when CONTAINERS_CONF names it (no host containers.conf).
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 runtime = \"runc\"\nconmon_env_vars = [\"PATH={path}\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.join("runroot").display(),
                dir.join("root").display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            link,
            path,
            runtime: "runc".into(),
            driver,
        }
    }

    /// Like [`Podman::new`], with runc behind the [`POD_RUNC`] wrapper so that pods' infra
    /// containers can start on this VM.
    fn for_pods(name: &str) -> Podman {
        let mut p = Podman::new(name);
        let rt = p.dir.join("rt");
        std::fs::create_dir_all(&rt).unwrap();
        let runc = rt.join("runc");
        std::fs::write(&runc, POD_RUNC).unwrap();
        std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        p.runtime = runc.display().to_string();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let mut c = Command::new("podman");
        c.env("PATH", &self.path)
            .env("CONTAINERS_CONF", d("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d("storage.conf"))
            .env("TMPDIR", d("tmp"))
            .args(["--root", &d("root"), "--runroot", &d("runroot")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", self.driver])
            .args([
                "--runtime",
                &self.runtime,
                "--runtime-flag",
                &format!("root={}", d("runc")),
            ])
            .args(["--runtime-flag", &format!("criu={}", self.link.display())])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run podman")
    }

    /// `args`, which must succeed; a failure shows the end of the log runc names (it is in
    /// the storage, which goes with the test).
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            if let Some(log) = err
                .lines()
                .find_map(|l| l.strip_prefix("log file: "))
                .and_then(|p| std::fs::read_to_string(p.trim()).ok())
            {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "podman {args:?}: the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        ok(&o, &format!("podman {args:?}"))
    }

    /// `args` and its wall time.
    fn timed(&self, args: &[&str]) -> (String, Duration) {
        let t = Instant::now();
        let out = self.ok(args);
        (out, t.elapsed())
    }

    fn host(&self, p: &str) -> PathBuf {
        self.dir.join("host").join(p)
    }

    /// Imports the busybox rootfs as `localhost/cryo-busybox:test`.
    fn import_busybox(&self) {
        let rootfs = self.dir.join("rootfs");
        let o = Command::new("bash")
            .arg(root().join("bundles/busybox/build-rootfs.sh"))
            .arg(&rootfs)
            .output()
            .unwrap();
        ok(&o, "build-rootfs.sh");
        // What a pod's infra container runs (`--infra-command /pause`).
        let pause = rootfs.join("pause");
        std::fs::write(&pause, "#!/bin/sh\nexec sleep 1000000000\n").unwrap();
        std::fs::set_permissions(&pause, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let tar = self.dir.join("rootfs.tar");
        let o = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        ok(&o, "tar the rootfs");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// `podman run -d`: a shell appending a counter to the bind-mounted `/data/log`, one
    /// number every 50 ms (each step forks a `sleep`).
    fn start_counter(&self, name: &str) {
        self.start_counter_in(name, None);
    }

    /// [`Podman::start_counter`] as a member of pod `pod` (ID or name) when given.
    fn start_counter_in(&self, name: &str, pod: Option<&str>) {
        let n = nofile_hard();
        let vol = format!("{}:/data", self.dir.join("host").display());
        let nofile = format!("nofile={n}:{n}");
        let mut args = vec!["run", "-d", "--name", name];
        match pod {
            Some(pod) => args.extend(["--pod", pod]),
            None => args.extend(["--network", "none"]),
        }
        args.extend([
            "--ulimit",
            &nofile,
            "--ulimit",
            "nproc=32768:32768",
            "-v",
            &vol,
            IMAGE,
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i >> /data/log; sleep 0.05; done",
        ]);
        self.ok(&args);
        wait_for("the counter", 10, || self.numbers().len() >= 5);
    }

    /// The numbers in the host's copy of `/data/log`.
    fn numbers(&self) -> Vec<u64> {
        std::fs::read_to_string(self.host("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Checks the log is 1, 2, 3, ... with nothing missing or repeated.
    fn check_sequence(&self) {
        let n = self.numbers();
        for (i, v) in n.iter().enumerate() {
            assert_eq!(*v, i as u64 + 1, "the counter at line {}: {n:?}", i + 1);
        }
    }

    fn status(&self, name: &str) -> String {
        self.ok(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            name,
        ])
    }

    fn exec(&self, name: &str, argv: &[&str]) -> String {
        let mut a = vec!["exec", name];
        a.extend_from_slice(argv);
        self.ok(&a)
    }

    /// After a checkpoint that stopped the container: it is not running and its counter
    /// stands still; returns the last number.
    fn check_stopped(&self, name: &str) -> u64 {
        let st = self.status(name);
        assert_ne!(st, "running", "after the checkpoint");
        let at = self.numbers().len();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.numbers().len(),
            at,
            "the counter went on after the checkpoint"
        );
        *self
            .numbers()
            .last()
            .expect("numbers before the checkpoint")
    }

    /// After a restore: running, the counter goes on from `last`, exec works and sees the
    /// same process state (`status` lines of pid 1 from before).
    fn check_restored(&self, name: &str, last: u64, before: &ContainerState) {
        assert_eq!(self.status(name), "running");
        wait_for("the counter to go on", 10, || {
            self.numbers().last().is_some_and(|&n| n > last + 3)
        });
        self.check_sequence();
        let after = ContainerState::read(self, name);
        assert_eq!(
            &after, before,
            "the container's state changed in the restore"
        );
    }
}

/// What the restore must keep, read with `podman exec`: pid 1's seccomp mode and filter
/// count, capabilities and no_new_privs, its hostname, and files in podman's bind mounts
/// (/etc/hosts, /etc/hostname, /run/.containerenv) and in /dev/shm.
#[derive(Debug, PartialEq)]
struct ContainerState {
    status: Vec<String>,
    hostname: String,
    files: String,
}

impl ContainerState {
    fn read(p: &Podman, name: &str) -> ContainerState {
        let status = p
            .exec(name, &["cat", "/proc/1/status"])
            .lines()
            .filter(|l| {
                ["Seccomp", "Cap", "NoNewPrivs"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(String::from)
            .collect::<Vec<_>>();
        assert!(
            status
                .iter()
                .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
            "podman's seccomp filter is not on pid 1: {status:?}"
        );
        ContainerState {
            status,
            hostname: p.exec(name, &["hostname"]),
            files: p.exec(
                name,
                &[
                    "md5sum",
                    "/etc/hosts",
                    "/etc/hostname",
                    "/run/.containerenv",
                    "/dev/shm/data",
                ],
            ),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut ids = self.run(&["ps", "-a", "-q", "--no-trunc"]).stdout;
        ids.push(b'\n');
        ids.extend(self.run(&["pod", "ps", "-q", "--no-trunc"]).stdout);
        let _ = self.run(&["pod", "rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        // podman 4.3 + runc on this cgroup v1 host sometimes leave a container's or pod's
        // (empty) cgroups behind after `rm -f`, restored or not: remove them (a pod's
        // holds its containers' `libpod-ID`; deepest first).
        let ids = String::from_utf8_lossy(&ids);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut parents = vec![PathBuf::from("/sys/fs/cgroup/libpod_parent")];
        for cg in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
            let Ok(cg) = cg else { continue };
            parents.push(cg.path().join("libpod_parent"));
        }
        let ours = |n: &std::ffi::OsStr| {
            let n = n.to_string_lossy();
            ids.iter().any(|id| n == *id || n == format!("libpod-{id}"))
        };
        for parent in parents {
            for d in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if !ours(&d.file_name()) {
                    continue;
                }
                for sub in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                    if ours(&sub.file_name()) {
                        let _ = std::fs::remove_dir(sub.path());
                    }
                }
                let _ = std::fs::remove_dir(d.path());
            }
        }
        let _ = self.run(&["rmi", "-a", "-f"]);
        // Whatever podman left mounted under the directory (the shm tmpfs of a container
        // that failed half-way), deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        // Kept for a look when the test failed (the storage goes in any case).
        if std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir.join("root"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const IMAGE: &str = "localhost/cryo-busybox:test";

macro_rules! need_podman {
    () => {
        if !integration::require_tools(&[("podman", "--version"), ("runc", "--version")]) {
            return;
        }
    };
}

/// Starts the counter container `c` with a file in /dev/shm; returns its state.
fn started(p: &Podman) -> ContainerState {
    p.import_busybox();
    p.start_counter("c");
    p.exec("c", &["sh", "-c", "seq 1 5000 > /dev/shm/data"]);
    ContainerState::read(p, "c")
}

/// Test 1: `podman container checkpoint` then `podman container restore` in place (with
/// `--keep`: the logs show cryo did both).
#[test]
fn checkpoint_and_restore() {
    need_podman!();
    let _g = serial();
    let p = Podman::new("inplace");
    let before = started(&p);
    let (_, t_ck) = p.timed(&["container", "checkpoint", "--keep", "c"]);
    let last = p.check_stopped("c");
    let (_, t_rs) = p.timed(&["container", "restore", "--keep", "c"]);
    p.check_restored("c", last, &before);
    eprintln!("podman checkpoint {t_ck:?}, restore {t_rs:?}");
    // The logs runc asked for, in podman's work dir (the container's userdata).
    let userdata = p.ok(&["container", "inspect", "--format", "{{.StaticDir}}", "c"]);
    let dump_log = std::fs::read_to_string(Path::new(&userdata).join("dump.log")).unwrap();
    assert!(dump_log.contains("Dumped "), "dump.log: {dump_log}");
    let rst_log = std::fs::read_to_string(Path::new(&userdata).join("restore.log")).unwrap();
    assert!(rst_log.contains("Restored "), "restore.log: {rst_log}");
    assert!(Path::new(&userdata)
        .join("checkpoint/inventory.img")
        .exists());
    assert!(Path::new(&userdata)
        .join("checkpoint/descriptors.json")
        .exists());
}

/// Test 2: `checkpoint --export`, `podman rm`, `restore --import`: the container comes back
/// from the archive alone.
#[test]
fn export_rm_import() {
    need_podman!();
    let _g = serial();
    let p = Podman::new("export");
    let before = started(&p);
    let tar = p.dir.join("c.tar.zst");
    let tars = tar.display().to_string();
    let (_, t_ck) = p.timed(&["container", "checkpoint", "--export", &tars, "c"]);
    let last = p.check_stopped("c");
    let o = Command::new("tar")
        .args(["-I", "zstd", "-tf", &tars])
        .output()
        .unwrap();
    let list = ok(&o, "tar -t the export");
    for f in [
        "checkpoint/inventory.img",
        "checkpoint/descriptors.json",
        "stats-dump",
    ] {
        assert!(
            list.lines().any(|l| l == f),
            "{f} not in the export: {list}"
        );
    }
    inspect_export(&tar, &before);
    p.ok(&["rm", "-f", "-t", "0", "c"]);
    // (Not `inspect c`: that also matches an image whose ID starts with "c".)
    assert_eq!(
        p.run(&["container", "exists", "c"]).status.code(),
        Some(1),
        "c still exists"
    );
    let (_, t_rs) = p.timed(&["container", "restore", "--import", &tars]);
    p.check_restored("c", last, &before);
    eprintln!("podman checkpoint --export {t_ck:?}, restore --import {t_rs:?}");
}

/// Test 2b: the same with podman's overlay storage driver (issue #16 item 4): the root is
/// an overlayfs mount of the image's layers; `rm` unmounts it and `restore --import` makes
/// a new one from the image and the export's rootfs changes. A file the container wrote
/// into its root before the checkpoint is there after it, the counter goes on, and what
/// the init maps from the root (busybox) is the new overlay's file.
#[test]
fn export_rm_import_on_overlay() {
    need_podman!();
    let _g = serial();
    let p = Podman::with_driver("overlay", "overlay");
    let before = started(&p);
    let root_fs = |p: &Podman| p.exec("c", &["sh", "-c", "grep ' / / ' /proc/1/mountinfo"]);
    let mi = root_fs(&p);
    assert!(
        mi.contains(" - overlay "),
        "the root is not an overlay: {mi}"
    );
    p.exec("c", &["sh", "-c", "echo in-the-root > /etc/written"]);
    let tar = p.dir.join("c.tar.zst");
    let tars = tar.display().to_string();
    p.ok(&["container", "checkpoint", "--export", &tars, "c"]);
    let last = p.check_stopped("c");
    p.ok(&["rm", "-f", "-t", "0", "c"]);
    p.ok(&["container", "restore", "--import", &tars]);
    p.check_restored("c", last, &before);
    let mi = root_fs(&p);
    assert!(
        mi.contains(" - overlay "),
        "the root is not an overlay: {mi}"
    );
    assert_eq!(p.exec("c", &["cat", "/etc/written"]), "in-the-root");
    let mapped = p.exec(
        "c",
        &[
            "sh",
            "-c",
            "stat -L -c %d:%i /proc/1/exe; stat -c %d:%i /bin/busybox",
        ],
    );
    let ids: Vec<&str> = mapped.lines().collect();
    assert!(
        ids.len() == 2 && ids[0] == ids[1],
        "pid 1's executable is not the root's /bin/busybox: {ids:?}"
    );
}

/// `cryo inspect` of the export (zstd, read in place): the container's name, image and
/// OCI spec from podman's files, the process tree with the shell's command line and
/// environment from its saved memory, its namespaces, mounts and /dev/shm content, and a
/// string of its command line found in its memory.
fn inspect_export(archive: &Path, before: &ContainerState) {
    let a = archive.to_str().unwrap();
    let o = Command::new(cryo_bin())
        .args(["inspect", "--json", a])
        .output()
        .unwrap();
    let out = ok(&o, "cryo inspect --json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source"]["container"], "podman", "{}", v["source"]);
    assert_eq!(v["source"]["compression"], "zstd");
    assert!(v["summary"]["tool"].as_str().unwrap().starts_with("cryo "));
    let c = &v["container"];
    assert_eq!(
        (c["name"].as_str(), c["image"].as_str()),
        (Some("c"), Some(IMAGE))
    );
    assert_eq!(c["id"].as_str().map(str::len), Some(64), "{c}");
    let script = "i=0; while :; do i=$((i+1)); echo $i >> /data/log; sleep 0.05; done";
    assert_eq!(c["spec"]["args"], serde_json::json!(["sh", "-c", script]));
    assert_eq!(c["spec"]["hostname"], before.hostname.as_str());
    assert_eq!(c["network"], serde_json::Value::Null, "--network none");
    let shm: Vec<&str> = c["dev_shm"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n[0].as_str().unwrap())
        .collect();
    assert!(shm.contains(&"data"), "/dev/shm: {shm:?}");
    let init = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == 1)
        .expect("pid 1 in the container");
    assert_eq!(init["argv"], serde_json::json!(["sh", "-c", script]));
    assert!(init["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "container=podman"));
    assert_eq!(init["seccomp"], "filter");
    assert_eq!(init["exe"], "/bin/busybox");
    let uts = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "uts")
        .unwrap();
    assert_eq!(uts["saved"], true);
    assert_eq!(uts["details"]["hostname"], before.hostname.as_str());
    assert!(v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountpoint"] == "/data" && m["external"].is_string()));
    let o = Command::new(cryo_bin())
        .args(["inspect", "--json", "--search", "echo $i >> /data/log", a])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&ok(&o, "cryo inspect --search")).unwrap();
    assert!(
        s["search"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["pid"] == 1),
        "{s}"
    );
    let o = Command::new(cryo_bin())
        .args(["inspect", a])
        .output()
        .unwrap();
    let t = ok(&o, "cryo inspect");
    assert!(
        t.contains("podman checkpoint") && t.contains("name          c"),
        "{t}"
    );
}

/// The `criu_statistics` object of `--print-stats` output.
fn criu_stats(out: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: not JSON: {out}"));
    let s = v["container_statistics"][0]["criu_statistics"].clone();
    assert!(s.is_object(), "no criu_statistics: {v}");
    s
}

fn figure(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing or zero in {s}"))
}

/// Test 3: `--print-stats`: podman shows the figures cryo measured (read from `stats-dump` and
/// `stats-restore` in its work dir), not zeros.
#[test]
fn print_stats() {
    need_podman!();
    let _g = serial();
    let p = Podman::new("stats");
    let before = started(&p);
    let (out, _) = p.timed(&["container", "checkpoint", "--print-stats", "c"]);
    let d = criu_stats(&out);
    for k in [
        "freezing_time",
        "frozen_time",
        "memdump_time",
        "memwrite_time",
        "pages_scanned",
        "pages_written",
    ] {
        assert!(figure(&d, k) > 0, "{k} is 0: {d}");
    }
    assert!(
        figure(&d, "pages_written") <= figure(&d, "pages_scanned"),
        "{d}"
    );
    // The container was frozen for less than the whole runc checkpoint took.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runtime_us = v["container_statistics"][0]["runtime_checkpoint_duration"]
        .as_u64()
        .unwrap_or(0);
    assert!(figure(&d, "frozen_time") < runtime_us, "{out}");
    let last = p.check_stopped("c");
    let (out, _) = p.timed(&["container", "restore", "--print-stats", "c"]);
    let r = criu_stats(&out);
    for k in ["forking_time", "restore_time", "pages_restored"] {
        assert!(figure(&r, k) > 0, "{k} is 0: {r}");
    }
    p.check_restored("c", last, &before);
    eprintln!("checkpoint stats {d}\nrestore stats {r}");
}

/// `podman run` of busybox httpd on the default bridge network; returns the container's
/// address.
fn start_web(p: &Podman, name: &str) -> String {
    let n = nofile_hard();
    p.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--ulimit",
        &format!("nofile={n}:{n}"),
        "--ulimit",
        "nproc=32768:32768",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo hello from the container > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let ip = p.ok(&[
        "container",
        "inspect",
        "--format",
        "{{.NetworkSettings.IPAddress}}",
        name,
    ]);
    assert!(!ip.is_empty(), "no address on the bridge network");
    wait_for("httpd", 10, || {
        std::net::TcpStream::connect((ip.as_str(), 80)).is_ok()
    });
    ip
}

/// A client of the container half-way through its request (the server's child waits for
/// the end of the headers).
fn half_request(ip: &str) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect((ip, 80)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut c, b"GET /index.html HTTP/1.0\r\nHost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c
}

/// The client ends its request and reads the whole answer.
fn finish_request(mut c: std::net::TcpStream) -> String {
    std::io::Write::write_all(&mut c, b"\r\n").unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut c, &mut s).unwrap();
    s
}

/// A container serving HTTP on podman's default (bridge) network, with a client's
/// connection open half-way through a request: `podman container checkpoint
/// --tcp-established`, then `restore --tcp-established` in place, and again through
/// `--export` / `rm` / `restore --import`: each time the client finishes its request on the
/// same connection and gets the page.
#[test]
fn tcp_established_on_the_bridge_network() {
    need_podman!();
    let _g = serial();
    let p = Podman::new("tcpest");
    p.import_busybox();
    let ip = start_web(&p, "web");
    let c = half_request(&ip);
    p.ok(&[
        "container",
        "checkpoint",
        "--tcp-established",
        "--keep",
        "web",
    ]);
    assert_ne!(p.status("web"), "running");
    p.ok(&["container", "restore", "--tcp-established", "--keep", "web"]);
    assert_eq!(p.status("web"), "running");
    let r = finish_request(c);
    assert!(
        r.starts_with("HTTP/1.") && r.contains("hello from the container"),
        "{r}"
    );

    let c = half_request(&ip);
    let tar = p.dir.join("web.tar.zst");
    let tars = tar.display().to_string();
    p.ok(&[
        "container",
        "checkpoint",
        "--tcp-established",
        "--export",
        &tars,
        "web",
    ]);
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    p.ok(&[
        "container",
        "restore",
        "--tcp-established",
        "--import",
        &tars,
    ]);
    assert_eq!(p.status("web"), "running");
    let r = finish_request(c);
    assert!(r.contains("hello from the container"), "{r}");
}

/// Test: `podman container checkpoint --pre-checkpoint` (runc's pre-dump: the container runs
/// on), then `checkpoint --with-previous` (a dump whose parent is the pre-checkpoint: only
/// the pages written since are saved) and `restore`: the counter goes on.
#[test]
fn pre_checkpoint_then_with_previous() {
    need_podman!();
    let _g = serial();
    let p = Podman::new("precheckpoint");
    let before = started(&p);
    p.ok(&["container", "checkpoint", "--pre-checkpoint", "c"]);
    assert_eq!(p.status("c"), "running", "after --pre-checkpoint");
    let at = p.numbers().last().copied().unwrap_or(0);
    wait_for("the counter to go on", 10, || {
        p.numbers().last().is_some_and(|&n| n > at + 2)
    });
    p.ok(&["container", "checkpoint", "--with-previous", "--keep", "c"]);
    let last = p.check_stopped("c");
    let userdata = p.ok(&["container", "inspect", "--format", "{{.StaticDir}}", "c"]);
    let dump_log = std::fs::read_to_string(Path::new(&userdata).join("dump.log")).unwrap();
    assert!(
        dump_log.contains("uffd-wp") && dump_log.contains("parent"),
        "dump.log: {dump_log}"
    );
    p.ok(&["container", "restore", "--keep", "c"]);
    p.check_restored("c", last, &before);
}

/// A pod (infra container sharing net, ipc and uts) with a member counting: `podman
/// container checkpoint` and `restore` in place bring the member back into its pod's
/// namespaces; then `checkpoint --export`, `rm` and `restore --import --pod OTHER` move it
/// into a second pod: it joins that pod's namespaces (runc's extRootNetNS and friends
/// through cryo's join-ns), and the counter goes on without a gap or repeat each time.
#[test]
fn a_pod_member_comes_back_in_its_pod_and_moves_to_another() {
    need_podman!();
    let _g = serial();
    let p = Podman::for_pods("pod");
    p.import_busybox();
    let mkpod = |name: &str| {
        p.ok(&[
            "pod",
            "create",
            "--name",
            name,
            "--infra-image",
            IMAGE,
            "--infra-command",
            "/pause",
        ]);
        p.ok(&["pod", "start", name]);
        p.ok(&["pod", "inspect", "--format", "{{.ID}}", name])
    };
    // The namespaces a container's pid 1 is in, read from the host.
    let ns_of = |c: &str| -> Vec<String> {
        let pid = p.ok(&["container", "inspect", "--format", "{{.State.Pid}}", c]);
        ["net", "ipc", "uts"]
            .iter()
            .map(|n| {
                std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
                    .unwrap_or_else(|e| panic!("{c} (pid {pid}) ns {n}: {e}"))
                    .display()
                    .to_string()
            })
            .collect()
    };
    let infra_of = |pod: &str| p.ok(&["pod", "inspect", "--format", "{{.InfraContainerID}}", pod]);
    let pod1 = mkpod("pod1");
    let pod2 = mkpod("pod2");
    let ns1 = ns_of(&infra_of("pod1"));
    let ns2 = ns_of(&infra_of("pod2"));
    assert_ne!(ns1, ns2, "two pods share namespaces");

    p.start_counter_in("c", Some(&pod1));
    assert_eq!(ns_of("c"), ns1, "the member is not in its pod's namespaces");

    p.ok(&["container", "checkpoint", "c"]);
    let last = p.check_stopped("c");
    p.ok(&["container", "restore", "c"]);
    assert_eq!(ns_of("c"), ns1, "restored out of its pod's namespaces");
    wait_for("the counter to go on", 10, || {
        p.numbers().last().is_some_and(|&n| n > last + 3)
    });
    p.check_sequence();

    let tar = p.dir.join("c.tar.zst").display().to_string();
    p.ok(&["container", "checkpoint", "--export", &tar, "c"]);
    let last = p.check_stopped("c");
    p.ok(&["rm", "-f", "-t", "0", "c"]);
    p.ok(&["container", "restore", "--import", &tar, "--pod", &pod2]);
    assert_eq!(
        ns_of("c"),
        ns2,
        "not restored into the other pod's namespaces"
    );
    wait_for("the counter to go on", 10, || {
        p.numbers().last().is_some_and(|&n| n > last + 3)
    });
    p.check_sequence();
}
