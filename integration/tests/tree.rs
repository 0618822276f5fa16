//! Process trees (issue #3): every descendant is dumped, and restore rebuilds the same
//! parent/child shape with the same PIDs, session and process groups; fds inherited from a
//! parent keep sharing one open file description (one offset).

use std::time::Duration;

use integration::*;

/// (pid, ppid, pgid, sid) of `pid`.
fn ids(pid: i32) -> (i32, i32, i32, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<i32> = s
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|x| x.parse().unwrap())
        .collect();
    (pid, f[0], f[1], f[2])
}

/// CRIU's "simple loop": a shell counting once a second, with its `sleep` child mid-nanosleep
/// and the shell mid-wait4 at dump time. The count goes on with no gap or restart.
#[test]
fn criu_simple_loop_continues() {
    let dir = scratch("loop");
    let out = dir.join("loop.out");
    let pid = spawn(
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do echo $i; i=$((i+1)); sleep 1; done",
        ],
        &out,
    );
    let _guard = KillOnDrop(pid);
    wait_for("two lines", 10, || lines(&out).len() >= 2);
    std::thread::sleep(Duration::from_millis(300));
    let kids = children(pid);
    assert_eq!(kids.len(), 1, "the shell should be in its sleep");
    let sleeper = kids[0];
    let _g2 = KillOnDrop(sleeper);
    let shape = (ids(pid), ids(sleeper));
    let img = dir.join("img");
    dump(pid, &img, &[]);
    assert_eq!(tree_pids(&img), vec![pid, sleeper]);
    wait_tree_gone(&img);
    let at_dump = lines(&out).len();
    restore(&img);
    // Same tree: the sleep is the shell's child again, same session and group.
    assert_eq!(
        (ids(pid), ids(sleeper)).1 .1,
        pid,
        "sleep is not the shell's child"
    );
    let mut now = (ids(pid), ids(sleeper));
    now.0 .1 = shape.0 .1; // the root's parent is whoever restored it
    assert_eq!(now, shape, "pids, groups or sessions changed");
    wait_for("the count to go on", 10, || {
        lines(&out).len() >= at_dump + 2
    });
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        v,
        (0..v.len() as u64).collect::<Vec<_>>(),
        "gap or restart in {v:?}"
    );
}

/// A parent and its child both write numbered lines to one inherited fd opened without
/// O_APPEND: only a shared offset keeps every line.
#[test]
fn inherited_fd_keeps_one_offset() {
    let dir = scratch("sharedfd");
    let out = dir.join("shared.out");
    let script = "(i=0; while :; do echo c$i; i=$((i+1)); sleep 0.05; done) & \
                  i=0; while :; do echo p$i; i=$((i+1)); sleep 0.05; done";
    let pid = spawn(&["/bin/sh", "-c", script], &out);
    let _guard = KillOnDrop(pid);
    wait_for("output", 10, || lines(&out).len() >= 10);
    let sub = children(pid)
        .into_iter()
        .find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                .is_ok_and(|s| s.starts_with("/bin/sh"))
        })
        .expect("the subshell");
    let _g2 = KillOnDrop(sub);
    let before = ids(sub);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    let n = lines(&out).len();
    restore(&img);
    assert_eq!(
        ids(sub),
        before,
        "the subshell's parent, group or session changed"
    );
    wait_for("both to write more", 10, || lines(&out).len() >= n + 20);
    kill(sub);
    kill(pid);
    // Every number of each writer appears exactly once, in order: nothing was overwritten.
    for tag in ['p', 'c'] {
        let v: Vec<u64> = lines(&out)
            .iter()
            .filter_map(|l| l.strip_prefix(tag)?.parse().ok())
            .collect();
        assert!(v.len() > 10, "{tag}: too few lines");
        assert_eq!(
            v,
            (0..v.len() as u64).collect::<Vec<_>>(),
            "{tag}: lines lost or overwritten"
        );
    }
}

/// A failed dump leaves the whole tree running; a failed restore leaves none of it behind.
#[test]
fn failures_in_a_tree_harm_nothing() {
    let dir = scratch("treefault");
    let out = dir.join("loop.out");
    let pid = spawn(
        &[
            "/bin/sh",
            "-c",
            "i=0; while :; do echo $i; i=$((i+1)); sleep 0.2; done",
        ],
        &out,
    );
    let _guard = KillOnDrop(pid);
    wait_for("output", 10, || lines(&out).len() >= 2);
    for stage in ["collect", "parasite", "memory", "write"] {
        let o = cryo_env(
            &[
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                dir.join("x").to_str().unwrap(),
            ],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "{stage}");
        let n = lines(&out).len();
        wait_for("the loop to go on", 10, || lines(&out).len() > n + 1);
    }
    let img = dir.join("img");
    dump(pid, &img, &[]);
    let pids = tree_pids(&img);
    assert!(pids.len() >= 2);
    wait_tree_gone(&img);
    for stage in ["files", "memory", "task", "creds", "finish"] {
        let o = cryo_env(
            &["restore", "-D", img.to_str().unwrap(), "-d"],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "{stage}");
        for p in &pids {
            wait_gone(*p);
        }
    }
    let n = lines(&out).len();
    restore(&img);
    wait_for("the loop to go on after restore", 10, || {
        lines(&out).len() > n + 1
    });
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(v, (0..v.len() as u64).collect::<Vec<_>>());
}

/// Zombie children come back as zombies with the same exit status (an exit code and a
/// death by signal), for their restored parent to reap.
#[test]
fn zombies_keep_their_exit_status() {
    let dir = scratch("zombie");
    let out = dir.join("z.out");
    let pid = spawn(
        &[prog("zombie").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("ready", 10, || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready"))
    });
    let img = dir.join("img");
    dump(pid, &img, &[]);
    assert_eq!(tree_pids(&img).len(), 3);
    wait_tree_gone(&img);
    restore(&img);
    let kids = children(pid);
    assert_eq!(kids.len(), 2, "both zombies are back as children");
    for k in &kids {
        assert_eq!(ids(*k).1, pid);
        let st = std::fs::read_to_string(format!("/proc/{k}/stat")).unwrap();
        assert!(
            st.rsplit(')').next().unwrap().trim_start().starts_with('Z'),
            "{st}"
        );
    }
    signal(pid, libc::SIGUSR1);
    wait_for("the parent's report", 10, || lines(&out).len() >= 3);
    let l = lines(&out);
    assert_eq!(l[1], "a 1 exited=1 code=7");
    assert_eq!(l[2], "b 1 signaled=1 sig=15");
}

/// A process stopped by job control is dumped and restored stopped; SIGCONT then lets it go
/// on from where it was.
#[test]
fn stopped_process_is_restored_stopped() {
    let dir = scratch("stopped");
    let out = dir.join("count.txt");
    let pid = spawn(
        &[prog("counter").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _guard = KillOnDrop(pid);
    wait_for("counting", 10, || lines(&out).len() >= 3);
    signal(pid, libc::SIGSTOP);
    let state = |p: i32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        s.rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .chars()
            .next()
            .unwrap()
    };
    wait_for("stopped", 10, || state(pid) == 'T');
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let n = lines(&out).len();
    restore(&img);
    wait_for("stopped again", 10, || state(pid) == 'T');
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&out).len(), n, "a stopped process kept running");
    signal(pid, libc::SIGCONT);
    wait_for("counting again", 10, || lines(&out).len() >= n + 3);
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(v, (0..v.len() as u64).collect::<Vec<_>>());
}

/// Inode of the shared anonymous mapping of `pid` ("/dev/zero (deleted)").
fn shm_inode(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let range = maps
        .lines()
        .find(|l| l.ends_with("/dev/zero (deleted)"))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no shared anonymous mapping in {pid}:\n{maps}"))
        .to_string();
    std::fs::metadata(format!("/proc/{pid}/map_files/{range}"))
        .unwrap()
        .ino()
}

/// A parent and child sharing a 32 MiB MAP_SHARED|MAP_ANONYMOUS region and a pipe, and a
/// zombie child: after restore they share one memory object again (the child's counter is
/// seen by the parent through memory as well as through the pipe), the region's checksum is
/// unchanged, and the zombie's exit status is still there for its parent.
#[test]
fn parent_and_child_share_memory_a_pipe_and_a_zombie() {
    let dir = scratch("shm");
    let out = dir.join("out");
    let pids_file = dir.join("pids");
    let pid = spawn(
        &[prog("shm").to_str().unwrap(), pids_file.to_str().unwrap()],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("pids", 10, || !lines(&pids_file).is_empty());
    let p: Vec<i32> = lines(&pids_file)[0]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let (child, zombie) = (p[1], p[2]);
    let _g2 = KillOnDrop(child);
    let sums = |out: &std::path::Path| -> Vec<String> {
        lines(out)
            .into_iter()
            .filter(|l| l.starts_with("sum "))
            .collect()
    };
    wait_for("the counter", 10, || lines(&out).len() >= 3);
    signal(pid, libc::SIGUSR1);
    wait_for("a checksum", 10, || sums(&out).len() == 1);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    assert_eq!(tree_pids(&img).len(), 3);
    wait_tree_gone(&img);
    let got = |out: &std::path::Path| -> Vec<(u64, u64)> {
        lines(out)
            .iter()
            .filter_map(|l| {
                let v: Vec<&str> = l.split(' ').collect();
                (v.len() == 4 && v[0] == "got")
                    .then(|| (v[1].parse().unwrap(), v[3].parse().unwrap()))
            })
            .collect()
    };
    let at_dump = got(&out).len();
    restore(&img);
    assert_eq!(
        shm_inode(pid),
        shm_inode(child),
        "memory is no longer shared"
    );
    wait_for("the counter to go on", 10, || {
        got(&out).len() >= at_dump + 5
    });
    let g = got(&out);
    for w in g.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "pipe lost or repeated a line: {g:?}");
    }
    assert!(
        g.iter().all(|&(n, m)| m >= n),
        "the parent does not see the child's writes: {g:?}"
    );
    signal(pid, libc::SIGUSR1);
    wait_for("a checksum after restore", 10, || sums(&out).len() == 2);
    let s = sums(&out);
    assert_eq!(s[0], s[1], "shared memory content changed");
    let state = std::fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap();
    assert!(state.contains(") Z "), "not a zombie: {state}");
    signal(pid, libc::SIGUSR2);
    wait_for("the zombie reaped", 10, || {
        lines(&out)
            .iter()
            .any(|l| *l == format!("zombie {zombie} status 7"))
    });
}

/// A child created with clone(CLONE_FILES) shares its parent's fd table: the table is saved
/// once, and after restore an fd the child opens appears in the parent's table.
#[test]
fn clone_files_table_stays_shared() {
    let dir = scratch("clonefiles");
    let out = dir.join("out");
    let script = root().join("integration/scripts/clone_files.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let child = wait_ready(&out)[0];
    let _g2 = KillOnDrop(child);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    let fdinfos = std::fs::read_dir(&img)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("fdinfo-")
        })
        .count();
    assert_eq!(fdinfos, 1, "a shared table is saved once");
    wait_tree_gone(&img);
    restore(&img);
    signal(pid, libc::SIGUSR1);
    wait_for("the child's fd", 10, || lines(&out).len() == 2);
    assert!(
        lines(&out)[1].starts_with("child opened ") && lines(&out)[1].ends_with(" /dev/null"),
        "{:?}",
        lines(&out)
    );
}

/// A process that forked a child and then called setsid leaves the child in the old
/// session: after restore the child is still in the root's session and the parent leads its
/// own (the child is forked before the parent's setsid).
#[test]
fn child_keeps_the_session_its_parent_left() {
    let dir = scratch("oldsession");
    let out = dir.join("out");
    let script = r#"
import os, time
a = os.fork()
if a == 0:
    b = os.fork()
    if b == 0:
        time.sleep(1000); os._exit(0)
    os.setsid()
    print(os.getpid(), b, flush=True)
    time.sleep(1000); os._exit(0)
time.sleep(1000)
"#;
    let pid = spawn(&["python3", "-c", script], &out);
    let _g = KillOnDrop(pid);
    wait_for("pids", 20, || !lines(&out).is_empty());
    let p: Vec<i32> = lines(&out)[0]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    let (a, b) = (p[0], p[1]);
    let _ga = KillOnDrop(a);
    let _gb = KillOnDrop(b);
    let before = (ids(pid), ids(a), ids(b));
    assert_eq!((before.1 .3, before.2 .3), (a, pid), "test setup: sessions");
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let mut after = (ids(pid), ids(a), ids(b));
    after.0 .1 = before.0 .1; // the root's parent is whoever restored it
    assert_eq!(after, before, "pids, parents, groups or sessions changed");
}

/// Proportional anonymous memory (Pss_Anon, KiB) of `pid`.
fn pss_anon(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Pss_Anon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A parent and 4 children sharing 64 MiB copy-on-write (each child changed one page): after
/// restore the memory is still shared, not copied once per process (the tree's proportional
/// memory stays about the same), and every process has its own content.
#[test]
fn copy_on_write_memory_stays_shared() {
    let dir = scratch("cow");
    let out = dir.join("out");
    let pid = spawn(&[prog("cowtree").to_str().unwrap(), "64", "4"], &out);
    let _g = KillOnDrop(pid);
    wait_for("5 processes", 20, || {
        lines(&out).iter().filter(|l| l.starts_with("pid ")).count() == 5
    });
    let pids: Vec<i32> = lines(&out)
        .iter()
        .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .collect();
    let _gs: Vec<KillOnDrop> = pids.iter().map(|&p| KillOnDrop(p)).collect();
    let sums = |out: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = lines(out)
            .into_iter()
            .filter(|l| l.starts_with("sum "))
            .collect();
        v.sort();
        v
    };
    for &p in &pids {
        signal(p, libc::SIGUSR1);
    }
    wait_for("checksums", 20, || sums(&out).len() == 5);
    let before_sums = sums(&out);
    let before: u64 = pids.iter().map(|&p| pss_anon(p)).sum();
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    let after: u64 = pids.iter().map(|&p| pss_anon(p)).sum();
    assert!(
        after < before + before / 4,
        "memory no longer shared: {before} KiB of proportional anonymous memory before, {after} KiB after"
    );
    for &p in &pids {
        signal(p, libc::SIGUSR1);
    }
    wait_for("checksums after restore", 20, || sums(&out).len() == 10);
    let mut all = sums(&out);
    all.dedup();
    assert_eq!(all, before_sums, "content changed");
}

/// A child that wrote zeros over half of the memory it shares copy-on-write with its parent:
/// the dump leaves its zero pages out of the images, and after restore the child reads zeros
/// there (not the parent's data its kept mapping started with), the parent its own data.
#[test]
fn zeros_a_child_wrote_over_its_parents_memory_stay_zeros() {
    let dir = scratch("cowzero");
    let out = dir.join("out");
    let pid = spawn(
        &[prog("cowtree").to_str().unwrap(), "32", "1", "zero"],
        &out,
    );
    let _g = KillOnDrop(pid);
    wait_for("2 processes", 20, || {
        lines(&out).iter().filter(|l| l.starts_with("pid ")).count() == 2
    });
    let pids: Vec<i32> = lines(&out)
        .iter()
        .filter_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .collect();
    let _gs: Vec<KillOnDrop> = pids.iter().map(|&p| KillOnDrop(p)).collect();
    let sums = |out: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = lines(out)
            .into_iter()
            .filter(|l| l.starts_with("sum "))
            .collect();
        v.sort();
        v
    };
    for &p in &pids {
        signal(p, libc::SIGUSR1);
    }
    wait_for("checksums", 20, || sums(&out).len() == 2);
    let before = sums(&out);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    // The child's 16 MiB of zeros are not in its pages image.
    let child = pids.iter().find(|&&p| p != pid).unwrap();
    let pagemap = ok(
        &cryo(&[
            "show",
            &img.join(format!("pagemap-{child}.img")).to_string_lossy(),
        ]),
        "cryo show pagemap",
    );
    let pages: u64 = pagemap
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("\"nr_pages\":")?
                .trim()
                .trim_end_matches(',')
                .parse::<u64>()
                .ok()
        })
        .sum();
    // 16 MiB of data (4096 pages) and the program's own few pages; not the 16 MiB of zeros.
    assert!(
        (4096..4096 + 1024).contains(&pages),
        "the child's pagemap lists {pages} pages (its 16 MiB of zeros should be left out):\n{pagemap}"
    );
    for &p in &pids {
        signal(p, libc::SIGUSR1);
    }
    wait_for("checksums after restore", 20, || sums(&out).len() == 4);
    let mut all = sums(&out);
    all.dedup();
    assert_eq!(all, before, "content changed");
}

/// A file mapped MAP_SHARED by a parent and its child: after restore a write through the
/// child's mapping is seen through the parent's mapping and lands in the file.
#[test]
fn shared_file_mapping_is_shared_again() {
    let dir = scratch("mapshared");
    let out = dir.join("out");
    let data = dir.join("data.bin");
    std::fs::write(&data, vec![b'.'; 8192]).unwrap();
    let script = format!(
        r#"
import mmap, os, signal
f = open("{}", "r+b")
m = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
c = os.fork()
if c == 0:
    signal.sigwait([signal.SIGUSR1])
    m[4096:4102] = b"child!"
    os._exit(0)
print("ready", c, flush=True)
signal.sigwait([signal.SIGUSR1])
os.kill(c, signal.SIGUSR1); os.waitpid(c, 0)
print("parent sees", m[4096:4102], flush=True)
"#,
        data.display()
    );
    let pid = spawn(&["python3", "-c", &script], &out);
    let _g = KillOnDrop(pid);
    let child = wait_ready(&out)[0];
    let _g2 = KillOnDrop(child);
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the parent's view", 10, || lines(&out).len() == 2);
    assert_eq!(lines(&out)[1], "parent sees b'child!'");
    assert_eq!(&std::fs::read(&data).unwrap()[4096..4102], b"child!");
}

/// A zombie in a process group whose leader is gone, in a tree that is its own PID
/// namespace (zdtm's zombie01 in the ns flavor): the group's id is saved as the zombie sees
/// it (not the host's, which is no process of the tree), and the restored zombie is in that
/// group again with its exit status.
#[test]
fn zombie_in_an_orphaned_process_group_of_a_pid_namespace() {
    let dir = scratch("zgroup");
    let out = dir.join("out");
    let script = root().join("integration/scripts/zombie_group.py");
    let unshare = spawn(
        &[
            "unshare",
            "--pid",
            "--fork",
            "python3",
            script.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(unshare);
    wait_for("the zombie", 20, || !lines(&out).is_empty());
    let before = lines(&out)[0].clone();
    let f: Vec<&str> = before.split_whitespace().collect();
    assert_eq!(
        (f[0], f[2], f[4], f[6], f[7]),
        ("zombie", "pgid", "leader", "status", "7")
    );
    assert_eq!(
        f[3], f[5],
        "the zombie's group is its gone leader's: {before}"
    );
    let init = children(unshare)[0];
    let img = dir.join("img");
    dump(init, &img, &[]);
    wait_gone(init);
    let pidfile = dir.join("pid");
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", log(&img, "restore.log"));
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(restored);
    signal(restored, libc::SIGUSR1);
    wait_for("the report after the restore", 20, || {
        lines(&out).len() >= 2
    });
    assert_eq!(lines(&out)[1], before);
    kill(restored);
}

/// A tree that forks short-lived children all the time (zdtm's transition/fork): a child
/// that exits between the listing of the tree and the reading of its /proc files does not
/// fail the dump; the tree is checked again, and once frozen. Several rounds, as the race
/// is one of timing.
#[test]
fn dump_of_a_tree_forking_all_the_time() {
    let dir = scratch("forkstorm");
    let out = dir.join("out");
    let script = "import os,sys,time\nn=0\nwhile True:\n    p=os.fork()\n    if p==0:\n        os._exit(0)\n    os.waitpid(p,0)\n    n+=1\n    if n%200==0:\n        open(sys.argv[1],'a').write(f'{n}\\n')\n";
    let pid = spawn(
        &["python3", "-c", script, out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the forks", 20, || !lines(&out).is_empty());
    for round in 0..5 {
        let img = dir.join(format!("img{round}"));
        dump(pid, &img, &["--leave-running"]);
    }
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    restore(&img);
    let n = lines(&out).len();
    wait_for("forks after the restore", 20, || lines(&out).len() > n + 2);
    kill(pid);
}

/// A process group whose leader is gone (zdtm's session01): a live member and a zombie of
/// the tree stay in the group of a process that exited and was reaped (the dump refused
/// such a group before). After the restore both are in that group again, in the session
/// they had, the zombie with its exit status, and a signal sent to the group reaches the
/// member.
#[test]
fn process_group_of_a_gone_leader_comes_back() {
    let dir = scratch("gone-leader-group");
    let out = dir.join("out");
    let script = root().join("integration/scripts/gone_leader_group.py");
    let pid = spawn(&["python3", script.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let x = wait_ready(&out)[0];
    signal(pid, libc::SIGUSR1);
    wait_for("the report", 10, || lines(&out).len() >= 2);
    let before = lines(&out)[1].clone();
    let kids = children(pid);
    let _g2: Vec<KillOnDrop> = kids.iter().map(|&k| KillOnDrop(k)).collect();
    let f: Vec<&str> = before.split_whitespace().collect();
    assert_eq!(
        (f[2], f[4], f[7], f[9], f[11]),
        (
            x.to_string().as_str(),
            pid.to_string().as_str(),
            x.to_string().as_str(),
            "3",
            "True"
        ),
        "{before}"
    );
    let img = dir.join("img");
    dump_and_restore(pid, &img);
    signal(pid, libc::SIGUSR1);
    wait_for("the report after the restore", 10, || {
        lines(&out).len() >= 3
    });
    assert_eq!(lines(&out)[2], before);
}

/// A zombie session leader whose session lives on in an orphan (zdtm's zombie_leader): in a
/// tree that is its own PID namespace, Z called setsid(), forked G and exited; G was
/// reparented to the init. The restore has the zombie-to-be fork G after its setsid() and
/// before it dies (it used to turn G, not Z, into the zombie and fail at the end): G is
/// in Z's session again, the init's child, and Z a zombie.
#[test]
fn zombie_session_leader_with_an_orphan_in_a_pid_namespace() {
    let dir = scratch("zleader");
    let out = dir.join("out");
    let script = root().join("integration/scripts/zombie_leader.py");
    let unshare = spawn(
        &[
            "unshare",
            "--pid",
            "--fork",
            "python3",
            script.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(unshare);
    wait_for("the zombie", 20, || !lines(&out).is_empty());
    let before = lines(&out)[0].clone();
    let f: Vec<&str> = before.split_whitespace().collect();
    assert_eq!((f[4], f[8], f[10]), ("True", f[6], "3"), "{before}");
    assert_eq!(f[2], f[6], "G is in the zombie's session: {before}");
    let init = children(unshare)[0];
    let img = dir.join("img");
    dump(init, &img, &[]);
    wait_gone(init);
    let pidfile = dir.join("pid");
    let o = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", log(&img, "restore.log"));
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _g2 = KillOnDrop(restored);
    signal(restored, libc::SIGUSR1);
    wait_for("the report after the restore", 20, || {
        lines(&out).len() >= 2
    });
    assert_eq!(lines(&out)[1], before);
    kill(restored);
}

/// A field of /proc/PID/status.
fn status_field(pid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The permissions of the mapping starting at `addr` in /proc/PID/maps.
fn perms_at(pid: i32, addr: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{addr}-")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("none")
        .to_string()
}

/// Three children of one parent, each with state of its own that restore sets in the calls
/// it holds back to the last stop of a child's shaping (issue #13): a working directory, a
/// name, a umask, a signal handler, a parent-death signal, one not dumpable, and a page of
/// its own data made read-only. After restore each child has all of them back (seen in
/// /proc and reported by the child itself), and the children carry on.
#[test]
fn children_keep_their_own_attributes() {
    let dir = scratch("kidattrs");
    for i in 0..3 {
        std::fs::create_dir(dir.join(format!("c{i}"))).unwrap();
    }
    let out = dir.join("out");
    let script = r#"
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
d = sys.argv[1]
r, w = os.pipe()
kids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        os.chdir(f"{d}/c{i}")
        libc.prctl(15, f"kid{i}".encode(), 0, 0, 0)          # PR_SET_NAME
        os.umask(0o021 + i)
        signal.signal(signal.SIGUSR2, lambda *a: None)
        libc.prctl(1, 10 + i, 0, 0, 0)                        # PR_SET_PDEATHSIG
        if i == 1:
            libc.prctl(4, 0, 0, 0, 0)                         # PR_SET_DUMPABLE 0
        a = libc.mmap(None, 8192, 3, 0x22, -1, 0)
        ctypes.memset(a, 0x41 + i, 8192)
        libc.mprotect(a, 8192, 1)
        with open("addr", "w") as f:
            f.write("%x" % a)
        os.close(w)
        signal.sigwait([signal.SIGUSR1])
        pd = ctypes.c_int()
        libc.prctl(2, ctypes.byref(pd), 0, 0, 0)              # PR_GET_PDEATHSIG
        ok = ctypes.string_at(a, 8192) == bytes([0x41 + i]) * 8192
        with open("report", "w") as f:
            f.write(f"{os.getcwd()} {pd.value} {libc.prctl(3, 0, 0, 0, 0)} {ok}\n")
        signal.pause()
    kids.append(pid)
os.close(w)
os.read(r, 1)
print("ready", *kids, flush=True)
signal.pause()
"#;
    let pid = spawn(&["python3", "-c", script, dir.to_str().unwrap()], &out);
    let _g = KillOnDrop(pid);
    let kids = wait_ready(&out);
    assert_eq!(kids.len(), 3);
    let _k: Vec<KillOnDrop> = kids.iter().map(|&k| KillOnDrop(k)).collect();
    let addr = |i: usize| std::fs::read_to_string(dir.join(format!("c{i}/addr"))).unwrap();
    let seen = |i: usize, k: i32| {
        (
            std::fs::read_link(format!("/proc/{k}/cwd")).unwrap(),
            std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap(),
            status_field(k, "Umask"),
            // SIGUSR2 (12) caught: bit 11 of SigCgt.
            u64::from_str_radix(&status_field(k, "SigCgt"), 16).unwrap() & (1 << 11) != 0,
            perms_at(k, &addr(i)),
        )
    };
    let before: Vec<_> = kids.iter().enumerate().map(|(i, &k)| seen(i, k)).collect();
    for (i, s) in before.iter().enumerate() {
        assert_eq!(s.0, dir.join(format!("c{i}")));
        assert_eq!(s.1.trim(), format!("kid{i}"));
        assert_eq!(s.2, format!("{:04o}", 0o021 + i));
        assert!(s.3, "child {i} catches SIGUSR2 before the dump");
        assert_eq!(s.4, "r--p", "child {i}'s read-only page before the dump");
    }
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_tree_gone(&img);
    restore(&img);
    let after: Vec<_> = kids.iter().enumerate().map(|(i, &k)| seen(i, k)).collect();
    assert_eq!(
        after, before,
        "what /proc shows of each child after restore"
    );
    for (i, &k) in kids.iter().enumerate() {
        assert_eq!(ids(k).1, pid, "child {i}'s parent");
        signal(k, libc::SIGUSR1);
    }
    for i in 0..3 {
        let report = dir.join(format!("c{i}/report"));
        wait_for("the child's report", 10, || {
            std::fs::read_to_string(&report).is_ok_and(|t| t.ends_with('\n'))
        });
        let dumpable = if i == 1 { 0 } else { 1 };
        assert_eq!(
            std::fs::read_to_string(&report).unwrap().trim(),
            format!(
                "{} {} {dumpable} True",
                dir.join(format!("c{i}")).display(),
                10 + i
            ),
            "child {i}'s own report"
        );
    }
}
