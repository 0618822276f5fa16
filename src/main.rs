//! The `cryo` binary (also answers as `criu` through a symlink): parses the command line,
//! sets up logging, runs the command, prints errors with a hint, maps them to exit codes.

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use clap::CommandFactory;

use cryo::cli::{Cli, Cmd, Invocation, Opts};
use cryo::image::ImageDir;
use cryo::{dump, features, restore, show};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // The holder of an incremental dump's write tracking (spawned by cryo, not for users).
    if argv.get(1).map(String::as_str) == Some(cryo::memtrack::HOLD_CMD) {
        return match cryo::memtrack::hold(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    // The keeper of a lazy-pages daemon's userfaultfds (spawned by it, not for users).
    if argv.get(1).map(String::as_str) == Some(cryo::lazy::KEEPER_CMD) {
        let fd = argv.get(2).and_then(|f| f.parse().ok()).unwrap_or(-1);
        return match cryo::lazy::keep(fd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    let run = match cryo::cli::parse(&argv) {
        Ok(Invocation::Help(cmd)) => {
            let mut c = Cli::command();
            let sub = cmd
                .as_deref()
                .and_then(|n| c.find_subcommand_mut(n).cloned());
            let _ = match sub {
                Some(mut s) => s.print_long_help(),
                None => c.print_long_help(),
            };
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("Version: 4.2\ncryo {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run(r)) => r,
        Err(e) => return usage_error(&argv, &e.to_string()),
    };
    let Some(cmd) = run.cli.cmd else {
        return usage_error(
            &argv,
            "a command is needed (dump, restore, show, inspect, diff, check); see cryo --help",
        );
    };
    if let Some(o) = cmd_opts(&cmd) {
        if let Err(e) = o.check(&run.command) {
            return usage_error(&argv, &e);
        }
        // CRIU's start-up check: the capabilities cryo needs, and --unprivileged for a
        // non-root user.
        // (`check --unprivileged` reports what is missing instead.)
        let report_only = matches!(cmd, Cmd::Check(_)) && o.unprivileged;
        if let Err(e) = cryo::privilege::check(o.unprivileged)
            .map(|_| ())
            .or_else(|e| if report_only { Ok(()) } else { Err(e) })
        {
            eprintln!("Error: {e}");
            eprintln!("  hint: {}", e.hint());
            return ExitCode::from(1);
        }
        // CRIU's --close: before anything else.
        for &fd in &o.close {
            if fd >= 0 && Path::new(&format!("/proc/self/fd/{fd}")).exists() {
                drop(cryo::sys::fd::adopt(fd));
            }
        }
    }
    match run_cmd(cmd, &run.config_files) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(h) = hint(&e) {
                eprintln!("  hint: {h}");
            }
            ExitCode::from(1)
        }
    }
}

/// A command line cryo cannot use: the error on stderr and, as CRIU logs its errors, in the
/// log file the command line names when it can be made out (zdtm reads it).
fn usage_error(argv: &[String], msg: &str) -> ExitCode {
    eprintln!("Error: {msg}");
    eprintln!("Try -h|--help for more info");
    if let Some(log) = cryo::cli::log_file_of(argv) {
        if log
            .parent()
            .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            let _ = std::fs::write(&log, format!("Error (cryo): {msg}\n"));
        }
    }
    ExitCode::from(1)
}

/// The options of a command that has them.
fn cmd_opts(cmd: &Cmd) -> Option<&Opts> {
    match cmd {
        Cmd::Dump(o)
        | Cmd::Restore(o)
        | Cmd::Check(o)
        | Cmd::PreDump(o)
        | Cmd::PageServer(o)
        | Cmd::LazyPages(o)
        | Cmd::Migrate(o)
        | Cmd::Receive(o)
        | Cmd::Service(o)
        | Cmd::Dedup(o)
        | Cmd::Exec(o) => Some(o),
        Cmd::Cpuinfo(c) => Some(&c.opts),
        Cmd::Show(_)
        | Cmd::Swrk(_)
        | Cmd::Inspect(_)
        | Cmd::Diff(_)
        | Cmd::Completions(_)
        | Cmd::Man(_) => None,
    }
}

fn hint(e: &anyhow::Error) -> Option<String> {
    if let Some(p) = e.downcast_ref::<cryo::privilege::PrivilegeError>() {
        return Some(p.hint());
    }
    if let Some(d) = e.downcast_ref::<dump::DumpError>() {
        return d.hint();
    }
    if let Some(r) = e.downcast_ref::<restore::RestoreError>() {
        return r.hint();
    }
    if let Some(m) = e.downcast_ref::<cryo::migrate::MigrateError>() {
        return m.hint();
    }
    if let Some(i) = e.downcast_ref::<cryo::inspect::InspectError>() {
        return i.hint();
    }
    None
}
/// Writes to stdout; a reader that went away (`| head`) ends cryo quietly, without a panic.
fn emit(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// Bold headings when stdout is a terminal and NO_COLOR is not set.
fn style() -> cryo::inspect::render::Style {
    cryo::inspect::render::Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

fn inspect(a: cryo::cli::InspectArgs) -> Result<ExitCode> {
    use cryo::inspect;
    let mut loaded = inspect::load(&a.path)?;
    if let Some((pid, addr, len)) = a.dump_mem().map_err(anyhow::Error::msg)? {
        let (bytes, missing) = loaded.dump_mem(pid, addr, len)?;
        for m in &missing {
            eprintln!("not in the checkpoint (written as zeros): {m}");
        }
        match &a.output {
            Some(f) => std::fs::write(f, &bytes)
                .with_context(|| format!("cannot write {}", f.display()))?,
            None if std::io::stdout().is_terminal() => {
                bail!("--dump-mem writes raw bytes: give --output FILE or redirect stdout")
            }
            None => emit(&bytes)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let search = match (&a.search, &a.search_regex) {
        (Some(p), _) => Some((p.clone(), false)),
        (None, Some(p)) => Some((p.clone(), true)),
        _ => None,
    }
    .map(|(pattern, regex)| inspect::SearchSpec {
        pattern,
        regex,
        context: a.context,
        max_hits: a.max_hits,
    });
    let sections = a.sections();
    let opts = inspect::Options {
        sections,
        pid: a.pid,
        summary: sections == inspect::Sections::ALL,
        search,
    };
    let report = loaded.report(&opts)?;
    if a.json {
        let mut v = serde_json::to_vec_pretty(&report)?;
        v.push(b'\n');
        emit(&v)?;
    } else {
        emit(inspect::render::render(&report, style(), &opts).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(a: cryo::cli::DiffArgs) -> Result<ExitCode> {
    use cryo::inspect;
    let mut x = inspect::load(&a.a)?;
    let mut y = inspect::load(&a.b)?;
    let d = inspect::diff::diff(&mut x, &mut y)?;
    if a.json {
        let mut v = serde_json::to_vec_pretty(&d)?;
        v.push(b'\n');
        emit(&v)?;
    } else {
        emit(inspect::diff::render(&d, style()).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cryo man`: the page of cryo, or with --dir one page per command.
fn man(a: cryo::cli::ManArgs) -> Result<ExitCode> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let Some(dir) = a.dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        emit(&buf)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![(String::from("cryo"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("cryo-{}", sub.get_name());
        let bin = format!("cryo {}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name).bin_name(bin)));
    }
    for (name, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves a path given relative to the work directory (CRIU's rule for logs and pidfiles).
fn in_workdir(c: &Opts, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        c.work_dir.as_deref().unwrap_or(&c.images_dir).join(p)
    }
}

/// The `--action-script` programs.
fn scripts(c: &Opts) -> cryo::notify::ActionScripts {
    cryo::notify::ActionScripts {
        scripts: c.action_script.clone(),
        images_dir: c.images_dir.clone(),
    }
}

/// The environment variable a daemonized page server finds its listening socket's fd in.
const PS_LISTEN_FD: &str = cryo::pageserver::LISTEN_FD_ENV;

/// `cryo page-server`: listens at `--address`/`--port` and serves one client into `-D`. With
/// `-d` it listens first, then goes on in a child of its own (its pid in `--pidfile`) and
/// returns; `--status-fd FD` gets a NUL byte once it listens.
fn page_server(a: &Opts) -> Result<ExitCode> {
    let dir = &a.images_dir;
    if let Some(prev) = &a.prev_images_dir {
        let link = dir.join(cryo::memtrack::PARENT_LINK);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(prev, &link)
            .with_context(|| format!("cannot make {}", link.display()))?;
    }
    let listener = match std::env::var(PS_LISTEN_FD)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(fd) => std::net::TcpListener::from(cryo::sys::fd::adopt(fd)),
        None => {
            let addr = cryo::pageserver::address(a.address.as_deref(), a.port.as_deref(), true)
                .map_err(anyhow::Error::msg)?;
            let l = std::net::TcpListener::bind(&addr)
                .with_context(|| format!("page server: cannot listen at {addr}"))?;
            tracing::info!(address = %addr, "page server: listening");
            l
        }
    };
    if serve_here(a, listener.as_fd(), PS_LISTEN_FD, "page server")? {
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = a
        .timeout
        .map_or(cryo::pageserver::DEFAULT_IDLE_TIMEOUT, |t| {
            std::time::Duration::from_secs(u64::from(t.max(1)))
        });
    let bytes = cryo::pageserver::run_server(dir, listener, Some(timeout))?;
    tracing::info!("page server: {bytes} bytes of pages received");
    Ok(ExitCode::SUCCESS)
}

/// The start of a server command (`page-server`, `lazy-pages`) once its socket listens: with
/// `-d`, a copy of this command is started in the background with the socket's fd in the
/// environment variable `env` (its pid written to `--pidfile`), readiness is reported and
/// `true` is returned (this process is done). Otherwise readiness is reported (unless this
/// is that background copy, whose parent did) and the caller serves.
fn serve_here(
    a: &Opts,
    listener: std::os::fd::BorrowedFd<'_>,
    env: &str,
    what: &str,
) -> Result<bool> {
    let daemon_copy = std::env::var_os(env).is_some();
    if a.restore_detached && !daemon_copy {
        cryo::sys::fd::set_cloexec(listener, false)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|w| w != "-d" && w != "--daemon" && w != "--restore-detached")
            .collect();
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(&args)
            .env(env, fd.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("{what}: cannot start the daemon"))?;
        if let Some(p) = &a.pidfile {
            std::fs::write(in_workdir(a, p), format!("{}\n", child.id()))?;
        }
        status_ready(a);
        return Ok(true);
    }
    if !daemon_copy {
        status_ready(a);
    }
    Ok(false)
}

/// The environment variable a daemonized lazy-pages daemon finds its listening socket in.
const LAZY_LISTEN_FD: &str = cryo::lazy::LISTEN_FD_ENV;

/// `cryo lazy-pages`: listens on `lazy-pages.socket` in the work directory and serves the
/// memory of one `restore --lazy-pages` (from the images, or with `--page-server` from the
/// `dump --lazy-pages` at `--address`/`--port`), then exits. `-d` and `--status-fd` as for the
/// page server.
fn lazy_pages(a: &Opts) -> Result<ExitCode> {
    let server = if a.page_server {
        Some(
            cryo::pageserver::address(a.address.as_deref(), a.port.as_deref(), false)
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let listener = match std::env::var(LAZY_LISTEN_FD)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(fd) => std::os::unix::net::UnixListener::from(cryo::sys::fd::adopt(fd)),
        None => {
            let path = cryo::lazy::socket_path(a.work_dir.as_deref().unwrap_or(&a.images_dir));
            let l = cryo::lazy::listen(&path)?;
            tracing::info!(socket = %path.display(), "lazy pages: listening");
            l
        }
    };
    if serve_here(a, listener.as_fd(), LAZY_LISTEN_FD, "lazy pages")? {
        return Ok(ExitCode::SUCCESS);
    }
    let r = cryo::lazy::serve(
        &a.images_dir,
        listener,
        server.as_deref(),
        cryo::lazy::ReceiveTie::from_env(),
    );
    match &r {
        // Started by `receive --lazy-pages` without -D: every page is in, the received
        // images go now.
        Ok(_) => cryo::lazy::remove_after(),
        // Not on a failure: they are what a restore may be tried again from.
        Err(_) if std::env::var_os(cryo::lazy::RECEIVE_PID_ENV).is_some() => tracing::warn!(
            images = %a.images_dir.display(),
            "lazy pages: the received images stay (restore again from them, or remove them)"
        ),
        Err(_) => {}
    }
    let r = r?;
    tracing::info!(
        "lazy pages: {} processes, {} pages on faults, {} pushed, {} zero pages",
        r.tasks,
        r.pages_faulted,
        r.pages_pushed,
        r.zero_pages
    );
    Ok(ExitCode::SUCCESS)
}

/// `cryo migrate -t PID --to ADDR:PORT`: prints each round and the downtime (`--json`: one
/// JSON document at the end).
fn migrate(a: &Opts) -> Result<ExitCode> {
    let Some(pid) = a.tree else {
        bail!("pid not specified (-t PID)");
    };
    let Some(to) = a.to.clone() else {
        bail!("migrate needs --to ADDR:PORT (where `cryo receive --port PORT` listens)");
    };
    if a.lazy_pages {
        // The destination's userfaultfd is its receive's to check (it refuses the greeting).
        if a.max_rounds.is_some() {
            bail!("migrate --lazy-pages is post-copy: no pre-copy rounds; drop --max-rounds");
        }
    }
    // The dump's options: its memory options (--lazy-pages among them) are migrate's to set.
    let dump = dump_opts(
        &Opts {
            lazy_pages: false,
            ..a.clone()
        },
        pid,
    )?;
    let opts = cryo::migrate::MigrateOpts {
        dump,
        to,
        max_rounds: a.max_rounds.unwrap_or(8),
        small_pages: 256,
        work: a.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        lazy: a.lazy_pages,
    };
    let json = a.json;
    let r = cryo::migrate::migrate(&opts, &mut |r| {
        if !json {
            let rate = r.dirty_pages_per_s.map_or(String::new(), |d| {
                format!(
                    ", dirty rate {:.0} pages/s ({:.1} MiB/s)",
                    d,
                    d * 4096.0 / 1048576.0
                )
            });
            println!(
                "round {}: {} pages ({:.1} MiB) in {:.0} ms, frozen {:.1} ms{rate}",
                r.round,
                r.pages,
                cryo::migrate::mib(r.pages),
                r.ms,
                r.frozen_ms
            );
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "final: {} pages ({:.1} MiB); downtime {:.1} ms (restore {:.1} ms); running on the destination as pid {}",
            r.final_pages,
            cryo::migrate::mib(r.final_pages),
            r.downtime_ms,
            r.restore_ms,
            r.restored_pid
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cryo receive --port PORT [--address A] [-D DIR]`: one migration, restored here.
fn receive(a: &Opts) -> Result<ExitCode> {
    let addr = cryo::pageserver::address(a.address.as_deref(), a.port.as_deref(), true)
        .map_err(anyhow::Error::msg)?;
    let listener = std::net::TcpListener::bind(&addr)
        .with_context(|| format!("receive: cannot listen at {addr}"))?;
    tracing::info!(address = %addr, "receive: listening");
    status_ready(a);
    let dir = if a.images_dir == Path::new(".") {
        std::env::temp_dir().join(format!("cryo-receive-{}", std::process::id()))
    } else {
        a.images_dir.clone()
    };
    // --lazy-pages: the tree runs at once, a daemon brings its pages from the received
    // images (checked here, before the source is told to go on).
    // Its log: lazy-pages.log in the work directory, else in the images directory (-D, or
    // receive's own, removed with it once every page is in).
    let daemon = cryo::migrate::LazyReceive {
        exe: std::env::current_exe().context("cannot find cryo itself")?,
        log: match &a.work_dir {
            Some(w) => w.join("lazy-pages.log"),
            None => dir.join("lazy-pages.log"),
        },
        verbosity: a.verbosity,
    };
    let full_uffd = cryo::sys::mem::userfaultfd_full().and_then(cryo::sys::mem::Uffd::new_lazy);
    let lazy = if a.lazy_pages {
        full_uffd.as_ref().map_err(|e| anyhow::anyhow!("{e}")).context("receive --lazy-pages: this kernel's userfaultfd lacks the fork/remap/remove/unmap events a lazy restore needs; run receive without --lazy-pages")?;
        Some(daemon.clone())
    } else {
        None
    };
    // A source's post-copy (`migrate --lazy-pages`) is taken where the kernel can.
    let lazy_on_request = full_uffd.is_ok().then_some(daemon);
    let opts = cryo::migrate::ReceiveOpts {
        keep: a.images_dir != Path::new("."),
        dir,
        restore: restore::RestoreOpts {
            detach: true,
            pidfile: a.pidfile.as_ref().map(|p| in_workdir(a, p)),
            cgroups: a.cgroup_opts().map_err(anyhow::Error::msg)?,
            network_lock: a.network_lock().map_err(anyhow::Error::msg)?,
            links: a.links().map_err(anyhow::Error::msg)?,
            sock: a.sock_opts(),
            cpu_cap: a.cpu_cap_bits().map_err(anyhow::Error::msg)?,
            ..Default::default()
        },
        timeout: a
            .timeout
            .map_or(cryo::pageserver::DEFAULT_IDLE_TIMEOUT, |t| {
                std::time::Duration::from_secs(u64::from(t.max(1)))
            }),
        lazy,
        lazy_on_request,
    };
    let r = cryo::migrate::receive(&opts, &listener)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "received {} rounds ({:.1} MiB of pages); restored in {:.1} ms; running as pid {}",
            r.rounds,
            r.bytes as f64 / 1048576.0,
            r.restore_ms,
            r.pid
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--status-fd FD`: one NUL byte once ready (CRIU's `status_ready`).
fn status_ready(a: &Opts) {
    if let Some(fd) = a.status_fd.as_deref().and_then(|f| f.parse::<i32>().ok()) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
        {
            let _ = std::io::Write::write_all(&mut f, &[0]);
        }
    }
}

/// What `dump` and `pre-dump` take from the options.
fn dump_opts(a: &Opts, pid: i32) -> Result<dump::DumpOpts> {
    if a.compress && (a.page_server || a.lazy_pages) {
        bail!(
            "--compress cannot be used with {}: the page server and the lazy-pages daemon take CRIU's raw pages; drop --compress",
            if a.page_server { "--page-server" } else { "--lazy-pages" }
        );
    }
    Ok(dump::DumpOpts {
        pid,
        leave_running: a.leave_running || a.leave_stopped,
        leave_stopped: a.leave_stopped,
        shell_job: a.shell_job,
        ghost_limit: a.ghost_limit,
        mounts: a.mount_policy().map_err(anyhow::Error::msg)?,
        external_net: a.net_externals().map_err(anyhow::Error::msg)?,
        external_pid: a.pid_externals().map_err(anyhow::Error::msg)?,
        empty_net: a.empty_net().map_err(anyhow::Error::msg)?,
        freeze_cgroup: a.freeze_cgroup.clone(),
        cgroup_mode: a.cgroup_mode().map_err(anyhow::Error::msg)?,
        file_locks: a.file_locks,
        network_lock: a.network_lock().map_err(anyhow::Error::msg)?,
        sock: a.sock_opts(),
        link_remap: a.link_remap,
        prev_images_dir: a.prev_images_dir.clone(),
        track_mem: a.track_mem,
        pre_dump_mode: a.pre_dump_mode.clone(),
        lazy_pages: if a.lazy_pages {
            Some(
                cryo::pageserver::address(a.address.as_deref(), a.port.as_deref(), true)
                    .map_err(|e| anyhow::anyhow!("--lazy-pages: {e} (the port the lazy-pages daemon takes the pages from)"))?,
            )
        } else {
            None
        },
        lazy_ready: a
            .status_fd
            .as_deref()
            .filter(|_| a.lazy_pages)
            .and_then(|f| f.trim().parse::<i32>().ok())
            .map(|n| std::path::PathBuf::from(format!("/proc/self/fd/{n}"))),
        lazy_connect_within: None,
        lazy_peer: None,
        cpu_cap: a.cpu_cap_bits().map_err(anyhow::Error::msg)?,
        timeout: a.timeout,
        page_server: if a.page_server {
            Some(
                cryo::pageserver::address(a.address.as_deref(), a.port.as_deref(), false)
                    .map_err(anyhow::Error::msg)?,
            )
        } else {
            None
        },
    })
}

fn setup(c: &Opts, create_dir: bool, config_files: &[PathBuf]) -> Result<()> {
    if create_dir {
        ImageDir::create(&c.images_dir)?;
    }
    let log = c.log_file.as_ref().map(|f| in_workdir(c, f));
    cryo::logging::init(c.verbosity, log.as_deref())
        .with_context(|| format!("cannot open log file {}", log.unwrap_or_default().display()))?;
    for f in config_files {
        tracing::debug!("Parsed config file {}", f.display());
    }
    // CRIU's words for the options that change what a dump or restore does.
    if c.skip_in_flight {
        tracing::info!("Will skip in-flight TCP connections");
    }
    if c.tcp_established {
        tracing::info!("Will dump/restore TCP connections");
    }
    if c.tcp_close {
        tracing::info!("Will drop all TCP connections on restore");
    }
    if c.link_remap {
        tracing::info!("Will allow link remaps on FS");
    }
    if let Some(l) = &c.libdir {
        tracing::debug!(libdir = %l.display(), "cryo has no plugins");
    }
    if let Some(y) = &c.cgroup_yard {
        cryo::kinds::cgroup::set_yard(in_workdir(c, Path::new(y)));
    }
    Ok(())
}

fn run_cmd(cmd: Cmd, config_files: &[PathBuf]) -> Result<ExitCode> {
    cryo::sys::proc::catch_termination_signals();
    match cmd {
        Cmd::Dump(a) => {
            setup(&a, true, config_files)?;
            let Some(pid) = a.tree else {
                bail!("pid not specified (-t PID)");
            };
            let opts = dump_opts(&a, pid)?;
            let dir = ImageDir::create(&a.images_dir)?;
            dir.set_compress(a.compress);
            let spin = progress(&format!("dumping {pid}"));
            let mut hooks = scripts(&a);
            let r = dump::run(&opts, &dir, &mut hooks);
            if let Some(s) = spin {
                s.finish_and_clear();
            }
            let r = r?;
            tracing::info!(
                "Dumped {} in {} us (frozen {} us, {} pages, {} in-target syscalls)",
                r.pid,
                r.total_us,
                r.frozen_us,
                r.pages_written,
                r.remote_syscalls
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.display_stats {
                eprintln!(
                    "dumped pid {}: {} pages, frozen {:.1} ms, total {:.1} ms",
                    r.pid,
                    r.pages_written,
                    r.frozen_us as f64 / 1e3,
                    r.total_us as f64 / 1e3
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PreDump(a) => {
            setup(&a, true, config_files)?;
            let Some(pid) = a.tree else {
                bail!("pid not specified (-t PID)");
            };
            let opts = dump_opts(&a, pid)?;
            let dir = ImageDir::create(&a.images_dir)?;
            dir.set_compress(a.compress);
            let mut hooks = scripts(&a);
            let r = dump::predump::run(&opts, &dir, &mut hooks)?;
            tracing::info!(
                "Pre-dumped {} in {} us (frozen {} us, {} pages)",
                r.pid,
                r.total_us,
                r.frozen_us,
                r.pages_written
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.display_stats {
                eprintln!(
                    "pre-dumped pid {}: {} pages, frozen {:.1} ms, total {:.1} ms",
                    r.pid,
                    r.pages_written,
                    r.frozen_us as f64 / 1e3,
                    r.total_us as f64 / 1e3
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PageServer(a) => {
            setup(&a, true, config_files)?;
            page_server(&a)
        }
        Cmd::LazyPages(a) => {
            setup(&a, false, config_files)?;
            lazy_pages(&a)
        }
        Cmd::Migrate(a) => {
            setup(&a, false, config_files)?;
            migrate(&a)
        }
        Cmd::Receive(a) => {
            setup(&a, false, config_files)?;
            receive(&a)
        }
        Cmd::Service(a) => {
            setup(&a, false, config_files)?;
            bail!("`service` (an RPC daemon on a socket) is not implemented in cryo yet; runtimes use `swrk`, which is")
        }
        Cmd::Cpuinfo(c) => {
            setup(&c.opts, c.action == "dump", config_files)?;
            cpuinfo(&c.action, &c.opts)
        }
        Cmd::Exec(a) => {
            setup(&a, false, config_files)?;
            bail!("The \"exec\" action is deprecated by the Compel library.")
        }
        Cmd::Dedup(a) => {
            setup(&a, false, config_files)?;
            // Deduplication works against a parent dump (a pre-dump chain).
            if a.images_dir.join("parent").exists() {
                bail!("dedup: deduplication against the parent images is not implemented in cryo yet: the parent's pages stay (restore reads through the chain as it is)");
            }
            tracing::info!("dedup: no parent images, nothing to deduplicate");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore(a) => {
            setup(&a, false, config_files)?;
            if a.tree.is_some() {
                tracing::warn!("Using -t with criu restore is obsoleted");
            }
            // --inherit-fd: pipes are handed to the tree; a key without a colon names an
            // external namespace, joined through the fd.
            let (inherit_fd, ns_keys): (Vec<_>, Vec<_>) = a
                .inherit_fds()
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .partition(|(k, _)| k.contains(':'));
            let mut join = a.join().map_err(anyhow::Error::msg)?;
            join.by_key.extend(
                ns_keys
                    .into_iter()
                    .map(|(k, n)| (k, std::path::PathBuf::from(format!("/proc/self/fd/{n}")))),
            );
            let ext = a.mounts().map_err(anyhow::Error::msg)?;
            let mut mounts = ext.restore_opts(a.root.clone());
            mounts.enable_fs = a.enabled_fs();
            mounts.auto_external = ext.auto;
            let opts = restore::RestoreOpts {
                detach: a.restore_detached,
                leave_stopped: a.leave_stopped,
                pidfile: a.pidfile.as_ref().map(|p| in_workdir(&a, p)),
                shell_job: a.shell_job,
                orphan_pts_master: a.orphan_pts_master,
                sibling: a.restore_sibling,
                inherit_fd,
                mounts,
                join,
                cgroups: a.cgroup_opts().map_err(anyhow::Error::msg)?,
                network_lock: a.network_lock().map_err(anyhow::Error::msg)?,
                links: a.links().map_err(anyhow::Error::msg)?,
                sock: a.sock_opts(),
                lazy_pages: a.lazy_pages.then(|| {
                    cryo::lazy::socket_path(a.work_dir.as_deref().unwrap_or(&a.images_dir))
                }),
                cpu_cap: a.cpu_cap_bits().map_err(anyhow::Error::msg)?,
                stage: None,
            };
            let dir = ImageDir::open(&a.images_dir)?;
            let spin = progress("restoring");
            let mut hooks = scripts(&a);
            let r = restore::run(&opts, &dir, &mut hooks);
            // Held until cryo exits (the RPC layer is to send them to its client).
            let _masters = cryo::kinds::tty::take_orphan_masters();
            if let Some(s) = spin {
                s.finish_and_clear();
            }
            let r = r?;
            tracing::info!(
                "Restored {} in {} us ({} pages, {} in-target syscalls)",
                r.pid,
                r.total_us,
                r.pages_restored,
                r.remote_syscalls
            );
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.display_stats {
                eprintln!(
                    "restored pid {}: {} pages in {:.1} ms",
                    r.pid,
                    r.pages_restored,
                    r.total_us as f64 / 1e3
                );
            }
            if a.exec_cmd {
                // CRIU's --exec-cmd: the command takes cryo's place as the restored root's
                // parent.
                use std::os::unix::process::CommandExt;
                let err = std::process::Command::new(&a.command[0])
                    .args(&a.command[1..])
                    .exec();
                bail!("Failed to exec command {}: {err}", a.command[0]);
            }
            if !a.restore_detached {
                restore::wait_for(r.pid, a.shell_job);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Swrk(a) => {
            let ok = cryo::rpc::serve(a.fd)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Show(a) => {
            let v = show::show(&a.file)?;
            let mut out = serde_json::to_vec_pretty(&v)?;
            out.push(b'\n');
            emit(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect(a) => inspect(a),
        Cmd::Diff(a) => diff(a),
        Cmd::Completions(a) => {
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "cryo", &mut buf);
            emit(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man(a) => man(a),
        Cmd::Check(a) => {
            setup(&a, false, config_files)?;
            if !a.cpu_cap.is_empty() {
                return cpuinfo("check", &a);
            }
            check(&a)
        }
    }
}

/// `cpuinfo dump|check`, and `check --cpu-cap -D DIR`: CRIU's default checks (fpu, ins)
/// unless `--cpu-cap` says otherwise (`none`: all of them, as CRIU).
fn cpuinfo(action: &str, a: &Opts) -> Result<ExitCode> {
    use cryo::kinds::cpuinfo;
    match action {
        "dump" => {
            cpuinfo::dump(&ImageDir::open(&a.images_dir)?)?;
            Ok(ExitCode::SUCCESS)
        }
        "check" => {
            let cap = a.cpu_checks().map_err(anyhow::Error::msg)?;
            match cpuinfo::check(&ImageDir::open(&a.images_dir)?, cap) {
                Ok(()) => {
                    println!("this CPU can run the tree in {}", a.images_dir.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("Error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        other => bail!("cpuinfo: unknown action {other:?}: use dump or check"),
    }
}

/// `check`: one feature (`--feature NAME`: "NAME is supported", exit 0, or why not, exit 1),
/// or every required feature (`--extra`, `--experimental`: the optional ones too), as
/// CRIU words it.
fn check(a: &Opts) -> Result<ExitCode> {
    if a.unprivileged && a.feature.is_none() {
        let p = cryo::privilege::Privilege::current()?;
        let lines = p.report();
        if a.json {
            println!("{}", serde_json::to_string(&lines)?);
        } else {
            for l in &lines {
                println!("{l}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(name) = a.feature.as_deref() {
        if name == "list" {
            for n in features::CRIU_FEATURES {
                println!("{n}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let Some(f) = features::probe(name) else {
            bail!("Unknown feature {name}");
        };
        if a.json {
            println!("{}", serde_json::to_string(&f)?);
        } else if f.ok {
            println!("{name} is supported");
        } else {
            println!("{name} is NOT supported: {}", f.detail);
        }
        return Ok(if f.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let all = features::probe_all();
    let bad: Vec<_> = all
        .iter()
        .filter(|f| {
            !f.ok
                && match f.category {
                    features::Category::Required => true,
                    features::Category::Extra => a.extra,
                    features::Category::Experimental => a.experimental,
                }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        for f in &bad {
            println!("{}: missing: {}", f.name, f.detail);
        }
        if bad.is_empty() {
            println!("Looks good.");
        } else if bad
            .iter()
            .all(|f| f.category != features::Category::Required)
        {
            println!("Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure.");
        } else {
            println!("Does not look good.");
        }
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress bar on stderr while a dump or restore runs, only when stderr is a terminal:
/// a spinner until the memory copy starts, then bytes copied out of the total. Drawn by a
/// thread of its own, which the engine stops while it needs cryo single-threaded
/// (`cryo::progress::pause`).
struct Progress {
    msg: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The display [`progress`] showed; `finish_and_clear` takes it away.
struct Shown;

impl Shown {
    fn finish_and_clear(self) {
        cryo::progress::hide();
    }
}

impl cryo::progress::Display for Progress {
    fn start(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = flag.clone();
        let msg = self.msg.clone();
        self.thread = Some(std::thread::spawn(move || {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_message(msg);
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> ");
            let mut styled = false;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (done, total) = cryo::progress::get();
                if total > 0 {
                    if !styled {
                        pb.set_style(style.clone());
                        pb.set_length(total);
                        styled = true;
                    }
                    pb.set_position(done.min(total));
                } else {
                    pb.tick();
                }
                std::thread::sleep(std::time::Duration::from_millis(80));
            }
            pb.finish_and_clear();
        }));
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn progress(msg: &str) -> Option<Shown> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    cryo::progress::show(Box::new(Progress {
        msg: msg.to_string(),
        stop: Default::default(),
        thread: None,
    }));
    Some(Shown)
}
