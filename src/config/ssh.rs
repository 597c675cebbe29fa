//! `[ssh]`: the SSH front door (`ssh <user>@<host>` into the user's environment).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSsh {
    pub enabled: bool,
    /// Where the SSH server listens (`0.0.0.0:2222` in compose, next to Traefik's
    /// published ports).
    pub listen: String,
    /// The server's private host key (OpenSSH format): generated (ed25519, mode
    /// 0600) on first start and kept. Empty = `<server.data_dir>/ssh_host_ed25519_key`.
    pub host_key_file: String,
    /// Open SSH connections per user at once.
    pub max_connections_per_user: usize,
    /// Open channels (shells, commands, forwardings) per user at once.
    pub max_sessions_per_user: usize,
}

impl Default for RawSsh {
    fn default() -> Self {
        RawSsh {
            enabled: false,
            listen: "127.0.0.1:2222".into(),
            host_key_file: String::new(),
            max_connections_per_user: 10,
            max_sessions_per_user: 20,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SshConfig {
    pub listen: SocketAddr,
    pub host_key_file: PathBuf,
    pub max_connections_per_user: usize,
    pub max_sessions_per_user: usize,
}

impl RawSsh {
    /// `None` when disabled; `data_dir` is the validated `server.data_dir`.
    pub(super) fn validate(self, data_dir: &Path) -> Result<Option<SshConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let listen = self
            .listen
            .parse()
            .map_err(|e| invalid("ssh.listen", format!("{:?}: {e}", self.listen)))?;
        if self.max_connections_per_user == 0 {
            return Err(invalid(
                "ssh.max_connections_per_user",
                "must be at least 1",
            ));
        }
        if self.max_sessions_per_user == 0 {
            return Err(invalid("ssh.max_sessions_per_user", "must be at least 1"));
        }
        let host_key_file = match self.host_key_file.trim() {
            "" => data_dir.join("ssh_host_ed25519_key"),
            path => PathBuf::from(path),
        };
        Ok(Some(SshConfig {
            listen,
            host_key_file,
            max_connections_per_user: self.max_connections_per_user,
            max_sessions_per_user: self.max_sessions_per_user,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_the_host_key_lives_in_the_data_dir() {
        let dir = Path::new("/var/lib/spawngate");
        assert!(RawSsh::default().validate(dir).unwrap().is_none());
        let on = RawSsh {
            enabled: true,
            ..Default::default()
        };
        let c = on.validate(dir).unwrap().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.host_key_file, dir.join("ssh_host_ed25519_key"));
        let bad = RawSsh {
            enabled: true,
            listen: "nope".into(),
            ..Default::default()
        };
        assert!(
            bad.validate(dir)
                .unwrap_err()
                .to_string()
                .contains("ssh.listen")
        );
        let zero = RawSsh {
            enabled: true,
            max_sessions_per_user: 0,
            ..Default::default()
        };
        assert!(
            zero.validate(dir)
                .unwrap_err()
                .to_string()
                .contains("ssh.max_sessions_per_user")
        );
    }
}
