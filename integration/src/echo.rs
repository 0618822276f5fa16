//! The echo clients' output (`integration/progs/echocli.c`): progress, and the summary
//! that says every byte came back once, in order, without an error.

use std::path::Path;

use crate::{lines, signal, wait_for};

/// The last "progress N" line of the clients' output.
pub fn progress(out: &Path) -> u64 {
    lines(out)
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("progress ")?.parse().ok())
        .unwrap_or(0)
}

/// Waits until the clients moved at least `bytes` bytes past where they were.
pub fn wait_progress(out: &Path, bytes: u64) {
    let start = progress(out);
    wait_for("the connections to move data", 60, || {
        progress(out) >= start + bytes
    });
}

/// Stops the clients (SIGUSR1), waits for their summary and checks every byte came back
/// once, in order, without an error; returns the summary.
pub fn finish_clients(pid: i32, out: &Path) -> String {
    signal(pid, libc::SIGUSR1);
    wait_for("the clients' summary", 90, || {
        lines(out).iter().any(|l| l.starts_with("done "))
    });
    let done = lines(out)
        .into_iter()
        .find(|l| l.starts_with("done "))
        .unwrap();
    let errors: Vec<String> = lines(out)
        .into_iter()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert!(errors.is_empty(), "the clients saw errors: {errors:?}");
    assert!(done.contains("errors=0"), "{done}");
    let field = |k: &str| {
        done.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .unwrap()
            .to_string()
    };
    assert_eq!(field("sent="), field("echoed="), "{done}");
    done
}
