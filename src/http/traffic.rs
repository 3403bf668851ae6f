//! This process's recent HTTP traffic, for the live dashboard of Socket.IO `/auth`: requests
//! per second, 95th-percentile latency and server errors over the last [`WINDOW_SECS`]
//! seconds. A middleware records each answered request into one-second buckets; each bucket
//! keeps at most [`SAMPLES`] latencies (a uniform sample beyond that), so memory stays fixed.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// Seconds the figures cover.
pub const WINDOW_SECS: u64 = 10;
/// Latencies kept per second.
const SAMPLES: usize = 512;

#[derive(Default, Clone)]
struct Bucket {
    second: u64,
    requests: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

pub struct Traffic {
    buckets: Mutex<Vec<Bucket>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(vec![Bucket::default(); WINDOW_SECS as usize]),
        }
    }
}

/// What the window shows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figures {
    pub requests_per_second: f64,
    pub p95_latency_ms: f64,
    pub server_errors: u64,
    pub window_seconds: u64,
}

fn now_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Traffic {
    pub fn record(&self, latency_us: u32, server_error: bool) {
        let second = now_second();
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        let b = &mut buckets[(second % WINDOW_SECS) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b.requests += 1;
        b.errors += u64::from(server_error);
        if b.latencies_us.len() < SAMPLES {
            b.latencies_us.push(latency_us);
        } else {
            // Keep a uniform sample: replace a random slot with probability SAMPLES/n.
            let r = (uuid::Uuid::new_v4().as_u128() % u128::from(b.requests)) as usize;
            if r < SAMPLES {
                b.latencies_us[r] = latency_us;
            }
        }
    }

    pub fn figures(&self) -> Figures {
        let now = now_second();
        let Ok(buckets) = self.buckets.lock() else {
            return Figures {
                requests_per_second: 0.0,
                p95_latency_ms: 0.0,
                server_errors: 0,
                window_seconds: WINDOW_SECS,
            };
        };
        let live: Vec<&Bucket> = buckets
            .iter()
            .filter(|b| b.second + WINDOW_SECS > now && b.second <= now)
            .collect();
        let requests: u64 = live.iter().map(|b| b.requests).sum();
        let errors: u64 = live.iter().map(|b| b.errors).sum();
        let mut all: Vec<u32> = live
            .iter()
            .flat_map(|b| b.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        let p95 = if all.is_empty() {
            0.0
        } else {
            all[((all.len() - 1) as f64 * 0.95).round() as usize] as f64 / 1000.0
        };
        Figures {
            requests_per_second: requests as f64 / WINDOW_SECS as f64,
            p95_latency_ms: p95,
            server_errors: errors,
            window_seconds: WINDOW_SECS,
        }
    }
}

/// The middleware that feeds [`Traffic`] (the one of `AppState`).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let traffic = req
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
        .cloned();
    let started = Instant::now();
    let res = next.call(req).await;
    if let Some(state) = traffic {
        let error = match &res {
            Ok(r) => r.status().is_server_error(),
            Err(_) => true,
        };
        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        state.traffic.record(us, error);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_reports_rate_p95_and_server_errors() {
        let t = Traffic::default();
        for i in 1..=100u32 {
            t.record(i * 1000, i % 50 == 0);
        }
        let f = t.figures();
        assert_eq!(f.requests_per_second, 10.0);
        assert_eq!(f.server_errors, 2);
        assert_eq!(f.p95_latency_ms, 95.0);
    }
}
