//! Replays every input the fuzzer found a bug with (integration/fixtures/fuzz-regressions,
//! one directory each; `finding.txt` says what it did and where it was fixed): each must run
//! through every target without a panic or a violated property. Overflow findings panic
//! only with overflow checks: `cargo test --profile fuzz -p cryo-fuzz` (integration/test.sh
//! runs it so).

use std::path::Path;

#[test]
fn fuzz_regressions_replay_cleanly() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration/fixtures/fuzz-regressions");
    let mut dirs: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz-regressions")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no regressions in {}", dir.display());
    let base = std::env::temp_dir().join(format!("cryo-fuzz-regr-{}", std::process::id()));
    let mut w = cryo_fuzz::Workdir::new(&base).unwrap();
    cryo_fuzz::quiet_panics();
    let mut bad = Vec::new();
    for d in &dirs {
        let input = cryo_fuzz::load_saved(d).unwrap();
        match cryo_fuzz::catch(|| cryo_fuzz::run_input(&mut w, &input)) {
            Ok(Ok(())) => {}
            Ok(Err(v)) => bad.push(format!("{}: {}", d.display(), v.0)),
            Err(p) => bad.push(format!("{}: panic: {p}", d.display())),
        }
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&base);
    assert!(bad.is_empty(), "{bad:#?}");
}
