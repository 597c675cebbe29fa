//! One-time login links (and sign-up links), stored by the hash of their secret.

use super::records::{LoginToken, decode, encode};
use super::{Result, Store, token_hash};
use crate::ids::{UserId, random_token};
use crate::time::unix_now;

/// SHA-256 of the link's secret → [`LoginToken`].
pub(super) const TREE: &str = "login_tokens";

/// How a one-time login token was rejected. The login page shows one message for
/// all of them, so a guesser learns nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
}

impl Store {
    /// Issues a single-use login token; only its hash is stored.
    pub async fn issue_login_token(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        self.issue_token(Some(user_id.clone()), None, ttl_secs)
            .await
    }

    /// A sign-up link for an address without an account.
    pub async fn issue_signup_token(
        &self,
        email: &str,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        self.issue_token(None, Some(email.to_owned()), ttl_secs)
            .await
    }

    async fn issue_token(
        &self,
        user_id: Option<UserId>,
        signup_email: Option<String>,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        let token = random_token::<32>();
        let now = unix_now();
        let generation = user_id.as_ref().map_or(0, |id| self.generation_of(id));
        let record = LoginToken {
            user_id,
            signup_email,
            created: now,
            expires: now + ttl_secs,
            generation,
        };
        {
            self.login_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok((token, record))
    }

    /// Checks a login token without using it up (for the confirm page).
    pub fn peek_login_token(&self, token: &str) -> Result<Result<LoginToken, TokenRejection>> {
        let Some(bytes) = self.login_tokens.get(token_hash(token))? else {
            return Ok(Err(TokenRejection::Unknown));
        };
        Ok(check_token(&bytes))
    }

    /// Uses a login token up. `take` is atomic across replicas, so of two
    /// concurrent confirmations exactly one succeeds.
    pub async fn consume_login_token(
        &self,
        token: &str,
    ) -> Result<Result<LoginToken, TokenRejection>> {
        let removed = self.login_tokens.take(token_hash(token)).await?;
        let Some(bytes) = removed else {
            return Ok(Err(TokenRejection::Unknown));
        };
        self.flush().await?;
        Ok(check_token(&bytes))
    }
}

fn check_token(bytes: &[u8]) -> Result<LoginToken, TokenRejection> {
    match decode::<LoginToken>(bytes) {
        Ok(t) if t.expires > unix_now() => Ok(t),
        Ok(_) => Err(TokenRejection::Expired),
        Err(_) => Err(TokenRejection::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[tokio::test]
    async fn login_tokens_are_single_use_and_expire() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let (token, _) = s.issue_login_token(&u.id, 900).await.unwrap();
        assert!(s.peek_login_token(&token).unwrap().is_ok());
        assert_eq!(
            s.consume_login_token(&token)
                .await
                .unwrap()
                .unwrap()
                .user_id,
            Some(u.id.clone())
        );
        assert_eq!(
            s.consume_login_token(&token).await.unwrap().unwrap_err(),
            TokenRejection::Unknown
        );

        let (expired, _) = s.issue_login_token(&u.id, -1).await.unwrap();
        assert_eq!(
            s.consume_login_token(&expired).await.unwrap().unwrap_err(),
            TokenRejection::Expired
        );
        assert_eq!(
            s.consume_login_token("forged").await.unwrap().unwrap_err(),
            TokenRejection::Unknown
        );
    }

    #[tokio::test]
    async fn a_sign_up_link_names_an_address_and_no_user() {
        let (_d, s) = store();
        let (link, _) = s.issue_signup_token("new@x.org", 900).await.unwrap();
        let t = s.peek_login_token(&link).unwrap().unwrap();
        assert_eq!(t.user_id, None);
        assert_eq!(t.signup_email.as_deref(), Some("new@x.org"));
    }
}
