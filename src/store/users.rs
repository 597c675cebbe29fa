//! Users and their indexes: unique names, slugs, emails and host ports, each a
//! tree from the indexed value to the user id, written in the same transaction as
//! the user.

use super::kv::TxError;
use super::records::{
    ApiToken, ExtraEnvironment, LoginToken, Overrides, Session, SshKey, User, decode, encode,
};
use super::{Result, Store, StoreError, deleted_users, record_key};
use crate::ids::{Slug, UserId, random_bytes};
use crate::time::unix_now;

/// User id → [`User`].
pub(super) const TREE: &str = "users";
/// Name → user id.
pub(super) const NAMES: &str = "user_names";
/// Slug → user id.
pub(super) const SLUGS: &str = "user_slugs";
/// Email → user id.
pub(super) const EMAILS: &str = "user_emails";
/// Host port (2 bytes, big-endian) → user id.
pub(super) const PORTS: &str = "host_ports";

impl Store {
    /// Creates a user with a fresh random slug (and a host port when `port_range` is
    /// given). Names and emails are unique.
    pub async fn create_user(
        &self,
        name: &str,
        email: Option<&str>,
        port_range: Option<(u16, u16)>,
    ) -> Result<User> {
        // The random port and slug are picked before the transaction; a concurrent
        // create may take the same one first. Then pick again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_create_user(name, email, port_range).await {
                Err(StoreError::Conflict { what, .. })
                    if (what == "host port" || what == "slug") && attempt < 8 => {}
                other => return other,
            }
        }
    }

    async fn try_create_user(
        &self,
        name: &str,
        email: Option<&str>,
        port_range: Option<(u16, u16)>,
    ) -> Result<User> {
        let host_port = match port_range {
            Some(range) => Some(self.pick_free_port(range)?),
            None => None,
        };
        let user = User {
            id: UserId::generate(),
            name: name.to_owned(),
            email: email.map(str::to_owned),
            slug: Slug::generate(),
            created: unix_now(),
            disabled: false,
            host_port,
            overrides: Overrides::default(),
            password_hash: None,
            shared_with: Vec::new(),
            credential_generation: 0,
            admin: false,
            profile: None,
            environments: Vec::new(),
            groups: Vec::new(),
        };
        let value = encode(&user);
        let id = user.id.as_str().as_bytes();
        let res = self
            .kv
            .transaction(
                &[
                    &self.users,
                    &self.names,
                    &self.slugs,
                    &self.emails,
                    &self.ports,
                ],
                |t| {
                    let [users, names, slugs, emails, ports] = t else {
                        unreachable!("five trees")
                    };
                    let conflict = |what: &'static str, value: &str| {
                        TxError::Abort(StoreError::Conflict {
                            what,
                            value: value.to_owned(),
                        })
                    };
                    if names.get(user.name.as_bytes())?.is_some() {
                        return Err(conflict("user name", &user.name));
                    }
                    if slugs.get(user.slug.as_str().as_bytes())?.is_some() {
                        return Err(conflict("slug", user.slug.as_str()));
                    }
                    if let Some(email) = &user.email {
                        if emails.get(email.as_bytes())?.is_some() {
                            return Err(conflict("email", email));
                        }
                        emails.insert(email.as_bytes(), id)?;
                    }
                    if let Some(port) = user.host_port {
                        if ports.get(port.to_be_bytes())?.is_some() {
                            return Err(conflict("host port", &port.to_string()));
                        }
                        ports.insert(port.to_be_bytes(), id)?;
                    }
                    names.insert(user.name.as_bytes(), id)?;
                    slugs.insert(user.slug.as_str().as_bytes(), id)?;
                    users.insert(id, value.as_slice())?;
                    Ok(())
                },
            )
            .await?;
        res?;
        // Committed: the directory shows it even if the flush below fails.
        self.publish_users(&[&user.id])?;
        self.flush().await?;
        Ok(user)
    }

    /// How many host ports users hold (host mode).
    pub fn host_ports_held(&self) -> usize {
        self.ports.len()
    }

    fn pick_free_port(&self, (min, max): (u16, u16)) -> Result<u16> {
        let span = u32::from(max - min) + 1;
        let free = |port: u16| -> Result<bool> {
            Ok(self.ports.get(port.to_be_bytes())?.is_none()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        };
        // Random probing keeps allocation O(1) while the range is sparsely used and
        // avoids handing out a port another process on this host already holds.
        for _ in 0..64 {
            let port = min + (u32::from_le_bytes(random_bytes::<4>()) % span) as u16;
            if free(port)? {
                return Ok(port);
            }
        }
        // Nearly full: walk the whole range (from a random place, so concurrent
        // creates rarely meet), which finds the last free ports too.
        let start = u32::from_le_bytes(random_bytes::<4>()) % span;
        for k in 0..span {
            let port = min + ((start + k) % span) as u16;
            if free(port)? {
                return Ok(port);
            }
        }
        Err(StoreError::NoFreePort {
            min,
            max,
            held: self.ports.len(),
        })
    }

    /// Rewrites a user's record with a copy the caller holds (tests only: the
    /// server changes users through [`Store::modify_user`], which cannot write back
    /// a stale copy).
    #[cfg(test)]
    pub async fn update_user(&self, user: &User) -> Result<()> {
        let id = user.id.as_str().as_bytes();
        // Only an existing user is updated: a concurrent delete wins.
        let current = self.users.get(id)?;
        let swapped = match current {
            Some(current) => {
                self.users
                    .compare_and_swap(id, Some(&current), Some(encode(user).into()))
                    .await?
            }
            None => {
                return Err(StoreError::Conflict {
                    what: "deleted user",
                    value: user.name.clone(),
                });
            }
        };
        if !swapped {
            return Err(StoreError::Conflict {
                what: "user record",
                value: user.name.clone(),
            });
        }
        self.publish_users(&[&user.id])?;
        self.flush().await
    }

    /// Changes a user by reading the stored record, applying `change` and writing
    /// the result only if the record is still the one read (retried when another
    /// write got in between, so no caller can write back a stale copy: a share
    /// racing a disable keeps both). `change` may refuse with its own error,
    /// which comes back as `Ok(Err(..))` and writes nothing.
    pub async fn modify_user<E>(
        &self,
        id: &UserId,
        mut change: impl FnMut(&mut User) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<User, E>> {
        const ATTEMPTS: usize = 16;
        let key = id.as_str().as_bytes();
        for _ in 0..ATTEMPTS {
            let Some(current) = self.users.get(key)? else {
                return Err(StoreError::Gone { what: "user" });
            };
            let mut user: User = decode(&current).map_err(|source| StoreError::Corrupt {
                key: id.as_str().to_owned(),
                source,
            })?;
            if let Err(e) = change(&mut user) {
                return Ok(Err(e));
            }
            let swapped = self
                .users
                .compare_and_swap(key, Some(&current), Some(encode(&user).into()))
                .await?;
            if swapped {
                self.publish_users(&[id])?;
                self.flush().await?;
                return Ok(Ok(user));
            }
        }
        Err(StoreError::Contended {
            what: "the user record",
        })
    }

    /// Deletes a user in one transaction with everything that points at them: their
    /// indexes, sessions, login links, personal tokens, SSH keys, container record and the
    /// grants other users gave them; and leaves a tombstone (see `deleted_users`).
    /// A crash leaves either all of it or none.
    /// `keep_volume` is recorded in the tombstone: reconcile removes the volume
    /// later only if it was to go at deletion time, whatever the config says by then.
    pub async fn delete_user(&self, user: &User, keep_volume: bool) -> Result<()> {
        let id = user.id.as_str().as_bytes();
        // Transactions cannot scan: find the keys first. A session created between
        // this scan and the commit is dropped by `purge_expired` (its user is gone).
        self.up_to_date().await?;
        let sessions = self.keys_where::<Session>(&self.sessions, |s| s.user_id == user.id)?;
        let links = self.keys_where::<LoginToken>(&self.login_tokens, |t| {
            t.user_id.as_ref() == Some(&user.id)
        })?;
        let tokens = self.keys_where::<ApiToken>(&self.api_tokens, |t| t.user_id == user.id)?;
        let ssh_keys = self.keys_where::<SshKey>(&self.ssh_keys, |k| k.user_id == user.id)?;
        let owners: Vec<UserId> = self
            .snapshot()
            .owners_sharing_with(&user.id)
            .iter()
            .map(|o| o.id.clone())
            .collect();
        let tombstone = deleted_users::tombstone(unix_now(), keep_volume);
        let res = self
            .kv
            .transaction(
                &[
                    &self.users,
                    &self.names,
                    &self.slugs,
                    &self.emails,
                    &self.ports,
                    &self.containers,
                    &self.sessions,
                    &self.login_tokens,
                    &self.api_tokens,
                    &self.deleted_users,
                    &self.ssh_keys,
                ],
                |t| {
                    let [
                        users,
                        names,
                        slugs,
                        emails,
                        ports,
                        containers,
                        sess,
                        login,
                        api,
                        deleted,
                        ssh,
                    ] = t
                    else {
                        unreachable!("eleven trees")
                    };
                    // The stored record, read in the transaction, not the
                    // caller's copy: environments added since go as well.
                    let stored = match users.get(id)? {
                        Some(bytes) => decode::<User>(&bytes).map_err(|source| {
                            TxError::Abort(StoreError::Corrupt {
                                key: user.id.to_string(),
                                source,
                            })
                        })?,
                        None => user.clone(),
                    };
                    users.remove(id)?;
                    names.remove(user.name.as_bytes())?;
                    slugs.remove(user.slug.as_str().as_bytes())?;
                    if let Some(email) = &user.email {
                        emails.remove(email.as_bytes())?;
                    }
                    if let Some(port) = user.host_port {
                        ports.remove(port.to_be_bytes())?;
                    }
                    containers.remove(id)?;
                    for extra in &stored.environments {
                        slugs.remove(extra.slug.as_str().as_bytes())?;
                        if let Some(port) = extra.host_port {
                            ports.remove(port.to_be_bytes())?;
                        }
                        containers.remove(record_key(&stored, Some(&extra.slug)).as_bytes())?;
                    }
                    for key in &sessions {
                        sess.remove(key.as_ref())?;
                    }
                    for key in &links {
                        login.remove(key.as_ref())?;
                    }
                    for key in &tokens {
                        api.remove(key.as_ref())?;
                    }
                    for key in &ssh_keys {
                        ssh.remove(key.as_ref())?;
                    }
                    for owner in &owners {
                        let key = owner.as_str().as_bytes();
                        let Some(bytes) = users.get(key)? else {
                            continue;
                        };
                        let mut record: User = decode(&bytes).map_err(|source| {
                            TxError::Abort(StoreError::Corrupt {
                                key: owner.to_string(),
                                source,
                            })
                        })?;
                        record.shared_with.retain(|s| s.user_id != user.id);
                        for extra in &mut record.environments {
                            extra.shared_with.retain(|s| s.user_id != user.id);
                        }
                        users.insert(key, encode(&record))?;
                    }
                    deleted.insert(id, tombstone.as_slice())?;
                    Ok(())
                },
            )
            .await?;
        res?;
        let changed: Vec<&UserId> = std::iter::once(&user.id).chain(&owners).collect();
        self.publish_users(&changed)?;
        self.flush().await?;
        Ok(())
    }

    /// Adds an environment to a user, with a fresh slug (and a host port when
    /// `port_range` is given), in one transaction with their indexes. `check`
    /// sees the stored user and may refuse (the per-user limit, a taken name);
    /// its refusal comes back as `Ok(Err(..))` and writes nothing.
    pub async fn add_environment<E>(
        &self,
        id: &UserId,
        name: &str,
        profile: Option<&str>,
        by_admin: bool,
        port_range: Option<(u16, u16)>,
        check: impl Fn(&User) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(User, ExtraEnvironment), E>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host_port = match port_range {
                Some(range) => Some(self.pick_free_port(range)?),
                None => None,
            };
            let extra = ExtraEnvironment {
                name: name.to_owned(),
                slug: Slug::generate(),
                profile: profile.map(str::to_owned),
                host_port,
                shared_with: Vec::new(),
                created: unix_now(),
                by_admin,
            };
            let key = id.as_str().as_bytes();
            let res = self
                .kv
                .transaction(&[&self.users, &self.slugs, &self.ports], |t| {
                    let [users, slugs, ports] = t else {
                        unreachable!("three trees")
                    };
                    let Some(bytes) = users.get(key)? else {
                        return Err(TxError::Abort(Outcome::Store(StoreError::Gone {
                            what: "user",
                        })));
                    };
                    let mut user: User = decode(&bytes).map_err(|source| {
                        TxError::Abort(Outcome::Store(StoreError::Corrupt {
                            key: id.to_string(),
                            source,
                        }))
                    })?;
                    if let Err(e) = check(&user) {
                        return Err(TxError::Abort(Outcome::Refused(e)));
                    }
                    let conflict = |what: &'static str, value: String| {
                        TxError::Abort(Outcome::Store(StoreError::Conflict { what, value }))
                    };
                    if slugs.get(extra.slug.as_str().as_bytes())?.is_some() {
                        return Err(conflict("slug", extra.slug.to_string()));
                    }
                    if let Some(port) = extra.host_port {
                        if ports.get(port.to_be_bytes())?.is_some() {
                            return Err(conflict("host port", port.to_string()));
                        }
                        ports.insert(port.to_be_bytes(), key)?;
                    }
                    slugs.insert(extra.slug.as_str().as_bytes(), key)?;
                    user.environments.push(extra.clone());
                    users.insert(key, encode(&user))?;
                    Ok(user)
                })
                .await?;
            let user = match res {
                Ok(user) => user,
                Err(Outcome::Refused(e)) => return Ok(Err(e)),
                Err(Outcome::Store(StoreError::Conflict { what, .. }))
                    if (what == "host port" || what == "slug") && attempt < 8 =>
                {
                    continue;
                }
                Err(Outcome::Store(e)) => return Err(e),
            };
            self.publish_users(&[id])?;
            self.flush().await?;
            return Ok(Ok((user, extra)));
        }
    }

    /// Removes one of a user's extra environments with its indexes and container
    /// record, in one transaction. `None`: no such environment (any more).
    pub async fn remove_environment(
        &self,
        id: &UserId,
        name: &str,
    ) -> Result<Option<ExtraEnvironment>> {
        let key = id.as_str().as_bytes();
        let tombstone = deleted_users::tombstone(unix_now(), false);
        let res = self
            .kv
            .transaction(
                &[
                    &self.users,
                    &self.slugs,
                    &self.ports,
                    &self.containers,
                    &self.deleted_users,
                ],
                |t| {
                    let [users, slugs, ports, containers, deleted] = t else {
                        unreachable!("five trees")
                    };
                    let Some(bytes) = users.get(key)? else {
                        return Ok(None);
                    };
                    let mut user: User = decode(&bytes).map_err(|source| {
                        TxError::Abort(StoreError::Corrupt {
                            key: id.to_string(),
                            source,
                        })
                    })?;
                    let Some(i) = user.environments.iter().position(|e| e.name == name) else {
                        return Ok(None);
                    };
                    let extra = user.environments.remove(i);
                    slugs.remove(extra.slug.as_str().as_bytes())?;
                    if let Some(port) = extra.host_port {
                        ports.remove(port.to_be_bytes())?;
                    }
                    containers.remove(record_key(&user, Some(&extra.slug)).as_bytes())?;
                    // Reconcile removes its volume if Docker cannot now.
                    deleted.insert(
                        deleted_users::environment_key(&extra.slug).as_bytes(),
                        tombstone.as_slice(),
                    )?;
                    users.insert(key, encode(&user))?;
                    Ok(Some(extra))
                },
            )
            .await?;
        let removed = res?;
        if removed.is_some() {
            self.publish_users(&[id])?;
            self.flush().await?;
        }
        Ok(removed)
    }

    /// Drops grants to users that do not exist (one granted in the instant its
    /// grantee was being deleted): run with each purge (the server's first is at
    /// start-up), so every grant points at a user. Not at open: a store must read
    /// back exactly as written (restore verifies that).
    pub(super) async fn drop_dangling_shares(&self) -> Result<usize> {
        let mut fixed = 0;
        for item in self.users.iter() {
            let (key, value) = item?;
            let Ok(mut user) = decode::<User>(&value) else {
                continue;
            };
            let exists = |s: &super::records::Share| {
                self.users
                    .contains_key(s.user_id.as_str().as_bytes())
                    .unwrap_or(true)
            };
            let count = |u: &User| {
                u.shared_with.len()
                    + u.environments
                        .iter()
                        .map(|e| e.shared_with.len())
                        .sum::<usize>()
            };
            let before = count(&user);
            user.shared_with.retain(exists);
            for extra in &mut user.environments {
                extra.shared_with.retain(exists);
            }
            if count(&user) == before {
                continue;
            }
            // A concurrent update wins; the next purge looks again.
            if self
                .users
                .compare_and_swap(&key, Some(&value), Some(encode(&user).into()))
                .await?
            {
                fixed += 1;
            }
        }
        if fixed > 0 {
            tracing::info!(users = fixed, "dropped grants to deleted users");
        }
        Ok(fixed)
    }
}

/// Why an environment was not added: the store, or the caller's check.
enum Outcome<E> {
    Store(StoreError),
    Refused(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Share;
    use crate::store::tests::store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_changes_to_one_user_all_survive() {
        let (_d, s) = store();
        let owner = s.create_user("owner", None, None).await.unwrap();
        let mut grantees = Vec::new();
        for i in 0..8 {
            grantees.push(s.create_user(&format!("g{i}"), None, None).await.unwrap());
        }
        // Eight shares and a disable race on the same record: a write-back of
        // a stale copy would lose some of them.
        let mut tasks = Vec::new();
        for g in grantees.clone() {
            let (s, id) = (s.clone(), owner.id.clone());
            tasks.push(tokio::spawn(async move {
                s.modify_user(&id, |u| {
                    u.shared_with.push(Share {
                        user_id: g.id.clone(),
                        read_only: false,
                        granted: 0,
                    });
                    Ok::<_, ()>(())
                })
                .await
            }));
        }
        let (s2, id) = (s.clone(), owner.id.clone());
        tasks.push(tokio::spawn(async move {
            s2.modify_user(&id, |u| {
                u.disabled = true;
                Ok::<_, ()>(())
            })
            .await
        }));
        for t in tasks {
            t.await.unwrap().unwrap().unwrap();
        }
        let stored = s.snapshot().by_id(&owner.id).cloned().unwrap();
        assert!(stored.disabled);
        assert_eq!(stored.shared_with.len(), grantees.len());
        // A refusal writes nothing; a deleted user is gone, not a conflict.
        let refused = s.modify_user(&owner.id, |u| {
            u.disabled = false;
            Err("no")
        });
        assert_eq!(refused.await.unwrap().unwrap_err(), "no");
        assert!(s.snapshot().by_id(&owner.id).unwrap().disabled);
        s.delete_user(&owner, false).await.unwrap();
        let gone = s.modify_user(&owner.id, |_| Ok::<_, ()>(())).await;
        assert!(matches!(gone, Err(StoreError::Gone { what: "user" })));
    }

    #[tokio::test]
    async fn users_are_unique_and_indexed() {
        let (_d, s) = store();
        let a = s
            .create_user("alice", Some("a@x.org"), Some((30000, 30010)))
            .await
            .unwrap();
        let b = s
            .create_user("bob", None, Some((30000, 30010)))
            .await
            .unwrap();
        assert_ne!(a.slug, b.slug);
        assert_ne!(a.host_port, b.host_port);
        assert!(matches!(
            s.create_user("alice", None, None).await,
            Err(StoreError::Conflict {
                what: "user name",
                ..
            })
        ));
        assert!(matches!(
            s.create_user("carol", Some("a@x.org"), None).await,
            Err(StoreError::Conflict { what: "email", .. })
        ));
        let dir = s.snapshot();
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.by_slug(&a.slug).unwrap().name, "alice");
        assert_eq!(dir.by_name("bob").unwrap().id, b.id);

        s.delete_user(&a, false).await.unwrap();
        assert!(s.snapshot().by_name("alice").is_none());
        // The name and email are free again.
        s.create_user("alice", Some("a@x.org"), None).await.unwrap();
    }

    #[tokio::test]
    async fn deleting_a_user_takes_everything_pointing_at_them_and_leaves_a_tombstone() {
        let (_d, s) = store();
        let owner = s.create_user("owner", None, None).await.unwrap();
        let gone = s
            .create_user("gone", Some("g@x.org"), Some((30100, 30110)))
            .await
            .unwrap();
        let mut shared = owner.clone();
        shared.shared_with.push(Share {
            user_id: gone.id.clone(),
            read_only: false,
            granted: 0,
        });
        s.update_user(&shared).await.unwrap();
        let (sid, _) = s.create_session(&gone.id, 3600).await.unwrap();
        let (link, _) = s.issue_login_token(&gone.id, 900).await.unwrap();
        let (token, _) = s.create_api_token(&gone.id, "ci").await.unwrap();
        let (kept, _) = s.create_session(&owner.id, 3600).await.unwrap();

        s.delete_user(&gone, false).await.unwrap();
        assert!(s.snapshot().by_name("gone").is_none());
        assert!(s.session(&sid).unwrap().is_none());
        assert!(s.peek_login_token(&link).unwrap().is_err());
        assert!(s.api_token(&token).unwrap().is_none());
        let owner_now = s.snapshot().by_name("owner").cloned().unwrap();
        assert!(owner_now.shared_with.is_empty(), "the grant went too");
        assert!(s.session(&kept).unwrap().is_some(), "others' sessions stay");
        assert_eq!(s.was_deleted(gone.id.as_str()).unwrap(), Some(false));
        assert_eq!(s.was_deleted(owner.id.as_str()).unwrap(), None);
        // Its name, email and port are free again.
        s.create_user("gone", Some("g@x.org"), Some((30100, 30110)))
            .await
            .unwrap();
    }

    /// Concurrent creates that draw the same random host port both succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_with_a_tiny_port_range_get_distinct_ports() {
        let (_d, s) = store();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.create_user(&format!("p{i}"), None, Some((45100, 45107)))
                    .await
            }));
        }
        let mut ports = Vec::new();
        for t in tasks {
            ports.push(t.await.unwrap().unwrap().host_port.unwrap());
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 6);
    }
}
