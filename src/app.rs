//! The assembled application: builds every service and hands them to the HTTP
//! layer, the CLI and the server. Wiring only: the operations live in the
//! services (`accounts`, `environments`, `sharing`, `auth`, `lifecycle`).

use std::sync::Arc;

use crate::accounts::Accounts;
use crate::auth::SessionCodec;
use crate::config::Config;
use crate::environments::Environments;
use crate::lifecycle::Lifecycle;
use crate::provider::Provider;
use crate::runtime::{Runtime, RuntimeError};
use crate::sharing::Sharing;
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;

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
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
}

pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    /// Background work; the server drains it at shutdown.
    pub tasks: Tasks,
    pub lifecycle: Arc<Lifecycle>,
    pub accounts: Accounts,
    pub environments: Environments,
    pub sharing: Sharing,
    pub provider: Provider,
    pub sessions: Arc<SessionCodec>,
    /// Who is calling (cookies and personal tokens); shares the codec above.
    pub identities: Arc<crate::auth::Identities>,
    /// Present when `email.enabled`.
    pub mailer: Option<crate::mail::Mailer>,
    pub limit_per_email: crate::auth::ratelimit::RateLimiter,
    /// Shared with the SSH server, which counts failed authentications on it.
    pub limit_per_ip: Arc<crate::auth::ratelimit::RateLimiter>,
    /// Wrong passwords per account.
    pub limit_password_failures: crate::auth::ratelimit::RateLimiter,
    /// Present when `[jwt]` is enabled.
    pub external_jwt: Option<crate::auth::external::ExternalJwt>,
    /// Present when `[oidc]` is enabled.
    pub oidc: Option<crate::auth::oidc::OidcClient>,
    /// Subdomain mode's one-time codes (login host → app host).
    pub handoffs: crate::auth::handoff::HandoffCodes,
    /// What `/metrics` exports; the services record into it.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Present when `[ssh]` is enabled; the server runs it.
    pub ssh: Option<Arc<crate::ssh::SshServer>>,
}

impl App {
    /// Opens the store (`store.url`, else the embedded one in `data_dir`) and
    /// connects to Docker.
    pub async fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let runtime = crate::runtime::connect(&config)?;
        let store = Store::open_configured(config.store.url.as_deref(), &config.data_dir).await?;
        Self::with_runtime(config, runtime, store)
    }

    pub fn with_runtime(
        config: Config,
        runtime: Arc<dyn Runtime>,
        store: Store,
    ) -> Result<Arc<App>, BuildError> {
        let config = Arc::new(config);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let runtime = crate::runtime::metered(runtime, metrics.clone());
        let tasks = Tasks::new();
        let session_key = store.session_key()?;
        let sessions = Arc::new(SessionCodec::new(&session_key));
        let identities = Arc::new(crate::auth::Identities::new(
            store.clone(),
            sessions.clone(),
            config.clone(),
        ));
        let provider = Provider::start(
            config.clone(),
            store.directory(),
            runtime.clone(),
            metrics.clone(),
        );
        let lifecycle = Lifecycle::new(
            runtime,
            store.clone(),
            config.clone(),
            store.container_key()?,
            tasks.clone(),
            metrics.clone(),
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
        let environments = Environments::new(config.clone(), store.clone(), lifecycle.clone());
        let sharing = Sharing::new(store.clone(), environments.clone());
        let limit_per_ip = Arc::new(
            crate::auth::ratelimit::RateLimiter::per_hour(config.login.per_ip_per_hour)
                .counted_in(&store, "per_ip"),
        );
        let ssh = config
            .ssh
            .clone()
            .map(|ssh| {
                crate::ssh::SshServer::new(
                    ssh,
                    store.clone(),
                    lifecycle.clone(),
                    limit_per_ip.clone(),
                    config.spawn.hold,
                    tasks.clone(),
                )
                .map(Arc::new)
            })
            .transpose()?;
        let accounts = Accounts::new(
            config.clone(),
            store.clone(),
            environments.clone(),
            sharing.clone(),
            tasks.clone(),
        );
        Ok(Arc::new(App {
            tasks,
            accounts,
            environments,
            sharing,
            external_jwt,
            oidc,
            handoffs: crate::auth::handoff::HandoffCodes::new(store.clone()),
            metrics,
            limit_per_email: crate::auth::ratelimit::RateLimiter::per_hour(
                config.login.per_email_per_hour,
            )
            .counted_in(&store, "per_email"),
            limit_per_ip,
            ssh,
            limit_password_failures: crate::auth::ratelimit::RateLimiter::per_hour(
                config.login.password_failures_per_hour,
            )
            .counted_in(&store, "password_failures"),
            mailer,
            config,
            store,
            lifecycle,
            provider,
            sessions,
            identities,
        }))
    }
}
