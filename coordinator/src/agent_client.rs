//! The coordinator's client for an agent's gRPC API. Every call carries the
//! session secret as `authorization: Bearer <secret>` (marked sensitive so
//! it never shows up in debug output).

use std::time::Duration;

use anyhow::{Context, Result};
use parhelia_proto::agent_client::AgentClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::ids::SessionSecret;

/// Adds the bearer secret to every request.
#[derive(Clone)]
pub struct BearerAuth {
    value: MetadataValue<Ascii>,
}

impl BearerAuth {
    pub fn new(secret: &SessionSecret) -> Result<Self> {
        let mut value: MetadataValue<Ascii> = parhelia_proto::bearer(secret.expose())
            .parse()
            .context("the session secret is not a valid header value")?;
        value.set_sensitive(true);
        Ok(Self { value })
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert(parhelia_proto::AUTH_METADATA_KEY, self.value.clone());
        Ok(request)
    }
}

pub type AuthedAgentClient = AgentClient<InterceptedService<Channel, BearerAuth>>;

/// Additional PEM roots trusted for `https://` agent endpoints (besides the
/// webpki roots), e.g. behind a TLS-inspecting proxy.
pub const EXTRA_CA_ENV: &str = "PARHELIA_TLS_CA_FILE";

/// Connects to an agent at `uri` (e.g. `http://127.0.0.1:40123`, or a Modal
/// tunnel `https://….modal.host`).
pub async fn connect_agent(uri: &str, secret: &SessionSecret) -> Result<AuthedAgentClient> {
    // Read only for TLS endpoints: a local agent (`http://127.0.0.1:…`) is reached
    // whatever the variable names.
    let tls = uri.starts_with("https://");
    let extra = match std::env::var_os(EXTRA_CA_ENV).filter(|v| tls && !v.is_empty()) {
        Some(path) => Some(
            std::fs::read(&path)
                .with_context(|| format!("reading {EXTRA_CA_ENV}={}", path.to_string_lossy()))?,
        ),
        None => None,
    };
    connect_agent_with_roots(uri, secret, extra.as_deref()).await
}

/// [`connect_agent`] with extra PEM roots for `https://` endpoints.
pub async fn connect_agent_with_roots(
    uri: &str,
    secret: &SessionSecret,
    extra_roots_pem: Option<&[u8]>,
) -> Result<AuthedAgentClient> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())
        .with_context(|| format!("bad agent endpoint {uri}"))?;
    if uri.starts_with("https://") {
        // A Modal tunnel: TLS terminated by Modal, HTTP/2 chosen by ALPN,
        // the certificate checked against the webpki roots.
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = extra_roots_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS for {uri}"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // While a call is open (an attach, a followed event stream), a connection that
        // stopped answering (a dead tunnel) fails it within 10 s instead of never.
        .http2_keep_alive_interval(parhelia_proto::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(parhelia_proto::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false)
        .connect()
        .await
        .with_context(|| format!("connecting to the agent at {uri}"))?;
    Ok(AgentClient::with_interceptor(
        channel,
        BearerAuth::new(secret)?,
    ))
}

/// An agent's gRPC refusal as a coded error: the one place agent statuses are
/// classified (the CLI's session commands, the service's calls and the event
/// ingester all use it). A coded refusal keeps its code (carried in the metadata,
/// [`parhelia_contract::codes::METADATA_KEY`]); a refused session secret is E402; anything
/// else is the agent not doing what was asked (E503), its message kept. `whose` names
/// the session or container in the message.
pub fn refusal(status: &tonic::Status, whose: &str) -> anyhow::Error {
    use crate::error::{CodedError, coded};
    use crate::error_codes;
    if let Some(known) = CodedError::from_status(status) {
        return known.into();
    }
    let message = crate::term::escape_untrusted_text(status.message());
    match status.code() {
        tonic::Code::Unauthenticated => coded(
            error_codes::AGENT_AUTH_REJECTED,
            format!("the agent of {whose} refused the session secret: {message}"),
        ),
        tonic::Code::FailedPrecondition => coded(
            error_codes::AGENT_UNREACHABLE,
            format!("the agent of {whose} refused: {message}"),
        ),
        _ => coded(
            error_codes::AGENT_UNREACHABLE,
            format!("the agent of {whose}: {message}"),
        ),
    }
}
