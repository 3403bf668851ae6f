//! Progress of long commands (import, rebuild, export): a bar with rate and time left on a
//! terminal, plain lines every few seconds otherwise (a log file, CI).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The progress of one piece of work; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    /// Starts showing progress of `label`; `total` is the amount of work when it is known.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{msg:>24} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}"
            } else {
                "{msg:>24} {spinner} {human_pos} {per_sec} {elapsed}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            bar
        });
        Progress {
            inner: Arc::new(Inner {
                label: label.to_owned(),
                total,
                done: AtomicU64::new(0),
                started: Instant::now(),
                bar,
                last_line: Mutex::new(Instant::now()),
            }),
        }
    }

    /// Counts `n` more units of work done.
    pub fn inc(&self, n: u64) {
        let done = self.inner.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.inner.bar {
            Some(bar) => bar.inc(n),
            None => {
                let mut last = self
                    .inner
                    .last_line
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    drop(last);
                    eprintln!("{}", self.line(done));
                }
            }
        }
    }

    /// Units of work done so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Ends the bar (or prints the last line).
    pub fn finish(&self) {
        let done = self.done();
        match &self.inner.bar {
            Some(bar) => bar.finish(),
            None => eprintln!("{} (done)", self.line(done)),
        }
    }

    fn line(&self, done: u64) -> String {
        let secs = self.inner.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        match self.inner.total {
            Some(total) if rate > 0.0 => format!(
                "{}: {done}/{total} ({rate:.0}/s, {:.0}s left)",
                self.inner.label,
                total.saturating_sub(done) as f64 / rate
            ),
            Some(total) => format!("{}: {done}/{total}", self.inner.label),
            None => format!("{}: {done} ({rate:.0}/s)", self.inner.label),
        }
    }
}
