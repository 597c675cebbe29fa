//! The PostgreSQL backend of the key-value layer: one table shared by every
//! replica, mirrored in each replica's memory.
//!
//! - **One table.** `spawngate_kv(tree, key, value, version)`: a row per record;
//!   a removal leaves a tombstone (`value` NULL) so other replicas learn of it.
//!   `version` comes from one sequence and is taken under one advisory lock that
//!   every write transaction holds, so versions become visible in increasing
//!   order: "everything after version v" is a complete list of what changed.
//! - **The mirror.** Each replica loads every live record at start-up and then
//!   applies what changed after the last version it saw, whenever PostgreSQL
//!   notifies it (`LISTEN spawngate_kv`), every few seconds regardless, and in
//!   full after a reconnect that missed too much (tombstones are dropped after an
//!   hour; the horizon says which). Reads are memory reads.
//! - **Writes.** A transaction takes the write lock, catches up, runs its closure
//!   on the now current mirror, writes, notifies and commits: no conflicts and no
//!   retries, at the price of one writer at a time across replicas (writes are
//!   admin actions, logins and starts, not requests). Blind writes are queued and
//!   committed in order by the next transaction or the background writer;
//!   [`Replica::flush`] waits for them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;

// sled's byte buffer, the value type both backends hand the key-value layer.
use super::{Result, StoreError};
use sled::IVec;

/// The schema migrations, in order; the database records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the records, their change sequence and the tombstone horizon.
    "CREATE SEQUENCE spawngate_kv_version;
     CREATE TABLE spawngate_kv (
         tree text NOT NULL,
         key bytea NOT NULL,
         value bytea,
         version bigint NOT NULL,
         changed_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (tree, key)
     );
     CREATE INDEX spawngate_kv_by_version ON spawngate_kv (version);
     CREATE TABLE spawngate_kv_horizon (
         one boolean PRIMARY KEY DEFAULT true CHECK (one),
         version bigint NOT NULL
     );
     INSERT INTO spawngate_kv_horizon (version) VALUES (0);",
];

/// Advisory lock keys (one namespace per purpose).
const WRITE_LOCK: i64 = 0x5350_4157_4e01;
const MIGRATE_LOCK: i64 = 0x5350_4157_4e02;
pub(crate) const LEADER_LOCK: i64 = 0x5350_4157_4e03;
/// The first half of the two-part advisory lock key of one environment's start.
const START_LOCKS: i32 = 0x5350_4701;

const CHANNEL: &str = "spawngate_kv";
/// A replica catches up this often even without a notification.
const POLL: Duration = Duration::from_secs(5);
/// The longest one write transaction or catch-up may take: past it the
/// connection is dropped (a silent network) and the call fails.
const BOUND: Duration = Duration::from_secs(10);
/// Catch-ups asked for by lookups that missed start at most this often: a
/// flood of unknown cookies or tokens costs PostgreSQL four queries a second.
const MISS_REFRESH_SPACING: Duration = Duration::from_millis(250);
/// Tombstones older than this are dropped; a replica away longer reloads in full.
const TOMBSTONE_TTL_SECS: f64 = 3600.0;

/// One record's value as the mirror holds it.
struct Held {
    value: IVec,
    version: i64,
}

#[derive(Default)]
struct Mirror {
    trees: HashMap<String, BTreeMap<Vec<u8>, Held>>,
}

impl Mirror {
    /// Sets (`Some`) or removes (`None`) one record. `version: None` keeps the
    /// version held (a blind write not committed yet: what PostgreSQL numbers
    /// it later wins over it).
    fn put(&mut self, tree: &str, key: &[u8], value: Option<&IVec>, version: Option<i64>) {
        let records = self.trees.entry(tree.to_owned()).or_default();
        match value {
            Some(v) => {
                let version = version.unwrap_or_else(|| records.get(key).map_or(0, |h| h.version));
                records.insert(
                    key.to_vec(),
                    Held {
                        value: v.clone(),
                        version,
                    },
                );
            }
            None => {
                records.remove(key);
            }
        }
    }
}

/// A write not yet in PostgreSQL.
#[derive(Clone)]
struct Op {
    tree: &'static str,
    key: Vec<u8>,
    value: Option<IVec>,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    /// Blind writes queued since start-up.
    queued: u64,
}

/// Where the background writer stands.
#[derive(Clone, Default)]
struct Committed {
    /// Blind writes up to this count are in PostgreSQL.
    upto: u64,
    /// The last attempt, meant to commit up to this count, failed with this.
    failed: Option<(u64, String)>,
}

/// What another replica changed, as the store needs it.
pub(crate) struct Changes {
    /// The mirror was reloaded: anything may have changed.
    pub everything: bool,
    /// Tree and key of each changed record.
    pub keys: Vec<(String, Vec<u8>)>,
}

type OnChange = Box<dyn Fn(&Changes) + Send + Sync>;

/// This process's connection to the shared store.
pub(crate) struct Replica {
    config: tokio_postgres::Config,
    mirror: RwLock<Mirror>,
    /// The writing connection; `None` after it broke (reconnected on next use).
    conn: tokio::sync::Mutex<Option<Client>>,
    /// The last version applied to the mirror; held while catching up, so
    /// catch-ups apply in order.
    seen: tokio::sync::Mutex<i64>,
    pending: Mutex<Pending>,
    committed: watch::Sender<Committed>,
    wake_writer: Arc<Notify>,
    on_change: std::sync::OnceLock<OnChange>,
    /// `Ok` while notifications flow; the reason otherwise (for `/readyz`).
    listening: watch::Sender<std::result::Result<(), String>>,
    last_id: AtomicU64,
    /// When the last catch-up asked for by a miss began (see `refresh_for_miss`).
    miss_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    stop: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// Connection settings from `store.url`, with bounded waits: a PostgreSQL that
/// does not answer is noticed in seconds, not at the OS's TCP timeout.
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("store.url is not a PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(3));
    }
    // A PostgreSQL that went silent (not closed) is noticed in ~16 s rather
    // than the OS default of hours; every call has its own bound too (`BOUND`).
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        // Unacknowledged data in flight (keepalives do not fire then) gives up
        // after this too, not after TCP's retransmissions (~15 minutes).
        .tcp_user_timeout(Duration::from_secs(15))
        .application_name("spawngate");
    Ok(config)
}

/// A client whose connection runs on its own task; `notify` receives a message
/// per notification until the connection ends.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    notify: Option<mpsc::UnboundedSender<()>>,
) -> Result<Client> {
    Ok(connect_watched(config, notify).await?.0)
}

/// [`connect`], and a receiver that resolves the moment the connection ends
/// (closed by the server, or broken).
pub(crate) async fn connect_watched(
    config: &tokio_postgres::Config,
    notify: Option<mpsc::UnboundedSender<()>>,
) -> Result<(Client, tokio::sync::oneshot::Receiver<()>)> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(unavailable)?;
    let (ended, on_end) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Dropped when this task ends: the receiver learns the connection did.
        let _ended = ended;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(tx) = &notify {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                    break;
                }
            }
        }
    });
    Ok((client, on_end))
}

impl Replica {
    /// Connects, migrates the schema, loads the mirror and starts following changes.
    pub(crate) async fn open(url: &str) -> Result<Arc<Replica>> {
        let mut config = parse_url(url)?;
        // Named apart from other replicas' sessions (see `others_connected`).
        config.application_name(format!(
            "spawngate {}",
            hex::encode(crate::ids::random_bytes::<6>())
        ));
        let mut client = connect(&config, None).await?;
        migrate(&mut client).await?;
        let replica = Arc::new(Replica {
            config,
            mirror: RwLock::new(Mirror::default()),
            conn: tokio::sync::Mutex::new(Some(client)),
            seen: tokio::sync::Mutex::new(0),
            pending: Mutex::new(Pending::default()),
            committed: watch::channel(Committed::default()).0,
            wake_writer: Arc::new(Notify::new()),
            on_change: std::sync::OnceLock::new(),
            // Current as of the load below; the follower reports it if that ends.
            listening: watch::channel(Ok(())).0,
            last_id: AtomicU64::new(0),
            miss_refresh: tokio::sync::Mutex::new(None),
            stop: CancellationToken::new(),
        });
        {
            let conn = replica.conn.lock().await;
            let client = conn.as_ref().ok_or_else(|| unavailable("not connected"))?;
            let mut seen = replica.seen.lock().await;
            replica.reload(client, &mut seen).await?;
        }
        tokio::spawn(listen(Arc::downgrade(&replica), replica.stop.clone()));
        tokio::spawn(write_behind(
            Arc::downgrade(&replica),
            replica.wake_writer.clone(),
            replica.stop.clone(),
        ));
        Ok(replica)
    }

    /// The writing connection, connected afresh if it broke.
    async fn connected<'c>(&self, conn: &'c mut Option<Client>) -> Result<&'c mut Client> {
        // A connection the server closed (a restart) is noticed here, before
        // a write fails on it.
        if conn.as_ref().is_none_or(Client::is_closed) {
            *conn = Some(connect(&self.config, None).await?);
        }
        conn.as_mut().ok_or_else(|| unavailable("not connected"))
    }

    /// Connection settings of this replica's sessions (its leader campaign's too).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// How many sessions of other spawngate processes use this database now.
    pub(crate) async fn others_connected(&self) -> Result<i64> {
        let client = connect(&self.config, None).await?;
        let mine = self.config.get_application_name().unwrap_or_default();
        Ok(client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND application_name LIKE 'spawngate %' AND application_name <> $1",
                &[&mine],
            )
            .await
            .map_err(unavailable)?
            .get(0))
    }

    /// Called with every change another replica made (once; the store sets it).
    pub(crate) fn on_change(&self, f: OnChange) {
        let _ = self.on_change.set(f);
    }

    /// `Ok` while this replica follows the database's changes.
    pub(crate) fn health(&self) -> std::result::Result<(), String> {
        self.listening.borrow().clone()
    }

    pub(crate) fn get(&self, tree: &str, key: &[u8]) -> Option<IVec> {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        mirror.trees.get(tree)?.get(key).map(|h| h.value.clone())
    }

    pub(crate) fn len(&self, tree: &str) -> usize {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        mirror.trees.get(tree).map_or(0, BTreeMap::len)
    }

    pub(crate) fn scan(&self, tree: &str, prefix: &[u8]) -> Vec<(IVec, IVec)> {
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let Some(records) = mirror.trees.get(tree) else {
            return Vec::new();
        };
        records
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, h)| (IVec::from(k.as_slice()), h.value.clone()))
            .collect()
    }

    /// Unique and increasing within this process, roughly in time order across
    /// replicas (audit keys): microseconds since the epoch, shifted, plus randomness.
    pub(crate) fn generate_id(&self) -> u64 {
        let micros = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
        )
        .unwrap_or(u64::MAX >> 12);
        // 51 bits of microseconds (until 2041), 12 random: two replicas
        // writing in the same microsecond collide once in 4096.
        let noise = u64::from(u16::from_le_bytes(crate::ids::random_bytes::<2>()) & 0x0fff);
        let fresh = (micros << 12) | noise;
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = fresh.max(last + 1);
            match self
                .last_id
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => last = now,
            }
        }
    }

    /// Applies a blind write to the mirror now and queues it for PostgreSQL.
    pub(crate) fn write_behind(&self, tree: &'static str, key: &[u8], value: Option<IVec>) {
        {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            mirror.put(tree, key, value.as_ref(), None);
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.ops.push(Op {
                tree,
                key: key.to_vec(),
                value,
            });
            pending.queued += 1;
        }
        self.wake_writer.notify_one();
    }

    /// Waits until every blind write queued so far is in PostgreSQL, or fails
    /// with the reason the attempt to write them failed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let target = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queued;
        let mut committed = self.committed.subscribe();
        self.wake_writer.notify_one();
        loop {
            {
                let now = committed.borrow_and_update();
                if now.upto >= target {
                    return Ok(());
                }
                if let Some((upto, error)) = &now.failed
                    && *upto >= target
                {
                    return Err(StoreError::Unavailable(error.clone()));
                }
            }
            if committed.changed().await.is_err() {
                return Err(unavailable("the store closed"));
            }
        }
    }

    /// Runs `f` against the current state under the write lock and commits what
    /// it wrote, together with the queued blind writes. `Ok(Err(e))`: `f`
    /// refused (the blind writes are committed regardless).
    pub(crate) async fn transaction<R, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&PgTx) -> std::result::Result<R, E>,
    ) -> Result<std::result::Result<R, E>> {
        let mut conn = self.conn.lock().await;
        let client = self.connected(&mut conn).await?;
        let mut taken = self.take_pending();
        let upto = taken.upto;
        let mut seen = self.seen.lock().await;
        let (result, timed_out) = match tokio::time::timeout(
            BOUND,
            self.commit(client, &mut seen, &taken.ops, f),
        )
        .await
        {
            Ok(result) => (result, false),
            Err(_) => (
                Err(unavailable(format!(
                    "no answer within {} s",
                    BOUND.as_secs()
                ))),
                true,
            ),
        };
        match result {
            Ok(outcome) => {
                drop(seen);
                taken.ops.clear();
                self.committed.send_modify(|c| c.upto = c.upto.max(upto));
                Ok(outcome)
            }
            Err(e) => {
                drop(seen);
                // `taken` puts the queued writes back as it drops.
                drop(taken);
                if timed_out || client.is_closed() {
                    *conn = None;
                }
                let reason = e.to_string();
                self.committed
                    .send_modify(|c| c.failed = Some((upto, reason.clone())));
                Err(e)
            }
        }
    }

    /// Takes the queued blind writes for a commit. They go back to the front
    /// of the queue unless the commit clears them: also when the commit's
    /// future is dropped half-way (a request cancelled, leadership lost).
    fn take_pending(&self) -> Taken<'_> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        Taken {
            pending: &self.pending,
            ops: std::mem::take(&mut pending.ops),
            upto: pending.queued,
        }
    }

    async fn commit<R, E>(
        self: &Arc<Self>,
        client: &mut Client,
        seen: &mut i64,
        queued: &[Op],
        f: impl FnOnce(&PgTx) -> std::result::Result<R, E>,
    ) -> Result<std::result::Result<R, E>> {
        let txn = client.transaction().await.map_err(unavailable)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await
            .map_err(unavailable)?;
        self.catch_up(&txn, seen).await?;
        let tx = PgTx {
            replica: self.clone(),
            overlay: RefCell::new(HashMap::new()),
            writes: RefCell::new(Vec::new()),
        };
        let outcome = f(&tx);
        let mut ops: Vec<Op> = queued.to_vec();
        if outcome.is_ok() {
            ops.extend(tx.writes.into_inner());
        }
        if ops.is_empty() {
            txn.commit().await.map_err(unavailable)?;
            return Ok(outcome);
        }
        // The last write of each key wins; one statement may touch a row once.
        let mut last: HashMap<(&str, &[u8]), usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            last.insert((op.tree, op.key.as_slice()), i);
        }
        let mut order: Vec<usize> = last.into_values().collect();
        order.sort_unstable();
        let trees: Vec<&str> = order.iter().map(|&i| ops[i].tree).collect();
        let keys: Vec<&[u8]> = order.iter().map(|&i| ops[i].key.as_slice()).collect();
        let values: Vec<Option<&[u8]>> = order.iter().map(|&i| ops[i].value.as_deref()).collect();
        let rows = txn
            .query(
                "INSERT INTO spawngate_kv (tree, key, value, version)
                 SELECT t, k, v, nextval('spawngate_kv_version')
                 FROM unnest($1::text[], $2::bytea[], $3::bytea[]) WITH ORDINALITY AS u(t, k, v, n)
                 ORDER BY n
                 ON CONFLICT (tree, key) DO UPDATE
                 SET value = EXCLUDED.value, version = EXCLUDED.version, changed_at = now()
                 RETURNING version",
                &[&trees, &keys, &values],
            )
            .await
            .map_err(unavailable)?;
        let newest = rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(0);
        txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &newest.to_string()])
            .await
            .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)?;
        // Committed: the mirror takes the versions PostgreSQL gave.
        {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            for (&i, row) in order.iter().zip(&rows) {
                let op = &ops[i];
                mirror.put(op.tree, &op.key, op.value.as_ref(), Some(row.get(0)));
            }
        }
        // Every version up to ours was caught up under the lock.
        *seen = (*seen).max(newest);
        Ok(outcome)
    }

    /// Applies what changed after `seen` (or reloads everything when
    /// tombstones that far back are gone), then tells the store.
    async fn catch_up(
        &self,
        client: &impl tokio_postgres::GenericClient,
        seen: &mut i64,
    ) -> Result<()> {
        let horizon: i64 = client
            .query_one("SELECT version FROM spawngate_kv_horizon", &[])
            .await
            .map_err(unavailable)?
            .get(0);
        if horizon > *seen {
            return self.reload(client, seen).await;
        }
        let rows = client
            .query(
                "SELECT tree, key, value, version FROM spawngate_kv WHERE version > $1 ORDER BY version",
                &[&*seen],
            )
            .await
            .map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(rows.len());
        {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            for row in &rows {
                let tree: String = row.get(0);
                let key: Vec<u8> = row.get(1);
                let value: Option<Vec<u8>> = row.get(2);
                let version: i64 = row.get(3);
                *seen = (*seen).max(version);
                let value = value.map(IVec::from);
                mirror.put(&tree, &key, value.as_ref(), Some(version));
                keys.push((tree, key));
            }
        }
        self.changed(&Changes {
            everything: false,
            keys,
        });
        Ok(())
    }

    /// Replaces the mirror with every live record.
    async fn reload(
        &self,
        client: &impl tokio_postgres::GenericClient,
        seen: &mut i64,
    ) -> Result<()> {
        // The newest version first: a write committed during the scan is seen
        // again by the next catch-up rather than missed.
        // Not below the horizon either: if the newest rows were tombstones the
        // sweep dropped, the next catch-up must not take this for a gap again.
        let newest: i64 = client
            .query_one(
                "SELECT greatest(coalesce(max(version), 0),
                                 (SELECT version FROM spawngate_kv_horizon)) FROM spawngate_kv",
                &[],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        let rows = client
            .query(
                "SELECT tree, key, value, version FROM spawngate_kv WHERE value IS NOT NULL",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let mut fresh = Mirror::default();
        for row in &rows {
            let tree: String = row.get(0);
            let value: Vec<u8> = row.get(2);
            fresh.trees.entry(tree).or_default().insert(
                row.get(1),
                Held {
                    value: IVec::from(value),
                    version: row.get(3),
                },
            );
        }
        // This replica's blind writes not committed yet stay visible here.
        {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for op in &pending.ops {
                fresh.put(op.tree, &op.key, op.value.as_ref(), None);
            }
        }
        *self.mirror.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        *seen = newest.max(*seen);
        self.changed(&Changes {
            everything: true,
            keys: Vec::new(),
        });
        Ok(())
    }

    fn changed(&self, changes: &Changes) {
        if let Some(f) = self.on_change.get() {
            f(changes);
        }
    }

    /// Applies what other replicas committed up to now, without waiting for
    /// their notification (a credential this replica has not seen yet may have
    /// been issued by another a moment ago).
    pub(crate) async fn refresh(self: &Arc<Self>) -> Result<()> {
        let mut conn = self.conn.lock().await;
        let client = self.connected(&mut conn).await?;
        let mut seen = self.seen.lock().await;
        let caught_up = tokio::time::timeout(BOUND, self.catch_up(client, &mut seen))
            .await
            .unwrap_or_else(|_| Err(unavailable("no answer in time")));
        if caught_up.is_err() {
            // Broken or silent: the next call connects afresh.
            *conn = None;
        }
        caught_up
    }

    /// Waits for the advisory lock of `name` (an environment's slug) on a
    /// connection of its own and returns it: the lock is held until the returned
    /// client is dropped, or its process dies (PostgreSQL ends the session).
    pub(crate) async fn lock_named(&self, name: &str) -> Result<Client> {
        let client = connect(&self.config, None).await?;
        // Two-part key: a namespace, and 32 bits of the name's hash (a collision
        // only makes two starts take turns).
        let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
        let part = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        client
            .execute("SELECT pg_advisory_lock($1, $2)", &[&START_LOCKS, &part])
            .await
            .map_err(unavailable)?;
        Ok(client)
    }

    /// [`Self::refresh`] for a lookup that missed at `arrived`: one catch-up
    /// that began after it serves every miss waiting, and catch-ups start at
    /// most every [`MISS_REFRESH_SPACING`].
    pub(crate) async fn refresh_for_miss(
        self: &Arc<Self>,
        arrived: tokio::time::Instant,
    ) -> Result<()> {
        let mut last = self.miss_refresh.lock().await;
        if let Some(began) = *last {
            if began >= arrived {
                return Ok(());
            }
            tokio::time::sleep_until(began + MISS_REFRESH_SPACING).await;
        }
        let began = tokio::time::Instant::now();
        self.refresh().await?;
        *last = Some(began);
        Ok(())
    }

    /// Drops tombstones older than [`TOMBSTONE_TTL_SECS`] (the leader's sweep).
    pub(crate) async fn drop_old_tombstones(self: &Arc<Self>) -> Result<u64> {
        let mut conn = self.conn.lock().await;
        let client = self.connected(&mut conn).await?;
        let txn = client.transaction().await.map_err(unavailable)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await
            .map_err(unavailable)?;
        let rows = txn
            .query(
                "DELETE FROM spawngate_kv WHERE value IS NULL
                 AND changed_at < now() - make_interval(secs => $1) RETURNING version",
                &[&TOMBSTONE_TTL_SECS],
            )
            .await
            .map_err(unavailable)?;
        if let Some(newest) = rows.iter().map(|r| r.get::<_, i64>(0)).max() {
            txn.execute(
                "UPDATE spawngate_kv_horizon SET version = greatest(version, $1)",
                &[&newest],
            )
            .await
            .map_err(unavailable)?;
        }
        txn.commit().await.map_err(unavailable)?;
        Ok(rows.len() as u64)
    }

    /// Every live record, read in one consistent snapshot of the database (a
    /// backup of the shared store).
    pub(crate) async fn export(&self) -> Result<Vec<(String, Vec<u8>, Vec<u8>)>> {
        let mut client = connect(&self.config, None).await?;
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(unavailable)?;
        let rows = txn
            .query(
                "SELECT tree, key, value FROM spawngate_kv WHERE value IS NOT NULL ORDER BY tree, key",
                &[],
            )
            .await
            .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

/// Applies the migrations this build knows that the database has not run yet;
/// refuses a database a newer spawngate migrated.
async fn migrate(client: &mut Client) -> Result<()> {
    let txn = client.transaction().await.map_err(unavailable)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(unavailable)?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS spawngate_schema (version integer NOT NULL)")
        .await
        .map_err(unavailable)?;
    let ran: i32 = txn
        .query_opt("SELECT version FROM spawngate_schema", &[])
        .await
        .map_err(unavailable)?
        .map_or(0, |r| r.get(0));
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if ran > known {
        return Err(StoreError::Unavailable(format!(
            "the PostgreSQL store's schema is version {ran}, newer than this spawngate knows \
             ({known}): it was written by a newer spawngate; upgrade this one"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(ran as usize) {
        txn.batch_execute(sql).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "PostgreSQL: schema migration {} failed: {e}",
                i + 1
            ))
        })?;
        tracing::info!(version = i + 1, "PostgreSQL store schema migrated");
    }
    if ran == 0 {
        txn.execute(
            "INSERT INTO spawngate_schema (version) VALUES ($1)",
            &[&known],
        )
        .await
        .map_err(unavailable)?;
    } else if ran < known {
        txn.execute("UPDATE spawngate_schema SET version = $1", &[&known])
            .await
            .map_err(unavailable)?;
    }
    txn.commit().await.map_err(unavailable)?;
    Ok(())
}

/// Follows the database's changes on a connection of its own until the replica
/// is dropped, reconnecting (and catching up) after every break.
async fn listen(replica: Weak<Replica>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(config) = replica.upgrade().map(|r| r.config.clone()) else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connected = async {
            let client = connect(&config, Some(tx)).await?;
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(unavailable)?;
            Ok::<_, StoreError>(client)
        };
        let client = tokio::select! {
            c = connected => c,
            () = stop.cancelled() => return,
        };
        match client {
            Ok(client) => {
                backoff = Duration::from_millis(200);
                loop {
                    // Catch up first: what changed while not listening is applied
                    // before the replica reports itself current.
                    let Some(this) = replica.upgrade() else {
                        return;
                    };
                    let caught_up = {
                        let mut seen = this.seen.lock().await;
                        tokio::time::timeout(BOUND, this.catch_up(&client, &mut seen))
                            .await
                            .unwrap_or_else(|_| Err(unavailable("no answer in time")))
                    };
                    match caught_up {
                        Ok(()) => {
                            this.listening.send_if_modified(|s| {
                                let was = s.is_ok();
                                *s = Ok(());
                                !was
                            });
                        }
                        Err(e) => {
                            let _ = this.listening.send_replace(Err(e.to_string()));
                            break;
                        }
                    }
                    drop(this);
                    tokio::select! {
                        got = rx.recv() => {
                            if got.is_none() {
                                break;
                            }
                            // Many notifications, one catch-up.
                            while rx.try_recv().is_ok() {}
                        }
                        () = tokio::time::sleep(POLL) => {}
                        () = stop.cancelled() => return,
                    }
                }
                if let Some(this) = replica.upgrade() {
                    let _ = this
                        .listening
                        .send_replace(Err("the connection to PostgreSQL broke".to_owned()));
                }
                tracing::warn!("lost the PostgreSQL change feed; reconnecting");
            }
            Err(e) => {
                if let Some(this) = replica.upgrade() {
                    let _ = this.listening.send_replace(Err(e.to_string()));
                }
                tracing::warn!(error = %e, "cannot follow PostgreSQL changes; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Commits queued blind writes soon after they are queued (a transaction
/// commits them too), retrying with backoff while PostgreSQL is away.
async fn write_behind(replica: Weak<Replica>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(this) = replica.upgrade() else {
            return;
        };
        let waiting = this
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ops
            .is_empty();
        if waiting {
            drop(this);
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
            continue;
        }
        match this.transaction(|_| Ok::<(), ()>(())).await {
            Ok(_) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "queued store writes not committed yet; retrying");
                drop(this);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Blind writes taken for one commit (see [`Replica::take_pending`]).
struct Taken<'a> {
    pending: &'a Mutex<Pending>,
    ops: Vec<Op>,
    /// The count of blind writes queued when they were taken.
    upto: u64,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        // Ahead of what came in meanwhile: the order of writes holds.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.ops.splice(0..0, std::mem::take(&mut self.ops));
    }
}

/// A transaction's own writes by tree and key (`None`: removed).
type Overlay = HashMap<(&'static str, Vec<u8>), Option<IVec>>;

/// A transaction's view: the mirror, under the transaction's own writes.
pub(crate) struct PgTx {
    replica: Arc<Replica>,
    overlay: RefCell<Overlay>,
    writes: RefCell<Vec<Op>>,
}

impl PgTx {
    pub(crate) fn get(&self, tree: &'static str, key: &[u8]) -> Option<IVec> {
        if let Some(v) = self.overlay.borrow().get(&(tree, key.to_vec())) {
            return v.clone();
        }
        self.replica.get(tree, key)
    }

    pub(crate) fn put(&self, tree: &'static str, key: &[u8], value: Option<IVec>) {
        self.overlay
            .borrow_mut()
            .insert((tree, key.to_vec()), value.clone());
        self.writes.borrow_mut().push(Op {
            tree,
            key: key.to_vec(),
            value,
        });
    }
}
