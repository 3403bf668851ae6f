//! A migration feature flag (entity kind `flag`): which backend serves one route of the old
//! Next.js API (see `crate::http::legacy`). The stream of a flag is its history.
//!
//! - **Set** (an admin): records a change only when the mode differs; setting the mode the
//!   flag already has records nothing.
//! - **Roll back** (the error-rate watch, actor `system`): flips the flag to `legacy` only if
//!   it is in the mode the measurement was made in. Two processes that measure the same
//!   failure and roll back at once both decide on the same version: the append of one wins,
//!   the other catches up, decides again, finds the flag already on `legacy` and records
//!   nothing. One flip, whatever the number of processes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::flag::{FlagActor, FlagChanged, FlagEvent, FlagMode};
use uuid::Uuid;

use super::runtime::Entity;
use super::validate;

/// Longest reason recorded with a change.
pub const MAX_REASON: usize = 500;

/// The entity id of the flag of `route` (flags are named by route, entities by UUID).
pub fn flag_id(route: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("flag:{route}").as_bytes())
}

#[derive(Debug, Clone)]
pub enum FlagCommand {
    Set {
        route: String,
        mode: FlagMode,
        user_id: Uuid,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    Rollback {
        route: String,
        /// The mode the error rate was measured in.
        measured_in: FlagMode,
        error_rate: f64,
        requests: u64,
        reason: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FlagError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Flag {
    pub route: Option<String>,
    pub mode: FlagMode,
    pub changes: u64,
    pub changed_at: Option<DateTime<Utc>>,
}

impl Entity for Flag {
    type Command = FlagCommand;
    type Event = FlagEvent;
    type Error = FlagError;

    const CATEGORY: &'static str = "flag";

    fn decide(&self, cmd: &FlagCommand) -> Result<Vec<FlagEvent>, FlagError> {
        let invalid = |field: &str, message: String| FlagError::Invalid {
            field: field.into(),
            message,
        };
        match cmd {
            FlagCommand::Set {
                route,
                mode,
                user_id,
                reason,
                at,
            } => {
                if let Some(r) = reason {
                    validate::text(r, MAX_REASON).map_err(|m| invalid("reason", m))?;
                }
                validate::time(*at, *at).map_err(|m| invalid("at", m))?;
                if *mode == self.mode {
                    return Ok(vec![]);
                }
                Ok(vec![FlagEvent::FlagChanged(FlagChanged {
                    route: route.clone(),
                    from: self.mode,
                    to: *mode,
                    actor: FlagActor::User,
                    user_id: Some(*user_id),
                    reason: reason.as_ref().map(|r| r.trim().to_owned()),
                    error_rate: None,
                    requests: None,
                    at: *at,
                })])
            }
            FlagCommand::Rollback {
                route,
                measured_in,
                error_rate,
                requests,
                reason,
                at,
            } => {
                if self.mode != *measured_in || self.mode == FlagMode::Legacy {
                    return Ok(vec![]);
                }
                let rate = if error_rate.is_finite() {
                    error_rate.clamp(0.0, 1.0)
                } else {
                    1.0
                };
                Ok(vec![FlagEvent::FlagChanged(FlagChanged {
                    route: route.clone(),
                    from: self.mode,
                    to: FlagMode::Legacy,
                    actor: FlagActor::System,
                    user_id: None,
                    reason: Some(reason.chars().take(MAX_REASON).collect()),
                    error_rate: Some(rate),
                    requests: Some(*requests),
                    at: *at,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &FlagEvent) {
        match event {
            FlagEvent::FlagChanged(c) => {
                self.route = Some(c.route.clone());
                self.mode = c.to;
                self.changes += 1;
                self.changed_at = Some(c.at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback(measured_in: FlagMode) -> FlagCommand {
        FlagCommand::Rollback {
            route: "getAnalysis".into(),
            measured_in,
            error_rate: 0.5,
            requests: 20,
            reason: "too many errors".into(),
            at: Utc::now(),
        }
    }

    fn set(mode: FlagMode) -> FlagCommand {
        FlagCommand::Set {
            route: "getAnalysis".into(),
            mode,
            user_id: Uuid::nil(),
            reason: None,
            at: Utc::now(),
        }
    }

    #[test]
    fn a_rollback_flips_once_and_a_second_one_records_nothing() {
        let mut flag = Flag::default();
        for e in flag.decide(&set(FlagMode::New)).unwrap() {
            flag.evolve(&e);
        }
        let events = flag.decide(&rollback(FlagMode::New)).unwrap();
        assert_eq!(events.len(), 1);
        let FlagEvent::FlagChanged(c) = &events[0];
        assert_eq!(
            (c.from, c.to, c.actor),
            (FlagMode::New, FlagMode::Legacy, FlagActor::System)
        );
        assert_eq!(c.error_rate, Some(0.5));
        flag.evolve(&events[0]);
        // The second process decides again on the caught-up state.
        assert!(flag.decide(&rollback(FlagMode::New)).unwrap().is_empty());
        assert_eq!(flag.changes, 2);
    }

    #[test]
    fn setting_the_current_mode_records_nothing() {
        assert!(Flag::default()
            .decide(&set(FlagMode::Legacy))
            .unwrap()
            .is_empty());
        assert_eq!(
            Flag::default()
                .decide(&set(FlagMode::Compare))
                .unwrap()
                .len(),
            1
        );
    }
}
