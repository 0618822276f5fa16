//! nf_tables over netlink (`NETLINK_NETFILTER`): the few messages the network lock needs,
//! sent as one transaction (a batch) in the network namespace of the calling thread. A
//! table of family `inet` with base chains, rules made of `meta`/`payload` comparisons and a
//! verdict, and the table's deletion. This is what `nft -f` sends for the same ruleset, in
//! a few hundred microseconds instead of a program run (several milliseconds to tens on a
//! busy machine), which matters because the lock lies on the critical path of a migration.

use std::io;
use std::os::fd::AsFd;

/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS: u16 = 10;
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const NEWRULE: u16 = 6;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NETLINK_NETFILTER: i32 = 12;

/// Netfilter hooks (`NF_INET_*`).
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Input = 1,
    Output = 3,
}

/// Verdicts.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// `NFT_META_*` keys.
#[derive(Debug, Clone, Copy)]
pub enum Meta {
    Mark = 3,
    NfProto = 15,
    L4Proto = 16,
}

/// `NFT_PAYLOAD_*` bases.
#[derive(Debug, Clone, Copy)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// One test of a rule: a packet field compared for equality with `value`.
#[derive(Debug, Clone)]
pub enum Match {
    Meta(Meta, Vec<u8>),
    Payload(Base, u32, Vec<u8>),
}

/// A netlink attribute writer.
struct Attrs(Vec<u8>);

impl Attrs {
    fn new() -> Attrs {
        Attrs(Vec::new())
    }
    fn put(&mut self, ty: u16, v: &[u8]) -> &mut Self {
        let len = 4 + v.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(v);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }
    fn nest(&mut self, ty: u16, inner: Attrs) -> &mut Self {
        self.put(ty | NLA_F_NESTED, &inner.0)
    }
}

/// One expression of a rule (`NFTA_LIST_ELEM` holding name and data).
fn expr(name: &str, data: Attrs) -> Attrs {
    let mut e = Attrs::new();
    e.str(1, name).nest(2, data);
    e
}

/// Register 1 (a 16-byte register of the old numbering, which every kernel takes).
const REG1: u32 = 1;

fn cmp_eq(value: &[u8]) -> Attrs {
    let mut d = Attrs::new();
    let mut v = Attrs::new();
    v.put(1, value); // NFTA_DATA_VALUE
    d.be32(1, REG1).be32(2, 0).nest(3, v); // SREG, OP = EQ, DATA
    expr("cmp", d)
}

/// A transaction of nf_tables messages, all applied or none.
pub struct Batch {
    msgs: Vec<u8>,
    seq: u32,
    acks: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        let mut b = Batch {
            msgs: Vec::new(),
            seq: 1,
            acks: 0,
        };
        b.msg(BATCH_BEGIN, NLM_F_REQUEST, 0, &[], false);
        b
    }

    fn msg(&mut self, ty: u16, flags: u16, family: u8, attrs: &[u8], ack: bool) {
        let len = 16 + 4 + attrs.len();
        let ty = if ty == BATCH_BEGIN || ty == BATCH_END {
            ty
        } else {
            SUBSYS << 8 | ty
        };
        let flags = if ack { flags | NLM_F_ACK } else { flags };
        self.msgs.extend_from_slice(&(len as u32).to_ne_bytes());
        self.msgs.extend_from_slice(&ty.to_ne_bytes());
        self.msgs.extend_from_slice(&flags.to_ne_bytes());
        self.msgs.extend_from_slice(&self.seq.to_ne_bytes());
        self.msgs.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, res_id (the subsystem for batch messages), big endian.
        self.msgs.push(family);
        self.msgs.push(0);
        let res = if family == 0 { SUBSYS } else { 0 };
        self.msgs.extend_from_slice(&res.to_be_bytes());
        self.msgs.extend_from_slice(attrs);
        self.seq += 1;
        if ack {
            self.acks += 1;
        }
    }

    /// Adds table `inet NAME` (no error if it exists).
    pub fn add_table(&mut self, name: &str) -> &mut Self {
        let mut a = Attrs::new();
        a.str(1, name);
        self.msg(
            NEWTABLE,
            NLM_F_REQUEST | NLM_F_CREATE,
            NFPROTO_INET,
            &a.0,
            true,
        );
        self
    }

    /// Deletes table `inet NAME` and everything in it.
    pub fn del_table(&mut self, name: &str) -> &mut Self {
        let mut a = Attrs::new();
        a.str(1, name);
        self.msg(DELTABLE, NLM_F_REQUEST, NFPROTO_INET, &a.0, true);
        self
    }

    /// Adds a base chain of type filter on `hook` at `priority`, with `policy`.
    pub fn add_chain(
        &mut self,
        table: &str,
        name: &str,
        hook: Hook,
        priority: i32,
        policy: Verdict,
    ) -> &mut Self {
        let mut h = Attrs::new();
        h.be32(1, hook as u32).be32(2, priority as u32);
        let mut a = Attrs::new();
        a.str(1, table)
            .str(3, name)
            .nest(4, h)
            .be32(5, policy as u32)
            .str(7, "filter");
        self.msg(
            NEWCHAIN,
            NLM_F_REQUEST | NLM_F_CREATE,
            NFPROTO_INET,
            &a.0,
            true,
        );
        self
    }

    /// Appends a rule: when every test of `tests` holds, `verdict`.
    pub fn add_rule(
        &mut self,
        table: &str,
        chain: &str,
        tests: &[Match],
        verdict: Verdict,
    ) -> &mut Self {
        let mut list = Attrs::new();
        for t in tests {
            let load = match t {
                Match::Meta(key, _) => {
                    let mut d = Attrs::new();
                    d.be32(1, REG1).be32(2, *key as u32); // DREG, KEY
                    expr("meta", d)
                }
                Match::Payload(base, off, v) => {
                    let mut d = Attrs::new();
                    d.be32(1, REG1)
                        .be32(2, *base as u32)
                        .be32(3, *off)
                        .be32(4, v.len() as u32);
                    expr("payload", d)
                }
            };
            let value = match t {
                Match::Meta(_, v) | Match::Payload(_, _, v) => v,
            };
            list.nest(1, load);
            list.nest(1, cmp_eq(value));
        }
        let mut code = Attrs::new();
        code.be32(1, verdict as u32); // NFTA_VERDICT_CODE
        let mut data = Attrs::new();
        data.nest(2, code); // NFTA_DATA_VERDICT
        let mut imm = Attrs::new();
        imm.be32(1, 0).nest(2, data); // DREG = verdict register, DATA
        list.nest(1, expr("immediate", imm));
        let mut a = Attrs::new();
        a.str(1, table).str(2, chain).nest(4, list);
        self.msg(
            NEWRULE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
            NFPROTO_INET,
            &a.0,
            true,
        );
        self
    }

    /// Sends the transaction from the calling thread's network namespace and waits for the
    /// kernel's answer to each message; the first error fails it (nothing was applied).
    pub fn commit(mut self) -> io::Result<()> {
        self.msg(BATCH_END, NLM_F_REQUEST, 0, &[], false);
        let sk = super::inet::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER)?;
        let n = super::fd::write(sk.as_fd(), &self.msgs)?;
        if n != self.msgs.len() {
            return Err(io::Error::other("short netlink write"));
        }
        let mut left = self.acks;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = super::fd::read(sk.as_fd(), &mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                if len < 16 || off + len > n {
                    return Err(io::Error::other("malformed netlink answer"));
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let e = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    if e != 0 {
                        return Err(io::Error::from_raw_os_error(-e));
                    }
                    left -= 1;
                }
                off += (len + 3) & !3;
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// The tests matching TCP packets from `src` port `sport` to `dst` port `dport` (both
/// addresses of one family).
pub fn tcp_tuple(
    src: std::net::IpAddr,
    sport: u16,
    dst: std::net::IpAddr,
    dport: u16,
) -> Vec<Match> {
    use std::net::IpAddr;
    let (proto, s_off, d_off, s, d) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (2u8, 12, 16, s.octets().to_vec(), d.octets().to_vec()),
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(v) => v.octets().to_vec(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets().to_vec(),
            };
            (10u8, 8, 24, v6(s), v6(d))
        }
    };
    vec![
        Match::Meta(Meta::NfProto, vec![proto]),
        Match::Meta(Meta::L4Proto, vec![libc::IPPROTO_TCP as u8]),
        Match::Payload(Base::Network, s_off, s),
        Match::Payload(Base::Network, d_off, d),
        Match::Payload(Base::Transport, 0, sport.to_be_bytes().to_vec()),
        Match::Payload(Base::Transport, 2, dport.to_be_bytes().to_vec()),
    ]
}
