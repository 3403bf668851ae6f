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

use tokio::sync::{broadcast, watch};

use super::{EventStore, Filter, RecordedEvent, StoreError};

/// Events read per round trip.
const PAGE: i64 = 1000;

/// One reader of the whole log per process, fanning every event out in memory.
///
/// Live subscribers (sockets) read from here instead of each querying the store on every
/// commit. The feed is unfiltered, so a subscriber can check that positions follow each
/// other without a hole; on a hole, or when it falls too far behind the feed, it goes back
/// to reading the store and returns to the feed once caught up.
pub struct LiveFeed {
    tx: broadcast::Sender<Arc<RecordedEvent>>,
}

impl LiveFeed {
    /// Events kept for slow live subscribers before they drop back to the store.
    const CAPACITY: usize = 4096;

    /// Starts following the log from its current head, on the current runtime.
    pub fn start(store: Arc<dyn EventStore>) -> Arc<LiveFeed> {
        let (tx, _) = broadcast::channel(Self::CAPACITY);
        let feed = Arc::new(LiveFeed { tx });
        let weak = Arc::downgrade(&feed);
        let after = *store.head_watch().borrow();
        let mut sub = Subscription::new(store, after, Filter::all());
        tokio::spawn(async move {
            loop {
                match sub.next().await {
                    Ok(e) => {
                        let Some(feed) = weak.upgrade() else { return };
                        // No receivers is fine: nobody is live right now.
                        let _ = feed.tx.send(Arc::new(e));
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "live feed read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                }
            }
        });
        feed
    }
}

pub struct Subscription {
    store: Arc<dyn EventStore>,
    filter: Filter,
    after: i64,
    head: watch::Receiver<i64>,
    buffer: VecDeque<RecordedEvent>,
    poll: Duration,
    feed: Option<Arc<LiveFeed>>,
    /// Set while following the feed (after catching up from the store).
    live: Option<broadcast::Receiver<Arc<RecordedEvent>>>,
    stash: Option<Arc<RecordedEvent>>,
    gate: Option<Gate>,
}

/// A test that an event must pass besides the filter: one that depends on the subscriber's
/// state (a socket's rooms, say) and can change while it runs. Events it turns away are
/// skipped before they are copied out of the feed.
pub type Gate = Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>;

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
            feed: None,
            live: None,
            stash: None,
            gate: None,
        }
    }

    /// Once caught up, follow `feed` in memory instead of querying the store.
    pub fn with_live_feed(mut self, feed: Arc<LiveFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Hands out only the events that also pass `gate`.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The next event from the feed, if it follows the cursor without a hole. `Err(())`
    /// means the feed cannot serve this subscriber now: read the store.
    fn next_from_feed(&mut self) -> Result<Option<RecordedEvent>, ()> {
        loop {
            let next = match self.stash.take() {
                Some(e) => e,
                None => match self.live.as_mut().ok_or(())?.try_recv() {
                    Ok(e) => e,
                    Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                    Err(_) => return Err(()),
                },
            };
            if next.position <= self.after {
                continue;
            }
            if next.position != self.after + 1 {
                return Err(());
            }
            self.after = next.position;
            if self.filter.matches(&next) && self.gate.as_ref().is_none_or(|g| g(&next)) {
                return Ok(Some(next.as_ref().clone()));
            }
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
            match self.try_next().await? {
                Some(e) => return Ok(e),
                None => self.wait().await,
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
        loop {
            while let Some(e) = self.buffer.pop_front() {
                if self.gate.as_ref().is_none_or(|g| g(&e)) {
                    return Ok(Some(e));
                }
            }
            if self.live.is_some() {
                match self.next_from_feed() {
                    Ok(found) => return Ok(found),
                    Err(()) => {
                        self.live = None;
                        self.stash = None;
                    }
                }
            }
            if self.fill().await? == 0 {
                // Caught up with the store: from here on the feed brings what comes next.
                if let Some(feed) = &self.feed {
                    self.live = Some(feed.tx.subscribe());
                }
                return Ok(None);
            }
        }
    }

    /// Waits until the head moves past this subscription (or the poll interval passes).
    pub async fn wait(&mut self) {
        if let Some(live) = self.live.as_mut() {
            let got = tokio::time::timeout(self.poll, live.recv()).await;
            match got {
                Ok(Ok(e)) => self.stash = Some(e),
                Ok(Err(_)) => self.live = None,
                Err(_) => {}
            }
            return;
        }
        self.wait_store().await
    }

    async fn wait_store(&mut self) {
        let after = self.after;
        let _ = tokio::time::timeout(self.poll, self.head.wait_for(|h| *h > after)).await;
    }
}
