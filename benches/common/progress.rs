//! Progress bars (indicatif) of the PostgreSQL benchmarks, drawn on stderr. When stderr
//! is not a terminal (CI, a log file) the bars are hidden and `log` falls back to plain
//! lines, so nothing the bench reports is lost.

#![allow(dead_code)] // each bench uses part of it

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    mp: MultiProgress,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)),
        }
    }

    /// A bar of `len` steps, labelled `prefix`, redrawn every 250 ms (its elapsed time
    /// and ETA move during long steps).
    pub fn bar(&self, len: u64, prefix: &str) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>14.bold} [{bar:32.cyan/blue}] {pos:>3}/{len:<3} {elapsed_precise} \
                 eta {eta:<4} {msg}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        pb.set_prefix(prefix.to_owned());
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    }

    /// A spinner for a step of unknown length (its message tells the stage).
    pub fn spinner(&self, prefix: &str) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14.bold} {spinner} {elapsed_precise} {msg}")
                .expect("spinner template"),
        );
        pb.set_prefix(prefix.to_owned());
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    }

    /// A line above the bars (plain stderr when they are hidden).
    pub fn log(&self, msg: impl AsRef<str>) {
        if self.mp.is_hidden() {
            eprintln!("{}", msg.as_ref());
        } else {
            let _ = self.mp.println(msg.as_ref());
        }
    }

    /// Runs `f` (which prints to stdout) with the bars cleared, then redraws them.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.mp.suspend(f)
    }
}
