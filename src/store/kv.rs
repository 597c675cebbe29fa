//! The key-value layer under the store: named trees of byte keys and values, with
//! atomic multi-tree transactions, over one of two backends.
//!
//! - **sled** (the default): the embedded database in `data_dir`, for one process.
//! - **PostgreSQL** (`store.url`): a shared database several replicas use at once.
//!   Each replica reads from an in-memory mirror kept current by change
//!   notifications (see [`super::postgres`]), so reads never wait on the network.
//!
//! Writes come in two kinds, so each backend can give the guarantee each needs:
//! - `insert` / `remove` are *blind* writes (a fresh random key, an idempotent
//!   removal): visible to this process at once, durable after [`Kv::flush`]
//!   (sled's own contract; PostgreSQL commits them behind, in order);
//! - [`Tree::take`], [`Tree::compare_and_swap`] and [`Kv::transaction`] decide on
//!   what is stored: on PostgreSQL they run against the database itself under its
//!   write lock, so two replicas never both win.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use sled::IVec;
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use super::postgres::{PgTx, Replica};
use super::{Result, StoreError};

pub(super) struct KvInner {
    backend: Backend,
    /// Every write holds this shared and a backup of the embedded store holds it
    /// exclusively, so the backup sees the store between operations, never half-way
    /// through a transaction (sled 0.34 has no consistent scan of several trees).
    /// Never held across an await.
    snapshot_lock: std::sync::RwLock<()>,
    /// Bumped as each write to a tracked tree finishes (see `Store::write_generation`).
    writes: AtomicU64,
}

enum Backend {
    Sled {
        db: sled::Db,
        /// sled 0.34 can deadlock when a transaction runs while a flush is in flight
        /// (sled issue #1412): transactions and flushes take turns through this.
        flush_gate: tokio::sync::Mutex<()>,
    },
    Postgres(Arc<Replica>),
}

/// A handle on the key-value backend (cheap to clone).
#[derive(Clone)]
pub(super) struct Kv(Arc<KvInner>);

/// A write in progress; bumps the write generation when dropped (tracked trees).
struct Writing<'a> {
    _shared: std::sync::RwLockReadGuard<'a, ()>,
    writes: Option<&'a AtomicU64>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let Some(writes) = self.writes {
            writes.fetch_add(1, Ordering::Release);
        }
    }
}

impl Kv {
    pub(super) fn sled(db: sled::Db) -> Kv {
        Kv::with(Backend::Sled {
            db,
            flush_gate: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn postgres(replica: Arc<Replica>) -> Kv {
        Kv::with(Backend::Postgres(replica))
    }

    fn with(backend: Backend) -> Kv {
        Kv(Arc::new(KvInner {
            backend,
            snapshot_lock: std::sync::RwLock::new(()),
            writes: AtomicU64::new(0),
        }))
    }

    /// The tree called `name`. `tracked`: whether its writes move the write
    /// generation (everything forwardAuth's caches derive from).
    pub(super) fn tree(&self, name: &'static str, tracked: bool) -> Result<Tree> {
        let handle = match &self.0.backend {
            Backend::Sled { db, .. } => Handle::Sled(db.open_tree(name)?),
            Backend::Postgres(replica) => Handle::Pg(replica.clone()),
        };
        Ok(Tree {
            kv: self.0.clone(),
            name,
            tracked,
            handle,
        })
    }

    /// The PostgreSQL replica, when that is the backend.
    pub(super) fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.0.backend {
            Backend::Postgres(r) => Some(r),
            Backend::Sled { .. } => None,
        }
    }

    /// The embedded database, when that is the backend.
    pub(super) fn sled_db(&self) -> Option<&sled::Db> {
        match &self.0.backend {
            Backend::Sled { db, .. } => Some(db),
            Backend::Postgres(_) => None,
        }
    }

    pub(super) fn write_generation(&self) -> u64 {
        self.0.writes.load(Ordering::Acquire)
    }

    /// Marks everything derived so far as possibly stale (a new directory, a
    /// change another replica made).
    pub(super) fn bump_generation(&self) {
        self.0.writes.fetch_add(1, Ordering::Release);
    }

    /// Held by a backup of the embedded store while it reads every tree.
    pub(super) fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.0
            .snapshot_lock
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every write so far durable.
    pub(super) async fn flush(&self) -> Result<()> {
        match &self.0.backend {
            Backend::Sled { db, flush_gate } => {
                let _turn = flush_gate.lock().await;
                db.flush_async().await?;
                Ok(())
            }
            Backend::Postgres(replica) => replica.flush().await,
        }
    }

    /// A unique, increasing id (audit keys).
    pub(super) fn generate_id(&self) -> Result<u64> {
        match &self.0.backend {
            Backend::Sled { db, .. } => Ok(db.generate_id()?),
            Backend::Postgres(replica) => Ok(replica.generate_id()),
        }
    }

    /// Runs `f` atomically over `trees`: everything it writes is committed
    /// together or not at all, and what it read is still what is stored when it
    /// commits. `f` may run more than once (sled retries on conflict), so it must
    /// have no side effects beyond its return value. `Ok(Err(e))`: `f` aborted.
    pub(super) async fn transaction<R, E>(
        &self,
        trees: &[&Tree],
        f: impl Fn(&[TxTree<'_>]) -> std::result::Result<R, TxError<E>>,
    ) -> Result<std::result::Result<R, E>> {
        match &self.0.backend {
            Backend::Sled { flush_gate, .. } => {
                let _turn = flush_gate.lock().await;
                let sled_trees: Vec<&sled::Tree> = trees
                    .iter()
                    .filter_map(|t| match &t.handle {
                        Handle::Sled(tree) => Some(tree),
                        Handle::Pg(_) => None,
                    })
                    .collect();
                let _writing = self.writing(trees.iter().any(|t| t.tracked));
                let res = sled_trees.as_slice().transaction(|views| {
                    let txs: Vec<TxTree<'_>> = views.iter().map(TxTree::Sled).collect();
                    match f(&txs) {
                        Ok(r) => Ok(Ok(r)),
                        Err(TxError::Abort(e)) => Ok(Err(e)),
                        Err(TxError::Sled(u)) => Err(ConflictableTransactionError::from(u)),
                    }
                });
                match res {
                    Ok(outcome) => Ok(outcome),
                    // Aborts travel in `Ok(Err(..))`; sled makes none of its own.
                    Err(TransactionError::Abort(())) => Err(StoreError::Unavailable(
                        "the transaction was aborted".into(),
                    )),
                    Err(TransactionError::Storage(e)) => Err(e.into()),
                }
            }
            Backend::Postgres(replica) => {
                let names: Vec<&'static str> = trees.iter().map(|t| t.name).collect();
                let tracked = trees.iter().any(|t| t.tracked);
                let outcome = replica
                    .transaction(|tx| {
                        let txs: Vec<TxTree<'_>> = names
                            .iter()
                            .map(|name| TxTree::Pg { tx, tree: name })
                            .collect();
                        f(&txs)
                    })
                    .await?;
                let outcome = match outcome {
                    Ok(r) => Ok(r),
                    Err(TxError::Abort(e)) => Err(e),
                    // A PostgreSQL transaction's reads and writes cannot fail.
                    Err(TxError::Sled(u)) => return Err(StoreError::Unavailable(u.to_string())),
                };
                if tracked && outcome.is_ok() {
                    self.bump_generation();
                }
                Ok(outcome)
            }
        }
    }

    fn writing(&self, tracked: bool) -> Writing<'_> {
        Writing {
            _shared: self
                .0
                .snapshot_lock
                .read()
                .unwrap_or_else(|p| p.into_inner()),
            writes: tracked.then_some(&self.0.writes),
        }
    }
}

/// One named tree.
#[derive(Clone)]
pub(super) struct Tree {
    kv: Arc<KvInner>,
    name: &'static str,
    tracked: bool,
    handle: Handle,
}

#[derive(Clone)]
enum Handle {
    Sled(sled::Tree),
    Pg(Arc<Replica>),
}

/// Key and value of one record.
pub(super) type Entry = (IVec, IVec);

impl Tree {
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// Whether writes here move the write generation.
    pub(super) fn is_tracked(&self) -> bool {
        self.tracked
    }

    fn writing(&self) -> Writing<'_> {
        Writing {
            _shared: self
                .kv
                .snapshot_lock
                .read()
                .unwrap_or_else(|p| p.into_inner()),
            writes: self.tracked.then_some(&self.kv.writes),
        }
    }

    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        match &self.handle {
            Handle::Sled(t) => Ok(t.get(key)?),
            Handle::Pg(r) => Ok(r.get(self.name, key.as_ref())),
        }
    }

    pub(super) fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    pub(super) fn len(&self) -> usize {
        match &self.handle {
            Handle::Sled(t) => t.len(),
            Handle::Pg(r) => r.len(self.name),
        }
    }

    /// Every record in key order (on PostgreSQL, a copy of the mirror's).
    pub(super) fn iter(&self) -> Box<dyn DoubleEndedIterator<Item = Result<Entry>> + Send> {
        match &self.handle {
            Handle::Sled(t) => Box::new(t.iter().map(|r| r.map_err(StoreError::from))),
            Handle::Pg(r) => Box::new(r.scan(self.name, &[]).into_iter().map(Ok)),
        }
    }

    /// A blind write (see the module comment).
    pub(super) fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> Result<()> {
        let _writing = self.writing();
        match &self.handle {
            Handle::Sled(t) => {
                t.insert(key, value)?;
            }
            Handle::Pg(r) => r.write_behind(self.name, key.as_ref(), Some(value.into())),
        }
        Ok(())
    }

    /// A blind removal (see the module comment).
    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let _writing = self.writing();
        match &self.handle {
            Handle::Sled(t) => {
                t.remove(key)?;
            }
            Handle::Pg(r) => r.write_behind(self.name, key.as_ref(), None),
        }
        Ok(())
    }

    /// Removes the record and returns it; of two concurrent takes of one key, in
    /// any processes, exactly one gets it.
    pub(super) async fn take(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        let key = key.as_ref();
        match &self.handle {
            Handle::Sled(t) => {
                let _writing = self.writing();
                Ok(t.remove(key)?)
            }
            Handle::Pg(_) => {
                let taken = self
                    .kv_handle()
                    .transaction(&[self], |t| {
                        let old = t[0].get(key)?;
                        if old.is_some() {
                            t[0].remove(key)?;
                        }
                        Ok::<_, TxError<()>>(old)
                    })
                    .await?;
                Ok(taken.unwrap_or(None))
            }
        }
    }

    /// Writes `new` (`None`: removes) only if the record is still `old`
    /// (`None`: absent). `false`: it was not; nothing was written.
    pub(super) async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<IVec>,
    ) -> Result<bool> {
        let key = key.as_ref();
        match &self.handle {
            Handle::Sled(t) => {
                let _writing = self.writing();
                Ok(t.compare_and_swap(key, old, new)?.is_ok())
            }
            Handle::Pg(_) => {
                let swapped = self
                    .kv_handle()
                    .transaction(&[self], |t| {
                        if t[0].get(key)?.as_deref() != old {
                            return Err(TxError::Abort(()));
                        }
                        match &new {
                            Some(v) => t[0].insert(key, v.clone())?,
                            None => t[0].remove(key)?,
                        }
                        Ok(())
                    })
                    .await?;
                Ok(swapped.is_ok())
            }
        }
    }

    fn kv_handle(&self) -> Kv {
        Kv(self.kv.clone())
    }
}

/// Why a transaction's closure stopped: its own refusal, or (sled) a conflict
/// that makes sled run it again.
pub(super) enum TxError<E> {
    Abort(E),
    Sled(UnabortableTransactionError),
}

impl<E> From<UnabortableTransactionError> for TxError<E> {
    fn from(e: UnabortableTransactionError) -> Self {
        TxError::Sled(e)
    }
}

/// One tree as a transaction sees it.
pub(super) enum TxTree<'a> {
    Sled(&'a TransactionalTree),
    Pg { tx: &'a PgTx, tree: &'static str },
}

impl TxTree<'_> {
    pub(super) fn get(
        &self,
        key: impl AsRef<[u8]>,
    ) -> std::result::Result<Option<IVec>, UnabortableTransactionError> {
        match self {
            TxTree::Sled(t) => t.get(key),
            TxTree::Pg { tx, tree } => Ok(tx.get(tree, key.as_ref())),
        }
    }

    pub(super) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        match self {
            TxTree::Sled(t) => t.insert(key.as_ref(), value.into()).map(|_| ()),
            TxTree::Pg { tx, tree } => {
                tx.put(tree, key.as_ref(), Some(value.into()));
                Ok(())
            }
        }
    }

    pub(super) fn remove(
        &self,
        key: impl AsRef<[u8]>,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        match self {
            TxTree::Sled(t) => t.remove(key.as_ref()).map(|_| ()),
            TxTree::Pg { tx, tree } => {
                tx.put(tree, key.as_ref(), None);
                Ok(())
            }
        }
    }
}
