//! Netlink sockets, packet sockets, ping and raw IP sockets, and unix sockets whose peer is
//! outside the tree (issue #10, part 4; issue #12 for ping and raw sockets).

use std::process::Command;

use integration::netns::{need, Net};
use integration::*;

/// A NETLINK_ROUTE socket bound to the link and address groups, in a network namespace of
/// the test's: after the restore it has the same port id and groups and still receives the
/// namespace's link events.
#[test]
fn netlink_socket_keeps_its_port_and_groups() {
    if !need(&["ip", "nsenter", "python3"]) {
        return;
    }
    let dir = scratch("netlink");
    let net = Net::new("nl", 95);
    let out = dir.join("nl.out");
    let script = root().join("integration/scripts/netlink_listener.py");
    let pid = Net::spawn_in(
        &net.a,
        &["python3", script.to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("nl.log"),
    );
    let _g = KillOnDrop(pid);
    let ready = wait_ready(&out);
    let (portid, groups) = (ready[0], ready[1]);
    assert_eq!(groups, 0x11);
    let mtu = |m: &str| {
        let o = Command::new("ip")
            .args(["-n", &net.a, "link", "set", "lo", "mtu", m])
            .output()
            .unwrap();
        assert!(o.status.success());
    };
    mtu("1400");
    wait_for("a link event", 10, || {
        lines(&out).iter().any(|l| l == "event 16")
    });
    let key = format!("net[{}]:k", net.a_ino());
    let img = dir.join("img");
    // Events that arrive between the check and the dump would be refused: wait for quiet.
    std::thread::sleep(std::time::Duration::from_millis(200));
    dump(pid, &img, &["--external", &key]);
    wait_gone(pid);
    let v: serde_json::Value =
        serde_json::from_slice(&cryo(&["show", img.join("files.img").to_str().unwrap()]).stdout)
            .unwrap();
    let nl = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.get("nlsk"))
        .expect("a netlink record");
    assert_eq!(nl["portid"].as_i64(), Some(i64::from(portid)), "{nl}");
    let join = net.join_a();
    restore_with(&img, &["--join-ns", &join]);
    let events = lines(&out).iter().filter(|l| *l == "event 16").count();
    signal(pid, libc::SIGUSR1);
    wait_for("the name", 10, || {
        lines(&out).iter().any(|l| l.starts_with("name "))
    });
    let name = lines(&out)
        .into_iter()
        .find(|l| l.starts_with("name "))
        .unwrap();
    assert_eq!(name, format!("name {portid} {groups}"));
    mtu("1500");
    wait_for("a link event after the restore", 10, || {
        lines(&out).iter().filter(|l| *l == "event 16").count() > events
    });
}

/// A program connected to a log socket it does not own (a named datagram socket outside
/// the tree, like syslog's /dev/log): refused without `--ext-unix-sk`, naming the option;
/// with it, dumped and restored connected to the same log socket again, where its next
/// line arrives.
#[test]
fn socket_connected_to_a_log_socket_outside_the_tree() {
    let dir = scratch("extunix");
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
    let e = dump_fails(pid, &dir.join("img0"), &[]);
    assert!(
        e.contains("outside the dumped tree") && e.contains("--ext-unix-sk"),
        "{e}"
    );
    assert!(alive(pid));
    let img = dir.join("img");
    dump(pid, &img, &["--ext-unix-sk"]);
    wait_gone(pid);
    let d = img.to_str().unwrap();
    let o = cryo(&["restore", "-D", d, "-d"]);
    assert!(
        !o.status.success(),
        "a restore without --ext-unix-sk should be refused"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--ext-unix-sk"), "{err}");
    assert!(log_path.exists(), "the log socket must be left alone");
    restore_with(&img, &["--ext-unix-sk"]);
    signal(pid, libc::SIGUSR1);
    recv("line 2");
}

/// A raw packet socket bound to the loopback of a namespace of the test's, with auxiliary
/// data on and a promiscuous membership: restored bound to the same interface with the same
/// options and membership, it receives the frames sent there again.
#[test]
fn packet_socket_keeps_its_interface_and_options() {
    if !need(&["ip", "nsenter", "python3", "ping"]) {
        return;
    }
    let dir = scratch("packet");
    let net = Net::new("pk", 100);
    let out = dir.join("pk.out");
    let script = root().join("integration/scripts/packet_listener.py");
    let pid = Net::spawn_in(
        &net.a,
        &["python3", script.to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("pk.log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the listener", 20, || {
        lines(&out).iter().any(|l| l == "ready")
    });
    let ping = || {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.a,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "127.0.0.1",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let frames = || lines(&out).iter().filter(|l| l.starts_with("got ")).count();
    ping();
    wait_for("frames", 10, || frames() > 0);
    let key = format!("net[{}]:k", net.a_ino());
    let img = dir.join("img");
    dump(pid, &img, &["--external", &key]);
    wait_gone(pid);
    let v: serde_json::Value =
        serde_json::from_slice(&cryo(&["show", img.join("files.img").to_str().unwrap()]).stdout)
            .unwrap();
    let psk = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.get("psk"))
        .expect("a packet record")
        .clone();
    assert_eq!(psk["aux_data"], true, "{psk}");
    assert_eq!(psk["mclist"][0]["type"], 1, "{psk}");
    let join = net.join_a();
    restore_with(&img, &["--join-ns", &join]);
    signal(pid, libc::SIGUSR1);
    wait_for("the options", 10, || {
        lines(&out).iter().any(|l| l == "opts 1")
    });
    let before = frames();
    ping();
    wait_for("frames after the restore", 10, || frames() > before);
}

/// A ping socket (ICMP echo, its echo id), a raw ICMP socket bound to an address with an
/// ICMP type filter, a connected raw UDP socket and a raw IPv6 IPPROTO_RAW socket, in a
/// network namespace of the test's: after the restore each has its id, address, peer and
/// options back, and the ping socket gets an answer to a new echo request.
#[test]
fn ping_and_raw_sockets_keep_their_ids_addresses_and_filters() {
    if !need(&["ip", "nsenter", "python3"]) {
        return;
    }
    let dir = scratch("pingraw");
    let net = Net::new("pr", 101);
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.a,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("pr.out");
    let script = root().join("integration/scripts/ping_raw.py");
    let pid = Net::spawn_in(
        &net.a,
        &["python3", script.to_str().unwrap(), out.to_str().unwrap()],
        &dir.join("pr.log"),
    );
    let _g = KillOnDrop(pid);
    let ident = wait_ready(&out)[0];
    let report = |n: usize| -> Vec<String> {
        signal(pid, libc::SIGUSR1);
        wait_for("the report", 10, || {
            lines(&out)
                .iter()
                .filter(|l| l.starts_with("reply") || *l == "noreply")
                .count()
                >= n
        });
        lines(&out)
    };
    let before = report(1);
    let want = [
        format!("ident {ident}"),
        format!("filter {}", 1 << 13),
        "raw 127.0.0.14".into(),
        "peer 127.0.0.10".into(),
        "hdrincl 1".into(),
        "reply 0".into(),
    ];
    for w in &want {
        assert!(before.contains(w), "before the dump: {w} in {before:?}");
    }
    let key = format!("net[{}]:k", net.a_ino());
    let img = dir.join("img");
    dump(pid, &img, &["--external", &key]);
    wait_gone(pid);
    let join = net.join_a();
    restore_with(&img, &["--join-ns", &join]);
    let all = report(2);
    let after = &all[before.len()..];
    for w in &want {
        assert!(
            after.iter().any(|l| l == w),
            "after the restore: {w} in {after:?}"
        );
    }
}
