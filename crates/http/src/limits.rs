//! Per-request limits the HTTP adapter enforces: how deep a JSON body may nest, how long
//! its body may take to arrive, and how many requests a key may make (a token bucket
//! per key, per instance).

use std::num::NonZeroU32;
use std::sync::Arc;

use baton_domain::ApiKeyId;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::{ApiError, ErrorCode};

/// Default deepest nesting of a JSON body.
pub const DEFAULT_JSON_DEPTH: usize = 32;
/// Default longest wait for a whole request body.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Deepest nesting of objects and arrays in a body; deeper is `400 json_too_deep`.
    pub json_depth: usize,
    /// Requests per key, if limited.
    pub per_key: Option<KeyRate>,
    /// How long a request's whole body may take to arrive once its head has; then
    /// `408 request_timeout`, so a client that stalls mid-body cannot hold a
    /// connection and a worker's attention forever.
    pub body_timeout: std::time::Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            json_depth: DEFAULT_JSON_DEPTH,
            per_key: None,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

type Limiter = RateLimiter<ApiKeyId, DefaultKeyedStateStore<ApiKeyId>, DefaultClock>;

/// A token bucket per API key: `per_second` requests a second on average, up to
/// `burst` at once.
#[derive(Clone)]
pub struct KeyRate {
    limiter: Arc<Limiter>,
    per_second: u32,
    burst: u32,
}

impl std::fmt::Debug for KeyRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRate")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl KeyRate {
    /// `None` if either number is zero (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<KeyRate> {
        let quota =
            Quota::per_second(NonZeroU32::new(per_second)?).allow_burst(NonZeroU32::new(burst)?);
        Some(KeyRate {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            per_second,
            burst,
        })
    }

    /// Takes one request from the key's bucket, or says when to come back.
    pub fn check(&self, key: ApiKeyId) -> Result<(), ApiError> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError {
                retry_after: Some(u32::try_from(seconds).unwrap_or(u32::MAX).max(1)),
                ..ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "This key made more than {} requests a second (bursts of {}); retry after the Retry-After seconds.",
                        self.per_second, self.burst
                    ),
                )
            }
        })
    }

    /// Forgets idle keys' buckets (call now and then so the map does not grow).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_other_keys_are_not_held_up() {
        let rate = KeyRate::new(1, 3).unwrap();
        for _ in 0..3 {
            rate.check(ApiKeyId(1)).unwrap();
        }
        let refused = rate.check(ApiKeyId(1)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after, Some(1));
        rate.check(ApiKeyId(2)).unwrap();
        assert!(KeyRate::new(0, 10).is_none() && KeyRate::new(10, 0).is_none());
    }
}
