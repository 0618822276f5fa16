//! Everything a user can observe about a process is the same after dump and restore: /proc
//! (credentials, signal masks and dispositions, pending signals, limits, maps with their
//! protections and madvise flags, fds with offsets and flags, cwd, name, personality) and
//! what the program itself sees (alternate stack, itimer, shared file offset, memory behind
//! PROT_NONE). Like CRIU's zdtm "visible state" check, on a program built to hold odd state.

use std::collections::BTreeMap;
use std::time::Duration;

use integration::*;

/// The observable state of `pid`, as comparable text.
fn snapshot(pid: i32) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for l in status.lines() {
        let key = l.split(':').next().unwrap();
        if [
            "Name",
            "Umask",
            "State",
            "Uid",
            "Gid",
            "Groups",
            "SigPnd",
            "ShdPnd",
            "SigBlk",
            "SigIgn",
            "SigCgt",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
            "NoNewPrivs",
            "Seccomp",
            "Tgid",
            "Pid",
        ]
        .contains(&key)
        {
            m.insert(format!("status.{key}"), l.to_string());
        }
    }
    for f in ["limits", "personality", "comm", "oom_score_adj", "auxv"] {
        m.insert(
            f.into(),
            format!("{:?}", std::fs::read(format!("/proc/{pid}/{f}")).unwrap()),
        );
    }
    for f in ["cwd", "root", "exe"] {
        m.insert(
            f.into(),
            format!(
                "{:?}",
                std::fs::read_link(format!("/proc/{pid}/{f}")).unwrap()
            ),
        );
    }
    // Mappings: range, protections, offset, path, and madvise-type VmFlags.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut cur = String::new();
    for l in smaps.lines() {
        if let Some(flags) = l.strip_prefix("VmFlags:") {
            let keep: Vec<&str> = flags
                .split_whitespace()
                .filter(|f| !["ac", "sd", "mr", "mw", "me"].contains(f))
                .collect();
            m.insert(format!("map {cur}"), keep.join(" "));
        } else if l
            .split(' ')
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let parts: Vec<&str> = l.split_whitespace().collect();
            // range perms offset ... path (dev/inode omitted: anonymous inode numbers vary)
            cur = format!(
                "{} {} {} {}",
                parts[0],
                parts[1],
                parts[2],
                parts.get(5).unwrap_or(&"")
            );
        }
    }
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = e.unwrap().file_name().to_string_lossy().to_string();
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let keep: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("pos") || l.starts_with("flags"))
            .collect();
        m.insert(
            format!("fd {fd:>3}"),
            format!("{target:?} {}", keep.join(" ")),
        );
    }
    m
}

fn report(pid: i32, out: &std::path::Path, n: usize) -> String {
    signal(pid, libc::SIGUSR1);
    wait_for("keeper report", 20, || lines(out).len() > n);
    lines(out)[n].clone()
}

#[test]
fn everything_observable_survives() {
    let dir = scratch("visible");
    let out = dir.join("report.txt");
    let data = dir.join("data.bin");
    let pid = spawn(
        &[
            prog("keeper").to_str().unwrap(),
            out.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("keeper ready", 10, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    let r1 = report(pid, &out, 1);
    std::thread::sleep(Duration::from_millis(100));
    let before = snapshot(pid);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    // The signal mask shows the waited-for signals unblocked only while the program is inside
    // its wait, which it re-enters once it runs again: compare once it settled (or give up).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut after = snapshot(pid);
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = snapshot(pid);
    }
    let mut diffs = Vec::new();
    for k in before.keys().chain(after.keys()) {
        if before.get(k) != after.get(k)
            && !diffs.iter().any(|d: &String| d.starts_with(k.as_str()))
        {
            diffs.push(format!(
                "{k}:\n    before: {:?}\n    after:  {:?}",
                before.get(k),
                after.get(k)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "visible state changed:\n{}",
        diffs.join("\n")
    );
    let r2 = report(pid, &out, 2);
    // The program's own view: same memory, alt stack, itimer, pending SIGUSR2, umask; the shared
    // file offset moved on by exactly the one byte the report reads.
    let strip = |r: &str| -> String {
        r.split(' ')
            .filter(|f| !f.starts_with("read=") && !f.starts_with("pos="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(strip(&r1), strip(&r2), "program state differs:\n{r1}\n{r2}");
    assert!(r1.contains("read=1:5 pos=6"), "{r1}");
    assert!(r2.contains("read=1:6 pos=7"), "{r2}");
    assert!(
        r1.contains("usr2_pending=1") && r1.contains("value_ok=1"),
        "{r1}"
    );
}
