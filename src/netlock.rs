//! The network lock (issue #10): from the moment a tree is frozen until its restored copy
//! runs, packets of its connections are dropped, never answered (no RST reaches a peer, so a
//! migrated TCP connection survives), as CRIU 4.x does with `--network-lock`.
//!
//! - A tree with a network namespace of its own is locked as a whole (`lock_netns`): inside
//!   that namespace a table `inet cryo-<pid>` (cryo's pid) with `input` and `output` base
//!   chains, `policy drop`, that accept only packets marked [`SOCCR_MARK`] (0xC114, CRIU's
//!   mark for its own TCP-repair packets). Its chains hook in at priority -300 (raw), ahead of
//!   the tree's own filter chains, so none of them can answer a packet with a reset first.
//! - A tree in cryo's own namespace (the host's) is locked per TCP connection
//!   (`lock_connections`, for the inet part): the same table in cryo's namespace, created on
//!   first use, with a `conns4`/`conns6` set of (saddr . sport . daddr . dport) and a drop rule
//!   in both directions, as CRIU's `nftables_lock_connection`.
//! - `--network-lock iptables` does the same with a chain `cryo-<pid>` in the filter table
//!   (`iptables-restore --noflush`, IPv4 and IPv6), as CRIU's `CRIU` chain; `skip` does nothing.
//!
//! Nothing is ever left behind: `unlock` (and `Drop`, on every error path) deletes the table
//! or chain. Against a cryo killed mid-way (SIGKILL runs no destructor) every lock is first
//! recorded in `/run/cryo/netlock/` (cryo's pid, its start time, the namespace's inode and a
//! pid living in it); [`NetLock::new`] removes what dead cryo processes left (the namespace is
//! found again by inode: the recorded pid, `/run/netns`, then every process), with a warning
//! naming each table.
//!
//! The rules are made with the `nft` program (and `iptables-restore`), run by a cryo thread
//! that entered the namespace: the same tool saves and restores a namespace's ruleset
//! (`kinds/netns.rs`), one process per lock or unlock is a few milliseconds, and it needs no
//! C library at build time (see ARCHITECTURE.md §3b).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The mark of packets that pass the lock (CRIU's `SOCCR_MARK`): a socket of the inet part
/// sets it (`SO_MARK`) on what it must send while the tree is locked.
pub const SOCCR_MARK: u32 = 0xC114;

/// Where locks are recorded until they are removed.
const RECORDS: &str = "/run/cryo/netlock";

/// How the network is locked (`--network-lock`, RPC `network_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// An nftables table (the default).
    #[default]
    Nftables,
    /// An iptables chain, as CRIU's default build does.
    Iptables,
    /// No lock at all.
    Skip,
}

impl Method {
    /// `--network-lock NAME`.
    pub fn parse(s: &str) -> Result<Method, String> {
        match s {
            "nftables" => Ok(Method::Nftables),
            "iptables" => Ok(Method::Iptables),
            "skip" | "none" => Ok(Method::Skip),
            o => Err(format!(
                "--network-lock {o}: expected nftables, iptables or skip"
            )),
        }
    }

    /// RPC `criu_network_lock_method` (IPTABLES 1, NFTABLES 2, SKIP 3).
    pub fn from_rpc(v: i32) -> Result<Method, String> {
        match v {
            1 => Ok(Method::Iptables),
            2 => Ok(Method::Nftables),
            3 => Ok(Method::Skip),
            o => Err(format!(
                "network_lock {o} (expected IPTABLES, NFTABLES or SKIP)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Method::Nftables => "nftables",
            Method::Iptables => "iptables",
            Method::Skip => "skip",
        }
    }
}

/// One TCP connection as the tree sees it: its own address and port, and its peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// Why locking or unlocking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("network lock: {tool} is not installed")]
    NoTool { tool: &'static str },
    #[error("network lock: {what} in network namespace {ns}: {why}")]
    Tool { what: String, ns: u64, why: String },
    #[error("network lock: cannot enter network namespace {what}")]
    Enter {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network lock: {what}: mixed address families in connection {conn:?}")]
    BadConn { what: &'static str, conn: Conn },
}

impl crate::kinds::error::Failure for NetLockError {
    fn hint(&self) -> Option<String> {
        match self {
            NetLockError::NoTool { tool } => Some(format!(
                "install it ({}), or choose another method with --network-lock nftables|iptables|skip",
                if *tool == "nft" { "apt-get install nftables" } else { "apt-get install iptables" }
            )),
            NetLockError::Tool { .. } => Some(
                "the kernel needs nf_tables (nftables) or xt_mark (iptables); --network-lock skip does without a lock, at the price of connections being reset".into(),
            ),
            _ => None,
        }
    }
}

/// One namespace cryo locked.
struct Locked {
    /// The namespace (an fd of it, so it is found again even if the tree dies).
    ns: File,
    ino: u64,
    /// The whole namespace, or only connections (a table with sets, made on first use).
    whole: bool,
    record: PathBuf,
}

/// The locks one cryo run holds; everything is removed by [`NetLock::unlock`] or on drop.
pub struct NetLock {
    method: Method,
    /// `cryo-<pid>`: the nftables table (family inet) or the iptables chain.
    name: String,
    locked: Vec<Locked>,
}

impl NetLock {
    /// A lock of the given method, holding nothing yet. First removes what dead cryo
    /// processes left behind.
    pub fn new(method: Method) -> NetLock {
        cleanup_stale();
        NetLock {
            method,
            name: format!("cryo-{}", std::process::id()),
            locked: Vec::new(),
        }
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The table (nftables) or chain (iptables) name this run uses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the namespace `ns` (an fd of it) is locked by this run.
    pub fn holds(&self, ino: u64) -> bool {
        self.locked.iter().any(|l| l.ino == ino)
    }

    /// Locks the whole network namespace of `pid` (the root of a tree with a namespace of
    /// its own): everything but marked packets is dropped there.
    pub fn lock_netns_of(&mut self, pid: i32) -> Result<(), NetLockError> {
        let path = format!("/proc/{pid}/ns/net");
        let ns = File::open(&path).map_err(|source| NetLockError::Enter { what: path, source })?;
        self.lock_netns(ns.as_fd(), Some(pid))
    }

    /// Locks the whole namespace `ns`; `hint` is a pid living in it (for the record a later
    /// run uses if this one is killed).
    pub fn lock_netns(
        &mut self,
        ns: BorrowedFd<'_>,
        hint: Option<i32>,
    ) -> Result<(), NetLockError> {
        if self.method == Method::Skip {
            return Ok(());
        }
        let ns = File::from(
            ns.try_clone_to_owned()
                .map_err(|source| NetLockError::Enter {
                    what: "(fd)".into(),
                    source,
                })?,
        );
        let ino = ns.metadata().map(|m| m.ino()).unwrap_or(0);
        if self.holds(ino) {
            return Ok(());
        }
        let record = self.record(ino, hint, true);
        let t = &self.name;
        let r = match self.method {
            Method::Nftables => crate::kinds::netns::within(ns.as_fd(), || nfnl::lock_whole(t))
                .and_then(|r| r)
                .map_err(|e| NetLockError::Tool {
                    what: "lock the network (nf_tables)".into(),
                    ns: ino,
                    why: e.to_string(),
                }),
            Method::Iptables => {
                let conf = format!(
                    "*filter\n:{t} - [0:0]\n-I INPUT -j {t}\n-I OUTPUT -j {t}\n\
                     -A {t} -m mark --mark {SOCCR_MARK:#x} -j ACCEPT\n-A {t} -j DROP\nCOMMIT\n"
                );
                iptables_restore(&ns, ino, "lock the network", &conf, false)
                    .and_then(|_| iptables_restore(&ns, ino, "lock the network", &conf, true))
            }
            Method::Skip => Ok(()),
        };
        let l = Locked {
            ns,
            ino,
            whole: true,
            record,
        };
        match r {
            Ok(()) => {
                tracing::info!("network locked ({}) in namespace {ino}", self.method.name());
                self.locked.push(l);
                Ok(())
            }
            Err(e) => {
                // A half-made lock (iptables: the IPv4 part) goes again.
                remove(self.method, &self.name, &l);
                Err(e)
            }
        }
    }

    /// Locks TCP connections of a tree living in cryo's own network namespace (for the inet
    /// part, before it puts each socket in repair mode).
    pub fn lock_connections(&mut self, conns: &[Conn]) -> Result<(), NetLockError> {
        if self.method == Method::Skip || conns.is_empty() {
            return Ok(());
        }
        let path = "/proc/thread-self/ns/net";
        let ns = File::open(path).map_err(|source| NetLockError::Enter {
            what: path.into(),
            source,
        })?;
        let ino = ns.metadata().map(|m| m.ino()).unwrap_or(0);
        let t = self.name.clone();
        if let Some(l) = self.locked.iter().find(|l| l.ino == ino) {
            if l.whole {
                return Ok(()); // everything is dropped there already
            }
        } else {
            let record = self.record(ino, Some(crate::sys::proc::own_pid()), false);
            let r = match self.method {
                Method::Nftables => {
                    let (m4, m6) = (
                        "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop",
                        "ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop",
                    );
                    nft(
                        &ns,
                        ino,
                        "make the connection lock",
                        &format!(
                            "table inet {t} {{\n\
                             \tset conns4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}\n\
                             \tset conns6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}\n\
                             \tchain input {{ type filter hook input priority -300; meta mark {SOCCR_MARK:#x} accept; {m4}; {m6}; }}\n\
                             \tchain output {{ type filter hook output priority -300; meta mark {SOCCR_MARK:#x} accept; {m4}; {m6}; }}\n\
                             }}\n"
                        ),
                    )
                }
                Method::Iptables => {
                    let conf = format!(
                        "*filter\n:{t} - [0:0]\n-I INPUT -j {t}\n-I OUTPUT -j {t}\nCOMMIT\n"
                    );
                    iptables_restore(&ns, ino, "make the connection lock", &conf, false).and_then(
                        |_| iptables_restore(&ns, ino, "make the connection lock", &conf, true),
                    )
                }
                Method::Skip => Ok(()),
            };
            let l = Locked {
                ns,
                ino,
                whole: false,
                record,
            };
            if let Err(e) = r {
                remove(self.method, &self.name, &l);
                return Err(e);
            }
            self.locked.push(l);
        }
        let l = self
            .locked
            .iter()
            .find(|l| l.ino == ino)
            .expect("pushed above");
        match self.method {
            Method::Nftables => {
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for c in conns {
                    let (a, b) = (
                        format!("{} . {} . {} . {}", c.dst, c.dport, c.src, c.sport),
                        format!("{} . {} . {} . {}", c.src, c.sport, c.dst, c.dport),
                    );
                    match (c.src, c.dst) {
                        (IpAddr::V4(_), IpAddr::V4(_)) => v4.extend([a, b]),
                        (IpAddr::V6(_), IpAddr::V6(_)) => v6.extend([a, b]),
                        _ => {
                            return Err(NetLockError::BadConn {
                                what: "lock",
                                conn: *c,
                            })
                        }
                    }
                }
                let mut script = String::new();
                if !v4.is_empty() {
                    script += &format!("add element inet {t} conns4 {{ {} }}\n", v4.join(", "));
                }
                if !v6.is_empty() {
                    script += &format!("add element inet {t} conns6 {{ {} }}\n", v6.join(", "));
                }
                nft(&l.ns, ino, "lock connections", &script)
            }
            Method::Iptables => {
                let mut c4 = String::new();
                let mut c6 = String::new();
                for c in conns {
                    let rule = |s: &IpAddr, sp: u16, d: &IpAddr, dp: u16| {
                        format!(
                            "-A {t} -p tcp -s {s} --sport {sp} -d {d} --dport {dp} -m mark ! --mark {SOCCR_MARK:#x} -j DROP\n"
                        )
                    };
                    let both = rule(&c.dst, c.dport, &c.src, c.sport)
                        + &rule(&c.src, c.sport, &c.dst, c.dport);
                    if c.src.is_ipv4() {
                        c4 += &both;
                    } else {
                        c6 += &both;
                    }
                }
                if !c4.is_empty() {
                    iptables_restore(
                        &l.ns,
                        ino,
                        "lock connections",
                        &format!("*filter\n{c4}COMMIT\n"),
                        false,
                    )?;
                }
                if !c6.is_empty() {
                    iptables_restore(
                        &l.ns,
                        ino,
                        "lock connections",
                        &format!("*filter\n{c6}COMMIT\n"),
                        true,
                    )?;
                }
                Ok(())
            }
            Method::Skip => Ok(()),
        }
    }

    /// Removes every lock of this run; the first error is returned after trying them all.
    pub fn unlock(mut self) -> Result<(), NetLockError> {
        self.unlock_all()
    }

    /// [`NetLock::unlock`] for a lock held in place (it can lock again afterwards).
    pub fn unlock_now(&mut self) -> Result<(), NetLockError> {
        self.unlock_all()
    }

    fn unlock_all(&mut self) -> Result<(), NetLockError> {
        let mut first = None;
        for l in std::mem::take(&mut self.locked) {
            let r = remove_checked(self.method, &self.name, &l);
            match r {
                Ok(()) => tracing::info!("network unlocked in namespace {}", l.ino),
                Err(e) => {
                    tracing::error!("{e}");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Writes the record a later run needs if this one is killed.
    fn record(&self, ino: u64, hint: Option<i32>, whole: bool) -> PathBuf {
        let me = std::process::id();
        let path = PathBuf::from(format!("{RECORDS}/{me}-{ino}"));
        let rec = serde_json::json!({
            "cryo": me,
            "start": start_time(crate::sys::proc::own_pid()),
            "pidns": own_pid_ns(),
            "method": self.method.name(),
            "name": self.name,
            "ino": ino,
            "pid": hint,
            "whole": whole,
        });
        let r =
            std::fs::create_dir_all(RECORDS).and_then(|_| std::fs::write(&path, rec.to_string()));
        if let Err(e) = r {
            tracing::warn!(
                "cannot record the network lock in {}: {e}; if cryo is killed, remove table inet {} by hand",
                path.display(),
                self.name
            );
        }
        path
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        let _ = self.unlock_all();
    }
}

/// Deletes a lock, logging (not returning) failures.
fn remove(method: Method, name: &str, l: &Locked) {
    if let Err(e) = remove_checked(method, name, l) {
        tracing::error!("{e}");
    }
}

fn remove_checked(method: Method, name: &str, l: &Locked) -> Result<(), NetLockError> {
    let r = delete(method, name, &l.ns, l.ino);
    if r.is_ok() {
        let _ = std::fs::remove_file(&l.record);
    }
    r
}

/// Deletes the table or chain `name` in `ns`; one that does not exist is no error.
fn delete(method: Method, name: &str, ns: &File, ino: u64) -> Result<(), NetLockError> {
    match method {
        Method::Nftables => crate::kinds::netns::within(ns.as_fd(), || nfnl::delete_table(name))
            .and_then(|r| r)
            .map_err(|e| NetLockError::Tool {
                what: format!("unlock the network: delete table inet {name} (nf_tables)"),
                ns: ino,
                why: e.to_string(),
            }),
        Method::Iptables => {
            let mut first = Ok(());
            for v6 in [false, true] {
                let tool = if v6 { "ip6tables" } else { "iptables" };
                // The jumps (again while one remains: iptables-nft may hold two), then the chain.
                for _ in 0..4 {
                    let mut gone = true;
                    for hook in ["INPUT", "OUTPUT"] {
                        if run_in(ns, ino, tool, &["-w", "-C", hook, "-j", name], None).is_ok() {
                            gone = false;
                            let _ = run_in(ns, ino, tool, &["-w", "-D", hook, "-j", name], None);
                        }
                    }
                    if gone {
                        break;
                    }
                }
                if run_in(ns, ino, tool, &["-w", "-L", name, "-n"], None).is_ok() {
                    let r = run_in(ns, ino, tool, &["-w", "-F", name], None)
                        .and_then(|_| run_in(ns, ino, tool, &["-w", "-X", name], None));
                    if first.is_ok() {
                        first = r.map(|_| ()).map_err(|f| f.named("unlock the network"));
                    }
                }
            }
            first
        }
        Method::Skip => Ok(()),
    }
}

/// Runs `nft -f -` with `script` inside `ns`.
fn nft(ns: &File, ino: u64, what: &str, script: &str) -> Result<(), NetLockError> {
    tracing::debug!("nft in namespace {ino}: {script}");
    run_in(ns, ino, "nft", &["-f", "-"], Some(script))
        .map(|_| ())
        .map_err(|e| e.named(what))
}

/// `iptables-restore -w --noflush` (or ip6tables-) with `conf` inside `ns`.
fn iptables_restore(
    ns: &File,
    ino: u64,
    what: &str,
    conf: &str,
    v6: bool,
) -> Result<(), NetLockError> {
    let tool = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    run_in(ns, ino, tool, &["-w", "--noflush"], Some(conf))
        .map(|_| ())
        .map_err(|e| e.named(what))
}

/// A tool's failure before it is named by what cryo was doing.
struct ToolFailure {
    tool: &'static str,
    ns: u64,
    missing: bool,
    why: String,
}

impl ToolFailure {
    fn named(self, what: &str) -> NetLockError {
        if self.missing {
            NetLockError::NoTool { tool: self.tool }
        } else {
            NetLockError::Tool {
                what: format!("{what} ({})", self.tool),
                ns: self.ns,
                why: self.why,
            }
        }
    }
}

impl From<ToolFailure> for NetLockError {
    fn from(f: ToolFailure) -> Self {
        f.named("run")
    }
}

/// Runs `tool args` in the network namespace `ns` (from a cryo thread that entered it, so
/// the child starts there), with `input` on stdin; its stdout on success.
fn run_in(
    ns: &File,
    ino: u64,
    tool: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, ToolFailure> {
    let fail = |missing, why: String| ToolFailure {
        tool,
        ns: ino,
        missing,
        why,
    };
    let r = crate::kinds::netns::within(ns.as_fd(), || {
        let mut c = Command::new(tool);
        c.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        if let (Some(s), Some(mut w)) = (input, child.stdin.take()) {
            w.write_all(s.as_bytes())?;
        }
        child.wait_with_output()
    });
    let out = match r {
        Ok(Ok(o)) => o,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(true, e.to_string()))
        }
        Ok(Err(e)) | Err(e) => return Err(fail(false, e.to_string())),
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(
            false,
            format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ),
        ))
    }
}

/// The start time (clock ticks after boot) of process `pid`, field 22 of its stat.
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The inode of cryo's PID namespace: a record's `cryo` PID means something only there.
fn own_pid_ns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// Removes the locks recorded by cryo processes that are gone, saying so. A record made by a
/// cryo in another PID namespace (a test suite running cryo in a container) is left alone:
/// its PID cannot be checked from here.
pub fn cleanup_stale() {
    let Ok(dir) = std::fs::read_dir(RECORDS) else {
        return;
    };
    for e in dir.flatten() {
        let path = e.path();
        let Some(rec) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            continue;
        };
        if rec["pidns"]
            .as_u64()
            .is_some_and(|ns| Some(ns) != own_pid_ns())
        {
            continue;
        }
        let cryo = rec["cryo"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let start = rec["start"].as_u64();
        if cryo <= 0 || (start.is_some() && start_time(cryo) == start) {
            continue; // still running
        }
        let method = match rec["method"].as_str() {
            Some("iptables") => Method::Iptables,
            _ => Method::Nftables,
        };
        let name = rec["name"].as_str().unwrap_or_default().to_string();
        let ino = rec["ino"].as_u64().unwrap_or(0);
        let hint = rec["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
        if !name.starts_with("cryo-") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let what = match method {
            Method::Iptables => format!("iptables chain {name}"),
            _ => format!("nftables table inet {name}"),
        };
        match find_netns(ino, hint) {
            Some(ns) => match delete(method, &name, &ns, ino) {
                Ok(()) => {
                    tracing::warn!(
                        "removed the network lock ({what}) that cryo process {cryo}, which is gone, left in network namespace {ino}"
                    );
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => tracing::warn!(
                    "cannot remove the network lock ({what}) that cryo process {cryo} left in network namespace {ino}: {e}"
                ),
            },
            None => {
                tracing::info!(
                    "the network namespace {ino} that cryo process {cryo} locked ({what}) no longer exists"
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Opens the network namespace with inode `ino`: through `hint`'s, a name in /run/netns,
/// or any process's.
fn find_netns(ino: u64, hint: Option<i32>) -> Option<File> {
    let try_open = |p: &Path| -> Option<File> {
        let f = File::open(p).ok()?;
        (f.metadata().ok()?.ino() == ino).then_some(f)
    };
    if let Some(f) = hint.and_then(|p| try_open(Path::new(&format!("/proc/{p}/ns/net")))) {
        return Some(f);
    }
    let mut seen: HashMap<u64, ()> = HashMap::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(f) = try_open(&e.path()) {
                return Some(f);
            }
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let p = e.path().join("ns/net");
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if seen.insert(m.ino(), ()).is_some() {
            continue;
        }
        if m.ino() == ino {
            if let Some(f) = try_open(&p) {
                return Some(f);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_like_criu() {
        assert_eq!(Method::parse("nftables"), Ok(Method::Nftables));
        assert_eq!(Method::parse("iptables"), Ok(Method::Iptables));
        assert_eq!(Method::parse("skip"), Ok(Method::Skip));
        assert!(Method::parse("bpf").is_err());
        assert_eq!(Method::from_rpc(2), Ok(Method::Nftables));
        assert_eq!(Method::from_rpc(3), Ok(Method::Skip));
    }

    /// `lock_connections` in a network namespace of the test thread's own (root and nft
    /// needed; skipped without): the elements are in the sets, and gone with the table.
    #[test]
    fn connections_are_locked_and_unlocked() {
        let has_nft = Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !rustix::process::geteuid().is_root() || !has_nft {
            eprintln!("SKIP: needs root and nft");
            return;
        }
        std::thread::spawn(|| {
            crate::sys::ns::unshare(crate::sys::ns::UnshareFlags::NEWNET).unwrap();
            let ruleset = || {
                let o = Command::new("nft")
                    .args(["list", "ruleset"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            for method in [Method::Nftables, Method::Iptables] {
                if method == Method::Iptables
                    && !Command::new("iptables")
                        .arg("-V")
                        .output()
                        .is_ok_and(|o| o.status.success())
                {
                    continue;
                }
                let mut l = NetLock::new(method);
                let c4 = Conn {
                    src: "10.1.0.2".parse().unwrap(),
                    sport: 8080,
                    dst: "10.1.0.9".parse().unwrap(),
                    dport: 40000,
                };
                let c6 = Conn {
                    src: "fd00::2".parse().unwrap(),
                    sport: 8080,
                    dst: "fd00::9".parse().unwrap(),
                    dport: 40001,
                };
                l.lock_connections(&[c4, c6]).unwrap();
                let name = l.name().to_string();
                let shown = if method == Method::Nftables {
                    ruleset()
                } else {
                    let o = Command::new("iptables")
                        .args(["-S", &name])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&o.stdout).into_owned()
                };
                assert!(
                    shown.contains("10.1.0.9") && shown.contains("40000"),
                    "{shown}"
                );
                if method == Method::Nftables {
                    assert!(
                        shown.contains("fd00::9") && shown.contains(&name),
                        "{shown}"
                    );
                }
                l.unlock().unwrap();
                assert!(!ruleset().contains(&name), "{}", ruleset());
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn own_start_time_is_read() {
        assert!(start_time(crate::sys::proc::own_pid()).is_some());
    }
}

/// nf_tables over netlink (netlink-packet-netfilter): the whole-namespace lock made and any
/// lock table deleted in one transaction each, with no program started (a few hundred
/// microseconds, where `nft` takes about ten milliseconds). Works in the calling thread's
/// network namespace.
mod nfnl {
    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
        NLM_F_REQUEST,
    };
    use netlink_packet_netfilter::nftables::{
        ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
        InetHookNumber, Meta, MetaKey, NfTablesMessage, Operator, Register, RuleAttribute,
        RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
    };
    use netlink_packet_netfilter::none::ControlMessage;
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    use netlink_sys::{Socket, SocketAddr};

    const NETLINK_NETFILTER: isize = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NF_DROP: u32 = 0;
    const NF_ACCEPT: u32 = 1;

    fn socket() -> std::io::Result<Socket> {
        let mut sk = Socket::new(NETLINK_NETFILTER)?;
        sk.bind_auto()?;
        sk.connect(&SocketAddr::new(0, 0))?;
        Ok(sk)
    }

    fn msg(m: NfTablesMessage, flags: u16, seq: u32) -> Vec<u8> {
        let mut n = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            m,
        ));
        n.header.flags = NLM_F_REQUEST | flags;
        n.header.sequence_number = seq;
        n.finalize();
        let mut b = vec![0u8; n.buffer_len()];
        n.serialize(&mut b);
        b
    }

    fn control(c: ControlMessage, seq: u32) -> Vec<u8> {
        let mut n = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            c,
        ));
        n.header.flags = NLM_F_REQUEST;
        n.header.sequence_number = seq;
        n.finalize();
        let mut b = vec![0u8; n.buffer_len()];
        n.serialize(&mut b);
        b
    }

    /// Sends `msgs` as one transaction and waits for every acknowledgement; the first
    /// error the kernel reports fails it (and nothing of it is applied).
    fn transaction(msgs: Vec<(NfTablesMessage, u16)>) -> std::io::Result<()> {
        let sk = socket()?;
        let mut buf = control(ControlMessage::BatchBegin, 1);
        let n = msgs.len();
        for (i, (m, f)) in msgs.into_iter().enumerate() {
            buf.extend(msg(m, f | NLM_F_ACK, 2 + crate::num::len32(i)));
        }
        buf.extend(control(ControlMessage::BatchEnd, 2 + crate::num::len32(n)));
        sk.send(&buf, 0)?;
        let mut acked = 0;
        while acked < n {
            for m in recv(&sk)? {
                if let NetlinkPayload::Error(e) = m.payload {
                    if e.code.is_some() {
                        return Err(e.to_io());
                    }
                    acked += 1;
                }
            }
        }
        Ok(())
    }

    fn recv(sk: &Socket) -> std::io::Result<Vec<NetlinkMessage<NetfilterMessage>>> {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        sk.recv(&mut buf, 0)?;
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            if len < 16 || off + len > buf.len() {
                break;
            }
            out.push(
                NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len])
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            );
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// `meta mark SOCCR_MARK accept`.
    fn accept_marked(table: &str, chain: &str) -> NfTablesMessage {
        NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(vec![
                    Expressions::Meta(vec![
                        Meta::Key(MetaKey::Mark),
                        Meta::DestinationRegister(Register::Reg1),
                    ])
                    .into(),
                    Expressions::Cmp(vec![
                        Cmp::SourceRegister(Register::Reg1),
                        Cmp::Op(Operator::Equal),
                        Cmp::Data(DataAttribute::Value(
                            super::SOCCR_MARK.to_ne_bytes().to_vec(),
                        )),
                    ])
                    .into(),
                    Expressions::Immediate(vec![
                        Immediate::DestinationRegister(Register::Verdict),
                        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                            Verdict::Other(NF_ACCEPT),
                        )])),
                    ])
                    .into(),
                ]),
            ],
        })
    }

    fn drop_chain(table: &str, name: &str, hook: InetHookNumber) -> NfTablesMessage {
        NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(name.into()),
                ChainAttribute::Hook(vec![
                    Hook::Number(hook.into()),
                    Hook::Priority((-300i32).cast_unsigned()),
                ]),
                ChainAttribute::Policy(NF_DROP),
                ChainAttribute::Type("filter".into()),
            ],
        })
    }

    /// The whole-namespace lock: table `inet NAME`, chains `input` and `output` (hook
    /// priority -300, policy drop), each with `meta mark 0xc114 accept`.
    pub fn lock_whole(table: &str) -> std::io::Result<()> {
        transaction(vec![
            (
                NfTablesMessage::NewTable(TableMessage {
                    attributes: vec![TableAttribute::Name(table.into())],
                }),
                NLM_F_CREATE,
            ),
            (
                drop_chain(table, "input", InetHookNumber::LocalIn),
                NLM_F_CREATE,
            ),
            (
                drop_chain(table, "output", InetHookNumber::LocalOut),
                NLM_F_CREATE,
            ),
            (accept_marked(table, "input"), NLM_F_CREATE | NLM_F_APPEND),
            (accept_marked(table, "output"), NLM_F_CREATE | NLM_F_APPEND),
        ])
    }

    /// Deletes table `inet NAME`; one that does not exist is no error.
    pub fn delete_table(table: &str) -> std::io::Result<()> {
        match transaction(vec![(
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.into())],
            }),
            0,
        )]) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Whether the calling thread's network namespace has any nftables table.
    pub fn has_tables() -> std::io::Result<bool> {
        let sk = socket()?;
        let mut n = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            NfTablesMessage::GetTable(TableMessage { attributes: vec![] }),
        ));
        n.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        n.header.sequence_number = 1;
        n.finalize();
        let mut b = vec![0u8; n.buffer_len()];
        n.serialize(&mut b);
        sk.send(&b, 0)?;
        let mut any = false;
        loop {
            for m in recv(&sk)? {
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(any),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(_) => any = true,
                    _ => {}
                }
            }
        }
    }
}

/// Deletes table `inet NAME` in the calling thread's network namespace, if it exists (the
/// lock CRIU saves into its images, found again at restore).
pub fn delete_nft_table(name: &str) -> std::io::Result<()> {
    nfnl::delete_table(name)
}

/// Whether the calling thread's network namespace has any nftables table (the namespace
/// dump skips `nft list ruleset` when it has none). On an error it answers yes, so the
/// ruleset is asked for anyway.
pub fn nft_has_tables() -> bool {
    nfnl::has_tables().unwrap_or(true)
}
