//! Helpers shared by the integration tests in tests/: build the C test programs, start them
//! detached (own session, stdio to files), run the cryo binary, wait for PIDs, reap.
//!
//! The test process makes itself a child subreaper, so processes restored with `-d` are
//! re-parented to it and can be reaped at once (PID 1 on the VM reaps orphans only every few
//! seconds, and a restore needs its PID free).

pub mod echo;
pub mod netns;
pub mod rpc;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Repository root: the parent of this crate's directory, as cargo gives it to the running
/// test (`CARGO_MANIFEST_DIR` at run time), else as it was at compile time. The run-time
/// value wins so that a test binary built in one checkout and run from another (a copied
/// `target/`, a second worktree) tests that checkout's cryo, not the one it was built beside.
pub fn root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// The cryo binary under test ($CRYO, or target/release/cryo).
pub fn cryo_bin() -> PathBuf {
    std::env::var_os("CRYO")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/cryo"))
}

static INIT: Once = Once::new();

fn init() {
    INIT.call_once(|| {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert!(
            cryo_bin().exists(),
            "{} missing: run `cargo build --release` first (integration/test.sh does)",
            cryo_bin().display()
        );
    });
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    init();
    let d = std::env::temp_dir().join(format!("cryo-it-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles integration/progs/NAME.c (once per test binary) and returns the executable.
pub fn prog(name: &str) -> PathBuf {
    init();
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::env::temp_dir().join(format!("cryo-prog-{}-{}", name, std::process::id()));
    if !out.exists() {
        let src = root().join(format!("integration/progs/{name}.c"));
        let tmp = out.with_extension("tmp");
        let st = Command::new("gcc")
            .args(["-O2", "-Wall", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc");
        assert!(st.success(), "compiling {}", src.display());
        std::fs::rename(tmp, &out).unwrap();
    }
    out
}

/// Starts `argv` as a session leader with stdin=/dev/null, stdout/stderr to `log`, and no
/// other inherited fds. Returns its PID (the test process is its parent).
pub fn spawn(argv: &[&str], log: &Path) -> i32 {
    init();
    let f = std::fs::File::create(log).unwrap();
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    // Not waited on through the handle: tests reap by PID (wait_gone), since cryo kills and
    // re-creates the process under the same PID.
    #[allow(clippy::zombie_processes)]
    let child = c.spawn().unwrap();
    pid_of(&child)
}

/// Runs cryo with `args`; returns its output.
pub fn cryo(args: &[&str]) -> Output {
    cryo_env(args, &[])
}

/// Runs cryo with extra environment variables.
pub fn cryo_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_tool_env(&cryo_bin().display().to_string(), args, env)
}

/// Runs cryo with `args` under GNU time; returns its output and its peak RSS in KiB (its
/// VmHWM; the processes it restores are not its children and do not count). `None` when
/// /usr/bin/time is missing.
pub fn cryo_peak_rss(args: &[&str]) -> Option<(Output, u64)> {
    init();
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        return None;
    }
    let rss = std::env::temp_dir().join(format!(
        "cryo-it-rss-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let out = Command::new(time)
        .args(["-f", "%M", "-o", rss.to_str().unwrap()])
        .arg(cryo_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running cryo under /usr/bin/time");
    eprintln!(
        "$ time cryo {} -> {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kib = std::fs::read_to_string(&rss)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .next_back()
        .expect("GNU time wrote the peak RSS");
    let _ = std::fs::remove_file(&rss);
    Some((out, kib))
}

/// `cryo dump -t PID -D DIR -v4 -o dump.log` plus `extra`; panics on failure.
pub fn dump(pid: i32, dir: &Path, extra: &[&str]) {
    dump_with_tool(&cryo_bin().display().to_string(), pid, dir, extra);
}

/// `TOOL dump -t PID -D DIR -v4 -o dump.log` plus `extra`, TOOL being cryo's or CRIU's
/// binary (the options are the same); panics on failure, showing the dump's log.
pub fn dump_with_tool(tool: &str, pid: i32, dir: &Path, extra: &[&str]) {
    let d = dir.to_str().unwrap();
    let p = pid.to_string();
    let mut a = vec!["dump", "-t", &p, "-D", d, "-v4", "-o", "dump.log"];
    a.extend_from_slice(extra);
    let out = run_tool_env(tool, &a, &[]);
    assert!(
        out.status.success(),
        "{tool} dump failed:\n{}",
        log(dir, "dump.log")
    );
}

/// Runs `tool` with `args` and extra environment variables (killed after `CHILD_SECS`),
/// showing the command and its output on stderr; returns its output.
fn run_tool_env(tool: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    init();
    let name = Path::new(tool).file_name().unwrap_or_default();
    let out = output_within(
        Command::new(tool)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null()),
        &format!("{} {}", name.to_string_lossy(), args.join(" ")),
        CHILD_SECS,
    );
    eprintln!(
        "$ {} {} -> {}\n{}{}",
        name.to_string_lossy(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// CRIU 4.2's binary: `$CRIU`, or /opt/criu42/criu; panics when it is not there (the tests
/// that need it are ignored unless `integration/test.sh` finds it).
pub fn criu42() -> String {
    let criu = std::env::var("CRIU").unwrap_or_else(|_| "/opt/criu42/criu".into());
    assert!(
        Path::new(&criu).exists(),
        "CRIU 4.2 is not at {criu} (set CRIU=)"
    );
    criu
}

/// `cryo restore -D DIR -d -v4 -o restore.log`; panics on failure.
pub fn restore(dir: &Path) {
    restore_with(dir, &[]);
}

/// `cryo restore -D DIR -d -v4 -o restore.log` plus `extra`; panics on failure, showing
/// the restore's log.
pub fn restore_with(dir: &Path, extra: &[&str]) {
    restore_with_tool(&cryo_bin().display().to_string(), dir, extra);
}

/// `TOOL restore -D DIR -d -v4 -o restore.log` plus `extra`, TOOL being cryo's or CRIU's
/// binary; panics on failure, showing the restore's log.
pub fn restore_with_tool(tool: &str, dir: &Path, extra: &[&str]) {
    let d = dir.to_str().unwrap();
    let mut a = vec!["restore", "-D", d, "-d", "-v4", "-o", "restore.log"];
    a.extend_from_slice(extra);
    let out = run_tool_env(tool, &a, &[]);
    assert!(
        out.status.success(),
        "{tool} restore failed:\n{}",
        log(dir, "restore.log")
    );
}

/// `cryo dump -t PID -D DIR` that must fail; returns its stderr (the error and hint).
pub fn dump_fails(pid: i32, dir: &Path, extra: &[&str]) -> String {
    let p = pid.to_string();
    let mut a = vec!["dump", "-t", &p, "-D", dir.to_str().unwrap()];
    a.extend_from_slice(extra);
    let o = cryo(&a);
    assert!(
        !o.status.success(),
        "the dump of {pid} should have been refused"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Dumps the tree rooted at `pid` into `img` (the tree is killed), waits until every
/// dumped process is gone, and restores it: one checkpoint/restore cycle.
pub fn dump_and_restore(pid: i32, img: &Path) {
    dump(pid, img, &[]);
    wait_tree_gone(img);
    restore(img);
}

/// Contents of a log file in `dir` (for assertion messages).
pub fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Reaps `pid` if it is our (zombie) child or re-parented to us, and waits until /proc/PID
/// is gone.
pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: waitpid with a null status pointer.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `pid` and waits until it is gone.
pub fn kill(pid: i32) {
    // SAFETY: kill with integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill with integers.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit(')').next().unwrap_or("").trim_start();
            !st.starts_with('Z') && !st.starts_with('X')
        })
        .unwrap_or(false)
}

/// PIDs of the children of process `pid` (those of its main thread,
/// `/proc/PID/task/PID/children`), oldest first; empty when it has none or is gone.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.parse().expect("a PID in /proc/PID/task/PID/children"))
        .collect()
}

/// Runs `sh -c CMD` (in the test's namespaces: mounts made there are cryo's); panics with
/// its status and outputs unless it succeeds; returns its trimmed stdout.
pub fn sh(cmd: &str) -> String {
    ok(
        &Command::new("sh").args(["-c", cmd]).output().expect("sh"),
        cmd,
    )
}

/// Mounts a test made in its own mount namespace (cryo's), taken away again (`umount -R -l`,
/// with what is mounted below them) when dropped, so that a failing test leaves none.
pub struct Unmount(pub Vec<PathBuf>);

impl Unmount {
    /// The mount at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Unmount {
        Unmount(vec![path.into()])
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount").arg("-R").arg("-l").arg(m).status();
        }
    }
}

/// Waits until `cond` holds (polling), panicking with `what` after `secs`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a test waits for one child it started (a cryo command, a daemon) before it kills
/// it and fails: a hung migration or restore fails its test instead of hanging CI.
pub const CHILD_SECS: u64 = 300;

/// Bounded waits on a child process: after `secs` the child is SIGKILLed, reaped and the
/// test panics naming `what`, with the output the child wrote so far.
pub trait WaitWithin {
    /// Waits for the child to exit.
    fn wait_within(&mut self, what: &str, secs: u64) -> std::process::ExitStatus;
    /// Waits for the child to exit and its piped stdout and stderr to close; returns them.
    fn output_within(self, what: &str, secs: u64) -> Output;
}

/// Reads `pipe` to its end in a thread into a shared buffer (readable while it runs).
fn drain(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    Option<std::thread::JoinHandle<()>>,
) {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = pipe.map(|mut p| {
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = p.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    });
    (buf, h)
}

impl WaitWithin for std::process::Child {
    fn wait_within(&mut self, what: &str, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.try_wait().expect("waiting for a child") {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                let st = self.wait();
                panic!(
                    "{what} (pid {}) did not finish within {secs} s: killed ({st:?})",
                    self.id()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output_within(mut self, what: &str, secs: u64) -> Output {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (out, out_h) = drain(self.stdout.take());
        let (err, err_h) = drain(self.stderr.take());
        let so_far = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&b.lock().unwrap()).into_owned()
        };
        let mut status = None;
        loop {
            if status.is_none() {
                status = self.try_wait().expect("waiting for a child");
            }
            let open = [&out_h, &err_h]
                .iter()
                .any(|h| h.as_ref().is_some_and(|h| !h.is_finished()));
            if let (Some(st), false) = (status, open) {
                let take = |b: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
                    std::mem::take(&mut *b.lock().unwrap())
                };
                return Output {
                    status: st,
                    stdout: take(out),
                    stderr: take(err),
                };
            }
            if Instant::now() >= deadline {
                let why = match status {
                    // It exited, but something it started still holds its stdout or stderr.
                    Some(st) => format!("exited ({st}) but its output pipes stay open"),
                    None => {
                        let _ = self.kill();
                        format!("did not finish: killed ({:?})", self.wait())
                    }
                };
                panic!(
                    "{what} (pid {}) {why} within {secs} s\nstdout so far: {}\nstderr so far: {}",
                    self.id(),
                    so_far(&out),
                    so_far(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `cmd` with stdout and stderr piped (stdin as set) and returns its output, failing the
/// test after `secs` as [`WaitWithin::output_within`].
pub fn output_within(cmd: &mut Command, what: &str, secs: u64) -> Output {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"))
        .output_within(what, secs)
}

/// [`output_within`] as a method of the command: `Command::new(..).args(..).run_within(..)`.
pub trait RunWithin {
    /// Runs the command; its output, or a failed test after `secs`.
    fn run_within(&mut self, what: &str, secs: u64) -> Output;
}

impl RunWithin for Command {
    fn run_within(&mut self, what: &str, secs: u64) -> Output {
        output_within(self, what, secs)
    }
}

/// Panics with `what`, the exit status and both outputs unless the command succeeded;
/// returns its trimmed stdout.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Whether the tests run in CI (`CI=true`, which `.ci/run` sets): there a test that cannot
/// run (a missing tool, a failed setup) fails instead of being skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// The running test cannot run here because of `why`. In CI this fails the test (panics);
/// elsewhere it prints `SKIP: <test>: <why>` past libtest's output capture, and the test
/// must then return at once; `integration/test.sh` counts these lines and reports such a
/// test as skipped, not passed. Use as `if !require_tools(..) { return; }` or
/// `skip(why); return;`.
pub fn skip(why: &str) {
    // Straight to the stdout fd: libtest captures only print!/eprint! of a passing test.
    report_skip(in_ci(), &test_name(), why, &mut std::io::stdout());
}

fn report_skip(ci: bool, test: &str, why: &str, out: &mut dyn std::io::Write) {
    if ci {
        panic!("{test} cannot run: {why} (CI=true: a test that cannot run fails)");
    }
    let _ = out.write_all(format!("SKIP: {test}: {why}\n").as_bytes());
    let _ = out.flush();
}

/// True if `program arg` runs and exits 0 (e.g. `("runc", "--version")`).
pub fn have_tool(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True if every `(program, arg)` runs (see [`have_tool`]); otherwise [`skip`]s the running
/// test (which fails it in CI), naming the missing ones, and returns false.
pub fn require_tools(tools: &[(&str, &str)]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(p, a)| !have_tool(p, a))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip(&format!(
        "{} not installed (integration/setup.sh installs {})",
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    ));
    false
}

/// Lines of a text file.
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Asks a memhog process for its checksum (SIGUSR1) and returns the new "sum" line.
pub fn memhog_sum(pid: i32, out: &Path) -> String {
    let before = lines(out).iter().filter(|l| l.starts_with("sum")).count();
    signal(pid, libc::SIGUSR1);
    wait_for("memhog checksum", 60, || {
        lines(out).iter().filter(|l| l.starts_with("sum")).count() > before
    });
    lines(out)
        .into_iter()
        .rfind(|l| l.starts_with("sum"))
        .unwrap()
}

/// Asks a test program for its report (SIGUSR1) and returns the line it writes to `out`
/// then (the first after the lines there now), waiting for it up to 10 s.
pub fn report_on_signal(pid: i32, out: &Path) -> String {
    let n = lines(out).len();
    signal(pid, libc::SIGUSR1);
    // Whole lines: a read racing the program's write can see a line without its end.
    wait_for("the report", 10, || {
        std::fs::read_to_string(out).is_ok_and(|t| t.ends_with('\n') && t.lines().count() > n)
    });
    lines(out).swap_remove(n)
}

/// Starts memhog with `mib` MiB and waits until it is ready.
pub fn start_memhog(dir: &Path, mib: u32) -> (i32, PathBuf) {
    start_memhog_with(dir, mib, &[])
}

/// Starts memhog with `mib` MiB and its extra arguments `mode` (`["text"]`: compressible
/// text instead of random words) and waits until it is ready.
pub fn start_memhog_with(dir: &Path, mib: u32, mode: &[&str]) -> (i32, PathBuf) {
    let out = dir.join("memhog.out");
    let exe = prog("memhog");
    let m = mib.to_string();
    let mut argv = vec![exe.to_str().unwrap(), &m, out.to_str().unwrap()];
    argv.extend_from_slice(mode);
    let pid = spawn(&argv, &dir.join("memhog.log"));
    wait_for("memhog ready", 60, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    (pid, out)
}

/// Waits until the first line of `out` is "ready [N ...]" (a test program set itself up);
/// returns the numbers after "ready".
pub fn wait_ready(out: &Path) -> Vec<i32> {
    // The whole line: a read racing the program's write can see "ready" without its PIDs.
    wait_for("the program to be ready", 20, || {
        std::fs::read_to_string(out).is_ok_and(|t| t.starts_with("ready") && t.contains('\n'))
    });
    lines(out)[0]
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Kills (and reaps) a test process when dropped, so a failing test leaks nothing. The PID
/// stays valid across dump/restore (restore recreates the same PID).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.0)).exists() {
            // SAFETY: kill and waitpid with integers and a null status pointer.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
}

/// PIDs of every process in a dump (from pstree.img, through `cryo show`).
pub fn tree_pids(img: &Path) -> Vec<i32> {
    let o = cryo(&["show", img.join("pstree.img").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| i32::try_from(e["pid"].as_i64().unwrap()).unwrap())
        .collect()
}

/// Waits until every process of a dump is gone (their PIDs must be free to restore).
pub fn wait_tree_gone(img: &Path) {
    // Children first: the init of a PID namespace nested in the tree finishes exiting only
    // once every task of its namespace is reaped, also one whose parent was outside it (then
    // re-parented to this process).
    for p in tree_pids(img).into_iter().rev() {
        wait_gone(p);
    }
}

/// Starts `sleep 1000` in its own session and dumps it into DIR/img (with `extra` dump
/// options); the process is gone when this returns. Returns (images dir, pid).
pub fn dumped_sleep(name: &str, extra: &[&str]) -> (PathBuf, i32) {
    let dir = scratch(name);
    let pid = spawn(&["/bin/sleep", "1000"], &dir.join("log"));
    let _guard = KillOnDrop(pid);
    wait_for("sleep to start", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    let img = dir.join("img");
    dump(pid, &img, extra);
    kill(pid);
    (img, pid)
}

/// The pid of a child process, as the kernel's `pid_t`.
pub fn pid_of(child: &std::process::Child) -> i32 {
    i32::try_from(child.id()).expect("a pid fits a pid_t")
}

/// The counter writing one number per line to `out`, which had written `at` lines when it
/// was dumped, goes on after its restore: two more lines come, and every number is the one
/// before it plus one (no gap, no restart).
pub fn count_goes_on(out: &Path, at: usize) {
    wait_for("the count to go on after the restore", 10, || {
        lines(out).len() >= at + 2
    });
    let v: Vec<u64> = lines(out).iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or restart: {v:?}"
    );
}

/// The network-lock table a dump named in its log (`table=CRIU-…`), if it made one.
pub fn lock_table_of(dir: &Path) -> Option<String> {
    log(dir, "dump.log")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("table="))
        .map(String::from)
}

/// The network-lock tables (`inet CRIU-…`) in this process's network namespace. A test
/// compares them before and after: on a shared host another tool's run (a CRIU dump kept
/// for a restore that never came) may have left one that is not the test's.
pub fn own_lock_tables() -> std::collections::BTreeSet<String> {
    let o = Command::new("nft").args(["list", "tables"]).output();
    o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|t| t.starts_with("CRIU-"))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_that_cannot_run_says_skip_or_fails_in_ci() {
        assert!(have_tool("true", "x"));
        assert!(!have_tool("cryo-no-such-tool", "--version"));
        let mut out = Vec::new();
        report_skip(false, "runc_ok", "runc not installed", &mut out);
        assert_eq!(out, b"SKIP: runc_ok: runc not installed\n");
        let r = std::panic::catch_unwind(|| {
            report_skip(true, "runc_ok", "runc not installed", &mut Vec::new())
        });
        let msg = r.expect_err("in CI a test that cannot run fails");
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("runc_ok cannot run: runc not installed"),
            "{msg}"
        );
    }
}
