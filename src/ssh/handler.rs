//! One SSH connection: public-key authentication against the user's registered
//! keys, and which channels it may open (sessions, and `direct-tcpip` into the
//! user's own container; nothing else).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use russh::keys::HashAlg;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::{Counted, Shared};
use crate::ids::{Slug, UserId};
use crate::store::{DEFAULT_ENVIRONMENT, Env, User};

pub(crate) struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Set once authenticated.
    user: Option<Arc<User>>,
    /// Who signed in with which key, for the connection's task to re-check (see
    /// [`Signed::still_allowed`]).
    signed: Arc<OnceLock<Signed>>,
    /// Its place within `ssh.max_connections_per_user`, given back on drop.
    _place: Option<Counted>,
    /// Its place among the connections not yet signed in (see `mod.rs`), given
    /// back once signed in.
    unsigned: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A connection counts one failed attempt at most: OpenSSH offers every key
    /// of an agent in turn, and each would spend the address's sign-in budget.
    failure_counted: bool,
}

/// The user and key a connection signed in with.
pub(crate) struct Signed {
    user_id: UserId,
    fingerprint: String,
    /// Which of the user's environments (`ssh alice+lab@…`), by slug: one
    /// deleted and created again under its name is another environment.
    environment: Slug,
}

impl Signed {
    /// The user as stored now, if they still exist, are enabled and still hold
    /// the key: a disable, a delete or a removed key ends what the connection may
    /// do (its task disconnects it; a channel opened meanwhile is refused).
    pub(crate) fn still_allowed(&self, shared: &Shared) -> Option<Env> {
        let user = shared.store.snapshot().by_id(&self.user_id).cloned()?;
        let key = shared.store.ssh_key(&self.fingerprint).ok().flatten()?;
        if key.user_id != user.id || user.disabled {
            return None;
        }
        // A deleted environment ends its connections as a removed key does.
        Env::at_slug(user, &self.environment)
    }
}

/// `alice+lab` signs in to alice's environment `lab`; `alice` to her default one.
fn split_login(login: &str) -> (&str, &str) {
    login
        .split_once('+')
        .unwrap_or((login, DEFAULT_ENVIRONMENT))
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        signed: Arc<OnceLock<Signed>>,
        unsigned: tokio::sync::OwnedSemaphorePermit,
    ) -> Connection {
        Connection {
            shared,
            peer,
            user: None,
            signed,
            _place: None,
            unsigned: Some(unsigned),
            failure_counted: false,
        }
    }

    /// The signed-in user as stored now (`None`: not signed in, or no longer
    /// allowed, and then the client is told and disconnected).
    fn current(&mut self, session: &mut Session) -> Option<Env> {
        self.user.as_ref()?;
        match self
            .signed
            .get()
            .and_then(|s| s.still_allowed(&self.shared))
        {
            Some(env) => Some(env),
            None => {
                let _ = session.disconnect(
                    russh::Disconnect::ByApplication,
                    "your access was revoked",
                    "",
                );
                None
            }
        }
    }

    /// The rate-limit key: the client's address, as the login form counts it.
    fn client(&self) -> String {
        self.peer.ip().to_canonical().to_string()
    }

    /// The environment `login` names (`alice` or `alice+lab`) if `key` is one
    /// of its owner's and they may sign in.
    fn owner(&self, login: &str, key: &russh::keys::PublicKey) -> Option<Env> {
        let (name, environment) = split_login(login);
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let record = self.shared.store.ssh_key(&fingerprint).ok().flatten()?;
        let user = self.shared.store.snapshot().by_name(name).cloned()?;
        if record.user_id != user.id || user.disabled {
            return None;
        }
        Env::named(user, environment)
    }

    /// A new channel's user (as stored now) and its place within
    /// `ssh.max_sessions_per_user`, or why it is refused.
    fn admit(&mut self, session: &mut Session) -> Result<(Env, Counted), ChannelOpenFailure> {
        let env = self
            .current(session)
            .ok_or(ChannelOpenFailure::AdministrativelyProhibited)?;
        let place = self
            .shared
            .channels
            .take(&env.owner().id, self.shared.config.max_sessions_per_user)
            .ok_or(ChannelOpenFailure::ResourceShortage)?;
        Ok((env, place))
    }

    /// Counts a failed attempt, once per connection.
    fn failed(&mut self) {
        if !self.failure_counted {
            self.failure_counted = true;
            self.shared.failures.allow(&self.client());
        }
    }

    /// Whether the address has budget left (checking costs nothing).
    fn within_budget(&self) -> bool {
        let client = self.client();
        let ok = self.shared.failures.allow(&client);
        self.shared.failures.forgive(&client);
        ok
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only keys that would be accepted are asked to sign: a client offering
        // others learns nothing but "no".
        if self.within_budget() && self.owner(user, offer.public_key).is_some() {
            return Ok(Auth::Accept);
        }
        self.failed();
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.within_budget() {
            tracing::info!(peer = %self.peer, user, "ssh: refused, too many failed attempts from this address");
            return Ok(Auth::reject());
        }
        let Some(env) = self.owner(user, key.public_key) else {
            self.failed();
            return Ok(Auth::reject());
        };
        let found = env.owner().clone();
        let Some(place) = self
            .shared
            .connections
            .take(&found.id, self.shared.config.max_connections_per_user)
        else {
            tracing::info!(peer = %self.peer, user, "ssh: refused, too many connections for this user");
            return Ok(Auth::reject());
        };
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        self.shared.store.audit(
            &found.name,
            "ssh.connect",
            &found.name,
            Some(format!("from {}, key {fingerprint}", self.peer.ip())),
        );
        let _ = self.signed.set(Signed {
            user_id: found.id.clone(),
            fingerprint,
            environment: env.slug().clone(),
        });
        self.user = Some(found);
        self._place = Some(place);
        self.unsigned = None;
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (env, place) = match self.admit(session) {
            Ok(admitted) => admitted,
            Err(why) => {
                reply.reject(why).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move {
            super::session::run(shared, env, channel).await;
            drop(place);
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (env, place) = match self.admit(session) {
            Ok(admitted) => admitted,
            Err(why) => {
                reply.reject(why).await;
                return Ok(());
            }
        };
        let Some(port) = super::forward::target_port(host_to_connect, port_to_connect) else {
            tracing::info!(user = %env.owner().name, target = %host_to_connect, port = port_to_connect, "ssh: forwarding refused (only localhost:<port> of the user's own container)");
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // Off the connection's loop: the container may have to start first.
        let shared = self.shared.clone();
        self.shared.tasks.spawn(async move {
            super::forward::run(shared, env, port, channel, reply).await;
            drop(place);
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The session's task reads the request too; answered here, in order.
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(user) = &self.user {
            self.shared.store.audit(
                &user.name,
                "ssh.disconnect",
                &user.name,
                Some(format!("from {}", self.peer.ip())),
            );
        }
    }
}
