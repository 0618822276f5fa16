//! The network lock (issue #10), the one place cryo locks and unlocks a tree's network: from
//! the moment a tree is frozen (before the first connection goes into TCP repair mode) until
//! its restored copy runs, packets of its connections are dropped, never answered, so no peer
//! sees a reset and a migrated TCP connection survives. As CRIU 4.x (`--network-lock`, RPC
//! `network_lock_method`):
//!
//! - The lock of one run is named after its run id as CRIU names it, `CRIU-` and the first 21
//!   characters of the id (`inventory.dump_criu_run_id`), so that CRIU's restore lifts a lock
//!   of cryo's dump and cryo's restore one of CRIU's. A restore uses the id of the dump.
//! - A tree with a network namespace of its own is locked as a whole ([`NetLock::lock_netns`]):
//!   inside that namespace a table `inet CRIU-…` with `input` and `output` base chains,
//!   `policy drop`, that accept only packets marked [`SOCCR_MARK`] (0xC114, the mark of the
//!   packets cryo forges itself). Its chains hook in at priority -300 (raw), ahead of the
//!   tree's own filter chains, so none of them can answer a packet with a reset first.
//! - A tree in cryo's own namespace is locked per TCP connection
//!   ([`NetLock::lock_connections`]): the same table with policy accept and a drop rule per
//!   direction of each connection.
//! - nftables (the default) is spoken over netlink (netlink-packet-netfilter): one
//!   transaction to lock, one to unlock, each a few hundred microseconds with no program
//!   started. `--network-lock iptables` makes a chain of the same name in the filter table
//!   (`iptables-restore --noflush`, IPv4 and IPv6); `skip` does nothing.
//! - runc's `network-lock`/`network-unlock` notifications are sent by the pipelines around
//!   the whole-namespace lock (`dump/mod.rs`, `restore/mod.rs`), as CRIU sends them.
//!
//! Nothing is left behind but the lock a dump keeps on purpose for its restore. `unlock` (and `Drop`, on every error path) deletes what this
//! run made; after a dump whose tree was killed the lock stays on purpose for the restore
//! ([`NetLock::keep`]: it is then named in the images, and the restore lifts it with
//! [`NetLock::lift_dump_lock`]). Against a cryo killed mid-way (SIGKILL runs no destructor)
//! every lock is first recorded in `/run/cryo/netlock/` (cryo's pid, its start time and PID
//! namespace, the network namespace's inode and a pid living in it), with the connections cryo
//! put in repair mode; [`cleanup_stale`], run first by every dump and restore, removes what
//! dead cryo processes left (the namespace is found again by inode) and takes those
//! connections out of repair mode, with a warning naming each.

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The mark of packets that pass the lock (CRIU's `SOCCR_MARK`): what cryo sends itself
/// while the tree is locked carries it (`SO_MARK`).
pub const SOCCR_MARK: u32 = 0xC114;

/// Where locks are recorded until they are removed or handed to the images.
const RECORDS: &str = "/run/cryo/netlock";

/// How the network is locked (`--network-lock`, RPC `network_lock_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// An nftables table (the default, as CRIU 4.x).
    #[default]
    Nftables,
    /// An iptables chain.
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

    /// `inventory.network_lock_method`, CRIU's internal numbering (IPTABLES 0, NFTABLES 1,
    /// SKIP 2); absent in old images, which mean iptables.
    pub fn to_inventory(self) -> u32 {
        match self {
            Method::Iptables => 0,
            Method::Nftables => 1,
            Method::Skip => 2,
        }
    }

    pub fn from_inventory(v: Option<u32>) -> Method {
        match v {
            Some(1) => Method::Nftables,
            Some(2) => Method::Skip,
            _ => Method::Iptables,
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

/// One TCP connection as the tree sees it: its own address and port, and its peer's (both
/// of one family; IPv4-mapped addresses as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A socket of the tree that cryo is about to put in repair mode: fd `fd` of process `pid`,
/// socket inode `ino` (recorded, so that a later run takes it out if cryo is killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairedSk {
    pub pid: i32,
    pub fd: i32,
    pub ino: u64,
}

/// Why locking or unlocking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    #[error("network lock: {tool} is not installed")]
    NoTool { tool: &'static str },
    #[error("network lock {name}: {what} in network namespace {ns}: {why}")]
    Tool {
        name: String,
        what: String,
        ns: u64,
        why: String,
    },
    #[error("network lock: cannot open network namespace {what}")]
    Enter {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl crate::kinds::error::Failure for NetLockError {
    fn hint(&self) -> Option<String> {
        match self {
            NetLockError::NoTool { tool } => Some(format!(
                "install it (apt-get install {tool}), or choose another method with --network-lock nftables|iptables|skip"
            )),
            NetLockError::Tool { .. } => Some(
                "the kernel needs nf_tables (nftables, inet family) or xt_mark (iptables) and cryo CAP_NET_ADMIN in that namespace; --network-lock skip does without a lock, at the price of connections being reset".into(),
            ),
            NetLockError::Enter { .. } => None,
        }
    }
}

/// A new CRIU-style run id (a random UUID).
pub fn new_run_id() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The nftables table (or iptables chain) of the lock of run id `id`, as CRIU names it.
pub fn lock_name(id: &str) -> String {
    format!("CRIU-{}", id.chars().take(21).collect::<String>())
}

/// One namespace this run locked.
struct Locked {
    /// The namespace (an fd of it, so it is found again even if the tree dies).
    ns: File,
    ino: u64,
    /// The whole namespace, or only connections.
    whole: bool,
    /// A lock of this name was there already (a restore in the namespace its dump locked):
    /// it is the dump's, removed on success (`unlock_now`) but left on failure (`Drop`) for
    /// the next attempt.
    adopted: bool,
    record: Option<PathBuf>,
}

/// The locks one cryo run holds; everything is removed by [`NetLock::unlock_now`] or on drop,
/// unless handed to the images with [`NetLock::keep`].
pub struct NetLock {
    method: Method,
    run_id: String,
    /// `CRIU-<21 characters of the run id>`: the nftables table or the iptables chain.
    name: String,
    locked: Vec<Locked>,
    /// The record of the connections put in repair mode (if any).
    repair_record: Option<PathBuf>,
    /// The namespaces `unlock_now` removed this run's lock from: a restore's lock has the
    /// dump's name, so the dump's lock is gone from them too.
    cleared: Vec<u64>,
}

impl std::fmt::Debug for NetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLock")
            .field("method", &self.method)
            .field("name", &self.name)
            .field("locked", &self.locked.len())
            .finish()
    }
}

impl Default for NetLock {
    fn default() -> Self {
        NetLock::named(Method::default(), new_run_id())
    }
}

impl NetLock {
    /// A lock of the given method for a dump, holding nothing yet, under a new run id. First
    /// removes what dead cryo processes left behind.
    pub fn new(method: Method) -> NetLock {
        cleanup_stale();
        NetLock::named(method, new_run_id())
    }

    /// The lock of a restore: named after the dump's run id when the images have one (CRIU
    /// does the same), so a lock either left is found by the same name. Also cleans up first.
    pub fn for_restore(method: Method, dump_run_id: Option<&str>) -> NetLock {
        cleanup_stale();
        NetLock::named(method, dump_run_id.map_or_else(new_run_id, str::to_string))
    }

    fn named(method: Method, run_id: String) -> NetLock {
        NetLock {
            method,
            name: lock_name(&run_id),
            run_id,
            locked: Vec::new(),
            repair_record: None,
            cleared: Vec::new(),
        }
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// The run id (`inventory.dump_criu_run_id`).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The table (nftables) or chain (iptables) name this run uses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this run locked anything.
    pub fn is_held(&self) -> bool {
        !self.locked.is_empty()
    }

    /// Whether this run locked some network namespace as a whole.
    pub fn holds_a_whole_namespace(&self) -> bool {
        self.locked.iter().any(|l| l.whole)
    }

    /// The namespaces this run holds locked as a whole: their inodes and the namespaces.
    pub fn whole_namespaces(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> {
        self.locked
            .iter()
            .filter(|l| l.whole)
            .map(|l| (l.ino, l.ns.as_fd()))
    }

    /// Whether the network namespace with inode `ino` is locked as a whole by this run.
    pub fn holds_whole(&self, ino: u64) -> bool {
        self.locked.iter().any(|l| l.ino == ino && l.whole)
    }

    /// Locks the whole network namespace of `pid` (the root of a tree with a namespace of
    /// its own): everything but marked packets is dropped there.
    pub fn lock_netns_of(&mut self, pid: i32) -> Result<(), NetLockError> {
        let ns = open_ns(&format!("/proc/{pid}/ns/net"))?;
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
        let ino = ino_of(&ns);
        if self.holds_whole(ino) {
            return Ok(());
        }
        let t = self.name.clone();
        // nftables: whether the dump's table is there and, if not, the lock, on one trip
        // into the namespace; the record is written first (cryo may be killed in between).
        let record = self.record(ino, hint, true);
        let nft = match self.method {
            Method::Nftables => Some(
                in_ns(&ns, || match nfnl::has_table(&t) {
                    Ok(true) => Ok(true),
                    _ => nfnl::lock_whole(&t).map(|()| false),
                })
                .and_then(|r| r)
                .map_err(|e| self.failed("lock the namespace (nf_tables)", ino, &e)),
            ),
            _ => None,
        };
        let there = match &nft {
            Some(Ok(adopted)) => *adopted,
            Some(Err(_)) => false,
            None => self.exists(&ns, ino),
        };
        if there {
            let _ = std::fs::remove_file(&record);
            tracing::info!(table = %t, ns = ino, "the dump's network lock is there: kept until the restore succeeds");
            self.locked.push(Locked {
                ns,
                ino,
                whole: true,
                adopted: true,
                record: None,
            });
            return Ok(());
        }
        let r = match self.method {
            Method::Nftables => nft.map_or(Ok(()), |r| r.map(|_| ())),
            Method::Iptables => {
                let conf = format!(
                    "*filter\n:{t} - [0:0]\n-I INPUT -j {t}\n-I OUTPUT -j {t}\n\
                     -A {t} -m mark --mark {SOCCR_MARK:#x} -j ACCEPT\n-A {t} -j DROP\nCOMMIT\n"
                );
                self.iptables_both(&ns, ino, "lock the namespace", &conf)
            }
            Method::Skip => Ok(()),
        };
        self.held_or_undone(ns, ino, true, record, r)?;
        tracing::info!(
            table = %self.name,
            ns = ino,
            "network locked ({}): the whole namespace",
            self.method.name()
        );
        Ok(())
    }

    /// Locks the TCP connections `conns` of a tree living in the network namespace of `pid`
    /// (cryo's own, usually): their packets, both ways, are dropped unless marked. Called
    /// once, before the first of them goes into repair mode; nothing to do when that
    /// namespace is locked whole.
    pub fn lock_connections(&mut self, pid: i32, conns: &[Conn]) -> Result<(), NetLockError> {
        if self.method == Method::Skip || conns.is_empty() {
            return Ok(());
        }
        let ns = open_ns(&format!("/proc/{pid}/ns/net"))?;
        let ino = ino_of(&ns);
        if self.locked.iter().any(|l| l.ino == ino) {
            return Ok(());
        }
        let record = self.record(ino, Some(pid), false);
        let t = self.name.clone();
        let r = match self.method {
            Method::Nftables => in_ns(&ns, || nfnl::lock_conns(&t, conns))
                .and_then(|r| r)
                .map_err(|e| self.failed("lock the connections (nf_tables)", ino, &e)),
            Method::Iptables => {
                let (mut c4, mut c6) = (String::new(), String::new());
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
                let head = format!("*filter\n:{t} - [0:0]\n-I INPUT -j {t}\n-I OUTPUT -j {t}\n");
                self.iptables_restore(
                    &ns,
                    ino,
                    "lock the connections",
                    &format!("{head}{c4}COMMIT\n"),
                    false,
                )
                .and_then(|()| {
                    self.iptables_restore(
                        &ns,
                        ino,
                        "lock the connections",
                        &format!("{head}{c6}COMMIT\n"),
                        true,
                    )
                })
            }
            Method::Skip => Ok(()),
        };
        self.held_or_undone(ns, ino, false, record, r)?;
        tracing::info!(
            table = %self.name,
            ns = ino,
            conns = conns.len(),
            "network locked ({}): the TCP connections",
            self.method.name()
        );
        Ok(())
    }

    /// Keeps a lock just made (with its record), or removes what a failed one made.
    fn held_or_undone(
        &mut self,
        ns: File,
        ino: u64,
        whole: bool,
        record: PathBuf,
        r: Result<(), NetLockError>,
    ) -> Result<(), NetLockError> {
        let l = Locked {
            ns,
            ino,
            whole,
            adopted: false,
            record: Some(record),
        };
        match r {
            Ok(()) => {
                self.locked.push(l);
                Ok(())
            }
            Err(e) => {
                // A half-made lock (iptables: the IPv4 part) goes again.
                if let Err(e2) = remove(self.method, &self.name, &l) {
                    tracing::error!("{e2}");
                }
                Err(e)
            }
        }
    }

    /// Records the sockets about to go into repair mode, so that a later run takes them out
    /// of it if this one is killed. Best effort (a warning if it cannot be written).
    pub fn record_repair(&mut self, socks: &[RepairedSk]) {
        if socks.is_empty() {
            return;
        }
        let path = PathBuf::from(format!("{RECORDS}/{}-repair", std::process::id()));
        let mut starts: Vec<(i32, Option<u64>)> = Vec::new();
        let list: Vec<serde_json::Value> = socks
            .iter()
            .map(|s| {
                // Read once per process.
                let start = match starts.iter().find(|(p, _)| *p == s.pid) {
                    Some((_, t)) => *t,
                    None => {
                        let t = start_time(s.pid);
                        starts.push((s.pid, t));
                        t
                    }
                };
                serde_json::json!([s.pid, start, s.fd, s.ino])
            })
            .collect();
        let rec = serde_json::json!({
            "cryo": std::process::id(),
            "start": start_time(crate::sys::proc::own_pid()),
            "pidns": own_pid_ns(),
            "repair": list,
        });
        write_record(&path, &rec, "the connections in repair mode");
        self.repair_record = Some(path);
    }

    /// The connections left repair mode (or the tree was killed): their record goes.
    pub fn repair_done(&mut self) {
        if let Some(p) = self.repair_record.take() {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Whether a lock of this run's name is in the namespace `ns` already.
    fn exists(&self, ns: &File, ino: u64) -> bool {
        match self.method {
            Method::Nftables => {
                let t = self.name.clone();
                in_ns(ns, || nfnl::has_table(&t))
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(false)
            }
            Method::Iptables => {
                run_in(ns, ino, "iptables", &["-w", "-n", "-L", &self.name], None).is_ok()
            }
            Method::Skip => false,
        }
    }

    /// Removes every lock of this run; the first error is returned after trying them all.
    pub fn unlock_now(&mut self) -> Result<(), NetLockError> {
        let mut first = None;
        for l in std::mem::take(&mut self.locked) {
            match remove(self.method, &self.name, &l) {
                Ok(()) => {
                    tracing::info!(table = %self.name, ns = l.ino, "network unlocked");
                    self.cleared.push(l.ino);
                }
                Err(e) => {
                    tracing::error!("{e}");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Leaves the locks in place for the restore (the tree was killed; the images name the
    /// lock): they are no longer this run's, so their records go.
    pub fn keep(&mut self) {
        for l in std::mem::take(&mut self.locked) {
            tracing::info!(
                table = %self.name,
                ns = l.ino,
                "the network lock stays until the restore"
            );
            if let Some(r) = &l.record {
                let _ = std::fs::remove_file(r);
            }
        }
        self.repair_done();
    }

    /// Removes the lock a dump left for its connections in the network namespace of
    /// `ns_pid` (the restored root): cryo's or CRIU's nftables table of `run_id`, cryo's
    /// iptables chain of that name, or CRIU's iptables lock (its `CRIU` chain of a whole
    /// namespace, or a rule pair per connection, `conns`). A lock that is not there is no
    /// error.
    pub fn lift_dump_lock(
        &mut self,
        method: Method,
        run_id: Option<&str>,
        ns_pid: i32,
        cryo_images: bool,
        conns: &[Conn],
    ) -> Result<(), NetLockError> {
        let ns = open_ns(&format!("/proc/{ns_pid}/ns/net"))?;
        self.lift_dump_lock_in(method, run_id, &ns, cryo_images, conns)
    }

    /// [`NetLock::lift_dump_lock`] in the network namespace `ns` (one a restored connection
    /// lives in).
    pub fn lift_dump_lock_in(
        &mut self,
        method: Method,
        run_id: Option<&str>,
        ns: &File,
        cryo_images: bool,
        conns: &[Conn],
    ) -> Result<(), NetLockError> {
        let ino = ino_of(ns);
        // (CRIU's iptables locks have other names than its run id's.)
        if method == self.method
            && (method == Method::Nftables || cryo_images)
            && run_id.is_some_and(|id| lock_name(id) == self.name)
            && self.cleared.contains(&ino)
        {
            return Ok(()); // removed already by `unlock_now`
        }
        let whole = own_net_ino() != Some(ino);
        match (method, run_id) {
            (Method::Nftables, Some(id)) => {
                let name = lock_name(id);
                in_ns(ns, || nfnl::delete_table(&name))
                    .and_then(|r| r)
                    .map_err(|e| NetLockError::Tool {
                        name: name.clone(),
                        what: "lift the dump's lock (nf_tables)".into(),
                        ns: ino,
                        why: e.to_string(),
                    })?;
            }
            (Method::Iptables, Some(id)) if cryo_images => {
                delete(Method::Iptables, &lock_name(id), ns, ino)?;
            }
            (Method::Iptables, _) if whole => {
                // CRIU's chain of a whole namespace.
                let _ = delete(Method::Iptables, "CRIU", ns, ino);
            }
            (Method::Iptables, _) if !cryo_images => {
                in_ns(ns, || criu_iptables_unlock(conns)).map_err(|source| {
                    NetLockError::Enter {
                        what: format!("{ino}"),
                        source,
                    }
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    fn failed(&self, what: &str, ns: u64, e: &std::io::Error) -> NetLockError {
        NetLockError::Tool {
            name: self.name.clone(),
            what: what.into(),
            ns,
            why: e.to_string(),
        }
    }

    fn iptables_both(
        &self,
        ns: &File,
        ino: u64,
        what: &str,
        conf: &str,
    ) -> Result<(), NetLockError> {
        self.iptables_restore(ns, ino, what, conf, false)
            .and_then(|()| self.iptables_restore(ns, ino, what, conf, true))
    }

    /// `iptables-restore -w --noflush` (or ip6tables-) with `conf` inside `ns`.
    fn iptables_restore(
        &self,
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
            .map_err(|e| e.named(&self.name, what))
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
        write_record(&path, &rec, &format!("the lock {}", self.name));
        path
    }
}

impl Drop for NetLock {
    /// A run that failed: its own locks go; a dump's lock it found in place stays for the
    /// next attempt.
    fn drop(&mut self) {
        self.locked.retain(|l| !l.adopted);
        let _ = self.unlock_now();
        self.repair_done();
    }
}

fn write_record(path: &Path, rec: &serde_json::Value, what: &str) {
    let r = std::fs::create_dir_all(RECORDS).and_then(|()| std::fs::write(path, rec.to_string()));
    if let Err(e) = r {
        tracing::warn!(
            "cannot record {what} in {}: {e}; if cryo is killed, it is not cleaned up by the next run",
            path.display()
        );
    }
}

fn open_ns(path: &str) -> Result<File, NetLockError> {
    File::open(path).map_err(|source| NetLockError::Enter {
        what: path.into(),
        source,
    })
}

fn ino_of(f: &File) -> u64 {
    f.metadata().map(|m| m.ino()).unwrap_or(0)
}

fn own_net_ino() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Runs `f` in the network namespace `ns`: right here when it is cryo's own, else on a cryo
/// thread that entered it.
fn in_ns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if own_net_ino() == Some(ino_of(ns)) {
        return Ok(f());
    }
    crate::kinds::netns::within(ns.as_fd(), f)
}

/// Deletes a lock (the table or chain) and, once gone, its record.
fn remove(method: Method, name: &str, l: &Locked) -> Result<(), NetLockError> {
    delete(method, name, &l.ns, l.ino)?;
    if let Some(r) = &l.record {
        let _ = std::fs::remove_file(r);
    }
    Ok(())
}

/// Deletes the table or chain `name` in `ns`; one that does not exist is no error.
fn delete(method: Method, name: &str, ns: &File, ino: u64) -> Result<(), NetLockError> {
    match method {
        Method::Nftables => in_ns(ns, || nfnl::delete_table(name))
            .and_then(|r| r)
            .map_err(|e| NetLockError::Tool {
                name: name.into(),
                what: "unlock: delete the table (nf_tables)".into(),
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
                        first = r.map(|_| ()).map_err(|f| f.named(name, "unlock"));
                    }
                }
            }
            first
        }
        Method::Skip => Ok(()),
    }
}

/// Deletes the iptables rules CRIU's dump left for each connection (`-I INPUT`/`-I OUTPUT`,
/// `-m mark ! --mark 0xC114 ... -j DROP`) in the calling thread's namespace; a rule that is
/// gone is no error.
fn criu_iptables_unlock(conns: &[Conn]) {
    for c in conns {
        let tool = if c.src.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        for (chain, (s, sp, d, dp)) in [
            ("INPUT", (c.dst, c.dport, c.src, c.sport)),
            ("OUTPUT", (c.src, c.sport, c.dst, c.dport)),
        ] {
            let r = Command::new(tool)
                .args(["-w", "-t", "filter", "-D", chain, "--protocol", "tcp"])
                .args(["-m", "mark", "!", "--mark", &format!("{SOCCR_MARK:#x}")])
                .args(["--source", &s.to_string(), "--sport", &sp.to_string()])
                .args(["--destination", &d.to_string(), "--dport", &dp.to_string()])
                .args(["-j", "DROP"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !r.is_ok_and(|s| s.success()) {
                tracing::warn!(
                    "no CRIU iptables lock rule to remove for {s}:{sp} -> {d}:{dp} ({chain})"
                );
            }
        }
    }
}

/// A tool's failure before it is named by what cryo was doing.
struct ToolFailure {
    tool: &'static str,
    ns: u64,
    missing: bool,
    why: String,
}

impl ToolFailure {
    fn named(self, name: &str, what: &str) -> NetLockError {
        if self.missing {
            NetLockError::NoTool { tool: self.tool }
        } else {
            NetLockError::Tool {
                name: name.into(),
                what: format!("{what} ({})", self.tool),
                ns: self.ns,
                why: self.why,
            }
        }
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
    let r = in_ns(ns, || {
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

fn as_i32(v: &serde_json::Value) -> Option<i32> {
    v.as_i64().and_then(|p| i32::try_from(p).ok())
}

/// Removes the locks recorded by cryo processes that are gone, and takes the connections
/// they left in repair mode out of it, saying so. A record made by a cryo in another PID
/// namespace (a test suite running cryo in a container) is left alone: its PID cannot be
/// checked from here.
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
        let cryo = as_i32(&rec["cryo"]).unwrap_or(0);
        let start = rec["start"].as_u64();
        if cryo <= 0 || (start.is_some() && start_time(cryo) == start) {
            continue; // still running
        }
        if let Some(list) = rec["repair"].as_array() {
            repair_off(cryo, list);
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let method = match rec["method"].as_str() {
            Some("iptables") => Method::Iptables,
            _ => Method::Nftables,
        };
        let name = rec["name"].as_str().unwrap_or_default().to_string();
        let ino = rec["ino"].as_u64().unwrap_or(0);
        if !name.starts_with("CRIU-") && !name.starts_with("cryo-") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let what = match method {
            Method::Iptables => format!("iptables chain {name}"),
            _ => format!("nftables table inet {name}"),
        };
        match find_netns(ino, as_i32(&rec["pid"])) {
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

/// Takes the sockets of `list` (`[pid, start time, fd, inode]`) that a dead cryo left in
/// repair mode out of it, if they are still the same sockets of the same processes.
fn repair_off(cryo: i32, list: &[serde_json::Value]) {
    let mut fixed = 0;
    for s in list {
        let (Some(pid), start, Some(fd), Some(ino)) =
            (as_i32(&s[0]), s[1].as_u64(), as_i32(&s[2]), s[3].as_u64())
        else {
            continue;
        };
        if start.is_none() || start_time(pid) != start {
            continue;
        }
        let Ok(pidfd) = crate::sys::fd::pidfd_open(pid) else {
            continue;
        };
        let Ok(sk) = crate::sys::fd::pidfd_getfd(pidfd.as_fd(), fd) else {
            continue;
        };
        if std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&sk)
        ))
        .map(|m| m.ino())
        .ok()
            != Some(ino)
        {
            continue;
        }
        let on = crate::sys::net::getsockopt_int(sk.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR);
        if on.is_ok_and(|v| v != 0) {
            match crate::sys::inet::set_repair(sk.as_fd(), crate::sys::inet::Repair::Off) {
                Ok(()) => fixed += 1,
                Err(e) => tracing::warn!(
                    "cannot take fd {fd} of process {pid} out of TCP repair mode (left by cryo process {cryo}, which is gone): {e}"
                ),
            }
        }
    }
    if fixed > 0 {
        tracing::warn!(
            "took {fixed} connection(s) that cryo process {cryo}, which is gone, left in TCP repair mode out of it"
        );
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
    for dir in ["/run/netns", "/var/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(f) = try_open(&e.path()) {
                return Some(f);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let p = e.path().join("ns/net");
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if !seen.insert(m.ino()) {
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

/// Whether the calling thread's network namespace has any nftables table (the namespace
/// dump skips `nft list ruleset` when it has none). On an error it answers yes, so the
/// ruleset is asked for anyway.
pub fn nft_has_tables() -> bool {
    nfnl::has_tables().unwrap_or(true)
}

/// `cryo check`: an nf_tables table can be made and deleted over netlink.
pub fn probe_nftables() -> Result<String, String> {
    let t = format!("cryo-check-{}", std::process::id());
    nfnl::transaction(vec![(
        nfnl::new_table(&t),
        netlink_packet_core::NLM_F_CREATE,
    )])
    .and_then(|()| nfnl::delete_table(&t))
    .map_err(|e| format!("nf_tables: {e}"))?;
    Ok("nf_tables tables made and removed over netlink".into())
}

/// nf_tables over netlink (netlink-packet-netfilter): each lock made and deleted in one
/// transaction, in the calling thread's network namespace.
mod nfnl {
    use std::net::IpAddr;

    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
        NLM_F_REQUEST,
    };
    use netlink_packet_netfilter::nftables::{
        ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
        InetHookNumber, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register, RuleAttribute,
        RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
    };
    use netlink_packet_netfilter::none::ControlMessage;
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    use netlink_sys::{Socket, SocketAddr};

    use super::Conn;

    const NETLINK_NETFILTER: isize = 12;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NF_DROP: u32 = 0;
    const NF_ACCEPT: u32 = 1;
    /// `NFT_PAYLOAD_NETWORK_HEADER`, `NFT_PAYLOAD_TRANSPORT_HEADER`.
    const NETWORK: u32 = 1;
    const TRANSPORT: u32 = 2;

    fn socket() -> std::io::Result<Socket> {
        let mut sk = Socket::new(NETLINK_NETFILTER)?;
        sk.bind_auto()?;
        sk.connect(&SocketAddr::new(0, 0))?;
        Ok(sk)
    }

    fn serialize(mut n: NetlinkMessage<NetfilterMessage>, flags: u16, seq: u32) -> Vec<u8> {
        n.header.flags = NLM_F_REQUEST | flags;
        n.header.sequence_number = seq;
        n.finalize();
        let mut b = vec![0u8; n.buffer_len()];
        n.serialize(&mut b);
        b
    }

    fn msg(m: NfTablesMessage, flags: u16, seq: u32) -> Vec<u8> {
        serialize(
            NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
                m,
            )),
            flags,
            seq,
        )
    }

    fn control(c: ControlMessage, seq: u32) -> Vec<u8> {
        serialize(
            NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                c,
            )),
            0,
            seq,
        )
    }

    /// Sends `msgs` as one transaction and waits for every acknowledgement; the first
    /// error the kernel reports fails it (and nothing of it is applied).
    pub fn transaction(msgs: Vec<(NfTablesMessage, u16)>) -> std::io::Result<()> {
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
            let got = recv(&sk)?;
            if got.is_empty() {
                return Err(std::io::Error::other("nf_tables: no answer"));
            }
            for m in got {
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

    /// A comparison of register 1 with `value`.
    fn cmp_eq(value: Vec<u8>) -> Expressions {
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(value)),
        ])
    }

    fn meta_eq(key: MetaKey, value: Vec<u8>) -> [Expressions; 2] {
        [
            Expressions::Meta(vec![
                Meta::Key(key),
                Meta::DestinationRegister(Register::Reg1),
            ]),
            cmp_eq(value),
        ]
    }

    fn payload_eq(base: u32, offset: u32, value: Vec<u8>) -> [Expressions; 2] {
        [
            Expressions::Payload(vec![
                Payload::DestinationRegister(Register::Reg1),
                Payload::Base(base),
                Payload::Offset(offset),
                Payload::Len(crate::num::len32(value.len())),
            ]),
            cmp_eq(value),
        ]
    }

    /// A rule of `table`/`chain`: when every test holds, `verdict`.
    fn rule(table: &str, chain: &str, tests: Vec<Expressions>, verdict: u32) -> NfTablesMessage {
        let mut exprs: Vec<_> = tests.into_iter().map(Into::into).collect();
        exprs.push(
            Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Verdict),
                Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                    Verdict::Other(verdict),
                )])),
            ])
            .into(),
        );
        NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(table.into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(exprs),
            ],
        })
    }

    /// The tests matching TCP packets from `src` port `sport` to `dst` port `dport`.
    fn tcp_tuple(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<Expressions> {
        let (proto, s_off, d_off, s, d) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                (2u8, 12, 16, s.octets().to_vec(), d.octets().to_vec())
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(v) => v.octets().to_vec(),
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets().to_vec(),
                };
                (10u8, 8, 24, v6(s), v6(d))
            }
        };
        let mut t = Vec::with_capacity(12);
        t.extend(meta_eq(MetaKey::Nfproto, vec![proto]));
        t.extend(meta_eq(MetaKey::L4Proto, vec![6])); // IPPROTO_TCP
        t.extend(payload_eq(NETWORK, s_off, s));
        t.extend(payload_eq(NETWORK, d_off, d));
        t.extend(payload_eq(TRANSPORT, 0, sport.to_be_bytes().to_vec()));
        t.extend(payload_eq(TRANSPORT, 2, dport.to_be_bytes().to_vec()));
        t
    }

    pub fn new_table(table: &str) -> NfTablesMessage {
        NfTablesMessage::NewTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.into())],
        })
    }

    fn base_chain(table: &str, name: &str, hook: InetHookNumber, policy: u32) -> NfTablesMessage {
        NfTablesMessage::NewChain(ChainMessage {
            attributes: vec![
                ChainAttribute::Table(table.into()),
                ChainAttribute::Name(name.into()),
                ChainAttribute::Hook(vec![
                    Hook::Number(hook.into()),
                    Hook::Priority((-300i32).cast_unsigned()),
                ]),
                ChainAttribute::Policy(policy),
                ChainAttribute::Type("filter".into()),
            ],
        })
    }

    /// Table `inet NAME` with chains `input` and `output` of `policy`, each starting with
    /// `meta mark 0xc114 accept`, then `more(chain)`.
    fn lock(
        table: &str,
        policy: u32,
        more: impl Fn(InetHookNumber) -> Vec<NfTablesMessage>,
    ) -> std::io::Result<()> {
        let mut msgs = vec![(new_table(table), NLM_F_CREATE)];
        for (chain, hook) in [
            ("input", InetHookNumber::LocalIn),
            ("output", InetHookNumber::LocalOut),
        ] {
            msgs.push((base_chain(table, chain, hook, policy), NLM_F_CREATE));
            let mark = meta_eq(MetaKey::Mark, super::SOCCR_MARK.to_ne_bytes().to_vec());
            msgs.push((
                rule(table, chain, mark.into(), NF_ACCEPT),
                NLM_F_CREATE | NLM_F_APPEND,
            ));
            for r in more(hook) {
                msgs.push((r, NLM_F_CREATE | NLM_F_APPEND));
            }
        }
        transaction(msgs)
    }

    /// The whole-namespace lock: policy drop.
    pub fn lock_whole(table: &str) -> std::io::Result<()> {
        lock(table, NF_DROP, |_| Vec::new())
    }

    /// The connection lock: policy accept, a drop rule per direction of each connection (in:
    /// from the peer to the tree; out: from the tree to the peer).
    pub fn lock_conns(table: &str, conns: &[Conn]) -> std::io::Result<()> {
        lock(table, NF_ACCEPT, |hook| {
            let chain = if hook == InetHookNumber::LocalIn {
                "input"
            } else {
                "output"
            };
            conns
                .iter()
                .map(|c| {
                    let t = if hook == InetHookNumber::LocalIn {
                        tcp_tuple(c.dst, c.dport, c.src, c.sport)
                    } else {
                        tcp_tuple(c.src, c.sport, c.dst, c.dport)
                    };
                    rule(table, chain, t, NF_DROP)
                })
                .collect()
        })
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

    /// Whether table `inet NAME` exists in the calling thread's network namespace.
    pub fn has_table(table: &str) -> std::io::Result<bool> {
        let sk = socket()?;
        let b = serialize(
            NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
                NfTablesMessage::GetTable(TableMessage {
                    attributes: vec![TableAttribute::Name(table.into())],
                }),
            )),
            NLM_F_ACK,
            1,
        );
        sk.send(&b, 0)?;
        loop {
            let got = recv(&sk)?;
            if got.is_empty() {
                return Ok(false);
            }
            for m in got {
                match m.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(_) if e.to_io().raw_os_error() == Some(libc::ENOENT) => {
                            return Ok(false)
                        }
                        Some(_) => return Err(e.to_io()),
                        None => return Ok(true),
                    },
                    NetlinkPayload::InnerMessage(_) => return Ok(true),
                    _ => {}
                }
            }
        }
    }

    /// Whether the calling thread's network namespace has any nftables table.
    pub fn has_tables() -> std::io::Result<bool> {
        let sk = socket()?;
        let b = serialize(
            NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
                NfTablesMessage::GetTable(TableMessage { attributes: vec![] }),
            )),
            NLM_F_DUMP,
            1,
        );
        sk.send(&b, 0)?;
        let mut any = false;
        loop {
            let got = recv(&sk)?;
            if got.is_empty() {
                return Ok(any);
            }
            for m in got {
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
        for m in [Method::Nftables, Method::Iptables, Method::Skip] {
            assert_eq!(Method::from_inventory(Some(m.to_inventory())), m);
        }
        assert_eq!(Method::from_inventory(None), Method::Iptables);
    }

    #[test]
    fn lock_names_are_criu_s() {
        let id = "0b4a2f33-9d0c-4d6b-8a9e-1f2e3d4c5b6a";
        assert_eq!(lock_name(id), "CRIU-0b4a2f33-9d0c-4d6b-8a");
        assert_eq!(new_run_id().len(), 36);
    }

    /// Both kinds of lock in a network namespace of the test thread's own (root and nft
    /// needed; skipped without): the rules are there while held, a record names each lock,
    /// and nothing is left once unlocked.
    #[test]
    fn locks_are_made_and_removed() {
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
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            for method in [Method::Nftables, Method::Iptables] {
                if method == Method::Iptables
                    && !Command::new("iptables")
                        .arg("-V")
                        .output()
                        .is_ok_and(|o| o.status.success())
                {
                    continue;
                }
                let mut l = NetLock::named(method, new_run_id());
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
                l.lock_connections(tid, &[c4, c6]).unwrap();
                let name = l.name().to_string();
                let shown = if method == Method::Nftables {
                    ruleset()
                } else {
                    let o = Command::new("iptables-save").output().unwrap();
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
                let record = l.locked[0].record.clone().unwrap();
                assert!(record.exists());
                l.unlock_now().unwrap();
                assert!(!record.exists());
                assert!(!ruleset().contains(&name), "{}", ruleset());

                let own = File::open("/proc/thread-self/ns/net").unwrap();
                l.lock_netns(own.as_fd(), None).unwrap();
                if method == Method::Nftables {
                    assert!(ruleset().contains(&name));
                }
                assert!(l.holds_whole(ino_of(&own)));
                // A restore under the dump's name finds the lock: a failed one leaves it, a
                // successful one removes it.
                l.keep();
                let mut r = NetLock::named(method, l.run_id().to_string());
                r.lock_netns(own.as_fd(), None).unwrap();
                drop(r);
                if method == Method::Nftables {
                    assert!(
                        ruleset().contains(&name),
                        "a failed restore removed the dump's lock"
                    );
                }
                let mut r = NetLock::named(method, l.run_id().to_string());
                r.lock_netns(own.as_fd(), None).unwrap();
                r.unlock_now().unwrap();
                assert!(!ruleset().contains(&name), "{}", ruleset());
                drop(l);
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
