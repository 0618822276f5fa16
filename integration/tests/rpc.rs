//! `cryo swrk FD` speaks CRIU's RPC protocol as runc, podman and go-criu drive it (issue #5):
//! one request per process over a SOCK_SEQPACKET socketpair, NOTIFY round trips that must be
//! acknowledged, paths as fds in the caller's table. Also the `--action-script` hooks.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use cryo::image::pb;
use integration::rpc::*;
use integration::*;
use prost::Message;

/// Opens `dir` in this process; the fd is what `images_dir_fd` names.
fn dir_fd(dir: &Path) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::File::open(dir).unwrap()
}

fn names(seen: &[(String, Option<i32>)]) -> Vec<&str> {
    seen.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn version_features_check_and_refusals() {
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Version, None), None);
    assert!(ok && r.success && r.r#type == pb::CriuReqType::Version as i32);
    let v = r.version.unwrap();
    assert!(
        v.major_number * 10000 + v.minor_number * 100 >= 31701,
        "{v:?}"
    );

    let mut fc = req(pb::CriuReqType::FeatureCheck, None);
    fc.features = Some(pb::CriuFeatures {
        mem_track: Some(true),
        lazy_pages: Some(true),
        pidfd_store: None,
    });
    let (_, r, ok) = swrk().call(&fc, None);
    let f = r.features.expect("features must be present");
    assert!(ok && r.success);
    assert_eq!(
        (f.mem_track, f.lazy_pages),
        (Some(true), Some(true)),
        "written pages are tracked with uffd-wp here; lazy restore has userfaultfd's events"
    );

    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Check, None), None);
    assert!(ok && r.success, "{:?}", r.cr_errmsg);

    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::PreDump, None), None);
    assert!(!ok && !r.success && r.cr_errmsg.unwrap().contains("PRE_DUMP without options"));

    let dir = scratch("rpc-refuse");
    let d = dir_fd(&dir);
    let opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        pid: Some(1),
        auto_dedup: Some(true),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
    assert!(!ok && !r.success);
    let msg = r.cr_errmsg.unwrap();
    assert!(msg.contains("auto_dedup"), "{msg}");
}

/// runc passes `config_file` (`/etc/criu/runc.conf`, or the container's `org.criu.config`
/// annotation) on every request; CRIU reads it after the request's options, which it
/// overrides: here `leave-running` keeps the dumped process alive and `log-file` moves the
/// log. A configuration file that does not exist is skipped, as CRIU skips it.
#[test]
fn config_file_overrides_rpc_options() {
    let dir = scratch("rpc-conf");
    let pid = spawn(&["/bin/sleep", "1000"], &dir.join("log"));
    let _g = KillOnDrop(pid);
    wait_for("sleep", 10, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
    });
    let conf = dir.join("runc.conf");
    std::fs::write(
        &conf,
        "# as a container annotation would name it\nleave-running\nlog-file from-conf.log\n",
    )
    .unwrap();
    let img = dir.join("img");
    let d = dir_fd(&img);
    let opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        // runc sets it for a container with connections: none here.
        tcp_established: Some(true),
        config_file: Some(conf.to_string_lossy().into()),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts.clone())), None);
    assert!(ok && r.success, "{:?}", r.cr_errmsg);
    assert!(alive(pid), "leave-running from the configuration file");
    assert!(img.join("from-conf.log").exists());
    assert!(!img.join("dump.log").exists());
    // A configuration file that is not there changes nothing.
    let img2 = dir.join("img2");
    let d2 = dir_fd(&img2);
    let opts = pb::CriuOpts {
        images_dir_fd: d2.as_raw_fd(),
        leave_running: Some(true),
        config_file: Some("/etc/criu/cryo-no-such-runc.conf".into()),
        ..opts
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
    assert!(ok && r.success, "{:?}", r.cr_errmsg);
    assert!(img2.join("dump.log").exists());
}

/// DUMP and RESTORE of a counter through RPC, with notifications: the dump sends pre-dump
/// and post-dump, the restore pre-restore, setup-namespaces and post-restore (with the
/// restored pid), post-setup-namespaces, pre-resume and post-resume; the counter goes on. A caller that refuses post-dump makes the dump
/// fail and leaves the process running.
#[test]
fn dump_and_restore_over_rpc_with_notifications() {
    let dir = scratch("rpc");
    let out = dir.join("counter.out");
    let pid = spawn(
        &[prog("counter").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the counter", 10, || lines(&out).len() >= 3);
    let img = dir.join("img");
    let d = dir_fd(&img);
    let opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        notify_scripts: Some(true),
        ..Default::default()
    };

    // Refused at post-dump: the dump fails, the counter runs on.
    let (seen, r, ok) = swrk().call(
        &req(pb::CriuReqType::Dump, Some(opts.clone())),
        Some("post-dump"),
    );
    assert!(!ok && !r.success, "{r:?}");
    assert_eq!(names(&seen), ["pre-dump", "post-dump"]);
    assert!(alive(pid));
    let n = lines(&out).len();
    wait_for("the counter to go on", 10, || lines(&out).len() > n);

    let (seen, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&img, "dump.log")
    );
    assert_eq!(r.r#type, pb::CriuReqType::Dump as i32);
    assert_eq!(names(&seen), ["pre-dump", "post-dump"]);
    wait_gone(pid);
    let at_dump = lines(&out).len();

    let ropts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        log_level: Some(4),
        log_file: Some("restore.log".into()),
        notify_scripts: Some(true),
        rst_sibling: Some(true),
        ..Default::default()
    };
    let (seen, r, ok) = swrk().call(&req(pb::CriuReqType::Restore, Some(ropts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&img, "restore.log")
    );
    assert_eq!(r.restore.unwrap().pid, pid);
    assert_eq!(
        names(&seen),
        [
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "pre-resume",
            "post-resume"
        ]
    );
    assert_eq!(
        seen[1].1,
        Some(pid),
        "setup-namespaces carries the root's pid"
    );
    assert_eq!(
        seen[3].1,
        Some(pid),
        "post-restore carries the restored pid"
    );
    wait_for("the counter after restore", 10, || {
        lines(&out).len() >= at_dump + 2
    });
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or restart: {v:?}"
    );
}

/// A work directory of its own (`work_dir_fd`, as runc gets from `--work-path` and podman
/// sets to the container's userdata): the logs go there, into files podman created
/// beforehand, and so do `stats-dump` / `stats-restore` (podman's `--print-stats` reads
/// them there), in CRIU's format, with the figures cryo measured.
#[test]
fn work_dir_gets_logs_and_stats() {
    let dir = scratch("rpc-work");
    let out = dir.join("counter.out");
    let pid = spawn(
        &[prog("counter").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the counter", 10, || lines(&out).len() >= 3);
    let img = dir.join("img");
    let work = dir.join("work");
    let (d, w) = (dir_fd(&img), dir_fd(&work));
    std::fs::write(work.join("dump.log"), "").unwrap();
    std::fs::write(work.join("restore.log"), "").unwrap();
    let opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        work_dir_fd: Some(w.as_raw_fd()),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&work, "dump.log")
    );
    wait_gone(pid);
    assert!(log(&work, "dump.log").contains("Dumped "));
    let st = stats(&work.join("stats-dump"));
    let dump = st.dump.expect("a dump entry");
    assert!(
        dump.pages_written > 0 && dump.pages_scanned >= dump.pages_written,
        "{dump:?}"
    );
    assert!(dump.frozen_time > 0 && dump.memdump_time > 0, "{dump:?}");

    let ropts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        work_dir_fd: Some(w.as_raw_fd()),
        log_level: Some(4),
        log_file: Some("restore.log".into()),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Restore, Some(ropts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&work, "restore.log")
    );
    assert!(log(&work, "restore.log").contains("Restored "));
    let rst = stats(&work.join("stats-restore"))
        .restore
        .expect("a restore entry");
    assert!(rst.forking_time > 0 && rst.restore_time > 0, "{rst:?}");
    assert_eq!(rst.pages_restored, Some(dump.pages_written), "{rst:?}");
    let n = lines(&out).len();
    wait_for("the counter after restore", 10, || {
        lines(&out).len() > n + 1
    });
}

/// A stats file as go-criu reads it: IMG_SERVICE_MAGIC, STATS_MAGIC, a LE u32 size, then
/// one `stats_entry`.
fn stats(p: &Path) -> pb::StatsEntry {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(
        (word(0), word(4)),
        (0x5510_5940, 0x5709_3306),
        "{}",
        p.display()
    );
    let n = word(8) as usize;
    pb::StatsEntry::decode(&b[12..12 + n]).unwrap()
}

/// `--action-script hooks/actions-log.sh` on dump and restore: the script sees every action
/// with CRIU's environment; failing at post-restore kills the restored process instead of
/// letting it run.
#[test]
fn action_script_hook_runs_at_every_point() {
    let dir = scratch("hooks");
    let hook = root().join("hooks/actions-log.sh");
    let hook = hook.to_str().unwrap();
    let (img, pid) = {
        let pid = spawn(&["/bin/sleep", "1000"], &dir.join("log"));
        let _g = KillOnDrop(pid);
        wait_for("sleep", 10, || {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
        });
        let img = dir.join("img");
        dump(pid, &img, &["--action-script", hook]);
        wait_gone(pid);
        (img, pid)
    };
    let actions = |img: &Path| -> Vec<String> {
        lines(&img.join("actions.log"))
            .iter()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(actions(&img), ["pre-dump -", "post-dump -"]);

    // A hook failing at post-restore: nothing is left running.
    let d = img.to_str().unwrap();
    let o = cryo_env(
        &["restore", "-D", d, "-d", "--action-script", hook],
        &[("ACTIONS_LOG_FAIL_AT", "post-restore")],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed at 'post-restore'"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_gone(pid);

    let o = cryo(&["restore", "-D", d, "-d", "--action-script", hook]);
    assert!(o.status.success());
    let _g = KillOnDrop(pid);
    assert!(alive(pid));
    assert_eq!(
        actions(&img),
        [
            "pre-dump -".to_string(),
            "post-dump -".into(),
            "pre-restore -".into(),
            format!("setup-namespaces {pid}"),
            "post-setup-namespaces -".into(),
            format!("post-restore {pid}"),
            "pre-restore -".into(),
            format!("setup-namespaces {pid}"),
            "post-setup-namespaces -".into(),
            format!("post-restore {pid}"),
            "pre-resume -".into(),
            "post-resume -".into(),
        ]
    );
}

/// PAGE_SERVER with `keep_open` (CRIU's way of a caller that runs its own page server): the
/// answer names the server's pid and the port it listens on (0 asked: one picked), the
/// socket stays open, and a DUMP on it with `ps` sends the pages there; the server takes
/// them and exits; the pages and the other images, merged, restore the counter, which goes
/// on from where it was.
#[test]
fn page_server_request_then_dump_to_it_on_the_same_socket() {
    let dir = scratch("rpc-ps");
    let out = dir.join("counter.out");
    let pid = spawn(
        &[prog("counter").to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the counter", 10, || lines(&out).len() >= 3);
    let srv = dir.join("srv");
    let sd = dir_fd(&srv);
    let s = swrk();
    let mut ps_req = req(
        pb::CriuReqType::PageServer,
        Some(pb::CriuOpts {
            images_dir_fd: sd.as_raw_fd(),
            log_level: Some(4),
            log_file: Some("page-server.log".into()),
            ps: Some(pb::CriuPageServerInfo {
                address: Some("127.0.0.1".into()),
                port: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    ps_req.keep_open = Some(true);
    s.send(&ps_req);
    let r = s.recv();
    assert!(r.success, "{:?}", r.cr_errmsg);
    assert_eq!(r.r#type, pb::CriuReqType::PageServer as i32);
    let info = r.ps.expect("the page server's pid and port");
    let (server, port) = (info.pid.unwrap(), info.port.unwrap());
    assert!(server > 0 && port > 0, "{info:?}");
    assert!(alive(server));

    let img = dir.join("img");
    let d = dir_fd(&img);
    s.send(&req(
        pb::CriuReqType::Dump,
        Some(pb::CriuOpts {
            images_dir_fd: d.as_raw_fd(),
            pid: Some(pid),
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            ps: Some(pb::CriuPageServerInfo {
                address: Some("127.0.0.1".into()),
                port: Some(port),
                ..Default::default()
            }),
            ..Default::default()
        }),
    ));
    let r = s.recv();
    assert!(r.success, "{:?}\n{}", r.cr_errmsg, log(&img, "dump.log"));
    assert_eq!(r.r#type, pb::CriuReqType::Dump as i32);
    let Swrk { mut child, sk } = s;
    drop(sk);
    assert!(child.wait().unwrap().success());
    wait_gone(pid);
    let at_dump = lines(&out).len();
    wait_gone(server);
    assert!(
        log(&srv, "page-server.log").contains("page server"),
        "the server logs where the request said"
    );
    let mut pages = 0;
    for e in std::fs::read_dir(&srv).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") {
            pages += usize::from(name.starts_with("pages-"));
            std::fs::copy(e.path(), img.join(e.file_name())).unwrap();
        }
    }
    assert!(pages > 0, "the pages went to the page server");
    restore(&img);
    let _g2 = KillOnDrop(pid);
    wait_for("the counter after restore", 10, || {
        lines(&out).len() >= at_dump + 2
    });
    let v: Vec<u64> = lines(&out).iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        v.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or restart: {v:?}"
    );
}

/// The page servers PAGE_SERVER and PAGE_SERVER_CHLD start are reaped by the service as
/// soon as they end, while it goes on serving (`keep_open`): no zombie is left behind.
#[test]
fn page_servers_the_service_started_leave_no_zombies() {
    use std::io::{Read, Write};
    let dir = scratch("rpc-ps-reap");
    let s = swrk();
    let mut servers = Vec::new();
    for (i, ty) in [pb::CriuReqType::PageServer, pb::CriuReqType::PageServerChld]
        .into_iter()
        .enumerate()
    {
        let d = dir_fd(&dir.join(format!("srv{i}")));
        let mut r = req(
            ty,
            Some(pb::CriuOpts {
                images_dir_fd: d.as_raw_fd(),
                ps: Some(pb::CriuPageServerInfo {
                    address: Some("127.0.0.1".into()),
                    port: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        r.keep_open = Some(true);
        s.send(&r);
        let a = s.recv();
        assert!(a.success, "{:?}", a.cr_errmsg);
        let info = a.ps.unwrap();
        servers.push((info.pid.unwrap(), info.port.unwrap()));
    }
    for &(pid, port) in &servers {
        // A client with nothing to send: CLOSE, the answer, hang up; the server exits.
        let mut sk =
            std::net::TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap())).unwrap();
        let mut rec = [0u8; 32];
        rec[..4].copy_from_slice(&0x1023u32.to_le_bytes());
        sk.write_all(&rec).unwrap();
        let mut st = [0u8; 4];
        sk.read_exact(&mut st).unwrap();
        assert_eq!(i32::from_le_bytes(st), 0);
        drop(sk);
        // Gone from /proc, not a zombie of the service (which still runs: it waits for the
        // next request). Not reaped here: neither server is this test's child.
        wait_for("the page server to be reaped", 30, || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    let Swrk { mut child, sk } = s;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service was still serving"
    );
    drop(sk);
    assert!(child.wait().unwrap().success());
}

/// `network_lock` (CRIU's `criu_network_lock_method`) chooses how a tree with a network
/// namespace of its own is locked between dump and restore: IPTABLES a chain, NFTABLES a
/// table, SKIP nothing; inventory.img names the method, and a RESTORE over RPC (joining
/// the namespace, as runc does) lifts the lock with it, the sleeper running on each time.
#[test]
fn network_lock_method_chooses_how_the_namespace_is_locked() {
    if !integration::netns::need(&["ip", "iptables", "nft", "nsenter"]) {
        return;
    }
    let dir = scratch("rpc-netlock");
    let net = integration::netns::Net::new("rl", 107);
    let pid = integration::netns::Net::spawn_in(&net.a, &["sleep", "1000"], &dir.join("log"));
    let _g = KillOnDrop(pid);
    let locks = || {
        let run = |args: &[&str]| {
            let o = Command::new("ip")
                .args(["netns", "exec", &net.a])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).contains("CRIU-")
        };
        (
            run(&["iptables", "-w", "-n", "-L"]),
            run(&["nft", "list", "tables"]),
        )
    };
    let key = format!("net[{}]:srvnet", net.a_ino());
    // (RPC method, the lock it leaves: iptables chain, nftables table, inventory number)
    for (method, chain, table, inv) in [
        (pb::CriuNetworkLockMethod::Iptables, true, false, Some(0)),
        (pb::CriuNetworkLockMethod::Nftables, false, true, Some(1)),
        (pb::CriuNetworkLockMethod::Skip, false, false, None),
    ] {
        let img = dir.join(format!("img-{method:?}"));
        let d = dir_fd(&img);
        let opts = pb::CriuOpts {
            images_dir_fd: d.as_raw_fd(),
            pid: Some(pid),
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            external: vec![key.clone()],
            network_lock: Some(method as i32),
            ..Default::default()
        };
        let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
        assert!(
            ok && r.success,
            "{method:?}: {:?}\n{}",
            r.cr_errmsg,
            log(&img, "dump.log")
        );
        wait_gone(pid);
        assert_eq!(
            locks(),
            (chain, table),
            "{method:?}: (iptables chain, nftables table) between dump and restore"
        );
        let inventory: Vec<pb::InventoryEntry> = cryo::image::ImageDir::open(&img)
            .unwrap()
            .read("inventory.img", cryo::image::INVENTORY)
            .unwrap();
        assert_eq!(
            inventory[0].network_lock_method, inv,
            "{method:?}: inventory.img's network_lock_method"
        );
        let ropts = pb::CriuOpts {
            images_dir_fd: d.as_raw_fd(),
            log_level: Some(4),
            log_file: Some("restore.log".into()),
            rst_sibling: Some(true),
            join_ns: vec![pb::JoinNamespace {
                ns: "net".into(),
                ns_file: integration::netns::Net::path(&net.a),
                extra_opt: None,
            }],
            ..Default::default()
        };
        let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Restore, Some(ropts)), None);
        assert!(
            ok && r.success,
            "{method:?}: {:?}\n{}",
            r.cr_errmsg,
            log(&img, "restore.log")
        );
        assert!(alive(pid), "{method:?}: restored");
        assert_eq!(
            locks(),
            (false, false),
            "{method:?}: a lock is left after the restore"
        );
    }
}

/// `ext_unix_sk` over RPC, as `--ext-unix-sk`: a program connected to a log socket outside
/// the tree is refused without it (and runs on), dumped with it, refused at RESTORE without
/// it, and restored with it connected to the same log socket, where its next line arrives.
#[test]
fn ext_unix_sk_lets_a_log_client_be_dumped_and_restored() {
    let dir = scratch("rpc-extunix");
    let log_path = dir.join("log.sock");
    let syslog = std::os::unix::net::UnixDatagram::bind(&log_path).unwrap();
    syslog
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let out = dir.join("client.out");
    let script = root().join("integration/scripts/log_client.py");
    let pid = spawn(
        &[
            "python3",
            script.to_str().unwrap(),
            log_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("client.log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the log client", 20, || {
        lines(&out).iter().any(|l| l == "ready")
    });
    let recv = |want: &str| {
        let mut b = [0u8; 256];
        let n = syslog.recv(&mut b).expect("a log line");
        assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), want);
    };
    signal(pid, libc::SIGUSR1);
    recv("line 1");
    let img = dir.join("img");
    let d = dir_fd(&img);
    let opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts.clone())), None);
    assert!(!ok && !r.success, "dumped without ext_unix_sk: {r:?}");
    assert!(
        log(&img, "dump.log").contains("outside the dumped tree"),
        "{}",
        log(&img, "dump.log")
    );
    assert!(alive(pid));
    let opts = pb::CriuOpts {
        ext_unix_sk: Some(true),
        ..opts
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(opts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&img, "dump.log")
    );
    wait_gone(pid);
    let ropts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        log_level: Some(4),
        log_file: Some("restore.log".into()),
        rst_sibling: Some(true),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Restore, Some(ropts.clone())), None);
    assert!(!ok && !r.success, "restored without ext_unix_sk: {r:?}");
    assert!(!alive(pid));
    // The killed puppet of that restore (a sibling: this test's child) is reaped here.
    wait_gone(pid);
    assert!(log_path.exists(), "the log socket must be left alone");
    let ropts = pb::CriuOpts {
        ext_unix_sk: Some(true),
        ..ropts
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Restore, Some(ropts)), None);
    assert!(
        ok && r.success,
        "{:?}\n{}",
        r.cr_errmsg,
        log(&img, "restore.log")
    );
    assert_eq!(r.restore.unwrap().pid, pid);
    signal(pid, libc::SIGUSR1);
    recv("line 2");
}
