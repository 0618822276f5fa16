//! `cryo migrate` / `cryo receive` (issue #11): a process that keeps writing its memory is
//! migrated between two network namespaces standing for two hosts (the destination listens in
//! B, the source connects from A over a veth). Pre-copy rounds while it runs, a short final
//! freeze, the restore on the destination, the source killed only then; the process proves
//! afterwards that every page it wrote arrived (`migratee`'s check). Faults: a destination
//! that refuses (its restore fails) and one that stops in the middle leave the source running
//! unharmed and nothing on the destination.
//!
//! On one machine the migrated tree runs in a PID namespace of its own: its PIDs are restored
//! as they were, and the frozen source still holds them until the destination runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use integration::echo::{finish_clients, wait_progress};
use integration::netns::{need, Net};
use integration::*;

/// `cryo ARGS` in network namespace `ns` (nsenter: only the network namespace changes).
fn cryo_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", Net::path(ns)))
        .arg(cryo_bin())
        .args(args)
        .stdin(Stdio::null());
    c
}

/// `cryo receive` in B, listening on B's address; killed on drop.
struct Receiver {
    child: Option<Child>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Receiver {
    fn start(net: &Net, port: u16, dest: &Path, wd: &Path, env: &[(&str, &str)]) -> Receiver {
        Receiver::start_with(net, port, Some(dest), wd, env, &[])
    }

    /// `cryo receive` with `-D dest` (none: receive's own directory, removed after) and
    /// `extra` arguments.
    fn start_with(
        net: &Net,
        port: u16,
        dest: Option<&Path>,
        wd: &Path,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Receiver {
        std::fs::create_dir_all(wd).unwrap();
        let port = port.to_string();
        let addr = net.v4(2);
        let mut args = vec![
            "receive",
            "--port",
            &port,
            "--address",
            &addr,
            "-W",
            wd.to_str().unwrap(),
            "-v4",
            "-o",
            "receive.log",
        ];
        if let Some(d) = dest {
            args.extend(["-D", d.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        let mut c = cryo_in(&net.b, &args);
        c.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().expect("cryo receive");
        wait_for("cryo receive to listen", 20, || {
            log(wd, "receive.log").contains("receive: listening")
        });
        Receiver { child: Some(child) }
    }

    fn wait(mut self) -> Output {
        self.child
            .take()
            .unwrap()
            .output_within("cryo receive", CHILD_SECS)
    }
}

/// `migratee MIB OUT DELAY_US` in A; with `pidns`, as the init of a PID namespace of its own
/// (`unshare --pid --fork`, then `setsid`: the tree's root leads its session). Returns the
/// launcher (our child) and the tree's root.
/// `extra`: more arguments (the MiB of its region SIGUSR2 half-drops).
fn start_migratee(
    net: &Net,
    dir: &Path,
    mib: u32,
    delay_us: u32,
    pidns: bool,
    extra: &[&str],
) -> (i32, i32, PathBuf) {
    let out = dir.join("migratee.out");
    let exe = prog("migratee");
    let m = mib.to_string();
    let d = delay_us.to_string();
    let mut argv = vec![];
    if pidns {
        argv.extend(["unshare", "--pid", "--fork", "setsid"]);
    }
    argv.extend([exe.to_str().unwrap(), &m, out.to_str().unwrap(), &d]);
    argv.extend_from_slice(extra);
    let launcher = Net::spawn_in(&net.a, &argv, &dir.join("migratee.log"));
    wait_ready(&out);
    let root = if pidns {
        children(launcher)[0]
    } else {
        launcher
    };
    (launcher, root, out)
}

/// The last "steps N" the process wrote.
fn steps(out: &Path) -> u64 {
    lines(out)
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("steps ")?.parse().ok())
        .unwrap_or(0)
}

/// Asks the process to stop writing and check every page; panics unless all are right.
fn verify(pid: i32, out: &Path) {
    signal(pid, libc::SIGUSR1);
    wait_for("the page check", 60, || {
        lines(out).iter().any(|l| l.starts_with("verify"))
    });
    let v = lines(out)
        .into_iter()
        .find(|l| l.starts_with("verify"))
        .unwrap();
    assert!(v.starts_with("verify ok"), "{v}");
}

fn port() -> u16 {
    20000 + u16::try_from(std::process::id() % 20000).unwrap()
}

/// A migration's source and directories: `migratee` (`mib` MiB, 300 µs between writes,
/// `extra` arguments) started in A of the namespaces `Net::new(tag, x)` (`pidns`: as the
/// init of a PID namespace of its own), under the test's scratch directory `name` with B's
/// image directory `dest` and the work directory `wd`. The source's processes are killed on
/// drop (the root only while it is the source's: [`Source::moved`]), before the namespaces
/// go.
struct Source {
    root_guard: std::cell::Cell<Option<KillOnDrop>>,
    _launcher: KillOnDrop,
    net: Net,
    dir: PathBuf,
    root: i32,
    out: PathBuf,
    dest: PathBuf,
    wd: PathBuf,
}

impl Source {
    /// None (the test is skipped) when a tool is missing.
    fn start(
        name: &str,
        tag: &str,
        x: u8,
        mib: u32,
        pidns: bool,
        extra: &[&str],
    ) -> Option<Source> {
        let tools: &[&str] = if pidns {
            &["ip", "nsenter", "unshare", "setsid"]
        } else {
            &["ip", "nsenter"]
        };
        if !need(tools) {
            return None;
        }
        let dir = scratch(name);
        let net = Net::new(tag, x);
        let (launcher, root, out) = start_migratee(&net, &dir, mib, 300, pidns, extra);
        Some(Source {
            // The tree's root is unshare's child: killing the launcher leaves it running.
            root_guard: std::cell::Cell::new(pidns.then(|| KillOnDrop(root))),
            _launcher: KillOnDrop(launcher),
            net,
            root,
            out,
            dest: dir.join("dest"),
            wd: dir.join("work"),
            dir,
        })
    }

    /// The root left (moved, or killed at the commit): waits until it is gone; its PID,
    /// free now, is not killed on drop.
    fn moved(&self) {
        wait_gone(self.root);
        std::mem::forget(self.root_guard.take());
    }

    /// `cryo migrate` of the root to the receiver in B, with `extra` arguments.
    fn migrate(&self, extra: &[&str]) -> Command {
        migrate_cmd(&self.net, self.root, &self.wd, extra)
    }

    /// Panics unless both migrate (`o`) and receive (`got`) succeeded, with their errors
    /// and logs.
    fn both_succeeded(&self, o: &Output, got: &Output) {
        assert!(
            o.status.success() && got.status.success(),
            "migrate: {}\n{}\nreceive: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            log(&self.wd, "migrate.log"),
            String::from_utf8_lossy(&got.stderr),
            log(&self.wd, "receive.log")
        );
    }

    /// The source runs on unharmed: it goes on writing and has every page it wrote.
    fn runs_on(&self) {
        assert!(alive(self.root), "the source runs on");
        let at = steps(&self.out);
        wait_for("the source to go on writing", 20, || steps(&self.out) > at);
        verify(self.root, &self.out);
    }
}

/// The whole migration: rounds that shrink, a final freeze, the process running in B with
/// every page it wrote (before, between and during the rounds), the source gone.
#[test]
fn a_writing_process_moves_to_another_namespace_with_all_its_pages() {
    let Some(s) = Source::start("migrate", "mig", 131, 64, true, &[]) else {
        return;
    };
    let (net, dir, out, dest, wd) = (&s.net, &s.dir, &s.out, &s.dest, &s.wd);
    let rx = Receiver::start(net, port(), dest, wd, &[]);
    wait_for("the writer to go on", 20, || steps(out) > 0);
    let before = steps(out);
    let o = output_within(&mut s.migrate(&["--json"]), "cryo migrate", CHILD_SECS);
    let got = rx.wait();
    s.both_succeeded(&o, &got);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rounds = r["rounds"].as_array().unwrap();
    assert!(!rounds.is_empty(), "{r}");
    assert!(
        rounds[0]["pages"].as_u64().unwrap() >= 64 * 256,
        "round 1 sends every page: {r}"
    );
    let last = rounds.last().unwrap()["pages"].as_u64().unwrap();
    assert!(
        r["final_pages"].as_u64().unwrap() < rounds[0]["pages"].as_u64().unwrap()
            && last < 64 * 256,
        "the final freeze sends only what was written since: {r}"
    );
    assert!(r["downtime_ms"].as_f64().unwrap() > 0.0, "{r}");
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    s.moved();
    assert!(alive(moved));
    // It runs in B now, and writes on from where it was.
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    let b = Net::spawn_in(&net.b, &["sleep", "30"], &dir.join("sleep.log"));
    let _g3 = KillOnDrop(b);
    assert_eq!(ns(moved), ns(b), "the process is in B's network namespace");
    let at = steps(out);
    assert!(at >= before);
    wait_for("the writer to go on after the move", 20, || steps(out) > at);
    verify(moved, out);
    assert!(dest.join("final").exists(), "-D DIR keeps the images");
}

/// A destination restoring in full stages the root's memory as the rounds come and moves it
/// into the restored process (no copy after the freeze): the process has every page as it
/// was at the freeze, those written before, between and during the rounds, and the pages it
/// dropped (`MADV_DONTNEED`) after round 1 was staged read as zero again, while the rest of
/// that region keeps its content.
#[test]
fn a_full_destination_moves_the_staged_memory_into_the_process_with_every_change() {
    let Some(s) = Source::start("migstage", "migm", 140, 64, true, &["8"]) else {
        return;
    };
    let (net, root, out, dest, wd) = (&s.net, s.root, &s.out, &s.dest, &s.wd);
    // Round 2 waits 3 s on the destination: the process drops half of its second region
    // then, after round 1 (which had those pages) was staged.
    let rx = Receiver::start(
        net,
        port(),
        dest,
        wd,
        &[("CRYO_FAULT_PAUSE", "receive-r2:3")],
    );
    wait_for("the writer to go on", 20, || steps(out) > 0);
    let mig = s.migrate(&["--json"]).spawn().unwrap();
    wait_for("round 2 on the destination", 60, || {
        log(wd, "receive.log").contains("pausing at a fault point")
    });
    assert!(
        log(wd, "receive.log").contains("receive: round staged"),
        "{}",
        log(wd, "receive.log")
    );
    signal(root, libc::SIGUSR2);
    wait_for("the process to drop its pages", 10, || {
        lines(out).iter().any(|l| l == "zapped")
    });
    let o = mig.output_within("cryo migrate", CHILD_SECS);
    let got = rx.wait();
    let rl = log(wd, "receive.log");
    s.both_succeeded(&o, &got);
    // The memory came from the stage: the 64 MiB region and what is left of the other.
    let moved_mib: u64 = rl
        .lines()
        .find(|l| l.contains("memory: staged mappings moved into place"))
        .and_then(|l| l.split("mib=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no staged memory moved:\n{rl}"));
    assert!(moved_mib >= 64 + 8, "{moved_mib} MiB moved:\n{rl}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["rounds"].as_array().unwrap().len() >= 2, "{r}");
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    s.moved();
    let at = steps(out);
    wait_for("the writer to go on after the move", 20, || steps(out) > at);
    verify(moved, out);
}

/// Every process of the tree is staged, not only the root: a parent and its child, each with
/// memory of its own (the child's mappings differ from the parent's, so it keeps none of them
/// copy-on-write), both writing while the rounds go. Each restored process gets its mappings
/// moved from the stage (two processes say so in receive's log, the child its 32 MiB), and
/// each has every page it wrote.
#[test]
fn a_child_process_moves_with_its_staged_memory() {
    let Some(s) = Source::start("migchild", "migf", 141, 64, true, &["0", "fork"]) else {
        return;
    };
    let (net, dir, out, dest, wd) = (&s.net, &s.dir, &s.out, &s.dest, &s.wd);
    let cout = dir.join("migratee.out.child");
    wait_ready(&cout);
    let rx = Receiver::start(net, port(), dest, wd, &[]);
    wait_for("the writers to go on", 20, || {
        steps(out) > 0 && steps(&cout) > 0
    });
    let o = output_within(&mut s.migrate(&["--json"]), "cryo migrate", CHILD_SECS);
    let got = rx.wait();
    s.both_succeeded(&o, &got);
    let rl = log(wd, "receive.log");
    // Both processes' memory came from the stage: (vpid, MiB moved) per process.
    let moved_of: Vec<(u64, u64)> = rl
        .lines()
        .filter(|l| l.contains("memory: staged mappings moved into place"))
        .filter_map(|l| {
            let field = |k: &str| -> Option<u64> {
                l.split(k).nth(1)?.split_whitespace().next()?.parse().ok()
            };
            Some((field("vpid=")?, field("mib=")?))
        })
        .collect();
    assert_eq!(
        moved_of.len(),
        2,
        "two processes moved staged memory:\n{rl}"
    );
    assert!(
        moved_of.iter().any(|&(_, mib)| mib >= 64)
            && moved_of.iter().any(|&(_, mib)| (32..64).contains(&mib)),
        "the parent's 64 MiB and the child's 32 MiB came from the stage: {moved_of:?}\n{rl}"
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    s.moved();
    let child = *children(moved)
        .first()
        .expect("the restored parent has its child");
    let _g3 = KillOnDrop(child);
    let (at, cat) = (steps(out), steps(&cout));
    wait_for("both writers to go on after the move", 20, || {
        steps(out) > at && steps(&cout) > cat
    });
    verify(moved, out);
    verify(child, &cout);
}

/// `receive --lazy-pages`: the destination's restore leaves the memory to a lazy-pages
/// daemon reading the received images (local), so the tree runs before its pages are in.
/// The daemon outlives receive, brings every page in (the process checks each one it wrote)
/// and only then removes the images receive made (no `-D`): they are there while pages are
/// still missing (its background push held back 3 s), gone afterwards.
#[test]
fn a_lazily_restored_destination_gets_every_page_and_its_images_go_after() {
    let Some(s) = Source::start("migrate-lazy", "migl", 137, 64, true, &[]) else {
        return;
    };
    let (net, root, out, wd) = (&s.net, s.root, &s.out, &s.wd);
    let rx = Receiver::start_with(
        net,
        port(),
        None,
        wd,
        &[("CRYO_FAULT_PAUSE", "lazy-push:3")],
        &["--lazy-pages"],
    );
    let rx_pid = rx.child.as_ref().unwrap().id();
    let images = std::env::temp_dir().join(format!("cryo-receive-{rx_pid}"));
    wait_for("the writer to go on", 20, || steps(out) > 0);
    let o = migrate_to(net, root, wd, &["--json"], &[]);
    let got = rx.wait();
    s.both_succeeded(&o, &got);
    // Where receive put them (so that "removed" below means something), still there.
    assert!(
        images.join("final").join("pstree.img").exists(),
        "the received images are not at {}: {}",
        images.display(),
        log(wd, "receive.log")
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    s.moved();
    assert!(alive(moved));
    assert!(
        log(wd, "receive.log").contains("lazy-pages daemon started"),
        "{}",
        log(wd, "receive.log")
    );
    let at = steps(out);
    wait_for("the writer to go on after the move", 20, || steps(out) > at);
    wait_for("the daemon to bring every page in", 120, || {
        log(wd, "lazy-pages.log").contains("every page is in")
    });
    wait_for("the daemon to remove the received images", 30, || {
        !images.exists()
    });
    // Every page the process wrote, before and during the rounds, is what it reads now.
    verify(moved, out);
}

/// Post-copy (`migrate --lazy-pages`, a receive not asked for it): no pre-copy round; the
/// destination restores at once and its lazy-pages daemon takes the tree's memory from the
/// source (the received images hold none of it), which serves it until the daemon has every
/// page, and only then ends. The process, running in B, has every page it wrote.
#[test]
fn a_post_copy_migration_takes_the_memory_from_the_source_after_the_tree_runs() {
    let Some(s) = Source::start("migrate-post", "migp", 142, 64, true, &[]) else {
        return;
    };
    let (net, root, out, dest, wd) = (&s.net, s.root, &s.out, &s.dest, &s.wd);
    // The daemon's background push waits 2 s: the tree's own touches fetch pages first.
    let rx = Receiver::start(
        net,
        port(),
        dest,
        wd,
        &[("CRYO_FAULT_PAUSE", "lazy-push:2")],
    );
    wait_for("the writer to go on", 20, || steps(out) > 0);
    let o = migrate_to(net, root, wd, &["--lazy-pages", "--json"], &[]);
    let got = rx.wait();
    s.both_succeeded(&o, &got);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["rounds"].as_array().map(Vec::len),
        Some(0),
        "no pre-copy: {r}"
    );
    assert!(r["post_copy_ms"].as_f64().unwrap() > 0.0, "{r}");
    eprintln!("post-copy migration of 64 MiB: {r}");
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    s.moved();
    assert!(alive(moved));
    // migrate ended once the daemon had every page, from the source.
    let ml = log(wd, "migrate.log");
    assert!(ml.contains("the lazy-pages daemon has every page"), "{ml}");
    let ll = log(wd, "lazy-pages.log");
    assert!(ll.contains("every page is in"), "{ll}");
    let rl = log(wd, "receive.log");
    assert!(rl.contains("lazy-pages daemon started"), "{rl}");
    // The final images carried no page of the 64 MiB region: they came through the daemon.
    let pages: u64 = std::fs::read_dir(dest.join("final"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        pages < 32 << 20,
        "{pages} bytes of pages in the final images"
    );
    let at = steps(out);
    wait_for("the writer to go on after the move", 20, || steps(out) > at);
    verify(moved, out);
}

/// Post-copy with the source lost: `cryo migrate` is killed (SIGKILL) while the restored
/// tree still lacks most of its memory (the daemon's push held back). The next page it
/// needs cannot come: the daemon kills it, loudly; it never reads zeros for memory it had
/// (no page check ever ends), and no copy is left in A or B.
#[test]
fn a_source_lost_during_post_copy_takes_the_restored_tree_with_it() {
    let Some(s) = Source::start("migrate-post-lost", "migq", 143, 64, true, &[]) else {
        return;
    };
    let (net, out, dest, wd) = (&s.net, &s.out, &s.dest, &s.wd);
    let rx = Receiver::start(
        net,
        port(),
        dest,
        wd,
        &[("CRYO_FAULT_PAUSE", "lazy-push:600")],
    );
    wait_for("the writer to go on", 20, || steps(out) > 0);
    let mut mig = s.migrate(&["--lazy-pages"]).spawn().unwrap();
    let got = rx.wait();
    assert!(got.status.success(), "{}", log(wd, "receive.log"));
    s.moved();
    let moved = migratees_in(&net.b);
    assert_eq!(moved.len(), 1, "the tree runs in B: {moved:?}");
    let moved = moved[0];
    let _g2 = KillOnDrop(moved);
    let daemon = lazy_daemon_pid(wd);
    let _d = KillOnDrop(daemon);
    assert!(
        mig.try_wait().unwrap().is_none(),
        "migrate still serves the pages"
    );
    // nsenter execs cryo in place: this is cryo migrate itself.
    signal(i32::try_from(mig.id()).unwrap(), libc::SIGKILL);
    let _ = mig.wait_within("cryo migrate", CHILD_SECS);
    // The process reads every page now: it must die, not check zeros (it may have died
    // already, on its next write of a page still at the source).
    // SAFETY: kill with integers.
    unsafe { libc::kill(moved, libc::SIGUSR1) };
    wait_gone(moved);
    let ll = log(wd, "lazy-pages.log");
    assert!(ll.contains("killing the restored tree"), "{ll}");
    assert!(
        !lines(out).iter().any(|l| l.starts_with("verify")),
        "no page check ended on partial memory"
    );
    wait_for("the daemon to end", 30, || !alive(daemon));
    assert_eq!(migratees_in(&net.a), Vec::<i32>::new(), "no copy in A");
    assert_eq!(migratees_in(&net.b), Vec::<i32>::new(), "no copy in B");
}

/// The PID in the `daemon=PID` field of receive's "lazy-pages daemon started" line.
fn lazy_daemon_pid(wd: &Path) -> i32 {
    let l = log(wd, "receive.log");
    l.lines()
        .find(|l| l.contains("lazy-pages daemon started"))
        .and_then(|l| l.split("daemon=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no lazy-pages daemon in receive.log: {l}"))
}

/// `receive --lazy-pages` killed (SIGKILL, no cleanup) after its lazy-pages daemon started
/// with the final round and before any restore connected: the daemon goes with it (it used
/// to wait forever for a restore that would never come), and the source runs on with every
/// page.
#[test]
fn a_lazy_receive_killed_before_the_restore_leaves_no_daemon() {
    let Some(s) = Source::start("migrate-lazy-killed", "migk", 138, 16, true, &[]) else {
        return;
    };
    let (net, wd) = (&s.net, &s.wd);
    let mut rx = Receiver::start_with(
        net,
        port(),
        None,
        wd,
        &[("CRYO_FAULT_PAUSE", "receive-restore:60")],
        &["--lazy-pages"],
    );
    let rx_pid = i32::try_from(rx.child.as_ref().unwrap().id()).unwrap();
    let images = std::env::temp_dir().join(format!("cryo-receive-{rx_pid}"));
    let mig = s.migrate(&[]).spawn().unwrap();
    wait_for("receive to hold the final images", 60, || {
        log(wd, "receive.log").contains("pausing at a fault point")
    });
    let daemon = lazy_daemon_pid(wd);
    let _d = KillOnDrop(daemon);
    assert!(alive(daemon), "the daemon waits for the restore");
    // nsenter execs cryo in place: this is cryo receive itself.
    signal(rx_pid, libc::SIGKILL);
    let _ = rx
        .child
        .take()
        .unwrap()
        .output_within("cryo receive", CHILD_SECS);
    wait_for("the lazy-pages daemon to go with receive", 10, || {
        !alive(daemon)
    });
    let o = mig.output_within("cryo migrate", CHILD_SECS);
    assert!(!o.status.success(), "{}", log(wd, "migrate.log"));
    s.runs_on();
    // SIGKILLed receive could not remove what it received.
    let _ = std::fs::remove_dir_all(&images);
}

/// The destination refuses at the very end: its restore fails (here the tree shares the
/// host's PID namespace, so its PIDs still belong to the frozen source). The source, frozen
/// for the final step, runs on with every page; nothing is left on the destination.
#[test]
fn a_destination_that_cannot_restore_leaves_the_source_running() {
    let Some(s) = Source::start("migrate-refused", "migr", 132, 16, false, &[]) else {
        return;
    };
    let (net, dest, wd) = (&s.net, &s.dest, &s.wd);
    let rx = Receiver::start(net, port(), dest, wd, &[]);
    let o = output_within(&mut s.migrate(&[]), "cryo migrate", CHILD_SECS);
    let got = rx.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("in use"), "the destination's reason: {err}");
    assert!(!got.status.success());
    s.runs_on();
    assert!(!dest.exists(), "nothing left on the destination");
}

/// The destination stops in the middle (SIGTERM while it holds round 2): the source hears
/// why, runs on unharmed (its write tracking removed), and the destination removes what it
/// had received.
#[test]
fn a_destination_stopped_mid_stream_leaves_the_source_running_and_nothing_behind() {
    let Some(s) = Source::start("migrate-stopped", "migs", 133, 16, true, &[]) else {
        return;
    };
    let (net, dest, wd) = (&s.net, &s.dest, &s.wd);
    let mut rx = Receiver::start(
        net,
        port(),
        dest,
        wd,
        &[("CRYO_FAULT_PAUSE", "receive-r2:5")],
    );
    let mig = s.migrate(&[]).spawn().unwrap();
    wait_for("the destination to hold round 2", 30, || {
        log(wd, "receive.log").contains("pausing at a fault point")
    });
    assert!(dest.join("r1").exists(), "round 1 arrived");
    let rx_pid = i32::try_from(rx.child.as_ref().unwrap().id()).unwrap();
    // nsenter execs cryo in place: this is cryo receive itself.
    signal(rx_pid, libc::SIGTERM);
    let o = mig.output_within("cryo migrate", CHILD_SECS);
    let got = rx
        .child
        .take()
        .unwrap()
        .output_within("cryo receive", CHILD_SECS);
    assert!(!o.status.success(), "{}", log(wd, "migrate.log"));
    assert!(!got.status.success());
    s.runs_on();
    assert!(!dest.exists(), "nothing left on the destination");
}

/// `migratee` processes in network namespace `ns` (a copy restored there).
fn migratees_in(ns: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(Net::path(ns)).unwrap().ino();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            // `prog` builds it as cryo-prog-migratee-PID (its comm is cut to 15 bytes).
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| {
                e.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("cryo-prog-migratee-"))
            }) && alive(p)
                && std::fs::metadata(format!("/proc/{p}/ns/net")).is_ok_and(|m| m.ino() == want)
        })
        .collect()
}

/// `cryo migrate` of `root` to the receiver in B, with `extra` arguments and `env`.
fn migrate_to(net: &Net, root: i32, wd: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    output_within(
        migrate_cmd(net, root, wd, extra).envs(env.iter().copied()),
        "cryo migrate",
        CHILD_SECS,
    )
}

/// The `cryo migrate` command of `root` to the receiver in B, with `extra` arguments (its
/// stdout and stderr piped).
fn migrate_cmd(net: &Net, root: i32, wd: &Path, extra: &[&str]) -> Command {
    let to = format!("{}:{}", net.v4(2), port());
    let r = root.to_string();
    let mut args = vec![
        "migrate",
        "-t",
        &r,
        "--to",
        &to,
        "-W",
        wd.to_str().unwrap(),
        "-v4",
        "-o",
        "migrate.log",
    ];
    args.extend_from_slice(extra);
    let mut c = cryo_in(&net.a, &args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// The destination takes longer than `--timeout` to restore (it pauses before): the frozen
/// source does not wait for ever: it runs on unharmed, migrate fails naming the stage, and
/// the destination, hearing that the source gave up, restores nothing and removes what it had.
#[test]
fn a_destination_slower_than_the_timeout_leaves_the_source_running() {
    let Some(s) = Source::start("migrate-timeout", "migt", 134, 16, true, &[]) else {
        return;
    };
    let (net, root, dest, wd) = (&s.net, s.root, &s.dest, &s.wd);
    let rx = Receiver::start(
        net,
        port(),
        dest,
        wd,
        &[("CRYO_FAULT_PAUSE", "receive-restore:8")],
    );
    let o = migrate_to(net, root, wd, &["--timeout", "2"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("the destination's restore") && err.contains("--timeout"),
        "the error names the stage that stalled: {err}"
    );
    s.runs_on();
    let got = rx.wait();
    assert!(!got.status.success(), "{}", log(wd, "receive.log"));
    assert!(
        log(wd, "receive.log").contains("the source gave up"),
        "{}",
        log(wd, "receive.log")
    );
    assert_eq!(migratees_in(&net.b), Vec::<i32>::new(), "no copy in B");
    assert!(!dest.exists(), "nothing left on the destination");
}

/// The commit: the destination has restored the tree and holds it; the source fails just
/// before killing its own (an injected fault at `migrate-commit`). The source runs on, and
/// the destination, without the commit, kills its held copy: never two copies running.
#[test]
fn without_the_commit_the_destination_kills_its_copy() {
    let Some(s) = Source::start("migrate-nocommit", "migc", 135, 16, true, &[]) else {
        return;
    };
    let (net, root, dest, wd) = (&s.net, s.root, &s.dest, &s.wd);
    let rx = Receiver::start(net, port(), dest, wd, &[]);
    let o = migrate_to(
        net,
        root,
        wd,
        &[],
        &[("CRYO_FAULT_INJECT", "migrate-commit")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("migrate-commit"), "{err}");
    let got = rx.wait();
    assert!(!got.status.success());
    let rlog = log(wd, "receive.log");
    assert!(
        rlog.contains("restored, waiting for the commit"),
        "the destination had the tree restored: {rlog}"
    );
    assert!(rlog.contains("the source gave up"), "{rlog}");
    assert_eq!(migratees_in(&net.b), Vec::<i32>::new(), "no copy in B");
    s.runs_on();
    assert!(!dest.exists(), "nothing left on the destination");
}

/// The destination fails after the commit (a fault injected just before its network opens,
/// `netunlock`): the commit came before that point, so the source's tree is already killed;
/// the destination kills its copy. Both sides fail naming the stage: no copy runs anywhere,
/// and not silently. (Were the commit awaited after the network opened, as before, this
/// fault would come before the commit and the source would run on.) The received images,
/// the tree's only copy now, stay (they used to be removed): a restore from them brings the
/// process back with every page it wrote.
#[test]
fn a_destination_failing_after_the_commit_is_reported_by_both_sides() {
    let Some(s) = Source::start("migrate-aftercommit", "miga", 136, 16, true, &[]) else {
        return;
    };
    let (net, root, out, dest, wd) = (&s.net, s.root, &s.out, &s.dest, &s.wd);
    let rx = Receiver::start(net, port(), dest, wd, &[("CRYO_FAULT_INJECT", "netunlock")]);
    let o = migrate_to(net, root, wd, &[], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    let got = rx.wait();
    let rerr = String::from_utf8_lossy(&got.stderr);
    assert!(!o.status.success(), "migrate must fail: {err}");
    assert!(
        err.contains("the tree is lost") && err.contains("netunlock"),
        "the source names the destination's stage: {err}"
    );
    assert!(!got.status.success(), "receive must fail: {rerr}");
    assert!(
        rerr.contains("after the commit") && rerr.contains("netunlock"),
        "{rerr}"
    );
    s.moved();
    assert_eq!(migratees_in(&net.b), Vec::<i32>::new(), "no copy in B");
    assert_eq!(migratees_in(&net.a), Vec::<i32>::new(), "no copy in A");
    let fin = dest.join("final");
    assert!(
        fin.join("pstree.img").exists() && rerr.contains(fin.to_str().unwrap()),
        "the received images stay, and receive says where: {rerr}"
    );
    let again = cryo_in(
        &net.b,
        &[
            "restore",
            "-D",
            fin.to_str().unwrap(),
            "-d",
            "-v4",
            "-o",
            "again.log",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
    .output_within("cryo restore", CHILD_SECS);
    assert!(again.status.success(), "{}", log(&fin, "again.log"));
    let back = migratees_in(&net.b);
    assert_eq!(back.len(), 1, "{back:?}");
    let _g2 = KillOnDrop(back[0]);
    verify(back[0], out);
}

/// `cryo receive` takes no path from the other side: a round named `../victim` is refused,
/// and so is a round whose directory exists already (receive removes only what it made).
#[test]
fn receive_refuses_round_names_that_leave_its_directory() {
    use std::io::Write;
    let dir = scratch("migrate-names");
    for (name, pre) in [("../victim", false), ("r1", true), ("/tmp", false)] {
        let dest = dir.join("dest");
        let victim = dir.join("victim");
        std::fs::create_dir_all(victim.join("keep")).unwrap();
        let _ = std::fs::remove_dir_all(&dest);
        if pre {
            std::fs::create_dir_all(dest.join("r1").join("keep")).unwrap();
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        let rx = Command::new(cryo_bin())
            .args(["receive", "--address", "127.0.0.1", "--port"])
            .arg(p.to_string())
            .arg("-D")
            .arg(&dest)
            .args(["-v4", "-o"])
            .arg(dir.join("receive.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sk = None;
        wait_for("cryo receive to listen", 20, || {
            sk = std::net::TcpStream::connect(("127.0.0.1", p)).ok();
            sk.is_some()
        });
        let mut sk = sk.unwrap();
        let mut msg = |v: serde_json::Value| {
            let b = serde_json::to_vec(&v).unwrap();
            sk.write_all(&u32::try_from(b.len()).unwrap().to_le_bytes())
                .unwrap();
            sk.write_all(&b).unwrap();
        };
        msg(
            serde_json::json!({"hello": {"version": 1, "tcp_established": false, "shell_job": false}}),
        );
        msg(serde_json::json!({"round": {"name": name}}));
        let o = rx.output_within("cryo receive", CHILD_SECS);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: {err}");
        assert!(
            err.contains("round name") || err.contains("exists already"),
            "{name}: {err}"
        );
        assert!(victim.join("keep").exists(), "{name}: the sibling is kept");
        if pre {
            assert!(
                dest.join("r1").join("keep").exists(),
                "what receive did not make is kept"
            );
        }
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `ip ARGS` run in the network namespace of process `pid`: its output.
fn ip_of(pid: i32, args: &[&str]) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("ip")
        .args(args)
        .output()
        .expect("nsenter ip");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A named network namespace, its name removed on drop (if still there).
struct NamedNs(String);

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A TCP echo server with live clients moves to another host. The server runs in a network
/// namespace of its own, S (the tree owns it: saved and rebuilt with its veth, address and
/// default route), with a veth to host A (10.239.0.2/24 in S, gateway 10.239.0.1 on A's
/// end); its clients run on A and keep streaming through 10 connections (one playing
/// ping-pong). A's route to the server's subnet goes through that veth, and, at a higher
/// metric, through host B (10.139.0.2): what a network does when an address moves (the
/// clients' source address is A's own, 10.139.0.1, which stays reachable from B). B has a
/// bridge holding the same gateway address and forwards. `cryo migrate --tcp-established`
/// from A to `cryo receive --external veth[eth0]:OUT@BRIDGE` in B: the server's namespace is
/// rebuilt on B with its veth's peer put in B's bridge; the source (and with it S and A's
/// veth) goes, so A's packets take the route through B. The clients' connections go on:
/// every byte comes back once, in order, without an error; the downtime is printed. The server
/// holds 64 MiB of written memory and keeps rewriting it: each page arrives as last written.
#[test]
fn a_tcp_server_moves_with_its_live_clients_connections() {
    if !need(&["ip", "nsenter", "unshare", "setsid"]) {
        return;
    }
    let dir = scratch("migrate-tcp");
    let net = Net::new("mtcp", 139);
    let id = std::process::id() % 100000;
    let s = NamedNs(format!("cryo-mtcp-s-{id}"));
    let (a_end, out_end, br) = (
        format!("cm139a{id}"),
        format!("cm139o{id}"),
        format!("cm139b{id}"),
    );
    let _ = Command::new("ip").args(["netns", "del", &s.0]).output();
    ip(&["netns", "add", &s.0]);
    ip(&["-n", &s.0, "link", "set", "lo", "up"]);
    ip(&[
        "link", "add", &a_end, "netns", &net.a, "type", "veth", "peer", "name", "eth0", "netns",
        &s.0,
    ]);
    ip(&["-n", &s.0, "addr", "add", "10.239.0.2/24", "dev", "eth0"]);
    ip(&["-n", &s.0, "link", "set", "eth0", "up"]);
    ip(&["-n", &s.0, "route", "add", "default", "via", "10.239.0.1"]);
    ip(&["-n", &net.a, "addr", "add", "10.239.0.1/32", "dev", &a_end]);
    ip(&["-n", &net.a, "link", "set", &a_end, "up"]);
    let src = net.v4(1);
    ip(&[
        "-n",
        &net.a,
        "route",
        "add",
        "10.239.0.0/24",
        "dev",
        &a_end,
        "src",
        &src,
    ]);
    ip(&[
        "-n",
        &net.a,
        "route",
        "add",
        "10.239.0.0/24",
        "via",
        &net.v4(2),
        "src",
        &src,
        "metric",
        "100",
    ]);
    ip(&["-n", &net.b, "link", "add", &br, "type", "bridge"]);
    ip(&["-n", &net.b, "addr", "add", "10.239.0.1/24", "dev", &br]);
    ip(&["-n", &net.b, "link", "set", &br, "up"]);
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.b,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The server, the root of a PID namespace of its own (its PIDs are restored as they
    // were while the frozen source still holds them), in S.
    let srv_out = dir.join("srv.out");
    let echosrv = prog("echosrv");
    let launcher = Net::spawn_in(
        &s.0,
        &[
            "unshare",
            "--pid",
            "--fork",
            "setsid",
            echosrv.to_str().unwrap(),
            "10.239.0.2",
            "7300",
            srv_out.to_str().unwrap(),
            "2048",
            "1000",
            "65536",
            "64",
        ],
        &dir.join("srv.log"),
    );
    let _g = KillOnDrop(launcher);
    wait_ready(&srv_out);
    let root = children(launcher)[0];
    // Only the server holds S now: it goes with the source.
    ip(&["netns", "del", &s.0]);

    let cli_out = dir.join("cli.out");
    let echocli = prog("echocli");
    let cli = Net::spawn_in(
        &net.a,
        &[
            echocli.to_str().unwrap(),
            "10.239.0.2",
            "7300",
            "10",
            cli_out.to_str().unwrap(),
            "1048576",
            "2048",
            "16384",
            "2000",
        ],
        &dir.join("cli.log"),
    );
    let _gc = KillOnDrop(cli);
    wait_ready(&cli_out);
    wait_progress(&cli_out, 2 << 20);

    let dest = dir.join("dest");
    let wd = dir.join("work");
    let veth = format!("veth[eth0]:{out_end}@{br}");
    let rx = Receiver::start_with(&net, port(), Some(&dest), &wd, &[], &["--external", &veth]);
    let o = migrate_to(&net, root, &wd, &["--tcp-established", "--json"], &[]);
    let got = rx.wait();
    assert!(
        o.status.success(),
        "migrate: {}\n{}\nreceive: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        log(&wd, "migrate.log"),
        String::from_utf8_lossy(&got.stderr),
        log(&wd, "receive.log")
    );
    assert!(got.status.success(), "{}", log(&wd, "receive.log"));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let down = r["downtime_ms"].as_f64().unwrap();
    assert!(down > 0.0, "{r}");
    eprintln!("TCP server with 10 live connections migrated: downtime {down:.1} ms ({r})");
    let moved = i32::try_from(r["restored_pid"].as_i64().unwrap()).unwrap();
    let _g2 = KillOnDrop(moved);
    wait_gone(root);
    assert!(alive(moved));

    // The server's namespace was rebuilt (its address on eth0), its veth's peer is in B's
    // bridge, and A now reaches the server through B only.
    assert!(
        ip_of(moved, &["-4", "addr", "show", "eth0"]).contains("10.239.0.2/24"),
        "{}",
        ip_of(moved, &["addr"])
    );
    let b_link = Command::new("ip")
        .args(["-n", &net.b, "link", "show", &out_end])
        .output()
        .unwrap();
    let b_link = String::from_utf8_lossy(&b_link.stdout);
    assert!(b_link.contains(&format!("master {br}")), "{b_link}");
    // (S, and A's end of its veth, go once the kernel has cleaned the namespace up.)
    let via_b = format!("via {}", net.v4(2));
    wait_for("A's route to the server to go through B", 20, || {
        let o = Command::new("ip")
            .args(["-n", &net.a, "route", "get", "10.239.0.2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains(&via_b)
    });

    // The connections go on through B, and every byte came back once, in order.
    wait_progress(&cli_out, 4 << 20);
    let done = finish_clients(cli, &cli_out);
    assert!(done.contains("conns=10"), "{done}");
    // And the server's 64 MiB (one page rewritten per turn, before, during and after the
    // pre-copy rounds) came over as it last wrote each page.
    verify(moved, &srv_out);
}
