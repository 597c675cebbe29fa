//! Keys generated on first run (session signing, container secrets) and the
//! store's own health probes.

use super::{Result, Store, StoreError};
use crate::ids::random_bytes;
use crate::time::unix_now;

/// Name → raw bytes.
pub(super) const TREE: &str = "meta";

const SESSION_KEY: &str = "session_key";
const CONTAINER_KEY: &str = "container_key";

impl Store {
    /// The HS256 key for session cookies: generated on first run, then kept, so
    /// sessions survive restarts.
    pub fn session_key(&self) -> Result<Vec<u8>> {
        self.meta_key(SESSION_KEY)
    }

    /// The key per-container secrets are derived from (kept, so a restart does not
    /// invalidate the secrets running containers hold).
    pub fn container_key(&self) -> Result<Vec<u8>> {
        self.meta_key(CONTAINER_KEY)
    }

    fn meta_key(&self, name: &str) -> Result<Vec<u8>> {
        if let Some(key) = self.meta.get(name)? {
            return Ok(key.to_vec());
        }
        // Only the embedded store gets here (a shared one ran `init_keys` when
        // it connected). compare_and_swap makes two racing first starts agree.
        let Some(db) = self.kv.sled_db() else {
            return Err(StoreError::Unavailable(format!("the store has no {name}")));
        };
        let fresh = random_bytes::<32>();
        let _ =
            db.open_tree(TREE)?
                .compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))?;
        db.flush()?;
        Ok(self
            .meta
            .get(name)?
            .map(|v| v.to_vec())
            .unwrap_or_else(|| fresh.to_vec()))
    }

    /// Generates the keys of a shared store, once: of replicas starting together
    /// on an empty database, one writes them and all use those.
    pub(super) async fn init_keys(&self) -> Result<()> {
        for name in [SESSION_KEY, CONTAINER_KEY] {
            if self.meta.get(name)?.is_none() {
                let fresh = random_bytes::<32>();
                self.meta
                    .compare_and_swap(name, None, Some(fresh.to_vec().into()))
                    .await?;
            }
        }
        Ok(())
    }

    /// A cheap liveness check of the database (for `/readyz` and `spawngate check`).
    pub fn check(&self) -> Result<()> {
        self.meta.get(SESSION_KEY)?;
        self.health().map_err(StoreError::Unavailable)
    }

    /// Whether the store can still write durably: a small record written and
    /// flushed (what `/readyz` asks; a full disk shows here first).
    pub async fn check_writable(&self) -> Result<()> {
        // Shared: the change feed's own connection, which catches up every few
        // seconds, says whether PostgreSQL answers; no write (and notification
        // to every replica) per health check, and no wait behind this
        // replica's write transactions. A broken writing connection is made
        // afresh by the next write.
        if self.kv.replica().is_some() {
            return self.health().map_err(StoreError::Unavailable);
        }
        // Embedded: two pages of fresh bytes, so the write needs new space on
        // disk each time and a full disk shows at the next probe, not once the
        // space sled had reserved runs out.
        let mut probe = unix_now().to_be_bytes().to_vec();
        for _ in 0..256 {
            probe.extend_from_slice(&random_bytes::<32>());
        }
        self.meta.insert("health_probe", probe)?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

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

    #[tokio::test]
    async fn the_keys_differ_and_the_store_reports_itself_healthy() {
        let (_d, s) = crate::store::tests::store();
        assert_ne!(s.session_key().unwrap(), s.container_key().unwrap());
        assert_eq!(s.container_key().unwrap(), s.container_key().unwrap());
        s.check().unwrap();
        s.check_writable().await.unwrap();
    }
}
