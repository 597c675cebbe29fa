//! The append-only audit log, keyed by sled's monotonic ids.

use super::records::{AuditEntry, decode, encode};
use super::{Result, Store};
use crate::time::unix_now;

/// Sequence number (8 bytes, big-endian) → [`AuditEntry`].
pub(super) const TREE: &str = "audit";

impl Store {
    /// Appends to the audit log. Keys are increasing ids (sled's, or time-ordered
    /// ones on PostgreSQL), so iteration order is append order.
    pub fn audit(&self, actor: &str, action: &str, target: &str, detail: Option<String>) {
        let entry = AuditEntry {
            at: unix_now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        };
        let result = self
            .kv
            .generate_id()
            .and_then(|id| self.audit.insert(id.to_be_bytes(), encode(&entry)));
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
}

#[cfg(test)]
mod tests {
    use crate::store::tests::store;

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
}
