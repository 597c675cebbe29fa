//! Sign-in sessions (and app-host sessions in subdomain mode), keyed by session id.

use super::records::{Session, SessionScope, decode, encode};
use super::{Result, Store, Unreadable};
use crate::ids::{SessionId, UserId};
use crate::time::unix_now;

/// Session id → [`Session`].
pub(super) const TREE: &str = "sessions";

impl Store {
    pub async fn create_session(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
    ) -> Result<(SessionId, Session)> {
        self.create_scoped_session(user_id, ttl_secs, None).await
    }

    /// A session for one app host (subdomain mode), or with `None` a sign-in session.
    pub async fn create_scoped_session(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
        scope: Option<SessionScope>,
    ) -> Result<(SessionId, Session)> {
        let now = unix_now();
        let sid = SessionId::generate();
        let session = Session {
            user_id: user_id.clone(),
            created: now,
            expires: now + ttl_secs,
            scope,
            generation: self.generation_of(user_id),
        };
        {
            self.sessions
                .insert(sid.as_str().as_bytes(), encode(&session))?;
        }
        self.flush().await?;
        Ok((sid, session))
    }

    /// A live session, or `None` if unknown, expired or unreadable.
    pub fn session(&self, sid: &SessionId) -> Result<Option<Session>> {
        let Some(bytes) = self.sessions.get(sid.as_str().as_bytes())? else {
            return Ok(None);
        };
        Ok(decode::<Session>(&bytes)
            .ok()
            .filter(|s| s.expires > unix_now()))
    }

    /// Revokes every session of a user at once; returns how many there were.
    pub async fn delete_sessions_of(&self, user_id: &UserId) -> Result<usize> {
        self.up_to_date().await?;
        let n = {
            self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                &s.user_id == user_id
            })?
        };
        self.flush().await?;
        Ok(n)
    }

    /// Revokes a user's sessions except `keep` and the app sessions handed off from
    /// it (after a password change: whoever else was signed in is signed out).
    pub async fn delete_other_sessions(&self, user_id: &UserId, keep: &SessionId) -> Result<usize> {
        self.up_to_date().await?;
        let mut removed = 0;
        let now = unix_now();
        for item in self.sessions.iter() {
            let (key, value) = item?;
            if key.as_ref() == keep.as_str().as_bytes() {
                continue;
            }
            let Ok(session) = decode::<Session>(&value) else {
                continue;
            };
            let child_of_kept = session.scope.as_ref().is_some_and(|s| &s.parent == keep);
            if &session.user_id == user_id && !child_of_kept {
                self.sessions.remove(key)?;
                // Expired ones were signed out already.
                removed += usize::from(session.expires > now);
            }
        }
        self.flush().await?;
        Ok(removed)
    }

    /// A user's live sign-in sessions (app-host sessions left out), oldest first.
    pub fn sessions_of(&self, user_id: &UserId) -> Result<Vec<(SessionId, Session)>> {
        let now = unix_now();
        let mut out = Vec::new();
        for item in self.sessions.iter() {
            let (key, value) = item?;
            let Ok(session) = decode::<Session>(&value) else {
                continue;
            };
            if &session.user_id != user_id || session.scope.is_some() || session.expires <= now {
                continue;
            }
            if let Ok(key) = std::str::from_utf8(&key) {
                out.push((SessionId::from_claim(key.to_owned()), session));
            }
        }
        out.sort_by_key(|(_, s)| s.created);
        Ok(out)
    }

    pub async fn delete_session(&self, sid: &SessionId) -> Result<()> {
        {
            self.sessions.remove(sid.as_str().as_bytes())?;
        }
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[tokio::test]
    async fn sessions_expire_and_are_removed_with_the_user() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let (sid, _) = s.create_session(&u.id, 3600).await.unwrap();
        assert!(s.session(&sid).unwrap().is_some());
        let (old, _) = s.create_session(&u.id, -1).await.unwrap();
        assert!(s.session(&old).unwrap().is_none());
        assert_eq!(s.purge_expired().await.unwrap(), 1);
        s.delete_user(&u, false).await.unwrap();
        assert!(s.session(&sid).unwrap().is_none());
    }

    #[tokio::test]
    async fn signing_out_others_keeps_this_session_and_its_app_sessions() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let other = s.create_user("bob", None, None).await.unwrap();
        let (keep, _) = s.create_session(&u.id, 3600).await.unwrap();
        let (elsewhere, _) = s.create_session(&u.id, 3600).await.unwrap();
        let (bobs, _) = s.create_session(&other.id, 3600).await.unwrap();
        let scope = |parent: &SessionId| SessionScope {
            slug: u.slug.clone(),
            parent: parent.clone(),
        };
        let (child, _) = s
            .create_scoped_session(&u.id, 3600, Some(scope(&keep)))
            .await
            .unwrap();
        let (orphan, _) = s
            .create_scoped_session(&u.id, 3600, Some(scope(&elsewhere)))
            .await
            .unwrap();
        assert_eq!(s.delete_other_sessions(&u.id, &keep).await.unwrap(), 2);
        assert!(s.session(&keep).unwrap().is_some());
        assert!(s.session(&child).unwrap().is_some());
        assert!(s.session(&elsewhere).unwrap().is_none());
        assert!(s.session(&orphan).unwrap().is_none());
        assert!(s.session(&bobs).unwrap().is_some(), "other users' stay");
        s.delete_session(&keep).await.unwrap();
        assert!(s.session(&keep).unwrap().is_none());
    }
}
