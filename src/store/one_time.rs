//! Short-lived records every replica must agree on: subdomain hand-off codes
//! (issued on the login host, redeemed on an app host: possibly two replicas)
//! and login rate-limit counters (a limit counts attempts wherever they land).
//! Both are dropped by the purge once they are over.

use super::records::{HandoffCode, decode, encode};
use super::{Result, Store, token_hash};
use crate::ids::random_token;
use crate::time::unix_now;

/// SHA-256 of the code → [`HandoffCode`].
pub(super) const HANDOFFS: &str = "handoff_codes";
/// `<limiter>/<window start>/<SHA-256 of the key>` → count (4 bytes, big-endian).
pub(super) const RATE_LIMITS: &str = "rate_limits";

impl Store {
    /// Issues a single-use hand-off code; only its hash is stored. Committed
    /// before it is returned, so whichever replica the app host reaches finds it.
    pub async fn issue_handoff(&self, record: &HandoffCode) -> Result<String> {
        let code = random_token::<32>();
        self.handoffs.insert(token_hash(&code), encode(record))?;
        self.flush().await?;
        Ok(code)
    }

    /// Uses a code up (atomically: of two redemptions anywhere, one gets it);
    /// `None` when unknown, used or expired.
    pub async fn redeem_handoff(&self, code: &str) -> Result<Option<HandoffCode>> {
        let Some(bytes) = self.handoffs.take(token_hash(code)).await? else {
            return Ok(None);
        };
        Ok(decode::<HandoffCode>(&bytes)
            .ok()
            .filter(|h| h.expires > unix_now()))
    }

    /// Counts one attempt of `key` against limiter `name` in the fixed window of
    /// `window_secs` that `now` falls in; returns the count so far, this one
    /// included. Keys are stored hashed (they are addresses and emails). Past
    /// `limit` nothing more is written: a flood of refused attempts costs reads.
    pub async fn count_attempt(
        &self,
        name: &str,
        key: &str,
        window_secs: i64,
        limit: u32,
    ) -> Result<u32> {
        let counter = counter_key(name, key, window_secs, unix_now());
        if let Some(now) = self.rate_limits.get(&counter)?.map(|v| read_count(&v))
            && now > limit
        {
            return Ok(now);
        }
        self.add_to_counter(&counter, 1).await
    }

    /// Takes back one counted attempt (a success, for limits on failures).
    pub async fn forgive_attempt(&self, name: &str, key: &str, window_secs: i64) -> Result<()> {
        let counter = counter_key(name, key, window_secs, unix_now());
        self.add_to_counter(&counter, -1).await.map(|_| ())
    }

    async fn add_to_counter(&self, counter: &[u8], delta: i64) -> Result<u32> {
        let counted = self
            .kv
            .transaction(&[&self.rate_limits], |t| {
                let now = t[0].get(counter)?.map_or(0, |v| read_count(&v));
                let next = u32::try_from((i64::from(now) + delta).max(0)).unwrap_or(u32::MAX);
                t[0].insert(counter, next.to_be_bytes().to_vec())?;
                Ok::<_, super::kv::TxError<()>>(next)
            })
            .await?;
        Ok(counted.unwrap_or(u32::MAX))
    }

    /// Drops hand-off codes and rate-limit windows that are over.
    pub(super) async fn purge_one_time(&self) -> Result<usize> {
        let now = unix_now();
        let mut removed = 0;
        for item in self.handoffs.iter() {
            let (key, value) = item?;
            if decode::<HandoffCode>(&value).map_or(true, |h| h.expires <= now) {
                self.handoffs.remove(key)?;
                removed += 1;
            }
        }
        for item in self.rate_limits.iter() {
            let (key, _) = item?;
            if window_end(&key).is_none_or(|end| end <= now) {
                self.rate_limits.remove(key)?;
                removed += 1;
            }
        }
        self.flush().await?;
        Ok(removed)
    }
}

fn read_count(bytes: &[u8]) -> u32 {
    bytes.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX)
}

/// `<name>/<window start>/<window length>/<hash>`: the window's end can be read
/// back from the key alone.
fn counter_key(name: &str, key: &str, window_secs: i64, now: i64) -> Vec<u8> {
    let window_secs = window_secs.max(1);
    let start = now - now.rem_euclid(window_secs);
    format!(
        "{name}/{start}/{window_secs}/{}",
        hex::encode(token_hash(key))
    )
    .into_bytes()
}

fn window_end(key: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('/');
    let _name = parts.next()?;
    let start: i64 = parts.next()?.parse().ok()?;
    let length: i64 = parts.next()?.parse().ok()?;
    start.checked_add(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionId, Slug, UserId};
    use crate::store::tests::store;

    #[tokio::test]
    async fn a_handoff_code_works_once_and_not_after_it_expired() {
        let (_d, s) = store();
        let record = |expires| HandoffCode {
            user_id: UserId::generate(),
            slug: Slug::generate(),
            parent: SessionId::generate(),
            next: "/x".into(),
            expires,
        };
        let live = record(unix_now() + 60);
        let code = s.issue_handoff(&live).await.unwrap();
        assert_eq!(s.redeem_handoff(&code).await.unwrap(), Some(live));
        assert_eq!(s.redeem_handoff(&code).await.unwrap(), None, "single use");
        let stale = s.issue_handoff(&record(unix_now() - 1)).await.unwrap();
        assert_eq!(s.redeem_handoff(&stale).await.unwrap(), None);
        assert_eq!(s.redeem_handoff("forged").await.unwrap(), None);
    }

    #[tokio::test]
    async fn attempts_count_per_key_and_window_and_can_be_forgiven() {
        let (_d, s) = store();
        assert_eq!(
            s.count_attempt("email", "a@x", 3600, u32::MAX)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.count_attempt("email", "a@x", 3600, u32::MAX)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            s.count_attempt("email", "b@x", 3600, u32::MAX)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.count_attempt("ip", "a@x", 3600, u32::MAX).await.unwrap(),
            1
        );
        s.forgive_attempt("email", "a@x", 3600).await.unwrap();
        assert_eq!(
            s.count_attempt("email", "a@x", 3600, u32::MAX)
                .await
                .unwrap(),
            2
        );
        let key = counter_key("email", "a@x", 3600, 7300);
        assert_eq!(window_end(&key), Some(10800));
        assert!(
            !String::from_utf8_lossy(&key).contains("a@x"),
            "keys are hashed"
        );
    }
}
