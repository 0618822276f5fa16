//! The state of one TCP connection (`tcp-stream-INO.img`, CRIU's `tcp_stream_entry` followed
//! by the bytes of the receive queue and of the send queue), saved from and put back into a
//! socket through the kernel's TCP repair mode, so that the peer never notices.
//!
//! Dump ([`save`]), on cryo's copy of the target's socket (the same socket), already in repair
//! mode and behind the network lock: state, window scales and options from `TCP_INFO`, MSS,
//! timestamp clock, the repair window, each queue's sequence number and its bytes (peeked,
//! nothing is consumed). The receive queue is what arrived and was not read yet; the send
//! queue is everything written and not acknowledged yet, sent or not.
//!
//! Restore ([`restore`]), on a new socket in repair mode: bind to the saved address (repair
//! mode lets it share a port in use), both sequence numbers, `connect` (no SYN in repair
//! mode), the options the handshake had negotiated (`TCP_REPAIR_OPTIONS`: SACK, window
//! scales, timestamps, MSS; before any byte is queued), the timestamp clock, the receive
//! queue and the part of the send queue that was sent, the repair window, and the FINs of a
//! half-closed connection (ours with `shutdown`, the peer's as a forged FIN|ACK segment
//! sent on a raw socket marked to pass the lock). The part of the send queue never sent is
//! not queued here: [`Restored::unsent`] holds it, and the caller sends it once the lock is
//! gone and repair mode is off, so it leaves at once instead of after a retransmission
//! timeout (CRIU sends it while the lock still drops it). Only when our FIN must follow it
//! (FIN_WAIT1, CLOSING, LAST_ACK) is it sent here, out of repair mode for a moment, as CRIU.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;

use crate::image::pb;
use crate::num::len32;
use crate::sys::inet::{self, Repair, RepairQueue, RepairWindow, TcpInfo};

/// TCP states (include/net/tcp_states.h).
pub const ESTABLISHED: u32 = 1;
pub const SYN_SENT: u32 = 2;
pub const FIN_WAIT1: u32 = 4;
pub const FIN_WAIT2: u32 = 5;
pub const CLOSE: u32 = 7;
pub const CLOSE_WAIT: u32 = 8;
pub const LAST_ACK: u32 = 9;
pub const LISTEN: u32 = 10;
pub const CLOSING: u32 = 11;

const fn f(s: u32) -> u32 {
    1 << s
}
/// Our FIN is in the send queue, restored first.
const SNDQ_FIRST_FIN: u32 = f(FIN_WAIT1) | f(FIN_WAIT2) | f(CLOSING);
/// Our FIN follows the peer's.
const SNDQ_SECOND_FIN: u32 = f(LAST_ACK) | f(CLOSE);
/// The peer acknowledged our FIN.
const SNDQ_FIN_ACKED: u32 = f(FIN_WAIT2) | f(CLOSE);
/// The peer's FIN arrived first.
const RCVQ_FIRST_FIN: u32 = f(CLOSE_WAIT) | f(LAST_ACK) | f(CLOSE);
/// The peer's FIN arrived after ours.
const RCVQ_SECOND_FIN: u32 = f(CLOSING);
/// We acknowledged the peer's FIN.
const RCVQ_FIN_ACKED: u32 = f(CLOSE);

/// `TCPI_OPT_*`.
const OPT_TIMESTAMPS: u32 = 1;
const OPT_SACK: u32 = 2;
const OPT_WSCALE: u32 = 4;
/// The range `TCP_MAXSEG` accepts (`TCP_MIN_MSS`, `MAX_TCP_WINDOW`).
const TCP_MIN_MSS: u32 = 88;
const TCP_MAXSEG_MAX: u32 = 32767;
/// TCP option kinds for `TCP_REPAIR_OPTIONS`.
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

/// The mark of the packets cryo forges, which the network lock lets through (CRIU's
/// `SOCCR_MARK`).
pub const SOCCR_MARK: u32 = crate::netlock::SOCCR_MARK;

/// `TCP_MAXSEG` (`user_mss`; 0 takes it back).
fn set_user_mss(sk: BorrowedFd<'_>, mss: u32) -> Result<(), Step> {
    crate::sys::net::setsockopt_int(sk, libc::IPPROTO_TCP, libc::TCP_MAXSEG, mss.cast_signed())
        .map_err(step(format!("TCP_MAXSEG {mss}")))
}

/// Is `state` one a connection can be saved in (a connection, established or half closed,
/// or one being opened)?
pub fn is_connection(state: u32) -> bool {
    matches!(
        state,
        ESTABLISHED | SYN_SENT | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
    )
}

/// A name for a TCP state, for messages.
pub fn state_name(state: u32) -> &'static str {
    match state {
        ESTABLISHED => "ESTABLISHED",
        SYN_SENT => "SYN_SENT",
        3 => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        CLOSE => "CLOSE",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        LISTEN => "LISTEN",
        CLOSING => "CLOSING",
        _ => "unknown",
    }
}

/// A failed step, named.
#[derive(Debug)]
pub struct Step {
    pub what: String,
    pub source: std::io::Error,
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Step {
    let what = what.into();
    move |source| Step { what, source }
}

fn bad(what: impl Into<String>) -> Step {
    Step {
        what: what.into(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    }
}

/// A connection's saved state: the image entry (its queue bytes, receive queue then send
/// queue, are in the caller's buffer), and its state.
pub struct Saved {
    pub entry: pb::TcpStreamEntry,
    pub state: u32,
}

/// Reads one queue (`q`) of a socket in repair mode: its sequence number, and its bytes
/// appended to `out`; returns (sequence, length). `hint` is the size the queue ioctl
/// reported. The sequence number is read again after the bytes, and everything again if it
/// moved (a segment that was still being processed).
fn read_queue(
    sk: BorrowedFd<'_>,
    q: RepairQueue,
    hint: impl Fn() -> std::io::Result<u32>,
    out: &mut Vec<u8>,
) -> Result<(u32, usize), Step> {
    let name = if q == RepairQueue::Recv {
        "receive"
    } else {
        "send"
    };
    inet::set_repair_queue(sk, q).map_err(step(format!("TCP_REPAIR_QUEUE ({name})")))?;
    let start = out.len();
    for _ in 0..8 {
        out.truncate(start);
        let seq = inet::queue_seq(sk).map_err(step(format!("TCP_QUEUE_SEQ ({name})")))?;
        let len = hint().map_err(step(format!("size of the {name} queue")))? as usize;
        // One byte more than announced, to be sure there is no more.
        let n = if len == 0 {
            0
        } else {
            inet::recv_peek_append(sk, out, len + 1)
                .map_err(step(format!("peek at the {name} queue")))?
        };
        let again = inet::queue_seq(sk).map_err(step(format!("TCP_QUEUE_SEQ ({name})")))?;
        if again == seq && n == len {
            return Ok((seq, n));
        }
    }
    Err(bad(format!(
        "the {name} queue kept changing while it was read (is the network lock in place?)"
    )))
}

/// Saves the connection of `sk`, which is in repair mode; its queues' bytes go to `data`
/// (emptied first; a buffer the caller reuses from one connection to the next).
pub fn save(sk: BorrowedFd<'_>, data: &mut Vec<u8>) -> Result<Saved, Step> {
    let ti: TcpInfo = inet::tcp_info(sk).map_err(step("TCP_INFO"))?;
    let state = u32::from(ti.state);
    if !is_connection(state) && state != CLOSE {
        return Err(bad(format!(
            "unexpected TCP state {} in repair mode",
            state_name(state)
        )));
    }
    data.clear();
    let mut outq_hint = inet::outq(sk).map_err(step("SIOCOUTQ"))?;
    // Room for both queues at once (one more byte each: see `read_queue`).
    data.reserve(inet::inq(sk).unwrap_or(0) as usize + outq_hint as usize + 2);
    let (inq_seq, inq_len) = read_queue(sk, RepairQueue::Recv, || inet::inq(sk), data)?;
    let mut unsq_len = inet::outq_unsent(sk).map_err(step("SIOCOUTQNSD"))?;
    if state == CLOSE {
        // A reset connection: what is left to send can never be read by anyone.
        outq_hint = 0;
        unsq_len = 0;
    }
    let fin_queued = f(state) & (SNDQ_FIRST_FIN | SNDQ_SECOND_FIN) != 0;
    let (outq_seq, outq_len) = read_queue(
        sk,
        RepairQueue::Send,
        || {
            // Our FIN takes a sequence number but holds no byte.
            Ok(if fin_queued {
                outq_hint.saturating_sub(1)
            } else {
                outq_hint
            })
        },
        data,
    )?;
    if fin_queued {
        unsq_len = unsq_len.saturating_sub(1);
    }
    inet::set_repair_queue(sk, RepairQueue::None).map_err(step("TCP_REPAIR_QUEUE (none)"))?;
    let mss = crate::sys::net::getsockopt_int(sk, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(step("TCP_MAXSEG"))?;
    let opt_mask = u32::from(ti.options);
    let timestamp = if opt_mask & OPT_TIMESTAMPS != 0 {
        Some(inet::tcp_timestamp(sk).map_err(step("TCP_TIMESTAMP"))?)
    } else {
        None
    };
    let win = inet::repair_window(sk).map_err(step("TCP_REPAIR_WINDOW"))?;
    let wscale = opt_mask & OPT_WSCALE != 0;
    let entry = pb::TcpStreamEntry {
        inq_len: len32(inq_len),
        inq_seq,
        outq_len: len32(outq_len),
        outq_seq,
        opt_mask,
        snd_wscale: if wscale { u32::from(ti.snd_wscale) } else { 0 },
        mss_clamp: mss.cast_unsigned(),
        rcv_wscale: wscale.then_some(u32::from(ti.rcv_wscale)),
        timestamp,
        cork: None,
        nodelay: None,
        unsq_len: Some(unsq_len.min(len32(outq_len))),
        snd_wl1: win.map(|w| w.snd_wl1),
        snd_wnd: win.map(|w| w.snd_wnd),
        max_window: win.map(|w| w.max_window),
        rcv_wnd: win.map(|w| w.rcv_wnd),
        rcv_wup: win.map(|w| w.rcv_wup),
    };
    Ok(Saved { entry, state })
}

/// What [`restore`] leaves for the end of the restore.
#[derive(Debug, Default)]
pub struct Restored {
    /// Where, in the queue bytes given to [`restore`], lie the bytes written by the program
    /// and never sent: they are sent once repair mode is off.
    pub unsent: std::ops::Range<usize>,
}

/// Sends `buf` into the queue repair mode selected (or, out of repair mode, normally), in
/// chunks halved down to 1 KiB when the kernel cannot take one at once (a receive-queue
/// chunk is one linear buffer).
fn send_all(sk: BorrowedFd<'_>, buf: &[u8], what: &str) -> Result<(), Step> {
    let mut off = 0;
    let mut chunk = buf.len().max(1);
    while off < buf.len() {
        let end = (off + chunk).min(buf.len());
        match crate::sys::net::send(sk, &buf[off..end]) {
            Ok(n) if n > 0 => off += n,
            Ok(_) | Err(_) if chunk > 1024 => chunk /= 2,
            Ok(_) => return Err(bad(format!("{what}: the kernel took nothing"))),
            Err(e) => return Err(step(what.to_string())(e)),
        }
    }
    Ok(())
}

/// Puts our FIN in the send queue (`shutdown(SHUT_WR)`), as sent when the peer acknowledged
/// it.
fn fin_in_send_queue(sk: BorrowedFd<'_>, acked: bool) -> Result<(), Step> {
    if acked {
        inet::set_repair_queue(sk, RepairQueue::Send).map_err(step("TCP_REPAIR_QUEUE (send)"))?;
    }
    rustix::net::shutdown(sk, rustix::net::Shutdown::Write)
        .map_err(|e| step("shutdown (our FIN)")(e.into()))?;
    if acked {
        inet::set_repair_queue(sk, RepairQueue::None).map_err(step("TCP_REPAIR_QUEUE (none)"))?;
    }
    Ok(())
}

/// `IPPROTO_TCP` as the IP header's protocol byte.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 6
const IPPROTO_TCP_U8: u8 = libc::IPPROTO_TCP as u8;

/// The Internet checksum of `parts` (one's complement of the one's complement sum).
#[allow(clippy::cast_possible_truncation)] // folded to 16 bits above
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IP packet from `src` to `dst` carrying `l4` (a TCP or UDP header and payload whose
/// checksum field, at `csum_at`, is zero) of protocol `proto`, with that checksum filled in
/// (over the pseudo-header). IPv4-mapped IPv6 addresses make an IPv4 packet.
// Length fields are the IP header's 16 (and the IPv6 pseudo-header's 32) bits: what a socket
// queue holds (a segment, a datagram) fits them.
#[allow(clippy::cast_possible_truncation)]
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let (src, dst) = (unmap(src), unmap(dst));
    let len = l4.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            let mut c = checksum(&[&pseudo, &l4]);
            if c == 0 && i32::from(proto) == libc::IPPROTO_UDP {
                c = 0xffff;
            }
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut p = Vec::with_capacity(20 + len);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]); // id, DF, TTL, proto, csum
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let hc = checksum(&[&p]);
            p[10..12].copy_from_slice(&hc.to_be_bytes());
            p.extend_from_slice(&l4);
            p
        }
        _ => {
            let s = v6(src);
            let d = v6(dst);
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            let mut c = checksum(&[&pseudo, &l4]);
            if c == 0 {
                c = 0xffff;
            }
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            let mut p = Vec::with_capacity(40 + len);
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&l4);
            p
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V6(v) => v,
        IpAddr::V4(v) => v.to_ipv6_mapped(),
    }
}

/// Sends the peer's segment the restored socket must have received: from `peer` to `local`,
/// sequence `seq`, acknowledging `ack`, with `flags` (FIN|ACK, or ACK), window `win`.
fn forge_from_peer(
    local: SocketAddr,
    peer: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    win: u32,
) -> Result<(), Step> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&peer.port().to_be_bytes());
    tcp.extend_from_slice(&local.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags]);
    tcp.extend_from_slice(&(win.min(0xffff) as u16).to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let pkt = ip_packet(peer.ip(), local.ip(), IPPROTO_TCP_U8, tcp, 16);
    inet::send_raw_ip(&pkt, unmap(local.ip()), SOCCR_MARK)
        .map_err(step("send the peer's FIN/ACK on a raw socket"))
}

const TH_FIN: u8 = 0x01;
const TH_ACK: u8 = 0x10;

/// Restores the connection `saved` (image entry and queue bytes) in state `state` into `sk`,
/// a new socket in repair mode, bound nowhere yet, between `local` and `peer`. `bind` binds
/// it (the caller knows the scope of a link-local address).
pub fn restore(
    sk: BorrowedFd<'_>,
    state: u32,
    e: &pb::TcpStreamEntry,
    data: &[u8],
    local: SocketAddr,
    peer: SocketAddr,
    bind: impl FnOnce() -> Result<(), Step>,
) -> Result<Restored, Step> {
    let m = f(state);
    let inq_len = e.inq_len as usize;
    let outq_len = e.outq_len as usize;
    if data.len() < inq_len + outq_len {
        return Err(bad(format!(
            "the image holds {} queued bytes, {} expected",
            data.len(),
            inq_len + outq_len
        )));
    }
    let unsq_len = e
        .unsq_len
        .ok_or_else(|| bad("the image has no unsq_len (written by a very old CRIU)"))?
        as usize;
    let unsq_len = unsq_len.min(outq_len);
    let (inq, outq) = (&data[..inq_len], &data[inq_len..inq_len + outq_len]);
    bind()?;
    let mut inq_seq = e.inq_seq;
    let mut outq_seq = e.outq_seq;
    if m & (RCVQ_FIRST_FIN | RCVQ_SECOND_FIN) != 0 {
        inq_seq = inq_seq.wrapping_sub(1);
    }
    if m & (SNDQ_FIRST_FIN | SNDQ_SECOND_FIN) != 0 {
        outq_seq = outq_seq.wrapping_sub(1);
    }
    inet::set_repair_queue(sk, RepairQueue::Recv).map_err(step("TCP_REPAIR_QUEUE (receive)"))?;
    inet::set_queue_seq(sk, inq_seq.wrapping_sub(len32(inq_len)))
        .map_err(step("TCP_QUEUE_SEQ (receive)"))?;
    inet::set_repair_queue(sk, RepairQueue::Send).map_err(step("TCP_REPAIR_QUEUE (send)"))?;
    let mut snd = outq_seq.wrapping_sub(len32(outq_len));
    if state == SYN_SENT {
        snd = snd.wrapping_sub(1);
    }
    inet::set_queue_seq(sk, snd).map_err(step("TCP_QUEUE_SEQ (send)"))?;
    if state == SYN_SENT {
        inet::set_repair(sk, Repair::Off).map_err(step("TCP_REPAIR off (SYN_SENT)"))?;
    } else {
        // The kernel sizes a connection's segments (its cached MSS) at connect, from the
        // clamp it has then: 536 (the default), unless TCP_MAXSEG says more. The saved clamp,
        // set below by TCP_REPAIR_OPTIONS, does not resize them: the connection would send
        // 536-byte segments for good (524 with timestamps, even on loopback), whose overhead
        // overfills a receive buffer that the dumped window had promised as free, and the
        // receiver then drops everything, window updates included (Linux 6.17+), so two
        // restored peers with full buffers hang (issue #10). So the clamp goes first as
        // TCP_MAXSEG (at most 32767, the option's limit), and is taken back after connect.
        // (A clamp below the option's minimum, never seen, is left to the default.)
        if e.mss_clamp >= TCP_MIN_MSS {
            set_user_mss(sk, e.mss_clamp.min(TCP_MAXSEG_MAX))?;
        }
    }
    match rustix::net::connect(sk, &peer) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::INPROGRESS => {}
        Err(e) => return Err(step(format!("connect to {peer}"))(e.into())),
    }
    if state != SYN_SENT {
        set_user_mss(sk, 0)?;
    }
    if state == SYN_SENT {
        inet::set_repair(sk, Repair::On).map_err(step("TCP_REPAIR on"))?;
    } else {
        let mut opts = Vec::new();
        if e.opt_mask & OPT_SACK != 0 {
            opts.push((TCPOPT_SACK_PERM, 0));
        }
        if e.opt_mask & OPT_WSCALE != 0 {
            let rcv = e
                .rcv_wscale
                .ok_or_else(|| bad("the image has window scaling but no rcv_wscale"))?;
            opts.push((TCPOPT_WINDOW, e.snd_wscale | rcv << 16));
        }
        if e.opt_mask & OPT_TIMESTAMPS != 0 {
            opts.push((TCPOPT_TIMESTAMP, 0));
        }
        opts.push((TCPOPT_MAXSEG, e.mss_clamp));
        inet::set_repair_options(sk, &opts).map_err(step("TCP_REPAIR_OPTIONS"))?;
    }
    if e.opt_mask & OPT_TIMESTAMPS != 0 {
        let ts = e
            .timestamp
            .ok_or_else(|| bad("the image has timestamps but no timestamp"))?;
        inet::set_tcp_timestamp(sk, ts).map_err(step("TCP_TIMESTAMP"))?;
    }
    if !inq.is_empty() {
        inet::set_repair_queue(sk, RepairQueue::Recv)
            .map_err(step("TCP_REPAIR_QUEUE (receive)"))?;
        send_all(sk, inq, "refill the receive queue")?;
    }
    let sent = &outq[..outq_len - unsq_len];
    let unsent = &outq[outq_len - unsq_len..];
    if !sent.is_empty() {
        inet::set_repair_queue(sk, RepairQueue::Send).map_err(step("TCP_REPAIR_QUEUE (send)"))?;
        send_all(sk, sent, "refill the send queue")?;
    }
    inet::set_repair_queue(sk, RepairQueue::None).map_err(step("TCP_REPAIR_QUEUE (none)"))?;
    // Our FIN must follow the unsent bytes: then they go now, out of repair mode (the lock
    // drops them; they are retransmitted later), as CRIU does.
    let fin_follows = m & (SNDQ_FIRST_FIN | SNDQ_SECOND_FIN) != 0;
    let mut out = Restored::default();
    if !unsent.is_empty() {
        if fin_follows || state == SYN_SENT {
            inet::set_repair(sk, Repair::OffNoProbe).map_err(step("TCP_REPAIR off"))?;
            send_all(sk, unsent, "send the unsent bytes")?;
            inet::set_repair(sk, Repair::On).map_err(step("TCP_REPAIR on"))?;
        } else {
            let end = inq_len + outq_len;
            out.unsent = end - unsent.len()..end;
        }
    }
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    {
        let mut w = RepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        };
        if m & (RCVQ_FIRST_FIN | RCVQ_SECOND_FIN) != 0 {
            w.rcv_wup = w.rcv_wup.wrapping_sub(1);
            w.rcv_wnd = w.rcv_wnd.wrapping_add(1);
        }
        inet::set_repair_window(sk, &w).map_err(step("TCP_REPAIR_WINDOW"))?;
    }
    let rcv_wnd = e.rcv_wnd.unwrap_or(0xffff);
    if m & SNDQ_FIRST_FIN != 0 {
        fin_in_send_queue(sk, m & SNDQ_FIN_ACKED != 0)?;
    }
    let snd_una = outq_seq.wrapping_sub(len32(outq_len));
    if m & (RCVQ_FIRST_FIN | RCVQ_SECOND_FIN) != 0 {
        forge_from_peer(local, peer, inq_seq, snd_una, TH_FIN | TH_ACK, rcv_wnd)?;
    }
    if m & SNDQ_SECOND_FIN != 0 {
        fin_in_send_queue(sk, m & SNDQ_FIN_ACKED != 0)?;
    }
    if m & RCVQ_FIN_ACKED != 0 {
        inq_seq = inq_seq.wrapping_add(1);
    }
    if m & SNDQ_FIN_ACKED != 0 {
        outq_seq = outq_seq.wrapping_add(1);
        let ack = outq_seq.wrapping_sub(len32(outq_len));
        forge_from_peer(local, peer, inq_seq, ack, TH_ACK, rcv_wnd)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The example of RFC 1071 / Wikipedia's IPv4 header checksum.
        let h = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h]), 0xb861);
    }

    #[test]
    fn mapped_addresses_make_ipv4_packets() {
        let s: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let d: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let p = ip_packet(s, d, 17, vec![0; 8], 6);
        assert_eq!(p[0], 0x45);
        assert_eq!(p.len(), 28);
        // The header checksums to zero once filled in.
        assert_eq!(checksum(&[&p[..20]]), 0);
    }

    #[test]
    fn fin_states_are_masked_as_criu_does() {
        assert!(f(FIN_WAIT2) & SNDQ_FIN_ACKED != 0);
        assert!(f(CLOSE_WAIT) & RCVQ_FIRST_FIN != 0);
        assert!(f(ESTABLISHED) & (SNDQ_FIRST_FIN | SNDQ_SECOND_FIN | RCVQ_FIRST_FIN) == 0);
    }
}
