//! Outbound HTTPS calls to identity providers (OIDC discovery, JWKS, token
//! endpoint). HTTPS only, certificates checked against the Mozilla roots plus an
//! optional private CA, bounded in time and size: an IdP that hangs or answers with
//! gigabytes cannot stall or exhaust spawngate.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// Largest answer read from an IdP (discovery documents and key sets are small).
const MAX_RESPONSE: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}: only https:// URLs are allowed")]
    NotHttps(String),
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered with unreadable JSON: {message}")]
    Json { url: String, message: String },
    #[error("{url} did not answer within {TIMEOUT:?}")]
    Timeout { url: String },
}

#[derive(Clone)]
pub struct HttpsClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    plain_http: bool,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpsClient")
    }
}

/// Parses a PEM file of CA certificates.
pub fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, OutboundError> {
    use rustls_pki_types::pem::PemObject;
    let err = |message: String| OutboundError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates in it".into()));
    }
    Ok(certs)
}

impl HttpsClient {
    /// A client trusting the Mozilla roots and, when given, the CAs in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpsClient, OutboundError> {
        Self::build(ca_file, false)
    }

    /// Also speaks plain HTTP: for Traefik's API, which usually listens on loopback
    /// or a private network without TLS. Never for identity providers.
    pub fn allowing_plain_http() -> Result<HttpsClient, OutboundError> {
        Self::build(None, true)
    }

    fn build(ca_file: Option<&Path>, plain_http: bool) -> Result<HttpsClient, OutboundError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| OutboundError::CaFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| OutboundError::CaFile {
                path: "(TLS setup)".into(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if plain_http {
            builder.https_or_http().enable_http1().build()
        } else {
            builder.https_only().enable_http1().build()
        };
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            plain_http,
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, OutboundError> {
        let req = self
            .request(Method::GET, url)?
            .body(Full::default())
            .map_err(|e| request_error(url, e))?;
        self.send(url, req).await
    }

    /// POST an `application/x-www-form-urlencoded` body, optionally with HTTP Basic
    /// client credentials (OAuth `client_secret_basic`).
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<T, OutboundError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut builder = self.request(Method::POST, url)?.header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some((user, password)) = basic {
            use base64::Engine;
            // RFC 6749 §2.3.1: both parts are form-encoded before Base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(user), enc(password));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            builder = builder.header(AUTHORIZATION, value);
        }
        let req = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| request_error(url, e))?;
        self.send(url, req).await
    }

    fn request(&self, method: Method, url: &str) -> Result<http::request::Builder, OutboundError> {
        if !self.plain_http {
            require_https(url)?;
        }
        Ok(Request::builder()
            .method(method)
            .uri(url)
            .header(ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "spawngate"))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<T, OutboundError> {
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| request_error(url, e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| request_error(url, e))?
                .to_bytes();
            if !status.is_success() {
                return Err(OutboundError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            serde_json::from_slice(&body).map_err(|e| OutboundError::Json {
                url: url.to_owned(),
                message: e.to_string(),
            })
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| OutboundError::Timeout {
                url: url.to_owned(),
            })?
    }
}

/// Accepts `https://host/...` URLs only (also used to validate configuration).
pub fn require_https(url: &str) -> Result<(), OutboundError> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        _ => Err(OutboundError::NotHttps(url.to_owned())),
    }
}

fn request_error(url: &str, e: impl std::fmt::Display) -> OutboundError {
    OutboundError::Request {
        url: url.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_are_accepted() {
        assert!(require_https("https://idp.example.org/jwks").is_ok());
        for bad in [
            "http://idp.example.org/jwks",
            "file:///etc/passwd",
            "idp.example.org",
        ] {
            assert!(require_https(bad).is_err(), "{bad} accepted");
        }
    }

    #[tokio::test]
    async fn plain_http_is_refused_before_connecting() {
        let client = HttpsClient::new(None).unwrap();
        let err = client
            .get_json::<serde_json::Value>("http://127.0.0.1:1/x")
            .await
            .unwrap_err();
        assert!(matches!(err, OutboundError::NotHttps(_)), "{err}");
    }
}
