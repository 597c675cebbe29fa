//! What spawngate knows about each environment's container, keyed by
//! [`Env::record_key`](super::Env::record_key).

use super::records::{ContainerRecord, decode, encode};
use super::{Result, Store, StoreError};

/// Record key → [`ContainerRecord`].
pub(super) const TREE: &str = "containers";

impl Store {
    pub fn container_record(&self, key: &str) -> Result<Option<ContainerRecord>> {
        let Some(bytes) = self.containers.get(key.as_bytes())? else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: format!("containers/{key}"),
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
        let key = match &record.environment {
            None => record.user_id.to_string(),
            Some(slug) => format!("{}/{slug}", record.user_id),
        };
        // Activity only moves forward, whoever recorded it (another replica).
        let stored = self.container_record(&key).ok().flatten();
        let activity = stored
            .and_then(|s| s.last_activity)
            .max(record.last_activity);
        let record = &ContainerRecord {
            last_activity: activity,
            ..record.clone()
        };
        self.containers.insert(key.as_bytes(), encode(record))?;
        Ok(())
    }

    /// Forgets a record (an environment that was deleted).
    pub fn remove_container_record(&self, key: &str) -> Result<()> {
        self.containers.remove(key.as_bytes())?;
        Ok(())
    }

    /// Records the last activity without flushing (called in batches by the
    /// culler; sled writes it out within its flush interval). Only ever moves it
    /// forward, and leaves the rest of the record as stored: replicas record
    /// their users' activity into the same records.
    /// [`Self::note_activity`] for many records in one transaction (one write
    /// per replica and culler tick, however many environments were used).
    pub async fn note_activities(&self, noted: &[(String, i64)]) -> Result<()> {
        if noted.is_empty() {
            return Ok(());
        }
        self.kv
            .transaction(&[&self.containers], |t| {
                for (key, at) in noted {
                    let Some(current) = t[0].get(key.as_bytes())? else {
                        continue;
                    };
                    let Ok(mut record) = decode::<ContainerRecord>(&current) else {
                        continue;
                    };
                    if record.last_activity.is_some_and(|was| was >= *at) {
                        continue;
                    }
                    record.last_activity = Some(*at);
                    t[0].insert(key.as_bytes(), encode(&record))?;
                }
                Ok::<_, super::kv::TxError<()>>(())
            })
            .await?
            .map_err(|()| StoreError::Contended {
                what: "the container records",
            })
    }

    pub async fn note_activity(&self, key: &str, at: i64) -> Result<()> {
        for _ in 0..8 {
            let Some(current) = self.containers.get(key.as_bytes())? else {
                return Ok(());
            };
            let mut record: ContainerRecord =
                decode(&current).map_err(|source| StoreError::Corrupt {
                    key: format!("containers/{key}"),
                    source,
                })?;
            if record.last_activity.is_some_and(|was| was >= at) {
                return Ok(());
            }
            record.last_activity = Some(at);
            if self
                .containers
                .compare_and_swap(key.as_bytes(), Some(&current), Some(encode(&record).into()))
                .await?
            {
                return Ok(());
            }
        }
        Err(StoreError::Contended {
            what: "the container record",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::store::tests::store;

    #[tokio::test]
    async fn activity_is_noted_only_on_an_existing_record_and_garbage_is_named() {
        let (_d, s) = store();
        let id = UserId::generate();
        let id = id.as_str();
        s.note_activity(id, 42).await.unwrap();
        assert!(
            s.container_record(id).unwrap().is_none(),
            "no record made up"
        );
        s.containers.insert(id, &b"not json"[..]).unwrap();
        match s.container_record(id) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, format!("containers/{id}")),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
