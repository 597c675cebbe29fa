//! What accounts accept: user names, email addresses, container overrides.

use super::OverridesRequest;
use crate::error::{Error, Result};
use crate::store::Overrides;

/// Environment keys that look like credentials: container env is readable by
/// anyone who can inspect the container, so secrets never go there.
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "PRIVATE",
    "CREDENTIAL",
    "API_KEY",
];

pub fn overrides(config: &crate::config::Config, req: OverridesRequest) -> Result<Overrides> {
    let limits = &config.limits;
    if let Some(image) = &req.image
        && *image != config.docker.image
        && !limits.allowed_images.contains(image)
    {
        return Err(Error::Invalid(format!(
            "image {image:?} is not allowed (limits.allowed_images)"
        )));
    }
    let memory_bytes = match &req.memory {
        None => None,
        Some(m) => {
            let bytes = crate::config::parse_bytes(m)
                .filter(|b| *b >= 6 << 20)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "memory {m:?}: expected a size like 512m (at least 6m)"
                    ))
                })?;
            if bytes > limits.max_memory_bytes {
                return Err(Error::Invalid(format!(
                    "memory {m:?} is above limits.max_memory"
                )));
            }
            Some(bytes)
        }
    };
    let nano_cpus = match req.cpus {
        None => None,
        Some(c) if c > 0.0 && (c * 1e9) as i64 <= limits.max_nano_cpus => Some((c * 1e9) as i64),
        Some(c) => {
            return Err(Error::Invalid(format!(
                "cpus {c} must be above 0 and within limits.max_cpus"
            )));
        }
    };
    if req.env.len() > 64 {
        return Err(Error::Invalid("at most 64 env entries".into()));
    }
    for (k, v) in &req.env {
        let upper = k.to_ascii_uppercase();
        let valid = !k.is_empty()
            && k.len() <= 128
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        if !valid || upper.starts_with("SPAWNGATE_") {
            return Err(Error::Invalid(format!(
                "env key {k:?}: use [A-Za-z0-9_], not starting with a digit or SPAWNGATE_"
            )));
        }
        if SECRET_WORDS.iter().any(|w| upper.contains(w)) {
            return Err(Error::Invalid(format!(
                "env key {k:?} looks like a credential: container environment is visible to anyone who can inspect the container, so secrets never go there"
            )));
        }
        if v.len() > 4096 || v.contains('\0') {
            return Err(Error::Invalid(format!(
                "env value of {k:?} is too long or contains NUL"
            )));
        }
    }
    Ok(Overrides {
        image: req.image,
        memory_bytes,
        nano_cpus,
        env: req.env,
    })
}

/// User names: lowercase letters, digits, `.`, `_`, `-`; 1–64 characters, starting
/// with a letter or digit. They appear in headers and labels, so stay plain ASCII.
pub fn name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid user name {name:?}: use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

pub fn email(email: &str) -> Result<()> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid email address {email:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_stay_within_bounds_and_env_carries_no_secrets() {
        let config = crate::config::Config::from_sources(
            "[limits]\nallowed_images = [\"other:1\"]\nmax_memory = \"1g\"\nmax_cpus = 2.0",
            Vec::new(),
        )
        .unwrap();
        let req = |image: Option<&str>,
                   memory: Option<&str>,
                   cpus: Option<f64>,
                   env: &[(&str, &str)]| OverridesRequest {
            image: image.map(str::to_owned),
            memory: memory.map(str::to_owned),
            cpus,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let ok = overrides(
            &config,
            req(Some("other:1"), Some("256m"), Some(0.5), &[("LANG", "C")]),
        )
        .unwrap();
        assert_eq!(ok.memory_bytes, Some(256 << 20));
        assert_eq!(ok.nano_cpus, Some(500_000_000));
        assert!(
            overrides(
                &config,
                req(Some("spawngate-example-app:latest"), None, None, &[])
            )
            .is_ok()
        );
        for (bad, why) in [
            (req(Some("evil:latest"), None, None, &[]), "not allowed"),
            (req(None, Some("2g"), None, &[]), "max_memory"),
            (req(None, Some("lots"), None, &[]), "expected a size"),
            (req(None, None, Some(3.0), &[]), "max_cpus"),
            (req(None, None, Some(0.0), &[]), "max_cpus"),
            (req(None, None, None, &[("DB_PASSWORD", "x")]), "credential"),
            (
                req(None, None, None, &[("github_token", "x")]),
                "credential",
            ),
            (
                req(None, None, None, &[("SPAWNGATE_USER", "x")]),
                "SPAWNGATE_",
            ),
            (req(None, None, None, &[("1X", "x")]), "digit"),
        ] {
            let e = overrides(&config, bad).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should mention {why}");
        }
    }

    #[test]
    fn names_and_emails() {
        for ok in ["alice", "a", "bob-2", "x.y_z", "0day"] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", ".x", "a b", "ä", "a/b", &"a".repeat(65)] {
            assert!(name(bad).is_err(), "{bad}");
        }
        assert!(email("a@b.org").is_ok());
        for bad in ["a", "@b.org", "a@b", "a b@c.org", "a@b@c.org"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }
}
