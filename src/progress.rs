//! Progress of long command-line work (export, import, replay, the legacy import): a bar
//! with rate and time left on a terminal (indicatif), and a plain log line every few
//! seconds otherwise, so that a job run from cron or CI leaves a readable trace instead of
//! control characters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain (non-terminal) form writes a line.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// A progress counter shown on standard error. Cheap to clone; every clone counts into the
/// same total.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: Option<u64>,
    /// The bar, when standard error is a terminal.
    bar: Option<ProgressBar>,
    done: AtomicU64,
    started: Instant,
    /// When the plain form last wrote a line.
    last_line: Mutex<Instant>,
}

impl Progress {
    /// A counter of `label` work, out of `total` when it is known.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        let target = ProgressDrawTarget::stderr();
        let bar = (!target.is_hidden()).then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::with_draw_target(Some(n), target),
                    "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} \
                     ({per_sec}, {eta} left)",
                ),
                None => (
                    ProgressBar::with_draw_target(None, target),
                    "{spinner} {msg} [{elapsed_precise}] {human_pos} ({per_sec})",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_message(label.to_owned());
            bar
        });
        Progress {
            inner: Arc::new(Inner {
                label: label.to_owned(),
                total,
                bar,
                done: AtomicU64::new(0),
                started: Instant::now(),
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
                let now = Instant::now();
                let Ok(mut last) = self.inner.last_line.try_lock() else {
                    return;
                };
                if now.saturating_duration_since(*last) >= LINE_EVERY {
                    *last = now;
                    drop(last);
                    self.line(done, false);
                }
            }
        }
    }

    /// Units counted so far.
    fn position(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Ends the bar (or writes the last line).
    pub fn finish(&self) {
        match &self.inner.bar {
            Some(bar) => bar.finish(),
            None => self.line(self.position(), true),
        }
    }

    fn line(&self, done: u64, last: bool) {
        let secs = self.inner.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let label = &self.inner.label;
        let mut line = match self.inner.total {
            Some(total) => format!("{label}: {done}/{total} ({rate:.0}/s"),
            None => format!("{label}: {done} ({rate:.0}/s"),
        };
        match self.inner.total {
            Some(total) if !last && rate > 0.0 && total > done => {
                line.push_str(&format!(", {:.0}s left)", (total - done) as f64 / rate));
            }
            _ if last => line.push_str(&format!(", done in {secs:.1}s)")),
            _ => line.push(')'),
        }
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_count_into_one_total() {
        let p = Progress::new("test", Some(10));
        let q = p.clone();
        p.inc(3);
        q.inc(4);
        assert_eq!(p.position(), 7);
        p.finish();
        fn send_sync<T: Send + Sync>(_: &T) {}
        send_sync(&p);
    }
}
