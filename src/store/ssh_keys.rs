//! Users' SSH public keys, keyed by their SHA-256 fingerprint: a key belongs to one
//! user at most (the key itself is the index), and the SSH server finds whose a
//! key is with one lookup.

use super::records::{SshKey, decode, encode};
use super::{Result, Store, StoreError, Unreadable};
use crate::ids::UserId;

/// Fingerprint (`SHA256:…`, OpenSSH's form) → [`SshKey`].
pub(super) const TREE: &str = "ssh_keys";

impl Store {
    /// At most this many SSH keys per user.
    pub const MAX_SSH_KEYS: usize = 50;

    /// Adds a key; a fingerprint anyone has registered already is refused.
    pub async fn add_ssh_key(&self, key: &SshKey) -> Result<()> {
        if self.ssh_keys_of(&key.user_id)?.len() >= Self::MAX_SSH_KEYS {
            return Err(StoreError::Conflict {
                what: "SSH key limit for user",
                value: key.user_id.to_string(),
            });
        }
        let swapped = self
            .ssh_keys
            .compare_and_swap(key.fingerprint.as_bytes(), None, Some(encode(key).into()))
            .await?;
        if !swapped {
            return Err(StoreError::Conflict {
                what: "SSH key",
                value: key.fingerprint.clone(),
            });
        }
        self.flush().await
    }

    /// The key with this fingerprint, whoever it belongs to.
    pub fn ssh_key(&self, fingerprint: &str) -> Result<Option<SshKey>> {
        Ok(self
            .ssh_keys
            .get(fingerprint.as_bytes())?
            .and_then(|b| decode::<SshKey>(&b).ok()))
    }

    /// A user's keys, oldest first.
    pub fn ssh_keys_of(&self, user_id: &UserId) -> Result<Vec<SshKey>> {
        let mut out = Vec::new();
        for item in self.ssh_keys.iter() {
            let (_, value) = item?;
            if let Ok(k) = decode::<SshKey>(&value)
                && &k.user_id == user_id
            {
                out.push(k);
            }
        }
        out.sort_by_key(|k| k.added);
        Ok(out)
    }

    /// Removes one of the user's keys by its id or fingerprint; `false` if none.
    pub async fn delete_ssh_key(&self, user_id: &UserId, id_or_fingerprint: &str) -> Result<bool> {
        self.up_to_date().await?;
        let n = {
            self.remove_where::<SshKey>(&self.ssh_keys, Unreadable::Keep, |k| {
                &k.user_id == user_id
                    && (k.id == id_or_fingerprint || k.fingerprint == id_or_fingerprint)
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

    fn key(user: &UserId, fp: &str) -> SshKey {
        SshKey {
            id: format!("id-{fp}"),
            user_id: user.clone(),
            fingerprint: fp.to_owned(),
            public_key: format!("ssh-ed25519 {fp}"),
            name: "laptop".into(),
            added: 0,
        }
    }

    #[tokio::test]
    async fn keys_are_unique_across_users_removed_by_id_or_fingerprint_and_with_their_user() {
        let (_d, s) = store();
        let a = s.create_user("alice", None, None).await.unwrap();
        let b = s.create_user("bob", None, None).await.unwrap();
        s.add_ssh_key(&key(&a.id, "SHA256:one")).await.unwrap();
        s.add_ssh_key(&key(&a.id, "SHA256:two")).await.unwrap();
        assert!(matches!(
            s.add_ssh_key(&key(&b.id, "SHA256:one")).await,
            Err(StoreError::Conflict {
                what: "SSH key",
                ..
            })
        ));
        assert_eq!(s.ssh_key("SHA256:one").unwrap().unwrap().user_id, a.id);
        assert!(
            !s.delete_ssh_key(&b.id, "SHA256:one").await.unwrap(),
            "only the owner's"
        );
        assert!(s.delete_ssh_key(&a.id, "id-SHA256:one").await.unwrap());
        assert!(s.ssh_key("SHA256:one").unwrap().is_none());
        s.add_ssh_key(&key(&b.id, "SHA256:one")).await.unwrap();
        assert_eq!(s.ssh_keys_of(&a.id).unwrap().len(), 1);
        s.delete_user(&a, false).await.unwrap();
        assert!(
            s.ssh_key("SHA256:two").unwrap().is_none(),
            "gone with alice"
        );
        assert!(s.ssh_key("SHA256:one").unwrap().is_some(), "bob's stays");
    }
}
