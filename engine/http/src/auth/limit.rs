//! Requests per caller: a token bucket per principal, so one system that misbehaves
//! cannot starve the others.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per principal id.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Most buckets kept; beyond, full ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl RateLimit {
    /// `per_sec` requests a second on average, bursts of `burst`.
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request for `who` at `now`: whether it may go on.
    pub fn take(&self, who: &str, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(who) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(who.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn each_caller_has_its_own_bucket() {
        let l = RateLimit::new(10, 3);
        let t = Instant::now();
        assert!(l.take("a", t) && l.take("a", t) && l.take("a", t));
        assert!(!l.take("a", t), "burst spent");
        assert!(l.take("b", t), "another caller is not held back");
        assert!(l.take("a", t + Duration::from_millis(150)), "refilled");
    }
}
