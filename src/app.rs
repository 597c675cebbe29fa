//! The assembled application: config, store, lifecycle, provider and session codec,
//! plus the admin operations shared by the HTTP API and the CLI.

use std::sync::Arc;

use serde::Serialize;

use crate::auth::SessionCodec;
use crate::config::{Config, NetworkMode};
use crate::error::ApiError;
use crate::lifecycle::{ContainerStatus, Lifecycle, Readiness};
use crate::provider::Provider;
use crate::runtime::{DockerRuntime, Runtime, RuntimeError};
use crate::store::{Store, StoreError, User};
use crate::time::rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub lifecycle: Arc<Lifecycle>,
    pub provider: Provider,
    pub sessions: SessionCodec,
}

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
}

#[derive(Debug, Serialize)]
pub struct LoginLink {
    pub user: String,
    pub url: String,
    pub expires: String,
}

impl App {
    /// Opens the store and connects to Docker. Must run inside a tokio runtime.
    pub fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let runtime = DockerRuntime::connect(config.docker.host.as_deref(), config.docker.mode)?;
        Self::with_runtime(config, Arc::new(runtime))
    }

    pub fn with_runtime(config: Config, runtime: Arc<dyn Runtime>) -> Result<Arc<App>, BuildError> {
        let config = Arc::new(config);
        let store = Store::open(&config.data_dir)?;
        let sessions = SessionCodec::new(&store.session_key()?);
        let provider = Provider::start(config.clone(), store.directory());
        let lifecycle = Lifecycle::new(runtime, store.clone(), config.clone());
        Ok(Arc::new(App {
            config,
            store,
            lifecycle,
            provider,
            sessions,
        }))
    }

    pub fn user_view(&self, user: &User) -> UserView {
        UserView {
            id: user.id.to_string(),
            name: user.name.clone(),
            email: user.email.clone(),
            slug: user.slug.to_string(),
            url: format!(
                "{}{}/",
                self.config.public_url.origin,
                user.slug.base_path()
            ),
            created: rfc3339(user.created),
            disabled: user.disabled,
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
    pub fn find_user(&self, key: &str) -> Result<Arc<User>, ApiError> {
        let dir = self.store.snapshot();
        dir.by_name(key)
            .or_else(|| {
                crate::ids::Slug::parse(key)
                    .or_else(|| crate::ids::Slug::parse_segment(key))
                    .and_then(|s| dir.by_slug(&s))
            })
            .cloned()
            .ok_or(ApiError::NotFound("user"))
    }

    pub async fn add_user(
        &self,
        actor: &str,
        name: &str,
        email: Option<&str>,
    ) -> Result<UserView, ApiError> {
        validate_name(name)?;
        if let Some(email) = email {
            validate_email(email)?;
        }
        let port_range =
            (self.config.docker.mode == NetworkMode::Host).then_some(self.config.docker.host_ports);
        let user = Arc::new(self.store.create_user(name, email, port_range).await?);
        self.store.audit(
            actor,
            "user.create",
            &user.name,
            Some(format!("slug {}", user.slug)),
        );
        if self.config.lifecycle.precreate {
            self.lifecycle.precreate(&user);
        }
        Ok(self.user_view(&user))
    }

    /// Deletes the user with their container, volume (unless configured to keep
    /// it), sessions and tokens.
    pub async fn remove_user(&self, actor: &str, key: &str) -> Result<(), ApiError> {
        let user = self.find_user(key)?;
        // Container first: if Docker is down the user stays, and the call can be
        // retried, instead of leaving an orphaned container behind.
        let keep = self.config.lifecycle.keep_volume_on_delete;
        self.lifecycle.remove(&user, keep).await?;
        self.store.delete_user(&user).await?;
        let detail = if keep {
            "volume kept"
        } else {
            "container and volume removed"
        };
        self.store
            .audit(actor, "user.delete", &user.name, Some(detail.into()));
        Ok(())
    }

    pub async fn login_link(&self, key: &str) -> Result<LoginLink, ApiError> {
        let user = self.find_user(key)?;
        if user.disabled {
            return Err(ApiError::BadRequest(format!(
                "user '{}' is disabled",
                user.name
            )));
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

    pub async fn container_status(&self, key: &str) -> Result<ContainerStatus, ApiError> {
        let user = self.find_user(key)?;
        Ok(self.lifecycle.status(&user).await?)
    }

    pub async fn start_container(
        &self,
        actor: &str,
        key: &str,
    ) -> Result<ContainerStatus, ApiError> {
        let user = self.find_user(key)?;
        self.store.audit(actor, "container.start", &user.name, None);
        self.await_ready(&user, self.lifecycle.start(&user).await)
            .await
    }

    pub async fn restart_container(
        &self,
        actor: &str,
        key: &str,
    ) -> Result<ContainerStatus, ApiError> {
        let user = self.find_user(key)?;
        self.store
            .audit(actor, "container.restart", &user.name, None);
        self.await_ready(&user, self.lifecycle.restart(&user).await)
            .await
    }

    async fn await_ready(
        &self,
        user: &Arc<User>,
        readiness: Readiness,
    ) -> Result<ContainerStatus, ApiError> {
        match readiness {
            Readiness::Ready => {}
            Readiness::Failed(e) => return Err(e.into()),
            Readiness::Pending => {
                return Err(ApiError::Unavailable(format!(
                    "container of '{}' did not become ready in time",
                    user.name
                )));
            }
        }
        Ok(self.lifecycle.status(user).await?)
    }

    pub async fn stop_container(
        &self,
        actor: &str,
        key: &str,
    ) -> Result<ContainerStatus, ApiError> {
        let user = self.find_user(key)?;
        self.store.audit(actor, "container.stop", &user.name, None);
        self.lifecycle.stop(&user).await?;
        Ok(self.lifecycle.status(&user).await?)
    }

    /// Every user's container status (users without a container included).
    pub async fn list_containers(&self) -> Result<Vec<ContainerStatus>, ApiError> {
        let mut out = Vec::new();
        for user in self.store.snapshot().users() {
            out.push(self.lifecycle.status(&user).await?);
        }
        Ok(out)
    }

    pub async fn container_logs(&self, key: &str, tail: usize) -> Result<Vec<String>, ApiError> {
        let user = self.find_user(key)?;
        Ok(self.lifecycle.logs(&user, tail.min(10_000)).await?)
    }
}

/// User names: lowercase letters, digits, `.`, `_`, `-`; 1–64 characters, starting
/// with a letter or digit. They appear in headers and labels, so stay plain ASCII.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid user name {name:?}: use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

fn validate_email(email: &str) -> Result<(), ApiError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid email address {email:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_emails() {
        for ok in ["alice", "a", "bob-2", "x.y_z", "0day"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", ".x", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_email("a@b.org").is_ok());
        for bad in ["a", "@b.org", "a@b", "a b@c.org", "a@b@c.org"] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }
}
