//! The contents of a network namespace the tree owns (issue #10), saved and rebuilt as CRIU
//! does (`criu/net.c`), talking to the kernel over rtnetlink (netlink-packet-route on a
//! blocking netlink-sys socket) from a cryo thread that entered the namespace ([`within`]):
//!
//! - links (`netdev-ID.img`, `net_device_entry`): loopback, veth, bridge and macvlan, with
//!   ifindex, MTU, flags, MAC, master, the veth peer's ifindex and namespace, and each
//!   device's `net.ipv4.conf.DEV.*` / `net.ipv6.conf.DEV.*` sysctls (CRIU's lists, by
//!   position); any other kind is refused by [`precheck`] before the tree is touched;
//! - addresses, routes and rules in iproute2's `ip ... save` format (a 4-byte magic, then the
//!   kernel's dump replies verbatim): `ifaddr-ID.img` (all families), `route-ID.img` /
//!   `route6-ID.img` (every table but `local`, no cached routes), `rule-ID.img` (IPv4, as
//!   `ip rule save`) and cryo's own `rule6-ID.img` (IPv6); `ip route restore < route-ID.img`
//!   accepts them, and so does CRIU;
//! - the namespace's sysctls (`netns-ID.img`: `all`/`default` conf for IPv4 and IPv6,
//!   `net.unix.max_dgram_qlen`, `net.ipv4.ping_group_range`);
//! - the firewall: `nft list ruleset` text in `nftables-ID.img`, and legacy iptables rules
//!   (`iptables-legacy-save`, when any) in `iptables-ID.img` / `ip6tables-ID.img`, as CRIU
//!   built with libnftables saves them.
//!
//! Restore ([`restore`]) runs in the root puppet's new namespace, in CRIU's order: the
//! namespace's sysctls, links (each with its saved ifindex, so the saved addresses and
//! routes point at it; masters after), each device's sysctls, addresses, routes (three
//! passes like `ip route restore`: local, on-link, via a gateway), rules (the defaults
//! flushed first, as CRIU), iptables, nftables. A veth whose peer is in another saved
//! namespace of the tree is made by the second of the two rebuilt, its peer put in the first
//! (with its master, sysctls, addresses and the first one's routes through it there); one
//! whose other namespace is never rebuilt is an error naming it ([`all_links_made`]). A veth's peer outside is made in cryo's
//! own network namespace, named by `--external veth[IN]:OUT[@BRIDGE]` / `--veth-pair
//! IN=OUT[@BRIDGE]` (then added to BRIDGE and set up), or the user's device OUT is moved in
//! as IN by `--external netdev[IN]:OUT`; without one it is refused, naming the options. A
//! macvlan is made on the host link named by `--external macvlan[IN]:HOSTLINK`. A failed
//! restore leaves nothing: everything lives in the puppet's namespace, which dies with it
//! (and a veth's peer with its other end); a device moved in by `--external netdev` is moved
//! back to cryo's namespace first ([`LinkOpts::give_back`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoMacVlan, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage, MacVlanFlags,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::rule::RuleMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::image::{self, pb, ImageDir, ImageError};

/// Why saving or rebuilding a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot enter the network namespace of {what}")]
    Enter {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {ns}: {what}")]
    Netlink {
        ns: u32,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {ns}: link {link}: {what}")]
    Unsupported {
        ns: u32,
        link: String,
        what: String,
        hint: String,
    },
    #[error("network namespace {ns}: {what} ({tool}): {why}")]
    Tool {
        ns: u32,
        what: &'static str,
        tool: &'static str,
        why: String,
    },
    #[error("network namespace {ns}: sysctl {path}: {what}")]
    Sysctl {
        ns: u32,
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {ns}: {name}: {what}")]
    BadImage { ns: u32, name: String, what: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A tun/tap file on one of its devices.
    #[error(transparent)]
    Tun(#[from] super::tun::TunError),
}

impl super::error::Failure for NetnsError {
    fn hint(&self) -> Option<String> {
        match self {
            NetnsError::Unsupported { hint, .. } if !hint.is_empty() => Some(hint.clone()),
            NetnsError::Tool { tool, .. } if *tool == "nft" => Some(
                "the namespace's firewall is saved and restored with nft: install nftables".into(),
            ),
            NetnsError::Tun(e) => e.hint(),
            _ => None,
        }
    }
}

/// Runs `f` in a new cryo thread that entered the network namespace `ns`; sockets made and
/// programs started there belong to that namespace, and `/proc/sys/net` shows its sysctls.
pub fn within<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            crate::sys::ns::setns(ns, crate::sys::ns::NsType::Network)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("network namespace worker panicked")))
    })
}

// ---------------------------------------------------------------------------------------
// rtnetlink

/// A blocking rtnetlink socket of the namespace it was made in.
struct Rtnl {
    sk: Socket,
    seq: u32,
    ns: u32,
}

/// One reply of a dump: the kernel's bytes (saved verbatim) and their decoding.
struct Reply {
    raw: Vec<u8>,
    msg: RouteNetlinkMessage,
}

impl Rtnl {
    fn new(ns: u32) -> Result<Rtnl, NetnsError> {
        let mut sk = Socket::new(NETLINK_ROUTE).map_err(|source| NetnsError::Netlink {
            ns,
            what: "open an rtnetlink socket".into(),
            source,
        })?;
        sk.bind_auto()
            .and_then(|_| sk.connect(&SocketAddr::new(0, 0)))
            .map_err(|source| NetnsError::Netlink {
                ns,
                what: "bind an rtnetlink socket".into(),
                source,
            })?;
        Ok(Rtnl { sk, seq: 0, ns })
    }

    fn err(&self, what: String, source: std::io::Error) -> NetnsError {
        NetnsError::Netlink {
            ns: self.ns,
            what,
            source,
        }
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<u32> {
        self.seq += 1;
        let mut h = NetlinkHeader::default();
        h.flags = flags;
        h.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sk.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Receives one datagram and splits it into messages (raw bytes each).
    fn recv(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let n = self.sk.recv(&mut buf, 0)?;
        if n > buf.len() {
            return Err(std::io::Error::other("netlink reply truncated"));
        }
        let mut out = Vec::new();
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = NetlinkBuffer::new(&buf[off..]).length() as usize;
            if len < 16 || off + len > buf.len() {
                return Err(std::io::Error::other("malformed netlink reply"));
            }
            out.push(buf[off..off + len].to_vec());
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// A dump request; every reply, raw and decoded.
    fn dump(&mut self, what: &str, msg: RouteNetlinkMessage) -> Result<Vec<Reply>, NetnsError> {
        let seq = self
            .send(msg, NLM_F_REQUEST | NLM_F_DUMP)
            .map_err(|e| self.err(format!("ask for {what}"), e))?;
        let mut out = Vec::new();
        loop {
            let parts = self
                .recv()
                .map_err(|e| self.err(format!("read {what}"), e))?;
            for raw in parts {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw).map_err(|e| {
                    self.err(
                        format!("decode {what}"),
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return Err(self.err(format!("dump {what}"), e.to_io()))
                    }
                    NetlinkPayload::InnerMessage(msg) => out.push(Reply { raw, msg }),
                    _ => {}
                }
            }
        }
    }

    /// Waits for the kernel's answer to request `seq`.
    fn ack(&mut self, seq: u32) -> std::io::Result<()> {
        loop {
            for raw in self.recv()? {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                if m.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    /// A request that must succeed (the kernel's ACK awaited).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.ack(seq)
    }

    /// Sends a saved message again (type `ty` if given), as `ip ... restore` does: with
    /// REQUEST|CREATE|ACK added to its flags; an object that exists already is no error.
    fn replay(&mut self, raw: &[u8], ty: Option<u16>, extra: u16) -> std::io::Result<()> {
        let mut m = raw.to_vec();
        self.seq += 1;
        let seq = self.seq;
        {
            let mut b = NetlinkBuffer::new(&mut m[..]);
            if let Some(t) = ty {
                b.set_message_type(t);
            }
            let f = b.flags();
            b.set_flags(f | NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK | extra);
            b.set_sequence_number(seq);
            b.set_port_number(0);
        }
        self.sk.send(&m, 0)?;
        match self.ack(seq) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }
}

// ---------------------------------------------------------------------------------------
// sysctls (CRIU's lists: element i of a saved list is the i-th name)

const CONF4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// CRIU's list, then `addr_gen_mode` (cryo's: after CRIU's 42, which CRIU's restore reads
/// alone), which writing `stable_secret` turns to stable-privacy: a device that had `random`
/// or `eui64` would come back with another link-local address scheme.
const CONF6: [&str; 43] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
    "addr_gen_mode",
];

/// The position of `addr_gen_mode` in [`CONF6`].
const ADDR_GEN_MODE: usize = 42;

const CTL_STR: i32 = 5;
const CTL_32: i32 = 6;

/// Reads one sysctl under /proc/sys (the calling thread's namespace): None if it does not
/// exist (or, for `stable_secret`, is unset).
fn read_sysctl(path: &str, string: bool) -> Option<pb::SysctlEntry> {
    let text = crate::procfs::sysctl(path).ok()?;
    let text = text.trim_end_matches('\n');
    Some(if string {
        pb::SysctlEntry {
            r#type: CTL_STR,
            iarg: None,
            sarg: Some(text.to_string()),
        }
    } else {
        pb::SysctlEntry {
            r#type: CTL_32,
            iarg: Some(text.trim().parse().ok()?),
            sarg: None,
        }
    })
}

/// A device's (or `all`/`default`'s) conf sysctls, positional; missing ones are entries
/// without a value, as CRIU writes them.
fn read_conf(proto: &str, dev: &str) -> Vec<pb::SysctlEntry> {
    let names: &[&str] = if proto == "ipv4" { &CONF4 } else { &CONF6 };
    names
        .iter()
        .map(|n| {
            let string = *n == "stable_secret";
            read_sysctl(&format!("net/{proto}/conf/{dev}/{n}"), string).unwrap_or(pb::SysctlEntry {
                r#type: if string { CTL_STR } else { CTL_32 },
                iarg: None,
                sarg: None,
            })
        })
        .collect()
}

fn sysctl_text(e: &pb::SysctlEntry) -> Option<String> {
    match e.r#type {
        CTL_32 => e.iarg.map(|v| v.to_string()),
        CTL_STR => e.sarg.clone(),
        _ => None,
    }
}

/// Writes the saved values of a conf list that differ from the ones in place;
/// `accept_redirects` last (it depends on `forwarding`), as CRIU.
fn write_conf(
    ns: u32,
    proto: &str,
    dev: &str,
    saved: &[pb::SysctlEntry],
) -> Result<(), NetnsError> {
    let names: &[&str] = if proto == "ipv4" { &CONF4 } else { &CONF6 };
    let mut order: Vec<usize> = (0..saved.len().min(names.len())).collect();
    order.sort_by_key(|&i| names[i] == "accept_redirects");
    for i in order {
        let Some(want) = sysctl_text(&saved[i]) else {
            continue;
        };
        // A device's mode is set through rtnetlink ([`set_addr_gen_mode`]).
        if proto == "ipv6" && i == ADDR_GEN_MODE && dev != "all" && dev != "default" {
            continue;
        }
        let path = format!("net/{proto}/conf/{dev}/{}", names[i]);
        let string = names[i] == "stable_secret";
        match read_sysctl(&path, string).and_then(|e| sysctl_text(&e)) {
            Some(now) if now == want => continue,
            Some(_) => {}
            // An unset stable_secret cannot be read (EIO) but is there to be set.
            None if string && std::path::Path::new(&format!("/proc/sys/{path}")).exists() => {}
            None => {
                if !string {
                    tracing::warn!(ns, sysctl = %path, "sysctl does not exist here; not restored");
                }
                continue;
            }
        }
        write_sysctl(ns, &path, &want)?;
    }
    Ok(())
}

/// A device's saved IPv6 address generation mode (the `addr_gen_mode` entry of its conf6),
/// set through rtnetlink (`IFLA_INET6_ADDR_GEN_MODE`) once its `stable_secret` is back
/// (writing a secret turns the mode to stable-privacy). Not through the sysctl, which makes
/// a new link-local address on a device that is up.
fn set_addr_gen_mode(rt: &mut Rtnl, l: &pb::NetDeviceEntry) -> Result<(), NetnsError> {
    let Some(want) = l.conf6.get(ADDR_GEN_MODE).and_then(|e| e.iarg) else {
        return Ok(());
    };
    let path = format!("net/ipv6/conf/{}/addr_gen_mode", l.name);
    match read_sysctl(&path, false).and_then(|e| e.iarg) {
        Some(now) if now != want => {}
        _ => return Ok(()), // as saved, or no IPv6 here
    }
    let mode = u8::try_from(want).map_err(|_| {
        rt.err(
            format!("link {}: saved IPv6 address generation mode {want}", l.name),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    tracing::debug!(link = %l.name, mode, "IPv6 address generation mode set");
    let mut m = LinkMessage::default();
    m.header.index = l.ifindex;
    m.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::from(mode))],
        )]));
    rt.request(RouteNetlinkMessage::SetLink(m), 0).map_err(|e| {
        rt.err(
            format!(
                "link {}: set its IPv6 address generation mode ({mode})",
                l.name
            ),
            e,
        )
    })
}

fn write_sysctl(ns: u32, path: &str, value: &str) -> Result<(), NetnsError> {
    tracing::debug!(sysctl = %path, value = %value, "sysctl set");
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/sys/{path}"))
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| NetnsError::Sysctl {
            ns,
            path: path.to_string(),
            what: "cannot set it",
            source,
        })
}

// ---------------------------------------------------------------------------------------
// dump

/// iproute2's save-file magics.
const ADDR_MAGIC: u32 = 0x4736_1222;
const ROUTE_MAGIC: u32 = 0x4531_1224;
const RULE_MAGIC: u32 = 0x7170_6986;

const RT_TABLE_LOCAL: u32 = 255;
const RTM_F_CLONED: u32 = 0x200;

/// Everything saved of one network namespace.
#[derive(Debug, Default)]
pub struct NetnsDump {
    pub id: u32,
    pub links: Vec<pb::NetDeviceEntry>,
    pub entry: pb::NetnsEntry,
    pub ifaddr: Vec<u8>,
    pub route: Vec<u8>,
    pub route6: Vec<u8>,
    pub rule: Vec<u8>,
    pub rule6: Vec<u8>,
    pub nftables: Vec<u8>,
    pub iptables: Vec<u8>,
    pub ip6tables: Vec<u8>,
}

/// The link kinds cryo recreates, by name.
fn link_kind(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(v) => v.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

fn link_name(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("#{}", l.header.index))
}

/// Which `nd_type` a link is saved as, or why it cannot be.
fn nd_type(l: &LinkMessage) -> Result<pb::NdType, String> {
    if l.header.link_layer_type == LinkLayerType::Loopback {
        return Ok(pb::NdType::Loopback);
    }
    match link_kind(l).as_deref() {
        Some("veth") => Ok(pb::NdType::Veth),
        Some("bridge") => Ok(pb::NdType::Bridge),
        Some("macvlan") => Ok(pb::NdType::Macvlan),
        Some("tun") => Ok(pb::NdType::Tun),
        Some(k) => Err(format!("its kind '{k}' cannot be recreated by cryo (supported: loopback, veth, bridge, macvlan, tun/tap)")),
        None => Err("it has no link kind (a physical device?), which cryo cannot recreate".into()),
    }
}

fn list_links(rt: &mut Rtnl) -> Result<Vec<(Vec<u8>, LinkMessage)>, NetnsError> {
    let mut req = LinkMessage::default();
    req.header.interface_family = AddressFamily::Packet;
    Ok(rt
        .dump("links", RouteNetlinkMessage::GetLink(req))?
        .into_iter()
        .filter_map(|r| match r.msg {
            RouteNetlinkMessage::NewLink(l) => Some((r.raw, l)),
            _ => None,
        })
        .collect())
}

fn open_ns(pid: i32) -> Result<File, NetnsError> {
    let p = format!("/proc/{pid}/ns/net");
    File::open(&p).map_err(|source| NetnsError::Enter { what: p, source })
}

fn ns_of(pid: i32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| super::misc::ns_id(m.ino()))
        .unwrap_or(0)
}

/// The network namespace `ns` (inode `ino`) of a tree a dump has just killed: when nothing
/// but cryo holds it any more, it dies as cryo lets it go, and its links other than loopback
/// are taken down first. The kernel releases a dying namespace's nftables hooks (the network
/// lock) before it unregisters its devices; a peer's packet arriving in between would meet
/// addresses with no socket and be answered with a reset, killing a connection saved with
/// `--tcp-established`. A namespace that lives on (a process in it, or a bind mount of it in
/// cryo's mount namespace, as `ip netns add` makes) keeps its links as they were: it stays
/// locked until the restore. Holders cryo cannot see (an fd on it, a bind mount in another
/// mount namespace) keep it alive with its links down, locked all the same. Returns how many links were taken down.
pub fn links_down_before_death(ns: BorrowedFd<'_>, ino: u64) -> Result<usize, NetnsError> {
    if still_held(ino) {
        return Ok(0);
    }
    let id = super::misc::ns_id(ino);
    within(ns, || -> Result<usize, NetnsError> {
        let mut rt = Rtnl::new(id)?;
        let mut n = 0;
        for (_, l) in list_links(&mut rt)? {
            if l.header.link_layer_type == LinkLayerType::Loopback
                || !l.header.flags.contains(LinkFlags::Up)
            {
                continue;
            }
            let mut m = LinkMessage::default();
            m.header.index = l.header.index;
            m.header.change_mask = LinkFlags::Up;
            rt.request(RouteNetlinkMessage::SetLink(m), 0)
                .map_err(|e| rt.err(format!("take {} down", link_name(&l)), e))?;
            n += 1;
        }
        Ok(n)
    })
    .map_err(|source| NetnsError::Enter {
        what: format!("net:[{ino}]"),
        source,
    })?
}

/// Whether a process, or a bind mount in cryo's mount namespace, holds the network namespace
/// with inode `ino`.
fn still_held(ino: u64) -> bool {
    let name = format!("net:[{ino}]");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(3) == Some(name.as_str()))
        })
        .unwrap_or(true);
    if mounted {
        return true;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| l.as_os_str() == name.as_str())
    })
}

/// Refuses, before the tree is touched, a network namespace of `pid` (not cryo's) holding a
/// link cryo cannot recreate, naming it.
pub fn precheck(pid: i32) -> Result<(), NetnsError> {
    let ns = open_ns(pid)?;
    let id = ns_of(pid);
    let links = within(ns.as_fd(), || -> Result<_, NetnsError> {
        let mut rt = Rtnl::new(id)?;
        list_links(&mut rt)
    })
    .map_err(|source| NetnsError::Enter {
        what: format!("process {pid}"),
        source,
    })??;
    for (_, l) in &links {
        if let Err(what) = nd_type(l) {
            return Err(NetnsError::Unsupported {
                ns: id,
                link: link_name(l),
                what,
                hint: "delete the link before the dump, or do not save the namespace's contents: --external net[INODE]:KEY (joined again at restore) or --empty-ns net".into(),
            });
        }
    }
    Ok(())
}

/// Saves the contents of `pid`'s network namespace (id `id` in the images). cryo's own
/// namespace id (`host`) marks veth peers that live there; the other network namespaces of
/// `tree` (the dumped processes) are saved too, so a veth whose peer is in one of them names
/// it (`peer_nsid`, as CRIU).
pub fn dump(pid: i32, id: u32, host: u32, tree: &[i32]) -> Result<NetnsDump, NetnsError> {
    let ns = open_ns(pid)?;
    let own = File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Enter {
        what: "cryo".into(),
        source,
    })?;
    let mine = ns.metadata().map(|m| m.ino()).ok();
    let cryo = own.metadata().map(|m| m.ino()).ok();
    let mut others: Vec<(u32, File)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &p in tree {
        let Ok(f) = File::open(format!("/proc/{p}/ns/net")) else {
            continue;
        };
        let Ok(ino) = f.metadata().map(|m| m.ino()) else {
            continue;
        };
        if Some(ino) != mine && Some(ino) != cryo && seen.insert(ino) {
            others.push((super::misc::ns_id(ino), f));
        }
    }
    let t0 = std::time::Instant::now();
    // What the tree's tun/tap files on this namespace's devices tell of them (vnet header
    // size, send buffer), read before the links.
    let queues = match mine {
        Some(ino) => super::tun::queues_of(tree, ino)?,
        None => HashMap::new(),
    };
    let d = within(ns.as_fd(), || {
        dump_inside(id, host, own.as_fd(), &others, &queues)
    })
    .map_err(|source| NetnsError::Enter {
        what: format!("process {pid}"),
        source,
    })??;
    tracing::info!(
        ns = id,
        links = d.links.len(),
        us = crate::num::micros_u64(t0.elapsed()),
        "network namespace saved"
    );
    Ok(d)
}

fn dump_inside(
    id: u32,
    host: u32,
    own: BorrowedFd<'_>,
    others: &[(u32, File)],
    queues: &HashMap<String, super::tun::Queue>,
) -> Result<NetnsDump, NetnsError> {
    let mut rt = Rtnl::new(id)?;
    let mut d = NetnsDump {
        id,
        ..Default::default()
    };
    // Listing the links makes the kernel give the peers' namespaces ids (CRIU does the same
    // before asking); then the id cryo's namespace has here.
    let links = list_links(&mut rt)?;
    let host_nsid = {
        let mut m = NsidMessage::default();
        m.attributes
            .push(NsidAttribute::Fd(crate::num::c_uint(own.as_raw_fd())));
        rt.dump_one_nsid(m)
    };
    // The ids this namespace gives the tree's other namespaces (saved ids by local nsid).
    let tree_nsids: HashMap<i32, u32> = others
        .iter()
        .filter_map(|(saved, f)| {
            let mut m = NsidMessage::default();
            m.attributes
                .push(NsidAttribute::Fd(crate::num::c_uint(f.as_raw_fd())));
            rt.dump_one_nsid(m).filter(|&n| n >= 0).map(|n| (n, *saved))
        })
        .collect();
    // (Not saved as `nsids`: CRIU's restore wants every namespace listed there among the
    // dumped ones, and cryo's own is not.)
    // Tun/tap devices whose queue parameters are read once the addresses and routes are:
    // cryo's attach to an up persistent device with no file gives it a carrier, and the
    // kernel then adds an IPv6 link-local address and its routes, which were not there.
    let mut tun_later: Vec<(usize, String)> = Vec::new();
    for (_, l) in &links {
        let name = link_name(l);
        let ty = nd_type(l).map_err(|what| NetnsError::Unsupported {
            ns: id,
            link: name.clone(),
            what,
            hint: String::new(),
        })?;
        let mut e = pb::NetDeviceEntry {
            r#type: ty as i32,
            ifindex: l.header.index,
            flags: l.header.flags.bits(),
            name: name.clone(),
            ..Default::default()
        };
        let mut peer_ns = None;
        for a in &l.attributes {
            match a {
                LinkAttribute::Mtu(m) => e.mtu = *m,
                LinkAttribute::Address(a) if ty != pb::NdType::Loopback => {
                    e.address = Some(a.clone())
                }
                LinkAttribute::Link(p) => e.peer_ifindex = Some(*p),
                LinkAttribute::LinkNetNsId(n) => peer_ns = Some(*n),
                LinkAttribute::Controller(m) => e.master = Some(*m),
                LinkAttribute::LinkInfo(info) => {
                    for i in info {
                        if let LinkInfo::Data(InfoData::Tun(attrs)) = i {
                            e.tun = Some(tun_entry(attrs));
                        }
                        if let LinkInfo::Data(InfoData::MacVlan(mv)) = i {
                            let mut m = pb::MacvlanLinkEntry::default();
                            for x in mv {
                                match x {
                                    InfoMacVlan::Mode(mode) => m.mode = u32::from(*mode),
                                    InfoMacVlan::Flags(f) => m.flags = Some(u32::from(f.bits())),
                                    _ => {}
                                }
                            }
                            e.macvlan = Some(m);
                        }
                    }
                }
                _ => {}
            }
        }
        if e.tun.is_some() {
            tun_later.push((d.links.len(), name.clone()));
        }
        if ty == pb::NdType::Veth {
            // The peer in this namespace, in cryo's, or in one cryo does not save.
            e.peer_ifindex.get_or_insert(l.header.index);
            match peer_ns {
                None => e.peer_nsid = Some(id),
                Some(n) if Some(n) == host_nsid => e.peer_nsid = Some(host),
                Some(n) if tree_nsids.contains_key(&n) => e.peer_nsid = Some(tree_nsids[&n]),
                Some(_) => tracing::warn!(
                    ns = id,
                    veth = %name,
                    "the peer of the veth is in another network namespace, which is not saved; give --external veth[NAME]:PEER at restore"
                ),
            }
        }
        e.conf4 = read_conf("ipv4", &name);
        e.conf6 = read_conf("ipv6", &name);
        d.links.push(e);
    }
    d.entry.all_conf4 = read_conf("ipv4", "all");
    d.entry.def_conf4 = read_conf("ipv4", "default");
    d.entry.all_conf6 = read_conf("ipv6", "all");
    d.entry.def_conf6 = read_conf("ipv6", "default");
    d.entry.unix_conf = read_sysctl("net/unix/max_dgram_qlen", false)
        .into_iter()
        .collect();
    d.entry.ipv4_sysctl = read_sysctl("net/ipv4/ping_group_range", true)
        .into_iter()
        .collect();

    // Addresses, routes and rules: the kernel's replies, as `ip ... save` writes them.
    d.ifaddr = save_format(
        ADDR_MAGIC,
        rt.dump(
            "addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )?
        .iter()
        .filter(|r| matches!(r.msg, RouteNetlinkMessage::NewAddress(_))),
    );
    for (fam, out) in [
        (AddressFamily::Inet, &mut d.route),
        (AddressFamily::Inet6, &mut d.route6),
    ] {
        let mut req = RouteMessage::default();
        req.header.address_family = fam;
        let all = rt.dump("routes", RouteNetlinkMessage::GetRoute(req))?;
        *out = save_format(
            ROUTE_MAGIC,
            all.iter().filter(|r| match &r.msg {
                RouteNetlinkMessage::NewRoute(m) => {
                    route_table(m) != RT_TABLE_LOCAL && m.header.flags.bits() & RTM_F_CLONED == 0
                }
                _ => false,
            }),
        );
    }
    for (fam, out) in [
        (AddressFamily::Inet, &mut d.rule),
        (AddressFamily::Inet6, &mut d.rule6),
    ] {
        let mut req = RuleMessage::default();
        req.header.family = fam;
        let all = rt.dump("rules", RouteNetlinkMessage::GetRule(req))?;
        *out = save_format(
            RULE_MAGIC,
            all.iter()
                .filter(|r| matches!(r.msg, RouteNetlinkMessage::NewRule(_))),
        );
    }
    for (i, name) in tun_later {
        if let Some(t) = d.links[i].tun.as_mut() {
            tun_queue_params(id, &name, t, queues)?;
        }
    }
    // The firewall.
    // (`nft` is started only when there is a table to save.)
    if crate::netlock::nft_has_tables() {
        d.nftables = run_tool(
            id,
            "save the nftables ruleset",
            "nft",
            &["list", "ruleset"],
            None,
        )?
        .ok_or(NetnsError::Tool {
            ns: id,
            what: "save the nftables ruleset",
            tool: "nft",
            why: "not installed".into(),
        })?;
    }
    for (tool, names, out) in [
        ("iptables-legacy-save", "ip_tables_names", &mut d.iptables),
        (
            "ip6tables-legacy-save",
            "ip6_tables_names",
            &mut d.ip6tables,
        ),
    ] {
        // Legacy tables, if the namespace has any (iptables-nft rules are in the nftables
        // ruleset already, as with CRIU).
        let has = std::fs::read_to_string(format!("/proc/thread-self/net/{names}"))
            .is_ok_and(|t| !t.trim().is_empty());
        if !has {
            continue;
        }
        if let Ok(Some(o)) = run_tool(id, "save the iptables rules", tool, &[], None) {
            if o.windows(2).any(|w| w == b"\n-") || o.windows(2).any(|w| w == b"\n:") {
                *out = o;
            }
        }
    }
    Ok(d)
}

impl Rtnl {
    /// RTM_GETNSID for one namespace: its id here, if it has one.
    fn dump_one_nsid(&mut self, m: NsidMessage) -> Option<i32> {
        let seq = self
            .send(RouteNetlinkMessage::GetNsId(m), NLM_F_REQUEST)
            .ok()?;
        loop {
            for raw in self.recv().ok()? {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&raw).ok()?;
                if m.header.sequence_number != seq {
                    continue;
                }
                return match m.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(n)) => {
                        n.attributes.iter().find_map(|a| match a {
                            NsidAttribute::Id(v) => Some(*v),
                            _ => None,
                        })
                    }
                    _ => None,
                };
            }
        }
    }
}

/// tun/tap flags (`TUNSETIFF`), as CRIU saves them in `tun_link_entry.flags`.
const IFF_TUN: u32 = 0x0001;
const IFF_TAP: u32 = 0x0002;
const IFF_MULTI_QUEUE: u32 = 0x0100;
const IFF_PERSIST: u32 = 0x0800;
const IFF_NO_PI: u32 = 0x1000;
const IFF_VNET_HDR: u32 = 0x4000;

/// A tun/tap link's parameters from its `IFLA_INFO_DATA` (owner, group, type, pi, vnet_hdr,
/// persist, multi_queue); the vnet header size and send buffer are not reported there:
/// [`tun_queue_params`] fills them (the kernel's defaults, 10 and INT_MAX, until then).
fn tun_entry(attrs: &[netlink_packet_route::link::InfoTun]) -> pb::TunLinkEntry {
    use netlink_packet_core::Nla;
    let mut e = pb::TunLinkEntry {
        flags: 0,
        owner: -1,
        group: -1,
        vnethdr: 10,
        sndbuf: i32::MAX as u32,
    };
    let mut pi = true;
    for a in attrs {
        let netlink_packet_route::link::InfoTun::Other(nla) = a else {
            continue;
        };
        let mut v = vec![0u8; nla.value_len()];
        nla.emit_value(&mut v);
        let u8v = v.first().copied().unwrap_or(0);
        let u32v = v
            .get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
        match nla.kind() {
            // uid/gid_t, u32::MAX (-1) for none, as the images keep them.
            1 => e.owner = u32v.map_or(-1, crate::num::c_int),
            2 => e.group = u32v.map_or(-1, crate::num::c_int),
            3 => e.flags |= u32::from(u8v) & (IFF_TUN | IFF_TAP),
            4 => pi = u8v != 0,
            5 if u8v != 0 => e.flags |= IFF_VNET_HDR,
            6 if u8v != 0 => e.flags |= IFF_PERSIST,
            7 if u8v != 0 => e.flags |= IFF_MULTI_QUEUE,
            _ => {}
        }
    }
    if !pi {
        e.flags |= IFF_NO_PI;
    }
    e
}

/// The vnet header size and send buffer of tun/tap device `name` (of namespace `ns`, which
/// the calling thread is in), which only a file attached to it tells: one of the tree's
/// (`queues`), else, for a persistent device no file is on, a file cryo attaches for the
/// moment (as CRIU). A device that is not persistent and has no file in the tree is held by
/// a process outside it: refused.
fn tun_queue_params(
    ns: u32,
    name: &str,
    t: &mut pb::TunLinkEntry,
    queues: &HashMap<String, super::tun::Queue>,
) -> Result<(), NetnsError> {
    if let Some(q) = queues.get(name) {
        t.vnethdr = q.vnethdr;
        t.sndbuf = q.sndbuf;
        return Ok(());
    }
    if t.flags & IFF_PERSIST == 0 {
        return Err(NetnsError::Unsupported {
            ns,
            link: name.to_string(),
            what: "the tun/tap device is not persistent and no process of the tree has a file on it (its files are held outside the tree)".into(),
            hint: "dump the process holding its files with the tree, make the device persistent (ip tuntap add), or delete it before the dump".into(),
        });
    }
    let keep = u16::try_from(t.flags & super::tun::KEEP_FLAGS).unwrap_or_default();
    let tap = t.flags & IFF_TAP != 0;
    let read = crate::sys::tun::open(libc::O_RDWR | libc::O_CLOEXEC).and_then(|f| {
        crate::sys::tun::attach(f.as_fd(), name, keep)?;
        let (h, s) = crate::sys::tun::vnethdr_sndbuf(f.as_fd())?;
        // (TUNGETFILTER is for taps only: EINVAL on a tun.)
        let filter = if tap {
            crate::sys::tun::filter_len(f.as_fd())?
        } else {
            0
        };
        Ok((h, s, filter))
    });
    // A tap may have a packet filter (set once, it stays): it cannot be saved, and a restore
    // without it would let through what it dropped. CRIU refuses it too.
    let filtered = |why: String| NetnsError::Unsupported {
        ns,
        link: name.to_string(),
        what: format!("the persistent tap device {why}; its packet filter cannot be saved"),
        hint:
            "delete the device and make it again without a filter (ip tuntap add) before the dump"
                .into(),
    };
    match read {
        Ok((_, _, f)) if tap && f != 0 => {
            return Err(filtered("has a packet filter (TUNATTACHFILTER)".into()))
        }
        Ok((h, s, _)) => {
            t.vnethdr = h;
            t.sndbuf = s;
        }
        // A tap cryo cannot attach to may have a filter (the kernel fails to load it again).
        Err(e) if tap => {
            return Err(filtered(format!(
                "cannot be attached to from cryo to check for a packet filter ({e})"
            )))
        }
        Err(e) => tracing::warn!(
            ns,
            link = name,
            "cannot attach to the persistent tun/tap device to read its vnet header size and send buffer ({e}); the kernel's defaults are saved"
        ),
    }
    Ok(())
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn save_format<'a>(magic: u32, msgs: impl Iterator<Item = &'a Reply>) -> Vec<u8> {
    let mut out = magic.to_ne_bytes().to_vec();
    for r in msgs {
        out.extend_from_slice(&r.raw);
    }
    out
}

/// Splits an iproute2 save file into its messages, checking the magic.
fn load_format(ns: u32, name: &str, magic: u32, bytes: &[u8]) -> Result<Vec<Vec<u8>>, NetnsError> {
    let bad = |what: String| NetnsError::BadImage {
        ns,
        name: name.to_string(),
        what,
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 4 || u32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")) != magic {
        return Err(bad(format!(
            "not an iproute2 save file (magic {magic:#x} expected)"
        )));
    }
    let mut out = Vec::new();
    let mut off = 4;
    while off < bytes.len() {
        if off + 16 > bytes.len() {
            return Err(bad(format!("truncated at byte {off}")));
        }
        let len = NetlinkBuffer::new(&bytes[off..]).length() as usize;
        if len < 16 || off + len > bytes.len() {
            return Err(bad(format!("bad message length {len} at byte {off}")));
        }
        out.push(bytes[off..off + len].to_vec());
        // ip writes nlmsg_len bytes per message (no padding).
        off += len;
    }
    Ok(out)
}

/// Runs `tool args` (in the calling thread's namespace) with `input` on stdin; its stdout,
/// or None when the tool is not installed.
fn run_tool(
    ns: u32,
    what: &'static str,
    tool: &'static str,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, NetnsError> {
    let fail = |why: String| NetnsError::Tool {
        ns,
        what,
        tool,
        why,
    };
    let mut c = Command::new(tool);
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if let (Some(i), Some(mut w)) = (input, child.stdin.take()) {
        w.write_all(i).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(Some(out.stdout))
}

/// Writes the images of every saved namespace.
pub fn write(dir: &ImageDir, all: &[NetnsDump]) -> Result<(), NetnsError> {
    for d in all {
        let id = d.id;
        dir.write(&format!("netdev-{id}.img"), image::NETDEV, &d.links)?;
        dir.write(
            &format!("netns-{id}.img"),
            image::NETNS,
            std::slice::from_ref(&d.entry),
        )?;
        for (name, bytes, always) in [
            ("ifaddr", &d.ifaddr, true),
            ("route", &d.route, true),
            ("route6", &d.route6, true),
            ("rule", &d.rule, true),
            ("rule6", &d.rule6, true),
            ("nftables", &d.nftables, false),
            ("iptables", &d.iptables, false),
            ("ip6tables", &d.ip6tables, false),
        ] {
            if always || !bytes.is_empty() {
                dir.write_raw(&format!("{name}-{id}.img"), bytes)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// restore

/// What the user gives for links whose other side is outside the tree.
#[derive(Debug, Clone, Default)]
pub struct LinkOpts {
    /// `--external veth[IN]:OUT[@BRIDGE]`, `--veth-pair IN=OUT[@BRIDGE]`, RPC `veths`: the
    /// name of a veth's peer in cryo's namespace, and a bridge to add it to.
    pub veth: HashMap<String, (String, Option<String>)>,
    /// `--external macvlan[IN]:HOSTLINK`: the link in cryo's namespace a macvlan sits on.
    pub macvlan: HashMap<String, String>,
    /// `--external netdev[IN]:OUT`: a veth IN whose peer was outside the saved namespace is
    /// not made: the user's veth OUT (made beforehand in cryo's namespace, its peer where
    /// the user wants it) is moved in, renamed IN, with IN's saved index, MTU, MAC and
    /// flags (CRIU's `move_veth`).
    pub netdev: HashMap<String, String>,
    /// The tree's network namespaces rebuilt so far in this restore (by saved id): a veth
    /// whose peer is in another saved namespace is made by the second of the two, its peer
    /// put in the first.
    pub restored: std::sync::Arc<std::sync::Mutex<HashMap<u32, File>>>,
    /// Veths left for a later namespace to make (their peer's namespace was not rebuilt
    /// yet), by (saved namespace id, index): (name, the peer's namespace id). What is still
    /// here once the tree exists was never made ([`all_links_made`]).
    pub deferred: std::sync::Arc<std::sync::Mutex<Deferred>>,
    /// The user's devices moved into a restored namespace (`--external netdev`): moved back
    /// if the restore fails ([`LinkOpts::give_back`]), as their namespace dies with the tree.
    pub moved: std::sync::Arc<std::sync::Mutex<Vec<MovedIn>>>,
}

/// Veths left for a later namespace: (saved namespace id, index) -> (name, peer's namespace).
pub type Deferred = HashMap<(u32, u32), (String, u32)>;

/// A device of cryo's namespace moved into a restored one (`--external netdev[IN]:OUT`), as
/// it was before the move.
#[derive(Debug)]
pub struct MovedIn {
    /// The namespace it went to (held open: it outlives the failed tree until the device
    /// is back).
    ns: File,
    /// That namespace's saved id.
    ns_id: u32,
    /// Its index there (the saved one).
    index: u32,
    /// Its name (OUT), index, MTU, MAC and up/down state in cryo's namespace.
    name: String,
    out_index: u32,
    mtu: Option<u32>,
    address: Option<Vec<u8>>,
    up: bool,
}

impl LinkOpts {
    /// Takes the link kinds of `--external` (`veth[..]`, `macvlan[..]`); false for others.
    pub fn add_external(&mut self, e: &str) -> Result<bool, String> {
        let parse = |rest: &str| {
            rest.split_once("]:")
                .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                .map(|(a, b)| (a.to_string(), b.to_string()))
        };
        if let Some(r) = e.strip_prefix("veth[") {
            let (i, o) = parse(r).ok_or(format!(
                "--external {e}: expected veth[IFNAME]:OUTNAME[@BRIDGE]"
            ))?;
            self.add_veth(&i, &o);
            return Ok(true);
        }
        if let Some(r) = e.strip_prefix("netdev[") {
            let (i, o) =
                parse(r).ok_or(format!("--external {e}: expected netdev[IFNAME]:OUTNAME"))?;
            self.netdev.insert(i, o);
            return Ok(true);
        }
        if let Some(r) = e.strip_prefix("macvlan[") {
            let (i, o) =
                parse(r).ok_or(format!("--external {e}: expected macvlan[IFNAME]:HOSTLINK"))?;
            self.macvlan.insert(i, o);
            return Ok(true);
        }
        Ok(false)
    }

    /// `IN=OUT[@BRIDGE]` (`--veth-pair`).
    pub fn add_veth_pair(&mut self, s: &str) -> Result<(), String> {
        let (i, o) = s
            .split_once('=')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or(format!("--veth-pair {s}: expected IN=OUT[@BRIDGE]"))?;
        self.add_veth(i, o);
        Ok(())
    }

    pub fn add_veth(&mut self, inside: &str, out: &str) {
        let (o, b) = match out.split_once('@') {
            Some((o, b)) => (o.to_string(), Some(b.to_string())),
            None => (out.to_string(), None),
        };
        self.veth.insert(inside.to_string(), (o, b));
    }

    /// A failed restore: the user's devices moved into its namespaces (`--external netdev`)
    /// go back to cryo's namespace as they were (name, index when free, MTU, MAC, up/down);
    /// a namespace's end would destroy them. A device that cannot go back is logged.
    pub fn give_back(&self) {
        let moved = std::mem::take(&mut *self.moved.lock().unwrap_or_else(|e| e.into_inner()));
        for m in moved {
            match move_back(&m) {
                Ok(()) => tracing::info!(
                    device = %m.name,
                    "the restore failed: the device moved in (--external netdev) is back in cryo's network namespace"
                ),
                Err(e) => tracing::error!(
                    device = %m.name,
                    error = %e,
                    "the restore failed and the device moved in (--external netdev) could not be moved back: it goes with the restored namespace"
                ),
            }
        }
    }

    /// A restore that succeeded: the moved devices stay where they are (the namespaces
    /// held for a move back are let go).
    pub fn keep_moved(&self) {
        self.moved.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Moves `m` from the namespace it was moved into back to cryo's (see [`LinkOpts::give_back`]).
fn move_back(m: &MovedIn) -> Result<(), NetnsError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Enter {
        what: "cryo".into(),
        source,
    })?;
    within(m.ns.as_fd(), || -> Result<(), NetnsError> {
        let mut rt = Rtnl::new(m.ns_id)?;
        let msg = |old_index: bool| {
            let mut l = LinkMessage::default();
            l.header.index = m.index;
            l.header.flags = if m.up {
                LinkFlags::Up
            } else {
                LinkFlags::empty()
            };
            l.header.change_mask = LinkFlags::Up;
            l.attributes.push(LinkAttribute::IfName(m.name.clone()));
            if let Some(mtu) = m.mtu {
                l.attributes.push(LinkAttribute::Mtu(mtu));
            }
            if let Some(a) = &m.address {
                l.attributes.push(LinkAttribute::Address(a.clone()));
            }
            if old_index {
                l.attributes
                    .push(LinkAttribute::NewIfIndex(m.out_index.cast_signed()));
            }
            l.attributes.push(LinkAttribute::NetNsFd(own.as_raw_fd()));
            l
        };
        // Its old index if nothing took it meanwhile, else the kernel's choice.
        rt.request(RouteNetlinkMessage::NewLink(msg(true)), 0)
            .or_else(|_| rt.request(RouteNetlinkMessage::NewLink(msg(false)), 0))
            .map_err(|e| rt.err(format!("move {} back to cryo's namespace", m.name), e))
    })
    .map_err(|source| NetnsError::Enter {
        what: "the failed restore's namespace".into(),
        source,
    })?
}

/// The tree exists: every veth a namespace left for a later one to make (its peer's
/// namespace) was made. One that was not had its peer in a namespace of the images this
/// restore did not rebuild (joined with `--join-ns`, or no process of the tree in it).
pub fn all_links_made(opts: &LinkOpts) -> Result<(), NetnsError> {
    let left = opts.deferred.lock().unwrap_or_else(|e| e.into_inner());
    let Some((&(ns, _), (name, peer_ns))) = left.iter().min_by_key(|(k, _)| **k) else {
        return Ok(());
    };
    Err(NetnsError::Unsupported {
        ns,
        link: name.clone(),
        what: format!(
            "the veth was not made: its peer is in saved network namespace {peer_ns}, which this restore did not rebuild"
        ),
        hint: format!(
            "restore that namespace with the tree (no --join-ns net: for it), so that both ends of {name} are made"
        ),
    })
}

/// Rebuilds saved namespace `id` in `target` (the root puppet's new namespace).
pub fn restore(
    dir: &ImageDir,
    id: u32,
    target: BorrowedFd<'_>,
    opts: &LinkOpts,
) -> Result<(), NetnsError> {
    let t0 = std::time::Instant::now();
    let entry: Option<pb::NetnsEntry> = dir
        .read_opt::<pb::NetnsEntry>(&format!("netns-{id}.img"), image::NETNS)?
        .and_then(|v| v.into_iter().next());
    let links: Vec<pb::NetDeviceEntry> = dir
        .read_opt(&format!("netdev-{id}.img"), image::NETDEV)?
        .unwrap_or_default();
    let raw = |name: &str| -> Result<Vec<u8>, NetnsError> {
        Ok(dir
            .read_raw_opt(&format!("{name}-{id}.img"))?
            .unwrap_or_default())
    };
    let addrs = load_format(id, "ifaddr", ADDR_MAGIC, &raw("ifaddr")?)?;
    let mut routes = load_format(id, "route", ROUTE_MAGIC, &raw("route")?)?;
    routes.extend(load_format(id, "route6", ROUTE_MAGIC, &raw("route6")?)?);
    let rules4 = load_format(id, "rule", RULE_MAGIC, &raw("rule")?)?;
    let rules6 = load_format(id, "rule6", RULE_MAGIC, &raw("rule6")?)?;
    let nft = raw("nftables")?;
    // Veths whose peer is in another namespace of the tree: (this end's index) -> (the
    // peer's namespace if rebuilt already, the peer's record, that namespace's addresses).
    // A peer whose namespace comes later is made by it (this end is "deferred" here: not
    // made, nor its master, sysctls, addresses and routes set; the later one does it).
    let mut cross: HashMap<u32, CrossPeer> = HashMap::new();
    for l in links
        .iter()
        .filter(|l| l.r#type == pb::NdType::Veth as i32 && !opts.netdev.contains_key(&l.name))
    {
        let Some(b) = l.peer_nsid.filter(|&b| b != id) else {
            continue;
        };
        let Some(peers) =
            dir.read_opt::<pb::NetDeviceEntry>(&format!("netdev-{b}.img"), image::NETDEV)?
        else {
            continue; // cryo's namespace at the dump: --external veth[..] names the peer
        };
        let peer = peers
            .into_iter()
            .find(|p| Some(p.ifindex) == l.peer_ifindex)
            .ok_or_else(|| NetnsError::BadImage {
                ns: id,
                name: "netdev".into(),
                what: format!(
                    "veth {}: no peer with index {:?} in namespace {b}",
                    l.name, l.peer_ifindex
                ),
            })?;
        let ns = opts
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&b)
            .and_then(|f| f.try_clone().ok());
        let (addrs, routes) = match ns {
            Some(_) => {
                let raw_b = |name: &str| -> Result<Vec<u8>, NetnsError> {
                    Ok(dir
                        .read_raw_opt(&format!("{name}-{b}.img"))?
                        .unwrap_or_default())
                };
                let mut routes = load_format(b, "route", ROUTE_MAGIC, &raw_b("route")?)?;
                routes.extend(load_format(b, "route6", ROUTE_MAGIC, &raw_b("route6")?)?);
                (
                    load_format(b, "ifaddr", ADDR_MAGIC, &raw_b("ifaddr")?)?,
                    routes,
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        cross.insert(
            l.ifindex,
            CrossPeer {
                ns_id: b,
                ns,
                peer,
                addrs,
                routes,
            },
        );
    }
    let deferred: std::collections::HashSet<u32> = cross
        .iter()
        .filter(|(_, c)| c.ns.is_none())
        .map(|(&i, _)| i)
        .collect();
    {
        let mut left = opts.deferred.lock().unwrap_or_else(|e| e.into_inner());
        for l in links.iter().filter(|l| deferred.contains(&l.ifindex)) {
            let b = cross.get(&l.ifindex).map_or(0, |c| c.ns_id);
            left.insert((id, l.ifindex), (l.name.clone(), b));
        }
    }
    let criu_run_id = dir
        .read_opt::<pb::InventoryEntry>("inventory.img", image::INVENTORY)?
        .and_then(|v| v.into_iter().next())
        .and_then(|i| i.dump_criu_run_id);
    let ipt = raw("iptables")?;
    let ip6t = raw("ip6tables")?;
    // Links made from cryo's namespace (veth peers, macvlans) need it by fd.
    let own = File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Enter {
        what: "cryo".into(),
        source,
    })?;
    let mut host_rt = Rtnl::new(id)?; // made here: it lives in cryo's namespace
    let host_links: HashMap<String, u32> = list_links(&mut host_rt)?
        .into_iter()
        .map(|(_, l)| (link_name(&l), l.header.index))
        .collect();
    // Check the user's side first: nothing is made if a veth or macvlan lacks its options.
    for l in &links {
        let ty = pb::NdType::try_from(l.r#type).unwrap_or(pb::NdType::Extlink);
        match ty {
            pb::NdType::Veth if opts.netdev.contains_key(&l.name) => {
                let out = &opts.netdev[&l.name];
                if !host_links.contains_key(out) {
                    return Err(NetnsError::Unsupported {
                        ns: id,
                        link: l.name.clone(),
                        what: format!(
                            "the device {out} to move in (--external netdev[{}]:{out}) does not exist in cryo's network namespace",
                            l.name
                        ),
                        hint: String::new(),
                    });
                }
            }
            pb::NdType::Veth
                if !opts.veth.contains_key(&l.name)
                    && l.peer_nsid != Some(id)
                    && !cross.contains_key(&l.ifindex) =>
            {
                return Err(NetnsError::Unsupported {
                    ns: id,
                    link: l.name.clone(),
                    what: "its peer was outside the saved namespace".into(),
                    hint: format!(
                        "name the peer cryo makes in its own network namespace: --external veth[{}]:NAME (or --veth-pair {}=NAME[@BRIDGE]), or a veth of yours to move in: --external netdev[{}]:NAME",
                        l.name, l.name, l.name
                    ),
                });
            }
            pb::NdType::Macvlan => {
                let Some(out) = opts.macvlan.get(&l.name) else {
                    return Err(NetnsError::Unsupported {
                        ns: id,
                        link: l.name.clone(),
                        what: "a macvlan needs its lower link on this host".into(),
                        hint: format!("give it: --external macvlan[{}]:HOSTLINK", l.name),
                    });
                };
                if !host_links.contains_key(out) {
                    return Err(NetnsError::Unsupported {
                        ns: id,
                        link: l.name.clone(),
                        what: format!(
                            "its lower link {out} does not exist in cryo's network namespace"
                        ),
                        hint: String::new(),
                    });
                }
            }
            pb::NdType::Loopback | pb::NdType::Veth | pb::NdType::Bridge | pb::NdType::Tun => {}
            other => {
                return Err(NetnsError::Unsupported {
                    ns: id,
                    link: l.name.clone(),
                    what: format!("links of type {other:?} are not restored by cryo"),
                    hint: String::new(),
                })
            }
        }
    }
    within(target, || -> Result<(), NetnsError> {
        // The namespace's own sysctls first (new links take `default`).
        if let Some(e) = &entry {
            write_conf(id, "ipv4", "all", &e.all_conf4)?;
            write_conf(id, "ipv4", "default", &e.def_conf4)?;
            write_conf(id, "ipv6", "all", &e.all_conf6)?;
            write_conf(id, "ipv6", "default", &e.def_conf6)?;
            for (path, v) in [
                ("net/unix/max_dgram_qlen", e.unix_conf.first()),
                ("net/ipv4/ping_group_range", e.ipv4_sysctl.first()),
            ] {
                if let Some(want) = v.and_then(sysctl_text) {
                    let now = read_sysctl(path, v.is_some_and(|v| v.r#type == CTL_STR))
                        .and_then(|e| sysctl_text(&e));
                    if now.as_deref() != Some(&want) {
                        write_sysctl(id, path, &want)?;
                    }
                }
            }
        }
        let mut rt = Rtnl::new(id)?;
        let target_fd =
            File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Enter {
                what: "the new namespace".into(),
                source,
            })?;
        // Links: loopback first (it exists), then the others, masters last.
        let mut order: Vec<&pb::NetDeviceEntry> = links.iter().collect();
        order.sort_by_key(|l| l.r#type != pb::NdType::Loopback as i32);
        order.retain(|l| !deferred.contains(&l.ifindex));
        for l in &order {
            make_link(
                &mut rt,
                &mut host_rt,
                id,
                l,
                &links,
                opts,
                &own,
                &target_fd,
                &host_links,
                cross.get(&l.ifindex),
            )?;
        }
        for l in order.iter().filter(|l| l.master.is_some()) {
            let mut m = LinkMessage::default();
            m.header.index = l.ifindex;
            m.attributes
                .push(LinkAttribute::Controller(l.master.unwrap_or(0)));
            rt.request(RouteNetlinkMessage::SetLink(m), 0)
                .map_err(|e| rt.err(format!("link {}: set its master", l.name), e))?;
        }
        // A bridge takes the smallest MTU of its ports when one joins: its own again.
        for l in order
            .iter()
            .filter(|l| l.r#type == pb::NdType::Bridge as i32)
        {
            let mut m = LinkMessage::default();
            m.header.index = l.ifindex;
            m.attributes.push(LinkAttribute::Mtu(l.mtu));
            rt.request(RouteNetlinkMessage::SetLink(m), 0)
                .map_err(|e| rt.err(format!("link {}: set its MTU", l.name), e))?;
        }
        for l in &order {
            write_conf(id, "ipv4", &l.name, &l.conf4)?;
            write_conf(id, "ipv6", &l.name, &l.conf6)?;
            set_addr_gen_mode(&mut rt, l)?;
        }
        // Links are made down: up only now, with their sysctls and IPv6 address generation
        // mode in place (a link up in another mode gets a link-local address of that mode,
        // which the saved ones lack). Before the routes, which a down link refuses.
        for l in order.iter().filter(|l| is_up(l)) {
            rt.request(RouteNetlinkMessage::SetLink(up_flags(l)), 0)
                .map_err(|e| rt.err(format!("link {}: set it up", l.name), e))?;
        }
        // Addresses, routes (three passes, as `ip route restore`), rules.
        for a in addrs
            .iter()
            .filter(|a| addr_index(a).is_none_or(|i| !deferred.contains(&i)))
        {
            rt.replay(a, None, 0)
                .map_err(|e| rt.err("restore an address".into(), e))?;
        }
        replay_routes(&mut rt, id, &routes, |m| {
            route_oif(m).is_none_or(|o| !deferred.contains(&o))
        })?;
        for (fam, saved) in [
            (AddressFamily::Inet, &rules4),
            (AddressFamily::Inet6, &rules6),
        ] {
            if saved.is_empty() {
                continue;
            }
            // The kernel's default rules go first, as CRIU does (`ip rule flush`, then
            // `ip rule delete table local`), so the saved ones are not doubled.
            let mut req = RuleMessage::default();
            req.header.family = fam;
            for r in rt.dump("rules", RouteNetlinkMessage::GetRule(req))? {
                rt.replay(&r.raw, Some(33 /* RTM_DELRULE */), 0)
                    .map_err(|e| rt.err("remove a default rule".into(), e))?;
            }
            for r in saved {
                rt.replay(r, None, NLM_F_EXCL)
                    .map_err(|e| rt.err("restore a rule".into(), e))?;
            }
        }
        // The firewall.
        if !ipt.is_empty() {
            run_tool(
                id,
                "restore the iptables rules",
                "iptables-legacy-restore",
                &["-w", "--noflush"],
                Some(&ipt),
            )?
            .ok_or(NetnsError::Tool {
                ns: id,
                what: "restore the iptables rules",
                tool: "iptables-legacy-restore",
                why: "not installed".into(),
            })?;
        }
        if !ip6t.is_empty() {
            run_tool(
                id,
                "restore the ip6tables rules",
                "ip6tables-legacy-restore",
                &["-w", "--noflush"],
                Some(&ip6t),
            )?
            .ok_or(NetnsError::Tool {
                ns: id,
                what: "restore the ip6tables rules",
                tool: "ip6tables-legacy-restore",
                why: "not installed".into(),
            })?;
        }
        // CRIU saves its own lock (table inet CRIU-<first 21 characters of its run id>)
        // with the ruleset: that table is this restore's lock, made already (before the
        // links), so it is not declared again (its chains' priorities differ, which the
        // kernel refuses) nor deleted here; the unlock at the end removes it.
        let nft = match &criu_run_id {
            Some(run) => without_table(&nft, &format!("inet {}", crate::netlock::lock_name(run))),
            None => nft,
        };
        if nft.iter().any(|b| !b.is_ascii_whitespace()) {
            run_tool(
                id,
                "restore the nftables ruleset",
                "nft",
                &["-f", "-"],
                Some(&nft),
            )?
            .ok_or(NetnsError::Tool {
                ns: id,
                what: "restore the nftables ruleset",
                tool: "nft",
                why: "not installed".into(),
            })?;
        }
        Ok(())
    })
    .map_err(|source| NetnsError::Enter {
        what: "the restored tree".into(),
        source,
    })??;
    if let Ok(f) = target.try_clone_to_owned() {
        opts.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, File::from(f));
    }
    tracing::info!(
        ns = id,
        links = links.len(),
        addresses = addrs.len(),
        routes = routes.len(),
        us = crate::num::micros_u64(t0.elapsed()),
        "network namespace restored"
    );
    Ok(())
}

/// Replays the saved `routes` that `keep` selects in `rt`'s namespace (saved id `id`), in
/// the three passes of `ip route restore`.
fn replay_routes(
    rt: &mut Rtnl,
    id: u32,
    routes: &[Vec<u8>],
    keep: impl Fn(&RouteMessage) -> bool,
) -> Result<(), NetnsError> {
    let parsed: Vec<(usize, RouteMessage)> = routes
        .iter()
        .enumerate()
        .filter_map(
            |(i, r)| match NetlinkMessage::<RouteNetlinkMessage>::deserialize(r) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)),
                    ..
                }) => Some((i, m)),
                _ => None,
            },
        )
        .collect();
    if parsed.len() != routes.len() {
        return Err(NetnsError::BadImage {
            ns: id,
            name: "route".into(),
            what: "a message is not a route".into(),
        });
    }
    for pass in 0..3 {
        for (i, m) in &parsed {
            if route_pass(m) == pass && keep(m) {
                rt.replay(&without_link_state(&routes[*i]), None, 0)
                    .map_err(|e| rt.err(format!("restore a route ({})", describe_route(m)), e))?;
            }
        }
    }
    Ok(())
}

/// A saved route without the kernel's link-state flags (RTNH_F_DEAD, RTNH_F_LINKDOWN: set
/// when the link was down at dump), which it refuses in a request (`ip route restore` and
/// CRIU fail there).
fn without_link_state(raw: &[u8]) -> Vec<u8> {
    const RTNH_F_DEAD: u32 = 1;
    const RTNH_F_LINKDOWN: u32 = 16;
    let mut m = raw.to_vec();
    // struct rtmsg after the 16-byte nlmsghdr: 8 one-byte fields, then u32 rtm_flags.
    if let Some(f) = m.get_mut(24..28) {
        let v =
            u32::from_ne_bytes(f.try_into().expect("4 bytes")) & !(RTNH_F_DEAD | RTNH_F_LINKDOWN);
        f.copy_from_slice(&v.to_ne_bytes());
    }
    m
}

/// `ip route restore`'s passes: 0 routes to local addresses, 1 on-link routes, 2 routes via
/// a gateway.
fn route_pass(m: &RouteMessage) -> u32 {
    let has = |f: &dyn Fn(&RouteAttribute) -> bool| m.attributes.iter().any(f);
    let gw = has(&|a| matches!(a, RouteAttribute::Gateway(_)));
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => Some(d.clone()),
        _ => None,
    });
    let src = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(s) => Some(s.clone()),
        _ => None,
    });
    if gw {
        2
    } else if src.is_none() || src == dst {
        0
    } else {
        1
    }
}

/// The peer of a veth of one saved namespace in another one of the tree.
struct CrossPeer {
    /// The peer's saved namespace id.
    ns_id: u32,
    /// That namespace, once rebuilt (else the link is made when it is).
    ns: Option<File>,
    peer: pb::NetDeviceEntry,
    /// That namespace's saved addresses and routes (when rebuilt already).
    addrs: Vec<Vec<u8>>,
    routes: Vec<Vec<u8>>,
}

/// The peer end of a veth made into the namespace rebuilt earlier (which left it out): its
/// master, its sysctls, its addresses and the routes through it there, as that namespace's
/// restore would have set them (its routes were replayed before the link existed).
fn finish_cross_peer(c: &CrossPeer) -> Result<(), NetnsError> {
    let Some(ns) = &c.ns else {
        return Ok(());
    };
    let (b, p) = (c.ns_id, &c.peer);
    within(ns.as_fd(), || -> Result<(), NetnsError> {
        let mut rt = Rtnl::new(b)?;
        if let Some(master) = p.master {
            let mut m = LinkMessage::default();
            m.header.index = p.ifindex;
            m.attributes.push(LinkAttribute::Controller(master));
            rt.request(RouteNetlinkMessage::SetLink(m), 0)
                .map_err(|e| rt.err(format!("link {}: set its master", p.name), e))?;
        }
        write_conf(b, "ipv4", &p.name, &p.conf4)?;
        write_conf(b, "ipv6", &p.name, &p.conf6)?;
        set_addr_gen_mode(&mut rt, p)?;
        // Up once its sysctls and mode are set (see `restore`).
        rt.request(RouteNetlinkMessage::SetLink(up_flags(p)), 0)
            .map_err(|e| rt.err(format!("link {}: set its flags", p.name), e))?;
        for a in c.addrs.iter().filter(|a| addr_index(a) == Some(p.ifindex)) {
            rt.replay(a, None, 0)
                .map_err(|e| rt.err(format!("link {}: restore an address", p.name), e))?;
        }
        replay_routes(&mut rt, b, &c.routes, |m| route_oif(m) == Some(p.ifindex))
    })
    .map_err(|source| NetnsError::Enter {
        what: format!("namespace {b} (a veth's peer)"),
        source,
    })?
}

/// `nft list ruleset` text without the top-level block `table NAME {` ... `}`.
fn without_table(text: &[u8], name: &str) -> Vec<u8> {
    let head = format!("table {name} {{");
    let mut out = Vec::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let l = String::from_utf8_lossy(line);
        let l = l.trim_end();
        if inside {
            inside = l != "}";
            continue;
        }
        if l == head {
            inside = true;
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

/// Whether saved link `l` was up.
fn is_up(l: &pb::NetDeviceEntry) -> bool {
    LinkFlags::from_bits_retain(l.flags).contains(LinkFlags::Up)
}

/// A message setting a made link's saved up/down state.
fn up_flags(p: &pb::NetDeviceEntry) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = p.ifindex;
    m.header.flags = LinkFlags::from_bits_retain(p.flags) & LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m
}

/// The interface index a saved address message is on.
fn addr_index(raw: &[u8]) -> Option<u32> {
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
        .ok()?
        .payload
    {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => Some(m.header.index),
        _ => None,
    }
}

/// The output interface of a route, when it names one.
fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn describe_route(m: &RouteMessage) -> String {
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => Some(format!("{d:?}")),
        _ => None,
    });
    format!(
        "{}/{} table {}",
        dst.unwrap_or_else(|| "default".into()),
        m.header.destination_prefix_length,
        route_table(m)
    )
}

/// Makes one saved link in the namespace `rt` talks to.
#[allow(clippy::too_many_arguments)]
fn make_link(
    rt: &mut Rtnl,
    host_rt: &mut Rtnl,
    id: u32,
    l: &pb::NetDeviceEntry,
    all: &[pb::NetDeviceEntry],
    opts: &LinkOpts,
    own: &File,
    target: &File,
    host_links: &HashMap<String, u32>,
    cross: Option<&CrossPeer>,
) -> Result<(), NetnsError> {
    let ty = pb::NdType::try_from(l.r#type).unwrap_or(pb::NdType::Extlink);
    let mut m = LinkMessage::default();
    m.header.interface_family = AddressFamily::Packet;
    // Its saved flags but up: every link is made (or moved in) down, and comes up once its
    // sysctls and IPv6 address generation mode are set (`restore`).
    m.header.flags = LinkFlags::from_bits_retain(l.flags) - LinkFlags::Up;
    m.attributes.push(LinkAttribute::IfName(l.name.clone()));
    m.attributes.push(LinkAttribute::Mtu(l.mtu));
    if let Some(a) = &l.address {
        m.attributes.push(LinkAttribute::Address(a.clone()));
    }
    let what = |e: std::io::Error, rt: &Rtnl| rt.err(format!("link {}: create it", l.name), e);
    match ty {
        pb::NdType::Loopback => {
            m.header.index = 1;
            m.attributes
                .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
            rt.request(RouteNetlinkMessage::SetLink(m), 0)
                .map_err(|e| rt.err(format!("link {}: set its flags", l.name), e))
        }
        pb::NdType::Veth if opts.netdev.contains_key(&l.name) => {
            // The user's device, moved in from cryo's namespace under the saved name and
            // index (IFLA_NEW_IFINDEX: the saved addresses and routes name the index).
            let out = &opts.netdev[&l.name];
            let Some(&index) = host_links.get(out) else {
                return Err(NetnsError::Unsupported {
                    ns: id,
                    link: l.name.clone(),
                    what: format!("the device {out} to move in is gone"),
                    hint: String::new(),
                });
            };
            // As it is now, for a move back if the restore fails.
            let was = list_links(host_rt)?
                .into_iter()
                .map(|(_, x)| x)
                .find(|x| x.header.index == index);
            let back = MovedIn {
                ns: target.try_clone().map_err(|source| NetnsError::Enter {
                    what: "the new namespace".into(),
                    source,
                })?,
                ns_id: id,
                index: l.ifindex,
                name: out.clone(),
                out_index: index,
                mtu: was.as_ref().and_then(|x| {
                    x.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Mtu(v) => Some(*v),
                        _ => None,
                    })
                }),
                address: was.as_ref().and_then(|x| {
                    x.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Address(v) => Some(v.clone()),
                        _ => None,
                    })
                }),
                up: was
                    .as_ref()
                    .is_some_and(|x| x.header.flags.contains(LinkFlags::Up)),
            };
            m.header.index = index;
            m.attributes
                .push(LinkAttribute::NewIfIndex(l.ifindex.cast_signed()));
            m.attributes
                .push(LinkAttribute::NetNsFd(target.as_raw_fd()));
            host_rt
                .request(RouteNetlinkMessage::NewLink(m), 0)
                .map_err(|e| {
                    host_rt.err(format!("link {}: move {out} into the namespace", l.name), e)
                })?;
            opts.moved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(back);
            Ok(())
        }
        pb::NdType::Veth => {
            m.header.index = l.ifindex;
            let mut peer = LinkMessage::default();
            match opts.veth.get(&l.name) {
                Some((out, _)) => {
                    // The peer goes to cryo's namespace, with the name the user gave.
                    peer.attributes.push(LinkAttribute::IfName(out.clone()));
                    peer.attributes
                        .push(LinkAttribute::NetNsFd(own.as_raw_fd()));
                }
                None if cross.is_some_and(|c| c.ns.is_some()) => {
                    // The peer's namespace (another of the tree's) is rebuilt already: the
                    // peer goes there, as it was saved.
                    let c = cross.unwrap_or_else(|| unreachable!());
                    let p = &c.peer;
                    // Made down, up with the other links once its sysctls are set there
                    // (`finish_cross_peer`; a peer brought up while being made has no peer
                    // yet: ENOTCONN).
                    peer.header.index = p.ifindex;
                    peer.attributes.push(LinkAttribute::IfName(p.name.clone()));
                    peer.attributes.push(LinkAttribute::Mtu(p.mtu));
                    if let Some(a) = &p.address {
                        peer.attributes.push(LinkAttribute::Address(a.clone()));
                    }
                    if let Some(ns) = &c.ns {
                        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
                    }
                }
                None => {
                    // Both ends saved in this namespace: made once, from the lower index,
                    // the peer with its own saved index, name, MAC, MTU and flags.
                    let Some(p) = all
                        .iter()
                        .find(|p| Some(p.ifindex) == l.peer_ifindex && p.ifindex != l.ifindex)
                    else {
                        return Err(NetnsError::BadImage {
                            ns: id,
                            name: "netdev".into(),
                            what: format!("veth {} has no peer in the namespace", l.name),
                        });
                    };
                    if p.ifindex < l.ifindex {
                        return Ok(()); // made with its peer
                    }
                    // Made down, up with the other links (see above).
                    peer.header.index = p.ifindex;
                    peer.attributes.push(LinkAttribute::IfName(p.name.clone()));
                    peer.attributes.push(LinkAttribute::Mtu(p.mtu));
                    if let Some(a) = &p.address {
                        peer.attributes.push(LinkAttribute::Address(a.clone()));
                    }
                }
            }
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            rt.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(|e| what(e, rt))?;
            if let Some(c) = cross.filter(|c| c.ns.is_some()) {
                finish_cross_peer(c)?;
                opts.deferred
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(c.ns_id, c.peer.ifindex));
            }
            if let Some((out, Some(bridge))) = opts.veth.get(&l.name) {
                // The peer joins the bridge and comes up (CRIU does it after post-restore).
                let (Some(&pi), Some(&bi)) = (
                    list_links(host_rt)?
                        .iter()
                        .find(|(_, x)| link_name(x) == *out)
                        .map(|(_, x)| &x.header.index),
                    host_links.get(bridge),
                ) else {
                    return Err(NetnsError::Unsupported {
                        ns: id,
                        link: l.name.clone(),
                        what: format!("bridge {bridge} (for its peer {out}) does not exist in cryo's network namespace"),
                        hint: String::new(),
                    });
                };
                let mut s = LinkMessage::default();
                s.header.index = pi;
                s.header.flags = LinkFlags::Up;
                s.header.change_mask = LinkFlags::Up;
                s.attributes.push(LinkAttribute::Controller(bi));
                host_rt
                    .request(RouteNetlinkMessage::SetLink(s), 0)
                    .map_err(|e| host_rt.err(format!("add {out} to bridge {bridge}"), e))?;
            }
            Ok(())
        }
        pb::NdType::Tun => {
            // rtnetlink cannot make one: /dev/net/tun in this namespace, persistent, with its
            // saved index; then its MTU, MAC and flags like any link.
            // Persistent until its first file attaches (`kinds::tun`), as CRIU.
            let t = l.tun.unwrap_or_default();
            let p = crate::sys::tun::Params {
                // The IFF_* bits kept are all below 1 << 16.
                flags: u16::try_from(t.flags & super::tun::KEEP_FLAGS).unwrap_or_default(),
                ifindex: l.ifindex,
                owner: u32::try_from(t.owner).ok(),
                group: u32::try_from(t.group).ok(),
                // A size below the smallest header (or no buffer) would be refused: the
                // kernel's defaults then.
                vnethdr: if t.vnethdr >= 10 { t.vnethdr } else { 10 },
                sndbuf: if t.sndbuf > 0 {
                    t.sndbuf
                } else {
                    i32::MAX.cast_unsigned()
                },
            };
            crate::sys::tun::create_persistent(&l.name, &p)
                .map_err(|e| rt.err(format!("link {}: create the tun/tap device", l.name), e))?;
            m.header.index = l.ifindex;
            m.attributes
                .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
            rt.request(RouteNetlinkMessage::SetLink(m), 0).map_err(|e| {
                rt.err(
                    format!("link {}: set its MTU, address and flags", l.name),
                    e,
                )
            })
        }
        pb::NdType::Bridge => {
            m.header.index = l.ifindex;
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            rt.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(|e| what(e, rt))
        }
        pb::NdType::Macvlan => {
            // Made from cryo's namespace on the host link, then moved in with its index.
            let lower = opts
                .macvlan
                .get(&l.name)
                .and_then(|o| host_links.get(o))
                .copied()
                .unwrap_or(0);
            m.header.index = l.ifindex;
            m.attributes.push(LinkAttribute::Link(lower));
            m.attributes
                .push(LinkAttribute::NetNsFd(target.as_raw_fd()));
            let mv = l.macvlan.unwrap_or_default();
            let mut data = vec![InfoMacVlan::Mode(mv.mode.into())];
            if let Some(f) = mv.flags {
                // MACVLAN_FLAG_* is a u16 in the kernel: the low bits.
                let f = u16::try_from(f & 0xffff).unwrap_or_default();
                data.push(InfoMacVlan::Flags(MacVlanFlags::from_bits_retain(f)));
            }
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::MacVlan),
                LinkInfo::Data(InfoData::MacVlan(data)),
            ]));
            host_rt
                .request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(|e| what(e, host_rt))
        }
        other => Err(NetnsError::Unsupported {
            ns: id,
            link: l.name.clone(),
            what: format!("links of type {other:?} are not restored by cryo"),
            hint: String::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_options_parse_like_criu() {
        let mut o = LinkOpts::default();
        assert_eq!(o.add_external("veth[eth0]:veth-h@br0"), Ok(true));
        assert_eq!(o.add_external("macvlan[mv0]:eth0"), Ok(true));
        assert_eq!(o.add_external("mnt[/x]:y"), Ok(false));
        assert!(o.add_external("veth[]:x").is_err());
        o.add_veth_pair("eth1=vh1").unwrap();
        assert!(o.add_veth_pair("eth1").is_err());
        assert_eq!(
            o.veth["eth0"],
            ("veth-h".to_string(), Some("br0".to_string()))
        );
        assert_eq!(o.veth["eth1"], ("vh1".to_string(), None));
        assert_eq!(o.macvlan["mv0"], "eth0");
    }

    #[test]
    fn save_format_round_trips() {
        let msg = {
            let mut h = NetlinkHeader::default();
            h.flags = 2;
            let mut m = NetlinkMessage::new(
                h,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(RouteMessage::default()),
                ),
            );
            m.finalize();
            let mut b = vec![0u8; m.buffer_len()];
            m.serialize(&mut b);
            b
        };
        let r = Reply {
            raw: msg.clone(),
            msg: RouteNetlinkMessage::NewRoute(RouteMessage::default()),
        };
        let saved = save_format(ROUTE_MAGIC, [&r, &r].into_iter());
        assert_eq!(&saved[..4], &ROUTE_MAGIC.to_ne_bytes());
        let back = load_format(1, "route", ROUTE_MAGIC, &saved).unwrap();
        assert_eq!(back, vec![msg.clone(), msg]);
        assert!(load_format(1, "route", ADDR_MAGIC, &saved).is_err());
        assert!(load_format(1, "route", ROUTE_MAGIC, &saved[..saved.len() - 1]).is_err());
    }
}
