//! Network namespaces and the network lock (issue #10), with real processes: the dumped
//! process lives in a network namespace of its own, joined by a veth to a "host" namespace
//! the test makes (`ip netns add`), which stands for another machine; all traffic is on
//! addresses of namespaces the test made.
//!
//! - `namespace_comes_back_whole_on_another_host`: links (veth with MTU, MAC), IPv4 and IPv6
//!   addresses, routes (main and table 100), a rule, sysctls and an nftables rule are saved
//!   (the iproute2-format images are read back by `ip ... showdump`, the others by crit),
//!   the images are copied, and the process is restored from a second host namespace with
//!   the veth's peer placed there (`--external veth[v0]:NAME`, as CRIU): everything is back
//!   and the namespace answers pings through the veth, IPv4 and IPv6.
//! - `lock_drops_packets_without_reset`: while the tree is frozen (a dump paused with
//!   `CRYO_FAULT_PAUSE` after the lock), a peer's TCP connect to a closed port times out
//!   instead of being refused (no RST reaches it); afterwards it is refused again and no table
//!   is left. Also with `--network-lock iptables` and `skip`.
//! - `faults_leave_nothing_behind`: a fault at every dump stage leaves the process running,
//!   reachable and without a lock table; at every restore stage, no process, no veth peer in
//!   the host namespace (so no namespace either), no table.
//! - `killed_cryo_lock_is_removed_by_the_next_run`: cryo SIGKILLed while the lock is held
//!   leaves its table; the next cryo run removes it and says so.
//! - `unsupported_link_is_refused_before_the_dump`: a link kind cryo cannot make again is
//!   refused by name, the process untouched.
//! - `tun_and_tap_files_come_back`: tun/tap files of every shape (unattached, attached, a
//!   detached queue of a multi-queue device, a tap with its send buffer and vnet header
//!   size) and a persistent device come back: same devices and flags, packets through the
//!   queues both ways, owner, group, MAC and persistence as before; CRIU's images (crit).
//! - `inet_sockets_stay_in_the_namespace_they_were_made_in`: TCP and UDP sockets a process
//!   made in a second namespace of the tree before coming back (a listener, a bound UDP
//!   socket, an established connection with `--tcp-established`) answer there, not in the
//!   process's own namespace, before and after the restore.
//! - `sockets_of_a_namespace_outside_the_tree_are_refused_before_the_seize`: sockets made in
//!   a namespace only a bind mount holds are refused before the seize, naming the namespace.
//! - `sockets_of_a_childs_namespace_held_by_its_parent_come_back`: a parent's sockets and
//!   tun file of its child's namespace (made after the parent's fds) come back there.
//! - `ipv6_address_generation_modes_come_back`: `addrgenmode` random / eui64 / none with
//!   stable secrets, and the same IPv6 addresses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration::netns::python_in_own_netns;
use integration::{
    alive, children, criu42, cryo, cryo_bin, cryo_env, dump, dump_fails, dump_with_tool, kill,
    lines, log, ok, restore_with_tool, scratch, spawn, wait_for, wait_gone, KillOnDrop,
};

/// The tests of this file run one at a time: every cryo run removes the locks of dead cryo
/// processes, which the killed-cryo test wants to see done by its own run.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tools the tests need: missing ones make the test fail under CI, else skip it.
fn need(tools: &[&str]) -> bool {
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            integration::skip(&format!(
                "{t} is not installed (integration/setup.sh installs it)"
            ));
            return false;
        }
    }
    true
}

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]))
}

fn sh(what: &str, argv: &[&str]) -> String {
    ok(&run(argv), &format!("{what}: {}", argv.join(" ")))
}

/// A command run inside the network namespace of `pid`.
fn in_ns(pid: i32, argv: &[&str]) -> Output {
    let net = format!("--net=/proc/{pid}/ns/net");
    let mut a = vec!["nsenter", net.as_str()];
    a.extend_from_slice(argv);
    run(&a)
}

/// Named network namespaces (`ip netns add`), deleted on drop: the test's "hosts".
struct Hosts(Vec<String>);

impl Hosts {
    fn new(test: &str, tags: &[&str]) -> Hosts {
        let me = std::process::id();
        let h = Hosts(tags.iter().map(|t| format!("cn-{me}-{test}-{t}")).collect());
        for n in &h.0 {
            sh("ip netns add", &["ip", "netns", "add", n]);
            sh("lo up", &["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        h
    }

    fn path(&self, i: usize) -> String {
        format!("/run/netns/{}", self.0[i])
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}

/// A process in a network namespace of its own, joined to host `host` by a veth (`v0` inside,
/// `vh0` on the host), 10.203.0.2/24 and fd20:3::2/64 inside, .1 on the host side. It prints
/// "ready" and then a line per SIGUSR1.
fn start_server(dir: &Path, host: &str) -> (i32, PathBuf) {
    let out = dir.join("out");
    let script = r#"
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("ready", flush=True)
n = 0
while True:
    signal.sigwait([signal.SIGUSR1])
    n += 1
    print("signal", n, flush=True)
"#;
    let pid = spawn(&["unshare", "-n", "python3", "-c", script], &out);
    wait_for("the server", 10, || {
        lines(&out).first().is_some_and(|l| l == "ready")
    });
    let p = pid.to_string();
    // Made right in the two namespaces (tests run concurrently in the same root namespace).
    sh(
        "veth",
        &[
            "ip", "link", "add", "v0", "netns", &p, "type", "veth", "peer", "name", "vh0", "netns",
            host,
        ],
    );
    let inside: &[&[&str]] = &[
        &["ip", "link", "set", "lo", "up"],
        &[
            "ip",
            "link",
            "set",
            "v0",
            "mtu",
            "1400",
            "address",
            "02:00:0a:cb:00:02",
        ],
        &["ip", "link", "set", "v0", "up"],
        &["ip", "addr", "add", "10.203.0.2/24", "dev", "v0"],
        &["ip", "addr", "add", "fd20:3::2/64", "dev", "v0", "nodad"],
        &["ip", "route", "add", "10.204.0.0/16", "via", "10.203.0.1"],
        &[
            "ip",
            "route",
            "add",
            "10.205.0.0/16",
            "dev",
            "v0",
            "table",
            "100",
        ],
        &[
            "ip",
            "rule",
            "add",
            "from",
            "10.203.0.2",
            "lookup",
            "100",
            "pref",
            "1000",
        ],
        &["sysctl", "-qw", "net.ipv4.conf.v0.rp_filter=2"],
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        &["sysctl", "-qw", "net.unix.max_dgram_qlen=99"],
        &["nft", "add", "table", "inet", "app"],
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "app",
            "input",
            "{ type filter hook input priority 0; }",
        ],
        &[
            "nft", "add", "rule", "inet", "app", "input", "tcp", "dport", "7777", "drop",
        ],
    ];
    for c in inside {
        ok(
            &in_ns(pid, c),
            &format!("in the server's namespace: {}", c.join(" ")),
        );
    }
    host_side(host);
    (pid, out)
}

/// The host's end of the veth: 10.203.0.1/24, fd20:3::1/64, up.
fn host_side(host: &str) {
    for c in [
        vec![
            "ip",
            "-n",
            host,
            "addr",
            "add",
            "10.203.0.1/24",
            "dev",
            "vh0",
        ],
        vec![
            "ip",
            "-n",
            host,
            "addr",
            "add",
            "fd20:3::1/64",
            "dev",
            "vh0",
            "nodad",
        ],
        vec!["ip", "-n", host, "link", "set", "vh0", "up"],
    ] {
        sh("host side", &c);
    }
}

/// What the namespace of `pid` looks like, for comparing before and after.
fn snapshot(pid: i32) -> Vec<String> {
    let mut s = Vec::new();
    let keep = |o: Output| -> String {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            // Kernel-made and timing-dependent entries.
            .filter(|l| {
                !l.contains("fe80::") && !l.contains("tentative") && !l.contains("valid_lft")
            })
            .map(|l| l.replace(" linkdown", "").trim().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    s.push(
        keep(in_ns(pid, &["ip", "-o", "link", "show", "v0"]))
            .split("link-netns")
            .next()
            .unwrap_or("")
            .replace("NO-CARRIER,", "")
            .replace("LOWER_UP,", "")
            .replace(",LOWER_UP", "")
            .replace("state UP", "")
            .replace("state DOWN", "")
            .split_whitespace()
            .filter(|w| !w.starts_with("state"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    s.push(keep(in_ns(pid, &["ip", "-o", "addr", "show"])));
    s.push(
        keep(in_ns(pid, &["ip", "route", "show", "table", "all"]))
            .lines()
            .filter(|l| !l.contains("table local") && !l.starts_with("multicast"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    s.push(keep(in_ns(pid, &["ip", "rule"])));
    s.push(keep(in_ns(pid, &["ip", "-6", "rule"])));
    s.push(keep(in_ns(
        pid,
        &[
            "sysctl",
            "net.ipv4.conf.v0.rp_filter",
            "net.ipv4.ip_forward",
            "net.unix.max_dgram_qlen",
            "net.ipv6.conf.v0.mtu",
        ],
    )));
    s.push(keep(in_ns(pid, &["nft", "list", "ruleset"])));
    s
}

fn ping(host: &str, addr: &str) -> bool {
    let v6 = addr.contains(':');
    let mut a = vec!["ip", "netns", "exec", host, "ping", "-c1", "-W2"];
    if v6 {
        a.push("-6");
    }
    a.push(addr);
    run(&a).status.success()
}

/// Whether `addr` answers a ping from `host` within a few tries (a loaded machine can drop
/// one echo; a locked network drops them all).
fn answers(host: &str, addr: &str) -> bool {
    (0..4).any(|_| ping(host, addr))
}

/// nftables tables in the namespace of `pid` (or a named host).
fn tables_of(pid: i32) -> String {
    String::from_utf8_lossy(&in_ns(pid, &["nft", "list", "tables"]).stdout).into_owned()
}

fn host_tables(host: &str) -> String {
    String::from_utf8_lossy(&run(&["ip", "netns", "exec", host, "nft", "list", "tables"]).stdout)
        .into_owned()
}

/// A TCP connect from host `host` to 10.203.0.2:`port`: "refused", "timeout" or "connected".
fn connect(host: &str, port: u16) -> String {
    let script = format!(
        r#"
import socket
s = socket.socket()
s.settimeout(1.5)
try:
    s.connect(("10.203.0.2", {port}))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"#
    );
    let o = run(&["ip", "netns", "exec", host, "python3", "-c", &script]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn images_named(img: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(img)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// An image file as `cryo show` decodes it (JSON).
fn showdump_json(file: &Path) -> serde_json::Value {
    let o = cryo(&["show", file.to_str().unwrap()]);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("cryo show {}: {e}: {}", file.display(), ok(&o, "show")))
}

/// `ip OBJ showdump < FILE` (iproute2 reads its own save format).
fn showdump(obj: &[&str], file: &Path) -> String {
    let mut a = vec!["ip"];
    a.extend_from_slice(obj);
    a.push("showdump");
    let o = Command::new(a[0])
        .args(&a[1..])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    ok(
        &o,
        &format!("ip {} showdump < {}", obj.join(" "), file.display()),
    )
}

#[test]
fn namespace_comes_back_whole_on_another_host() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter", "ping", "crit"]) {
        return;
    }
    let dir = scratch("netns-whole");
    let hosts = Hosts::new("whole", &["a", "b", "c"]);
    let (a, b) = (hosts.0[0].clone(), hosts.0[1].clone());
    let (pid, out) = start_server(&dir, &a);
    let _g = KillOnDrop(pid);
    assert!(
        answers(&a, "10.203.0.2"),
        "the server answers before the dump"
    );
    let before = snapshot(pid);
    let tables_before = integration::own_lock_tables();
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    assert!(
        !host_tables(&a).contains("CRIU-") && integration::own_lock_tables() == tables_before,
        "a lock table was left"
    );
    // The images: CRIU's names and formats.
    let id = images_named(&img, "netns-")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("netns-")
        .trim_end_matches(".img")
        .to_string();
    let f = |n: &str| img.join(format!("{n}-{id}.img"));
    let routes = showdump(&["route"], &f("route"));
    assert!(routes.contains("10.204.0.0/16 via 10.203.0.1"), "{routes}");
    assert!(
        routes.contains("10.205.0.0/16 dev") && routes.contains("table 100"),
        "{routes}"
    );
    let addrs = showdump(&["addr"], &f("ifaddr"));
    assert!(
        addrs.contains("10.203.0.2/24") && addrs.contains("fd20:3::2/64"),
        "{addrs}"
    );
    // `ip rule` has no showdump: `ip rule restore` takes the image in a scratch namespace.
    let o = Command::new("ip")
        .args(["-n", &hosts.0[2], "rule", "restore"])
        .stdin(std::fs::File::open(f("rule")).unwrap())
        .output()
        .unwrap();
    ok(&o, "ip rule restore < rule image");
    let rules = sh("rules", &["ip", "-n", &hosts.0[2], "rule"]);
    assert!(rules.contains("from 10.203.0.2 lookup 100"), "{rules}");
    let nft = std::fs::read_to_string(f("nftables")).unwrap();
    assert!(
        nft.contains("tcp dport 7777 drop") && !nft.contains("CRIU-"),
        "{nft}"
    );
    for n in ["netdev", "netns"] {
        let j = sh("crit", &["crit", "decode", "-i", f(n).to_str().unwrap()]);
        if n == "netdev" {
            assert!(
                j.contains("\"v0\"") && j.contains("VETH") && j.contains("1400"),
                "{j}"
            );
        }
    }

    // Another "host": the images are copied; cryo runs in that host's network namespace, so
    // the veth's peer is made there, under the name given.
    let moved = dir.join("img-b");
    sh(
        "cp",
        &["cp", "-a", img.to_str().unwrap(), moved.to_str().unwrap()],
    );
    let m = moved.to_str().unwrap();
    // Without the peer's name the restore says what to give.
    let o = run(&[
        "nsenter",
        &format!("--net={}", hosts.path(1)),
        cryo_bin().to_str().unwrap(),
        "restore",
        "-D",
        m,
        "-d",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("veth[v0]"), "{e}");
    assert!(!alive(pid));
    let o = run(&[
        "nsenter",
        &format!("--net={}", hosts.path(1)),
        cryo_bin().to_str().unwrap(),
        "restore",
        "-D",
        m,
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--external",
        "veth[v0]:vh0",
    ]);
    assert!(
        o.status.success(),
        "restore: {}",
        log(&moved, "restore.log")
    );
    let _g2 = KillOnDrop(pid);
    assert!(alive(pid), "restored with its pid");
    let ino = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    let theirs = ino(&format!("/proc/{pid}/ns/net"));
    assert_ne!(theirs, ino("/proc/self/ns/net"));
    assert_ne!(theirs, ino(&hosts.path(1)));
    let after = snapshot(pid);
    assert_eq!(before, after, "the namespace came back different");
    assert!(
        !tables_of(pid).contains("CRIU-"),
        "lock table left: {}",
        tables_of(pid)
    );
    // The peer is on host b now, where the host side is set up as on a.
    assert!(!sh("links of b", &["ip", "-n", &b, "-o", "link"]).is_empty());
    host_side(&b);
    assert!(
        ping(&b, "10.203.0.2"),
        "the restored namespace answers over the veth"
    );
    assert!(
        ping(&b, "fd20:3::2"),
        "the restored namespace answers over IPv6"
    );
    integration::signal(pid, libc::SIGUSR1);
    wait_for("the restored server", 10, || {
        lines(&out).iter().any(|l| l == "signal 1")
    });
    kill(pid);
}

/// A dump of `pid` started in the background with `CRYO_FAULT_PAUSE`.
fn paused_dump(pid: i32, img: &Path, pause: &str, extra: &[&str]) -> std::process::Child {
    let p = pid.to_string();
    let mut c = Command::new(cryo_bin());
    c.args([
        "dump",
        "-t",
        &p,
        "-D",
        img.to_str().unwrap(),
        "-v4",
        "-o",
        "dump.log",
    ])
    .args(extra)
    .env("CRYO_FAULT_PAUSE", pause)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn lock_drops_packets_without_reset() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter", "ping", "iptables"]) {
        return;
    }
    let dir = scratch("netns-lock");
    let hosts = Hosts::new("lock", &["a"]);
    let a = hosts.0[0].clone();
    let (pid, _) = start_server(&dir, &a);
    let _g = KillOnDrop(pid);
    assert_eq!(
        connect(&a, 9),
        "refused",
        "a closed port answers with a reset"
    );
    for (method, table) in [("nftables", true), ("iptables", false)] {
        let img = dir.join(format!("img-{method}"));
        let child = paused_dump(
            pid,
            &img,
            "netlock:4",
            &["--leave-running", "--network-lock", method],
        );
        let locked = || {
            if table {
                tables_of(pid).contains("CRIU-")
            } else {
                String::from_utf8_lossy(&in_ns(pid, &["iptables", "-S"]).stdout)
                    .contains("-j CRIU-")
            }
        };
        wait_for("the lock", 10, locked);
        // The tree is frozen and locked: the peer hears nothing, not even a reset.
        assert_eq!(
            connect(&a, 9),
            "timeout",
            "{method}: a reset reached the peer"
        );
        assert!(
            !ping(&a, "10.203.0.2"),
            "{method}: ping answered while locked"
        );
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "dump: {}", log(&img, "dump.log"));
        assert!(alive(pid));
        assert!(!locked(), "{method}: the lock was left");
        assert!(!tables_of(pid).contains("CRIU-"));
        let rules = String::from_utf8_lossy(&in_ns(pid, &["iptables", "-S"]).stdout).into_owned();
        assert!(!rules.contains("CRIU-"), "{rules}");
        assert_eq!(connect(&a, 9), "refused", "{method}: unlocked again");
    }
    // skip: no lock at all.
    let img = dir.join("img-skip");
    let child = paused_dump(
        pid,
        &img,
        "netlock:2",
        &["--leave-running", "--network-lock", "skip"],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(connect(&a, 9), "refused");
    assert!(child.wait_with_output().unwrap().status.success());
    kill(pid);
}

#[test]
fn faults_leave_nothing_behind() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter", "ping"]) {
        return;
    }
    let dir = scratch("netns-faults");
    let hosts = Hosts::new("faults", &["a", "b"]);
    let (a, b) = (hosts.0[0].clone(), hosts.0[1].clone());
    let (pid, _) = start_server(&dir, &a);
    let _g = KillOnDrop(pid);
    for stage in ["seize", "netlock", "collect", "parasite", "memory", "write"] {
        let img = dir.join(format!("dump-{stage}"));
        let p = pid.to_string();
        let o = cryo_env(
            &["dump", "-t", &p, "-D", img.to_str().unwrap()],
            &[("CRYO_FAULT_INJECT", stage)],
        );
        assert!(!o.status.success(), "{stage}: the fault was not injected");
        assert!(alive(pid), "{stage}: the process died");
        assert!(!tables_of(pid).contains("CRIU-"), "{stage}: lock left");
        assert!(
            answers(&a, "10.203.0.2"),
            "{stage}: the network stayed locked"
        );
    }
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let d = img.to_str().unwrap();
    let peer_gone =
        || !String::from_utf8_lossy(&run(&["ip", "-n", &b, "-o", "link"]).stdout).contains("vh0");
    for stage in [
        "verify",
        "fork",
        "netns",
        "files",
        "memory",
        "task",
        "threads",
        "creds",
        "finish",
        "netunlock",
    ] {
        let o = Command::new("nsenter")
            .arg(format!("--net={}", hosts.path(1)))
            .arg(cryo_bin())
            .args(["restore", "-D", d, "-d", "--external", "veth[v0]:vh0"])
            .env("CRYO_FAULT_INJECT", stage)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success(), "{stage}: the fault was not injected");
        wait_gone(pid);
        // The peer goes when the namespace does (the kernel frees it asynchronously).
        wait_for(&format!("{stage}: the veth peer to go"), 10, peer_gone);
        assert!(!host_tables(&b).contains("CRIU-"), "{stage}: table left");
    }
    // And then it restores.
    let o = Command::new("nsenter")
        .arg(format!("--net={}", hosts.path(1)))
        .arg(cryo_bin())
        .args(["restore", "-D", d, "-d", "--veth-pair", "v0=vh0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _g2 = KillOnDrop(pid);
    host_side(&b);
    assert!(answers(&b, "10.203.0.2"));
    kill(pid);
}

#[test]
fn killed_cryo_lock_is_removed_by_the_next_run() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter", "ping"]) {
        return;
    }
    let dir = scratch("netns-killed");
    let hosts = Hosts::new("killed", &["a"]);
    let a = hosts.0[0].clone();
    let (pid, _) = start_server(&dir, &a);
    let _g = KillOnDrop(pid);
    let img = dir.join("img");
    let mut child = paused_dump(pid, &img, "netlock:60", &[]);
    let cryo_pid = child.id();
    wait_for("the lock", 10, || tables_of(pid).contains("CRIU-"));
    child.kill().unwrap();
    child.wait().unwrap();
    // The dumped process goes on (its tracer is gone), but its network stays locked.
    wait_for("the process to run again", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|s| s.contains("TracerPid:\t0"))
    });
    // The lock is named after the run id (CRIU's name); the next run names the dead cryo.
    let name = format!("cryo process {cryo_pid}");
    // (Any cryo run removes it, also one of another test running meanwhile.)
    if tables_of(pid).contains("CRIU-") {
        assert!(
            !ping(&a, "10.203.0.2"),
            "the network of a killed cryo's tree is still locked"
        );
    }
    // Any later run cleans up and says so.
    let img2 = dir.join("img2");
    let p = pid.to_string();
    let o = cryo(&[
        "dump",
        "-t",
        &p,
        "-D",
        img2.to_str().unwrap(),
        "--leave-running",
    ]);
    assert!(o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    // Any cryo run cleans up: one of a test running meanwhile may have been first.
    if !e.contains(&name) {
        eprintln!("note: another cryo run removed {name} first");
    } else {
        assert!(e.contains(&cryo_pid.to_string()), "{e}");
    }
    assert!(!tables_of(pid).contains("CRIU-"), "{}", tables_of(pid));
    assert!(answers(&a, "10.203.0.2"));
    kill(pid);
}

#[test]
fn unsupported_link_is_refused_before_the_dump() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter"]) {
        return;
    }
    let dir = scratch("netns-refused");
    let hosts = Hosts::new("refused", &["a"]);
    let (pid, _) = start_server(&dir, &hosts.0[0]);
    let _g = KillOnDrop(pid);
    // A link kind cryo does not make again: an IPv4-in-IPv6 tunnel, a VLAN or a bond,
    // whichever this kernel has.
    let made = [
        vec![
            "ip", "link", "add", "vl0", "link", "v0", "type", "vlan", "id", "5",
        ],
        vec!["ip", "link", "add", "bond0", "type", "bond"],
        vec![
            "ip",
            "link",
            "add",
            "ipip0",
            "type",
            "ipip",
            "remote",
            "10.203.0.1",
        ],
        vec![
            "ip", "link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789",
        ],
    ]
    .iter()
    .find_map(|c| in_ns(pid, c).status.success().then(|| c[3].to_string()));
    let Some(link) = made else {
        integration::skip("this kernel has none of vlan, bond, ipip, vxlan");
        return;
    };
    let e = integration::dump_fails(pid, &dir.join("img"), &[]);
    assert!(e.contains(&link) && e.contains("--external net["), "{e}");
    assert!(alive(pid));
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.contains("TracerPid:\t0"));
    kill(pid);
}

/// A bridge with a persistent tap enslaved to it, and a macvlan on a link of the first host,
/// come back: the tap with its index, owner, flags and MAC, the bridge as its master, the
/// macvlan (mode bridge, same MAC and address) on the second host's link named by
/// `--external macvlan[mv0]:LINK`. A tun file of cryo's own network namespace in the tree is
/// refused by name.
#[test]
fn bridge_tap_and_macvlan_come_back() {
    let _s = serial();
    if !need(&["ip", "nft", "nsenter"]) {
        return;
    }
    let dir = scratch("netns-links");
    let hosts = Hosts::new("links", &["a", "b"]);
    let (a, b) = (hosts.0[0].clone(), hosts.0[1].clone());
    let (pid, _) = start_server(&dir, &a);
    let _g = KillOnDrop(pid);
    let p = pid.to_string();
    let inside: &[&[&str]] = &[
        &["ip", "link", "add", "br0", "type", "bridge"],
        &[
            "ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "user", "1000",
        ],
        &[
            "ip",
            "link",
            "set",
            "tap0",
            "address",
            "02:00:0a:cb:00:10",
            "master",
            "br0",
        ],
        &["ip", "link", "set", "br0", "up", "mtu", "1400"],
        &["ip", "addr", "add", "10.208.0.2/24", "dev", "br0"],
    ];
    for c in inside {
        ok(&in_ns(pid, c), &c.join(" "));
    }
    // The macvlan is made on host a's link, then moved into the server's namespace.
    sh(
        "lower a",
        &[
            "ip", "-n", &a, "link", "add", "la0", "type", "veth", "peer", "name", "la1",
        ],
    );
    let mv = run(&[
        "ip", "-n", &a, "link", "add", "mv0", "link", "la0", "type", "macvlan", "mode", "bridge",
    ]);
    let macvlan = mv.status.success();
    if macvlan {
        sh(
            "move mv0",
            &["ip", "-n", &a, "link", "set", "mv0", "netns", &p],
        );
        ok(
            &in_ns(
                pid,
                &[
                    "ip",
                    "link",
                    "set",
                    "mv0",
                    "address",
                    "02:00:0a:cb:00:20",
                    "up",
                ],
            ),
            "mv0",
        );
        ok(
            &in_ns(pid, &["ip", "addr", "add", "10.209.0.2/24", "dev", "mv0"]),
            "mv0 addr",
        );
    } else {
        eprintln!("note: no macvlan in this kernel; checking the bridge and the tap only");
    }
    let show = |pid: i32, l: &str| {
        let o = in_ns(pid, &["ip", "-d", "-o", "link", "show", l]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let tap_before = show(pid, "tap0");
    // `ip` shows the owner by name when uid 1000 has one.
    let user = tap_before
        .split(" user ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|u| format!("user {u}"))
        .unwrap_or_default();
    assert!(
        tap_before.contains("master br0") && !user.is_empty(),
        "{tap_before}"
    );
    let idx = |s: &str| s.split(':').next().unwrap().trim().to_string();
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    sh(
        "lower b",
        &[
            "ip", "-n", &b, "link", "add", "lb0", "type", "veth", "peer", "name", "lb1",
        ],
    );
    let m = img.to_str().unwrap();
    let net_b = format!("--net={}", hosts.path(1));
    let bin = cryo_bin();
    let mut args = vec![
        "nsenter",
        &net_b,
        bin.to_str().unwrap(),
        "restore",
        "-D",
        m,
        "-d",
        "-v4",
        "-o",
        "restore.log",
        "--external",
        "veth[v0]:vh0",
    ];
    if macvlan {
        // Without the lower link, the restore says what to give.
        let o = run(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("macvlan[mv0]"), "{e}");
        args.extend(["--external", "macvlan[mv0]:lb0"]);
    }
    let o = run(&args);
    assert!(o.status.success(), "restore: {}", log(&img, "restore.log"));
    let _g2 = KillOnDrop(pid);
    let tap_after = show(pid, "tap0");
    assert_eq!(idx(&tap_before), idx(&tap_after), "{tap_after}");
    for want in [
        "master br0",
        user.as_str(),
        "02:00:0a:cb:00:10",
        "tap",
        "persist on",
    ] {
        assert!(tap_after.contains(want), "{want}: {tap_after}");
    }
    let br = show(pid, "br0");
    assert!(br.contains("mtu 1400") && br.contains("bridge"), "{br}");
    let addrs = String::from_utf8_lossy(&in_ns(pid, &["ip", "-o", "addr"]).stdout).into_owned();
    assert!(addrs.contains("10.208.0.2/24"), "{addrs}");
    if macvlan {
        let mv = show(pid, "mv0");
        assert!(
            mv.contains("macvlan mode bridge") && mv.contains("02:00:0a:cb:00:20"),
            "{mv}"
        );
        assert!(addrs.contains("10.209.0.2/24"), "{addrs}");
    }
    // A program of cryo's own network namespace holding a tun file open is refused before
    // it is touched: its device would not be saved (CRIU refuses it too).
    let holder = spawn(
        &[
            "python3",
            "-c",
            "import os, time\nf = os.open('/dev/net/tun', os.O_RDWR)\nprint('ready', flush=True)\ntime.sleep(100)",
        ],
        &dir.join("holder"),
    );
    let _g3 = KillOnDrop(holder);
    wait_for("the tap holder", 10, || {
        lines(&dir.join("holder"))
            .first()
            .is_some_and(|l| l == "ready")
    });
    let e = integration::dump_fails(holder, &dir.join("img2"), &[]);
    assert!(
        e.contains("tun/tap file of cryo's own network namespace"),
        "{e}"
    );
    assert!(alive(holder));
    kill(holder);
    kill(pid);
}

/// A program in a network namespace of its own holding a raw packet socket with a receive
/// and a transmit ring (PACKET_RX_RING / PACKET_TX_RING) mapped shared, a SOCK_PACKET socket
/// bound to "lo", one bound to a bridge named with all 14 bytes such an address holds, and an
/// unbound one (zdtm packet_sock_mmap, packet_sock_spkt): the images
/// keep the rings' parameters (CRIU's `packet_ring` fields) and a socket mapping naming the
/// socket's file; after the restore the mapping is at the same address and maps the socket
/// the program holds, frames sent on the loopback land in the mapped ring, and the
/// SOCK_PACKET sockets are back bound (or not) as they were, the bound one receiving.
#[test]
fn packet_rings_and_sock_packet_sockets_come_back() {
    let _s = serial();
    if !need(&["ip", "python3", "unshare"]) {
        return;
    }
    let dir = scratch("netns-packet-rings");
    let out = dir.join("out");
    let script = integration::root().join("integration/scripts/packet_rings.py");
    let pid = spawn(
        &[
            "unshare",
            "-n",
            "python3",
            script.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        &dir.join("log"),
    );
    let _g = KillOnDrop(pid);
    wait_for("the program", 20, || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready "))
    });
    let addr = lines(&out)[0]["ready ".len()..].to_string();
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let files = showdump_json(&img.join("files.img"));
    let psks: Vec<&serde_json::Value> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("psk"))
        .collect();
    assert_eq!(psks.len(), 4, "{files}");
    let ring = psks
        .iter()
        .find(|p| p.get("rx_ring").is_some())
        .unwrap_or_else(|| panic!("no packet record with a ring: {files}"));
    let rx = &ring["rx_ring"];
    assert_eq!(
        (
            &rx["block_size"],
            &rx["block_nr"],
            &rx["frame_size"],
            &rx["frame_nr"]
        ),
        (&4096.into(), &2.into(), &2048.into(), &4.into()),
        "{ring}"
    );
    assert_eq!(ring["tx_ring"]["block_nr"], 1, "{ring}");
    assert_eq!(ring["tx_ring"]["frame_nr"], 2, "{ring}");
    assert_eq!(
        psks.iter().filter(|p| p["type"] == 10).count(),
        3,
        "three SOCK_PACKET records: {files}"
    );
    // The mapping is a socket mapping (CRIU's VMA_AREA_SOCKET) naming the ring's file.
    let mm = images_named(&img, "mm-");
    let mm = showdump_json(&mm[0]);
    let start = u64::from_str_radix(&addr, 16).unwrap();
    let vma = mm["entries"][0]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["start"].as_u64() == Some(start))
        .unwrap_or_else(|| panic!("no mapping at {addr}: {mm}"))
        .clone();
    assert_ne!(vma["status"].as_u64().unwrap() & (1 << 11), 0, "{vma}");
    assert_eq!(vma["shmid"], ring["id"], "{vma}");
    integration::restore(&img);
    integration::signal(pid, libc::SIGUSR1);
    wait_for("the report", 20, || lines(&out).iter().any(|l| l == "done"));
    let got = lines(&out);
    for want in [
        format!("map {addr} 1"),
        "spkt lo 10".to_string(),
        "spkt - 10".to_string(),
        // getsockname shows 13 bytes of it (its NUL takes the 14th); bound by 13 bytes at
        // restore it would fail (no such device).
        "spkt cryo-bridge-1 10".to_string(),
    ] {
        assert!(got.contains(&want), "{want}: {got:?}");
    }
    let n = |prefix: &str| -> u64 {
        got.iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(n("rx ") > 0, "no frame in the restored ring: {got:?}");
    assert!(
        n("spkt-rx ") > 0,
        "the bound SOCK_PACKET socket got nothing: {got:?}"
    );
    kill(pid);
}

/// IPv6 conf sysctls CRIU saves of a namespace (zdtm netns-dev): `stable_secret` of
/// `default` and of the loopback (unset, it cannot even be read: EIO) and the MLD report
/// intervals of `all`, `default` and `lo`: after the restore each has its value again.
#[test]
fn ipv6_stable_secret_and_mld_intervals_come_back() {
    let _s = serial();
    if !need(&["ip", "sysctl", "nsenter", "unshare"]) {
        return;
    }
    let dir = scratch("netns-conf6");
    let pid = spawn(&["unshare", "-n", "sleep", "1000"], &dir.join("log"));
    let _g = KillOnDrop(pid);
    wait_for("the sleeper", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let secret = "2607:f0d0:1002:0051:0000:0000:0000:0004";
    let set = [
        ("net.ipv6.conf.default.stable_secret", secret),
        ("net.ipv6.conf.lo.stable_secret", secret),
        (
            "net.ipv6.conf.all.mldv1_unsolicited_report_interval",
            "12000",
        ),
        (
            "net.ipv6.conf.default.mldv2_unsolicited_report_interval",
            "3000",
        ),
        (
            "net.ipv6.conf.lo.mldv1_unsolicited_report_interval",
            "20000",
        ),
    ];
    let read = |pid: i32, key: &str| -> String {
        let o = in_ns(pid, &["sysctl", "-n", key]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    for (k, v) in set {
        ok(&in_ns(pid, &["sysctl", "-qw", &format!("{k}={v}")]), k);
        assert_eq!(read(pid, k), v, "{k} before the dump");
    }
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    integration::restore(&img);
    for (k, v) in set {
        assert_eq!(read(pid, k), v, "{k} after the restore");
    }
    kill(pid);
}

/// A parent in a network namespace of its own and its child in another, joined by a veth
/// (zdtm netns_sub_veth): the parent's end is a port of a bridge holding 10.210.0.1/24, the
/// child's end holds 10.210.0.2/24, and the parent's namespace routes 10.9.0.0/24 and
/// (through the child's address, onlink) 10.9.1.0/24 via its end. The images name the peer's
/// namespace (`peer_nsid`). A restore that joins another namespace for the parent
/// (`--join-ns net:`) cannot make the child's end (its peer's namespace is not rebuilt):
/// it fails naming it, and nothing is left. After the plain restore (no option needed: both
/// ends were saved) the two namespaces are joined again, each end with its name, MAC and the
/// parent's end in the bridge, the parent's routes through its end are back (its namespace
/// is rebuilt first, before that end exists: they used to be lost), and the parent's
/// namespace reaches the child's address through them.
#[test]
fn veth_between_two_saved_namespaces_comes_back() {
    let _s = serial();
    if !need(&["ip", "nsenter", "unshare", "python3", "ping"]) {
        return;
    }
    let dir = scratch("netns-nested-veth");
    let out = dir.join("out");
    let script = "import subprocess\nc = subprocess.Popen(['unshare', '-n', 'sleep', '1000'])\nprint('ready', c.pid, flush=True)\nc.wait()\n";
    let parent = spawn(&["unshare", "-n", "python3", "-c", script], &out);
    let _g = KillOnDrop(parent);
    let child = integration::wait_ready(&out)[0];
    let _g2 = KillOnDrop(child);
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    wait_for("the child's own namespace", 10, || {
        ns(child).is_some() && ns(child) != ns(parent)
    });
    let (p, c) = (parent.to_string(), child.to_string());
    sh(
        "veth",
        &[
            "ip",
            "link",
            "add",
            "vp0",
            "netns",
            &p,
            "address",
            "02:00:0a:d2:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "vc0",
            "netns",
            &c,
            "address",
            "02:00:0a:d2:00:02",
        ],
    );
    for (pid, cmd) in [
        (parent, vec!["ip", "link", "set", "lo", "up"]),
        (parent, vec!["ip", "link", "add", "br0", "type", "bridge"]),
        (
            parent,
            vec!["ip", "link", "set", "vp0", "master", "br0", "up"],
        ),
        (parent, vec!["ip", "link", "set", "br0", "up"]),
        (
            parent,
            vec!["ip", "addr", "add", "10.210.0.1/24", "dev", "br0"],
        ),
        (
            parent,
            vec!["ip", "route", "add", "10.9.0.0/24", "dev", "vp0"],
        ),
        (
            parent,
            vec![
                "ip",
                "route",
                "add",
                "10.9.1.0/24",
                "via",
                "10.210.0.2",
                "dev",
                "vp0",
                "onlink",
            ],
        ),
        (child, vec!["ip", "link", "set", "lo", "up"]),
        (child, vec!["ip", "link", "set", "vc0", "up"]),
        (
            child,
            vec!["ip", "addr", "add", "10.210.0.2/24", "dev", "vc0"],
        ),
    ] {
        ok(&in_ns(pid, &cmd), &cmd.join(" "));
    }
    let reach = || {
        in_ns(parent, &["ping", "-c", "1", "-W", "2", "10.210.0.2"])
            .status
            .success()
    };
    wait_for("the child's address", 20, reach);
    let show = |pid: i32, l: &str| {
        String::from_utf8_lossy(&in_ns(pid, &["ip", "-o", "link", "show", l]).stdout).into_owned()
    };
    let img = dir.join("img");
    dump(parent, &img, &[]);
    integration::wait_tree_gone(&img);
    // Each end names the other's saved namespace.
    let netdevs = images_named(&img, "netdev-");
    assert_eq!(netdevs.len(), 2, "{netdevs:?}");
    let ids: Vec<u64> = netdevs
        .iter()
        .map(|f| {
            let n = f.file_name().unwrap().to_string_lossy().into_owned();
            n["netdev-".len()..n.len() - ".img".len()].parse().unwrap()
        })
        .collect();
    for (i, f) in netdevs.iter().enumerate() {
        let v = showdump_json(f);
        let veth = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "vp0" || e["name"] == "vc0")
            .unwrap_or_else(|| panic!("no veth in {}: {v}", f.display()))
            .clone();
        assert_eq!(veth["peer_nsid"].as_u64(), Some(ids[1 - i]), "{veth}");
    }
    let routes = |pid: i32| {
        String::from_utf8_lossy(&in_ns(pid, &["ip", "route", "show"]).stdout).into_owned()
    };
    // The parent's namespace joined, not rebuilt: the child's end has nowhere to go.
    let hosts = Hosts::new("nveth", &["j"]);
    let joined = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "-v4",
        "-o",
        "restore-joined.log",
        "--join-ns",
        &format!("net:{}", hosts.path(0)),
    ]);
    let e = String::from_utf8_lossy(&joined.stderr);
    assert!(
        !joined.status.success() && e.contains("vc0"),
        "{e}\n{}",
        log(&img, "restore-joined.log")
    );
    assert!(
        !alive(parent) && !alive(child),
        "nothing of the failed restore is left"
    );
    integration::wait_tree_gone(&img);
    integration::restore(&img);
    let _g3 = KillOnDrop(parent);
    let r = routes(parent);
    assert!(
        r.contains("10.9.0.0/24 dev vp0") && r.contains("10.9.1.0/24 via 10.210.0.2 dev vp0"),
        "the parent's routes through vp0: {r}"
    );
    let vp0 = show(parent, "vp0");
    assert!(
        vp0.contains("master br0") && vp0.contains("02:00:0a:d2:00:01"),
        "{vp0}"
    );
    let vc0 = show(child, "vc0");
    assert!(vc0.contains("02:00:0a:d2:00:02"), "{vc0}");
    wait_for("the child's address after the restore", 20, reach);
    kill(parent);
}

/// `--external netdev[IN]:OUT` (zdtm cr_veth02, CRIU's `move_veth`): a veth whose peer was
/// in the host's namespace is not made at restore: the device OUT the user made beforehand
/// in cryo's namespace is moved in as IN, with IN's saved index, MAC and address, and its
/// peer stays where the user put it (here a "host" namespace, which reaches the restored
/// namespace through it). A restore that fails after the move (a fault injected at
/// `finish`) gives the device back to cryo's namespace, with its name and MAC (it used to
/// be destroyed with the failed restore's namespace), its peer untouched.
#[test]
fn external_netdev_is_moved_into_the_namespace() {
    let _s = serial();
    if !need(&["ip", "nsenter", "unshare", "ping"]) {
        return;
    }
    let dir = scratch("netns-netdev");
    let hosts = Hosts::new("netdev", &["a", "b"]);
    let (pid, _) = start_server(&dir, &hosts.0[0]);
    let _g = KillOnDrop(pid);
    let index = |pid: i32| {
        String::from_utf8_lossy(&in_ns(pid, &["ip", "-o", "link", "show", "v0"]).stdout)
            .split(':')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let before = index(pid);
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    let (out, cleanup) = users_veth("nd", &hosts.0[1]);
    let missing = cryo(&[
        "restore",
        "-D",
        img.to_str().unwrap(),
        "-d",
        "--external",
        "netdev[v0]:no-such-dev",
    ]);
    let e = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && e.contains("no-such-dev"),
        "{e}"
    );
    // A restore that fails once the device is in its namespace gives it back, as it was.
    let link = |dev: &str| {
        String::from_utf8_lossy(&run(&["ip", "-o", "link", "show", dev]).stdout).into_owned()
    };
    let was = link(&out);
    let failed = cryo_env(
        &[
            "restore",
            "-D",
            img.to_str().unwrap(),
            "-d",
            "-v4",
            "-o",
            "restore-fault.log",
            "--external",
            &format!("netdev[v0]:{out}"),
        ],
        &[("CRYO_FAULT_INJECT", "finish")],
    );
    assert!(!failed.status.success());
    let rl = log(&img, "restore-fault.log");
    assert!(rl.contains("stage=\"finish\""), "{rl}");
    let mac = |l: &str| {
        l.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    let now = link(&out);
    assert!(
        now.contains(&format!(": {out}@")) && mac(&now).is_some() && mac(&now) == mac(&was),
        "{out} is not back in cryo's namespace as it was ({was}): {now}\n{rl}"
    );
    assert!(
        run(&["ip", "-n", &hosts.0[1], "link", "show", "vh0"])
            .status
            .success(),
        "its peer vh0 is gone from host b"
    );
    integration::restore_with(&img, &["--external", &format!("netdev[v0]:{out}")]);
    let _g2 = KillOnDrop(pid);
    assert_eq!(index(pid), before);
    moved_in_and_reachable(pid, &out, &hosts.0[1]);
    drop(cleanup);
    kill(pid);
}

/// `--external netdev[IN]:OUT` over RPC, as runc passes it (`external: ["netdev[IN]:OUT"]`
/// in the RESTORE request's options): the server's namespace is dumped over RPC, the user's
/// device OUT (a veth whose peer is in host b) is moved in as IN with IN's index, MAC and
/// address, and host b reaches the restored server through it. A request naming a device
/// that does not exist fails with an error response naming it, leaves no process (the
/// killed task, the caller's child with rst_sibling, reaped by the caller as runc does)
/// and OUT where it was.
#[test]
fn external_netdev_over_rpc_as_runc_passes_it() {
    use cryo::image::pb;
    use integration::rpc::{req, swrk};
    use std::os::fd::AsRawFd;
    let _s = serial();
    if !need(&["ip", "nsenter", "unshare", "ping"]) {
        return;
    }
    let dir = scratch("netns-netdev-rpc");
    let hosts = Hosts::new("ndrpc", &["a", "b"]);
    let (pid, _) = start_server(&dir, &hosts.0[0]);
    let _g = KillOnDrop(pid);
    let link_of = |pid: i32, dev: &str| {
        String::from_utf8_lossy(&in_ns(pid, &["ip", "-o", "link", "show", dev]).stdout).into_owned()
    };
    let before = link_of(pid, "v0");
    let index = |l: &str| l.split(':').next().unwrap().trim().to_string();
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let d = std::fs::File::open(&img).unwrap();
    let dump_opts = pb::CriuOpts {
        images_dir_fd: d.as_raw_fd(),
        pid: Some(pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        ..Default::default()
    };
    let (_, r, ok) = swrk().call(&req(pb::CriuReqType::Dump, Some(dump_opts)), None);
    assert!(
        ok && r.success,
        "dump: {:?}\n{}",
        r.cr_errmsg,
        log(&img, "dump.log")
    );
    wait_gone(pid);
    let (out, cleanup) = users_veth("nr", &hosts.0[1]);
    let restore = |external: &str, log_file: &str| {
        let opts = pb::CriuOpts {
            images_dir_fd: d.as_raw_fd(),
            log_level: Some(4),
            log_file: Some(log_file.into()),
            rst_sibling: Some(true),
            external: vec![external.to_string()],
            ..Default::default()
        };
        swrk().call(&req(pb::CriuReqType::Restore, Some(opts)), None)
    };
    let (_, r, _) = restore("netdev[v0]:no-such-dev", "restore-missing.log");
    let why = format!("{:?} {}", r.cr_errmsg, log(&img, "restore-missing.log"));
    assert!(!r.success && why.contains("no-such-dev"), "{why}");
    assert!(!alive(pid), "a failed restore left the server");
    // rst_sibling: the restored task was the caller's child (as runc's); what the failed
    // restore killed is reaped by the caller, as runc does.
    // SAFETY: waitpid writes only to the status it is given.
    let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
    assert!(reaped == pid || reaped == -1, "waitpid {pid}: {reaped}");
    assert!(
        run(&["ip", "link", "show", &out]).status.success(),
        "{out} left cryo's namespace after a failed restore"
    );
    let (_, r, ok) = restore(&format!("netdev[v0]:{out}"), "restore.log");
    assert!(
        ok && r.success,
        "restore: {:?}\n{}",
        r.cr_errmsg,
        log(&img, "restore.log")
    );
    let _g2 = KillOnDrop(pid);
    assert!(alive(pid), "restored with its pid");
    let after = link_of(pid, "v0");
    assert_eq!(index(&after), index(&before), "v0's index: {after}");
    assert!(after.contains("02:00:0a:cb:00:02"), "v0's MAC: {after}");
    moved_in_and_reachable(pid, &out, &hosts.0[1]);
    drop(cleanup);
    kill(pid);
}

/// The tree for `unix_sockets_stay_in_the_namespace_they_were_made_in`: the root R (in
/// its own network namespace A) forks K, which makes namespace B and forks C; C, in B,
/// makes a datagram socket bound to @dg-TAG and a listener on @ls-TAG, then goes back to
/// A (through R's namespace fd it inherited), holding both; K holds no socket. C prints
/// what arrives on the datagram socket and each connection it accepts.
const NS_HOPPER: &str = r#"
import ctypes, os, select, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
tag = sys.argv[1]
a = os.open("/proc/self/ns/net", os.O_RDONLY)
if os.fork() == 0:
    if libc.unshare(CLONE_NEWNET) != 0:
        print("unshare failed", ctypes.get_errno(), flush=True); os._exit(1)
    if os.fork() == 0:
        dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dg.bind("\0dg-" + tag)
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind("\0ls-" + tag)
        ls.listen(4)
        if libc.setns(a, CLONE_NEWNET) != 0:
            print("setns failed", ctypes.get_errno(), flush=True); os._exit(1)
        os.close(a)
        print("ready", flush=True)
        while True:
            r, _, _ = select.select([dg, ls], [], [])
            if dg in r:
                print("got", dg.recv(100).decode(), flush=True)
            if ls in r:
                c, _ = ls.accept()
                print("accepted", c.recv(100).decode(), flush=True)
                c.close()
    os.close(a)
    while True:
        time.sleep(1)
os.close(a)
while True:
    time.sleep(1)
"#;

/// Unix sockets made in another network namespace of the tree than their process's (zdtm
/// netns_sub's shape, our own program): C made a datagram socket and a listener in B and
/// went back to A. Dump refused them ("only unix sockets are supported yet": sock_diag
/// looked only in the namespaces of the processes holding sockets), and restore made every
/// socket in its holder's namespace and gave C, whose parent K is in B, a second copy of A.
/// Now after restore C is in R's namespace itself (one namespace, not a copy), K in
/// another; the sockets are in B: a client in B reaches both names (a datagram and a
/// connection arrive at C), while in A the names are unknown (ECONNREFUSED).
#[test]
fn unix_sockets_stay_in_the_namespace_they_were_made_in() {
    if !need(&["nsenter", "unshare", "python3"]) {
        return;
    }
    let dir = scratch("netns-unix-hop");
    let tag = format!("cryo-{}", std::process::id());
    let out = dir.join("out");
    let (root, _g) = python_in_own_netns("C's sockets", NS_HOPPER, &[&tag], &out);
    let k = children(root)[0];
    let c = children(k)[0];
    // K and C outlive R (killing R alone left them running): each has a guard of its own.
    let _kc = [KillOnDrop(k), KillOnDrop(c)];
    let netns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    // Sends from the namespace of `pid`: a datagram to @dg-TAG, then a connection to
    // @ls-TAG carrying `word`; what each attempt gave.
    let send_from = |pid: i32, word: &str| -> String {
        let script = format!(
            r#"
import socket
r = []
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"{word}", "\0dg-{tag}"); r.append("sent")
except OSError as e:
    r.append(str(e.errno))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0ls-{tag}"); s.sendall(b"{word}"); s.close(); r.append("connected")
except OSError as e:
    r.append(str(e.errno))
print(" ".join(r))
"#
        );
        String::from_utf8_lossy(&in_ns(pid, &["python3", "-c", &script]).stdout)
            .trim()
            .to_string()
    };
    let check = |when: &str, word: &str| {
        assert_eq!(netns(c), netns(root), "{when}: C is back in R's namespace");
        assert_ne!(
            netns(k),
            netns(root),
            "{when}: K is in a namespace of its own"
        );
        let refused = libc::ECONNREFUSED.to_string();
        assert_eq!(
            send_from(root, "none"),
            format!("{refused} {refused}"),
            "{when}: the names were made in B, not in A"
        );
        assert_eq!(send_from(k, word), "sent connected", "{when}: from B");
        wait_for("C to hear from B", 10, || {
            let l = lines(&out);
            l.contains(&format!("got {word}")) && l.contains(&format!("accepted {word}"))
        });
    };
    check("before the dump", "one");
    let img = dir.join("img");
    dump(root, &img, &[]);
    // K and C come to the test (a subreaper) when R dies: reaped here.
    for p in [root, k, c] {
        wait_gone(p);
    }
    integration::restore_with(&img, &[]);
    assert!(alive(root) && alive(k) && alive(c), "the tree is back");
    check("after the restore", "two");
    for p in [root, k, c] {
        kill(p);
    }
}

/// Deletes a link of the test's namespace on drop (if still there).
struct Cleanup(String);

/// The user's veth pair for the external-netdev tests: PREFIX+pid in cryo's namespace (to be
/// moved in at restore), its peer vh0 in `host_b` with host b's address; deleted on drop.
fn users_veth(prefix: &str, host_b: &str) -> (String, Cleanup) {
    let out = format!("{prefix}{}", std::process::id() % 100_000);
    sh(
        "the user's veth",
        &[
            "ip", "link", "add", &out, "type", "veth", "peer", "name", "vh0", "netns", host_b,
        ],
    );
    host_side(host_b);
    (out.clone(), Cleanup(out))
}

/// After an external-netdev restore: the server's v0 has its address, `out` left cryo's
/// namespace, and host b reaches the server through it.
fn moved_in_and_reachable(pid: i32, out: &str, host_b: &str) {
    let v0 = String::from_utf8_lossy(&in_ns(pid, &["ip", "-o", "addr", "show", "v0"]).stdout)
        .into_owned();
    assert!(v0.contains("10.203.0.2/24"), "{v0}");
    assert!(
        !run(&["ip", "link", "show", out]).status.success(),
        "{out} is still in cryo's namespace"
    );
    assert!(
        answers(host_b, "10.203.0.2"),
        "host b cannot reach the restored namespace"
    );
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.0]);
    }
}

/// A program of a network namespace of its own holding tun/tap files of each shape
/// (`TUN_HOLDER`): on SIGUSR1 it says what each file is attached to (TUNGETIFF), whether
/// packets still go through its queues (both ways), and the tap's send buffer and vnet
/// header size.
const TUN_HOLDER: &str = r#"
import fcntl, os, select, signal, socket, struct, subprocess, sys, time
TUNSETIFF, TUNGETIFF, TUNSETPERSIST = 0x400454ca, 0x800454d2, 0x400454cb
TUNSETOWNER, TUNSETGROUP, TUNSETQUEUE = 0x400454cc, 0x400454ce, 0x400454d9
TUNSETSNDBUF, TUNGETSNDBUF = 0x400454d4, 0x800454d3
TUNSETVNETHDRSZ, TUNGETVNETHDRSZ = 0x400454d8, 0x800454d7
TUN, TAP, NO_PI, MQ, VNET, DETACH = 1, 2, 0x1000, 0x100, 0x4000, 0x400

def ip(*a):
    subprocess.run(("ip",) + a, check=True)

def tun(name, flags):
    f = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(f, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    return f

def iff(f):
    try:
        r = fcntl.ioctl(f, TUNGETIFF, bytes(40))
    except OSError as e:
        return "errno %d" % e.errno
    n, fl = struct.unpack("16sH", r[:18])
    return "%s %x" % (n.rstrip(b"\0").decode(), fl)

def getint(f, req):
    return struct.unpack("i", fcntl.ioctl(f, req, bytes(4)))[0]

def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def udp4(src, dst, sport, dport, data):
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 1, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + u

def goes_out(f, dst, word):
    # A datagram routed to the device's peer comes out of the queue.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(word, (dst, 9999))
    end = time.time() + 3
    while time.time() < end:
        r, _, _ = select.select([f], [], [], 0.2)
        if r and word in os.read(f, 65536):
            return "ok"
    return "lost"

def comes_in(f, local, peer, word):
    # A datagram written into the queue reaches a socket of the namespace.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((local, 7777))
    s.settimeout(3)
    os.write(f, udp4(peer, local, 5555, 7777, word))
    try:
        return "ok" if s.recv(100) == word else "wrong"
    except socket.timeout:
        return "lost"
    finally:
        s.close()

ip("link", "set", "lo", "up")
free = os.open("/dev/net/tun", os.O_RDWR)
t0 = tun("ct0", TUN | NO_PI)
fcntl.ioctl(t0, TUNSETOWNER, 1234)
fcntl.ioctl(t0, TUNSETGROUP, 4321)
q1 = tun("cq0", TUN | NO_PI | MQ)
q2 = tun("cq0", TUN | NO_PI | MQ)
fcntl.ioctl(q2, TUNSETQUEUE, struct.pack("16sH", b"", DETACH))
p = tun("cp0", TAP | NO_PI | VNET)
fcntl.ioctl(p, TUNSETSNDBUF, struct.pack("i", 65536))
fcntl.ioctl(p, TUNSETVNETHDRSZ, struct.pack("i", 12))
x = tun("cx0", TUN)
fcntl.ioctl(x, TUNSETPERSIST, 1)
os.close(x)
ip("addr", "add", "10.77.0.1", "peer", "10.77.0.2", "dev", "ct0")
ip("link", "set", "ct0", "up")
ip("addr", "add", "10.78.0.1", "peer", "10.78.0.2", "dev", "cq0")
ip("link", "set", "cq0", "up")
rounds = [0]

def report(*_):
    rounds[0] += 1
    n = rounds[0]
    w = lambda k: ("%s-%d" % (k, n)).encode()
    print("free", iff(free))
    print("t0", iff(t0), "out", goes_out(t0, "10.77.0.2", w("t0")),
          "in", comes_in(t0, "10.77.0.1", "10.77.0.2", w("t0in")))
    print("q1", iff(q1), "out", goes_out(q1, "10.78.0.2", w("q1")))
    print("q2", iff(q2))
    print("p", iff(p), getint(p, TUNGETSNDBUF), getint(p, TUNGETVNETHDRSZ))
    print("report", n, flush=True)

signal.signal(signal.SIGUSR1, report)
print("ready", flush=True)
while True:
    time.sleep(1)
"#;

/// tun/tap files of every shape in a network namespace of the tree's own come back, as
/// CRIU's: a file attached to nothing; a tun device (owner and group set) whose one queue
/// moves packets both ways; a multi-queue device with one queue attached and one detached;
/// a tap with vnet headers, its send buffer and vnet header size changed; and a persistent
/// device no file is on. After the restore: TUNGETIFF gives the same device and flags on
/// each file (the detached one still detached), packets go through the queues again, the
/// owner, group, MAC and persistence of each device are as before (the devices made
/// persistent by the restore lost it again). The images are CRIU's (crit reads TUNF records
/// with their REG twin, and each netdev `tun` entry with the tap's send buffer and header
/// size, which only its file tells).
#[test]
fn tun_and_tap_files_come_back() {
    let _s = serial();
    if !need(&["ip", "nsenter", "unshare", "python3", "crit"]) {
        return;
    }
    let dir = scratch("netns-tun");
    let out = dir.join("out");
    let (pid, _g) = python_in_own_netns("the tun files", TUN_HOLDER, &[], &out);
    // What the program says of its files at SIGUSR1 number `n`.
    let report = |n: usize| -> Vec<String> {
        integration::signal(pid, libc::SIGUSR1);
        let done = format!("report {n}");
        wait_for("the program's report", 30, || lines(&out).contains(&done));
        let l = lines(&out);
        let end = l.iter().position(|x| *x == done).unwrap();
        l[end - 5..end].to_vec()
    };
    let want = [
        // EBADFD: attached to nothing.
        "free errno 77",
        "t0 ct0 1001 out ok in ok",
        "q1 cq0 1101 out ok",
        // IFF_DETACH_QUEUE.
        "q2 cq0 1501",
        "p cp0 5002 65536 12",
    ];
    assert_eq!(report(1), want, "before the dump");
    let links = |pid: i32| -> Vec<String> {
        let o = in_ns(pid, &["ip", "-d", "-o", "link", "show"]);
        ok(&o, "ip -d link show");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.contains(": lo:"))
            .map(|l| {
                // Index, name, link type and address, and the tun details.
                let f: Vec<&str> = l.split_whitespace().collect();
                let at = |k: &str| f.iter().position(|x| *x == k);
                let tun = at("tun").map(|i| {
                    f[i..]
                        .iter()
                        .take_while(|x| !x.starts_with("addrgenmode"))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                let ll = at("link/ether")
                    .or(at("link/none"))
                    .map(|i| f[i..(i + 2).min(f.len())].join(" "));
                format!(
                    "{} {} {} {}",
                    f[0],
                    f[1],
                    ll.unwrap_or_default(),
                    tun.unwrap_or_default()
                )
            })
            .collect()
    };
    let before = links(pid);
    let has = |l: &[String], name: &str, what: &str| {
        assert!(
            l.iter().any(|x| x.contains(name) && x.contains(what)),
            "{name}: {what}: {l:#?}"
        );
    };
    has(&before, "ct0:", "persist off user 1234 group 4321");
    has(
        &before,
        "cq0:",
        "multi_queue numqueues 1 numdisabled 1 persist off",
    );
    has(&before, "cx0:", "persist on");
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    // The images, as crit reads them.
    let files = sh(
        "crit",
        &[
            "crit",
            "decode",
            "-i",
            img.join("files.img").to_str().unwrap(),
        ],
    );
    let files: serde_json::Value = serde_json::from_str(&files).unwrap();
    let entries = files["entries"].as_array().unwrap();
    let tunf: Vec<&serde_json::Value> = entries.iter().filter(|e| e["type"] == "TUNF").collect();
    assert_eq!(tunf.len(), 5, "{tunf:#?}");
    for t in &tunf {
        let twin = entries
            .iter()
            .find(|e| e["type"] == "REG" && e["id"] == t["id"])
            .unwrap_or_else(|| panic!("no REG twin of {t}"));
        assert_eq!(twin["reg"]["name"], "/dev/net/tun", "{twin}");
        assert!(t["tunf"]["ns_id"].is_u64(), "{t}");
    }
    let netdev = |name: &str| tunf.iter().filter(|t| t["tunf"]["netdev"] == name).count();
    assert_eq!(
        (netdev("ct0"), netdev("cq0"), netdev("cp0")),
        (1, 2, 1),
        "{tunf:#?}"
    );
    assert_eq!(
        tunf.iter()
            .filter(|t| t["tunf"]["netdev"].is_null())
            .count(),
        1
    );
    assert_eq!(
        tunf.iter()
            .filter(|t| t["tunf"]["detached"] == true)
            .count(),
        1
    );
    let nd = images_named(&img, "netdev-");
    let nd = sh("crit", &["crit", "decode", "-i", nd[0].to_str().unwrap()]);
    let nd: serde_json::Value = serde_json::from_str(&nd).unwrap();
    let dev = |name: &str| -> serde_json::Value {
        nd["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {nd}"))["tun"]
            .clone()
    };
    assert_eq!(
        (
            dev("cp0")["sndbuf"].as_u64(),
            dev("cp0")["vnethdr"].as_u64()
        ),
        (Some(65536), Some(12))
    );
    assert_eq!(
        (dev("ct0")["owner"].as_i64(), dev("ct0")["group"].as_i64()),
        (Some(1234), Some(4321))
    );
    assert_eq!(
        dev("cx0")["flags"].as_u64().unwrap() & 0x800,
        0x800,
        "cx0 persistent"
    );
    assert_eq!(
        dev("ct0")["flags"].as_u64().unwrap() & 0x800,
        0,
        "ct0 not persistent"
    );

    integration::restore_with(&img, &[]);
    assert!(alive(pid), "restored");
    assert_eq!(report(2), want, "after the restore");
    assert_eq!(links(pid), before, "the devices after the restore");
    kill(pid);
}

/// `unix_sockets_stay_in_the_namespace_they_were_made_in` with inet sockets: R, in a
/// network namespace A of its own, has a child K that makes namespace B and a child C of K
/// that makes, in B, a TCP listener on 127.0.0.1:7100, a UDP socket bound to
/// 127.0.0.1:7101 and an established connection between a client socket and the socket the
/// listener accepted for it, then goes back to A and listens there on 127.0.0.1:7200. C
/// answers what reaches its sockets; on SIGUSR1 it sends a word through the connection and
/// says what came out at the other end. Argument: the word.
const INET_HOPPER: &str = r#"
import ctypes, os, select, signal, socket, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
a = os.open("/proc/self/ns/net", os.O_RDONLY)
if os.fork() == 0:
    if libc.unshare(CLONE_NEWNET) != 0:
        print("unshare failed", ctypes.get_errno(), flush=True); os._exit(1)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if os.fork() == 0:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 7100))
        ls.listen(4)
        dg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dg.bind(("127.0.0.1", 7101))
        cl = socket.create_connection(("127.0.0.1", 7100))
        sv, _ = ls.accept()
        if libc.setns(a, CLONE_NEWNET) != 0:
            print("setns failed", ctypes.get_errno(), flush=True); os._exit(1)
        os.close(a)
        la = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        la.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        la.bind(("127.0.0.1", 7200))
        la.listen(4)
        n = [0]
        def through(*_):
            n[0] += 1
            w = b"word-%d" % n[0]
            cl.sendall(w)
            sv.settimeout(5)
            print("conn", sv.recv(100).decode(), flush=True)
        signal.signal(signal.SIGUSR1, through)
        print("ready", flush=True)
        while True:
            r, _, _ = select.select([dg, ls, la], [], [])
            if dg in r:
                print("got", dg.recv(100).decode(), flush=True)
            for l, name in ((ls, "B"), (la, "A")):
                if l in r:
                    c, _ = l.accept()
                    print("accepted", name, c.recv(100).decode(), flush=True)
                    c.close()
    os.close(a)
    while True:
        time.sleep(1)
os.close(a)
while True:
    time.sleep(1)
"#;

/// A process that entered a second network namespace, made inet sockets there (a TCP
/// listener, a bound UDP socket, an established connection) and came back (INET_HOPPER):
/// they are saved with that namespace (`ns_id`) and made there at restore, the connection
/// through TCP repair (`--tcp-established`). Before the dump and after the restore: from
/// namespace B the listener accepts and the UDP socket receives; from A the port of B's
/// listener is closed while A's own listener accepts; the connection carries a word from
/// one end to the other.
#[test]
fn inet_sockets_stay_in_the_namespace_they_were_made_in() {
    let _s = serial();
    if !need(&["nsenter", "unshare", "python3", "ip"]) {
        return;
    }
    let dir = scratch("netns-inet-hop");
    let out = dir.join("out");
    let (root, _g) = python_in_own_netns("C's sockets", INET_HOPPER, &[], &out);
    let k = children(root)[0];
    let c = children(k)[0];
    // K and C outlive R (killing R alone left them running): each has a guard of its own.
    let _kc = [KillOnDrop(k), KillOnDrop(c)];
    let netns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    // From the namespace of `pid`: a datagram to 7101, a connection to 7100 and one to
    // 7200 carrying `word`; what each attempt gave.
    let send_from = |pid: i32, word: &str| -> String {
        let script = format!(
            r#"
import socket
r = []
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"{word}", ("127.0.0.1", 7101)); r.append("sent")
for port in (7100, 7200):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5); s.sendall(b"{word}"); s.close(); r.append("connected")
    except OSError as e:
        r.append(str(e.errno))
print(" ".join(r))
"#
        );
        String::from_utf8_lossy(&in_ns(pid, &["python3", "-c", &script]).stdout)
            .trim()
            .to_string()
    };
    let check = |when: &str, word: &str| {
        assert_eq!(netns(c), netns(root), "{when}: C is back in R's namespace");
        assert_ne!(
            netns(k),
            netns(root),
            "{when}: K is in a namespace of its own"
        );
        let refused = libc::ECONNREFUSED.to_string();
        assert_eq!(
            send_from(root, &format!("a{word}")),
            format!("sent {refused} connected"),
            "{when}: from A, only A's listener"
        );
        assert_eq!(
            send_from(k, word),
            format!("sent connected {refused}"),
            "{when}: from B, B's listener and UDP socket"
        );
        wait_for("C to hear from A and B", 10, || {
            let l = lines(&out);
            l.contains(&format!("got {word}"))
                && l.contains(&format!("accepted B {word}"))
                && l.contains(&format!("accepted A a{word}"))
        });
        assert!(
            !lines(&out).contains(&format!("got a{word}")),
            "{when}: A's datagram reached B's UDP socket"
        );
    };
    let through = |n: usize| {
        integration::signal(c, libc::SIGUSR1);
        let want = format!("conn word-{n}");
        wait_for("the word through the connection", 10, || {
            lines(&out).contains(&want)
        });
    };
    check("before the dump", "one");
    through(1);
    let img = dir.join("img");
    dump(root, &img, &["--tcp-established"]);
    for p in [root, k, c] {
        wait_gone(p);
    }
    integration::restore_with(&img, &["--tcp-established"]);
    assert!(alive(root) && alive(k) && alive(c), "the tree is back");
    check("after the restore", "two");
    through(2);
    for p in [root, k, c] {
        kill(p);
    }
}

/// CRIU 4.2 and cryo restore each other's dumps of the tun/tap files of
/// `tun_and_tap_files_come_back` (TUN_HOLDER): after each restore the files are on the same
/// devices with the same flags and move packets both ways, and the tap keeps its vnet
/// header size (and, restored by cryo, its send buffer). (A CRIU dump saves the namespace's firewall with CRIU's
/// iptables lock chain in it: cryo's restore removes it, as CRIU's does, or no packet would
/// get through.) Run by integration/test.sh with the ignored tests when it finds CRIU.
#[test]
#[ignore = "needs CRIU 4.2 built from source ($CRIU or /opt/criu42/criu)"]
fn criu_and_cryo_restore_each_others_tun_dumps() {
    let _s = serial();
    let criu = criu42();
    if !need(&["ip", "nsenter", "unshare", "python3", "iptables"]) {
        return;
    }
    let dir = scratch("netns-tun-criu");
    let out = dir.join("out");
    let (pid, _g) = python_in_own_netns("the tun files", TUN_HOLDER, &[], &out);
    let mut n = 0;
    let mut report = || -> Vec<String> {
        n += 1;
        integration::signal(pid, libc::SIGUSR1);
        let done = format!("report {n}");
        wait_for("the program's report", 30, || lines(&out).contains(&done));
        let l = lines(&out);
        let end = l.iter().position(|x| *x == done).unwrap();
        l[end - 5..end].to_vec()
    };
    let want = [
        "free errno 77",
        "t0 ct0 1001 out ok in ok",
        "q1 cq0 1101 out ok",
        "q2 cq0 1501",
        "p cp0 5002 65536 12",
    ];
    assert_eq!(report(), want, "before the dumps");
    for (i, (dumper, restorer)) in [("criu", "cryo"), ("cryo", "criu")].into_iter().enumerate() {
        let bin = |tool: &str| {
            if tool == "criu" {
                criu.clone()
            } else {
                cryo_bin().display().to_string()
            }
        };
        let img = dir.join(format!("img-{i}"));
        std::fs::create_dir_all(&img).unwrap();
        dump_with_tool(&bin(dumper), pid, &img, &[]);
        wait_gone(pid);
        restore_with_tool(&bin(restorer), &img, &[]);
        // CRIU sets the saved send buffer on the file that makes the device only (closed
        // since): the tap's own file comes back with the kernel's default there.
        let mut want = want.map(String::from);
        if restorer == "criu" {
            want[4] = "p cp0 5002 2147483647 12".into();
        }
        assert_eq!(report(), want, "after {restorer} restored {dumper}'s dump");
    }
    kill(pid);
}

/// Makes tap device ft0 (no packet information) in the caller's network namespace, sets a
/// packet filter that drops everything on it, makes it persistent and closes its file; then
/// waits, holding no file on it.
const FILTERED_TAP: &str = r#"
import ctypes, fcntl, os, struct, time
TUNSETIFF, TUNSETPERSIST, TUNATTACHFILTER = 0x400454ca, 0x400454cb, 0x401054d5
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"ft0", 0x0002 | 0x1000))
drop_all = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
prog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(drop_all))
fcntl.ioctl(fd, TUNATTACHFILTER, prog)
fcntl.ioctl(fd, TUNSETPERSIST, 1)
os.close(fd)
print("ready", flush=True)
while True:
    time.sleep(1)
"#;

/// A persistent tap device with a packet filter and no file in the tree (the reviewer's
/// case): cryo attaches a file of its own to read the device's parameters, which skipped
/// the filter, and the restored tap let through everything its filter dropped. A filter
/// cannot be saved (as CRIU, which refuses it too): the dump is refused naming the device
/// and the filter, and the tree keeps running.
#[test]
fn persistent_tap_with_a_packet_filter_is_refused() {
    let _s = serial();
    if !need(&["unshare", "python3"]) {
        return;
    }
    let dir = scratch("netns-tap-filter");
    let out = dir.join("out");
    let (pid, _g) = python_in_own_netns("the filtered tap", FILTERED_TAP, &[], &out);
    let e = dump_fails(pid, &dir.join("img"), &[]);
    assert!(e.contains("ft0") && e.contains("packet filter"), "{e}");
    assert!(alive(pid), "a refused dump must leave the tree running");
}

/// A process that entered a namespace the test made (`ip netns add`, the only holder a bind
/// mount), made a TCP listener, a connection to it and a UDP socket there, and came back
/// (argv[1]: the namespace's path). On SIGUSR1 it sends a word through the connection and
/// prints what arrived.
const OUTSIDE_HOPPER: &str = r#"
import ctypes, os, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
own = os.open("/proc/self/ns/net", os.O_RDONLY)
there = os.open(sys.argv[1], os.O_RDONLY)
if libc.setns(there, CLONE_NEWNET) != 0:
    print("setns failed", ctypes.get_errno(), flush=True); sys.exit(1)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.bind(("127.0.0.1", 7300))
ls.listen(4)
cl = socket.create_connection(("127.0.0.1", 7300))
sv, _ = ls.accept()
dg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dg.bind(("127.0.0.1", 7301))
if libc.setns(own, CLONE_NEWNET) != 0:
    print("setns back failed", ctypes.get_errno(), flush=True); sys.exit(1)
os.close(there)
os.close(own)
n = [0]
def through(*_):
    n[0] += 1
    cl.sendall(b"word-%d" % n[0])
    sv.settimeout(5)
    print("conn", sv.recv(100).decode(), flush=True)
signal.signal(signal.SIGUSR1, through)
print("ready", flush=True)
while True:
    time.sleep(1)
"#;

/// Inet sockets made in a network namespace no process of the tree is in (only a bind mount
/// holds it) cannot be made again (cryo, like CRIU, saves the namespaces of the tree's
/// processes): the dump is refused before the tree is touched, naming the fd and the
/// namespace. Before, it was refused only after the seize, with the connection first locked
/// in the holder's namespace: with a fault injected right after the seize, that fault was
/// what the dump reported. The process keeps running, its connection carries words, and
/// the namespace has no lock table.
#[test]
fn sockets_of_a_namespace_outside_the_tree_are_refused_before_the_seize() {
    let _s = serial();
    if !need(&["unshare", "python3", "ip", "nft", "nsenter"]) {
        return;
    }
    let dir = scratch("netns-outside");
    let hosts = Hosts::new("outside", &["x"]);
    let out = dir.join("out");
    let there = hosts.path(0);
    let (pid, _g) = python_in_own_netns("the sockets", OUTSIDE_HOPPER, &[&there], &out);
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&there).unwrap().ino();
    let p = pid.to_string();
    let img = dir.join("img");
    for extra in [&[][..], &["--tcp-established"][..]] {
        let mut a = vec!["dump", "-t", &p, "-D", img.to_str().unwrap()];
        a.extend_from_slice(extra);
        let o = cryo_env(&a, &[("CRYO_FAULT_INJECT", "seize")]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}: the dump succeeded");
        assert!(
            !e.contains("fault injected") && e.contains(&format!("net:[{ino}]")),
            "{extra:?}: not refused before the seize, naming the namespace: {e}"
        );
        assert!(e.contains("fd "), "{extra:?}: the fd is not named: {e}");
        assert!(
            alive(pid),
            "{extra:?}: a refused dump must leave the tree running"
        );
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(st.contains("TracerPid:\t0"), "{extra:?}: still traced");
        assert!(
            !host_tables(&hosts.0[0]).contains("CRIU") && !tables_of(pid).contains("CRIU"),
            "{extra:?}: a lock table was left"
        );
    }
    integration::signal(pid, libc::SIGUSR1);
    wait_for("the word through the connection", 10, || {
        lines(&out).iter().any(|l| l == "conn word-1")
    });
    kill(pid);
}

/// A parent that made a child in a network namespace of its own, then entered that
/// namespace and made a TCP listener, a connection to it, a bound UDP socket and a tun device
/// `tb0` (its file), and came back. It prints "ready" with the tun file's fd; then what its
/// listener and UDP socket get, and on SIGUSR1 a word through the connection.
const PARENT_OF_NS: &str = r#"
import ctypes, fcntl, os, select, signal, socket, struct, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    os.close(r)
    if libc.unshare(CLONE_NEWNET) != 0:
        os._exit(1)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.write(w, b"x")
    os.close(w)
    while True:
        time.sleep(1)
os.close(w)
os.read(r, 1)
os.close(r)
own = os.open("/proc/self/ns/net", os.O_RDONLY)
there = os.open("/proc/%d/ns/net" % kid, os.O_RDONLY)
if libc.setns(there, CLONE_NEWNET) != 0:
    print("setns failed", ctypes.get_errno(), flush=True); sys.exit(1)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.bind(("127.0.0.1", 7400))
ls.listen(4)
cl = socket.create_connection(("127.0.0.1", 7400))
sv, _ = ls.accept()
dg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dg.bind(("127.0.0.1", 7401))
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454ca, struct.pack("16sH", b"tb0", 0x0001 | 0x1000))
if libc.setns(own, CLONE_NEWNET) != 0:
    print("setns back failed", ctypes.get_errno(), flush=True); sys.exit(1)
os.close(there)
os.close(own)
n = [0]
def through(*_):
    n[0] += 1
    cl.sendall(b"word-%d" % n[0])
    sv.settimeout(5)
    print("conn", sv.recv(100).decode(), flush=True)
signal.signal(signal.SIGUSR1, through)
print("ready", tun, flush=True)
while True:
    try:
        rd, _, _ = select.select([dg, ls], [], [])
    except InterruptedError:
        continue
    if dg in rd:
        print("got", dg.recv(100).decode(), flush=True)
    if ls in rd:
        c, _ = ls.accept()
        print("accepted", c.recv(100).decode(), flush=True)
        c.close()
"#;

/// Sockets and a tun file held by a parent, of the network namespace of its child (the
/// namespace's first process, restored after its parent's fds): before, the restore was
/// refused ("no process of the tree restored before its holder is in"). They are now made
/// once the child has rebuilt its namespace (with the parent's late fds). Before the dump
/// and after the restore: from the child's namespace the parent's listener accepts and its
/// UDP socket receives, from the parent's own the port is closed; the connection carries a
/// word (`--tcp-established`); the tun file is attached to `tb0`, which is in the child's
/// namespace.
#[test]
fn sockets_of_a_childs_namespace_held_by_its_parent_come_back() {
    let _s = serial();
    if !need(&["nsenter", "unshare", "python3", "ip"]) {
        return;
    }
    let dir = scratch("netns-parent-holds");
    let out = dir.join("out");
    let (root, _g) = python_in_own_netns("the sockets", PARENT_OF_NS, &[], &out);
    let tun_fd: i32 = lines(&out)
        .iter()
        .find_map(|l| l.strip_prefix("ready ").map(|n| n.parse().unwrap()))
        .unwrap();
    let kid: i32 = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let netns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let send_from = |pid: i32, word: &str| -> String {
        let script = format!(
            r#"
import socket
r = []
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"{word}", ("127.0.0.1", 7401)); r.append("sent")
try:
    s = socket.create_connection(("127.0.0.1", 7400), timeout=5); s.sendall(b"{word}"); s.close(); r.append("connected")
except OSError as e:
    r.append(str(e.errno))
print(" ".join(r))
"#
        );
        String::from_utf8_lossy(&in_ns(pid, &["python3", "-c", &script]).stdout)
            .trim()
            .to_string()
    };
    let check = |when: &str, word: &str, n: usize| {
        assert_ne!(netns(kid), netns(root), "{when}: the child has its own");
        assert_eq!(
            send_from(root, &format!("a{word}")),
            format!("sent {}", libc::ECONNREFUSED),
            "{when}: from the parent's namespace"
        );
        assert_eq!(
            send_from(kid, word),
            "sent connected",
            "{when}: from the child's namespace"
        );
        wait_for("the parent to hear from the child's namespace", 10, || {
            let l = lines(&out);
            l.contains(&format!("got {word}")) && l.contains(&format!("accepted {word}"))
        });
        assert!(!lines(&out).contains(&format!("got a{word}")), "{when}");
        let info = std::fs::read_to_string(format!("/proc/{root}/fdinfo/{tun_fd}")).unwrap();
        assert!(info.contains("iff:\ttb0"), "{when}: the tun file: {info}");
        let links = String::from_utf8_lossy(&in_ns(kid, &["ip", "-o", "link"]).stdout).into_owned();
        assert!(
            links.contains("tb0"),
            "{when}: tb0 in the child's namespace: {links}"
        );
        integration::signal(root, libc::SIGUSR1);
        let want = format!("conn word-{n}");
        wait_for("the word through the connection", 10, || {
            lines(&out).contains(&want)
        });
    };
    check("before the dump", "one", 1);
    let img = dir.join("img");
    dump(root, &img, &["--tcp-established"]);
    wait_gone(root);
    wait_gone(kid);
    integration::restore_with(&img, &["--tcp-established"]);
    assert!(alive(root) && alive(kid), "the tree is back");
    check("after the restore", "two", 2);
    kill(root);
}

/// IPv6 address generation modes (`ip link set DEV addrgenmode`): a veth end in `random`
/// mode (the kernel made it a random stable secret), its peer in `eui64` with a secret
/// written, a tun device in `random` with a secret, loopback in `none`. Writing a device's
/// `stable_secret` turns its mode to stable-privacy, so they all came back as
/// `stable_secret` (CRIU's images have no place for the mode: cryo saves it after CRIU's
/// conf6 list and sets it through rtnetlink). After the restore every device has its mode,
/// its secret and exactly its IPv6 addresses (links are made down and come up once their
/// sysctls and mode are set).
#[test]
fn ipv6_address_generation_modes_come_back() {
    let _s = serial();
    if !need(&["ip", "nsenter", "unshare"]) {
        return;
    }
    let dir = scratch("netns-addrgen");
    let pid = spawn(&["unshare", "-n", "sleep", "1000"], &dir.join("log"));
    let _g = KillOnDrop(pid);
    wait_for("the sleeper", 10, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let secret = "2607:f0d0:1002:0051:0000:0000:0000:0004";
    let steps: &[&[&str]] = &[
        &[
            "ip", "link", "add", "ga0", "type", "veth", "peer", "name", "gb0",
        ],
        &["ip", "link", "set", "ga0", "addrgenmode", "random"],
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.gb0.stable_secret={secret}"),
        ],
        &["ip", "link", "set", "gb0", "addrgenmode", "eui64"],
        &["ip", "tuntap", "add", "dev", "gt0", "mode", "tun"],
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.gt0.stable_secret={secret}"),
        ],
        &["ip", "link", "set", "gt0", "addrgenmode", "random"],
        &["ip", "link", "set", "lo", "addrgenmode", "none"],
        &["ip", "link", "set", "lo", "up"],
        &["ip", "link", "set", "ga0", "up"],
        &["ip", "link", "set", "gb0", "up"],
        &["ip", "link", "set", "gt0", "up"],
    ];
    for s in steps {
        ok(&in_ns(pid, s), &s.join(" "));
    }
    // Each device's mode and secret, and its IPv6 addresses.
    let state = |pid: i32| -> Vec<(String, Vec<String>)> {
        let mut v = Vec::new();
        for dev in ["lo", "ga0", "gb0", "gt0"] {
            let link =
                String::from_utf8_lossy(&in_ns(pid, &["ip", "-d", "link", "show", dev]).stdout)
                    .into_owned();
            let mode = link
                .split_whitespace()
                .skip_while(|w| *w != "addrgenmode")
                .nth(1)
                .unwrap_or("?")
                .to_string();
            let key = format!("/proc/sys/net/ipv6/conf/{dev}/stable_secret");
            let sec = String::from_utf8_lossy(&in_ns(pid, &["cat", &key]).stdout)
                .trim()
                .to_string();
            let mut addrs: Vec<String> = String::from_utf8_lossy(
                &in_ns(pid, &["ip", "-6", "-o", "addr", "show", "dev", dev]).stdout,
            )
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "inet6")
                    .map(|i| w[i + 1].to_string())
            })
            .collect();
            addrs.sort();
            v.push((format!("{dev} mode {mode} secret {sec}"), addrs));
        }
        v
    };
    // The link-local addresses are made once a link is up (and, for the tun, never: no
    // carrier), and leave their tentative state after DAD.
    std::thread::sleep(Duration::from_millis(1500));
    let before = state(pid);
    assert!(before[0].0.starts_with("lo mode none"), "{before:?}");
    assert!(
        before[1].0.starts_with("ga0 mode random secret "),
        "{before:?}"
    );
    assert_eq!(before[2].0, format!("gb0 mode eui64 secret {secret}"));
    assert_eq!(before[3].0, format!("gt0 mode random secret {secret}"));
    let img = dir.join("img");
    dump(pid, &img, &[]);
    wait_gone(pid);
    integration::restore(&img);
    std::thread::sleep(Duration::from_millis(1500));
    let after = state(pid);
    for ((b, b_addrs), (a, a_addrs)) in before.iter().zip(&after) {
        assert_eq!(a, b, "after the restore");
        // Exactly the dumped addresses: a link made up before its mode and secret were set
        // got a link-local address of the default mode (eui64) too.
        assert_eq!(a_addrs, b_addrs, "{b}: its IPv6 addresses");
    }
    kill(pid);
}

/// A root with two children: the second (`C`) makes a network namespace of its own and in it
/// a TCP listener, a UDP socket, a unix listener on an abstract name (abstract names are per
/// network namespace) and a tun file attached to `tb1`, and hands them all to its elder
/// sibling (`B`, in the root's namespace) over a unix socket, keeping none. B is restored
/// (and its fds made) before C, and is not its ancestor: the restore refused ("a later
/// sibling's branch of the tree"). The namespace is now made ahead by B and joined by C.
const SIBLING_OF_NS: &str = r#"
import array, ctypes, fcntl, os, select, socket, struct, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
elder = os.fork()
if elder == 0:
    a.close()
    msg, anc, _, _ = b.recvmsg(16, socket.CMSG_LEN(4 * 4))
    b.close()
    fds = array.array("i")
    fds.frombytes(anc[0][2][:16])
    ls = socket.socket(fileno=fds[0])
    dg = socket.socket(fileno=fds[1])
    us = socket.socket(fileno=fds[2])
    tun = fds[3]
    print("ready", tun, flush=True)
    while True:
        try:
            rd, _, _ = select.select([ls, dg, us], [], [])
        except InterruptedError:
            continue
        if dg in rd:
            print("got", dg.recv(100).decode(), flush=True)
        if ls in rd:
            c, _ = ls.accept()
            print("accepted", c.recv(100).decode(), flush=True)
            c.close()
        if us in rd:
            c, _ = us.accept()
            print("unix", c.recv(100).decode(), flush=True)
            c.close()
younger = os.fork()
if younger == 0:
    b.close()
    if libc.unshare(CLONE_NEWNET) != 0:
        os._exit(1)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 7410))
    ls.listen(4)
    dg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dg.bind(("127.0.0.1", 7411))
    us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    us.bind("\0cryo-sibling-ns")
    us.listen(4)
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, 0x400454ca, struct.pack("16sH", b"tb1", 0x0001 | 0x1000))
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                        array.array("i", [ls.fileno(), dg.fileno(), us.fileno(), tun]))])
    a.close()
    ls.close(); dg.close(); us.close(); os.close(tun)
    while True:
        time.sleep(1)
a.close()
b.close()
print("kids", elder, younger, flush=True)
while True:
    time.sleep(1)
"#;

#[test]
fn sockets_of_a_namespace_made_by_a_later_sibling_come_back() {
    let _s = serial();
    if !need(&["nsenter", "unshare", "python3", "ip"]) {
        return;
    }
    let dir = scratch("netns-sibling-made");
    let out = dir.join("out");
    let root = spawn(&["unshare", "-n", "python3", "-c", SIBLING_OF_NS], &out);
    let _g = KillOnDrop(root);
    wait_for("the sockets", 10, || {
        let l = lines(&out);
        l.iter().any(|l| l.starts_with("ready")) && l.iter().any(|l| l.starts_with("kids"))
    });
    let l = lines(&out);
    let tun_fd: i32 = l
        .iter()
        .find_map(|l| l.strip_prefix("ready ").map(|n| n.parse().unwrap()))
        .unwrap();
    let kids: Vec<i32> = l
        .iter()
        .find_map(|l| l.strip_prefix("kids "))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (elder, younger) = (kids[0], kids[1]);
    let _g2 = KillOnDrop(elder);
    let _g3 = KillOnDrop(younger);
    let netns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let send_from = |pid: i32, word: &str| -> String {
        let script = format!(
            r#"
import socket
r = []
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"{word}", ("127.0.0.1", 7411)); r.append("sent")
for fam, addr in ((socket.AF_INET, ("127.0.0.1", 7410)), (socket.AF_UNIX, "\0cryo-sibling-ns")):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(5); s.connect(addr)
        s.sendall(b"{word}"); s.close(); r.append("connected")
    except OSError as e:
        r.append(str(e.errno))
print(" ".join(r))
"#
        );
        String::from_utf8_lossy(&in_ns(pid, &["python3", "-c", &script]).stdout)
            .trim()
            .to_string()
    };
    let check = |when: &str, word: &str| {
        assert_ne!(
            netns(younger),
            netns(root),
            "{when}: the younger has its own"
        );
        assert_eq!(
            netns(elder),
            netns(root),
            "{when}: the elder is in the root's"
        );
        let refused = libc::ECONNREFUSED;
        assert_eq!(
            send_from(root, &format!("a{word}")),
            format!("sent {refused} {refused}"),
            "{when}: from the root's namespace"
        );
        assert_eq!(
            send_from(younger, word),
            "sent connected connected",
            "{when}: from the younger's namespace"
        );
        wait_for("the elder to hear from the younger's namespace", 10, || {
            let l = lines(&out);
            l.contains(&format!("got {word}"))
                && l.contains(&format!("accepted {word}"))
                && l.contains(&format!("unix {word}"))
        });
        assert!(!lines(&out).contains(&format!("got a{word}")), "{when}");
        let info = std::fs::read_to_string(format!("/proc/{elder}/fdinfo/{tun_fd}")).unwrap();
        assert!(info.contains("iff:\ttb1"), "{when}: the tun file: {info}");
        let links =
            String::from_utf8_lossy(&in_ns(younger, &["ip", "-o", "link"]).stdout).into_owned();
        assert!(
            links.contains("tb1"),
            "{when}: tb1 in the younger's namespace: {links}"
        );
    };
    check("before the dump", "one");
    let img = dir.join("img");
    dump(root, &img, &[]);
    for p in [root, elder, younger] {
        wait_gone(p);
    }
    integration::restore(&img);
    assert!(
        alive(root) && alive(elder) && alive(younger),
        "the tree is back"
    );
    check("after the restore", "two");
    // The root first: its children, which it does not reap, then go to a reaper.
    for p in [root, elder, younger] {
        kill(p);
    }
}
