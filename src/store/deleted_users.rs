//! Tombstones of deleted users: id → when (8 bytes, big-endian Unix seconds), then
//! 1 if their volume was to be kept. Written in the deleting transaction, so
//! reconcile removes what Docker still holds for them (a removal cut short by a
//! crash or an unreachable Docker), and only for them.

use super::{Result, Store};

pub(super) const TREE: &str = "deleted_users";

/// The tombstone value of a user deleted at `at`.
pub(super) fn tombstone(at: i64, keep_volume: bool) -> Vec<u8> {
    let mut value = at.to_be_bytes().to_vec();
    value.push(u8::from(keep_volume));
    value
}

/// The tombstone key of a deleted environment (beside users' ids, which hold no `/`).
pub(super) fn environment_key(slug: &crate::ids::Slug) -> String {
    format!("env/{slug}")
}

impl Store {
    /// Whether the environment at `slug` was deleted on its own (its user lives
    /// on): its volume is then to go, as it went with the environment.
    pub fn environment_was_deleted(&self, slug: &crate::ids::Slug) -> Result<bool> {
        self.deleted_users
            .contains_key(environment_key(slug).as_bytes())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[tokio::test]
    async fn a_tombstone_keeps_the_volume_decision_and_an_old_one_keeps_the_volume() {
        let (_d, s) = store();
        s.deleted_users.insert("kept", tombstone(5, true)).unwrap();
        s.deleted_users.insert("gone", tombstone(5, false)).unwrap();
        // Tombstones written before the decision was recorded: time only.
        s.deleted_users.insert("old", &5i64.to_be_bytes()).unwrap();
        assert_eq!(s.was_deleted("kept").unwrap(), Some(true));
        assert_eq!(s.was_deleted("gone").unwrap(), Some(false));
        assert_eq!(s.was_deleted("old").unwrap(), Some(true));
        assert_eq!(s.was_deleted("never").unwrap(), None);
    }
}
