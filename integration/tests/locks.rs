//! File locks (`--file-locks`, RPC `file_locks`; containerd's runc always asks): a process
//! holding a POSIX, an OFD and a flock lock (the flock's open file description shared with a
//! forked child) is refused without `--file-locks`, dumped with it, and restored holding
//! exactly the same locks again (checked in /proc/locks: kind, type, owner pid, range, file).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use integration::*;

/// The /proc/locks lines on the file at `p` (inode), without their leading index.
fn locks_on(p: &Path) -> Vec<String> {
    let ino = std::fs::metadata(p).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("->"))
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .and_then(|f| f.rsplit(':').next())
                .is_some_and(|i| i == ino.to_string())
        })
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter(|w| w.matches(':').count() != 2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn posix_ofd_and_flock_locks_come_back() {
    let dir = scratch("locks");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = data.join("out");
    let pid = spawn(
        &[prog("locks").to_str().unwrap(), data.to_str().unwrap()],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the locks", 10, || lines(&out).len() > 3);
    let want = |p: i32| {
        vec![
            (
                data.join("posix"),
                vec![format!("POSIX ADVISORY WRITE {p} 10 19")],
            ),
            (
                data.join("ofd"),
                vec!["OFDLCK ADVISORY READ -1 100 EOF".to_string()],
            ),
            (
                data.join("flock"),
                vec![format!("FLOCK ADVISORY WRITE {p} 0 EOF")],
            ),
        ]
    };
    for (f, l) in want(pid) {
        assert_eq!(locks_on(&f), l, "{} before the dump", f.display());
    }
    // Without --file-locks: refused, as CRIU does, and the process goes on.
    let img = dir.join("img");
    let err = dump_fails(pid, &img, &[]);
    assert!(err.contains("--file-locks"), "{err}");
    assert!(alive(pid));
    let _ = std::fs::remove_dir_all(&img);
    dump(pid, &img, &["--file-locks"]);
    let pids = tree_pids(&img);
    assert_eq!(pids.len(), 2, "{pids:?}");
    let _guards: Vec<KillOnDrop> = pids.iter().map(|&p| KillOnDrop(p)).collect();
    wait_tree_gone(&img);
    for (f, _) in want(pid) {
        assert!(locks_on(&f).is_empty(), "{} still locked", f.display());
    }
    let n = lines(&out).len();
    restore(&img);
    wait_for("the counter after restore", 10, || {
        lines(&out).len() > n + 3
    });
    for (f, l) in want(pid) {
        assert_eq!(locks_on(&f), l, "{} after the restore", f.display());
    }
}
