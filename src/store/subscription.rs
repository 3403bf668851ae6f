//! Catch-up subscriptions: read from a position, then follow the log live.
//!
//! A subscription is one cursor (`after`) over the `$all` log. Catch-up and live are the same
//! loop: read the next page after the cursor; when nothing is left, wait until the committed
//! head moves (a local commit or a NOTIFY from another process wakes the head watch) or, as
//! the fallback, until the poll interval passes. Because positions are gapless and in commit
//! order (see `postgres.rs`), a cursor never skips an event and never delivers one twice,
//! so the switch from catch-up to live needs no special handling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{EventStore, Filter, RecordedEvent, StoreError};

/// Events read per round trip.
const PAGE: i64 = 1000;

pub struct Subscription {
    store: Arc<dyn EventStore>,
    filter: Filter,
    after: i64,
    head: watch::Receiver<i64>,
    buffer: VecDeque<RecordedEvent>,
    poll: Duration,
}

impl Subscription {
    /// A subscription delivering events with positions greater than `after`.
    pub fn new(store: Arc<dyn EventStore>, after: i64, filter: Filter) -> Self {
        let head = store.head_watch();
        Self {
            store,
            filter,
            after,
            head,
            buffer: VecDeque::new(),
            poll: Duration::from_secs(1),
        }
    }

    /// Sets the fallback poll interval, used when no wake-up arrives.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The position up to which this subscription has read the log.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// Whether everything committed so far has been handed out.
    pub fn is_caught_up(&self) -> bool {
        self.buffer.is_empty() && self.after >= *self.head.borrow()
    }

    /// The next event, waiting for one if the subscription is caught up.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(e);
            }
            self.fill().await?;
            if self.buffer.is_empty() {
                self.wait().await;
            }
        }
    }

    /// Reads the next page into the buffer; returns how many events it holds.
    pub async fn fill(&mut self) -> Result<usize, StoreError> {
        if !self.buffer.is_empty() {
            return Ok(self.buffer.len());
        }
        // Only positions up to a committed head are read, so that the cursor may advance to
        // that head even when the filter matched nothing in between.
        let watched = *self.head.borrow_and_update();
        let head = if watched > self.after {
            watched
        } else {
            self.store.head_position().await?
        };
        if head <= self.after {
            return Ok(0);
        }
        let page = self
            .store
            .read_all(self.after, Some(head), &self.filter, PAGE)
            .await?;
        self.after = if (page.len() as i64) < PAGE {
            head
        } else {
            page.last().map_or(head, |e| e.position)
        };
        self.buffer.extend(page);
        Ok(self.buffer.len())
    }

    /// The next event if one is committed, or `None` once everything committed so far has
    /// been handed out (the subscription is caught up; call [`Subscription::wait`] to go live).
    pub async fn try_next(&mut self) -> Result<Option<RecordedEvent>, StoreError> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        Ok(self.buffer.pop_front())
    }

    /// Waits until the head moves past this subscription (or the poll interval passes).
    pub async fn wait(&mut self) {
        let after = self.after;
        let _ = tokio::time::timeout(self.poll, self.head.wait_for(|h| *h > after)).await;
    }
}
