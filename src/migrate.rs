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
    },
    /// Source → destination: the pages of round `name` come next, on a new connection.
    Round { name: String },
    /// Source → destination: an image of the final dump; `len` bytes follow.
    File { name: String, len: u64 },
    /// Source → destination: every image is there: restore.
    Restore,
    /// Destination → source: go on.
    Ready,
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
            _ => None,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Io { what, source }
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

/// Waits for `Ready` (or the destination's error).
fn expect_ready(sk: &mut TcpStream) -> Result<(), MigrateError> {
    match recv(sk)? {
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
    frozen_at: Option<Instant>,
    running: Option<(Instant, i32, u64)>,
}

impl FinalHooks<'_> {
    fn hand_over(&mut self) -> Result<(), MigrateError> {
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
        send(self.ctl, &Msg::Restore)?;
        match recv(self.ctl)? {
            Msg::Running { pid, restore_us } => {
                self.running = Some((Instant::now(), pid, restore_us));
                Ok(())
            }
            Msg::Error { what } => Err(MigrateError::Refused(what)),
            m => Err(MigrateError::Protocol(format!("unexpected {m:?}"))),
        }
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
    send(
        ctl,
        &Msg::Hello {
            version: 1,
            tcp_established: opts.dump.sock.tcp_established,
            shell_job: opts.dump.shell_job,
        },
    )?;
    expect_ready(ctl)?;
    tracing::info!(to = %opts.to, "migrate: the destination is ready");

    let mut rounds: Vec<Round> = Vec::new();
    let mut starts: Vec<Instant> = Vec::new();
    let mut prev: Option<String> = None;
    for n in 1..=opts.max_rounds.max(1) {
        let name = format!("r{n}");
        send(ctl, &Msg::Round { name: name.clone() })?;
        expect_ready(ctl)?;
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
    expect_ready(ctl)?;
    let d = DumpOpts {
        track_mem: true,
        leave_running: false,
        prev_images_dir: prev.map(|p| format!("../{p}")),
        page_server: Some(opts.to.clone()),
        lazy_pages: None,
        lazy_ready: None,
        ..opts.dump.clone()
    };
    let fdir = work.join("final");
    let dir = ImageDir::create(&fdir)?;
    let mut hooks = FinalHooks {
        ctl,
        dir: fdir.clone(),
        frozen_at: None,
        running: None,
    };
    let tf = Instant::now();
    let r = dump::run(&d, &dir, &mut hooks)?;
    let (at, restored_pid, restore_us) = hooks
        .running
        .ok_or_else(|| MigrateError::Protocol("the dump ended without the destination".into()))?;
    let downtime = at.duration_since(hooks.frozen_at.unwrap_or(tf));
    tracing::info!(
        pid,
        restored_pid,
        downtime_ms = ms(downtime),
        "migrate: the tree runs on the destination; the source is gone"
    );
    Ok(MigrateReport {
        pid,
        rounds,
        final_pages: r.pages_written,
        downtime_ms: ms(downtime),
        restore_ms: restore_us as f64 / 1e3,
        restored_pid,
        total_ms: ms(t0.elapsed()),
    })
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
}

/// What `cryo receive` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveReport {
    pub pid: i32,
    pub rounds: u32,
    pub bytes: u64,
    pub restore_ms: f64,
}

/// `cryo receive`: serves one migration on `listener`. On any failure the directories it made
/// are removed and the source is told why (if it can still hear it).
pub fn receive(opts: &ReceiveOpts, listener: &TcpListener) -> Result<ReceiveReport, MigrateError> {
    let made_dir = !opts.dir.exists();
    let (mut ctl, peer) = crate::pageserver::accept(listener).map_err(io_err("accept"))?;
    let _ = ctl.set_nodelay(true);
    tracing::info!(%peer, "receive: the source connected");
    let mut made: Vec<PathBuf> = Vec::new();
    let r = receive_in(opts, listener, &mut ctl, &mut made);
    match &r {
        Ok(_) if opts.keep => {}
        _ => {
            for d in &made {
                let _ = std::fs::remove_dir_all(d);
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

fn receive_in(
    opts: &ReceiveOpts,
    listener: &TcpListener,
    ctl: &mut TcpStream,
    made: &mut Vec<PathBuf>,
) -> Result<ReceiveReport, MigrateError> {
    let mut ro = opts.restore.clone();
    match recv(ctl)? {
        Msg::Hello {
            version: 1,
            tcp_established,
            shell_job,
        } => {
            ro.sock.tcp_established |= tcp_established;
            ro.shell_job |= shell_job;
        }
        m => return Err(MigrateError::Protocol(format!("expected Hello, got {m:?}"))),
    }
    std::fs::create_dir_all(&opts.dir).map_err(io_err(format!("mkdir {}", opts.dir.display())))?;
    send(ctl, &Msg::Ready)?;
    let mut prev: Option<String> = None;
    let mut bytes = 0u64;
    let mut rounds = 0u32;
    loop {
        crate::pageserver::wait_readable(ctl.as_fd(), None)
            .map_err(io_err("waiting for the source"))?;
        match recv(ctl)? {
            Msg::Round { name } => {
                if name.contains('/') || name.starts_with('.') || name.is_empty() {
                    return Err(MigrateError::Protocol(format!("round name {name:?}")));
                }
                // `receive-r1`, ..., `receive-final`: tests make the destination fail there.
                crate::fault::point(&format!("receive-{name}"))?;
                let path = opts.dir.join(&name);
                let _ = std::fs::remove_dir_all(&path);
                let dir = ImageDir::create(&path)?;
                made.push(path.clone());
                if let Some(p) = &prev {
                    std::os::unix::fs::symlink(
                        format!("../{p}"),
                        path.join(crate::memtrack::PARENT_LINK),
                    )
                    .map_err(io_err("making the parent link"))?;
                }
                send(ctl, &Msg::Ready)?;
                // The pages' connection, unless the source gives up meanwhile (its control
                // connection closes, or says why).
                if !crate::pageserver::wait_readable(listener.as_fd(), Some(ctl.as_fd()))
                    .map_err(io_err("waiting for the pages"))?
                {
                    return Err(match recv(ctl) {
                        Ok(Msg::Error { what }) => {
                            MigrateError::Protocol(format!("the source gave up: {what}"))
                        }
                        Ok(m) => MigrateError::Protocol(format!("unexpected {m:?}")),
                        Err(e) => e,
                    });
                }
                let (mut sk, _) = listener.accept().map_err(io_err("accept (pages)"))?;
                let mut s = crate::pageserver::Server::new(dir);
                s.serve(&mut sk)?;
                bytes += s.bytes;
                tracing::info!(round = %name, bytes = s.bytes, "receive: round received");
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
                if name.contains('/')
                    || name.starts_with('.')
                    || name == crate::memtrack::PARENT_LINK
                {
                    return Err(MigrateError::Protocol(format!("file name {name:?}")));
                }
                let path = opts.dir.join(last).join(&name);
                let mut f = std::fs::File::create(&path)
                    .map_err(io_err(format!("create {}", path.display())))?;
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
                let dir = ImageDir::open(&opts.dir.join("final"))?;
                let t = Instant::now();
                let r = restore::run(&ro, &dir, &mut crate::notify::NoHooks)?;
                let restore_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::info!(pid = r.pid, restore_us, "receive: the tree runs here");
                // The source is told; from now on it is the source's to kill itself. If it
                // cannot be told, it resumes: the tree here must go.
                if let Err(e) = send(
                    ctl,
                    &Msg::Running {
                        pid: r.pid,
                        restore_us,
                    },
                ) {
                    for p in crate::lazy::descendants(&[r.pid]) {
                        let _ = crate::sys::proc::kill(p, libc::SIGKILL);
                    }
                    let _ = crate::sys::proc::kill(r.pid, libc::SIGKILL);
                    return Err(e);
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

/// Pages as MiB, for messages.
pub fn mib(pages: u64) -> f64 {
    (pages * PAGE_SIZE) as f64 / f64::from(1u32 << 20)
}
