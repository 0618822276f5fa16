//! `cryo inspect` and `cryo diff` (issue #15) on real checkpoints: the CRIU 4.2 fixtures
//! (`fixtures/criu-4.2-tree`: a process tree with a thread, a pipe, unix sockets and known
//! strings in memory, made from `progs/inspectee.c`; `fixtures/criu-4.2-sleep`, whose pages
//! image was left out), dumps cryo makes here of the same program, and the same images in
//! archives (tar, gzip and zstd, whatever their names say). The podman and containerd
//! archives are inspected in `podman.rs` and `containerd.rs`.
//!
//! The checks are on content: the PIDs, paths, offsets, queued bytes, addresses and counts
//! the dump holds, not only that the command ran.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration::*;
use serde_json::Value;

const TREE: &str = "integration/fixtures/criu-4.2-tree";
const SLEEP: &str = "integration/fixtures/criu-4.2-sleep";

fn fixture(p: &str) -> PathBuf {
    root().join(p)
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cryo ARGS` that must succeed; its stdout.
fn ok_cryo(args: &[&str]) -> String {
    let o = cryo(args);
    assert!(o.status.success(), "cryo {args:?} failed: {}", err(&o));
    assert!(
        !err(&o).contains("panicked"),
        "cryo {args:?} panicked: {}",
        err(&o)
    );
    out(&o)
}

/// `cryo inspect --json ARGS`, parsed.
fn inspect_json(args: &[&str]) -> Value {
    let mut a = vec!["inspect", "--json"];
    a.extend_from_slice(args);
    let s = ok_cryo(&a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: not JSON: {s}"))
}

/// `cryo ARGS` that must fail without a panic; its stderr.
fn fails(args: &[&str]) -> String {
    let o = cryo(args);
    assert!(!o.status.success(), "cryo {args:?} should have failed");
    let e = err(&o);
    assert!(!e.contains("panicked"), "cryo {args:?} panicked: {e}");
    e
}

fn process(v: &Value, pid: u64) -> &Value {
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in {v}"))
}

fn fd(p: &Value, n: u64) -> &Value {
    p["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == n)
        .unwrap_or_else(|| panic!("no fd {n} in {}", p["fds"]))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// What the CRIU 4.2 tree fixture holds (fixtures/criu-4.2-tree/README.md), checked on
/// `cryo inspect --json` of `path` (the directory or an archive of it).
fn check_criu_tree(path: &Path) {
    let v = inspect_json(&[path.to_str().unwrap()]);
    assert_eq!(v["format"], "cryo-inspect/1");
    let s = &v["summary"];
    assert_eq!(s["root_pid"], 19048);
    assert_eq!(
        (s["processes"].as_u64(), s["threads"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(s["tool"].as_str().unwrap().starts_with("CRIU"), "{s}");
    assert_eq!(s["stats"]["frozen_us"], 12881);
    assert_eq!(s["stats"]["pages_written"], 91);
    // The pages counted from the pagemaps are the pages CRIU wrote.
    assert_eq!(s["pages"], 91);
    let parent = process(&v, 19048);
    let child = process(&v, 19051);
    assert_eq!(
        (parent["ppid"].as_u64(), parent["sid"].as_u64()),
        (Some(0), Some(19048))
    );
    assert_eq!(
        (child["ppid"].as_u64(), child["pgid"].as_u64()),
        (Some(19048), Some(19048))
    );
    assert_eq!(parent["state"], "alive");
    let tids: Vec<u64> = parent["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tid"].as_u64().unwrap())
        .collect();
    assert_eq!(tids, [19048, 19050]);
    // Command line and environment, read from the saved stack pages.
    let argv = [
        "./inspectee",
        "/tmp/cryo-fixture/out",
        "/tmp/cryo-fixture/file",
    ];
    assert_eq!(strs(&parent["argv"]), argv);
    assert_eq!(strs(&child["argv"]), argv);
    assert_eq!(
        strs(&parent["env"]),
        ["PATH=/usr/bin:/bin", "CRYO_FIXTURE=tree"]
    );
    assert_eq!(parent["exe"], "/tmp/cryo-fixture/inspectee");
    assert_eq!(parent["cwd"], "/tmp/cryo-fixture");
    // fds
    let f = fd(parent, 8);
    assert_eq!(
        (f["kind"].as_str(), f["pos"].as_u64()),
        (Some("file"), Some(4))
    );
    assert_eq!(f["target"], "/tmp/cryo-fixture/file");
    assert_eq!(strs(&f["flags"])[0], "O_RDWR");
    assert_eq!(fd(parent, 0)["target"], "/dev/null");
    assert_eq!(fd(parent, 0)["kind"], "chr");
    assert_eq!(fd(parent, 4)["kind"], "pipe");
    assert!(fd(parent, 4)["target"]
        .as_str()
        .unwrap()
        .contains("19051:3"));
    assert_eq!(fd(child, 3)["flags"][0], "O_RDONLY");
    assert_eq!(fd(parent, 7)["kind"], "unix");
    let pipes = v["pipes"].as_array().unwrap();
    assert_eq!(pipes.len(), 1, "{pipes:?}");
    assert_eq!(pipes[0]["queued_bytes"], 10);
    assert_eq!(
        pipes[0]["readers"],
        serde_json::json!([{"pid": 19051, "fd": 3}])
    );
    assert_eq!(
        pipes[0]["writers"],
        serde_json::json!([{"pid": 19048, "fd": 4}])
    );
    // sockets: the listener, and the pair with 11 bytes waiting in the child's end.
    let socks = v["sockets"].as_array().unwrap();
    assert_eq!(socks.len(), 3, "{socks:?}");
    let listener = socks.iter().find(|s| s["state"] == "listen").unwrap();
    assert_eq!(listener["local"], "@cryo-inspectee-19048");
    assert_eq!(listener["backlog"], 4);
    assert_eq!(
        listener["holders"],
        serde_json::json!([{"pid": 19048, "fd": 7}])
    );
    let theirs = socks
        .iter()
        .find(|s| s["holders"] == serde_json::json!([{"pid": 19051, "fd": 6}]))
        .unwrap();
    assert_eq!(
        (theirs["state"].as_str(), theirs["type"].as_str()),
        (Some("established"), Some("stream"))
    );
    assert_eq!(theirs["queued_bytes"], 11);
    let ours = socks
        .iter()
        .find(|s| s["holders"] == serde_json::json!([{"pid": 19048, "fd": 5}]))
        .unwrap();
    assert_eq!(ours["peer_ino"], theirs["ino"]);
    assert_eq!(ours["queued_bytes"], 0);
    // memory: the heap holds the needle's address and some of its pages were saved.
    let m = &parent["memory"];
    let heap = m["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "heap")
        .unwrap();
    let a =
        |x: &Value| u64::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert!(a(&heap["start"]) <= 0x55f643bfa2a0 && 0x55f643bfa2a0 < a(&heap["end"]));
    assert_eq!(heap["pages_saved"], 18);
    assert_eq!(heap["prot"], "rw-p");
    assert_eq!(m["pages_saved"], 46);
    assert_eq!(child["memory"]["pages_saved"], 45);
    assert!(m["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["kind"] == "stack" && x["pages_saved"].as_u64() > Some(0)));
    assert!(m["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["path"] == "/usr/lib/x86_64-linux-gnu/libc.so.6"));
    assert_eq!(
        v["notes"],
        serde_json::json!([]),
        "nothing should be unread"
    );
}

#[test]
fn criu_tree_fixture_in_json() {
    check_criu_tree(&fixture(TREE));
}

#[test]
fn criu_tree_fixture_in_a_terminal_view() {
    let t = ok_cryo(&["inspect", fixture(TREE).to_str().unwrap()]);
    // Summary first, then the tree drawn with the PIDs.
    assert!(t.starts_with("CHECKPOINT"), "{t}");
    assert!(!t.contains("\x1b["), "no color when not a tty");
    let row = |pid: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with(pid))
            .unwrap_or_else(|| panic!("no row for {pid}:\n{t}"))
            .to_string()
    };
    let parent = row("19048 ");
    let child = row("└─ 19051");
    assert!(
        parent.ends_with("./inspectee /tmp/cryo-fixture/out /tmp/cryo-fixture/file"),
        "{parent}"
    );
    // Aligned: the COMMAND column starts at the same place in both rows.
    let col = |l: &str| l[..l.find("./inspectee").unwrap()].chars().count();
    assert_eq!(col(&parent), col(&child), "\n{parent}\n{child}");
    for want in [
        "written by  CRIU",
        "frozen      12.9 ms",
        "pipe:[",
        "@cryo-inspectee-19048",
        "listen (4)",
        "/tmp/cryo-fixture/file",
        "CRYO_FIXTURE=tree",
        "  heap  ",
        "MEMORY",
    ] {
        assert!(t.contains(want), "{want:?} missing:\n{t}");
    }
    // Section flags narrow it.
    let f = ok_cryo(&[
        "inspect",
        "--fds",
        "--pid",
        "19051",
        fixture(TREE).to_str().unwrap(),
    ]);
    assert!(f.starts_with("FILES"), "{f}");
    assert!(!f.contains("19048   8"), "{f}");
    assert!(f.contains("(11 bytes queued)"), "{f}");
    assert!(!f.contains("MEMORY") && !f.contains("CHECKPOINT"), "{f}");
    let s = ok_cryo(&["inspect", "--sockets", fixture(TREE).to_str().unwrap()]);
    assert!(s.starts_with("SOCKETS") && !s.contains("PROCESSES"), "{s}");
    let v = inspect_json(&["--ps", fixture(TREE).to_str().unwrap()]);
    assert!(
        v.get("sockets").is_none() && v["processes"][0].get("fds").is_none(),
        "{v}"
    );
}

#[test]
fn criu_tree_fixture_search_and_dump_mem() {
    let dir = fixture(TREE);
    let d = dir.to_str().unwrap();
    let v = inspect_json(&["--search", "cryo-needle-static-19048", d]);
    let hits = v["search"]["hits"].as_array().unwrap();
    // The static buffer, in the data segment of both processes (the child is a fork).
    assert_eq!(hits.len(), 2, "{hits:?}");
    for (h, pid) in hits.iter().zip([19048, 19051]) {
        assert_eq!(h["pid"], pid);
        assert_eq!(h["address"], "0x55f60f5d8100");
        assert_eq!(h["mapping"], "file /tmp/cryo-fixture/inspectee");
        assert!(h["context"]
            .as_str()
            .unwrap()
            .contains("cryo-needle-static-19048"));
    }
    assert!(v.get("processes").is_none(), "a search shows only its hits");
    let v = inspect_json(&["--search-regex", "cryo-needle-(heap|child)-[0-9]+", d]);
    let hits = v["search"]["hits"].as_array().unwrap();
    let found: Vec<(u64, String, String)> = hits
        .iter()
        .map(|h| {
            (
                h["pid"].as_u64().unwrap(),
                h["address"].as_str().unwrap().to_string(),
                h["match"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        found.contains(&(
            19048,
            "0x55f643bfa2a0".into(),
            "cryo-needle-heap-19048".into()
        )),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(p, _, m)| *p == 19051 && m == "cryo-needle-child-19051"),
        "{found:?}"
    );
    assert!(hits.iter().all(|h| h["mapping"] == "[heap]"), "{hits:?}");
    let t = ok_cryo(&[
        "inspect",
        "--search",
        "cryo-needle-heap",
        "--pid",
        "19048",
        d,
    ]);
    assert!(
        t.contains("0x55f643bfa2a0") && t.contains("[heap]+0x2a0"),
        "{t}"
    );
    assert!(!t.contains("19051"), "{t}");
    // --dump-mem: the raw bytes at the needle's address.
    let outp = scratch("inspect-dump-mem").join("bytes");
    ok_cryo(&[
        "inspect",
        "--dump-mem",
        "19048",
        "0x55f60f5d8100",
        "24",
        "-o",
        outp.to_str().unwrap(),
        d,
    ]);
    assert_eq!(std::fs::read(&outp).unwrap(), b"cryo-needle-static-19048");
    // An unmapped address and an unknown pid are refused by name.
    let e = fails(&[
        "inspect",
        "--dump-mem",
        "19048",
        "0x1000",
        "16",
        "-o",
        outp.to_str().unwrap(),
        d,
    ]);
    assert!(e.contains("0x1000 is not mapped in 19048"), "{e}");
    let e = fails(&["inspect", "--pid", "4242", d]);
    assert!(
        e.contains("process 4242 is not in this checkpoint") && e.contains("19048 19051"),
        "{e}"
    );
    // A pattern that looks like an option reaches the search.
    let v = inspect_json(&["--search", "-v", d]);
    assert_eq!(v["search"]["pattern"], "-v");
}

#[test]
fn archives_of_any_compression_are_read_in_place() {
    let dir = scratch("inspect-archives");
    let src = fixture(TREE);
    for (name, flag) in [
        ("plain.tar", None),
        ("gz.tar.zst", Some("-z")),
        ("zstd.tgz", Some("--zstd")),
    ] {
        let a = dir.join(name);
        let mut c = Command::new("tar");
        c.arg("-C").arg(&src);
        if let Some(f) = flag {
            c.arg(f);
        }
        let o = c.arg("-cf").arg(&a).arg(".").output().unwrap();
        ok(&o, "tar");
        check_criu_tree(&a);
        let v = inspect_json(&["--search", "cryo-needle-child-19051", a.to_str().unwrap()]);
        assert_eq!(v["search"]["hits"][0]["pid"], 19051, "{name}");
        assert_eq!(v["source"]["kind"], "archive");
        let want = match flag {
            None => "none",
            Some("-z") => "gzip",
            _ => "zstd",
        };
        assert_eq!(v["source"]["compression"], want, "{name}");
        let outp = dir.join(format!("{name}.bytes"));
        ok_cryo(&[
            "inspect",
            "--dump-mem",
            "19048",
            "0x55f643bfa2a0",
            "22",
            "-o",
            outp.to_str().unwrap(),
            a.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(&outp).unwrap(), b"cryo-needle-heap-19048");
    }
    // A podman-shaped archive: the images under checkpoint/, the spec next to them.
    let pod = dir.join("pod");
    std::fs::create_dir_all(pod.join("checkpoint")).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pod.join("checkpoint").join(e.file_name())).unwrap();
    }
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("inspected".into()));
    std::fs::write(pod.join("spec.dump"), serde_json::to_vec(&spec).unwrap()).unwrap();
    std::fs::write(
        pod.join("config.dump"),
        r#"{"name":"web","id":"abc123","rootfsImageName":"localhost/img:1"}"#,
    )
    .unwrap();
    std::fs::write(pod.join("network.status"), "null").unwrap();
    let a = dir.join("pod.tar.zst");
    let o = Command::new("tar")
        .arg("-C")
        .arg(&pod)
        .args(["--zstd", "-cf"])
        .arg(&a)
        .arg(".")
        .output()
        .unwrap();
    ok(&o, "tar");
    for p in [&pod, &a] {
        let v = inspect_json(&[p.to_str().unwrap()]);
        assert_eq!(v["source"]["container"], "podman");
        let c = &v["container"];
        assert_eq!(
            (c["name"].as_str(), c["image"].as_str()),
            (Some("web"), Some("localhost/img:1"))
        );
        assert_eq!(c["spec"]["hostname"], "inspected");
        assert_eq!(strs(&c["spec"]["args"]), ["sh"]);
        assert_eq!(c["network"], Value::Null);
        assert_eq!(process(&v, 19051)["fds"][4]["kind"], "unix");
    }
    let t = ok_cryo(&["inspect", "--container", a.to_str().unwrap()]);
    assert!(
        t.contains("name          web") && t.contains("hostname      inspected"),
        "{t}"
    );
}

#[test]
fn what_cannot_be_read_is_said() {
    // The sleep fixture has no pages image: no command line, a note, no panic.
    let v = inspect_json(&[fixture(SLEEP).to_str().unwrap()]);
    let p = &v["processes"][0];
    assert_eq!(
        (p["pid"].as_u64(), p["comm"].as_str()),
        (Some(9055), Some("sleep"))
    );
    assert_eq!(p["argv"], Value::Null);
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("pages-1.img") && notes.contains("missing"),
        "{notes}"
    );
    let t = ok_cryo(&["inspect", fixture(SLEEP).to_str().unwrap()]);
    assert!(t.contains("[sleep]") && t.contains("NOT READ"), "{t}");
    let dir = scratch("inspect-broken");
    // A damaged image: the tables it feeds are left empty and the damage is named.
    let bad = dir.join("tree");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(fixture(TREE)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let files = std::fs::read(bad.join("files.img")).unwrap();
    std::fs::write(bad.join("files.img"), &files[..files.len() - 7]).unwrap();
    let pages = std::fs::read(bad.join("pages-2.img")).unwrap();
    std::fs::write(bad.join("pages-2.img"), &pages[..8192]).unwrap();
    let v = inspect_json(&[bad.to_str().unwrap()]);
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("files.img") && notes.contains("truncated"),
        "{notes}"
    );
    assert!(notes.contains("pages-2.img"), "{notes}");
    let f = fd(process(&v, 19048), 8);
    assert!(f["target"].as_str().unwrap().starts_with("? "), "{f}");
    assert_eq!(process(&v, 19051)["argv"], Value::Null);
    // Not a checkpoint at all.
    std::fs::write(dir.join("junk.tar.gz"), b"this is not an archive").unwrap();
    let e = fails(&["inspect", dir.join("junk.tar.gz").to_str().unwrap()]);
    assert!(e.contains("not a checkpoint") && e.contains("hint:"), "{e}");
    let e = fails(&["inspect", dir.to_str().unwrap()]);
    assert!(e.contains("no inventory.img"), "{e}");
    let e = fails(&["inspect", "/nonexistent/ckpt"]);
    assert!(e.contains("/nonexistent/ckpt"), "{e}");
    // A tar cut in the middle.
    let whole = dir.join("whole.tar");
    let o = Command::new("tar")
        .arg("-C")
        .arg(fixture(TREE))
        .arg("-cf")
        .arg(&whole)
        .arg(".")
        .output()
        .unwrap();
    ok(&o, "tar");
    let b = std::fs::read(&whole).unwrap();
    let cut = dir.join("cut.tar");
    std::fs::write(&cut, &b[..b.len() / 3]).unwrap();
    let o = cryo(&["inspect", cut.to_str().unwrap()]);
    assert!(!err(&o).contains("panicked"), "{}", err(&o));
}

/// A tree of inspectee dumped by cryo twice with --leave-running, with a change in
/// between (SIGUSR1: a new fd, a new child, a heap page written): inspect the second,
/// diff them.
#[test]
fn cryo_dumps_inspected_and_diffed() {
    let dir = scratch("inspect-live");
    let outf = dir.join("out");
    let exe = prog("inspectee");
    let pid = spawn(
        &[
            exe.to_str().unwrap(),
            outf.to_str().unwrap(),
            dir.join("file").to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    let ready = wait_ready(&outf);
    let child = ready[1] as u64;
    let needle = lines(&outf)[1].split(' ').nth(2).unwrap().to_string();
    let (a, b) = (dir.join("a"), dir.join("b"));
    dump(pid, &a, &["--leave-running"]);
    signal(pid, libc::SIGUSR1);
    wait_for("the change", 10, || {
        lines(&outf).iter().any(|l| l.starts_with("changed"))
    });
    let changed: Vec<u64> = lines(&outf)
        .iter()
        .find(|l| l.starts_with("changed"))
        .unwrap()
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let (new_fd, child2) = (changed[0], changed[1]);
    let _g2 = KillOnDrop(child2 as i32);
    let _g1 = KillOnDrop(child as i32);
    dump(pid, &b, &["--leave-running"]);
    let v = inspect_json(&[b.to_str().unwrap()]);
    assert!(
        v["summary"]["tool"].as_str().unwrap().starts_with("cryo "),
        "{}",
        v["summary"]
    );
    assert!(
        v["summary"]["written_from"] == "cryo-manifest.json",
        "{}",
        v["summary"]
    );
    assert_eq!(v["summary"]["processes"], 3);
    let p = process(&v, pid as u64);
    assert_eq!(p["threads"].as_array().unwrap().len(), 2);
    assert_eq!(strs(&p["argv"])[1], outf.to_str().unwrap());
    assert!(
        strs(&p["env"]).iter().any(|e| e.starts_with("PATH=")),
        "{}",
        p["env"]
    );
    assert_eq!(fd(p, new_fd)["target"], "/dev/null");
    let f = fd(p, 8);
    assert_eq!(
        (f["pos"].as_u64(), f["target"].as_str()),
        (Some(4), dir.join("file").to_str())
    );
    assert_eq!(process(&v, child2)["ppid"], pid);
    let q = v["pipes"][0]["queued_bytes"].as_u64();
    assert_eq!(q, Some(10));
    assert!(v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["local"] == format!("@cryo-inspectee-{pid}") && s["state"] == "listen"));
    // The pages counted from the pagemaps are the pages cryo wrote.
    assert_eq!(
        v["summary"]["pages"],
        v["summary"]["stats"]["pages_written"]
    );
    let hits = inspect_json(&[
        "--search",
        &format!("cryo-needle-heap-{pid}"),
        "--pid",
        &pid.to_string(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(hits["search"]["hits"][0]["address"], needle, "{hits}");
    // The diff: a process added, an fd added, heap pages changed in the parent only.
    let d: Value = serde_json::from_str(&ok_cryo(&[
        "diff",
        "--json",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(d["format"], "cryo-diff/1");
    let added: Vec<u64> = d["processes"]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(added, [child2]);
    assert_eq!(d["processes"]["gone"], serde_json::json!([]));
    let fds = d["fds"].as_array().unwrap();
    let mine = fds
        .iter()
        .find(|x| x["pid"] == pid)
        .expect("the parent's fds changed");
    assert_eq!(mine["added"][0]["fd"], new_fd);
    assert_eq!(mine["added"][0]["target"], "/dev/null");
    let mem = d["memory"].as_array().unwrap();
    let pm = mem.iter().find(|m| m["pid"] == pid).unwrap();
    let heap = pm["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "heap")
        .unwrap();
    assert!(heap["pages_changed"].as_u64().unwrap() >= 1, "{heap}");
    let cm = mem.iter().find(|m| m["pid"] == child).unwrap();
    // The child only waits: its heap is unchanged. (Not all of its memory: the kernel writes
    // the CPU number into the rseq area of its TLS whenever it runs on another CPU.)
    let child_heap = cm["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "heap")
        .unwrap();
    assert_eq!(child_heap["pages_changed"], 0, "{cm}");
    assert!(cm["pages_changed"].as_u64().unwrap() <= 1, "{cm}");
    assert!(cm["pages_same"].as_u64().unwrap() > 10, "{cm}");
    let t = ok_cryo(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(t.contains(&format!("+ {child2} (parent {pid})")), "{t}");
    assert!(t.contains(&format!("+ fd {new_fd} chr /dev/null")), "{t}");
    // A checkpoint compared with itself: nothing changed.
    let same: Value = serde_json::from_str(&ok_cryo(&[
        "diff",
        "--json",
        b.to_str().unwrap(),
        b.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(same["fds"], serde_json::json!([]));
    assert!(same["memory"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["pages_changed"] == 0 && m["pages_added"] == 0));
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let bash = ok_cryo(&["completions", "bash"]);
    for w in [
        "inspect",
        "--search-regex",
        "--dump-mem",
        "--leave-running",
        "completions",
    ] {
        assert!(bash.contains(w), "{w} not in the bash completions");
    }
    let zsh = ok_cryo(&["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef cryo") && zsh.contains("--search"),
        "zsh"
    );
    let fish = ok_cryo(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c cryo") && fish.contains("dump-mem"),
        "fish"
    );
    let e = fails(&["completions", "tcsh"]);
    assert!(e.contains("tcsh"), "{e}");
    let man = ok_cryo(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH cryo"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("inspect"));
    let dir = scratch("inspect-man");
    let list = ok_cryo(&["man", "--dir", dir.to_str().unwrap()]);
    for page in [
        "cryo.1",
        "cryo-dump.1",
        "cryo-restore.1",
        "cryo-inspect.1",
        "cryo-diff.1",
    ] {
        assert!(list.contains(page), "{page} not written: {list}");
    }
    let inspect = std::fs::read_to_string(dir.join("cryo-inspect.1")).unwrap();
    assert!(
        inspect.contains("dump\\-mem") && inspect.contains("search\\-regex"),
        "{inspect}"
    );
    let dump = std::fs::read_to_string(dir.join("cryo-dump.1")).unwrap();
    assert!(dump.contains("leave\\-running"), "{dump}");
    if Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let o = Command::new("man")
            .arg("-l")
            .arg(dir.join("cryo-inspect.1"))
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("search"));
    }
}

/// Every image of the CRIU fixture cut short, emptied, or with bytes flipped: `cryo inspect`
/// (full, search, diff) answers or refuses with a message, and never panics.
#[test]
fn damaged_images_never_panic() {
    let dir = scratch("inspect-damage");
    let src = fixture(TREE);
    let names: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let work = dir.join("w");
    let mut runs = 0;
    for n in &names {
        let orig = std::fs::read(src.join(n)).unwrap();
        let mut flipped = orig.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0xa5;
        }
        let mut huge = orig.clone();
        if huge.len() >= 12 {
            // An entry size (after the two magics) claiming far more than there is.
            huge[8..12].copy_from_slice(&0x7fff_fff0u32.to_ne_bytes());
        }
        for bad in [orig[..orig.len() / 2].to_vec(), Vec::new(), flipped, huge] {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work).unwrap();
            for m in &names {
                std::fs::copy(src.join(m), work.join(m)).unwrap();
            }
            std::fs::write(work.join(n), &bad).unwrap();
            let w = work.to_str().unwrap();
            for args in [
                vec!["inspect", "--json", w],
                vec!["inspect", w],
                vec!["inspect", "--search-regex", "cryo-[a-z]+", w],
                vec!["diff", src.to_str().unwrap(), w],
            ] {
                let o = Command::new(cryo_bin()).args(&args).output().unwrap();
                runs += 1;
                let e = err(&o);
                assert!(
                    !e.contains("panicked") && o.status.code().is_some(),
                    "cryo {args:?} with {n:?} damaged: {e}"
                );
                if !o.status.success() {
                    assert!(e.starts_with("Error: "), "{args:?} {n:?}: {e}");
                }
            }
        }
    }
    assert!(runs > 300);
}

/// A pty in the tree (`scripts/pty_shell.py`: python holds the master, `sh -i` runs on the
/// slave as its controlling terminal), dumped with --leave-running: the TTYS table shows
/// both sides with the index, session, foreground group and window size, and who holds
/// them.
#[test]
fn ptys_are_shown() {
    let dir = scratch("inspect-pty");
    let (fifo, out, log) = (dir.join("in"), dir.join("out"), dir.join("log"));
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let script = root().join("integration/scripts/pty_shell.py");
    let py = spawn(
        &[
            "/usr/bin/python3",
            script.to_str().unwrap(),
            fifo.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &log,
    );
    let _g = KillOnDrop(py);
    let sh = wait_ready(&log)[0];
    let _g2 = KillOnDrop(sh);
    let stdin = || std::fs::read_link(format!("/proc/{sh}/fd/0")).unwrap_or_default();
    wait_for("the shell on its pty", 10, || {
        stdin().starts_with("/dev/pts/")
            && std::fs::read_link(format!("/proc/{sh}/exe"))
                .is_ok_and(|e| e.ends_with("dash") || e.ends_with("sh"))
    });
    let pts = stdin();
    let index: u64 = pts
        .to_str()
        .unwrap()
        .strip_prefix("/dev/pts/")
        .unwrap()
        .parse()
        .unwrap();
    let img = dir.join("img");
    dump(py, &img, &["--leave-running"]);
    let v = inspect_json(&["--fds", img.to_str().unwrap()]);
    let ttys = v["ttys"].as_array().unwrap();
    let side = |s: &str| {
        ttys.iter()
            .find(|t| t["side"] == s)
            .unwrap_or_else(|| panic!("no {s} in {ttys:?}"))
    };
    let (slave, master) = (side("slave"), side("master"));
    for t in [slave, master] {
        assert_eq!(t["type"], "pty");
        assert_eq!(t["index"], index);
        assert_eq!(
            (t["rows"].as_u64(), t["cols"].as_u64()),
            (Some(37), Some(91))
        );
    }
    assert_eq!(
        (slave["sid"].as_i64(), slave["pgrp"].as_i64()),
        (Some(sh as i64), Some(sh as i64))
    );
    let held: Vec<(u64, u64, String)> = slave["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0]["pid"].as_u64().unwrap(),
                h[0]["fd"].as_u64().unwrap(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for fd in 0..3 {
        assert!(
            held.contains(&(sh as u64, fd, pts.to_str().unwrap().to_string())),
            "{held:?}"
        );
    }
    assert_eq!(master["holders"][0][0]["pid"], py);
    let shp = process(&v, sh as u64);
    assert_eq!(fd(shp, 0)["kind"], "tty");
    assert_eq!(fd(shp, 0)["target"], pts.to_str().unwrap());
    let t = ok_cryo(&["inspect", "--fds", img.to_str().unwrap()]);
    assert!(
        t.contains("TTYS") && t.contains(&format!("(pts {index})")),
        "{t}"
    );
}

/// CRIU 4.2's images of TCP and UDP sockets (`fixtures/criu-4.2-tcp`, from
/// `progs/tcpee.c`): addresses, ports, states, the listener's backlog, and the 5 unread
/// bytes of the accepted connection from its tcp-stream image.
#[test]
fn criu_inet_sockets_fixture() {
    let dir = fixture("integration/fixtures/criu-4.2-tcp");
    let v = inspect_json(&["--sockets", "--fds", dir.to_str().unwrap()]);
    let socks = v["sockets"].as_array().unwrap();
    let by_fd = |fd: u64| {
        socks
            .iter()
            .find(|s| s["holders"] == serde_json::json!([{"pid": 24204, "fd": fd}]))
            .unwrap_or_else(|| panic!("no socket at fd {fd}: {socks:?}"))
    };
    let l = by_fd(3);
    assert_eq!(
        (l["family"].as_str(), l["type"].as_str()),
        (Some("inet"), Some("stream tcp"))
    );
    assert_eq!(
        (l["state"].as_str(), l["local"].as_str()),
        (Some("listen"), Some("127.0.0.1:47204"))
    );
    assert_eq!(l["backlog"], 8);
    let c = by_fd(4);
    assert_eq!(c["state"], "established");
    assert_eq!(
        (c["local"].as_str(), c["peer"].as_str()),
        (Some("127.0.0.1:39054"), Some("127.0.0.1:47204"))
    );
    assert_eq!(
        (c["queued_bytes"].as_u64(), c["send_queue_bytes"].as_u64()),
        (Some(0), Some(0))
    );
    let a = by_fd(5);
    assert_eq!(
        (a["local"].as_str(), a["peer"].as_str()),
        (Some("127.0.0.1:47204"), Some("127.0.0.1:39054"))
    );
    assert_eq!(a["queued_bytes"], 5);
    let u = by_fd(6);
    assert_eq!(
        (u["type"].as_str(), u["local"].as_str()),
        (Some("dgram udp"), Some("127.0.0.1:47205"))
    );
    let p = &v["processes"][0];
    assert_eq!(
        fd(p, 4)["target"],
        "tcp 127.0.0.1:39054 -> 127.0.0.1:47204 established"
    );
    assert_eq!(fd(p, 3)["kind"], "inet");
    assert_eq!(v["notes"], serde_json::json!([]));
    // `cryo show` frames the queue bytes after a tcp-stream entry.
    let s: Value = serde_json::from_str(&ok_cryo(&[
        "show",
        dir.join("tcp-stream-4156cc.img").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(s["entries"][0]["inq_len"], 5);
    let t = ok_cryo(&["inspect", "--sockets", dir.to_str().unwrap()]);
    assert!(
        t.contains("127.0.0.1:47204  127.0.0.1:39054") && t.contains("listen (8)"),
        "{t}"
    );
}

/// A podman export made with CRIU 4.2 (`fixtures/podman-criu-4.2/web.tar.zst`): podman's
/// files (name, image, spec, deleted files, rootfs diff, /dev/shm, network), CRIU's images
/// (the tree, the environment from memory, external mounts), and stats-dump read from next
/// to the images, where CRIU under podman writes it.
#[test]
fn podman_export_made_by_criu() {
    let a = fixture("integration/fixtures/podman-criu-4.2/web.tar.zst");
    let v = inspect_json(&[a.to_str().unwrap()]);
    assert_eq!(v["source"]["container"], "podman");
    assert_eq!(v["source"]["compression"], "zstd");
    let s = &v["summary"];
    assert!(s["tool"].as_str().unwrap().starts_with("CRIU"), "{s}");
    assert_eq!(s["stats"]["frozen_us"], 239912);
    assert_eq!(s["processes"], 2);
    let c = &v["container"];
    assert_eq!(
        (c["name"].as_str(), c["image"].as_str()),
        (Some("web"), Some("localhost/cryo-busybox:test"))
    );
    assert!(c["id"].as_str().unwrap().starts_with("e96374bb2e7f"));
    assert_eq!(strs(&c["deleted_files"]), ["/etc/group"]);
    assert_eq!(
        c["rootfs_diff"]["names"],
        serde_json::json!([["tmp/started", 8, "f"]])
    );
    assert_eq!(c["dev_shm"]["files"], 1);
    assert_eq!(c["dev_shm"]["bytes"], 14);
    assert_eq!(c["network"], Value::Null);
    assert!(strs(&c["spec"]["env"]).contains(&"APP_MODE=fixture".to_string()));
    assert_eq!(c["spec"]["seccomp"][0], "SCMP_ACT_ERRNO");
    let init = process(&v, 1);
    assert_eq!(strs(&init["argv"])[..2], ["sh", "-c"]);
    assert!(strs(&init["env"]).contains(&"APP_MODE=fixture".to_string()));
    assert_eq!(process(&v, 14)["ppid"], 1);
    assert_eq!(strs(&process(&v, 14)["argv"]), ["sleep", "1"]);
    let data = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountpoint"] == "/data")
        .unwrap();
    assert_eq!(data["external"], "/data");
    // Mount order: the root first, each parent before its children.
    let ms = v["mounts"].as_array().unwrap();
    assert_eq!(ms[0]["mountpoint"], "/");
    for (i, m) in ms.iter().enumerate() {
        if let Some(p) = ms.iter().position(|x| x["mnt_id"] == m["parent_id"]) {
            assert!(p < i, "{} before its parent", m["mountpoint"]);
        }
    }
    let h = inspect_json(&["--search", "APP_MODE=fixture", a.to_str().unwrap()]);
    let pids: Vec<u64> = h["search"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["pid"].as_u64().unwrap())
        .collect();
    assert!(pids.contains(&1) && pids.contains(&14), "{pids:?}");
}
