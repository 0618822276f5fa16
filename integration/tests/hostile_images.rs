//! Hostile images that must not lead cryo outside what the user gave it: the mount points
//! and bind sources of a `mountpoints` image are resolved inside `--root` only, whatever
//! symlinks, `..` or procfs magic links (a proc mount the image itself asks for) they go
//! through. Resolution is run without mounting anything of the image
//! (`kinds::mounts::resolve_dry`), in a private mount namespace of the test's own thread
//! where the only mount is the proc that a restore would have put under the root.

use std::path::{Path, PathBuf};

use cryo::image::pb;
use cryo::kinds::mounts;

fn entry(mountpoint: &str, root: &str, fsname: &str) -> pb::MntEntry {
    pb::MntEntry {
        mountpoint: mountpoint.into(),
        root: root.into(),
        fsname: Some(fsname.into()),
        root_dev: 1,
        ..Default::default()
    }
}

/// Runs `f` on a thread with a private mount namespace (and so its own root and cwd).
fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare and mount with valid C strings; they change only this thread's
            // mount namespace (CLONE_NEWNS also unshares its file system context).
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
                assert_eq!(
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null()
                    ),
                    0,
                    "make / private"
                );
            }
            f()
        })
        .join()
        .expect("the test thread")
    })
}

fn mount_proc(at: &Path) {
    let p = std::ffi::CString::new(at.to_str().unwrap()).unwrap();
    // SAFETY: mount with valid C strings, in this thread's private mount namespace.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            p.as_ptr(),
            c"proc".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount proc at {}", at.display());
}

#[test]
fn mount_points_and_bind_sources_stay_inside_the_root() {
    let base = std::env::temp_dir().join(format!("cryo-it-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let outside = base.join("outside");
    for d in [&root, &outside, &root.join("proc"), &root.join("etc")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(outside.join("secret"), "host file").unwrap();
    // Symlinks the root file system (or a tmpfs the image fills) could hold.
    std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", root.join("up")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    std::os::unix::fs::symlink("/proc/1/root", root.join("magic")).unwrap();
    let out = outside.display().to_string();
    // Ways to name `outside` from inside the root.
    let hostile = [
        format!("/up{out}"),
        format!("/abs{out}"),
        "/out".to_string(),
        format!("/../../..{out}"),
        format!("/proc/1/root{out}"),
        format!("/proc/self/root{out}"),
        format!("/magic{out}"),
    ];
    let results = in_private_mount_ns(|| {
        mount_proc(&root.join("proc"));
        let mut results = Vec::new();
        for m in &hostile {
            // A tmpfs mounted there, and a bind of the tree's own file there (its source
            // `root` on the root mount's device) onto a plain mount point.
            let as_target = vec![
                entry("/", "/", "ext4"),
                entry(&format!("{m}/made"), "/", "tmpfs"),
            ];
            let as_source = vec![
                entry("/", "/", "ext4"),
                entry("/bind-target", &format!("{m}/secret"), "ext4"),
            ];
            for list in [as_target, as_source] {
                let r = mounts::resolve_dry(&root, &list, &Default::default());
                results.push((m.clone(), r.map_err(|e| e.to_string())));
            }
        }
        results
    });
    let canon_root = root.canonicalize().unwrap();
    let mut escaped = Vec::new();
    for (m, r) in &results {
        eprintln!("{m}: {r:?}");
        if let Ok(paths) = r {
            for p in paths {
                if !p.starts_with(&canon_root) {
                    escaped.push(format!("{m} -> {}", p.display()));
                }
            }
        }
    }
    let made: Vec<PathBuf> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("secret"))
        .collect();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        escaped.is_empty(),
        "resolved outside the root: {escaped:#?}"
    );
    assert!(made.is_empty(), "made outside the root: {made:?}");
}
