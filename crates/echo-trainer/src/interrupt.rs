//! A stop asked for from outside the loop (Ctrl-C, SIGTERM, SIGHUP; `cargo xtask` installs
//! the handler). The run finishes the optimizer step it is in, writes a checkpoint and its
//! summary, and returns as a run in pieces does at its deadline: an interrupted run loses
//! nothing and `--resume` continues it exactly. The flag lives here, one per process, so that
//! the loop and the study driver read the same one.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every run of this process to stop at the end of its current step.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
