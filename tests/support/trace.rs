//! What a `tracing` subscriber writes, captured for assertions.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::subscriber::DefaultGuard;

/// Everything a subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The text written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Held while a test captures: one capture at a time per test binary.
static CAPTURING: Mutex<()> = Mutex::new(());

/// A capture in progress: the subscriber stays this thread's default until it is dropped.
pub struct Capture {
    _default: DefaultGuard,
    _alone: MutexGuard<'static, ()>,
}

/// Captures every event and span, down to trace level, on this thread until the guard is
/// dropped. `tracing` caches per callsite whether anyone listens, across threads, so a
/// test that captures runs in a binary of its own (`tests/tracing/`), one capture at a time.
pub fn capture() -> (Captured, Capture) {
    let alone = CAPTURING.lock().unwrap_or_else(PoisonError::into_inner);
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let capture = Capture {
        _default: tracing::subscriber::set_default(subscriber),
        _alone: alone,
    };
    (out, capture)
}
