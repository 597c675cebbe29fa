//! What the store keeps. Every value is JSON with a format version `v`, so a newer
//! spawngate can migrate and an older one refuses to misread.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::ids::{Slug, UserId};

/// The record format this build writes and the newest it can read.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    pub slug: Slug,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub disabled: bool,
    /// Host mode: the loopback port the user's container publishes, fixed for the
    /// user's lifetime so Traefik's service address never changes.
    #[serde(default)]
    pub host_port: Option<u16>,
    /// Admin-set exceptions to the configured container defaults.
    #[serde(default)]
    pub overrides: Overrides,
    /// argon2id PHC string, when the user has a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Other users who may open this user's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<Share>,
    /// Raised by every disable, in the same write as the flag. Sessions, login links
    /// and personal tokens carry the generation they were issued in and are refused
    /// once it moved on, even if a crash (or a sign-in racing the disable) left them
    /// in the store.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credential_generation: u32,
    /// May use the admin page and the admin API with their own session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// The profile of the default environment (`None`: the `default` profile).
    /// The default environment is described by the user's own `slug`,
    /// `host_port` and `shared_with`, as before environments existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The user's other environments (`limits.environments_per_user`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<ExtraEnvironment>,
    /// Admin-set groups, for profiles' `groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// The name of the environment every user has from creation.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// An environment beyond a user's default one: its own slug (route, container,
/// volume), profile and sharing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtraEnvironment {
    pub name: String,
    pub slug: Slug,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<Share>,
    /// Unix seconds.
    pub created: i64,
    /// Created by an admin, whose choice of profile stands even where the
    /// profile's `users`/`groups` leave the owner out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_admin: bool,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl User {
    /// The environment served at `slug`, if it is one of this user's.
    pub fn environment_at(&self, slug: &Slug) -> Option<EnvIndex> {
        if &self.slug == slug {
            return Some(EnvIndex::Default);
        }
        self.environments
            .iter()
            .position(|e| &e.slug == slug)
            .map(EnvIndex::Extra)
    }

    /// The environment called `name` (`default` is the user's own).
    pub fn environment_named(&self, name: &str) -> Option<EnvIndex> {
        if name == DEFAULT_ENVIRONMENT {
            return Some(EnvIndex::Default);
        }
        self.environments
            .iter()
            .position(|e| e.name == name)
            .map(EnvIndex::Extra)
    }

    /// Every environment of the user, the default one first.
    pub fn environment_indexes(&self) -> impl Iterator<Item = EnvIndex> + use<> {
        std::iter::once(EnvIndex::Default).chain((0..self.environments.len()).map(EnvIndex::Extra))
    }

    /// The shares of one environment (mutable, for granting and revoking).
    pub fn shares_mut(&mut self, at: EnvIndex) -> Option<&mut Vec<Share>> {
        match at {
            EnvIndex::Default => Some(&mut self.shared_with),
            EnvIndex::Extra(i) => self.environments.get_mut(i).map(|e| &mut e.shared_with),
        }
    }

    /// Whether a credential (session, login link, personal token) issued in
    /// `generation` still works: never for a disabled user, never across a disable.
    pub fn honours(&self, generation: u32) -> bool {
        !self.disabled && generation == self.credential_generation
    }
}

/// Which of a user's environments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnvIndex {
    Default,
    /// `User::environments[i]`.
    Extra(usize),
}

/// Access to a user's environment granted to another user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub user_id: UserId,
    /// Passed to the container as `X-Spawngate-Access: read-only`; the app enforces it.
    #[serde(default)]
    pub read_only: bool,
    /// Unix seconds.
    pub granted: i64,
}

/// Per-user container settings, validated against the admin's bounds when set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub user_id: UserId,
    pub created: i64,
    pub expires: i64,
    /// Subdomain mode: a session valid only on this slug's app host, handed off
    /// from the sign-in session `parent` (and ending with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<SessionScope>,
    /// The user's credential generation when issued (see `User::honours`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionScope {
    pub slug: Slug,
    pub parent: crate::ids::SessionId,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginToken {
    /// The user the link signs in; `None` for a sign-up link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Self sign-up: the confirmed address gets an account when the link is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup_email: Option<String>,
    pub created: i64,
    pub expires: i64,
    /// The user's credential generation when issued (see `User::honours`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

/// A subdomain hand-off code in flight (see `auth::handoff`), stored under the
/// code's hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoffCode {
    pub user_id: UserId,
    pub slug: Slug,
    /// The sign-in session that asked for it.
    pub parent: crate::ids::SessionId,
    /// Where the app host sends the browser once signed in.
    pub next: String,
    /// Unix seconds.
    pub expires: i64,
}

/// A user's personal API token (for scripts hitting their own slug). Stored under
/// the token's hash; `id` is its public handle for listing and revoking.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub user_id: UserId,
    pub name: String,
    pub created: i64,
    /// The user's credential generation when issued (see `User::honours`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

/// A user's SSH public key, stored under its fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SshKey {
    /// Short public handle for listing and removing.
    pub id: String,
    pub user_id: UserId,
    /// SHA-256, as OpenSSH prints it (`SHA256:…`).
    pub fingerprint: String,
    /// The key in OpenSSH's one-line form, without its comment.
    pub public_key: String,
    /// The owner's label (the key's comment when none was given).
    pub name: String,
    /// Unix seconds.
    pub added: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminToken {
    pub name: String,
    pub created: i64,
}

/// What spawngate wants of a user's container; written before each Docker call so a
/// crash mid-spawn leaves a record of the intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub user_id: UserId,
    /// The environment's slug when not the user's default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub name: String,
    pub desired: Desired,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub stopped_at: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Last activity (Unix seconds), written in batches by the culler so idle
    /// clocks survive a restart.
    #[serde(default)]
    pub last_activity: Option<i64>,
    /// When the container came from the warm pool: its pool name, from which its
    /// secret is derived (the container was created before its user was known).
    #[serde(default)]
    pub pooled_from: Option<String>,
}

/// One line of the append-only audit log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: i64,
    /// Who acted: `admin:<token name>`, `operator` (control socket), `system`, or a user name.
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct VersionedRef<'a, T> {
    v: u32,
    #[serde(flatten)]
    data: &'a T,
}

#[derive(Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    data: T,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "record written by a newer spawngate (format {0}, this build reads up to {FORMAT_VERSION})"
    )]
    TooNew(u32),
    #[error("unreadable record: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    serde_json::to_vec(&VersionedRef {
        v: FORMAT_VERSION,
        data: value,
    })
    .unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let versioned: Versioned<T> = serde_json::from_slice(bytes)?;
    if versioned.v > FORMAT_VERSION {
        return Err(DecodeError::TooNew(versioned.v));
    }
    Ok(versioned.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_newer_format() {
        let s = Session {
            user_id: UserId::from_stored("abc".into()),
            created: 1,
            expires: 2,
            scope: None,
            generation: 0,
        };
        let bytes = encode(&s);
        let back: Session = decode(&bytes).unwrap();
        assert_eq!(back.expires, 2);
        let newer = br#"{"v":99,"user_id":"abc","created":1,"expires":2}"#;
        assert!(matches!(
            decode::<Session>(newer),
            Err(DecodeError::TooNew(99))
        ));
        assert!(decode::<Session>(b"garbage").is_err());
    }

    #[test]
    fn users_written_before_the_admin_flag_read_as_not_admins() {
        let old = br#"{"v":1,"id":"u1","name":"ann","slug":"0123456789ab","created":1}"#;
        let user: User = decode(old).unwrap();
        assert!(!user.admin);
        let admin = User {
            admin: true,
            ..user
        };
        let back: User = decode(&encode(&admin)).unwrap();
        assert!(back.admin);
        // Not written when false: stores stay readable by the previous release.
        let plain = User {
            admin: false,
            ..admin
        };
        assert!(!String::from_utf8(encode(&plain)).unwrap().contains("admin"));
    }
}
