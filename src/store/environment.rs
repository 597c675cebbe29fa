//! [`Env`]: one environment of a user, as everything above the store names it
//! (the lifecycle, forwardAuth, the provider). The default environment is
//! described by the user's own fields, the others by [`ExtraEnvironment`]s in the
//! user's record; `Env` hides which.

use std::sync::Arc;

use super::records::{DEFAULT_ENVIRONMENT, EnvIndex, ExtraEnvironment, Share, User};
use crate::ids::Slug;

/// A user (as stored when looked up) and one of their environments. Cheap to
/// clone: an `Arc` and an index.
#[derive(Clone, Debug)]
pub struct Env {
    owner: Arc<User>,
    at: EnvIndex,
}

impl Env {
    /// `None` when `at` is not one of `owner`'s environments.
    pub fn new(owner: Arc<User>, at: EnvIndex) -> Option<Env> {
        match at {
            EnvIndex::Extra(i) if i >= owner.environments.len() => None,
            _ => Some(Env { owner, at }),
        }
    }

    /// The environment every user has.
    pub fn default_of(owner: Arc<User>) -> Env {
        Env {
            owner,
            at: EnvIndex::Default,
        }
    }

    /// The owner's environment at `slug`.
    pub fn at_slug(owner: Arc<User>, slug: &Slug) -> Option<Env> {
        let at = owner.environment_at(slug)?;
        Env::new(owner, at)
    }

    /// The owner's environment called `name`.
    pub fn named(owner: Arc<User>, name: &str) -> Option<Env> {
        let at = owner.environment_named(name)?;
        Env::new(owner, at)
    }

    /// All of `owner`'s environments, the default one first.
    pub fn all_of(owner: &Arc<User>) -> impl Iterator<Item = Env> + '_ {
        owner.environment_indexes().map(|at| Env {
            owner: owner.clone(),
            at,
        })
    }

    pub fn owner(&self) -> &Arc<User> {
        &self.owner
    }

    pub fn index(&self) -> EnvIndex {
        self.at
    }

    pub fn is_default(&self) -> bool {
        self.at == EnvIndex::Default
    }

    fn extra(&self) -> Option<&ExtraEnvironment> {
        match self.at {
            EnvIndex::Default => None,
            EnvIndex::Extra(i) => self.owner.environments.get(i),
        }
    }

    pub fn name(&self) -> &str {
        self.extra().map_or(DEFAULT_ENVIRONMENT, |e| &e.name)
    }

    pub fn slug(&self) -> &Slug {
        self.extra().map_or(&self.owner.slug, |e| &e.slug)
    }

    pub fn host_port(&self) -> Option<u16> {
        match self.extra() {
            Some(e) => e.host_port,
            None => self.owner.host_port,
        }
    }

    /// The profile's name (`None`: the default profile).
    pub fn profile(&self) -> Option<&str> {
        match self.extra() {
            Some(e) => e.profile.as_deref(),
            None => self.owner.profile.as_deref(),
        }
    }

    /// Whether an admin chose its profile (the default environment's always is):
    /// a profile restriction does not stop it then.
    pub fn assigned_by_admin(&self) -> bool {
        self.extra().is_none_or(|e| e.by_admin)
    }

    /// Who else may open it.
    pub fn shared_with(&self) -> &[Share] {
        self.extra()
            .map_or(&self.owner.shared_with, |e| &e.shared_with)
    }

    /// The key of its container record (and the subject its container secret
    /// is derived from): the user id for the default environment, as before
    /// environments existed; `<id>/<slug>` for the others, so an environment
    /// deleted and created again under the same name shares nothing with the
    /// old one.
    pub fn record_key(&self) -> String {
        record_key(&self.owner, self.extra().map(|e| &e.slug))
    }

    /// How the audit log names it: the user, plus the environment's name when
    /// it is not their default one.
    pub fn audit_name(&self) -> String {
        match self.extra() {
            None => self.owner.name.clone(),
            Some(e) => format!("{}/{}", self.owner.name, e.name),
        }
    }
}

/// See [`Env::record_key`].
pub fn record_key(owner: &User, extra: Option<&Slug>) -> String {
    match extra {
        None => owner.id.to_string(),
        Some(slug) => format!("{}/{slug}", owner.id),
    }
}
