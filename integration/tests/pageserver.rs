//! CRIU's page server protocol, both ends: `cryo page-server` receives what a dump sends
//! (CRIU 4.2's dump: a recorded exchange replayed here, since CI has no CRIU; and cryo's own),
//! `cryo dump|pre-dump --page-server` sends, pre-dump chains over it, and a page server that
//! dies mid-stream leaves the process running unharmed. The live exchanges with CRIU 4.2 in
//! both directions are `#[ignore]`d tests (they need CRIU built from source).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
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

/// `cryo page-server -D DIR --port PORT [extra]` in the foreground (a child), once listening.
fn page_server(dir: &Path, port: u16, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new(cryo_bin())
        .args(["page-server", "-D", dir.to_str().unwrap(), "--port"])
        .arg(port.to_string())
        .args(["--address", "127.0.0.1", "-v4", "-o", "ps.log"])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Not probed by connecting: the page server serves the first client that connects.
    wait_for("the page server to listen", 10, || {
        std::fs::read_to_string(dir.join("ps.log"))
            .unwrap_or_default()
            .contains("listening")
    });
    child
}

/// Copies the images a dump wrote locally next to those its page server wrote (what a user
/// does before restoring), leaving the server's `parent` link.
fn merge(local: &Path, server: &Path) {
    for e in std::fs::read_dir(local).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "parent" || !e.file_type().unwrap().is_file() {
            continue;
        }
        std::fs::copy(e.path(), server.join(&name)).unwrap();
    }
}

fn pagemap(dir: &Path, pid: i32) -> serde_json::Value {
    let o = cryo(&[
        "show",
        dir.join(format!("pagemap-{pid}.img")).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "pagemap-{pid}.img in {}", dir.display());
    serde_json::from_slice(&o.stdout).unwrap()
}

/// CRIU 4.2's `dump --page-server` of `sleep`, recorded (fixtures/criu-4.2-page-server,
/// made by make-page-server-fixture.sh), replayed to `cryo page-server`: it answers as CRIU's
/// does (no parent, CLOSE status 0) and writes every entry and every page byte in CRIU's
/// layout (`pagemap-PID.img` naming `pages-1.img`).
#[test]
fn criu_client_stream_is_received_as_criu_writes_it() {
    let rec =
        std::fs::read(root().join("integration/fixtures/criu-4.2-page-server/client.bin")).unwrap();
    let dir = scratch("ps-replay");
    let srv = dir.join("srv");
    let port = free_port();
    let mut child = page_server(&srv, port, &[]);
    let mut sk = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut at, mut entries, mut data, mut pid) = (0usize, Vec::new(), Vec::new(), 0u64);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    while at < rec.len() {
        let h = &rec[at..at + 32];
        at += 32;
        sk.write_all(h).unwrap();
        let cmd = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let (op, flags) = (cmd & 0xffff, cmd >> 16);
        let (nr, vaddr, dst) = (u64_at(h, 8), u64_at(h, 16), u64_at(h, 24));
        match op {
            4 => {
                let mut b = [0u8; 1];
                sk.read_exact(&mut b).unwrap();
                assert_eq!(b[0], 0, "no parent here");
                pid = dst >> 8;
            }
            5 => {
                let mut b = [0u8; 4];
                sk.read_exact(&mut b).unwrap();
            }
            1 | 6 => {
                entries.push((vaddr, nr, if op == 1 { 4 } else { flags }));
                if op == 1 || flags & 4 != 0 {
                    let n = usize::try_from(nr).unwrap() * 4096;
                    sk.write_all(&rec[at..at + n]).unwrap();
                    data.extend_from_slice(&rec[at..at + n]);
                    at += n;
                }
            }
            0x1023 | 0x1024 => {
                let mut b = [0u8; 4];
                sk.read_exact(&mut b).unwrap();
                assert_eq!(i32::from_le_bytes(b), 0, "CLOSE status");
            }
            other => panic!("unexpected command {other:#x} in the recording"),
        }
    }
    drop(sk);
    assert!(
        child.wait_within("cryo page-server", CHILD_SECS).success(),
        "{}",
        log(&srv, "ps.log")
    );
    assert!(!entries.is_empty() && pid > 0);
    let pid = i32::try_from(pid).unwrap();
    let pm = pagemap(&srv, pid);
    let got: Vec<(u64, u64, u64)> = pm["entries"].as_array().unwrap()[1..]
        .iter()
        .map(|e| {
            (
                e["vaddr"].as_u64().unwrap(),
                e["nr_pages"].as_u64().unwrap(),
                e["flags"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64)> = entries
        .iter()
        .map(|&(v, n, f)| (v, n, u64::from(f)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(pm["entries"][0]["pages_id"], 1);
    assert_eq!(std::fs::read(srv.join("pages-1.img")).unwrap(), data);
}

/// `cryo dump --page-server` to `cryo page-server -d`: no page touches the dump's directory;
/// merged with the server's, the images restore with the memory checksum of the dump.
#[test]
fn dump_to_a_page_server_and_restore() {
    let dir = scratch("ps-dump");
    let (pid, out) = start_memhog(&dir, 32);
    let _g = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let (srv, local) = (dir.join("srv"), dir.join("local"));
    std::fs::create_dir_all(&srv).unwrap();
    let port = free_port().to_string();
    let pidfile = srv.join("ps.pid");
    let o = cryo(&[
        "page-server",
        "-D",
        srv.to_str().unwrap(),
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "-d",
        "--pidfile",
        pidfile.to_str().unwrap(),
        "-v4",
        "-o",
        "ps.log",
    ]);
    assert!(
        o.status.success() && pidfile.exists(),
        "{}",
        log(&srv, "ps.log")
    );
    dump(
        pid,
        &local,
        &["--page-server", "--address", "127.0.0.1", "--port", &port],
    );
    wait_gone(pid);
    assert!(!local.join(format!("pagemap-{pid}.img")).exists());
    assert!(!std::fs::read_dir(&local).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("pages-")));
    let server_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the page server to end its session", 10, || {
        !alive(server_pid)
    });
    merge(&local, &srv);
    restore(&srv);
    assert_eq!(memhog_sum(pid, &out), sum);
}

/// A pre-dump chain whose pages all go to page servers (one per step, each with
/// `--prev-images-dir` to the step before, as CRIU's are run), then the final dump: the final
/// server directory takes most pages from its parents, and restores.
#[test]
fn pre_dump_chain_over_page_servers() {
    let dir = scratch("ps-chain");
    let out = dir.join("dirtier.out");
    let exe = prog("dirtier");
    let pid = spawn(
        &[exe.to_str().unwrap(), "32", out.to_str().unwrap(), "300"],
        &dir.join("d.log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("dirtier", 30, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    let p = pid.to_string();
    for i in 1..=3 {
        let (srv, local) = (dir.join(format!("s{i}")), dir.join(format!("l{i}")));
        let port = free_port();
        let prev_s = format!("../s{}", i - 1);
        let mut extra = vec![];
        if i > 1 {
            extra.extend(["--prev-images-dir", prev_s.as_str()]);
        }
        let mut server = page_server(&srv, port, &extra);
        if i == 3 {
            signal(pid, libc::SIGUSR2);
            wait_for("the writer to stop", 20, || {
                lines(&out).iter().any(|l| l == "stopped")
            });
        }
        let sum = (i == 3).then(|| memhog_sum(pid, &out));
        let prev_l = format!("../l{}", i - 1);
        let port = port.to_string();
        let mut a = vec![
            if i == 3 { "dump" } else { "pre-dump" },
            "-t",
            &p,
            "-D",
            local.to_str().unwrap(),
            "-v4",
            "-o",
            "dump.log",
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ];
        if i > 1 {
            a.extend(["--prev-images-dir", prev_l.as_str(), "--track-mem"]);
        }
        let o = cryo(&a);
        assert!(o.status.success(), "step {i}:\n{}", log(&local, "dump.log"));
        assert!(
            server.wait_within("cryo page-server", CHILD_SECS).success(),
            "{}",
            log(&srv, "ps.log")
        );
        if let Some(sum) = sum {
            wait_gone(pid);
            let parent: u64 = pagemap(&srv, pid)["entries"].as_array().unwrap()[1..]
                .iter()
                .filter(|e| e["flags"].as_u64() == Some(1))
                .map(|e| e["nr_pages"].as_u64().unwrap())
                .sum();
            assert!(parent > 32 * 256 / 2, "{parent} pages left in the parents");
            merge(&local, &srv);
            restore(&srv);
            assert_eq!(memhog_sum(pid, &out), sum);
        }
    }
}

/// A page server that dies in the middle of the pages: the dump fails naming the page
/// server, and the process runs on with its memory unchanged (checksum), untraced.
#[test]
fn page_server_dying_mid_stream_leaves_the_process_unharmed() {
    let dir = scratch("ps-dies");
    let (pid, out) = start_memhog(&dir, 32);
    let _g = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let killer = std::thread::spawn(move || {
        let (mut sk, _) = l.accept().unwrap();
        let mut b = vec![0u8; 1 << 20];
        let mut got = 0;
        // Answer OPEN2/PARENT as a server would, then drop after 4 MiB of the stream.
        while got < 4 << 20 {
            let n = sk.read(&mut b).unwrap_or(0);
            if n == 0 {
                break;
            }
            if got == 0 {
                let _ = sk.write_all(&[0]);
            }
            got += n;
        }
    });
    let o = cryo(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        dir.join("img").to_str().unwrap(),
        "-v4",
        "-o",
        "dump.log",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    killer.join().unwrap();
    assert!(!o.status.success(), "the dump must fail");
    assert!(
        log(&dir.join("img"), "dump.log").contains("page server"),
        "{}",
        log(&dir.join("img"), "dump.log")
    );
    assert!(alive(pid));
    assert!(!dir.join("img/cryo-manifest.json").exists());
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.contains("TracerPid:\t0"));
    assert_eq!(memhog_sum(pid, &out), sum);
}

/// A page server that accepts the dump's connection and then never answers: the dump does
/// not wait for ever: past `--timeout` it fails naming the page server's address, and the
/// process runs on unharmed, untraced. (Without `--timeout` the bound is 60 s.)
#[test]
fn a_stalled_page_server_fails_the_dump_by_name_after_the_timeout() {
    let dir = scratch("ps-stalled");
    let (pid, out) = start_memhog(&dir, 32);
    let _g = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    // Accepts, reads nothing, answers nothing; holds the connection until the dump ends.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (sk, _) = l.accept().unwrap();
        let _ = rx.recv();
        drop(sk);
    });
    let img = dir.join("img");
    let o = cryo(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        img.to_str().unwrap(),
        "-v4",
        "-o",
        "dump.log",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "--timeout",
        "2",
    ]);
    let _ = tx.send(());
    holder.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the dump must fail: {err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("timed out"),
        "the error names the page server and the timeout: {err}"
    );
    assert!(alive(pid));
    assert!(!img.join("cryo-manifest.json").exists());
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.contains("TracerPid:\t0"), "{st}");
    assert_eq!(memhog_sum(pid, &out), sum);
}

fn criu() -> String {
    let c = std::env::var("CRIU").unwrap_or_else(|_| "/opt/criu42/criu".into());
    assert!(Path::new(&c).exists(), "CRIU 4.2 is not at {c} (set CRIU=)");
    c
}

/// CRIU 4.2's dump feeds cryo's page server and cryo restores it; cryo's dump feeds CRIU's
/// page server and CRIU restores it. Ignored unless CRIU is there.
#[test]
#[ignore = "needs CRIU 4.2 built from source ($CRIU or /opt/criu42/criu)"]
fn criu_and_cryo_page_servers_interoperate() {
    let criu = criu();
    let dir = scratch("ps-criu");
    let (pid, out) = start_memhog(&dir, 16);
    let _g = KillOnDrop(pid);
    let sum = memhog_sum(pid, &out);
    for (i, (dumper, server)) in [("criu", "cryo"), ("cryo", "criu")].into_iter().enumerate() {
        let bin = |t: &str| -> PathBuf {
            if t == "criu" {
                PathBuf::from(&criu)
            } else {
                cryo_bin()
            }
        };
        let (srv, local) = (dir.join(format!("s{i}")), dir.join(format!("l{i}")));
        std::fs::create_dir_all(&srv).unwrap();
        std::fs::create_dir_all(&local).unwrap();
        let port = free_port().to_string();
        let st = Command::new(bin(server))
            .args([
                "page-server",
                "-D",
                srv.to_str().unwrap(),
                "--address",
                "127.0.0.1",
                "--port",
                &port,
                "-d",
                "-v4",
                "-o",
                "ps.log",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "{server} page-server");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = Command::new(bin(dumper))
            .args([
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                local.to_str().unwrap(),
                "-v4",
                "-o",
                "dump.log",
                "--page-server",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
            ])
            .run_within(&format!("{dumper} dump"), CHILD_SECS);
        assert!(
            o.status.success(),
            "{dumper} dump:\n{}",
            log(&local, "dump.log")
        );
        wait_gone(pid);
        std::thread::sleep(std::time::Duration::from_millis(300));
        merge(&local, &srv);
        let o = Command::new(bin(dumper))
            .args([
                "restore",
                "-D",
                srv.to_str().unwrap(),
                "-d",
                "-v4",
                "-o",
                "restore.log",
            ])
            .run_within(&format!("{dumper} restore"), CHILD_SECS);
        assert!(
            o.status.success(),
            "{dumper} restore:\n{}",
            log(&srv, "restore.log")
        );
        assert_eq!(memhog_sum(pid, &out), sum, "{dumper} → {server}");
    }
}

/// A client that connects and stalls in the middle of a record does not hold the page
/// server for ever: past `--timeout` it fails, naming the client.
#[test]
fn a_client_that_stalls_mid_stream_fails_the_page_server_by_name() {
    let dir = scratch("ps-stall");
    let srv = dir.join("srv");
    let port = free_port();
    let mut child = page_server(&srv, port, &["--timeout", "2"]);
    let mut sk = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = sk.local_addr().unwrap();
    // Half of an OPEN2 record, then nothing (the connection stays open).
    sk.write_all(&[4, 0, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
    let mut st = None;
    wait_for("the page server to give up", 60, || {
        st = child.try_wait().unwrap();
        st.is_some()
    });
    assert!(!st.unwrap().success());
    let l = log(&srv, "ps.log");
    assert!(
        l.contains(&format!("from {me}")) && l.contains("timed out"),
        "the error names the client and why: {l}"
    );
    drop(sk);
}
