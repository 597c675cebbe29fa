//! Accounts: users, their credentials and their settings. Every change is
//! validated, written to the store and audited here, whoever asked (the admin
//! API, the CLI, a user for themselves, an identity provider's auto-create).

mod provisioning;
pub mod ssh_keys;
mod tokens;
pub use tokens::{NewToken, SessionView, TokenView};
pub mod validate;

use std::sync::Arc;

use serde::Serialize;

pub use provisioning::{MappingError, name_from_email};

use crate::config::{Config, NetworkMode};
use crate::environments::Environments;
use crate::error::{Error, Result};
use crate::sharing::Sharing;
use crate::store::{Env, Overrides, Store, User};
use crate::tasks::Tasks;
use crate::time::rfc3339;

/// A user as the API shows it.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub slug: String,
    pub url: String,
    pub created: String,
    pub disabled: bool,
    /// May use the admin page and API with their own session.
    pub admin: bool,
    pub overrides: Overrides,
    /// Grants on the default environment.
    pub shared_with: Vec<crate::sharing::ShareView>,
    /// The default environment's profile.
    pub profile: String,
    /// For profiles restricted to groups.
    pub groups: Vec<String>,
    /// Every environment of the user, the default one first.
    pub environments: Vec<EnvironmentSummary>,
}

/// One of a user's environments in a [`UserView`].
#[derive(Debug, Serialize)]
pub struct EnvironmentSummary {
    pub name: String,
    pub profile: String,
    pub slug: String,
    pub url: String,
    pub shared_with: Vec<crate::sharing::ShareView>,
}

/// `PUT /_spawngate/api/users/<name>/overrides`: replaces the user's overrides.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverridesRequest {
    #[serde(default)]
    pub image: Option<String>,
    /// A size such as `256m` or `2g`.
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct LoginLink {
    pub user: String,
    pub url: String,
    pub expires: String,
}

#[derive(Clone)]
pub struct Accounts {
    config: Arc<Config>,
    store: Store,
    environments: Environments,
    sharing: Sharing,
    tasks: Tasks,
}

impl Accounts {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        environments: Environments,
        sharing: Sharing,
        tasks: Tasks,
    ) -> Accounts {
        Accounts {
            config,
            store,
            environments,
            sharing,
            tasks,
        }
    }

    pub fn user_view(&self, user: &User) -> UserView {
        let owner = Arc::new(user.clone());
        let default = Env::default_of(owner.clone());
        UserView {
            id: user.id.to_string(),
            name: user.name.clone(),
            email: user.email.clone(),
            slug: user.slug.to_string(),
            url: self.environments.url(&default),
            created: rfc3339(user.created),
            disabled: user.disabled,
            admin: user.admin,
            overrides: user.overrides.clone(),
            shared_with: self.sharing.shares_of(&default),
            profile: self
                .config
                .profiles
                .resolve(user.profile.as_deref())
                .name
                .clone(),
            groups: user.groups.clone(),
            environments: Env::all_of(&owner)
                .map(|env| EnvironmentSummary {
                    name: env.name().to_owned(),
                    profile: self.config.profiles.resolve(env.profile()).name.clone(),
                    slug: env.slug().to_string(),
                    url: self.environments.url(&env),
                    shared_with: self.sharing.shares_of(&env),
                })
                .collect(),
        }
    }

    pub fn list_users(&self) -> Vec<UserView> {
        self.store
            .snapshot()
            .users()
            .iter()
            .map(|u| self.user_view(u))
            .collect()
    }

    /// Finds a user by name, or by slug (`abc…` or `u-abc…`).
    pub fn find_user(&self, key: &str) -> Result<Arc<User>> {
        let dir = self.store.snapshot();
        dir.by_name(key)
            .or_else(|| {
                crate::ids::Slug::parse(key)
                    .or_else(|| crate::ids::Slug::parse_segment(key))
                    .and_then(|s| dir.by_slug(&s))
            })
            .cloned()
            .ok_or(Error::NotFound("user"))
    }

    pub async fn add_user(&self, actor: &str, name: &str, email: Option<&str>) -> Result<UserView> {
        self.add_user_with(actor, name, email, false).await
    }

    /// [`Accounts::add_user`], as an admin user when `admin`.
    pub async fn add_user_with(
        &self,
        actor: &str,
        name: &str,
        email: Option<&str>,
        admin: bool,
    ) -> Result<UserView> {
        validate::name(name)?;
        // Stored lower-case: uniqueness and email login ignore case.
        let email = email.map(|e| e.trim().to_ascii_lowercase());
        let email = email.as_deref();
        if let Some(email) = email {
            validate::email(email)?;
        }
        let port_range =
            (self.config.docker.mode == NetworkMode::Host).then_some(self.config.docker.host_ports);
        let mut user = self.store.create_user(name, email, port_range).await?;
        // A second write: a crash between the two leaves an ordinary user, never
        // an admin nobody asked for.
        if admin {
            user = self
                .store
                .modify_user(&user.id, |u| {
                    u.admin = true;
                    Ok::<_, Error>(())
                })
                .await??;
        }
        let user = Arc::new(user);
        let role = if admin { ", admin" } else { "" };
        self.store.audit(
            actor,
            "user.create",
            &user.name,
            Some(format!("slug {}{role}", user.slug)),
        );
        self.publish("user.created", &user, actor);
        // With a warm pool the first request takes a running spare instead.
        if self.config.lifecycle.precreate && self.config.pool_size == 0 {
            self.environments
                .lifecycle()
                .precreate(&Env::default_of(user.clone()));
        }
        Ok(self.user_view(&user))
    }

    /// Deletes the user with their container, volume (unless configured to keep
    /// it), sessions and tokens.
    pub async fn remove_user(&self, actor: &str, key: &str) -> Result<()> {
        let user = self.find_user(key)?;
        // The store first, in one transaction (the user, sessions, tokens, the
        // grants to them, and a tombstone): from here no request can start the
        // container again, and a crash leaves either the whole user or none.
        let keep = self.config.lifecycle.keep_volume_on_delete;
        self.store.delete_user(&user, keep).await?;
        // Then Docker. Cut short (a crash, Docker unreachable), the tombstone lets
        // reconcile finish the removal: at the next start, or once Docker is back.
        let mut removal = Ok(());
        for env in Env::all_of(&user) {
            if let Err(e) = self.environments.lifecycle().remove(&env, keep).await {
                removal = Err(e);
            }
        }
        let detail = match removal {
            Ok(()) if keep => "volume kept".to_owned(),
            Ok(()) => "containers and volumes removed".to_owned(),
            Err(e) => {
                tracing::warn!(user = %user.name, error = %e.detail(), "user deleted, but removing a container failed; reconcile removes it");
                format!("container removal pending: {}", e.detail())
            }
        };
        self.store
            .audit(actor, "user.delete", &user.name, Some(detail));
        self.publish("user.deleted", &user, actor);
        Ok(())
    }

    /// An operator event about `user`, naming who acted.
    fn publish(&self, kind: &'static str, user: &User, actor: &str) {
        self.environments.lifecycle().events().publish(
            kind,
            crate::events::Subject {
                user: &user.name,
                slug: Some(user.slug.as_str()),
            },
            None,
            Some(format!("by {actor}")),
        );
    }

    /// Sets a user's container overrides within the admin's bounds. They apply at
    /// the container's next start (a stopped container is recreated, same volume).
    pub async fn set_overrides(
        &self,
        actor: &str,
        key: &str,
        req: OverridesRequest,
    ) -> Result<UserView> {
        let user = self.find_user(key)?;
        let overrides = validate::overrides(&self.config, req)?;
        let updated = self
            .store
            .modify_user(&user.id, |u| {
                u.overrides = overrides.clone();
                Ok::<_, Error>(())
            })
            .await??;
        self.store.audit(
            actor,
            "user.overrides",
            &user.name,
            Some(serde_json::to_string(&updated.overrides).unwrap_or_default()),
        );
        Ok(self.user_view(&updated))
    }

    /// Sets a user's groups (for profiles' `groups`) and the profile of their
    /// default environment; each `None` stays as it is. The profile applies at
    /// the environment's next start (a stopped container is recreated on the
    /// same volume).
    pub async fn set_groups_and_profile(
        &self,
        actor: &str,
        key: &str,
        groups: Option<Vec<String>>,
        profile: Option<String>,
    ) -> Result<UserView> {
        let user = self.find_user(key)?;
        if let Some(groups) = &groups
            && let Some(bad) = groups.iter().find(|g| !crate::config::is_profile_name(g))
        {
            return Err(Error::Invalid(format!(
                "{bad:?} cannot name a group: use 1-32 of a-z, 0-9, - and _, starting with a letter"
            )));
        }
        let profile = match profile.as_deref() {
            None => None,
            Some(p) if self.config.profiles.get(p).is_none() => {
                return Err(Error::Invalid(format!("there is no profile {p:?}")));
            }
            Some(crate::config::DEFAULT_PROFILE) => Some(None),
            Some(p) => Some(Some(p.to_owned())),
        };
        let updated = self
            .store
            .modify_user(&user.id, |u| {
                if let Some(groups) = &groups {
                    u.groups = groups.clone();
                }
                if let Some(profile) = &profile {
                    u.profile = profile.clone();
                }
                Ok::<_, Error>(())
            })
            .await??;
        // The provider serves the new profile's route at once; the container
        // must follow: stopped now, its next request starts the new profile.
        if profile.is_some() && updated.profile != user.profile {
            let lifecycle = self.environments.lifecycle().clone();
            let env = Env::default_of(Arc::new(updated.clone()));
            self.tasks.spawn(async move {
                if let Err(e) = lifecycle.stop(&env).await {
                    tracing::warn!(user = %env.owner().name, error = %e, "cannot stop an environment whose profile changed");
                }
            });
        }
        self.store.audit(
            actor,
            "user.update",
            &user.name,
            Some(format!(
                "groups [{}], profile {}",
                updated.groups.join(", "),
                updated
                    .profile
                    .as_deref()
                    .unwrap_or(crate::config::DEFAULT_PROFILE)
            )),
        );
        Ok(self.user_view(&updated))
    }

    /// Disables (or enables) a user. Disabling answers "something is wrong": every
    /// credential the user had is revoked (sessions, app-host sessions and hand-off
    /// codes, unused login links, personal API tokens), so a stolen one cannot come
    /// back with a later enable; only a new sign-in works then.
    pub async fn set_disabled(&self, actor: &str, key: &str, disabled: bool) -> Result<UserView> {
        let user = self.find_user(key)?;
        let updated = self
            .store
            .modify_user(&user.id, |u| {
                u.disabled = disabled;
                if disabled {
                    // In the same write as the flag: whatever credential survives
                    // the deletion below (a crash, a sign-in racing it) is refused.
                    u.credential_generation = u.credential_generation.wrapping_add(1);
                }
                Ok::<_, Error>(())
            })
            .await??;
        let mut detail = None;
        if disabled {
            // After the flag: from here on no new credential is issued to the user.
            let (sessions, links, tokens) = self.store.delete_credentials_of(&user.id).await?;
            detail = Some(format!(
                "revoked {sessions} sessions, {links} login links, {tokens} API tokens"
            ));
            // Nothing can reach it any more: free its resources now rather than at
            // the idle timeout. In the background, as an app may take its time to exit.
            let lifecycle = self.environments.lifecycle().clone();
            let stopped = Arc::new(updated.clone());
            self.tasks.spawn(async move {
                for env in Env::all_of(&stopped) {
                    if let Err(e) = lifecycle.stop(&env).await {
                        tracing::warn!(user = %stopped.name, environment = env.name(), error = %e, "cannot stop a disabled user's container");
                    }
                }
            });
        }
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        self.store.audit(actor, action, &user.name, detail);
        let kind = if disabled {
            "user.disabled"
        } else {
            "user.enabled"
        };
        self.publish(kind, &user, actor);
        Ok(self.user_view(&updated))
    }

    /// Makes a user an admin (the admin page and API with their own session) or
    /// takes that away. Taking it away acts on the very next request: the admin
    /// API reads the flag from the current directory each time.
    pub async fn set_admin(&self, actor: &str, key: &str, admin: bool) -> Result<UserView> {
        let user = self.find_user(key)?;
        let updated = if user.admin == admin {
            (*user).clone()
        } else {
            self.store
                .modify_user(&user.id, |u| {
                    u.admin = admin;
                    Ok::<_, Error>(())
                })
                .await??
        };
        let action = if admin {
            "user.admin.grant"
        } else {
            "user.admin.revoke"
        };
        self.store.audit(actor, action, &updated.name, None);
        Ok(self.user_view(&updated))
    }

    /// Sets (or with `None` removes) a user's password; argon2id at rest. With
    /// `end_sessions` every session of the user ends: an admin (re)setting a
    /// password is often answering a compromise.
    pub async fn set_password(
        &self,
        actor: &str,
        key: &str,
        password: Option<&str>,
        end_sessions: bool,
    ) -> Result<()> {
        let user = self.find_user(key)?;
        let hash = match password {
            None => None,
            Some(p) if p.chars().count() < crate::auth::password::MIN_LEN => {
                return Err(Error::Invalid(format!(
                    "passwords need at least {} characters",
                    crate::auth::password::MIN_LEN
                )));
            }
            Some(p) => {
                let p = p.to_owned();
                let hashed = tokio::task::spawn_blocking(move || crate::auth::password::hash(&p))
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| Error::Internal("password hashing failed".into()))?;
                Some(hashed)
            }
        };
        // Applied to the stored record (hashing takes a while): a change made
        // meanwhile, such as a disable, stays.
        self.store
            .modify_user(&user.id, |u| {
                u.password_hash = hash.clone();
                Ok::<_, Error>(())
            })
            .await??;
        if end_sessions {
            self.store.delete_sessions_of(&user.id).await?;
        }
        let action = if password.is_some() {
            "user.password.set"
        } else {
            "user.password.clear"
        };
        self.store.audit(actor, action, &user.name, None);
        Ok(())
    }

    /// Ends every session of a user.
    pub async fn revoke_sessions(&self, actor: &str, key: &str) -> Result<usize> {
        let user = self.find_user(key)?;
        let n = self.store.delete_sessions_of(&user.id).await?;
        self.store.audit(
            actor,
            "sessions.revoke",
            &user.name,
            Some(format!("{n} sessions")),
        );
        Ok(n)
    }

    /// A user by exact name (grantees are named, never given by slug).
    pub fn user_named(&self, name: &str) -> Option<Arc<User>> {
        self.store.snapshot().by_name(name).cloned()
    }
}
