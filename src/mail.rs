//! Sending login links by email (SMTP via lettre, rustls for TLS).

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
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
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &EmailConfig) -> Result<Mailer, MailError> {
        let host = config.smtp_host.as_str();
        let builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| MailError::Smtp(e.to_string()))?,
            SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| MailError::Smtp(e.to_string()))?,
        };
        let mut builder = builder.port(config.smtp_port);
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
