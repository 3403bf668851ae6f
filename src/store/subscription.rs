//! Catch-up subscriptions: read from a position, then follow the log live.
//!
//! A subscription is one cursor (`after`) over the `$all` log. Catch-up and live are the same
//! loop: read the next page after the cursor; when nothing is left, wait until the committed
//! head moves (a local commit or a NOTIFY from another process wakes the head watch) or, as
//! the fallback, until the poll interval passes. Because positions are gapless and in commit
//! order (see `postgres.rs`), a cursor never skips an event and never delivers one twice,
//! so the switch from catch-up to live needs no special handling.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{EventStore, Filter, RecordedEvent, StoreError};

/// Events read per round trip.
const PAGE: i64 = 1000;

/// One reader of the log per process, fanning events out in memory.
///
/// Live subscribers (sockets, the access view, the agent publisher) read from here instead
/// of each querying the store on every commit. The feed hands out the log in order without
/// a hole, so a subscriber can check that each item follows the last; on a hole, or when it
/// falls too far behind the feed, it goes back to reading the store and returns to the feed
/// once caught up.
///
/// Each subscriber registers the event types it wants (or "all of them"). The feed reads
/// only those, and stands in for the positions between with a [`FeedItem::Skip`]; when the
/// commit descriptions (see [`super::commits`]) show a stretch holds none of them, it reads
/// nothing at all. A busy log of readings that no live subscriber wants thus costs the feed
/// no query and no decoding. A subscriber that registers while the feed is deciding a skip
/// is not covered by that skip: the skip names the registrations it was decided for, and a
/// later subscriber treats it as a hole.
pub struct LiveFeed {
    tx: broadcast::Sender<FeedItem>,
    interest: Mutex<Interest>,
    read: AtomicU64,
}

/// What the feed hands out, in log order.
#[derive(Clone)]
enum FeedItem {
    Event(Arc<RecordedEvent>),
    /// Positions `(from, to]` hold no event of a type wanted by the subscribers registered
    /// up to `generation`.
    Skip {
        from: i64,
        to: i64,
        generation: u64,
    },
}

/// The event types the registered subscribers want.
#[derive(Default)]
struct Interest {
    /// Counts registrations; a subscriber knows its own.
    generation: u64,
    /// Subscribers that want every type.
    everything: usize,
    types: HashMap<String, usize>,
}

impl Interest {
    /// Counts a subscriber's types (`None`: every type) in, or out when it leaves.
    fn count(&mut self, types: &Option<Vec<String>>, join: bool) {
        let step = |n: &mut usize| *n = if join { *n + 1 } else { n.saturating_sub(1) };
        match types {
            None => step(&mut self.everything),
            Some(types) => {
                for t in types {
                    let n = self.types.entry(t.clone()).or_default();
                    step(n);
                    if *n == 0 {
                        self.types.remove(t);
                    }
                }
            }
        }
    }

    /// The types to read (`None`: every type), and the registrations that decided them.
    fn wanted(&self) -> (Option<Vec<String>>, u64) {
        let types = (self.everything == 0).then(|| self.types.keys().cloned().collect());
        (types, self.generation)
    }
}

/// A subscriber's registration with the feed; dropping it withdraws its interest.
struct Ticket {
    feed: Arc<LiveFeed>,
    types: Option<Vec<String>>,
    generation: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.feed.interest().count(&self.types, false);
    }
}

impl LiveFeed {
    /// Events kept for slow live subscribers before they drop back to the store.
    const CAPACITY: usize = 4096;

    /// Starts following the log from its current head, on the current runtime.
    pub fn start(store: Arc<dyn EventStore>) -> Arc<LiveFeed> {
        let (tx, _) = broadcast::channel(Self::CAPACITY);
        let feed = Arc::new(LiveFeed {
            tx,
            interest: Mutex::default(),
            read: AtomicU64::new(0),
        });
        tokio::spawn(Self::follow(Arc::downgrade(&feed), store));
        feed
    }

    /// Events the feed has read from the store so far.
    pub fn events_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, types: Option<Vec<String>>) -> Ticket {
        let mut interest = self.interest();
        interest.generation += 1;
        interest.count(&types, true);
        Ticket {
            feed: self.clone(),
            types,
            generation: interest.generation,
        }
    }

    async fn follow(feed: Weak<LiveFeed>, store: Arc<dyn EventStore>) {
        let mut head = store.head_watch();
        let mut after = *head.borrow_and_update();
        loop {
            let mut to = *head.borrow_and_update();
            if to <= after {
                let _ = tokio::time::timeout(POLL, head.wait_for(|h| *h > after)).await;
                to = *head.borrow_and_update();
            }
            if to <= after {
                // No wake-up within the poll: ask the database, in case one was lost.
                to = match store.head_position().await {
                    Ok(h) => h,
                    Err(err) => {
                        tracing::warn!(error = %err, "live feed cannot read the head; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
            }
            let Some(live) = feed.upgrade() else { return };
            if to <= after {
                continue;
            }
            let (types, generation) = live.interest().wanted();
            let skip = |from, to| FeedItem::Skip {
                from,
                to,
                generation,
            };
            if let Some(types) = &types {
                if types.is_empty() || store.holds_any(after, to, types) == Some(false) {
                    let _ = live.tx.send(skip(after, to));
                    after = to;
                    continue;
                }
            }
            drop(live);
            let filter = Filter {
                event_types: types,
                ..Filter::default()
            };
            let page = match store.read_all(after, Some(to), &filter, PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "live feed read failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let Some(live) = feed.upgrade() else { return };
            live.read.fetch_add(page.len() as u64, Ordering::Relaxed);
            // Read up to `to`, or up to the last event of a full page.
            let end = match page.last() {
                Some(last) if page.len() as i64 == PAGE => last.position,
                _ => to,
            };
            // No receivers is fine: nobody is live right now.
            for e in page {
                if e.position > after + 1 {
                    let _ = live.tx.send(skip(after, e.position - 1));
                }
                after = e.position;
                let _ = live.tx.send(FeedItem::Event(Arc::new(e)));
            }
            if end > after {
                let _ = live.tx.send(skip(after, end));
                after = end;
            }
        }
    }
}

/// The feed's fallback poll, when no wake-up arrives.
const POLL: Duration = Duration::from_secs(1);
/// The feed's pause after a failed query.
const RETRY: Duration = Duration::from_millis(500);

pub struct Subscription {
    store: Arc<dyn EventStore>,
    filter: Filter,
    after: i64,
    head: watch::Receiver<i64>,
    buffer: VecDeque<RecordedEvent>,
    poll: Duration,
    feed: Option<Ticket>,
    /// Set while following the feed (after catching up from the store).
    live: Option<broadcast::Receiver<FeedItem>>,
    stash: Option<FeedItem>,
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
        self.feed = Some(feed.register(self.filter.event_types.clone()));
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
            let next = match next {
                FeedItem::Event(e) => e,
                FeedItem::Skip {
                    from,
                    to,
                    generation,
                } => {
                    let mine = self.feed.as_ref().map_or(u64::MAX, |t| t.generation);
                    if to <= self.after {
                        continue;
                    }
                    // Decided without this subscriber's types, or beginning past the cursor.
                    if generation < mine || from > self.after {
                        return Err(());
                    }
                    self.after = to;
                    continue;
                }
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
            // Joined before the store is read: what the feed sends meanwhile waits in the
            // receiver (and what the store already gave is passed over), whereas joining
            // after the read would miss an event sent in between, and stall on it until the
            // next one came.
            let joined = self.feed.as_ref().map(|ticket| ticket.feed.tx.subscribe());
            if self.fill().await? == 0 {
                // Caught up with the store: from here on the feed brings what comes next.
                self.live = joined;
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
