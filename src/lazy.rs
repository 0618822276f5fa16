//! Lazy (post-copy) restore, CRIU's way: `cryo restore --lazy-pages` builds the tree without
//! the pages of its private anonymous memory, registers that memory with a userfaultfd made
//! inside each task and hands the fd (with a pidfd of the task) to `cryo lazy-pages`, the
//! daemon, over the unix socket `lazy-pages.socket` in the work directory (CRIU's socket and
//! message: the task's PID in the images as an `int`, then the fd by SCM_RIGHTS; a negative
//! PID for a zombie). The tree runs at once; the daemon serves each page on its first touch
//! (`UFFDIO_COPY`, or `UFFDIO_ZEROPAGE` for a page never saved) and pushes the others in the
//! background, from where the last fault was, until every page is in; then it exits.
//!
//! The pages come from the images (`pages-N.img`, through the `parent` chain) or, with
//! `--page-server`, from the page server a `cryo dump --lazy-pages` keeps running on the
//! source (`PS_IOV_GET`, `pageserver::Client::get`). The program's fork, mremap,
//! `MADV_DONTNEED` and munmap are followed (userfaultfd events): a child's memory gets its
//! own userfaultfd and the pages its parent had not received yet. A page source that fails
//! (the page server gone, an image unreadable) kills the restored tree and everything it
//! forked since, loudly: a process is never left running with memory it did not have.
//!
//! The daemon itself may die (SIGKILL, OOM): its userfaultfds would close with it, and the
//! kernel would then fill every page not served yet with zeros. So a keeper (`cryo
//! __lazy-keeper FD`, a child of the daemon) holds a copy of each userfaultfd and the
//! pidfds, sent over a socket pair as the daemon gets them; while it holds them, a fault
//! waits instead of reading zeros. When the daemon is done with a space it tells the keeper
//! to drop its copy; at a normal end it says so and the keeper exits. If the socket ends
//! without that (the daemon is gone), the keeper SIGKILLs the restored tree and everything
//! below it, then exits.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::image::{pb, ImageDir};
use crate::sys::mem::{Filled, Mapping, Uffd, UffdMsg};
use crate::sys::PAGE_SIZE;

/// CRIU's name for the socket, in the work directory.
pub const SOCKET_NAME: &str = "lazy-pages.socket";

/// The environment variable a daemon started by another cryo (`lazy-pages -d`, `receive
/// --lazy-pages`) finds its listening socket in.
pub const LISTEN_FD_ENV: &str = "CRYO_LAZY_LISTEN_FD";

/// The environment variable that lists what a daemon started by `receive --lazy-pages`
/// removes once every page is in (the received images: `R:PATH` a whole directory, `F:PATH`
/// a file, `E:PATH` a directory if it is empty; one a line).
pub const REMOVE_AFTER_ENV: &str = "CRYO_LAZY_REMOVE_AFTER";

/// The environment variable that says a daemon was started by `receive --lazy-pages`: the
/// PID of that receive. Such a daemon reads no image before the restore connects (receive
/// writes them until then), dies with receive until then (`PR_SET_PDEATHSIG`), and
/// afterwards tells receive it lives on alone ([`DETACHED_FD_ENV`]).
pub const RECEIVE_PID_ENV: &str = "CRYO_LAZY_RECEIVE_PID";

/// The environment variable naming the fd (a pipe's write end) a daemon started by receive
/// writes one byte to once the restore connected and it no longer dies with receive.
pub const DETACHED_FD_ENV: &str = "CRYO_LAZY_DETACHED_FD";

/// A daemon's tie to the `receive --lazy-pages` that started it (from its environment).
pub struct ReceiveTie {
    /// Receive's PID.
    pub parent: i32,
    /// Where to say "detached" (see [`DETACHED_FD_ENV`]).
    pub detached: Option<OwnedFd>,
}

impl ReceiveTie {
    /// The tie, when this daemon was started by receive (`RECEIVE_PID_ENV` is set).
    pub fn from_env() -> Option<ReceiveTie> {
        let parent = std::env::var(RECEIVE_PID_ENV).ok()?.parse().ok()?;
        let detached = std::env::var(DETACHED_FD_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(crate::sys::fd::adopt);
        Some(ReceiveTie { parent, detached })
    }

    /// Until the restore connects, this daemon dies with receive (killed: nothing of the
    /// tree exists yet, and no one would ever connect). Fails if receive is gone already.
    fn bind(&self) -> Result<(), LazyError> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .map_err(|e| io_err("prctl(PR_SET_PDEATHSIG)")(e.into()))?;
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        if ppid != self.parent {
            return Err(LazyError::ReceiveGone(self.parent));
        }
        Ok(())
    }

    /// The restore connected: this daemon now outlives receive (the tree's pages are its to
    /// bring), and says so to receive.
    fn release(self) -> Result<(), LazyError> {
        rustix::process::set_parent_process_death_signal(None)
            .map_err(|e| io_err("prctl(PR_SET_PDEATHSIG)")(e.into()))?;
        if let Some(fd) = self.detached {
            rustix::io::write(&fd, &[1]).map_err(|e| io_err("telling receive")(e.into()))?;
        }
        Ok(())
    }
}

/// Removes what [`REMOVE_AFTER_ENV`] lists: only once every page is in (the tree has its
/// memory). A daemon that failed leaves the received images where they are: a restore may
/// be tried again from them.
pub fn remove_after() {
    let Ok(v) = std::env::var(REMOVE_AFTER_ENV) else {
        return;
    };
    for l in v.lines() {
        let r = match l.split_at_checked(2) {
            Some(("R:", p)) => std::fs::remove_dir_all(p),
            Some(("F:", p)) => std::fs::remove_file(p),
            Some(("E:", p)) => std::fs::remove_dir(p),
            _ => continue,
        };
        if let Err(e) = r {
            tracing::warn!(path = l, error = %e, "lazy pages: cannot remove the received images");
        }
    }
}

/// Pages pushed in the background per step (between two looks at the page faults).
/// (4 MiB: a look at the faults costs about what copying 100 KiB does; a fault waits for at
/// most one step, ~1 ms.)
const PUSH_BYTES: u64 = 4 << 20;
/// Pages served around a fault, from the faulting one on (a program reads memory in order
/// more often than not).
const FAULT_BYTES: u64 = 16 * PAGE_SIZE;

/// Why a lazy restore failed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("lazy pages: {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no lazy-pages daemon listens at {path}: start `cryo lazy-pages -D DIR` (same images and work directory) before `cryo restore --lazy-pages`")]
    NoDaemon {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the page source is lost ({0}); the restored tree was killed")]
    Lost(String),
    #[error("the pages images are damaged ({0}); the restored tree was killed")]
    Damaged(String),
    #[error("cryo receive (pid {0}) that started this daemon is gone before a restore connected: nothing to serve")]
    ReceiveGone(i32),
    #[error("the restore stopped before it handed over every process ({got} of {want}); what it had restored was killed")]
    Incomplete { got: usize, want: usize },
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    PageServer(#[from] crate::pageserver::PsError),
    #[error(transparent)]
    Memory(#[from] crate::kinds::memory::MemoryError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LazyError {
    let what = what.into();
    move |source| LazyError::Io { what, source }
}

/// The images a lazy restore leaves to its daemon to verify: the pages images, whose blocks
/// the daemon hashes against the manifest in the background while it serves them.
pub fn verified_by_daemon(name: &str) -> bool {
    name.starts_with("pages-")
}

/// Starts hashing the pages images of `dir` against its manifest on a thread of its own;
/// the result arrives on the returned channel (none to wait for without a manifest).
fn verify_in_background(
    dir: &Path,
) -> Result<Option<std::sync::mpsc::Receiver<Result<(), String>>>, LazyError> {
    let Some(mut m) = crate::image::manifest::Manifest::load(dir)? else {
        return Ok(None);
    };
    m.files.retain(|n, _| verified_by_daemon(n));
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(m.verify(&dir, 1).map_err(|e| e.to_string()));
    });
    Ok(Some(rx))
}

/// The socket path for work directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// The restore's end: one connection to the daemon, one message per task.
pub struct Sink {
    sk: UnixStream,
}

impl Sink {
    /// Connects to the daemon's socket at `path`.
    pub fn connect(path: &Path) -> Result<Sink, LazyError> {
        let sk = UnixStream::connect(path).map_err(|source| LazyError::NoDaemon {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Sink { sk })
    }

    fn send_raw(&self, vpid: i32, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let buf = vpid.to_ne_bytes();
        loop {
            match crate::sys::scm::send_rights(self.sk.as_fd(), &buf, fds, None) {
                Ok(4) => return Ok(()),
                Ok(n) => return Err(io::Error::other(format!("sent {n} of 4 bytes"))),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands the task `vpid` (its PID in the images) over: its userfaultfd and a pidfd.
    pub fn send(&self, vpid: u32, uffd: &OwnedFd, pidfd: &OwnedFd) -> io::Result<()> {
        let vpid = i32::try_from(vpid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.send_raw(vpid, &[uffd.as_fd(), pidfd.as_fd()])
    }

    /// A zombie of the tree: nothing to serve (CRIU sends its PID negated).
    pub fn send_zombie(&self, vpid: u32) -> io::Result<()> {
        let vpid = i32::try_from(vpid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.send_raw(-vpid, &[])
    }
}

/// Where the daemon's pages come from.
enum Source {
    /// The images: the pages images mapped (by index), read-only. `UFFDIO_COPY` copies from
    /// these mappings straight into the restored memory (no copy through a buffer first);
    /// only the kernel reads them, so an image that shrinks under the daemon makes that
    /// ioctl fail (`EFAULT`: the source is lost), never a `SIGBUS` here.
    Local(Vec<Mapping>),
    /// The images for what they hold, and a page server for the pages they lack.
    Remote(Vec<Mapping>, crate::pageserver::Client),
}

/// A run of pages still to bring: `[start, end)` where it is mapped now, `orig` the address
/// its data was saved at (mremap moves the first), and where that data is.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    orig: u64,
    /// `Some((file index, offset of orig))` in a pages image; `None`: on the page server.
    file: Option<(usize, u64)>,
}

/// One address space being served.
struct Task {
    /// Its number for the keeper.
    id: u64,
    uffd: Uffd,
    /// The process whose saved pages these are (its PID in the images).
    vpid: u32,
    /// The restored process (none for a child the program forked: found at kill time).
    pidfd: Option<OwnedFd>,
    /// Sorted, disjoint.
    runs: Vec<Run>,
    /// Where the background push goes on.
    cursor: u64,
    /// Page faults read and not served yet (page addresses).
    pending: VecDeque<u64>,
    /// The memory is gone (the process exited).
    gone: bool,
}

impl Task {
    /// Drops `[s, e)` from the runs (brought, unmapped or dropped by the program).
    fn cut(&mut self, s: u64, e: u64) {
        let mut out = Vec::with_capacity(self.runs.len() + 1);
        for r in self.runs.drain(..) {
            if r.end <= s || r.start >= e {
                out.push(r);
                continue;
            }
            if r.start < s {
                out.push(Run { end: s, ..r });
            }
            if r.end > e {
                let d = e - r.start;
                out.push(Run {
                    start: e,
                    orig: r.orig + d,
                    file: r.file.map(|(f, o)| (f, o + d)),
                    ..r
                });
            }
        }
        self.runs = out;
    }

    /// `mremap` moved `[from, from + len)` to `to`.
    fn remap(&mut self, from: u64, to: u64, len: u64) {
        let end = from + len;
        let mut moved = Vec::new();
        for r in &self.runs {
            let (s, e) = (r.start.max(from), r.end.min(end));
            if s < e {
                let d = s - r.start;
                moved.push(Run {
                    start: to + (s - from),
                    end: to + (e - from),
                    orig: r.orig + d,
                    file: r.file.map(|(f, o)| (f, o + d)),
                });
            }
        }
        self.cut(from, end);
        // Whatever was at the destination was unmapped by the move.
        self.cut(to, to + len);
        self.runs.extend(moved);
        self.runs.sort_by_key(|r| r.start);
    }

    fn run_at(&self, addr: u64) -> Option<Run> {
        let i = self.runs.partition_point(|r| r.end <= addr);
        self.runs.get(i).filter(|r| r.start <= addr).copied()
    }

    fn done(&self) -> bool {
        self.gone || (self.runs.is_empty() && self.pending.is_empty())
    }
}

/// The hidden command of the keeper (see the module's comment).
pub const KEEPER_CMD: &str = "__lazy-keeper";

/// The daemon's end of its keeper's socket.
struct Keeper {
    sk: UnixStream,
    /// The keeper process (reaped at the end).
    child: std::process::Child,
}

impl Keeper {
    /// Starts `cryo __lazy-keeper FD`, FD being its end of a new socket pair.
    fn start() -> Result<Keeper, LazyError> {
        let (ours, theirs) = UnixStream::pair().map_err(io_err("socketpair for the keeper"))?;
        crate::sys::fd::set_cloexec(theirs.as_fd(), false).map_err(io_err("keeper socket"))?;
        let child = std::process::Command::new(
            std::env::current_exe().map_err(io_err("cannot find cryo itself"))?,
        )
        .arg(KEEPER_CMD)
        .arg(theirs.as_raw_fd().to_string())
        // Its own process group: a terminal's Ctrl-C (or a signal to the daemon's group)
        // must not take the keeper down with the daemon it watches.
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(io_err("starting the keeper"))?;
        drop(theirs);
        tracing::info!(keeper = child.id(), "lazy pages: keeper started");
        Ok(Keeper { sk: ours, child })
    }

    fn send(&self, op: u8, id: u64, fds: &[BorrowedFd<'_>]) -> Result<(), LazyError> {
        let mut b = [0u8; 9];
        b[0] = op;
        b[1..].copy_from_slice(&id.to_le_bytes());
        match crate::sys::scm::send_rights(self.sk.as_fd(), &b, fds, None) {
            Ok(9) => Ok(()),
            Ok(n) => Err(io_err("to the keeper")(io::Error::other(format!(
                "sent {n} of 9 bytes"
            )))),
            Err(e) => Err(io_err("to the keeper")(e)),
        }
    }

    /// The keeper holds `uffd` (and `pidfd`) as number `id`.
    fn hold(
        &self,
        id: u64,
        uffd: BorrowedFd<'_>,
        pidfd: Option<BorrowedFd<'_>>,
    ) -> Result<(), LazyError> {
        let mut fds = vec![uffd];
        fds.extend(pidfd);
        self.send(b'A', id, &fds)
    }

    /// The keeper lets `id` go (every page of it is in, or it exited).
    fn release(&self, id: u64) -> Result<(), LazyError> {
        self.send(b'C', id, &[])
    }

    /// A normal end: the keeper lets everything go and exits.
    fn done(mut self) {
        let _ = self.send(b'D', 0, &[]);
        drop(self.sk);
        let _ = self.child.wait();
    }
}

/// The keeper's main (`cryo __lazy-keeper FD`): holds what the daemon sends on FD until it
/// says it is done; if FD ends first, SIGKILLs every process it holds a pidfd of and every
/// process below them.
pub fn keep(fd: i32) -> io::Result<()> {
    let _kept = crate::sys::fd::close_all_except(&[fd])?;
    let sk = crate::sys::fd::adopt(fd);
    let mut held: std::collections::HashMap<u64, Vec<OwnedFd>> = std::collections::HashMap::new();
    let mut pidfds: Vec<OwnedFd> = Vec::new();
    loop {
        let mut b = [0u8; 9];
        let (n, mut fds) = match crate::sys::scm::recv_rights(sk.as_fd(), &mut b) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => (0, Vec::new()),
        };
        if n == 9 {
            let id = u64::from_le_bytes(b[1..].try_into().unwrap_or([0; 8]));
            match b[0] {
                b'A' => {
                    if fds.len() > 1 {
                        pidfds.push(fds.remove(1));
                    }
                    held.insert(id, fds);
                }
                b'C' => {
                    held.remove(&id);
                }
                b'D' => return Ok(()),
                _ => {}
            }
            continue;
        }
        // The daemon is gone without finishing: the tree must not read zeros.
        let roots: Vec<i32> = pidfds.iter().filter_map(pidfd_pid).collect();
        for pid in descendants(&roots) {
            let _ = crate::sys::proc::kill(pid, libc::SIGKILL);
        }
        for p in &pidfds {
            let _ = crate::sys::fd::pidfd_kill(p.as_fd(), libc::SIGKILL);
        }
        drop(held);
        return Ok(());
    }
}

/// What the daemon did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DaemonReport {
    /// Processes handed over (zombies included) and address spaces served (forks included).
    pub tasks: usize,
    pub spaces: usize,
    /// Pages brought on a fault, pushed in the background, and zero pages given.
    pub pages_faulted: u64,
    pub pages_pushed: u64,
    pub zero_pages: u64,
}

/// Binds the daemon's socket at `path` (a stale socket file is replaced).
pub fn listen(path: &Path) -> Result<UnixListener, LazyError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(io_err(format!("cannot listen at {}", path.display())))
}

/// `cryo lazy-pages`: serves one restore of the images in `dir` (the tree's size comes from
/// its `pstree.img`), its pages from there or from the page server at `page_server`.
pub fn serve(
    dir: &Path,
    listener: UnixListener,
    page_server: Option<&str>,
    receive: Option<ReceiveTie>,
) -> Result<DaemonReport, LazyError> {
    let read = || -> Result<(ImageDir, usize), LazyError> {
        let images = ImageDir::open(dir)?;
        let want = images
            .read::<pb::PstreeEntry>("pstree.img", crate::image::PSTREE)?
            .len();
        Ok((images, want))
    };
    // Images that are there are read (and refused) before anything connects. Those of
    // `receive --lazy-pages` (which starts the daemon with the final round) are still being
    // written until the restore connects: read only then.
    let early = match &receive {
        Some(r) => {
            r.bind()?;
            None
        }
        None if dir.join("pstree.img").exists() => Some(read()?),
        None => None,
    };
    crate::pageserver::wait_readable(listener.as_fd(), None).map_err(io_err("accept"))?;
    let (conn, _) = listener.accept().map_err(io_err("accept"))?;
    if let Some(r) = receive {
        r.release()?;
    }
    let (images, want) = match early {
        Some(e) => e,
        None => read()?,
    };
    tracing::info!(processes = want, "lazy pages: the restore connected");
    let keeper = Keeper::start()?;
    let verifying = match page_server {
        None => verify_in_background(dir)?,
        Some(_) => None,
    };
    let source = match page_server {
        Some(a) => Source::Remote(
            Vec::new(),
            crate::pageserver::Client::connect(a, crate::pageserver::DEFAULT_IDLE_TIMEOUT)?,
        ),
        None => Source::Local(Vec::new()),
    };
    let mut d = Daemon {
        images,
        source,
        paths: Vec::new(),
        tasks: Vec::new(),
        report: DaemonReport::default(),
        buf: vec![0u8; usize::try_from(PUSH_BYTES).unwrap_or(1 << 20)],
        push_after: push_delay().map(|d| Instant::now() + d),
        next: 0,
        keeper,
        next_id: 0,
        verifying,
    };
    match d.run(conn, want) {
        Ok(()) => {
            d.keeper.done();
            if let Source::Remote(_, ps) = d.source {
                ps.close()?;
            }
            tracing::info!(
                faulted = d.report.pages_faulted,
                pushed = d.report.pages_pushed,
                zero = d.report.zero_pages,
                "lazy pages: every page is in"
            );
            Ok(d.report)
        }
        Err(e) => {
            tracing::error!(error = %e, "lazy pages: killing the restored tree");
            d.kill_all();
            Err(e)
        }
    }
}

/// `CRYO_FAULT_PAUSE=lazy-push:<seconds>` (tests): no background push for that long, so the
/// tree's own touches are what bring its pages meanwhile.
fn push_delay() -> Option<Duration> {
    let v = std::env::var("CRYO_FAULT_PAUSE").ok()?;
    let (s, t) = v.split_once(':')?;
    (s == "lazy-push").then(|| t.parse().ok().map(Duration::from_secs))?
}

struct Daemon {
    images: ImageDir,
    source: Source,
    /// The pages images opened, by index.
    paths: Vec<PathBuf>,
    tasks: Vec<Task>,
    report: DaemonReport,
    buf: Vec<u8>,
    push_after: Option<Instant>,
    /// Round robin of the background push.
    next: usize,
    /// Holds a copy of every userfaultfd (see the module's comment).
    keeper: Keeper,
    /// The next task's number for the keeper.
    next_id: u64,
    /// The pages images' check against the manifest, while it runs (`verify_in_background`).
    verifying: Option<std::sync::mpsc::Receiver<Result<(), String>>>,
}

impl Daemon {
    fn run(&mut self, conn: UnixStream, want: usize) -> Result<(), LazyError> {
        let mut conn = Some(conn);
        let mut got = 0usize;
        loop {
            if let Some(rx) = &self.verifying {
                match rx.try_recv() {
                    Ok(Ok(())) => {
                        tracing::info!("lazy pages: the pages images match the manifest");
                        self.verifying = None;
                    }
                    Ok(Err(e)) => return Err(LazyError::Damaged(e)),
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        return Err(LazyError::Damaged("the check stopped".into()))
                    }
                }
            }
            // Processes stay known until the images are verified: damage found late must
            // still kill them.
            let verifying = self.verifying.is_some();
            let over = |t: &Task| t.done() && (!verifying || t.gone);
            for t in self.tasks.iter().filter(|t| over(t)) {
                self.keeper.release(t.id)?;
            }
            self.tasks.retain(|t| !over(t));
            if got == want && self.tasks.is_empty() {
                return Ok(());
            }
            let pushing = self.tasks.iter().any(|t| !t.runs.is_empty());
            let timeout = match self.push_after {
                _ if !pushing => None,
                Some(t) => {
                    let now = Instant::now();
                    if t > now {
                        Some(t - now)
                    } else {
                        self.push_after = None;
                        Some(Duration::ZERO)
                    }
                }
                None => Some(Duration::ZERO),
            };
            let mut fds: Vec<rustix::event::PollFd<'_>> = Vec::new();
            if let Some(c) = &conn {
                fds.push(rustix::event::PollFd::new(c, rustix::event::PollFlags::IN));
            }
            for t in &self.tasks {
                fds.push(rustix::event::PollFd::new(
                    t.uffd.fd(),
                    rustix::event::PollFlags::IN,
                ));
            }
            // A process that exits needs nothing more (its pidfd turns readable).
            let watched: Vec<usize> = (0..self.tasks.len())
                .filter(|&i| self.tasks[i].pidfd.is_some())
                .collect();
            for &i in &watched {
                if let Some(p) = &self.tasks[i].pidfd {
                    fds.push(rustix::event::PollFd::new(p, rustix::event::PollFlags::IN));
                }
            }
            // Look at the images' check again soon while it runs.
            let timeout = match (&self.verifying, timeout) {
                (Some(_), None) => Some(Duration::from_millis(20)),
                (Some(_), Some(t)) => Some(t.min(Duration::from_millis(20))),
                (None, t) => t,
            };
            let ts = timeout.map(|d| rustix::event::Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_err("poll")(e.into())),
            }
            let mut ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            let exited = ready.split_off(ready.len() - watched.len());
            for (&i, e) in watched.iter().zip(exited) {
                if e {
                    tracing::info!(vpid = self.tasks[i].vpid, "lazy pages: a process exited");
                    self.tasks[i].gone = true;
                }
            }
            let mut ready = ready.into_iter();
            if conn.is_some() && ready.next() == Some(true) {
                let c = conn.as_ref().expect("checked");
                let mut b = [0u8; 4];
                let (n, mut rights) =
                    crate::sys::scm::recv_rights(c.as_fd(), &mut b).map_err(io_err("recvmsg"))?;
                if n == 0 {
                    conn = None;
                    if got < want {
                        return Err(LazyError::Incomplete { got, want });
                    }
                } else if n < 4 {
                    return Err(io_err("a message from the restore")(io::Error::other(
                        "cut short",
                    )));
                } else {
                    got += 1;
                    self.report.tasks += 1;
                    let vpid = i32::from_ne_bytes(b);
                    if vpid > 0 {
                        if rights.is_empty() {
                            return Err(io_err(format!("process {vpid}"))(io::Error::other(
                                "no userfaultfd came with it",
                            )));
                        }
                        let uffd = rights.remove(0);
                        let pidfd = (!rights.is_empty()).then(|| rights.remove(0));
                        self.add_task(vpid.unsigned_abs(), uffd, pidfd)?;
                    }
                }
            }
            let mut forks = Vec::new();
            for (t, r) in self.tasks.iter_mut().zip(ready) {
                if !r {
                    continue;
                }
                let msgs = t
                    .uffd
                    .read_msgs()
                    .map_err(io_err("reading the userfaultfd"))?;
                for m in msgs {
                    match m {
                        UffdMsg::PageFault { addr } => t.pending.push_back(addr & !(PAGE_SIZE - 1)),
                        UffdMsg::Fork { uffd } => forks.push(Task {
                            id: 0,
                            uffd: Uffd::from_tracking(uffd),
                            vpid: t.vpid,
                            pidfd: None,
                            runs: t.runs.clone(),
                            cursor: t.cursor,
                            pending: VecDeque::new(),
                            gone: false,
                        }),
                        UffdMsg::Remap { from, to, len } => t.remap(from, to, len),
                        UffdMsg::Remove { start, end } => t.cut(start, end),
                        UffdMsg::Other(e) => {
                            tracing::debug!(event = e, "lazy pages: event ignored");
                        }
                    }
                }
            }
            self.report.spaces += forks.len();
            for mut f in forks {
                f.id = self.next_id;
                self.next_id += 1;
                self.keeper.hold(f.id, f.uffd.fd().as_fd(), None)?;
                self.tasks.push(f);
            }
            for i in 0..self.tasks.len() {
                self.serve_faults(i)?;
            }
            if self.push_after.is_none() {
                self.push_one()?;
            }
        }
    }

    fn add_task(
        &mut self,
        vpid: u32,
        uffd: OwnedFd,
        pidfd: Option<OwnedFd>,
    ) -> Result<(), LazyError> {
        let plan = crate::kinds::memory::lazy_plan(&self.images, vpid)?;
        let mut runs = Vec::new();
        for (path, rs) in plan.local {
            let idx = match self.paths.iter().position(|p| *p == path) {
                Some(i) => i,
                None => {
                    let f = std::fs::File::open(&path)
                        .map_err(io_err(format!("open {}", path.display())))?;
                    let len = f
                        .metadata()
                        .map_err(io_err(format!("stat {}", path.display())))?
                        .len();
                    let len = usize::try_from(len).map_err(|_| {
                        io_err(format!("mmap {}", path.display()))(io::Error::from_raw_os_error(
                            libc::EFBIG,
                        ))
                    })?;
                    let map = Mapping::file_ro(&f, len)
                        .map_err(io_err(format!("mmap {}", path.display())))?;
                    map.advise(libc::MADV_SEQUENTIAL);
                    match &mut self.source {
                        Source::Local(v) | Source::Remote(v, _) => v.push(map),
                    }
                    self.paths.push(path);
                    self.paths.len() - 1
                }
            };
            for (o, a, l) in rs {
                runs.push(Run {
                    start: a,
                    end: a + l,
                    orig: a,
                    file: Some((idx, o)),
                });
            }
        }
        if !plan.remote.is_empty() && !matches!(self.source, Source::Remote(..)) {
            return Err(LazyError::Lost(format!(
                "process {vpid}: its pages at {:#x} are on a page server; start `cryo lazy-pages --page-server --address A --port N`",
                plan.remote[0].0
            )));
        }
        for (s, e) in plan.remote {
            runs.push(Run {
                start: s,
                end: e,
                orig: s,
                file: None,
            });
        }
        runs.sort_by_key(|r| r.start);
        let pages: u64 = runs.iter().map(|r| (r.end - r.start) / PAGE_SIZE).sum();
        tracing::info!(vpid, pages, "lazy pages: a process was handed over");
        self.report.spaces += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.keeper
            .hold(id, uffd.as_fd(), pidfd.as_ref().map(AsFd::as_fd))?;
        self.tasks.push(Task {
            id,
            uffd: Uffd::from_tracking(uffd),
            vpid,
            pidfd,
            runs,
            cursor: 0,
            pending: VecDeque::new(),
            gone: false,
        });
        Ok(())
    }

    /// Brings `[at, at + len)` (inside one run) into task `i`. Returns false when the memory
    /// is changing (events pending: retry after reading them). Pages of the images go from
    /// their mapping to the task in one `UFFDIO_COPY`; those of a page server through
    /// `self.buf`.
    fn bring(&mut self, i: usize, r: Run, at: u64, len: u64) -> Result<bool, LazyError> {
        let n = usize::try_from(len).unwrap_or(0);
        let d = at - r.start;
        let t = &mut self.tasks[i];
        let (src, file): (&[u8], Option<usize>) = match (r.file, &mut self.source) {
            (Some((f, o)), Source::Local(maps) | Source::Remote(maps, _)) => {
                let bytes = maps[f].bytes();
                let s = usize::try_from(o + d).ok();
                match s.and_then(|s| bytes.get(s..s.checked_add(n)?)) {
                    Some(b) => (b, Some(f)),
                    None => {
                        return Err(LazyError::Lost(format!(
                            "{} is shorter than its pagemap says",
                            self.paths[f].display()
                        )))
                    }
                }
            }
            (None, Source::Remote(_, ps)) => {
                let buf = &mut self.buf[..n];
                ps.get(t.vpid, r.orig + d, len / PAGE_SIZE, buf)
                    .map_err(|e| LazyError::Lost(format!("page server: {e}")))?;
                (&self.buf[..n], None)
            }
            (None, Source::Local(_)) => return Err(LazyError::Lost("no page server".into())),
        };
        let filled = t.uffd.copy_wake(at, src).map_err(|e| match file {
            // The image shrank under its mapping.
            Some(f) if e.raw_os_error() == Some(libc::EFAULT) => LazyError::Lost(format!(
                "reading {}: it is shorter than when it was opened",
                self.paths[f].display()
            )),
            _ => io_err(format!("UFFDIO_COPY at {at:#x}"))(e),
        })?;
        Ok(match filled {
            Filled::Done | Filled::Gone => {
                t.cut(at, at + len);
                true
            }
            Filled::Again { done } => {
                t.cut(at, at + u64::try_from(done).unwrap_or(0));
                false
            }
            Filled::Exited => {
                t.gone = true;
                true
            }
        })
    }

    fn serve_faults(&mut self, i: usize) -> Result<(), LazyError> {
        while let Some(addr) = self.tasks[i].pending.pop_front() {
            let t = &mut self.tasks[i];
            if t.gone {
                return Ok(());
            }
            let ok = match t.run_at(addr) {
                Some(r) => {
                    let len = FAULT_BYTES.min(r.end - addr);
                    t.cursor = addr + len;
                    let ok = self.bring(i, r, addr, len)?;
                    if ok {
                        self.report.pages_faulted += len / PAGE_SIZE;
                    }
                    ok
                }
                None => match t
                    .uffd
                    .zeropage(addr, PAGE_SIZE)
                    .map_err(|e| io_err(format!("UFFDIO_ZEROPAGE at {addr:#x}"))(e))?
                {
                    Filled::Again { .. } => false,
                    Filled::Exited => {
                        t.gone = true;
                        true
                    }
                    Filled::Done | Filled::Gone => {
                        self.report.zero_pages += 1;
                        true
                    }
                },
            };
            if !ok {
                // An event is pending: served again once it is read.
                self.tasks[i].pending.push_front(addr);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Pushes one step of background pages into one task (round robin).
    fn push_one(&mut self) -> Result<(), LazyError> {
        let n = self.tasks.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let t = &self.tasks[i];
            if t.gone || t.runs.is_empty() {
                continue;
            }
            let j = t.runs.partition_point(|r| r.end <= t.cursor);
            let r = t.runs.get(j).copied().unwrap_or(t.runs[0]);
            let at = r.start.max(t.cursor.min(r.end.saturating_sub(PAGE_SIZE)));
            let at = if at >= r.end { r.start } else { at };
            let len = PUSH_BYTES.min(r.end - at);
            self.tasks[i].cursor = at + len;
            if self.bring(i, r, at, len)? {
                self.report.pages_pushed += len / PAGE_SIZE;
            }
            self.next = i + 1;
            return Ok(());
        }
        Ok(())
    }

    /// The page source is lost: kill every restored process and what it forked since.
    fn kill_all(&mut self) {
        let mut pids = Vec::new();
        for t in &self.tasks {
            if let Some(p) = &t.pidfd {
                if let Some(pid) = pidfd_pid(p) {
                    pids.push(pid);
                }
            }
        }
        for pid in descendants(&pids) {
            let _ = crate::sys::proc::kill(pid, libc::SIGKILL);
        }
        for t in &self.tasks {
            if let Some(p) = &t.pidfd {
                let _ = crate::sys::fd::pidfd_kill(p.as_fd(), libc::SIGKILL);
            }
        }
    }
}

/// The PID a pidfd refers to (its fdinfo's `Pid:`), if the process still exists.
fn pidfd_pid(p: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", p.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// Every process below `roots` (children of children...), found through /proc.
pub(crate) fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(st) = crate::procfs::stat(pid) {
                parent_of.push((pid, st.ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<i32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) && !roots.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}
