//! runc 1.1.5 checkpoints and restores containers through cryo (`runc --criu CRYO`), as it
//! does with CRIU (issue #5): the busybox bundles of `bundles/` (made by `mkbundle`: pipe
//! stdio, a terminal with a console socket, bind mounts, a tmpfs /dev/shm with data, an
//! overlayfs root), each run with `runc run -d`, checkpointed, restored with `runc restore
//! -d`, then checked: `runc state` says running, the counter goes on, `runc exec` works, the
//! terminal answers, bind mounts reach the host, the overlay's files are held again. Also
//! `--leave-running` and ten cycles of one container.
//!
//! The containers are always deleted (`runc delete -f`), also when a test fails. The tests
//! run one at a time (they share the machine's two cores with the restores they time).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::{cryo_bin, ok, root, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scratch directory of its own (not `integration::scratch`: that makes the test a child
/// subreaper, and a container init reparented to it would stay a zombie that `runc delete`
/// waits for).
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cryo-runc-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn runc(args: &[&str]) -> Output {
    Command::new("runc")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runc")
}

/// Lines read from a pipe by a thread, and whether it reached the end.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>, Arc<AtomicBool>);

impl Lines {
    fn follow(&self, r: impl Read + Send + 'static) {
        let me = self.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines() {
                let Ok(l) = l else { break };
                me.0.lock().unwrap().push(l);
            }
            me.1.store(true, Ordering::SeqCst);
        });
    }

    fn numbers(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// A container made from a bundle; deleted on drop.
struct Container {
    id: String,
    dir: PathBuf,
    bundle: PathBuf,
    /// The counter as the container prints it on stdout (a pipe), one reader per run.
    out: Vec<Lines>,
    console: Option<Console>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = runc(&["delete", "-f", &self.id]);
        self.console = None;
        // Kept for a look when the test failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The console-socket receiver (integration/scripts/console_socket.py).
struct Console {
    child: Child,
    sock: PathBuf,
    out: PathBuf,
    input: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    fn start(dir: &Path) -> Console {
        let sock = dir.join("console.sock");
        let out = dir.join("console.out");
        let input = dir.join("console.in");
        let child = Command::new("python3")
            .arg(root().join("integration/scripts/console_socket.py"))
            .args([&sock, &out, &input])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the console receiver");
        wait_for("the console socket", 10, || sock.exists() && input.exists());
        Console {
            child,
            sock,
            out,
            input,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.out.with_extension("out.events")).unwrap_or_default()
    }

    /// Types a shell command computing `a+b` and waits for the answer on the terminal.
    fn ask(&self, tag: &str, a: u32, b: u32) {
        let line = format!("echo {tag}\"\"-$(({a}+{b}))\n");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.input)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
            .unwrap();
        let want = format!("{tag}-{}", a + b);
        wait_for(&format!("'{want}' on the console"), 10, || {
            self.text().contains(&want)
        });
    }
}

impl Container {
    fn new(name: &str, kind: &str) -> Container {
        Container::with(name, kind, None)
    }

    /// `arg`: mkbundle's third argument (default: the scratch `host` directory).
    fn with(name: &str, kind: &str, arg: Option<&Path>) -> Container {
        let dir = scratch(name);
        let bundle = dir.join("bundle");
        let host = dir.join("host");
        std::fs::create_dir_all(&host).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_mkbundle"))
            .args([
                kind.as_ref(),
                bundle.as_os_str(),
                arg.unwrap_or(&host).as_os_str(),
            ])
            .output()
            .unwrap();
        ok(&o, "mkbundle");
        Container {
            id: format!("cryo-{name}-{}", std::process::id()),
            dir,
            bundle,
            out: Vec::new(),
            console: None,
        }
    }

    fn host(&self, p: &str) -> PathBuf {
        self.dir.join("host").join(p)
    }

    /// `runc run -d` (or `restore -d` with `restore` = images): stdout and stderr are pipes
    /// read by threads; the terminal goes to the console receiver.
    fn start(&mut self, restore: Option<&Path>, extra: &[&str]) {
        let mut args: Vec<String> = vec![];
        match restore {
            None => args.extend(["run".into(), "-d".into()]),
            Some(img) => {
                args.extend(["--criu".into(), cryo_bin().display().to_string()]);
                args.extend(["restore".into(), "-d".into(), "--image-path".into()]);
                args.push(img.display().to_string());
            }
        }
        args.extend(["--bundle".into(), self.bundle.display().to_string()]);
        if let Some(c) = &self.console {
            args.extend(["--console-socket".into(), c.sock.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.id.clone());
        let mut child = Command::new("runc")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runc");
        let lines = Lines::default();
        lines.follow(child.stdout.take().unwrap());
        let errs = Lines::default();
        errs.follow(child.stderr.take().unwrap());
        let st = child.wait().unwrap();
        if !st.success() {
            std::thread::sleep(Duration::from_millis(200));
            let log = restore
                .map(|i| std::fs::read_to_string(i.join("restore.log")).unwrap_or_default())
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "runc {args:?} failed ({st}): {:?}\nrestore.log (end, newest first):\n{}",
                errs.0.lock().unwrap(),
                tail.join("\n")
            );
        }
        self.out.push(lines);
        self.check_running();
    }

    fn state(&self) -> serde_json::Value {
        let o = runc(&["state", &self.id]);
        ok(&o, "runc state");
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn check_running(&self) {
        let s = self.state();
        assert_eq!(s["status"], "running", "runc state: {s}");
        let pid = s["pid"].as_i64().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }

    fn exec(&self, argv: &[&str]) -> Output {
        let mut a = vec!["exec", &self.id];
        a.extend_from_slice(argv);
        runc(&a)
    }

    fn exec_ok(&self, argv: &[&str]) -> String {
        let o = self.exec(argv);
        ok(&o, &format!("runc exec {argv:?}"));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `runc checkpoint` into a new image directory; returns it.
    fn checkpoint(&self, n: usize, extra: &[&str]) -> PathBuf {
        let img = self.dir.join(format!("img-{n}"));
        let cryo = cryo_bin().display().to_string();
        let mut a = vec!["--criu", &cryo, "checkpoint", "--image-path"];
        let imgs = img.display().to_string();
        a.push(&imgs);
        a.extend_from_slice(extra);
        a.push(&self.id);
        let o = runc(&a);
        if !o.status.success() {
            let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
            let errs: Vec<&str> = log.lines().filter(|l| l.contains("Error")).collect();
            ok(&o, &format!("runc checkpoint (dump.log errors: {errs:?})"));
        }
        img
    }

    /// The counter in the container's /dev/shm/count (through `runc exec`).
    fn shm_count(&self) -> u64 {
        self.exec_ok(&["cat", "/dev/shm/count"])
            .parse()
            .unwrap_or(0)
    }

    /// Waits until the stdout of run `i` shows a number; returns the last one.
    fn wait_output(&self, i: usize, above: u64) -> u64 {
        wait_for("the counter on stdout", 10, || {
            self.out[i].numbers().last().is_some_and(|&n| n > above)
        });
        *self.out[i].numbers().last().unwrap()
    }

    /// After a checkpoint (the container gone): the whole output of run `i` (its pipe ends
    /// when the killed tasks close it).
    fn last_output(&self, i: usize) -> u64 {
        wait_for("the end of the old stdout pipe", 10, || {
            self.out[i].1.load(Ordering::SeqCst)
        });
        *self.out[i]
            .numbers()
            .last()
            .expect("output before the checkpoint")
    }

    fn gone(&self) {
        let o = runc(&["state", &self.id]);
        assert!(
            !o.status.success(),
            "the container still exists after the checkpoint: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

macro_rules! need_runc {
    () => {
        if !integration::require_tools(&[("runc", "--version")]) {
            return;
        }
    };
}

/// (a) pipe stdio: the counter continues on the restore's own stdout pipe (inherit_fd),
/// with no number lost or repeated; /dev/shm holds the same count; `runc exec` works.
#[test]
fn pipe_stdio_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("pipe", "pipe");
    c.start(None, &[]);
    c.wait_output(0, 3);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let desc = std::fs::read_to_string(img.join("descriptors.json")).unwrap();
    assert!(desc.contains("pipe:["), "descriptors.json: {desc}");
    let before = c.last_output(0);
    c.start(Some(&img), &[]);
    let after = c.wait_output(1, 0);
    assert!(after > before);
    let first = c.out[1].numbers()[0];
    assert_eq!(
        first,
        before + 1,
        "the counter went on from {before} at {first} on the new pipe"
    );
    assert!(c.shm_count() >= after);
    c.exec_ok(&["true"]);
    assert_eq!(c.exec_ok(&["hostname"]), "cryo-pipe");
}

/// (b) terminal: the restored shell answers on the new pty master, which cryo sent back in
/// the `orphan-pts-master` notification and runc forwarded to the console socket.
#[test]
fn terminal_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("tty", "tty");
    c.console = Some(Console::start(&c.dir));
    c.start(None, &[]);
    c.console.as_ref().unwrap().ask("before", 40, 2);
    let img = c.checkpoint(0, &[]);
    c.gone();
    c.start(Some(&img), &[]);
    let con = c.console.as_ref().unwrap();
    wait_for("the master from the restore", 10, || {
        con.events().contains("orphan-pts-master")
    });
    con.ask("after", 40, 3);
    c.exec_ok(&["true"]);
    // /dev/console is the pty's slave again, in the container's devpts.
    let mi = c.exec_ok(&["cat", "/proc/self/mountinfo"]);
    assert!(
        mi.lines()
            .any(|l| l.contains(" /0 /dev/console ") && l.contains("devpts")),
        "{mi}"
    );
}

/// (c) bind mounts: /data (rbind, rw) with /data/nested (bind, ro) inside, and a read-only
/// file bind: restored from the host paths runc names, writes reach the host, ro stays ro.
#[test]
fn bind_mount_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("binds", "binds");
    c.start(None, &[]);
    let file = c.host("cdata/count.txt");
    let count = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for("the counter in the bind mount", 10, || count() > 3);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let at_dump = count();
    // Nothing of the bind sources was saved.
    let tars: Vec<_> = std::fs::read_dir(&img)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmpfs-dev"))
        .collect();
    assert!(tars.len() < 8, "{} tmpfs images", tars.len());
    c.start(Some(&img), &[]);
    wait_for("the counter to go on in the host file", 10, || {
        count() > at_dump + 2
    });
    assert_eq!(c.exec_ok(&["cat", "/data/nested/ro.txt"]), "read-only bind");
    assert_eq!(c.exec_ok(&["cat", "/etc/cryo.txt"]), "file bind");
    let o = c.exec(&["touch", "/data/nested/x"]);
    assert!(
        !o.status.success(),
        "/data/nested is writable after restore"
    );
    c.exec_ok(&["sh", "-c", "echo from-container > /data/written"]);
    assert_eq!(
        std::fs::read_to_string(c.host("cdata/written")).unwrap(),
        "from-container\n"
    );
}

/// (d) tmpfs /dev/shm with data: its files come back byte for byte.
#[test]
fn shm_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("shm", "shm");
    c.start(None, &[]);
    c.wait_output(0, 3);
    let sum = c.exec_ok(&["md5sum", "/dev/shm/seq"]);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let before = c.last_output(0);
    c.start(Some(&img), &[]);
    c.wait_output(1, before);
    assert_eq!(c.exec_ok(&["md5sum", "/dev/shm/seq"]), sum);
    assert!(c.shm_count() > before);
}

/// An overlayfs mount of a bundle's `lower` tree at its `rootfs`, with upper and work
/// directories in the scratch `host` directory; lazily unmounted on drop.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(c: &Container) -> Overlay {
        for d in ["upper", "work"] {
            std::fs::create_dir_all(c.host(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            c.bundle.join("lower").display(),
            c.host("upper").display(),
            c.host("work").display()
        );
        let at = c.bundle.join("rootfs");
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&at)
            .output()
            .unwrap();
        ok(&o, "mount the overlay root");
        Overlay(at)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// (e) an overlayfs root (as podman's overlay driver and containerd's snapshotter make
/// them), restored onto a new overlay mount of the same layers: the counter goes on, and
/// the files the init holds open are the overlay's again (same device and inode as their
/// paths in the container, not the layers' files underneath): a lower file read, a file of
/// the upper layer appended to (the writes land in the upper directory, no line lost or
/// repeated), a deleted file (its data back, still deleted), and a lower file deleted in
/// the container: it keeps its link count, overlayfs links it nowhere, so with
/// `link-remap` (the bundle's `org.criu.config`) it is saved as a ghost, as CRIU falls back.
#[test]
fn overlay_root_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("overlay", "overlay");
    let ov = Overlay::mount(&c);
    c.start(None, &[]);
    c.wait_output(0, 3);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let before = c.last_output(0);
    // A new overlay superblock: what the files are reopened on.
    drop(ov);
    let _ov = Overlay::mount(&c);
    c.start(Some(&img), &[]);
    let after = c.wait_output(1, before + 2);
    let first = c.out[1].numbers()[0];
    assert_eq!(
        first,
        before + 1,
        "the counter went on from {before} at {first}"
    );
    let log: Vec<u64> = std::fs::read_to_string(c.host("upper/log.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(
        log.len() as u64 >= after - 1 && log.iter().copied().eq(1..=log.len() as u64),
        "/log.txt (fd 4, upper layer) is not the counter 1..{after}: {log:?}"
    );
    for (fd, path) in [(3, "/etc/passwd"), (4, "/log.txt")] {
        let held = c.exec_ok(&["stat", "-L", "-c", "%d:%i", &format!("/proc/1/fd/{fd}")]);
        let named = c.exec_ok(&["stat", "-c", "%d:%i", path]);
        assert_eq!(held, named, "fd {fd} is not the overlay's {path}");
    }
    assert_eq!(
        c.exec_ok(&["cat", "/proc/1/fd/3"]),
        "root:x:0:0:root:/root:/bin/sh"
    );
    assert_eq!(c.exec_ok(&["cat", "/proc/1/fd/5"]), "ghost");
    let link = c.exec_ok(&["readlink", "/proc/1/fd/5"]);
    assert_eq!(link, "/tmp/gone (deleted)");
    assert!(!c.exec(&["test", "-e", "/tmp/gone"]).status.success());
    assert_eq!(c.exec_ok(&["cat", "/proc/1/fd/6"]), "root:x:0:");
    let link = c.exec_ok(&["readlink", "/proc/1/fd/6"]);
    assert_eq!(link, "/etc/group (deleted)");
    assert!(!c.exec(&["test", "-e", "/etc/group"]).status.success());
}

/// `--leave-running`: the container goes on after the checkpoint, and the images restore
/// once it is deleted.
#[test]
fn leave_running() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("leave", "pipe");
    c.start(None, &[]);
    let n = c.wait_output(0, 3);
    let img = c.checkpoint(0, &["--leave-running"]);
    c.check_running();
    c.wait_output(0, n + 2);
    c.exec_ok(&["true"]);
    ok(&runc(&["delete", "-f", &c.id]), "runc delete -f");
    c.start(Some(&img), &[]);
    c.wait_output(1, 0);
    c.exec_ok(&["true"]);
}

/// Ten checkpoint/restore cycles of one container: each restore goes on from the previous.
#[test]
fn ten_cycles() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("cycles", "pipe");
    c.start(None, &[]);
    let mut last = c.wait_output(0, 2);
    for i in 0..10 {
        let img = c.checkpoint(i, &[]);
        c.gone();
        let before = c.last_output(i);
        assert!(before >= last);
        c.start(Some(&img), &[]);
        let first = c.wait_output(i + 1, 0);
        assert!(first > before, "cycle {i}: {first} after {before}");
        assert_eq!(c.out[i + 1].numbers()[0], before + 1, "cycle {i}");
        c.exec_ok(&["true"]);
        last = c.wait_output(i + 1, first);
    }
}

/// Eight different containers checkpointed at the same time by eight `runc checkpoint`s
/// (eight cryo processes), then restored at the same time (issue #13 item 5): every one
/// succeeds, each counter goes on from where its own container stopped, and each
/// container's /dev/shm is its own. No global lock or shared temp path in cryo may make one
/// fail or wait for another (bench-runc.sh `--concurrent 8` times it).
#[test]
fn eight_containers_checkpointed_and_restored_at_once() {
    need_runc!();
    let _g = serial();
    let mut cs: Vec<Container> = (0..8)
        .map(|i| Container::new(&format!("par{i}"), "pipe"))
        .collect();
    for c in cs.iter_mut() {
        c.start(None, &[]);
    }
    for c in &cs {
        c.wait_output(0, 2);
    }
    // Each container's /dev/shm gets a mark of its own, which must come back to it.
    for c in &cs {
        c.exec_ok(&["sh", "-c", &format!("echo {} > /dev/shm/mark", c.id)]);
    }
    let imgs: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = cs
            .iter()
            .map(|c| s.spawn(move || c.checkpoint(0, &[])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut before = Vec::new();
    for c in &cs {
        c.gone();
        before.push(c.last_output(0));
    }
    std::thread::scope(|s| {
        for (c, img) in cs.iter_mut().zip(&imgs) {
            s.spawn(move || c.start(Some(img), &[]));
        }
    });
    for (c, before) in cs.iter().zip(before) {
        let first = c.wait_output(1, 0);
        assert_eq!(
            c.out[1].numbers()[0],
            before + 1,
            "{}: the counter went on from {before} at {first}",
            c.id
        );
        assert_eq!(c.exec_ok(&["cat", "/dev/shm/mark"]), c.id);
    }
}

/// `runc restore` without `-d`: runc waits for the restored init (reparented to runc, a
/// subreaper, when cryo exits) and exits with its status once it is killed.
#[test]
fn foreground_restore_waits_for_the_container() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("fg", "pipe");
    c.start(None, &[]);
    c.wait_output(0, 2);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let cryo = cryo_bin().display().to_string();
    let imgs = img.display().to_string();
    let bundle = c.bundle.display().to_string();
    let mut runc_fg = Command::new("runc")
        .args([
            "--criu",
            &cryo,
            "restore",
            "--image-path",
            &imgs,
            "--bundle",
            &bundle,
            &c.id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Lines::default();
    lines.follow(runc_fg.stdout.take().unwrap());
    wait_for("the restored counter", 10, || !lines.numbers().is_empty());
    c.check_running();
    let pid = c.state()["pid"].as_i64().unwrap();
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PPid:")
                .map(|v| v.trim().parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(ppid, runc_fg.id(), "the restored init is runc's child");
    assert!(runc_fg.try_wait().unwrap().is_none(), "runc did not wait");
    ok(&runc(&["kill", &c.id, "KILL"]), "runc kill");
    let t = Instant::now();
    let st = loop {
        if let Some(st) = runc_fg.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "runc restore still waits"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!st.success(), "the container was killed: {st}");
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// A container whose config names a network namespace path: runc checkpoints it as external
/// (`net[INO]:extRootNetNS`) and hands the namespace back at restore (`inherit_fd
/// extRootNetNS`): the restored container is in that same namespace.
#[test]
fn external_network_namespace() {
    need_runc!();
    let _g = serial();
    let name = format!("cryo-rt-{}", std::process::id());
    let st = Command::new("ip").args(["netns", "add", &name]).status();
    if !st.is_ok_and(|s| s.success()) {
        integration::skip("ip netns add failed");
        return;
    }
    let ns = NetNs(name);
    let path = PathBuf::from(format!("/run/netns/{}", ns.0));
    let mut c = Container::with("netns", "netns", Some(&path));
    c.start(None, &[]);
    let want = ns_inode(&path.display().to_string());
    let pid = c.state()["pid"].as_i64().unwrap();
    assert_eq!(ns_inode(&format!("/proc/{pid}/ns/net")), want);
    c.wait_output(0, 2);
    let img = c.checkpoint(0, &[]);
    c.gone();
    let before = c.last_output(0);
    c.start(Some(&img), &[]);
    c.wait_output(1, before);
    let pid = c.state()["pid"].as_i64().unwrap();
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        want,
        "the restored container is in the configured network namespace"
    );
    c.exec_ok(&["true"]);
    drop(c);
}

/// A pod of two runc containers: the second's config.json names the first's PID, IPC and
/// network namespaces by path (`/proc/INIT/ns/...`). runc checkpoints the second with its
/// PID and network namespaces external (`extRootPidNS`, `extRootNetNS`) and restores it with
/// them handed back (`inherit_fd`) and the IPC one joined (`join_ns`): the restored member
/// is in the first container's three namespaces again, keeps its PID there, and its counter
/// goes on; the first container never stopped.
#[test]
fn pod_member_restores_into_the_first_containers_namespaces() {
    need_runc!();
    let _g = serial();
    let mut a = Container::new("pod-infra", "pipe");
    a.start(None, &[]);
    let infra = a.state()["pid"].as_i64().unwrap();
    let nsdir = PathBuf::from(format!("/proc/{infra}/ns"));
    let mut b = Container::with("pod-member", "pod", Some(&nsdir));
    b.start(None, &[]);
    let ns_of = |pid: i64, kind: &str| ns_inode(&format!("/proc/{pid}/ns/{kind}"));
    let member = b.state()["pid"].as_i64().unwrap();
    for kind in ["pid", "ipc", "net"] {
        assert_eq!(ns_of(member, kind), ns_of(infra, kind), "{kind} before");
    }
    let nspid = |pid: i64| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("NSpid:")
                    .map(|v| v.split_whitespace().last().unwrap().to_string())
            })
            .unwrap()
    };
    let inside = nspid(member);
    assert_ne!(inside, "1", "the member is not its PID namespace's init");
    b.wait_output(0, 2);
    let img = b.checkpoint(0, &[]);
    b.gone();
    // Its PID in the pod is free again once it is reaped (by the test, runc's subreaper).
    integration::wait_gone(i32::try_from(member).unwrap());
    let before = b.last_output(0);
    b.start(Some(&img), &[]);
    b.wait_output(1, before);
    let member = b.state()["pid"].as_i64().unwrap();
    for kind in ["pid", "ipc", "net"] {
        assert_eq!(
            ns_of(member, kind),
            ns_of(infra, kind),
            "{kind} after the restore"
        );
    }
    assert_eq!(nspid(member), inside, "its PID inside the pod");
    b.exec_ok(&["true"]);
    a.check_running();
    a.wait_output(0, 2);
    drop(b);
    drop(a);
}

/// A container whose configured network namespace holds a veth (its peer in a "host"
/// namespace the test makes), an address and a route. runc saves that namespace as external;
/// while the checkpoint holds the container frozen its network is locked (pings from the host
/// go unanswered; cryo paused there with `CRYO_FAULT_PAUSE`) and stays locked until the
/// restore (as CRIU: the namespace outlives the container), which lifts the lock and brings
/// the container back into the namespace with its veth, address and route, answering again.
#[test]
fn network_namespace_with_a_veth() {
    need_runc!();
    let _g = serial();
    let me = std::process::id();
    let (cname, hname) = (format!("cryo-rv-{me}"), format!("cryo-rvh-{me}"));
    for n in [&cname, &hname] {
        if !Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .is_ok_and(|s| s.success())
        {
            panic!("ip netns add {n} failed");
        }
    }
    let (_ns, _host) = (NetNs(cname.clone()), NetNs(hname.clone()));
    let has = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("nft") || !has("ping") {
        integration::skip("nft and ping are needed (integration/setup.sh installs them)");
        return;
    }
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().unwrap();
        ok(&o, &format!("ip {}", args.join(" ")));
    };
    ip(&[
        "link", "add", "v0", "netns", &cname, "type", "veth", "peer", "name", "vh0", "netns",
        &hname,
    ]);
    ip(&["-n", &cname, "link", "set", "lo", "up"]);
    ip(&["-n", &cname, "link", "set", "v0", "up"]);
    ip(&["-n", &cname, "addr", "add", "10.206.0.2/24", "dev", "v0"]);
    ip(&[
        "-n",
        &cname,
        "route",
        "add",
        "10.207.0.0/16",
        "via",
        "10.206.0.1",
    ]);
    ip(&["-n", &hname, "link", "set", "vh0", "up"]);
    ip(&["-n", &hname, "addr", "add", "10.206.0.1/24", "dev", "vh0"]);
    let ping = || {
        Command::new("ip")
            .args(["netns", "exec", &hname, "ping", "-c1", "-W1", "10.206.0.2"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let tables = || {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "exec", &cname, "nft", "list", "tables"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let path = PathBuf::from(format!("/run/netns/{cname}"));
    let mut c = Container::with("veth", "netns", Some(&path));
    c.start(None, &[]);
    c.wait_output(0, 2);
    assert!(ping(), "the container's namespace answers");
    // Checkpoint, paused once the network is locked.
    let img = c.dir.join("img-0");
    let cryo = cryo_bin().display().to_string();
    let child = Command::new("runc")
        .args([
            "--criu",
            &cryo,
            "checkpoint",
            "--image-path",
            img.to_str().unwrap(),
            &c.id,
        ])
        .env("CRYO_FAULT_PAUSE", "netlock:3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the lock", 10, || tables().contains("CRIU-"));
    assert!(
        !ping(),
        "a ping was answered while the container was locked"
    );
    let o = child.wait_with_output().unwrap();
    ok(&o, "runc checkpoint");
    c.gone();
    // The namespace outlives the container (a path in config.json): as CRIU, the lock of the
    // whole namespace stays until the restore lifts it, so nothing answers in between.
    assert!(
        tables().contains("CRIU-"),
        "the lock should stay between checkpoint and restore: {}",
        tables()
    );
    let dump_log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    assert!(dump_log.contains("network locked"), "{dump_log}");
    let before = c.last_output(0);
    c.start(Some(&img), &[]);
    c.wait_output(1, before);
    assert!(
        !tables().contains("CRIU-"),
        "lock left after the restore: {}",
        tables()
    );
    let route = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-n", &cname, "route"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(route.contains("10.207.0.0/16 via 10.206.0.1"), "{route}");
    assert!(ping(), "the restored container's namespace answers");
    c.exec_ok(&["true"]);
    drop(c);
}

/// `runc checkpoint --tcp-established` / `runc restore --tcp-established`: a container
/// serving TCP (busybox `nc -ll -e cat` in a network namespace of the test's, joined by a
/// veth to the client's) keeps a client's connection: a line sent after the restore on the
/// same connection comes back.
#[test]
fn tcp_established_connection_survives() {
    need_runc!();
    if !integration::netns::need(&["ip", "nft"]) {
        return;
    }
    let _g = serial();
    let net = integration::netns::Net::new("rtcp", 96);
    let path = integration::netns::Net::path(&net.a);
    let mut c = Container::with("tcp", "tcp", Some(Path::new(&path)));
    c.start(None, &[]);
    let addr: std::net::SocketAddr = format!("{}:7000", net.v4(1)).parse().unwrap();
    let mut conn = None;
    wait_for("the echo server", 10, || {
        let b = integration::netns::Net::path(&net.b);
        let f = std::fs::File::open(&b).unwrap();
        drop(f);
        std::panic::catch_unwind(|| integration::netns::connect_in(&b, addr))
            .map(|s| conn = Some(s))
            .is_ok()
    });
    let mut conn = conn.unwrap();
    let echo = |conn: &mut std::net::TcpStream, line: &str| {
        std::io::Write::write_all(conn, line.as_bytes()).unwrap();
        let mut got = vec![0u8; line.len()];
        std::io::Read::read_exact(conn, &mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), line);
    };
    echo(&mut conn, "before the checkpoint\n");
    let img = c.checkpoint(0, &["--tcp-established"]);
    c.gone();
    c.start(Some(&img), &["--tcp-established"]);
    echo(&mut conn, "after the restore\n");
    c.exec_ok(&["true"]);
    drop(c);
}

/// runc's incremental checkpoint: `checkpoint --pre-dump --image-path P1` (the container runs
/// on; cryo answers PRE_DUMP over RPC after a FEATURE_CHECK of mem_track), then `checkpoint
/// --parent-path ../P1 --image-path P2` (a DUMP with `parent_img` and `track_mem`: only what
/// was written since is in P2), and `restore` from P2: the counter goes on from where it was.
#[test]
fn pre_dump_then_checkpoint_with_parent() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("predump", "pipe");
    c.start(None, &[]);
    let n = c.wait_output(0, 2);
    let p1 = c.checkpoint(0, &["--pre-dump"]);
    assert!(p1.join("inventory.img").exists());
    c.check_running();
    c.wait_output(0, n + 2);
    let img = c.checkpoint(1, &["--parent-path", "../img-0"]);
    c.gone();
    assert_eq!(
        std::fs::read_link(img.join("parent")).unwrap(),
        Path::new("../img-0")
    );
    let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    assert!(
        log.contains("uffd-wp"),
        "the final dump used the pre-dump's tracking:\n{log}"
    );
    let o = integration::cryo(&["show", img.join("stats-dump").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let skipped = v["entries"][0]["dump"]["pages_skipped_parent"]
        .as_u64()
        .unwrap_or(0);
    assert!(skipped > 0, "pages left in the parent: {v}");
    let before = c.last_output(0);
    c.start(Some(&img), &[]);
    let first = c.wait_output(1, 0);
    assert_eq!(c.out[1].numbers()[0], before + 1, "{first}");
    c.exec_ok(&["true"]);
}

/// `runc checkpoint --page-server 127.0.0.1:PORT` to `cryo page-server` (RPC `ps`): the pages
/// go to the server's directory, the rest to the image path; merged, they restore.
#[test]
fn checkpoint_to_a_page_server() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("pageserver", "pipe");
    c.start(None, &[]);
    c.wait_output(0, 2);
    let srv = c.dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let pidfile = srv.join("ps.pid");
    let o = integration::cryo(&[
        "page-server",
        "-D",
        srv.to_str().unwrap(),
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "-d",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "-v4",
        "-o",
        "ps.log",
    ]);
    ok(&o, "cryo page-server -d");
    let ps = format!("127.0.0.1:{port}");
    let img = c.checkpoint(0, &["--page-server", &ps]);
    c.gone();
    let before = c.last_output(0);
    let server: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the page server to finish", 10, || {
        !integration::alive(server)
    });
    assert!(!std::fs::read_dir(&img).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("pages-")));
    for e in std::fs::read_dir(&srv).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".img") {
            std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
        }
    }
    c.start(Some(&img), &[]);
    c.wait_output(1, 0);
    assert_eq!(c.out[1].numbers()[0], before + 1);
}

/// runc's lazy migration (its checkpoint.bats "checkpoint --lazy-pages and restore"):
/// `runc checkpoint --lazy-pages --page-server 127.0.0.1:PORT --status-fd FD` (FEATURE_CHECK
/// lazy_pages, then a DUMP with `lazy_pages`, `ps` and `status_fd`) writes the images and
/// keeps the memory, says so on FD and waits; `cryo lazy-pages --page-server` takes the
/// pages from it for `runc restore --lazy-pages` (a RESTORE with `lazy_pages`: the daemon's
/// socket in the work directory) under a new name: the counter goes on from where it was,
/// and the checkpoint ends once every page has gone over.
#[test]
fn lazy_pages_checkpoint_and_restore() {
    need_runc!();
    let _g = serial();
    let mut c = Container::new("lazy", "pipe");
    c.start(None, &[]);
    c.wait_output(0, 2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two fds pipe2 returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), 0) }, 0);
    // SAFETY: both fds are new and owned here.
    let (r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // The read end stays here: not inherited by runc.
    // SAFETY: fcntl on an fd owned here.
    unsafe { libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC) };
    let img = c.dir.join("img-0");
    let cryo = cryo_bin().display().to_string();
    let ps = format!("127.0.0.1:{port}");
    let wfd = fds[1].to_string();
    let cpt = Command::new("runc")
        .args([
            "--criu",
            &cryo,
            "checkpoint",
            "--lazy-pages",
            "--page-server",
        ])
        .args([&ps, "--status-fd", &wfd, "--image-path"])
        .arg(&img)
        .arg(&c.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runc checkpoint");
    drop(w);
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut &r, &mut byte).unwrap();
    if n != 1 {
        let o = cpt.wait_with_output().unwrap();
        panic!(
            "runc checkpoint --lazy-pages ended without a status byte: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(img.join("dump.log")).unwrap_or_default()
        );
    }
    assert_eq!(byte[0], 0);
    assert!(img.join("inventory.img").exists());
    let before = c.last_output(0);
    let o = integration::cryo(&[
        "lazy-pages",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "lazy-pages.log",
    ]);
    ok(&o, "cryo lazy-pages -d");
    let old = c.id.clone();
    c.id = format!("{old}-restored");
    c.start(Some(&img), &["--lazy-pages"]);
    let first = c.wait_output(1, 0);
    assert_eq!(c.out[1].numbers()[0], before + 1, "{first}");
    let o = cpt.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "runc checkpoint --lazy-pages: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(img.join("dump.log")).unwrap_or_default()
    );
    let _ = runc(&["delete", "-f", &old]);
    wait_for("the lazy-pages daemon to finish", 20, || {
        std::fs::read_to_string(img.join("lazy-pages.log"))
            .unwrap_or_default()
            .contains("every page is in")
    });
    c.wait_output(1, first + 2);
    c.exec_ok(&["true"]);
}
