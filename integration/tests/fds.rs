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
