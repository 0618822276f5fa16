//! cryo run by a user other than root (issue #16 item 5, CRIU's `--unprivileged`): a copy of
//! cryo given CAP_CHECKPOINT_RESTORE and CAP_SYS_PTRACE as file capabilities, run as
//! `nobody`, checkpoints and restores that user's own process; without `--unprivileged` it
//! refuses to start, as CRIU; another user's process is refused at dump, and images of one
//! at restore before anything is created, naming the process and the capability it would take.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration::*;

const NOBODY: u32 = 65534;

/// A directory `nobody` may write in, holding a copy of cryo with file capabilities and a
/// copy of the counter program; `None` (skipped) without setcap or setpriv.
fn setup(name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let setcap = ["/usr/sbin/setcap", "/sbin/setcap"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if setcap.is_none() || !have_tool("setpriv", "--version") {
        skip("setcap (libcap2-bin) and setpriv (util-linux) are needed: run integration/setup.sh");
        return None;
    }
    let dir = scratch(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cryo = dir.join("cryo");
    std::fs::copy(cryo_bin(), &cryo).unwrap();
    let o = Command::new(setcap.unwrap())
        .args(["cap_checkpoint_restore,cap_sys_ptrace+eip"])
        .arg(&cryo)
        .output()
        .unwrap();
    ok(&o, "setcap on the copy of cryo");
    let counter = dir.join("counter");
    std::fs::copy(prog("counter"), &counter).unwrap();
    std::fs::set_permissions(&counter, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some((dir, cryo, counter))
}

/// `argv` run as `nobody` (its HOME in `dir`, as a user's own would be).
fn as_nobody(dir: &Path, argv: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "env",
        ])
        .arg(format!("HOME={}", dir.display()))
        .args(argv)
        .output()
        .unwrap()
}

/// A line `Name:\tvalue...` of /proc/PID/status.
fn status_field(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `counter` started as `nobody` in `dir`, writing to `dir/count.out`; its PID and that path.
fn nobodys_counter(dir: &Path, counter: &Path) -> (i32, PathBuf) {
    let out = dir.join("count.out");
    // Its stdout is a file of its own user's (one of root's it could not open again).
    let stdout = dir.join("counter.log");
    std::fs::write(&stdout, "").unwrap();
    std::os::unix::fs::chown(&stdout, Some(NOBODY), Some(NOBODY)).unwrap();
    let nobody = format!("--reuid={NOBODY}");
    let gid = format!("--regid={NOBODY}");
    let pid = spawn(
        &[
            "setpriv",
            &nobody,
            &gid,
            "--clear-groups",
            // Its working directory its user's own: one it cannot enter (the test's, under a
            // checkout in a mode-0700 directory) could not be entered again at restore.
            "env",
            "-C",
            dir.to_str().unwrap(),
            counter.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &stdout,
    );
    wait_for("the counter", 10, || lines(&out).len() > 2);
    assert_eq!(
        status_field(pid, "Uid").split_whitespace().next(),
        Some("65534")
    );
    (pid, out)
}

#[test]
fn a_user_checkpoints_and_restores_its_own_process_with_file_capabilities() {
    let Some((dir, cryo, counter)) = setup("unpriv") else {
        return;
    };
    let (pid, out) = nobodys_counter(&dir, &counter);
    let _g = KillOnDrop(pid);
    let (c, p, img) = (
        cryo.to_str().unwrap(),
        pid.to_string(),
        dir.join("img").display().to_string(),
    );

    // Without --unprivileged a non-root cryo stops before anything, as CRIU.
    let o = as_nobody(&dir, &[c, "dump", "-t", &p, "-D", &img]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--unprivileged"),
        "{err}"
    );
    assert!(alive(pid));

    // `check --unprivileged` says what this user can and cannot do.
    let o = as_nobody(&dir, &[c, "check", "--unprivileged"]);
    let said = ok(&o, "cryo check --unprivileged");
    assert!(said.contains("uid 65534"), "{said}");
    assert!(said.contains("yes: checkpoint/restore at all"), "{said}");
    assert!(said.contains("no:  restore PID, mount"), "{said}");

    let o = as_nobody(
        &dir,
        &[
            c,
            "dump",
            "--unprivileged",
            "-t",
            &p,
            "-D",
            &img,
            "-v4",
            "-o",
            "dump.log",
        ],
    );
    ok(
        &o,
        &format!("unprivileged dump\n{}", log(Path::new(&img), "dump.log")),
    );
    wait_gone(pid);
    let at = lines(&out).len();
    let o = as_nobody(
        &dir,
        &[
            c,
            "restore",
            "--unprivileged",
            "-D",
            &img,
            "-d",
            "-v4",
            "-o",
            "restore.log",
        ],
    );
    ok(
        &o,
        &format!(
            "unprivileged restore\n{}",
            log(Path::new(&img), "restore.log")
        ),
    );
    assert!(alive(pid), "the restored counter runs with its PID");
    count_goes_on(&out, at);
    // The user it was, with none of cryo's capabilities.
    assert!(status_field(pid, "Uid").starts_with("65534"));
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
}

/// A rootless sandbox (`unshare --user --map-root-user --pid --fork`, as bubblewrap or a
/// rootless runtime makes one): the user's counter runs as root of a user namespace of the
/// user's own, as the init of a PID namespace it owns, in the session of its launcher
/// (outside that namespace: `--shell-job`). The same user's cryo (file capabilities,
/// `--unprivileged`) dumps it and restores it into a new user namespace with the same map,
/// PID 1 of a new PID namespace, counting on; the restore made only namespaces the user may
/// make.
#[test]
fn a_user_moves_its_rootless_sandbox() {
    let Some((dir, cryo, counter)) = setup("unpriv-sandbox") else {
        return;
    };
    let ns_max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if ns_max.trim() == "0" || !have_tool("unshare", "--version") {
        skip("user namespaces for users (user.max_user_namespaces > 0) and unshare are needed");
        return;
    }
    let out = dir.join("count.out");
    let stdout = dir.join("counter.log");
    std::fs::write(&stdout, "").unwrap();
    std::os::unix::fs::chown(&stdout, Some(NOBODY), Some(NOBODY)).unwrap();
    let launcher = spawn(
        &[
            "setpriv",
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "env",
            "-C",
            dir.to_str().unwrap(),
            "unshare",
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            counter.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &stdout,
    );
    let _l = KillOnDrop(launcher);
    wait_for("the counter", 10, || lines(&out).len() > 2);
    let pid = children(launcher)[0];
    let _g = KillOnDrop(pid);
    let sandbox = |pid: i32| {
        (
            status_field(pid, "NSpid")
                .split_whitespace()
                .last()
                .map(str::to_string),
            status_field(pid, "Uid")
                .split_whitespace()
                .next()
                .map(str::to_string),
            std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            status_field(pid, "CapEff"),
        )
    };
    let was = sandbox(pid);
    assert_eq!(
        (was.0.as_deref(), was.1.as_deref(), was.2.as_str()),
        (Some("1"), Some("65534"), "0 65534 1"),
        "{was:?}"
    );
    let own_userns = |pid: i32| {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap()
            != std::fs::read_link("/proc/self/ns/user").unwrap()
    };
    assert!(own_userns(pid));
    let (c, p, img) = (
        cryo.to_str().unwrap(),
        pid.to_string(),
        dir.join("img").display().to_string(),
    );
    let o = as_nobody(
        &dir,
        &[
            c,
            "dump",
            "--unprivileged",
            "--shell-job",
            "-t",
            &p,
            "-D",
            &img,
            "-v4",
            "-o",
            "dump.log",
        ],
    );
    ok(
        &o,
        &format!("unprivileged dump\n{}", log(Path::new(&img), "dump.log")),
    );
    wait_gone(pid);
    let at = lines(&out).len();
    let pidfile = dir.join("restored.pid");
    let o = as_nobody(
        &dir,
        &[
            c,
            "restore",
            "--unprivileged",
            "--shell-job",
            "-D",
            &img,
            "-d",
            "--pidfile",
            pidfile.to_str().unwrap(),
            "-v4",
            "-o",
            "restore.log",
        ],
    );
    ok(
        &o,
        &format!(
            "unprivileged restore\n{}",
            log(Path::new(&img), "restore.log")
        ),
    );
    let new: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(new);
    count_goes_on(&out, at);
    assert_eq!(sandbox(new), was, "the sandbox as it was");
    assert!(own_userns(new));
}

#[test]
fn a_process_of_another_user_is_refused_before_anything_is_created() {
    let Some((dir, cryo, counter)) = setup("unpriv-other") else {
        return;
    };
    // root's counter, dumped by root.
    let out = dir.join("count.out");
    let pid = spawn(
        &[counter.to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("counter.log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the counter", 10, || lines(&out).len() > 1);
    // Its own user's only: root's counter is refused by name and runs on.
    let o = as_nobody(
        &dir,
        &[
            cryo.to_str().unwrap(),
            "dump",
            "--unprivileged",
            "-t",
            &pid.to_string(),
            "-D",
            dir.join("nobody-img").to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nobody dumped root's process: {err}");
    assert!(
        err.contains(&format!("process {pid} runs as uid 0")),
        "{err}"
    );
    let n = lines(&out).len();
    wait_for("root's counter to go on", 10, || lines(&out).len() > n);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    // Readable by nobody, as a user given root's images would have them.
    let o = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&img)
        .output()
        .unwrap();
    ok(&o, "chmod");
    let o = as_nobody(
        &dir,
        &[
            cryo.to_str().unwrap(),
            "restore",
            "--unprivileged",
            "-D",
            img.to_str().unwrap(),
            "-d",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "restored by nobody: {err}");
    assert!(
        err.contains(&format!("process {pid}")) && err.contains("CAP_SETUID"),
        "{err}"
    );
    assert!(!alive(pid), "nothing was created");
    let after = lines(&out).len();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(lines(&out).len(), after, "the counter does not run");
}

/// Over RPC (`cryo swrk`, as runc drives it), the same rules: a non-root service without
/// `unprivileged` refuses the request, as CRIU's; with it, it dumps and restores the user's
/// own process.
#[test]
fn the_rpc_service_run_by_a_user_needs_unprivileged_too() {
    use cryo::image::pb;
    use integration::rpc::{req, swrk_as};
    let Some((dir, cryo, counter)) = setup("unpriv-rpc") else {
        return;
    };
    let (pid, out) = nobodys_counter(&dir, &counter);
    let _g = KillOnDrop(pid);
    let img = dir.join("img");
    std::fs::create_dir(&img).unwrap();
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    let opts = |unprivileged| pb::CriuOpts {
        pid: Some(pid),
        images_dir_fd: -1,
        images_dir: Some(img.display().to_string()),
        log_file: Some("dump.log".into()),
        log_level: Some(4),
        unprivileged,
        ..Default::default()
    };
    let (_, r, ok) =
        swrk_as(&cryo, Some(NOBODY)).call(&req(pb::CriuReqType::Dump, Some(opts(None))), None);
    let msg = r.cr_errmsg.unwrap_or_default();
    assert!(!r.success && !ok && msg.contains("unprivileged"), "{msg}");
    assert!(alive(pid), "the refused request left the counter running");

    let (_, r, ok) = swrk_as(&cryo, Some(NOBODY))
        .call(&req(pb::CriuReqType::Dump, Some(opts(Some(true)))), None);
    assert!(
        r.success && ok,
        "unprivileged RPC dump: {:?}\n{}",
        r.cr_errmsg,
        log(&img, "dump.log")
    );
    wait_gone(pid);
    let at = lines(&out).len();
    let ropts = pb::CriuOpts {
        log_file: Some("restore.log".into()),
        ..opts(Some(true))
    };
    let (_, r, ok) = swrk_as(&cryo, Some(NOBODY)).call(
        &req(
            pb::CriuReqType::Restore,
            Some(pb::CriuOpts { pid: None, ..ropts }),
        ),
        None,
    );
    assert!(
        r.success && ok,
        "unprivileged RPC restore: {:?}\n{}",
        r.cr_errmsg,
        log(&img, "restore.log")
    );
    assert!(alive(pid), "the restored counter runs with its PID");
    count_goes_on(&out, at);
    assert!(status_field(pid, "Uid").starts_with("65534"));
}
