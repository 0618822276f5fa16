//! Files deleted while a process holds them (issue #12): regular files sparse or not,
//! FIFOs, device nodes, symlinks, O_TMPFILE files and directories (open, and as the working
//! directory). Each comes back as a "ghost" that the restored program sees exactly as
//! before: same content, holes, mode, times, queued bytes, device number, link target, and
//! the same deleted path; nothing is left on disk.

use integration::*;

/// Total bytes of the ghost-file-*.img images in `img`.
fn ghost_image_bytes(img: &std::path::Path) -> u64 {
    std::fs::read_dir(img)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ghost-file-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// integration/scripts/deleted.py holds one deleted file of each kind. Its 1 GiB sparse
/// file holds 8 KiB of data: the ghost limit counts the data (a 4 KiB limit refuses it,
/// naming the file and the option; the default 1 MiB takes it), the images hold only the
/// data, and the holes are holes again after restore.
#[test]
fn deleted_files_of_every_kind_come_back() {
    let dir = scratch("deleted");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let out = dir.join("out");
    let script = root().join("integration/scripts/deleted.py");
    let pid = spawn(
        &["python3", script.to_str().unwrap(), work.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);

    let e = dump_fails(pid, &dir.join("small"), &["--ghost-limit", "4K"]);
    assert!(
        e.contains("sparse (deleted)") && e.contains("8192 bytes") && e.contains("--ghost-limit"),
        "{e}"
    );
    assert!(alive(pid), "a refused dump left the process running");

    let img = dir.join("img");
    dump(pid, &img, &[]);
    let saved = ghost_image_bytes(&img);
    assert!(
        saved < 64 * 1024,
        "the ghost images take {saved} bytes: the sparse file's holes were saved"
    );
    wait_gone(pid);
    restore(&img);
    let left: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in the work directory: {left:?}");

    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 8);
    let got = lines(&out)[1..8].to_vec();
    let want = [
        format!(
            "sparse {} 8192 [4096, {}] True 0",
            (1u64 << 30) + 8192,
            (1u64 << 30) + 4096
        ),
        "attr 0o6604 123456 3 b'ributes'".to_string(),
        "fifo b'through the ghost fifo' 0o640".to_string(),
        "dev True 1 3 1".to_string(),
        "link True /some/target 0".to_string(),
        "tmp b'tmpfile data' 0".to_string(),
        format!("dir True 0 True {}/gone (deleted)", work.display()),
    ];
    assert_eq!(got, want);
}

/// A file removed from the name it was opened by but still linked elsewhere: refused
/// without `--link-remap` (the error says so); with it the dump leaves a temporary name
/// beside the old one, the restored fd is the very same inode (what it writes shows in the
/// other name), and the temporary name is gone after the restore.
#[test]
fn removed_file_with_another_name_is_reopened_through_a_link_remap() {
    let dir = scratch("linkremap");
    let out = dir.join("out");
    let script = r#"
import os, signal, sys
d = sys.argv[1]
f = os.open(d + "/a", os.O_RDWR | os.O_CREAT, 0o644)
os.write(f, b"before ")
os.link(d + "/a", d + "/b")
os.unlink(d + "/a")
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", f, flush=True)
signal.sigwait([signal.SIGUSR1])
os.write(f, b"after")
print("done", flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let fd = wait_ready(&out)[0];
    let e = dump_fails(pid, &dir.join("refused"), &[]);
    assert!(
        e.contains("a (deleted)") && e.contains("--link-remap"),
        "{e}"
    );
    assert!(alive(pid));
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "out" && n != "img" && n != "refused")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["b"], "a refused dump leaves no name behind");
    let img = dir.join("img");
    dump(pid, &img, &["--link-remap"]);
    let made = names();
    assert!(
        made.len() == 2 && made[1].starts_with("link_remap."),
        "{made:?}"
    );
    wait_gone(pid);
    restore(&img);
    use std::os::unix::fs::MetadataExt;
    let ino = |p: String| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(format!("/proc/{pid}/fd/{fd}")),
        ino(dir.join("b").display().to_string()),
        "the restored fd is another file"
    );
    assert_eq!(
        names(),
        ["b"],
        "the temporary name is removed after the restore"
    );
    signal(pid, libc::SIGUSR1);
    wait_for("the write", 10, || lines(&out).len() >= 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("b")).unwrap(),
        "before after"
    );
}

/// An inotify watch on a file deleted while open: the watch comes back on the restored
/// ghost, so closing the written file after restore is reported (IN_CLOSE_WRITE on the
/// file's own watch descriptor).
#[test]
fn inotify_watch_on_a_deleted_file_follows_its_ghost() {
    let dir = scratch("inotify-ghost");
    let out = dir.join("out");
    let script = r#"
import ctypes, os, select, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
ify = libc.inotify_init1(os.O_NONBLOCK)
f = os.open(d + "/watched", os.O_RDWR | os.O_CREAT, 0o644)
IN_CLOSE_WRITE = 0x8
wd = libc.inotify_add_watch(ify, (d + "/watched").encode(), IN_CLOSE_WRITE)
os.unlink(d + "/watched")
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", wd, flush=True)
signal.sigwait([signal.SIGUSR1])
os.close(f)
select.select([ify], [], [], 5)
ev = os.read(ify, 4096)
got = set()
while ev:
    w, mask, cookie, n = struct.unpack("iIII", ev[:16])
    got.add((w, mask & IN_CLOSE_WRITE))
    ev = ev[16 + n:]
print((wd, IN_CLOSE_WRITE) in got, flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[1], "True");
}

/// Deleted files on read-only mounts of a writable file system (zdtm's ghost_on_rofs): a
/// process holds a deleted file on a tmpfs made read-only (`remount,bind,ro`) and one on a
/// read-only, nosuid bind of it. The restore makes the ghosts through a writable copy of
/// the mount nobody sees (creating them there failed with EROFS): the fds read their
/// content, the mounts are still read-only, and nothing is left in them.
#[test]
fn deleted_files_on_read_only_mounts_come_back() {
    let dir = scratch("ghost-rofs");
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let _mounts = Unmount(vec![work.join("bind"), work.join("ro")]);
    let out = dir.join("out");
    let script = root().join("integration/scripts/ghost_rofs.py");
    let pid = spawn(
        &["python3", script.to_str().unwrap(), work.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        "read b'ghost 1' b'ghost 2' rofs True left []"
    );
}
