//! Fault points: the named stages of the dump and restore pipelines where a test can make the
//! pipeline fail on purpose (`CRYO_FAULT_INJECT=<stage>`), and where a termination signal the
//! user sent (SIGINT, SIGTERM, ...) stops the work at a safe point.
//!
//! Both exist to prove the failure model: a dump that stops at any stage leaves the tree
//! running as it was, and a restore that stops leaves nothing behind. The stages are listed in
//! docs/ARCHITECTURE.md; `integration/tests/failures.rs` injects a fault at each.

/// Why a pipeline stopped at a fault point.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("fault injected at stage '{0}' (CRYO_FAULT_INJECT)")]
    Injected(String),
    #[error("interrupted by signal {sig} before stage '{stage}'")]
    Interrupted { sig: i32, stage: String },
}

/// Logs that the pipeline reached `stage`, and fails if a fault is injected there or a
/// termination signal arrived.
pub fn point(stage: &str) -> Result<(), Fault> {
    tracing::info!(stage, "stage reached");
    interrupted(stage)?;
    if std::env::var("CRYO_FAULT_INJECT").is_ok_and(|v| v == stage) {
        return Err(Fault::Injected(stage.to_string()));
    }
    // `CRYO_FAULT_PAUSE=<stage>:<seconds>` sleeps there instead: a test kills cryo, or probes
    // what holds meanwhile (the network lock).
    if let Some(secs) = std::env::var("CRYO_FAULT_PAUSE").ok().and_then(|v| {
        let (s, t) = v.split_once(':')?;
        (s == stage).then(|| t.parse::<u64>().ok())?
    }) {
        tracing::info!(stage, secs, "pausing at a fault point (CRYO_FAULT_PAUSE)");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    Ok(())
}

/// Is a fault injected at `stage` (`CRYO_FAULT_INJECT=<stage>`)? For fault points that are
/// not a pipeline stage (a worker thread that panics).
pub fn injected(stage: &str) -> bool {
    std::env::var("CRYO_FAULT_INJECT").is_ok_and(|v| v == stage)
}

/// Fails if a termination signal arrived (for loops that check often, e.g. page copies),
/// naming the `stage` it interrupted. Injected faults are not checked here.
pub fn interrupted(stage: &str) -> Result<(), Fault> {
    match crate::sys::proc::interrupted() {
        Some(sig) => Err(Fault::Interrupted {
            sig,
            stage: stage.to_string(),
        }),
        None => Ok(()),
    }
}
