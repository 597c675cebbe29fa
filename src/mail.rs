//! Sending login links by email (SMTP via lettre, rustls for TLS).

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{EmailConfig, SmtpTls};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &EmailConfig) -> Result<Mailer, MailError> {
        let host = config.smtp_host.as_str();
        let tls = |wrap: fn(TlsParameters) -> Tls| -> Result<Tls, MailError> {
            let mut params = TlsParameters::builder(host.to_owned());
            if let Some(pem) = &config.ca_pem {
                let cert = Certificate::from_pem(pem).map_err(|e| MailError::Tls(e.to_string()))?;
                params = params.add_root_certificate(cert);
            }
            Ok(wrap(
                params.build().map_err(|e| MailError::Tls(e.to_string()))?,
            ))
        };
        // STARTTLS is required, never opportunistic: a server (or a man in the
        // middle) that does not offer it gets no mail rather than a clear-text one.
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => tls(Tls::Required)?,
            SmtpTls::Implicit => tls(Tls::Wrapper)?,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.smtp_port)
            .tls(tls);
        if let Some((user, password)) = &config.credentials {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let from = config
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(e.to_string()))?;
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    pub async fn send_login_link(
        &self,
        to: &str,
        link: &str,
        minutes: u64,
    ) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(e.to_string()))?;
        let text = format!(
            "Someone (hopefully you) asked to sign in.\r\n\r\n\
             Open this link to sign in (it works once, for {minutes} minutes):\r\n\r\n{link}\r\n\r\n\
             If you did not ask for it, ignore this message.\r\n"
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Your sign-in link")
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            // lettre picks the transfer encoding (quoted-printable for the long link line).
            .body(text)
            .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Smtp(e.to_string()))
    }
}
