//! Dedicated threads for work that must not share a thread with HTTP handlers or actors.

use std::future::Future;

use tokio::sync::oneshot;

/// Runs the future made by `make` on a new thread with a single-threaded runtime of its own
/// (the future itself need not be `Send`). The thread ends when the future does, or when the
/// returned [`ThreadTask`] is stopped or dropped.
pub fn spawn_thread<M, F>(name: &str, make: M) -> ThreadTask
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let join = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for a dedicated thread");
            rt.block_on(async move {
                tokio::select! {
                    _ = make() => {}
                    _ = stopped => {}
                }
            });
        })
        .expect("spawning a thread");
    ThreadTask {
        stop: Some(stop),
        join: Some(join),
    }
}

/// A future running on its own thread.
pub struct ThreadTask {
    stop: Option<oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl ThreadTask {
    /// Lets the future run on even when this handle is dropped.
    pub fn detach(mut self) {
        if let Some(stop) = self.stop.take() {
            // Never sending nor dropping the sender keeps the select waiting on the future.
            std::mem::forget(stop);
        }
        self.join.take();
    }

    /// Stops the future and waits for the thread to end.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ThreadTask {
    fn drop(&mut self) {
        // Dropping the sender wakes the select above; the thread then winds down by itself.
        self.stop.take();
    }
}

/// Runs a background task of the server and keeps it running: when the future made by
/// `make` panics, the panic is logged with the task's name and a fresh future is made after
/// a pause that doubles from one second up to a minute (reset once a run lasted a minute).
/// A future that returns ends the task for good (its owner is gone). The task runs on the
/// tokio runtime, so what it holds (database connections, listeners) is dropped within it;
/// entity registries may be called from it (they start actors on the thread's arbiter).
pub fn supervise<M, F>(name: &'static str, mut make: M)
where
    M: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = std::time::Duration::from_secs(1);
        loop {
            let started = std::time::Instant::now();
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    restarting(name, started, &mut pause).await;
                }
                // Cancelled: its runtime is stopping.
                Err(_) => return,
            }
        }
    });
}

async fn restarting(
    name: &'static str,
    started: std::time::Instant,
    pause: &mut std::time::Duration,
) {
    metrics::counter!("ub_background_task_restarts_total", "task" => name).increment(1);
    if started.elapsed() >= std::time::Duration::from_secs(60) {
        *pause = std::time::Duration::from_secs(1);
    }
    tracing::error!(task = name, restart_in = ?pause, "background task panicked; restarting it");
    tokio::time::sleep(*pause).await;
    *pause = (*pause * 2).min(std::time::Duration::from_secs(60));
}

/// [`supervise`] for a task that must run on the actix system itself (its futures are not
/// `Send`, or it spawns actix tasks). Must be called on the actix system.
pub fn supervise_local<M, F>(name: &'static str, mut make: M)
where
    M: FnMut() -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    actix_web::rt::spawn(async move {
        let mut pause = std::time::Duration::from_secs(1);
        loop {
            let started = std::time::Instant::now();
            match actix_web::rt::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    restarting(name, started, &mut pause).await;
                }
                // Cancelled: its runtime is stopping.
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[actix_web::test]
    async fn a_supervised_task_that_panics_is_started_again() {
        let runs = Arc::new(AtomicU32::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let done_tx = std::sync::Mutex::new(Some(done_tx));
        let counted = runs.clone();
        super::supervise("test-task", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let done = if run == 2 {
                done_tx.lock().unwrap().take()
            } else {
                None
            };
            async move {
                if run == 1 {
                    panic!("the first run dies");
                }
                if let Some(done) = done {
                    let _ = done.send(run);
                }
            }
        });
        assert_eq!(done_rx.await.unwrap(), 2, "the second run came");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "and ended the task for good"
        );
    }
}
