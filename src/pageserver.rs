//! CRIU's page server, both ends: `cryo page-server` receives the pages of a dump over TCP
//! and writes them as `pagemap-ID.img` + `pages-N.img` into its images directory, and `cryo
//! dump|pre-dump --page-server --address A --port N` sends them there instead of writing them
//! (so the pages of a big process never touch the source's disk). The protocol is CRIU's
//! (`criu/page-xfer.c`), so either end can be CRIU 4.2.
//!
//! The wire: fixed 32-byte little-endian records `{u32 cmd, u32 pad, u64 nr_pages, u64 vaddr,
//! u64 dst_id}`. `dst_id` is `id << 8 | type` (type 1: a process's pagemap, id its PID in the
//! images; 2: shared memory). Commands: `OPEN2` (the server answers one byte: does its parent
//! images directory hold this pagemap), `OPEN` (no answer), `PARENT` (answer: an `i32`),
//! `ADD_F` with the pagemap flags in the high 16 bits of `cmd` (`PE_PRESENT` ones are followed
//! by the page bytes; `PE_PARENT` ones are not), the legacy `ADD` / `HOLE`, and `CLOSE` (the
//! server answers an `i32` 0 once everything is written, then waits for the client to close).
//! Each `OPEN` starts a new pages image (ids from 1, in order), as CRIU's local writer does.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::image::{pb, ImageDir};
use crate::memtrack::{PE_PARENT, PE_PRESENT};
use crate::sys::PAGE_SIZE;

pub const PS_IOV_ADD: u32 = 1;
pub const PS_IOV_HOLE: u32 = 2;
pub const PS_IOV_OPEN: u32 = 3;
pub const PS_IOV_OPEN2: u32 = 4;
pub const PS_IOV_PARENT: u32 = 5;
pub const PS_IOV_ADD_F: u32 = 6;
pub const PS_IOV_GET: u32 = 7;
pub const PS_IOV_CLOSE: u32 = 0x1023;
pub const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const PS_CMD_BITS: u32 = 16;
const PS_TYPE_BITS: u32 = 8;
pub const PS_TYPE_PID: u64 = 1;
pub const PS_TYPE_SHMEM: u64 = 2;

/// Why a page-server session failed.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    #[error("page server connection {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("page server protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PsError {
    let what = what.into();
    move |source| PsError::Io {
        what,
        source: timed_out(source),
    }
}

/// How long a page-server connection may make no progress (`--timeout` of `page-server`
/// and `receive`): a peer that stops sending mid-stream fails the receiver by then.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` end in `EAGAIN`) said as what it is.
pub fn timed_out(e: std::io::Error) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out: the peer made no progress",
        ),
        _ => e,
    }
}

/// One protocol record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Iov {
    pub cmd: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    pub dst_id: u64,
}

impl Iov {
    pub const SIZE: usize = 32;

    pub fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&self.cmd.to_le_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_le_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 32]) -> Iov {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Iov {
            cmd: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }

    fn command(&self) -> u32 {
        self.cmd & ((1 << PS_CMD_BITS) - 1)
    }

    fn flags(&self) -> u32 {
        self.cmd >> PS_CMD_BITS
    }
}

/// `dst_id` of a process's pagemap (`id`: its PID in the images).
pub fn pid_dst(id: u32) -> u64 {
    u64::from(id) << PS_TYPE_BITS | PS_TYPE_PID
}

/// The pagemap image a `dst_id` names; CRIU's older type numbers too (`decode_pm`).
fn pagemap_name(dst_id: u64) -> Option<String> {
    let id = dst_id >> PS_TYPE_BITS;
    match dst_id & ((1 << PS_TYPE_BITS) - 1) {
        1 | 10 | 11 | 16 | 17 => Some(format!("pagemap-{id}.img")),
        2 | 27 | 28 | 29 | 32 | 33 | 34 => Some(format!("pagemap-shmem-{id}.img")),
        _ => None,
    }
}

/// The pagemap being received.
struct Open {
    name: String,
    pages_id: u32,
    pages: std::fs::File,
    entries: Vec<pb::PagemapEntry>,
}

/// The receiving end: writes what one client sends into `dir`.
pub struct Server {
    dir: ImageDir,
    next_pages_id: u32,
    open: Option<Open>,
    /// Bytes of page data received (for the log).
    pub bytes: u64,
    /// How long the client may send nothing (none: for ever).
    pub timeout: Option<Duration>,
}

impl Server {
    pub fn new(dir: ImageDir) -> Server {
        Server {
            dir,
            next_pages_id: 1,
            open: None,
            bytes: 0,
            timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }

    fn has_parent(&self, dst_id: u64) -> bool {
        pagemap_name(dst_id)
            .is_some_and(|n| self.dir.file(crate::memtrack::PARENT_LINK).join(n).exists())
    }

    /// Writes the open pagemap image.
    fn finish(&mut self) -> Result<(), PsError> {
        if let Some(o) = self.open.take() {
            // No fsync (as CRIU's page server): the restore reads the pages from the page
            // cache, and syncing 256 MiB cost ~0.2 s of the frozen tree's time here.
            self.dir.write_pagemap(&o.name, o.pages_id, &o.entries)?;
            tracing::info!(image = %o.name, pages_id = o.pages_id, entries = o.entries.len(), "page server: pagemap written");
        }
        Ok(())
    }

    fn open(&mut self, dst_id: u64) -> Result<(), PsError> {
        self.finish()?;
        let name = pagemap_name(dst_id)
            .ok_or_else(|| PsError::Protocol(format!("unknown pagemap type in {dst_id:#x}")))?;
        let pages_id = self.next_pages_id;
        self.next_pages_id += 1;
        let pages = self.dir.create_file(&format!("pages-{pages_id}.img"))?;
        tracing::info!(image = %name, pages_id, "page server: opening");
        self.open = Some(Open {
            name,
            pages_id,
            pages,
            entries: Vec::new(),
        });
        Ok(())
    }

    /// Serves one session on `sk` until the client's CLOSE (then waits for it to hang up).
    /// A client that sends nothing for `timeout` fails it, named.
    pub fn serve(&mut self, sk: &mut TcpStream) -> Result<(), PsError> {
        let _ = sk.set_nodelay(true);
        sk.set_read_timeout(self.timeout)
            .and_then(|()| sk.set_write_timeout(self.timeout))
            .map_err(io("setting its timeout"))?;
        let peer = sk
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let from = |what: &str| format!("from {peer}: {what}");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut raw = [0u8; Iov::SIZE];
            match read_full(sk, &mut raw).map_err(io(from("read")))? {
                0 => {
                    return Err(PsError::Protocol(format!(
                        "the client {peer} went away before CLOSE: the data were not flushed"
                    )))
                }
                Iov::SIZE => {}
                n => {
                    return Err(PsError::Protocol(format!(
                        "from {peer}: a record cut after {n} bytes"
                    )))
                }
            }
            let pi = Iov::from_bytes(&raw);
            match pi.command() {
                PS_IOV_OPEN => self.open(pi.dst_id)?,
                PS_IOV_OPEN2 => {
                    self.open(pi.dst_id)?;
                    let p = u8::from(self.has_parent(pi.dst_id));
                    sk.write_all(&[p])
                        .map_err(io(from("write (OPEN2 answer)")))?;
                }
                PS_IOV_PARENT => {
                    let p = i32::from(self.has_parent(pi.dst_id));
                    sk.write_all(&p.to_le_bytes())
                        .map_err(io(from("write (PARENT answer)")))?;
                }
                c @ (PS_IOV_ADD_F | PS_IOV_ADD | PS_IOV_HOLE) => {
                    let flags = match c {
                        PS_IOV_ADD_F => pi.flags(),
                        PS_IOV_ADD => PE_PRESENT,
                        _ => PE_PARENT,
                    };
                    if self.open.is_none() {
                        // CRIU's "deprecated IO w/o open".
                        self.open(pi.dst_id)?;
                    }
                    let o = self.open.as_mut().expect("opened");
                    o.entries.push(pb::PagemapEntry {
                        vaddr: pi.vaddr,
                        compat_nr_pages: u32::try_from(pi.nr_pages).unwrap_or(0),
                        in_parent: None,
                        flags: Some(flags),
                        nr_pages: Some(pi.nr_pages),
                    });
                    if flags & PE_PRESENT != 0 {
                        let mut left = pi.nr_pages.checked_mul(PAGE_SIZE).ok_or_else(|| {
                            PsError::Protocol(format!("{} pages overflow", pi.nr_pages))
                        })?;
                        while left > 0 {
                            let n =
                                usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                            sk.read_exact(&mut buf[..n])
                                .map_err(io(from("read (page data)")))?;
                            o.pages
                                .write_all(&buf[..n])
                                .map_err(io("write of the pages image"))?;
                            left -= n as u64;
                            self.bytes += n as u64;
                        }
                    }
                }
                PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                    self.finish()?;
                    sk.write_all(&0i32.to_le_bytes())
                        .map_err(io(from("write (CLOSE answer)")))?;
                    // Wait for the client to hang up (no TIME_WAIT here), as CRIU does.
                    let mut c = [0u8; 1];
                    let _ = sk.read(&mut c);
                    return Ok(());
                }
                PS_IOV_GET => {
                    return Err(PsError::Protocol(
                        "GET (lazy pages) is not served by this page server".into(),
                    ))
                }
                other => return Err(PsError::Protocol(format!("unknown command {other:#x}"))),
            }
        }
    }
}

/// Reads until `buf` is full or the peer closes; returns the bytes read.
fn read_full(sk: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match sk.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Waits until `fd` is readable (a listening socket: a client is there), or `watch` is (then
/// returns false), checking for a termination signal (SIGTERM, SIGINT...) every 200 ms: cryo
/// catches them with SA_RESTART, so a plain blocking `accept` or `read` would never return.
pub fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    watch: Option<std::os::fd::BorrowedFd<'_>>,
) -> std::io::Result<bool> {
    wait_readable_until(fd, watch, None)
}

/// [`wait_readable`] until `deadline` at most: then an error of kind `TimedOut`.
pub fn wait_readable_until(
    fd: std::os::fd::BorrowedFd<'_>,
    watch: Option<std::os::fd::BorrowedFd<'_>>,
    deadline: Option<std::time::Instant>,
) -> std::io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    loop {
        if let Some(sig) = crate::sys::proc::interrupted() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                format!("interrupted by signal {sig}"),
            ));
        }
        let mut fds = vec![PollFd::new(&fd, PollFlags::IN)];
        if let Some(w) = &watch {
            fds.push(PollFd::new(w, PollFlags::IN));
        }
        let step = deadline.map_or(Duration::from_millis(200), |d| {
            d.saturating_duration_since(std::time::Instant::now())
                .min(Duration::from_millis(200))
        });
        let t = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(step.subsec_nanos()),
        };
        match poll(&mut fds, Some(&t)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds.get(1).is_some_and(|w| !w.revents().is_empty()) {
            return Ok(false);
        }
        if !fds[0].revents().is_empty() {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ));
        }
    }
}

/// `accept` that a termination signal ends (see [`wait_readable`]).
pub fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    use std::os::fd::AsFd;
    wait_readable(listener.as_fd(), None)?;
    listener.accept()
}

/// `cryo page-server`: listens, serves one client into `dir`, and returns.
pub fn run_server(
    dir: &Path,
    listener: TcpListener,
    timeout: Option<Duration>,
) -> Result<u64, PsError> {
    let (mut sk, peer) = accept(&listener).map_err(io("accept"))?;
    drop(listener);
    tracing::info!(%peer, "page server: client connected");
    let mut s = Server::new(ImageDir::create(dir)?);
    s.timeout = timeout;
    s.serve(&mut sk)?;
    tracing::info!(bytes = s.bytes, "page server: session over");
    Ok(s.bytes)
}

/// The environment variable in which `cryo page-server` finds a socket already listening
/// (its `-d` child, and the page servers the RPC service starts).
pub const LISTEN_FD_ENV: &str = "CRYO_PS_LISTEN_FD";

/// The pages a `dump --lazy-pages` keeps for the lazy-pages daemon (copied out of the tree
/// while it was frozen: the tree is gone once the dump ends, as with CRIU).
#[derive(Debug, Default)]
pub struct LazyStore {
    /// By process (its PID in the images): runs (address, bytes), in address order.
    procs: std::collections::HashMap<u32, Vec<(u64, Vec<u8>)>>,
    /// Bytes kept.
    pub bytes: u64,
}

impl LazyStore {
    /// Keeps the pages `data` of process `id` at `vaddr`.
    pub fn add(&mut self, id: u32, vaddr: u64, data: Vec<u8>) {
        self.bytes += data.len() as u64;
        let runs = self.procs.entry(id).or_default();
        runs.push((vaddr, data));
        runs.sort_by_key(|r| r.0);
    }

    /// `nr` pages of process `id` at `vaddr`, if one run holds them all.
    fn find(&self, id: u32, vaddr: u64, nr: u64) -> Option<&[u8]> {
        let runs = self.procs.get(&id)?;
        let i = runs.partition_point(|r| r.0 + r.1.len() as u64 <= vaddr);
        let (start, data) = runs.get(i)?;
        let from = usize::try_from(vaddr.checked_sub(*start)?).ok()?;
        let len = usize::try_from(nr.checked_mul(PAGE_SIZE)?).ok()?;
        data.get(from..from.checked_add(len)?)
    }
}

/// `dump --lazy-pages`' page server in a thread of its own, started once the pages are kept
/// and before the post-dump hook: the lazy-pages daemon of a restore that runs while the
/// dump still waits in its hook (`cryo migrate --lazy-pages`: the destination restores
/// before the source's commit) gets its pages then. Stopped ([`LazyServing::cancel`]) when
/// the dump fails.
pub struct LazyServing {
    thread: std::thread::JoinHandle<Result<u64, PsError>>,
    /// Written to (or closed) to stop the thread.
    stop: std::os::fd::OwnedFd,
    /// Set once the daemon connected.
    connected: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LazyServing {
    /// Serves `store` on `listener` in a thread; with `peer`, only to a daemon connecting
    /// from that address.
    pub fn start(
        listener: TcpListener,
        store: LazyStore,
        peer: Option<std::net::IpAddr>,
    ) -> Result<LazyServing, PsError> {
        let (watch, stop) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io("a pipe for the lazy pages' server")(e.into()))?;
        let connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = connected.clone();
        let thread = std::thread::Builder::new()
            .name("lazy-pages-server".into())
            .spawn(move || serve_lazy(listener, &store, Some(&watch), &c, peer))
            .map_err(io("starting the lazy pages' server"))?;
        Ok(LazyServing {
            thread,
            stop,
            connected,
        })
    }

    /// Stops serving (the dump failed) and waits for the thread.
    pub fn cancel(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }

    /// Waits until the daemon has every page (its `CLOSE`); one that has not connected
    /// within `connect_within` (if given) fails it (stopped). Returns the bytes sent.
    pub fn finish(self, connect_within: Option<Duration>) -> Result<u64, PsError> {
        let deadline = connect_within.map(|d| (d, std::time::Instant::now() + d));
        while !self.connected.load(std::sync::atomic::Ordering::Acquire)
            && !self.thread.is_finished()
        {
            if let Some((d, _)) = deadline.filter(|(_, at)| std::time::Instant::now() >= *at) {
                drop(self.stop);
                let _ = self.thread.join();
                return Err(PsError::Protocol(format!(
                    "the lazy-pages daemon did not connect within {} s",
                    d.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(PsError::Protocol("the lazy pages' server panicked".into())));
        drop(self.stop);
        r
    }
}

/// `dump --lazy-pages`: serves `GET`s from `store` to one lazy-pages daemon until its
/// `CLOSE` (CRIU's `cr_lazy_mem_dump`), given up (an error) once `stop` is readable or
/// closed; `connected` set once the daemon connected. Returns the bytes sent.
fn serve_lazy(
    listener: TcpListener,
    store: &LazyStore,
    stop: Option<&std::os::fd::OwnedFd>,
    connected: &std::sync::atomic::AtomicBool,
    allowed: Option<std::net::IpAddr>,
) -> Result<u64, PsError> {
    use std::os::fd::AsFd;
    let stopped = || PsError::Protocol("the lazy pages' server was stopped".into());
    tracing::info!(
        bytes = store.bytes,
        "lazy pages: waiting for the lazy-pages daemon"
    );
    let (mut sk, peer) = loop {
        if !wait_readable(listener.as_fd(), stop.map(|s| s.as_fd())).map_err(io("accept"))? {
            return Err(stopped());
        }
        let (sk, peer) = listener.accept().map_err(io("accept"))?;
        match allowed {
            Some(a) if peer.ip() != a => {
                // The tree's memory goes to the destination alone.
                tracing::warn!(%peer, allowed = %a, "lazy pages: a connection from another address was closed");
            }
            _ => break (sk, peer),
        }
    };
    drop(listener);
    connected.store(true, std::sync::atomic::Ordering::Release);
    let _ = sk.set_nodelay(true);
    // A daemon that stalls mid-request or stops reading fails the serving after the idle
    // timeout instead of holding the thread (and a failed dump's tree) for ever.
    sk.set_read_timeout(Some(DEFAULT_IDLE_TIMEOUT))
        .and_then(|()| sk.set_write_timeout(Some(DEFAULT_IDLE_TIMEOUT)))
        .map_err(io("setting the lazy pages' socket timeouts"))?;
    tracing::info!(%peer, "lazy pages: the lazy-pages daemon connected");
    let mut sent = 0u64;
    loop {
        if !wait_readable(sk.as_fd(), stop.map(|s| s.as_fd())).map_err(io("read"))? {
            return Err(stopped());
        }
        let mut raw = [0u8; Iov::SIZE];
        match read_full(&mut sk, &mut raw).map_err(io("read"))? {
            0 => {
                return Err(PsError::Protocol(format!(
                    "the lazy-pages daemon went away before CLOSE ({sent} bytes sent)"
                )))
            }
            Iov::SIZE => {}
            n => return Err(PsError::Protocol(format!("a record cut after {n} bytes"))),
        }
        let pi = Iov::from_bytes(&raw);
        match pi.command() {
            PS_IOV_GET => {
                let id = u32::try_from(pi.dst_id >> PS_TYPE_BITS).unwrap_or(u32::MAX);
                let Some(data) = store.find(id, pi.vaddr, pi.nr_pages) else {
                    return Err(PsError::Protocol(format!(
                        "GET of {} pages at {:#x} of process {id}: not among the lazy pages",
                        pi.nr_pages, pi.vaddr
                    )));
                };
                let a = Iov {
                    cmd: PE_PRESENT << PS_CMD_BITS | PS_IOV_ADD_F,
                    ..pi
                };
                sk.write_all(&a.to_bytes()).map_err(io("write"))?;
                sk.write_all(data).map_err(io("write (page data)"))?;
                sent += data.len() as u64;
            }
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                sk.write_all(&0i32.to_le_bytes())
                    .map_err(io("write (CLOSE answer)"))?;
                let mut c = [0u8; 1];
                let _ = sk.read(&mut c);
                tracing::info!(sent, "lazy pages: the lazy-pages daemon has every page");
                return Ok(sent);
            }
            other => {
                return Err(PsError::Protocol(format!(
                    "command {other:#x} to a lazy dump's page server"
                )))
            }
        }
    }
}

/// The `ADD_F` record of one pagemap entry of process `id` (`PE_PRESENT` ones are followed
/// by their pages).
pub fn add_record(id: u32, e: &pb::PagemapEntry) -> [u8; Iov::SIZE] {
    let flags = e.flags.unwrap_or(PE_PRESENT);
    Iov {
        cmd: flags << PS_CMD_BITS | PS_IOV_ADD_F,
        nr_pages: e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)),
        vaddr: e.vaddr,
        dst_id: pid_dst(id),
    }
    .to_bytes()
}

/// The sending end, for a dump or pre-dump.
pub struct Client {
    sk: TcpStream,
    /// Where it is connected (for messages).
    pub addr: String,
    /// Its read and write timeout (for messages).
    timeout: Duration,
}

impl Client {
    /// Connects to `addr`; a server that takes no data or gives no answer for `timeout`
    /// fails the session (a dump then leaves its tree running).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, PsError> {
        let sk = TcpStream::connect(addr).map_err(io(format!("to {addr}")))?;
        let _ = sk.set_nodelay(true);
        sk.set_read_timeout(Some(timeout))
            .and_then(|()| sk.set_write_timeout(Some(timeout)))
            .map_err(io(format!("to {addr} (setting its timeout)")))?;
        Ok(Client {
            sk,
            addr: addr.to_string(),
            timeout,
        })
    }

    /// "to ADDR (OP, ...)": the peer, what was done, and the timeout that bounds it.
    fn what(&self, op: &str) -> String {
        format!(
            "to {} ({op}; at most {} s without progress, --timeout)",
            self.addr,
            self.timeout.as_secs()
        )
    }

    fn send(&mut self, pi: Iov) -> Result<(), PsError> {
        let what = self.what("write");
        self.sk.write_all(&pi.to_bytes()).map_err(io(what))
    }

    fn recv<const N: usize>(&mut self) -> Result<[u8; N], PsError> {
        let mut b = [0u8; N];
        let what = self.what("read");
        self.sk.read_exact(&mut b).map_err(io(what))?;
        Ok(b)
    }

    /// `PARENT`: does the server's parent images directory hold pages of `id`?
    pub fn has_parent(&mut self, id: u32) -> Result<bool, PsError> {
        self.send(Iov {
            cmd: PS_IOV_PARENT,
            dst_id: pid_dst(id),
            ..Default::default()
        })?;
        Ok(i32::from_le_bytes(self.recv::<4>()?) != 0)
    }

    /// `OPEN2` of process `id`'s pagemap; returns whether the server has a parent for it.
    pub fn open(&mut self, id: u32) -> Result<bool, PsError> {
        self.send(Iov {
            cmd: PS_IOV_OPEN2,
            dst_id: pid_dst(id),
            ..Default::default()
        })?;
        Ok(self.recv::<1>()?[0] != 0)
    }

    /// `ADD_F` of one pagemap entry of process `id`; `data` (the pages, for `PE_PRESENT`)
    /// follows it.
    pub fn add(&mut self, id: u32, e: &pb::PagemapEntry, data: &[u8]) -> Result<(), PsError> {
        let what = self.what("write");
        self.sk.write_all(&add_record(id, e)).map_err(io(what))?;
        self.sk.write_all(data).map_err(io(self.what("page data")))
    }

    /// Writes bytes of the stream: page data that follows the last `add` (in pieces), or
    /// whole `add_record`s with their pages.
    pub fn data(&mut self, data: &[u8]) -> Result<(), PsError> {
        self.sk.write_all(data).map_err(io(self.what("page data")))
    }

    /// `GET` (lazy pages): `nr` pages of process `id` at `vaddr` into `buf`, from a `dump
    /// --lazy-pages` serving them. The answer is an `ADD_F` record naming what follows.
    pub fn get(&mut self, id: u32, vaddr: u64, nr: u64, buf: &mut [u8]) -> Result<(), PsError> {
        self.send(Iov {
            cmd: PS_IOV_GET,
            nr_pages: nr,
            vaddr,
            dst_id: pid_dst(id),
        })?;
        let a = Iov::from_bytes(&self.recv::<{ Iov::SIZE }>()?);
        if !matches!(a.command(), PS_IOV_ADD_F | PS_IOV_ADD) || a.nr_pages != nr || a.vaddr != vaddr
        {
            return Err(PsError::Protocol(format!(
                "asked for {nr} pages at {vaddr:#x} of process {id}, got {} at {:#x} (command {:#x})",
                a.nr_pages,
                a.vaddr,
                a.command()
            )));
        }
        let len = usize::try_from(nr * PAGE_SIZE).unwrap_or(usize::MAX);
        self.sk
            .read_exact(&mut buf[..len])
            .map_err(io(self.what("page data")))
    }

    /// `CLOSE`: waits until the server has written everything.
    pub fn close(mut self) -> Result<(), PsError> {
        self.send(Iov {
            cmd: PS_IOV_CLOSE,
            ..Default::default()
        })?;
        // The server writes what it received first: more time for that answer.
        if let Ok(Some(t)) = self.sk.read_timeout() {
            let _ = self.sk.set_read_timeout(Some(t * 6));
        }
        let st = i32::from_le_bytes(self.recv::<4>()?);
        if st != 0 {
            return Err(PsError::Protocol(format!(
                "the server ended with status {st}"
            )));
        }
        Ok(())
    }
}

/// The address `--address A --port N` names (default: all addresses for a server, loopback
/// for a client).
pub fn address(addr: Option<&str>, port: Option<&str>, server: bool) -> Result<String, String> {
    let port: u16 = port
        .ok_or("--port is needed")?
        .parse()
        .map_err(|_| "--port: not a port number".to_string())?;
    let a = addr.unwrap_or(if server { "0.0.0.0" } else { "127.0.0.1" });
    Ok(if a.contains(':') && !a.starts_with('[') {
        format!("[{a}]:{port}")
    } else {
        format!("{a}:{port}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let i = Iov {
            cmd: PE_PRESENT << 16 | PS_IOV_ADD_F,
            nr_pages: 3,
            vaddr: 0x7f00_0000_1000,
            dst_id: pid_dst(42),
        };
        let b = i.to_bytes();
        assert_eq!(Iov::from_bytes(&b), i);
        assert_eq!(i.command(), PS_IOV_ADD_F);
        assert_eq!(i.flags(), PE_PRESENT);
        assert_eq!(pagemap_name(i.dst_id).unwrap(), "pagemap-42.img");
        assert_eq!(pagemap_name(7 << 8 | 2).unwrap(), "pagemap-shmem-7.img");
        assert_eq!(pagemap_name(7 << 8 | 99), None);
        assert_eq!(address(None, Some("1"), false).unwrap(), "127.0.0.1:1");
        assert_eq!(address(Some("::1"), Some("5"), true).unwrap(), "[::1]:5");
    }
}
