//! Users' SSH public keys: parsed and checked here (only ed25519, ECDSA and RSA of
//! at least 3072 bits), stored by fingerprint, audited.

use serde::Serialize;

use super::Accounts;
use crate::error::{Error, Result};
use crate::ids::random_bytes;
use crate::store::{SshKey, User};
use crate::time::{rfc3339, unix_now};

/// Shortest RSA modulus accepted (NIST's level for keys used past 2030).
pub const MIN_RSA_BITS: u32 = 3072;

/// Longest label kept for a key.
const MAX_NAME: usize = 100;

/// A key as its owner and admins see it.
#[derive(Debug, Serialize)]
pub struct SshKeyView {
    pub id: String,
    pub fingerprint: String,
    pub algorithm: String,
    pub name: String,
    pub public_key: String,
    pub added: String,
}

impl From<SshKey> for SshKeyView {
    fn from(k: SshKey) -> Self {
        SshKeyView {
            algorithm: k
                .public_key
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            id: k.id,
            fingerprint: k.fingerprint,
            name: k.name,
            public_key: k.public_key,
            added: rfc3339(k.added),
        }
    }
}

/// A public key that passed the checks: its OpenSSH line (no comment), its
/// fingerprint and its comment.
#[derive(Debug)]
pub struct ParsedKey {
    pub public_key: String,
    pub fingerprint: String,
    pub comment: String,
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse(line: &str) -> Result<ParsedKey> {
    use russh::keys::{Algorithm, HashAlg, PublicKey};
    let line = line.trim();
    let key = PublicKey::from_openssh(line).map_err(|e| {
        Error::Invalid(format!(
            "not an OpenSSH public key (the line of a .pub file): {e}"
        ))
    })?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key.key_data().rsa().map_or(0, |k| k.key_size());
            if bits < MIN_RSA_BITS {
                return Err(Error::Invalid(format!(
                    "RSA keys need at least {MIN_RSA_BITS} bits (this one has {bits}): generate a new one with `ssh-keygen -t ed25519`"
                )));
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "{other} keys are not accepted: use ed25519, ECDSA or RSA of at least {MIN_RSA_BITS} bits"
            )));
        }
    }
    let comment = key.comment().as_str_lossy().to_string();
    let mut bare = key.clone();
    bare.set_comment("");
    let public_key = bare
        .to_openssh()
        .map_err(|e| Error::Invalid(format!("cannot encode the key: {e}")))?
        .trim()
        .to_owned();
    Ok(ParsedKey {
        public_key,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment,
    })
}

impl Accounts {
    pub fn ssh_keys(&self, user: &User) -> Result<Vec<SshKeyView>> {
        Ok(self
            .store
            .ssh_keys_of(&user.id)?
            .into_iter()
            .map(SshKeyView::from)
            .collect())
    }

    /// Registers `line` for `user`, labelled `name` (or the key's comment).
    pub async fn add_ssh_key(
        &self,
        actor: &str,
        user: &User,
        line: &str,
        name: Option<&str>,
    ) -> Result<SshKeyView> {
        let parsed = parse(line)?;
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&parsed.comment);
        if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "a key's name has at most {MAX_NAME} characters, none of them control characters"
            )));
        }
        let record = SshKey {
            id: hex::encode(random_bytes::<6>()),
            user_id: user.id.clone(),
            fingerprint: parsed.fingerprint,
            public_key: parsed.public_key,
            name: name.to_owned(),
            added: unix_now(),
        };
        self.store.add_ssh_key(&record).await.map_err(|e| match e {
            // Whose it is stays unsaid: the answer must not tell who holds a key.
            crate::store::StoreError::Conflict {
                what: "SSH key", ..
            } => Error::Conflict("this SSH key is registered already".into()),
            e => e.into(),
        })?;
        self.store.audit(
            actor,
            "ssh_key.add",
            &user.name,
            Some(record.fingerprint.clone()),
        );
        Ok(record.into())
    }

    /// Removes one of `user`'s keys by its id or fingerprint.
    pub async fn remove_ssh_key(&self, actor: &str, user: &User, key: &str) -> Result<()> {
        if !self.store.delete_ssh_key(&user.id, key).await? {
            return Err(Error::NotFound("SSH key"));
        }
        self.store
            .audit(actor, "ssh_key.remove", &user.name, Some(key.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `ssh-keygen -t … -C test`.
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAa+opc3322fiAIM+PpjwNBX/xSbGTLV/n4Z5louktue test";
    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC+GyKxinfmalK6FC6z+Zcn2cOxOhMPGWbJU0W3MtkzE7I+86FO0EbhvuSW127dYjeGdJ/4ieec2rzr4xVQLU3OFYNTNtyQbbIBV4ZCdrBkGg4hlSRx5/A41rDCKrULgspluW+h8j98VsPaekvBodNd9ZCcCf65eDqrGzkve+qSQw== test";

    #[test]
    fn ed25519_parses_with_its_openssh_fingerprint() {
        let k = parse(ED25519).unwrap();
        // As `ssh-keygen -lf` prints it.
        assert_eq!(
            k.fingerprint,
            "SHA256:sg0Peff48mQb0PX0yL9gbmauokzTXJnbzp7F7yRtu2M"
        );
        assert_eq!(k.comment, "test");
        assert!(k.public_key.starts_with("ssh-ed25519 AAAA"));
        assert!(!k.public_key.contains("test"));
    }

    #[test]
    fn short_rsa_and_garbage_are_refused() {
        let e = parse(RSA_1024).unwrap_err().to_string();
        assert!(e.contains("3072"), "{e}");
        assert!(parse("hello").is_err());
        assert!(parse("").is_err());
    }
}
