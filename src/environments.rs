//! Users' environments as people see them: their address, and starting, stopping
//! and inspecting them on behalf of someone (audited). The lifecycle underneath
//! decides how; this layer says who asked.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::{ContainerStatus, Lifecycle, Readiness};
use crate::store::{Store, User};

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
