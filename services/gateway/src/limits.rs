//! Per-tenant request limits: a token bucket per tenant (pure, given the time), and the
//! `X-RateLimit-*` headers every response carries.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::TenantLimits;

/// The outcome of one request against its tenant's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// `X-RateLimit-Limit`: requests per minute.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests left in the bucket now.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Retry-After` when refused: seconds until one request fits.
    pub retry_after_secs: u64,
    /// At least 80 % of the burst is used.
    pub warning: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// Buckets by tenant.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Takes one request from the tenant's request bucket.
    pub fn check(&self, tenant: &str, limits: TenantLimits, now_ms: i64) -> Verdict {
        self.take(tenant, limits, 1, now_ms)
    }

    /// Takes `amount` from bucket `key` (a token bucket of `limits.burst`, refilled at
    /// `limits.requests_per_minute` per minute); nothing is taken when it does not fit.
    pub fn take(&self, key: &str, limits: TenantLimits, amount: u32, now_ms: i64) -> Verdict {
        let mut map = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(limits.burst);
        let per_ms = f64::from(limits.requests_per_minute) / 60_000.0;
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        #[allow(clippy::cast_precision_loss)]
        let elapsed = (now_ms - b.at_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * per_ms).min(burst);
        b.at_ms = now_ms;
        let want = f64::from(amount);
        let allowed = b.tokens >= want;
        if allowed {
            b.tokens -= want;
        }
        let secs = |ms: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let s = (ms / 1000.0).ceil().max(0.0) as u64;
            s
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let remaining = b.tokens.floor().max(0.0) as u32;
        Verdict {
            allowed,
            limit: limits.requests_per_minute,
            remaining,
            reset_secs: secs((burst - b.tokens) / per_ms),
            retry_after_secs: if allowed {
                0
            } else {
                secs((want.min(burst) - b.tokens) / per_ms).max(1)
            },
            warning: b.tokens <= burst * 0.2,
        }
    }
}

/// Limits shrunk by `factor` (at least 1 request per minute and a burst of 1).
pub fn scaled(limits: TenantLimits, factor: f64) -> TenantLimits {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let scale = |x: u32| ((f64::from(x) * factor).floor() as u32).max(1);
    TenantLimits {
        requests_per_minute: scale(limits.requests_per_minute),
        burst: scale(limits.burst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: TenantLimits = TenantLimits {
        requests_per_minute: 60,
        burst: 5,
    };

    #[test]
    fn a_burst_is_allowed_then_refused_until_refilled() {
        let l = Limiter::default();
        for i in 0..5 {
            let v = l.check("a", L, 0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 4 - i);
        }
        let refused = l.check("a", L, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.reset_secs, 5);
        assert!(refused.warning);
        assert!(l.check("a", L, 1_000).allowed, "one more after a second");
        assert!(l.check("b", L, 0).allowed, "another tenant is unaffected");
    }

    #[test]
    fn budgets_take_many_at_once_and_shrink() {
        let l = Limiter::default();
        let budget = TenantLimits {
            requests_per_minute: 600,
            burst: 1_000,
        };
        assert!(l.take("tokens:a", budget, 900, 0).allowed);
        let over = l.take("tokens:a", budget, 200, 0);
        assert!(!over.allowed);
        assert_eq!(over.remaining, 100, "nothing taken when refused");
        assert_eq!(over.retry_after_secs, 10, "100 more tokens at 10/s");
        assert_eq!(
            scaled(L, 0.1),
            TenantLimits {
                requests_per_minute: 6,
                burst: 1
            }
        );
    }

    #[test]
    fn the_warning_starts_at_80_percent() {
        let l = Limiter::default();
        let v: Vec<bool> = (0..5).map(|_| l.check("a", L, 0).warning).collect();
        assert_eq!(v, vec![false, false, false, true, true]);
    }
}
