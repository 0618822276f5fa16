//! `cryo-fuzz`: the long fuzzing run (integration/fuzz.sh) and its tools.
//!
//!     cryo-fuzz run --seeds DIR [--seeds DIR]... --inputs N [--jobs J] [--seed S]
//!                   [--out DIR] [--timeout SECS]
//!     cryo-fuzz replay DIR...              saved inputs (findings, regressions)
//!     cryo-fuzz regen --seeds DIR --seed S --index I --out DIR
//!
//! `run` is a supervisor: it splits inputs 0..N among J worker processes (`worker`, the
//! same binary), each running inputs in-process (`cryo_fuzz::run_input`, panics caught).
//! A worker writes the number of the input it is on to a progress file before running it,
//! so when a worker stops moving for `--timeout` seconds (a hang) or dies (an allocation
//! over the cap aborts it, as would a stack overflow), the supervisor knows the input,
//! regenerates it (inputs are a pure function of seed and number), saves it, and starts a
//! new worker after it.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryo_fuzz::{Corpus, Workdir};

/// A worker's allocations are capped: one input needing more than this aborts it.
#[global_allocator]
static ALLOC: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);
const ALLOC_CAP: usize = 1 << 30;

struct Args {
    seeds: Vec<PathBuf>,
    inputs: u64,
    jobs: u64,
    seed: u64,
    out: PathBuf,
    timeout: u64,
    from: u64,
    to: u64,
    index: u64,
    progress: Option<PathBuf>,
    rest: Vec<PathBuf>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        seeds: Vec::new(),
        inputs: 100_000,
        jobs: 2,
        seed: 1,
        out: PathBuf::from("target/fuzz-findings"),
        timeout: 10,
        from: 0,
        to: 0,
        index: 0,
        progress: None,
        rest: Vec::new(),
    };
    while let Some(x) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{x} needs a value")))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .unwrap_or_else(|_| die(&format!("bad number {v}")))
        };
        match x.as_str() {
            "--seeds" => a.seeds.push(val().into()),
            "--inputs" => a.inputs = num(val()),
            "--jobs" => a.jobs = num(val()).max(1),
            "--seed" => a.seed = num(val()),
            "--out" => a.out = val().into(),
            "--timeout" => a.timeout = num(val()),
            "--from" => a.from = num(val()),
            "--to" => a.to = num(val()),
            "--index" => a.index = num(val()),
            "--progress" => a.progress = Some(val().into()),
            _ if x.starts_with("--") => die(&format!("unknown option {x}")),
            _ => a.rest.push(x.into()),
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("cryo-fuzz: {msg}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let a = parse(args);
    match cmd.as_str() {
        "run" => supervise(&a),
        "worker" => worker(&a),
        "replay" => replay(&a),
        "regen" => {
            let corpus = corpus(&a);
            let input = cryo_fuzz::generate(&corpus, a.seed, a.index);
            cryo_fuzz::save(
                &input,
                &a.out,
                &format!("seed {} input {}", a.seed, a.index),
            )
            .unwrap_or_else(|e| die(&e.to_string()));
        }
        _ => die("usage: cryo-fuzz run|replay|regen ... (see src/main.rs)"),
    }
}

fn corpus(a: &Args) -> Corpus {
    let c = Corpus::load(&a.seeds).unwrap_or_else(|e| die(&format!("seeds: {e}")));
    if c.sets.is_empty() {
        die("no seed image sets (--seeds DIR; integration/fuzz-seeds.sh makes them)");
    }
    c
}

fn workdir(tag: &str) -> Workdir {
    // tmpfs: every input rewrites a few files.
    let tmp = Path::new("/dev/shm");
    let tmp = if tmp.is_dir() {
        tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let base = tmp.join(format!("cryo-fuzz-{}-{tag}", std::process::id()));
    Workdir::new(&base).unwrap_or_else(|e| die(&format!("workdir: {e}")))
}

/// Runs inputs `from..to`, saving panics and violations under `out`.
fn worker(a: &Args) {
    let corpus = corpus(a);
    let mut w = workdir("w");
    let progress = a.progress.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap_or_else(|e| die(&format!("{}: {e}", p.display())))
    });
    ALLOC
        .set_limit(ALLOC.allocated() + ALLOC_CAP)
        .unwrap_or_else(|_| die("allocator limit"));
    cryo_fuzz::quiet_panics();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut findings = 0u64;
    for i in a.from..a.to {
        if let Some(f) = &progress {
            let _ = f.write_at(&i.to_ne_bytes(), 0);
        }
        let input = cryo_fuzz::generate(&corpus, a.seed, i);
        let what = match cryo_fuzz::catch(|| cryo_fuzz::run_input(&mut w, &input)) {
            Ok(Ok(())) => continue,
            Ok(Err(v)) => format!("violation: {}", v.0),
            Err(p) => format!("panic: {p}"),
        };
        findings += 1;
        // The first few of each kind (same message up to numbers) are kept.
        let key: String = what.chars().filter(|c| !c.is_ascii_digit()).collect();
        let n = seen.entry(key).or_default();
        *n += 1;
        if *n <= 3 {
            eprintln!("finding at seed {} input {i}: {what}", a.seed);
            let d = a.out.join(format!("finding-{}-{i}", a.seed));
            let _ = cryo_fuzz::save(&input, &d, &format!("seed {} input {i}: {what}", a.seed));
        }
    }
    let _ = std::fs::remove_dir_all(w.images.parent().unwrap_or(Path::new("/nonexistent")));
    eprintln!(
        "worker {}..{} done: {findings} findings; {}",
        a.from,
        a.to,
        cryo_fuzz::reached_summary()
    );
}

struct Worker {
    child: Child,
    progress: PathBuf,
    stderr: PathBuf,
    to: u64,
    last: u64,
    moved: Instant,
}

fn spawn_worker(a: &Args, from: u64, to: u64, n: usize) -> Worker {
    let progress = a.out.join(format!(".progress-{n}"));
    let stderr = a.out.join(format!(".worker-{n}.log"));
    std::fs::write(&progress, from.to_ne_bytes()).expect("progress file");
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.arg("worker")
        .args(["--seed", &a.seed.to_string()])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .arg("--progress")
        .arg(&progress)
        .arg("--out")
        .arg(&a.out)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("worker log"));
    for s in &a.seeds {
        c.arg("--seeds").arg(s);
    }
    Worker {
        child: c.spawn().expect("start a worker"),
        progress,
        stderr,
        to,
        last: from,
        moved: Instant::now(),
    }
}

fn progress_of(w: &Worker) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(&w.progress)
        .and_then(|mut f| f.read_exact(&mut b))
        .map(|_| u64::from_ne_bytes(b))
        .unwrap_or(w.last)
}

/// The supervisor of `run`.
fn supervise(a: &Args) {
    std::fs::create_dir_all(&a.out).unwrap_or_else(|e| die(&e.to_string()));
    let corpus = corpus(a);
    eprintln!(
        "cryo-fuzz: {} inputs, {} workers, seed {}, {} seed image sets, findings in {}",
        a.inputs,
        a.jobs,
        a.seed,
        corpus.sets.len(),
        a.out.display()
    );
    let t0 = Instant::now();
    let per = a.inputs.div_ceil(a.jobs);
    let mut workers: Vec<Option<Worker>> = (0..a.jobs)
        .map(|j| {
            let (from, to) = (j * per, ((j + 1) * per).min(a.inputs));
            Some(spawn_worker(a, from, to, j as usize))
        })
        .collect();
    let mut crashes = Vec::new();
    let mut report = Instant::now();
    while workers.iter().any(|w| w.is_some()) {
        std::thread::sleep(Duration::from_millis(200));
        for (n, slot) in workers.iter_mut().enumerate() {
            let Some(w) = slot else { continue };
            let at = progress_of(w);
            if at != w.last {
                w.last = at;
                w.moved = Instant::now();
            }
            let status = w.child.try_wait().expect("wait");
            let hung = status.is_none() && w.moved.elapsed() > Duration::from_secs(a.timeout);
            if hung {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
            match (status, hung) {
                (Some(s), _) if s.success() => {
                    *slot = None;
                    continue;
                }
                (None, false) => continue,
                _ => {}
            }
            let log = std::fs::read_to_string(&w.stderr).unwrap_or_default();
            let why = if hung {
                format!("hang: input ran more than {} s", a.timeout)
            } else if log.contains("memory allocation of") {
                format!(
                    "allocation blow-up: {}",
                    log.lines()
                        .rfind(|l| l.contains("memory allocation of"))
                        .unwrap_or("")
                )
            } else {
                format!(
                    "worker died: {status:?}: {}",
                    log.lines().last().unwrap_or("")
                )
            };
            eprintln!("cryo-fuzz: input {at}: {why}");
            let input = cryo_fuzz::generate(&corpus, a.seed, at);
            let d = a.out.join(format!("finding-{}-{at}", a.seed));
            let _ = cryo_fuzz::save(&input, &d, &format!("seed {} input {at}: {why}", a.seed));
            crashes.push(at);
            let to = w.to;
            *slot = (at + 1 < to).then(|| spawn_worker(a, at + 1, to, n));
        }
        if report.elapsed() > Duration::from_secs(30) {
            report = Instant::now();
            let done: u64 = workers
                .iter()
                .enumerate()
                .map(|(j, w)| match w {
                    Some(w) => w.last - j as u64 * per,
                    None => (((j as u64) + 1) * per).min(a.inputs) - j as u64 * per,
                })
                .sum();
            eprintln!(
                "cryo-fuzz: {done} inputs in {:.0} s ({:.0}/s)",
                t0.elapsed().as_secs_f64(),
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut findings: Vec<String> = std::fs::read_dir(&a.out)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("finding-"))
                .filter_map(|e| std::fs::read_to_string(e.path().join("finding.txt")).ok())
                .filter_map(|t| t.lines().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    findings.sort();
    for f in &findings {
        println!("finding: {f}");
    }
    println!(
        "cryo-fuzz: {} inputs in {secs:.0} s ({:.0} inputs/s, {} workers), {} findings ({} hangs/crashes)",
        a.inputs,
        a.inputs as f64 / secs,
        a.jobs,
        findings.len(),
        crashes.len()
    );
    if !findings.is_empty() {
        std::process::exit(1);
    }
}

/// Runs saved inputs once each; exits non-zero if any panics or violates a property.
fn replay(a: &Args) {
    cryo_fuzz::quiet_panics();
    let mut w = workdir("replay");
    let mut bad = 0;
    for d in &a.rest {
        let input = cryo_fuzz::load_saved(d).unwrap_or_else(|e| die(&e.to_string()));
        let t = Instant::now();
        let r = cryo_fuzz::catch(|| cryo_fuzz::run_input(&mut w, &input));
        let what = match r {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(v)) => format!("violation: {}", v.0),
            Err(p) => format!("panic: {p}"),
        };
        if what != "ok" {
            bad += 1;
        }
        println!(
            "{}: {what} ({:.3} s)",
            d.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(w.images.parent().unwrap_or(Path::new("/nonexistent")));
    if bad > 0 {
        std::process::exit(1);
    }
}
