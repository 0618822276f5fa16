//! cryo takes CRIU 4.2's command line as the tools that drive CRIU pass it, word for word,
//! and CRIU's configuration files in CRIU's order:
//!
//! - zdtm: the exact dump, restore and feature-check lines of `test/zdtm.py` (a real dump and
//!   restore; `-verbosity=0` read as getopt reads it);
//! - runc (its test suite), podman, containerd: `--version`, `-V`, `check`, and the
//!   `check --feature` names they ask (`uffd-noncoop`, `external_net_ns`, `userns`,
//!   `mem_dirty_track`), answered truthfully; their work itself goes through `swrk`
//!   (`rpc.rs`, `runc.rs`, `podman.rs`, `containerd.rs`);
//! - LXC (`lxc-checkpoint`) and LXD (`lxc move`, through liblxc): their dump and restore lines
//!   are accepted (the failure is then about the missing process or images, not a usage
//!   error); `lxc.rs` runs LXC itself;
//! - an unusable command line is reported in the `-o` log file too (zdtm reads it);
//! - configuration files: `$HOME/.criu/default.conf`, then `$CRIU_CONFIG_FILE`, then
//!   `--config FILE`, then the command line, each overriding the earlier ones;
//!   `--no-default-config` and `--config` skip the default files.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use integration::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// cryo with `args`, a HOME of the test's own (so ~/.criu/default.conf is the test's) and
/// `env`.
fn cryo_home(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut e = vec![("HOME", home.to_str().unwrap())];
    e.extend_from_slice(env);
    cryo_env(args, &e)
}

fn sleeper(dir: &Path) -> (i32, KillOnDrop) {
    let pid = spawn(&["/bin/sleep", "1000"], &dir.join("sleep.log"));
    wait_for("sleep to start", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    (pid, KillOnDrop(pid))
}

#[test]
fn zdtm_command_lines() {
    let dir = scratch("cli-zdtm");
    let (pid, _g) = sleeper(&dir);
    let img = dir
        .join("dump/zdtm/static/env00")
        .join(pid.to_string())
        .join("1");
    std::fs::create_dir_all(&img).unwrap();
    let pidfile = dir.join("env00.pid");
    let p = pid.to_string();
    // zdtm.py: dump.
    let o = cryo(&[
        "dump",
        "--no-default-config",
        "--log-file",
        "dump.log",
        "--images-dir",
        img.to_str().unwrap(),
        "--verbosity=4",
        "--tree",
        &p,
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--timeout",
        "10",
        "--pre-dump-mode",
        "splice",
    ]);
    assert!(o.status.success(), "{}", log(&img, "dump.log"));
    wait_gone(pid);
    // zdtm.py: restore.
    let _ = std::fs::remove_file(&pidfile);
    let o = cryo(&[
        "restore",
        "--no-default-config",
        "--log-file",
        "restore.log",
        "--images-dir",
        img.to_str().unwrap(),
        "--verbosity=4",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--restore-detached",
    ]);
    assert!(o.status.success(), "{}", log(&img, "restore.log"));
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(restored, pid);
    assert!(alive(pid));
    // zdtm.py: feature checks (the exit code decides: 0 runs the test, else it is skipped).
    for (feature, supported) in [
        ("mnt_id", true),
        ("get_rseq_conf", true),
        ("timens", true),
        ("aio_remap", true),
        ("tun", true),
        ("network_lock_nftables", true),
    ] {
        let o = cryo(&[
            "check",
            "--no-default-config",
            "-verbosity=0",
            "--feature",
            feature,
        ]);
        assert_eq!(o.status.success(), supported, "{feature}: {}", stdout(&o));
    }
}

#[test]
fn runtime_probes_are_answered_like_criu() {
    for v in ["--version", "-V"] {
        let o = cryo(&[v]);
        assert!(o.status.success());
        assert!(stdout(&o).starts_with("Version: 4.2\n"), "{}", stdout(&o));
    }
    let o = cryo(&["check"]);
    assert!(o.status.success() && stdout(&o).contains("Looks good."));
    // runc's test suite asks these before it uses them.
    for (feature, supported) in [
        ("external_net_ns", true),
        // userfaultfd with fork/remap events (lazy restore): on in this kind of VM's kernel.
        ("uffd-noncoop", true),
        ("uffd", true),
        ("userns", true),
        // Soft-dirty is off here; userfaultfd write protection tracks written pages.
        ("mem_dirty_track", true),
    ] {
        let o = cryo(&["check", "--feature", feature]);
        assert_eq!(o.status.success(), supported, "{feature}: {}", stdout(&o));
        if supported {
            assert_eq!(stdout(&o).trim(), format!("{feature} is supported"));
        }
    }
    let o = cryo(&["check", "--feature", "no-such-feature"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Unknown feature no-such-feature"));
    // --extra and --all report the optional features (some are missing: exit 1, as CRIU).
    let o = cryo(&["check", "--all"]);
    assert!(stdout(&o).contains("Looks good but some kernel features are missing"));
}

/// A PID that no process has: one just reaped.
fn free_pid() -> String {
    let mut c = Command::new("/bin/true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid.to_string()
}

#[test]
fn lxc_and_lxd_command_lines_are_accepted() {
    let dir = scratch("cli-lxc");
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let d = img.to_str().unwrap();
    let pid = free_pid();
    let dump_log = format!("{d}/dump.log");
    let restore_log = format!("{d}/restore.log");
    // lxc-checkpoint -s (Debian's lxc 5.0), and LXD's additions for `lxc move`.
    let lxc_dump: Vec<&str> = vec![
        "dump",
        "--tcp-established",
        "--file-locks",
        "--link-remap",
        "--manage-cgroups=full",
        "--ext-mount-map",
        "auto",
        "--enable-external-sharing",
        "--enable-external-masters",
        "--enable-fs",
        "hugetlbfs",
        "--enable-fs",
        "tracefs",
        "-D",
        d,
        "-o",
        &dump_log,
        "--cgroup-root",
        "name=systemd:/lxc.payload.ct1",
        "--cgroup-root",
        "pids:/lxc.payload.ct1",
        "--cgroup-root",
        "memory:/lxc.payload.ct1",
        "--ext-mount-map",
        "/sys/kernel/security:sys/kernel/security",
        "-t",
        &pid,
        "--skip-in-flight",
        "--freeze-cgroup",
        "/sys/fs/cgroup/freezer//lxc.payload.ct1",
        "--ext-mount-map",
        "/dev/console:console",
        "--external",
        "tty[8800:1a]",
        "--force-irmap",
        "--ghost-limit",
        "1024",
        "--action-script",
        "/bin/true",
        "-vvvvvv",
    ];
    let o = cryo(&lxc_dump);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("process {pid} does not exist")),
        "not a usage error: {}",
        stderr(&o)
    );
    let lxc_restore: Vec<&str> = vec![
        "restore",
        "--tcp-established",
        "--file-locks",
        "--link-remap",
        "--manage-cgroups=full",
        "--ext-mount-map",
        "auto",
        "--enable-external-sharing",
        "--enable-external-masters",
        "--enable-fs",
        "hugetlbfs",
        "--enable-fs",
        "tracefs",
        "-D",
        d,
        "-o",
        &restore_log,
        "--cgroup-root",
        "name=systemd:/lxc.payload.ct1",
        "--ext-mount-map",
        "sys/kernel/security:/sys/kernel/security",
        "--root",
        "/usr/lib/x86_64-linux-gnu/lxc/rootfs",
        "--restore-detached",
        "--restore-sibling",
        "--inherit-fd",
        "fd[6]:tty[8800:1a]",
        "--ext-mount-map",
        "console:/dev/pts/0",
        "--external",
        "console:/dev/pts/0",
        "--ext-mount-map",
        "/dev/console:console",
    ];
    let o = cryo(&lxc_restore);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("inventory.img"),
        "not a usage error: {}",
        stderr(&o)
    );
    // Both were logged where LXC reads them.
    assert!(log(&img, "dump.log").contains("does not exist"));
}

#[test]
fn usage_errors_reach_the_log_file() {
    let dir = scratch("cli-usage");
    let o = cryo(&[
        "dump",
        "--no-default-config",
        "--log-file",
        "dump.log",
        "--images-dir",
        dir.to_str().unwrap(),
        "--tree",
        "1",
        "--frobnicate",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unrecognized option '--frobnicate'"));
    assert!(log(&dir, "dump.log").contains("unrecognized option '--frobnicate'"));
    // Relative to -W when given, as CRIU opens its log.
    let w = dir.join("work");
    std::fs::create_dir_all(&w).unwrap();
    let o = cryo(&[
        "restore",
        "-W",
        w.to_str().unwrap(),
        "-o",
        "restore.log",
        "-D",
        dir.to_str().unwrap(),
        "--restore-sibling",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(log(&w, "restore.log").contains("--restore-sibling only makes sense"));
}

#[test]
fn configuration_files_in_criu_order() {
    let dir = scratch("cli-config");
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".criu")).unwrap();
    // ~/.criu/default.conf: keep the process running, log to home.log, JSON summary on.
    std::fs::write(
        home.join(".criu/default.conf"),
        "# cryo test\nleave-running\nlog-file home.log   # a comment\njson\n",
    )
    .unwrap();
    let (pid, _g) = sleeper(&dir);
    let p = pid.to_string();
    let img = |n: &str| dir.join(n);
    let dump = |name: &str, extra: &[&str], env: &[(&str, &str)]| {
        let d = img(name);
        let mut a = vec!["dump", "-t", &p, "-D", d.to_str().unwrap()];
        a.extend_from_slice(extra);
        let o = cryo_home(&home, &a, env);
        (o, d)
    };
    // The home file alone.
    let (o, d) = dump("a", &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("home.log").exists());
    assert!(
        stdout(&o).starts_with('{'),
        "json from the file: {}",
        stdout(&o)
    );
    assert!(alive(pid), "leave-running from the file");
    // CRIU_CONFIG_FILE after it: its log-file wins; --no-json on the command line wins.
    let env_conf = dir.join("env.conf");
    std::fs::write(&env_conf, "log-file env.log\n").unwrap();
    let env = [("CRIU_CONFIG_FILE", env_conf.to_str().unwrap())];
    let (o, d) = dump("b", &["--no-json"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("env.log").exists() && !d.join("home.log").exists());
    assert!(stdout(&o).is_empty());
    assert!(alive(pid));
    // --config FILE after both; it also turns the default files off (not the env one).
    let cmd_conf = dir.join("cmd.conf");
    std::fs::write(&cmd_conf, "log-file cmd.log\nleave-running\n").unwrap();
    let (o, d) = dump("c", &["--config", cmd_conf.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("cmd.log").exists());
    assert!(stdout(&o).is_empty(), "the home file was skipped");
    // The command line last of all.
    let (o, d) = dump("d", &["-o", "argv.log"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("argv.log").exists() && !d.join("env.log").exists());
    // --no-default-config: nothing from the home file (no leave-running: the dump kills).
    let (o, d) = dump("e", &["--no-default-config", "-o", "e.log"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("e.log").exists());
    wait_gone(pid);
    // A file CRIU cannot read is an error naming it.
    std::fs::write(&cmd_conf, "log-file a b c\n").unwrap();
    let o = cryo_home(
        &home,
        &["check", "--config", cmd_conf.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cmd.conf, line 1"), "{}", stderr(&o));
    let _ = Stdio::null();
}

/// `check --feature sk_unix_file` answers as the kernel does (CRIU's probe: SIOCUNIXFILE on
/// an unbound unix socket fails with ENOENT where the ioctl exists); cryo uses that ioctl to
/// find a socket's file, so it answered no wrongly before and zdtm skipped sk-unix-mntns.
#[test]
fn sk_unix_file_is_answered_as_the_kernel_has_it() {
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, fcntl, errno\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ntry:\n    fcntl.ioctl(s.fileno(), 0x89E0)\n    print('yes')\nexcept OSError as e:\n    print('yes' if e.errno == errno.ENOENT else 'no')",
        ])
        .output()
        .unwrap();
    let kernel_has_it = String::from_utf8_lossy(&probe.stdout).trim() == "yes";
    let o = cryo(&["check", "--feature", "sk_unix_file"]);
    assert_eq!(
        o.status.success(),
        kernel_has_it,
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
