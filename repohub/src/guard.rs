//! What keeps a flood of logins from guessing passwords or exhausting the
//! host: token-bucket rate limits per client address and per account, and a
//! small pool for argon2 (each run takes the KDF's memory, 19 MiB by
//! default, so the number running at once must be bounded, not the
//! blocking thread pool's 512).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("too many attempts; retry in {} s", .0.as_secs().max(1))]
    Limited(Duration),
    #[error("too many password checks in progress; retry in a few seconds")]
    Busy,
    #[error("the password check failed to run")]
    Join,
}

/// A token bucket: `burst` attempts at once, then one more every `refill`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub burst: u32,
    pub refill: Duration,
}

/// Login and signup limits. Every attempt from an address takes a token of
/// its bucket; every failed login of an account (and every signup of a
/// name) takes one of the account's, so guesses spread over many addresses
/// are still slowed per account.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_ip: Bucket,
    pub per_account: Bucket,
    /// The most addresses or accounts tracked at once; beyond it, buckets
    /// that have refilled are forgotten (and if that is not enough, all).
    pub max_keys: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_ip: Bucket {
                burst: 20,
                refill: Duration::from_secs(3),
            },
            per_account: Bucket {
                burst: 10,
                refill: Duration::from_secs(30),
            },
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets<K> {
    limit: Bucket,
    max_keys: usize,
    map: Mutex<HashMap<K, State>>,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(limit: Bucket, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, s: State, now: Instant) -> f64 {
        let per = self.limit.refill.as_secs_f64().max(1e-9);
        (s.tokens + now.duration_since(s.at).as_secs_f64() / per).min(f64::from(self.limit.burst))
    }

    /// Takes a token for `key` (`take`) or only checks there is one; when
    /// there is none, how long until there is.
    fn check(&self, key: &K, take: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_keys && !map.contains_key(key) {
            let full = f64::from(self.limit.burst);
            map.retain(|_, s| self.refilled(*s, now) < full);
            if map.len() >= self.max_keys {
                tracing::warn!(keys = map.len(), "rate-limit table full; forgetting it");
                map.clear();
            }
        }
        let s = map.entry(key.clone()).or_insert(State {
            tokens: f64::from(self.limit.burst),
            at: now,
        });
        let tokens = self.refilled(*s, now);
        if tokens < 1.0 {
            let wait = self.limit.refill.as_secs_f64() * (1.0 - tokens);
            return Err(Duration::from_secs_f64(wait).max(Duration::from_secs(1)));
        }
        if take {
            *s = State {
                tokens: tokens - 1.0,
                at: now,
            };
        }
        Ok(())
    }
}

/// The login and signup limiter shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    ip: Buckets<IpAddr>,
    account: Buckets<String>,
}

impl RateLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            ip: Buckets::new(limits.per_ip, limits.max_keys),
            account: Buckets::new(limits.per_account, limits.max_keys),
        }
    }

    /// An attempt from `ip` about `account`: refused when the address has
    /// no attempts left or the account has no failures left. Takes the
    /// address's token; the account's is taken by [`Self::failed`].
    pub fn attempt(&self, ip: IpAddr, account: &str) -> Result<(), GuardError> {
        self.account
            .check(&account.to_owned(), false)
            .map_err(GuardError::Limited)?;
        self.ip.check(&ip, true).map_err(GuardError::Limited)
    }

    /// A failed login of `account` (or a signup of that name).
    pub fn failed(&self, account: &str) {
        let _ = self.account.check(&account.to_owned(), true);
    }
}

/// How many argon2 runs at once, and how long a request waits for one.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Limit {
    pub concurrent: usize,
    /// Requests queued beyond the running ones; more get 503 at once.
    pub queue: usize,
    pub wait: Duration,
}

impl Default for Argon2Limit {
    fn default() -> Self {
        Self {
            concurrent: 2,
            queue: 32,
            wait: Duration::from_secs(5),
        }
    }
}

/// Runs password hashing with at most `concurrent` at once.
#[derive(Debug, Clone)]
pub struct Argon2Pool {
    limit: Argon2Limit,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Argon2Pool {
    pub fn new(limit: Argon2Limit) -> Self {
        Self {
            limit,
            permits: Arc::new(Semaphore::new(limit.concurrent.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `f` on a blocking thread once a slot is free; `Busy` when the
    /// queue is full or no slot frees up within the wait.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GuardError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limit.concurrent + self.limit.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(GuardError::Busy);
        }
        let queued = Waiting(&self.waiting);
        let permit = tokio::time::timeout(self.limit.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| GuardError::Busy)?
            .map_err(|_| GuardError::Busy)?;
        let out = tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(|_| GuardError::Join);
        drop(queued);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_and_names_the_wait() {
        let b = Buckets::new(
            Bucket {
                burst: 2,
                refill: Duration::from_secs(10),
            },
            10,
        );
        assert!(b.check(&1, true).is_ok());
        assert!(b.check(&1, false).is_ok(), "a check takes nothing");
        assert!(b.check(&1, true).is_ok());
        let wait = b.check(&1, true).unwrap_err();
        assert!(wait > Duration::from_secs(8) && wait <= Duration::from_secs(10));
        assert!(b.check(&2, true).is_ok(), "another key has its own bucket");
    }

    #[test]
    fn the_table_stays_bounded() {
        let b = Buckets::new(
            Bucket {
                burst: 1,
                refill: Duration::from_secs(60),
            },
            100,
        );
        for k in 0..1000 {
            let _ = b.check(&k, true);
            assert!(b.map.lock().unwrap().len() <= 100);
        }
    }

    #[test]
    fn failures_limit_the_account_from_any_address() {
        let r = RateLimiter::new(LoginLimits {
            per_account: Bucket {
                burst: 3,
                refill: Duration::from_secs(60),
            },
            ..LoginLimits::default()
        });
        for i in 0..3u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            r.attempt(ip, "ann").unwrap();
            r.failed("ann");
        }
        let e = r.attempt(IpAddr::from([10, 0, 0, 9]), "ann").unwrap_err();
        assert!(matches!(e, GuardError::Limited(_)), "{e}");
        r.attempt(IpAddr::from([10, 0, 0, 9]), "bob").unwrap();
    }

    #[tokio::test]
    async fn the_pool_runs_a_bounded_number_and_refuses_the_rest() {
        let pool = Argon2Pool::new(Argon2Limit {
            concurrent: 1,
            queue: 1,
            wait: Duration::from_millis(100),
        });
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let running = tokio::spawn(async move { p.run(move || rx.recv().is_ok()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // One queued waiter times out; with it waiting, a third is refused at once.
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(|| ()).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = Instant::now();
        assert!(matches!(pool.run(|| ()).await, Err(GuardError::Busy)));
        assert!(started.elapsed() < Duration::from_millis(50));
        assert!(matches!(queued.await.unwrap(), Err(GuardError::Busy)));
        tx.send(()).unwrap();
        assert!(running.await.unwrap().unwrap());
        assert!(pool.run(|| 7).await.is_ok_and(|v| v == 7));
    }
}
