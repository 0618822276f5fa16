//! The `cryo` binary (also answers as `criu` through a symlink): parses the command line,
//! sets up logging, runs the command, prints errors with a hint, maps them to exit codes.

#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cryo::cli::{Cli, Cmd, Common};
use cryo::image::ImageDir;
use cryo::{dump, features, restore, show};

fn main() -> ExitCode {
    let args = cryo::cli::normalize(std::env::args());
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.version {
        println!("Version: 4.2\ncryo {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(cmd) = cli.cmd else {
        eprintln!("cryo: a command is needed (dump, restore, show, inspect, diff, check); see cryo --help");
        return ExitCode::from(1);
    };
    match run(cmd) {
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

fn hint(e: &anyhow::Error) -> Option<String> {
    if let Some(d) = e.downcast_ref::<dump::DumpError>() {
        return d.hint();
    }
    if let Some(r) = e.downcast_ref::<restore::RestoreError>() {
        return r.hint();
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
fn in_workdir(c: &Common, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        c.work_dir.as_deref().unwrap_or(&c.images_dir).join(p)
    }
}

/// The `--action-script` programs.
fn scripts(c: &Common) -> cryo::notify::ActionScripts {
    cryo::notify::ActionScripts {
        scripts: c.action_script.clone(),
        images_dir: c.images_dir.clone(),
    }
}

fn setup(c: &Common, create_dir: bool) -> Result<()> {
    if let Some((opt, why)) = c.unsupported.first() {
        bail!("option --{opt} is not supported by cryo yet: {why}");
    }
    if create_dir {
        ImageDir::create(&c.images_dir)?;
    }
    let log = c.log_file.as_ref().map(|f| in_workdir(c, f));
    cryo::logging::init(c.verbosity, log.as_deref())
        .with_context(|| format!("cannot open log file {}", log.unwrap_or_default().display()))?;
    Ok(())
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    cryo::sys::proc::catch_termination_signals();
    match cmd {
        Cmd::Dump(a) => {
            setup(&a.common, true)?;
            let opts = dump::DumpOpts {
                pid: a.tree,
                leave_running: a.leave_running,
                shell_job: a.shell_job,
                ghost_limit: a.ghost_limit,
                external_mounts: a.common.mounts().map_err(anyhow::Error::msg)?.dump_map(),
                external_net: a.common.net_externals().map_err(anyhow::Error::msg)?,
                empty_net: a.common.empty_net().map_err(anyhow::Error::msg)?,
                freeze_cgroup: a.common.freeze_cgroup.clone(),
                cgroup_mode: a.common.cgroup_mode().map_err(anyhow::Error::msg)?,
                file_locks: a.common.file_locks,
                network_lock: a.common.network_lock().map_err(anyhow::Error::msg)?,
                sock: a.common.sock_opts(),
                link_remap: a.common.link_remap,
            };
            let dir = ImageDir::create(&a.common.images_dir)?;
            let spin = progress(&format!("dumping {}", a.tree));
            let mut hooks = scripts(&a.common);
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
            if a.common.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.common.display_stats {
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
            setup(&a.common, false)?;
            bail!(
                "pre-dump is not supported: it needs soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY), \
                 and incremental dumps are not implemented yet; use `cryo dump`"
            )
        }
        Cmd::Restore(a) => {
            setup(&a.common, false)?;
            // --inherit-fd: pipes are handed to the tree; a key without a colon names an
            // external namespace, joined through the fd.
            let (inherit_fd, ns_keys): (Vec<_>, Vec<_>) = a
                .inherit_fds()
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .partition(|(k, _)| k.contains(':'));
            let mut join = a.common.join().map_err(anyhow::Error::msg)?;
            join.by_key.extend(
                ns_keys
                    .into_iter()
                    .map(|(k, n)| (k, std::path::PathBuf::from(format!("/proc/self/fd/{n}")))),
            );
            let opts = restore::RestoreOpts {
                detach: a.detached,
                pidfile: a.common.pidfile.as_ref().map(|p| in_workdir(&a.common, p)),
                shell_job: a.shell_job,
                orphan_pts_master: a.orphan_pts_master,
                sibling: a.restore_sibling,
                inherit_fd,
                mounts: a
                    .common
                    .mounts()
                    .map_err(anyhow::Error::msg)?
                    .restore_opts(a.common.root.clone()),
                join,
                cgroups: a.common.cgroup_opts().map_err(anyhow::Error::msg)?,
                network_lock: a.common.network_lock().map_err(anyhow::Error::msg)?,
                links: a.common.links().map_err(anyhow::Error::msg)?,
                sock: a.common.sock_opts(),
            };
            let dir = ImageDir::open(&a.common.images_dir)?;
            let spin = progress("restoring");
            let mut hooks = scripts(&a.common);
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
            if a.common.json {
                println!("{}", serde_json::to_string(&r)?);
            } else if a.common.display_stats {
                eprintln!(
                    "restored pid {}: {} pages in {:.1} ms",
                    r.pid,
                    r.pages_restored,
                    r.total_us as f64 / 1e3
                );
            }
            if !a.detached {
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
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "cryo", &mut buf);
            emit(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man(a) => man(a),
        Cmd::Check(a) => {
            setup(&a.common, false)?;
            let all = features::probe_all();
            if let Some(name) = a.feature.as_deref() {
                if name == "list" {
                    for f in &all {
                        println!("{}", f.name);
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                let Some(f) = all.iter().find(|f| f.name == name) else {
                    bail!("unknown feature {name}; `cryo check --feature list` lists them");
                };
                if a.common.json {
                    println!("{}", serde_json::to_string(f)?);
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
            let bad: Vec<_> = all
                .iter()
                .filter(|f| !f.ok && (f.required || a.all))
                .collect();
            if a.common.json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                for f in &bad {
                    println!("{}: missing: {}", f.name, f.detail);
                }
                if bad.is_empty() {
                    println!("Looks good.");
                } else if bad.iter().all(|f| !f.required) {
                    println!("Looks good but some kernel features are missing.");
                }
            }
            Ok(if bad.iter().any(|f| f.required || a.all) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
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
