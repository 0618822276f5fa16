//! cryo restores images CRIU 4.2 wrote: the fixtures in `integration/fixtures/criu-4.2-*`,
//! made on the development VM by `integration/fixtures/make-criu-fixtures.sh` with CRIU 4.2
//! (see there), of the static program `integration/progs/fixture.c`, whose very binary is kept
//! in `criu-4.2-bin/fixture` (its code pages are not in the images).
//!
//! - `pipetree`: a parent and its child joined by a pipe, numbers in flight;
//! - `threads`: a process of four threads, each counter going on;
//! - `usock`: a unix socket server on a path, its connected client child, and a new client
//!   after the restore (the server's count of accepted connections kept);
//! - `container`: PID 1 of its own pid, mount, uts, ipc and net namespaces, with a host bind
//!   at /data, tmpfs contents, a devpts with `/dev/console`, and cgroups (CRIU's properties,
//!   moved with `--cgroup-root`).
//!
//! The first three ran with host PIDs (30001...). They are restored by cryo running as PID 1
//! of a new PID namespace (`unshare --pid --fork --mount-proc`), where those PIDs are free
//! whatever runs on the machine; cryo stays their parent (no `-d`), and killing it ends the
//! namespace. Each program appends numbered lines to its output file (restored as it was at
//! dump from `out.at-dump`): after the restore the numbers go on with none skipped or repeated.
//!
//! The fixture paths are fixed (`/tmp/cryo-fixture-bin`, `/tmp/cryo-fixture-run`): the tests
//! of this file run one at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use integration::{children, cryo, cryo_bin, ok, pid_of, root, scratch, wait_for};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const BIN: &str = "/tmp/cryo-fixture-bin";
const RUN: &str = "/tmp/cryo-fixture-run";

fn fixture(name: &str) -> PathBuf {
    root().join(format!("integration/fixtures/criu-4.2-{name}"))
}

/// Copies a fixture to a scratch directory (a restore writes its log and stats there).
fn images(name: &str) -> PathBuf {
    let dir = scratch(&format!("interop-{name}"));
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
    }
    img
}

/// The files a host fixture finds at restore: the program where it was, and its output file
/// as it was at dump.
fn prepare(out: &str, img: &Path) -> PathBuf {
    std::fs::create_dir_all(BIN).unwrap();
    std::fs::create_dir_all(RUN).unwrap();
    let bin = Path::new(BIN).join("fixture");
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(fixture("bin").join("fixture"), &bin).unwrap();
    let out = Path::new(RUN).join(out);
    std::fs::copy(img.join("out.at-dump"), &out).unwrap();
    out
}

/// cryo restoring `img` as PID 1 of a new PID namespace; killed (with the namespace) on drop.
struct Restored {
    unshare: Child,
}

impl Restored {
    fn start(img: &Path) -> Restored {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(cryo_bin())
            .args(["restore", "-D"])
            .arg(img)
            .args(["-v4", "-o", "restore.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Restored { unshare }
    }

    /// The restored root's PID on the host: cryo's child.
    fn root_pid(&self) -> i32 {
        let cryo = children(pid_of(&self.unshare))[0];
        children(cryo)[0]
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn numbers(out: &Path, col: usize) -> Vec<i64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(col)?.parse().ok())
        .collect()
}

/// Waits for `more` new lines after the `at_dump` ones and checks the first column counts
/// 1, 2, 3... with nothing skipped or repeated across the restore.
fn goes_on(out: &Path, at_dump: usize, more: usize, img: &Path) -> Vec<i64> {
    let log = || std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    wait_for("the restored program to go on", 20, || {
        numbers(out, 0).len() >= at_dump + more
    });
    let v = numbers(out, 0);
    for (i, n) in v.iter().enumerate() {
        assert_eq!(
            *n,
            i64::try_from(i).unwrap() + 1,
            "line {} of {}\n{}",
            i + 1,
            out.display(),
            log()
        );
    }
    v
}

fn lines_at_dump(img: &Path) -> usize {
    numbers(&img.join("out.at-dump"), 0).len()
}

#[test]
fn criu_pipe_tree_restores() {
    let _s = serial();
    let img = images("pipetree");
    let out = prepare("pipetree.out", &img);
    let n = lines_at_dump(&img);
    assert!(n > 10);
    let r = Restored::start(&img);
    goes_on(&out, n, 20, &img);
    // Parent and child, the parent's pipe end still feeding the child.
    let root = r.root_pid();
    assert_eq!(children(root).len(), 1);
}

#[test]
fn criu_threads_restore() {
    let _s = serial();
    let img = images("threads");
    let out = prepare("threads.out", &img);
    let n = lines_at_dump(&img);
    let r = Restored::start(&img);
    goes_on(&out, n, 20, &img);
    // Each thread's counter went on from where it was.
    for col in 1..=3 {
        let c = numbers(&out, col);
        assert!(
            c.windows(2).all(|w| w[1] >= w[0]),
            "counter {col} went back"
        );
        assert!(c.last() > c.get(n - 1), "counter {col} stopped");
    }
    let root = r.root_pid();
    let threads = std::fs::read_dir(format!("/proc/{root}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 4);
}

#[test]
fn criu_unix_socket_server_restores() {
    let _s = serial();
    let img = images("usock");
    let out = prepare("usock.out", &img);
    let n = lines_at_dump(&img);
    let _r = Restored::start(&img);
    // The connection made before the dump goes on: "N 2N".
    goes_on(&out, n, 20, &img);
    for l in std::fs::read_to_string(&out).unwrap().lines() {
        let v: Vec<i64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[1], v[0] * 2, "{l}");
    }
    // A new client: the listener is back on its path, and the server counts it as its
    // second connection.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(Path::new(RUN).join("usock.sock"))
        .expect("connect to the restored server");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 64];
    let k = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..k], b"hello 2\n");
}

/// Reads a file of cgroup `sub` in hierarchy `h` (v1).
fn cg(h: &str, sub: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(h)
        .join(sub.trim_start_matches('/'))
}

#[test]
fn criu_container_restores() {
    let _s = serial();
    let img = images("container");
    let dir = img.parent().unwrap().to_path_buf();
    // Its root file system as the launcher had it: busybox (gone once the fixture exec'd),
    // the fixture program, the mount points.
    let rootfs = dir.join("rootfs");
    ok(
        &Command::new(root().join("bundles/busybox/build-rootfs.sh"))
            .arg(&rootfs)
            .output()
            .unwrap(),
        "build-rootfs.sh",
    );
    std::fs::copy(fixture("bin").join("fixture"), rootfs.join("fixture")).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = data.join("out");
    std::fs::copy(img.join("out.at-dump"), &out).unwrap();
    let n = lines_at_dump(&img);
    let cgroot = format!("/cryo-it-interop-{}", std::process::id());
    struct Cleanup(String, Option<i32>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = self.1 {
                // The test process is the subreaper that inherits the detached container.
                // SAFETY: kill and waitpid with integers and a null status pointer.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                    libc::waitpid(p, std::ptr::null_mut(), libc::__WALL);
                }
            }
            for h in ["pids", "cpu"] {
                for d in [
                    cg(h, &format!("{}/cryo-fixture-ct", self.0)),
                    cg(h, &self.0),
                ] {
                    for _ in 0..50 {
                        if !d.exists() || std::fs::remove_dir(&d).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }
    let mut clean = Cleanup(cgroot.clone(), None);
    let pidfile = dir.join("pid");
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--root",
        rootfs.to_str().unwrap(),
        "--external",
        &format!("mnt[data]:{}", data.display()),
        "--cgroup-root",
        &cgroot,
    ]);
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(o.status.success(), "restore failed:\n{log}");
    let init: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    clean.1 = Some(init);
    goes_on(&out, n, 20, &img);
    // Its own namespaces again, with what they held.
    let ns = |p: i32, k: &str| std::fs::read_link(format!("/proc/{p}/ns/{k}")).unwrap();
    for k in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(
            ns(init, k),
            ns(i32::try_from(std::process::id()).unwrap(), k),
            "{k} namespace"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "PID 1 inside:\n{status}"
    );
    let hostname = Command::new("nsenter")
        .args(["-t", &init.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "cryo-box");
    let mounts = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap();
    for m in [
        " /proc ",
        " /sys ",
        " /dev ",
        " /dev/pts ",
        " /dev/console ",
        " /data ",
        " /tmp ",
    ] {
        assert!(mounts.contains(m), "{m} in\n{mounts}");
    }
    // Its cgroup (/cryo-fixture-ct at dump) is the new root, as CRIU puts it, made with
    // CRIU's saved properties (pids.max, notify_on_release, ...).
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    for h in ["pids", "cpu"] {
        let want = format!(":{h}:{cgroot}");
        assert!(
            cgroups.lines().any(|l| l.ends_with(&want)),
            "{want} in\n{cgroups}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(cg("pids", &format!("{cgroot}/pids.max")))
            .unwrap()
            .trim(),
        "max"
    );
    // The fixture's pid 1 and its child.
    assert_eq!(children(init).len(), 1);
}

/// The other direction: CRIU 4.2 (`$CRIU`, or /opt/criu42/criu) restores cryo's dumps of the
/// same three shapes, run live from the same static binary: the pipe tree (parent and child
/// again, the numbers going on), the four threads, and the unix socket server (its connection
/// going on, and a new client counted as its second). Ignored unless asked for, as every test
/// that needs CRIU built from source: `integration/test.sh` runs it when it finds CRIU.
#[test]
#[ignore = "needs CRIU 4.2 built from source ($CRIU or /opt/criu42/criu)"]
fn criu_restores_cryos_dumps_of_the_same_shapes() {
    use integration::{alive, dump_with_tool, kill, restore_with_tool, spawn, KillOnDrop};
    let _s = serial();
    let criu = integration::criu42();
    std::fs::create_dir_all(BIN).unwrap();
    std::fs::create_dir_all(RUN).unwrap();
    let bin = Path::new(BIN).join("fixture");
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(fixture("bin").join("fixture"), &bin).unwrap();
    let bin_s = bin.to_str().unwrap();
    let sock = Path::new(RUN).join("usock-cryo.sock");
    let sock_s = sock.to_str().unwrap();
    for shape in ["pipetree", "threads", "usock"] {
        let dir = scratch(&format!("interop-cryo-{shape}"));
        let out = Path::new(RUN).join(format!("{shape}-cryo.out"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&sock);
        let out_s = out.to_str().unwrap();
        let argv: Vec<&str> = if shape == "usock" {
            vec![bin_s, shape, sock_s, out_s]
        } else {
            vec![bin_s, shape, out_s]
        };
        let pid = spawn(&argv, &dir.join("log"));
        let _g = KillOnDrop(pid);
        wait_for(&format!("{shape} to count"), 10, || {
            numbers(&out, 0).len() >= 10
        });
        let kids = children(pid);
        let _gk: Vec<KillOnDrop> = kids.iter().map(|&k| KillOnDrop(k)).collect();
        let img = dir.join("img");
        std::fs::create_dir_all(&img).unwrap();
        dump_with_tool(&cryo_bin().display().to_string(), pid, &img, &[]);
        for &p in kids.iter().chain([&pid]) {
            integration::wait_gone(p);
        }
        let n = numbers(&out, 0).len();
        restore_with_tool(&criu, &img, &[]);
        assert!(alive(pid), "{shape}: CRIU restored it with its pid");
        goes_on(&out, n, 20, &img);
        match shape {
            "pipetree" => assert_eq!(children(pid), kids, "the child, feeding on the pipe"),
            "threads" => assert_eq!(
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .unwrap()
                    .count(),
                4
            ),
            _ => {
                for l in std::fs::read_to_string(&out).unwrap().lines() {
                    let v: Vec<i64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                    assert_eq!(v[1], v[0] * 2, "{l}");
                }
                use std::io::{Read, Write};
                let mut s = std::os::unix::net::UnixStream::connect(&sock)
                    .expect("connect to the server CRIU restored");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"hello").unwrap();
                let mut buf = [0u8; 64];
                let k = s.read(&mut buf).unwrap();
                assert_eq!(&buf[..k], b"hello 2\n");
            }
        }
        // The parent first: a killed child would stay its zombie.
        for &p in [&pid].into_iter().chain(kids.iter()) {
            kill(p);
        }
    }
    let _ = std::fs::remove_file(&sock);
}
