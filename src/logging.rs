//! Logging in CRIU's style: `-v0..4` (0 nothing, 1 errors, 2 +warnings (default), 3 +info,
//! 4 +debug), to `-o FILE` (relative to the work directory) or stderr. Error lines start with
//! `Error`, warnings with `Warn`, as CRIU's do, so tools that grep CRIU logs work unchanged.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

struct CriuLog {
    out: Mutex<Box<dyn Write + Send>>,
    max: Level,
    start: Instant,
}

struct Msg(String);
impl tracing::field::Visit for Msg {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for CriuLog {
    fn on_event(&self, ev: &Event<'_>, _cx: Context<'_, S>) {
        let lvl = *ev.metadata().level();
        if lvl > self.max {
            return;
        }
        let mut m = Msg(String::new());
        ev.record(&mut m);
        let t = self.start.elapsed();
        let ts = format!("({:02}.{:06})", t.as_secs(), t.subsec_micros());
        let line = match lvl {
            Level::ERROR => format!("Error {ts} {}: {}\n", ev.metadata().target(), m.0),
            Level::WARN => format!("Warn  {ts} {}: {}\n", ev.metadata().target(), m.0),
            _ => format!("{ts} {}\n", m.0),
        };
        let _ = self
            .out
            .lock()
            .expect("log lock")
            .write_all(line.as_bytes());
    }
}

/// Maps CRIU's verbosity (0..4) to a tracing level; `None` = log nothing.
pub fn level(verbosity: u32) -> Option<Level> {
    match verbosity {
        0 => None,
        1 => Some(Level::ERROR),
        2 => Some(Level::WARN),
        3 => Some(Level::INFO),
        _ => Some(Level::DEBUG),
    }
}

/// Installs the logger. `file` None logs to stderr.
pub fn init(verbosity: u32, file: Option<&Path>) -> std::io::Result<()> {
    let Some(max) = level(verbosity) else {
        return Ok(());
    };
    let out: Box<dyn Write + Send> = match file {
        Some(p) => Box::new(std::io::LineWriter::new(File::create(p)?)),
        None => Box::new(std::io::stderr()),
    };
    let layer = CriuLog {
        out: Mutex::new(out),
        max,
        start: Instant::now(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(())
}
