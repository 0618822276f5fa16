//! Live migration in one command: `cryo migrate -t PID --to ADDR:PORT` on the source, `cryo
//! receive --port PORT [-D DIR]` on the destination.
//!
//! The source copies the tree's memory while it runs (iterative pre-copy: round 1 is a
//! `pre-dump` of every page, each later round one of the pages written since, tracked with
//! uffd-wp, `memtrack`), until the set of written pages stops shrinking, is small, or
//! `--max-rounds` is reached. Then the final dump freezes the tree and sends only the pages
//! written since the last round and the other images; the destination restores from them,
//! and only once it reports the restored tree running is the source killed. Any failure
//! before that (the destination refusing, dying, its restore failing) leaves the source
//! running as it was, tracking removed; the destination removes what it received.
//!
//! The hand-over commits once: the destination restores the tree but holds it before it
//! runs and says `Restored`; the source kills its tree (`SIGKILL`, frozen: it never runs
//! again) and says `Commit`; only then does the destination let its copy run (`Running`).
//! A destination that hears no `Commit` (the link broke, the source gave up or cannot kill
//! its tree, `--timeout` passed) kills its copy: two copies never run. The destination
//! holds its copy for the commit before its network opens (lock lifted, connections out of
//! repair mode), so a copy killed then sends no reset to peers the source still serves.
//! What fails on the destination after the commit (its network opening, the release) kills
//! its copy too: both sides fail naming the stage (so does a source that hears nothing
//! from the destination after the commit), and the destination keeps the received images,
//! the tree's only copy left, for another restore. Every wait of the source while
//! its tree is frozen is bounded by `--timeout` (default 10 s): past it the tree runs on
//! where it was and the error names the stage that stalled.
//!
//! The wire: one TCP port on the destination. The first connection is the control channel:
//! messages of a little-endian `u32` length and a JSON [`Msg`], a file's bytes following its
//! `File` message. Each round's pages come on a connection of their own, in CRIU's
//! page-server protocol (`pageserver`), into a directory of the round (`r1`, `r2`, ...,
//! `final`, each with a `parent` link to the one before), accepted after the destination
//! said `Ready` to that round.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dump::{self, DumpOpts};
use crate::image::ImageDir;
use crate::notify::{Notifier, NotifyError};
use crate::restore::{self, RestoreOpts};
use crate::sys::PAGE_SIZE;

/// Control messages.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Msg {
    /// Source → destination, first: what the restore needs to know.
    Hello {
        version: u32,
        tcp_established: bool,
        shell_job: bool,
        /// The source's `--timeout` (seconds): how long the destination holds a restored
        /// tree waiting for `Commit`.
        #[serde(default)]
        timeout_s: Option<u32>,
        /// The root's PID in the images: a destination restoring in full stages its
        /// memory as the rounds come (`crate::stage`).
        #[serde(default)]
        root: Option<u32>,
        /// `migrate --lazy-pages` (post-copy): the port on the source's address (the control
        /// connection's) where the source serves the tree's memory; the destination
        /// restores lazily, its lazy-pages daemon taking the pages from there.
        #[serde(default)]
        lazy_port: Option<u16>,
    },
    /// Source → destination: the pages of round `name` come next, on a new connection.
    Round { name: String },
    /// Source → destination: an image of the final dump; `len` bytes follow.
    File { name: String, len: u64 },
    /// Source → destination: every image is there: restore.
    Restore,
    /// Destination → source: go on.
    Ready,
    /// Destination → source: the tree is restored, held before it runs, until `Commit`.
    Restored { pid: i32, restore_us: u64 },
    /// Source → destination: the source's tree is killed: let yours run.
    Commit,
    /// Destination → source: the restored tree runs.
    Running { pid: i32, restore_us: u64 },
    /// Either way: it failed (the destination has removed what it received).
    Error { what: String },
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the destination refused: {0}")]
    Refused(String),
    #[error("{stage}: nothing from the other side for {secs} s (--timeout)")]
    Timeout { stage: String, secs: u64 },
    #[error("the tree is lost: the source was killed but the destination did not take the commit ({0}); it kills its copy")]
    Lost(String),
    /// The destination failed after the commit (its copy killed, the source's gone).
    #[error(
        "the tree is lost: the source was killed at the commit, then the destination failed: {0}"
    )]
    FailedAfterCommit(String),
    /// No word from the destination after the commit: its copy runs there or nowhere.
    #[error("the destination did not confirm that the tree runs after the commit ({why}): the source is gone; check pid {pid} on the destination")]
    Unconfirmed { why: String, pid: i32 },
    /// The destination's restore failed after the source's commit: the received images are
    /// the tree's only copy now, and stay.
    #[error("the restore failed after the commit (the source's tree is gone, the restored copy killed): {why}; the received images stay: `cryo restore -D {}` may try again", images.display())]
    AfterCommit { why: String, images: PathBuf },
    #[error("migration protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Dump(#[from] dump::DumpError),
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    PageServer(#[from] crate::pageserver::PsError),
    #[error(transparent)]
    Fault(#[from] crate::fault::Fault),
}

impl MigrateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            MigrateError::Dump(e) => e.hint(),
            MigrateError::Restore(e) => e.hint(),
            MigrateError::Io { .. } => Some(
                "is `cryo receive --port PORT` running on the destination, and reachable?".into(),
            ),
            MigrateError::Timeout { .. } => Some(
                "the tree runs on here; is the destination overloaded? A bigger --timeout gives it more time".into(),
            ),
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Io {
        what,
        source: crate::pageserver::timed_out(source),
    }
}

/// Largest control message (a JSON header, not a file's bytes).
const MAX_MSG: u32 = 1 << 20;

fn send(sk: &mut TcpStream, m: &Msg) -> Result<(), MigrateError> {
    let b = serde_json::to_vec(m).map_err(|e| MigrateError::Protocol(e.to_string()))?;
    let len =
        u32::try_from(b.len()).map_err(|_| MigrateError::Protocol("message too big".into()))?;
    sk.write_all(&len.to_le_bytes())
        .and_then(|()| sk.write_all(&b))
        .map_err(io_err("sending on the control connection"))
}

fn recv(sk: &mut TcpStream) -> Result<Msg, MigrateError> {
    let mut l = [0u8; 4];
    sk.read_exact(&mut l).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            MigrateError::Protocol("the other side closed the control connection".into())
        } else {
            io_err("reading the control connection")(e)
        }
    })?;
    let len = u32::from_le_bytes(l);
    if len > MAX_MSG {
        return Err(MigrateError::Protocol(format!(
            "a control message of {len} bytes"
        )));
    }
    let mut b = vec![0u8; usize::try_from(len).unwrap_or(0)];
    sk.read_exact(&mut b)
        .map_err(io_err("reading the control connection"))?;
    serde_json::from_slice(&b).map_err(|e| MigrateError::Protocol(e.to_string()))
}

/// The next message, within `wait` (named `stage` if it does not come by then); a
/// termination signal ends the wait too.
fn recv_within(sk: &mut TcpStream, wait: Duration, stage: &str) -> Result<Msg, MigrateError> {
    let timeout = || MigrateError::Timeout {
        stage: stage.to_string(),
        secs: wait.as_secs(),
    };
    match crate::pageserver::wait_readable_until(sk.as_fd(), None, Some(Instant::now() + wait)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(timeout()),
        Err(e) => return Err(io_err(stage)(e)),
    }
    // The rest of the message comes within the same time (the socket's timeout).
    let _ = sk.set_read_timeout(Some(wait));
    match recv(sk) {
        Err(MigrateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut => {
            Err(timeout())
        }
        r => r,
    }
}

/// Valid names of rounds and files from the other side: a plain name in the images
/// directory, never a path (`/`, `..`, hidden names) nor the chain's `parent` link.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name != crate::memtrack::PARENT_LINK
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Waits for `Ready` (or the destination's error), within `wait`.
fn expect_ready(sk: &mut TcpStream, wait: Duration, stage: &str) -> Result<(), MigrateError> {
    match recv_within(sk, wait, stage)? {
        Msg::Ready => Ok(()),
        Msg::Error { what } => Err(MigrateError::Refused(what)),
        m => Err(MigrateError::Protocol(format!("unexpected {m:?}"))),
    }
}

/// What `cryo migrate` was asked.
#[derive(Debug, Clone)]
pub struct MigrateOpts {
    /// The dump's options (`pid`, sockets, ...); memory options are set per round.
    pub dump: DumpOpts,
    /// `--to ADDR:PORT`.
    pub to: String,
    /// At most this many pre-copy rounds before the final dump.
    pub max_rounds: u32,
    /// A round this small (pages) is the last one.
    pub small_pages: u64,
    /// Where the source keeps the images other than pages (a directory of its own is made
    /// in it and removed at the end).
    pub work: PathBuf,
    /// `--lazy-pages`: post-copy. No pre-copy round: the final dump keeps the tree's private
    /// anonymous memory (copied while frozen), the tree restored on the destination runs
    /// before that memory arrived, its lazy-pages daemon takes it from the source, and
    /// migrate ends once it has every page.
    pub lazy: bool,
}

/// One pre-copy round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    /// Pages sent (all of them in round 1, those written since the round before after).
    pub pages: u64,
    /// How long the round took.
    pub ms: f64,
    /// Pages the tree wrote per second while the round before was copied (this round's
    /// pages over the time since the round before began); none for round 1.
    pub dirty_pages_per_s: Option<f64>,
    /// How long the tree was frozen in the round.
    pub frozen_ms: f64,
}

/// What a migration did.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    pub pid: i32,
    pub rounds: Vec<Round>,
    /// Pages of the final dump (written since the last round).
    pub final_pages: u64,
    /// From the final freeze to the destination reporting the restored tree running.
    pub downtime_ms: f64,
    /// The destination's restore alone.
    pub restore_ms: f64,
    /// The restored root's PID on the destination.
    pub restored_pid: i32,
    /// `--lazy-pages`: from the tree running on the destination to its last page served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_copy_ms: Option<f64>,
    pub total_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The final dump's hooks: at `pre-dump` the freeze begins (downtime starts); at
/// `post-dump` (the tree frozen, its images complete) the images go over, the destination
/// restores, and only its `Running` lets the dump go on to kill the tree. An error here
/// makes the dump resume the tree.
struct FinalHooks<'a> {
    ctl: &'a mut TcpStream,
    dir: PathBuf,
    /// The source tree's root.
    pid: i32,
    /// `--timeout`: the bound of every wait for the destination.
    wait: Duration,
    frozen_at: Option<Instant>,
    /// The source's tree was killed (`SIGKILL` sent to every task): no way back.
    killed: bool,
    /// `Commit` sent: `None` if it could not be.
    commit: Option<Result<(), String>>,
    /// The destination's `Running`: when, its pid, its restore's time.
    running: Option<(Instant, i32, u64)>,
    /// The destination's `Restored` (pid, restore time), before it ran.
    restored: Option<(Instant, i32, u64)>,
    /// Why no `Running` came after the commit.
    unconfirmed: Option<String>,
    /// The destination's error after the commit (its copy is gone too).
    failed_after_commit: Option<String>,
    /// Stage timestamps (since the freeze), for the log.
    stages: Vec<(&'static str, Instant)>,
}

impl FinalHooks<'_> {
    /// The source's tree dies: `SIGKILL` to every task (frozen, it cannot run again; the
    /// dump reaps them). Fails only if the root cannot be killed.
    fn kill_source(&mut self) -> Result<(), MigrateError> {
        crate::fault::point("migrate-commit")?;
        let tasks = tree_below(self.pid);
        crate::sys::proc::kill(self.pid, libc::SIGKILL).map_err(io_err(format!(
            "killing the source tree (pid {})",
            self.pid
        )))?;
        for p in tasks {
            let _ = crate::sys::proc::kill(p, libc::SIGKILL);
        }
        self.killed = true;
        Ok(())
    }

    fn hand_over(&mut self) -> Result<(), MigrateError> {
        self.stages.push(("images dumped", Instant::now()));
        let _ = self.ctl.set_write_timeout(Some(self.wait));
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err("listing the final images"))? {
            let e = e.map_err(io_err("listing the final images"))?;
            if e.file_type().map_err(io_err("stat"))?.is_file() {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        for name in names {
            let mut f = std::fs::File::open(self.dir.join(&name))
                .map_err(io_err(format!("opening {name}")))?;
            let len = f.metadata().map_err(io_err("stat"))?.len();
            send(
                self.ctl,
                &Msg::File {
                    name: name.clone(),
                    len,
                },
            )?;
            let n = std::io::copy(&mut (&mut f).take(len), self.ctl)
                .map_err(io_err(format!("sending {name}")))?;
            if n != len {
                return Err(MigrateError::Protocol(format!("{name} changed while sent")));
            }
        }
        send(self.ctl, &Msg::Restore).map_err(|e| match e {
            MigrateError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
                MigrateError::Timeout {
                    stage: "sending the final images".into(),
                    secs: self.wait.as_secs(),
                }
            }
            e => e,
        })?;
        self.stages.push(("images sent", Instant::now()));
        match recv_within(self.ctl, self.wait, "the destination's restore")? {
            Msg::Restored { pid, restore_us } => {
                self.restored = Some((Instant::now(), pid, restore_us));
            }
            Msg::Error { what } => return Err(MigrateError::Refused(what)),
            m => return Err(MigrateError::Protocol(format!("unexpected {m:?}"))),
        }
        self.stages
            .push(("restored on the destination", Instant::now()));
        // The commit: the source dies, then the destination runs. Before the kill, any
        // failure resumes the source (and the destination, hearing no commit, kills its copy).
        self.kill_source()?;
        self.stages.push(("source killed", Instant::now()));
        self.commit = Some(send(self.ctl, &Msg::Commit).map_err(|e| error_chain(&e)));
        if !matches!(self.commit, Some(Ok(()))) {
            return Ok(());
        }
        // The source is gone: waiting longer costs no downtime, and a slow destination
        // that does run the tree is not reported as a failure.
        let after = self.wait.max(crate::pageserver::DEFAULT_IDLE_TIMEOUT);
        match recv_within(self.ctl, after, "the destination's resume") {
            Ok(Msg::Running { pid, restore_us }) => {
                self.running = Some((Instant::now(), pid, restore_us));
                self.stages
                    .push(("running on the destination", Instant::now()));
            }
            Ok(Msg::Error { what }) => self.failed_after_commit = Some(what),
            Ok(m) => self.unconfirmed = Some(format!("it answered {m:?}")),
            Err(e) => self.unconfirmed = Some(error_chain(&e)),
        }
        Ok(())
    }
}

impl Notifier for FinalHooks<'_> {
    fn notify(&mut self, action: &str, _: Option<i32>) -> Result<(), NotifyError> {
        match action {
            "pre-dump" => self.frozen_at = Some(Instant::now()),
            "post-dump" => {
                self.hand_over().map_err(|e| NotifyError::Hook {
                    action: action.into(),
                    why: error_chain(&e),
                })?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Every process below `root`, read from the `children` files of its threads (the tree is
/// frozen: it does not change; cheaper than a scan of all of /proc).
fn tree_below(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            let f = t.path().join("children");
            for c in std::fs::read_to_string(f)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(c) = c.parse::<i32>() {
                    if c != root && !out.contains(&c) {
                        out.push(c);
                        todo.push(c);
                    }
                }
            }
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `cryo migrate`: pre-copy rounds, the final dump, the restore on the destination, and the
/// source killed once it runs there. `progress` is told about each round as it ends.
pub fn migrate(
    opts: &MigrateOpts,
    progress: &mut dyn FnMut(&Round),
) -> Result<MigrateReport, MigrateError> {
    let t0 = Instant::now();
    let pid = opts.dump.pid;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(dump::DumpError::NoSuchProcess { pid }.into());
    }
    let work = opts
        .work
        .join(format!("cryo-migrate-{}-{pid}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err(format!("mkdir {}", work.display())))?;
    let r = migrate_in(opts, &work, t0, progress);
    if r.is_err() {
        // The tracking of the last round goes with the chain (its holder is stopped).
        if let Ok(rd) = std::fs::read_dir(&work) {
            for e in rd.flatten() {
                crate::memtrack::end_recorded(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn migrate_in(
    opts: &MigrateOpts,
    work: &Path,
    t0: Instant,
    progress: &mut dyn FnMut(&Round),
) -> Result<MigrateReport, MigrateError> {
    let mut ctl =
        TcpStream::connect(&opts.to).map_err(io_err(format!("cannot connect to {}", opts.to)))?;
    let _ = ctl.set_nodelay(true);
    let r = rounds_and_hand_over(opts, work, t0, progress, &mut ctl);
    if let Err(e) = &r {
        // The destination removes what it has (it also does when the connection just ends).
        let _ = send(
            &mut ctl,
            &Msg::Error {
                what: error_chain(e),
            },
        );
    }
    r
}

fn rounds_and_hand_over(
    opts: &MigrateOpts,
    work: &Path,
    t0: Instant,
    progress: &mut dyn FnMut(&Round),
    ctl: &mut TcpStream,
) -> Result<MigrateReport, MigrateError> {
    let pid = opts.dump.pid;
    // While the tree is frozen (the final step) every wait is bounded by `--timeout`, by
    // default CRIU's 10 s (not the page server's 60 s: the tree's downtime is at stake).
    let secs = opts
        .dump
        .timeout
        .unwrap_or(dump::DEFAULT_SEIZE_TIMEOUT)
        .max(1);
    let wait = Duration::from_secs(u64::from(secs));
    let _ = ctl.set_write_timeout(Some(wait));
    // `--lazy-pages`: where the final dump serves the pages, on the address the destination
    // reaches this host at (the control connection's), a port free now.
    let lazy_at = if opts.lazy {
        let ip = ctl
            .local_addr()
            .map_err(io_err("the control connection's address"))?
            .ip();
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(io_err(format!("a port for the lazy pages on {ip}")))?
            .port();
        Some(std::net::SocketAddr::new(ip, port))
    } else {
        None
    };
    send(
        ctl,
        &Msg::Hello {
            version: 1,
            tcp_established: opts.dump.sock.tcp_established,
            shell_job: opts.dump.shell_job,
            timeout_s: u32::try_from(wait.as_secs()).ok(),
            // Its PID in its own PID namespace: the one the images hold.
            root: crate::procfs::ns_ids(opts.dump.pid, "NSpid:")
                .and_then(|v| v.last().copied())
                .and_then(|p| u32::try_from(p).ok()),
            lazy_port: lazy_at.map(|a| a.port()),
        },
    )?;
    expect_ready(ctl, wait, "the destination's greeting")?;
    tracing::info!(to = %opts.to, "migrate: the destination is ready");

    let mut rounds: Vec<Round> = Vec::new();
    let mut starts: Vec<Instant> = Vec::new();
    let mut prev: Option<String> = None;
    // Post-copy: the memory goes after the tree runs on the destination, not before.
    let pre_copy = if opts.lazy { 0 } else { opts.max_rounds.max(1) };
    for n in 1..=pre_copy {
        let name = format!("r{n}");
        send(ctl, &Msg::Round { name: name.clone() })?;
        expect_ready(
            ctl,
            wait,
            &format!("the destination's readiness for round {n}"),
        )?;
        let d = DumpOpts {
            track_mem: true,
            leave_running: true,
            prev_images_dir: prev.as_ref().map(|p| format!("../{p}")),
            page_server: Some(opts.to.clone()),
            lazy_pages: None,
            lazy_ready: None,
            ..opts.dump.clone()
        };
        let dir = ImageDir::create(&work.join(&name))?;
        let ts = Instant::now();
        let r = dump::predump::run(&d, &dir, &mut crate::notify::NoHooks)?;
        let rate = starts
            .last()
            .map(|s| r.pages_written as f64 / ts.duration_since(*s).as_secs_f64().max(1e-6));
        starts.push(ts);
        let round = Round {
            round: n,
            pages: r.pages_written,
            ms: ms(ts.elapsed()),
            dirty_pages_per_s: rate,
            frozen_ms: r.frozen_us as f64 / 1e3,
        };
        tracing::info!(?round, "migrate: pre-copy round done");
        progress(&round);
        let shrinking = rounds.last().is_none_or(|p| round.pages < p.pages);
        let small = round.pages <= opts.small_pages;
        rounds.push(round);
        prev = Some(name);
        if !shrinking || small {
            break;
        }
    }

    // The final step: frozen until the destination runs the tree.
    send(
        ctl,
        &Msg::Round {
            name: "final".into(),
        },
    )?;
    expect_ready(ctl, wait, "the destination's readiness for the final round")?;
    let d = match lazy_at {
        None => DumpOpts {
            track_mem: true,
            leave_running: false,
            prev_images_dir: prev.map(|p| format!("../{p}")),
            page_server: Some(opts.to.clone()),
            lazy_pages: None,
            lazy_ready: None,
            timeout: Some(secs),
            ..opts.dump.clone()
        },
        Some(at) => {
            // The final round's pages session has nothing: the pages other than the lazy
            // ones go with the other images.
            crate::pageserver::Client::connect(&opts.to, wait)?.close()?;
            DumpOpts {
                track_mem: false,
                leave_running: false,
                prev_images_dir: None,
                page_server: None,
                lazy_pages: Some(at.to_string()),
                // Only the destination may read the tree's memory.
                lazy_peer: Some(
                    ctl.peer_addr()
                        .map_err(io_err("the control connection's peer"))?
                        .ip(),
                ),
                lazy_ready: None,
                // The destination's daemon connects while it restores, before `Restored`.
                lazy_connect_within: Some(wait.max(crate::pageserver::DEFAULT_IDLE_TIMEOUT)),
                timeout: Some(secs),
                ..opts.dump.clone()
            }
        }
    };
    let fdir = work.join("final");
    let dir = ImageDir::create(&fdir)?;
    let mut hooks = FinalHooks {
        ctl,
        dir: fdir.clone(),
        pid,
        wait,
        frozen_at: None,
        killed: false,
        commit: None,
        running: None,
        restored: None,
        unconfirmed: None,
        failed_after_commit: None,
        stages: Vec::new(),
    };
    let tf = Instant::now();
    let r = dump::run(&d, &dir, &mut hooks);
    let frozen_at = hooks.frozen_at.unwrap_or(tf);
    let stages: Vec<String> = hooks
        .stages
        .iter()
        .map(|(what, t)| format!("{what} +{:.1} ms", ms(t.duration_since(frozen_at))))
        .collect();
    tracing::info!(stages = %stages.join(", "), "migrate: the final step (from the freeze)");
    let served_at = Instant::now();
    let final_pages = match r {
        Ok(r) => r.pages_written,
        // Post-copy: after the commit the tree's memory is still served from here; failing
        // that, the destination's daemon kills its copy (never runs it with missing pages).
        Err(e) if hooks.killed && opts.lazy && hooks.running.is_some() => {
            let what = format!(
                "serving the tree's memory to the destination's lazy-pages daemon failed (it kills the restored tree): {}",
                error_chain(&e)
            );
            tracing::error!(%what, "migrate: post-copy failed");
            return Err(MigrateError::FailedAfterCommit(what));
        }
        // The tree is killed: what failed after that (its reaping, the network lock) is
        // the source host's business, no longer the migration's.
        Err(e) if hooks.killed => {
            tracing::warn!(error = %error_chain(&e), "migrate: after the source was killed");
            0
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(Err(why)) = &hooks.commit {
        return Err(MigrateError::Lost(why.clone()));
    }
    // After the commit only the destination's copy may run: one that failed (it killed its
    // copy) or said nothing is an error the user must hear, never a success.
    if let Some(what) = hooks.failed_after_commit.take() {
        tracing::error!(%what, "migrate: the destination failed after the commit");
        return Err(MigrateError::FailedAfterCommit(what));
    }
    let (at, restored_pid, restore_us) = match (hooks.running, hooks.restored) {
        (Some(r), _) => r,
        (None, Some((_, pid, _))) if hooks.commit.is_some() => {
            let why = hooks.unconfirmed.clone().unwrap_or_default();
            tracing::error!(%why, pid, "migrate: the destination did not confirm that the tree runs");
            return Err(MigrateError::Unconfirmed { why, pid });
        }
        _ => {
            return Err(MigrateError::Protocol(
                "the dump ended without the destination".into(),
            ))
        }
    };
    let downtime = at.duration_since(frozen_at);
    let post_copy_ms = opts
        .lazy
        .then(|| ms(served_at.saturating_duration_since(at)));
    tracing::info!(
        pid,
        restored_pid,
        downtime_ms = ms(downtime),
        "migrate: the tree runs on the destination; the source is gone"
    );
    Ok(MigrateReport {
        pid,
        rounds,
        final_pages,
        downtime_ms: ms(downtime),
        restore_ms: restore_us as f64 / 1e3,
        restored_pid,
        post_copy_ms,
        total_ms: ms(t0.elapsed()),
    })
}

/// `receive --lazy-pages`: how the lazy-pages daemon is started (`cryo lazy-pages` on the
/// final images, a process of its own that outlives receive).
#[derive(Debug, Clone)]
pub struct LazyReceive {
    /// cryo itself.
    pub exe: PathBuf,
    /// The daemon's log file.
    pub log: PathBuf,
    /// Its log level.
    pub verbosity: u32,
}

/// What `cryo receive` was asked.
#[derive(Debug, Clone)]
pub struct ReceiveOpts {
    /// Where the images go (`r1`, ..., `final` in it).
    pub dir: PathBuf,
    /// Keep the images after a successful restore.
    pub keep: bool,
    /// Restore options (the source's `Hello` adds its socket options).
    pub restore: RestoreOpts,
    /// `--timeout`: how long the source may send nothing in the middle of a migration.
    pub timeout: Duration,
    /// `--lazy-pages`: the tree runs before its memory is in; a daemon brings the pages
    /// from the received images (local) on first touch and in the background.
    pub lazy: Option<LazyReceive>,
    /// How the daemon is started when the source asks for post-copy (`migrate
    /// --lazy-pages`: its pages come from the source) without `--lazy-pages` here.
    pub lazy_on_request: Option<LazyReceive>,
}

/// What `cryo receive` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveReport {
    pub pid: i32,
    pub rounds: u32,
    pub bytes: u64,
    pub restore_ms: f64,
}

/// `cryo receive`: serves one migration on `listener` (the first peer that connects is the
/// source: `--address` says where to listen). On any failure the directories it made are
/// removed and the source is told why (if it can still hear it).
pub fn receive(opts: &ReceiveOpts, listener: &TcpListener) -> Result<ReceiveReport, MigrateError> {
    let made_dir = !opts.dir.exists();
    let (mut ctl, peer) = crate::pageserver::accept(listener).map_err(io_err("accept"))?;
    let _ = ctl.set_nodelay(true);
    let _ = ctl.set_write_timeout(Some(opts.timeout));
    tracing::info!(%peer, "receive: the source connected");
    let mut made: Vec<PathBuf> = Vec::new();
    // The daemon, if the restore is lazy (`--lazy-pages`, or the source's post-copy).
    let mut lazy = opts.lazy.clone();
    let r = receive_in(
        opts,
        listener,
        &mut ctl,
        peer.ip(),
        &mut made,
        made_dir,
        &mut lazy,
    );
    match &r {
        Ok(_) if opts.keep => {}
        // The lazy-pages daemon still reads them: it removes them when it is done.
        Ok(_) if lazy.is_some() => {}
        // The source's tree is gone: they are all that is left of it.
        Err(MigrateError::AfterCommit { .. }) => {}
        _ => {
            // Only what this receive made (rounds it created, the directory if it did).
            for d in &made {
                let _ = std::fs::remove_dir_all(d);
            }
            // The lazy-pages daemon's log, when it went in the directory receive made.
            if let Some(l) = lazy
                .as_ref()
                .filter(|l| made_dir && l.log.parent() == Some(&opts.dir))
            {
                let _ = std::fs::remove_file(&l.log);
            }
            if made_dir {
                let _ = std::fs::remove_dir(&opts.dir);
            }
        }
    }
    if let Err(e) = &r {
        let _ = send(
            &mut ctl,
            &Msg::Error {
                what: error_chain(e),
            },
        );
    }
    r
}

/// The destination's restore hooks: once everything exists and before anything runs or
/// the network opens (`post-restore`), `Restored` goes to the source and its `Commit` is
/// awaited; anything else (its error, the connection ending, `wait` passing) fails the
/// restore, which kills what it made.
struct CommitHooks<'a> {
    ctl: &'a mut TcpStream,
    wait: Duration,
    t0: Instant,
    root: i32,
    /// `Commit` came: the source's tree is gone; a failure now loses the tree.
    committed: bool,
}

impl CommitHooks<'_> {
    fn commit(&mut self) -> Result<(), MigrateError> {
        let restore_us = u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        send(
            self.ctl,
            &Msg::Restored {
                pid: self.root,
                restore_us,
            },
        )?;
        tracing::info!(
            pid = self.root,
            restore_us,
            "receive: restored, waiting for the commit"
        );
        // `receive-commit`: a test makes the destination fail here.
        crate::fault::point("receive-commit")?;
        match recv_within(self.ctl, self.wait, "the source's commit")? {
            Msg::Commit => Ok(()),
            Msg::Error { what } => Err(MigrateError::Protocol(format!(
                "the source gave up: {what}"
            ))),
            m => Err(MigrateError::Protocol(format!("unexpected {m:?}"))),
        }
    }
}

impl Notifier for CommitHooks<'_> {
    fn notify(&mut self, action: &str, pid: Option<i32>) -> Result<(), NotifyError> {
        // Before the network opens (the lock lifted, the connections out of repair mode): a
        // copy killed for want of the commit closes its connections silently (in repair
        // mode no reset goes to the peers, whose connections the source still holds).
        if action == "post-restore" {
            self.root = pid.unwrap_or(0);
            self.commit().map_err(|e| NotifyError::Hook {
                action: action.into(),
                why: error_chain(&e),
            })?;
            self.committed = true;
        }
        Ok(())
    }
}

fn receive_in(
    opts: &ReceiveOpts,
    listener: &TcpListener,
    ctl: &mut TcpStream,
    source: std::net::IpAddr,
    made: &mut Vec<PathBuf>,
    made_dir: bool,
    lazy: &mut Option<LazyReceive>,
) -> Result<ReceiveReport, MigrateError> {
    let mut ro = opts.restore.clone();
    // Post-copy: where the source serves the pages.
    let mut page_source: Option<std::net::SocketAddr> = None;
    let idle = opts.timeout;
    let mut commit_wait = idle;
    match recv_within(ctl, idle, "the source's greeting")? {
        Msg::Hello {
            version: 1,
            tcp_established,
            shell_job,
            timeout_s,
            root,
            lazy_port,
        } => {
            if let Some(port) = lazy_port {
                let Some(l) = opts.lazy.clone().or_else(|| opts.lazy_on_request.clone()) else {
                    return Err(MigrateError::Protocol(
                        "the source asks for post-copy (--lazy-pages), which this receive cannot start".into(),
                    ));
                };
                *lazy = Some(l);
                page_source = Some(std::net::SocketAddr::new(source, port));
            }
            // A full restore stages the tree's memory; a lazy one's daemon serves it.
            if lazy.is_none() {
                ro.stage = root.map(|p| std::sync::Arc::new(crate::stage::Stage::new(p)));
            }
            ro.sock.tcp_established |= tcp_established;
            ro.shell_job |= shell_job;
            if let Some(t) = timeout_s {
                commit_wait = Duration::from_secs(u64::from(t.max(1)));
            }
        }
        m => return Err(MigrateError::Protocol(format!("expected Hello, got {m:?}"))),
    }
    std::fs::create_dir_all(&opts.dir).map_err(io_err(format!("mkdir {}", opts.dir.display())))?;
    send(ctl, &Msg::Ready)?;
    let mut prev: Option<String> = None;
    let mut bytes = 0u64;
    let mut rounds = 0u32;
    // `--lazy-pages`: the daemon, from the final round on.
    let mut daemon: Option<LazyDaemon> = None;
    loop {
        match recv_within(ctl, idle, "waiting for the source")? {
            Msg::Round { name } => {
                if !plain_name(&name) {
                    return Err(MigrateError::Protocol(format!("round name {name:?}")));
                }
                // `receive-r1`, ..., `receive-final`: tests make the destination fail there.
                crate::fault::point(&format!("receive-{name}"))?;
                let path = opts.dir.join(&name);
                // Never over what this receive did not make (nor a round twice).
                if path.symlink_metadata().is_ok() {
                    return Err(MigrateError::Protocol(format!(
                        "round {name:?}: {} exists already",
                        path.display()
                    )));
                }
                let dir = ImageDir::create(&path)?;
                made.push(path.clone());
                if let Some(p) = &prev {
                    std::os::unix::fs::symlink(
                        format!("../{p}"),
                        path.join(crate::memtrack::PARENT_LINK),
                    )
                    .map_err(io_err("making the parent link"))?;
                }
                // A lazy restore: its daemon is started now, while the final pages and
                // images come (not in the frozen tree's time after them); it waits for the
                // restore to connect. Ended if the migration fails.
                if let (Some(l), "final") = (&*lazy, name.as_str()) {
                    // What the daemon removes once every page is in (without -D): the
                    // rounds, its own log if it is there, the directory if receive made it.
                    let mut remove: Vec<String> = Vec::new();
                    if !opts.keep {
                        remove.extend(made.iter().map(|d| format!("R:{}", d.display())));
                        if l.log.parent() == Some(&opts.dir) {
                            remove.push(format!("F:{}", l.log.display()));
                        }
                        if made_dir {
                            remove.push(format!("E:{}", opts.dir.display()));
                        }
                    }
                    daemon = Some(LazyDaemon::start(l, &path, &remove, page_source)?);
                }
                send(ctl, &Msg::Ready)?;
                let mut sk = accept_pages(listener, ctl, source, idle)?;
                let mut s = crate::pageserver::Server::new(dir);
                s.timeout = Some(idle);
                s.serve(&mut sk)?;
                bytes += s.bytes;
                tracing::info!(round = %name, bytes = s.bytes, "receive: round received");
                if let Some(st) = &ro.stage {
                    let t = Instant::now();
                    match st.absorb(&path) {
                        Ok(n) => {
                            tracing::info!(round = %name, bytes = n, us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX), "receive: round staged")
                        }
                        Err(why) => {
                            tracing::warn!(round = %name, %why, "receive: memory no longer staged; the restore copies it from the images")
                        }
                    }
                }
                if name != "final" {
                    rounds += 1;
                }
                prev = Some(name);
            }
            Msg::File { name, len } => {
                let Some(last) = prev.as_ref().filter(|p| *p == "final") else {
                    return Err(MigrateError::Protocol(
                        "a file before the final round".into(),
                    ));
                };
                if !plain_name(&name) {
                    return Err(MigrateError::Protocol(format!("file name {name:?}")));
                }
                let path = opts.dir.join(last).join(&name);
                let mut f = std::fs::File::create(&path)
                    .map_err(io_err(format!("create {}", path.display())))?;
                let _ = ctl.set_read_timeout(Some(idle));
                let n = std::io::copy(&mut (&mut *ctl).take(len), &mut f)
                    .map_err(io_err(format!("receiving {name}")))?;
                if n != len {
                    return Err(MigrateError::Protocol(format!(
                        "{name} cut short ({n} of {len} bytes)"
                    )));
                }
            }
            Msg::Restore => {
                if prev.as_deref() != Some("final") {
                    return Err(MigrateError::Protocol(
                        "restore before the final round".into(),
                    ));
                }
                crate::fault::point("receive-restore")?;
                // The source may have given up meanwhile (its `--timeout`): no restore then.
                if crate::pageserver::wait_readable_until(ctl.as_fd(), None, Some(Instant::now()))
                    .is_ok_and(|r| r)
                {
                    return Err(match recv(ctl) {
                        Ok(Msg::Error { what }) => {
                            MigrateError::Protocol(format!("the source gave up: {what}"))
                        }
                        Ok(m) => MigrateError::Protocol(format!("unexpected {m:?}")),
                        Err(e) => e,
                    });
                }
                let dir = ImageDir::open(&opts.dir.join("final"))?;
                let t = Instant::now();
                if let Some(d) = &daemon {
                    ro.lazy_pages = Some(d.socket.clone());
                }
                let mut hooks = CommitHooks {
                    ctl: &mut *ctl,
                    wait: commit_wait,
                    t0: t,
                    root: 0,
                    committed: false,
                };
                let r = restore::run(&ro, &dir, &mut hooks);
                // The restore moved the stage into the tree, or failed: receive's copy goes.
                if let Some(st) = ro.stage.take() {
                    st.release();
                }
                if let Some(d) = daemon.take() {
                    // Restored: the daemon serves the tree on its own (and outlives
                    // receive); failed: ended (dropped) with the tree it served.
                    d.restore_done(r.is_ok());
                }
                let r = match r {
                    Ok(r) => r,
                    Err(e) if hooks.committed => {
                        // The restore killed its copy; the source's is gone: say so loudly.
                        let e = MigrateError::AfterCommit {
                            why: error_chain(&e),
                            images: opts.dir.join("final"),
                        };
                        tracing::error!(error = %e, "receive: failed after the commit");
                        return Err(e);
                    }
                    Err(e) => return Err(e.into()),
                };
                let restore_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::info!(pid = r.pid, restore_us, "receive: the tree runs here");
                // Committed: the source is gone and this copy runs, whether or not the
                // source hears it.
                if let Err(e) = send(
                    ctl,
                    &Msg::Running {
                        pid: r.pid,
                        restore_us,
                    },
                ) {
                    tracing::warn!(error = %error_chain(&e), "receive: the source did not hear that the tree runs");
                }
                return Ok(ReceiveReport {
                    pid: r.pid,
                    rounds,
                    bytes,
                    restore_ms: restore_us as f64 / 1e3,
                });
            }
            m => return Err(MigrateError::Protocol(format!("unexpected {m:?}"))),
        }
    }
}

/// `receive --lazy-pages`: the `cryo lazy-pages` daemon serving the final images (through
/// their `parent` chain) to the restored tree. A process of its own (its own process group).
/// Until a restore connects it reads no image (they are still arriving) and dies with
/// receive (`PR_SET_PDEATHSIG`: a receive killed before the restore leaves no daemon
/// waiting forever); once the restore connected it outlives receive, brings every page in,
/// and only then removes the images it was given (`lazy::REMOVE_AFTER_ENV`) when receive
/// was not told to keep them. A daemon that fails leaves them.
struct LazyDaemon {
    /// Killed and reaped on drop (the migration failed), unless the restore succeeded.
    child: Option<std::process::Child>,
    /// Its socket, in the final images directory (removed once the restore ended).
    socket: PathBuf,
    /// Gets a byte once the daemon, connected to by the restore, no longer dies with
    /// receive (`lazy::DETACHED_FD_ENV`).
    detached: std::os::fd::OwnedFd,
}

impl Drop for LazyDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl LazyDaemon {
    /// `page_source`: the source serving the pages (post-copy), else the images have them.
    fn start(
        l: &LazyReceive,
        fdir: &Path,
        remove: &[String],
        page_source: Option<std::net::SocketAddr>,
    ) -> Result<LazyDaemon, MigrateError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let socket = crate::lazy::socket_path(fdir);
        let listener = crate::lazy::listen(&socket)
            .map_err(|e| MigrateError::Protocol(format!("the lazy-pages daemon: {e}")))?;
        crate::sys::fd::set_cloexec(listener.as_fd(), false)
            .map_err(io_err("the lazy-pages daemon's socket"))?;
        let (detached, tell) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io_err("a pipe for the lazy-pages daemon")(e.into()))?;
        crate::sys::fd::set_cloexec(tell.as_fd(), false)
            .map_err(io_err("a pipe for the lazy-pages daemon"))?;
        let mut cmd = std::process::Command::new(&l.exe);
        cmd.arg("lazy-pages");
        if let Some(a) = page_source {
            cmd.arg("--page-server")
                .arg("--address")
                .arg(a.ip().to_string())
                .arg("--port")
                .arg(a.port().to_string());
        }
        let child = cmd
            .arg("-D")
            .arg(fdir)
            .arg("-o")
            .arg(&l.log)
            .arg(format!("-v{}", l.verbosity))
            .env(crate::lazy::LISTEN_FD_ENV, listener.as_raw_fd().to_string())
            .env(crate::lazy::REMOVE_AFTER_ENV, remove.join("\n"))
            .env(crate::lazy::RECEIVE_PID_ENV, std::process::id().to_string())
            .env(crate::lazy::DETACHED_FD_ENV, tell.as_raw_fd().to_string())
            // Not in receive's process group: a signal to it (Ctrl-C) must not take the
            // pages of a tree that already runs.
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io_err("starting the lazy-pages daemon"))?;
        drop(listener);
        drop(tell);
        tracing::info!(daemon = child.id(), socket = %socket.display(), "receive: lazy-pages daemon started");
        Ok(LazyDaemon {
            child: Some(child),
            socket,
            detached,
        })
    }

    /// The restore ended: its socket goes; the daemon of a restored tree goes on alone (the
    /// tree's pages are its to bring: receive waits until it says it no longer dies with
    /// receive), that of a failed one is ended (it may still wait for the restore to
    /// connect; the tree it served is dead).
    fn restore_done(mut self, ok: bool) {
        if !ok {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let said =
            crate::pageserver::wait_readable_until(self.detached.as_fd(), None, Some(deadline))
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    let mut b = [0u8; 1];
                    match rustix::io::read(&self.detached, &mut b) {
                        Ok(1) => Ok(()),
                        Ok(_) => Err("it is gone".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                });
        if let Err(why) = said {
            tracing::warn!(%why, "receive: the lazy-pages daemon did not say it took over the restored tree");
        }
        self.child = None;
    }
}

/// The connection of a round's pages: from the source's address only (others are closed),
/// within `idle`, unless the source gives up meanwhile (its control connection closes, or
/// says why).
fn accept_pages(
    listener: &TcpListener,
    ctl: &mut TcpStream,
    source: std::net::IpAddr,
    idle: Duration,
) -> Result<TcpStream, MigrateError> {
    let deadline = Instant::now() + idle;
    loop {
        let ready = match crate::pageserver::wait_readable_until(
            listener.as_fd(),
            Some(ctl.as_fd()),
            Some(deadline),
        ) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(MigrateError::Timeout {
                    stage: "waiting for the pages' connection".into(),
                    secs: idle.as_secs(),
                })
            }
            Err(e) => return Err(io_err("waiting for the pages")(e)),
        };
        if !ready {
            return Err(match recv(ctl) {
                Ok(Msg::Error { what }) => {
                    MigrateError::Protocol(format!("the source gave up: {what}"))
                }
                Ok(m) => MigrateError::Protocol(format!("unexpected {m:?}")),
                Err(e) => e,
            });
        }
        let (sk, peer) = listener.accept().map_err(io_err("accept (pages)"))?;
        if peer.ip() == source {
            return Ok(sk);
        }
        tracing::warn!(%peer, %source, "receive: a connection from another address than the source's: closed");
    }
}

/// Pages as MiB, for messages.
pub fn mib(pages: u64) -> f64 {
    (pages * PAGE_SIZE) as f64 / f64::from(1u32 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_come_from_the_other_side() {
        for ok in ["r1", "final", "pages-1.img", "inventory.img", "a_b-c.d"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "/tmp", "a/b", ".hidden", "parent", "a\\b", "x y", "é",
        ] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(!plain_name(&"a".repeat(129)));
    }

    #[test]
    fn the_tree_below_a_process_is_found_through_children_files() {
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(c.id()).unwrap();
        let mut below = Vec::new();
        for _ in 0..200 {
            below = tree_below(pid);
            if below.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in &below {
            let _ = crate::sys::proc::kill(*p, libc::SIGKILL);
        }
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(below.len(), 2, "{below:?}");
    }
}
