//! `[server]`: where spawngate listens, how users and Traefik reach it, whom it
//! believes about client addresses, and the optional apps domain (subdomain mode).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, http_url, invalid};
use crate::ids::Secret;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Where spawngate listens (forwardAuth, provider, login, API).
    pub listen: String,
    /// How users reach Traefik: used in login links and to decide on `Secure` cookies.
    pub public_url: String,
    /// How Traefik reaches spawngate (forwardAuth addresses, the spawngate service).
    /// Empty: `http://<listen>`.
    pub internal_url: String,
    pub data_dir: String,
    /// When set, `/traefik/config` requires header `X-Spawngate-Provider-Token`.
    pub provider_token: String,
    /// In a container: listen only on this Docker network's address (with the port
    /// of `listen`), so containers on user networks cannot reach spawngate.
    pub listen_network: String,
    /// Peers whose `X-Forwarded-For` is believed (Traefik's address); the client
    /// address of anyone else is the TCP peer address.
    pub trusted_proxies: Vec<String>,
    /// Subdomain mode: each user's environment at `<slug>.<apps_domain>` (its own
    /// origin) instead of `/u-<slug>/` on the public host. Empty: path mode.
    pub apps_domain: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:9090".into(),
            public_url: "http://localhost:8000".into(),
            internal_url: String::new(),
            data_dir: "spawngate-data".into(),
            provider_token: String::new(),
            listen_network: String::new(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            apps_domain: String::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PublicUrl {
    /// `scheme://host[:port]`, no trailing slash.
    pub origin: String,
    pub https: bool,
    /// The host alone (no port).
    pub host: String,
    /// `:port` when the URL names one, else empty.
    pub port_suffix: String,
}

/// Subdomain mode: users' environments at `<slug>.<domain>`, same scheme and port
/// as the public URL.
#[derive(Clone, Debug)]
pub struct AppsDomain {
    pub domain: String,
    https: bool,
    port_suffix: String,
}

impl AppsDomain {
    /// `<slug>.<domain>` (what Traefik's Host rule matches).
    pub fn host(&self, slug: &crate::ids::Slug) -> String {
        format!("{slug}.{}", self.domain)
    }

    /// `scheme://<slug>.<domain>[:port]`.
    pub fn origin(&self, slug: &crate::ids::Slug) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host(slug), self.port_suffix)
    }

    /// The slug of an app host (`Host` header value, with or without port).
    pub fn slug_of(&self, host: &str) -> Option<crate::ids::Slug> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let label = host
            .to_ascii_lowercase()
            .strip_suffix(&format!(".{}", self.domain))?
            .to_owned();
        crate::ids::Slug::parse(&label)
    }
}

/// `[server]` validated; [`super::Config`] keeps these as top-level fields.
pub(super) struct Server {
    pub listen: SocketAddr,
    pub public_url: PublicUrl,
    pub internal_url: String,
    pub data_dir: PathBuf,
    pub provider_token: Option<Secret>,
    pub listen_network: Option<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub apps: Option<AppsDomain>,
}

impl RawServer {
    pub(super) fn validate(self) -> Result<Server, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:9090", self.listen),
            )
        })?;
        let public_url = parse_public_url(&self.public_url)?;
        let internal_url = if self.internal_url.is_empty() {
            format!("http://{listen}")
        } else {
            http_url("server.internal_url", &self.internal_url)?
        };
        if self.data_dir.trim().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(canonical_net)
                    .map_err(|_| {
                        invalid(
                            "server.trusted_proxies",
                            format!("{p:?} is not an address or CIDR"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let provider_token =
            (!self.provider_token.is_empty()).then(|| Secret::new(self.provider_token));
        if provider_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(invalid(
                "server.provider_token",
                "must be at least 16 characters",
            ));
        }
        let apps = parse_apps_domain(&self.apps_domain, &public_url)?;
        Ok(Server {
            listen,
            public_url,
            internal_url,
            data_dir: PathBuf::from(self.data_dir),
            provider_token,
            listen_network: (!self.listen_network.is_empty()).then_some(self.listen_network),
            trusted_proxies,
            apps,
        })
    }
}

/// `::ffff:a.b.c.d/n` is the IPv4 net it names (peers are compared canonically).
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn parse_public_url(raw: &str) -> Result<PublicUrl, ConfigError> {
    let u =
        url::Url::parse(raw).map_err(|e| invalid("server.public_url", format!("{raw:?}: {e}")))?;
    let https = match u.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(invalid(
                "server.public_url",
                format!("scheme {other:?}: expected http or https"),
            ));
        }
    };
    if u.host_str().is_none() || u.path() != "/" || u.query().is_some() {
        return Err(invalid(
            "server.public_url",
            format!(
                "{raw:?}: expected scheme://host[:port] with no path (spawngate serves from the site root)"
            ),
        ));
    }
    Ok(PublicUrl {
        origin: u.origin().ascii_serialization(),
        https,
        host: u.host_str().unwrap_or_default().to_ascii_lowercase(),
        port_suffix: u.port().map(|p| format!(":{p}")).unwrap_or_default(),
    })
}

fn parse_apps_domain(raw: &str, public: &PublicUrl) -> Result<Option<AppsDomain>, ConfigError> {
    let domain = raw.trim().trim_start_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Ok(None);
    }
    let valid = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !valid || !domain.contains('.') {
        return Err(invalid(
            "server.apps_domain",
            format!("{raw:?} is not a domain name like apps.example.com"),
        ));
    }
    // The sign-in host must not itself be one of the app hosts (or the apps
    // domain): its cookies and pages must never share an origin with user code.
    if public.host == domain || public.host.ends_with(&format!(".{domain}")) {
        return Err(invalid(
            "server.apps_domain",
            "server.public_url's host must be outside the apps domain (e.g. login.example.com and apps.example.com)",
        ));
    }
    Ok(Some(AppsDomain {
        domain,
        https: public.https,
        port_suffix: public.port_suffix.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(toml: &str) -> Result<Server, ConfigError> {
        let raw: RawServer = toml::from_str(toml).unwrap();
        raw.validate()
    }

    #[test]
    fn ipv4_mapped_proxy_nets_are_ipv4_nets() {
        let net = |s: &str| canonical_net(s.parse().unwrap()).to_string();
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(net("::ffff:127.0.0.1/128"), "127.0.0.1/32");
        assert_eq!(net("::1/128"), "::1/128");
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
    }

    #[test]
    fn apps_domain_is_outside_the_sign_in_host_and_keeps_its_scheme_and_port() {
        let s = server(
            "public_url = \"https://login.example.com:8443\"\napps_domain = \".Apps.Example.com\"",
        )
        .unwrap();
        let apps = s.apps.unwrap();
        assert_eq!(apps.domain, "apps.example.com");
        let slug = crate::ids::Slug::parse("3f9a1c0b2d4e").unwrap();
        assert_eq!(
            apps.origin(&slug),
            "https://3f9a1c0b2d4e.apps.example.com:8443"
        );
        assert_eq!(
            apps.slug_of("3F9A1C0B2D4E.apps.example.com:8443"),
            Some(slug.clone())
        );
        assert_eq!(apps.slug_of("3f9a1c0b2d4e.other.com"), None);
        let inside = server(
            "public_url = \"https://x.apps.example.com\"\napps_domain = \"apps.example.com\"",
        );
        assert!(
            inside
                .err()
                .is_some_and(|e| e.to_string().contains("server.apps_domain"))
        );
        assert!(server("apps_domain = \"nodots\"").is_err());
    }

    #[test]
    fn trusted_proxies_and_token_are_checked() {
        let s = server("trusted_proxies = [\"10.0.0.1\", \"::ffff:10.0.0.0/104\"]").unwrap();
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.1/32", "10.0.0.0/8"]);
        let bad = server("trusted_proxies = [\"traefik\"]").err().unwrap();
        assert_eq!(
            bad.to_string(),
            "invalid config: server.trusted_proxies: \"traefik\" is not an address or CIDR"
        );
        assert!(server("data_dir = \" \"").is_err());
        assert!(
            server("provider_token = \"0123456789abcdef\"")
                .unwrap()
                .provider_token
                .is_some()
        );
    }
}
