//! Personal API tokens (`spawngate_…`), stored by the hash of their secret.

use super::records::{ApiToken, decode, encode};
use super::{Result, Store, StoreError, Unreadable, token_hash};
use crate::ids::{UserId, random_bytes, random_token};
use crate::time::unix_now;

/// SHA-256 of the token → [`ApiToken`].
pub(super) const TREE: &str = "api_tokens";

impl Store {
    /// At most this many personal tokens per user.
    pub const MAX_API_TOKENS: usize = 20;

    /// Creates a personal token (`spawngate_…`): returned once, stored as a hash.
    pub async fn create_api_token(
        &self,
        user_id: &UserId,
        name: &str,
    ) -> Result<(String, ApiToken)> {
        if self.api_tokens_of(user_id)?.len() >= Self::MAX_API_TOKENS {
            return Err(StoreError::Conflict {
                what: "token limit for user",
                value: user_id.to_string(),
            });
        }
        let token = format!("spawngate_{}", random_token::<32>());
        let record = ApiToken {
            id: hex::encode(random_bytes::<6>()),
            user_id: user_id.clone(),
            name: name.to_owned(),
            created: unix_now(),
            generation: self.generation_of(user_id),
        };
        {
            self.api_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok((token, record))
    }

    pub fn api_token(&self, token: &str) -> Result<Option<ApiToken>> {
        Ok(self
            .api_tokens
            .get(token_hash(token))?
            .and_then(|b| decode::<ApiToken>(&b).ok()))
    }

    pub fn api_tokens_of(&self, user_id: &UserId) -> Result<Vec<ApiToken>> {
        let mut out = Vec::new();
        for item in self.api_tokens.iter() {
            let (_, value) = item?;
            if let Ok(t) = decode::<ApiToken>(&value)
                && &t.user_id == user_id
            {
                out.push(t);
            }
        }
        out.sort_by_key(|t| t.created);
        Ok(out)
    }

    /// Revokes one of the user's tokens by its id; `false` if there was none.
    pub async fn delete_api_token(&self, user_id: &UserId, id: &str) -> Result<bool> {
        self.up_to_date().await?;
        let n = {
            self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                &t.user_id == user_id && t.id == id
            })?
        };
        self.flush().await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[tokio::test]
    async fn tokens_are_listed_in_order_capped_and_revoked_by_id() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..Store::MAX_API_TOKENS {
            let (token, record) = s.create_api_token(&u.id, &format!("t{i}")).await.unwrap();
            assert!(token.starts_with("spawngate_"));
            ids.push(record.id);
        }
        assert!(matches!(
            s.create_api_token(&u.id, "one too many").await,
            Err(StoreError::Conflict {
                what: "token limit for user",
                ..
            })
        ));
        let listed = s.api_tokens_of(&u.id).unwrap();
        assert_eq!(listed.len(), Store::MAX_API_TOKENS);
        let other = UserId::generate();
        assert!(
            !s.delete_api_token(&other, &ids[0]).await.unwrap(),
            "only the owner's"
        );
        assert!(s.delete_api_token(&u.id, &ids[0]).await.unwrap());
        assert!(!s.delete_api_token(&u.id, &ids[0]).await.unwrap());
        assert_eq!(
            s.api_tokens_of(&u.id).unwrap().len(),
            Store::MAX_API_TOKENS - 1
        );
    }
}
