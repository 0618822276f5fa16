//! `dump --compress`: pages images written compressed (`pages-N.img.zst`). A python process
//! holding a large list of strings (its checksum printed on SIGUSR1) is dumped plain and
//! compressed: the compressed pages are at least 2x smaller, restore gives the same checksum,
//! CRIU 4.2 (when present at $CRIU or /opt/criu42/criu) refuses the compressed dump and starts
//! nothing, a pre-dump chain works compressed, and a damaged block is refused before any
//! process exists.

use std::path::{Path, PathBuf};

use integration::*;

/// A python heap of `n` short strings of words; "sum HEX" (sha256 of them all) on SIGUSR1.
const PY_HEAP: &str = r#"
import sys, signal, hashlib, random
out, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
words = ["alpha", "beta", "gamma", "delta", "user", "name", "value", "http://example.com/",
         "id", "count", "error", "info", "request", "session", "token", "2026-12-07"]
data = [" ".join(random.choice(words) for _ in range(8)) + " %d" % i for i in range(n)]
def on_usr1(sig, frame):
    h = hashlib.sha256()
    for s in data:
        h.update(s.encode())
    with open(out, "a") as f:
        f.write("sum %s\n" % h.hexdigest())
signal.signal(signal.SIGUSR1, on_usr1)
with open(out, "a") as f:
    f.write("ready\n")
while True:
    signal.pause()
"#;

/// Starts the python heap in `dir`; returns (pid, output file).
fn start_heap(dir: &Path, n: u32) -> (i32, PathBuf) {
    let out = dir.join("heap.out");
    let pid = spawn(
        &[
            "python3",
            "-c",
            PY_HEAP,
            out.to_str().unwrap(),
            &n.to_string(),
        ],
        &dir.join("heap.log"),
    );
    wait_for("the python heap to be built", 120, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    (pid, out)
}

/// Total size of the files of `dir` whose name starts with `pages-` and ends with `suffix`.
fn pages_bytes(dir: &Path, suffix: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("pages-") && n.ends_with(suffix)
        })
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The heap's checksum once it sleeps in pause() again: a signal that comes while a restored
/// process is still on its way back into its interrupted pause() runs the C handler and then
/// restarts the pause, so python never runs its own handler (as for any such process).
fn heap_sum(pid: i32, out: &Path) -> String {
    wait_for("the heap to sleep in pause()", 60, || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|s| s.starts_with(&format!("{} ", libc::SYS_pause)))
    });
    memhog_sum(pid, out)
}

fn criu() -> Option<String> {
    let c = std::env::var("CRIU").unwrap_or_else(|_| "/opt/criu42/criu".into());
    Path::new(&c).exists().then_some(c)
}

fn restore_fails(img: &Path) -> String {
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
    ]);
    assert!(!o.status.success(), "the restore should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn compressed_dump_is_smaller_restores_and_criu_refuses_it() {
    let dir = scratch("compress-heap");
    let (pid, out) = start_heap(&dir, 600_000);
    let _guard = KillOnDrop(pid);
    let sum = heap_sum(pid, &out);

    let plain = dir.join("plain");
    dump(pid, &plain, &["-R"]);
    let z = dir.join("z");
    dump(pid, &z, &["--compress"]);
    wait_gone(pid);

    let raw = pages_bytes(&plain, ".img");
    let packed = pages_bytes(&z, ".img.zst");
    eprintln!("pages: plain {raw} bytes, compressed {packed} bytes");
    assert!(
        raw > 50 << 20,
        "the heap is in the plain dump ({raw} bytes)"
    );
    assert_eq!(
        pages_bytes(&z, ".img"),
        0,
        "no raw pages image in a compressed dump"
    );
    assert!(
        packed * 2 <= raw,
        "compressed pages ({packed} bytes) are not 2x smaller than plain ({raw} bytes)"
    );

    // `cryo show` decodes the compressed image's head and blocks.
    let zname = std::fs::read_dir(&z)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-") && n.ends_with(".img.zst"))
        .max_by_key(|n| std::fs::metadata(z.join(n)).unwrap().len())
        .unwrap();
    let o = cryo(&["show", z.join(&zname).to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o, "cryo show")).unwrap();
    assert_eq!(v["magic"], "PAGES_ZST");
    assert_eq!(
        v["compressed_size"].as_u64().unwrap(),
        std::fs::metadata(z.join(&zname)).unwrap().len()
    );
    assert!(v["size"].as_u64().unwrap() > 2 * v["compressed_size"].as_u64().unwrap());

    // CRIU 4.2 refuses the compressed dump clearly and leaves nothing running.
    if let Some(criu) = criu() {
        let o = std::process::Command::new(&criu)
            .args(["restore", "-D", z.to_str().unwrap(), "-d", "-v4"])
            .args(["-o", "criu-restore.log"])
            .output()
            .unwrap();
        let said = log(&z, "criu-restore.log");
        let errors: Vec<&str> = said.lines().filter(|l| l.contains("Error")).collect();
        eprintln!("CRIU 4.2 restore said:\n{}", errors.join("\n"));
        assert!(!o.status.success(), "CRIU restored a compressed dump");
        assert!(
            errors
                .iter()
                .any(|l| l.contains("Missing required plugin: cryo-zstd-pages")),
            "CRIU's refusal does not name the compressed dump's mark:\n{said}"
        );
        assert!(!alive(pid), "CRIU left process {pid} behind");
    }

    restore(&z);
    assert_eq!(
        heap_sum(pid, &out),
        sum,
        "the heap changed over the restore"
    );
    kill(pid);
}

#[test]
fn compressed_pre_dump_chain_restores() {
    let dir = scratch("compress-chain");
    let (pid, out) = start_heap(&dir, 200_000);
    let _guard = KillOnDrop(pid);
    let sum = heap_sum(pid, &out);
    let p = pid.to_string();
    let pre = dir.join("pre");
    let o = cryo(&[
        "pre-dump",
        "-t",
        &p,
        "-D",
        pre.to_str().unwrap(),
        "--compress",
        "-v4",
        "-o",
        "dump.log",
    ]);
    assert!(
        o.status.success(),
        "pre-dump failed:\n{}",
        log(&pre, "dump.log")
    );
    assert!(pages_bytes(&pre, ".img.zst") > 0);
    assert_eq!(pages_bytes(&pre, ".img"), 0);
    let fin = dir.join("final");
    dump(
        pid,
        &fin,
        &["--compress", "--prev-images-dir", "../pre", "--track-mem"],
    );
    wait_gone(pid);
    restore(&fin);
    assert_eq!(
        heap_sum(pid, &out),
        sum,
        "the heap changed over the restore"
    );
    kill(pid);
}

#[test]
fn a_damaged_compressed_block_is_refused_before_anything_runs() {
    let dir = scratch("compress-damaged");
    let (pid, _out) = start_heap(&dir, 100_000);
    let _guard = KillOnDrop(pid);
    let z = dir.join("z");
    dump(pid, &z, &["--compress"]);
    wait_gone(pid);
    let zname = std::fs::read_dir(&z)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-") && n.ends_with(".img.zst"))
        .max_by_key(|n| std::fs::metadata(z.join(n)).unwrap().len())
        .unwrap();
    let path = z.join(&zname);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();

    // The manifest's digests catch it first.
    let err = restore_fails(&z);
    assert!(
        err.contains(&zname) && err.contains("cryo-manifest.json"),
        "{err}"
    );
    assert!(!alive(pid), "a process was left behind");

    // Without the manifest, the block's own digest (or zstd) does.
    std::fs::remove_file(z.join("cryo-manifest.json")).unwrap();
    let err = restore_fails(&z);
    assert!(err.contains(&zname) && err.contains("corrupt"), "{err}");
    assert!(!alive(pid), "a process was left behind");
}

#[test]
fn compress_is_refused_with_a_page_server_or_lazy_pages() {
    let dir = scratch("compress-refused");
    for extra in [["--page-server"], ["--lazy-pages"]] {
        let mut a = vec![
            "dump",
            "-t",
            "1",
            "-D",
            dir.to_str().unwrap(),
            "--compress",
            "--port",
            "1",
        ];
        a.extend(extra);
        let o = cryo(&a);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("--compress cannot be used with") && err.contains(extra[0]),
            "{err}"
        );
    }
}

/// The pages image of `img` that holds the most (the process's own, not its shmem).
fn largest_zst(img: &Path) -> String {
    std::fs::read_dir(img)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-") && n.ends_with(".img.zst"))
        .max_by_key(|n| std::fs::metadata(img.join(n)).unwrap().len())
        .unwrap()
}

/// A compressed restore streams: cryo decodes block by block into small buffers and never
/// holds the image, so its peak RSS (GNU time) stays far below the 256 MiB it restores. The
/// image read is the one the dump wrote (its inventory), not a leftover raw image beside it.
#[test]
fn a_compressed_restore_does_not_hold_the_image_in_memory() {
    let dir = scratch("compress-rss");
    let (pid, out) = start_memhog_with(&dir, 256, &["text"]);
    let _guard = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let z = dir.join("z");
    dump(pid, &z, &["--compress"]);
    wait_gone(pid);
    let zname = largest_zst(&z);
    // A raw image of the same number left by an earlier dump: not read (it holds garbage).
    let raw = z.join(zname.trim_end_matches(".zst"));
    std::fs::write(&raw, vec![0x5au8; 300 << 20]).unwrap();
    let d = z.to_str().unwrap();
    let Some((o, kib)) = cryo_peak_rss(&["restore", "-D", d, "-d", "-v4", "-o", "restore.log"])
    else {
        return skip("GNU time (/usr/bin/time) is needed to measure cryo's peak RSS");
    };
    assert!(
        o.status.success(),
        "restore failed:\n{}",
        log(&z, "restore.log")
    );
    eprintln!(
        "cryo restore of 256 MiB compressed: peak RSS {} MiB",
        kib / 1024
    );
    assert_eq!(
        memhog_sum(pid, &out),
        sum,
        "the memory changed over the restore"
    );
    assert!(
        kib < 64 << 10,
        "cryo's peak RSS restoring 256 MiB from a compressed image was {} MiB (at most 64 expected)",
        kib / 1024
    );
    kill(pid);
}

/// A compressed image whose sizes are hostile (no manifest to catch it): a block head
/// claiming a 4 GiB frame, and a head claiming 64 MiB blocks, are refused with the reason
/// before any process exists; nothing is allocated for them.
#[test]
fn a_hostile_block_size_is_refused() {
    let dir = scratch("compress-hostile");
    let (pid, _out) = start_memhog_with(&dir, 8, &["text"]);
    let _guard = KillOnDrop(pid);
    let z = dir.join("z");
    dump(pid, &z, &["--compress"]);
    wait_gone(pid);
    std::fs::remove_file(z.join("cryo-manifest.json")).unwrap();
    let zname = largest_zst(&z);
    let path = z.join(&zname);
    let good = std::fs::read(&path).unwrap();
    // Head: 8 + 8 + 4 + 4 + 8 bytes; then the first block's head: 8 + frame length (4) + digest.
    let (head, frame_len) = (32, 32 + 8);

    let mut bad = good.clone();
    bad[frame_len..frame_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let err = restore_fails(&z);
    assert!(
        err.contains(&zname) && err.contains("claims a frame of 4294967295 bytes"),
        "{err}"
    );
    assert!(!alive(pid), "a process was left behind");

    let mut bad = good.clone();
    bad[head - 12..head - 8].copy_from_slice(&(64u32 << 20).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let err = restore_fails(&z);
    assert!(
        err.contains(&zname) && err.contains("blocks of 67108864 bytes"),
        "{err}"
    );
    assert!(!alive(pid), "a process was left behind");
}

/// A compression thread that panics (a bug, injected here) fails the dump with an error
/// naming it instead of leaving the other threads waiting for its block forever; the
/// process runs on unchanged.
#[test]
fn a_panicking_compression_thread_fails_the_dump() {
    let dir = scratch("compress-panic");
    let (pid, out) = start_memhog_with(&dir, 64, &["text"]);
    let _guard = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let z = dir.join("z");
    let p = pid.to_string();
    let o = cryo_env(
        &["dump", "-t", &p, "-D", z.to_str().unwrap(), "--compress"],
        &[("CRYO_FAULT_INJECT", "compress-worker-panic")],
    );
    assert!(!o.status.success(), "the dump should have failed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a thread compressing the pages panicked"),
        "{err}"
    );
    assert!(alive(pid), "the dump's failure killed the process");
    assert_eq!(memhog_sum(pid, &out), sum, "the process changed");
    kill(pid);
}
