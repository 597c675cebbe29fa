//! Subdomain mode's hand-off codes: how a sign-in on the login host becomes a
//! session on one app host without any cookie shared between the two. A code is
//! random, single use, valid for a minute, bound to one slug (it only works on that
//! slug's host) and to the sign-in session that asked for it; only its hash is
//! kept, in the store, so the replica that redeems it need not be the one that
//! issued it.

use std::time::Duration;

use crate::ids::{SessionId, Slug, UserId};
use crate::store::{HandoffCode, Store, StoreError};
use crate::time::unix_now;

pub const CODE_TTL: Duration = Duration::from_secs(60);

pub struct HandoffCodes {
    store: Store,
}

impl HandoffCodes {
    pub fn new(store: Store) -> HandoffCodes {
        HandoffCodes { store }
    }

    pub async fn issue(
        &self,
        user_id: UserId,
        slug: Slug,
        parent: SessionId,
        next: String,
    ) -> Result<String, StoreError> {
        let record = HandoffCode {
            user_id,
            slug,
            parent,
            next,
            expires: unix_now() + CODE_TTL.as_secs() as i64,
        };
        self.store.issue_handoff(&record).await
    }

    /// Uses a code up on `host_slug`'s host. A code presented on another host is
    /// used up too (it was exposed to the wrong origin).
    pub async fn redeem(
        &self,
        code: &str,
        host_slug: &Slug,
    ) -> Result<Option<HandoffCode>, StoreError> {
        Ok(self
            .store
            .redeem_handoff(code)
            .await?
            .filter(|h| &h.slug == host_slug))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn codes_work_once_and_only_on_their_host() {
        let dir = tempfile::tempdir().unwrap();
        let codes = HandoffCodes::new(Store::open(dir.path()).unwrap());
        let (a, b) = (Slug::generate(), Slug::generate());
        let issue = || {
            codes.issue(
                UserId::from_stored("u".into()),
                a.clone(),
                SessionId::generate(),
                "/x".into(),
            )
        };
        let code = issue().await.unwrap();
        assert_eq!(codes.redeem(&code, &a).await.unwrap().unwrap().next, "/x");
        assert!(
            codes.redeem(&code, &a).await.unwrap().is_none(),
            "single use"
        );
        let code = issue().await.unwrap();
        assert!(
            codes.redeem(&code, &b).await.unwrap().is_none(),
            "wrong host"
        );
        assert!(
            codes.redeem(&code, &a).await.unwrap().is_none(),
            "burnt by the wrong host"
        );
        assert!(codes.redeem("forged", &a).await.unwrap().is_none());
    }
}
