//! The embedded sled database and the in-memory [`Directory`] of users.
//!
//! Only admin actions, logins and spawns write here. The forwardAuth hot path reads
//! the directory (an `Arc` snapshot behind a `watch` channel) and looks sessions up
//! in sled, whose reads are served from its page cache and never write.

pub mod backup;
pub mod records;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use crate::ids::{SessionId, Slug, UserId, random_bytes, random_token};
use crate::time::unix_now;
pub use records::{
    AdminToken, ApiToken, AuditEntry, ContainerRecord, Desired, LoginToken, Overrides, Session,
    SessionScope, Share, User,
};
use records::{DecodeError, decode, encode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at '{path}' is in use by another spawngate process")]
    Locked { path: String },
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("store record '{key}' is unreadable: {source}")]
    Corrupt { key: String, source: DecodeError },
    #[error("{what} '{value}' is already taken")]
    Conflict { what: &'static str, value: String },
    #[error("no free host port left in the configured range")]
    NoFreePort,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`Store::remove_where`] does with a record it cannot decode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    Remove,
    Keep,
}

/// Everything the hot path needs to know about users, rebuilt on every change.
#[derive(Debug, Default)]
pub struct Directory {
    by_slug: HashMap<Slug, Arc<User>>,
    by_id: HashMap<UserId, Arc<User>>,
    by_name: HashMap<String, Arc<User>>,
    by_email: HashMap<String, Arc<User>>,
}

impl Directory {
    pub fn by_slug(&self, slug: &Slug) -> Option<&Arc<User>> {
        self.by_slug.get(slug)
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
        let mut v: Vec<_> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// How a one-time login token was rejected. The login page shows one message for
/// all of them, so a guesser learns nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    names: sled::Tree,
    slugs: sled::Tree,
    emails: sled::Tree,
    ports: sled::Tree,
    sessions: sled::Tree,
    login_tokens: sled::Tree,
    admin_tokens: sled::Tree,
    api_tokens: sled::Tree,
    containers: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    /// Ids of deleted users (value: when, big-endian Unix seconds, then 1 if their
    /// volume was to be kept), written in the
    /// deleting transaction: reconcile removes what Docker still holds for them
    /// (a removal cut short by a crash or an unreachable Docker), and only for them.
    deleted_users: sled::Tree,
    /// sled 0.34 can deadlock when a transaction runs while a flush is in flight
    /// (sled issue #1412: the transaction waits for a write lock that the flusher's
    /// readers never release). Transactions and flushes take turns through this.
    flush_gate: Arc<tokio::sync::Mutex<()>>,
    /// Rebuilds of the directory run one at a time: otherwise a rebuild that read
    /// the users earlier could publish after a newer one and hide a new user.
    refresh_lock: Arc<std::sync::Mutex<()>>,
    /// Every write holds this shared and a backup holds it exclusively, so a backup
    /// sees the store between operations, never half-way through a multi-tree one
    /// (sled 0.34 has no consistent scan of several trees: its transactions cannot
    /// iterate, and `Db::export` reads the live trees). Never held across an await.
    snapshot_lock: Arc<std::sync::RwLock<()>>,
    /// Bumped as each write finishes (see [`Store::write_generation`]).
    writes: Arc<std::sync::atomic::AtomicU64>,
    directory: Arc<watch::Sender<Arc<Directory>>>,
}

/// A write in progress (see `Store::writing`); bumps the write generation when
/// dropped, i.e. once the write is visible.
struct Writing<'a> {
    _shared: std::sync::RwLockReadGuard<'a, ()>,
    writes: &'a std::sync::atomic::AtomicU64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// SHA-256 of a bearer secret: tokens are stored and looked up only by this hash, so
/// a copy of the database yields no usable token. Looking a hash up in a tree leaks
/// nothing useful about the secret through timing.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        restrict_permissions(dir);
        let db = sled::Config::new()
            .path(dir.join("db"))
            // sled's default page cache is 1 GiB; spawngate's data is small and
            // the hot path reads memory, not sled (see `auth::identity`).
            .cache_capacity(8 << 20)
            .open()
            .map_err(|e| match e {
                // sled wraps the lock failure in a custom error whose text names it.
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked {
                        path: dir.display().to_string(),
                    }
                }
                other => StoreError::Io(other),
            })?;
        let tree = |name: &str| db.open_tree(name);
        let store = Store {
            users: tree("users")?,
            names: tree("user_names")?,
            slugs: tree("user_slugs")?,
            emails: tree("user_emails")?,
            ports: tree("host_ports")?,
            sessions: tree("sessions")?,
            login_tokens: tree("login_tokens")?,
            admin_tokens: tree("admin_tokens")?,
            api_tokens: tree("api_tokens")?,
            containers: tree("containers")?,
            audit: tree("audit")?,
            meta: tree("meta")?,
            deleted_users: tree("deleted_users")?,
            flush_gate: Arc::new(tokio::sync::Mutex::new(())),
            refresh_lock: Arc::new(std::sync::Mutex::new(())),
            snapshot_lock: Arc::new(std::sync::RwLock::new(())),
            writes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            directory: Arc::new(watch::channel(Arc::new(Directory::default())).0),
            db,
        };
        store.refresh_directory()?;
        Ok(store)
    }

    /// Held while a write runs (see `snapshot_lock`). Not re-entrant: a method
    /// holding it calls no other method that takes it.
    fn writing(&self) -> Writing<'_> {
        Writing {
            _shared: self.snapshot_lock.read().unwrap_or_else(|p| p.into_inner()),
            writes: &self.writes,
        }
    }

    /// Changes with every finished write (sessions revoked, users changed, ...):
    /// what was derived from the store under one value may be stale under the
    /// next. forwardAuth's verified-cookie cache is keyed by it.
    pub fn write_generation(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drops grants to users that do not exist (one granted in the instant its
    /// grantee was being deleted): run with each purge (the server's first is at
    /// start-up), so every grant points at a user. Not at open: a store must read
    /// back exactly as written (restore verifies that).
    fn drop_dangling_shares(&self) -> Result<usize> {
        let _writing = self.writing();
        let mut fixed = 0;
        for item in self.users.iter() {
            let (key, value) = item?;
            let Ok(mut user) = decode::<User>(&value) else {
                continue;
            };
            let before = user.shared_with.len();
            user.shared_with.retain(|s| {
                self.users
                    .contains_key(s.user_id.as_str().as_bytes())
                    .unwrap_or(true)
            });
            if user.shared_with.len() == before {
                continue;
            }
            // A concurrent update wins; the next purge looks again.
            if self
                .users
                .compare_and_swap(&key, Some(&value), Some(encode(&user)))?
                .is_ok()
            {
                fixed += 1;
            }
        }
        if fixed > 0 {
            tracing::info!(users = fixed, "dropped grants to deleted users");
        }
        Ok(fixed)
    }

    /// A receiver that always holds the latest directory.
    pub fn directory(&self) -> watch::Receiver<Arc<Directory>> {
        self.directory.subscribe()
    }

    /// The current directory snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Directory> {
        self.directory.borrow().clone()
    }

    fn refresh_directory(&self) -> Result<()> {
        let _one_at_a_time = self.refresh_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut dir = Directory::default();
        for item in self.users.iter() {
            let (key, value) = item?;
            let user: User = decode(&value).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            let user = Arc::new(user);
            dir.by_slug.insert(user.slug.clone(), user.clone());
            dir.by_name.insert(user.name.clone(), user.clone());
            if let Some(email) = &user.email {
                dir.by_email
                    .insert(email.to_ascii_lowercase(), user.clone());
            }
            dir.by_id.insert(user.id.clone(), user);
        }
        self.directory.send_replace(Arc::new(dir));
        Ok(())
    }

    /// Durably writes everything so far. Called after admin changes and logins, never
    /// on the forwardAuth path.
    pub async fn flush(&self) -> Result<()> {
        let _turn = self.flush_gate.lock().await;
        self.db.flush_async().await?;
        Ok(())
    }

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
        };
        let value = encode(&user);
        let id = user.id.as_str().as_bytes();
        let turn = self.flush_gate.lock().await;
        let writing = self.writing();
        let res = (
            &self.users,
            &self.names,
            &self.slugs,
            &self.emails,
            &self.ports,
        )
            .transaction(|(users, names, slugs, emails, ports)| {
                let conflict = |what: &'static str, value: &str| {
                    ConflictableTransactionError::Abort(StoreError::Conflict {
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
                    ports.insert(&port.to_be_bytes(), id)?;
                }
                names.insert(user.name.as_bytes(), id)?;
                slugs.insert(user.slug.as_str().as_bytes(), id)?;
                users.insert(id, value.as_slice())?;
                Ok(())
            });
        drop(writing);
        drop(turn);
        match res {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        // Committed: the directory shows it even if the flush below fails.
        self.refresh_directory()?;
        self.flush().await?;
        Ok(user)
    }

    fn pick_free_port(&self, (min, max): (u16, u16)) -> Result<u16> {
        let span = u32::from(max - min) + 1;
        // Random probing keeps allocation O(1) while the range is sparsely used and
        // avoids handing out a port another process on this host already holds.
        for _ in 0..256 {
            let r = u32::from_le_bytes(random_bytes::<4>()) % span;
            let port = min + r as u16;
            if self.ports.get(port.to_be_bytes())?.is_none()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return Ok(port);
            }
        }
        Err(StoreError::NoFreePort)
    }

    /// Rewrites a user's record (fields that are not indexed: overrides, disabled).
    pub async fn update_user(&self, user: &User) -> Result<()> {
        let id = user.id.as_str().as_bytes();
        let writing = self.writing();
        // Only an existing user is updated: a concurrent delete wins.
        let current = self.users.get(id)?;
        let res = match current {
            Some(current) => self
                .users
                .compare_and_swap(id, Some(current), Some(encode(user)))?,
            None => {
                return Err(StoreError::Conflict {
                    what: "deleted user",
                    value: user.name.clone(),
                });
            }
        };
        drop(writing);
        if res.is_err() {
            return Err(StoreError::Conflict {
                what: "user record",
                value: user.name.clone(),
            });
        }
        self.refresh_directory()?;
        self.flush().await
    }

    /// Deletes a user in one transaction with everything that points at them: their
    /// indexes, sessions, login links, personal tokens, container record and the
    /// grants other users gave them; and leaves a tombstone (see `deleted_users`).
    /// A crash leaves either all of it or none.
    /// `keep_volume` is recorded in the tombstone: reconcile removes the volume
    /// later only if it was to go at deletion time, whatever the config says by then.
    pub async fn delete_user(&self, user: &User, keep_volume: bool) -> Result<()> {
        let id = user.id.as_str().as_bytes();
        // Transactions cannot scan: find the keys first. A session created between
        // this scan and the commit is dropped by `purge_expired` (its user is gone).
        let sessions = self.keys_where::<Session>(&self.sessions, |s| s.user_id == user.id)?;
        let links = self.keys_where::<LoginToken>(&self.login_tokens, |t| {
            t.user_id.as_ref() == Some(&user.id)
        })?;
        let tokens = self.keys_where::<ApiToken>(&self.api_tokens, |t| t.user_id == user.id)?;
        let owners: Vec<UserId> = self
            .snapshot()
            .users()
            .iter()
            .filter(|o| o.shared_with.iter().any(|s| s.user_id == user.id))
            .map(|o| o.id.clone())
            .collect();
        let mut tombstone = unix_now().to_be_bytes().to_vec();
        tombstone.push(u8::from(keep_volume));
        let turn = self.flush_gate.lock().await;
        // One guard over the transaction: a backup holds the user and all that
        // points at them, or none of it.
        let writing = self.writing();
        let res = (
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
        )
            .transaction(
                |(users, names, slugs, emails, ports, containers, sess, login, api, deleted)| {
                    users.remove(id)?;
                    names.remove(user.name.as_bytes())?;
                    slugs.remove(user.slug.as_str().as_bytes())?;
                    if let Some(email) = &user.email {
                        emails.remove(email.as_bytes())?;
                    }
                    if let Some(port) = user.host_port {
                        ports.remove(&port.to_be_bytes())?;
                    }
                    containers.remove(id)?;
                    for key in &sessions {
                        sess.remove(key.as_ref())?;
                    }
                    for key in &links {
                        login.remove(key.as_ref())?;
                    }
                    for key in &tokens {
                        api.remove(key.as_ref())?;
                    }
                    for owner in &owners {
                        let key = owner.as_str().as_bytes();
                        let Some(bytes) = users.get(key)? else {
                            continue;
                        };
                        let mut record: User = decode(&bytes).map_err(|source| {
                            ConflictableTransactionError::Abort(StoreError::Corrupt {
                                key: owner.to_string(),
                                source,
                            })
                        })?;
                        record.shared_with.retain(|s| s.user_id != user.id);
                        users.insert(key, encode(&record))?;
                    }
                    deleted.insert(id, tombstone.as_slice())?;
                    Ok(())
                },
            );
        drop(writing);
        drop(turn);
        match res {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.refresh_directory()?;
        self.flush().await?;
        Ok(())
    }

    /// Whether `user_id` (a `spawngate.user_id` label) belonged to a deleted user:
    /// `Some(keep_volume)` as decided when they were deleted (a tombstone without
    /// the decision keeps the volume).
    pub fn was_deleted(&self, user_id: &str) -> Result<Option<bool>> {
        Ok(self
            .deleted_users
            .get(user_id.as_bytes())?
            .map(|v| v.get(8).is_none_or(|keep| *keep != 0)))
    }

    fn keys_where<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        pred: impl Fn(&T) -> bool,
    ) -> Result<Vec<sled::IVec>> {
        let mut keys = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            if decode::<T>(&value).map(|v| pred(&v)).unwrap_or(false) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Removes the records `pred` picks; unreadable ones go too when `unreadable`
    /// says so: short-lived records (sessions, links) that can never be used, but
    /// not durable ones (personal API tokens), which a newer build may have
    /// written and must survive a downgrade. Callers hold [`Store::writing`].
    fn remove_where<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        unreadable: Unreadable,
        pred: impl Fn(&T) -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        for item in tree.iter() {
            let (key, value) = item?;
            if decode::<T>(&value)
                .map(|v| pred(&v))
                .unwrap_or(unreadable == Unreadable::Remove)
            {
                tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    // --- sessions -------------------------------------------------------------------

    pub async fn create_session(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
    ) -> Result<(SessionId, Session)> {
        self.create_scoped_session(user_id, ttl_secs, None).await
    }

    /// A session for one app host (subdomain mode), or with `None` a sign-in session.
    pub async fn create_scoped_session(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
        scope: Option<SessionScope>,
    ) -> Result<(SessionId, Session)> {
        let now = unix_now();
        let sid = SessionId::generate();
        let session = Session {
            user_id: user_id.clone(),
            created: now,
            expires: now + ttl_secs,
            scope,
            generation: self.generation_of(user_id),
        };
        {
            let _writing = self.writing();
            self.sessions
                .insert(sid.as_str().as_bytes(), encode(&session))?;
        }
        self.flush().await?;
        Ok((sid, session))
    }

    /// A live session, or `None` if unknown, expired or unreadable.
    pub fn session(&self, sid: &SessionId) -> Result<Option<Session>> {
        let Some(bytes) = self.sessions.get(sid.as_str().as_bytes())? else {
            return Ok(None);
        };
        Ok(decode::<Session>(&bytes)
            .ok()
            .filter(|s| s.expires > unix_now()))
    }

    /// Revokes every session of a user at once; returns how many there were.
    pub async fn delete_sessions_of(&self, user_id: &UserId) -> Result<usize> {
        let n = {
            let _writing = self.writing();
            self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                &s.user_id == user_id
            })?
        };
        self.flush().await?;
        Ok(n)
    }

    /// The credential generation new sessions, links and tokens of `user_id` get:
    /// read before the record is written, so a disable in between (which raises it)
    /// makes the new credential void.
    fn generation_of(&self, user_id: &UserId) -> u32 {
        self.snapshot()
            .by_id(user_id)
            .map_or(0, |u| u.credential_generation)
    }

    /// Revokes every credential of a user: sessions (app-host sessions included, and
    /// with them any hand-off code in flight, which needs its parent session),
    /// unused login links and personal API tokens. Counts of each, in that order.
    pub async fn delete_credentials_of(&self, user_id: &UserId) -> Result<(usize, usize, usize)> {
        let (sessions, links, tokens) = {
            let _writing = self.writing();
            (
                self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                    &s.user_id == user_id
                })?,
                self.remove_where::<LoginToken>(&self.login_tokens, Unreadable::Remove, |t| {
                    t.user_id.as_ref() == Some(user_id)
                })?,
                self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                    &t.user_id == user_id
                })?,
            )
        };
        self.flush().await?;
        Ok((sessions, links, tokens))
    }

    /// Revokes a user's sessions except `keep` and the app sessions handed off from
    /// it (after a password change: whoever else was signed in is signed out).
    pub async fn delete_other_sessions(&self, user_id: &UserId, keep: &SessionId) -> Result<usize> {
        let mut removed = 0;
        let now = unix_now();
        let writing = self.writing();
        for item in self.sessions.iter() {
            let (key, value) = item?;
            if key.as_ref() == keep.as_str().as_bytes() {
                continue;
            }
            let Ok(session) = decode::<Session>(&value) else {
                continue;
            };
            let child_of_kept = session.scope.as_ref().is_some_and(|s| &s.parent == keep);
            if &session.user_id == user_id && !child_of_kept {
                self.sessions.remove(key)?;
                // Expired ones were signed out already.
                removed += usize::from(session.expires > now);
            }
        }
        drop(writing);
        self.flush().await?;
        Ok(removed)
    }

    pub async fn delete_session(&self, sid: &SessionId) -> Result<()> {
        {
            let _writing = self.writing();
            self.sessions.remove(sid.as_str().as_bytes())?;
        }
        self.flush().await
    }

    // --- one-time login tokens ------------------------------------------------------

    /// Issues a single-use login token; only its hash is stored.
    pub async fn issue_login_token(
        &self,
        user_id: &UserId,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        self.issue_token(Some(user_id.clone()), None, ttl_secs)
            .await
    }

    /// A sign-up link for an address without an account.
    pub async fn issue_signup_token(
        &self,
        email: &str,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        self.issue_token(None, Some(email.to_owned()), ttl_secs)
            .await
    }

    async fn issue_token(
        &self,
        user_id: Option<UserId>,
        signup_email: Option<String>,
        ttl_secs: i64,
    ) -> Result<(String, LoginToken)> {
        let token = random_token::<32>();
        let now = unix_now();
        let generation = user_id.as_ref().map_or(0, |id| self.generation_of(id));
        let record = LoginToken {
            user_id,
            signup_email,
            created: now,
            expires: now + ttl_secs,
            generation,
        };
        {
            let _writing = self.writing();
            self.login_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok((token, record))
    }

    /// Checks a login token without using it up (for the confirm page).
    pub fn peek_login_token(&self, token: &str) -> Result<Result<LoginToken, TokenRejection>> {
        let Some(bytes) = self.login_tokens.get(token_hash(token))? else {
            return Ok(Err(TokenRejection::Unknown));
        };
        Ok(check_token(&bytes))
    }

    /// Uses a login token up. `remove` is atomic, so of two concurrent confirmations
    /// exactly one succeeds.
    pub async fn consume_login_token(
        &self,
        token: &str,
    ) -> Result<Result<LoginToken, TokenRejection>> {
        let removed = {
            let _writing = self.writing();
            self.login_tokens.remove(token_hash(token))?
        };
        let Some(bytes) = removed else {
            return Ok(Err(TokenRejection::Unknown));
        };
        self.flush().await?;
        Ok(check_token(&bytes))
    }

    // --- personal API tokens -----------------------------------------------------------

    /// At most this many personal tokens per user.
    pub const MAX_API_TOKENS: usize = 20;

    /// Creates a personal token (`spawngate_…`): returned once, stored as a hash.
    pub async fn create_api_token(
        &self,
        user_id: &UserId,
        name: &str,
    ) -> Result<(String, ApiToken)> {
        if self.api_tokens_of(user_id)?.len() >= Self::MAX_API_TOKENS {
            return Err(StoreError::Conflict {
                what: "token limit for user",
                value: user_id.to_string(),
            });
        }
        let token = format!("spawngate_{}", random_token::<32>());
        let record = ApiToken {
            id: hex::encode(random_bytes::<6>()),
            user_id: user_id.clone(),
            name: name.to_owned(),
            created: unix_now(),
            generation: self.generation_of(user_id),
        };
        {
            let _writing = self.writing();
            self.api_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok((token, record))
    }

    pub fn api_token(&self, token: &str) -> Result<Option<ApiToken>> {
        Ok(self
            .api_tokens
            .get(token_hash(token))?
            .and_then(|b| decode::<ApiToken>(&b).ok()))
    }

    pub fn api_tokens_of(&self, user_id: &UserId) -> Result<Vec<ApiToken>> {
        let mut out = Vec::new();
        for item in self.api_tokens.iter() {
            let (_, value) = item?;
            if let Ok(t) = decode::<ApiToken>(&value)
                && &t.user_id == user_id
            {
                out.push(t);
            }
        }
        out.sort_by_key(|t| t.created);
        Ok(out)
    }

    /// Revokes one of the user's tokens by its id; `false` if there was none.
    pub async fn delete_api_token(&self, user_id: &UserId, id: &str) -> Result<bool> {
        let n = {
            let _writing = self.writing();
            self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                &t.user_id == user_id && t.id == id
            })?
        };
        self.flush().await?;
        Ok(n > 0)
    }

    // --- admin tokens ---------------------------------------------------------------

    pub async fn create_admin_token(&self, name: &str) -> Result<String> {
        let token = format!("sgadm_{}", random_token::<32>());
        let record = AdminToken {
            name: name.to_owned(),
            created: unix_now(),
        };
        {
            let _writing = self.writing();
            self.admin_tokens
                .insert(token_hash(&token), encode(&record))?;
        }
        self.flush().await?;
        Ok(token)
    }

    pub fn admin_token(&self, token: &str) -> Result<Option<AdminToken>> {
        Ok(self
            .admin_tokens
            .get(token_hash(token))?
            .and_then(|b| decode::<AdminToken>(&b).ok()))
    }

    // --- container records ----------------------------------------------------------

    pub fn container_record(&self, user_id: &UserId) -> Result<Option<ContainerRecord>> {
        let Some(bytes) = self.containers.get(user_id.as_str().as_bytes())? else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: format!("containers/{user_id}"),
                source,
            })
    }

    pub async fn put_container_record(&self, record: &ContainerRecord) -> Result<()> {
        self.write_container_record(record)?;
        self.flush().await
    }

    /// Writes without waiting for the disk (sled flushes within its interval); the
    /// caller flushes when durability matters.
    pub fn write_container_record(&self, record: &ContainerRecord) -> Result<()> {
        let _writing = self.writing();
        self.containers
            .insert(record.user_id.as_str().as_bytes(), encode(record))?;
        Ok(())
    }

    /// Records the last activity without flushing: called in batches by the culler,
    /// sled writes it out within its flush interval.
    pub fn note_activity(&self, user_id: &UserId, at: i64) -> Result<()> {
        let _writing = self.writing();
        if let Some(mut record) = self.container_record(user_id)? {
            record.last_activity = Some(at);
            self.containers
                .insert(user_id.as_str().as_bytes(), encode(&record))?;
        }
        Ok(())
    }

    // --- audit log ------------------------------------------------------------------

    /// Appends to the audit log. Keys are sled's monotonic ids, so iteration order is
    /// append order.
    pub fn audit(&self, actor: &str, action: &str, target: &str, detail: Option<String>) {
        let entry = AuditEntry {
            at: unix_now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        let writing = self.writing();
        let result = self.db.generate_id().and_then(|id| {
            self.audit
                .insert(id.to_be_bytes(), encode(&entry))
                .map(|_| ())
        });
        drop(writing);
        if let Err(e) = result {
            // The action itself happened; losing its audit line must not undo it.
            tracing::error!(error = %e, action, target, "cannot write audit log entry");
        }
        tracing::info!(target: "spawngate::audit", actor, action, subject = target, "audit");
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_entries(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for item in self.audit.iter().rev().take(limit) {
            let (_, value) = item?;
            if let Ok(entry) = decode::<AuditEntry>(&value) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    // --- meta -----------------------------------------------------------------------

    /// The HS256 key for session cookies: generated on first run, then kept, so
    /// sessions survive restarts.
    pub fn session_key(&self) -> Result<Vec<u8>> {
        self.meta_key("session_key")
    }

    /// The key per-container secrets are derived from (kept, so a restart does not
    /// invalidate the secrets running containers hold).
    pub fn container_key(&self) -> Result<Vec<u8>> {
        self.meta_key("container_key")
    }

    fn meta_key(&self, name: &str) -> Result<Vec<u8>> {
        let fresh = random_bytes::<32>();
        // compare_and_swap makes two racing first starts agree on one key.
        {
            let _writing = self.writing();
            let _ = self
                .meta
                .compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))?;
        }
        self.db.flush()?;
        Ok(self
            .meta
            .get(name)?
            .map(|v| v.to_vec())
            .unwrap_or_else(|| fresh.to_vec()))
    }

    /// Drops expired sessions and login tokens, and any session or token whose
    /// user no longer exists (one created while its user was being deleted).
    pub fn purge_expired(&self) -> Result<usize> {
        if self.drop_dangling_shares()? > 0 {
            self.refresh_directory()?;
        }
        let now = unix_now();
        let _writing = self.writing();
        let live = |id: &UserId| {
            self.users
                .contains_key(id.as_str().as_bytes())
                .unwrap_or(true)
        };
        Ok(
            self.remove_where::<Session>(&self.sessions, Unreadable::Remove, |s| {
                s.expires <= now || !live(&s.user_id)
            })? + self.remove_where::<LoginToken>(&self.login_tokens, Unreadable::Remove, |t| {
                t.expires <= now || t.user_id.as_ref().is_some_and(|id| !live(id))
            })? + self.remove_where::<ApiToken>(&self.api_tokens, Unreadable::Keep, |t| {
                !live(&t.user_id)
            })?,
        )
    }

    /// A cheap liveness check of the database (for `/readyz` and `spawngate check`).
    pub fn check(&self) -> Result<()> {
        self.meta.get("session_key")?;
        Ok(())
    }

    /// Whether the store can still write durably: a small record written and
    /// flushed (what `/readyz` asks; a full disk shows here first).
    pub async fn check_writable(&self) -> Result<()> {
        {
            let _writing = self.writing();
            self.meta
                .insert("health_probe", unix_now().to_be_bytes().to_vec())?;
        }
        self.flush().await
    }
}

fn check_token(bytes: &[u8]) -> Result<LoginToken, TokenRejection> {
    match decode::<LoginToken>(bytes) {
        Ok(t) if t.expires > unix_now() => Ok(t),
        Ok(_) => Err(TokenRejection::Expired),
        Err(_) => Err(TokenRejection::Unknown),
    }
}

/// The data directory holds secrets (session key, token hashes): owner only.
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict data directory permissions");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disable raises the generation in the same write as the flag: credentials
    /// issued before it are void even if the deletion after it never ran.
    #[tokio::test]
    async fn credentials_of_an_older_generation_are_not_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store.create_user("alice", None, None).await.unwrap();
        let (sid, _) = store.create_session(&alice.id, 60).await.unwrap();
        let (token, _) = store.create_api_token(&alice.id, "ci").await.unwrap();
        let (link, _) = store.issue_login_token(&alice.id, 60).await.unwrap();
        let mut disabled = alice.clone();
        disabled.credential_generation += 1;
        store.update_user(&disabled).await.unwrap();
        let now = store.snapshot().by_id(&alice.id).cloned().unwrap();
        assert!(!now.honours(store.session(&sid).unwrap().unwrap().generation));
        assert!(!now.honours(store.api_token(&token).unwrap().unwrap().generation));
        assert!(!now.honours(store.peek_login_token(&link).unwrap().unwrap().generation));
        let (fresh, _) = store.create_session(&alice.id, 60).await.unwrap();
        assert!(now.honours(store.session(&fresh).unwrap().unwrap().generation));
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
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

    #[tokio::test]
    async fn purging_drops_sessions_tokens_and_grants_of_users_that_do_not_exist() {
        let (_d, s) = store();
        let ghost = UserId::generate();
        let (sid, _) = s.create_session(&ghost, 3600).await.unwrap();
        let (token, _) = s.create_api_token(&ghost, "ci").await.unwrap();
        let mut owner = s.create_user("owner", None, None).await.unwrap();
        owner.shared_with.push(Share {
            user_id: ghost.clone(),
            read_only: true,
            granted: 0,
        });
        s.update_user(&owner).await.unwrap();
        assert_eq!(s.purge_expired().unwrap(), 2);
        assert!(s.session(&sid).unwrap().is_none());
        assert!(s.api_token(&token).unwrap().is_none());
        let owner = s.snapshot().by_name("owner").cloned().unwrap();
        assert!(owner.shared_with.is_empty(), "the dangling grant is gone");
    }

    #[tokio::test]
    async fn login_tokens_are_single_use_and_expire() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let (token, _) = s.issue_login_token(&u.id, 900).await.unwrap();
        assert!(s.peek_login_token(&token).unwrap().is_ok());
        assert_eq!(
            s.consume_login_token(&token)
                .await
                .unwrap()
                .unwrap()
                .user_id,
            Some(u.id.clone())
        );
        assert_eq!(
            s.consume_login_token(&token).await.unwrap().unwrap_err(),
            TokenRejection::Unknown
        );

        let (expired, _) = s.issue_login_token(&u.id, -1).await.unwrap();
        assert_eq!(
            s.consume_login_token(&expired).await.unwrap().unwrap_err(),
            TokenRejection::Expired
        );
        assert_eq!(
            s.consume_login_token("forged").await.unwrap().unwrap_err(),
            TokenRejection::Unknown
        );
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed() {
        let (dir, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let (login, _) = s.issue_login_token(&u.id, 900).await.unwrap();
        let admin = s.create_admin_token("ops").await.unwrap();
        let (personal, _) = s.create_api_token(&u.id, "ci").await.unwrap();
        assert_eq!(s.api_token(&personal).unwrap().unwrap().user_id, u.id);
        assert_eq!(s.admin_token(&admin).unwrap().unwrap().name, "ops");
        assert!(s.admin_token("sgadm_nope").unwrap().is_none());
        drop(s);
        // No byte sequence of either token is on disk.
        let mut all = Vec::new();
        for entry in walk(dir.path()) {
            all.extend(std::fs::read(entry).unwrap_or_default());
        }
        for secret in [&login, &admin, &personal] {
            assert!(!all.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[tokio::test]
    async fn sessions_expire_and_are_removed_with_the_user() {
        let (_d, s) = store();
        let u = s.create_user("alice", None, None).await.unwrap();
        let (sid, _) = s.create_session(&u.id, 3600).await.unwrap();
        assert!(s.session(&sid).unwrap().is_some());
        let (old, _) = s.create_session(&u.id, -1).await.unwrap();
        assert!(s.session(&old).unwrap().is_none());
        assert_eq!(s.purge_expired().unwrap(), 1);
        s.delete_user(&u, false).await.unwrap();
        assert!(s.session(&sid).unwrap().is_none());
    }

    /// Regression: concurrent user creation while other writes flush used to hang
    /// sled for good. Bounded: a deadlock fails the test instead of hanging it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_and_flushes_do_not_deadlock() {
        let (_d, s) = store();
        let work = async {
            let mut tasks = Vec::new();
            for i in 0..40 {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let u = s.create_user(&format!("u{i}"), None, None).await.unwrap();
                    s.create_session(&u.id, 60).await.unwrap();
                    s.issue_login_token(&u.id, 60).await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), work)
            .await
            .expect("store deadlocked");
        assert_eq!(s.snapshot().len(), 40);
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

    #[tokio::test]
    async fn audit_log_is_append_only_newest_first() {
        let (_d, s) = store();
        s.audit("operator", "user.create", "alice", None);
        s.audit("system", "container.stop", "alice", Some("idle".into()));
        let entries = s.audit_entries(10).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].action, "container.stop");
        assert_eq!(entries[1].action, "user.create");
        assert_eq!(s.audit_entries(1).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn session_key_is_stable_across_reopen_and_store_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = {
            let s = Store::open(dir.path()).unwrap();
            let k = s.session_key().unwrap();
            match Store::open(dir.path()) {
                Err(StoreError::Locked { .. }) => {}
                Err(other) => panic!("expected Locked, got {other:?}"),
                Ok(_) => panic!("expected Locked, got a second handle"),
            }
            k
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.session_key().unwrap(), k1);
        assert_eq!(k1.len(), 32);
    }
}
