//! Admin API tokens (`sgadm_…`), stored by the hash of their secret.

use super::records::{AdminToken, decode, encode};
use super::{Result, Store, token_hash};
use crate::ids::random_token;
use crate::time::unix_now;

/// SHA-256 of the token → [`AdminToken`].
pub(super) const TREE: &str = "admin_tokens";

impl Store {
    pub async fn create_admin_token(&self, name: &str) -> Result<String> {
        let token = format!("sgadm_{}", random_token::<32>());
        let record = AdminToken {
            name: name.to_owned(),
            created: unix_now(),
        };
        {
            self.admin_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok(token)
    }

    pub fn admin_token(&self, token: &str) -> Result<Option<AdminToken>> {
        Ok(self
            .admin_tokens
            .get(token_hash(token))?
            .and_then(|b| decode::<AdminToken>(&b).ok()))
    }
}
