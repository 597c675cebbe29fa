//! Subdomain mode's hand-off codes: how a sign-in on the login host becomes a
//! session on one app host without any cookie shared between the two. A code is
//! random, single use, valid for a minute, bound to one slug (it only works on that
//! slug's host) and to the sign-in session that asked for it; only its hash is kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::{SessionId, Slug, UserId, random_token};
use crate::store::token_hash;

pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Bound on codes in flight (each costs a sign-in, but memory must stay bounded).
const MAX_PENDING: usize = 10_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Handoff {
    pub user_id: UserId,
    pub slug: Slug,
    pub parent: SessionId,
    pub next: String,
    created: Instant,
}

#[derive(Default)]
pub struct HandoffCodes {
    pending: Mutex<HashMap<[u8; 32], Handoff>>,
}

impl HandoffCodes {
    pub fn issue(&self, user_id: UserId, slug: Slug, parent: SessionId, next: String) -> String {
        let code = random_token::<32>();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, h| h.created.elapsed() < CODE_TTL);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, h)| h.created)
                .map(|(k, _)| *k)
        {
            pending.remove(&oldest);
        }
        pending.insert(
            token_hash(&code),
            Handoff {
                user_id,
                slug,
                parent,
                next,
                created: Instant::now(),
            },
        );
        code
    }

    /// Uses a code up on `host_slug`'s host. A code presented on another host is
    /// used up too (it was exposed to the wrong origin).
    pub fn redeem(&self, code: &str, host_slug: &Slug) -> Option<Handoff> {
        let handoff = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token_hash(code))?;
        (handoff.created.elapsed() < CODE_TTL && &handoff.slug == host_slug).then_some(handoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_work_once_and_only_on_their_host() {
        let codes = HandoffCodes::default();
        let (a, b) = (Slug::generate(), Slug::generate());
        let issue = || {
            codes.issue(
                UserId::from_stored("u".into()),
                a.clone(),
                SessionId::generate(),
                "/x".into(),
            )
        };
        let code = issue();
        assert_eq!(codes.redeem(&code, &a).unwrap().next, "/x");
        assert!(codes.redeem(&code, &a).is_none(), "single use");
        let code = issue();
        assert!(codes.redeem(&code, &b).is_none(), "wrong host");
        assert!(codes.redeem(&code, &a).is_none(), "burnt by the wrong host");
        assert!(codes.redeem("forged", &a).is_none());
    }
}
