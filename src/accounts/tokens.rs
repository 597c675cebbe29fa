//! What a user does with their own credentials: personal API tokens, their
//! password, their other sessions; and the admin's login links.

use std::sync::Arc;

use serde::Serialize;

use super::{Accounts, LoginLink};
use crate::error::{Error, Result};
use crate::ids::SessionId;
use crate::store::User;
use crate::time::rfc3339;

/// A personal API token as its owner sees it (never the secret, after creation).
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub created: String,
}

/// One of a user's sign-in sessions, as they see it in their list.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// [`SessionId::handle`]: what revoking names.
    pub id: String,
    pub created: String,
    pub expires: String,
    /// The session making this request.
    pub current: bool,
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Serialize)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token: String,
}

impl Accounts {
    pub async fn login_link(&self, key: &str) -> Result<LoginLink> {
        let user = self.find_user(key)?;
        if user.disabled {
            return Err(Error::Invalid(format!("user '{}' is disabled", user.name)));
        }
        let ttl = self.config.login.token_ttl.as_secs() as i64;
        let (token, record) = self.store.issue_login_token(&user.id, ttl).await?;
        Ok(LoginLink {
            user: user.name.clone(),
            url: format!(
                "{}/_spawngate/login?token={token}",
                self.config.public_url.origin
            ),
            expires: rfc3339(record.expires),
        })
    }

    /// A one-time sign-in link for `user`, or a sign-up link for `email` when
    /// `user` is `None`, continuing to `next` (already checked same-site).
    pub async fn sign_in_link(
        &self,
        user: Option<&User>,
        email: &str,
        next: Option<&str>,
    ) -> Result<String> {
        let ttl = self.config.login.token_ttl.as_secs() as i64;
        let (token, _) = match user {
            Some(user) => self.store.issue_login_token(&user.id, ttl).await?,
            None => self.store.issue_signup_token(email, ttl).await?,
        };
        let mut link = format!(
            "{}/_spawngate/login?token={token}",
            self.config.public_url.origin
        );
        if let Some(next) = next {
            link.push_str("&next=");
            link.extend(form_urlencoded::byte_serialize(next.as_bytes()));
        }
        Ok(link)
    }

    pub fn api_tokens(&self, user: &User) -> Result<Vec<TokenView>> {
        Ok(self
            .store
            .api_tokens_of(&user.id)?
            .into_iter()
            .map(|t| TokenView {
                id: t.id,
                name: t.name,
                created: rfc3339(t.created),
            })
            .collect())
    }

    pub async fn create_api_token(&self, user: &User, name: &str) -> Result<NewToken> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "token name: 1-64 printable characters".into(),
            ));
        }
        let (token, record) = self.store.create_api_token(&user.id, name).await?;
        self.store.audit(
            &user.name,
            "token.personal.create",
            &user.name,
            Some(record.id.clone()),
        );
        Ok(NewToken {
            id: record.id,
            name: record.name,
            token,
        })
    }

    pub async fn revoke_api_token(&self, user: &User, id: &str) -> Result<()> {
        if !self.store.delete_api_token(&user.id, id).await? {
            return Err(Error::NotFound("token"));
        }
        self.store.audit(
            &user.name,
            "token.personal.revoke",
            &user.name,
            Some(id.to_owned()),
        );
        Ok(())
    }

    /// `user`'s live sign-in sessions; `current` is the caller's own.
    pub fn sessions(&self, user: &User, current: Option<&SessionId>) -> Result<Vec<SessionView>> {
        Ok(self
            .store
            .sessions_of(&user.id)?
            .into_iter()
            .map(|(sid, s)| SessionView {
                id: sid.handle(),
                created: rfc3339(s.created),
                expires: rfc3339(s.expires),
                current: current == Some(&sid),
            })
            .collect())
    }

    /// Ends one of `user`'s sessions, named by its handle (the app-host sessions
    /// handed off from it end with it). Returns whether it was `current`.
    pub async fn revoke_session(
        &self,
        user: &User,
        handle: &str,
        current: Option<&SessionId>,
    ) -> Result<bool> {
        let sid = self
            .store
            .sessions_of(&user.id)?
            .into_iter()
            .map(|(sid, _)| sid)
            .find(|sid| sid.handle() == handle)
            .ok_or(Error::NotFound("session"))?;
        self.store.delete_session(&sid).await?;
        self.store
            .audit(&user.name, "session.revoke", &user.name, Some(sid.handle()));
        Ok(current == Some(&sid))
    }

    /// A user changes their own password: they must know the current one (if
    /// any). Whoever else is signed in as them is signed out; `session` (and its
    /// app sessions) stays. Returns how many other sessions ended.
    pub async fn change_password(
        &self,
        user: &Arc<User>,
        session: Option<&SessionId>,
        current: Option<String>,
        new: &str,
    ) -> Result<usize> {
        if let Some(stored) = user.password_hash.clone() {
            let current = current.unwrap_or_default();
            let ok = tokio::task::spawn_blocking(move || {
                crate::auth::password::verify(&current, Some(&stored))
            })
            .await
            .unwrap_or(false);
            if !ok {
                return Err(Error::Forbidden("the current password is wrong"));
            }
        }
        self.set_password(&user.name, &user.name, Some(new), false)
            .await?;
        Ok(match session {
            Some(sid) => self.store.delete_other_sessions(&user.id, sid).await?,
            None => 0,
        })
    }

    /// Mints an admin bearer token (the operator's, over the control socket).
    pub async fn create_admin_token(&self, actor: &str, name: &str) -> Result<String> {
        let token = self.store.create_admin_token(name).await?;
        self.store.audit(actor, "token.create", name, None);
        Ok(token)
    }
}
