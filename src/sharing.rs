//! Sharing: an owner (or an admin) lets another user open the owner's environment,
//! optionally read-only. forwardAuth tells the container which kind of access the
//! caller has (`X-Spawngate-Access: owner | shared | read-only`); enforcing
//! read-only is the app's job, as only it knows what "writing" means.

use serde::Serialize;

use crate::environments::Environments;
use crate::error::{Error, Result};
use crate::store::{Env, Share, Store, User};
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
    /// `caller`'s access to the environment `target`, if any.
    pub fn of(caller: &User, target: &Env) -> Option<Access> {
        let owner = target.owner();
        // A disabled user's environment is closed to everyone, grantees included.
        if owner.disabled {
            return None;
        }
        if caller.id == owner.id {
            return Some(Access::Owner);
        }
        let share = target
            .shared_with()
            .iter()
            .find(|s| s.user_id == caller.id)?;
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
    pub environment: String,
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

    /// The grants on `env` (users deleted since are left out).
    pub fn shares_of(&self, env: &Env) -> Vec<ShareView> {
        let directory = self.store.snapshot();
        env.shared_with()
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
            .flat_map(Env::all_of)
            .filter_map(|env| {
                let share = env.shared_with().iter().find(|s| s.user_id == user.id)?;
                Some(SharedWithMe {
                    owner: env.owner().name.clone(),
                    environment: env.name().to_owned(),
                    url: self.environments.link(&env),
                    read_only: share.read_only,
                })
            })
            .collect()
    }

    /// Grants (or changes) `grantee`'s access to the environment `env`.
    pub async fn share(
        &self,
        actor: &str,
        env: &Env,
        grantee: &str,
        read_only: bool,
    ) -> Result<Vec<ShareView>> {
        let owner = env.owner();
        let profile = self.environments.lifecycle().profile(env);
        if read_only && profile.app_auth != crate::config::AppAuth::None {
            return Err(Error::Invalid(format!(
                "the profile '{}' signs everyone into its app with the owner's token, so it cannot enforce read-only: share it fully or not at all",
                profile.name
            )));
        }
        let grantee = self.user_named(grantee).ok_or(Error::NotFound("user"))?;
        if grantee.id == owner.id {
            return Err(Error::Invalid(
                "an environment is always open to its owner".into(),
            ));
        }
        let updated = self
            .store
            .modify_user(&owner.id, |u| {
                let shares = shares_in(u, env)?;
                match shares.iter_mut().find(|s| s.user_id == grantee.id) {
                    Some(existing) => existing.read_only = read_only,
                    None => {
                        if shares.len() >= MAX_SHARES {
                            return Err(Error::Conflict(format!(
                                "an environment can be shared with at most {MAX_SHARES} users"
                            )));
                        }
                        shares.push(Share {
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
            &env.audit_name(),
            Some(format!("{} ({mode})", grantee.name)),
        );
        Ok(self.shares_after(updated, env))
    }

    /// Takes `grantee`'s access away; their next request is refused.
    pub async fn unshare(&self, actor: &str, env: &Env, grantee: &str) -> Result<Vec<ShareView>> {
        let grantee = self.user_named(grantee).ok_or(Error::NotFound("share"))?;
        let updated = self
            .store
            .modify_user(&env.owner().id, |u| {
                let shares = shares_in(u, env)?;
                let before = shares.len();
                shares.retain(|s| s.user_id != grantee.id);
                if shares.len() == before {
                    return Err(Error::NotFound("share"));
                }
                Ok(())
            })
            .await??;
        self.store.audit(
            actor,
            "share.revoke",
            &env.audit_name(),
            Some(grantee.name.clone()),
        );
        Ok(self.shares_after(updated, env))
    }

    /// The grants on `env` as the stored `owner` now has them.
    fn shares_after(&self, owner: User, env: &Env) -> Vec<ShareView> {
        match Env::at_slug(std::sync::Arc::new(owner), env.slug()) {
            Some(now) => self.shares_of(&now),
            None => Vec::new(),
        }
    }

    /// A user by exact name (grantees are named, never given by slug).
    fn user_named(&self, name: &str) -> Option<std::sync::Arc<User>> {
        self.store.snapshot().by_name(name).cloned()
    }
}

/// The shares of `env` inside the stored record `u` (gone if the environment
/// was deleted meanwhile).
fn shares_in<'a>(u: &'a mut User, env: &Env) -> Result<&'a mut Vec<Share>> {
    let at = u
        .environment_at(env.slug())
        .ok_or(Error::NotFound("environment"))?;
    u.shares_mut(at).ok_or(Error::NotFound("environment"))
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
            profile: None,
            environments: Vec::new(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn access_is_owner_shared_read_only_or_none() {
        let share = |id: &str, read_only| Share {
            user_id: UserId::from_stored(id.into()),
            read_only,
            granted: 0,
        };
        let env = |u: User| Env::default_of(std::sync::Arc::new(u));
        let owner = user("o", vec![share("w", false), share("r", true)]);
        let owned = env(owner.clone());
        assert_eq!(Access::of(&owner, &owned), Some(Access::Owner));
        assert_eq!(Access::of(&user("w", vec![]), &owned), Some(Access::Shared));
        assert_eq!(
            Access::of(&user("r", vec![]), &owned),
            Some(Access::ReadOnly)
        );
        assert_eq!(Access::of(&user("x", vec![]), &owned), None);
        // Sharing is not symmetric.
        assert_eq!(Access::of(&owner, &env(user("w", vec![]))), None);
    }
}
