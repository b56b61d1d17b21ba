//! `type: email`: a plain-text mail over SMTP (lettre): STARTTLS, implicit TLS, or plain for a
//! relay on this machine; authentication when `username`/`password` are set.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{error_chain, Outcome};
use crate::notify::config::{EmailChannel, SmtpSecurity};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn deliver(ch: &EmailChannel, subject: &str, body: String) -> Outcome {
    match send(ch, subject, body).await {
        Ok(receipt) => Outcome::ok(receipt, 1),
        Err(e) => Outcome::failed(e, 1),
    }
}

async fn send(ch: &EmailChannel, subject: &str, body: String) -> Result<String, String> {
    let host = ch
        .smtp_host
        .as_deref()
        .ok_or("the email channel has no smtp_host")?;
    if ch.to.is_empty() {
        return Err("the email channel has no recipients (`to`)".into());
    }
    let from: Mailbox = match &ch.from {
        Some(f) => f.parse().map_err(|e| format!("from `{f}`: {e}"))?,
        None => format!("cnp@{}", hostname())
            .parse()
            .map_err(|e| format!("default sender: {e}"))?,
    };
    let mut msg = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &ch.to {
        msg = msg.to(to.parse().map_err(|e| format!("to `{to}`: {e}"))?);
    }
    let msg = msg
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))?;

    let security = ch.security.unwrap_or_default();
    let tls_params = || {
        TlsParameters::builder(host.to_owned())
            .dangerous_accept_invalid_certs(ch.accept_invalid_certs)
            .build_rustls()
            .map_err(|e| format!("TLS setup: {}", error_chain(&e)))
    };
    let mut b = match security {
        SmtpSecurity::Plain => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(587)
            .tls(Tls::Required(tls_params()?)),
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(465)
            .tls(Tls::Wrapper(tls_params()?)),
    };
    if let Some(p) = ch.smtp_port {
        b = b.port(p);
    }
    match (&ch.username, &ch.password) {
        (Some(u), Some(p)) => b = b.credentials(Credentials::new(u.clone(), p.clone())),
        (Some(_), None) | (None, Some(_)) => {
            return Err("set both username and password (or neither)".into())
        }
        (None, None) => {}
    }
    let timeout = ch.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let transport = b.timeout(Some(timeout)).build();
    // The transport's own timeout covers each command; this bounds the whole exchange.
    match tokio::time::timeout(timeout * 3, transport.send(msg)).await {
        Err(_) => Err(format!(
            "SMTP server did not finish within {}",
            humantime::format_duration(timeout * 3)
        )),
        Ok(Err(e)) => Err(format!("SMTP: {}", error_chain(&e))),
        Ok(Ok(resp)) => Ok(format!(
            "SMTP {}{}",
            resp.code(),
            resp.message()
                .next()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        )),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
