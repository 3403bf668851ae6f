//! The events this process committed last, kept in memory so that its own projections read
//! them without a query.
//!
//! The writer knows every row of a batch it committed: positions, streams, types and the
//! payloads' JSON text. After the commit succeeds it records them here, and
//! [`super::EventStore::read_all_raw`] serves a range from memory when the recorded batches
//! cover it without a gap. Commits of other processes (or of other tooling) are not here, so
//! a range that reaches into one is read from the database as before. A range is served
//! whole or not at all, so a reader never sees a mix it could not have read from the log.
//!
//! The payload text is the JSON the writer sent, not PostgreSQL's re-rendering of the
//! `jsonb` (which orders keys and spaces them differently); both decode to the same value.
//!
//! Memory is bounded by events and by bytes; the oldest batches go first. The writer
//! forgets everything when it reconnects, since a failover may have changed what the
//! database holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Filter, RawEvent};

/// Committed batches by the position they start after.
#[derive(Default)]
pub struct RecentEvents {
    inner: Mutex<Inner>,
    served: AtomicU64,
}

#[derive(Default)]
struct Inner {
    batches: BTreeMap<i64, Arc<[RawEvent]>>,
    events: usize,
    bytes: usize,
}

fn size(e: &RawEvent) -> usize {
    std::mem::size_of::<RawEvent>()
        + e.stream_id.len()
        + e.category.len()
        + e.event_type.len()
        + e.data.len()
}

impl RecentEvents {
    /// Events kept at most.
    pub const MAX_EVENTS: usize = 16_384;
    /// Bytes kept at most (payloads, names and the events' own size).
    pub const MAX_BYTES: usize = 16 << 20;

    /// Records a committed batch: its events hold positions `from + 1`, `from + 2`, ... in
    /// order. A batch that does not fit at all is not kept.
    pub fn record(&self, from: i64, events: Vec<RawEvent>) {
        let bytes: usize = events.iter().map(size).sum();
        if events.is_empty() || events.len() > Self::MAX_EVENTS || bytes > Self::MAX_BYTES {
            return;
        }
        debug_assert!(events
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == from + 1 + i as i64));
        let mut inner = self.lock();
        inner.events += events.len();
        inner.bytes += bytes;
        inner.batches.insert(from, events.into());
        while inner.events > Self::MAX_EVENTS || inner.bytes > Self::MAX_BYTES {
            let Some((_, old)) = inner.batches.pop_first() else {
                break;
            };
            inner.events -= old.len();
            inner.bytes -= old.iter().map(size).sum::<usize>();
        }
    }

    /// Forgets every batch.
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Events served from memory so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The events after `after` up to `up_to` that pass `filter`, at most `limit`, when the
    /// recorded batches cover that stretch (up to the limit) without a gap; `None` when they
    /// do not, or when the filter needs what is not kept (metadata).
    pub fn read(
        &self,
        after: i64,
        up_to: i64,
        filter: &Filter,
        limit: i64,
    ) -> Option<Vec<RawEvent>> {
        if filter.organization.is_some() || limit <= 0 || up_to <= after {
            return None;
        }
        let limit = limit as usize;
        let mut out = Vec::new();
        let inner = self.lock();
        let mut at = after;
        while at < up_to && out.len() < limit {
            // The batch holding position `at + 1`: the last one starting at or before `at`.
            let (&from, batch) = inner.batches.range(..=at).next_back()?;
            let skip = (at - from) as usize;
            if skip >= batch.len() {
                return None;
            }
            for e in &batch[skip..] {
                if e.position > up_to || out.len() == limit {
                    break;
                }
                at = e.position;
                if filter.admits(&e.category, &e.event_type, &e.stream_id) {
                    out.push(e.clone());
                }
            }
        }
        drop(inner);
        self.served.fetch_add(out.len() as u64, Ordering::Relaxed);
        Some(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn batch(from: i64, types: &[&str]) -> Vec<RawEvent> {
        types
            .iter()
            .enumerate()
            .map(|(i, t)| RawEvent {
                position: from + 1 + i as i64,
                stream_id: format!("s-{}", from + 1 + i as i64),
                category: "s".into(),
                version: 1,
                event_id: Uuid::new_v4(),
                event_type: (*t).into(),
                schema_version: 1,
                data: "{}".into(),
            })
            .collect()
    }

    fn positions(events: Option<Vec<RawEvent>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.position).collect())
    }

    fn types(t: &[&str]) -> Filter {
        Filter {
            event_types: Some(t.iter().map(|t| t.to_string()).collect()),
            ..Filter::default()
        }
    }

    #[test]
    fn serves_a_covered_range_filtered_and_limited() {
        let recent = RecentEvents::default();
        recent.record(10, batch(10, &["A", "B", "A"]));
        recent.record(13, batch(13, &["B", "A"]));
        let all = Filter::all();
        assert_eq!(
            positions(recent.read(10, 15, &all, 100)),
            Some(vec![11, 12, 13, 14, 15])
        );
        assert_eq!(
            positions(recent.read(11, 15, &types(&["A"]), 100)),
            Some(vec![13, 15])
        );
        assert_eq!(positions(recent.read(10, 15, &all, 2)), Some(vec![11, 12]));
        assert_eq!(
            positions(recent.read(12, 14, &all, 100)),
            Some(vec![13, 14])
        );
        // Nothing of the wanted types, but covered: an empty answer, not "unknown".
        assert_eq!(
            positions(recent.read(10, 15, &types(&["C"]), 100)),
            Some(vec![])
        );
        assert_eq!(recent.served(), 5 + 2 + 2 + 2);
    }

    #[test]
    fn a_gap_or_an_uncovered_end_is_read_from_the_database() {
        let recent = RecentEvents::default();
        recent.record(10, batch(10, &["A", "A"]));
        // Positions 13..=14 were committed by another process.
        recent.record(14, batch(14, &["A"]));
        let all = Filter::all();
        assert_eq!(positions(recent.read(10, 15, &all, 100)), None);
        assert_eq!(positions(recent.read(9, 12, &all, 100)), None);
        assert_eq!(positions(recent.read(10, 16, &all, 100)), None);
        // Up to the limit the batches cover it: served.
        assert_eq!(positions(recent.read(10, 15, &all, 2)), Some(vec![11, 12]));
        assert_eq!(positions(recent.read(13, 15, &all, 100)), None);
        assert_eq!(positions(recent.read(14, 15, &all, 100)), Some(vec![15]));
        let by_org = Filter {
            organization: Some(Uuid::new_v4()),
            ..Filter::default()
        };
        assert_eq!(positions(recent.read(10, 12, &by_org, 100)), None);
        recent.clear();
        assert_eq!(positions(recent.read(10, 12, &all, 100)), None);
    }

    #[test]
    fn memory_stays_bounded_and_the_oldest_go_first() {
        let recent = RecentEvents::default();
        let per = 1000;
        let rounds = RecentEvents::MAX_EVENTS / per + 3;
        for r in 0..rounds {
            let from = (r * per) as i64;
            recent.record(from, batch(from, &vec!["A"; per]));
        }
        let inner = recent.lock();
        assert!(inner.events <= RecentEvents::MAX_EVENTS);
        let first = *inner.batches.keys().next().unwrap();
        drop(inner);
        assert!(first > 0);
        assert_eq!(positions(recent.read(0, 10, &Filter::all(), 100)), None);
        let last = (rounds * per) as i64;
        assert_eq!(
            positions(recent.read(last - 2, last, &Filter::all(), 100)),
            Some(vec![last - 1, last])
        );
    }
}
