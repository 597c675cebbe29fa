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
use crate::store::{Overrides, Store, StoreError, User};
use crate::time::rfc3339;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("email: {0}")]
    Mail(#[from] crate::mail::MailError),
    #[error("identity provider: {0}")]
    Identity(#[from] crate::outbound::OutboundError),
}

pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub lifecycle: Arc<Lifecycle>,
    pub provider: Provider,
    pub sessions: Arc<SessionCodec>,
    /// Who is calling (cookies and personal tokens); shares the codec above.
    pub identities: crate::auth::Identities,
    /// Present when `email.enabled`.
    pub mailer: Option<crate::mail::Mailer>,
    pub limit_per_email: crate::auth::ratelimit::RateLimiter,
    pub limit_per_ip: crate::auth::ratelimit::RateLimiter,
    /// Wrong passwords per account.
    pub limit_password_failures: crate::auth::ratelimit::RateLimiter,
    /// Present when `[jwt]` is enabled.
    pub external_jwt: Option<crate::auth::external::ExternalJwt>,
    /// Present when `[oidc]` is enabled.
    pub oidc: Option<crate::auth::oidc::OidcClient>,
    /// Subdomain mode's one-time codes (login host → app host).
    pub handoffs: crate::auth::handoff::HandoffCodes,
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
    pub overrides: Overrides,
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

impl App {
    /// Opens the store and connects to Docker. Must run inside a tokio runtime.
    pub fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let runtime = DockerRuntime::connect(&config.docker)?;
        Self::with_runtime(config, Arc::new(runtime))
    }

    pub fn with_runtime(config: Config, runtime: Arc<dyn Runtime>) -> Result<Arc<App>, BuildError> {
        let config = Arc::new(config);
        let store = Store::open(&config.data_dir)?;
        let session_key = store.session_key()?;
        let sessions = Arc::new(SessionCodec::new(&session_key));
        let identities =
            crate::auth::Identities::new(store.clone(), sessions.clone(), config.clone());
        let provider = Provider::start(config.clone(), store.directory());
        let lifecycle = Lifecycle::new(
            runtime,
            store.clone(),
            config.clone(),
            store.container_key()?,
        );
        let mailer = config
            .email
            .as_ref()
            .map(crate::mail::Mailer::new)
            .transpose()?;
        let external_jwt = config
            .jwt
            .as_ref()
            .map(crate::auth::external::ExternalJwt::new)
            .transpose()?;
        let oidc = config
            .oidc
            .clone()
            .map(|o| {
                crate::auth::oidc::OidcClient::new(
                    o,
                    &config.public_url.origin,
                    session_key.clone(),
                )
            })
            .transpose()?;
        Ok(Arc::new(App {
            external_jwt,
            oidc,
            handoffs: Default::default(),
            limit_per_email: crate::auth::ratelimit::RateLimiter::per_hour(
                config.login.per_email_per_hour,
            ),
            limit_per_ip: crate::auth::ratelimit::RateLimiter::per_hour(
                config.login.per_ip_per_hour,
            ),
            limit_password_failures: crate::auth::ratelimit::RateLimiter::per_hour(
                config.login.password_failures_per_hour,
            ),
            mailer,
            config,
            store,
            lifecycle,
            provider,
            sessions,
            identities,
        }))
    }

    /// The public URL of `user`'s environment.
    pub fn environment_url(&self, user: &User) -> String {
        match &self.config.apps {
            Some(apps) => format!("{}/", apps.origin(&user.slug)),
            None => format!(
                "{}{}/",
                self.config.public_url.origin,
                user.slug.base_path()
            ),
        }
    }

    /// A same-site link from the login host's pages to `user`'s environment (in
    /// subdomain mode through the hand-off, which gives the app host a session).
    pub fn environment_link(&self, user: &User) -> String {
        match &self.config.apps {
            Some(_) => format!("/_spawngate/handoff?slug={}&next=%2F", user.slug),
            None => format!("{}/", user.slug.base_path()),
        }
    }

    pub fn user_view(&self, user: &User) -> UserView {
        UserView {
            id: user.id.to_string(),
            name: user.name.clone(),
            email: user.email.clone(),
            slug: user.slug.to_string(),
            url: self.environment_url(user),
            created: rfc3339(user.created),
            disabled: user.disabled,
            overrides: user.overrides.clone(),
            shared_with: self.shares_of(user),
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
        // Stored lower-case: uniqueness and email login ignore case.
        let email = email.map(|e| e.trim().to_ascii_lowercase());
        let email = email.as_deref();
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
        // With a warm pool the first request takes a running spare instead.
        if self.config.lifecycle.precreate && self.config.pool_size == 0 {
            self.lifecycle.precreate(&user);
        }
        Ok(self.user_view(&user))
    }

    /// Deletes the user with their container, volume (unless configured to keep
    /// it), sessions and tokens.
    pub async fn remove_user(&self, actor: &str, key: &str) -> Result<(), ApiError> {
        let user = self.find_user(key)?;
        // The store first, in one transaction (the user, sessions, tokens, the
        // grants to them, and a tombstone): from here no request can start the
        // container again, and a crash leaves either the whole user or none.
        let keep = self.config.lifecycle.keep_volume_on_delete;
        self.store.delete_user(&user, keep).await?;
        // Then Docker. Cut short (a crash, Docker unreachable), the tombstone lets
        // reconcile finish the removal: at the next start, or once Docker is back.
        let detail = match self.lifecycle.remove(&user, keep).await {
            Ok(()) if keep => "volume kept".to_owned(),
            Ok(()) => "container and volume removed".to_owned(),
            Err(e) => {
                tracing::warn!(user = %user.name, error = %e.detail(), "user deleted, but removing the container failed; reconcile removes it");
                format!("container removal pending: {}", e.detail())
            }
        };
        self.store
            .audit(actor, "user.delete", &user.name, Some(detail));
        Ok(())
    }

    /// Sets a user's container overrides within the admin's bounds. They apply at
    /// the container's next start (a stopped container is recreated, same volume).
    pub async fn set_overrides(
        &self,
        actor: &str,
        key: &str,
        req: OverridesRequest,
    ) -> Result<UserView, ApiError> {
        let user = self.find_user(key)?;
        let overrides = validate_overrides(&self.config, req)?;
        let mut updated = (*user).clone();
        updated.overrides = overrides;
        self.store.update_user(&updated).await?;
        self.store.audit(
            actor,
            "user.overrides",
            &user.name,
            Some(serde_json::to_string(&updated.overrides).unwrap_or_default()),
        );
        Ok(self.user_view(&updated))
    }

    /// Disables (or enables) a user. Disabling answers "something is wrong": every
    /// credential the user had is revoked (sessions, app-host sessions and hand-off
    /// codes, unused login links, personal API tokens), so a stolen one cannot come
    /// back with a later enable; only a new sign-in works then.
    pub async fn set_disabled(
        &self,
        actor: &str,
        key: &str,
        disabled: bool,
    ) -> Result<UserView, ApiError> {
        let user = self.find_user(key)?;
        let mut updated = (*user).clone();
        updated.disabled = disabled;
        if disabled {
            // In the same write as the flag: whatever credential survives the
            // deletion below (a crash, a sign-in racing it) is refused anyway.
            updated.credential_generation = updated.credential_generation.wrapping_add(1);
        }
        self.store.update_user(&updated).await?;
        let mut detail = None;
        if disabled {
            // After the flag: from here on no new credential is issued to the user.
            let (sessions, links, tokens) = self.store.delete_credentials_of(&user.id).await?;
            detail = Some(format!(
                "revoked {sessions} sessions, {links} login links, {tokens} API tokens"
            ));
            // Nothing can reach it any more: free its resources now rather than at
            // the idle timeout. In the background, as an app may take its time to exit.
            let lifecycle = self.lifecycle.clone();
            let stopped = updated.clone();
            tokio::spawn(async move {
                if let Err(e) = lifecycle.stop(&stopped).await {
                    tracing::warn!(user = %stopped.name, error = %e, "cannot stop a disabled user's container");
                }
            });
        }
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        self.store.audit(actor, action, &user.name, detail);
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
    ) -> Result<(), ApiError> {
        let user = self.find_user(key)?;
        let hash = match password {
            None => None,
            Some(p) if p.chars().count() < crate::auth::password::MIN_LEN => {
                return Err(ApiError::BadRequest(format!(
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
                    .ok_or_else(|| ApiError::Internal("password hashing failed".into()))?;
                Some(hashed)
            }
        };
        let mut updated = (*user).clone();
        updated.password_hash = hash;
        self.store.update_user(&updated).await?;
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
    pub async fn revoke_sessions(&self, actor: &str, key: &str) -> Result<usize, ApiError> {
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

/// Environment keys that look like credentials: container env is readable by
/// anyone who can inspect the container, so secrets never go there.
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "PRIVATE",
    "CREDENTIAL",
    "API_KEY",
];

fn validate_overrides(
    config: &crate::config::Config,
    req: OverridesRequest,
) -> Result<Overrides, ApiError> {
    let limits = &config.limits;
    if let Some(image) = &req.image
        && *image != config.docker.image
        && !limits.allowed_images.contains(image)
    {
        return Err(ApiError::BadRequest(format!(
            "image {image:?} is not allowed (limits.allowed_images)"
        )));
    }
    let memory_bytes = match &req.memory {
        None => None,
        Some(m) => {
            let bytes = crate::config::parse_bytes(m)
                .filter(|b| *b >= 6 << 20)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "memory {m:?}: expected a size like 512m (at least 6m)"
                    ))
                })?;
            if bytes > limits.max_memory_bytes {
                return Err(ApiError::BadRequest(format!(
                    "memory {m:?} is above limits.max_memory"
                )));
            }
            Some(bytes)
        }
    };
    let nano_cpus = match req.cpus {
        None => None,
        Some(c) if c > 0.0 && (c * 1e9) as i64 <= limits.max_nano_cpus => Some((c * 1e9) as i64),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "cpus {c} must be above 0 and within limits.max_cpus"
            )));
        }
    };
    if req.env.len() > 64 {
        return Err(ApiError::BadRequest("at most 64 env entries".into()));
    }
    for (k, v) in &req.env {
        let upper = k.to_ascii_uppercase();
        let valid = !k.is_empty()
            && k.len() <= 128
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        if !valid || upper.starts_with("SPAWNGATE_") {
            return Err(ApiError::BadRequest(format!(
                "env key {k:?}: use [A-Za-z0-9_], not starting with a digit or SPAWNGATE_"
            )));
        }
        if SECRET_WORDS.iter().any(|w| upper.contains(w)) {
            return Err(ApiError::BadRequest(format!(
                "env key {k:?} looks like a credential: container environment is visible to anyone who can inspect the container, so secrets never go there"
            )));
        }
        if v.len() > 4096 || v.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "env value of {k:?} is too long or contains NUL"
            )));
        }
    }
    Ok(Overrides {
        image: req.image,
        memory_bytes,
        nano_cpus,
        env: req.env,
    })
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
    fn overrides_stay_within_bounds_and_env_carries_no_secrets() {
        let config = crate::config::Config::from_sources(
            "[limits]\nallowed_images = [\"other:1\"]\nmax_memory = \"1g\"\nmax_cpus = 2.0",
            Vec::new(),
        )
        .unwrap();
        let req = |image: Option<&str>,
                   memory: Option<&str>,
                   cpus: Option<f64>,
                   env: &[(&str, &str)]| OverridesRequest {
            image: image.map(str::to_owned),
            memory: memory.map(str::to_owned),
            cpus,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let ok = validate_overrides(
            &config,
            req(Some("other:1"), Some("256m"), Some(0.5), &[("LANG", "C")]),
        )
        .unwrap();
        assert_eq!(ok.memory_bytes, Some(256 << 20));
        assert_eq!(ok.nano_cpus, Some(500_000_000));
        assert!(
            validate_overrides(
                &config,
                req(Some("spawngate-example-app:latest"), None, None, &[])
            )
            .is_ok()
        );
        for (bad, why) in [
            (req(Some("evil:latest"), None, None, &[]), "not allowed"),
            (req(None, Some("2g"), None, &[]), "max_memory"),
            (req(None, Some("lots"), None, &[]), "expected a size"),
            (req(None, None, Some(3.0), &[]), "max_cpus"),
            (req(None, None, Some(0.0), &[]), "max_cpus"),
            (req(None, None, None, &[("DB_PASSWORD", "x")]), "credential"),
            (
                req(None, None, None, &[("github_token", "x")]),
                "credential",
            ),
            (
                req(None, None, None, &[("SPAWNGATE_USER", "x")]),
                "SPAWNGATE_",
            ),
            (req(None, None, None, &[("1X", "x")]), "digit"),
        ] {
            let e = validate_overrides(&config, bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should mention {why}");
        }
    }

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
