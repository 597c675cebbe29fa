//! Who is calling: session cookies, admin bearer tokens, and the `next` targets a
//! login may redirect to.

pub mod cookies;
pub mod external;
pub mod handoff;
pub mod jwt;
pub mod next;
pub mod oidc;
pub mod password;
pub mod ratelimit;
pub mod session;

use std::sync::Arc;

use hyper::header::HeaderMap;

pub use next::safe_next;
pub use session::SessionCodec;

use crate::app::App;
use crate::ids::SessionId;
use crate::store::{StoreError, User};

/// A caller with a valid session.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<User>,
    pub session: SessionId,
}

impl App {
    /// The user behind a personal API token (`Authorization: Bearer spawngate_…`).
    /// Never read from a query string. A store that cannot be read is an error,
    /// never "no token": the caller must not be told to sign in because of it.
    pub fn identify_token(&self, headers: &HeaderMap) -> Result<Option<Arc<User>>, StoreError> {
        let Some(token) = crate::http::bearer(headers) else {
            return Ok(None);
        };
        let token = token.expose();
        // Cheap rejections before any hashing or lookup.
        if !token.starts_with("spawngate_") || token.len() > 128 {
            return Ok(None);
        }
        let Some(record) = self.store.api_token(token)? else {
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
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, StoreError> {
        self.identify_by(headers, &self.config.session.cookie_name, |s| {
            s.scope.is_none()
        })
    }

    /// Subdomain mode: the caller's identity on `slug`'s app host, from the
    /// host-only app cookie. The session must be scoped to exactly this slug and
    /// the sign-in session it was handed off from must still be live, so signing
    /// out (or an admin revoking sessions) ends app sessions too.
    pub fn identify_app(
        &self,
        headers: &HeaderMap,
        slug: &crate::ids::Slug,
    ) -> Result<Option<Identity>, StoreError> {
        self.identify_by(headers, &self.config.session.app_cookie_name, |s| {
            s.scope.as_ref().is_some_and(|scope| {
                &scope.slug == slug
                    && matches!(self.store.session(&scope.parent),
                        Ok(Some(parent)) if parent.user_id == s.user_id && parent.scope.is_none())
            })
        })
    }

    fn identify_by(
        &self,
        headers: &HeaderMap,
        cookie_name: &str,
        accept: impl Fn(&crate::store::Session) -> bool,
    ) -> Result<Option<Identity>, StoreError> {
        for value in cookies::values(headers, cookie_name) {
            let Some(claims) = self.sessions.verify(value) else {
                continue;
            };
            let session = match self.store.session(&claims.session)? {
                Some(s) if s.user_id == claims.user && accept(&s) => s,
                _ => continue,
            };
            let directory = self.store.snapshot();
            if let Some(user) = directory
                .by_id(&session.user_id)
                .filter(|u| u.honours(session.generation))
            {
                return Ok(Some(Identity {
                    user: user.clone(),
                    session: claims.session,
                }));
            }
        }
        Ok(None)
    }
}
