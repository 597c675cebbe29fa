//! Sweeps over all three credential trees at once (sessions, login links,
//! personal tokens): revoking a user's, and purging the expired and orphaned.

use super::records::{ApiToken, LoginToken, Session};
use super::{Result, Store, Unreadable};
use crate::ids::UserId;
use crate::time::unix_now;

impl Store {
    /// Revokes every credential of a user: sessions (app-host sessions included, and
    /// with them any hand-off code in flight, which needs its parent session),
    /// unused login links and personal API tokens. Counts of each, in that order.
    pub async fn delete_credentials_of(&self, user_id: &UserId) -> Result<(usize, usize, usize)> {
        self.up_to_date().await?;
        let (sessions, links, tokens) = {
            (
                self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                    &s.user_id == user_id
                })?,
                self.remove_where::<LoginToken>(&self.login_tokens, Unreadable::Remove, |t| {
                    t.user_id.as_ref() == Some(user_id)
                })?,
                self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                    &t.user_id == user_id
                })?,
            )
        };
        self.flush().await?;
        Ok((sessions, links, tokens))
    }

    /// Drops expired sessions and login tokens, and any session or token whose
    /// user no longer exists (one created while its user was being deleted).
    pub async fn purge_expired(&self) -> Result<usize> {
        if self.drop_dangling_shares().await? > 0 {
            self.refresh_directory()?;
        }
        self.purge_one_time().await?;
        let now = unix_now();
        let live = |id: &UserId| {
            self.users
                .contains_key(id.as_str().as_bytes())
                .unwrap_or(true)
        };
        Ok(
            self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                s.expires <= now || !live(&s.user_id)
            })? + self.remove_where::<LoginToken>(&self.login_tokens, Unreadable::Remove, |t| {
                t.expires <= now || t.user_id.as_ref().is_some_and(|id| !live(id))
            })? + self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                !live(&t.user_id)
            })?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Share;
    use crate::store::tests::store;

    #[tokio::test]
    async fn purging_drops_sessions_tokens_and_grants_of_users_that_do_not_exist() {
        let (_d, s) = store();
        let ghost = UserId::generate();
        let (sid, _) = s.create_session(&ghost, 3600).await.unwrap();
        let (token, _) = s.create_api_token(&ghost, "ci").await.unwrap();
        let mut owner = s.create_user("owner", None, None).await.unwrap();
        owner.shared_with.push(Share {
            user_id: ghost.clone(),
            read_only: true,
            granted: 0,
        });
        s.update_user(&owner).await.unwrap();
        assert_eq!(s.purge_expired().await.unwrap(), 2);
        assert!(s.session(&sid).unwrap().is_none());
        assert!(s.api_token(&token).unwrap().is_none());
        let owner = s.snapshot().by_name("owner").cloned().unwrap();
        assert!(owner.shared_with.is_empty(), "the dangling grant is gone");
    }

    #[tokio::test]
    async fn revoking_a_users_credentials_counts_each_kind_and_spares_others() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let other = s.create_user("bob", None, None).await.unwrap();
        s.create_session(&u.id, 3600).await.unwrap();
        s.create_session(&u.id, 3600).await.unwrap();
        s.issue_login_token(&u.id, 900).await.unwrap();
        s.create_api_token(&u.id, "ci").await.unwrap();
        let (kept, _) = s.create_session(&other.id, 3600).await.unwrap();
        assert_eq!(s.delete_credentials_of(&u.id).await.unwrap(), (2, 1, 1));
        assert_eq!(s.delete_credentials_of(&u.id).await.unwrap(), (0, 0, 0));
        assert!(s.session(&kept).unwrap().is_some());
    }
}
