//! Users' environments as people see them: their address, and starting, stopping
//! and inspecting them on behalf of someone (audited). The lifecycle underneath
//! decides how; this layer says who asked.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::{ContainerStatus, Lifecycle, Readiness};
use crate::store::{Store, User};

/// A user's environment as their dashboard (and the admin page) shows it.
#[derive(Debug, serde::Serialize)]
pub struct Overview {
    pub user: String,
    pub state: crate::runtime::ContainerState,
    /// Since when it is in `state` (RFC 3339), when known: started for running,
    /// exited for stopped.
    pub since: Option<String>,
    /// Its public URL, and the link to it from spawngate's pages.
    pub url: String,
    pub link: String,
    pub usage: Option<crate::runtime::Usage>,
    pub last_activity: Option<String>,
    /// What the idle culler does next, and when.
    pub cull: Option<CullView>,
    /// Why the last start failed, in words safe for the owner; `detail` has the
    /// operator's version (admins only).
    pub failure: Option<String>,
    #[serde(skip)]
    pub detail: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct CullView {
    /// `pause`, `stop` or `remove`.
    pub action: &'static str,
    pub at: String,
    pub reason: &'static str,
}

/// Most log lines one call returns.
pub const MAX_LOG_LINES: usize = 10_000;

#[derive(Clone)]
pub struct Environments {
    config: Arc<Config>,
    store: Store,
    lifecycle: Arc<Lifecycle>,
}

impl Environments {
    pub fn new(config: Arc<Config>, store: Store, lifecycle: Arc<Lifecycle>) -> Environments {
        Environments {
            config,
            store,
            lifecycle,
        }
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The public URL of `user`'s environment.
    pub fn url(&self, user: &User) -> String {
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
    pub fn link(&self, user: &User) -> String {
        match &self.config.apps {
            Some(_) => format!("/_spawngate/handoff?slug={}&next=%2F", user.slug),
            None => format!("{}/", user.slug.base_path()),
        }
    }

    pub async fn status(&self, user: &User) -> Result<ContainerStatus> {
        Ok(self.lifecycle.status(user).await?)
    }

    /// Every user's container status (users without a container included).
    pub async fn list(&self) -> Result<Vec<ContainerStatus>> {
        let mut out = Vec::new();
        for user in self.store.snapshot().users() {
            out.push(self.lifecycle.status(&user).await?);
        }
        Ok(out)
    }

    pub async fn start(&self, actor: &str, user: &Arc<User>) -> Result<ContainerStatus> {
        self.store.audit(actor, "container.start", &user.name, None);
        self.await_ready(user, self.lifecycle.start(user).await)
            .await
    }

    pub async fn restart(&self, actor: &str, user: &Arc<User>) -> Result<ContainerStatus> {
        self.store
            .audit(actor, "container.restart", &user.name, None);
        self.await_ready(user, self.lifecycle.restart(user).await)
            .await
    }

    /// Starts (or restarts) the environment in the background and waits at most
    /// `wait` for it: `Ok(true)` ready, `Ok(false)` still starting (it goes on),
    /// or why it failed at once (capacity, Docker down). For pages, which should
    /// answer quickly and show the rest as it happens.
    pub async fn start_within(
        &self,
        actor: &str,
        user: &Arc<User>,
        restart: bool,
        wait: std::time::Duration,
    ) -> Result<bool> {
        let action = if restart {
            "container.restart"
        } else {
            "container.start"
        };
        self.store.audit(actor, action, &user.name, None);
        let (lifecycle, user) = (self.lifecycle.clone(), user.clone());
        let mut work = self.lifecycle.tasks().spawn(async move {
            if restart {
                lifecycle.restart(&user).await
            } else {
                lifecycle.start(&user).await
            }
        });
        match tokio::time::timeout(wait, &mut work).await {
            Ok(Ok(Readiness::Ready)) => Ok(true),
            Ok(Ok(Readiness::Pending)) | Err(_) => Ok(false),
            Ok(Ok(Readiness::Failed(e))) => Err(e.into()),
            Ok(Err(e)) => Err(Error::Internal(format!("start task failed: {e}"))),
        }
    }

    pub async fn stop(&self, actor: &str, user: &User) -> Result<ContainerStatus> {
        self.store.audit(actor, "container.stop", &user.name, None);
        self.lifecycle.stop(user).await?;
        self.status(user).await
    }

    /// CPU and memory use of the user's container, when it runs.
    pub async fn usage(&self, user: &User) -> Result<Option<crate::runtime::Usage>> {
        Ok(self.lifecycle.stats(user).await?)
    }

    /// What the idle culler will do next to the user's environment, and when.
    pub fn cull_plan(&self, user: &User) -> Option<crate::lifecycle::CullPlan> {
        self.lifecycle.cull_plan(user)
    }

    /// State, since when, use and the culler's plan, in one look.
    pub async fn overview(&self, user: &User) -> Result<Overview> {
        use crate::runtime::ContainerState;
        let status = self.status(user).await?;
        let since = match status.state {
            ContainerState::Running => status.started_at.clone(),
            ContainerState::Stopped => status.finished_at.clone(),
            _ => None,
        }
        .filter(|t| crate::time::parse_rfc3339(t).is_some());
        let usage = match status.state {
            ContainerState::Running => self.usage(user).await.unwrap_or_else(|e| {
                tracing::debug!(user = %user.name, error = %e, "cannot read container stats");
                None
            }),
            _ => None,
        };
        let failure = status.failure.as_ref().map(|f| {
            // An app's own failure is its owner's to read (the failed-start page
            // shows it too); Docker's and the server's are the operator's.
            if f.exit_code.is_some() || !f.logs.is_empty() {
                f.reason.clone()
            } else {
                "the last start failed; the administrator can see why in spawngate's log".into()
            }
        });
        Ok(Overview {
            user: user.name.clone(),
            state: status.state,
            since,
            url: self.url(user),
            link: self.link(user),
            usage,
            last_activity: status.last_activity.clone(),
            cull: self.cull_plan(user).map(|p| CullView {
                action: p.action,
                at: crate::time::rfc3339(p.at),
                reason: p.reason,
            }),
            failure,
            detail: status.last_error.clone(),
        })
    }

    /// [`Environments::overview`] of every user, a few at a time (a stats call
    /// can take a few hundred milliseconds), in directory order.
    pub async fn overviews(&self) -> Result<Vec<Overview>> {
        use futures_util::StreamExt;
        let users = self.store.snapshot().users();
        // Owned futures: borrowing closures would make the stream's future
        // lifetime-generic, which spawned (Send) handlers cannot hold.
        let looks = futures_util::stream::iter(users.into_iter().map(|user| {
            let this = self.clone();
            async move { this.overview(&user).await }
        }))
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
        looks.into_iter().collect()
    }

    /// The last `tail` lines of the container's output.
    pub async fn logs(&self, user: &User, tail: usize) -> Result<Vec<String>> {
        Ok(self.lifecycle.logs(user, tail.min(MAX_LOG_LINES)).await?)
    }

    async fn await_ready(&self, user: &Arc<User>, readiness: Readiness) -> Result<ContainerStatus> {
        match readiness {
            Readiness::Ready => self.status(user).await,
            Readiness::Failed(e) => Err(e.into()),
            Readiness::Pending => Err(Error::Unavailable(format!(
                "container of '{}' did not become ready in time",
                user.name
            ))),
        }
    }
}
