//! Which event types the latest commits held, so that a reader can tell without a query
//! that a stretch of the log holds none of the events it reads.
//!
//! Every append batch takes the head lock, so commits cover consecutive, non-overlapping
//! ranges of positions `(from, to]`. The writer of this process records each of its commits
//! as it commits, and announces it to the other processes (`NOTIFY ub_commits` with
//! `from to type,type…`), whose listeners record it too. A range is known only where
//! recorded commits cover it without a gap: a commit that was not announced (one written by
//! other tooling, a notification lost while a listener reconnected, a commit too large to
//! describe) leaves a gap, and a reader asking across a gap is told "unknown" and reads the
//! log as before. So the answer is never wrong, only sometimes absent.
//!
//! The projections that read none of the events of a busy log (a reading concerns two of
//! twelve) thus move on without a query per wake-up.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The NOTIFY channel on which commits are described to the other processes.
pub const CHANNEL: &str = "ub_commits";

/// Longest description of a commit's types that is announced; a larger one is not
/// announced, which leaves a gap (PostgreSQL's payloads hold at most 8,000 bytes).
const MAX_TYPES_TEXT: usize = 4000;

/// The commits recorded most recently, by the position they start after.
#[derive(Default)]
pub struct RecentCommits {
    commits: Mutex<BTreeMap<i64, Commit>>,
}

struct Commit {
    to: i64,
    types: Box<[Box<str>]>,
}

impl RecentCommits {
    /// Commits remembered at most; the oldest go first.
    pub const CAPACITY: usize = 4096;

    /// Records that positions `(from, to]` were committed together and hold events of
    /// exactly `types`.
    pub fn record<'a>(&self, from: i64, to: i64, types: impl IntoIterator<Item = &'a str>) {
        if to <= from || from < 0 {
            return;
        }
        let mut types: Vec<Box<str>> = types.into_iter().map(Box::from).collect();
        types.sort_unstable();
        types.dedup();
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        commits.insert(
            from,
            Commit {
                to,
                types: types.into_boxed_slice(),
            },
        );
        while commits.len() > Self::CAPACITY {
            commits.pop_first();
        }
    }

    /// What the recorded commits tell of positions `(from, to]`: `Some(true)` when a known
    /// commit among them holds an event of one of `types`, `Some(false)` when they are all
    /// known and hold none, `None` when a gap comes first.
    pub fn holds_any(&self, from: i64, to: i64, types: &[String]) -> Option<bool> {
        if to <= from {
            return Some(false);
        }
        let commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = from;
        while at < to {
            // The commit that holds position `at + 1`: the last one starting at or before
            // `at`, if it reaches past `at`.
            let (_, commit) = commits.range(..=at).next_back()?;
            if commit.to <= at {
                return None;
            }
            if commit
                .types
                .iter()
                .any(|t| types.iter().any(|w| w.as_str() == &**t))
            {
                return Some(true);
            }
            at = commit.to;
        }
        Some(false)
    }

    /// The payload announcing a commit, or `None` when it cannot be described (a type
    /// with characters outside the catalogue's, or too many types).
    pub fn payload<'a>(
        from: i64,
        to: i64,
        types: impl IntoIterator<Item = &'a str>,
    ) -> Option<String> {
        let mut text = String::new();
        for t in types {
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
            {
                return None;
            }
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(t);
            if text.len() > MAX_TYPES_TEXT {
                return None;
            }
        }
        Some(format!("{from} {to} {text}"))
    }

    /// Records a commit announced by another process; a payload that does not parse is
    /// ignored (it leaves a gap).
    pub fn record_payload(&self, payload: &str) {
        let mut parts = payload.splitn(3, ' ');
        let (Some(from), Some(to), Some(types)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(from), Ok(to)) = (from.parse::<i64>(), to.parse::<i64>()) else {
            return;
        };
        self.record(from, to, types.split(',').filter(|t| !t.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RecentCommits {
        /// Whether the recorded commits prove that `(from, to]` holds none of `types`.
        fn none_of(&self, from: i64, to: i64, types: &[String]) -> bool {
            self.holds_any(from, to, types) == Some(false)
        }
    }

    fn wanted(types: &[&str]) -> Vec<String> {
        types.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_range_covered_by_commits_without_the_types_is_known_to_hold_none() {
        let c = RecentCommits::default();
        c.record(0, 5, ["ReadingsRecorded"]);
        c.record(5, 9, ["ReadingsRecorded", "AlertRaised"]);
        let user = wanted(&["UserRegistered"]);
        assert!(c.none_of(0, 9, &user));
        assert!(
            c.none_of(3, 7, &user),
            "a start inside a commit is covered by it"
        );
        assert!(!c.none_of(0, 9, &wanted(&["AlertRaised"])));
        assert!(c.none_of(0, 5, &wanted(&["AlertRaised"])));
        assert!(c.none_of(9, 9, &user), "an empty range holds nothing");
    }

    #[test]
    fn a_gap_or_a_range_past_the_last_commit_is_unknown() {
        let c = RecentCommits::default();
        c.record(0, 5, ["A"]);
        c.record(7, 9, ["A"]);
        let b = wanted(&["B"]);
        assert!(
            !c.none_of(0, 9, &b),
            "positions 6 and 7 were never described"
        );
        assert!(c.none_of(7, 9, &b));
        assert!(!c.none_of(7, 10, &b), "position 10 is past what is known");
        assert!(
            !c.none_of(-1, 5, &b),
            "nothing is known before the first commit"
        );
    }

    #[test]
    fn a_known_commit_with_the_types_answers_before_a_later_gap() {
        let c = RecentCommits::default();
        c.record(0, 5, ["A"]);
        c.record(5, 9, ["B"]);
        c.record(12, 15, ["B"]);
        let b = wanted(&["B"]);
        assert_eq!(c.holds_any(0, 15, &b), Some(true), "5..9 holds a B");
        assert_eq!(c.holds_any(0, 15, &wanted(&["C"])), None, "9..12 is a gap");
        assert_eq!(c.holds_any(0, 9, &wanted(&["C"])), Some(false));
        assert_eq!(c.holds_any(-1, 9, &b), None, "the gap comes first");
        assert_eq!(c.holds_any(3, 3, &b), Some(false));
    }

    #[test]
    fn commits_recorded_out_of_order_still_join_up() {
        let c = RecentCommits::default();
        c.record(5, 9, ["A"]);
        assert!(!c.none_of(0, 9, &wanted(&["B"])));
        c.record(0, 5, ["A"]);
        c.record(0, 5, ["A"]);
        assert!(c.none_of(0, 9, &wanted(&["B"])));
    }

    #[test]
    fn the_oldest_commits_are_forgotten_beyond_the_capacity() {
        let c = RecentCommits::default();
        for i in 0..(RecentCommits::CAPACITY as i64 + 10) {
            c.record(i, i + 1, ["A"]);
        }
        let b = wanted(&["B"]);
        assert!(!c.none_of(0, 20, &b));
        assert!(c.none_of(100, 200, &b));
    }

    #[test]
    fn payloads_round_trip_and_odd_types_are_not_announced() {
        let p = RecentCommits::payload(10, 12, ["ReadingsRecorded", "AlertRaised"]).unwrap();
        assert_eq!(p, "10 12 ReadingsRecorded,AlertRaised");
        let c = RecentCommits::default();
        c.record_payload(&p);
        assert!(c.none_of(10, 12, &wanted(&["UserRegistered"])));
        assert!(!c.none_of(10, 12, &wanted(&["AlertRaised"])));
        assert!(RecentCommits::payload(1, 2, ["it's"]).is_none());
        assert!(RecentCommits::payload(1, 2, [""]).is_none());
        let many = vec!["T".repeat(100); 50];
        assert!(RecentCommits::payload(1, 2, many.iter().map(String::as_str)).is_none());
        c.record_payload("12 x A");
        c.record_payload("garbage");
        assert!(!c.none_of(10, 13, &wanted(&["B"])));
    }
}
