//! Lazy (post-copy) restore: `cryo restore --lazy-pages` runs the tree before its memory has
//! arrived; `cryo lazy-pages` serves each page on first touch (from the images, or from the
//! page server a `cryo dump --lazy-pages` keeps) and pushes the rest; a lost page source
//! kills the tree, and nothing is left behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use integration::*;

/// A TCP port free right now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cryo lazy-pages -D DIR [extra]`, once its socket is there (not probed by connecting: the
/// daemon serves the first restore that connects).
fn daemon(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let _ = std::fs::remove_file(dir.join("lazy-pages.socket"));
    let child = Command::new(cryo_bin())
        .args([
            "lazy-pages",
            "-D",
            dir.to_str().unwrap(),
            "-v4",
            "-o",
            "lazy.log",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the lazy-pages socket", 20, || {
        dir.join("lazy-pages.socket").exists()
    });
    child
}

/// The daemon's counts from its last log line.
fn counted(dir: &Path, what: &str) -> u64 {
    let l = log(dir, "lazy.log");
    let line = l
        .lines()
        .rfind(|l| l.contains("lazy pages: ") && l.contains(what))
        .unwrap_or_else(|| panic!("no '{what}' in lazy.log:\n{l}"));
    line.split(what)
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A 256 MiB process restored lazily with the background push held back: its checksum,
/// computed by the restored program touching every page, is the one it had, and every page it
/// read came through a fault. Once it exits, the daemon ends cleanly.
#[test]
fn lazily_restored_memory_comes_on_first_touch() {
    let dir = scratch("lazy-touch");
    let (pid, out) = start_memhog(&dir, 256);
    let _g = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let mut d = daemon(&img, &[], &[("CRYO_FAULT_PAUSE", "lazy-push:600")]);
    restore_with(&img, &["--lazy-pages"]);
    assert!(alive(pid), "the restored process runs");
    assert_eq!(
        memhog_sum(pid, &out),
        before,
        "checksum after a lazy restore"
    );
    kill(pid);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(st.success(), "daemon: {st}\n{}", log(&img, "lazy.log"));
    assert!(
        counted(&img, "faulted=") >= 65536,
        "the program's reads brought its pages:\n{}",
        log(&img, "lazy.log")
    );
    assert_eq!(counted(&img, "pushed="), 0, "nothing was pushed");
}

/// Without a pause the daemon pushes every page in the background and exits once all are
/// in; the checksum is then the one the process had.
#[test]
fn lazy_restore_brings_every_page() {
    let dir = scratch("lazy-all");
    let (pid, out) = start_memhog(&dir, 256);
    let _g = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let mut d = daemon(&img, &[], &[]);
    restore_with(&img, &["--lazy-pages"]);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(st.success(), "daemon: {st}\n{}", log(&img, "lazy.log"));
    assert!(log(&img, "lazy.log").contains("every page is in"));
    assert_eq!(
        memhog_sum(pid, &out),
        before,
        "checksum once every page arrived"
    );
}

/// `dump --lazy-pages --port N` keeps the memory on the source and serves it; on the
/// destination (a copy of the images without those pages) `lazy-pages --page-server` takes
/// it from there. The images hold none of the lazy pages; the checksum is the process's.
#[test]
fn lazy_restore_from_a_page_server() {
    let dir = scratch("lazy-ps");
    let (pid, out) = start_memhog(&dir, 256);
    let _g = KillOnDrop(pid);
    let before = memhog_sum(pid, &out);
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let port = free_port().to_string();
    let mut dumper = Command::new(cryo_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", src.to_str().unwrap()])
        .args(["--lazy-pages", "--address", "127.0.0.1", "--port", &port])
        .args(["-v4", "-o", "dump.log"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the dump's images", 120, || {
        log(&src, "dump.log").contains("waiting for the lazy-pages daemon")
    });
    wait_gone(pid);
    std::fs::create_dir_all(&dst).unwrap();
    let mut size = 0;
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "dump.log" {
            size += e.metadata().unwrap().len();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    assert!(
        size < 64 << 20,
        "the lazy pages stayed on the source ({size} bytes of images)"
    );
    let mut d = daemon(
        &dst,
        &["--page-server", "--address", "127.0.0.1", "--port", &port],
        &[],
    );
    restore_with(&dst, &["--lazy-pages"]);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(st.success(), "daemon: {st}\n{}", log(&dst, "lazy.log"));
    let st = dumper.wait_within("cryo dump", CHILD_SECS);
    assert!(st.success(), "dump: {st}\n{}", log(&src, "dump.log"));
    assert_eq!(
        memhog_sum(pid, &out),
        before,
        "checksum after a lazy migration"
    );
}

/// The page source dies while the restored process still lacks most of its memory: the
/// daemon kills the process (never lets it run on zero-filled memory) and fails, and no
/// process of the restore or of cryo is left.
#[test]
fn a_lost_page_source_kills_the_tree() {
    let dir = scratch("lazy-lost");
    let (pid, out) = start_memhog(&dir, 64);
    let _g = KillOnDrop(pid);
    memhog_sum(pid, &out);
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let port = free_port().to_string();
    let mut dumper = Command::new(cryo_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", src.to_str().unwrap()])
        .args(["--lazy-pages", "--address", "127.0.0.1", "--port", &port])
        .args(["-v4", "-o", "dump.log"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the dump's images", 120, || {
        log(&src, "dump.log").contains("waiting for the lazy-pages daemon")
    });
    wait_gone(pid);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let mut d = daemon(
        &dst,
        &["--page-server", "--address", "127.0.0.1", "--port", &port],
        &[("CRYO_FAULT_PAUSE", "lazy-push:600")],
    );
    restore_with(&dst, &["--lazy-pages"]);
    assert!(alive(pid));
    // The source goes away; the next page the program needs cannot come.
    dumper.kill().unwrap();
    dumper.wait_within("cryo dump", CHILD_SECS);
    signal(pid, libc::SIGUSR1);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(!st.success(), "the daemon reports the loss");
    let l = log(&dst, "lazy.log");
    assert!(l.contains("page source is lost"), "{l}");
    wait_gone(pid);
    assert_eq!(
        lines(&out).iter().filter(|l| l.starts_with("sum")).count(),
        1,
        "no checksum came from partial memory"
    );
}

/// The daemon itself is killed (SIGKILL: no cleanup) while the restored process still lacks
/// most of its memory: its keeper, which holds a copy of every userfaultfd meanwhile (so a
/// fault waits instead of reading zeros), kills the process. No checksum ever comes from
/// zero-filled memory, and nothing of the restore is left.
#[test]
fn a_killed_daemon_takes_the_tree_with_it() {
    let dir = scratch("lazy-killed");
    let (pid, out) = start_memhog(&dir, 64);
    let _g = KillOnDrop(pid);
    memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let mut d = daemon(&img, &[], &[("CRYO_FAULT_PAUSE", "lazy-push:600")]);
    restore_with(&img, &["--lazy-pages"]);
    assert!(alive(pid));
    wait_for("the keeper", 20, || {
        log(&img, "lazy.log").contains("keeper started")
    });
    d.kill().unwrap();
    d.wait_within("cryo lazy-pages", CHILD_SECS);
    // The program reads all of its memory now: it must die, not sum zeros.
    let _ = signal_if_alive(pid);
    wait_gone(pid);
    assert_eq!(
        lines(&out).iter().filter(|l| l.starts_with("sum")).count(),
        1,
        "no checksum came from zero-filled memory"
    );
}

/// The largest pages-*.img of the images directory `img` (the memhog's heap).
fn largest_pages_image(img: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(img)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// SIGUSR1 to `pid` if it still exists (the keeper may already have killed it).
fn signal_if_alive(pid: i32) -> bool {
    alive(pid) && {
        signal(pid, libc::SIGUSR1);
        true
    }
}

/// A lazy restore does not hash the pages images before the tree starts (that took ~1 s for
/// 2 GiB before its first instruction): its daemon checks them against the manifest in the
/// background while it serves them, and damage found there kills the tree, loudly, as a lost
/// page source does. What the daemon was told to remove once every page is in (as `receive
/// --lazy-pages` tells it: the received images) stays: a restore may be tried again from it.
#[test]
fn damaged_pages_found_by_the_daemon_kill_the_tree() {
    let dir = scratch("lazy-damaged");
    let (pid, out) = start_memhog(&dir, 64);
    let _g = KillOnDrop(pid);
    memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let pages = largest_pages_image(&img);
    let mut data = std::fs::read(&pages).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(&pages, &data).unwrap();
    let received = dir.join("received");
    std::fs::create_dir_all(&received).unwrap();
    std::fs::write(received.join("pages-1.img"), b"x").unwrap();
    let remove = format!("R:{}", received.display());
    let mut d = daemon(
        &img,
        &[],
        &[
            ("CRYO_FAULT_PAUSE", "lazy-push:600"),
            ("CRYO_LAZY_REMOVE_AFTER", &remove),
        ],
    );
    // The daemon may find the damage while the restore is still finishing, which then
    // fails as the tree dies under it: either way nothing may be left running.
    let _ = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "--lazy-pages",
        "-d",
        "-v4",
        "-o",
        "restore.log",
    ]);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(!st.success(), "the daemon should fail");
    let l = log(&img, "lazy.log");
    assert!(
        l.contains("pages images are damaged") && l.contains("killed"),
        "{l}"
    );
    assert!(
        received.join("pages-1.img").exists(),
        "a failed daemon removed what it was to remove once every page is in: {l}"
    );
    wait_gone(pid);
    assert_eq!(
        lines(&out).iter().filter(|l| l.starts_with("sum")).count(),
        1,
        "no checksum came from damaged memory"
    );
}

/// The daemon copies pages straight from its mapping of the pages image: an image cut short
/// while the tree still lacks most of its memory (after the daemon checked it against the
/// manifest) is a lost page source, found when the next page is copied: the tree is killed,
/// named so in the daemon's log, and no checksum comes from memory that never arrived.
#[test]
fn a_pages_image_cut_short_under_the_daemon_kills_the_tree() {
    let dir = scratch("lazy-cut");
    let (pid, out) = start_memhog(&dir, 64);
    let _g = KillOnDrop(pid);
    memhog_sum(pid, &out);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let pages = largest_pages_image(&img);
    let mut d = daemon(&img, &[], &[("CRYO_FAULT_PAUSE", "lazy-push:600")]);
    restore_with(&img, &["--lazy-pages"]);
    assert!(alive(pid));
    wait_for("the daemon's check of the images", 60, || {
        log(&img, "lazy.log").contains("match the manifest")
    });
    // Past the first MiB: the program's first touches after the restore are elsewhere.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    // The program reads all of its memory now: the daemon cannot bring it.
    let _ = signal_if_alive(pid);
    let st = d.wait_within("cryo lazy-pages", CHILD_SECS);
    assert!(!st.success(), "the daemon should fail");
    let l = log(&img, "lazy.log");
    assert!(l.contains("page source is lost"), "{l}");
    assert!(l.contains("shorter"), "{l}");
    wait_gone(pid);
    assert_eq!(
        lines(&out).iter().filter(|l| l.starts_with("sum")).count(),
        1,
        "no checksum came from memory that never arrived"
    );
}
