//! LXC (Debian's lxc 5.0) checkpoints and restores a container through cryo: `lxc-checkpoint`
//! runs `criu` from PATH with its own command line (`--tcp-established --file-locks
//! --link-remap --manage-cgroups=full --ext-mount-map auto --enable-external-sharing
//! --enable-external-masters --enable-fs hugetlbfs --enable-fs tracefs --cgroup-root ...
//! --freeze-cgroup ... --skip-in-flight --external tty[..] --force-irmap` at dump,
//! `--root ... --restore-detached --restore-sibling --inherit-fd fd[N]:tty[..]
//! --ext-mount-map console:... --external console:...` at restore), so a directory holding
//! `criu` → the cryo binary under test goes first in PATH.
//!
//! A busybox container (`lxc-create -t busybox`, from lxc-templates) in a private lxcpath,
//! with an empty network and a shell counting into a file of its root file system, is
//! checkpointed with `lxc-checkpoint -s` and restored with `lxc-checkpoint -r` three times in
//! a row: each time it is RUNNING again and its counter goes on, with no number skipped or
//! repeated. The container has no ttys (`lxc.tty.max = 0`: their masters are held by LXC's
//! monitor, which CRIU refuses too) and none of the template's host library binds (busybox is
//! static; CRIU 4.2 cannot restore a bind of Debian's `/lib`, a symlink).
//!
//! The drop stops and destroys the container (LXC removes its cgroups) and the lxcpath.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration::{cryo_bin, ok, wait_for};

/// A missing tool: the test fails under CI (CI=true), else it says SKIP.
fn missing(what: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is not installed (integration/setup.sh installs it)");
    }
    eprintln!("SKIP: {what} is not installed (integration/setup.sh installs it)");
    true
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Lxc {
    path: PathBuf,
    name: String,
    /// Holds `criu` → cryo.
    bin: PathBuf,
}

impl Lxc {
    fn cmd(&self, tool: &str, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut full = vec!["-P", self.path.to_str().unwrap(), "-n", &self.name];
        full.extend_from_slice(args);
        // Output to files, not pipes: a container started or restored in the background
        // keeps the command's stdio open.
        let out = self.path.join("cmd.out");
        let err = self.path.join("cmd.err");
        let status = Command::new(tool)
            .args(&full)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        let o = Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        };
        eprintln!(
            "$ {tool} {}\n{}{}",
            full.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    fn state(&self) -> String {
        let o = self.cmd("lxc-info", &["-s", "-H"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn rootfs(&self) -> PathBuf {
        self.path.join(&self.name).join("rootfs")
    }

    fn counter(&self) -> Vec<u64> {
        std::fs::read_to_string(self.rootfs().join("counter"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        let _ = self.cmd("lxc-stop", &["-k"]);
        let _ = self.cmd("lxc-destroy", &["-f"]);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Makes the container: the busybox template, then its configuration trimmed as the module
/// says, with a counting shell as its init.
fn create(tag: &str) -> Lxc {
    let path = std::env::temp_dir().join(format!("cryo-lxc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    let bin = path.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(cryo_bin(), bin.join("criu")).unwrap();
    let lxc = Lxc {
        name: format!("cryo-{tag}-{}", std::process::id()),
        path,
        bin,
    };
    let conf = lxc.path.join("create.conf");
    std::fs::write(&conf, "lxc.net.0.type = empty\n").unwrap();
    ok(
        &lxc.cmd(
            "lxc-create",
            &["-t", "busybox", "-f", conf.to_str().unwrap()],
        ),
        "lxc-create",
    );
    let cfg = lxc.path.join(&lxc.name).join("config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !(l.contains("none ro,bind") && l.contains("lib")))
        .filter(|l| !l.starts_with("lxc.tty.max"))
        .map(str::to_string)
        .collect();
    out.push("lxc.tty.max = 0".into());
    out.push("lxc.init.cmd = /bin/counter.sh".into());
    std::fs::write(&cfg, out.join("\n") + "\n").unwrap();
    let script = lxc.rootfs().join("bin/counter.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ni=0\nwhile :; do i=$((i+1)); echo $i >> /counter; sleep 0.1; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    lxc
}

fn counter_grows(lxc: &Lxc) {
    let n = lxc.counter().len();
    wait_for("the counter to go on", 10, || lxc.counter().len() > n + 3);
}

/// Every number once, in order, from 1.
fn no_gap(v: &[u64]) {
    for (i, n) in v.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64 + 1,
            "counter skipped or repeated at line {}",
            i + 1
        );
    }
}

#[test]
fn lxc_checkpoint_and_restore_three_times() {
    if !have("lxc-checkpoint") && missing("lxc (lxc-checkpoint)") {
        return;
    }
    if !Path::new("/usr/share/lxc/templates/lxc-busybox").exists()
        && missing("lxc-templates (the busybox template)")
    {
        return;
    }
    let lxc = create("ckpt");
    ok(&lxc.cmd("lxc-start", &[]), "lxc-start");
    wait_for("the container to run", 10, || lxc.state() == "RUNNING");
    counter_grows(&lxc);
    for round in 1..=3 {
        let dir = lxc.path.join(format!("checkpoint-{round}"));
        let o = lxc.cmd("lxc-checkpoint", &["-s", "-D", dir.to_str().unwrap()]);
        let log = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        assert!(
            o.status.success(),
            "dump {round} failed:\n{}",
            log("dump.log")
        );
        assert_eq!(
            lxc.state(),
            "STOPPED",
            "round {round}: stopped by the checkpoint"
        );
        let frozen = lxc.counter();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            lxc.counter(),
            frozen,
            "round {round}: nothing counts while dumped"
        );
        let o = lxc.cmd("lxc-checkpoint", &["-r", "-D", dir.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "restore {round} failed:\n{}",
            log("restore.log")
        );
        wait_for("the container to run", 10, || lxc.state() == "RUNNING");
        counter_grows(&lxc);
        let after = lxc.counter();
        assert!(after.len() > frozen.len());
        no_gap(&after);
        // cryo wrote these images (its manifest), not some other criu in PATH.
        assert!(dir.join("cryo-manifest.json").exists());
    }
}
