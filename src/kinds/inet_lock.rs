//! The lock of a tree's TCP connections, from the moment they go into repair mode at dump
//! until the restored copies leave it: their packets are dropped, never answered, so no
//! peer sees a reset while the tree is away, and packets cryo forges itself (marked
//! [`SOCCR_MARK`](super::tcp_repair::SOCCR_MARK)) pass.
//!
//! It is an nftables table `inet CRIU-<21 characters of the dump's run id>`, as CRIU names
//! it (`inventory.dump_criu_run_id`), so that CRIU's restore lifts a lock of cryo's dump and
//! cryo's restore one of CRIU's: a tree with a network namespace of its own is locked whole
//! (input and output chains with policy drop, at the raw priority, ahead of the tree's own
//! rules); a tree in cryo's namespace only for its connections (one drop rule per direction
//! of each). The table is made and deleted over netlink ([`crate::sys::nft`]) in one
//! transaction each, from a cryo thread that entered the namespace.
//!
//! The lock outlives the dump on purpose once the tree is killed ([`ConnLock::keep`]); on
//! any other path it goes when dropped. A restore removes it by name ([`remove`]), and only
//! once the tree is complete: a failed restore leaves it for the next attempt.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use super::tcp_repair::SOCCR_MARK;
use crate::sys::nft::{self, Batch, Hook, Match, Meta, Verdict};

/// One TCP connection as the tree sees it: its own address and port, and its peer's (both
/// of one family; IPv4-mapped addresses as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// Why locking or unlocking failed.
#[derive(Debug, thiserror::Error)]
#[error("network lock {table}: {what} in network namespace {ns}")]
pub struct LockError {
    pub table: String,
    pub what: &'static str,
    pub ns: u64,
    #[source]
    pub source: std::io::Error,
}

impl LockError {
    pub fn hint(&self) -> String {
        "the kernel needs nf_tables (CONFIG_NF_TABLES, with the inet family) and cryo CAP_NET_ADMIN in that namespace".into()
    }
}

/// Runs `f` on a cryo thread that entered the network namespace `ns`.
pub fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace worker panicked")))
    })
}

/// The rule that lets cryo's own packets through.
fn mark_accept() -> Vec<Match> {
    vec![Match::Meta(Meta::Mark, SOCCR_MARK.to_ne_bytes().to_vec())]
}

/// A lock this run holds.
pub struct ConnLock {
    table: String,
    ns: File,
    ino: u64,
    held: bool,
}

impl ConnLock {
    fn commit(table: &str, ns: &File, what: &'static str, b: Batch) -> Result<(), LockError> {
        let ino = ns.metadata().map(|m| m.ino()).unwrap_or(0);
        in_netns(ns, move || b.commit())
            .and_then(|r| r)
            .map_err(|source| LockError {
                table: table.to_string(),
                what,
                ns: ino,
                source,
            })
    }

    /// Locks the whole network namespace `ns`: everything but marked packets is dropped.
    pub fn netns(table: &str, ns: File) -> Result<ConnLock, LockError> {
        let mut b = Batch::new();
        b.add_table(table);
        for (chain, hook) in [("input", Hook::Input), ("output", Hook::Output)] {
            b.add_chain(table, chain, hook, -300, Verdict::Drop)
                .add_rule(table, chain, &mark_accept(), Verdict::Accept);
        }
        ConnLock::commit(table, &ns, "lock the namespace", b)?;
        tracing::info!("network namespace locked (nftables table inet {table})");
        Ok(ConnLock::held(table, ns))
    }

    /// Locks the connections `conns` in the network namespace `ns`: their packets, both
    /// ways, are dropped unless marked.
    pub fn conns(table: &str, ns: File, conns: &[Conn]) -> Result<ConnLock, LockError> {
        let mut b = Batch::new();
        b.add_table(table);
        for (chain, hook) in [("input", Hook::Input), ("output", Hook::Output)] {
            b.add_chain(table, chain, hook, -300, Verdict::Accept)
                .add_rule(table, chain, &mark_accept(), Verdict::Accept);
            for c in conns {
                // In: from the peer to the tree; out: from the tree to the peer.
                let t = match hook {
                    Hook::Input => nft::tcp_tuple(c.dst, c.dport, c.src, c.sport),
                    Hook::Output => nft::tcp_tuple(c.src, c.sport, c.dst, c.dport),
                };
                b.add_rule(table, chain, &t, Verdict::Drop);
            }
        }
        ConnLock::commit(table, &ns, "lock the connections", b)?;
        tracing::info!(
            "{} TCP connection(s) locked (nftables table inet {table})",
            conns.len()
        );
        Ok(ConnLock::held(table, ns))
    }

    fn held(table: &str, ns: File) -> ConnLock {
        let ino = ns.metadata().map(|m| m.ino()).unwrap_or(0);
        ConnLock {
            table: table.to_string(),
            ns,
            ino,
            held: true,
        }
    }

    /// Removes the lock now.
    pub fn unlock(&mut self) -> Result<(), LockError> {
        if !std::mem::take(&mut self.held) {
            return Ok(());
        }
        remove(&self.table, &self.ns)?;
        tracing::info!(
            "network lock {} removed (namespace {})",
            self.table,
            self.ino
        );
        Ok(())
    }

    /// Leaves the lock in place for the restore (the tree was killed).
    pub fn keep(&mut self) {
        self.held = false;
    }
}

impl Drop for ConnLock {
    fn drop(&mut self) {
        if let Err(e) = self.unlock() {
            tracing::error!("{e}");
        }
    }
}

/// Deletes table `inet TABLE` in the namespace `ns`; a table that is not there is no error.
pub fn remove(table: &str, ns: &File) -> Result<(), LockError> {
    let mut b = Batch::new();
    b.del_table(table);
    match ConnLock::commit(table, ns, "unlock", b) {
        Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}
