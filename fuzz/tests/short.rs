//! The short fuzzing run of the test suite: real image sets dumped by cryo from test
//! programs (integration/fuzz-seeds.sh) plus CRIU's fixture, then a fixed-seed run of
//! structure-aware mutants through the decoders, the manifest check and restore planning,
//! in-process, for at most `INPUTS` inputs or `BUDGET` (whichever comes first). Any panic
//! or violated property (a mount path outside --root) fails it, naming the input to
//! regenerate (`cryo-fuzz regen --seed S --index I`). integration/fuzz.sh is the long run.
//! Needs root and target/release/cryo (integration/test.sh builds it).

use std::path::Path;
use std::time::{Duration, Instant};

const SEED: u64 = 20_261_206;
const INPUTS: u64 = 60_000;
const BUDGET: Duration = Duration::from_secs(45);

#[test]
fn short_fuzz_run_finds_nothing() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seeds = std::env::temp_dir().join(format!("cryo-fuzz-short-{}", std::process::id()));
    let st = std::process::Command::new("bash")
        .arg(repo.join("integration/fuzz-seeds.sh"))
        .arg(&seeds)
        .status()
        .expect("run fuzz-seeds.sh");
    assert!(
        st.success(),
        "fuzz-seeds.sh failed (needs root and target/release/cryo)"
    );
    let corpus = cryo_fuzz::Corpus::load(std::slice::from_ref(&seeds)).unwrap();
    let dumped = corpus
        .sets
        .iter()
        .filter(|(n, _)| !n.ends_with("criu-4.2-sleep"))
        .count();
    assert!(dumped >= 5, "too few image sets were dumped: {dumped}");
    let base = std::env::temp_dir().join(format!("cryo-fuzz-short-w-{}", std::process::id()));
    let mut w = cryo_fuzz::Workdir::new(&base).unwrap();
    cryo_fuzz::quiet_panics();
    let t0 = Instant::now();
    let mut findings = Vec::new();
    let mut n = 0;
    while n < INPUTS && t0.elapsed() < BUDGET {
        let input = cryo_fuzz::generate(&corpus, SEED, n);
        match cryo_fuzz::catch(|| cryo_fuzz::run_input(&mut w, &input)) {
            Ok(Ok(())) => {}
            Ok(Err(v)) => findings.push(format!("input {n}: {}", v.0)),
            Err(p) => findings.push(format!("input {n}: panic: {p}")),
        }
        n += 1;
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "short fuzz run: {n} inputs from {} image sets in {:.1} s, {} findings; {}",
        corpus.sets.len(),
        t0.elapsed().as_secs_f64(),
        findings.len(),
        cryo_fuzz::reached_summary()
    );
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&seeds);
    assert!(
        findings.is_empty(),
        "seed {SEED}: {findings:#?}\n(regenerate with: cryo-fuzz regen --seeds DIR --seed {SEED} --index I --out DIR)"
    );
}
