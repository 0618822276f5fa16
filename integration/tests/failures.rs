//! The failure model (issue #2 §6): a dump that fails at any stage leaves the target running
//! with identical memory; a restore that fails leaves no process behind; damaged images are
//! refused before anything is created; unsupported fds are refused with fd, type and path.

use std::path::Path;
use std::process::{Command, Stdio};

use integration::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn failed_dump_at_any_stage_leaves_target_running_unchanged() {
    let dir = scratch("dumpfault");
    let (pid, out) = start_memhog(&dir, 16);
    let _guard = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let regs_before = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let maps = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for stage in ["seize", "collect", "parasite", "memory", "write"] {
        let img = dir.join(format!("img-{stage}"));
        let maps_before = maps();
        let o = cryo_env(
            &["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "stage {stage}: dump should fail");
        assert!(
            stderr(&o).contains(stage),
            "stage {stage}: error should name it: {}",
            stderr(&o)
        );
        assert!(alive(pid), "stage {stage}: target died");
        // Nothing of cryo's is left mapped (the scratch area a dump that kills the tree
        // keeps until the kill is unmapped when the dump fails after the cure).
        assert_eq!(maps(), maps_before, "stage {stage}: mappings changed");
        assert_eq!(memhog_sum(pid, &out), sum, "stage {stage}: memory changed");
        // memhog blocks SIGUSR1 while it answers: read its state once it waits again.
        let line = |s: &str, key: &str| {
            s.lines()
                .find(|l| l.starts_with(key))
                .unwrap_or("")
                .to_string()
        };
        let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let settled = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while line(&status(), "SigBlk") != line(&regs_before, "SigBlk")
            && std::time::Instant::now() < settled
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let st = status();
        for key in ["SigBlk", "SigCgt", "TracerPid"] {
            let line = |s: &str| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .unwrap_or("")
                    .to_string()
            };
            if key == "TracerPid" {
                assert_eq!(line(&st), "TracerPid:\t0", "stage {stage}: still traced");
            } else {
                assert_eq!(
                    line(&st),
                    line(&regs_before),
                    "stage {stage}: {key} changed"
                );
            }
        }
    }
    // After all that, a real dump and restore still work.
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    assert_eq!(memhog_sum(pid, &out), sum);
    kill(pid);
}

#[test]
fn failed_restore_at_any_stage_leaves_nothing_behind() {
    let dir = scratch("rstfault");
    let (pid, out) = start_memhog(&dir, 16);
    let _guard = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    for stage in [
        "verify", "fork", "memory", "files", "task", "creds", "finish",
    ] {
        let o = cryo_env(
            &["restore", "-D", img.to_str().unwrap(), "-d"],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "stage {stage}: restore should fail");
        wait_gone(pid); // reaps a killed puppet, if any; panics if a process stays
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "stage {stage}: left a process"
        );
    }
    restore(&img);
    assert_eq!(memhog_sum(pid, &out), sum);
    kill(pid);
}

#[test]
fn corrupt_images_are_refused_before_anything_starts() {
    let (img, pid) = dumped_sleep("corrupt", &[]);
    // Bit flip in the page data.
    let pages = img.join("pages-1.img");
    let orig = std::fs::read(&pages).unwrap();
    let mut bad = orig.clone();
    bad[orig.len() / 2] ^= 0x10;
    std::fs::write(&pages, &bad).unwrap();
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("pages-1.img") && stderr(&o).contains("changed"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(&pages, &orig).unwrap();
    // Truncated core image.
    let core = img.join(format!("core-{pid}.img"));
    let c = std::fs::read(&core).unwrap();
    std::fs::write(&core, &c[..c.len() - 10]).unwrap();
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("core-{pid}.img")) && stderr(&o).contains("size"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // Without the manifest, the framing check still names the file and the offset.
    // (`cpuinfo dump` alone writes none.)
    let _ = std::fs::remove_file(img.join("cryo-manifest.json"));
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("core-{pid}.img")) && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(&core, &c).unwrap();
    restore(&img);
    kill(pid);
}

#[test]
fn unsupported_fd_is_refused_and_target_keeps_running() {
    let dir = scratch("uffd");
    // A python3 holding a userfaultfd (not supported: CRIU refuses it too).
    let log = dir.join("py.log");
    let pid = spawn(
        &[
            "python3",
            "-c",
            "import ctypes,time; fd=ctypes.CDLL(None, use_errno=True).syscall(323, 0); print(fd, flush=True); time.sleep(1000)",
        ],
        &log,
    );
    let _guard = KillOnDrop(pid);
    wait_for("python to open its userfaultfd", 20, || {
        !lines(&log).is_empty()
    });
    let fd = lines(&log)[0].clone();
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(
        e.contains(&format!("fd {fd} (anon_inode:[userfaultfd])"))
            && e.contains("userfaultfd is not supported")
            && e.contains("hint:"),
        "{e}"
    );
    assert!(alive(pid));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .split_whitespace()
            .nth(2),
        Some("S"),
        "the target should be left running (sleeping), not stopped or traced"
    );
}

#[test]
fn busy_pid_and_missing_process_give_clear_errors() {
    let o = cryo(&["dump", "-t", "999999", "-D", "/tmp/cryo-none"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("process 999999 does not exist"),
        "{}",
        stderr(&o)
    );
    let o = cryo(&["restore", "-D", "/nonexistent/dir", "-d"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/dir"), "{}", stderr(&o));
}

#[test]
fn dump_interrupted_by_sigterm_releases_the_target_unharmed() {
    let dir = scratch("sigterm");
    let (pid, out) = start_memhog(&dir, 512);
    let _guard = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let img = dir.join("img");
    let c = Command::new(cryo_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(40));
    signal(integration::pid_of(&c), libc::SIGTERM);
    let o = c.wait_with_output().unwrap();
    let e = stderr(&o);
    assert!(
        !o.status.success(),
        "dump finished before the signal; make the workload bigger"
    );
    assert!(e.contains("interrupted by signal 15"), "{e}");
    assert!(alive(pid));
    assert_eq!(memhog_sum(pid, &out), sum);
}

/// Failures around the newer kinds harm nothing either: a dump of the unix-socket program
/// that fails after its sockets were read (queues peeked, peek offsets set back) leaves
/// every queue intact for the program; a restore of a deleted-file program that fails late
/// leaves no process and no recreated file behind.
#[test]
fn failures_with_sockets_and_ghost_files_harm_nothing() {
    let dir = scratch("kindfault");
    let out = dir.join("out");
    let script = root().join("integration/scripts/unix_sockets.py");
    let pid = spawn(
        &["python3", script.to_str().unwrap(), dir.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    for stage in ["memory", "write"] {
        let o = cryo_env(
            &[
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                dir.join(format!("img-{stage}")).to_str().unwrap(),
            ],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success() && alive(pid), "stage {stage}");
    }
    signal(pid, libc::SIGUSR1);
    wait_for("the program's reads", 10, || {
        lines(&out).iter().any(|l| l.starts_with("named"))
    });
    assert_eq!(
        &lines(&out)[1..6],
        [
            "stream True b'to-a'",
            "dgram b'one' b'two' b'three'",
            "seqpacket b'pkt1' b'pkt2'",
            "accepted b'hello server' True",
            "pending b'late'",
        ],
        "a failed dump changed what the program reads from its sockets"
    );

    let gdir = scratch("ghostfault");
    let gout = gdir.join("out");
    let ghost = r#"
import os, signal, sys
p = sys.argv[1] + "/data.bin"
with open(p, "wb") as f: f.write(b"x" * 1000)
f = open(p, "rb")
os.unlink(p)
print("ready", flush=True)
signal.pause()
"#;
    let gpid = spawn(&["python3", "-c", ghost, gdir.to_str().unwrap()], &gout);
    let _g2 = KillOnDrop(gpid);
    wait_ready(&gout);
    let img = gdir.join("img");
    dump(gpid, &img, &[]);
    wait_gone(gpid);
    for stage in ["files", "finish"] {
        let o = cryo_env(
            &["restore", "-D", img.to_str().unwrap(), "-d"],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "stage {stage}");
        wait_gone(gpid);
        let left: Vec<String> = std::fs::read_dir(&gdir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("data") || n.contains("ghost"))
            .collect();
        assert!(left.is_empty(), "stage {stage}: left on disk: {left:?}");
    }
}

/// A process in namespaces of its own that cryo cannot restore yet (here a user namespace
/// without a PID namespace of its own) is refused before it is touched, naming the namespace.
#[test]
fn foreign_namespaces_are_refused() {
    let dir = scratch("foreignns");
    let pid = spawn(&["unshare", "-U", "sleep", "1000"], &dir.join("log"));
    let _g = KillOnDrop(pid);
    wait_for("sleep in its namespace", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(e.contains("user namespace"), "{e}");
    assert!(e.contains("PID namespace of its own"), "{e}");
    assert!(alive(pid));
}

/// The CPU features in cpuinfo.img that this test can claim a source CPU had: instruction
/// sets rare enough that one of them is missing on any CPU (word, bit, name as cryo says it).
const RARE_FEATURES: &[(usize, u32, &str)] = &[
    (9, 26, "avx512pf"),
    (18, 2, "avx512_4vnniw"),
    (6, 16, "fma4"),
    (6, 11, "xop"),
    (9, 16, "avx512f"),
];

/// Rewrites the one entry of image `path` with `f`.
fn rewrite_one<M: prost::Message + Default>(path: &Path, f: impl FnOnce(&mut M)) {
    let bytes = std::fs::read(path).unwrap();
    let len = u32::from_ne_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let mut e = M::decode(&bytes[12..12 + len]).unwrap();
    f(&mut e);
    let mut out = bytes[..8].to_vec();
    let msg = e.encode_to_vec();
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_ne_bytes());
    out.extend_from_slice(&msg);
    std::fs::write(path, out).unwrap();
}

/// Rewrites `img`/cpuinfo.img as if dumped on a CPU with one instruction set, one XSAVE
/// component and a larger XSAVE frame than this one; returns the instruction set's name.
fn forge_richer_cpu(img: &Path) -> &'static str {
    let mut feature = "";
    rewrite_one(
        &img.join("cpuinfo.img"),
        |e: &mut cryo::image::pb::CpuinfoEntry| {
            feature = richer(e);
        },
    );
    // The manifest would (rightly) call the edited image damaged: this stands for a dump
    // made elsewhere, whose images are not verified. (`cpuinfo dump` alone writes none.)
    let _ = std::fs::remove_file(img.join("cryo-manifest.json"));
    feature
}

fn richer(e: &mut cryo::image::pb::CpuinfoEntry) -> &'static str {
    let x = &mut e.x86_entry[0];
    let &(w, b, name) = RARE_FEATURES
        .iter()
        .find(|(w, b, _)| x.capability[*w] & (1 << b) == 0)
        .expect("this CPU has every rare feature");
    x.capability[w] |= 1 << b;
    let mask = x.xfeatures_mask.unwrap();
    // PKRU (9), or the AVX-512 opmask (5) where this CPU has PKRU.
    let extra = if mask & (1 << 9) == 0 { 1 << 9 } else { 1 << 5 };
    x.xfeatures_mask = Some(mask | extra);
    x.xsave_size = Some(x.xsave_size.unwrap() + 64);
    name
}

/// A process whose saved registers hold XSAVE state this CPU has not enabled (dumped on a
/// CPU with AVX-512, say, by code that used it) is refused before anything is created, with
/// or without `--cpu-cap`: restored, it would die of SIGILL.
#[test]
fn registers_this_cpu_cannot_hold_are_refused_before_anything_starts() {
    let (img, pid) = dumped_sleep("xstate", &[]);
    // A component this CPU lacks: MPX (gone from current CPUs), else AMX, else AVX-512.
    let xcr0 = {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let has = |f: &str| {
            flags
                .lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == f))
        };
        [(3u32, "mpx"), (17, "amx_tile"), (5, "avx512f")]
            .into_iter()
            .find(|(_, f)| !has(f))
            .expect("this CPU has MPX, AMX and AVX-512")
    };
    let core = img.join(format!("core-{pid}.img"));
    rewrite_one(&core, |c: &mut cryo::image::pb::CoreEntry| {
        let fp = &mut c.thread_info.as_mut().unwrap().fpregs;
        if let Some(x) = fp.xsave.as_mut() {
            x.xstate_bv |= 1 << xcr0.0;
        }
        if let Some(r) = fp.cryo_xsave_raw.as_mut() {
            r.resize(r.len().max(520), 0);
            r[512 + (xcr0.0 / 8) as usize] |= 1 << (xcr0.0 % 8);
        }
    });
    let _ = std::fs::remove_file(img.join("cryo-manifest.json"));
    let o = cryo(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    let e = stderr(&o);
    assert!(
        !o.status.success(),
        "restored registers this CPU cannot hold"
    );
    assert!(e.contains("XSAVE state") && e.contains("SIGILL"), "{e}");
    assert!(!alive(pid), "the refused restore created process {pid}");
}

#[test]
fn a_cpu_that_lacks_what_the_dump_recorded_is_refused_before_anything_starts() {
    let (img, pid) = dumped_sleep("cpucap", &["--cpu-cap"]);
    assert!(
        img.join("cpuinfo.img").exists(),
        "--cpu-cap wrote no cpuinfo.img"
    );
    let d = img.to_str().unwrap();
    // The same CPU can run it: `check --cpu-cap` and `cpuinfo check` say so.
    for args in [
        &["check", "--cpu-cap", "-D", d][..],
        &["cpuinfo", "check", "-D", d][..],
    ] {
        let o = cryo(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("can run"));
    }
    // A copy of the images as if dumped on a richer CPU.
    let forged = img.parent().unwrap().join("img-richer");
    std::fs::create_dir_all(&forged).unwrap();
    for e in std::fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), forged.join(e.file_name())).unwrap();
    }
    let feature = forge_richer_cpu(&forged);
    let f = forged.to_str().unwrap();
    let o = cryo(&["cpuinfo", "check", "-D", f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(feature) && e.contains("XSAVE"),
        "the missing features are not named: {e}"
    );
    // Restore with --cpu-cap refuses it, naming them, and creates nothing.
    let o = cryo(&["restore", "-D", f, "-d", "--cpu-cap"]);
    assert!(!o.status.success(), "a restore on a lesser CPU went ahead");
    let e = stderr(&o);
    assert!(e.contains(feature) && e.contains("--cpu-cap=none"), "{e}");
    assert!(!alive(pid), "the refused restore created process {pid}");
    // Only the FPU checked (`^ins`): the instruction set is the user's business, the XSAVE
    // state still is not.
    let o = cryo(&["restore", "-D", f, "-d", "--cpu-cap=^ins"]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && !e.contains(feature) && e.contains("XSAVE"),
        "{e}"
    );
    assert!(!alive(pid));
    // The real images restore with the check on.
    let o = cryo(&["restore", "-D", d, "-d", "--cpu-cap"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _g = KillOnDrop(pid);
    assert!(alive(pid));
}

/// cryo records this CPU exactly as CRIU 4.2 does (the same bytes), and each accepts the
/// other's record. Ignored unless CRIU is there.
#[test]
#[ignore = "needs CRIU 4.2 built from source ($CRIU or /opt/criu42/criu)"]
fn criu_and_cryo_write_the_same_cpuinfo_and_check_each_others() {
    let criu = std::env::var("CRIU").unwrap_or_else(|_| "/opt/criu42/criu".into());
    assert!(
        Path::new(&criu).exists(),
        "CRIU 4.2 is not at {criu} (set CRIU=)"
    );
    let dir = scratch("cpuinfo-interop");
    let (a, b) = (dir.join("cryo"), dir.join("criu"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    ok(
        &cryo(&["cpuinfo", "dump", "-D", a.to_str().unwrap()]),
        "cryo cpuinfo dump",
    );
    let run = |args: &[&str]| Command::new(&criu).args(args).output().unwrap();
    ok(
        &run(&["cpuinfo", "dump", "-D", b.to_str().unwrap()]),
        "criu cpuinfo dump",
    );
    assert_eq!(
        std::fs::read(a.join("cpuinfo.img")).unwrap(),
        std::fs::read(b.join("cpuinfo.img")).unwrap(),
        "cryo's cpuinfo.img differs from CRIU's"
    );
    for cap in ["--cpu-cap=all", "--cpu-cap=fpu", "--cpu-cap=ins"] {
        ok(
            &run(&["cpuinfo", "check", "-D", a.to_str().unwrap(), cap]),
            "criu checks cryo's",
        );
        ok(
            &cryo(&["cpuinfo", "check", "-D", b.to_str().unwrap(), cap]),
            "cryo checks CRIU's",
        );
    }
    // And CRIU refuses what cryo refuses.
    forge_richer_cpu(&a);
    assert!(!run(&["cpuinfo", "check", "-D", a.to_str().unwrap()])
        .status
        .success());
}

/// A parent inside vfork() cannot stop until its child execs or exits, and the child is in
/// the tree, so cryo froze it: the dump gives up after `--timeout` seconds, names the
/// thread and vfork, and lets everything go: the child finishes its sleep, the parent goes
/// on. (Before, the dump waited for ever.)
#[test]
fn a_parent_stuck_in_vfork_fails_the_dump_after_the_timeout_and_runs_on() {
    let dir = scratch("vfork");
    let out = dir.join("out");
    let log = dir.join("log");
    let pid = spawn(
        &[
            prog("vforker").to_str().unwrap(),
            out.to_str().unwrap(),
            "6",
        ],
        &log,
    );
    let _guard = KillOnDrop(pid);
    wait_for("the vfork child", 20, || {
        lines(&out).iter().any(|l| l.starts_with("child "))
    });
    let e = dump_fails(pid, &dir.join("img"), &["--timeout", "1"]);
    assert!(
        e.contains(&format!("thread {pid} did not stop within 1 s"))
            && e.contains("vfork")
            && e.contains("runs on"),
        "{e}"
    );
    // Released: the child's sleep ends, the parent comes back from vfork and counts.
    wait_for("the parent to come back from vfork", 30, || {
        lines(&out).iter().any(|l| l.starts_with("tick "))
    });
    assert!(alive(pid));
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        st.lines().any(|l| l == "TracerPid:\t0"),
        "the parent should not be traced any more:\n{st}"
    );
}
