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

/// VMA bounds no kernel would write (an end at the top of u64, an end before its start, in
/// a shared anonymous mapping): restore planning (trampoline placement, shmem sizes) refuses
/// or survives them without overflowing. Made from CRIU's fixture.
#[test]
fn hostile_vma_bounds_do_not_overflow_planning() {
    use cryo::image::{self, pb};
    use prost::Message;
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration/fixtures/criu-4.2-sleep");
    let mut input = cryo_fuzz::load_saved(&fixture).unwrap();
    input.files.retain(|(n, _)| n != "README.md");
    input.whole = true;
    let (_, mm) = input
        .files
        .iter_mut()
        .find(|(n, _)| n.starts_with("mm-"))
        .expect("an mm image");
    let frames = image::entries(Path::new("mm"), image::MM, mm).unwrap();
    let mut e = pb::MmEntry::decode(frames[0].1).unwrap();
    assert!(e.vmas.len() >= 3);
    e.vmas[0].start = 0x1000;
    e.vmas[0].end = u64::MAX;
    e.vmas[1].status |= 1 << 8; // ANON_SHARED
    e.vmas[1].end = e.vmas[1].start - 4096;
    e.vmas[2].status |= 1 << 8;
    e.vmas[2].pgoff = u64::MAX - 4096;
    *mm = cryo_fuzz::frame(image::MM, &[e]);
    let base = std::env::temp_dir().join(format!("cryo-fuzz-vma-{}", std::process::id()));
    let mut w = cryo_fuzz::Workdir::new(&base).unwrap();
    let r = cryo_fuzz::catch(|| cryo_fuzz::run_input(&mut w, &input));
    let _ = std::fs::remove_dir_all(&base);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(v)) => panic!("{}", v.0),
        Err(p) => panic!("planning panicked: {p}"),
    }
}
