//! Settings for identities from elsewhere: external JWTs (`[jwt]`) and OIDC login
//! (`[oidc]`), and how their claims map to spawngate users.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::ids::Secret;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwt {
    /// Accept `Authorization: Bearer <JWT>` (and `cookie`) from an identity service.
    pub enabled: bool,
    /// The only algorithms accepted (all of one family: HS*, RS*/PS*, ES*, or EdDSA).
    pub algorithms: Vec<String>,
    /// HS*: the shared secret (at least 32 bytes; prefer the environment).
    pub secret: String,
    /// RS*/PS*/ES*/EdDSA: a PEM public key file.
    pub public_key_file: String,
    /// RS*/PS*/ES*/EdDSA: keys from this HTTPS JWKS URL instead.
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// Also read the token from this cookie (for browsers); empty: Bearer only.
    pub cookie: String,
    /// The claim naming the user.
    pub user_claim: String,
    /// Match the claim against users' `email` or `name`.
    pub match_by: String,
    /// Create a user on the first valid token for an unknown identity.
    pub auto_create: bool,
    /// With `match_by = "email"`: the token must say `email_verified: true`
    /// (otherwise only an explicit `false` is refused).
    pub require_verified_email: bool,
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub jwks_cooldown_secs: u64,
    /// Extra CA certificates (PEM) trusted for the IdP's HTTPS endpoints.
    pub ca_file: String,
}

impl Default for RawJwt {
    fn default() -> Self {
        RawJwt {
            enabled: false,
            algorithms: vec!["RS256".into()],
            secret: String::new(),
            public_key_file: String::new(),
            jwks_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
            cookie: String::new(),
            user_claim: "email".into(),
            match_by: "email".into(),
            auto_create: false,
            // Tokens come from an issuer the operator runs (a gateway or their own
            // IdP) and often carry no such claim.
            require_verified_email: false,
            leeway_secs: 30,
            jwks_cooldown_secs: 10,
            ca_file: String::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOidc {
    /// Offer "Sign in with …" on the login page.
    pub enabled: bool,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Prefer the environment (`SPAWNGATE_OIDC_CLIENT_SECRET`).
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub algorithms: Vec<String>,
    /// The login button's text.
    pub label: String,
    /// The claim naming the user.
    pub user_claim: String,
    /// Match the claim against users' `email` or `name`.
    pub match_by: String,
    /// Create a user on the first valid token for an unknown identity.
    pub auto_create: bool,
    /// With `match_by = "email"`: the token must say `email_verified: true`
    /// (otherwise only an explicit `false` is refused).
    pub require_verified_email: bool,
    pub leeway_secs: u64,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub jwks_cooldown_secs: u64,
    /// Extra CA certificates (PEM) trusted for the IdP's HTTPS endpoints.
    pub ca_file: String,
}

impl Default for RawOidc {
    fn default() -> Self {
        RawOidc {
            enabled: false,
            issuer: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            algorithms: vec!["RS256".into()],
            label: "Sign in with single sign-on".into(),
            user_claim: "email".into(),
            match_by: "email".into(),
            auto_create: false,
            // An IdP where users may set any address must vouch for it.
            require_verified_email: true,
            leeway_secs: 30,
            jwks_cooldown_secs: 10,
            ca_file: String::new(),
        }
    }
}

/// Keys `[jwt]` and `[oidc]` share (repeated in both raw sections because serde
/// cannot combine `flatten` with `deny_unknown_fields`).
struct RawCommon {
    user_claim: String,
    match_by: String,
    auto_create: bool,
    require_verified_email: bool,
    leeway_secs: u64,
    jwks_cooldown_secs: u64,
    ca_file: String,
}

macro_rules! raw_common {
    ($raw:expr) => {
        RawCommon {
            user_claim: $raw.user_claim,
            match_by: $raw.match_by,
            auto_create: $raw.auto_create,
            require_verified_email: $raw.require_verified_email,
            leeway_secs: $raw.leeway_secs,
            jwks_cooldown_secs: $raw.jwks_cooldown_secs,
            ca_file: $raw.ca_file,
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchBy {
    Email,
    Name,
}

/// How a verified token's claims become a spawngate user.
#[derive(Clone, Debug)]
pub struct ClaimMapping {
    pub claim: String,
    pub match_by: MatchBy,
    pub auto_create: bool,
    pub require_verified_email: bool,
}

#[derive(Clone, Debug)]
pub enum JwtKeys {
    Secret(Secret),
    PublicKeyFile(PathBuf),
    JwksUrl(String),
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub algorithms: Vec<Algorithm>,
    pub keys: JwtKeys,
    pub issuer: String,
    pub audience: String,
    pub cookie: Option<String>,
    pub leeway: Duration,
    pub jwks_cooldown: Duration,
    pub ca_file: Option<PathBuf>,
    pub mapping: ClaimMapping,
}

#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub label: String,
    pub leeway: Duration,
    pub jwks_cooldown: Duration,
    pub ca_file: Option<PathBuf>,
    pub mapping: ClaimMapping,
}

/// Which keys an algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(a: Algorithm) -> Family {
    use Algorithm::*;
    match a {
        HS256 | HS384 | HS512 => Family::Hmac,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

fn algorithms(section: &str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    let key = format!("{section}.algorithms");
    let algs = names
        .iter()
        .map(|n| {
            n.parse::<Algorithm>().map_err(|_| {
                invalid(
                    &key,
                    format!("{n:?}: expected HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = algs.first() else {
        return Err(invalid(&key, "must name at least one algorithm"));
    };
    // Mixing families is how algorithm confusion starts (an RSA public key used as
    // an HMAC secret): one family per key source.
    if algs.iter().any(|a| family(*a) != family(*first)) {
        return Err(invalid(
            &key,
            "all algorithms must be of one family (HS*, RS*/PS*, ES* or EdDSA)",
        ));
    }
    Ok(algs)
}

fn common(
    section: &str,
    c: RawCommon,
) -> Result<(ClaimMapping, Duration, Duration, Option<PathBuf>), ConfigError> {
    if c.user_claim.trim().is_empty() {
        return Err(invalid(
            &format!("{section}.user_claim"),
            "must not be empty",
        ));
    }
    let match_by = match c.match_by.as_str() {
        "email" => MatchBy::Email,
        "name" => MatchBy::Name,
        other => {
            return Err(invalid(
                &format!("{section}.match_by"),
                format!("{other:?}: expected \"email\" or \"name\""),
            ));
        }
    };
    if c.leeway_secs > 300 {
        return Err(invalid(&format!("{section}.leeway_secs"), "at most 300"));
    }
    if c.jwks_cooldown_secs == 0 {
        return Err(invalid(
            &format!("{section}.jwks_cooldown_secs"),
            "must be at least 1 (it bounds fetches caused by unknown key ids)",
        ));
    }
    let ca_file = (!c.ca_file.is_empty()).then(|| PathBuf::from(c.ca_file));
    if let Some(path) = &ca_file
        && let Err(e) = crate::outbound::read_ca_file(path)
    {
        return Err(invalid(&format!("{section}.ca_file"), e.to_string()));
    }
    Ok((
        ClaimMapping {
            claim: c.user_claim,
            match_by,
            auto_create: c.auto_create,
            require_verified_email: c.require_verified_email,
        },
        Duration::from_secs(c.leeway_secs),
        Duration::from_secs(c.jwks_cooldown_secs),
        ca_file,
    ))
}

fn https_url(key: &str, url: &str) -> Result<(), ConfigError> {
    crate::outbound::require_https(url)
        .map_err(|_| invalid(key, format!("{url:?}: must be an https:// URL")))
}

impl RawJwt {
    /// `None` when disabled; then none of its other keys is checked.
    pub(super) fn validate(self) -> Result<Option<JwtConfig>, ConfigError> {
        let j = self;
        if !j.enabled {
            return Ok(None);
        }
        let algs = algorithms("jwt", &j.algorithms)?;
        let hmac = family(algs[0]) == Family::Hmac;
        let sources = [
            !j.secret.is_empty(),
            !j.public_key_file.is_empty(),
            !j.jwks_url.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                "jwt.enabled",
                "needs exactly one of jwt.secret, jwt.public_key_file or jwt.jwks_url",
            ));
        }
        let keys = if !j.secret.is_empty() {
            if !hmac {
                return Err(invalid(
                    "jwt.secret",
                    "a secret needs HS256/384/512 in jwt.algorithms",
                ));
            }
            if j.secret.len() < 32 {
                return Err(invalid("jwt.secret", "must be at least 32 bytes"));
            }
            JwtKeys::Secret(Secret::new(j.secret))
        } else if hmac {
            return Err(invalid("jwt.algorithms", "HS* algorithms need jwt.secret"));
        } else if !j.public_key_file.is_empty() {
            let path = PathBuf::from(&j.public_key_file);
            let pem = std::fs::read(&path)
                .map_err(|e| invalid("jwt.public_key_file", format!("{}: {e}", path.display())))?;
            public_key_from_pem(&pem, algs[0])
                .map_err(|e| invalid("jwt.public_key_file", format!("{}: {e}", path.display())))?;
            JwtKeys::PublicKeyFile(path)
        } else {
            https_url("jwt.jwks_url", &j.jwks_url)?;
            JwtKeys::JwksUrl(j.jwks_url)
        };
        // Without both, a token minted for another service by the same issuer (or by
        // another issuer sharing the keys) would be accepted here.
        if j.issuer.is_empty() {
            return Err(invalid(
                "jwt.issuer",
                "must be set (the expected `iss` claim)",
            ));
        }
        if j.audience.is_empty() {
            return Err(invalid(
                "jwt.audience",
                "must be set (the expected `aud` claim)",
            ));
        }
        if !j.cookie.is_empty() && !super::is_cookie_name(&j.cookie) {
            return Err(invalid("jwt.cookie", "must be letters, digits, '_' or '-'"));
        }
        let (mapping, leeway, jwks_cooldown, ca_file) = common("jwt", raw_common!(j))?;
        Ok(Some(JwtConfig {
            algorithms: algs,
            keys,
            issuer: j.issuer,
            audience: j.audience,
            cookie: (!j.cookie.is_empty()).then_some(j.cookie),
            leeway,
            jwks_cooldown,
            ca_file,
            mapping,
        }))
    }
}

impl RawOidc {
    /// `None` when disabled; then none of its other keys is checked.
    pub(super) fn validate(self) -> Result<Option<OidcConfig>, ConfigError> {
        let o = self;
        if !o.enabled {
            return Ok(None);
        }
        if o.issuer.is_empty() || o.client_id.is_empty() {
            return Err(invalid(
                "oidc.enabled",
                "needs oidc.issuer and oidc.client_id (registered at your identity provider)",
            ));
        }
        https_url("oidc.issuer", &o.issuer)?;
        if !o.scopes.iter().any(|s| s == "openid") {
            return Err(invalid("oidc.scopes", "must include \"openid\""));
        }
        let algs = algorithms("oidc", &o.algorithms)?;
        if family(algs[0]) == Family::Hmac {
            return Err(invalid(
                "oidc.algorithms",
                "use the IdP's public-key algorithms (RS256, ES256, …)",
            ));
        }
        let (mapping, leeway, jwks_cooldown, ca_file) = common("oidc", raw_common!(o))?;
        Ok(Some(OidcConfig {
            issuer: o.issuer,
            client_id: o.client_id,
            client_secret: Secret::new(o.client_secret),
            scopes: o.scopes,
            algorithms: algs,
            label: o.label,
            leeway,
            jwks_cooldown,
            ca_file,
            mapping,
        }))
    }
}

/// A PEM public key, read according to the pinned algorithm's family. Here, not
/// in `auth`, so validation proves the file usable without config naming auth.
pub fn public_key_from_pem(
    pem: &[u8],
    algorithm: Algorithm,
) -> Result<jsonwebtoken::DecodingKey, String> {
    use jsonwebtoken::Algorithm::*;
    use jsonwebtoken::DecodingKey;
    match algorithm {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
        ES256 | ES384 => DecodingKey::from_ec_pem(pem),
        EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err(format!("{algorithm:?} takes a secret, not a public key")),
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(toml: &str) -> String {
        match Config::from_sources(toml, Vec::new()) {
            Ok(_) => panic!("expected an error for {toml}"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD_JWT: &str = "[jwt]\nenabled = true\nalgorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\nissuer = \"https://idp\"\naudience = \"sg\"\n";

    #[test]
    fn jwt_settings_are_checked() {
        let c = Config::from_sources(GOOD_JWT, Vec::new()).unwrap();
        assert!(c.jwt.is_some());
        assert!(err(&GOOD_JWT.replace("HS256", "none")).contains("jwt.algorithms"));
        assert!(err(&GOOD_JWT.replace("\"HS256\"", "\"HS256\", \"RS256\"")).contains("one family"));
        assert!(
            err(&GOOD_JWT.replace("0123456789abcdef0123456789abcdef", "short"))
                .contains("jwt.secret")
        );
        assert!(err(&GOOD_JWT.replace("audience = \"sg\"", "")).contains("jwt.audience"));
        assert!(err(&GOOD_JWT.replace("HS256", "RS256")).contains("jwt.secret"));
        assert!(
            err("[jwt]\nenabled = true\nissuer = \"i\"\naudience = \"a\"").contains("jwt.enabled")
        );
        assert!(
            err("[jwt]\nenabled = true\njwks_url = \"http://idp/jwks\"\nissuer = \"i\"\naudience = \"a\"")
                .contains("jwt.jwks_url")
        );
    }

    #[test]
    fn oidc_settings_are_checked() {
        let good =
            "[oidc]\nenabled = true\nissuer = \"https://idp.example.org\"\nclient_id = \"sg\"\n";
        assert!(
            Config::from_sources(good, Vec::new())
                .unwrap()
                .oidc
                .is_some()
        );
        assert!(err(&good.replace("https://", "http://")).contains("oidc.issuer"));
        assert!(err(&format!("{good}algorithms = [\"HS256\"]")).contains("oidc.algorithms"));
        assert!(err(&format!("{good}match_by = \"sub\"")).contains("oidc.match_by"));
    }
}
