//! Users' environments as people see them: their address, and starting, stopping
//! and inspecting them on behalf of someone (audited). The lifecycle underneath
//! decides how; this layer says who asked.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::{ContainerStatus, Lifecycle, Readiness};
use crate::store::{Env, Store, User};

/// A user's environment as their dashboard (and the admin page) shows it.
#[derive(Debug, serde::Serialize)]
pub struct Overview {
    pub user: String,
    /// `default`, or the name of one of the user's other environments.
    pub environment: String,
    pub profile: String,
    pub profile_display_name: String,
    pub slug: String,
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

    /// The public URL of `env`.
    pub fn url(&self, env: &Env) -> String {
        match &self.config.apps {
            Some(apps) => format!("{}/", apps.origin(env.slug())),
            None => format!(
                "{}{}/",
                self.config.public_url.origin,
                env.slug().base_path()
            ),
        }
    }

    /// A same-site link from the login host's pages to `env` (in subdomain
    /// mode through the hand-off, which gives the app host a session).
    pub fn link(&self, env: &Env) -> String {
        match &self.config.apps {
            Some(_) => format!("/_spawngate/handoff?slug={}&next=%2F", env.slug()),
            None => format!("{}/", env.slug().base_path()),
        }
    }

    pub async fn status(&self, env: &Env) -> Result<ContainerStatus> {
        Ok(self.lifecycle.status(env).await?)
    }

    /// Every environment's container status (those without a container included).
    pub async fn list(&self) -> Result<Vec<ContainerStatus>> {
        let mut out = Vec::new();
        for user in self.store.snapshot().users() {
            for env in Env::all_of(&user) {
                out.push(self.lifecycle.status(&env).await?);
            }
        }
        Ok(out)
    }

    pub async fn start(&self, actor: &str, env: &Env) -> Result<ContainerStatus> {
        self.store
            .audit(actor, "container.start", &env.audit_name(), None);
        self.await_ready(env, self.lifecycle.start(env).await).await
    }

    pub async fn restart(&self, actor: &str, env: &Env) -> Result<ContainerStatus> {
        self.store
            .audit(actor, "container.restart", &env.audit_name(), None);
        self.await_ready(env, self.lifecycle.restart(env).await)
            .await
    }

    /// Starts (or restarts) the environment in the background and waits at most
    /// `wait` for it: `Ok(true)` ready, `Ok(false)` still starting (it goes on),
    /// or why it failed at once (capacity, Docker down). For pages, which should
    /// answer quickly and show the rest as it happens.
    pub async fn start_within(
        &self,
        actor: &str,
        env: &Env,
        restart: bool,
        wait: std::time::Duration,
    ) -> Result<bool> {
        let action = if restart {
            "container.restart"
        } else {
            "container.start"
        };
        self.store.audit(actor, action, &env.audit_name(), None);
        let (lifecycle, env) = (self.lifecycle.clone(), env.clone());
        let mut work = self.lifecycle.tasks().spawn(async move {
            if restart {
                lifecycle.restart(&env).await
            } else {
                lifecycle.start(&env).await
            }
        });
        match tokio::time::timeout(wait, &mut work).await {
            Ok(Ok(Readiness::Ready)) => Ok(true),
            Ok(Ok(Readiness::Pending)) | Err(_) => Ok(false),
            Ok(Ok(Readiness::Failed(e))) => Err(e.into()),
            Ok(Err(e)) => Err(Error::Internal(format!("start task failed: {e}"))),
        }
    }

    pub async fn stop(&self, actor: &str, env: &Env) -> Result<ContainerStatus> {
        self.store
            .audit(actor, "container.stop", &env.audit_name(), None);
        self.lifecycle.stop(env).await?;
        self.status(env).await
    }

    /// CPU and memory use of the environment's container, when it runs.
    pub async fn usage(&self, env: &Env) -> Result<Option<crate::runtime::Usage>> {
        Ok(self.lifecycle.stats(env).await?)
    }

    /// What the idle culler will do next to the environment, and when.
    pub fn cull_plan(&self, env: &Env) -> Option<crate::lifecycle::CullPlan> {
        self.lifecycle.cull_plan(env)
    }

    /// State, since when, use and the culler's plan, in one look.
    pub async fn overview(&self, env: &Env) -> Result<Overview> {
        use crate::runtime::ContainerState;
        let user = env.owner();
        let status = self.status(env).await?;
        let since = match status.state {
            ContainerState::Running => status.started_at.clone(),
            ContainerState::Stopped => status.finished_at.clone(),
            _ => None,
        }
        .filter(|t| crate::time::parse_rfc3339(t).is_some());
        let usage = match status.state {
            ContainerState::Running => self.usage(env).await.unwrap_or_else(|e| {
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
        let profile = self.lifecycle.profile(env);
        Ok(Overview {
            user: user.name.clone(),
            environment: env.name().to_owned(),
            profile: profile.name.clone(),
            profile_display_name: profile.display_name.clone(),
            slug: env.slug().to_string(),
            state: status.state,
            since,
            url: self.url(env),
            link: self.link(env),
            usage,
            last_activity: status.last_activity.clone(),
            cull: self.cull_plan(env).map(|p| CullView {
                action: p.action,
                at: crate::time::rfc3339(p.at),
                reason: p.reason,
            }),
            failure,
            detail: status.last_error.clone(),
        })
    }

    /// [`Environments::overview`] of every user's default environment, a few at
    /// a time (a stats call can take a few hundred milliseconds), in directory
    /// order: the admin table's rows.
    pub async fn overviews(&self) -> Result<Vec<Overview>> {
        let users = self.store.snapshot().users();
        let envs: Vec<Env> = users.into_iter().map(Env::default_of).collect();
        self.overviews_of(envs).await
    }

    /// [`Environments::overview`] of `envs`, a few at a time.
    pub async fn overviews_of(&self, envs: Vec<Env>) -> Result<Vec<Overview>> {
        use futures_util::StreamExt;
        // Owned futures: borrowing closures would make the stream's future
        // lifetime-generic, which spawned (Send) handlers cannot hold.
        let looks = futures_util::stream::iter(envs.into_iter().map(|env| {
            let this = self.clone();
            async move { this.overview(&env).await }
        }))
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
        looks.into_iter().collect()
    }

    /// The last `tail` lines of the container's output.
    pub async fn logs(&self, env: &Env, tail: usize) -> Result<Vec<String>> {
        Ok(self.lifecycle.logs(env, tail.min(MAX_LOG_LINES)).await?)
    }

    async fn await_ready(&self, env: &Env, readiness: Readiness) -> Result<ContainerStatus> {
        match readiness {
            Readiness::Ready => self.status(env).await,
            Readiness::Failed(e) => Err(e.into()),
            Readiness::Pending => Err(Error::Unavailable(format!(
                "the environment '{}' of '{}' did not become ready in time",
                env.name(),
                env.owner().name
            ))),
        }
    }
}

/// `POST …/environments`: a new environment for a user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnvironment {
    pub name: String,
    /// `None`: the default profile.
    #[serde(default)]
    pub profile: Option<String>,
}

/// A profile as users choose among them.
#[derive(Debug, serde::Serialize)]
pub struct ProfileView {
    pub name: String,
    pub display_name: String,
    pub description: String,
}

impl Environments {
    /// The environment `name` of `user` (`default` is theirs from creation).
    pub fn environment(&self, user: &Arc<User>, name: &str) -> Result<Env> {
        Env::named(user.clone(), name).ok_or(Error::NotFound("environment"))
    }

    /// The profiles `user` may start.
    pub fn profiles_for(&self, user: &User) -> Vec<ProfileView> {
        self.config
            .profiles
            .iter()
            .filter(|p| p.allows(&user.name, &user.groups))
            .map(|p| ProfileView {
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                description: p.description.clone(),
            })
            .collect()
    }

    /// Every environment of `user`, as their dashboard shows them.
    pub async fn overviews_of_user(&self, user: &Arc<User>) -> Result<Vec<Overview>> {
        self.overviews_of(Env::all_of(user).collect()).await
    }

    /// Adds an environment to `user`. A user chooses among the profiles they are
    /// allowed; an admin (`as_admin`) may give anyone any profile.
    pub async fn create(
        &self,
        actor: &str,
        user: &User,
        new: &NewEnvironment,
        as_admin: bool,
    ) -> Result<Overview> {
        let name = new.name.trim();
        if !crate::config::is_profile_name(name) || name == crate::store::DEFAULT_ENVIRONMENT {
            return Err(Error::Invalid(format!(
                "{name:?} cannot name an environment: use 1-32 of a-z, 0-9, - and _, starting with a letter (and not \"default\")"
            )));
        }
        let profile = match new.profile.as_deref().map(str::trim) {
            None | Some("") => self.config.profiles.resolve(None).clone(),
            Some(p) => self
                .config
                .profiles
                .get(p)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("there is no profile {p:?}")))?,
        };
        if !as_admin && !profile.allows(&user.name, &user.groups) {
            return Err(Error::Forbidden(
                "you may not use this profile (ask an administrator)",
            ));
        }
        let limit = self.config.limits.environments_per_user;
        let port_range = self
            .config
            .docker
            .publishes_host_ports()
            .then_some(self.config.docker.host_ports);
        let stored_profile =
            (profile.name != crate::config::DEFAULT_PROFILE).then(|| profile.name.clone());
        let added = self
            .store
            .add_environment(
                &user.id,
                name,
                stored_profile.as_deref(),
                as_admin,
                port_range,
                |u| {
                    if u.environment_named(name).is_some() {
                        return Err(Error::Conflict(format!(
                            "there is already an environment called {name:?}"
                        )));
                    }
                    if u.environments.len() + 1 >= limit {
                        return Err(Error::Conflict(format!(
                            "at most {limit} environments per user (limits.environments_per_user)"
                        )));
                    }
                    Ok(())
                },
            )
            .await??;
        let (stored, extra) = added;
        let env = Env::named(Arc::new(stored), &extra.name)
            .ok_or(Error::Internal("the new environment vanished".into()))?;
        self.store.audit(
            actor,
            "environment.create",
            &env.audit_name(),
            Some(format!("profile {}, slug {}", profile.name, extra.slug)),
        );
        if self.config.lifecycle.precreate {
            self.lifecycle.precreate(&env);
        }
        self.overview(&env).await
    }

    /// Deletes one of `user`'s extra environments with its container and volume.
    pub async fn delete(&self, actor: &str, user: &Arc<User>, name: &str) -> Result<()> {
        if name == crate::store::DEFAULT_ENVIRONMENT {
            return Err(Error::Invalid(
                "the default environment goes only with its user".into(),
            ));
        }
        let env = self.environment(user, name)?;
        // The store first: from here no request can start it again. Then Docker.
        if self
            .store
            .remove_environment(&user.id, name)
            .await?
            .is_none()
        {
            return Err(Error::NotFound("environment"));
        }
        let detail = match self.lifecycle.remove(&env, false).await {
            Ok(()) => "container and volume removed".to_owned(),
            Err(e) => {
                tracing::warn!(user = %user.name, environment = name, error = %e.detail(), "environment deleted, but removing its container failed; reconcile removes it");
                format!("container removal pending: {}", e.detail())
            }
        };
        self.store
            .audit(actor, "environment.delete", &env.audit_name(), Some(detail));
        Ok(())
    }
}
