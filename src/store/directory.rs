//! The in-memory directory of users the hot path reads.
//!
//! Persistent maps (`imbl`): a snapshot is a value that shares its structure with
//! the next one, so publishing one changed user costs O(log n) (clone the maps in
//! O(1), change one entry) and readers keep lock-free snapshots that never see a
//! half-applied change. Every publish also appends the user's id to a short change
//! log, so consumers that keep per-user state (the provider's rendered fragments)
//! can catch up on what changed instead of looking at every user.

use std::sync::Arc;

use imbl::{HashMap, OrdMap, Vector};

use super::{Env, User};
use crate::ids::{Slug, UserId};

/// How many changes a directory remembers; a consumer further behind starts over.
const CHANGE_LOG: usize = 4096;

/// Everything the hot path needs to know about users.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_slug: HashMap<Slug, Arc<User>>,
    by_id: HashMap<UserId, Arc<User>>,
    /// Ordered: listings and rendering walk users in name order.
    by_name: OrdMap<String, Arc<User>>,
    by_email: HashMap<String, Arc<User>>,
    /// Owner ids by grantee id: who shared an environment with a user, without
    /// looking at every user.
    granted_to: HashMap<UserId, OrdMap<UserId, ()>>,
    /// The ids published since version `log_start`, oldest first.
    log: Vector<UserId>,
    log_start: u64,
}

/// What changed between two versions of the directory.
pub enum Changes<'a> {
    /// These users (each may be new, changed or gone; repeats are possible).
    Users(Box<dyn Iterator<Item = &'a UserId> + 'a>),
    /// Too much, or the directory was rebuilt: look at everything.
    Everything,
}

impl Directory {
    /// The owner of the environment at `slug` (any of a user's environments).
    pub fn by_slug(&self, slug: &Slug) -> Option<&Arc<User>> {
        self.by_slug.get(slug)
    }
    /// The environment at `slug`.
    pub fn environment(&self, slug: &Slug) -> Option<Env> {
        Env::at_slug(self.by_slug.get(slug)?.clone(), slug)
    }
    pub fn by_id(&self, id: &UserId) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }
    pub fn by_name(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }
    /// Emails are matched case-insensitively.
    pub fn by_email(&self, email: &str) -> Option<&Arc<User>> {
        self.by_email.get(&email.to_ascii_lowercase())
    }
    /// Users in name order (stable rendering and listings).
    pub fn users(&self) -> Vec<Arc<User>> {
        self.by_name.values().cloned().collect()
    }
    /// The same, without collecting them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }
    /// Users who shared one of their environments with `grantee`, in id order.
    pub fn owners_sharing_with(&self, grantee: &UserId) -> Vec<Arc<User>> {
        self.granted_to
            .get(grantee)
            .map(|owners| {
                owners
                    .keys()
                    .filter_map(|id| self.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Grows by one with every published change.
    pub fn version(&self) -> u64 {
        self.log_start + self.log.len() as u64
    }

    /// What changed since this directory's `version` was `since`.
    pub fn changes_since(&self, since: u64) -> Changes<'_> {
        if since < self.log_start || since > self.version() {
            return Changes::Everything;
        }
        let skip = (since - self.log_start) as usize;
        Changes::Users(Box::new(self.log.iter().skip(skip)))
    }

    /// A directory of exactly `users`, whose version is past `previous`'s (so a
    /// consumer of `previous` sees [`Changes::Everything`]).
    pub(super) fn rebuilt(
        previous: &Directory,
        users: impl IntoIterator<Item = User>,
    ) -> Directory {
        let mut dir = Directory {
            log_start: previous.version() + 1,
            ..Directory::default()
        };
        for user in users {
            dir.insert(Arc::new(user));
        }
        dir
    }

    /// Makes the directory hold `now` for `id` (`None`: the user is gone).
    pub(super) fn apply(&mut self, id: &UserId, now: Option<User>) {
        if let Some(old) = self.by_id.remove(id) {
            self.forget(&old);
        }
        if let Some(user) = now {
            self.insert(Arc::new(user));
        }
        self.log.push_back(id.clone());
        if self.log.len() > CHANGE_LOG {
            let drop = self.log.len() - CHANGE_LOG / 2;
            self.log = self.log.split_off(drop);
            self.log_start += drop as u64;
        }
    }

    fn insert(&mut self, user: Arc<User>) {
        for slug in slugs(&user) {
            self.by_slug.insert(slug.clone(), user.clone());
        }
        self.by_name.insert(user.name.clone(), user.clone());
        if let Some(email) = &user.email {
            self.by_email
                .insert(email.to_ascii_lowercase(), user.clone());
        }
        for share in shares(&user) {
            self.granted_to
                .entry(share.user_id.clone())
                .or_default()
                .insert(user.id.clone(), ());
        }
        self.by_id.insert(user.id.clone(), user);
    }

    /// Removes what `old` put in the indexes, where it is still `old`'s: another
    /// user may hold a freed name or email already (published first).
    fn forget(&mut self, old: &User) {
        let mine = |u: &Arc<User>| u.id == old.id;
        for slug in slugs(old) {
            if self.by_slug.get(slug).is_some_and(mine) {
                self.by_slug.remove(slug);
            }
        }
        if self.by_name.get(&old.name).is_some_and(mine) {
            self.by_name.remove(&old.name);
        }
        if let Some(email) = &old.email {
            let email = email.to_ascii_lowercase();
            if self.by_email.get(&email).is_some_and(mine) {
                self.by_email.remove(&email);
            }
        }
        for share in shares(old) {
            if let Some(owners) = self.granted_to.get_mut(&share.user_id) {
                owners.remove(&old.id);
                if owners.is_empty() {
                    self.granted_to.remove(&share.user_id);
                }
            }
        }
    }

    /// Whether two directories hold the same users under the same keys (tests:
    /// an incrementally kept directory against a rebuild).
    #[cfg(test)]
    pub(super) fn same_content(&self, other: &Directory) -> bool {
        self.by_slug == other.by_slug
            && self.by_id == other.by_id
            && self.by_name == other.by_name
            && self.by_email == other.by_email
            && self.granted_to == other.granted_to
    }
}

/// The slugs that route to `user`: one per environment.
fn slugs(user: &User) -> impl Iterator<Item = &Slug> {
    std::iter::once(&user.slug).chain(user.environments.iter().map(|e| &e.slug))
}

/// Every grant on any of `user`'s environments.
fn shares(user: &User) -> impl Iterator<Item = &super::Share> {
    user.shared_with
        .iter()
        .chain(user.environments.iter().flat_map(|e| &e.shared_with))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{ExtraEnvironment, Overrides, Share};

    fn user(i: u32, name: &str, email: Option<&str>, shares: &[u32]) -> User {
        User {
            id: UserId::from_stored(format!("id{i}")),
            name: name.into(),
            email: email.map(str::to_owned),
            slug: Slug::generate(),
            created: 0,
            disabled: false,
            host_port: None,
            overrides: Overrides::default(),
            password_hash: None,
            shared_with: shares
                .iter()
                .map(|g| Share {
                    user_id: UserId::from_stored(format!("id{g}")),
                    read_only: false,
                    granted: 0,
                })
                .collect(),
            credential_generation: 0,
            admin: false,
            profile: None,
            environments: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Random creates, renames, email changes, shares and deletes applied one at a
    /// time give the same directory as a rebuild from the final set of users, and
    /// the change log names every user that changed.
    #[test]
    fn incremental_changes_match_a_rebuild() {
        let mut state: std::collections::BTreeMap<u32, User> = Default::default();
        let mut dir = Directory::default();
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        for step in 0..3000 {
            let i = next(60);
            let before = dir.version();
            let now = match next(5) {
                // Delete.
                0 => None,
                // Create or replace: names and emails come from a small pool,
                // freed by one user and taken by another.
                _ => {
                    let name = format!("n{}", next(80));
                    let email = (next(2) == 0).then(|| format!("E{}@x.org", next(80)));
                    let taken = |u: &User| {
                        u.id.as_str() != format!("id{i}")
                            && (u.name == name
                                || (email.is_some()
                                    && u.email.as_deref().map(str::to_ascii_lowercase)
                                        == email.as_deref().map(str::to_ascii_lowercase)))
                    };
                    if state.values().any(taken) {
                        continue;
                    }
                    let shares: Vec<u32> = (0..next(3)).map(|_| next(60)).collect();
                    let mut u = user(i, &name, email.as_deref(), &shares);
                    if let Some(old) = state.get(&i) {
                        u.slug = old.slug.clone();
                        u.environments = old.environments.clone();
                    }
                    // Environments come and go, each with its slug and shares.
                    match next(4) {
                        0 => u.environments.push(ExtraEnvironment {
                            name: format!("e{step}"),
                            slug: Slug::generate(),
                            profile: None,
                            host_port: None,
                            shared_with: vec![Share {
                                user_id: UserId::from_stored(format!("id{}", next(60))),
                                read_only: true,
                                granted: 0,
                            }],
                            created: 0,
                            by_admin: false,
                        }),
                        1 if !u.environments.is_empty() => {
                            u.environments.remove(0);
                        }
                        _ => {}
                    }
                    Some(u)
                }
            };
            match &now {
                Some(u) => state.insert(i, u.clone()),
                None => state.remove(&i),
            };
            let id = UserId::from_stored(format!("id{i}"));
            dir.apply(&id, now);
            match dir.changes_since(before) {
                Changes::Users(mut ids) => assert!(ids.any(|c| *c == id), "step {step}"),
                Changes::Everything => panic!("one change back is in the log"),
            }
            if step % 250 == 0 || step == 2999 {
                let rebuilt = Directory::rebuilt(&dir, state.values().cloned());
                assert!(dir.same_content(&rebuilt), "step {step}");
                assert_eq!(dir.len(), state.len());
                let names: Vec<_> = dir.users().iter().map(|u| u.name.clone()).collect();
                let mut sorted = names.clone();
                sorted.sort();
                assert_eq!(names, sorted, "users() in name order");
                for u in state.values() {
                    for slug in slugs(u) {
                        let env = dir.environment(slug).expect("every environment's slug");
                        assert_eq!(env.owner().id, u.id);
                    }
                }
            }
        }
        // Owners by grantee agree with a scan.
        for g in 0..60 {
            let grantee = UserId::from_stored(format!("id{g}"));
            let mut scanned: Vec<_> = state
                .values()
                .filter(|o| shares(o).any(|s| s.user_id == grantee))
                .map(|o| o.id.clone())
                .collect();
            scanned.sort();
            let indexed: Vec<_> = dir
                .owners_sharing_with(&grantee)
                .iter()
                .map(|o| o.id.clone())
                .collect();
            assert_eq!(indexed, scanned);
        }
    }

    #[test]
    fn a_consumer_too_far_behind_or_before_a_rebuild_sees_everything() {
        let mut dir = Directory::default();
        let first = dir.version();
        for i in 0..(CHANGE_LOG as u32 + 10) {
            dir.apply(
                &UserId::from_stored(format!("id{i}")),
                Some(user(i, &format!("n{i}"), None, &[])),
            );
        }
        assert!(matches!(dir.changes_since(first), Changes::Everything));
        let recent = dir.version() - 3;
        match dir.changes_since(recent) {
            Changes::Users(ids) => assert_eq!(ids.count(), 3),
            Changes::Everything => panic!("recent changes are kept"),
        }
        let rebuilt = Directory::rebuilt(&dir, Vec::new());
        assert!(matches!(
            rebuilt.changes_since(dir.version()),
            Changes::Everything
        ));
        assert!(matches!(
            rebuilt.changes_since(rebuilt.version()),
            Changes::Users(_)
        ));
    }
}
