//! containerd 1.6 (Debian's `containerd`, with its `ctr` and `containerd-shim-runc-v2`)
//! checkpoints and restores a container through cryo (issue #5): a private daemon is started
//! with a directory first in PATH holding `criu` → the cryo binary under test (containerd →
//! shim → runc inherit PATH; the shim passes no `--criu`). A one-layer OCI image archive made
//! from the busybox rootfs (`bundles/busybox/build-rootfs.sh`) is imported with `ctr images
//! import`; `ctr run -d` starts a counter writing to a bind-mounted host directory; `ctr c
//! checkpoint --task --rw` (containerd pauses the task, runc dumps with `--leave-running
//! --file-locks` into a frozen cgroup, containerd resumes it), then the task is killed and the
//! container removed, and `ctr c restore --live --rw` brings it back: running, the counter
//! going on from the checkpoint point with no number skipped, the rw layer back.
//!
//! Everything is removed even when a test fails (`Daemon`'s drop): tasks, containers,
//! images, the daemon (SIGTERM, then SIGKILL), its shims, mounts under the scratch directory,
//! the scratch directory, `/run/containerd/runc/NS`, and the entries it added under
//! `/run/containerd/{s,fifo}` (`/run/containerd` itself when it was not there before).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration::{cryo_bin, ok, root, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the test drives (the shim knows only `-v`).
const TOOLS: &[(&str, &str)] = &[
    ("containerd", "--version"),
    ("ctr", "--version"),
    ("runc", "--version"),
    ("containerd-shim-runc-v2", "-v"),
];

macro_rules! need_containerd {
    () => {
        if !integration::require_tools(TOOLS) {
            return;
        }
    };
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    ok(&o, "sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Puts `bytes` into the layout's blobs; returns its descriptor JSON.
fn blob(layout: &Path, media: &str, file: &Path) -> serde_json::Value {
    let hex = sha256(file);
    let size = std::fs::metadata(file).unwrap().len();
    let dst = layout.join("blobs/sha256").join(&hex);
    std::fs::copy(file, dst).unwrap();
    serde_json::json!({ "mediaType": media, "digest": format!("sha256:{hex}"), "size": size })
}

fn write_json(p: &Path, v: &serde_json::Value) {
    std::fs::write(p, serde_json::to_vec(v).unwrap()).unwrap();
}

/// A one-layer OCI image archive (the busybox rootfs) named `name`; returns its path.
fn build_image(dir: &Path, name: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let st = Command::new("bash")
        .arg(root().join("bundles/busybox/build-rootfs.sh"))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(st.success(), "build-rootfs.sh");
    let layer = dir.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar the rootfs");
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let l = blob(&layout, "application/vnd.oci.image.layer.v1.tar", &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [l["digest"]] },
    });
    let cfile = dir.join("config.json");
    write_json(&cfile, &config);
    let c = blob(&layout, "application/vnd.oci.image.config.v1+json", &cfile);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": c,
        "layers": [l],
    });
    let mfile = dir.join("manifest.json");
    write_json(&mfile, &manifest);
    let mut m = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &mfile,
    );
    m["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
    write_json(
        &layout.join("index.json"),
        &serde_json::json!({ "schemaVersion": 2, "manifests": [m] }),
    );
    write_json(
        &layout.join("oci-layout"),
        &serde_json::json!({ "imageLayoutVersion": "1.0.0" }),
    );
    let archive = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .unwrap();
    assert!(st.success(), "tar the image layout");
    archive
}

/// Names under a directory (empty if it does not exist).
fn entries(d: &str) -> BTreeSet<String> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line contains `needle` (the daemon's shims name its address).
fn pids_with(needle: &str) -> Vec<i32> {
    entries("/proc")
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A private containerd daemon; everything it made is removed on drop.
struct Daemon {
    dir: PathBuf,
    sock: PathBuf,
    ns: String,
    child: Option<Child>,
    containers: Vec<String>,
    images: Vec<String>,
    run_existed: bool,
    run_s: BTreeSet<String>,
    run_fifo: BTreeSet<String>,
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("cryo-ctrd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["bin", "root", "state", "tmp", "opt", "host"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(cryo_bin(), dir.join("bin/criu")).unwrap();
        let sock = dir.join("c.sock");
        let config = format!(
            "version = 2\n\
             root = \"{d}/root\"\n\
             state = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/t.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let mut me = Daemon {
            sock,
            ns: format!("cryo-{name}-{}", std::process::id()),
            child: None,
            containers: Vec::new(),
            images: Vec::new(),
            run_existed: Path::new("/run/containerd").exists(),
            run_s: entries("/run/containerd/s"),
            run_fifo: entries("/run/containerd/fifo"),
            dir,
        };
        let path = format!(
            "{}:{}",
            me.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        // The daemon (and the shim and runc it starts) find cryo as `criu`.
        let which = Command::new("sh")
            .args(["-c", "command -v criu"])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&which.stdout).trim(),
            me.dir.join("bin/criu").display().to_string()
        );
        let log = std::fs::File::create(me.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(me.dir.join("config.toml"))
            .env("PATH", path)
            .env("TMPDIR", me.dir.join("tmp"))
            .env("XDG_RUNTIME_DIR", me.dir.join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        me.child = Some(child);
        let t = Instant::now();
        loop {
            if me.sock.exists() && me.ctr(&["version"]).status.success() {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                panic!("containerd did not come up:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", &self.ns])
            .args(args)
            .env("TMPDIR", self.dir.join("tmp"))
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr ARGS` that must succeed; on failure the daemon's log and the newest
    /// criu-dump.log/restore.log are shown.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        if !o.status.success() {
            let mut logs = String::new();
            let find = Command::new("find")
                .arg(&self.dir)
                .args(["-name", "*.log", "-newer"])
                .arg(self.dir.join("config.toml"))
                .output();
            if let Ok(f) = find {
                for p in String::from_utf8_lossy(&f.stdout).lines() {
                    if p.ends_with("containerd.log") {
                        continue;
                    }
                    let text = std::fs::read_to_string(p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(20).collect();
                    logs.push_str(&format!(
                        "--- {p} (end, newest first)\n{}\n",
                        tail.join("\n")
                    ));
                }
            }
            let d = self.log();
            let dtail: Vec<&str> = d.lines().rev().take(25).collect();
            panic!(
                "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{logs}--- containerd.log (end, newest first)\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                dtail.join("\n")
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn import(&mut self, archive: &Path, name: &str) {
        self.images.push(name.to_string());
        self.ctr_ok(&["images", "import", &archive.display().to_string()]);
        let list = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(list.lines().any(|l| l == name), "imported images: {list}");
    }

    /// The task's status and host pid (`ctr task ls`).
    fn task(&self, id: &str) -> Option<(String, i32)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&id)).then(|| (w[2].to_string(), w[1].parse().unwrap_or(0)))
        })
    }

    fn remove_task(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.ctr(&["task", "rm", "-f", id]).status.success() || self.task(id).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `dir` and every directory below it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            for c in self.containers.clone() {
                self.remove_task(&c);
                let _ = self.ctr(&["containers", "rm", &c]);
            }
            for i in &self.images {
                let _ = self.ctr(&["images", "rm", "--sync", i]);
            }
            // Checkpoint images and anything else left in the namespace.
            if let Ok(o) = Command::new("ctr")
                .arg("--address")
                .arg(&self.sock)
                .args(["--namespace", &self.ns, "images", "ls", "-q"])
                .output()
            {
                for i in String::from_utf8_lossy(&o.stdout).lines() {
                    let _ = self.ctr(&["images", "rm", "--sync", i]);
                }
            }
            let _ = self.ctr(&["namespaces", "rm", &self.ns]);
        }
        // Shims still running for this daemon (a task that would not go).
        let addr = self.sock.display().to_string();
        for p in pids_with(&addr) {
            if Some(p as u32) != self.child.as_ref().map(|c| c.id()) {
                // SAFETY: kill with integers; the pid is a shim of this test's daemon.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with integers; our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Mounts left under the scratch directory (rootfs of a task that would not go).
        let prefix = self.dir.display().to_string();
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mi
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/{}", self.ns));
        // The (empty) cgroups runc made for the namespace's tasks, on every hierarchy.
        if let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hier.flatten() {
                let top = h.path().join(&self.ns);
                if top.is_dir() {
                    let mut dirs: Vec<PathBuf> = walk_dirs(&top);
                    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
                    for d in dirs {
                        let _ = std::fs::remove_dir(d);
                    }
                }
            }
        }
        for (d, before) in [
            ("/run/containerd/s", &self.run_s),
            ("/run/containerd/fifo", &self.run_fifo),
        ] {
            for e in entries(d).difference(before) {
                let p = Path::new(d).join(e);
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
        if !self.run_existed {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
        // Kept for a look when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("containerd scratch kept in {}", self.dir.display());
        }
    }
}

/// The numbers the container appended to the host log, in order.
fn numbers(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

const IMAGE: &str = "docker.io/cryo/busybox:test";

/// Starts container `id`: a shell that writes /marker (in the rw layer), then counts in its
/// memory, appending each number to /data/log.txt (the host's `host/` dir) and /count.
fn run_counter(d: &mut Daemon, id: &str) {
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        d.dir.join("host").display()
    );
    d.containers.push(id.to_string());
    d.ctr_ok(&[
        "run",
        "-d",
        "--mount",
        &mount,
        IMAGE,
        id,
        "sh",
        "-c",
        "echo cryo > /marker; i=0; while true; do i=$((i+1)); echo $i >> /data/log.txt; echo $i > /count; sleep 0.05; done",
    ]);
}

/// Checks that after `before` numbers the log goes on from a number at most `at_kill` and
/// at least `at_ckpt`, one by one; returns the last.
fn check_continues(log: &Path, before: usize, at_ckpt: u64, at_kill: u64) -> u64 {
    wait_for("the restored counter", 15, || {
        numbers(log).len() > before + 5
    });
    let n = numbers(log);
    let new = &n[before..];
    let first = new[0];
    assert!(
        first > at_ckpt && first <= at_kill + 1,
        "the restored counter starts at {first}: not right after the checkpoint (between {} and {})",
        at_ckpt + 1,
        at_kill + 1
    );
    for w in new.windows(2) {
        assert_eq!(w[1], w[0] + 1, "the restored counter skipped: {new:?}");
    }
    *new.last().unwrap()
}

/// Kills and removes the task and container `id`; returns the log's numbers then.
fn kill_and_remove(d: &Daemon, id: &str, log: &Path) -> Vec<u64> {
    let (_, pid) = d.task(id).expect("the task");
    d.remove_task(id);
    wait_for("the task to go", 10, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    d.ctr_ok(&["containers", "rm", id]);
    numbers(log)
}

/// `ctr c restore --live --rw ID REF`: the task runs with the rw layer back (/marker), its
/// counter going on from the checkpoint point; returns the wall time.
fn restore_and_check(d: &Daemon, id: &str, reference: &str, log: &Path, at_ckpt: u64) -> f64 {
    let all = numbers(log);
    let at_kill = *all.last().unwrap();
    let t = Instant::now();
    d.ctr_ok(&["containers", "restore", "--live", "--rw", id, reference]);
    let secs = t.elapsed().as_secs_f64();
    let (st, pid) = d.task(id).expect("the restored task is listed");
    assert_eq!(st, "RUNNING", "after the restore");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    check_continues(log, all.len(), at_ckpt, at_kill);
    let marker = std::fs::read_to_string(format!("/proc/{pid}/root/marker"));
    assert_eq!(marker.ok().as_deref(), Some("cryo\n"), "the rw layer");
    secs
}

/// `ctr images export --skip-manifest-json` of checkpoint `reference` (ctr 1.6 fails
/// without it: it cannot write a docker manifest for a checkpoint index), then `cryo
/// inspect` of the archive, plain and gzipped: containerd's annotations (image, checkpoint
/// name, runtime), the spec from its checkpoint config (the command; the container id from
/// its cgroups path), the rw layer holding /marker, the process tree with the shell's
/// command line from its memory, and the log path found in its memory.
fn inspect_checkpoint(d: &Daemon, id: &str, reference: &str) {
    let tar = d.dir.join("ckpt.tar");
    d.ctr_ok(&[
        "images",
        "export",
        "--skip-manifest-json",
        tar.to_str().unwrap(),
        reference,
    ]);
    let gz = d.dir.join("ckpt.tar.gz");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", tar.display(), gz.display()))
        .output()
        .unwrap();
    ok(&o, "gzip the export");
    let script = "echo cryo > /marker; i=0; while true; do i=$((i+1)); echo $i >> /data/log.txt; echo $i > /count; sleep 0.05; done";
    for archive in [&tar, &gz] {
        let a = archive.to_str().unwrap();
        let o = Command::new(cryo_bin())
            .args(["inspect", "--json", a])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok(&o, "cryo inspect --json")).unwrap();
        assert_eq!(v["source"]["container"], "containerd", "{}", v["source"]);
        let c = &v["container"];
        assert_eq!(c["image"], IMAGE, "{c}");
        assert_eq!(c["checkpoint_name"], reference);
        assert_eq!(c["runtime_type"], "io.containerd.runc.v2");
        assert_eq!(c["id"], id);
        assert_eq!(c["spec"]["args"], serde_json::json!(["sh", "-c", script]));
        let diff: Vec<&str> = c["rootfs_diff"]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n[0].as_str().unwrap())
            .collect();
        assert!(diff.contains(&"marker"), "rw layer: {diff:?}");
        let init = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == 1)
            .expect("pid 1");
        assert_eq!(init["argv"], serde_json::json!(["sh", "-c", script]));
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountpoint"] == "/data"));
        let o = Command::new(cryo_bin())
            .args(["inspect", "--json", "--search", "/data/log.txt", a])
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
    }
}

/// `ctr c checkpoint --task --rw ID REF` (containerd pauses the task; runc dumps with
/// --leave-running --file-locks into the frozen cgroup; containerd resumes it), kill/rm,
/// `ctr c restore --live --rw ID REF`: the task runs again and its counter goes on from the
/// checkpoint point. Then once more from the same checkpoint (it is reusable). A second
/// `ctr c checkpoint` of the restored container is not tried: containerd 1.6 leaves the
/// image layers out of it ("ctr: media type not found" at restore, containerd#7980), with
/// any criu.
#[test]
fn checkpoint_and_restore_with_ctr() {
    need_containerd!();
    let _g = serial();
    let mut d = Daemon::start("cr");
    let archive = build_image(&d.dir.join("tmp"), IMAGE);
    d.import(&archive, IMAGE);
    let id = format!("cryo-ctr-{}", std::process::id());
    run_counter(&mut d, &id);
    let log = d.dir.join("host/log.txt");
    wait_for("the counter", 15, || numbers(&log).len() > 5);
    let (st, _) = d.task(&id).expect("the task is listed");
    assert_eq!(st, "RUNNING");
    let reference = "docker.io/cryo/ckpt:1";
    let at_ckpt = *numbers(&log).last().unwrap();
    let t = Instant::now();
    d.images.push(reference.to_string());
    d.ctr_ok(&["containers", "checkpoint", "--task", "--rw", &id, reference]);
    let ckpt = t.elapsed().as_secs_f64();
    // --leave-running: containerd resumed the task, which goes on.
    let (st, _) = d.task(&id).expect("the task after the checkpoint");
    assert_eq!(st, "RUNNING", "after the checkpoint");
    let n0 = numbers(&log).len();
    wait_for("the counter after the checkpoint", 10, || {
        numbers(&log).len() > n0 + 2
    });
    inspect_checkpoint(&d, &id, reference);
    kill_and_remove(&d, &id, &log);
    let r1 = restore_and_check(&d, &id, reference, &log, at_ckpt);
    kill_and_remove(&d, &id, &log);
    let r2 = restore_and_check(&d, &id, reference, &log, at_ckpt);
    eprintln!("ctr c checkpoint {ckpt:.3} s, ctr c restore {r1:.3} s, again {r2:.3} s");
}
