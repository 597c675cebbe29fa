//! Fixed-window rate limits for login requests, kept in memory (a restart resets
//! them, which only ever lets a little more through). On a shared store the
//! `*_everywhere` calls count in the store instead, so a limit holds across
//! replicas wherever the attempts land (and falls back to this replica's own
//! count while the store cannot be reached).
//!
//! Memory is bounded: windows are kept in the order they opened, finished ones are
//! dropped from the front, and when a flood of distinct keys fills the table the
//! oldest window makes room. Every operation is O(1), so a flood costs no scans
//! under the lock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys held at once (about 10 MB at the worst).
const MAX_KEYS: usize = 100_000;

pub struct RateLimiter {
    limit: u32,
    window: Duration,
    max_keys: usize,
    state: Mutex<Windows>,
    /// The shared store and this limiter's name in it.
    shared: Option<(crate::store::Store, &'static str)>,
}

#[derive(Default)]
struct Windows {
    counts: HashMap<String, u32>,
    /// When each key's window opened, oldest first: one entry per key in `counts`.
    opened: VecDeque<(Instant, String)>,
}

impl Windows {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((start, _)) = self.opened.front() {
            if now.duration_since(*start) < window {
                break;
            }
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.opened.pop_front() {
            self.counts.remove(&key);
        }
    }
}

impl RateLimiter {
    pub fn per_hour(limit: u32) -> RateLimiter {
        RateLimiter::new(limit, Duration::from_secs(3600))
    }

    pub fn new(limit: u32, window: Duration) -> RateLimiter {
        RateLimiter::bounded(limit, window, MAX_KEYS)
    }

    fn bounded(limit: u32, window: Duration, max_keys: usize) -> RateLimiter {
        RateLimiter {
            limit,
            window,
            max_keys: max_keys.max(1),
            state: Mutex::new(Windows::default()),
            shared: None,
        }
    }

    /// Counts in `store` under `name` when the store is shared by replicas.
    pub fn counted_in(mut self, store: &crate::store::Store, name: &'static str) -> RateLimiter {
        if store.is_shared() {
            self.shared = Some((store.clone(), name));
        }
        self
    }

    fn window_secs(&self) -> i64 {
        i64::try_from(self.window.as_secs()).unwrap_or(i64::MAX)
    }

    /// [`Self::allow`] counted across replicas (see the module docs).
    pub async fn allow_everywhere(&self, key: &str) -> bool {
        if let Some((store, name)) = &self.shared {
            match store
                .count_attempt(name, key, self.window_secs(), self.limit)
                .await
            {
                Ok(n) => return n <= self.limit,
                Err(e) => {
                    tracing::warn!(error = %e, "rate limit: store unavailable, counting locally")
                }
            }
        }
        self.allow(key)
    }

    /// [`Self::forgive`] counted across replicas.
    pub async fn forgive_everywhere(&self, key: &str) {
        if let Some((store, name)) = &self.shared
            && store
                .forgive_attempt(name, key, self.window_secs())
                .await
                .is_ok()
        {
            return;
        }
        self.forgive(key);
    }

    /// Counts one attempt for `key`; `false` once the limit for the window is used.
    pub fn allow(&self, key: &str) -> bool {
        self.record(key) <= self.limit
    }

    /// Takes back one counted attempt (one that turned out to be a success, for
    /// limits that count only failures).
    pub fn forgive(&self, key: &str) {
        if let Some(n) = self.lock().counts.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    /// Counts one attempt for `key` and returns the count in its window.
    fn record(&self, key: &str) -> u32 {
        self.record_at(key, Instant::now)
    }

    /// [`RateLimiter::record`] with the clock as a parameter (tests step it).
    fn record_at(&self, key: &str, clock: impl FnOnce() -> Instant) -> u32 {
        let mut state = self.lock();
        // Read under the lock, so windows open in order.
        let now = clock();
        state.expire(now, self.window);
        if let Some(n) = state.counts.get_mut(key) {
            *n = n.saturating_add(1);
            return *n;
        }
        if state.counts.len() >= self.max_keys {
            state.evict_oldest();
        }
        state.counts.insert(key.to_owned(), 1);
        state.opened.push_back((now, key.to_owned()));
        1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The rate-limit key for a client address: IPv6 clients by their /64 (one
/// subscriber usually holds a whole /64, so per-address keys would be free to
/// multiply), IPv4 (also IPv4-mapped IPv6) by the address.
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_resets_after_the_window() {
        // A stepped clock: no sleeping, and no window a loaded machine can cross.
        let l = RateLimiter::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let at = |secs: u64| move || start + Duration::from_secs(secs);
        assert_eq!(l.record_at("a", at(0)), 1);
        assert_eq!(l.record_at("a", at(1)), 2);
        assert_eq!(l.record_at("a", at(2)), 3);
        assert_eq!(l.record_at("a", at(3)), 4, "past the limit of 3");
        assert_eq!(l.record_at("b", at(3)), 1, "other keys are independent");
        assert_eq!(l.record_at("a", at(59)), 5, "the window is still open");
        assert_eq!(l.record_at("a", at(60)), 1, "a new window");
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_bound_and_evicts_the_oldest() {
        let l = RateLimiter::bounded(1, Duration::from_secs(3600), 100);
        assert!(l.allow("victim"));
        assert!(!l.allow("victim"));
        for i in 0..10_000 {
            l.allow(&format!("k{i}"));
        }
        let state = l.lock();
        assert_eq!(state.counts.len(), 100);
        assert_eq!(state.opened.len(), 100);
        assert!(state.counts.contains_key("k9999"));
        assert!(!state.counts.contains_key("victim"));
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let l = RateLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.record("a"), 1);
        l.forgive("a");
        assert_eq!(l.record("a"), 1);
        assert_eq!(l.record("a"), 2);
        assert!(!l.allow("a"));
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }
}
