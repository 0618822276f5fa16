//! Network namespaces for the socket tests: two namespaces joined by a veth pair, standing
//! for two hosts, made and removed by the test; helpers to start a program in one of them
//! and to look at its nftables ruleset.

use std::path::Path;
use std::process::Command;

use crate::{spawn, wait_for};

/// Two network namespaces joined by a veth pair; removed on drop.
pub struct Net {
    pub a: String,
    pub b: String,
    /// The second octet of the IPv4 addresses (unique per test).
    pub x: u8,
}

impl Net {
    pub fn new(tag: &str, x: u8) -> Net {
        let id = std::process::id() % 100000;
        let n = Net {
            a: format!("cryo-{tag}-a-{id}"),
            b: format!("cryo-{tag}-b-{id}"),
            x,
        };
        let run = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip");
            assert!(
                o.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        for ns in [&n.a, &n.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["netns", "add", ns]);
            run(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("cv{x}a{id}"), format!("cv{x}b{id}"));
        run(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        run(&["link", "set", &va, "netns", &n.a]);
        run(&["link", "set", &vb, "netns", &n.b]);
        for (ns, dev, host) in [(&n.a, &va, 1), (&n.b, &vb, 2)] {
            run(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{x}.0.{host}/24"),
                "dev",
                dev,
            ]);
            run(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd00:{x}::{host}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            run(&["-n", ns, "link", "set", dev, "up"]);
        }
        n
    }

    /// Namespace B drops every packet it sends to A (`on`), or no longer: a lossy network,
    /// so that what A sends meanwhile stays unacknowledged (sent, in its send queue).
    pub fn lose_b_to_a(&self, on: bool) {
        self.lose("o", "output", "daddr", 1, on);
    }

    /// Namespace B drops every packet that comes from A (`on`), or no longer.
    pub fn lose_a_to_b(&self, on: bool) {
        self.lose("i", "input", "saddr", 1, on);
    }

    fn lose(&self, tag: &str, hook: &str, dir: &str, host: u8, on: bool) {
        let table = format!("cryoloss{tag}");
        let script = if on {
            format!(
                "table inet {table} {{\n chain c {{\n type filter hook {hook} priority 0;\n ip {dir} {} drop\n ip6 {dir} {} drop\n }}\n}}",
                self.v4(host),
                self.v6(host)
            )
        } else {
            format!("delete table inet {table}")
        };
        let f = std::env::temp_dir().join(format!("cryo-loss-{}-{tag}.nft", std::process::id()));
        std::fs::write(&f, script + "\n").unwrap();
        let o = Command::new("ip")
            .args(["netns", "exec", &self.b, "nft", "-f"])
            .arg(&f)
            .output()
            .expect("nft");
        let _ = std::fs::remove_file(&f);
        assert!(
            o.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn v4(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.x)
    }

    pub fn v6(&self, host: u8) -> String {
        format!("fd00:{}::{host}", self.x)
    }

    pub fn path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }

    /// The inode of namespace A (for `--external net[INO]:KEY`).
    pub fn a_ino(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(Net::path(&self.a)).unwrap().ino()
    }

    /// `--external net[INO]:srvnet`: namespace A, where the servers run, is external (the
    /// dump leaves it to the test; the restore joins it again, see [`Net::join_a`]).
    pub fn a_external(&self) -> String {
        format!("net[{}]:srvnet", self.a_ino())
    }

    /// `--join-ns net:PATH` of namespace A, for the restore.
    pub fn join_a(&self) -> String {
        format!("net:{}", Net::path(&self.a))
    }

    /// `cryo dump --tcp-established --external net[A]:srvnet` of `pid`, waiting until it is gone.
    pub fn dump_established(&self, pid: i32, img: &Path) {
        crate::dump(
            pid,
            img,
            &["--tcp-established", "--external", &self.a_external()],
        );
        crate::wait_gone(pid);
    }

    /// `cryo restore --tcp-established --join-ns net:A`.
    pub fn restore_established(&self, img: &Path) {
        crate::restore_with(img, &["--tcp-established", "--join-ns", &self.join_a()]);
    }

    /// `exe server PORT OUT` in namespace A and `exe client ADDR PORT OUT` in B (ADDR: A's
    /// IPv4 address), the server first, ready once its OUT says `ready`; both killed when the
    /// returned pair is dropped. The programs write their progress into `dir`/srv.out and
    /// cli.out.
    pub fn server_and_client(&self, dir: &Path, exe: &Path, port: u16) -> Pair {
        let exe = exe.to_str().unwrap();
        let port = port.to_string();
        let sout = dir.join("srv.out");
        let srv = Net::spawn_in(
            &self.a,
            &[exe, "server", &port, sout.to_str().unwrap()],
            &dir.join("srv.log"),
        );
        let srv = crate::KillOnDrop(srv);
        wait_for("the server", 20, || {
            crate::lines(&sout).first().is_some_and(|l| l == "ready")
        });
        let cout = dir.join("cli.out");
        let cli = Net::spawn_in(
            &self.b,
            &[exe, "client", &self.v4(1), &port, cout.to_str().unwrap()],
            &dir.join("cli.log"),
        );
        Pair {
            srv,
            cli: crate::KillOnDrop(cli),
            sout,
            cout,
        }
    }

    /// `nft list ruleset` in namespace `ns`.
    pub fn ruleset(ns: &str) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "ruleset"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts `argv` in namespace `ns` (its own session, like `spawn`).
    pub fn spawn_in(ns: &str, argv: &[&str], log: &Path) -> i32 {
        let net = format!("--net={}", Net::path(ns));
        let mut a = vec!["nsenter", net.as_str()];
        a.extend_from_slice(argv);
        let pid = spawn(&a, log);
        // nsenter execs the program in place: wait until it did.
        let first = argv[0].rsplit('/').next().unwrap().to_string();
        wait_for("the program to start in its namespace", 20, || {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().contains(&first))
        });
        pid
    }
}

/// Starts python3 running `script` with `args` in a network namespace of its own
/// (`unshare -n`), its output to `out`, and waits up to 10 s for it to print a line
/// starting with "ready" (`what` names it in the timeout's message). Returns its PID and
/// the guard that kills it, made before the wait so that a timeout leaves nothing behind.
pub fn python_in_own_netns(
    what: &str,
    script: &str,
    args: &[&str],
    out: &Path,
) -> (i32, crate::KillOnDrop) {
    let mut argv = vec!["unshare", "-n", "python3", "-c", script];
    argv.extend_from_slice(args);
    let pid = spawn(&argv, out);
    let guard = crate::KillOnDrop(pid);
    wait_for(what, 10, || {
        crate::lines(out).iter().any(|l| l.starts_with("ready"))
    });
    (pid, guard)
}

/// A server and its client in two namespaces ([`Net::server_and_client`]).
pub struct Pair {
    pub srv: crate::KillOnDrop,
    pub cli: crate::KillOnDrop,
    /// What each program wrote, a line per event.
    pub sout: std::path::PathBuf,
    pub cout: std::path::PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Tools the tests need: a missing one fails under CI, else the test is skipped.
pub fn need(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            crate::skip(&format!(
                "{t} is missing (integration/setup.sh installs it)"
            ));
            return false;
        }
    }
    true
}

/// A TCP connection to `addr` made from the network namespace at `ns_path` (a thread enters
/// it, connects, and the socket stays in that namespace): the test itself is the client
/// "host".
pub fn connect_in(ns_path: &str, addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(ns_path).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns_path}");
            let c = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
                .unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            c
        })
        .join()
        .unwrap()
    })
}
