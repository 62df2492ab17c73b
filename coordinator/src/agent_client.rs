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

/// Connects to an agent at `uri` (e.g. `http://127.0.0.1:40123`).
pub async fn connect_agent(uri: &str, secret: &SessionSecret) -> Result<AuthedAgentClient> {
    let mut endpoint = Endpoint::from_shared(uri.to_string())
        .with_context(|| format!("bad agent endpoint {uri}"))?;
    if uri.starts_with("https://") {
        // A Modal tunnel: TLS terminated by Modal, HTTP/2 chosen by ALPN,
        // the certificate checked against the webpki roots.
        endpoint = endpoint
            .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
            .with_context(|| format!("TLS for {uri}"))?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the agent at {uri}"))?;
    Ok(AgentClient::with_interceptor(
        channel,
        BearerAuth::new(secret)?,
    ))
}
