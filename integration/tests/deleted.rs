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
