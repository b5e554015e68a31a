//! What a run shows while it trains ([`Reporter`]): a progress bar on a terminal, lines when
//! stdout is piped, with the ETA taken from this process's own steps.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// `h:mm:ss`.
fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Time left for `remaining` steps at the pace of the `done` steps this process took in
/// `elapsed` seconds (`None` before its first step). Steps a resumed run did in an earlier
/// process do not count: they took no time here.
fn eta(elapsed: f64, done: usize, remaining: usize) -> Option<f64> {
    (done > 0).then(|| elapsed / done as f64 * remaining as f64)
}

/// What a run shows while it trains: on a terminal, a progress bar (on stderr) with loss,
/// lr, the last validation loss, speed and ETA, left on screen at the end; otherwise (stdout
/// piped to a file, or no bar) a line every `every` steps and one per validation, on stdout.
pub(crate) struct Reporter {
    bar: ProgressBar,
    bar_drawn: bool,
    lines: bool,
    every: usize,
    total: usize,
    /// Where this process started (after a resume, the checkpoint's step) and stops.
    start_step: usize,
    stop_at: usize,
    started: Instant,
    loop_start: Instant,
    last_val: Option<f32>,
    /// The last step's loss, lr, tokens/s and ETA.
    last_step: Option<(f32, f32, f64, String)>,
}

impl Reporter {
    pub(crate) fn new(
        progress: bool,
        log_every: usize,
        total: usize,
        start_step: usize,
        stop_at: usize,
        started: Instant,
    ) -> Self {
        let bar_drawn = progress && std::io::stderr().is_terminal();
        let lines = !bar_drawn || !std::io::stdout().is_terminal();
        let bar = if bar_drawn { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps | {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_position(start_step as u64);
        bar.set_message("validating");
        let every = if log_every > 0 { log_every } else { (total / 50).max(1) };
        let now = Instant::now();
        Reporter {
            bar,
            bar_drawn,
            lines,
            every,
            total,
            start_step,
            stop_at,
            started,
            loop_start: now,
            last_val: None,
            last_step: None,
        }
    }

    /// The steps of this process start now (the ETA's clock).
    pub(crate) fn start_steps(&mut self) {
        self.loop_start = Instant::now();
        self.bar.set_message("first step");
    }

    pub(crate) fn step(&mut self, step: usize, loss: f32, lr: f32, tokens_per_s: f64) {
        let done = step - self.start_step;
        let eta = eta(self.loop_start.elapsed().as_secs_f64(), done, self.stop_at - step)
            .map(hms)
            .unwrap_or_else(|| "-".into());
        self.bar.set_position(step as u64);
        self.last_step = Some((loss, lr, tokens_per_s, eta.clone()));
        self.show();
        if self.lines && (done == 1 || step.is_multiple_of(self.every) || step == self.stop_at) {
            println!(
                "step {step}/{}  loss {loss:.4}  lr {lr:.2e}  {tokens_per_s:.0} tok/s  elapsed {}  ETA {eta}",
                self.total,
                hms(self.started.elapsed().as_secs_f64())
            );
        }
    }

    /// The bar's message: the last step's numbers and the last validation loss.
    fn show(&self) {
        if let Some((loss, lr, tokens_per_s, eta)) = &self.last_step {
            let val = self.last_val.map(|v| format!(" | val {v:.4}")).unwrap_or_default();
            self.bar.set_message(format!("loss {loss:.4} | lr {lr:.2e}{val} | {tokens_per_s:.0} tok/s | ETA {eta}"));
        }
    }

    pub(crate) fn validation(&mut self, step: usize, loss: Option<f32>, records: usize, best: bool) {
        let Some(v) = loss else { return };
        self.last_val = Some(v);
        self.show();
        let line = if step == 0 {
            format!("validation before training: loss {v:.4} ({records} held-out records)")
        } else {
            format!("validation at step {step}/{}: loss {v:.4}{}", self.total, if best { " (best so far)" } else { "" })
        };
        if self.lines {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Leaves the bar on screen, with the last step's numbers.
    pub(crate) fn finish(&self) {
        if self.bar_drawn {
            self.bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_counts_only_this_process_steps() {
        // Resumed at step 100 of 200: 10 steps here in 20 s leave 90 steps, 180 s.
        assert_eq!(eta(20.0, 10, 90), Some(180.0));
        assert_eq!(eta(5.0, 0, 100), None);
        assert_eq!(hms(3725.4), "1:02:05");
        assert_eq!(hms(59.6), "0:01:00");
    }
}
