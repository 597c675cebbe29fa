//! Who is calling: the session cookie (sign-in or, in subdomain mode, app host) and
//! personal API tokens, checked against the store and the user directory.
//!
//! forwardAuth asks this on every request, so a cookie's verification (HMAC, the
//! session record, the user's generation) is remembered in a small cache keyed by
//! the cookie's value. An entry counts only while nothing it was derived from can
//! have changed: the same directory snapshot (user changes, disables, deletes,
//! shares and credential generations all publish a new one) and the same store
//! write generation (every store write bumps it once finished, so a logout, a
//! revocation or a purge is seen by the very next request), and before the session
//! or the cookie expires.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use hyper::header::{self, HeaderMap, HeaderValue};

use super::cookies;
use super::session::SessionCodec;
use crate::config::Config;
use crate::ids::{Secret, SessionId, Slug};
use crate::store::{Session, Store, StoreError, User};
use crate::time::unix_now;

/// A caller with a valid session.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<User>,
    pub session: SessionId,
    /// The caller's identity headers, rendered once per verified cookie.
    pub headers: Arc<IdentityHeaders>,
}

/// The identity headers of a user, as forwardAuth sends them: rendered when the
/// cookie is verified, so a cached answer copies reference-counted bytes only.
#[derive(Debug)]
pub struct IdentityHeaders {
    pub user: Option<HeaderValue>,
    pub slug: Option<HeaderValue>,
    /// Set by the first request allowed with this verified cookie: forwardAuth logs
    /// that one at `info` and the same cookie's further allows at `debug`.
    pub allow_logged: std::sync::atomic::AtomicBool,
}

impl IdentityHeaders {
    pub fn of(user: &User) -> Self {
        IdentityHeaders {
            user: HeaderValue::from_str(&user.name).ok(),
            slug: HeaderValue::from_str(user.slug.as_str()).ok(),
            allow_logged: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Bearer token from `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(token.trim()))
}

/// Verified cookies kept at most; past it the cache starts over (a flood of
/// distinct valid cookies costs a verification each, never unbounded memory).
const MAX_VERIFIED: usize = 4096;

/// Identifies callers; owns the session codec and the verified-cookie cache.
pub struct Identities {
    store: Store,
    codec: Arc<SessionCodec>,
    config: Arc<Config>,
    verified: RwLock<Verified>,
}

/// The cache, valid for one store write generation (which also changes with
/// every new directory).
struct Verified {
    writes: u64,
    entries: HashMap<Box<str>, Entry, BuildHasherDefault<TailHasher>>,
}

/// Hashes the last bytes of what it is given. The cache holds verified cookies
/// only, which end in an HMAC signature: those bytes are already random and no
/// client can choose them, so hashing the whole cookie (SipHash, ~200 bytes) on
/// every request buys nothing.
#[derive(Default)]
struct TailHasher(u64);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(8)..];
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        self.0 =
            (self.0.rotate_left(29) ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Entry {
    identity: Identity,
    /// `None` for a sign-in session, the slug for an app-host session.
    scope: Option<Slug>,
    /// Unix seconds: the earlier of the session record's and the cookie's expiry.
    expires: i64,
}

impl Identities {
    pub fn new(store: Store, codec: Arc<SessionCodec>, config: Arc<Config>) -> Self {
        let verified = RwLock::new(Verified {
            writes: store.write_generation(),
            entries: HashMap::default(),
        });
        Identities {
            store,
            codec,
            config,
            verified,
        }
    }

    /// Starts a session for `user` (scoped to one app host in subdomain mode) and
    /// returns its signed cookie value; `replacing` ends at the same time (a new
    /// session id at every sign-in: no fixation).
    pub async fn sign_in(
        &self,
        user: &User,
        ttl_secs: i64,
        scope: Option<crate::store::SessionScope>,
        replacing: Option<&SessionId>,
    ) -> Result<String, StoreError> {
        if let Some(old) = replacing
            && let Err(e) = self.store.delete_session(old).await
        {
            tracing::warn!(error = %e, "cannot delete previous session");
        }
        let (sid, session) = self
            .store
            .create_scoped_session(&user.id, ttl_secs, scope)
            .await?;
        Ok(self.codec.sign(&sid, &user.id, unix_now(), session.expires))
    }

    /// Ends a session: its cookie (and the app sessions handed off from it) stop
    /// working on the very next request.
    pub async fn sign_out(&self, session: &SessionId) -> Result<(), StoreError> {
        self.store.delete_session(session).await
    }

    /// The user behind a personal API token (`Authorization: Bearer spawngate_…`).
    /// Never read from a query string. A store that cannot be read is an error,
    /// never "no token": the caller must not be told to sign in because of it.
    pub async fn identify_token(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<User>>, StoreError> {
        let Some(token) = bearer(headers) else {
            return Ok(None);
        };
        let token = token.expose();
        // Cheap rejections before any hashing or lookup.
        if !token.starts_with("spawngate_") || token.len() > 128 {
            return Ok(None);
        }
        let mut record = self.store.api_token(token)?;
        // Created on another replica a moment ago? (see `identify_by`)
        if record.is_none() && self.store.catch_up().await {
            record = self.store.api_token(token)?;
        }
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(self
            .store
            .snapshot()
            .by_id(&record.user_id)
            .filter(|u| u.honours(record.generation))
            .cloned())
    }

    /// The caller's identity from the sign-in session cookie. A forged, tampered,
    /// expired or revoked cookie, or a disabled or deleted user, is the same as no
    /// cookie. App-host sessions (subdomain mode) never count here. A store that
    /// cannot be read is an error, not "no session".
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, StoreError> {
        self.identify_by(headers, &self.config.session.cookie_name, None)
            .await
    }

    /// Subdomain mode: the caller's identity on `slug`'s app host, from the
    /// host-only app cookie. The session must be scoped to exactly this slug and
    /// the sign-in session it was handed off from must still be live, so signing
    /// out (or an admin revoking sessions) ends app sessions too.
    pub async fn identify_app(
        &self,
        headers: &HeaderMap,
        slug: &Slug,
    ) -> Result<Option<Identity>, StoreError> {
        self.identify_by(headers, &self.config.session.app_cookie_name, Some(slug))
            .await
    }

    /// [`Self::identify_now`], and on a shared store once more after catching
    /// up when a genuinely signed cookie names no session this replica knows:
    /// another replica may have issued it a moment ago (a sign-in there, then a
    /// redirect here). Only a cookie with a valid signature costs that query.
    async fn identify_by(
        &self,
        headers: &HeaderMap,
        cookie_name: &str,
        scope: Option<&Slug>,
    ) -> Result<Option<Identity>, StoreError> {
        if let Some(found) = self.identify_now(headers, cookie_name, scope)? {
            return Ok(Some(found));
        }
        let genuine =
            || cookies::values(headers, cookie_name).any(|v| self.codec.verify(v).is_some());
        if self.store.is_shared() && genuine() && self.store.catch_up().await {
            return self.identify_now(headers, cookie_name, scope);
        }
        Ok(None)
    }

    fn identify_now(
        &self,
        headers: &HeaderMap,
        cookie_name: &str,
        scope: Option<&Slug>,
    ) -> Result<Option<Identity>, StoreError> {
        for value in cookies::values(headers, cookie_name) {
            if let Some(found) = self.cached(value, scope) {
                return Ok(Some(found));
            }
            // The generation first, then what is derived under it: a write or a
            // new directory that lands meanwhile makes the entry stale instead of
            // letting it outlive what it was made from.
            let writes = self.store.write_generation();
            let directory = self.store.snapshot();
            let Some(claims) = self.codec.verify(value) else {
                continue;
            };
            let session = match self.store.session(&claims.session)? {
                Some(s) if s.user_id == claims.user && self.accepts(&s, scope) => s,
                _ => continue,
            };
            let Some(user) = directory
                .by_id(&session.user_id)
                .filter(|u| u.honours(session.generation))
            else {
                continue;
            };
            let identity = Identity {
                user: user.clone(),
                session: claims.session,
                headers: Arc::new(IdentityHeaders::of(user)),
            };
            self.remember(
                value,
                writes,
                Entry {
                    identity: identity.clone(),
                    scope: session.scope.as_ref().map(|s| s.slug.clone()),
                    expires: session.expires.min(claims.expires),
                },
            );
            return Ok(Some(identity));
        }
        Ok(None)
    }

    /// Whether a session fits the cookie it came in: a sign-in session for the
    /// sign-in cookie; for an app cookie, one scoped to this slug whose parent
    /// sign-in session is still live.
    fn accepts(&self, s: &Session, scope: Option<&Slug>) -> bool {
        match (scope, &s.scope) {
            (None, None) => true,
            (Some(slug), Some(own)) => {
                &own.slug == slug
                    && matches!(self.store.session(&own.parent),
                        Ok(Some(parent)) if parent.user_id == s.user_id && parent.scope.is_none())
            }
            _ => false,
        }
    }

    fn cached(&self, value: &str, scope: Option<&Slug>) -> Option<Identity> {
        let verified = self.verified.read().unwrap_or_else(|p| p.into_inner());
        if verified.writes != self.store.write_generation() {
            return None;
        }
        let entry = verified.entries.get(value)?;
        (entry.scope.as_ref() == scope && entry.expires > unix_now())
            .then(|| entry.identity.clone())
    }

    fn remember(&self, value: &str, writes: u64, entry: Entry) {
        let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
        if verified.writes != writes {
            // Made under an older state than the cache holds: never stored. Made
            // under a newer one: everything else in the cache is older still.
            if writes < verified.writes {
                return;
            }
            verified.entries.clear();
            verified.writes = writes;
        }
        if verified.entries.len() >= MAX_VERIFIED {
            verified.entries.clear();
        }
        verified.entries.insert(value.into(), entry);
    }

    /// How many verified cookies the cache holds (for tests).
    #[cfg(test)]
    fn cached_len(&self) -> usize {
        self.verified
            .read()
            .map(|v| v.entries.len())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn setup() -> (tempfile::TempDir, Store, Identities, Arc<User>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let codec = Arc::new(SessionCodec::new(&store.session_key().unwrap()));
        let config = Arc::new(Config::from_sources("", Vec::new()).unwrap());
        let user = Arc::new(store.create_user("alice", None, None).await.unwrap());
        let ids = Identities::new(store.clone(), codec, config);
        (dir, store, ids, user)
    }

    fn cookie(ids: &Identities, sid: &SessionId, user: &User, exp: i64) -> HeaderMap {
        let jwt = ids.codec.sign(sid, &user.id, unix_now(), exp);
        let mut h = HeaderMap::new();
        let name = &ids.config.session.cookie_name;
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{name}={jwt}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_cached_cookie_is_refused_right_after_logout_revocation_or_disable() {
        let (_dir, store, ids, user) = setup().await;
        let (sid, _) = store.create_session(&user.id, 3600).await.unwrap();
        let h = cookie(&ids, &sid, &user, unix_now() + 3600);
        assert!(ids.identify(&h).await.unwrap().is_some());
        assert!(
            ids.identify(&h).await.unwrap().is_some(),
            "served from the cache"
        );
        assert_eq!(ids.cached_len(), 1);
        // Logout.
        store.delete_session(&sid).await.unwrap();
        assert!(ids.identify(&h).await.unwrap().is_none(), "logged out");

        // Revocation of every session.
        let (sid, _) = store.create_session(&user.id, 3600).await.unwrap();
        let h = cookie(&ids, &sid, &user, unix_now() + 3600);
        assert!(ids.identify(&h).await.unwrap().is_some());
        assert!(ids.identify(&h).await.unwrap().is_some());
        store.delete_sessions_of(&user.id).await.unwrap();
        assert!(ids.identify(&h).await.unwrap().is_none(), "revoked");

        // A disabled user.
        let (sid, _) = store.create_session(&user.id, 3600).await.unwrap();
        let h = cookie(&ids, &sid, &user, unix_now() + 3600);
        assert!(ids.identify(&h).await.unwrap().is_some());
        let mut disabled = (*store.snapshot().by_id(&user.id).unwrap().clone()).clone();
        disabled.disabled = true;
        disabled.credential_generation += 1;
        store.update_user(&disabled).await.unwrap();
        assert!(ids.identify(&h).await.unwrap().is_none(), "disabled");
    }

    #[tokio::test]
    async fn a_cached_cookie_expires_with_its_session() {
        let (_dir, store, ids, user) = setup().await;
        let (sid, _) = store.create_session(&user.id, 3600).await.unwrap();
        // The cookie says it ends in a second: so does the cache entry (with the
        // leeway the codec grants).
        let h = cookie(&ids, &sid, &user, unix_now() + 1);
        assert!(ids.identify(&h).await.unwrap().is_some());
        let verified = ids.verified.read().unwrap();
        let entry = verified.entries.values().next().unwrap();
        assert!(entry.expires <= unix_now() + 1 + 5);
    }

    #[tokio::test]
    async fn a_sign_in_cookie_is_no_app_cookie() {
        let (_dir, store, ids, user) = setup().await;
        let (sid, _) = store.create_session(&user.id, 3600).await.unwrap();
        let jwt = ids
            .codec
            .sign(&sid, &user.id, unix_now(), unix_now() + 3600);
        let mut h = HeaderMap::new();
        let names = &ids.config.session;
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "{}={jwt}; {}={jwt}",
                names.cookie_name, names.app_cookie_name
            ))
            .unwrap(),
        );
        assert!(ids.identify(&h).await.unwrap().is_some());
        assert!(ids.identify_app(&h, &user.slug).await.unwrap().is_none());
    }
}
