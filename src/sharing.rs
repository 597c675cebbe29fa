//! Sharing: an owner (or an admin) lets another user open the owner's environment,
//! optionally read-only. forwardAuth tells the container which kind of access the
//! caller has (`X-Spawngate-Access: owner | shared | read-only`); enforcing
//! read-only is the app's job, as only it knows what "writing" means.

use serde::Serialize;

use crate::environments::Environments;
use crate::error::{Error, Result};
use crate::store::{Share, Store, User};
use crate::time::{rfc3339, unix_now};

/// Most users one environment can be shared with.
pub const MAX_SHARES: usize = 100;

/// What a caller may do at a slug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Owner,
    Shared,
    ReadOnly,
}

impl Access {
    /// `caller`'s access to `target`'s environment, if any.
    pub fn of(caller: &User, target: &User) -> Option<Access> {
        // A disabled user's environment is closed to everyone, grantees included.
        if target.disabled {
            return None;
        }
        if caller.id == target.id {
            return Some(Access::Owner);
        }
        let share = target.shared_with.iter().find(|s| s.user_id == caller.id)?;
        Some(if share.read_only {
            Access::ReadOnly
        } else {
            Access::Shared
        })
    }

    pub fn header_value(self) -> &'static str {
        match self {
            Access::Owner => "owner",
            Access::Shared => "shared",
            Access::ReadOnly => "read-only",
        }
    }
}

/// One grant as the API shows it.
#[derive(Debug, Serialize)]
pub struct ShareView {
    pub user: String,
    pub read_only: bool,
    pub granted: String,
}

/// An environment shared with the caller.
#[derive(Debug, Serialize)]
pub struct SharedWithMe {
    pub owner: String,
    pub url: String,
    pub read_only: bool,
}

/// Grants on users' environments.
#[derive(Clone)]
pub struct Sharing {
    store: Store,
    environments: Environments,
}

impl Sharing {
    pub fn new(store: Store, environments: Environments) -> Sharing {
        Sharing {
            store,
            environments,
        }
    }

    /// The grants on `owner`'s environment (users deleted since are left out).
    pub fn shares_of(&self, owner: &User) -> Vec<ShareView> {
        let directory = self.store.snapshot();
        owner
            .shared_with
            .iter()
            .filter_map(|s| {
                Some(ShareView {
                    user: directory.by_id(&s.user_id)?.name.clone(),
                    read_only: s.read_only,
                    granted: rfc3339(s.granted),
                })
            })
            .collect()
    }

    /// The environments other users shared with `user`.
    pub fn shared_with(&self, user: &User) -> Vec<SharedWithMe> {
        let mut owners = self.store.snapshot().owners_sharing_with(&user.id);
        owners.sort_by(|a, b| a.name.cmp(&b.name));
        owners
            .iter()
            .filter(|owner| !owner.disabled)
            .filter_map(|owner| {
                let share = owner.shared_with.iter().find(|s| s.user_id == user.id)?;
                Some(SharedWithMe {
                    owner: owner.name.clone(),
                    url: self.environments.link(owner),
                    read_only: share.read_only,
                })
            })
            .collect()
    }

    /// Grants (or changes) `grantee`'s access to `owner`'s environment.
    pub async fn share(
        &self,
        actor: &str,
        owner: &User,
        grantee: &str,
        read_only: bool,
    ) -> Result<Vec<ShareView>> {
        let grantee = self.user_named(grantee).ok_or(Error::NotFound("user"))?;
        if grantee.id == owner.id {
            return Err(Error::Invalid(
                "an environment is always open to its owner".into(),
            ));
        }
        let updated = self
            .store
            .modify_user(&owner.id, |u| {
                match u.shared_with.iter_mut().find(|s| s.user_id == grantee.id) {
                    Some(existing) => existing.read_only = read_only,
                    None => {
                        if u.shared_with.len() >= MAX_SHARES {
                            return Err(Error::Conflict(format!(
                                "an environment can be shared with at most {MAX_SHARES} users"
                            )));
                        }
                        u.shared_with.push(Share {
                            user_id: grantee.id.clone(),
                            read_only,
                            granted: unix_now(),
                        });
                    }
                }
                Ok(())
            })
            .await??;
        let mode = if read_only { "read-only" } else { "full" };
        self.store.audit(
            actor,
            "share.grant",
            &owner.name,
            Some(format!("{} ({mode})", grantee.name)),
        );
        Ok(self.shares_of(&updated))
    }

    /// Takes `grantee`'s access away; their next request is refused.
    pub async fn unshare(
        &self,
        actor: &str,
        owner: &User,
        grantee: &str,
    ) -> Result<Vec<ShareView>> {
        let grantee = self.user_named(grantee).ok_or(Error::NotFound("share"))?;
        let updated = self
            .store
            .modify_user(&owner.id, |u| {
                let before = u.shared_with.len();
                u.shared_with.retain(|s| s.user_id != grantee.id);
                if u.shared_with.len() == before {
                    return Err(Error::NotFound("share"));
                }
                Ok(())
            })
            .await??;
        self.store.audit(
            actor,
            "share.revoke",
            &owner.name,
            Some(grantee.name.clone()),
        );
        Ok(self.shares_of(&updated))
    }

    /// A user by exact name (grantees are named, never given by slug).
    fn user_named(&self, name: &str) -> Option<std::sync::Arc<User>> {
        self.store.snapshot().by_name(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Slug, UserId};

    fn user(id: &str, shares: Vec<Share>) -> User {
        User {
            id: UserId::from_stored(id.into()),
            name: id.into(),
            email: None,
            slug: Slug::generate(),
            created: 0,
            disabled: false,
            host_port: None,
            overrides: Default::default(),
            password_hash: None,
            shared_with: shares,
            credential_generation: 0,
            admin: false,
        }
    }

    #[test]
    fn access_is_owner_shared_read_only_or_none() {
        let share = |id: &str, read_only| Share {
            user_id: UserId::from_stored(id.into()),
            read_only,
            granted: 0,
        };
        let owner = user("o", vec![share("w", false), share("r", true)]);
        assert_eq!(Access::of(&owner, &owner), Some(Access::Owner));
        assert_eq!(Access::of(&user("w", vec![]), &owner), Some(Access::Shared));
        assert_eq!(
            Access::of(&user("r", vec![]), &owner),
            Some(Access::ReadOnly)
        );
        assert_eq!(Access::of(&user("x", vec![]), &owner), None);
        // Sharing is not symmetric.
        assert_eq!(Access::of(&owner, &user("w", vec![])), None);
    }
}
