//! Incremental dumps: `cryo pre-dump` chains and `dump --prev-images-dir --track-mem`, with
//! the write tracking this kernel offers (uffd-wp: userfaultfd async write protection read
//! with PAGEMAP_SCAN), and the `full` fallback. Real processes writing to their memory while
//! they are pre-dumped; checksums compared after restore; what the program sees, checked by
//! the program itself; what is left behind once the chain ends or fails.

use std::path::{Path, PathBuf};

use integration::*;

/// Starts `dirtier MIB OUT DELAY_US` (a heap of MIB MiB, a thread rewriting a page every
/// DELAY_US microseconds).
fn start_dirtier(dir: &Path, mib: u32, delay_us: u32) -> (i32, PathBuf) {
    let out = dir.join("dirtier.out");
    let exe = prog("dirtier");
    let pid = spawn(
        &[
            exe.to_str().unwrap(),
            &mib.to_string(),
            out.to_str().unwrap(),
            &delay_us.to_string(),
        ],
        &dir.join("dirtier.log"),
    );
    wait_for("dirtier ready", 60, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    (pid, out)
}

/// Stops the dirtier's writer thread (SIGUSR2) and waits until it says so.
fn stop_writer(pid: i32, out: &Path) {
    signal(pid, libc::SIGUSR2);
    wait_for("the writer to stop", 30, || {
        lines(out).iter().any(|l| l == "stopped")
    });
}

/// `cryo pre-dump -t PID -D DIR [--prev-images-dir PREV]` plus `extra`; panics on failure.
fn pre_dump(pid: i32, dir: &Path, prev: Option<&str>, env: &[(&str, &str)]) {
    let d = dir.to_str().unwrap();
    let p = pid.to_string();
    let mut a = vec!["pre-dump", "-t", &p, "-D", d, "-v4", "-o", "dump.log"];
    if let Some(prev) = prev {
        a.extend(["--prev-images-dir", prev, "--track-mem"]);
    }
    let out = cryo_env(&a, env);
    assert!(
        out.status.success(),
        "pre-dump failed:\n{}",
        log(dir, "dump.log")
    );
}

/// (pages in this step's image, pages left in the parent) from its pagemap.
fn pagemap_pages(dir: &Path, pid: i32) -> (u64, u64) {
    let o = cryo(&[
        "show",
        dir.join(format!("pagemap-{pid}.img")).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "cryo show pagemap");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (mut here, mut parent) = (0, 0);
    for e in v["entries"].as_array().unwrap().iter().skip(1) {
        let n = e["nr_pages"].as_u64().unwrap_or(0);
        let flags = e["flags"].as_u64().unwrap_or(4);
        if flags & 1 != 0 {
            parent += n;
        } else if flags & 4 != 0 {
            here += n;
        }
    }
    (here, parent)
}

/// The holder process a step's record names, if it is alive.
fn holder(dir: &Path) -> Option<i32> {
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cryo-memtrack.json")).ok()?).ok()?;
    let pid = i32::try_from(rec["holder"]["pid"].as_i64()?).ok()?;
    alive(pid).then_some(pid)
}

/// VMAs of `pid` that carry cryo's write protection (smaps VmFlags `uw`).
fn tracked_vmas(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw"))
        .count()
}

/// Runs the chain: 3 pre-dumps while the heap is being written, then the final dump. Returns
/// (images dirs, checksum at the dump).
fn chain(dir: &Path, pid: i32, out: &Path, env: &[(&str, &str)]) -> (Vec<PathBuf>, String) {
    let mut dirs = Vec::new();
    for i in 1..=3 {
        let d = dir.join(format!("p{i}"));
        let prev = (i > 1).then(|| format!("../p{}", i - 1));
        pre_dump(pid, &d, prev.as_deref(), env);
        eprintln!("pre-dump {i}: {:?}", pagemap_pages(&d, pid));
        dirs.push(d);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    stop_writer(pid, out);
    let sum = memhog_sum(pid, out);
    let fin = dir.join("final");
    let d = fin.to_str().unwrap();
    let p = pid.to_string();
    let o = cryo_env(
        &[
            "dump",
            "-t",
            &p,
            "-D",
            d,
            "-v4",
            "-o",
            "dump.log",
            "--prev-images-dir",
            "../p3",
            "--track-mem",
        ],
        env,
    );
    assert!(o.status.success(), "final dump:\n{}", log(&fin, "dump.log"));
    wait_gone(pid);
    dirs.push(fin);
    (dirs, sum)
}

/// A 64 MiB heap written by a thread throughout: 3 pre-dumps and a final dump; the final
/// step holds only the pages written since the third, the rest is read through the chain,
/// and the restored heap has the checksum it had at the dump. No holder is left.
#[test]
fn pre_dump_chain_restores_a_process_writing_its_heap() {
    let dir = scratch("predump-chain");
    let (pid, out) = start_dirtier(&dir, 64, 200);
    let _g = KillOnDrop(pid);
    let (dirs, sum) = chain(&dir, pid, &out, &[]);
    let log1 = log(&dirs[0], "dump.log");
    assert!(log1.contains("uffd-wp"), "the method is named:\n{log1}");
    let (first, _) = pagemap_pages(&dirs[0], pid);
    assert!(
        first >= 64 * 256,
        "the first step saves the whole heap ({first} pages)"
    );
    let (here, parent) = pagemap_pages(&dirs[1], pid);
    assert!(
        parent > here,
        "the second step takes most pages from the first ({here} here, {parent} in the parent)"
    );
    let (here, parent) = pagemap_pages(&dirs[3], pid);
    assert!(
        here < 64 * 256 / 4 && parent >= 64 * 256 * 3 / 4,
        "the final dump saves only what was written since the third pre-dump ({here} here, {parent} in the parent)"
    );
    assert_eq!(
        std::fs::read_link(dirs[3].join("parent")).unwrap(),
        Path::new("../p3")
    );
    for d in &dirs[..3] {
        assert_eq!(
            holder(d),
            None,
            "the tracking holder of {} is gone",
            d.display()
        );
    }
    restore(&dirs[3]);
    assert_eq!(memhog_sum(pid, &out), sum, "the heap after restore");
    // A pre-dump's stats name the shared-memory page counts (none: shared memory is not
    // pre-dumped), which zdtm's `--pre` runs read (check_pages_counts: shpages_written).
    let o = cryo(&["show", dirs[0].join("stats-dump").to_str().unwrap()]);
    assert!(o.status.success(), "cryo show stats-dump");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dump = &v["entries"][0]["dump"];
    assert_eq!(dump["shpages_written"], 0, "{v}");
    assert!(dump["pages_written"].as_u64().unwrap_or(0) > 0, "{v}");
    // `cryo show` reads every step.
    for d in &dirs {
        for f in ["inventory.img", &format!("pagemap-{pid}.img")] {
            assert!(cryo(&["show", d.join(f).to_str().unwrap()])
                .status
                .success());
        }
    }
}

/// Without write tracking (`full`, what a kernel with neither uffd-wp nor soft-dirty gets) a
/// chain is still a chain: every step saves every page, and it restores.
#[test]
fn pre_dump_chain_without_tracking_saves_everything() {
    let dir = scratch("predump-full");
    let (pid, out) = start_dirtier(&dir, 16, 500);
    let _g = KillOnDrop(pid);
    let env = [("CRYO_MEM_TRACK", "full")];
    let (dirs, sum) = chain(&dir, pid, &out, &env);
    assert!(log(&dirs[0], "dump.log").contains("full"));
    let (here, parent) = pagemap_pages(&dirs[3], pid);
    assert!(
        here >= 16 * 256 && parent == 0,
        "{here} here, {parent} in the parent"
    );
    restore(&dirs[3]);
    assert_eq!(memhog_sum(pid, &out), sum);
}

/// The tracking changes nothing the program sees: its own userfaultfd (a range registered
/// before, one registered after the pre-dumps), mprotect, fork and MAP_SHARED memory keep
/// working between and after the steps. When the process exits the holder goes too.
#[test]
fn tracking_leaves_the_program_alone() {
    let dir = scratch("predump-invisible");
    let out = dir.join("uffdself.out");
    let exe = prog("uffdself");
    let pid = spawn(
        &[exe.to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("uffdself.log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("uffdself ready", 20, || {
        lines(&out).iter().any(|l| l == "ready")
    });
    let check = |n: usize| {
        signal(pid, libc::SIGUSR1);
        wait_for("the program's checks", 20, || {
            lines(&out)
                .iter()
                .any(|l| l.starts_with("fail") || l == &format!("ok {n}"))
        });
        let l = lines(&out);
        assert!(!l.iter().any(|l| l.starts_with("fail")), "{l:?}");
    };
    pre_dump(pid, &dir.join("p1"), None, &[]);
    assert!(tracked_vmas(pid) > 0, "tracking armed");
    check(2);
    pre_dump(pid, &dir.join("p2"), Some("../p1"), &[]);
    check(3);
    check(4);
    let h = holder(&dir.join("p2")).expect("the holder of the last step runs");
    kill(pid);
    wait_for("the holder to exit with the process", 20, || !alive(h));
}

/// A step that fails removes the tracking: no protection is left in the process and no
/// holder runs (the previous step's holder is stopped too); the process runs on unharmed.
#[test]
fn failed_step_removes_the_tracking() {
    let dir = scratch("predump-fail");
    let (pid, out) = start_dirtier(&dir, 8, 1000);
    let _g = KillOnDrop(pid);
    pre_dump(pid, &dir.join("p1"), None, &[]);
    let h1 = holder(&dir.join("p1")).expect("holder of step 1");
    assert!(tracked_vmas(pid) > 0);
    let d2 = dir.join("p2");
    let p = pid.to_string();
    for stage in ["seize", "memory", "write"] {
        let o = cryo_env(
            &[
                "pre-dump",
                "-t",
                &p,
                "-D",
                d2.to_str().unwrap(),
                "--prev-images-dir",
                "../p1",
                "-v4",
                "-o",
                "dump.log",
            ],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "fault at {stage}");
    }
    wait_for("the holder to be stopped", 10, || !alive(h1));
    wait_for("the protection to go", 10, || tracked_vmas(pid) == 0);
    assert!(alive(pid));
    // A previous directory that is not one: refused, and no `parent` link is left behind.
    let d3 = dir.join("p3");
    let o = cryo(&[
        "pre-dump",
        "-t",
        &p,
        "-D",
        d3.to_str().unwrap(),
        "--prev-images-dir",
        "../nothing-here",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an images directory"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::symlink_metadata(d3.join("parent")).is_err());
    stop_writer(pid, &out);
    let a = memhog_sum(pid, &out);
    assert_eq!(a, memhog_sum(pid, &out));
}

/// CRIU 4.2 (`$CRIU`, or /opt/criu42/criu) restores cryo's chain (3 pre-dumps and the final
/// dump, pages read through the `parent` links). CRIU itself cannot pre-dump on this kernel
/// (it needs soft-dirty), so only this direction exists. Ignored unless CRIU is there
/// (`integration/test.sh` runs it then).
#[test]
#[ignore = "needs CRIU 4.2 built from source ($CRIU or /opt/criu42/criu)"]
fn criu_restores_cryos_chain() {
    let criu = criu42();
    let dir = scratch("predump-criu");
    let (pid, out) = start_dirtier(&dir, 32, 300);
    let _g = KillOnDrop(pid);
    let (dirs, sum) = chain(&dir, pid, &out, &[]);
    let fin = &dirs[3];
    restore_with_tool(&criu, fin, &[]);
    assert_eq!(memhog_sum(pid, &out), sum);
}

/// The chain record (`cryo-memtrack.json`) comes from an images directory, which may be
/// hostile: a record naming another process as its holder must neither get that process
/// killed nor have fds taken from it. The next step saves every page instead.
#[test]
fn a_forged_holder_in_the_record_is_left_alone() {
    let dir = scratch("predump-forged");
    let (pid, _out) = start_dirtier(&dir, 8, 1000);
    let _g = KillOnDrop(pid);
    let victim = spawn(&["sleep", "600"], &dir.join("victim.log"));
    let _v = KillOnDrop(victim);
    pre_dump(pid, &dir.join("p1"), None, &[]);
    let real = holder(&dir.join("p1")).expect("holder of step 1");
    // Point the record at the victim: its pid and start time, and its fd 1 as "the uffd".
    let stat = std::fs::read_to_string(format!("/proc/{victim}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let rec_path = dir.join("p1").join("cryo-memtrack.json");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    rec["holder"] = serde_json::json!({ "pid": victim, "start": start });
    for t in rec["tasks"].as_array_mut().unwrap() {
        t["fd"] = serde_json::json!(1);
    }
    std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    pre_dump(pid, &dir.join("p2"), Some("../p1"), &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        alive(victim),
        "cryo killed the process a forged record named"
    );
    let (here, _) = pagemap_pages(&dir.join("p2"), pid);
    assert!(
        here >= 8 * 256,
        "without the parent's tracking every page is saved ({here} pages)"
    );
    kill(real);
}
