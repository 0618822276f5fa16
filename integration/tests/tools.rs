//! Format and CLI compatibility: `crit` (Debian's CRIU tools) decodes every image cryo
//! writes, `cryo show` decodes images CRIU 4.2 wrote, `cryo check` answers like `criu check`,
//! and CRIU options cryo lacks are refused by name.

use std::path::Path;
use std::process::Command;

use integration::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn image_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            (n.ends_with(".img") && !n.starts_with("pages-")) || n.starts_with("stats-")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn crit_decodes_every_image_cryo_writes() {
    let crit = ["/usr/bin/crit", "/usr/local/bin/crit"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(crit) = crit else {
        panic!("crit not installed: integration/test.sh installs Debian's criu package for it");
    };
    let (img, pid) = dumped_sleep("crit", &["--leave-running"]);
    let files = image_files(&img);
    for must in [
        "inventory.img",
        "pstree.img",
        "files.img",
        "seccomp.img",
        "stats-dump",
    ] {
        assert!(img.join(must).exists(), "{must} missing");
    }
    for must in ["core", "mm", "pagemap", "fs", "ids"] {
        assert!(
            img.join(format!("{must}-{pid}.img")).exists(),
            "{must}-{pid}.img missing"
        );
    }
    assert!(img.join("pages-1.img").exists() && img.join("fdinfo-2.img").exists());
    for f in files {
        let o = Command::new(crit).arg("show").arg(&f).output().unwrap();
        assert!(
            o.status.success(),
            "crit show {} failed: {}",
            f.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        // And our own decoder agrees on the entry count.
        let ours = cryo(&["show", f.to_str().unwrap()]);
        assert!(ours.status.success());
        let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        assert_eq!(
            a["entries"].as_array().unwrap().len(),
            b["entries"].as_array().unwrap().len(),
            "{}",
            f.display()
        );
    }
    // Page counts in stats-dump match the pages image, as CRIU's test suite checks.
    let stats: serde_json::Value =
        serde_json::from_slice(&cryo(&["show", img.join("stats-dump").to_str().unwrap()]).stdout)
            .unwrap();
    let written = stats["entries"][0]["dump"]["pages_written"]
        .as_u64()
        .unwrap();
    let size = std::fs::metadata(img.join("pages-1.img")).unwrap().len();
    assert_eq!(written * 4096, size);
}

#[test]
fn cryo_show_decodes_criu_42_images() {
    let dir = root().join("integration/fixtures/criu-4.2-sleep");
    for f in image_files(&dir) {
        let o = cryo(&["show", f.to_str().unwrap()]);
        assert!(o.status.success(), "cryo show {}", f.display());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(!v["entries"].as_array().unwrap().is_empty() || f.ends_with("seccomp.img"));
    }
    let core: serde_json::Value = serde_json::from_slice(
        &cryo(&["show", dir.join("core-9055.img").to_str().unwrap()]).stdout,
    )
    .unwrap();
    assert_eq!(core["magic"], "CORE");
    assert_eq!(core["entries"][0]["tc"]["comm"], "sleep");
    assert_eq!(core["entries"][0]["thread_info"]["gpregs"]["orig_ax"], 230); // clock_nanosleep
    let pm: serde_json::Value = serde_json::from_slice(
        &cryo(&["show", dir.join("pagemap-9055.img").to_str().unwrap()]).stdout,
    )
    .unwrap();
    assert_eq!(pm["entries"][0]["pages_id"], 1);
    assert!(pm["entries"][1]["nr_pages"].as_u64().unwrap() > 0);
    // Raw and foreign files give a clear error, not a panic.
    let o = cryo(&["show", "/etc/hostname"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown image magic"));
}

/// CRIU's images of a TCP server with a live connection (integration/fixtures/criu-4.2-tcp-netns):
/// its `inetsk` records and its tcp-stream image, whose receive-queue bytes follow the entry.
#[test]
fn cryo_show_decodes_criu_42_tcp_images() {
    let dir = root().join("integration/fixtures/criu-4.2-tcp-netns");
    for f in image_files(&dir) {
        let o = cryo(&["show", f.to_str().unwrap()]);
        assert!(o.status.success(), "cryo show {}", f.display());
    }
    let files: serde_json::Value =
        serde_json::from_slice(&cryo(&["show", dir.join("files.img").to_str().unwrap()]).stdout)
            .unwrap();
    let isk: Vec<&serde_json::Value> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("isk"))
        .collect();
    // A listener (state 10) and the accepted connection (state 1), both on port 7700.
    let mut states: Vec<u64> = isk.iter().map(|i| i["state"].as_u64().unwrap()).collect();
    states.sort();
    assert_eq!(states, [1, 10], "{isk:?}");
    assert!(isk.iter().all(|i| i["src_port"] == 7700));
    let conn = isk.iter().find(|i| i["state"] == 1).unwrap();
    let ino = conn["ino"].as_u64().unwrap();
    let ts = dir.join(format!("tcp-stream-{ino:x}.img"));
    let v: serde_json::Value =
        serde_json::from_slice(&cryo(&["show", ts.to_str().unwrap()]).stdout).unwrap();
    let e = v["entries"].as_array().unwrap();
    assert_eq!(e.len(), 1, "the queue bytes are not an entry: {v}");
    assert_eq!(e[0]["inq_len"], 35);
    assert_eq!(e[0]["outq_len"], 0);
    assert_eq!(e[0]["opt_mask"], 7);
}

#[test]
fn check_answers_like_criu() {
    let o = cryo(&["check"]);
    assert!(o.status.success(), "cryo check fails on this machine");
    assert!(stdout(&o).contains("Looks good."));
    // zdtm's spelling, single-dash long option included.
    let o = cryo(&[
        "check",
        "--no-default-config",
        "-verbosity=0",
        "--feature",
        "get_rseq_conf",
    ]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("get_rseq_conf is supported"));
    // Soft-dirty is off on this kernel, but userfaultfd async write protection tracks
    // written pages (Linux 6.7+): answered truthfully, naming the method.
    let o = cryo(&["check", "--feature", "mem_dirty_track"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("mem_dirty_track is supported"));
    let o = cryo(&["check", "--json", "--all"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "mem_dirty_track"
            && f["detail"].as_str().unwrap_or("").starts_with("uffd-wp")));
    let o = cryo(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "pagemap_scan" && f["ok"] == true));
}

#[test]
fn unimplemented_criu_options_are_refused_by_name() {
    let o = cryo(&["dump", "-t", "1", "-D", "/tmp/cryo-x", "--stream"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--stream is not supported"));
    let o = cryo(&[
        "restore",
        "-D",
        "/tmp/cryo-x",
        "--lsm-profile",
        "apparmor:x",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lsm-profile is not supported"));
    let o = cryo(&["restore", "-D", "/tmp/cryo-x", "--external", "unix[12]"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unix[..]"));
    let o = cryo(&["pre-dump", "-t", "1", "-D", "/tmp/cryo-x", "--auto-dedup"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--auto-dedup is not supported"));
    let o = cryo(&["--help"]);
    assert!(o.status.success() && stdout(&o).contains("restore"));
    let o = cryo(&["-V"]);
    assert!(stdout(&o).starts_with("Version: "));
}

#[test]
fn invoked_as_criu_through_a_symlink() {
    let dir = scratch("symlink");
    let link = dir.join("criu");
    std::os::unix::fs::symlink(cryo_bin(), &link).unwrap();
    let o = Command::new(&link)
        .args(["check", "--feature", "get_rseq_conf"])
        .output()
        .unwrap();
    assert!(o.status.success());
}

/// An images directory used for an earlier dump (runc's default `./checkpoint`) may still
/// hold an optional image the new dump did not write: it is not in the new
/// cryo-manifest.json, so restore ignores it instead of reading it.
#[test]
fn leftover_images_of_an_earlier_dump_are_ignored() {
    let (img, pid) = dumped_sleep("leftover", &[]);
    // A file-locks image from "an earlier dump" (garbage, were it read).
    std::fs::write(img.join("filelocks.img"), b"not an image at all").unwrap();
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d", "-v4", "-o", "restore.log"]);
    assert!(
        o.status.success(),
        "restore failed:\n{}",
        log(&img, "restore.log")
    );
    let _g = KillOnDrop(pid);
    let restore_log = log(&img, "restore.log");
    assert!(
        restore_log.contains("not in cryo-manifest.json")
            && restore_log.contains("image=filelocks.img"),
        "{restore_log}"
    );
    kill(pid);
}
