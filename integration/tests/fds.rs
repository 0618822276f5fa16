//! Open files beyond regular ones (issue #3): pipes and FIFOs with data in flight and their
//! capacity, eventfd, epoll, signalfd, timerfd and inotify. Each test dumps a real program,
//! restores it and checks what the program itself observes afterwards.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use integration::*;

/// Sum of the bytes saved in `name` (pipes-data.img / fifo-data.img).
fn saved_bytes(img: &std::path::Path, name: &str) -> u64 {
    let o = cryo(&["show", img.join(name).to_str().unwrap()]);
    assert!(o.status.success(), "cryo show {name}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum()
}

/// `seq | slowcat | cat > out`: three processes joined by two full pipes. After restore the
/// output goes on and holds every number exactly once, in order.
#[test]
fn pipeline_loses_and_duplicates_nothing() {
    let dir = scratch("pipeline");
    let out = dir.join("out");
    let cmd = format!(
        "seq 1 100000000 | {} 64 300 | cat > {}",
        prog("slowcat").display(),
        out.display()
    );
    let pid = spawn(&["/bin/sh", "-c", &cmd], &dir.join("log"));
    let _g = KillOnDrop(pid);
    wait_for("output", 20, || lines(&out).len() > 2000);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    let pids = tree_pids(&img);
    assert_eq!(pids.len(), 4, "sh and its three children: {pids:?}");
    let _guards: Vec<KillOnDrop> = pids.iter().map(|&p| KillOnDrop(p)).collect();
    assert!(
        saved_bytes(&img, "pipes-data.img") > 0,
        "the pipes should have had data in flight"
    );
    wait_tree_gone(&img);
    let at_dump = lines(&out).len();
    restore(&img);
    wait_for("the pipeline to go on", 20, || {
        lines(&out).len() > at_dump + 3000
    });
    for &p in &pids {
        kill(p);
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let mut v: Vec<&str> = text.split('\n').collect();
    v.pop(); // "" after the last newline, or a line cut by the kill
    for (i, l) in v.iter().enumerate() {
        assert_eq!(
            l.parse::<usize>().ok(),
            Some(i + 1),
            "line {} is {l:?}: a byte was lost or duplicated (dumped at line {at_dump})",
            i + 1
        );
    }
}

/// A process holding a 1 MiB pipe with 300000 bytes queued (more than the default capacity)
/// and a non-blocking read end, and a FIFO opened read-write with a line queued.
#[test]
fn pipe_capacity_flags_and_fifo_data_survive() {
    let dir = scratch("pipecap");
    let fifo = dir.join("fifo");
    let log = dir.join("py.log");
    let script = format!(
        r#"
import os, fcntl, time
r, w = os.pipe()
fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
os.write(w, b"x" * 300000)
os.set_blocking(r, False)
os.mkfifo("{fifo}")
f = os.open("{fifo}", os.O_RDWR)
os.write(f, b"hello fifo\n")
print(r, w, f, flush=True)
time.sleep(1000)
"#,
        fifo = fifo.display()
    );
    let pid = spawn(&["python3", "-c", &script], &log);
    let _g = KillOnDrop(pid);
    wait_for("python to set up", 20, || !lines(&log).is_empty());
    let fds: Vec<i32> = lines(&log)[0]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let (r, f) = (fds[0], fds[2]);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    assert_eq!(saved_bytes(&img, "pipes-data.img"), 300000);
    assert_eq!(saved_bytes(&img, "fifo-data.img"), 11);
    wait_gone(pid);
    restore(&img);
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{r}")).unwrap();
    let fl = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(fl & libc::O_NONBLOCK as u32, 0, "read end lost O_NONBLOCK");
    // Read what is queued through the restored process's own read end.
    let mut p = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{r}"))
        .unwrap();
    // SAFETY: F_GETPIPE_SZ on an fd we own.
    let size = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&p), libc::F_GETPIPE_SZ) };
    assert_eq!(size, 1 << 20, "pipe capacity");
    let mut buf = Vec::new();
    let _ = p.read_to_end(&mut buf); // stops at EAGAIN
    assert_eq!(buf.len(), 300000);
    assert!(buf.iter().all(|&b| b == b'x'));
    let mut q = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{f}"))
        .unwrap();
    let mut line = [0u8; 64];
    let n = q.read(&mut line).unwrap();
    assert_eq!(&line[..n], b"hello fifo\n");
}

fn count(out: &std::path::Path, line: &str) -> usize {
    lines(out).iter().filter(|l| *l == line).count()
}

fn ticks(out: &std::path::Path) -> Vec<u64> {
    lines(out)
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// An epoll loop over a timerfd, a signalfd, an eventfd and an inotify instance: after
/// restore every source still delivers, the timer's count goes on from where it was, and a
/// second eventfd keeps its counter.
#[test]
fn event_loop_keeps_its_event_sources() {
    let dir = scratch("evloop");
    let watched = dir.join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let out = dir.join("out");
    let pid = spawn(
        &[prog("evloop").to_str().unwrap(), watched.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("ticks", 10, || ticks(&out).len() >= 3);
    signal(pid, libc::SIGUSR1);
    wait_for("the eventfd to fire", 10, || count(&out, "efd 7") == 1);
    assert_eq!(count(&out, "held 1234"), 1);
    let links = |pid: i32| -> Vec<String> {
        (3..=8)
            .map(|fd| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let before = links(pid);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let last = *ticks(&out).last().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500)); // frozen time
    restore(&img);
    assert_eq!(links(pid), before, "fd kinds changed");
    wait_for("ticks after restore", 10, || {
        ticks(&out).last().is_some_and(|&t| t >= last + 3)
    });
    signal(pid, libc::SIGUSR1);
    std::fs::write(watched.join("newfile"), b"").unwrap();
    wait_for("signalfd, eventfd and inotify", 10, || {
        count(&out, "efd 7") == 2 && count(&out, "inotify newfile") == 1
    });
    assert_eq!(count(&out, "sig 2"), 1);
    assert_eq!(
        count(&out, "held 1234"),
        2,
        "the held eventfd lost its counter"
    );
    let t = ticks(&out);
    assert!(
        t.windows(2).all(|w| w[1] > w[0]),
        "tick count went back: {t:?}"
    );
    let first_after = t.iter().find(|&&x| x > last).unwrap();
    assert!(
        *first_after <= last + 3,
        "the timer fired for the frozen time: {last} -> {first_after}"
    );
}

/// Unix sockets of every shape in one python3 process (integration/scripts/unix_sockets.py):
/// stream, datagram and seqpacket pairs with queued data, a path-named listener with an
/// accepted connection and one still waiting in its backlog, an abstract-named datagram
/// socket with queued datagrams. After restore the program reads back exactly what was
/// queued, the names are the same, and the listener serves a new client.
#[test]
fn unix_sockets_keep_peers_names_and_queues() {
    let dir = scratch("unixsk");
    let out = dir.join("out");
    let script = root().join("integration/scripts/unix_sockets.py");
    let pid = spawn(
        &["python3", script.to_str().unwrap(), dir.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the listener", 10, || {
        lines(&out).iter().any(|l| l.starts_with("named"))
    });
    let mut c = std::os::unix::net::UnixStream::connect(dir.join("srv.sock")).unwrap();
    std::io::Write::write_all(&mut c, b"ping").unwrap();
    let mut reply = [0u8; 4];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    wait_for("done", 10, || lines(&out).iter().any(|l| l == "done"));
    assert_eq!(
        lines(&out),
        vec![
            "ready",
            "stream True b'to-a'",
            "dgram b'one' b'two' b'three'",
            "seqpacket b'pkt1' b'pkt2'",
            "accepted b'hello server' True",
            "pending b'late'",
            "named b'd1' b'd2' True",
            "client b'ping'",
            "done",
        ]
    );
}

/// A socket whose peer is outside the dumped tree, or of a family cryo cannot restore, is
/// refused before the process is touched, naming the fd.
#[test]
fn sockets_cryo_cannot_restore_are_refused() {
    let dir = scratch("extsk");
    let path = dir.join("ext.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let log = dir.join("py.log");
    let script = format!(
        "import socket,time; s=socket.socket(socket.AF_UNIX); s.connect('{}'); print(s.fileno(), flush=True); time.sleep(1000)",
        path.display()
    );
    let pid = spawn(&["python3", "-c", &script], &log);
    let _g = KillOnDrop(pid);
    let _conn = listener.accept().unwrap();
    wait_for("python", 20, || !lines(&log).is_empty());
    let fd = lines(&log)[0].clone();
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(
        e.contains(&format!("fd {fd} (unix socket")) && e.contains("outside the dumped tree"),
        "{e}"
    );
    assert!(alive(pid));

    // Sockets of families cryo cannot restore (vsock, XDP): refused by family, with what to
    // do.
    for (fam, ty, what, hint) in [
        (
            40,
            "socket.SOCK_STREAM",
            "vsock socket is not supported",
            "connect again after the restore",
        ),
        (
            44,
            "socket.SOCK_RAW",
            "XDP socket is not supported",
            "UMEM and rings",
        ),
    ] {
        let log2 = dir.join(format!("fam{fam}.log"));
        let pid2 = spawn(
            &[
                "python3",
                "-c",
                &format!("import socket,time; s=socket.socket({fam}, {ty}, 0); print(s.fileno(), flush=True); time.sleep(1000)"),
            ],
            &log2,
        );
        let _g2 = KillOnDrop(pid2);
        wait_for("python", 20, || !lines(&log2).is_empty());
        let e = dump_fails(pid2, &dir.join(format!("img{fam}")), &[]);
        assert!(
            e.contains(&format!("fd {} (socket:[", lines(&log2)[0]))
                && e.contains(what)
                && e.contains(hint),
            "{e}"
        );
        assert!(alive(pid2));
    }
}

/// One HTTP/1.0 GET over a unix socket; returns the whole response.
fn http_get(sock: &std::path::Path, path: &str) -> String {
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    std::io::Write::write_all(&mut c, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// python3's http.server serving files over a unix socket (integration/scripts/http_unix.py):
/// after restore it serves the next request, and its request counter went on.
#[test]
fn python_http_server_keeps_serving() {
    let dir = scratch("http");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.txt"), "hello from cryo\n").unwrap();
    let sock = dir.join("http.sock");
    let out = dir.join("out");
    let script = root().join("integration/scripts/http_unix.py");
    let pid = spawn(
        &[
            "python3",
            script.to_str().unwrap(),
            sock.to_str().unwrap(),
            www.to_str().unwrap(),
        ],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("serving", 20, || lines(&out).iter().any(|l| l == "serving"));
    let r = http_get(&sock, "/index.txt");
    assert!(
        r.starts_with("HTTP/1.0 200")
            && r.contains("X-Requests: 1")
            && r.ends_with("hello from cryo\n"),
        "{r}"
    );
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let r = http_get(&sock, "/index.txt");
    assert!(
        r.starts_with("HTTP/1.0 200")
            && r.contains("X-Requests: 2")
            && r.ends_with("hello from cryo\n"),
        "{r}"
    );
    let r = http_get(&sock, "/missing");
    assert!(
        r.starts_with("HTTP/1.0 404") && r.contains("X-Requests: 3"),
        "{r}"
    );
}

/// A file deleted while open and mapped (a "ghost"): its content is saved, and after restore
/// the program reads the same bytes at the same offset through its fd and its mapping, the
/// fd still names the deleted path, and nothing is left on disk. A ghost over --ghost-limit
/// is refused, naming the option.
#[test]
fn deleted_open_file_comes_back_as_a_ghost() {
    let dir = scratch("ghost");
    let out = dir.join("out");
    let script = r#"
import os, mmap, signal, sys
p = sys.argv[1] + "/data.bin"
with open(p, "wb") as f: f.write(b"ghost content " * 1000)
f = open(p, "r+b"); f.seek(100)
m = mmap.mmap(f.fileno(), 0, mmap.MAP_PRIVATE, mmap.PROT_READ)
os.unlink(p)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
signal.sigwait([signal.SIGUSR1])
print(f.tell(), f.read(13), m[:13], os.readlink("/proc/self/fd/%d" % f.fileno()), flush=True)
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    // Over the limit: refused, the program untouched.
    let e = dump_fails(pid, &dir.join("small"), &["--ghost-limit", "1K"]);
    assert!(
        e.contains("data.bin (deleted)") && e.contains("--ghost-limit"),
        "{e}"
    );
    assert!(alive(pid));
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("data") || n.contains("ghost"))
        .collect();
    assert!(leftovers.is_empty(), "left on disk: {leftovers:?}");
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 10, || lines(&out).len() == 2);
    assert_eq!(
        lines(&out)[1],
        format!(
            "100 b'ost content g' b'ghost content' {}/data.bin (deleted)",
            dir.display()
        )
    );
}

/// A memfd open and mapped shared by a parent and its child (integration/scripts/memfd.py):
/// after restore both map one inode again (the child's write through its mapping is read by
/// the parent through its fd and its own mapping), with the same name, offset, size and seals.
#[test]
fn memfd_is_shared_again_by_fd_and_mappings() {
    let dir = scratch("memfd");
    let out = dir.join("out");
    let script = root().join("integration/scripts/memfd.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let child = wait_ready(&out)[0];
    let _g2 = KillOnDrop(child);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 10, || lines(&out).len() == 2);
    assert_eq!(
        lines(&out)[1],
        "5 b'CHILD!data ' b'data ' /memfd:cryo-test (deleted) True 1100000"
    );
}

/// An fd of shared anonymous memory whose mapping is gone (integration/scripts/shmemfd.py,
/// zdtm's shmemfd: opened through /proc/self/map_files, linked as "/dev/zero (deleted)")
/// comes back as that memory, not as /dev/zero: its content, offset, O_APPEND, size and
/// FD_CLOEXEC unset; it is saved as a memfd, as CRIU does.
#[test]
fn shared_anonymous_memory_fd_comes_back() {
    let dir = scratch("shmemfd");
    let out = dir.join("out");
    let script = root().join("integration/scripts/shmemfd.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_ready(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 10, || lines(&out).len() == 2);
    assert_eq!(lines(&out)[1], "True 0 3 b'hello' 5 True");
}

/// A hugetlb memfd (zdtm's memfd02-hugetlb: MFD_HUGETLB, 2 MiB) open and mapped shared and
/// privately comes back on huge pages (block size 2 MiB) with its content; a write through
/// the shared mapping shows through the fd and the private mapping, a private write stays
/// private. `check --feature memfd_hugetlb` answers yes. Skipped when the kernel has no free
/// huge page.
#[test]
fn hugetlb_memfd_comes_back() {
    let dir = scratch("memfd-huge");
    let out = dir.join("out");
    let script = root().join("integration/scripts/memfd_huge.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    wait_for("the memfd", 20, || !lines(&out).is_empty());
    if lines(&out)[0].starts_with("nohuge") {
        skip(&format!(
            "no huge pages for a hugetlb memfd: {}",
            lines(&out)[0]
        ));
        return;
    }
    let o = cryo(&["check", "--feature", "memfd_hugetlb"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the answer", 20, || lines(&out).len() >= 2);
    assert_eq!(
        lines(&out)[1],
        "b'write1' b'write1' b'write1' 2097152 b'write2' b'write2' b'write2'"
    );
}

/// Reads the lines of `r` in a thread.
fn follow(r: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<Vec<u64>>> {
    use std::io::BufRead;
    let v = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = v.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if let Ok(n) = l.trim().parse() {
                w.lock().unwrap().push(n);
            }
        }
    });
    v
}

/// `--inherit-fd fd[1]:pipe:[INO]`: a shell loop whose stdout (and its children's) was a
/// pipe writes, after restore, into the pipe cryo was given as its own fd 1 (what runc does
/// with RPC `inherit_fd`), going on number for number.
#[test]
fn inherit_fd_replaces_a_pipe() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let dir = scratch("inherit-fd");
    let img = dir.join("img");
    let mut c = Command::new("/bin/sh");
    c.args([
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)]
    let mut child = c.spawn().unwrap();
    let pid = integration::pid_of(&child);
    let _g = KillOnDrop(pid);
    let before = follow(child.stdout.take().unwrap());
    wait_for("the loop", 10, || before.lock().unwrap().len() >= 3);
    let key = std::fs::read_link(format!("/proc/{pid}/fd/1"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(key.starts_with("pipe:["), "{key}");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let last = *before.lock().unwrap().last().unwrap();
    // A malformed --inherit-fd is refused by name (and nothing is left behind). (A well-formed
    // key nothing looks up is accepted and matches nothing, as in CRIU.)
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d", "--inherit-fd", "fd[1]"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--inherit-fd fd[1]"));
    let inherit = format!("fd[1]:{key}");
    let mut r = Command::new(cryo_bin())
        .args(["restore", "-D", img.to_str().unwrap(), "-d", "-v4"])
        .args(["-o", "restore.log", "--inherit-fd", &inherit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let after = follow(r.stdout.take().unwrap());
    let st = r.wait().unwrap();
    assert!(
        st.success(),
        "restore failed:\n{}",
        log(&img, "restore.log")
    );
    wait_for("the loop on the new pipe", 10, || {
        after.lock().unwrap().len() >= 2
    });
    assert_eq!(
        after.lock().unwrap()[0],
        last + 1,
        "{:?}",
        after.lock().unwrap()
    );
}
